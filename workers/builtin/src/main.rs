//! `loong-worker-builtin`: the balanced-tier worker for one built-in tool. loongd starts one
//! per tool, with the tool's roots as the sandbox's grants (read-only for `file.read`,
//! read-write for the others). It does not take the final self-confinement step: file tools
//! open paths and `shell.exec` starts a shell, so the tier's sandbox, with exactly those
//! grants, is the boundary.

use loong_ipc::{WorkerRequest, WorkerResponse};
use loong_worker_runtime::{internal, refused, Final, Handler};

#[derive(Debug, Default)]
struct Worker {
    tool: Option<loong_worker_builtin::Builtin>,
    calls: u64,
}

impl Handler for Worker {
    fn handle(&mut self, req: WorkerRequest) -> Result<WorkerResponse, loong_ipc::RemoteError> {
        Ok(match req {
            WorkerRequest::Builtin(spec) => {
                if let Err(e) = spec.check_bounds() {
                    return Ok(refused(e.to_string()));
                }
                if !loong_worker_builtin::TOOLS.contains(&spec.tool.as_str()) {
                    return Ok(refused(format!("no built-in tool {:?}", spec.tool)));
                }
                // A file tool holds its roots open first (every call's file is opened beneath
                // one), then narrows itself to them, below the tier's system directories: a
                // symlink out of a root then leads nowhere.
                let tool = match loong_worker_builtin::Builtin::configure((*spec).clone()) {
                    Ok(t) => t,
                    Err(e) => {
                        return Err(internal(format!("opening the roots of {}: {e}", spec.tool)))
                    }
                };
                let roots: Vec<std::path::PathBuf> =
                    spec.roots.iter().map(std::path::PathBuf::from).collect();
                let confined = match spec.tool.as_str() {
                    "file.read" => loong_sandbox::worker::confine_to_roots(&roots, &[]),
                    "file.write" | "file.edit" => {
                        loong_sandbox::worker::confine_to_roots(&[], &roots)
                    }
                    _ => Ok(()),
                };
                if let Err(e) = confined {
                    return Err(internal(format!(
                        "confining {} to its roots: {e}",
                        spec.tool
                    )));
                }
                let answer = loong_worker_runtime::one_tool(&spec.tool);
                self.tool = Some(tool);
                answer
            }
            WorkerRequest::Invoke {
                plugin_id,
                input,
                decided,
                ..
            } => {
                self.calls += 1;
                let Some(tool) = self.tool.as_ref().filter(|t| t.spec.tool == plugin_id) else {
                    return Ok(loong_worker_runtime::not_configured(&plugin_id));
                };
                let started = std::time::Instant::now();
                let cpu_before =
                    loong_worker_runtime::thread_cpu_us() + loong_worker_runtime::children_cpu_us();
                match tool.run(&input, decided.as_ref()) {
                    Ok(out) => loong_worker_runtime::plain_output(
                        serde_json::to_vec(&out)
                            .map_err(|e| internal(format!("encoding the answer: {e}")))?,
                        started,
                        cpu_before,
                    ),
                    Err(e) => WorkerResponse::Failed(e.failure(&plugin_id)),
                }
            }
            other @ (WorkerRequest::Load(_)
            | WorkerRequest::Start(_)
            | WorkerRequest::Connector(_)
            | WorkerRequest::Serve(_)) => {
                loong_worker_runtime::wrong_worker(&other, "loong-worker-builtin")
            }
            WorkerRequest::Unload { .. } => {
                self.tool = None;
                WorkerResponse::Unloaded
            }
            WorkerRequest::Stats => loong_worker_runtime::stats(
                self.tool.iter().map(|t| t.spec.tool.clone()).collect(),
                self.calls,
            ),
        })
    }
}

fn main() {
    let code = loong_worker_runtime::main_with(
        concat!("loong-worker-builtin ", env!("CARGO_PKG_VERSION")),
        Final::TierOnly,
        || Ok(Worker::default()),
    );
    std::process::exit(code);
}
