//! A channel service's kernel calls (`channel_*`, bodies in `loong_ipc::message::channel`),
//! each for the channel the `Serve` call was made for and no other, on its tables in
//! state.db (`authority::channels`):
//!
//! - `channel_offset`: where polling starts.
//! - `channel_received`: a batch and its offset committed in one transaction; a message from
//!   a chat in the channel's allowlist waits for its turn (`channel.received`), any other is
//!   kept as ignored (`channel.ignored`); each is audited once, however often the batch is
//!   handed over (a chat's ignored messages: one a minute, the rest counted). No record
//!   carries a message's text. A press of an approval's button resolves it as `approvals
//!   approve|deny` would, when it comes from an operator chat of this channel that the
//!   approval was offered to (`approval.resolved`, resolver `chat-user:ID worker:N`); any
//!   other press is refused (`policy.decision` of `control.approvals`, not allowed).
//! - `channel_outbox`: the answers to send, and the approvals to offer to the operator
//!   chats (one still pending), waiting a while for one.
//! - `channel_ack`: an answer (or an offer) sent (`channel.sent`).
//! - `channel_status`: the poller's state (a 409 conflict, a failure), for `channels status`.
//! - `channel_webhook_next`, `channel_webhook_answer`: the webhook requests the gateway
//!   relayed for this channel, and the worker's answers to them (`webhook.rs`).
//! - `channel_event`: a Feishu event's id marked seen and its message taken as
//!   `channel_received` takes one, in one transaction; a replayed id takes nothing
//!   (`channel.refused`, one a minute).

use std::time::{Duration, Instant};

use loong_ipc::{
    message::channel::{
        ChannelAck, ChannelEvent, ChannelEventTaken, ChannelMessage, ChannelOffset,
        ChannelOutboxItem, ChannelOutboxWait, ChannelPress, ChannelReceived, ChannelStatus,
        ChannelTaken, OutboxKind, PressAnswer, WebhookAnswer, WebhookWait, KIND_CHANNEL_ACK,
        KIND_CHANNEL_EVENT, KIND_CHANNEL_OFFSET, KIND_CHANNEL_OUTBOX, KIND_CHANNEL_RECEIVED,
        KIND_CHANNEL_STATUS, KIND_CHANNEL_WEBHOOK_ANSWER, KIND_CHANNEL_WEBHOOK_NEXT,
        MAX_OUTBOX_ITEMS, MAX_OUTBOX_WAIT_MS, MAX_PRESS_ANSWER_BYTES, PRESS_APPROVE, PRESS_DENY,
    },
    ErrorKind, RemoteError, ServiceCall,
};

use super::ServiceHost;
use crate::{
    audit::{Event, Kind},
    authority::channels::{ChannelStoreError, Received, Taken},
    channel_status::{self, PollStatus},
};

/// Why a channel's service was not started.
#[derive(Debug, thiserror::Error)]
#[error("channel {name}: {why}")]
pub(crate) struct NotStarted {
    name: String,
    why: String,
}

/// Starts the channel `name`'s service (its worker, its `Serve` call under the channel's
/// token, restarted when it ends). A channel whose secrets or configuration are gone is not
/// started: the reason is returned.
pub(crate) fn start(kernel: &std::sync::Arc<crate::Kernel>, name: &str) -> Result<(), NotStarted> {
    started(kernel, name).map_err(|why| NotStarted {
        name: name.to_owned(),
        why,
    })
}

