//! Tests of the channel tables: exactly once across re-deliveries, restarts and acks.

use super::*;

/// The turns a channel may start a window, in these tests.
const TURNS: usize = 30;
/// The limits of these tests' claims: [`TURNS`] a window, any number at once.
const LIMITS: ClaimLimits = ClaimLimits {
    per_minute: TURNS,
    at_once: usize::MAX,
};

fn store() -> (tempfile::TempDir, ChannelStore) {
    let dir = tempfile::tempdir().expect("dir");
    let s = ChannelStore::open(&dir.path().join("state.db")).expect("open");
    s.add(&ChannelRow {
        name: "tg".into(),
        kind: "telegram".into(),
        config_json: "{}".into(),
        token_id: "tok-1".into(),
        generation: 1,
    })
    .expect("add");
    (dir, s)
}

fn msg(key: i64, chat: i64, text: &str) -> Received {
    Received {
        key: key.to_string(),
        chat: chat.to_string(),
        message_id: (key * 10).to_string(),
        thread: None,
        sender: "42".into(),
        text: text.into(),
        allowed: true,
    }
}

#[test]
fn a_batch_and_its_offset_are_taken_once() {
    let (_d, s) = store();
    assert_eq!(s.offset("tg").expect("offset"), None);
    let ids = s
        .receive("tg", Some(12), &[msg(10, 1, "a"), msg(11, 1, "b")])
        .expect("receive");
    assert_eq!(ids.len(), 2);
    assert_eq!(s.offset("tg").expect("offset"), Some(12));
    // The same batch again (a worker killed after the commit): nothing new, offset kept.
    let again = s
        .receive("tg", Some(12), &[msg(10, 1, "a"), msg(11, 1, "b")])
        .expect("again");
    assert!(again.is_empty());
    // An older offset never moves it back.
    s.receive("tg", Some(5), &[]).expect("older");
    assert_eq!(s.offset("tg").expect("offset"), Some(12));
    assert_eq!(s.counts("tg").expect("counts").pending, 2);
    // A message from a chat not allowed is kept as ignored, without its text, once.
    let other = Received {
        allowed: false,
        ..msg(12, 99, "secret words")
    };
    let taken = s
        .receive("tg", Some(13), std::slice::from_ref(&other))
        .expect("other");
    assert_eq!(taken.len(), 1);
    assert!(!taken[0].allowed);
    assert!(s
        .receive("tg", Some(13), &[other])
        .expect("again")
        .is_empty());
    let c = s.counts("tg").expect("counts");
    assert_eq!((c.pending, c.ignored), (2, 1));
    assert!(s
        .claim(LIMITS)
        .expect("claim")
        .is_some_and(|i| i.chat == "1"));
    // An unknown channel is refused.
    assert!(matches!(
        s.receive("nope", Some(1), &[msg(1, 1, "x")]),
        Err(ChannelStoreError::NoSuchChannel(_))
    ));
}

#[test]
fn every_message_is_answered_once_across_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("state.db");
    {
        let s = ChannelStore::open(&path).expect("open");
        s.add(&ChannelRow {
            name: "tg".into(),
            kind: "telegram".into(),
            config_json: "{}".into(),
            token_id: "t".into(),
            generation: 1,
        })
        .expect("add");
        s.receive("tg", Some(3), &[msg(1, 7, "one"), msg(2, 7, "two")])
            .expect("receive");
        let first = s.claim(LIMITS).expect("claim").expect("item");
        assert!(s.answer(first.id, "answer one").expect("answer"));
        // The second turn is running when loongd dies.
        let second = s.claim(LIMITS).expect("claim").expect("item");
        assert_eq!(second.text, "two");
        assert!(s.claim(LIMITS).expect("claim").is_none());
    }
    let s = ChannelStore::open(&path).expect("reopen");
    assert_eq!(s.recover().expect("recover"), 1);
    let again = s.claim(LIMITS).expect("claim").expect("item");
    assert_eq!(again.text, "two");
    assert!(s.answer(again.id, "answer two").expect("answer"));
    // A late second answer for either message is no second outbox row.
    assert!(!s.answer(again.id, "dup").expect("dup"));
    assert!(!s.ignore(again.id).expect("dup"));
    let out = s.outbox("tg", 10).expect("outbox");
    assert_eq!(
        out.iter().map(|o| o.text.as_str()).collect::<Vec<_>>(),
        ["answer one", "answer two"]
    );
    assert_eq!(
        (out[0].chat.as_str(), out[0].reply_to.as_str()),
        ("7", "10")
    );
    s.ack("tg", out[0].id).expect("ack");
    // An ack twice, or by another channel, is refused; the control acks once.
    assert!(matches!(
        s.ack("tg", out[0].id),
        Err(ChannelStoreError::NotPending { .. })
    ));
    assert!(matches!(
        s.ack("other", out[1].id),
        Err(ChannelStoreError::NotPending { .. })
    ));
    assert_eq!(s.outbox("tg", 10).expect("outbox").len(), 1);
    s.ack("tg", out[1].id).expect("ack");
    let c = s.counts("tg").expect("counts");
    assert_eq!(
        (c.pending, c.running, c.answered, c.unsent, c.sent, c.offset),
        (0, 0, 2, 0, 2, Some(3))
    );
}

