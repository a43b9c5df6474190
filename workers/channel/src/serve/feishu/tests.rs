//! The Feishu webhook loop's judging against a fake loongd: what reaches the inbox, and the
//! status each request is answered with.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::*;
use crate::feishu::{encrypt, signature};
use crate::serve::{Batch, BoxFuture, KernelError, Taken};

const KEY: &str = "encrypt-key";
const TOKEN: &str = "verification-token";

/// A loongd that keeps the event ids it saw (a second is a replay) and the messages taken.
#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<String>>,
    taken: Mutex<Vec<Incoming>>,
    /// The answers acked.
    acks: Mutex<Vec<Acked>>,
}

/// An ack: the answer's id, its sent message ids, and its failure.
type Acked = (i64, Vec<String>, Option<String>);

impl Kernel for Fake {
    fn offset(&self) -> BoxFuture<'_, Result<Option<i64>, KernelError>> {
        Box::pin(async { Ok(None) })
    }
    fn received(&self, _batch: Batch) -> BoxFuture<'_, Result<Taken, KernelError>> {
        Box::pin(async { Ok(Taken::default()) })
    }
    fn outbox(&self) -> BoxFuture<'_, Result<Vec<Outgoing>, KernelError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn ack(
        &self,
        id: i64,
        _offer: Option<[u8; 8]>,
        sent: Vec<String>,
        failed: Option<String>,
    ) -> BoxFuture<'_, Result<(), KernelError>> {
        self.acks.lock().expect("lock").push((id, sent, failed));
        Box::pin(async { Ok(()) })
    }
    fn status(
        &self,
        _conflict: Option<String>,
        _last_error: Option<String>,
    ) -> BoxFuture<'_, Result<(), KernelError>> {
        Box::pin(async { Ok(()) })
    }
    fn event(
        &self,
        event_id: String,
        message: Option<Incoming>,
    ) -> BoxFuture<'_, Result<EventTaken, KernelError>> {
        Box::pin(async move {
            let mut seen = self.seen.lock().expect("lock");
            if seen.contains(&event_id) {
                return Ok(EventTaken::Replayed);
            }
            seen.push(event_id);
            self.taken.lock().expect("lock").extend(message);
            Ok(EventTaken::Fresh)
        })
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn event(event_id: &str, text: &str) -> Value {
    json!({"schema": "2.0",
        "header": {"event_id": event_id, "event_type": "im.message.receive_v1", "token": TOKEN},
        "event": {"sender": {"sender_id": {"open_id": "ou_1"}},
            "message": {"message_id": "om_1", "chat_id": "oc_1", "chat_type": "p2p",
                "message_type": "text", "content": json!({"text": text}).to_string()}}})
}

/// `event` encrypted and signed at `ts`.
fn request(event: &Value, ts: u64) -> HookRequest {
    let body = json!({"encrypt": encrypt(KEY, [7; 16], event.to_string().as_bytes())})
        .to_string()
        .into_bytes();
    let ts = ts.to_string();
    let sig = signature(&ts, "nonce", KEY, &body);
    HookRequest {
        id: 1,
        headers: vec![
            ("x-lark-request-timestamp".into(), ts),
            ("x-lark-request-nonce".into(), "nonce".into()),
            ("x-lark-signature".into(), sig),
        ],
        body,
    }
}

fn run(hook: &Webhook, kernel: &Fake, req: &HookRequest) -> HookAnswer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(judge(hook, kernel, req, SystemTime::now()))
}

#[test]
fn a_signed_message_is_taken_once_and_refusals_take_nothing() {
    let hook = Webhook::new(KEY, TOKEN).expect("hook");
    let kernel = Fake::default();
    let good = request(&event("ev-1", "hello"), now_secs());
    // A bad signature, a stale timestamp: 401, refused, nothing handed over.
    let mut forged = good.clone();
    forged.headers[2].1 = "0".repeat(64);
    let a = run(&hook, &kernel, &forged);
    assert_eq!((a.status, a.refused.is_some()), (401, true), "{a:?}");
    let stale = request(&event("ev-1", "hello"), now_secs() - 3600);
    let a = run(&hook, &kernel, &stale);
    assert_eq!((a.status, a.refused.is_some()), (401, true), "{a:?}");
    assert!(kernel.seen.lock().expect("lock").is_empty());
    // Positive control: the signed one is taken, once.
    let a = run(&hook, &kernel, &good);
    assert_eq!((a.status, a.refused.clone()), (200, None), "{a:?}");
    let a = run(&hook, &kernel, &good);
    assert_eq!(a.status, 200);
    assert!(String::from_utf8_lossy(&a.body).contains("duplicate"));
    let taken = kernel.taken.lock().expect("lock").clone();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        (
            taken[0].key.as_str(),
            taken[0].chat.as_str(),
            taken[0].text.as_str()
        ),
        ("ev-1", "oc_1", "hello")
    );
}

