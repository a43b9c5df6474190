//! Anthropic messages (`POST /v1/messages`).
//!
//! Request: `max_tokens` (required), `system` as a string or `text` blocks, `messages` of
//! `user` and `assistant` turns whose content is a string or blocks (`text`, `tool_use`,
//! `tool_result` with string or `text`-block content and `is_error`; an assistant's
//! `thinking` and `redacted_thinking` blocks are skipped), `tools` (`name`, `description`,
//! `input_schema`; server tools are refused), `tool_choice` (`none` offers the caller's tools
//! to nobody; `auto`, `any` and `tool` offer them), `stream`. Images and documents are
//! refused naming the field.
//!
//! Response: a `message` with `text` and `tool_use` blocks, `stop_reason` (`end_turn`,
//! `tool_use`, `max_tokens`) and usage; or the events `message_start`, `ping`,
//! `content_block_start` (`text`, or `tool_use` with an empty `input`), `content_block_delta`
//! (`text_delta`, or `input_json_delta` with a non-empty `partial_json`: an empty piece is
//! never sent), `content_block_stop`, `message_delta` (`stop_reason`, `usage`) and
//! `message_stop`; a failure mid-stream is an `error` event.

use loong_agent_wire::{
    chat::{ChatEvent, ChatMessage, ChatRequest, ChatStop, ChatToolCall},
    types::{ToolSpec, Usage},
};
use serde::Serialize;
use serde_json::Value;

use crate::{bounded, fresh_id, json, object_at, parse_object, CompatError, Fields};

