//! Upstream's tests, ported: `crates/daemon/tests/integration/programmatic.rs` of
//! eastreams/loong. Each names the upstream test and quotes its assertions; where ours
//! differ, the comment says how and why. Upstream's stub `webhook` connector echoes its
//! payload under `outcome.payload.payload`; the test kernel here echoes it as the outcome
//! itself, so `outcome.payload.payload.X` upstream is `outcome.X` here. Upstream's injected
//! failures (`_loong_test.failures_before_success`) are scripted failures of the test
//! kernel, of the class upstream's stub reports (`connector_execution_error`: a tool
//! failure here).

use super::*;

fn conc(
    max: usize,
    min: usize,
    adaptive: bool,
    recovery: usize,
    up: usize,
    down: usize,
    reduce_on: Value,
) -> Value {
    json!({"max_in_flight": max, "min_in_flight": min, "fairness": "weighted_round_robin",
        "adaptive_budget": adaptive, "high_weight": 1, "normal_weight": 1, "low_weight": 1,
        "adaptive_recovery_successes": recovery, "adaptive_upshift_step": up,
        "adaptive_downshift_step": down, "adaptive_reduce_on": reduce_on})
}

fn default_reduce_on() -> Value {
    json!(["connector_execution_error", "circuit_open"])
}

/// `execute_spec_programmatic_tool_call_supports_templates_and_steps`:
/// `connector_calls == 1`, `result.outcome.payload.payload.text == "loong-online"`,
/// `…_loong.caller == "planner-alpha"`, `step_outputs.msg == "loong-online"`.
#[tokio::test(start_paused = true)]
async fn supports_templates_and_steps() {
    let k = TestKernel::new();
    let a = ok(&k, json!({"caller": "planner-alpha", "max_calls": 3, "include_intermediate": true,
        "allowed_connectors": ["webhook"], "return_step": "notify", "steps": [
            {"kind": "set_literal", "step_id": "seed", "value": {"channel": "ops-alerts", "message": "loong-online"}},
            {"kind": "json_pointer", "step_id": "msg", "from_step": "seed", "pointer": "/message"},
            {"kind": "connector_call", "step_id": "notify", "connector_name": "webhook", "operation": "notify",
             "required_capabilities": ["InvokeConnector"],
             "payload": {"channel": "{{seed#/channel}}", "text": "{{msg}}"}}
        ]}))
    .await;
    assert_eq!(a["connector_calls"], 1);
    assert_eq!(a["result"]["outcome"]["text"], "loong-online");
    assert_eq!(a["result"]["outcome"]["_loong"]["caller"], "planner-alpha");
    assert_eq!(a["step_outputs"]["msg"], "loong-online");
}

/// `execute_spec_programmatic_tool_call_enforces_max_call_budget`: max_calls 1, two calls;
/// blocked, reason contains "budget exceeded". Upstream makes the first call and fails at
/// the second; here the plan is refused before any call (the count is known), with the
/// code `budget_exceeded` naming the second step.
#[tokio::test(start_paused = true)]
async fn enforces_max_call_budget() {
    let k = TestKernel::new();
    let e = fails(&k, json!({"caller": "planner-beta", "max_calls": 1, "steps": [
        {"kind": "connector_call", "step_id": "notify-a", "connector_name": "webhook", "operation": "notify", "payload": {"channel": "a"}},
        {"kind": "connector_call", "step_id": "notify-b", "connector_name": "webhook", "operation": "notify", "payload": {"channel": "b"}}
    ]}))
    .await;
    assert_eq!(e.code(), "budget_exceeded");
    assert!(matches!(&e, PlanError::BudgetExceeded { step: Some(s), .. } if s == "notify-b"));
    assert!(k.calls().is_empty());
}

