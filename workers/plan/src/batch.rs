//! A `connector_batch`: its calls one after another, or in parallel under upstream's
//! scheduler: at most the in-flight budget of calls at once (it starts at `max_in_flight`;
//! with `adaptive_budget`, a failure named in `adaptive_reduce_on` shrinks it by
//! `adaptive_downshift_step` down to `min_in_flight`, and `adaptive_recovery_successes`
//! successes in a row grow it by `adaptive_upshift_step` back up to `max_in_flight`),
//! taken from three priority queues in strict or weighted round robin.
//!
//! The calls in flight are futures polled together on the run's one thread; no task is
//! spawned. When a call fails and the batch does not continue on error, the step fails at
//! once: no further call is started and the calls in flight are dropped (upstream starts the
//! rest too). A failure that ends the run ([`CallError::ends_run`], or the wall time) stops
//! the batch the same way whatever `continue_on_error` says. Dropping a call withdraws its
//! kernel call: the plan worker sends a `KernelCancel`, loongd stops the call and records
//! its outcome.

use std::{
    collections::{BTreeMap, VecDeque},
    future::{poll_fn, Future},
    pin::Pin,
    task::Poll,
};

use serde_json::{json, Value};

use crate::{
    answer::{CallMetrics, SchedulerSummary},
    invoke::{CallFailure, CallSpec, Shared},
    kernel::{CallError, Kernel},
    limits::MAX_VALUE_BYTES,
    plan::{Concurrency, Fairness, PriorityClass, ReduceOn},
    template::json_size,
};

/// A batch call, ready to go.
#[derive(Debug, Clone)]
pub(crate) struct Prepared<'a> {
    pub call_id: &'a str,
    pub operation: Option<&'a str>,
    pub spec: CallSpec<'a>,
}

/// What a batch did.
#[derive(Debug)]
pub(crate) struct BatchRun {
    /// One report per call made, in the plan's order.
    pub reports: Vec<Value>,
    pub summary: SchedulerSummary,
    pub metrics: Vec<CallMetrics>,
    /// The first failure that stops the step (one that ends the run always does; a call's
    /// other failures do unless the batch continues on error).
    pub stop: Option<Stop>,
}

/// The failure that stopped a batch.
#[derive(Debug)]
pub(crate) struct Stop {
    /// The call's index in the batch.
    pub index: usize,
    pub failure: CallFailure,
    pub attempts: usize,
}

type InFlight<'f> =
    Pin<Box<dyn Future<Output = (usize, Result<Value, CallFailure>, CallMetrics)> + 'f>>;

