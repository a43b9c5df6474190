//! The provider clients: one [`Provider`] trait, an HTTP implementation per wire family,
//! and [`Failover`] to a second provider.
//!
//! A request is sent with retries (see [`crate::retry`]); once a response head with a
//! success status arrives, its body is parsed as it streams, and no retry happens after that
//! (the caller may already have shown text). Every wait is bounded: connecting, each read
//! (the idle timeout, before the head and between reads), and the whole answer.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use tokio::time::Instant;

use crate::anthropic;
use crate::config::{Kind, ProviderConfig};
use crate::error::{printable, ProviderError};
use crate::limits::{DEFAULT_MAX_TOKENS, MAX_ERROR_BODY_BYTES};
use crate::names::ToolNames;
use crate::openai;
use crate::retry::{parse_retry_after, retryable_status, RetryPolicy};
use crate::sse::{SseError, SseEvent, SseLimits, SseParser};
use crate::types::{Event, FailoverEvent, Request};

/// The wait before the one retry a request gets at once when its connection was closed or
/// reset before any answer came (a stale kept-alive connection), in place of the backoff.
pub const STALE_CONNECTION_RETRY_WAIT: Duration = Duration::ZERO;

/// A future a [`Provider`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A model provider: asked a [`Request`], it streams an answer.
pub trait Provider: Send + Sync {
    /// Its name (`[providers.NAME]`).
    fn name(&self) -> &str;
    /// Sends `request` and returns the answer's stream once it has begun.
    fn stream<'a>(
        &'a self,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<EventStream, ProviderError>>;
}

/// Which proxy the client goes through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProxyChoice {
    /// `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` from the environment (the egress broker
    /// sets them in the worker's sandbox).
    #[default]
    Environment,
    /// None, whatever the environment says.
    Direct,
    /// This proxy URL for every request.
    Url(String),
}

/// How the HTTP client is built, beyond the provider's configuration.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// The proxy.
    pub proxy: ProxyChoice,
    /// The retry policy; `max_attempts` is taken from the provider's configuration.
    pub retry: RetryPolicy,
    /// The stream bounds.
    pub sse: Option<SseLimits>,
}

