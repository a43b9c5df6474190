//! The gateway's chat turn (`/v1/chat/completions`, `/v1/messages`): one agent turn over the
//! caller's own history, with the caller's tools offered beside Loong's.
//!
//! ```text
//! chat_turn ─▶ bounds, tool-name collisions (400)
//!           ─▶ agent.turn, a root call under the bearer's token (decided like `ask`: denied
//!              is the typed error); Loong's tools run inside as kernel calls in its chain
//!           ─▶ text deltas (kernel call show_text) as ChatEvent::TextDelta while it runs
//!           ─▶ the caller's tool calls as ToolCallStart + ToolCallArgs, then Done
//! ```
//!
//! No session memory: the caller sends the whole history every time. A caller's tool named
//! like one of Loong's offered tools is refused (400 naming it) rather than shadowed, so the
//! model never sees two tools of one name and a caller cannot redirect a call meant for
//! Loong's tool to itself or the other way round.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use loong_agent_wire::{
    chat::{ChatEvent, ChatRequest, ChatStop},
    config::SystemPrompt,
    limits::{MAX_SYSTEM_PROMPT_BYTES, MAX_TOKENS_LIMIT},
    types::{StopReason, ToolCall, ToolSpec},
    wire::{TurnInput, TurnOutput, WireProvider, AGENT_TOOL},
};
use loong_ipc::{
    message::control::MAX_INVOKE_INPUT_BYTES, BearerSecret, ErrorKind, RemoteError, Reply,
    StreamChunk,
};
use loong_profiles::pack::Capability;
use tokio::sync::{mpsc, Semaphore};

use super::agent_api::{bad, offered, provider_key, test_probes, typed};
use crate::{
    audit::Kind,
    authority::Bearer,
    effects::{self, internal, Actor, Chain, Principal},
    request::{RequestIo, StopCell, WaitCell, OUTPUT_BUDGET_BYTES},
    Kernel,
};

/// How audit records name the gateway's chat turns' actor (the gateway worker's own
/// number is the supervisor's; the chain's correlation `gateway/chat-N` names the turn).
const GATEWAY_ACTOR: u64 = 0;
/// The most bytes of a caller's tool call's arguments sent in one `ToolCallArgs` event.
pub(crate) const MAX_ARGS_DELTA_BYTES: usize = 16 << 10;
/// Text deltas queued between the turn and the chat's events before the turn waits.
const DELTA_QUEUE: usize = 64;

/// Numbers the chat turns of this loongd, for their correlation ids.
static CHATS: AtomicU64 = AtomicU64::new(1);

