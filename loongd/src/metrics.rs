//! Metrics: counters, gauges and histograms of what loongd does, rendered as OpenMetrics text
//! for `loongctl metrics` (a control request) and, when `[metrics] listen` names one, for
//! `GET /metrics` on a loopback address or a Unix socket ([`serve`]).
//!
//! The series live in one registry for the process ([`METRICS`]); the effect path, the
//! worker pools, the audit writer and the sandbox runner each call one function here, so the
//! places that count stay one line each. Every label's values come from a closed set
//! (capabilities, worker kinds, tiers, failure classes), except the tool name, which comes
//! from installed plugins: at most [`MAX_TOOL_LABELS`] distinct names get a series of their
//! own, and later ones (or a name with a character outside [`tool_label`]'s set) are counted
//! under [`OTHER_TOOL`].

use std::{
    collections::HashSet,
    sync::{Arc, LazyLock, Mutex, PoisonError},
    time::Duration,
};

use loong_profiles::pack::Capability;
use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Kernel;

/// Most distinct tool names that get series of their own; the rest count under
/// [`OTHER_TOOL`], so a host with many plugins cannot grow the registry without bound.
pub const MAX_TOOL_LABELS: usize = 64;
/// The tool label of calls to tools past [`MAX_TOOL_LABELS`] (or with an unusual name).
pub const OTHER_TOOL: &str = "other";
/// Longest tool name used as a label value.
pub const MAX_TOOL_LABEL_BYTES: usize = 128;
/// Connections `/metrics` serves at once; more wait in the listen backlog.
pub const MAX_HTTP_CONNECTIONS: usize = 4;
/// Largest HTTP request head `/metrics` reads before it answers 431.
pub const MAX_HTTP_REQUEST_BYTES: usize = 8 * 1024;
/// How long `/metrics` waits for a request head.
pub const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The content type of the exposition (OpenMetrics 1.0.0).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
/// A label whose value is one of a closed set: looked up with no allocation.
type Fixed<const N: usize> = [(&'static str, &'static str); N];
/// The tool label: its value shared with the set of names that have series
/// ([`Metrics::tool_label`]), so a call's lookup allocates nothing.
type ToolLabel = [(&'static str, Arc<str>); 1];

/// Every series loongd exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    effect_calls: Family<Fixed<1>, Counter>,
    effect_denials: Family<Fixed<1>, Counter>,
    effect_approvals: Family<Fixed<2>, Counter>,
    /// By tool, then outcome (the exposition's order of the labels).
    tool_calls: Family<(ToolLabel, Fixed<1>), Counter>,
    tool_seconds: Family<ToolLabel, Histogram>,
    worker_spawns: Family<Labels, Counter>,
    worker_restarts: Family<Labels, Counter>,
    worker_kills: Family<Labels, Counter>,
    workers_live: Family<Labels, Gauge>,
    audit_queue_depth: Gauge,
    audit_commit_seconds: Histogram,
    audit_commits: Counter,
    audit_commits_by_waiters: Counter,
    token_lookups: Counter,
    sandbox_spawns: Family<Labels, Counter>,
    /// The tool names that have series of their own.
    tools: Mutex<HashSet<Arc<str>>>,
    /// [`OTHER_TOOL`], shared by every call counted under it.
    other_tool: Arc<str>,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Latency buckets, in seconds: 100 µs to about 100 s.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("loong");
        let m = Metrics {
            registry: Registry::default(),
            effect_calls: Family::default(),
            effect_denials: Family::default(),
            effect_approvals: Family::default(),
            tool_calls: Family::default(),
            tool_seconds: Family::new_with_constructor(seconds_histogram),
            worker_spawns: Family::default(),
            worker_restarts: Family::default(),
            worker_kills: Family::default(),
            workers_live: Family::default(),
            audit_queue_depth: Gauge::default(),
            audit_commit_seconds: seconds_histogram(),
            audit_commits: Counter::default(),
            audit_commits_by_waiters: Counter::default(),
            token_lookups: Counter::default(),
            sandbox_spawns: Family::default(),
            tools: Mutex::default(),
            other_tool: Arc::from(OTHER_TOOL),
        };
        registry.register(
            "effect_calls",
            "Effects decided (allowed, denied or sent for approval), by capability",
            m.effect_calls.clone(),
        );
        registry.register(
            "effect_denials",
            "Effects denied (by policy, or by the token check before dispatch), by capability",
            m.effect_denials.clone(),
        );
        registry.register(
            "effect_approvals",
            "Approvals requested, granted and refused (denied or expired), by capability",
            m.effect_approvals.clone(),
        );
        registry.register(
            "tool_calls",
            "Tool calls dispatched to a worker, by tool and outcome (completed, or the failure class)",
            m.tool_calls.clone(),
        );
        registry.register(
            "tool_call_duration_seconds",
            "Wall time of dispatched tool calls, decision to outcome, by tool",
            m.tool_seconds.clone(),
        );
        registry.register(
            "worker_spawns",
            "Workers spawned, by kind",
            m.worker_spawns.clone(),
        );
        registry.register(
            "worker_restarts",
            "Workers spawned to replace a retired one, by kind",
            m.worker_restarts.clone(),
        );
        registry.register(
            "worker_kills",
            "Workers killed by an operator (workers kill), by kind",
            m.worker_kills.clone(),
        );
        registry.register(
            "workers_live",
            "Workers spawned and not yet retired, by kind",
            m.workers_live.clone(),
        );
        registry.register(
            "audit_queue_depth",
            "Audit messages queued for the writer and not yet taken",
            m.audit_queue_depth.clone(),
        );
        registry.register(
            "audit_commit_duration_seconds",
            "Time of one audit commit (a group of records, fsync and signing included)",
            m.audit_commit_seconds.clone(),
        );
        registry.register(
            "audit_commits",
            "Audit commits that succeeded",
            m.audit_commits.clone(),
        );
        registry.register(
            "audit_commits_by_waiters",
            "Audit commits made by a waiting request's thread in the writer's stead (the writer thread not yet running)",
            m.audit_commits_by_waiters.clone(),
        );
        registry.register(
            "token_lookups",
            "Bearer tokens looked up in the token store (by secret or public id)",
            m.token_lookups.clone(),
        );
        registry.register(
            "sandbox_spawns",
            "Sandboxed programs started by sandbox run, by tier",
            m.sandbox_spawns.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text of every series, with the gauges read from `kernel` now (the
    /// live workers counted in the pools themselves, so a pool stopped by a reload or an
    /// upgrade leaves no stale count).
    pub(crate) fn render(&self, kernel: &Kernel) -> String {
        self.audit_queue_depth
            .set(i64::try_from(kernel.audit.queue_depth()).unwrap_or(i64::MAX));
        self.workers_live.clear();
        for (kind, n) in kernel.live_workers() {
            self.workers_live
                .get_or_create(&vec![("kind", kind)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing into a String cannot fail; an encoder error would leave the text short,
        // which the scraper reports (no `# EOF`).
        if let Err(e) = encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        text
    }

    /// The label value for `tool`: itself while fewer than [`MAX_TOOL_LABELS`] names have
    /// series, [`OTHER_TOOL`] after that or when the name is unusual.
    fn tool_label(&self, tool: &str) -> Arc<str> {
        let plain = !tool.is_empty()
            && tool.len() <= MAX_TOOL_LABEL_BYTES
            && tool
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:/@".contains(&b));
        if !plain {
            return self.other_tool.clone();
        }
        let mut tools = self.tools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = tools.get(tool) {
            return known.clone();
        }
        if tools.len() >= MAX_TOOL_LABELS || tool == OTHER_TOOL {
            return self.other_tool.clone();
        }
        let name: Arc<str> = Arc::from(tool);
        tools.insert(name.clone());
        name
    }
}

fn label(key: &'static str, value: &str) -> Labels {
    vec![(key, value.to_string())]
}

/// An effect was decided (the effect path's `decide`): allowed, sent for approval, or
/// (neither) denied.
pub(crate) fn decided(cap: Capability, allowed: bool, needs_approval: bool) {
    let m = &*METRICS;
    let l = [("capability", cap.as_str())];
    m.effect_calls.get_or_create(&l).inc();
    if needs_approval {
        approval(cap, "requested");
    } else if !allowed {
        m.effect_denials.get_or_create(&l).inc();
    }
}

/// An effect allowed at its decision was denied when its token was checked again.
pub(crate) fn denied_at_dispatch(cap: Capability) {
    METRICS
        .effect_denials
        .get_or_create(&[("capability", cap.as_str())])
        .inc();
}

/// An approval wait ended: `granted` or not (denied, expired, or the request ended).
pub(crate) fn approval_waited(cap: Capability, granted: bool) {
    approval(cap, if granted { "granted" } else { "refused" });
}

fn approval(cap: Capability, outcome: &'static str) {
    METRICS
        .effect_approvals
        .get_or_create(&[("capability", cap.as_str()), ("outcome", outcome)])
        .inc();
}

/// A dispatched tool call ended with `outcome` after `wall_us` microseconds.
pub(crate) fn tool_call(tool: &str, outcome: &'static str, wall_us: u64) {
    let m = &*METRICS;
    let labels = ([("tool", m.tool_label(tool))], [("outcome", outcome)]);
    m.tool_calls.get_or_create(&labels).inc();
    m.tool_seconds
        .get_or_create(&labels.0)
        .observe(wall_us as f64 / 1e6);
}

/// A worker of `kind` was spawned.
pub(crate) fn worker_spawned(kind: &'static str) {
    METRICS
        .worker_spawns
        .get_or_create(&label("kind", kind))
        .inc();
}

/// A worker of `kind` was spawned to replace a retired one (counted as a spawn too).
pub(crate) fn worker_restarted(kind: &'static str) {
    METRICS
        .worker_restarts
        .get_or_create(&label("kind", kind))
        .inc();
}

/// An operator killed a worker of `kind`.
pub(crate) fn worker_killed(kind: &'static str) {
    METRICS
        .worker_kills
        .get_or_create(&label("kind", kind))
        .inc();
}

/// An audit commit succeeded after `took`.
pub(crate) fn audit_committed(took: Duration) {
    METRICS.audit_commits.inc();
    METRICS.audit_commit_seconds.observe(took.as_secs_f64());
}

/// A waiting request's thread committed a group in the audit writer's stead.
pub(crate) fn audit_committed_by_waiter() {
    METRICS.audit_commits_by_waiters.inc();
}

/// A bearer token was looked up in the token store.
pub(crate) fn token_looked_up() {
    METRICS.token_lookups.inc();
}

/// A sandboxed program started under `tier` (`None`: a spec without a tier, `none`).
pub(crate) fn sandbox_spawned(tier: Option<loong_sandbox::Tier>) {
    METRICS
        .sandbox_spawns
        .get_or_create(&label("tier", tier.map_or("none", |t| t.as_str())))
        .inc();
}

/// Where `/metrics` is served: a loopback address, or a Unix socket (`unix:/PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    Tcp(std::net::SocketAddr),
    Unix(std::path::PathBuf),
}

impl std::str::FromStr for MetricsListen {
    type Err = String;

    /// `unix:/ABSOLUTE/PATH`, or `IP:PORT` with a loopback IP (`127.0.0.0/8`, `[::1]`): the
    /// endpoint has no authentication, so it is never offered beyond the host.
    fn from_str(s: &str) -> Result<MetricsListen, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = std::path::PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "{s}: a Unix socket for metrics needs an absolute path, e.g. unix:/run/loong/metrics.sock"
                ));
            }
            return Ok(MetricsListen::Unix(path));
        }
        let addr: std::net::SocketAddr = s.parse().map_err(|_| {
            format!("{s} is neither IP:PORT nor unix:/PATH; use e.g. 127.0.0.1:9464")
        })?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{s} is not a loopback address: /metrics is served without authentication, so loongd listens only on 127.0.0.0/8, [::1] or a Unix socket; use 127.0.0.1:{} (and a proxy with authentication for remote scrapes)",
                addr.port()
            ));
        }
        Ok(MetricsListen::Tcp(addr))
    }
}

