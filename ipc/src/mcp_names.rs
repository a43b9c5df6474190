//! Loong's tool names made valid MCP names (`^[a-zA-Z0-9_-]{1,64}$`), unique and
//! reversible through the table [`assign`] returns.
//!
//! Each character is kept if it is an ASCII letter, digit, `_` or `-`; `.` becomes `__`,
//! `/` becomes `--`, and any other character `_`. A name longer than
//! [`MAX_MCP_NAME_CHARS`] is cut. A name given earlier in the session keeps it, and is
//! never given to another tool (a client that learnt it calls that tool or none, whatever
//! a later listing holds). The others are named in turn: loongd's built-in tools first
//! (a plugin named `file__read` cannot take the name of `file.read`), then the names that
//! are valid already (they keep themselves), then the rest, each group in sorted order;
//! one whose escaped name is taken gets the first free suffix `_2`, `_3`, … (cut to fit).
//! The way back is the table, never a guess from the text.

use std::collections::{BTreeMap, BTreeSet};

/// The longest MCP tool name.
pub const MAX_MCP_NAME_CHARS: usize = 64;

/// The MCP progress message of a call waiting for approval `id` (`mcp serve` and the
/// gateway's `/mcp` report the same, to a client that sent a `progressToken`).
pub fn approval_progress(id: &str) -> String {
    format!("waiting for approval {id}: an operator approves it with `loongctl approvals approve {id}` (or denies it); the call is answered then")
}

/// `name` escaped, before uniqueness.
pub fn escape(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => out.push(c),
            '.' => out.push_str("__"),
            '/' => out.push_str("--"),
            _ => out.push('_'),
        }
    }
    if out.is_empty() {
        out.push('_');
    }
    out.chars().take(MAX_MCP_NAME_CHARS).collect()
}

/// The bridge kind of loongd's built-in tools (named first, see [`assign`]).
pub const BUILTIN_BRIDGE: &str = "builtin";

/// One MCP session's names: every name given in it, and the last listing's.
#[derive(Debug, Default, Clone)]
pub struct SessionNames {
    /// MCP name → Loong name, every name given in this session: a name once given is never
    /// given to another tool, whatever a later listing holds.
    pub given: BTreeMap<String, String>,
    /// MCP name → (Loong name, bridge kind), from the last listing.
    pub offered: BTreeMap<String, (String, String)>,
}

impl SessionNames {
    /// Names a new listing (each tool's Loong name and bridge kind), keeping every name
    /// given before; Loong name → MCP name.
    pub fn list<'a>(
        &mut self,
        tools: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    ) -> BTreeMap<String, String> {
        let named = assign(
            tools
                .clone()
                .into_iter()
                .map(|(name, kind)| (name, kind == BUILTIN_BRIDGE)),
            &self.given,
        );
        self.offered = tools
            .into_iter()
            .filter_map(|(name, kind)| {
                let mcp = named.get(name)?;
                Some((mcp.clone(), (name.to_string(), kind.to_string())))
            })
            .collect();
        for (loong, mcp) in &named {
            self.given.insert(mcp.clone(), loong.clone());
        }
        named
    }
}

/// Each of `loong` (a name and whether it is a built-in tool; duplicates once) → its
/// unique MCP name, given the names `given` earlier in the session (MCP name → Loong
/// name), none of which goes to another tool.
pub fn assign<'a>(
    loong: impl IntoIterator<Item = (&'a str, bool)>,
    given: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let before: BTreeMap<&str, &str> = given
        .iter()
        .map(|(mcp, l)| (l.as_str(), mcp.as_str()))
        .collect();
    let mut taken: BTreeSet<String> = given.keys().cloned().collect();
    let mut out = BTreeMap::new();
    // Group 0: named before; 1: built-ins; 2: valid already; 3: the rest.
    let mut order: BTreeSet<(u8, &str)> = BTreeSet::new();
    for (name, builtin) in loong {
        let group = if before.contains_key(name) {
            0
        } else if builtin {
            1
        } else if escape(name) == name {
            2
        } else {
            3
        };
        order.insert((group, name));
    }
    for (group, name) in order {
        if out.contains_key(name) {
            continue;
        }
        if group == 0 {
            if let Some(mcp) = before.get(name) {
                out.insert(name.to_string(), (*mcp).to_string());
            }
            continue;
        }
        let base = escape(name);
        let mut candidate = base.clone();
        let mut n = 2u32;
        while taken.contains(&candidate) {
            let suffix = format!("_{n}");
            let keep = MAX_MCP_NAME_CHARS - suffix.len();
            candidate = format!("{}{suffix}", base.chars().take(keep).collect::<String>());
            n += 1;
        }
        taken.insert(candidate.clone());
        out.insert(name.to_string(), candidate);
    }
    out
}
