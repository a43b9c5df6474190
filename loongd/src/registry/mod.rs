//! The plugin registry: discovery and reload (each plugin loaded once in a worker, the set
//! switched whole), the pools the plugins run in, and the lifecycle of installed packages
//! (`lifecycle.rs`). Below `control/` and `effects/`: the control API translates requests
//! into these calls, and a tool call finds its plugin in the set they keep.

pub(crate) mod lifecycle;
pub(crate) mod search;

use std::sync::Arc;

use crate::{
    audit::{Event, Kind},
    workers::{
        plugins::{self, State},
        CallError, LoadInfo, Supervisor,
    },
    Kernel,
};

/// Discovers `HOME/plugins` again and loads each plugin once in a worker; every plugin's
/// outcome is audited (`plugin.loaded` or `plugin.refused`). Used at start and by
/// `plugins reload`. The previous set's own pools (foreign programs) are stopped once the
/// new set is in place.
pub(crate) async fn reload(kernel: &Kernel) {
    let _ops = kernel.plugin_ops.lock().await;
    reload_locked(kernel).await
}

/// [`reload`], for a caller that holds `plugin_ops`.
pub(crate) async fn reload_locked(kernel: &Kernel) {
    let root = kernel.layout.home.join("plugins");
    let lock = crate::workers::lock::read(&kernel.layout.home).unwrap_or_else(|e| {
        tracing::error!(error = %e, "reading the lockfile; installed plugins are checked against nothing");
        Default::default()
    });
    let mut builtins =
        crate::workers::builtins::entries(&kernel.config.builtins, &kernel.config.agent);
    builtins.extend(crate::workers::builtins::browser_entries(
        &kernel.config.browser,
    ));
    let keys = kernel.authority.keys.list().unwrap_or_else(|e| {
        tracing::error!(error = %e, "reading the keyring; every signed plugin will be refused");
        Vec::new()
    });
    let pins = kernel.config.plugins.clone();
    let resolver = kernel.resolver.clone();
    let mut found = tokio::task::spawn_blocking(move || {
        plugins::discover(&root, &keys, &lock, &pins, &resolver)
    })
    .await
    .unwrap_or_default();
    // A plugin directory named after a built-in tool failed discovery (and is audited as
    // refused below); the built-in, last in the list, keeps the name in the registry.
    found.extend(builtins);
    // What this discovery starts is stopped if it ends before its set is in place (its
    // request's deadline or cancellation drops it mid-load): nothing else would stop it.
    let mut started = Started::default();
    let outcomes = load_all(kernel, &mut found, &mut started, discovery_time()).await;
    // The built-ins' tools are counted first: the bound refuses plugins, never a built-in.
    let max_tools = max_set_tools();
    let mut tools_in_set: usize = found
        .iter()
        .filter(|p| p.bridge_kind == crate::workers::builtins::BUILTIN)
        .map(|p| p.tool_names().len())
        .sum();
    // Recorded and applied in the set's order, whatever order the loads finished in.
    for (p, outcome) in found.iter_mut().zip(outcomes) {
        let outcome = match outcome {
            Outcome::Skipped => continue,
            Outcome::Deferred => {
                // An MCP server's tools are known only once its first call loads it: counted
                // at the most a plugin may list, so that what it learns then cannot pass the
                // bound (any other plugin is its one tool).
                let most = if p.has_named_tools() {
                    loong_ipc::message::worker::MAX_TOOLS
                } else {
                    1
                };
                if tools_in_set.saturating_add(most) > max_tools {
                    let why = past_the_tool_bound(&p.id, most, tools_in_set, max_tools);
                    let why = format!("{why} (deferred: its tools are not known before its first call, so it counts as the most a plugin may list, {most})");
                    stop_own_pool(kernel, p);
                    tracing::warn!(plugin = %p.id, "plugin refused: {why}");
                    kernel
                        .audit
                        .record_later(Event::daemon(
                            Kind::PluginRefused,
                            serde_json::json!({ "plugin": p.id, "reason": why }),
                        ))
                        .await;
                    p.state = State::Failed(why);
                    continue;
                }
                tools_in_set += most;
                // Started by its first call; its manifest was checked at discovery.
                kernel
                    .audit
                    .record_later(Event::daemon(
                        Kind::PluginLoaded,
                        serde_json::json!({
                            "plugin": p.id, "version": p.version,
                            "bridge_kind": p.bridge_kind, "deferred": true,
                        }),
                    ))
                    .await;
                continue;
            }
            Outcome::Done(outcome) => outcome,
        };
        let outcome = match outcome {
            Ok(info) if p.bridge_kind != crate::workers::builtins::BUILTIN => {
                let tools = info.tools.len().max(1);
                if tools_in_set.saturating_add(tools) > max_tools {
                    stop_own_pool(kernel, p);
                    Err(past_the_tool_bound(&p.id, tools, tools_in_set, max_tools))
                } else {
                    tools_in_set += tools;
                    Ok(info)
                }
            }
            other => other,
        };
        let detail = match &outcome {
            Ok(info) => serde_json::json!({
                "plugin": p.id, "version": p.version, "bridge_kind": p.bridge_kind,
                "trust": p.trust.as_str(), "signer": p.signer,
                "sha256": info.sha256, "compiled": info.compiled,
                "tools": info.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            }),
            Err(why) => serde_json::json!({ "plugin": p.id, "reason": why }),
        };
        let kind = if outcome.is_ok() {
            Kind::PluginLoaded
        } else {
            Kind::PluginRefused
        };
        kernel.audit.record_later(Event::daemon(kind, detail)).await;
        match outcome {
            Ok(loaded) => {
                if let State::Ready { info, .. } = &mut p.state {
                    *info = loaded;
                }
            }
            Err(why) => {
                tracing::warn!(plugin = %p.id, "plugin refused: {why}");
                p.state = State::Failed(why);
            }
        }
    }
    let registry: plugins::Registry = found.into_iter().map(|p| (p.id.clone(), p)).collect();
    let old = kernel.set_plugins(registry);
    started.keep();
    // The calls the previous set's own pools are running finish first.
    for pool in own_pools(&old, kernel) {
        tokio::spawn(pool.drain_then_shutdown());
    }
}

