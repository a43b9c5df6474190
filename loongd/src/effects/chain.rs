//! Kernel calls on the effect path: a worker that serves a call asks loongd for effects, and
//! each is decided under the authority of the call chain it belongs to.
//!
//! ```text
//! root call (an operator's invoke, under a token or the operator's pack)
//!   └─ its worker ─ KernelCall{InvokeTool} ─▶ Host::start
//!        admit: depth ≤ max_depth, root's calls ≤ max_calls, root's wall time left,
//!               the calling plugin declares invoke_tool        (each refusal recorded)
//!        invoke::call_in, as Actor{ worker, the root's token by its id, chain.child(n) }
//!          └─ decide (the root's grants), record, dispatch, record the outcome
//! ```
//!
//! The worker never names a token or a chain: loongd keeps both in the [`Host`] it serves
//! the worker's call with, and the worker connection refuses a kernel call that names any
//! other call. The root's authority is kept as the token's public id ([`Root`]), never the
//! secret, and is checked again at every nested decision (a revoked root token stops its
//! chain). Every nested call's records carry the chain: its root, its parent and its depth.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use loong_ipc::{
    Budget, BudgetExceeded, DenialStage, ErrorDetail, ErrorKind, KernelCall, KernelCallError,
    KernelRequest, RemoteError,
};
use loong_profiles::pack::Capability;

use super::{denied, invoke, record, Actor, Chain, Principal};
use crate::{
    audit::Kind,
    authority::Bearer,
    config::KernelCallsConfig,
    request::RequestIo,
    workers::{KernelAnswer, KernelCalls},
    Kernel,
};

/// The capability a plugin's manifest declares to call tools through loongd.
pub const INVOKE_TOOL: &str = "invoke_tool";

/// The manifest capability a plugin must declare for its nested calls to have effect `cap`
/// through a built-in (`None`: no manifest capability grants it, so a plugin's nested call
/// never has it). Without this, a plugin declaring only `invoke_tool` would read, write,
/// fetch and run commands with all of its root's authority (the operator's whole pack).
pub(crate) fn manifest_capability(cap: Capability) -> Option<&'static str> {
    match cap {
        Capability::FsRead => Some("filesystem_read"),
        Capability::FsWrite => Some("filesystem_write"),
        // A browser reaches the network (through the broker) like a fetch does.
        Capability::NetEgress | Capability::BrowserControl => Some("network_egress"),
        _ => None,
    }
}

/// What every call of one chain shares: the root's authority and its budget.
#[derive(Debug)]
pub(crate) struct Root {
    started: Instant,
    /// Nested calls admitted so far.
    calls: AtomicU32,
    /// The root's token by its public id (`None`: the operator's pack).
    token: Option<String>,
    limits: KernelCallsConfig,
}

impl Root {
    /// The chain of a root call decided under `token` (its public id; `None`: the operator's
    /// pack).
    pub(crate) fn new(kernel: &Kernel, token: Option<String>) -> Arc<Root> {
        Arc::new(Root {
            started: Instant::now(),
            calls: AtomicU32::new(0),
            token,
            limits: kernel.config.kernel_calls.clone(),
        })
    }

    fn bearer(&self) -> Bearer<'_> {
        self.token.as_deref().map_or(Bearer::Operator, Bearer::Id)
    }

    /// Wall time the chain has left.
    fn left(&self) -> Duration {
        Duration::from_millis(self.limits.max_wall_ms).saturating_sub(self.started.elapsed())
    }
}

/// The kernel-call side of one call a worker runs: its chain, the plugin it runs and whether
/// that plugin may call tools.
pub(crate) struct Host<'a> {
    pub kernel: &'a Kernel,
    /// The root request's handle: a nested call that needs an approval tells the root's
    /// asker, and waits under the root request's deadline.
    pub io: Option<&'a RequestIo>,
    pub root: Arc<Root>,
    /// The chain of the call the worker serves.
    pub chain: Chain,
    /// The plugin the worker runs.
    pub plugin: String,
    /// Whether its manifest declares [`INVOKE_TOOL`].
    pub may_invoke: bool,
    /// The manifest capabilities its kernel calls may have effects under: those its own
    /// plugin and every plugin above it declare (`None`: no plugin is in the chain, as for a
    /// built-in an operator called). A nested call of a built-in whose effect needs one not
    /// among them is refused ([`manifest_capability`]).
    pub declared: Option<Arc<Vec<String>>>,
    /// Kernel calls started so far (each one's number in the chain).
    pub seq: AtomicU64,
}

