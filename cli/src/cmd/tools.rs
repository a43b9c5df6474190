//! `loongctl invoke TOOL`, `loongctl plugins list | reload` and
//! `loongctl workers list | kill ID`.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use loong_ipc::{
    client::{ClientError, Event},
    message::control::MAX_INVOKE_INPUT_BYTES,
    paths::Layout,
    ControlRequest, ControlResponse, ErrorDetail, ErrorKind, InvokeRequest, InvokeResult,
    PlanFailed, PluginView, RemoteError, StreamChunk, WorkerView,
};

use super::audit::rfc3339;
use crate::{
    exit,
    paging::PageArgs,
    text::{esc_join, esc_lines, json_text, Esc},
    Failure,
};

/// How long `invoke` waits by default (an approval may be pending meanwhile).
pub const DEFAULT_INVOKE_TIMEOUT_SECS: f64 = 120.0;

/// `loongctl invoke`.
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The tool: a plugin id (`loongctl plugins list`).
    pub tool: String,
    /// The JSON input, `@FILE` to read it from a file, or `-` to read it from stdin.
    #[arg(long, default_value = "{}", value_name = "JSON|@FILE|-")]
    pub input: String,
    /// The capability token to act under, given by its secret (default: $LOONG_TOKEN, else
    /// the operator's own authority).
    #[arg(long, value_name = "SECRET")]
    pub token: Option<String>,
    /// Seconds to wait for the answer, approval included.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Print JSON (fields: tool, output (the tool's JSON), worker, logs, wall_us, worker_wall_us, cpu_us, fuel_consumed, peak_memory_bytes); a failure prints {"error": {kind, message, detail}}, a failed plan's detail as {"plan_failed": {kind, step, call, cause, message}}.
    #[arg(long)]
    pub json: bool,
}

