//! Service workers: long-lived workers that originate work (the gateway's HTTP requests, a
//! channel's messages) instead of answering loongd's calls.
//!
//! ```text
//! Services::start ─▶ supervise (one task per service)
//!   loop: spawn the worker (a pool of one) ─ WorkerRequest::Serve(spec) ─▶ the worker serves
//!           the worker's kernel calls ─▶ ServiceHost::start
//!              gateway_* from the gateway's Serve  ─▶ gateway::handle
//!              channel_* from a channel's Serve    ─▶ channel::handle
//!              anything else                       ─▶ refused, audited (protocol.violation)
//!         the worker ends (answers, dies, is killed): worker.exited; unless stopping, wait the
//!         backoff, then worker.restarted and spawn again
//! Services::stop ─▶ the Serve request is withdrawn (a Cancel); the worker drains its open
//!                   streams within the deadline and answers Stopped, or is killed past it
//! ```
//!
//! The `Serve` call's own chain has no authority for the gateway: each `gateway_*` call
//! carries the bearer secret its HTTP request came with, resolved as `loongctl invoke
//! --token` would. A channel's chain is bound to the channel's own token.

pub(crate) mod channel;
pub(crate) mod gateway;
pub(crate) mod gateway_guard;
pub(crate) mod webhook;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use loong_ipc::{
    ErrorKind, KernelCall, KernelRequest, RemoteError, SecretValue, ServeSpec, ServiceCall,
    WorkerRequest, WorkerResponse,
};
use tokio::sync::watch;

use crate::{
    audit::{Event, Kind},
    workers::{KernelAnswer, KernelCalls, Supervisor, WorkerKind},
    Kernel,
};

/// First and longest delay before a service worker that ended is started again.
pub const SERVICE_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(200), Duration::from_secs(30));
/// A worker that served this long before it ended counts as healthy: the next restart waits
/// the first delay again.
pub const SERVICE_HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Kernel calls one service worker may have in flight at once (the gateway's concurrent
/// requests across every session).
pub const SERVICE_MAX_IN_FLIGHT: usize = 2048;
/// How long a stop waits for the service's open streams to drain, unless told otherwise.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which service a worker serves; decides which kernel-call kinds it may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Gateway,
    // Started by the channel workers, which build on this mechanism.
    #[allow(dead_code)]
    Channel,
}

impl Service {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Service::Gateway => "gateway",
            Service::Channel => "channel",
        }
    }

    /// The prefix of the kernel-call kinds this service makes.
    fn prefix(self) -> &'static str {
        match self {
            Service::Gateway => "gateway_",
            Service::Channel => "channel_",
        }
    }
}

/// A service to run.
#[derive(Debug, Clone)]
pub(crate) struct ServiceDef {
    pub service: Service,
    /// `gateway`, or the channel's account.
    pub name: String,
    /// The worker program and its sandbox.
    pub kind: WorkerKind,
    /// The service's own config, as JSON.
    pub config_json: String,
    pub secrets: Vec<(String, SecretValue)>,
    /// A channel's token, by its public id: the authority of its kernel calls (`None` for
    /// the gateway, whose calls each carry their own bearer).
    pub token: Option<String>,
}

/// What `status` shows of a running service.
#[derive(Debug, Default)]
pub(crate) struct ServiceState {
    /// When the service was started (ms since the epoch).
    pub started_ms: AtomicU64,
    /// When its current worker was started (ms since the epoch; 0: none runs).
    pub worker_started_ms: AtomicU64,
    pub worker: AtomicU64,
    pub pid: AtomicU32,
    /// Workers started again after one ended.
    pub restarts: AtomicU32,
    /// Why the last worker ended.
    pub last_exit: Mutex<Option<String>>,
    /// The gateway's figures, as its worker last reported them (`gateway_stats`).
    pub requests: AtomicU64,
    pub open_streams: AtomicU64,
}