/// `execute_spec_programmatic_tool_call_blocks_when_caller_not_allowlisted`: a plugin whose
/// `allowed_callers` excludes the plan's caller; blocked, reason contains "is not allowed".
/// Here the kernel decides who may call what: its denial fails the step with the cause,
/// and is not retried.
#[tokio::test(start_paused = true)]
async fn blocks_when_the_kernel_denies_the_caller() {
    let denial = CallError::Denied {
        reason: "caller planner-denied is not allowed".into(),
    };
    let k = TestKernel::new().failing("acl-provider", denial.clone());
    let e = fails(&k, json!({"caller": "planner-denied", "max_calls": 2, "allowed_connectors": ["acl-provider"],
        "steps": [{"kind": "connector_call", "step_id": "acl-call", "connector_name": "acl-provider",
            "operation": "invoke", "retry": {"max_attempts": 3}, "payload": {"query": "hello"}}]}))
    .await;
    assert_eq!(
        e,
        PlanError::StepFailed {
            step: "acl-call".into(),
            call: None,
            connector: "acl-provider".into(),
            attempts: 1,
            cause: denial
        }
    );
    assert!(e.to_string().contains("is not allowed"));
}

/// `execute_spec_programmatic_tool_call_connector_batch_parallel_succeeds`:
/// `connector_calls == 2`, `total_calls == 2`, `failed_calls == 0`,
/// `by_call.a.…_loong.call_id == "a"`, `by_call.b.….text == "batched-b"`.
#[tokio::test(start_paused = true)]
async fn connector_batch_parallel_succeeds() {
    let k = TestKernel::new();
    let a = ok(&k, json!({"caller": "planner-batch", "max_calls": 4, "include_intermediate": true,
        "allowed_connectors": ["webhook"], "return_step": "batch", "steps": [
            {"kind": "set_literal", "step_id": "seed", "value": {"message": "batched"}},
            {"kind": "connector_batch", "step_id": "batch", "parallel": true, "continue_on_error": false, "calls": [
                {"call_id": "a", "connector_name": "webhook", "operation": "notify", "payload": {"text": "{{seed#/message}}-a"}},
                {"call_id": "b", "connector_name": "webhook", "operation": "notify", "payload": {"text": "{{seed#/message}}-b"}}
            ]}
        ]}))
    .await;
    assert_eq!(a["connector_calls"], 2);
    assert_eq!(a["result"]["total_calls"], 2);
    assert_eq!(a["result"]["failed_calls"], 0);
    assert_eq!(
        a["result"]["by_call"]["a"]["outcome"]["_loong"]["call_id"],
        "a"
    );
    assert_eq!(a["result"]["by_call"]["b"]["outcome"]["text"], "batched-b");
}

/// `execute_spec_programmatic_tool_call_connector_batch_continue_on_error`: a serial batch
/// with a missing connector in the middle; `connector_calls == 3`, `failed_calls == 1`,
/// `success_calls == 2`, `by_call.bad.status == "error"`, its error contains "connector not
/// found", `error_code == "connector_not_found"`. Here the kernel's class is `not_found`.
#[tokio::test(start_paused = true)]
async fn connector_batch_continue_on_error() {
    let k = TestKernel::new().failing("missing-connector", CallError::NotFound);
    let a = ok(&k, json!({"caller": "planner-batch-errors", "max_calls": 5,
        "allowed_connectors": ["webhook", "missing-connector"], "return_step": "batch", "steps": [
            {"kind": "set_literal", "step_id": "seed", "value": {"message": "fanout"}},
            {"kind": "connector_batch", "step_id": "batch", "parallel": false, "continue_on_error": true, "calls": [
                {"call_id": "ok-a", "connector_name": "webhook", "payload": {"text": "{{seed#/message}}-ok-a"}},
                {"call_id": "bad", "connector_name": "missing-connector", "payload": {"text": "{{seed#/message}}-bad"}},
                {"call_id": "ok-b", "connector_name": "webhook", "payload": {"text": "{{seed#/message}}-ok-b"}}
            ]}
        ]}))
    .await;
    assert_eq!(a["connector_calls"], 3);
    assert_eq!(a["result"]["failed_calls"], 1);
    assert_eq!(a["result"]["success_calls"], 2);
    assert_eq!(a["result"]["by_call"]["bad"]["status"], "error");
    assert_eq!(a["result"]["by_call"]["bad"]["error"], "no such tool");
    assert_eq!(a["result"]["by_call"]["bad"]["error_code"], "not_found");
}

