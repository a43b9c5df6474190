//! The plugin lifecycle: `plugins install|upgrade DIR`,
//! `enable|disable|remove ID`, `verify --lock`, and the withdrawal of what a revoked key
//! signed. Each holds `plugin_ops`, so they and reloads run one at a time; an install takes it
//! only after it copied the operator's tree, so a slow or hostile tree delays nothing else.
//!
//! An install or upgrade never touches the running version until the new one has proved
//! itself: the package is copied into a staging directory in loongd's home by
//! `workers::staging` (each entry opened once, beneath the package, never through a link;
//! what is checked is the copy, never the source, which could change under it), its
//! manifest, signature and slots are checked, and, when it is to be enabled, it is loaded in
//! a worker and its probe call (`metadata.health_check_json`) must succeed. Only then is the
//! staged copy renamed into place, the lockfile rewritten and the registry entry switched;
//! calls already running on the previous version finish on it (its own pool is drained, then
//! stopped). On any failure the staging copy is deleted and the previous version, which
//! served throughout, stays.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use loong_ipc::{package, ErrorKind, LockCheck, PluginView, RemoteError};
use loong_profiles::plugin::TrustTier;
use tokio::net::unix::UCred;

use crate::{
    audit::{Event, Kind},
    effects::{invoke::QUEUE_DEADLINE, Actor},
    request::RequestIo,
    workers::{
        lock::{self, LockEntry},
        plugins::{self, Plugin, State},
        staging, CallError, Supervisor,
    },
    Kernel,
};

/// Staging directories are unique within one loongd.
static STAGING: AtomicU64 = AtomicU64::new(1);

/// A record of `kind` by the operator connection `cred`.
fn event(kind: Kind, cred: &UCred, io: &RequestIo, detail: serde_json::Value) -> Event {
    Actor::operator(cred.uid(), None, io).event(kind, detail)
}

fn bad(m: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::BadRequest, m)
}

fn internal(m: impl std::fmt::Display) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, m.to_string())
}

fn remove_dir(dir: PathBuf) {
    tokio::task::spawn_blocking(move || {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "removing a plugin directory");
        }
    });
}

/// The pool a plugin runs in: the shared WASM pool, or a new one of its own.
fn pool_for(kernel: &Kernel, p: &Plugin) -> Option<Arc<Supervisor>> {
    match &p.state {
        State::Ready { kind, .. } => Some(kernel.pool_for(kind.as_deref())),
        _ => None,
    }
}

fn stop_if_own(kernel: &Kernel, pool: &Arc<Supervisor>) {
    if kernel.is_own_pool(pool) {
        pool.shutdown();
    }
}

/// Loads the staged plugin in a worker and makes its probe call. `Ok` leaves `p` ready with
/// its pool; `Err` has stopped any pool it started.
async fn prove(kernel: &Kernel, p: &mut Plugin, correlation: &str) -> Result<(), String> {
    let Some(pool) = pool_for(kernel, p) else {
        return Err("not ready".into());
    };
    let State::Ready {
        plugin,
        info,
        pool: slot,
        ..
    } = &mut p.state
    else {
        return Err("not ready".into());
    };
    let why = |e: CallError| e.to_string();
    match pool.check_load(plugin).await {
        Ok(loaded) => *info = loaded,
        Err(e) => {
            stop_if_own(kernel, &pool);
            return Err(format!("the load check failed: {}", why(e)));
        }
    }
    if let Some((tool, input)) = &p.catalog.probe {
        let tool = tool.clone().unwrap_or_else(|| p.id.clone());
        let called = pool
            .call(
                plugin,
                &tool,
                input.clone().into_bytes(),
                None,
                QUEUE_DEADLINE,
                correlation,
                // A probe runs under no call chain: its kernel calls are refused.
                None,
                false,
                // Loongd's own: no caller's input reaches it.
                "loongd",
            )
            .await;
        if let Err(e) = called.result {
            stop_if_own(kernel, &pool);
            return Err(format!("the health check ({tool}) failed: {}", why(e)));
        }
    }
    *slot = Some(pool);
    Ok(())
}

