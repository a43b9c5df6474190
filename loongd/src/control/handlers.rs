//! What each control request does.

use loong_ipc::{ControlRequest, ControlResponse, RemoteError, StatusReport, PROTOCOL_VERSION};
use tokio::net::unix::UCred;

use crate::Kernel;

/// Serves one control request for the peer `cred`.
pub(crate) async fn handle(
    kernel: &Kernel,
    req: ControlRequest,
    cred: &UCred,
) -> Result<ControlResponse, RemoteError> {
    match req {
        ControlRequest::Status => Ok(ControlResponse::Status(status(kernel))),
        ControlRequest::Shutdown => {
            tracing::info!(uid = cred.uid(), pid = ?cred.pid(), "shutdown requested over the control socket");
            kernel.shutdown();
            Ok(ControlResponse::ShuttingDown)
        }
    }
}

fn status(kernel: &Kernel) -> StatusReport {
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: PROTOCOL_VERSION,
        pid: std::process::id(),
        uptime_ms: u64::try_from(kernel.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        home: kernel.layout.home.to_string_lossy().into_owned(),
        socket_path: kernel.layout.socket.to_string_lossy().into_owned(),
        connected_clients: kernel.connected(),
    }
}
