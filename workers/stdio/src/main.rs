//! `loong-worker-stdio`: the balanced-tier worker that runs one foreign program.
//!
//! loongd starts it in a balanced sandbox that carries the plugin's grants, with its control
//! socket as fd 3 (close-on-exec, so the program never sees it). On `Start` it runs the
//! program as its child, inside the same sandbox, and speaks JSON lines or MCP with it (see
//! the library). Unlike the WASM worker it does not take the final self-confinement step:
//! it must be able to start the program again after a failure, so the tier's sandbox, which
//! the program inherits, is the boundary.

use loong_ipc::{CallOutput, FailureKind, PluginFailure, WorkerRequest, WorkerResponse};
use loong_worker_runtime::{refused, Final, Handler, KernelLink};
use loong_worker_stdio::Peer;

#[derive(Debug, Default)]
struct Worker {
    peer: Option<Peer>,
    calls: u64,
}

impl Handler for Worker {
    fn handle_with(
        &mut self,
        req: WorkerRequest,
        link: KernelLink,
    ) -> Result<WorkerResponse, loong_ipc::RemoteError> {
        self.serve(req, Some(link))
    }

    fn handle(&mut self, req: WorkerRequest) -> Result<WorkerResponse, loong_ipc::RemoteError> {
        self.serve(req, None)
    }
}

impl Worker {
    fn serve(
        &mut self,
        req: WorkerRequest,
        mut link: Option<KernelLink>,
    ) -> Result<WorkerResponse, loong_ipc::RemoteError> {
        Ok(match req {
            WorkerRequest::Start(spec) => {
                if let Err(e) = spec.check_bounds() {
                    return Ok(refused(e.to_string()));
                }
                if let Some(p) = &self.peer {
                    if p.plugin_id() != spec.plugin_id {
                        return Ok(refused(format!(
                            "this worker serves plugin {}, not {}",
                            p.plugin_id(),
                            spec.plugin_id
                        )));
                    }
                }
                let peer = self.peer.insert(Peer::new(*spec));
                match peer.start() {
                    Ok(tools) => WorkerResponse::Described(tools),
                    Err(f) => WorkerResponse::Failed(f),
                }
            }
            WorkerRequest::Invoke {
                plugin_id, input, ..
            } => {
                self.calls += 1;
                let Some(peer) = self.peer.as_mut() else {
                    return Ok(WorkerResponse::Failed(PluginFailure::new(
                        FailureKind::NotLoaded,
                        "no program was started in this worker".to_string(),
                    )));
                };
                let started = std::time::Instant::now();
                match peer.call_with(&plugin_id, &input, link.as_mut()) {
                    Ok(a) => WorkerResponse::Output(CallOutput {
                        output: a.output,
                        logs: a.logs,
                        logs_dropped: a.logs_dropped,
                        wall_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                        cpu_us: a.cpu_us,
                        fuel_consumed: None,
                        peak_memory_bytes: a.peak_memory_bytes,
                    }),
                    Err(f) => WorkerResponse::Failed(f),
                }
            }
            WorkerRequest::Unload { .. } => {
                self.peer = None;
                WorkerResponse::Unloaded
            }
            other @ (WorkerRequest::Load(_)
            | WorkerRequest::Connector(_)
            | WorkerRequest::Builtin(_)
            | WorkerRequest::Serve(_)) => {
                loong_worker_runtime::wrong_worker(&other, "loong-worker-stdio")
            }
            WorkerRequest::Stats => loong_worker_runtime::stats(
                self.peer
                    .iter()
                    .map(|p| p.plugin_id().to_string())
                    .collect(),
                self.calls,
            ),
        })
    }
}

fn main() {
    let code = loong_worker_runtime::main_with(
        concat!("loong-worker-stdio ", env!("CARGO_PKG_VERSION")),
        Final::TierOnly,
        || Ok(Worker::default()),
    );
    std::process::exit(code);
}
