//! The gateway's chat turn (`/v1/chat/completions`, `/v1/messages`): one agent turn over the
//! caller's own history, with the caller's tools offered beside Loong's.
//!
//! ```text
//! chat_turn ─▶ tool.invoke:agent.turn decided under the bearer's token first (denied: the
//!              typed error, recorded, before anything of the configuration is told)
//!           ─▶ bounds, tool-name collisions (400)
//!           ─▶ agent.turn, a root call under the token; Loong's tools run inside as kernel
//!              calls in its chain
//!           ─▶ text deltas and the caller's tool calls' starts and argument pieces (kernel
//!              calls show_text and chat_event) passed on as they arrive
//!           ─▶ what the stream lacked of the caller's tool calls, checked against the
//!              turn's output, then Done with the usage
//! ```
//!
//! No session memory: the caller sends the whole history every time. A caller's tool named
//! like one of Loong's offered tools is refused (400 naming it) rather than shadowed, so the
//! model never sees two tools of one name and a caller cannot redirect a call meant for
//! Loong's tool to itself or the other way round.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, PoisonError,
    },
    time::Duration,
};

use loong_agent_wire::{
    chat::{ChatEvent, ChatRequest, ChatStop},
    config::SystemPrompt,
    types::{StopReason, ToolSpec},
    wire::{TurnInput, TurnOutput, AGENT_TOOL},
};
use loong_ipc::{message::control::MAX_INVOKE_INPUT_BYTES, BearerSecret, ErrorKind, RemoteError};
use loong_profiles::pack::Capability;
use tokio::sync::{mpsc, Semaphore};

use super::agent_api::{
    bad, configured_system_prompt, offered, test_probes, typed, wire_providers,
};
use crate::{
    audit::Kind,
    authority::Bearer,
    effects::{self, internal, Actor, Chain, Principal},
    request::{RequestIo, StopCell, WaitCell, OUTPUT_BUDGET_BYTES},
    Kernel,
};

/// The most bytes of a caller's tool call's arguments sent in one `ToolCallArgs` event.
pub(crate) const MAX_ARGS_DELTA_BYTES: usize = 16 << 10;
/// Events queued between the turn and the chat's caller before the turn waits.
const DELTA_QUEUE: usize = 64;

/// Numbers the chat turns of this loongd, for their correlation ids.
static CHATS: AtomicU64 = AtomicU64::new(1);