/// `execute_spec_programmatic_tool_call_conditional_step_routes_branch`:
/// `step_outputs.gate.text == "conditional-ready"`, `result.outcome.….text` the same.
#[tokio::test(start_paused = true)]
async fn conditional_step_routes_branch() {
    let k = TestKernel::new();
    let a = ok(&k, json!({"caller": "planner-conditional", "max_calls": 2, "include_intermediate": true,
        "allowed_connectors": ["webhook"], "return_step": "notify", "steps": [
            {"kind": "set_literal", "step_id": "seed", "value": {"channel": "ops-alerts", "message": "conditional-ready", "status": "green"}},
            {"kind": "conditional", "step_id": "gate", "from_step": "seed", "pointer": "/status", "equals": "green",
             "exists": true, "when_true": {"text": "{{seed#/message}}"}, "when_false": {"text": "blocked"}},
            {"kind": "connector_call", "step_id": "notify", "connector_name": "webhook", "operation": "notify",
             "payload": {"channel": "{{seed#/channel}}", "text": "{{gate#/text}}"}}
        ]}))
    .await;
    assert_eq!(a["step_outputs"]["gate"]["text"], "conditional-ready");
    assert_eq!(a["result"]["outcome"]["text"], "conditional-ready");
}

/// `execute_spec_programmatic_tool_call_connector_batch_budget_checks_total_calls`:
/// max_calls 1, a batch of two; blocked, "budget exceeded". The same here, before any call.
#[tokio::test(start_paused = true)]
async fn connector_batch_budget_checks_total_calls() {
    let k = TestKernel::new();
    let e = fails(
        &k,
        json!({"caller": "planner-batch-budget", "max_calls": 1, "steps": [
        {"kind": "connector_batch", "step_id": "batch", "parallel": true, "calls": [
            {"call_id": "a", "connector_name": "webhook", "payload": {"channel": "a"}},
            {"call_id": "b", "connector_name": "webhook", "payload": {"channel": "b"}}]}]}),
    )
    .await;
    assert_eq!(e.code(), "budget_exceeded");
    assert!(k.calls().is_empty());
}

/// `execute_spec_programmatic_tool_call_retry_recovers_transient_failure`: one injected
/// failure, max_attempts 3; `attempts == 2`, `retries == 1`, `outcome.status == "ok"`.
#[tokio::test(start_paused = true)]
async fn retry_recovers_transient_failure() {
    let k = TestKernel::new().failing_first("webhook", 1, transient("injected"));
    let a = ok(&k, json!({"caller": "planner-retry", "max_calls": 2, "return_step": "retry-call", "steps": [
        {"kind": "connector_call", "step_id": "retry-call", "connector_name": "webhook", "operation": "notify",
         "retry": {"max_attempts": 3, "initial_backoff_ms": 1, "max_backoff_ms": 10, "jitter_ratio": 0.0, "adaptive_jitter": false},
         "payload": {"channel": "ops-retry", "status": "ok"}}]}))
    .await;
    assert_eq!(a["result"]["execution"]["attempts"], 2);
    assert_eq!(a["result"]["execution"]["retries"], 1);
    assert_eq!(a["result"]["outcome"]["status"], "ok");
}

