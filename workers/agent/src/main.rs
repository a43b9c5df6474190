//! `loong-worker-agent`: the balanced-tier worker that runs one conversation turn per call.
//!
//! loongd starts it with no file-system grant and a network grant only to its providers'
//! `HOST:PORT` (through the egress broker's proxy where there is one). A call's input is a
//! [`TurnInput`]: the providers with their keys, the system prompt, the session's recent
//! messages and the tools the session's token may call. The turn runs here, never in
//! loongd; each tool call the model asks for is one kernel call (`InvokeTool`) on the
//! worker's socket, which loongd decides under the session's token and audits with the
//! chain. The worker holds no authority of its own: a denial is the model's tool error.
//!
//! It does not take the final self-confinement step (that forbids sockets, and the worker
//! must reach its provider): the tier's sandbox and the net grant are the boundary.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use loong_ipc::{
    message::kernel::{MAX_CHAT_EVENT_BYTES, MAX_SHOW_TEXT_BYTES},
    ChatEventCall, FailureKind, InvokeTool, KernelRequest, PluginFailure, RemoteError, ShowText,
    WorkerRequest, WorkerResponse,
};
use loong_worker_agent::{
    chat::ChatEvent,
    client::BoxFuture,
    run_chat_turn,
    search::{SearchRunner, SearchableTools},
    summary::{summarize, with_summary},
    types::{Message, Usage},
    wire::{ToolCallRecord, TurnFailure, TurnInput, TurnOutput, AGENT_TOOL},
    ClientOptions, Failover, HttpProvider, Provider, ProviderError, ToolCall, ToolRunner,
    TurnEvent, TurnLimits, TurnStop,
};
use loong_worker_runtime::{internal, refused, Final, Handler, KernelLink, KernelLinkError};

#[cfg(debug_assertions)]
mod probe;

/// The shortest time a tool call is given, even when the turn's budget is nearly spent
/// (loongd bounds the chain's wall time itself).
const MIN_TOOL_CALL_TIMEOUT: Duration = Duration::from_millis(10);
/// The longest the worker waits for loongd to pass one text delta on to the asker (who may
/// be slow to read); past it the delta is dropped from the stream (the answer keeps it).
const SHOW_TEXT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most providers one turn names: the provider and its fallback.
const MAX_PROVIDERS: usize = 2;

#[derive(Debug, Default)]
struct Worker {
    configured: bool,
    calls: u64,
}

/// [`ToolRunner`] over the worker's link: one kernel call per tool call.
struct Kernel {
    link: Mutex<KernelLink>,
    until: Instant,
}

impl ToolRunner for Kernel {
    fn run<'a>(
        &'a self,
        call: &'a ToolCall,
        arguments: serde_json::Value,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let req = KernelRequest::InvokeTool(InvokeTool {
                tool: call.name.clone(),
                input: arguments.to_string(),
            });
            let timeout = self
                .until
                .saturating_duration_since(Instant::now())
                .max(MIN_TOOL_CALL_TIMEOUT);
            let mut link = self
                .link
                .lock()
                .map_err(|_| "error: the kernel link is unusable".to_string())?;
            match link.call(&req, timeout) {
                Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
                Err(e) => Err(tool_error(&e)),
            }
        })
    }
}

impl Kernel {
    /// Shows a text delta to the asker, as it arrives (kernel call `show_text`). A failure
    /// only loses the delta from the stream: the answer carries the whole text.
    fn show(&self, text: String) {
        let timeout = self
            .until
            .saturating_duration_since(Instant::now())
            .clamp(MIN_TOOL_CALL_TIMEOUT, SHOW_TEXT_TIMEOUT);
        if let Ok(mut link) = self.link.lock() {
            let _ = link.call(&KernelRequest::ShowText(ShowText { text }), timeout);
        }
    }

    /// Passes one chat event (a caller's tool call starting, a piece of its arguments) on
    /// to the chat's caller as it arrives (kernel call `chat_event`); `false` when it did
    /// not go (loongd then sends, at the turn's end, what the caller lacks).
    fn chat_event(&self, event: &ChatEvent) -> bool {
        let Ok(event_json) = serde_json::to_string(event) else {
            return false;
        };
        let timeout = self
            .until
            .saturating_duration_since(Instant::now())
            .clamp(MIN_TOOL_CALL_TIMEOUT, SHOW_TEXT_TIMEOUT);
        let req = KernelRequest::ChatEvent(ChatEventCall { event_json });
        match self.link.lock() {
            Ok(mut link) => link.call(&req, timeout).is_ok(),
            Err(_) => false,
        }
    }
}

