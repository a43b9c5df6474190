//! `loongd`: the Loong kernel daemon. Parses arguments, installs tracing (to the journal or
//! stderr, `log.rs`) and calls [`loongd::run`].
//!
//! Exit codes: 0 after a clean shutdown, 1 on a fatal error (the message says which input
//! or mechanism), 2 on a usage error.

mod log;

use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser};
use loong_ipc::paths::Layout;

/// The Loong kernel daemon: policy, approvals, capability tokens, audit and the worker
/// supervisor, serving the control API on a Unix socket.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Exit codes: 0 clean shutdown, 1 fatal error, 2 usage error."
)]
struct Args {
    /// The home to own (default: $LOONG_HOME, else $XDG_STATE_HOME/loong, else ~/.local/state/loong).
    #[arg(long, value_name = "DIR", conflicts_with = "system")]
    home: Option<PathBuf>,
    /// Use the system layout: /var/lib/loong, /etc/loong/loongd.toml, /run/loong/loongd.sock.
    #[arg(long)]
    system: bool,
    /// Stay in the caller's session and log for a terminal (use this under systemd too).
    #[arg(long)]
    foreground: bool,
    /// Start even when the audit trail fails its start-up check (tail since the newest
    /// checkpoint, and the witness file); the trail then records `audit.integrity_failed`
    /// naming the first bad record.
    #[arg(long)]
    accept_audit_integrity_failure: bool,
    /// Print loongd's manual page (roff) and exit; the package installs it.
    #[arg(long, hide = true)]
    manpage: bool,
    /// Print the commented default loongd.toml and exit; the package installs it as
    /// /etc/loong/loongd.toml.
    #[arg(long, hide = true)]
    default_config: bool,
}

/// Writes generated text (the manual page, the default configuration) to stdout.
fn print(text: &[u8]) -> ExitCode {
    match std::io::stdout().write_all(text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loongd: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.manpage {
        let mut out = Vec::new();
        return match clap_mangen::Man::new(Args::command())
            .section("8")
            .render(&mut out)
        {
            Ok(()) => print(&out),
            Err(e) => {
                eprintln!("loongd: rendering the manual page: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.default_config {
        return print(loongd::config::DEFAULT_CONFIG_TEXT.as_bytes());
    }
    // Taken while loongd has one thread, and out of the environment its children inherit.
    let notify = match loongd::notify::Notifier::take_from_env() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("loongd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let layout = match Layout::resolve(args.home.as_deref(), args.system) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("loongd: {e}");
            return ExitCode::from(2);
        }
    };
    let foreground = args.foreground;
    let logging = std::cell::Cell::new(false);
    let opts = loongd::Options {
        layout,
        foreground,
        accept_audit_integrity_failure: args.accept_audit_integrity_failure,
        notify,
    };
    let init_log = |level: &str| {
        log::init(level, foreground);
        logging.set(true);
    };
    match loongd::run(opts, init_log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if logging.get() {
                tracing::error!("{e:#}");
            } else {
                eprintln!("loongd: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
