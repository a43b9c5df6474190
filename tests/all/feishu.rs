//! A Feishu/Lark channel end to end: the platform's event requests arrive at the gateway
//! (`POST /channels/feishu/ACCOUNT/events`), loongd relays them unparsed to the channel's
//! worker, which answers the URL-verification challenge, checks the signature and the
//! timestamp, decrypts, and hands a message over with its `event_id` (replays refused); the
//! agent's answer goes back through `im/v1/messages` with a tenant access token fetched from
//! a local server speaking Feishu's open API as its documentation shows. The events are
//! encrypted and signed with the worker's own functions and cross-checked with the
//! platform's SDK (`lark-oapi`), so the format is the platform's.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use loong_worker_channel::feishu::{encrypt, signature};
use serde_json::{json, Value};

use crate::{
    channels::{channel_workers, wait_until},
    gateway::{free_port, wait_for_gateway},
    secrets::ctl_stdin,
    support::{text, Home},
    workers::{details, json_list},
};

const APP_ID: &str = "cli_test_app";
const APP_SECRET: &str = "app-secret-value";
const ENCRYPT_KEY: &str = "encrypt-key-value";
const TOKEN: &str = "verification-token-value";
const CHAT: &str = "oc_allowed";

/// One call the local open API server received: its path, `Authorization`, and JSON body.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    auth: String,
    body: Value,
}

/// A local server speaking Feishu's open API: `POST /open-apis/auth/v3/tenant_access_token/
/// internal` (app id and secret → a token `t-N` living 7,200 s) and `POST /open-apis/im/v1/
/// messages/MESSAGE_ID/reply` (a known token → the new message's id).
struct OpenApi {
    port: u16,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl OpenApi {
    fn start() -> OpenApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let kept = calls.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || open_api_answer(stream, &kept));
            }
        });
        OpenApi { port, calls }
    }

    fn calls(&self, path_part: &str) -> Vec<Call> {
        self.calls
            .lock()
            .expect("lock")
            .iter()
            .filter(|c| c.path.contains(path_part))
            .cloned()
            .collect()
    }

    fn replies(&self) -> Vec<Call> {
        self.calls("/reply")
    }
}