/// One chat turn under `bearer`: events go to `events` as they arrive and end with one
/// `Done`. A refusal before the turn (the decision first, then bounds, a collision) or a failed turn is
/// the `Err` (the gateway answers it in the caller's format); nothing is sent after it.
pub(crate) async fn chat_turn(
    kernel: &Kernel,
    // The gateway worker serving the request: the turn's actor in audit records (the
    // chain's correlation `gateway/chat-N` names the turn).
    worker: u64,
    bearer: &BearerSecret,
    req: ChatRequest,
    events: mpsc::Sender<ChatEvent>,
) -> Result<(), RemoteError> {
    // The request's handle: the turn's text deltas and the caller's tool calls (kernel
    // calls show_text and chat_event) arrive on its chat channel, in order.
    let n = CHATS.fetch_add(1, Ordering::Relaxed);
    let (chat, mut arriving) = mpsc::channel(DELTA_QUEUE);
    // The request's own output (an approval's note and typed id) has no reader in a chat:
    // it is read and dropped while the turn runs, so a note never holds the turn (an unread
    // queue would, from its second chunk on, forever).
    let (out, mut notes) = mpsc::channel(1);
    let io = RequestIo {
        id: n,
        conn: 0,
        out: out.into(),
        budget: Arc::new(Semaphore::new(OUTPUT_BUDGET_BYTES)),
        stop: StopCell::default(),
        waiting: WaitCell::default(),
        input: None,
        chat: Some(chat),
    };
    let actor = Actor {
        who: Principal::Worker { worker },
        bearer: Bearer::Secret(bearer.expose()),
        chain: Chain::root(format!("gateway/chat-{n}")),
        io: Some(&io),
    };
    // The decision comes first, so a caller without the grant learns nothing of loongd's
    // configuration (its providers, its secrets' names): it is made, recorded and answered
    // typed by the turn's own call, whose input it never reads.
    let may = kernel
        .authority
        .decide_as(actor.bearer, Capability::ToolInvoke, Some(AGENT_TOOL), None)
        .is_ok_and(|o| {
            matches!(
                o.decision,
                Ok(crate::authority::Decision::Allow
                    | crate::authority::Decision::NeedsApproval { .. })
            )
        });
    if !may {
        return match effects::invoke::agent_turn(kernel, &actor, "{}".into()).await {
            Err(e) => Err(e),
            Ok(_) => Err(internal(
                "the chat turn was allowed after its decision refused it",
            )),
        };
    }
    req.check_bounds().map_err(|e| bad(e.to_string()))?;
    let settings = &kernel.config.agent;
    let Some(agent) = settings.agent.as_ref() else {
        return Err(RemoteError::new(
            ErrorKind::NotFound,
            "no [agent] in loongd.toml: add a [providers.NAME] and [agent] provider = \"NAME\" (docs/agent.md), then restart loongd",
        ));
    };
    let tools = offered(kernel, Bearer::Secret(bearer.expose()));
    check_caller_tools(&tools, &req.caller_tools)?;
    let providers = wire_providers(settings, agent, req.max_tokens)?;
    let system = merged_system(&agent.system_prompt, req.system.as_deref())?;
    let input = TurnInput {
        providers,
        system,
        messages: req.history(),
        tools,
        max_steps: agent.max_steps,
        budget_ms: u64::try_from(agent.turn_budget.as_millis()).unwrap_or(u64::MAX),
        probes: test_probes(),
        caller_tools: req.caller_tools.clone(),
        max_offered_tools: agent.max_offered_tools,
        // No session memory: the caller sends the history, so there is nothing to fold.
        summary: None,
        fold: Vec::new(),
    };
    let input = serde_json::to_string(&input).map_err(internal)?;
    if input.len() > MAX_INVOKE_INPUT_BYTES {
        return Err(bad(format!(
            "the chat turn (history, system prompt and tools) is {} bytes, above the {MAX_INVOKE_INPUT_BYTES}-byte limit of a call's input; send a shorter history",
            input.len()
        )));
    }

    let mut relay = Relay::new(&req.caller_tools);
    let watch = events.clone();
    let mut caller = Caller::new(events, CALLER_READ_WAIT);
    let turn = effects::invoke::agent_turn(kernel, &actor, input);
    tokio::pin!(turn);
    let mut left = false;
    let result = loop {
        tokio::select! {
            r = &mut turn => break r,
            Some(e) = arriving.recv() => {
                if let Some(e) = relay.pass(e) {
                    caller.send(e).await;
                }
            }
            Some(_note) = notes.recv() => {}
            // Its caller went away (the stream was dropped: not polled for its idle time, or
            // its gateway ended): the turn runs on to its end (it holds its token's place),
            // but what it waits for an approver to decide is withdrawn, and what it asks
            // later is refused as it is noted (`RequestIo::wait_on`): none is approved on
            // behalf of a caller that left.
            () = watch.closed(), if !left => {
                left = true;
                let waited = io.waiting.lock().unwrap_or_else(PoisonError::into_inner).close();
                for id in waited {
                    if let Err(e) = effects::approval::withdraw(kernel, &id).await {
                        tracing::warn!(approval = %id, error = %e, "withdrawing an approval whose chat caller went away");
                    }
                }
            }
        }
    };
    while let Ok(e) = arriving.try_recv() {
        if let Some(e) = relay.pass(e) {
            caller.send(e).await;
        }
    }
    let out = result.map_err(typed)?;
    let output: TurnOutput = serde_json::from_str(&out.output).map_err(|e| {
        RemoteError::new(
            ErrorKind::WorkerFailed,
            format!("the agent worker's answer is not a turn: {e}"),
        )
    })?;
    let token = kernel
        .authority
        .tokens
        .id_of(bearer.expose())
        .map_err(internal)?;
    for call in output.tool_calls.iter().filter(|c| !c.offered) {
        let detail = serde_json::json!({
            "capability": Capability::ToolInvoke.as_str(), "target": call.name,
            "token": token, "plugin": AGENT_TOOL, "allowed": false, "stage": "not_offered",
            "reason": "the model called a tool that was not offered to it (the token cannot call it, or no such tool); it was not run",
        });
        effects::record(kernel, actor.event(Kind::PolicyDecision, detail)).await?;
    }
    for f in &output.failovers {
        let detail = serde_json::json!({ "from": f.from, "to": f.to, "reason": f.reason });
        effects::record(kernel, actor.event(Kind::ProviderFailover, detail)).await?;
    }
    for event in relay.closing(&output)? {
        if !caller.send(event).await {
            break;
        }
    }
    Ok(())
}

