//! Approvals over chat and a channel's token generations. A tool call of a chat's turn that
//! waits for an approval is offered to the channel's operator chats with approve and deny
//! buttons; a press from an operator chat the approval was offered to resolves it through
//! loongd's approval path (audited with the Telegram user id); a press from any other chat,
//! or for an approval not offered there, is refused and recorded. `channels restart` issues
//! the channel's next token generation and refuses what the old one asked.

use std::{fs, path::Path, time::Duration};

use serde_json::{json, Value};

use crate::{
    agent::{text_answer, tool_answer, Gate, Provider, Reply},
    channels::{add_telegram, update, wait_until, BotApi, Mode},
    support::{text, Home},
    workers::{details, json_list},
};

/// A pack whose turns may run programs (after an approval for a risky one).
const CHATOPS_PACK: &str = "id = \"chatops\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\", \"memory.read\", \"memory.write\", \"channel.send\", \"process.exec\"]\napproval = \"on-high-risk\"\n";

pub(crate) fn home_with_pack(provider: &Provider, workspace: &Path) -> Home {
    home_with_pack_and(provider, workspace, "")
}

/// [`home_with_pack`] with `extra` configuration appended.
pub(crate) fn home_with_pack_and(provider: &Provider, workspace: &Path, extra: &str) -> Home {
    let home = Home::with_config(&provider.config(&format!(
        "[builtins]\nworkspace = \"{}\"\n\n[approvals]\ntimeout_ms = 60000\n\n{extra}",
        workspace.display()
    )));
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    fs::write(home.path().join("packs/chatops.toml"), CHATOPS_PACK).expect("pack");
    home
}

/// A press of a button with `data` on a message in `chat`, by `user`.
fn press(id: i64, chat: i64, user: i64, data: &str) -> Value {
    json!({"update_id": id, "callback_query": {"id": format!("cb-{id}"),
        "from": {"id": user, "is_bot": false}, "data": data,
        "message": {"message_id": 1, "chat": {"id": chat, "type": "private"}}}})
}

/// The offers sent so far: (chat, approve button's data, deny button's data).
pub(crate) fn offers(api: &BotApi) -> Vec<(i64, String, String)> {
    api.calls("sendMessage")
        .iter()
        .filter(|m| m.get("reply_markup").is_some())
        .map(|m| {
            let row = &m["reply_markup"]["inline_keyboard"][0];
            let data = |i: usize| row[i]["callback_data"].as_str().unwrap_or("").to_owned();
            (m["chat_id"].as_i64().unwrap_or(0), data(0), data(1))
        })
        .collect()
}

/// The notice the press `cb-ID` was answered with.
fn answered(api: &BotApi, id: i64) -> Option<String> {
    api.calls("answerCallbackQuery")
        .iter()
        .find(|b| b["callback_query_id"] == format!("cb-{id}").as_str())
        .map(|b| b["text"].as_str().unwrap_or("").to_owned())
}

pub(crate) fn sent_texts(api: &BotApi, chat: i64) -> Vec<String> {
    api.calls("sendMessage")
        .iter()
        .filter(|m| m["chat_id"] == chat && m.get("reply_markup").is_none())
        .map(|m| m["text"].as_str().unwrap_or("").to_owned())
        .collect()
}

pub(crate) fn approval_state(home: &Home, id: &str) -> String {
    let shown = json_list(home, &["approvals", "list", "--json"]);
    shown
        .iter()
        .find(|a| a["id"] == id)
        .and_then(|a| a["state"].as_str())
        .unwrap_or("absent")
        .to_owned()
}

