//! `loongctl approvals list | show ID | approve ID [--full-access --ttl DUR --uses N [--pack P]]
//! | deny ID`.

use anyhow::anyhow;
use clap::Subcommand;
use loong_ipc::{paths::Layout, ApprovalView, ControlRequest, ControlResponse, FullAccess};

use super::audit::rfc3339;
use crate::{exit, text::Esc, Failure};

/// `loongctl approvals …`.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Every approval request, pending first.
    List {
        /// Print JSON (an array of {id, state, actor, pack, capability, target, score, reasons, created_ms, deadline_ms, resolver}).
        #[arg(long)]
        json: bool,
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
    },
    /// Deny a pending request.
    Deny { id: String },
}

fn json_of(a: &ApprovalView) -> serde_json::Value {
    serde_json::json!({
        "id": a.id, "state": a.state, "actor": a.actor, "pack": a.pack, "capability": a.capability,
        "target": a.target, "score": a.score, "reasons": a.reasons, "created_ms": a.created_ms,
        "deadline_ms": a.deadline_ms, "resolver": a.resolver,
    })
}

fn call(layout: &Layout, req: ControlRequest) -> Result<Vec<ApprovalView>, Failure> {
    match crate::request(layout, req)? {
        ControlResponse::Approvals(a) => Ok(a),
        other => Err(anyhow!("unexpected answer: {other:?}").into()),
    }
}

fn print(a: &ApprovalView) {
    println!(
        "{}  {:<8} {:<10} {:<12} {} on {}  risk {}  until {}{}",
        Esc(&a.id),
        Esc(&a.state),
        Esc(&a.actor),
        Esc(&a.pack),
        Esc(&a.capability),
        Esc(&a.target),
        a.score,
        rfc3339(a.deadline_ms),
        a.resolver
            .as_deref()
            .map(|r| format!("  by {}", Esc(r)))
            .unwrap_or_default()
    );
}

pub(crate) fn run(layout: &Layout, cmd: ApprovalsCommand) -> Result<u8, Failure> {
    match cmd {
        ApprovalsCommand::List { json } => {
            let all = call(layout, ControlRequest::ApprovalList)?;
            if json {
                println!(
                    "{}",
                    serde_json::Value::Array(all.iter().map(json_of).collect())
                );
            } else {
                all.iter().for_each(print);
            }
            Ok(exit::OK)
        }
        ApprovalsCommand::Show { id, json } => {
            let all = call(layout, ControlRequest::ApprovalList)?;
            let a = all.iter().find(|a| a.id == id).ok_or_else(|| Failure {
                code: exit::UNEXPECTED,
                error: anyhow!("no approval {id}"),
            })?;
            if json {
                println!("{}", json_of(a));
            } else {
                print(a);
                println!("  reasons: {}", Esc(&a.reasons));
            }
            Ok(exit::OK)
        }
        ApprovalsCommand::Approve {
            id,
            full_access,
            ttl,
            uses,
            pack,
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
                },
            )?;
            done.iter().for_each(print);
            Ok(exit::OK)
        }
        ApprovalsCommand::Deny { id } => {
            let done = call(
                layout,
                ControlRequest::ApprovalResolve {
                    id,
                    approve: false,
                    full_access: None,
                },
            )?;
            done.iter().for_each(print);
            Ok(exit::OK)
        }
    }
}