/// How long the turn waits for its caller to take one event (the gateway polls every few
/// seconds while its client listens): past it the caller is taken as gone, and the turn
/// goes on to its end without waiting on it again.
const CALLER_READ_WAIT: Duration = Duration::from_secs(120);

/// The chat's caller as the turn sends to it: each send waits at most `wait`, and once one
/// did not go (the stream was dropped, or not read in time) none waits again.
#[derive(Debug)]
struct Caller {
    events: mpsc::Sender<ChatEvent>,
    wait: Duration,
    gone: bool,
}

impl Caller {
    fn new(events: mpsc::Sender<ChatEvent>, wait: Duration) -> Self {
        Self {
            events,
            wait,
            gone: false,
        }
    }

    /// Sends `event`; whether it went.
    async fn send(&mut self, event: ChatEvent) -> bool {
        if self.gone {
            return false;
        }
        let went = matches!(
            tokio::time::timeout(self.wait, self.events.send(event)).await,
            Ok(Ok(()))
        );
        self.gone = !went;
        went
    }
}

/// The names the agent worker offers of its own beside the token's tools (`tool_search`,
/// `loong_agent::search::TOOL_SEARCH`): a caller's tool may not take one.
const RESERVED_TOOL_NAMES: &[&str] = &["tool_search"];
/// The longest tool name either provider family accepts (`loong_agent::names`).
const MAX_WIRE_NAME_BYTES: usize = 64;

/// The name `name` is told apart by: the wire name the agent worker maps it to
/// (`loong_agent::names`: characters outside `[A-Za-z0-9_-]` become `_`, cut to 64 bytes),
/// folded to lower case. Two tools with one key could be confused by the model or the
/// mapping (`shell.exec`, `shell_exec`, `Shell.Exec`, `shell\u{2024}exec`, `PLUGIN/TOOL` and
/// `PLUGIN_TOOL`), so a caller's tool may not share one with Loong's or another caller's.
fn name_key(name: &str) -> String {
    let mut key: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    key.truncate(MAX_WIRE_NAME_BYTES);
    key
}

/// Refuses a caller's tool whose name is, under any spelling ([`name_key`]), that of one of
/// Loong's offered tools (as the agent names it, or as the gateway's `/mcp` does,
/// [`loong_ipc::mcp_names::escape`]: a client that passes on the tools it listed there as
/// its own names them so), of the agent's own (`tool_search`), or of another of the caller's.
fn check_caller_tools(loong: &[ToolSpec], caller: &[ToolSpec]) -> Result<(), RemoteError> {
    let taken: std::collections::HashSet<String> = loong
        .iter()
        .flat_map(|l| {
            [
                name_key(&l.name),
                name_key(&loong_ipc::mcp_names::escape(&l.name)),
            ]
        })
        .chain(RESERVED_TOOL_NAMES.iter().map(|r| name_key(r)))
        .collect();
    for (i, t) in caller.iter().enumerate() {
        let key = name_key(&t.name);
        if taken.contains(&key) {
            return Err(bad(format!(
                "tools: the caller's tool {:?} has the name of a Loong tool this token may call (or one spelled alike); rename it",
                t.name
            )));
        }
        if caller[..i].iter().any(|c| name_key(&c.name) == key) {
            return Err(bad(format!(
                "tools: two of the caller's tools are named {:?} (or alike); give each a distinct name",
                t.name
            )));
        }
    }
    Ok(())
}

