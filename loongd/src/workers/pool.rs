//! A pool of worker processes of one kind, each in its tier's sandbox, each running one call
//! at a time.
//!
//! - A call takes a permit (at most the pool's size run at once; the rest queue until their
//!   deadline), then an idle worker, or spawns one (a cold start).
//! - A worker that dies, breaks the protocol or overruns a call's deadline is killed and
//!   retired: that call fails with the fault's class, the death is audited (`worker.exited`,
//!   with its signal, exit code and OOM flag), and a replacement is started in the
//!   background with exponential backoff.
//! - Idle workers are pinged every [`HEALTH_INTERVAL`]; a silent one is retired.
//! - Plugins are loaded into a worker the first time it runs them (the module travels over
//!   the socket); a worker remembers the plugin generations it has loaded.
//! - A pool that keeps a spare ([`Supervisor::keep_spare`], the WASM pool by default) starts
//!   one worker ahead of need whenever some plugin runs in it, none is idle and the pool has
//!   room: after discovery, when a call takes the last idle worker, and when a worker is
//!   killed. A spare is
//!   spawned by the same [`Supervisor::spawn`] as any worker of its kind (the same sandbox,
//!   the same limits); it has loaded nothing and is specialised only when a call takes it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use loong_ipc::{
    connection::{handshake_as_caller, FrameReader, FrameWriter},
    frame::FrameLimit,
    message::worker::WORKER_MAX_FRAME_BYTES,
    CallOutput, FailureClass, Hello, PeerKind, PluginFailure, RemoteError, ToolInfo, WorkerRequest,
    WorkerResponse, WorkerView,
};
use loong_sandbox::{KernelOverrides, Killer, Limits, SandboxSpec, Spawner, StdioSpec};
use tokio::sync::Semaphore;

use super::{
    broker, compiled,
    kind::{Loadable, WorkerKind},
    worker::{
        kill_now, log_stderr, KernelCalls, Worker, WorkerFault, WORKER_START_TIMEOUT, WRITE_TIMEOUT,
    },
};
use crate::audit::{Audit, Event, Kind};

/// How long a plugin load (compilation in the worker) may take.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How often idle workers are pinged.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// First and longest delay between attempts to replace a retired worker.
pub const RESTART_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_secs(5));
/// Replacement attempts before the pool waits for the next call to spawn on demand.
pub const RESTART_ATTEMPTS: u32 = 6;
/// How long a service's `Serve` request may run before loongd retires the worker and
/// starts another (the most a request's deadline says on the wire, about 49 days).
pub const SERVE_DEADLINE: Duration = Duration::from_millis(u32::MAX as u64);
/// How long loongd waits for a killed idle worker to be reaped when a pool stops.
pub const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// A nested call that finds its pool busy runs on an extra worker while fewer than this
/// many times the pool's size are live (it would otherwise wait for a worker its own chain
/// holds); past it, it queues like any call.
pub const NESTED_OVERFLOW_FACTOR: usize = 4;
/// The extra checkouts nested calls may make past a pool of `pool_size`.
fn spare_permits(pool_size: usize) -> usize {
    pool_size.saturating_mul(NESTED_OVERFLOW_FACTOR.saturating_sub(1))
}

/// How long a replaced pool may finish the calls it runs before it is stopped.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a call did not produce an output.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The plugin failed (refused at load, trapped, timed out, …); its worker is fine.
    #[error("{}: {}", .0.kind.name(), .0.message)]
    Plugin(PluginFailure),
    /// The worker failed (died, overran the deadline, broke the protocol: the class says
    /// which) and was retired.
    #[error("{1}")]
    Worker(FailureClass, String),
    /// No worker could be had (sandbox unavailable, spawn failed, the pool closed).
    #[error("{0}")]
    Unavailable(String),
    /// Every worker stayed busy until the call's queue deadline passed: nothing is wrong but
    /// the load, and the call may be made again later (answered as `overloaded`).
    #[error("{0}")]
    Busy(String),
}

impl CallError {
    /// The failure's class, as the caller is answered and `tool.failed` records it.
    pub(crate) fn class(&self) -> FailureClass {
        match self {
            CallError::Plugin(f) => FailureClass::Plugin(f.kind),
            CallError::Worker(class, _) => *class,
            CallError::Unavailable(_) | CallError::Busy(_) => FailureClass::Unavailable,
        }
    }

    /// What happened, for people (the class is not repeated).
    pub(crate) fn message(&self) -> &str {
        match self {
            CallError::Plugin(f) => &f.message,
            CallError::Worker(_, why) | CallError::Unavailable(why) | CallError::Busy(why) => why,
        }
    }
}

/// A finished call: what the worker answered and which worker it was.
#[derive(Debug)]
pub(crate) struct Called {
    pub worker: u64,
    pub result: Result<CallOutput, CallError>,
    /// What loading the plugin told, when this call was the one that loaded it into its
    /// worker and then answered.
    pub loaded: Option<LoadInfo>,
}

/// What a checked-out worker is asked to do.
#[derive(Debug)]
enum Job {
    /// Load the plugin (discovery's check).
    Check,
    /// Call `tool` with this input, loading the plugin first when needed; `decided` is the
    /// file a built-in file tool's call was decided on.
    Call {
        tool: String,
        input: Vec<u8>,
        decided: Option<loong_ipc::DecidedFile>,
    },
}

