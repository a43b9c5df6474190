//! Plugins end to end: loongctl → loongd (decision, audit) → a restricted WASM worker → back.
//! Hostile plugins, a worker killed mid-call, many calls at once, denials and approvals; after
//! every failure a normal call must succeed on the same, never restarted, daemon.

use std::{
    collections::BTreeSet,
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use loong_ipc::{
    client::{Client, ConnectOptions},
    ControlRequest, ControlResponse, InvokeRequest, PeerKind,
};

use crate::support::{bin, is_root, process_alive, text, wait_until, Home};

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins")
}

/// Copies the example plugins (their committed `plugin.wasm`) into `home/plugins`.
pub(crate) fn install_examples(home: &Home) {
    for name in ["echo", "json-transform", "config-reader"] {
        let dst = home.path().join("plugins").join(name);
        fs::create_dir_all(&dst).expect("plugin dir");
        for f in ["loong.plugin.json", "plugin.wasm"] {
            fs::copy(examples().join(name).join(f), dst.join(f)).expect("copy example");
        }
    }
}

/// Installs a plugin from WAT with extra `sandbox` fields (a JSON object's inner text); the
/// guest reads the caller's input as given (`sandbox.input = "bare"`).
pub(crate) fn install(home: &Home, id: &str, wat_text: &str, sandbox_extra: &str) {
    let dir = home.path().join("plugins").join(id);
    fs::create_dir_all(&dir).expect("plugin dir");
    let module = wat::parse_str(wat_text).expect("test WAT compiles");
    fs::write(dir.join("plugin.wasm"), module).expect("module");
    let comma = if sandbox_extra.is_empty() { "" } else { ", " };
    let manifest = format!(
        r#"{{"api_version": "v1alpha1", "plugin_id": "{id}", "version": "0.1.0", "summary": "test",
        "capabilities": [], "metadata": {{"bridge_kind": "wasm", "component": "plugin.wasm"}},
        "sandbox": {{"input": "bare", "tier": "restricted"{comma}{sandbox_extra}}}}}"#
    );
    fs::write(dir.join("loong.plugin.json"), manifest).expect("manifest");
}

const IMPORTS: &str = r#"
  (import "loong" "input_len" (func $input_len (result i32)))
  (import "loong" "read_input" (func $read_input (param i32 i32) (result i32)))
  (import "loong" "write_output" (func $write_output (param i32 i32) (result i32)))
  (import "loong" "abort" (func $abort (param i32)))
"#;

pub(crate) fn module(body: &str) -> String {
    format!("(module {IMPORTS} (memory (export \"memory\") 1) {body})")
}

