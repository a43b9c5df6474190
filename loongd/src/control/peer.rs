//! Who may use the control socket: loongd's own uid, root, and members of the configured
//! group, as SO_PEERCRED reports the connecting process. Checked right after `accept`, so a
//! refused peer never holds a connection slot, a task or the handshake timer; the last
//! [`OPERATOR_RESERVE`] slots are kept for root and loongd's uid, so members of the group
//! cannot lock the operator out either.

use std::sync::Arc;

use nix::unistd::{Gid, Uid};
use tokio::net::unix::UCred;

use crate::{audit, Kernel};

/// Connection slots only root and loongd's own uid may take (at most half of
/// `control.max_clients`, so a small limit still serves the group).
pub const OPERATOR_RESERVE: u32 = 16;

/// What the peer's credentials make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Root or loongd's own uid: may take every slot.
    Operator,
    /// A member of `control.allowed_group`: may take the slots outside the reserve.
    Member,
    /// Anyone else: refused at accept.
    Refused,
}

/// The class of the peer described by `cred`.
pub(crate) fn classify(cred: &UCred, group: Option<Gid>) -> Class {
    let uid = cred.uid();
    if uid == 0 || uid == Uid::effective().as_raw() {
        return Class::Operator;
    }
    let Some(gid) = group else {
        return Class::Refused;
    };
    let member = cred.gid() == gid.as_raw()
        || cred
            .pid()
            .is_some_and(|pid| supplementary_groups(pid).contains(&gid.as_raw()));
    if member {
        Class::Member
    } else {
        Class::Refused
    }
}

/// How many connections may be open when a peer of `class` is admitted, of `max` in all.
pub(crate) fn slot_limit(class: Class, max: u32) -> u32 {
    match class {
        Class::Operator => max,
        Class::Member => max - OPERATOR_RESERVE.min(max / 2),
        Class::Refused => 0,
    }
}

/// Records that the peer `cred` was refused on connection `conn`.
pub(crate) async fn audit_refusal(kernel: Arc<Kernel>, conn: u64, cred: UCred) {
    let uid = cred.uid();
    let detail = serde_json::json!({ "conn": conn, "uid": uid, "pid": cred.pid() });
    kernel
        .audit
        .record_later(audit::Event {
            kind: audit::Kind::PeerRefused,
            actor: format!("uid:{uid}"),
            correlation: format!("conn-{conn}"),
            detail,
        })
        .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_kept_for_the_operator() {
        assert_eq!(slot_limit(Class::Operator, 256), 256);
        assert_eq!(slot_limit(Class::Member, 256), 256 - OPERATOR_RESERVE);
        // A small limit keeps half for the operator, and the group still gets in.
        assert_eq!(slot_limit(Class::Member, 2), 1);
        assert_eq!(slot_limit(Class::Member, 1), 1);
        assert_eq!(slot_limit(Class::Refused, 256), 0);
    }
}
