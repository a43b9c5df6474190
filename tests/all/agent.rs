//! `loongctl ask` end to end against a local provider server speaking OpenAI chat
//! completions (SSE): the turn runs in the confined agent worker, each tool call the model
//! makes is a kernel call decided under the session's token and audited with the chain, the
//! tools offered are exactly those the token may call, the session's memory survives a
//! restart, and a killed worker is a typed failure.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{
    kernel_calls::{busy_worker, issue, json, kill9, pack, trail},
    support::{bin, text, Home},
    workers::{detail, install_examples, records},
};

/// The grant a token needs to ask the agent at all.
const ASK: &str = "tool.invoke:agent.turn";

/// One scripted answer of the provider.
#[derive(Clone)]
pub(crate) enum Reply {
    /// These SSE data payloads, then the end.
    Sse(Vec<String>),
    /// These payloads, then nothing more for a minute (a stalled answer).
    Stall(Vec<String>),
    /// An error status with this JSON body.
    Status(u16, String),
    /// The first payloads, then nothing until the gate opens (or a minute passes), then the
    /// rest.
    Gated(Vec<String>, Gate, Vec<String>),
}

/// A gate a provider's answer waits at until the test opens it.
#[derive(Clone, Default)]
pub(crate) struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    pub(crate) fn open(&self) {
        *self.0 .0.lock().expect("lock") = true;
        self.0 .1.notify_all();
    }

    fn wait(&self) {
        let (open, cv) = &*self.0;
        let guard = open.lock().expect("lock");
        let _ = cv.wait_timeout_while(guard, Duration::from_secs(60), |o| !*o);
    }
}

/// A local OpenAI-compatible server: answers the Nth request with the Nth reply (the last
/// one again past the end) and keeps every request body.
pub(crate) struct Provider {
    pub(crate) port: u16,
    requests: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Provider {
    pub(crate) fn start(script: Vec<Reply>) -> Provider {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let kept = kept.clone();
                let script = script.clone();
                std::thread::spawn(move || answer(stream, &kept, &script));
            }
        });
        Provider { port, requests }
    }

    pub(crate) fn requests(&self) -> Vec<serde_json::Value> {
        self.requests.lock().expect("lock").clone()
    }

    /// `loongd.toml` sections naming this server.
    pub(crate) fn config(&self, extra: &str) -> String {
        format!(
            "[providers.local]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{}/v1\"\nmodel = \"test-model\"\nidle_timeout_secs = 120\n\n[agent]\nprovider = \"local\"\nmax_steps = 4\nturn_budget_secs = 120\n\n{extra}",
            self.port
        )
    }
}

fn answer(stream: TcpStream, kept: &Mutex<Vec<serde_json::Value>>, script: &[Reply]) {
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let n = {
        let mut k = kept.lock().expect("lock");
        k.push(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null));
        k.len() - 1
    };
    let reply = script[n.min(script.len() - 1)].clone();
    let mut stream = reader.into_inner();
    if let Reply::Status(code, body) = &reply {
        let _ = stream.write_all(
            format!(
                "HTTP/1.1 {code} Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        return;
    }
    let _ = stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
    );
    let (events, stall) = match reply {
        Reply::Sse(e) => (e, false),
        Reply::Stall(e) => (e, true),
        Reply::Gated(first, gate, rest) => {
            for e in first {
                let _ = stream.write_all(format!("data: {e}\n\n").as_bytes());
                let _ = stream.flush();
            }
            gate.wait();
            (rest, false)
        }
        Reply::Status(..) => return,
    };
    for e in events {
        let _ = stream.write_all(format!("data: {e}\n\n").as_bytes());
        let _ = stream.flush();
    }
    if stall {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// A text answer: `text` in two deltas, `stop`, usage, `[DONE]`.
pub(crate) fn text_answer(text: &str) -> Reply {
    let (a, b) = text.split_at(text.len() / 2);
    Reply::Sse(vec![
        delta(serde_json::json!({"role": "assistant", "content": a})),
        delta(serde_json::json!({"content": b})),
        finish("stop"),
        r#"{"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":3}}"#.into(),
        "[DONE]".into(),
    ])
}

/// An answer that calls `name` (its wire name) with `arguments`.
pub(crate) fn tool_answer(name: &str, arguments: &serde_json::Value) -> Reply {
    Reply::Sse(vec![
        delta(
            serde_json::json!({"role": "assistant", "content": null, "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": name, "arguments": arguments.to_string()}}]}),
        ),
        finish("tool_calls"),
        "[DONE]".into(),
    ])
}

