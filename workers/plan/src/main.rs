//! `loong-worker-plan`: the restricted-tier worker that runs `programmatic_tool_call` plans.
//!
//! loongd starts it in a restricted sandbox with no grant at all (like the WASM worker); it
//! confines itself a final time through the shared worker runtime (no opens, no processes,
//! no sockets). A plan arrives as a call's input and is interpreted here, never in loongd.
//! Each connector call is one kernel call on the worker's own socket, which loongd decides
//! under the authority of the call chain this worker serves and audits with the chain.
//!
//! A batch's calls overlap: each connector call is sent at once and its answer matched by
//! id ([`Link`]), so a parallel batch has up to its in-flight budget of kernel calls out
//! together (loongd bounds them again per worker, `[kernel_calls] max_in_flight`). A call the
//! interpreter drops (its batch failed, the run's budget or wall time is spent) is withdrawn
//! with a `KernelCancel`, and loongd stops it and records its outcome.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    time::{Duration, Instant},
};

use loong_ipc::{
    Budget, ErrorDetail, ErrorKind, FailureKind, InvokeTool, KernelRequest, PlanCallFailure,
    PlanFailed, PlanFailureKind, PluginFailure, RemoteError, RequestId, WorkerRequest,
    WorkerResponse,
};
use loong_worker_plan::{CallError, FailureClass, Kernel, Options, PlanError};
use loong_worker_runtime::{internal, refused, Handler, KernelLink, KernelLinkError};
use serde_json::Value;

/// The one tool this worker serves.
pub const TOOL: &str = "programmatic_tool_call";
/// The shortest time a kernel call is given, even when the plan's wall time is nearly spent
/// (loongd bounds the chain's wall time itself).
const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(10);
/// The longest a call waiting for its answer blocks the plan's thread on the socket before
/// it lets the other calls and the timers (rate limits, backoff) run. An answer that
/// arrives ends the wait at once; this bounds only how late a timer or a send can be.
const READ_SLICE: Duration = Duration::from_millis(2);

#[derive(Debug, Default)]
struct Worker {
    /// The plan's wall time, from the tool's configuration (its `timeout_ms`).
    wall_time: Option<Duration>,
    calls: u64,
}

/// [`Kernel`] over the worker's link: one kernel call per connector call, several in
/// flight at once, matched by id.
///
/// The plan runs on one thread. A call sends its request, then, until its answer is there,
/// reads the socket for at most [`READ_SLICE`] and yields; whichever call reads an answer
/// files it under its id for the call it belongs to.
struct Link {
    link: RefCell<KernelLink>,
    /// Answers read for calls that have not taken them yet.
    answers: RefCell<BTreeMap<RequestId, Result<Vec<u8>, RemoteError>>>,
    /// Set when the link failed: every call still waiting fails with it.
    broken: RefCell<Option<String>>,
    until: Instant,
}

/// Withdraws its kernel call when dropped before the answer was taken: the interpreter
/// dropped the call (a batch stopped, the wall time passed), and loongd stops it.
struct Pending<'a> {
    link: &'a Link,
    id: RequestId,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.link.answers.borrow_mut().remove(&self.id);
            // A failed cancel means a broken link, which every other call meets too.
            let _ = self.link.link.borrow_mut().cancel(self.id);
        }
    }
}

impl Link {
    /// The answer to `id` once it is read, reading the socket for at most one slice.
    fn poll_answer(&self, id: RequestId) -> Option<Result<Vec<u8>, KernelLinkError>> {
        if let Some(a) = self.answers.borrow_mut().remove(&id) {
            return Some(a.map_err(KernelLinkError::Remote));
        }
        if let Some(why) = self.broken.borrow().as_ref() {
            return Some(Err(KernelLinkError::Transport(why.clone())));
        }
        let read = self
            .link
            .borrow_mut()
            .next_answer(Instant::now() + READ_SLICE);
        match read {
            Ok(Some((got, answer))) if got == id => Some(answer.map_err(KernelLinkError::Remote)),
            Ok(Some((got, answer))) => {
                self.answers.borrow_mut().insert(got, answer);
                None
            }
            Ok(None) => None,
            Err(e) => {
                *self.broken.borrow_mut() = Some(e.message());
                Some(Err(e))
            }
        }
    }