/// The TLS configuration: rustls with the ring provider and the compiled-in web PKI roots.
fn tls_config(provider_name: &str) -> Result<rustls::ClientConfig, ProviderError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| ProviderError::Tls {
            provider: provider_name.to_owned(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A provider reached over HTTP, in its wire family.
#[derive(Debug)]
pub struct HttpProvider {
    name: String,
    config: ProviderConfig,
    url: String,
    headers: HeaderMap,
    client: reqwest::Client,
    retry: RetryPolicy,
    sse: SseLimits,
}

impl HttpProvider {
    /// A client for `[providers.NAME]`, with `api_key` the value its secret reference
    /// resolved to (the caller resolves it; `None` sends no key).
    pub fn new(
        name: &str,
        config: &ProviderConfig,
        api_key: Option<&str>,
        options: &ClientOptions,
    ) -> Result<Self, ProviderError> {
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(name)?)
            .connect_timeout(config.connect_timeout)
            .timeout(config.answer_timeout)
            // A redirect would carry the key (x-api-key is not a header reqwest strips) and
            // the conversation to another URL: provider APIs do not redirect, so a 3xx is an
            // error like any other status.
            .redirect(reqwest::redirect::Policy::none());
        builder = match &options.proxy {
            ProxyChoice::Environment => builder,
            ProxyChoice::Direct => builder.no_proxy(),
            ProxyChoice::Url(url) => {
                let proxy = reqwest::Proxy::all(url).map_err(|source| ProviderError::Proxy {
                    provider: name.to_owned(),
                    url: url.clone(),
                    source,
                })?;
                builder.no_proxy().proxy(proxy)
            }
        };
        let client = builder.build().map_err(|source| ProviderError::Client {
            provider: name.to_owned(),
            source,
        })?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("accept", HeaderValue::from_static("text/event-stream"));
        let key = |text: String| {
            let mut value =
                HeaderValue::from_str(&text).map_err(|_| ProviderError::KeyNotAHeader {
                    provider: name.to_owned(),
                })?;
            value.set_sensitive(true);
            Ok::<_, ProviderError>(value)
        };
        let url = match config.kind {
            Kind::Openai => {
                if let Some(k) = api_key {
                    headers.insert(AUTHORIZATION, key(format!("Bearer {k}"))?);
                }
                format!("{}/chat/completions", config.base_url)
            }
            Kind::Anthropic => {
                if let Some(k) = api_key {
                    headers.insert("x-api-key", key(k.to_owned())?);
                }
                headers.insert(
                    "anthropic-version",
                    HeaderValue::from_static(anthropic::API_VERSION),
                );
                format!("{}/v1/messages", config.base_url)
            }
        };
        Ok(Self {
            name: name.to_owned(),
            config: config.clone(),
            url,
            headers,
            client,
            retry: RetryPolicy {
                max_attempts: config.max_attempts,
                ..options.retry
            },
            sse: options.sse.unwrap_or_default(),
        })
    }

    /// The URL requests go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn send(&self, request: &Request) -> Result<EventStream, ProviderError> {
        let names = ToolNames::new(&request.tools);
        let body = match self.config.kind {
            Kind::Openai => {
                openai::body(&self.config.model, self.config.max_tokens, request, &names)
            }
            Kind::Anthropic => anthropic::body(
                &self.config.model,
                self.config.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                request,
                &names,
            ),
        };
        let started = Instant::now();
        let deadline = started + self.config.answer_timeout;
        let mut attempt = 0;
        let mut stale_retried = false;
        loop {
            attempt += 1;
            let last = attempt >= self.retry.max_attempts;
            let sent = self
                .client
                .post(&self.url)
                .headers(self.headers.clone())
                .json(&body)
                .send();
            let wait = match tokio::time::timeout(self.config.idle_timeout, sent).await {
                Err(_) if last => {
                    return Err(ProviderError::Stalled {
                        provider: self.name.clone(),
                        idle: self.config.idle_timeout,
                        during: "waiting for the response head",
                    })
                }
                Err(_) => self.retry.backoff(attempt),
                Ok(Err(source)) if last || !(source.is_connect() || source.is_request()) => {
                    return Err(ProviderError::Connect {
                        provider: self.name.clone(),
                        url: self.url.clone(),
                        attempts: attempt,
                        source,
                    })
                }
                // Connected, then closed or reset before any answer: most often a kept-alive
                // connection the server (or the egress broker, which forwards one plain-http
                // request per connection) closed while it was idle here, and found closed
                // only once reused. A new connection answers at once; the backoff is for a
                // server in trouble, and a second such failure gets it.
                Ok(Err(source)) if !source.is_connect() && !stale_retried => {
                    stale_retried = true;
                    STALE_CONNECTION_RETRY_WAIT
                }
                Ok(Err(_)) => self.retry.backoff(attempt),
                Ok(Ok(response)) if response.status().is_success() => {
                    return self.begin(response, deadline, names)
                }
                Ok(Ok(response)) => self.refused(response, attempt, last).await?,
            };
            if Instant::now() + wait >= deadline {
                return Err(ProviderError::AnswerTimeout {
                    provider: self.name.clone(),
                    limit: self.config.answer_timeout,
                });
            }
            tracing::debug!(provider = %self.name, attempt, ?wait, "retrying the provider request");
            tokio::time::sleep(wait).await;
        }
    }

    /// A response with an error status: the error, or the wait before the next attempt.
    async fn refused(
        &self,
        response: reqwest::Response,
        attempt: u32,
        last: bool,
    ) -> Result<Duration, ProviderError> {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let provider = self.name.clone();
        if !retryable_status(status) || last {
            let message = error_message(response, self.config.idle_timeout).await;
            return Err(match status {
                401 | 403 => ProviderError::Auth {
                    provider,
                    status,
                    message,
                },
                400 | 404 | 422 => ProviderError::BadRequest {
                    provider,
                    status,
                    message,
                },
                _ => ProviderError::Status {
                    provider,
                    status,
                    attempts: attempt,
                    message,
                },
            });
        }
        match retry_after {
            Some(wait) if wait > self.retry.max_retry_after => {
                Err(ProviderError::RetryAfterTooLong {
                    provider,
                    status,
                    wait,
                    limit: self.retry.max_retry_after,
                })
            }
            Some(wait) => Ok(wait),
            None => Ok(self.retry.backoff(attempt)),
        }
    }

    fn begin(
        &self,
        response: reqwest::Response,
        deadline: Instant,
        names: ToolNames,
    ) -> Result<EventStream, ProviderError> {
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !content_type.starts_with("text/event-stream") {
            return Err(ProviderError::Malformed {
                provider: self.name.clone(),
                line: 0,
                reason: format!("the answer is {content_type:?}, not text/event-stream"),
            });
        }
        let decoder = match self.config.kind {
            Kind::Openai => Decoder::Openai(openai::Decoder::new(&self.name, names)),
            Kind::Anthropic => Decoder::Anthropic(anthropic::Decoder::new(&self.name, names)),
        };
        Ok(EventStream {
            provider: self.name.clone(),
            failovers: Vec::new(),
            pending: VecDeque::new(),
            failed: None,
            source: Some(Source {
                response,
                parser: SseParser::new(self.sse),
                decoder,
                idle: self.config.idle_timeout,
                deadline,
                answer_timeout: self.config.answer_timeout,
            }),
        })
    }
}