/// Where `[metrics] listen` serves `/metrics`, bound at start.
#[derive(Debug)]
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Binds `listen` (already checked to be loopback or a Unix socket by the configuration).
/// A Unix socket's stale file is replaced only when it is a socket.
pub fn bind(listen: &MetricsListen) -> anyhow::Result<Listener> {
    use anyhow::Context;
    use std::os::unix::fs::FileTypeExt;
    match listen {
        MetricsListen::Tcp(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("metrics.listen: binding {addr}"))?;
            l.set_nonblocking(true)
                .context("making the metrics listener non-blocking")?;
            Ok(Listener::Tcp(l))
        }
        MetricsListen::Unix(path) => {
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
                    .with_context(|| format!("metrics.listen: removing the stale socket {}", path.display()))?,
                Ok(_) => anyhow::bail!(
                    "metrics.listen: {} exists and is not a socket; remove it or choose another path",
                    path.display()
                ),
                Err(_) => {}
            }
            let l = std::os::unix::net::UnixListener::bind(path)
                .with_context(|| format!("metrics.listen: binding {}", path.display()))?;
            l.set_nonblocking(true)
                .context("making the metrics listener non-blocking")?;
            Ok(Listener::Unix(l))
        }
    }
}

/// How long the accept loop waits after a failed `accept` (out of descriptors, …).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A registered listener.
enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, Option<std::path::PathBuf>),
}

