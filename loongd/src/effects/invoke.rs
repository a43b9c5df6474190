//! A tool call on the effect path: the tool resolved to its plugin, the effect decided
//! (`tool.invoke` on the tool's name, or a built-in's own effect: the path it reads or writes,
//! the host it fetches from, the programs its command runs), recorded as `tool.invoked` before
//! any byte reaches a worker, dispatched to the plugin's pool, and closed by exactly one
//! `tool.completed` or `tool.failed` record, whose `failure` is the typed class the caller
//! is answered with.

use std::{
    borrow::Cow,
    sync::{atomic::AtomicU64, Arc},
    time::{Duration, Instant},
};

use loong_ipc::{
    message::control::MAX_INVOKE_INPUT_BYTES, Budget, BudgetExceeded, DecidedFile, ErrorDetail,
    ErrorKind, FailureKind, InvokeResult, PluginFailure, RemoteError,
};
use loong_profiles::pack::Capability;

use loong_agent_wire::wire::AGENT_TOOL;

use super::{
    authorize_unrecorded,
    chain::{Host, Root, INVOKE_TOOL},
    internal, recheck, Actor, Authorized, Effect,
};
use crate::{
    audit::{Audit, Event, Field, Kind},
    authority::shell::CommandLine,
    workers::{
        plugins::{self, State, WASM_BRIDGE},
        CallError, Called, Loadable, Supervisor,
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

/// A ready plugin, as a call needs it: borrowed from the snapshot of the plugin set the
/// call took (not copied per call); a browser call's loadable is its session's own.
struct Target<'r> {
    plugin: &'r plugins::Plugin,
    /// The tool name its worker knows.
    tool: String,
    loadable: Cow<'r, Loadable>,
    sha256: Option<&'r str>,
    pool: std::sync::Arc<Supervisor>,
}

/// Calls `tool` with `input` for `actor`: decide, record, dispatch, record the outcome. The
/// call is the root of its own chain.
pub(crate) async fn call(
    kernel: &Kernel,
    actor: &Actor<'_>,
    tool: String,
    input: String,
) -> Result<InvokeResult, RemoteError> {
    call_in(kernel, actor, tool, input, None).await
}

/// [`call`] in chain `root` (`None`: this call is a root). The kernel calls its worker makes
/// meanwhile are served by a [`Host`] bound to this call's chain.
pub(crate) async fn call_in(
    kernel: &Kernel,
    actor: &Actor<'_>,
    tool: String,
    input: String,
    root: Option<Arc<Root>>,
) -> Result<InvokeResult, RemoteError> {
    not_the_agent(&tool)?;
    run(kernel, actor, tool, input, root).await
}

/// One agent turn (`loongctl ask`): `input` is the turn loongd composed, run as a root call
/// decided as `tool.invoke` on [`AGENT_TOOL`] under the actor's token.
pub(crate) async fn agent_turn(
    kernel: &Kernel,
    actor: &Actor<'_>,
    input: String,
) -> Result<InvokeResult, RemoteError> {
    run(kernel, actor, AGENT_TOOL.to_string(), input, None).await
}

/// The agent's turn is composed by loongd only (it carries the provider's key): neither an
/// operator's `invoke` nor a kernel call may name it.
fn not_the_agent(tool: &str) -> Result<(), RemoteError> {
    if tool == AGENT_TOOL {
        return Err(RemoteError::new(
            ErrorKind::NotFound,
            format!("{AGENT_TOOL} is run only by `loongctl ask`; it cannot be invoked"),
        ));
    }
    Ok(())
}

async fn run(
    kernel: &Kernel,
    actor: &Actor<'_>,
    tool: String,
    input: String,
    root: Option<Arc<Root>>,
) -> Result<InvokeResult, RemoteError> {
    let started = Instant::now();
    check_input(&input)?;
    let registry = kernel.plugins_snapshot();
    let mut target = ready(&registry, &tool)?;
    // A browser tool is decided as `browser.control` on its session's `HOST:PORT` and run in
    // that session's own pool (`super::browser`).
    let mut session = if target.plugin.bridge_kind == crate::workers::builtins::BUILTIN
        && crate::workers::browser::is_browser_tool(&tool)
    {
        Some(super::browser::prepare(kernel, actor, &tool, &input)?)
    } else {
        None
    };
    let over = session
        .as_ref()
        .map(|b| (Capability::BrowserControl, b.on.clone()));
    let decided = decide(kernel, actor, &target, &tool, &input, over).await?;
    let mut input = input;
    if let Some(b) = &mut session {
        input = super::browser::admit(kernel, b, &mut target.pool, target.loadable.to_mut())?;
        target.tool = crate::workers::browser::WORKER_TOOL.to_string();
    }
    let host = Host {
        kernel,
        io: actor.io,
        root: root.unwrap_or_else(|| Root::new(kernel, decided.token.clone())),
        chain: actor.chain.clone(),
        plugin: target.plugin.id.clone(),
        may_invoke: target.plugin.capabilities.iter().any(|c| c == INVOKE_TOOL),
        declared: narrowed(
            actor.chain.declared.as_deref(),
            target.plugin.bridge_kind == crate::workers::builtins::BUILTIN,
            &target.plugin.capabilities,
        ),
        seq: AtomicU64::new(0),
    };
    // A file tool opens only the file the decision resolved, beneath the scope it decided
    // (without one, its worker refuses the call).
    let file = decided.file.clone().map(|f| DecidedFile {
        path: f.path.to_string_lossy().into_owned(),
        scope: f.scope.to_string_lossy().into_owned(),
    });
    let invoked = invoked_record(
        actor,
        &tool,
        &target.plugin.version,
        target.sha256,
        input.len(),
        decided.token.as_deref(),
    );
    // The decision's and the invocation's records go to the writer as one message, so they
    // share one commit (one fsync). Only a WASM call's commit runs while its worker runs the
    // call: it has no effect outside its worker (what it asks of the host is decided and
    // committed on its own), and nothing is answered before both are on disk. Every other
    // bridge acts on the host (a built-in writes a file, runs a command, connects; a native
    // program acts within its grants), so its call waits for the commit: an effect is never
    // ahead of its record, and a commit that fails (disk full, a fail-closed lane down)
    // leaves it undone.
    let overlaps = target.plugin.bridge_kind == WASM_BRIDGE;
    let committed = kernel
        .audit
        .queue_all(decided.record.into_iter().chain([invoked]).collect())
        .await
        .map_err(internal)?
        .committed();
    let open = Unanswered(Some((&kernel.audit, actor, &tool)));
    // Waited for under the guard above: a request that ends meanwhile still closes its record.
    let committed = if overlaps {
        Some(committed)
    } else {
        if let Err(e) = committed.await {
            open.answered();
            return Err(internal(e));
        }
        None
    };
    // Whose call it is, for a pool that keeps one principal per worker (the agent's).
    let principal = principal_of(decided.token.as_deref());
    let dispatched = async {
        if let Some(closed) = session.as_ref().and_then(super::browser::closed_answer) {
            return closed;
        }
        target
            .pool
            .call(
                &target.loadable,
                &target.tool,
                input.into_bytes(),
                file,
                QUEUE_DEADLINE,
                &actor.chain.call,
                Some(&host),
                actor.chain.depth > 0,
                &principal,
            )
            .await
    };
    let committed = async {
        match committed {
            Some(c) => c.await.map(|_| ()),
            None => Ok(()),
        }
    };
    let (mut called, committed) = tokio::join!(dispatched, committed);
    open.answered();
    committed.map_err(internal)?;
    if let Some(b) = &session {
        // On the heap, as a browser call's only: it would size every call's future.
        Box::pin(super::browser::after(kernel, actor, b, &mut called)).await;
    } else {
        learn(kernel, &target, &called).await;
    }
    let wall_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    record_outcome(kernel, actor, tool, called, wall_us).await
}

/// The principal a call is made for: the token's public id, or the operator's own (no token).
fn principal_of(token: Option<&str>) -> Cow<'static, str> {
    token.map_or(Cow::Borrowed("operator"), |t| {
        Cow::Owned(format!("token:{t}"))
    })
}