/// The most plugins a discovery loads at once: each load of a foreign program starts it in
/// its own sandbox and waits for its listing (an MCP server's `initialize` and `tools/list`
/// pages), which is mostly waiting, so loads overlap; the bound keeps a set of hundreds of
/// servers from starting hundreds of processes at once.
pub const MAX_CONCURRENT_LOADS: usize = 8;

/// The most tools one plugin set holds, its built-ins' included: each costs loongd about
/// 4 KiB (its description and input schema, held once by the set, and its search entry;
/// docs/performance-log.md, "Scale"), so the bound keeps the set near 256 MiB, against about
/// 1 GiB for `MAX_PLUGINS` (1,024) programs of 256 tools each. A discovery past it keeps the
/// plugins that fit, in the set's (id) order, and refuses the rest (`plugin.refused`, naming
/// the bound).
pub const MAX_SET_TOOLS: usize = 65_536;

/// The longest one discovery (a start's, a reload's, an install's) waits for its loads, all
/// together: each load has its own deadline (`LOAD_TIMEOUT`, 30 s), but a set of stalled
/// programs, [`MAX_CONCURRENT_LOADS`] at a time, would otherwise hold a reload for
/// `MAX_PLUGINS` / 8 × 30 s. Past it the loads not finished are stopped and refused, so a
/// reload answers within it (below `loongctl plugins reload`'s own wait, 120 s).
pub const MAX_DISCOVERY_TIME: std::time::Duration = std::time::Duration::from_secs(90);

/// The environment variables that make a debug build's loongd use smaller scale bounds than
/// [`MAX_SET_TOOLS`] and [`MAX_DISCOVERY_TIME`] (in ms), so that the tests reach them with a
/// few plugins (tests/all/bridges.rs). A release loongd never reads them.
#[cfg_attr(not(debug_assertions), allow(dead_code))]
pub const TEST_MAX_SET_TOOLS_ENV: &str = "LOONG_TEST_MAX_SET_TOOLS";
#[cfg_attr(not(debug_assertions), allow(dead_code))]
pub const TEST_DISCOVERY_MS_ENV: &str = "LOONG_TEST_DISCOVERY_MS";

