//! Tokens, packs and dry-run decisions on the control API. Every issue, revocation and
//! decision is audited with the operator's uid.

use std::{sync::Arc, time::Duration};

use loong_ipc::{
    ApprovalView, BearerSecret, ControlResponse, DecisionView, ErrorKind, FullAccess, KeyView,
    PackView, Page, RemoteError, StreamChunk, TokenView,
};
use loong_profiles::pack::{Capability, Grant};
use tokio::net::unix::UCred;

use super::{
    connection::RequestIo,
    paging::{after_text, page_of},
};
use crate::{
    audit::{Event, Kind},
    authority::{
        approvals::{Approval, EffectDetail, MAX_WINDOW_TTL_MS, MAX_WINDOW_USES},
        shell::CommandLine,
        tokens::agent_key,
        Decision, Outcome, Token, TokenDenial,
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
        secret: None,
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
    let issued = kernel
        .authority
        .tokens
        .issue(p, &agent, parsed, ttl_ms)
        .map_err(|e| bad(e.to_string()))?;
    let token = &issued.token;
    // The record names the public id; the secret goes only to this answer.
    let detail = serde_json::json!({ "token": token.id, "pack": token.pack, "agent": token.agent, "grants": grants, "expires_ms": token.expires_ms, "generation": token.generation });
    kernel
        .audit
        .record(event(Kind::TokenIssued, cred, io, detail))
        .await
        .map_err(internal)?;
    let mut shown = view(token, token.generation);
    shown.secret = Some(issued.secret);
    Ok(ControlResponse::Tokens(vec![shown]))
}

/// `tokens list`.
pub(crate) fn list(kernel: &Kernel, page: &Page) -> Result<ControlResponse, RemoteError> {
    // The page starts after the cursor's place in the list, which only a token that exists
    // has: an unknown one is refused, not answered as an empty (ended) list.
    if let Some(a) = page.after.as_deref() {
        if matches!(
            kernel.authority.tokens.check_id(a).map_err(internal)?,
            Err(TokenDenial::Unknown)
        ) {
            return Err(bad(format!("--after {a}: there is no token {a}")));
        }
    }
    let tokens = kernel
        .authority
        .tokens
        .list(page.after.as_deref(), page.items())
        .map_err(internal)?;
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
    Ok(ControlResponse::Tokens(page_of(out, |_| true, page)))
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
        deny_orphaned_approvals(kernel, cred, io).await?;
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
    deny_orphaned_approvals(kernel, cred, io).await?;
    Ok(ControlResponse::Revoked {
        existed: true,
        generation: Some(generation),
    })
}

/// `packs list|show`.
pub(crate) fn packs(kernel: &Kernel, page: &Page) -> Result<ControlResponse, RemoteError> {
    let mut out = Vec::new();
    let mut packs: Vec<_> = kernel.authority.packs().collect();
    packs.sort_by(|a, b| a.id.cmp(&b.id));
    for p in packs.into_iter().filter(|p| after_text(page, &p.id)) {
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
    Ok(ControlResponse::Packs(page_of(out, |_| true, page)))
}

/// One effect as the decision pipeline and an approver see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Effect<'a> {
    pub cap: Capability,
    /// The path, `HOST:PORT`, program or tool it is on.
    pub target: &'a str,
    /// For `process.exec`: the whole command line, or the script of `shell.exec`.
    pub command: Option<CommandLine<'a>>,
    /// For a tool call: the tool and its input.
    pub call: Option<(&'a str, &'a str)>,
    /// For a path or destination a sandbox run asks for: the run's command line. Shown to
    /// an approver (what will read, write or connect), never decided on.
    pub run: Option<&'a [String]>,
}

impl Effect<'_> {
    fn detail(&self) -> EffectDetail {
        let mut d = match self.call {
            Some((tool, input)) => EffectDetail::tool_call(tool, input),
            None => EffectDetail::default(),
        };
        d.argv = match self.command {
            Some(CommandLine::Argv(a)) => a.to_vec(),
            // The shell the tool starts, shown with the whole script it runs.
            Some(CommandLine::Script(s)) => vec!["/bin/sh".into(), "-c".into(), s.into()],
            None => self.run.map(<[String]>::to_vec).unwrap_or_default(),
        };
        d
    }
}