fn started(kernel: &std::sync::Arc<crate::Kernel>, name: &str) -> Result<(), String> {
    let row = kernel
        .authority
        .channels
        .get(name)
        .map_err(|e| e.to_string())?;
    if row.kind != "telegram" && row.kind != "feishu" {
        // Not restarted in a loop: a kind this loongd has no service for is reported once.
        return Err(format!(
            "a {} channel is not a kind this loongd serves",
            row.kind
        ));
    }
    let config: serde_json::Value =
        serde_json::from_str(&row.config_json).map_err(|e| format!("channel {name}: {e}"))?;
    let api_base = config["api_base"].as_str().unwrap_or_default().to_owned();
    let grant = crate::workers::builtins::provider_grant(&api_base)
        .ok_or_else(|| format!("channel {name}: its api base {api_base} names no HOST:PORT"))?;
    let (host, port): (String, u16) = grant
        .exact()
        .map(|(h, p)| (h.to_owned(), p))
        .ok_or_else(|| format!("channel {name}: its api base {api_base} names no HOST:PORT"))?;
    let tls = api_base.starts_with("https://");
    let store = crate::secrets::store().ok_or("the secret store is not open")?;
    let mut secrets = Vec::new();
    for n in config["secret_names"].as_array().into_iter().flatten() {
        let n = n.as_str().unwrap_or_default();
        // Handed over only as the store would send it to that host: its binding is checked.
        let crate::secrets::Lookup::Value(value) = store.get(n, &host, port, tls) else {
            return Err(format!(
                "channel {name}: its secret {n} is gone or not bound to {host}:{port}; add the channel again"
            ));
        };
        let role = n.rsplit('.').next().unwrap_or_default().to_owned();
        secrets.push((role, loong_ipc::SecretValue::new(value)));
    }
    let def = super::ServiceDef {
        service: super::Service::Channel,
        name: name.to_owned(),
        kind: crate::workers::WorkerKind::channel(name, vec![grant]),
        config_json: serde_json::json!({
            "kind": row.kind, "api_base": api_base, "app_id": config["app_id"],
        })
        .to_string(),
        secrets,
        token: Some(row.token_id),
    };
    kernel
        .services
        .start(kernel, def)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// At start: every configured channel's service, and the turns that were running when
/// loongd stopped made pending again. A channel that cannot start is recorded in its status
/// (`channels status`), and the others start.
pub(crate) async fn start_all(kernel: &std::sync::Arc<crate::Kernel>) {
    let store = &kernel.authority.channels;
    if let Err(e) = store.recover() {
        tracing::warn!(error = %e, "making interrupted channel turns pending again");
    }
    for row in store.list().unwrap_or_default() {
        if let Err(e) = start(kernel, &row.name) {
            channel_status::report(
                &row.name,
                PollStatus {
                    conflict: None,
                    last_error: Some(format!("not started: {e}")),
                },
            );
        }
    }
}

/// A chat's refused presses are recorded one a window (the others are counted in the next
/// record, `unrecorded_before`), as a stranger's ignored messages are.
pub const PRESS_REFUSAL_WINDOW_MS: i64 = crate::authority::channels::IGNORED_AUDIT_WINDOW_MS;
/// The most chats whose refused presses are remembered (past it, the oldest are forgotten:
/// their next refusal is recorded at once).
pub const MAX_PRESS_REFUSAL_CHATS: usize = 4096;

/// The most refused presses of one channel recorded a window, whatever their chats: the
/// chat of a press is the worker's word (a worker taken over makes a new one up for each
/// press), so one record a chat a window alone would be one a press. Past it, the refusals
/// are counted in the channel's next record (`unrecorded_before`).
pub const MAX_PRESS_REFUSAL_RECORDS: u64 = 32;

/// The refusals remembered: per channel and chat, when one was last recorded and how many
/// were not since; per channel, when its window began, how many it recorded in it, and how
/// many it did not record for its budget.
#[derive(Default)]
struct Refusals {
    chats: std::collections::BTreeMap<(String, String), (i64, u64)>,
    channels: std::collections::BTreeMap<String, (i64, u64, u64)>,
}

static PRESS_REFUSALS: std::sync::Mutex<Refusals> = std::sync::Mutex::new(Refusals {
    chats: std::collections::BTreeMap::new(),
    channels: std::collections::BTreeMap::new(),
});

/// Whether a refused press of `chat` at `now` is recorded: `Some(n)` with the refusals not
/// recorded before it, `None` within the window of the chat's last recorded one, or past
/// the channel's [`MAX_PRESS_REFUSAL_RECORDS`] of the window (then counted).
fn refusal_due(channel: &str, chat: &str, now: i64) -> Option<u64> {
    let mut seen = PRESS_REFUSALS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let key = (channel.to_owned(), chat.to_owned());
    if let Some((at, skipped)) = seen.chats.get_mut(&key) {
        if now.saturating_sub(*at) < PRESS_REFUSAL_WINDOW_MS {
            *skipped += 1;
            return None;
        }
    }
    let budget = seen
        .channels
        .entry(channel.to_owned())
        .or_insert((now, 0, 0));
    if now.saturating_sub(budget.0) >= PRESS_REFUSAL_WINDOW_MS {
        budget.0 = now;
        budget.1 = 0;
    }
    if budget.1 >= MAX_PRESS_REFUSAL_RECORDS {
        budget.2 += 1;
        return None;
    }
    budget.1 += 1;
    let unrecorded = std::mem::take(&mut budget.2);
    if let Some((at, skipped)) = seen.chats.get_mut(&key) {
        let chat_unrecorded = std::mem::take(skipped);
        *at = now;
        return Some(unrecorded + chat_unrecorded);
    }
    if seen.chats.len() >= MAX_PRESS_REFUSAL_CHATS {
        let oldest = seen
            .chats
            .iter()
            .min_by_key(|(_, (at, _))| *at)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            seen.chats.remove(&k);
        }
    }
    seen.chats.insert(key, (now, 0));
    Some(unrecorded)
}

