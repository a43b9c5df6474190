//! Tokens, packs and dry-run decisions on the control API. Every issue, revocation and
//! decision is audited with the operator's uid.

use loong_ipc::{
    ApprovalView, BearerSecret, ControlResponse, DecisionView, ErrorKind, FullAccess, KeyView,
    PackView, Page, RemoteError, TokenView,
};
use loong_profiles::pack::{Capability, Grant, GrantError};
use tokio::net::unix::UCred;

use super::paging::{after_text, page_of};
use crate::{
    audit::{Event, Kind},
    authority::{
        approvals::{Approval, MAX_WINDOW_TTL_MS, MAX_WINDOW_USES},
        Decision, Token, TokenDenial,
    },
    effects::{self, Actor},
    registry,
    request::RequestIo,
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

/// A record of `kind` by the operator connection `cred` (its own authority, at the root of
/// the request's chain).
fn event(kind: Kind, cred: &UCred, io: &RequestIo, detail: serde_json::Value) -> Event {
    Actor::operator(cred.uid(), None, io).event(kind, detail)
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
        .map_err(|e| bad(e.to_string()))?;
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
        // Open egress connections decided under it are decided again.
        crate::egress::authority_changed();
        // Its browser sessions (their pages reach their hosts on their own) end.
        effects::browser::revoked(kernel);
        effects::approval::deny_orphaned(kernel, &Actor::operator(cred.uid(), None, io)).await?;
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
    crate::egress::authority_changed();
    effects::browser::revoked(kernel);
    effects::approval::deny_orphaned(kernel, &Actor::operator(cred.uid(), None, io)).await?;
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

/// `policy decide` (a dry run).
pub(crate) async fn dry_run(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    token: Option<BearerSecret>,
    cap: String,
    target: Option<String>,
) -> Result<ControlResponse, RemoteError> {
    let cap: Capability = cap.parse().map_err(|e: GrantError| bad(e.to_string()))?;
    let actor = Actor::operator(cred.uid(), token.as_ref().map(BearerSecret::expose), io);
    let (o, record) = effects::decide(kernel, &actor, cap, target.as_deref(), None)?;
    effects::record(kernel, record).await?;
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
        caller: a.effect.caller,
        chain: a.effect.chain.map(|c| loong_ipc::ApprovalChain {
            root: c.root,
            parent: c.parent,
            depth: c.depth,
        }),
    }
}

/// `view` as a page can carry it: a request stored larger than a page (by a loongd before
/// [`effects::approval::MAX_APPROVAL_SHOWN_BYTES`], or written into the table while it was stopped) is listed
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
pub(crate) async fn approvals(
    kernel: &Kernel,
    page: &Page,
) -> Result<ControlResponse, RemoteError> {
    // Each expired here is recorded under the token that asked (its waiter, gone, did not).
    for a in kernel
        .authority
        .approvals
        .expire_overdue()
        .map_err(internal)?
    {
        kernel
            .audit
            .record_later(Event::daemon(
                Kind::ApprovalExpired,
                serde_json::json!({ "approval": a.id, "why": "unanswered before its deadline", "token": a.token, "agent": a.agent }),
            ))
            .await;
    }
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
    let actor = Actor::operator(cred.uid(), token, io);
    let a = effects::approval::resolve(kernel, &actor, &id, approve, full_access.as_ref()).await?;
    Ok(ControlResponse::Approvals(vec![fit_page(approval_view(a))]))
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
            registry::lifecycle::key_withdrawn(kernel, &old_id).await;
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
        registry::lifecycle::key_withdrawn(kernel, &key.id).await;
    }
    Ok(ControlResponse::Keys(vec![key_view(key)]))
}