#[test]
fn hostile_bodies_are_answered_400_and_take_nothing() {
    let hook = Webhook::new(KEY, TOKEN).expect("hook");
    let kernel = Fake::default();
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    for body in [
        vec![0xff, 0xfe, b'{'],
        deep.into_bytes(),
        b"not json".to_vec(),
        vec![b' '; crate::limits::MAX_EVENT_BYTES + 1],
    ] {
        let ts = now_secs().to_string();
        let sig = signature(&ts, "n", KEY, &body);
        let req = HookRequest {
            id: 2,
            headers: vec![
                ("x-lark-request-timestamp".into(), ts),
                ("x-lark-request-nonce".into(), "n".into()),
                ("x-lark-signature".into(), sig),
            ],
            body,
        };
        let a = run(&hook, &kernel, &req);
        assert_eq!((a.status, a.refused.is_some()), (400, true), "{a:?}");
    }
    assert!(kernel.seen.lock().expect("lock").is_empty());
}

fn canned(v: Value) -> crate::testserver::Canned {
    (200, "application/json", v.to_string().into_bytes())
}

/// A long answer goes out in three parts; the platform fails the second once (a 500): the
/// try after it sends the second and third only, so each part reaches the chat once, in
/// order, and the ack names the three messages. Before, the try started again from the
/// first part, which the chat then saw twice.
#[tokio::test]
async fn a_long_answer_cut_short_resumes_at_the_part_not_sent() {
    let (base, seen) = crate::testserver::serve(vec![
        canned(json!({"code": 0, "msg": "ok", "tenant_access_token": "t-1", "expire": 7200})),
        canned(json!({"code": 0, "msg": "success", "data": {"message_id": "om_a"}})),
        (
            500,
            "application/json",
            json!({"code": 1, "msg": "internal error"})
                .to_string()
                .into_bytes(),
        ),
        canned(json!({"code": 0, "msg": "success", "data": {"message_id": "om_b"}})),
        canned(json!({"code": 0, "msg": "success", "data": {"message_id": "om_c"}})),
    ])
    .await;
    let fs = Feishu::new(&base, "cli_a", "app-secret").expect("client");
    let units = crate::limits::FEISHU_MAX_MESSAGE_UNITS;
    let text = format!(
        "{}{}{}",
        "a".repeat(units),
        "b".repeat(units),
        "c".repeat(10)
    );
    assert_eq!(fs.parts(&text).len(), 3);
    let kernel = Fake::default();
    let mut backoff = Waits::new(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_millis(10),
    );
    let item = Outgoing {
        id: 4,
        chat: "oc_1".into(),
        reply_to: "om_1".into(),
        thread: None,
        text,
        offer: None,
    };
    send_one(&fs, &kernel, &Errors::default(), &mut backoff, item).await;
    let parts: Vec<String> = seen
        .lock()
        .expect("seen")
        .iter()
        .filter(|s| s.head.contains("/reply"))
        .map(|s| {
            let body: Value = serde_json::from_slice(&s.body).expect("json");
            let content: Value = serde_json::from_str(body["content"].as_str().unwrap_or_default())
                .expect("content");
            content["text"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .next()
                .map(String::from)
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(parts, ["a", "b", "b", "c"], "each part sent once, in order");
    let acks = kernel.acks.lock().expect("lock").clone();
    assert_eq!(
        acks,
        [(
            4,
            vec!["om_a".to_string(), "om_b".into(), "om_c".into()],
            None
        )]
    );
}
