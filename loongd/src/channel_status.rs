//! What each channel's worker last reported about its platform (a `409 Conflict`, a
//! failure), kept in memory for `channels status` and `doctor`: the state of a poller now,
//! not a record (the audit trail has those).

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

/// The most characters of a reported message kept.
pub const MAX_REPORT_CHARS: usize = 500;

/// A channel's last report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollStatus {
    /// The last 409's description with what to do, while polls keep conflicting.
    pub conflict: Option<String>,
    /// The last failure, while polls keep failing.
    pub last_error: Option<String>,
}

static STATUS: Mutex<BTreeMap<String, PollStatus>> = Mutex::new(BTreeMap::new());

fn cut(s: Option<String>) -> Option<String> {
    s.map(|s| s.chars().take(MAX_REPORT_CHARS).collect())
}

/// Records the channel's report (cut to [`MAX_REPORT_CHARS`]).
pub fn report(channel: &str, status: PollStatus) {
    let status = PollStatus {
        conflict: cut(status.conflict),
        last_error: cut(status.last_error),
    };
    STATUS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(channel.to_owned(), status);
}

/// The channel's last report (none yet: all clear).
pub fn get(channel: &str) -> PollStatus {
    STATUS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(channel)
        .cloned()
        .unwrap_or_default()
}

/// Forgets a removed channel.
pub fn forget(channel: &str) {
    STATUS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(channel);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_kept_cut_and_forgotten() {
        report(
            "t1",
            PollStatus {
                conflict: Some("x".repeat(MAX_REPORT_CHARS + 10)),
                last_error: None,
            },
        );
        assert_eq!(
            get("t1").conflict.map(|c| c.chars().count()),
            Some(MAX_REPORT_CHARS)
        );
        assert_eq!(get("other"), PollStatus::default());
        forget("t1");
        assert_eq!(get("t1"), PollStatus::default());
    }
}
