//! The gateway service's kernel calls (`gateway_*`, a [`ServiceCall`]'s kinds): their bodies
//! and answers, shared by loongd (`services::gateway`) and the gateway worker. Each call of
//! an HTTP request carries the bearer secret that request came with; loongd decides it under
//! that token and the worker keeps the secret no longer than the request.
//!
//! [`ServiceCall`]: super::kernel::ServiceCall

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{
    control::BearerSecret,
    kernel::{KernelRequest, ServiceCall},
};

/// Resolve a request's bearer: [`GatewayAuth`] → [`GatewayAuthed`]. Refused `Denied` with a
/// [`crate::DenialStage::Token`] detail for an unknown, expired or revoked secret (HTTP 401),
/// and `Denied` with another stage for a token that may invoke nothing (HTTP 403).
pub const KIND_GATEWAY_AUTH: &str = "gateway_auth";
/// The tools the bearer may invoke, a page at a time: [`GatewayList`] → [`GatewayListed`]
/// (at most [`MAX_GATEWAY_TOOLS`] of them, chosen among the tools the token may invoke, and
/// where the next page starts when there are more).
pub const KIND_GATEWAY_LIST: &str = "gateway_list";
/// Invoke a tool under the bearer: [`GatewayInvoke`] → the tool's JSON output (raw bytes).
pub const KIND_GATEWAY_INVOKE: &str = "gateway_invoke";
/// Start a chat turn under the bearer: [`GatewayChatStart`] → the stream id (`u64`).
pub const KIND_GATEWAY_CHAT_START: &str = "gateway_chat_start";
/// The next events of a chat turn: [`GatewayChatNext`] → `Vec<Vec<u8>>` (each a postcard
/// `ChatEvent`): empty when none arrived within loongd's wait (ask again); the last batch
/// ends with `Done` or `Failed`, and the stream is gone after it.
pub const KIND_GATEWAY_CHAT_NEXT: &str = "gateway_chat_next";
/// The approvals a call of this worker in flight waits for now: [`GatewayWaiting`] →
/// `Vec<String>` (their ids, oldest first; empty: none, or no such call).
pub const KIND_GATEWAY_WAITING: &str = "gateway_waiting";
/// The worker's figures for `loongctl gateway status`: [`GatewayStats`] → nothing.
pub const KIND_GATEWAY_STATS: &str = "gateway_stats";
/// A chat platform's webhook request, relayed to its channel's worker unparsed:
/// [`GatewayWebhook`] → [`super::channel::WebhookReply`] (the HTTP status and body to
/// answer). No bearer: the platform's signature, checked in the channel worker, is the
/// authentication.
pub const KIND_GATEWAY_WEBHOOK: &str = "gateway_webhook";

/// Bound on the tools one [`KIND_GATEWAY_LIST`] answer (one page) names.
pub const MAX_GATEWAY_TOOLS: usize = 4096;

/// Longest cursor of [`GatewayList`] (loongd's are far shorter).
pub const MAX_GATEWAY_CURSOR_BYTES: usize = 256;

/// [`KIND_GATEWAY_AUTH`]'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayAuth {
    pub bearer: BearerSecret,
}

/// [`KIND_GATEWAY_AUTH`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayAuthed {
    /// The token's public id (never its secret).
    pub token: String,
}

/// [`KIND_GATEWAY_LIST`]'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayList {
    pub bearer: BearerSecret,
    /// Where the page starts: `None` for the first, else the previous page's
    /// [`GatewayListed::next`], opaque (loongd refuses one it did not give this token for
    /// the set as it stands; at most [`MAX_GATEWAY_CURSOR_BYTES`]).
    pub cursor: Option<String>,
}

/// [`KIND_GATEWAY_LIST`]'s answer: one page of the tools the bearer may invoke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayListed {
    pub tools: Vec<GatewayTool>,
    /// The next page's cursor when the bearer may invoke more tools than this page names;
    /// `None` on the last page.
    pub next: Option<String>,
}

/// One tool the bearer may invoke, as `mcp serve` offers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayTool {
    /// Loong's name (`echo`, `file.read`, `PLUGIN/TOOL`).
    pub name: String,
    pub description: String,
    /// Its plugin's `bridge_kind` (`builtin`, `mcp_stdio`, …).
    pub bridge_kind: String,
}

