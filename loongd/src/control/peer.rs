//! Who may use the control socket: loongd's own uid, root, and members of the configured
//! group, as SO_PEERCRED and SO_PEERGROUPS report the connecting process. Checked right after `accept`, so a
//! refused peer never holds a connection slot, a task or the handshake timer; the last
//! [`OPERATOR_RESERVE`] slots are kept for root and loongd's uid, so members of the group
//! cannot lock the operator out either.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

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

/// The class of the peer described by `cred` and `groups`, its supplementary groups, both as
/// the kernel recorded them when it connected (SO_PEERCRED, SO_PEERGROUPS): never read from
/// `/proc/PID`, which describes whatever process holds that pid by the time of `accept`.
pub(crate) fn classify(cred: &UCred, groups: &[u32], group: Option<Gid>) -> Class {
    let uid = cred.uid();
    if uid == 0 || uid == Uid::effective().as_raw() {
        return Class::Operator;
    }
    let Some(gid) = group else {
        return Class::Refused;
    };
    let member = cred.gid() == gid.as_raw() || groups.contains(&gid.as_raw());
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

/// Refusals recorded one record each per [`REFUSAL_WINDOW`]; past them, a window's
/// refusals are counted per uid and recorded as one record each when the window ends, so a
/// local account that floods the socket grows neither the trail nor loongd's tasks.
pub const REFUSALS_RECORDED_PER_WINDOW: u32 = 16;
/// How long a window of refusals lasts.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// Distinct uids counted by name in one window; refusals from any further uid are counted
/// together (uids are few on a host, but a user namespace can present many).
pub const MAX_COUNTED_UIDS: usize = 64;

/// Refusals counted, not yet recorded, for one uid (or for the uids past the cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counted {
    refusals: u64,
    first_conn: u64,
    last_conn: u64,
}

/// The refusals of the current window: how many were recorded one by one, and the rest.
#[derive(Debug)]
pub(crate) struct Refusals {
    window_start: Instant,
    recorded: u32,
    counted: BTreeMap<u32, Counted>,
    beyond: Option<Counted>,
}

impl Refusals {
    pub(crate) fn new(now: Instant) -> Refusals {
        Refusals {
            window_start: now,
            recorded: 0,
            counted: BTreeMap::new(),
            beyond: None,
        }
    }

    /// Notes that the peer `uid` (process `pid`) was refused on connection `conn` at `now`;
    /// returns the records to write now (the last window's counts, if it ended, and this
    /// refusal unless it is counted) and whether this refusal is among them.
    pub(crate) fn refused(
        &mut self,
        now: Instant,
        conn: u64,
        uid: u32,
        pid: Option<i32>,
    ) -> (Vec<audit::Event>, bool) {
        let mut out = self.roll(now);
        if self.recorded < REFUSALS_RECORDED_PER_WINDOW {
            self.recorded += 1;
            out.push(audit::Event {
                kind: audit::Kind::PeerRefused,
                actor: format!("uid:{uid}").into(),
                correlation: format!("conn-{conn}").into(),
                detail: serde_json::json!({ "conn": conn, "uid": uid, "pid": pid }).into(),
            });
            return (out, true);
        }
        let fresh = Counted {
            refusals: 0,
            first_conn: conn,
            last_conn: conn,
        };
        let slot = if self.counted.contains_key(&uid) || self.counted.len() < MAX_COUNTED_UIDS {
            self.counted.entry(uid).or_insert(fresh)
        } else {
            self.beyond.get_or_insert(fresh)
        };
        slot.refusals += 1;
        slot.last_conn = conn;
        (out, false)
    }

    /// The records of the window, if it ended by `now` (a new one starts then).
    pub(crate) fn roll(&mut self, now: Instant) -> Vec<audit::Event> {
        if now.duration_since(self.window_start) < REFUSAL_WINDOW {
            return Vec::new();
        }
        self.window_start = now;
        self.recorded = 0;
        self.drain()
    }

