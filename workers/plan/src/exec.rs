//! The run: validation, then the steps in order, then the answer.
//!
//! A step's output is kept under its id; placeholders and `from_step` read it. Every
//! connector call goes through [`Shared::invoke`] with the plan's provenance written into
//! its input's `_loong` object (replacing whatever the payload put there, so a plan cannot
//! dress a call up as another's). The run's wall time bounds every wait and every kernel
//! call; the clock is tokio's, so a test with a paused clock runs deterministically.

use std::{cell::RefCell, collections::BTreeMap, time::Duration};

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::{
    answer::{Answer, CallMetrics, Failure, StepStatus, StepTelemetry},
    batch::{self, Prepared},
    breaker::Breaker,
    error::{Budget, PlanError, ValueKind},
    invoke::{millis, CallFailure, CallSpec, Shared},
    kernel::Kernel,
    limits::{
        DEFAULT_WALL_TIME_MS, MAX_ANSWER_BYTES, MAX_RETAINED_BYTES, MAX_VALUE_BYTES,
        MAX_WALL_TIME_MS,
    },
    parse::parse,
    plan::{BatchCall, Plan, PriorityClass, RetryPolicy, Step},
    template::{self, json_size, normalise_pointer, ResolveError},
    validate::{return_step, validate},
};

/// What the runner (the plan worker) sets for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The run's wall time (at most [`MAX_WALL_TIME_MS`]); the worker passes what is left
    /// of the call's deadline.
    pub wall_time: Duration,
    /// Mixed into the backoff jitter; a worker passes a fresh value per run.
    pub jitter_seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            wall_time: Duration::from_millis(DEFAULT_WALL_TIME_MS),
            jitter_seed: 0,
        }
    }
}

/// Parses, validates and runs the plan in `bytes`.
pub async fn run<K: Kernel>(kernel: &K, bytes: &[u8], options: Options) -> Result<Answer, Failure> {
    let plan = parse(bytes)?;
    execute(kernel, &plan, options).await
}

/// Validates and runs `plan`. No kernel call is made unless validation passes.
pub async fn execute<K: Kernel>(
    kernel: &K,
    plan: &Plan,
    options: Options,
) -> Result<Answer, Failure> {
    validate(plan)?;
    let wall_time = options
        .wall_time
        .min(Duration::from_millis(MAX_WALL_TIME_MS));
    let mut run = Run {
        plan,
        kernel,
        shared: Shared {
            breakers: RefCell::new(
                plan.connector_circuit_breakers
                    .iter()
                    .map(|(c, p)| (c.clone(), Breaker::new(*p)))
                    .collect(),
            ),
            rate_limits: plan.connector_rate_limits.clone(),
            next_slot: RefCell::new(BTreeMap::new()),
            deadline: Instant::now() + wall_time,
            jitter_seed: options.jitter_seed,
        },
        wall_ms: millis(wall_time),
        outputs: BTreeMap::new(),
        retained: 0,
        connector_calls: 0,
        telemetry: Vec::new(),
        trace: Vec::new(),
    };
    for (index, step) in plan.steps.iter().enumerate() {
        if let Err(error) = run.step(index, step).await {
            return Err(Failure {
                error,
                telemetry: run.telemetry,
            });
        }
    }
    run.answer().map_err(|error| Failure {
        error,
        telemetry: Vec::new(),
    })
}

struct Run<'p, K> {
    plan: &'p Plan,
    kernel: &'p K,
    shared: Shared,
    wall_ms: u64,
    outputs: BTreeMap<String, Value>,
    retained: usize,
    connector_calls: usize,
    telemetry: Vec<StepTelemetry>,
    trace: Vec<Value>,
}

/// A step's outcome before it is stored: its output, its trace entry and its telemetry.
struct Done {
    output: Value,
    trace: Map<String, Value>,
}

impl<'p, K: Kernel> Run<'p, K> {
    async fn step(&mut self, index: usize, step: &'p Step) -> Result<(), PlanError> {
        let started = Instant::now();
        let mut t = StepTelemetry {
            step_id: step.id().to_string(),
            index,
            kind: step.kind(),
            status: StepStatus::Ok,
            wall_ms: 0,
            calls: 0,
            attempts: 0,
            retries: 0,
            rate_wait_ms: 0,
            backoff_ms: 0,
            breakers: BTreeMap::new(),
        };
        let result = if started >= self.shared.deadline {
            Err(self.wall_time_spent(step.id(), None))
        } else {
            self.dispatch(index, step, &mut t).await
        };
        let result = result.and_then(|done| self.store(step, done));
        t.wall_ms = millis(started.elapsed());
        if result.is_err() {
            t.status = StepStatus::Failed;
        }
        self.telemetry.push(t);
        result
    }