/// What the kernel calls of a call may have, given what the plugins above it declare
/// (`above`; `None`: no plugin) and its own plugin's `declared` capabilities (a built-in
/// has none of its own and passes on what it was given).
fn narrowed(
    above: Option<&Vec<String>>,
    builtin: bool,
    declared: &[String],
) -> Option<Arc<Vec<String>>> {
    if builtin {
        return above.cloned().map(Arc::new);
    }
    let within = declared
        .iter()
        .filter(|c| above.is_none_or(|a| a.contains(c)))
        .cloned()
        .collect();
    Some(Arc::new(within))
}

/// The effect a call of built-in `tool` with `input` would have (`None`: `tool` is not a
/// built-in, or the call is malformed and fails as [`call_in`] finds it).
pub(crate) fn builtin_capability(kernel: &Kernel, tool: &str, input: &str) -> Option<Capability> {
    let registry = kernel.plugins_snapshot();
    let (plugin, _) = resolve(&registry, tool).ok()?;
    if plugin.bridge_kind != crate::workers::builtins::BUILTIN {
        return None;
    }
    builtin_effect(tool, input).ok().map(|(cap, _, _)| cap)
}

/// What [`call_in`] checks before it decides: the input's size and syntax, and a ready
/// plugin serving `tool`.
pub(crate) fn precheck(kernel: &Kernel, tool: &str, input: &str) -> Result<(), RemoteError> {
    not_the_agent(tool)?;
    check_input(input)?;
    ready(&kernel.plugins_snapshot(), tool).map(|_| ())
}

