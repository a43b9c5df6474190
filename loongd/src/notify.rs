//! The service manager's readiness protocol (`sd_notify`), written by hand: one datagram of
//! `KEY=VALUE` lines to the socket named by `NOTIFY_SOCKET` (a path, or an abstract name
//! written with a leading `@`). It is a dozen lines over `std`'s Unix datagram socket, so no
//! crate (and none of libsystemd) is linked for it.
//!
//! loongd sends `READY=1` once its control socket answers, `STOPPING=1` when shutdown begins,
//! and `WATCHDOG=1` at half the interval the manager gives in `WATCHDOG_USEC` (for this
//! process only, when `WATCHDOG_PID` names another, as the protocol says). The variables are
//! taken out of the environment at start, so no worker or helper inherits them.

use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    time::Duration,
};

/// The variable naming the manager's socket.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// The watchdog interval in microseconds.
pub const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
/// The process the watchdog interval is meant for.
pub const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";
/// The shortest watchdog interval honoured; a shorter one is raised to it (a keep-alive more
/// often than every 50 ms would be busy work, not supervision).
pub const MIN_WATCHDOG: Duration = Duration::from_millis(100);

/// Why the manager's socket cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is neither an absolute path nor an `@` abstract name.
    #[error("NOTIFY_SOCKET `{0}` is neither an absolute path nor an @abstract name; unset it or fix the unit")]
    BadAddress(String),
    /// `WATCHDOG_USEC` is not a positive number of microseconds.
    #[error(
        "WATCHDOG_USEC `{0}` is not a positive number of microseconds; unset it or fix WatchdogSec"
    )]
    BadWatchdog(String),
    /// The socket address could not be formed (too long, or a NUL inside).
    #[error("NOTIFY_SOCKET `{name}` is not a usable socket address: {source}")]
    Address {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where to send notifications, and how often to keep the watchdog fed.
#[derive(Debug, Clone)]
pub struct Notifier {
    addr: SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Takes the protocol's variables out of the environment (call it while loongd still has
    /// one thread) and returns the notifier they describe, or `None` outside a service
    /// manager.
    pub fn take_from_env() -> Result<Option<Notifier>, NotifyError> {
        let socket = std::env::var(NOTIFY_SOCKET_ENV).ok();
        let usec = std::env::var(WATCHDOG_USEC_ENV).ok();
        let pid = std::env::var(WATCHDOG_PID_ENV).ok();
        for k in [NOTIFY_SOCKET_ENV, WATCHDOG_USEC_ENV, WATCHDOG_PID_ENV] {
            std::env::remove_var(k);
        }
        Notifier::from_vars(
            socket.as_deref(),
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
        )
    }

    /// [`take_from_env`](Self::take_from_env) with the variables given, for tests.
    pub fn from_vars(
        socket: Option<&str>,
        usec: Option<&str>,
        pid: Option<&str>,
        own_pid: u32,
    ) -> Result<Option<Notifier>, NotifyError> {
        let Some(name) = socket.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let addr = address(name)?;
        // The interval is for the process WATCHDOG_PID names, when it names one.
        let ours = pid.is_none_or(|p| p.trim() == own_pid.to_string());
        let watchdog = match usec.filter(|_| ours) {
            None => None,
            Some(u) => match u.trim().parse::<u64>() {
                Ok(n) if n > 0 => Some(Duration::from_micros(n).max(MIN_WATCHDOG)),
                _ => return Err(NotifyError::BadWatchdog(u.to_string())),
            },
        };
        Ok(Some(Notifier { addr, watchdog }))
    }

    /// The watchdog interval the manager asked for, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (`KEY=VALUE` lines) in one datagram.
    pub fn send(&self, state: &str) -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &self.addr)?;
        Ok(())
    }

    /// Sends `state`, logging (never failing) when the manager cannot be reached: a lost
    /// notification shows in the manager's own state, and is no reason to stop.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.send(state) {
            tracing::warn!(error = %e, state, "could not notify the service manager");
        }
    }
}

fn address(name: &str) -> Result<SocketAddr, NotifyError> {
    let formed = if let Some(abstract_name) = name.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(abstract_name.as_bytes())
    } else if name.starts_with('/') {
        SocketAddr::from_pathname(name)
    } else {
        return Err(NotifyError::BadAddress(name.to_string()));
    };
    formed.map_err(|source| NotifyError::Address {
        name: name.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(s: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = s.recv(&mut buf).expect("recv");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn path_and_abstract_names_receive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let s = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::from_vars(path.to_str(), None, None, 1)
            .expect("valid")
            .expect("set");
        n.send("READY=1").expect("send");
        assert_eq!(recv(&s), "READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("loong-notify-test-{}", std::process::id());
        let a = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract");
        let s = UnixDatagram::bind_addr(&a).expect("bind abstract");
        let n = Notifier::from_vars(Some(&format!("@{name}")), None, None, 1)
            .expect("valid")
            .expect("set");
        n.send("STOPPING=1").expect("send");
        assert_eq!(recv(&s), "STOPPING=1");
    }

    #[test]
    fn variables_are_checked() {
        assert!(Notifier::from_vars(None, Some("1000000"), None, 1)
            .expect("unset")
            .is_none());
        assert!(Notifier::from_vars(Some(""), None, None, 1)
            .expect("empty")
            .is_none());
        assert!(matches!(
            Notifier::from_vars(Some("relative/sock"), None, None, 1),
            Err(NotifyError::BadAddress(_))
        ));
        assert!(matches!(
            Notifier::from_vars(Some("/run/x"), Some("soon"), None, 1),
            Err(NotifyError::BadWatchdog(_))
        ));
        assert!(matches!(
            Notifier::from_vars(Some("/run/x"), Some("0"), None, 1),
            Err(NotifyError::BadWatchdog(_))
        ));
        let n = |usec, pid| {
            Notifier::from_vars(Some("/run/x"), usec, pid, 42)
                .expect("valid")
                .expect("set")
                .watchdog()
        };
        assert_eq!(n(Some("2000000"), None), Some(Duration::from_secs(2)));
        assert_eq!(n(Some("2000000"), Some("42")), Some(Duration::from_secs(2)));
        // Meant for another process: not ours to feed.
        assert_eq!(n(Some("2000000"), Some("43")), None);
        // Raised to the floor.
        assert_eq!(n(Some("10"), None), Some(MIN_WATCHDOG));
    }
}
