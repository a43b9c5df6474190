//! OpenAI chat completions (`POST /v1/chat/completions`).
//!
//! Request: `messages` with roles `system`/`developer` (joined into the system prompt),
//! `user`, `assistant` (text and `tool_calls`) and `tool` (a result, by `tool_call_id`);
//! content as a string or `text` parts; `tools` of `type: "function"`; `tool_choice`
//! (`"none"` offers the caller's tools to nobody, `"auto"`, `"required"` and a named
//! function offer them: the agent does not force a call); `stream`,
//! `stream_options.include_usage`; `max_completion_tokens` (or the older `max_tokens`).
//! Anything else (images, audio, `n` above 1) is refused naming the field.
//!
//! Response: a `chat.completion` object, or `chat.completion.chunk` events: the first
//! carries `delta.role`, text as `delta.content`, a tool call as `delta.tool_calls` (its
//! `id`, `type` and `function.name` with empty `arguments` first, then `arguments` pieces
//! by `index`), then the `finish_reason` chunk (`stop`, `tool_calls`, `length`), the usage
//! chunk when asked for, and `data: [DONE]`.

use loong_agent_wire::{
    chat::{ChatEvent, ChatMessage, ChatRequest, ChatStop, ChatToolCall},
    types::{ToolSpec, Usage},
};
use serde::Serialize;

use crate::{bounded, fresh_id, json, object_at, parse_object, unix_now, CompatError, Fields};

/// A parsed request and the rendering options it asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub request: ChatRequest,
    /// `stream_options.include_usage`: a last chunk with the usage, before `[DONE]`.
    pub include_usage: bool,
}

/// Parses a `/v1/chat/completions` body.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, CompatError> {
    parse(body).map(|p| p.request)
}

