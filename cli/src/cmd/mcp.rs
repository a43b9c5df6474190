//! `loongctl mcp serve`: Loong as an MCP server on stdio, so any MCP client (Claude Code,
//! Codex, Cursor, goose, the Python SDK) calls Loong's tools through the kernel.
//!
//! The protocol is spoken by the official Rust SDK (`rmcp`); this file only answers its two
//! questions. `tools/list` offers the tools the token may invoke, each decided by loongd's
//! dry run (`PolicyDecide`, audited like any decision) exactly as `invoke` would decide it;
//! `tools/call` is an `invoke` on the control socket under the same token, so every call is
//! decided, confined and audited by loongd. Nothing is decided here.
//!
//! MCP tool names must match `^[a-zA-Z0-9_-]{1,64}$`; Loong's names (`file.read`,
//! `PLUGIN/TOOL`) do not. [`names`] maps them (see its documentation and docs/cli.md).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::anyhow;
use clap::{Args, Subcommand};
use loong_ipc::{
    client::{ClientError, Event},
    message::control::{BearerSecret, DecisionView, ToolSearchRequest, MAX_SEARCH_LIMIT},
    paths::Layout,
    ControlRequest, ControlResponse, ErrorDetail, ErrorKind, InvokeRequest, InvokeResult,
    PluginView, StreamChunk,
};
use rmcp::{
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
        JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
        Tool,
    },
    service::RequestContext,
    transport::async_rw::AsyncRwTransport,
    ErrorData, RoleServer, ServerHandler, ServiceExt,
};

use crate::{exit, paging::PageArgs, Failure};

/// The longest JSON-RPC line read from the client: a tool's input is at most
/// `MAX_INVOKE_INPUT_BYTES` (1 MiB) of JSON, which escaping inside a request can at most
/// double, plus the envelope. A longer line is dropped unread (the connection stays open).
pub const MAX_MCP_LINE_BYTES: usize = 4 * 1024 * 1024;
/// The most tool calls in flight at once (each holds a control connection and a thread of
/// the blocking pool); more wait their turn.
pub const MAX_MCP_CALLS_IN_FLIGHT: usize = 16;
/// The most tool calls waiting for a turn beyond those in flight; one more is answered at
/// once with a tool error, so a client cannot make this process hold its calls' inputs
/// without bound.
pub const MAX_MCP_CALLS_WAITING: usize = 64;
/// The default wait for a tool call's answer, an approval included (`--timeout`).
pub const DEFAULT_MCP_CALL_TIMEOUT_SECS: f64 = 120.0;
/// `bridge_kind` of an MCP server's plugin: its calls answer an MCP `CallToolResult`.
const MCP_BRIDGE: &str = "mcp_stdio";
/// How long a call whose client asked for progress (a `progressToken`) may wait, an approval
/// included: loongd's approval expires first (`[approvals] timeout_ms`), answering the call.
pub const MAX_PROGRESS_CALL_SECS: u64 = 86_400;
/// How often a call waiting for an approval reports progress again (each report names it).
pub const APPROVAL_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// The longest token file read (`--token-file`); a secret is far shorter.
pub const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// `loongctl mcp …`.
#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Serve Loong's tools to an MCP client on stdio (JSON-RPC, one message a line): the
    /// client's config runs `loongctl mcp serve --token-file PATH`.
    Serve(ServeArgs),
}

/// `loongctl mcp serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The capability token to act under, given by its secret (visible in the process list:
    /// prefer --token-file or $LOONG_TOKEN; default: $LOONG_TOKEN, else the operator's own
    /// authority).
    #[arg(long, value_name = "SECRET", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the token's secret from this file (its first line).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Seconds to wait for a tool call's answer, an approval included.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
}

