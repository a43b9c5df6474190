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
    /// The offers acked (by approval).
    offers_acked: Mutex<Vec<[u8; 8]>>,
    failed: Mutex<Vec<(i64, String)>>,
    statuses: Mutex<Vec<(Option<String>, Option<String>)>>,
    outbox: Mutex<Vec<Outgoing>>,
    /// Chats loongd ignores (not in the allowlist).
    strangers: Vec<String>,
}

impl Kernel for Fake {
    fn offset(&self) -> BoxFuture<'_, Result<Option<i64>, KernelError>> {
        Box::pin(async move { Ok(self.offset) })
    }
    fn received(&self, batch: Batch) -> BoxFuture<'_, Result<Taken, KernelError>> {
        Box::pin(async move {
            // As loongd does (`ChannelReceived::check_bounds`): a text past the bound, or
            // more messages than a batch holds, fails the whole call.
            if batch.messages.len() > crate::limits::TELEGRAM_MAX_UPDATES as usize {
                return Err(KernelError {
                    call: "channel_received",
                    message: format!("{} messages", batch.messages.len()),
                });
            }
            if let Some(m) = batch
                .messages
                .iter()
                .find(|m| m.text.len() > crate::limits::MAX_HANDED_TEXT_BYTES)
            {
                return Err(KernelError {
                    call: "channel_received",
                    message: format!("a text of {} bytes", m.text.len()),
                });
            }
            let mut taken: Vec<String> = batch
                .messages
                .iter()
                .map(|m| m.chat.clone())
                .filter(|c| !self.strangers.contains(c))
                .collect();
            taken.sort();
            taken.dedup();
            let presses = batch
                .presses
                .iter()
                .map(|p| (p.callback.clone(), format!("judged {}", p.data)))
                .collect();
            self.batches.lock().expect("lock").push(batch);
            Ok(Taken {
                typing: taken,
                presses,
            })
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
    fn ack(
        &self,
        id: i64,
        offer: Option<[u8; 8]>,
        sent: Vec<String>,
        failed: Option<String>,
    ) -> BoxFuture<'_, Result<(), KernelError>> {
        Box::pin(async move {
            if let Some(o) = offer {
                self.offers_acked.lock().expect("lock").push(o);
            }
            if let Some(f) = failed {
                self.failed.lock().expect("lock").push((id, f));
            }
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
        offer: None,
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

/// Waits until `fake` has `n` acks (at most `within`).
async fn acks_within(fake: &Fake, n: usize, within: Duration) -> Vec<(i64, Vec<String>)> {
    let started = std::time::Instant::now();
    while started.elapsed() < within {
        if fake.acks.lock().expect("lock").len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fake.acks.lock().expect("lock").clone()
}

#[tokio::test]
async fn an_answer_the_platform_refuses_for_good_does_not_block_the_others() {
    // A user who blocked the bot (403), or a chat gone (400): that answer is given up at
    // once and the next chat's answer is sent, never a retry loop holding the channel.
    for refused in [
        (
            403,
            r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#,
        ),
        (
            400,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
        ),
    ] {
        let (base, seen) = serve(vec![
            (refused.0, "application/json", refused.1.as_bytes().to_vec()),
            body(json!({"ok": true, "result": {"message_id": 77}})),
        ])
        .await;
        let tg = Arc::new(Telegram::new(&base, "1:k", 0).expect("client"));
        let fake = Arc::new(Fake::default());
        for (id, chat) in [(1, "7"), (2, "8")] {
            fake.outbox.lock().expect("lock").push(Outgoing {
                id,
                chat: chat.into(),
                reply_to: "1".into(),
                thread: None,
                text: "hi".into(),
                offer: None,
            });
        }
        let task = tokio::spawn(send_telegram(tg, fake.clone()));
        let acks = acks_within(&fake, 2, Duration::from_millis(1500)).await;
        task.abort();
        assert_eq!(
            acks,
            [(1, Vec::new()), (2, vec!["77".to_string()])],
            "{refused:?}"
        );
        assert_eq!(
            seen.lock().expect("lock").len(),
            2,
            "no retry of a refused answer"
        );
        let failed = fake.failed.lock().expect("lock").clone();
        assert!(
            failed.len() == 1 && failed[0].0 == 1 && failed[0].1.contains(&refused.0.to_string()),
            "the refusal is handed to loongd: {failed:?}"
        );
    }
}

#[tokio::test]
async fn a_long_answer_cut_short_resumes_at_the_part_not_sent() {
    // Part one is taken, part two meets a 429: after the wait only part two goes out, so
    // the chat never sees part one twice.
    let (base, seen) = serve(vec![
        body(json!({"ok": true, "result": {"message_id": 501}})),
        (
            429,
            "application/json",
            br#"{"ok":false,"error_code":429,"parameters":{"retry_after":1}}"#.to_vec(),
        ),
        body(json!({"ok": true, "result": {"message_id": 502}})),
        body(json!({"ok": true, "result": {"message_id": 503}})),
    ])
    .await;
    let tg = Arc::new(Telegram::new(&base, "1:k", 0).expect("client"));
    let fake = Arc::new(Fake::default());
    fake.outbox.lock().expect("lock").push(Outgoing {
        id: 4,
        chat: "7".into(),
        reply_to: "1".into(),
        thread: None,
        text: format!("{}{}", "a".repeat(4096), "b".repeat(100)),
        offer: None,
    });
    let task = tokio::spawn(send_telegram(tg, fake.clone()));
    let acks = acks_within(&fake, 1, Duration::from_secs(5)).await;
    task.abort();
    assert_eq!(acks, [(4, vec!["501".to_string(), "502".to_string()])]);
    let texts: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .map(|s| {
            serde_json::from_slice::<serde_json::Value>(&s.body).expect("json")["text"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .next()
                .map(String::from)
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(texts, ["a", "b", "b"], "part one sent once");
}

#[tokio::test]
async fn a_text_past_what_loongd_takes_is_skipped_not_a_wedge() {
    // No platform sends a text past loongd's bound, but a hostile host (or a broken local
    // Bot API server) may: handed over, it would fail the batch, the offset would never pass
    // it, and every later message would wait behind it forever.
    let text = |i: i64, t: String| {
        json!({"update_id": 1000 + i, "message": {"message_id": i, "chat": {"id": 7},
            "from": {"id": 9}, "text": t}})
    };
    let huge = "x".repeat(crate::limits::MAX_HANDED_TEXT_BYTES + 1);
    let (base, _) = serve(vec![
        body(json!({"ok": true, "result": [
            text(0, "before".into()), text(1, huge), text(2, "after".into())
        ]})),
        body(json!({"ok": true, "result": []})),
    ])
    .await;
    let tg = Arc::new(Telegram::new(&base, "1:k", 0).expect("client"));
    let fake = Arc::new(Fake::default());
    let task = tokio::spawn(poll_telegram(tg, fake.clone(), Poller::default()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    let batches = fake.batches.lock().expect("lock").clone();
    assert_eq!(batches.len(), 1, "{batches:?}");
    let texts: Vec<&str> = batches[0]
        .messages
        .iter()
        .map(|m| m.text.as_str())
        .collect();
    assert_eq!(texts, ["before", "after"]);
    assert_eq!(
        (batches[0].next_offset, batches[0].skipped),
        (Some(1003), 1)
    );
}

#[tokio::test]
async fn an_answer_past_the_limit_asked_for_is_handed_over_a_batch_at_a_time() {
    // `limit` is 100; a host answering more would make a batch loongd refuses whole, for
    // good. The first hundred go, with the offset past them; the rest come again.
    let updates: Vec<serde_json::Value> = (0..150)
        .map(|i| {
            json!({"update_id": 1000 + i, "message": {"message_id": i, "chat": {"id": 7},
                "from": {"id": 9}, "text": "hi"}})
        })
        .collect();
    let (base, _) = serve(vec![
        body(json!({"ok": true, "result": updates})),
        body(json!({"ok": true, "result": []})),
    ])
    .await;
    let tg = Arc::new(Telegram::new(&base, "1:k", 0).expect("client"));
    let fake = Arc::new(Fake::default());
    let task = tokio::spawn(poll_telegram(tg, fake.clone(), Poller::default()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    let batches = fake.batches.lock().expect("lock").clone();
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(batches[0].messages.len(), 100);
    assert_eq!(batches[0].next_offset, Some(1100));
}

#[tokio::test]
async fn only_the_chats_whose_messages_were_taken_see_the_bot_typing() {
    // A stranger (a chat not allowed) is ignored: it is shown nothing, not even typing, and
    // a chat with many messages in the batch is sent one sendChatAction.
    let text = |i: i64, chat: i64| {
        json!({"update_id": 1000 + i, "message": {"message_id": i, "chat": {"id": chat},
            "from": {"id": 9}, "text": "hi"}})
    };
    let (base, seen) = serve(vec![
        body(json!({"ok": true, "result": [text(0, 7), text(1, 8), text(2, 7), text(3, 8)]})),
        body(json!({"ok": true, "result": []})),
    ])
    .await;
    let tg = Arc::new(Telegram::new(&base, "1:k", 0).expect("client"));
    let fake = Arc::new(Fake {
        strangers: vec!["8".into()],
        ..Fake::default()
    });
    let task = tokio::spawn(poll_telegram(tg, fake.clone(), Poller::default()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    let typing: Vec<serde_json::Value> = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|s| s.head.contains("/sendChatAction"))
        .map(|s| {
            serde_json::from_slice::<serde_json::Value>(&s.body).expect("json")["chat_id"].clone()
        })
        .collect();
    assert_eq!(typing, [json!(7)]);
    assert_eq!(
        fake.batches.lock().expect("lock").len(),
        1,
        "control: the batch was taken"
    );
}

#[tokio::test]
async fn a_press_is_handed_over_and_answered_and_an_offer_goes_with_its_buttons() {
    // A press from a message's buttons is handed to loongd with its batch and answered with
    // loongd's notice; a press whose data no button of loongd's has (past the Bot API's 64
    // bytes) is passed by the offset, not handed over.
    let (base, seen) = serve(vec![
        body(json!({"ok": true, "result": [
            {"update_id": 60, "callback_query": {"id": "cb-1", "from": {"id": 42},
                "data": "approve:00112233aabbccdd",
                "message": {"message_id": 5, "chat": {"id": 42, "type": "private"}}}},
            {"update_id": 61, "callback_query": {"id": "cb-2", "from": {"id": 42},
                "data": "x".repeat(65)}}
        ]})),
        body(json!({"ok": true, "result": true})),
        body(json!({"ok": true, "result": []})),
    ])
    .await;
    let tg = Arc::new(Telegram::new(&base, "1:k", 0).expect("client"));
    let fake = Arc::new(Fake::default());
    let task = tokio::spawn(poll_telegram(tg, fake.clone(), Poller::default()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    task.abort();
    let batches = fake.batches.lock().expect("lock").clone();
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(
        batches[0].presses,
        [Press {
            callback: "cb-1".into(),
            chat: "42".into(),
            user: "42".into(),
            data: "approve:00112233aabbccdd".into(),
        }]
    );
    assert_eq!((batches[0].skipped, batches[0].next_offset), (1, Some(62)));
    let answered = seen.lock().expect("lock")[1].clone();
    assert!(
        answered.head.contains("/answerCallbackQuery"),
        "{}",
        answered.head
    );
    let body: serde_json::Value = serde_json::from_slice(&answered.body).expect("json");
    assert_eq!(
        body,
        json!({"callback_query_id": "cb-1", "text": "judged approve:00112233aabbccdd"})
    );

    // An offer is one message with the two buttons loongd named, acked as an offer.
    let (base, seen) = serve(vec![body_ok(77)]).await;
    let tg = Arc::new(Telegram::new(&base, "1:k", 0).expect("client"));
    let fake = Arc::new(Fake::default());
    fake.outbox.lock().expect("lock").push(Outgoing {
        id: 9,
        chat: "42".into(),
        reply_to: String::new(),
        thread: None,
        text: "Approval 00112233aabbccdd pending".into(),
        offer: Some(Offer {
            approval: [0, 0x11, 0x22, 0x33, 0xaa, 0xbb, 0xcc, 0xdd],
            approve: "approve:00112233aabbccdd".into(),
            deny: "deny:00112233aabbccdd".into(),
        }),
    });
    let task = tokio::spawn(send_telegram(tg, fake.clone()));
    let acks = acks_within(&fake, 1, Duration::from_secs(5)).await;
    task.abort();
    assert_eq!(acks, [(9, vec!["77".to_string()])]);
    assert_eq!(
        fake.offers_acked.lock().expect("lock").clone(),
        [[0, 0x11, 0x22, 0x33, 0xaa, 0xbb, 0xcc, 0xdd]]
    );
    let sent: serde_json::Value =
        serde_json::from_slice(&seen.lock().expect("lock")[0].body).expect("json");
    assert_eq!(
        sent["reply_markup"],
        json!({"inline_keyboard": [[
            {"text": "Approve", "callback_data": "approve:00112233aabbccdd"},
            {"text": "Deny", "callback_data": "deny:00112233aabbccdd"}
        ]]})
    );
    assert_eq!(
        (sent["chat_id"].as_i64(), sent.get("reply_parameters")),
        (Some(42), None)
    );
}

fn body_ok(id: i64) -> crate::testserver::Canned {
    body(json!({"ok": true, "result": {"message_id": id}}))
}

/// The `429` loongd's egress broker answers when the channel opens connections faster than
/// its `[egress] connections_per_second` (marked `Proxy-Status`, as the broker marks every
/// answer of its own).
fn broker_429() -> crate::testserver::Canned {
    (
        429,
        "text/plain; charset=utf-8\r\nproxy-status: loongd",
        b"loong egress: plugin channel:bench opens new connections faster than 50 per second"
            .to_vec(),
    )
}

#[tokio::test]
async fn a_poll_the_egress_broker_refused_for_its_rate_waits_the_brokers_step_not_the_platforms() {
    // The bench's 2 s stalls: the broker's 429 (its bucket refills in 20 ms) was taken for
    // the platform's rate limit without `retry_after`, and the poll waited BACKOFF_START.
    let (base, seen) = serve(vec![
        broker_429(),
        broker_429(),
        body(json!({"ok": true, "result": []})),
        (429, "text/plain", b"too many requests".to_vec()),
    ])
    .await;
    let tg = Telegram::new(&base, "1:k", 0).expect("client");
    let mut poller = Poller::default();
    let first = tg.get_updates(None).await;
    assert!(
        first
            .as_ref()
            .is_err_and(crate::error::ChannelError::is_broker_refusal),
        "{first:?}"
    );
    assert_eq!(poller.record(&first), crate::limits::BROKER_RETRY_START);
    // Still refused: doubled, never a hot loop.
    let second = tg.get_updates(None).await;
    assert_eq!(
        poller.record(&second),
        crate::limits::BROKER_RETRY_START * 2
    );
    assert!(poller.last_error.is_some() && poller.conflict.is_none());
    // A successful exchange: no wait at all (the long poll is the wait), and the state clear.
    let ok = tg.get_updates(None).await;
    assert!(ok.is_ok(), "{ok:?}");
    assert_eq!(poller.record(&ok), Duration::ZERO);
    assert!(poller.last_error.is_none() && poller.failures() == 0);
    // The positive control: a 429 the broker did not mark is the platform's, and waits the
    // platform's step.
    let platform = tg.get_updates(None).await;
    assert!(
        matches!(
            platform,
            Err(crate::error::ChannelError::RateLimited { .. })
        ),
        "{platform:?}"
    );
    assert_eq!(poller.record(&platform), BACKOFF_START);
    assert_eq!(seen.lock().expect("lock").len(), 4);
}

#[tokio::test]
async fn an_answer_the_egress_broker_refused_for_its_rate_is_sent_again_on_the_brokers_step() {
    let (base, seen) = serve(vec![
        broker_429(),
        body(json!({"ok": true, "result": {"message_id": 501}})),
    ])
    .await;
    let tg = Arc::new(Telegram::new(&base, "1:k", 0).expect("client"));
    let fake = Arc::new(Fake::default());
    fake.outbox.lock().expect("lock").push(Outgoing {
        id: 4,
        chat: "7".into(),
        reply_to: "1".into(),
        thread: None,
        text: "y".into(),
        offer: None,
    });
    let task = tokio::spawn(send_telegram(tg, fake.clone()));
    // Well within BACKOFF_START (the platform's step): only the broker's step was waited.
    let acks = acks_within(&fake, 1, BACKOFF_START / 2).await;
    task.abort();
    assert_eq!(acks, [(4, vec!["501".to_string()])]);
    assert_eq!(seen.lock().expect("lock").len(), 2);
}
