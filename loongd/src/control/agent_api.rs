//! The agent on the control socket: `loongctl ask` (one turn in the agent worker) and
//! `loongctl memory list|show|clear`.
//!
//! ```text
//! ask ─▶ memory.read on the session (decided, audited) ─▶ the session's window
//!     ─▶ the tools the token may call (runtime-visible: no other is offered)
//!     ─▶ agent.turn, a root call under the token: its worker streams from the provider and
//!        each tool call the model makes is a kernel call decided under the same token
//!     ─▶ provider.failover records ─▶ memory.write on the session ─▶ the answer
//! ```

use loong_agent_wire::{
    config::{AgentConfig, ProviderConfig, SecretRef, Settings, SystemPrompt},
    limits::{MAX_SUMMARY_BYTES, MAX_SYSTEM_PROMPT_BYTES, MAX_TOKENS_LIMIT},
    types::{Message, ToolSpec},
    wire::{TurnFailure, TurnInput, TurnOutput, WireProvider, AGENT_TOOL},
};
use loong_ipc::{
    message::control::{MAX_ASK_PROMPT_BYTES, MAX_INVOKE_INPUT_BYTES, MAX_SESSION_ID_BYTES},
    AskRequest, AskResult, AskToolCall, BearerSecret, ControlResponse, ErrorDetail, ErrorKind,
    MemoryMessage, MemorySession, Page, RemoteError,
};
use loong_profiles::pack::Capability;
use tokio::net::unix::UCred;

use crate::{
    audit::Kind,
    authority::{
        memory::{Kept, Recall},
        Bearer,
    },
    effects::{self, internal, Actor, Effect},
    request::RequestIo,
    secrets::Lookup,
    workers::{builtins, plugins::State},
    Kernel,
};

pub(super) fn bad(m: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::BadRequest, m)
}

/// A session id: 1 to [`MAX_SESSION_ID_BYTES`] letters, digits, `_`, `-` or `.`.
fn check_session(session: &str) -> Result<(), RemoteError> {
    let ok = !session.is_empty()
        && session.len() <= MAX_SESSION_ID_BYTES
        && session
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "session {session:?}: give 1 to {MAX_SESSION_ID_BYTES} letters, digits, _, - or ."
        )))
    }
}

/// The API key a provider's `api_key` reference names, from loongd's secret store, and only
/// when the secret is bound to the provider's own host (as a connector's header secret is:
/// `loongctl secrets set NAME --host HOST`).
pub(super) fn provider_key(name: &str, config: &ProviderConfig) -> Result<String, RemoteError> {
    let secret = config
        .api_key
        .as_ref()
        .map(SecretRef::name)
        .unwrap_or_default();
    let endpoint = loong_profiles::plugin::parse_endpoint(&config.base_url)
        .map_err(|e| bad(format!("[providers.{name}] base_url: {e}")))?;
    let (host, port, tls) = (endpoint.host.as_str(), endpoint.port, endpoint.https);
    let lookup =
        crate::secrets::store().map_or(Lookup::Missing, |s| s.get(secret, host, port, tls));
    let allow = if tls {
        host.to_string()
    } else {
        format!(
            "{}{}",
            crate::secrets::PLAIN,
            crate::secrets::authority(host, port)
        )
    };
    match lookup {
        Lookup::Value(v) => Ok(v),
        Lookup::NotFor(hosts) => Err(bad(format!(
            "[providers.{name}] api_key: the secret {secret:?} may be sent only to {}, not to {host}; set it again with `loongctl secrets set {secret} --host {allow}`",
            if hosts.is_empty() { "no host".to_string() } else { hosts.join(", ") }
        ))),
        Lookup::Missing => Err(bad(format!(
            "[providers.{name}] api_key: the secret {secret:?} is not set: store it with `loongctl secrets set {secret} --host {allow}`"
        ))),
    }
}

/// Test builds only: the environment variable (on loongd) whose lines are confinement probes
/// the agent worker runs from inside its sandbox in place of the turn, answering with what
/// each got (`open:PATH`, `connect:ADDR`, `get:HOST:PORT`, `tunnel:HOST:PORT`; tests/all/agent.rs). A release
/// build of loongd never reads it, so production turns never carry probes.
#[cfg_attr(not(debug_assertions), allow(dead_code))]
pub const PROBES_ENV: &str = "LOONG_TEST_AGENT_PROBES";