/// Runs `loongctl mcp …`.
pub(crate) fn run(layout: &Layout, cmd: McpCommand) -> Result<u8, Failure> {
    let McpCommand::Serve(args) = cmd;
    let secs = args.timeout.unwrap_or(DEFAULT_MCP_CALL_TIMEOUT_SECS);
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(usage(format!(
            "--timeout {secs}: give seconds between 0 and 86400"
        )));
    }
    let token = match &args.token_file {
        Some(path) => Some(read_token_file(path)?),
        None => {
            // A $LOONG_TOKEN that is set but holds no secret (a client's configuration that
            // expands an unset variable) is a mistake, not a wish for the operator's own
            // authority: serving under it would give the client everything.
            let env = std::env::var_os(crate::TOKEN_ENV);
            if args.token.is_none()
                && env
                    .as_ref()
                    .is_some_and(|v| v.to_str().is_none_or(|t| t.trim().is_empty()))
            {
                return Err(usage(format!(
                    "${}: set but holds no secret (empty, blank or not UTF-8); give the token's secret, or unset it to act with the operator's own authority",
                    crate::TOKEN_ENV
                )));
            }
            crate::bearer(args.token)
        }
    };
    // Fail early, on the terminal the client logs, when there is no daemon to serve.
    drop(crate::connect(layout)?);
    let server = Server {
        layout: layout.clone(),
        token,
        deadline: Duration::from_secs_f64(secs),
        names: Arc::new(Mutex::new(Table::default())),
        listing: Arc::new(tokio::sync::Mutex::new(None)),
        calls: Arc::new(tokio::sync::Semaphore::new(MAX_MCP_CALLS_IN_FLIGHT)),
        admitted: Arc::new(tokio::sync::Semaphore::new(
            MAX_MCP_CALLS_IN_FLIGHT + MAX_MCP_CALLS_WAITING,
        )),
    };
    // The SDK times its shutdown: the runtime needs its timer.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| anyhow!("cannot start the runtime of `mcp serve`: {e}"))?;
    runtime.block_on(async move {
        let transport =
            AsyncRwTransport::<RoleServer, _, _>::new(tokio::io::stdin(), tokio::io::stdout())
                .with_max_line_length(MAX_MCP_LINE_BYTES);
        let running = server
            .serve(transport)
            .await
            .map_err(|e| anyhow!("the MCP client did not initialize the session: {e}"))?;
        running
            .waiting()
            .await
            .map_err(|e| anyhow!("the MCP session ended abnormally: {e}"))?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(exit::OK)
}

fn usage(message: String) -> Failure {
    Failure {
        code: exit::USAGE,
        error: anyhow!(message),
    }
}

/// The secret in `path`: its first line, trimmed.
fn read_token_file(path: &std::path::Path) -> Result<BearerSecret, Failure> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| usage(format!("--token-file {}: {e}", path.display())))?;
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| {
            usage(format!(
                "--token-file {}: {e} (the file must hold the token's secret as text)",
                path.display()
            ))
        })?;
    let secret = text.lines().next().unwrap_or("").trim();
    if secret.is_empty() {
        return Err(usage(format!(
            "--token-file {}: the file is empty; write the secret `loongctl tokens issue` printed into it",
            path.display()
        )));
    }
    Ok(BearerSecret::new(secret))
}

/// One tool offered to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer {
    /// What `invoke` takes.
    pub(crate) loong: String,
    pub(crate) description: String,
    /// Its plugin's `bridge_kind`.
    bridge_kind: String,
    /// The JSON schema of its input, as loongd gives it.
    input_schema: JsonObject,
}

/// The names of one session.
type Table = names::SessionNames;

/// The last listing and when it started.
type Listing = Option<(Instant, Vec<(String, Offer)>)>;

#[derive(Clone)]
struct Server {
    layout: Layout,
    token: Option<BearerSecret>,
    deadline: Duration,
    names: Arc<Mutex<Table>>,
    /// One listing at a time; requests that arrived while one ran share the next.
    listing: Arc<tokio::sync::Mutex<Listing>>,
    /// Bounds the calls in flight ([`MAX_MCP_CALLS_IN_FLIGHT`]).
    calls: Arc<tokio::sync::Semaphore>,
    /// Bounds the calls admitted, in flight or waiting ([`MAX_MCP_CALLS_WAITING`]).
    admitted: Arc<tokio::sync::Semaphore>,
}

