//! Approvals on the effect path: an effect that needs one waits here (a full-access window
//! approves it at once; otherwise an approver, the approval's deadline or the request's
//! deadline ends the wait), and resolving one is itself an effect (`control.approvals`),
//! decided with separation of duties.

use std::{collections::HashMap, sync::Arc, time::Duration};

use loong_ipc::{DenialStage, ErrorDetail, ErrorKind, FullAccess, RemoteError, StreamChunk};
use loong_profiles::pack::Capability;
use tokio::sync::Notify;

use super::{decide, decision_detail, denial_stage, denied, internal, record, Actor, Effect};
use crate::{
    audit::Kind,
    authority::{
        approvals::{Approval, ApprovalError, ChainDetail, Ending},
        tokens::agent_key,
        Decision, Outcome, TokenDenial,
    },
    Kernel,
};

/// The most bytes of an effect (its target, reasons, command line and input preview) that is
/// put to an approver: the whole of it is shown, and it must fit a page of `approvals list`
/// ([`loong_ipc::message::control::MAX_PAGE_BYTES`]) with room to spare.
pub const MAX_APPROVAL_SHOWN_BYTES: usize = 256 * 1024;

fn waiters(kernel: &Kernel) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
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

/// Takes a waiter out of the table, and the request's note of what it waits for, however
/// the wait ends (answered, or the request dropped at its deadline).
struct Waiting<'k> {
    kernel: &'k Kernel,
    id: String,
    io: Option<&'k crate::request::RequestIo>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        waiters(self.kernel).remove(&self.id);
        if let Some(io) = self.io {
            io.done_waiting(&self.id);
        }
    }
}

/// A channel turn's wait for an approval, counted against its channel's and all channels'
/// bounds ([`crate::config::Config::channel_approvals_waiting`]) while it lasts, however it
/// ends (answered, expired, the turn dropped).
struct ChannelWait<'k> {
    kernel: &'k Kernel,
    channel: Option<String>,
}

impl<'k> ChannelWait<'k> {
    /// Counts `actor`'s wait when it is a channel turn's; the reason it may not wait when
    /// its channel's (or all channels') bound of waiting turns is reached.
    fn start(kernel: &'k Kernel, actor: &Actor<'_>) -> Result<ChannelWait<'k>, String> {
        let channels = &kernel.authority.channels;
        let Some(channel) = channels.turn_channel(&actor.chain.root) else {
            return Ok(ChannelWait {
                kernel,
                channel: None,
            });
        };
        let (per_channel, in_all) = kernel.config.channel_approvals_waiting();
        if !channels.approval_wait_started(&channel, per_channel as usize, in_all as usize) {
            return Err(format!(
                "channel {channel} has {per_channel} turns waiting for approvals (or all channels {in_all}), the most that may wait while other chats' turns go on; denied without asking"
            ));
        }
        Ok(ChannelWait {
            kernel,
            channel: Some(channel),
        })
    }
}

impl Drop for ChannelWait<'_> {
    fn drop(&mut self) {
        if let Some(channel) = &self.channel {
            self.kernel.authority.channels.approval_wait_ended(channel);
        }
    }
}

