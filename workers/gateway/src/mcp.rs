//! `/mcp`: the same MCP server as `loongctl mcp serve`, over streamable HTTP. `tools/list`
//! offers what loongd's `gateway_list` says the bearer may invoke, named by the shared
//! mapping (`loong_ipc::mcp_names`, the same names in both); `tools/call` is a
//! `gateway_invoke` under the bearer. A denial is a tool error with loongd's reason; a call
//! that needs an approval is a tool error naming the approval.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use loong_ipc::{
    mcp_names as names,
    message::gateway::{self as wire, GatewayInvoke, GatewayList, GatewayTool, GatewayWaiting},
    BearerSecret, ErrorDetail, ErrorKind,
};
use loong_worker_runtime::{service::AsyncLink, KernelLinkError};
use rmcp::{
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
        JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
        Tool,
    },
    service::RequestContext,
    ErrorData, RoleServer, ServerHandler,
};

/// How long a tool call may take, an approval's wait included, when its client asked for no
/// progress: past it, loongd answers naming the approval it waits for.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How much longer than the wait it asks loongd for the worker waits for loongd's answer.
const ANSWER_GRACE: Duration = Duration::from_secs(5);
/// How often a call whose client asked for progress asks loongd which approvals it waits for.
pub const WAITING_POLL: Duration = Duration::from_secs(1);
/// How often a call waiting for an approval reports progress again (each report names it).
pub const APPROVAL_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// How long a listing may take.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(30);
/// `bridge_kind` of an MCP server's plugin: its calls answer an MCP `CallToolResult`.
const MCP_BRIDGE: &str = "mcp_stdio";

/// Numbers this worker's `gateway_invoke` calls (`gateway_waiting` asks by it).
static NEXT_TAG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The bearer of the HTTP request an MCP message came in (put there by the router), and,
/// for a request served while loongd authenticates its secret again (a warm session's), the
/// answer to wait for: no kernel call is made under the secret before loongd has confirmed
/// it, so that nothing takes effect (a tool's call, its approval request, a listing's
/// records) for a request then refused.
#[derive(Debug, Clone)]
pub struct Bearer {
    pub secret: BearerSecret,
    /// `None`: confirmed already; else `Some(true)` once loongd confirms it, `Some(false)`
    /// (or the sender gone) when it refused it.
    pub confirmed: Option<tokio::sync::watch::Receiver<Option<bool>>>,
}

/// The names of one session.
type Table = names::SessionNames;

/// One MCP session's server.
#[derive(Clone)]
pub struct Mcp {
    link: AsyncLink,
    names: Arc<Mutex<Table>>,
}

