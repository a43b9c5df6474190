//! The bodies of a channel service's kernel calls (`channel_*`, carried in a
//! [`super::kernel::ServiceCall`] as postcard). The worker hands over what it received and
//! sends what loongd answered; loongd keeps the state (docs/channels.md).
//!
//! - [`KIND_CHANNEL_OFFSET`]: no body; answered by [`ChannelOffset`] (where polling starts).
//! - [`KIND_CHANNEL_RECEIVED`]: [`ChannelReceived`]; answered by [`ChannelTaken`]. The
//!   messages and the new offset are committed in one transaction; a button press
//!   ([`ChannelPress`]) is judged and answered ([`PressAnswer`]).
//! - [`KIND_CHANNEL_OUTBOX`]: [`ChannelOutboxWait`]; answered by `Vec<ChannelOutboxItem>`
//!   (answers, and approvals offered to the operator chats).
//! - [`KIND_CHANNEL_ACK`]: [`ChannelAck`] once an item was sent; answered by an empty body.
//! - [`KIND_CHANNEL_STATUS`]: [`ChannelStatus`] (a 409 conflict, a failure, or all clear);
//!   answered by an empty body.
//! - [`KIND_CHANNEL_WEBHOOK_NEXT`]: [`WebhookWait`]; answered by `Vec<WebhookRequest>`, the
//!   webhook requests the gateway relayed for this channel (loongd does not parse them).
//! - [`KIND_CHANNEL_WEBHOOK_ANSWER`]: [`WebhookAnswer`] (the status and body the gateway
//!   answers the platform with); answered by an empty body.
//! - [`KIND_CHANNEL_EVENT`]: [`ChannelEvent`] (a Feishu event id and its message, if it is
//!   one taken); answered by [`ChannelEventTaken`]. The id is marked seen and the message
//!   enqueued in one transaction; an id seen before is a replay, and nothing is taken.

use serde::{Deserialize, Serialize};

use super::{check_len, BoundError};

pub const KIND_CHANNEL_OFFSET: &str = "channel_offset";
pub const KIND_CHANNEL_RECEIVED: &str = "channel_received";
pub const KIND_CHANNEL_OUTBOX: &str = "channel_outbox";
pub const KIND_CHANNEL_ACK: &str = "channel_ack";
pub const KIND_CHANNEL_STATUS: &str = "channel_status";
pub const KIND_CHANNEL_WEBHOOK_NEXT: &str = "channel_webhook_next";
pub const KIND_CHANNEL_WEBHOOK_ANSWER: &str = "channel_webhook_answer";
pub const KIND_CHANNEL_EVENT: &str = "channel_event";

/// The largest webhook request body relayed (Feishu's event bodies are a few KiB; the
/// channel worker's `MAX_EVENT_BYTES`).
pub const MAX_WEBHOOK_BODY_BYTES: usize = 1024 * 1024;
/// The most headers one webhook request carries (Feishu's three `X-Lark-*`).
pub const MAX_WEBHOOK_HEADERS: usize = 8;
/// Bound on a webhook header's name and value.
pub const MAX_WEBHOOK_HEADER_BYTES: usize = 256;
/// Bound on a webhook answer's body (a challenge echoed, a short refusal).
pub const MAX_WEBHOOK_ANSWER_BYTES: usize = 16 * 1024;
/// The most webhook requests one [`KIND_CHANNEL_WEBHOOK_NEXT`] answer carries, and the
/// longest it waits for one.
pub const MAX_WEBHOOK_BATCH: usize = 16;
pub const MAX_WEBHOOK_WAIT_MS: u32 = 30_000;
/// Bound on the bytes of the requests one [`KIND_CHANNEL_WEBHOOK_NEXT`] answer carries
/// ([`WebhookRequest::wire_bytes`]); one request is handed whatever its size. Without it,
/// [`MAX_WEBHOOK_BATCH`] unauthenticated bodies of [`MAX_WEBHOOK_BODY_BYTES`] made an answer
/// past the worker's frame limit, and loongd retired the channel's worker for it.
pub const MAX_WEBHOOK_BATCH_BYTES: usize = 4 * MAX_WEBHOOK_BODY_BYTES;
/// Bytes counted for one webhook request besides its headers and body (its id and lengths).
pub const WEBHOOK_REQUEST_OVERHEAD_BYTES: usize = 64;

