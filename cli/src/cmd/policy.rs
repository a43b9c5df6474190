//! `loongctl policy check FILE [--json]`: every problem of a policy file, in one run (exit 1
//! when there are problems).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use loong_ipc::{
    message::control::MAX_POLICY_TEXT_BYTES, paths::Layout, ControlRequest, ControlResponse,
};

use crate::{connect, exit, text::Esc, Failure, REQUEST_DEADLINE};

/// `loongctl policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file (a tier profile) and list every problem with its line.
    Check {
        /// The file.
        file: PathBuf,
        /// Print JSON: {"file": …, "problems": [ … ]}.
        #[arg(long)]
        json: bool,
    },
    /// Decide a request without carrying it out (audited); exit 4 when denied.
    Decide {
        /// The capability asked for.
        #[arg(long)]
        cap: String,
        /// Its target: a path, HOST[:PORT] or name.
        #[arg(long)]
        target: Option<String>,
        /// Decide under this token, given by its secret (default: $LOONG_TOKEN, else the
        /// operator's pack).
        #[arg(long, value_name = "SECRET")]
        token: Option<String>,
        /// Print JSON ({allowed, reason, pack}).
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(layout: &Layout, cmd: PolicyCommand) -> Result<u8, Failure> {
    let (file, json) = match cmd {
        PolicyCommand::Check { file, json } => (file, json),
        PolicyCommand::Decide {
            cap,
            target,
            token,
            json,
        } => {
            let mut client = connect(layout)?;
            let ControlResponse::Decided(d) = client.call::<_, ControlResponse>(
                ControlRequest::PolicyDecide {
                    token: crate::bearer(token),
                    cap,
                    target,
                },
                REQUEST_DEADLINE,
            )?
            else {
                return Err(anyhow::anyhow!("unexpected answer to policy decide").into());
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "allowed": d.allowed, "needs_approval": d.needs_approval, "reason": d.reason, "pack": d.pack })
                );
            } else if d.allowed {
                println!("allowed (pack {})", Esc(&d.pack));
            } else {
                println!("denied: {}", Esc(&d.reason.unwrap_or_default()));
            }
            return Ok(if d.allowed {
                exit::OK
            } else if d.needs_approval {
                exit::APPROVAL_PENDING
            } else {
                exit::DENIED
            });
        }
    };
    let meta = std::fs::metadata(&file).with_context(|| format!("{}", file.display()))?;
    if meta.len() > MAX_POLICY_TEXT_BYTES as u64 {
        return Err(anyhow::anyhow!(
            "{}: {} bytes is above the 1 MiB limit for a policy file",
            file.display(),
            meta.len()
        )
        .into());
    }
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("{}: not readable as UTF-8 text", file.display()))?;
    let name = file.display().to_string();
    let mut client = connect(layout)?;
    let ControlResponse::PolicyReport { problems } = client.call::<_, ControlResponse>(
        ControlRequest::PolicyCheck {
            file: name.clone(),
            text,
        },
        REQUEST_DEADLINE,
    )?
    else {
        return Err(anyhow::anyhow!("unexpected answer to policy check").into());
    };
    if json {
        println!(
            "{}",
            serde_json::json!({ "file": name, "problems": problems })
        );
    } else if problems.is_empty() {
        println!("{name}: ok");
    } else {
        for p in &problems {
            println!("{}", Esc(p));
        }
        eprintln!("{} problem(s) in {name}", problems.len());
    }
    Ok(if problems.is_empty() {
        exit::OK
    } else {
        exit::UNEXPECTED
    })
}
