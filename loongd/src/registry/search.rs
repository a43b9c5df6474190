//! The index `tools search` reads: one entry per tool of a plugin set, with the lowercased
//! name, name parts, text and tags each query compares, made once per set (after a reload,
//! an install or a deferred plugin's first load) rather than once per tool per query. A
//! query scores every entry against its words, keeps the best [`MAX_SEARCH_LIMIT`] at most
//! (a partial selection, not a sort of every match) and builds hits for those alone.

use std::sync::Arc;

use loong_ipc::{message::control::MAX_SEARCH_LIMIT, ToolHit};
use loong_profiles::plugin::TrustTier;

use crate::workers::plugins::{Registry, State};

/// The most words of a query that count.
pub const MAX_QUERY_WORDS: usize = 16;

/// What the tools of one plugin share in the index: made once per plugin, not per tool.
#[derive(Debug)]
struct Owner {
    /// The plugin's id (its key in the registry the index was made from).
    id: String,
    /// Its summary, lowercased.
    summary: String,
    /// Its tags, lowercased.
    tags: Vec<String>,
    trust: TrustTier,
}

/// One tool, as search compares it. Its description is not copied: a hit reads it from the
/// plugin set the index was made from.
#[derive(Debug)]
struct Entry {
    /// Its plugin, in [`SearchIndex::owners`].
    owner: u32,
    /// Its place in its plugin's tool list (`None`: a plugin that is one tool).
    tool: Option<u32>,
    /// What `invoke` takes.
    name: String,
    /// `name`, lowercased.
    name_lower: String,
    /// The MCP tool's own description, lowercased (empty for a plugin that is one tool).
    description: String,
}

impl Entry {
    /// Per word, 8 for a whole name part (a run of letters and digits), 4 for a part of the
    /// name, 3 for a tag, 2 for the summary or the description.
    fn score(&self, owner: &Owner, words: &[String]) -> u32 {
        words
            .iter()
            .map(|w| {
                let mut s = 0;
                // A whole part is in the name, so the parts are split only when it is.
                if self.name_lower.contains(w.as_str()) {
                    let whole = self
                        .name_lower
                        .split(|c: char| !c.is_alphanumeric())
                        .any(|p| p == w);
                    s += if whole { 8 } else { 4 };
                }
                if owner.tags.iter().any(|t| t == w) {
                    s += 3;
                }
                // A word is letters and digits, so none spans the summary and the description.
                if owner.summary.contains(w.as_str()) || self.description.contains(w.as_str()) {
                    s += 2;
                }
                s
            })
            .sum()
    }
}

/// Every tool of the ready and deferred plugins of one plugin set.
#[derive(Debug, Default)]
pub(crate) struct SearchIndex {
    owners: Vec<Owner>,
    entries: Vec<Entry>,
}

impl SearchIndex {
    /// The index of `registry`'s tools.
    pub(crate) fn build(registry: &Registry) -> SearchIndex {
        let mut index = SearchIndex::default();
        for p in registry.values() {
            let State::Ready { info, .. } = &p.state else {
                continue;
            };
            let Ok(owner) = u32::try_from(index.owners.len()) else {
                break;
            };
            index.owners.push(Owner {
                id: p.id.clone(),
                summary: p.summary.to_lowercase(),
                tags: p.catalog.tags.iter().map(|t| t.to_lowercase()).collect(),
                trust: p.trust,
            });
            if p.has_named_tools() && !info.tools.is_empty() {
                for (i, t) in (0u32..).zip(info.tools.iter()) {
                    let name = format!("{}/{}", p.id, t.name);
                    index.entries.push(Entry {
                        owner,
                        tool: Some(i),
                        name_lower: name.to_lowercase(),
                        name,
                        description: t.description.to_lowercase(),
                    });
                }
            } else {
                index.entries.push(Entry {
                    owner,
                    tool: None,
                    name_lower: p.id.to_lowercase(),
                    name: p.id.clone(),
                    description: String::new(),
                });
            }
        }
        index.owners.shrink_to_fit();
        index.entries.shrink_to_fit();
        index
    }

    fn owner(&self, e: &Entry) -> &Owner {
        &self.owners[e.owner as usize]
    }