pub(crate) fn delta(d: serde_json::Value) -> String {
    serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "test-model",
        "choices": [{"index": 0, "delta": d, "finish_reason": null}]})
    .to_string()
}

pub(crate) fn finish(reason: &str) -> String {
    serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "test-model",
        "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
    .to_string()
}

/// The names of the tools a request offered.
fn offered(request: &serde_json::Value) -> Vec<String> {
    request["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["function"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The `role: tool` messages of a request.
pub(crate) fn tool_messages(request: &serde_json::Value) -> Vec<serde_json::Value> {
    request["messages"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["role"] == "tool").cloned().collect())
        .unwrap_or_default()
}

pub(crate) fn ask(home: &Home, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["ask"];
    all.extend_from_slice(args);
    let out = home.ctl(&all);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[test]
fn an_ask_calls_a_wasm_plugin_and_a_built_in_through_the_kernel_with_the_agents_chain() {
    let dir = tempfile::Builder::new()
        .prefix("lagent")
        .tempdir_in("/tmp")
        .expect("dir");
    std::fs::write(dir.path().join("note.txt"), "the note says 42").expect("note");
    let note = dir.path().join("note.txt").display().to_string();
    let provider = Provider::start(vec![
        tool_answer("echo", &serde_json::json!({"text": "hi there"})),
        tool_answer("file_read", &serde_json::json!({"path": note})),
        text_answer("echo said hi and the note says 42"),
    ]);
    let home = Home::with_config(&provider.config(&format!(
        "[builtins]\nread_roots = [\"{}\"]\n",
        dir.path().display()
    )));
    install_examples(&home);
    pack(&home);
    std::fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\", \"fs.read\"]\n",
    )
    .expect("pack");
    home.start();
    let (secret, id) = issue(
        &home,
        &[
            ASK,
            "tool.invoke:echo",
            &format!("fs.read:{}", dir.path().display()),
        ],
    );
    let (code, out, err) = ask(
        &home,
        &["what does echo say?", "--token", &secret, "--json"],
    );
    assert_eq!(code, 0, "{err}\n{}", home.log());
    let answer = json(&out);
    assert_eq!(
        answer["answer"], "echo said hi and the note says 42",
        "{answer}"
    );
    assert_eq!(answer["tool_calls"][0]["name"], "echo", "{answer}");
    assert_eq!(answer["tool_calls"][0]["is_error"], false, "{answer}");
    assert_eq!(answer["tool_calls"][1]["name"], "file.read", "{answer}");
    assert_eq!(answer["tool_calls"][1]["is_error"], false, "{answer}");
    assert_eq!(answer["usage"]["input_tokens"], 11, "{answer}");
    assert_eq!(answer["steps"], 3, "{answer}");
    let correlation = answer["correlation"]
        .as_str()
        .expect("correlation")
        .to_string();

    // The provider received each tool's result in the next request.
    let requests = provider.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    let first = tool_messages(&requests[1]);
    assert!(
        first[0]["content"]
            .as_str()
            .unwrap_or_default()
            .contains("hi there"),
        "{first:?}"
    );
    let second = tool_messages(&requests[2]);
    assert!(
        second[1]["content"]
            .as_str()
            .unwrap_or_default()
            .contains("the note says 42"),
        "{second:?}"
    );

    // Each call is in the token's trail: invoked by the agent's worker, in the turn's chain.
    let records = trail(&home, &id);
    for tool in ["echo", "file.read"] {
        let invoked = records
            .iter()
            .find(|r| r["kind"] == "tool.invoked" && detail(r)["tool"] == tool)
            .unwrap_or_else(|| panic!("{tool} invoked: {records:?}"));
        assert!(
            invoked["actor"]
                .as_str()
                .unwrap_or_default()
                .starts_with("worker:"),
            "{invoked}"
        );
        let d = detail(invoked);
        assert_eq!(d["chain"]["root"], correlation.as_str(), "{d}");
        assert_eq!(d["chain"]["depth"], 1, "{d}");
    }
}

#[test]
fn a_denied_rm_rf_is_audited_and_told_to_the_model_and_the_answer_still_comes() {
    let ws = tempfile::Builder::new()
        .prefix("lagentws")
        .tempdir_in("/tmp")
        .expect("dir");
    let provider = Provider::start(vec![
        tool_answer("shell_exec", &serde_json::json!({"command": "rm -rf /"})),
        text_answer("I could not do that"),
    ]);
    let home = Home::with_config(&provider.config(&format!(
        "[builtins]\nworkspace = \"{}\"\n",
        ws.path().display()
    )));
    install_examples(&home);
    std::fs::create_dir_all(home.path().join("packs")).expect("packs");
    std::fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\", \"process.exec\"]\n",
    )
    .expect("pack");
    home.start();
    // The token may run `echo` only: shell.exec is offered, `rm` is not granted.
    let (secret, id) = issue(&home, &[ASK, "tool.invoke:echo", "process.exec:echo"]);
    let (code, out, err) = ask(&home, &["clean up", "--token", &secret, "--json"]);
    assert_eq!(code, 0, "{err}\n{}", home.log());
    let answer = json(&out);
    assert_eq!(answer["answer"], "I could not do that", "{answer}");
    assert_eq!(answer["tool_calls"][0]["name"], "shell.exec", "{answer}");
    assert_eq!(answer["tool_calls"][0]["is_error"], true, "{answer}");

    let requests = provider.requests();
    assert!(
        offered(&requests[0]).contains(&"shell_exec".to_string()),
        "{:?}",
        requests[0]
    );
    let told = tool_messages(&requests[1]);
    let told = told[0]["content"].as_str().unwrap_or_default();
    assert!(told.starts_with("error: denied"), "{told}");

    // Denied and audited in the token's trail, by the agent's worker; nothing ran.
    let records = trail(&home, &id);
    let denied = records
        .iter()
        .filter(|r| r["kind"] == "policy.decision")
        .map(detail)
        .find(|d| d["capability"] == "process.exec" && d["allowed"] == false)
        .unwrap_or_else(|| panic!("a denied process.exec: {records:?}"));
    assert_eq!(denied["chain"]["depth"], 1, "{denied}");
    assert!(
        !records
            .iter()
            .any(|r| r["kind"] == "tool.invoked" && detail(r)["tool"] == "shell.exec"),
        "{records:?}"
    );
    assert!(std::path::Path::new("/usr/bin").exists());
}

