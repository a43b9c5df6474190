//! A debug-build test hook that makes this worker act as a compromised gateway would: it
//! sends loongd the kernel calls a test describes, at once, past every limit of the worker's
//! own, and answers what loongd said. Compiled only with debug assertions and served only
//! when loongd's configuration asks for it (`test_raw_calls`, set by a debug loongd from
//! `LOONG_TEST_GATEWAY_RAW_CALLS`): release builds have neither. tests/all/gateway_guard.rs
//! drives it, to show loongd's own bounds on a gateway (`loongd/src/services/gateway_guard.rs`).

use std::collections::BTreeMap;

use http_body_util::{BodyExt, Limited};
use hyper::{body::Incoming, Request, Response, StatusCode};
use loong_ipc::{
    message::gateway::{self as wire, GatewayAuth, GatewayChatStart, GatewayInvoke, GatewayList},
    BearerSecret, KernelRequest, ServiceCall,
};
use loong_worker_runtime::{service::AsyncLink, KernelLinkError};

use crate::http::{error, json, Body_};

/// The hook's path.
pub const PATH: &str = "/__test/kernel-calls";
/// The most calls one script sends.
const MAX_CALLS: usize = 5000;
/// Numbers the hook's calls, far from the worker's own tags.
static NEXT_TAG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 62);
/// The largest script.
const MAX_SCRIPT_BYTES: usize = 64 << 20;

/// A script: `count` calls of `kind`, all sent at once. `bearer`'s `{i}` is the call's
/// number; `pad` bytes are added to a `gateway_invoke`'s input (or are a raw kind's payload).
#[derive(Debug, serde::Deserialize)]
struct Script {
    kind: String,
    #[serde(default)]
    bearer: String,
    #[serde(default)]
    tool: String,
    #[serde(default)]
    pad: usize,
    count: usize,
    /// A `gateway_invoke`'s wait (`wait_ms`).
    #[serde(default = "default_wait_ms")]
    wait_ms: u64,
    /// How long the hook waits for each answer before it withdraws the call.
    #[serde(default = "default_wait_ms")]
    timeout_ms: u64,
}

fn default_wait_ms() -> u64 {
    60_000
}

fn call(s: &Script, i: usize) -> Option<KernelRequest> {
    let bearer = BearerSecret::new(s.bearer.replace("{i}", &i.to_string()));
    match s.kind.as_str() {
        wire::KIND_GATEWAY_AUTH => wire::request(&s.kind, &GatewayAuth { bearer }).ok(),
        wire::KIND_GATEWAY_LIST => wire::request(
            &s.kind,
            &GatewayList {
                bearer,
                cursor: None,
            },
        )
        .ok(),
        wire::KIND_GATEWAY_INVOKE => {
            let input = serde_json::json!({ "call": i, "pad": "x".repeat(s.pad) }).to_string();
            let tool = s.tool.clone();
            wire::request(
                &s.kind,
                &GatewayInvoke {
                    bearer,
                    tool,
                    input,
                    tag: NEXT_TAG.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    wait_ms: s.wait_ms,
                },
            )
            .ok()
        }
        wire::KIND_GATEWAY_CHAT_START => {
            let request = loong_agent_wire::chat::ChatRequest {
                messages: vec![loong_agent_wire::chat::ChatMessage::User {
                    text: format!("call {i}"),
                }],
                ..Default::default()
            };
            let request = wire::encode(&request).ok()?;
            wire::request(&s.kind, &GatewayChatStart { bearer, request }).ok()
        }
        other => Some(KernelRequest::Service(ServiceCall {
            kind: other.to_string(),
            payload: vec![0; s.pad],
        })),
    }
}

/// Runs the request's script; `{"ok": N, "errors": {KIND: N}, "messages": [...]}`.
pub async fn serve(link: &AsyncLink, req: Request<Incoming>) -> Response<Body_> {
    let bytes = match Limited::new(req.into_body(), MAX_SCRIPT_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return fail(&format!("reading the script: {e}")),
    };
    let script: Script = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => return fail(&format!("the script: {e}")),
    };
    let mut set = tokio::task::JoinSet::new();
    for i in 0..script.count.min(MAX_CALLS) {
        let Some(req) = call(&script, i) else {
            return fail("a call does not encode");
        };
        let link = link.clone();
        let timeout = std::time::Duration::from_millis(script.timeout_ms);
        set.spawn(async move { link.call(req, timeout).await });
    }
    let (mut ok, mut errors, mut messages) = (0u64, BTreeMap::<String, u64>::new(), Vec::new());
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(KernelLinkError::Remote(e))) => {
                *errors.entry(format!("{:?}", e.kind)).or_default() += 1;
                if !messages.contains(&e.message) && messages.len() < 16 {
                    messages.push(e.message);
                }
            }
            Ok(Err(other)) => *errors.entry(other.to_string()).or_default() += 1,
            Err(e) => *errors.entry(e.to_string()).or_default() += 1,
        }
    }
    json(
        StatusCode::OK,
        &serde_json::json!({ "ok": ok, "errors": errors, "messages": messages }),
    )
}

fn fail(why: &str) -> Response<Body_> {
    error(StatusCode::BAD_REQUEST, "bad_request", why)
}
