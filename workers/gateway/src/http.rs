//! The HTTP/1.1 server: accept, route, authenticate, limit, and hand `/mcp` to rmcp's
//! streamable-HTTP service. hyper 1 directly: six routes, and `/mcp` is rmcp's own tower
//! service, so a router framework would add dependencies and nothing else.
//!
//! `POST /channels/feishu/ACCOUNT/events` is a chat platform's webhook (`webhook.rs`: no
//! bearer, the channel worker checks the platform's signature). Every other route but
//! `/health` checks, in order: `Host` and `Origin` against the allowlists
//! (403, against DNS rebinding), the bearer (401 without one), the body's declared size
//! (413), the bearer in loongd (`gateway_auth`: 401 for a secret that names no live token,
//! 403 for a token that may invoke nothing), then that token's open streams and rate (429
//! with `Retry-After`). Refusals are typed JSON: `{"error": {"type", "message"}}`.
//! A connection must send each request's head within [`HEADER_READ_TIMEOUT`], and at most
//! [`MAX_CONNECTIONS`] are served at once.

use std::{
    convert::Infallible,
    os::fd::OwnedFd,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{
    body::{Body, Frame, Incoming},
    header, Method, Request, Response, StatusCode,
};
use loong_ipc::{
    message::gateway::{self as wire, GatewayAuth, GatewayAuthed, GatewayStats},
    BearerSecret, DenialStage, ErrorDetail, ErrorKind,
};
use loong_worker_runtime::{service::AsyncLink, KernelLinkError};
use rmcp::transport::{
    streamable_http_server::session::local::LocalSessionManager, StreamableHttpServerConfig,
    StreamableHttpService,
};
use tokio_util::sync::CancellationToken;

use crate::{
    chat,
    config::{Config, GatewayError},
    limits, mcp,
};

/// How long an authentication kernel call may take.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the worker tells loongd its figures (`gateway status`).
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// How long the accept loop waits after a failed `accept` (out of descriptors, …).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How often a stop looks whether the requests in flight have finished.
pub const DRAIN_TICK: Duration = Duration::from_millis(20);
/// How long an idle MCP SSE stream waits before a keep-alive.
pub const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a connection may take to send a request's head (and how long it may sit idle
/// between requests): a client that trickles its headers (slowloris) or never sends any is
/// closed after this, so that it holds no connection slot for longer.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// MCP sessions open at once, for all tokens together; a new one past it is answered 429.
/// A session lives until its client deletes it or it idles out (rmcp's keep-alive, 5 min):
/// unbounded, one token could open sessions until the worker ran out of memory.
pub const MAX_MCP_SESSIONS: usize = 1024;
/// MCP sessions one token may hold open at once.
pub const MAX_MCP_SESSIONS_PER_TOKEN: usize = 64;
/// Connections served at once; the next waits in the listener's backlog until one closes.
/// Below the balanced tier's descriptors (1,024), so that the worker never runs out of them.
pub const MAX_CONNECTIONS: usize = 768;

pub(crate) type Body_ = BoxBody<Bytes, Infallible>;

/// What every connection shares.
struct Shared {
    cfg: Config,
    link: AsyncLink,
    limits: Arc<limits::Table>,
    /// Failed authentications, for all clients together.
    failures: limits::Failures,
    mcp: StreamableHttpService<mcp::Mcp, LocalSessionManager>,
    /// rmcp's sessions (the same manager `mcp` serves from).
    sessions: Arc<LocalSessionManager>,
    /// The token each session was opened under, by session id.
    session_owners: std::sync::Mutex<std::collections::HashMap<String, Owner>>,
    requests: AtomicU64,
    /// Requests and streams open (every route).
    open: AtomicU64,
    /// Requests in flight that a stop waits for (all but `/mcp`'s standalone GET streams).
    draining: AtomicU64,
    /// The chat platforms' webhooks' rates, by account.
    webhooks: crate::webhook::Rates,
}

/// The token an MCP session was opened under: its limits key, and the sha256 of the secret
/// it was authenticated with (a secret names one token, so a later request of the session
/// with the same secret is of that token: its checks need not wait for loongd's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    key: [u8; 32],
    secret: [u8; 32],
}

fn secret_hash(secret: &BearerSecret) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret.expose().as_bytes()).into()
}

/// A `gateway_auth` in flight.
type Authenticating = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<String, Response<Body_>>> + Send + 'static>,
>;