/// Why a package counts as high-risk: the scan's findings, or else its native bridge.
fn risk_reason(findings: &[String]) -> String {
    if findings.is_empty() {
        "its bridge runs native code".to_string()
    } else {
        findings.join(", ")
    }
}

/// `plugins install DIR` and `plugins upgrade DIR`.
pub(crate) async fn install(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    path: String,
    upgrade_only: bool,
    ceiling: Option<TrustTier>,
) -> Result<Vec<PluginView>, RemoteError> {
    // The operator's tree is read once, by descriptor, with no lock held: a package that
    // stalls or races the copy delays no other plugin operation (see `workers::staging`).
    let root = kernel.layout.home.join("plugins");
    std::fs::create_dir_all(&root).map_err(|e| internal(format!("{}: {e}", root.display())))?;
    let staging = root.join(format!(
        ".staging-{}-{}",
        std::process::id(),
        STAGING.fetch_add(1, Ordering::Relaxed)
    ));
    let reader = staging::Reader {
        uid: cred.uid(),
        gid: cred.gid(),
    };
    let (from, to, home) = (
        PathBuf::from(&path),
        staging.clone(),
        kernel.layout.home.clone(),
    );
    let copied =
        tokio::task::spawn_blocking(move || staging::copy_package(&from, &to, &home, reader))
            .await
            .map_err(|e| internal(e.to_string()))?;
    if let Err(why) = copied {
        remove_dir(staging);
        return Err(bad(why.to_string()));
    }
    let _ops = kernel.plugin_ops.lock().await;
    let outcome = stage_and_switch(kernel, cred, io, &staging, &root, upgrade_only, ceiling).await;
    if outcome.is_err() {
        remove_dir(staging);
    }
    outcome
}

