//! The gateway service's kernel calls (`gateway_*`, `loong_ipc::message::gateway`): each
//! carries the bearer secret of the HTTP request it serves and is decided under that token,
//! exactly as `loongctl invoke --token` and `loongctl mcp serve` decide theirs. loongd never
//! parses HTTP; the worker never decides.
//!
//! - `gateway_auth`: the token behind the secret (public id), or `Denied` at the token stage
//!   (unknown, expired, revoked: HTTP 401), or `Denied` at the token-grants stage when the
//!   token may invoke no tool at all (HTTP 403). A refusal is recorded (`policy.decision`,
//!   with the token's public id when the secret names one).
//! - `gateway_list`: the tools the token may invoke, each decided as `mcp serve`'s dry run
//!   decides it and recorded; one that needs an approval is offered and says so.
//! - `gateway_invoke`: the same call as `loongctl invoke --token`: decided, confined, audited;
//!   past the wait the worker gives it, answered `ApprovalPending` naming the approval it
//!   waits for.
//! - `gateway_waiting`: the approvals a `gateway_invoke` of this worker in flight waits for
//!   (by its tag), so that `/mcp` reports them as MCP progress.
//! - `gateway_chat_start`: decodes the caller's `ChatRequest` and spawns `chat_turn` under
//!   the bearer, its events queued in this gateway worker's stream table (at most
//!   [`MAX_CHAT_STREAMS`] open; one not polled for [`CHAT_IDLE`] is dropped at the next
//!   gateway call, and all of a worker's when it ends, its turn running to its end
//!   unheard); answers the stream id. A turn's `Err` is its last event, `ChatEvent::Failed`
//!   with the error's kind (`denied`, `bad_request`, ...), so the worker chooses the HTTP
//!   status from the first batch.
//! - `gateway_chat_next`: waits up to [`CHAT_NEXT_WAIT`] for the stream's events and drains
//!   what has arrived (an empty batch: none yet, ask again); the last batch ends with `Done`
//!   or `Failed` and the stream is gone after it. A stream id from another gateway worker,
//!   or unknown, is an error.
//! - `gateway_stats`: the worker's request and stream counts, for `gateway status`.
//! - `gateway_webhook`: a chat platform's webhook request, relayed unparsed to its channel's
//!   worker (`webhook.rs`).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use loong_agent_wire::chat::{ChatEvent, ChatRequest};
use tokio::sync::mpsc;

use loong_ipc::{
    message::gateway::{
        self as wire, GatewayAuth, GatewayAuthed, GatewayChatNext, GatewayChatStart, GatewayInvoke,
        GatewayList, GatewayStats, GatewayTool, GatewayWaiting,
    },
    BearerSecret, DenialStage, ErrorKind, RemoteError, ServiceCall,
};
use loong_profiles::pack::Capability;

use super::{gateway_guard, Service, ServiceDef, ServiceError, ServiceHost, ServiceState};
use crate::{
    authority::{Bearer, Decision},
    config::{GatewayConfig, GatewayListen},
    effects::{self, Actor, Chain, Principal},
    request::{RequestIo, StopCell, WaitCell, OUTPUT_BUDGET_BYTES},
    workers::plugins::State,
    workers::WorkerKind,
    Kernel,
};

/// `bridge_kind` of loongd's built-in tools.
const BUILTIN_BRIDGE: &str = "builtin";

/// Each gateway request's chain gets its own number.
static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

fn bad(kind: &str, e: wire::WireError) -> RemoteError {
    RemoteError::new(
        ErrorKind::BadRequest,
        format!("kernel call {kind}: the body does not decode: {e}"),
    )
}

fn answer<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, RemoteError> {
    wire::encode(v).map_err(effects::internal)
}

/// Serves one `gateway_*` kernel call, within loongd's own limits on the gateway
/// (`gateway_guard`: its size, the gateway's rate, the bearer's token's calls in flight and
/// rate, and the records of its refusals).
pub(crate) async fn handle(
    host: &ServiceHost,
    worker: u64,
    call: ServiceCall,
) -> Result<Vec<u8>, RemoteError> {
    if let Err(why) = host
        .guard
        .admit_call(&call.kind, call.payload.len(), Instant::now())
    {
        return Err(limited(host, worker, &call.kind, why).await);
    }
    let kernel = &*host.kernel;
    match call.kind.as_str() {
        wire::KIND_GATEWAY_CHAT_START => {
            let b: GatewayChatStart =
                wire::decode(&call.payload).map_err(|e| bad(&call.kind, e))?;
            let held = admit_bearer(host, worker, &call.kind, b.bearer.expose()).await?;
            admit_approvals(host, worker, &call.kind, held.as_ref()).await?;
            let req: ChatRequest = wire::decode(&b.request).map_err(|e| bad(&call.kind, e))?;
            answer(&chat_start(host, worker, b.bearer, req, held)?)
        }
        wire::KIND_GATEWAY_CHAT_NEXT => {
            let b: GatewayChatNext = wire::decode(&call.payload).map_err(|e| bad(&call.kind, e))?;
            answer(&chat_next(worker, b.stream).await?)
        }
        wire::KIND_GATEWAY_AUTH => {
            let b: GatewayAuth = wire::decode(&call.payload).map_err(|e| bad(&call.kind, e))?;
            let (_held, checked) =
                admit_checked(host, worker, &call.kind, b.bearer.expose()).await?;
            auth(host, worker, b.bearer.expose(), checked).await
        }
        wire::KIND_GATEWAY_LIST => {
            let b: GatewayList = wire::decode(&call.payload).map_err(|e| bad(&call.kind, e))?;
            let (_held, checked) =
                admit_checked(host, worker, &call.kind, b.bearer.expose()).await?;
            answer(&list(kernel, worker, b.bearer.expose(), checked, b.cursor).await?)
        }
        wire::KIND_GATEWAY_INVOKE => {
            let b: GatewayInvoke = wire::decode(&call.payload).map_err(|e| bad(&call.kind, e))?;
            let held = admit_bearer(host, worker, &call.kind, b.bearer.expose()).await?;
            admit_approvals(host, worker, &call.kind, held.as_ref()).await?;
            invoke(kernel, worker, b).await
        }
        wire::KIND_GATEWAY_WAITING => {
            let b: GatewayWaiting = wire::decode(&call.payload).map_err(|e| bad(&call.kind, e))?;
            answer(&waiting_for(worker, b.tag))
        }
        wire::KIND_GATEWAY_WEBHOOK => {
            let b: wire::GatewayWebhook =
                wire::decode(&call.payload).map_err(|e| bad(&call.kind, e))?;
            answer(&super::webhook::relay(host, b).await?)
        }
        wire::KIND_GATEWAY_STATS => {
            let b: GatewayStats = wire::decode(&call.payload).map_err(|e| bad(&call.kind, e))?;
            sweep(&mut lock_streams(), Instant::now());
            host.state.requests.store(b.requests, Ordering::Relaxed);
            host.state
                .open_streams
                .store(b.open_streams, Ordering::Relaxed);
            Ok(Vec::new())
        }
        other => Err(RemoteError::new(
            ErrorKind::NotFound,
            format!("kernel call {other} is not a gateway kernel call this loongd knows"),
        )),
    }
}