#[cfg(debug_assertions)]
pub(super) fn test_probes() -> Vec<String> {
    std::env::var(PROBES_ENV)
        .map(|v| v.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

#[cfg(not(debug_assertions))]
pub(super) fn test_probes() -> Vec<String> {
    Vec::new()
}

/// Decides `cap` on the session `session` for `actor` (recorded); denied is an error.
async fn decide_memory(
    kernel: &Kernel,
    actor: &Actor<'_>,
    cap: Capability,
    session: &str,
) -> Result<(), RemoteError> {
    let target = format!("session:{session}");
    let effect = Effect {
        cap,
        target: &target,
        command: None,
        call: None,
        run: None,
    };
    effects::authorize(kernel, actor, &effect).await.map(|_| ())
}

/// Decides `cap` on the session `session` for `actor` as [`decide_memory`] does, but an
/// allowed decision's record is only queued: its commit (returned) overlaps what follows
/// and is awaited before anyone is answered. For reading the session, which has no effect
/// outside loongd: the turn's own records, queued after it, are committed with it or after
/// it, and the turn waits for those before its worker's answer is used.
async fn decide_memory_queued(
    kernel: &Kernel,
    actor: &Actor<'_>,
    cap: Capability,
    session: &str,
) -> Result<Option<crate::audit::Commit>, RemoteError> {
    let target = format!("session:{session}");
    let effect = Effect {
        cap,
        target: &target,
        command: None,
        call: None,
        run: None,
    };
    let decided = effects::authorize_unrecorded(kernel, actor, &effect).await?;
    match decided.record {
        Some(event) => Ok(Some(kernel.audit.queue(event).await.map_err(internal)?)),
        None => Ok(None),
    }
}

/// The tools `bearer` may call, as the model is offered them: a plugin's tool when
/// `tool.invoke` on its name is allowed (or needs an approval), a built-in when the bearer
/// holds its effect's capability at all (each call is still decided on its target). The
/// agent's own turn is never offered.
pub(super) fn offered(kernel: &Kernel, bearer: Bearer<'_>) -> Vec<ToolSpec> {
    let mut tools = Vec::new();
    for p in kernel.plugins_snapshot().values() {
        if p.id == AGENT_TOOL || !matches!(p.state, State::Ready { .. }) {
            continue;
        }
        let builtin = p.bridge_kind == builtins::BUILTIN;
        for name in p.tool_names() {
            let cap = match (builtin, name.as_str()) {
                (true, "file.read") => Some(Capability::FsRead),
                (true, "file.write" | "file.edit") => Some(Capability::FsWrite),
                (true, "shell.exec") => Some(Capability::ProcessExec),
                (true, "web.fetch") => Some(Capability::NetEgress),
                (true, t) if crate::workers::browser::is_browser_tool(t) => {
                    Some(Capability::BrowserControl)
                }
                _ => None,
            };
            let may = match cap {
                Some(cap) => kernel.authority.holds_some(bearer, cap),
                None => kernel
                    .authority
                    .decide_as(bearer, Capability::ToolInvoke, Some(&name), None)
                    .is_ok_and(|o| {
                        matches!(
                            o.decision,
                            Ok(crate::authority::Decision::Allow
                                | crate::authority::Decision::NeedsApproval { .. })
                        )
                    }),
            };
            if !may {
                continue;
            }
            let example = p
                .catalog
                .input_examples
                .first()
                .cloned()
                .unwrap_or_default();
            let summary = p.tool_description(&name);
            let description = if example.is_empty() {
                summary.to_string()
            } else {
                format!("{summary} (input example: {example})")
            };
            tools.push(ToolSpec {
                parameters: p.input_schema(&name),
                name,
                description,
            });
        }
    }
    tools
}

/// Refuses a turn whose new rolling summary is above [`MAX_SUMMARY_BYTES`]: the agent
/// worker cuts the model's summary to it, so a longer one is a worker that broke its
/// contract, and keeping it would grow the session's row in state.db and every later
/// turn's input past their bounds.
fn checked_summary(output: &TurnOutput) -> Result<(), RemoteError> {
    match &output.summary {
        Some(s) if s.len() > MAX_SUMMARY_BYTES => Err(RemoteError::new(
            ErrorKind::WorkerFailed,
            format!(
                "the agent worker's summary is {} bytes, above the {MAX_SUMMARY_BYTES}-byte bound; it was not kept",
                s.len()
            ),
        )),
        _ => Ok(()),
    }
}

/// The `[providers.NAME]` of `agent`'s provider and its fallback, each with its key from the
/// secret store; `max_tokens`, when a caller asked for it, clamped to each provider's own.
pub(super) fn wire_providers(
    settings: &Settings,
    agent: &AgentConfig,
    max_tokens: Option<u32>,
) -> Result<Vec<WireProvider>, RemoteError> {
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
        if let Some(asked) = max_tokens {
            let most = config.max_tokens.unwrap_or(MAX_TOKENS_LIMIT);
            provider.max_tokens = Some(asked.clamp(1, most));
        }
        providers.push(provider);
    }
    Ok(providers)
}

/// `[agent] system_prompt` (or the file `system_prompt_file` names, read bounded).
pub(super) fn configured_system_prompt(
    configured: &SystemPrompt,
) -> Result<Option<String>, RemoteError> {
    Ok(match configured {
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
    })
}

/// The messages of kept rows; a row this loongd cannot read is skipped, never sent half.
fn parsed(rows: &[Kept]) -> Vec<Message> {
    rows.iter()
        .filter_map(|k| serde_json::from_str::<Message>(&k.json).ok())
        .collect()
}

fn role(m: &Message) -> &'static str {
    match m {
        Message::User { .. } => "user",
        Message::Assistant { .. } => "assistant",
        Message::ToolResult { .. } => "tool_result",
    }
}

