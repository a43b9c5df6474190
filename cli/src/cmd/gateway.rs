//! `loongctl gateway run | status | stop | pair`: the gateway worker under loongd (docs/gateway.md).

use anyhow::anyhow;
use clap::Subcommand;
use loong_ipc::{paths::Layout, ControlRequest, ControlResponse, GatewayView};

use super::audit::rfc3339;
use crate::{exit, text::Esc, Failure};

/// How long `gateway stop` waits for loongd's answer beyond the drain.
const STOP_MARGIN_MS: u64 = 10_000;

/// `loongctl gateway …`.
#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Start the gateway under loongd, which restarts it if it dies (`[gateway]` in
    /// loongd.toml says where it listens; `enabled = true` starts it with loongd).
    Run {
        #[arg(long)]
        json: bool,
    },
    /// The gateway's bind address, uptime, requests and open streams.
    Status {
        /// Print JSON ({running, listen, started_ms, uptime_ms, requests, open_streams,
        /// restarts, worker, pid, last_exit}).
        #[arg(long)]
        json: bool,
    },
    /// Stop the gateway: no new connection, open streams drained within the deadline.
    Stop {
        /// How long open streams may take to finish: 500ms, 10s (default `[gateway] drain_ms`).
        #[arg(long, value_name = "DURATION")]
        drain: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Issue a token for a client and print its configuration: the MCP JSON snippet and the
    /// OPENAI_BASE_URL / ANTHROPIC_BASE_URL exports.
    Pair {
        /// The pack the token belongs to.
        #[arg(long)]
        pack: String,
        /// The agent it is for.
        #[arg(long)]
        agent: String,
        /// Lifetime: 30s, 10m, 2h, 7d.
        #[arg(long)]
        ttl: String,
        /// A capability it grants, `CAP` or `CAP:SCOPE` (repeatable; default: every grant of
        /// the pack).
        #[arg(long = "cap", value_name = "CAP[:SCOPE]")]
        caps: Vec<String>,
        /// Print JSON ({token, secret, mcp, env}).
        #[arg(long)]
        json: bool,
    },
}

fn view_json(v: &GatewayView) -> serde_json::Value {
    serde_json::json!({
        "running": v.running, "listen": v.listen, "started_ms": v.started_ms,
        "uptime_ms": v.uptime_ms, "requests": v.requests, "open_streams": v.open_streams,
        "restarts": v.restarts, "worker": v.worker, "pid": v.pid, "last_exit": v.last_exit,
    })
}

fn print(v: &GatewayView, json: bool) {
    if json {
        println!("{}", crate::text::json_value(&view_json(v)));
        return;
    }
    if !v.running {
        println!("gateway: stopped (listen {})", Esc(&v.listen));
        return;
    }
    println!(
        "gateway: running on {} since {} (up {} s)\n  requests: {}\n  open streams: {}\n  worker: {} (pid {}), restarts: {}",
        Esc(&v.listen),
        rfc3339(i64::try_from(v.started_ms).unwrap_or(i64::MAX)),
        v.uptime_ms / 1000,
        v.requests,
        v.open_streams,
        v.worker,
        v.pid,
        v.restarts
    );
    if let Some(why) = &v.last_exit {
        println!("  last exit: {}", Esc(why));
    }
}

fn view(answer: ControlResponse, what: &str) -> Result<GatewayView, Failure> {
    match answer {
        ControlResponse::Gateway(v) => Ok(v),
        other => Err(anyhow!("unexpected answer to gateway {what}: {other:?}").into()),
    }
}

/// The base URL of `listen` (a Unix socket has none a URL can name).
fn base_url(listen: &str) -> Option<String> {
    if listen.starts_with('/') {
        return None;
    }
    let host = match listen.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => listen.to_string(),
    };
    Some(format!("http://{host}"))
}

