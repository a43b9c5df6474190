//! What each control request does.

use loong_ipc::{
    ControlRequest, ControlResponse, ErrorKind, RemoteError, StatusReport, PROTOCOL_VERSION,
};
use std::{future::Future, sync::Arc};

use tokio::net::unix::UCred;

use crate::{request::RequestIo, Kernel};

/// Runs a request that changes what is trusted or what runs (a token's or a key's
/// revocation, a plugin's install, enable, disable or removal, a reload) in a task of its
/// own, so that once begun it runs to its end whatever becomes of its answer: its request's
/// deadline or cancellation drops only the wait for it. Dropped midway, the change was on
/// disk (the keyring, the token store, the lockfile, the plugins directory) and not in force
/// (the plugin set still served a removed, disabled or revoked plugin; a revoked token's
/// open connections and browser sessions went on).
async fn to_the_end(
    work: impl Future<Output = Result<ControlResponse, RemoteError>> + Send + 'static,
) -> Result<ControlResponse, RemoteError> {
    tokio::spawn(work).await.unwrap_or_else(|e| {
        Err(RemoteError::new(
            ErrorKind::Internal,
            format!("the request stopped before its end: {e}"),
        ))
    })
}

/// Serves one control request for the peer `cred`.
pub(crate) async fn handle(
    kernel: &Arc<Kernel>,
    req: ControlRequest,
    cred: &UCred,
    io: RequestIo,
) -> Result<ControlResponse, RemoteError> {
    match req {
        ControlRequest::Status => Ok(ControlResponse::Status(status(kernel))),
        ControlRequest::Shutdown => {
            tracing::info!(uid = cred.uid(), pid = ?cred.pid(), "shutdown requested over the control socket");
            kernel.shutdown();
            Ok(ControlResponse::ShuttingDown)
        }
        ControlRequest::Doctor => Ok(ControlResponse::Doctor(crate::sandbox::doctor(kernel))),
        ControlRequest::SandboxRun(req) => crate::sandbox::run(kernel, *req, cred, io).await,
        ControlRequest::PolicyCheck { file, text } => {
            if text.len() > loong_ipc::message::control::MAX_POLICY_TEXT_BYTES {
                return Err(RemoteError::new(
                    ErrorKind::BadRequest,
                    format!(
                        "{file} is {} bytes, above the 1 MiB limit for a policy file",
                        text.len()
                    ),
                ));
            }
            let problems = loong_profiles::check(&text, &file)
                .iter()
                .map(ToString::to_string)
                .collect();
            Ok(ControlResponse::PolicyReport { problems })
        }
        ControlRequest::AuditQuery(q) => super::audit_api::query(kernel, q).await,
        ControlRequest::AuditShow { seq } => super::audit_api::show(kernel, seq).await,
        ControlRequest::AuditVerify => super::audit_api::verify(kernel).await,
        ControlRequest::AuditSummary { group_by } => {
            super::audit_api::summary(kernel, group_by).await
        }
        ControlRequest::AuditTokenTrail { token, page } => {
            super::audit_api::token_trail(kernel, token, page).await
        }
        ControlRequest::TokenIssue {
            pack,
            agent,
            grants,
            ttl_ms,
        } => super::authority_api::issue(kernel, cred, &io, pack, agent, grants, ttl_ms).await,
        ControlRequest::TokenList(page) => super::authority_api::list(kernel, &page),
        ControlRequest::TokenRevoke { id } => {
            let (kernel, cred) = (kernel.clone(), *cred);
            to_the_end(async move { super::authority_api::revoke(&kernel, &cred, &io, id).await })
                .await
        }
        ControlRequest::TokenRevokeGeneration { pack } => {
            let (kernel, cred) = (kernel.clone(), *cred);
            to_the_end(async move {
                super::authority_api::revoke_generation(&kernel, &cred, &io, pack).await
            })
            .await
        }
        ControlRequest::PackList(page) => super::authority_api::packs(kernel, &page),
        ControlRequest::ApprovalList(page) => super::authority_api::approvals(kernel, &page).await,
        r @ (ControlRequest::KeyAdd { .. }
        | ControlRequest::KeyList(_)
        | ControlRequest::KeyRevoke { .. }
        | ControlRequest::KeyRotate { .. }) => {
            let (kernel, cred) = (kernel.clone(), *cred);
            to_the_end(async move { super::authority_api::keys(&kernel, &cred, &io, r).await })
                .await
        }
        ControlRequest::ApprovalResolve {
            id,
            approve,
            full_access,
            token,
        } => {
            super::authority_api::resolve(kernel, cred, &io, id, approve, full_access, token).await
        }
        ControlRequest::PolicyDecide { token, cap, target } => {
            super::authority_api::dry_run(kernel, cred, &io, token, cap, target).await
        }
        ControlRequest::Invoke(req) => super::tools_api::invoke(kernel, cred, &io, req).await,
        ControlRequest::PluginList(page) => Ok(super::tools_api::list(kernel, &page)),
        ControlRequest::PluginReload => {
            let kernel = kernel.clone();
            to_the_end(async move { Ok(super::tools_api::reload(&kernel).await) }).await
        }
        ControlRequest::PluginShow { id } => super::tools_api::show(kernel, &id),
        ControlRequest::WorkerList(page) => super::tools_api::workers(kernel, &page),
        ControlRequest::WorkerKill { id } => super::tools_api::kill(kernel, cred, id),
        ControlRequest::ToolSearch(req) => super::tools_api::search(kernel, cred, &io, req).await,
        ControlRequest::PluginInstall {
            path,
            upgrade_only,
            trust,
        } => {
            let (kernel, cred) = (kernel.clone(), *cred);
            to_the_end(async move {
                super::plugins_api::install(&kernel, &cred, &io, path, upgrade_only, trust).await
            })
            .await
        }
        ControlRequest::PluginEnable { id } => {
            let (kernel, cred) = (kernel.clone(), *cred);
            to_the_end(async move {
                super::plugins_api::set_enabled(&kernel, &cred, &io, id, true).await
            })
            .await
        }
        ControlRequest::PluginDisable { id } => {
            let (kernel, cred) = (kernel.clone(), *cred);
            to_the_end(async move {
                super::plugins_api::set_enabled(&kernel, &cred, &io, id, false).await
            })
            .await
        }
        ControlRequest::PluginRemove { id } => {
            let (kernel, cred) = (kernel.clone(), *cred);
            to_the_end(async move { super::plugins_api::remove(&kernel, &cred, &io, id).await })
                .await
        }
        ControlRequest::PluginVerifyLock => super::plugins_api::verify_lock(kernel).await,
        ControlRequest::Metrics => Ok(ControlResponse::Metrics(
            crate::metrics::METRICS.render(kernel),
        )),
        ControlRequest::SecretSet { name, value, hosts } => {
            super::secrets_api::set(kernel, cred, &io, name, value, hosts).await
        }
        ControlRequest::SecretList => super::secrets_api::list(),
        ControlRequest::SecretRemove { name } => {
            super::secrets_api::remove(kernel, cred, &io, name).await
        }
        ControlRequest::Ask(req) => super::agent_api::ask(kernel, cred, &io, req).await,
        ControlRequest::MemoryList(page) => super::agent_api::list(kernel, cred, &io, page).await,
        ControlRequest::MemoryShow { session } => {
            super::agent_api::show(kernel, cred, &io, session).await
        }
        ControlRequest::MemoryClear { session } => {
            super::agent_api::clear(kernel, cred, &io, session).await
        }
        ControlRequest::GatewayRun => crate::services::gateway::run(kernel),
        ControlRequest::GatewayStatus => Ok(crate::services::gateway::status(kernel)),
        ControlRequest::GatewayStop { drain_ms } => {
            crate::services::gateway::stop(kernel, drain_ms).await
        }
        ControlRequest::ChannelAdd(req) => super::channels_api::add(kernel, cred, &io, *req).await,
        ControlRequest::ChannelList => super::channels_api::list(kernel),
        ControlRequest::ChannelStatus { name } => super::channels_api::status(kernel, &name),
        ControlRequest::ChannelRemove { name } => {
            super::channels_api::remove(kernel, cred, &io, name).await
        }
        ControlRequest::ChannelRestart { name } => {
            super::channels_api::restart(kernel, cred, &io, name).await
        }
    }
}

pub(super) fn status(kernel: &Kernel) -> StatusReport {
    // A system call each time otherwise, on the path of every `status`; loongd's pid does
    // not change while it serves (it forks nothing that serves the control socket).
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: PROTOCOL_VERSION,
        pid: *PID.get_or_init(std::process::id),
        uptime_ms: u64::try_from(kernel.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        home: kernel.layout.home.to_string_lossy().into_owned(),
        socket_path: kernel.layout.socket.to_string_lossy().into_owned(),
        connected_clients: kernel.connected(),
    }
}