/// The refusal of a turn when no agent is configured.
fn no_agent() -> RemoteError {
    RemoteError::new(
        ErrorKind::NotFound,
        "no [agent] in loongd.toml: add a [providers.NAME] and [agent] provider = \"NAME\" (docs/agent.md), then restart loongd",
    )
}

/// `loongctl ask`.
pub(crate) async fn ask(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    req: AskRequest,
) -> Result<ControlResponse, RemoteError> {
    if kernel.config.agent.agent.is_none() {
        return Err(no_agent());
    }
    if req.prompt.len() > MAX_ASK_PROMPT_BYTES {
        return Err(bad(format!(
            "the prompt is {} bytes, above the {MAX_ASK_PROMPT_BYTES}-byte limit",
            req.prompt.len()
        )));
    }
    if let Some(s) = &req.session {
        check_session(s)?;
    }
    let actor = Actor::operator(cred.uid(), req.token.as_ref().map(BearerSecret::expose), io);
    let token = match &req.token {
        Some(secret) => kernel
            .authority
            .tokens
            .id_of(secret.expose())
            .map_err(internal)?,
        None => None,
    };
    turn(
        kernel,
        &actor,
        token,
        req.session,
        req.prompt,
        SessionCommit::Synced,
    )
    .await
    .map(ControlResponse::Asked)
}

/// How a turn's session rows are committed to state.db.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionCommit {
    /// With an fsync of their own (`loongctl ask`: the answer is the reply on the socket).
    Synced,
    /// Without one: the caller's next state.db commit is synchronous and comes before anyone
    /// is answered (a channel's answer goes to its outbox so), and carries them to disk.
    CarriedByAnswer,
}

/// One agent turn for `actor` (whose token, by public id, is `token`): the session's window,
/// the turn in the agent worker, the trail's records of it, and what it added kept in the
/// session. `loongctl ask` and a chat channel's message both come here.
pub(crate) async fn turn(
    kernel: &Kernel,
    actor: &Actor<'_>,
    token: Option<String>,
    session: Option<String>,
    prompt: String,
    commit: SessionCommit,
) -> Result<AskResult, RemoteError> {
    if kernel.config.agent.agent.is_none() {
        return Err(no_agent());
    }
    let actor = actor.clone();
    let req = AskRequest {
        prompt,
        session,
        token: None,
    };
    let mut recall = Recall::default();
    let mut read = None;
    if let Some(session) = &req.session {
        read = decide_memory_queued(kernel, &actor, Capability::MemoryRead, session).await?;
        recall = kernel.authority.memory.recall(session).map_err(internal)?;
    }
    let turned = turn_with(kernel, &actor, token, req, recall, commit).await;
    // The session's read is on disk before the turn is answered, whatever it answers.
    if let Some(read) = read {
        read.committed().await.map_err(internal)?;
    }
    turned
}

