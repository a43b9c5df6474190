//! The egress broker: the only way out of a sandbox with a network grant.
//!
//! The sandbox is in an empty network namespace; its relay (`loong-spawn`, see the sandbox
//! crate's `helper/relay.rs`) passes each connection accepted on its loopback listeners over
//! the egress socket, tagged 0 for the HTTP proxy or `i` for the `i`-th raw forward. Per
//! sandbox, one task here receives them ([`serve`]); per connection: the destination (the
//! proxy request's authority, or the forward's grant) is decided — admitted by a grant, then
//! `net.egress` on `HOST:PORT` through the effect path when the sandbox was started by a
//! request (so a token's scopes apply) — then vetted (resolved once, every address checked;
//! private ranges only where the grant names the address or the plugin allows it) and dialled
//! at exactly a vetted address. A tunnel's (or a raw forward's) TLS hello must name the host
//! it was granted for ([`Gate`], `hello.rs`). Every connection is audited: `net.connected`, `net.closed`
//! (bytes each way, duration, outcome), or `net.denied` (with the reason, which a refused
//! proxy request also gets as a `403` body).

mod head;
mod hello;
pub(crate) mod ranges;
pub(crate) mod resolve;

use std::{
    net::SocketAddr,
    os::fd::{AsFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use loong_sandbox::NetGrant;
use tokio::{
    io::{unix::AsyncFd, AsyncReadExt, AsyncWriteExt, Interest},
    net::TcpStream,
    sync::{mpsc, oneshot, watch, Semaphore},
};

use crate::audit::{Audit, Event, Kind};
pub(crate) use head::MAX_HEAD_BYTES;
use resolve::{Refusal, Resolver};

/// How long a sandbox's program has to send its whole proxy request head.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest loongd spends dialling a destination.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one sandbox may have open at once (more are refused), unless `[egress]
/// max_connections` says otherwise.
pub(crate) const MAX_CONNECTIONS: usize = crate::config::DEFAULT_EGRESS_CONNECTIONS as usize;
/// Connections the broker holds open at once for all sandboxes together (more are refused),
/// so that many sandboxes, each within its own limit, cannot take all of loongd's
/// descriptors (each connection holds two); `[egress] max_total_connections` overrides it.
pub(crate) const MAX_TOTAL_CONNECTIONS: usize =
    crate::config::DEFAULT_EGRESS_TOTAL_CONNECTIONS as usize;
/// Bytes one sandbox may move through the broker, both ways, over its life (a connection
/// that crosses it is closed, later ones are refused), unless `[egress] max_bytes` says
/// otherwise.
pub(crate) const MAX_BYTES: u64 = crate::config::DEFAULT_EGRESS_BYTES;
/// The buffer of each direction of a relayed connection.
const RELAY_BUFFER_BYTES: usize = 16 * 1024;
/// Decisions a sandbox's broker may have queued for its request's effect path.
pub(crate) const DECISION_QUEUE: usize = 16;
/// Refused connections of one sandbox recorded one `net.denied` each per
/// [`REFUSAL_WINDOW`]; past them, a window's refusals are counted and recorded as one
/// `net.denied` (its `unrecorded` count) at the next refusal after the window or when the
/// sandbox ends, so a
/// program that loops on refused connections cannot grow the trail without bound.
pub(crate) const REFUSALS_RECORDED_PER_WINDOW: u32 = 32;
/// How long a window of refusals lasts.
pub(crate) const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// Destinations whose refusal on a request's effect path one sandbox's broker remembers: a
/// later connection to one is refused with the same answer without deciding (and recording)
/// it again, since a run's authority only narrows (a token is revoked, never widened).
pub(crate) const MAX_REFUSED_TARGETS: usize = 256;

/// Sandboxes served by a broker now, and their open connections (`loongctl doctor`).
static SANDBOXES: AtomicUsize = AtomicUsize::new(0);
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// The broker's limit over all sandboxes (`[egress] max_total_connections`) and its slots.
static TOTAL: OnceLock<(usize, Arc<Semaphore>)> = OnceLock::new();

/// Sets the limit of connections open at once for all sandboxes together (once, at start;
/// without it, [`MAX_TOTAL_CONNECTIONS`]).
pub(crate) fn set_total_limit(max: usize) {
    let _ = TOTAL.set((max, Arc::new(Semaphore::new(max))));
}

/// How long a relayed connection may carry no byte either way, unless `[egress]
/// idle_timeout_ms` says otherwise: it is then ended (`net.closed` outcome `idle_timeout`),
/// so a program cannot hold the broker's slots and descriptors with silent connections.
pub(crate) const IDLE_TIMEOUT: Duration =
    Duration::from_millis(crate::config::DEFAULT_EGRESS_IDLE_TIMEOUT_MS);
/// New connections one sandbox may open per second on average, and at once above that
/// (a token bucket), unless `[egress] connections_per_second` and `connections_burst` say
/// otherwise; one more is refused (`net.denied` code `rate_limited`).
pub(crate) const CONNECTIONS_PER_SECOND: u32 = crate::config::DEFAULT_EGRESS_CONNECTIONS_PER_SECOND;
pub(crate) const CONNECTIONS_BURST: u32 = crate::config::DEFAULT_EGRESS_CONNECTIONS_BURST;

/// The broker's idle timeout and connection rate (per sandbox), set once at start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    pub idle: Duration,
    pub per_second: u32,
    pub burst: u32,
}

static TUNING: OnceLock<Tuning> = OnceLock::new();

/// Sets the idle timeout and the connection rate (once, at start; without it,
/// [`IDLE_TIMEOUT`], [`CONNECTIONS_PER_SECOND`] and [`CONNECTIONS_BURST`]).
pub(crate) fn set_tuning(t: Tuning) {
    let _ = TUNING.set(t);
}

fn tuning() -> Tuning {
    *TUNING.get_or_init(|| Tuning {
        idle: IDLE_TIMEOUT,
        per_second: CONNECTIONS_PER_SECOND,
        burst: CONNECTIONS_BURST,
    })
}

/// One sandbox's token bucket of new connections.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes one token if there is one, after refilling for the time passed.
    fn take(&mut self, t: Tuning) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * f64::from(t.per_second);
        self.tokens = (self.tokens + refill).min(f64::from(t.burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A worker's limits: loongd's `[egress]` values (`loongd`), tightened by the plugin's own
/// `sandbox.egress` where it asks for less; a larger value is clamped to loongd's, and said
/// in loongd's log naming the plugin, the field and both values.
pub(crate) fn limits_for(
    plugin: Option<&str>,
    asked: &loong_profiles::plugin::EgressLimits,
    loongd: (u64, u64),
) -> (usize, u64) {
    let plugin = plugin.unwrap_or("(built-in)");
    let pick = |field: &str, asked: Option<u64>, ours: u64| match asked {
        Some(a) if a > ours => {
            tracing::warn!(
                plugin,
                "sandbox.egress.{field} {a} is above loongd's [egress] {field} {ours}: {ours} applies (a plugin may only tighten it)"
            );
            ours
        }
        Some(a) => a,
        None => ours,
    };
    let conns = pick("max_connections", asked.max_connections, loongd.0);
    let bytes = pick("max_bytes", asked.max_bytes, loongd.1);
    (usize::try_from(conns).unwrap_or(usize::MAX), bytes)
}

/// How long a plugin's byte budget lasts: its workers' bytes through the broker count against
/// `max_bytes` for this long from the first, across the worker's restarts, then start again.
pub(crate) const BYTE_WINDOW: Duration = Duration::from_secs(60 * 60);
/// Past this many plugins' budgets, those whose window has passed are forgotten when a new
/// one is made (a live one never is: the map holds one entry per plugin loaded within the
/// window).
pub(crate) const MAX_BUDGETS: usize = 4096;

/// Bytes moved against a `max_bytes`, in a window.
pub(crate) struct Budget {
    bytes: AtomicU64,
    started: Mutex<Instant>,
    /// `None`: a sandbox's own budget, for its life.
    window: Option<Duration>,
}

impl Budget {
    fn new(window: Option<Duration>) -> Budget {
        Budget {
            bytes: AtomicU64::new(0),
            started: Mutex::new(Instant::now()),
            window,
        }
    }

    /// The bytes of the current window (a window that has passed starts again at 0).
    fn current(&self) -> u64 {
        if let Some(w) = self.window {
            let mut started = self
                .started
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if started.elapsed() >= w {
                *started = Instant::now();
                self.bytes.store(0, Ordering::Relaxed);
            }
        }
        self.bytes.load(Ordering::Relaxed)
    }

    fn expired(&self) -> bool {
        self.window.is_some_and(|w| {
            self.started
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .elapsed()
                >= w
        })
    }
}

/// Each plugin's byte budget, kept across its worker's restarts.
static BUDGETS: OnceLock<Mutex<std::collections::HashMap<String, Arc<Budget>>>> = OnceLock::new();

/// The budget a sandbox's bytes count against: a plugin's worker shares its plugin's, kept
/// in loongd's memory for [`BYTE_WINDOW`] whatever its worker does (a worker that is
/// restarted, by a crash or on purpose, gets no fresh budget); a `sandbox run` has its own
/// for its life.
fn budget_for(egress: &Egress) -> Arc<Budget> {
    let (Some(plugin), None) = (&egress.owner.plugin, &egress.decide) else {
        return Arc::new(Budget::new(None));
    };
    let mut all = BUDGETS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(b) = all.get(plugin) {
        return b.clone();
    }
    if all.len() >= MAX_BUDGETS {
        all.retain(|_, b| !b.expired());
    }
    let b = Arc::new(Budget::new(Some(BYTE_WINDOW)));
    all.insert(plugin.clone(), b.clone());
    b
}

/// Bumped whenever a token is revoked (or a pack's tokens are): every open connection decided
/// on a request's effect path is decided again, and ends if it is refused now.
static AUTHORITY: OnceLock<watch::Sender<u64>> = OnceLock::new();

fn authority() -> &'static watch::Sender<u64> {
    AUTHORITY.get_or_init(|| watch::channel(0).0)
}

/// Set when loongd stops: every open connection ends and is recorded closed.
static STOPPING: OnceLock<watch::Sender<bool>> = OnceLock::new();
/// How long loongd waits, when it stops, for its open connections to be recorded closed.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(2);

fn stopping() -> &'static watch::Sender<bool> {
    STOPPING.get_or_init(|| watch::channel(false).0)
}

/// loongd is stopping: ends every open connection (`net.closed` outcome `loongd_stopped`)
/// and waits, at most [`STOP_GRACE`], until their records are queued.
pub(crate) async fn stop_all() {
    stopping().send_replace(true);
    let until = tokio::time::Instant::now() + STOP_GRACE;
    while OPEN.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Tokens were revoked: open connections are decided again (see [`AUTHORITY`]).
pub(crate) fn authority_changed() {
    authority().send_modify(|n| *n = n.wrapping_add(1));
}

fn total() -> &'static (usize, Arc<Semaphore>) {
    TOTAL.get_or_init(|| {
        (
            MAX_TOTAL_CONNECTIONS,
            Arc::new(Semaphore::new(MAX_TOTAL_CONNECTIONS)),
        )
    })
}

/// The broker's state for `loongctl doctor`: sandboxes served, connections open.
pub(crate) fn state() -> (usize, usize) {
    (
        SANDBOXES.load(Ordering::Relaxed),
        OPEN.load(Ordering::Relaxed),
    )
}

/// A question to the effect path of the request that started a sandbox: may it reach
/// `HOST:PORT`? The answer is `Err(reason)` when not.
pub(crate) type Ask = (String, oneshot::Sender<Result<(), String>>);

/// Who a sandbox's connections are for, as records and refusals name it.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    /// The records' actor (`uid:N` for a request, `loongd` for a worker).
    pub actor: String,
    /// Their correlation (the request's, or the worker's `worker-N`).
    pub correlation: String,
    /// The plugin whose worker it is, if any.
    pub plugin: Option<String>,
}