/// The input's size and syntax, checked before anything is decided.
fn check_input(input: &str) -> Result<(), RemoteError> {
    if input.len() > MAX_INVOKE_INPUT_BYTES {
        return Err(bad(format!(
            "the input is {} bytes, above the {MAX_INVOKE_INPUT_BYTES}-byte limit",
            input.len()
        ))
        .with_detail(ErrorDetail::BudgetExceeded(BudgetExceeded {
            budget: Budget::InputBytes,
            limit: MAX_INVOKE_INPUT_BYTES as u64,
        })));
    }
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(input) {
        return Err(bad(format!("the input is not JSON: {e}")));
    }
    Ok(())
}

/// The plugin that serves `name`, ready to run.
fn ready<'r>(registry: &'r plugins::Registry, name: &str) -> Result<Target<'r>, RemoteError> {
    let (plugin, tool) = resolve(registry, name)?;
    match &plugin.state {
        State::Ready {
            plugin: loadable,
            info,
            pool: Some(pool),
            ..
        } => Ok(Target {
            plugin,
            tool,
            loadable: Cow::Borrowed(loadable),
            sha256: info.sha256.as_deref(),
            pool: pool.clone(),
        }),
        State::Ready { .. } => Err(bad(format!(
            "plugin {} has not been loaded yet; run `loongctl plugins reload`",
            plugin.id
        ))),
        State::Failed(why) => Err(bad(format!(
            "plugin {} is in a failed state and cannot run: {why}",
            plugin.id
        ))),
        State::Disabled(why) => Err(bad(format!("plugin {} is disabled: {why}", plugin.id))),
    }
}

/// Decides the call: a built-in tool on the effect it has (the path it reads or writes, the
/// command it runs), any other tool on `tool.invoke` of its name; after an approval, the
/// token is checked again. The allowed decision's record is left for the caller to queue.
async fn decide(
    kernel: &Kernel,
    actor: &Actor<'_>,
    target: &Target<'_>,
    tool: &str,
    input: &str,
    over: Option<(Capability, String)>,
) -> Result<Authorized, RemoteError> {
    // A plan is decided as `tool.invoke` on its name, like a plugin: loongd does not parse
    // it (its worker does), and each call it makes is decided on its own as a nested call.
    // The agent's turn likewise: each tool call it makes is decided on its own.
    let (cap, on, script) = if let Some((cap, on)) = over {
        (cap, on, None)
    } else if target.plugin.bridge_kind == crate::workers::builtins::BUILTIN
        && tool != crate::workers::builtins::PROGRAMMATIC_TOOL_CALL
        && tool != AGENT_TOOL
    {
        builtin_effect(tool, input)?
    } else {
        (Capability::ToolInvoke, tool.to_string(), None)
    };
    let effect = Effect {
        cap,
        target: &on,
        command: script.as_deref().map(CommandLine::Script),
        call: Some((tool, input)),
        run: None,
    };
    let mut decided = authorize_unrecorded(kernel, actor, &effect).await?;
    if decided.record.is_none() {
        // It waited for an approval: its token must still be valid now that it runs.
        recheck(kernel, actor, decided.token.as_deref(), cap, &on).await?;
    }
    if !matches!(cap, Capability::FsRead | Capability::FsWrite) {
        decided.file = None;
    }
    Ok(decided)
}

