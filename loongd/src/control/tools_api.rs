//! Tools and their workers on the control socket: `invoke`, `plugins list|reload`,
//! `workers list|kill`.
//!
//! A call is decided (`tool.invoke` on the plugin id, under the caller's token or the
//! operator's authority), then audited as `tool.invoked` before any byte reaches a worker,
//! and closed by exactly one `tool.completed` or `tool.failed` record.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use loong_ipc::{
    message::control::{MAX_INVOKE_INPUT_BYTES, MAX_SEARCH_LIMIT, MAX_SEARCH_QUERY_BYTES},
    BearerSecret, ControlResponse, DecidedFile, ErrorKind, InvokeRequest, InvokeResult, Page,
    RemoteError, ToolHit, ToolSearchRequest,
};
use loong_profiles::pack::Capability;
use loong_profiles::plugin::TrustTier;
use tokio::net::unix::UCred;

use super::{
    authority_api::{authorize_unrecorded, event, recheck, Effect},
    connection::RequestIo,
    paging::{after_text, page_of},
};
use crate::{
    audit::{Event, Kind},
    authority::shell::CommandLine,
    workers::{
        plugins::{self, State},
        CallError, Supervisor,
    },
    Kernel,
};

/// Room kept in a reply frame for everything but the output and the logs.
pub const ANSWER_OVERHEAD_BYTES: usize = 1024;

/// Encoding overhead counted per log line of an answer (its length prefix, with room).
pub const LOG_LINE_OVERHEAD_BYTES: usize = 8;

/// How long a call may wait for a free worker.
pub const QUEUE_DEADLINE: Duration = Duration::from_secs(30);

fn bad(m: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::BadRequest, m)
}