impl Owner {
    fn named(&self) -> String {
        match &self.plugin {
            Some(p) => format!("plugin {p}"),
            None => format!("this sandbox ({})", self.actor),
        }
    }
}

/// What one sandbox's broker works with.
#[derive(Debug)]
pub(crate) struct Egress {
    pub owner: Owner,
    pub grants: Vec<NetGrant>,
    /// `sandbox.allow_private_network`: private ranges are reachable by name.
    pub allow_private: bool,
    pub audit: Audit,
    /// The effect path of the request that started the sandbox (`None`: a worker, decided by
    /// its grants).
    pub decide: Option<mpsc::Sender<Ask>>,
    pub max_connections: usize,
    pub max_bytes: u64,
    /// loongd's one resolver: each connection's name is looked up once, here.
    pub resolver: Arc<Resolver>,
    /// What a refusal of a private answer tells the owner to do: set this setting (a
    /// plugin's), or, when `None` (a `sandbox run`, which has no setting), grant the address
    /// itself.
    pub private_setting: Option<&'static str>,
}

/// Starts the broker of one sandbox on its end of the egress socket; it ends when the
/// sandbox's end closes (the sandbox is gone).
pub(crate) fn serve(egress: Egress, ours: OwnedFd) {
    let forwards = loong_sandbox::spec::forwards(&egress.grants);
    let shared = Arc::new(Shared {
        slots: Arc::new(Semaphore::new(egress.max_connections)),
        moved: budget_for(&egress),
        forwards,
        egress,
        ended: watch::channel(false).0,
        refused: Mutex::new(std::collections::HashMap::new()),
        bucket: Mutex::new(Bucket {
            tokens: f64::from(tuning().burst),
            at: Instant::now(),
        }),
        refusals: Mutex::new(Refusals {
            window_start: Instant::now(),
            recorded: 0,
            counted: 0,
            ended: false,
        }),
    });
    SANDBOXES.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let _gone = Count(&SANDBOXES);
        receive(&shared, ours).await;
        // The sandbox's end is closed: the sandbox (or its relay) is gone. Its connections end
        // with it, whatever their destinations do, and its uncounted refusals are recorded.
        shared.ended.send_replace(true);
        if let Some(summary) = shared.refusals_end() {
            shared.egress.audit.record_later(summary).await;
        }
    });
}

