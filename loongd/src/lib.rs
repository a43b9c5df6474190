//! loongd, the Loong kernel daemon.
//!
//! It owns a home (directories, lock, configuration), checks its audit trail, and serves the
//! control API on its Unix socket: policy, approvals, tokens, audit and the worker supervisor
//! live here and nowhere else.

pub mod audit;
pub mod authority;
pub mod channel_status;
pub mod config;
mod control;
mod effects;
mod egress;
pub mod home;
pub mod metrics;
pub mod notify;
pub mod programs;
mod registry;
mod request;
mod sandbox;
pub mod schema;
mod secrets;
mod services;
mod spawner;
mod workers;

use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Instant,
};

use anyhow::{bail, Context};
use loong_ipc::paths::Layout;
use nix::unistd::{Gid, Group};
use tokio::sync::watch;

pub use config::Config;

/// How loongd was asked to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The home to own.
    pub layout: Layout,
    /// Stay in the caller's session (for a terminal or a service manager). Otherwise loongd
    /// leaves the caller's session, as `loongctl daemon start` wants.
    pub foreground: bool,
    /// Start even when the audit trail fails its start-up verification, recording
    /// `audit.integrity_failed` (the operator's explicit override).
    pub accept_audit_integrity_failure: bool,
    /// The service manager to tell of readiness, shutdown and liveness, when there is one.
    pub notify: Option<notify::Notifier>,
}

/// State shared by every part of the running daemon.
#[derive(Debug)]
pub struct Kernel {
    started: Instant,
    layout: Layout,
    config: Config,
    allowed_gid: Option<Gid>,
    connected: AtomicU32,
    shutdown: watch::Sender<bool>,
    /// The sandbox spawner, or why there is none (sandbox requests then fail closed).
    spawner: Result<Arc<loong_sandbox::Spawner>, crate::spawner::SpawnerUnavailable>,
    /// The audit trail.
    audit: audit::Audit,
    /// Packs, the denylist, tokens and the decision pipeline.
    authority: authority::Authority,
    /// Requests waiting for an approval, woken when it is resolved.
    approval_waiters: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
    /// The worker pool.
    workers: Arc<workers::Supervisor>,
    /// Discovered plugins, replaced whole by a reload.
    plugins: std::sync::RwLock<Arc<workers::plugins::Registry>>,
    /// The plugin set's generation: changed (under `plugins`' write lock) with every set it
    /// holds, so that what was worked out from one set (a gateway cursor's position, a
    /// token's gateway authentication) is known stale once the set changes.
    plugins_generation: std::sync::atomic::AtomicU64,
    /// `tools search`'s index of the plugin set it was made from (`registry::search`).
    search_index: registry::search::IndexCache,
    /// Held by whatever changes the plugin set (reload, install, enable, …), one at a time.
    plugin_ops: tokio::sync::Mutex<()>,
    /// The one resolver every connection's name is looked up and vetted with (`[egress]`).
    resolver: Arc<egress::resolve::Resolver>,
    /// The service workers (the gateway, channels) and their supervisors.
    services: services::Services,
    /// The exit tasks of sandbox runs whose ends are not yet recorded (`sandbox::Reapers`):
    /// loongd's stop waits for them before its last record.
    reapers: sandbox::Reapers,
    /// The kernel itself, for what must outlive a request (a service's supervisor).
    me: std::sync::Weak<Kernel>,
    /// The browser tools' sessions, each a pool of its own.
    browser: workers::browser::Sessions,
}