/// What a load told about the plugin.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadInfo {
    /// Whether a worker has loaded it (a deferred plugin's is not known before its first
    /// call).
    pub loaded: bool,
    /// A WASM module's sha256.
    pub sha256: Option<String>,
    /// A foreign program's tools: shared by every copy of the plugin set that holds them
    /// (a set is copied whole by an install, a revocation or a deferred plugin's first load).
    pub tools: Arc<[ToolInfo]>,
    /// A WASM module's compiled form: `mapped` (from the cache), `compiled`, or `refused:
    /// WHY; compiled`.
    pub compiled: Option<String>,
}

/// What a job produced.
#[derive(Debug)]
enum Done {
    Loaded(LoadInfo),
    /// A call's output, and what the load before it told when the call made one.
    Output(CallOutput, Option<LoadInfo>),
}

/// Worker ids are unique across every pool.
static NEXT_WORKER_ID: AtomicU64 = AtomicU64::new(1);

/// What `workers list` shows of one worker.
#[derive(Debug)]
struct Entry {
    pid: u32,
    started_ms: i64,
    busy: Option<String>,
    calls: u64,
    killer: Killer,
    /// Who killed it through `workers kill`, for its exit record.
    killed_by: Option<String>,
    /// Never checked out yet: listed as `spare`.
    fresh: bool,
}

