//! A connector's circuit breaker, upstream's state machine
//! (`crates/spec/src/spec_runtime/connector_circuit.rs`) with one change.
//!
//! Closed: calls pass; `failure_threshold` consecutive failures open it. Open: calls are
//! refused until `cooldown_ms` has passed, then it is half-open. Half-open: up to
//! `half_open_max_calls` probes are admitted; `success_threshold` successes close it, one
//! failure opens it again for another cooldown.
//!
//! The change: upstream re-opens a half-open circuit when a call arrives after every probe
//! slot is taken, which throws away the probes still in flight (and, with as many probes as
//! successes needed, can keep the circuit from ever closing under concurrency). Here such a
//! call is refused and the circuit stays half-open until its probes report. A probe whose
//! outcome says nothing about the connector ([`BreakerOutcome::Neutral`]) gives its slot
//! back.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::{kernel::BreakerOutcome, plan::BreakerPolicy};

/// A breaker's phase, as telemetry shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The connector has no breaker (or its policy is disabled).
    #[default]
    Disabled,
    Closed,
    Open,
    HalfOpen,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Open, with this much cooldown left.
    Open { remaining_cooldown_ms: u64 },
    /// Half-open, with every probe slot taken.
    ProbesInFlight,
}

/// The state of one connector's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    policy: BreakerPolicy,
    phase: Phase,
    consecutive_failures: usize,
    open_until: Option<Instant>,
    probes_left: usize,
    probe_successes: usize,
}

impl Breaker {
    /// A closed breaker (disabled when the policy is).
    pub fn new(policy: BreakerPolicy) -> Breaker {
        Breaker {
            policy,
            phase: if policy.enabled {
                Phase::Closed
            } else {
                Phase::Disabled
            },
            consecutive_failures: 0,
            open_until: None,
            probes_left: 0,
            probe_successes: 0,
        }
    }

    /// The phase now (without moving an elapsed cooldown on: that happens at
    /// [`Breaker::acquire`]).
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Admits a call or refuses it; the phase returned is the one the call runs under.
    pub fn acquire(&mut self, now: Instant) -> Result<Phase, Refusal> {
        if self.phase == Phase::Open {
            let until = self.open_until.unwrap_or(now);
            if until > now {
                return Err(Refusal::Open {
                    remaining_cooldown_ms: millis(until.saturating_duration_since(now)),
                });
            }
            self.phase = Phase::HalfOpen;
            self.open_until = None;
            self.probes_left = self.policy.half_open_max_calls;
            self.probe_successes = 0;
        }
        if self.phase == Phase::HalfOpen {
            if self.probes_left == 0 {
                return Err(Refusal::ProbesInFlight);
            }
            self.probes_left -= 1;
        }
        Ok(self.phase)
    }

    /// Records the outcome of a call [`Breaker::acquire`] admitted; returns the phase after.
    pub fn record(&mut self, outcome: BreakerOutcome, now: Instant) -> Phase {
        match (self.phase, outcome) {
            (Phase::Disabled | Phase::Open, _) => {}
            (Phase::Closed, BreakerOutcome::Success) => self.consecutive_failures = 0,
            (Phase::Closed, BreakerOutcome::Neutral) => {}
            (Phase::Closed, BreakerOutcome::Failure) => {
                self.consecutive_failures += 1;
                if self.consecutive_failures >= self.policy.failure_threshold {
                    self.open(now);
                }
            }
            (Phase::HalfOpen, BreakerOutcome::Success) => {
                self.probe_successes += 1;
                if self.probe_successes >= self.policy.success_threshold {
                    self.phase = Phase::Closed;
                    self.consecutive_failures = 0;
                    self.probes_left = 0;
                    self.probe_successes = 0;
                }
            }
            (Phase::HalfOpen, BreakerOutcome::Neutral) => {
                self.probes_left = (self.probes_left + 1).min(self.policy.half_open_max_calls);
            }
            (Phase::HalfOpen, BreakerOutcome::Failure) => self.open(now),
        }
        self.phase
    }

