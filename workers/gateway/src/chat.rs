//! `/v1/chat/completions` (OpenAI) and `/v1/messages` (Anthropic): the body parsed with
//! `loong_compat`, the turn started in loongd (`gateway_chat_start`) under the bearer, and
//! its events (`gateway_chat_next`) rendered in the caller's format.
//!
//! The status is chosen after the first batch of events: a turn refused before it began
//! (`ChatEvent::Failed` first: `denied` → 403, `bad_request` → 400, ...) is answered in the
//! format's error body; otherwise a non-streamed request is collected into one JSON body
//! and a streamed one is sent as server-sent events as the batches arrive. A client that
//! goes away ends the polling (the turn itself runs to its end in loongd and is audited).

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    body::{Body, Frame, Incoming},
    header, Request, Response, StatusCode,
};
use loong_agent_wire::chat::{ChatEvent, ChatRequest};
use loong_compat::{anthropic, openai};
use loong_ipc::{
    message::gateway::{self as wire, GatewayChatNext, GatewayChatStart},
    BearerSecret,
};
use loong_worker_runtime::service::AsyncLink;
use tokio::sync::mpsc;

use crate::http::{refusal, Body_};

/// How long one `gateway_chat_next` may take (loongd answers within its own shorter wait).
pub const NEXT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `gateway_chat_start` may take.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Server-sent event pieces queued for a slow client before polling waits.
pub const SSE_QUEUE: usize = 32;
/// The model named in answers when the request names none and none is configured.
const DEFAULT_MODEL: &str = "loong";

/// The caller's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenAi,
    Anthropic,
}

impl Format {
    /// The format of a chat route, if `path` is one.
    pub fn of(path: &str) -> Option<Format> {
        match path {
            "/v1/chat/completions" => Some(Format::OpenAi),
            "/v1/messages" => Some(Format::Anthropic),
            _ => None,
        }
    }

    /// An error answer in this format.
    pub fn error(self, status: StatusCode, message: &str) -> Response<Body_> {
        let body = match self {
            Format::OpenAi => openai::error_body(status.as_u16(), message),
            Format::Anthropic => anthropic::error_body(status.as_u16(), message),
        };
        let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        r
    }

    /// `resp` (a refusal with the gateway's own `{"error": {"type", "message"}}` body)
    /// answered in this format's error body, its status and other headers kept. Applied
    /// again to a body already in the format, it gives the same body.
    pub async fn rewrite(self, resp: Response<Body_>) -> Response<Body_> {
        let (parts, body) = resp.into_parts();
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(never) => match never {},
        };
        let v = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default();
        let message = v["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        let mut out = match (self, v["error"]["type"].as_str()) {
            // OpenAI's body has room for the gateway's own type (`payload_too_large`,
            // `rate_limited`, ...): kept as its `type` and `code`.
            (Format::OpenAi, Some(kind)) => {
                let body = serde_json::json!({ "error": {
                    "message": message, "type": kind, "param": null, "code": kind } });
                let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
                *r.status_mut() = parts.status;
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                r
            }
            _ => self.error(parts.status, &message),
        };
        for (name, value) in &parts.headers {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                out.headers_mut().insert(name.clone(), value.clone());
            }
        }
        out
    }
}

/// One turn's renderer in the caller's format.
enum Render {
    OpenAi(openai::Render),
    Anthropic(anthropic::Render),
}

impl Render {
    fn event(&mut self, e: &ChatEvent) -> Vec<u8> {
        match self {
            Render::OpenAi(r) => r.event(e),
            Render::Anthropic(r) => r.event(e),
        }
    }

    fn status(&self) -> u16 {
        match self {
            Render::OpenAi(r) => r.status(),
            Render::Anthropic(r) => r.status(),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Render::OpenAi(r) => r.finish(),
            Render::Anthropic(r) => r.finish(),
        }
    }
}