/// [`turn`] once the session was read (`recall`).
async fn turn_with(
    kernel: &Kernel,
    actor: &Actor<'_>,
    token: Option<String>,
    req: AskRequest,
    recall: Recall,
    commit: SessionCommit,
) -> Result<AskResult, RemoteError> {
    let settings = &kernel.config.agent;
    let Some(agent) = settings.agent.as_ref() else {
        return Err(no_agent());
    };
    let actor = actor.clone();
    let mut messages = parsed(&recall.window);
    let user = Message::User {
        text: req.prompt.clone(),
    };
    messages.push(user.clone());
    let providers = wire_providers(settings, agent, None)?;
    let system = configured_system_prompt(&agent.system_prompt)?;
    let mut input = TurnInput {
        providers,
        system,
        messages,
        tools: offered(kernel, actor.bearer),
        max_steps: agent.max_steps,
        budget_ms: u64::try_from(agent.turn_budget.as_millis()).unwrap_or(u64::MAX),
        max_offered_tools: agent.max_offered_tools,
        summary: recall.summary.clone(),
        fold: parsed(&recall.fold),
        probes: test_probes(),
        caller_tools: Vec::new(),
    };
    let input = fitted(&mut input)?;
    let out = match effects::invoke::agent_turn(kernel, &actor, input).await {
        Ok(out) => out,
        Err(e) => return Err(typed(e)),
    };
    let output: TurnOutput = serde_json::from_str(&out.output).map_err(|e| {
        RemoteError::new(
            ErrorKind::WorkerFailed,
            format!("the agent worker's answer is not a turn: {e}"),
        )
    })?;
    // A call of a tool that was not offered never reached the kernel: it is recorded here,
    // a denial in the turn's chain, so that every tool call the model made is in the trail.
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
    if let Some(session) = &req.session {
        checked_summary(&output)?;
        decide_memory(kernel, &actor, Capability::MemoryWrite, session).await?;
        let mut rows = Vec::new();
        for m in std::iter::once(&user).chain(&output.added) {
            rows.push((
                role(m).to_string(),
                serde_json::to_string(m).map_err(internal)?,
            ));
        }
        // A new summary covers the folded turns; without one (the model made none) the next
        // turn folds them again. A fold left empty by its bound moves on with the old summary.
        let summary = match (recall.fold_through, recall.fold.is_empty(), &output.summary) {
            (Some(through), false, Some(new)) => Some((new.as_str(), through)),
            (Some(through), true, _) => Some((recall.summary.as_deref().unwrap_or(""), through)),
            _ => None,
        };
        let memory = &kernel.authority.memory;
        match commit {
            SessionCommit::Synced => memory.append_folded(session, &rows, summary),
            SessionCommit::CarriedByAnswer => {
                memory.append_folded_unsynced(session, &rows, summary)
            }
        }
        .map_err(internal)?;
    }
    Ok(AskResult {
        answer: output.answer,
        session: req.session,
        correlation: actor.correlation().to_string(),
        tool_calls: output
            .tool_calls
            .into_iter()
            .map(|c| AskToolCall {
                name: c.name,
                arguments: c.arguments,
                result: c.result,
                is_error: c.is_error,
            })
            .collect(),
        input_tokens: output.usage.input_tokens,
        output_tokens: output.usage.output_tokens,
        steps: output.steps,
        stop: output.stop,
        providers: output.providers,
    })
}

/// The turn's input as JSON within a call's input bound ([`MAX_INVOKE_INPUT_BYTES`]): the
/// oldest remembered turns are left out, a whole turn at a time, until it fits (the new
/// message is always sent; a prompt that cannot fit alone is refused).
fn fitted(input: &mut TurnInput) -> Result<String, RemoteError> {
    loop {
        let text = serde_json::to_string(&*input).map_err(internal)?;
        if text.len() <= MAX_INVOKE_INPUT_BYTES {
            return Ok(text);
        }
        // The next turn's start after the first message; the last message is the new one.
        let next = input
            .messages
            .iter()
            .skip(1)
            .position(|m| matches!(m, Message::User { .. }))
            .map(|i| i + 1);
        match next {
            Some(n) if n < input.messages.len() => {
                input.messages.drain(..n);
            }
            _ => {
                return Err(bad(format!(
                    "the turn (prompt, system prompt and offered tools) is {} bytes, above the {MAX_INVOKE_INPUT_BYTES}-byte limit of a call's input; shorten the prompt",
                    text.len()
                )))
            }
        }
    }
}

/// A failed turn's error: a provider's failure as its class and message (the worker sends
/// it as JSON), anything else (a denial, the worker killed) as loongd answered it.
pub(super) fn typed(mut e: RemoteError) -> RemoteError {
    if matches!(e.detail, Some(ErrorDetail::WorkerFailed(_))) {
        // The worker's failure is its class's name, then the JSON.
        let failure = e
            .message
            .find('{')
            .and_then(|at| serde_json::from_str::<TurnFailure>(&e.message[at..]).ok());
        if let Some(f) = failure {
            e.message = format!("the agent's provider failed ({}): {}", f.class, f.message);
        }
    }
    e
}

