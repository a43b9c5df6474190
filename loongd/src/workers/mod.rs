//! The worker supervisor: a pool of worker processes of one kind, each in its tier's
//! sandbox, each running one call at a time. loongd keeps one pool of `loong-worker-wasm`
//! processes (restricted) for every WASM plugin, and one pool of `loong-worker-stdio`
//! processes (balanced, with the plugin's grants) for each foreign program.
//!
//! - A call takes a permit (at most `[workers] wasm_pool_size` calls run at once; the rest queue
//!   until their deadline), then an idle worker, or spawns one (a cold start).
//! - A worker is tracked by its pidfd (through [`loong_sandbox::Child`]). One that dies,
//!   breaks the protocol or overruns a call's deadline (the plugin's timeout plus
//!   [`CALL_GRACE`]) is killed and retired: that call fails, the death is audited
//!   (`worker.exited`, with its signal, exit code and OOM flag), and a replacement is started
//!   in the background with exponential backoff.
//! - Idle workers are pinged every [`HEALTH_INTERVAL`]; a silent one is retired.
//! - Plugins are loaded into a worker the first time it runs them (the module travels over
//!   the socket); a worker remembers the plugin generations it has loaded.

pub(crate) mod builtins;
pub(crate) mod lock;
pub(crate) mod net;
pub(crate) mod plugins;
pub(crate) mod staging;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
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
    BuiltinSpec, Call, CallOutput, Hello, HttpSpec, PeerKind, PeerSpec, PluginFailure, RemoteError,
    Reply, ToolInfo, WasmPlugin, WorkerRequest, WorkerResponse, WorkerView,
};
use loong_sandbox::{
    Child, KernelOverrides, Killer, Limits, NetGrant, SandboxSpec, Spawner, StdioSpec, Tier,
};
use tokio::{
    io::AsyncReadExt,
    net::{
        unix::{OwnedReadHalf, OwnedWriteHalf},
        UnixStream,
    },
    sync::Semaphore,
};

use crate::audit::{Audit, Event, Kind};

/// The worker executables, found next to loongd.
pub const WASM_WORKER_NAME: &str = "loong-worker-wasm";
pub const STDIO_WORKER_NAME: &str = "loong-worker-stdio";
pub const HTTP_WORKER_NAME: &str = "loong-worker-http";
pub const BUILTIN_WORKER_NAME: &str = "loong-worker-builtin";
/// An HTTP worker's memory and tasks: one single-threaded exchange at a time.
pub const HTTP_WORKER_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
pub const HTTP_WORKER_TASKS: u64 = 4;
/// The longest loongd spends connecting to a connector's endpoint (less when the call's own
/// timeout is shorter).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A stdio worker's memory (cgroup `memory.max`): the worker and its program.
pub const STDIO_WORKER_MEMORY_BYTES: u64 = 1024 * 1024 * 1024;
/// Tasks a stdio worker and its program may run (a JavaScript runtime starts about a dozen
/// threads).
pub const STDIO_WORKER_TASKS: u64 = 64;
/// How long a stdio worker may take to (re)start its program within a call.
pub const PEER_START_ALLOWANCE: Duration = Duration::from_secs(20);
/// A WASM worker's memory (cgroup `memory.max`): the engine, its pool and one call.
pub const WORKER_MEMORY_BYTES: u64 = 768 * 1024 * 1024;
/// Tasks a WASM worker's sandbox may hold: the spawn helper and the reaper (in the cgroup
/// with it), the worker's main thread, the epoch ticker and the compiler thread, and one to
/// spare.
pub const WORKER_THREADS: u64 = 6;
/// How long past a plugin's own timeout loongd waits before it kills the worker.
pub const CALL_GRACE: Duration = Duration::from_millis(1_000);
/// How long a worker has from spawn to a finished handshake.
pub const WORKER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a plugin load (compilation in the worker) may take.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How often idle workers are pinged.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may take.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// First and longest delay between attempts to replace a retired worker.
pub const RESTART_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_secs(5));
/// Replacement attempts before the pool waits for the next call to spawn on demand.
pub const RESTART_ATTEMPTS: u32 = 6;
/// Bytes of a worker's stderr kept for the log.
pub const MAX_WORKER_STDERR_BYTES: usize = 16 * 1024;
/// How long loongd waits for a killed idle worker to be reaped when a pool stops.
pub const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a replaced pool may finish the calls it runs before it is stopped.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest frame write may take this long before the worker counts as stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call did not produce an output.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The plugin failed (refused at load, trapped, timed out, …); its worker is fine.
    Plugin(PluginFailure),
    /// The worker failed (died, overran the deadline, broke the protocol) and was retired.
    Worker(String),
    /// No worker could be had (sandbox unavailable, spawn failed, queue deadline passed).
    Unavailable(String),
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
    /// A foreign program's tools.
    pub tools: Vec<ToolInfo>,
}