// A batch (within its bound, plus the one request past it) fits a worker's frame.
const _: () = assert!(
    MAX_WEBHOOK_BATCH_BYTES
        + MAX_WEBHOOK_BODY_BYTES
        + MAX_WEBHOOK_HEADERS * 2 * MAX_WEBHOOK_HEADER_BYTES
        + WEBHOOK_REQUEST_OVERHEAD_BYTES
        < super::worker::WORKER_MAX_FRAME_BYTES as usize / 2
);

/// The most messages one [`ChannelReceived`] carries (a `getUpdates` answer's maximum).
pub const MAX_CHANNEL_BATCH: usize = 100;
/// Bound on a received message's text.
pub const MAX_CHANNEL_TEXT_BYTES: usize = 64 * 1024;
/// Bound on an id (a delivery key, chat id, message id, thread, sender).
pub const MAX_CHANNEL_ID_BYTES: usize = 128;
/// Bound on a status message.
pub const MAX_CHANNEL_STATUS_BYTES: usize = 1024;
/// The most items one outbox answer carries, and the longest it waits for one.
pub const MAX_OUTBOX_ITEMS: u32 = 16;
pub const MAX_OUTBOX_WAIT_MS: u32 = 30_000;
/// Bound on the ids of the platform messages one answer was sent as.
pub const MAX_SENT_IDS: usize = 32;
/// Bound on a button's data (the Bot API's `callback_data` is 1 to 64 bytes).
pub const MAX_PRESS_DATA_BYTES: usize = 64;
/// Bound on what a press is answered with (the Bot API shows 0 to 200 characters).
pub const MAX_PRESS_ANSWER_BYTES: usize = 200;
/// The data of an offer's approve button is this and the approval's id.
pub const PRESS_APPROVE: &str = "approve:";
/// The data of an offer's deny button is this and the approval's id.
pub const PRESS_DENY: &str = "deny:";

/// Where polling starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelOffset {
    pub offset: Option<i64>,
}

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelMessage {
    /// The platform's delivery id (Telegram's `update_id`, Feishu's `event_id`).
    pub key: String,
    pub chat: String,
    pub message_id: String,
    pub thread: Option<String>,
    pub sender: String,
    pub text: String,
}

/// A press of an inline button (Telegram's `callback_query`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelPress {
    /// The platform's id of the press (answered with `answerCallbackQuery`).
    pub callback: String,
    /// The chat the button's message is in (empty: the platform did not say).
    pub chat: String,
    /// Who pressed it (Telegram's user id).
    pub user: String,
    /// The button's data.
    pub data: String,
}

/// What loongd answers a press with (the notice the presser sees).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PressAnswer {
    pub callback: String,
    pub text: String,
}

/// A batch received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelReceived {
    /// The offset past the batch (Telegram), committed with it.
    pub next_offset: Option<i64>,
    pub messages: Vec<ChannelMessage>,
    /// Updates of kinds not taken, passed by the offset.
    pub skipped: u32,
    /// Buttons pressed (at most [`MAX_CHANNEL_BATCH`] with the messages).
    pub presses: Vec<ChannelPress>,
}

/// What loongd took of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelTaken {
    /// Messages new to the inbox (a batch handed over twice is taken once).
    pub taken: u32,
    /// Messages from chats not in the allowlist: ignored and audited.
    pub ignored: u32,
    /// The chats whose messages were taken for a turn (each once): shown the bot typing. A
    /// stranger's chat is not among them.
    pub typing: Vec<String>,
    /// Each press, answered.
    pub presses: Vec<PressAnswer>,
}