/// `execute_spec_programmatic_tool_call_applies_connector_rate_limits`: min_interval 15,
/// two calls; `connector_calls == 2`, the second's `rate_wait_ms_total >= 1`. On the paused
/// clock it is exactly 15.
#[tokio::test(start_paused = true)]
async fn applies_connector_rate_limits() {
    let k = TestKernel::new();
    let a = ok(&k, json!({"caller": "planner-rate", "max_calls": 2, "include_intermediate": true,
        "connector_rate_limits": {"webhook": {"min_interval_ms": 15}}, "return_step": "call-b", "steps": [
            {"kind": "connector_call", "step_id": "call-a", "connector_name": "webhook", "payload": {"channel": "ops-a"}},
            {"kind": "connector_call", "step_id": "call-b", "connector_name": "webhook", "payload": {"channel": "ops-b"}}]}))
    .await;
    assert_eq!(a["connector_calls"], 2);
    assert_eq!(a["result"]["execution"]["rate_wait_ms_total"], 15);
}

/// `…_rejects_invalid_rate_limit_policy` (min_interval_ms 0: "invalid_spec", mentions
/// "min_interval_ms"), `…_rejects_invalid_circuit_policy` ("failure_threshold"),
/// `…_rejects_invalid_concurrency_policy` (max_in_flight 0: "max_in_flight"),
/// `…_rejects_empty_adaptive_reduce_on_policy` ("adaptive_reduce_on"). Here the code is
/// `invalid_plan` and the field is named exactly.
#[tokio::test(start_paused = true)]
async fn rejects_invalid_policies() {
    let call =
        json!([{"kind": "connector_call", "step_id": "call-a", "connector_name": "webhook"}]);
    let cases = [
        (
            json!({"connector_rate_limits": {"webhook": {"min_interval_ms": 0}}}),
            "min_interval_ms",
        ),
        (
            json!({"connector_circuit_breakers": {"webhook": {"enabled": true, "failure_threshold": 0, "cooldown_ms": 1000,
            "half_open_max_calls": 1, "success_threshold": 1}}}),
            "failure_threshold",
        ),
        (
            json!({"concurrency": conc(0, 1, true, 1, 1, 1, default_reduce_on())}),
            "max_in_flight",
        ),
        (
            json!({"concurrency": conc(2, 1, true, 1, 1, 1, json!([]))}),
            "adaptive_reduce_on",
        ),
    ];
    for (extra, word) in cases {
        let mut plan = json!({"caller": "planner-invalid", "max_calls": 1, "steps": call});
        if let (Value::Object(p), Value::Object(e)) = (&mut plan, extra) {
            p.extend(e);
        }
        let k = TestKernel::new();
        let e = fails(&k, plan).await;
        assert_eq!(e.code(), "invalid_plan");
        assert!(e.to_string().contains(word), "{e}");
        assert!(k.calls().is_empty());
    }
}

/// `execute_spec_programmatic_tool_call_circuit_breaker_blocks_followup_batch_calls`:
/// failure_threshold 1, a serial batch that continues on error, the first call failing;
/// `failed_calls == 2`, `by_call.followup.error_code == "circuit_open"`, its error contains
/// "circuit_open" (here: "circuit is open").
#[tokio::test(start_paused = true)]
async fn circuit_breaker_blocks_followup_batch_calls() {
    let k = TestKernel::new().failing_first("webhook", 9, permanent("injected"));
    let a = ok(&k, json!({"caller": "planner-circuit-open", "max_calls": 2, "return_step": "batch",
        "connector_circuit_breakers": {"webhook": {"enabled": true, "failure_threshold": 1, "cooldown_ms": 60000,
            "half_open_max_calls": 1, "success_threshold": 1}},
        "steps": [{"kind": "connector_batch", "step_id": "batch", "parallel": false, "continue_on_error": true, "calls": [
            {"call_id": "trip", "connector_name": "webhook",
             "retry": {"max_attempts": 1, "initial_backoff_ms": 1, "max_backoff_ms": 1, "jitter_ratio": 0.0, "adaptive_jitter": false}},
            {"call_id": "followup", "connector_name": "webhook"}]}]}))
    .await;
    assert_eq!(a["result"]["failed_calls"], 2);
    assert_eq!(
        a["result"]["by_call"]["followup"]["error_code"],
        "circuit_open"
    );
    assert!(a["result"]["by_call"]["followup"]["error"]
        .as_str()
        .expect("error")
        .contains("circuit is open"));
    assert_eq!(k.calls().len(), 1);
}