/// An effect that needs approval (`o`): a live full-access window approves it at once;
/// otherwise it waits for an operator until the approval's timeout, telling its asker how to
/// approve.
pub(crate) async fn wait(
    kernel: &Kernel,
    actor: &Actor<'_>,
    o: &Outcome,
    effect: &Effect<'_>,
) -> Result<(), RemoteError> {
    let (cap, target) = (effect.cap, effect.target);
    let (score, reasons) = match &o.decision {
        Ok(Decision::NeedsApproval { score, reasons }) => (*score, reasons.join("; ")),
        _ => {
            return Err(internal(
                "an approval wait was asked for an effect that needs none",
            ))
        }
    };
    let store = &kernel.authority.approvals;
    if let Some(window) = store.take_window_use(&o.pack).map_err(internal)? {
        let detail = serde_json::json!({ "window": window, "state": "approved", "capability": cap.as_str(), "target": target, "pack": o.pack, "score": score, "token": o.token, "agent": o.agent });
        return record(kernel, actor.event(Kind::ApprovalResolved, detail)).await;
    }
    // An approver is shown the whole effect, and every request is listed in a page: one too
    // large for either is denied without asking (a request of a megabyte of arguments made
    // every `approvals list` fail at the frame limit, for good, since requests are kept).
    let mut shown = effect.detail();
    // A nested call's approver sees which plugin asked and the chain it belongs to.
    if let Some(parent) = actor.chain.parent.clone() {
        shown.caller = actor.chain.caller.clone();
        shown.chain = Some(ChainDetail {
            root: actor.chain.root.to_string(),
            parent,
            depth: actor.chain.depth,
        });
    }
    let shown_bytes = target.len()
        + reasons.len()
        + shown.argv.iter().map(String::len).sum::<usize>()
        + shown.input_preview.as_deref().map_or(0, str::len);
    if shown_bytes > MAX_APPROVAL_SHOWN_BYTES {
        let why = format!(
            "the effect is {shown_bytes} bytes, over the {MAX_APPROVAL_SHOWN_BYTES} an approver is shown whole; denied without asking"
        );
        return Err(denied_without_asking(kernel, actor, o, effect, score, why).await);
    }
    let _channel_wait = match ChannelWait::start(kernel, actor) {
        Ok(w) => w,
        Err(why) => {
            let detail = serde_json::json!({ "state": "denied", "resolver": "loongd", "reason": why, "capability": cap.as_str(), "target": target, "pack": o.pack, "score": score, "token": o.token, "agent": o.agent });
            record(kernel, actor.event(Kind::ApprovalResolved, detail)).await?;
            return Err(RemoteError::new(
                ErrorKind::Denied,
                format!("{cap} needs approval, and {why}"),
            )
            .with_detail(ErrorDetail::Denied(loong_ipc::Denial::new(
                DenialStage::Approval,
                cap.as_str(),
                target,
                why,
            ))));
        }
    };
    let timeout = Duration::from_millis(kernel.config.approvals.timeout_ms);
    let asked = store.create(
        Approval {
            id: String::new(),
            created_ms: 0,
            deadline_ms: crate::now_ms() + timeout.as_millis() as i64,
            state: String::new(),
            actor: actor.who.name(),
            pack: o.pack.clone(),
            capability: cap.as_str().into(),
            target: target.into(),
            score,
            reasons: reasons.clone(),
            resolver: None,
            token: o.token.clone(),
            agent: o.agent.clone(),
            effect: shown,
            note: None,
        },
        kernel.config.approvals.max_pending_per_token,
    );
    let a = match asked {
        Ok(a) => a,
        // Denied, not waited for: the holder decides or lets expire what it asked already.
        Err(why @ ApprovalError::TooManyPending { .. }) => {
            let why = format!("{why}; denied without asking");
            return Err(denied_without_asking(kernel, actor, o, effect, score, why).await);
        }
        Err(ApprovalError::Store(e)) => return Err(internal(e)),
    };
    // From here the request lives as long as its waiter: a waiter that goes away unanswered
    // withdraws it.
    let mut withdraw = Withdraw {
        kernel,
        id: a.id.clone(),
        event: Some(actor.event(
            Kind::ApprovalExpired,
            serde_json::json!({ "approval": a.id, "why": WITHDRAWN_NOTE, "token": a.token, "agent": a.agent }),
        )),
        unused: actor.event(
            Kind::ApprovalUnused,
            serde_json::json!({ "approval": a.id, "why": UNUSED_NOTE, "capability": cap.as_str(), "target": target, "token": a.token, "agent": a.agent }),
        ),
    };
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
    // The waiter is in the table before anything awaits, so the wake of a resolution that
    // comes at once (it follows the resolution's commit) is never lost.
    let notify = Arc::new(Notify::new());
    waiters(kernel).insert(a.id.clone(), notify.clone());
    let _waiting = Waiting {
        kernel,
        id: a.id.clone(),
        io: actor.io,
    };
    record(kernel, actor.event(Kind::ApprovalRequested, detail)).await?;
    offer_to_channel(kernel, actor, &a);
    if let Some(io) = actor.io {
        // Its client is gone (the request runs on after a disconnect): nobody waits for this
        // request, which `withdraw` expires and records as the wait ends here. Output taken
        // is no sign of a client (a closing connection's writer still flushes).
        if !io.wait_on(&a.id) {
            return Err(gone(&a.id));
        }
        // For people: what a client acts on is the typed answer, never this text.
        let note = format!(
            "loongd: approval {} pending: {cap} on {target} (risk {score}: {reasons}); see it with `loongctl approvals show {}`, approve with `loongctl approvals approve {}`\n",
            a.id, a.id, a.id
        );
        let noted = io.emit(StreamChunk::Stderr(note.into_bytes())).await;
        // For clients: the id, typed (`loongctl chat` offers to approve it).
        let told = noted && io.emit(StreamChunk::ApprovalPending(a.id.clone())).await;
        if !told {
            return Err(gone(&a.id));
        }
    }
    let answered = wait_for_answer(kernel, actor, &a.id, effect, &notify, timeout).await;
    withdraw.event = None;
    answered
}