impl Server {
    /// The tools the token may invoke, listed and decided on the blocking pool; remembers the
    /// names it gave them. One listing runs at a time (each costs a dry run, audited, per
    /// tool); the requests that arrived while one ran share the next (one that started after
    /// they arrived, so none is answered from a listing older than itself).
    async fn list(&self) -> Result<Vec<(String, Offer)>, ErrorData> {
        let arrived = Instant::now();
        let mut last = self.listing.lock().await;
        if let Some((started, named)) = last.as_ref() {
            if *started > arrived {
                return Ok(named.clone());
            }
        }
        let started = Instant::now();
        let (layout, token) = (self.layout.clone(), self.token.clone());
        let offers = tokio::task::spawn_blocking(move || offered(&layout, token.as_ref()))
            .await
            .map_err(|e| ErrorData::internal_error(format!("listing the tools failed: {e}"), None))?
            .map_err(|e| {
                ErrorData::internal_error(format!("listing the tools failed: {:#}", e.error), None)
            })?;
        let mut table = self
            .names
            .lock()
            .map_err(|_| ErrorData::internal_error("the name table is poisoned", None))?;
        let named = table.list(
            offers
                .iter()
                .map(|o| (o.loong.as_str(), o.bridge_kind.as_str())),
        );
        drop(table);
        let listed: Vec<(String, Offer)> = offers
            .into_iter()
            .filter_map(|o| named.get(&o.loong).map(|mcp| (mcp.clone(), o)))
            .collect();
        *last = Some((started, listed.clone()));
        Ok(listed)
    }

    fn lookup(&self, mcp: &str) -> Result<Option<(String, String)>, ErrorData> {
        Ok(self
            .names
            .lock()
            .map_err(|_| ErrorData::internal_error("the name table is poisoned", None))?
            .offered
            .get(mcp)
            .cloned())
    }
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("loong", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Loong's tools, each call decided, confined and audited by loongd under this server's capability token. Names map `.` to `__` and `/` to `--`.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tools = self
            .list()
            .await?
            .into_iter()
            .map(|(mcp, o)| Tool::new(mcp, o.description, o.input_schema))
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        let Ok(_admitted) = self.admitted.clone().try_acquire_owned() else {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "the call of {name} was not made: {MAX_MCP_CALLS_IN_FLIGHT} calls are in flight and {MAX_MCP_CALLS_WAITING} wait their turn, the most this server holds; call again once one has answered"
            ))])
            .into());
        };
        // A client may call without listing first: the table is made on demand.
        let (loong, bridge_kind) = match self.lookup(&name)? {
            Some(l) => l,
            None => {
                self.list().await?;
                self.lookup(&name)?.ok_or_else(|| {
                    ErrorData::invalid_params(
                        format!(
                            "unknown tool {name:?}: this server offers only the tools its token may invoke (see tools/list)"
                        ),
                        None,
                    )
                })?
            }
        };
        let input = serde_json::Value::Object(request.arguments.unwrap_or_default()).to_string();
        let _turn =
            self.calls.acquire().await.map_err(|e| {
                ErrorData::internal_error(format!("the call queue closed: {e}"), None)
            })?;
        let (layout, token) = (self.layout.clone(), self.token.clone());
        let tool = loong.clone();
        // A client that asked for progress is told of an approval wait while it lasts and
        // answered when it ends; without, the call ends at the deadline naming the approval.
        let progress = context.meta.get_progress_token();
        let deadline = match progress {
            Some(_) => self
                .deadline
                .max(Duration::from_secs(MAX_PROGRESS_CALL_SECS)),
            None => self.deadline,
        };
        let (pending_tx, pending) = tokio::sync::mpsc::unbounded_channel();
        let call = tokio::task::spawn_blocking(move || {
            invoke(&layout, tool, input, token, deadline, pending_tx)
        });
        let answer = match progress {
            Some(t) => report_approvals(&context.peer, t, pending, call).await,
            None => call.await,
        }
        .map_err(|e| ErrorData::internal_error(format!("the call failed: {e}"), None))?;
        Ok(result(&loong, &bridge_kind, answer).into())
    }
}