/// Reads at most [`MAX_ERROR_BODY_BYTES`] of an error response's body, for its message,
/// within one idle timeout in all (a body dripped a byte at a time cannot hold the caller).
async fn error_message(mut response: reqwest::Response, idle: Duration) -> String {
    let mut body = Vec::new();
    let read = async {
        while body.len() < MAX_ERROR_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(piece)) => {
                    let room = MAX_ERROR_BODY_BYTES - body.len();
                    body.extend_from_slice(&piece[..piece.len().min(room)]);
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(idle, read).await;
    let text = String::from_utf8_lossy(&body);
    // Both families answer `{"error": {"message": ...}}`; keep the message when it is there.
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(printable))
        .unwrap_or_else(|| printable(text.trim()))
}

impl Provider for HttpProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn stream<'a>(
        &'a self,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<EventStream, ProviderError>> {
        Box::pin(self.send(request))
    }
}

#[derive(Debug)]
enum Decoder {
    Openai(openai::Decoder),
    Anthropic(anthropic::Decoder),
}

impl Decoder {
    fn event(&mut self, ev: &SseEvent, out: &mut VecDeque<Event>) -> Result<(), ProviderError> {
        match self {
            Self::Openai(d) => d.event(ev, out),
            Self::Anthropic(d) => d.event(ev, out),
        }
    }

    fn end(&mut self, out: &mut VecDeque<Event>) -> Result<(), ProviderError> {
        match self {
            Self::Openai(d) => d.end(out),
            Self::Anthropic(d) => d.end(out),
        }
    }
}

#[derive(Debug)]
struct Source {
    response: reqwest::Response,
    parser: SseParser,
    decoder: Decoder,
    idle: Duration,
    deadline: Instant,
    answer_timeout: Duration,
}

/// The events of one answer, as they arrive.
#[derive(Debug)]
pub struct EventStream {
    provider: String,
    failovers: Vec<FailoverEvent>,
    pending: VecDeque<Event>,
    source: Option<Source>,
    failed: Option<ProviderError>,
}

impl EventStream {
    /// The provider answering.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The failovers that led to this provider (empty when the first answered).
    pub fn failovers(&self) -> &[FailoverEvent] {
        &self.failovers
    }

    /// The next event; `None` after [`Event::Done`] or an error. The events decoded before
    /// an error come first, then the error.
    pub async fn next(&mut self) -> Option<Result<Event, ProviderError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if matches!(event, Event::Done { .. }) {
                    self.source = None;
                    self.pending.clear();
                }
                return Some(Ok(event));
            }
            if let Some(error) = self.failed.take() {
                return Some(Err(error));
            }
            let source = self.source.as_mut()?;
            if let Err(error) = source.read(&self.provider, &mut self.pending).await {
                self.source = None;
                self.failed = Some(error);
            }
        }
    }
}

