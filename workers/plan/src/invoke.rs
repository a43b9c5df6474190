//! One connector call with its resilience: the breaker is asked once, then each attempt
//! waits for the connector's rate-limit slot, makes one kernel call bounded by the run's
//! remaining wall time, and on a retryable failure backs off (exponentially, with jitter)
//! before the next attempt. The breaker hears the call's final outcome once, as upstream.

use std::{cell::RefCell, collections::BTreeMap, time::Duration};

use serde_json::Value;
use tokio::time::{sleep, timeout, Instant};

use crate::{
    answer::CallMetrics,
    breaker::{Breaker, Phase, Refusal},
    kernel::{BreakerOutcome, CallError, Kernel},
    plan::{PriorityClass, RateLimit, RetryPolicy},
};

/// The state calls of one run share: breakers and rate-limit slots by connector.
#[derive(Debug)]
pub(crate) struct Shared {
    pub breakers: RefCell<BTreeMap<String, Breaker>>,
    pub rate_limits: BTreeMap<String, RateLimit>,
    /// The earliest start of each rate-limited connector's next attempt.
    pub next_slot: RefCell<BTreeMap<String, Instant>>,
    pub deadline: Instant,
    pub jitter_seed: u64,
}

/// What to call.
#[derive(Debug, Clone)]
pub(crate) struct CallSpec<'a> {
    pub step: &'a str,
    pub call: Option<&'a str>,
    pub connector: &'a str,
    pub input: Value,
    pub retry: RetryPolicy,
    pub priority: PriorityClass,
}

/// Why a call produced no value.
#[derive(Debug, Clone)]
pub(crate) enum CallFailure {
    CircuitOpen {
        remaining_cooldown_ms: u64,
    },
    Kernel(CallError),
    WallTime,
    /// A batch's answers together are over the bound of the step's output.
    TooLarge,
}

impl Shared {
    pub(crate) async fn invoke<K: Kernel>(
        &self,
        kernel: &K,
        spec: &CallSpec<'_>,
    ) -> (Result<Value, CallFailure>, CallMetrics) {
        let started = Instant::now();
        let mut m = CallMetrics {
            priority_class: spec.priority.as_str(),
            ..CallMetrics::default()
        };
        let before = match self.acquire(spec.connector, started) {
            Ok(phase) => phase,
            Err(refusal) => {
                m.circuit_phase_before = Phase::Open;
                m.circuit_phase_after = Phase::Open;
                let remaining_cooldown_ms = match refusal {
                    Refusal::Open {
                        remaining_cooldown_ms,
                    } => remaining_cooldown_ms,
                    Refusal::ProbesInFlight => 0,
                };
                return (
                    Err(CallFailure::CircuitOpen {
                        remaining_cooldown_ms,
                    }),
                    m,
                );
            }
        };
        m.circuit_phase_before = before;
        let (result, outcome) = self.attempts(kernel, spec, &mut m).await;
        m.circuit_phase_after = self.record(spec.connector, outcome);
        m.retries = m.attempts.saturating_sub(1);
        m.wall_ms = millis(started.elapsed());
        (result, m)
    }

    async fn attempts<K: Kernel>(
        &self,
        kernel: &K,
        spec: &CallSpec<'_>,
        m: &mut CallMetrics,
    ) -> (Result<Value, CallFailure>, BreakerOutcome) {
        let max_attempts = spec.retry.max_attempts.max(1);
        for attempt in 1..=max_attempts {
            let wait = self.take_slot(spec.connector);
            if Instant::now() + wait > self.deadline {
                return (Err(CallFailure::WallTime), BreakerOutcome::Neutral);
            }
            if !wait.is_zero() {
                sleep(wait).await;
                m.rate_wait_ms_total += millis(wait);
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            m.attempts = attempt;
            let answer =
                match timeout(left, kernel.call_tool(spec.connector, spec.input.clone())).await {
                    Err(_) => return (Err(CallFailure::WallTime), BreakerOutcome::Neutral),
                    Ok(answer) => answer,
                };
            let error = match answer {
                Ok(value) => return (Ok(value), BreakerOutcome::Success),
                Err(e) => e,
            };
            if !error.retryable() || attempt == max_attempts {
                let outcome = error.breaker_outcome();
                return (Err(CallFailure::Kernel(error)), outcome);
            }
            let pause =
                Duration::from_millis(backoff_ms(&spec.retry, spec, attempt, self.jitter_seed));
            if Instant::now() + pause > self.deadline {
                return (Err(CallFailure::WallTime), BreakerOutcome::Neutral);
            }
            sleep(pause).await;
            m.backoff_ms_total += millis(pause);
        }
        // The loop returns on its last attempt; this is reached only if max_attempts is 0,
        // which validation refuses and `max(1)` rules out.
        (Err(CallFailure::WallTime), BreakerOutcome::Neutral)
    }

    fn acquire(&self, connector: &str, now: Instant) -> Result<Phase, Refusal> {
        match self.breakers.borrow_mut().get_mut(connector) {
            None => Ok(Phase::Disabled),
            Some(b) => b.acquire(now),
        }
    }

    fn record(&self, connector: &str, outcome: BreakerOutcome) -> Phase {
        self.breakers
            .borrow_mut()
            .get_mut(connector)
            .map_or(Phase::Disabled, |b| b.record(outcome, Instant::now()))
    }

    /// The connector's breaker phase now (`Disabled` when it has none).
    pub(crate) fn phase(&self, connector: &str) -> Phase {
        self.breakers
            .borrow()
            .get(connector)
            .map_or(Phase::Disabled, Breaker::phase)
    }

    /// Reserves the connector's next rate-limit slot and returns the wait until it.
    fn take_slot(&self, connector: &str) -> Duration {
        let Some(limit) = self.rate_limits.get(connector) else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let mut slots = self.next_slot.borrow_mut();
        let slot = slots.get(connector).copied().unwrap_or(now).max(now);
        slots.insert(
            connector.to_string(),
            slot + Duration::from_millis(limit.min_interval_ms),
        );
        slot.saturating_duration_since(now)
    }
}

/// The wait after failed attempt `attempt` (1-based): `initial · 2^(attempt-1)`, capped at
/// `max_backoff_ms`, plus up to `jitter_ratio` of it, capped again. The jitter is upstream's
/// FNV-1a over the connector, step, call and attempt, seeded by the run's `jitter_seed`, so
/// a test can fix it and a worker can make runs differ.
pub(crate) fn backoff_ms(
    policy: &RetryPolicy,
    spec: &CallSpec<'_>,
    attempt: usize,
    seed: u64,
) -> u64 {
    let exponent = u32::try_from(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
    let base = policy
        .initial_backoff_ms
        .saturating_mul(2u64.saturating_pow(exponent))
        .min(policy.max_backoff_ms);
    if !policy.adaptive_jitter || base == 0 || policy.jitter_ratio <= 0.0 {
        return base;
    }
    // base ≤ MAX_BACKOFF_MS and the ratio ≤ 1, so the product is small and exact enough.
    let cap = ((base as f64) * policy.jitter_ratio).round() as u64;
    if cap == 0 {
        return base;
    }
    let key = format!(
        "{}|{}|{}|attempt-{attempt}",
        spec.connector,
        spec.step,
        spec.call.unwrap_or("no-call-id")
    );
    let jitter = fnv1a(seed, key.as_bytes()) % (cap + 1);
    base.saturating_add(jitter).min(policy.max_backoff_ms)
}

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut hash = OFFSET_BASIS ^ seed;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