/// The supervisor.
#[derive(Debug)]
pub(crate) struct Supervisor {
    kind: WorkerKind,
    spawner: Result<Arc<Spawner>, crate::spawner::SpawnerUnavailable>,
    allow_degraded: bool,
    audit: Audit,
    permits: Semaphore,
    /// The extra checkouts nested calls may make past the pool's size: taken before the
    /// extra worker is spawned, so that racing nested calls cannot all see room.
    spare: Semaphore,
    pool_size: usize,
    idle: Mutex<Vec<Worker>>,
    table: Mutex<BTreeMap<u64, Entry>>,
    stopping: AtomicBool,
    /// loongd's resolver, for a fetch's URL.
    resolver: Arc<crate::egress::resolve::Resolver>,
    /// Whether one worker is kept started ahead of need.
    keep_spare: bool,
    /// A spare is being started (at most one at a time).
    spare_starting: AtomicBool,
    /// Some plugin runs in this pool (a pool with none keeps no spare).
    spare_wanted: AtomicBool,
    /// Told when a spare has started (or failed to): a call that found none idle while one
    /// was starting waits for it instead of spawning one more.
    spare_ready: tokio::sync::Notify,
    /// Spawns under way, counted with the live workers against the pool's size.
    starting: std::sync::atomic::AtomicUsize,
    /// The compiled-module cache, for a pool of WASM workers.
    compiled: Option<Arc<compiled::Store>>,
    /// Each worker serves the calls of one principal only (the agent's pool: a worker keeps
    /// what a turn sent it, and one taken over would see the next turn's whole input): a
    /// worker that served one is retired rather than given to another.
    one_principal: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Supervisor {
    /// A supervisor of `pool_size` workers of `kind`.
    pub(crate) fn new(
        kind: WorkerKind,
        spawner: Result<Arc<Spawner>, crate::spawner::SpawnerUnavailable>,
        allow_degraded: bool,
        pool_size: usize,
        audit: Audit,
        resolver: Arc<crate::egress::resolve::Resolver>,
    ) -> Supervisor {
        let kind_is_agent = kind.name == WorkerKind::AGENT;
        Supervisor {
            resolver,
            kind,
            spawner,
            allow_degraded,
            audit,
            permits: Semaphore::new(pool_size),
            spare: Semaphore::new(spare_permits(pool_size)),
            pool_size,
            idle: Mutex::default(),
            table: Mutex::default(),
            stopping: AtomicBool::new(false),
            keep_spare: false,
            spare_starting: AtomicBool::new(false),
            spare_wanted: AtomicBool::new(false),
            spare_ready: tokio::sync::Notify::new(),
            starting: std::sync::atomic::AtomicUsize::new(0),
            compiled: None,
            one_principal: kind_is_agent,
        }
    }

    /// The same pool, keeping compiled modules in `store`.
    pub(crate) fn compiled_store(mut self, store: compiled::Store) -> Supervisor {
        self.compiled = Some(Arc::new(store));
        self
    }

    /// The same pool, keeping one spare worker started ahead of need when `on`.
    pub(crate) fn keep_spare(mut self, on: bool) -> Supervisor {
        self.keep_spare = on;
        self
    }

    /// Tells the pool whether any plugin runs in it (after each discovery); one that keeps a
    /// spare starts it now when it has none.
    pub(crate) fn want_spare(self: &Arc<Self>, wanted: bool) {
        self.spare_wanted.store(wanted, Ordering::Relaxed);
        self.ensure_spare();
    }

    /// Starts a spare worker in the background when the pool keeps one, some plugin runs in
    /// it, none is idle, none is starting, and the pool has room for it (a spare counts in
    /// the pool's size).
    pub(crate) fn ensure_spare(self: &Arc<Self>) {
        if !self.keep_spare
            || !self.spare_wanted.load(Ordering::Relaxed)
            || self.stopping.load(Ordering::Relaxed)
            || !lock(&self.idle).is_empty()
            || self.live() + self.starting.load(Ordering::Acquire) >= self.pool_size
            || self.spare_starting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let started = me.spawn().await;
            match started {
                Ok(w) => me.give_back(w),
                Err(e) => {
                    tracing::warn!(error = %e, kind = me.kind.name, "starting a spare worker failed")
                }
            }
            me.spare_starting.store(false, Ordering::Release);
            me.spare_ready.notify_waiters();
        });
    }

    /// Runs `plugin` on `input` in a worker; `decided` is the file a built-in file tool's
    /// call was decided on (the only one its worker opens); `correlation` ties the worker's
    /// records to the call's; `host` serves the kernel calls the worker makes meanwhile.
    /// Waits for a free worker at most `queue_deadline`, except a nested call (`nested`),
    /// which never waits for a worker its own chain may hold: when the pool is busy it runs
    /// on an extra worker (at most [`NESTED_OVERFLOW_FACTOR`] times the pool's size live),
    /// stopped when it is given back. `principal` names whose call it is (a token's public
    /// id, or the operator's own): in a pool that keeps one principal per worker, it runs
    /// only on a worker that has served no one else.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn call(
        self: &Arc<Self>,
        plugin: &Loadable,
        tool: &str,
        input: Vec<u8>,
        decided: Option<loong_ipc::DecidedFile>,
        queue_deadline: Duration,
        correlation: &str,
        host: Option<&dyn KernelCalls>,
        nested: bool,
        principal: &str,
    ) -> Called {
        let job = Job::Call {
            tool: tool.to_string(),
            input,
            decided,
        };
        let (worker, result) = self
            .run(
                plugin,
                job,
                queue_deadline,
                correlation,
                host,
                nested,
                Some(principal),
            )
            .await;
        let mut loaded = None;
        let result = result.and_then(|done| match done {
            Done::Output(out, info) => {
                loaded = info;
                Ok(out)
            }
            Done::Loaded(_) => Err(CallError::Worker(
                FailureClass::WorkerProtocol,
                "internal: a call answered as a load".into(),
            )),
        });
        Called {
            worker,
            result,
            loaded,
        }
    }

    /// Loads `plugin` in a worker without calling it (discovery's check); the answer says
    /// whether the module is acceptable and gives its digest, or the program's tools.
    pub(crate) async fn check_load(
        self: &Arc<Self>,
        plugin: &Loadable,
    ) -> Result<LoadInfo, CallError> {
        let (_, result) = self
            .run(plugin, Job::Check, LOAD_TIMEOUT, "", None, false, None)
            .await;
        match result? {
            Done::Loaded(info) => Ok(info),
            Done::Output(..) => Err(CallError::Worker(
                FailureClass::WorkerProtocol,
                "internal: a load answered as a call".into(),
            )),
        }
    }

    /// Checks a worker out under a permit, runs `job` on it and gives it back, or retires it
    /// (and starts a replacement) when it failed. Returns the worker's id (0: none was had).
    /// A call's `principal` is kept on the worker it ran on (a check's, `None`, is not).
    #[allow(clippy::too_many_arguments)]
    async fn run(
        self: &Arc<Self>,
        plugin: &Loadable,
        job: Job,
        queue_deadline: Duration,
        correlation: &str,
        host: Option<&dyn KernelCalls>,
        nested: bool,
        principal: Option<&str>,
    ) -> (u64, Result<Done, CallError>) {
        let unavailable = |why: String| (0, Err(CallError::Unavailable(why)));
        let permit = match self.permits.try_acquire() {
            Ok(p) => p,
            Err(_) => match self.spare.try_acquire().ok().filter(|_| nested) {
                Some(p) => p,
                None => match tokio::time::timeout(queue_deadline, self.permits.acquire()).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return unavailable("the worker pool is closed".into()),
                    Err(_) => {
                        return (
                            0,
                            Err(CallError::Busy(format!(
                                "no {} worker became free within {} ms; try again later",
                                self.kind.name,
                                queue_deadline.as_millis()
                            ))),
                        )
                    }
                },
            },
        };
        let mut worker = match self.take_or_spawn(principal).await {
            Ok(w) => w,
            Err(why) => return unavailable(why),
        };
        if self.one_principal {
            if let Some(p) = principal {
                worker.principal = Some(p.to_owned());
            }
        }
        let id = worker.id;
        self.mark(id, Some(&plugin.id));
        // The next call should not wait for a spawn either.
        self.ensure_spare();
        let mut out = Checkout {
            sup: self.clone(),
            worker: Some(worker),
            correlation,
        };
        let result = self.run_on(out.worker(), plugin, job, host).await;
        let worker = out.release();
        match result {
            Ok(r) => {
                self.mark(id, None);
                // Back in the idle list before the permit is free: a call that takes the
                // permit must find it there, or it would spawn one worker too many.
                self.give_back(worker);
                drop(permit);
                (id, r)
            }
            Err(fault) => {
                drop(permit);
                let why = format!("worker {id} failed: {fault}");
                if let WorkerFault::Protocol(what) = &fault {
                    self.audit
                        .record_later(Event {
                            kind: Kind::ProtocolViolation,
                            actor: format!("worker:{id}").into(),
                            correlation: correlation.into(),
                            detail: serde_json::json!({
                                "worker": id, "plugin": plugin.id, "kind": self.kind.name,
                                "violation": what, "retired": true,
                            })
                            .into(),
                        })
                        .await;
                }
                self.retire(worker, &why, correlation).await;
                self.replace_in_background();
                (id, Err(CallError::Worker(fault.class(), why)))
            }
        }
    }

    /// Loads the plugin into `worker` (always for a check; for a call, unless this generation
    /// is loaded already), then calls it for a call. A plugin's own failure is the inner
    /// `Err`; a worker that misbehaves is the outer one.
    async fn run_on(
        &self,
        worker: &mut Worker,
        plugin: &Loadable,
        job: Job,
        host: Option<&dyn KernelCalls>,
    ) -> Result<Result<Done, CallError>, WorkerFault> {
        let id = &plugin.id;
        let loaded = worker.loaded.get(id) == Some(&plugin.generation);
        let info = if matches!(job, Job::Check) || !loaded {
            let (request, prepared) = self.prepare_load(plugin, worker.served).await;
            let info = match worker.request(request, LOAD_TIMEOUT).await? {
                WorkerResponse::Loaded {
                    sha256,
                    compiled_use,
                    compiled,
                    ..
                } => {
                    if let Some(c) = compiled {
                        let c = compiled::accept(&prepared, worker.served, c)
                            .map_err(|e| WorkerFault::Protocol(e.to_string()))?;
                        self.store_compiled(c);
                    }
                    LoadInfo {
                        loaded: true,
                        sha256: Some(sha256),
                        tools: Arc::default(),
                        compiled: Some(compiled_note(&prepared, &compiled_use)),
                    }
                }
                WorkerResponse::Described(tools) => {
                    loong_ipc::message::worker::check_tools(&tools)
                        .map_err(|e| WorkerFault::Protocol(format!("tool list: {e}")))?;
                    LoadInfo {
                        loaded: true,
                        sha256: None,
                        tools: tools.into(),
                        compiled: None,
                    }
                }
                WorkerResponse::Failed(f) => {
                    claims_only_its_own(self.kind.name, &f)?;
                    return Ok(Err(CallError::Plugin(f)));
                }
                other => {
                    return Err(WorkerFault::Protocol(format!(
                        "answered a load with {}",
                        other.name()
                    )))
                }
            };
            worker.loaded.insert(id.clone(), plugin.generation);
            info
        } else {
            LoadInfo::default()
        };
        let Job::Call {
            tool,
            mut input,
            decided,
        } = job
        else {
            return Ok(Ok(Done::Loaded(info)));
        };
        let deadline = plugin.call_deadline();
        // A connector's headers, its secrets filled in (before anything is connected).
        let (headers, used) = match broker::headers(&plugin.wire, id) {
            Ok(h) => h,
            Err(f) => return Ok(Err(CallError::Plugin(f))),
        };
        // A kind with a broker gets the connection loongd made for this call (a connector's
        // pinned endpoint, a fetch's checked URL) beside its input.
        match broker::route(&plugin.wire, id, &mut input, &self.resolver).await {
            Ok(None) => {}
            Ok(Some(conn)) => worker.pass_connection(&conn)?,
            Err(f) => return Ok(Err(CallError::Plugin(f))),
        }
        // From here guest code may run in it: no compiled module is taken from it again.
        worker.served = true;
        let invoke = WorkerRequest::Invoke {
            plugin_id: tool,
            input,
            decided,
            headers: headers
                .into_iter()
                .map(|(name, value)| (name, loong_ipc::SecretValue::new(value)))
                .collect(),
            cpus_to_spare: loong_ipc::spin::cpus_to_spare(),
        };
        let answer = worker.serve(invoke, deadline, host).await?;
        if let Some(e) = lock(&self.table).get_mut(&worker.id) {
            e.calls += 1;
        }
        match answer {
            // A worker's answer is checked, not trusted: bounds, and JSON as promised.
            WorkerResponse::Output(mut out) => {
                redact_output(&mut out, &used);
                out.check_bounds()
                    .map_err(|e| WorkerFault::Protocol(format!("answer out of bounds: {e}")))?;
                serde_json::from_slice::<serde::de::IgnoredAny>(&out.output)
                    .map_err(|e| WorkerFault::Protocol(format!("output is not JSON: {e}")))?;
                Ok(Ok(Done::Output(out, info.loaded.then_some(info))))
            }
            WorkerResponse::Failed(mut f) => {
                claims_only_its_own(self.kind.name, &f)?;
                // An upstream error that echoes a header must not carry its secret onward.
                f.message = crate::secrets::redact(&f.message, &used);
                Ok(Err(CallError::Plugin(f)))
            }
            other => Err(WorkerFault::Protocol(format!(
                "answered a call with {}",
                other.name()
            ))),
        }
    }

    /// The plugin's load request, with what the compiled-module cache adds to it (off the
    /// runtime: it hashes the module and reads a file).
    async fn prepare_load(
        &self,
        plugin: &Loadable,
        served: bool,
    ) -> (WorkerRequest, compiled::Prepared) {
        let Some(store) = self.compiled.clone() else {
            return (plugin.request(), compiled::Prepared::default());
        };
        let request = plugin.request();
        tokio::task::spawn_blocking(move || compiled::prepare(&store, request, served))
            .await
            .unwrap_or_else(|_| (plugin.request(), compiled::Prepared::default()))
    }

    /// Stores an artifact off the call's path; a failure costs only a later compilation.
    fn store_compiled(&self, c: loong_ipc::CompiledModule) {
        let Some(store) = self.compiled.clone() else {
            return;
        };
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.put(&c) {
                tracing::warn!(error = %e, module = %c.module_sha256, "storing a compiled module failed");
            }
        });
    }

    /// Workers spawned and not yet retired.
    fn live(&self) -> usize {
        lock(&self.table).len()
    }

    /// An idle worker that is still alive, or a new one. In a pool that keeps one principal
    /// per worker, only one that has served `principal` or no one is taken; when every idle
    /// one has served someone else, a new one is spawned, and when the pool is full one of
    /// those is retired first (the pool keeps its size).
    async fn take_or_spawn(self: &Arc<Self>, principal: Option<&str>) -> Result<Worker, String> {
        loop {
            let w = if self.one_principal {
                self.take_for(principal)
            } else {
                lock(&self.idle).pop()
            };
            match w {
                Some(w) if w.exited() => {
                    // Reaped (its sandbox and cgroup removed) and audited in the background:
                    // the call goes on to a live or new worker without waiting for that.
                    let killed_by = self.unregister(&w);
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.reap(w, killed_by, "found dead while idle", "").await;
                    });
                }
                Some(w) => return Ok(w),
                None if self.spare_starting.load(Ordering::Acquire) => {
                    // The spare is on its way: wait for it rather than spawn one more.
                    let ready = self.spare_ready.notified();
                    tokio::pin!(ready);
                    ready.as_mut().enable();
                    if self.spare_starting.load(Ordering::Acquire) {
                        let _ = tokio::time::timeout(WORKER_START_TIMEOUT, ready).await;
                    }
                    if lock(&self.idle).is_empty() {
                        return self.spawn().await;
                    }
                }
                None => return self.spawn().await,
            }
        }
    }

    /// An idle worker that has served `principal` or no one; when there is none and the pool
    /// is full, an idle one that served someone else is retired to make room for a new one.
    fn take_for(self: &Arc<Self>, principal: Option<&str>) -> Option<Worker> {
        // The table's lock is never taken under the idle list's.
        let room = self.live() + self.starting.load(Ordering::Acquire) < self.pool_size;
        let other = {
            let mut idle = lock(&self.idle);
            let mine = idle
                .iter()
                .position(|w| w.principal.as_deref() == principal)
                .or_else(|| idle.iter().position(|w| w.principal.is_none()));
            match mine {
                Some(i) => return Some(idle.swap_remove(i)),
                None if room => return None,
                None => idle.pop()?,
            }
        };
        // Out of the table now, so that the new one is counted in its place.
        let killed_by = self.unregister(&other);
        let me = self.clone();
        tokio::spawn(async move {
            me.reap(other, killed_by, "it served another principal", "")
                .await;
        });
        None
    }

    fn give_back(self: &Arc<Self>, worker: Worker) {
        if self.stopping.load(Ordering::Relaxed) {
            kill_now(&worker);
            return;
        }
        // A background replacement racing an on-demand spawn can make one worker too many.
        if self.live() > self.pool_size {
            let me = self.clone();
            tokio::spawn(async move { me.retire(worker, "above the pool size", "").await });
            return;
        }
        lock(&self.idle).push(worker);
    }

    fn mark(&self, id: u64, busy: Option<&str>) {
        if let Some(e) = lock(&self.table).get_mut(&id) {
            e.busy = busy.map(String::from);
            e.fresh = false;
        }
    }

    /// Spawns, handshakes and registers a worker; audited as `worker.spawned`. Counted in
    /// `starting` meanwhile.
    async fn spawn(self: &Arc<Self>) -> Result<Worker, String> {
        self.starting.fetch_add(1, Ordering::AcqRel);
        let spawned = self.spawn_counted().await;
        self.starting.fetch_sub(1, Ordering::AcqRel);
        spawned
    }

    async fn spawn_counted(self: &Arc<Self>) -> Result<Worker, String> {
        let spawner = self
            .spawner
            .clone()
            .map_err(|e| format!("sandboxes are unavailable: {e}"))?;
        let kind = &self.kind;
        if !kind.program.exists() {
            return Err(format!(
                "the {} worker {} is missing; install it next to loongd",
                kind.name,
                kind.program.display()
            ));
        }
        let id = NEXT_WORKER_ID.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let mut pass: Vec<std::os::fd::OwnedFd> = vec![theirs.into()];
        let broker = if kind.broker {
            let (b_ours, b_theirs) =
                std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
            pass.push(b_theirs.into());
            Some(b_ours)
        } else {
            None
        };
        if let Some(l) = &kind.listener {
            pass.push(
                l.try_clone()
                    .map_err(|e| format!("passing the listener: {e}"))?,
            );
        }
        // A network grant is served by the egress broker, decided by the grants (the plugin's
        // manifest, or `[builtins] shell_net`), vetted and audited per connection.
        let egress = if kind.net.is_empty() {
            None
        } else {
            let (ours, theirs) = loong_sandbox::egress::pair()
                .map_err(|e| format!("cannot create the egress socket: {e}"))?;
            crate::egress::serve(
                crate::egress::Egress {
                    owner: crate::egress::Owner {
                        actor: "loongd".into(),
                        correlation: format!("worker-{id}"),
                        plugin: kind.net_owner.clone(),
                    },
                    grants: kind.net.clone(),
                    allow_private: kind.allow_private_network,
                    audit: self.audit.clone(),
                    decide: None,
                    max_connections: kind.egress_limits.0,
                    max_bytes: kind.egress_limits.1,
                    resolver: self.resolver.clone(),
                    private_setting: Some(crate::egress::resolve::CONNECTOR_PRIVATE_SETTING),
                },
                ours,
            );
            Some(std::sync::Arc::new(theirs))
        };
        let spec = SandboxSpec {
            egress,
            tier: Some(kind.tier),
            program: kind.program.clone(),
            read: kind.read.clone(),
            write: kind.write.clone(),
            net: kind.net.clone(),
            limits: Limits {
                memory_bytes: Some(kind.memory_bytes),
                pids: Some(kind.tasks),
                ..Limits::default()
            },
            allow_degraded: self.allow_degraded,
            // wasmtime reserves address space per memory and a JavaScript runtime reserves
            // its heap cage up front, so memory is bounded by the cgroup, not RLIMIT_AS.
            kernel: KernelOverrides {
                unbounded_address_space: true,
                unbounded_cpu: true,
                threads: Some(kind.tasks),
            },
            package: kind.package.clone(),
            ..SandboxSpec::default()
        };
        let mut child = tokio::task::spawn_blocking(move || {
            spawner.spawn(
                spec,
                [StdioSpec::Null, StdioSpec::Null, StdioSpec::Pipe],
                pass,
            )
        })
        .await
        .map_err(|e| format!("spawn task: {e}"))?
        .map_err(|e| format!("spawning a {} worker: {e}", self.kind.name))?;
        let sandboxed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let pid = child.pid();
        let killer = child.killer().map_err(|e| format!("pidfd: {e}"))?;
        if let Some(err) = child.stderr.take() {
            tokio::spawn(log_stderr(id, err));
        }
        let connected = async {
            let (r, w) = super::socket::split(ours)?;
            let limit = FrameLimit::new(u64::from(WORKER_MAX_FRAME_BYTES))
                .map_err(std::io::Error::other)?;
            let mut reader = FrameReader::new(r, limit, WORKER_START_TIMEOUT);
            let mut writer = FrameWriter::new(w, limit, WRITE_TIMEOUT);
            let hello = Hello::new(
                PeerKind::Kernel,
                concat!("loongd ", env!("CARGO_PKG_VERSION")),
            );
            handshake_as_caller(&mut reader, &mut writer, &hello, WORKER_START_TIMEOUT)
                .await
                .map_err(std::io::Error::other)?;
            std::io::Result::Ok((reader, writer))
        };
        let (reader, writer) = match connected.await {
            Ok(rw) => rw,
            Err(e) => {
                let _ = killer.kill();
                let report = tokio::task::spawn_blocking(move || child.wait()).await;
                return Err(format!(
                    "the {} worker did not start: {e} (it ended with {report:?})",
                    self.kind.name
                ));
            }
        };
        let cold_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        lock(&self.table).insert(
            id,
            Entry {
                pid,
                started_ms: crate::now_ms(),
                busy: None,
                calls: 0,
                killer,
                killed_by: None,
                fresh: true,
            },
        );
        crate::metrics::worker_spawned(self.kind.name);
        self.audit
            .record_later(Event::daemon(
                Kind::WorkerSpawned,
                serde_json::json!({
                    "worker": id, "pid": pid, "kind": self.kind.name, "tier": self.kind.tier.as_str(),
                    "cold_start_us": cold_us, "sandbox_us": sandboxed_us, "degraded": child.degraded.iter().map(|m| m.name()).collect::<Vec<_>>(),
                }),
            ))
            .await;
        Ok(Worker {
            id,
            pid,
            reader,
            writer,
            child: Some(child),
            loaded: HashMap::new(),
            next_req: 0,
            broker,
            served: false,
            principal: None,
        })
    }

    /// Runs one service worker (a pool of one, never checked out): spawns it, sends `body`
    /// (a `Serve`) and serves the kernel calls it makes with `host` until it answers, fails,
    /// or `stop` resolves (then it is withdrawn and has the drain time `stop` gave to
    /// answer). The worker is
    /// retired afterwards (`worker.exited`); a protocol violation is audited. `spawned` is
    /// told the worker's id and pid once it runs.
    pub(crate) async fn serve_service(
        self: &Arc<Self>,
        body: WorkerRequest,
        host: &dyn KernelCalls,
        stop: std::pin::Pin<&mut (dyn std::future::Future<Output = Duration> + Send)>,
        spawned: impl FnOnce(u64, u32),
    ) -> Result<WorkerResponse, String> {
        let mut worker = self.spawn().await?;
        spawned(worker.id, worker.pid);
        self.mark(worker.id, Some("serving"));
        let answer = worker
            .serve_until(body, SERVE_DEADLINE, Some(host), Some(stop))
            .await;
        let id = worker.id;
        let (why, result) = match answer {
            Ok(r) => (format!("service answered {}", r.name()), Ok(r)),
            Err(fault) => {
                if let WorkerFault::Protocol(what) = &fault {
                    self.audit
                        .record_later(Event {
                            kind: Kind::ProtocolViolation,
                            actor: format!("worker:{id}").into(),
                            correlation: crate::audit::no_correlation(),
                            detail: serde_json::json!({
                                "worker": id, "kind": self.kind.name,
                                "violation": what, "retired": true,
                            })
                            .into(),
                        })
                        .await;
                }
                let why = format!("service worker {id} failed: {fault}");
                (why.clone(), Err(why))
            }
        };
        self.retire(worker, &why, "").await;
        result
    }

    /// Kills a worker, waits for it (off the runtime) and audits how it ended.
    async fn retire(&self, worker: Worker, why: &str, correlation: &str) {
        let killed_by = self.unregister(&worker);
        self.reap(worker, killed_by, why, correlation).await;
    }

    /// Kills a worker and takes it out of the table (so the pool may replace it at once);
    /// returns who had killed it, if anyone.
    fn unregister(&self, worker: &Worker) -> Option<String> {
        kill_now(worker);
        lock(&self.table)
            .remove(&worker.id)
            .and_then(|e| e.killed_by)
    }

    /// Waits for an unregistered worker (off the runtime) and audits how it ended.
    async fn reap(
        &self,
        mut worker: Worker,
        killed_by: Option<String>,
        why: &str,
        correlation: &str,
    ) {
        let Some(child) = worker.child.take() else {
            return;
        };
        let report = tokio::task::spawn_blocking(move || child.wait()).await;
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        let (code, signal, oom) = match &report {
            Ok(Ok(r)) => (r.code, r.signal, r.oom_killed),
            _ => (None, None, false),
        };
        tracing::warn!(
            worker = worker.id,
            pid = worker.pid,
            ?signal,
            ?code,
            why,
            "worker retired"
        );
        self.audit
            .record_later(Event {
                kind: Kind::WorkerExited,
                actor: "loongd".into(),
                correlation: correlation.into(),
                detail: serde_json::json!({
                    "worker": worker.id, "pid": worker.pid, "why": why, "exit_code": code,
                    "signal": signal, "oom_killed": oom, "killed_by": killed_by,
                })
                .into(),
            })
            .await;
    }

    /// Starts a replacement worker in the background, backing off after failures.
    fn replace_in_background(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut delay = RESTART_BACKOFF.0;
            for _ in 0..RESTART_ATTEMPTS {
                if me.stopping.load(Ordering::Relaxed) || me.live() >= me.pool_size {
                    return;
                }
                match me.spawn().await {
                    Ok(w) => {
                        crate::metrics::worker_restarted(me.kind.name);
                        me.give_back(w);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "replacing a worker failed; backing off");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(RESTART_BACKOFF.1);
                    }
                }
            }
        });
    }

    /// Pings the idle workers, one at a time and each under a permit (so that a call never
    /// finds the pool empty because of a ping); retires the ones that do not answer.
    pub(crate) async fn health_check(self: &Arc<Self>) {
        let idle = lock(&self.idle).len();
        for _ in 0..idle {
            // A pool with no free permit is busy, and its workers are answering calls.
            let Ok(_permit) = self.permits.try_acquire() else {
                return;
            };
            // The oldest idle worker (calls take the newest).
            let mut w = {
                let mut idle = lock(&self.idle);
                if idle.is_empty() {
                    return;
                }
                idle.remove(0)
            };
            match w.ping().await {
                Ok(()) => self.give_back(w),
                Err(fault) => {
                    let why = format!("health check failed: {fault}");
                    self.retire(w, &why, "").await;
                    self.replace_in_background();
                }
            }
        }
    }

    /// Every live worker.
    pub(crate) fn list(&self) -> Vec<WorkerView> {
        lock(&self.table)
            .iter()
            .map(|(id, e)| WorkerView {
                id: *id,
                pid: e.pid,
                kind: self.kind.name.into(),
                tier: self.kind.tier.as_str().into(),
                state: match (&e.busy, e.fresh) {
                    (Some(_), _) => "busy",
                    (None, true) => "spare",
                    (None, false) => "idle",
                }
                .into(),
                tool: e.busy.clone(),
                calls: e.calls,
                started_ms: e.started_ms,
            })
            .collect()
    }

    /// Kills worker `id` (SIGKILL through its pidfd) for `by`. Its call in flight fails and
    /// is audited on the call's path; an idle one is found dead (and audited) at its next use
    /// or health check, whichever comes first.
    pub(crate) fn kill(self: &Arc<Self>, id: u64, by: &str) -> Option<WorkerView> {
        let view = self.list().into_iter().find(|w| w.id == id)?;
        if let Some(e) = lock(&self.table).get_mut(&id) {
            e.killed_by = Some(by.to_string());
            let _ = e.killer.kill();
            crate::metrics::worker_killed(self.kind.name);
        }
        // An idle one is taken out and reaped now, so that a spare replaces it before the
        // next call rather than during it.
        let idle = {
            let mut idle = lock(&self.idle);
            idle.iter().position(|w| w.id == id).map(|i| idle.remove(i))
        };
        if let Some(w) = idle {
            let killed_by = self.unregister(&w);
            let me = self.clone();
            tokio::spawn(async move {
                me.reap(w, killed_by, "killed while idle", "").await;
            });
        }
        self.ensure_spare();
        Some(view)
    }

    /// Waits (at most [`DRAIN_TIMEOUT`]) for the calls in flight to finish, then stops the
    /// pool: what an upgrade or a reload does to the pool it replaced, so that no call that
    /// already started is cut off.
    pub(crate) async fn drain_then_shutdown(self: Arc<Self>) {
        let all = u32::try_from(self.pool_size).unwrap_or(u32::MAX);
        let spare = u32::try_from(spare_permits(self.pool_size)).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            let _calls = self.permits.acquire_many(all).await;
            let _nested = self.spare.acquire_many(spare).await;
        })
        .await;
        self.shutdown();
        self.reap_idle().await;
    }

    /// Waits for the killed idle workers, so that their sandboxes (and cgroups) are removed
    /// before loongd exits, rather than left behind.
    pub(crate) async fn reap_idle(&self) {
        let idle: Vec<Worker> = std::mem::take(&mut *lock(&self.idle));
        for mut w in idle {
            kill_now(&w);
            if let Some(child) = w.child.take() {
                let _ = tokio::time::timeout(
                    REAP_TIMEOUT,
                    tokio::task::spawn_blocking(move || child.wait()),
                )
                .await;
            }
        }
    }

    /// Kills every worker (loongd is stopping; nothing more is audited about them).
    pub(crate) fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.permits.close();
        self.spare.close();
        for e in lock(&self.table).values() {
            let _ = e.killer.kill();
        }
    }
}

