//! Tests of the Feishu webhook and client, and the cross-check with the platform's SDK.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::*;
use crate::testserver::serve;

const KEY: &str = "test-encrypt-key";
const TOKEN: &str = "verification-token";

fn now() -> SystemTime {
    SystemTime::now()
}

fn now_secs() -> String {
    now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        .to_string()
}

fn message_event(event_id: &str, text: &str) -> Value {
    json!({
        "schema": "2.0",
        "header": {"event_id": event_id, "event_type": MESSAGE_RECEIVED, "create_time": "1",
                   "token": TOKEN, "app_id": "cli_a", "tenant_key": "t"},
        "event": {
            "sender": {"sender_id": {"open_id": "ou_1", "user_id": "u1", "union_id": "on_1"},
                       "sender_type": "user", "tenant_key": "t"},
            "message": {"message_id": "om_1", "chat_id": "oc_1", "chat_type": "p2p",
                        "message_type": "text", "create_time": "1",
                        "content": json!({"text": text}).to_string()}
        }
    })
}

/// An encrypted, signed request for `event`: body and headers.
fn signed(event: &Value, ts: &str) -> (Vec<u8>, SignatureHeaders) {
    let body = json!({"encrypt": encrypt(KEY, [7; 16], event.to_string().as_bytes())})
        .to_string()
        .into_bytes();
    let headers = SignatureHeaders {
        timestamp: Some(ts.into()),
        nonce: Some("n0nce".into()),
        signature: Some(signature(ts, "n0nce", KEY, &body)),
    };
    (body, headers)
}

fn hook() -> Webhook {
    Webhook::new(KEY, TOKEN).expect("webhook")
}

#[test]
fn encryption_round_trips_and_wrong_keys_fail() {
    let enc = encrypt(KEY, [1; 16], b"hello feishu");
    assert_eq!(decrypt(KEY, &enc).expect("decrypt"), b"hello feishu");
    assert!(matches!(
        decrypt("other", &enc),
        Err(ChannelError::Decrypt(_))
    ));
    for bad in [
        "not base64!",
        "",
        "AAAA",
        &base64::engine::general_purpose::STANDARD.encode([0u8; 33]),
    ] {
        assert!(
            matches!(decrypt(KEY, bad), Err(ChannelError::Decrypt(_))),
            "{bad}"
        );
    }
}

#[test]
fn a_known_vector_decrypts() {
    // The platform documentation's example: key "test key", plaintext "hello world".
    let plain =
        decrypt("test key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=").expect("decrypt");
    assert_eq!(plain, b"hello world");
}