/// The input schema loongd gives for a plugin's `i`th tool (checked again here: the
/// schema check's bounds and shape), or `{"type": "object"}` when it gives none.
fn input_schema(p: &PluginView, i: usize) -> JsonObject {
    p.input_schemas
        .get(i)
        .and_then(|text| loong_ipc::schema::parse_input_schema(text).ok())
        .and_then(|v| match v {
            serde_json::Value::Object(o) => Some(o),
            _ => None,
        })
        .unwrap_or_else(any_object)
}

/// The schema of a tool that has none: any object.
fn any_object() -> JsonObject {
    let mut o = JsonObject::new();
    o.insert("type".into(), "object".into());
    o
}

/// What the capability a call of `p`'s `tool` is decided on, and its target, for the dry
/// run: a plugin's tool (an MCP server's `PLUGIN/TOOL`, `programmatic_tool_call`) on
/// `tool.invoke` of its name, as `invoke` decides it; a built-in on the capability of its
/// effect with no target (its target is the path, host or command of each call, so only an
/// unscoped grant is known to cover it before the call).
fn decided_on(p: &PluginView, tool: &str) -> (String, Option<String>) {
    let effect = match (p.bridge_kind.as_str(), tool) {
        ("builtin", "file.read") => Some("fs.read"),
        ("builtin", "file.write" | "file.edit") => Some("fs.write"),
        ("builtin", "web.fetch") => Some("net.egress"),
        ("builtin", "shell.exec") => Some("process.exec"),
        _ => None,
    };
    match effect {
        Some(cap) => (cap.to_string(), None),
        None => ("tool.invoke".to_string(), Some(tool.to_string())),
    }
}

/// Every tool of a usable plugin that loongd's dry run allows under `token`, or allows once
/// an operator approves (said in its description).
pub(crate) fn offered(
    layout: &Layout,
    token: Option<&BearerSecret>,
) -> Result<Vec<Offer>, Failure> {
    let mut plugins = Vec::new();
    crate::paging::each(
        layout,
        &PageArgs::default(),
        ControlRequest::PluginList,
        |r| match r {
            ControlResponse::Plugins(ps) => Some(ps),
            _ => None,
        },
        |p| p.id.clone(),
        |p| {
            plugins.push(p.clone());
            Ok(())
        },
    )?;
    let mut client = crate::connect(layout)?;
    // An MCP server's tools have descriptions of their own, which loongd's search holds.
    let own: BTreeMap<String, String> = match client.call(
        ControlRequest::ToolSearch(ToolSearchRequest {
            query: String::new(),
            trust: None,
            limit: MAX_SEARCH_LIMIT,
        }),
        crate::REQUEST_DEADLINE,
    )? {
        ControlResponse::ToolHits(hits) => hits
            .into_iter()
            .filter(|h| !h.description.is_empty())
            .map(|h| (h.name, h.description))
            .collect(),
        _ => BTreeMap::new(),
    };
    let mut out = Vec::new();
    for listed in plugins
        .iter()
        .filter(|p| p.state == "ready" || p.state == "deferred")
    {
        // A page carries the first tools' names alone: every tool, with its schema, is shown
        // one plugin at a time. One removed since the page was read offers nothing.
        let p = match client.call(
            ControlRequest::PluginShow {
                id: listed.id.clone(),
            },
            crate::REQUEST_DEADLINE,
        ) {
            Ok(ControlResponse::Plugins(mut shown)) if shown.len() == 1 => shown.remove(0),
            Err(loong_ipc::client::ClientError::Remote(e))
                if e.kind == loong_ipc::ErrorKind::NotFound =>
            {
                continue
            }
            // Too large for one answer on this connection: its tools are not offered, and the
            // others still are.
            Err(loong_ipc::client::ClientError::Remote(e))
                if e.kind == loong_ipc::ErrorKind::BadRequest =>
            {
                eprintln!(
                    "loongctl mcp serve: {} is not offered: {}",
                    crate::text::Esc(&listed.id),
                    crate::text::Esc(&e.message)
                );
                continue;
            }
            Ok(other) => return Err(anyhow!("unexpected answer to plugins show: {other:?}").into()),
            Err(e) => return Err(e.into()),
        };
        let p = &p;
        for (i, tool) in p.tools.iter().enumerate() {
            let (cap, target) = decided_on(p, tool);
            let answer = client.call(
                ControlRequest::PolicyDecide {
                    token: token.cloned(),
                    cap,
                    target,
                },
                crate::REQUEST_DEADLINE,
            )?;
            let ControlResponse::Decided(d) = answer else {
                return Err(anyhow!("unexpected answer to policy decide: {answer:?}").into());
            };
            if let Some(description) = describe(p, tool, own.get(tool), &d) {
                out.push(Offer {
                    loong: tool.clone(),
                    description,
                    bridge_kind: p.bridge_kind.clone(),
                    input_schema: input_schema(p, i),
                });
            }
        }
    }
    Ok(out)
}

