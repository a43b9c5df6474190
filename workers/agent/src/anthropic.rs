//! The Anthropic messages wire format (`POST {base_url}/v1/messages`, streamed).
//!
//! Request: `system` at the top level; assistant turns as content blocks (`text`, then
//! `tool_use` with `input` as an object); tool results as `tool_result` blocks of one user
//! message per run of results; `tools` as `{name, description, input_schema}`.
//!
//! Answer: `message_start` (input token count), per content block `content_block_start`
//! (`text`, or `tool_use` with `id` and `name`), `content_block_delta` (`text_delta`, or
//! `input_json_delta` whose `partial_json` pieces, possibly empty, join into the input),
//! `content_block_stop`; then `message_delta` (`stop_reason`, output token count) and
//! `message_stop`. `ping` is skipped; an `error` event ends the answer with its error.

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{printable, ProviderError};
use crate::limits::MAX_TOOL_CALLS_PER_ANSWER;
use crate::names::ToolNames;
use crate::sse::SseEvent;
use crate::types::{Event, Message, Request, StopReason, ToolCall, Usage};

/// The `anthropic-version` header sent with every request.
pub const API_VERSION: &str = "2023-06-01";

/// The request body for `model`.
pub fn body(model: &str, max_tokens: u32, request: &Request, names: &ToolNames) -> Value {
    let mut messages: Vec<Value> = Vec::with_capacity(request.messages.len());
    for message in &request.messages {
        match message {
            Message::User { text } => messages.push(json!({"role": "user", "content": text})),
            Message::Assistant { text, tool_calls } => {
                let mut content = Vec::with_capacity(tool_calls.len() + 1);
                if !text.is_empty() {
                    content.push(json!({"type": "text", "text": text}));
                }
                for call in tool_calls {
                    // The input must be an object; arguments that were not one were answered
                    // with a tool error, and are sent back as `{}`.
                    let input = serde_json::from_str::<Value>(&call.arguments_json)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    content.push(
                        json!({"type": "tool_use", "id": call.id, "name": names.wire(&call.name), "input": input}),
                    );
                }
                messages.push(json!({"role": "assistant", "content": content}));
            }
            Message::ToolResult {
                call_id,
                content,
                is_error,
                ..
            } => {
                let block = json!({"type": "tool_result", "tool_use_id": call_id,
                                   "content": content, "is_error": is_error});
                // Results of one turn go back together, in one user message.
                match messages.last_mut() {
                    Some(last) if is_tool_result_message(last) => {
                        if let Some(blocks) = last["content"].as_array_mut() {
                            blocks.push(block);
                        }
                    }
                    _ => messages.push(json!({"role": "user", "content": [block]})),
                }
            }
        }
    }
    let mut body = json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": messages,
        "stream": true,
    });
    if let Some(system) = &request.system {
        body["system"] = json!(system);
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| json!({"name": names.wire(&t.name), "description": t.description, "input_schema": t.parameters}))
            .collect();
    }
    body
}

fn is_tool_result_message(message: &Value) -> bool {
    message["role"] == "user"
        && message["content"]
            .as_array()
            .is_some_and(|blocks| blocks.iter().all(|b| b["type"] == "tool_result"))
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: Value,
    },
    ContentBlockDelta {
        index: usize,
        delta: Value,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: Value,
        #[serde(default)]
        usage: Option<DeltaUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: Value,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: Option<DeltaUsage>,
}

#[derive(Deserialize)]
struct DeltaUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

#[derive(Debug)]
enum Block {
    Text,
    ToolUse {
        id: String,
        name: String,
        json: String,
        start_input: Option<Value>,
    },
    Other,
}

/// Turns the events of one answer into [`Event`]s.
#[derive(Debug)]
pub struct Decoder {
    provider: String,
    names: ToolNames,
    blocks: BTreeMap<usize, Block>,
    calls: usize,
    usage: Usage,
    stop_reason: Option<String>,
    done: bool,
}

impl Decoder {
    /// A decoder for an answer of `provider` to a request that offered `names`.
    pub fn new(provider: &str, names: ToolNames) -> Self {
        Self {
            provider: provider.to_owned(),
            names,
            blocks: BTreeMap::new(),
            calls: 0,
            usage: Usage::default(),
            stop_reason: None,
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
        let parsed: StreamEvent = serde_json::from_str(&ev.data).map_err(|e| {
            self.malformed(
                ev.line,
                format!("a data line is not a messages stream event: {e}"),
            )
        })?;
        match parsed {
            StreamEvent::MessageStart { message } => {
                if let Some(usage) = message.usage {
                    self.usage.input_tokens = usage.input_tokens.unwrap_or(0);
                    self.usage.output_tokens = usage.output_tokens.unwrap_or(0);
                }
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                self.start_block(ev.line, index, &content_block, out)?;
            }
            StreamEvent::ContentBlockDelta { index, delta } => {
                self.delta(ev.line, index, &delta, out)?;
            }
            StreamEvent::ContentBlockStop { index } => self.stop_block(ev.line, index, out)?,
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.get("stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(reason.to_owned());
                }
                if let Some(usage) = usage {
                    if let Some(input) = usage.input_tokens {
                        self.usage.input_tokens = input;
                    }
                    if let Some(output) = usage.output_tokens {
                        self.usage.output_tokens = output;
                    }
                    out.push_back(Event::Usage(self.usage));
                }
            }
            StreamEvent::MessageStop => {
                let stop_reason = match self.stop_reason.as_deref() {
                    Some("end_turn") | Some("stop_sequence") => StopReason::EndTurn,
                    Some("tool_use") => StopReason::ToolUse,
                    Some("max_tokens") => StopReason::MaxTokens,
                    Some(other) => StopReason::Other(other.to_owned()),
                    None => StopReason::Other(String::new()),
                };
                self.done = true;
                out.push_back(Event::Done { stop_reason });
            }
            StreamEvent::Ping | StreamEvent::Unknown => {}
            StreamEvent::Error { error } => {
                return Err(ProviderError::Remote {
                    provider: self.provider.clone(),
                    kind: printable(error["type"].as_str().unwrap_or("error")),
                    message: printable(error["message"].as_str().unwrap_or_default()),
                });
            }
        }
        Ok(())
    }

