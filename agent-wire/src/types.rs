//! The provider-neutral shapes: a request (system prompt, messages, offered tools) and the
//! events an answer streams. Each wire family encodes and decodes them in its own module.

use serde::{Deserialize, Serialize};

/// A tool offered to the model: its name, what it does, and the JSON schema of its input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The name the model calls it by.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// The JSON schema of its arguments (an object schema).
    pub parameters: serde_json::Value,
}

/// A tool call the model asked for, its arguments as the JSON text the model wrote (not yet
/// checked: the loop checks it is valid JSON before the call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id of the call, echoed with its result.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, as JSON text (`{}` when the model sent none).
    pub arguments_json: String,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    /// What the user said.
    User { text: String },
    /// What the model answered: its text and the tool calls it asked for.
    Assistant {
        text: String,
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call, handed back to the model.
    ToolResult {
        call_id: String,
        name: String,
        content: String,
        is_error: bool,
    },
}

/// What the model is asked: the conversation so far and the tools it may call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// The system prompt, if any.
    pub system: Option<String>,
    /// The conversation, oldest first.
    pub messages: Vec<Message>,
    /// The tools offered; the model may call these and no others.
    pub tools: Vec<ToolSpec>,
}

/// Tokens counted by the provider for one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub input_tokens: u64,
    /// Tokens of the answer.
    pub output_tokens: u64,
}

impl Usage {
    /// Adds `other` to this count.
    pub fn add(&mut self, other: Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It finished its answer (OpenAI `stop`, Anthropic `end_turn` / `stop_sequence`).
    EndTurn,
    /// It asked for tools (OpenAI `tool_calls`, Anthropic `tool_use`).
    ToolUse,
    /// It ran out of `max_tokens` (OpenAI `length`, Anthropic `max_tokens`).
    MaxTokens,
    /// Anything else, as the provider named it (`content_filter`, `refusal`, none).
    Other(String),
}

/// One event of a streamed answer, in the order the provider sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A piece of the answer's text, to show as it arrives.
    TextDelta(String),
    /// A piece of a tool call's arguments as it arrives (`index`: the call's place in the
    /// answer; `id` and `name` as known so far, the name mapped back). The whole call
    /// follows as [`Event::ToolCall`], which is authoritative.
    ToolCallDelta {
        index: u32,
        id: String,
        name: String,
        delta: String,
    },
    /// A complete tool call (its argument pieces joined).
    ToolCall(ToolCall),
    /// The answer's token counts (Anthropic may send it more than once, each a running total).
    Usage(Usage),
    /// The end of the answer; nothing follows.
    Done { stop_reason: StopReason },
}

/// A switch to the fallback provider: the audit record `provider.failover` is made from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverEvent {
    /// The provider that failed.
    pub from: String,
    /// The provider asked instead.
    pub to: String,
    /// Why `from` failed (its error, as text).
    pub reason: String,
}