struct Running {
    /// `Some(drain)` once a stop is asked.
    stop: watch::Sender<Option<Duration>>,
    state: Arc<ServiceState>,
    task: tokio::task::JoinHandle<()>,
}

/// The running services, by `service:name`.
#[derive(Default)]
pub(crate) struct Services {
    running: Mutex<BTreeMap<String, Running>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("running", &lock(&self.running).keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why a service could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    #[error("the {0} service {1} is already running; stop it first")]
    AlreadyRunning(&'static str, String),
    #[error("the {0} service's spec: {1}; shorten the config or the secrets")]
    Spec(&'static str, loong_ipc::message::BoundError),
    #[error("loongd is stopping; no service starts")]
    Stopping,
}

fn key(service: Service, name: &str) -> String {
    format!("{}:{name}", service.as_str())
}

impl Services {
    /// Starts `def` under `kernel`'s supervision; it runs (restarted when it ends) until
    /// [`Services::stop`] or loongd stops.
    pub(crate) fn start(
        &self,
        kernel: &Arc<Kernel>,
        def: ServiceDef,
    ) -> Result<Arc<ServiceState>, ServiceError> {
        if *kernel.shutdown.borrow() {
            return Err(ServiceError::Stopping);
        }
        let spec = ServeSpec {
            service: def.service.as_str().into(),
            name: def.name.clone(),
            config_json: def.config_json.clone(),
            secrets: def.secrets.clone(),
        };
        spec.check_bounds()
            .map_err(|e| ServiceError::Spec(def.service.as_str(), e))?;
        let k = key(def.service, &def.name);
        let mut running = lock(&self.running);
        if running.get(&k).is_some_and(|r| !r.task.is_finished()) {
            return Err(ServiceError::AlreadyRunning(def.service.as_str(), def.name));
        }
        let state = Arc::new(ServiceState::default());
        state.started_ms.store(
            u64::try_from(crate::now_ms()).unwrap_or(0),
            Ordering::Relaxed,
        );
        let (stop, stop_rx) = watch::channel(None);
        let task = tokio::spawn(supervise(kernel.clone(), def, spec, state.clone(), stop_rx));
        running.insert(
            k,
            Running {
                stop,
                state: state.clone(),
                task,
            },
        );
        Ok(state)
    }

    /// The state of a running service.
    pub(crate) fn state(&self, service: Service, name: &str) -> Option<Arc<ServiceState>> {
        lock(&self.running)
            .get(&key(service, name))
            .filter(|r| !r.task.is_finished())
            .map(|r| r.state.clone())
    }

    /// Stops a service: its worker is asked to drain within `drain` and answer, and is
    /// killed past it. Returns whether it was running.
    pub(crate) async fn stop(&self, service: Service, name: &str, drain: Duration) -> bool {
        let Some(r) = lock(&self.running).remove(&key(service, name)) else {
            return false;
        };
        r.stop.send_replace(Some(drain));
        let _ = r.task.await;
        true
    }

    /// Stops every service (loongd's shutdown).
    pub(crate) async fn stop_all(&self, drain: Duration) {
        let all: Vec<Running> = std::mem::take(&mut *lock(&self.running))
            .into_values()
            .collect();
        for r in &all {
            r.stop.send_replace(Some(drain));
        }
        for r in all {
            let _ = r.task.await;
        }
    }
}

/// One service's life: spawn, serve, and restart with backoff until stopped.
async fn supervise(
    kernel: Arc<Kernel>,
    def: ServiceDef,
    spec: ServeSpec,
    state: Arc<ServiceState>,
    stop: watch::Receiver<Option<Duration>>,
) {
    let mut kind = def.kind.clone();
    kind.egress_limits = (
        kernel.config.egress.max_connections as usize,
        kernel.config.egress.max_bytes,
    );
    let pool = Arc::new(Supervisor::new(
        kind,
        kernel.spawner.clone(),
        kernel.config.sandbox.allow_degraded,
        1,
        kernel.audit.clone(),
        kernel.resolver.clone(),
    ));
    let host = ServiceHost {
        state: state.clone(),
        kernel: kernel.clone(),
        service: def.service,
        name: def.name.clone(),
        token: def.token.clone(),
        worker: AtomicU64::new(0),
        guard: gateway_guard::Guard::new(&kernel.config.gateway, Instant::now()),
    };
    serve_until_stopped(&kernel, &def, &spec, &state, stop, &pool, &host).await;
    host.flush_refusals().await;
}

/// Serves the service with restarts until it is stopped (or loongd shuts down).
async fn serve_until_stopped(
    kernel: &Arc<Kernel>,
    def: &ServiceDef,
    spec: &ServeSpec,
    state: &Arc<ServiceState>,
    mut stop: watch::Receiver<Option<Duration>>,
    pool: &Arc<Supervisor>,
    host: &ServiceHost,
) {
    let mut delay = SERVICE_BACKOFF.0;
    let mut attempt: u32 = 0;
    loop {
        let began = Instant::now();
        let mut rx = stop.clone();
        let stopped = async move {
            match rx.wait_for(Option::is_some).await {
                Ok(v) => v.unwrap_or(DEFAULT_DRAIN),
                // The sender is gone only with the service's entry: stop at once.
                Err(_) => Duration::ZERO,
            }
        };
        let stopped = std::pin::pin!(stopped);
        let body = WorkerRequest::Serve(Box::new(spec.clone()));
        let st = state.clone();
        let ended = pool
            .serve_service(body, host, stopped, |id, pid| {
                st.worker.store(id, Ordering::Relaxed);
                st.pid.store(pid, Ordering::Relaxed);
                st.worker_started_ms.store(
                    u64::try_from(crate::now_ms()).unwrap_or(0),
                    Ordering::Relaxed,
                );
                host.worker.store(id, Ordering::Relaxed);
            })
            .await;
        state.worker_started_ms.store(0, Ordering::Relaxed);
        // The ended worker's chat streams can be polled by no other: free them now.
        gateway::close_worker_streams(host.worker.load(Ordering::Relaxed));
        let why = match &ended {
            Ok(WorkerResponse::Stopped) => "stopped".to_string(),
            Ok(WorkerResponse::Failed(f)) => format!("failed: {}", f.message),
            Ok(other) => format!("answered {}", other.name()),
            Err(e) => e.clone(),
        };
        *lock(&state.last_exit) = Some(why.clone());
        if stop.borrow().is_some() || *kernel.shutdown.borrow() {
            return;
        }
        if began.elapsed() >= SERVICE_HEALTHY_RUN {
            delay = SERVICE_BACKOFF.0;
        }
        tracing::warn!(service = def.service.as_str(), name = %def.name, why = %why, "service worker ended; restarting after {} ms", delay.as_millis());
        let mut shutdown = kernel.shutdown.subscribe();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(Option::is_some) => return,
            _ = shutdown.wait_for(|s| *s) => return,
        }
        attempt = attempt.saturating_add(1);
        state.restarts.fetch_add(1, Ordering::Relaxed);
        kernel
            .audit
            .record_later(Event::daemon(
                Kind::WorkerRestarted,
                serde_json::json!({
                    "service": def.service.as_str(), "name": def.name, "attempt": attempt,
                    "after_ms": u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "last_exit": why,
                }),
            ))
            .await;
        delay = (delay * 2).min(SERVICE_BACKOFF.1);
    }
}

/// What a service's kernel calls are served with: the kind routing and the service's
/// identity. Bound to one service, never to a chain with authority of its own.
pub(crate) struct ServiceHost {
    pub kernel: Arc<Kernel>,
    /// The service's figures.
    pub state: Arc<ServiceState>,
    pub service: Service,
    pub name: String,
    /// A channel's token (public id): its kernel calls' authority (read by `channel.rs`).
    #[allow(dead_code)]
    pub token: Option<String>,
    /// The worker serving now.
    pub worker: AtomicU64,
    /// loongd's own limits on what the worker makes it do, and the coalescing of the
    /// refusals it records (`gateway_guard`).
    pub guard: Arc<gateway_guard::Guard>,
}

impl KernelCalls for ServiceHost {
    fn max_in_flight(&self) -> usize {
        SERVICE_MAX_IN_FLIGHT
    }

    fn start(&self, worker: u64, call: KernelCall) -> KernelAnswer<'_> {
        Box::pin(self.run(worker, call))
    }
}

impl ServiceHost {
    async fn run(&self, worker: u64, call: KernelCall) -> Result<Vec<u8>, RemoteError> {
        match self.route(&call) {
            Ok(Route::Gateway(c)) => gateway::handle(self, worker, c).await,
            Ok(Route::Channel(c)) => channel::handle(self, worker, c).await,
            Err(e) => {
                self.violation(worker, &call.kind, &e.message).await;
                Err(e)
            }
        }
    }