/// Runs `loongctl gateway …`.
pub(crate) fn run(layout: &Layout, cmd: GatewayCommand) -> Result<u8, Failure> {
    match cmd {
        GatewayCommand::Run { json } => {
            print(
                &view(crate::request(layout, ControlRequest::GatewayRun)?, "run")?,
                json,
            );
            Ok(exit::OK)
        }
        GatewayCommand::Status { json } => {
            print(
                &view(
                    crate::request(layout, ControlRequest::GatewayStatus)?,
                    "status",
                )?,
                json,
            );
            Ok(exit::OK)
        }
        GatewayCommand::Stop { drain, json } => {
            let drain_ms = drain
                .map(|d| crate::duration::millis("--drain", &d))
                .transpose()?
                .map(|ms| u64::try_from(ms).unwrap_or(0));
            let wait = std::time::Duration::from_millis(
                drain_ms.unwrap_or(600_000).saturating_add(STOP_MARGIN_MS),
            );
            let answer =
                crate::request_within(layout, ControlRequest::GatewayStop { drain_ms }, wait)?;
            print(&view(answer, "stop")?, json);
            Ok(exit::OK)
        }
        GatewayCommand::Pair {
            pack,
            agent,
            ttl,
            caps,
            json,
        } => pair(layout, pack, agent, ttl, caps, json),
    }
}

fn pair(
    layout: &Layout,
    pack: String,
    agent: String,
    ttl: String,
    caps: Vec<String>,
    json: bool,
) -> Result<u8, Failure> {
    let ttl_ms = crate::duration::millis("--ttl", &ttl)?;
    let grants = if caps.is_empty() {
        let take = |r: ControlResponse| match r {
            ControlResponse::Packs(ps) => Some(ps),
            _ => None,
        };
        let p = crate::paging::find(
            layout,
            ControlRequest::PackList,
            take,
            |p: &loong_ipc::PackView| p.id.clone(),
            |p| p.id == pack,
        )?
        .ok_or_else(|| Failure {
            code: exit::UNEXPECTED,
            error: anyhow!("no pack `{pack}`; `loongctl packs list` shows them"),
        })?;
        p.grants
    } else {
        caps
    };
    let ControlResponse::Tokens(ts) = crate::request(
        layout,
        ControlRequest::TokenIssue {
            pack,
            agent,
            grants,
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
    let gw = view(
        crate::request(layout, ControlRequest::GatewayStatus)?,
        "status",
    )?;
    let base = base_url(&gw.listen);
    let mcp = serde_json::json!({
        "mcpServers": { "loong": {
            "type": "http",
            "url": base.as_ref().map(|b| format!("{b}/mcp")),
            "headers": { "Authorization": format!("Bearer {secret}") },
        }}
    });
    let env: Vec<(String, String)> = match &base {
        Some(b) => vec![
            ("OPENAI_BASE_URL".into(), format!("{b}/v1")),
            ("OPENAI_API_KEY".into(), secret.to_string()),
            ("ANTHROPIC_BASE_URL".into(), b.clone()),
            ("ANTHROPIC_API_KEY".into(), secret.to_string()),
        ],
        None => Vec::new(),
    };
    if json {
        let env: serde_json::Map<String, serde_json::Value> = env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        println!(
            "{}",
            crate::text::json_value(&serde_json::json!({
                "token": t.id, "secret": secret, "listen": gw.listen,
                "running": gw.running, "mcp": mcp, "env": env,
            }))
        );
        return Ok(exit::OK);
    }
    println!("# MCP clients (Claude Code .mcp.json, Cursor, …):");
    println!("{}", serde_json::to_string_pretty(&mcp).unwrap_or_default());
    println!("# OpenAI and Anthropic SDKs:");
    for (k, v) in &env {
        println!("export {k}={}", Esc(v));
    }
    eprintln!(
        "token {} for {} in pack {} until {}; its secret (above) is shown only now{}",
        Esc(&t.id),
        Esc(&t.agent),
        Esc(&t.pack),
        rfc3339(t.expires_ms),
        if gw.running {
            String::new()
        } else {
            "; the gateway is not running: `loongctl gateway run`".into()
        }
    );
    Ok(exit::OK)
}
