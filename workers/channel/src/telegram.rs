//! Telegram Bot API: long polling with `getUpdates`, `sendMessage`, `sendChatAction`,
//! `answerCallbackQuery`.
//!
//! Every method is a `POST {api_base}/bot{token}/{method}` with a JSON body; every answer is
//! the envelope `{"ok", "result"}` or `{"ok": false, "error_code", "description",
//! "parameters": {"retry_after"}}`. [`outcome`] turns an answer into a result or a
//! [`ChannelError`]: `409` is [`ChannelError::Conflict`] (another poller or a webhook holds
//! the token), `429` is [`ChannelError::RateLimited`] with the platform's `retry_after`
//! (clamped to [`MAX_RETRY_AFTER`]). [`Poller`] turns a poll's result into the wait before
//! the next one: never a hot loop.
//!
//! `getUpdates` answers are parsed update by update: an update of a kind this worker does
//! not take, or one whose known kind is malformed, is [`UpdateKind::Skipped`], so a single
//! bad update never blocks the offset (it would be fetched again forever). The bot token is
//! part of every URL, so no error here carries a URL (`reqwest::Error::without_url`) and
//! [`Telegram`]'s `Debug` does not show it.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::backoff::Waits;
use crate::error::{printable, ChannelError};
use crate::http::{self, read_bounded};
use crate::limits::{
    BACKOFF_CAP, BACKOFF_START, MAX_DESCRIPTION_CHARS, MAX_MESSAGE_PARTS, MAX_RESPONSE_BYTES,
    MAX_RETRY_AFTER, MAX_UPDATE_ID, REQUEST_GRACE, TELEGRAM_MAX_MESSAGE_UNITS,
    TELEGRAM_MAX_UPDATES,
};

/// The public Bot API host.
pub const DEFAULT_API_BASE: &str = "https://api.telegram.org";
/// The update kinds asked for (`allowed_updates`).
pub const ALLOWED_UPDATES: &[&str] = &["message", "callback_query"];
/// The longest bot token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 256;
/// What an error shows where an answer echoed the bot token.
pub const REDACTED_TOKEN: &str = "[bot token]";

/// A chat.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Chat {
    pub id: i64,
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    pub id: i64,
    #[serde(default)]
    pub is_bot: bool,
    #[serde(default)]
    pub username: Option<String>,
}

/// A message (only what a channel uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Message {
    pub message_id: i64,
    pub chat: Chat,
    #[serde(default)]
    pub from: Option<User>,
    #[serde(default)]
    pub date: i64,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub message_thread_id: Option<i64>,
}

/// A press of an inline keyboard button.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CallbackQuery {
    pub id: String,
    pub from: User,
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub message: Option<CallbackMessage>,
}

/// The message a callback's button was on (it may be inaccessible: only its chat and id).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CallbackMessage {
    pub message_id: i64,
    pub chat: Chat,
}

/// What an update carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateKind {
    Message(Message),
    CallbackQuery(CallbackQuery),
    /// A kind not taken here, or a known kind that did not parse: the offset passes it.
    Skipped {
        reason: String,
    },
}

/// One update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub update_id: i64,
    pub kind: UpdateKind,
}

#[derive(Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    result: Value,
    #[serde(default)]
    error_code: Option<u16>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct Parameters {
    #[serde(default)]
    retry_after: Option<u64>,
}