/// `loongctl memory list`.
pub(crate) async fn list(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    page: Page,
) -> Result<ControlResponse, RemoteError> {
    let actor = Actor::operator(cred.uid(), None, io);
    decide_memory(kernel, &actor, Capability::MemoryRead, "*").await?;
    let most = loong_ipc::message::control::MAX_PAGE_ITEMS;
    let limit = if page.limit == 0 {
        most
    } else {
        page.limit.min(most)
    };
    let sessions = kernel
        .authority
        .memory
        .sessions(page.after.as_deref(), limit)
        .map_err(internal)?;
    Ok(ControlResponse::MemorySessions(
        sessions
            .into_iter()
            .map(|(session, messages, updated_unix)| MemorySession {
                session,
                messages,
                updated_unix,
            })
            .collect(),
    ))
}

/// `loongctl memory show SESSION`.
pub(crate) async fn show(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    session: String,
) -> Result<ControlResponse, RemoteError> {
    check_session(&session)?;
    let actor = Actor::operator(cred.uid(), None, io);
    decide_memory(kernel, &actor, Capability::MemoryRead, &session).await?;
    let kept = kernel.authority.memory.show(&session).map_err(internal)?;
    Ok(ControlResponse::MemoryMessages(
        kept.into_iter()
            .map(|k| MemoryMessage {
                seq: k.seq,
                role: k.role,
                json: k.json,
            })
            .collect(),
    ))
}

/// `loongctl memory clear SESSION`.
pub(crate) async fn clear(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    session: String,
) -> Result<ControlResponse, RemoteError> {
    check_session(&session)?;
    let actor = Actor::operator(cred.uid(), None, io);
    decide_memory(kernel, &actor, Capability::MemoryWrite, &session).await?;
    let removed = kernel.authority.memory.clear(&session).map_err(internal)?;
    Ok(ControlResponse::MemoryCleared { session, removed })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A summary past its bound from the worker is refused, not kept; one at it is kept.
    #[test]
    fn a_summary_above_its_bound_from_the_worker_is_refused() {
        let output = |summary: Option<String>| TurnOutput {
            answer: String::new(),
            stop: "answered".into(),
            steps: 1,
            usage: Default::default(),
            providers: Vec::new(),
            tool_calls: Vec::new(),
            failovers: Vec::new(),
            added: Vec::new(),
            caller_calls: Vec::new(),
            stop_reason: None,
            summary,
        };
        let e = checked_summary(&output(Some("s".repeat(MAX_SUMMARY_BYTES + 1))))
            .expect_err("too long");
        assert_eq!(e.kind, ErrorKind::WorkerFailed);
        assert!(checked_summary(&output(Some("s".repeat(MAX_SUMMARY_BYTES)))).is_ok());
        assert!(checked_summary(&output(None)).is_ok());
    }

    /// A window too large for one call loses its oldest turns, whole, and keeps the new
    /// message; a prompt too large alone is refused.
    #[test]
    fn a_window_over_the_input_bound_loses_its_oldest_turns_whole() {
        let big = "x".repeat(MAX_INVOKE_INPUT_BYTES / 3);
        let mut messages = Vec::new();
        for n in 0..4 {
            messages.push(Message::User {
                text: format!("q{n}"),
            });
            messages.push(Message::Assistant {
                text: big.clone(),
                tool_calls: Vec::new(),
            });
        }
        messages.push(Message::User { text: "now".into() });
        let mut input = TurnInput {
            providers: Vec::new(),
            system: None,
            messages,
            tools: Vec::new(),
            max_steps: 1,
            budget_ms: 1,
            max_offered_tools: 1,
            summary: None,
            fold: Vec::new(),
            probes: Vec::new(),
            caller_tools: Vec::new(),
        };
        let text = fitted(&mut input).expect("fits");
        assert!(text.len() <= MAX_INVOKE_INPUT_BYTES);
        assert_eq!(
            input.messages.len(),
            5,
            "two whole turns and the new message"
        );
        assert_eq!(input.messages[0], Message::User { text: "q2".into() });
        assert_eq!(input.messages[4], Message::User { text: "now".into() });
        input.messages = vec![Message::User {
            text: "y".repeat(MAX_INVOKE_INPUT_BYTES),
        }];
        assert!(fitted(&mut input).is_err());
    }
}