#[test]
fn an_approval_is_offered_to_the_operator_chat_and_resolved_by_its_button_only() {
    let ws = tempfile::Builder::new()
        .prefix("lchanws")
        .tempdir_in("/tmp")
        .expect("dir");
    let provider = Provider::start(vec![
        tool_answer(
            "shell_exec",
            &json!({"command": "rm -rf /tmp/loong-channel-nothing-here"}),
        ),
        text_answer("removed"),
        tool_answer(
            "shell_exec",
            &json!({"command": "rm -rf /tmp/loong-channel-nothing-here-either"}),
        ),
        text_answer("not removed"),
    ]);
    let home = home_with_pack(&provider, ws.path());
    home.start();
    let api = BotApi::start(Mode::Updates(vec![update(100, 111, "clean up")]));
    let base = format!("http://127.0.0.1:{}", api.port);
    // A pack that lacks what a channel's turns need, or no such pack, is refused before
    // anything is stored.
    for (pack, want) in [
        (
            "docs-reader",
            "--pack docs-reader: it does not grant tool.invoke:agent.turn",
        ),
        ("nope", "--pack nope: no such pack"),
    ] {
        let out = add_telegram(&home, "ops", &["--api-base", &base, "--pack", pack]);
        assert!(!out.status.success(), "{pack}");
        assert!(
            text(&out.stderr).contains(want),
            "{pack}: {}",
            text(&out.stderr)
        );
    }
    assert!(json_list(&home, &["channels", "list", "--json"]).is_empty());
    assert!(json_list(&home, &["secrets", "list", "--json"]).is_empty());
    // The positive control: a pack that grants them (and tools).
    let out = add_telegram(
        &home,
        "ops",
        &[
            "--allowed-chat",
            "111",
            "--operator-chat",
            "42",
            "--api-base",
            &base,
            "--pack",
            "chatops",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let added: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(added[0]["pack"], "chatops");

    // The turn's tool call waits; its approval is offered to the operator chat, and only
    // there (the asking chat is not offered buttons).
    let offered = wait_until(Duration::from_secs(30), || !offers(&api).is_empty());
    assert!(
        offered,
        "status: {:?}; approvals: {:?}",
        json_list(&home, &["channels", "status", "ops", "--json"]),
        json_list(&home, &["approvals", "list", "--json"])
    );
    let first = offers(&api);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].0, 42);
    let approve = first[0].1.clone();
    let id = approve
        .strip_prefix("approve:")
        .expect("approve data")
        .to_owned();
    assert_eq!(first[0].2, format!("deny:{id}"));
    assert_eq!(approval_state(&home, &id), "pending");
    let offer_sent = details(&home, "channel.sent");
    assert!(
        offer_sent
            .iter()
            .any(|d| d["approval"] == id.as_str() && d["chat"] == "42"),
        "{offer_sent:?}"
    );

    // Refused: the right button pressed in a chat that is not an operator chat; and in the
    // operator chat, buttons for an approval not offered there (a forged id, a made-up one).
    api.push(press(101, 111, 111, &approve));
    api.push(press(102, 42, 42, "approve:0123456789abcdef"));
    api.push(press(103, 42, 42, "deny:../../etc/passwd"));
    api.push(press(104, 42, 42, "something else"));
    assert!(wait_until(Duration::from_secs(20), || (101..=104)
        .all(|i| answered(&api, i).is_some())));
    let notice = |i| answered(&api, i).unwrap_or_default();
    assert!(
        notice(101).contains("not an operator chat of channel ops"),
        "{}",
        notice(101)
    );
    for i in [102, 103] {
        assert!(notice(i).contains("was not offered"), "{i}: {}", notice(i));
    }
    assert!(
        notice(104).contains("not one loongd offered"),
        "{}",
        notice(104)
    );
    assert_eq!(approval_state(&home, &id), "pending");
    assert_eq!(provider.requests().len(), 1, "the turn waits");
    let refusals: Vec<Value> = details(&home, "policy.decision")
        .into_iter()
        .filter(|d| d["stage"] == "channel")
        .collect();
    // Recorded one a chat a minute (the operator chat's second refusal is counted in its
    // next record); a button loongd never makes is answered without a record.
    let mut recorded: Vec<(&str, &str)> = refusals
        .iter()
        .map(|d| {
            (
                d["chat"].as_str().unwrap_or(""),
                d["target"].as_str().unwrap_or(""),
            )
        })
        .collect();
    recorded.sort_unstable();
    assert_eq!(
        recorded,
        [("111", id.as_str()), ("42", "0123456789abcdef")],
        "{refusals:?}"
    );
    assert!(refusals
        .iter()
        .all(|d| d["allowed"] == false && d["channel"] == "ops"));

    // The positive control: the operator chat's button approves it (audited with who
    // pressed it), and the turn goes on to its answer.
    api.push(press(105, 42, 4242, &approve));
    assert!(wait_until(Duration::from_secs(20), || answered(&api, 105).is_some()));
    assert!(
        notice(105).contains(&format!("Approval {id} approved")),
        "{}",
        notice(105)
    );
    assert!(
        wait_until(Duration::from_secs(30), || sent_texts(&api, 111)
            .contains(&"removed".to_owned())),
        "{:?}",
        api.calls("sendMessage")
    );
    assert_eq!(approval_state(&home, &id), "approved");
    let resolved = details(&home, "approval.resolved");
    assert!(
        resolved.iter().any(|d| d["approval"] == id.as_str()
            && d["state"] == "approved"
            && d["resolver"]
                .as_str()
                .is_some_and(|r| r.starts_with("chat-user:4242 worker:"))),
        "{resolved:?}"
    );
    // Pressed again: it is no longer pending.
    api.push(press(106, 42, 4242, &approve));
    assert!(wait_until(Duration::from_secs(20), || answered(&api, 106).is_some()));
    assert!(
        notice(106).contains("no pending approval"),
        "{}",
        notice(106)
    );

    // The deny button denies: the next message's call is refused, and the turn says so.
    api.push(update(107, 111, "clean up again"));
    assert!(wait_until(Duration::from_secs(30), || offers(&api).len() == 2));
    let deny = offers(&api)[1].2.clone();
    api.push(press(108, 42, 4242, &deny));
    assert!(
        wait_until(Duration::from_secs(30), || sent_texts(&api, 111)
            .contains(&"not removed".to_owned())),
        "{:?}",
        api.calls("sendMessage")
    );
    assert!(notice(108).contains("denied"), "{}", notice(108));
    let requests = provider.requests();
    let refused = crate::agent::tool_messages(&requests[3]);
    assert!(
        refused
            .last()
            .and_then(|m| m["content"].as_str())
            .is_some_and(|c| c.contains("denied")),
        "{refused:?}"
    );
}