/// [`KIND_GATEWAY_INVOKE`]'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInvoke {
    pub bearer: BearerSecret,
    /// Loong's name of the tool.
    pub tool: String,
    /// Its JSON input.
    pub input: String,
    /// The worker's number for this call, by which [`KIND_GATEWAY_WAITING`] asks for the
    /// approvals it waits for.
    pub tag: u64,
    /// How long loongd lets it wait (an approval's wait included, bounded by
    /// [`MIN_GATEWAY_INVOKE_WAIT_MS`] and [`MAX_GATEWAY_INVOKE_WAIT_MS`]): past it, the call
    /// is answered `ApprovalPending`
    /// naming the approval it waits for (or `DeadlineExceeded`).
    pub wait_ms: u64,
}

/// The longest wait a [`GatewayInvoke`] may ask for (a day: an approval expires before).
pub const MAX_GATEWAY_INVOKE_WAIT_MS: u64 = 86_400_000;
/// The shortest wait loongd gives a [`GatewayInvoke`], whatever it asks for (the worker's
/// own wait for a call whose client asked for no progress): a call answered early gives its
/// token's place among its calls in flight back while the approval it asked for stays
/// pending, so that a shorter wait would let a worker taken over ask for approvals far
/// faster than calls waiting for them could.
pub const MIN_GATEWAY_INVOKE_WAIT_MS: u64 = 120_000;

/// [`KIND_GATEWAY_WAITING`]'s body: the [`GatewayInvoke::tag`] of a call in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayWaiting {
    pub tag: u64,
}

/// [`KIND_GATEWAY_CHAT_START`]'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayChatStart {
    pub bearer: BearerSecret,
    /// A postcard `ChatRequest` (`loong_agent_wire::chat`).
    pub request: Vec<u8>,
}

/// [`KIND_GATEWAY_CHAT_NEXT`]'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayChatNext {
    pub stream: u64,
}

/// [`KIND_GATEWAY_STATS`]'s body: what `gateway status` shows beside loongd's own figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStats {
    /// HTTP requests answered since the worker started.
    pub requests: u64,
    /// Requests and streams open now.
    pub open_streams: u64,
}

/// [`KIND_GATEWAY_WEBHOOK`]'s body: `POST /channels/PLATFORM/ACCOUNT/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayWebhook {
    /// `feishu`.
    pub platform: String,
    /// The channel's name.
    pub account: String,
    /// The request, as the channel worker receives it.
    pub request: super::channel::WebhookRequest,
}

impl GatewayWebhook {
    /// Checks every variable-size field against its bound.
    pub fn check_bounds(&self) -> Result<(), super::BoundError> {
        super::check_len(
            "platform",
            &self.platform,
            super::channel::MAX_CHANNEL_ID_BYTES,
        )?;
        super::check_len(
            "account",
            &self.account,
            super::channel::MAX_CHANNEL_ID_BYTES,
        )?;
        self.request.check_bounds()
    }
}

/// Why a body or answer does not encode or decode.
pub use postcard::Error as WireError;

/// A body or answer's bytes.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, WireError> {
    postcard::to_allocvec(v)
}

/// A gateway kernel call of `kind` with `body`.
pub fn request<T: Serialize>(kind: &str, body: &T) -> Result<KernelRequest, postcard::Error> {
    Ok(KernelRequest::Service(ServiceCall {
        kind: kind.to_string(),
        payload: postcard::to_allocvec(body)?,
    }))
}

/// A body or answer read whole (no bytes after it).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    let (v, rest) = postcard::take_from_bytes::<T>(bytes)?;
    if rest.is_empty() {
        Ok(v)
    } else {
        Err(postcard::Error::DeserializeBadEncoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_body_travels_as_a_service_kind_and_reads_back_whole() {
        let body = GatewayInvoke {
            bearer: BearerSecret::new("s3cret"),
            tool: "echo".into(),
            input: "{}".into(),
            tag: 7,
            wait_ms: 1000,
        };
        let req = request(KIND_GATEWAY_INVOKE, &body).expect("encodes");
        let call = req.encode(1, 1, 100).expect("a service kind");
        let Ok(KernelRequest::Service(c)) = call.request() else {
            panic!("a service call")
        };
        assert_eq!(c.kind, KIND_GATEWAY_INVOKE);
        assert_eq!(decode::<GatewayInvoke>(&c.payload), Ok(body));
        let mut trailing = c.payload.clone();
        trailing.push(0);
        assert!(decode::<GatewayInvoke>(&trailing).is_err());
        // The secret never shows in a log line that prints the body.
        let shown = format!("{:?}", decode::<GatewayInvoke>(&c.payload));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