/// Ask for answers to send, waiting up to `wait_ms` for one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelOutboxWait {
    pub max_items: u32,
    pub wait_ms: u32,
}

/// What an outbox item is: its id is one of its kind's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboxKind {
    /// A message's answer.
    Answer,
    /// A pending approval offered to an operator chat, sent with approve and deny buttons.
    Offer {
        /// Which approval is offered (the buttons' data is [`PRESS_APPROVE`] or
        /// [`PRESS_DENY`] and this id).
        approval: [u8; 8],
    },
}

impl OutboxKind {
    /// The data of the offer's approve and deny buttons (`None` for an answer).
    pub fn buttons(self) -> Option<(String, String)> {
        match self {
            OutboxKind::Answer => None,
            OutboxKind::Offer { approval } => {
                let id: String = approval.iter().map(|b| format!("{b:02x}")).collect();
                Some((format!("{PRESS_APPROVE}{id}"), format!("{PRESS_DENY}{id}")))
            }
        }
    }
}

/// An answer (or an offer) to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelOutboxItem {
    pub id: i64,
    pub chat: String,
    pub reply_to: String,
    pub thread: Option<String>,
    pub text: String,
    pub kind: OutboxKind,
}

/// An answer (or an offer) sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelAck {
    pub id: i64,
    /// The item's kind, as the outbox gave it.
    pub kind: OutboxKind,
    /// The platform's ids of the messages it was sent as.
    pub sent_ids: Vec<String>,
    /// Why the platform refused it (or its remaining parts) for good (a chat that blocked
    /// the bot, a chat gone): it is not tried again, and the trail says so.
    pub failed: Option<String>,
}

/// The poller's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStatus {
    pub conflict: Option<String>,
    pub last_error: Option<String>,
}

/// A webhook request as the gateway received it: the headers the platform's check needs
/// (lowercase names) and the raw body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRequest {
    /// loongd's number for it, by which it is answered (0 from the gateway).
    pub id: u64,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl WebhookRequest {
    /// The bytes this request adds to a batch: its body, its headers and
    /// [`WEBHOOK_REQUEST_OVERHEAD_BYTES`] (at least its encoded size).
    pub fn wire_bytes(&self) -> usize {
        self.headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
            + self.body.len()
            + WEBHOOK_REQUEST_OVERHEAD_BYTES
    }

    /// Checks every variable-size field against its bound.
    pub fn check_bounds(&self) -> Result<(), BoundError> {
        if self.headers.len() > MAX_WEBHOOK_HEADERS {
            return Err(BoundError {
                field: "headers",
                len: self.headers.len(),
                max: MAX_WEBHOOK_HEADERS,
            });
        }
        for (n, v) in &self.headers {
            check_len("header", n, MAX_WEBHOOK_HEADER_BYTES)?;
            check_len("header", v, MAX_WEBHOOK_HEADER_BYTES)?;
        }
        if self.body.len() > MAX_WEBHOOK_BODY_BYTES {
            return Err(BoundError {
                field: "body",
                len: self.body.len(),
                max: MAX_WEBHOOK_BODY_BYTES,
            });
        }
        Ok(())
    }
}

/// Ask for the webhook requests relayed to this channel, waiting up to `wait_ms` for one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookWait {
    pub wait_ms: u32,
}

/// What the gateway answers a webhook request with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookReply {
    pub status: u16,
    /// A JSON body.
    pub body: Vec<u8>,
}

/// The channel worker's answer to the webhook request `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookAnswer {
    pub id: u64,
    pub reply: WebhookReply,
    /// Why the request was refused (a bad signature, a stale timestamp, a body that does not
    /// parse), for the trail; `None` when it was taken or answered.
    pub refused: Option<String>,
}