    async fn call(&self, req: &KernelRequest) -> Result<Vec<u8>, KernelLinkError> {
        let timeout = self
            .until
            .saturating_duration_since(Instant::now())
            .max(MIN_CALL_TIMEOUT);
        let until = Instant::now() + timeout;
        let id = self.link.borrow_mut().send(req, timeout)?;
        let mut pending = Pending {
            link: self,
            id,
            answered: false,
        };
        loop {
            if let Some(answer) = self.poll_answer(id) {
                pending.answered = true;
                return answer;
            }
            if Instant::now() >= until {
                // Dropping `pending` withdraws the call.
                return Err(KernelLinkError::Timeout(timeout));
            }
            tokio::task::yield_now().await;
        }
    }
}

impl Kernel for Link {
    async fn call_tool(&self, tool: &str, input: Value) -> Result<Value, CallError> {
        let input = serde_json::to_string(&input).map_err(|e| CallError::ToolFailed {
            class: FailureClass::Permanent,
            message: format!("encoding the input of {tool}: {e}"),
        })?;
        let req = KernelRequest::InvokeTool(InvokeTool {
            tool: tool.into(),
            input,
        });
        let bytes = self.call(&req).await.map_err(call_error)?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::ToolFailed {
            class: FailureClass::Permanent,
            message: format!("the answer of {tool} is not JSON: {e}"),
        })
    }
}

/// The interpreter's class of a kernel call that produced no answer, from loongd's typed
/// outcome (never from its prose).
fn call_error(e: KernelLinkError) -> CallError {
    let r: RemoteError = match e {
        KernelLinkError::Remote(r) => r,
        KernelLinkError::Timeout(_) => return CallError::Timeout,
        KernelLinkError::Request(e) => {
            return CallError::ToolFailed {
                class: FailureClass::Permanent,
                message: e.to_string(),
            }
        }
        KernelLinkError::Transport(message) => return CallError::Transport { message },
    };
    let message = r.message.clone();
    match (&r.kind, &r.detail) {
        (_, Some(ErrorDetail::BudgetExceeded(b))) if b.budget == Budget::CallDepth => {
            CallError::DepthExceeded
        }
        (ErrorKind::Overloaded, _) => CallError::Overloaded,
        (_, Some(ErrorDetail::BudgetExceeded(_))) | (ErrorKind::BudgetExceeded, _) => {
            CallError::BudgetExceeded { reason: message }
        }
        (ErrorKind::Denied, _) => CallError::Denied { reason: message },
        (ErrorKind::ApprovalPending, _) => CallError::ApprovalRequired { reason: message },
        (ErrorKind::NotFound, _) => CallError::NotFound,
        (ErrorKind::DeadlineExceeded, _) => CallError::Timeout,
        (_, Some(ErrorDetail::WorkerFailed(class))) => {
            use loong_ipc::FailureClass as Wire;
            let class = match class {
                Wire::WorkerDied
                | Wire::WorkerDeadline
                | Wire::Unavailable
                | Wire::Abandoned
                | Wire::Plugin(
                    FailureKind::Timeout
                    | FailureKind::ConnectFailed
                    | FailureKind::PeerExited
                    | FailureKind::PeerStartFailed,
                ) => FailureClass::Transient,
                Wire::WorkerProtocol | Wire::Plugin(_) => FailureClass::Permanent,
            };
            CallError::ToolFailed { class, message }
        }
        (ErrorKind::SandboxUnavailable, _) => CallError::ToolFailed {
            class: FailureClass::Transient,
            message,
        },
        _ => CallError::ToolFailed {
            class: FailureClass::Permanent,
            message,
        },
    }
}

impl Handler for Worker {
    fn handle_with(
        &mut self,
        req: WorkerRequest,
        link: KernelLink,
    ) -> Result<WorkerResponse, RemoteError> {
        self.serve(req, Some(link))
    }

    fn handle(&mut self, req: WorkerRequest) -> Result<WorkerResponse, RemoteError> {
        self.serve(req, None)
    }
}