/// `loongctl invoke`.
pub(crate) async fn invoke(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    req: InvokeRequest,
) -> Result<ControlResponse, RemoteError> {
    let started = Instant::now();
    if req.input.len() > MAX_INVOKE_INPUT_BYTES {
        return Err(bad(format!(
            "the input is {} bytes, above the {MAX_INVOKE_INPUT_BYTES}-byte limit",
            req.input.len()
        )));
    }
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&req.input) {
        return Err(bad(format!("the input is not JSON: {e}")));
    }
    let (plugin, tool) = resolve(kernel, &req.tool)?;
    let deferred = plugin.deferred();
    let (loadable, sha256, pool) = match plugin.state {
        State::Ready {
            plugin: loadable,
            info,
            pool: Some(pool),
            ..
        } => (loadable, info.sha256, pool),
        State::Ready { .. } => {
            return Err(bad(format!(
                "plugin {} has not been loaded yet; run `loongctl plugins reload`",
                plugin.id
            )))
        }
        State::Failed(why) => {
            return Err(bad(format!(
                "plugin {} is in a failed state and cannot run: {why}",
                plugin.id
            )))
        }
        State::Disabled(why) => {
            return Err(bad(format!("plugin {} is disabled: {why}", plugin.id)))
        }
    };
    // A built-in tool is decided on the effect it has (the path it reads or writes, the
    // command it runs); any other tool on `tool.invoke` of its name.
    let (cap, target, script) = if plugin.bridge_kind == crate::workers::builtins::BUILTIN {
        builtin_effect(&req.tool, &req.input)?
    } else {
        (Capability::ToolInvoke, req.tool.clone(), None)
    };
    let effect = Effect {
        cap,
        target: &target,
        command: script.as_deref().map(CommandLine::Script),
        call: Some((&req.tool, &req.input)),
        run: None,
    };
    let decided = authorize_unrecorded(
        kernel,
        cred,
        io,
        req.token.as_ref().map(BearerSecret::expose),
        &effect,
    )
    .await?;
    if decided.record.is_none() {
        // It waited for an approval: its token must still be valid now that it runs.
        recheck(kernel, cred, io, decided.token.as_deref(), cap, &target).await?;
    }
    // A file tool opens only the file the decision resolved, beneath the scope it decided
    // (without one, its worker refuses the call).
    let file = decided
        .file
        .filter(|_| matches!(cap, Capability::FsRead | Capability::FsWrite))
        .map(|f| DecidedFile {
            path: f.path.to_string_lossy().into_owned(),
            scope: f.scope.to_string_lossy().into_owned(),
        });
    let record = |kind, detail| event(kind, cred, io, detail);
    let invoked = serde_json::json!({
        "tool": req.tool, "version": plugin.version, "sha256": sha256,
        "input_bytes": req.input.len(), "token": decided.token,
    });
    let internal =
        |e: crate::audit::AuditError| RemoteError::new(ErrorKind::Internal, e.to_string());
    // The decision's and the invocation's records go to the writer as one message, so they
    // share one commit (one fsync), which runs while the worker runs the call: a WASM call
    // has no effect outside its worker, and nothing is answered before both are on disk.
    let committed = kernel
        .audit
        .queue_all(
            decided
                .record
                .into_iter()
                .chain([record(Kind::ToolInvoked, invoked)])
                .collect(),
        )
        .await
        .map_err(internal)?
        .committed();
    let mut open = Unanswered(Some((
        kernel.audit.clone(),
        record(
            Kind::ToolFailed,
            serde_json::json!({ "tool": req.tool, "failure": "abandoned",
                "message": "the request ended (deadline or client gone) before the worker answered" }),
        ),
    )));
    let correlation = io.correlation();
    let (called, committed) = tokio::join!(
        pool.call(
            &loadable,
            &tool,
            req.input.into_bytes(),
            file,
            QUEUE_DEADLINE,
            &correlation
        ),
        committed
    );
    open.0 = None;
    committed.map_err(internal)?;
    // A deferred plugin's first load tells its tools (or its module's digest): listing and
    // search show them from now on, and the trail records what was loaded.
    if let Some(info) = called.loaded.as_ref().filter(|_| deferred) {
        let detail = serde_json::json!({
            "plugin": plugin.id, "version": plugin.version, "bridge_kind": plugin.bridge_kind,
            "trust": plugin.trust.as_str(), "signer": plugin.signer,
            "sha256": info.sha256, "first_call": true,
            "tools": info.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        });
        if kernel.learn(&plugin.id, loadable.generation, &pool, info.clone()) {
            kernel
                .audit
                .record_later(Event::daemon(Kind::PluginLoaded, detail))
                .await;
        }
    }
    let wall_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    // The answer must fit this connection's frame limit, or the client would lose it.
    let room = kernel.config.ipc.max_frame_bytes as usize;
    let result = called.result.and_then(|out| {
        let size = out.output.len()
            + out.logs.iter().map(|l| l.len() + LOG_LINE_OVERHEAD_BYTES).sum::<usize>();
        if size + ANSWER_OVERHEAD_BYTES > room {
            return Err(CallError::Plugin(loong_ipc::PluginFailure::new(
                loong_ipc::FailureKind::OutputTooLarge,
                format!(
                    "the answer ({size} bytes) does not fit this connection's frame limit of {room} bytes; raise ipc.max_frame_bytes or lower the plugin's max_output_bytes"
                ),
            )));
        }
        Ok(out)
    });
    match result {
        Ok(out) => {
            let detail = serde_json::json!({
                "tool": req.tool, "worker": called.worker, "wall_us": wall_us,
                "worker_wall_us": out.wall_us, "cpu_us": out.cpu_us,
                "fuel_consumed": out.fuel_consumed, "peak_memory_bytes": out.peak_memory_bytes,
                "output_bytes": out.output.len(), "logs_dropped": out.logs_dropped,
            });
            kernel
                .audit
                .record_later(record(Kind::ToolCompleted, detail))
                .await;
            Ok(ControlResponse::Invoked(InvokeResult {
                tool: req.tool,
                output: String::from_utf8_lossy(&out.output).into_owned(),
                worker: called.worker,
                logs: out.logs,
                wall_us,
                worker_wall_us: out.wall_us,
                cpu_us: out.cpu_us,
                fuel_consumed: out.fuel_consumed,
                peak_memory_bytes: out.peak_memory_bytes,
            }))
        }
        Err(e) => {
            let (class, message) = match &e {
                CallError::Plugin(f) => (f.kind.name(), f.message.clone()),
                CallError::Worker(why) => ("worker_died", why.clone()),
                CallError::Unavailable(why) => ("unavailable", why.clone()),
            };
            let detail = serde_json::json!({
                "tool": req.tool, "worker": called.worker, "wall_us": wall_us,
                "failure": class, "message": message,
            });
            kernel
                .audit
                .record_later(record(Kind::ToolFailed, detail))
                .await;
            Err(RemoteError::from(&e))
        }
    }
}

