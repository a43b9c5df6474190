//! The loop core: one conversation turn.
//!
//! A turn sends the conversation and the offered tools, streams the answer, and when the
//! model asks for tools, runs each through the [`ToolRunner`] (which becomes the kernel call
//! `InvokeTool`, decided under the session's token), appends the results and asks again,
//! until the model answers without tool calls. It stops at `max_steps` model round trips and
//! at its wall-clock budget. A call to a tool that was not offered, or with arguments that
//! are not valid JSON, is never run: the model is told, as a tool error, and the loop goes on.
//! The history it leaves is always one the provider accepts: every tool call has a result.

use std::time::Duration;

use tokio::time::Instant;

use crate::client::{BoxFuture, Provider};
use crate::error::ProviderError;
use crate::limits::{DEFAULT_MAX_STEPS, DEFAULT_TURN_BUDGET, MAX_TOOL_RESULT_BYTES};
use crate::types::{Event, FailoverEvent, Message, Request, StopReason, ToolCall, ToolSpec, Usage};

/// Runs the tools the model calls.
pub trait ToolRunner: Send + Sync {
    /// Runs `call` (its name was offered and its arguments are valid JSON) and returns the
    /// result the model sees, or an error it sees as a tool error.
    fn run<'a>(
        &'a self,
        call: &'a ToolCall,
        arguments: serde_json::Value,
    ) -> BoxFuture<'a, Result<String, String>>;
}

/// The tools offered to the model, read at the start of each round trip: a fixed list, or
/// one that grows as the model finds tools (`crate::search`).
pub trait ToolSet: Send + Sync {
    /// The tools offered for the next round trip.
    fn offered(&self) -> Vec<ToolSpec>;
}

impl ToolSet for [ToolSpec] {
    fn offered(&self) -> Vec<ToolSpec> {
        self.to_vec()
    }
}

impl ToolSet for Vec<ToolSpec> {
    fn offered(&self) -> Vec<ToolSpec> {
        self.clone()
    }
}

/// The bounds of one turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnLimits {
    /// Model round trips.
    pub max_steps: u32,
    /// Wall-clock time.
    pub budget: Duration,
}

impl Default for TurnLimits {
    fn default() -> Self {
        Self {
            max_steps: DEFAULT_MAX_STEPS,
            budget: DEFAULT_TURN_BUDGET,
        }
    }
}

/// What a turn shows as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnEvent {
    /// A new round trip to `provider` began streaming.
    Step { step: u32, provider: String },
    /// The provider failed before answering and the fallback was asked.
    Failover(FailoverEvent),
    /// A piece of the answer's text.
    Text(String),
    /// A piece of a tool call's arguments, as it arrives (the whole call follows).
    ToolCallDelta {
        index: u32,
        id: String,
        name: String,
        delta: String,
    },
    /// The model asked for a tool.
    ToolCall(ToolCall),
    /// The result handed back to the model.
    ToolResult {
        call_id: String,
        content: String,
        is_error: bool,
    },
}

/// Why a turn ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnStop {
    /// The model answered without asking for tools.
    Answered(StopReason),
    /// The model still asked for tools after `max_steps` round trips.
    MaxSteps,
    /// The wall-clock budget ran out.
    Budget,
    /// The model called tools of the caller's ([`run_chat_turn`]): the turn ends and the
    /// calls go back to the caller, who runs them.
    CallerTools(Vec<ToolCall>),
}

/// The end of a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnOutcome {
    /// Why it ended.
    pub stop: TurnStop,
    /// The model round trips made.
    pub steps: u32,
    /// The text of the last answer.
    pub text: String,
    /// Tokens counted over all round trips.
    pub usage: Usage,
    /// The provider of each round trip, in order.
    pub providers: Vec<String>,
}