/// The HTTP status of a turn refused before it began, by its error kind.
fn status_of(kind: &str) -> StatusCode {
    match kind {
        "denied" | "approval_pending" => StatusCode::FORBIDDEN,
        "bad_request" => StatusCode::BAD_REQUEST,
        "not_found" => StatusCode::NOT_FOUND,
        "overloaded" => StatusCode::SERVICE_UNAVAILABLE,
        "deadline_exceeded" => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

fn is_last(e: &ChatEvent) -> bool {
    matches!(e, ChatEvent::Done { .. } | ChatEvent::Failed { .. })
}

/// The stream's next events (waits in loongd until some arrive).
async fn next(link: &AsyncLink, stream: u64) -> Result<Vec<ChatEvent>, String> {
    let req = wire::request(wire::KIND_GATEWAY_CHAT_NEXT, &GatewayChatNext { stream })
        .map_err(|e| e.to_string())?;
    let bytes = link
        .call(req, NEXT_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let batch: Vec<Vec<u8>> = wire::decode(&bytes).map_err(|e| e.to_string())?;
    batch
        .iter()
        .map(|b| wire::decode::<ChatEvent>(b).map_err(|e| e.to_string()))
        .collect()
}

/// The batches until one that is not empty.
async fn next_batch(link: &AsyncLink, stream: u64) -> Result<Vec<ChatEvent>, String> {
    loop {
        let batch = next(link, stream).await?;
        if !batch.is_empty() {
            return Ok(batch);
        }
    }
}

/// The event a failed poll ends the answer with.
fn lost(why: String) -> ChatEvent {
    ChatEvent::Failed {
        kind: "kernel_error".into(),
        message: format!("the chat turn's events could not be read from loongd: {why}"),
    }
}

/// Serves one chat request whose bearer the gateway has checked.
pub async fn serve(
    link: &AsyncLink,
    models: &[String],
    max_body: u64,
    format: Format,
    secret: BearerSecret,
    req: Request<Incoming>,
) -> Response<Body_> {
    let limit = usize::try_from(max_body)
        .unwrap_or(usize::MAX)
        .min(loong_compat::MAX_BODY_BYTES);
    let body = match http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return format.error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body could not be read within {limit} bytes: {e}; send a shorter history"),
            )
        }
    };
    let parsed: Result<(ChatRequest, bool), loong_compat::CompatError> = match format {
        Format::OpenAi => openai::parse(&body).map(|p| (p.request, p.include_usage)),
        Format::Anthropic => anthropic::parse_request(&body).map(|r| (r, false)),
    };
    let (request, include_usage) = match parsed {
        Ok(p) => p,
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            return format.error(status, &e.to_string());
        }
    };
    let model = request
        .model
        .clone()
        .or_else(|| models.first().cloned())
        .unwrap_or_else(|| DEFAULT_MODEL.to_string());
    let stream = request.stream;
    let start = match wire::encode(&request).and_then(|request| {
        wire::request(
            wire::KIND_GATEWAY_CHAT_START,
            &GatewayChatStart {
                bearer: secret,
                request,
            },
        )
    }) {
        Ok(r) => r,
        Err(e) => return format.error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let id = match link.call(start, START_TIMEOUT).await {
        Ok(bytes) => match wire::decode::<u64>(&bytes) {
            Ok(id) => id,
            Err(e) => return format.error(StatusCode::BAD_GATEWAY, &e.to_string()),
        },
        Err(e) => return format.rewrite(refusal(&e)).await,
    };
    let first = match next_batch(link, id).await {
        Ok(b) => b,
        Err(why) => return format.error(StatusCode::BAD_GATEWAY, &why),
    };
    if let Some(ChatEvent::Failed { kind, message }) = first.first() {
        return format.error(status_of(kind), message);
    }
    let mut render = match format {
        Format::OpenAi => {
            Render::OpenAi(openai::Render::new(&model, stream).include_usage(include_usage))
        }
        Format::Anthropic => Render::Anthropic(anthropic::Render::new(&model, stream)),
    };
    if !stream {
        let mut batch = first;
        loop {
            let ended = batch.iter().any(is_last);
            for e in &batch {
                render.event(e);
            }
            if ended {
                break;
            }
            batch = match next_batch(link, id).await {
                Ok(b) => b,
                Err(why) => vec![lost(why)],
            };
        }
        let status = StatusCode::from_u16(render.status()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut r = Response::new(Full::new(Bytes::from(render.finish())).boxed());
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        return r;
    }
    let (tx, rx) = mpsc::channel::<Bytes>(SSE_QUEUE);
    let link = link.clone();
    tokio::spawn(async move {
        let mut batch = first;
        loop {
            let ended = batch.iter().any(is_last);
            for e in &batch {
                let bytes = render.event(e);
                if !bytes.is_empty() && tx.send(Bytes::from(bytes)).await.is_err() {
                    return;
                }
            }
            if ended {
                break;
            }
            batch = tokio::select! {
                r = next_batch(&link, id) => match r {
                    Ok(b) => b,
                    Err(why) => vec![lost(why)],
                },
                // The client went away: stop polling.
                () = tx.closed() => return,
            };
        }
        let _ = tx.send(Bytes::from(render.finish())).await;
    });
    let mut r = Response::new(Sse(rx).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    r
}

/// A body fed by the task polling the turn.
struct Sse(mpsc::Receiver<Bytes>);

impl Body for Sse {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}