impl Kernel {
    fn new(
        layout: Layout,
        config: Config,
        allowed_gid: Option<Gid>,
        spawner: Result<Arc<loong_sandbox::Spawner>, crate::spawner::SpawnerUnavailable>,
        audit: audit::Audit,
        authority: authority::Authority,
        resolver: Arc<egress::resolve::Resolver>,
    ) -> Kernel {
        let workers = Arc::new(
            workers::Supervisor::new(
                workers::WorkerKind::wasm(),
                spawner.clone(),
                config.sandbox.allow_degraded,
                config.workers.wasm_pool_size as usize,
                audit.clone(),
                resolver.clone(),
            )
            .keep_spare(config.workers.wasm_spare)
            .compiled_store(workers::compiled::Store::new(&layout.home)),
        );
        Kernel {
            resolver,
            browser: workers::browser::Sessions::default(),
            workers,
            plugins: std::sync::RwLock::default(),
            plugins_generation: std::sync::atomic::AtomicU64::new(0),
            search_index: std::sync::Mutex::default(),
            plugin_ops: tokio::sync::Mutex::new(()),
            spawner,
            audit,
            authority,
            approval_waiters: std::sync::Mutex::default(),
            started: Instant::now(),
            layout,
            config,
            allowed_gid,
            connected: AtomicU32::new(0),
            shutdown: watch::Sender::new(false),
            services: services::Services::default(),
            reapers: sandbox::Reapers::default(),
            me: std::sync::Weak::new(),
        }
    }

    /// The kernel as an `Arc` (`None` only while it is being built or dropped).
    fn arc(&self) -> Option<Arc<Kernel>> {
        self.me.upgrade()
    }