    async fn dispatch(
        &mut self,
        index: usize,
        step: &'p Step,
        t: &mut StepTelemetry,
    ) -> Result<Done, PlanError> {
        let id = step.id();
        match step {
            Step::SetLiteral { value, .. } => Ok(Done {
                output: value.clone(),
                trace: Map::new(),
            }),
            Step::JsonPointer {
                from_step, pointer, ..
            } => {
                let p = normalise_pointer(pointer);
                let output = self.output(from_step).pointer(&p).cloned().ok_or_else(|| {
                    PlanError::PointerNotFound {
                        step: id.into(),
                        from_step: from_step.clone(),
                        pointer: p,
                    }
                })?;
                Ok(Done {
                    output,
                    trace: trace_fields(json!({"from_step": from_step, "pointer": pointer})),
                })
            }
            Step::ConnectorCall {
                connector_name,
                operation,
                retry,
                priority_class,
                payload,
                ..
            } => {
                let call = OneCall {
                    connector: connector_name,
                    operation: operation.as_deref(),
                    retry,
                    priority: *priority_class,
                    payload,
                };
                self.connector_call(index, id, &call, t).await
            }
            Step::ConnectorBatch {
                parallel,
                continue_on_error,
                calls,
                ..
            } => {
                self.batch(index, id, *parallel, *continue_on_error, calls, t)
                    .await
            }
            Step::Conditional {
                from_step,
                pointer,
                equals,
                exists,
                when_true,
                when_false,
                ..
            } => {
                let (evaluated, matched) =
                    evaluate(self.output(from_step), pointer.as_deref(), equals, *exists);
                let selected = if matched {
                    when_true
                } else {
                    when_false.as_ref().unwrap_or(&Value::Null)
                };
                let output = self.resolve(id, None, selected, ValueKind::Output)?;
                Ok(Done {
                    output,
                    trace: trace_fields(json!({
                        "from_step": from_step,
                        "pointer": pointer,
                        "exists": exists,
                        "equals": equals,
                        "evaluated": evaluated,
                        "matched": matched,
                    })),
                })
            }
        }
    }

    async fn connector_call(
        &mut self,
        index: usize,
        id: &'p str,
        call: &OneCall<'p>,
        t: &mut StepTelemetry,
    ) -> Result<Done, PlanError> {
        self.reserve_calls(id, 1)?;
        let spec = self.prepare(index, id, None, call)?;
        let (result, m) = self.shared.invoke(self.kernel, &spec).await;
        self.connector_calls += 1;
        add_metrics(t, &m);
        t.breakers
            .insert(call.connector.to_string(), m.circuit_phase_after);
        let outcome =
            result.map_err(|f| self.call_error(id, None, call.connector, f, m.attempts))?;
        Ok(Done {
            output: json!({
                "connector_name": call.connector,
                "outcome": outcome,
                "priority_class": call.priority.as_str(),
                "execution": m,
            }),
            trace: trace_fields(
                json!({"connector_name": call.connector, "operation": call.operation}),
            ),
        })
    }

    async fn batch(
        &mut self,
        index: usize,
        id: &'p str,
        parallel: bool,
        continue_on_error: bool,
        calls: &'p [BatchCall],
        t: &mut StepTelemetry,
    ) -> Result<Done, PlanError> {
        self.reserve_calls(id, calls.len())?;
        let prepared = calls
            .iter()
            .map(|c| {
                Ok(Prepared {
                    call_id: &c.call_id,
                    operation: c.operation.as_deref(),
                    spec: self.prepare(index, id, Some(&c.call_id), &OneCall::of(c))?,
                })
            })
            .collect::<Result<Vec<_>, PlanError>>()?;
        let run = batch::run(
            &self.shared,
            self.kernel,
            &prepared,
            parallel,
            continue_on_error,
            &self.plan.concurrency,
        )
        .await;
        self.connector_calls += run.metrics.len();
        for m in &run.metrics {
            add_metrics(t, m);
        }
        for c in calls {
            t.breakers.insert(
                c.connector_name.clone(),
                self.shared.phase(&c.connector_name),
            );
        }
        if let Some(stop) = run.stop {
            let call = calls.get(stop.index);
            return Err(self.call_error(
                id,
                call.map(|c| c.call_id.as_str()),
                call.map_or("", |c| c.connector_name.as_str()),
                stop.failure,
                stop.attempts,
            ));
        }
        Ok(Done {
            output: batch_output(parallel, continue_on_error, run),
            trace: trace_fields(
                json!({"parallel": parallel, "continue_on_error": continue_on_error}),
            ),
        })
    }

