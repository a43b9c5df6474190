//! `loongctl ask PROMPT` (one agent turn) and `loongctl memory list | show | clear`.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use anyhow::anyhow;
use clap::{Args, Subcommand};
use loong_ipc::{
    client::{ClientError, Event},
    paths::Layout,
    AskRequest, AskResult, ControlRequest, ControlResponse, ErrorKind, Page, StreamChunk,
};

use crate::{
    exit,
    text::{esc_lines, Esc},
    Failure,
};

/// How long `ask` waits by default: a turn's budget (300 s by default) and room.
pub const DEFAULT_ASK_TIMEOUT_SECS: f64 = 330.0;

/// `loongctl ask`.
#[derive(Debug, Args)]
pub struct AskArgs {
    /// What to ask.
    pub prompt: String,
    /// The conversation to continue and keep the turn in (kept in loongd's memory).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// The capability token the agent's tool calls are decided under, given by its secret
    /// (default: $LOONG_TOKEN, else the operator's own authority). Only the tools it may
    /// call are offered to the model.
    #[arg(long, value_name = "SECRET")]
    pub token: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Print JSON (fields: answer, session, correlation, tool_calls [{name, arguments,
    /// result, is_error}], usage {input_tokens, output_tokens}, steps, stop, providers).
    #[arg(long)]
    pub json: bool,
}

/// `loongctl memory …`.
#[derive(Debug, Subcommand)]
pub enum MemoryCommand {
    /// The sessions kept, by id, with their message counts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One session's messages, oldest first.
    Show {
        session: String,
        #[arg(long)]
        json: bool,
    },
    /// Forget one session.
    Clear { session: String },
}

fn usage(m: String) -> Failure {
    Failure {
        code: exit::USAGE,
        error: anyhow!(m),
    }
}

fn result_json(r: &AskResult) -> serde_json::Value {
    serde_json::json!({
        "answer": r.answer, "session": r.session, "correlation": r.correlation,
        "tool_calls": r.tool_calls.iter().map(|c| serde_json::json!({
            "name": c.name, "arguments": c.arguments, "result": c.result, "is_error": c.is_error,
        })).collect::<Vec<_>>(),
        "usage": {"input_tokens": r.input_tokens, "output_tokens": r.output_tokens},
        "steps": r.steps, "stop": r.stop, "providers": r.providers,
    })
}

/// `loongctl ask`: prints the answer's text as it arrives, or with `--json` one object at
/// the end (escaped: it is the model's text).
pub(crate) fn ask(layout: &Layout, args: AskArgs) -> Result<u8, Failure> {
    let secs = args.timeout.unwrap_or(DEFAULT_ASK_TIMEOUT_SECS);
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(usage(format!(
            "--timeout {secs}: give seconds between 0 and 86400"
        )));
    }
    let deadline = Duration::from_secs_f64(secs);
    let request = AskRequest {
        prompt: args.prompt,
        session: args.session,
        token: crate::bearer(args.token),
    };
    let (r, streamed) = turn(layout, request, deadline, !args.json, &mut |_| {})?;
    if args.json {
        println!("{}", result_json(&r));
    } else if streamed {
        println!();
    } else {
        println!("{}", Esc(&r.answer));
    }
    Ok(exit::OK)
}

/// One turn: sends `request` and, when `show`, prints the answer's text on stdout as it
/// arrives (its line breaks kept, every other control character escaped: it is the model's
/// text); loongd's notes for people (an approval pending) go to stderr, and the id of an
/// approval the turn waits for to `on_approval` (the turn waits on while it runs). The
/// result, and whether any text was shown.
pub(crate) fn turn(
    layout: &Layout,
    request: AskRequest,
    deadline: Duration,
    show: bool,
    on_approval: &mut dyn FnMut(&str),
) -> Result<(AskResult, bool), Failure> {
    let mut client = crate::connect(layout)?;
    let id = client.start(ControlRequest::Ask(request), deadline)?;
    let until = Instant::now() + deadline + loong_ipc::client::DEADLINE_GRACE;
    let mut streamed = false;
    loop {
        let event = match client.next_event::<ControlResponse>(id, until) {
            Err(ClientError::Remote(r)) if r.kind == ErrorKind::DeadlineExceeded => {
                return Err(Failure {
                    code: exit::WORKER_FAILED,
                    error: ClientError::Remote(r).into(),
                });
            }
            other => other?,
        };
        match event {
            Event::Chunk(StreamChunk::Stderr(b)) => {
                eprint!("{}", esc_lines(&String::from_utf8_lossy(&b)));
            }
            Event::Chunk(StreamChunk::Stdout(b)) if show => {
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "{}", esc_lines(&String::from_utf8_lossy(&b)));
                let _ = out.flush();
                streamed = true;
            }
            Event::Chunk(StreamChunk::ApprovalPending(approval)) => on_approval(&approval),
            Event::Chunk(_) => {}
            Event::Done(ControlResponse::Asked(r)) => return Ok((r, streamed)),
            Event::Done(other) => return Err(anyhow!("unexpected answer to ask: {other:?}").into()),
        }
    }
}

/// `loongctl memory …`.
pub(crate) fn memory(layout: &Layout, cmd: MemoryCommand) -> Result<u8, Failure> {
    match cmd {
        MemoryCommand::List { json } => {
            let ControlResponse::MemorySessions(sessions) =
                crate::request(layout, ControlRequest::MemoryList(Page::default()))?
            else {
                return Err(anyhow!("unexpected answer to memory list").into());
            };
            if json {
                let v: Vec<_> = sessions
                    .iter()
                    .map(|s| serde_json::json!({"session": s.session, "messages": s.messages, "updated_unix": s.updated_unix}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for s in &sessions {
                    println!("{}\t{} messages", Esc(&s.session), s.messages);
                }
            }
        }
        MemoryCommand::Show { session, json } => {
            let ControlResponse::MemoryMessages(messages) =
                crate::request(layout, ControlRequest::MemoryShow { session })?
            else {
                return Err(anyhow!("unexpected answer to memory show").into());
            };
            if json {
                let v: Vec<_> = messages
                    .iter()
                    .map(|m| {
                        let message = serde_json::from_str::<serde_json::Value>(&m.json)
                            .unwrap_or_else(|_| serde_json::Value::String(m.json.clone()));
                        serde_json::json!({"seq": m.seq, "role": m.role, "message": message})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for m in &messages {
                    println!("{}\t{}\t{}", m.seq, m.role, Esc(&m.json));
                }
            }
        }
        MemoryCommand::Clear { session } => {
            let ControlResponse::MemoryCleared { session, removed } =
                crate::request(layout, ControlRequest::MemoryClear { session })?
            else {
                return Err(anyhow!("unexpected answer to memory clear").into());
            };
            println!("cleared {}: {removed} messages", Esc(&session));
        }
    }
    Ok(exit::OK)
}