#[cfg(debug_assertions)]
fn test_bound(var: &str) -> Option<u64> {
    std::env::var(var).ok().and_then(|v| v.parse().ok())
}

#[cfg(not(debug_assertions))]
fn test_bound(_var: &str) -> Option<u64> {
    None
}

/// [`MAX_SET_TOOLS`] (a smaller one in a test's debug build).
fn max_set_tools() -> usize {
    test_bound(TEST_MAX_SET_TOOLS_ENV)
        .and_then(|n| usize::try_from(n).ok())
        .map_or(MAX_SET_TOOLS, |n| n.min(MAX_SET_TOOLS))
}

/// [`MAX_DISCOVERY_TIME`] (a shorter one in a test's debug build).
fn discovery_time() -> std::time::Duration {
    test_bound(TEST_DISCOVERY_MS_ENV).map_or(MAX_DISCOVERY_TIME, |ms| {
        std::time::Duration::from_millis(ms).min(MAX_DISCOVERY_TIME)
    })
}

/// Why a plugin that loaded is refused: with its `tools`, the set (`in_set` before it) would
/// pass `max`.
fn past_the_tool_bound(id: &str, tools: usize, in_set: usize, max: usize) -> String {
    format!(
        "not loaded: plugin {id} lists {tools} tools and the plugins before it in the set (by id) hold {in_set}, past the bound of {max} tools in one plugin set (MAX_SET_TOOLS); disable or remove plugins (`loongctl plugins disable ID`) to make room, then `loongctl plugins reload`"
    )
}

/// The tools `p` holds in a set, as a discovery counts them: a built-in's tools; a ready
/// plugin's listed tools (at least its one), or, deferred, the most a plugin may list; none
/// for a plugin that is disabled or failed.
fn tools_held(p: &plugins::Plugin) -> usize {
    match &p.state {
        State::Ready { .. } if p.bridge_kind == crate::workers::builtins::BUILTIN => {
            p.tool_names().len()
        }
        State::Ready { .. } if p.deferred() && p.has_named_tools() => {
            loong_ipc::message::worker::MAX_TOOLS
        }
        State::Ready { info, .. } => info.tools.len().max(1),
        _ => 0,
    }
}

/// Why `set` (the set an install or an upgrade of `id` would make) is past
/// [`MAX_SET_TOOLS`] or `MAX_PLUGINS`, counted as a discovery counts them; `None` within
/// both. An install is refused past them rather than making a set the next reload would cut
/// in id order (perhaps refusing a plugin serving now).
fn past_the_set_bounds(set: &plugins::Registry, id: &str) -> Option<String> {
    let programs = set
        .values()
        .filter(|p| p.bridge_kind != crate::workers::builtins::BUILTIN)
        .count();
    if programs > plugins::MAX_PLUGINS {
        return Some(format!(
            "plugin {id} would make {programs} plugins, past the bound of {} in one plugin set (MAX_PLUGINS); remove a plugin (`loongctl plugins remove ID`) to make room, then install again",
            plugins::MAX_PLUGINS
        ));
    }
    let max = max_set_tools();
    let tools = set
        .values()
        .fold(0usize, |n, p| n.saturating_add(tools_held(p)));
    let own = set.get(id).map_or(0, tools_held);
    (tools > max).then(|| {
        format!(
            "plugin {id} lists {own} tools and the set would hold {tools} with it, past the bound of {max} tools in one plugin set (MAX_SET_TOOLS); disable or remove plugins (`loongctl plugins disable ID`) to make room, then install again"
        )
    })
}

/// Stops the pool of `p`'s own program (refused after its load): nothing else would.
fn stop_own_pool(kernel: &Kernel, p: &plugins::Plugin) {
    if let State::Ready {
        pool: Some(pool), ..
    } = &p.state
    {
        if kernel.is_own_pool(pool) {
            pool.shutdown();
            let pool = pool.clone();
            tokio::spawn(async move { pool.reap_idle().await });
        }
    }
}

/// What the load of one discovered plugin came to.
enum Outcome {
    /// Disabled: nothing is loaded or recorded.
    Skipped,
    /// Deferred to its first call.
    Deferred,
    /// Its load in a worker (or the reason it was refused before one).
    Done(Result<LoadInfo, String>),
}

