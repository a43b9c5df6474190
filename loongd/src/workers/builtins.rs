//! The built-in tools as registry entries: `file.read`, `file.write`, `file.edit` and
//! `shell.exec`, each run by its own `loong-worker-builtin` whose sandbox grants exactly the
//! paths `[builtins]` names. A tool with nothing granted is not offered at all (the operator
//! has not enabled it); one whose granted path is missing is listed as failed with the reason,
//! and nothing is started for it.

use std::{path::PathBuf, sync::Arc};

use loong_ipc::{BuiltinSpec, HttpSpec};
use loong_profiles::plugin::Catalog;

use super::{
    plugins::{Plugin, State},
    LoadInfo, Loadable, Wire, WorkerKind,
};
use crate::config::BuiltinsConfig;

/// `bridge_kind` of a built-in tool.
pub const BUILTIN: &str = "builtin";

struct Def {
    tool: &'static str,
    summary: &'static str,
    tags: &'static [&'static str],
    example: &'static str,
}

/// The built-in that runs a `programmatic_tool_call` plan in a restricted plan worker.
pub const PROGRAMMATIC_TOOL_CALL: &str = "programmatic_tool_call";
/// What the plan worker declares: the capability the kernel-call path checks
/// (`effects::chain::INVOKE_TOOL`, spelt here because the supervisor does not name the
/// effect path; `tests/all/plans.rs` shows nested calls pass with it).
const PLAN_CAPABILITY: &str = "invoke_tool";

const DEFS: [Def; 6] = [
    Def {
        tool: "file.read",
        summary: "Read a UTF-8 text file under the granted read roots",
        tags: &["file", "read", "fs", "builtin"],
        example: r#"{"path": "/srv/data/notes.txt"}"#,
    },
    Def {
        tool: "file.write",
        summary: "Write a text file under the granted write roots",
        tags: &["file", "write", "fs", "builtin"],
        example: r#"{"path": "/srv/data/out.txt", "content": "text"}"#,
    },
    Def {
        tool: "file.edit",
        summary: "Replace text in a file under the granted write roots (one match unless all)",
        tags: &["file", "edit", "fs", "builtin"],
        example: r#"{"path": "/srv/data/out.txt", "old": "before", "new": "after"}"#,
    },
    Def {
        tool: "shell.exec",
        summary: "Run a shell command in the granted workspace (output capped, timed out)",
        tags: &["shell", "exec", "command", "builtin"],
        example: r#"{"command": "ls -l"}"#,
    },
    Def {
        tool: "web.fetch",
        summary: "Fetch an http:// URL (GET; redirects answered, not followed; size capped)",
        tags: &["web", "fetch", "http", "url", "builtin"],
        example: r#"{"url": "http://example.com/"}"#,
    },
    Def {
        tool: PROGRAMMATIC_TOOL_CALL,
        summary: "Run a plan of tool calls (steps, batches, conditionals, retries, rate limits, breakers), each call decided and audited as a nested call",
        tags: &["plan", "programmatic", "batch", "orchestration", "builtin"],
        example: r#"{"caller": "me", "steps": [{"id": "a", "type": "set_literal", "value": 1}]}"#,
    },
];

/// The built-in tools `cfg` grants something to.
pub(crate) fn entries(cfg: &BuiltinsConfig) -> Vec<Plugin> {
    DEFS.iter().filter_map(|d| entry(d, cfg)).collect()
}