impl Mcp {
    pub fn new(link: AsyncLink) -> Mcp {
        Mcp {
            link,
            names: Arc::default(),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One page of the tools the bearer may invoke (`cursor`: from where), named, and the
    /// next page's cursor; remembers the names: every page's add to the names offered (a
    /// name listed again takes its new bridge kind), none is dropped.
    async fn list(
        &self,
        bearer: &BearerSecret,
        cursor: Option<String>,
    ) -> Result<(Vec<(String, GatewayTool)>, Option<String>), ErrorData> {
        let req = wire::request(
            wire::KIND_GATEWAY_LIST,
            &GatewayList {
                bearer: bearer.clone(),
                cursor,
            },
        )
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let bytes = self
            .link
            .call(req, LIST_TIMEOUT)
            .await
            .map_err(|e| match e {
                // A cursor loongd did not give: the client's params, not a failure here.
                KernelLinkError::Remote(r) if r.kind == loong_ipc::ErrorKind::BadRequest => {
                    ErrorData::invalid_params(r.message, None)
                }
                e => ErrorData::internal_error(format!("listing the tools failed: {e}"), None),
            })?;
        let listed: wire::GatewayListed = wire::decode(&bytes)
            .map_err(|e| ErrorData::internal_error(format!("listing the tools: {e}"), None))?;
        let mut table = self.table();
        // Merged, never replaced: a tool named on any page stays callable by its name (a
        // first page listed again, or the listing a call of an unknown name makes, must not
        // strand the later pages' tools); each call is decided by loongd whatever is here.
        let before = std::mem::take(&mut table.offered);
        let named = table.list(
            listed
                .tools
                .iter()
                .map(|t| (t.name.as_str(), t.bridge_kind.as_str())),
        );
        for (mcp, tool) in before {
            table.offered.entry(mcp).or_insert(tool);
        }
        drop(table);
        let tools = listed
            .tools
            .into_iter()
            .filter_map(|t| named.get(&t.name).map(|mcp| (mcp.clone(), t)))
            .collect();
        Ok((tools, listed.next))
    }
}

/// An MCP cursor of this server's `tools/list`: opaque, loongd's (it refuses one it did not
/// give), bounded here by [`wire::MAX_GATEWAY_CURSOR_BYTES`].
fn parse_cursor(cursor: String) -> Result<String, ErrorData> {
    if cursor.len() > wire::MAX_GATEWAY_CURSOR_BYTES {
        return Err(ErrorData::invalid_params(
            format!(
                "tools/list: a cursor of {} bytes is not one this server gave; list again without a cursor",
                cursor.len()
            ),
            None,
        ));
    }
    Ok(cursor)
}

/// The request's bearer, once loongd has confirmed it (see [`Bearer`]).
async fn bearer_of(ctx: &RequestContext<RoleServer>) -> Result<BearerSecret, ErrorData> {
    let bearer = ctx
        .extensions
        .get::<hyper::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Bearer>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("the request carries no bearer", None))?;
    if let Some(mut confirmed) = bearer.confirmed {
        let ok = confirmed
            .wait_for(Option::is_some)
            .await
            .map(|v| *v == Some(true))
            .unwrap_or(false);
        if !ok {
            return Err(ErrorData::invalid_request(
                "the request's bearer was refused by loongd; nothing was called under it",
                None,
            ));
        }
    }
    Ok(bearer.secret)
}

/// The schema given for every tool: loongd does not hand out input schemas yet.
fn any_object() -> JsonObject {
    let mut o = JsonObject::new();
    o.insert("type".into(), "object".into());
    o
}

impl ServerHandler for Mcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("loong", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Loong's tools, each call decided, confined and audited by loongd under the bearer's capability token. Names map `.` to `__` and `/` to `--`.",
            )
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let cursor = match request.and_then(|r| r.cursor) {
            Some(c) => Some(parse_cursor(c)?),
            None => None,
        };
        let bearer = bearer_of(&context).await?;
        let (tools, next) = self.list(&bearer, cursor).await?;
        let tools = tools
            .into_iter()
            .map(|(mcp, t)| Tool::new(mcp, t.description, any_object()))
            .collect();
        // More than one page's worth: the client learns the listing goes on (MCP's cursor).
        let mut result = ListToolsResult::with_all_items(tools);
        result.next_cursor = next;
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let bearer = bearer_of(&context).await?;
        let name = request.name.to_string();
        let known = self.table().offered.get(&name).cloned();
        let (loong, bridge_kind) = match known {
            Some(l) => l,
            None => {
                self.list(&bearer, None).await?;
                self.table().offered.get(&name).cloned().ok_or_else(|| {
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
        // A client that asked for progress is told of an approval wait while it lasts and
        // answered when it ends; without, the call ends at CALL_TIMEOUT naming the approval.
        let progress = context.meta.get_progress_token();
        let wait_ms = match progress {
            Some(_) => wire::MAX_GATEWAY_INVOKE_WAIT_MS,
            None => u64::try_from(CALL_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
        };
        let tag = NEXT_TAG.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let req = wire::request(
            wire::KIND_GATEWAY_INVOKE,
            &GatewayInvoke {
                bearer,
                tool: loong.clone(),
                input,
                tag,
                wait_ms,
            },
        )
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let call = self
            .link
            .call(req, Duration::from_millis(wait_ms) + ANSWER_GRACE);
        let answer = match progress {
            Some(token) => report_approvals(&self.link, &context.peer, token, tag, call).await,
            None => call.await,
        };
        Ok(result(&loong, &bridge_kind, answer).into())
    }
}

/// Waits for `call` (tag `tag`), asking loongd every [`WAITING_POLL`] which approvals it
/// waits for and reporting each to the client as a progress notification naming it, again
/// every [`APPROVAL_PROGRESS_INTERVAL`].
async fn report_approvals(
    link: &AsyncLink,
    peer: &rmcp::Peer<RoleServer>,
    token: rmcp::model::ProgressToken,
    tag: u64,
    call: impl std::future::Future<Output = Result<Vec<u8>, KernelLinkError>>,
) -> Result<Vec<u8>, KernelLinkError> {
    tokio::pin!(call);
    let mut poll =
        tokio::time::interval_at(tokio::time::Instant::now() + WAITING_POLL, WAITING_POLL);
    let (mut reported, mut last, mut reports) = (None::<String>, tokio::time::Instant::now(), 0u32);
    loop {
        tokio::select! {
            done = &mut call => return done,
            _ = poll.tick() => {}
        }
        let Ok(req) = wire::request(wire::KIND_GATEWAY_WAITING, &GatewayWaiting { tag }) else {
            continue;
        };
        let Ok(bytes) = link.call(req, LIST_TIMEOUT).await else {
            continue;
        };
        let Ok(ids) = wire::decode::<Vec<String>>(&bytes) else {
            continue;
        };
        let Some(id) = ids.first() else {
            continue;
        };
        if reported.as_ref() == Some(id) && last.elapsed() < APPROVAL_PROGRESS_INTERVAL {
            continue;
        }
        reports += 1;
        let note = rmcp::model::ProgressNotificationParam::new(token.clone(), f64::from(reports))
            .with_message(names::approval_progress(id));
        // A client that left is found out by the call's answer.
        let _ = peer.notify_progress(note).await;
        reported = Some(id.clone());
        last = tokio::time::Instant::now();
    }
}

/// The MCP result of a call of `tool`, as `mcp serve` gives it.
fn result(
    tool: &str,
    bridge_kind: &str,
    answer: Result<Vec<u8>, KernelLinkError>,
) -> CallToolResult {
    match answer {
        Ok(bytes) => {
            let output = String::from_utf8_lossy(&bytes).into_owned();
            if bridge_kind == MCP_BRIDGE {
                return match serde_json::from_str::<CallToolResult>(&output) {
                    Ok(own) => own,
                    Err(_) => CallToolResult::success(vec![ContentBlock::text(output)]),
                };
            }
            match serde_json::from_str::<serde_json::Value>(&output) {
                Ok(v @ serde_json::Value::Object(_)) => {
                    let mut out = CallToolResult::success(vec![ContentBlock::text(output.clone())]);
                    out.structured_content = Some(v);
                    out
                }
                _ => CallToolResult::success(vec![ContentBlock::text(output)]),
            }
        }
        Err(KernelLinkError::Remote(e)) => {
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
        Err(other) => CallToolResult::error(vec![ContentBlock::text(format!(
            "the call of {tool} failed: {other}"
        ))]),
    }
}