/// Loads every ready, not deferred plugin of `found` in a worker, at most
/// [`MAX_CONCURRENT_LOADS`] at once, each on its own pool (a foreign program's) or the
/// shared WASM pool; gives each plugin of `found` its pool and returns the outcomes in the
/// order of `found`. A load that fails or stalls (each is bounded by the pool's load
/// deadline) holds only its own place: the others go on. The loads are waited for `within`
/// all together: one not finished by then is stopped (with its program) and refused.
async fn load_all(
    kernel: &Kernel,
    found: &mut [plugins::Plugin],
    started_here: &mut Started,
    within: std::time::Duration,
) -> Vec<Outcome> {
    let until = tokio::time::Instant::now() + within;
    let mut lanes = Lanes::new(MAX_CONCURRENT_LOADS);
    let mut started = Vec::with_capacity(found.len());
    for p in found.iter_mut() {
        let job = match &mut p.state {
            State::Disabled(_) => Err(Outcome::Skipped),
            State::Failed(why) => Err(Outcome::Done(Err(why.clone()))),
            State::Ready {
                plugin, kind, pool, ..
            } => {
                let runner = kernel.pool_for(kind.as_deref());
                *pool = Some(runner.clone());
                let own = kernel.is_own_pool(&runner);
                if own {
                    started_here.pools.push(runner.clone());
                }
                if p.catalog.defer_loading {
                    Err(Outcome::Deferred)
                } else {
                    let (plugin, lane) = (plugin.clone(), lanes.next());
                    let own_pool = own.then(|| runner.clone());
                    let load = tokio::spawn(async move {
                        let _lane = lane.await;
                        let loaded = runner.check_load(&plugin).await;
                        if loaded.is_err() && own {
                            runner.shutdown();
                        }
                        loaded.map_err(|e| match e {
                            CallError::Plugin(f) => f.message,
                            other => {
                                format!("could not be loaded in a worker: {}", other.message())
                            }
                        })
                    });
                    started_here.loads.push(load.abort_handle());
                    Ok((load, own_pool))
                }
            }
        };
        started.push(job);
    }
    let mut outcomes = Vec::with_capacity(started.len());
    for job in started {
        outcomes.push(match job {
            Err(outcome) => outcome,
            Ok((mut load, own)) => match tokio::time::timeout_at(until, &mut load).await {
                Ok(done) => Outcome::Done(done.unwrap_or_else(|e| {
                    Err(format!("could not be loaded: its load stopped ({e})"))
                })),
                Err(_) => {
                    load.abort();
                    if let Some(pool) = own {
                        pool.shutdown();
                    }
                    Outcome::Done(Err(format!(
                        "could not be loaded: the discovery's loads, all together, passed their bound of {} ms (MAX_DISCOVERY_TIME) before this one finished; loads stalled (`loongctl plugins list` shows which failed); fix or remove them, then `loongctl plugins reload`",
                        within.as_millis()
                    )))
                }
            },
        });
    }
    outcomes
}

/// The places for a discovery's loads, taken in the order the loads were started: a load
/// waits for the one started before it to have its place before it asks for one. Without
/// the order, the runtime's scheduling decided (a task spawned last often runs first), so a
/// load early in the set could wait behind stalled ones until the discovery's bound refused
/// it, although it came before them.
struct Lanes {
    places: Arc<tokio::sync::Semaphore>,
    /// Resolves once the load started last has its place (or was dropped before).
    last: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Lanes {
    fn new(places: usize) -> Self {
        Lanes {
            places: Arc::new(tokio::sync::Semaphore::new(places)),
            last: None,
        }
    }

    /// The next load's place: resolves to it once every load started before has its own.
    /// The semaphore is never closed, so a place always comes.
    fn next(
        &mut self,
    ) -> impl std::future::Future<
        Output = Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>,
    > + Send
           + 'static {
        let (placed, turn) = tokio::sync::oneshot::channel();
        let before = self.last.replace(turn);
        let places = self.places.clone();
        async move {
            if let Some(before) = before {
                // An error: the load before was dropped; the turn is this one's anyway.
                let _ = before.await;
            }
            let place = places.acquire_owned().await;
            let _ = placed.send(());
            place
        }
    }
}

