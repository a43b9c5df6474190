//! The gateway's chat routes end to end: loongd with a local provider speaking OpenAI's wire
//! protocol, the gateway worker serving `/v1/chat/completions` and `/v1/messages`, and the
//! official `openai` and `anthropic` Python SDKs as the callers: a caller's tool called by
//! the model comes back to the SDK with its arguments rebuilt exactly (streamed and not), a
//! Loong tool runs inside and is audited, a token without `tool.invoke:agent.turn` is a 403
//! and no token a 401, each read by the SDK as its own error type.

use std::{fs, process::Command};

use crate::{
    agent::{text_answer, tool_answer, Provider},
    gateway::{free_port, http, wait_for_gateway},
    kernel_calls::{issue, json, trail},
    support::{skip, text, Home},
    workers::{detail, install_examples},
};

const VENV_PYTHON: &str = "/opt/loong-mcp/venv/bin/python3";
const ASK: &str = "tool.invoke:agent.turn";

/// The client: one call per argv plan step with the SDK it names; prints what it saw.
const CLIENT: &str = r#"
import json, sys
import openai, anthropic

base, secret, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
OA_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "the weather in a city",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
AN_TOOLS = [{"name": "get_weather", "description": "the weather in a city",
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]

def oa_client(key, header):
    if header == "basic":
        # No bearer: another scheme in Authorization.
        return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0,
                             default_headers={"Authorization": "Basic dXNlcjpwYXNz"})
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)

def an_client(key, header):
    if header == "x-api-key":
        # The key in x-api-key alone, as Anthropic's SDKs send `api_key` (this one would
        # send it as a bearer: that header is omitted).
        # A wrong api_key: were its Authorization sent, the request would be refused.
        return anthropic.Anthropic(base_url=base, api_key="not-the-key", max_retries=0,
                                   default_headers={"Authorization": anthropic.Omit(), "X-Api-Key": key})
    if header == "basic":
        # No bearer: another scheme in Authorization.
        return anthropic.Anthropic(base_url=base, api_key=key, max_retries=0,
                                   default_headers={"Authorization": "Basic dXNlcjpwYXNz"})
    return anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)

def step(s):
    key = s.get("secret", secret)
    msgs = [{"role": "user", "content": s.get("prompt", "what is the weather in Zurich?")}]
    tools = s.get("tools", True)
    try:
        if s["sdk"] == "openai":
            c = oa_client(key, s.get("header", "bearer"))
            kw = {"model": "test-model", "messages": msgs}
            if tools:
                kw["tools"] = OA_TOOLS
            if s["stream"]:
                text, calls, finish = "", {}, None
                for chunk in c.chat.completions.create(stream=True, **kw):
                    for ch in chunk.choices:
                        if ch.delta.content:
                            text += ch.delta.content
                        for tc in ch.delta.tool_calls or []:
                            cur = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                            if tc.id: cur["id"] = tc.id
                            if tc.function and tc.function.name: cur["name"] += tc.function.name
                            if tc.function and tc.function.arguments: cur["arguments"] += tc.function.arguments
                        if ch.finish_reason: finish = ch.finish_reason
                return {"text": text, "finish": finish,
                        "calls": [{"id": v["id"], "name": v["name"], "arguments": json.loads(v["arguments"])}
                                  for _, v in sorted(calls.items())]}
            r = c.chat.completions.create(**kw)
            m = r.choices[0].message
            return {"text": m.content or "", "finish": r.choices[0].finish_reason,
                    "calls": [{"id": t.id, "name": t.function.name, "arguments": json.loads(t.function.arguments)}
                              for t in m.tool_calls or []]}
        c = an_client(key, s.get("header", "bearer"))
        kw = {"model": "test-model", "max_tokens": 256, "messages": msgs}
        if tools:
            kw["tools"] = AN_TOOLS
        if s["stream"]:
            with c.messages.stream(**kw) as st:
                for _ in st:
                    pass
                m = st.get_final_message()
        else:
            m = c.messages.create(**kw)
        return {"text": "".join(b.text for b in m.content if b.type == "text"), "finish": m.stop_reason,
                "calls": [{"id": b.id, "name": b.name, "arguments": b.input} for b in m.content if b.type == "tool_use"]}
    except (openai.APIStatusError, anthropic.APIStatusError) as e:
        return {"error": type(e).__name__, "status": e.status_code}

print(json.dumps([step(s) for s in plan]))
"#;

