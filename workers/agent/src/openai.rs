//! The OpenAI chat completions wire format (`POST {base_url}/chat/completions`, streamed).
//!
//! Request: `messages` with the system prompt first, assistant tool calls as `tool_calls`
//! (`type: function`, arguments as JSON text) and each result as a `role: tool` message;
//! `tools` as `{type: function, function: {name, description, parameters}}`;
//! `stream_options.include_usage` so the last chunk carries `usage`.
//!
//! Answer: `data:` chunks of `choices[0].delta` (`content` pieces; `tool_calls[i]` pieces
//! keyed by `index`, the `id` and `name` in the first, `function.arguments` split anywhere),
//! `finish_reason` on the last choice chunk, then a chunk with `usage` and empty `choices`,
//! then `data: [DONE]`.

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{printable, ProviderError};
use crate::limits::MAX_TOOL_CALLS_PER_ANSWER;
use crate::names::ToolNames;
use crate::sse::SseEvent;
use crate::types::{Event, Message, Request, StopReason, ToolCall, Usage};

/// The request body for `model`.
pub fn body(model: &str, max_tokens: Option<u32>, request: &Request, names: &ToolNames) -> Value {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for message in &request.messages {
        messages.push(match message {
            Message::User { text } => json!({"role": "user", "content": text}),
            Message::Assistant { text, tool_calls } => {
                let mut m = json!({"role": "assistant", "content": text});
                if !tool_calls.is_empty() {
                    m["tool_calls"] = tool_calls
                        .iter()
                        .map(|c| {
                            json!({"id": c.id, "type": "function",
                                   "function": {"name": names.wire(&c.name), "arguments": c.arguments_json}})
                        })
                        .collect();
                }
                m
            }
            Message::ToolResult {
                call_id, content, ..
            } => {
                json!({"role": "tool", "tool_call_id": call_id, "content": content})
            }
        });
    }
    let mut body = json!({
        "model": model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(max_tokens) = max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": names.wire(&t.name), "description": t.description, "parameters": t.parameters}})
            })
            .collect();
    }
    body
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<ChunkUsage>,
    #[serde(default)]
    error: Option<ChunkError>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    index: usize,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct ChunkError {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
    /// The bytes of `arguments` already passed on as [`Event::ToolCallDelta`].
    streamed: usize,
}

/// Turns the chunks of one answer into [`Event`]s.
#[derive(Debug)]
pub struct Decoder {
    provider: String,
    names: ToolNames,
    calls: BTreeMap<usize, PartialCall>,
    finish: Option<String>,
    done: bool,
}

impl Decoder {
    /// A decoder for an answer of `provider` to a request that offered `names`.
    pub fn new(provider: &str, names: ToolNames) -> Self {
        Self {
            provider: provider.to_owned(),
            names,
            calls: BTreeMap::new(),
            finish: None,
            done: false,
        }
    }

    fn malformed(&self, line: u64, reason: String) -> ProviderError {
        ProviderError::Malformed {
            provider: self.provider.clone(),
            line,
            reason,
        }
    }

