//! Tests of the Bot API client: envelopes, updates, polling waits, and a local server.

use super::*;
use crate::testserver::serve;

const TOKEN: &str = "123456:AAH-secret_key";

fn json_body(v: Value) -> (u16, &'static str, Vec<u8>) {
    (200, "application/json", v.to_string().into_bytes())
}

#[test]
fn envelopes_become_results_or_errors() {
    let ok = outcome("getUpdates", 200, br#"{"ok":true,"result":[]}"#).expect("ok");
    assert_eq!(ok, json!([]));
    let conflict = outcome(
        "getUpdates",
        409,
        br#"{"ok":false,"error_code":409,"description":"Conflict: terminated by other getUpdates request"}"#,
    )
    .expect_err("409");
    assert!(conflict.is_conflict());
    assert!(conflict.to_string().contains("deleteWebhook"), "{conflict}");
    let limited = outcome(
        "sendMessage",
        429,
        br#"{"ok":false,"error_code":429,"description":"Too Many Requests","parameters":{"retry_after":17}}"#,
    )
    .expect_err("429");
    assert_eq!(limited.retry_after(), Some(Duration::from_secs(17)));
    // A retry_after past the bound is clamped, a missing one is the first back-off step.
    let huge = outcome(
        "sendMessage",
        429,
        br#"{"ok":false,"error_code":429,"parameters":{"retry_after":99999999}}"#,
    )
    .expect_err("429");
    assert_eq!(huge.retry_after(), Some(MAX_RETRY_AFTER));
    let bare = outcome("sendMessage", 429, b"slow down").expect_err("429");
    assert_eq!(bare.retry_after(), Some(BACKOFF_START));
    let other = outcome("sendMessage", 502, b"<html>bad gateway</html>").expect_err("502");
    assert!(
        matches!(other, ChannelError::Api { status: 502, .. }),
        "{other}"
    );
    // ok:false under a 200 is still an error.
    let refused = outcome(
        "sendMessage",
        200,
        br#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
    )
    .expect_err("400");
    assert!(refused.to_string().contains("chat not found"), "{refused}");
}

#[test]
fn hostile_bodies_fail_cleanly() {
    // Invalid UTF-8 inside a string.
    let mut bad = br#"{"ok":true,"result":[{"update_id":1,"message":{"text":""#.to_vec();
    bad.extend_from_slice(&[0xff, 0xfe]);
    bad.extend_from_slice(br#""}}]}"#);
    assert!(matches!(
        outcome("getUpdates", 200, &bad),
        Err(ChannelError::Malformed { .. })
    ));
    // Deep nesting: serde_json's recursion limit, not a stack overflow.
    let deep = format!(
        r#"{{"ok":true,"result":[{{"update_id":1,"x":{}1{}}}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let err = outcome("getUpdates", 200, deep.as_bytes()).expect_err("deep");
    assert!(err.to_string().contains("recursion limit"), "{err}");
    // Not JSON at all, and JSON of the wrong shape.
    assert!(outcome("getUpdates", 200, b"\x00\x01").is_err());
    assert!(parse_updates(json!({"a": 1})).is_err());
    assert!(parse_updates(json!([7])).is_err());
    assert!(parse_updates(json!([{"message": {}}])).is_err());
}

#[test]
fn updates_are_parsed_one_by_one_and_unknown_kinds_skipped() {
    let updates = parse_updates(json!([
        {"update_id": 10, "message": {"message_id": 5, "date": 1,
            "chat": {"id": -100, "type": "group"}, "from": {"id": 42, "is_bot": false},
            "text": "hello", "extra": {"nested": [1, 2]}}},
        {"update_id": 11, "callback_query": {"id": "cb1", "from": {"id": 42},
            "data": "approve:7", "message": {"message_id": 9, "chat": {"id": 42}}}},
        {"update_id": 12, "poll": {"id": "p"}},
        {"update_id": 13, "message": "not an object"},
        {"update_id": 14},
    ]))
    .expect("parsed");
    assert_eq!(updates.len(), 5);
    let UpdateKind::Message(m) = &updates[0].kind else {
        panic!("{:?}", updates[0]);
    };
    assert_eq!(
        (m.chat.id, m.message_id, m.text.as_deref()),
        (-100, 5, Some("hello"))
    );
    assert_eq!(m.from.as_ref().map(|u| u.id), Some(42));
    let UpdateKind::CallbackQuery(c) = &updates[1].kind else {
        panic!("{:?}", updates[1]);
    };
    assert_eq!(
        (c.id.as_str(), c.data.as_deref()),
        ("cb1", Some("approve:7"))
    );
    for (u, want) in updates[2..]
        .iter()
        .zip(["kind poll", "message:", "kind none"])
    {
        let UpdateKind::Skipped { reason } = &u.kind else {
            panic!("{u:?}");
        };
        assert!(reason.starts_with(want), "{reason}");
    }
    // The offset passes every update, the skipped ones too.
    assert_eq!(next_offset(Some(3), &updates), Some(15));
    assert_eq!(next_offset(Some(3), &[]), Some(3));
    assert_eq!(next_offset(None, &[]), None);
}

#[test]
fn tokens_are_checked_before_they_reach_a_url() {
    check_token(TOKEN).expect("good");
    for bad in [
        "",
        "123456",
        ":abc",
        "abc:def",
        "123:ab/../c",
        "123:a?b",
        "123:a b",
        "123:a#b",
        &format!("1:{}", "a".repeat(300)),
    ] {
        assert!(check_token(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_conflict_is_recorded_backed_off_and_cleared() {
    let mut p = Poller::new(Duration::from_secs(2), Duration::from_secs(60));
    let conflict: Result<(), _> = outcome(
        "getUpdates",
        409,
        br#"{"ok":false,"error_code":409,"description":"Conflict: can't use getUpdates method while webhook is active"}"#,
    )
    .map(drop);
    assert_eq!(p.record(&conflict), Duration::from_secs(2));
    assert_eq!(p.record(&conflict), Duration::from_secs(4));
    assert!(p.conflict.as_deref().is_some_and(|c| c.contains("webhook")));
    assert_eq!(p.failures(), 2);
    assert_eq!(p.record(&Ok::<(), ChannelError>(())), Duration::ZERO);
    assert_eq!((p.conflict.as_deref(), p.failures()), (None, 0));
}

#[tokio::test]
async fn the_client_speaks_the_bot_api() {
    let (base, seen) = serve(vec![
        json_body(json!({"ok": true, "result": [
            {"update_id": 7, "message": {"message_id": 1, "chat": {"id": 42}, "text": "hi"}}
        ]})),
        json_body(json!({"ok": true, "result": {"message_id": 100}})),
        json_body(json!({"ok": true, "result": {"message_id": 101}})),
        json_body(json!({"ok": true, "result": true})),
        json_body(json!({"ok": true, "result": true})),
    ])
    .await;
    let tg = Telegram::new(&base, TOKEN, 1).expect("client");
    assert!(!format!("{tg:?}").contains("secret"));
    let updates = tg.get_updates(Some(7)).await.expect("updates");
    assert_eq!(updates[0].update_id, 7);
    let ids = tg
        .send_text(42, None, Some(1), &"x".repeat(5000))
        .await
        .expect("sent");
    assert_eq!(ids, [100, 101]);
    tg.send_typing(42).await.expect("typing");
    tg.answer_callback("cb", Some("done"))
        .await
        .expect("callback");
    let seen = seen.lock().expect("seen").clone();
    let paths: Vec<&str> = seen
        .iter()
        .map(|s| s.head.split(' ').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        paths,
        [
            "/bot123456:AAH-secret_key/getUpdates",
            "/bot123456:AAH-secret_key/sendMessage",
            "/bot123456:AAH-secret_key/sendMessage",
            "/bot123456:AAH-secret_key/sendChatAction",
            "/bot123456:AAH-secret_key/answerCallbackQuery",
        ]
    );
    let poll: Value = serde_json::from_slice(&seen[0].body).expect("json");
    assert_eq!(
        poll,
        json!({"offset": 7, "timeout": 1, "limit": 100, "allowed_updates": ["message", "callback_query"]})
    );
    let first: Value = serde_json::from_slice(&seen[1].body).expect("json");
    let second: Value = serde_json::from_slice(&seen[2].body).expect("json");
    assert_eq!(first["text"].as_str().map(str::len), Some(4096));
    assert_eq!(first["reply_parameters"]["message_id"], json!(1));
    assert_eq!(second["text"].as_str().map(str::len), Some(904));
    assert!(second.get("reply_parameters").is_none());
    let action: Value = serde_json::from_slice(&seen[3].body).expect("json");
    assert_eq!(action, json!({"chat_id": 42, "action": "typing"}));
}

#[tokio::test]
async fn oversized_and_failing_answers_are_refused_without_the_token() {
    let big = format!(
        r#"{{"ok":true,"result":[{{"update_id":1,"message":{{"message_id":1,"chat":{{"id":1}},"text":"{}"}}}}]}}"#,
        "a".repeat(10 * 1024 * 1024)
    );
    let (base, _) = serve(vec![
        (200, "application/json", big.into_bytes()),
        (
            409,
            "application/json",
            br#"{"ok":false,"error_code":409,"description":"Conflict"}"#.to_vec(),
        ),
    ])
    .await;
    let tg = Telegram::new(&base, TOKEN, 1).expect("client");
    let err = tg.get_updates(None).await.expect_err("too large");
    assert!(matches!(err, ChannelError::TooLarge { .. }), "{err}");
    let err = tg.get_updates(None).await.expect_err("conflict");
    assert!(err.is_conflict(), "{err}");
    // A transport failure names no URL (the token is in it).
    let dead = Telegram::new("http://127.0.0.1:9", TOKEN, 1).expect("client");
    let err = dead.get_updates(None).await.expect_err("refused");
    assert!(!err.to_string().contains("secret"), "{err}");
    assert!(!format!("{err:?}").contains("secret"), "{err:?}");
}

#[test]
fn an_update_id_out_of_the_platform_range_fails_the_batch() {
    // A huge (or negative) update id would move the offset where the platform's real
    // updates never reach (a negative offset even asks for the queue's tail): the batch is
    // refused whole, so the offset stays and the failure shows in the channel's status.
    for id in [i64::from(i32::MAX) + 1, i64::MAX, -5] {
        assert!(
            parse_updates(json!([{"update_id": id, "poll": {}}])).is_err(),
            "{id}"
        );
    }
    // Positive control: the largest and the smallest ids are taken.
    for id in [i64::from(i32::MAX), 0] {
        assert_eq!(
            parse_updates(json!([{"update_id": id, "poll": {}}]))
                .expect("parsed")
                .len(),
            1
        );
    }
}

#[tokio::test]
async fn an_answer_that_echoes_the_url_carries_no_token_into_an_error() {
    // A local Bot API server, a proxy or a hostile host may echo the request line (the
    // token is in its path) in a 404 page, a JSON description or a 409's: no error (which
    // goes to `channels status`, doctor and the logs) shows the token.
    let echo = format!("Not Found: POST /bot{TOKEN}/getUpdates");
    let json_echo =
        serde_json::to_vec(&json!({"ok": false, "error_code": 400, "description": echo}))
            .expect("json");
    let conflict =
        serde_json::to_vec(&json!({"ok": false, "error_code": 409, "description": echo}))
            .expect("json");
    let (base, _) = serve(vec![
        (404, "text/html", echo.clone().into_bytes()),
        (400, "application/json", json_echo),
        (409, "application/json", conflict),
    ])
    .await;
    let tg = Telegram::new(&base, TOKEN, 1).expect("client");
    for _ in 0..3 {
        let err = tg.get_updates(None).await.expect_err("refused");
        let key = TOKEN.split_once(':').map_or(TOKEN, |(_, k)| k);
        assert!(!err.to_string().contains(key), "{err}");
        assert!(!format!("{err:?}").contains(key), "{err:?}");
        // Positive control: the rest of the description is kept.
        assert!(err.to_string().contains("Not Found"), "{err}");
    }
}
