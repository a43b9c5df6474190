//! `loong-worker-http`: the balanced-tier worker that runs one `http_json` connector.
//!
//! Its sandbox has no network at all (an empty network namespace). For each call loongd
//! connects to the endpoint's pinned address and passes the connected socket on fd 4
//! (`SCM_RIGHTS`), then sends the `Invoke`; the worker speaks HTTP/1.1 on that one socket (over
//! TLS for an `https://` endpoint, verified against the roots its spec carries) and
//! closes it. After initialisation it takes the final self-confinement step like the WASM
//! worker: no opens, no new sockets, no connects, no processes.

use std::{
    net::TcpStream,
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use loong_ipc::{HttpSpec, WorkerRequest, WorkerResponse};
use loong_worker_http::{Target, Trust};
use loong_worker_runtime::{internal, refused, Handler};

/// How long the socket for a call may take to arrive after its request.
const SOCKET_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Worker {
    broker: UnixStream,
    spec: Option<HttpSpec>,
    /// The roots the spec's anchors and the public ones make, built once per spec.
    trust: Option<Trust>,
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
                let trust = match Trust::new(&spec.trust) {
                    Ok(t) => t,
                    Err(e) => return Ok(refused(e.to_string())),
                };
                let answer = loong_worker_runtime::one_tool(&spec.plugin_id);
                self.spec = Some(*spec);
                self.trust = Some(trust);
                answer
            }
            WorkerRequest::Invoke {
                plugin_id,
                input,
                headers,
                ..
            } => {
                self.calls += 1;
                let (Some(spec), Some(trust)) = (
                    self.spec.as_ref().filter(|s| s.plugin_id == plugin_id),
                    self.trust.as_ref(),
                ) else {
                    return Ok(loong_worker_runtime::not_configured(&plugin_id));
                };
                if let Err(e) = loong_ipc::message::worker::check_call_headers(&headers) {
                    return Ok(refused(e.to_string()));
                }
                let headers: Vec<(String, String)> = headers
                    .into_iter()
                    .map(|(name, value)| (name, value.expose().to_string()))
                    .collect();
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
                    let (host, path, name) =
                        (field("host")?, field("path")?, field("server_name")?);
                    let Some(tls) = target.get("tls").and_then(serde_json::Value::as_bool) else {
                        return Err(internal("a fetch target without tls"));
                    };
                    let to = Target {
                        host: &host,
                        path: &path,
                        tls: tls.then_some((name.as_str(), trust)),
                    };
                    loong_worker_http::get(stream, spec, to)
                } else {
                    let to = Target {
                        host: &spec.host,
                        path: &spec.path,
                        tls: spec.tls.then_some((spec.server_name.as_str(), trust)),
                    };
                    loong_worker_http::post(stream, spec, to, &headers, &input)
                };
                match answer {
                    Ok(output) => loong_worker_runtime::plain_output(output, started, cpu_before),
                    Err(e) => WorkerResponse::Failed(e.failure(&plugin_id)),
                }
            }
            WorkerRequest::Unload { .. } => {
                self.spec = None;
                self.trust = None;
                WorkerResponse::Unloaded
            }
            other @ (WorkerRequest::Load(_)
            | WorkerRequest::Start(_)
            | WorkerRequest::Builtin(_)
            | WorkerRequest::Serve(_)) => {
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
                trust: None,
                calls: 0,
            })
        },
    );
    std::process::exit(code);
}
