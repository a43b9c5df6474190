//! The browser tools' sessions: each a pool of one `loong-worker-browser` (a headless
//! Chromium) whose sandbox's only network grant is the one `HOST:PORT` its `browser.open`
//! was decided on, so the egress broker refuses every other connection the page makes
//! (redirects, links, subresources) whatever the page does.
//!
//! A session belongs to the caller that opened it (its token's public id, or the operator
//! connection's uid): another caller naming it is told there is no such session. Sessions are
//! bounded in number (`[browser] max_sessions` in all, `[browser] max_sessions_per_caller`
//! of one caller, so one caller cannot take them all) and closed after `[browser] idle_timeout_ms`
//! unused; a session whose worker failed (Chromium hung past a deadline, crashed, or was
//! OOM-killed by its cgroup) is dropped, and the next `browser.open` starts a fresh one.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{atomic::AtomicU64, Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use loong_ipc::BuiltinSpec;

use super::{Loadable, Supervisor, Wire};

/// The tools, as offered.
pub const TOOLS: [&str; 7] = [
    "browser.open",
    "browser.extract",
    "browser.click",
    "browser.type",
    "browser.wait",
    "browser.screenshot",
    "browser.close",
];
/// The tool name the worker is configured with (every call names its operation).
pub const WORKER_TOOL: &str = "browser";
/// A call's deadline in the worker: a navigation's load, then the page's answer.
pub const CALL_TIMEOUT_MS: u64 = 45_000;
/// The most one call may answer (a screenshot is the largest).
pub const MAX_OUTPUT_BYTES: u64 = loong_ipc::message::worker::MAX_CALL_BYTES as u64;
/// The longest session id a caller may give.
pub const MAX_SESSION_ID_CHARS: usize = 64;
/// The Chromium programs looked for on `PATH`, in order. The headless shell first: the full
/// browser's headless mode binds a unix socket for its profile lock (`ProcessSingleton`),
/// which the balanced tier's seccomp filter refuses to a sandbox with a network grant
/// (docs/SECURITY.md, "The browser worker"), so it does not start there.
pub const CHROMIUM_NAMES: [&str; 3] = ["chromium-headless-shell", "chromium", "chromium-browser"];
/// Where Debian keeps the binaries its `/usr/bin` scripts start.
pub const DEBIAN_CHROMIUM_DIR: &str = "/usr/lib/chromium";

/// Whether `tool` is a browser tool.
pub fn is_browser_tool(tool: &str) -> bool {
    TOOLS.contains(&tool)
}

/// The Chromium binary: `[browser] chromium`, or the first of [`CHROMIUM_NAMES`] on `PATH`.
/// Debian's `/usr/bin/chromium*` are shell scripts (the full browser's reads the host's
/// configuration); the binary such a script starts, in [`DEBIAN_CHROMIUM_DIR`], is used
/// instead when it is there.
pub fn find_chromium(configured: Option<&PathBuf>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.clone());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in CHROMIUM_NAMES {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                let debian = PathBuf::from(DEBIAN_CHROMIUM_DIR).join(name);
                if debian.is_file() {
                    return Some(debian);
                }
                return Some(std::fs::canonicalize(&p).unwrap_or(p));
            }
        }
    }
    None
}

/// One session.
#[derive(Debug)]
pub(crate) struct Session {
    pub id: String,
    /// Whose it is.
    pub owner: String,
    /// The `HOST:PORT` its sandbox may reach (what its `browser.open` was decided on).
    pub grant: String,
    pub pool: Arc<Supervisor>,
    pub loadable: Loadable,
    last_used: Instant,
    /// When the owner's token expires (ms since the epoch): the session, and the page running
    /// in it, ends then, whatever its idle time.
    expires_ms: Option<i64>,
}

/// How often idle sessions (and those whose token expired) are looked for (at most; a shorter
/// idle timeout is used instead).
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Ends a session's pool: its worker (and Chromium with it) is killed, then reaped and its
/// exit recorded.
pub(crate) fn close(pool: Arc<Supervisor>) {
    pool.shutdown();
    tokio::spawn(async move { pool.reap_idle().await });
}