/// Parses a `/v1/chat/completions` body, with its rendering options.
pub fn parse(body: &[u8]) -> Result<Parsed, CompatError> {
    let map = parse_object(body)?;
    let f = Fields::new("", &map);
    let model = f.str("model")?.map(str::to_owned);
    if let Some(n) = f.u32("n")? {
        if n != 1 {
            return Err(CompatError::field("n", "only one choice is made: send 1"));
        }
    }
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.object("stream_options")? {
        Some(o) => o.bool("include_usage")?.unwrap_or(false),
        None => false,
    };
    let max_tokens = match f.u32("max_completion_tokens")? {
        Some(n) => Some(n),
        None => f.u32("max_tokens")?,
    };
    let messages = f
        .array("messages")?
        .ok_or_else(|| CompatError::field("messages", "is required"))?;
    let mut system: Vec<String> = Vec::new();
    let mut history = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let m = object_at(format!("messages[{i}]"), m)?;
        let role = m.required_str("role")?;
        match role {
            "system" | "developer" => system.push(content_text(&m, "content")?),
            "user" => history.push(ChatMessage::User {
                text: content_text(&m, "content")?,
            }),
            "assistant" => {
                let text = content_text(&m, "content")?;
                let mut tool_calls = Vec::new();
                for (j, c) in m.array("tool_calls")?.into_iter().flatten().enumerate() {
                    let c = object_at(m.name(&format!("tool_calls[{j}]")), c)?;
                    match c.str("type")? {
                        None | Some("function") => {}
                        Some(other) => {
                            return Err(CompatError::field(
                                c.name("type"),
                                format!("{other:?} is not supported: send \"function\""),
                            ))
                        }
                    }
                    let function = c
                        .object("function")?
                        .ok_or_else(|| CompatError::field(c.name("function"), "is required"))?;
                    tool_calls.push(ChatToolCall {
                        id: c.required_str("id")?.to_owned(),
                        name: function.required_str("name")?.to_owned(),
                        arguments: function.str("arguments")?.unwrap_or("").to_owned(),
                    });
                }
                history.push(ChatMessage::Assistant { text, tool_calls });
            }
            "tool" => history.push(ChatMessage::ToolResult {
                call_id: m.required_str("tool_call_id")?.to_owned(),
                content: content_text(&m, "content")?,
                is_error: false,
            }),
            other => {
                return Err(CompatError::field(
                    m.name("role"),
                    format!(
                    "{other:?} is not supported: send system, developer, user, assistant or tool"
                ),
                ))
            }
        }
    }
    let mut caller_tools = Vec::new();
    for (i, t) in f.array("tools")?.into_iter().flatten().enumerate() {
        let t = object_at(format!("tools[{i}]"), t)?;
        match t.required_str("type")? {
            "function" => {}
            other => {
                return Err(CompatError::field(
                    t.name("type"),
                    format!("{other:?} is not supported: send \"function\""),
                ))
            }
        }
        let function = t
            .object("function")?
            .ok_or_else(|| CompatError::field(t.name("function"), "is required"))?;
        let parameters = match function.get("parameters") {
            None => serde_json::json!({"type": "object", "properties": {}}),
            Some(p @ serde_json::Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(CompatError::field(
                    function.name("parameters"),
                    "must be a JSON schema object",
                ))
            }
        };
        caller_tools.push(ToolSpec {
            name: function.required_str("name")?.to_owned(),
            description: function.str("description")?.unwrap_or("").to_owned(),
            parameters,
        });
    }
    match f.get("tool_choice") {
        None => {}
        Some(serde_json::Value::String(s)) => match s.as_str() {
            "none" => caller_tools.clear(),
            "auto" | "required" => {}
            other => {
                return Err(CompatError::field(
                    "tool_choice",
                    format!("{other:?} is not supported: send none, auto, required or a function"),
                ))
            }
        },
        Some(v) => {
            let choice = object_at("tool_choice".into(), v)?;
            let name = choice
                .object("function")?
                .ok_or_else(|| CompatError::field("tool_choice.function", "is required"))?
                .required_str("name")?;
            if !caller_tools.iter().any(|t| t.name == name) {
                return Err(CompatError::field(
                    "tool_choice.function.name",
                    format!("{name:?} is not one of the request's tools"),
                ));
            }
        }
    }
    let request = ChatRequest {
        model,
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages: history,
        caller_tools,
        stream,
        max_tokens,
    };
    Ok(Parsed {
        request: bounded(request)?,
        include_usage,
    })
}

/// A message's `content`: a string, null, or an array of `text` parts (joined).
fn content_text(m: &Fields<'_>, key: &str) -> Result<String, CompatError> {
    match m.get(key) {
        None => Ok(String::new()),
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let p = object_at(m.name(&format!("{key}[{j}]")), p)?;
                match p.required_str("type")? {
                    "text" => text.push_str(p.required_str("text")?),
                    other => {
                        return Err(CompatError::field(
                            p.name("type"),
                            format!("{other:?} parts are not supported: send text"),
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(CompatError::field(
            m.name(key),
            "must be a string or an array of text parts",
        )),
    }
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: UsageBody,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: ResponseMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct ResponseMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<()>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tool_calls: &'a [FullCall],
}

#[derive(Serialize)]
struct FullCall {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FullFunction,
}

#[derive(Serialize)]
struct FullFunction {
    name: String,
    arguments: String,
}

#[derive(Serialize, Clone, Copy)]
struct UsageBody {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl From<Usage> for UsageBody {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            total_tokens: u.input_tokens.saturating_add(u.output_tokens),
        }
    }
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageBody>>,
}

#[derive(Serialize)]
struct ChunkChoice {
    index: u32,
    delta: Delta,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<CallDelta>,
}

#[derive(Serialize)]
struct CallDelta {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta,
}

#[derive(Serialize)]
struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    arguments: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<()>,
    code: Option<&'a str>,
}

/// The `error.type` OpenAI gives a status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "server_error",
    }
}

/// An error answer's body: `{"error": {"message", "type", "param", "code"}}`.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    json(&ErrorBody {
        error: ErrorDetail {
            message,
            kind: error_type(status),
            param: None,
            code: None,
        },
    })
}