/// The result text when a tool call is refused before it runs, or cut short.
pub mod refusal {
    /// The tool was not offered.
    pub fn not_offered(name: &str) -> String {
        format!(
            "error: tool {name:?} is not available in this session; call only the tools offered"
        )
    }
    /// The arguments are not JSON.
    pub fn bad_arguments(name: &str, error: &serde_json::Error) -> String {
        format!(
            "error: the arguments for {name:?} are not valid JSON ({error}); send one JSON object"
        )
    }
    /// The step limit was reached before the call ran.
    pub const STEP_LIMIT: &str = "error: not run: the turn reached its step limit";
    /// The budget ran out before the call ran.
    pub const BUDGET: &str = "error: not run: the turn ran out of time";
}

/// Runs one turn over `history` (which ends with the user's message) and appends to it what
/// the model said and what its tools answered. `on_event` sees the turn as it goes.
pub async fn run_turn(
    provider: &dyn Provider,
    system: Option<&str>,
    history: &mut Vec<Message>,
    tools: &(impl ToolSet + ?Sized),
    runner: &dyn ToolRunner,
    limits: TurnLimits,
    on_event: &mut (dyn FnMut(TurnEvent) + Send),
) -> Result<TurnOutcome, ProviderError> {
    run_chat_turn(
        provider,
        system,
        history,
        tools,
        &[],
        runner,
        limits,
        on_event,
    )
    .await
}

/// [`run_turn`] with the caller's own tools offered beside Loong's (the gateway's chat
/// turn). An answer that calls any of `caller_tools` ends the turn with
/// [`TurnStop::CallerTools`]: those calls, ids kept, go back to the caller, who runs them
/// and sends their results in its next request. Loong's tools called in that same answer
/// are not run (their results could not reach the caller's history): the history keeps
/// only the caller's calls, and the model may ask for Loong's again on the next request.
#[allow(clippy::too_many_arguments)]
pub async fn run_chat_turn(
    provider: &dyn Provider,
    system: Option<&str>,
    history: &mut Vec<Message>,
    tools: &(impl ToolSet + ?Sized),
    caller_tools: &[ToolSpec],
    runner: &dyn ToolRunner,
    limits: TurnLimits,
    on_event: &mut (dyn FnMut(TurnEvent) + Send),
) -> Result<TurnOutcome, ProviderError> {
    let deadline = Instant::now() + limits.budget;
    let mut outcome = TurnOutcome {
        stop: TurnStop::Budget,
        steps: 0,
        text: String::new(),
        usage: Usage::default(),
        providers: Vec::new(),
    };
    loop {
        if outcome.steps >= limits.max_steps {
            outcome.stop = TurnStop::MaxSteps;
            return Ok(outcome);
        }
        outcome.steps += 1;
        let mut offered = tools.offered();
        offered.extend(caller_tools.iter().cloned());
        let request = Request {
            system: system.map(str::to_owned),
            messages: history.clone(),
            tools: offered.clone(),
        };
        let step = tokio::time::timeout_at(
            deadline,
            one_answer(provider, &request, outcome.steps, on_event),
        )
        .await;
        let answer = match step {
            Err(_) => return Ok(outcome),
            Ok(answer) => answer?,
        };
        outcome.usage.add(answer.usage);
        outcome.providers.push(answer.provider);
        outcome.text.clone_from(&answer.text);
        let callers: Vec<ToolCall> = answer
            .tool_calls
            .iter()
            .filter(|c| caller_tools.iter().any(|t| t.name == c.name))
            .cloned()
            .collect();
        if !callers.is_empty() {
            history.push(Message::Assistant {
                text: answer.text,
                tool_calls: callers.clone(),
            });
            outcome.stop = TurnStop::CallerTools(callers);
            return Ok(outcome);
        }
        let calls = answer.tool_calls.clone();
        history.push(Message::Assistant {
            text: answer.text,
            tool_calls: answer.tool_calls,
        });
        if calls.is_empty() {
            outcome.stop = TurnStop::Answered(answer.stop_reason);
            return Ok(outcome);
        }
        let last_step = outcome.steps >= limits.max_steps;
        for call in &calls {
            let (content, is_error) = if last_step {
                (refusal::STEP_LIMIT.to_owned(), true)
            } else if Instant::now() >= deadline {
                (refusal::BUDGET.to_owned(), true)
            } else {
                match tokio::time::timeout_at(deadline, run_one(&offered, runner, call)).await {
                    Ok(result) => result,
                    Err(_) => (refusal::BUDGET.to_owned(), true),
                }
            };
            let content = bounded(content);
            on_event(TurnEvent::ToolResult {
                call_id: call.id.clone(),
                content: content.clone(),
                is_error,
            });
            history.push(Message::ToolResult {
                call_id: call.id.clone(),
                name: call.name.clone(),
                content,
                is_error,
            });
        }
        if Instant::now() >= deadline {
            return Ok(outcome);
        }
    }
}

