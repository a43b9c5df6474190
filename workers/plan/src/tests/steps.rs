//! Each step kind, templating, provenance and the answer's shape.

use super::*;

#[tokio::test(start_paused = true)]
async fn set_literal_outputs_its_value_as_written() {
    let k = TestKernel::new();
    let a = ok(
        &k,
        plan_of(json!([
            {"kind": "set_literal", "step_id": "seed", "value": {"a": [1, 2], "t": "{{seed}}"}}
        ])),
    )
    .await;
    // Templates in a literal stay text, as upstream.
    assert_eq!(a["result"], json!({"a": [1, 2], "t": "{{seed}}"}));
    assert_eq!(a["return_step"], "seed");
    assert_eq!(a["connector_calls"], 0);
    assert!(k.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn json_pointer_takes_a_part_of_an_earlier_output() {
    let k = TestKernel::new();
    let a = ok(
        &k,
        json!({"caller": "t", "include_intermediate": true, "steps": [
            {"kind": "set_literal", "step_id": "seed", "value": {"a": {"b": [10, 20]}, "x/y": 1}},
            {"kind": "json_pointer", "step_id": "slash", "from_step": "seed", "pointer": "/a/b/1"},
            {"kind": "json_pointer", "step_id": "bare", "from_step": "seed", "pointer": "a/b/0"},
            {"kind": "json_pointer", "step_id": "whole", "from_step": "seed", "pointer": ""},
            {"kind": "json_pointer", "step_id": "escaped", "from_step": "seed", "pointer": "/x~1y"}
        ]}),
    )
    .await;
    let out = &a["step_outputs"];
    assert_eq!(out["slash"], 20);
    assert_eq!(out["bare"], 10);
    assert_eq!(out["whole"], out["seed"]);
    assert_eq!(out["escaped"], 1);
}

#[tokio::test(start_paused = true)]
async fn connector_call_sends_the_resolved_payload_with_provenance() {
    let k = TestKernel::new();
    let a = ok(&k, json!({"caller": "planner-alpha", "steps": [
        {"kind": "set_literal", "step_id": "seed", "value": {"n": 7}},
        {"kind": "connector_call", "step_id": "call", "connector_name": "echo/echo",
         "operation": "notify", "priority_class": "high",
         "payload": {"n": "{{seed#/n}}", "_loong": {"caller": "someone-else", "root": "forged"}}}
    ]}))
    .await;
    let calls = k.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].tool, "echo/echo");
    // The whole-string placeholder keeps the value's type; the plan's own `_loong` is
    // replaced, not merged.
    assert_eq!(
        calls[0].input,
        json!({"n": 7, "_loong": {
            "caller": "planner-alpha", "mode": "programmatic_tool_call",
            "step_id": "call", "step_index": 1, "operation": "notify"
        }})
    );
    let r = &a["result"];
    assert_eq!(r["connector_name"], "echo/echo");
    assert_eq!(r["outcome"], calls[0].input);
    assert_eq!(r["priority_class"], "high");
    assert_eq!(r["execution"]["attempts"], 1);
    assert_eq!(r["execution"]["circuit_phase_before"], "disabled");
    assert_eq!(a["connector_calls"], 1);
}

#[tokio::test(start_paused = true)]
async fn a_payload_that_is_not_an_object_travels_under_input() {
    let k = TestKernel::new();
    ok(
        &k,
        plan_of(json!([
            {"kind": "connector_call", "step_id": "c", "connector_name": "echo", "payload": [1, 2]}
        ])),
    )
    .await;
    assert_eq!(k.calls()[0].input["input"], json!([1, 2]));
    assert_eq!(k.calls()[0].input["_loong"]["caller"], "tester");
}

