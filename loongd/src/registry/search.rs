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

/// One tool, as search compares it.
#[derive(Debug)]
struct Entry {
    /// The plugin's id (its key in the registry the index was made from).
    plugin: String,
    /// What `invoke` takes.
    name: String,
    /// The MCP tool's own description (empty for a plugin that is one tool).
    description: String,
    /// `name`, lowercased.
    name_lower: String,
    /// The letters-and-digits parts of `name_lower`.
    parts: Vec<String>,
    /// The summary and the description, lowercased.
    text: String,
    /// The plugin's tags, lowercased.
    tags: Vec<String>,
    trust: TrustTier,
}

impl Entry {
    /// Per word, 8 for a whole name part, 4 for a part of the name, 3 for a tag, 2 for the
    /// summary or the description.
    fn score(&self, words: &[String]) -> u32 {
        words
            .iter()
            .map(|w| {
                let mut s = 0;
                if self.parts.iter().any(|p| p == w) {
                    s += 8;
                } else if self.name_lower.contains(w.as_str()) {
                    s += 4;
                }
                if self.tags.iter().any(|t| t == w) {
                    s += 3;
                }
                if self.text.contains(w.as_str()) {
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
    entries: Vec<Entry>,
}

impl SearchIndex {
    /// The index of `registry`'s tools.
    pub(crate) fn build(registry: &Registry) -> SearchIndex {
        let mut entries = Vec::new();
        for p in registry.values() {
            let State::Ready { info, .. } = &p.state else {
                continue;
            };
            let summary = p.summary.to_lowercase();
            let tags: Vec<String> = p.catalog.tags.iter().map(|t| t.to_lowercase()).collect();
            let tools: Vec<(String, &str)> = if p.has_named_tools() && !info.tools.is_empty() {
                info.tools
                    .iter()
                    .map(|t| (format!("{}/{}", p.id, t.name), t.description.as_str()))
                    .collect()
            } else {
                vec![(p.id.clone(), "")]
            };
            for (name, description) in tools {
                let name_lower = name.to_lowercase();
                let parts = name_lower
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect();
                entries.push(Entry {
                    plugin: p.id.clone(),
                    text: format!("{summary} {}", description.to_lowercase()),
                    description: description.to_string(),
                    name,
                    name_lower,
                    parts,
                    tags: tags.clone(),
                    trust: p.trust,
                });
            }
        }
        SearchIndex { entries }
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
            .filter(|e| e.trust <= floor)
            .map(|e| (e.score(&words), e))
            .filter(|(s, _)| *s > 0 || words.is_empty())
            .collect();
        best(&mut scored, limit.min(MAX_SEARCH_LIMIT as usize), |e| {
            &e.name
        });
        scored
            .into_iter()
            .filter_map(|(score, e)| {
                let p = registry.get(&e.plugin)?;
                Some(ToolHit {
                    name: e.name.clone(),
                    plugin: p.id.clone(),
                    summary: p.summary.clone(),
                    description: e.description.clone(),
                    tags: p.catalog.tags.clone(),
                    input_examples: p.catalog.input_examples.clone(),
                    output_examples: p.catalog.output_examples.clone(),
                    trust: e.trust.as_str().into(),
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

    fn entry(name: &str, summary: &str, tags: &[&str]) -> Entry {
        let name_lower = name.to_lowercase();
        Entry {
            plugin: "p".into(),
            name: name.into(),
            description: String::new(),
            parts: name_lower
                .split(|c: char| !c.is_alphanumeric())
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
            name_lower,
            text: format!("{} ", summary.to_lowercase()),
            tags: tags.iter().map(|t| t.to_lowercase()).collect(),
            trust: TrustTier::Unverified,
        }
    }

    #[test]
    fn search_scores_names_above_tags_above_text() {
        let words = query_words("Read FILE, read!");
        assert_eq!(words, ["read", "file"]);
        assert_eq!(entry("fs/read_file", "", &[]).score(&words), 16);
        assert_eq!(entry("fs/cat", "", &["READ"]).score(&words), 3);
        assert_eq!(entry("fs/cat", "Reads a file", &["files"]).score(&words), 4);
        assert_eq!(entry("fs/readers", "", &[]).score(&words), 4);
        assert_eq!(entry("time/now", "the time", &["files"]).score(&words), 0);
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
