//! The channel worker's service loops: what it does while it serves loongd's `Serve` call.
//!
//! [`Kernel`] is the worker's only way to loongd (the binary implements it with kernel
//! calls; tests with a fake). Telegram runs two loops. The poll loop asks loongd where to
//! start, long-polls `getUpdates`, hands each batch over with the offset past it (loongd
//! commits both in one transaction), and only then polls from the new offset; a batch loongd
//! did not take is polled again from the old offset (loongd takes a batch twice only once).
//! Failed polls back off ([`crate::telegram::Poller`]) and a change of the poller's state (a
//! 409 conflict, a failure, all clear) is reported to loongd. The send loop asks loongd for
//! answers, sends each (split into parts) and acks it after the platform's 200; a send that
//! fails is tried again after a back-off, a 429 after its `retry_after`. Once a batch is
//! taken, each of its chats is sent `sendChatAction` (`typing`) while its turn runs.

use std::future::Future;
use std::pin::Pin;
#[cfg(feature = "telegram")]
use std::sync::Arc;
#[cfg(feature = "telegram")]
use std::time::Duration;

#[cfg(feature = "telegram")]
use crate::backoff::Waits;
#[cfg(feature = "telegram")]
use crate::limits::{BACKOFF_CAP, BACKOFF_START};
#[cfg(feature = "telegram")]
use crate::telegram::{next_offset, Poller, Telegram, UpdateKind};

/// A future a [`Kernel`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A kernel call that failed (refused by loongd, or the link is gone).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kernel call {call}: {message}")]
pub struct KernelError {
    pub call: &'static str,
    pub message: String,
}

/// A message handed to loongd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub key: String,
    pub chat: String,
    pub message_id: String,
    pub thread: Option<String>,
    pub sender: String,
    pub text: String,
}

/// A button pressed, handed to loongd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Press {
    /// The platform's id of the press.
    pub callback: String,
    /// The chat of the button's message (empty: the platform did not say).
    pub chat: String,
    pub user: String,
    pub data: String,
}

/// A batch handed to loongd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub next_offset: Option<i64>,
    pub messages: Vec<Incoming>,
    pub skipped: u32,
    pub presses: Vec<Press>,
}

/// What loongd took of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Taken {
    /// The chats whose messages were taken for a turn (not a stranger's, not one taken
    /// before).
    pub typing: Vec<String>,
    /// Each press (by its callback id) and the notice to answer it with.
    pub presses: Vec<(String, String)>,
}

/// An approval offered: the approval's id and the data of its approve and deny buttons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub approval: [u8; 8],
    pub approve: String,
    pub deny: String,
}

/// An answer (or an approval offered) loongd asks to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub id: i64,
    pub chat: String,
    pub reply_to: String,
    pub thread: Option<String>,
    pub text: String,
    /// Sent with approve and deny buttons.
    pub offer: Option<Offer>,
}

/// The worker's calls to loongd.
pub trait Kernel: Send + Sync {
    /// Where polling starts.
    fn offset(&self) -> BoxFuture<'_, Result<Option<i64>, KernelError>>;
    /// Hands over a batch with the offset past it; answers what loongd took of it.
    fn received(&self, batch: Batch) -> BoxFuture<'_, Result<Taken, KernelError>>;
    /// Answers to send (waits a while for one).
    fn outbox(&self) -> BoxFuture<'_, Result<Vec<Outgoing>, KernelError>>;
    /// An answer (or the offer of `offer`'s approval) was sent as these platform messages;
    /// `failed` says why the platform refused (the rest of) it for good, when it did.
    fn ack(
        &self,
        id: i64,
        offer: Option<[u8; 8]>,
        sent: Vec<String>,
        failed: Option<String>,
    ) -> BoxFuture<'_, Result<(), KernelError>>;
    /// The poller's state changed.
    fn status(
        &self,
        conflict: Option<String>,
        last_error: Option<String>,
    ) -> BoxFuture<'_, Result<(), KernelError>>;
    /// The webhook requests the gateway relayed to this channel (waits a while for one).
    fn webhooks(&self) -> BoxFuture<'_, Result<Vec<HookRequest>, KernelError>> {
        Box::pin(async {
            Err(KernelError {
                call: "channel_webhook_next",
                message: "this kernel serves no webhooks".into(),
            })
        })
    }
    /// Answers a webhook request.
    fn answer_webhook(&self, _answer: HookAnswer) -> BoxFuture<'_, Result<(), KernelError>> {
        Box::pin(async {
            Err(KernelError {
                call: "channel_webhook_answer",
                message: "this kernel serves no webhooks".into(),
            })
        })
    }
    /// Hands over a signed event: its id marked seen and its message (if one to take)
    /// enqueued, in one transaction.
    fn event(
        &self,
        _event_id: String,
        _message: Option<Incoming>,
    ) -> BoxFuture<'_, Result<EventTaken, KernelError>> {
        Box::pin(async {
            Err(KernelError {
                call: "channel_event",
                message: "this kernel takes no events".into(),
            })
        })
    }
}

