//! Tools and their workers on the control socket: `invoke` (the call itself is
//! `effects::invoke`), `plugins list|reload`, `workers list|kill`, `tools search`.

use loong_ipc::{
    message::control::{MAX_SEARCH_LIMIT, MAX_SEARCH_QUERY_BYTES},
    BearerSecret, ControlResponse, ErrorKind, InvokeRequest, Page, RemoteError, ToolSearchRequest,
};
use loong_profiles::plugin::TrustTier;
use tokio::net::unix::UCred;

use super::paging::{after_text, page_of};
use crate::{
    audit::Kind,
    effects::{self, Actor},
    registry,
    request::RequestIo,
    Kernel,
};

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
    let actor = Actor::operator(cred.uid(), req.token.as_ref().map(BearerSecret::expose), io);
    effects::invoke::call(kernel, &actor, req.tool, req.input)
        .await
        .map(ControlResponse::Invoked)
}

/// `plugins list`: a page of the plugins, by id, each with its first tools' names and their
/// count (`plugins show` gives every tool).
pub(crate) fn list(kernel: &Kernel, page: &Page) -> ControlResponse {
    let snapshot = kernel.plugins_snapshot();
    let after = snapshot
        .values()
        .filter(|p| after_text(page, &p.id))
        .map(|p| p.listed_view());
    ControlResponse::Plugins(page_of(after, |_| true, page))
}

/// `plugins show ID`: one plugin with every tool's name and input schema.
pub(crate) fn show(kernel: &Kernel, id: &str) -> Result<ControlResponse, RemoteError> {
    let snapshot = kernel.plugins_snapshot();
    let p = snapshot.get(id).ok_or_else(|| {
        RemoteError::new(
            ErrorKind::NotFound,
            format!("no plugin {id}; `loongctl plugins list` shows them"),
        )
    })?;
    let room = kernel.config.ipc.max_frame_bytes as usize;
    let view = p.view_within(room).map_err(|size| {
        RemoteError::new(
            ErrorKind::BadRequest,
            format!(
                "plugin {id} with every tool's input schema is {size} bytes, above this \
                 connection's frame limit of {room} bytes; raise ipc.max_frame_bytes, or see its \
                 first tools with `loongctl plugins list`"
            ),
        )
    })?;
    Ok(ControlResponse::Plugins(vec![view]))
}

/// `plugins reload`: the set discovered and loaded again, then its first page.
pub(crate) async fn reload(kernel: &Kernel) -> ControlResponse {
    registry::reload(kernel).await;
    list(kernel, &Page::default())
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
    let mut all: Vec<_> = registry::all_pools(kernel)
        .iter()
        .flat_map(|p| p.list())
        .collect();
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
    let killed = registry::all_pools(kernel)
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

/// `loongctl tools search`: every tool of the active and deferred plugins, scored against
/// the query's words, best first (`registry::search`'s index of the set). The trust tier shown is what loongd grants: a plugin's
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
    let snapshot = kernel.plugins_snapshot();
    let index = kernel.search_index(&snapshot);
    let hits = index.search(&snapshot, &req.query, floor, req.limit as usize);
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
        .record(Actor::operator(cred.uid(), None, io).event(Kind::ToolSearched, detail))
        .await
        .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?;
    Ok(ControlResponse::ToolHits(hits))
}