/// What a job produced.
#[derive(Debug)]
enum Done {
    Loaded(LoadInfo),
    /// A call's output, and what the load before it told when the call made one.
    Output(CallOutput, Option<LoadInfo>),
}

/// What loads a plugin into a worker.
#[derive(Debug)]
pub(crate) enum Wire {
    Wasm(WasmPlugin),
    Peer(PeerSpec),
    /// An `http_json` connector and the addresses its endpoint was pinned to at discovery:
    /// loongd connects to these (and nowhere else) for each call.
    Http {
        spec: HttpSpec,
        addrs: Vec<std::net::SocketAddr>,
        /// For `web.fetch` (`spec.fetch`): whether a URL may resolve to loopback, private or
        /// link-local addresses. Each call's URL is resolved and checked then.
        fetch_allow_private: bool,
    },
    Builtin(BuiltinSpec),
}

/// A plugin as the supervisor loads it: the wire form and a generation that changes when
/// the plugin is rediscovered.
#[derive(Debug, Clone)]
pub(crate) struct Loadable {
    pub id: String,
    pub wire: Arc<Wire>,
    pub generation: u64,
}

impl Loadable {
    fn request(&self) -> WorkerRequest {
        match &*self.wire {
            Wire::Wasm(w) => WorkerRequest::Load(Box::new(w.clone())),
            Wire::Peer(p) => WorkerRequest::Start(Box::new(p.clone())),
            Wire::Http { spec, .. } => WorkerRequest::Connector(Box::new(spec.clone())),
            Wire::Builtin(b) => WorkerRequest::Builtin(Box::new(b.clone())),
        }
    }

    /// How long loongd waits for a call's answer before it kills the worker.
    fn call_deadline(&self) -> Duration {
        match &*self.wire {
            Wire::Wasm(w) => Duration::from_millis(w.timeout_ms) + CALL_GRACE,
            // The worker may have to restart its program first.
            Wire::Peer(p) => {
                Duration::from_millis(p.timeout_ms) + PEER_START_ALLOWANCE + CALL_GRACE
            }
            Wire::Http { spec, .. } => Duration::from_millis(spec.timeout_ms) + CALL_GRACE,
            Wire::Builtin(b) => Duration::from_millis(b.timeout_ms) + CALL_GRACE,
        }
    }
}

/// What a pool runs: the worker program and the sandbox around it.
#[derive(Debug, Clone)]
pub(crate) struct WorkerKind {
    /// `wasm` or `stdio`.
    pub name: &'static str,
    pub program: PathBuf,
    pub tier: Tier,
    pub memory_bytes: u64,
    pub tasks: u64,
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    pub net: Vec<NetGrant>,
    /// A second socket (fd 4) on which loongd passes connected sockets.
    pub broker: bool,
    /// The plugin's own package directory, readable inside (a foreign program's files).
    pub package: Option<PathBuf>,
}

fn next_to_loongd(name: &str) -> PathBuf {
    crate::programs::find(name)
}

impl WorkerKind {
    /// The WASM worker: restricted, no grant at all.
    pub(crate) fn wasm() -> WorkerKind {
        WorkerKind {
            name: "wasm",
            program: next_to_loongd(WASM_WORKER_NAME),
            tier: Tier::Restricted,
            memory_bytes: WORKER_MEMORY_BYTES,
            tasks: WORKER_THREADS,
            read: Vec::new(),
            write: Vec::new(),
            net: Vec::new(),
            broker: false,
            package: None,
        }
    }

    /// An HTTP worker: balanced, no grant, no network of its own.
    pub(crate) fn http() -> WorkerKind {
        WorkerKind {
            name: "http",
            program: next_to_loongd(HTTP_WORKER_NAME),
            tier: Tier::Balanced,
            memory_bytes: HTTP_WORKER_MEMORY_BYTES,
            tasks: HTTP_WORKER_TASKS,
            read: Vec::new(),
            write: Vec::new(),
            net: Vec::new(),
            broker: true,
            package: None,
        }
    }