/// A worker out on one job. Dropped before [`Checkout::release`] (the job's future was
/// dropped: a deadline, a client gone), it kills the worker, whose state is then unknown, and
/// retires it in the background.
struct Checkout<'a> {
    sup: Arc<Supervisor>,
    worker: Option<Worker>,
    /// Copied only when the job is abandoned, for the retirement's record.
    correlation: &'a str,
}

impl Checkout<'_> {
    fn worker(&mut self) -> &mut Worker {
        self.worker
            .as_mut()
            .expect("a checkout holds its worker until it is released")
    }

    fn release(mut self) -> Worker {
        self.worker
            .take()
            .expect("a checkout holds its worker until it is released")
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            kill_now(&w);
            let sup = self.sup.clone();
            let correlation = self.correlation.to_owned();
            tokio::spawn(async move {
                sup.retire(
                    w,
                    "its job was abandoned (deadline or client gone)",
                    &correlation,
                )
                .await;
                sup.replace_in_background();
            });
        }
    }
}

/// Pings idle workers every [`HEALTH_INTERVAL`] until loongd stops.
pub(crate) async fn health_loop(sup: Arc<Supervisor>) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if sup.stopping.load(Ordering::Relaxed) {
            return;
        }
        sup.health_check().await;
    }
}

/// How a load came by its compiled module, for `plugin.loaded`.
fn compiled_note(prepared: &compiled::Prepared, used: &loong_ipc::CompiledUse) -> String {
    match (used, &prepared.refused) {
        (loong_ipc::CompiledUse::Mapped, _) => "mapped".into(),
        (loong_ipc::CompiledUse::Refused(why), _) => format!("refused: {why}; compiled"),
        (loong_ipc::CompiledUse::Compiled, Some(why)) => format!("refused: {why}; compiled"),
        (loong_ipc::CompiledUse::Compiled, None) => "compiled".into(),
    }
}

