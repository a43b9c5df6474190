//! Tools and their workers on the control socket: `invoke` (the call itself is
//! `effects::invoke`), `plugins list|reload`, `workers list|kill`, `tools search`.

use loong_ipc::{
    message::control::{MAX_SEARCH_LIMIT, MAX_SEARCH_QUERY_BYTES},
    BearerSecret, ControlResponse, ErrorKind, InvokeRequest, Page, RemoteError, ToolHit,
    ToolSearchRequest,
};
use loong_profiles::plugin::TrustTier;
use tokio::net::unix::UCred;

use super::paging::{after_text, page_of};
use crate::{
    audit::Kind,
    effects::{self, Actor},
    registry,
    request::RequestIo,
    workers::plugins::State,
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

/// `plugins list`: a page of the plugins, by id.
pub(crate) fn list(kernel: &Kernel, page: &Page) -> ControlResponse {
    let snapshot = kernel.plugins_snapshot();
    let after = snapshot
        .values()
        .filter(|p| after_text(page, &p.id))
        .map(|p| p.view());
    ControlResponse::Plugins(page_of(after, |_| true, page))
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
        .record(Actor::operator(cred.uid(), None, io).event(Kind::ToolSearched, detail))
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