    /// A built-in tool's worker, with the tool's grants (balanced, like a foreign program:
    /// `shell.exec` starts processes, the file tools open paths).
    pub(crate) fn builtin(
        read: Vec<PathBuf>,
        write: Vec<PathBuf>,
        net: Vec<NetGrant>,
    ) -> WorkerKind {
        WorkerKind {
            name: "builtin",
            program: next_to_loongd(BUILTIN_WORKER_NAME),
            ..WorkerKind::stdio(read, write, net)
        }
    }

    /// A stdio worker with a foreign program's grants.
    pub(crate) fn stdio(read: Vec<PathBuf>, write: Vec<PathBuf>, net: Vec<NetGrant>) -> WorkerKind {
        WorkerKind {
            name: "stdio",
            program: next_to_loongd(STDIO_WORKER_NAME),
            tier: Tier::Balanced,
            memory_bytes: STDIO_WORKER_MEMORY_BYTES,
            tasks: STDIO_WORKER_TASKS,
            read,
            write,
            net,
            broker: false,
            package: None,
        }
    }
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
}

/// One worker process and the caller's end of its socket.
struct Worker {
    id: u64,
    pid: u32,
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
    child: Option<Child>,
    loaded: HashMap<String, u64>,
    next_req: u64,
    /// loongd's end of the worker's fd 4, for a kind with a broker.
    broker: Option<std::os::unix::net::UnixStream>,
}

/// Why a request to a worker failed (the worker is retired for each).
#[derive(Debug)]
enum WorkerFault {
    Deadline(Duration),
    Broken(String),
}

impl std::fmt::Display for WorkerFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerFault::Deadline(d) => write!(f, "no answer within {} ms", d.as_millis()),
            WorkerFault::Broken(why) => f.write_str(why),
        }
    }
}

impl Worker {
    /// Sends one request and waits for its answer until `deadline`.
    async fn request(
        &mut self,
        body: WorkerRequest,
        deadline: Duration,
    ) -> Result<WorkerResponse, WorkerFault> {
        self.next_req += 1;
        let id = self.next_req;
        let call = Call::Request {
            id,
            deadline_ms: u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX),
            body,
        };
        let until = tokio::time::Instant::now() + deadline;
        self.writer
            .write(&call)
            .await
            .map_err(|e| WorkerFault::Broken(format!("sending the request: {e}")))?;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let reply = tokio::time::timeout(left, self.reader.read::<Reply<WorkerResponse>>(None))
                .await
                .map_err(|_| WorkerFault::Deadline(deadline))?
                .map_err(|e| WorkerFault::Broken(format!("reading the answer: {e}")))?
                .ok_or_else(|| WorkerFault::Broken("the worker closed its socket".into()))?;
            match reply {
                Reply::Response { id: got, result } if got == id => {
                    return result.map_err(|e| WorkerFault::Broken(format!("worker error: {e}")))
                }
                Reply::Pong { .. } => continue,
                other => {
                    return Err(WorkerFault::Broken(format!(
                        "unexpected frame from the worker: {}",
                        frame_name(&other)
                    )))
                }
            }
        }
    }

    /// A ping answered within [`PING_TIMEOUT`].
    async fn ping(&mut self) -> Result<(), WorkerFault> {
        let nonce = self.next_req.wrapping_add(1) ^ 0x5eed;
        self.writer
            .write(&Call::<WorkerRequest>::Ping { nonce })
            .await
            .map_err(|e| WorkerFault::Broken(format!("sending a ping: {e}")))?;
        let reply = tokio::time::timeout(
            PING_TIMEOUT,
            self.reader.read::<Reply<WorkerResponse>>(None),
        )
        .await
        .map_err(|_| WorkerFault::Deadline(PING_TIMEOUT))?
        .map_err(|e| WorkerFault::Broken(format!("reading a pong: {e}")))?;
        match reply {
            Some(Reply::Pong { nonce: n }) if n == nonce => Ok(()),
            Some(other) => Err(WorkerFault::Broken(format!(
                "unexpected frame for a ping: {}",
                frame_name(&other)
            ))),
            None => Err(WorkerFault::Broken("the worker closed its socket".into())),
        }
    }

    /// Whether the worker process has exited (its pidfd is readable).
    fn exited(&self) -> bool {
        self.child.as_ref().is_none_or(|c| {
            let mut fds = [nix::poll::PollFd::new(
                c.pidfd(),
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).is_ok_and(|n| n > 0)
        })
    }
}