#[test]
fn replayed_events_and_a_full_inbox_are_refused() {
    let (_d, s) = store();
    s.see_event("tg", "ev-1").expect("first");
    assert!(matches!(
        s.see_event("tg", "ev-1"),
        Err(ChannelStoreError::Replayed { .. })
    ));
    // Another channel's same id is its own.
    s.see_event("other", "ev-1").expect("other channel");
    // The inbox's bound: a batch past it is refused whole, the offset kept (many chats,
    // each within its own share).
    let batch: Vec<Received> = (0..MAX_RECEIVED_BATCH as i64)
        .map(|k| msg(k, k, "x"))
        .collect();
    for round in 0..(MAX_PENDING_INBOX as usize / MAX_RECEIVED_BATCH) {
        let b: Vec<Received> = batch
            .iter()
            .map(|m| Received {
                key: format!("{round}-{}", m.key),
                ..m.clone()
            })
            .collect();
        s.receive("tg", Some(round as i64), &b).expect("fits");
    }
    let err = s
        .receive("tg", Some(999), &[msg(5000, 1, "x")])
        .expect_err("full");
    assert!(matches!(err, ChannelStoreError::InboxFull { .. }), "{err}");
    assert_eq!(s.offset("tg").expect("offset"), Some(9));
    let too_many: Vec<Received> = (0..=MAX_RECEIVED_BATCH as i64)
        .map(|k| msg(k, 1, "x"))
        .collect();
    assert!(s.receive("tg", None, &too_many).is_err());
    let long = msg(1, 1, &"x".repeat(MAX_INBOX_TEXT_BYTES + 1));
    assert!(s.receive("tg", None, &[long]).is_err());
}

#[test]
fn channels_are_added_once_and_removed_whole() {
    let (_d, s) = store();
    let dup = s
        .add(&ChannelRow {
            name: "tg".into(),
            kind: "telegram".into(),
            config_json: "{}".into(),
            token_id: "x".into(),
            generation: 1,
        })
        .expect_err("dup");
    assert!(
        dup.to_string().contains("loongctl channels remove tg"),
        "{dup}"
    );
    s.receive("tg", Some(2), &[msg(1, 1, "a")])
        .expect("receive");
    assert_eq!(s.get("tg").expect("get").generation, 1);
    assert_eq!(
        s.next_generation("tg", "tok-2").expect("token"),
        (2, "tok-1".to_owned())
    );
    // The token replaced is the one the row held, whatever a caller read before.
    assert_eq!(
        s.next_generation("tg", "tok-3").expect("token"),
        (3, "tok-2".to_owned())
    );
    let row = s.get("tg").expect("get");
    assert_eq!((row.token_id.as_str(), row.generation), ("tok-3", 3));
    assert!(matches!(
        s.next_generation("nope", "tok-3"),
        Err(ChannelStoreError::NoSuchChannel(_))
    ));
    s.offer("tg", "a1", "offer").expect("offer");
    assert_eq!(s.list().expect("list").len(), 1);
    s.remove("tg").expect("remove");
    assert!(s.list().expect("list").is_empty());
    assert_eq!(s.offset("tg").expect("offset"), None);
    assert_eq!(s.counts("tg").expect("counts"), Counts::default());
    assert!(matches!(
        s.remove("tg"),
        Err(ChannelStoreError::NoSuchChannel(_))
    ));
}