fn entry(d: &Def, cfg: &BuiltinsConfig) -> Option<Plugin> {
    if d.tool == "web.fetch" {
        return cfg.fetch.then(|| fetch_entry(d, cfg));
    }
    if d.tool == PROGRAMMATIC_TOOL_CALL {
        return cfg.plans.then(|| plan_entry(d, cfg));
    }
    let readable: Vec<PathBuf> = cfg
        .read_roots
        .iter()
        .chain(&cfg.write_roots)
        .cloned()
        .collect();
    let net: Vec<loong_sandbox::NetGrant> = cfg
        .shell_net
        .iter()
        .filter_map(|g| g.parse().ok())
        .collect();
    let (roots, kind) = match d.tool {
        "file.read" => (
            readable.clone(),
            WorkerKind::builtin(readable, Vec::new(), Vec::new()),
        ),
        "shell.exec" => {
            let ws: Vec<PathBuf> = cfg.workspace.iter().cloned().collect();
            let kind = WorkerKind {
                net_owner: Some(d.tool.to_string()),
                ..WorkerKind::builtin(Vec::new(), ws.clone(), net)
            };
            (ws, kind)
        }
        _ => (
            cfg.write_roots.clone(),
            WorkerKind::builtin(Vec::new(), cfg.write_roots.clone(), Vec::new()),
        ),
    };
    if roots.is_empty() {
        return None;
    }
    let state = if let Some(missing) = roots.iter().find(|r| !r.is_dir()) {
        State::Failed(format!(
            "[builtins] grants {}, which is not a directory; create it or change loongd.toml",
            missing.display()
        ))
    } else {
        State::Ready {
            plugin: Loadable {
                id: d.tool.to_string(),
                wire: Arc::new(Wire::Builtin(BuiltinSpec {
                    tool: d.tool.to_string(),
                    // Resolved as loongd resolves a call's path (the sandbox binds a root at
                    // its real path; the worker opens it without following symlinks).
                    roots: roots
                        .iter()
                        .map(|r| std::fs::canonicalize(r).unwrap_or_else(|_| r.clone()))
                        .map(|r| r.display().to_string())
                        .collect(),
                    timeout_ms: cfg.timeout_ms,
                    max_output_bytes: cfg.max_output_bytes,
                })),
                generation: super::plugins::next_generation(),
            },
            kind: Some(Box::new(kind)),
            info: LoadInfo::default(),
            pool: None,
        }
    };
    Some(described(d, state))
}

fn described(d: &Def, state: State) -> Plugin {
    Plugin {
        id: d.tool.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        summary: d.summary.to_string(),
        dir: PathBuf::new(),
        bridge_kind: BUILTIN,
        trust: loong_profiles::plugin::TrustTier::Official,
        signer: None,
        lock_digest: None,
        capabilities: Vec::new(),
        catalog: Catalog {
            tags: d.tags.iter().map(|t| t.to_string()).collect(),
            input_examples: vec![d.example.to_string()],
            ..Catalog::default()
        },
        state,
    }
}

/// `web.fetch`: an HTTP worker with no network; loongd resolves, checks and connects each
/// call's URL and hands it the socket.
fn fetch_entry(d: &Def, cfg: &BuiltinsConfig) -> Plugin {
    let spec = HttpSpec {
        plugin_id: d.tool.to_string(),
        host: String::new(),
        path: String::new(),
        timeout_ms: cfg.timeout_ms,
        max_output_bytes: cfg.max_output_bytes,
        required_keys: None,
        allow_other_keys: true,
        fetch: true,
    };
    let state = State::Ready {
        plugin: Loadable {
            id: d.tool.to_string(),
            wire: Arc::new(Wire::Http {
                spec,
                addrs: Vec::new(),
                fetch_allow_private: cfg.fetch_allow_private,
            }),
            generation: super::plugins::next_generation(),
        },
        kind: Some(Box::new(WorkerKind::http())),
        info: LoadInfo::default(),
        pool: None,
    };
    described(d, state)
}

/// `programmatic_tool_call`: offered when `[builtins] plans = true` (it needs no grant). Its restricted worker holds
/// no authority; it declares `invoke_tool`, so each connector call it makes is a kernel call
/// decided under the root call's authority (`effects::chain`), and audited with the chain.
fn plan_entry(d: &Def, cfg: &BuiltinsConfig) -> Plugin {
    let state = State::Ready {
        plugin: Loadable {
            id: d.tool.to_string(),
            wire: Arc::new(Wire::Builtin(BuiltinSpec {
                tool: d.tool.to_string(),
                roots: Vec::new(),
                timeout_ms: cfg.timeout_ms,
                max_output_bytes: cfg.max_output_bytes,
            })),
            generation: super::plugins::next_generation(),
        },
        kind: Some(Box::new(WorkerKind::plan())),
        info: LoadInfo::default(),
        pool: None,
    };
    let mut plugin = described(d, state);
    plugin.capabilities = vec![PLAN_CAPABILITY.to_string()];
    plugin
}

#[cfg(test)]
mod tests {
    /// The names a plugin id may not take (checked by the manifest parser, which loongd and
    /// `loongctl plugins doctor` share) are exactly the built-in tools.
    #[test]
    fn the_shared_list_of_built_in_names_is_the_built_in_tools() {
        let tools: Vec<&str> = super::DEFS.iter().map(|d| d.tool).collect();
        assert_eq!(tools, loong_ipc::package::BUILTIN_TOOLS);
    }
}