/// The answer of a wait for approval `id` whose request's client went away before it was
/// decided (the approval is withdrawn as the wait ends).
fn gone(id: &str) -> RemoteError {
    RemoteError::new(
        ErrorKind::Cancelled,
        format!("approval {id}: the request's client went away before it was decided; withdrawn"),
    )
}

/// Withdraws the pending request `id` whose caller went away (its client disconnected while
/// the request waits): expired by loongd with [`WITHDRAWN_NOTE`], recorded
/// (`approval.expired`), and its waiter woken (its wait ends as expired). `false` when it was
/// no longer pending.
pub(crate) async fn withdraw(kernel: &Kernel, id: &str) -> Result<bool, RemoteError> {
    let withdrawn = kernel
        .authority
        .approvals
        .resolve_noted(id, "expired", "loongd", Some(WITHDRAWN_NOTE))
        .map_err(internal)?;
    let Some(a) = withdrawn else {
        return Ok(false);
    };
    let detail = serde_json::json!({ "approval": id, "why": WITHDRAWN_NOTE, "token": a.token, "agent": a.agent });
    record(
        kernel,
        crate::audit::Event::daemon(Kind::ApprovalExpired, detail),
    )
    .await?;
    wake(kernel, id);
    Ok(true)
}

/// The note of a request withdrawn because its waiter went away.
pub const WITHDRAWN_NOTE: &str =
    "withdrawn: its caller went away (disconnected, cancelled or answered at its own deadline) before it was decided";

/// What [`Withdraw`] records of an approval that won the race with its waiter's leaving: it
/// was approved, and then its waiter went away before it took the approval, so its effect
/// never ran.
pub const UNUSED_NOTE: &str =
    "approved, but its caller went away (disconnected, cancelled or answered at its own deadline) before the effect ran: nothing ran";