fn stranger(key: i64) -> Received {
    Received {
        allowed: false,
        ..msg(key, 666, "spam")
    }
}

#[test]
fn strangers_grow_no_table_and_no_offset_moves_far_or_back() {
    let (_d, s) = store();
    // A chat not allowed sends without end (or a worker hands over made-up updates): the
    // ignored rows kept stay bounded.
    let batches = (MAX_IGNORED_KEPT as i64) / 100 + 3;
    for b in 0..batches {
        let batch: Vec<Received> = (0..100).map(|i| stranger(b * 100 + i + 1)).collect();
        s.receive("tg", Some(b * 100 + 101), &batch).expect("batch");
    }
    let counts = s.counts("tg").expect("counts");
    assert!(
        counts.ignored <= MAX_IGNORED_KEPT,
        "{} ignored rows kept",
        counts.ignored
    );
    let offset = s.offset("tg").expect("offset").expect("set");
    assert_eq!(offset, batches * 100 + 1);
    // An update below the committed offset was taken already (its row may be gone): a
    // replay of it is not taken again, allowed or not.
    assert!(s
        .receive("tg", Some(offset), &[msg(5, 1, "replayed"), stranger(6)])
        .expect("replay")
        .is_empty());
    assert_eq!(s.counts("tg").expect("counts").pending, 0);
    // Positive control: the next update is taken.
    assert_eq!(
        s.receive("tg", Some(offset + 1), &[msg(offset, 1, "new")])
            .expect("next")
            .len(),
        1
    );
    // An offset past any update id the platform gives (or below 0) is refused whole, so
    // one hostile answer cannot make the channel deaf for good.
    for far in [i64::MAX, MAX_TELEGRAM_OFFSET + 1, -1] {
        assert!(
            s.receive("tg", Some(far), &[msg(offset + 1, 1, "x")])
                .is_err(),
            "{far}"
        );
    }
    assert_eq!(s.offset("tg").expect("offset"), Some(offset + 1));
    assert_eq!(s.counts("tg").expect("counts").pending, 1);
}

#[test]
fn one_chat_flooding_neither_starves_the_others_nor_fills_the_inbox() {
    let (_d, s) = store();
    s.add(&ChannelRow {
        name: "tg2".into(),
        kind: "telegram".into(),
        config_json: "{}".into(),
        token_id: "tok-2".into(),
        generation: 1,
    })
    .expect("add");
    // Chat 1 sends far more than its share; chat 2, then another channel's chat, one each.
    let flood = MAX_PENDING_PER_CHAT as i64 + 10;
    let batch: Vec<Received> = (1..=flood).map(|k| msg(k, 1, "flood")).collect();
    for part in batch.chunks(MAX_RECEIVED_BATCH) {
        let next = part.last().map(|m| m.key.parse::<i64>().expect("key") + 1);
        s.receive("tg", next, part).expect("flood");
    }
    let c = s.counts("tg").expect("counts");
    assert_eq!(
        (c.pending, c.ignored),
        (MAX_PENDING_PER_CHAT, 10),
        "a chat's messages past its share are not kept for a turn"
    );
    s.receive("tg", Some(flood + 2), &[msg(flood + 1, 2, "me too")])
        .expect("chat 2");
    s.receive("tg2", Some(2), &[msg(1, 3, "other channel")])
        .expect("tg2");
    // Turns go round the chats: the second and third turns are chat 2's and tg2's.
    let chats: Vec<(String, String)> = (0..4)
        .map(|_| {
            let i = s.claim(LIMITS).expect("claim").expect("item");
            assert!(s.answer(i.id, "ok").expect("answer"));
            (i.channel, i.chat)
        })
        .collect();
    let want = |c: &str, h: &str| (c.to_string(), h.to_string());
    assert_eq!(
        chats,
        [
            want("tg", "1"),
            want("tg", "2"),
            want("tg2", "3"),
            want("tg", "1")
        ]
    );
}

