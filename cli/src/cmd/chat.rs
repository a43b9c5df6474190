//! `loongctl chat [--session ID] [--token SECRET]`: an interactive conversation with the
//! agent, one turn per line, each a `loongctl ask` on the same session (so loongd keeps the
//! conversation, decided and audited as `memory.read` / `memory.write`).
//!
//! On a terminal the line is read with line editing and history (rustyline; the history in
//! `$HOME/.loong_chat_history`); otherwise lines are read from stdin as they come, so a
//! script or a test can drive it. The answer streams as it arrives. Lines starting with `/`
//! are commands: `/help`, `/tools`, `/session`, `/clear`, `/exit`. A tool call that waits
//! for an approval is shown as loongd announces it (its id, what it would do, the command
//! that approves it) and the operator is offered to approve or deny it inline, under the
//! operator's own authority, while the turn waits.

use std::{
    io::{BufRead, Write},
    path::PathBuf,
    time::Duration,
};

use anyhow::anyhow;
use clap::Args;
use loong_agent_wire::wire::AGENT_TOOL;
use loong_ipc::{paths::Layout, AskRequest, ControlRequest, ControlResponse};

use crate::{
    cmd::agent::{turn, DEFAULT_ASK_TIMEOUT_SECS},
    exit,
    text::Esc,
    Failure,
};

/// The file of the line history, under `$HOME`.
pub const HISTORY_FILE: &str = ".loong_chat_history";
/// The most lines the history keeps.
pub const MAX_HISTORY_LINES: usize = 1000;

/// `loongctl chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The conversation to continue (default: a new one, named when the chat starts).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// The capability token the agent's tool calls are decided under, given by its secret
    /// (default: $LOONG_TOKEN, else the operator's own authority).
    #[arg(long, value_name = "SECRET")]
    pub token: Option<String>,
    /// Seconds to wait for each answer.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
}

const HELP: &str = "commands:
  /help      this list
  /tools     the tools the agent may call in this chat (decided under its token)
  /session   this chat's session id (continue it with `loongctl chat --session ID`)
  /clear     forget this session's conversation
  /exit      leave (also Ctrl-D)
anything else is asked to the agent";

/// Where the lines come from.
enum Lines {
    /// A terminal: line editing and history.
    Editor(Box<rustyline::DefaultEditor>, Option<PathBuf>),
    /// Anything else: lines as they come.
    Plain(std::io::StdinLock<'static>),
}

impl Lines {
    fn open() -> Lines {
        use std::io::IsTerminal;
        if std::io::stdin().is_terminal() {
            let config = rustyline::Config::builder()
                .max_history_size(MAX_HISTORY_LINES)
                .map(|b| b.auto_add_history(true).build());
            if let Ok(Ok(mut editor)) = config.map(rustyline::DefaultEditor::with_config) {
                let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(HISTORY_FILE));
                if let Some(h) = &history {
                    let _ = editor.load_history(h);
                }
                return Lines::Editor(Box::new(editor), history);
            }
        }
        Lines::Plain(std::io::stdin().lock())
    }

    /// The next line; `None` at the end (Ctrl-D, end of input).
    fn next(&mut self) -> Option<String> {
        match self {
            Lines::Editor(editor, _) => match editor.readline("> ") {
                Ok(line) => Some(line),
                // Ctrl-C drops the line being typed, as a shell does.
                Err(rustyline::error::ReadlineError::Interrupted) => Some(String::new()),
                Err(_) => None,
            },
            Lines::Plain(stdin) => {
                let mut line = String::new();
                match stdin.read_line(&mut line) {
                    Ok(0) | Err(_) => None,
                    Ok(_) => Some(line.trim_end_matches(['\n', '\r']).to_string()),
                }
            }
        }
    }

    /// An answer to a question asked mid-turn (on a terminal, without the prompt's history).
    fn answer(&mut self) -> Option<String> {
        match self {
            Lines::Editor(editor, _) => editor.readline("? ").ok(),
            Lines::Plain(_) => self.next(),
        }
    }

    fn save(&mut self) {
        if let Lines::Editor(editor, Some(h)) = self {
            let _ = editor.save_history(h);
        }
    }
}

