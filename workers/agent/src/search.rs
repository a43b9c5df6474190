//! `tool_search`: when the session's token may call more tools than `[agent]
//! max_offered_tools`, the model is offered `tool_search {query}` and the few tools most
//! relevant to the user's message instead of all of them, and loads the others on demand.
//!
//! The catalog searched is the turn's `tools`: what loongd computed from the session's token
//! (runtime-visible advertising), so a search can only ever find a tool the token may call.
//! A found tool is offered from the next round trip on (each call of it is still decided by
//! the kernel); at most `max_offered_tools` tools are offered at once, `tool_search`
//! included, the tools found longest ago leaving first. A search is answered here, in the
//! worker: it reads a list loongd already gave, so it is not a kernel call.

use std::{collections::VecDeque, sync::Mutex};

use crate::{
    client::BoxFuture,
    limits::{MAX_SEARCH_QUERY_BYTES, SEARCH_PRELOADED_TOOLS, SEARCH_RESULTS},
    names::ToolNames,
    turn::{ToolRunner, ToolSet},
    types::{ToolCall, ToolSpec},
};

/// The name of the search tool the model is offered.
pub const TOOL_SEARCH: &str = "tool_search";
/// The most words of a query (or of the user's message, for the first tools) that count.
const MAX_QUERY_WORDS: usize = 16;

/// The catalog, the tools offered from the start and the tools found so far.
#[derive(Debug)]
pub struct SearchableTools {
    catalog: Vec<ToolSpec>,
    /// Indices into `catalog`, offered from the start.
    preloaded: Vec<usize>,
    /// Indices into `catalog` found by searches, oldest first.
    loaded: Mutex<VecDeque<usize>>,
    /// How many found tools may be offered at once.
    room: usize,
}

impl SearchableTools {
    /// The search over `catalog` when it holds more than `max_offered` tools (else `None`:
    /// every tool is offered). `prompt` (the user's message) picks the first few offered.
    pub fn new(catalog: &[ToolSpec], max_offered: u32, prompt: &str) -> Option<Self> {
        let max = usize::try_from(max_offered).unwrap_or(usize::MAX).max(2);
        if catalog.len() <= max {
            return None;
        }
        // A tool of that name would be shadowed by the search: it is not searchable.
        let catalog: Vec<ToolSpec> = catalog
            .iter()
            .filter(|t| t.name != TOOL_SEARCH)
            .cloned()
            .collect();
        let preload = SEARCH_PRELOADED_TOOLS.min((max - 1) / 2);
        let mut preloaded = ranked(&catalog, prompt);
        preloaded.truncate(preload);
        Some(Self {
            room: max - 1 - preloaded.len(),
            catalog,
            preloaded,
            loaded: Mutex::new(VecDeque::new()),
        })
    }

    /// The spec of `tool_search` itself.
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: TOOL_SEARCH.to_string(),
            description: format!(
                "Find tools by what they do. This session may call {} tools; only a few are listed. Give words describing the tool you need; the best matches are returned and can be called from your next step.",
                self.catalog.len()
            ),
            parameters: serde_json::json!({
                "type": "object",
                "properties": {"query": {"type": "string", "description": "words describing the tool you need"}},
                "required": ["query"],
            }),
        }
    }

    /// Searches for `query`, loads what it found and answers the model: the found tools'
    /// names (as the model will see them offered) and descriptions.
    pub fn search(&self, query: &str) -> String {
        let mut found = ranked(&self.catalog, query);
        found.truncate(SEARCH_RESULTS.min(self.room));
        if let Ok(mut loaded) = self.loaded.lock() {
            for &i in &found {
                if self.preloaded.contains(&i) {
                    continue;
                }
                loaded.retain(|&l| l != i);
                loaded.push_back(i);
                while loaded.len() > self.room {
                    loaded.pop_front();
                }
            }
        }
        let names = ToolNames::new(&self.offered());
        let listed: Vec<serde_json::Value> = found
            .iter()
            .map(|&i| {
                let t = &self.catalog[i];
                serde_json::json!({"name": names.wire(&t.name), "description": t.description})
            })
            .collect();
        let note = if listed.is_empty() {
            "no tool this session may call matches; try other words".to_string()
        } else {
            "these tools can be called from your next step".to_string()
        };
        serde_json::json!({"found": listed, "note": note}).to_string()
    }

    /// Whether `name` is offered now.
    pub fn is_offered(&self, name: &str) -> bool {
        self.offered().iter().any(|t| t.name == name)
    }
}