/// The most bytes of a tool call's arguments in one `chat_event` (its JSON stays within
/// [`MAX_CHAT_EVENT_BYTES`] even when every byte is escaped as `\u00XX`).
const CHAT_ARGS_PIECE_BYTES: usize = MAX_CHAT_EVENT_BYTES / 8;

/// The caller's tool calls passed on as they stream: a call's start once, then its pieces
/// in order; after a piece that did not go, none of that call's (so what went is always the
/// start of its arguments, and loongd sends the rest at the end).
#[derive(Default)]
struct Streamed {
    calls: Vec<(String, bool)>,
}

impl Streamed {
    fn piece(&mut self, kernel: &Kernel, index: u32, id: String, name: String, delta: &str) {
        let at = match self.calls.iter().position(|c| c.0 == id) {
            Some(at) => at,
            None => {
                let ok = kernel.chat_event(&ChatEvent::ToolCallStart {
                    index,
                    id: id.clone(),
                    name,
                });
                self.calls.push((id, ok));
                self.calls.len() - 1
            }
        };
        let mut rest = delta;
        while self.calls[at].1 && !rest.is_empty() {
            let mut end = rest.len().min(CHAT_ARGS_PIECE_BYTES);
            while !rest.is_char_boundary(end) {
                end -= 1;
            }
            self.calls[at].1 = kernel.chat_event(&ChatEvent::ToolCallArgs {
                index,
                delta: rest[..end].to_string(),
            });
            rest = &rest[end..];
        }
    }
}

/// What the model is told when the kernel did not run its call: the class and loongd's
/// reason (a denial names the stage and the missing grant).
fn tool_error(e: &KernelLinkError) -> String {
    match e {
        KernelLinkError::Remote(r) => format!("error: {}: {}", r.kind, r.message),
        KernelLinkError::Timeout(d) => {
            format!(
                "error: the tool call did not finish within {} ms",
                d.as_millis()
            )
        }
        other => format!("error: the tool call could not be made: {other}"),
    }
}

impl Handler for Worker {
    fn handle_with(
        &mut self,
        req: WorkerRequest,
        link: KernelLink,
    ) -> Result<WorkerResponse, RemoteError> {
        self.serve(req, Some(link))
    }

    fn handle(&mut self, req: WorkerRequest) -> Result<WorkerResponse, RemoteError> {
        self.serve(req, None)
    }
}

impl Worker {
    fn serve(
        &mut self,
        req: WorkerRequest,
        link: Option<KernelLink>,
    ) -> Result<WorkerResponse, RemoteError> {
        Ok(match req {
            WorkerRequest::Builtin(spec) => {
                if let Err(e) = spec.check_bounds() {
                    return Ok(refused(e.to_string()));
                }
                if spec.tool != AGENT_TOOL {
                    return Ok(refused(format!(
                        "loong-worker-agent serves only {AGENT_TOOL}, not {:?}",
                        spec.tool
                    )));
                }
                self.configured = true;
                loong_worker_runtime::one_tool(AGENT_TOOL)
            }
            WorkerRequest::Invoke {
                plugin_id, input, ..
            } => {
                self.calls += 1;
                if !self.configured || plugin_id != AGENT_TOOL {
                    return Ok(loong_worker_runtime::not_configured(&plugin_id));
                }
                let Some(link) = link else {
                    return Err(internal("a turn came without a kernel link"));
                };
                turn(&input, link)?
            }
            other @ (WorkerRequest::Load(_)
            | WorkerRequest::Start(_)
            | WorkerRequest::Connector(_)
            | WorkerRequest::Serve(_)) => {
                loong_worker_runtime::wrong_worker(&other, "loong-worker-agent")
            }
            WorkerRequest::Unload { .. } => {
                self.configured = false;
                WorkerResponse::Unloaded
            }
            WorkerRequest::Stats => loong_worker_runtime::stats(
                if self.configured {
                    vec![AGENT_TOOL.to_string()]
                } else {
                    Vec::new()
                },
                self.calls,
            ),
        })
    }
}