/// An accepted connection.
enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Bound {
    async fn accept(&self) -> std::io::Result<Conn> {
        match self {
            Bound::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
            Bound::Unix(l, _) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
        }
    }
}

/// Serves `GET /metrics` on `listener` until shutdown (then removes a Unix socket's file).
pub(crate) async fn serve(listener: Listener, kernel: Arc<Kernel>) {
    let bound = match listener {
        Listener::Tcp(l) => tokio::net::TcpListener::from_std(l).map(Bound::Tcp),
        Listener::Unix(l) => {
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(std::path::Path::to_path_buf));
            tokio::net::UnixListener::from_std(l).map(|l| Bound::Unix(l, path))
        }
    };
    let bound = match bound {
        Ok(b) => b,
        Err(e) => {
            return tracing::error!(error = %e, "the metrics listener could not be registered")
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        tokio::select! {
            _ = kernel.shut_down() => break,
            accepted = bound.accept() => match accepted {
                Ok(conn) => {
                    let k = kernel.clone();
                    tokio::spawn(async move {
                        match conn {
                            Conn::Tcp(s) => answer(s, &k).await,
                            Conn::Unix(s) => answer(s, &k).await,
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
    if let Bound::Unix(_, Some(path)) = &bound {
        let _ = std::fs::remove_file(path);
    }
}

/// Reads one request head and answers it; the connection is closed after.
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    kernel: &Kernel,
) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(HTTP_READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() > MAX_HTTP_REQUEST_BYTES {
                return false;
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    let (status, body, ctype) = match read {
        Ok(true) => {
            let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
            let mut parts = line.split(|b| *b == b' ');
            let (method, target) = (parts.next(), parts.next());
            match (method, target) {
                (Some(b"GET"), Some(b"/metrics")) => {
                    ("200 OK", METRICS.render(kernel), CONTENT_TYPE)
                }
                (Some(b"GET"), _) => (
                    "404 Not Found",
                    "only /metrics is served\n".into(),
                    "text/plain",
                ),
                _ => (
                    "405 Method Not Allowed",
                    "only GET is served\n".into(),
                    "text/plain",
                ),
            }
        }
        Ok(false) if head.len() > MAX_HTTP_REQUEST_BYTES => (
            "431 Request Header Fields Too Large",
            "the request head is too large\n".into(),
            "text/plain",
        ),
        _ => return,
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(HTTP_READ_TIMEOUT, s.write_all(reply.as_bytes())).await;
    let _ = s.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calls_series_are_labelled_as_before_without_allocating_per_call() {
        // The exposition's lines for a decision and a tool call: the labels' names, values
        // and order are what they were when each call built them as owned strings.
        decided(Capability::FsRead, true, false);
        decided(Capability::FsRead, false, false);
        approval_waited(Capability::FsRead, true);
        tool_call("labels-probe", "completed", 1_000);
        tool_call("labels-probe", "timeout", 1_000);
        let mut text = String::new();
        encode(&mut text, &METRICS.registry).expect("encode");
        for line in [
            "loong_effect_calls_total{capability=\"fs.read\"} ",
            "loong_effect_denials_total{capability=\"fs.read\"} ",
            "loong_effect_approvals_total{capability=\"fs.read\",outcome=\"granted\"} ",
            "loong_tool_calls_total{tool=\"labels-probe\",outcome=\"completed\"} 1",
            "loong_tool_calls_total{tool=\"labels-probe\",outcome=\"timeout\"} 1",
            "loong_tool_call_duration_seconds_count{tool=\"labels-probe\"} 2",
        ] {
            assert!(text.contains(line), "{line} is missing from\n{text}");
        }
    }

    #[test]
    fn tool_labels_are_capped_and_unusual_names_fold_into_other() {
        let m = Metrics::new();
        for i in 0..MAX_TOOL_LABELS {
            assert_eq!(&*m.tool_label(&format!("t{i}")), format!("t{i}"));
        }
        // The cap: the next new name folds; a known one keeps its own series.
        assert_eq!(&*m.tool_label("one-too-many"), OTHER_TOOL);
        assert_eq!(&*m.tool_label("t0"), "t0");
        let fresh = Metrics::new();
        for odd in [
            "",
            "a\u{1b}[2J",
            "a\"b",
            "a\nb",
            &"x".repeat(MAX_TOOL_LABEL_BYTES + 1),
        ] {
            assert_eq!(&*fresh.tool_label(odd), OTHER_TOOL, "{odd:?}");
        }
        assert_eq!(&*fresh.tool_label("echo.v2:run"), "echo.v2:run");
    }
}
