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
use loong_agent_wire::{config::Settings, wire::AGENT_TOOL};

/// `bridge_kind` of a built-in tool.
pub const BUILTIN: &str = "builtin";

struct Def {
    tool: &'static str,
    summary: &'static str,
    tags: &'static [&'static str],
    example: &'static str,
    /// The JSON schema of its input, offered to a model and to MCP clients (fixed: the
    /// built-in's own code reads exactly these fields; a unit test checks each is accepted by
    /// `loong_ipc::schema::check_input_schema`).
    input_schema: &'static str,
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
        input_schema: r#"{"type": "object", "properties": {"path": {"type": "string", "description": "an absolute path under a granted read root"}, "max_bytes": {"type": "integer", "minimum": 1, "description": "read at most this many bytes"}}, "required": ["path"]}"#,
    },
    Def {
        tool: "file.write",
        summary: "Write a text file under the granted write roots",
        tags: &["file", "write", "fs", "builtin"],
        example: r#"{"path": "/srv/data/out.txt", "content": "text"}"#,
        input_schema: r#"{"type": "object", "properties": {"path": {"type": "string", "description": "an absolute path under a granted write root"}, "content": {"type": "string", "description": "the text to write"}}, "required": ["path", "content"]}"#,
    },
    Def {
        tool: "file.edit",
        summary: "Replace text in a file under the granted write roots (one match unless all)",
        tags: &["file", "edit", "fs", "builtin"],
        example: r#"{"path": "/srv/data/out.txt", "old": "before", "new": "after"}"#,
        input_schema: r#"{"type": "object", "properties": {"path": {"type": "string", "description": "an absolute path under a granted write root"}, "old": {"type": "string", "description": "the text to replace"}, "new": {"type": "string", "description": "its replacement"}, "all": {"type": "boolean", "description": "replace every match (default: exactly one must match)"}}, "required": ["path", "old", "new"]}"#,
    },
    Def {
        tool: "shell.exec",
        summary: "Run a shell command in the granted workspace (output capped, timed out)",
        tags: &["shell", "exec", "command", "builtin"],
        example: r#"{"command": "ls -l"}"#,
        input_schema: r#"{"type": "object", "properties": {"command": {"type": "string", "description": "a shell command line, run by sh -c in the granted workspace"}}, "required": ["command"]}"#,
    },
    Def {
        tool: "web.fetch",
        summary: "Fetch an http:// URL (GET; redirects answered, not followed; size capped)",
        tags: &["web", "fetch", "http", "url", "builtin"],
        example: r#"{"url": "http://example.com/"}"#,
        input_schema: r#"{"type": "object", "properties": {"url": {"type": "string", "description": "an http:// URL"}}, "required": ["url"]}"#,
    },
    Def {
        tool: PROGRAMMATIC_TOOL_CALL,
        summary: "Run a plan of tool calls (steps, batches, conditionals, retries, rate limits, breakers), each call decided and audited as a nested call",
        tags: &["plan", "programmatic", "batch", "orchestration", "builtin"],
        example: r#"{"caller": "me", "steps": [{"id": "a", "type": "set_literal", "value": 1}]}"#,
        input_schema: r#"{"type": "object", "properties": {"caller": {"type": "string", "description": "who runs the plan"}, "steps": {"type": "array", "items": {"type": "object"}, "description": "the plan's steps (docs/programmatic.md)"}}, "required": ["caller", "steps"]}"#,
    },
];

/// The built-in tools `cfg` grants something to, and the agent's turn when `[agent]` is
/// configured.
pub(crate) fn entries(cfg: &BuiltinsConfig, agent: &Settings) -> Vec<Plugin> {
    let mut all: Vec<Plugin> = DEFS.iter().filter_map(|d| entry(d, cfg)).collect();
    all.extend(agent_entry(agent));
    all
}

/// The agent's turn (`agent.turn`): never offered to a model nor callable by `invoke` or a
/// kernel call, only by `loongctl ask` (`control::agent_api`). Its worker declares
/// `invoke_tool`, so each tool call the model makes is a kernel call decided under the
/// session's token.
fn agent_entry(settings: &Settings) -> Option<Plugin> {
    let agent = settings.agent.as_ref()?;
    let names = std::iter::once(&agent.provider).chain(agent.fallback.as_ref());
    let mut net = Vec::new();
    for name in names {
        let grant = settings
            .providers
            .get(name)
            .and_then(|p| provider_grant(&p.base_url));
        match grant {
            Some(g) => net.push(g),
            None => {
                let mut failed = described(
                    &AGENT_DEF,
                    State::Failed(format!(
                        "[providers.{name}] base_url names no HOST:PORT the agent can be granted; give an http:// or https:// URL"
                    )),
                );
                failed.capabilities = Vec::new();
                return Some(failed);
            }
        }
    }
    let state = State::Ready {
        plugin: Loadable {
            id: AGENT_TOOL.to_string(),
            wire: Arc::new(Wire::Builtin(BuiltinSpec {
                tool: AGENT_TOOL.to_string(),
                roots: Vec::new(),
                timeout_ms: u64::try_from(agent.turn_budget.as_millis()).unwrap_or(u64::MAX),
                max_output_bytes: AGENT_MAX_OUTPUT_BYTES,
            })),
            generation: super::plugins::next_generation(),
        },
        kind: Some(Box::new(WorkerKind::agent(net))),
        info: LoadInfo::default(),
        pool: None,
    };
    let mut plugin = described(&AGENT_DEF, state);
    plugin.capabilities = vec![PLAN_CAPABILITY.to_string()];
    Some(plugin)
}