    /// Asks every part of the daemon to stop.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves once shutdown has been asked for.
    pub async fn shut_down(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The plugins as they stand now (a reload replaces the whole set, not this one).
    fn plugins_snapshot(&self) -> Arc<workers::plugins::Registry> {
        self.plugins
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The plugins as they stand now and their generation (`plugins_generation`).
    fn plugins_versioned(&self) -> (u64, Arc<workers::plugins::Registry>) {
        let guard = self
            .plugins
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = self
            .plugins_generation
            .load(std::sync::atomic::Ordering::Acquire);
        (generation, guard.clone())
    }

    /// Records what a deferred plugin's first load told (its tools, or its module's digest),
    /// so that listing and search show it. Only while the registry still holds that plugin
    /// at that generation on that pool: a reload in between made a new entry, which learns
    /// from its own first call. Returns whether the entry changed.
    fn learn(
        &self,
        id: &str,
        generation: u64,
        pool: &Arc<workers::Supervisor>,
        learned: workers::LoadInfo,
    ) -> bool {
        use workers::plugins::State;
        let mut guard = self
            .plugins
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let same = |p: &workers::plugins::Plugin| {
            p.deferred()
                && matches!(&p.state, State::Ready { plugin, pool: Some(own), .. }
                    if plugin.generation == generation && Arc::ptr_eq(own, pool))
        };
        if !guard.get(id).is_some_and(same) {
            return false;
        }
        let mut next = (**guard).clone();
        if let Some(State::Ready { info, .. }) = next.get_mut(id).map(|p| &mut p.state) {
            *info = learned;
        }
        *guard = Arc::new(next);
        self.plugins_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        true
    }

    /// Replaces the plugin set; returns the previous one. The WASM pool keeps a spare worker
    /// only while some plugin of the set runs in it.
    fn set_plugins(&self, registry: workers::plugins::Registry) -> Arc<workers::plugins::Registry> {
        let wasm = registry.values().any(|p| {
            matches!(&p.state, workers::plugins::State::Ready { pool: Some(pool), .. }
                if !self.is_own_pool(pool))
        });
        self.workers.want_spare(wasm);
        let registry = Arc::new(registry);
        // The search index is made here, off any query's path.
        self.search_index(&registry);
        let mut guard = self
            .plugins
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.plugins_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        std::mem::replace(&mut *guard, registry)
    }

    /// `tools search`'s index of `registry` (made once per plugin set).
    fn search_index(
        &self,
        registry: &Arc<workers::plugins::Registry>,
    ) -> Arc<registry::search::SearchIndex> {
        registry::search::index_for(&self.search_index, registry)
    }

    /// The pool a plugin runs in: the shared WASM pool (`None`), or a new pool of its own.
    fn pool_for(&self, kind: Option<&workers::WorkerKind>) -> Arc<workers::Supervisor> {
        match kind {
            None => self.workers.clone(),
            Some(k) => self.new_pool(k.clone()),
        }
    }

    /// Whether `pool` belongs to one plugin (not the shared WASM pool).
    fn is_own_pool(&self, pool: &Arc<workers::Supervisor>) -> bool {
        !Arc::ptr_eq(pool, &self.workers)
    }

    /// A pool of `kind`'s workers (a foreign program's), with its health checks: one worker,
    /// or `[workers] agent_pool_size` of the agent's (each turn holds its worker to the end,
    /// an approval's wait included, so one worker would hold every other turn behind it).
    fn new_pool(&self, mut kind: workers::WorkerKind) -> Arc<workers::Supervisor> {
        let size = if kind.name == workers::WorkerKind::AGENT {
            self.config.workers.agent_pool_size as usize
        } else {
            1
        };
        kind.egress_limits = egress::limits_for(
            kind.net_owner.as_deref(),
            &kind.egress_asked,
            (
                self.config.egress.max_connections,
                self.config.egress.max_bytes,
            ),
        );
        let pool = Arc::new(workers::Supervisor::new(
            kind,
            self.spawner.clone(),
            self.config.sandbox.allow_degraded,
            size,
            self.audit.clone(),
            self.resolver.clone(),
        ));
        tokio::spawn(workers::health_loop(pool.clone()));
        pool
    }

    /// Live workers by kind, across every pool (for the metrics).
    fn live_workers(&self) -> std::collections::BTreeMap<String, usize> {
        let mut by_kind = std::collections::BTreeMap::new();
        for pool in registry::all_pools(self) {
            for w in pool.list() {
                *by_kind.entry(w.kind).or_default() += 1;
            }
        }
        by_kind
    }

    fn connected(&self) -> u32 {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Loads the configuration, takes the home and serves until shutdown. `init_log` receives the
/// configured log filter and installs the subscriber (binaries own subscribers).
pub fn run(opts: Options, init_log: impl FnOnce(&str)) -> anyhow::Result<()> {
    let layout = opts.layout;
    if let Some(dir) = layout.config_file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Everything loongd creates is private unless it says otherwise.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let config = Config::load_or_init(&layout.config_file)?;
    egress::set_total_limit(config.egress.max_total_connections as usize);
    egress::set_tuning(egress::Tuning {
        idle: std::time::Duration::from_millis(config.egress.idle_timeout_ms),
        per_second: config.egress.connections_per_second,
        burst: config.egress.connections_burst,
    });
    init_log(&config.log.level);
    // The trust anchors every HTTP worker gets; an operator bundle that does not load stops
    // loongd rather than leave its internal services unverifiable.
    let anchors = workers::trust::load(config.egress.ca_bundle.as_deref())?;
    tracing::debug!(anchors, "trust anchors for https endpoints loaded");
    if !opts.foreground {
        // Leave the launcher's session so that its terminal's signals do not reach us. This
        // fails when we already lead a process group (started from an interactive shell);
        // then there is no launcher to leave and we go on.
        if let Err(e) = nix::unistd::setsid() {
            tracing::debug!(error = %e, "setsid not possible; staying in the current session");
        }
    }
    let allowed_gid = match &config.control.allowed_group {
        None => None,
        Some(name) => match Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid),
            Ok(None) => bail!(
                "{}: control.allowed_group names group `{name}`, which does not exist on this host",
                layout.config_file.display()
            ),
            Err(e) => bail!(
                "looking up group `{name}` from {}: {e}",
                layout.config_file.display()
            ),
        },
    };
    let (lock, listener) = home::take(&layout, allowed_gid)?;
    // The secrets connectors' headers name; a store that does not read stops loongd.
    secrets::open(&layout.home)?;
    // Bound before anything is served, so that a port in use stops the start with its reason.
    let metrics_listener = config
        .metrics
        .listen
        .as_ref()
        .map(metrics::bind)
        .transpose()?;
    listener
        .set_nonblocking(true)
        .context("making the control socket non-blocking")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loongd")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // loongd's own state is invisible to every sandbox.
    let mut hidden = vec![layout.home.clone(), layout.run_dir.clone()];
    if let Some(dir) = layout.config_file.parent() {
        hidden.push(dir.to_path_buf());
    }
    // As the grants they are compared with are, and as the spawn helper reaches a mount
    // point: resolved, without a symlink on the way (a home under a symlinked directory was
    // neither matched against a grant of its real path nor masked in the trusted tier).
    for h in &mut hidden {
        if let Ok(real) = std::fs::canonicalize(&*h) {
            *h = real;
        }
    }
    let spawner = spawner::start_spawner(hidden, &config.sandbox);
    match &spawner {
        Ok(s) => {
            for t in loong_sandbox::Tier::ALL {
                let missing = s.host().missing_for(t);
                if !missing.is_empty() {
                    let names: Vec<&str> = missing.iter().map(|m| m.name()).collect();
                    tracing::warn!(tier = %t, missing = ?names, "this host cannot fully enforce the tier; its sandboxes are refused unless degraded mode is allowed");
                }
            }
        }
        Err(e) => tracing::error!("sandboxes are unavailable: {e}"),
    }
    // Schema versions first: a file a newer loongd wrote is refused before any store opens
    // it; an older one is migrated forward (named in this run's `daemon.started`).
    let migrations = schema::prepare_home(&layout.home)?;
    for m in &migrations {
        tracing::info!(
            file = m.file,
            from = m.from,
            to = m.to,
            "database schema migrated"
        );
    }
    // No audit trail, no daemon: every decision must be recorded.
    let witness = config.audit.witness(&layout.home);
    let audit = audit::open_with(
        &layout.home,
        config.audit.siem(),
        config.audit.durability(),
        &witness,
    )
    .context("opening the audit trail")?;
    // A trail that fails its check (the tail since the newest checkpoint, and the witness)
    // is not appended to, unless the operator says so; then the trail says so too.
    let integrity_failed = audit.startup().integrity.first_bad.clone();
    if let Some((seq, problem)) = &integrity_failed {
        if !opts.accept_audit_integrity_failure {
            runtime.block_on(audit.shutdown());
            bail!(
                "the audit trail fails verification at record {seq}: {problem}; compare it with the SIEM lanes and the witness file {}, restore it from a backup, or start loongd with --accept-audit-integrity-failure to record the failure and go on",
                witness.display()
            );
        }
        tracing::error!(first_bad_seq = seq, problem, "the audit trail fails verification; starting anyway, as --accept-audit-integrity-failure asks");
        // The first record of this run, so the checkpoint that signs the failed trail signs
        // this note with it.
        let failed = audit::Event::daemon(
            audit::Kind::AuditIntegrityFailed,
            serde_json::json!({
                "first_bad_seq": seq, "problem": problem,
                "witness_file": witness.display().to_string(),
                "override": "--accept-audit-integrity-failure",
            }),
        );
        runtime
            .block_on(audit.record(failed))
            .context("recording the accepted integrity failure in the audit trail")?;
    }
    let unenforceable: Vec<String> = match &spawner {
        Ok(s) => loong_sandbox::Tier::ALL
            .iter()
            .filter(|t| !s.host().missing_for(**t).is_empty())
            .map(ToString::to_string)
            .collect(),
        Err(_) => loong_sandbox::Tier::ALL
            .iter()
            .map(ToString::to_string)
            .collect(),
    };
    // Policy data that does not load stops loongd, with every problem named.
    let mut authority = authority::Authority::load(&layout.home)
        .context("loading packs, the denylist and the token table")?;
    // An operator risk profile must match its pin and signature, or loongd does not start;
    // either way the audit trail says so.
    let profile = authority.load_risk_profile(&config.policy);
    let (kind, detail) = match &profile {
        Ok(d) => (audit::Kind::ProfileLoaded, d.clone()),
        Err(why) => (
            audit::Kind::ProfileRejected,
            serde_json::json!({ "profile": config.policy.risk_profile, "reason": why.to_string() }),
        ),
    };
    runtime
        .block_on(audit.record(audit::Event::daemon(kind, detail)))
        .context("recording the risk profile in the audit trail")?;
    if let Err(why) = profile {
        runtime.block_on(audit.shutdown());
        bail!("the risk profile is refused: {why}");
    }
    // One resolver for every name loongd looks up on a sandbox's behalf.
    let resolver = {
        let _entered = runtime.enter();
        egress::resolve::Resolver::from_config(&config.egress)
    };
    let resolver = match resolver {
        Ok(r) => Arc::new(r),
        Err(why) => {
            runtime.block_on(audit.shutdown());
            bail!("{why}");
        }
    };
    let kernel = Arc::new_cyclic(|me| {
        let mut k = Kernel::new(
            layout,
            config,
            allowed_gid,
            spawner,
            audit,
            authority,
            resolver,
        );
        k.me = me.clone();
        k
    });
    let result = runtime.block_on(async {
        let listener = tokio::net::UnixListener::from_std(listener)
            .context("registering the control socket")?;
        tracing::info!(
            pid = std::process::id(),
            home = %kernel.layout.home.display(),
            socket = %kernel.layout.socket.display(),
            version = env!("CARGO_PKG_VERSION"),
            "loongd started"
        );
        let started = audit::Event::daemon(
            audit::Kind::DaemonStarted,
            serde_json::json!({
                "pid": std::process::id(),
                "version": env!("CARGO_PKG_VERSION"),
                "home": kernel.layout.home.display().to_string(),
                "audit_sync": kernel.config.audit.durability().as_str(),
                "audit_witness": witness.display().to_string(),
                "tiers_not_enforceable": unenforceable,
                "schema_migrations": migrations,
                "sandbox_ids": sandbox::ids_record(&kernel),
            }),
        );
        // One commit: the start, what the previous run left open, and an accepted failure.
        let mut events = vec![started];
        events.extend(after_previous_run(&kernel.audit.startup().previous));
        kernel
            .audit
            .queue_all(events)
            .await
            .context("recording the start in the audit trail")?
            .committed()
            .await
            .context("recording the start in the audit trail")?;
        // Requests that were waiting for an approval died with the previous daemon.
        // Each recorded under the token that asked, so its trail shows how it ended; on
        // record before the store ends them, so a kill in between loses none.
        effects::approval::expire_left_pending(&kernel)
            .await
            .map_err(|e| anyhow::anyhow!("expiring approvals left pending: {}", e.message))?;
        // A full-access window grants only what the trail shows granted: one whose record
        // never committed (loongd killed after the store opened it) is closed.
        effects::approval::close_unrecorded_windows(&kernel).map_err(|e| {
            anyhow::anyhow!("closing full-access windows not on record: {}", e.message)
        })?;
        // Approvals the store shows given and never taken: their waiters died with the
        // previous daemon between the approve and the taking (or before the approve was
        // recorded), so nothing ran; recorded once, as the trail (not the store) shows them.
        effects::approval::record_untaken(&kernel)
            .await
            .map_err(|e| anyhow::anyhow!("recording approvals left untaken: {}", e.message))?;
        // A token from before ids and secrets were split has its secret in the trail: it is
        // revoked, and the revocation audited, before any request is served.
        for id in kernel
            .authority
            .tokens
            .retire_old_format()
            .context("revoking tokens of the old format")?
        {
            kernel
                .audit
                .record_later(audit::Event::daemon(
                    audit::Kind::TokenRevoked,
                    serde_json::json!({ "token": id, "why": "old format: its id was its bearer secret and is in the audit trail; issue a new token" }),
                ))
                .await;
        }
        tokio::spawn(signals(kernel.clone()));
        if let Some(l) = metrics_listener {
            tokio::spawn(metrics::serve(l, kernel.clone()));
        }
        // The watchdog is fed from here on: plugin discovery below may take a while, and the
        // manager may count from the start.
        if let Some(n) = &opts.notify {
            feed_watchdog(n.clone());
        }
        tokio::spawn(workers::health_loop(kernel.workers.clone()));
        // Plugins are discovered, and each loaded once in a worker, before the first request
        // is served, so a client never sees a half-discovered set.
        registry::reload(&kernel).await;
        // `[gateway] enabled`: the gateway starts with loongd (a listener that cannot be
        // bound is logged, and loongd serves on without it).
        if kernel.config.gateway.enabled {
            if let Err(e) = services::gateway::start(&kernel) {
                tracing::error!(error = %e, "the gateway did not start");
            }
        }
        services::channel::start_all(&kernel).await;
        tokio::spawn(control::run_channel_turns(kernel.clone()));
        if let Some(n) = &opts.notify {
            tell_manager(n.clone(), kernel.clone());
        }
        // On a worker thread, not this one: a connection's task then starts on the worker
        // that accepted it, without waking another thread (two hand-offs a connection).
        if let Err(e) = tokio::spawn(control::serve(listener, kernel.clone())).await {
            tracing::error!(error = %e, "the control socket's accept loop failed");
            // Everything else stops as on a requested stop (runs killed and recorded below).
            kernel.shutdown();
        }
        // The services drain their open streams and stop.
        kernel.services.stop_all(services::DEFAULT_DRAIN).await;
        // Open egress connections end, recorded closed before the daemon's last record.
        egress::stop_all().await;
        // Sandbox runs still going (their requests outlive their connections) are killed, and
        // their ends (and starts still held) recorded, before the daemon's last record.
        if !kernel.reapers.stop_all(sandbox::REAP_GRACE).await {
            tracing::error!(
                "sandbox runs still unrecorded {} s after the stop; their ends are missing from the trail",
                sandbox::REAP_GRACE.as_secs()
            );
        }
        kernel.workers.shutdown();
        kernel.workers.reap_idle().await;
        for pool in registry::own_pools(&kernel.plugins_snapshot(), &kernel)
            .into_iter()
            .chain(kernel.browser.drain())
        {
            pool.shutdown();
            pool.reap_idle().await;
        }
        let stopped = audit::Event::daemon(
            audit::Kind::DaemonStopped,
            serde_json::json!({ "pid": std::process::id() }),
        );
        if let Err(e) = kernel.audit.record(stopped).await {
            tracing::error!(error = %e, "could not record the shutdown in the audit trail");
        }
        kernel.audit.shutdown().await;
        anyhow::Ok(())
    });
    drop(lock);
    tracing::info!("loongd stopped");
    result
}

/// The records that follow `daemon.started`: the previous run's unclean stop (right after
/// it, as verification expects) and a `tool.failed` for each call the previous run left
/// without an outcome.
fn after_previous_run(previous: &audit::PreviousRun) -> Vec<audit::Event> {
    let mut events = Vec::new();
    if let Some(started) = previous.unclean {
        events.push(audit::Event::daemon(
            audit::Kind::DaemonUncleanStop,
            serde_json::json!({
                "previous_start_seq": started, "last_seq": previous.last_seq,
                "dangling_calls": previous.dangling.len(),
            }),
        ));
    }
    let how = if previous.unclean.is_some() {
        "loongd stopped (an unclean stop: a crash or kill -9) before the call answered; its outcome is unknown"
    } else {
        "loongd stopped before the call answered; its outcome is unknown"
    };
    for d in &previous.dangling {
        events.push(audit::Event {
            kind: audit::Kind::ToolFailed,
            actor: d.actor.as_str().into(),
            correlation: d.correlation.as_str().into(),
            detail: serde_json::json!({
                "tool": d.tool, "failure": "kernel_stopped", "message": how,
                "invoked_seq": d.seq,
            })
            .into(),
        });
    }
    events
}

/// Tells the service manager that loongd is ready (the control socket is listening and its
/// accept loop starts next, so a client connecting now is answered), and when shutdown begins.
fn tell_manager(n: notify::Notifier, kernel: Arc<Kernel>) {
    n.notify("READY=1");
    tokio::spawn(async move {
        kernel.shut_down().await;
        n.notify("STOPPING=1");
    });
}

/// Keeps the manager's watchdog fed at half the interval it asked for, from the runtime that
/// serves requests: a wedged runtime starves it, and the manager restarts loongd.
fn feed_watchdog(n: notify::Notifier) {
    let Some(interval) = n.watchdog() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tick.tick().await;
            n.notify("WATCHDOG=1");
        }
    });
}

async fn signals(kernel: Arc<Kernel>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!(
            "cannot install signal handlers; use `loongctl daemon stop` to stop loongd"
        );
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => { tracing::info!("SIGHUP ignored: restart loongd to apply a changed configuration"); }
        }
    }
    kernel.shutdown();
}

/// Milliseconds since the Unix epoch, the unit every stored timestamp uses (0 if the clock
/// reads before 1970).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