    /// The records of everything counted so far (at shutdown, or when a window ends).
    pub(crate) fn drain(&mut self) -> Vec<audit::Event> {
        let secs = REFUSAL_WINDOW.as_secs();
        let mut out: Vec<audit::Event> = std::mem::take(&mut self.counted)
            .into_iter()
            .map(|(uid, c)| audit::Event {
                kind: audit::Kind::PeerRefused,
                actor: format!("uid:{uid}").into(),
                correlation: format!("conn-{}", c.first_conn).into(),
                detail: serde_json::json!({
                    "uid": uid,
                    "refusals": c.refusals,
                    "first_conn": c.first_conn,
                    "last_conn": c.last_conn,
                    "counted_over_secs": secs,
                })
                .into(),
            })
            .collect();
        if let Some(c) = self.beyond.take() {
            out.push(audit::Event {
                kind: audit::Kind::PeerRefused,
                actor: "uids:uncounted".into(),
                correlation: format!("conn-{}", c.first_conn).into(),
                detail: serde_json::json!({
                    "uid": null,
                    "refusals": c.refusals,
                    "first_conn": c.first_conn,
                    "last_conn": c.last_conn,
                    "counted_over_secs": secs,
                    "why": format!("more than {MAX_COUNTED_UIDS} uids were refused in one window"),
                })
                .into(),
            });
        }
        out
    }
}

/// Writes `events` to the audit trail (in a task of its own: the accept loop never waits
/// for the writer).
pub(crate) async fn record(kernel: Arc<Kernel>, events: Vec<audit::Event>) {
    for event in events {
        kernel.audit.record_later(event).await;
    }
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

    #[test]
    fn a_flood_of_refusals_is_counted_not_recorded_one_by_one() {
        let start = Instant::now();
        let mut r = Refusals::new(start);
        let mut one_by_one = 0;
        let mut written = 0;
        // Ten thousand refusals from one uid, and a few from many others, in one window.
        for conn in 0..10_000u64 {
            let (events, single) = r.refused(start, conn, 65534, Some(7));
            one_by_one += usize::from(single);
            written += events.len();
        }
        for uid in 0..(MAX_COUNTED_UIDS as u32 + 10) {
            written += r
                .refused(start, 20_000 + u64::from(uid), 1000 + uid, None)
                .0
                .len();
        }
        assert_eq!(one_by_one, REFUSALS_RECORDED_PER_WINDOW as usize);
        assert_eq!(written, REFUSALS_RECORDED_PER_WINDOW as usize);
        // The window ends: one record per counted uid, and one for the uids past the cap.
        let (events, single) = r.refused(start + REFUSAL_WINDOW, 30_000, 65534, None);
        assert!(single, "a new window records again");
        let counted = &events[..events.len() - 1];
        assert_eq!(counted.len(), MAX_COUNTED_UIDS + 1, "{counted:?}");
        let flood = counted
            .iter()
            .find(|e| &*e.actor == "uid:65534")
            .expect("the flooding uid is named");
        let refusals = 10_000 - u64::from(REFUSALS_RECORDED_PER_WINDOW);
        assert_eq!(flood.detail.value()["refusals"], refusals);
        assert_eq!(
            flood.detail.value()["first_conn"],
            u64::from(REFUSALS_RECORDED_PER_WINDOW)
        );
        assert_eq!(flood.detail.value()["last_conn"], 9_999);
        let beyond = counted.last().expect("beyond");
        assert_eq!(&*beyond.actor, "uids:uncounted");
        assert_eq!(beyond.detail.value()["refusals"], 11);
        assert!(counted.iter().all(|e| e.kind == audit::Kind::PeerRefused));
        // What is counted at shutdown is recorded too.
        assert!(r.drain().is_empty());
        // This window recorded conn 30000 already: 15 more one by one, then 3 counted.
        for conn in 0..(u64::from(REFUSALS_RECORDED_PER_WINDOW) + 2) {
            r.refused(start + REFUSAL_WINDOW, 40_000 + conn, 65534, None);
        }
        let last = r.drain();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].detail.value()["refusals"], 3);
    }
}