impl WebhookAnswer {
    /// Checks every variable-size field against its bound.
    pub fn check_bounds(&self) -> Result<(), BoundError> {
        // A final HTTP status (2xx to 5xx): anything else would be no answer to the platform.
        if !(200..=599).contains(&self.reply.status) {
            return Err(BoundError {
                field: "status",
                len: usize::from(self.reply.status),
                max: 599,
            });
        }
        if self.reply.body.len() > MAX_WEBHOOK_ANSWER_BYTES {
            return Err(BoundError {
                field: "body",
                len: self.reply.body.len(),
                max: MAX_WEBHOOK_ANSWER_BYTES,
            });
        }
        check_len(
            "refused",
            self.refused.as_deref().unwrap_or_default(),
            MAX_CHANNEL_STATUS_BYTES,
        )
    }
}

/// A Feishu event judged and signed: its id (the delivery key), and its message when it is
/// one to hand over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelEvent {
    pub event_id: String,
    pub message: Option<ChannelMessage>,
}

impl ChannelEvent {
    /// Checks every variable-size field against its bound.
    pub fn check_bounds(&self) -> Result<(), BoundError> {
        ChannelReceived {
            next_offset: None,
            messages: self.message.iter().cloned().collect(),
            skipped: 0,
            presses: Vec::new(),
        }
        .check_bounds()?;
        id("event_id", &self.event_id)
    }
}

/// What loongd took of a [`ChannelEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelEventTaken {
    /// The event id was seen before: nothing was taken.
    pub replayed: bool,
    /// The message waits for its turn (from an allowed chat).
    pub taken: bool,
}

fn id(field: &'static str, v: &str) -> Result<(), BoundError> {
    check_len(field, v, MAX_CHANNEL_ID_BYTES)
}

impl ChannelReceived {
    /// Checks every variable-size field against its bound.
    pub fn check_bounds(&self) -> Result<(), BoundError> {
        let count = self.messages.len() + self.presses.len();
        if count > MAX_CHANNEL_BATCH {
            return Err(BoundError {
                field: "messages",
                len: count,
                max: MAX_CHANNEL_BATCH,
            });
        }
        for p in &self.presses {
            id("callback", &p.callback)?;
            id("chat", &p.chat)?;
            id("user", &p.user)?;
            check_len("data", &p.data, MAX_PRESS_DATA_BYTES)?;
        }
        for m in &self.messages {
            id("key", &m.key)?;
            id("chat", &m.chat)?;
            id("message_id", &m.message_id)?;
            id("thread", m.thread.as_deref().unwrap_or_default())?;
            id("sender", &m.sender)?;
            check_len("text", &m.text, MAX_CHANNEL_TEXT_BYTES)?;
        }
        Ok(())
    }
}

impl ChannelAck {
    /// Checks every variable-size field against its bound.
    pub fn check_bounds(&self) -> Result<(), BoundError> {
        if self.sent_ids.len() > MAX_SENT_IDS {
            return Err(BoundError {
                field: "sent_ids",
                len: self.sent_ids.len(),
                max: MAX_SENT_IDS,
            });
        }
        self.sent_ids.iter().try_for_each(|s| id("sent_ids", s))?;
        check_len(
            "failed",
            self.failed.as_deref().unwrap_or_default(),
            MAX_CHANNEL_STATUS_BYTES,
        )
    }
}