pub(crate) async fn run<K: Kernel>(
    shared: &Shared,
    kernel: &K,
    calls: &[Prepared<'_>],
    parallel: bool,
    continue_on_error: bool,
    conc: &Concurrency,
) -> BatchRun {
    let parallel = parallel && calls.len() > 1;
    let mut summary = summary_for(parallel, conc);
    let mut results: Vec<Option<(Result<Value, CallFailure>, CallMetrics)>> =
        vec![None; calls.len()];
    let mut queues = Queues::new(calls, conc);
    let mut budget = summary.final_in_flight_budget;
    let mut successes_in_a_row = 0usize;
    let mut inflight: Vec<InFlight<'_>> = Vec::new();
    let mut stop: Option<Stop> = None;
    let mut answer_bytes = 0usize;

    loop {
        let pending_before = queues.len();
        while inflight.len() < budget && stop.is_none() {
            let next = if parallel {
                queues.pop()
            } else {
                queues.pop_in_order()
            };
            let Some((i, call)) = next.and_then(|i| Some((i, calls.get(i)?))) else {
                break;
            };
            summary.dispatched(call);
            inflight.push(Box::pin(async move {
                let (r, m) = shared.invoke(kernel, &call.spec).await;
                (i, r, m)
            }));
            summary.peak_in_flight = summary.peak_in_flight.max(inflight.len());
        }
        if inflight.is_empty() {
            break;
        }
        if pending_before > 0 && inflight.len() >= budget {
            summary.scheduler_wait_cycles += 1;
        }
        let (i, mut result, metrics) = next_ready(&mut inflight).await;
        if let Ok(v) = &result {
            // The step's output holds every answer: stop keeping them once they cannot fit.
            match json_size(v, MAX_VALUE_BYTES.saturating_sub(answer_bytes)) {
                Some(n) => answer_bytes += n,
                None => result = Err(CallFailure::TooLarge),
            }
        }
        let failed = result.as_ref().err().cloned();
        let attempts = metrics.attempts;
        if let Some(slot) = results.get_mut(i) {
            *slot = Some((result, metrics));
        }
        if let Some(f) = &failed {
            if (ends_run(f) || !continue_on_error) && stop.is_none() {
                stop = Some(Stop {
                    index: i,
                    failure: f.clone(),
                    attempts,
                });
            }
            if ends_run(f) || !continue_on_error {
                // The step has failed (or every call in flight would meet the same end: the
                // deadline that just passed, the spent root budget): drop them, which
                // cancels them.
                break;
            }
        }
        if summary.adaptive_budget {
            budget = adapt(
                conc,
                &mut summary,
                budget,
                &mut successes_in_a_row,
                failed.as_ref(),
            );
        }
        summary.final_in_flight_budget = budget;
    }
    drop(inflight);

    let mut reports = Vec::new();
    let mut metrics = Vec::new();
    for (call, done) in calls.iter().zip(results) {
        if let Some((result, m)) = done {
            reports.push(report(call, &result, &m));
            metrics.push(m);
        }
    }
    BatchRun {
        reports,
        summary,
        metrics,
        stop,
    }
}

/// The scheduler summary before the first call.
fn summary_for(parallel: bool, conc: &Concurrency) -> SchedulerSummary {
    SchedulerSummary {
        mode: if parallel { "parallel" } else { "serial" },
        fairness: conc.fairness,
        adaptive_budget: parallel && conc.adaptive_budget,
        configured_max_in_flight: conc.max_in_flight,
        configured_min_in_flight: conc.min_in_flight,
        peak_in_flight: 0,
        final_in_flight_budget: if parallel { conc.max_in_flight } else { 1 },
        budget_reductions: 0,
        budget_increases: 0,
        scheduler_wait_cycles: 0,
        dispatch_order: Vec::new(),
        priority_dispatch_counts: BTreeMap::from([("high", 0), ("normal", 0), ("low", 0)]),
    }
}

impl SchedulerSummary {
    fn dispatched(&mut self, call: &Prepared<'_>) {
        self.dispatch_order.push(call.call_id.to_string());
        if let Some(n) = self
            .priority_dispatch_counts
            .get_mut(call.spec.priority.as_str())
        {
            *n += 1;
        }
    }
}

/// The in-flight budget after a call's outcome, as upstream adapts it: a failure resets the
/// run of successes and, when `adaptive_reduce_on` names it, shrinks the budget toward
/// `min_in_flight`; enough successes in a row grow it toward `max_in_flight`.
fn adapt(
    conc: &Concurrency,
    summary: &mut SchedulerSummary,
    budget: usize,
    successes_in_a_row: &mut usize,
    failed: Option<&CallFailure>,
) -> usize {
    match failed {
        Some(f) => {
            *successes_in_a_row = 0;
            if reduces(conc, f) && budget > conc.min_in_flight {
                summary.budget_reductions += 1;
                return budget
                    .saturating_sub(conc.adaptive_downshift_step)
                    .max(conc.min_in_flight);
            }
            budget
        }
        None => {
            *successes_in_a_row += 1;
            if budget < conc.max_in_flight
                && *successes_in_a_row >= conc.adaptive_recovery_successes
            {
                summary.budget_increases += 1;
                *successes_in_a_row = 0;
                return (budget + conc.adaptive_upshift_step).min(conc.max_in_flight);
            }
            budget
        }
    }
}

/// A call's entry in the batch output (upstream's shape; `cause` is added for kernel
/// failures).
fn report(call: &Prepared<'_>, result: &Result<Value, CallFailure>, m: &CallMetrics) -> Value {
    let mut r = json!({
        "call_id": call.call_id,
        "connector_name": call.spec.connector,
        "operation": call.operation,
        "execution": m,
    });
    let fields = match result {
        Ok(v) => json!({"status": "ok", "outcome": v}),
        Err(CallFailure::CircuitOpen {
            remaining_cooldown_ms,
        }) => json!({
            "status": "error",
            "error_code": "circuit_open",
            "error": format!("connector {}'s circuit is open (cooldown left: {remaining_cooldown_ms} ms)", call.spec.connector),
        }),
        Err(CallFailure::Kernel(e)) => json!({
            "status": "error",
            "error_code": e.class(),
            "error": e.to_string(),
            "cause": e,
        }),
        Err(CallFailure::WallTime) => json!({
            "status": "error",
            "error_code": "budget_exceeded",
            "error": "the run's wall time is spent",
        }),
        Err(CallFailure::TooLarge) => json!({
            "status": "error",
            "error_code": "value_too_large",
            "error": "the batch's answers are over the bound of a step's output",
        }),
    };
    if let (Value::Object(r), Value::Object(fields)) = (&mut r, fields) {
        r.extend(fields);
    }
    r
}

/// Whether a failure stops the batch whatever `continue_on_error` says.
fn ends_run(f: &CallFailure) -> bool {
    match f {
        CallFailure::WallTime | CallFailure::TooLarge => true,
        CallFailure::Kernel(e) => e.ends_run(),
        CallFailure::CircuitOpen { .. } => false,
    }
}

/// Whether a failure shrinks the in-flight budget under `adaptive_reduce_on`.
fn reduces(conc: &Concurrency, f: &CallFailure) -> bool {
    let on = &conc.adaptive_reduce_on;
    if on.contains(&ReduceOn::AnyError) {
        return true;
    }
    let e = match f {
        CallFailure::CircuitOpen { .. } => return on.contains(&ReduceOn::CircuitOpen),
        CallFailure::WallTime | CallFailure::TooLarge => return false,
        CallFailure::Kernel(e) => e,
    };
    match e {
        CallError::ToolFailed { .. }
        | CallError::Timeout
        | CallError::Overloaded
        | CallError::Transport { .. } => on.contains(&ReduceOn::ConnectorExecutionError),
        CallError::NotFound => on.contains(&ReduceOn::ConnectorNotFound),
        CallError::Denied { .. } => {
            on.contains(&ReduceOn::CapabilityDenied) || on.contains(&ReduceOn::PolicyDenied)
        }
        CallError::ApprovalRequired { .. } => on.contains(&ReduceOn::PolicyDenied),
        CallError::DepthExceeded | CallError::BudgetExceeded { .. } => false,
    }
}

/// Waits for the first of `set` to finish and removes it.
async fn next_ready<T>(set: &mut Vec<Pin<Box<dyn Future<Output = T> + '_>>>) -> T {
    poll_fn(|cx| {
        let mut done = None;
        for (i, f) in set.iter_mut().enumerate() {
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                done = Some((i, v));
                break;
            }
        }
        match done {
            Some((i, v)) => {
                drop(set.swap_remove(i));
                Poll::Ready(v)
            }
            None => Poll::Pending,
        }
    })
    .await
}