fn over_budget(budget: Budget, limit: u64, message: String) -> RemoteError {
    RemoteError::new(ErrorKind::BudgetExceeded, message).with_detail(ErrorDetail::BudgetExceeded(
        BudgetExceeded { budget, limit },
    ))
}

impl KernelCalls for Host<'_> {
    fn max_in_flight(&self) -> usize {
        self.root.limits.max_in_flight as usize
    }

    fn start(&self, worker: u64, call: KernelCall) -> KernelAnswer<'_> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        Box::pin(self.run(worker, n, call))
    }
}

impl Host<'_> {
    /// The refusal of a nested call of a built-in with effect `cap` by a plugin whose
    /// manifest does not declare the capability it needs.
    fn undeclared(&self, cap: Capability, tool: &str) -> Option<RemoteError> {
        let declared = self.declared.as_deref()?;
        let reason = match manifest_capability(cap) {
            Some(need) if declared.iter().any(|c| c == need) => return None,
            Some(need) => format!(
                "plugin {} (or a plugin above it in the chain) does not declare the {need} capability in its manifest, which a nested call with {cap} needs",
                self.plugin
            ),
            None => format!(
                "plugin {}: a plugin's nested call never has {cap} (no manifest capability grants it)",
                self.plugin
            ),
        };
        Some(denied(DenialStage::PluginCapabilities, cap, tool, &reason))
    }

    async fn run(&self, worker: u64, n: u64, call: KernelCall) -> Result<Vec<u8>, RemoteError> {
        let mut chain = self.chain.child(n);
        chain.declared = self.declared.clone();
        chain.caller = Some(self.plugin.clone());
        let actor = Actor {
            who: Principal::Worker { worker },
            bearer: self.root.bearer(),
            chain,
            io: self.io,
        };
        let req = match call.request() {
            Ok(req) => req,
            Err(e) => {
                // Malformed or of a kind loongd does not serve: refused, and recorded.
                let kind = match e {
                    KernelCallError::Unsupported(_) => ErrorKind::NotFound,
                    _ => ErrorKind::BadRequest,
                };
                let e = RemoteError::new(kind, e.to_string());
                return Err(self.refuse(&actor, "", e).await);
            }
        };
        let t = match req {
            KernelRequest::InvokeTool(t) => t,
            KernelRequest::ShowText(t) => return self.show(&actor, t.text, &call).await,
            KernelRequest::ChatEvent(e) => {
                return self.chat_event(&actor, e.event_json, &call).await
            }
            // A service's kind from a tool call's worker: only a service's Serve call makes
            // one (crate::services), so this is a protocol violation, recorded.
            KernelRequest::Service(c) => {
                let why = format!(
                    "plugin {}: kernel call {} is a service's kind, made only by the service's own worker",
                    self.plugin, c.kind
                );
                let event = actor.event(
                    Kind::ProtocolViolation,
                    serde_json::json!({
                        "worker": worker, "plugin": self.plugin, "kernel_call": c.kind,
                        "violation": why, "retired": false,
                    }),
                );
                return match record(self.kernel, event).await {
                    Ok(()) => Err(RemoteError::new(ErrorKind::Denied, why)),
                    Err(failed) => Err(failed),
                };
            }
        };
        let effect = invoke::builtin_capability(self.kernel, &t.tool, &t.input);
        self.admit(&actor, &t.tool, &t.input, effect).await?;
        let left = self.root.left();
        let wait = left.min(Duration::from_millis(u64::from(call.deadline_ms)));
        let root = Some(self.root.clone());
        match tokio::time::timeout(
            wait,
            invoke::call_in(self.kernel, &actor, t.tool, t.input, root),
        )
        .await
        {
            Ok(answer) => answer.map(|out| out.output.into_bytes()),
            Err(_) if left <= wait => Err(over_budget(
                Budget::WallTimeMs,
                self.root.limits.max_wall_ms,
                format!(
                    "the root call {} spent its {} ms of wall time (kernel_calls.max_wall_ms)",
                    self.chain.root, self.root.limits.max_wall_ms
                ),
            )),
            Err(_) => Err(RemoteError::new(
                ErrorKind::DeadlineExceeded,
                format!(
                    "the kernel call did not finish within its {} ms",
                    wait.as_millis()
                ),
            )),
        }
    }

    /// The agent's text delta, relayed on the asking request's output stream (waiting for the
    /// client to read, within the call's deadline). Only the agent's own turn shows text: any
    /// other worker is refused, and recorded. Not an effect: nothing is decided or audited per
    /// delta (the whole answer is in the turn's memory and reply).
    async fn show(
        &self,
        actor: &Actor<'_>,
        text: String,
        call: &KernelCall,
    ) -> Result<Vec<u8>, RemoteError> {
        if self.plugin != loong_agent_wire::wire::AGENT_TOOL || self.chain.depth > 0 {
            let e = RemoteError::new(
                ErrorKind::BadRequest,
                format!(
                    "plugin {}: only the agent's turn shows text (kernel call show_text)",
                    self.plugin
                ),
            );
            return Err(self.refuse(actor, "", e).await);
        }
        let Some(io) = self.io else {
            return Ok(Vec::new());
        };
        let wait = self
            .root
            .left()
            .min(Duration::from_millis(u64::from(call.deadline_ms)));
        if let Some(chat) = &io.chat {
            // The gateway's chat turn: the text goes with the chat's other events, in order.
            let event = loong_agent_wire::chat::ChatEvent::TextDelta(text);
            return match tokio::time::timeout(wait, chat.send(event)).await {
                Ok(_) => Ok(Vec::new()),
                Err(_) => Err(RemoteError::new(
                    ErrorKind::DeadlineExceeded,
                    "the chat's caller did not read the answer's text in time",
                )),
            };
        }
        let chunk = loong_ipc::StreamChunk::Stdout(text.into_bytes());
        match tokio::time::timeout(wait, io.emit(chunk)).await {
            Ok(_) => Ok(Vec::new()),
            Err(_) => Err(RemoteError::new(
                ErrorKind::DeadlineExceeded,
                "the asker did not read the answer's text in time",
            )),
        }
    }

    /// A caller's tool call starting, or a piece of its arguments, in the gateway's chat turn
    /// (kernel call `chat_event`), passed on as it arrives. Only the agent's own turn, and
    /// only in a chat turn, sends one; anything else is refused and recorded. Only
    /// `ToolCallStart` and `ToolCallArgs` pass: loongd makes the turn's end itself, and
    /// checks each call against the caller's tools before the caller sees it
    /// (`control::chat_api`).
    async fn chat_event(
        &self,
        actor: &Actor<'_>,
        event_json: String,
        call: &KernelCall,
    ) -> Result<Vec<u8>, RemoteError> {
        use loong_agent_wire::chat::ChatEvent;
        let chat = self.io.and_then(|io| io.chat.as_ref());
        let refusal = if self.plugin != loong_agent_wire::wire::AGENT_TOOL || self.chain.depth > 0 {
            Some(format!(
                "plugin {}: only the agent's turn sends chat events (kernel call chat_event)",
                self.plugin
            ))
        } else if chat.is_none() {
            Some("kernel call chat_event: only a chat turn of the gateway takes chat events".into())
        } else {
            None
        };
        if let Some(why) = refusal {
            let e = RemoteError::new(ErrorKind::BadRequest, why);
            return Err(self.refuse(actor, "", e).await);
        }
        let event = match serde_json::from_str::<ChatEvent>(&event_json) {
            Ok(e @ (ChatEvent::ToolCallStart { .. } | ChatEvent::ToolCallArgs { .. })) => e,
            Ok(_) => {
                let e = RemoteError::new(
                    ErrorKind::BadRequest,
                    "kernel call chat_event: only a tool call's start and its arguments are sent this way",
                );
                return Err(self.refuse(actor, "", e).await);
            }
            Err(e) => {
                let e = RemoteError::new(
                    ErrorKind::BadRequest,
                    format!("kernel call chat_event: the event does not decode: {e}"),
                );
                return Err(self.refuse(actor, "", e).await);
            }
        };
        let Some(chat) = chat else {
            return Ok(Vec::new());
        };
        let wait = self
            .root
            .left()
            .min(Duration::from_millis(u64::from(call.deadline_ms)));
        match tokio::time::timeout(wait, chat.send(event)).await {
            Ok(_) => Ok(Vec::new()),
            Err(_) => Err(RemoteError::new(
                ErrorKind::DeadlineExceeded,
                "the chat's caller did not read the tool call in time",
            )),
        }
    }

    /// The chain's bounds and the calling plugin's declared capabilities, checked before
    /// anything is decided; a refusal is recorded (with the chain) and answered typed.
    async fn admit(
        &self,
        actor: &Actor<'_>,
        tool: &str,
        input: &str,
        effect: Option<Capability>,
    ) -> Result<(), RemoteError> {
        let limits = &self.root.limits;
        let refused = if actor.chain.depth > limits.max_depth {
            Some(over_budget(
                Budget::CallDepth,
                u64::from(limits.max_depth),
                format!(
                    "call {} of tool {tool} would be {} deep, past the limit of {} (kernel_calls.max_depth)",
                    actor.chain.call, actor.chain.depth, limits.max_depth
                ),
            ))
        } else if self.root.calls.fetch_add(1, Ordering::Relaxed) >= limits.max_calls {
            Some(over_budget(
                Budget::Calls,
                u64::from(limits.max_calls),
                format!(
                    "the root call {} made its {} nested calls (kernel_calls.max_calls)",
                    actor.chain.root, limits.max_calls
                ),
            ))
        } else if self.root.left().is_zero() {
            Some(over_budget(
                Budget::WallTimeMs,
                limits.max_wall_ms,
                format!(
                    "the root call {} spent its {} ms of wall time (kernel_calls.max_wall_ms)",
                    actor.chain.root, limits.max_wall_ms
                ),
            ))
        } else if !self.may_invoke {
            Some(denied(
                DenialStage::PluginCapabilities,
                Capability::ToolInvoke,
                tool,
                &format!(
                    "plugin {} does not declare the {INVOKE_TOOL} capability in its manifest",
                    self.plugin
                ),
            ))
        } else if let Err(e) = invoke::precheck(self.kernel, tool, input) {
            // What the call would fail on before its decision (no such tool, a bad input).
            Some(e)
        } else {
            effect.and_then(|cap| self.undeclared(cap, tool))
        };
        match refused {
            None => Ok(()),
            Some(e) => Err(self.refuse(actor, tool, e).await),
        }
    }

    /// Records the refusal `e` of a kernel call of `tool` before any decision (with the
    /// chain), so that every kernel call leaves a record; the refusal to answer with.
    async fn refuse(&self, actor: &Actor<'_>, tool: &str, e: RemoteError) -> RemoteError {
        let tool_invoke = Capability::ToolInvoke.as_str().to_string();
        let (stage, budget, capability) = match &e.detail {
            Some(ErrorDetail::BudgetExceeded(b)) => (None, Some(b.budget.name()), tool_invoke),
            Some(ErrorDetail::Denied(d)) => (Some(d.stage.name()), None, d.capability.clone()),
            _ => (None, None, tool_invoke),
        };
        let detail = serde_json::json!({
            "capability": capability, "target": tool,
            "token": self.root.token, "plugin": self.plugin, "allowed": false,
            "reason": e.message, "stage": stage, "budget": budget, "error": e.kind.to_string(),
        });
        match record(self.kernel, actor.event(Kind::PolicyDecision, detail)).await {
            Ok(()) => e,
            Err(failed) => failed,
        }
    }
}