/// A plan's typed failure is the plan worker's to claim: any other worker that answers one
/// (its kind or its `plan`) forged it, a protocol violation that retires it.
fn claims_only_its_own(kind: &str, f: &PluginFailure) -> Result<(), WorkerFault> {
    let claims_a_plan = f.kind == loong_ipc::FailureKind::PlanFailed || f.plan.is_some();
    if claims_a_plan && kind != WorkerKind::PLAN {
        return Err(WorkerFault::Protocol(format!(
            "a {kind} worker answered a plan's failure ({}), which only the plan worker answers",
            f.kind.name()
        )));
    }
    Ok(())
}

impl From<&CallError> for RemoteError {
    fn from(e: &CallError) -> Self {
        use loong_ipc::{ErrorDetail, ErrorKind};
        let kind = match e {
            CallError::Plugin(_) | CallError::Worker(..) => ErrorKind::WorkerFailed,
            CallError::Unavailable(_) => ErrorKind::SandboxUnavailable,
            CallError::Busy(_) => ErrorKind::Overloaded,
        };
        let detail = match e {
            CallError::Plugin(PluginFailure {
                kind: loong_ipc::FailureKind::PlanFailed,
                plan: Some(plan),
                ..
            }) => ErrorDetail::PlanFailed(plan.clone().bounded()),
            _ => ErrorDetail::WorkerFailed(e.class()),
        };
        RemoteError::new(kind, e.to_string()).with_detail(detail)
    }
}

