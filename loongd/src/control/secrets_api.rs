//! `secrets set | list | rm` on the control API. A change is audited with the operator's uid
//! and the secret's name; no answer, record or log line carries a value.

use loong_ipc::{ControlResponse, ErrorKind, RemoteError, SecretValue};
use tokio::net::unix::UCred;

use crate::{
    audit::Kind,
    effects::Actor,
    request::RequestIo,
    secrets::{self, SecretError},
    Kernel,
};

fn refused(e: SecretError) -> RemoteError {
    let kind = match e {
        SecretError::Unknown(_) => ErrorKind::NotFound,
        SecretError::Store { .. } => ErrorKind::Internal,
        _ => ErrorKind::BadRequest,
    };
    RemoteError::new(kind, e.to_string())
}

fn store() -> Result<&'static secrets::Secrets, RemoteError> {
    secrets::store()
        .ok_or_else(|| RemoteError::new(ErrorKind::Internal, "the secret store is not open"))
}

/// `secrets set NAME`.
pub(crate) async fn set(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    name: String,
    value: SecretValue,
    hosts: Vec<String>,
) -> Result<ControlResponse, RemoteError> {
    let view = store()?
        .set(&name, value.expose(), &hosts)
        .map_err(refused)?;
    let detail = serde_json::json!({ "name": name, "hosts": view.hosts });
    record(kernel, cred, io, Kind::SecretSet, detail).await?;
    Ok(ControlResponse::Secrets(vec![view]))
}

/// `secrets list`.
pub(crate) fn list() -> Result<ControlResponse, RemoteError> {
    Ok(ControlResponse::Secrets(store()?.list()))
}

/// `secrets rm NAME`.
pub(crate) async fn remove(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    name: String,
) -> Result<ControlResponse, RemoteError> {
    let view = store()?.remove(&name).map_err(refused)?;
    record(
        kernel,
        cred,
        io,
        Kind::SecretRemoved,
        serde_json::json!({ "name": name }),
    )
    .await?;
    Ok(ControlResponse::Secrets(vec![view]))
}

async fn record(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    kind: Kind,
    detail: serde_json::Value,
) -> Result<(), RemoteError> {
    let event = Actor::operator(cred.uid(), None, io).event(kind, detail);
    kernel
        .audit
        .record(event)
        .await
        .map(|_| ())
        .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))
}