    fn route(&self, call: &KernelCall) -> Result<Route, RemoteError> {
        route(self.service, &self.name, call)
    }

    /// Audits a kernel call a service worker must not make (the call is refused; the worker
    /// keeps serving). Past the refusal budget, counted into one record a window.
    pub(crate) async fn violation(&self, worker: u64, kind: &str, why: &str) {
        if !self.record_refusal(gateway_guard::Refusal::Violation, worker) {
            return;
        }
        self.kernel
            .audit
            .record_later(Event {
                kind: Kind::ProtocolViolation,
                actor: format!("worker:{worker}").into(),
                correlation: crate::audit::no_correlation(),
                detail: serde_json::json!({
                    "worker": worker, "service": self.service.as_str(), "name": self.name,
                    "kernel_call": kind, "violation": why, "retired": false,
                })
                .into(),
            })
            .await;
    }
}

impl ServiceHost {
    /// Whether a refusal of `kind` by `worker` is recorded now (within the budget); else it
    /// is counted, and the first of a window schedules the window's one record.
    pub(crate) fn record_refusal(&self, kind: gateway_guard::Refusal, worker: u64) -> bool {
        use gateway_guard::Record;
        match self.guard.refusal(kind, Instant::now()) {
            Record::Now => true,
            Record::Counted(false) => false,
            Record::Counted(true) => {
                let (guard, kernel) = (self.guard.clone(), self.kernel.clone());
                let (service, name) = (self.service, self.name.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(gateway_guard::COALESCE_WINDOW).await;
                    let n = guard.take_counted(kind);
                    record_coalesced(&kernel, service, &name, worker, kind, n).await;
                });
                false
            }
        }
    }
}

