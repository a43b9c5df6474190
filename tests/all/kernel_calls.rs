//! Kernel calls end to end: a plugin's worker asks loongd for a tool call while it serves a
//! call, and loongd decides it under the chain's authority (the root's token or the
//! operator's pack, narrowed by the calling plugin's declared capabilities), bounds it
//! (depth, the root's calls and wall time) and audits it with the chain.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    support::{bin, text, wait_until, Home},
    workers::{detail, echo_works, install_examples, invoke, records, workers},
};

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins")
}

/// Installs the `tool-caller` example as plugin `id`, calling `tool` instead of `echo`,
/// declaring `capabilities` (a JSON array's inner text), with `timeout_ms`.
fn install_caller(home: &Home, id: &str, tool: &str, capabilities: &str, timeout_ms: u64) {
    let wat = fs::read_to_string(examples().join("tool-caller/plugin.wat")).expect("example");
    let name_len = tool.len().to_string();
    let wat = wat
        .replace(
            r#"(data (i32.const 0) "echo")"#,
            &format!(r#"(data (i32.const 0) "{tool}")"#),
        )
        .replace(
            "(i32.const 0) (i32.const 4) (i32.const 65536)",
            &format!("(i32.const 0) (i32.const {name_len}) (i32.const 65536)"),
        );
    let dir = home.path().join("plugins").join(id);
    fs::create_dir_all(&dir).expect("plugin dir");
    fs::write(
        dir.join("plugin.wasm"),
        wat::parse_str(&wat).expect("caller WAT compiles"),
    )
    .expect("module");
    let manifest = format!(
        r#"{{"api_version": "v1alpha1", "plugin_id": "{id}", "version": "0.1.0", "summary": "test",
        "capabilities": [{capabilities}], "metadata": {{"bridge_kind": "wasm", "component": "plugin.wasm"}},
        "sandbox": {{"input": "bare", "tier": "restricted", "timeout_ms": {timeout_ms}}}}}"#
    );
    fs::write(dir.join("loong.plugin.json"), manifest).expect("manifest");
}

/// A pack `t` granting `tool.invoke` on every tool, for tokens narrowed by `--cap`.
pub(crate) fn pack(home: &Home) {
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\n",
    )
    .expect("pack");
}

/// Issues a token of pack `t` with `caps`; its secret and public id.
pub(crate) fn issue(home: &Home, caps: &[&str]) -> (String, String) {
    let mut a = vec![
        "tokens", "issue", "--pack", "t", "--agent", "bot", "--ttl", "1h", "--json",
    ];
    for c in caps {
        a.extend(["--cap", c]);
    }
    let out = home.ctl(&a);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    (
        v["secret"].as_str().expect("secret").to_string(),
        v["id"].as_str().expect("id").to_string(),
    )
}

pub(crate) fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{s:?} is not JSON: {e}"))
}