/// The description of an offered tool (`None`: not offered).
fn describe(p: &PluginView, tool: &str, own: Option<&String>, d: &DecisionView) -> Option<String> {
    let mut text = match own {
        Some(own) => own.clone(),
        None if tool == p.id => p.summary.clone(),
        None => format!("{tool} (a tool of {}: {})", p.id, p.summary),
    };
    text.push_str(&format!(" [Loong tool `{tool}`]"));
    if d.needs_approval {
        text.push_str(" Each call waits for an operator's approval (`loongctl approvals list`).");
    } else if !d.allowed {
        return None;
    }
    Some(text)
}

/// Waits for `call`, reporting to the client each approval it waits for (`pending`) as a
/// progress notification naming it, again every [`APPROVAL_PROGRESS_INTERVAL`].
async fn report_approvals<T>(
    peer: &rmcp::Peer<RoleServer>,
    token: rmcp::model::ProgressToken,
    mut pending: tokio::sync::mpsc::UnboundedReceiver<String>,
    mut call: tokio::task::JoinHandle<T>,
) -> Result<T, tokio::task::JoinError> {
    let mut waiting: Option<String> = None;
    let mut reports = 0u32;
    let mut tick = tokio::time::interval(APPROVAL_PROGRESS_INTERVAL);
    loop {
        tokio::select! {
            done = &mut call => return done,
            Some(id) = pending.recv() => waiting = Some(id),
            _ = tick.tick(), if waiting.is_some() => {}
        }
        if let Some(id) = &waiting {
            reports += 1;
            let note =
                rmcp::model::ProgressNotificationParam::new(token.clone(), f64::from(reports))
                    .with_message(names::approval_progress(id));
            // A client that left is found out by the call's answer.
            let _ = peer.notify_progress(note).await;
        }
    }
}

/// One `invoke` under `token`, as `loongctl invoke` makes it; the approvals it waits for are
/// sent to `pending` as loongd names them.
fn invoke(
    layout: &Layout,
    tool: String,
    input: String,
    token: Option<BearerSecret>,
    deadline: Duration,
    pending: tokio::sync::mpsc::UnboundedSender<String>,
) -> anyhow::Result<InvokeResult> {
    let mut client = crate::connect(layout).map_err(|f| f.error)?;
    let id = client.start(
        ControlRequest::Invoke(InvokeRequest { tool, input, token }),
        deadline,
    )?;
    let until = Instant::now() + deadline + loong_ipc::client::DEADLINE_GRACE;
    loop {
        match client.next_event::<ControlResponse>(id, until)? {
            Event::Chunk(StreamChunk::ApprovalPending(id)) => {
                let _ = pending.send(id);
            }
            // Notes for people (an approval's instructions): the answer names the approval.
            Event::Chunk(_) => {}
            Event::Done(ControlResponse::Invoked(r)) => return Ok(r),
            Event::Done(other) => return Err(anyhow!("unexpected answer to invoke: {other:?}")),
        }
    }
}