#[test]
fn a_tool_the_token_cannot_call_is_never_offered_and_a_granted_one_is() {
    let ws = tempfile::Builder::new()
        .prefix("lagentws")
        .tempdir_in("/tmp")
        .expect("dir");
    let provider = Provider::start(vec![
        tool_answer("shell_exec", &serde_json::json!({"command": "rm -rf /"})),
        text_answer("nothing to do"),
    ]);
    let home = Home::with_config(&provider.config(&format!(
        "[builtins]\nworkspace = \"{}\"\nread_roots = [\"{}\"]\n",
        ws.path().display(),
        ws.path().display()
    )));
    install_examples(&home);
    pack(&home);
    home.start();
    // Asking at all needs the grant of the agent's turn (the control: without it, denied).
    let (without, _) = issue(&home, &["tool.invoke:echo"]);
    let (code, _, err) = ask(&home, &["hello", "--token", &without]);
    assert_eq!(code, 4, "{err}");
    assert!(provider.requests().is_empty());
    let (secret, id) = issue(&home, &[ASK, "tool.invoke:echo"]);
    let (code, out, err) = ask(&home, &["hello", "--token", &secret, "--json"]);
    assert_eq!(code, 0, "{err}\n{}", home.log());
    let answer = json(&out);
    assert_eq!(answer["answer"], "nothing to do", "{answer}");
    let tools = offered(&provider.requests()[0]);
    assert!(tools.contains(&"echo".to_string()), "{tools:?}");
    for never in [
        "shell_exec",
        "file_read",
        "json-transform",
        "config-reader",
        "agent_turn",
    ] {
        assert!(
            !tools.contains(&never.to_string()),
            "{never} offered: {tools:?}"
        );
    }
    // The model's call of the tool it was not offered was not run: it was told, and the
    // refusal is in the token's trail (by the name the model used: no tool has it).
    let told = tool_messages(&provider.requests()[1]);
    let told = told[0]["content"].as_str().unwrap_or_default();
    assert!(told.contains("not available"), "{told}");
    let refused = trail(&home, &id)
        .iter()
        .filter(|r| r["kind"] == "policy.decision")
        .map(detail)
        .find(|d| d["target"] == "shell_exec")
        .expect("the refusal is in the trail");
    assert_eq!(refused["allowed"], false, "{refused}");
    assert_eq!(refused["stage"], "not_offered", "{refused}");

    // Nor can anyone invoke the agent's turn directly (it carries the provider's key).
    let out = home.ctl(&["invoke", "agent.turn", "--input", "{}"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("loongctl ask"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_sessions_memory_is_sent_with_the_next_turn_across_a_restart() {
    let provider = Provider::start(vec![
        text_answer("nice to meet you, Ada"),
        text_answer("your name is Ada"),
    ]);
    let home = Home::with_config(&provider.config(""));
    home.start();
    let (code, _, err) = ask(&home, &["my name is Ada", "--session", "s1"]);
    assert_eq!(code, 0, "{err}\n{}", home.log());
    let out = home.ctl(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    home.start();
    let (code, out, err) = ask(&home, &["what is my name?", "--session", "s1"]);
    assert_eq!(code, 0, "{err}\n{}", home.log());
    assert_eq!(out.trim(), "your name is Ada");

    let requests = provider.requests();
    let messages = requests[1]["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let said: Vec<(String, String)> = messages
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or_default().to_string(),
                m["content"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want = [
        ("user", "my name is Ada"),
        ("assistant", "nice to meet you, Ada"),
        ("user", "what is my name?"),
    ];
    let got: Vec<(&str, &str)> = said
        .iter()
        .filter(|(r, _)| r != "system")
        .map(|(r, c)| (r.as_str(), c.as_str()))
        .collect();
    assert_eq!(got, want, "{messages:?}");
    // A session-less turn is sent no memory (the control).
    let (code, _, err) = ask(&home, &["who am I?"]);
    assert_eq!(code, 0, "{err}");
    let third = &provider.requests()[2]["messages"];
    assert_eq!(third.as_array().map(Vec::len), Some(1), "{third}");

    // memory list / show / clear, each decided and audited.
    let out = home.ctl(&["memory", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list = json(&text(&out.stdout));
    assert_eq!(list[0]["session"], "s1", "{list}");
    assert_eq!(list[0]["messages"], 4, "{list}");
    let out = home.ctl(&["memory", "show", "s1", "--json"]);
    let shown = json(&text(&out.stdout));
    assert_eq!(shown[0]["message"]["text"], "my name is Ada", "{shown}");
    let out = home.ctl(&["memory", "clear", "s1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = home.ctl(&["memory", "list", "--json"]);
    assert_eq!(json(&text(&out.stdout)), serde_json::json!([]));
    let decided: Vec<String> = records(&home, "policy.decision")
        .iter()
        .map(detail)
        .filter_map(|d| d["capability"].as_str().map(str::to_string))
        .collect();
    assert!(decided.iter().any(|c| c == "memory.read"), "{decided:?}");
    assert!(decided.iter().any(|c| c == "memory.write"), "{decided:?}");
    // Turns the provider answered record no failover (the control of the failover test).
    assert!(records(&home, "provider.failover").is_empty());
}

#[test]
fn kill_9_of_the_agent_worker_mid_answer_is_a_typed_failure_and_loongd_keeps_serving() {
    let provider = Provider::start(vec![
        Reply::Stall(vec![delta(
            serde_json::json!({"role": "assistant", "content": "thinking"}),
        )]),
        text_answer("back again"),
    ]);
    let home = Home::with_config(&provider.config(""));
    let pid = home.start();
    let call = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["ask", "think hard", "--session", "k1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ask");
    let worker = busy_worker(&home, "agent.turn");
    // Mid-answer: the provider has the request and is streaming its stalled reply (killed
    // before that, the next turn would get the stalled reply instead of its own).
    assert!(
        crate::support::wait_until(Duration::from_secs(30), || provider.requests().len() == 1),
        "the provider never got the turn"
    );
    kill9(worker);
    let out = call.wait_with_output().expect("ask ends");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("closed its socket"),
        "{}",
        text(&out.stderr)
    );
    let failed = records(&home, "tool.failed")
        .into_iter()
        .map(|r| detail(&r))
        .find(|d| d["tool"] == "agent.turn")
        .expect("the turn failed");
    assert_eq!(failed["failure"], "worker_died", "{failed}");
    // Nothing of the failed turn was kept; loongd, never restarted, answers the next one.
    let (code, out, err) = ask(&home, &["again", "--session", "k1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "back again");
    assert_eq!(home.status().pid, pid);
    let second = provider.requests()[1]["messages"].clone();
    assert_eq!(second.as_array().map(Vec::len), Some(1), "{second}");
}

#[test]
fn a_provider_that_refuses_the_key_is_a_typed_failure_naming_what_to_check() {
    let provider = Provider::start(vec![Reply::Status(
        401,
        r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#
            .into(),
    )]);
    let config = provider.config("").replace(
        "model = \"test-model\"",
        "model = \"test-model\"\napi_key = \"${secret:local_key}\"",
    );
    let home = Home::with_config(&config);
    home.start();
    let bound = format!("http://127.0.0.1:{}", provider.port);
    let set = crate::secrets::ctl_stdin(
        &home,
        &["secrets", "set", "local_key", "--host", &bound],
        "sk-test-123\n",
    );
    assert!(set.status.success(), "{}", text(&set.stderr));
    let (code, out, err) = ask(&home, &["hello", "--session", "a1"]);
    assert_eq!(code, 7, "{out}{err}");
    assert!(
        err.contains("provider failed (auth)") && err.contains("api_key"),
        "{err}"
    );
    assert!(!err.contains("sk-test-123"), "{err}");
    // One request reached the provider: a 401 is not retried.
    let requests = provider.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    // Nothing of the failed turn is kept; the key is in no audit record.
    let out = home.ctl(&["memory", "list", "--json"]);
    assert_eq!(json(&text(&out.stdout)), serde_json::json!([]));
    let all = home.ctl(&["audit", "recent", "--limit", "1000", "--json"]);
    assert!(!text(&all.stdout).contains("sk-test-123"));
    // The control: with the key removed, the turn is refused before any request, naming
    // the secret and the command that sets it.
    assert!(home.ctl(&["secrets", "rm", "local_key"]).status.success());
    let (code, _, err) = ask(&home, &["hello"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("\"local_key\" is not set") && err.contains("loongctl secrets set local_key"),
        "{err}"
    );
    assert_eq!(provider.requests().len(), 1);
}

#[test]
fn a_failover_to_the_fallback_provider_is_audited_and_the_answer_comes_from_it() {
    let primary = Provider::start(vec![Reply::Status(
        500,
        r#"{"error":{"message":"upstream down"}}"#.into(),
    )]);
    let fallback = Provider::start(vec![text_answer("the fallback answers")]);
    let config = format!(
        "{}\n[providers.backup]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{}/v1\"\nmodel = \"backup-model\"\n",
        primary
            .config("")
            .replace("idle_timeout_secs = 120", "idle_timeout_secs = 120\nmax_attempts = 1")
            .replace("provider = \"local\"", "provider = \"local\"\nfallback = \"backup\""),
        fallback.port
    );
    let home = Home::with_config(&config);
    home.start();
    let (code, out, err) = ask(&home, &["hello", "--json"]);
    assert_eq!(code, 0, "{err}\n{}", home.log());
    let answer = json(&out);
    assert_eq!(answer["answer"], "the fallback answers", "{answer}");
    assert_eq!(
        answer["providers"],
        serde_json::json!(["backup"]),
        "{answer}"
    );
    assert_eq!(primary.requests().len(), 1);
    assert_eq!(fallback.requests().len(), 1);
    let failover = records(&home, "provider.failover")
        .iter()
        .map(detail)
        .next()
        .expect("the failover is audited");
    assert_eq!(failover["from"], "local", "{failover}");
    assert_eq!(failover["to"], "backup", "{failover}");
    assert!(
        failover["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("500"),
        "{failover}"
    );
}

/// What the agent worker got for each probe it ran from inside its sandbox (test builds run
/// the lines of `LOONG_TEST_AGENT_PROBES` in place of the turn and answer with the report).
fn probed(home: &Home) -> std::collections::HashMap<String, String> {
    let (code, out, err) = ask(home, &["probe", "--json"]);
    assert_eq!(code, 0, "{out}{err}\n{}", home.log());
    let answer = json(&out)["answer"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    answer
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .map(|(p, r)| (p.to_string(), r.to_string()))
        .collect()
}

/// Issue 18: the agent worker cannot read the secret store, loongd's home or its config, and
/// reaches nothing but its provider's `HOST:PORT` through the broker, seen from inside the
/// worker loongd starts for a turn (the same sandbox, the same spawn path). Each refusal has
/// its control: the files exist and the worker opens a system file; the worker connects to
/// its proxy and to its grant's forward; the proxy carries a request to the provider.
#[test]
fn the_agent_worker_reads_none_of_loongds_files_and_reaches_only_its_provider() {
    let provider = Provider::start(vec![text_answer("reached")]);
    let other = TcpListener::bind("127.0.0.1:0").expect("bind");
    other.set_nonblocking(true).expect("non-blocking");
    let other_port = other.local_addr().expect("addr").port();
    let config = provider.config("").replace(
        "model = \"test-model\"",
        "model = \"test-model\"\napi_key = \"${secret:local_key}\"",
    );
    let home = Home::with_config(&config);
    let p = provider.port;
    let h = home.path().display().to_string();
    let probes = [
        format!("open:{h}/secrets.json"),
        format!("open:{h}/state.db"),
        format!("open:{h}/loongd.toml"),
        "open:/usr/bin/env".to_string(),
        format!("connect:127.0.0.1:{other_port}"),
        format!("connect:127.0.0.2:{p}"),
        "connect:192.0.2.1:80".to_string(),
        "connect:127.0.0.1:3128".to_string(),
        format!("connect:127.0.0.1:{p}"),
        format!("get:127.0.0.1:{other_port}"),
        format!("get:127.0.0.2:{p}"),
        format!("tunnel:127.0.0.1:{other_port}"),
        format!("get:127.0.0.1:{p}"),
    ];
    home.start_env(&[("LOONG_TEST_AGENT_PROBES", &probes.join("\n"))]);
    let bound = format!("http://127.0.0.1:{p}");
    let set = crate::secrets::ctl_stdin(
        &home,
        &["secrets", "set", "local_key", "--host", &bound],
        "sk-probe-1\n",
    );
    assert!(set.status.success(), "{}", text(&set.stderr));
    // The controls outside: each file the worker is refused exists and is readable here.
    for f in ["secrets.json", "state.db", "loongd.toml"] {
        assert!(
            std::fs::File::open(home.path().join(f)).is_ok(),
            "{f} exists"
        );
    }
    let got = probed(&home);
    let result = |probe: &str| got.get(probe).cloned().unwrap_or_default();
    assert_eq!(got.len(), probes.len(), "{got:?}");
    for probe in &probes[..3] {
        let r = result(probe);
        assert!(r.starts_with("errno "), "{probe}: {r}");
    }
    assert_eq!(result("open:/usr/bin/env"), "ok", "{got:?}");
    for probe in &probes[4..7] {
        let r = result(probe);
        assert!(r.starts_with("errno "), "{probe}: {r}");
    }
    // The controls: the proxy's port connects, and so does the grant's own raw forward
    // (inside, `127.0.0.1:PORT` of the provider goes to the provider through the broker).
    assert_eq!(result("connect:127.0.0.1:3128"), "ok", "{got:?}");
    assert_eq!(result(&format!("connect:127.0.0.1:{p}")), "ok", "{got:?}");
    for probe in &probes[9..12] {
        assert_eq!(result(probe), "status 403", "{probe}: {got:?}");
    }
    assert_eq!(
        result(&format!("get:127.0.0.1:{p}")),
        "status 200",
        "{got:?}"
    );
    // Seen from the host: nothing reached the other listener; the provider got the request
    // the proxy carried, and no other.
    assert!(other.accept().is_err(), "a probe reached the other port");
    assert_eq!(provider.requests().len(), 1, "{:?}", provider.requests());
    // The proxy's refusals are the broker's, recorded; its grant carried the request.
    let recorded = |kind: &str, port: u16| {
        crate::support::wait_until(Duration::from_secs(10), || {
            crate::workers::details(&home, kind)
                .iter()
                .any(|d| d["port"] == port)
        })
    };
    assert!(
        recorded("net.denied", other_port),
        "{:?}",
        crate::workers::details(&home, "net.denied")
    );
    assert!(
        recorded("net.connected", p),
        "{:?}",
        crate::workers::details(&home, "net.connected")
    );
    let all = home.ctl(&["audit", "recent", "--limit", "1000", "--json"]);
    assert!(!text(&all.stdout).contains("sk-probe-1"));
}

/// An answer whose first delta comes at once and whose rest waits at `gate`.
fn gated_answer(first: &str, rest: &str, gate: &Gate) -> Reply {
    Reply::Gated(
        vec![delta(
            serde_json::json!({"role": "assistant", "content": first}),
        )],
        gate.clone(),
        vec![
            delta(serde_json::json!({"content": rest})),
            finish("stop"),
            "[DONE]".into(),
        ],
    )
}

/// Issue 18: `ask` shows the answer's text as it arrives. The provider sends a first delta
/// and holds the rest until the test has seen that delta on loongctl's stdout, while
/// loongctl is still running; `--json` still prints one object at the end.
#[test]
fn ask_prints_the_first_delta_before_the_answer_completes() {
    let first = Gate::default();
    let second = Gate::default();
    let provider = Provider::start(vec![
        gated_answer("the first part,", " then the rest", &first),
        gated_answer("json first,", " json rest", &second),
    ]);
    let home = Home::with_config(&provider.config(""));
    home.start();
    let mut child = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["ask", "hello"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loongctl ask");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !text(&seen).contains("the first part,") && std::time::Instant::now() < until {
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.extend(b);
        }
    }
    let early = text(&seen);
    // Seen while the provider still holds the rest: loongctl has not finished.
    let running = child.try_wait().expect("try_wait").is_none();
    first.open();
    second.open();
    assert!(
        early.contains("the first part,") && !early.contains("the rest"),
        "the first delta was not shown before the answer completed: {early:?}\n{}",
        home.log()
    );
    assert!(
        running,
        "loongctl had finished before the first delta was seen"
    );
    let status = child.wait().expect("wait");
    while let Ok(b) = rx.recv_timeout(Duration::from_secs(5)) {
        seen.extend(b);
    }
    assert!(status.success(), "{}", home.log());
    assert_eq!(text(&seen), "the first part, then the rest\n");
    // --json: one object at the end, no text before it.
    let (code, out, err) = ask(&home, &["hello", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(json(&out)["answer"], "json first, json rest", "{out}");
}

/// loongd's home inside a path every balanced sandbox sees (`/opt`, as the system layout's
/// `/etc/loong` is inside `/etc`), its files readable by anyone: the agent worker still
/// cannot open them, because loongd's paths are masked there. The control: outside, the
/// home and its config are open to every uid, and inside the worker opens `/opt` itself.
#[test]
fn loongds_home_inside_a_system_path_is_masked_from_the_agent_worker() {
    use std::os::unix::fs::PermissionsExt;
    let opt = std::path::Path::new("/opt");
    if !crate::support::is_root() || !opt.is_dir() {
        crate::support::skip(
            "loongds_home_inside_a_system_path_is_masked_from_the_agent_worker",
            "needs root and /opt",
        );
        return;
    }
    let provider = Provider::start(vec![text_answer("unused")]);
    let home = Home::with_config_in(opt, &provider.config(""));
    let h = home.path().display().to_string();
    let probes = [
        format!("open:{h}/loongd.toml"),
        format!("open:{h}/state.db"),
        "open:/opt".to_string(),
    ];
    home.start_env(&[("LOONG_TEST_AGENT_PROBES", &probes.join("\n"))]);
    // Open to every uid, so that only the mask can keep the worker out.
    for (path, mode) in [
        (home.path().to_path_buf(), 0o755),
        (home.path().join("loongd.toml"), 0o644),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let got = probed(&home);
    let result = |probe: &str| got.get(probe).cloned().unwrap_or_default();
    assert_eq!(result("open:/opt"), "ok", "{got:?}");
    for probe in &probes[..2] {
        let r = result(probe);
        assert!(r.starts_with("errno "), "{probe}: {r}");
    }
    assert_eq!(provider.requests().len(), 0);
}

/// Which principal (a token's public id; `None`: the operator's own) each agent turn ran
/// for, and on which worker, oldest first.
fn agent_turn_workers(home: &Home) -> Vec<(Option<String>, u64)> {
    let invoked: std::collections::HashMap<String, Option<String>> = records(home, "tool.invoked")
        .iter()
        .filter(|r| detail(r)["tool"] == "agent.turn")
        .map(|r| {
            (
                r["correlation"].as_str().unwrap_or_default().to_string(),
                detail(r)["token"].as_str().map(str::to_string),
            )
        })
        .collect();
    let mut turns: Vec<(Option<String>, u64)> = records(home, "tool.completed")
        .iter()
        .filter(|r| detail(r)["tool"] == "agent.turn")
        .map(|r| {
            let corr = r["correlation"].as_str().unwrap_or_default();
            let who = invoked
                .get(corr)
                .unwrap_or_else(|| panic!("no tool.invoked of {corr}"))
                .clone();
            (who, detail(r)["worker"].as_u64().expect("worker id"))
        })
        .collect();
    // `audit recent` lists newest first.
    turns.reverse();
    turns
}

#[test]
fn an_agent_worker_never_serves_a_second_principal_and_one_principals_turns_share_one() {
    let provider = Provider::start(vec![text_answer("ok")]);
    let home = Home::with_config(&provider.config("[workers]\nagent_pool_size = 2\n"));
    pack(&home);
    home.start();
    let (a, a_id) = issue(&home, &[ASK]);
    let (b, b_id) = issue(&home, &[ASK]);
    // Two tokens alternate, then the operator's own turns (a third principal, past the
    // pool's size of two) come between them.
    for who in [&a, &b, &a, &b, "", &a, "", &b] {
        let mut args = vec!["hello"];
        if !who.is_empty() {
            args.extend(["--token", who]);
        }
        let (code, _, err) = ask(&home, &args);
        assert_eq!(code, 0, "{err}\n{}", home.log());
    }
    let turns = agent_turn_workers(&home);
    assert_eq!(turns.len(), 8, "{turns:?}");
    let mut served: std::collections::HashMap<u64, Option<String>> = Default::default();
    for (who, worker) in &turns {
        let first = served.entry(*worker).or_insert_with(|| who.clone());
        assert_eq!(
            first, who,
            "worker {worker} served two principals: {turns:?}"
        );
    }
    // Positive control: one token's turns may share a worker (A's first and second turns
    // ran on the same one: the pool had room for B's beside it).
    let of = |id: &str| -> Vec<u64> {
        turns
            .iter()
            .filter(|(w, _)| w.as_deref() == Some(id))
            .map(|(_, n)| *n)
            .collect()
    };
    let a_workers = of(&a_id);
    assert_eq!(a_workers[0], a_workers[1], "{turns:?}");
    assert_eq!(of(&b_id).len(), 3, "{turns:?}");
    // A third principal on a full pool retired an idle worker of another one, audited.
    assert!(
        crate::support::wait_until(Duration::from_secs(10), || {
            records(&home, "worker.exited")
                .iter()
                .any(|r| detail(r)["why"] == "it served another principal")
        }),
        "{:?}",
        records(&home, "worker.exited")
    );
}
