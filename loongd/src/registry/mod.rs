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
        CallError, Supervisor,
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
    for p in &mut found {
        let outcome = match &mut p.state {
            State::Disabled(_) => continue,
            State::Failed(why) => Err(why.clone()),
            State::Ready {
                plugin, kind, pool, ..
            } => {
                let runner = kernel.pool_for(kind.as_deref());
                *pool = Some(runner.clone());
                if p.catalog.defer_loading {
                    // Started by its first call; its manifest was checked above.
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
                match runner.check_load(plugin).await {
                    Ok(info) => Ok(info),
                    Err(e) => {
                        if kernel.is_own_pool(&runner) {
                            runner.shutdown();
                        }
                        Err(match e {
                            CallError::Plugin(f) => f.message,
                            other => {
                                format!("could not be loaded in a worker: {}", other.message())
                            }
                        })
                    }
                }
            }
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
    // The calls the previous set's own pools are running finish first.
    for pool in own_pools(&old, kernel) {
        tokio::spawn(pool.drain_then_shutdown());
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