/// The calls not yet started: by priority for a parallel batch, in order for a serial one.
struct Queues {
    by_class: BTreeMap<PriorityClass, VecDeque<usize>>,
    in_order: VecDeque<usize>,
    cycle: Vec<PriorityClass>,
    cursor: usize,
}

impl Queues {
    fn new(calls: &[Prepared<'_>], conc: &Concurrency) -> Queues {
        let mut by_class = BTreeMap::new();
        for (i, c) in calls.iter().enumerate() {
            by_class
                .entry(c.spec.priority)
                .or_insert_with(VecDeque::new)
                .push_back(i);
        }
        const ORDER: [PriorityClass; 3] = [
            PriorityClass::High,
            PriorityClass::Normal,
            PriorityClass::Low,
        ];
        let cycle = match conc.fairness {
            Fairness::StrictRoundRobin => ORDER.to_vec(),
            Fairness::WeightedRoundRobin => ORDER
                .iter()
                .zip([conc.high_weight, conc.normal_weight, conc.low_weight])
                .flat_map(|(class, w)| std::iter::repeat_n(*class, w.max(1)))
                .collect(),
        };
        Queues {
            by_class,
            in_order: (0..calls.len()).collect(),
            cycle,
            cursor: 0,
        }
    }

    fn len(&self) -> usize {
        self.in_order.len()
    }

    /// The next call by fairness: the first non-empty class from the cursor on.
    fn pop(&mut self) -> Option<usize> {
        let n = self.cycle.len();
        for offset in 0..n {
            let at = (self.cursor + offset) % n;
            let class = self.cycle.get(at)?;
            if let Some(i) = self.by_class.get_mut(class).and_then(VecDeque::pop_front) {
                self.cursor = (at + 1) % n;
                self.in_order.retain(|&j| j != i);
                return Some(i);
            }
        }
        None
    }

    fn pop_in_order(&mut self) -> Option<usize> {
        let i = self.in_order.pop_front()?;
        for q in self.by_class.values_mut() {
            q.retain(|&j| j != i);
        }
        Some(i)
    }
}