/// Withdraws a pending request whose waiter is dropped before its answer (its client
/// disconnected, cancelled the request, or a gateway call was answered at its wait): it is
/// expired by loongd with [`WITHDRAWN_NOTE`] and recorded (`approval.expired`), so that no
/// request is left for an operator to approve on behalf of nobody (an approval given then
/// would run nothing), and none counts against its token's pending bound. While loongd shuts
/// down, the request is left to the next start's expiry, which records it.
///
/// The withdrawal is made in the store as the waiter is dropped (not in a task that runs
/// later), in the one transition that ends a request ([`crate::authority::approvals::ApprovalStore::end`]):
/// an approve that comes after it is refused as withdrawn, and one that came before it (the
/// request is approved, its waiter gone before it took the approval) is recorded as
/// `approval.unused` ([`UNUSED_NOTE`]), so the trail never shows an approval that seems to
/// have run an effect nobody ran.
struct Withdraw<'k> {
    kernel: &'k Kernel,
    id: String,
    /// The record of a withdrawal; `None` once the wait was answered.
    event: Option<crate::audit::Event>,
    /// The record of an approval given before the waiter left, which it never took.
    unused: crate::audit::Event,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        let Some(withdrawn) = self.event.take() else {
            return;
        };
        let (Some(kernel), Ok(rt)) = (self.kernel.arc(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        if *kernel.shutdown.borrow() {
            return;
        }
        let id = std::mem::take(&mut self.id);
        let ending = kernel
            .authority
            .approvals
            .end(&id, "expired", "loongd", Some(WITHDRAWN_NOTE));
        let (event, unused) = match ending {
            Ok(Ending::Ended(_)) => (withdrawn, false),
            Ok(Ending::AlreadyEnded(a)) if a.state == "approved" => (self.unused.clone(), true),
            // Denied or expired by another end, recorded by it; or gone.
            Ok(Ending::AlreadyEnded(_) | Ending::Unknown) => return,
            Err(e) => {
                tracing::error!(approval = %id, error = %e, "withdrawing an approval whose caller went away");
                return;
            }
        };
        rt.spawn(async move {
            test_delay().await;
            if !unused {
                kernel.audit.record_later(event).await;
            } else if kernel.audit.record(event).await.is_ok() {
                // Settled once its record is committed: killed before, loongd records it at
                // its next start instead (never not at all).
                if let Err(e) = kernel.authority.approvals.settle(&id, "unused") {
                    tracing::error!(approval = %id, error = %e, "noting an unused approval");
                }
            }
            wake(&kernel, &id);
        });
    }
}

/// At a start: closes every live full-access window the trail does not record opening
/// (its approve committed the window in the store and loongd was killed before the record;
/// or state.db was edited while loongd was stopped), so no window grants what the trail
/// never shows granted. Each is logged; nothing is recorded (the trail never had it).
pub(crate) fn close_unrecorded_windows(kernel: &Kernel) -> Result<usize, RemoteError> {
    let store = &kernel.authority.approvals;
    let mut closed = 0;
    for id in store.live_windows().map_err(internal)? {
        if !kernel.audit.window_opened(&id).map_err(internal)? {
            tracing::warn!(window = %id, "closing a full-access window the audit trail never recorded opening");
            store.close_window(&id).map_err(internal)?;
            closed += 1;
        }
    }
    Ok(closed)
}

/// The note of a request left pending by the previous loongd, expired at the next start.
pub const RESTARTED_NOTE: &str = "loongd restarted";

/// At a start: ends every request left pending (its waiter died with the previous daemon),
/// each recorded `approval.expired` ([`RESTARTED_NOTE`]) under the token that asked. The
/// records are committed together before the requests are expired in the store, so a start
/// killed in between loses none (they are still pending at the next start); one recorded
/// by such a start already is not recorded again.
pub(crate) async fn expire_left_pending(kernel: &Kernel) -> Result<usize, RemoteError> {
    let store = &kernel.authority.approvals;
    let pending = store.pending_all().map_err(internal)?;
    if pending.is_empty() {
        return Ok(0);
    }
    let recorded = kernel
        .audit
        .approvals_recorded(Kind::ApprovalExpired, RESTARTED_NOTE)
        .map_err(internal)?;
    let events: Vec<_> = pending
        .iter()
        .filter(|a| !recorded.contains(&a.id))
        .map(|a| {
            crate::audit::Event::daemon(
                Kind::ApprovalExpired,
                serde_json::json!({ "approval": a.id, "why": RESTARTED_NOTE, "token": a.token, "agent": a.agent }),
            )
        })
        .collect();
    let n = events.len();
    if n > 0 {
        kernel
            .audit
            .queue_all(events)
            .await
            .map_err(internal)?
            .committed()
            .await
            .map_err(internal)?;
    }
    store.expire_all_pending().map_err(internal)?;
    Ok(n)
}

/// The note of an approval whose waiter died with the previous loongd before taking it.
pub const UNTAKEN_NOTE: &str =
    "approved, but loongd stopped (or was killed) before its caller took the approval: nothing ran";