/// Parses a `/v1/messages` body.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, CompatError> {
    let map = parse_object(body)?;
    let f = Fields::new("", &map);
    let model = f.str("model")?.map(str::to_owned);
    let max_tokens = Some(
        f.u32("max_tokens")?
            .ok_or_else(|| CompatError::field("max_tokens", "is required"))?,
    );
    let stream = f.bool("stream")?.unwrap_or(false);
    let system = match f.get("system") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(blocks)) => Some(text_blocks("system", blocks)?),
        Some(_) => {
            return Err(CompatError::field(
                "system",
                "must be a string or an array of text blocks",
            ))
        }
    };
    let messages = f
        .array("messages")?
        .ok_or_else(|| CompatError::field("messages", "is required"))?;
    let mut history = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let m = object_at(format!("messages[{i}]"), m)?;
        let role = m.required_str("role")?;
        let blocks: Vec<(String, Fields<'_>)> = match m.get("content") {
            Some(Value::String(s)) => {
                history.push(match role {
                    "user" => ChatMessage::User { text: s.clone() },
                    "assistant" => ChatMessage::Assistant {
                        text: s.clone(),
                        tool_calls: Vec::new(),
                    },
                    other => return Err(bad_role(&m, other)),
                });
                continue;
            }
            Some(Value::Array(blocks)) => blocks
                .iter()
                .enumerate()
                .map(|(j, b)| {
                    let path = m.name(&format!("content[{j}]"));
                    object_at(path.clone(), b).map(|b| (path, b))
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(CompatError::field(
                    m.name("content"),
                    "must be a string or an array of content blocks",
                ))
            }
        };
        match role {
            "user" => {
                let mut text = String::new();
                for (path, b) in &blocks {
                    match b.required_str("type")? {
                        "text" => text.push_str(b.required_str("text")?),
                        "tool_result" => {
                            let content = match b.get("content") {
                                None => String::new(),
                                Some(Value::String(s)) => s.clone(),
                                Some(Value::Array(parts)) => {
                                    text_blocks(&b.name("content"), parts)?
                                }
                                Some(_) => {
                                    return Err(CompatError::field(
                                        b.name("content"),
                                        "must be a string or an array of text blocks",
                                    ))
                                }
                            };
                            history.push(ChatMessage::ToolResult {
                                call_id: b.required_str("tool_use_id")?.to_owned(),
                                content,
                                is_error: b.bool("is_error")?.unwrap_or(false),
                            });
                        }
                        other => return Err(unsupported_block(path, other)),
                    }
                }
                if !text.is_empty() {
                    history.push(ChatMessage::User { text });
                }
            }
            "assistant" => {
                let mut text = String::new();
                let mut tool_calls = Vec::new();
                for (path, b) in &blocks {
                    match b.required_str("type")? {
                        "text" => text.push_str(b.required_str("text")?),
                        "tool_use" => {
                            let input = match b.get("input") {
                                None => "{}".to_string(),
                                Some(v @ Value::Object(_)) => v.to_string(),
                                Some(_) => {
                                    return Err(CompatError::field(
                                        b.name("input"),
                                        "must be an object",
                                    ))
                                }
                            };
                            tool_calls.push(ChatToolCall {
                                id: b.required_str("id")?.to_owned(),
                                name: b.required_str("name")?.to_owned(),
                                arguments: input,
                            });
                        }
                        "thinking" | "redacted_thinking" => {}
                        other => return Err(unsupported_block(path, other)),
                    }
                }
                history.push(ChatMessage::Assistant { text, tool_calls });
            }
            other => return Err(bad_role(&m, other)),
        }
    }
    let mut caller_tools = Vec::new();
    for (i, t) in f.array("tools")?.into_iter().flatten().enumerate() {
        let t = object_at(format!("tools[{i}]"), t)?;
        match t.str("type")? {
            None | Some("custom") => {}
            Some(other) => {
                return Err(CompatError::field(
                    t.name("type"),
                    format!("{other:?}: server tools are not supported; send your own tools"),
                ))
            }
        }
        let parameters = match t.get("input_schema") {
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(CompatError::field(
                    t.name("input_schema"),
                    "must be a JSON schema object",
                ))
            }
            None => return Err(CompatError::field(t.name("input_schema"), "is required")),
        };
        caller_tools.push(ToolSpec {
            name: t.required_str("name")?.to_owned(),
            description: t.str("description")?.unwrap_or("").to_owned(),
            parameters,
        });
    }
    if let Some(choice) = f.object("tool_choice")? {
        match choice.required_str("type")? {
            "none" => caller_tools.clear(),
            "auto" | "any" => {}
            "tool" => {
                let name = choice.required_str("name")?;
                if !caller_tools.iter().any(|t| t.name == name) {
                    return Err(CompatError::field(
                        "tool_choice.name",
                        format!("{name:?} is not one of the request's tools"),
                    ));
                }
            }
            other => {
                return Err(CompatError::field(
                    "tool_choice.type",
                    format!("{other:?} is not supported: send auto, any, tool or none"),
                ))
            }
        }
    }
    bounded(ChatRequest {
        model,
        system,
        messages: history,
        caller_tools,
        stream,
        max_tokens,
    })
}

fn bad_role(m: &Fields<'_>, role: &str) -> CompatError {
    CompatError::field(
        m.name("role"),
        format!("{role:?} is not supported: send user or assistant (the system prompt is the top-level system)"),
    )
}

fn unsupported_block(path: &str, kind: &str) -> CompatError {
    CompatError::field(
        format!("{path}.type"),
        format!("{kind:?} blocks are not supported here: send text, tool_use or tool_result"),
    )
}

/// An array of `text` blocks, joined.
fn text_blocks(path: &str, blocks: &[Value]) -> Result<String, CompatError> {
    let mut text = String::new();
    for (j, b) in blocks.iter().enumerate() {
        let b = object_at(format!("{path}[{j}]"), b)?;
        match b.required_str("type")? {
            "text" => text.push_str(b.required_str("text")?),
            other => {
                return Err(CompatError::field(
                    b.name("type"),
                    format!("{other:?} blocks are not supported here: send text"),
                ))
            }
        }
    }
    Ok(text)
}