/// The live sessions.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    live: Arc<Mutex<HashMap<String, Session>>>,
    next: AtomicU64,
    /// Whether the idle sweeper runs.
    watched: std::sync::atomic::AtomicBool,
}

fn sweep_map(live: &Mutex<HashMap<String, Session>>, idle: Duration) -> Vec<Arc<Supervisor>> {
    let mut live = live.lock().unwrap_or_else(PoisonError::into_inner);
    let now = crate::now_ms();
    let stale: Vec<String> = live
        .values()
        .filter(|s| s.last_used.elapsed() >= idle || s.expires_ms.is_some_and(|e| e <= now))
        .map(|s| s.id.clone())
        .collect();
    stale
        .into_iter()
        .filter_map(|id| live.remove(&id).map(|s| s.pool))
        .collect()
}

/// How many sessions may be open: in all (`[browser] max_sessions`) and of one caller
/// (`[browser] max_sessions_per_caller`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionLimits {
    pub total: usize,
    pub per_caller: usize,
}

/// Which limit refused a new session, and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    Total(usize),
    Caller(usize),
}

/// What a call needs of its session.
#[derive(Debug, Clone)]
pub(crate) struct Handle {
    pub id: String,
    pub grant: String,
    pub pool: Arc<Supervisor>,
    pub loadable: Loadable,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes every session whose owner `keep` refuses (a token revoked since it was opened);
    /// answers their pools, to be shut down.
    pub(crate) fn remove_owners(&self, mut keep: impl FnMut(&str) -> bool) -> Vec<Arc<Supervisor>> {
        let mut live = self.lock();
        let gone: Vec<String> = live
            .values()
            .filter(|s| !keep(&s.owner))
            .map(|s| s.id.clone())
            .collect();
        gone.into_iter()
            .filter_map(|id| live.remove(&id).map(|s| s.pool))
            .collect()
    }

    /// Closes the sessions unused for `idle`, or whose owner's token has expired; answers
    /// their pools, to be shut down.
    pub(crate) fn sweep(&self, idle: Duration) -> Vec<Arc<Supervisor>> {
        sweep_map(&self.live, idle)
    }

    /// Starts (once) the task that closes sessions unused for `idle`, so that an idle
    /// Chromium does not outlive its timeout when no browser call comes.
    pub(crate) fn watch(&self, idle: Duration) {
        if self
            .watched
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let live = self.live.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(idle.min(SWEEP_EVERY)).await;
                for pool in sweep_map(&live, idle) {
                    close(pool);
                }
            }
        });
    }

    /// `owner`'s session `id`, touched.
    pub(crate) fn get(&self, owner: &str, id: &str) -> Option<Handle> {
        let mut live = self.lock();
        let s = live.get_mut(id).filter(|s| s.owner == owner)?;
        s.last_used = Instant::now();
        Some(s.handle())
    }

    /// `owner`'s session on `grant`, if any, touched (a later `browser.open` of the same host
    /// reuses it).
    pub(crate) fn find(&self, owner: &str, grant: &str) -> Option<Handle> {
        let mut live = self.lock();
        let s = live
            .values_mut()
            .filter(|s| s.owner == owner && s.grant == grant)
            .min_by_key(|s| s.id.clone())?;
        s.last_used = Instant::now();
        Some(s.handle())
    }

    /// A new session's id.
    pub(crate) fn next_id(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("b{n}-{}", crate::now_ms())
    }

    /// Adds session `id` of `owner` on `grant`, run by `pool` until the owner's token expires
    /// at `expires_ms` (when it has one), unless the limits are reached: `max.total` open in
    /// all, or `max.per_caller` of `owner`'s (then the pool is answered back, to be shut
    /// down, with which limit it was).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add(
        &self,
        id: &str,
        owner: &str,
        grant: &str,
        expires_ms: Option<i64>,
        pool: Arc<Supervisor>,
        chromium: &std::path::Path,
        max: SessionLimits,
    ) -> Result<Handle, (Arc<Supervisor>, Full)> {
        let mut live = self.lock();
        if live.values().filter(|s| s.owner == owner).count() >= max.per_caller {
            return Err((pool, Full::Caller(max.per_caller)));
        }
        if live.len() >= max.total {
            return Err((pool, Full::Total(max.total)));
        }
        let id = id.to_string();
        let loadable = Loadable {
            id: WORKER_TOOL.to_string(),
            wire: Arc::new(Wire::Builtin(BuiltinSpec {
                tool: WORKER_TOOL.to_string(),
                roots: vec![chromium.display().to_string()],
                timeout_ms: CALL_TIMEOUT_MS,
                max_output_bytes: MAX_OUTPUT_BYTES,
            })),
            generation: super::plugins::next_generation(),
        };
        let s = Session {
            id: id.clone(),
            owner: owner.to_string(),
            grant: grant.to_string(),
            pool,
            loadable,
            last_used: Instant::now(),
            expires_ms,
        };
        let h = s.handle();
        live.insert(id, s);
        Ok(h)
    }

    /// Removes session `id` (of `owner`, when given); answers its pool, to be shut down.
    pub(crate) fn remove(&self, owner: Option<&str>, id: &str) -> Option<Arc<Supervisor>> {
        let mut live = self.lock();
        if owner.is_some_and(|o| live.get(id).is_none_or(|s| s.owner != o)) {
            return None;
        }
        live.remove(id).map(|s| s.pool)
    }

    /// Every session's pool (at shutdown).
    pub(crate) fn drain(&self) -> Vec<Arc<Supervisor>> {
        self.lock().drain().map(|(_, s)| s.pool).collect()
    }
}

