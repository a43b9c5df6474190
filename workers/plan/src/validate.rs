//! Everything about a plan that can be known before its first kernel call.
//!
//! Ids, names and policy values are checked against [`crate::limits`]; every reference
//! (`from_step`, `return_step`, each placeholder) must name a step *before* the reader, so
//! a plan has no cycle and no forward reference by construction; connectors are checked
//! against `allowed_connectors` (a connector name is never templated, so this is exact);
//! the number of connector calls is checked against `max_calls` (steps never branch: a
//! `conditional` chooses a value, not which steps run, so every call in the plan is made
//! unless the run stops first). A placeholder whose source is known before the run (a
//! `set_literal`, or a `json_pointer` into one) is resolved here too, so a pointer that
//! finds nothing there is refused before any call.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::{
    error::{Budget, PlanError, TemplateProblem},
    limits::*,
    plan::{BatchCall, BreakerPolicy, Concurrency, Plan, RetryPolicy, Step},
    template::{self, normalise_pointer},
};

/// Checks `plan`; `Ok` means the run may start.
pub fn validate(plan: &Plan) -> Result<(), PlanError> {
    check_header(plan)?;
    let all_ids = check_ids(&plan.steps)?;
    let mut v = Walker {
        plan,
        all_ids,
        before: BTreeMap::new(),
        calls: 0,
        over_at: None,
        templates: 0,
    };
    for (index, step) in plan.steps.iter().enumerate() {
        v.step(index, step)?;
        v.before.insert(step.id(), known_output(step, &v.before));
    }
    if let Some(step) = v.over_at {
        return Err(PlanError::BudgetExceeded {
            step: Some(step),
            call: None,
            budget: Budget::Calls {
                max: plan.max_calls,
                needed: v.calls,
            },
        });
    }
    check_return_step(plan, &v.all_ids)
}

/// The step that `return_step` names, or the last one (upstream reads an empty
/// `return_step` as absent).
pub(crate) fn return_step(plan: &Plan) -> Option<&str> {
    match plan.return_step.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Some(s),
        _ => plan.steps.last().map(Step::id),
    }
}

fn invalid(
    step: Option<&str>,
    call: Option<&str>,
    field: String,
    message: impl Into<String>,
) -> PlanError {
    PlanError::InvalidPlan {
        step: step.map(str::to_string),
        call: call.map(str::to_string),
        field,
        message: message.into(),
    }
}

fn in_range<T: PartialOrd + std::fmt::Display>(
    field: impl Fn() -> String,
    value: T,
    min: T,
    max: T,
    at: (Option<&str>, Option<&str>),
) -> Result<(), PlanError> {
    if value < min || value > max {
        return Err(invalid(
            at.0,
            at.1,
            field(),
            format!("{value} is out of range: give a value from {min} to {max}"),
        ));
    }
    Ok(())
}

fn check_header(plan: &Plan) -> Result<(), PlanError> {
    let none = (None, None);
    check_label(&plan.caller, || "caller".into(), none)?;
    if plan.caller.trim().is_empty() {
        return Err(invalid(
            None,
            None,
            "caller".into(),
            "is empty: name who the plan runs for",
        ));
    }
    in_range(
        || "max_calls".into(),
        plan.max_calls,
        1,
        MAX_PLAN_CALLS,
        none,
    )?;
    in_range(|| "steps".into(), plan.steps.len(), 1, MAX_STEPS, none).map_err(|_| {
        invalid(
            None,
            None,
            "steps".into(),
            format!("has {} steps: give 1 to {MAX_STEPS}", plan.steps.len()),
        )
    })?;
    check_count("allowed_connectors", plan.allowed_connectors.len())?;
    for c in &plan.allowed_connectors {
        check_connector(c, || "allowed_connectors".into(), none)?;
    }
    check_count("connector_rate_limits", plan.connector_rate_limits.len())?;
    for (c, limit) in &plan.connector_rate_limits {
        let at = || format!("connector_rate_limits[{c}]");
        check_connector(c, at, none)?;
        in_range(
            || format!("{}.min_interval_ms", at()),
            limit.min_interval_ms,
            1,
            MAX_MIN_INTERVAL_MS,
            none,
        )?;
    }
    check_count(
        "connector_circuit_breakers",
        plan.connector_circuit_breakers.len(),
    )?;
    for (c, policy) in &plan.connector_circuit_breakers {
        check_connector(c, || format!("connector_circuit_breakers[{c}]"), none)?;
        check_breaker(c, policy)?;
    }
    check_concurrency(&plan.concurrency)
}

fn check_count(field: &str, n: usize) -> Result<(), PlanError> {
    if n > MAX_POLICY_ENTRIES {
        return Err(invalid(
            None,
            None,
            field.into(),
            format!("has {n} entries, over the limit of {MAX_POLICY_ENTRIES}"),
        ));
    }
    Ok(())
}