/// Counts one open request or stream while it lives.
struct Counted {
    shared: Arc<Shared>,
    drains: bool,
}

impl Counted {
    fn new(shared: &Arc<Shared>, drains: bool) -> Counted {
        shared.open.fetch_add(1, Ordering::Relaxed);
        if drains {
            shared.draining.fetch_add(1, Ordering::Relaxed);
        }
        Counted {
            shared: shared.clone(),
            drains,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        if self.drains {
            self.shared.draining.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A response body that holds the request's place (its stream count, its token's limit)
/// until the body has been sent or dropped.
struct Held {
    inner: Body_,
    _held: (Option<limits::Open>, Counted),
}

impl Body for Held {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A typed refusal or answer.
pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body_> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// `{"error": {"type", "message"}}` with `status`.
pub fn error(status: StatusCode, kind: &str, message: &str) -> Response<Body_> {
    json(
        status,
        &serde_json::json!({ "error": { "type": kind, "message": message } }),
    )
}

/// The secret of `Authorization: Bearer SECRET`, or on `/v1/messages` of `x-api-key: SECRET`
/// when the request has no `Authorization`.
fn bearer(req: &Request<Incoming>, path: &str) -> Option<BearerSecret> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, secret) = value.trim().split_once(' ')?;
        let secret = secret.trim();
        return (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty())
            .then(|| BearerSecret::new(secret));
    }
    // The Anthropic SDK's own header, on its route only; `Authorization`, when sent, is the
    // one credential read (a request never carries two).
    if path != "/v1/messages" {
        return None;
    }
    let secret = req.headers().get(API_KEY)?.to_str().ok()?.trim();
    (!secret.is_empty()).then(|| BearerSecret::new(secret))
}

/// The header the Anthropic SDK sends its key in.
const API_KEY: &str = "x-api-key";

/// Serves `listener` until loongd withdraws the `Serve` request; then stops accepting,
/// waits for the requests in flight, and closes the streams.
pub async fn serve(cfg: Config, listener: OwnedFd, link: AsyncLink) -> Result<(), GatewayError> {
    let cancel = CancellationToken::new();
    let mut hosts: Vec<String> = if cfg.allowed_hosts.is_empty() {
        crate::config::LOOPBACK_HOSTS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        cfg.allowed_hosts.clone()
    };
    // rmcp checks the Host again; the gateway's own check (above) is the one that answers.
    hosts.sort();
    let mcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_cancellation_token(cancel.clone())
        .with_sse_keep_alive(Some(SSE_KEEP_ALIVE))
        .with_max_request_body_bytes(usize::try_from(cfg.max_body_bytes).unwrap_or(usize::MAX));
    let factory_link = link.clone();
    let sessions = Arc::new(LocalSessionManager::default());
    let service = StreamableHttpService::new(
        move || Ok(mcp::Mcp::new(factory_link.clone())),
        sessions.clone(),
        mcp_config,
    );
    let limits = limits::Table::new(limits::Limits {
        max_streams: cfg.max_streams_per_token,
        per_second: cfg.requests_per_second,
        burst: cfg.burst,
    });
    let unix = cfg.unix;
    let shared = Arc::new(Shared {
        cfg,
        link: link.clone(),
        limits,
        failures: limits::Failures::new(Instant::now()),
        mcp: service,
        sessions,
        session_owners: std::sync::Mutex::default(),
        requests: AtomicU64::new(0),
        open: AtomicU64::new(0),
        draining: AtomicU64::new(0),
        webhooks: crate::webhook::Rates::default(),
    });
    let accepting = accept_loop(shared.clone(), listener, unix);
    let stats = report_stats(shared.clone());
    tokio::select! {
        r = accepting => r?,
        () = link.stopped() => {}
        () = stats => {}
    }
    // Drain: no new connection is accepted (the loop is dropped); the requests in flight
    // finish (loongd kills the worker at its drain deadline otherwise).
    while shared.draining.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(DRAIN_TICK).await;
    }
    cancel.cancel();
    Ok(())
}