/// `loongctl plugins …`.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// The plugins in HOME/plugins by id, with their state and any load error.
    List {
        /// Print JSON (an array of {id, version, summary, bridge_kind, state, error, sha256, path, tools (the first 16), tool_count, trust, signer}).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One plugin with every tool it offers (a page of `plugins list` shows the first
    /// few of a plugin's tools and their count).
    Show {
        id: String,
        /// Print JSON ({id, ..., tools, tool_count, input_schemas, ...}).
        #[arg(long)]
        json: bool,
    },
    /// Discover HOME/plugins again and load each plugin once in a worker, then list them.
    Reload {
        #[arg(long)]
        json: bool,
    },
    /// Write a new plugin package into DIR that runs as it is (manifest, README, code).
    Init {
        dir: std::path::PathBuf,
        #[arg(long, value_enum)]
        kind: super::scaffold::Kind,
    },
    /// Diagnose a package without running any of it (exit 2 when something would stop it).
    Doctor { dir: std::path::PathBuf },
    /// Install a plugin package (a directory, or a .tar, .tar.gz or .tgz archive unpacked
    /// here first): checked, loaded and probed before it serves;
    /// an unverified package whose bridge runs native code is installed disabled.
    Install {
        dir: std::path::PathBuf,
        /// Cap the plugin's trust tier (official, verified-community, unverified), whatever
        /// its signature proves.
        #[arg(long, value_name = "TIER")]
        trust: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Upgrade an installed plugin from a package directory; on a failed check or health
    /// probe the running version keeps serving (rolled back, audited).
    Upgrade {
        dir: std::path::PathBuf,
        #[arg(long, value_name = "TIER")]
        trust: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Enable an installed plugin (audited).
    Enable { id: String },
    /// Disable an installed plugin; calls running on it finish (audited).
    Disable { id: String },
    /// Remove an installed plugin and its lock entry (audited).
    Remove { id: String },
    /// Check a package directory (DIR: its signature, the signer in loongd's keyring and its
    /// tier, every file's hash) or the installed plugins (`--lock`: every package re-hashed
    /// against the lockfile). Exit 8 when anything does not hold.
    Verify {
        /// The package directory to check (runs as you; asks loongd only for its keyring).
        #[arg(required_unless_present = "lock", conflicts_with = "lock")]
        dir: Option<std::path::PathBuf>,
        #[arg(long)]
        lock: bool,
        #[arg(long)]
        json: bool,
    },
    /// Sign a plugin package (a directory) with a private key: writes DIR/loong.plugin.sig,
    /// a detached ed25519 signature over the digest of every file in it. Runs locally.
    Sign {
        dir: std::path::PathBuf,
        /// The private key (from `loongctl keys generate`).
        #[arg(long, value_name = "FILE")]
        key: std::path::PathBuf,
    },
}

/// `loongctl tools …`.
#[derive(Debug, Subcommand)]
pub enum ToolsCommand {
    /// Tools whose names, tags, summaries or descriptions match QUERY, best first (each
    /// search is audited).
    Search {
        /// Words to look for (empty: every tool).
        #[arg(default_value = "")]
        query: String,
        /// Only tools at least this trusted: official, verified-community or unverified.
        #[arg(long, value_name = "TIER")]
        trust: Option<String>,
        /// At most this many hits (1 to 100).
        #[arg(long, default_value_t = loong_ipc::message::control::DEFAULT_SEARCH_LIMIT)]
        limit: u32,
        /// Print JSON (an array of {name, plugin, summary, description, tags, input_examples, output_examples, trust, claimed_trust, state, bridge_kind, score}).
        #[arg(long)]
        json: bool,
    },
}

/// `loongctl workers …`.
#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// Worker processes by number.
    List {
        /// Print JSON (an array of {id, pid, kind, tier, state, tool, calls, started_ms}).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Kill one worker (SIGKILL); a call it runs fails, and it is replaced.
    Kill { id: u64 },
}

fn usage(m: String) -> Failure {
    Failure {
        code: exit::USAGE,
        error: anyhow!(m),
    }
}

fn read_input(arg: &str) -> Result<String, Failure> {
    let text = if arg == "-" {
        read_bounded(std::io::stdin().lock(), "-")?
    } else if let Some(path) = arg.strip_prefix('@') {
        let file = std::fs::File::open(path).map_err(|e| usage(format!("--input @{path}: {e}")))?;
        read_bounded(file, &format!("@{path}"))?
    } else {
        arg.to_string()
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| usage(format!("--input {}: not JSON: {e}", source_name(arg))))?;
    Ok(text)
}

/// How an error names where the input came from: the file, stdin, or the argument itself.
fn source_name(arg: &str) -> String {
    if arg == "-" {
        "- (stdin)".to_string()
    } else if arg.starts_with('@') {
        arg.to_string()
    } else {
        "(the argument)".to_string()
    }
}

/// Reads at most [`MAX_INVOKE_INPUT_BYTES`] (one more byte says it is too long), as UTF-8.
fn read_bounded(reader: impl std::io::Read, name: &str) -> Result<String, Failure> {
    use std::io::Read as _;
    let shown = if name == "-" { "- (stdin)" } else { name };
    let mut bytes = Vec::new();
    reader
        .take(MAX_INVOKE_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| usage(format!("--input {shown}: {e}")))?;
    if bytes.len() > MAX_INVOKE_INPUT_BYTES {
        return Err(usage(format!(
            "--input {shown}: more than the {MAX_INVOKE_INPUT_BYTES}-byte limit of an invoke's input; \
             give a smaller input"
        )));
    }
    String::from_utf8(bytes).map_err(|e| usage(format!("--input {shown}: not UTF-8: {e}")))
}

fn result_json(r: &InvokeResult) -> serde_json::Value {
    let output = serde_json::from_str::<serde_json::Value>(&r.output)
        .unwrap_or_else(|_| serde_json::Value::String(r.output.clone()));
    serde_json::json!({
        "tool": r.tool, "output": output, "worker": r.worker, "logs": r.logs, "wall_us": r.wall_us,
        "worker_wall_us": r.worker_wall_us, "cpu_us": r.cpu_us, "fuel_consumed": r.fuel_consumed,
        "peak_memory_bytes": r.peak_memory_bytes,
    })
}

/// `loongctl invoke`: prints the tool's JSON output on stdout.
pub(crate) fn invoke(layout: &Layout, args: InvokeArgs) -> Result<u8, Failure> {
    let secs = args.timeout.unwrap_or(DEFAULT_INVOKE_TIMEOUT_SECS);
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(usage(format!(
            "--timeout {secs}: give seconds between 0 and 86400"
        )));
    }
    let deadline = Duration::from_secs_f64(secs);
    let input = read_input(&args.input)?;
    // The request travels in the same write as the hello (one round trip for both).
    let (mut client, id) = crate::start(
        layout,
        ControlRequest::Invoke(InvokeRequest {
            tool: args.tool,
            input,
            token: crate::bearer(args.token),
        }),
        deadline,
    )?;
    let until = Instant::now() + deadline + loong_ipc::client::DEADLINE_GRACE;
    loop {
        // The exit code follows the answer's class: a deadline that passed while an approval
        // was pending is answered `ApprovalPending` (exit 5) by loongd, naming the approval.
        let event = match client.next_event::<ControlResponse>(id, until) {
            Err(ClientError::Remote(r)) if r.kind == ErrorKind::DeadlineExceeded => {
                return Err(Failure {
                    code: exit::WORKER_FAILED,
                    error: ClientError::Remote(r).into(),
                });
            }
            // A failed plan: its kind and the step it names, from the typed detail.
            Err(ClientError::Remote(r)) => {
                if args.json {
                    println!("{}", crate::text::json_value(&error_json(&r)));
                }
                let code = Failure::from(ClientError::Remote(r.clone())).code;
                return Err(match &r.detail {
                    Some(ErrorDetail::PlanFailed(p)) => Failure {
                        code,
                        error: anyhow!("{}", plan_failed_text(p)),
                    },
                    _ => ClientError::Remote(r).into(),
                });
            }
            other => other?,
        };
        match event {
            // Notes for people (an approval's instructions), shown escaped, never parsed.
            Event::Chunk(StreamChunk::Stderr(b)) => {
                let note = String::from_utf8_lossy(&b);
                let _ = std::io::stderr().write_all(esc_lines(&note).as_bytes());
            }
            Event::Chunk(_) => {}
            Event::Done(ControlResponse::Invoked(r)) => {
                if args.json {
                    println!("{}", crate::text::json_value(&result_json(&r)));
                } else {
                    println!("{}", json_text(&r.output));
                    for line in &r.logs {
                        eprintln!("log: {}", Esc(line));
                    }
                }
                return Ok(exit::OK);
            }
            Event::Done(other) => {
                return Err(anyhow!("unexpected answer to invoke: {other:?}").into())
            }
        }
    }
}

/// `plan failed (KIND) at step S, call C[, cause CAUSE]: MESSAGE`.
fn plan_failed_text(p: &PlanFailed) -> String {
    let mut at = String::new();
    if let Some(step) = &p.step {
        at.push_str(&format!(" at step {step}"));
    }
    if let Some(call) = &p.call {
        at.push_str(&format!(", call {call}"));
    }
    if let Some(cause) = p.cause {
        at.push_str(&format!(", cause {}", cause.name()));
    }
    format!("plan failed ({}){at}: {}", p.kind.name(), p.message)
}

/// A failed invoke for `--json`: `{"error": {"kind", "message", "detail"}}`, a failed plan's
/// detail spelt `{"plan_failed": {"kind", "step", "call", "cause", "message"}}`.
fn error_json(r: &RemoteError) -> serde_json::Value {
    let detail = match &r.detail {
        Some(ErrorDetail::PlanFailed(p)) => serde_json::json!({"plan_failed": {
            "kind": p.kind.name(), "step": p.step, "call": p.call,
            "cause": p.cause.map(|c| c.name()), "message": p.message,
        }}),
        Some(other) => serde_json::to_value(other).unwrap_or(serde_json::Value::Null),
        None => serde_json::Value::Null,
    };
    serde_json::json!({"error": {
        "kind": serde_json::to_value(r.kind).unwrap_or(serde_json::Value::Null),
        "message": r.message,
        "detail": detail,
    }})
}

fn install_request(
    dir: &std::path::Path,
    upgrade_only: bool,
    trust: Option<String>,
) -> Result<ControlRequest, Failure> {
    let abs = std::fs::canonicalize(dir)
        .with_context(|| format!("{}: the package directory", dir.display()))
        .map_err(|e| usage(format!("{e:#}")))?;
    Ok(ControlRequest::PluginInstall {
        path: abs.display().to_string(),
        upgrade_only,
        trust,
    })
}

/// `plugins verify --lock`.
fn verify_lock(layout: &Layout, json: bool) -> Result<u8, Failure> {
    let ControlResponse::LockReport(checks) = crate::request_within(
        layout,
        ControlRequest::PluginVerifyLock,
        Duration::from_secs(120),
    )?
    else {
        return Err(anyhow!("unexpected answer to plugins verify").into());
    };
    let drifted = checks.iter().filter(|c| !c.drift.is_empty()).count();
    if json {
        let all: Vec<serde_json::Value> = checks
            .iter()
            .map(|c| {
                serde_json::json!({"id": c.id, "version": c.version, "locked": c.locked,
                    "drift": c.drift})
            })
            .collect();
        println!(
            "{}",
            crate::text::json_value(&serde_json::Value::Array(all))
        );
    } else {
        for c in &checks {
            if c.drift.is_empty() {
                println!(
                    "{:<24} {:<10} ok      {}",
                    Esc(&c.id),
                    Esc(&c.version),
                    Esc(&c.locked)
                );
            } else {
                println!(
                    "{:<24} {:<10} DRIFT   {}",
                    Esc(&c.id),
                    Esc(&c.version),
                    esc_join(&c.drift, ", ")
                );
            }
        }
    }
    Ok(if drifted > 0 {
        exit::VERIFY_FAILED
    } else {
        exit::OK
    })
}

/// `plugins enable ID`: exits [`exit::PLUGIN_FAILED`], naming why, when the plugin did not
/// come up (its load check or probe failed, or its package drifted).
fn enable(layout: &Layout, id: String) -> Result<u8, Failure> {
    let ControlResponse::Plugins(ps) = crate::request_within(
        layout,
        ControlRequest::PluginEnable { id: id.clone() },
        Duration::from_secs(120),
    )?
    else {
        return Err(anyhow!("unexpected answer to plugins enable").into());
    };
    print_plugins(&ps, false);
    match ps.iter().find(|p| p.id == id) {
        Some(p) if p.state == "failed" => Err(Failure {
            code: exit::PLUGIN_FAILED,
            error: anyhow!(
                "plugins enable {id}: enabled, but it failed: {}",
                p.error.as_deref().unwrap_or("no reason given")
            ),
        }),
        _ => Ok(exit::OK),
    }
}

/// `plugins sign`: the package digest, signed with the private key, next to the manifest.
fn sign(dir: &std::path::Path, key: &std::path::Path) -> Result<u8, Failure> {
    use ed25519_dalek::Signer;
    use loong_ipc::package::{self, PackageSignature, PACKAGE_FORMAT, SIGNATURE_FILE};
    let signing = super::keys::read_secret(key)?;
    let digest = package::digest(dir).map_err(|e| usage(e.to_string()))?;
    if digest.files.is_empty() {
        return Err(usage(format!("{}: no files to sign", dir.display())));
    }
    let public = signing.verifying_key().to_bytes();
    let sig = PackageSignature {
        format: PACKAGE_FORMAT.into(),
        key_id: super::keys::key_id(&public),
        digest: digest.digest.clone(),
        signature: hex::encode(signing.sign(&digest.message).to_bytes()),
        files: digest
            .files
            .iter()
            .map(|f| (f.path.clone(), f.sha256.clone()))
            .collect(),
    };
    let path = dir.join(SIGNATURE_FILE);
    let text = serde_json::to_string_pretty(&sig).map_err(|e| anyhow!(e))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "signed {} ({} files, digest {}) with key {} → {}",
        dir.display(),
        digest.files.len(),
        digest.digest,
        sig.key_id,
        path.display()
    );
    Ok(exit::OK)
}

