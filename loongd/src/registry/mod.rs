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
    let outcomes = load_all(kernel, &mut found, &mut started).await;
    // Recorded and applied in the set's order, whatever order the loads finished in.
    for (p, outcome) in found.iter_mut().zip(outcomes) {
        let outcome = match outcome {
            Outcome::Skipped => continue,
            Outcome::Deferred => {
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
/// deadline) holds only its own place: the others go on.
async fn load_all(
    kernel: &Kernel,
    found: &mut [plugins::Plugin],
    started_here: &mut Started,
) -> Vec<Outcome> {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_LOADS));
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
                    let (plugin, permits) = (plugin.clone(), permits.clone());
                    let load = tokio::spawn(async move {
                        // The semaphore is never closed, so a permit always comes.
                        let _permit = permits.acquire_owned().await;
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
                    Ok(load)
                }
            }
        };
        started.push(job);
    }
    let mut outcomes = Vec::with_capacity(started.len());
    for job in started {
        outcomes.push(match job {
            Err(outcome) => outcome,
            Ok(load) => {
                Outcome::Done(load.await.unwrap_or_else(|e| {
                    Err(format!("could not be loaded: its load stopped ({e})"))
                }))
            }
        });
    }
    outcomes
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
