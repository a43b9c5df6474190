//! Exponential back-off between failing polls: doubled each failure, capped, reset by a
//! success. A failing poll always waits at least the first step: never a hot loop.

use std::time::Duration;

/// The state of one poller's back-off.
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    cap: Duration,
    next: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `start`, doubles up to `cap` (a zero `start` is taken as one millisecond).
    pub fn new(start: Duration, cap: Duration) -> Self {
        let start = start.max(Duration::from_millis(1));
        let cap = cap.max(start);
        Self {
            start,
            cap,
            next: start,
            failures: 0,
        }
    }

    /// A failure: the wait before the next attempt (at least `floor`, as a platform's
    /// `retry_after`, clamped to the cap's bound by the caller).
    pub fn fail(&mut self, floor: Option<Duration>) -> Duration {
        let wait = self.next.max(floor.unwrap_or_default());
        self.next = self.next.saturating_mul(2).min(self.cap);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// A success: the next failure waits the first step again.
    pub fn succeed(&mut self) {
        self.next = self.start;
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The waits after failed platform calls: the platform's back-off, and a shorter one of its
/// own for the egress broker's rate refusals (the broker's bucket refills in milliseconds;
/// the platform's step is seconds). Each doubles while its failures last; a success resets
/// both.
#[derive(Debug, Clone)]
pub struct Waits {
    platform: Backoff,
    broker: Backoff,
}

impl Waits {
    /// The platform's back-off from `start` to `cap`; the broker's from
    /// [`crate::limits::BROKER_RETRY_START`] to `cap`.
    pub fn new(start: Duration, cap: Duration) -> Self {
        Self {
            platform: Backoff::new(start, cap),
            broker: Backoff::new(crate::limits::BROKER_RETRY_START.min(start), cap),
        }
    }

    /// A failure: the wait before the next attempt.
    pub fn fail(&mut self, e: &crate::error::ChannelError) -> Duration {
        if e.is_broker_refusal() {
            self.broker.fail(None)
        } else {
            self.platform.fail(e.retry_after())
        }
    }

    /// A failed kernel call (not the platform's): the platform's back-off.
    pub fn fail_kernel(&mut self) -> Duration {
        self.platform.fail(None)
    }

    /// A success: both back-offs start again.
    pub fn succeed(&mut self) {
        self.platform.succeed();
        self.broker.succeed();
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.platform
            .failures()
            .saturating_add(self.broker.failures())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(10));
        let waits: Vec<u64> = (0..5).map(|_| b.fail(None).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 10, 10]);
        assert_eq!(b.failures(), 5);
        b.succeed();
        assert_eq!(b.fail(None).as_secs(), 2);
        // A platform's retry_after is a floor.
        assert_eq!(b.fail(Some(Duration::from_secs(7))).as_secs(), 7);
    }

    #[test]
    fn a_zero_start_still_waits() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(b.fail(None) >= Duration::from_millis(1));
    }

    #[test]
    fn thirty_seconds_of_conflict_is_few_polls() {
        // The default steps: polls at 0, 2, 6, 14, 30 s: five in thirty seconds.
        let mut b = Backoff::new(crate::limits::BACKOFF_START, crate::limits::BACKOFF_CAP);
        let (mut t, mut polls) = (Duration::ZERO, 0);
        while t < Duration::from_secs(30) {
            polls += 1;
            t += b.fail(None);
        }
        assert!(polls < 10, "{polls} polls");
    }

    #[test]
    fn the_brokers_refusals_have_their_own_short_steps_and_a_success_resets_both() {
        use crate::error::ChannelError;
        use crate::limits::{BACKOFF_CAP, BACKOFF_START, BROKER_RETRY_START};
        let broker = ChannelError::BrokerRefused {
            method: "getUpdates",
        };
        let platform = ChannelError::RateLimited {
            method: "getUpdates",
            retry_after: Duration::from_secs(3),
        };
        let mut w = Waits::new(BACKOFF_START, BACKOFF_CAP);
        assert_eq!(w.fail(&broker), BROKER_RETRY_START);
        assert_eq!(w.fail(&broker), BROKER_RETRY_START * 2);
        // The platform's back-off is its own: its first step, at least its retry_after.
        assert_eq!(w.fail(&platform), Duration::from_secs(3));
        assert_eq!(w.failures(), 3);
        w.succeed();
        assert_eq!(w.failures(), 0);
        assert_eq!(w.fail(&broker), BROKER_RETRY_START);
        assert_eq!(w.fail_kernel(), BACKOFF_START);
    }
}