#[test]
fn a_restart_runs_the_channel_under_its_next_generation_and_refuses_the_old_ones_answer() {
    // The first turn is held at the provider until the channel was restarted: its answer,
    // made under the old generation, is refused, and the message runs again under the new.
    let Reply::Sse(events) = text_answer("made under the old generation") else {
        unreachable!("a text answer is an SSE reply")
    };
    let gate = Gate::default();
    let provider = Provider::start(vec![
        Reply::Gated(events[..1].to_vec(), gate.clone(), events[1..].to_vec()),
        text_answer("answered under generation 2"),
    ]);
    let home = Home::with_config(&provider.config(""));
    home.start();
    let api = BotApi::start(Mode::Updates(vec![update(300, 111, "hello")]));
    let base = format!("http://127.0.0.1:{}", api.port);
    let out = add_telegram(&home, "tg", &["--allowed-chat", "111", "--api-base", &base]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let added: Value = serde_json::from_slice(&out.stdout).expect("json");
    let old = added[0]["token"].as_str().expect("token").to_owned();
    assert_eq!(added[0]["generation"], 1);
    assert!(wait_until(Duration::from_secs(20), || provider
        .requests()
        .len()
        == 1));

    let out = home.ctl(&["channels", "restart", "tg", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let restarted: Value = serde_json::from_slice(&out.stdout).expect("json");
    let new = restarted[0]["token"].as_str().expect("token").to_owned();
    assert_eq!(restarted[0]["generation"], 2);
    assert_ne!(new, old);
    let tokens = json_list(&home, &["tokens", "list", "--json"]);
    let state = |id: &str| {
        tokens
            .iter()
            .find(|t| t["id"] == id)
            .and_then(|t| t["state"].as_str())
            .unwrap_or("absent")
            .to_owned()
    };
    assert_eq!(
        (state(&old), state(&new)),
        ("revoked".into(), "active".into())
    );
    assert!(details(&home, "token.revoked")
        .iter()
        .any(|d| d["token"] == old.as_str() && d["channel_generation"] == 1));

    gate.open();
    assert!(
        wait_until(Duration::from_secs(30), || !api
            .calls("sendMessage")
            .is_empty()),
        "{:?}",
        json_list(&home, &["channels", "status", "tg", "--json"])
    );
    std::thread::sleep(Duration::from_secs(2));
    let sent = api.calls("sendMessage");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["text"], "answered under generation 2");
    // The old generation's answer was decided under its token, and refused.
    let refused = details(&home, "policy.decision");
    assert!(
        refused.iter().any(|d| d["capability"] == "channel.send"
            && d["token"] == old.as_str()
            && d["allowed"] == false),
        "{refused:?}"
    );
    assert_eq!(provider.requests().len(), 2);
    let status = json_list(&home, &["channels", "status", "tg", "--json"]);
    assert_eq!(
        (
            status[0]["answered"].as_u64(),
            status[0]["generation"].as_u64()
        ),
        (Some(1), Some(2)),
        "{status:?}"
    );
    // Received once: the restart took nothing again.
    assert_eq!(details(&home, "channel.received").len(), 1);
}

#[test]
fn restarts_at_once_leave_one_generation_valid_the_channels_own() {
    // Restarts (and a restart beside a remove) read the channel's token, stop its worker and
    // revoke what they read: run together, each revoked the token it read and a token
    // another issued stayed valid, bound to no row.
    let provider = Provider::start(Vec::new());
    let home = Home::with_config(&provider.config(""));
    home.start();
    let api = BotApi::start(Mode::Updates(Vec::new()));
    let base = format!("http://127.0.0.1:{}", api.port);
    let out = add_telegram(&home, "tg", &["--allowed-chat", "111", "--api-base", &base]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let outs: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| home.ctl(&["channels", "restart", "tg", "--json"])))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("restart"))
            .collect()
    });
    for out in &outs {
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let channel = json_list(&home, &["channels", "list", "--json"]);
    let current = channel[0]["token"].as_str().expect("token").to_owned();
    // Positive control: five generations, the last one the channel's.
    assert_eq!(channel[0]["generation"], 5, "{channel:?}");
    let active: Vec<String> = json_list(&home, &["tokens", "list", "--json"])
        .iter()
        .filter(|t| t["agent"] == "channel:tg" && t["state"] == "active")
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(active, vec![current], "one valid token, the channel's");
}
