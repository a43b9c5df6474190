//! Who may use the control socket: loongd's own uid, root, and members of the configured
//! group, as SO_PEERCRED reports the connecting process.

use nix::unistd::{Gid, Uid};
use tokio::net::unix::UCred;

/// Whether the peer described by `cred` may use the control socket.
pub(crate) fn allowed(cred: &UCred, group: Option<Gid>) -> bool {
    let uid = cred.uid();
    if uid == 0 || uid == Uid::effective().as_raw() {
        return true;
    }
    let Some(gid) = group else { return false };
    if cred.gid() == gid.as_raw() {
        return true;
    }
    cred.pid()
        .is_some_and(|pid| supplementary_groups(pid).contains(&gid.as_raw()))
}

/// The supplementary groups of `pid`, read from `/proc/PID/status`; empty when unreadable.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
