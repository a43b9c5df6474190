//! loongctl, the operator's CLI. It only asks: every decision is loongd's.
//!
//! Each subcommand lives in its own file under `cmd/`. Commands that read state take
//! `--json`, whose field names are documented in `docs/cli.md` and stay stable.

mod cmd;
mod duration;
pub mod exit;
pub mod fast;
mod paging;
pub mod text;

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use loong_ipc::{
    client::{Client, ClientError, ConnectOptions, Event},
    paths::Layout,
    ErrorKind, PeerKind,
};

/// The environment variable a token's secret may be given in, instead of `--token` (where any
/// local user could read it in the process list).
pub const TOKEN_ENV: &str = "LOONG_TOKEN";

/// The bearer secret to act under: `--token`, else `LOONG_TOKEN`, else none (the operator).
pub(crate) fn bearer(flag: Option<String>) -> Option<loong_ipc::BearerSecret> {
    flag.or_else(|| std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()))
        .map(loong_ipc::BearerSecret::new)
}

/// Refuses a bearer secret given where a token's public id belongs (`tokens revoke ID`,
/// `audit token-trail ID`), before it is sent on: loongd would only answer that no such token
/// exists, and echo the secret back in that answer.
pub(crate) fn public_token_id(id: &str) -> Result<(), Failure> {
    if id.starts_with(loong_ipc::message::control::BEARER_SECRET_PREFIX) {
        return Err(Failure {
            code: exit::USAGE,
            error: anyhow::anyhow!(
                "that is a token's bearer secret, not its id: name the token by its public id (tok_…, shown when it was issued and by `loongctl tokens list`); the secret was not sent"
            ),
        });
    }
    Ok(())
}

/// How long loongctl waits to connect and handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The deadline of a simple control request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// The Loong operator CLI.
#[derive(Debug, Parser)]
#[command(name = "loongctl", version, after_help = exit::HELP)]
pub struct Cli {
    /// The home of the daemon to talk to (default: $LOONG_HOME, else $XDG_STATE_HOME/loong, else ~/.local/state/loong).
    #[arg(long, global = true, value_name = "DIR", conflicts_with = "system")]
    pub home: Option<PathBuf>,
    /// Talk to the system daemon (/run/loong/loongd.sock).
    #[arg(long, global = true)]
    pub system: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// loongctl's commands.
// Parsed once per process; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the daemon's version, pid, uptime, home, socket and connected clients.
    Status {
        /// Print JSON (fields: version, protocol_version, pid, uptime_ms, home, socket_path, connected_clients).
        #[arg(long)]
        json: bool,
    },
    /// Start, stop or check the daemon.
    #[command(subcommand)]
    Daemon(cmd::daemon::DaemonCommand),
    /// Show which confinement mechanisms this host has and which tiers loongd can enforce
    /// (exit 6 when a tier cannot be fully enforced); with --fix, repair the home instead.
    Doctor {
        /// Print JSON (fields: root, landlock_abi, error, mechanisms[name, available, detail, fix], tiers[tier, enforceable, missing], egress_sandboxes, egress_open; with --fix: fixed[what, path, detail], not_fixed[what, path, detail, fix]).
        #[arg(long)]
        json: bool,
        /// Repair what is safe to repair (missing home directories, modes looser than loongd
        /// makes them, a stale control socket) and report the rest with the command that
        /// fixes it (exit 1 when something is left).
        #[arg(long)]
        fix: bool,
    },
    /// Configure the agent's provider: writes [providers.NAME] and [agent] to loongd.toml,
    /// stores the API key as a secret bound to the provider's host, restarts loongd and
    /// probes the provider once (a failed probe still exits 0, naming the next command).
    Onboard(cmd::onboard::OnboardArgs),
    /// Run programs in sandboxes.
    #[command(subcommand)]
    Sandbox(cmd::sandbox::SandboxCommand),
    /// Check policy files.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCommand),
    /// Read and verify the audit trail.
    #[command(subcommand)]
    Audit(cmd::audit::AuditCommand),
    /// Issue, list and revoke capability tokens.
    #[command(subcommand)]
    Tokens(cmd::tokens::TokensCommand),
    /// Show vertical packs.
    #[command(subcommand)]
    Packs(cmd::tokens::PacksCommand),
    /// List, approve and deny requests that wait for an operator.
    #[command(subcommand)]
    Approvals(cmd::approvals::ApprovalsCommand),
    /// Trust anchors: generate, add, list, revoke and rotate keys; sign policy files.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
    /// Secrets that http_json manifests name as ${secret:NAME}: set (from stdin or a file),
    /// list (names only), rm.
    #[command(subcommand)]
    Secrets(cmd::secrets::SecretsCommand),
    /// Chat channels (Telegram bots, Feishu/Lark apps): add (secrets from stdin), list,
    /// status (names a 409 conflict and what to do), remove.
    #[command(subcommand)]
    Channels(cmd::channels::ChannelsCommand),
    /// Call a tool (a plugin) in a confined worker; prints its JSON output (exit 4 when
    /// denied, 5 when an approval is pending past the deadline, 7 when the worker failed).
    Invoke(cmd::tools::InvokeArgs),
    /// Ask the agent: one turn in the confined agent worker, its tool calls decided under
    /// the token (exit 7 when the provider or the worker failed).
    Ask(cmd::agent::AskArgs),
    /// Chat with the agent: one turn per line on one session, with line editing and history
    /// on a terminal; /help, /tools, /session, /clear, /exit.
    Chat(cmd::chat::ChatArgs),
    /// The agent's conversations kept by session.
    #[command(subcommand)]
    Memory(cmd::agent::MemoryCommand),
    /// List and reload the plugins in HOME/plugins.
    #[command(subcommand)]
    Plugins(cmd::tools::PluginsCommand),
    /// List and kill worker processes.
    #[command(subcommand)]
    Workers(cmd::tools::WorkersCommand),
    /// Search the tools of active and deferred plugins.
    #[command(subcommand)]
    Tools(cmd::tools::ToolsCommand),
    /// Serve Loong's tools to MCP clients (`mcp serve`: on stdio, under a capability token).
    #[command(subcommand)]
    Mcp(cmd::mcp::McpCommand),
    /// The gateway: Loong's tools over MCP streamable HTTP and OpenAI/Anthropic-compatible
    /// routes (run, status, stop, pair a client).
    #[command(subcommand)]
    Gateway(cmd::gateway::GatewayCommand),
    /// Print the daemon's metrics as OpenMetrics text (what `[metrics] listen` serves at
    /// /metrics).
    Metrics,
    /// Print a completion script for SHELL on stdout (bash: source it, or save it under
    /// /usr/share/bash-completion/completions/loongctl).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print loongctl's manual page (roff) on stdout; the package installs it.
    #[command(hide = true)]
    Manpage,
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// One of the constants in [`exit`].
    pub code: u8,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        let error = e.into();
        let code = match error.downcast_ref::<ClientError>() {
            Some(ClientError::NotRunning { .. }) => exit::DAEMON_NOT_RUNNING,
            Some(ClientError::Remote(r)) => match r.kind {
                ErrorKind::Denied => exit::DENIED,
                ErrorKind::ApprovalPending => exit::APPROVAL_PENDING,
                ErrorKind::SandboxUnavailable => exit::SANDBOX_UNAVAILABLE,
                ErrorKind::WorkerFailed => exit::WORKER_FAILED,
                ErrorKind::BadRequest => exit::USAGE,
                ErrorKind::BudgetExceeded => exit::BUDGET_EXCEEDED,
                _ => exit::UNEXPECTED,
            },
            _ => exit::UNEXPECTED,
        };
        Failure { code, error }
    }
}