async fn report_stats(shared: Arc<Shared>) {
    let mut last = None;
    loop {
        tokio::time::sleep(STATS_INTERVAL).await;
        let now = GatewayStats {
            requests: shared.requests.load(Ordering::Relaxed),
            open_streams: shared.open.load(Ordering::Relaxed),
        };
        if last.as_ref() == Some(&now) {
            continue;
        }
        let Ok(req) = wire::request(wire::KIND_GATEWAY_STATS, &now) else {
            continue;
        };
        if shared.link.call(req, AUTH_TIMEOUT).await.is_ok() {
            last = Some(now);
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: OwnedFd,
    unix: bool,
) -> Result<(), GatewayError> {
    enum L {
        Tcp(tokio::net::TcpListener),
        Unix(tokio::net::UnixListener),
    }
    let l = if unix {
        let std = std::os::unix::net::UnixListener::from(listener);
        std.set_nonblocking(true).map_err(GatewayError::Listener)?;
        L::Unix(tokio::net::UnixListener::from_std(std).map_err(GatewayError::Listener)?)
    } else {
        let std = std::net::TcpListener::from(listener);
        std.set_nonblocking(true).map_err(GatewayError::Listener)?;
        L::Tcp(tokio::net::TcpListener::from_std(std).map_err(GatewayError::Listener)?)
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let accepted = match &l {
            L::Tcp(t) => t.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }),
            L::Unix(u) => u.accept().await.map(|(s, _)| Conn::Unix(s)),
        };
        let conn = match accepted {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(shared, req).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let _ = match conn {
                Conn::Tcp(s) => {
                    builder
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await
                }
                Conn::Unix(s) => {
                    builder
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await
                }
            };
        });
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Held> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    // A stop waits for every request but /mcp's standalone stream (GET), which it closes.
    let drains = !(path == "/mcp" && req.method() == Method::GET);
    let counted = Counted::new(&shared, drains);
    let (mut resp, open) = answer(&shared, req, &path).await;
    // A chat route's refusals are in the caller's format (each SDK reads its own).
    if let Some(format) = chat::Format::of(&path) {
        if resp.status().is_client_error() || resp.status().is_server_error() {
            let is_json = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v == "application/json");
            // Idempotent: a body already in the format is rendered again the same.
            if is_json {
                resp = format.rewrite(resp).await;
            }
        }
    }
    resp.map(|inner| Held {
        inner,
        _held: (open, counted),
    })
}