impl Worker {
    fn serve(
        &mut self,
        req: WorkerRequest,
        link: Option<KernelLink>,
    ) -> Result<WorkerResponse, RemoteError> {
        Ok(match req {
            WorkerRequest::Builtin(spec) => {
                if let Err(e) = spec.check_bounds() {
                    return Ok(refused(e.to_string()));
                }
                if spec.tool != TOOL {
                    return Ok(refused(format!(
                        "loong-worker-plan serves only {TOOL}, not {:?}",
                        spec.tool
                    )));
                }
                self.wall_time = Some(Duration::from_millis(spec.timeout_ms));
                loong_worker_runtime::one_tool(TOOL)
            }
            WorkerRequest::Invoke {
                plugin_id, input, ..
            } => {
                self.calls += 1;
                let Some(wall_time) = self.wall_time.filter(|_| plugin_id == TOOL) else {
                    return Ok(loong_worker_runtime::not_configured(&plugin_id));
                };
                let Some(link) = link else {
                    return Err(internal("a plan call came without a kernel link"));
                };
                self.run(&input, wall_time, link)?
            }
            other @ (WorkerRequest::Load(_)
            | WorkerRequest::Start(_)
            | WorkerRequest::Connector(_)
            | WorkerRequest::Serve(_)) => {
                loong_worker_runtime::wrong_worker(&other, "loong-worker-plan")
            }
            WorkerRequest::Unload { .. } => {
                self.wall_time = None;
                WorkerResponse::Unloaded
            }
            WorkerRequest::Stats => loong_worker_runtime::stats(
                self.wall_time.iter().map(|_| TOOL.to_string()).collect(),
                self.calls,
            ),
        })
    }

    fn run(
        &self,
        input: &[u8],
        wall_time: Duration,
        link: KernelLink,
    ) -> Result<WorkerResponse, RemoteError> {
        let started = Instant::now();
        let cpu_before = loong_worker_runtime::thread_cpu_us();
        let kernel = Link {
            link: RefCell::new(link),
            answers: RefCell::new(BTreeMap::new()),
            broken: RefCell::new(None),
            until: started + wall_time,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| internal(format!("starting the plan's runtime: {e}")))?;
        let options = Options {
            wall_time,
            jitter_seed: u64::from(std::process::id()) ^ self.calls.rotate_left(32),
        };
        let outcome = runtime.block_on(loong_worker_plan::run(&kernel, input, options));
        Ok(match outcome {
            Ok(answer) => loong_worker_runtime::plain_output(
                serde_json::to_vec(&answer)
                    .map_err(|e| internal(format!("encoding the plan's answer: {e}")))?,
                started,
                cpu_before,
            ),
            // Typed for a client: the error's kind, the step and call it names, the class of
            // a failed connector call; the message is for people.
            Err(failure) => {
                WorkerResponse::Failed(PluginFailure::plan(plan_failed(&failure.error)))
            }
        })
    }
}

/// The wire's typed form of a plan's error.
fn plan_failed(e: &PlanError) -> PlanFailed {
    use PlanFailureKind as K;
    let owned = |s: &Option<String>| s.clone();
    let (kind, step, call, cause) = match e {
        PlanError::PlanTooLarge { .. } => (K::PlanTooLarge, None, None, None),
        PlanError::PlanTooDeep { .. } => (K::PlanTooDeep, None, None, None),
        PlanError::Malformed { .. } => (K::Malformed, None, None, None),
        PlanError::InvalidPlan { step, call, .. } => {
            (K::InvalidPlan, owned(step), owned(call), None)
        }
        PlanError::UnknownStep { step, .. } => (K::UnknownStep, owned(step), None, None),
        PlanError::PointerNotFound { step, .. } => {
            (K::PointerNotFound, Some(step.clone()), None, None)
        }
        PlanError::TemplateError { step, call, .. } => {
            (K::TemplateError, Some(step.clone()), owned(call), None)
        }
        PlanError::ConnectorNotAllowed { step, call, .. } => (
            K::ConnectorNotAllowed,
            Some(step.clone()),
            owned(call),
            None,
        ),
        PlanError::BudgetExceeded { step, call, .. } => {
            (K::BudgetExceeded, owned(step), owned(call), None)
        }
        PlanError::CircuitOpen { step, call, .. } => {
            (K::CircuitOpen, Some(step.clone()), owned(call), None)
        }
        PlanError::StepFailed {
            step, call, cause, ..
        } => (
            K::StepFailed,
            Some(step.clone()),
            owned(call),
            Some(call_class(cause)),
        ),
        PlanError::ValueTooLarge { step, call, .. } => {
            (K::ValueTooLarge, owned(step), owned(call), None)
        }
    };
    PlanFailed::new(kind, step, call, cause, e.to_string())
}

