//! Chat channels from the operator's side: `loongctl channels add | list | status | remove`.
//! Adding a channel stores its platform secrets (read from stdin) bound to the platform's
//! API host, issues its own token within the bundled `channel` pack and keeps its state in
//! state.db; no secret appears in an answer, the trail or the channel's view; removing it
//! takes all of that away.

use std::fs;

use crate::{
    secrets::ctl_stdin,
    support::{text, Home},
    workers::{details, json_list},
};

const BOT_TOKEN: &str = "123456:AAH-bot-token-secret";

fn add_telegram(home: &Home, name: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "channels",
        "add",
        "telegram",
        name,
        "--token-stdin",
        "--json",
    ];
    args.extend_from_slice(extra);
    ctl_stdin(home, &args, &format!("{BOT_TOKEN}\n"))
}

#[test]
fn a_channel_is_added_with_its_secret_and_token_and_removed_whole() {
    let home = Home::new();
    home.start();
    let out = add_telegram(
        &home,
        "ops",
        &[
            "--allowed-chat",
            "-1001234",
            "--operator-chat",
            "42",
            "--api-base",
            "http://127.0.0.1:8081",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let c = &added[0];
    assert_eq!(
        (
            c["name"].as_str(),
            c["kind"].as_str(),
            c["api_base"].as_str()
        ),
        (Some("ops"), Some("telegram"), Some("http://127.0.0.1:8081"))
    );
    assert_eq!(c["allowed_chats"], serde_json::json!(["-1001234"]));
    assert_eq!(c["operator_chats"], serde_json::json!(["42"]));
    let token = c["token"].as_str().expect("token").to_owned();

    // The secret is in the store, bound to the API endpoint only.
    let secrets = json_list(&home, &["secrets", "list", "--json"]);
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    assert_eq!(secrets[0]["name"], "channel.ops.bot_token");
    assert_eq!(
        secrets[0]["hosts"],
        serde_json::json!(["http://127.0.0.1:8081"])
    );
    // The channel's own token, within the `channel` pack.
    let tokens = json_list(&home, &["tokens", "list", "--json"]);
    let t = tokens
        .iter()
        .find(|t| t["id"] == token.as_str())
        .expect("the channel's token");
    assert_eq!(
        (t["pack"].as_str(), t["agent"].as_str()),
        (Some("channel"), Some("channel:ops"))
    );
    // Listed and shown; its status has counts and no conflict yet.
    let listed = json_list(&home, &["channels", "list", "--json"]);
    assert_eq!(listed.len(), 1);
    let status = json_list(&home, &["channels", "status", "ops", "--json"]);
    assert_eq!(
        (
            status[0]["pending"].as_u64(),
            status[0]["conflict"].as_str()
        ),
        (Some(0), None)
    );
    // Audited with the channel's name; the bot token appears in no answer and no record.
    let issued = details(&home, "token.issued");
    assert!(
        issued
            .iter()
            .any(|d| d["channel"] == "ops" && d["token"] == token.as_str()),
        "{issued:?}"
    );
    assert!(details(&home, "secret.set")
        .iter()
        .any(|d| d["channel"] == "ops"));
    let trail = home.ctl(&["audit", "export"]);
    for shown in [&out.stdout, &trail.stdout] {
        assert!(
            !text(shown).contains("bot-token-secret"),
            "the bot token leaked"
        );
    }
    for f in ["audit.db", "state.db", "loongd.log"] {
        if let Ok(bytes) = fs::read(home.path().join(f)) {
            assert!(
                !bytes.windows(16).any(|w| w == b"bot-token-secret"),
                "the bot token is in {f}"
            );
        }
    }

    // A second channel of the same name is refused, and changes nothing.
    let dup = add_telegram(&home, "ops", &[]);
    assert!(!dup.status.success());
    assert!(
        text(&dup.stderr).contains("loongctl channels remove ops"),
        "{}",
        text(&dup.stderr)
    );
    assert_eq!(json_list(&home, &["secrets", "list", "--json"]).len(), 1);

    // Removed: the secret, the token and the channel are gone.
    let out = home.ctl(&["channels", "remove", "ops"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(json_list(&home, &["channels", "list", "--json"]).is_empty());
    assert!(json_list(&home, &["secrets", "list", "--json"]).is_empty());
    let tokens = json_list(&home, &["tokens", "list", "--json"]);
    let t = tokens
        .iter()
        .find(|t| t["id"] == token.as_str())
        .expect("listed");
    assert_eq!(t["state"], "revoked", "{t}");
    let gone = home.ctl(&["channels", "status", "ops"]);
    assert!(!gone.status.success());
    assert!(
        text(&gone.stderr).contains("no channel named `ops`"),
        "{}",
        text(&gone.stderr)
    );
}

#[test]
fn bad_channels_are_refused_before_anything_is_stored() {
    let home = Home::new();
    home.start();
    for (args, want) in [
        (
            vec!["--api-base", "http://127.0.0.1"],
            "plain http needs an explicit port",
        ),
        (vec!["--api-base", "https://x/path"], "no path"),
        (vec!["--allowed-chat", "1;2"], "a chat id is a number"),
    ] {
        let out = add_telegram(&home, "bad", &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out.stderr).contains(want),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // A bad name; no token on stdin.
    let out = add_telegram(&home, "a/b", &[]);
    assert!(
        text(&out.stderr).contains("channel name `a/b`"),
        "{}",
        text(&out.stderr)
    );
    let out = ctl_stdin(
        &home,
        &["channels", "add", "telegram", "t", "--token-stdin"],
        "",
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("stdin must hold 1 non-empty line"),
        "{}",
        text(&out.stderr)
    );
    assert!(json_list(&home, &["secrets", "list", "--json"]).is_empty());
    assert!(json_list(&home, &["channels", "list", "--json"]).is_empty());
    // Positive control: the same add with good values is taken.
    assert!(add_telegram(&home, "good", &["--allowed-chat", "-100"])
        .status
        .success());
    // Feishu: three secrets, one per line, and an app id.
    let out = ctl_stdin(
        &home,
        &[
            "channels",
            "add",
            "feishu",
            "lark",
            "--app-id",
            "cli_a1",
            "--app-secret-stdin",
            "--encrypt-key-stdin",
            "--verification-token-stdin",
            "--api-base",
            "https://open.larksuite.com",
            "--json",
        ],
        "app-secret\nencrypt-key\nverify-token\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let names: Vec<String> = json_list(&home, &["secrets", "list", "--json"])
        .iter()
        .filter(|s| s["hosts"] == serde_json::json!(["open.larksuite.com"]))
        .map(|s| s["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "channel.lark.app_secret",
            "channel.lark.encrypt_key",
            "channel.lark.verification_token"
        ]
    );
}
