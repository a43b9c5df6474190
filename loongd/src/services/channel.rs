//! A channel service's kernel calls (`channel_*`, bodies in `loong_ipc::message::channel`),
//! each for the channel the `Serve` call was made for and no other, on its tables in
//! state.db (`authority::channels`):
//!
//! - `channel_offset`: where polling starts.
//! - `channel_received`: a batch and its offset committed in one transaction; a message from
//!   a chat in the channel's allowlist waits for its turn (`channel.received`), any other is
//!   kept as ignored (`channel.ignored`); each is audited once, however often the batch is
//!   handed over (a chat's ignored messages: one a minute, the rest counted). No record
//!   carries a message's text.
//! - `channel_outbox`: the answers to send, waiting a while for one.
//! - `channel_ack`: an answer sent (`channel.sent`).
//! - `channel_status`: the poller's state (a 409 conflict, a failure), for `channels status`.

use std::time::{Duration, Instant};

use loong_ipc::{
    message::channel::{
        ChannelAck, ChannelOffset, ChannelOutboxItem, ChannelOutboxWait, ChannelReceived,
        ChannelStatus, ChannelTaken, KIND_CHANNEL_ACK, KIND_CHANNEL_OFFSET, KIND_CHANNEL_OUTBOX,
        KIND_CHANNEL_RECEIVED, KIND_CHANNEL_STATUS, MAX_OUTBOX_ITEMS, MAX_OUTBOX_WAIT_MS,
    },
    ErrorKind, RemoteError, ServiceCall,
};

use super::ServiceHost;
use crate::{
    audit::{Event, Kind},
    authority::channels::{ChannelStoreError, Received},
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
    if row.kind != "telegram" {
        // Not restarted in a loop: a kind this loongd has no service for is reported once.
        return Err(format!(
            "a {} channel is served through the gateway's webhook route, which this loongd does not have yet",
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
        config_json: serde_json::json!({ "kind": row.kind, "api_base": api_base }).to_string(),
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

/// How often a waiting `channel_outbox` looks again.
const OUTBOX_POLL: Duration = Duration::from_millis(50);

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

/// The channel's allowlist, from its configuration.
fn allowed_chats(host: &ServiceHost) -> Result<Vec<String>, RemoteError> {
    let row = host
        .kernel
        .authority
        .channels
        .get(&host.name)
        .map_err(store_error)?;
    let config: serde_json::Value = serde_json::from_str(&row.config_json)
        .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?;
    Ok(config["allowed_chats"]
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
            actor: format!("worker:{worker}"),
            correlation: String::new(),
            detail,
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
            let allow = allowed_chats(host)?;
            let messages: Vec<Received> = body
                .messages
                .into_iter()
                .map(|m| Received {
                    allowed: allow.contains(&m.chat),
                    key: m.key,
                    chat: m.chat,
                    message_id: m.message_id,
                    thread: m.thread,
                    sender: m.sender,
                    text: m.text,
                })
                .collect();
            let taken = store
                .receive(name, body.next_offset, &messages)
                .map_err(store_error)?;
            let mut answer = ChannelTaken {
                taken: 0,
                ignored: 0,
                typing: Vec::new(),
            };
            for t in &taken {
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
                    "channel": name, "chat": t.chat, "message": t.message_id,
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
            encode(&answer)
        }
        KIND_CHANNEL_OUTBOX => {
            let wait: ChannelOutboxWait = decode(&call)?;
            let limit = wait.max_items.clamp(1, MAX_OUTBOX_ITEMS);
            let until = Instant::now()
                + Duration::from_millis(u64::from(wait.wait_ms.min(MAX_OUTBOX_WAIT_MS)));
            loop {
                let items = store.outbox(name, limit).map_err(store_error)?;
                if !items.is_empty() || Instant::now() >= until {
                    let out: Vec<ChannelOutboxItem> = items
                        .into_iter()
                        .map(|i| ChannelOutboxItem {
                            id: i.id,
                            chat: i.chat,
                            reply_to: i.reply_to,
                            thread: i.thread,
                            text: i.text,
                        })
                        .collect();
                    return encode(&out);
                }
                tokio::time::sleep(OUTBOX_POLL).await;
            }
        }
        KIND_CHANNEL_ACK => {
            let ack: ChannelAck = decode(&call)?;
            ack.check_bounds()
                .map_err(|e| bad(format!("kernel call {}: {e}", call.kind)))?;
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
