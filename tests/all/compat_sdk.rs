//! The gateway's wire formats against the official `openai` and `anthropic` Python SDKs: a
//! small HTTP server in the test answers `/v1/chat/completions` and `/v1/messages` through
//! `loong-compat`'s parsers and renderers with scripted chat events (text deltas, a tool
//! call whose arguments arrive in 8 pieces, two tool calls in one turn, usage), and each SDK,
//! streaming and not, with caller tools, parses every event and rebuilds the calls'
//! arguments exactly; its second turn, with the tool results, is parsed back whole.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    sync::{Arc, Mutex},
    thread,
};

use loong_agent_wire::{
    chat::{ChatEvent, ChatMessage, ChatRequest, ChatStop},
    types::Usage,
};
use loong_compat::{anthropic, openai};
use serde_json::{json, Value};

use crate::support::skip;

/// Where `.ci/run` installs the SDKs (scripts/install-mcp-servers).
const VENV_PYTHON: &str = "/opt/loong-mcp/venv/bin/python3";
/// The largest request head the test server reads.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// The weather call's arguments, and the 8 pieces they arrive in.
const WEATHER_ARGS: &str = r#"{"city": "Paris", "unit": "celsius", "days": [1, 2]}"#;
/// The time call's arguments (2 pieces, after an empty one that must not reach the wire).
const TIME_ARGS: &str = r#"{"tz":"Europe/Paris"}"#;

/// One request the server saw: its path, its body, and what the parser made of it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    parsed: Result<ChatRequest, String>,
}

/// The events of a turn: with tools and no result yet, text then two caller tool calls;
/// after the results, an answer naming them.
fn script(req: &ChatRequest) -> Vec<ChatEvent> {
    let asks_failure = req
        .messages
        .iter()
        .any(|m| matches!(m, ChatMessage::User { text } if text.contains("FAIL")));
    if asks_failure {
        return vec![
            ChatEvent::TextDelta("partial".into()),
            ChatEvent::Failed {
                kind: "exhausted".into(),
                message: "the provider failed".into(),
            },
        ];
    }
    if let Some(ChatMessage::ToolResult { .. }) = req.messages.last() {
        let results: Vec<&str> = req
            .messages
            .iter()
            .filter_map(|m| match m {
                ChatMessage::ToolResult { content, .. } => Some(content.as_str()),
                _ => None,
            })
            .collect();
        return vec![
            ChatEvent::TextDelta("Done: ".into()),
            ChatEvent::TextDelta(results.join("; ")),
            ChatEvent::Done {
                stop: ChatStop::EndTurn,
                usage: Usage {
                    input_tokens: 20,
                    output_tokens: 5,
                },
            },
        ];
    }
    let mut events = vec![
        ChatEvent::TextDelta("Let me ".into()),
        ChatEvent::TextDelta("check.".into()),
        ChatEvent::ToolCallStart {
            index: 0,
            id: "call_w".into(),
            name: "get_weather".into(),
        },
    ];
    let step = WEATHER_ARGS.len().div_ceil(8);
    for piece in WEATHER_ARGS.as_bytes().chunks(step) {
        events.push(ChatEvent::ToolCallArgs {
            index: 0,
            delta: String::from_utf8(piece.to_vec()).expect("ascii"),
        });
    }
    events.push(ChatEvent::ToolCallStart {
        index: 1,
        id: "call_t".into(),
        name: "get_time".into(),
    });
    events.push(ChatEvent::ToolCallArgs {
        index: 1,
        delta: String::new(),
    });
    let (a, b) = TIME_ARGS.split_at(7);
    for piece in [a, b] {
        events.push(ChatEvent::ToolCallArgs {
            index: 1,
            delta: piece.into(),
        });
    }
    events.push(ChatEvent::Done {
        stop: ChatStop::ToolUse,
        usage: Usage {
            input_tokens: 12,
            output_tokens: 34,
        },
    });
    events
}

fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let (mut length, mut head) = (0usize, line.len());
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        head += h.len();
        if head > MAX_HEAD_BYTES {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((path, body))
}