/// The note of an approval whose approve committed in the store but whose record never did
/// (loongd killed in between): the trail never said it was approved, and nothing ran.
pub const UNRECORDED_NOTE: &str =
    "loongd stopped (or was killed) before the approval of this request was recorded; its caller never took it: nothing ran";

/// At a start: settles each approval the store shows approved and `open` (nobody took it:
/// its waiter, and its request, died with the previous loongd), recording what the trail
/// does not say yet, each under the token that asked. The store only names candidates; the
/// trail decides ([`crate::audit::ApprovalTrail`]), so that a store edited while loongd was
/// stopped never makes it sign a record that contradicts the trail:
/// - approved on record, nothing after it (no `approval.unused`, no `approval.expired`, no
///   record of the effect in its request's correlation): `approval.unused` ([`UNTAKEN_NOTE`]);
/// - requested on record, never resolved (killed between the approve's commit in the store
///   and its record): `approval.expired` ([`UNRECORDED_NOTE`]), as a request left pending is;
/// - anything else (its ending recorded already, the effect went on, denied on record, or not
///   in the trail at all): nothing is recorded, and the contradiction is logged.
///
/// The records are committed together, and only then is each approval settled: a start
/// killed in between finds them on record at the next start, and records none twice.
pub(crate) async fn record_untaken(kernel: &Kernel) -> Result<usize, RemoteError> {
    let store = &kernel.authority.approvals;
    let mut events = Vec::new();
    let mut settled = Vec::new();
    for a in store.approved_open().map_err(internal)? {
        let trail = kernel.audit.approval_trail(&a.id).map_err(internal)?;
        let ids = serde_json::json!({ "approval": a.id, "token": a.token, "agent": a.agent });
        let (how, record) = match trail {
            // Recorded by a start killed before it settled the store, or by the waiter's
            // leaving ([`Withdraw`]).
            t if t.ended && t.resolved.is_none() => ("unrecorded", None),
            t if t.ended => ("unused", None),
            t if t.acted_on => ("taken", None),
            t if t.resolved.as_deref() == Some("approved") => {
                let mut detail = ids;
                detail["why"] = UNTAKEN_NOTE.into();
                detail["capability"] = a.capability.clone().into();
                detail["target"] = a.target.clone().into();
                ("unused", Some((Kind::ApprovalUnused, detail)))
            }
            t if t.requested && t.resolved.is_none() => {
                let mut detail = ids;
                detail["why"] = UNRECORDED_NOTE.into();
                ("unrecorded", Some((Kind::ApprovalExpired, detail)))
            }
            t => {
                tracing::error!(approval = %a.id, trail = ?t, "the store shows an approval open that the audit trail contradicts; nothing recorded of it");
                ("contradicted", None)
            }
        };
        if let Some((kind, detail)) = record {
            events.push(crate::audit::Event::daemon(kind, detail));
        }
        settled.push((a.id, how));
    }
    let recorded = events.len();
    if !events.is_empty() {
        kernel
            .audit
            .queue_all(events)
            .await
            .map_err(internal)?
            .committed()
            .await
            .map_err(internal)?;
    }
    for (id, how) in &settled {
        if *how == "unrecorded" {
            // The trail says it ended unapproved: so does the store.
            store
                .overrule(id, "approved", "expired", "loongd", UNRECORDED_NOTE)
                .map_err(internal)?;
        } else {
            store.settle(id, how).map_err(internal)?;
        }
    }
    Ok(recorded)
}

/// Test builds only: the environment variable (on loongd) naming milliseconds that the
/// record of a withdrawal (and a resolver's wake of its waiter, after its record) waits, so
/// that a test can land an approve or a cancellation in that gap (tests/all/approval_bounds.rs).
/// A release loongd never reads it.
#[cfg_attr(not(debug_assertions), allow(dead_code))]
pub const TEST_DELAY_ENV: &str = "LOONG_TEST_APPROVAL_DELAY_MS";