/// Loong's `[agent]` system prompt first, then the caller's (the operator's stays in force).
fn merged_system(
    configured: &SystemPrompt,
    caller: Option<&str>,
) -> Result<Option<String>, RemoteError> {
    let own = configured_system_prompt(configured)?;
    Ok(match (own, caller) {
        (Some(own), Some(caller)) => Some(format!("{own}\n\n{caller}")),
        (own, caller) => own.or(caller.map(str::to_owned)),
    })
}

/// The most caller tool calls whose start the turn may pass on as it streams.
const MAX_RELAYED_CALLS: usize = 64;
/// The most bytes of arguments the turn may pass on as it streams, over all its calls (what
/// loongd keeps to check them at the end); past it a call's pieces wait for the end.
const MAX_RELAYED_BYTES: usize = 4 << 20;

/// One caller tool call passed on while the turn streamed.
#[derive(Debug)]
struct Relayed {
    /// The worker's index of the call (the provider's, within one answer).
    from: u32,
    id: String,
    /// The arguments passed on so far.
    sent: String,
    /// Whether its pieces still pass on (not once a piece was held back: what was sent
    /// stays the start of the arguments).
    open: bool,
}

/// What of the turn has reached the caller: the text as it arrives; a tool call's start and
/// argument pieces as they arrive, but only for the caller's own tools (the arguments of a
/// call of Loong's tools never reach the caller); and at the end whatever the streamed
/// pieces lacked, checked against the turn's output, which is authoritative.
#[derive(Debug)]
struct Relay {
    caller: Vec<String>,
    calls: Vec<Relayed>,
    /// The bytes of arguments passed on so far, over all calls.
    bytes: usize,
}

impl Relay {
    fn new(caller_tools: &[ToolSpec]) -> Self {
        Self {
            caller: caller_tools.iter().map(|t| t.name.clone()).collect(),
            calls: Vec::new(),
            bytes: 0,
        }
    }

    /// The event to pass on for `event` from the turn, if any, numbered for the caller.
    fn pass(&mut self, event: ChatEvent) -> Option<ChatEvent> {
        match event {
            ChatEvent::TextDelta(t) => (!t.is_empty()).then_some(ChatEvent::TextDelta(t)),
            ChatEvent::ToolCallStart { index, id, name } => {
                let known = self.calls.iter().any(|c| c.from == index || c.id == id);
                if known || !self.caller.contains(&name) || self.calls.len() >= MAX_RELAYED_CALLS {
                    return None;
                }
                let ours = u32::try_from(self.calls.len()).ok()?;
                self.calls.push(Relayed {
                    from: index,
                    id: id.clone(),
                    sent: String::new(),
                    open: true,
                });
                Some(ChatEvent::ToolCallStart {
                    index: ours,
                    id,
                    name,
                })
            }
            ChatEvent::ToolCallArgs { index, delta } => {
                let (ours, call) = (0u32..)
                    .zip(&mut self.calls)
                    .find(|(_, c)| c.from == index)?;
                if delta.is_empty() || !call.open {
                    return None;
                }
                if self.bytes.saturating_add(delta.len()) > MAX_RELAYED_BYTES {
                    call.open = false;
                    return None;
                }
                self.bytes += delta.len();
                call.sent.push_str(&delta);
                Some(ChatEvent::ToolCallArgs { index: ours, delta })
            }
            ChatEvent::Done { .. } | ChatEvent::Failed { .. } => None,
        }
    }