/// `loongctl invoke`, returning (exit code, stdout, stderr).
pub(crate) fn invoke(home: &Home, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["invoke"];
    all.extend_from_slice(args);
    let out = home.ctl(&all);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// The positive control: echo answers its input.
pub(crate) fn echo_works(home: &Home) {
    let (code, out, err) = invoke(home, &["echo", "--input", r#"{"ping":1}"#]);
    assert_eq!(
        (code, out.trim()),
        (0, r#"{"ping":1}"#),
        "echo failed: {err}"
    );
}

/// The JSON array a `loongctl … --json` command prints; the command must succeed.
pub(crate) fn json_list(home: &Home, args: &[&str]) -> Vec<serde_json::Value> {
    let out = home.ctl(args);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?} prints JSON: {e}"))
        .as_array()
        .cloned()
        .expect("a JSON array")
}

pub(crate) fn plugins(home: &Home) -> Vec<serde_json::Value> {
    json_list(home, &["plugins", "list", "--json"])
}

pub(crate) fn workers(home: &Home) -> Vec<serde_json::Value> {
    json_list(home, &["workers", "list", "--json"])
}

/// Audit records of `kind`, as JSON objects (newest first).
pub(crate) fn records(home: &Home, kind: &str) -> Vec<serde_json::Value> {
    json_list(
        home,
        &[
            "audit", "recent", "--kind", kind, "--limit", "1000", "--json",
        ],
    )
}

/// The details of the audit records of `kind` (newest first).
pub(crate) fn details(home: &Home, kind: &str) -> Vec<serde_json::Value> {
    records(home, kind).iter().map(detail).collect()
}

pub(crate) fn detail(r: &serde_json::Value) -> serde_json::Value {
    match &r["detail"] {
        serde_json::Value::String(s) => serde_json::from_str(s).expect("detail JSON"),
        other => other.clone(),
    }
}

pub(crate) fn status_field(pid: u64, field: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
}

/// Rewrites the installed echo's manifest with `metadata.component_sha256` and
/// `sandbox.sha256` set (`None`: absent) and reloads.
fn pin_echo(home: &Home, component_sha256: Option<&str>, sandbox_sha256: Option<&str>) {
    pin_plugin(home, "echo", component_sha256, sandbox_sha256);
}

/// [`pin_echo`] for plugin `id`.
fn pin_plugin(home: &Home, id: &str, component_sha256: Option<&str>, sandbox_sha256: Option<&str>) {
    let path = home.path().join(format!("plugins/{id}/loong.plugin.json"));
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs::read(&path).expect("manifest")).expect("manifest JSON");
    match component_sha256 {
        Some(pin) => m["metadata"]["component_sha256"] = pin.into(),
        None => {
            m["metadata"]
                .as_object_mut()
                .expect("metadata")
                .remove("component_sha256");
        }
    }
    m["sandbox"]["sha256"] = sandbox_sha256.into();
    fs::write(&path, m.to_string()).expect("manifest");
    let out = home.ctl(&["plugins", "reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Public Loong's pin, `metadata.component_sha256`, is honoured by loongd before a worker
/// sees the module: a matching pin (in each spelling public Loong accepts) loads, a wrong
/// one, a malformed one and one that disagrees with `sandbox.sha256` are refused, listed
/// with the reason and audited as `plugin.refused`.
#[test]
fn component_sha256_pins_are_honoured() {
    use sha2::{Digest, Sha256};
    let home = Home::new();
    install_examples(&home);
    let actual = hex::encode(Sha256::digest(
        fs::read(home.path().join("plugins/echo/plugin.wasm")).expect("module"),
    ));
    home.start();
    echo_works(&home);
    let echo = |home: &Home| {
        plugins(home)
            .into_iter()
            .find(|p| p["id"] == "echo")
            .expect("echo listed")
    };
    let refusals = |home: &Home| {
        details(home, "plugin.refused")
            .into_iter()
            .filter(|d| d["plugin"] == "echo")
            .count()
    };

    // Positive controls: the right digest in each accepted spelling and place answers.
    let upper = format!("  SHA256:{}\n", actual.to_uppercase());
    let prefixed = format!("sha256:{actual}");
    for (component, sandbox) in [
        (Some(actual.as_str()), None),
        (Some(upper.as_str()), None),
        (Some(prefixed.as_str()), None),
        (Some(upper.as_str()), Some(actual.as_str())),
        (None, Some(prefixed.as_str())),
    ] {
        pin_echo(&home, component, sandbox);
        let p = echo(&home);
        assert_eq!(p["state"], "ready", "{component:?} {sandbox:?}: {p}");
        assert_eq!(p["sha256"], actual.as_str(), "{p}");
        echo_works(&home);
    }
    assert_eq!(refusals(&home), 0);

    // A wrong pin: refused, naming the field, the pinned and the actual digest.
    let wrong = "0".repeat(64);
    let other = format!("sha256:{}", "1f".repeat(32));
    let cases: [(Option<&str>, Option<&str>, &[&str]); 4] = [
        (
            Some(&wrong),
            None,
            &[
                "metadata.component_sha256",
                &wrong,
                &actual,
                "correct the pin",
            ],
        ),
        (
            Some("sha256:abc"),
            None,
            &[
                "metadata.component_sha256",
                "\"sha256:abc\" is not a sha256 digest",
            ],
        ),
        (
            Some(" "),
            None,
            &["metadata.component_sha256", "is not a sha256 digest"],
        ),
        (
            Some(&actual),
            Some(&other),
            &[
                "sandbox.sha256",
                "metadata.component_sha256",
                "make the two pins agree",
            ],
        ),
    ];
    for (n, (component, sandbox, says)) in cases.into_iter().enumerate() {
        pin_echo(&home, component, sandbox);
        let p = echo(&home);
        assert_eq!(p["state"], "failed", "{component:?} {sandbox:?}: {p}");
        let why = p["error"].as_str().unwrap_or_default();
        for s in says {
            assert!(why.contains(s), "{s:?} not in {why}");
        }
        let (code, _, err) = invoke(&home, &["echo", "--input", "{}"]);
        assert!(code == 2 && err.contains("failed state"), "{code} {err}");
        assert_eq!(refusals(&home), n + 1, "each refusal is audited");
        let audited = details(&home, "plugin.refused");
        assert_eq!(audited[0]["plugin"], "echo", "{audited:?}");
        assert_eq!(audited[0]["reason"], why, "{audited:?}");
    }

    // And a fixed pin loads again.
    pin_echo(&home, Some(&prefixed), None);
    assert_eq!(echo(&home)["state"], "ready");
    echo_works(&home);

    // `plugins install` reads the package the same way: a wrong pin is refused and audited,
    // the right one installs.
    let pkg = tempfile::tempdir().expect("package dir");
    let dir = pkg.path().join("pinned-echo");
    fs::create_dir_all(&dir).expect("dir");
    let echo_dir = home.path().join("plugins/echo");
    fs::copy(echo_dir.join("plugin.wasm"), dir.join("plugin.wasm")).expect("module");
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs::read(echo_dir.join("loong.plugin.json")).expect("manifest"))
            .expect("manifest JSON");
    m["plugin_id"] = "pinned-echo".into();
    let shown = dir.display().to_string();
    for (pin, installs) in [(wrong.as_str(), false), (upper.as_str(), true)] {
        m["metadata"]["component_sha256"] = pin.into();
        fs::write(dir.join("loong.plugin.json"), m.to_string()).expect("manifest");
        let out = home.ctl(&["plugins", "install", &shown]);
        let err = text(&out.stderr);
        assert_eq!(out.status.success(), installs, "{pin}: {err}");
        if !installs {
            assert!(
                err.contains("metadata.component_sha256") && err.contains(&actual),
                "{err}"
            );
            let audited = details(&home, "plugin.refused");
            assert_eq!(audited[0]["plugin"], "pinned-echo", "{audited:?}");
        }
    }
    let (code, out, err) = invoke(&home, &["pinned-echo", "--input", "[1]"]);
    assert_eq!((code, out.trim()), (0, "[1]"), "{err}");
}

/// The operator's side: `[plugins.wasm_sha256]` pins a plugin's module from loongd.toml and
/// `[plugins] require_wasm_pin` refuses a module pinned nowhere; both refusals are listed and
/// audited as `plugin.refused`, and the plugins that satisfy them load.
#[test]
fn operator_pins_and_the_require_pin_policy_refuse_at_load() {
    use sha2::{Digest, Sha256};
    let digest = |home: &Home, id: &str| {
        hex::encode(Sha256::digest(
            fs::read(home.path().join(format!("plugins/{id}/plugin.wasm"))).expect("module"),
        ))
    };
    let probe = Home::new();
    install_examples(&probe);
    let (echo, transform) = (digest(&probe, "echo"), digest(&probe, "json-transform"));
    let reader = digest(&probe, "config-reader");
    let wrong = "0".repeat(64);
    let home = Home::with_config(&format!(
        "[plugins]\nrequire_wasm_pin = true\n[plugins.wasm_sha256]\necho = \" SHA256:{}\"\n\"json-transform\" = \"sha256:{wrong}\"\n",
        echo.to_uppercase()
    ));
    install_examples(&home);
    home.start();
    let state = |home: &Home, id: &str| {
        plugins(home)
            .into_iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("{id} listed"))
    };
    // Positive control: the operator's pin matches, so echo loads and answers.
    assert_eq!(state(&home, "echo")["state"], "ready");
    echo_works(&home);
    let refused: [(&str, &[&str]); 2] = [
        (
            "json-transform",
            &[
                "loongd.toml plugins.wasm_sha256.json-transform",
                &wrong,
                &transform,
            ],
        ),
        ("config-reader", &["not pinned", "plugins.require_wasm_pin"]),
    ];
    let audited = details(&home, "plugin.refused");
    for (id, says) in refused {
        let p = state(&home, id);
        assert_eq!(p["state"], "failed", "{p}");
        let why = p["error"].as_str().unwrap_or_default();
        for s in says {
            assert!(why.contains(s), "{id}: {s:?} not in {why}");
        }
        assert!(
            audited
                .iter()
                .any(|d| d["plugin"] == id && d["reason"] == why),
            "{id}: {audited:?}"
        );
    }
    assert_eq!(audited.len(), 2, "{audited:?}");
    // The manifest's own pin satisfies the policy: config-reader pinned there loads.
    pin_plugin(
        &home,
        "config-reader",
        Some(&format!("sha256:{reader}")),
        None,
    );
    assert_eq!(state(&home, "config-reader")["state"], "ready");
    // A manifest pin that matches the module but not the operator's pin is still refused.
    pin_plugin(&home, "json-transform", Some(&transform), None);
    let p = state(&home, "json-transform");
    assert_eq!(p["state"], "failed", "{p}");
}

#[test]
fn example_plugins_run_confined_and_audited() {
    let home = Home::new();
    install_examples(&home);
    home.start();
    let ps = plugins(&home);
    assert_eq!(ps.len(), 3, "{ps:?}");
    for p in &ps {
        assert_eq!(p["state"], "ready", "{p}");
        assert_eq!(p["sha256"].as_str().map(str::len), Some(64), "{p}");
    }

    echo_works(&home);
    let (code, out, err) = invoke(&home, &["config-reader", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("invoke JSON");
    assert_eq!(v["output"]["provider.name"], "demo");
    assert_eq!(
        v["output"]["secret.token"], "unavailable",
        "a key outside the allowlist must not reach the guest"
    );
    assert!(v["fuel_consumed"].as_u64().is_some_and(|f| f > 0), "{v}");
    let input = home.path().join("input.json");
    fs::write(&input, r#"{"x":[1,2]}"#).expect("input file");
    let (code, out, err) = invoke(
        &home,
        &[
            "json-transform",
            "--input",
            &format!("@{}", input.display()),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).expect("JSON"),
        serde_json::json!({"plugin": "json-transform", "input": {"x": [1, 2]}})
    );

    // The worker runs as a restricted sandbox plus its own final filter.
    let ws = workers(&home);
    assert!(!ws.is_empty());
    let w = &ws[0];
    assert_eq!(
        (w["tier"].as_str(), w["kind"].as_str()),
        (Some("restricted"), Some("wasm"))
    );
    let pid = w["pid"].as_u64().expect("pid");
    // The helper's pid is the sandbox's outermost process; the worker is its descendant.
    let worker_pid = find_descendant(pid, "loong-worker-wa").expect("worker process");
    assert_eq!(status_field(worker_pid, "NoNewPrivs").as_deref(), Some("1"));
    assert_eq!(status_field(worker_pid, "Seccomp").as_deref(), Some("2"));
    // The tier's guard and allowlist (one program: `seccomp::chain`), then the worker's own
    // final filter.
    assert_eq!(
        status_field(worker_pid, "Seccomp_filters").as_deref(),
        Some("2")
    );
    // Every thread, the epoch ticker included, carries the final filter.
    let tasks: Vec<String> = fs::read_dir(format!("/proc/{worker_pid}/task"))
        .expect("tasks")
        .flatten()
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        tasks.len() >= 2,
        "the worker runs its ticker thread: {tasks:?}"
    );
    for t in &tasks {
        let st = fs::read_to_string(format!("/proc/{worker_pid}/task/{t}/status")).expect("status");
        assert!(st.contains("Seccomp_filters:\t2"), "thread {t}: {st}");
    }
    assert_eq!(
        status_field(worker_pid, "CapEff").as_deref(),
        Some("0000000000000000")
    );
    if is_root() {
        let uid = status_field(worker_pid, "Uid").expect("uid");
        assert!(uid.starts_with("65534"), "worker runs as nobody: {uid}");
    }

    // Each call: a decision, an invocation and a completion with the same correlation.
    let done = records(&home, "tool.completed");
    assert_eq!(done.len(), 3, "{done:?}");
    let corr = done[0]["correlation"]
        .as_str()
        .expect("correlation")
        .to_string();
    for kind in ["policy.decision", "tool.invoked"] {
        assert!(
            records(&home, kind)
                .iter()
                .any(|r| r["correlation"] == corr.as_str()),
            "{kind} for {corr} missing"
        );
    }
    assert_eq!(records(&home, "plugin.loaded").len(), 3);
    assert!(!records(&home, "worker.spawned").is_empty());
    let out = home.ctl(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Unknown tools and bad input are refused by name, and nothing runs.
    let (code, _, err) = invoke(&home, &["no-such-tool"]);
    assert!(code != 0 && err.contains("no-such-tool"), "{code} {err}");
    let (code, _, err) = invoke(&home, &["echo", "--input", "{not json"]);
    assert!(code == 2 && err.contains("not JSON"), "{code} {err}");
    echo_works(&home);
}

/// The first process under `pid` (itself included) whose comm starts with `comm`.
pub(crate) fn find_descendant(pid: u64, comm: &str) -> Option<u64> {
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let name = fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        if name.trim().starts_with(comm) {
            return Some(p);
        }
        let kids = fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        queue.extend(
            kids.split_whitespace()
                .filter_map(|k| k.parse::<u64>().ok()),
        );
    }
    None
}

#[test]
fn hostile_plugins_fail_cleanly_and_loongd_stays_up() {
    let home = Home::new();
    install_examples(&home);
    install_spin(&home, 300);
    install(
        &home,
        "grow",
        &module(
            r#"(func (export "run") (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (unreachable))"#,
        ),
        r#""max_memory_bytes": 4194304"#,
    );
    install(
        &home,
        "flood",
        &module(
            // Each write over the cap answers -1 (public Loong's code) and the call fails with
            // it; the guest keeps trying a thousand times.
            r#"(func (export "run") (local $i i32)
                 (loop $l (drop (call $write_output (i32.const 0) (i32.const 65536)))
                   (local.set $i (i32.add (local.get $i) (i32.const 1)))
                   (br_if $l (i32.lt_u (local.get $i) (i32.const 1000)))))"#,
        ),
        r#""max_output_bytes": 1024"#,
    );
    install(
        &home,
        "aborts",
        &module(r#"(func (export "run") (call $abort (i32.const 42)))"#),
        "",
    );
    install(
        &home,
        "wasi",
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
           (memory (export "memory") 1) (func (export "run")))"#,
        "",
    );
    install(
        &home,
        "blocked",
        r#"(module (import "env" "open" (func)) (memory (export "memory") 1) (func (export "run")))"#,
        r#""blocked_import_prefixes": ["env"]"#,
    );
    install(
        &home,
        "big",
        &module(r#"(data (i32.const 0) "0123456789abcdef0123456789abcdef") (func (export "run"))"#),
        r#""max_module_bytes": 64"#,
    );
    install(
        &home,
        "pinned",
        &module(r#"(func (export "run"))"#),
        &format!(r#""sha256": "{}""#, "0".repeat(64)),
    );
    let pid = home.start();

    let calls: [(&str, &str); 4] = [
        ("spin", "timeout"),
        ("grow", "memory"),
        ("flood", "output"),
        ("aborts", "abort(42)"),
    ];
    for (tool, expect) in calls {
        let (code, _, err) = invoke(&home, &[tool]);
        assert_eq!(code, 7, "{tool}: exit {code}: {err}");
        assert!(err.contains(expect), "{tool}: {err}");
        echo_works(&home);
        assert_eq!(home.status().pid, pid, "loongd restarted after {tool}");
    }

    let ps = plugins(&home);
    let state = |id: &str| {
        ps.iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {ps:?}"))
            .clone()
    };
    let refusals = [
        ("wasi", "wasi"),
        ("blocked", "env"),
        ("big", "over the cap"),
        ("pinned", "sha256"),
    ];
    for (id, expect) in refusals {
        let p = state(id);
        assert_eq!(p["state"], "failed", "{p}");
        let why = p["error"].as_str().unwrap_or_default();
        assert!(why.contains(expect), "{id}: {why}");
        let (code, _, err) = invoke(&home, &[id]);
        assert!(
            code == 2 && err.contains("failed state"),
            "{id}: {code} {err}"
        );
        echo_works(&home);
    }
    // Positive controls for the refusals: the same manifests' neighbours load.
    assert_eq!(state("echo")["state"], "ready");
    assert_eq!(records(&home, "plugin.refused").len(), refusals.len());

    // A broken manifest fails that plugin only, and `plugins reload` picks up a fix.
    let broken = home.path().join("plugins/broken");
    fs::create_dir_all(&broken).expect("dir");
    fs::write(broken.join("loong.plugin.json"), "{ not json").expect("manifest");
    let out = home.ctl(&["plugins", "reload", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let p = state_after_reload(&home, "broken");
    assert_eq!(p["state"], "failed");
    assert!(
        p["error"]
            .as_str()
            .unwrap_or_default()
            .contains("loong.plugin.json"),
        "{p}"
    );
    install(&home, "broken", &module(r#"(func (export "run"))"#), "");
    home.ctl(&["plugins", "reload"]);
    assert_eq!(state_after_reload(&home, "broken")["state"], "ready");

    let failed = records(&home, "tool.failed");
    let classes: BTreeSet<String> = failed
        .iter()
        .filter_map(|r| detail(r)["failure"].as_str().map(String::from))
        .collect();
    for c in ["timeout", "memory_limit", "output_too_large", "aborted"] {
        assert!(
            classes.contains(c),
            "no tool.failed of class {c}: {classes:?}"
        );
    }
    assert_eq!(home.status().pid, pid);
}

fn state_after_reload(home: &Home, id: &str) -> serde_json::Value {
    plugins(home)
        .into_iter()
        .find(|p| p["id"] == id)
        .expect("listed")
}

#[test]
fn a_worker_killed_mid_call_fails_that_call_and_is_replaced() {
    let home = Home::new();
    install_examples(&home);
    install_spin(&home, 30_000);
    let pid = home.start();
    let call = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["invoke", "spin"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("invoke");
    let mut busy = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            busy = workers(&home)
                .into_iter()
                .find(|w| w["state"] == "busy" && w["tool"] == "spin");
            busy.is_some()
        }),
        "no worker became busy"
    );
    let busy = busy.expect("busy worker");
    let (id, wpid) = (
        busy["id"].as_u64().expect("id"),
        busy["pid"].as_u64().expect("pid"),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(wpid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the worker");
    let out = call.wait_with_output().expect("invoke ends");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("worker"),
        "{}",
        text(&out.stderr)
    );

    // The next call succeeds on a replacement, and the daemon never restarted.
    echo_works(&home);
    assert_eq!(home.status().pid, pid);
    assert!(
        workers(&home).iter().all(|w| w["id"].as_u64() != Some(id)),
        "the killed worker is still listed"
    );
    let exited = records(&home, "worker.exited");
    let d = exited
        .iter()
        .map(detail)
        .find(|d| d["worker"].as_u64() == Some(id))
        .expect("worker.exited for the killed worker");
    assert_eq!(d["signal"].as_i64(), Some(9), "{d}");
    assert!(
        records(&home, "tool.failed")
            .iter()
            .map(detail)
            .any(|d| d["tool"] == "spin" && d["failure"] == "worker_died"),
        "tool.failed for the killed call"
    );
    assert!(
        records(&home, "worker.spawned").len() >= 2,
        "no replacement spawned"
    );

    // `workers kill` by an operator: audited with who did it, and the pool recovers.
    let idle = workers(&home)[0]["id"].as_u64().expect("id");
    let out = home.ctl(&["workers", "kill", &idle.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    echo_works(&home);
    assert!(
        wait_until(Duration::from_secs(5), || records(&home, "worker.exited")
            .iter()
            .map(detail)
            .any(
                |d| d["worker"].as_u64() == Some(idle) && d["killed_by"].is_string()
            )),
        "operator kill not audited"
    );
    let out = home.ctl(&["workers", "kill", "999999"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(process_alive(pid));
}

#[test]
fn concurrent_invocations_are_each_answered_exactly_once() {
    const THREADS: usize = 20;
    const PER_THREAD: usize = 15;
    let home = Home::new();
    install_examples(&home);
    home.start();
    let socket = home.socket();
    let answers: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let socket = socket.clone();
                s.spawn(move || {
                    let opts = ConnectOptions {
                        peer_kind: PeerKind::Operator,
                        build: "test".into(),
                        timeout: Duration::from_secs(5),
                    };
                    let mut c = Client::connect(&socket, &opts).expect("connect");
                    (0..PER_THREAD)
                        .map(|i| {
                            let n = (t * PER_THREAD + i) as u64;
                            let r: ControlResponse = c
                                .call(
                                    ControlRequest::Invoke(InvokeRequest {
                                        tool: "echo".into(),
                                        input: format!(r#"{{"n":{n}}}"#),
                                        token: None,
                                    }),
                                    Duration::from_secs(60),
                                )
                                .expect("call answered");
                            let ControlResponse::Invoked(out) = r else {
                                panic!("unexpected answer {r:?}");
                            };
                            let v: serde_json::Value =
                                serde_json::from_str(&out.output).expect("JSON output");
                            assert_eq!(v["n"].as_u64(), Some(n), "answer to another call");
                            n
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let all: Vec<u64> = answers.into_iter().flatten().collect();
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    let total = THREADS * PER_THREAD;
    assert_eq!(all.len(), total);
    assert_eq!(unique.len(), total, "a call was answered twice or lost");
    assert_eq!(records(&home, "tool.completed").len(), total);
    assert!(records(&home, "tool.failed").is_empty());
    // Never more workers than the pool holds (2 by default): nothing died, and a health
    // check never leaves a call without an idle worker.
    let spawned = records(&home, "worker.spawned").len();
    assert!((1..=2).contains(&spawned), "{spawned} workers spawned");
}

/// Installs `spin`, a WASM plugin that loops until its deadline (`timeout_ms`).
pub(crate) fn install_spin(home: &Home, timeout_ms: u64) {
    install(
        home,
        "spin",
        &module(r#"(func (export "run") (loop $l (br $l)))"#),
        &format!(r#""timeout_ms": {timeout_ms}"#),
    );
}

/// Installs the example plugins, adds a pack `careful` whose grant of `echo` always needs an
/// approval, and starts loongd.
pub(crate) fn start_with_careful_pack(home: &Home) {
    install_examples(home);
    fs::create_dir_all(home.path().join("packs")).expect("packs");
    fs::write(
        home.path().join("packs/careful.toml"),
        "id = \"careful\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke:echo\"]\napproval = \"always\"\n",
    )
    .expect("pack");
    home.start();
}

/// The secret of a new token of `pack` for agent `bot` granting `tool.invoke:echo` for an hour.
pub(crate) fn echo_token(home: &Home, pack: &str) -> String {
    let out = home.ctl(&[
        "tokens",
        "issue",
        "--pack",
        pack,
        "--agent",
        "bot",
        "--cap",
        "tool.invoke:echo",
        "--ttl",
        "1h",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

#[test]
fn tool_calls_are_decided_denied_and_held_for_approval() {
    let home = Home::with_config("[approvals]\ntimeout_ms = 400\n");
    start_with_careful_pack(&home);
    let token = |pack: &str| echo_token(&home, pack);
    let reader = token("docs-reader");
    // Allowed within the token's grant (positive control), denied outside it: exit 4.
    let (code, out, err) = invoke(&home, &["echo", "--token", &reader, "--input", "{}"]);
    assert_eq!((code, out.trim()), (0, "{}"), "{err}");
    let (code, _, err) = invoke(&home, &["json-transform", "--token", &reader]);
    assert_eq!(code, 4, "{err}");
    // A pack that always asks: unanswered, the call ends with exit 5 and nothing ran.
    let careful = token("careful");
    let before = records(&home, "tool.invoked").len();
    let (code, _, err) = invoke(&home, &["echo", "--token", &careful]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("approval"), "{err}");
    assert_eq!(
        records(&home, "tool.invoked").len(),
        before,
        "a held call ran"
    );
    echo_works(&home);
}

/// The same call from a loongd without privileges (as `nobody` through setpriv when the tests
/// run as root): user namespaces instead of a uid change, `RLIMIT_NPROC` instead of a cgroup
/// for the worker's threads, and the same final self-confinement.
#[test]
fn plugins_run_under_an_unprivileged_loongd() {
    let as_nobody = is_root();
    // Without subordinate ids: the degraded mode, which must be chosen (rootless.rs runs
    // plugins with subordinate ids).
    let home = Home::with_config("[sandbox]\nrootless_own_uid = true\n");
    install_examples(&home);
    if as_nobody {
        let out = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(home.path())
            .output()
            .expect("chown");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let ctl = |args: &[&str]| crate::support::ctl(&home, as_nobody, args);
    let started = ctl(&["daemon", "start"]);
    if !started.status.success() {
        let err = text(&started.stderr);
        if err.contains("user namespace") || err.contains("unavailable") {
            crate::support::skip(
                "plugins_run_under_an_unprivileged_loongd",
                "user namespaces are not available to an unprivileged loongd here",
            );
            return;
        }
        panic!("unprivileged daemon start failed: {err}\n{}", home.log());
    }
    let out = ctl(&["invoke", "echo", "--input", r#"{"u":1}"#]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        home.log()
    );
    assert_eq!(text(&out.stdout).trim(), r#"{"u":1}"#);
    let out = ctl(&["workers", "list", "--json"]);
    let ws: serde_json::Value = serde_json::from_slice(&out.stdout).expect("workers JSON");
    let pid = ws[0]["pid"].as_u64().expect("pid");
    let worker = find_descendant(pid, "loong-worker-wa").expect("worker process");
    // The tier's program and the worker's own final filter.
    assert_eq!(
        status_field(worker, "Seccomp_filters").as_deref(),
        Some("2")
    );
    // A second plugin, with a fuel budget, loads into the same confined worker.
    let out = ctl(&["invoke", "config-reader"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("demo"), "{}", text(&out.stdout));
    let out = ctl(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A worker that stops answering (SIGSTOP) is found by the health check, retired, audited
/// and replaced; a call afterwards succeeds.
#[test]
fn a_silent_worker_is_retired_by_the_health_check() {
    let home = Home::new();
    install_examples(&home);
    let pid = home.start();
    echo_works(&home);
    // The worker that served the call (a spare may be listed beside it).
    let ws: Vec<_> = workers(&home)
        .into_iter()
        .filter(|w| w["calls"].as_u64() > Some(0))
        .collect();
    assert_eq!(ws.len(), 1, "{ws:?}");
    let id = ws[0]["id"].as_u64().expect("id");
    let helper = ws[0]["pid"].as_u64().expect("pid");
    let worker = find_descendant(helper, "loong-worker-wa").expect("worker process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(worker).expect("pid")),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("stop the worker");
    // Health checks run every 5 s and give a ping 1 s.
    let retired = wait_until(Duration::from_secs(20), || {
        records(&home, "worker.exited").iter().map(detail).any(|d| {
            d["worker"].as_u64() == Some(id)
                && d["why"]
                    .as_str()
                    .is_some_and(|w| w.contains("health check"))
        })
    });
    assert!(retired, "the stopped worker was not retired");
    echo_works(&home);
    assert!(workers(&home).iter().all(|w| w["id"].as_u64() != Some(id)));
    assert_eq!(home.status().pid, pid);
}

/// An answer larger than the connection's frame limit is refused by name (exit 7) instead of
/// breaking the connection; a small call on the same daemon still succeeds.
#[test]
fn an_answer_over_the_frame_limit_is_a_clean_failure() {
    let home = Home::with_config("[ipc]\nmax_frame_bytes = 65536\n");
    install_examples(&home);
    // A JSON string of 100,000 `a`s.
    let big = |home: &Home| {
        install(
            home,
            "big-answer",
            r#"(module
             (import "loong" "write_output" (func $write_output (param i32 i32) (result i32)))
             (memory (export "memory") 2)
             (data (i32.const 0) "\"")
             (func (export "run")
               (memory.fill (i32.const 1) (i32.const 97) (i32.const 100000))
               (i32.store8 (i32.const 100001) (i32.const 34))
               (drop (call $write_output (i32.const 0) (i32.const 100002)))))"#,
            "",
        )
    };
    // Positive control: under the default 1 MiB frame limit the same answer arrives whole.
    let roomy = Home::new();
    big(&roomy);
    roomy.start();
    let (code, out, err) = invoke(&roomy, &["big-answer"]);
    assert_eq!((code, out.trim().len()), (0, 100_002), "{err}");

    big(&home);
    let pid = home.start();
    let (code, _, err) = invoke(&home, &["big-answer"]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("frame limit"), "{err}");
    echo_works(&home);
    assert_eq!(home.status().pid, pid);
    assert!(records(&home, "tool.failed")
        .iter()
        .map(detail)
        .any(|d| d["tool"] == "big-answer" && d["failure"] == "output_too_large"));
}