#[test]
fn a_stranger_writing_without_end_is_audited_once_a_window() {
    let (_d, s) = store();
    // Five messages at once from one chat not allowed: the first is audited, the others
    // counted (in `channels status`); another stranger's first message is audited too.
    let batch: Vec<Received> = (1..=5).map(stranger).collect();
    let taken = s.receive("tg", Some(6), &batch).expect("batch");
    assert_eq!(
        taken.iter().map(|t| t.audited).collect::<Vec<_>>(),
        [true, false, false, false, false]
    );
    let other = Received {
        allowed: false,
        ..msg(6, 667, "spam")
    };
    let taken = s
        .receive("tg", Some(7), &[other, msg(7, 1, "hi")])
        .expect("other");
    assert_eq!(
        taken.iter().map(|t| t.audited).collect::<Vec<_>>(),
        [true, true],
        "another stranger, and an allowed message, are audited"
    );
    assert_eq!(s.counts("tg").expect("counts").ignored, 6);
}

#[test]
fn strangers_made_up_without_end_are_audited_a_bounded_number_a_window() {
    // The chat of a message is the worker's word: a worker taken over makes up a new
    // stranger for each message, and one record a chat a window was one a message.
    let (_d, s) = store();
    let mut audited = 0;
    for batch in 0..10_i64 {
        let made_up: Vec<Received> = (0..100)
            .map(|i| Received {
                allowed: false,
                ..msg(batch * 100 + i, 10_000 + batch * 100 + i, "spam")
            })
            .collect();
        let taken = s.receive("tg", None, &made_up).expect("batch");
        audited += taken.iter().filter(|t| t.audited).count();
    }
    assert_eq!(audited as i64, MAX_STRANGERS_AUDITED);
    // Positive control: an allowed chat's message is audited all the same.
    let taken = s
        .receive("tg", None, &[msg(5_000, 1, "hi")])
        .expect("allowed");
    assert!(taken[0].audited);
}

#[test]
fn offers_grow_no_table_and_keep_no_text_once_settled() {
    // Every approval a channel's turns ask for is offered to each operator chat; the rows
    // (each with its text) were kept until the channel was removed.
    let (_d, s) = store();
    s.add(&ChannelRow {
        name: "ops".into(),
        kind: "telegram".into(),
        config_json: r#"{"operator_chats": ["42"]}"#.into(),
        token_id: "tok-9".into(),
        generation: 1,
    })
    .expect("add");
    let text = "x".repeat(MAX_OFFER_TEXT_BYTES);
    for a in 0..1_100 {
        s.offer("ops", &format!("a{a}"), &text).expect("offer");
        let o = s.offers("ops", 1).expect("offers");
        s.settle_offer("ops", o[0].id, a % 2 == 0).expect("settle");
    }
    let (rows, bytes): (i64, i64) =
        s.db.with(|c| {
            c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(text)), 0) FROM channel_offers",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .expect("count");
    assert_eq!(rows, MAX_OFFERS_KEPT, "offers kept");
    assert_eq!(bytes, 0, "settled offers keep no text");
    // Positive control: the newest are still judged offered.
    assert!(s.offered("ops", "a1099", "42").expect("offered"));
}

#[test]
fn an_approval_is_offered_to_each_operator_chat_once_and_settled_once() {
    let (_d, s) = store();
    s.add(&ChannelRow {
        name: "ops".into(),
        kind: "telegram".into(),
        config_json: r#"{"operator_chats": ["42", "-100"]}"#.into(),
        token_id: "tok-9".into(),
        generation: 1,
    })
    .expect("add");
    // A channel without operator chats is offered nothing.
    assert_eq!(s.offer("tg", "a1", "offer").expect("offer"), 0);
    assert!(s.offers("tg", 16).expect("offers").is_empty());
    assert_eq!(s.offer("ops", "a1", "offer").expect("offer"), 2);
    // Asked again (a retry): still one row a chat.
    s.offer("ops", "a1", "offer").expect("again");
    let offers = s.offers("ops", 16).expect("offers");
    assert_eq!(
        offers.iter().map(|o| o.chat.as_str()).collect::<Vec<_>>(),
        ["42", "-100"]
    );
    assert!(s.offered("ops", "a1", "42").expect("offered"));
    // Not to another chat, not for another approval, not on another channel.
    assert!(!s.offered("ops", "a1", "43").expect("chat"));
    assert!(!s.offered("ops", "a2", "42").expect("approval"));
    assert!(!s.offered("tg", "a1", "42").expect("channel"));
    // Settled once, by its own channel only.
    assert!(s.settle_offer("tg", offers[0].id, true).is_err());
    assert_eq!(
        s.settle_offer("ops", offers[0].id, true).expect("sent"),
        ("42".to_owned(), "a1".to_owned())
    );
    assert!(s.settle_offer("ops", offers[0].id, true).is_err());
    s.settle_offer("ops", offers[1].id, false).expect("closed");
    assert!(s.offers("ops", 16).expect("offers").is_empty());
    // Still offered (a press on a sent offer is judged by it); gone with the channel.
    assert!(s.offered("ops", "a1", "42").expect("offered"));
    assert!(s
        .offer("ops", "a3", &"x".repeat(MAX_OFFER_TEXT_BYTES + 1))
        .is_err());
    s.remove("ops").expect("remove");
    assert!(!s.offered("ops", "a1", "42").expect("gone"));
    // A turn's chain names its channel while it runs.
    s.turn_started("channel-ops/msg-1", "ops");
    assert_eq!(s.turn_channel("channel-ops/msg-1").as_deref(), Some("ops"));
    s.turn_ended("channel-ops/msg-1");
    assert_eq!(s.turn_channel("channel-ops/msg-1"), None);
}