/// Closes a `tool.invoked` record with a `tool.failed` one when the call is dropped before it
/// answered, so that every invocation record has its outcome.
struct Unanswered(Option<(crate::audit::Audit, Event)>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some((audit, event)) = self.0.take() {
            tokio::spawn(async move { audit.record_later(event).await });
        }
    }
}

/// What a built-in call would do, for the decision: `fs.read` or `fs.write` on its path,
/// `net.egress` on its host, or `process.exec` of the programs its command runs (the shell
/// `shell.exec` starts is the tool's own and is not decided; the first program the command
/// runs is the target, and the shell rules see every other).
fn builtin_effect(
    tool: &str,
    input: &str,
) -> Result<(Capability, String, Option<String>), RemoteError> {
    let v: serde_json::Value =
        serde_json::from_str(input).map_err(|e| bad(format!("the input is not JSON: {e}")))?;
    let field = |name: &str| {
        v.get(name)
            .and_then(serde_json::Value::as_str)
            .map(String::from)
            .ok_or_else(|| bad(format!("{tool} needs `{name}` (a string) in its input")))
    };
    // A file path is absolute and names no `.` or `..` (the docs promise this; `Path` would
    // drop a `.` silently, so the text is checked).
    let path = || {
        let p = field("path")?;
        if !p.starts_with('/') || p.split('/').any(|c| c == "." || c == "..") {
            return Err(bad(format!(
                "{tool} path {p:?}: give an absolute path without . or .. components"
            )));
        }
        Ok(p)
    };
    Ok(match tool {
        "file.read" => (Capability::FsRead, path()?, None),
        "file.write" | "file.edit" => (Capability::FsWrite, path()?, None),
        "web.fetch" => {
            let url = field("url")?;
            let (host, port, _) = loong_profiles::plugin::parse_endpoint(&url)
                .map_err(|e| bad(format!("web.fetch url: {e}")))?;
            (Capability::NetEgress, format!("{host}:{port}"), None)
        }
        _ => {
            let command = field("command")?;
            let plan = CommandLine::Script(&command).plan();
            let first = plan.programs.first().map(|p| p.name.clone()).ok_or_else(|| {
                bad(format!(
                    "{tool}: the command {command:?} runs no program; give a command line such as `ls -l`"
                ))
            })?;
            (Capability::ProcessExec, first, Some(command))
        }
    })
}

/// The plugin that serves `name`, and the tool name its worker knows: a plugin's own id
/// (WASM, JSON lines), or `PLUGIN_ID/TOOL` for one of an MCP server's tools.
fn resolve(kernel: &Kernel, name: &str) -> Result<(plugins::Plugin, String), RemoteError> {
    let registry = kernel.plugins_snapshot();
    let not_found = || {
        RemoteError::new(
            ErrorKind::NotFound,
            format!("no tool named {name:?}; `loongctl plugins list` shows what is installed"),
        )
    };
    if let Some(p) = registry.get(name) {
        if p.has_named_tools() {
            return Err(RemoteError::new(
                ErrorKind::NotFound,
                format!(
                    "{name} is an MCP server; call one of its tools: {}",
                    p.tool_names().join(", ")
                ),
            ));
        }
        return Ok((p.clone(), name.to_string()));
    }
    let (id, tool) = name.split_once('/').ok_or_else(not_found)?;
    let p = registry
        .get(id)
        .filter(|p| p.has_named_tools())
        .ok_or_else(not_found)?;
    if let State::Ready { info, .. } = &p.state {
        // A deferred server's tools are not known before its first call; its worker refuses
        // an unknown one.
        if !p.deferred() && !info.tools.iter().any(|t| t.name == tool) {
            return Err(RemoteError::new(
                ErrorKind::NotFound,
                format!(
                    "MCP server {id} has no tool {tool:?}; it offers: {}",
                    p.tool_names().join(", ")
                ),
            ));
        }
    }
    Ok((p.clone(), tool.to_string()))
}