#[derive(Serialize)]
struct MessageBody<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Block>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<()>,
    usage: UsageBody,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

#[derive(Serialize, Clone, Copy)]
struct UsageBody {
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent<'a> {
    MessageStart { message: MessageBody<'a> },
    Ping,
    ContentBlockStart { index: u32, content_block: Block },
    ContentBlockDelta { index: u32, delta: Delta<'a> },
    ContentBlockStop { index: u32 },
    MessageDelta { delta: StopDelta, usage: UsageBody },
    MessageStop,
    Error { error: ErrorDetail<'a> },
}

impl StreamEvent<'_> {
    fn name(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::Ping => "ping",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
            StreamEvent::Error { .. } => "error",
        }
    }

    fn sse(&self) -> Vec<u8> {
        let mut out = format!("event: {}\ndata: ", self.name()).into_bytes();
        out.extend(json(self));
        out.extend_from_slice(b"\n\n");
        out
    }
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

/// The `error.type` Anthropic gives a status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error answer's body: `{"type": "error", "error": {"type", "message"}}`.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    json(&ErrorBody {
        kind: "error",
        error: ErrorDetail {
            kind: error_type(status),
            message,
        },
    })
}

fn stop_reason(stop: ChatStop) -> &'static str {
    match stop {
        ChatStop::EndTurn => "end_turn",
        ChatStop::ToolUse => "tool_use",
        // A turn cut at its step limit is an answer cut short, as one out of tokens is.
        ChatStop::MaxTokens | ChatStop::StepLimit => "max_tokens",
    }
}

/// What a block being streamed is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Tool(u32),
}

/// Renders one turn's events as a `/v1/messages` response.
#[derive(Debug)]
pub struct Render {
    id: String,
    model: String,
    stream: bool,
    started: bool,
    /// The block being streamed and its index.
    open: Option<(Open, u32)>,
    next_block: u32,
    /// Each caller tool call's block index, by its call index.
    blocks: Vec<(u32, u32)>,
    text: String,
    calls: Vec<(u32, String, String, String)>,
    done: Option<(ChatStop, Usage)>,
    failed: Option<String>,
}

impl Render {
    /// A response for `model`, streamed (server-sent events) or one JSON body.
    pub fn new(model: &str, stream: bool) -> Self {
        Self {
            id: fresh_id("msg_loong"),
            model: model.to_owned(),
            stream,
            started: false,
            open: None,
            next_block: 0,
            blocks: Vec::new(),
            text: String::new(),
            calls: Vec::new(),
            done: None,
            failed: None,
        }
    }

    /// The HTTP status of a response that is not streamed: 200, or 502 when the turn failed.
    pub fn status(&self) -> u16 {
        if self.failed.is_some() {
            502
        } else {
            200
        }
    }

    fn start(&mut self) -> Vec<u8> {
        if !self.stream || self.started {
            return Vec::new();
        }
        self.started = true;
        let mut out = StreamEvent::MessageStart {
            message: MessageBody {
                id: &self.id,
                kind: "message",
                role: "assistant",
                model: &self.model,
                content: Vec::new(),
                stop_reason: None,
                stop_sequence: None,
                usage: UsageBody {
                    input_tokens: 0,
                    output_tokens: 0,
                },
            },
        }
        .sse();
        out.extend(StreamEvent::Ping.sse());
        out
    }

    fn close(&mut self) -> Vec<u8> {
        match self.open.take() {
            Some((_, index)) => StreamEvent::ContentBlockStop { index }.sse(),
            None => Vec::new(),
        }
    }

    /// Opens a block of `kind` (closing the open one), returning its index.
    fn open(&mut self, kind: Open, block: Block, out: &mut Vec<u8>) -> u32 {
        out.extend(self.close());
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some((kind, index));
        out.extend(
            StreamEvent::ContentBlockStart {
                index,
                content_block: block,
            }
            .sse(),
        );
        index
    }

