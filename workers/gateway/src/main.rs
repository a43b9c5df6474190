//! `loong-worker-gateway`: Loong as an MCP server over streamable HTTP (`/mcp`) and an
//! OpenAI/Anthropic-compatible endpoint, for the agents people already run.
//!
//! A service worker (balanced tier, no file-system grant, no network of its own): loongd
//! binds `[gateway] listen` and passes the listener as fd 4, then sends one `Serve`. The
//! worker parses HTTP (loongd never does); each request becomes kernel calls
//! (`gateway_auth`, `gateway_list`, `gateway_invoke`, …) carrying the request's bearer
//! secret, which loongd decides under that token. The worker decides nothing and keeps a
//! secret no longer than its request (its limits know a token by the secret's sha256).
//! When loongd withdraws `Serve`, the worker stops accepting, lets the requests in flight
//! finish, closes the streams and answers `Stopped`.

mod chat;
mod config;
mod http;
mod limits;
mod mcp;
#[cfg(debug_assertions)]
mod test_hook;
mod webhook;

use std::os::fd::OwnedFd;

use loong_ipc::{RemoteError, WorkerRequest, WorkerResponse};
use loong_worker_runtime::{service::AsyncLink, BuildError, Final, Handler, KernelLink};

/// Threads of the worker's runtime.
pub const RUNTIME_THREADS: usize = 2;

struct Gateway {
    /// The listener loongd passed (fd 4), until `Serve` takes it.
    listener: Option<OwnedFd>,
    /// The runtime, built before the final confinement (its drivers make descriptors,
    /// a socketpair among them, which the confined worker may no longer make).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Handler for Gateway {
    fn handle(&mut self, req: WorkerRequest) -> Result<WorkerResponse, RemoteError> {
        Ok(match req {
            WorkerRequest::Stats => loong_worker_runtime::stats(Vec::new(), 0),
            WorkerRequest::Serve(_) => {
                loong_worker_runtime::refused("the gateway serves only with its kernel link".into())
            }
            other => loong_worker_runtime::wrong_worker(&other, "loong-worker-gateway"),
        })
    }

    fn handle_with(
        &mut self,
        req: WorkerRequest,
        link: KernelLink,
    ) -> Result<WorkerResponse, RemoteError> {
        let WorkerRequest::Serve(spec) = req else {
            drop(link);
            return self.handle(req);
        };
        if spec.service != "gateway" {
            return Ok(loong_worker_runtime::refused(format!(
                "service {}: loong-worker-gateway serves only the gateway",
                spec.service
            )));
        }
        let cfg = match config::Config::parse(&spec.config_json) {
            Ok(c) => c,
            Err(e) => return Ok(loong_worker_runtime::refused(e.to_string())),
        };
        let Some(listener) = self.listener.take() else {
            return Ok(loong_worker_runtime::refused(
                "the gateway's listener was served already; loongd starts a new worker for each Serve".into(),
            ));
        };
        let Some(runtime) = self.runtime.take() else {
            return Ok(loong_worker_runtime::refused(
                "the gateway's runtime was used already; loongd starts a new worker for each Serve"
                    .into(),
            ));
        };
        let link = AsyncLink::start(link)
            .map_err(|e| loong_worker_runtime::internal(format!("the kernel link: {e}")))?;
        let served = runtime.block_on(http::serve(cfg, listener, link.clone()));
        link.close();
        runtime.shutdown_timeout(std::time::Duration::from_millis(100));
        match served {
            Ok(()) => Ok(WorkerResponse::Stopped),
            Err(e) => Ok(loong_worker_runtime::refused(e.to_string())),
        }
    }
}

fn main() {
    let code = loong_worker_runtime::main_with(
        concat!("loong-worker-gateway ", env!("CARGO_PKG_VERSION")),
        Final::ConfineAccepting,
        || {
            let listener = loong_sandbox::worker::inherited_broker()
                .map_err(|e| BuildError(format!("no listener on fd 4: {e}")))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(RUNTIME_THREADS)
                .enable_all()
                .build()
                .map_err(|e| BuildError(format!("the runtime: {e}")))?;
            Ok(Gateway {
                listener: Some(OwnedFd::from(listener)),
                runtime: Some(runtime),
            })
        },
    );
    std::process::exit(code);
}