/// A deferred plugin's first load tells its tools (or its module's digest): listing and
/// search show them from now on, and the trail records what was loaded.
async fn learn(kernel: &Kernel, target: &Target<'_>, called: &Called) {
    let plugin = &target.plugin;
    let Some(info) = called.loaded.as_ref().filter(|_| plugin.deferred()) else {
        return;
    };
    let detail = serde_json::json!({
        "plugin": plugin.id, "version": plugin.version, "bridge_kind": plugin.bridge_kind,
        "trust": plugin.trust.as_str(), "signer": plugin.signer,
        "sha256": info.sha256, "first_call": true, "compiled": info.compiled,
        "tools": info.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
    });
    if kernel.learn(
        &plugin.id,
        target.loadable.generation,
        &target.pool,
        info.clone(),
    ) {
        kernel
            .audit
            .record_later(Event::daemon(Kind::PluginLoaded, detail))
            .await;
    }
}

/// Records the call's outcome (`tool.completed`, or `tool.failed` with its class) and
/// answers with it. The answer must fit the connection's frame limit, or the client would
/// lose it.
async fn record_outcome(
    kernel: &Kernel,
    actor: &Actor<'_>,
    tool: String,
    called: Called,
    wall_us: u64,
) -> Result<InvokeResult, RemoteError> {
    let room = kernel.config.ipc.max_frame_bytes as usize;
    let result = called.result.and_then(|out| {
        let size = out.output.len()
            + out.logs.iter().map(|l| l.len() + LOG_LINE_OVERHEAD_BYTES).sum::<usize>();
        if size + ANSWER_OVERHEAD_BYTES > room {
            return Err(CallError::Plugin(PluginFailure::new(
                FailureKind::OutputTooLarge,
                format!(
                    "the answer ({size} bytes) does not fit this connection's frame limit of {room} bytes; raise ipc.max_frame_bytes or lower the plugin's max_output_bytes"
                ),
            )));
        }
        Ok(out)
    });
    // Only the plan worker's answer may claim to be a plan's typed failure.
    let result = result.map_err(|e| match e {
        CallError::Plugin(mut f) if tool != crate::workers::builtins::PROGRAMMATIC_TOOL_CALL => {
            f.plan = None;
            CallError::Plugin(f)
        }
        other => other,
    });
    let outcome = result
        .as_ref()
        .map_or_else(|e| e.class().name(), |_| "completed");
    crate::metrics::tool_call(&tool, outcome, wall_us);
    match result {
        Ok(out) => {
            let completed = completed_record(actor, &tool, called.worker, wall_us, &out);
            kernel.audit.record_later(completed).await;
            Ok(InvokeResult {
                tool,
                output: output_text(out.output),
                worker: called.worker,
                logs: out.logs,
                wall_us,
                worker_wall_us: out.wall_us,
                cpu_us: out.cpu_us,
                fuel_consumed: out.fuel_consumed,
                peak_memory_bytes: out.peak_memory_bytes,
            })
        }
        Err(e) => {
            let mut detail = serde_json::json!({
                "tool": tool, "worker": called.worker, "wall_us": wall_us,
                "failure": e.class().name(), "message": e.message(),
            });
            if let CallError::Plugin(PluginFailure {
                plan: Some(plan), ..
            }) = &e
            {
                detail["plan"] = serde_json::json!({
                    "kind": plan.kind.name(), "step": plan.step, "call": plan.call,
                    "cause": plan.cause.map(|c| c.name()),
                });
            }
            kernel
                .audit
                .record_later(actor.event(Kind::ToolFailed, detail))
                .await;
            Err(RemoteError::from(&e))
        }
    }
}

/// The `tool.invoked` record of a call of `tool` (its plugin's version and module digest,
/// its input's size, the token it was decided under), written once as its stored text.
fn invoked_record(
    actor: &Actor<'_>,
    tool: &str,
    version: &str,
    sha256: Option<&str>,
    input_bytes: usize,
    token: Option<&str>,
) -> Event {
    actor.record(
        Kind::ToolInvoked,
        &[
            ("tool", Field::Str(tool)),
            ("version", Field::Str(version)),
            ("sha256", Field::OptStr(sha256)),
            ("input_bytes", Field::U64(input_bytes as u64)),
            ("token", Field::OptStr(token)),
        ],
    )
}

