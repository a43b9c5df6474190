//! The gateway's chat turn: a caller's request in OpenAI or Anthropic form, made
//! provider-neutral ([`ChatRequest`]), and what the turn streams back ([`ChatEvent`]).
//!
//! Unlike `loongctl ask` a chat turn keeps no session memory: the caller sends the whole
//! history, its own tools' results included. The caller's tools ([`ChatRequest::caller_tools`])
//! are offered to the model beside Loong's own; a call to one ends the turn and is returned
//! to the caller as [`ChatEvent::ToolCallStart`] and [`ChatEvent::ToolCallArgs`] events, then
//! [`ChatEvent::Done`] with [`ChatStop::ToolUse`]. Both types travel as postcard between the
//! gateway worker and loongd, so each is bounded ([`ChatRequest::check_bounds`]).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::types::{Message, ToolCall, ToolSpec, Usage};

/// The most messages one request's history may hold.
pub const MAX_CHAT_MESSAGES: usize = 1024;
/// The most tools a caller may offer in one request.
pub const MAX_CALLER_TOOLS: usize = 128;
/// The most tool calls one assistant message of the history may carry.
pub const MAX_CHAT_TOOL_CALLS: usize = 64;
/// The most bytes of all the request's text: the system prompt, every message's text, tool
/// arguments and results, and the tools' names, descriptions and schemas.
pub const MAX_CHAT_TEXT_BYTES: usize = 1 << 20;
/// The longest tool name or tool-call id.
pub const MAX_CHAT_NAME_BYTES: usize = 256;
/// The longest model name.
pub const MAX_CHAT_MODEL_BYTES: usize = 256;

/// One message of the caller's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatMessage {
    /// What the user said.
    User { text: String },
    /// What the model answered before: its text and the tool calls it made (each with the id
    /// the caller's tool result names).
    Assistant {
        text: String,
        tool_calls: Vec<ChatToolCall>,
    },
    /// The caller's result of one tool call, by the call's id.
    ToolResult {
        call_id: String,
        content: String,
        is_error: bool,
    },
}

/// A tool call as the caller's history holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatToolCall {
    /// The id the tool result names.
    pub id: String,
    pub name: String,
    /// The arguments, as the JSON text the model wrote.
    pub arguments: String,
}

/// One chat request, whichever wire format it came in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model the caller named (informational: loongd's `[agent]` chooses the provider).
    pub model: Option<String>,
    pub system: Option<String>,
    /// The history, oldest first.
    pub messages: Vec<ChatMessage>,
    /// The caller's own tools: offered to the model, never run by Loong. Their schemas
    /// travel as JSON text (postcard cannot carry a free-form JSON value).
    #[serde(with = "tools_as_text")]
    pub caller_tools: Vec<ToolSpec>,
    pub stream: bool,
    pub max_tokens: Option<u32>,
}

/// Why a chat turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatStop {
    /// The model answered.
    EndTurn,
    /// The model called one of the caller's tools: the caller runs it and asks again.
    ToolUse,
    /// The model ran out of tokens.
    MaxTokens,
    /// The turn reached its step limit or its budget (Loong's tools kept being called).
    StepLimit,
}

/// What a chat turn streams, in order: text deltas, then for each caller tool call a start
/// and its argument pieces, then exactly one `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatEvent {
    TextDelta(String),
    /// A call of a caller's tool begins: `index` counts the turn's caller calls from 0.
    ToolCallStart {
        index: u32,
        id: String,
        name: String,
    },
    /// A piece of the arguments (JSON text) of call `index`; the pieces join to the whole.
    ToolCallArgs {
        index: u32,
        delta: String,
    },
    Done {
        stop: ChatStop,
        usage: Usage,
    },
    /// The turn failed: `kind` is loongd's error kind or the provider's failure class.
    Failed {
        kind: String,
        message: String,
    },
}

/// A request outside its bounds.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChatBoundsError {
    #[error("{field}: {count} items, above the limit of {limit}; send fewer")]
    TooMany {
        field: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("the request's text is {bytes} bytes, above the limit of {limit}; shorten the history or the tools")]
    TooLong { bytes: usize, limit: usize },
    #[error("{field}: {bytes} bytes, above the limit of {limit}")]
    NameTooLong {
        field: &'static str,
        bytes: usize,
        limit: usize,
    },
    #[error("{field}: give a non-empty name")]
    Empty { field: &'static str },
    #[error("messages: the history is empty; send at least one message")]
    NoMessages,
}