    /// A call's input: the payload's placeholders resolved, then the provenance written.
    fn prepare<'a>(
        &self,
        index: usize,
        step: &'a str,
        call: Option<&'a str>,
        c: &OneCall<'a>,
    ) -> Result<CallSpec<'a>, PlanError> {
        let resolved = self.resolve(step, call, c.payload, ValueKind::Payload)?;
        let mut input = match resolved {
            Value::Object(map) => map,
            other => Map::from_iter([("input".to_string(), other)]),
        };
        let mut provenance = Map::new();
        provenance.insert("caller".into(), json!(self.plan.caller));
        provenance.insert("mode".into(), json!("programmatic_tool_call"));
        provenance.insert("step_id".into(), json!(step));
        provenance.insert("step_index".into(), json!(index));
        if let Some(c) = call {
            provenance.insert("call_id".into(), json!(c));
        }
        if let Some(op) = c.operation {
            provenance.insert("operation".into(), json!(op));
        }
        input.insert("_loong".into(), Value::Object(provenance));
        let input = Value::Object(input);
        if json_size(&input, MAX_VALUE_BYTES).is_none() {
            return Err(too_large(step, call, ValueKind::Payload));
        }
        Ok(CallSpec {
            step,
            call,
            connector: c.connector,
            input,
            retry: c.retry.clone().unwrap_or_default(),
            priority: c.priority,
        })
    }

    fn resolve(
        &self,
        step: &str,
        call: Option<&str>,
        value: &Value,
        what: ValueKind,
    ) -> Result<Value, PlanError> {
        let lookup = |id: &str| self.outputs.get(id);
        template::resolve(value, &lookup, MAX_VALUE_BYTES).map_err(|e| match e {
            ResolveError::Template { template, problem } => PlanError::TemplateError {
                step: step.into(),
                call: call.map(str::to_string),
                template,
                problem,
            },
            ResolveError::TooLarge => too_large(step, call, what),
        })
    }

    /// An earlier step's output. Validation proved it exists; a missing one reads as null.
    fn output(&self, id: &str) -> &Value {
        self.outputs.get(id).unwrap_or(&Value::Null)
    }

    fn reserve_calls(&self, step: &str, n: usize) -> Result<(), PlanError> {
        let needed = self.connector_calls + n;
        if needed > self.plan.max_calls {
            return Err(PlanError::BudgetExceeded {
                step: Some(step.into()),
                call: None,
                budget: Budget::Calls {
                    max: self.plan.max_calls,
                    needed,
                },
            });
        }
        Ok(())
    }

    fn call_error(
        &self,
        step: &str,
        call: Option<&str>,
        connector: &str,
        f: CallFailure,
        attempts: usize,
    ) -> PlanError {
        match f {
            CallFailure::CircuitOpen {
                remaining_cooldown_ms,
            } => PlanError::CircuitOpen {
                step: step.into(),
                call: call.map(str::to_string),
                connector: connector.into(),
                remaining_cooldown_ms,
            },
            CallFailure::Kernel(cause) => PlanError::StepFailed {
                step: step.into(),
                call: call.map(str::to_string),
                connector: connector.into(),
                attempts,
                cause,
            },
            CallFailure::WallTime => self.wall_time_spent(step, call),
            CallFailure::TooLarge => too_large(step, call, ValueKind::Output),
        }
    }

    fn wall_time_spent(&self, step: &str, call: Option<&str>) -> PlanError {
        PlanError::BudgetExceeded {
            step: Some(step.into()),
            call: call.map(str::to_string),
            budget: Budget::WallTime {
                max_ms: self.wall_ms,
            },
        }
    }

    fn store(&mut self, step: &Step, done: Done) -> Result<(), PlanError> {
        let id = step.id();
        let size = json_size(&done.output, MAX_VALUE_BYTES)
            .ok_or_else(|| too_large(id, None, ValueKind::Output))?;
        self.retained += size;
        if self.retained > MAX_RETAINED_BYTES {
            return Err(too_large(id, None, ValueKind::Retained));
        }
        if self.plan.include_intermediate {
            let mut entry = Map::new();
            entry.insert("step_id".into(), json!(id));
            entry.insert("kind".into(), json!(step.kind()));
            entry.extend(done.trace);
            entry.insert("output".into(), done.output.clone());
            self.trace.push(Value::Object(entry));
        }
        self.outputs.insert(id.to_string(), done.output);
        Ok(())
    }

    fn answer(mut self) -> Result<Answer, PlanError> {
        let last = return_step(self.plan).unwrap_or_default().to_string();
        let result = self.outputs.get(&last).cloned().unwrap_or(Value::Null);
        let (steps, step_outputs) = if self.plan.include_intermediate {
            (
                Some(std::mem::take(&mut self.trace)),
                Some(std::mem::take(&mut self.outputs)),
            )
        } else {
            (None, None)
        };
        let answer = Answer {
            caller: self.plan.caller.clone(),
            max_calls: self.plan.max_calls,
            connector_calls: self.connector_calls,
            return_step: last,
            result,
            connector_rate_limits: self.plan.connector_rate_limits.clone(),
            connector_circuit_breakers: self.plan.connector_circuit_breakers.clone(),
            concurrency: self.plan.concurrency.clone(),
            telemetry: self.telemetry,
            steps,
            step_outputs,
        };
        if json_size(&answer, MAX_ANSWER_BYTES).is_none() {
            return Err(PlanError::ValueTooLarge {
                step: None,
                call: None,
                what: ValueKind::Answer,
                max: MAX_ANSWER_BYTES,
            });
        }
        Ok(answer)
    }
}