/// A call past loongd's limits: refused, and recorded as a violation (coalesced past the
/// budget): an honest worker's own limits keep it below them.
async fn limited(
    host: &ServiceHost,
    worker: u64,
    kind: &str,
    why: gateway_guard::Limited,
) -> RemoteError {
    let message = why.to_string();
    host.violation(worker, kind, &message).await;
    let kind = match why {
        gateway_guard::Limited::TooLarge { .. } => ErrorKind::BadRequest,
        _ => ErrorKind::Overloaded,
    };
    RemoteError::new(kind, message)
}

/// The bearer's token's place among its calls in flight (held while the call runs), or the
/// refusal: loongd's limits for a live token; for a secret that names none, `None` while
/// refusals are recorded one by one (the call goes on, to be refused and recorded as
/// before), else the refusal at once, counted into the window's one record.
async fn admit_bearer(
    host: &ServiceHost,
    worker: u64,
    kind: &str,
    secret: &str,
) -> Result<Option<gateway_guard::InFlight>, RemoteError> {
    admit_checked(host, worker, kind, secret)
        .await
        .map(|(held, _)| held)
}

/// [`admit_bearer`], with the token it checked (or why it is not valid), so that the call
/// decides under it without looking it up again: one lookup for the request.
async fn admit_checked(
    host: &ServiceHost,
    worker: u64,
    kind: &str,
    secret: &str,
) -> Result<(Option<gateway_guard::InFlight>, Checked), RemoteError> {
    let checked = host
        .kernel
        .authority
        .tokens
        .check(secret)
        .map_err(effects::internal)?;
    match checked {
        Ok(token) => match host.guard.admit_token(&token.id, Instant::now()) {
            Ok(held) => Ok((Some(held), Ok(token))),
            Err(why) => Err(limited(host, worker, kind, why).await),
        },
        Err(denial) => {
            if host.record_refusal(gateway_guard::Refusal::Bearer, worker) {
                return Ok((None, Err(denial)));
            }
            Err(effects::denied(
                DenialStage::Token,
                Capability::ToolInvoke,
                "gateway",
                &format!("the bearer's token is not valid: {denial}"),
            ))
        }
    }
}

/// The bearer's token as checked once for a request, or why it is not valid.
type Checked = Result<crate::authority::Token, crate::authority::TokenDenial>;

/// A call that may ask for an approval (a tool's call, a chat turn's) of the token holding
/// `held`, or the refusal: loongd's limit on the approvals the token has pending through the
/// gateway (`gateway_guard`). An honest worker meets it when its callers (or the token's other
/// holders: `loongctl invoke`, channels, plans) have that many pending, so it is no protocol
/// violation: a `policy.decision` refusal under the token, each recorded (the token's calls
/// are bounded by its rate already), answered as an approval-stage denial naming the token
/// and what to do (a tool error over `/mcp`, a 403 on the chat routes).
async fn admit_approvals(
    host: &ServiceHost,
    worker: u64,
    kind: &str,
    held: Option<&gateway_guard::InFlight>,
) -> Result<(), RemoteError> {
    let Some(h) = held else {
        return Ok(());
    };
    let pending = host
        .kernel
        .authority
        .approvals
        .pending_of_token(h.token())
        .map_err(effects::internal)?;
    let Err(why) = host.guard.admit_approvals(h.token(), pending) else {
        return Ok(());
    };
    let reason = why.to_string();
    let cap = Capability::ToolInvoke;
    let event = crate::audit::Event {
        kind: crate::audit::Kind::PolicyDecision,
        actor: format!("worker:{worker}").into(),
        correlation: crate::audit::no_correlation(),
        detail: serde_json::json!({
            "allowed": false, "capability": cap.as_str(), "target": "gateway",
            "stage": "approval", "reason": reason, "token": h.token(),
            "kernel_call": kind, "pending_approvals": pending,
        })
        .into(),
    };
    effects::record(&host.kernel, event).await?;
    Err(effects::denied(
        DenialStage::Approval,
        cap,
        "gateway",
        &reason,
    ))
}

/// The most chat streams one gateway worker has open at once.
pub(crate) const MAX_CHAT_STREAMS: usize = 256;
/// A chat stream not polled for this long is dropped (its turn still runs to its end).
pub(crate) const CHAT_IDLE: Duration = Duration::from_secs(120);
/// How long one `gateway_chat_next` waits for a stream's first event.
pub(crate) const CHAT_NEXT_WAIT: Duration = Duration::from_secs(15);
/// Events queued between a turn and the stream's next poll before the turn waits.
const CHAT_QUEUE: usize = 256;
/// One batch stops growing once its events reach this many bytes (or events).
const CHAT_BATCH_BYTES: usize = 256 << 10;
const CHAT_BATCH_EVENTS: usize = 512;

/// Numbers the chat streams of this loongd.
static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

/// One open chat turn.
struct ChatStream {
    /// The gateway worker that started it: only it may poll it.
    worker: u64,
    events: Arc<tokio::sync::Mutex<mpsc::Receiver<ChatEvent>>>,
    polled: Instant,
}

fn streams() -> &'static Mutex<HashMap<u64, ChatStream>> {
    static STREAMS: OnceLock<Mutex<HashMap<u64, ChatStream>>> = OnceLock::new();
    STREAMS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock_streams() -> std::sync::MutexGuard<'static, HashMap<u64, ChatStream>> {
    streams()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The name a chat turn's error kind is sent with (`ChatEvent::Failed::kind`).
pub(crate) fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Denied => "denied",
        ErrorKind::BadRequest => "bad_request",
        ErrorKind::NotFound => "not_found",
        ErrorKind::Overloaded | ErrorKind::BudgetExceeded => "overloaded",
        ErrorKind::ApprovalPending => "approval_pending",
        ErrorKind::DeadlineExceeded => "deadline_exceeded",
        _ => "turn_failed",
    }
}