/// The result of `method`'s answer (HTTP `status`, `body`), or why it failed.
pub fn outcome(method: &'static str, status: u16, body: &[u8]) -> Result<Value, ChannelError> {
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) if (200..300).contains(&status) => {
            return Err(ChannelError::Malformed {
                what: method,
                reason: e.to_string(),
            })
        }
        Err(_) => Envelope {
            ok: false,
            result: Value::Null,
            error_code: None,
            description: Some(String::from_utf8_lossy(body).into_owned()),
            parameters: None,
        },
    };
    if envelope.ok && (200..300).contains(&status) {
        return Ok(envelope.result);
    }
    let code = envelope.error_code.unwrap_or(status);
    let description = printable(
        envelope.description.as_deref().unwrap_or("no description"),
        MAX_DESCRIPTION_CHARS,
    );
    Err(match code {
        409 => ChannelError::Conflict {
            method,
            status: code,
            description,
        },
        429 => ChannelError::RateLimited {
            method,
            retry_after: envelope
                .parameters
                .and_then(|p| p.retry_after)
                .map_or(BACKOFF_START, Duration::from_secs)
                .min(MAX_RETRY_AFTER),
        },
        _ => ChannelError::Api {
            method,
            status: code,
            description,
        },
    })
}

/// The updates in a `getUpdates` result.
pub fn parse_updates(result: Value) -> Result<Vec<Update>, ChannelError> {
    let Value::Array(items) = result else {
        return Err(ChannelError::Malformed {
            what: "getUpdates",
            reason: "the result is not an array".into(),
        });
    };
    items.into_iter().map(parse_update).collect()
}

fn parse_update(item: Value) -> Result<Update, ChannelError> {
    let Value::Object(mut map) = item else {
        return Err(ChannelError::Malformed {
            what: "getUpdates",
            reason: "an update is not an object".into(),
        });
    };
    let update_id = map
        .get("update_id")
        .and_then(Value::as_i64)
        .filter(|id| (0..=MAX_UPDATE_ID).contains(id))
        .ok_or_else(|| ChannelError::Malformed {
            what: "getUpdates",
            reason: format!("an update has no integer update_id from 0 to {MAX_UPDATE_ID}"),
        })?;
    let skipped = |reason: String| UpdateKind::Skipped { reason };
    let kind = if let Some(m) = map.remove("message") {
        serde_json::from_value(m)
            .map_or_else(|e| skipped(format!("message: {e}")), UpdateKind::Message)
    } else if let Some(c) = map.remove("callback_query") {
        serde_json::from_value(c).map_or_else(
            |e| skipped(format!("callback_query: {e}")),
            UpdateKind::CallbackQuery,
        )
    } else {
        let key = map
            .keys()
            .find(|k| *k != "update_id")
            .map_or("none", String::as_str);
        skipped(format!("kind {} not taken", printable(key, 40)))
    };
    Ok(Update { update_id, kind })
}

/// The offset that acknowledges `updates` (one past the highest id), or `current`.
pub fn next_offset(current: Option<i64>, updates: &[Update]) -> Option<i64> {
    updates
        .iter()
        .map(|u| u.update_id.saturating_add(1))
        .chain(current)
        .max()
}

/// Checks a bot token's shape (`DIGITS:KEY`) before it goes into a URL path.
/// The parts an answer is sent as (at most 4096 UTF-16 units each, at most
/// [`MAX_MESSAGE_PARTS`]).
pub fn split_text(text: &str) -> Vec<String> {
    crate::text::split(text, TELEGRAM_MAX_MESSAGE_UNITS, MAX_MESSAGE_PARTS)
}

/// Whether the platform refused a send for good: `400` (a chat, thread or message gone)
/// and `403` (the bot blocked, or removed from the chat) say the same request will never
/// be taken. A 429, a 5xx, a failed connection or a token the platform does not know
/// (`401`, `404`: every send of the channel fails until the operator fixes it) are tried
/// again: nothing is dropped for a failure that is not the chat's own.
pub fn refused_for_good(e: &ChannelError) -> bool {
    matches!(
        e,
        ChannelError::Api {
            status: 400 | 403,
            ..
        }
    )
}

pub fn check_token(token: &str) -> Result<(), ChannelError> {
    let ok = token.len() <= MAX_TOKEN_BYTES
        && token.split_once(':').is_some_and(|(id, key)| {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_digit())
                && !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(ChannelError::Malformed {
            what: "bot token",
            reason: "expected DIGITS:KEY as @BotFather gives it (letters, digits, _ and -)".into(),
        })
    }
}