impl ChannelStatus {
    /// Checks every variable-size field against its bound.
    pub fn check_bounds(&self) -> Result<(), BoundError> {
        check_len(
            "conflict",
            self.conflict.as_deref().unwrap_or_default(),
            MAX_CHANNEL_STATUS_BYTES,
        )?;
        check_len(
            "last_error",
            self.last_error.as_deref().unwrap_or_default(),
            MAX_CHANNEL_STATUS_BYTES,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> ChannelMessage {
        ChannelMessage {
            key: "1".into(),
            chat: "2".into(),
            message_id: "3".into(),
            thread: None,
            sender: "4".into(),
            text: text.into(),
        }
    }

    #[test]
    fn webhook_bodies_are_bounded_and_answers_are_final_statuses() {
        let req = WebhookRequest {
            id: 1,
            headers: vec![("x-lark-signature".into(), "ab".into())],
            body: vec![b'{'; MAX_WEBHOOK_BODY_BYTES],
        };
        req.check_bounds().expect("control");
        let big = WebhookRequest {
            body: vec![b'{'; MAX_WEBHOOK_BODY_BYTES + 1],
            ..req.clone()
        };
        assert_eq!(big.check_bounds().expect_err("big").field, "body");
        let many = WebhookRequest {
            headers: vec![("a".into(), "b".into()); MAX_WEBHOOK_HEADERS + 1],
            ..req.clone()
        };
        assert_eq!(many.check_bounds().expect_err("many").field, "headers");
        let answer = |status: u16, len: usize| WebhookAnswer {
            id: 1,
            reply: WebhookReply {
                status,
                body: vec![b' '; len],
            },
            refused: None,
        };
        answer(200, MAX_WEBHOOK_ANSWER_BYTES)
            .check_bounds()
            .expect("control");
        answer(503, 0).check_bounds().expect("control");
        for status in [0, 101, 199, 600, u16::MAX] {
            assert_eq!(
                answer(status, 0).check_bounds().expect_err("status").field,
                "status"
            );
        }
        let long = answer(200, MAX_WEBHOOK_ANSWER_BYTES + 1);
        assert_eq!(long.check_bounds().expect_err("long").field, "body");
    }

    #[test]
    fn bodies_are_bounded() {
        let ok = ChannelReceived {
            next_offset: Some(2),
            messages: vec![msg("hi")],
            skipped: 0,
            presses: Vec::new(),
        };
        ok.check_bounds().expect("control");
        let bytes = postcard::to_allocvec(&ok).expect("encode");
        assert_eq!(
            postcard::from_bytes::<ChannelReceived>(&bytes).expect("decode"),
            ok
        );
        let long = ChannelReceived {
            messages: vec![msg(&"x".repeat(MAX_CHANNEL_TEXT_BYTES + 1))],
            ..ok.clone()
        };
        assert_eq!(long.check_bounds().expect_err("long").field, "text");
        let many = ChannelReceived {
            messages: vec![msg("x"); MAX_CHANNEL_BATCH + 1],
            ..ok.clone()
        };
        assert_eq!(many.check_bounds().expect_err("many").field, "messages");
        let mut chat = msg("x");
        chat.chat = "9".repeat(MAX_CHANNEL_ID_BYTES + 1);
        let wide = ChannelReceived {
            messages: vec![chat],
            ..ok.clone()
        };
        assert_eq!(wide.check_bounds().expect_err("chat").field, "chat");
        let press = |data: &str| ChannelReceived {
            presses: vec![ChannelPress {
                callback: "c".into(),
                chat: "1".into(),
                user: "1".into(),
                data: data.into(),
            }],
            ..ok.clone()
        };
        press(&"d".repeat(MAX_PRESS_DATA_BYTES))
            .check_bounds()
            .expect("control");
        assert_eq!(
            press(&"d".repeat(MAX_PRESS_DATA_BYTES + 1))
                .check_bounds()
                .expect_err("data")
                .field,
            "data"
        );
        let ack = ChannelAck {
            id: 1,
            kind: OutboxKind::Answer,
            sent_ids: vec!["1".into(); MAX_SENT_IDS + 1],
            failed: None,
        };
        assert!(ack.check_bounds().is_err());
        let ack = ChannelAck {
            id: 1,
            kind: OutboxKind::Answer,
            sent_ids: Vec::new(),
            failed: Some("f".repeat(MAX_CHANNEL_STATUS_BYTES + 1)),
        };
        assert_eq!(ack.check_bounds().expect_err("failed").field, "failed");
        let status = ChannelStatus {
            conflict: Some("c".repeat(MAX_CHANNEL_STATUS_BYTES + 1)),
            last_error: None,
        };
        assert!(status.check_bounds().is_err());
    }
}