/// Drops the streams not polled for [`CHAT_IDLE`]; then whether `worker` may open another.
fn room(
    table: &mut HashMap<u64, ChatStream>,
    worker: u64,
    now: Instant,
) -> Result<(), RemoteError> {
    sweep(table, now);
    let open = table.values().filter(|s| s.worker == worker).count();
    if open >= MAX_CHAT_STREAMS {
        return Err(RemoteError::new(
            ErrorKind::Overloaded,
            format!("kernel call gateway_chat_start: {open} chat streams are open, the most one gateway holds ({MAX_CHAT_STREAMS}); finish or close one and retry"),
        ));
    }
    Ok(())
}

/// Starts a chat turn under `bearer`; its stream id. The turn holds its token's place among
/// its kernel calls in flight (`held`) until it ends, its stream read or not: a turn whose
/// stream was dropped still runs, so that the token's turns at once are bounded by loongd's
/// own limit (`gateway_guard`), not by the streams the worker keeps open.
fn chat_start(
    host: &ServiceHost,
    worker: u64,
    bearer: BearerSecret,
    req: ChatRequest,
    held: Option<gateway_guard::InFlight>,
) -> Result<u64, RemoteError> {
    let now = Instant::now();
    let mut table = lock_streams();
    room(&mut table, worker, now)?;
    let (tx, rx) = mpsc::channel(CHAT_QUEUE);
    let kernel = host.kernel.clone();
    // The turn runs to its end (its records are written) even when its stream is dropped:
    // its events then go nowhere.
    tokio::spawn(async move {
        let _held = held;
        if let Err(e) =
            crate::control::chat_api::chat_turn(&kernel, worker, &bearer, req, tx.clone()).await
        {
            // Within the idle bound: a stream nobody reads is dropped by then anyway.
            let failed = ChatEvent::Failed {
                kind: kind_name(e.kind).to_string(),
                message: e.message,
            };
            let _ = tokio::time::timeout(CHAT_IDLE, tx.send(failed)).await;
        }
    });
    let id = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
    table.insert(
        id,
        ChatStream {
            worker,
            events: Arc::new(tokio::sync::Mutex::new(rx)),
            polled: now,
        },
    );
    Ok(id)
}

/// The stream's next events: empty when none arrived within [`CHAT_NEXT_WAIT`]; the last
/// batch ends with `Done` or `Failed`, after which the stream is gone.
async fn chat_next(worker: u64, stream: u64) -> Result<Vec<Vec<u8>>, RemoteError> {
    let events = {
        let mut table = lock_streams();
        sweep(&mut table, Instant::now());
        match table.get_mut(&stream) {
            Some(s) if s.worker == worker => {
                s.polled = Instant::now();
                s.events.clone()
            }
            _ => {
                return Err(RemoteError::new(
                    ErrorKind::NotFound,
                    format!("kernel call gateway_chat_next: no open chat stream {stream} of this gateway; start one with gateway_chat_start"),
                ))
            }
        }
    };
    let Ok(mut rx) = tokio::time::timeout(CHAT_NEXT_WAIT, events.lock()).await else {
        return Ok(Vec::new());
    };
    let first = match tokio::time::timeout(CHAT_NEXT_WAIT, rx.recv()).await {
        Err(_) => return Ok(Vec::new()),
        Ok(Some(e)) => e,
        // The turn ended without its last event (aborted): say so once.
        Ok(None) => ChatEvent::Failed {
            kind: "turn_failed".into(),
            message: "the chat turn ended without an answer".into(),
        },
    };
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some(event) = next.take() {
        let last = matches!(event, ChatEvent::Done { .. } | ChatEvent::Failed { .. });
        let encoded = wire::encode(&event).map_err(effects::internal)?;
        bytes += encoded.len();
        out.push(encoded);
        if last {
            lock_streams().remove(&stream);
            break;
        }
        if bytes >= CHAT_BATCH_BYTES || out.len() >= CHAT_BATCH_EVENTS {
            break;
        }
        next = rx.try_recv().ok();
    }
    Ok(out)
}

/// Drops the streams not polled for [`CHAT_IDLE`] (their turns' sends then fail at once,
/// so none waits on a caller who is gone).
fn sweep(table: &mut HashMap<u64, ChatStream>, now: Instant) {
    table.retain(|_, s| now.saturating_duration_since(s.polled) < CHAT_IDLE);
}

/// Drops every stream of gateway worker `worker`, which ended: no other worker may poll
/// them, so kept they would only hold their turns' events (and a turn waiting to send one)
/// until the idle sweep. Called by the service's supervisor when the worker ends, for any
/// reason; the table's idle streams of other workers go too.
pub(crate) fn close_worker_streams(worker: u64) {
    let mut table = lock_streams();
    table.retain(|_, s| s.worker != worker);
    sweep(&mut table, Instant::now());
}

/// The approvals each `gateway_invoke` in flight waits for, by its worker and tag.
type Waits = HashMap<(u64, u64), WaitCell>;

fn waits() -> std::sync::MutexGuard<'static, Waits> {
    static WAITS: OnceLock<Mutex<Waits>> = OnceLock::new();
    WAITS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A call's entry in [`waits`], removed when the call ends.
struct Registered((u64, u64));

impl Drop for Registered {
    fn drop(&mut self) {
        waits().remove(&self.0);
    }
}

/// The approvals call `tag` of `worker` waits for now (none: no such call in flight).
fn waiting_for(worker: u64, tag: u64) -> Vec<String> {
    waits()
        .get(&(worker, tag))
        .map(|w| {
            w.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .ids
                .clone()
        })
        .unwrap_or_default()
}