/// An effect that may go ahead.
#[derive(Debug)]
pub(crate) struct Authorized {
    /// The allowed decision's record, not yet queued (`None`: already committed).
    pub record: Option<Event>,
    /// The public id of the token it was decided under, to re-check at dispatch.
    pub token: Option<String>,
    /// For a file effect: the resolved target and its scope, which the effect must use.
    pub file: Option<crate::authority::decide::FileScope>,
}

/// Decides one request and audits the decision (committed before this returns).
pub(crate) async fn decide(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    token: Option<&str>,
    cap: Capability,
    target: Option<&str>,
    command: Option<CommandLine<'_>>,
) -> Result<Outcome, RemoteError> {
    let (outcome, record) = decision(kernel, cred, io, token, cap, target, command)?;
    kernel.audit.record(record).await.map_err(internal)?;
    Ok(outcome)
}

/// The audit detail of a decision: the token by its public id, never the presented secret.
fn decision_detail(
    o: &Outcome,
    cap: Capability,
    target: Option<&str>,
    command: Option<CommandLine<'_>>,
) -> serde_json::Value {
    let (argv, script) = match command {
        Some(CommandLine::Argv(a)) => (Some(a), None),
        Some(CommandLine::Script(s)) => (None, Some(s)),
        None => (None, None),
    };
    serde_json::json!({
        "capability": cap.as_str(), "target": target, "argv": argv, "script": script,
        "token": o.token, "pack": o.pack, "agent": o.agent, "allowed": o.allowed(),
        "reason": o.reason(),
    })
}

/// Decides one request; returns the outcome and its audit record, not yet queued.
fn decision(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    token: Option<&str>,
    cap: Capability,
    target: Option<&str>,
    command: Option<CommandLine<'_>>,
) -> Result<(Outcome, Event), RemoteError> {
    let outcome = kernel
        .authority
        .decide(token, cap, target, command)
        .map_err(internal)?;
    let detail = decision_detail(&outcome, cap, target, command);
    Ok((outcome, event(Kind::PolicyDecision, cred, io, detail)))
}