/// A new session's id: `chat-` and the time, unique enough for one operator.
fn new_session() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("chat-{}-{}", now.as_secs(), std::process::id())
}

/// `loongctl chat`.
pub(crate) fn chat(layout: &Layout, args: ChatArgs) -> Result<u8, Failure> {
    let secs = args.timeout.unwrap_or(DEFAULT_ASK_TIMEOUT_SECS);
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(Failure {
            code: exit::USAGE,
            error: anyhow!("--timeout {secs}: give seconds between 0 and 86400"),
        });
    }
    let deadline = Duration::from_secs_f64(secs);
    let token = crate::bearer(args.token);
    let session = args.session.unwrap_or_else(new_session);
    let mut lines = Lines::open();
    println!(
        "chat with the agent, session {} (/help for commands)",
        Esc(&session)
    );
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match line {
            "/exit" | "/quit" => break,
            "/help" => println!("{HELP}"),
            "/session" => println!("{}", Esc(&session)),
            "/tools" => tools(layout, token.as_ref()),
            "/clear" => clear(layout, &session),
            _ if line.starts_with('/') => {
                println!("unknown command {}: /help lists them", Esc(line));
            }
            prompt => {
                let request = AskRequest {
                    prompt: prompt.to_string(),
                    session: Some(session.clone()),
                    token: token.clone(),
                };
                let mut offer = |approval: &str| approve_inline(layout, &mut lines, approval);
                match turn(layout, request, deadline, true, &mut offer) {
                    Ok((_, true)) => println!(),
                    Ok((r, false)) => println!("{}", Esc(&r.answer)),
                    // A failed turn is told, and the chat goes on.
                    Err(f) => eprintln!("error: {:#}", f.error),
                }
            }
        }
        let _ = std::io::stdout().flush();
    }
    lines.save();
    Ok(exit::OK)
}

/// A tool call waits for `approval`: offers the operator to approve or deny it here, with
/// the operator's own authority (loongd decides whether this uid may: a refusal is shown,
/// and the request goes on waiting for another approver).
fn approve_inline(layout: &Layout, lines: &mut Lines, approval: &str) {
    println!(
        "approval {} pending (shown above): approve it now? [y = approve, n = deny, Enter = leave it]",
        Esc(approval)
    );
    let _ = std::io::stdout().flush();
    let approve = match lines.answer().as_deref().map(str::trim) {
        Some("y" | "yes") => true,
        Some("n" | "no") => false,
        _ => {
            println!(
                "left pending: `loongctl approvals approve {}`",
                Esc(approval)
            );
            return;
        }
    };
    let answer = crate::request(
        layout,
        ControlRequest::ApprovalResolve {
            id: approval.to_string(),
            approve,
            full_access: None,
            token: None,
        },
    );
    match answer {
        Ok(_) if approve => println!("approved {}", Esc(approval)),
        Ok(_) => println!("denied {}", Esc(approval)),
        Err(f) => eprintln!("error: {:#}", f.error),
    }
}

/// `/tools`: what the agent may call under the chat's token, as `mcp serve` lists it.
fn tools(layout: &Layout, token: Option<&loong_ipc::BearerSecret>) {
    match crate::cmd::mcp::offered(layout, token) {
        Ok(offers) if offers.iter().all(|o| o.loong == AGENT_TOOL) => {
            println!("no tool: the token may call none")
        }
        Ok(offers) => {
            // The agent's own turn is never offered to the agent.
            for o in offers.iter().filter(|o| o.loong != AGENT_TOOL) {
                println!("{}\t{}", Esc(&o.loong), Esc(&o.description));
            }
        }
        Err(f) => eprintln!("error: {:#}", f.error),
    }
}

/// `/clear`: forgets the session.
fn clear(layout: &Layout, session: &str) {
    match crate::request(
        layout,
        ControlRequest::MemoryClear {
            session: session.to_string(),
        },
    ) {
        Ok(ControlResponse::MemoryCleared { removed, .. }) => {
            println!("cleared {}: {removed} messages", Esc(session));
        }
        Ok(other) => eprintln!("error: unexpected answer to memory clear: {other:?}"),
        Err(f) => eprintln!("error: {:#}", f.error),
    }
}
