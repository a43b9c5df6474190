//! `loongctl channels add | list | status | remove`: chat channels (Telegram bots,
//! Feishu/Lark apps). Platform secrets are read from stdin, one line per `--…-stdin` flag in
//! the order the flags are listed in `--help`, never from an argument, and are never printed.

use std::io::Read;

use anyhow::anyhow;
use clap::Subcommand;
use loong_ipc::{
    paths::Layout, ChannelAddRequest, ChannelKind, ChannelView, ControlRequest, ControlResponse,
    SecretValue,
};

use super::secrets::MAX_READ_BYTES;
use crate::{exit, text::Esc, Failure};

/// `loongctl channels …`.
#[derive(Debug, Subcommand)]
pub enum ChannelsCommand {
    /// Add a channel (its secrets are stored bound to the platform's API host, and the
    /// channel is issued its own token within the bundled `channel` pack).
    #[command(subcommand)]
    Add(AddCommand),
    /// Every channel.
    List {
        /// Print JSON (an array of channels).
        #[arg(long)]
        json: bool,
    },
    /// One channel: its counts, and a 409 conflict or failure its poller reported, with what
    /// to do.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a channel: its secrets, its token and its state.
    Remove {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Restart a channel under its next token generation: its worker stops (drained), a new
    /// token is issued and the old one revoked (a turn still running under it has its answer
    /// refused and runs again; an approval it waits for is denied), and the worker starts
    /// again.
    Restart {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

/// `loongctl channels add …`.
#[derive(Debug, Subcommand)]
pub enum AddCommand {
    /// A Telegram bot (Bot API long polling).
    Telegram {
        name: String,
        /// Read the bot token (from @BotFather) from stdin.
        #[arg(long, required = true)]
        token_stdin: bool,
        /// A chat whose messages are answered (repeatable; none: every message is ignored
        /// and audited).
        #[arg(long = "allowed-chat", value_name = "ID", allow_hyphen_values = true)]
        allowed_chats: Vec<String>,
        /// A chat offered approvals (repeatable).
        #[arg(long = "operator-chat", value_name = "ID", allow_hyphen_values = true)]
        operator_chats: Vec<String>,
        /// The Bot API base URL (default https://api.telegram.org; http://HOST:PORT for a
        /// local server).
        #[arg(long, value_name = "URL")]
        api_base: Option<String>,
        /// The pack the channel's token is issued within (default: the bundled `channel`
        /// pack, whose turns call no tool); it must grant what the `channel` pack grants.
        #[arg(long, value_name = "PACK")]
        pack: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A Feishu/Lark app (event webhook). Its three secrets are read from stdin, one per
    /// line: app secret, encrypt key, verification token.
    Feishu {
        name: String,
        #[arg(long, value_name = "ID")]
        app_id: String,
        #[arg(long, required = true)]
        app_secret_stdin: bool,
        #[arg(long, required = true)]
        encrypt_key_stdin: bool,
        #[arg(long, required = true)]
        verification_token_stdin: bool,
        /// A chat (`oc_...`) whose messages become turns; every other chat's are ignored
        /// and audited. Repeat for more.
        #[arg(long = "allowed-chat", value_name = "ID")]
        allowed_chats: Vec<String>,
        /// The open API base URL (default https://open.feishu.cn; Lark's is
        /// https://open.larksuite.com).
        #[arg(long, value_name = "URL")]
        api_base: Option<String>,
        /// The pack the channel's token is issued within (default: the bundled `channel`
        /// pack, whose turns call no tool); it must grant what the `channel` pack grants.
        #[arg(long, value_name = "PACK")]
        pack: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// `n` lines of stdin (each without its line ending), all non-empty.
fn read_lines(n: usize, names: &[&str]) -> Result<Vec<String>, Failure> {
    let usage = |m: String| Failure {
        code: exit::USAGE,
        error: anyhow!(m),
    };
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX_READ_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| usage(format!("reading the secrets from stdin: {e}")))?;
    if bytes.len() as u64 > MAX_READ_BYTES {
        return Err(usage(format!("stdin is over {MAX_READ_BYTES} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| usage("stdin is not UTF-8 text".into()))?;
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_owned())
        .collect();
    if lines.len() < n || lines.iter().take(n).any(String::is_empty) {
        return Err(usage(format!(
            "stdin must hold {n} non-empty line(s): {}",
            names.join(", ")
        )));
    }
    Ok(lines.into_iter().take(n).collect())
}

fn call(layout: &Layout, req: ControlRequest) -> Result<Vec<ChannelView>, Failure> {
    match crate::request(layout, req)? {
        ControlResponse::Channels(c) => Ok(c),
        other => Err(anyhow!("unexpected answer: {other:?}").into()),
    }
}

fn kind(k: ChannelKind) -> &'static str {
    k.as_str()
}

fn json(c: &ChannelView) -> serde_json::Value {
    serde_json::json!({
        "name": c.name, "kind": kind(c.kind), "api_base": c.api_base,
        "allowed_chats": c.allowed_chats, "operator_chats": c.operator_chats,
        "app_id": c.app_id, "token": c.token_id, "pack": c.pack,
        "generation": c.generation, "secrets": c.secret_names,
        "pending": c.pending, "running": c.running, "answered": c.answered,
        "ignored": c.ignored, "unsent": c.unsent, "sent": c.sent, "offset": c.offset,
        "conflict": c.conflict, "last_error": c.last_error,
        "webhook": c.webhook, "refused": c.refused,
    })
}

fn print(c: &ChannelView, detail: bool) {
    println!(
        "{:<24} {:<9} {}  token {}",
        Esc(&c.name),
        kind(c.kind),
        Esc(&c.api_base),
        Esc(&c.token_id)
    );
    if !detail {
        return;
    }
    println!("  pack {}, token generation {}", Esc(&c.pack), c.generation);
    println!(
        "  messages: {} pending, {} running, {} answered, {} ignored; answers: {} to send, {} sent",
        c.pending, c.running, c.answered, c.ignored, c.unsent, c.sent
    );
    if let Some(o) = c.offset {
        println!("  next getUpdates offset: {o}");
    }
    if let Some(url) = &c.webhook {
        println!(
            "  webhook: POST {} (the request URL in the platform's event subscription, through your public https name); {} refused since loongd started",
            Esc(url),
            c.refused
        );
    }
    if let Some(conflict) = &c.conflict {
        println!("  CONFLICT: {}", Esc(conflict));
    }
    if let Some(e) = &c.last_error {
        println!("  last error: {}", Esc(e));
    }
}

fn show(all: &[ChannelView], as_json: bool, detail: bool) {
    if as_json {
        let rows: Vec<serde_json::Value> = all.iter().map(json).collect();
        println!(
            "{}",
            crate::text::json_value(&serde_json::Value::Array(rows))
        );
    } else {
        all.iter().for_each(|c| print(c, detail));
    }
}

fn add(layout: &Layout, cmd: AddCommand) -> Result<(Vec<ChannelView>, bool), Failure> {
    let (req, as_json) = match cmd {
        AddCommand::Telegram {
            name,
            token_stdin: _,
            allowed_chats,
            operator_chats,
            api_base,
            pack,
            json,
        } => {
            let lines = read_lines(1, &["the bot token"])?;
            let secrets = vec![("bot_token".to_owned(), SecretValue::new(lines[0].clone()))];
            (
                ChannelAddRequest {
                    name,
                    kind: ChannelKind::Telegram,
                    api_base,
                    allowed_chats,
                    operator_chats,
                    app_id: None,
                    secrets,
                    pack,
                },
                json,
            )
        }
        AddCommand::Feishu {
            name,
            app_id,
            api_base,
            allowed_chats,
            pack,
            json,
            ..
        } => {
            let roles = ["app_secret", "encrypt_key", "verification_token"];
            let lines = read_lines(3, &["app secret", "encrypt key", "verification token"])?;
            let secrets = roles
                .iter()
                .zip(lines)
                .map(|(r, v)| ((*r).to_owned(), SecretValue::new(v)))
                .collect();
            (
                ChannelAddRequest {
                    name,
                    kind: ChannelKind::Feishu,
                    api_base,
                    allowed_chats,
                    operator_chats: Vec::new(),
                    app_id: Some(app_id),
                    secrets,
                    pack,
                },
                json,
            )
        }
    };
    Ok((
        call(layout, ControlRequest::ChannelAdd(Box::new(req)))?,
        as_json,
    ))
}

pub(crate) fn run(layout: &Layout, cmd: ChannelsCommand) -> Result<u8, Failure> {
    match cmd {
        ChannelsCommand::Add(a) => {
            let (added, as_json) = add(layout, a)?;
            show(&added, as_json, false);
        }
        ChannelsCommand::List { json } => {
            show(&call(layout, ControlRequest::ChannelList)?, json, false)
        }
        ChannelsCommand::Status { name, json } => {
            let c = call(layout, ControlRequest::ChannelStatus { name })?;
            show(&c, json, true);
        }
        ChannelsCommand::Restart { name, json } => {
            let c = call(layout, ControlRequest::ChannelRestart { name })?;
            show(&c, json, false);
        }
        ChannelsCommand::Remove { name, json } => {
            let c = call(layout, ControlRequest::ChannelRemove { name })?;
            if json {
                show(&c, true, false);
            } else {
                c.iter().for_each(|c| println!("removed {}", Esc(&c.name)));
            }
        }
    }
    Ok(exit::OK)
}
