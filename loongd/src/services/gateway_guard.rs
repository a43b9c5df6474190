//! loongd's own bounds on what a gateway worker can make it do. The worker parses hostile
//! HTTP, so loongd assumes it may be taken over and does not rely on the worker's limits
//! (`workers/gateway/src/limits.rs`): whatever the worker sends, loongd
//!
//! - records at most [`REFUSAL_RECORD_BURST`] refusals at once and
//!   [`REFUSAL_RECORDS_PER_SECOND`] after (a bearer that names no live token, a kernel call
//!   past these limits, one it may not make); past that, refusals of a kind are counted and
//!   written as one record a [`COALESCE_WINDOW`] (`"coalesced": N`), so an audit flood is
//!   bounded and no refusal goes unrecorded;
//! - serves at most [`GATEWAY_CALLS_PER_SECOND`] kernel calls a second (bursts of
//!   [`GATEWAY_CALL_BURST`]) of one gateway, whatever their bearer (the worker's calls in
//!   flight are bounded by `SERVICE_MAX_IN_FLIGHT`);
//! - serves a token's calls at most [`CALLS_PER_REQUEST`] times the rate and burst the
//!   worker is configured to allow it in HTTP requests (`[gateway] requests_per_second`,
//!   `burst`), and [`CALLS_PER_REQUEST`] times its open requests and streams
//!   (`max_streams_per_token`) in flight at once (a chat turn is in flight until it ends,
//!   its stream read or not): an honest worker never reaches these, as each request makes
//!   its calls one after another; and a token's `gateway_invoke` only while it has fewer
//!   approvals pending than that (a call that ended gives its place back, its approval not);
//! - decodes no kernel call above `max_body_bytes` times [`BODY_EXPANSION`] plus
//!   [`CALL_OVERHEAD_BYTES`] (what an honest worker sends for the largest body it accepts).
//!
//! A call past a limit is answered `Overloaded` (or `BadRequest` for its size) and recorded
//! as a `protocol.violation` (coalesced as above): an honest worker never makes one. The
//! pending approvals' limit is the exception, as an honest worker meets it when its callers
//! leave approvals pending: a `policy.decision` refusal under the token, answered as an
//! approval-stage denial (`services::gateway::admit_approvals`). The
//! state is in memory: it bounds rates, and a restarted loongd starts with full buckets.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::config::GatewayConfig;

/// Refusals recorded one by one each second, for one gateway worker (the same budget as the
/// worker's own `AUTH_FAILURES_PER_SECOND`, so that an honest worker's are each recorded).
pub const REFUSAL_RECORDS_PER_SECOND: u32 = 20;
/// Refusals recorded one by one at once before [`REFUSAL_RECORDS_PER_SECOND`] applies.
pub const REFUSAL_RECORD_BURST: u32 = 100;
/// How long refusals past the budget are counted before their one record is written.
pub const COALESCE_WINDOW: Duration = Duration::from_secs(1);
/// Kernel calls one gateway may make each second, whatever their bearer.
pub const GATEWAY_CALLS_PER_SECOND: u32 = 4000;
/// Kernel calls one gateway may make at once before [`GATEWAY_CALLS_PER_SECOND`] applies.
pub const GATEWAY_CALL_BURST: u32 = 8000;
/// Kernel calls loongd serves per HTTP request the worker may admit (an `/mcp` call is at
/// most three: `gateway_auth`, `gateway_list` for a name it has not listed, `gateway_invoke`).
pub const CALLS_PER_REQUEST: u32 = 4;
/// Tokens whose calls are counted at once; past it, idle ones are forgotten, and a call of a
/// new token is refused until one is.
pub const MAX_TRACKED_TOKENS: usize = 4096;
/// How much larger than the HTTP body it came in a kernel call's payload may be (a JSON
/// body decoded and encoded again).
pub const BODY_EXPANSION: u64 = 2;
/// What a kernel call carries besides the body: the bearer, the tool's name, the framing.
pub const CALL_OVERHEAD_BYTES: u64 = 64 << 10;

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    level: f64,
    at: Instant,
    per_second: f64,
    burst: f64,
}

