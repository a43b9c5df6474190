//! Unit tests of the interpreter against an in-test kernel that records every call.
//!
//! Every async test runs on tokio's paused clock (`start_paused`): time moves only when
//! every future waits, so waits, intervals and wall times are exact and deterministic.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

use crate::{Answer, CallError, Failure, FailureClass, Kernel, Options, PlanError};

mod hostile;
mod resilience;
mod steps;
mod upstream;

/// What the test kernel does for one tool.
#[derive(Debug, Default, Clone)]
struct Script {
    /// How long each call takes.
    delay: Duration,
    /// The answers of the first calls, in order (then `always`, then an echo).
    first: VecDeque<Result<Value, CallError>>,
    /// The answer of every call once `first` is used up; an echo of the input when absent.
    always: Option<Result<Value, CallError>>,
}

/// One call the kernel saw.
#[derive(Debug, Clone)]
struct Seen {
    tool: String,
    input: Value,
    at: Instant,
}

/// A kernel whose tools echo their input unless scripted otherwise; an input's
/// `delay_ms` field adds to the tool's delay. It measures the calls in flight.
#[derive(Debug, Default)]
struct TestKernel {
    scripts: RefCell<BTreeMap<String, Script>>,
    seen: RefCell<Vec<Seen>>,
    in_flight: Cell<usize>,
    peak: Cell<usize>,
    /// Calls dropped before they answered (the plan worker withdraws them).
    withdrawn: Cell<usize>,
}

/// Counts a call out of flight when it ends, and as withdrawn when it was dropped first.
struct Flight<'a> {
    kernel: &'a TestKernel,
    done: bool,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.kernel.in_flight.set(self.kernel.in_flight.get() - 1);
        if !self.done {
            self.kernel.withdrawn.set(self.kernel.withdrawn.get() + 1);
        }
    }
}

impl TestKernel {
    fn new() -> TestKernel {
        TestKernel::default()
    }

    fn script(self, tool: &str, script: Script) -> TestKernel {
        self.scripts.borrow_mut().insert(tool.to_string(), script);
        self
    }

    /// `tool` fails with `error` on its first `n` calls, then echoes.
    fn failing_first(self, tool: &str, n: usize, error: CallError) -> TestKernel {
        self.script(
            tool,
            Script {
                first: (0..n).map(|_| Err(error.clone())).collect(),
                ..Script::default()
            },
        )
    }

    /// `tool` always fails with `error`.
    fn failing(self, tool: &str, error: CallError) -> TestKernel {
        self.script(
            tool,
            Script {
                always: Some(Err(error)),
                ..Script::default()
            },
        )
    }

    fn calls(&self) -> Vec<Seen> {
        self.seen.borrow().clone()
    }

    fn calls_of(&self, tool: &str) -> Vec<Seen> {
        self.calls()
            .into_iter()
            .filter(|s| s.tool == tool)
            .collect()
    }
}

impl Kernel for TestKernel {
    async fn call_tool(&self, tool: &str, input: Value) -> Result<Value, CallError> {
        self.seen.borrow_mut().push(Seen {
            tool: tool.to_string(),
            input: input.clone(),
            at: Instant::now(),
        });
        self.in_flight.set(self.in_flight.get() + 1);
        self.peak.set(self.peak.get().max(self.in_flight.get()));
        let mut flight = Flight {
            kernel: self,
            done: false,
        };
        let (delay, answer) = {
            let mut scripts = self.scripts.borrow_mut();
            let script = scripts.entry(tool.to_string()).or_default();
            let answer = script.first.pop_front().or_else(|| script.always.clone());
            (script.delay, answer)
        };
        let extra = input.get("delay_ms").and_then(Value::as_u64).unwrap_or(0);
        let total = delay + Duration::from_millis(extra);
        if !total.is_zero() {
            sleep(total).await;
        }
        flight.done = true;
        answer.unwrap_or(Ok(input))
    }
}

fn transient(message: &str) -> CallError {
    CallError::ToolFailed {
        class: FailureClass::Transient,
        message: message.to_string(),
    }
}

fn permanent(message: &str) -> CallError {
    CallError::ToolFailed {
        class: FailureClass::Permanent,
        message: message.to_string(),
    }
}

async fn run_json(kernel: &TestKernel, plan: Value) -> Result<Answer, Failure> {
    crate::run(kernel, plan.to_string().as_bytes(), Options::default()).await
}

async fn ok(kernel: &TestKernel, plan: Value) -> Value {
    match run_json(kernel, plan).await {
        Ok(answer) => serde_json::to_value(answer).expect("an answer serialises"),
        Err(f) => panic!("the plan failed: {} ({})", f, f.error.to_json()),
    }
}

async fn fails(kernel: &TestKernel, plan: Value) -> PlanError {
    match run_json(kernel, plan).await {
        Ok(answer) => panic!("the plan ran: {:?}", answer.result),
        Err(f) => f.error,
    }
}

/// A minimal plan around `steps`.
fn plan_of(steps: Value) -> Value {
    json!({"caller": "tester", "steps": steps})
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).expect("a test duration fits")
}