async fn stage_and_switch(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    staging: &Path,
    root: &Path,
    upgrade_only: bool,
    ceiling: Option<TrustTier>,
) -> Result<Vec<PluginView>, RemoteError> {
    let record = |kind, detail| event(kind, cred, io, detail);
    let manifest = loong_profiles::plugin::PluginManifest::load_dir(staging)
        .map_err(|e| bad(e.to_string()))?;
    // The high-risk keywords of the manifest's text. What refuses a package is checked by
    // `load_dir` above and `plugins::read_package` below, as discovery and doctor check it.
    let scan = plugins::scan(&manifest);
    let id = manifest.plugin_id.clone();
    let current = kernel.plugins_snapshot().get(&id).cloned();
    if upgrade_only && current.is_none() {
        return Err(bad(format!(
            "no plugin {id} is installed; use `loongctl plugins install`"
        )));
    }
    let keys = kernel
        .authority
        .keys
        .list()
        .map_err(|e| internal(e.to_string()))?;
    let mut p = plugins::read_package(
        staging,
        &id,
        &keys,
        &lock::Lock::new(),
        &kernel.config.plugins,
        &kernel.resolver,
    );
    // The slots of everything else that is ready, with the candidate among them.
    if matches!(p.state, State::Ready { .. }) {
        let mut all: Vec<Plugin> = kernel
            .plugins_snapshot()
            .values()
            .filter(|o| o.id != id)
            .cloned()
            .chain([p.clone()])
            .collect();
        plugins::refuse_slot_conflicts(&mut all);
        if let Some(State::Failed(why)) = all.iter().find(|o| o.id == id).map(|o| o.state.clone()) {
            p.state = State::Failed(why);
        }
    }
    let previous = current.as_ref().map(|c| c.version.clone());
    let refuse = |why: String| async move {
        let kind = if previous.is_some() {
            Kind::PluginRolledBack
        } else {
            Kind::PluginRefused
        };
        kernel
            .audit
            .record_later(record(
                kind,
                serde_json::json!({"plugin": id, "version": manifest.version,
                    "serving": previous, "reason": why}),
            ))
            .await;
        Err(bad(match &previous {
            Some(v) => format!("{why}; {id} {v} keeps serving"),
            None => why,
        }))
    };
    if let State::Failed(why) = &p.state {
        return refuse(why.clone()).await;
    }
    if let Some(c) = ceiling {
        p.trust = p.trust.max(c);
    }
    let high_risk = plugins::runs_native_code(p.bridge_kind) || !scan.findings.is_empty();
    let enabled = !(high_risk && p.trust == TrustTier::Unverified);
    // An upgrade never takes a serving plugin down: a version that would install disabled
    // replaces only a plugin that is not serving (disabled, or failed) now.
    let serving = current
        .as_ref()
        .is_some_and(|c| matches!(c.state, State::Ready { .. }));
    if !enabled && serving {
        return refuse(format!(
            "{} {} is high-risk ({}) and nothing proves its publisher, so it would be installed disabled and stop the version serving now; sign it with a key in loongd's keyring, or run `loongctl plugins disable {}` first to replace it deliberately",
            p.id,
            p.version,
            risk_reason(&scan.findings),
            p.id
        ))
        .await;
    }
    if enabled {
        if let Err(why) = prove(kernel, &mut p, &io.correlation()).await {
            return refuse(why).await;
        }
    } else {
        p.state = State::Disabled(format!(
            "installed but not enabled: it is high-risk ({}) and nothing proves its publisher; `loongctl plugins enable {}`",
            risk_reason(&scan.findings),
            p.id
        ));
    }
    // The set it would make is counted as a discovery counts it: past MAX_SET_TOOLS or
    // MAX_PLUGINS the install is refused here, the set in place untouched (`plugin_ops` is
    // held, so no other change comes between this count and the switch below).
    let mut would = (*kernel.plugins_snapshot()).clone();
    would.insert(p.id.clone(), p.clone());
    if let Some(why) = super::past_the_set_bounds(&would, &p.id) {
        if let State::Ready {
            pool: Some(pool), ..
        } = &p.state
        {
            stop_if_own(kernel, pool);
        }
        return refuse(why).await;
    }
    drop(would);
    // Proved: move the files, write the lock entry, switch the registry.
    let digest = package::digest(staging).map_err(|e| internal(e.to_string()))?;
    let dir = root.join(&p.id);
    let retired = root.join(format!(
        ".old-{}-{}",
        p.id,
        STAGING.fetch_add(1, Ordering::Relaxed)
    ));
    let moved = (|| -> std::io::Result<()> {
        if dir.exists() {
            std::fs::rename(&dir, &retired)?;
        }
        std::fs::rename(staging, &dir)
    })();
    if let Err(e) = moved {
        if let State::Ready {
            pool: Some(pool), ..
        } = &p.state
        {
            stop_if_own(kernel, pool);
        }
        return Err(internal(format!(
            "moving {} into place: {e}",
            dir.display()
        )));
    }
    // A foreign program reads its own package at its path: the one proved ran from the
    // staging copy, so it is started again from its place, and on failure the move is undone.
    let from_package =
        matches!(&p.state, State::Ready { kind: Some(k), .. } if k.package.is_some());
    if from_package {
        if let State::Ready {
            pool: Some(staged), ..
        } = &p.state
        {
            stop_if_own(kernel, staged);
        }
        let mut placed = plugins::read_package(
            &dir,
            &p.id,
            &keys,
            &lock::Lock::new(),
            &kernel.config.plugins,
            &kernel.resolver,
        );
        let proved = match &placed.state {
            State::Failed(why) => Err(why.clone()),
            _ => prove(kernel, &mut placed, &io.correlation()).await,
        };
        if let Err(why) = proved {
            let _ = std::fs::rename(&dir, staging);
            if retired.exists() {
                let _ = std::fs::rename(&retired, &dir);
            }
            return refuse(format!("started from its place: {why}")).await;
        }
        p = placed;
    }
    if retired.exists() {
        remove_dir(retired);
    }
    p.dir = dir;
    p.lock_digest = Some(digest.digest.clone());
    let mut entries = lock::read(&kernel.layout.home).map_err(internal)?;
    entries.insert(
        p.id.clone(),
        LockEntry {
            version: p.version.clone(),
            digest: digest.digest.clone(),
            files: digest
                .files
                .iter()
                .map(|f| (f.path.clone(), f.sha256.clone()))
                .collect(),
            signer: p.signer.clone(),
            trust: p.trust.as_str().into(),
            ceiling: ceiling.map(|c| c.as_str().into()),
            enabled,
            installed_ms: crate::now_ms(),
        },
    );
    lock::write(&kernel.layout.home, &entries).map_err(internal)?;
    let mut registry = (*kernel.plugins_snapshot()).clone();
    let replaced = registry.insert(p.id.clone(), p.clone());
    kernel.set_plugins(registry);
    if let Some(State::Ready {
        pool: Some(old), ..
    }) = replaced.map(|r| r.state)
    {
        if kernel.is_own_pool(&old) {
            tokio::spawn(old.drain_then_shutdown());
        }
    }
    kernel
        .audit
        .record_later(record(
            Kind::PluginInstalled,
            serde_json::json!({
                "plugin": p.id, "version": p.version, "previous_version": current.map(|c| c.version),
                "digest": digest.digest, "trust": p.trust.as_str(), "signer": p.signer,
                "enabled": enabled, "bridge_kind": p.bridge_kind,
                "findings": scan.findings, "ceiling": ceiling.map(|c| c.as_str()),
            }),
        ))
        .await;
    Ok(vec![answer_view(kernel, &p)])
}