/// Runs a parsed command line; the `Ok` value is the exit code.
pub fn run(cli: Cli) -> Result<u8, Failure> {
    // Generated text needs no home.
    match cli.command {
        Command::Completions { shell } => return cmd::completions::completions(shell),
        Command::Manpage => return cmd::completions::manpage(),
        _ => {}
    }
    let layout = Layout::resolve(cli.home.as_deref(), cli.system).map_err(|e| Failure {
        code: exit::USAGE,
        error: e.into(),
    })?;
    match cli.command {
        Command::Status { json } => cmd::status::run(&layout, json),
        Command::Daemon(c) => cmd::daemon::run(&layout, c),
        Command::Doctor { json, fix: false } => cmd::doctor::run(&layout, json),
        Command::Doctor { json, fix: true } => cmd::doctor::fix(&layout, json),
        Command::Onboard(a) => cmd::onboard::run(&layout, a),
        Command::Sandbox(c) => cmd::sandbox::run(&layout, c),
        Command::Policy(c) => cmd::policy::run(&layout, c),
        Command::Audit(c) => cmd::audit::run(&layout, c),
        Command::Tokens(c) => cmd::tokens::run_tokens(&layout, c),
        Command::Packs(c) => cmd::tokens::run_packs(&layout, c),
        Command::Approvals(c) => cmd::approvals::run(&layout, c),
        Command::Keys(c) => cmd::keys::run(&layout, c),
        Command::Secrets(c) => cmd::secrets::run(&layout, c),
        Command::Channels(c) => cmd::channels::run(&layout, c),
        Command::Invoke(a) => cmd::tools::invoke(&layout, a),
        Command::Plugins(c) => cmd::tools::plugins(&layout, c),
        Command::Workers(c) => cmd::tools::workers(&layout, c),
        Command::Tools(c) => cmd::tools::tools(&layout, c),
        Command::Mcp(c) => cmd::mcp::run(&layout, c),
        Command::Gateway(c) => cmd::gateway::run(&layout, c),
        Command::Metrics => cmd::metrics::run(&layout),
        Command::Ask(a) => cmd::agent::ask(&layout, a),
        Command::Chat(a) => cmd::chat::chat(&layout, a),
        Command::Memory(c) => cmd::agent::memory(&layout, c),
        Command::Completions { .. } | Command::Manpage => Ok(exit::OK),
    }
}