/// `gateway_invoke`: the same call as `loongctl invoke --token`, with a request handle whose
/// approvals the worker can ask for while it waits (`gateway_waiting`, for MCP progress);
/// past `wait_ms`, answered `ApprovalPending` naming the approval it waited for, which is
/// withdrawn as the call ends (`effects::approval::Withdraw`).
async fn invoke(kernel: &Kernel, worker: u64, b: GatewayInvoke) -> Result<Vec<u8>, RemoteError> {
    let n = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed);
    // Its output (an approval's note and typed id) has no reader: read and dropped, so that
    // a note never holds the call; the worker asks for the approvals instead.
    let (out, mut notes) = mpsc::channel(1);
    let io = RequestIo {
        id: n,
        conn: 0,
        out: out.into(),
        budget: Arc::new(tokio::sync::Semaphore::new(OUTPUT_BUDGET_BYTES)),
        stop: StopCell::default(),
        waiting: WaitCell::default(),
        input: None,
        chat: None,
    };
    let key = (worker, b.tag);
    let _registered = {
        let mut table = waits();
        if table.contains_key(&key) {
            return Err(RemoteError::new(
                ErrorKind::DuplicateId,
                format!("kernel call gateway_invoke: call tag {} of this gateway is in flight already; use a new tag", b.tag),
            ));
        }
        table.insert(key, io.waiting.clone());
        Registered(key)
    };
    let actor = Actor {
        who: Principal::Worker { worker },
        bearer: Bearer::Secret(b.bearer.expose()),
        chain: Chain::root(format!("gateway-{worker}/req-{n}")),
        io: Some(&io),
    };
    let wait = Duration::from_millis(b.wait_ms.clamp(
        wire::MIN_GATEWAY_INVOKE_WAIT_MS,
        wire::MAX_GATEWAY_INVOKE_WAIT_MS,
    ));
    let call = effects::invoke::call(kernel, &actor, b.tool, b.input);
    tokio::pin!(call);
    let until = tokio::time::sleep(wait);
    tokio::pin!(until);
    loop {
        tokio::select! {
            r = &mut call => return r.map(|r| r.output.into_bytes()),
            Some(_note) = notes.recv() => {}
            () = &mut until => break,
        }
    }
    let first = io
        .waiting
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .ids
        .first()
        .cloned();
    let ms = wait.as_millis();
    Err(match first {
        Some(approval) => RemoteError::new(
            ErrorKind::ApprovalPending,
            format!("the call did not finish within {ms} ms: approval {approval} is still pending at the call's deadline, and is withdrawn with the call (an approval given now would run nothing); call again, and have the new request approved while the call waits (`loongctl approvals list`), or send an MCP progress token to wait until it is decided"),
        )
        .with_detail(loong_ipc::ErrorDetail::ApprovalPending { approval }),
        None => RemoteError::new(
            ErrorKind::DeadlineExceeded,
            format!("the call did not finish within {ms} ms"),
        ),
    })
}

fn root_chain(worker: u64) -> Chain {
    let n = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed);
    Chain::root(format!("gateway-{worker}/req-{n}"))
}

fn actor(worker: u64, secret: &str, chain: Chain) -> Actor<'_> {
    Actor {
        who: Principal::Worker { worker },
        bearer: Bearer::Secret(secret),
        chain,
        io: None,
    }
}

/// The capability a tool's call is decided on and its target, as `mcp serve`'s listing
/// decides it: a plugin's tool on `tool.invoke` of its name; a built-in on its effect's
/// capability with no target (only an unscoped grant covers every call before it is made).
fn decided_on(bridge_kind: &str, tool: &str) -> (Capability, Option<String>) {
    let effect = match (bridge_kind, tool) {
        (BUILTIN_BRIDGE, "file.read") => Some(Capability::FsRead),
        (BUILTIN_BRIDGE, "file.write" | "file.edit") => Some(Capability::FsWrite),
        (BUILTIN_BRIDGE, "web.fetch") => Some(Capability::NetEgress),
        (BUILTIN_BRIDGE, "shell.exec") => Some(Capability::ProcessExec),
        _ => None,
    };
    match effect {
        Some(cap) => (cap, None),
        None => (Capability::ToolInvoke, Some(tool.to_string())),
    }
}

/// Every tool of a usable plugin, in the set's order (plugin id, then the plugin's own
/// order): the plugin and its tool (`None`: the plugin is its one tool), nothing made yet, so
/// that a listing or an authentication decides every tool of the set (262,144 at 1,024
/// programs of 256 tools) and makes a description only for the tools it offers.
fn candidates(
    set: &crate::workers::plugins::Registry,
) -> impl Iterator<
    Item = (
        &crate::workers::plugins::Plugin,
        Option<&loong_ipc::ToolInfo>,
    ),
> {
    set.values().flat_map(|p| {
        let tools: Box<dyn Iterator<Item = Option<&loong_ipc::ToolInfo>> + Send> = match &p.state {
            State::Ready { info, .. } if p.has_named_tools() => {
                Box::new(info.tools.iter().map(Some))
            }
            State::Ready { .. } => Box::new(std::iter::once(None)),
            _ => Box::new(std::iter::empty()),
        };
        tools.map(move |t| (p, t))
    })
}

/// Loong's name of a tool of [`candidates`] (`Plugin::tool_names`).
fn tool_name(p: &crate::workers::plugins::Plugin, tool: Option<&loong_ipc::ToolInfo>) -> String {
    match tool {
        Some(t) => format!("{}/{}", p.id, t.name),
        None => p.id.clone(),
    }
}

/// A tool of [`candidates`] as the gateway offers it, with its description and bridge kind.
fn describe(
    p: &crate::workers::plugins::Plugin,
    tool: Option<&loong_ipc::ToolInfo>,
    name: String,
) -> GatewayTool {
    let description = match tool {
        Some(t) if !t.description.is_empty() => t.description.clone(),
        None => p.summary.clone(),
        Some(_) => format!("{name} (a tool of {}: {})", p.id, p.summary),
    };
    GatewayTool {
        name,
        description,
        bridge_kind: p.bridge_kind.to_string(),
    }
}

/// Most tools one page of a listing decides (and records), whatever the cursor and the set:
/// a page ends after [`wire::MAX_GATEWAY_TOOLS`] tools offered or this many decided, the
/// next cursor then naming the position in the set where the next page starts (a token
/// granted few tools of a large set is offered them over pages that may be short or empty).
pub(crate) const MAX_PAGE_DECISIONS: usize = 2 * wire::MAX_GATEWAY_TOOLS;

/// Most tokens whose gateway authentication (whether they may invoke some tool of the set)
/// is remembered; past it the table is emptied and filled again as requests come.
pub(crate) const MAX_AUTH_REMEMBERED: usize = 4096;

/// Length in bytes of a cursor's MAC (HMAC-SHA-256 cut to 128 bits).
const CURSOR_MAC_BYTES: usize = 16;

/// What a token's walk of the whole set found: some tool it may invoke (`None`), or the
/// first tool refused (its capability and target, for the refusal's record) when none is.
type AuthWalk = Option<(Capability, Option<String>)>;

/// Tokens' gateway authentications by token id, each with the generation of the plugin set
/// it walked: a token's grants and its pack do not change while loongd runs (its validity is
/// checked on every request), so one walk of the set answers every request until the set
/// changes.
fn remembered() -> std::sync::MutexGuard<'static, HashMap<String, (u64, AuthWalk)>> {
    static AUTHED: OnceLock<Mutex<HashMap<String, (u64, AuthWalk)>>> = OnceLock::new();
    AUTHED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Walks the set for `token`: `None` at the first tool it may invoke, else the first refused.