fn call_class(e: &CallError) -> PlanCallFailure {
    use PlanCallFailure as C;
    match e {
        CallError::Denied { .. } => C::Denied,
        CallError::ApprovalRequired { .. } => C::ApprovalRequired,
        CallError::NotFound => C::NotFound,
        CallError::DepthExceeded => C::DepthExceeded,
        CallError::BudgetExceeded { .. } => C::BudgetExceeded,
        CallError::ToolFailed {
            class: FailureClass::Transient,
            ..
        } => C::ToolFailedTransient,
        CallError::ToolFailed {
            class: FailureClass::Permanent,
            ..
        } => C::ToolFailedPermanent,
        CallError::Timeout => C::Timeout,
        CallError::Overloaded => C::Overloaded,
        CallError::Transport { .. } => C::Transport,
    }
}

fn main() {
    let code = loong_worker_runtime::main(
        concat!("loong-worker-plan ", env!("CARGO_PKG_VERSION")),
        || Ok(Worker::default()),
    );
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use loong_ipc::{BudgetExceeded, FailureClass as Wire};

    use super::*;

    fn remote(kind: ErrorKind, detail: Option<ErrorDetail>) -> CallError {
        let r = RemoteError::new(kind, "why");
        call_error(KernelLinkError::Remote(match detail {
            Some(d) => r.with_detail(d),
            None => r,
        }))
    }

    fn budget(budget: Budget) -> Option<ErrorDetail> {
        Some(ErrorDetail::BudgetExceeded(BudgetExceeded {
            budget,
            limit: 3,
        }))
    }

    /// Each typed outcome of loongd is one class; the prose never decides it.
    #[test]
    fn loongds_typed_outcomes_map_to_the_interpreters_classes() {
        let reason = || "why".to_string();
        assert_eq!(
            remote(ErrorKind::Denied, None),
            CallError::Denied { reason: reason() }
        );
        assert_eq!(
            remote(ErrorKind::ApprovalPending, None),
            CallError::ApprovalRequired { reason: reason() }
        );
        assert_eq!(remote(ErrorKind::NotFound, None), CallError::NotFound);
        assert_eq!(
            remote(ErrorKind::BudgetExceeded, budget(Budget::CallDepth)),
            CallError::DepthExceeded
        );
        assert_eq!(
            remote(ErrorKind::BudgetExceeded, budget(Budget::Calls)),
            CallError::BudgetExceeded { reason: reason() }
        );
        assert_eq!(
            remote(ErrorKind::Overloaded, budget(Budget::InFlight)),
            CallError::Overloaded
        );
        assert_eq!(
            remote(ErrorKind::DeadlineExceeded, None),
            CallError::Timeout
        );
        let failed = |class| {
            remote(
                ErrorKind::WorkerFailed,
                Some(ErrorDetail::WorkerFailed(class)),
            )
        };
        for (wire, class) in [
            (Wire::WorkerDied, FailureClass::Transient),
            (Wire::Plugin(FailureKind::Timeout), FailureClass::Transient),
            (Wire::Plugin(FailureKind::Trap), FailureClass::Permanent),
            (Wire::WorkerProtocol, FailureClass::Permanent),
        ] {
            assert_eq!(
                failed(wire),
                CallError::ToolFailed {
                    class,
                    message: reason()
                },
                "{wire:?}"
            );
        }
        assert_eq!(
            call_error(KernelLinkError::Timeout(Duration::from_millis(5))),
            CallError::Timeout
        );
        assert!(matches!(
            call_error(KernelLinkError::Transport("gone".into())),
            CallError::Transport { .. }
        ));
        // Retry follows the class: a denial is never retried, a dead worker is.
        assert!(!remote(ErrorKind::Denied, None).retryable());
        assert!(failed(Wire::WorkerDied).retryable());
    }
}