/// The view an install or an enable answers with: every tool with its schema, or, when
/// that would not fit the connection's frame limit, the first tools' names and their count
/// as a page of the list carries them (`plugins show` says why the rest does not fit).
fn answer_view(kernel: &Kernel, p: &Plugin) -> PluginView {
    p.view_within(kernel.config.ipc.max_frame_bytes as usize)
        .unwrap_or_else(|_| p.listed_view())
}

fn not_installed(id: &str) -> RemoteError {
    RemoteError::new(
        ErrorKind::NotFound,
        format!("no installed plugin {id}; `loongctl plugins list` shows them"),
    )
}

/// `plugins enable|disable ID`: the lock entry's flag, then a rediscovery.
pub(crate) async fn set_enabled(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    id: String,
    enabled: bool,
) -> Result<Vec<PluginView>, RemoteError> {
    let _ops = kernel.plugin_ops.lock().await;
    let mut entries = lock::read(&kernel.layout.home).map_err(internal)?;
    let entry = entries.get_mut(&id).ok_or_else(|| not_installed(&id))?;
    entry.enabled = enabled;
    let version = entry.version.clone();
    lock::write(&kernel.layout.home, &entries).map_err(internal)?;
    let kind = if enabled {
        Kind::PluginEnabled
    } else {
        Kind::PluginDisabled
    };
    kernel
        .audit
        .record(event(
            kind,
            cred,
            io,
            serde_json::json!({"plugin": id, "version": version}),
        ))
        .await
        .map_err(|e| internal(e.to_string()))?;
    super::reload_locked(kernel).await;
    Ok(kernel
        .plugins_snapshot()
        .get(&id)
        .map(|p| answer_view(kernel, p))
        .into_iter()
        .collect())
}

