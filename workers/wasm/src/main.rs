//! `loong-worker-wasm`: the restricted-tier worker process that runs WASM plugins.
//!
//! loongd starts it in a restricted sandbox with its control socket as fd 3. It builds one
//! engine (and the epoch ticker thread), confines itself a final time through the shared
//! worker runtime, and then loads and calls plugins as loongd asks: modules arrive over the
//! socket, so the worker reads no file at all.

use std::collections::BTreeMap;

use loong_ipc::{
    CallOutput, FailureKind, InvokeTool, KernelRequest, PluginFailure, WorkerRequest,
    WorkerResponse,
};
use loong_worker_runtime::{internal, thread_cpu_us, Handler, KernelLink};
use loong_worker_wasm::{
    InvokeError, LoadError, LoadedPlugin, PluginSpec, ToolCallError, ToolCaller, WasmEngine,
};

struct Worker {
    engine: WasmEngine,
    plugins: BTreeMap<String, LoadedPlugin>,
    calls: u64,
}

fn load_failure(e: &LoadError) -> PluginFailure {
    PluginFailure::new(FailureKind::LoadRefused, e.to_string())
}

fn call_failure(e: &InvokeError) -> PluginFailure {
    let kind = match e {
        InvokeError::InputTooLarge { .. } => FailureKind::InputTooLarge,
        InvokeError::InputNotJson { .. } => FailureKind::InputNotJson,
        InvokeError::MemoryNotExported { .. } => FailureKind::MemoryNotExported,
        InvokeError::OutputWrittenTwice | InvokeError::OutputUnreadable => {
            FailureKind::OutputRefused
        }
        InvokeError::Timeout { .. } => FailureKind::Timeout,
        InvokeError::FuelExhausted { .. } => FailureKind::FuelExhausted,
        InvokeError::MemoryLimit { .. } => FailureKind::MemoryLimit,
        InvokeError::TableLimit => FailureKind::TableLimit,
        InvokeError::OutputTooLarge { .. } => FailureKind::OutputTooLarge,
        InvokeError::Aborted { .. } => FailureKind::Aborted,
        InvokeError::ExitCode { .. } => FailureKind::ExitCode,
        InvokeError::Trap { .. } => FailureKind::Trap,
        InvokeError::OutputNotJson { .. } => FailureKind::OutputNotJson,
    };
    PluginFailure::new(kind, e.to_string())
}

/// `call_tool` as a kernel call on the worker's socket.
struct Kernel(KernelLink);

impl ToolCaller for Kernel {
    fn call_tool(
        &mut self,
        tool: &str,
        input: &str,
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>, ToolCallError> {
        let req = KernelRequest::InvokeTool(InvokeTool {
            tool: tool.into(),
            input: input.into(),
        });
        self.0.call(&req, timeout).map_err(|e| match e.kind_name() {
            "timeout" => ToolCallError::Deadline,
            "denied" => ToolCallError::Denied(e.message()),
            "budget_exceeded" => ToolCallError::OverBudget(e.message()),
            _ => ToolCallError::Failed(e.message()),
        })
    }
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
        link: Option<KernelLink>,
    ) -> Result<WorkerResponse, loong_ipc::RemoteError> {
        Ok(match req {
            WorkerRequest::Load(plugin) => {
                if let Err(e) = plugin.check_bounds() {
                    return Ok(WorkerResponse::Failed(PluginFailure::new(
                        FailureKind::LoadRefused,
                        e.to_string(),
                    )));
                }
                let id = plugin.plugin_id.clone();
                let mut spec = PluginSpec::from(*plugin);
                // An artifact is native code: it is made only before any guest code has run
                // here (loongd refuses one from a worker that has served a call, too).
                spec.want_compiled &= self.calls == 0;
                match self.engine.load_with_cache(spec) {
                    Ok(loaded) => {
                        self.plugins.insert(id.clone(), loaded.plugin);
                        WorkerResponse::Loaded {
                            plugin_id: id,
                            sha256: loaded.sha256,
                            compiled_use: loaded.compiled_use,
                            compiled: loaded.compiled,
                        }
                    }
                    Err(e) if e.poisons_worker() => {
                        // Answered as the worker's own failure: loongd replaces this worker,
                        // which ends the compilation nothing else can stop.
                        return Err(loong_worker_runtime::internal(e.to_string()));
                    }
                    Err(e) => {
                        self.plugins.remove(&id);
                        WorkerResponse::Failed(load_failure(&e))
                    }
                }
            }
            WorkerRequest::Invoke {
                plugin_id, input, ..
            } => {
                self.calls += 1;
                let Some(plugin) = self.plugins.get(&plugin_id) else {
                    return Ok(WorkerResponse::Failed(PluginFailure::new(
                        FailureKind::NotLoaded,
                        format!("plugin {plugin_id} is not loaded in this worker"),
                    )));
                };
                let cpu_before = thread_cpu_us();
                let kernel = link.map(|l| Box::new(Kernel(l)) as Box<dyn ToolCaller>);
                let result = plugin.invoke_with(&input, kernel);
                let cpu_us = thread_cpu_us().saturating_sub(cpu_before);
                match result {
                    Ok(out) => WorkerResponse::Output(CallOutput {
                        output: serde_json::to_vec(&out.output)
                            .map_err(|e| internal(format!("re-encoding output: {e}")))?,
                        logs: out.logs,
                        logs_dropped: out.logs_dropped,
                        wall_us: u64::try_from(out.wall.as_micros()).unwrap_or(u64::MAX),
                        cpu_us,
                        fuel_consumed: out.fuel_consumed,
                        peak_memory_bytes: out.peak_memory_bytes as u64,
                    }),
                    Err(e) => WorkerResponse::Failed(call_failure(&e)),
                }
            }
            WorkerRequest::Unload { plugin_id } => {
                self.plugins.remove(&plugin_id);
                WorkerResponse::Unloaded
            }
            other @ (WorkerRequest::Start(_)
            | WorkerRequest::Connector(_)
            | WorkerRequest::Builtin(_)
            | WorkerRequest::Serve(_)) => {
                loong_worker_runtime::wrong_worker(&other, "loong-worker-wasm")
            }
            WorkerRequest::Stats => {
                loong_worker_runtime::stats(self.plugins.keys().cloned().collect(), self.calls)
            }
        })
    }
}

fn main() {
    let code = loong_worker_runtime::main(
        concat!("loong-worker-wasm ", env!("CARGO_PKG_VERSION")),
        || {
            Ok(Worker {
                engine: WasmEngine::new().map_err(|e| format!("wasm engine: {e}"))?,
                plugins: BTreeMap::new(),
                calls: 0,
            })
        },
    );
    std::process::exit(code);
}