fn check_breaker(c: &str, p: &BreakerPolicy) -> Result<(), PlanError> {
    if !p.enabled {
        return Ok(());
    }
    let none = (None, None);
    let f = |name: &str| format!("connector_circuit_breakers[{c}].{name}");
    in_range(
        || f("failure_threshold"),
        p.failure_threshold,
        1,
        MAX_COUNT,
        none,
    )?;
    in_range(|| f("cooldown_ms"), p.cooldown_ms, 1, MAX_COOLDOWN_MS, none)?;
    in_range(
        || f("half_open_max_calls"),
        p.half_open_max_calls,
        1,
        MAX_COUNT,
        none,
    )?;
    in_range(
        || f("success_threshold"),
        p.success_threshold,
        1,
        p.half_open_max_calls,
        none,
    )
}

fn check_concurrency(c: &Concurrency) -> Result<(), PlanError> {
    let none = (None, None);
    let f = |name: &str| format!("concurrency.{name}");
    in_range(
        || f("max_in_flight"),
        c.max_in_flight,
        1,
        MAX_IN_FLIGHT,
        none,
    )?;
    in_range(
        || f("min_in_flight"),
        c.min_in_flight,
        1,
        c.max_in_flight,
        none,
    )?;
    for (name, w) in [
        ("high_weight", c.high_weight),
        ("normal_weight", c.normal_weight),
        ("low_weight", c.low_weight),
        ("adaptive_upshift_step", c.adaptive_upshift_step),
        ("adaptive_downshift_step", c.adaptive_downshift_step),
    ] {
        in_range(|| f(name), w, 1, MAX_WEIGHT, none)?;
    }
    if c.adaptive_budget {
        in_range(
            || f("adaptive_recovery_successes"),
            c.adaptive_recovery_successes,
            1,
            MAX_COUNT,
            none,
        )?;
        if c.adaptive_reduce_on.is_empty() {
            return Err(invalid(
                None,
                None,
                f("adaptive_reduce_on"),
                "is empty while adaptive_budget is on: name at least one trigger, or turn adaptive_budget off",
            ));
        }
    }
    Ok(())
}

fn check_retry(
    r: &RetryPolicy,
    field: &str,
    at: (Option<&str>, Option<&str>),
) -> Result<(), PlanError> {
    let f = |name: &str| format!("{field}.retry.{name}");
    in_range(|| f("max_attempts"), r.max_attempts, 1, MAX_ATTEMPTS, at)?;
    in_range(
        || f("max_backoff_ms"),
        r.max_backoff_ms,
        0,
        MAX_BACKOFF_MS,
        at,
    )?;
    in_range(
        || f("initial_backoff_ms"),
        r.initial_backoff_ms,
        0,
        r.max_backoff_ms,
        at,
    )?;
    if !r.jitter_ratio.is_finite() {
        return Err(invalid(
            at.0,
            at.1,
            f("jitter_ratio"),
            "is not a number from 0.0 to 1.0",
        ));
    }
    in_range(|| f("jitter_ratio"), r.jitter_ratio, 0.0, 1.0, at)
}

/// Step and call ids: a short word of `[A-Za-z0-9_.-]`, so that a placeholder can always
/// name it. Returns every step id with its index.
fn check_ids(steps: &[Step]) -> Result<BTreeMap<&str, usize>, PlanError> {
    let mut ids = BTreeMap::new();
    for (i, step) in steps.iter().enumerate() {
        check_id(step.id(), || format!("steps[{i}].step_id"), (None, None))?;
        if ids.insert(step.id(), i).is_some() {
            return Err(invalid(
                Some(step.id()),
                None,
                format!("steps[{i}].step_id"),
                "is used by an earlier step: give each step its own id",
            ));
        }
    }
    Ok(ids)
}

fn check_id(
    id: &str,
    field: impl Fn() -> String,
    at: (Option<&str>, Option<&str>),
) -> Result<(), PlanError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        return Err(invalid(
            at.0,
            at.1,
            field(),
            format!("must be 1 to {MAX_ID_BYTES} of the characters A-Z a-z 0-9 _ - ."),
        ));
    }
    Ok(())
}

/// A tool name: `PLUGIN`, `PLUGIN/TOOL` or a built-in such as `file.read`.
fn check_connector(
    name: &str,
    field: impl Fn() -> String,
    at: (Option<&str>, Option<&str>),
) -> Result<(), PlanError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CONNECTOR_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
    if !ok {
        return Err(invalid(at.0, at.1, field(), format!("must be a tool name of 1 to {MAX_CONNECTOR_BYTES} printable characters, no spaces or braces")));
    }
    Ok(())
}