const BROWSER_DEFS: [Def; 7] = [
    Def {
        tool: "browser.open",
        summary: "Open an http(s) URL in a sandboxed headless Chromium (decided as browser.control on HOST:PORT; the page reaches that host only); answers the session, URL, title and status",
        tags: &["browser", "web", "open", "navigate", "chromium", "builtin"],
        example: r#"{"url": "https://docs.example.test/"}"#,
        input_schema: r#"{"type": "object", "properties": {"url": {"type": "string", "description": "an http:// or https:// URL"}}, "required": ["url"]}"#,
    },
    Def {
        tool: "browser.extract",
        summary: "The rendered text, links and title of a browser session's page (JavaScript-rendered content included), or of one element; bounded",
        tags: &["browser", "web", "extract", "scrape", "text", "links", "builtin"],
        example: r#"{"session": "b1-1700000000000", "selector": "main"}"#,
        input_schema: r#"{"type": "object", "properties": {"session": {"type": "string", "description": "the id browser.open answered"}, "selector": {"type": "string", "description": "a CSS selector (default: the whole page)"}}, "required": ["session"]}"#,
    },
    Def {
        tool: "browser.click",
        summary: "Click the first element a CSS selector matches in a browser session's page",
        tags: &["browser", "web", "click", "builtin"],
        example: r#"{"session": "b1-1700000000000", "selector": "button[type=submit]"}"#,
        input_schema: r#"{"type": "object", "properties": {"session": {"type": "string", "description": "the id browser.open answered"}, "selector": {"type": "string", "description": "a CSS selector"}}, "required": ["session", "selector"]}"#,
    },
    Def {
        tool: "browser.type",
        summary: "Type text into the first element a CSS selector matches in a browser session's page",
        tags: &["browser", "web", "type", "form", "input", "builtin"],
        example: r#"{"session": "b1-1700000000000", "selector": "input[name=q]", "text": "loong"}"#,
        input_schema: r#"{"type": "object", "properties": {"session": {"type": "string", "description": "the id browser.open answered"}, "selector": {"type": "string", "description": "a CSS selector"}, "text": {"type": "string", "description": "the text to type"}}, "required": ["session", "selector", "text"]}"#,
    },
    Def {
        tool: "browser.wait",
        summary: "Wait until a CSS selector matches (or the page has loaded: \"load\") in a browser session, at most timeout_ms",
        tags: &["browser", "web", "wait", "builtin"],
        example: r##"{"session": "b1-1700000000000", "selector": "#results", "timeout_ms": 5000}"##,
        input_schema: r#"{"type": "object", "properties": {"session": {"type": "string", "description": "the id browser.open answered"}, "selector": {"type": "string", "description": "a CSS selector, or \"load\""}, "timeout_ms": {"type": "integer", "minimum": 1, "description": "how long to wait at most"}}, "required": ["session", "selector"]}"#,
    },
    Def {
        tool: "browser.screenshot",
        summary: "A PNG (base64) of a browser session's viewport, or of the whole page",
        tags: &["browser", "web", "screenshot", "png", "image", "builtin"],
        example: r#"{"session": "b1-1700000000000", "full_page": false}"#,
        input_schema: r#"{"type": "object", "properties": {"session": {"type": "string", "description": "the id browser.open answered"}, "full_page": {"type": "boolean", "description": "the whole page, not only the viewport"}}, "required": ["session"]}"#,
    },
    Def {
        tool: "browser.close",
        summary: "Close a browser session (its Chromium and profile are destroyed)",
        tags: &["browser", "web", "close", "builtin"],
        example: r#"{"session": "b1-1700000000000"}"#,
        input_schema: r#"{"type": "object", "properties": {"session": {"type": "string", "description": "the id browser.open answered"}}, "required": ["session"]}"#,
    },
];