/// Receives the relay's connections until the sandbox's end of the egress socket closes.
async fn receive(shared: &Arc<Shared>, ours: OwnedFd) {
    // As in `sandbox.rs`: the safe constructor is deprecated for descriptors a type could
    // swap under the registration; an `OwnedFd` owned by the `AsyncFd` cannot.
    #[allow(deprecated)]
    let registered = AsyncFd::with_interest(ours, Interest::READABLE);
    let Ok(fd) = registered else {
        return;
    };
    loop {
        let Ok(mut ready) = fd.readable().await else {
            return;
        };
        match ready.try_io(|fd| loong_sandbox::egress::receive(fd.get_ref().as_fd())) {
            Ok(Ok(Some((tag, mut fds)))) if fds.len() == 1 => {
                if let Some(conn) = fds.pop() {
                    tokio::spawn(connection(shared.clone(), tag, conn));
                }
            }
            // A message without exactly one descriptor is not the relay's: dropped.
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Ok(Err(_)) => return,
            Err(_would_block) => {}
        }
    }
}

/// Decrements a counter when dropped.
struct Count(&'static AtomicUsize);

impl Drop for Count {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Shared {
    egress: Egress,
    slots: Arc<Semaphore>,
    /// Bytes moved both ways against `max_bytes`: the sandbox's own, or its plugin's
    /// ([`budget_for`]).
    moved: Arc<Budget>,
    forwards: Vec<(String, u16)>,
    /// Set once the sandbox is gone: every connection still relayed ends.
    ended: watch::Sender<bool>,
    /// `HOST:PORT` → why the effect path refused it (at most [`MAX_REFUSED_TARGETS`]).
    refused: Mutex<std::collections::HashMap<String, String>>,
    /// New connections (`[egress] connections_per_second`, `connections_burst`).
    bucket: Mutex<Bucket>,
    refusals: Mutex<Refusals>,
}

/// The refusals of one sandbox's current window: how many were recorded one by one, and how
/// many were counted past them.
struct Refusals {
    window_start: Instant,
    recorded: u32,
    counted: u64,
    /// The sandbox is gone and its count recorded: any later refusal is recorded itself.
    ended: bool,
}

impl Refusals {
    /// The record of the refusals counted and not yet recorded, if any (the count restarts).
    fn take_count(&mut self) -> Option<serde_json::Value> {
        let n = std::mem::take(&mut self.counted);
        (n > 0).then(|| {
            serde_json::json!({
                "unrecorded": n,
                "reason": format!(
                    "{n} further refused connections were counted, not recorded one by one (at most {REFUSALS_RECORDED_PER_WINDOW} each {REFUSAL_WINDOW:?})"
                ),
            })
        })
    }
}

impl Shared {
    fn event(&self, kind: Kind, mut detail: serde_json::Value) -> Event {
        if let (Some(p), Some(map)) = (&self.egress.owner.plugin, detail.as_object_mut()) {
            map.insert("plugin".into(), p.clone().into());
        }
        Event {
            kind,
            actor: self.egress.owner.actor.as_str().into(),
            correlation: self.egress.owner.correlation.as_str().into(),
            detail: detail.into(),
        }
    }

    /// Records a refused connection, unless this window's records are spent (then it is
    /// counted, and the count recorded when the window or the sandbox ends).
    async fn denied(&self, host: &str, port: u16, via: &str, reason: &str) {
        self.denied_as(host, port, via, None, reason).await;
    }

    /// [`Shared::denied`], with the refusal's class as `code` in the record (`sni_mismatch`,
    /// `not_tls`, …) where one names it.
    async fn denied_as(&self, host: &str, port: u16, via: &str, code: Option<&str>, reason: &str) {
        let mut out = Vec::new();
        {
            let mut r = self
                .refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            if now.duration_since(r.window_start) >= REFUSAL_WINDOW {
                out.extend(r.take_count());
                r.window_start = now;
                r.recorded = 0;
            }
            if r.ended || r.recorded < REFUSALS_RECORDED_PER_WINDOW {
                r.recorded = r.recorded.saturating_add(1);
                let mut d = serde_json::json!({
                    "host": host, "port": port, "via": via, "reason": reason,
                });
                if let (Some(c), Some(map)) = (code, d.as_object_mut()) {
                    map.insert("code".into(), c.into());
                }
                out.push(d);
            } else {
                r.counted += 1;
            }
        }
        for detail in out {
            self.egress
                .audit
                .record_later(self.event(Kind::NetDenied, detail))
                .await;
        }
    }

    /// The sandbox is gone: the record of its refusals still counted, if any; from now on
    /// every refusal (of a connection still being decided) is recorded itself.
    fn refusals_end(&self) -> Option<Event> {
        let mut r = self
            .refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        r.ended = true;
        r.take_count().map(|d| self.event(Kind::NetDenied, d))
    }

    fn grants_text(&self) -> String {
        let g: Vec<String> = self.egress.grants.iter().map(NetGrant::to_string).collect();
        g.join(", ")
    }
}

/// Resolves `host` once with loongd's resolver and checks every address: the addresses to
/// dial, or why not. An IP literal is not looked up.
async fn vet(
    s: &Shared,
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, String> {
    let setting = s
        .egress
        .private_setting
        .unwrap_or(resolve::CONNECTOR_PRIVATE_SETTING);
    let vetted = s
        .egress
        .resolver
        .vet_for(host, port, allow_private, setting)
        .await;
    vetted.map_err(|e| match (e, s.egress.private_setting) {
        (
            Refusal::Private {
                host, addr, range, ..
            },
            None,
        ) => {
            let shown = SocketAddr::new(addr, port);
            format!("{host} resolves to {addr}, {range}; grant the address itself (--allow-net {shown}) to reach it")
        }
        (other, _) => other.to_string(),
    })
}

/// Asks the effect path of the request that started the sandbox about `host:port`; a refusal
/// is remembered, and answers later questions about the same destination.
async fn ask(s: &Shared, ask: &mpsc::Sender<Ask>, host: &str, port: u16) -> Result<(), String> {
    let target = format!("{host}:{port}");
    let known = s
        .refused
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&target)
        .cloned();
    if let Some(why) = known {
        return Err(why);
    }
    let answer = ask_once(ask, &target).await;
    if let Err(why) = &answer {
        let mut refused = s
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if refused.len() < MAX_REFUSED_TARGETS {
            refused.insert(target, why.clone());
        }
    }
    answer
}

async fn ask_once(ask: &mpsc::Sender<Ask>, target: &str) -> Result<(), String> {
    let (tx, rx) = oneshot::channel();
    let target = target.to_string();
    let ended =
        || format!("net.egress on {target}: the request that started the sandbox has ended");
    ask.send((target.clone(), tx)).await.map_err(|_| ended())?;
    rx.await
        .map_err(|_| ended())?
        .map_err(|why| format!("net.egress on {target} denied: {why}"))
}

/// Resolves when an open connection to `host:port`, decided on a request's effect path, is
/// refused on it now (a token was revoked since `decided_at`, the revocation count before its
/// decision); never for a worker's.
async fn withdrawn(s: &Shared, host: &str, port: u16, decided_at: u64) -> String {
    let Some(decide) = &s.egress.decide else {
        return std::future::pending().await;
    };
    let mut changes = authority().subscribe();
    if *changes.borrow_and_update() != decided_at {
        // A revocation landed while the connection was being decided or dialled.
        changes.mark_changed();
    }
    loop {
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
        if let Err(why) = ask(s, decide, host, port).await {
            return why;
        }
    }
}

/// Decides and vets `host:port`: the addresses to dial, or why not.
async fn admit(s: &Shared, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if !s.egress.grants.iter().any(|g| g.admits(host, port)) {
        return Err(format!(
            "{host}:{port} is not granted to {}; grants: {}",
            s.egress.owner.named(),
            s.grants_text()
        ));
    }
    if s.moved.current() >= s.egress.max_bytes {
        return Err(format!(
            "{} has moved its limit of {} bytes through the broker",
            s.egress.owner.named(),
            s.egress.max_bytes
        ));
    }
    if let Some(decide) = &s.egress.decide {
        ask(s, decide, host, port).await?;
    }
    // A grant that names this address literally allows it, private or not.
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| s.egress.grants.iter().any(|g| g.names_ip(ip)));
    vet(s, host, port, s.egress.allow_private || literal).await
}

/// Dials the first vetted address that answers.
async fn dial(addrs: &[SocketAddr]) -> Result<(TcpStream, SocketAddr), String> {
    let mut why = String::from("no address to connect to");
    for a in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => return Ok((s, *a)),
            Ok(Err(e)) => why = format!("connecting to {a}: {e}"),
            Err(_) => why = format!("connecting to {a}: no answer within {CONNECT_TIMEOUT:?}"),
        }
    }
    Err(why)
}