#[test]
fn challenges_are_answered_plain_and_encrypted_without_a_signature() {
    let plain = json!({"challenge": "ch-1", "token": TOKEN, "type": "url_verification"});
    let judged = hook()
        .judge(
            &SignatureHeaders::default(),
            plain.to_string().as_bytes(),
            now(),
        )
        .expect("plain");
    assert_eq!(judged, Judged::Challenge("ch-1".into()));
    assert_eq!(judged.response_body(), br#"{"challenge":"ch-1"}"#);
    let enc = json!({"encrypt": encrypt(KEY, [2; 16], plain.to_string().as_bytes())});
    let judged = hook()
        .judge(
            &SignatureHeaders::default(),
            enc.to_string().as_bytes(),
            now(),
        )
        .expect("encrypted");
    assert_eq!(judged, Judged::Challenge("ch-1".into()));
    // A challenge with the wrong verification token is refused.
    let wrong = json!({"challenge": "c", "token": "nope", "type": "url_verification"});
    assert!(matches!(
        hook().judge(
            &SignatureHeaders::default(),
            wrong.to_string().as_bytes(),
            now()
        ),
        Err(ChannelError::BadToken)
    ));
}

#[test]
fn a_signed_encrypted_message_is_taken() {
    let (body, headers) = signed(&message_event("ev-1", "hi bot"), &now_secs());
    let Judged::Message(m) = hook().judge(&headers, &body, now()).expect("judged") else {
        panic!("not a message");
    };
    assert_eq!(
        (
            m.event_id.as_str(),
            m.chat_id.as_str(),
            m.message_id.as_str()
        ),
        ("ev-1", "oc_1", "om_1")
    );
    assert_eq!(
        (m.sender_open_id.as_str(), m.text.as_deref()),
        ("ou_1", Some("hi bot"))
    );
}

#[test]
fn bad_signatures_stale_timestamps_and_wrong_tokens_are_refused() {
    let ts = now_secs();
    let (body, headers) = signed(&message_event("ev-2", "x"), &ts);
    // Positive control: as sent, it passes.
    hook().judge(&headers, &body, now()).expect("control");
    // One byte of the body changed.
    let mut tampered = body.clone();
    let last = tampered.len() - 3;
    tampered[last] ^= 1;
    assert!(hook().judge(&headers, &tampered, now()).is_err());
    // A signature with another key, a missing header, a different nonce.
    let mut other = headers.clone();
    other.signature = Some(signature(&ts, "n0nce", "other-key", &body));
    assert!(matches!(
        hook().judge(&other, &body, now()),
        Err(ChannelError::BadSignature)
    ));
    let mut none = headers.clone();
    none.signature = None;
    assert!(matches!(
        hook().judge(&none, &body, now()),
        Err(ChannelError::BadSignature)
    ));
    let mut nonce = headers.clone();
    nonce.nonce = Some("other".into());
    assert!(matches!(
        hook().judge(&nonce, &body, now()),
        Err(ChannelError::BadSignature)
    ));
    // A stale timestamp, correctly signed, and one from the future; a non-number.
    for offset in [-(FEISHU_TIMESTAMP_WINDOW.as_secs() as i64) - 5, 3600] {
        let ts = (now_secs().parse::<i64>().expect("n") + offset).to_string();
        let (body, headers) = signed(&message_event("ev-3", "x"), &ts);
        assert!(matches!(
            hook().judge(&headers, &body, now()),
            Err(ChannelError::StaleTimestamp { .. })
        ));
    }
    let (body, headers) = signed(&message_event("ev-3", "x"), "soon");
    assert!(matches!(
        hook().judge(&headers, &body, now()),
        Err(ChannelError::StaleTimestamp { .. })
    ));
    // Signed, but the event's verification token is wrong.
    let mut ev = message_event("ev-4", "x");
    ev["header"]["token"] = json!("forged");
    let (body, headers) = signed(&ev, &now_secs());
    assert!(matches!(
        hook().judge(&headers, &body, now()),
        Err(ChannelError::BadToken)
    ));
    // A plain (unencrypted) event must be signed too.
    let plain = message_event("ev-5", "x").to_string().into_bytes();
    assert!(hook()
        .judge(&SignatureHeaders::default(), &plain, now())
        .is_err());
}

#[test]
fn hostile_event_bodies_fail_cleanly() {
    let h = hook();
    let big = vec![b' '; MAX_EVENT_BYTES + 1];
    assert!(matches!(
        h.judge(&SignatureHeaders::default(), &big, now()),
        Err(ChannelError::TooLarge { .. })
    ));
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(h
        .judge(&SignatureHeaders::default(), deep.as_bytes(), now())
        .is_err());
    assert!(h
        .judge(&SignatureHeaders::default(), b"{\"a\":\"\xff\"}", now())
        .is_err());
    assert!(h
        .judge(&SignatureHeaders::default(), br#"{"encrypt": 5}"#, now())
        .is_err());
    // Encrypted bytes that are not JSON once decrypted.
    let enc = json!({"encrypt": encrypt(KEY, [3; 16], b"\xff\xfe not json")}).to_string();
    assert!(h
        .judge(&SignatureHeaders::default(), enc.as_bytes(), now())
        .is_err());
    // A signed event of another type is acknowledged, not taken.
    let mut ev = message_event("ev-6", "x");
    ev["header"]["event_type"] = json!("im.chat.member.bot.added_v1");
    let (body, headers) = signed(&ev, &now_secs());
    assert!(matches!(
        h.judge(&headers, &body, now()),
        Ok(Judged::Other { .. })
    ));
    // Empty secrets are refused when the webhook is made.
    assert!(Webhook::new("", TOKEN).is_err());
    assert!(Webhook::new(KEY, "").is_err());
}

#[test]
fn tokens_refresh_before_expiry() {
    let t0 = Instant::now();
    assert_eq!(
        refresh_at(t0, Duration::from_secs(7200)),
        t0 + Duration::from_secs(5400)
    );
    assert_eq!(
        refresh_at(t0, Duration::from_secs(60)),
        t0 + Duration::from_secs(30)
    );
    assert_eq!(refresh_at(t0, Duration::ZERO), t0);
    // A hostile host's `expire` neither panics nor keeps a token for good.
    let life = crate::limits::FEISHU_MAX_TOKEN_LIFE;
    let capped = t0 + life - crate::limits::FEISHU_TOKEN_REFRESH_MARGIN;
    assert_eq!(refresh_at(t0, Duration::from_secs(u64::MAX)), capped);
    assert_eq!(refresh_at(t0, life * 1000), capped);
}

fn token_answer(token: &str, expire: u64) -> crate::testserver::Canned {
    (
        200,
        "application/json",
        json!({"code": 0, "msg": "ok", "tenant_access_token": token, "expire": expire})
            .to_string()
            .into_bytes(),
    )
}

fn sent_answer(id: &str) -> crate::testserver::Canned {
    (
        200,
        "application/json",
        json!({"code": 0, "msg": "success", "data": {"message_id": id}})
            .to_string()
            .into_bytes(),
    )
}

#[tokio::test]
async fn replies_go_through_im_messages_with_a_fresh_token() {
    let (base, seen) = serve(vec![
        token_answer("t-1", 7200),
        sent_answer("om_a"),
        (
            200,
            "application/json",
            br#"{"code":99991663,"msg":"invalid access token"}"#.to_vec(),
        ),
        token_answer("t-2", 7200),
        sent_answer("om_b"),
    ])
    .await;
    let f = Feishu::new(&base, "cli_a", "app-secret").expect("client");
    assert!(!format!("{f:?}").contains("app-secret"));
    assert_eq!(f.reply("om_1", "hello").await.expect("reply"), ["om_a"]);
    // The token is cached: the second reply is refused as invalid, fetched again, retried.
    assert_eq!(f.reply("om_1", "again").await.expect("reply"), ["om_b"]);
    let seen = seen.lock().expect("seen").clone();
    let lines: Vec<String> = seen
        .iter()
        .map(|s| {
            let path = s.head.split(' ').nth(1).unwrap_or("").to_owned();
            let auth = s
                .head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .starts_with("authorization:")
                        .then(|| l[14..].trim().to_owned())
                })
                .unwrap_or_default();
            format!("{path} {auth}")
        })
        .collect();
    assert_eq!(
        lines,
        [
            "/open-apis/auth/v3/tenant_access_token/internal ",
            "/open-apis/im/v1/messages/om_1/reply Bearer t-1",
            "/open-apis/im/v1/messages/om_1/reply Bearer t-1",
            "/open-apis/auth/v3/tenant_access_token/internal ",
            "/open-apis/im/v1/messages/om_1/reply Bearer t-2",
        ]
    );
    let token_req: Value = serde_json::from_slice(&seen[0].body).expect("json");
    assert_eq!(
        token_req,
        json!({"app_id": "cli_a", "app_secret": "app-secret"})
    );
    let reply: Value = serde_json::from_slice(&seen[1].body).expect("json");
    assert_eq!(
        reply,
        json!({"msg_type": "text", "content": "{\"text\":\"hello\"}"})
    );
    // A message id that would change the path is refused before any request.
    assert!(f.reply("../../auth", "x").await.is_err());
}

