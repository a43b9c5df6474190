//! The gateway service's kernel calls (`gateway_*`): each carries the bearer secret of the
//! HTTP request it serves and is decided under that token.

use loong_ipc::{ErrorKind, RemoteError, ServiceCall};

use super::ServiceHost;

/// Serves one `gateway_*` kernel call.
pub(crate) async fn handle(
    _host: &ServiceHost,
    _worker: u64,
    call: ServiceCall,
) -> Result<Vec<u8>, RemoteError> {
    Err(RemoteError::new(
        ErrorKind::NotFound,
        format!(
            "kernel call {} is not a gateway kernel call this loongd knows",
            call.kind
        ),
    ))
}