impl ServiceHost {
    /// Records the refusals counted and not yet recorded (the service stops: a window's
    /// scheduled record would be written after loongd's last, or never).
    async fn flush_refusals(&self) {
        let worker = self.worker.load(Ordering::Relaxed);
        for kind in [
            gateway_guard::Refusal::Bearer,
            gateway_guard::Refusal::Violation,
        ] {
            let n = self.guard.take_counted(kind);
            record_coalesced(&self.kernel, self.service, &self.name, worker, kind, n).await;
        }
    }
}

/// The one record of `n` refusals of `kind` counted in a window (none when `n` is 0: the
/// window was recorded already, at the service's stop).
async fn record_coalesced(
    kernel: &Kernel,
    service: Service,
    name: &str,
    worker: u64,
    kind: gateway_guard::Refusal,
    n: u64,
) {
    use gateway_guard::Refusal;
    if n == 0 {
        return;
    }
    let service = service.as_str();
    let window_ms = u64::try_from(gateway_guard::COALESCE_WINDOW.as_millis()).unwrap_or(0);
    let (event_kind, detail) = match kind {
        Refusal::Bearer => (
            Kind::PolicyDecision,
            serde_json::json!({
                "allowed": false, "stage": "token", "coalesced": n,
                "window_ms": window_ms, "service": service, "name": name,
                "worker": worker,
                "reason": "gateway authentications refused (a secret that names no live token, or a token that may invoke no tool), past the refusals recorded one by one",
            }),
        ),
        Refusal::Violation => (
            Kind::ProtocolViolation,
            serde_json::json!({
                "coalesced": n, "window_ms": window_ms, "service": service,
                "name": name, "worker": worker, "retired": false,
                "violation": "kernel calls refused, past the refusals recorded one by one",
            }),
        ),
    };
    kernel
        .audit
        .record_later(Event {
            kind: event_kind,
            actor: format!("worker:{worker}").into(),
            correlation: crate::audit::no_correlation(),
            detail: detail.into(),
        })
        .await;
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Gateway(ServiceCall),
    Channel(ServiceCall),
}