    /// Decodes one SSE event.
    pub fn event(&mut self, ev: &SseEvent, out: &mut VecDeque<Event>) -> Result<(), ProviderError> {
        if self.done {
            return Ok(());
        }
        if ev.data == "[DONE]" {
            return self.finish(out);
        }
        let chunk: Chunk = serde_json::from_str(&ev.data).map_err(|e| {
            self.malformed(
                ev.line,
                format!("a data line is not a chat completion chunk: {e}"),
            )
        })?;
        if let Some(error) = chunk.error {
            return Err(ProviderError::Remote {
                provider: self.provider.clone(),
                kind: printable(error.kind.as_deref().unwrap_or("error")),
                message: printable(error.message.as_deref().unwrap_or_default()),
            });
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    out.push_back(Event::TextDelta(text));
                }
                for piece in delta.tool_calls.unwrap_or_default() {
                    self.tool_call_piece(piece, out)?;
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finish = Some(reason);
                self.flush_calls(ev.line, out)?;
            }
        }
        if let Some(usage) = chunk.usage {
            out.push_back(Event::Usage(Usage {
                input_tokens: usage.prompt_tokens,
                output_tokens: usage.completion_tokens,
            }));
        }
        Ok(())
    }

    fn tool_call_piece(
        &mut self,
        piece: ToolCallDelta,
        out: &mut VecDeque<Event>,
    ) -> Result<(), ProviderError> {
        if piece.index >= MAX_TOOL_CALLS_PER_ANSWER {
            return Err(ProviderError::TooManyToolCalls {
                provider: self.provider.clone(),
                limit: MAX_TOOL_CALLS_PER_ANSWER,
            });
        }
        let call = self.calls.entry(piece.index).or_default();
        // The id and name come whole in the first piece; some compatible servers repeat them
        // in every piece, so they are kept, not joined.
        if let Some(id) = piece.id.filter(|s| !s.is_empty()) {
            if call.id.is_empty() {
                call.id = id;
            }
        }
        if let Some(function) = piece.function {
            if let Some(name) = function.name.filter(|s| !s.is_empty()) {
                if call.name.is_empty() {
                    call.name = name;
                }
            }
            if let Some(arguments) = function.arguments {
                call.arguments.push_str(&arguments);
            }
        }
        // The pieces pass on once the id and name are known (all that came before at once),
        // so the pieces passed on always join to the start of the whole arguments.
        if !call.name.is_empty() && !call.id.is_empty() && call.streamed < call.arguments.len() {
            out.push_back(Event::ToolCallDelta {
                index: u32::try_from(piece.index).unwrap_or(u32::MAX),
                id: call.id.clone(),
                name: self.names.real(&call.name),
                delta: call.arguments[call.streamed..].to_owned(),
            });
            call.streamed = call.arguments.len();
        }
        Ok(())
    }

    fn flush_calls(&mut self, line: u64, out: &mut VecDeque<Event>) -> Result<(), ProviderError> {
        for (index, call) in std::mem::take(&mut self.calls) {
            if call.name.is_empty() {
                return Err(self.malformed(line, format!("tool call {index} has no name")));
            }
            let id = if call.id.is_empty() {
                format!("call_{index}")
            } else {
                call.id
            };
            let arguments_json = if call.arguments.trim().is_empty() {
                "{}".to_owned()
            } else {
                call.arguments
            };
            out.push_back(Event::ToolCall(ToolCall {
                id,
                name: self.names.real(&call.name),
                arguments_json,
            }));
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut VecDeque<Event>) -> Result<(), ProviderError> {
        self.flush_calls(0, out)?;
        let stop_reason = match self.finish.as_deref() {
            Some("stop") => StopReason::EndTurn,
            Some("tool_calls") | Some("function_call") => StopReason::ToolUse,
            Some("length") => StopReason::MaxTokens,
            Some(other) => StopReason::Other(other.to_owned()),
            None => StopReason::Other(String::new()),
        };
        self.done = true;
        out.push_back(Event::Done { stop_reason });
        Ok(())
    }

    /// The end of the byte stream: without `[DONE]`, an answer that gave its `finish_reason`
    /// is complete (some compatible servers omit the marker); any other is truncated.
    pub fn end(&mut self, out: &mut VecDeque<Event>) -> Result<(), ProviderError> {
        if self.done {
            return Ok(());
        }
        if self.finish.is_some() {
            return self.finish(out);
        }
        Err(ProviderError::Truncated {
            provider: self.provider.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_limit_is_sent_only_when_configured() {
        let request = Request::default();
        let names = ToolNames::default();
        assert!(body("m", None, &request, &names)
            .get("max_tokens")
            .is_none());
        assert_eq!(body("m", Some(5), &request, &names)["max_tokens"], json!(5));
        assert!(
            body("m", None, &request, &names).get("tools").is_none(),
            "no empty tool list"
        );
    }
}