struct Answer {
    provider: String,
    text: String,
    tool_calls: Vec<ToolCall>,
    usage: Usage,
    stop_reason: StopReason,
}

async fn one_answer(
    provider: &dyn Provider,
    request: &Request,
    step: u32,
    on_event: &mut (dyn FnMut(TurnEvent) + Send),
) -> Result<Answer, ProviderError> {
    let mut stream = provider.stream(request).await?;
    for failover in stream.failovers() {
        on_event(TurnEvent::Failover(failover.clone()));
    }
    on_event(TurnEvent::Step {
        step,
        provider: stream.provider().to_owned(),
    });
    let mut answer = Answer {
        provider: stream.provider().to_owned(),
        text: String::new(),
        tool_calls: Vec::new(),
        usage: Usage::default(),
        stop_reason: StopReason::Other(String::new()),
    };
    while let Some(event) = stream.next().await {
        match event? {
            Event::TextDelta(text) => {
                answer.text.push_str(&text);
                on_event(TurnEvent::Text(text));
            }
            Event::ToolCallDelta {
                index,
                id,
                name,
                delta,
            } => on_event(TurnEvent::ToolCallDelta {
                index,
                id,
                name,
                delta,
            }),
            Event::ToolCall(call) => {
                on_event(TurnEvent::ToolCall(call.clone()));
                answer.tool_calls.push(call);
            }
            // Each usage event is the answer's running total.
            Event::Usage(usage) => answer.usage = usage,
            Event::Done { stop_reason } => answer.stop_reason = stop_reason,
        }
    }
    Ok(answer)
}

/// Checks `call` against the offered tools and its arguments, then runs it.
async fn run_one(tools: &[ToolSpec], runner: &dyn ToolRunner, call: &ToolCall) -> (String, bool) {
    if !tools.iter().any(|t| t.name == call.name) {
        return (refusal::not_offered(&call.name), true);
    }
    let arguments = match serde_json::from_str::<serde_json::Value>(&call.arguments_json) {
        Ok(value) => value,
        Err(error) => return (refusal::bad_arguments(&call.name, &error), true),
    };
    match runner.run(call, arguments).await {
        Ok(content) => (content, false),
        Err(content) => (content, true),
    }
}

/// Cuts a result to [`MAX_TOOL_RESULT_BYTES`] on a character boundary, saying so.
fn bounded(mut content: String) -> String {
    if content.len() <= MAX_TOOL_RESULT_BYTES {
        return content;
    }
    let mut end = MAX_TOOL_RESULT_BYTES;
    while !content.is_char_boundary(end) {
        end -= 1;
    }
    content.truncate(end);
    content.push_str(&format!("\n[result cut at {MAX_TOOL_RESULT_BYTES} bytes]"));
    content
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_result_is_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_TOOL_RESULT_BYTES);
        let cut = bounded(long);
        assert!(cut.len() <= MAX_TOOL_RESULT_BYTES + 40);
        assert!(cut.ends_with("[result cut at 262144 bytes]"));
        assert_eq!(bounded("short".into()), "short");
    }
}