/// `plugins remove ID`: the package and its lock entry go; calls running on it finish.
pub(crate) async fn remove(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    id: String,
) -> Result<Vec<PluginView>, RemoteError> {
    let _ops = kernel.plugin_ops.lock().await;
    let mut entries = lock::read(&kernel.layout.home).map_err(internal)?;
    let entry = entries.remove(&id).ok_or_else(|| not_installed(&id))?;
    let root = kernel.layout.home.join("plugins");
    let dir = root.join(&id);
    let gone = root.join(format!(
        ".removed-{id}-{}",
        STAGING.fetch_add(1, Ordering::Relaxed)
    ));
    if dir.exists() {
        std::fs::rename(&dir, &gone).map_err(|e| internal(format!("{}: {e}", dir.display())))?;
        remove_dir(gone);
    }
    lock::write(&kernel.layout.home, &entries).map_err(internal)?;
    kernel
        .audit
        .record(event(
            Kind::PluginRemoved,
            cred,
            io,
            serde_json::json!({"plugin": id, "version": entry.version, "digest": entry.digest}),
        ))
        .await
        .map_err(|e| internal(e.to_string()))?;
    super::reload_locked(kernel).await;
    Ok(Vec::new())
}

/// After `keys revoke` or `keys rotate`: every plugin the key `key_id` vouched for loses that
/// proof at once, not at the next reload. Its package is read again against the keyring now
/// (a signature by a revoked or replaced key refuses the package, as discovery would), the
/// registry entry switches to that refusal, its own pool drains (running calls finish, new
/// ones are refused), and each change is audited as `plugin.refused` naming the key.
/// Plugins the key did not sign are not touched.
pub(crate) async fn key_withdrawn(kernel: &Kernel, key_id: &str) {
    let _ops = kernel.plugin_ops.lock().await;
    let snapshot = kernel.plugins_snapshot();
    let affected: Vec<Plugin> = snapshot
        .values()
        .filter(|p| p.signer_key() == Some(key_id))
        .cloned()
        .collect();
    if affected.is_empty() {
        return;
    }
    let keys = kernel.authority.keys.list().unwrap_or_else(|e| {
        tracing::error!(error = %e, "reading the keyring; the plugins it signed are refused");
        Vec::new()
    });
    let entries = lock::read(&kernel.layout.home).unwrap_or_default();
    let mut registry = (*snapshot).clone();
    let mut retired = Vec::new();
    for old in affected {
        let (dir, id, ring, locked, pins) = (
            old.dir.clone(),
            old.id.clone(),
            keys.clone(),
            entries.clone(),
            kernel.config.plugins.clone(),
        );
        let resolver = kernel.resolver.clone();
        let now = tokio::task::spawn_blocking(move || {
            plugins::read_package(&dir, &id, &ring, &locked, &pins, &resolver)
        })
        .await
        .ok();
        let why = match now.map(|p| p.state) {
            Some(State::Failed(why)) => why,
            _ => format!(
                "its signer, key {key_id}, was revoked; install a package signed by an active key"
            ),
        };
        let mut p = old.clone();
        p.state = State::Failed(why.clone());
        p.trust = TrustTier::Unverified;
        if let State::Ready {
            pool: Some(pool), ..
        } = &old.state
        {
            if kernel.is_own_pool(pool) {
                retired.push(pool.clone());
            }
        }
        registry.insert(p.id.clone(), p);
        kernel
            .audit
            .record_later(crate::audit::Event::daemon(
                Kind::PluginRefused,
                serde_json::json!({"plugin": old.id, "version": old.version, "key": key_id,
                    "reason": why}),
            ))
            .await;
    }
    kernel.set_plugins(registry);
    for pool in retired {
        tokio::spawn(pool.drain_then_shutdown());
    }
}

/// `plugins verify --lock`.
pub(crate) async fn verify_lock(kernel: &Kernel) -> Result<Vec<LockCheck>, RemoteError> {
    let home = kernel.layout.home.clone();
    let checks = tokio::task::spawn_blocking(move || -> Result<Vec<LockCheck>, lock::LockError> {
        let entries = lock::read(&home)?;
        Ok(entries
            .iter()
            .map(|(id, e)| LockCheck {
                id: id.clone(),
                version: e.version.clone(),
                locked: e.digest.clone(),
                drift: lock::drift(e, &home.join("plugins").join(id)),
            })
            .collect())
    })
    .await
    .map_err(|e| internal(e.to_string()))?
    .map_err(internal)?;
    Ok(checks)
}