fn plugin_json(p: &PluginView) -> serde_json::Value {
    serde_json::json!({
        "id": p.id, "version": p.version, "summary": p.summary, "bridge_kind": p.bridge_kind,
        "state": p.state, "error": p.error, "sha256": p.sha256, "path": p.path,
        "tools": p.tools, "tool_count": p.tool_count, "trust": p.trust, "signer": p.signer,
        "lock_digest": p.lock_digest,
    })
}

pub(crate) fn plugins(layout: &Layout, cmd: PluginsCommand) -> Result<u8, Failure> {
    let (req, json) = match cmd {
        PluginsCommand::List { json, page } => return list_plugins(layout, &page, json),
        PluginsCommand::Show { id, json } => {
            let ControlResponse::Plugins(ps) =
                crate::request(layout, ControlRequest::PluginShow { id })?
            else {
                return Err(anyhow!("unexpected answer to plugins show").into());
            };
            if json {
                let all: Vec<serde_json::Value> = ps
                    .iter()
                    .map(|p| {
                        let mut v = plugin_json(p);
                        v["input_schemas"] = serde_json::json!(p.input_schemas);
                        v
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(all));
            } else {
                ps.iter().for_each(print_plugin);
            }
            return Ok(exit::OK);
        }
        PluginsCommand::Reload { json } => {
            // The answer is the first page; the list is shown whole, a page at a time.
            crate::request_within(
                layout,
                ControlRequest::PluginReload,
                Duration::from_secs(120),
            )?;
            return list_plugins(layout, &PageArgs::default(), json);
        }
        PluginsCommand::Sign { dir, key } => return sign(&dir, &key),
        PluginsCommand::Init { dir, kind } => return super::scaffold::init(&dir, kind),
        PluginsCommand::Doctor { dir } => return super::scaffold::doctor(&dir),
        PluginsCommand::Install { dir, trust, json } if super::scaffold::is_archive(&dir) => {
            // Unpacked here, on the operator's side; loongd installs the directory.
            let unpacked = super::scaffold::unpack(&dir)?;
            let req = install_request(&unpacked.dir, false, trust)?;
            let ControlResponse::Plugins(ps) =
                crate::request_within(layout, req, Duration::from_secs(120))?
            else {
                return Err(anyhow!("unexpected answer to plugins install").into());
            };
            print_plugins(&ps, json);
            return Ok(exit::OK);
        }
        PluginsCommand::Install { dir, trust, json } => {
            (install_request(&dir, false, trust)?, json)
        }
        PluginsCommand::Upgrade { dir, trust, json } => (install_request(&dir, true, trust)?, json),
        PluginsCommand::Enable { id } => return enable(layout, id),
        PluginsCommand::Disable { id } => (ControlRequest::PluginDisable { id }, false),
        PluginsCommand::Remove { id } => (ControlRequest::PluginRemove { id }, false),
        PluginsCommand::Verify {
            dir: Some(dir),
            json,
            ..
        } => return super::verify::verify_dir(layout, &dir, json),
        PluginsCommand::Verify { json, .. } => return verify_lock(layout, json),
    };
    let ControlResponse::Plugins(ps) =
        crate::request_within(layout, req, Duration::from_secs(120))?
    else {
        return Err(anyhow!("unexpected answer to plugins").into());
    };
    print_plugins(&ps, json);
    Ok(exit::OK)
}

pub(crate) fn tools(layout: &Layout, cmd: ToolsCommand) -> Result<u8, Failure> {
    let ToolsCommand::Search {
        query,
        trust,
        limit,
        json,
    } = cmd;
    let req = ControlRequest::ToolSearch(loong_ipc::ToolSearchRequest {
        query,
        trust,
        limit,
    });
    let ControlResponse::ToolHits(hits) = crate::request(layout, req)? else {
        return Err(anyhow!("unexpected answer to tools search").into());
    };
    if json {
        let examples = |list: &[String]| -> Vec<serde_json::Value> {
            list.iter()
                .map(|e| serde_json::from_str(e).unwrap_or(serde_json::Value::String(e.clone())))
                .collect()
        };
        let all: Vec<serde_json::Value> = hits
            .iter()
            .map(|h| {
                serde_json::json!({
                    "name": h.name, "plugin": h.plugin, "summary": h.summary,
                    "description": h.description, "tags": h.tags,
                    "input_examples": examples(&h.input_examples),
                    "output_examples": examples(&h.output_examples),
                    "trust": h.trust, "claimed_trust": h.claimed_trust, "state": h.state,
                    "bridge_kind": h.bridge_kind, "score": h.score,
                })
            })
            .collect();
        println!(
            "{}",
            crate::text::json_value(&serde_json::Value::Array(all))
        );
    } else {
        for h in &hits {
            let about = if h.description.is_empty() {
                &h.summary
            } else {
                &h.description
            };
            let first = about.lines().next().unwrap_or_default();
            println!(
                "{:<32} {:<18} {:<8} {}",
                Esc(&h.name),
                Esc(&h.trust),
                Esc(&h.state),
                Esc(first)
            );
            if !h.tags.is_empty() {
                println!("    tags: {}", esc_join(&h.tags, ", "));
            }
            for e in &h.input_examples {
                println!("    example input: {}", Esc(e));
            }
        }
    }
    Ok(exit::OK)
}

fn list_plugins(layout: &Layout, page: &PageArgs, json: bool) -> Result<u8, Failure> {
    crate::paging::print_list(
        layout,
        page,
        json,
        ControlRequest::PluginList,
        |r| match r {
            ControlResponse::Plugins(ps) => Some(ps),
            _ => None,
        },
        |p| p.id.clone(),
        plugin_json,
        print_plugin,
    )
}

fn print_plugins(ps: &[PluginView], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::Value::Array(ps.iter().map(plugin_json).collect())
        );
    } else {
        ps.iter().for_each(print_plugin);
    }
}