fn finish_reason(stop: ChatStop) -> &'static str {
    match stop {
        ChatStop::EndTurn => "stop",
        ChatStop::ToolUse => "tool_calls",
        // A turn cut at its step limit is an answer cut short, as one out of tokens is.
        ChatStop::MaxTokens | ChatStop::StepLimit => "length",
    }
}

/// Renders one turn's events as a `/v1/chat/completions` response.
#[derive(Debug)]
pub struct Render {
    id: String,
    created: u64,
    model: String,
    stream: bool,
    include_usage: bool,
    started: bool,
    text: String,
    calls: Vec<(u32, String, String, String)>,
    done: Option<(ChatStop, Usage)>,
    failed: Option<(String, String)>,
}

impl Render {
    /// A response for `model`, streamed (server-sent events) or one JSON body.
    pub fn new(model: &str, stream: bool) -> Self {
        Self {
            id: fresh_id("chatcmpl-"),
            created: unix_now(),
            model: model.to_owned(),
            stream,
            include_usage: false,
            started: false,
            text: String::new(),
            calls: Vec::new(),
            done: None,
            failed: None,
        }
    }

    /// Sends the usage chunk before `[DONE]` (`stream_options.include_usage`), and
    /// `"usage": null` on every other chunk, as OpenAI does.
    pub fn include_usage(mut self, include: bool) -> Self {
        self.include_usage = include;
        self
    }

    /// The HTTP status of a response that is not streamed: 200, or 502 when the turn failed.
    pub fn status(&self) -> u16 {
        if self.failed.is_some() {
            502
        } else {
            200
        }
    }

    fn chunk(&self, delta: Delta, finish: Option<&'static str>) -> Vec<u8> {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: finish,
            }],
            usage: self.include_usage.then_some(None),
        };
        sse(&json(&chunk))
    }

    /// The first chunk (`delta.role`), once.
    fn start(&mut self) -> Vec<u8> {
        if !self.stream || self.started {
            return Vec::new();
        }
        self.started = true;
        self.chunk(
            Delta {
                role: Some("assistant"),
                content: Some(String::new()),
                ..Default::default()
            },
            None,
        )
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
                    out.extend(self.chunk(
                        Delta {
                            content: Some(t.clone()),
                            ..Default::default()
                        },
                        None,
                    ));
                }
            }
            ChatEvent::ToolCallStart { index, id, name } => {
                self.calls
                    .push((*index, id.clone(), name.clone(), String::new()));
                if self.stream {
                    out.extend(self.chunk(
                        Delta {
                            tool_calls: vec![CallDelta {
                                index: *index,
                                id: Some(id.clone()),
                                kind: Some("function"),
                                function: FunctionDelta {
                                    name: Some(name.clone()),
                                    arguments: String::new(),
                                },
                            }],
                            ..Default::default()
                        },
                        None,
                    ));
                }
            }
            ChatEvent::ToolCallArgs { index, delta } => {
                if let Some(call) = self.calls.iter_mut().find(|c| c.0 == *index) {
                    call.3.push_str(delta);
                }
                if self.stream && !delta.is_empty() {
                    out.extend(self.chunk(
                        Delta {
                            tool_calls: vec![CallDelta {
                                index: *index,
                                id: None,
                                kind: None,
                                function: FunctionDelta {
                                    name: None,
                                    arguments: delta.clone(),
                                },
                            }],
                            ..Default::default()
                        },
                        None,
                    ));
                }
            }
            ChatEvent::Done { stop, usage } => {
                self.done = Some((*stop, *usage));
                if self.stream {
                    out.extend(self.chunk(Delta::default(), Some(finish_reason(*stop))));
                    if self.include_usage {
                        let chunk = Chunk {
                            id: &self.id,
                            object: "chat.completion.chunk",
                            created: self.created,
                            model: &self.model,
                            choices: Vec::new(),
                            usage: Some(Some((*usage).into())),
                        };
                        out.extend(sse(&json(&chunk)));
                    }
                }
            }
            ChatEvent::Failed { kind, message } => {
                self.failed = Some((kind.clone(), message.clone()));
                if self.stream {
                    // The SDKs raise an API error on a chunk that carries `error`.
                    out.extend(sse(&json(&ErrorBody {
                        error: ErrorDetail {
                            message,
                            kind: "server_error",
                            param: None,
                            code: Some(kind),
                        },
                    })));
                }
            }
        }
        out
    }

    /// The end: `data: [DONE]` when streamed, else the `chat.completion` body (or the error
    /// body when the turn failed: see [`status`](Self::status)).
    pub fn finish(self) -> Vec<u8> {
        if self.stream {
            return b"data: [DONE]\n\n".to_vec();
        }
        if let Some((_, message)) = &self.failed {
            return error_body(502, message);
        }
        let (stop, usage) = self.done.unwrap_or((ChatStop::EndTurn, Usage::default()));
        let calls: Vec<FullCall> = self
            .calls
            .into_iter()
            .map(|(_, id, name, arguments)| FullCall {
                id,
                kind: "function",
                function: FullFunction { name, arguments },
            })
            .collect();
        let content = if self.text.is_empty() && !calls.is_empty() {
            None
        } else {
            Some(self.text.as_str())
        };
        json(&Completion {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.model,
            choices: [Choice {
                index: 0,
                message: ResponseMessage {
                    role: "assistant",
                    content,
                    refusal: None,
                    tool_calls: &calls,
                },
                logprobs: None,
                finish_reason: finish_reason(stop),
            }],
            usage: usage.into(),
        })
    }
}