#[test]
fn a_channel_starts_at_most_its_turns_a_window_and_the_others_go_on() {
    let (_d, s) = store();
    s.add(&ChannelRow {
        name: "tg2".into(),
        kind: "telegram".into(),
        config_json: "{}".into(),
        token_id: "tok-2".into(),
        generation: 1,
    })
    .expect("add");
    // A flood across many chats of one channel (what a compromised worker makes up).
    let flood = TURNS as i64 + 10;
    let batch: Vec<Received> = (1..=flood).map(|k| msg(k, k, "flood")).collect();
    for part in batch.chunks(MAX_RECEIVED_BATCH) {
        let next = part.last().map(|m| m.key.parse::<i64>().expect("key") + 1);
        s.receive("tg", next, part).expect("flood");
    }
    s.receive("tg2", Some(2), &[msg(1, 1, "other channel")])
        .expect("tg2");
    let at = 1_000_000_000;
    let mut claimed = Vec::new();
    while let Some(i) = s.claim_at(at, LIMITS).expect("claim") {
        claimed.push(i.channel);
    }
    let of = |c: &str| claimed.iter().filter(|x| *x == c).count();
    // The flooding channel starts its most, the other channel its own; the rest wait.
    assert_eq!((of("tg"), of("tg2")), (TURNS, 1));
    assert_eq!(s.counts("tg").expect("counts").pending, 10);
    // Still within the window: nothing more.
    assert!(s
        .claim_at(at + TURN_RATE_WINDOW_MS - 1, LIMITS)
        .expect("claim")
        .is_none());
    // Once it moves, the waiting messages are taken (none was lost).
    let mut later = 0;
    while s
        .claim_at(at + TURN_RATE_WINDOW_MS, LIMITS)
        .expect("claim")
        .is_some()
    {
        later += 1;
    }
    assert_eq!(later, 10);
}