fn walk_for_auth(
    kernel: &Kernel,
    set: &crate::workers::plugins::Registry,
    token: &crate::authority::Token,
) -> AuthWalk {
    let mut first = None;
    for (plugin, tool) in candidates(set) {
        let name = tool_name(plugin, tool);
        let (cap, target) = decided_on(plugin.bridge_kind, &name);
        let o = kernel
            .authority
            .decide_for(token, cap, target.as_deref(), None);
        if matches!(
            o.decision,
            Ok(Decision::Allow | Decision::NeedsApproval { .. })
        ) {
            return None;
        }
        if first.is_none() {
            first = Some((cap, target));
        }
    }
    Some(first.unwrap_or((Capability::ToolInvoke, Some("gateway".to_string()))))
}

/// The bearer's token, or why not (recorded; a token that may invoke no tool, past the
/// refusal budget, is counted into the window's one record as a dead one is), under the
/// token [`admit_checked`] looked up for the request; whether it may invoke some tool is worked out once for each plugin set
/// (off the async threads) and remembered ([`remembered`]).
async fn auth(
    host: &ServiceHost,
    worker: u64,
    secret: &str,
    checked: Checked,
) -> Result<Vec<u8>, RemoteError> {
    let kernel = &*host.kernel;
    let chain = root_chain(worker);
    let actor = actor(worker, secret, chain);
    let (o, cap, target) = match checked {
        Ok(token) => {
            let (generation, set) = kernel.plugins_versioned();
            let known = remembered()
                .get(&token.id)
                .filter(|(g, _)| *g == generation)
                .map(|(_, w)| w.clone());
            let walk = match known {
                Some(w) => w,
                None => {
                    let k = host.kernel.clone();
                    let t = token.clone();
                    let w = tokio::task::spawn_blocking(move || walk_for_auth(&k, &set, &t))
                        .await
                        .map_err(effects::internal)?;
                    let mut table = remembered();
                    if table.len() >= MAX_AUTH_REMEMBERED {
                        table.clear();
                    }
                    table.insert(token.id.clone(), (generation, w.clone()));
                    w
                }
            };
            let Some((cap, target)) = walk else {
                return answer(&GatewayAuthed { token: token.id });
            };
            let o = kernel
                .authority
                .decide_for(&token, cap, target.as_deref(), None);
            (o, cap, target)
        }
        // A dead or unknown token: decided as such once, for the record.
        Err(_) => {
            let o = kernel
                .authority
                .decide_as(actor.bearer, Capability::ToolInvoke, Some("gateway"), None)
                .map_err(effects::internal)?;
            (o, Capability::ToolInvoke, Some("gateway".to_string()))
        }
    };
    let stage = match &o.decision {
        Err(_) => DenialStage::Token,
        _ => effects::denial_stage(&o).unwrap_or(DenialStage::TokenGrants),
    };
    let reason = match &o.decision {
        Err(t) => format!("the bearer's token is not valid: {t}"),
        _ => format!(
            "token {} may invoke no tool through the gateway ({})",
            o.token.as_deref().unwrap_or("?"),
            o.reason().unwrap_or_default()
        ),
    };
    // A dead token's refusal was admitted to the record by `admit_bearer`.
    if stage == DenialStage::Token || host.record_refusal(gateway_guard::Refusal::Bearer, worker) {
        let detail = effects::decision_detail(&o, cap, target.as_deref(), None);
        effects::record(
            kernel,
            actor.event(crate::audit::Kind::PolicyDecision, detail),
        )
        .await?;
    }
    Err(effects::denied(stage, cap, "gateway", &reason))
}

/// One page's walk of `items` from position `start`: each decided (`decide` says whether it
/// is offered) until [`wire::MAX_GATEWAY_TOOLS`] are offered or [`MAX_PAGE_DECISIONS`] are
/// decided; the decisions in order, and the position of the next page when items remain.
/// The items before `start` are passed over without being decided.
fn walk_page<I, T>(
    items: impl Iterator<Item = I>,
    start: u64,
    mut decide: impl FnMut(I) -> (T, bool),
) -> (Vec<(T, bool)>, Option<u64>) {
    let mut items = items.skip(usize::try_from(start).unwrap_or(usize::MAX));
    let mut page = Vec::new();
    let mut offered = 0;
    let mut position = start;
    while page.len() < MAX_PAGE_DECISIONS && offered < wire::MAX_GATEWAY_TOOLS {
        let Some(item) = items.next() else {
            return (page, None);
        };
        let (decided, ok) = decide(item);
        if ok {
            offered += 1;
        }
        page.push((decided, ok));
        position += 1;
    }
    let next = items.next().is_some().then_some(position);
    (page, next)
}

/// The key of this run's cursors (random, made at the first use; `None`: no randomness, and
/// then no cursor is given or taken: a listing is its first page).
fn cursor_key() -> Option<&'static [u8; 32]> {
    static KEY: OnceLock<Option<[u8; 32]>> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).ok().map(|()| key)
    })
    .as_ref()
}

/// HMAC-SHA-256 of `message` under `key` (RFC 2104).
fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// The MAC of a cursor at `position` of the set at `generation`, given to token `token`.
fn cursor_mac(key: &[u8; 32], token: &str, generation: u64, position: u64) -> [u8; 32] {
    let mut message = Vec::with_capacity(token.len() + 24);
    message.extend_from_slice(&(token.len() as u64).to_be_bytes());
    message.extend_from_slice(token.as_bytes());
    message.extend_from_slice(&generation.to_be_bytes());
    message.extend_from_slice(&position.to_be_bytes());
    hmac_sha256(key, &message)
}

/// The cursor of the page at `position`, given to `token` for the set at `generation`:
/// `POSITION.GENERATION.MAC` (`None` without a key: the listing then ends at this page).
fn give_cursor(token: &str, generation: u64, position: u64) -> Option<String> {
    let key = cursor_key()?;
    let mac = cursor_mac(key, token, generation, position);
    Some(format!(
        "{position}.{generation}.{}",
        hex::encode(&mac[..CURSOR_MAC_BYTES])
    ))
}