async fn answer(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    path: &str,
) -> (Response<Body_>, Option<limits::Open>) {
    let cfg = &shared.cfg;
    if path == "/health" {
        return (
            json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
            None,
        );
    }
    // A chat platform's webhook: no bearer (the channel worker checks its signature).
    if let Some((platform, account)) = crate::webhook::route(path) {
        let (link, rates, max) = (&shared.link, &shared.webhooks, cfg.max_body_bytes);
        let r = crate::webhook::serve(link, rates, max, req, platform, account);
        return (r.await, None);
    }
    #[cfg(debug_assertions)]
    if path == crate::test_hook::PATH && cfg.test_raw_calls {
        return (crate::test_hook::serve(&shared.link, req).await, None);
    }
    if !matches!(
        path,
        "/mcp" | "/v1/models" | "/v1/chat/completions" | "/v1/messages"
    ) {
        return (
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route {path}; the gateway serves /mcp, /v1/models, /v1/chat/completions, /v1/messages and /health"),
            ),
            None,
        );
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !cfg.host_allowed(host) {
        return (
            error(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                &format!("Host {host:?} is not one this gateway answers (gateway.allowed_hosts; loopback names by default), against DNS rebinding"),
            ),
            None,
        );
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !cfg.origin_allowed(origin) {
            return (
                error(
                    StatusCode::FORBIDDEN,
                    "origin_not_allowed",
                    &format!("Origin {origin:?} is not allowed (gateway.allowed_origins; loopback origins by default)"),
                ),
                None,
            );
        }
    }
    let Some(secret) = bearer(&req, path) else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "no bearer token: send `Authorization: Bearer SECRET` (or `x-api-key: SECRET` on /v1/messages) with a token's secret (`loongctl gateway pair` or `loongctl tokens issue`)",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return (r, None);
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > cfg.max_body_bytes) {
        return (
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &format!(
                    "the body is {} bytes, above the gateway's {} (gateway.max_body_bytes)",
                    declared.unwrap_or(0),
                    cfg.max_body_bytes
                ),
            ),
            None,
        );
    }
    // Authenticated first, then limited under the token's public id: the table holds only
    // live tokens, so that made-up secrets can neither fill it (refusing real tokens) nor
    // each start a fresh bucket.
    if !shared.failures.may_try(Instant::now()) {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "auth_failures_limited",
            &format!(
                "more than {} requests a second presented a secret that names no live token; retry after the time Retry-After gives",
                limits::AUTH_FAILURES_PER_SECOND
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(1u64));
        return (r, None);
    }
    // A request of an MCP session opened under this very secret: its token is known, so its
    // limits, session checks and MCP parsing go ahead while loongd authenticates the secret
    // again (`pending`); its kernel calls (a tool's call, a listing) wait for loongd's answer
    // (`confirmed`), so that nothing takes effect for a request then refused, and it is
    // refused as any other request is if loongd did not confirm the secret (a token revoked,
    // or loongd's limits). Any other request waits for loongd's answer first.
    let hash = secret_hash(&secret);
    let known = (path == "/mcp")
        .then(|| req.headers().get(SESSION_ID))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|id| {
            shared
                .session_owners
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(id)
                .copied()
        })
        .filter(|o| o.secret == hash);
    let (key, pending, confirmed) = match known {
        Some(owner) => {
            let (link, s) = (shared.link.clone(), secret.clone());
            // The MCP handler makes no kernel call under the secret before this answer.
            let (tx, rx) = tokio::sync::watch::channel(None);
            let pending: Authenticating = Box::pin(async move {
                let authed = authenticate(&link, &s).await;
                let _ = tx.send(Some(authed.is_ok()));
                authed
            });
            (owner.key, Some(pending), Some(rx))
        }
        None => match authenticate(&shared.link, &secret).await {
            Ok(t) => (limits::key(&t), None, None),
            Err(r) => {
                if r.status() == StatusCode::UNAUTHORIZED {
                    shared.failures.failed(Instant::now());
                }
                return (r, None);
            }
        },
    };
    let open = match shared.limits.admit(key, Instant::now()) {
        Ok(o) => o,
        Err(why) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                &why.to_string(),
            );
            r.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(why.retry_after()),
            );
            return (r, None);
        }
    };
    let resp = match path {
        "/mcp" => {
            let opens = req.method() == Method::POST && !req.headers().contains_key(SESSION_ID);
            if opens {
                if let Err(r) = session_room(shared, key).await {
                    return (r, Some(open));
                }
            }
            // A session is its opener's: another token's request on it is answered as if
            // it did not exist (its id alone must not let one token delete another's session
            // or read its stream).
            if let Some(id) = req
                .headers()
                .get(SESSION_ID)
                .map(|v| v.to_str().unwrap_or(""))
            {
                let owner = shared
                    .session_owners
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(id)
                    .map(|o| o.key);
                if owner != Some(key) {
                    return (
                        error(
                            StatusCode::NOT_FOUND,
                            "session_not_found",
                            "no MCP session of this token has that Mcp-Session-Id; initialize a new one",
                        ),
                        Some(open),
                    );
                }
            }
            let (mut parts, body) = req.into_parts();
            parts.extensions.insert(mcp::Bearer { secret, confirmed });
            // Read here, under the limit, so that a chunked body past it (no Content-Length
            // to refuse it by) is a typed 413 rather than rmcp's 500.
            let limited = http_body_util::Limited::new(
                body,
                usize::try_from(cfg.max_body_bytes).unwrap_or(usize::MAX),
            );
            let bytes = match limited.collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return (
                        error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "payload_too_large",
                            &format!(
                                "the body is above the gateway's {} bytes (gateway.max_body_bytes)",
                                cfg.max_body_bytes
                            ),
                        ),
                        Some(open),
                    );
                }
                Err(e) => {
                    return (
                        error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            &format!("reading the body: {e}"),
                        ),
                        Some(open),
                    );
                }
            };
            // A session's end (DELETE) is answered 200, as the MCP SDKs' own servers do: rmcp
            // answers 202, which the Python SDK logs as "Session termination failed".
            let ends_session = parts.method == hyper::Method::DELETE;
            let req = Request::from_parts(parts, Full::new(bytes));
            let mut svc = shared.mcp.clone();
            let call = tower_service::Service::call(&mut svc, req);
            let r = match pending {
                None => call.await,
                Some(pending) => {
                    let (authed, r) = tokio::join!(pending, call);
                    if let Err(refused) = authed {
                        if refused.status() == StatusCode::UNAUTHORIZED {
                            shared.failures.failed(Instant::now());
                        }
                        return (refused, Some(open));
                    }
                    r
                }
            };
            let mut r = match r {
                Ok(r) => r,
                Err(never) => match never {},
            };
            if ends_session && r.status() == StatusCode::ACCEPTED {
                *r.status_mut() = StatusCode::OK;
            }
            if let Some(id) = r.headers().get(SESSION_ID).and_then(|v| v.to_str().ok()) {
                if opens {
                    shared
                        .session_owners
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(id.to_string(), Owner { key, secret: hash });
                }
            }
            r
        }
        "/v1/models" => models(cfg),
        "/v1/chat/completions" | "/v1/messages" => match chat::Format::of(path) {
            Some(format) => {
                chat::serve(
                    &shared.link,
                    &cfg.models,
                    cfg.max_body_bytes,
                    format,
                    secret,
                    req,
                )
                .await
            }
            None => error(StatusCode::NOT_FOUND, "not_found", path),
        },
        _ => error(StatusCode::NOT_FOUND, "not_found", path),
    };
    (resp, Some(open))
}