/// A poller's view of its last polls, for `channels status`.
#[derive(Debug, Clone)]
pub struct Poller {
    backoff: Waits,
    /// The last 409 (with what to do) while polls keep conflicting.
    pub conflict: Option<String>,
    /// The last failure's message while polls keep failing.
    pub last_error: Option<String>,
}

impl Default for Poller {
    fn default() -> Self {
        Self::new(BACKOFF_START, BACKOFF_CAP)
    }
}

impl Poller {
    /// A poller backing off from `start` to `cap`.
    pub fn new(start: Duration, cap: Duration) -> Self {
        Self {
            backoff: Waits::new(start, cap),
            conflict: None,
            last_error: None,
        }
    }

    /// Records a poll's result; returns the wait before the next poll (zero after a success:
    /// the long poll itself is the wait).
    pub fn record<T>(&mut self, result: &Result<T, ChannelError>) -> Duration {
        match result {
            Ok(_) => {
                self.backoff.succeed();
                self.conflict = None;
                self.last_error = None;
                Duration::ZERO
            }
            Err(e) => {
                // The conflict's message says what to do, for `channels status`.
                self.conflict = e.is_conflict().then(|| e.to_string());
                self.last_error = Some(e.to_string());
                self.backoff.fail(e)
            }
        }
    }

    /// Failed polls since the last success.
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }
}

/// A Bot API client for one bot.
pub struct Telegram {
    client: reqwest::Client,
    /// `{api_base}/bot{token}`: secret.
    prefix: String,
    poll_timeout: u32,
}

impl std::fmt::Debug for Telegram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telegram")
            .field("poll_timeout", &self.poll_timeout)
            .finish_non_exhaustive()
    }
}

impl Telegram {
    /// A client for the bot `token` at `api_base`, long-polling `poll_timeout` seconds.
    pub fn new(api_base: &str, token: &str, poll_timeout: u32) -> Result<Self, ChannelError> {
        check_token(token)?;
        let base = http::base_url(api_base, "telegram api base")?;
        let timeout = Duration::from_secs(u64::from(poll_timeout)) + REQUEST_GRACE;
        Ok(Self {
            client: http::client(timeout, &base)?,
            prefix: format!("{base}/bot{token}"),
            poll_timeout,
        })
    }

    async fn call(&self, method: &'static str, body: &Value) -> Result<Value, ChannelError> {
        let response = self
            .client
            .post(format!("{}/{method}", self.prefix))
            .json(body)
            .send()
            .await
            .map_err(|e| ChannelError::Http {
                method,
                source: e.without_url(),
            })?;
        let status = response.status().as_u16();
        if status == 429 && response.headers().contains_key(http::PROXY_STATUS) {
            return Err(ChannelError::BrokerRefused { method });
        }
        let body = read_bounded(response, MAX_RESPONSE_BYTES, method).await?;
        outcome(method, status, &body).map_err(|e| self.redacted(e))
    }

    /// `e` without the bot token: an answer may echo the request line (a local Bot API
    /// server's 404 page, a proxy's refusal, a hostile host), and every error goes on to
    /// `channels status`, doctor and the logs.
    fn redacted(&self, e: ChannelError) -> ChannelError {
        let token = self
            .prefix
            .rsplit_once("/bot")
            .map_or("", |(_, t)| t)
            .to_owned();
        let key = token.split_once(':').map_or("", |(_, k)| k).to_owned();
        let clean = |text: String| {
            [token.as_str(), key.as_str()]
                .into_iter()
                .filter(|t| !t.is_empty())
                .fold(text, |acc, t| acc.replace(t, REDACTED_TOKEN))
        };
        match e {
            ChannelError::Api {
                method,
                status,
                description,
            } => ChannelError::Api {
                method,
                status,
                description: clean(description),
            },
            ChannelError::Conflict {
                method,
                status,
                description,
            } => ChannelError::Conflict {
                method,
                status,
                description: clean(description),
            },
            ChannelError::Malformed { what, reason } => ChannelError::Malformed {
                what,
                reason: clean(reason),
            },
            other => other,
        }
    }

