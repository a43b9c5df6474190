//! What can go wrong talking to a provider: one variant per class, each naming the provider.

use std::time::Duration;

/// A provider request or answer that failed. Every variant names the provider (its
/// `[providers.NAME]`); the message says what to check where that is knowable.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// 401 or 403: the key is wrong, expired or lacks access. Never retried.
    #[error(
        "provider {provider} refused the credentials (HTTP {status}): check the api_key secret \
         of [providers.{provider}] and that base_url names the service the key is for: {message}"
    )]
    Auth {
        provider: String,
        status: u16,
        message: String,
    },
    /// 400, 404 or 422: the request itself is wrong (model name, endpoint). Never retried.
    #[error(
        "provider {provider} rejected the request (HTTP {status}): check model and base_url of \
         [providers.{provider}]: {message}"
    )]
    BadRequest {
        provider: String,
        status: u16,
        message: String,
    },
    /// Any other non-success status, or a retryable one after the last attempt.
    #[error("provider {provider} answered HTTP {status} after {attempts} attempt(s): {message}")]
    Status {
        provider: String,
        status: u16,
        attempts: u32,
        message: String,
    },
    /// The provider asked (`Retry-After`) for a longer wait than is honoured.
    #[error(
        "provider {provider} asked to wait {wait:?} before retrying (HTTP {status}), longer than \
         the {limit:?} honoured: try later or configure [agent] fallback"
    )]
    RetryAfterTooLong {
        provider: String,
        status: u16,
        wait: Duration,
        limit: Duration,
    },
    /// The request could not be sent (connection refused or reset, TLS, proxy), after the last
    /// attempt.
    #[error(
        "provider {provider} could not be reached at {url} after {attempts} attempt(s): check \
         base_url and the egress grant for its host: {source}"
    )]
    Connect {
        provider: String,
        url: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    /// No response head, or no bytes of the answer, within the idle timeout.
    #[error("provider {provider} stalled: nothing received for {idle:?} ({during})")]
    Stalled {
        provider: String,
        idle: Duration,
        during: &'static str,
    },
    /// The whole answer took longer than its budget.
    #[error("provider {provider}: the answer took longer than its {limit:?} budget")]
    AnswerTimeout { provider: String, limit: Duration },
    /// A line or event of the stream that is not what the wire format says.
    #[error("provider {provider} sent a malformed stream (line {line}): {reason}")]
    Malformed {
        provider: String,
        line: u64,
        reason: String,
    },
    /// A line, an event or the whole answer beyond its bound.
    #[error("provider {provider}: {what} is larger than {limit} bytes")]
    TooLarge {
        provider: String,
        what: &'static str,
        limit: usize,
    },
    /// More tool calls in one answer than are accepted.
    #[error("provider {provider} asked for more than {limit} tool calls in one answer")]
    TooManyToolCalls { provider: String, limit: usize },
    /// The stream ended before the wire format's end of answer.
    #[error("provider {provider}: the stream ended before the answer was complete")]
    Truncated { provider: String },
    /// Reading the stream failed (connection reset mid-answer).
    #[error("provider {provider}: reading the answer failed: {source}")]
    Body {
        provider: String,
        #[source]
        source: reqwest::Error,
    },
    /// The provider reported an error inside the stream.
    #[error("provider {provider} reported an error mid-answer ({kind}): {message}")]
    Remote {
        provider: String,
        kind: String,
        message: String,
    },
    /// The HTTP client could not be built (TLS configuration, proxy URL).
    #[error("provider {provider}: could not build the HTTP client: {source}")]
    Client {
        provider: String,
        #[source]
        source: reqwest::Error,
    },
    /// The TLS configuration could not be built.
    #[error("provider {provider}: could not configure TLS: {source}")]
    Tls {
        provider: String,
        #[source]
        source: rustls::Error,
    },
    /// The resolved API key cannot be sent in a header (a control character or non-ASCII).
    #[error(
        "provider {provider}: the api key holds characters an HTTP header cannot carry: check \
         the secret [providers.{provider}] api_key names"
    )]
    KeyNotAHeader { provider: String },
    /// The configured proxy URL is not usable.
    #[error("provider {provider}: proxy {url} is not a valid proxy URL: {source}")]
    Proxy {
        provider: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Neither the provider nor its fallback answered.
    #[error("no provider answered: {primary}; then the fallback: {fallback}")]
    Exhausted {
        primary: Box<ProviderError>,
        fallback: Box<ProviderError>,
    },
}

impl ProviderError {
    /// The provider this error is about (for [`ProviderError::Exhausted`], the fallback).
    pub fn provider(&self) -> &str {
        match self {
            Self::Auth { provider, .. }
            | Self::BadRequest { provider, .. }
            | Self::Status { provider, .. }
            | Self::RetryAfterTooLong { provider, .. }
            | Self::Connect { provider, .. }
            | Self::Stalled { provider, .. }
            | Self::AnswerTimeout { provider, .. }
            | Self::Malformed { provider, .. }
            | Self::TooLarge { provider, .. }
            | Self::TooManyToolCalls { provider, .. }
            | Self::Truncated { provider }
            | Self::Body { provider, .. }
            | Self::Remote { provider, .. }
            | Self::Client { provider, .. }
            | Self::Tls { provider, .. }
            | Self::KeyNotAHeader { provider }
            | Self::Proxy { provider, .. } => provider,
            Self::Exhausted { fallback, .. } => fallback.provider(),
        }
    }

    /// The error's class, as loongd reports it to the operator (`loongctl ask --json`).
    pub fn class(&self) -> &'static str {
        match self {
            Self::Auth { .. } => "auth",
            Self::BadRequest { .. } => "bad_request",
            Self::Status { .. } => "status",
            Self::RetryAfterTooLong { .. } => "retry_after_too_long",
            Self::Connect { .. } => "connect",
            Self::Stalled { .. } => "stalled",
            Self::AnswerTimeout { .. } => "answer_timeout",
            Self::Malformed { .. } => "malformed",
            Self::TooLarge { .. } => "too_large",
            Self::TooManyToolCalls { .. } => "too_many_tool_calls",
            Self::Truncated { .. } => "truncated",
            Self::Body { .. } => "body",
            Self::Remote { .. } => "remote",
            Self::Client { .. } => "client",
            Self::Tls { .. } => "tls",
            Self::KeyNotAHeader { .. } => "key_not_a_header",
            Self::Proxy { .. } => "proxy",
            Self::Exhausted { .. } => "exhausted",
        }
    }
}

/// The most characters of a provider's own error message kept in an error.
pub const MAX_PROVIDER_MESSAGE_CHARS: usize = 512;

/// A provider's message made safe to print: control characters (a terminal's escape
/// sequences among them) escaped, and cut to [`MAX_PROVIDER_MESSAGE_CHARS`].
pub fn printable(text: &str) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == MAX_PROVIDER_MESSAGE_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_message_cannot_drive_the_terminal_or_grow_without_bound() {
        assert_eq!(printable("bad \u{1b}[2Jkey\r\n"), "bad \\u{1b}[2Jkey\\r\\n");
        assert_eq!(printable("plain: ok"), "plain: ok");
        let long = printable(&"x".repeat(10_000));
        assert_eq!(long.chars().count(), MAX_PROVIDER_MESSAGE_CHARS + 1);
    }
}
