//! `loongctl approvals list | show ID | approve ID [--full-access --ttl DUR --uses N [--pack P]]
//! | deny ID`.

use anyhow::anyhow;
use clap::Subcommand;
use loong_ipc::{paths::Layout, ApprovalView, ControlRequest, ControlResponse, FullAccess};

use super::audit::rfc3339;
use crate::{
    exit,
    paging::{self, PageArgs},
    text::{esc, quoted},
    Failure,
};

/// `loongctl approvals …`.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Approval requests, newest first (each with its state), fetched a page at a time.
    List {
        /// Print JSON (an array of {id, state, actor, pack, capability, target, score, reasons, created_ms, deadline_ms, resolver, token, agent, argv, tool, input_preview, input_sha256, input_bytes, input_truncated, note, caller, chain {root, parent, depth}}).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One request.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending request; with --full-access, also approve what needs approval for a
    /// while (the denylist still applies).
    Approve {
        id: String,
        /// Open a one-time full-access window.
        #[arg(long, requires_all = ["ttl", "uses"])]
        full_access: bool,
        /// The window's lifetime: 30s, 10m, 2h (at most 1d).
        #[arg(long)]
        ttl: Option<String>,
        /// How many requests the window approves.
        #[arg(long)]
        uses: Option<u32>,
        /// Only requests in this pack (default: every pack).
        #[arg(long)]
        pack: Option<String>,
        /// Resolve under this token's secret (it needs control.approvals; never the token or
        /// agent that asked). Default: $LOONG_TOKEN, else the operator's own authority.
        #[arg(long, value_name = "SECRET")]
        token: Option<String>,
    },
    /// Deny a pending request.
    Deny {
        id: String,
        /// Resolve under this token's secret (as for approve; default: $LOONG_TOKEN).
        #[arg(long, value_name = "SECRET")]
        token: Option<String>,
    },
}

fn truncated(a: &ApprovalView) -> bool {
    match (&a.input_preview, a.input_bytes) {
        (Some(p), Some(n)) => (p.len() as u64) < n,
        _ => false,
    }
}

fn json_of(a: &ApprovalView) -> serde_json::Value {
    serde_json::json!({
        "id": a.id, "state": a.state, "actor": a.actor, "pack": a.pack, "capability": a.capability,
        "target": a.target, "score": a.score, "reasons": a.reasons, "created_ms": a.created_ms,
        "deadline_ms": a.deadline_ms, "resolver": a.resolver, "token": a.token, "agent": a.agent,
        "argv": a.argv, "tool": a.tool, "input_preview": a.input_preview,
        "input_sha256": a.input_sha256, "input_bytes": a.input_bytes,
        "input_truncated": truncated(a), "note": a.note, "caller": a.caller,
        "chain": a.chain.as_ref().map(|c| serde_json::json!({
            "root": c.root, "parent": c.parent, "depth": c.depth,
        })),
    })
}

/// The whole effect, one line per part, every foreign byte escaped; a cut preview says so.
fn effect_lines(a: &ApprovalView) -> Vec<String> {
    let mut lines = Vec::new();
    if !a.argv.is_empty() {
        let args: Vec<String> = a.argv.iter().map(|x| quoted(x)).collect();
        lines.push(format!("command: {}", args.join(" ")));
    }
    if let Some(tool) = &a.tool {
        lines.push(format!("tool: {}", esc(tool)));
    }
    if let Some(p) = &a.input_preview {
        let more = match a.input_bytes {
            Some(n) if truncated(a) => format!(
                " … (cut: the first {} of {n} bytes; the digest is of all of them)",
                p.len()
            ),
            _ => String::new(),
        };
        lines.push(format!("input: {}{more}", quoted(p)));
    }
    if let (Some(sha), Some(n)) = (&a.input_sha256, a.input_bytes) {
        lines.push(format!("input sha256: {} ({n} bytes)", esc(sha)));
    }
    if let Some(t) = &a.token {
        lines.push(format!(
            "asked under token {} of agent {}",
            esc(t),
            esc(a.agent.as_deref().unwrap_or("?"))
        ));
    }
    if let Some(c) = &a.chain {
        lines.push(format!(
            "asked by {} in a nested call: root {}, parent {}, depth {}",
            a.caller
                .as_deref()
                .map_or_else(|| "?".to_string(), |p| format!("plugin {}", esc(p))),
            esc(&c.root),
            esc(&c.parent),
            c.depth
        ));
    }
    if let Some(n) = &a.note {
        lines.push(format!("note: {}", esc(n)));
    }
    lines
}

fn call(layout: &Layout, req: ControlRequest) -> Result<Vec<ApprovalView>, Failure> {
    match crate::request(layout, req)? {
        ControlResponse::Approvals(a) => Ok(a),
        other => Err(anyhow!("unexpected answer: {other:?}").into()),
    }
}

fn take(r: ControlResponse) -> Option<Vec<ApprovalView>> {
    match r {
        ControlResponse::Approvals(a) => Some(a),
        _ => None,
    }
}

fn print(a: &ApprovalView) {
    println!(
        "{}  {:<8} {:<10} {:<12} {} on {}  risk {}  until {}{}",
        esc(&a.id),
        esc(&a.state),
        esc(&a.actor),
        esc(&a.pack),
        esc(&a.capability),
        quoted(&a.target),
        a.score,
        rfc3339(a.deadline_ms),
        a.resolver
            .as_deref()
            .map(|r| format!("  by {}", esc(r)))
            .unwrap_or_default()
    );
    for line in effect_lines(a) {
        println!("  {line}");
    }
}

pub(crate) fn run(layout: &Layout, cmd: ApprovalsCommand) -> Result<u8, Failure> {
    match cmd {
        ApprovalsCommand::List { json, page } => paging::print_list(
            layout,
            &page,
            json,
            ControlRequest::ApprovalList,
            take,
            |a| a.id.clone(),
            json_of,
            print,
        ),
        ApprovalsCommand::Show { id, json } => {
            let a = paging::find(
                layout,
                ControlRequest::ApprovalList,
                take,
                |a| a.id.clone(),
                |a| a.id == id,
            )?
            .ok_or_else(|| Failure {
                code: exit::UNEXPECTED,
                error: anyhow!("no approval {id}"),
            })?;
            let a = &a;
            if json {
                println!("{}", crate::text::json_value(&json_of(a)));
            } else {
                print(a);
                println!("  reasons: {}", esc(&a.reasons));
            }
            Ok(exit::OK)
        }
        ApprovalsCommand::Approve {
            id,
            full_access,
            ttl,
            uses,
            pack,
            token,
        } => {
            let full_access = if full_access {
                Some(FullAccess {
                    ttl_ms: crate::duration::millis("--ttl", ttl.as_deref().unwrap_or_default())?,
                    uses: uses.unwrap_or(0),
                    pack,
                })
            } else {
                None
            };
            let done = call(
                layout,
                ControlRequest::ApprovalResolve {
                    id,
                    approve: true,
                    full_access,
                    token: crate::bearer(token),
                },
            )?;
            done.iter().for_each(print);
            Ok(exit::OK)
        }
        ApprovalsCommand::Deny { id, token } => {
            let done = call(
                layout,
                ControlRequest::ApprovalResolve {
                    id,
                    approve: false,
                    full_access: None,
                    token: crate::bearer(token),
                },
            )?;
            done.iter().for_each(print);
            Ok(exit::OK)
        }
    }
}