    /// `getUpdates` from `offset`: waits up to the poll timeout for updates.
    pub async fn get_updates(&self, offset: Option<i64>) -> Result<Vec<Update>, ChannelError> {
        let mut body = json!({
            "timeout": self.poll_timeout,
            "limit": TELEGRAM_MAX_UPDATES,
            "allowed_updates": ALLOWED_UPDATES,
        });
        if let Some(o) = offset {
            body["offset"] = json!(o);
        }
        parse_updates(self.call("getUpdates", &body).await?)
    }

    /// Sends `text` to `chat` as plain text, split into parts of at most 4096 characters;
    /// returns the sent messages' ids. The first part replies to `reply_to`.
    pub async fn send_text(
        &self,
        chat: i64,
        thread: Option<i64>,
        reply_to: Option<i64>,
        text: &str,
    ) -> Result<Vec<i64>, ChannelError> {
        let mut sent = Vec::new();
        self.send_parts(chat, thread, reply_to, &split_text(text), &mut sent)
            .await?;
        Ok(sent)
    }

    /// Sends the `parts` of an answer not sent yet (those past `sent.len()`), pushing each
    /// sent message's id to `sent` as the platform takes it: a send cut short (a 429, a
    /// failure) is resumed at the part that did not go out, so no part reaches the chat
    /// twice. The first part replies to `reply_to`.
    pub async fn send_parts(
        &self,
        chat: i64,
        thread: Option<i64>,
        reply_to: Option<i64>,
        parts: &[String],
        sent: &mut Vec<i64>,
    ) -> Result<(), ChannelError> {
        for (i, part) in parts.iter().enumerate().skip(sent.len()) {
            let mut body = json!({"chat_id": chat, "text": part});
            if let Some(t) = thread {
                body["message_thread_id"] = json!(t);
            }
            if let (0, Some(r)) = (i, reply_to) {
                body["reply_parameters"] =
                    json!({"message_id": r, "allow_sending_without_reply": true});
            }
            let answer = self.call("sendMessage", &body).await?;
            sent.push(
                answer
                    .get("message_id")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
            );
        }
        Ok(())
    }

    /// Sends an approval's offer to `chat` as one plain-text message with two inline
    /// buttons (`Approve`, `Deny`) whose data loongd chose; returns the message's id.
    pub async fn send_offer(
        &self,
        chat: i64,
        text: &str,
        approve: &str,
        deny: &str,
    ) -> Result<i64, ChannelError> {
        let body = json!({
            "chat_id": chat,
            "text": text,
            "reply_markup": {"inline_keyboard": [[
                {"text": "Approve", "callback_data": approve},
                {"text": "Deny", "callback_data": deny},
            ]]},
        });
        let answer = self.call("sendMessage", &body).await?;
        Ok(answer
            .get("message_id")
            .and_then(Value::as_i64)
            .unwrap_or(0))
    }

    /// `sendChatAction` `typing` to `chat`.
    pub async fn send_typing(&self, chat: i64) -> Result<(), ChannelError> {
        self.call(
            "sendChatAction",
            &json!({"chat_id": chat, "action": "typing"}),
        )
        .await
        .map(drop)
    }

    /// `answerCallbackQuery` for the press `id`, with an optional notice.
    pub async fn answer_callback(&self, id: &str, text: Option<&str>) -> Result<(), ChannelError> {
        let mut body = json!({"callback_query_id": id});
        if let Some(t) = text {
            body["text"] = json!(t);
        }
        self.call("answerCallbackQuery", &body).await.map(drop)
    }
}

#[cfg(test)]
mod tests;
