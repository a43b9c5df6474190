//! The Feishu/Lark loops: the webhook loop judges each event request the gateway relayed
//! (through loongd, unparsed) and answers it; the send loop replies through `im/v1/messages`.
//!
//! An event request is judged by [`Webhook::judge`] (challenge, signature in constant time,
//! timestamp window, decryption). A signed `im.message.receive_v1` is handed to loongd with
//! its `event_id` ([`Kernel::event`]): loongd marks the id seen and enqueues the message in
//! one transaction, so a replayed id takes nothing, and a kill before the commit leaves the
//! platform's retry to be taken. The request is answered only after that commit: a 200 the
//! platform sees means the message is in the inbox.
//!
//! Statuses: a challenge or an event taken (or a replay, or an event not taken) 200; a bad
//! signature, a stale timestamp or a wrong verification token 401; a body that does not
//! parse (too large, not UTF-8, too deep, not an event) 400; loongd not taking it (its inbox
//! full, the link down) 503, so that the platform sends it again.

use std::{sync::Arc, time::SystemTime};

use serde_json::json;

use super::{EventTaken, HookAnswer, HookRequest, Incoming, Kernel, Outgoing};
use crate::{
    backoff::{Backoff, Waits},
    error::ChannelError,
    feishu::{Feishu, Judged, ReceivedMessage, SignatureHeaders, Webhook},
    limits::{BACKOFF_CAP, BACKOFF_START, MAX_HANDED_ID_BYTES, MAX_HANDED_TEXT_BYTES},
};

/// The HTTP status a refusal is answered with.
fn refusal_status(e: &ChannelError) -> u16 {
    match e {
        ChannelError::BadSignature
        | ChannelError::StaleTimestamp { .. }
        | ChannelError::BadToken => 401,
        _ => 400,
    }
}

fn body(v: &serde_json::Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// The message handed to loongd: a text message whose ids and text are within loongd's
/// bounds (`None`: acknowledged, not taken).
pub fn incoming(m: &ReceivedMessage) -> Option<Incoming> {
    let text = m.text.clone()?;
    let fits = |s: &str| s.len() <= MAX_HANDED_ID_BYTES;
    (text.len() <= MAX_HANDED_TEXT_BYTES
        && fits(&m.chat_id)
        && fits(&m.message_id)
        && fits(&m.sender_open_id))
    .then(|| Incoming {
        key: m.event_id.clone(),
        chat: m.chat_id.clone(),
        message_id: m.message_id.clone(),
        thread: None,
        sender: m.sender_open_id.clone(),
        text,
    })
}

/// Judges one relayed request at `now` and hands its message over; the answer to send.
pub async fn judge(
    hook: &Webhook,
    kernel: &dyn Kernel,
    req: &HookRequest,
    now: SystemTime,
) -> HookAnswer {
    let headers = SignatureHeaders {
        timestamp: req.header("x-lark-request-timestamp"),
        nonce: req.header("x-lark-request-nonce"),
        signature: req.header("x-lark-signature"),
    };
    let answer = |status: u16, b: Vec<u8>, refused: Option<String>| HookAnswer {
        id: req.id,
        status,
        body: b,
        refused,
    };
    let judged = match hook.judge(&headers, &req.body, now) {
        Ok(j) => j,
        Err(e) => {
            let why = e.to_string();
            return answer(
                refusal_status(&e),
                body(&json!({"error": {"type": "refused", "message": why}})),
                Some(why),
            );
        }
    };
    let event_id = match &judged {
        Judged::Challenge(_) => return answer(200, judged.response_body(), None),
        Judged::Other { event_id, .. } => event_id.clone(),
        Judged::Message(m) => m.event_id.clone(),
    };
    if event_id.len() > MAX_HANDED_ID_BYTES {
        let why = format!("an event_id longer than {MAX_HANDED_ID_BYTES} bytes");
        return answer(
            400,
            body(&json!({"error": {"type": "refused", "message": why}})),
            Some(why),
        );
    }
    let message = match &judged {
        Judged::Message(m) => incoming(m),
        _ => None,
    };
    match kernel.event(event_id, message).await {
        Ok(EventTaken::Fresh) => answer(200, judged.response_body(), None),
        // Acknowledged, so that the platform stops sending it; loongd took nothing and
        // recorded the replay.
        Ok(EventTaken::Replayed) => answer(
            200,
            body(&json!({"msg": "duplicate event; not taken"})),
            None,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "handing over an event; the platform sends it again");
            answer(
                503,
                body(
                    &json!({"error": {"type": "unavailable", "message": "the event was not taken; send it again later"}}),
                ),
                None,
            )
        }
    }
}

/// What `channels status` shows as the channel's last error: the webhook loop's (the last
/// refusal, until an event is taken) and the send loop's (the last failed reply, until one
/// is sent), reported to loongd when either changes.
#[derive(Debug, Default)]
pub struct Errors {
    slots: std::sync::Mutex<(Option<String>, Option<String>)>,
}