impl ToolSet for SearchableTools {
    fn offered(&self) -> Vec<ToolSpec> {
        let mut tools = vec![self.spec()];
        tools.extend(self.preloaded.iter().map(|&i| self.catalog[i].clone()));
        if let Ok(loaded) = self.loaded.lock() {
            tools.extend(loaded.iter().map(|&i| self.catalog[i].clone()));
        }
        tools
    }
}

/// The runner of a turn with search: `tool_search` is answered from the catalog, every
/// other call goes to `inner` (the kernel).
#[allow(missing_debug_implementations)] // holds the kernel's runner, a trait object
pub struct SearchRunner<'a> {
    pub tools: &'a SearchableTools,
    pub inner: &'a dyn ToolRunner,
}

impl ToolRunner for SearchRunner<'_> {
    fn run<'a>(
        &'a self,
        call: &'a ToolCall,
        arguments: serde_json::Value,
    ) -> BoxFuture<'a, Result<String, String>> {
        if call.name != TOOL_SEARCH {
            return self.inner.run(call, arguments);
        }
        let answer = match arguments.get("query").and_then(serde_json::Value::as_str) {
            Some(query) => Ok(self.tools.search(query)),
            None => Err("error: tool_search takes {\"query\": \"words\"}".to_string()),
        };
        Box::pin(async move { answer })
    }
}

/// The distinct lowercase words (letters and digits) of `text`, at most
/// [`MAX_QUERY_WORDS`], from its first [`MAX_SEARCH_QUERY_BYTES`].
fn words(text: &str) -> Vec<String> {
    let mut end = text.len().min(MAX_SEARCH_QUERY_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: Vec<String> = Vec::new();
    for w in text[..end]
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 1)
        .map(str::to_lowercase)
    {
        if !out.contains(&w) && out.len() < MAX_QUERY_WORDS {
            out.push(w);
        }
    }
    out
}

/// The indices of the tools of `catalog` that match `query`, best first (ties in catalog
/// order): a word that is a word of the tool's name counts 3, one of three letters or more
/// inside its name 2, a word of its description 1.
fn ranked(catalog: &[ToolSpec], query: &str) -> Vec<usize> {
    let query = words(query);
    let mut scored: Vec<(u32, usize)> = catalog
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let name = t.name.to_lowercase();
            let name_words = words(&name);
            let description = words(&t.description);
            let score: u32 = query
                .iter()
                .map(|w| {
                    if name_words.contains(w) {
                        3
                    } else if w.len() >= 3 && name.contains(w.as_str()) {
                        2
                    } else if description.contains(w) {
                        1
                    } else {
                        0
                    }
                })
                .sum();
            (score > 0).then_some((score, i))
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(n: usize) -> Vec<ToolSpec> {
        (0..n)
            .map(|i| ToolSpec {
                name: format!("plugin{i}/tool"),
                description: format!("does thing number{i}"),
                parameters: serde_json::json!({"type": "object"}),
            })
            .chain([ToolSpec {
                name: "weather/forecast".into(),
                description: "the weather forecast for a city".into(),
                parameters: serde_json::json!({"type": "object"}),
            }])
            .collect()
    }

    fn names(tools: &[ToolSpec]) -> Vec<String> {
        tools.iter().map(|t| t.name.clone()).collect()
    }

    #[test]
    fn a_catalog_within_the_bound_is_offered_whole() {
        assert!(SearchableTools::new(&catalog(3), 4, "").is_none());
        assert!(SearchableTools::new(&catalog(4), 4, "").is_some());
    }

    #[test]
    fn search_offers_the_relevant_few_and_loads_what_it_finds_within_the_bound() {
        let all = catalog(40);
        let set = SearchableTools::new(&all, 8, "what is the weather in Paris").expect("search");
        // tool_search, and the tool the prompt names among the first few.
        let first = names(&set.offered());
        assert_eq!(first[0], TOOL_SEARCH);
        assert!(first.contains(&"weather/forecast".to_string()), "{first:?}");
        assert!(first.len() <= 8, "{first:?}");
        // A search finds by name and description, loads, and answers with wire names.
        let answer: serde_json::Value =
            serde_json::from_str(&set.search("number7 thing")).expect("JSON");
        assert_eq!(answer["found"][0]["name"], "plugin7_tool", "{answer}");
        assert!(set.is_offered("plugin7/tool"));
        // Never more than the bound, the tools found longest ago leaving first.
        for i in 10..30 {
            set.search(&format!("number{i}"));
            assert!(set.offered().len() <= 8);
        }
        assert!(!set.is_offered("plugin7/tool"));
        assert!(set.is_offered("plugin29/tool"));
        // Nothing outside the catalog is ever found.
        let none: serde_json::Value =
            serde_json::from_str(&set.search("shell exec rm")).expect("JSON");
        assert_eq!(none["found"], serde_json::json!([]), "{none}");
    }
}
