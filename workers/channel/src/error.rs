//! The channel worker's errors: one enum, each variant naming what failed.

use std::time::Duration;

/// Why a platform call or a platform payload failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the {what} response is larger than {limit} bytes; refused")]
    TooLarge { what: &'static str, limit: usize },
    #[error("the {what} payload is not valid: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("{method}: {status}: another getUpdates poller or a webhook holds this bot token (409 Conflict: {description}); stop the other poller, or delete the webhook with deleteWebhook, then restart the channel")]
    Conflict {
        method: &'static str,
        status: u16,
        description: String,
    },
    #[error("{method}: rate limited (429); retrying after {retry_after:?}")]
    RateLimited {
        method: &'static str,
        retry_after: Duration,
    },
    #[error("{method}: loongd's egress broker refused the connection for the channel's connection rate (429); tried again shortly ([egress] connections_per_second)")]
    BrokerRefused { method: &'static str },
    #[error("{method}: the platform answered {status}: {description}")]
    Api {
        method: &'static str,
        status: u16,
        description: String,
    },
    #[error("{method}: {source}")]
    Http {
        method: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("building the http client: {0}")]
    Client(String),
    #[error("the request signature does not match; refused")]
    BadSignature,
    #[error("the request timestamp {timestamp:?} is outside the {window:?} window; refused")]
    StaleTimestamp { timestamp: String, window: Duration },
    #[error("the verification token does not match; refused")]
    BadToken,
    #[error("the encrypted payload cannot be decrypted: {0}; check the channel's encrypt key")]
    Decrypt(&'static str),
    #[error("the event is encrypted but the channel has no encrypt key; add one with `loongctl channels add feishu ... --encrypt-key-stdin`")]
    NoEncryptKey,
    #[error("the {what} is not a valid url: {url}")]
    BadUrl { what: &'static str, url: String },
}

impl ChannelError {
    /// The wait a caller must honour before the next call, if the platform asked for one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Whether loongd's egress broker (not the platform) refused the request for the
    /// sandbox's connection rate: tried again on a short back-off of its own.
    pub fn is_broker_refusal(&self) -> bool {
        matches!(self, Self::BrokerRefused { .. })
    }

    /// Whether this is Telegram's `409 Conflict` (another poller or a webhook).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }
}

/// `text` cut to `max` characters, control characters replaced, for an error message.
pub fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