impl Errors {
    async fn set(
        &self,
        kernel: &dyn Kernel,
        webhook: Option<Option<String>>,
        send: Option<Option<String>>,
    ) {
        let (before, now) = {
            let mut s = self
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let before = s.clone();
            if let Some(w) = webhook {
                s.0 = w;
            }
            if let Some(x) = send {
                s.1 = x;
            }
            (before, s.clone())
        };
        if before == now {
            return;
        }
        let text = match (&now.0, &now.1) {
            (None, None) => None,
            (Some(w), None) => Some(format!("webhook: {w}")),
            (None, Some(x)) => Some(format!("reply: {x}")),
            (Some(w), Some(x)) => Some(format!("webhook: {w}; reply: {x}")),
        };
        let text = text.map(|t| crate::error::printable(&t, MAX_STATUS_CHARS));
        if let Err(e) = kernel.status(None, text).await {
            tracing::debug!(error = %e, "reporting the channel's state");
        }
    }
}

/// The longest status text reported (loongd's bound is 1,024 bytes; a character is at most
/// four).
const MAX_STATUS_CHARS: usize = 250;

/// The webhook loop: runs until the worker stops.
pub async fn webhook_loop(hook: Arc<Webhook>, kernel: Arc<dyn Kernel>, errors: Arc<Errors>) {
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_CAP);
    loop {
        let requests = match kernel.webhooks().await {
            Ok(r) => {
                backoff.succeed();
                r
            }
            Err(e) => {
                tracing::warn!(error = %e, "asking for webhook requests");
                tokio::time::sleep(backoff.fail(None)).await;
                continue;
            }
        };
        for req in requests {
            let a = judge(&hook, kernel.as_ref(), &req, SystemTime::now()).await;
            if let Some(why) = &a.refused {
                errors
                    .set(kernel.as_ref(), Some(Some(format!("refused: {why}"))), None)
                    .await;
            } else if a.status == 200 {
                errors.set(kernel.as_ref(), Some(None), None).await;
            }
            if let Err(e) = kernel.answer_webhook(a).await {
                tracing::debug!(error = %e, "answering a webhook request");
            }
        }
    }
}

/// Whether the platform refuses an answer for good (a message gone, a chat the app left):
/// tried again, it would hold every other chat's answer behind it.
pub fn refused_for_good(e: &ChannelError) -> bool {
    matches!(
        e,
        ChannelError::Api {
            status: 400 | 403 | 404,
            ..
        } | ChannelError::Malformed { .. }
    )
}

/// The send loop: runs until the worker stops.
pub async fn send_loop(fs: Arc<Feishu>, kernel: Arc<dyn Kernel>, errors: Arc<Errors>) {
    let mut backoff = Waits::new(BACKOFF_START, BACKOFF_CAP);
    loop {
        let items = match kernel.outbox().await {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "asking for answers to send");
                tokio::time::sleep(backoff.fail_kernel()).await;
                continue;
            }
        };
        for item in items {
            send_one(&fs, kernel.as_ref(), &errors, &mut backoff, item).await;
        }
    }
}

/// Replies one answer until the platform takes it, then acks it. A long answer goes out in
/// parts; the parts the platform took are kept across tries, so a try after a failure sends
/// only the rest (each part reaches the chat once, in order).
async fn send_one(
    fs: &Feishu,
    kernel: &dyn Kernel,
    errors: &Errors,
    backoff: &mut Waits,
    item: Outgoing,
) {
    let parts = fs.parts(&item.text);
    let mut sent = Vec::new();
    loop {
        let failed = if let Some(o) = &item.offer {
            // Approvals are offered with buttons over Telegram only; a Feishu channel has no
            // operator chats, so loongd offers it none. Closed, not sent.
            let _ = o;
            Some("approvals are offered over Telegram channels only".to_owned())
        } else {
            match fs.reply_parts(&item.reply_to, &parts, &mut sent).await {
                Ok(()) => {
                    errors.set(kernel, None, Some(None)).await;
                    None
                }
                // Given up: the parts sent are acked with the refusal.
                Err(e) if refused_for_good(&e) => {
                    tracing::warn!(error = %e, "an answer refused by the platform; given up");
                    errors.set(kernel, None, Some(Some(e.to_string()))).await;
                    Some(e.to_string())
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sending an answer; tried again");
                    errors.set(kernel, None, Some(Some(e.to_string()))).await;
                    tokio::time::sleep(backoff.fail(&e)).await;
                    continue;
                }
            }
        };
        backoff.succeed();
        let offer = item.offer.as_ref().map(|o| o.approval);
        if let Err(e) = kernel.ack(item.id, offer, sent, failed).await {
            tracing::warn!(error = %e, "acking a sent answer");
        }
        return;
    }
}

#[cfg(test)]
mod tests;