fn frame_name(r: &Reply<WorkerResponse>) -> &'static str {
    match r {
        Reply::Response { .. } => "a response to another request",
        Reply::Pong { .. } => "a pong",
        Reply::Stream { .. } => "a stream chunk",
    }
}

/// The supervisor.
#[derive(Debug)]
pub(crate) struct Supervisor {
    kind: WorkerKind,
    spawner: Result<Arc<Spawner>, String>,
    allow_degraded: bool,
    audit: Audit,
    permits: Semaphore,
    pool_size: usize,
    idle: Mutex<Vec<Worker>>,
    table: Mutex<BTreeMap<u64, Entry>>,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Supervisor {
    /// A supervisor of `pool_size` workers of `kind`.
    pub(crate) fn new(
        kind: WorkerKind,
        spawner: Result<Arc<Spawner>, String>,
        allow_degraded: bool,
        pool_size: usize,
        audit: Audit,
    ) -> Supervisor {
        Supervisor {
            kind,
            spawner,
            allow_degraded,
            audit,
            permits: Semaphore::new(pool_size),
            pool_size,
            idle: Mutex::default(),
            table: Mutex::default(),
            stopping: AtomicBool::new(false),
        }
    }

    /// Runs `plugin` on `input` in a worker; `decided` is the file a built-in file tool's
    /// call was decided on (the only one its worker opens); `correlation` ties the worker's
    /// records to the call's. Waits for a free worker at most `queue_deadline`.
    pub(crate) async fn call(
        self: &Arc<Self>,
        plugin: &Loadable,
        tool: &str,
        input: Vec<u8>,
        decided: Option<loong_ipc::DecidedFile>,
        queue_deadline: Duration,
        correlation: &str,
    ) -> Called {
        let job = Job::Call {
            tool: tool.to_string(),
            input,
            decided,
        };
        let (worker, result) = self.run(plugin, job, queue_deadline, correlation).await;
        let mut loaded = None;
        let result = result.and_then(|done| match done {
            Done::Output(out, info) => {
                loaded = info;
                Ok(out)
            }
            Done::Loaded(_) => Err(CallError::Worker(
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
        let (_, result) = self.run(plugin, Job::Check, LOAD_TIMEOUT, "").await;
        match result? {
            Done::Loaded(info) => Ok(info),
            Done::Output(..) => Err(CallError::Worker(
                "internal: a load answered as a call".into(),
            )),
        }
    }

    /// Checks a worker out under a permit, runs `job` on it and gives it back, or retires it
    /// (and starts a replacement) when it failed. Returns the worker's id (0: none was had).
    async fn run(
        self: &Arc<Self>,
        plugin: &Loadable,
        job: Job,
        queue_deadline: Duration,
        correlation: &str,
    ) -> (u64, Result<Done, CallError>) {
        let unavailable = |why: String| (0, Err(CallError::Unavailable(why)));
        let permit = match tokio::time::timeout(queue_deadline, self.permits.acquire()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return unavailable("the worker pool is closed".into()),
            Err(_) => {
                return unavailable(format!(
                    "no worker became free within {} ms",
                    queue_deadline.as_millis()
                ))
            }
        };
        let worker = match self.take_or_spawn().await {
            Ok(w) => w,
            Err(why) => return unavailable(why),
        };
        let id = worker.id;
        self.mark(id, Some(&plugin.id));
        let mut out = Checkout {
            sup: self.clone(),
            worker: Some(worker),
            correlation: correlation.to_string(),
        };
        let result = self.run_on(out.worker(), plugin, job).await;
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
                self.retire(worker, &why, correlation).await;
                self.replace_in_background();
                (id, Err(CallError::Worker(why)))
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
    ) -> Result<Result<Done, CallError>, WorkerFault> {
        let id = &plugin.id;
        let loaded = worker.loaded.get(id) == Some(&plugin.generation);
        let info = if matches!(job, Job::Check) || !loaded {
            let info = match worker.request(plugin.request(), LOAD_TIMEOUT).await? {
                WorkerResponse::Loaded { sha256, .. } => LoadInfo {
                    loaded: true,
                    sha256: Some(sha256),
                    tools: Vec::new(),
                },
                WorkerResponse::Described(tools) => {
                    loong_ipc::message::worker::check_tools(&tools)
                        .map_err(|e| WorkerFault::Broken(format!("tool list: {e}")))?;
                    LoadInfo {
                        loaded: true,
                        sha256: None,
                        tools,
                    }
                }
                WorkerResponse::Failed(f) => return Ok(Err(CallError::Plugin(f))),
                other => {
                    return Err(WorkerFault::Broken(format!(
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
        if let Wire::Http {
            spec,
            addrs,
            fetch_allow_private,
        } = &*plugin.wire
        {
            // A connector's addresses were pinned at discovery; a fetch resolves its URL now.
            let resolved;
            let addrs: &[std::net::SocketAddr] = if spec.fetch {
                match fetch_route(&input, *fetch_allow_private).await {
                    Ok((found, target)) => {
                        input = target;
                        resolved = found;
                        &resolved
                    }
                    Err(f) => return Ok(Err(CallError::Plugin(f))),
                }
            } else {
                addrs
            };
            let conn = match connect(addrs, spec.timeout_ms).await {
                Ok(c) => c,
                Err(why) => {
                    return Ok(Err(CallError::Plugin(PluginFailure::new(
                        loong_ipc::FailureKind::ConnectFailed,
                        format!("plugin {id}: {why}"),
                    ))))
                }
            };
            let broker = worker
                .broker
                .as_ref()
                .ok_or_else(|| WorkerFault::Broken("an HTTP worker without a broker".into()))?;
            loong_sandbox::worker::send_connection(broker, std::os::fd::AsFd::as_fd(&conn))
                .map_err(|e| WorkerFault::Broken(format!("passing the connection: {e}")))?;
            // The worker holds its own copy now.
            drop(conn);
        }
        let invoke = WorkerRequest::Invoke {
            plugin_id: tool,
            input,
            decided,
        };
        let answer = worker.request(invoke, deadline).await?;
        if let Some(e) = lock(&self.table).get_mut(&worker.id) {
            e.calls += 1;
        }
        match answer {
            // A worker's answer is checked, not trusted: bounds, and JSON as promised.
            WorkerResponse::Output(out) => {
                out.check_bounds()
                    .map_err(|e| WorkerFault::Broken(format!("answer out of bounds: {e}")))?;
                serde_json::from_slice::<serde::de::IgnoredAny>(&out.output)
                    .map_err(|e| WorkerFault::Broken(format!("output is not JSON: {e}")))?;
                Ok(Ok(Done::Output(out, info.loaded.then_some(info))))
            }
            WorkerResponse::Failed(f) => Ok(Err(CallError::Plugin(f))),
            other => Err(WorkerFault::Broken(format!(
                "answered a call with {}",
                other.name()
            ))),
        }
    }

    /// Workers spawned and not yet retired.
    fn live(&self) -> usize {
        lock(&self.table).len()
    }

    /// An idle worker that is still alive, or a new one.
    async fn take_or_spawn(self: &Arc<Self>) -> Result<Worker, String> {
        loop {
            let w = lock(&self.idle).pop();
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
                None => return self.spawn().await,
            }
        }
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
        }
    }

    /// Spawns, handshakes and registers a worker; audited as `worker.spawned`.
    async fn spawn(self: &Arc<Self>) -> Result<Worker, String> {
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
        let spec = SandboxSpec {
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
            ours.set_nonblocking(true)?;
            let (r, w) = UnixStream::from_std(ours)?.into_split();
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
            },
        );
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
        })
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
                }),
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
                state: if e.busy.is_some() { "busy" } else { "idle" }.into(),
                tool: e.busy.clone(),
                calls: e.calls,
                started_ms: e.started_ms,
            })
            .collect()
    }

    /// Kills worker `id` (SIGKILL through its pidfd) for `by`. Its call in flight fails and
    /// is audited on the call's path; an idle one is found dead (and audited) at its next use
    /// or health check, whichever comes first.
    pub(crate) fn kill(&self, id: u64, by: &str) -> Option<WorkerView> {
        let view = self.list().into_iter().find(|w| w.id == id)?;
        if let Some(e) = lock(&self.table).get_mut(&id) {
            e.killed_by = Some(by.to_string());
            let _ = e.killer.kill();
        }
        Some(view)
    }

    /// Waits (at most [`DRAIN_TIMEOUT`]) for the calls in flight to finish, then stops the
    /// pool: what an upgrade or a reload does to the pool it replaced, so that no call that
    /// already started is cut off.
    pub(crate) async fn drain_then_shutdown(self: Arc<Self>) {
        let all = u32::try_from(self.pool_size).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, self.permits.acquire_many(all)).await;
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
        for e in lock(&self.table).values() {
            let _ = e.killer.kill();
        }
    }
}

/// A worker out on one job. Dropped before [`Checkout::release`] (the job's future was
/// dropped: a deadline, a client gone), it kills the worker, whose state is then unknown, and
/// retires it in the background.
struct Checkout {
    sup: Arc<Supervisor>,
    worker: Option<Worker>,
    correlation: String,
}

impl Checkout {
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

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            kill_now(&w);
            let sup = self.sup.clone();
            let correlation = std::mem::take(&mut self.correlation);
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

fn kill_now(worker: &Worker) {
    if let Some(c) = &worker.child {
        let _ = c.kill();
    }
}

/// A `web.fetch` call's route: its URL resolved now, every address checked, and the input the
/// worker gets (`{host, path}`).
async fn fetch_route(
    input: &[u8],
    allow_private: bool,
) -> Result<(Vec<std::net::SocketAddr>, Vec<u8>), PluginFailure> {
    use loong_ipc::FailureKind;
    let url = serde_json::from_slice::<serde_json::Value>(input)
        .ok()
        .and_then(|v| v.get("url").and_then(|u| u.as_str()).map(String::from))
        .ok_or_else(|| PluginFailure::new(FailureKind::ToolError, "web.fetch needs `url`"))?;
    let (host, port, path) = loong_profiles::plugin::parse_endpoint(&url)
        .map_err(|e| PluginFailure::new(FailureKind::ToolError, format!("web.fetch: {e}")))?;
    let lookup = host.clone();
    let addrs = tokio::task::spawn_blocking(move || net::pin(&lookup, port, allow_private))
        .await
        .map_err(|e| PluginFailure::new(FailureKind::ConnectFailed, e.to_string()))?
        .map_err(|e| {
            let fix = e.replace(
                "sandbox.allow_private_network",
                "[builtins] fetch_allow_private",
            );
            PluginFailure::new(
                FailureKind::AddressRefused,
                format!("web.fetch {url}: {fix}"),
            )
        })?;
    let header = match (port, host.contains(':')) {
        (80, false) => host,
        (80, true) => format!("[{host}]"),
        (p, false) => format!("{host}:{p}"),
        (p, true) => format!("[{host}]:{p}"),
    };
    let target = serde_json::json!({ "host": header, "path": path }).to_string();
    Ok((addrs, target.into_bytes()))
}

/// Connects to the first of `addrs` that answers, within the call's timeout (at most
/// [`CONNECT_TIMEOUT`]); returns the socket as a blocking std stream to pass on.
async fn connect(
    addrs: &[std::net::SocketAddr],
    timeout_ms: u64,
) -> Result<std::net::TcpStream, String> {
    let limit = Duration::from_millis(timeout_ms).min(CONNECT_TIMEOUT);
    let mut why = String::from("no address to connect to");
    for addr in addrs {
        match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let s = s.into_std().map_err(|e| e.to_string())?;
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Ok(Err(e)) => why = format!("connecting to {addr}: {e}"),
            Err(_) => {
                why = format!(
                    "connecting to {addr}: no answer within {} ms",
                    limit.as_millis()
                )
            }
        }
    }
    Err(why)
}

/// Relays a worker's stderr to loongd's log, up to [`MAX_WORKER_STDERR_BYTES`].
async fn log_stderr(id: u64, fd: std::os::fd::OwnedFd) {
    let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = vec![0u8; 4096];
    let mut total = 0usize;
    while let Ok(n) = rx.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if total < MAX_WORKER_STDERR_BYTES {
            let text = String::from_utf8_lossy(&buf[..n]);
            tracing::warn!(worker = id, "worker stderr: {}", text.trim_end());
        }
        total += n;
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

impl From<&CallError> for RemoteError {
    fn from(e: &CallError) -> Self {
        use loong_ipc::ErrorKind;
        match e {
            CallError::Plugin(f) => RemoteError::new(
                ErrorKind::WorkerFailed,
                format!("{}: {}", f.kind.name(), f.message),
            ),
            CallError::Worker(why) => RemoteError::new(ErrorKind::WorkerFailed, why.clone()),
            CallError::Unavailable(why) => {
                RemoteError::new(ErrorKind::SandboxUnavailable, why.clone())
            }
        }
    }
}
