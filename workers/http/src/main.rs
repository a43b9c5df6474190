//! `loong-worker-http`: the balanced-tier worker that runs one `http_json` connector.
//!
//! Its sandbox has no network at all (an empty network namespace). For each call loongd
//! connects to the endpoint's pinned address and passes the connected socket on fd 4
//! (`SCM_RIGHTS`), then sends the `Invoke`; the worker speaks HTTP/1.1 on that one socket and
//! closes it. After initialisation it takes the final self-confinement step like the WASM
//! worker: no opens, no new sockets, no connects, no processes.

use std::{
    net::TcpStream,
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use loong_ipc::{HttpSpec, WorkerRequest, WorkerResponse};
use loong_worker_runtime::{internal, refused, Handler};

/// How long the socket for a call may take to arrive after its request.
const SOCKET_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Worker {
    broker: UnixStream,
    spec: Option<HttpSpec>,
    calls: u64,
}

impl Worker {
    /// The connected socket loongd passed for this call.
    fn receive_socket(&self) -> Result<TcpStream, String> {
        loong_sandbox::worker::receive_connection(&self.broker, SOCKET_WAIT)
            .map(TcpStream::from)
            .map_err(|e| format!("receiving the connection from loongd: {e}"))
    }
}

impl Handler for Worker {
    fn handle(&mut self, req: WorkerRequest) -> Result<WorkerResponse, loong_ipc::RemoteError> {
        Ok(match req {
            WorkerRequest::Connector(spec) => {
                if let Err(e) = spec.check_bounds() {
                    return Ok(refused(e.to_string()));
                }
                let answer = loong_worker_runtime::one_tool(&spec.plugin_id);
                self.spec = Some(*spec);
                answer
            }
            WorkerRequest::Invoke {
                plugin_id, input, ..
            } => {
                self.calls += 1;
                let Some(spec) = self.spec.as_ref().filter(|s| s.plugin_id == plugin_id) else {
                    return Ok(loong_worker_runtime::not_configured(&plugin_id));
                };
                // A socket that does not arrive is loongd's and this worker's problem, not
                // the connector's: the worker is replaced.
                let stream = self.receive_socket().map_err(internal)?;
                let started = Instant::now();
                let cpu_before =
                    loong_worker_runtime::thread_cpu_us() + loong_worker_runtime::children_cpu_us();
                let answer = if spec.fetch {
                    // loongd wrote this input from the URL it decided on and connected to.
                    let target: serde_json::Value = serde_json::from_slice(&input)
                        .map_err(|e| internal(format!("a fetch target from loongd: {e}")))?;
                    let field = |k: &str| {
                        target
                            .get(k)
                            .and_then(serde_json::Value::as_str)
                            .map(String::from)
                            .ok_or_else(|| internal(format!("a fetch target without {k}")))
                    };
                    loong_worker_http::get(stream, spec, &field("host")?, &field("path")?)
                } else {
                    loong_worker_http::post(stream, spec, &input)
                };
                match answer {
                    Ok(output) => loong_worker_runtime::plain_output(output, started, cpu_before),
                    Err(e) => WorkerResponse::Failed(e.failure(&plugin_id)),
                }
            }
            WorkerRequest::Unload { .. } => {
                self.spec = None;
                WorkerResponse::Unloaded
            }
            other @ (WorkerRequest::Load(_)
            | WorkerRequest::Start(_)
            | WorkerRequest::Builtin(_)) => {
                loong_worker_runtime::wrong_worker(&other, "loong-worker-http")
            }
            WorkerRequest::Stats => loong_worker_runtime::stats(
                self.spec.iter().map(|s| s.plugin_id.clone()).collect(),
                self.calls,
            ),
        })
    }
}

fn main() {
    let code = loong_worker_runtime::main(
        concat!("loong-worker-http ", env!("CARGO_PKG_VERSION")),
        || {
            let broker = loong_sandbox::worker::inherited_broker()
                .map_err(|e| format!("no connection socket on fd 4: {e}"))?;
            Ok(Worker {
                broker,
                spec: None,
                calls: 0,
            })
        },
    );
    std::process::exit(code);
}
