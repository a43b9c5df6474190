//! Tokens, packs and dry-run decisions on the control API. Every issue, revocation and
//! decision is audited with the operator's uid.

use loong_ipc::{ControlResponse, DecisionView, ErrorKind, PackView, RemoteError, TokenView};
use loong_profiles::pack::{Capability, Grant};
use tokio::net::unix::UCred;

use super::connection::RequestIo;
use crate::{
    audit::{Event, Kind},
    authority::{Outcome, Token},
    Kernel,
};

fn bad(m: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::BadRequest, m)
}

fn internal(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, e.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn view(t: &Token, pack_generation: u64) -> TokenView {
    let state = if t.revoked_ms.is_some() {
        "revoked"
    } else if t.expires_ms <= now_ms() {
        "expired"
    } else if t.generation < pack_generation {
        "stale"
    } else {
        "active"
    };
    TokenView {
        id: t.id.clone(),
        pack: t.pack.clone(),
        agent: t.agent.clone(),
        grants: t.grants.iter().map(ToString::to_string).collect(),
        issued_ms: t.issued_ms,
        expires_ms: t.expires_ms,
        generation: t.generation,
        state: state.into(),
    }
}

fn event(kind: Kind, cred: &UCred, io: &RequestIo, detail: serde_json::Value) -> Event {
    Event {
        kind,
        actor: format!("uid:{}", cred.uid()),
        correlation: io.correlation(),
        detail,
    }
}

/// `tokens issue`.
pub(crate) async fn issue(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    pack: String,
    agent: String,
    grants: Vec<String>,
    ttl_ms: i64,
) -> Result<ControlResponse, RemoteError> {
    let Some(p) = kernel.authority.pack(&pack) else {
        let known: Vec<&str> = kernel.authority.packs().map(|p| p.id.as_str()).collect();
        return Err(bad(format!(
            "unknown pack `{pack}`; packs: {}",
            known.join(", ")
        )));
    };
    let parsed = grants
        .iter()
        .map(|g| Grant::parse(g))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let token = kernel
        .authority
        .tokens
        .issue(p, &agent, parsed, ttl_ms)
        .map_err(|e| bad(e.to_string()))?;
    let detail = serde_json::json!({ "token": token.id, "pack": token.pack, "agent": token.agent, "grants": grants, "expires_ms": token.expires_ms, "generation": token.generation });
    kernel
        .audit
        .record(event(Kind::TokenIssued, cred, io, detail))
        .await
        .map_err(internal)?;
    Ok(ControlResponse::Tokens(vec![view(
        &token,
        token.generation,
    )]))
}

/// `tokens list`.
pub(crate) fn list(kernel: &Kernel) -> Result<ControlResponse, RemoteError> {
    let tokens = kernel.authority.tokens.list().map_err(internal)?;
    let mut out = Vec::with_capacity(tokens.len());
    for t in &tokens {
        out.push(view(
            t,
            kernel
                .authority
                .tokens
                .generation(&t.pack)
                .map_err(internal)?,
        ));
    }
    Ok(ControlResponse::Tokens(out))
}

/// `tokens revoke ID`.
pub(crate) async fn revoke(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    id: String,
) -> Result<ControlResponse, RemoteError> {
    let existed = kernel.authority.tokens.revoke(&id).map_err(internal)?;
    if existed {
        kernel
            .audit
            .record(event(
                Kind::TokenRevoked,
                cred,
                io,
                serde_json::json!({ "token": id }),
            ))
            .await
            .map_err(internal)?;
    }
    Ok(ControlResponse::Revoked {
        existed,
        generation: None,
    })
}

/// `tokens revoke-generation --pack P`.
pub(crate) async fn revoke_generation(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    pack: String,
) -> Result<ControlResponse, RemoteError> {
    if kernel.authority.pack(&pack).is_none() {
        return Err(bad(format!("unknown pack `{pack}`")));
    }
    let generation = kernel
        .authority
        .tokens
        .bump_generation(&pack)
        .map_err(internal)?;
    kernel
        .audit
        .record(event(
            Kind::GenerationBumped,
            cred,
            io,
            serde_json::json!({ "pack": pack, "generation": generation }),
        ))
        .await
        .map_err(internal)?;
    Ok(ControlResponse::Revoked {
        existed: true,
        generation: Some(generation),
    })
}

/// `packs list|show`.
pub(crate) fn packs(kernel: &Kernel) -> Result<ControlResponse, RemoteError> {
    let mut out = Vec::new();
    for p in kernel.authority.packs() {
        out.push(PackView {
            id: p.id.clone(),
            domain: p.domain.clone(),
            version: p.version.clone(),
            summary: p.summary.clone(),
            grants: p.grants.iter().map(ToString::to_string).collect(),
            connectors: p.connectors.clone(),
            approval: p.approval.clone(),
            generation: kernel
                .authority
                .tokens
                .generation(&p.id)
                .map_err(internal)?,
        });
    }
    Ok(ControlResponse::Packs(out))
}

/// Decides one request and audits the decision.
pub(crate) async fn decide(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    token: Option<&str>,
    cap: Capability,
    target: Option<&str>,
    argv: Option<&[String]>,
) -> Result<Outcome, RemoteError> {
    let outcome = kernel
        .authority
        .decide(token, cap, target, argv)
        .map_err(internal)?;
    let detail = serde_json::json!({
        "capability": cap.as_str(), "target": target, "argv": argv, "token": token, "pack": outcome.pack,
        "agent": outcome.agent, "allowed": outcome.allowed(), "reason": outcome.reason(),
    });
    kernel
        .audit
        .record(event(Kind::PolicyDecision, cred, io, detail))
        .await
        .map_err(internal)?;
    Ok(outcome)
}

/// `policy decide` (a dry run).
pub(crate) async fn dry_run(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    token: Option<String>,
    cap: String,
    target: Option<String>,
) -> Result<ControlResponse, RemoteError> {
    let cap: Capability = cap.parse().map_err(bad)?;
    let o = decide(
        kernel,
        cred,
        io,
        token.as_deref(),
        cap,
        target.as_deref(),
        None,
    )
    .await?;
    Ok(ControlResponse::Decided(DecisionView {
        allowed: o.allowed(),
        reason: o.reason(),
        pack: o.pack,
    }))
}