    fn open(&mut self, now: Instant) {
        self.phase = Phase::Open;
        self.open_until = Some(now + Duration::from_millis(self.policy.cooldown_ms));
        self.consecutive_failures = 0;
        self.probes_left = 0;
        self.probe_successes = 0;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(
        failure_threshold: usize,
        cooldown_ms: u64,
        probes: usize,
        successes: usize,
    ) -> BreakerPolicy {
        BreakerPolicy {
            enabled: true,
            failure_threshold,
            cooldown_ms,
            half_open_max_calls: probes,
            success_threshold: successes,
        }
    }

    /// Upstream: `acquire_connector_circuit_slot_transitions_open_circuits_into_half_open_probes`
    /// (spec crate) asserts phase "half_open", one probe slot left of two, no open_until.
    #[test]
    fn an_open_circuit_whose_cooldown_passed_admits_a_half_open_probe() {
        let now = Instant::now();
        let mut b = Breaker::new(policy(1, 50, 2, 1));
        b.acquire(now).ok();
        b.record(BreakerOutcome::Failure, now);
        assert_eq!(b.phase(), Phase::Open);
        let later = now + Duration::from_millis(50);
        assert_eq!(b.acquire(later), Ok(Phase::HalfOpen));
        assert_eq!(b.probes_left, 1);
        assert_eq!(b.probe_successes, 0);
        assert_eq!(b.open_until, None);
    }

    /// Upstream: `record_connector_circuit_outcome_reopens_half_open_state_after_failed_probe`
    /// asserts "open", no probe slots, no successes, an open_until.
    #[test]
    fn a_failed_probe_opens_the_circuit_again() {
        let now = Instant::now();
        let mut b = Breaker::new(policy(1, 25, 2, 2));
        b.acquire(now).ok();
        b.record(BreakerOutcome::Failure, now);
        let later = now + Duration::from_millis(25);
        b.acquire(later).ok();
        b.record(BreakerOutcome::Success, later);
        assert_eq!(b.phase(), Phase::HalfOpen, "one success of two");
        b.acquire(later).ok();
        assert_eq!(b.record(BreakerOutcome::Failure, later), Phase::Open);
        assert_eq!(b.probes_left, 0);
        assert_eq!(b.probe_successes, 0);
        assert_eq!(
            b.acquire(later),
            Err(Refusal::Open {
                remaining_cooldown_ms: 25
            })
        );
    }

    /// Upstream: `programmatic_circuit_runtime_transitions_open_half_open_and_closes_on_success`
    /// (daemon integration) asserts closed → open → refused → half_open → closed → closed.
    #[test]
    fn closed_opens_refuses_half_opens_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy(1, 15, 1, 1));
        assert_eq!(b.acquire(t0), Ok(Phase::Closed));
        assert_eq!(b.record(BreakerOutcome::Failure, t0), Phase::Open);
        assert!(matches!(b.acquire(t0), Err(Refusal::Open { .. })));
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(b.acquire(t1), Ok(Phase::HalfOpen));
        assert_eq!(b.record(BreakerOutcome::Success, t1), Phase::Closed);
        assert_eq!(b.acquire(t1), Ok(Phase::Closed));
    }

    #[test]
    fn only_consecutive_failures_open_it() {
        let t = Instant::now();
        let mut b = Breaker::new(policy(2, 10, 1, 1));
        for outcome in [
            BreakerOutcome::Failure,
            BreakerOutcome::Success,
            BreakerOutcome::Failure,
            BreakerOutcome::Neutral,
        ] {
            b.acquire(t).ok();
            assert_eq!(b.record(outcome, t), Phase::Closed, "{outcome:?}");
        }
        b.acquire(t).ok();
        assert_eq!(b.record(BreakerOutcome::Failure, t), Phase::Open);
    }

    /// The difference from upstream: a call that finds every probe slot taken is refused and
    /// the probes in flight still close the circuit.
    #[test]
    fn a_call_beyond_the_probe_slots_is_refused_without_reopening() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy(1, 10, 2, 2));
        b.acquire(t0).ok();
        b.record(BreakerOutcome::Failure, t0);
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(b.acquire(t1), Ok(Phase::HalfOpen));
        assert_eq!(b.acquire(t1), Ok(Phase::HalfOpen));
        assert_eq!(b.acquire(t1), Err(Refusal::ProbesInFlight));
        assert_eq!(b.record(BreakerOutcome::Success, t1), Phase::HalfOpen);
        assert_eq!(b.record(BreakerOutcome::Success, t1), Phase::Closed);
    }

    #[test]
    fn a_neutral_probe_gives_its_slot_back() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy(1, 10, 1, 1));
        b.acquire(t0).ok();
        b.record(BreakerOutcome::Failure, t0);
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(b.acquire(t1), Ok(Phase::HalfOpen));
        assert_eq!(b.acquire(t1), Err(Refusal::ProbesInFlight));
        assert_eq!(b.record(BreakerOutcome::Neutral, t1), Phase::HalfOpen);
        assert_eq!(b.acquire(t1), Ok(Phase::HalfOpen));
    }

    #[test]
    fn a_disabled_policy_never_refuses() {
        let t = Instant::now();
        let mut b = Breaker::new(BreakerPolicy {
            enabled: false,
            ..policy(1, 10, 1, 1)
        });
        for _ in 0..5 {
            assert_eq!(b.acquire(t), Ok(Phase::Disabled));
            assert_eq!(b.record(BreakerOutcome::Failure, t), Phase::Disabled);
        }
    }
}