fn too_large(step: &str, call: Option<&str>, what: ValueKind) -> PlanError {
    PlanError::ValueTooLarge {
        step: Some(step.into()),
        call: call.map(str::to_string),
        what,
        max: MAX_VALUE_BYTES,
    }
}

fn add_metrics(t: &mut StepTelemetry, m: &CallMetrics) {
    t.calls += 1;
    t.attempts += m.attempts;
    t.retries += m.retries;
    t.rate_wait_ms += m.rate_wait_ms_total;
    t.backoff_ms += m.backoff_ms_total;
}

fn trace_fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The fields a `connector_call` step and a batch call share.
struct OneCall<'a> {
    connector: &'a str,
    operation: Option<&'a str>,
    retry: &'a Option<RetryPolicy>,
    priority: PriorityClass,
    payload: &'a Value,
}

impl<'a> OneCall<'a> {
    fn of(c: &'a BatchCall) -> Self {
        OneCall {
            connector: &c.connector_name,
            operation: c.operation.as_deref(),
            retry: &c.retry,
            priority: c.priority_class,
            payload: &c.payload,
        }
    }
}

/// A conditional's test, as upstream: the value at `pointer` (the whole output when
/// absent), and whether every predicate given holds.
fn evaluate(
    source: &Value,
    pointer: Option<&str>,
    equals: &Option<Value>,
    exists: Option<bool>,
) -> (Option<Value>, bool) {
    let evaluated = match pointer {
        Some(p) => source.pointer(&normalise_pointer(p.trim())).cloned(),
        None => Some(source.clone()),
    };
    let mut matched = true;
    if let Some(want) = exists {
        matched &= evaluated.is_some() == want;
    }
    if let Some(want) = equals {
        matched &= evaluated.as_ref() == Some(want);
    }
    (evaluated, matched)
}

/// A batch step's output, upstream's shape.
fn batch_output(parallel: bool, continue_on_error: bool, run: batch::BatchRun) -> Value {
    let failed = run
        .reports
        .iter()
        .filter(|r| r["status"] == "error")
        .count();
    let by_call: Map<String, Value> = run
        .reports
        .iter()
        .filter_map(|r| Some((r.get("call_id")?.as_str()?.to_string(), r.clone())))
        .collect();
    json!({
        "parallel": parallel,
        "continue_on_error": continue_on_error,
        "total_calls": run.reports.len(),
        "success_calls": run.reports.len() - failed,
        "failed_calls": failed,
        "calls": run.reports,
        "by_call": by_call,
        "scheduler": run.summary,
    })
}
