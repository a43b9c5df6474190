//! Foreign programs end to end: loongctl → loongd → a balanced stdio worker → the program it
//! runs inside its own sandbox → back. A JSON-lines program that misbehaves in every way the
//! bridge must survive, real MCP servers from npm and PyPI confined to their grants, and
//! manifests that name what does not exist.

use std::{
    fs,
    io::{Read, Write},
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::{
    support::{is_root, skip, text, wait_until, Home},
    workers::{
        details, echo_works, find_descendant, install_examples, invoke, plugins, records,
        status_field, workers,
    },
};

/// Where `.ci/run` installs the MCP servers the tests run (outside any home, readable by
/// the sandbox's uid).
pub(crate) const MCP_ROOT: &str = "/opt/loong-mcp";

/// A directory outside loongd's home (which no sandbox may see), readable by every uid.
pub(crate) fn shared_dir(prefix: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("temp dir");
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

pub(crate) fn write_file(path: &Path, body: &str, mode: u32) {
    fs::write(path, body).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Installs a foreign-program plugin: `metadata` and `sandbox` are the objects' inner text.
/// Its capabilities declare what its bridge and grants need (discovery refuses a manifest that
/// does not, as install does).
pub(crate) fn install_foreign(home: &Home, id: &str, metadata: &str, sandbox: &str) {
    let dir = home.path().join("plugins").join(id);
    fs::create_dir_all(&dir).expect("plugin dir");
    let mut caps: Vec<&str> = Vec::new();
    for (granted, cap) in [
        (sandbox.contains(r#""read""#), "filesystem_read"),
        (sandbox.contains(r#""write""#), "filesystem_write"),
        (
            sandbox.contains(r#""net""#) || metadata.contains("http_json"),
            "network_egress",
        ),
    ] {
        if granted {
            caps.push(cap);
        }
    }
    let caps = serde_json::to_string(&caps).expect("capabilities");
    let manifest = format!(
        r#"{{"api_version": "v1alpha1", "plugin_id": "{id}", "version": "0.1.0",
        "summary": "test {id}", "capabilities": {caps}, "metadata": {{{metadata}}},
        "sandbox": {{{sandbox}}}}}"#
    );
    fs::write(dir.join("loong.plugin.json"), manifest).expect("manifest");
}

pub(crate) fn args_json(args: &[&str]) -> String {
    serde_json::to_string(&serde_json::to_string(args).expect("args")).expect("quoted")
}

/// The JSON-lines peer copied into a shared directory; returns (dir, script path).
fn jsonl_peer() -> (tempfile::TempDir, PathBuf) {
    let dir = shared_dir("lp");
    let script = dir.path().join("jsonl_peer.py");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("all/peers/jsonl_peer.py");
    let body = fs::read_to_string(src).expect("peer script");
    write_file(&script, &body, 0o644);
    (dir, script)
}

/// Installs the JSON-lines peer `script` (in `dir`, granted read-only) as plugin `lines`.
fn install_jsonl_peer(home: &Home, dir: &Path, script: &Path, timeout_ms: u32) {
    install_foreign(
        home,
        "lines",
        &format!(
            r#""bridge_kind": "process_stdio", "command": "/usr/bin/python3", "args_json": {}"#,
            args_json(&[&script.display().to_string()])
        ),
        &format!(
            r#""read": [{:?}], "timeout_ms": {timeout_ms}"#,
            dir.display().to_string()
        ),
    );
}

fn lines_ok(home: &Home) -> u64 {
    let (code, out, err) = invoke(home, &["lines", "--input", r#"{"n":1}"#]);
    assert_eq!(code, 0, "the normal call failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON answer");
    assert_eq!(v["echo"], serde_json::json!({"n": 1}), "{v}");
    v["pid"].as_u64().expect("the peer's pid")
}

#[test]
fn a_json_lines_program_that_misbehaves_fails_only_its_own_call() {
    let (dir, script) = jsonl_peer();
    let home = Home::new();
    install_examples(&home);
    install_jsonl_peer(&home, dir.path(), &script, 1500);
    let daemon = home.start();
    let ps = plugins(&home);
    let lines = ps.iter().find(|p| p["id"] == "lines").expect("listed");
    assert_eq!(
        (lines["state"].as_str(), lines["bridge_kind"].as_str()),
        (Some("ready"), Some("process_stdio")),
        "{lines}"
    );
    let mut pid = lines_ok(&home);
    // The program holds its stdio pipes and none of the worker's sockets (loongd's control
    // socket is close-on-exec in the worker).
    let (code, out, err) = invoke(&home, &["lines", "--input", r#"{"mode": "fds"}"#]);
    assert_eq!(code, 0, "{err}");
    let fds: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let fds = fds["fds"].as_object().expect("fd table").clone();
    assert!(
        fds.get("0")
            .and_then(|t| t.as_str())
            .is_some_and(|t| t.starts_with("pipe:")),
        "stdin is the worker's pipe: {fds:?}"
    );
    assert!(
        !fds.values()
            .any(|t| t.as_str().is_some_and(|t| t.starts_with("socket:"))),
        "the program inherited a socket: {fds:?}"
    );
    // The program's own memory is accounted per call.
    let (code, out, err) = invoke(&home, &["lines", "--input", "{}", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert!(
        v["peak_memory_bytes"]
            .as_u64()
            .is_some_and(|b| b > 1024 * 1024),
        "{v}"
    );

    // Each way of misbehaving: its class, then the program is replaced (a new pid) and the
    // next call, and a WASM plugin's, succeed on the same daemon.
    let cases = [
        ("flood", "peer_malformed"),
        ("big_line", "peer_line_too_large"),
        ("wrong_id", "peer_wrong_id"),
        ("silent", "timeout"),
        ("exit", "peer_exited"),
    ];
    for (mode, class) in cases {
        let input = format!(r#"{{"mode": "{mode}"}}"#);
        let (code, _, err) = invoke(&home, &["lines", "--input", &input]);
        assert_eq!(code, 7, "{mode}: {err}");
        assert!(err.contains(class), "{mode}: expected {class}: {err}");
        let next = lines_ok(&home);
        assert_ne!(
            next, pid,
            "{mode}: the program must be restarted, not trusted again"
        );
        pid = next;
        echo_works(&home);
        assert_eq!(home.status().pid, daemon, "loongd restarted after {mode}");
    }
    // An exit names the program's last words; a tool's own error keeps the program.
    let failed = details(&home, "tool.failed");
    let exit = failed
        .iter()
        .find(|d| d["failure"] == "peer_exited")
        .expect("peer_exited recorded");
    assert!(
        exit["message"]
            .as_str()
            .is_some_and(|m| m.contains("giving up mid-call")),
        "{exit}"
    );
    for (_, class) in cases {
        assert!(
            failed.iter().any(|d| d["failure"] == class),
            "no tool.failed with {class}"
        );
    }
    let (code, _, err) = invoke(&home, &["lines", "--input", r#"{"mode": "error"}"#]);
    assert!(code == 7 && err.contains("tool_error"), "{code} {err}");
    assert_eq!(lines_ok(&home), pid, "a tool's own error keeps the program");

    // A silent call holds only its own worker: the WASM pool answers meanwhile.
    let silent = {
        let home_path = home.path().to_path_buf();
        std::thread::spawn(move || {
            std::process::Command::new(crate::support::bin("loongctl"))
                .arg("--home")
                .arg(home_path)
                .args(["invoke", "lines", "--input", r#"{"mode": "silent"}"#])
                .output()
                .expect("loongctl")
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    echo_works(&home);
    let out = silent.join().expect("silent call");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    lines_ok(&home);

    // The worker is a balanced sandbox; the program is its child, under the same filter.
    let ws = workers(&home);
    let w = ws
        .iter()
        .find(|w| w["kind"] == "stdio")
        .expect("a stdio worker");
    assert_eq!(w["tier"], "balanced");
    let python = find_descendant(w["pid"].as_u64().expect("pid"), "python3")
        .expect("the program runs under the worker");
    assert_eq!(status_field(python, "NoNewPrivs").as_deref(), Some("1"));
    assert_eq!(status_field(python, "Seccomp").as_deref(), Some("2"));
    if is_root() {
        let uid = status_field(python, "Uid").expect("uid");
        assert!(
            uid.starts_with("65534"),
            "the program runs as nobody: {uid}"
        );
    }
    let out = home.ctl(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The host pid of the process that is `inner` in the pid namespace of host process `anchor`.
fn host_pid_in_namespace_of(anchor: u64, inner: u64) -> Option<u64> {
    let ns = fs::read_link(format!("/proc/{anchor}/ns/pid")).ok()?;
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u64>().ok()?;
        if fs::read_link(format!("/proc/{pid}/ns/pid")).ok()? != ns {
            return None;
        }
        let nspid = status_field(pid, "NSpid")?;
        (nspid.split_whitespace().last()?.parse::<u64>().ok()? == inner).then_some(pid)
    })
}

fn lines_call(home: &Home, input: serde_json::Value) -> serde_json::Value {
    let (code, out, err) = invoke(home, &["lines", "--input", &input.to_string()]);
    assert_eq!(code, 0, "{input}: {err}");
    serde_json::from_str(&out).expect("JSON answer")
}

/// Starts a daemon from the program (double fork and `setsid`); returns its pid inside the
/// sandbox and on the host, after checking it runs in a session of its own.
fn start_daemon(home: &Home) -> (u64, u64) {
    let v = lines_call(home, serde_json::json!({"mode": "daemonize"}));
    let inner = v["daemon"].as_u64().expect("the daemon's pid");
    assert_ne!(
        v["sid"], v["own_sid"],
        "the daemon is in a session of its own: {v}"
    );
    let worker = workers(home)
        .iter()
        .find(|w| w["kind"] == "stdio")
        .and_then(|w| w["pid"].as_u64())
        .expect("a stdio worker");
    let program = find_descendant(worker, "python3").expect("the program runs");
    let host = host_pid_in_namespace_of(program, inner).expect("the daemon runs on the host");
    let alive = lines_call(home, serde_json::json!({"mode": "alive", "pid": inner}));
    assert_eq!(
        alive["alive"], true,
        "control: the daemon outlives its call: {alive}"
    );
    (inner, host)
}

#[test]
fn what_a_program_starts_dies_with_it_and_the_worker_is_out_of_its_reach() {
    let (dir, script) = jsonl_peer();
    let home = Home::new();
    install_jsonl_peer(&home, dir.path(), &script, 3000);
    home.start();
    let gone = |host: u64| {
        crate::support::wait_until(std::time::Duration::from_secs(5), || {
            !crate::support::process_alive(u32::try_from(host).expect("pid"))
        })
    };

    // A restart (after the program failed a call) ends the daemon it left behind, although
    // it left the program's process group and session.
    let (inner, host) = start_daemon(&home);
    let (code, _, err) = invoke(&home, &["lines", "--input", r#"{"mode": "exit"}"#]);
    assert!(code == 7 && err.contains("peer_exited"), "{code} {err}");
    let alive = lines_call(&home, serde_json::json!({"mode": "alive", "pid": inner}));
    assert_eq!(
        alive["alive"], false,
        "the daemon survived the restart: {alive}"
    );
    assert!(
        gone(host),
        "the daemon (host pid {host}) survived the restart"
    );

    // The program cannot open the worker's memory or environment, list its descriptors, name
    // its socket to loongd or open its stderr; its own environment it can.
    let peek = lines_call(&home, serde_json::json!({"mode": "peek"}));
    assert_eq!(peek["own_environ"], "opened", "control: {peek}");
    for what in [
        "worker_mem",
        "worker_environ",
        "worker_fds",
        "worker_socket",
        "worker_stderr",
    ] {
        assert_eq!(peek[what], "Permission denied", "{what}: {peek}");
    }

    // The plugin going away (its package removed, then a reload) ends its daemon too.
    let (_, host) = start_daemon(&home);
    fs::remove_dir_all(home.path().join("plugins/lines")).expect("remove the package");
    let out = home.ctl(&["plugins", "reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        gone(host),
        "the daemon (host pid {host}) survived its plugin"
    );
}

#[test]
fn a_granted_directory_the_sandbox_cannot_enter_is_named_with_its_mode_and_uid() {
    if !is_root() {
        // Without root the sandbox runs as loongd's own uid, which owns every directory it
        // could grant.
        return skip(
            "a_granted_directory_the_sandbox_cannot_enter_is_named_with_its_mode_and_uid",
            "needs root (the sandbox's uid differs from the owner only then)",
        );
    }
    let (dir, script) = jsonl_peer();
    // A granted directory only root may enter. (Its parents do not matter: the sandbox's
    // root recreates the parents of every grant; the grant itself keeps its mode.)
    let locked = dir.path().join("locked");
    fs::create_dir(&locked).expect("dir");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).expect("chmod");
    let home = Home::new();
    install_foreign(
        &home,
        "lines",
        &format!(
            r#""bridge_kind": "process_stdio", "command": "/usr/bin/python3", "args_json": {}"#,
            args_json(&[&script.display().to_string()])
        ),
        // The first readable directory is the program's working directory.
        &format!(
            r#""read": [{:?}, {:?}]"#,
            locked.display().to_string(),
            dir.path().display().to_string()
        ),
    );
    home.start();
    let (code, _, err) = invoke(&home, &["lines", "--input", "{}"]);
    assert_ne!(code, 0, "the program started: {err}");
    let want = format!(
        "the working directory {} (mode 0700, owner uid 0 gid 0) cannot be used by the \
         sandbox's uid 65534",
        locked.display()
    );
    assert!(err.contains(&want), "{err}");
    // Control: readable, it runs.
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = home.ctl(&["plugins", "reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    lines_ok(&home);
}

/// The MCP servers `.ci/run` installs, or why they are not there.
fn mcp_servers() -> Result<(PathBuf, PathBuf), String> {
    let time = Path::new(MCP_ROOT).join("venv/bin/mcp-server-time");
    let fs_server = Path::new(MCP_ROOT)
        .join("npm/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js");
    for p in [&time, &fs_server] {
        if !p.exists() {
            return Err(format!(
                "{} is missing (`.ci/run` installs mcp-server-time and @modelcontextprotocol/server-filesystem under {MCP_ROOT})",
                p.display()
            ));
        }
    }
    Ok((time, fs_server))
}

#[test]
fn a_deferred_mcp_server_shows_its_tools_once_its_first_call_loaded_it() {
    let time = match mcp_servers() {
        Ok((time, _)) => time,
        Err(why) => {
            return skip(
                "a_deferred_mcp_server_shows_its_tools_once_its_first_call_loaded_it",
                &why,
            )
        }
    };
    let home = Home::new();
    let dir = home.path().join("plugins/later");
    fs::create_dir_all(&dir).expect("plugin dir");
    let manifest = serde_json::json!({
        "api_version": "v1alpha1", "plugin_id": "later", "version": "0.1.0",
        "summary": "the time, started on demand", "defer_loading": true,
        "metadata": {"bridge_kind": "mcp_stdio", "command": time.display().to_string(),
            "args_json": serde_json::to_string(&["--local-timezone", "UTC"]).expect("args")},
        "sandbox": {"timeout_ms": 10000},
    });
    fs::write(dir.join("loong.plugin.json"), manifest.to_string()).expect("manifest");
    home.start();
    let later = || {
        plugins(&home)
            .into_iter()
            .find(|p| p["id"] == "later")
            .expect("later listed")
    };
    let tools = |p: &serde_json::Value| -> Vec<String> {
        p["tools"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = later();
    assert_eq!(before["state"], "deferred", "{before}");
    assert!(
        tools(&before).is_empty(),
        "nothing is known before it runs: {before}"
    );
    assert!(!workers(&home).iter().any(|w| w["kind"] == "stdio"));

    let call_time = || {
        let (code, out, err) = invoke(
            &home,
            &[
                "later/get_current_time",
                "--input",
                r#"{"timezone": "UTC"}"#,
            ],
        );
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("UTC"), "{out}");
    };
    let first_loads = || -> Vec<serde_json::Value> {
        details(&home, "plugin.loaded")
            .into_iter()
            .filter(|d| d["plugin"] == "later" && d["first_call"] == true)
            .collect()
    };
    call_time();
    let after = later();
    assert_eq!(after["state"], "ready", "{after}");
    for t in ["later/get_current_time", "later/convert_time"] {
        assert!(tools(&after).contains(&t.to_string()), "{t}: {after}");
    }
    // Now that its tools are known, a tool it lacks is refused by loongd, naming the ones it
    // has, without a call reaching the server.
    let calls = records(&home, "tool.invoked").len();
    let (code, _, err) = invoke(&home, &["later/no_such_tool", "--input", "{}"]);
    assert_ne!(code, 0);
    assert!(err.contains("later/convert_time"), "{err}");
    assert_eq!(records(&home, "tool.invoked").len(), calls);
    // The trail records what the first call loaded, once.
    let first = first_loads();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0]["tools"].to_string().contains("convert_time"),
        "{first:?}"
    );
    call_time();
    assert_eq!(first_loads().len(), 1);
}

#[test]
fn real_mcp_servers_serve_their_tools_and_the_sandbox_is_the_boundary() {
    let (time, fs_server) = match mcp_servers() {
        Ok(p) => p,
        Err(why) => {
            return skip(
                "real_mcp_servers_serve_their_tools_and_the_sandbox_is_the_boundary",
                &why,
            )
        }
    };
    // The file server is told on its command line that the whole shared directory is its
    // root; the sandbox grants only `granted/`.
    let root = shared_dir("lm");
    let granted = root.path().join("granted");
    fs::create_dir(&granted).expect("granted dir");
    fs::set_permissions(&granted, fs::Permissions::from_mode(0o777)).expect("chmod");
    write_file(&granted.join("inside.txt"), "inside\n", 0o644);
    write_file(&root.path().join("outside.txt"), "outside\n", 0o644);
    let root_s = root.path().display().to_string();
    let granted_s = granted.display().to_string();

    let home = Home::new();
    install_foreign(
        &home,
        "time",
        &format!(
            r#""bridge_kind": "mcp_stdio", "command": {:?}, "args_json": {}"#,
            time.display().to_string(),
            args_json(&["--local-timezone", "UTC"])
        ),
        r#""timeout_ms": 10000"#,
    );
    install_foreign(
        &home,
        "files",
        &format!(
            r#""bridge_kind": "mcp_stdio", "command": "node", "args_json": {}"#,
            args_json(&[&fs_server.display().to_string(), &root_s])
        ),
        &format!(r#""write": [{granted_s:?}], "timeout_ms": 10000"#),
    );
    let daemon = home.start();
    let ps = plugins(&home);
    for p in &ps {
        assert_eq!(p["state"], "ready", "{p}");
    }
    let tools = |id: &str| -> Vec<String> {
        ps.iter()
            .find(|p| p["id"] == id)
            .and_then(|p| p["tools"].as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        tools("time").contains(&"time/get_current_time".to_string()),
        "{ps:?}"
    );
    assert!(
        tools("files").contains(&"files/read_text_file".to_string()),
        "{ps:?}"
    );

    let (code, out, err) = invoke(
        &home,
        &["time/get_current_time", "--input", r#"{"timezone": "UTC"}"#],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["structuredContent"]["timezone"], "UTC", "{v}");

    // Reads: inside the grant succeeds; outside it (inside the server's own root) is refused
    // by the OS, and the refusal is in the audit trail.
    let read = |path: &Path| {
        let input = serde_json::json!({ "path": path }).to_string();
        invoke(&home, &["files/read_text_file", "--input", &input])
    };
    let (code, out, err) = read(&granted.join("inside.txt"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("inside"), "{out}");
    let outside = root.path().join("outside.txt");
    let (code, out, err) = read(&outside);
    assert_eq!(code, 7, "a read outside the grant must fail: {out}");
    assert!(err.contains("tool_error"), "{err}");
    assert!(!out.contains("outside\\n"), "{out}");

    // Writes: inside the grant a file appears; outside it none does.
    let write = |path: &Path| {
        let input = serde_json::json!({ "path": path, "content": "written" }).to_string();
        invoke(&home, &["files/write_file", "--input", &input])
    };
    let (code, _, err) = write(&granted.join("new.txt"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        fs::read_to_string(granted.join("new.txt")).expect("written inside"),
        "written"
    );
    let escaped = root.path().join("escaped.txt");
    let (code, _, err) = write(&escaped);
    assert_eq!(code, 7, "a write outside the grant must fail");
    assert!(err.contains("EACCES") || err.contains("EROFS"), "{err}");
    assert!(
        !escaped.exists(),
        "nothing may be written outside the grant"
    );

    let failed: Vec<serde_json::Value> = details(&home, "tool.failed");
    for (tool, path) in [
        ("files/read_text_file", &outside),
        ("files/write_file", &escaped),
    ] {
        let path = path.display().to_string();
        assert!(
            failed
                .iter()
                .any(|d| d["tool"] == tool
                    && d["message"].as_str().is_some_and(|m| m.contains(&path))),
            "no tool.failed for {tool} naming {path}: {failed:?}"
        );
    }

    // Names: the server alone, or a tool it does not have, is refused with the list.
    let (code, _, err) = invoke(&home, &["files"]);
    assert!(code != 0 && err.contains("files/read_text_file"), "{err}");
    let (code, _, err) = invoke(&home, &["files/format_disk", "--input", "{}"]);
    assert!(code != 0 && err.contains("no tool"), "{err}");

    // Both servers run as the sandbox's children, under its filter.
    let stdio: Vec<u64> = workers(&home)
        .iter()
        .filter(|w| w["kind"] == "stdio" && w["tier"] == "balanced")
        .filter_map(|w| w["pid"].as_u64())
        .collect();
    for comm in ["node", "mcp-server-ti"] {
        let p = stdio
            .iter()
            .find_map(|&w| find_descendant(w, comm))
            .unwrap_or_else(|| panic!("{comm} runs under a stdio worker"));
        assert_eq!(status_field(p, "Seccomp").as_deref(), Some("2"), "{comm}");
        assert_eq!(
            status_field(p, "NoNewPrivs").as_deref(),
            Some("1"),
            "{comm}"
        );
    }
    assert_eq!(home.status().pid, daemon);
}

#[test]
fn bridge_manifests_that_name_what_is_not_there_start_nothing() {
    let home = Home::new();
    install_foreign(
        &home,
        "no-program",
        r#""bridge_kind": "process_stdio", "command": "/usr/bin/loong-no-such-program""#,
        "",
    );
    install_foreign(
        &home,
        "missing-grant",
        r#""bridge_kind": "mcp_stdio", "command": "/usr/bin/python3""#,
        r#""read": ["/tmp/loong-no-such-directory/data"]"#,
    );
    install_foreign(
        &home,
        "bad-endpoint",
        r#""bridge_kind": "http_json", "endpoint": "http//example:99999""#,
        "",
    );
    install_foreign(
        &home,
        "bad-args",
        r##""bridge_kind": "process_stdio", "command": "/usr/bin/python3", "args_json": "[1, 2""##,
        "",
    );
    // Positive control: a well-formed foreign plugin beside them is ready.
    let (dir, script) = jsonl_peer();
    install_foreign(
        &home,
        "lines",
        &format!(
            r#""bridge_kind": "process_stdio", "command": "/usr/bin/python3", "args_json": {}"#,
            args_json(&[&script.display().to_string()])
        ),
        &format!(r#""read": [{:?}]"#, dir.path().display().to_string()),
    );
    home.start();
    let ps = plugins(&home);
    let expect = [
        ("no-program", "/usr/bin/loong-no-such-program"),
        ("missing-grant", "/tmp/loong-no-such-directory/data"),
        ("bad-endpoint", "metadata.endpoint"),
        ("bad-args", "metadata.args_json"),
    ];
    for (id, named) in expect {
        let p = ps.iter().find(|p| p["id"] == id).expect("listed");
        assert_eq!(p["state"], "failed", "{p}");
        let error = p["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(named),
            "{id}: the error must name {named}: {error}"
        );
        assert!(
            error.contains("loong.plugin.json"),
            "{id}: names the file: {error}"
        );
        let (code, _, err) = invoke(&home, &[id, "--input", "{}"]);
        assert_eq!(code, 2, "{id}: {err}");
    }
    // Only the good plugin's worker was ever started.
    let spawned = records(&home, "worker.spawned");
    assert_eq!(spawned.len(), 1, "{spawned:?}");
    lines_ok(&home);
}

/// What a local server answers: status line text, content type, body.
pub(crate) type Answer = (String, &'static str, String);

/// A real HTTP/1.1 server on 127.0.0.1, one thread per connection: it reads each request (its
/// head, and its body by Content-Length), answers with `respond(path, body)`, and counts the
/// connections it accepted and the requests it answered.
pub(crate) struct LocalHttp {
    pub(crate) port: u16,
    accepted: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
}

impl LocalHttp {
    pub(crate) fn start(
        respond: impl Fn(&str, &[u8]) -> Answer + Send + Sync + 'static,
    ) -> LocalHttp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let (a, sv) = (accepted.clone(), served.clone());
        let respond = Arc::new(respond);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let (sv, respond) = (sv.clone(), respond.clone());
                std::thread::spawn(move || serve_one(conn, &sv, &*respond));
            }
        });
        LocalHttp {
            port,
            accepted,
            served,
        }
    }

    /// Answers every request with `body` as text.
    pub(crate) fn text(body: &'static str) -> LocalHttp {
        LocalHttp::start(move |_, _| ("200 OK".into(), "text/plain", body.into()))
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/page.txt", self.port)
    }

    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub(crate) fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

fn serve_one(
    mut conn: std::net::TcpStream,
    served: &AtomicUsize,
    respond: &dyn Fn(&str, &[u8]) -> Answer,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if conn.read_exact(&mut body).is_err() {
        return;
    }
    served.fetch_add(1, Ordering::SeqCst);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (status, kind, answer) = respond(&path, &body);
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    // A lingering close, as an HTTP server makes it: closing with a pipelined request still
    // unread would reset the connection, and the reset can overtake the answer's last bytes
    // on their way through the broker (the pipelining test read a head without its body).
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut rest = [0u8; 4096];
    while matches!(conn.read(&mut rest), Ok(n) if n > 0) {}
}

#[test]
fn an_mcp_server_connects_only_where_its_grant_allows() {
    let fetch = Path::new(MCP_ROOT).join("venv/bin/mcp-server-fetch");
    if !fetch.exists() {
        return skip(
            "an_mcp_server_connects_only_where_its_grant_allows",
            &format!(
                "{} is missing (`.ci/run` installs it with scripts/install-mcp-servers)",
                fetch.display()
            ),
        );
    }
    let granted = LocalHttp::text("loong-granted-page");
    let other = LocalHttp::text("loong-other-page");
    let home = Home::new();
    // The server's own private-address guard and robots.txt check are switched off on its
    // command line: the sandbox, not the server's goodwill, is the boundary.
    let metadata = format!(
        r#""bridge_kind": "mcp_stdio", "command": {:?}, "args_json": {}"#,
        fetch.display().to_string(),
        args_json(&["--allow-private-ips", "--ignore-robots-txt"])
    );
    install_foreign(
        &home,
        "fetch",
        &metadata,
        &format!(
            r#""net": ["127.0.0.1:{}"], "timeout_ms": 15000"#,
            granted.port
        ),
    );
    install_foreign(&home, "offline", &metadata, r#""timeout_ms": 15000"#);
    home.start();
    for p in plugins(&home) {
        assert_eq!(p["state"], "ready", "{p}");
    }
    let get = |tool: &str, url: &str| {
        let input = serde_json::json!({ "url": url, "raw": true }).to_string();
        invoke(&home, &[tool, "--input", &input])
    };
    // Positive control: the granted destination answers.
    let (code, out, err) = get("fetch/fetch", &granted.url());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("loong-granted-page"), "{out}");
    assert_eq!(granted.accepted(), 1);
    // Another port on the same host: refused by landlock before a connection is made.
    let (code, out, err) = get("fetch/fetch", &other.url());
    assert_eq!(code, 7, "a connect outside the grant must fail: {out}");
    assert!(err.contains("tool_error"), "{err}");
    // No grant at all: an empty network namespace, so not even the granted page is reached.
    let (code, out, _) = get("offline/fetch", &granted.url());
    assert_eq!(code, 7, "a server without a grant must not connect: {out}");
    assert_eq!(other.accepted(), 0, "the ungranted server saw a connection");
    assert_eq!(
        granted.accepted(),
        1,
        "the offline server reached the network"
    );
    let failed: Vec<serde_json::Value> = details(&home, "tool.failed");
    for (tool, url) in [
        ("fetch/fetch", other.url()),
        ("offline/fetch", granted.url()),
    ] {
        assert!(
            failed
                .iter()
                .any(|d| d["tool"] == tool
                    && d["message"].as_str().is_some_and(|m| m.contains(&url))),
            "no tool.failed for {tool} naming {url}: {failed:?}"
        );
    }
}

pub(crate) fn search(home: &Home, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["tools", "search"];
    all.extend_from_slice(args);
    all.push("--json");
    crate::workers::json_list(home, &all)
}

fn names(hits: &[serde_json::Value]) -> Vec<String> {
    hits.iter()
        .filter_map(|h| h["name"].as_str().map(String::from))
        .collect()
}

#[test]
fn tool_search_covers_active_and_deferred_plugins_and_trusts_no_claim() {
    let (dir, script) = jsonl_peer();
    let home = Home::new();
    install_examples(&home);
    let dir_s = dir.path().display().to_string();
    let plugin_dir = home.path().join("plugins/lines");
    fs::create_dir_all(&plugin_dir).expect("plugin dir");
    let manifest = serde_json::json!({
        "api_version": "v1alpha1", "plugin_id": "lines", "version": "0.1.0",
        "summary": "answers JSON lines", "tags": ["echo", "json-lines"],
        "input_examples": [{"n": 1}], "output_examples": [{"echo": {"n": 1}}],
        "trust_tier": "official", "defer_loading": true, "capabilities": ["filesystem_read"],
        "metadata": {"bridge_kind": "process_stdio", "command": "/usr/bin/python3",
            "args_json": serde_json::to_string(&[script.display().to_string()]).expect("args")},
        "sandbox": {"read": [dir_s]},
    });
    fs::write(plugin_dir.join("loong.plugin.json"), manifest.to_string()).expect("manifest");
    home.start();

    // The deferred plugin is found, with its catalog, and nothing of it runs yet.
    let hits = search(&home, &["json lines"]);
    assert_eq!(
        names(&hits),
        ["lines", "json-transform", "echo"],
        "best first: a name part and the summary, a name part, the summary"
    );
    let h = &hits[0];
    assert_eq!(h["state"], "deferred");
    assert_eq!(h["tags"], serde_json::json!(["echo", "json-lines"]));
    assert_eq!(h["input_examples"], serde_json::json!([{"n": 1}]));
    assert_eq!(
        (h["trust"].as_str(), h["claimed_trust"].as_str()),
        (Some("unverified"), Some("official")),
        "a claimed tier proves nothing"
    );
    assert!(
        !workers(&home).iter().any(|w| w["kind"] == "stdio"),
        "a deferred plugin is not started at discovery"
    );
    // A name part outranks a tag: the echo plugin first, the tagged one after it.
    assert_eq!(names(&search(&home, &["echo"])), ["echo", "lines"]);
    assert!(search(&home, &["zebra"]).is_empty());
    // The trust filter: nothing installed is proved verified; everything is unverified.
    assert!(search(&home, &["", "--trust", "verified-community"]).is_empty());
    assert_eq!(search(&home, &["", "--trust", "unverified"]).len(), 4);
    assert_eq!(search(&home, &["", "--limit", "2"]).len(), 2);
    let out = home.ctl(&["tools", "search", "x", "--limit", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = home.ctl(&["tools", "search", "x", "--trust", "gold"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // Each search that ran is audited with its query and what it found (the two refused
    // requests ran none).
    let searched: Vec<serde_json::Value> = details(&home, "tool.searched");
    assert_eq!(searched.len(), 6, "{searched:?}");
    assert!(searched
        .iter()
        .any(|d| d["query"] == "json lines" && d["names"][0] == "lines"));

    // The first call starts it.
    lines_ok(&home);
    assert!(workers(&home).iter().any(|w| w["kind"] == "stdio"));
}

/// What the connectors' server answers, by path: `/hook` echoes the body as `{"ok", "got"}`,
/// `/redirect` redirects to the cloud metadata address, `/slow` waits 3 s, `/text` answers
/// text.
fn hook_answer(path: &str, body: &[u8]) -> Answer {
    match path {
        "/redirect" => (
            "302 Found\r\nLocation: http://169.254.169.254/latest".into(),
            "text/plain",
            String::new(),
        ),
        "/slow" => {
            std::thread::sleep(std::time::Duration::from_secs(3));
            ("200 OK".into(), "application/json", "{}".into())
        }
        "/text" => ("200 OK".into(), "text/plain", "plain words".into()),
        _ => {
            let got: serde_json::Value =
                serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
            let out = serde_json::json!({ "ok": true, "got": got });
            ("200 OK".into(), "application/json", out.to_string())
        }
    }
}

pub(crate) fn install_hook(
    home: &Home,
    id: &str,
    endpoint: &str,
    extra_metadata: &str,
    sandbox: &str,
) {
    install_foreign(
        home,
        id,
        &format!(r#""bridge_kind": "http_json", "endpoint": "{endpoint}"{extra_metadata}"#),
        sandbox,
    );
}

#[test]
fn http_json_connectors_reach_only_their_pinned_endpoint() {
    let server = LocalHttp::start(hook_answer);
    let base = format!("http://127.0.0.1:{}", server.port);
    let private = r#""allow_private_network": true, "timeout_ms": 1000"#;
    let contract = r#", "response_contract_json": "{\"required\": [\"ok\"]}""#;
    let strict =
        r#", "response_contract_json": "{\"required\": [\"ok\"], \"allow_other_keys\": false}""#;
    let home = Home::new();
    install_hook(&home, "hook", &format!("{base}/hook"), contract, private);
    install_hook(&home, "strict", &format!("{base}/hook"), strict, private);
    install_hook(&home, "redirect", &format!("{base}/redirect"), "", private);
    install_hook(&home, "slow", &format!("{base}/slow"), "", private);
    install_hook(&home, "text", &format!("{base}/text"), "", private);
    // Nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    install_hook(
        &home,
        "closed",
        &format!("http://127.0.0.1:{closed_port}/"),
        "",
        private,
    );
    // A name that resolves to loopback, without the operator's leave.
    install_hook(
        &home,
        "by-name",
        &format!("http://localhost:{}/hook", server.port),
        "",
        "",
    );
    let daemon = home.start();

    let ps = plugins(&home);
    let state = |id: &str| {
        let p = ps.iter().find(|p| p["id"] == id).expect("listed");
        (
            p["state"].as_str().unwrap_or_default().to_string(),
            p["error"].as_str().unwrap_or_default().to_string(),
        )
    };
    for id in ["hook", "strict", "redirect", "slow", "text", "closed"] {
        assert_eq!(state(id).0, "ready", "{id}: {}", state(id).1);
    }
    let (st, err) = state("by-name");
    assert!(
        st == "failed" && err.contains("127.0.0.1") && err.contains("allow_private_network"),
        "a name resolving to loopback is refused: {st} {err}"
    );

    let hook_ok = |n: u64| {
        let input = format!(r#"{{"n": {n}}}"#);
        let (code, out, err) = invoke(&home, &["hook", "--input", &input]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(v, serde_json::json!({"ok": true, "got": {"n": n}}));
    };
    hook_ok(1);
    let cases = [
        ("strict", "contract_violation"),
        ("redirect", "redirect_refused"),
        ("slow", "timeout"),
        ("text", "output_not_json"),
        ("closed", "connect_failed"),
    ];
    for (i, (id, class)) in cases.iter().enumerate() {
        let (code, _, err) = invoke(&home, &[id, "--input", "{}"]);
        assert_eq!(code, 7, "{id}: {err}");
        assert!(err.contains(class), "{id}: expected {class}: {err}");
        hook_ok(i as u64 + 2);
    }
    let failed = details(&home, "tool.failed");
    for (id, class) in cases {
        assert!(
            failed
                .iter()
                .any(|d| d["tool"] == id && d["failure"] == class),
            "no tool.failed {class} for {id}"
        );
    }
    // The redirect's target was never asked: only the server's own requests were served.
    let redirect_msg = failed
        .iter()
        .find(|d| d["tool"] == "redirect")
        .expect("redirect recorded");
    assert!(
        redirect_msg["message"]
            .as_str()
            .is_some_and(|m| m.contains("169.254.169.254")),
        "{redirect_msg}"
    );
    assert!(server.served() >= 7, "{}", server.served());

    // The worker has no network of its own (another network namespace) and carries the final
    // filter on top of the tier's.
    let w = workers(&home)
        .into_iter()
        .find(|w| w["kind"] == "http")
        .expect("an http worker");
    assert_eq!(w["tier"], "balanced");
    let pid = find_descendant(w["pid"].as_u64().expect("pid"), "loong-worker-ht")
        .expect("the worker process");
    let ns = |p: &str| fs::read_link(format!("/proc/{p}/ns/net")).expect("net ns");
    assert_ne!(
        ns(&pid.to_string()),
        ns("self"),
        "the worker shares the host's network"
    );
    assert_eq!(status_field(pid, "NoNewPrivs").as_deref(), Some("1"));
    let filters: u32 = status_field(pid, "Seccomp_filters")
        .and_then(|f| f.parse().ok())
        .expect("filters");
    assert!(
        filters >= 2,
        "the tier's filter and the final one: {filters}"
    );
    assert_eq!(home.status().pid, daemon);
}

/// `scale_peer.py` copied into a directory every sandbox uid may write (the servers leave
/// their marks there); returns (dir, script path).
pub(crate) fn scale_peer() -> (tempfile::TempDir, PathBuf) {
    let dir = shared_dir("lsp");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let script = dir.path().join("scale_peer.py");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("all/peers/scale_peer.py");
    write_file(
        &script,
        &fs::read_to_string(src).expect("peer script"),
        0o644,
    );
    (dir, script)
}

/// Installs `scale_peer.py` as the MCP server `id` in `role`, listing `tools` tools.
pub(crate) fn install_scale_peer(
    home: &Home,
    dir: &Path,
    script: &Path,
    id: &str,
    role: &str,
    tools: u32,
) {
    let d = dir.display().to_string();
    install_foreign(
        home,
        id,
        &format!(
            r#""bridge_kind": "mcp_stdio", "command": "/usr/bin/python3", "args_json": {}"#,
            args_json(&[
                &script.display().to_string(),
                role,
                &d,
                id,
                &tools.to_string()
            ])
        ),
        &format!(r#""write": [{d:?}], "timeout_ms": 30000"#),
    );
}

#[test]
fn plugins_load_side_by_side_and_a_slow_or_failing_server_holds_no_other() {
    if !is_root() {
        return skip(
            "plugins_load_side_by_side_and_a_slow_or_failing_server_holds_no_other",
            "sandboxed stdio workers need root",
        );
    }
    let home = Home::new();
    let (dir, script) = scale_peer();
    // `a-gate` sorts first and answers only once two servers after it have started: loaded
    // one after another, it would wait for them in vain and be refused.
    install_scale_peer(&home, dir.path(), &script, "a-gate", "gate", 2);
    install_scale_peer(&home, dir.path(), &script, "b-fast-1", "mark", 3);
    install_scale_peer(&home, dir.path(), &script, "b-fast-2", "mark", 3);
    install_scale_peer(&home, dir.path(), &script, "c-broken", "exit", 1);
    install_scale_peer(&home, dir.path(), &script, "d-after", "serve", 1);
    home.start();
    let check = |when: &str| {
        let ps = plugins(&home);
        let state = |id: &str| {
            ps.iter()
                .find(|p| p["id"] == id)
                .map(|p| p["state"].as_str().unwrap_or_default().to_string())
        };
        for id in ["a-gate", "b-fast-1", "b-fast-2", "d-after"] {
            assert_eq!(state(id).as_deref(), Some("ready"), "{when}: {id}: {ps:?}");
        }
        assert_eq!(
            state("c-broken").as_deref(),
            Some("failed"),
            "{when}: {ps:?}"
        );
        // The records of one discovery follow the set's order, whatever order the loads
        // finished in: the newest record of each, by sequence number.
        let mut all = records(&home, "plugin.loaded");
        all.extend(records(&home, "plugin.refused"));
        let mut newest: Vec<(u64, String)> = Vec::new();
        for id in ["a-gate", "b-fast-1", "b-fast-2", "c-broken", "d-after"] {
            let seq = all
                .iter()
                .filter(|r| crate::workers::detail(r)["plugin"] == id)
                .filter_map(|r| r["seq"].as_u64())
                .max()
                .unwrap_or_else(|| panic!("{when}: no record of {id}"));
            newest.push((seq, id.to_string()));
        }
        let mut by_seq = newest.clone();
        by_seq.sort();
        assert_eq!(by_seq, newest, "{when}: records in the set's order");
    };
    check("at start");
    // A reload loads them side by side again.
    for f in fs::read_dir(dir.path()).expect("dir").flatten() {
        if f.file_name().to_string_lossy().starts_with("started-") {
            fs::remove_file(f.path()).expect("remove mark");
        }
    }
    let out = home.ctl(&["plugins", "reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    check("after a reload");
    let (code, _, err) = invoke(&home, &["d-after/tool_0", "--input", "{}"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_list_page_names_a_plugins_first_tools_and_their_count_and_show_names_all() {
    if !is_root() {
        return skip(
            "a_list_page_names_a_plugins_first_tools_and_their_count_and_show_names_all",
            "sandboxed stdio workers need root",
        );
    }
    let home = Home::new();
    let (dir, script) = scale_peer();
    install_scale_peer(&home, dir.path(), &script, "many", "serve", 40);
    // Control: a server of few tools is listed whole.
    install_scale_peer(&home, dir.path(), &script, "few", "serve", 3);
    home.start();
    let ps = plugins(&home);
    let many = ps.iter().find(|p| p["id"] == "many").expect("listed");
    assert_eq!(many["tool_count"], 40, "{many}");
    let listed: Vec<&str> = many["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(listed.len(), 16, "{many}");
    assert_eq!(listed[0], "many/tool_0");
    let few = ps.iter().find(|p| p["id"] == "few").expect("listed");
    assert_eq!(few["tool_count"], 3, "{few}");
    assert_eq!(few["tools"].as_array().map(Vec::len), Some(3), "{few}");
    // The text list says how many more there are and where to see them.
    let out = home.ctl(&["plugins", "list"]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("… and 24 more (`loongctl plugins show many`)"),
        "{shown}"
    );
    assert!(
        !shown.contains("more (`loongctl plugins show few`)"),
        "{shown}"
    );
    // `plugins show` names every tool, with its schema.
    let out = home.ctl(&["plugins", "show", "many", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let all = v[0]["tools"].as_array().expect("tools");
    assert_eq!(all.len(), 40, "{v}");
    assert_eq!(all[39], "many/tool_39");
    let schemas = v[0]["input_schemas"].as_array().expect("schemas");
    assert_eq!(schemas.len(), 40, "{v}");
    assert!(
        schemas[39].as_str().unwrap_or_default().contains("\"n\""),
        "{v}"
    );
    let out = home.ctl(&["plugins", "show", "no-such-plugin"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no plugin no-such-plugin"),
        "{}",
        text(&out.stderr)
    );
}

/// How many processes run `script` as the server `id`.
fn servers_running(script: &Path, id: &str) -> usize {
    let needle = format!("{}\0mark\0", script.display());
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains(&needle) && c.contains(&format!("\0{id}\0"))
            })
        })
        .count()
}

#[test]
fn a_reload_that_ends_before_its_loads_leaves_no_server_running() {
    use loong_ipc::{Call, ControlRequest, ControlResponse, ErrorKind, Reply};
    if !is_root() {
        return skip(
            "a_reload_that_ends_before_its_loads_leaves_no_server_running",
            "sandboxed stdio workers need root",
        );
    }
    let home = Home::new();
    let (dir, script) = scale_peer();
    install_scale_peer(&home, dir.path(), &script, "a-mark", "mark", 1);
    install_scale_peer(&home, dir.path(), &script, "b-slow", "slow", 1);
    home.start();
    // Control: the set in place runs one server of each.
    assert!(
        wait_until(Duration::from_secs(10), || servers_running(
            &script, "a-mark"
        ) == 1),
        "one a-mark server at start"
    );
    // A reload whose deadline passes while `b-slow` still loads: its handler is dropped and
    // the set in place stays. Neither what it loaded (`a-mark`) nor what it was loading may
    // go on running outside every set.
    let mut c = crate::support::Raw::connect(&home.socket());
    c.handshake();
    c.send(&Call::Request {
        id: 1,
        deadline_ms: 1500,
        body: ControlRequest::PluginReload,
    })
    .expect("send");
    match c.recv::<Reply<ControlResponse>>() {
        Some(Reply::Response {
            id: 1,
            result: Err(e),
        }) => assert_eq!(e.kind, ErrorKind::DeadlineExceeded, "{e:?}"),
        other => panic!("expected the reload past its deadline, got {other:?}"),
    }
    // Past the slow server's answer, and then some: what the dropped reload started is gone.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        wait_until(Duration::from_secs(10), || servers_running(
            &script, "a-mark"
        ) == 1),
        "a-mark servers: {} (one is the set's)",
        servers_running(&script, "a-mark")
    );
    // The set in place still serves, and a reload after it loads as before.
    let (code, _, err) = invoke(&home, &["a-mark/tool_0", "--input", "{}"]);
    assert_eq!(code, 0, "{err}");
    let out = home.ctl(&["plugins", "reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        wait_until(Duration::from_secs(10), || servers_running(
            &script, "a-mark"
        ) == 1),
        "one a-mark server after a reload: {}",
        servers_running(&script, "a-mark")
    );
}

#[test]
fn a_removal_whose_request_ends_during_its_reload_still_takes_the_plugin_away() {
    use loong_ipc::{Call, ControlRequest, ControlResponse, ErrorKind, Reply};
    if !is_root() {
        return skip(
            "a_removal_whose_request_ends_during_its_reload_still_takes_the_plugin_away",
            "sandboxed stdio workers need root",
        );
    }
    let home = Home::new();
    let (dir, script) = scale_peer();
    // `a-mark` is installed (a package with a lock entry), `b-slow` lies in the directory.
    install_scale_peer(&home, dir.path(), &script, "a-mark", "mark", 1);
    let package = shared_dir("lpk");
    let staged = package.path().join("a-mark");
    fs::rename(home.path().join("plugins/a-mark"), &staged).expect("move the package");
    install_scale_peer(&home, dir.path(), &script, "b-slow", "slow", 1);
    home.start();
    let out = home.ctl(&["plugins", "install", &staged.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    if plugins(&home)
        .iter()
        .any(|p| p["id"] == "a-mark" && p["state"] == "disabled")
    {
        let out = home.ctl(&["plugins", "enable", "a-mark"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let (code, _, err) = invoke(&home, &["a-mark/tool_0", "--input", "{}"]);
    assert_eq!(code, 0, "control: a-mark serves before its removal: {err}");
    // The removal's reload waits for `b-slow` past the request's deadline: the package and
    // its lock entry are gone by then, so the set must lose it too, answered or not.
    let mut c = crate::support::Raw::connect(&home.socket());
    c.handshake();
    c.send(&Call::Request {
        id: 1,
        deadline_ms: 1500,
        body: ControlRequest::PluginRemove {
            id: "a-mark".into(),
        },
    })
    .expect("send");
    match c.recv::<Reply<ControlResponse>>() {
        Some(Reply::Response {
            id: 1,
            result: Err(e),
        }) => assert_eq!(e.kind, ErrorKind::DeadlineExceeded, "{e:?}"),
        other => panic!("expected the removal past its deadline, got {other:?}"),
    }
    let gone = wait_until(Duration::from_secs(20), || {
        !plugins(&home).iter().any(|p| p["id"] == "a-mark")
    });
    assert!(gone, "a-mark is still in the set: {:?}", plugins(&home));
    let (code, _, _) = invoke(&home, &["a-mark/tool_0", "--input", "{}"]);
    assert_ne!(code, 0, "a removed plugin still serves");
    assert!(
        plugins(&home)
            .iter()
            .any(|p| p["id"] == "b-slow" && p["state"] == "ready"),
        "{:?}",
        plugins(&home)
    );
}

#[test]
fn plugins_show_past_the_frame_limit_is_a_clear_refusal_and_the_connection_serves_on() {
    if !is_root() {
        return skip(
            "plugins_show_past_the_frame_limit_is_a_clear_refusal_and_the_connection_serves_on",
            "sandboxed stdio workers need root",
        );
    }
    let home = Home::with_config("[ipc]\nmax_frame_bytes = 16384\n");
    crate::kernel_calls::pack(&home);
    let (dir, script) = scale_peer();
    // 250 tools with their schemas: over 16 KiB; a page of the list carries 16 names.
    install_scale_peer(&home, dir.path(), &script, "many", "serve", 250);
    install_scale_peer(&home, dir.path(), &script, "few", "serve", 3);
    home.start();
    let ps = plugins(&home);
    let many = ps.iter().find(|p| p["id"] == "many").expect("listed");
    assert_eq!(many["tool_count"], 250, "{many}");
    // Control: a plugin whose answer fits is shown whole.
    let out = home.ctl(&["plugins", "show", "few", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = home.ctl(&["plugins", "show", "many", "--json"]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("many") && err.contains("frame limit of 16384 bytes"),
        "{err}"
    );
    // The daemon still serves.
    let out = home.ctl(&["plugins", "show", "few"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // `mcp serve` offers the plugins that fit and leaves out the one that does not.
    let (file, _) = crate::mcp_serve::token_file(
        &home,
        &["tool.invoke:few/tool_0", "tool.invoke:many/tool_0"],
        "tok",
    );
    let offered = crate::mcp_serve::listed(&home, &file);
    assert_eq!(offered.len(), 1, "{offered:?}");
    assert!(offered[0].contains("few"), "{offered:?}");
}

/// The state of each plugin of `ids` in `plugins list`.
fn states(home: &Home, ids: &[&str]) -> Vec<String> {
    let ps = plugins(home);
    ids.iter()
        .map(|id| {
            ps.iter()
                .find(|p| p["id"] == *id)
                .and_then(|p| p["state"].as_str())
                .unwrap_or("absent")
                .to_string()
        })
        .collect()
}

/// A plugin set past its bound on tools (`MAX_SET_TOOLS`, made small for the test) keeps the
/// plugins that fit, in id order, and refuses the rest with a record naming the plugin and
/// the bound (its program stopped); a smaller plugin after the refused one still fits; a
/// deferred one counts as the most tools a plugin may list (the control: under the default
/// bound, every plugin loads).
#[test]
fn a_plugin_set_past_its_tool_bound_loads_what_fits_in_id_order_and_refuses_the_rest() {
    const TEST: &str =
        "a_plugin_set_past_its_tool_bound_loads_what_fits_in_id_order_and_refuses_the_rest";
    if !is_root() {
        return skip(TEST, "sandboxed stdio workers need root");
    }
    let home = Home::new();
    let (dir, script) = scale_peer();
    for (id, tools) in [
        ("t-a", 100),
        ("t-b", 100),
        ("t-c", 100),
        ("t-d", 1),
        ("t-e", 1),
    ] {
        install_scale_peer(&home, dir.path(), &script, id, "serve", tools);
    }
    // t-e is deferred: its tools are unknown until its first call.
    let manifest = home.path().join("plugins/t-e/loong.plugin.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&manifest).expect("manifest")).expect("json");
    m["defer_loading"] = true.into();
    fs::write(&manifest, m.to_string()).expect("manifest");
    // The built-ins (a few tools) and t-a and t-b fit in 260; t-c does not; t-d does; t-e,
    // counted at the most a plugin may list (256), does not.
    home.start_env(&[("LOONG_TEST_MAX_SET_TOOLS", "260")]);
    let ids = ["t-a", "t-b", "t-c", "t-d", "t-e"];
    assert_eq!(
        states(&home, &ids),
        ["ready", "ready", "failed", "ready", "failed"],
        "{}",
        home.log()
    );
    let refused = details(&home, "plugin.refused");
    let why = refused
        .iter()
        .find(|d| d["plugin"] == "t-c")
        .and_then(|d| d["reason"].as_str())
        .unwrap_or_else(|| panic!("no refusal of t-c: {refused:?}"));
    assert!(
        why.contains("t-c") && why.contains("260") && why.contains("MAX_SET_TOOLS"),
        "{why}"
    );
    assert!(
        refused
            .iter()
            .all(|d| d["plugin"] != "t-a" && d["plugin"] != "t-d"),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|d| d["plugin"] == "t-e"
            && d["reason"].as_str().is_some_and(|r| r.contains("deferred"))),
        "{refused:?}"
    );
    assert!(home.log().contains("t-c"), "logged: {}", home.log());
    // The refused plugin's program is stopped: no process of it is left.
    let marker = format!("{} t-c ", dir.path().display());
    assert!(
        wait_until(Duration::from_secs(20), || !running_with(&marker)),
        "t-c's server still runs"
    );
    // The control: under the default bound, every plugin loads.
    let out = home.ctl(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    home.start();
    let got = states(&home, &ids);
    assert!(
        got.iter().all(|s| s != "failed" && s != "absent"),
        "{got:?}\n{}",
        home.log()
    );
}

/// Whether some process's command line holds `marker` (its arguments joined by spaces).
fn running_with(marker: &str) -> bool {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten().any(|e| {
                fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                    let line = String::from_utf8_lossy(&c).replace('\0', " ");
                    line.contains(marker)
                })
            })
        })
        .unwrap_or(false)
}

/// A discovery whose loads all stall answers within its whole bound (`MAX_DISCOVERY_TIME`,
/// made 3 s for the test) rather than each stalled load's own deadline (30 s) over eight
/// lanes, which held the reload over a minute: the stalled loads are refused naming the
/// bound, and their programs stopped; the control: a server that answers loads in the same
/// discovery.
#[test]
fn a_discovery_whose_loads_stall_answers_within_its_whole_bound() {
    const TEST: &str = "a_discovery_whose_loads_stall_answers_within_its_whole_bound";
    if !is_root() {
        return skip(TEST, "sandboxed stdio workers need root");
    }
    let home = Home::new();
    let (dir, script) = scale_peer();
    install_scale_peer(&home, dir.path(), &script, "a-ok", "serve", 1);
    let stalled: Vec<String> = (0..10).map(|n| format!("s-{n:02}")).collect();
    for id in &stalled {
        install_scale_peer(&home, dir.path(), &script, id, "stall", 1);
    }
    let started = std::time::Instant::now();
    home.start_env(&[("LOONG_TEST_DISCOVERY_MS", "3000")]);
    let start = started.elapsed();
    let started = std::time::Instant::now();
    let out = home.ctl(&["plugins", "reload"]);
    let reload = started.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Each stalled load alone takes 30 s; ten over eight lanes took 60 s and more.
    assert!(
        start < Duration::from_secs(25) && reload < Duration::from_secs(25),
        "start {start:?}, reload {reload:?}"
    );
    let mut ids = vec!["a-ok"];
    ids.extend(stalled.iter().map(String::as_str));
    let got = states(&home, &ids);
    assert_eq!(got[0], "ready", "{got:?}\n{}", home.log());
    assert!(got[1..].iter().all(|s| s == "failed"), "{got:?}");
    let refused = details(&home, "plugin.refused");
    for id in &stalled {
        assert!(
            refused.iter().any(|d| d["plugin"] == id.as_str()
                && d["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("MAX_DISCOVERY_TIME"))),
            "{id}: {refused:?}"
        );
    }
    let marker = format!("{} s-", dir.path().display());
    assert!(
        wait_until(Duration::from_secs(20), || !running_with(&marker)),
        "a stalled server still runs"
    );
}

/// An install or an upgrade counts the set it would make against `MAX_SET_TOOLS` (here the
/// debug build's override, one tool more than the set holds at start): past it the install
/// is refused naming the bound, the set in place kept, rather than switched in for the next
/// reload to cut in id order. The controls: an install that fits is taken, and an upgrade of
/// it (the same count) too.
#[test]
fn an_install_past_the_sets_tool_bound_is_refused_and_the_set_in_place_kept() {
    use crate::supply_chain::{ctl_ok, example_module, wasm_package};
    const TEST: &str = "an_install_past_the_sets_tool_bound_is_refused_and_the_set_in_place_kept";
    if !is_root() {
        return skip(TEST, "sandboxed workers need root");
    }
    let home = Home::new();
    home.start();
    let held = |home: &Home| -> u64 {
        plugins(home)
            .iter()
            .filter(|p| p["state"] == "ready")
            .map(|p| p["tool_count"].as_u64().unwrap_or(0).max(1))
            .sum()
    };
    let at_start = held(&home);
    let out = home.ctl(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bound = (at_start + 1).to_string();
    home.start_env(&[("LOONG_TEST_MAX_SET_TOOLS", &bound)]);
    assert_eq!(held(&home), at_start, "{}", home.log());
    let work = tempfile::Builder::new()
        .prefix("lsb")
        .tempdir_in("/tmp")
        .expect("work");
    let (one, two) = (work.path().join("one"), work.path().join("two"));
    wasm_package(&one, "one", "1", &example_module("echo"), None);
    wasm_package(&two, "two", "1", &example_module("echo"), None);
    // The control: one more tool fits.
    ctl_ok(&home, &["plugins", "install", &one.display().to_string()]);
    assert_eq!(held(&home), at_start + 1);
    // Past the bound: refused, naming it; the set keeps what it held.
    let out = home.ctl(&["plugins", "install", &two.display().to_string()]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "installed past the bound");
    assert!(
        err.contains("two") && err.contains("MAX_SET_TOOLS") && err.contains(&bound),
        "{err}"
    );
    assert!(plugins(&home).iter().all(|p| p["id"] != "two"));
    assert_eq!(held(&home), at_start + 1);
    assert!(!home.path().join("plugins/two").exists());
    // An upgrade replaces its plugin's tools: it fits.
    let one2 = work.path().join("one-2");
    wasm_package(&one2, "one", "2", &example_module("echo"), None);
    ctl_ok(&home, &["plugins", "install", &one2.display().to_string()]);
    assert!(plugins(&home)
        .iter()
        .any(|p| p["id"] == "one" && p["version"] == "2" && p["state"] == "ready"));
}