/// `execute_spec_programmatic_tool_call_retry_jitter_tracks_backoff_budget`: two injected
/// failures, initial 5, max 80, jitter 0.5; `attempts == 3`, `retries == 2`,
/// `backoff_ms_total >= 15`, `circuit_phase_before == "disabled"`.
#[tokio::test(start_paused = true)]
async fn retry_jitter_tracks_backoff_budget() {
    let k = TestKernel::new().failing_first("webhook", 2, transient("injected"));
    let a = ok(&k, json!({"caller": "planner-retry-jitter", "max_calls": 1, "return_step": "call", "steps": [
        {"kind": "connector_call", "step_id": "call", "connector_name": "webhook",
         "retry": {"max_attempts": 3, "initial_backoff_ms": 5, "max_backoff_ms": 80, "jitter_ratio": 0.5, "adaptive_jitter": true}}]}))
    .await;
    let e = &a["result"]["execution"];
    assert_eq!(e["attempts"], 3);
    assert_eq!(e["retries"], 2);
    let backoff = e["backoff_ms_total"].as_u64().expect("backoff");
    assert!((15..=23).contains(&backoff), "5+≤3, then 10+≤5: {backoff}");
    assert_eq!(e["circuit_phase_before"], "disabled");
}

/// `execute_spec_programmatic_tool_call_parallel_batch_caps_peak_inflight_budget`: four
/// 25 ms calls, max_in_flight 2; `configured_max_in_flight == 2`, `peak_in_flight == 2`,
/// `mode == "parallel"`. Here the kernel also measures its own peak.
#[tokio::test(start_paused = true)]
async fn parallel_batch_caps_peak_inflight_budget() {
    let k = TestKernel::new();
    let calls: Vec<Value> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| json!({"call_id": id, "connector_name": "webhook", "payload": {"channel": format!("ops-{id}"), "delay_ms": 25}}))
        .collect();
    let a = ok(&k, json!({"caller": "planner-concurrency-cap", "max_calls": 6, "return_step": "batch",
        "concurrency": conc(2, 1, false, 2, 1, 1, default_reduce_on()),
        "steps": [{"kind": "connector_batch", "step_id": "batch", "parallel": true, "continue_on_error": false, "calls": calls}]}))
    .await;
    let s = &a["result"]["scheduler"];
    assert_eq!(s["configured_max_in_flight"], 2);
    assert_eq!(s["peak_in_flight"], 2);
    assert_eq!(s["mode"], "parallel");
    assert_eq!(k.peak.get(), 2);
}

/// `execute_spec_programmatic_tool_call_weighted_fairness_avoids_low_priority_starvation`:
/// weights 3/1/1, four high calls and one low, one in flight; the low call is dispatched
/// fourth.
#[tokio::test(start_paused = true)]
async fn weighted_fairness_avoids_low_priority_starvation() {
    let k = TestKernel::new();
    let mut c = conc(1, 1, false, 2, 1, 1, default_reduce_on());
    c["high_weight"] = json!(3);
    let mut calls: Vec<Value> = (1..=4)
        .map(|i| json!({"call_id": format!("high-{i}"), "connector_name": "webhook", "priority_class": "high"}))
        .collect();
    calls.push(json!({"call_id": "low-1", "connector_name": "webhook", "priority_class": "low"}));
    let a = ok(&k, json!({"caller": "planner-fairness", "max_calls": 8, "return_step": "batch", "concurrency": c,
        "steps": [{"kind": "connector_batch", "step_id": "batch", "parallel": true, "calls": calls}]}))
    .await;
    let order = a["result"]["scheduler"]["dispatch_order"]
        .as_array()
        .expect("order")
        .clone();
    assert_eq!(order.len(), 5);
    assert_eq!(order[3], "low-1");
    let seen: Vec<Value> = k
        .calls()
        .iter()
        .map(|s| s.input["_loong"]["call_id"].clone())
        .collect();
    assert_eq!(seen, order, "the kernel saw the calls in that order");
}

