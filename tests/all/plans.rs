//! `programmatic_tool_call` end to end: a plan given as `loongctl invoke programmatic_tool_call
//! --input @plan.json` runs in its restricted plan worker, and each connector call is a kernel
//! call that loongd decides under the root call's authority and audits with the chain.

use std::{
    fs,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use crate::{
    kernel_calls::{
        busy_worker, every_invocation_closed, issue, json, kill9, nested_spin_closed_abandoned,
        outer_allowed_and_nested_echo_denied, pack, trail,
    },
    support::{bin, text, Home},
    workers::{detail, echo_works, install_examples, invoke, records},
};

const TOOL: &str = "programmatic_tool_call";

/// A home whose loongd offers `programmatic_tool_call`.
fn home() -> Home {
    Home::with_config("[builtins]\nplans = true\n")
}

/// Writes `plan` into the home; the `--input` argument that names it.
fn plan_file(home: &Home, name: &str, plan: &serde_json::Value) -> String {
    let path: PathBuf = home.path().join(name);
    fs::write(&path, serde_json::to_vec(plan).expect("plan")).expect("plan file");
    format!("@{}", path.display())
}

/// Every step kind and templating: a literal, a pointer into it, a conditional on it, a call
/// of `echo` whose payload is templated from both, and a batch of two calls.
fn every_kind() -> serde_json::Value {
    serde_json::json!({
        "caller": "plan-test",
        "include_intermediate": true,
        "allowed_connectors": ["echo"],
        "return_step": "said",
        "steps": [
            {"kind": "set_literal", "step_id": "seed", "value": {"msg": "hi", "status": "green"}},
            {"kind": "json_pointer", "step_id": "msg", "from_step": "seed", "pointer": "/msg"},
            {"kind": "conditional", "step_id": "gate", "from_step": "seed", "pointer": "/status",
             "equals": "green", "when_true": {"text": "go {{msg}}"}, "when_false": {"text": "hold"}},
            {"kind": "connector_call", "step_id": "one", "connector_name": "echo",
             "payload": {"text": "{{gate#/text}}"}},
            {"kind": "connector_batch", "step_id": "many", "parallel": true, "calls": [
                {"call_id": "a", "connector_name": "echo", "payload": {"n": 1}},
                {"call_id": "b", "connector_name": "echo", "payload": {"n": 2}}
            ]},
            {"kind": "json_pointer", "step_id": "said", "from_step": "one", "pointer": "/outcome/text"}
        ]
    })
}

#[test]
fn a_plan_runs_every_step_kind_through_kernel_calls_each_in_the_token_trail_with_its_chain() {
    let home = home();
    install_examples(&home);
    pack(&home);
    home.start();
    let (secret, id) = issue(
        &home,
        &["tool.invoke:programmatic_tool_call", "tool.invoke:echo"],
    );
    let input = plan_file(&home, "plan.json", &every_kind());
    let (code, out, err) = invoke(&home, &[TOOL, "--token", &secret, "--input", &input]);
    assert_eq!(code, 0, "{err}");
    let answer = json(&out);
    assert_eq!(answer["result"], "go hi", "{answer}");
    assert_eq!(answer["connector_calls"], 3, "{answer}");
    let one = &answer["step_outputs"]["one"]["outcome"];
    assert_eq!(one["text"], "go hi", "{answer}");
    assert_eq!(one["_loong"]["caller"], "plan-test", "{answer}");
    assert_eq!(one["_loong"]["step_id"], "one", "{answer}");
    let many = &answer["step_outputs"]["many"];
    assert_eq!(many["success_calls"], 2, "{many}");
    assert_eq!(many["by_call"]["a"]["outcome"]["n"], 1, "{many}");
    assert_eq!(many["by_call"]["b"]["outcome"]["n"], 2, "{many}");
    assert_eq!(answer["telemetry"].as_array().map(Vec::len), Some(6));

    // Every nested call is in the token's trail: decided (allowed) and invoked, with the
    // plan call as its root and parent, one deep.
    let records = trail(&home, &id);
    let root = records
        .iter()
        .find(|r| r["kind"] == "tool.invoked" && detail(r)["tool"] == TOOL)
        .expect("the plan call is in the trail")["correlation"]
        .as_str()
        .expect("correlation")
        .to_string();
    let nested: Vec<serde_json::Value> = records
        .iter()
        .filter(|r| r["kind"] == "tool.invoked" && detail(r)["tool"] == "echo")
        .map(detail)
        .collect();
    assert_eq!(nested.len(), 3, "{records:?}");
    for n in &nested {
        assert_eq!(n["chain"]["root"], root.as_str(), "{n}");
        assert_eq!(n["chain"]["parent"], root.as_str(), "{n}");
        assert_eq!(n["chain"]["depth"], 1, "{n}");
    }
    let allowed = records
        .iter()
        .filter(|r| r["kind"] == "policy.decision")
        .map(detail)
        .filter(|d| d["target"] == "echo" && d["allowed"] == true && d["chain"]["depth"] == 1)
        .count();
    assert_eq!(allowed, 3, "{records:?}");
    every_invocation_closed(&home);
}

#[test]
fn a_plan_from_stdin_runs_as_from_a_file() {
    let home = home();
    install_examples(&home);
    home.start();
    let mut child = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["invoke", TOOL, "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("invoke");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&serde_json::to_vec(&every_kind()).expect("plan"))
        .expect("write the plan");
    let out = child.wait_with_output().expect("invoke ends");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json(&text(&out.stdout))["result"], "go hi");
}

#[test]
fn an_input_file_or_stdin_past_the_frame_bound_is_refused_naming_it() {
    let home = home();
    install_examples(&home);
    home.start();
    // A JSON string one byte past the bound.
    let big = format!(
        "\"{}\"",
        "x".repeat(loong_ipc::message::control::MAX_INVOKE_INPUT_BYTES - 1)
    );
    let path = home.path().join("big.json");
    fs::write(&path, &big).expect("big");
    let arg = format!("@{}", path.display());
    let (code, _, err) = invoke(&home, &["echo", "--input", &arg]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&arg) && err.contains("limit"), "{err}");

    let mut child = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["invoke", "echo", "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("invoke");
    let mut stdin = child.stdin.take().expect("stdin");
    // The reader stops at the bound; a write past it may meet a closed pipe.
    let _ = stdin.write_all(big.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().expect("invoke ends");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("- (stdin)"),
        "{}",
        text(&out.stderr)
    );

    // A missing file is named too; and the positive control: a file at the bound's side
    // that holds a small input works.
    let (code, _, err) = invoke(&home, &["echo", "--input", "@/nonexistent/plan.json"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("@/nonexistent/plan.json"), "{err}");
    fs::write(&path, r#"{"ping":1}"#).expect("small");
    let (code, out, err) = invoke(&home, &["echo", "--input", &arg]);
    assert_eq!((code, json(&out)), (0, json(r#"{"ping":1}"#)), "{err}");
}

#[test]
fn a_connector_outside_allowed_connectors_is_refused_before_any_call() {
    let home = home();
    install_examples(&home);
    home.start();
    let plan = serde_json::json!({
        "caller": "t", "allowed_connectors": ["echo"],
        "steps": [
            {"kind": "connector_call", "step_id": "ok", "connector_name": "echo", "payload": {}},
            {"kind": "connector_call", "step_id": "no", "connector_name": "json-transform", "payload": {}}
        ]
    });
    let input = plan_file(&home, "plan.json", &plan);
    let (code, _, err) = invoke(&home, &[TOOL, "--input", &input]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("connector_not_allowed") && err.contains("json-transform"),
        "{err}"
    );
    let nested: Vec<_> = records(&home, "tool.invoked")
        .iter()
        .map(detail)
        .filter(|d| d["tool"] != TOOL)
        .collect();
    assert!(nested.is_empty(), "a call was made: {nested:?}");

    // The positive control: with json-transform allowed, both calls are made.
    let mut plan = plan;
    plan["allowed_connectors"] = serde_json::json!(["echo", "json-transform"]);
    let input = plan_file(&home, "plan2.json", &plan);
    let (code, _, err) = invoke(&home, &[TOOL, "--input", &input]);
    assert_eq!(code, 0, "{err}");
    let nested = records(&home, "tool.invoked")
        .iter()
        .map(detail)
        .filter(|d| d["tool"] != TOOL)
        .count();
    assert_eq!(nested, 2);
    every_invocation_closed(&home);
}

#[test]
fn a_nested_call_the_token_does_not_grant_is_denied_though_the_plan_call_was_allowed() {
    let home = home();
    install_examples(&home);
    pack(&home);
    home.start();
    let plan = serde_json::json!({
        "caller": "t",
        "steps": [{"kind": "connector_call", "step_id": "e", "connector_name": "echo", "payload": {"x": 1}}]
    });
    let input = plan_file(&home, "plan.json", &plan);

    // The positive control: a token granting both.
    let (both, _) = issue(
        &home,
        &["tool.invoke:programmatic_tool_call", "tool.invoke:echo"],
    );
    let (code, out, err) = invoke(&home, &[TOOL, "--token", &both, "--input", &input]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["result"]["outcome"]["x"], 1, "{out}");

    // The plan call only: allowed, and its nested call denied, with the chain.
    let (outer, outer_id) = issue(&home, &["tool.invoke:programmatic_tool_call"]);
    let (code, _, err) = invoke(&home, &[TOOL, "--token", &outer, "--input", &input]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("step_failed") && err.contains("denied"),
        "{err}"
    );
    outer_allowed_and_nested_echo_denied(&home, &outer_id, TOOL);
}

#[test]
fn kill_9_of_the_plan_worker_mid_plan_fails_the_root_call_and_leaves_no_record_open() {
    let home = home();
    install_examples(&home);
    crate::workers::install_spin(&home, 30_000);
    let pid = home.start();
    let plan = serde_json::json!({
        "caller": "t",
        "steps": [
            {"kind": "connector_call", "step_id": "e", "connector_name": "echo", "payload": {}},
            {"kind": "connector_call", "step_id": "s", "connector_name": "spin", "payload": {}}
        ]
    });
    let input = plan_file(&home, "plan.json", &plan);
    let call = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["invoke", TOOL, "--input", &input])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("invoke");
    busy_worker(&home, "spin");
    kill9(busy_worker(&home, TOOL));
    let out = call.wait_with_output().expect("invoke ends");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let root = records(&home, "tool.failed")
        .into_iter()
        .map(|r| detail(&r))
        .find(|d| d["tool"] == TOOL)
        .expect("the plan call failed");
    assert_eq!(root["failure"], "worker_died", "{root}");
    nested_spin_closed_abandoned(&home);

    // loongd keeps serving: a fresh plan worker runs the next plan.
    assert!(crate::support::process_alive(pid));
    echo_works(&home);
    let plan = serde_json::json!({
        "caller": "t",
        "steps": [{"kind": "connector_call", "step_id": "e", "connector_name": "echo", "payload": {"k": 2}}]
    });
    let input = plan_file(&home, "plan2.json", &plan);
    let (code, out, err) = invoke(&home, &[TOOL, "--input", &input]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["result"]["outcome"]["k"], 2, "{out}");
    every_invocation_closed(&home);
}

#[test]
fn programmatic_tool_call_is_offered_only_when_the_operator_enables_it() {
    let home = Home::new();
    install_examples(&home);
    home.start();
    let input = plan_file(&home, "plan.json", &every_kind());
    let (code, _, err) = invoke(&home, &[TOOL, "--input", &input]);
    assert!(code != 0 && err.contains("no tool named"), "{err}");
    // A plugin may not take the name either (it is a built-in's).
    assert!(loong_ipc::package::BUILTIN_TOOLS.contains(&TOOL));
    echo_works(&home);
}

/// The audit times (ms) of the `tool.invoked` records of `echo` under root call `root`.
fn echo_times(home: &Home, root: &str) -> Vec<i64> {
    let mut t: Vec<i64> = records(home, "tool.invoked")
        .iter()
        .filter(|r| detail(r)["tool"] == "echo" && detail(r)["chain"]["root"] == root)
        .map(|r| r["time_ms"].as_i64().expect("time_ms"))
        .collect();
    t.sort_unstable();
    t
}

/// The correlation of the newest plan call.
fn last_plan_call(home: &Home) -> String {
    records(home, "tool.invoked")
        .iter()
        .find(|r| detail(r)["tool"] == TOOL)
        .expect("a plan call")["correlation"]
        .as_str()
        .expect("correlation")
        .to_string()
}

#[test]
fn min_interval_ms_is_kept_between_nested_calls_as_the_audit_times_show() {
    /// The interval asked for, and what the audit's times may lose of it: the limit spaces
    /// the starts of the worker's kernel calls, and each record is written after loongd
    /// read and decided its call, which takes longer under load.
    const INTERVAL_MS: i64 = 500;
    const SLACK_MS: i64 = 100;
    let home = home();
    install_examples(&home);
    home.start();
    let mut plan = serde_json::json!({
        "caller": "t",
        "steps": [
            {"kind": "connector_call", "step_id": "a", "connector_name": "echo", "payload": {}},
            {"kind": "connector_call", "step_id": "b", "connector_name": "echo", "payload": {}},
            {"kind": "connector_call", "step_id": "c", "connector_name": "echo", "payload": {}}
        ]
    });
    // The control: without a limit, some two calls follow closer than the interval.
    let input = plan_file(&home, "free.json", &plan);
    let (code, _, err) = invoke(&home, &[TOOL, "--input", &input]);
    assert_eq!(code, 0, "{err}");
    let free = echo_times(&home, &last_plan_call(&home));
    assert_eq!(free.len(), 3, "{free:?}");
    assert!(
        free.windows(2)
            .any(|w| w[1] - w[0] < INTERVAL_MS - SLACK_MS),
        "{free:?}"
    );

    plan["connector_rate_limits"] = serde_json::json!({"echo": {"min_interval_ms": INTERVAL_MS}});
    let input = plan_file(&home, "limited.json", &plan);
    let (code, _, err) = invoke(&home, &[TOOL, "--input", &input]);
    assert_eq!(code, 0, "{err}");
    let limited = echo_times(&home, &last_plan_call(&home));
    assert_eq!(limited.len(), 3, "{limited:?}");
    for w in limited.windows(2) {
        assert!(w[1] - w[0] >= INTERVAL_MS - SLACK_MS, "{limited:?}");
    }
    every_invocation_closed(&home);
}

/// The plan tests' JSON-lines connector (`peers/plan_connector.py`), installed as plugin
/// `id` with its own directory (returned) as its state directory, granted (for writing).
fn install_connector(home: &Home, id: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("pc")
        .tempdir_in("/tmp")
        .expect("temp dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let script = dir.path().join("plan_connector.py");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("all/peers/plan_connector.py");
    fs::copy(src, &script).expect("connector script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).expect("chmod");
    let d = dir.path().display().to_string();
    let args = serde_json::to_string(
        &serde_json::to_string(&[script.display().to_string(), d.clone()]).expect("args"),
    )
    .expect("quoted");
    let pdir = home.path().join("plugins").join(id);
    fs::create_dir_all(&pdir).expect("plugin dir");
    let manifest = format!(
        r#"{{"api_version": "v1alpha1", "plugin_id": "{id}", "version": "0.1.0", "summary": "test",
        "capabilities": ["filesystem_write"],
        "metadata": {{"bridge_kind": "process_stdio", "command": "/usr/bin/python3", "args_json": {args}}},
        "sandbox": {{"write": [{d:?}], "timeout_ms": 30000}}}}"#
    );
    fs::write(pdir.join("loong.plugin.json"), manifest).expect("manifest");
    dir
}

/// The most calls of a batch that ran at once, from the connector's own clock: for each
/// call's start, the calls whose span holds it.
fn peak_overlap(by_call: &serde_json::Value) -> usize {
    let spans: Vec<(f64, f64)> = by_call
        .as_object()
        .expect("by_call")
        .values()
        .map(|c| {
            let o = &c["outcome"];
            (
                o["start"].as_f64().expect("start"),
                o["end"].as_f64().expect("end"),
            )
        })
        .collect();
    spans
        .iter()
        .map(|(s, _)| spans.iter().filter(|(a, b)| a <= s && s < b).count())
        .max()
        .unwrap_or(0)
}

/// A batch of `n` slow calls of `conn` (each `ms` long).
fn slow_batch(n: usize, ms: u64, parallel: bool, max_in_flight: usize) -> serde_json::Value {
    let calls: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({"call_id": format!("c{i}"), "connector_name": "conn",
                "payload": {"mode": "slow", "ms": ms}})
        })
        .collect();
    serde_json::json!({
        "caller": "t", "max_calls": n, "concurrency": {"max_in_flight": max_in_flight},
        "return_step": "b",
        "steps": [{"kind": "connector_batch", "step_id": "b", "parallel": parallel, "calls": calls}]
    })
}

#[test]
fn a_parallel_batch_overlaps_its_calls_up_to_max_in_flight_and_never_past_it() {
    /// Long enough that three calls started together overlap however slowly their extra
    /// workers start.
    const CALL_MS: u64 = 1_500;
    const MAX_IN_FLIGHT: usize = 3;
    let home = home();
    let _state = install_connector(&home, "conn");
    home.start();
    let input = plan_file(
        &home,
        "par.json",
        &slow_batch(6, CALL_MS, true, MAX_IN_FLIGHT),
    );
    let (code, out, err) = invoke(&home, &[TOOL, "--input", &input]);
    assert_eq!(code, 0, "{err}");
    let answer = json(&out);
    let by_call = &answer["result"]["by_call"];
    assert_eq!(by_call.as_object().map(|o| o.len()), Some(6), "{answer}");
    assert_eq!(peak_overlap(by_call), MAX_IN_FLIGHT, "{by_call}");
    assert_eq!(
        answer["result"]["scheduler"]["peak_in_flight"], MAX_IN_FLIGHT,
        "{answer}"
    );

    // The control: the same calls in a serial batch never overlap, so the measure sees
    // what ran together.
    let input = plan_file(&home, "ser.json", &slow_batch(3, 300, false, MAX_IN_FLIGHT));
    let (code, out, err) = invoke(&home, &[TOOL, "--input", &input]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(peak_overlap(&json(&out)["result"]["by_call"]), 1, "{out}");
    every_invocation_closed(&home);
}

#[test]
fn a_call_a_failed_batch_drops_is_withdrawn_and_closed_by_loongd() {
    /// Far longer than the plan takes to fail: the slow call must not be waited for.
    const SLOW_MS: u64 = 20_000;
    let home = home();
    install_examples(&home);
    let _state = install_connector(&home, "conn");
    home.start();
    let plan = serde_json::json!({
        "caller": "t", "concurrency": {"max_in_flight": 2},
        "steps": [{"kind": "connector_batch", "step_id": "b", "parallel": true, "calls": [
            {"call_id": "slow", "connector_name": "conn", "payload": {"mode": "slow", "ms": SLOW_MS}},
            {"call_id": "bad", "connector_name": "no-such-tool", "payload": {}}
        ]}]
    });
    let input = plan_file(&home, "plan.json", &plan);
    let started = std::time::Instant::now();
    let (code, _, err) = invoke(&home, &[TOOL, "--input", &input]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("step_failed") && err.contains("bad"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(SLOW_MS / 2),
        "the plan waited for the call it dropped"
    );
    // loongd stopped the withdrawn call and recorded its outcome.
    assert!(
        crate::support::wait_until(std::time::Duration::from_secs(10), || {
            records(&home, "tool.failed")
                .iter()
                .map(detail)
                .any(|d| d["tool"] == "conn" && d["failure"] == "abandoned")
        }),
        "the withdrawn call has no outcome"
    );
    every_invocation_closed(&home);

    // The control: continuing on error, the batch waits for the slow call, which completes.
    let mut plan = plan;
    plan["steps"][0]["continue_on_error"] = true.into();
    plan["steps"][0]["calls"][0]["payload"]["ms"] = 300.into();
    let input = plan_file(&home, "plan2.json", &plan);
    let (code, out, err) = invoke(&home, &[TOOL, "--input", &input]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["result"]["success_calls"], 1, "{out}");
    every_invocation_closed(&home);
}

/// The `tool.invoked` records of `tool`, oldest first, under the newest plan call.
fn nested_of(home: &Home, tool: &str) -> Vec<serde_json::Value> {
    let root = last_plan_call(home);
    let mut r: Vec<serde_json::Value> = records(home, "tool.invoked")
        .into_iter()
        .filter(|r| detail(r)["tool"] == tool && detail(r)["chain"]["root"] == root.as_str())
        .collect();
    r.reverse();
    r
}

#[test]
fn a_retry_succeeds_on_the_third_attempt_after_two_transient_failures() {
    let home = home();
    let state = install_connector(&home, "conn");
    home.start();
    let plan = |attempts: u32| {
        serde_json::json!({
            "caller": "t",
            "steps": [{"kind": "connector_call", "step_id": "c", "connector_name": "conn",
                "retry": {"max_attempts": attempts, "initial_backoff_ms": 20, "max_backoff_ms": 100},
                "payload": {"mode": "flaky", "fail": 2}}]
        })
    };
    let input = plan_file(&home, "three.json", &plan(3));
    let (code, out, err) = invoke(&home, &[TOOL, "--input", &input]);
    assert_eq!(code, 0, "{err}");
    let result = &json(&out)["result"];
    assert_eq!(result["outcome"]["call"], 3, "{result}");
    assert_eq!(result["execution"]["attempts"], 3, "{result}");
    assert_eq!(result["execution"]["retries"], 2, "{result}");
    // Three kernel calls, each decided and recorded: two failed transiently, one completed.
    let tried = nested_of(&home, "conn");
    assert_eq!(tried.len(), 3, "{tried:?}");
    let failed = records(&home, "tool.failed")
        .iter()
        .map(detail)
        .filter(|d| d["tool"] == "conn")
        .count();
    assert_eq!(failed, 2);
    every_invocation_closed(&home);

    // The control: two attempts are not enough, and the failure names its class.
    fs::remove_file(state.path().join("flaky")).expect("reset the count");
    let input = plan_file(&home, "two.json", &plan(2));
    let (code, _, err) = invoke(&home, &[TOOL, "--input", &input]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("step_failed") && err.contains("transient"),
        "{err}"
    );
    assert_eq!(nested_of(&home, "conn").len(), 2);
    every_invocation_closed(&home);
}

#[test]
fn a_breaker_opens_refuses_without_a_call_half_opens_after_its_cooldown_and_closes() {
    /// The breaker's cooldown; the plan waits it out with a slow call of another connector.
    const COOLDOWN_MS: u64 = 1_500;
    let home = home();
    let state = install_connector(&home, "conn");
    let _nap = install_connector(&home, "nap");
    home.start();
    let gate = |id: &str| {
        serde_json::json!({"call_id": id, "connector_name": "conn",
            "payload": {"mode": "gate", "fail": 2}})
    };
    let batch = |step: &str, calls: Vec<serde_json::Value>| {
        serde_json::json!({"kind": "connector_batch", "step_id": step, "parallel": false,
            "continue_on_error": true, "calls": calls})
    };
    let plan = serde_json::json!({
        "caller": "t", "include_intermediate": true,
        "connector_circuit_breakers": {"conn": {"failure_threshold": 2, "cooldown_ms": COOLDOWN_MS,
            "half_open_max_calls": 2, "success_threshold": 2}},
        "steps": [
            batch("trip", vec![gate("f1"), gate("f2")]),
            batch("refused", vec![gate("r1"), gate("r2")]),
            {"kind": "connector_call", "step_id": "wait", "connector_name": "nap",
             "payload": {"mode": "slow", "ms": COOLDOWN_MS + 300}},
            batch("probe", vec![gate("p1")]),
            {"kind": "connector_call", "step_id": "close", "connector_name": "conn",
             "payload": {"mode": "gate", "fail": 2}}
        ]
    });
    let input = plan_file(&home, "plan.json", &plan);
    let (code, out, err) = invoke(&home, &[TOOL, "--input", &input]);
    assert_eq!(code, 0, "{err}");
    let answer = json(&out);
    let phase = |i: usize| answer["telemetry"][i]["breakers"]["conn"].clone();
    assert_eq!(phase(0), "open", "{answer}");
    assert_eq!(phase(1), "open", "{answer}");
    assert_eq!(phase(3), "half_open", "{answer}");
    assert_eq!(phase(4), "closed", "{answer}");
    let outputs = &answer["step_outputs"];
    assert_eq!(outputs["trip"]["failed_calls"], 2, "{outputs}");
    for r in ["r1", "r2"] {
        assert_eq!(
            outputs["refused"]["by_call"][r]["error_code"], "circuit_open",
            "{outputs}"
        );
    }
    assert_eq!(
        outputs["probe"]["by_call"]["p1"]["outcome"]["call"], 3,
        "{outputs}"
    );
    assert_eq!(outputs["close"]["outcome"]["call"], 4, "{outputs}");

    // The refused calls reached neither loongd nor the connector: four kernel calls, four
    // entries in the connector's own count.
    assert_eq!(nested_of(&home, "conn").len(), 4);
    assert_eq!(
        fs::read_to_string(state.path().join("gate")).expect("count"),
        "4"
    );
    every_invocation_closed(&home);
}

#[test]
fn a_failed_plan_is_a_typed_outcome_naming_its_kind_and_step() {
    let home = home();
    install_examples(&home);
    home.start();
    let call = |id: &str, payload: serde_json::Value| {
        serde_json::json!({"kind": "connector_call", "step_id": id, "connector_name": "echo",
            "payload": payload})
    };
    let seed = serde_json::json!({"kind": "set_literal", "step_id": "seed", "value": {"a": 1}});
    let cases = [
        (
            "budget_exceeded",
            serde_json::json!({"caller": "t", "max_calls": 1,
                "steps": [call("a", serde_json::json!({})), call("b", serde_json::json!({}))]}),
            None,
        ),
        (
            "connector_not_allowed",
            serde_json::json!({"caller": "t", "allowed_connectors": ["json-transform"],
                "steps": [call("a", serde_json::json!({}))]}),
            Some("a"),
        ),
        (
            "template_error",
            serde_json::json!({"caller": "t",
                "steps": [seed.clone(), call("t", serde_json::json!({"x": "{{seed#/missing}}"}))]}),
            Some("t"),
        ),
    ];
    for (i, (kind, plan, step)) in cases.iter().enumerate() {
        let input = plan_file(&home, &format!("p{i}.json"), plan);
        let (code, out, err) = invoke(&home, &[TOOL, "--json", "--input", &input]);
        assert_eq!(code, 7, "{kind}: {err}");
        let failed = &json(&out)["error"]["detail"]["plan_failed"];
        assert_eq!(failed["kind"], *kind, "{out}");
        if let Some(step) = step {
            assert_eq!(failed["step"], *step, "{out}");
        }
        assert!(
            failed["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{out}"
        );
        // Without --json, loongctl prints the kind and the step.
        let (code, out, err) = invoke(&home, &[TOOL, "--input", &input]);
        assert_eq!((code, out.as_str()), (7, ""), "{err}");
        assert!(err.contains(&format!("plan failed ({kind})")), "{err}");
        if let Some(step) = step {
            assert!(err.contains(&format!("at step {step}")), "{err}");
        }
    }
    // The audit's tool.failed records carry the kind too.
    let kinds: Vec<String> = records(&home, "tool.failed")
        .iter()
        .map(detail)
        .filter(|d| d["tool"] == TOOL && d["failure"] == "plan_failed")
        .map(|d| d["plan"]["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    for (kind, ..) in &cases {
        assert_eq!(kinds.iter().filter(|k| k == kind).count(), 2, "{kinds:?}");
    }

    // A connector call's failure names its class; the positive control: the plan with its
    // template fixed runs.
    let plan = serde_json::json!({"caller": "t",
        "steps": [call("n", serde_json::json!({}))], "allowed_connectors": []});
    let mut nf = plan.clone();
    nf["steps"][0]["connector_name"] = "no-such-tool".into();
    let input = plan_file(&home, "nf.json", &nf);
    let (code, out, _) = invoke(&home, &[TOOL, "--json", "--input", &input]);
    assert_eq!(code, 7);
    let failed = &json(&out)["error"]["detail"]["plan_failed"];
    assert_eq!(
        (failed["kind"].as_str(), failed["cause"].as_str()),
        (Some("step_failed"), Some("not_found")),
        "{out}"
    );
    let fixed = serde_json::json!({"caller": "t",
        "steps": [seed, call("t", serde_json::json!({"x": "{{seed#/a}}"}))]});
    let input = plan_file(&home, "fixed.json", &fixed);
    let (code, out, err) = invoke(&home, &[TOOL, "--json", "--input", &input]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["output"]["result"]["outcome"]["x"], 1, "{out}");
    every_invocation_closed(&home);
}

#[test]
fn two_nested_approvals_wait_at_once_each_its_own_showing_the_caller_and_the_chain() {
    /// The invoke's deadline; the plan's own wall time (`[builtins] timeout_ms`) is longer,
    /// so the request's deadline passes while a nested call still waits.
    const INVOKE_TIMEOUT_S: &str = "8";
    let home = Home::with_config(
        "[builtins]\nplans = true\ntimeout_ms = 60000\n[approvals]\ntimeout_ms = 60000\n",
    );
    install_examples(&home);
    let token = crate::support::start_with_careful_token(&home, "tool.invoke");
    let plan = serde_json::json!({
        "caller": "t", "concurrency": {"max_in_flight": 2},
        "steps": [{"kind": "connector_batch", "step_id": "b", "parallel": true, "calls": [
            {"call_id": "x", "connector_name": "echo", "payload": {"n": 1}},
            {"call_id": "y", "connector_name": "echo", "payload": {"n": 2}}
        ]}]
    });
    let input = plan_file(&home, "plan.json", &plan);
    let child = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args([
            "invoke",
            TOOL,
            "--token",
            &token,
            "--timeout",
            INVOKE_TIMEOUT_S,
        ])
        .args(["--input", &input])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("invoke");
    let root = crate::kernel_calls::pending(&home, 1);
    assert_eq!(root[0].1, TOOL, "{root:?}");
    assert!(home
        .ctl(&["approvals", "approve", &root[0].0])
        .status
        .success());

    // Both nested calls wait at once, each for its own approval, which shows the plan as
    // the caller and the chain.
    let nested = crate::kernel_calls::pending(&home, 2);
    assert!(
        nested.iter().all(|(_, target)| target == "echo"),
        "{nested:?}"
    );
    assert_ne!(nested[0].0, nested[1].0);
    for (id, _) in &nested {
        let shown = json(&text(
            &home.ctl(&["approvals", "show", id, "--json"]).stdout,
        ));
        assert_eq!(shown["caller"], TOOL, "{shown}");
        let chain = &shown["chain"];
        assert_eq!(chain["depth"], 1, "{shown}");
        assert_eq!(chain["root"], chain["parent"], "{shown}");
        assert!(
            chain["root"]
                .as_str()
                .is_some_and(|r| r.starts_with("conn-")),
            "{shown}"
        );
        let out = home.ctl(&["approvals", "show", id]);
        let shown = text(&out.stdout);
        assert!(
            shown.contains(&format!("asked by plugin {TOOL} in a nested call"))
                && shown.contains("depth 1"),
            "{shown}"
        );
    }
    // The root's own approval shows no chain (the control).
    let shown = json(&text(
        &home
            .ctl(&["approvals", "show", &root[0].0, "--json"])
            .stdout,
    ));
    assert!(
        shown["chain"].is_null() && shown["caller"].is_null(),
        "{shown}"
    );

    // One answered: the other still waits, and the request's deadline names it.
    assert!(home
        .ctl(&["approvals", "approve", &nested[0].0])
        .status
        .success());
    let out = child.wait_with_output().expect("invoke ends");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains(&format!("approval {} is still pending", nested[1].0)),
        "{err}"
    );
    // Each wait told the asker its own note.
    for (id, _) in root.iter().chain(&nested) {
        assert!(err.contains(&format!("approval {id} pending")), "{err}");
    }
}