fn open_api_answer(stream: TcpStream, kept: &Mutex<Vec<Call>>) {
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    if reader.read_line(&mut first).unwrap_or(0) == 0 {
        return;
    }
    let path = first.split(' ').nth(1).unwrap_or("").to_string();
    let (mut length, mut auth) = (0usize, String::new());
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
            if k.eq_ignore_ascii_case("authorization") {
                auth = v.trim().to_string();
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let reply = {
        let mut k = kept.lock().expect("lock");
        k.push(Call {
            path: path.clone(),
            auth: auth.clone(),
            body: body.clone(),
        });
        let tokens = k
            .iter()
            .filter(|c| c.path.contains("tenant_access_token"))
            .count();
        if path == "/open-apis/auth/v3/tenant_access_token/internal" {
            if body["app_id"] == APP_ID && body["app_secret"] == APP_SECRET {
                json!({"code": 0, "msg": "ok", "tenant_access_token": format!("t-{tokens}"), "expire": 7200})
            } else {
                json!({"code": 10014, "msg": "app secret invalid"})
            }
        } else if path.starts_with("/open-apis/im/v1/messages/") && path.ends_with("/reply") {
            // Only a token this server issued is taken.
            let known = (1..=tokens).any(|n| auth == format!("Bearer t-{n}"));
            if known {
                json!({"code": 0, "msg": "success", "data": {"message_id": format!("om_reply_{}", k.len())}})
            } else {
                json!({"code": 99991663, "msg": "tenant access token invalid"})
            }
        } else {
            json!({"code": 404, "msg": "not found"})
        }
    };
    let text = reply.to_string();
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A schema 2.0 `im.message.receive_v1` event, as Feishu's documentation shows it.
fn message_event(event_id: &str, chat: &str, message_id: &str, text: &str) -> Value {
    json!({
        "schema": "2.0",
        "header": {"event_id": event_id, "event_type": "im.message.receive_v1",
            "create_time": "1700000000000", "token": TOKEN, "app_id": APP_ID, "tenant_key": "tk"},
        "event": {
            "sender": {"sender_id": {"open_id": "ou_sender", "union_id": "on_1", "user_id": "u1"},
                "sender_type": "user", "tenant_key": "tk"},
            "message": {"message_id": message_id, "create_time": "1700000000000",
                "chat_id": chat, "chat_type": "group", "message_type": "text",
                "content": json!({"text": text}).to_string()}
        }
    })
}

/// An event request: the encrypted body and the signature headers at `ts`.
struct Signed {
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

fn signed(event: &Value, ts: u64, nonce: &str) -> Signed {
    let body = json!({"encrypt": encrypt(ENCRYPT_KEY, [9; 16], event.to_string().as_bytes())})
        .to_string()
        .into_bytes();
    let ts = ts.to_string();
    let sig = signature(&ts, nonce, ENCRYPT_KEY, &body);
    Signed {
        body,
        headers: vec![
            ("X-Lark-Request-Timestamp".into(), ts),
            ("X-Lark-Request-Nonce".into(), nonce.into()),
            ("X-Lark-Signature".into(), sig),
        ],
    }
}

/// One HTTP/1.1 POST of raw bytes: the status and the body.
fn post(port: u16, path: &str, headers: &[(String, String)], body: &[u8]) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: feishu.example.com\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    // A server may answer (413) before the whole body is sent.
    let _ = s.write_all(&bytes);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

const PATH: &str = "/channels/feishu/fs/events";

/// A home with the gateway on a free port and the agent's provider; loongd started, the
/// Feishu channel `fs` added against `api`, and its worker answering. Returns the home,
/// loongd's pid and the gateway's port.
fn feishu_home(provider: &crate::agent::Provider, api: &OpenApi) -> (Home, u32, u16) {
    feishu_home_with(provider, api, "")
}

/// [`feishu_home`] with `extra` `[gateway]` keys.
fn feishu_home_with(
    provider: &crate::agent::Provider,
    api: &OpenApi,
    extra: &str,
) -> (Home, u32, u16) {
    let port = free_port();
    let home = Home::with_config(&format!(
        "[gateway]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n{extra}\n[providers.local]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{}/v1\"\nmodel = \"test-model\"\nidle_timeout_secs = 120\n\n[agent]\nprovider = \"local\"\nmax_steps = 4\nturn_budget_secs = 120\n",
        provider.port
    ));
    let pid = home.start();
    wait_for_gateway(&home, port);
    let base = format!("http://127.0.0.1:{}", api.port);
    let out = ctl_stdin(
        &home,
        &[
            "channels",
            "add",
            "feishu",
            "fs",
            "--app-id",
            APP_ID,
            "--app-secret-stdin",
            "--encrypt-key-stdin",
            "--verification-token-stdin",
            "--allowed-chat",
            CHAT,
            "--api-base",
            &base,
            "--json",
        ],
        &format!("{APP_SECRET}\n{ENCRYPT_KEY}\n{TOKEN}\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The channel's worker starts after the add answers: 503 until it serves.
    let challenge = json!({"challenge": "warm-up", "token": TOKEN, "type": "url_verification"});
    let serving = wait_until(Duration::from_secs(30), || {
        post(port, PATH, &[], challenge.to_string().as_bytes()).0 == 200
    });
    assert!(
        serving,
        "the channel serves its webhook: {:?}\n{}",
        json_list(&home, &["channels", "status", "fs", "--json"]),
        home.log()
    );
    (home, pid, port)
}

#[test]
fn feishu_challenges_and_a_signed_encrypted_message_are_answered_through_the_gateway() {
    let provider =
        crate::agent::Provider::start(vec![crate::agent::text_answer("hello from the agent")]);
    let api = OpenApi::start();
    let (home, _pid, port) = feishu_home(&provider, &api);
    // A plain challenge, unsigned (the platform does not sign it).
    let plain = json!({"challenge": "c-plain", "token": TOKEN, "type": "url_verification"});
    let (status, body) = post(port, PATH, &[], plain.to_string().as_bytes());
    assert_eq!(
        (status, crate::kernel_calls::json(&body)),
        (200, json!({"challenge": "c-plain"}))
    );
    // An encrypted one, unsigned: answered too (the encrypt key does not make it refused).
    let enc = json!({"challenge": "c-enc", "token": TOKEN, "type": "url_verification"});
    let enc = json!({"encrypt": encrypt(ENCRYPT_KEY, [3; 16], enc.to_string().as_bytes())});
    let (status, body) = post(port, PATH, &[], enc.to_string().as_bytes());
    assert_eq!(
        (status, crate::kernel_calls::json(&body)),
        (200, json!({"challenge": "c-enc"}))
    );
    // A challenge with another verification token is refused.
    let wrong =
        json!({"challenge": "c-wrong", "token": "not-the-token", "type": "url_verification"});
    let (status, body) = post(port, PATH, &[], wrong.to_string().as_bytes());
    assert_eq!(status, 401, "{body}");
    // An account that names no Feishu channel: 404, typed.
    let (status, body) = post(
        port,
        "/channels/feishu/nope/events",
        &[],
        plain.to_string().as_bytes(),
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        crate::kernel_calls::json(&body)["error"]["type"],
        "not_found"
    );
    assert!(
        api.calls("").is_empty(),
        "a challenge makes no platform call"
    );
    // `channels status` shows the URL to enter in the platform's console.
    let shown = home.ctl(&["channels", "status", "fs"]);
    let url = format!("http://127.0.0.1:{port}{PATH}");
    assert!(
        text(&shown.stdout).contains(&url),
        "{}",
        text(&shown.stdout)
    );
    let status = json_list(&home, &["channels", "status", "fs", "--json"]);
    assert_eq!(status[0]["webhook"], url.as_str(), "{status:?}");

    // A signed, encrypted message from the allowed chat: taken, answered once.
    let event = message_event("ev-answered", CHAT, "om_question", "hello");
    let req = signed(&event, now_secs(), "nonce-1");
    let (status, body) = post(port, PATH, &req.headers, &req.body);
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_until(Duration::from_secs(30), || !api.replies().is_empty()),
        "answered: {:?}",
        json_list(&home, &["channels", "status", "fs", "--json"])
    );
    std::thread::sleep(Duration::from_secs(2));
    let replies = api.replies();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(
        replies[0].path,
        "/open-apis/im/v1/messages/om_question/reply"
    );
    assert_eq!(replies[0].body["msg_type"], "text");
    let content: Value =
        serde_json::from_str(replies[0].body["content"].as_str().unwrap_or("")).expect("content");
    assert_eq!(content["text"], "hello from the agent");
    // With a tenant token fetched with the app id and secret, fresh for this app.
    let tokens = api.calls("tenant_access_token");
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(
        tokens[0].body,
        json!({"app_id": APP_ID, "app_secret": APP_SECRET})
    );
    assert_eq!(replies[0].auth, "Bearer t-1");
    // Taken once, in the chat's session, audited without its text.
    let received = details(&home, "channel.received");
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        (received[0]["chat"].as_str(), received[0]["key"].as_str()),
        (Some(CHAT), Some("ev-answered"))
    );
    assert!(!received[0].to_string().contains("hello"));
    let sent = details(&home, "channel.sent");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(provider.requests().len(), 1);
    let sessions = json_list(&home, &["memory", "list", "--json"]);
    assert!(
        sessions
            .iter()
            .any(|s| s["session"] == format!("feishu.fs.{CHAT}")),
        "{sessions:?}"
    );
    // The event this test sent is the platform's format: lark-oapi verifies and decrypts it.
    lark_cross_check(
        "feishu_challenges_and_a_signed_encrypted_message_are_answered_through_the_gateway",
        &req,
        "hello",
    );
}

/// Has the platform's SDK (`lark-oapi`'s `EventDispatcherHandler`, through the library
/// test's `lark_check.py`) verify and decrypt `req`; skipped without the SDK.
fn lark_cross_check(test: &str, req: &Signed, text_sent: &str) {
    let root = std::env::var_os("LOONG_MCP_ROOT").unwrap_or_else(|| "/opt/loong-mcp".into());
    let py = std::path::Path::new(&root).join("venv/bin/python3");
    let has_sdk = std::process::Command::new(&py)
        .args(["-c", "import lark_oapi"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_sdk {
        crate::support::skip(test, "lark-oapi is not installed (scripts/install-mcp-servers); the SDK cross-check did not run");
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../workers/channel/src/feishu/lark_check.py"
    );
    let header = |n: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let requests = json!([{
        "mode": "verify", "encrypt_key": ENCRYPT_KEY, "token": TOKEN,
        "body": String::from_utf8_lossy(&req.body),
        "timestamp": header("X-Lark-Request-Timestamp"),
        "nonce": header("X-Lark-Request-Nonce"),
        "signature": header("X-Lark-Signature"),
    }]);
    let mut child = std::process::Command::new(&py)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(requests.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("lark_check.py");
    assert!(out.status.success(), "lark_check.py failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("[]");
    let answers: Value = serde_json::from_str(last).expect("lark_check.py answers");
    assert_eq!(answers[0]["status"], 200, "{answers}");
    assert_eq!(answers[0]["text"], text_sent, "{answers}");
}

#[test]
fn feishu_bad_signature_stale_timestamp_and_replay_are_refused_and_nothing_reaches_the_agent() {
    let provider = crate::agent::Provider::start(vec![crate::agent::text_answer("the answer")]);
    let api = OpenApi::start();
    let (home, _pid, port) = feishu_home(&provider, &api);
    // A bad signature: 401, refused in the worker.
    let mut forged = signed(
        &message_event("ev-forged", CHAT, "om_1", "forged"),
        now_secs(),
        "n1",
    );
    forged.headers[2].1 = "0".repeat(64);
    let (status, body) = post(port, PATH, &forged.headers, &forged.body);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("signature"), "{body}");
    // A stale timestamp (an hour ago, correctly signed): 401.
    let stale = signed(
        &message_event("ev-stale", CHAT, "om_2", "stale"),
        now_secs() - 3600,
        "n2",
    );
    let (status, body) = post(port, PATH, &stale.headers, &stale.body);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("timestamp"), "{body}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(provider.requests().is_empty(), "nothing reached the agent");
    assert!(details(&home, "channel.received").is_empty());
    // `channels status` names the last refusal (a wrong encrypt key shows so).
    let status = json_list(&home, &["channels", "status", "fs", "--json"]);
    assert!(
        status[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("timestamp")),
        "{status:?}"
    );
    // Positive control: the same event signed now is taken and answered.
    let good = signed(
        &message_event("ev-once", CHAT, "om_3", "good"),
        now_secs(),
        "n3",
    );
    let (status, body) = post(port, PATH, &good.headers, &good.body);
    assert_eq!(status, 200, "{body}");
    assert!(wait_until(Duration::from_secs(30), || !api
        .replies()
        .is_empty()));
    // Its event id again, signed afresh (a replay within the window, or the platform's
    // retry): acknowledged, and nothing taken.
    let replay = signed(
        &message_event("ev-once", CHAT, "om_3", "good"),
        now_secs(),
        "n4",
    );
    let (status, body) = post(port, PATH, &replay.headers, &replay.body);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("duplicate"), "{body}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        provider.requests().len(),
        1,
        "one turn: the replay took none"
    );
    assert_eq!(api.replies().len(), 1);
    assert_eq!(details(&home, "channel.received").len(), 1);
    // The refusals are recorded (the first of the minute; the others counted) and counted in
    // the channel's status.
    let refused = details(&home, "channel.refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("signature")));
    let status = json_list(&home, &["channels", "status", "fs", "--json"]);
    assert_eq!(status[0]["refused"], 3, "{status:?}");
    // An event taken clears it.
    assert!(status[0]["last_error"].is_null(), "{status:?}");
}

#[test]
fn feishu_hostile_bodies_fail_in_the_worker_and_loongd_keeps_serving() {
    let provider = crate::agent::Provider::start(vec![crate::agent::text_answer("still here")]);
    let api = OpenApi::start();
    let (home, _pid, port) = feishu_home(&provider, &api);
    // Over the webhook's 1 MiB: 413 at the gateway, before loongd.
    let huge = vec![b'a'; 2 * 1024 * 1024];
    let (status, _) = post(port, PATH, &[], &huge);
    assert_eq!(status, 413);
    // Invalid UTF-8, deeply nested JSON, not JSON: each 400 from the channel worker, signed
    // or not.
    let deep = format!("{}1{}", "[".repeat(200_000), "]".repeat(200_000)).into_bytes();
    for body in [
        vec![0xff, 0xfe, b'{', b'}'],
        deep,
        b"\x00 not json".to_vec(),
    ] {
        let ts = now_secs().to_string();
        let sig = signature(&ts, "n", ENCRYPT_KEY, &body);
        let headers = vec![
            ("X-Lark-Request-Timestamp".to_string(), ts),
            ("X-Lark-Request-Nonce".to_string(), "n".to_string()),
            ("X-Lark-Signature".to_string(), sig),
        ];
        let (status, answer) = post(port, PATH, &headers, &body);
        assert_eq!(status, 400, "{answer}");
    }
    assert!(
        home.ctl(&["status"]).status.success(),
        "loongd keeps serving"
    );
    // And the channel too: a good event after the bad ones is answered, once.
    let good = signed(
        &message_event("ev-after", CHAT, "om_after", "hi"),
        now_secs(),
        "n9",
    );
    let (status, body) = post(port, PATH, &good.headers, &good.body);
    assert_eq!(status, 200, "{body}");
    assert!(wait_until(Duration::from_secs(30), || !api
        .replies()
        .is_empty()));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(api.replies().len(), 1);
    assert_eq!(details(&home, "channel.received").len(), 1);
}

#[test]
fn feishu_kill_9_of_the_channel_worker_between_receipt_and_answer_answers_exactly_once() {
    // The provider holds its answer until the worker is dead, so the kill lands between
    // the event's receipt (committed with its id) and the answer's reply.
    let crate::agent::Reply::Sse(events) = crate::agent::text_answer("the one answer") else {
        unreachable!("a text answer is an SSE reply")
    };
    let gate = crate::agent::Gate::default();
    let provider = crate::agent::Provider::start(vec![crate::agent::Reply::Gated(
        events[..1].to_vec(),
        gate.clone(),
        events[1..].to_vec(),
    )]);
    let api = OpenApi::start();
    let (home, pid, port) = feishu_home(&provider, &api);
    let event = message_event("ev-kill", CHAT, "om_kill", "hello");
    let req = signed(&event, now_secs(), "nk");
    let (status, body) = post(port, PATH, &req.headers, &req.body);
    assert_eq!(status, 200, "{body}");
    assert!(wait_until(Duration::from_secs(20), || provider
        .requests()
        .len()
        == 1));
    let workers = channel_workers(pid);
    assert!(!workers.is_empty(), "the channel worker runs");
    for w in workers {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(w as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9");
    }
    assert!(
        api.replies().is_empty(),
        "nothing is sent before the answer"
    );
    gate.open();
    // The restarted worker sends the answer, once; the platform's retry of the event
    // (its 200 may have been lost) is a replay, and takes nothing.
    assert!(
        wait_until(Duration::from_secs(60), || !api.replies().is_empty()),
        "{:?}",
        json_list(&home, &["channels", "status", "fs", "--json"])
    );
    let retried = wait_until(Duration::from_secs(30), || {
        post(port, PATH, &req.headers, &req.body).0 == 200
    });
    assert!(retried, "the restarted worker answers the retry");
    std::thread::sleep(Duration::from_secs(2));
    let replies = api.replies();
    assert_eq!(replies.len(), 1, "{replies:?}");
    let content: Value =
        serde_json::from_str(replies[0].body["content"].as_str().unwrap_or("")).expect("content");
    assert_eq!(content["text"], "the one answer");
    assert_eq!(details(&home, "channel.received").len(), 1);
    assert_eq!(provider.requests().len(), 1);
    assert!(!details(&home, "worker.restarted").is_empty());
}

#[test]
fn feishu_an_unauthenticated_flood_is_limited_per_account_and_recorded_bounded() {
    let provider =
        crate::agent::Provider::start(vec![crate::agent::text_answer("after the flood")]);
    let api = OpenApi::start();
    let (home, _pid, port) = feishu_home(&provider, &api);
    // 300 unsigned requests as fast as one client sends them: past the account's burst
    // (100) and rate (20 a second), 429 at once; none reaches the agent.
    let started = std::time::Instant::now();
    let statuses: Vec<u16> = (0..300)
        .map(|_| post(port, PATH, &[], b"{\"not\": \"signed\"}").0)
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    let judged = statuses.iter().filter(|s| **s == 401 || **s == 400).count();
    assert_eq!(limited + judged, 300, "{statuses:?}");
    let most = 100.0 + 20.0 * elapsed + 2.0;
    assert!(
        (judged as f64) <= most && limited > 0,
        "{judged} judged in {elapsed:.1} s (at most {most:.0}): {statuses:?}"
    );
    assert!(
        home.ctl(&["status"]).status.success(),
        "loongd keeps serving"
    );
    // Recorded bounded: one record for the minute, every refusal counted.
    let refused = details(&home, "channel.refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    let status = json_list(&home, &["channels", "status", "fs", "--json"]);
    assert_eq!(status[0]["refused"], judged as u64, "{status:?}");
    // Positive control: once the rate allows again, a signed event is taken and answered.
    std::thread::sleep(Duration::from_millis(1500));
    let good = signed(
        &message_event("ev-after-flood", CHAT, "om_f", "hi"),
        now_secs(),
        "nf",
    );
    let (status, body) = post(port, PATH, &good.headers, &good.body);
    assert_eq!(status, 200, "{body}");
    assert!(wait_until(Duration::from_secs(30), || !api
        .replies()
        .is_empty()));
    assert_eq!(provider.requests().len(), 1);
}

#[test]
fn feishu_a_channel_that_is_not_running_is_answered_503() {
    let provider = crate::agent::Provider::start(vec![crate::agent::text_answer("unused")]);
    let api = OpenApi::start();
    let (home, _pid, port) = feishu_home(&provider, &api);
    // Its app secret gone, the channel does not start again after loongd restarts.
    let out = home.ctl(&["secrets", "rm", "channel.fs.app_secret"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = home.ctl(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    home.start();
    wait_for_gateway(&home, port);
    let plain = json!({"challenge": "c", "token": TOKEN, "type": "url_verification"});
    let (status, body) = post(port, PATH, &[], plain.to_string().as_bytes());
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        crate::kernel_calls::json(&body)["error"]["type"],
        "unavailable"
    );
    assert!(body.contains("channels status fs"), "{body}");
    // `channels status` says why.
    let status = json_list(&home, &["channels", "status", "fs", "--json"]);
    assert!(
        status[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not started")),
        "{status:?}"
    );
    // Positive control: another path of the gateway is served.
    assert_eq!(crate::gateway::http(port, "GET", "/health", &[], "").0, 200);
}

#[test]
fn feishu_webhook_bodies_keep_to_the_gateways_lower_body_bound_without_a_violation() {
    let provider = crate::agent::Provider::start(vec![crate::agent::text_answer("unused")]);
    let api = OpenApi::start();
    let (home, _pid, port) = feishu_home_with(&provider, &api, "max_body_bytes = 4096\n");
    // Past gateway.max_body_bytes (below the webhook's 1 MiB): 413 in the gateway, and
    // loongd is asked nothing it would call a protocol violation.
    let (status, body) = post(port, PATH, &[], &vec![b' '; 5000]);
    assert_eq!(status, 413, "{body}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        details(&home, "protocol.violation").is_empty(),
        "{:?}",
        details(&home, "protocol.violation")
    );
    // Positive control: a challenge within it is answered.
    let plain = json!({"challenge": "c", "token": TOKEN, "type": "url_verification"});
    assert_eq!(post(port, PATH, &[], plain.to_string().as_bytes()).0, 200);
}

#[test]
fn feishu_kill_9_of_loongd_mid_turn_answers_once_and_the_platforms_retry_is_a_replay() {
    // The first turn stalls (loongd is killed during it); the turn runs again at start.
    let provider = crate::agent::Provider::start(vec![
        crate::agent::Reply::Stall(Vec::new()),
        crate::agent::text_answer("answered after the restart"),
    ]);
    let api = OpenApi::start();
    let (home, pid, port) = feishu_home(&provider, &api);
    let req = signed(
        &message_event("ev-loongd", CHAT, "om_l", "hello"),
        now_secs(),
        "nl",
    );
    assert_eq!(post(port, PATH, &req.headers, &req.body).0, 200);
    assert!(wait_until(Duration::from_secs(20), || provider
        .requests()
        .len()
        == 1));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    assert!(wait_until(Duration::from_secs(5), || {
        !crate::support::process_alive(pid)
    }));
    assert!(api.replies().is_empty());
    home.start();
    wait_for_gateway(&home, port);
    // The platform sends the event again (it saw no answer it trusts): a replay, once the
    // channel serves again.
    let retried = wait_until(Duration::from_secs(30), || {
        let (status, body) = post(port, PATH, &req.headers, &req.body);
        status == 200 && body.contains("duplicate")
    });
    assert!(retried, "{}", home.log());
    assert!(
        wait_until(Duration::from_secs(30), || !api.replies().is_empty()),
        "{:?}",
        json_list(&home, &["channels", "status", "fs", "--json"])
    );
    std::thread::sleep(Duration::from_secs(2));
    let replies = api.replies();
    assert_eq!(replies.len(), 1, "{replies:?}");
    let content: Value =
        serde_json::from_str(replies[0].body["content"].as_str().unwrap_or("")).expect("content");
    assert_eq!(content["text"], "answered after the restart");
    assert_eq!(details(&home, "channel.received").len(), 1);
    assert_eq!(provider.requests().len(), 2);
}

#[test]
fn feishu_a_webhook_body_sent_a_byte_at_a_time_is_cut_off_and_the_gateway_keeps_serving() {
    let provider = crate::agent::Provider::start(vec![crate::agent::text_answer("unused")]);
    let api = OpenApi::start();
    let (_home, _pid, port) = feishu_home(&provider, &api);
    // An unauthenticated sender declares a body and sends it a byte every half second: it
    // would hold one of the gateway's connections for minutes.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(40)))
        .expect("timeout");
    write!(
        s,
        "POST {PATH} HTTP/1.1\r\nHost: feishu.example.com\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    )
    .expect("head");
    let mut writer = s.try_clone().expect("clone");
    std::thread::spawn(move || {
        for _ in 0..999 {
            std::thread::sleep(Duration::from_millis(500));
            if writer.write_all(b" ").is_err() {
                return;
            }
        }
    });
    let started = std::time::Instant::now();
    let mut head = String::new();
    let _ = BufReader::new(&s).read_line(&mut head);
    assert!(
        head.starts_with("HTTP/1.1 408"),
        "cut off after {:?}: {head:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // Positive control: a challenge sent whole is answered.
    let plain = json!({"challenge": "c", "token": TOKEN, "type": "url_verification"});
    assert_eq!(post(port, PATH, &[], plain.to_string().as_bytes()).0, 200);
}

#[test]
fn feishu_a_flood_of_the_largest_bodies_does_not_retire_the_channels_worker() {
    let provider = crate::agent::Provider::start(vec![crate::agent::text_answer("unused")]);
    let api = OpenApi::start();
    let (home, pid, port) = feishu_home(&provider, &api);
    let before = channel_workers(pid);
    assert!(!before.is_empty(), "the channel worker runs");
    // Unsigned bodies of the most the route takes (1 MiB), sent at once: queued together in
    // loongd, they were handed to the worker in one answer past its frame limit.
    let mut body = br#"{"pad":""#.to_vec();
    body.resize(
        loong_ipc::message::channel::MAX_WEBHOOK_BODY_BYTES - 2,
        b'a',
    );
    body.extend_from_slice(br#""}"#);
    let body = Arc::new(body);
    let senders: Vec<_> = (0..48)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || post(port, PATH, &[], &body).0)
        })
        .collect();
    let statuses: Vec<u16> = senders
        .into_iter()
        .map(|t| t.join().expect("sender"))
        .collect();
    // Refused (400/401), or not judged in time on a loaded machine (503/504): none taken.
    assert!(!statuses.contains(&200), "{statuses:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        details(&home, "worker.restarted").is_empty(),
        "{:?}\n{}",
        details(&home, "worker.restarted"),
        home.log()
    );
    assert_eq!(channel_workers(pid), before, "the same worker serves");
    // Positive control: the channel answers a challenge.
    let plain = json!({"challenge": "c", "token": TOKEN, "type": "url_verification"});
    assert_eq!(post(port, PATH, &[], plain.to_string().as_bytes()).0, 200);
}