impl Session {
    fn handle(&self) -> Handle {
        Handle {
            id: self.id.clone(),
            grant: self.grant.clone(),
            pool: self.pool.clone(),
            loadable: self.loadable.clone(),
        }
    }
}

/// The `HOST:PORT` of a URL a caller asked to open, or why it is refused before anything is
/// decided or started: only `http://` and `https://` URLs with a host and no credentials
/// (`file:`, `chrome:`, `view-source:`, `data:`, `javascript:` and every other scheme are
/// refused), parsed as an `http_json` endpoint is. A fragment is the page's own and is not
/// looked at. The worker checks the URL again before Chromium sees it.
pub fn url_target(url: &str) -> Result<String, loong_profiles::plugin::EndpointError> {
    let without_fragment = url.split('#').next().unwrap_or_default();
    let e = loong_profiles::plugin::parse_endpoint(without_fragment)?;
    // An IPv6 host is bracketed, as the grant grammar writes it.
    Ok(if e.host.contains(':') {
        format!("[{}]:{}", e.host, e.port)
    } else {
        format!("{}:{}", e.host, e.port)
    })
}

/// The address `target` (`HOST:PORT`) names when its host is a loopback, private,
/// link-local or otherwise non-public IP literal.
pub fn private_literal(target: &str) -> Option<std::net::IpAddr> {
    let sa: std::net::SocketAddr = target.parse().ok()?;
    let ip = sa.ip();
    crate::egress::ranges::special_range(ip).map(|_| ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refused schemes never reach a decision; http(s) URLs name their `HOST:PORT`.
    #[test]
    fn a_url_names_its_host_and_port_or_is_refused() {
        for bad in [
            "file:///etc/passwd",
            "chrome://settings",
            "view-source:http://a.test/",
            "data:text/html,x",
            "javascript:alert(1)",
        ] {
            assert!(url_target(bad).is_err(), "{bad}");
        }
        assert_eq!(
            url_target("http://127.0.0.1:9/x").ok().as_deref(),
            Some("127.0.0.1:9")
        );
        assert_eq!(
            url_target("https://a.test").ok().as_deref(),
            Some("a.test:443")
        );
        assert_eq!(
            url_target("http://[::1]:8/").ok().as_deref(),
            Some("[::1]:8")
        );
    }

    /// Loopback and private literals are told apart from public ones and from names.
    #[test]
    fn private_literals_are_recognised() {
        assert!(private_literal("127.0.0.1:80").is_some());
        assert!(private_literal("10.1.2.3:80").is_some());
        assert!(private_literal("[::1]:80").is_some());
        assert!(private_literal("93.184.216.34:80").is_none());
        assert!(private_literal("docs.example.test:443").is_none());
    }
}