/// Sends one control request to the daemon of `layout` on a fresh connection and returns
/// its answer.
pub(crate) fn request(
    layout: &Layout,
    req: loong_ipc::message::control::ControlRequest,
) -> Result<loong_ipc::message::control::ControlResponse, Failure> {
    request_within(layout, req, REQUEST_DEADLINE)
}

/// [`request`] with its own deadline. The request travels in the same write as the hello.
pub(crate) fn request_within(
    layout: &Layout,
    req: loong_ipc::message::control::ControlRequest,
    deadline: Duration,
) -> Result<loong_ipc::message::control::ControlResponse, Failure> {
    let (mut client, id) = start(layout, req, deadline)?;
    let until = std::time::Instant::now() + deadline + loong_ipc::client::DEADLINE_GRACE;
    loop {
        if let Event::Done(answer) = client.next_event(id, until)? {
            return Ok(answer);
        }
    }
}

/// Connects to the daemon of `layout`; a missing daemon is an error that names the command
/// that starts one.
pub(crate) fn connect(layout: &Layout) -> Result<Client, Failure> {
    Client::connect(&layout.socket, &connect_options()).map_err(|e| not_running(layout, e))
}

/// Connects to the daemon of `layout` and sends `req` behind the hello (one round trip for
/// both); returns the client and the request's id.
pub(crate) fn start(
    layout: &Layout,
    req: loong_ipc::message::control::ControlRequest,
    deadline: Duration,
) -> Result<(Client, loong_ipc::RequestId), Failure> {
    Client::connect_with(&layout.socket, &connect_options(), req, deadline)
        .map_err(|e| not_running(layout, e))
}

/// [`start`], with the request's first input chunk in the same write when it fits there
/// (`Client::connect_with_input`); the `bool` says whether it went.
pub(crate) fn start_with_input(
    layout: &Layout,
    req: loong_ipc::message::control::ControlRequest,
    deadline: Duration,
    input: loong_ipc::StreamChunk,
) -> Result<(Client, loong_ipc::RequestId, bool), Failure> {
    Client::connect_with_input(
        &layout.socket,
        &connect_options(),
        req,
        deadline,
        Some(input),
    )
    .map_err(|e| not_running(layout, e))
}

fn connect_options() -> ConnectOptions {
    ConnectOptions {
        peer_kind: PeerKind::Operator,
        build: concat!("loongctl ", env!("CARGO_PKG_VERSION")).to_string(),
        timeout: CONNECT_TIMEOUT,
    }
}

fn not_running(layout: &Layout, e: ClientError) -> Failure {
    match e {
        ClientError::NotRunning { .. } => Failure {
            code: exit::DAEMON_NOT_RUNNING,
            error: anyhow::anyhow!(
                "loongd is not running for home {} (nothing listens on {}); start it with `loongctl --home {} daemon start`",
                layout.home.display(),
                layout.socket.display(),
                layout.home.display()
            ),
        },
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use loong_ipc::{ErrorDetail, RemoteError};

    use super::*;

    /// The exit code follows the answer's class, whatever its message says.
    #[test]
    fn exit_codes_come_from_the_class_not_the_text() {
        let code = |kind, message: &str| {
            let err = RemoteError::new(kind, message).with_detail(ErrorDetail::ApprovalPending {
                approval: "a1".into(),
            });
            Failure::from(ClientError::Remote(err)).code
        };
        for (kind, want) in [
            (ErrorKind::Denied, exit::DENIED),
            (ErrorKind::ApprovalPending, exit::APPROVAL_PENDING),
            (ErrorKind::SandboxUnavailable, exit::SANDBOX_UNAVAILABLE),
            (ErrorKind::WorkerFailed, exit::WORKER_FAILED),
            (ErrorKind::BadRequest, exit::USAGE),
            (ErrorKind::BudgetExceeded, exit::BUDGET_EXCEEDED),
            (ErrorKind::Internal, exit::UNEXPECTED),
        ] {
            assert_eq!(
                code(kind, "approval pending, denied, worker"),
                want,
                "{kind:?}"
            );
        }
    }
}