/// `plugins list`: a page of the plugins, by id.
pub(crate) fn list(kernel: &Kernel, page: &Page) -> ControlResponse {
    let snapshot = kernel.plugins_snapshot();
    let after = snapshot
        .values()
        .filter(|p| after_text(page, &p.id))
        .map(|p| p.view());
    ControlResponse::Plugins(page_of(after, |_| true, page))
}

/// Discovers `HOME/plugins` again and loads each plugin once in a worker; every plugin's
/// outcome is audited (`plugin.loaded` or `plugin.refused`). Used at start and by
/// `plugins reload`. The previous set's own pools (foreign programs) are stopped once the
/// new set is in place.
pub(crate) async fn reload(kernel: &Kernel) -> ControlResponse {
    let _ops = kernel.plugin_ops.lock().await;
    reload_locked(kernel).await
}

/// [`reload`], for a caller that holds `plugin_ops`.
pub(crate) async fn reload_locked(kernel: &Kernel) -> ControlResponse {
    let root = kernel.layout.home.join("plugins");
    let lock = crate::workers::lock::read(&kernel.layout.home).unwrap_or_else(|e| {
        tracing::error!(error = %e, "reading the lockfile; installed plugins are checked against nothing");
        Default::default()
    });
    let builtins = crate::workers::builtins::entries(&kernel.config.builtins);
    let keys = kernel.authority.keys.list().unwrap_or_else(|e| {
        tracing::error!(error = %e, "reading the keyring; every signed plugin will be refused");
        Vec::new()
    });
    let pins = kernel.config.plugins.clone();
    let mut found =
        tokio::task::spawn_blocking(move || plugins::discover(&root, &keys, &lock, &pins))
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
                            CallError::Worker(why) | CallError::Unavailable(why) => {
                                format!("could not be loaded in a worker: {why}")
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
                "sha256": info.sha256,
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
    list(kernel, &Page::default())
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
fn all_pools(kernel: &Kernel) -> Vec<Arc<Supervisor>> {
    let mut pools = vec![kernel.workers.clone()];
    pools.extend(own_pools(&kernel.plugins_snapshot(), kernel));
    pools
}

/// `workers list`: a page of the workers, by number.
pub(crate) fn workers(kernel: &Kernel, page: &Page) -> Result<ControlResponse, RemoteError> {
    let after = match page.after.as_deref() {
        None => None,
        Some(a) => Some(a.parse::<u64>().map_err(|_| {
            bad(format!(
                "--after {a}: workers page by their number (a whole number)"
            ))
        })?),
    };
    let mut all: Vec<_> = all_pools(kernel).iter().flat_map(|p| p.list()).collect();
    all.sort_by_key(|w| w.id);
    Ok(ControlResponse::Workers(page_of(
        all,
        |w| after.is_none_or(|a| w.id > a),
        page,
    )))
}

/// `workers kill ID`.
pub(crate) fn kill(kernel: &Kernel, cred: &UCred, id: u64) -> Result<ControlResponse, RemoteError> {
    let by = format!("uid:{}", cred.uid());
    let killed = all_pools(kernel)
        .iter()
        .find_map(|p| p.kill(id, &by))
        .ok_or_else(|| {
            RemoteError::new(
                ErrorKind::NotFound,
                format!("no worker {id}; `loongctl workers list` shows them"),
            )
        })?;
    tracing::info!(
        worker = id,
        uid = cred.uid(),
        "worker killed by an operator"
    );
    Ok(ControlResponse::Workers(vec![killed]))
}

/// The most words of a query that count.
pub const MAX_QUERY_WORDS: usize = 16;

/// `loongctl tools search`: every tool of the active and deferred plugins, scored against
/// the query's words, best first. The trust tier shown is what loongd grants: a plugin's
/// claim proves nothing until plugins are signed, so every installed plugin is `unverified`.
pub(crate) async fn search(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    req: ToolSearchRequest,
) -> Result<ControlResponse, RemoteError> {
    if req.query.len() > MAX_SEARCH_QUERY_BYTES {
        return Err(bad(format!(
            "the query is {} bytes, above the {MAX_SEARCH_QUERY_BYTES}-byte limit",
            req.query.len()
        )));
    }
    if req.limit == 0 || req.limit > MAX_SEARCH_LIMIT {
        return Err(bad(format!(
            "limit {}: give 1 to {MAX_SEARCH_LIMIT}",
            req.limit
        )));
    }
    let floor: TrustTier = match &req.trust {
        None => TrustTier::Unverified,
        Some(t) => t.parse().map_err(|e: String| bad(format!("--trust {e}")))?,
    };
    let words = query_words(&req.query);
    let mut hits: Vec<ToolHit> = Vec::new();
    for p in kernel.plugins_snapshot().values() {
        let State::Ready { info, .. } = &p.state else {
            continue;
        };
        // Built-in tools are part of loongd; a plugin has what its signature proves, at
        // most what it claims.
        let trust = p.trust;
        if trust > floor {
            continue;
        }
        let tools: Vec<(String, String)> = if p.has_named_tools() && !info.tools.is_empty() {
            info.tools
                .iter()
                .map(|t| (format!("{}/{}", p.id, t.name), t.description.clone()))
                .collect()
        } else {
            vec![(p.id.clone(), String::new())]
        };
        for (name, description) in tools {
            let score = score(&words, &name, &p.summary, &description, &p.catalog.tags);
            if score == 0 && !words.is_empty() {
                continue;
            }
            hits.push(ToolHit {
                name,
                plugin: p.id.clone(),
                summary: p.summary.clone(),
                description,
                tags: p.catalog.tags.clone(),
                input_examples: p.catalog.input_examples.clone(),
                output_examples: p.catalog.output_examples.clone(),
                trust: trust.as_str().into(),
                claimed_trust: p.catalog.claimed_trust.map(|t| t.as_str().into()),
                state: if p.deferred() { "deferred" } else { "active" }.into(),
                bridge_kind: p.bridge_kind.into(),
                score,
            });
        }
    }
    hits.sort_by(|a, b| b.score.cmp(&a.score).then_with(|| a.name.cmp(&b.name)));
    // The best hits, as many as asked and as fit one page's bytes.
    let hits = page_of(
        hits,
        |_| true,
        &Page {
            after: None,
            limit: req.limit,
        },
    );
    let detail = serde_json::json!({
        "query": req.query, "trust": floor.as_str(), "limit": req.limit,
        "hits": hits.len(), "names": hits.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
    });
    kernel
        .audit
        .record(event(Kind::ToolSearched, cred, io, detail))
        .await
        .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?;
    Ok(ControlResponse::ToolHits(hits))
}

/// The query's distinct lowercase words (letters and digits), at most [`MAX_QUERY_WORDS`].
fn query_words(query: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for w in query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
    {
        if !words.contains(&w) && words.len() < MAX_QUERY_WORDS {
            words.push(w);
        }
    }
    words
}

/// A tool's score: per word, 8 for a whole name part, 4 for a part of the name, 3 for a tag,
/// 2 for the summary or the description.
fn score(words: &[String], name: &str, summary: &str, description: &str, tags: &[String]) -> u32 {
    let name = name.to_lowercase();
    let parts: Vec<&str> = name
        .split(|c: char| !c.is_alphanumeric())
        .filter(|p| !p.is_empty())
        .collect();
    let text = format!("{} {}", summary.to_lowercase(), description.to_lowercase());
    words
        .iter()
        .map(|w| {
            let mut s = 0;
            if parts.iter().any(|p| p == w) {
                s += 8;
            } else if name.contains(w.as_str()) {
                s += 4;
            }
            if tags.iter().any(|t| t.to_lowercase() == *w) {
                s += 3;
            }
            if text.contains(w.as_str()) {
                s += 2;
            }
            s
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_scores_names_above_tags_above_text() {
        let words = query_words("Read FILE, read!");
        assert_eq!(words, ["read", "file"]);
        let tags = vec!["files".to_string()];
        let named = score(&words, "fs/read_file", "", "", &[]);
        let tagged = score(&words, "fs/cat", "", "", &["read".to_string()]);
        let described = score(&words, "fs/cat", "reads a file", "", &tags);
        assert_eq!(named, 16);
        assert_eq!(tagged, 3);
        assert_eq!(described, 4);
        assert_eq!(score(&words, "time/now", "the time", "", &tags), 0);
    }
}