/// The position a cursor names, if loongd gave it to `token` for the set at `generation`;
/// else why not (a cursor made up, another token's, another run's, or of a set changed
/// since).
fn take_cursor(cursor: &str, token: &str, generation: u64) -> Result<u64, RemoteError> {
    let refused = |why: &str| {
        let shown: String = cursor
            .chars()
            .take(wire::MAX_GATEWAY_CURSOR_BYTES)
            .collect();
        RemoteError::new(
            ErrorKind::BadRequest,
            format!("tools/list: cursor {shown:?} {why}; list again without a cursor"),
        )
    };
    let mut parts = cursor.splitn(3, '.');
    let (Some(p), Some(g), Some(m)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(refused("is not one this server gave"));
    };
    let (Ok(position), Ok(given_at), Ok(mac)) =
        (p.parse::<u64>(), g.parse::<u64>(), hex::decode(m))
    else {
        return Err(refused("is not one this server gave"));
    };
    let Some(key) = cursor_key() else {
        return Err(refused("is not one this server gave"));
    };
    let expected = cursor_mac(key, token, given_at, position);
    let same = mac.len() == CURSOR_MAC_BYTES
        && mac
            .iter()
            .zip(&expected[..CURSOR_MAC_BYTES])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(refused("is not one this server gave"));
    }
    if given_at != generation {
        return Err(refused("was given for a plugin set that has changed since"));
    }
    Ok(position)
}

/// One page of the tools the bearer may invoke, each decided as a dry run under the token
/// [`admit_checked`] looked up for the request: the page is cut at a position in the set (the cursor's, one loongd gave
/// this token for the set as it stands) and decides at most [`MAX_PAGE_DECISIONS`] tools
/// ([`walk_page`]), so that its work is bounded whatever the cursor and the set, and a token
/// granted tools past the first [`wire::MAX_GATEWAY_TOOLS`] of the set is offered them.
/// Recorded: every decision of the page, offered or refused, whichever the page.
async fn list(
    kernel: &Kernel,
    worker: u64,
    secret: &str,
    checked: Checked,
    cursor: Option<String>,
) -> Result<wire::GatewayListed, RemoteError> {
    let chain = root_chain(worker);
    let actor = actor(worker, secret, chain);
    let token = match checked {
        Ok(t) => t,
        Err(why) => {
            let (cap, target) = (Capability::ToolInvoke, "gateway");
            let o = kernel
                .authority
                .decide_as(actor.bearer, cap, Some(target), None)
                .map_err(effects::internal)?;
            let detail = effects::decision_detail(&o, cap, Some(target), None);
            effects::record(
                kernel,
                actor.event(crate::audit::Kind::PolicyDecision, detail),
            )
            .await?;
            return Err(effects::denied(
                DenialStage::Token,
                cap,
                "gateway",
                &format!("the bearer's token is not valid: {why}"),
            ));
        }
    };
    let (generation, set) = kernel.plugins_versioned();
    let start = match &cursor {
        Some(c) => take_cursor(c, &token.id, generation)?,
        None => 0,
    };
    let (page, next) = walk_page(candidates(&set), start, |(plugin, tool)| {
        let name = tool_name(plugin, tool);
        let (cap, target) = decided_on(plugin.bridge_kind, &name);
        let o = kernel
            .authority
            .decide_for(&token, cap, target.as_deref(), None);
        let needs_approval = matches!(o.decision, Ok(Decision::NeedsApproval { .. }));
        let offered = o.decision.is_ok() && (o.allowed() || needs_approval);
        (
            (plugin, tool, name, cap, target, o, needs_approval),
            offered,
        )
    });
    let mut tools = Vec::new();
    let mut commits = Vec::with_capacity(page.len());
    for ((plugin, tool, name, cap, target, o, needs_approval), offered) in page {
        crate::metrics::decided(cap, o.allowed(), needs_approval);
        let detail = effects::decision_detail(&o, cap, target.as_deref(), None);
        let event = actor.event(crate::audit::Kind::PolicyDecision, detail);
        // Queued in order and waited for all together before the answer: one commit
        // round for the page, not one for each of its thousands of records.
        commits.push(kernel.audit.queue(event).await.map_err(effects::internal)?);
        if !offered {
            continue;
        }
        let mut t = describe(plugin, tool, name);
        t.description
            .push_str(&format!(" [Loong tool `{}`]", t.name));
        if needs_approval {
            t.description.push_str(
                " Each call waits for an operator's approval (`loongctl approvals list`).",
            );
        }
        tools.push(t);
    }
    for c in commits {
        c.committed().await.map_err(effects::internal)?;
    }
    let next = next.and_then(|position| give_cursor(&token.id, generation, position));
    Ok(wire::GatewayListed { tools, next })
}

/// The service's name for the gateway.
pub(crate) const NAME: &str = "gateway";

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error(
        "gateway.listen: binding {listen}: {source}; choose another address or stop what holds it"
    )]
    Bind {
        listen: String,
        source: std::io::Error,
    },
    #[error("gateway.listen: {0} exists and is not a socket; remove it or choose another path")]
    NotSocket(String),
    #[error("{0}")]
    Service(#[from] ServiceError),
}

/// What the gateway worker is configured with (its `ServeSpec::config_json`).
pub(crate) fn worker_config(kernel: &Kernel, cfg: &GatewayConfig) -> serde_json::Value {
    let models: Vec<&str> = kernel
        .config
        .agent
        .providers
        .values()
        .map(|p| p.model.as_str())
        .collect();
    serde_json::json!({
        "unix": matches!(cfg.listen, GatewayListen::Unix(_)),
        "allowed_hosts": cfg.allowed_hosts,
        "allowed_origins": cfg.allowed_origins,
        "max_body_bytes": cfg.max_body_bytes,
        "max_streams_per_token": cfg.max_streams_per_token,
        "requests_per_second": cfg.requests_per_second,
        "burst": cfg.burst,
        "models": models,
        "test_raw_calls": test_raw_calls(),
    })
}

/// The environment variable that makes a debug build's gateway worker serve its test hook,
/// which sends loongd the kernel calls a test describes as a compromised worker would
/// (`workers/gateway/src/test_hook.rs`; tests/all/gateway_guard.rs). A release loongd never
/// reads it.
#[cfg_attr(not(debug_assertions), allow(dead_code))]
pub const TEST_RAW_CALLS_ENV: &str = "LOONG_TEST_GATEWAY_RAW_CALLS";

#[cfg(debug_assertions)]
fn test_raw_calls() -> bool {
    std::env::var_os(TEST_RAW_CALLS_ENV).is_some()
}

#[cfg(not(debug_assertions))]
fn test_raw_calls() -> bool {
    false
}

