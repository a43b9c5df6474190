//! Tests of the service loops against a local Bot API server and a fake kernel.

use std::sync::Mutex;

use serde_json::json;

use super::*;
use crate::testserver::serve;

#[derive(Default)]
struct Fake {
    offset: Option<i64>,
    batches: Mutex<Vec<Batch>>,
    acks: Mutex<Vec<(i64, Vec<String>)>>,
    statuses: Mutex<Vec<(Option<String>, Option<String>)>>,
    outbox: Mutex<Vec<Outgoing>>,
}

impl Kernel for Fake {
    fn offset(&self) -> BoxFuture<'_, Result<Option<i64>, KernelError>> {
        Box::pin(async move { Ok(self.offset) })
    }
    fn received(&self, batch: Batch) -> BoxFuture<'_, Result<(), KernelError>> {
        Box::pin(async move {
            self.batches.lock().expect("lock").push(batch);
            Ok(())
        })
    }
    fn outbox(&self) -> BoxFuture<'_, Result<Vec<Outgoing>, KernelError>> {
        Box::pin(async move {
            let items = std::mem::take(&mut *self.outbox.lock().expect("lock"));
            if items.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(items)
        })
    }
    fn ack(&self, id: i64, sent: Vec<String>) -> BoxFuture<'_, Result<(), KernelError>> {
        Box::pin(async move {
            self.acks.lock().expect("lock").push((id, sent));
            Ok(())
        })
    }
    fn status(
        &self,
        conflict: Option<String>,
        last_error: Option<String>,
    ) -> BoxFuture<'_, Result<(), KernelError>> {
        Box::pin(async move {
            self.statuses
                .lock()
                .expect("lock")
                .push((conflict, last_error));
            Ok(())
        })
    }
}

fn body(v: serde_json::Value) -> crate::testserver::Canned {
    (200, "application/json", v.to_string().into_bytes())
}

#[tokio::test]
async fn a_batch_is_handed_over_with_its_offset_then_polled_past() {
    let (base, seen) = serve(vec![
        body(json!({"ok": true, "result": [
            {"update_id": 40, "message": {"message_id": 1, "chat": {"id": 7}, "from": {"id": 9}, "text": "hi"}},
            {"update_id": 41, "poll": {}}
        ]})),
        body(json!({"ok": true, "result": []})),
    ])
    .await;
    let tg = Arc::new(Telegram::new(&base, "1:k", 0).expect("client"));
    let fake = Arc::new(Fake {
        offset: Some(40),
        ..Fake::default()
    });
    let task = tokio::spawn(poll_telegram(tg, fake.clone(), Poller::default()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    task.abort();
    let batches = fake.batches.lock().expect("lock").clone();
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!((batches[0].next_offset, batches[0].skipped), (Some(42), 1));
    assert_eq!(batches[0].messages[0].text, "hi");
    assert_eq!(batches[0].messages[0].sender, "9");
    let seen = seen.lock().expect("lock").clone();
    let path = |s: &crate::testserver::Seen| s.head.split(' ').nth(1).unwrap_or("").to_owned();
    let offsets: Vec<serde_json::Value> = seen
        .iter()
        .filter(|s| path(s).ends_with("/getUpdates"))
        .map(|s| {
            serde_json::from_slice::<serde_json::Value>(&s.body).expect("json")["offset"].clone()
        })
        .collect();
    assert_eq!(offsets[..2], [json!(40), json!(42)]);
    // Once the batch was taken, its chat was shown the bot typing.
    let typing: Vec<serde_json::Value> = seen
        .iter()
        .filter(|s| path(s).ends_with("/sendChatAction"))
        .map(|s| serde_json::from_slice(&s.body).expect("json"))
        .collect();
    assert_eq!(typing, [json!({"chat_id": 7, "action": "typing"})]);
}

#[tokio::test]
async fn a_conflict_is_reported_and_polled_slowly() {
    let (base, seen) = serve(vec![(
        409,
        "application/json",
        br#"{"ok":false,"error_code":409,"description":"Conflict: terminated by other getUpdates request"}"#.to_vec(),
    )])
    .await;
    let tg = Arc::new(Telegram::new(&base, "1:k", 0).expect("client"));
    let fake = Arc::new(Fake::default());
    let poller = Poller::new(Duration::from_millis(100), Duration::from_secs(60));
    let task = tokio::spawn(poll_telegram(tg, fake.clone(), poller));
    // Waits 100, 200, 400 ms: four polls in the first 0.8 s, never a hot loop.
    tokio::time::sleep(Duration::from_millis(800)).await;
    task.abort();
    let polls = seen.lock().expect("lock").len();
    assert!((2..=5).contains(&polls), "{polls} polls");
    let statuses = fake.statuses.lock().expect("lock").clone();
    assert_eq!(
        statuses.len(),
        1,
        "reported once while it lasts: {statuses:?}"
    );
    assert!(statuses[0]
        .0
        .as_deref()
        .is_some_and(|c| c.contains("other getUpdates")));
    assert!(fake.batches.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn answers_are_sent_then_acked_and_a_429_waits() {
    let (base, seen) = serve(vec![
        (
            429,
            "application/json",
            br#"{"ok":false,"error_code":429,"parameters":{"retry_after":1}}"#.to_vec(),
        ),
        body(json!({"ok": true, "result": {"message_id": 501}})),
        body(json!({"ok": true, "result": {"message_id": 502}})),
    ])
    .await;
    let tg = Arc::new(Telegram::new(&base, "1:k", 0).expect("client"));
    let fake = Arc::new(Fake::default());
    fake.outbox.lock().expect("lock").push(Outgoing {
        id: 3,
        chat: "7".into(),
        reply_to: "1".into(),
        thread: None,
        text: "y".repeat(5000),
    });
    let started = std::time::Instant::now();
    let task = tokio::spawn(send_telegram(tg, fake.clone()));
    for _ in 0..100 {
        if !fake.acks.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retry_after honoured"
    );
    assert_eq!(
        fake.acks.lock().expect("lock").clone(),
        [(3, vec!["501".to_string(), "502".to_string()])]
    );
    assert_eq!(seen.lock().expect("lock").len(), 3);
}