#[test]
fn writers_on_other_connections_wait_their_turn_rather_than_fail() {
    // Each store has its own connection to state.db: a transaction that read before it
    // wrote failed at once ("database is locked") when another connection wrote meanwhile,
    // and the worker's call failed with it (the worker backs off 2 s).
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("state.db");
    let stores: Vec<ChannelStore> = (0..3)
        .map(|_| ChannelStore::open(&path).expect("open"))
        .collect();
    for (i, s) in stores.iter().enumerate() {
        s.add(&ChannelRow {
            name: format!("c{i}"),
            kind: "telegram".into(),
            config_json: "{}".into(),
            token_id: format!("tok-{i}"),
            generation: 1,
        })
        .expect("add");
    }
    let failures: usize = std::thread::scope(|scope| {
        let runs: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                scope.spawn(move || {
                    (0..150_i64)
                        .filter(|k| {
                            s.receive(&format!("c{i}"), Some(k + 1), &[msg(*k, *k % 7, "m")])
                                .is_err()
                        })
                        .count()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().expect("thread")).sum()
    });
    assert_eq!(failures, 0);
    // Positive control: every message was taken.
    let pending: u64 = stores
        .iter()
        .enumerate()
        .map(|(i, s)| s.counts(&format!("c{i}")).expect("counts").pending)
        .sum();
    assert_eq!(pending, 3 * 150);
}

#[test]
fn an_event_and_its_message_are_taken_together_once_and_a_full_inbox_takes_neither() {
    let (_d, s) = store();
    let ev = |id: &str, k: i64| Received {
        key: id.into(),
        ..msg(k, 1, "hi")
    };
    let taken = s
        .receive_event("tg", "ev-1", Some(&ev("ev-1", 1)))
        .expect("first");
    assert_eq!(taken.len(), 1);
    // Its id again (a replay, or the platform's retry after a kill): refused, nothing taken.
    assert!(matches!(
        s.receive_event("tg", "ev-1", Some(&ev("ev-1", 1))),
        Err(ChannelStoreError::Replayed { .. })
    ));
    assert_eq!(s.counts("tg").expect("counts").pending, 1);
    // An event without a message to take is marked seen all the same.
    assert!(s
        .receive_event("tg", "ev-2", None)
        .expect("seen")
        .is_empty());
    assert!(s.receive_event("tg", "ev-2", None).is_err());
    // A full inbox refuses the message and leaves the id unseen, so the platform's retry is
    // taken once there is room.
    for round in 0.. {
        let pending = s.counts("tg").expect("counts").pending;
        if pending >= MAX_PENDING_INBOX {
            break;
        }
        let n = (MAX_PENDING_INBOX - pending).min(MAX_RECEIVED_BATCH as u64) as i64;
        let b: Vec<Received> = (0..n)
            .map(|k| Received {
                key: format!("{round}-{k}"),
                ..msg(k, k + 10, "x")
            })
            .collect();
        s.receive("tg", None, &b).expect("fits");
    }
    let err = s
        .receive_event("tg", "ev-3", Some(&ev("ev-3", 3)))
        .expect_err("full");
    assert!(matches!(err, ChannelStoreError::InboxFull { .. }), "{err}");
    assert!(
        s.see_event("tg", "ev-3").is_ok(),
        "the refused event's id was not marked seen"
    );
}

#[test]
fn a_chats_turns_run_one_at_a_time_and_a_channels_at_most_its_bound_at_once() {
    let (_d, s) = store();
    s.add(&ChannelRow {
        name: "tg2".into(),
        kind: "telegram".into(),
        config_json: "{}".into(),
        token_id: "tok-2".into(),
        generation: 1,
    })
    .expect("add");
    // Chat 1 sends two, chats 2 and 3 one each; another channel's chat one.
    s.receive(
        "tg",
        Some(5),
        &[
            msg(1, 1, "1a"),
            msg(2, 1, "1b"),
            msg(3, 2, "2"),
            msg(4, 3, "3"),
        ],
    )
    .expect("receive");
    s.receive("tg2", Some(2), &[msg(1, 9, "other")])
        .expect("tg2");
    let two = ClaimLimits {
        per_minute: TURNS,
        at_once: 2,
    };
    let mut texts = Vec::new();
    let mut running = Vec::new();
    while let Some(i) = s.claim(two).expect("claim") {
        texts.push(i.text.clone());
        running.push(i);
    }
    // Chat 1's second waits for its first; chat 3 waits for one of tg's two to end; the
    // other channel goes on.
    assert_eq!(texts, ["1a", "2", "other"]);
    assert_eq!(s.counts("tg").expect("counts").running, 2);
    // Chat 2's turn ends: chat 3's may go (chat 1's second still waits for its first).
    assert!(s.answer(running[1].id, "answer 2").expect("answer"));
    let next = s.claim(two).expect("claim").expect("item");
    assert_eq!(next.text, "3");
    assert!(s.claim(two).expect("claim").is_none());
    // Chat 1's first ends: its second goes, the older first.
    assert!(s.answer(running[0].id, "answer 1a").expect("answer"));
    let next = s.claim(two).expect("claim").expect("item");
    assert_eq!(next.text, "1b");
    // A requeued turn (a restart's) is its chat's next again, before any later message.
    s.receive("tg", Some(6), &[msg(5, 1, "1c")])
        .expect("receive");
    assert!(s.requeue(next.id).expect("requeue"));
    let again = s
        .claim(ClaimLimits { at_once: 3, ..two })
        .expect("claim")
        .expect("item");
    assert_eq!(again.text, "1b");
    assert!(s
        .claim(ClaimLimits { at_once: 3, ..two })
        .expect("claim")
        .is_none());
}

#[test]
fn a_claim_waits_for_no_fsync_and_leaves_the_connection_synchronous() {
    // The claim commits without an fsync (it is made again at the next start if lost);
    // every commit after it on the same connection (the answer's) is synchronous again.
    let (_d, s) = store();
    let synchronous = |s: &ChannelStore| {
        s.db.with(|c| c.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0)))
            .expect("pragma")
    };
    const FULL: i64 = 2;
    assert_eq!(synchronous(&s), FULL);
    s.receive("tg", Some(2), &[msg(1, 1, "a")])
        .expect("receive");
    let i = s.claim(LIMITS).expect("claim").expect("item");
    assert_eq!(
        synchronous(&s),
        FULL,
        "the claim left the connection unsynced"
    );
    // Positive control: inside, the commit is unsynced (NORMAL).
    let inside =
        s.db.with_unsynced(|c| c.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0)))
            .expect("pragma");
    assert_eq!(inside, 1);
    assert!(s.answer(i.id, "ok").expect("answer"));
}