impl Bucket {
    fn new(per_second: u32, burst: u32, now: Instant) -> Bucket {
        Bucket {
            level: f64::from(burst),
            at: now,
            per_second: f64::from(per_second),
            burst: f64::from(burst),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second).min(self.burst);
        self.at = now;
    }

    /// Takes one unit; whether there was one.
    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.level < 1.0 {
            return false;
        }
        self.level -= 1.0;
        true
    }

    /// Whether it is full (its owner may be forgotten: nothing is lost).
    fn full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.level >= self.burst
    }
}

/// A kind of refusal coalesced when past the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Refusal {
    /// A bearer that names no live token (`policy.decision`).
    Bearer,
    /// A kernel call past loongd's limits or not the gateway's (`protocol.violation`).
    Violation,
}

/// Whether one refusal is recorded now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// Within the budget: record it as usual.
    Now,
    /// Counted; `true`: the first of its window, whose caller schedules the window's record
    /// ([`Guard::take_counted`] after [`COALESCE_WINDOW`]).
    Counted(bool),
}

/// Why a kernel call is refused by loongd's limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Limited {
    #[error("this gateway made more than {GATEWAY_CALLS_PER_SECOND} kernel calls a second (bursts of {GATEWAY_CALL_BURST}), the most loongd serves one gateway; retry shortly")]
    Gateway,
    #[error("token {token} has {limit} kernel calls in flight through the gateway, the most loongd serves it ({CALLS_PER_REQUEST} × gateway.max_streams_per_token); retry when one ends")]
    InFlight { token: String, limit: u32 },
    #[error("token {token} made more than {limit} kernel calls a second through the gateway ({CALLS_PER_REQUEST} × gateway.requests_per_second); retry shortly")]
    Rate { token: String, limit: u32 },
    #[error("loongd counts the calls of {MAX_TRACKED_TOKENS} tokens through the gateway already; retry shortly")]
    Full,
    #[error("token {token} has {pending} approvals pending, the most loongd lets it ask for through the gateway ({CALLS_PER_REQUEST} × gateway.max_streams_per_token); have them decided (`loongctl approvals list`) or let them expire, then retry")]
    Approvals { token: String, pending: u64 },
    #[error("kernel call {kind} carries {bytes} bytes, above the {limit} loongd accepts from the gateway (gateway.max_body_bytes × {BODY_EXPANSION} + {CALL_OVERHEAD_BYTES}); send a smaller body")]
    TooLarge {
        kind: String,
        bytes: usize,
        limit: u64,
    },
}

#[derive(Debug)]
struct TokenEntry {
    in_flight: u32,
    rate: Bucket,
}

#[derive(Debug)]
struct Records {
    budget: Bucket,
    /// Refusals counted and not yet recorded, by kind.
    counted: BTreeMap<Refusal, u64>,
}

/// loongd's limits on one gateway worker (shared by its restarts).
#[derive(Debug)]
pub(crate) struct Guard {
    in_flight: u32,
    per_second: u32,
    burst: u32,
    max_call_bytes: u64,
    calls: Mutex<Bucket>,
    tokens: Mutex<HashMap<String, TokenEntry>>,
    records: Mutex<Records>,
}

/// One kernel call of a token in flight; dropping it ends it.
#[derive(Debug)]
pub(crate) struct InFlight {
    guard: Arc<Guard>,
    token: String,
}

