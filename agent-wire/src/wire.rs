//! What loongd and the agent worker say to each other for one turn: the call's input (the
//! providers with their keys, the system prompt, the conversation's recent messages, the
//! offered tools, the limits) and its output (the answer, the tool calls made, usage, the
//! failovers and the messages the turn added).
//!
//! The input carries each provider's key, resolved by loongd, and only to the worker that
//! talks to that provider; it is never audited (the invocation record holds its size only).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Kind, ProviderConfig};
use crate::types::{FailoverEvent, Message, StopReason, ToolCall, ToolSpec, Usage};

/// The tool id the agent worker serves.
pub const AGENT_TOOL: &str = "agent.turn";

/// One provider as the worker needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireProvider {
    /// Its `[providers.NAME]` name.
    pub name: String,
    pub kind: Kind,
    pub base_url: String,
    pub model: String,
    /// The key itself, resolved by loongd (`None`: a server without auth).
    pub api_key: Option<String>,
    pub connect_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub answer_timeout_ms: u64,
    pub max_attempts: u32,
    pub max_tokens: Option<u32>,
}

impl WireProvider {
    /// `config` named `name`, with its resolved key.
    pub fn new(name: &str, config: &ProviderConfig, api_key: Option<String>) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            name: name.to_owned(),
            kind: config.kind,
            base_url: config.base_url.clone(),
            model: config.model.clone(),
            api_key,
            connect_timeout_ms: ms(config.connect_timeout),
            idle_timeout_ms: ms(config.idle_timeout),
            answer_timeout_ms: ms(config.answer_timeout),
            max_attempts: config.max_attempts,
            max_tokens: config.max_tokens,
        }
    }

    /// The provider's configuration (without the secret reference: the key is given apart).
    pub fn config(&self) -> ProviderConfig {
        ProviderConfig {
            kind: self.kind,
            base_url: self.base_url.clone(),
            model: self.model.clone(),
            api_key: None,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            answer_timeout: Duration::from_millis(self.answer_timeout_ms),
            max_attempts: self.max_attempts,
            max_tokens: self.max_tokens,
        }
    }
}

impl std::fmt::Debug for TurnInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys are never shown.
        f.debug_struct("TurnInput")
            .field(
                "providers",
                &self.providers.iter().map(|p| &p.name).collect::<Vec<_>>(),
            )
            .field("messages", &self.messages.len())
            .field("tools", &self.tools.len())
            .finish_non_exhaustive()
    }
}

/// The input of one turn.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnInput {
    /// The provider asked first, then its fallback (at most two).
    pub providers: Vec<WireProvider>,
    pub system: Option<String>,
    /// The conversation's recent messages, ending with the user's new one.
    pub messages: Vec<Message>,
    /// The tools the session's token may call, and no other.
    pub tools: Vec<ToolSpec>,
    pub max_steps: u32,
    pub budget_ms: u64,
    /// The most tools offered to the model at once (`[agent] max_offered_tools`): when
    /// `tools` holds more, the model is offered `tool_search` and the tools it finds among
    /// `tools`, and no other.
    #[serde(default = "default_max_offered_tools")]
    pub max_offered_tools: u32,
    /// The session's rolling summary of its turns before `messages`, sent as context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Older turns to fold into `summary` first: the model is asked once, before the turn, to
    /// summarise them with it (the answer is the turn's `TurnOutput::summary`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fold: Vec<Message>,
    /// Test builds only: confinement probes the worker runs from inside its sandbox instead
    /// of the turn (see `loongd::control::agent_api::PROBES_ENV`). A release loongd never
    /// sends any and a release worker refuses a turn that carries some.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<String>,
    /// The gateway's chat turn: the caller's own tools, offered beside `tools`; a call to
    /// one ends the turn and is returned in [`TurnOutput::caller_calls`], never run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caller_tools: Vec<ToolSpec>,
}

fn default_max_offered_tools() -> u32 {
    crate::limits::DEFAULT_MAX_OFFERED_TOOLS
}

/// One tool call the model made in a turn, and what it was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    pub name: String,
    /// Whether the tool was offered; a call of one that was not is refused by the loop
    /// without a kernel call, and loongd audits it.
    #[serde(default)]
    pub offered: bool,
    pub arguments: String,
    pub result: String,
    pub is_error: bool,
}

/// The output of one turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnOutput {
    /// The text of the last answer.
    pub answer: String,
    /// `answered`, `max_steps`, `budget` or `caller_tools`.
    pub stop: String,
    pub steps: u32,
    pub usage: Usage,
    /// The provider of each round trip.
    pub providers: Vec<String>,
    pub tool_calls: Vec<ToolCallRecord>,
    pub failovers: Vec<FailoverEvent>,
    /// The messages the turn added after the input's (the model's answers and the tool
    /// results), for the session's memory.
    pub added: Vec<Message>,
    /// The calls of the caller's tools that ended the turn (`stop` is `caller_tools`), in
    /// the order the model made them, ids kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caller_calls: Vec<ToolCall>,
    /// Why the model's last answer ended, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
    /// The new rolling summary, when the input asked for a fold and the model made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// The output of a turn that failed: the provider's error, typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnFailure {
    /// The error's class: `auth`, `bad_request`, `stalled`, `exhausted`, ... (`input` when
    /// the call's input was not a turn).
    pub class: String,
    /// The provider that failed (empty when none did).
    pub provider: String,
    pub message: String,
}
