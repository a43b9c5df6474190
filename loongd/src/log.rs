//! Where loongd's log goes: to the journal, with structured fields, when its stderr is the
//! journal's stream (systemd sets `JOURNAL_STREAM` to that stream's `DEVICE:INODE`); to stderr
//! otherwise (a terminal, or the file `loongctl daemon start` points a detached daemon's
//! stderr at). `LOONG_LOG`, else the configuration's `log.level`, filters either way.
//!
//! In the journal every field of an event keeps its name, upper-cased under the `LOONG_`
//! prefix: `LOONG_KIND`, `LOONG_CORRELATION`, `LOONG_PLUGIN`, `LOONG_WORKER_PID`, … so
//! `journalctl -u loongd LOONG_PLUGIN=echo` selects one plugin's lines.

use std::os::fd::AsRawFd;

use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, Layer};

/// The variable naming the filter, over `log.level`.
pub const LOG_ENV: &str = "LOONG_LOG";
/// The variable systemd sets when stderr is connected to the journal.
pub const JOURNAL_STREAM_ENV: &str = "JOURNAL_STREAM";
/// The prefix of every structured field loongd sends to the journal.
pub const FIELD_PREFIX: &str = "LOONG";
/// The journal's syslog identifier for loongd's lines.
pub const IDENTIFIER: &str = "loongd";

/// Installs the subscriber; `level` is the configuration's `log.level`.
pub fn init(level: &str, terminal: bool) {
    let filter = std::env::var(LOG_ENV)
        .ok()
        .unwrap_or_else(|| level.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("loongd: log filter `{filter}` is invalid ({e}); using `info`");
        tracing_subscriber::EnvFilter::new("info")
    });
    let journal = if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(l) => Some(
                l.with_field_prefix(Some(FIELD_PREFIX.into()))
                    .with_syslog_identifier(IDENTIFIER.into()),
            ),
            Err(e) => {
                eprintln!("loongd: the journal's socket cannot be opened ({e}); logging to stderr");
                None
            }
        }
    } else {
        None
    };
    let registry = tracing_subscriber::registry();
    match journal {
        Some(j) => registry.with(j.with_filter(filter)).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(terminal)
                    .with_filter(filter),
            )
            .init(),
    }
}

/// Whether stderr is the stream `JOURNAL_STREAM` names (not merely whether the variable is
/// set: a child of a service that redirected its stderr inherits the variable too).
fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var(JOURNAL_STREAM_ENV) else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}