/// The browser tools, when `[browser] enabled`: listed and searched like every tool, each
/// call routed to its session (`super::browser`), never to the pool named here.
pub(crate) fn browser_entries(cfg: &crate::config::BrowserConfig) -> Vec<Plugin> {
    if !cfg.enabled {
        return Vec::new();
    }
    let chromium = super::browser::find_chromium(cfg.chromium.as_ref());
    BROWSER_DEFS
        .iter()
        .map(|d| {
            let state = match &chromium {
                Some(p) if p.is_file() => State::Ready {
                    plugin: Loadable {
                        id: d.tool.to_string(),
                        wire: Arc::new(Wire::Builtin(BuiltinSpec {
                            tool: super::browser::WORKER_TOOL.to_string(),
                            roots: vec![p.display().to_string()],
                            timeout_ms: super::browser::CALL_TIMEOUT_MS,
                            max_output_bytes: super::browser::MAX_OUTPUT_BYTES,
                        })),
                        generation: super::plugins::next_generation(),
                    },
                    // Sessions run in pools of their own; none is started for the entry.
                    kind: None,
                    info: LoadInfo::default(),
                    pool: None,
                },
                Some(p) => State::Failed(format!(
                    "[browser] chromium = {} is not a file; install Chromium (apt-get install chromium) or fix loongd.toml",
                    p.display()
                )),
                None => State::Failed(format!(
                    "[browser] enabled, but none of {} is on PATH; install Chromium (apt-get install chromium) or set [browser] chromium",
                    super::browser::CHROMIUM_NAMES.join(", ")
                )),
            };
            let mut p = described(d, state);
            p.catalog.defer_loading = true;
            p
        })
        .collect()
}

/// The most a turn's answer may hold (its text, tool calls and the messages it added).
pub const AGENT_MAX_OUTPUT_BYTES: u64 = 4 * 1024 * 1024;

const AGENT_DEF: Def = Def {
    tool: AGENT_TOOL,
    summary: "One conversation turn of the agent (loongctl ask); its tool calls are kernel calls under the session's token",
    tags: &["agent", "builtin"],
    example: "{}",
        input_schema: r#"{"type": "object"}"#,
};

/// The `HOST:PORT` a provider's `base_url` names (80 for http, 443 for https by default).
pub(crate) fn provider_grant(base_url: &str) -> Option<loong_sandbox::NetGrant> {
    let (rest, default_port) = if let Some(r) = base_url.strip_prefix("https://") {
        (r, 443)
    } else {
        (base_url.strip_prefix("http://")?, 80)
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.contains('@') {
        return None;
    }
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.matches(':').count() == 1,
    };
    let text = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    text.parse().ok()
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
            input_schema: Some(d.input_schema.to_string()),
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
        tls: false,
        server_name: String::new(),
        trust: Vec::new(),
    };
    let state = State::Ready {
        plugin: Loadable {
            id: d.tool.to_string(),
            wire: Arc::new(Wire::Http {
                spec,
                addrs: Vec::new(),
                fetch_allow_private: cfg.fetch_allow_private,
                headers: Vec::new(),
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
    /// Each built-in's fixed input schema is one the schema check accepts, and its example
    /// gives every field the schema requires (so the schema says what the tool reads).
    #[test]
    fn each_builtins_input_schema_is_valid_and_matches_its_example() {
        for d in super::DEFS.iter().chain([&super::AGENT_DEF]) {
            let schema = loong_ipc::schema::parse_input_schema(d.input_schema)
                .unwrap_or_else(|e| panic!("{}: {e}", d.tool));
            let example: serde_json::Value =
                serde_json::from_str(d.example).expect("an example is JSON");
            for field in schema["required"].as_array().into_iter().flatten() {
                let field = field.as_str().expect("a field name");
                assert!(example.get(field).is_some(), "{}: {field}", d.tool);
                assert!(
                    schema["properties"].get(field).is_some(),
                    "{}: {field} is required but not described",
                    d.tool
                );
            }
        }
    }

    /// A provider's grant is its URL's `HOST:PORT`, the scheme's port when none is given;
    /// a URL with credentials or without a host names none.
    #[test]
    fn a_providers_grant_is_the_host_and_port_of_its_base_url() {
        let grant = |u: &str| super::provider_grant(u).map(|g| g.to_string());
        assert_eq!(
            grant("https://api.anthropic.com").as_deref(),
            Some("api.anthropic.com:443")
        );
        assert_eq!(
            grant("http://127.0.0.1:8080/v1").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(grant("http://[::1]:9/v1").as_deref(), Some("[::1]:9"));
        assert_eq!(grant("http://[::1]/v1").as_deref(), Some("[::1]:80"));
        assert_eq!(grant("https://user:pw@evil.example/v1"), None);
        assert_eq!(grant("ftp://example.com"), None);
        assert_eq!(grant("http:///v1"), None);
    }

    /// The names a plugin id may not take (checked by the manifest parser, which loongd and
    /// `loongctl plugins doctor` share) are exactly the built-in tools.
    #[test]
    fn the_shared_list_of_built_in_names_is_the_built_in_tools() {
        let tools: Vec<&str> = super::DEFS
            .iter()
            .chain(&super::BROWSER_DEFS)
            .map(|d| d.tool)
            .collect();
        assert_eq!(tools, loong_ipc::package::BUILTIN_TOOLS);
        let browser: Vec<&str> = super::BROWSER_DEFS.iter().map(|d| d.tool).collect();
        assert_eq!(browser, super::super::browser::TOOLS);
    }
}
