//! A channel service's kernel calls (`channel_*`). A stand-in: every kind is answered as
//! unsupported until the channel workers land.

use loong_ipc::{ErrorKind, RemoteError, ServiceCall};

use super::ServiceHost;

/// Serves one `channel_*` kernel call of channel `host.name`.
pub(crate) async fn handle(
    host: &ServiceHost,
    _worker: u64,
    call: ServiceCall,
) -> Result<Vec<u8>, RemoteError> {
    Err(RemoteError::new(
        ErrorKind::NotFound,
        format!(
            "kernel call {}: channel kernel calls are unsupported in this loongd (channel {})",
            call.kind, host.name
        ),
    ))
}