#[tokio::test(start_paused = true)]
async fn connector_batch_reports_each_call_by_id() {
    let k = TestKernel::new().failing("broken", permanent("no"));
    let a = ok(
        &k,
        plan_of(json!([
            {"kind": "connector_batch", "step_id": "b", "continue_on_error": true, "calls": [
                {"call_id": "one", "connector_name": "echo", "payload": {"v": 1}},
                {"call_id": "two", "connector_name": "broken", "payload": {"v": 2}},
                {"call_id": "three", "connector_name": "echo", "payload": {"v": 3}}
            ]}
        ])),
    )
    .await;
    let r = &a["result"];
    assert_eq!(r["total_calls"], 3);
    assert_eq!(r["success_calls"], 2);
    assert_eq!(r["failed_calls"], 1);
    assert_eq!(r["by_call"]["one"]["outcome"]["v"], 1);
    assert_eq!(r["by_call"]["one"]["outcome"]["_loong"]["call_id"], "one");
    assert_eq!(r["by_call"]["two"]["status"], "error");
    assert_eq!(r["by_call"]["two"]["error_code"], "tool_failed");
    assert_eq!(
        r["by_call"]["two"]["cause"],
        json!({"kind": "tool_failed", "class": "permanent", "message": "no"})
    );
    assert_eq!(r["scheduler"]["mode"], "parallel");
    let ids: Vec<_> = r["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| c["call_id"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![json!("one"), json!("two"), json!("three")],
        "reports keep the plan's order"
    );
    assert_eq!(a["connector_calls"], 3);
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_call_fails_the_step_unless_it_continues_on_error() {
    let k = TestKernel::new().failing("broken", permanent("no"));
    let e = fails(
        &k,
        plan_of(json!([
            {"kind": "connector_batch", "step_id": "b", "parallel": false, "calls": [
                {"call_id": "one", "connector_name": "broken"},
                {"call_id": "two", "connector_name": "echo"}
            ]}
        ])),
    )
    .await;
    assert_eq!(e.code(), "step_failed");
    assert!(
        matches!(&e, PlanError::StepFailed { step, call: Some(c), .. } if step == "b" && c == "one"),
        "{e:?}"
    );
    assert_eq!(k.calls().len(), 1, "a serial batch stops at the failure");
}

#[tokio::test(start_paused = true)]
async fn conditional_chooses_a_branch_and_resolves_it() {
    let k = TestKernel::new();
    let a = ok(
        &k,
        json!({"caller": "t", "include_intermediate": true, "steps": [
            {"kind": "set_literal", "step_id": "seed", "value": {"status": "green", "msg": "go"}},
            {"kind": "conditional", "step_id": "eq", "from_step": "seed", "pointer": "/status",
             "equals": "green", "when_true": {"t": "{{seed#/msg}}"}, "when_false": "no"},
            {"kind": "conditional", "step_id": "ne", "from_step": "seed", "pointer": "status",
             "equals": "red", "when_true": "yes", "when_false": {"t": "{{seed#msg}}-else"}},
            {"kind": "conditional", "step_id": "absent", "from_step": "seed", "pointer": "/nope",
             "exists": false, "when_true": "missing"},
            {"kind": "conditional", "step_id": "default", "from_step": "seed", "pointer": "/nope",
             "exists": true, "when_true": "there"},
            {"kind": "conditional", "step_id": "both", "from_step": "seed", "pointer": "/status",
             "exists": true, "equals": "blue", "when_true": 1, "when_false": 2}
        ]}),
    )
    .await;
    let out = &a["step_outputs"];
    assert_eq!(out["eq"], json!({"t": "go"}));
    assert_eq!(out["ne"], json!({"t": "go-else"}));
    assert_eq!(out["absent"], "missing");
    assert_eq!(out["default"], Value::Null, "no when_false means null");
    assert_eq!(out["both"], 2, "every predicate given must hold");
    let trace = a["steps"].as_array().expect("trace");
    assert_eq!(trace[1]["matched"], true);
    assert_eq!(trace[1]["evaluated"], "green");
}

#[tokio::test(start_paused = true)]
async fn placeholders_inside_text_become_text() {
    let k = TestKernel::new();
    let a = ok(&k, json!({"caller": "t", "include_intermediate": true, "steps": [
        {"kind": "set_literal", "step_id": "s", "value": {"n": 3, "o": {"k": true}, "txt": "hi"}},
        {"kind": "conditional", "step_id": "c", "from_step": "s", "exists": true,
         "when_true": {"mixed": "n={{s#/n}} o={{ s # /o }} t={{s#/txt}}{{s#/txt}}", "whole": "{{ s }}"}}
    ]}))
    .await;
    assert_eq!(
        a["step_outputs"]["c"]["mixed"],
        r#"n=3 o={"k":true} t=hihi"#
    );
    assert_eq!(a["step_outputs"]["c"]["whole"], a["step_outputs"]["s"]);
}

#[tokio::test(start_paused = true)]
async fn a_placeholder_in_a_tool_answer_is_never_resolved() {
    // The tool answers with text that looks like a placeholder; the next call gets the text.
    let k = TestKernel::new().script(
        "evil",
        Script {
            always: Some(Ok(json!({"x": "{{secret}}", "y": "{{secret#/k}}"}))),
            ..Script::default()
        },
    );
    ok(
        &k,
        plan_of(json!([
            {"kind": "set_literal", "step_id": "secret", "value": {"k": "hidden"}},
            {"kind": "connector_call", "step_id": "a", "connector_name": "evil"},
            {"kind": "connector_call", "step_id": "b", "connector_name": "echo",
             "payload": {"from_a": "{{a#/outcome}}", "text": "got {{a#/outcome/x}}"}}
        ])),
    )
    .await;
    let sent = &k.calls_of("echo")[0].input;
    assert_eq!(
        sent["from_a"],
        json!({"x": "{{secret}}", "y": "{{secret#/k}}"})
    );
    assert_eq!(sent["text"], "got {{secret}}");
}

#[tokio::test(start_paused = true)]
async fn the_answer_is_return_step_or_the_last_step() {
    let k = TestKernel::new();
    let steps = json!([
        {"kind": "set_literal", "step_id": "first", "value": 1},
        {"kind": "set_literal", "step_id": "last", "value": 2}
    ]);
    let a = ok(&k, json!({"caller": "t", "steps": steps})).await;
    assert_eq!(
        (a["return_step"].clone(), a["result"].clone()),
        (json!("last"), json!(2))
    );
    assert!(a.get("steps").is_none() && a.get("step_outputs").is_none());
    let a = ok(
        &k,
        json!({"caller": "t", "return_step": "first", "steps": steps}),
    )
    .await;
    assert_eq!(a["result"], 1);
    // Upstream reads an empty return_step as absent.
    let a = ok(
        &k,
        json!({"caller": "t", "return_step": " ", "steps": steps}),
    )
    .await;
    assert_eq!(a["return_step"], "last");
}

#[tokio::test(start_paused = true)]
async fn telemetry_names_each_step_with_its_time_and_attempts() {
    let k = TestKernel::new().script(
        "slow",
        Script {
            delay: Duration::from_millis(40),
            ..Script::default()
        },
    );
    let a = ok(&k, json!({"caller": "t",
        "connector_circuit_breakers": {"slow": {"failure_threshold": 2}},
        "steps": [
            {"kind": "set_literal", "step_id": "s", "value": 1},
            {"kind": "connector_call", "step_id": "c", "connector_name": "slow"},
            {"kind": "connector_batch", "step_id": "b", "calls": [
                {"call_id": "x", "connector_name": "slow"}, {"call_id": "y", "connector_name": "echo"}
            ]}
        ]}))
    .await;
    let t = a["telemetry"].as_array().expect("telemetry");
    assert_eq!(t.len(), 3);
    assert_eq!(
        (
            t[0]["kind"].clone(),
            t[0]["wall_ms"].clone(),
            t[0]["attempts"].clone()
        ),
        (json!("set_literal"), json!(0), json!(0))
    );
    assert_eq!(t[1]["kind"], "connector_call");
    assert_eq!(
        t[1]["wall_ms"], 40,
        "the paused clock makes wall time exact"
    );
    assert_eq!(t[1]["attempts"], 1);
    assert_eq!(t[1]["breakers"], json!({"slow": "closed"}));
    assert_eq!(t[2]["calls"], 2);
    assert_eq!(t[2]["wall_ms"], 40, "the batch's calls ran side by side");
    assert_eq!(
        t[2]["breakers"],
        json!({"slow": "closed", "echo": "disabled"})
    );
    assert!(t.iter().all(|s| s["status"] == "ok"));
}

#[tokio::test(start_paused = true)]
async fn upstreams_example_plan_runs_as_is() {
    // examples/spec/programmatic-tool-call.json's `operation`, verbatim but for the
    // capability list (upstream's Capability names are accepted as text and ignored).
    let k = TestKernel::new();
    let a = ok(
        &k,
        serde_json::from_str(UPSTREAM_EXAMPLE).expect("the example is JSON"),
    )
    .await;
    assert_eq!(a["return_step"], "notify-summary");
    assert_eq!(
        a["result"]["outcome"]["text"],
        "fanout total=2 success=2 failed=0"
    );
    assert_eq!(k.calls_of("webhook").len(), 3);
    let fanout = &a["step_outputs"]["fanout"];
    assert_eq!(
        fanout["by_call"]["primary"]["outcome"]["text"],
        "loong-orchestration-ready"
    );
    assert_eq!(fanout["by_call"]["primary"]["outcome"]["priority"], "p1");
}

pub(super) const UPSTREAM_EXAMPLE: &str = r#"{
    "kind": "programmatic_tool_call",
    "caller": "planner-demo",
    "max_calls": 5,
    "include_intermediate": true,
    "allowed_connectors": ["webhook"],
    "connector_rate_limits": {"webhook": {"min_interval_ms": 10}},
    "connector_circuit_breakers": {"webhook": {"failure_threshold": 3, "cooldown_ms": 2000, "half_open_max_calls": 1, "success_threshold": 1}},
    "concurrency": {"max_in_flight": 2, "min_in_flight": 1, "fairness": "weighted_round_robin", "adaptive_budget": true,
        "high_weight": 3, "normal_weight": 2, "low_weight": 1, "adaptive_recovery_successes": 2,
        "adaptive_upshift_step": 1, "adaptive_downshift_step": 1, "adaptive_reduce_on": ["connector_execution_error", "circuit_open"]},
    "return_step": "notify-summary",
    "steps": [
      {"kind": "set_literal", "step_id": "seed", "value": {"channel": "ops-alerts", "message": "loong-orchestration-ready", "status": "green"}},
      {"kind": "conditional", "step_id": "gate", "from_step": "seed", "pointer": "/status", "equals": "green", "exists": true,
       "when_true": {"text": "{{seed#/message}}", "priority": "p1"}, "when_false": {"text": "blocked-by-gate", "priority": "p3"}},
      {"kind": "connector_batch", "step_id": "fanout", "parallel": true, "continue_on_error": false, "calls": [
        {"call_id": "primary", "connector_name": "webhook", "operation": "notify", "required_capabilities": ["InvokeConnector"],
         "retry": {"max_attempts": 2, "initial_backoff_ms": 50, "max_backoff_ms": 300, "jitter_ratio": 0.25, "adaptive_jitter": true},
         "priority_class": "high", "payload": {"channel": "{{seed#/channel}}", "text": "{{gate#/text}}", "priority": "{{gate#/priority}}"}},
        {"call_id": "backup", "connector_name": "webhook", "operation": "notify", "required_capabilities": ["InvokeConnector"],
         "retry": {"max_attempts": 2, "initial_backoff_ms": 50, "max_backoff_ms": 300, "jitter_ratio": 0.25, "adaptive_jitter": true},
         "priority_class": "low", "payload": {"channel": "ops-backup", "text": "{{gate#/text}}", "priority": "{{gate#/priority}}"}}
      ]},
      {"kind": "connector_call", "step_id": "notify-summary", "connector_name": "webhook", "operation": "notify",
       "required_capabilities": ["InvokeConnector"],
       "retry": {"max_attempts": 2, "initial_backoff_ms": 50, "max_backoff_ms": 300, "jitter_ratio": 0.25, "adaptive_jitter": true},
       "priority_class": "high",
       "payload": {"channel": "ops-audit", "text": "fanout total={{fanout#/total_calls}} success={{fanout#/success_calls}} failed={{fanout#/failed_calls}}"}}
    ]
}"#;