/// The longest a waiting `channel_outbox` waits before it looks again (a new answer or offer
/// wakes it at once: `ChannelStore::outbox_ready`).
const OUTBOX_POLL: Duration = Duration::from_millis(1000);

fn bad(m: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::BadRequest, m)
}

fn store_error(e: ChannelStoreError) -> RemoteError {
    let kind = match e {
        ChannelStoreError::Db(_) => ErrorKind::Internal,
        ChannelStoreError::NoSuchChannel(_) => ErrorKind::NotFound,
        _ => ErrorKind::BadRequest,
    };
    RemoteError::new(kind, e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(call: &ServiceCall) -> Result<T, RemoteError> {
    postcard::from_bytes(&call.payload).map_err(|e| {
        bad(format!(
            "kernel call {}: the body does not decode: {e}",
            call.kind
        ))
    })
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, RemoteError> {
    postcard::to_allocvec(v).map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))
}

/// The channel's allowlist (`allowed_chats`) or its operator chats (`operator_chats`), from
/// its configuration.
fn chats(host: &ServiceHost, which: &str) -> Result<Vec<String>, RemoteError> {
    let row = host
        .kernel
        .authority
        .channels
        .get(&host.name)
        .map_err(store_error)?;
    let config: serde_json::Value = serde_json::from_str(&row.config_json)
        .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?;
    Ok(config[which]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

async fn record(host: &ServiceHost, worker: u64, kind: Kind, detail: serde_json::Value) {
    host.kernel
        .audit
        .record_later(Event {
            kind,
            actor: format!("worker:{worker}").into(),
            correlation: crate::audit::no_correlation(),
            detail: detail.into(),
        })
        .await;
}

/// Serves one `channel_*` kernel call of channel `host.name`.
pub(crate) async fn handle(
    host: &ServiceHost,
    worker: u64,
    call: ServiceCall,
) -> Result<Vec<u8>, RemoteError> {
    let store = &host.kernel.authority.channels;
    let name = host.name.as_str();
    match call.kind.as_str() {
        KIND_CHANNEL_OFFSET => encode(&ChannelOffset {
            offset: store.offset(name).map_err(store_error)?,
        }),
        KIND_CHANNEL_RECEIVED => {
            let body: ChannelReceived = decode(&call)?;
            body.check_bounds()
                .map_err(|e| bad(format!("kernel call {}: {e}", call.kind)))?;
            let allow = chats(host, "allowed_chats")?;
            let messages: Vec<Received> = body
                .messages
                .into_iter()
                .map(|m| received(m, &allow))
                .collect();
            let taken = store
                .receive(name, body.next_offset, &messages)
                .map_err(store_error)?;
            let mut answer = ChannelTaken {
                taken: 0,
                ignored: 0,
                typing: Vec::new(),
                presses: Vec::new(),
            };
            for p in body.presses {
                answer.presses.push(press(host, worker, p).await);
            }
            audit_taken(host, worker, &taken, &allow, &mut answer).await;
            encode(&answer)
        }
        KIND_CHANNEL_EVENT => {
            let body: ChannelEvent = decode(&call)?;
            body.check_bounds()
                .map_err(|e| bad(format!("kernel call {}: {e}", call.kind)))?;
            let allow = chats(host, "allowed_chats")?;
            let message = body.message.map(|m| received(m, &allow));
            let taken = match store.receive_event(name, &body.event_id, message.as_ref()) {
                Ok(t) => t,
                Err(e @ ChannelStoreError::Replayed { .. }) => {
                    super::webhook::refused(host, worker, &e.to_string()).await;
                    return encode(&ChannelEventTaken {
                        replayed: true,
                        taken: false,
                    });
                }
                Err(e) => return Err(store_error(e)),
            };
            let mut answer = ChannelTaken {
                taken: 0,
                ignored: 0,
                typing: Vec::new(),
                presses: Vec::new(),
            };
            audit_taken(host, worker, &taken, &allow, &mut answer).await;
            encode(&ChannelEventTaken {
                replayed: false,
                taken: answer.taken > 0,
            })
        }
        KIND_CHANNEL_WEBHOOK_NEXT => {
            let wait: WebhookWait = decode(&call)?;
            encode(&super::webhook::next(host, worker, wait).await?)
        }
        KIND_CHANNEL_WEBHOOK_ANSWER => {
            let a: WebhookAnswer = decode(&call)?;
            super::webhook::answer(host, worker, a).await?;
            encode(&())
        }
        KIND_CHANNEL_OUTBOX => {
            let wait: ChannelOutboxWait = decode(&call)?;
            let limit = wait.max_items.clamp(1, MAX_OUTBOX_ITEMS);
            let until = Instant::now()
                + Duration::from_millis(u64::from(wait.wait_ms.min(MAX_OUTBOX_WAIT_MS)));
            loop {
                // Listening before looking: an answer committed in between still wakes it.
                let ready = store.outbox_ready.notified();
                tokio::pin!(ready);
                ready.as_mut().enable();
                let mut out = offers(host, limit)?;
                let items = store
                    .outbox(name, limit.saturating_sub(out.len() as u32))
                    .map_err(store_error)?;
                out.extend(items.into_iter().map(|i| ChannelOutboxItem {
                    id: i.id,
                    chat: i.chat,
                    reply_to: i.reply_to,
                    thread: i.thread,
                    text: i.text,
                    kind: OutboxKind::Answer,
                }));
                if !out.is_empty() || Instant::now() >= until {
                    return encode(&out);
                }
                let left = until.saturating_duration_since(Instant::now());
                tokio::select! {
                    () = ready => {}
                    () = tokio::time::sleep(OUTBOX_POLL.min(left)) => {}
                }
            }
        }
        KIND_CHANNEL_ACK => {
            let ack: ChannelAck = decode(&call)?;
            ack.check_bounds()
                .map_err(|e| bad(format!("kernel call {}: {e}", call.kind)))?;
            if let OutboxKind::Offer { .. } = ack.kind {
                return ack_offer(host, worker, ack).await;
            }
            let (chat, answers) = store.ack(name, ack.id).map_err(store_error)?;
            let detail = serde_json::json!({
                "channel": name, "chat": chat, "answers": answers, "sent": ack.sent_ids,
                "outbox": ack.id, "token": host.token, "failed": ack.failed,
            });
            record(host, worker, Kind::ChannelSent, detail).await;
            encode(&())
        }
        KIND_CHANNEL_STATUS => {
            let status: ChannelStatus = decode(&call)?;
            status
                .check_bounds()
                .map_err(|e| bad(format!("kernel call {}: {e}", call.kind)))?;
            channel_status::report(
                name,
                PollStatus {
                    conflict: status.conflict,
                    last_error: status.last_error,
                },
            );
            encode(&())
        }
        other => Err(RemoteError::new(
            ErrorKind::NotFound,
            format!("kernel call {other}: no such channel kernel call (channel {name})"),
        )),
    }
}

/// Audits what a batch (or an event) took: each message taken for a turn
/// (`channel.received`), each stranger's first of the window (`channel.ignored`); counted in
/// `answer`.
async fn audit_taken(
    host: &ServiceHost,
    worker: u64,
    taken: &[Taken],
    allow: &[String],
    answer: &mut ChannelTaken,
) {
    for t in taken {
        if !t.audited {
            // A stranger's message within the window of its chat's last audited one:
            // counted in `channels status`, not one record a message.
            answer.ignored += 1;
            continue;
        }
        let kind = if t.allowed {
            answer.taken += 1;
            if !answer.typing.contains(&t.chat) {
                answer.typing.push(t.chat.clone());
            }
            Kind::ChannelReceived
        } else {
            answer.ignored += 1;
            Kind::ChannelIgnored
        };
        let mut detail = serde_json::json!({
            "channel": host.name, "chat": t.chat, "message": t.message_id,
            "sender": t.sender, "key": t.key, "token": host.token,
        });
        if !t.allowed {
            detail["note"] = format!(
                "further ignored messages of this chat within {} s are counted in `channels status`, not audited one by one",
                crate::authority::channels::IGNORED_AUDIT_WINDOW_MS / 1000
            )
            .into();
        }
        if !t.allowed && allow.contains(&t.chat) {
            detail["reason"] = "the chat has the most messages waiting a chat may".into();
        }
        record(host, worker, kind, detail).await;
    }
}

/// A message handed over, as the store takes it: allowed when its chat is in `allow`.
fn received(m: ChannelMessage, allow: &[String]) -> Received {
    Received {
        allowed: allow.contains(&m.chat),
        key: m.key,
        chat: m.chat,
        message_id: m.message_id,
        thread: m.thread,
        sender: m.sender,
        text: m.text,
    }
}

/// The approvals to offer, oldest first, at most `limit`: an offer whose approval is no
/// longer pending (resolved, expired) is closed, not sent.
fn offers(host: &ServiceHost, limit: u32) -> Result<Vec<ChannelOutboxItem>, RemoteError> {
    let store = &host.kernel.authority.channels;
    let mut out = Vec::new();
    for o in store.offers(&host.name, limit).map_err(store_error)? {
        let pending = host
            .kernel
            .authority
            .approvals
            .get(&o.approval)
            .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?
            .is_some_and(|a| a.state == "pending");
        let id = approval_bytes(&o.approval);
        match (pending, id) {
            (true, Some(approval)) => out.push(ChannelOutboxItem {
                id: o.id,
                chat: o.chat,
                reply_to: String::new(),
                thread: None,
                text: o.text,
                kind: OutboxKind::Offer { approval },
            }),
            _ => {
                store
                    .settle_offer(&host.name, o.id, false)
                    .map_err(store_error)?;
            }
        }
    }
    Ok(out)
}

/// An approval's id (16 lowercase hex digits) as its 8 bytes.
fn approval_bytes(id: &str) -> Option<[u8; 8]> {
    let valid = id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let bytes = hex::decode(id).ok().filter(|_| valid)?;
    bytes.try_into().ok()
}

/// An offer was sent to its operator chat (`channel.sent` with the approval).
async fn ack_offer(
    host: &ServiceHost,
    worker: u64,
    ack: ChannelAck,
) -> Result<Vec<u8>, RemoteError> {
    let store = &host.kernel.authority.channels;
    let (chat, approval) = store
        .settle_offer(&host.name, ack.id, true)
        .map_err(store_error)?;
    let detail = serde_json::json!({
        "channel": host.name, "chat": chat, "approval": approval, "sent": ack.sent_ids,
        "offer": ack.id, "token": host.token, "failed": ack.failed,
    });
    record(host, worker, Kind::ChannelSent, detail).await;
    encode(&())
}

/// A button pressed in the channel: an approval's approve or deny, resolved through the
/// effect path when the press comes from an operator chat of this channel the approval was
/// offered to; anything else refused and recorded. Answered with the notice the presser sees.
async fn press(host: &ServiceHost, worker: u64, p: ChannelPress) -> PressAnswer {
    let text = match judge_press(host, worker, &p).await {
        Ok(t) | Err(t) => t,
    };
    let mut end = text.len().min(MAX_PRESS_ANSWER_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    PressAnswer {
        callback: p.callback,
        text: text[..end].to_owned(),
    }
}

async fn judge_press(host: &ServiceHost, worker: u64, p: &ChannelPress) -> Result<String, String> {
    let name = host.name.as_str();
    let (approve, id) = if let Some(id) = p.data.strip_prefix(PRESS_APPROVE) {
        (true, id)
    } else if let Some(id) = p.data.strip_prefix(PRESS_DENY) {
        (false, id)
    } else {
        return Err("This button is not one loongd offered.".into());
    };
    let refuse = |why: String| async move {
        // One record a chat a window: presses are a chat's to make at will (a client that
        // makes up button data), and must not grow the trail at that rate.
        if let Some(unrecorded) = refusal_due(name, &p.chat, crate::now_ms()) {
            record(
                host,
                worker,
                Kind::PolicyDecision,
                serde_json::json!({
                    "capability": "control.approvals", "target": id, "allowed": false,
                    "stage": "channel", "reason": why, "channel": name, "chat": p.chat,
                    "user": p.user, "approve": approve, "unrecorded_before": unrecorded,
                }),
            )
            .await;
        }
        why
    };
    let operators = chats(host, "operator_chats").map_err(|e| e.message)?;
    if !operators.contains(&p.chat) {
        return Err(refuse(format!(
            "chat {} is not an operator chat of channel {name}; approvals are resolved only from its --operator-chat ids",
            p.chat
        ))
        .await);
    }
    let offered = host
        .kernel
        .authority
        .channels
        .offered(name, id, &p.chat)
        .map_err(|e| e.to_string())?;
    if approval_bytes(id).is_none() || !offered {
        return Err(refuse(format!(
            "approval {id} was not offered to chat {} of channel {name}",
            p.chat
        ))
        .await);
    }
    let Ok(user) = p.user.parse::<i64>() else {
        return Err(refuse(format!("user id {} is not a number", p.user)).await);
    };
    let actor = crate::effects::Actor {
        who: crate::effects::Principal::ChatOperator { worker, user },
        bearer: crate::authority::Bearer::Operator,
        chain: crate::effects::Chain::root(format!("channel-{name}/press-{}", p.callback)),
        io: None,
    };
    match crate::effects::approval::resolve(&host.kernel, &actor, id, approve, None).await {
        Ok(a) => Ok(format!("Approval {} {}.", a.id, a.state)),
        Err(e) => Err(format!("Approval {id}: {}", e.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channels_refused_presses_are_recorded_a_bounded_number_a_window_whatever_the_chats() {
        // A worker makes up the chat of each press: one new chat a press was one record a
        // press, without end.
        let at = 5_000_000;
        let recorded = (0..1000)
            .filter(|c| refusal_due("made-up", &format!("c{c}"), at + c).is_some())
            .count();
        assert_eq!(recorded as u64, MAX_PRESS_REFUSAL_RECORDS);
        // Positive control: the next window records again, with the count of the rest.
        let next = refusal_due("made-up", "c999", at + 1000 + PRESS_REFUSAL_WINDOW_MS);
        assert_eq!(next, Some(1000 - MAX_PRESS_REFUSAL_RECORDS));
        // Another channel has its own budget.
        assert_eq!(refusal_due("other", "c0", at + 1), Some(0));
    }

    #[test]
    fn a_chats_refused_presses_are_recorded_one_a_window() {
        let at = 1_000_000;
        assert_eq!(refusal_due("w", "7", at), Some(0));
        // Within the window: counted, not recorded; another chat is its own.
        assert_eq!(refusal_due("w", "7", at + 1), None);
        assert_eq!(refusal_due("w", "7", at + 2), None);
        assert_eq!(refusal_due("w", "8", at + 2), Some(0));
        assert_eq!(refusal_due("w2", "7", at + 2), Some(0));
        // Past it: recorded, with the count of those that were not.
        assert_eq!(refusal_due("w", "7", at + PRESS_REFUSAL_WINDOW_MS), Some(2));
        assert_eq!(
            refusal_due("w", "7", at + PRESS_REFUSAL_WINDOW_MS + 1),
            None
        );
        // The table is bounded: a flood of chats (each in its own window) forgets the oldest.
        for c in 0..MAX_PRESS_REFUSAL_CHATS + 10 {
            refusal_due(
                "flood",
                &c.to_string(),
                at + (c as i64 + 1) * PRESS_REFUSAL_WINDOW_MS,
            );
        }
        assert!(
            PRESS_REFUSALS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .chats
                .len()
                <= MAX_PRESS_REFUSAL_CHATS
        );
    }
}