/// Decides one effect and waits for an approval when policy asks for one: `Ok` only when it
/// may go ahead, with the public id of the token it was decided under and, for a file effect,
/// the resolved path and scope it was decided on; a denial is [`ErrorKind::Denied`], an
/// unanswered approval [`ErrorKind::ApprovalPending`].
pub(crate) async fn authorize(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    token: Option<&str>,
    effect: &Effect<'_>,
) -> Result<Authorized, RemoteError> {
    let mut done = authorize_unrecorded(kernel, cred, io, token, effect).await?;
    if let Some(record) = done.record.take() {
        kernel.audit.record(record).await.map_err(internal)?;
    }
    Ok(done)
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
    effect: &Effect<'_>,
) -> Result<Authorized, RemoteError> {
    let (cap, target) = (effect.cap, effect.target);
    let (o, record) = decision(kernel, cred, io, token, cap, Some(target), effect.command)?;
    if o.allowed() {
        return Ok(Authorized {
            record: Some(record),
            token: o.token,
            file: o.file,
        });
    }
    kernel.audit.record(record).await.map_err(internal)?;
    if matches!(o.decision, Ok(Decision::NeedsApproval { .. })) {
        await_approval(kernel, cred, io, &o, effect).await?;
        return Ok(Authorized {
            record: None,
            token: o.token,
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

/// Checks the token an effect was decided under once more, right before the effect runs (an
/// approval may have kept it waiting while the token was revoked, expired or outlived by its
/// pack's generation). A dead token is a denial, audited as a decision with its reason.
pub(crate) async fn recheck(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    token: Option<&str>,
    cap: Capability,
    target: &str,
) -> Result<(), RemoteError> {
    let Some(id) = token else {
        return Ok(());
    };
    let Err(denial) = kernel.authority.tokens.check_id(id).map_err(internal)? else {
        return Ok(());
    };
    let reason = format!("{denial} (checked again before it ran)");
    let detail = serde_json::json!({
        "capability": cap.as_str(), "target": target, "token": id, "allowed": false,
        "reason": reason, "stage": "dispatch",
    });
    kernel
        .audit
        .record(event(Kind::PolicyDecision, cred, io, detail))
        .await
        .map_err(internal)?;
    Err(RemoteError::new(
        ErrorKind::Denied,
        format!("{cap} on {target} denied: {reason}"),
    ))
}

/// `policy decide` (a dry run).
pub(crate) async fn dry_run(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    token: Option<BearerSecret>,
    cap: String,
    target: Option<String>,
) -> Result<ControlResponse, RemoteError> {
    let cap: Capability = cap.parse().map_err(bad)?;
    let o = decide(
        kernel,
        cred,
        io,
        token.as_ref().map(BearerSecret::expose),
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
        token: a.token,
        agent: a.agent,
        argv: a.effect.argv,
        tool: a.effect.tool,
        input_preview: a.effect.input_preview,
        input_sha256: a.effect.input_sha256,
        input_bytes: a.effect.input_bytes,
        note: a.note,
    }
}

/// The most bytes of an effect (its target, reasons, command line and input preview) that is
/// put to an approver: the whole of it is shown, and it must fit a page of `approvals list`
/// ([`loong_ipc::message::control::MAX_PAGE_BYTES`]) with room to spare.
pub const MAX_APPROVAL_SHOWN_BYTES: usize = 256 * 1024;

/// `view` as a page can carry it: a request stored larger than a page (by a loongd before
/// [`MAX_APPROVAL_SHOWN_BYTES`], or written into the table while it was stopped) is listed
/// with its command line and preview replaced by a note of their size, so it never stops the
/// list.
fn fit_page(mut view: ApprovalView) -> ApprovalView {
    use loong_ipc::message::control::MAX_PAGE_BYTES;
    if loong_ipc::frame::encoded_len(&view).is_some_and(|n| n <= MAX_PAGE_BYTES / 2) {
        return view;
    }
    let argv_bytes: usize = view.argv.iter().map(String::len).sum();
    view.argv = vec![format!(
        "(a command line of {} arguments, {argv_bytes} bytes, too large to list)",
        view.argv.len()
    )];
    view.input_preview = None;
    view.target = view.target.chars().take(1024).collect();
    view.reasons = view.reasons.chars().take(1024).collect();
    view
}

/// `approvals list`.
pub(crate) fn approvals(kernel: &Kernel, page: &Page) -> Result<ControlResponse, RemoteError> {
    kernel
        .authority
        .approvals
        .expire_overdue()
        .map_err(internal)?;
    // As for tokens: a cursor names a request that exists, or the list would seem to end.
    if let Some(a) = page.after.as_deref() {
        if kernel
            .authority
            .approvals
            .get(a)
            .map_err(internal)?
            .is_none()
        {
            return Err(bad(format!("--after {a}: there is no approval {a}")));
        }
    }
    let all = kernel
        .authority
        .approvals
        .list(page.after.as_deref(), page.items())
        .map_err(internal)?;
    Ok(ControlResponse::Approvals(page_of(
        all.into_iter().map(approval_view).map(fit_page),
        |_| true,
        page,
    )))
}

fn waiters(
    kernel: &Kernel,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<tokio::sync::Notify>>> {
    kernel
        .approval_waiters
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn wake(kernel: &Kernel, id: &str) {
    let waiter = waiters(kernel).get(id).cloned();
    if let Some(n) = waiter {
        n.notify_one();
    }
}

/// Turns the pending request `a`, whose token is dead, into a denial by loongd, audited with
/// the reason, and wakes its waiter. `false` when it was no longer pending.
async fn deny_for_dead_token(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    a: &Approval,
    denial: &TokenDenial,
) -> Result<bool, RemoteError> {
    let token = a.token.as_deref().unwrap_or_default();
    let note = format!("its token {token} is no longer valid: {denial}");
    let resolved = kernel
        .authority
        .approvals
        .resolve_noted(&a.id, "denied", "loongd", Some(&note))
        .map_err(internal)?;
    if resolved.is_none() {
        return Ok(false);
    }
    let detail = serde_json::json!({
        "approval": a.id, "state": "denied", "resolver": "loongd", "token": a.token,
        "agent": a.agent, "reason": note,
    });
    kernel
        .audit
        .record(event(Kind::ApprovalResolved, cred, io, detail))
        .await
        .map_err(internal)?;
    wake(kernel, &a.id);
    Ok(true)
}

/// Denies every pending request whose token is no longer valid (after a revocation or a
/// generation bump), so none waits on behalf of authority that is gone.
async fn deny_orphaned_approvals(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
) -> Result<(), RemoteError> {
    let pending = kernel
        .authority
        .approvals
        .pending_under_tokens()
        .map_err(internal)?;
    for a in pending {
        let Some(id) = a.token.as_deref() else {
            continue;
        };
        if let Err(denial) = kernel.authority.tokens.check_id(id).map_err(internal)? {
            deny_for_dead_token(kernel, cred, io, &a, &denial).await?;
        }
    }
    Ok(())
}

/// Who resolves an approval: `control.approvals` under their token (or the operator's pack),
/// a token only within its own pack, and never the token or the agent that asked (by the
/// agent's name as [`agent_key`] reads it, so "Bot" is "bot"). The refusal names which rule.
async fn approver(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    token: Option<&str>,
    a: &Approval,
) -> Result<Outcome, RemoteError> {
    let cap = Capability::ControlApprovals;
    let (o, _) = decision(kernel, cred, io, token, cap, None, None)?;
    let separation = match (&a.token, &o.token, &a.agent, &o.agent) {
        (Some(asked), Some(by), _, _) if asked == by => Some(format!(
            "approval {} was requested under token {asked}; the same token cannot resolve it",
            a.id
        )),
        (Some(_), _, Some(asked), Some(by)) if agent_key(asked) == agent_key(by) => Some(format!(
            "approval {} was requested by agent {asked}; the same agent ({by}) cannot resolve it",
            a.id
        )),
        (_, Some(_), _, _) if o.pack != a.pack => Some(format!(
            "approval {} is in pack {}; a token of pack {} resolves only its own pack's requests",
            a.id, a.pack, o.pack
        )),
        _ => None,
    };
    let refusal = match (&o.decision, separation) {
        (Ok(Decision::Allow), None) => None,
        (Ok(Decision::Allow), Some(why)) => Some(why),
        (Ok(Decision::NeedsApproval { .. }), _) => Some(
            "the pack asks for approval of control.approvals, and resolving an approval cannot itself wait for one".to_string(),
        ),
        _ => o.reason(),
    };
    let mut detail = decision_detail(&o, cap, Some(&a.id), None);
    if let Some(why) = &refusal {
        detail["allowed"] = false.into();
        detail["reason"] = why.as_str().into();
    }
    kernel
        .audit
        .record(event(Kind::PolicyDecision, cred, io, detail))
        .await
        .map_err(internal)?;
    match refusal {
        None => Ok(o),
        Some(why) => Err(RemoteError::new(
            ErrorKind::Denied,
            format!("control.approvals on {} denied: {why}", a.id),
        )),
    }
}

/// `approvals approve|deny ID [--full-access …] [--token SECRET]`.
pub(crate) async fn resolve(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    id: String,
    approve: bool,
    full_access: Option<FullAccess>,
    token: Option<BearerSecret>,
) -> Result<ControlResponse, RemoteError> {
    let token = token.as_ref().map(BearerSecret::expose);
    if let Some(f) = &full_access {
        if !approve {
            return Err(bad("--full-access goes with approve, not deny"));
        }
        if token.is_some() {
            return Err(bad(
                "--full-access is the operator's: a window opened under a token could approve that token's own agent; approve without --full-access, or without --token",
            ));
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
    let not_pending = || RemoteError::new(ErrorKind::NotFound, format!("no pending approval {id}"));
    let store = &kernel.authority.approvals;
    let asked = store
        .get(&id)
        .map_err(internal)?
        .filter(|a| a.state == "pending")
        .ok_or_else(not_pending)?;
    let by = approver(kernel, cred, io, token, &asked).await?;
    // The authority that asked must still hold when the request is approved.
    if let (true, Some(tid)) = (approve, asked.token.as_deref()) {
        if let Err(denial) = kernel.authority.tokens.check_id(tid).map_err(internal)? {
            if deny_for_dead_token(kernel, cred, io, &asked, &denial).await? {
                return Err(RemoteError::new(
                    ErrorKind::Denied,
                    format!("approval {id} cannot be approved: its token {tid} is no longer valid ({denial}); loongd denied it"),
                ));
            }
            return Err(not_pending());
        }
    }
    let resolver = match (&by.token, &by.agent) {
        (Some(t), Some(agent)) => format!("uid:{} token:{t} agent:{agent}", cred.uid()),
        _ => format!("uid:{}", cred.uid()),
    };
    let state = if approve { "approved" } else { "denied" };
    let a = store
        .resolve(&id, state, &resolver)
        .map_err(internal)?
        .ok_or_else(not_pending)?;
    let window = match &full_access {
        Some(f) => Some(
            store
                .open_window(f.pack.as_deref(), f.ttl_ms, f.uses, &resolver)
                .map_err(internal)?,
        ),
        None => None,
    };
    let detail = serde_json::json!({
        "approval": id, "state": state, "resolver": resolver, "window": window,
        "full_access": full_access.as_ref().map(|f| serde_json::json!({ "ttl_ms": f.ttl_ms, "uses": f.uses, "pack": f.pack })),
        "resolver_token": by.token, "resolver_agent": by.agent,
    });
    kernel
        .audit
        .record(event(Kind::ApprovalResolved, cred, io, detail))
        .await
        .map_err(internal)?;
    wake(kernel, &id);
    Ok(ControlResponse::Approvals(vec![fit_page(approval_view(a))]))
}

/// A request that needs approval: a live full-access window approves it at once; otherwise it
/// waits for an operator until the approval timeout, telling its client how to approve.
pub(crate) async fn await_approval(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    o: &Outcome,
    effect: &Effect<'_>,
) -> Result<(), RemoteError> {
    let (cap, target) = (effect.cap, effect.target);
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
        let detail = serde_json::json!({ "window": window, "state": "approved", "capability": cap.as_str(), "target": target, "pack": o.pack, "score": score, "token": o.token, "agent": o.agent });
        kernel
            .audit
            .record(event(Kind::ApprovalResolved, cred, io, detail))
            .await
            .map_err(internal)?;
        return Ok(());
    }
    // An approver is shown the whole effect, and every request is listed in a page: one too
    // large for either is denied without asking (a request of a megabyte of arguments made
    // every `approvals list` fail at the frame limit, for good, since requests are kept).
    let shown = effect.detail();
    let shown_bytes = target.len()
        + reasons.len()
        + shown.argv.iter().map(String::len).sum::<usize>()
        + shown.input_preview.as_deref().map_or(0, str::len);
    if shown_bytes > MAX_APPROVAL_SHOWN_BYTES {
        let why = format!(
            "the effect is {shown_bytes} bytes, over the {MAX_APPROVAL_SHOWN_BYTES} an approver is shown whole; denied without asking"
        );
        let detail = serde_json::json!({ "state": "denied", "resolver": "loongd", "reason": why, "capability": cap.as_str(), "target": target, "pack": o.pack, "score": score, "token": o.token, "agent": o.agent });
        kernel
            .audit
            .record(event(Kind::ApprovalResolved, cred, io, detail))
            .await
            .map_err(internal)?;
        return Err(RemoteError::new(
            ErrorKind::Denied,
            format!("{cap} needs approval, and {why}"),
        ));
    }
    let timeout = Duration::from_millis(kernel.config.approvals.timeout_ms);
    let a = store
        .create(Approval {
            id: String::new(),
            created_ms: 0,
            deadline_ms: crate::now_ms() + timeout.as_millis() as i64,
            state: String::new(),
            actor: format!("uid:{}", cred.uid()),
            pack: o.pack.clone(),
            capability: cap.as_str().into(),
            target: target.into(),
            score,
            reasons: reasons.clone(),
            resolver: None,
            token: o.token.clone(),
            agent: o.agent.clone(),
            effect: effect.detail(),
            note: None,
        })
        .map_err(internal)?;
    // The effect's parts sit beside the capability and target, as argv does in
    // policy.decision.
    let mut detail = a.effect.to_json();
    for (k, v) in [
        ("approval", serde_json::json!(a.id)),
        ("capability", cap.as_str().into()),
        ("target", target.into()),
        ("pack", o.pack.clone().into()),
        ("score", score.into()),
        ("reasons", reasons.clone().into()),
        ("deadline_ms", a.deadline_ms.into()),
        ("token", serde_json::json!(a.token)),
        ("agent", serde_json::json!(a.agent)),
    ] {
        detail[k] = v;
    }
    kernel
        .audit
        .record(event(Kind::ApprovalRequested, cred, io, detail))
        .await
        .map_err(internal)?;
    let notify = Arc::new(tokio::sync::Notify::new());
    waiters(kernel).insert(a.id.clone(), notify.clone());
    let note = format!(
        "loongd: approval {} pending: {cap} on {target} (risk {score}: {reasons}); see it with `loongctl approvals show {}`, approve with `loongctl approvals approve {}`\n",
        a.id, a.id, a.id
    );
    io.emit(StreamChunk::Stderr(note.into_bytes())).await;
    let result = wait_for_answer(kernel, cred, io, &a.id, &notify, timeout).await;
    waiters(kernel).remove(&a.id);
    result
}

/// Waits until the request `id` is answered or its deadline passes (then it expires).
async fn wait_for_answer(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    id: &str,
    notify: &tokio::sync::Notify,
    timeout: Duration,
) -> Result<(), RemoteError> {
    let store = &kernel.authority.approvals;
    let until = tokio::time::Instant::now() + timeout;
    loop {
        let current = store.get(id).map_err(internal)?;
        match current.as_ref().map(|s| s.state.as_str()) {
            Some("approved") => return Ok(()),
            Some("denied") => {
                let (by, note) = current
                    .map(|s| (s.resolver.unwrap_or_default(), s.note))
                    .unwrap_or_default();
                let why = note.map(|n| format!(": {n}")).unwrap_or_default();
                return Err(RemoteError::new(
                    ErrorKind::Denied,
                    format!("approval {id} denied by {by}{why}"),
                ));
            }
            Some("pending") => {}
            _ => {
                return Err(RemoteError::new(
                    ErrorKind::ApprovalPending,
                    format!("approval {id} expired"),
                ))
            }
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep_until(until) => {
                if store.resolve(id, "expired", "loongd").map_err(internal)?.is_some() {
                    let detail = serde_json::json!({ "approval": id, "why": "unanswered before its deadline" });
                    kernel.audit.record(event(Kind::ApprovalExpired, cred, io, detail)).await.map_err(internal)?;
                    return Err(RemoteError::new(
                        ErrorKind::ApprovalPending,
                        format!("approval {id} was not answered within {} ms: denied", timeout.as_millis()),
                    ));
                }
            }
        }
    }
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
        R::KeyList(page) => {
            let mut keys = ring.list().map_err(refuse)?;
            keys.sort_by(|a, b| a.id.cmp(&b.id));
            return Ok(ControlResponse::Keys(page_of(
                keys.into_iter()
                    .filter(|k| after_text(&page, &k.id))
                    .map(key_view),
                |_| true,
                &page,
            )));
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
            // A rotated-out key verifies nothing from now on, like a revoked one.
            super::plugins_api::key_withdrawn(kernel, &old_id).await;
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
    if kind == Kind::KeyRevoked {
        super::plugins_api::key_withdrawn(kernel, &key.id).await;
    }
    Ok(ControlResponse::Keys(vec![key_view(key)]))
}
