//! `loongctl daemon start [--foreground] | stop | status`.

use std::{
    fs::{self, OpenOptions},
    os::unix::{fs::OpenOptionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context};
use clap::Subcommand;
use loong_ipc::{paths::Layout, ControlRequest, ControlResponse};

use super::status::{fetch, human_duration};
use crate::{connect, exit, text::Esc, Failure, REQUEST_DEADLINE};

/// How long `daemon start` waits for a new daemon to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `daemon stop` waits for the daemon to exit.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Interval between readiness checks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Lines of the daemon's log shown when it fails to start.
pub const LOG_TAIL_LINES: usize = 15;

/// `loongctl daemon …`.
#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Start loongd for the chosen home unless it runs already, and wait until it answers.
    Start {
        /// Run loongd in this terminal instead of in the background.
        #[arg(long)]
        foreground: bool,
        /// Start loongd even when its audit trail fails the start-up check; the trail records
        /// `audit.integrity_failed` naming the first bad record.
        #[arg(long)]
        accept_audit_integrity_failure: bool,
    },
    /// Ask loongd to shut down gracefully and wait until it has exited (no daemon: exit 0).
    Stop,
    /// Say whether loongd is running (exit 3 when it is not).
    Status,
}

pub(crate) fn run(layout: &Layout, cmd: DaemonCommand) -> Result<u8, Failure> {
    match cmd {
        DaemonCommand::Start {
            foreground,
            accept_audit_integrity_failure,
        } => start(layout, foreground, accept_audit_integrity_failure),
        DaemonCommand::Stop => stop(layout),
        DaemonCommand::Status => {
            let s = fetch(layout)?;
            println!(
                "loongd is running (pid {}, up {}, home {})",
                s.pid,
                human_duration(s.uptime_ms),
                Esc(&s.home)
            );
            Ok(exit::OK)
        }
    }
}

fn home_args(layout: &Layout) -> Vec<std::ffi::OsString> {
    if layout == &Layout::system() {
        vec!["--system".into()]
    } else {
        vec!["--home".into(), layout.home.clone().into_os_string()]
    }
}

pub(crate) fn start(
    layout: &Layout,
    foreground: bool,
    accept_failure: bool,
) -> Result<u8, Failure> {
    if let Ok(s) = fetch(layout) {
        println!(
            "loongd is already running (pid {}, home {})",
            s.pid,
            Esc(&s.home)
        );
        return Ok(exit::OK);
    }
    let loongd = find_loongd()?;
    let mut cmd = Command::new(&loongd);
    cmd.args(home_args(layout));
    if accept_failure {
        cmd.arg("--accept-audit-integrity-failure");
    }
    if foreground {
        cmd.arg("--foreground");
        // exec only returns on failure.
        let e = cmd.exec();
        return Err(anyhow!("cannot run {}: {e}", loongd.display()).into());
    }
    let log_dir = layout.log_file.parent().unwrap_or(&layout.home);
    fs::DirBuilder::new()
        .recursive(true)
        .create(log_dir)
        .with_context(|| format!("creating the log directory {}", log_dir.display()))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&layout.log_file)
        .with_context(|| format!("opening the daemon log {}", layout.log_file.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file handle")?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", loongd.display()))?;
    let until = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(s) = fetch(layout) {
            println!(
                "loongd started (pid {}, socket {})",
                s.pid,
                Esc(&s.socket_path)
            );
            return Ok(exit::OK);
        }
        if let Some(status) = child.try_wait().context("waiting for loongd")? {
            return Err(anyhow!(
                "loongd exited ({status}) before answering; the end of {}:\n{}",
                layout.log_file.display(),
                log_tail(&layout.log_file)
            )
            .into());
        }
        if Instant::now() > until {
            return Err(anyhow!(
                "loongd (pid {}) did not answer within {:?}; see {}",
                child.id(),
                START_TIMEOUT,
                layout.log_file.display()
            )
            .into());
        }
        thread::sleep(POLL_INTERVAL);
    }
}

pub(crate) fn stop(layout: &Layout) -> Result<u8, Failure> {
    let pid = match fetch(layout) {
        Ok(s) => s.pid,
        Err(f) if f.code == exit::DAEMON_NOT_RUNNING => {
            println!("loongd is not running for home {}", layout.home.display());
            return Ok(exit::OK);
        }
        Err(f) => return Err(f),
    };
    let mut client = connect(layout)?;
    match client.call::<_, ControlResponse>(ControlRequest::Shutdown, REQUEST_DEADLINE)? {
        ControlResponse::ShuttingDown => {}
        other => return Err(anyhow!("unexpected answer to shutdown: {other:?}").into()),
    }
    drop(client);
    let until = Instant::now() + STOP_TIMEOUT;
    while process_alive(pid) {
        if Instant::now() > until {
            return Err(anyhow!(
                "loongd (pid {pid}) is still running {STOP_TIMEOUT:?} after being asked to stop"
            )
            .into());
        }
        thread::sleep(POLL_INTERVAL);
    }
    println!("loongd stopped (pid {pid})");
    Ok(exit::OK)
}

/// Whether `pid` names a live (not zombie) process.
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// loongd next to this executable, else on PATH.
fn find_loongd() -> Result<PathBuf, Failure> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("loongd")));
    if let Some(p) = beside.filter(|p| is_executable(p)) {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("loongd"))
        .find(|p| is_executable(p))
    {
        return Ok(p);
    }
    Err(anyhow!(
        "cannot find the loongd executable next to loongctl or on PATH; install it beside loongctl"
    )
    .into())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