/// The venv's Python with lark-oapi, or `None` (the test then reports itself skipped).
fn lark_python() -> Option<std::path::PathBuf> {
    let root = std::env::var_os("LOONG_MCP_ROOT").unwrap_or_else(|| "/opt/loong-mcp".into());
    let py = std::path::Path::new(&root).join("venv/bin/python3");
    let ok = Command::new(&py)
        .args(["-c", "import lark_oapi"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(py)
}

/// Runs `requests` through lark_check.py in one process (the SDK is slow to import).
fn run_lark(py: &std::path::Path, requests: &Value) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/feishu/lark_check.py");
    let mut child = Command::new(py)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(requests.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "lark_check.py failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).expect("lark_check.py answers")
}

#[test]
fn the_platform_sdk_reads_our_events_and_we_read_its() {
    let Some(py) = lark_python() else {
        eprintln!("SKIPPED the_platform_sdk_reads_our_events_and_we_read_its: lark-oapi is not installed (run scripts/install-mcp-servers)");
        return;
    };
    let ts = now_secs();
    let verify = |body: &[u8], sig: &str| {
        json!({"mode": "verify", "encrypt_key": KEY, "token": TOKEN,
               "body": String::from_utf8_lossy(body), "timestamp": ts, "nonce": "n0nce",
               "signature": sig})
    };
    // Ours → lark-oapi: encrypted and signed here, verified and decrypted by the SDK.
    let (body, headers) = signed(&message_event("ev-x", "from loong"), &ts);
    let sig = headers.signature.clone().expect("sig");
    // Negative control: the same body under a signature made with another key.
    let bad = signature(&ts, "n0nce", "other-key", &body);
    // Our encrypted challenge: the SDK's answer must be ours.
    let ch = json!({"challenge": "c-9", "token": TOKEN, "type": "url_verification"});
    let enc = json!({"encrypt": encrypt(KEY, [5; 16], ch.to_string().as_bytes())}).to_string();
    let out = run_lark(
        &py,
        &json!([
            verify(&body, &sig),
            verify(&body, &bad),
            verify(enc.as_bytes(), ""),
            {"mode": "make", "encrypt_key": KEY, "timestamp": ts, "nonce": "abc",
             "event": message_event("ev-y", "from the platform")},
        ]),
    );
    assert_eq!(out[0]["status"], json!(200), "{}", out[0]);
    assert_eq!(
        (out[0]["text"].as_str(), out[0]["event_id"].as_str()),
        (Some("from loong"), Some("ev-x"))
    );
    assert_eq!(out[1]["status"], json!(500), "{}", out[1]);
    assert_eq!(out[1]["text"], Value::Null);
    let theirs: Value = serde_json::from_str(out[2]["body"].as_str().expect("body")).expect("json");
    let ours: Value = serde_json::from_slice(
        &hook()
            .judge(&SignatureHeaders::default(), enc.as_bytes(), now())
            .expect("ours")
            .response_body(),
    )
    .expect("json");
    assert_eq!(theirs, ours);
    // The platform's encryption and signature → judged here.
    let body = out[3]["body"].as_str().expect("body").as_bytes().to_vec();
    let headers = SignatureHeaders {
        timestamp: Some(ts.clone()),
        nonce: Some("abc".into()),
        signature: out[3]["signature"].as_str().map(str::to_owned),
    };
    let Judged::Message(m) = hook().judge(&headers, &body, now()).expect("judged") else {
        panic!("not a message");
    };
    assert_eq!(
        (m.event_id.as_str(), m.text.as_deref()),
        ("ev-y", Some("from the platform"))
    );
}

#[test]
fn an_unsigned_encrypted_body_is_no_decryption_oracle() {
    // Whoever can reach the webhook may replay a captured encrypted event with its bytes
    // changed. Unsigned, it is a challenge or refused, and the refusal is the same whatever
    // the decryption found (bad padding, not JSON, an event, a challenge with a wrong
    // token): no padding oracle to decrypt captured events with.
    let h = hook();
    let captured = encrypt(
        KEY,
        [4; 16],
        message_event("ev-7", "secret").to_string().as_bytes(),
    );
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(&captured)
        .expect("b64");
    let n = raw.len();
    raw[n - 17] ^= 1; // the last byte of the next-to-last block: the padding breaks
    let bad_padding = base64::engine::general_purpose::STANDARD.encode(&raw);
    let bodies = [
        bad_padding,
        encrypt(KEY, [5; 16], b"not json at all"),
        captured.clone(),
        encrypt(
            KEY,
            [6; 16],
            json!({"challenge": "c", "token": "nope", "type": "url_verification"})
                .to_string()
                .as_bytes(),
        ),
    ];
    let ts = now_secs();
    for headers in [
        SignatureHeaders::default(),
        SignatureHeaders {
            timestamp: Some(ts.clone()),
            nonce: Some("n0nce".into()),
            signature: Some("00".repeat(32)),
        },
    ] {
        let errors: Vec<String> = bodies
            .iter()
            .map(|enc| {
                let body = json!({ "encrypt": enc }).to_string();
                h.judge(&headers, body.as_bytes(), now())
                    .expect_err("refused")
                    .to_string()
            })
            .collect();
        assert!(
            errors.iter().all(|e| *e == errors[0]),
            "one refusal for every unsigned body: {errors:?}"
        );
    }
    // Positive controls: signed, the captured event is taken; unsigned, a right challenge
    // is answered.
    let body = json!({ "encrypt": captured }).to_string().into_bytes();
    let headers = SignatureHeaders {
        timestamp: Some(ts.clone()),
        nonce: Some("n0nce".into()),
        signature: Some(signature(&ts, "n0nce", KEY, &body)),
    };
    assert!(matches!(
        h.judge(&headers, &body, now()),
        Ok(Judged::Message(_))
    ));
    let ok = json!({"encrypt": encrypt(KEY, [6; 16], json!({"challenge": "c", "token": TOKEN, "type": "url_verification"}).to_string().as_bytes())}).to_string();
    assert_eq!(
        h.judge(&SignatureHeaders::default(), ok.as_bytes(), now())
            .expect("challenge"),
        Judged::Challenge("c".into())
    );
}