/// A webhook request relayed by the gateway: the platform's headers (lowercase names) and
/// the raw body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRequest {
    pub id: u64,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HookRequest {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}

/// The answer to a webhook request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookAnswer {
    pub id: u64,
    pub status: u16,
    pub body: Vec<u8>,
    /// Why it was refused, for the trail.
    pub refused: Option<String>,
}

/// What loongd made of an event handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTaken {
    /// Its id is new: its message (if any) is in the inbox.
    Fresh,
    /// Its id was seen before: nothing was taken.
    Replayed,
}

#[cfg(feature = "telegram")]
/// The messages of a batch that become turns: text messages only, and button presses (the
/// rest is skipped). A text past what loongd takes (no platform sends one; a hostile host
/// may) is skipped too: handed over, it would fail the whole batch forever, and the offset
/// never pass it; so is a press whose ids or data are past loongd's bounds.
pub fn incoming(updates: &[crate::telegram::Update]) -> (Vec<Incoming>, Vec<Press>, u32) {
    use crate::limits::{MAX_HANDED_ID_BYTES, MAX_HANDED_PRESS_DATA_BYTES};
    let mut out = Vec::new();
    let mut presses = Vec::new();
    let mut skipped = 0;
    let fits = |t: &str| t.len() <= crate::limits::MAX_HANDED_TEXT_BYTES;
    for u in updates {
        match &u.kind {
            UpdateKind::CallbackQuery(c)
                if c.id.len() <= MAX_HANDED_ID_BYTES
                    && c.data
                        .as_deref()
                        .is_some_and(|d| d.len() <= MAX_HANDED_PRESS_DATA_BYTES) =>
            {
                presses.push(Press {
                    callback: c.id.clone(),
                    chat: c
                        .message
                        .as_ref()
                        .map_or_else(String::new, |m| m.chat.id.to_string()),
                    user: c.from.id.to_string(),
                    data: c.data.clone().unwrap_or_default(),
                });
            }
            UpdateKind::Message(m) if m.text.as_deref().is_some_and(fits) => out.push(Incoming {
                key: u.update_id.to_string(),
                chat: m.chat.id.to_string(),
                message_id: m.message_id.to_string(),
                thread: m.message_thread_id.map(|t| t.to_string()),
                sender: m
                    .from
                    .as_ref()
                    .map_or_else(String::new, |f| f.id.to_string()),
                text: m.text.clone().unwrap_or_default(),
            }),
            _ => skipped += 1,
        }
    }
    (out, presses, skipped)
}

