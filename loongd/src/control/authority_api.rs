//! Tokens, packs and dry-run decisions on the control API. Every issue, revocation and
//! decision is audited with the operator's uid.

use std::{sync::Arc, time::Duration};

use loong_ipc::{
    ApprovalView, ControlResponse, DecisionView, ErrorKind, FullAccess, KeyView, PackView,
    RemoteError, StreamChunk, TokenView,
};
use loong_profiles::pack::{Capability, Grant};
use tokio::net::unix::UCred;

use super::connection::RequestIo;
use crate::{
    audit::{Event, Kind},
    authority::{
        approvals::{Approval, MAX_WINDOW_TTL_MS, MAX_WINDOW_USES},
        Decision, Outcome, Token,
    },
    Kernel,
};

fn bad(m: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::BadRequest, m)
}

fn internal(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, e.to_string())
}

fn view(t: &Token, pack_generation: u64) -> TokenView {
    let state = if t.revoked_ms.is_some() {
        "revoked"
    } else if t.expires_ms <= crate::now_ms() {
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

pub(crate) fn event(kind: Kind, cred: &UCred, io: &RequestIo, detail: serde_json::Value) -> Event {
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

/// Decides one request and audits the decision (committed before this returns).
pub(crate) async fn decide(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    token: Option<&str>,
    cap: Capability,
    target: Option<&str>,
    argv: Option<&[String]>,
) -> Result<Outcome, RemoteError> {
    let (outcome, record) = decision(kernel, cred, io, token, cap, target, argv)?;
    kernel.audit.record(record).await.map_err(internal)?;
    Ok(outcome)
}

/// Decides one request; returns the outcome and its audit record, not yet queued.
fn decision(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    token: Option<&str>,
    cap: Capability,
    target: Option<&str>,
    argv: Option<&[String]>,
) -> Result<(Outcome, Event), RemoteError> {
    let outcome = kernel
        .authority
        .decide(token, cap, target, argv)
        .map_err(internal)?;
    let detail = serde_json::json!({
        "capability": cap.as_str(), "target": target, "argv": argv, "token": token, "pack": outcome.pack,
        "agent": outcome.agent, "allowed": outcome.allowed(), "reason": outcome.reason(),
    });
    Ok((outcome, event(Kind::PolicyDecision, cred, io, detail)))
}

/// Decides one effect and waits for an approval when policy asks for one: `Ok` only when it
/// may go ahead (with, for a file effect, the resolved path and scope it was decided on); a
/// denial is [`ErrorKind::Denied`], an unanswered approval [`ErrorKind::ApprovalPending`].
pub(crate) async fn authorize(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    token: Option<&str>,
    cap: Capability,
    target: &str,
    argv: Option<&[String]>,
) -> Result<Option<crate::authority::decide::FileScope>, RemoteError> {
    let allowed = authorize_unrecorded(kernel, cred, io, token, cap, target, argv).await?;
    if let Some(record) = allowed.record {
        kernel.audit.record(record).await.map_err(internal)?;
    }
    Ok(allowed.file)
}

/// What [`authorize_unrecorded`] allowed.
#[derive(Debug)]
pub(crate) struct Authorized {
    /// The decision's record, for the caller to queue (`None`: already committed).
    pub record: Option<Event>,
    /// For a file effect: the resolved target and its scope, which the effect must use.
    pub file: Option<crate::authority::decide::FileScope>,
}

/// [`authorize`], except that an allowed decision's record is returned to the caller, who
/// queues it with its own records (one commit) and awaits that commit before it answers
/// (`None`: the records are already committed). A denial, or a decision that needs an
/// approval, is committed here first.
pub(crate) async fn authorize_unrecorded(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    token: Option<&str>,
    cap: Capability,
    target: &str,
    argv: Option<&[String]>,
) -> Result<Authorized, RemoteError> {
    let (o, record) = decision(kernel, cred, io, token, cap, Some(target), argv)?;
    if o.allowed() {
        return Ok(Authorized {
            record: Some(record),
            file: o.file,
        });
    }
    kernel.audit.record(record).await.map_err(internal)?;
    if matches!(o.decision, Ok(Decision::NeedsApproval { .. })) {
        await_approval(kernel, cred, io, &o, cap, target).await?;
        return Ok(Authorized {
            record: None,
            file: o.file,
        });
    }
    Err(RemoteError::new(
        ErrorKind::Denied,
        format!(
            "{cap} on {target} denied: {}",
            o.reason().unwrap_or_default()
        ),
    ))
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
    let needs_approval = matches!(o.decision, Ok(Decision::NeedsApproval { .. }));
    Ok(ControlResponse::Decided(DecisionView {
        allowed: o.allowed(),
        needs_approval,
        reason: o.reason(),
        pack: o.pack,
    }))
}

fn approval_view(a: Approval) -> ApprovalView {
    ApprovalView {
        id: a.id,
        created_ms: a.created_ms,
        deadline_ms: a.deadline_ms,
        state: a.state,
        actor: a.actor,
        pack: a.pack,
        capability: a.capability,
        target: a.target,
        score: a.score,
        reasons: a.reasons,
        resolver: a.resolver,
    }
}

/// `approvals list`.
pub(crate) fn approvals(kernel: &Kernel) -> Result<ControlResponse, RemoteError> {
    kernel
        .authority
        .approvals
        .expire_overdue()
        .map_err(internal)?;
    let all = kernel.authority.approvals.list().map_err(internal)?;
    Ok(ControlResponse::Approvals(
        all.into_iter().map(approval_view).collect(),
    ))
}

fn waiters(
    kernel: &Kernel,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<tokio::sync::Notify>>> {
    kernel
        .approval_waiters
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `approvals approve|deny ID [--full-access …]`.
pub(crate) async fn resolve(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    id: String,
    approve: bool,
    full_access: Option<FullAccess>,
) -> Result<ControlResponse, RemoteError> {
    if let Some(f) = &full_access {
        if !approve {
            return Err(bad("--full-access goes with approve, not deny"));
        }
        if !(1_000..=MAX_WINDOW_TTL_MS).contains(&f.ttl_ms)
            || !(1..=MAX_WINDOW_USES).contains(&f.uses)
        {
            return Err(bad(format!(
                "a full-access window lasts 1s to 1d and has 1 to {MAX_WINDOW_USES} uses"
            )));
        }
        if let Some(p) = &f.pack {
            if kernel.authority.pack(p).is_none() {
                return Err(bad(format!("unknown pack `{p}`")));
            }
        }
    }
    let resolver = format!("uid:{}", cred.uid());
    let state = if approve { "approved" } else { "denied" };
    let Some(a) = kernel
        .authority
        .approvals
        .resolve(&id, state, &resolver)
        .map_err(internal)?
    else {
        return Err(RemoteError::new(
            ErrorKind::NotFound,
            format!("no pending approval {id}"),
        ));
    };
    let window = match &full_access {
        Some(f) => Some(
            kernel
                .authority
                .approvals
                .open_window(f.pack.as_deref(), f.ttl_ms, f.uses, &resolver)
                .map_err(internal)?,
        ),
        None => None,
    };
    let detail = serde_json::json!({
        "approval": id, "state": state, "resolver": resolver, "window": window,
        "full_access": full_access.as_ref().map(|f| serde_json::json!({ "ttl_ms": f.ttl_ms, "uses": f.uses, "pack": f.pack })),
    });
    kernel
        .audit
        .record(event(Kind::ApprovalResolved, cred, io, detail))
        .await
        .map_err(internal)?;
    let waiter = waiters(kernel).get(&id).cloned();
    if let Some(n) = waiter {
        n.notify_one();
    }
    Ok(ControlResponse::Approvals(vec![approval_view(a)]))
}

/// A request that needs approval: a live full-access window approves it at once; otherwise it
/// waits for an operator until the approval timeout, telling its client how to approve.
pub(crate) async fn await_approval(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    o: &Outcome,
    cap: Capability,
    target: &str,
) -> Result<(), RemoteError> {
    let (score, reasons) = match &o.decision {
        Ok(Decision::NeedsApproval { score, reasons }) => (*score, reasons.join("; ")),
        _ => {
            return Err(internal(
                "await_approval called without an approval to wait for",
            ))
        }
    };
    let store = &kernel.authority.approvals;
    if let Some(window) = store.take_window_use(&o.pack).map_err(internal)? {
        let detail = serde_json::json!({ "window": window, "state": "approved", "capability": cap.as_str(), "target": target, "pack": o.pack, "score": score });
        kernel
            .audit
            .record(event(Kind::ApprovalResolved, cred, io, detail))
            .await
            .map_err(internal)?;
        return Ok(());
    }
    let timeout = Duration::from_millis(kernel.config.approvals.timeout_ms);
    let deadline = crate::now_ms() + timeout.as_millis() as i64;
    let a = store
        .create(
            &format!("uid:{}", cred.uid()),
            &o.pack,
            cap.as_str(),
            target,
            score,
            &reasons,
            deadline,
        )
        .map_err(internal)?;
    let detail = serde_json::json!({ "approval": a.id, "capability": cap.as_str(), "target": target, "pack": o.pack, "score": score, "reasons": reasons, "deadline_ms": a.deadline_ms });
    kernel
        .audit
        .record(event(Kind::ApprovalRequested, cred, io, detail))
        .await
        .map_err(internal)?;
    let notify = Arc::new(tokio::sync::Notify::new());
    waiters(kernel).insert(a.id.clone(), notify.clone());
    let note = format!(
        "loongd: approval {} pending: {cap} on {target} (risk {score}: {reasons}); approve with `loongctl approvals approve {}`\n",
        a.id, a.id
    );
    io.emit(StreamChunk::Stderr(note.into_bytes())).await;
    let until = tokio::time::Instant::now() + timeout;
    let result = loop {
        let current = store.get(&a.id).map_err(internal)?;
        match current.as_ref().map(|s| s.state.as_str()) {
            Some("approved") => break Ok(()),
            Some("denied") => {
                let by = current.and_then(|s| s.resolver).unwrap_or_default();
                break Err(RemoteError::new(
                    ErrorKind::Denied,
                    format!("approval {} denied by {by}", a.id),
                ));
            }
            Some("pending") => {}
            _ => {
                break Err(RemoteError::new(
                    ErrorKind::ApprovalPending,
                    format!("approval {} expired", a.id),
                ))
            }
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep_until(until) => {
                if store.resolve(&a.id, "expired", "loongd").map_err(internal)?.is_some() {
                    let detail = serde_json::json!({ "approval": a.id, "why": "unanswered before its deadline" });
                    kernel.audit.record(event(Kind::ApprovalExpired, cred, io, detail)).await.map_err(internal)?;
                    break Err(RemoteError::new(
                        ErrorKind::ApprovalPending,
                        format!("approval {} was not answered within {} ms: denied", a.id, timeout.as_millis()),
                    ));
                }
            }
        }
    };
    waiters(kernel).remove(&a.id);
    result
}

fn key_view(k: crate::authority::keys::TrustKey) -> KeyView {
    let state = match (&k.revoked_ms, &k.replaced_by) {
        (None, _) => "active",
        (Some(_), Some(_)) => "replaced",
        (Some(_), None) => "revoked",
    };
    KeyView {
        id: k.id,
        name: k.name,
        tier: k.tier,
        public: k.public,
        added_ms: k.added_ms,
        state: state.into(),
        replaced_by: k.replaced_by,
    }
}

/// `keys add|list|revoke|rotate`; every change is audited.
pub(crate) async fn keys(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    req: loong_ipc::ControlRequest,
) -> Result<ControlResponse, RemoteError> {
    use loong_ipc::ControlRequest as R;
    let ring = &kernel.authority.keys;
    let refuse = |e: crate::authority::keys::KeyError| bad(e.to_string());
    let (kind, key) = match req {
        R::KeyList => {
            return Ok(ControlResponse::Keys(
                ring.list()
                    .map_err(refuse)?
                    .into_iter()
                    .map(key_view)
                    .collect(),
            ))
        }
        R::KeyAdd { name, tier, public } => (
            Kind::KeyAdded,
            ring.add(&name, &tier, &public).map_err(refuse)?,
        ),
        R::KeyRevoke { id } => {
            ring.revoke(&id).map_err(refuse)?;
            let k = ring
                .list()
                .map_err(refuse)?
                .into_iter()
                .find(|k| k.id == id)
                .ok_or_else(|| internal("revoked key vanished"))?;
            (Kind::KeyRevoked, k)
        }
        R::KeyRotate {
            old_id,
            new_public,
            signature,
        } => {
            let k = ring
                .rotate(&old_id, &new_public, &signature)
                .map_err(refuse)?;
            kernel
                .audit
                .record(event(
                    Kind::KeyRotated,
                    cred,
                    io,
                    serde_json::json!({ "old": old_id, "new": k.id }),
                ))
                .await
                .map_err(internal)?;
            return Ok(ControlResponse::Keys(vec![key_view(k)]));
        }
        _ => return Err(internal("not a keyring request")),
    };
    let detail = serde_json::json!({ "key": key.id, "name": key.name, "tier": key.tier });
    kernel
        .audit
        .record(event(kind, cred, io, detail))
        .await
        .map_err(internal)?;
    Ok(ControlResponse::Keys(vec![key_view(key)]))
}