impl Source {
    /// Reads one piece of the body and decodes what it completes into `out`.
    async fn read(
        &mut self,
        provider: &str,
        out: &mut VecDeque<Event>,
    ) -> Result<(), ProviderError> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(ProviderError::AnswerTimeout {
                provider: provider.to_owned(),
                limit: self.answer_timeout,
            });
        }
        let wait = self.idle.min(self.deadline - now);
        let piece = match tokio::time::timeout(wait, self.response.chunk()).await {
            Err(_) if wait < self.idle => {
                return Err(ProviderError::AnswerTimeout {
                    provider: provider.to_owned(),
                    limit: self.answer_timeout,
                })
            }
            Err(_) => {
                return Err(ProviderError::Stalled {
                    provider: provider.to_owned(),
                    idle: self.idle,
                    during: "reading the answer",
                })
            }
            Ok(Err(source)) if source.is_timeout() => {
                return Err(ProviderError::AnswerTimeout {
                    provider: provider.to_owned(),
                    limit: self.answer_timeout,
                })
            }
            Ok(Err(source)) => {
                return Err(ProviderError::Body {
                    provider: provider.to_owned(),
                    source,
                })
            }
            Ok(Ok(piece)) => piece,
        };
        let Some(piece) = piece else {
            // The end of the body: an event without its closing blank line is discarded, as
            // the event-stream format says; the decoder decides whether the answer was whole.
            return self.decoder.end(out);
        };
        let mut events = Vec::new();
        self.parser
            .feed(&piece, &mut events)
            .map_err(|e| sse_error(provider, e))?;
        for event in &events {
            self.decoder.event(event, out)?;
        }
        Ok(())
    }
}

fn sse_error(provider: &str, error: SseError) -> ProviderError {
    let provider = provider.to_owned();
    match error {
        SseError::LineTooLong { limit, .. } => ProviderError::TooLarge {
            provider,
            what: "a stream line",
            limit,
        },
        SseError::EventTooLarge { limit, .. } => ProviderError::TooLarge {
            provider,
            what: "a stream event",
            limit,
        },
        SseError::StreamTooLarge { limit } => ProviderError::TooLarge {
            provider,
            what: "the answer",
            limit,
        },
        SseError::NotUtf8 { line } => ProviderError::Malformed {
            provider,
            line,
            reason: "not UTF-8".to_owned(),
        },
    }
}

/// A provider and its fallback: the fallback is asked when the first fails before its
/// answer's first event (after its own retries), and the switch is reported as a
/// [`FailoverEvent`] on the stream that answers. Once an answer has begun, an error is the
/// caller's: text may already be shown.
pub struct Failover {
    primary: Box<dyn Provider>,
    fallback: Option<Box<dyn Provider>>,
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover")
            .field("primary", &self.primary.name())
            .field("fallback", &self.fallback.as_ref().map(|p| p.name()))
            .finish()
    }
}

impl Failover {
    /// `primary`, then `fallback` if given.
    pub fn new(primary: Box<dyn Provider>, fallback: Option<Box<dyn Provider>>) -> Self {
        Self { primary, fallback }
    }

    /// The primary's stream with its first event read, or its error.
    async fn begin(
        provider: &dyn Provider,
        request: &Request,
    ) -> Result<EventStream, ProviderError> {
        let mut stream = provider.stream(request).await?;
        match stream.next().await {
            Some(Ok(first)) => {
                stream.pending.push_front(first);
                Ok(stream)
            }
            Some(Err(error)) => Err(error),
            None => Err(ProviderError::Truncated {
                provider: provider.name().to_owned(),
            }),
        }
    }

    async fn send(&self, request: &Request) -> Result<EventStream, ProviderError> {
        let Some(fallback) = &self.fallback else {
            return self.primary.stream(request).await;
        };
        let primary_error = match Self::begin(self.primary.as_ref(), request).await {
            Ok(stream) => return Ok(stream),
            Err(error) => error,
        };
        let event = FailoverEvent {
            from: self.primary.name().to_owned(),
            to: fallback.name().to_owned(),
            reason: primary_error.to_string(),
        };
        tracing::warn!(from = %event.from, to = %event.to, reason = %event.reason, "provider failover");
        match fallback.stream(request).await {
            Ok(mut stream) => {
                stream.failovers.push(event);
                Ok(stream)
            }
            Err(error) => Err(ProviderError::Exhausted {
                primary: Box::new(primary_error),
                fallback: Box::new(error),
            }),
        }
    }
}

impl Provider for Failover {
    fn name(&self) -> &str {
        self.primary.name()
    }

    fn stream<'a>(
        &'a self,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<EventStream, ProviderError>> {
        Box::pin(self.send(request))
    }
}