#[cfg(debug_assertions)]
async fn test_delay() {
    let ms = std::env::var(TEST_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[cfg(not(debug_assertions))]
async fn test_delay() {}

/// An effect that needs approval denied by loongd without asking an approver (`why`): the
/// denial is recorded (`approval.resolved`, state `denied`, resolver `loongd`) and answered
/// as an approval-stage denial naming why. A record that cannot be written is the answer.
async fn denied_without_asking(
    kernel: &Kernel,
    actor: &Actor<'_>,
    o: &Outcome,
    effect: &Effect<'_>,
    score: u32,
    why: String,
) -> RemoteError {
    let (cap, target) = (effect.cap, effect.target);
    let detail = serde_json::json!({ "state": "denied", "resolver": "loongd", "reason": why, "capability": cap.as_str(), "target": target, "pack": o.pack, "score": score, "token": o.token, "agent": o.agent });
    if let Err(e) = record(kernel, actor.event(Kind::ApprovalResolved, detail)).await {
        return e;
    }
    RemoteError::new(
        ErrorKind::Denied,
        format!("{cap} needs approval, and {why}"),
    )
    .with_detail(ErrorDetail::Denied(loong_ipc::Denial::new(
        DenialStage::Approval,
        cap.as_str(),
        target,
        why,
    )))
}

/// The most bytes of an effect's target, and of its reasons, an operator chat is shown in an
/// offer (the whole request is `loongctl approvals show ID`'s).
pub const MAX_OFFER_PART_BYTES: usize = 300;

fn clipped(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What an operator chat is shown of approval `a`, with its buttons.
pub(crate) fn offer_text(a: &Approval) -> String {
    format!(
        "Approval {} pending: {} on {} (risk {}: {}). Approve or deny it here, or with `loongctl approvals approve|deny {}`.",
        a.id,
        a.capability,
        clipped(&a.target, MAX_OFFER_PART_BYTES),
        a.score,
        clipped(&a.reasons, MAX_OFFER_PART_BYTES),
        a.id
    )
}

/// An approval asked for by a chat's turn is offered to its channel's operator chats (the
/// channel's worker sends it with approve and deny buttons). An offer that cannot be kept is
/// logged: the approval still waits, for `loongctl approvals`.
fn offer_to_channel(kernel: &Kernel, actor: &Actor<'_>, a: &Approval) {
    let channels = &kernel.authority.channels;
    let Some(channel) = channels.turn_channel(&actor.chain.root) else {
        return;
    };
    if let Err(e) = channels.offer(&channel, &a.id, &offer_text(a)) {
        tracing::warn!(channel = %channel, approval = %a.id, error = %e, "offering an approval to a channel's operator chats");
    }
}

/// Waits until the request `id` is answered or its deadline passes (then it expires).
async fn wait_for_answer(
    kernel: &Kernel,
    actor: &Actor<'_>,
    id: &str,
    effect: &Effect<'_>,
    notify: &Notify,
    timeout: Duration,
) -> Result<(), RemoteError> {
    let store = &kernel.authority.approvals;
    let until = tokio::time::Instant::now() + timeout;
    let expired = |message: String| {
        RemoteError::new(ErrorKind::ApprovalPending, message).with_detail(
            ErrorDetail::ApprovalExpired {
                approval: id.to_string(),
            },
        )
    };
    // Set once the resolver woke this waiter, which it does only once its resolution is on
    // record (see [`resolve`]).
    let mut woken = false;
    loop {
        let current = store.get(id).map_err(internal)?;
        match current.as_ref().map(|s| s.state.as_str()) {
            // Taken: noted before the effect runs, so that a restart never calls an approval
            // its waiter went on with unused; one not noted (loongd killed first) is recorded
            // `approval.unused` at the next start ([`record_untaken`]).
            Some("approved") if woken => {
                store.settle(id, "taken").map_err(internal)?;
                return Ok(());
            }
            // Approved, its record not yet committed: the resolver wakes this waiter once it
            // is, or after turning the approval into a denial.
            Some("approved") => {
                notify.notified().await;
                woken = true;
                continue;
            }
            Some("denied") => {
                let (by, note) = current
                    .map(|s| (s.resolver.unwrap_or_default(), s.note))
                    .unwrap_or_default();
                let why = note.map(|n| format!(": {n}")).unwrap_or_default();
                let reason = format!("approval {id} denied by {by}{why}");
                return Err(
                    RemoteError::new(ErrorKind::Denied, reason.clone()).with_detail(
                        ErrorDetail::Denied(loong_ipc::Denial::new(
                            DenialStage::Approval,
                            effect.cap.as_str(),
                            effect.target,
                            reason,
                        )),
                    ),
                );
            }
            Some("pending") => {}
            _ => return Err(expired(format!("approval {id} expired"))),
        }
        tokio::select! {
            _ = notify.notified() => woken = true,
            _ = tokio::time::sleep_until(until) => {
                if let Some(a) = store.resolve(id, "expired", "loongd").map_err(internal)? {
                    let detail = serde_json::json!({ "approval": id, "why": "unanswered before its deadline", "token": a.token, "agent": a.agent });
                    record(kernel, actor.event(Kind::ApprovalExpired, detail)).await?;
                    return Err(expired(format!(
                        "approval {id} was not answered within {} ms: denied",
                        timeout.as_millis()
                    )));
                }
            }
        }
    }
}

/// Who resolves an approval: `control.approvals` under their token (or the operator's pack),
/// a token only within its own pack, and never the token or the agent that asked (by the
/// agent's name as [`agent_key`] reads it, so "Bot" is "bot"). The refusal names which rule.
async fn approver(
    kernel: &Kernel,
    actor: &Actor<'_>,
    a: &Approval,
) -> Result<Outcome, RemoteError> {
    let cap = Capability::ControlApprovals;
    let (o, _) = decide(kernel, actor, cap, None, None)?;
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
        (Ok(Decision::Allow), Some(why)) => Some((DenialStage::Separation, why)),
        (Ok(Decision::NeedsApproval { .. }), _) => Some((
            DenialStage::Approval,
            "the pack asks for approval of control.approvals, and resolving an approval cannot itself wait for one".to_string(),
        )),
        _ => Some((
            denial_stage(&o).unwrap_or(DenialStage::Request),
            o.reason().unwrap_or_default(),
        )),
    };
    let mut detail = decision_detail(&o, cap, Some(&a.id), None);
    if let Some((_, why)) = &refusal {
        detail["allowed"] = false.into();
        detail["reason"] = why.as_str().into();
    }
    record(kernel, actor.event(Kind::PolicyDecision, detail)).await?;
    match refusal {
        None => Ok(o),
        Some((stage, why)) => Err(denied(stage, cap, &a.id, &why)),
    }
}

/// Resolves pending approval `id` for `actor` (an approver, under their token or the
/// operator's pack): decided as `control.approvals`, the asking token re-checked when it is
/// approved, audited as `approval.resolved`, and its waiter woken. `full_access` opens a
/// window (checked by the caller). Returns the resolved request.
pub(crate) async fn resolve(
    kernel: &Kernel,
    actor: &Actor<'_>,
    id: &str,
    approve: bool,
    full_access: Option<&FullAccess>,
) -> Result<Approval, RemoteError> {
    let not_pending = || RemoteError::new(ErrorKind::NotFound, format!("no pending approval {id}"));
    let store = &kernel.authority.approvals;
    let asked = store.get(id).map_err(internal)?.ok_or_else(not_pending)?;
    if asked.state != "pending" {
        return Err(ended_already(&asked));
    }
    let by = approver(kernel, actor, &asked).await?;
    // The authority that asked must still hold when the request is approved.
    if let (true, Some(tid)) = (approve, asked.token.as_deref()) {
        if let Err(denial) = kernel.authority.tokens.check_id(tid).map_err(internal)? {
            if deny_for_dead_token(kernel, actor, &asked, &denial).await? {
                let reason =
                    format!("its token {tid} is no longer valid ({denial}); loongd denied it");
                return Err(RemoteError::new(
                    ErrorKind::Denied,
                    format!("approval {id} cannot be approved: {reason}"),
                )
                .with_detail(ErrorDetail::Denied(loong_ipc::Denial::new(
                    DenialStage::Token,
                    asked.capability.as_str(),
                    asked.target.as_str(),
                    reason,
                ))));
            }
            return Err(not_pending());
        }
    }
    let uid = actor.who.name();
    let resolver = match (&by.token, &by.agent) {
        (Some(t), Some(agent)) => format!("{uid} token:{t} agent:{agent}"),
        _ => uid,
    };
    let state = if approve { "approved" } else { "denied" };
    // The one transition out of `pending`: a withdrawal (or expiry, or another approver) that
    // got there first wins, and this resolution is refused naming it.
    let a = match store.end(id, state, &resolver, None).map_err(internal)? {
        Ending::Ended(a) => a,
        Ending::AlreadyEnded(a) => return Err(ended_already(&a)),
        Ending::Unknown => return Err(not_pending()),
    };
    let window = match full_access {
        Some(f) => Some(
            store
                .open_window(f.pack.as_deref(), f.ttl_ms, f.uses, &resolver)
                .map_err(internal)?,
        ),
        None => None,
    };
    // Under the token that asked too (`token`), so its trail shows how each of its requests
    // ended; the resolver's are `resolver_token` and `resolver_agent`.
    let detail = serde_json::json!({
        "approval": id, "state": state, "resolver": resolver, "window": window,
        "full_access": full_access.map(|f| serde_json::json!({ "ttl_ms": f.ttl_ms, "uses": f.uses, "pack": f.pack })),
        "resolver_token": by.token, "resolver_agent": by.agent,
        "token": a.token, "agent": a.agent,
    });
    // Nothing acts on a resolution before it is on record: its waiter goes ahead on an
    // approval only once woken here. One that cannot be recorded (disk full, a fail-closed
    // lane down) becomes a denial (and its window closes) before the waiter is woken; were
    // even that refused, the waiter is left waiting until its request ends.
    if let Err(e) = record(kernel, actor.event(Kind::ApprovalResolved, detail)).await {
        let note = format!("its resolution could not be recorded: {}", e.message);
        if let Some(w) = &window {
            let _ = store.close_window(w);
        }
        if store
            .overrule(id, state, "denied", "loongd", &note)
            .is_ok_and(|done| done)
        {
            wake(kernel, id);
        }
        return Err(e);
    }
    test_delay().await;
    wake(kernel, id);
    Ok(a)
}

/// The refusal of a resolution of `a`, which has ended already: withdrawn because its caller
/// went away, or resolved or expired before.
fn ended_already(a: &Approval) -> RemoteError {
    let id = &a.id;
    let message = if a.state == "expired" && a.note.as_deref() == Some(WITHDRAWN_NOTE) {
        format!("approval {id} was withdrawn: its caller went away before it was decided, so nothing waits for it; have the caller ask again and decide the new request")
    } else {
        // Who resolved it is not told: a press from a chat may be what asks.
        format!("no pending approval {id}: it was {} already", a.state)
    };
    RemoteError::new(ErrorKind::NotFound, message)
}

/// Turns the pending request `a`, whose token is dead, into a denial by loongd, audited with
/// the reason, and wakes its waiter. `false` when it was no longer pending.
async fn deny_for_dead_token(
    kernel: &Kernel,
    actor: &Actor<'_>,
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
    record(kernel, actor.event(Kind::ApprovalResolved, detail)).await?;
    wake(kernel, &a.id);
    Ok(true)
}

/// Denies every pending request whose token is no longer valid (after a revocation or a
/// generation bump), so none waits on behalf of authority that is gone.
pub(crate) async fn deny_orphaned(kernel: &Kernel, actor: &Actor<'_>) -> Result<(), RemoteError> {
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
            deny_for_dead_token(kernel, actor, &a, &denial).await?;
        }
    }
    Ok(())
}