    /// The bytes to send for `event` (none when the response is not streamed).
    pub fn event(&mut self, event: &ChatEvent) -> Vec<u8> {
        if self.done.is_some() || self.failed.is_some() {
            return Vec::new();
        }
        let mut out = match event {
            ChatEvent::Failed { .. } => Vec::new(),
            _ => self.start(),
        };
        match event {
            ChatEvent::TextDelta(t) => {
                self.text.push_str(t);
                if self.stream && !t.is_empty() {
                    let index = match self.open {
                        Some((Open::Text, index)) => index,
                        _ => self.open(
                            Open::Text,
                            Block::Text {
                                text: String::new(),
                            },
                            &mut out,
                        ),
                    };
                    out.extend(
                        StreamEvent::ContentBlockDelta {
                            index,
                            delta: Delta::TextDelta { text: t },
                        }
                        .sse(),
                    );
                }
            }
            ChatEvent::ToolCallStart { index, id, name } => {
                self.calls
                    .push((*index, id.clone(), name.clone(), String::new()));
                if self.stream {
                    let block = self.open(
                        Open::Tool(*index),
                        Block::ToolUse {
                            id: id.clone(),
                            name: name.clone(),
                            input: Value::Object(serde_json::Map::new()),
                        },
                        &mut out,
                    );
                    self.blocks.push((*index, block));
                }
            }
            ChatEvent::ToolCallArgs { index, delta } => {
                if let Some(call) = self.calls.iter_mut().find(|c| c.0 == *index) {
                    call.3.push_str(delta);
                }
                let block = self.blocks.iter().find(|b| b.0 == *index).map(|b| b.1);
                if let (true, false, Some(block)) = (self.stream, delta.is_empty(), block) {
                    out.extend(
                        StreamEvent::ContentBlockDelta {
                            index: block,
                            delta: Delta::InputJsonDelta {
                                partial_json: delta,
                            },
                        }
                        .sse(),
                    );
                }
            }
            ChatEvent::Done { stop, usage } => {
                self.done = Some((*stop, *usage));
                if self.stream {
                    out.extend(self.close());
                    out.extend(
                        StreamEvent::MessageDelta {
                            delta: StopDelta {
                                stop_reason: stop_reason(*stop),
                                stop_sequence: None,
                            },
                            usage: UsageBody {
                                input_tokens: usage.input_tokens,
                                output_tokens: usage.output_tokens,
                            },
                        }
                        .sse(),
                    );
                    out.extend(StreamEvent::MessageStop.sse());
                }
            }
            ChatEvent::Failed { message, .. } => {
                self.failed = Some(message.clone());
                if self.stream {
                    out.extend(
                        StreamEvent::Error {
                            error: ErrorDetail {
                                kind: "api_error",
                                message,
                            },
                        }
                        .sse(),
                    );
                }
            }
        }
        out
    }