fn python() -> Option<&'static str> {
    let ok = Command::new(VENV_PYTHON)
        .args(["-c", "import openai, anthropic"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(VENV_PYTHON)
}

/// Runs the client's plan against the gateway on `port`.
fn client(
    home: &Home,
    py: &str,
    port: u16,
    secret: &str,
    plan: &serde_json::Value,
) -> Vec<serde_json::Value> {
    let script = home.path().join("chat_client.py");
    fs::write(&script, CLIENT).expect("client script");
    let out = Command::new(py)
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(secret)
        .arg(plan.to_string())
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_AUTH_TOKEN")
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "the client failed:\n{}\n{}\n{}",
        text(&out.stderr),
        text(&out.stdout),
        home.log()
    );
    json(&text(&out.stdout))
        .as_array()
        .cloned()
        .expect("a list of results")
}

fn chat_home(provider: &Provider, port: u16) -> Home {
    let home = Home::with_config(&provider.config(&format!(
        "[gateway]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n"
    )));
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\napproval = \"never\"\n",
    )
    .expect("pack");
    install_examples(&home);
    home
}

#[test]
fn gateway_chat_the_official_sdks_get_caller_tool_calls_exactly_and_loong_tools_run_inside() {
    let Some(py) = python() else {
        return skip(
            "gateway chat SDKs",
            &format!("{VENV_PYTHON} cannot import openai and anthropic (`.ci/run` installs them)"),
        );
    };
    let args = serde_json::json!({"city": "Zürich \"old town\"", "days": [1, 2], "units": {"temp": "C", "wind": null}});
    // Four caller-tool calls (each SDK, streamed and not), then, per SDK, a Loong tool
    // (echo) run inside and the answer after it.
    let provider = Provider::start(vec![
        tool_answer("get_weather", &args),
        tool_answer("get_weather", &args),
        tool_answer("get_weather", &args),
        tool_answer("get_weather", &args),
        tool_answer("echo", &serde_json::json!({"text": "from openai"})),
        text_answer("echo said: from openai"),
        tool_answer("echo", &serde_json::json!({"text": "from anthropic"})),
        text_answer("echo said: from anthropic"),
    ]);
    let port = free_port();
    let home = chat_home(&provider, port);
    home.start();
    wait_for_gateway(&home, port);
    let (secret, id) = issue(&home, &[ASK, "tool.invoke:echo"]);
    let plan = serde_json::json!([
        {"sdk": "openai", "stream": false},
        {"sdk": "openai", "stream": true},
        {"sdk": "anthropic", "stream": false},
        {"sdk": "anthropic", "stream": true},
        {"sdk": "openai", "stream": true, "tools": false, "prompt": "ask echo"},
        {"sdk": "anthropic", "stream": false, "tools": false, "prompt": "ask echo"},
    ]);
    let got = client(&home, py, port, &secret, &plan);
    for (n, r) in got.iter().take(4).enumerate() {
        assert!(r.get("error").is_none(), "step {n}: {r}\n{}", home.log());
        let calls = r["calls"].as_array().expect("calls");
        assert_eq!(calls.len(), 1, "step {n}: {r}");
        assert_eq!(calls[0]["name"], "get_weather", "step {n}: {r}");
        assert_eq!(
            calls[0]["arguments"], args,
            "step {n}: the arguments rebuilt exactly: {r}"
        );
        assert!(
            calls[0]["id"].as_str().is_some_and(|i| !i.is_empty()),
            "step {n}: {r}"
        );
        let finish = if n < 2 { "tool_calls" } else { "tool_use" };
        assert_eq!(r["finish"], finish, "step {n}: {r}");
    }
    assert_eq!(got[4]["text"], "echo said: from openai", "{}", got[4]);
    assert_eq!(got[5]["text"], "echo said: from anthropic", "{}", got[5]);
    // The caller's tool went to the model under its own name; echo ran inside, in the
    // token's trail, invoked by a worker in a gateway chat's chain.
    let requests = provider.requests();
    assert!(
        requests[0]["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["function"]["name"] == "get_weather")),
        "{:?}",
        requests[0]
    );
    let records = trail(&home, &id);
    let echoed: Vec<String> = records
        .iter()
        .filter(|r| r["kind"] == "tool.invoked" && detail(r)["tool"] == "echo")
        .map(|r| {
            detail(r)["chain"]["root"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(echoed.len(), 2, "{records:?}");
    assert!(
        echoed.iter().all(|c| c.starts_with("gateway/chat-")),
        "{echoed:?}"
    );
    // A caller tool is never run in Loong.
    assert!(
        !records
            .iter()
            .any(|r| r["kind"] == "tool.invoked" && detail(r)["tool"] == "get_weather"),
        "{records:?}"
    );
}

#[test]
fn gateway_chat_without_the_turn_grant_is_403_and_without_a_token_401_in_each_sdk() {
    let Some(py) = python() else {
        return skip(
            "gateway chat SDKs",
            &format!("{VENV_PYTHON} cannot import openai and anthropic (`.ci/run` installs them)"),
        );
    };
    let provider = Provider::start(vec![text_answer("hello there")]);
    let port = free_port();
    let home = chat_home(&provider, port);
    home.start();
    wait_for_gateway(&home, port);
    let (allowed, _) = issue(&home, &[ASK]);
    // May invoke echo (so the gateway lets it in) but not the turn.
    let (grantless, grantless_id) = issue(&home, &["tool.invoke:echo"]);
    let plan = serde_json::json!([
        {"sdk": "openai", "stream": false, "secret": grantless},
        {"sdk": "openai", "stream": true, "secret": grantless},
        {"sdk": "anthropic", "stream": false, "secret": grantless},
        {"sdk": "anthropic", "stream": true, "secret": grantless},
        {"sdk": "openai", "stream": false, "header": "basic"},
        {"sdk": "anthropic", "stream": false, "header": "basic"},
        // Positive controls: the token with the grant, each SDK.
        {"sdk": "openai", "stream": false, "tools": false},
        {"sdk": "anthropic", "stream": true, "tools": false},
    ]);
    let got = client(&home, py, port, &allowed, &plan);
    for r in &got[..4] {
        assert_eq!(r["status"], 403, "{r}\n{}", home.log());
        assert_eq!(r["error"], "PermissionDeniedError", "{r}");
    }
    for r in &got[4..6] {
        assert_eq!(r["status"], 401, "{r}");
        assert_eq!(r["error"], "AuthenticationError", "{r}");
    }
    for r in &got[6..] {
        assert!(r.get("error").is_none(), "{r}\n{}", home.log());
        assert_eq!(r["text"], "hello there", "{r}");
    }
    // The refusal is the turn's own decision, in the token's trail, made for the gateway
    // worker (its own number as the actor).
    let records = trail(&home, &grantless_id);
    let refused = records
        .iter()
        .find(|r| {
            r["kind"] == "policy.decision"
                && detail(r)["target"] == "agent.turn"
                && detail(r)["allowed"] == false
        })
        .unwrap_or_else(|| panic!("the turn's refusal recorded: {records:?}"));
    let actor = refused["actor"].as_str().unwrap_or_default();
    assert!(
        actor.starts_with("worker:") && actor != "worker:0",
        "{refused}"
    );
    // Nothing reached the provider but the two allowed turns.
    assert_eq!(provider.requests().len(), 2, "{:?}", provider.requests());
}

/// `x-api-key`, the header Anthropic's SDKs send `api_key` in, is the bearer on
/// `/v1/messages` (and only there) when the request has no `Authorization`: the SDK's turn is
/// served, streaming and not, with its caller tools; refused as a bearer is, 403 for a token
/// without the turn's grant and 401 for a made-up key; on `/v1/chat/completions` it is no
/// bearer (401).
#[test]
fn gateway_chat_the_anthropic_sdk_authenticates_with_x_api_key() {
    let Some(py) = python() else {
        return skip(
            "gateway chat SDKs",
            &format!("{VENV_PYTHON} cannot import openai and anthropic (`.ci/run` installs them)"),
        );
    };
    let provider = Provider::start(vec![text_answer("hello there"), text_answer("hello again")]);
    let port = free_port();
    let home = chat_home(&provider, port);
    home.start();
    wait_for_gateway(&home, port);
    let (allowed, _) = issue(&home, &[ASK]);
    let (grantless, _) = issue(&home, &["tool.invoke:echo"]);
    let plan = serde_json::json!([
        {"sdk": "anthropic", "stream": false, "header": "x-api-key"},
        {"sdk": "anthropic", "stream": true, "header": "x-api-key"},
        {"sdk": "anthropic", "stream": false, "header": "x-api-key", "secret": grantless},
        {"sdk": "anthropic", "stream": false, "header": "x-api-key", "secret": "made-up"},
    ]);
    let got = client(&home, py, port, &allowed, &plan);
    assert_eq!(got[0]["text"], "hello there", "{}\n{}", got[0], home.log());
    assert_eq!(got[1]["text"], "hello again", "{}", got[1]);
    assert_eq!(got[2]["status"], 403, "{}", got[2]);
    assert_eq!(got[3]["status"], 401, "{}", got[3]);
    // Another route, or beside an `Authorization` of another scheme: no bearer.
    let body = r#"{"model": "test-model", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}"#;
    for (path, basic) in [("/v1/chat/completions", false), ("/v1/messages", true)] {
        let mut headers = vec![
            ("x-api-key", allowed.as_str()),
            ("Content-Type", "application/json"),
        ];
        if basic {
            headers.push(("Authorization", "Basic dXNlcjpwYXNz"));
        }
        let (status, _, answer) = http(port, "POST", path, &headers, body);
        assert_eq!(status, 401, "{path}: {answer}");
    }
    assert_eq!(provider.requests().len(), 2, "{:?}", provider.requests());
}

/// Pending approvals' ids.
fn pending(home: &Home) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&home.ctl(&["approvals", "list", "--json"]).stdout)
            .unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["state"] == "pending")
                .filter_map(|x| x["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A chat turn whose decisions need approvals (the turn's own, then its tool call's) waits
/// for each and goes on once it is approved: the notes an approval sends its request have no
/// reader in a gateway chat and must not hold the turn (they did: the second note waited
/// forever on a full queue nobody read, so an approved turn never went on).
#[test]
fn gateway_chat_waiting_for_approvals_goes_on_once_each_is_approved() {
    let provider = Provider::start(vec![
        tool_answer("echo", &serde_json::json!({"text": "hi"})),
        text_answer("echo said hi"),
    ]);
    let port = free_port();
    let home = Home::with_config(&provider.config(&format!(
        "[gateway]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n\n[approvals]\ntimeout_ms = 30000\n"
    )));
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\napproval = \"always\"\n",
    )
    .expect("pack");
    install_examples(&home);
    home.start();
    wait_for_gateway(&home, port);
    let (secret, _) = issue(&home, &[ASK, "tool.invoke:echo"]);
    let body = serde_json::json!({
        "model": "test-model",
        "messages": [{"role": "user", "content": "ask echo"}],
    })
    .to_string();
    let asking = std::thread::spawn(move || {
        let auth = format!("Bearer {secret}");
        http(
            port,
            "POST",
            "/v1/chat/completions",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
    });
    let mut approved = Vec::new();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while !asking.is_finished() && std::time::Instant::now() < until {
        for id in pending(&home) {
            if !approved.contains(&id) {
                assert!(home.ctl(&["approvals", "approve", &id]).status.success());
                approved.push(id);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        approved.len(),
        2,
        "the turn and its call each waited: {approved:?}\n{}",
        home.log()
    );
    assert!(
        asking.is_finished(),
        "the approved turn went on\n{}",
        home.log()
    );
    let (status, _, body) = asking.join().expect("joined");
    assert_eq!(status, 200, "{body}\n{}", home.log());
    assert!(body.contains("echo said hi"), "{body}");
}

/// A chat turn whose caller goes away (its stream dropped: here its gateway stopped) runs on
/// to its end, but the approval it waits for is withdrawn (expired, noted, recorded), so no
/// operator approves its effect on behalf of a caller that left. The control: while the
/// caller is there, the request stays pending. Before, it stayed pending for its whole
/// timeout.
#[test]
fn gateway_chat_whose_caller_went_away_withdraws_the_approval_it_waits_for() {
    let provider = Provider::start(vec![text_answer("never asked")]);
    let port = free_port();
    let home = Home::with_config(&provider.config(&format!(
        "[gateway]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n\n[approvals]\ntimeout_ms = 120000\n"
    )));
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\napproval = \"always\"\n",
    )
    .expect("pack");
    install_examples(&home);
    home.start();
    wait_for_gateway(&home, port);
    let (secret, token) = issue(&home, &[ASK]);
    let body = serde_json::json!({
        "model": "test-model",
        "messages": [{"role": "user", "content": "hello"}],
    })
    .to_string();
    let _asking = std::thread::spawn(move || {
        let auth = format!("Bearer {secret}");
        http(
            port,
            "POST",
            "/v1/chat/completions",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
    });
    let mut asked = Vec::new();
    assert!(
        crate::support::wait_until(std::time::Duration::from_secs(20), || {
            asked = pending(&home);
            asked.len() == 1
        }),
        "the turn never asked: {asked:?}\n{}",
        home.log()
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(pending(&home), asked, "pending while its caller is there");

    let out = home.ctl(&["gateway", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut shown = serde_json::Value::Null;
    assert!(
        crate::support::wait_until(std::time::Duration::from_secs(10), || {
            shown = json(&text(
                &home.ctl(&["approvals", "show", &asked[0], "--json"]).stdout,
            ));
            shown["state"] == "expired"
        }),
        "the approval of a chat whose caller went away stays {shown}\n{}",
        home.log()
    );
    assert!(
        shown["note"]
            .as_str()
            .is_some_and(|n| n.contains("its caller went away")),
        "{shown}"
    );
    let expired = trail(&home, &token)
        .into_iter()
        .filter(|r| r["kind"] == "approval.expired" && r["detail"]["approval"] == asked[0].as_str())
        .count();
    assert_eq!(expired, 1);
}