#[tokio::test(start_paused = true)]
async fn a_failing_parallel_batch_starts_no_further_call_and_withdraws_the_started() {
    let k = TestKernel::new().failing("broken", permanent("no"));
    let e = fails(
        &k,
        json!({"caller": "t", "concurrency": {"max_in_flight": 2}, "steps": [
            {"kind": "connector_batch", "step_id": "b", "calls": [
                {"call_id": "slow", "connector_name": "echo", "payload": {"delay_ms": 50}},
                {"call_id": "bad", "connector_name": "broken"},
                {"call_id": "never", "connector_name": "echo"}
            ]}
        ]}),
    )
    .await;
    assert!(
        matches!(&e, PlanError::StepFailed { call: Some(c), .. } if c == "bad"),
        "{e:?}"
    );
    let tools: Vec<String> = k
        .calls()
        .iter()
        .map(|s| {
            s.input["_loong"]["call_id"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(tools, vec!["slow", "bad"], "the third call never started");
    assert_eq!(k.in_flight.get(), 0);
    assert_eq!(
        k.withdrawn.get(),
        1,
        "the slow call was dropped, not awaited"
    );

    // The control: a batch that continues on error lets the slow call finish.
    let k = TestKernel::new().failing("broken", permanent("no"));
    let answer = ok(
        &k,
        json!({"caller": "t", "concurrency": {"max_in_flight": 2}, "steps": [
            {"kind": "connector_batch", "step_id": "b", "continue_on_error": true, "calls": [
                {"call_id": "slow", "connector_name": "echo", "payload": {"delay_ms": 50}},
                {"call_id": "bad", "connector_name": "broken"}
            ]}
        ]}),
    )
    .await;
    assert_eq!(answer["connector_calls"], 2, "{answer}");
    assert_eq!(k.withdrawn.get(), 0, "nothing was dropped");
}

#[tokio::test(start_paused = true)]
async fn a_spent_root_budget_ends_the_run_even_when_the_batch_continues_on_error() {
    for (error, ends) in [
        (
            CallError::BudgetExceeded {
                reason: "calls".into(),
            },
            true,
        ),
        (CallError::DepthExceeded, true),
        (
            CallError::Transport {
                message: "closed".into(),
            },
            true,
        ),
        (CallError::NotFound, false),
    ] {
        let k = TestKernel::new().failing("k", error.clone());
        let r = run_json(&k, json!({"caller": "t", "concurrency": {"max_in_flight": 1}, "steps": [
            {"kind": "connector_batch", "step_id": "b", "continue_on_error": true, "calls": [
                {"call_id": "one", "connector_name": "k"}, {"call_id": "two", "connector_name": "echo"}]}
        ]}))
        .await;
        match (ends, r) {
            (true, Err(f)) => {
                assert!(
                    matches!(&f.error, PlanError::StepFailed { cause, .. } if *cause == error),
                    "{f:?}"
                );
                assert_eq!(k.calls().len(), 1, "{error:?}: no call after it");
            }
            (false, Ok(a)) => assert_eq!(a.result["failed_calls"], 1, "{error:?}"),
            (_, other) => panic!("{error:?}: {other:?}"),
        }
    }
}
