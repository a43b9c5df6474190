//! `loong-worker-plan`: the restricted-tier worker that runs `programmatic_tool_call` plans.
//!
//! loongd starts it in a restricted sandbox with no grant at all (like the WASM worker); it
//! confines itself a final time through the shared worker runtime (no opens, no processes,
//! no sockets). A plan arrives as a call's input and is interpreted here, never in loongd.
//! Each connector call is one kernel call on the worker's own socket, which loongd decides
//! under the authority of the call chain this worker serves and audits with the chain.
//!
//! Kernel calls are made one at a time: [`KernelLink`] is a blocking link, so a batch's calls
//! run in order even when the plan allows several in flight (its concurrency limit still
//! bounds them; it is never exceeded).

use std::{
    cell::RefCell,
    time::{Duration, Instant},
};

use loong_ipc::{
    Budget, ErrorDetail, ErrorKind, FailureKind, InvokeTool, KernelRequest, PluginFailure,
    RemoteError, WorkerRequest, WorkerResponse,
};
use loong_worker_plan::{CallError, FailureClass, Kernel, Options};
use loong_worker_runtime::{internal, refused, Handler, KernelLink, KernelLinkError};
use serde_json::Value;

/// The one tool this worker serves.
pub const TOOL: &str = "programmatic_tool_call";
/// The shortest time a kernel call is given, even when the plan's wall time is nearly spent
/// (loongd bounds the chain's wall time itself).
const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(10);

#[derive(Debug, Default)]
struct Worker {
    /// The plan's wall time, from the tool's configuration (its `timeout_ms`).
    wall_time: Option<Duration>,
    calls: u64,
}

/// [`Kernel`] over the worker's link: one kernel call per connector call, matched by id.
struct Link {
    link: RefCell<KernelLink>,
    until: Instant,
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
        let timeout = self
            .until
            .saturating_duration_since(Instant::now())
            .max(MIN_CALL_TIMEOUT);
        let bytes = self
            .link
            .borrow_mut()
            .call(&req, timeout)
            .map_err(call_error)?;
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
            | WorkerRequest::Connector(_)) => {
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
            // The failure as JSON (its class, the step it names, the telemetry so far):
            // typed for a client, not prose.
            Err(failure) => WorkerResponse::Failed(PluginFailure::new(
                FailureKind::ToolError,
                serde_json::to_string(&failure)
                    .map_err(|e| internal(format!("encoding the plan's failure: {e}")))?,
            )),
        })
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