fn check_label(
    text: &str,
    field: impl Fn() -> String,
    at: (Option<&str>, Option<&str>),
) -> Result<(), PlanError> {
    if text.len() > MAX_LABEL_BYTES || text.chars().any(char::is_control) {
        return Err(invalid(
            at.0,
            at.1,
            field(),
            format!("must be at most {MAX_LABEL_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}

fn check_pointer(
    p: &str,
    field: impl Fn() -> String,
    at: (Option<&str>, Option<&str>),
) -> Result<(), PlanError> {
    if p.len() > MAX_POINTER_BYTES {
        return Err(invalid(
            at.0,
            at.1,
            field(),
            format!("is over {MAX_POINTER_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn check_return_step(plan: &Plan, all_ids: &BTreeMap<&str, usize>) -> Result<(), PlanError> {
    match return_step(plan) {
        Some(id) if all_ids.contains_key(id) => Ok(()),
        other => Err(PlanError::UnknownStep {
            step: None,
            field: "return_step".into(),
            reference: other.unwrap_or_default().to_string(),
            later: false,
        }),
    }
}

/// The output a step will have, when it is known before the run: a reference into the plan,
/// never a copy (a plan of many pointers into one large literal must not multiply it).
fn known_output<'p>(
    step: &'p Step,
    before: &BTreeMap<&str, Option<&'p Value>>,
) -> Option<&'p Value> {
    match step {
        Step::SetLiteral { value, .. } => Some(value),
        Step::JsonPointer {
            from_step, pointer, ..
        } => before
            .get(from_step.as_str())?
            .as_ref()?
            .pointer(&normalise_pointer(pointer)),
        Step::ConnectorCall { .. } | Step::ConnectorBatch { .. } | Step::Conditional { .. } => None,
    }
}

struct Walker<'p> {
    plan: &'p Plan,
    all_ids: BTreeMap<&'p str, usize>,
    /// The steps before the current one, with their output when it is known.
    before: BTreeMap<&'p str, Option<&'p Value>>,
    calls: usize,
    over_at: Option<String>,
    templates: usize,
}

impl<'p> Walker<'p> {
    fn step(&mut self, index: usize, step: &'p Step) -> Result<(), PlanError> {
        let id = step.id();
        let field = |name: &str| format!("steps[{index}].{name}");
        match step {
            Step::SetLiteral { .. } => Ok(()),
            Step::JsonPointer {
                from_step, pointer, ..
            } => {
                self.reference(id, "from_step", from_step)?;
                check_pointer(pointer, || field("pointer"), (Some(id), None))?;
                if let Some(Some(source)) = self.before.get(from_step.as_str()) {
                    let p = normalise_pointer(pointer);
                    if source.pointer(&p).is_none() {
                        return Err(PlanError::PointerNotFound {
                            step: id.into(),
                            from_step: from_step.clone(),
                            pointer: p,
                        });
                    }
                }
                Ok(())
            }
            Step::ConnectorCall {
                connector_name,
                operation,
                required_capabilities,
                retry,
                payload,
                ..
            } => {
                let call = CallFields {
                    connector_name,
                    operation,
                    required_capabilities,
                    retry,
                    payload,
                };
                self.call(id, None, &field(""), call)?;
                self.count_calls(id, 1);
                Ok(())
            }
            Step::ConnectorBatch { calls, .. } => self.batch(index, id, calls),
            Step::Conditional {
                from_step,
                pointer,
                equals,
                exists,
                when_true,
                when_false,
                ..
            } => {
                self.reference(id, "from_step", from_step)?;
                if let Some(p) = pointer {
                    check_pointer(p, || field("pointer"), (Some(id), None))?;
                    if p.trim().is_empty() {
                        return Err(invalid(
                            Some(id),
                            None,
                            field("pointer"),
                            "is empty: leave it out to test the whole output",
                        ));
                    }
                }
                if equals.is_none() && exists.is_none() {
                    return Err(invalid(
                        Some(id),
                        None,
                        field("equals"),
                        "a conditional needs a predicate: give equals, exists or both",
                    ));
                }
                self.templates(id, None, when_true)?;
                if let Some(w) = when_false {
                    self.templates(id, None, w)?;
                }
                Ok(())
            }
        }
    }

    fn batch(&mut self, index: usize, id: &str, calls: &[BatchCall]) -> Result<(), PlanError> {
        if calls.is_empty() || calls.len() > MAX_BATCH_CALLS {
            return Err(invalid(
                Some(id),
                None,
                format!("steps[{index}].calls"),
                format!("has {} calls: give 1 to {MAX_BATCH_CALLS}", calls.len()),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, c) in calls.iter().enumerate() {
            let cf = format!("steps[{index}].calls[{i}]");
            check_id(&c.call_id, || format!("{cf}.call_id"), (Some(id), None))?;
            if !seen.insert(c.call_id.as_str()) {
                return Err(invalid(
                    Some(id),
                    Some(&c.call_id),
                    format!("{cf}.call_id"),
                    "is used by an earlier call of the batch: give each call its own id",
                ));
            }
            self.call(id, Some(&c.call_id), &format!("{cf}."), CallFields::of(c))?;
        }
        self.count_calls(id, calls.len());
        Ok(())
    }

    fn count_calls(&mut self, step: &str, n: usize) {
        self.calls += n;
        if self.calls > self.plan.max_calls && self.over_at.is_none() {
            self.over_at = Some(step.to_string());
        }
    }

    fn call(
        &mut self,
        step: &str,
        call: Option<&str>,
        prefix: &str,
        c: CallFields<'_>,
    ) -> Result<(), PlanError> {
        let at = (Some(step), call);
        let f = |name: &str| format!("{prefix}{name}");
        check_connector(c.connector_name, || f("connector_name"), at)?;
        let allowed = &self.plan.allowed_connectors;
        if !allowed.is_empty() && !allowed.contains(c.connector_name) {
            return Err(PlanError::ConnectorNotAllowed {
                step: step.into(),
                call: call.map(str::to_string),
                connector: c.connector_name.to_string(),
            });
        }
        if let Some(op) = c.operation {
            check_label(op, || f("operation"), at)?;
        }
        if c.required_capabilities.len() > MAX_POLICY_ENTRIES {
            return Err(invalid(
                Some(step),
                call,
                f("required_capabilities"),
                format!("has more than {MAX_POLICY_ENTRIES} entries"),
            ));
        }
        for cap in c.required_capabilities {
            check_label(cap, || f("required_capabilities"), at)?;
        }
        if let Some(r) = c.retry {
            check_retry(r, prefix.trim_end_matches('.'), at)?;
        }
        self.templates(step, call, c.payload)
    }

    /// `field` of step `reader` names a step before it.
    fn reference(&self, reader: &str, field: &str, target: &str) -> Result<(), PlanError> {
        if self.before.contains_key(target) {
            return Ok(());
        }
        Err(PlanError::UnknownStep {
            step: Some(reader.to_string()),
            field: field.to_string(),
            reference: target.to_string(),
            later: self.all_ids.contains_key(target),
        })
    }

    /// Every placeholder in `value` names an earlier step, and finds something there when
    /// that step's output is already known.
    fn templates(
        &mut self,
        step: &str,
        call: Option<&str>,
        value: &Value,
    ) -> Result<(), PlanError> {
        let fail = |template: String, problem| PlanError::TemplateError {
            step: step.to_string(),
            call: call.map(str::to_string),
            template,
            problem,
        };
        let mut strings = Vec::new();
        collect_strings(value, &mut strings);
        for s in strings {
            let parsed = match template::parse(s) {
                Ok(None) => continue,
                Ok(Some(p)) => p,
                Err((t, problem)) => return Err(fail(t, problem)),
            };
            for r in parsed.refs() {
                self.templates += 1;
                if self.templates > MAX_TEMPLATES {
                    return Err(fail(
                        r.raw.to_string(),
                        TemplateProblem::TooMany { max: MAX_TEMPLATES },
                    ));
                }
                let reference = r.step.to_string();
                let known = match self.before.get(r.step) {
                    Some(k) => k,
                    None if self.all_ids.contains_key(r.step) => {
                        return Err(fail(
                            r.raw.to_string(),
                            TemplateProblem::LaterStep { reference },
                        ))
                    }
                    None => {
                        return Err(fail(
                            r.raw.to_string(),
                            TemplateProblem::UnknownStep { reference },
                        ))
                    }
                };
                if let (Some(source), Some(p)) = (known, &r.pointer) {
                    if source.pointer(p).is_none() {
                        return Err(fail(
                            r.raw.to_string(),
                            TemplateProblem::PointerNotFound {
                                reference,
                                pointer: p.clone(),
                            },
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The fields a `connector_call` step and a batch call share.
struct CallFields<'a> {
    connector_name: &'a str,
    operation: &'a Option<String>,
    required_capabilities: &'a [String],
    retry: &'a Option<RetryPolicy>,
    payload: &'a Value,
}

impl<'a> CallFields<'a> {
    fn of(c: &'a BatchCall) -> Self {
        CallFields {
            connector_name: &c.connector_name,
            operation: &c.operation,
            required_capabilities: &c.required_capabilities,
            retry: &c.retry,
            payload: &c.payload,
        }
    }
}

fn collect_strings<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}