#[test]
fn turns_waiting_for_approvals_are_counted_per_channel_and_in_all() {
    let (_d, s) = store();
    // One a channel, two in all.
    assert!(s.approval_wait_started("a", 1, 2));
    assert!(!s.approval_wait_started("a", 1, 2));
    assert!(s.approval_wait_started("b", 1, 2));
    assert!(!s.approval_wait_started("c", 1, 2));
    // A wait that ends frees its place, of its channel and in all.
    s.approval_wait_ended("a");
    assert!(s.approval_wait_started("c", 1, 2));
    assert!(!s.approval_wait_started("a", 1, 2));
    s.approval_wait_ended("b");
    assert!(s.approval_wait_started("a", 1, 2));
}

#[test]
fn seen_event_ids_made_up_without_end_grow_no_table_and_recent_ones_stay_replays() {
    let (_d, s) = store();
    let rows = |s: &ChannelStore, channel: &str| -> i64 {
        s.db.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM channel_events WHERE channel = ?1",
                params![channel],
                |r| r.get(0),
            )
        })
        .expect("count")
    };
    s.see_event("other", "ev-other").expect("other channel");
    // A worker taken over hands over a new id each call, far past the bound.
    let many = MAX_SEEN_EVENTS + 3 * SEEN_EVENTS_PRUNE_EVERY;
    s.db.with(|c| {
        let tx = StateDb::write(c)?;
        for n in 0..many {
            assert!(mark_seen(&tx, "tg", &format!("made-up-{n}"))?);
        }
        tx.commit()
    })
    .expect("flood");
    let kept = rows(&s, "tg");
    assert!(
        kept <= MAX_SEEN_EVENTS + SEEN_EVENTS_PRUNE_EVERY,
        "{kept} seen ids kept"
    );
    // Positive controls: the newest ids are still replays, the other channel's id is kept,
    // and a new id is taken.
    assert!(matches!(
        s.see_event("tg", &format!("made-up-{}", many - 1)),
        Err(ChannelStoreError::Replayed { .. })
    ));
    assert!(matches!(
        s.see_event("other", "ev-other"),
        Err(ChannelStoreError::Replayed { .. })
    ));
    assert!(s
        .receive_event("tg", "ev-new", None)
        .expect("new")
        .is_empty());
}

#[test]
fn a_channel_removed_and_added_again_still_refuses_the_event_ids_it_saw() {
    let (_d, s) = store();
    s.see_event("tg", "ev-seen").expect("first");
    s.remove("tg").expect("remove");
    s.add(&ChannelRow {
        name: "tg".into(),
        kind: "telegram".into(),
        config_json: "{}".into(),
        token_id: "tok-2".into(),
        generation: 1,
    })
    .expect("add again");
    // A signed event captured before the remove, sent again within its timestamp window.
    assert!(matches!(
        s.receive_event("tg", "ev-seen", None),
        Err(ChannelStoreError::Replayed { .. })
    ));
    // Positive control: a new event is taken.
    assert!(s
        .receive_event("tg", "ev-new", None)
        .expect("new")
        .is_empty());
}