/// A call's output and logs with each secret the call used replaced by `[secret:NAME]` (in
/// the output as the value appears inside a JSON string), before anything records them.
fn redact_output(out: &mut loong_ipc::CallOutput, used: &[broker::Header]) {
    if used.is_empty() {
        return;
    }
    let escaped: Vec<broker::Header> = used
        .iter()
        .map(|(name, value)| {
            let quoted = serde_json::to_string(value).unwrap_or_default();
            let inner = quoted
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .unwrap_or(value)
                .to_string();
            (name.clone(), inner)
        })
        .collect();
    if let Ok(text) = std::str::from_utf8(&out.output) {
        out.output = crate::secrets::redact(text, &escaped).into_bytes();
    }
    for line in &mut out.logs {
        *line = crate::secrets::redact(line, used);
    }
}

#[cfg(test)]
mod tests {
    use loong_ipc::{FailureKind, PlanFailed, PlanFailureKind};

    use super::*;

    fn forged() -> Vec<PluginFailure> {
        let plan = PlanFailed::new(
            PlanFailureKind::ConnectorNotAllowed,
            Some("s".into()),
            None,
            None,
            "forged",
        );
        // The typed failure, its kind alone, and its detail under another kind.
        let mut under_another = PluginFailure::new(FailureKind::ToolError, "forged");
        under_another.plan = Some(plan.clone());
        vec![
            PluginFailure::plan(plan),
            PluginFailure::new(FailureKind::PlanFailed, "forged"),
            under_another,
        ]
    }

    /// A plan's failure answered by a worker of another kind is a protocol violation (the
    /// pool retires the worker and audits it), never a plan's failure to the caller; the plan
    /// worker's own is taken, and other workers' ordinary failures are.
    #[test]
    fn only_the_plan_worker_answers_a_plans_failure() {
        for kind in ["wasm", "stdio", "http", "builtin", "mcp"] {
            for f in forged() {
                assert!(
                    matches!(claims_only_its_own(kind, &f), Err(WorkerFault::Protocol(m)) if m.contains("only the plan worker")),
                    "{kind}: {f:?}"
                );
            }
            let own = PluginFailure::new(FailureKind::ToolError, "its own");
            assert!(claims_only_its_own(kind, &own).is_ok(), "{kind}");
        }
        for f in forged() {
            assert!(claims_only_its_own(WorkerKind::PLAN, &f).is_ok(), "{f:?}");
        }
    }
}