fn sse(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn parse_json(v: Value) -> Result<Parsed, CompatError> {
        parse(v.to_string().as_bytes())
    }

    #[test]
    fn a_request_with_tools_tool_calls_and_results_is_parsed_whole() {
        let parsed = parse_json(json!({
            "model": "gpt-x",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "weather "}, {"type": "text", "text": "in Paris?"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "the weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "auto",
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": 50,
            "max_completion_tokens": 100,
            "temperature": 0.2
        }))
        .expect("parsed");
        assert!(parsed.include_usage);
        let r = parsed.request;
        assert_eq!(r.model.as_deref(), Some("gpt-x"));
        assert_eq!(r.system.as_deref(), Some("be brief"));
        assert!(r.stream);
        assert_eq!(r.max_tokens, Some(100));
        assert_eq!(
            r.messages,
            vec![
                ChatMessage::User {
                    text: "weather in Paris?".into()
                },
                ChatMessage::Assistant {
                    text: String::new(),
                    tool_calls: vec![ChatToolCall {
                        id: "call_1".into(),
                        name: "get_weather".into(),
                        arguments: "{\"city\":\"Paris\"}".into()
                    }]
                },
                ChatMessage::ToolResult {
                    call_id: "call_1".into(),
                    content: "sunny".into(),
                    is_error: false
                },
            ]
        );
        assert_eq!(r.caller_tools.len(), 1);
        assert_eq!(r.caller_tools[0].name, "get_weather");
        assert_eq!(
            r.caller_tools[0].parameters["properties"]["city"]["type"],
            "string"
        );
    }

    #[test]
    fn a_hostile_or_unsupported_request_is_a_400_naming_the_field() {
        let cases = [
            (json!({"model": "m"}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (
                json!({"messages": [{"role": "robot", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "retrieval"}]}),
                "tools[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}),
                "tools[0].function.parameters",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
                "max_tokens",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
                "stream",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "n": 2}),
                "n",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
                "tool_choice.function.name",
            ),
            (json!({"messages": []}), "messages"),
            (
                json!({"model": "m".repeat(300), "messages": [{"role": "user", "content": "x"}]}),
                "model",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": ""}}]}),
                "tool name",
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
        assert!(matches!(parse(b"{"), Err(CompatError::NotJson(_))));
        // Positive control: tool_choice none drops the caller's tools; a named one is kept.
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let none = parse_json(json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": "none"}))
            .expect("parsed");
        assert!(none.request.caller_tools.is_empty());
        let named = parse_json(json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": {"type": "function", "function": {"name": "f"}}}))
            .expect("parsed");
        assert_eq!(named.request.caller_tools.len(), 1);
    }

    fn events() -> Vec<ChatEvent> {
        let mut events = vec![
            ChatEvent::TextDelta("Hel".into()),
            ChatEvent::TextDelta("lo".into()),
            ChatEvent::ToolCallStart {
                index: 0,
                id: "call_a".into(),
                name: "f".into(),
            },
        ];
        for piece in ["{\"ci", "ty\":", "\"Pa", "ris\"}"] {
            events.push(ChatEvent::ToolCallArgs {
                index: 0,
                delta: piece.into(),
            });
        }
        events.push(ChatEvent::ToolCallArgs {
            index: 0,
            delta: String::new(),
        });
        events.push(ChatEvent::Done {
            stop: ChatStop::ToolUse,
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
            },
        });
        events
    }

    fn sse_data(bytes: &[u8]) -> Vec<String> {
        String::from_utf8(bytes.to_vec())
            .expect("utf-8")
            .split("\n\n")
            .filter(|s| !s.is_empty())
            .map(|s| s.strip_prefix("data: ").expect("a data line").to_string())
            .collect()
    }

    #[test]
    fn a_streamed_turn_is_role_content_tool_call_deltas_finish_usage_and_done() {
        let mut r = Render::new("loong", true).include_usage(true);
        let mut bytes = Vec::new();
        for e in events() {
            bytes.extend(r.event(&e));
        }
        bytes.extend(r.finish());
        let data = sse_data(&bytes);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).expect("json"))
            .collect();
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"));
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "Hel"}));
        assert_eq!(
            chunks[3]["choices"][0]["delta"]["tool_calls"][0],
            json!({"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}})
        );
        let args: String = chunks
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(args, "{\"city\":\"Paris\"}");
        // No empty argument piece is sent (4 pieces, 1 start).
        assert_eq!(
            chunks
                .iter()
                .filter(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
                .count(),
            5
        );
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(finish["usage"], Value::Null);
        let usage = &chunks[chunks.len() - 1];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
        );
        // Without include_usage, no usage chunk and no usage key.
        let mut r = Render::new("loong", true);
        let mut bytes = Vec::new();
        for e in events() {
            bytes.extend(r.event(&e));
        }
        let data = sse_data(&bytes);
        let last: Value = serde_json::from_str(data.last().expect("a chunk")).expect("json");
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
        assert!(last.get("usage").is_none());
    }

    #[test]
    fn a_turn_not_streamed_is_one_completion_with_its_tool_calls_and_usage() {
        let mut r = Render::new("loong", false);
        for e in events() {
            assert!(r.event(&e).is_empty());
        }
        assert_eq!(r.status(), 200);
        let body: Value = serde_json::from_slice(&r.finish()).expect("json");
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            body["choices"][0]["message"],
            json!({"role": "assistant", "content": "Hello", "refusal": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{\"city\":\"Paris\"}"}}
            ]})
        );
        assert_eq!(body["usage"]["total_tokens"], 15);

        let mut r = Render::new("loong", false);
        r.event(&ChatEvent::Failed {
            kind: "exhausted".into(),
            message: "the provider failed".into(),
        });
        assert_eq!(r.status(), 502);
        let body: Value = serde_json::from_slice(&r.finish()).expect("json");
        assert_eq!(body["error"]["message"], "the provider failed");
        let body: Value = serde_json::from_slice(&error_body(401, "no token")).expect("json");
        assert_eq!(
            body,
            json!({"error": {"message": "no token", "type": "authentication_error", "param": null, "code": null}})
        );
    }
}