/// What one discovery started: its loads and the pools of its foreign programs. Dropped
/// before [`Started::keep`] (the discovery ended before its set was put in place: its
/// request's deadline passed, or it was cancelled), it aborts the loads and stops the pools
/// with the programs they run; kept, the pools belong to the set in place.
#[derive(Default)]
struct Started {
    loads: Vec<tokio::task::AbortHandle>,
    pools: Vec<Arc<Supervisor>>,
    kept: bool,
}

impl Started {
    /// The set they belong to is in place: it owns the pools from now on.
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for load in &self.loads {
            load.abort();
        }
        let reaper = tokio::runtime::Handle::try_current().ok();
        for pool in self.pools.drain(..) {
            pool.shutdown();
            // Their sandboxes are removed once the killed programs are waited for.
            if let Some(rt) = &reaper {
                rt.spawn(async move { pool.reap_idle().await });
            }
        }
    }
}

/// The pools of foreign programs in `registry` (not the shared WASM pool).
pub(crate) fn own_pools(registry: &plugins::Registry, kernel: &Kernel) -> Vec<Arc<Supervisor>> {
    registry
        .values()
        .filter_map(|p| match &p.state {
            State::Ready {
                pool: Some(pool), ..
            } if kernel.is_own_pool(pool) => Some(pool.clone()),
            _ => None,
        })
        .collect()
}

/// Every pool: the WASM pool, then each foreign program's.
pub(crate) fn all_pools(kernel: &Kernel) -> Vec<Arc<Supervisor>> {
    let mut pools = vec![kernel.workers.clone()];
    pools.extend(own_pools(&kernel.plugins_snapshot(), kernel));
    pools
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads take their places in the order they were started, wherever the runtime runs
    /// them first (here the task spawned last, from the runtime's own thread, which was
    /// given the first place before the order was kept).
    #[test]
    fn loads_take_their_places_in_the_order_they_were_started() {
        const LOADS: usize = 11;
        const PLACES: usize = 8;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("runtime");
        let placed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (held, seen) = (placed.clone(), placed.clone());
        rt.block_on(async move {
            tokio::spawn(async move {
                let mut lanes = Lanes::new(PLACES);
                for n in 0..LOADS {
                    let (lane, placed) = (lanes.next(), held.clone());
                    tokio::spawn(async move {
                        let place = lane.await;
                        placed.lock().expect("list").push(n);
                        // A stalled load: it holds its place.
                        std::future::pending::<()>().await;
                        drop(place);
                    });
                }
            })
            .await
            .expect("the loads started");
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while seen.lock().expect("list").len() < PLACES
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            // Room for a load past the places to take one it should not have.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        });
        let mut got = placed.lock().expect("list").clone();
        got.sort_unstable();
        assert_eq!(got, (0..PLACES).collect::<Vec<_>>());
        rt.shutdown_background();
    }

    fn failed(id: &str) -> plugins::Plugin {
        plugins::Plugin {
            id: id.to_string(),
            version: "1".into(),
            summary: String::new(),
            dir: std::path::PathBuf::new(),
            bridge_kind: "wasm",
            catalog: loong_profiles::plugin::Catalog::default(),
            trust: loong_profiles::plugin::TrustTier::Unverified,
            signer: None,
            lock_digest: None,
            capabilities: Vec::new(),
            state: State::Failed("test".into()),
        }
    }

    /// A set an install would make with more than MAX_PLUGINS plugins is refused naming the
    /// bound, whatever tools they hold (failed ones hold none); the control: MAX_PLUGINS fit.
    #[test]
    fn a_set_past_max_plugins_is_refused_and_one_at_it_is_not() {
        let mut set = plugins::Registry::new();
        for n in 0..plugins::MAX_PLUGINS {
            let id = format!("p{n:05}");
            set.insert(id.clone(), failed(&id));
        }
        assert_eq!(past_the_set_bounds(&set, "p00000"), None);
        set.insert("z".into(), failed("z"));
        let why = past_the_set_bounds(&set, "z").expect("past MAX_PLUGINS");
        assert!(why.contains("MAX_PLUGINS") && why.contains('z'), "{why}");
    }
}