/// The `tool.completed` record of a call answered by `worker` (its wall time, the worker's
/// measures, the output's size), written once as its stored text.
fn completed_record(
    actor: &Actor<'_>,
    tool: &str,
    worker: u64,
    wall_us: u64,
    out: &loong_ipc::CallOutput,
) -> Event {
    actor.record(
        Kind::ToolCompleted,
        &[
            ("tool", Field::Str(tool)),
            ("worker", Field::U64(worker)),
            ("wall_us", Field::U64(wall_us)),
            ("worker_wall_us", Field::U64(out.wall_us)),
            ("cpu_us", Field::U64(out.cpu_us)),
            ("fuel_consumed", Field::OptU64(out.fuel_consumed)),
            ("peak_memory_bytes", Field::U64(out.peak_memory_bytes)),
            ("output_bytes", Field::U64(out.output.len() as u64)),
            ("logs_dropped", Field::U64(u64::from(out.logs_dropped))),
        ],
    )
}

/// A worker's output as the answer's text: the bytes themselves when they are UTF-8 (a
/// checked answer is JSON, so they are), not a copy; else with each invalid sequence
/// replaced, as `String::from_utf8_lossy` does.
fn output_text(output: Vec<u8>) -> String {
    String::from_utf8(output).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Closes a `tool.invoked` record with a `tool.failed` one when the call is dropped before it
/// answered, so that every invocation record has its outcome. The record is built only then:
/// a call that answers builds none.
struct Unanswered<'a, 'b>(Option<(&'a Audit, &'a Actor<'b>, &'a str)>);

impl Unanswered<'_, '_> {
    /// The call answered (or failed on its own): nothing is left to close.
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Unanswered<'_, '_> {
    fn drop(&mut self) {
        if let Some((audit, actor, tool)) = self.0.take() {
            let (audit, event) = (audit.clone(), abandoned(actor, tool));
            tokio::spawn(async move { audit.record_later(event).await });
        }
    }
}

/// The `tool.failed` record of a call dropped before its worker answered.
fn abandoned(actor: &Actor<'_>, tool: &str) -> Event {
    actor.event(
        Kind::ToolFailed,
        serde_json::json!({ "tool": tool, "failure": loong_ipc::FailureClass::Abandoned.name(),
            "message": "the request ended (deadline or client gone) before the worker answered" }),
    )
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
            let e = loong_profiles::plugin::parse_endpoint(&url)
                .map_err(|e| bad(format!("web.fetch url: {e}")))?;
            // An IPv6 host is bracketed, as the grant grammar writes it.
            let target = if e.host.contains(':') {
                format!("[{}]:{}", e.host, e.port)
            } else {
                format!("{}:{}", e.host, e.port)
            };
            (Capability::NetEgress, target, None)
        }
        "shell.exec" => {
            let command = field("command")?;
            let plan = CommandLine::Script(&command).plan();
            let first = plan.programs.first().map(|p| p.name.clone()).ok_or_else(|| {
                bad(format!(
                    "{tool}: the command {command:?} runs no program; give a command line such as `ls -l`"
                ))
            })?;
            (Capability::ProcessExec, first, Some(command))
        }
        // Decided on its session's `HOST:PORT` (`super::browser::prepare`); the capability
        // is what a nested call's admission looks at.
        t if crate::workers::browser::is_browser_tool(t) => {
            (Capability::BrowserControl, String::new(), None)
        }
        other => {
            return Err(RemoteError::new(
                ErrorKind::NotFound,
                format!("no built-in tool {other:?} has an effect to decide"),
            ))
        }
    })
}

/// The plugin that serves `name`, and the tool name its worker knows: a plugin's own id
/// (WASM, JSON lines), or `PLUGIN_ID/TOOL` for one of an MCP server's tools.
fn resolve<'r>(
    registry: &'r plugins::Registry,
    name: &str,
) -> Result<(&'r plugins::Plugin, String), RemoteError> {
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
        return Ok((p, name.to_string()));
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
    Ok((p, tool.to_string()))
}

#[cfg(test)]
mod tests {
    use super::super::operator as actor;
    use super::*;

    /// The answer's text is the worker's output, the same as a lossy conversion gives: the
    /// bytes kept when they are UTF-8, each invalid sequence replaced when not.
    #[test]
    fn an_answers_text_is_its_output_or_its_lossy_conversion() {
        for bytes in [
            "{\"echo\":\"caf\u{e9}\"}".as_bytes().to_vec(),
            b"{\"a\":\"\xff\xfe\"}".to_vec(),
            b"\xc3".to_vec(),
            Vec::new(),
        ] {
            let lossy = String::from_utf8_lossy(&bytes).into_owned();
            assert_eq!(output_text(bytes), lossy);
        }
        let valid = b"{\"k\":1}".to_vec();
        let at = valid.as_ptr();
        let text = output_text(valid);
        assert_eq!(text.as_ptr(), at, "valid UTF-8 was copied");
    }