fn answer(stream: &mut TcpStream, seen: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
    let Some((path, body)) = read_request(stream) else {
        return Ok(());
    };
    if path.starts_with("/v1/models") {
        let body = loong_compat::models_body(&["loong".into(), "loong-2".into()]);
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        return stream.write_all(&body);
    }
    let parsed = match path.as_str() {
        "/v1/chat/completions" => openai::parse(&body).map(|p| (p.request, p.include_usage)),
        "/v1/messages" => anthropic::parse_request(&body).map(|r| (r, false)),
        _ => Err(loong_compat::CompatError::NotJson("no such path".into())),
    };
    seen.lock().expect("lock").push(Seen {
        path: path.clone(),
        parsed: parsed
            .as_ref()
            .map(|(r, _)| r.clone())
            .map_err(ToString::to_string),
    });
    let openai_path = path == "/v1/chat/completions";
    let (req, include_usage) = match parsed {
        Ok(p) => p,
        Err(e) => {
            let body = if openai_path {
                openai::error_body(e.status(), &e.to_string())
            } else {
                anthropic::error_body(e.status(), &e.to_string())
            };
            let head = format!(
                "HTTP/1.1 {} Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                e.status(),
                body.len()
            );
            stream.write_all(head.as_bytes())?;
            return stream.write_all(&body);
        }
    };
    let events = script(&req);
    if req.stream {
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n")?;
    }
    let mut body = Vec::new();
    let status;
    if openai_path {
        let mut r = openai::Render::new("loong", req.stream).include_usage(include_usage);
        for e in &events {
            let bytes = r.event(e);
            stream.write_all(&bytes)?;
            stream.flush()?;
        }
        status = r.status();
        body.extend(r.finish());
    } else {
        let mut r = anthropic::Render::new("loong", req.stream);
        for e in &events {
            let bytes = r.event(e);
            stream.write_all(&bytes)?;
            stream.flush()?;
        }
        status = r.status();
        body.extend(r.finish());
    }
    if req.stream {
        return stream.write_all(&body);
    }
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)
}

/// Serves in threads until the test ends; returns the port and what it saw.
fn serve() -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let shared = seen.clone();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = shared.clone();
            thread::spawn(move || {
                let mut stream = stream;
                let _ = answer(&mut stream, &seen);
            });
        }
    });
    (port, seen)
}

/// The SDKs' side: every call, its events parsed by the SDK, printed as one JSON object.
const CLIENTS: &str = r#"
import json, sys
import openai, anthropic

port = sys.argv[1]
out = {"openai": {}, "anthropic": {}}
schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
tz = {"type": "object", "properties": {"tz": {"type": "string"}}}

oc = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0)
ot = [
    {"type": "function", "function": {"name": "get_weather", "description": "the weather", "parameters": schema}},
    {"type": "function", "function": {"name": "get_time", "description": "the time", "parameters": tz}},
]
msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "weather and time in Paris?"}]
r = oc.chat.completions.create(model="loong", messages=msgs, tools=ot, max_completion_tokens=300)
m = r.choices[0].message
out["openai"]["plain"] = {
    "finish": r.choices[0].finish_reason, "text": m.content,
    "calls": [[c.id, c.function.name, c.function.arguments] for c in m.tool_calls],
    "usage": [r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens],
}
msgs2 = msgs + [m.model_dump(exclude_none=True)] + [
    {"role": "tool", "tool_call_id": c.id, "content": "result of " + c.function.name} for c in m.tool_calls
]
r2 = oc.chat.completions.create(model="loong", messages=msgs2, tools=ot)
out["openai"]["second"] = [r2.choices[0].finish_reason, r2.choices[0].message.content]

calls, text, finish, usage, roles = {}, "", None, None, []
for ch in oc.chat.completions.create(model="loong", messages=msgs, tools=ot, stream=True,
                                     stream_options={"include_usage": True}):
    if ch.usage:
        usage = [ch.usage.prompt_tokens, ch.usage.completion_tokens]
    for c in ch.choices:
        d = c.delta
        if d.role:
            roles.append(d.role)
        if d.content:
            text += d.content
        for tc in d.tool_calls or []:
            e = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
            if tc.id:
                e["id"] = tc.id
            if tc.function and tc.function.name:
                e["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                e["args"] += tc.function.arguments
        if c.finish_reason:
            finish = c.finish_reason
out["openai"]["stream"] = {
    "roles": roles, "text": text, "finish": finish, "usage": usage,
    "calls": [[calls[i]["id"], calls[i]["name"], calls[i]["args"]] for i in sorted(calls)],
}
# The SDK's own accumulator, which checks each chunk's shape as it folds it.
helper = getattr(oc.chat.completions, "stream", None) or oc.beta.chat.completions.stream
with helper(model="loong", messages=msgs, tools=ot) as st:
    final = st.get_final_completion()
fm = final.choices[0].message
out["openai"]["helper"] = [[c.id, c.function.name, c.function.arguments] for c in fm.tool_calls]

ac = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="sk-ant-test", max_retries=0)
at = [
    {"name": "get_weather", "description": "the weather", "input_schema": schema},
    {"name": "get_time", "description": "the time", "input_schema": tz},
]
am = [{"role": "user", "content": "weather and time in Paris?"}]
r = ac.messages.create(model="loong", max_tokens=300, system="be brief", messages=am, tools=at)
out["anthropic"]["plain"] = {
    "stop": r.stop_reason,
    "blocks": [[b.type, getattr(b, "text", None), getattr(b, "id", None), getattr(b, "name", None), getattr(b, "input", None)] for b in r.content],
    "usage": [r.usage.input_tokens, r.usage.output_tokens],
}
am2 = am + [
    {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in r.content]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": b.id, "content": "result of " + b.name}
        for b in r.content if b.type == "tool_use"
    ]},
]
r2 = ac.messages.create(model="loong", max_tokens=300, system="be brief", messages=am2, tools=at)
out["anthropic"]["second"] = [r2.stop_reason, r2.content[0].text]