    /// The end: nothing more when streamed, else the `message` body (or the error body when
    /// the turn failed: see [`status`](Self::status)).
    pub fn finish(self) -> Vec<u8> {
        if self.stream {
            return Vec::new();
        }
        if let Some(message) = &self.failed {
            return error_body(502, message);
        }
        let (stop, usage) = self.done.unwrap_or((ChatStop::EndTurn, Usage::default()));
        let mut content = Vec::new();
        if !self.text.is_empty() {
            content.push(Block::Text { text: self.text });
        }
        for (_, id, name, arguments) in self.calls {
            // The model's arguments are an object; text that is not one (the model's
            // mistake) is kept whole under "arguments" so nothing is lost.
            let input = match serde_json::from_str::<Value>(&arguments) {
                Ok(v @ Value::Object(_)) => v,
                _ if arguments.trim().is_empty() => Value::Object(serde_json::Map::new()),
                _ => serde_json::json!({ "arguments": arguments }),
            };
            content.push(Block::ToolUse { id, name, input });
        }
        json(&MessageBody {
            id: &self.id,
            kind: "message",
            role: "assistant",
            model: &self.model,
            content,
            stop_reason: Some(stop_reason(stop)),
            stop_sequence: None,
            usage: UsageBody {
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse_json(v: Value) -> Result<ChatRequest, CompatError> {
        parse_request(v.to_string().as_bytes())
    }

    #[test]
    fn a_request_with_blocks_tools_and_results_is_parsed_whole() {
        let r = parse_json(json!({
            "model": "claude-x",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}],
            "messages": [
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}], "is_error": false},
                    {"type": "text", "text": "and tomorrow?"}
                ]}
            ],
            "tools": [{"name": "get_weather", "description": "the weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "auto"},
            "stream": true
        }))
        .expect("parsed");
        assert_eq!(r.system.as_deref(), Some("be brief"));
        assert_eq!(r.max_tokens, Some(1024));
        assert!(r.stream);
        assert_eq!(
            r.messages,
            vec![
                ChatMessage::User {
                    text: "weather in Paris?".into()
                },
                ChatMessage::Assistant {
                    text: "Let me look.".into(),
                    tool_calls: vec![ChatToolCall {
                        id: "toolu_1".into(),
                        name: "get_weather".into(),
                        arguments: "{\"city\":\"Paris\"}".into()
                    }]
                },
                ChatMessage::ToolResult {
                    call_id: "toolu_1".into(),
                    content: "sunny".into(),
                    is_error: false
                },
                ChatMessage::User {
                    text: "and tomorrow?".into()
                },
            ]
        );
        assert_eq!(r.caller_tools[0].name, "get_weather");
    }

    #[test]
    fn a_hostile_or_unsupported_request_is_a_400_naming_the_field() {
        let user = json!([{"role": "user", "content": "x"}]);
        let cases = [
            (json!({"messages": user}), "max_tokens"),
            (json!({"max_tokens": 0, "messages": user}), "max_tokens"),
            (json!({"max_tokens": 1}), "messages"),
            (
                json!({"max_tokens": 1, "system": 5, "messages": user}),
                "system",
            ),
            (
                json!({"max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"max_tokens": 1, "messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": "x"}]}]}),
                "messages[0].content[0].input",
            ),
            (
                json!({"max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]}),
                "messages[0].content[0].tool_use_id",
            ),
            (
                json!({"max_tokens": 1, "messages": user, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"max_tokens": 1, "messages": user, "tools": [{"name": "f"}]}),
                "tools[0].input_schema",
            ),
            (
                json!({"max_tokens": 1, "messages": user, "tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": "tool", "name": "g"}}),
                "tool_choice.name",
            ),
        ];
        for (body, field) in cases {
            match parse_json(body.clone()) {
                Err(e @ (CompatError::Field { .. } | CompatError::Bounds(_))) => {
                    assert_eq!(e.status(), 400);
                    assert!(
                        e.to_string().starts_with(&format!("{field}:")),
                        "{body}: {e}"
                    );
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        // Positive control: the smallest valid request.
        let ok = parse_json(json!({"max_tokens": 1, "messages": user})).expect("parsed");
        assert_eq!(ok.messages.len(), 1);
    }

    fn events() -> Vec<ChatEvent> {
        let mut events = vec![
            ChatEvent::TextDelta("Hel".into()),
            ChatEvent::TextDelta("lo".into()),
        ];
        for (index, id) in [(0, "toolu_a"), (1, "toolu_b")] {
            events.push(ChatEvent::ToolCallStart {
                index,
                id: id.into(),
                name: "f".into(),
            });
            events.push(ChatEvent::ToolCallArgs {
                index,
                delta: String::new(),
            });
            for piece in ["{\"ci", "ty\":", "\"Pa", "ris\"}"] {
                events.push(ChatEvent::ToolCallArgs {
                    index,
                    delta: piece.into(),
                });
            }
        }
        events.push(ChatEvent::Done {
            stop: ChatStop::ToolUse,
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
            },
        });
        events
    }

    #[test]
    fn a_streamed_turn_is_the_event_sequence_with_no_empty_json_delta() {
        let mut r = Render::new("loong", true);
        let mut bytes = Vec::new();
        for e in events() {
            bytes.extend(r.event(&e));
        }
        bytes.extend(r.finish());
        let text = String::from_utf8(bytes).expect("utf-8");
        let events: Vec<(String, Value)> = text
            .split("\n\n")
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (event, data) = s.split_once('\n').expect("two lines");
                let event = event.strip_prefix("event: ").expect("event").to_string();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").expect("data")).expect("json");
                assert_eq!(data["type"], Value::String(event.clone()));
                (event, data)
            })
            .collect();
        let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            events[2].1["content_block"],
            json!({"type": "text", "text": ""})
        );
        assert_eq!(
            events[6].1["content_block"],
            json!({"type": "tool_use", "id": "toolu_a", "name": "f", "input": {}})
        );
        assert_eq!(events[12].1["index"], 2);
        for (_, data) in &events {
            if data["delta"]["type"] == "input_json_delta" {
                assert_ne!(data["delta"]["partial_json"], "");
            }
        }
        let joined: String = events[13..17]
            .iter()
            .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
            .collect();
        assert_eq!(joined, "{\"city\":\"Paris\"}");
        assert_eq!(
            events[18].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"input_tokens": 10, "output_tokens": 5}})
        );
    }

    /// Events out of order (arguments of a call never started, text after a call, events
    /// after the end) render without a panic and nothing follows the end.
    #[test]
    fn events_out_of_order_render_without_a_panic_and_nothing_follows_the_end() {
        for stream in [true, false] {
            let mut r = Render::new("m", stream);
            r.event(&ChatEvent::ToolCallArgs {
                index: 9,
                delta: "x".into(),
            });
            r.event(&ChatEvent::ToolCallStart {
                index: 0,
                id: "a".into(),
                name: "f".into(),
            });
            r.event(&ChatEvent::TextDelta("after".into()));
            r.event(&ChatEvent::Done {
                stop: ChatStop::EndTurn,
                usage: Usage::default(),
            });
            assert!(r.event(&ChatEvent::TextDelta("late".into())).is_empty());
            let mut o = crate::openai::Render::new("m", stream);
            o.event(&ChatEvent::ToolCallArgs {
                index: 9,
                delta: "x".into(),
            });
            o.event(&ChatEvent::Done {
                stop: ChatStop::EndTurn,
                usage: Usage::default(),
            });
            assert!(o.event(&ChatEvent::TextDelta("late".into())).is_empty());
            let _ = (r.finish(), o.finish());
        }
    }

    #[test]
    fn a_turn_not_streamed_is_one_message_with_its_blocks_and_usage() {
        let mut r = Render::new("loong", false);
        for e in events() {
            assert!(r.event(&e).is_empty());
        }
        let body: Value = serde_json::from_slice(&r.finish()).expect("json");
        assert_eq!(body["type"], "message");
        assert_eq!(body["stop_reason"], "tool_use");
        assert_eq!(
            body["content"],
            json!([
                {"type": "text", "text": "Hello"},
                {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_b", "name": "f", "input": {"city": "Paris"}}
            ])
        );
        assert_eq!(
            body["usage"],
            json!({"input_tokens": 10, "output_tokens": 5})
        );

        let mut r = Render::new("loong", true);
        let bytes = r.event(&ChatEvent::Failed {
            kind: "exhausted".into(),
            message: "the provider failed".into(),
        });
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(text.starts_with("event: error\ndata: "), "{text}");
        let body: Value = serde_json::from_slice(&error_body(413, "too big")).expect("json");
        assert_eq!(
            body,
            json!({"type": "error", "error": {"type": "request_too_large", "message": "too big"}})
        );
    }
}