/// The MCP session header.
const SESSION_ID: &str = "mcp-session-id";

/// Whether the token `key` may open another MCP session ([`MAX_MCP_SESSIONS`],
/// [`MAX_MCP_SESSIONS_PER_TOKEN`]); forgets the owners of sessions rmcp has closed.
async fn session_room(shared: &Shared, key: [u8; 32]) -> Result<(), Response<Body_>> {
    let live = shared.sessions.sessions.read().await;
    let total = live.len();
    let mut owners = shared
        .session_owners
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ids: std::collections::HashSet<&str> = live.keys().map(|s| s.as_ref()).collect();
    owners.retain(|id, _| ids.contains(id.as_str()));
    drop(ids);
    drop(live);
    let mine = owners.values().filter(|o| o.key == key).count();
    let why = if total >= MAX_MCP_SESSIONS {
        format!("the gateway holds {MAX_MCP_SESSIONS} MCP sessions, the most it serves; retry when one closes")
    } else if mine >= MAX_MCP_SESSIONS_PER_TOKEN {
        format!("this token holds {MAX_MCP_SESSIONS_PER_TOKEN} MCP sessions, the most allowed; delete one (DELETE /mcp) or let it idle out")
    } else {
        return Ok(());
    };
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, "sessions_limited", &why);
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(1u64));
    Err(r)
}

/// `/v1/models`: the agent's configured model names, in the body both SDKs read.
fn models(cfg: &Config) -> Response<Body_> {
    let mut r =
        Response::new(Full::new(Bytes::from(loong_compat::models_body(&cfg.models))).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// The bearer checked in loongd: its token, or the refusal to answer with.
async fn authenticate(link: &AsyncLink, secret: &BearerSecret) -> Result<String, Response<Body_>> {
    let req = wire::request(
        wire::KIND_GATEWAY_AUTH,
        &GatewayAuth {
            bearer: secret.clone(),
        },
    )
    .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()))?;
    match link.call(req, AUTH_TIMEOUT).await {
        Ok(bytes) => wire::decode::<GatewayAuthed>(&bytes)
            .map(|a| a.token)
            .map_err(|e| error(StatusCode::BAD_GATEWAY, "kernel_error", &e.to_string())),
        Err(e) => Err(refusal(&e)),
    }
}

/// The HTTP answer to a kernel call's failure.
pub fn refusal(e: &KernelLinkError) -> Response<Body_> {
    match e {
        KernelLinkError::Remote(r) => {
            let stage = match &r.detail {
                Some(ErrorDetail::Denied(d)) => Some(d.stage),
                _ => None,
            };
            match (r.kind, stage) {
                (ErrorKind::Denied, Some(DenialStage::Token)) => {
                    let mut resp = error(StatusCode::UNAUTHORIZED, "unauthorized", &r.message);
                    resp.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
                    );
                    resp
                }
                (ErrorKind::Denied, _) => error(StatusCode::FORBIDDEN, "forbidden", &r.message),
                (ErrorKind::BudgetExceeded | ErrorKind::Overloaded, _) => {
                    error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", &r.message)
                }
                _ => error(StatusCode::BAD_GATEWAY, "kernel_error", &r.message),
            }
        }
        KernelLinkError::Timeout(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "kernel_timeout",
            &e.to_string(),
        ),
        other => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "kernel_unavailable",
            &other.to_string(),
        ),
    }
}