impl InFlight {
    /// The token's public id.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut tokens = lock(&self.guard.tokens);
        if let Some(e) = tokens.get_mut(&self.token) {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Guard {
    pub(crate) fn new(cfg: &GatewayConfig, now: Instant) -> Arc<Guard> {
        Arc::new(Guard {
            in_flight: cfg.max_streams_per_token.saturating_mul(CALLS_PER_REQUEST),
            per_second: cfg.requests_per_second.saturating_mul(CALLS_PER_REQUEST),
            burst: cfg.burst.saturating_mul(CALLS_PER_REQUEST),
            max_call_bytes: cfg
                .max_body_bytes
                .saturating_mul(BODY_EXPANSION)
                .saturating_add(CALL_OVERHEAD_BYTES),
            calls: Mutex::new(Bucket::new(
                GATEWAY_CALLS_PER_SECOND,
                GATEWAY_CALL_BURST,
                now,
            )),
            tokens: Mutex::default(),
            records: Mutex::new(Records {
                budget: Bucket::new(REFUSAL_RECORDS_PER_SECOND, REFUSAL_RECORD_BURST, now),
                counted: BTreeMap::new(),
            }),
        })
    }

    /// Admits one kernel call of `kind` with a payload of `bytes`, whatever its bearer.
    pub(crate) fn admit_call(&self, kind: &str, bytes: usize, now: Instant) -> Result<(), Limited> {
        if u64::try_from(bytes).unwrap_or(u64::MAX) > self.max_call_bytes {
            return Err(Limited::TooLarge {
                kind: kind.to_string(),
                bytes,
                limit: self.max_call_bytes,
            });
        }
        if !lock(&self.calls).take(now) {
            return Err(Limited::Gateway);
        }
        Ok(())
    }

    /// Admits one kernel call of the live token `token` (its public id); held while it runs.
    pub(crate) fn admit_token(
        self: &Arc<Self>,
        token: &str,
        now: Instant,
    ) -> Result<InFlight, Limited> {
        let mut tokens = lock(&self.tokens);
        if !tokens.contains_key(token) && tokens.len() >= MAX_TRACKED_TOKENS {
            tokens.retain(|_, e| e.in_flight > 0 || !e.rate.full(now));
            if tokens.len() >= MAX_TRACKED_TOKENS {
                return Err(Limited::Full);
            }
        }
        let e = tokens
            .entry(token.to_string())
            .or_insert_with(|| TokenEntry {
                in_flight: 0,
                rate: Bucket::new(self.per_second, self.burst, now),
            });
        if e.in_flight >= self.in_flight {
            return Err(Limited::InFlight {
                token: token.to_string(),
                limit: self.in_flight,
            });
        }
        if !e.rate.take(now) {
            return Err(Limited::Rate {
                token: token.to_string(),
                limit: self.per_second,
            });
        }
        e.in_flight += 1;
        Ok(InFlight {
            guard: self.clone(),
            token: token.to_string(),
        })
    }

    /// Admits a call of the token `token` that may ask for an approval, given its
    /// `pending` approvals: at most as many as its calls in flight. A call that ended (its
    /// wait over, or withdrawn by the worker) gives its place back while its approval stays
    /// pending, so that the calls in flight alone do not bound the approvals asked.
    pub(crate) fn admit_approvals(&self, token: &str, pending: u64) -> Result<(), Limited> {
        if pending >= u64::from(self.in_flight) {
            return Err(Limited::Approvals {
                token: token.to_string(),
                pending,
            });
        }
        Ok(())
    }

    /// Whether one refusal of `kind` is recorded now or counted.
    pub(crate) fn refusal(&self, kind: Refusal, now: Instant) -> Record {
        let mut r = lock(&self.records);
        if r.budget.take(now) {
            return Record::Now;
        }
        let n = r.counted.entry(kind).or_insert(0);
        *n += 1;
        Record::Counted(*n == 1)
    }

    /// The refusals of `kind` counted since its window opened (the window closes).
    pub(crate) fn take_counted(&self, kind: Refusal) -> u64 {
        lock(&self.records).counted.remove(&kind).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(streams: u32, per_second: u32, burst: u32) -> GatewayConfig {
        GatewayConfig {
            max_streams_per_token: streams,
            requests_per_second: per_second,
            burst,
            max_body_bytes: 1000,
            ..GatewayConfig::default()
        }
    }

    #[test]
    fn refusals_past_the_budget_are_counted_in_one_window_per_kind() {
        let now = Instant::now();
        let g = Guard::new(&GatewayConfig::default(), now);
        for _ in 0..REFUSAL_RECORD_BURST {
            assert_eq!(g.refusal(Refusal::Bearer, now), Record::Now);
        }
        assert_eq!(g.refusal(Refusal::Bearer, now), Record::Counted(true));
        assert_eq!(g.refusal(Refusal::Bearer, now), Record::Counted(false));
        assert_eq!(g.refusal(Refusal::Violation, now), Record::Counted(true));
        assert_eq!(g.take_counted(Refusal::Bearer), 2);
        assert_eq!(g.take_counted(Refusal::Bearer), 0, "the window closed");
        assert_eq!(g.refusal(Refusal::Bearer, now), Record::Counted(true));
        assert_eq!(g.take_counted(Refusal::Violation), 1);
        // A second later the budget has refilled by its rate.
        let later = now + Duration::from_secs(1);
        for _ in 0..REFUSAL_RECORDS_PER_SECOND {
            assert_eq!(g.refusal(Refusal::Violation, later), Record::Now);
        }
        assert_eq!(g.refusal(Refusal::Violation, later), Record::Counted(true));
    }

    #[test]
    fn a_tokens_calls_are_bounded_in_flight_and_in_rate_and_others_are_spared() {
        let now = Instant::now();
        let g = Guard::new(&config(1, 1000, 1000), now);
        let held: Vec<InFlight> = (0..CALLS_PER_REQUEST)
            .map(|_| g.admit_token("a", now).expect("within the limit"))
            .collect();
        assert!(matches!(
            g.admit_token("a", now),
            Err(Limited::InFlight { limit, .. }) if limit == CALLS_PER_REQUEST
        ));
        assert!(g.admit_token("b", now).is_ok(), "another token is spared");
        drop(held);
        assert!(
            g.admit_token("a", now).is_ok(),
            "an ended call frees its place"
        );

        let g = Guard::new(&config(1000, 1, 2), now);
        for _ in 0..2 * CALLS_PER_REQUEST {
            drop(g.admit_token("a", now).expect("within the burst"));
        }
        assert!(matches!(g.admit_token("a", now), Err(Limited::Rate { .. })));
        let later = now + Duration::from_secs(1);
        assert!(g.admit_token("a", later).is_ok(), "refilled by its rate");
    }

    #[test]
    fn a_tokens_pending_approvals_are_bounded_by_its_calls_in_flight() {
        let g = Guard::new(&config(2, 1, 1), Instant::now());
        let limit = u64::from(2 * CALLS_PER_REQUEST);
        assert!(g.admit_approvals("a", limit - 1).is_ok());
        assert!(matches!(
            g.admit_approvals("a", limit),
            Err(Limited::Approvals { pending, .. }) if pending == limit
        ));
    }

    #[test]
    fn a_gateways_calls_are_bounded_in_rate_and_size() {
        let now = Instant::now();
        let g = Guard::new(&config(1, 1, 1), now);
        let limit = 1000 * BODY_EXPANSION + CALL_OVERHEAD_BYTES;
        let at_limit = usize::try_from(limit).expect("fits");
        assert!(g.admit_call("gateway_invoke", at_limit, now).is_ok());
        assert!(matches!(
            g.admit_call("gateway_invoke", at_limit + 1, now),
            Err(Limited::TooLarge { .. })
        ));
        for _ in 1..GATEWAY_CALL_BURST {
            assert!(g.admit_call("gateway_auth", 10, now).is_ok());
        }
        assert_eq!(g.admit_call("gateway_auth", 10, now), Err(Limited::Gateway));
        assert!(g
            .admit_call("gateway_auth", 10, now + Duration::from_secs(1))
            .is_ok());
    }

    #[test]
    fn the_token_table_is_bounded_and_forgets_only_idle_tokens() {
        let now = Instant::now();
        let g = Guard::new(&config(10, 1, 1), now);
        let held: Vec<InFlight> = (0..MAX_TRACKED_TOKENS)
            .map(|i| g.admit_token(&i.to_string(), now).expect("admitted"))
            .collect();
        assert!(matches!(g.admit_token("new", now), Err(Limited::Full)));
        drop(held);
        let later = now + Duration::from_secs(10);
        assert!(g.admit_token("new", later).is_ok());
    }
}