with ac.messages.stream(model="loong", max_tokens=300, system="be brief", messages=am, tools=at) as st:
    kinds = [ev.type for ev in st]
    final = st.get_final_message()
out["anthropic"]["helper"] = {
    "kinds": kinds, "stop": final.stop_reason,
    "blocks": [[b.type, getattr(b, "text", None), getattr(b, "id", None), getattr(b, "input", None)] for b in final.content],
    "usage": [final.usage.input_tokens, final.usage.output_tokens],
}
partial, names = {}, []
for ev in ac.messages.create(model="loong", max_tokens=300, messages=am, tools=at, stream=True):
    names.append(ev.type)
    if ev.type == "content_block_delta" and ev.delta.type == "input_json_delta":
        partial[ev.index] = partial.get(ev.index, "") + ev.delta.partial_json
out["anthropic"]["raw"] = {"names": names, "partial": [json.loads(partial[i]) for i in sorted(partial)]}

def failure(call):
    try:
        call()
    except Exception as e:
        return [type(e).__name__, "the provider failed" in str(e)]
    return None

fail = [{"role": "user", "content": "FAIL please"}]
out["failures"] = {
    "openai_plain": failure(lambda: oc.chat.completions.create(model="loong", messages=fail)),
    "openai_stream": failure(lambda: list(oc.chat.completions.create(model="loong", messages=fail, stream=True))),
    "anthropic_plain": failure(lambda: ac.messages.create(model="loong", max_tokens=10, messages=fail)),
    "anthropic_stream": failure(lambda: list(ac.messages.create(model="loong", max_tokens=10, messages=fail, stream=True))),
}
out["models"] = {
    "openai": [m.id for m in oc.models.list()],
    "anthropic": [m.id for m in ac.models.list()],
}
print(json.dumps(out))
"#;