    /// The events that close the turn: for each of the caller's tool calls in `output`, what
    /// the caller has not had of it (its start, the rest of its arguments in pieces of at
    /// most [`MAX_ARGS_DELTA_BYTES`], never an empty one), then `Done`. A streamed call the
    /// output does not have, or whose arguments it does not continue, fails the turn.
    fn closing(&mut self, output: &TurnOutput) -> Result<Vec<ChatEvent>, RemoteError> {
        let mut events = Vec::new();
        for call in &output.caller_calls {
            let at = self.calls.iter().position(|c| c.id == call.id);
            let (index, sent) = match at {
                Some(i) => (i, self.calls[i].sent.clone()),
                None => {
                    let i = self.calls.len();
                    self.calls.push(Relayed {
                        from: u32::MAX,
                        id: call.id.clone(),
                        sent: String::new(),
                        open: false,
                    });
                    (i, String::new())
                }
            };
            let index = u32::try_from(index).map_err(internal)?;
            let Some(rest) = call.arguments_json.strip_prefix(sent.as_str()) else {
                return Err(RemoteError::new(
                    ErrorKind::WorkerFailed,
                    format!(
                        "the agent's tool call {} ended with arguments other than those it streamed",
                        call.id
                    ),
                ));
            };
            if at.is_none() {
                events.push(ChatEvent::ToolCallStart {
                    index,
                    id: call.id.clone(),
                    name: call.name.clone(),
                });
            }
            events.extend(pieces(index, rest));
        }
        if let Some(stray) = self
            .calls
            .iter()
            .find(|c| !output.caller_calls.iter().any(|o| o.id == c.id))
        {
            return Err(RemoteError::new(
                ErrorKind::WorkerFailed,
                format!(
                    "the agent streamed tool call {} but its turn did not end with it",
                    stray.id
                ),
            ));
        }
        let stop = match output.stop.as_str() {
            "caller_tools" => ChatStop::ToolUse,
            "answered" if output.stop_reason == Some(StopReason::MaxTokens) => ChatStop::MaxTokens,
            "answered" => ChatStop::EndTurn,
            _ => ChatStop::StepLimit,
        };
        events.push(ChatEvent::Done {
            stop,
            usage: output.usage,
        });
        Ok(events)
    }
}

/// `arguments` as `ToolCallArgs` pieces of call `index`, cut on characters.
fn pieces(index: u32, arguments: &str) -> Vec<ChatEvent> {
    let mut events = Vec::new();
    let mut rest = arguments;
    while !rest.is_empty() {
        let mut end = rest.len().min(MAX_ARGS_DELTA_BYTES);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        events.push(ChatEvent::ToolCallArgs {
            index,
            delta: rest[..end].to_string(),
        });
        rest = &rest[end..];
    }
    events
}

#[cfg(test)]
mod tests {
    use loong_agent_wire::types::{ToolCall, Usage};

    use super::*;