/// One chat turn under `bearer`: events go to `events` as they arrive and end with one
/// `Done`. A refusal before the turn (bounds, a collision, the decision) or a failed turn is
/// the `Err` (the gateway answers it in the caller's format); nothing is sent after it.
#[allow(dead_code)] // called by services::gateway once the gateway's routes are mounted
pub(crate) async fn chat_turn(
    kernel: &Kernel,
    bearer: &BearerSecret,
    req: ChatRequest,
    events: mpsc::Sender<ChatEvent>,
) -> Result<(), RemoteError> {
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
    let mut providers = Vec::new();
    for name in std::iter::once(&agent.provider).chain(agent.fallback.as_ref()) {
        let Some(config) = settings.providers.get(name) else {
            return Err(internal(format!(
                "[agent] names provider {name}, which is not configured"
            )));
        };
        let key = match config.api_key {
            Some(_) => Some(provider_key(name, config)?),
            None => None,
        };
        let mut provider = WireProvider::new(name, config, key);
        if let Some(asked) = req.max_tokens {
            let most = config.max_tokens.unwrap_or(MAX_TOKENS_LIMIT);
            provider.max_tokens = Some(asked.clamp(1, most));
        }
        providers.push(provider);
    }
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
    };
    let input = serde_json::to_string(&input).map_err(internal)?;
    if input.len() > MAX_INVOKE_INPUT_BYTES {
        return Err(bad(format!(
            "the chat turn (history, system prompt and tools) is {} bytes, above the {MAX_INVOKE_INPUT_BYTES}-byte limit of a call's input; send a shorter history",
            input.len()
        )));
    }

    // The turn's text deltas (kernel call show_text) arrive on this request handle's output.
    let n = CHATS.fetch_add(1, Ordering::Relaxed);
    let (out, mut deltas) = mpsc::channel(DELTA_QUEUE);
    let (_input_tx, input_rx) = mpsc::channel(1);
    let io = RequestIo {
        id: n,
        conn: 0,
        out,
        budget: Arc::new(Semaphore::new(OUTPUT_BUDGET_BYTES)),
        stop: StopCell::default(),
        waiting: WaitCell::default(),
        input: input_rx,
    };
    let actor = Actor {
        who: Principal::Worker {
            worker: GATEWAY_ACTOR,
        },
        bearer: Bearer::Secret(bearer.expose()),
        chain: Chain::root(format!("gateway/chat-{n}")),
        io: Some(&io),
    };
    let turn = effects::invoke::agent_turn(kernel, &actor, input);
    tokio::pin!(turn);
    let result = loop {
        tokio::select! {
            r = &mut turn => break r,
            Some(o) = deltas.recv() => forward(&events, o.reply).await,
        }
    };
    while let Ok(o) = deltas.try_recv() {
        forward(&events, o.reply).await;
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
    for event in closing_events(&output) {
        if events.send(event).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// A text delta from the turn, as a chat event (a closed receiver only loses the stream).
async fn forward(events: &mpsc::Sender<ChatEvent>, reply: Reply<loong_ipc::ControlResponse>) {
    if let Reply::Stream {
        chunk: StreamChunk::Stdout(bytes),
        ..
    } = reply
    {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if !text.is_empty() {
            let _ = events.send(ChatEvent::TextDelta(text)).await;
        }
    }
}

/// Refuses a caller's tool that has the name of one of Loong's offered tools, or of
/// another of the caller's.
fn check_caller_tools(loong: &[ToolSpec], caller: &[ToolSpec]) -> Result<(), RemoteError> {
    for (i, t) in caller.iter().enumerate() {
        if loong.iter().any(|l| l.name == t.name) {
            return Err(bad(format!(
                "tools: the caller's tool {:?} has the name of a Loong tool this token may call; rename it",
                t.name
            )));
        }
        if caller[..i].iter().any(|c| c.name == t.name) {
            return Err(bad(format!(
                "tools: two of the caller's tools are named {:?}; give each a distinct name",
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
    let own = match configured {
        SystemPrompt::None => None,
        SystemPrompt::Text(t) => Some(t.clone()),
        SystemPrompt::File(path) => {
            match crate::home::read_bounded(path, MAX_SYSTEM_PROMPT_BYTES as u64) {
                Ok(crate::home::Bounded::Read(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
                Ok(crate::home::Bounded::TooLarge(len)) => {
                    return Err(bad(format!(
                    "[agent] system_prompt_file {} is {len} bytes, above {MAX_SYSTEM_PROMPT_BYTES}",
                    path.display()
                )))
                }
                Err(e) => {
                    return Err(bad(format!(
                        "[agent] system_prompt_file {}: {e}",
                        path.display()
                    )))
                }
            }
        }
    };
    Ok(match (own, caller) {
        (Some(own), Some(caller)) => Some(format!("{own}\n\n{caller}")),
        (own, caller) => own.or(caller.map(str::to_owned)),
    })
}

/// The events that close a turn: each caller tool call's start and its arguments (in pieces
/// of at most [`MAX_ARGS_DELTA_BYTES`], never an empty one), then `Done`.
fn closing_events(output: &TurnOutput) -> Vec<ChatEvent> {
    let mut events = Vec::new();
    for (index, call) in (0u32..).zip(&output.caller_calls) {
        events.extend(call_events(index, call));
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
    events
}

fn call_events(index: u32, call: &ToolCall) -> Vec<ChatEvent> {
    let mut events = vec![ChatEvent::ToolCallStart {
        index,
        id: call.id.clone(),
        name: call.name.clone(),
    }];
    let mut rest = call.arguments_json.as_str();
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
    use loong_agent_wire::types::Usage;

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
        let events = closing_events(&output("caller_tools", None, calls));
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
        let stop = |o: &TurnOutput| match closing_events(o).pop() {
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
