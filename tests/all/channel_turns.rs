//! The channels' turns run at once, each chat's in order: a turn waiting for an approval
//! holds no other chat's, no other channel's and no `loongctl ask`'s turn (the turn runner
//! runs turns of different chats at once and the agent's pool has more than one worker),
//! while two messages of one chat are answered one after the other, the second turn reading
//! what the first one kept.

use std::{sync::mpsc, time::Duration};

use serde_json::json;

use crate::{
    agent::{ask, text_answer, tool_answer, Gate, Provider, Reply},
    channel_approvals::{approval_state, home_with_pack, home_with_pack_and, offers, sent_texts},
    channels::{add_telegram, update, wait_until, BotApi, Mode},
    support::{text, Home},
};

/// How long a turn that is not held may take on a loaded machine.
const ANSWERED_WITHIN: Duration = Duration::from_secs(30);

#[test]
fn a_turn_waiting_for_an_approval_holds_no_other_chat_channel_or_ask() {
    let ws = tempfile::Builder::new()
        .prefix("lchanturns")
        .tempdir_in("/tmp")
        .expect("dir");
    // Chat 111's turn asks for a risky call and waits for its approval; the next three
    // turns (chat 222's, the other channel's, the ask), in whatever order they reach the
    // provider, answer at once; the fifth request is chat 111's turn going on once approved.
    let provider = Provider::start(vec![
        tool_answer(
            "shell_exec",
            &json!({"command": "rm -rf /tmp/loong-channel-turns-nothing-here"}),
        ),
        text_answer("fine"),
        text_answer("fine"),
        text_answer("fine"),
        text_answer("removed"),
    ]);
    let home = home_with_pack(&provider, ws.path());
    home.start();
    let api = BotApi::start(Mode::Updates(vec![update(100, 111, "clean up")]));
    let other = BotApi::start(Mode::Updates(Vec::new()));
    let base = format!("http://127.0.0.1:{}", api.port);
    let other_base = format!("http://127.0.0.1:{}", other.port);
    let out = add_telegram(
        &home,
        "ops",
        &[
            "--allowed-chat",
            "111",
            "--allowed-chat",
            "222",
            "--operator-chat",
            "42",
            "--api-base",
            &base,
            "--pack",
            "chatops",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = add_telegram(
        &home,
        "other",
        &["--allowed-chat", "333", "--api-base", &other_base],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        wait_until(ANSWERED_WITHIN, || !offers(&api).is_empty()),
        "the approval was not offered: {}",
        home.log()
    );
    let approve = offers(&api)[0].1.clone();
    let id = approve
        .strip_prefix("approve:")
        .expect("approve data")
        .to_owned();

    // While it waits: another chat of the channel, another channel, and an ask.
    api.push(update(101, 222, "hello"));
    other.push(update(1, 333, "hello"));
    let (tx, asked) = mpsc::channel();
    std::thread::scope(|s| {
        let home = &home;
        s.spawn(move || {
            let _ = tx.send(ask(home, &["hello"]));
        });
        let answered = asked.recv_timeout(ANSWERED_WITHIN);
        let Ok((code, out, err)) = answered else {
            panic!(
                "the ask waited behind the channel's turn; provider requests: {}",
                provider.requests().len()
            )
        };
        assert_eq!((code, out.trim()), (0, "fine"), "{err}");
    });
    assert!(
        wait_until(ANSWERED_WITHIN, || sent_texts(&api, 222) == ["fine"]),
        "chat 222 waited behind chat 111's turn: {:?}",
        api.calls("sendMessage")
    );
    assert!(
        wait_until(ANSWERED_WITHIN, || sent_texts(&other, 333) == ["fine"]),
        "the other channel waited behind ops' turn: {:?}",
        other.calls("sendMessage")
    );
    // All the while, chat 111's turn waited for its approval, unanswered.
    assert_eq!(approval_state(&home, &id), "pending");
    assert!(sent_texts(&api, 111).is_empty());

    // The positive control: approved, it goes on to its answer.
    let out = home.ctl(&["approvals", "approve", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        wait_until(ANSWERED_WITHIN, || sent_texts(&api, 111) == ["removed"]),
        "{:?}",
        api.calls("sendMessage")
    );
    assert_eq!(provider.requests().len(), 5);
}

#[test]
fn two_messages_of_one_chat_are_answered_in_order() {
    let Reply::Sse(events) = text_answer("one") else {
        unreachable!("a text answer is an SSE reply")
    };
    let gate = Gate::default();
    let provider = Provider::start(vec![
        Reply::Gated(events[..1].to_vec(), gate.clone(), events[1..].to_vec()),
        text_answer("two"),
    ]);
    let home = Home::with_config(&provider.config(""));
    home.start();
    let api = BotApi::start(Mode::Updates(vec![
        update(200, 111, "first"),
        update(201, 111, "second"),
    ]));
    let base = format!("http://127.0.0.1:{}", api.port);
    let out = add_telegram(&home, "tg", &["--allowed-chat", "111", "--api-base", &base]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(wait_until(ANSWERED_WITHIN, || provider.requests().len() == 1));
    // The first turn is held at the provider: the second does not start beside it.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        provider.requests().len(),
        1,
        "the chat's second turn ran at once"
    );
    gate.open();
    assert!(
        wait_until(ANSWERED_WITHIN, || sent_texts(&api, 111).len() == 2),
        "{:?}",
        api.calls("sendMessage")
    );
    assert_eq!(sent_texts(&api, 111), ["one", "two"]);
    // The second turn read what the first kept in the chat's session.
    let requests = provider.requests();
    let said: Vec<String> = requests[1]["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        said.iter().any(|c| c == "first") && said.iter().any(|c| c == "one"),
        "{said:?}"
    );
}

#[test]
fn an_answer_the_outbox_refuses_settles_its_message_and_the_chat_goes_on() {
    // Chat 111's first answer is above the outbox's bound: the message is answered with the
    // failure text, not left running (which would hold the chat's every later message, and
    // a slot of its channel, until loongd restarts). The second message is answered.
    let big = "x".repeat(300 * 1024);
    let provider = Provider::start(vec![text_answer(&big), text_answer("two")]);
    let home = Home::with_config(&provider.config(""));
    home.start();
    let api = BotApi::start(Mode::Updates(vec![
        update(300, 111, "first"),
        update(301, 111, "second"),
    ]));
    let base = format!("http://127.0.0.1:{}", api.port);
    let out = add_telegram(&home, "tg", &["--allowed-chat", "111", "--api-base", &base]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        wait_until(ANSWERED_WITHIN, || sent_texts(&api, 111).len() == 2),
        "the chat's second message waited behind its first: {:?}; {}",
        sent_texts(&api, 111),
        home.log()
    );
    let sent = sent_texts(&api, 111);
    assert_eq!(sent[1], "two");
    assert!(sent[0].starts_with("Sorry"), "{:?}", sent[0]);
    assert_eq!(provider.requests().len(), 2);
}

/// How long a turn's call waits for an agent worker before it fails
/// (`effects::invoke::QUEUE_DEADLINE`), and a margin.
const PAST_THE_QUEUE_DEADLINE: Duration = Duration::from_secs(36);

#[test]
fn channel_turns_run_at_once_no_more_than_the_agent_pool_serves() {
    // One agent worker: chat 111's turn holds it while it waits for an approval. Chat 222's
    // message waits in the inbox (pending), rather than being claimed and failing on the
    // pool's queue deadline with the failure text sent; approved, both are answered.
    let ws = tempfile::Builder::new()
        .prefix("lchanpool")
        .tempdir_in("/tmp")
        .expect("dir");
    let provider = Provider::start(vec![
        tool_answer(
            "shell_exec",
            &json!({"command": "rm -rf /tmp/loong-channel-pool-nothing-here"}),
        ),
        text_answer("removed"),
        text_answer("fine"),
    ]);
    let home = home_with_pack_and(&provider, ws.path(), "[workers]\nagent_pool_size = 1\n");
    home.start();
    let api = BotApi::start(Mode::Updates(vec![update(100, 111, "clean up")]));
    let base = format!("http://127.0.0.1:{}", api.port);
    let out = add_telegram(
        &home,
        "ops",
        &[
            "--allowed-chat",
            "111",
            "--allowed-chat",
            "222",
            "--operator-chat",
            "42",
            "--api-base",
            &base,
            "--pack",
            "chatops",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        wait_until(ANSWERED_WITHIN, || !offers(&api).is_empty()),
        "the approval was not offered: {}",
        home.log()
    );
    let approve = offers(&api)[0].1.clone();
    let id = approve
        .strip_prefix("approve:")
        .expect("approve data")
        .to_owned();
    api.push(update(101, 222, "hello"));
    std::thread::sleep(PAST_THE_QUEUE_DEADLINE);
    assert_eq!(
        sent_texts(&api, 222),
        Vec::<String>::new(),
        "chat 222's turn failed waiting for the agent's one worker"
    );
    let out = home.ctl(&["approvals", "approve", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        wait_until(ANSWERED_WITHIN, || sent_texts(&api, 111) == ["removed"]
            && sent_texts(&api, 222) == ["fine"]),
        "{:?}",
        api.calls("sendMessage")
    );
}

#[test]
fn kill_9_of_loongd_with_two_turns_in_flight_answers_each_message_once_in_its_chats_order() {
    // Two chats of two messages each; loongd is killed while both chats' first turns run.
    // After the restart every message is answered once, each chat's first before its second.
    let provider = Provider::start(vec![
        Reply::Stall(Vec::new()),
        Reply::Stall(Vec::new()),
        text_answer("a"),
        text_answer("b"),
        text_answer("c"),
        text_answer("d"),
    ]);
    let home = Home::with_config(&provider.config(""));
    let pid = home.start();
    let api = BotApi::start(Mode::Updates(vec![
        update(400, 111, "111 first"),
        update(401, 111, "111 second"),
        update(402, 222, "222 first"),
        update(403, 222, "222 second"),
    ]));
    let base = format!("http://127.0.0.1:{}", api.port);
    let out = add_telegram(
        &home,
        "tg",
        &[
            "--allowed-chat",
            "111",
            "--allowed-chat",
            "222",
            "--api-base",
            &base,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        wait_until(ANSWERED_WITHIN, || provider.requests().len() == 2),
        "two turns in flight"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    assert!(wait_until(Duration::from_secs(5), || {
        !crate::support::process_alive(pid)
    }));
    assert!(api.calls("sendMessage").is_empty());
    home.start();
    assert!(
        wait_until(ANSWERED_WITHIN, || sent_texts(&api, 111).len() == 2
            && sent_texts(&api, 222).len() == 2),
        "{:?}",
        api.calls("sendMessage")
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(api.calls("sendMessage").len(), 4);
    // The turns after the restart: each chat's first before its second.
    let last_said: Vec<String> = provider.requests()[2..]
        .iter()
        .filter_map(|r| r["messages"].as_array().and_then(|m| m.last()).cloned())
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(last_said.len(), 4, "{last_said:?}");
    for chat in ["111", "222"] {
        let at = |t: &str| last_said.iter().position(|s| s == &format!("{chat} {t}"));
        assert!(
            at("first") < at("second") && at("first").is_some(),
            "{last_said:?}"
        );
    }
}

#[test]
fn turns_waiting_for_approvals_never_hold_every_turn_slot_of_a_channel() {
    // Two turns of one channel may run at once. Chat 111's waits for an approval; chat
    // 222's asks for one too, and is denied without asking (it would hold the channel's
    // last slot): it answers, and chat 333's turn runs at once, not after the approvals.
    let ws = tempfile::Builder::new()
        .prefix("lchanwait")
        .tempdir_in("/tmp")
        .expect("dir");
    let risky = |n: &str| {
        tool_answer(
            "shell_exec",
            &json!({"command": format!("rm -rf /tmp/loong-channel-wait-nothing-here-{n}")}),
        )
    };
    let provider = Provider::start(vec![
        risky("1"),
        risky("2"),
        text_answer("not allowed"),
        text_answer("fine"),
        text_answer("removed"),
    ]);
    let home = home_with_pack(&provider, ws.path());
    home.start();
    let api = BotApi::start(Mode::Updates(vec![update(500, 111, "clean up")]));
    let base = format!("http://127.0.0.1:{}", api.port);
    let out = add_telegram(
        &home,
        "ops",
        &[
            "--allowed-chat",
            "111",
            "--allowed-chat",
            "222",
            "--allowed-chat",
            "333",
            "--operator-chat",
            "42",
            "--api-base",
            &base,
            "--pack",
            "chatops",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        wait_until(ANSWERED_WITHIN, || offers(&api).len() == 1),
        "the approval was not offered: {}",
        home.log()
    );
    let approve = offers(&api)[0].1.clone();
    let id = approve
        .strip_prefix("approve:")
        .expect("approve data")
        .to_owned();
    api.push(update(501, 222, "clean up too"));
    assert!(
        wait_until(ANSWERED_WITHIN, || sent_texts(&api, 222) == ["not allowed"]),
        "chat 222's turn waited for an approval beside chat 111's: {:?}",
        api.calls("sendMessage")
    );
    api.push(update(502, 333, "hello"));
    assert!(
        wait_until(ANSWERED_WITHIN, || sent_texts(&api, 333) == ["fine"]),
        "chat 333 waited behind the approvals: {:?}",
        api.calls("sendMessage")
    );
    assert_eq!(offers(&api).len(), 1, "the second approval was offered");
    // The positive control: chat 111's approval waited all along; approved, it goes on.
    assert_eq!(approval_state(&home, &id), "pending");
    let out = home.ctl(&["approvals", "approve", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        wait_until(ANSWERED_WITHIN, || sent_texts(&api, 111) == ["removed"]),
        "{:?}",
        api.calls("sendMessage")
    );
}

#[test]
fn a_channel_turn_that_finds_every_agent_worker_held_waits_and_is_answered_later() {
    // A pool of two agent workers, both held by `loongctl ask`s whose answers wait at the
    // provider. A channel message is claimed (one channel turn may run beside an ask) and
    // finds no free worker within the pool's queue deadline: it goes back to pending, not
    // answered with the failure text; once the asks end, it is answered.
    let Reply::Sse(events) = text_answer("held") else {
        unreachable!("a text answer is an SSE reply")
    };
    let gate = Gate::default();
    let held = Reply::Gated(events[..1].to_vec(), gate.clone(), events[1..].to_vec());
    let provider = Provider::start(vec![held.clone(), held, text_answer("fine")]);
    let home = Home::with_config(&provider.config("[workers]\nagent_pool_size = 2\n"));
    home.start();
    std::thread::scope(|s| {
        let asks: Vec<_> = (0..2)
            .map(|_| s.spawn(|| ask(&home, &["hold a worker"])))
            .collect();
        assert!(
            wait_until(ANSWERED_WITHIN, || provider.requests().len() == 2),
            "{}",
            home.log()
        );
        let api = BotApi::start(Mode::Updates(vec![update(400, 111, "hello")]));
        let base = format!("http://127.0.0.1:{}", api.port);
        let out = add_telegram(&home, "tg", &["--allowed-chat", "111", "--api-base", &base]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        std::thread::sleep(PAST_THE_QUEUE_DEADLINE);
        assert_eq!(
            sent_texts(&api, 111),
            Vec::<String>::new(),
            "the channel's turn was used up while every agent worker was held"
        );
        gate.open();
        for a in asks {
            let (code, out, err) = a.join().expect("ask");
            assert_eq!((code, out.trim()), (0, "held"), "{err}");
        }
        assert!(
            wait_until(ANSWERED_WITHIN, || sent_texts(&api, 111) == ["fine"]),
            "{:?}; {}",
            api.calls("sendMessage"),
            home.log()
        );
        // Answered exactly once.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(sent_texts(&api, 111), ["fine"]);
    });
}