/// The MCP result of a call of `tool`: an MCP server's own result as it gave it, any other
/// output as text (and as structured content when it is a JSON object), or a tool error with
/// loongd's reason.
fn result(tool: &str, bridge_kind: &str, answer: anyhow::Result<InvokeResult>) -> CallToolResult {
    match answer {
        Ok(r) if bridge_kind == MCP_BRIDGE => {
            match serde_json::from_str::<CallToolResult>(&r.output) {
                Ok(own) => own,
                Err(_) => CallToolResult::success(vec![ContentBlock::text(r.output)]),
            }
        }
        Ok(r) => match serde_json::from_str::<serde_json::Value>(&r.output) {
            Ok(v @ serde_json::Value::Object(_)) => {
                let mut out = CallToolResult::success(vec![ContentBlock::text(r.output.clone())]);
                out.structured_content = Some(v);
                out
            }
            _ => CallToolResult::success(vec![ContentBlock::text(r.output)]),
        },
        Err(failure) => {
            let Some(ClientError::Remote(e)) = failure.downcast_ref::<ClientError>() else {
                return CallToolResult::error(vec![ContentBlock::text(format!(
                    "the call of {tool} failed: {failure:#}"
                ))]);
            };
            let text = match (&e.kind, &e.detail) {
                (ErrorKind::Denied, _) => format!("denied: {} (tool {tool})", e.message),
                (_, Some(ErrorDetail::ApprovalPending { approval })) => format!(
                    "approval {approval} of this call of {tool} was not decided while the call waited, and is withdrawn with it; call the tool again, and have an operator approve the new request while it waits ({})",
                    e.message
                ),
                (kind, _) => format!("{kind}: {} (tool {tool})", e.message),
            };
            CallToolResult::error(vec![ContentBlock::text(text)])
        }
    }
}

/// The name mapping, shared with the gateway's `/mcp` (`loong_ipc::mcp_names`).
pub use loong_ipc::mcp_names as names;

