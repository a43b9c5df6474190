//! The plugin lifecycle on the control socket: `plugins install|upgrade DIR`,
//! `enable|disable|remove ID` and `verify --lock`, translated to `registry::lifecycle`.

use loong_ipc::{ControlResponse, ErrorKind, RemoteError};
use loong_profiles::plugin::TrustTier;
use tokio::net::unix::UCred;

use crate::{registry::lifecycle, request::RequestIo, Kernel};

/// `plugins install DIR` and `plugins upgrade DIR`.
pub(crate) async fn install(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    path: String,
    upgrade_only: bool,
    trust: Option<String>,
) -> Result<ControlResponse, RemoteError> {
    let ceiling: Option<TrustTier> = trust
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: String| RemoteError::new(ErrorKind::BadRequest, format!("--trust {e}")))?;
    lifecycle::install(kernel, cred, io, path, upgrade_only, ceiling)
        .await
        .map(ControlResponse::Plugins)
}

/// `plugins enable|disable ID`.
pub(crate) async fn set_enabled(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    id: String,
    enabled: bool,
) -> Result<ControlResponse, RemoteError> {
    lifecycle::set_enabled(kernel, cred, io, id, enabled)
        .await
        .map(ControlResponse::Plugins)
}

/// `plugins remove ID`.
pub(crate) async fn remove(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    id: String,
) -> Result<ControlResponse, RemoteError> {
    lifecycle::remove(kernel, cred, io, id)
        .await
        .map(ControlResponse::Plugins)
}

/// `plugins verify --lock`.
pub(crate) async fn verify_lock(kernel: &Kernel) -> Result<ControlResponse, RemoteError> {
    lifecycle::verify_lock(kernel)
        .await
        .map(ControlResponse::LockReport)
}