/// A plain-text answer to the sandbox's program, then the connection is closed. It carries
/// `Proxy-Status: loongd` (RFC 9209): the answer is the broker's, not the destination's (a
/// channel worker retries the broker's `429` on a short back-off of its own, not the
/// platform's seconds).
async fn answer(client: &mut TcpStream, status: &str, body: &str) {
    let body = format!("loong egress: {body}\n");
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nProxy-Status: loongd\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(text.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// Reads a proxy request head: the head and whatever followed it.
async fn read_head(client: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = client
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            return Err("the request ended before its head did".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head::head_end(&buf) {
            let rest = buf.split_off(end);
            if buf.len() > MAX_HEAD_BYTES {
                return Err(head::HeadError::TooLarge.to_string());
            }
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(head::HeadError::TooLarge.to_string());
        }
    }
}

/// One connection the relay passed.
async fn connection(s: Arc<Shared>, tag: u8, conn: OwnedFd) {
    let std = std::net::TcpStream::from(conn);
    if std.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(mut client) = TcpStream::from_std(std) else {
        return;
    };
    // Both sides without Nagle's delay: a relayed write goes on at once, as the program's own
    // would on a direct connection (with it, a small write behind an unacknowledged one waits
    // for the peer's delayed ACK, tens of milliseconds).
    let _ = client.set_nodelay(true);
    let via = if tag == 0 { "proxy" } else { "forward" };
    let t = tuning();
    let admitted = s
        .bucket
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take(t);
    if !admitted {
        let why = format!(
            "{} opens new connections faster than {} per second (at most {} at once), its limit ([egress] connections_per_second, connections_burst); retry later",
            s.egress.owner.named(),
            t.per_second,
            t.burst
        );
        s.denied_as("", 0, via, Some("rate_limited"), &why).await;
        if tag == 0 {
            answer(&mut client, "429 Too Many Requests", &why).await;
        }
        return;
    }
    let Ok(_slot) = s.slots.clone().try_acquire_owned() else {
        let why = format!(
            "{} has {} connections open, its limit",
            s.egress.owner.named(),
            s.egress.max_connections
        );
        s.denied("", 0, via, &why).await;
        if tag == 0 {
            answer(&mut client, "503 Service Unavailable", &why).await;
        }
        return;
    };
    let (max_total, all) = total();
    let Ok(_all) = all.clone().try_acquire_owned() else {
        let why = format!(
            "loongd's egress broker has {max_total} connections open for all sandboxes, its limit ([egress] max_total_connections)"
        );
        s.denied("", 0, via, &why).await;
        if tag == 0 {
            answer(&mut client, "503 Service Unavailable", &why).await;
        }
        return;
    };
    OPEN.fetch_add(1, Ordering::Relaxed);
    let _open = Count(&OPEN);
    let (host, port, first) = if tag == 0 {
        let got = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await;
        let (head, rest) = match got {
            Ok(Ok(h)) => h,
            Ok(Err(why)) => {
                s.denied("", 0, via, &why).await;
                answer(&mut client, "400 Bad Request", &why).await;
                return;
            }
            Err(_) => {
                let why = format!("no whole request head within {HEAD_TIMEOUT:?}");
                s.denied("", 0, via, &why).await;
                answer(&mut client, "408 Request Timeout", &why).await;
                return;
            }
        };
        match head::parse(&head) {
            Ok(req) => {
                let (h, p) = req.authority();
                let (h, p) = (h.to_string(), p);
                let first = match req {
                    head::ProxyRequest::Connect { .. } => Err(rest),
                    head::ProxyRequest::Forward { head, .. } => {
                        let mut out = head;
                        out.extend_from_slice(&rest);
                        Ok(out)
                    }
                };
                (h, p, first)
            }
            Err(e) => {
                let why = e.to_string();
                s.denied("", 0, via, &why).await;
                answer(&mut client, "400 Bad Request", &why).await;
                return;
            }
        }
    } else {
        match s.forwards.get(usize::from(tag) - 1) {
            Some((h, p)) => (h.clone(), *p, Ok(Vec::new())),
            None => {
                s.denied("", 0, via, &format!("no forward {tag}")).await;
                return;
            }
        }
    };
    let decided_at = *authority().borrow();
    let (mut upstream, addr) = match admit(&s, &host, port).await {
        Err(why) => {
            s.denied(&host, port, via, &why).await;
            if tag == 0 {
                answer(&mut client, "403 Forbidden", &why).await;
            }
            return;
        }
        Ok(addrs) => match dial(&addrs).await {
            Ok(u) => u,
            Err(why) => {
                s.denied(&host, port, via, &why).await;
                if tag == 0 {
                    answer(&mut client, "502 Bad Gateway", &why).await;
                }
                return;
            }
        },
    };
    let _ = upstream.set_nodelay(true);
    let detail = serde_json::json!({
        "host": host, "port": port, "address": addr.to_string(), "via": via,
    });
    s.egress
        .audit
        .record_later(s.event(Kind::NetConnected, detail))
        .await;
    let started = Instant::now();
    // CONNECT: the tunnel is open, and bytes the client sent early are the start of its TLS
    // hello, held with the rest of it until its server name is checked (the gate); a raw
    // forward: its first bytes are checked the same way if they start a TLS hello; a
    // forwarded request: its rewritten head (and early body bytes) go first, unchecked (the
    // head names the destination itself).
    let (first, gate) = match first {
        Err(early) => (Vec::new(), Some(Gate::new(&host, true, early))),
        Ok(head) if tag != 0 => (head, Some(Gate::new(&host, false, Vec::new()))),
        Ok(head) => (head, None),
    };
    let tunnel = gate.as_ref().is_some_and(|g| g.tls_only);
    let ready = (!tunnel
        || client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_ok())
        && upstream.write_all(&first).await.is_ok();
    let sent = first.len() as u64;
    s.moved.bytes.fetch_add(sent, Ordering::Relaxed);
    let (out, back) = (AtomicU64::new(sent), AtomicU64::new(0));
    let mut reason = None;
    let mut refused = None;
    let outcome = if ready {
        // The relay ends when the sandbox does, even in the middle of a write to a
        // destination that neither reads nor closes.
        // And when the token it was decided under is revoked.
        let mut ended = s.ended.subscribe();
        let mut stop = stopping().subscribe();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => "loongd_stopped",
            o = pump(&s, &mut client, &mut upstream, (&out, &back), gate, &mut refused) => o,
            _ = ended.wait_for(|e| *e) => "sandbox_ended",
            why = withdrawn(&s, &host, port, decided_at) => {
                reason = Some(why);
                "withdrawn"
            }
        }
    } else {
        "reset"
    };
    let (out, back) = (out.into_inner(), back.into_inner());
    if let Some((code, why)) = &refused {
        s.denied_as(&host, port, via, Some(code), why).await;
        reason = Some(why.clone());
    }
    let mut detail = serde_json::json!({
        "host": host, "port": port, "address": addr.to_string(), "via": via,
        "bytes_out": out, "bytes_in": back,
        "duration_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "outcome": outcome,
    });
    if let (Some(why), Some(map)) = (reason, detail.as_object_mut()) {
        map.insert("reason".into(), why.into());
    }
    s.egress
        .audit
        .record_later(s.event(Kind::NetClosed, detail))
        .await;
}

/// The check of the first bytes a program sends on a tunnel or a raw forward: they are held
/// until they are a whole TLS ClientHello whose server name is the destination's host, then
/// passed on; a CONNECT tunnel carries TLS only, a forward carries any protocol, but a TLS
/// hello on it is checked the same way. So a session opened to a granted host is for that
/// host: a program cannot reach another site behind the same address (a CDN's, a shared
/// host's) by naming it in the hello (domain fronting).
struct Gate {
    host: String,
    tls_only: bool,
    held: Vec<u8>,
}

/// What the gate says of the bytes held so far.
enum Verdict {
    Wait,
    Pass,
    /// The refusal's code and reason.
    Refuse(&'static str, String),
}

impl Gate {
    fn new(host: &str, tls_only: bool, held: Vec<u8>) -> Gate {
        Gate {
            host: host.to_string(),
            tls_only,
            held,
        }
    }

    fn verdict(&self) -> Verdict {
        match self.held.first() {
            None => return Verdict::Wait,
            Some(b) if *b != hello::HANDSHAKE_RECORD && !self.tls_only => return Verdict::Pass,
            Some(_) => {}
        }
        let code = |e: &hello::HelloError| match e {
            hello::HelloError::NotTls => "not_tls",
            _ => "sni_mismatch",
        };
        match hello::parse(&self.held) {
            Ok(hello::Hello::Incomplete) => Verdict::Wait,
            Ok(hello::Hello::Whole(sni)) if hello::matches(&self.host, sni.as_deref()) => {
                Verdict::Pass
            }
            Ok(hello::Hello::Whole(sni)) => Verdict::Refuse(
                "sni_mismatch",
                match sni {
                    Some(name) => format!(
                        "the TLS ClientHello names {name:?}, not {:?}, the host this connection was granted for",
                        self.host
                    ),
                    None => format!(
                        "the TLS ClientHello names no server, and {:?} must be named (a session for a name must say it)",
                        self.host
                    ),
                },
            ),
            Err(e) => Verdict::Refuse(code(&e), e.to_string()),
        }
    }
}

/// Relays both ways until both sides are done, counting bytes against the sandbox's limit
/// and in `(to the destination, from it)`: the outcome. With a `gate`, the program's first
/// bytes pass only once it says so; its refusal (code, reason) is put in `refused`.
async fn pump(
    s: &Shared,
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    (out, back): (&AtomicU64, &AtomicU64),
    mut gate: Option<Gate>,
    refused: &mut Option<(&'static str, String)>,
) -> &'static str {
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = upstream.split();
    let (mut a, mut b) = (vec![0u8; RELAY_BUFFER_BYTES], vec![0u8; RELAY_BUFFER_BYTES]);
    let (mut c_open, mut u_open) = (true, true);
    let idle = tuning().idle;
    let quiet = tokio::time::sleep(idle);
    tokio::pin!(quiet);
    // Bytes the program sent with its CONNECT may be its whole hello already.
    if let Some(g) = gate.as_mut().filter(|g| !g.held.is_empty()) {
        match g.verdict() {
            Verdict::Wait => {}
            Verdict::Refuse(code, why) => {
                *refused = Some((code, why));
                return code;
            }
            Verdict::Pass => {
                let held = std::mem::take(&mut g.held);
                gate = None;
                if let Some(o) = pass(s, &mut uw, &held, out).await {
                    return o;
                }
            }
        }
    }
    while c_open || u_open {
        let (n, to_upstream) = tokio::select! {
            r = cr.read(&mut a), if c_open => (r, true),
            r = ur.read(&mut b), if u_open => (r, false),
            () = &mut quiet => return "idle_timeout",
        };
        quiet.as_mut().reset(tokio::time::Instant::now() + idle);
        let n = match n {
            Ok(n) => n,
            Err(_) => return "reset",
        };
        if to_upstream {
            if let Some(g) = gate.as_mut() {
                // Held until the gate decides; a program that stops sending mid-hello has
                // sent no hello.
                g.held.extend_from_slice(&a[..n]);
                let verdict = match g.verdict() {
                    Verdict::Wait if n == 0 && !g.held.is_empty() => Verdict::Refuse(
                        "sni_mismatch",
                        "the program closed its side before its TLS ClientHello was whole".into(),
                    ),
                    v => v,
                };
                match verdict {
                    Verdict::Wait if n > 0 => continue,
                    Verdict::Wait => {}
                    Verdict::Refuse(code, why) => {
                        *refused = Some((code, why));
                        return code;
                    }
                    Verdict::Pass => {
                        let held = std::mem::take(&mut g.held);
                        gate = None;
                        if let Some(o) = pass(s, &mut uw, &held, out).await {
                            return o;
                        }
                        if n > 0 {
                            continue;
                        }
                    }
                }
            }
        }
        if n == 0 {
            // One side finished sending: pass the half-close on.
            if to_upstream {
                c_open = false;
                let _ = uw.shutdown().await;
            } else {
                u_open = false;
                let _ = cw.shutdown().await;
            }
            continue;
        }
        let passed = if to_upstream {
            pass(s, &mut uw, &a[..n], out).await
        } else {
            pass(s, &mut cw, &b[..n], back).await
        };
        if let Some(o) = passed {
            return o;
        }
    }
    "closed"
}

/// Writes `data` to `to` and counts it in `count`, within the sandbox's byte budget: only
/// what is left of it is passed on (a chunk that crosses it is cut at the limit, whatever
/// size the reads came in). The outcome if the relay ends here.
async fn pass(
    s: &Shared,
    to: &mut (impl AsyncWriteExt + Unpin),
    data: &[u8],
    count: &AtomicU64,
) -> Option<&'static str> {
    let n = data.len();
    let before = s.moved.bytes.fetch_add(n as u64, Ordering::Relaxed);
    let left = s.egress.max_bytes.saturating_sub(before);
    let pass = usize::try_from(left).map_or(n, |l| l.min(n));
    count.fetch_add(pass as u64, Ordering::Relaxed);
    if to.write_all(&data[..pass]).await.is_err() {
        return Some("reset");
    }
    if pass < n || before.saturating_add(n as u64) > s.egress.max_bytes {
        return Some("byte_limit");
    }
    None
}