/// The names [`names::assign`] gives `loong`, MCP name → Loong name (used by the tests).
#[cfg(test)]
fn reverse(loong: &[&str]) -> BTreeMap<String, String> {
    names::assign(loong.iter().map(|l| (*l, false)), &BTreeMap::new())
        .into_iter()
        .map(|(l, m)| (m, l))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn valid(name: &str) -> bool {
        (1..=names::MAX_MCP_NAME_CHARS).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    #[test]
    fn dotted_and_slashed_names_map_and_map_back() {
        let loong = ["file.read", "time/get_current_time", "echo", "web.fetch"];
        let m = names::assign(loong.map(|l| (l, false)), &BTreeMap::new());
        assert_eq!(m["file.read"], "file__read");
        assert_eq!(m["time/get_current_time"], "time--get_current_time");
        assert_eq!(m["echo"], "echo");
        let back = reverse(&loong);
        for l in loong {
            assert_eq!(back[&m[l]], l);
        }
    }

    #[test]
    fn collisions_are_suffixed_and_every_name_is_valid_and_unique() {
        let long = "x".repeat(100);
        let long2 = format!("{}y", "x".repeat(99));
        let loong = [
            "a.b",
            "a__b",
            "a/b",
            "a--b",
            "a b",
            "a_b",
            "",
            "é/ü",
            long.as_str(),
            long2.as_str(),
        ];
        let m = names::assign(loong.map(|l| (l, false)), &BTreeMap::new());
        assert_eq!(m.len(), loong.len());
        let distinct: BTreeSet<&String> = m.values().collect();
        assert_eq!(distinct.len(), loong.len(), "{m:?}");
        for (l, mcp) in &m {
            assert!(valid(mcp), "{l:?} → {mcp:?}");
        }
        // A name valid already keeps itself; the escaped one that collides is suffixed.
        assert_eq!(m["a__b"], "a__b");
        assert_eq!(m["a.b"], "a__b_2");
        assert_eq!(m["a--b"], "a--b");
        assert_eq!(m["a/b"], "a--b_2");
        assert_eq!(m["a_b"], "a_b");
        assert_eq!(m["a b"], "a_b_2");
        assert_eq!(m[long.as_str()], "x".repeat(64));
        assert_eq!(m[long2.as_str()], format!("{}_2", "x".repeat(62)));
        let back = reverse(&loong);
        for l in loong {
            assert_eq!(back[&m[l]], l);
        }
    }

    /// A plugin whose id is a built-in's MCP name (`file__read` is a valid plugin id) does
    /// not take that name from the built-in, whichever sorts first.
    #[test]
    fn a_plugin_cannot_take_the_mcp_name_of_a_built_in() {
        let m = names::assign(
            [
                ("file.read", true),
                ("file__read", false),
                ("web--fetch", false),
            ],
            &BTreeMap::new(),
        );
        assert_eq!(m["file.read"], "file__read");
        assert_eq!(m["file__read"], "file__read_2");
        // The control: a plugin's valid name that no built-in wants keeps itself.
        assert_eq!(m["web--fetch"], "web--fetch");
    }

    /// A name given in the session is never given to another tool: a tool that appears
    /// later (whose name is the one given, or which would take it by the order of names)
    /// gets another, and a tool that leaves takes its name with it.
    #[test]
    fn a_name_once_given_is_never_given_to_another_tool() {
        let mut given = BTreeMap::new();
        let mut list = |loong: &[&str]| {
            let m = names::assign(loong.iter().map(|l| (*l, false)), &given);
            for (l, mcp) in &m {
                if let Some(before) = given.insert(mcp.clone(), l.clone()) {
                    assert_eq!(&before, l, "{mcp} went from {before} to {l}");
                }
            }
            m
        };
        let first = list(&["srv/a.b", "time/now"]);
        assert_eq!(first["srv/a.b"], "srv--a__b");
        // A plugin named as the escaped name appears: it would sort before it.
        let second = list(&["srv/a.b", "srv--a__b", "time/now"]);
        assert_eq!(second["srv/a.b"], "srv--a__b");
        assert_eq!(second["srv--a__b"], "srv--a__b_2");
        // The first leaves: its name is not handed on.
        let third = list(&["srv--a__b", "time/now", "srv/a_b"]);
        assert_eq!(third["srv--a__b"], "srv--a__b_2");
        assert!(!third.values().any(|m| m == "srv--a__b"), "{third:?}");
        // The control: a tool that keeps its place keeps its name.
        assert_eq!(third["time/now"], first["time/now"]);
    }

    #[test]
    fn a_built_in_is_decided_on_its_effect_and_a_plugin_on_its_name() {
        let view = |id: &str, kind: &str| PluginView {
            id: id.into(),
            version: "1".into(),
            summary: "s".into(),
            bridge_kind: kind.into(),
            state: "ready".into(),
            error: None,
            sha256: None,
            path: String::new(),
            tools: vec![id.into()],
            input_schemas: vec![r#"{"type":"object"}"#.into()],
            trust: "unverified".into(),
            signer: None,
            lock_digest: None,
            tool_count: 1,
        };
        assert_eq!(
            decided_on(&view("file.read", "builtin"), "file.read"),
            ("fs.read".to_string(), None)
        );
        assert_eq!(
            decided_on(
                &view("programmatic_tool_call", "builtin"),
                "programmatic_tool_call"
            ),
            (
                "tool.invoke".to_string(),
                Some("programmatic_tool_call".to_string())
            )
        );
        assert_eq!(
            decided_on(&view("time", "mcp_stdio"), "time/get_current_time"),
            (
                "tool.invoke".to_string(),
                Some("time/get_current_time".to_string())
            )
        );
    }
}
