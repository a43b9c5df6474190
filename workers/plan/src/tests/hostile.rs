//! Plans refused before any call: references, templates, allowed connectors, bounds and
//! malformed input, each with a clear error and never a panic.

use super::*;
use crate::{
    error::{TemplateProblem, ValueKind},
    limits::*,
};

/// A plan whose first step is a call, so that "before any call" is observable.
fn after_a_call(step: Value) -> Value {
    plan_of(json!([
        {"kind": "set_literal", "step_id": "seed", "value": {"a": 1}},
        {"kind": "connector_call", "step_id": "first", "connector_name": "echo"},
        step
    ]))
}

async fn refused(plan: Value) -> PlanError {
    let k = TestKernel::new();
    let e = fails(&k, plan).await;
    assert!(
        k.calls().is_empty(),
        "{e}: a call was made before the refusal"
    );
    e
}

#[tokio::test(start_paused = true)]
async fn a_connector_outside_allowed_connectors_is_refused_before_any_call() {
    let step = json!({"kind": "connector_batch", "step_id": "b", "calls": [
        {"call_id": "ok", "connector_name": "echo"}, {"call_id": "bad", "connector_name": "shell.exec"}]});
    let mut plan = after_a_call(step);
    plan["allowed_connectors"] = json!(["echo"]);
    let e = refused(plan.clone()).await;
    assert_eq!(
        e,
        PlanError::ConnectorNotAllowed {
            step: "b".into(),
            call: Some("bad".into()),
            connector: "shell.exec".into()
        }
    );
    assert_eq!(e.to_json()["code"], "connector_not_allowed");
    // The positive controls: listed, the same plan runs; an empty list leaves it to the kernel.
    plan["allowed_connectors"] = json!(["echo", "shell.exec"]);
    ok(&TestKernel::new(), plan.clone()).await;
    plan["allowed_connectors"] = json!([]);
    ok(&TestKernel::new(), plan).await;
}