/// Binds `[gateway] listen` and starts the gateway worker under supervision.
pub(crate) fn start(kernel: &Arc<Kernel>) -> Result<Arc<ServiceState>, StartError> {
    use std::os::unix::fs::FileTypeExt;
    let cfg = kernel.config.gateway.clone();
    if kernel.services.state(Service::Gateway, NAME).is_some() {
        return Err(ServiceError::AlreadyRunning(Service::Gateway.as_str(), NAME.into()).into());
    }
    let bind_err = |source| StartError::Bind {
        listen: cfg.listen.to_string(),
        source,
    };
    let fd: std::os::fd::OwnedFd = match &cfg.listen {
        GatewayListen::Tcp(addr) => std::net::TcpListener::bind(addr).map_err(bind_err)?.into(),
        GatewayListen::Unix(path) => {
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_socket() => {
                    std::fs::remove_file(path).map_err(bind_err)?;
                }
                Ok(_) => return Err(StartError::NotSocket(path.display().to_string())),
                Err(_) => {}
            }
            std::os::unix::net::UnixListener::bind(path)
                .map_err(bind_err)?
                .into()
        }
    };
    let def = ServiceDef {
        service: Service::Gateway,
        name: NAME.into(),
        kind: WorkerKind::gateway(Arc::new(fd)),
        config_json: worker_config(kernel, &cfg).to_string(),
        secrets: Vec::new(),
        token: None,
    };
    Ok(kernel.services.start(kernel, def)?)
}

/// `loongctl gateway status`.
pub(crate) fn status(kernel: &Kernel) -> loong_ipc::ControlResponse {
    let listen = kernel.config.gateway.listen.to_string();
    let view = match kernel.services.state(Service::Gateway, NAME) {
        None => loong_ipc::GatewayView {
            running: false,
            listen,
            started_ms: 0,
            uptime_ms: 0,
            requests: 0,
            open_streams: 0,
            restarts: 0,
            worker: 0,
            pid: 0,
            last_exit: None,
        },
        Some(s) => {
            let started_ms = s.started_ms.load(Ordering::Relaxed);
            let now = u64::try_from(crate::now_ms()).unwrap_or(0);
            loong_ipc::GatewayView {
                running: true,
                listen,
                started_ms,
                uptime_ms: now.saturating_sub(started_ms),
                requests: s.requests.load(Ordering::Relaxed),
                open_streams: s.open_streams.load(Ordering::Relaxed),
                restarts: s.restarts.load(Ordering::Relaxed),
                worker: s.worker.load(Ordering::Relaxed),
                pid: s.pid.load(Ordering::Relaxed),
                last_exit: s
                    .last_exit
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            }
        }
    };
    loong_ipc::ControlResponse::Gateway(view)
}

/// `loongctl gateway run`: starts the gateway (bound now, so a port in use is told at once).
pub(crate) fn run(kernel: &Kernel) -> Result<loong_ipc::ControlResponse, RemoteError> {
    let me = kernel
        .arc()
        .ok_or_else(|| RemoteError::new(ErrorKind::ShuttingDown, "loongd is stopping"))?;
    match start(&me) {
        Ok(_) => Ok(status(kernel)),
        Err(StartError::Service(ServiceError::AlreadyRunning(..))) => Err(RemoteError::new(
            ErrorKind::BadRequest,
            "the gateway is already running; `loongctl gateway status` shows it, `loongctl gateway stop` stops it",
        )),
        Err(StartError::Service(ServiceError::Stopping)) => Err(RemoteError::new(
            ErrorKind::ShuttingDown,
            "loongd is stopping; no service starts",
        )),
        Err(e) => Err(RemoteError::new(ErrorKind::BadRequest, e.to_string())),
    }
}

/// `loongctl gateway stop`: withdraws the worker's `Serve`; its open streams drain within
/// `drain_ms` (default `[gateway] drain_ms`), then it is killed.
pub(crate) async fn stop(
    kernel: &Kernel,
    drain_ms: Option<u64>,
) -> Result<loong_ipc::ControlResponse, RemoteError> {
    let drain = std::time::Duration::from_millis(
        drain_ms
            .unwrap_or(kernel.config.gateway.drain_ms)
            .min(MAX_DRAIN_MS),
    );
    if !kernel.services.stop(Service::Gateway, NAME, drain).await {
        return Err(RemoteError::new(
            ErrorKind::NotFound,
            "the gateway is not running; `loongctl gateway run` starts it",
        ));
    }
    Ok(status(kernel))
}

/// The longest drain a stop may ask for.
pub const MAX_DRAIN_MS: u64 = 600_000;

#[cfg(test)]
mod stream_tests {
    use super::*;

    fn open(id: u64, worker: u64, rx: mpsc::Receiver<ChatEvent>, polled: Instant) {
        lock_streams().insert(
            id,
            ChatStream {
                worker,
                events: Arc::new(tokio::sync::Mutex::new(rx)),
                polled,
            },
        );
    }