    /// The best `limit` (at most [`MAX_SEARCH_LIMIT`]) tools of plugins trusted at `floor`
    /// or better for `query`, best first (by score, then name); every tool, by name, when
    /// the query has no words. `registry` is the set the index was made from.
    pub(crate) fn search(
        &self,
        registry: &Registry,
        query: &str,
        floor: TrustTier,
        limit: usize,
    ) -> Vec<ToolHit> {
        let words = query_words(query);
        let mut scored: Vec<(u32, &Entry)> = self
            .entries
            .iter()
            .filter(|e| self.owner(e).trust <= floor)
            .map(|e| (e.score(self.owner(e), &words), e))
            .filter(|(s, _)| *s > 0 || words.is_empty())
            .collect();
        best(&mut scored, limit.min(MAX_SEARCH_LIMIT as usize), |e| {
            &e.name
        });
        scored
            .into_iter()
            .filter_map(|(score, e)| {
                let owner = self.owner(e);
                let p = registry.get(&owner.id)?;
                let description = match (&p.state, e.tool) {
                    (State::Ready { info, .. }, Some(i)) => info
                        .tools
                        .get(i as usize)
                        .map(|t| t.description.clone())
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                Some(ToolHit {
                    name: e.name.clone(),
                    plugin: p.id.clone(),
                    summary: p.summary.clone(),
                    description,
                    tags: p.catalog.tags.clone(),
                    input_examples: p.catalog.input_examples.clone(),
                    output_examples: p.catalog.output_examples.clone(),
                    trust: owner.trust.as_str().into(),
                    claimed_trust: p.catalog.claimed_trust.map(|t| t.as_str().into()),
                    state: if p.deferred() { "deferred" } else { "active" }.into(),
                    bridge_kind: p.bridge_kind.into(),
                    score,
                })
            })
            .collect()
    }
}

/// The newest index and the set it was made from. The set is held weakly: its allocation
/// stays (so no later set can share its address) but its plugins are dropped with it.
pub(crate) type IndexCache =
    std::sync::Mutex<Option<(std::sync::Weak<Registry>, Arc<SearchIndex>)>>;

/// Keeps the best `keep` of `scored`, best first: by score, then by name. A partial
/// selection, then a sort of those alone.
fn best<T>(scored: &mut Vec<(u32, T)>, keep: usize, name: impl Fn(&T) -> &str) {
    let order = |a: &(u32, T), b: &(u32, T)| b.0.cmp(&a.0).then_with(|| name(&a.1).cmp(name(&b.1)));
    if scored.len() > keep && keep > 0 {
        scored.select_nth_unstable_by(keep - 1, order);
    }
    scored.truncate(keep);
    scored.sort_unstable_by(order);
}

/// The index of `registry`, from `cache` when it was made from that very set, otherwise
/// made now and kept there.
pub(crate) fn index_for(cache: &IndexCache, registry: &Arc<Registry>) -> Arc<SearchIndex> {
    let mut guard = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((set, index)) = guard.as_ref() {
        if std::ptr::eq(set.as_ptr(), Arc::as_ptr(registry)) {
            return index.clone();
        }
    }
    let index = Arc::new(SearchIndex::build(registry));
    *guard = Some((Arc::downgrade(registry), index.clone()));
    index
}

/// The query's distinct lowercase words (letters and digits), at most [`MAX_QUERY_WORDS`].
pub(crate) fn query_words(query: &str) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, summary: &str, tags: &[&str]) -> (Entry, Owner) {
        (
            Entry {
                owner: 0,
                tool: None,
                name: name.into(),
                name_lower: name.to_lowercase(),
                description: String::new(),
            },
            Owner {
                id: "p".into(),
                summary: summary.to_lowercase(),
                tags: tags.iter().map(|t| t.to_lowercase()).collect(),
                trust: TrustTier::Unverified,
            },
        )
    }

    fn score(e: (Entry, Owner), words: &[String]) -> u32 {
        e.0.score(&e.1, words)
    }

    #[test]
    fn search_scores_names_above_tags_above_text() {
        let words = query_words("Read FILE, read!");
        assert_eq!(words, ["read", "file"]);
        assert_eq!(score(entry("fs/read_file", "", &[]), &words), 16);
        assert_eq!(score(entry("fs/cat", "", &["READ"]), &words), 3);
        assert_eq!(
            score(entry("fs/cat", "Reads a file", &["files"]), &words),
            4
        );
        assert_eq!(score(entry("fs/readers", "", &[]), &words), 4);
        assert_eq!(score(entry("time/now", "the time", &["files"]), &words), 0);
    }

    #[test]
    fn the_best_few_are_those_a_full_sort_puts_first() {
        let all: Vec<(u32, String)> = (0..500u32)
            .map(|i| ((i * 7919) % 13, format!("t{:03}", (i * 31) % 500)))
            .collect();
        let mut sorted = all.clone();
        sorted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for keep in [0, 1, 20, 100, 499, 500, 600] {
            let mut kept = all.clone();
            best(&mut kept, keep, |n| n.as_str());
            assert_eq!(kept, sorted[..keep.min(500)], "keep {keep}");
        }
    }

    #[test]
    fn the_index_is_made_once_per_plugin_set() {
        let cache = IndexCache::default();
        let set = Arc::new(Registry::new());
        let first = index_for(&cache, &set);
        assert!(Arc::ptr_eq(&first, &index_for(&cache, &set)));
        // A new set (a reload, an install, a deferred plugin's first load) has its own.
        let next = Arc::new(Registry::new());
        let second = index_for(&cache, &next);
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&second, &index_for(&cache, &next)));
    }
}