    fn start_block(
        &mut self,
        line: u64,
        index: usize,
        block: &Value,
        out: &mut VecDeque<Event>,
    ) -> Result<(), ProviderError> {
        let kind = match block["type"].as_str() {
            Some("text") => {
                if let Some(text) = block["text"].as_str().filter(|t| !t.is_empty()) {
                    out.push_back(Event::TextDelta(text.to_owned()));
                }
                Block::Text
            }
            Some("tool_use") => {
                self.calls += 1;
                if self.calls > MAX_TOOL_CALLS_PER_ANSWER {
                    return Err(ProviderError::TooManyToolCalls {
                        provider: self.provider.clone(),
                        limit: MAX_TOOL_CALLS_PER_ANSWER,
                    });
                }
                let (Some(id), Some(name)) = (block["id"].as_str(), block["name"].as_str()) else {
                    return Err(
                        self.malformed(line, format!("tool_use block {index} lacks id or name"))
                    );
                };
                Block::ToolUse {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    json: String::new(),
                    start_input: block.get("input").cloned(),
                }
            }
            _ => Block::Other,
        };
        if self.blocks.len() >= MAX_TOOL_CALLS_PER_ANSWER * 4 {
            return Err(self.malformed(line, "too many content blocks".to_owned()));
        }
        self.blocks.insert(index, kind);
        Ok(())
    }

    fn delta(
        &mut self,
        line: u64,
        index: usize,
        delta: &Value,
        out: &mut VecDeque<Event>,
    ) -> Result<(), ProviderError> {
        let Some(block) = self.blocks.get_mut(&index) else {
            return Err(self.malformed(line, format!("a delta for block {index}, never started")));
        };
        match (block, delta["type"].as_str()) {
            (Block::Text, Some("text_delta")) => {
                if let Some(text) = delta["text"].as_str().filter(|t| !t.is_empty()) {
                    out.push_back(Event::TextDelta(text.to_owned()));
                }
            }
            // An empty piece is legal (the first piece often is): it adds nothing.
            (Block::ToolUse { id, name, json, .. }, Some("input_json_delta")) => {
                let piece = delta["partial_json"].as_str().unwrap_or_default();
                json.push_str(piece);
                if !piece.is_empty() {
                    let (id, name) = (id.clone(), name.clone());
                    out.push_back(Event::ToolCallDelta {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        id,
                        name: self.names.real(&name),
                        delta: piece.to_owned(),
                    });
                }
            }
            (Block::Other, _) => {}
            (_, Some("text_delta" | "input_json_delta")) => {
                return Err(
                    self.malformed(line, format!("a delta of the wrong kind for block {index}"))
                );
            }
            _ => {}
        }
        Ok(())
    }

    fn stop_block(
        &mut self,
        line: u64,
        index: usize,
        out: &mut VecDeque<Event>,
    ) -> Result<(), ProviderError> {
        match self.blocks.get_mut(&index) {
            None => Err(self.malformed(line, format!("block {index} stopped, never started"))),
            Some(block) => {
                if let Block::ToolUse {
                    id,
                    name,
                    json,
                    start_input,
                } = std::mem::replace(block, Block::Other)
                {
                    let arguments_json = if !json.trim().is_empty() {
                        json
                    } else {
                        match start_input {
                            Some(input) if input.as_object().is_some_and(|o| !o.is_empty()) => {
                                input.to_string()
                            }
                            _ => "{}".to_owned(),
                        }
                    };
                    out.push_back(Event::ToolCall(ToolCall {
                        id,
                        name: self.names.real(&name),
                        arguments_json,
                    }));
                }
                Ok(())
            }
        }
    }

    /// The end of the byte stream: an answer without `message_stop` is truncated.
    pub fn end(&mut self, _out: &mut VecDeque<Event>) -> Result<(), ProviderError> {
        if self.done {
            Ok(())
        } else {
            Err(ProviderError::Truncated {
                provider: self.provider.clone(),
            })
        }
    }
}