    /// The record of an abandoned call, now built only when the call is dropped, is the one
    /// built (for every call) before: the same kind, actor, correlation and detail bytes.
    #[test]
    fn an_abandoned_calls_record_keeps_its_bytes() {
        let root = actor(super::super::Chain::root("conn-3/req-7"));
        let e = abandoned(&root, "echo");
        assert!(matches!(e.kind, Kind::ToolFailed));
        assert_eq!(&*e.actor, "uid:1000");
        assert_eq!(&*e.correlation, "conn-3/req-7");
        assert_eq!(
            e.detail.bounded(),
            r#"{"failure":"abandoned","message":"the request ended (deadline or client gone) before the worker answered","tool":"echo"}"#
        );
        let nested = actor(root.chain.child(2));
        let e = abandoned(&nested, "echo");
        assert_eq!(&*e.correlation, "conn-3/req-7.2");
        assert_eq!(
            e.detail.bounded(),
            r#"{"chain":{"depth":1,"parent":"conn-3/req-7","root":"conn-3/req-7"},"failure":"abandoned","message":"the request ended (deadline or client gone) before the worker answered","tool":"echo"}"#
        );
    }

    /// What the writer stores of an event: kind, actor, correlation and detail text.
    fn stored(e: &Event) -> (Kind, String, String, String) {
        (
            e.kind,
            e.actor.to_string(),
            e.correlation.to_string(),
            e.detail.bounded().into_owned(),
        )
    }

    /// A call's `tool.invoked` and `tool.completed`, written once as their text, store the
    /// bytes their JSON values stored (at the root and nested, hostile names, a null digest
    /// and fuel, an input over the detail bound being only counted).
    #[test]
    fn a_calls_records_written_once_keep_their_bytes() {
        let root = actor(super::super::Chain::root("conn-3/req-7"));
        let nested = actor(root.chain.child(2));
        let deeper = actor(nested.chain.child(9));
        let tool = "ech\"o\u{0}\u{1f600}";
        for a in [&root, &nested, &deeper] {
            for (sha, token, fuel) in [(Some("ab12"), Some("tok-1"), Some(42)), (None, None, None)]
            {
                let new = invoked_record(a, tool, "1.0.0-\u{e9}", sha, 70_000, token);
                let old = a.event(
                    Kind::ToolInvoked,
                    serde_json::json!({
                        "tool": tool, "version": "1.0.0-\u{e9}", "sha256": sha,
                        "input_bytes": 70_000, "token": token,
                    }),
                );
                assert_eq!(stored(&new), stored(&old));
                let out = loong_ipc::CallOutput {
                    output: b"{}".to_vec(),
                    logs: Vec::new(),
                    logs_dropped: 3,
                    wall_us: 17,
                    cpu_us: 11,
                    fuel_consumed: fuel,
                    peak_memory_bytes: u64::MAX,
                };
                let new = completed_record(a, tool, 5, 123, &out);
                let old = a.event(
                    Kind::ToolCompleted,
                    serde_json::json!({
                        "tool": tool, "worker": 5, "wall_us": 123,
                        "worker_wall_us": out.wall_us, "cpu_us": out.cpu_us,
                        "fuel_consumed": out.fuel_consumed,
                        "peak_memory_bytes": out.peak_memory_bytes,
                        "output_bytes": out.output.len(), "logs_dropped": out.logs_dropped,
                    }),
                );
                assert_eq!(stored(&new), stored(&old));
            }
        }
        // The records of one actor share its name and correlation, not copies of them.
        let (a, b) = (
            invoked_record(&nested, tool, "1", None, 0, None),
            completed_record(
                &nested,
                tool,
                1,
                1,
                &loong_ipc::CallOutput {
                    output: Vec::new(),
                    logs: Vec::new(),
                    logs_dropped: 0,
                    wall_us: 0,
                    cpu_us: 0,
                    fuel_consumed: None,
                    peak_memory_bytes: 0,
                },
            ),
        );
        assert!(std::sync::Arc::ptr_eq(&a.actor, &b.actor));
        assert!(std::sync::Arc::ptr_eq(&a.correlation, &b.correlation));
    }
}