/// Where a kernel call of the `service` named `name` goes: that service's own kinds only.
fn route(service: Service, name: &str, call: &KernelCall) -> Result<Route, RemoteError> {
    let refused = |why: String| RemoteError::new(ErrorKind::Denied, why);
    match call.request() {
        Ok(KernelRequest::Service(c)) if c.kind.starts_with(service.prefix()) => {
            Ok(match service {
                Service::Gateway => Route::Gateway(c),
                Service::Channel => Route::Channel(c),
            })
        }
        Ok(KernelRequest::Service(c)) => Err(refused(format!(
            "kernel call {}: the {} service {name} may make only {}* kernel calls",
            c.kind,
            service.as_str(),
            service.prefix()
        ))),
        Ok(_) => Err(refused(format!(
            "kernel call {}: the {} service {name} has no authority of its own; it may make only {}* kernel calls",
            call.kind,
            service.as_str(),
            service.prefix()
        ))),
        Err(e) => Err(RemoteError::new(ErrorKind::BadRequest, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loong_ipc::{InvokeTool, ShowText};

    fn call(req: KernelRequest) -> KernelCall {
        req.encode(1, 1, 100).expect("encodes")
    }

    fn svc(kind: &str) -> KernelCall {
        call(KernelRequest::Service(ServiceCall {
            kind: kind.into(),
            payload: vec![1],
        }))
    }

    #[test]
    fn a_service_makes_only_its_own_kinds() {
        // Positive controls: each service's own kinds reach its handler.
        assert!(matches!(
            route(Service::Gateway, "gateway", &svc("gateway_list")),
            Ok(Route::Gateway(c)) if c.kind == "gateway_list"
        ));
        assert!(matches!(
            route(Service::Channel, "ops", &svc("channel_send")),
            Ok(Route::Channel(c)) if c.kind == "channel_send"
        ));
        // The other service's kinds are refused.
        let e = route(Service::Gateway, "gateway", &svc("channel_send")).expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Denied);
        assert!(e.message.contains("only gateway_*"), "{}", e.message);
        let e = route(Service::Channel, "ops", &svc("gateway_invoke")).expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Denied);
        // The Serve call's chain has no authority: a tool call or shown text is refused.
        for req in [
            KernelRequest::InvokeTool(InvokeTool {
                tool: "echo".into(),
                input: "{}".into(),
            }),
            KernelRequest::ShowText(ShowText { text: "hi".into() }),
        ] {
            for service in [Service::Gateway, Service::Channel] {
                let e = route(service, "x", &call(req.clone())).expect_err("refused");
                assert_eq!(e.kind, ErrorKind::Denied);
                assert!(e.message.contains("no authority"), "{}", e.message);
            }
        }
        // A kind nobody knows, and a malformed one.
        let mut unknown = svc("gateway_list");
        unknown.kind = "memory_read".into();
        let e = route(Service::Gateway, "gateway", &unknown).expect_err("refused");
        assert_eq!(e.kind, ErrorKind::BadRequest);
        let mut bad = call(KernelRequest::InvokeTool(InvokeTool {
            tool: "echo".into(),
            input: "{}".into(),
        }));
        bad.payload.push(0);
        assert!(route(Service::Gateway, "gateway", &bad).is_err());
    }
}
