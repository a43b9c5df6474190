//! Per-token limits: requests and streams open at once, and a request rate (a token bucket).
//! A token is known here by the sha256 of its public id, once loongd has authenticated the
//! request's bearer (never by its secret: a made-up secret never reaches the table); the
//! table is bounded all the same.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

/// Tokens tracked at once; past it, idle entries are dropped, and a new token waits.
pub const MAX_TRACKED_TOKENS: usize = 4096;

/// Failed authentications (a secret that names no live token) loongd is asked to decide and
/// record each second, for all clients together; past [`AUTH_FAILURE_BURST`], a request is
/// answered 429 before its bearer reaches loongd, so that made-up secrets cannot grow
/// loongd's audit trail at the rate the network carries them.
pub const AUTH_FAILURES_PER_SECOND: u32 = 20;
/// Failed authentications admitted at once before [`AUTH_FAILURES_PER_SECOND`] applies.
pub const AUTH_FAILURE_BURST: u32 = 100;

/// The bucket of failed authentications ([`AUTH_FAILURES_PER_SECOND`]).
#[derive(Debug)]
pub struct Failures {
    bucket: Mutex<(f64, Instant)>,
}

impl Failures {
    pub fn new(now: Instant) -> Failures {
        Failures {
            bucket: Mutex::new((f64::from(AUTH_FAILURE_BURST), now)),
        }
    }

    fn refilled(&self, now: Instant) -> std::sync::MutexGuard<'_, (f64, Instant)> {
        let mut b = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(b.1).as_secs_f64();
        b.0 = (b.0 + elapsed * f64::from(AUTH_FAILURES_PER_SECOND))
            .min(f64::from(AUTH_FAILURE_BURST));
        b.1 = now;
        b
    }

    /// Whether a bearer may be sent to loongd now: a failure is left in the bucket.
    pub fn may_try(&self, now: Instant) -> bool {
        self.refilled(now).0 >= 1.0
    }

    /// Counts one failed authentication.
    pub fn failed(&self, now: Instant) {
        let mut b = self.refilled(now);
        b.0 = (b.0 - 1.0).max(0.0);
    }
}

/// The limits, from `[gateway]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_streams: u32,
    pub per_second: u32,
    pub burst: u32,
}

/// Why a request is refused (429).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this token has {0} requests and streams open, the most allowed (gateway.max_streams_per_token); retry when one ends")]
    Streams(u32),
    #[error("this token made more than {0} requests a second (gateway.requests_per_second); retry after the time Retry-After gives")]
    Rate(u32),
    #[error("the gateway tracks {MAX_TRACKED_TOKENS} tokens already; retry shortly")]
    Full,
}

impl Refused {
    /// Seconds for `Retry-After`.
    pub fn retry_after(&self) -> u64 {
        1
    }
}

#[derive(Debug)]
struct Entry {
    open: u32,
    tokens: f64,
    at: Instant,
}

/// The table of tokens.
#[derive(Debug)]
pub struct Table {
    limits: Limits,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

/// Holds one open request or stream of a token; dropping it closes it.
#[derive(Debug)]
pub struct Open {
    table: Arc<Table>,
    key: [u8; 32],
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut e = self
            .table
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = e.get_mut(&self.key) {
            entry.open = entry.open.saturating_sub(1);
        }
    }
}

/// The key of a token, by its public id.
pub fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Table {
    pub fn new(limits: Limits) -> Arc<Table> {
        Arc::new(Table {
            limits,
            entries: Mutex::default(),
        })
    }

    /// Admits one request of the token `key` at `now`, or says why not.
    pub fn admit(self: &Arc<Self>, key: [u8; 32], now: Instant) -> Result<Open, Refused> {
        let l = self.limits;
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if !entries.contains_key(&key) && entries.len() >= MAX_TRACKED_TOKENS {
            // Forget the idle tokens whose bucket has refilled: nothing is lost.
            let full = Duration::from_secs_f64(f64::from(l.burst) / f64::from(l.per_second));
            entries.retain(|_, e| e.open > 0 || now.saturating_duration_since(e.at) < full);
            if entries.len() >= MAX_TRACKED_TOKENS {
                return Err(Refused::Full);
            }
        }
        let e = entries.entry(key).or_insert(Entry {
            open: 0,
            tokens: f64::from(l.burst),
            at: now,
        });
        let elapsed = now.saturating_duration_since(e.at).as_secs_f64();
        e.tokens = (e.tokens + elapsed * f64::from(l.per_second)).min(f64::from(l.burst));
        e.at = now;
        if e.open >= l.max_streams {
            return Err(Refused::Streams(l.max_streams));
        }
        if e.tokens < 1.0 {
            return Err(Refused::Rate(l.per_second));
        }
        e.tokens -= 1.0;
        e.open += 1;
        Ok(Open {
            table: self.clone(),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_authentications_are_bounded_for_all_clients_together() {
        let now = Instant::now();
        let f = Failures::new(now);
        for _ in 0..AUTH_FAILURE_BURST {
            assert!(f.may_try(now));
            f.failed(now);
        }
        assert!(!f.may_try(now), "past the burst");
        let later = now + Duration::from_secs(1);
        for _ in 0..AUTH_FAILURES_PER_SECOND {
            assert!(f.may_try(later));
            f.failed(later);
        }
        assert!(!f.may_try(later), "past a second's refill");
    }

    #[test]
    fn streams_are_bounded_per_token_and_freed_when_closed() {
        let t = Table::new(Limits {
            max_streams: 2,
            per_second: 1000,
            burst: 1000,
        });
        let now = Instant::now();
        let a = t.admit(key("a"), now).expect("first");
        let _b = t.admit(key("a"), now).expect("second");
        assert_eq!(t.admit(key("a"), now).err(), Some(Refused::Streams(2)));
        // Another token is not held back by this one's streams.
        assert!(t.admit(key("b"), now).is_ok());
        drop(a);
        assert!(
            t.admit(key("a"), now).is_ok(),
            "a closed stream frees its place"
        );
    }

    #[test]
    fn the_rate_is_a_bucket_that_refills() {
        let t = Table::new(Limits {
            max_streams: 1000,
            per_second: 10,
            burst: 3,
        });
        let now = Instant::now();
        let held: Vec<Open> = (0..3)
            .map(|_| t.admit(key("a"), now).expect("within the burst"))
            .collect();
        assert_eq!(t.admit(key("a"), now).err(), Some(Refused::Rate(10)));
        // A tenth of a second later one more request is allowed.
        let later = now + Duration::from_millis(100);
        assert!(t.admit(key("a"), later).is_ok());
        assert_eq!(t.admit(key("a"), later).err(), Some(Refused::Rate(10)));
        drop(held);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_only_idle_tokens() {
        let t = Table::new(Limits {
            max_streams: 10,
            per_second: 1,
            burst: 1,
        });
        let now = Instant::now();
        let held: Vec<Open> = (0..MAX_TRACKED_TOKENS)
            .map(|i| t.admit(key(&i.to_string()), now).expect("admitted"))
            .collect();
        // Every tracked token holds a stream: a new one waits.
        assert_eq!(t.admit(key("new"), now).err(), Some(Refused::Full));
        drop(held);
        // Idle and refilled later: forgotten, and the new one is admitted.
        assert!(t.admit(key("new"), now + Duration::from_secs(2)).is_ok());
    }
}
