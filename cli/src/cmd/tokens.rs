//! `loongctl tokens issue | list | revoke ID | revoke-generation --pack P` and
//! `loongctl packs list | show ID`.

use anyhow::anyhow;
use clap::Subcommand;
use loong_ipc::{paths::Layout, ControlRequest, ControlResponse, PackView, TokenView};

use super::audit::rfc3339;
use crate::{
    exit,
    paging::{self, PageArgs},
    text::{esc_join, Esc},
    Failure,
};

/// `loongctl tokens …`.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Issue a capability token: prints its bearer secret (for --token), shown only this
    /// once, and its public id on stderr.
    Issue {
        /// The pack it belongs to.
        #[arg(long)]
        pack: String,
        /// The agent it is for.
        #[arg(long)]
        agent: String,
        /// A capability it grants, `CAP` or `CAP:SCOPE` (repeatable; within the pack's grants).
        #[arg(long = "cap", required = true, value_name = "CAP[:SCOPE]")]
        caps: Vec<String>,
        /// Lifetime: 30s, 10m, 2h, 7d.
        #[arg(long)]
        ttl: String,
        /// Print JSON (the token's fields, as in `tokens list`, and `secret`).
        #[arg(long)]
        json: bool,
    },
    /// Tokens with their state (active, expired, revoked, stale), newest first, fetched a page
    /// at a time.
    List {
        /// Print JSON (an array of {id, pack, agent, grants, issued_ms, expires_ms, generation, state}).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Revoke one token, by its public id (`tok_…`).
    Revoke { id: String },
    /// Revoke every token of a pack at once (bumps the pack's generation).
    RevokeGeneration {
        #[arg(long)]
        pack: String,
    },
}

/// `loongctl packs …`.
#[derive(Debug, Subcommand)]
pub enum PacksCommand {
    /// Packs by id.
    List {
        /// Print JSON (an array of {id, domain, version, summary, grants, connectors, approval, generation}).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One pack.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

fn token_json(t: &TokenView) -> serde_json::Value {
    serde_json::json!({
        "id": t.id, "pack": t.pack, "agent": t.agent, "grants": t.grants, "issued_ms": t.issued_ms,
        "expires_ms": t.expires_ms, "generation": t.generation, "state": t.state,
    })
}

fn pack_json(p: &PackView) -> serde_json::Value {
    serde_json::json!({
        "id": p.id, "domain": p.domain, "version": p.version, "summary": p.summary, "grants": p.grants,
        "connectors": p.connectors, "approval": p.approval, "generation": p.generation,
    })
}

pub(crate) fn run_tokens(layout: &Layout, cmd: TokensCommand) -> Result<u8, Failure> {
    match cmd {
        TokensCommand::Issue {
            pack,
            agent,
            caps,
            ttl: t,
            json,
        } => {
            let ttl_ms = crate::duration::millis("--ttl", &t)?;
            let ControlResponse::Tokens(ts) = crate::request(
                layout,
                ControlRequest::TokenIssue {
                    pack,
                    agent,
                    grants: caps,
                    ttl_ms,
                },
            )?
            else {
                return Err(anyhow!("unexpected answer to tokens issue").into());
            };
            let t = ts
                .first()
                .ok_or_else(|| anyhow!("no token in the answer"))?;
            let secret = t
                .secret
                .as_ref()
                .map(loong_ipc::BearerSecret::expose)
                .ok_or_else(|| anyhow!("no secret in the answer to tokens issue"))?;
            if json {
                let mut v = token_json(t);
                v["secret"] = secret.into();
                println!("{}", crate::text::json_value(&v));
            } else {
                println!("{}", Esc(secret));
                eprintln!(
                    "token {} for {} in pack {} until {}; its secret (above) is shown only now",
                    Esc(&t.id),
                    Esc(&t.agent),
                    Esc(&t.pack),
                    rfc3339(t.expires_ms)
                );
            }
            Ok(exit::OK)
        }
        TokensCommand::List { json, page } => paging::print_list(
            layout,
            &page,
            json,
            ControlRequest::TokenList,
            |r| match r {
                ControlResponse::Tokens(ts) => Some(ts),
                _ => None,
            },
            |t| t.id.clone(),
            token_json,
            |t| {
                println!(
                    "{}  {:<8} {:<16} {:<16} until {}  {}",
                    Esc(&t.id),
                    Esc(&t.state),
                    Esc(&t.pack),
                    Esc(&t.agent),
                    rfc3339(t.expires_ms),
                    esc_join(&t.grants, " ")
                )
            },
        ),
        TokensCommand::Revoke { id } => {
            crate::public_token_id(&id)?;
            match crate::request(layout, ControlRequest::TokenRevoke { id: id.clone() })? {
                ControlResponse::Revoked { existed: true, .. } => {
                    println!("revoked {id}");
                    Ok(exit::OK)
                }
                ControlResponse::Revoked { existed: false, .. } => Err(Failure {
                    code: exit::UNEXPECTED,
                    error: anyhow!("no active token {id}"),
                }),
                other => Err(anyhow!("unexpected answer: {other:?}").into()),
            }
        }
        TokensCommand::RevokeGeneration { pack } => match crate::request(
            layout,
            ControlRequest::TokenRevokeGeneration { pack: pack.clone() },
        )? {
            ControlResponse::Revoked {
                generation: Some(g),
                ..
            } => {
                println!("pack {pack} is now at generation {g}; every earlier token is revoked");
                Ok(exit::OK)
            }
            other => Err(anyhow!("unexpected answer: {other:?}").into()),
        },
    }
}

pub(crate) fn run_packs(layout: &Layout, cmd: PacksCommand) -> Result<u8, Failure> {
    let take = |r| match r {
        ControlResponse::Packs(ps) => Some(ps),
        _ => None,
    };
    let key = |p: &PackView| p.id.clone();
    match cmd {
        PacksCommand::List { json, page } => paging::print_list(
            layout,
            &page,
            json,
            ControlRequest::PackList,
            take,
            key,
            pack_json,
            |p| {
                println!(
                    "{:<16} {:<16} v{:<4} gen {:<3} {}",
                    Esc(&p.id),
                    Esc(&p.domain),
                    Esc(&p.version),
                    p.generation,
                    Esc(&p.summary)
                )
            },
        ),
        PacksCommand::Show { id, json } => {
            let p = paging::find(layout, ControlRequest::PackList, take, key, |p| p.id == id)?
                .ok_or_else(|| Failure {
                    code: exit::UNEXPECTED,
                    error: anyhow!("no pack `{id}`"),
                })?;
            let p = &p;
            if json {
                println!("{}", crate::text::json_value(&pack_json(p)));
            } else {
                println!(
                    "{} ({}, version {}, generation {})\n  {}\n  grants: {}\n  connectors: {}\n  approval: {}",
                    Esc(&p.id),
                    Esc(&p.domain),
                    Esc(&p.version),
                    p.generation,
                    Esc(&p.summary),
                    esc_join(&p.grants, " "),
                    esc_join(&p.connectors, " "),
                    Esc(&p.approval)
                );
            }
            Ok(exit::OK)
        }
    }
}