fn print_plugin(p: &PluginView) {
    match &p.error {
        None => println!(
            "{:<24} {:<10} {:<14} {:<7} {:<18} {}",
            Esc(&p.id),
            Esc(&p.version),
            Esc(&p.bridge_kind),
            Esc(&p.state),
            Esc(&p.trust),
            Esc(&p.summary)
        ),
        Some(e) => println!(
            "{:<24} {:<10} {:<14} {:<7} {}",
            Esc(&p.id),
            Esc(&p.version),
            Esc(&p.bridge_kind),
            Esc(&p.state),
            Esc(e)
        ),
    }
    // An MCP server's tools, one per line under it (a page of the list carries the first).
    if p.tools.len() > 1 || p.tools.first().is_some_and(|t| *t != p.id) {
        for t in &p.tools {
            println!("    {}", Esc(t));
        }
    }
    let more = (p.tool_count as usize).saturating_sub(p.tools.len());
    if more > 0 {
        println!(
            "    … and {more} more (`loongctl plugins show {}`)",
            Esc(&p.id)
        );
    }
}

fn worker_json(w: &WorkerView) -> serde_json::Value {
    serde_json::json!({
        "id": w.id, "pid": w.pid, "kind": w.kind, "tier": w.tier, "state": w.state,
        "tool": w.tool, "calls": w.calls, "started_ms": w.started_ms,
    })
}

pub(crate) fn workers(layout: &Layout, cmd: WorkersCommand) -> Result<u8, Failure> {
    match cmd {
        WorkersCommand::List { json, page } => crate::paging::print_list(
            layout,
            &page,
            json,
            ControlRequest::WorkerList,
            |r| match r {
                ControlResponse::Workers(ws) => Some(ws),
                _ => None,
            },
            |w| w.id.to_string(),
            worker_json,
            |w| {
                println!(
                    "{:<5} pid {:<8} {:<5} {:<10} {:<5} calls {:<6} since {}  {}",
                    w.id,
                    w.pid,
                    Esc(&w.kind),
                    Esc(&w.tier),
                    Esc(&w.state),
                    w.calls,
                    rfc3339(w.started_ms),
                    Esc(w.tool.as_deref().unwrap_or(""))
                )
            },
        ),
        WorkersCommand::Kill { id } => {
            crate::request(layout, ControlRequest::WorkerKill { id })?;
            eprintln!("worker {id} killed");
            Ok(exit::OK)
        }
    }
}