/// The token's trail, as JSON records (oldest first).
pub(crate) fn trail(home: &Home, id: &str) -> Vec<serde_json::Value> {
    let out = home.ctl(&["audit", "token-trail", id, "--json", "--limit", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("json")
        .as_array()
        .cloned()
        .expect("array")
}

/// Every `tool.invoked` record has exactly one outcome (`tool.completed` or `tool.failed`)
/// of the same correlation.
pub(crate) fn every_invocation_closed(home: &Home) {
    let corr = |kind: &str| -> Vec<String> {
        records(home, kind)
            .iter()
            .map(|r| r["correlation"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let invoked = corr("tool.invoked");
    let mut closed = corr("tool.completed");
    closed.extend(corr("tool.failed"));
    for c in &invoked {
        assert_eq!(
            closed.iter().filter(|x| *x == c).count(),
            1,
            "tool.invoked {c} has not exactly one outcome: invoked {invoked:?}, closed {closed:?}"
        );
    }
}

#[test]
fn a_wasm_plugin_calls_echo_through_the_kernel_only_when_it_declares_invoke_tool() {
    let home = Home::new();
    install_examples(&home);
    for f in ["loong.plugin.json", "plugin.wasm"] {
        let dst = home.path().join("plugins/tool-caller");
        fs::create_dir_all(&dst).expect("dir");
        fs::copy(examples().join("tool-caller").join(f), dst.join(f)).expect("copy");
    }
    install_caller(&home, "undeclared", "echo", "", 10_000);
    home.start();

    // The example: echo's answer, through the kernel, recorded with the chain.
    let (code, out, err) = invoke(&home, &["tool-caller", "--input", r#"{"ping":1}"#]);
    assert_eq!((code, json(&out)), (0, json(r#"{"ping":1}"#)), "{err}");
    let invoked = records(&home, "tool.invoked");
    let outer = invoked
        .iter()
        .find(|r| detail(r)["tool"] == "tool-caller")
        .expect("the outer call's record");
    let inner = invoked
        .iter()
        .find(|r| detail(r)["tool"] == "echo")
        .expect("the nested call's record");
    let root = outer["correlation"].as_str().expect("correlation");
    let chain = &detail(inner)["chain"];
    assert_eq!(chain["root"], root, "{inner}");
    assert_eq!(chain["parent"], root, "{inner}");
    assert_eq!(chain["depth"], 1, "{inner}");
    assert_eq!(inner["correlation"], format!("{root}.1"), "{inner}");
    assert!(
        inner["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("worker:")),
        "{inner}"
    );
    assert!(
        records(&home, "tool.completed")
            .iter()
            .any(|r| r["correlation"] == inner["correlation"]),
        "the nested call has no outcome"
    );

    // The same module without the declared capability: denied (-2), and the denial audited.
    let (code, out, err) = invoke(&home, &["undeclared", "--input", r#"{"ping":1}"#]);
    assert_eq!(code, 0, "{err}");
    let out = json(&out);
    assert_eq!(out["code"], -2, "{out}");
    assert_eq!(out["error"]["kind"], "denied", "{out}");
    let denial = records(&home, "policy.decision")
        .into_iter()
        .map(|r| detail(&r))
        .find(|d| d["stage"] == "plugin_capabilities")
        .expect("the denial is audited");
    assert_eq!(denial["allowed"], false, "{denial}");
    assert_eq!(denial["target"], "echo", "{denial}");
    assert_eq!(denial["plugin"], "undeclared", "{denial}");
    assert_eq!(denial["chain"]["depth"], 1, "{denial}");
    every_invocation_closed(&home);
}

#[test]
fn a_kernel_call_is_decided_under_the_root_token_not_the_outer_grant() {
    let home = Home::new();
    install_examples(&home);
    install_caller(&home, "caller", "echo", r#""InvokeTool""#, 10_000);
    pack(&home);
    home.start();

    // The positive control: a token granting both tools.
    let (both, both_id) = issue(&home, &["tool.invoke:caller", "tool.invoke:echo"]);
    let (code, out, err) = invoke(&home, &["caller", "--token", &both, "--input", "[7]"]);
    assert_eq!((code, json(&out)), (0, json("[7]")), "{err}");
    let decided: Vec<_> = trail(&home, &both_id)
        .iter()
        .filter(|r| r["kind"] == "policy.decision")
        .map(detail)
        .collect();
    assert!(
        decided
            .iter()
            .any(|d| d["target"] == "echo" && d["allowed"] == true && d["chain"]["depth"] == 1),
        "the nested decision is not in the token's trail: {decided:?}"
    );

    // A token that grants the outer call only: the outer call is allowed, the nested denied.
    let (outer_only, outer_id) = issue(&home, &["tool.invoke:caller"]);
    let (code, out, err) = invoke(&home, &["caller", "--token", &outer_only, "--input", "[7]"]);
    assert_eq!(code, 0, "{err}");
    let out = json(&out);
    assert_eq!(out["code"], -2, "{out}");
    outer_allowed_and_nested_echo_denied(&home, &outer_id, "caller");
}

/// The nested call to `spin` its chain gave up on is closed `abandoned` (within 10 s), and
/// every call is closed.
pub(crate) fn nested_spin_closed_abandoned(home: &Home) {
    assert!(
        wait_until(Duration::from_secs(10), || {
            records(home, "tool.failed")
                .iter()
                .map(detail)
                .any(|d| d["tool"] == "spin" && d["failure"] == "abandoned")
        }),
        "the abandoned nested call has no outcome"
    );
    every_invocation_closed(home);
}

/// The token `id`'s trail holds the outer call to `outer` allowed and the nested call to
/// `echo` denied one level down, and every call is closed.
pub(crate) fn outer_allowed_and_nested_echo_denied(home: &Home, id: &str, outer: &str) {
    let decided: Vec<_> = trail(home, id)
        .iter()
        .filter(|r| r["kind"] == "policy.decision")
        .map(detail)
        .collect();
    assert!(
        decided
            .iter()
            .any(|d| d["target"] == outer && d["allowed"] == true),
        "{decided:?}"
    );
    let nested = decided
        .iter()
        .find(|d| d["target"] == "echo")
        .expect("the nested denial is in the token's trail");
    assert_eq!(nested["allowed"], false, "{nested}");
    assert_eq!(nested["chain"]["depth"], 1, "{nested}");
    every_invocation_closed(home);
}

#[test]
fn a_plugin_that_calls_itself_stops_at_the_depth_limit_with_the_chain_in_the_trail() {
    let home = Home::with_config("[kernel_calls]\nmax_depth = 3\n");
    install_examples(&home);
    install_caller(&home, "recurse", "recurse", r#""invoke_tool""#, 20_000);
    pack(&home);
    home.start();
    let (secret, id) = issue(&home, &["tool.invoke:recurse"]);
    let (code, out, err) = invoke(&home, &["recurse", "--token", &secret, "--input", "{}"]);
    assert_eq!(code, 0, "{err}");
    let out = json(&out);
    assert_eq!(out["code"], -4, "{out}");
    assert_eq!(out["error"]["kind"], "budget_exceeded", "{out}");
    let decided: Vec<_> = trail(&home, &id)
        .iter()
        .filter(|r| r["kind"] == "policy.decision")
        .map(detail)
        .collect();
    // Allowed at depths 0 (the root), 1, 2 and 3; refused at 4 for its depth.
    for depth in 1..=3 {
        assert!(
            decided
                .iter()
                .any(|d| d["allowed"] == true && d["chain"]["depth"] == depth),
            "no allowed decision at depth {depth}: {decided:?}"
        );
    }
    let refused = decided
        .iter()
        .find(|d| d["allowed"] == false)
        .expect("the refusal is in the trail");
    assert_eq!(refused["budget"], "call_depth", "{refused}");
    assert_eq!(refused["chain"]["depth"], 4, "{refused}");
    assert!(
        refused["chain"]["parent"]
            .as_str()
            .is_some_and(|p| p.ends_with(".1.1.1")),
        "{refused}"
    );
    every_invocation_closed(&home);
}

/// Starts `loongctl invoke TOOL` in the background.
pub(crate) fn invoke_in_background(home: &Home, tool: &str) -> std::process::Child {
    Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["invoke", tool, "--input", "{}"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("invoke")
}

/// The pid of a busy worker running `tool`, once there is one.
pub(crate) fn busy_worker(home: &Home, tool: &str) -> i32 {
    let mut busy = None;
    assert!(
        wait_until(Duration::from_secs(15), || {
            busy = workers(home)
                .into_iter()
                .find(|w| w["state"] == "busy" && w["tool"] == tool);
            busy.is_some()
        }),
        "no worker became busy with {tool}"
    );
    let pid = busy.expect("busy")["pid"].as_u64().expect("pid");
    i32::try_from(pid).expect("pid")
}

pub(crate) fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
}

#[test]
fn kill_9_of_a_worker_in_a_chain_fails_the_call_with_its_class_and_leaves_no_record_open() {
    let home = Home::new();
    install_examples(&home);
    crate::workers::install_spin(&home, 30_000);
    install_caller(&home, "calls-spin", "spin", r#""invoke_tool""#, 30_000);
    let pid = home.start();

    // The nested call's worker dies: the caller is told the tool failed (-3), and the
    // nested call's record says the worker died.
    let call = invoke_in_background(&home, "calls-spin");
    kill9(busy_worker(&home, "spin"));
    let out = call.wait_with_output().expect("invoke ends");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let answer = json(&text(&out.stdout));
    assert_eq!(answer["code"], -3, "{answer}");
    let failed = records(&home, "tool.failed")
        .into_iter()
        .map(|r| detail(&r))
        .find(|d| d["tool"] == "spin")
        .expect("the nested call failed");
    assert_eq!(failed["failure"], "worker_died", "{failed}");
    assert_eq!(failed["chain"]["depth"], 1, "{failed}");

    // The root call's worker dies while its nested call runs: the root call fails with the
    // worker's class, and the nested call is closed as abandoned.
    let call = invoke_in_background(&home, "calls-spin");
    busy_worker(&home, "spin");
    kill9(busy_worker(&home, "calls-spin"));
    let out = call.wait_with_output().expect("invoke ends");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("closed its socket"),
        "{}",
        text(&out.stderr)
    );
    let root = records(&home, "tool.failed")
        .into_iter()
        .map(|r| detail(&r))
        .find(|d| d["tool"] == "calls-spin")
        .expect("the root call failed");
    assert_eq!(root["failure"], "worker_died", "{root}");
    nested_spin_closed_abandoned(&home);

    // loongd keeps serving, never restarted.
    echo_works(&home);
    assert_eq!(home.status().pid, pid);
}

/// A directory outside loongd's home, readable by every uid.
fn shared_dir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("temp dir");
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

/// The tool-calling JSON-lines peer, copied into `dir` and installed as plugin `id`,
/// declaring `capabilities` (a JSON array's inner text; reading its own directory needs
/// `filesystem_read`).
fn install_tool_calling_peer(home: &Home, dir: &Path, id: &str, capabilities: &str) {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("tool_calling_peer.py");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("all/peers/tool_calling_peer.py");
    fs::copy(src, &script).expect("peer script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).expect("chmod");
    let args = serde_json::to_string(
        &serde_json::to_string(&[script.display().to_string()]).expect("args"),
    )
    .expect("quoted");
    let pdir = home.path().join("plugins").join(id);
    fs::create_dir_all(&pdir).expect("plugin dir");
    let manifest = format!(
        r#"{{"api_version": "v1alpha1", "plugin_id": "{id}", "version": "0.1.0", "summary": "test",
        "capabilities": [{capabilities}],
        "metadata": {{"bridge_kind": "process_stdio", "command": "/usr/bin/python3", "args_json": {args}}},
        "sandbox": {{"read": [{:?}], "timeout_ms": 10000}}}}"#,
        dir.display().to_string()
    );
    fs::write(pdir.join("loong.plugin.json"), manifest).expect("manifest");
}

/// `invoke ID` of the peer with `payload`; its answers to its tool calls.
fn peer_answers(home: &Home, id: &str, payload: &serde_json::Value) -> Vec<serde_json::Value> {
    let (code, out, err) = invoke(home, &[id, "--input", &payload.to_string()]);
    assert_eq!(code, 0, "{payload}: {err}");
    json(&out)["answers"].as_array().cloned().expect("answers")
}

#[test]
fn a_json_lines_program_calls_a_built_in_through_the_kernel_and_bad_frames_fail_only_their_call() {
    let data = shared_dir("kc");
    fs::write(data.path().join("note.txt"), "kernel calls\n").expect("file");
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(
            data.path().join("note.txt"),
            fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
    }
    let home = Home::with_config(&format!(
        "[builtins]\nread_roots = [{:?}]\n",
        data.path().display().to_string()
    ));
    install_examples(&home);
    install_tool_calling_peer(
        &home,
        data.path(),
        "lines",
        r#""invoke_tool", "filesystem_read""#,
    );
    install_tool_calling_peer(&home, data.path(), "undeclared", r#""filesystem_read""#);
    let pid = home.start();
    let note = data.path().join("note.txt").display().to_string();
    let read = serde_json::json!({"mode": "call", "tool": "file.read", "input": {"path": note}});

    // The built-in answers through the kernel, recorded with the chain.
    let good = |home: &Home| {
        let answers = peer_answers(home, "lines", &read);
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0]["id"], 1, "{answers:?}");
        assert_eq!(
            answers[0]["payload"]["content"], "kernel calls\n",
            "{answers:?}"
        );
    };
    good(&home);
    let nested = records(&home, "tool.invoked")
        .into_iter()
        .find(|r| detail(r)["tool"] == "file.read")
        .expect("the nested call is recorded");
    assert_eq!(detail(&nested)["chain"]["depth"], 1, "{nested}");

    // Without invoke_tool: a typed error frame, and the call itself succeeds.
    let answers = peer_answers(&home, "undeclared", &read);
    assert_eq!(answers[0]["error"]["kind"], "denied", "{answers:?}");

    // Malformed requests fail their own call; the next call (a new program) works.
    for (mode, count) in [
        ("unknown_field", 1),
        ("unknown_payload_field", 1),
        ("reused_id", 1),
        ("flood", 100),
    ] {
        let mut bad = read.clone();
        bad["mode"] = mode.into();
        bad["count"] = count.into();
        let (code, _, err) = invoke(&home, &["lines", "--input", &bad.to_string()]);
        assert_ne!(code, 0, "{mode} was accepted");
        assert!(err.contains("tool.call"), "{mode}: {err}");
        good(&home);
    }
    // Five good calls, the first of the reused ids, and the flood's first 64 ran (the 65th
    // failed the call); the malformed requests reached no decision.
    let nested = records(&home, "tool.invoked")
        .iter()
        .filter(|r| detail(r)["tool"] == "file.read")
        .count();
    assert_eq!(nested, 5 + 1 + 64, "nested calls recorded");
    every_invocation_closed(&home);
    assert_eq!(home.status().pid, pid);
}

#[test]
fn a_guest_waiting_for_a_slow_tool_still_dies_at_its_own_deadline() {
    let home = Home::new();
    install_examples(&home);
    crate::workers::install_spin(&home, 30_000);
    install_caller(&home, "calls-spin", "spin", r#""invoke_tool""#, 1500);
    install_caller(&home, "calls-echo", "echo", r#""invoke_tool""#, 1500);
    home.start();

    // The control: a fast tool answers well within the caller's deadline.
    let (code, out, err) = invoke(&home, &["calls-echo", "--input", "[1]"]);
    assert_eq!((code, json(&out)), (0, json("[1]")), "{err}");

    // A slow one: the caller stops at its own deadline (1.5 s), not the tool's (30 s).
    let started = std::time::Instant::now();
    let (code, out, err) = invoke(&home, &["calls-spin", "--input", "{}"]);
    let took = started.elapsed();
    assert_ne!(code, 0, "the caller outlived its deadline: {out}");
    assert!(err.contains("deadline"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let failed: Vec<_> = records(&home, "tool.failed").iter().map(detail).collect();
    assert!(
        failed
            .iter()
            .any(|d| d["tool"] == "calls-spin" && d["failure"] == "timeout"),
        "{failed:?}"
    );
    nested_spin_closed_abandoned(&home);
}

#[test]
fn the_root_calls_budget_bounds_a_chain() {
    let home = Home::with_config("[kernel_calls]\nmax_calls = 2\nmax_depth = 8\n");
    install_examples(&home);
    install_caller(&home, "recurse", "recurse", r#""invoke_tool""#, 20_000);
    install_caller(&home, "calls-echo", "echo", r#""invoke_tool""#, 10_000);
    home.start();
    // The control: one nested call is within the budget.
    let (code, out, err) = invoke(&home, &["calls-echo", "--input", "[1]"]);
    assert_eq!((code, json(&out)), (0, json("[1]")), "{err}");

    let (code, out, err) = invoke(&home, &["recurse", "--input", "{}"]);
    assert_eq!(code, 0, "{err}");
    let out = json(&out);
    assert_eq!(out["code"], -4, "{out}");
    let refused: Vec<_> = records(&home, "policy.decision")
        .iter()
        .map(detail)
        .filter(|d| d["allowed"] == false)
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["budget"], "calls", "{refused:?}");
    assert_eq!(refused[0]["chain"]["depth"], 3, "{refused:?}");
    every_invocation_closed(&home);
}

#[test]
fn the_root_wall_time_budget_abandons_a_nested_call_that_outlives_it() {
    let home = Home::with_config("[kernel_calls]\nmax_wall_ms = 700\n");
    install_examples(&home);
    crate::workers::install_spin(&home, 30_000);
    install_caller(&home, "calls-spin", "spin", r#""invoke_tool""#, 20_000);
    install_caller(&home, "calls-echo", "echo", r#""invoke_tool""#, 20_000);
    home.start();
    // The control: a fast nested call is within the wall time.
    let (code, out, err) = invoke(&home, &["calls-echo", "--input", "[1]"]);
    assert_eq!((code, json(&out)), (0, json("[1]")), "{err}");

    let started = std::time::Instant::now();
    let (code, out, err) = invoke(&home, &["calls-spin", "--input", "{}"]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(code, 0, "{err}");
    let out = json(&out);
    assert_eq!(out["code"], -4, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_wall_ms")),
        "{out}"
    );
    nested_spin_closed_abandoned(&home);
}

/// The pending approvals' (id, target), once there are `n`.
pub(crate) fn pending(home: &Home, n: usize) -> Vec<(String, String)> {
    let mut found = Vec::new();
    assert!(
        wait_until(Duration::from_secs(15), || {
            let v: serde_json::Value =
                serde_json::from_slice(&home.ctl(&["approvals", "list", "--json"]).stdout)
                    .unwrap_or_default();
            found = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|x| x["state"] == "pending")
                        .map(|x| {
                            (
                                x["id"].as_str().unwrap_or_default().to_string(),
                                x["target"].as_str().unwrap_or_default().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            found.len() == n
        }),
        "not {n} pending approvals: {found:?}"
    );
    found
}

#[test]
fn a_nested_call_that_needs_an_approval_waits_for_one_like_any_call() {
    let home = Home::with_config("[approvals]\ntimeout_ms = 20000\n");
    install_examples(&home);
    install_caller(&home, "caller", "echo", r#""invoke_tool""#, 30_000);
    let token = crate::support::start_with_careful_token(&home, "tool.invoke");
    let call = |home: &Home| {
        Command::new(bin("loongctl"))
            .arg("--home")
            .arg(home.path())
            .args(["invoke", "caller", "--token", &token, "--input", "[3]"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("invoke")
    };

    // Approved: the root's approval, then the nested call's, and echo answers.
    let child = call(&home);
    let root = pending(&home, 1);
    assert_eq!(root[0].1, "caller", "{root:?}");
    assert!(home
        .ctl(&["approvals", "approve", &root[0].0])
        .status
        .success());
    let nested = pending(&home, 1);
    assert_eq!(nested[0].1, "echo", "{nested:?}");
    let asked = records(&home, "approval.requested")
        .into_iter()
        .map(|r| detail(&r))
        .find(|d| d["target"] == "echo")
        .expect("the nested approval is recorded");
    assert_eq!(asked["chain"]["depth"], 1, "{asked}");
    assert!(home
        .ctl(&["approvals", "approve", &nested[0].0])
        .status
        .success());
    let out = child.wait_with_output().expect("invoke ends");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json(&text(&out.stdout)), json("[3]"));

    // Denied: the nested call is refused (-2); the root call, approved, answers that.
    let child = call(&home);
    let root = pending(&home, 1);
    assert!(home
        .ctl(&["approvals", "approve", &root[0].0])
        .status
        .success());
    let nested = pending(&home, 1);
    assert_eq!(nested[0].1, "echo", "{nested:?}");
    assert!(home
        .ctl(&["approvals", "deny", &nested[0].0])
        .status
        .success());
    let out = child.wait_with_output().expect("invoke ends");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let answer = json(&text(&out.stdout));
    assert_eq!(answer["code"], -2, "{answer}");
    every_invocation_closed(&home);
}

#[test]
fn a_plugin_under_an_operator_root_has_only_the_built_in_effects_its_manifest_declares() {
    let data = shared_dir("kn");
    let work = shared_dir("kw");
    let out = data.path().join("out");
    fs::create_dir(&out).expect("out dir");
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let home = Home::with_config(&format!(
        "[builtins]\nread_roots = [{0:?}]\nwrite_roots = [{1:?}]\nworkspace = {2:?}\n",
        data.path().display().to_string(),
        out.display().to_string(),
        work.path().display().to_string()
    ));
    install_examples(&home);
    // Reading its own directory needs filesystem_read; it declares nothing to write with.
    install_tool_calling_peer(
        &home,
        data.path(),
        "reader",
        r#""invoke_tool", "filesystem_read""#,
    );
    install_tool_calling_peer(
        &home,
        data.path(),
        "writer",
        r#""invoke_tool", "filesystem_read", "filesystem_write""#,
    );
    home.start();
    let write = |name: &str| {
        serde_json::json!({"mode": "call", "tool": "file.write",
            "input": {"path": out.join(name), "content": "x"}})
    };

    // The operator's pack grants the write, but the calling plugin does not declare it.
    let answers = peer_answers(&home, "reader", &write("reader.txt"));
    assert_eq!(answers[0]["error"]["kind"], "denied", "{answers:?}");
    assert!(!out.join("reader.txt").exists());
    // No manifest capability grants running a command: a plugin's nested shell.exec never
    // runs, whatever its root may do.
    let made = work.path().join("made.txt");
    let exec = serde_json::json!({"mode": "call", "tool": "shell.exec",
        "input": {"command": "touch made.txt"}});
    for id in ["reader", "writer"] {
        let answers = peer_answers(&home, id, &exec);
        assert_eq!(answers[0]["error"]["kind"], "denied", "{id}: {answers:?}");
    }
    assert!(!made.exists());
    let refusals: Vec<_> = records(&home, "policy.decision")
        .into_iter()
        .filter(|r| detail(r)["stage"] == "plugin_capabilities")
        .collect();
    assert_eq!(refusals.len(), 3, "{refusals:?}");
    let depth = |r: &serde_json::Value| detail(r)["chain"]["depth"] == 1;
    assert!(
        refusals
            .iter()
            .all(|r| depth(r) && detail(r)["allowed"] == false),
        "{refusals:?}"
    );

    // Nor through a plugin that declares it: what a plugin's manifest lacks, no plugin it
    // calls lends it (the writer's write, asked for by the reader, is refused).
    let through =
        serde_json::json!({"mode": "call", "tool": "writer", "input": write("through.txt")});
    let answers = peer_answers(&home, "reader", &through);
    let inner = &answers[0]["payload"]["answers"][0];
    assert_eq!(inner["error"]["kind"], "denied", "{answers:?}");
    assert!(!out.join("through.txt").exists());

    // Declared, the same write runs under the operator's pack.
    let answers = peer_answers(&home, "writer", &write("writer.txt"));
    assert!(answers[0].get("error").is_none(), "{answers:?}");
    assert_eq!(
        fs::read_to_string(out.join("writer.txt")).expect("written"),
        "x"
    );
    every_invocation_closed(&home);
}

#[test]
fn a_kernel_call_refused_before_its_decision_is_recorded_with_the_chain() {
    let home = Home::new();
    install_examples(&home);
    install_caller(
        &home,
        "calls-nothing",
        "no-such-tool",
        r#""invoke_tool""#,
        5000,
    );
    install_caller(&home, "calls-echo", "echo", r#""invoke_tool""#, 5000);
    home.start();
    // The control: a call that is decided has its decision recorded.
    let (code, _, err) = invoke(&home, &["calls-echo", "--input", "[1]"]);
    assert_eq!(code, 0, "{err}");
    // The plugin answers with call_tool's code; the kernel call itself is refused.
    let _ = invoke(&home, &["calls-nothing", "--input", "{}"]);
    let refused: Vec<_> = records(&home, "policy.decision")
        .into_iter()
        .filter(|r| detail(r)["target"] == "no-such-tool")
        .collect();
    assert_eq!(refused.len(), 1, "the refused kernel call left no record");
    let d = detail(&refused[0]);
    assert_eq!(d["allowed"], false, "{d}");
    assert_eq!(d["chain"]["depth"], 1, "{d}");
    assert!(d["chain"]["parent"].is_string(), "{d}");
}

/// `show_text` is the agent's own kernel call: a JSON-lines plugin's worker that sends one
/// (as a compromised worker would; test builds of the worker do it on request) is refused,
/// nothing reaches the asker's output, and the refusal is recorded. The agent's own turn
/// showing its text is `agent::ask_prints_the_first_delta_before_the_answer_completes`; here
/// the control is the same plugin's tool call, which the same worker makes and which runs.
#[test]
fn show_text_from_a_worker_that_is_not_the_agents_turn_is_refused_and_recorded() {
    let data = shared_dir("kst");
    let home = Home::new();
    install_examples(&home);
    install_tool_calling_peer(
        &home,
        data.path(),
        "lines",
        r#""invoke_tool", "filesystem_read""#,
    );
    home.start();
    // The control: the same worker's kernel call of a tool the operator may call runs.
    let ran = peer_answers(
        &home,
        "lines",
        &serde_json::json!({"mode": "call", "tool": "echo", "input": {"n": 1}}),
    );
    assert_eq!(ran[0]["payload"], serde_json::json!({"n": 1}), "{ran:?}");
    let (code, out, err) = invoke(
        &home,
        &[
            "lines",
            "--input",
            r#"{"mode": "show_text", "text": "SPOOFED ANSWER"}"#,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("SPOOFED"), "{out}");
    let answers = json(&out)["answers"].clone();
    let refusal = &answers[0]["error"];
    assert!(
        refusal["message"]
            .as_str()
            .is_some_and(|m| m.contains("only the agent's turn shows text")),
        "{answers}"
    );
    assert!(!err.contains("SPOOFED"), "{err}");
    let refused: Vec<serde_json::Value> = records(&home, "policy.decision")
        .iter()
        .map(detail)
        .filter(|d| {
            d["reason"]
                .as_str()
                .is_some_and(|r| r.contains("only the agent's turn shows text"))
        })
        .collect();
    assert_eq!(refused.len(), 1, "the refusal is recorded once");
    assert_eq!(refused[0]["allowed"], false, "{:?}", refused[0]);
    assert_eq!(refused[0]["chain"]["depth"], 1, "{:?}", refused[0]);
}