/// Strict round robin takes one of each class in turn (upstream has no test of it).
#[tokio::test(start_paused = true)]
async fn strict_round_robin_alternates_classes() {
    let k = TestKernel::new();
    let mut c = conc(1, 1, false, 2, 1, 1, default_reduce_on());
    c["fairness"] = json!("strict_round_robin");
    let calls: Vec<Value> = [
        ("h1", "high"),
        ("h2", "high"),
        ("n1", "normal"),
        ("l1", "low"),
        ("l2", "low"),
    ]
    .iter()
    .map(|(id, p)| json!({"call_id": id, "connector_name": "w", "priority_class": p}))
    .collect();
    let a = ok(
        &k,
        json!({"caller": "t", "concurrency": c,
        "steps": [{"kind": "connector_batch", "step_id": "b", "calls": calls}]}),
    )
    .await;
    assert_eq!(
        a["result"]["scheduler"]["dispatch_order"],
        json!(["h1", "n1", "l1", "h2", "l2"])
    );
}

/// `execute_spec_programmatic_tool_call_adaptive_budget_reduces_on_failures`: max 3, one
/// failing call and three 30 ms calls; `failed_calls == 1`, `peak_in_flight == 3`,
/// `budget_reductions >= 1`, `final_in_flight_budget == 2`.
#[tokio::test(start_paused = true)]
async fn adaptive_budget_reduces_on_failures() {
    let k = TestKernel::new().failing("tripper", permanent("injected"));
    let mut calls = vec![json!({"call_id": "trip", "connector_name": "tripper",
        "retry": {"max_attempts": 1, "initial_backoff_ms": 1, "max_backoff_ms": 1, "jitter_ratio": 0.0, "adaptive_jitter": false}})];
    calls.extend(["slow-a", "slow-b", "slow-c"].iter().map(
        |id| json!({"call_id": id, "connector_name": "webhook", "payload": {"delay_ms": 30}}),
    ));
    let a = ok(&k, json!({"caller": "planner-adaptive-budget", "max_calls": 8, "return_step": "batch",
        "concurrency": conc(3, 1, true, 10, 1, 1, default_reduce_on()),
        "steps": [{"kind": "connector_batch", "step_id": "batch", "parallel": true, "continue_on_error": true, "calls": calls}]}))
    .await;
    let s = &a["result"]["scheduler"];
    assert_eq!(a["result"]["failed_calls"], 1);
    assert_eq!(s["peak_in_flight"], 3);
    assert_eq!(s["budget_reductions"], 1);
    assert_eq!(s["final_in_flight_budget"], 2);
}

/// `execute_spec_programmatic_tool_call_default_adaptive_policy_skips_not_found_errors`:
/// `failed_calls == 1`, `error_code == "connector_not_found"`, `budget_reductions == 0`,
/// `final_in_flight_budget == 3`. Here the code is `not_found`.
#[tokio::test(start_paused = true)]
async fn default_adaptive_policy_skips_not_found_errors() {
    let k = TestKernel::new().failing("missing", CallError::NotFound);
    let a = ok(&k, json!({"caller": "planner-adaptive-skip-not-found", "max_calls": 6, "return_step": "batch",
        "allowed_connectors": ["webhook", "missing"],
        "concurrency": conc(3, 1, true, 99, 1, 1, default_reduce_on()),
        "steps": [{"kind": "connector_batch", "step_id": "batch", "parallel": true, "continue_on_error": true, "calls": [
            {"call_id": "ok-a", "connector_name": "webhook", "payload": {"delay_ms": 20}},
            {"call_id": "bad-missing", "connector_name": "missing"},
            {"call_id": "ok-b", "connector_name": "webhook", "payload": {"delay_ms": 20}}]}]}))
    .await;
    let r = &a["result"];
    assert_eq!(r["failed_calls"], 1);
    assert_eq!(r["by_call"]["bad-missing"]["error_code"], "not_found");
    assert_eq!(r["scheduler"]["budget_reductions"], 0);
    assert_eq!(r["scheduler"]["final_in_flight_budget"], 3);
}