#[cfg(feature = "telegram")]
/// The poll loop; returns only when a kernel call fails at start (otherwise it runs until
/// the worker stops).
pub async fn poll_telegram(
    tg: Arc<Telegram>,
    kernel: Arc<dyn Kernel>,
    mut poller: Poller,
) -> Result<(), KernelError> {
    let mut offset = kernel.offset().await?;
    let mut reported: (Option<String>, Option<String>) = (None, None);
    loop {
        let result = tg.get_updates(offset).await;
        let mut wait = poller.record(&result);
        let now = (poller.conflict.clone(), poller.last_error.clone());
        if now != reported {
            match kernel.status(now.0.clone(), now.1.clone()).await {
                Ok(()) => reported = now,
                Err(e) => tracing::warn!(error = %e, "reporting the poller's state"),
            }
        }
        if let Ok(mut updates) = result {
            // At most the `limit` asked for: a host answering more would make a batch
            // loongd refuses whole, for good. The rest come again from the new offset.
            updates.truncate(crate::limits::TELEGRAM_MAX_UPDATES as usize);
            if !updates.is_empty() {
                let next = next_offset(offset, &updates);
                let (messages, presses, skipped) = incoming(&updates);
                let batch = Batch {
                    next_offset: next,
                    messages,
                    skipped,
                    presses,
                };
                match kernel.received(batch).await {
                    Ok(taken) => {
                        offset = next;
                        // Each press is answered with loongd's notice (a hint to the
                        // presser: a failure is not an error).
                        for (callback, text) in &taken.presses {
                            if let Err(e) = tg.answer_callback(callback, Some(text)).await {
                                tracing::debug!(error = %e, "answerCallbackQuery");
                            }
                        }
                        // The chats whose messages were taken see the bot typing while
                        // their turns run (a hint: a failure is not an error); a stranger
                        // is shown nothing.
                        for chat in taken.typing.iter().filter_map(|c| c.parse::<i64>().ok()) {
                            if let Err(e) = tg.send_typing(chat).await {
                                tracing::debug!(error = %e, "sendChatAction");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "handing over a batch; it is polled again");
                        wait = BACKOFF_START;
                    }
                }
            }
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(feature = "telegram")]
/// The send loop: runs until the worker stops.
pub async fn send_telegram(tg: Arc<Telegram>, kernel: Arc<dyn Kernel>) {
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
            send_one(&tg, kernel.as_ref(), &mut backoff, item).await;
        }
    }
}

#[cfg(feature = "telegram")]
/// Sends one answer until the platform takes it, then acks it.
async fn send_one(tg: &Telegram, kernel: &dyn Kernel, backoff: &mut Waits, item: Outgoing) {
    let parse = |s: &str| s.parse::<i64>().ok();
    let Some(chat) = parse(&item.chat) else {
        tracing::warn!(chat = %item.chat, "an answer to a chat id that is not a number; dropped");
        let _ = kernel
            .ack(
                item.id,
                item.offer.as_ref().map(|o| o.approval),
                Vec::new(),
                Some("the chat id is not a number".into()),
            )
            .await;
        return;
    };
    let thread = item.thread.as_deref().and_then(parse);
    let reply_to = parse(&item.reply_to);
    let parts = crate::telegram::split_text(&item.text);
    let mut sent = Vec::new();
    loop {
        let result = match &item.offer {
            Some(o) if sent.is_empty() => tg
                .send_offer(chat, &item.text, &o.approve, &o.deny)
                .await
                .map(|id| sent.push(id)),
            Some(_) => Ok(()),
            None => {
                tg.send_parts(chat, thread, reply_to, &parts, &mut sent)
                    .await
            }
        };
        let failed = match result {
            Ok(()) => None,
            // Given up: the same request would be refused forever, and it would hold every
            // other chat's answer behind it.
            Err(e) if crate::telegram::refused_for_good(&e) => {
                tracing::warn!(error = %e, "an answer refused by the platform; given up");
                Some(e.to_string())
            }
            Err(e) => {
                tracing::warn!(error = %e, "sending an answer; tried again");
                let wait = backoff.fail(&e);
                tokio::time::sleep(wait.min(Duration::from_secs(600))).await;
                continue;
            }
        };
        backoff.succeed();
        let ids = sent.iter().map(ToString::to_string).collect();
        let offer = item.offer.as_ref().map(|o| o.approval);
        if let Err(e) = kernel.ack(item.id, offer, ids, failed).await {
            tracing::warn!(error = %e, "acking a sent answer");
        }
        return;
    }
}

#[cfg(feature = "feishu")]
pub mod feishu;

#[cfg(all(test, feature = "telegram"))]
mod tests;