    fn tool(name: &str) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: String::new(),
            parameters: serde_json::json!({"type": "object"}),
        }
    }

    #[test]
    fn a_caller_tool_named_like_a_loong_tool_or_twice_is_refused_naming_it() {
        let loong = [tool("echo"), tool("file.read")];
        let e = check_caller_tools(&loong, &[tool("get_weather"), tool("echo")])
            .expect_err("a collision");
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("\"echo\""), "{}", e.message);
        let e = check_caller_tools(&loong, &[tool("a"), tool("a")]).expect_err("a duplicate");
        assert!(e.message.contains("\"a\""), "{}", e.message);
        assert!(check_caller_tools(&loong, &[tool("get_weather"), tool("a")]).is_ok());
    }

    /// A caller's tool spelled like one of Loong's (case, punctuation, a look-alike
    /// character, `PLUGIN/TOOL` as `PLUGIN_TOOL` or as `/mcp` lists it, `PLUGIN--TOOL`), or
    /// like the agent's own `tool_search`,
    /// would share its wire name with it and be refused too, as would two such of the caller's.
    #[test]
    fn a_caller_tool_spelled_like_a_loong_tool_is_refused() {
        let loong = [
            tool("shell.exec"),
            tool("files/read_text_file"),
            tool("web.fetch"),
        ];
        for spelled in [
            "shell_exec",
            "Shell.Exec",
            "SHELL_EXEC",
            "shell\u{2024}exec",
            "files_read_text_file",
            "Files/Read_Text_File",
            "web fetch",
            "tool_search",
            "Tool.Search",
            "web__fetch",
            "files--read_text_file",
            "FILES--READ_TEXT_FILE",
        ] {
            let e = check_caller_tools(&loong, &[tool(spelled)])
                .expect_err(&format!("{spelled:?} is refused"));
            assert_eq!(e.kind, ErrorKind::BadRequest);
        }
        let e = check_caller_tools(&loong, &[tool("get.weather"), tool("GET_WEATHER")])
            .expect_err("two alike");
        assert!(e.message.contains("GET_WEATHER"), "{}", e.message);
        // Positive control: distinct names pass, `-` stays apart from `_`.
        assert!(check_caller_tools(&loong, &[tool("shell-exec"), tool("get_weather")]).is_ok());
    }

    fn output(stop: &str, reason: Option<StopReason>, calls: Vec<ToolCall>) -> TurnOutput {
        TurnOutput {
            answer: String::new(),
            stop: stop.into(),
            steps: 1,
            usage: Usage {
                input_tokens: 3,
                output_tokens: 4,
            },
            providers: Vec::new(),
            tool_calls: Vec::new(),
            failovers: Vec::new(),
            added: Vec::new(),
            caller_calls: calls,
            stop_reason: reason,
            summary: None,
        }
    }

    #[test]
    fn caller_calls_close_the_turn_as_starts_and_argument_pieces_then_done() {
        let long = format!("{{\"x\":\"{}é\"}}", "a".repeat(MAX_ARGS_DELTA_BYTES));
        let calls = vec![
            ToolCall {
                id: "c1".into(),
                name: "f".into(),
                arguments_json: long.clone(),
            },
            ToolCall {
                id: "c2".into(),
                name: "g".into(),
                arguments_json: String::new(),
            },
        ];
        let mut relay = Relay::new(&[tool("f"), tool("g")]);
        let events = relay
            .closing(&output("caller_tools", None, calls))
            .expect("closed");
        let mut joined = String::new();
        for e in &events {
            if let ChatEvent::ToolCallArgs { index: 0, delta } = e {
                assert!(!delta.is_empty() && delta.len() <= MAX_ARGS_DELTA_BYTES);
                joined.push_str(delta);
            }
            if let ChatEvent::ToolCallArgs { index: 1, .. } = e {
                panic!("no empty piece for empty arguments");
            }
        }
        assert_eq!(joined, long);
        assert_eq!(
            events[0],
            ChatEvent::ToolCallStart {
                index: 0,
                id: "c1".into(),
                name: "f".into()
            }
        );
        assert!(events.contains(&ChatEvent::ToolCallStart {
            index: 1,
            id: "c2".into(),
            name: "g".into()
        }));
        assert!(matches!(
            events.last(),
            Some(ChatEvent::Done {
                stop: ChatStop::ToolUse,
                ..
            })
        ));
        let stop = |o: &TurnOutput| match Relay::new(&[]).closing(o).expect("closed").pop() {
            Some(ChatEvent::Done { stop, .. }) => stop,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            stop(&output("answered", Some(StopReason::EndTurn), vec![])),
            ChatStop::EndTurn
        );
        assert_eq!(
            stop(&output("answered", Some(StopReason::MaxTokens), vec![])),
            ChatStop::MaxTokens
        );
        assert_eq!(
            stop(&output("max_steps", None, vec![])),
            ChatStop::StepLimit
        );
        assert_eq!(stop(&output("budget", None, vec![])), ChatStop::StepLimit);
    }

    /// Streamed pieces of a caller's call pass on as they arrive, renumbered for the caller;
    /// a call of Loong's tool never reaches the caller; the end sends only what the stream
    /// lacked, and arguments the output does not continue fail the turn.
    #[test]
    fn a_callers_call_streams_as_it_arrives_and_loongs_own_never_reaches_the_caller() {
        let mut relay = Relay::new(&[tool("get_weather")]);
        let start = |index: u32, id: &str, name: &str| ChatEvent::ToolCallStart {
            index,
            id: id.into(),
            name: name.into(),
        };
        let args = |index: u32, delta: &str| ChatEvent::ToolCallArgs {
            index,
            delta: delta.into(),
        };
        // Loong's own tool (provider index 0): nothing of it passes.
        assert_eq!(relay.pass(start(0, "call_l", "shell.exec")), None);
        assert_eq!(relay.pass(args(0, "{\"command\":\"id\"}")), None);
        // The caller's (provider index 1) passes as index 0.
        assert_eq!(
            relay.pass(start(1, "call_w", "get_weather")),
            Some(start(0, "call_w", "get_weather"))
        );
        assert_eq!(relay.pass(args(1, "")), None, "no empty piece");
        assert_eq!(relay.pass(args(1, "{\"ci")), Some(args(0, "{\"ci")));
        assert_eq!(relay.pass(start(1, "call_w", "get_weather")), None, "once");
        // Past the bound on what is kept, a call's pieces wait for the end.
        let mut held = Relay::new(&[tool("get_weather")]);
        held.pass(start(0, "c", "get_weather"));
        let big = "x".repeat(MAX_RELAYED_BYTES);
        assert!(held.pass(args(0, &big)).is_some());
        assert_eq!(held.pass(args(0, "y")), None);
        assert_eq!(held.pass(args(0, "")), None);
        assert_eq!(held.bytes, MAX_RELAYED_BYTES);
        assert_eq!(
            relay.pass(ChatEvent::TextDelta("hi".into())),
            Some(ChatEvent::TextDelta("hi".into()))
        );
        let call = |args: &str| ToolCall {
            id: "call_w".into(),
            name: "get_weather".into(),
            arguments_json: args.into(),
        };
        let events = relay
            .closing(&output("caller_tools", None, vec![call("{\"city\":1}")]))
            .expect("closed");
        assert_eq!(events[0], args(0, "ty\":1}"), "only the rest");
        assert_eq!(events.len(), 2);
        let e = relay
            .closing(&output("caller_tools", None, vec![call("{\"x\":1}")]))
            .expect_err("arguments other than streamed");
        assert_eq!(e.kind, ErrorKind::WorkerFailed);
        let e = relay
            .closing(&output("answered", Some(StopReason::EndTurn), vec![]))
            .expect_err("a streamed call the turn did not end with");
        assert!(e.message.contains("call_w"), "{}", e.message);
    }

    /// A caller that does not read holds the turn at most one wait, then never again (the
    /// turn goes on to its end); one that reads gets each event.
    #[tokio::test]
    async fn a_caller_that_stops_reading_holds_the_turn_once_at_most() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut caller = Caller::new(tx, Duration::from_millis(50));
        assert!(caller.send(ChatEvent::TextDelta("a".into())).await);
        assert_eq!(rx.recv().await, Some(ChatEvent::TextDelta("a".into())));
        assert!(
            caller.send(ChatEvent::TextDelta("b".into())).await,
            "queued"
        );
        let started = std::time::Instant::now();
        assert!(
            !caller.send(ChatEvent::TextDelta("c".into())).await,
            "not read"
        );
        for _ in 0..100 {
            assert!(!caller.send(ChatEvent::TextDelta("d".into())).await);
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "one wait, not one per event: {:?}",
            started.elapsed()
        );
        drop(rx);
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        assert!(
            !Caller::new(tx, Duration::from_secs(600))
                .send(ChatEvent::TextDelta("e".into()))
                .await,
            "a dropped stream fails at once"
        );
    }

    #[test]
    fn the_operators_system_prompt_stays_before_the_callers() {
        let own = SystemPrompt::Text("loong rules".into());
        assert_eq!(
            merged_system(&own, Some("be brief")).expect("merged"),
            Some("loong rules\n\nbe brief".into())
        );
        assert_eq!(
            merged_system(&SystemPrompt::None, Some("be brief")).expect("merged"),
            Some("be brief".into())
        );
        assert_eq!(
            merged_system(&own, None).expect("merged"),
            Some("loong rules".into())
        );
    }
}