    /// A gateway worker that ends leaves no stream behind: its streams are freed at once (a
    /// turn waiting to send on a full one goes on), another worker's stay, and an idle one
    /// is swept by any later poll, not only by a new stream.
    #[tokio::test]
    async fn an_ended_workers_streams_are_freed_and_idle_ones_swept_by_any_poll() {
        let (dead, alive) = (u64::MAX - 11, u64::MAX - 12);
        let (ours, theirs, idle) = (u64::MAX - 21, u64::MAX - 22, u64::MAX - 23);
        let (tx, rx) = mpsc::channel(1);
        open(ours, dead, rx, Instant::now());
        let (_keep, rx) = mpsc::channel(1);
        open(theirs, alive, rx, Instant::now());
        tx.send(ChatEvent::TextDelta("a".into()))
            .await
            .expect("queued");
        let waiting = tokio::spawn(async move { tx.send(ChatEvent::TextDelta("b".into())).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the turn waits on the full stream");
        close_worker_streams(dead);
        let sent = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting turn goes on")
            .expect("joined");
        assert!(sent.is_err(), "its event goes nowhere");
        assert!(!lock_streams().contains_key(&ours));
        assert!(
            lock_streams().contains_key(&theirs),
            "another worker's stays"
        );
        let e = chat_next(dead, ours).await.expect_err("gone");
        assert_eq!(e.kind, ErrorKind::NotFound);

        // An idle stream goes at the next poll of any stream.
        let Some(long_ago) = Instant::now().checked_sub(CHAT_IDLE + Duration::from_secs(1)) else {
            return;
        };
        let (_keep2, rx) = mpsc::channel(1);
        open(idle, alive, rx, long_ago);
        let _ = chat_next(alive, u64::MAX - 99).await;
        assert!(!lock_streams().contains_key(&idle), "swept");
        lock_streams().remove(&theirs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loong_agent_wire::chat::ChatStop;

    fn stream(worker: u64, polled: Instant, queue: usize) -> (ChatStream, mpsc::Sender<ChatEvent>) {
        let (tx, rx) = mpsc::channel(queue);
        (
            ChatStream {
                worker,
                events: Arc::new(tokio::sync::Mutex::new(rx)),
                polled,
            },
            tx,
        )
    }

    fn put(worker: u64) -> (u64, mpsc::Sender<ChatEvent>) {
        let id = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
        let (s, tx) = stream(worker, Instant::now(), CHAT_BATCH_EVENTS + 8);
        lock_streams().insert(id, s);
        (id, tx)
    }

    fn events(batch: &[Vec<u8>]) -> Vec<ChatEvent> {
        batch
            .iter()
            .map(|b| wire::decode(b).expect("an event"))
            .collect()
    }

    #[tokio::test]
    async fn a_stream_is_polled_only_by_its_own_worker_and_is_gone_after_its_last_event() {
        let (id, tx) = put(9001);
        tx.send(ChatEvent::TextDelta("hi".into()))
            .await
            .expect("send");
        // Another worker, or an unknown id: refused, and the stream is untouched.
        let e = chat_next(9002, id)
            .await
            .expect_err("another worker's stream");
        assert_eq!(e.kind, ErrorKind::NotFound);
        let e = chat_next(9001, u64::MAX).await.expect_err("unknown stream");
        assert_eq!(e.kind, ErrorKind::NotFound);
        // Its own worker reads it.
        let got = events(&chat_next(9001, id).await.expect("own stream"));
        assert_eq!(got, vec![ChatEvent::TextDelta("hi".into())]);
        tx.send(ChatEvent::Done {
            stop: ChatStop::EndTurn,
            usage: Default::default(),
        })
        .await
        .expect("send");
        let got = events(&chat_next(9001, id).await.expect("own stream"));
        assert!(
            matches!(got.as_slice(), [ChatEvent::Done { .. }]),
            "{got:?}"
        );
        let e = chat_next(9001, id).await.expect_err("ended stream");
        assert_eq!(e.kind, ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn a_turn_that_ends_without_its_last_event_is_one_failed_event() {
        let (id, tx) = put(9003);
        drop(tx);
        let got = events(&chat_next(9003, id).await.expect("own stream"));
        assert!(
            matches!(got.as_slice(), [ChatEvent::Failed { kind, .. }] if kind == "turn_failed"),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn a_batch_is_bounded_and_the_rest_comes_next() {
        let (id, tx) = put(9004);
        for _ in 0..CHAT_BATCH_EVENTS + 3 {
            tx.send(ChatEvent::TextDelta("x".into()))
                .await
                .expect("send");
        }
        let first = chat_next(9004, id).await.expect("batch");
        assert_eq!(first.len(), CHAT_BATCH_EVENTS);
        let rest = chat_next(9004, id).await.expect("batch");
        assert_eq!(rest.len(), 3);
    }

    /// A page decides at most MAX_PAGE_DECISIONS tools whatever the cursor and the set: a
    /// cursor past the end decides none, a token offered nothing decides the budget and is
    /// given the next position; the control: a token offered everything gets a full page.
    #[test]
    fn a_page_decides_a_bounded_number_of_tools_from_its_position() {
        let set = 0..100_000u64;
        let mut decided = 0;
        let (page, next) = walk_page(set.clone(), u64::MAX, |i| {
            decided += 1;
            (i, true)
        });
        assert_eq!((decided, page.len(), next), (0, 0, None));
        let (page, next) = walk_page(set.clone(), 10, |i| (i, false));
        assert_eq!(page.len(), MAX_PAGE_DECISIONS);
        assert_eq!(page[0].0, 10);
        assert_eq!(next, Some(10 + MAX_PAGE_DECISIONS as u64));
        let (page, next) = walk_page(set.clone(), 0, |i| (i, true));
        assert_eq!(page.len(), wire::MAX_GATEWAY_TOOLS);
        assert_eq!(next, Some(wire::MAX_GATEWAY_TOOLS as u64));
        // The last page: what remains, and no next.
        let (page, next) = walk_page(set, 99_990, |i| (i, true));
        assert_eq!((page.len(), next), (10, None));
    }

    /// A cursor is taken only from the token it was given to, for the set it was given for,
    /// as given: another token's, another set generation's, an altered or a made-up one is
    /// refused; the control: the cursor as given names its position.
    #[test]
    fn a_cursor_is_taken_only_as_given_to_its_token_for_its_set() {
        let given = give_cursor("tok-a", 7, 4096).expect("a key");
        assert_eq!(take_cursor(&given, "tok-a", 7).expect("as given"), 4096);
        for (cursor, token, generation) in [
            (given.as_str(), "tok-b", 7),
            (given.as_str(), "tok-a", 8),
            ("4096", "tok-a", 7),
            ("0", "tok-a", 7),
            ("", "tok-a", 7),
        ] {
            let e = take_cursor(cursor, token, generation).expect_err(cursor);
            assert_eq!(e.kind, ErrorKind::BadRequest, "{cursor}");
        }
        let mac = given.rsplit('.').next().expect("mac");
        let moved = format!("8192.7.{mac}");
        assert!(take_cursor(&moved, "tok-a", 7).is_err(), "another position");
        let mut flipped = given.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).expect("text");
        assert!(take_cursor(&flipped, "tok-a", 7).is_err(), "an altered mac");
    }

    /// The cursor's MAC is HMAC-SHA-256: the value Python's `hmac` module computes for the
    /// same key and message (`hmac.new(b"\x0b" * 32, b"Hi There", sha256)`).
    #[test]
    fn the_cursor_mac_is_hmac_sha256() {
        let mac = hmac_sha256(&[0x0b; 32], b"Hi There");
        assert_eq!(
            hex::encode(mac),
            "198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7"
        );
    }

    #[test]
    fn a_worker_holds_at_most_the_limit_of_streams_and_idle_ones_are_dropped() {
        let now = Instant::now();
        let mut table = HashMap::new();
        let mut senders = Vec::new();
        for n in 0..MAX_CHAT_STREAMS as u64 {
            let (s, tx) = stream(1, now, 1);
            table.insert(n, s);
            senders.push(tx);
        }
        let e = room(&mut table, 1, now).expect_err("full");
        assert_eq!(e.kind, ErrorKind::Overloaded);
        // Another worker's streams are its own.
        assert!(room(&mut table, 2, now).is_ok());
        // Once they idle past the limit they are dropped, and there is room again.
        let later = now + CHAT_IDLE + Duration::from_secs(1);
        assert!(room(&mut table, 1, later).is_ok());
        assert!(table.is_empty());
    }
}