/// A Python with both SDKs, or `None`.
fn python() -> Option<&'static str> {
    [VENV_PYTHON].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import openai, anthropic"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn the_official_sdks_parse_every_event_and_rebuild_the_tool_calls_exactly() {
    let Some(python) = python() else {
        return skip(
            "compat_sdk",
            "the openai and anthropic SDKs are not in /opt/loong-mcp/venv (scripts/install-mcp-servers installs them)",
        );
    };
    let (port, seen) = serve();
    let run = Command::new(python)
        .args(["-c", CLIENTS, &port.to_string()])
        .output()
        .expect("python ran");
    let seen = seen.lock().expect("lock").clone();
    assert!(
        run.status.success(),
        "the SDKs failed:\n{}\nrequests seen: {seen:#?}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out: Value = serde_json::from_slice(&run.stdout).expect("the SDKs' report is JSON");
    let weather: Value = serde_json::from_str(WEATHER_ARGS).expect("json");
    let time: Value = serde_json::from_str(TIME_ARGS).expect("json");
    let calls = json!([
        ["call_w", "get_weather", WEATHER_ARGS],
        ["call_t", "get_time", TIME_ARGS]
    ]);

    let o = &out["openai"];
    assert_eq!(o["plain"]["finish"], "tool_calls");
    assert_eq!(o["plain"]["text"], "Let me check.");
    assert_eq!(o["plain"]["calls"], calls);
    assert_eq!(o["plain"]["usage"], json!([12, 34, 46]));
    assert_eq!(
        o["second"],
        json!(["stop", "Done: result of get_weather; result of get_time"])
    );
    assert_eq!(o["stream"]["roles"], json!(["assistant"]));
    assert_eq!(o["stream"]["text"], "Let me check.");
    assert_eq!(o["stream"]["finish"], "tool_calls");
    assert_eq!(o["stream"]["usage"], json!([12, 34]));
    assert_eq!(o["stream"]["calls"], calls);
    assert_eq!(o["helper"], calls);

    let a = &out["anthropic"];
    assert_eq!(a["plain"]["stop"], "tool_use");
    assert_eq!(
        a["plain"]["blocks"],
        json!([
            ["text", "Let me check.", null, null, null],
            ["tool_use", null, "call_w", "get_weather", weather],
            ["tool_use", null, "call_t", "get_time", time]
        ])
    );
    assert_eq!(a["plain"]["usage"], json!([12, 34]));
    assert_eq!(
        a["second"],
        json!([
            "end_turn",
            "Done: result of get_weather; result of get_time"
        ])
    );
    assert_eq!(a["helper"]["stop"], "tool_use");
    assert_eq!(
        a["helper"]["blocks"],
        json!([
            ["text", "Let me check.", null, null],
            ["tool_use", null, "call_w", weather],
            ["tool_use", null, "call_t", time]
        ])
    );
    assert_eq!(a["helper"]["usage"], json!([12, 34]));
    assert_eq!(a["raw"]["partial"], json!([weather, time]));
    let names = a["raw"]["names"].as_array().expect("names");
    assert_eq!(names.first(), Some(&json!("message_start")));
    assert_eq!(names.last(), Some(&json!("message_stop")));

    // A turn that fails is an error in each SDK, streamed (after text) or not.
    let f = &out["failures"];
    assert_eq!(
        f["openai_plain"],
        json!(["InternalServerError", true]),
        "{f}"
    );
    assert_eq!(f["openai_stream"], json!(["APIError", true]), "{f}");
    assert_eq!(
        f["anthropic_plain"],
        json!(["InternalServerError", true]),
        "{f}"
    );
    assert_eq!(f["anthropic_stream"][1], json!(true), "{f}");
    assert_eq!(out["models"]["openai"], json!(["loong", "loong-2"]));
    assert_eq!(out["models"]["anthropic"], json!(["loong", "loong-2"]));

    // What the server parsed is exactly what the SDKs sent: every request accepted; the
    // caller's tools with their schemas; the second turns' tool calls and results by id.
    let seen: Vec<Seen> = seen
        .into_iter()
        .filter(|s| !matches!(&s.parsed, Ok(r) if r.caller_tools.is_empty()))
        .collect();
    assert_eq!(seen.len(), 8, "{seen:#?}");
    for s in &seen {
        let req = s.parsed.as_ref().expect("every SDK request parses");
        let names: Vec<&str> = req.caller_tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["get_weather", "get_time"], "{}", s.path);
        assert_eq!(req.caller_tools[0].parameters["required"], json!(["city"]));
        assert_eq!(req.system.as_deref().unwrap_or("be brief"), "be brief");
    }
    let second = |path: &str| {
        seen.iter()
            .filter(|s| s.path == path)
            .nth(1)
            .and_then(|s| s.parsed.clone().ok())
            .expect("a second turn")
    };
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let req = second(path);
        let n = req.messages.len();
        assert!(n >= 4, "{path}: {:?}", req.messages);
        let ChatMessage::Assistant { text, tool_calls } = &req.messages[n - 3] else {
            panic!("{path}: the assistant's turn: {:?}", req.messages);
        };
        assert_eq!(text, "Let me check.");
        let ids: Vec<(&str, &str)> = tool_calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str()))
            .collect();
        assert_eq!(ids, [("call_w", "get_weather"), ("call_t", "get_time")]);
        let args: Vec<Value> = tool_calls
            .iter()
            .map(|c| serde_json::from_str(&c.arguments).expect("json"))
            .collect();
        assert_eq!(args, [weather.clone(), time.clone()]);
        assert_eq!(
            req.messages[n - 2..],
            [
                ChatMessage::ToolResult {
                    call_id: "call_w".into(),
                    content: "result of get_weather".into(),
                    is_error: false
                },
                ChatMessage::ToolResult {
                    call_id: "call_t".into(),
                    content: "result of get_time".into(),
                    is_error: false
                }
            ]
        );
    }
    let first = seen[0].parsed.clone().expect("parsed");
    assert_eq!(first.max_tokens, Some(300));
    assert!(!first.stream);
}