fn failed(class: &str, provider: &str, message: String) -> Result<WorkerResponse, RemoteError> {
    let failure = TurnFailure {
        class: class.to_string(),
        provider: provider.to_string(),
        message,
    };
    let text = serde_json::to_string(&failure)
        .map_err(|e| internal(format!("encoding the turn's failure: {e}")))?;
    Ok(WorkerResponse::Failed(PluginFailure::new(
        FailureKind::ToolError,
        text,
    )))
}

fn provider(
    p: &loong_worker_agent::wire::WireProvider,
) -> Result<Box<dyn Provider>, ProviderError> {
    let provider = HttpProvider::new(
        &p.name,
        &p.config(),
        p.api_key.as_deref(),
        &ClientOptions::default(),
    )?;
    Ok(Box::new(provider))
}

fn turn(input: &[u8], link: KernelLink) -> Result<WorkerResponse, RemoteError> {
    let started = Instant::now();
    let cpu_before = loong_worker_runtime::thread_cpu_us();
    let input: TurnInput = match serde_json::from_slice(input) {
        Ok(i) => i,
        Err(e) => return failed("input", "", format!("the turn's input is not a turn: {e}")),
    };
    if !input.probes.is_empty() {
        return probed(&input.probes, started, cpu_before);
    }
    if input.providers.is_empty() || input.providers.len() > MAX_PROVIDERS {
        return failed(
            "input",
            "",
            format!(
                "a turn names 1 to {MAX_PROVIDERS} providers, not {}",
                input.providers.len()
            ),
        );
    }
    let mut chosen = Vec::new();
    for p in &input.providers {
        match provider(p) {
            Ok(c) => chosen.push(c),
            Err(e) => return failed(e.class(), e.provider(), e.to_string()),
        }
    }
    let mut chosen = chosen.into_iter();
    let (Some(primary), fallback) = (chosen.next(), chosen.next()) else {
        return Err(internal("no provider after the check"));
    };
    let failover = Failover::new(primary, fallback);
    let limits = TurnLimits {
        max_steps: input.max_steps,
        budget: Duration::from_millis(input.budget_ms),
    };
    let kernel = Kernel {
        link: Mutex::new(link),
        until: started + limits.budget,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| internal(format!("starting the turn's runtime: {e}")))?;
    // Older turns to fold first: one request, within the turn's budget. A failed fold does
    // not fail the turn: the old summary is sent, and the next turn folds again.
    let mut folded = None;
    let mut fold_usage = Usage::default();
    let fold_started = Instant::now();
    if !input.fold.is_empty() {
        let fold = summarize(&failover, input.summary.as_deref(), &input.fold);
        if let Ok(Ok((text, usage))) =
            runtime.block_on(async { tokio::time::timeout(limits.budget, fold).await })
        {
            fold_usage = usage;
            folded = Some(text).filter(|t| !t.is_empty());
        }
    }
    let limits = TurnLimits {
        budget: limits.budget.saturating_sub(fold_started.elapsed()),
        ..limits
    };
    let system = with_summary(
        input.system.as_deref(),
        folded.as_deref().or(input.summary.as_deref()),
    );
    let mut history = input.messages.clone();
    let given = history.len();
    // Past `max_offered_tools`, the model gets tool_search and the tools it finds.
    let prompt = match history.last() {
        Some(Message::User { text }) => text.as_str(),
        _ => "",
    };
    let searchable = SearchableTools::new(&input.tools, input.max_offered_tools, prompt);
    let is_offered = |name: &str| match &searchable {
        Some(s) => s.is_offered(name),
        None => input.tools.iter().any(|t| t.name == name),
    };
    let mut calls: Vec<ToolCallRecord> = Vec::new();
    let mut failovers = Vec::new();
    let mut streamed = Streamed::default();
    let mut on_event = |event: TurnEvent| match event {
        TurnEvent::ToolCallDelta {
            index,
            id,
            name,
            delta,
        } => {
            // Only a caller's tool's arguments go to the caller; Loong's stay here.
            if input.caller_tools.iter().any(|t| t.name == name) {
                streamed.piece(&kernel, index, id, name, &delta);
            }
        }
        // A call of the caller's tool is returned to the caller (`caller_calls`), not run.
        TurnEvent::ToolCall(call) if input.caller_tools.iter().any(|t| t.name == call.name) => {}
        TurnEvent::ToolCall(call) => calls.push(ToolCallRecord {
            offered: is_offered(&call.name),
            name: call.name,
            arguments: call.arguments_json,
            result: String::new(),
            is_error: false,
        }),
        TurnEvent::ToolResult {
            content, is_error, ..
        } => {
            if let Some(last) = calls.iter_mut().rev().find(|c| c.result.is_empty()) {
                last.result = content;
                last.is_error = is_error;
            }
        }
        TurnEvent::Failover(f) => failovers.push(f),
        TurnEvent::Text(t) => {
            // A delta past the bound of one kernel call is shown in pieces, cut on characters.
            let mut rest = t.as_str();
            while !rest.is_empty() {
                let mut end = rest.len().min(MAX_SHOW_TEXT_BYTES);
                while !rest.is_char_boundary(end) {
                    end -= 1;
                }
                kernel.show(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
        TurnEvent::Step { .. } => {}
    };
    let outcome = runtime.block_on(async {
        match &searchable {
            Some(tools) => {
                let runner = SearchRunner {
                    tools,
                    inner: &kernel,
                };
                run_chat_turn(
                    &failover,
                    system.as_deref(),
                    &mut history,
                    tools,
                    &input.caller_tools,
                    &runner,
                    limits,
                    &mut on_event,
                )
                .await
            }
            None => {
                run_chat_turn(
                    &failover,
                    system.as_deref(),
                    &mut history,
                    &input.tools,
                    &input.caller_tools,
                    &kernel,
                    limits,
                    &mut on_event,
                )
                .await
            }
        }
    });
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return failed(e.class(), e.provider(), e.to_string()),
    };
    let (stop, stop_reason, caller_calls) = match outcome.stop {
        TurnStop::Answered(reason) => ("answered", Some(reason), Vec::new()),
        TurnStop::MaxSteps => ("max_steps", None, Vec::new()),
        TurnStop::Budget => ("budget", None, Vec::new()),
        TurnStop::CallerTools(calls) => ("caller_tools", None, calls),
    };
    let output = TurnOutput {
        answer: outcome.text,
        stop: stop.to_string(),
        steps: outcome.steps,
        usage: {
            let mut u = outcome.usage;
            u.add(fold_usage);
            u
        },
        providers: outcome.providers,
        tool_calls: calls,
        failovers,
        added: history.split_off(given.min(history.len())),
        caller_calls,
        stop_reason,
        summary: folded,
    };
    let bytes = serde_json::to_vec(&output)
        .map_err(|e| internal(format!("encoding the turn's answer: {e}")))?;
    Ok(loong_worker_runtime::plain_output(
        bytes, started, cpu_before,
    ))
}

/// Test builds: the probes' report as the turn's answer (no provider is asked).
#[cfg(debug_assertions)]
fn probed(
    probes: &[String],
    started: Instant,
    cpu_before: u64,
) -> Result<WorkerResponse, RemoteError> {
    let report: Vec<String> = probes.iter().map(|p| probe::run(p)).collect();
    let output = TurnOutput {
        answer: report.join("\n"),
        stop: "probed".to_string(),
        steps: 0,
        usage: Default::default(),
        providers: Vec::new(),
        tool_calls: Vec::new(),
        failovers: Vec::new(),
        added: Vec::new(),
        caller_calls: Vec::new(),
        stop_reason: None,
        summary: None,
    };
    let bytes = serde_json::to_vec(&output)
        .map_err(|e| internal(format!("encoding the probes' report: {e}")))?;
    Ok(loong_worker_runtime::plain_output(
        bytes, started, cpu_before,
    ))
}

/// A release worker runs no probes.
#[cfg(not(debug_assertions))]
fn probed(_: &[String], _: Instant, _: u64) -> Result<WorkerResponse, RemoteError> {
    failed(
        "input",
        "",
        "a turn with probes: probes run only in test builds".to_string(),
    )
}

fn main() {
    let code = loong_worker_runtime::main_with(
        concat!("loong-worker-agent ", env!("CARGO_PKG_VERSION")),
        Final::TierOnly,
        || Ok(Worker::default()),
    );
    std::process::exit(code);
}
