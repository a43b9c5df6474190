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
    support::{is_root, skip, text, Home},
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