/// `execute_spec_programmatic_tool_call_adaptive_policy_can_reduce_on_any_error`: max 4,
/// downshift 2, `any_error`; `failed_calls == 1`, `error_code == "connector_not_found"`,
/// `budget_reductions >= 1`, `final_in_flight_budget == 2`.
#[tokio::test(start_paused = true)]
async fn adaptive_policy_can_reduce_on_any_error() {
    let k = TestKernel::new().failing("missing", CallError::NotFound);
    let a = ok(&k, json!({"caller": "planner-adaptive-any-error", "max_calls": 6, "return_step": "batch",
        "concurrency": conc(4, 1, true, 99, 1, 2, json!(["any_error"])),
        "steps": [{"kind": "connector_batch", "step_id": "batch", "parallel": true, "continue_on_error": true, "calls": [
            {"call_id": "ok-a", "connector_name": "webhook", "payload": {"delay_ms": 20}},
            {"call_id": "bad-missing", "connector_name": "missing"},
            {"call_id": "ok-b", "connector_name": "webhook", "payload": {"delay_ms": 20}}]}]}))
    .await;
    let r = &a["result"];
    assert_eq!(r["failed_calls"], 1);
    assert_eq!(r["by_call"]["bad-missing"]["error_code"], "not_found");
    assert_eq!(r["scheduler"]["budget_reductions"], 1);
    assert_eq!(r["scheduler"]["final_in_flight_budget"], 2);
}

/// `execute_spec_programmatic_tool_call_adaptive_budget_respects_min_floor_and_recovers`:
/// max 5, min 2, recovery 1, up 2, down 3, `any_error`, two failing and four 20 ms calls;
/// `failed_calls == 2`, `configured_min_in_flight == 2`, `budget_reductions >= 1`,
/// `budget_increases >= 1`, `final_in_flight_budget == 5`. Here also: the budget never
/// went below the floor (the kernel's peak after the reduction is 3, the calls already in
/// flight).
#[tokio::test(start_paused = true)]
async fn adaptive_budget_respects_min_floor_and_recovers() {
    let k = TestKernel::new().failing("missing", CallError::NotFound);
    let mut calls = vec![
        json!({"call_id": "bad-a", "connector_name": "missing"}),
        json!({"call_id": "bad-b", "connector_name": "missing"}),
    ];
    calls.extend(["ok-a", "ok-b", "ok-c", "ok-d"].iter().map(
        |id| json!({"call_id": id, "connector_name": "webhook", "payload": {"delay_ms": 20}}),
    ));
    let a = ok(&k, json!({"caller": "planner-adaptive-floor-recover", "max_calls": 8, "return_step": "batch",
        "concurrency": conc(5, 2, true, 1, 2, 3, json!(["any_error"])),
        "steps": [{"kind": "connector_batch", "step_id": "batch", "parallel": true, "continue_on_error": true, "calls": calls}]}))
    .await;
    let s = &a["result"]["scheduler"];
    assert_eq!(a["result"]["failed_calls"], 2);
    assert_eq!(s["configured_min_in_flight"], 2);
    assert_eq!(
        s["budget_reductions"], 1,
        "the second failure finds the budget at its floor"
    );
    assert!(s["budget_increases"].as_u64().expect("increases") >= 1);
    assert_eq!(s["final_in_flight_budget"], 5);
}
