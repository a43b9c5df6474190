//! Retries, breakers, rate limits, batch concurrency and the run's budgets.

use super::*;

fn retry_plan(max_attempts: usize) -> Value {
    plan_of(json!([
        {"kind": "connector_call", "step_id": "call", "connector_name": "flaky",
         "retry": {"max_attempts": max_attempts, "initial_backoff_ms": 100, "max_backoff_ms": 1000,
                   "jitter_ratio": 0.0, "adaptive_jitter": false}}
    ]))
}

#[tokio::test(start_paused = true)]
async fn a_retry_succeeds_on_the_third_attempt_after_exponential_backoff() {
    let k = TestKernel::new().failing_first("flaky", 2, transient("busy"));
    let a = ok(&k, retry_plan(3)).await;
    let e = &a["result"]["execution"];
    assert_eq!(
        (e["attempts"].clone(), e["retries"].clone()),
        (json!(3), json!(2))
    );
    assert_eq!(e["backoff_ms_total"], 300, "100 ms, then 200 ms");
    let at: Vec<u64> = k
        .calls()
        .iter()
        .map(|s| ms(s.at - k.calls()[0].at))
        .collect();
    assert_eq!(at, vec![0, 100, 300], "each attempt waits its backoff");
    assert_eq!(a["telemetry"][0]["attempts"], 3);
    assert_eq!(a["telemetry"][0]["retries"], 2);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_max_attempts() {
    let k = TestKernel::new().failing_first("flaky", 5, transient("busy"));
    let e = fails(&k, retry_plan(3)).await;
    assert!(
        matches!(&e, PlanError::StepFailed { attempts: 3, cause, .. } if cause.retryable()),
        "{e:?}"
    );
    assert_eq!(k.calls().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_non_retryable_failure_is_not_retried() {
    for error in [
        permanent("bad input"),
        CallError::Denied {
            reason: "no grant".into(),
        },
        CallError::ApprovalRequired {
            reason: "risky".into(),
        },
        CallError::NotFound,
        CallError::DepthExceeded,
        CallError::BudgetExceeded {
            reason: "calls".into(),
        },
        CallError::Transport {
            message: "gone".into(),
        },
    ] {
        let k = TestKernel::new().failing("flaky", error.clone());
        let e = fails(&k, retry_plan(5)).await;
        assert_eq!(
            e,
            PlanError::StepFailed {
                step: "call".into(),
                call: None,
                connector: "flaky".into(),
                attempts: 1,
                cause: error.clone(),
            }
        );
        assert_eq!(k.calls().len(), 1, "{error:?} was retried");
    }
    // The positive control: the retryable classes are retried.
    for error in [transient("x"), CallError::Timeout, CallError::Overloaded] {
        let k = TestKernel::new().failing_first("flaky", 1, error.clone());
        ok(&k, retry_plan(2)).await;
        assert_eq!(k.calls().len(), 2, "{error:?} was not retried");
    }
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_within_its_ratio_and_the_cap() {
    let k = TestKernel::new().failing_first("flaky", 3, transient("busy"));
    let a = ok(&k, plan_of(json!([
        {"kind": "connector_call", "step_id": "call", "connector_name": "flaky",
         "retry": {"max_attempts": 4, "initial_backoff_ms": 100, "max_backoff_ms": 300, "jitter_ratio": 0.5}}
    ])))
    .await;
    let calls = k.calls();
    let gaps: Vec<u64> = calls.windows(2).map(|w| ms(w[1].at - w[0].at)).collect();
    // Base 100, 200, 300 (capped); jitter adds up to half, the cap holds the sum.
    assert!((100..=150).contains(&gaps[0]), "{gaps:?}");
    assert!((200..=300).contains(&gaps[1]), "{gaps:?}");
    assert_eq!(gaps[2], 300, "{gaps:?}");
    assert_eq!(
        a["result"]["execution"]["backoff_ms_total"],
        gaps.iter().sum::<u64>()
    );
}

fn breaker_plan(calls: usize, gap_ms: u64, cooldown_ms: u64) -> Value {
    let mut steps = Vec::new();
    for i in 0..calls {
        steps.push(
            json!({"kind": "connector_batch", "step_id": format!("b{i}"), "continue_on_error": true,
            "calls": [{"call_id": "c", "connector_name": "svc"}]}),
        );
        steps.push(json!({"kind": "connector_call", "step_id": format!("wait{i}"), "connector_name": "clock",
            "payload": {"delay_ms": gap_ms}}));
    }
    json!({"caller": "t", "max_calls": 64, "include_intermediate": true,
        "connector_circuit_breakers": {"svc": {"failure_threshold": 2, "cooldown_ms": cooldown_ms,
            "half_open_max_calls": 1, "success_threshold": 1}},
        "steps": steps})
}

#[tokio::test(start_paused = true)]
async fn a_breaker_opens_refuses_half_opens_after_the_cooldown_and_closes() {
    // svc fails twice (opens), is refused while open, then answers again.
    let k = TestKernel::new().failing_first("svc", 2, permanent("down"));
    let a = ok(&k, breaker_plan(6, 40, 70)).await;
    let out = &a["step_outputs"];
    let call = |i: usize| out[format!("b{i}")]["by_call"]["c"].clone();
    let phases: Vec<(Value, Value, Value)> = (0..6)
        .map(|i| {
            let c = call(i);
            (
                c["status"].clone(),
                c["execution"]["circuit_phase_before"].clone(),
                c["execution"]["circuit_phase_after"].clone(),
            )
        })
        .collect();
    assert_eq!(
        phases,
        vec![
            (json!("error"), json!("closed"), json!("closed")), // t=0: 1st failure
            (json!("error"), json!("closed"), json!("open")),   // t=40: 2nd failure opens it
            (json!("error"), json!("open"), json!("open")),     // t=80: refused, 30 ms left
            (json!("ok"), json!("half_open"), json!("closed")), // t=120: the probe closes it
            (json!("ok"), json!("closed"), json!("closed")),
            (json!("ok"), json!("closed"), json!("closed")),
        ]
    );
    assert_eq!(call(2)["error_code"], "circuit_open");
    assert_eq!(
        k.calls_of("svc").len(),
        5,
        "the refused call never reached the kernel"
    );
    assert_eq!(a["telemetry"][4]["breakers"], json!({"svc": "open"}));
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_the_breaker_for_another_cooldown() {
    let k = TestKernel::new().failing_first("svc", 3, permanent("down"));
    let a = ok(&k, breaker_plan(6, 40, 100)).await;
    let status =
        |i: usize| a["step_outputs"][format!("b{i}")]["by_call"]["c"]["error_code"].clone();
    // 0, 40 fail (open until 140); 80 refused; 120 refused (20 ms left);
    // 160 probe fails (open until 260); 200 refused.
    let codes: Vec<Value> = (0..6).map(status).collect();
    assert_eq!(
        codes,
        vec![
            json!("tool_failed"),
            json!("tool_failed"),
            json!("circuit_open"),
            json!("circuit_open"),
            json!("tool_failed"),
            json!("circuit_open")
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_connector_call_refused_by_its_breaker_fails_with_circuit_open() {
    let k = TestKernel::new().failing("svc", permanent("down"));
    let e = fails(&k, json!({"caller": "t",
        "connector_circuit_breakers": {"svc": {"failure_threshold": 1, "cooldown_ms": 60000}},
        "steps": [
            {"kind": "connector_batch", "step_id": "trip", "continue_on_error": true, "calls": [{"call_id": "c", "connector_name": "svc"}]},
            {"kind": "connector_call", "step_id": "next", "connector_name": "svc"}
        ]}))
    .await;
    assert_eq!(
        e,
        PlanError::CircuitOpen {
            step: "next".into(),
            call: None,
            connector: "svc".into(),
            remaining_cooldown_ms: 60000
        }
    );
    assert_eq!(k.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn denials_do_not_trip_a_breaker() {
    let k = TestKernel::new().failing(
        "svc",
        CallError::Denied {
            reason: "no".into(),
        },
    );
    let a = ok(&k, json!({"caller": "t",
        "connector_circuit_breakers": {"svc": {"failure_threshold": 1}},
        "steps": [{"kind": "connector_batch", "step_id": "b", "parallel": false, "continue_on_error": true, "calls": [
            {"call_id": "a", "connector_name": "svc"}, {"call_id": "b", "connector_name": "svc"}]}]}))
    .await;
    assert_eq!(
        a["result"]["by_call"]["b"]["error_code"], "denied",
        "the second call reached the kernel"
    );
    assert_eq!(k.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn min_interval_ms_spaces_every_attempt_of_a_connector() {
    let k = TestKernel::new().failing_first("api", 1, transient("blip"));
    let a = ok(&k, json!({"caller": "t", "max_calls": 12,
        "connector_rate_limits": {"api": {"min_interval_ms": 12}},
        "concurrency": {"max_in_flight": 5},
        "steps": [
            {"kind": "connector_call", "step_id": "first", "connector_name": "api",
             "retry": {"max_attempts": 2, "initial_backoff_ms": 1, "jitter_ratio": 0.0}},
            {"kind": "connector_batch", "step_id": "many", "calls": [
                {"call_id": "a", "connector_name": "api"}, {"call_id": "b", "connector_name": "api"},
                {"call_id": "c", "connector_name": "api"}, {"call_id": "d", "connector_name": "api"},
                {"call_id": "e", "connector_name": "other"}
            ]}
        ]}))
    .await;
    let api: Vec<u64> = k
        .calls_of("api")
        .iter()
        .map(|s| ms(s.at - k.calls()[0].at))
        .collect();
    // The retry of `first` waits for its slot too (12 ms, more than its 1 ms backoff).
    assert_eq!(api, vec![0, 12, 24, 36, 48, 60]);
    let other = &k.calls_of("other")[0];
    assert_eq!(
        ms(other.at - k.calls()[0].at),
        12,
        "another connector is not held back"
    );
    assert_eq!(
        a["result"]["by_call"]["d"]["execution"]["rate_wait_ms_total"],
        48
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_never_has_more_than_max_in_flight_calls() {
    for max in [1usize, 2, 3, 5] {
        let k = TestKernel::new().script(
            "slow",
            Script {
                delay: Duration::from_millis(25),
                ..Script::default()
            },
        );
        let calls: Vec<Value> = (0..12)
            .map(|i| json!({"call_id": format!("c{i}"), "connector_name": "slow"}))
            .collect();
        let a = ok(
            &k,
            json!({"caller": "t", "concurrency": {"max_in_flight": max},
            "steps": [{"kind": "connector_batch", "step_id": "b", "calls": calls}]}),
        )
        .await;
        assert_eq!(k.peak.get(), max, "measured by the kernel");
        assert_eq!(a["result"]["scheduler"]["peak_in_flight"], max);
        let rounds = 12u64.div_ceil(max as u64);
        assert_eq!(
            a["telemetry"][0]["wall_ms"],
            rounds * 25,
            "max {max}: the batch ran in {rounds} rounds"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn max_calls_exceeded_is_refused_before_any_call() {
    let k = TestKernel::new();
    let e = fails(&k, json!({"caller": "t", "max_calls": 3, "steps": [
        {"kind": "connector_call", "step_id": "one", "connector_name": "echo"},
        {"kind": "connector_batch", "step_id": "two", "calls": [
            {"call_id": "a", "connector_name": "echo"}, {"call_id": "b", "connector_name": "echo"},
            {"call_id": "c", "connector_name": "echo"}]},
        {"kind": "connector_call", "step_id": "three", "connector_name": "echo"}
    ]}))
    .await;
    assert_eq!(
        e,
        PlanError::BudgetExceeded {
            step: Some("two".into()),
            call: None,
            budget: crate::error::Budget::Calls { max: 3, needed: 5 }
        }
    );
    assert!(k.calls().is_empty());
    assert_eq!(
        e.to_json()["budget"],
        json!({"kind": "calls", "max": 3, "needed": 5})
    );
    // The positive control: exactly max_calls is fine, and retries count once.
    let k = TestKernel::new().failing_first("echo", 1, CallError::Timeout);
    let a = ok(&k, json!({"caller": "t", "max_calls": 1, "steps": [
        {"kind": "connector_call", "step_id": "one", "connector_name": "echo", "retry": {"max_attempts": 2}}
    ]}))
    .await;
    assert_eq!(
        (a["connector_calls"].clone(), k.calls().len()),
        (json!(1), 2)
    );
}

#[tokio::test(start_paused = true)]
async fn the_wall_time_bounds_calls_waits_and_backoffs() {
    let slow = || {
        TestKernel::new().script(
            "slow",
            Script {
                delay: Duration::from_secs(10),
                ..Script::default()
            },
        )
    };
    let options = Options {
        wall_time: Duration::from_millis(500),
        jitter_seed: 0,
    };
    let plan = plan_of(json!([
        {"kind": "set_literal", "step_id": "s", "value": 1},
        {"kind": "connector_call", "step_id": "c", "connector_name": "slow"}
    ]));
    let k = slow();
    let started = Instant::now();
    let f = crate::run(&k, plan.to_string().as_bytes(), options)
        .await
        .expect_err("over time");
    assert_eq!(
        ms(Instant::now() - started),
        500,
        "the call was abandoned at the deadline"
    );
    assert_eq!(
        f.error,
        PlanError::BudgetExceeded {
            step: Some("c".into()),
            call: None,
            budget: crate::error::Budget::WallTime { max_ms: 500 }
        }
    );
    assert_eq!(f.telemetry.len(), 2);
    assert_eq!(f.telemetry[1].status, crate::answer::StepStatus::Failed);

    // A backoff that would end past the deadline is not slept.
    let k = TestKernel::new().failing("flaky", transient("busy"));
    let started = Instant::now();
    let f = crate::run(
        &k,
        retry_plan_backoff(10_000).to_string().as_bytes(),
        options,
    )
    .await
    .expect_err("over time");
    assert_eq!(ms(Instant::now() - started), 0);
    assert_eq!(f.error.code(), "budget_exceeded");
    assert_eq!(k.calls().len(), 1);

    // The positive control: the same call inside the wall time succeeds.
    let k = TestKernel::new().script(
        "slow",
        Script {
            delay: Duration::from_millis(499),
            ..Script::default()
        },
    );
    crate::run(&k, plan.to_string().as_bytes(), options)
        .await
        .expect("in time");
}

fn retry_plan_backoff(backoff_ms: u64) -> Value {
    plan_of(json!([
        {"kind": "connector_call", "step_id": "call", "connector_name": "flaky",
         "retry": {"max_attempts": 3, "initial_backoff_ms": backoff_ms, "max_backoff_ms": backoff_ms, "adaptive_jitter": false}}
    ]))
}

#[tokio::test(start_paused = true)]
async fn a_runner_cannot_give_more_than_the_longest_wall_time() {
    let k = TestKernel::new().script(
        "slow",
        Script {
            delay: Duration::from_secs(24 * 3600),
            ..Script::default()
        },
    );
    let options = Options {
        wall_time: Duration::from_secs(365 * 24 * 3600),
        jitter_seed: 0,
    };
    let started = Instant::now();
    let plan =
        plan_of(json!([{"kind": "connector_call", "step_id": "c", "connector_name": "slow"}]));
    crate::run(&k, plan.to_string().as_bytes(), options)
        .await
        .expect_err("over time");
    assert_eq!(
        ms(Instant::now() - started),
        crate::limits::MAX_WALL_TIME_MS
    );
}