fn name(field: &'static str, value: &str) -> Result<(), ChatBoundsError> {
    if value.is_empty() {
        return Err(ChatBoundsError::Empty { field });
    }
    if value.len() > MAX_CHAT_NAME_BYTES {
        return Err(ChatBoundsError::NameTooLong {
            field,
            bytes: value.len(),
            limit: MAX_CHAT_NAME_BYTES,
        });
    }
    Ok(())
}

fn many(field: &'static str, count: usize, limit: usize) -> Result<(), ChatBoundsError> {
    if count > limit {
        return Err(ChatBoundsError::TooMany {
            field,
            count,
            limit,
        });
    }
    Ok(())
}

impl ChatRequest {
    /// Checks every bound: counts, names, and the text's total size.
    pub fn check_bounds(&self) -> Result<(), ChatBoundsError> {
        if self.messages.is_empty() {
            return Err(ChatBoundsError::NoMessages);
        }
        many("messages", self.messages.len(), MAX_CHAT_MESSAGES)?;
        many("tools", self.caller_tools.len(), MAX_CALLER_TOOLS)?;
        if let Some(model) = &self.model {
            if model.len() > MAX_CHAT_MODEL_BYTES {
                return Err(ChatBoundsError::NameTooLong {
                    field: "model",
                    bytes: model.len(),
                    limit: MAX_CHAT_MODEL_BYTES,
                });
            }
        }
        let mut bytes = self.system.as_ref().map_or(0, String::len);
        for m in &self.messages {
            bytes = bytes.saturating_add(match m {
                ChatMessage::User { text } => text.len(),
                ChatMessage::Assistant { text, tool_calls } => {
                    many("tool_calls", tool_calls.len(), MAX_CHAT_TOOL_CALLS)?;
                    let mut n = text.len();
                    for c in tool_calls {
                        name("tool call id", &c.id)?;
                        name("tool call name", &c.name)?;
                        n = n.saturating_add(c.arguments.len());
                    }
                    n
                }
                ChatMessage::ToolResult {
                    call_id, content, ..
                } => {
                    name("tool result id", call_id)?;
                    content.len()
                }
            });
        }
        for t in &self.caller_tools {
            name("tool name", &t.name)?;
            bytes = bytes
                .saturating_add(t.description.len())
                .saturating_add(t.parameters.to_string().len());
        }
        if bytes > MAX_CHAT_TEXT_BYTES {
            return Err(ChatBoundsError::TooLong {
                bytes,
                limit: MAX_CHAT_TEXT_BYTES,
            });
        }
        Ok(())
    }

    /// The history as the agent's messages: a tool result is given the name of the call it
    /// answers (the providers' formats do not all need it; an unknown id keeps an empty name).
    pub fn history(&self) -> Vec<Message> {
        let mut out = Vec::with_capacity(self.messages.len());
        for m in &self.messages {
            out.push(match m {
                ChatMessage::User { text } => Message::User { text: text.clone() },
                ChatMessage::Assistant { text, tool_calls } => Message::Assistant {
                    text: text.clone(),
                    tool_calls: tool_calls
                        .iter()
                        .map(|c| ToolCall {
                            id: c.id.clone(),
                            name: c.name.clone(),
                            arguments_json: c.arguments.clone(),
                        })
                        .collect(),
                },
                ChatMessage::ToolResult {
                    call_id,
                    content,
                    is_error,
                } => {
                    let name = self
                        .messages
                        .iter()
                        .filter_map(|m| match m {
                            ChatMessage::Assistant { tool_calls, .. } => Some(tool_calls),
                            _ => None,
                        })
                        .flatten()
                        .find(|c| &c.id == call_id)
                        .map(|c| c.name.clone())
                        .unwrap_or_default();
                    Message::ToolResult {
                        call_id: call_id.clone(),
                        name,
                        content: content.clone(),
                        is_error: *is_error,
                    }
                }
            });
        }
        out
    }
}