#[tokio::test(start_paused = true)]
async fn a_template_that_points_nowhere_is_refused_before_any_call() {
    let call = |payload: Value| json!({"kind": "connector_call", "step_id": "c", "connector_name": "echo", "payload": payload});
    let cases = [
        (
            json!({"x": "{{ghost}}"}),
            TemplateProblem::UnknownStep {
                reference: "ghost".into(),
            },
        ),
        (
            json!({"x": ["a {{c#/x}}"]}),
            TemplateProblem::LaterStep {
                reference: "c".into(),
            },
        ),
        (
            json!({"x": "{{seed#/b}}"}),
            TemplateProblem::PointerNotFound {
                reference: "seed".into(),
                pointer: "/b".into(),
            },
        ),
        (json!({"x": "{{seed"}), TemplateProblem::Unclosed),
        (json!({"x": "{{ }}"}), TemplateProblem::EmptyExpression),
        (json!({"x": "{{#/a}}"}), TemplateProblem::EmptyExpression),
        (json!({"x": "{{seed#}}"}), TemplateProblem::EmptyPointer),
    ];
    for (payload, problem) in cases {
        let e = refused(after_a_call(call(payload.clone()))).await;
        match &e {
            PlanError::TemplateError {
                step, problem: p, ..
            } => {
                assert_eq!((step.as_str(), p), ("c", &problem), "{payload}");
            }
            other => panic!("{payload}: {other:?}"),
        }
        assert_eq!(e.to_json()["code"], "template_error");
    }
    // A placeholder into a later step of a conditional's branch, and in a batch call.
    let e = refused(plan_of(json!([
        {"kind": "set_literal", "step_id": "s", "value": 1},
        {"kind": "conditional", "step_id": "g", "from_step": "s", "exists": true, "when_true": "{{z}}"},
        {"kind": "set_literal", "step_id": "z", "value": 2}
    ])))
    .await;
    assert!(
        matches!(
            e,
            PlanError::TemplateError {
                problem: TemplateProblem::LaterStep { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let e = refused(plan_of(
        json!([{"kind": "connector_batch", "step_id": "b", "calls": [
        {"call_id": "x", "connector_name": "echo", "payload": "{{b#/total_calls}}"}]}]),
    ))
    .await;
    assert!(
        matches!(&e, PlanError::TemplateError { call: Some(c), problem: TemplateProblem::LaterStep { .. }, .. } if c == "x"),
        "{e:?}"
    );
    // A pointer into a json_pointer of a literal is known too.
    let e = refused(plan_of(json!([
        {"kind": "set_literal", "step_id": "s", "value": {"a": {"b": 1}}},
        {"kind": "json_pointer", "step_id": "p", "from_step": "s", "pointer": "/a"},
        {"kind": "connector_call", "step_id": "c", "connector_name": "echo", "payload": "{{p#/nope}}"}
    ])))
    .await;
    assert!(
        matches!(
            e,
            PlanError::TemplateError {
                problem: TemplateProblem::PointerNotFound { .. },
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pointer_into_a_tool_answer_is_checked_when_the_answer_is_there() {
    // Not knowable before the run: the first call is made, the second step fails.
    let k = TestKernel::new();
    let e = fails(&k, plan_of(json!([
        {"kind": "connector_call", "step_id": "a", "connector_name": "echo"},
        {"kind": "connector_call", "step_id": "b", "connector_name": "echo", "payload": {"x": "{{a#/outcome/nope}}"}}
    ])))
    .await;
    assert_eq!(
        e,
        PlanError::TemplateError {
            step: "b".into(),
            call: None,
            template: "{{a#/outcome/nope}}".into(),
            problem: TemplateProblem::PointerNotFound {
                reference: "a".into(),
                pointer: "/outcome/nope".into()
            }
        }
    );
    assert_eq!(k.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn references_must_name_an_earlier_step() {
    let e = refused(after_a_call(
        json!({"kind": "json_pointer", "step_id": "p", "from_step": "nowhere", "pointer": "/a"}),
    ))
    .await;
    assert_eq!(
        e,
        PlanError::UnknownStep {
            step: Some("p".into()),
            field: "from_step".into(),
            reference: "nowhere".into(),
            later: false
        }
    );
    // A step reading itself, or a later step: no cycle can be written.
    let e = refused(after_a_call(
        json!({"kind": "json_pointer", "step_id": "p", "from_step": "p", "pointer": "/a"}),
    ))
    .await;
    assert!(
        matches!(e, PlanError::UnknownStep { later: true, .. }),
        "{e:?}"
    );
    let e = refused(plan_of(json!([
        {"kind": "connector_call", "step_id": "c", "connector_name": "echo"},
        {"kind": "conditional", "step_id": "g", "from_step": "h", "exists": true, "when_true": 1},
        {"kind": "conditional", "step_id": "h", "from_step": "g", "exists": true, "when_true": 1}
    ])))
    .await;
    assert!(
        matches!(&e, PlanError::UnknownStep { step: Some(s), later: true, .. } if s == "g"),
        "{e:?}"
    );
    let mut plan = after_a_call(json!({"kind": "set_literal", "step_id": "z", "value": 1}));
    plan["return_step"] = json!("ghost");
    assert_eq!(refused(plan).await.code(), "unknown_step");
    // A json_pointer into a literal that finds nothing.
    let e = refused(after_a_call(
        json!({"kind": "json_pointer", "step_id": "p", "from_step": "seed", "pointer": "/zz"}),
    ))
    .await;
    assert_eq!(
        e,
        PlanError::PointerNotFound {
            step: "p".into(),
            from_step: "seed".into(),
            pointer: "/zz".into()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn ids_and_shapes_that_break_the_rules_are_refused() {
    let lit = |id: &str| json!({"kind": "set_literal", "step_id": id, "value": 1});
    let cases: Vec<(Value, &str)> = vec![
        (plan_of(json!([lit("a"), lit("a")])), "steps[1].step_id"),
        (plan_of(json!([lit("")])), "steps[0].step_id"),
        (plan_of(json!([lit("has space")])), "steps[0].step_id"),
        (plan_of(json!([lit("a#b")])), "steps[0].step_id"),
        (
            plan_of(json!([lit(&"x".repeat(MAX_ID_BYTES + 1))])),
            "steps[0].step_id",
        ),
        (plan_of(json!([])), "steps"),
        (
            plan_of(json!([{"kind": "connector_batch", "step_id": "b", "calls": []}])),
            "steps[0].calls",
        ),
        (
            plan_of(
                json!([{"kind": "connector_batch", "step_id": "b", "calls": [
            {"call_id": "x", "connector_name": "e"}, {"call_id": "x", "connector_name": "e"}]}]),
            ),
            "steps[0].calls[1].call_id",
        ),
        (
            plan_of(
                json!([{"kind": "connector_call", "step_id": "c", "connector_name": "has space"}]),
            ),
            "steps[0].connector_name",
        ),
        (
            plan_of(json!([{"kind": "connector_call", "step_id": "c", "connector_name": ""}])),
            "steps[0].connector_name",
        ),
        (
            plan_of(
                json!([lit("s"), {"kind": "conditional", "step_id": "g", "from_step": "s", "when_true": 1}]),
            ),
            "steps[1].equals",
        ),
        (
            plan_of(
                json!([lit("s"), {"kind": "conditional", "step_id": "g", "from_step": "s", "pointer": "", "exists": true, "when_true": 1}]),
            ),
            "steps[1].pointer",
        ),
        (json!({"caller": "", "steps": [lit("a")]}), "caller"),
        (json!({"caller": "a\nb", "steps": [lit("a")]}), "caller"),
    ];
    for (plan, field) in cases {
        match refused(plan.clone()).await {
            PlanError::InvalidPlan { field: f, .. } => assert_eq!(f, field, "{plan}"),
            other => panic!("{plan}: {other:?}"),
        }
    }
    let batch: Vec<Value> = (0..=MAX_BATCH_CALLS)
        .map(|i| json!({"call_id": format!("c{i}"), "connector_name": "e"}))
        .collect();
    let e = refused(plan_of(
        json!([{"kind": "connector_batch", "step_id": "b", "calls": batch}]),
    ))
    .await;
    assert_eq!(e.code(), "invalid_plan");
    let steps: Vec<Value> = (0..=MAX_STEPS).map(|i| lit(&format!("s{i}"))).collect();
    let e = refused(plan_of(Value::Array(steps))).await;
    assert!(
        matches!(e, PlanError::InvalidPlan { ref field, .. } if field == "steps"),
        "{e:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn policy_values_out_of_bounds_are_refused_naming_the_field() {
    let call = json!([{"kind": "connector_call", "step_id": "c", "connector_name": "echo"}]);
    let with = |key: &str, v: Value| {
        let mut p = plan_of(call.clone());
        p[key] = v;
        p
    };
    let retry = |r: Value| {
        plan_of(
            json!([{"kind": "connector_call", "step_id": "c", "connector_name": "echo", "retry": r}]),
        )
    };
    let cases: Vec<(Value, &str)> = vec![
        (with("max_calls", json!(0)), "max_calls"),
        (with("max_calls", json!(MAX_PLAN_CALLS + 1)), "max_calls"),
        (
            with(
                "connector_rate_limits",
                json!({"echo": {"min_interval_ms": 0}}),
            ),
            "connector_rate_limits[echo].min_interval_ms",
        ),
        (
            with(
                "connector_rate_limits",
                json!({"echo": {"min_interval_ms": MAX_MIN_INTERVAL_MS + 1}}),
            ),
            "connector_rate_limits[echo].min_interval_ms",
        ),
        (
            with(
                "connector_circuit_breakers",
                json!({"echo": {"failure_threshold": 0}}),
            ),
            "connector_circuit_breakers[echo].failure_threshold",
        ),
        (
            with(
                "connector_circuit_breakers",
                json!({"echo": {"cooldown_ms": 0}}),
            ),
            "connector_circuit_breakers[echo].cooldown_ms",
        ),
        (
            with(
                "connector_circuit_breakers",
                json!({"echo": {"half_open_max_calls": 2, "success_threshold": 3}}),
            ),
            "connector_circuit_breakers[echo].success_threshold",
        ),
        (
            with("concurrency", json!({"max_in_flight": 0})),
            "concurrency.max_in_flight",
        ),
        (
            with("concurrency", json!({"max_in_flight": MAX_IN_FLIGHT + 1})),
            "concurrency.max_in_flight",
        ),
        (
            with(
                "concurrency",
                json!({"max_in_flight": 2, "min_in_flight": 3}),
            ),
            "concurrency.min_in_flight",
        ),
        (
            with("concurrency", json!({"low_weight": 0})),
            "concurrency.low_weight",
        ),
        (
            with("concurrency", json!({"high_weight": MAX_WEIGHT + 1})),
            "concurrency.high_weight",
        ),
        (
            with("concurrency", json!({"adaptive_reduce_on": []})),
            "concurrency.adaptive_reduce_on",
        ),
        (
            retry(json!({"max_attempts": 0})),
            "steps[0].retry.max_attempts",
        ),
        (
            retry(json!({"max_attempts": MAX_ATTEMPTS + 1})),
            "steps[0].retry.max_attempts",
        ),
        (
            retry(json!({"initial_backoff_ms": 500, "max_backoff_ms": 100})),
            "steps[0].retry.initial_backoff_ms",
        ),
        (
            retry(json!({"max_backoff_ms": MAX_BACKOFF_MS + 1})),
            "steps[0].retry.max_backoff_ms",
        ),
        (
            retry(json!({"jitter_ratio": 1.5})),
            "steps[0].retry.jitter_ratio",
        ),
        (
            retry(json!({"jitter_ratio": -0.1})),
            "steps[0].retry.jitter_ratio",
        ),
    ];
    for (plan, field) in cases {
        let e = refused(plan.clone()).await;
        match &e {
            PlanError::InvalidPlan {
                field: f, message, ..
            } => {
                assert_eq!(f, field, "{plan}");
                assert!(
                    message.contains("give") || message.contains("name"),
                    "{message}: says what to do"
                );
            }
            other => panic!("{plan}: {other:?}"),
        }
    }
    // Upstream skips the checks of a disabled breaker; so does this.
    ok(
        &TestKernel::new(),
        with(
            "connector_circuit_breakers",
            json!({"echo": {"enabled": false, "failure_threshold": 0}}),
        ),
    )
    .await;
    // The adaptive trigger list may be empty when the budget is not adaptive.
    ok(
        &TestKernel::new(),
        with(
            "concurrency",
            json!({"adaptive_budget": false, "adaptive_reduce_on": []}),
        ),
    )
    .await;
}

#[test]
fn unknown_fields_anywhere_are_refused_by_name() {
    let lit = json!({"kind": "set_literal", "step_id": "s", "value": 1});
    let call = |extra: (&str, Value)| {
        let mut c = json!({"kind": "connector_call", "step_id": "c", "connector_name": "echo"});
        c[extra.0] = extra.1;
        plan_of(json!([c]))
    };
    let batch_call = json!([{"kind": "connector_batch", "step_id": "b", "calls": [
        {"call_id": "x", "connector_name": "e", "paylod": {}}]}]);
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"caller": "t", "max_call": 3, "steps": [lit]}),
            "max_call",
        ),
        (
            plan_of(json!([{"kind": "set_literal", "step_id": "s", "value": 1, "extra": true}])),
            "extra",
        ),
        (call(("retry", json!({"max_attempt": 3}))), "max_attempt"),
        (call(("sandbox", json!("off"))), "sandbox"),
        (plan_of(batch_call), "paylod"),
        (
            json!({"caller": "t", "concurrency": {"max_inflight": 2}, "steps": [lit]}),
            "max_inflight",
        ),
        (
            json!({"caller": "t", "connector_rate_limits": {"e": {"min_interval": 2}}, "steps": [lit]}),
            "min_interval",
        ),
        (
            json!({"caller": "t", "connector_circuit_breakers": {"e": {"threshold": 2}}, "steps": [lit]}),
            "threshold",
        ),
        (plan_of(json!([{"kind": "shell", "step_id": "s"}])), "shell"),
        (
            json!({"kind": "sandbox_run", "caller": "t", "steps": [lit]}),
            "sandbox_run",
        ),
        (call(("priority_class", json!("urgent"))), "urgent"),
        (
            json!({"caller": "t", "concurrency": {"fairness": "random"}, "steps": [lit]}),
            "random",
        ),
        (
            json!({"caller": "t", "max_calls": -1, "steps": [lit]}),
            "-1",
        ),
        (
            json!({"caller": "t", "max_calls": 1e3, "steps": [lit]}),
            "1000",
        ),
        (json!({"steps": [lit]}), "caller"),
    ];
    for (plan, word) in cases {
        match crate::parse(plan.to_string().as_bytes()) {
            Err(PlanError::Malformed {
                message,
                line,
                column,
            }) => {
                assert!(message.contains(word), "{plan}: {message}");
                assert!(line >= 1 && column >= 1);
            }
            other => panic!("{plan}: {other:?}"),
        }
    }
}

#[test]
fn a_huge_plan_is_refused_by_size_before_parsing() {
    let big = format!(
        r#"{{"caller":"t","steps":[{{"kind":"set_literal","step_id":"s","value":"{}"}}]}}"#,
        "x".repeat(MAX_PLAN_BYTES)
    );
    assert_eq!(
        crate::parse(big.as_bytes()).map(|_| ()),
        Err(PlanError::PlanTooLarge {
            bytes: big.len(),
            max: MAX_PLAN_BYTES
        })
    );
    // The positive control: at the bound it parses.
    let fits = format!(
        r#"{{"caller":"t","steps":[{{"kind":"set_literal","step_id":"s","value":"{}"}}]}}"#,
        "x".repeat(MAX_PLAN_BYTES - 200)
    );
    assert!(fits.len() <= MAX_PLAN_BYTES);
    assert!(crate::parse(fits.as_bytes()).is_ok());
}

#[test]
fn a_deeply_nested_plan_is_refused_by_depth_before_parsing() {
    for open in ["[", "{\"a\":"] {
        let deep = format!(
            r#"{{"caller":"t","steps":[{{"kind":"set_literal","step_id":"s","value":{}}}]}}"#,
            open.repeat(200_000)
        );
        match crate::parse(deep.as_bytes()) {
            Err(PlanError::PlanTooDeep { max, .. }) => assert_eq!(max, MAX_PLAN_DEPTH),
            other => panic!("{open}: {other:?}"),
        }
    }
    // Brackets inside a string do not count, escaped quotes included; depth 32 is accepted.
    let nested = format!(
        "{}1{}",
        "[".repeat(MAX_PLAN_DEPTH - 4),
        "]".repeat(MAX_PLAN_DEPTH - 4)
    );
    let text = format!(
        r#"{{"caller":"t","steps":[{{"kind":"set_literal","step_id":"s","value":[{nested},"\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]}}]}}"#
    );
    assert!(crate::parse(text.as_bytes()).is_ok(), "{text}");
}

#[tokio::test(start_paused = true)]
async fn templates_cannot_blow_a_payload_up() {
    // 100 KiB, referenced 20 times: 2 MiB, over the payload bound; refused before that call.
    let big = "x".repeat(100 * 1024);
    let refs: Vec<Value> = (0..20).map(|_| json!("{{big}}")).collect();
    let k = TestKernel::new();
    let e = fails(&k, plan_of(json!([
        {"kind": "set_literal", "step_id": "big", "value": big},
        {"kind": "connector_call", "step_id": "c", "connector_name": "echo", "payload": {"all": refs}}
    ])))
    .await;
    assert_eq!(
        e,
        PlanError::ValueTooLarge {
            step: Some("c".into()),
            call: None,
            what: ValueKind::Payload,
            max: MAX_VALUE_BYTES
        }
    );
    assert!(k.calls().is_empty());
    // The same through text placeholders, and through a conditional's branch.
    let text = "{{big}}".repeat(20);
    let e = fails(&k, plan_of(json!([
        {"kind": "set_literal", "step_id": "big", "value": big},
        {"kind": "conditional", "step_id": "g", "from_step": "big", "exists": true, "when_true": text}
    ])))
    .await;
    assert_eq!(
        e,
        PlanError::ValueTooLarge {
            step: Some("g".into()),
            call: None,
            what: ValueKind::Output,
            max: MAX_VALUE_BYTES
        }
    );
    // The positive control: 5 references fit.
    let refs: Vec<Value> = (0..5).map(|_| json!("{{big}}")).collect();
    ok(&k, plan_of(json!([
        {"kind": "set_literal", "step_id": "big", "value": big},
        {"kind": "connector_call", "step_id": "c", "connector_name": "echo", "payload": {"all": refs}}
    ])))
    .await;
}

#[tokio::test(start_paused = true)]
async fn too_many_placeholders_are_refused() {
    let refs: Vec<Value> = (0..=MAX_TEMPLATES).map(|_| json!("{{s}}")).collect();
    let e = refused(plan_of(json!([
        {"kind": "set_literal", "step_id": "s", "value": 1},
        {"kind": "connector_call", "step_id": "c", "connector_name": "echo", "payload": refs}
    ])))
    .await;
    assert!(
        matches!(
            e,
            PlanError::TemplateError {
                problem: TemplateProblem::TooMany { .. },
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_answer_over_its_bound_is_an_error_not_a_truncation() {
    let k = TestKernel::new();
    let big = "x".repeat(MAX_ANSWER_BYTES / 2 + 1024);
    let e = fails(
        &k,
        json!({"caller": "t", "include_intermediate": true, "steps": [
            {"kind": "set_literal", "step_id": "big", "value": big}
        ]}),
    )
    .await;
    assert_eq!(
        e,
        PlanError::ValueTooLarge {
            step: None,
            call: None,
            what: ValueKind::Answer,
            max: MAX_ANSWER_BYTES
        }
    );
    // Without the intermediate copies the same output fits.
    ok(
        &k,
        json!({"caller": "t", "steps": [{"kind": "set_literal", "step_id": "big", "value": big}]}),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_tool_answer_over_the_bound_fails_its_step() {
    let huge = json!("y".repeat(MAX_VALUE_BYTES));
    let k = TestKernel::new().script(
        "big",
        Script {
            always: Some(Ok(huge)),
            ..Script::default()
        },
    );
    let e = fails(
        &k,
        plan_of(json!([{"kind": "connector_call", "step_id": "c", "connector_name": "big"}])),
    )
    .await;
    assert_eq!(
        e,
        PlanError::ValueTooLarge {
            step: Some("c".into()),
            call: None,
            what: ValueKind::Output,
            max: MAX_VALUE_BYTES
        }
    );
}

#[tokio::test(start_paused = true)]
async fn no_prefix_or_byte_flip_of_a_plan_panics() {
    let text = super::steps::UPSTREAM_EXAMPLE.as_bytes();
    let mut outcomes = BTreeMap::<&'static str, usize>::new();
    let mut variants: Vec<Vec<u8>> = (0..text.len()).map(|n| text[..n].to_vec()).collect();
    for (i, b) in [
        (b'"', b'x'),
        (b':', b','),
        (b'{', b'['),
        (b'1', b'-'),
        (b'e', b'E'),
    ] {
        for pos in text
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == i)
            .map(|(p, _)| p)
        {
            let mut v = text.to_vec();
            v[pos] = b;
            variants.push(v);
        }
    }
    for bytes in variants {
        let k = TestKernel::new();
        let code = match crate::run(&k, &bytes, Options::default()).await {
            Ok(_) => "ok",
            Err(f) => f.error.code(),
        };
        *outcomes.entry(code).or_default() += 1;
    }
    assert!(
        outcomes.get("malformed").copied().unwrap_or(0) > 100,
        "{outcomes:?}"
    );
    assert!(outcomes.contains_key("ok"), "{outcomes:?}");
}

#[test]
fn every_error_serialises_with_its_code_and_step() {
    let e = PlanError::StepFailed {
        step: "s".into(),
        call: Some("c".into()),
        connector: "t".into(),
        attempts: 2,
        cause: CallError::Timeout,
    };
    assert_eq!(
        e.to_json(),
        json!({"code": "step_failed", "step": "s", "call": "c", "connector": "t", "attempts": 2, "cause": {"kind": "timeout"}})
    );
    assert_eq!(
        e.to_string(),
        "step s call c: connector t failed after 2 attempt(s): the call timed out"
    );
    let e = PlanError::TemplateError {
        step: "s".into(),
        call: None,
        template: "{{x}}".into(),
        problem: TemplateProblem::UnknownStep {
            reference: "x".into(),
        },
    };
    assert_eq!(
        e.to_json()["problem"],
        json!({"kind": "unknown_step", "reference": "x"})
    );
    assert_eq!(
        e.to_string(),
        "step s: placeholder {{x}}: no step is named x"
    );
}

#[test]
fn resolution_stops_at_the_bound_before_copying_the_rest() {
    // 4096 references to 10 KiB: resolution must stop after about 1 MiB of it, not build
    // 40 MiB and measure it afterwards.
    let big = json!("z".repeat(10 * 1024));
    let looked_up = Cell::new(0usize);
    let lookup = |id: &str| {
        looked_up.set(looked_up.get() + 1);
        (id == "big").then_some(&big)
    };
    let refs = Value::Array((0..MAX_TEMPLATES).map(|_| json!("{{big}}")).collect());
    let r = crate::template::resolve(&refs, &lookup, MAX_VALUE_BYTES);
    assert!(
        matches!(r, Err(crate::template::ResolveError::TooLarge)),
        "{r:?}"
    );
    assert!(
        looked_up.get() <= MAX_VALUE_BYTES / (10 * 1024) + 2,
        "{} lookups",
        looked_up.get()
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_stops_keeping_answers_once_they_cannot_fit_its_output() {
    let answer = json!("a".repeat(300 * 1024));
    let k = TestKernel::new().script(
        "big",
        Script {
            always: Some(Ok(answer)),
            ..Script::default()
        },
    );
    let calls: Vec<Value> = (0..8)
        .map(|i| json!({"call_id": format!("c{i}"), "connector_name": "big"}))
        .collect();
    let e = fails(&k, json!({"caller": "t", "concurrency": {"max_in_flight": 1},
        "steps": [{"kind": "connector_batch", "step_id": "b", "continue_on_error": true, "calls": calls}]}))
    .await;
    assert_eq!(
        e,
        PlanError::ValueTooLarge {
            step: Some("b".into()),
            call: Some("c3".into()),
            what: ValueKind::Output,
            max: MAX_VALUE_BYTES
        }
    );
    assert_eq!(
        k.calls().len(),
        4,
        "no call after the answers stopped fitting"
    );
}

#[tokio::test(start_paused = true)]
async fn copies_of_a_large_output_are_bounded_by_what_a_run_keeps() {
    // Each json_pointer "" copies the whole 600 KiB literal; the run keeps at most 8 MiB.
    let mut steps =
        vec![json!({"kind": "set_literal", "step_id": "big", "value": "b".repeat(600 * 1024)})];
    steps.extend((0..40).map(|i| json!({"kind": "json_pointer", "step_id": format!("p{i}"), "from_step": "big", "pointer": ""})));
    let k = TestKernel::new();
    let e = fails(&k, json!({"caller": "t", "steps": steps})).await;
    assert!(
        matches!(&e, PlanError::ValueTooLarge { what: ValueKind::Retained, step: Some(s), .. } if s == "p12"),
        "{e:?}"
    );
}

#[test]
fn a_field_given_twice_is_refused_not_read_one_way() {
    let cases = [
        r#"{"caller":"t","max_calls":1,"max_calls":200,"steps":[{"kind":"set_literal","step_id":"s","value":1}]}"#,
        r#"{"caller":"t","steps":[{"kind":"set_literal","step_id":"s","step_id":"t","value":1}]}"#,
        r#"{"caller":"t","steps":[{"kind":"set_literal","kind":"connector_call","step_id":"s","value":1}]}"#,
        r#"{"caller":"t","steps":[{"kind":"connector_call","step_id":"c","connector_name":"e","retry":{"max_attempts":1,"max_attempts":9}}]}"#,
    ];
    for text in cases {
        match crate::parse(text.as_bytes()) {
            Err(PlanError::Malformed { message, .. }) => {
                assert!(message.contains("duplicate field"), "{text}: {message}")
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}