/// [`ToolSpec`]s as `(name, description, schema as JSON text)`, for formats without
/// free-form values.
mod tools_as_text {
    use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};

    use crate::types::ToolSpec;

    pub fn serialize<S: Serializer>(tools: &[ToolSpec], s: S) -> Result<S::Ok, S::Error> {
        tools
            .iter()
            .map(|t| (&t.name, &t.description, t.parameters.to_string()))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ToolSpec>, D::Error> {
        let raw = Vec::<(String, String, String)>::deserialize(d)?;
        raw.into_iter()
            .map(|(name, description, schema)| {
                let parameters = serde_json::from_str(&schema).map_err(|e| {
                    D::Error::custom(format!("the schema of tool {name:?} is not JSON: {e}"))
                })?;
                Ok(ToolSpec {
                    name,
                    description,
                    parameters,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> ChatMessage {
        ChatMessage::User { text: text.into() }
    }

    #[test]
    fn a_request_within_its_bounds_passes_and_each_bound_refuses_past_it() {
        let ok = ChatRequest {
            messages: vec![user("hi")],
            ..Default::default()
        };
        assert_eq!(ok.check_bounds(), Ok(()));

        let empty = ChatRequest::default();
        assert_eq!(empty.check_bounds(), Err(ChatBoundsError::NoMessages));

        let mut many_messages = ok.clone();
        many_messages.messages = vec![user("x"); MAX_CHAT_MESSAGES + 1];
        assert!(matches!(
            many_messages.check_bounds(),
            Err(ChatBoundsError::TooMany {
                field: "messages",
                ..
            })
        ));

        let tool = ToolSpec {
            name: "t".into(),
            description: String::new(),
            parameters: serde_json::json!({"type": "object"}),
        };
        let mut many_tools = ok.clone();
        many_tools.caller_tools = vec![tool.clone(); MAX_CALLER_TOOLS + 1];
        assert!(matches!(
            many_tools.check_bounds(),
            Err(ChatBoundsError::TooMany { field: "tools", .. })
        ));
        many_tools.caller_tools.truncate(MAX_CALLER_TOOLS);
        assert_eq!(many_tools.check_bounds(), Ok(()));

        let mut long = ok.clone();
        long.messages = vec![user(&"x".repeat(MAX_CHAT_TEXT_BYTES + 1))];
        assert!(matches!(
            long.check_bounds(),
            Err(ChatBoundsError::TooLong { .. })
        ));

        let mut unnamed = ok.clone();
        unnamed.caller_tools = vec![ToolSpec {
            name: String::new(),
            ..tool
        }];
        assert!(matches!(
            unnamed.check_bounds(),
            Err(ChatBoundsError::Empty { .. })
        ));
    }

    #[test]
    fn a_request_and_its_events_travel_as_postcard() {
        let req = ChatRequest {
            model: Some("m".into()),
            system: Some("be brief".into()),
            messages: vec![user("hi")],
            caller_tools: vec![ToolSpec {
                name: "get_weather".into(),
                description: "the weather".into(),
                parameters: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            }],
            stream: true,
            max_tokens: Some(100),
        };
        let bytes = postcard::to_allocvec(&req).expect("encodes");
        let back: ChatRequest = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, req);
        let events = vec![
            ChatEvent::TextDelta("a".into()),
            ChatEvent::ToolCallStart {
                index: 0,
                id: "c".into(),
                name: "n".into(),
            },
            ChatEvent::ToolCallArgs {
                index: 0,
                delta: "{}".into(),
            },
            ChatEvent::Done {
                stop: ChatStop::ToolUse,
                usage: Usage {
                    input_tokens: 1,
                    output_tokens: 2,
                },
            },
        ];
        let bytes = postcard::to_allocvec(&events).expect("encodes");
        let back: Vec<ChatEvent> = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, events);
    }

    #[test]
    fn a_tool_result_is_given_the_name_of_the_call_it_answers() {
        let req = ChatRequest {
            messages: vec![
                user("weather?"),
                ChatMessage::Assistant {
                    text: String::new(),
                    tool_calls: vec![ChatToolCall {
                        id: "call_1".into(),
                        name: "get_weather".into(),
                        arguments: "{}".into(),
                    }],
                },
                ChatMessage::ToolResult {
                    call_id: "call_1".into(),
                    content: "sunny".into(),
                    is_error: false,
                },
            ],
            ..Default::default()
        };
        let history = req.history();
        assert_eq!(
            history[2],
            Message::ToolResult {
                call_id: "call_1".into(),
                name: "get_weather".into(),
                content: "sunny".into(),
                is_error: false
            }
        );
    }
}
