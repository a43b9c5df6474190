//! Plugin manifests: public Loong's `loong.plugin.json` shape, with the `sandbox` block that
//! says how the plugin runs here. loongd reads them (it never compiles a module: the worker
//! does); only the `wasm` bridge is runnable so far.
//!
//! Unknown top-level fields are refused (as public Loong refuses them); public Loong's other
//! top-level fields are accepted and ignored. The module path (`metadata.component`) is
//! relative to the manifest and may not leave the plugin's directory, symlinks included.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use loong_ipc::package::BridgeKind;
use serde::Deserialize;

mod endpoint;
pub use endpoint::{parse_endpoint, Endpoint, EndpointError, MAX_ENDPOINT_BYTES};
pub mod headers;
mod package;
mod source;
mod wasm;
pub use package::{check_package, find_manifest, read_package_file};
use package::{open_package_dir, read_beneath, read_beneath_capped};
pub use source::{
    block as embedded_block, holds_manifest, ManifestSource, END_MARKER, IDENTITY_FIELDS,
    MAX_SOURCE_DEPTH, MAX_SOURCE_FILES, MAX_SOURCE_FILE_BYTES, OPENCLAW_MANIFEST_FILE,
    SKIPPED_DIRS, START_MARKER,
};
use wasm::{guest_config, guest_input, module_pin};
pub use wasm::{
    normalize_sha256_pin, CHANNEL_CONFIG_PREFIX, COMPONENT_SHA256_FIELD,
    COMPONENT_SHA256_HEX_FIELD, COMPONENT_SHA256_PIN_FIELD, INPUT_BARE, INPUT_ENVELOPE,
    PROVIDER_CONFIG_PREFIX, SANDBOX_SHA256_FIELD,
};

/// The only manifest API version understood.
pub const MANIFEST_API_VERSION: &str = "v1alpha1";
/// The manifest's file name inside a plugin directory.
pub const MANIFEST_FILE: &str = "loong.plugin.json";
/// Largest manifest read.
pub const MAX_MANIFEST_BYTES: u64 = 256 * 1024;
/// Longest plugin id.
pub const MAX_PLUGIN_ID_LEN: usize = 64;
/// Longest config key the guest may be allowed to read.
pub const MAX_CONFIG_KEY_BYTES: usize = 1024;
/// The largest module a manifest may declare (what one worker frame carries).
pub const MAX_MODULE_BYTES: u64 = 15 * 1024 * 1024;
/// Defaults of the `sandbox` block, as public Loong documents them.
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 256 * 1024;
pub const DEFAULT_MAX_MODULE_BYTES: u64 = 2 * 1024 * 1024;

/// A problem with one manifest; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: over {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Field {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
    #[error("{path}: {} problems:\n  - {}", .problems.len(), .problems.join("\n  - "))]
    Problems {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("{dir}: no {MANIFEST_FILE}, and no file in it holds a manifest between {START_MARKER} and {END_MARKER} comment lines; write a {MANIFEST_FILE}")]
    NoManifest { dir: PathBuf },
    #[error("{dir}: {} source files hold a manifest ({}); a package is one plugin: keep one block, or write a {MANIFEST_FILE}", .files.len(), .files.join(", "))]
    SeveralEmbedded { dir: PathBuf, files: Vec<String> },
    #[error("{dir}: over {limit} files to search for a manifest; write a {MANIFEST_FILE}, or make the package smaller")]
    TooManyFiles { dir: PathBuf, limit: usize },
    #[error("{dir}: over {limit} files and directories to search for a manifest; make the package smaller")]
    TooManyEntries { dir: PathBuf, limit: usize },
    #[error("{path}: a package may hold only regular files and directories (no symlinks, mount points or special files)")]
    NotRegular { path: PathBuf },
    #[error("{path}: {field} differs from the embedded manifest in {source_file}; make the two agree, or remove the marker block")]
    Conflict {
        path: PathBuf,
        source_file: PathBuf,
        field: &'static str,
    },
    #[error("{path}: {what}; give the package a {MANIFEST_FILE} that runs it here (bridge_kind process_stdio or mcp_stdio with a metadata.command, or a wasm module)")]
    OpenClaw { path: PathBuf, what: String },
}

impl ManifestError {
    /// Each problem on a line of its own, the file named first (what `plugins doctor` lists).
    pub fn lines(&self) -> Vec<String> {
        match self {
            ManifestError::Problems { path, problems } => problems
                .iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

pub use loong_ipc::package::{SANDBOX_FIELDS, TOP_LEVEL_FIELDS};

/// The semantic problems of one manifest, gathered in one pass so that an author sees all of
/// them at once: one is reported as that field's error, several as a list.
struct Findings<'a> {
    path: &'a Path,
    found: Vec<(&'static str, String)>,
}

impl<'a> Findings<'a> {
    fn new(path: &'a Path) -> Self {
        Findings {
            path,
            found: Vec::new(),
        }
    }

    fn add(&mut self, field: &'static str, message: String) {
        self.found.push((field, message));
    }

    /// The one tier a bridge runs in (the default when none is named); `who` names the bridge.
    fn tier(&mut self, raw: &RawManifest, only: &str, who: &str) {
        let tier = raw.sandbox.tier.as_deref().unwrap_or(only);
        if tier != only {
            self.add(
                "sandbox.tier",
                format!("{tier:?}: {who} run in the {only} tier"),
            );
        }
    }

    /// `r`'s value, or `None` with its error noted.
    fn take<T, E: std::fmt::Display>(&mut self, field: &'static str, r: Result<T, E>) -> Option<T> {
        r.map_err(|m| self.add(field, m.to_string())).ok()
    }

    /// Every problem found, when the parse cannot go on after one.
    fn stop(self) -> ManifestError {
        let path = self.path.to_owned();
        self.finish(()).err().unwrap_or(ManifestError::Parse {
            path,
            message: "the manifest cannot be read further".into(),
        })
    }

    /// `value` when nothing was found, else every problem.
    fn finish<T>(self, value: T) -> Result<T, ManifestError> {
        let path = self.path.to_owned();
        let mut found = self.found;
        match found.len() {
            0 => Ok(value),
            1 => {
                let (field, message) = found.remove(0);
                Err(ManifestError::Field {
                    path,
                    field,
                    message,
                })
            }
            _ => Err(ManifestError::Problems {
                path,
                problems: found
                    .into_iter()
                    .map(|(f, m)| format!("{f}: {m}"))
                    .collect(),
            }),
        }
    }
}

/// Every structural problem of a manifest at once: unknown fields (top level and `sandbox`),
/// missing required ones, and values of the wrong JSON type, before the typed parse (which
/// stops at its first).
fn structural_problems(v: &serde_json::Value) -> Vec<String> {
    let Some(obj) = v.as_object() else {
        return vec!["the manifest must be a JSON object".into()];
    };
    let mut out = Vec::new();
    for k in obj
        .keys()
        .filter(|k| !TOP_LEVEL_FIELDS.contains(&k.as_str()))
    {
        out.push(format!("unknown field {k:?}"));
    }
    for k in ["api_version", "plugin_id", "version"] {
        match obj.get(k) {
            None => out.push(format!("{k} is missing")),
            Some(serde_json::Value::String(_)) => {}
            Some(_) => out.push(format!("{k} must be a string")),
        }
    }
    for k in IDENTITY_FIELDS.iter().filter(|k| **k != "plugin_id") {
        if obj.get(*k).is_some_and(|v| !v.is_string() && !v.is_null()) {
            out.push(format!("{k} must be a string"));
        }
    }
    match obj.get("metadata") {
        None => out.push("metadata is missing (it names the bridge_kind)".into()),
        Some(serde_json::Value::Object(m)) => {
            for (k, v) in m {
                if !v.is_string() {
                    out.push(format!("metadata.{k} must be a string"));
                }
            }
        }
        Some(_) => out.push("metadata must be an object of strings".into()),
    }
    match obj.get("sandbox") {
        None => {}
        Some(serde_json::Value::Object(sb)) => {
            for k in sb.keys().filter(|k| !SANDBOX_FIELDS.contains(&k.as_str())) {
                out.push(format!("unknown field sandbox.{k}"));
            }
        }
        Some(_) => out.push("sandbox must be an object".into()),
    }
    out
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // public Loong's fields, accepted so its manifests load
struct RawManifest {
    api_version: String,
    plugin_id: String,
    version: String,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    sandbox: RawSandbox,
    provider_id: Option<String>,
    connector_name: Option<String>,
    channel_id: Option<String>,
    endpoint: Option<String>,
    trust_tier: Option<serde_json::Value>,
    tags: Option<serde_json::Value>,
    input_examples: Option<serde_json::Value>,
    output_examples: Option<serde_json::Value>,
    defer_loading: Option<serde_json::Value>,
    setup: Option<serde_json::Value>,
    slot_claims: Option<serde_json::Value>,
    compatibility: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    tier: Option<String>,
    timeout_ms: Option<u64>,
    max_memory_bytes: Option<u64>,
    max_output_bytes: Option<u64>,
    max_module_bytes: Option<u64>,
    fuel: Option<u64>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    guest_readable_config_keys: Vec<String>,
    sha256: Option<String>,
    #[serde(default)]
    allow_wasi: bool,
    #[serde(default)]
    blocked_import_prefixes: Vec<String>,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    net: Vec<String>,
    max_line_bytes: Option<u64>,
    #[serde(default)]
    allow_private_network: bool,
    input: Option<String>,
    egress: Option<EgressLimits>,
}

/// `sandbox.egress`: the plugin's own limits on what its worker moves through loongd's egress
/// broker. They may only tighten loongd's `[egress]` values: a larger one is clamped to
/// loongd's (and said so by loongd when it loads the plugin).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressLimits {
    /// Connections open at once.
    pub max_connections: Option<u64>,
    /// Bytes over the worker's life (and across its restarts within loongd's window), both
    /// ways.
    pub max_bytes: Option<u64>,
}

/// How a foreign program is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignKind {
    /// `process_stdio`: JSON lines, `{method, id, payload, version}`.
    ProcessStdio,
    /// `mcp_stdio`: an MCP server over stdio.
    McpStdio,
}

impl ForeignKind {
    /// The manifest's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ForeignKind::ProcessStdio => "process_stdio",
            ForeignKind::McpStdio => "mcp_stdio",
        }
    }
}

/// A foreign program and what its sandbox grants (bridge kinds `process_stdio`, `mcp_stdio`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignBridge {
    pub kind: ForeignKind,
    /// `metadata.command`: an absolute path, or a name on the sandbox's `PATH`.
    pub command: String,
    /// `metadata.args_json`, parsed.
    pub args: Vec<String>,
    /// `sandbox.read`: paths readable inside the sandbox.
    pub read: Vec<PathBuf>,
    /// `sandbox.write`: paths readable and writable inside the sandbox.
    pub write: Vec<PathBuf>,
    /// `sandbox.net`: TCP destinations, `host:port`.
    pub net: Vec<loong_sandbox::NetGrant>,
    /// Longest line accepted from the program.
    pub max_line_bytes: u64,
    /// `sandbox.allow_private_network`: whether `sandbox.net` names may resolve to loopback,
    /// private or link-local addresses (an IP literal grant always reaches its address).
    pub allow_private_network: bool,
    /// `sandbox.egress`: the plugin's own, tighter egress limits.
    pub egress: EgressLimits,
}

/// What runs the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bridge {
    /// A WASM module in the restricted WASM worker (`component`, `entrypoint`).
    Wasm,
    /// A foreign program in a balanced-tier stdio worker.
    Foreign(ForeignBridge),
    /// An `http_json` connector in an HTTP worker.
    Http(HttpBridge),
}

/// An `http_json` connector: where it posts, and what its answer must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpBridge {
    /// `metadata.endpoint`, as written.
    pub endpoint: String,
    pub host: String,
    pub port: u16,
    /// Path and query (`/` when the endpoint has none).
    pub path: String,
    /// `https://`: TLS to `host`, never plain HTTP.
    pub https: bool,
    /// `metadata.headers_json`: request headers, checked ([`headers::check_header`]); a value
    /// may name secrets as `${secret:NAME}`, which loongd fills in per call.
    pub headers: Vec<(String, String)>,
    /// `metadata.response_contract_json`'s `required` keys.
    pub required_keys: Option<Vec<String>>,
    /// `metadata.response_contract_json`'s `allow_other_keys` (default true).
    pub allow_other_keys: bool,
    /// `sandbox.allow_private_network`: whether the endpoint may be (or resolve to) a
    /// loopback, private or link-local address.
    pub allow_private_network: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContract {
    #[serde(default)]
    required: Vec<String>,
    #[serde(default = "yes")]
    allow_other_keys: bool,
}

fn yes() -> bool {
    true
}

/// Expanded in `metadata.command` and `metadata.args_json` to the plugin's own directory.
pub const PLUGIN_DIR_VAR: &str = "${PLUGIN_DIR}";

/// The most arguments `metadata.args_json` may hold.
pub const MAX_ARGS: usize = 256;
/// Default and ceiling of `sandbox.max_line_bytes`.
pub const DEFAULT_MAX_LINE_BYTES: u64 = 1024 * 1024;
pub const MAX_LINE_BYTES: u64 = 8 * 1024 * 1024;
/// Directories a bare command name is looked up in.
pub const COMMAND_PATH: [&str; 5] = [
    "/usr/local/bin",
    "/usr/bin",
    "/bin",
    "/usr/local/sbin",
    "/usr/sbin",
];

/// The limits one plugin runs under (the worker clamps each to its own ceiling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimits {
    pub timeout_ms: u64,
    pub max_memory_bytes: u64,
    pub max_output_bytes: u64,
    /// Fuel per call, or `None` for no instruction budget.
    pub fuel: Option<u64>,
    pub max_module_bytes: u64,
}

/// A parsed, validated WASM plugin manifest.
#[derive(Debug, Clone)]
pub struct PluginManifest {
    /// Where the manifest was read from.
    pub path: PathBuf,
    pub plugin_id: String,
    pub version: String,
    pub summary: String,
    pub capabilities: Vec<String>,
    /// The module file, resolved against the manifest's directory.
    pub component: PathBuf,
    /// The exported entry function (public Loong's default is `run`).
    pub entrypoint: String,
    pub limits: PluginLimits,
    pub config: BTreeMap<String, String>,
    pub guest_readable_config_keys: Vec<String>,
    /// The module's pinned sha256, normalised (lowercase hex), when the manifest pins one.
    pub sha256: Option<String>,
    /// Where the pin was read from (`metadata.component_sha256`, `sandbox.sha256` or both),
    /// for error messages; empty when there is no pin.
    pub sha256_field: &'static str,
    pub blocked_import_prefixes: Vec<String>,
    /// What the guest reads with `read_input` (`sandbox.input`; WASM plugins only).
    pub input: loong_ipc::GuestInput,
    pub bridge: Bridge,
    /// What tool search shows: public Loong's `tags`, `input_examples`, `output_examples`
    /// (each example as JSON text), the trust tier the manifest claims, and `defer_loading`.
    pub catalog: Catalog,
    /// Public Loong's identity fields (`provider_id`, `connector_name`, `channel_id`,
    /// `endpoint`), with its defaults.
    pub identity: Identity,
    /// Where the manifest was read from.
    pub source: ManifestSource,
    /// The high-risk keywords its text holds: they keep an unverified plugin disabled.
    pub high_risk: Vec<String>,
}

/// Public Loong's top-level identity fields. `provider_id` and `connector_name` default to
/// the plugin id (public Loong requires them; this kernel names a plugin by its id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The provider the plugin registers (the WASM request's `provider_id`).
    pub provider_id: String,
    /// The connector name it registers.
    pub connector_name: String,
    /// The channel it registers, if any (the WASM request's `channel_id`).
    pub channel_id: Option<String>,
    /// The channel's endpoint: an `http_json` connector's URL when `metadata.endpoint` is
    /// absent; for other bridges a label (public Loong's examples write `local://…`).
    pub endpoint: Option<String>,
}

/// The longest `provider_id`, `connector_name` or `channel_id`.
pub const MAX_IDENTITY_BYTES: usize = 128;

impl Identity {
    /// The identity fields; a bad one is noted in `bad` and left at its default.
    fn parse(raw: &RawManifest, bad: &mut Findings<'_>) -> Identity {
        let mut field = |name: &'static str, value: &Option<String>, limit: usize| {
            let v = value.as_ref()?;
            if v.trim().is_empty() || v.len() > limit || v.chars().any(char::is_control) {
                bad.add(
                    name,
                    format!("give 1 to {limit} bytes without control characters"),
                );
                return None;
            }
            Some(v.clone())
        };
        let provider_id = field("provider_id", &raw.provider_id, MAX_IDENTITY_BYTES);
        let connector_name = field("connector_name", &raw.connector_name, MAX_IDENTITY_BYTES);
        let channel_id = field("channel_id", &raw.channel_id, MAX_IDENTITY_BYTES);
        let endpoint = field("endpoint", &raw.endpoint, MAX_ENDPOINT_BYTES);
        Identity {
            provider_id: provider_id.unwrap_or_else(|| raw.plugin_id.clone()),
            connector_name: connector_name.unwrap_or_else(|| raw.plugin_id.clone()),
            channel_id,
            endpoint,
        }
    }
}

/// Words in a manifest that mark a plugin high-risk (public Loong's
/// `high_risk_metadata_keywords`): an unverified high-risk plugin is installed disabled.
pub const HIGH_RISK_KEYWORDS: &[&str] = &[
    "sudo",
    "rm -rf",
    "| sh",
    "|sh",
    "curl ",
    "wget ",
    "base64 -d",
    "chmod 777",
    "/etc/shadow",
    "nc -e",
    "eval ",
    "--privileged",
    "docker.sock",
];

/// The high-risk keywords `text` holds, as findings.
pub fn high_risk_findings(text: &[u8]) -> Vec<String> {
    let lower = String::from_utf8_lossy(text).to_ascii_lowercase();
    HIGH_RISK_KEYWORDS
        .iter()
        .filter(|k| lower.contains(*k))
        .map(|k| format!("high-risk keyword {k:?}"))
        .collect()
}

/// The trust tiers, most trusted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TrustTier {
    Official,
    VerifiedCommunity,
    Unverified,
}

impl TrustTier {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustTier::Official => "official",
            TrustTier::VerifiedCommunity => "verified-community",
            TrustTier::Unverified => "unverified",
        }
    }
}

impl std::str::FromStr for TrustTier {
    type Err = String;
    fn from_str(s: &str) -> Result<TrustTier, String> {
        match s {
            "official" => Ok(TrustTier::Official),
            "verified-community" | "verified_community" => Ok(TrustTier::VerifiedCommunity),
            "unverified" => Ok(TrustTier::Unverified),
            other => Err(format!(
                "{other:?}: expected official, verified-community or unverified"
            )),
        }
    }
}

/// How a plugin holds a runtime slot (public Loong's `slot_claims[].mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotMode {
    /// No other plugin may claim the same slot and key.
    Exclusive,
    Shared,
    Advisory,
}

/// One of public Loong's `slot_claims`: `{slot, key, mode}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotClaim {
    pub slot: String,
    pub key: String,
    pub mode: SlotMode,
}

/// The most slot claims one manifest makes.
pub const MAX_SLOT_CLAIMS: usize = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlot {
    slot: String,
    #[serde(default)]
    key: String,
    mode: String,
}

fn parse_slots(v: &Option<serde_json::Value>) -> Result<Vec<SlotClaim>, String> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let raw: Vec<RawSlot> = serde_json::from_value(v.clone())
        .map_err(|e| format!("expected [{{\"slot\", \"key\", \"mode\"}}, …]: {e}"))?;
    if raw.len() > MAX_SLOT_CLAIMS {
        return Err(format!("at most {MAX_SLOT_CLAIMS} claims"));
    }
    raw.into_iter()
        .map(|r| {
            let mode = match r.mode.as_str() {
                "exclusive" => SlotMode::Exclusive,
                "shared" => SlotMode::Shared,
                "advisory" => SlotMode::Advisory,
                other => {
                    return Err(format!(
                        "mode {other:?}: expected exclusive, shared or advisory"
                    ))
                }
            };
            if r.slot.is_empty() || r.slot.len() > 128 || r.key.len() > 128 {
                return Err("a slot is 1 to 128 bytes, a key at most 128".into());
            }
            Ok(SlotClaim {
                slot: r.slot,
                key: r.key,
                mode,
            })
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    tool: Option<String>,
    #[serde(default)]
    input: Option<serde_json::Value>,
}

fn parse_probe(text: Option<&String>) -> Result<Option<(Option<String>, String)>, String> {
    let Some(text) = text else {
        return Ok(None);
    };
    let p: RawProbe = serde_json::from_str(text)
        .map_err(|e| format!("expected {{\"tool\": NAME, \"input\": JSON}}: {e}"))?;
    let input = p.input.unwrap_or_else(|| serde_json::json!({})).to_string();
    if input.len() > MAX_EXAMPLE_BYTES {
        return Err(format!("the input is over {MAX_EXAMPLE_BYTES} bytes"));
    }
    Ok(Some((p.tool, input)))
}

/// A plugin's searchable description.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub tags: Vec<String>,
    pub input_examples: Vec<String>,
    pub output_examples: Vec<String>,
    /// What the manifest claims; nothing proves it until plugins are signed.
    pub claimed_trust: Option<TrustTier>,
    /// Not started at discovery, only at its first call.
    pub defer_loading: bool,
    /// Runtime slots it claims.
    pub slots: Vec<SlotClaim>,
    /// The probe call an install or upgrade makes before traffic moves to the new version
    /// (`metadata.health_check_json`: `{"tool": NAME?, "input": JSON}`): the tool (`None`:
    /// the plugin's own) and the input as JSON text.
    pub probe: Option<(Option<String>, String)>,
    /// The JSON schema of the tool's input (`metadata.input_schema_json`, a JSON object with
    /// `"type": "object"`, encoded as a string like `args_json`), as compact JSON text,
    /// checked by [`loong_ipc::schema::check_input_schema`].
    pub input_schema: Option<String>,
}

/// Bounds on a catalog: tags, examples, and each one's length.
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG_BYTES: usize = 64;
pub const MAX_EXAMPLES: usize = 16;
pub const MAX_EXAMPLE_BYTES: usize = 4096;

impl Catalog {
    /// The catalog fields; a bad one is noted in `bad` and left at its default.
    fn parse(raw: &RawManifest, bad: &mut Findings<'_>) -> Catalog {
        let tags: Vec<String> = match &raw.tags {
            None => Vec::new(),
            Some(v) => bad
                .take(
                    "tags",
                    serde_json::from_value(v.clone())
                        .map_err(|_| "must be an array of strings".to_string()),
                )
                .unwrap_or_default(),
        };
        if tags.len() > MAX_TAGS || tags.iter().any(|t| t.is_empty() || t.len() > MAX_TAG_BYTES) {
            bad.add(
                "tags",
                format!("at most {MAX_TAGS} tags of 1 to {MAX_TAG_BYTES} bytes"),
            );
        }
        let examples = |v: &Option<serde_json::Value>| -> Result<Vec<String>, String> {
            let list = match v {
                None => return Ok(Vec::new()),
                Some(serde_json::Value::Array(a)) => a,
                Some(_) => return Err("must be an array".to_string()),
            };
            if list.len() > MAX_EXAMPLES {
                return Err(format!("at most {MAX_EXAMPLES} examples"));
            }
            list.iter()
                .map(|e| {
                    let text = e.to_string();
                    if text.len() > MAX_EXAMPLE_BYTES {
                        return Err(format!("an example is over {MAX_EXAMPLE_BYTES} bytes"));
                    }
                    Ok(text)
                })
                .collect()
        };
        let claimed_trust = match &raw.trust_tier {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(t)) => bad.take("trust_tier", t.parse()),
            Some(_) => {
                bad.add("trust_tier", "must be a string".to_string());
                None
            }
        };
        let defer_loading = match &raw.defer_loading {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(_) => {
                bad.add("defer_loading", "must be true or false".to_string());
                false
            }
        };
        Catalog {
            tags,
            input_examples: bad
                .take("input_examples", examples(&raw.input_examples))
                .unwrap_or_default(),
            output_examples: bad
                .take("output_examples", examples(&raw.output_examples))
                .unwrap_or_default(),
            claimed_trust,
            defer_loading,
            slots: bad
                .take("slot_claims", parse_slots(&raw.slot_claims))
                .unwrap_or_default(),
            probe: bad
                .take(
                    "metadata.health_check_json",
                    parse_probe(raw.metadata.get("health_check_json")),
                )
                .flatten(),
            input_schema: raw.metadata.get("input_schema_json").and_then(|text| {
                bad.take(
                    "metadata.input_schema_json",
                    loong_ipc::schema::parse_input_schema(text)
                        .map(|v| v.to_string())
                        .map_err(|e| e.to_string()),
                )
            }),
        }
    }
}

impl PluginManifest {
    /// Reads and validates a package's manifest: `dir/loong.plugin.json`, or else the one
    /// manifest embedded in a source file of the package (see [`source`]).
    pub fn load_dir(dir: &Path) -> Result<Self, ManifestError> {
        let found = source::find(dir)?;
        let mut m = Self::parse_from(&found.path, &found.text, found.source)?;
        m.check_host()?;
        Ok(m)
    }

    /// Checks what the manifest names on this host: a foreign program must be an executable
    /// file, and every granted path must exist. Resolves the command to its absolute path.
    pub fn check_host(&mut self) -> Result<(), ManifestError> {
        let path = self.path.clone();
        let Bridge::Foreign(f) = &mut self.bridge else {
            return Ok(());
        };
        let mut bad = Findings::new(&path);
        let runnable = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        let resolved = if f.command.starts_with('/') {
            Some(PathBuf::from(&f.command)).filter(|p| runnable(p))
        } else {
            COMMAND_PATH
                .iter()
                .map(|d| Path::new(d).join(&f.command))
                .find(|p| runnable(p))
        };
        match resolved {
            Some(resolved) => f.command = resolved.display().to_string(),
            None => bad.add(
                "metadata.command",
                format!(
                    "program {:?} not found or not executable (give an absolute path or a name in {})",
                    f.command,
                    COMMAND_PATH.join(":")
                ),
            ),
        }
        for (name, grants) in [("sandbox.read", &f.read), ("sandbox.write", &f.write)] {
            for missing in grants.iter().filter(|g| !g.exists()) {
                bad.add(
                    name,
                    format!(
                        "{}: the path does not exist; create it or remove the grant",
                        missing.display()
                    ),
                );
            }
        }
        bad.finish(())
    }

    /// Validates manifest text; `path` names it in errors and roots `component`.
    pub fn parse(path: &Path, text: &[u8]) -> Result<Self, ManifestError> {
        Self::parse_from(path, text, ManifestSource::Package)
    }

    /// Validates manifest text read from `source`. An embedded source manifest may omit
    /// `api_version` and `version` (public Loong's embedded contract): its version is then
    /// `metadata.version`, else [`DEFAULT_EMBEDDED_VERSION`].
    pub fn parse_from(
        path: &Path,
        text: &[u8],
        source: ManifestSource,
    ) -> Result<Self, ManifestError> {
        let mut value: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| ManifestError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        if let (ManifestSource::EmbeddedSource(_), Some(obj)) = (&source, value.as_object_mut()) {
            obj.entry("api_version")
                .or_insert_with(|| MANIFEST_API_VERSION.into());
            let version = obj
                .get("metadata")
                .and_then(|m| m.get("version"))
                .and_then(|v| v.as_str())
                .unwrap_or(DEFAULT_EMBEDDED_VERSION)
                .to_owned();
            obj.entry("version").or_insert_with(|| version.into());
        }
        let mut m = Self::parse_value(path, value)?;
        m.high_risk = high_risk_findings(text);
        m.source = source;
        m.check_declarations()?;
        Ok(m)
    }

    /// The capabilities its bridge and grants need must be declared, so that operators see
    /// them.
    fn check_declarations(&self) -> Result<(), ManifestError> {
        let mut needs: Vec<(&str, &str)> = Vec::new();
        let connector = self.capabilities.iter().any(|c| c == "invoke_connector");
        match &self.bridge {
            // Public Loong's connectors declare InvokeConnector only: a connector posts to
            // its one endpoint, which the manifest and `plugins list` show, so declaring it a
            // connector says as much as network_egress does.
            Bridge::Http(_) if connector => {}
            Bridge::Http(_) => needs.push((
                "network_egress",
                "it posts to an endpoint (or \"invoke_connector\", as public Loong's connectors do)",
            )),
            Bridge::Foreign(f) => {
                if !f.net.is_empty() {
                    needs.push(("network_egress", "it is granted sandbox.net"));
                }
                if !f.write.is_empty() {
                    needs.push(("filesystem_write", "it is granted sandbox.write"));
                }
                if !f.read.is_empty() {
                    needs.push(("filesystem_read", "it is granted sandbox.read"));
                }
            }
            Bridge::Wasm => {}
        }
        let mut bad = Findings::new(&self.path);
        for (cap, why) in needs {
            if !self.capabilities.iter().any(|c| c == cap) {
                bad.add(
                    "capabilities",
                    format!("must declare {cap:?} because {why}, so that operators see it"),
                );
            }
        }
        bad.finish(())
    }

    fn parse_value(path: &Path, value: serde_json::Value) -> Result<Self, ManifestError> {
        let mut problems = structural_problems(&value);
        match problems.len() {
            0 => {}
            1 => {
                return Err(ManifestError::Parse {
                    path: path.to_owned(),
                    message: problems.remove(0),
                })
            }
            _ => {
                return Err(ManifestError::Problems {
                    path: path.to_owned(),
                    problems,
                })
            }
        }
        let raw: RawManifest = serde_json::from_value(value).map_err(|e| ManifestError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut bad = Findings::new(path);
        if raw.api_version != MANIFEST_API_VERSION {
            bad.add(
                "api_version",
                format!("{:?} is not {MANIFEST_API_VERSION:?}", raw.api_version),
            );
        }
        if raw.plugin_id.is_empty()
            || raw.plugin_id.len() > MAX_PLUGIN_ID_LEN
            || !raw
                .plugin_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
            || raw.plugin_id.starts_with('.')
        {
            bad.add(
                "plugin_id",
                format!(
                    "{:?}: use 1 to {MAX_PLUGIN_ID_LEN} of a-z 0-9 - _ . (not leading .)",
                    raw.plugin_id
                ),
            );
        }
        if loong_ipc::package::BUILTIN_TOOLS.contains(&raw.plugin_id.as_str()) {
            bad.add(
                "plugin_id",
                format!(
                    "{:?} is the name of a built-in tool; choose another",
                    raw.plugin_id
                ),
            );
        }
        // Public Loong refuses a manifest whose two versions disagree.
        if let Some(v) = raw.metadata.get("version") {
            if v.trim() != raw.version.trim() {
                bad.add(
                    "metadata.version",
                    format!(
                        "{v:?} differs from version {:?}; keep the top-level version only",
                        raw.version
                    ),
                );
            }
        }
        let catalog = Catalog::parse(&raw, &mut bad);
        let identity = Identity::parse(&raw, &mut bad);
        // Public Loong's capability spelling (`InvokeTool`) means the same as ours; loongd
        // keeps ours. Any other name is refused, naming it.
        let mut raw = raw;
        for c in raw.capabilities.iter_mut() {
            match loong_ipc::package::check_capability(c) {
                Ok(ours) => *c = ours.to_owned(),
                Err(e) => bad.add("capabilities", e.to_string()),
            }
        }
        let foreign = match raw
            .metadata
            .get("bridge_kind")
            .map(|k| loong_ipc::package::bridge_kind(k))
        {
            Some(Ok(BridgeKind::Wasm)) => None,
            Some(Ok(BridgeKind::ProcessStdio)) => Some(ForeignKind::ProcessStdio),
            Some(Ok(BridgeKind::McpStdio)) => Some(ForeignKind::McpStdio),
            Some(Ok(BridgeKind::HttpJson)) => {
                return Self::parse_http(path, raw, (catalog, identity), bad)
            }
            Some(Err(e)) => {
                bad.add("metadata.bridge_kind", e.to_string());
                // Nothing more can be checked without knowing the bridge.
                return Err(bad.stop());
            }
            None => {
                bad.add(
                    "metadata.bridge_kind",
                    "missing: expected \"wasm\", \"process_stdio\", \"mcp_stdio\" or \"http_json\""
                        .into(),
                );
                return Err(bad.stop());
            }
        };
        if let Some(kind) = foreign {
            return Self::parse_foreign(path, raw, kind, (catalog, identity), bad);
        }
        let component = match raw.metadata.get("component") {
            None => {
                bad.add("metadata.component", "missing: name the .wasm file".into());
                ""
            }
            Some(c) => {
                let inside = Path::new(c)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
                if c.is_empty() || !inside {
                    bad.add(
                        "metadata.component",
                        format!("{c:?} must be a relative path inside the plugin directory"),
                    );
                }
                c.as_str()
            }
        };
        bad.tier(&raw, "restricted", "WASM plugins");
        if raw.sandbox.allow_wasi {
            bad.add(
                "sandbox.allow_wasi",
                "WASI is not provided to plugins; remove allow_wasi".into(),
            );
        }
        if raw
            .sandbox
            .guest_readable_config_keys
            .iter()
            .any(|key| key.len() > MAX_CONFIG_KEY_BYTES)
        {
            bad.add(
                "sandbox.guest_readable_config_keys",
                format!("a key is over {MAX_CONFIG_KEY_BYTES} bytes"),
            );
        }
        let limits = PluginLimits {
            timeout_ms: raw.sandbox.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
            max_memory_bytes: raw
                .sandbox
                .max_memory_bytes
                .unwrap_or(DEFAULT_MAX_MEMORY_BYTES),
            max_output_bytes: raw
                .sandbox
                .max_output_bytes
                .unwrap_or(DEFAULT_MAX_OUTPUT_BYTES),
            fuel: raw.sandbox.fuel,
            max_module_bytes: raw
                .sandbox
                .max_module_bytes
                .unwrap_or(DEFAULT_MAX_MODULE_BYTES),
        };
        if limits.max_module_bytes > MAX_MODULE_BYTES {
            bad.add(
                "sandbox.max_module_bytes",
                format!(
                    "{} is over the {MAX_MODULE_BYTES}-byte ceiling a worker accepts",
                    limits.max_module_bytes
                ),
            );
        }
        let pin = module_pin(&raw, &mut bad);
        let input = guest_input(&raw, &identity, &mut bad);
        let config = guest_config(&raw, &mut bad);
        let component = path.parent().unwrap_or(Path::new(".")).join(component);
        bad.finish(())?;
        let (sha256, sha256_field) = match pin {
            Some((digest, field)) => (Some(digest), field),
            None => (None, ""),
        };
        Ok(Self {
            path: path.to_owned(),
            version: raw.version,
            summary: raw.summary,
            capabilities: raw.capabilities,
            component,
            plugin_id: raw.plugin_id,
            entrypoint: raw
                .metadata
                .get("entrypoint")
                .cloned()
                .unwrap_or_else(|| "run".into()),
            limits,
            config,
            guest_readable_config_keys: raw.sandbox.guest_readable_config_keys,
            sha256,
            sha256_field,
            blocked_import_prefixes: raw.sandbox.blocked_import_prefixes,
            input: input.unwrap_or(loong_ipc::GuestInput::Bare),
            bridge: Bridge::Wasm,
            catalog,
            identity,
            source: ManifestSource::Package,
            high_risk: Vec::new(),
        })
    }

    /// A manifest whose bridge runs no module (a foreign program, a connector): only the
    /// limits that apply to it are kept.
    fn without_module(
        path: &Path,
        raw: RawManifest,
        bridge: Bridge,
        (catalog, identity): (Catalog, Identity),
    ) -> Self {
        Self {
            path: path.to_owned(),
            plugin_id: raw.plugin_id,
            version: raw.version,
            summary: raw.summary,
            capabilities: raw.capabilities,
            component: PathBuf::new(),
            entrypoint: String::new(),
            limits: PluginLimits {
                timeout_ms: raw.sandbox.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
                max_memory_bytes: raw.sandbox.max_memory_bytes.unwrap_or(0),
                max_output_bytes: raw
                    .sandbox
                    .max_output_bytes
                    .unwrap_or(DEFAULT_MAX_OUTPUT_BYTES),
                fuel: None,
                max_module_bytes: 0,
            },
            config: BTreeMap::new(),
            guest_readable_config_keys: Vec::new(),
            sha256: None,
            sha256_field: "",
            blocked_import_prefixes: Vec::new(),
            input: loong_ipc::GuestInput::Bare,
            bridge,
            catalog,
            identity,
            source: ManifestSource::Package,
            high_risk: Vec::new(),
        }
    }

    fn parse_http(
        path: &Path,
        raw: RawManifest,
        described: (Catalog, Identity),
        mut bad: Findings<'_>,
    ) -> Result<Self, ManifestError> {
        // Public Loong's place for the URL is the top-level endpoint; ours is
        // metadata.endpoint. Either may give it; two that differ are refused.
        let top = described.1.endpoint.clone();
        let (endpoint_field, endpoint) = match (raw.metadata.get("endpoint"), top) {
            (Some(m), Some(t)) if *m != t => {
                bad.add(
                    "endpoint",
                    format!("{t:?} differs from metadata.endpoint {m:?}; keep one"),
                );
                ("metadata.endpoint", m.clone())
            }
            (Some(m), _) => ("metadata.endpoint", m.clone()),
            (None, Some(t)) => ("endpoint", t),
            (None, None) => ("metadata.endpoint", String::new()),
        };
        let parsed = bad.take(endpoint_field, parse_endpoint(&endpoint));
        let headers = match raw.metadata.get("headers_json") {
            None => Vec::new(),
            Some(text) => bad
                .take("metadata.headers_json", headers::parse_headers_json(text))
                .unwrap_or_default(),
        };
        let (required_keys, allow_other_keys) = match raw.metadata.get("response_contract_json") {
            None => (None, true),
            Some(text) => {
                let c = bad.take(
                    "metadata.response_contract_json",
                    serde_json::from_str::<RawContract>(text).map_err(|e| {
                        format!(
                            "expected {{\"required\": [KEY, …], \"allow_other_keys\": BOOL}}: {e}"
                        )
                    }),
                );
                match c {
                    Some(c) if c.required.len() > MAX_ARGS => {
                        bad.add(
                            "metadata.response_contract_json",
                            format!("at most {MAX_ARGS} required keys"),
                        );
                        (None, true)
                    }
                    Some(c) => (Some(c.required), c.allow_other_keys),
                    None => (None, true),
                }
            }
        };
        bad.tier(&raw, "balanced", "http_json connectors");
        for (name, set) in [
            ("sandbox.read", !raw.sandbox.read.is_empty()),
            ("sandbox.write", !raw.sandbox.write.is_empty()),
            ("sandbox.net", !raw.sandbox.net.is_empty()),
            ("sandbox.egress", raw.sandbox.egress.is_some()),
            ("sandbox.config", !raw.sandbox.config.is_empty()),
            ("sandbox.input", raw.sandbox.input.is_some()),
            ("sandbox.fuel", raw.sandbox.fuel.is_some()),
            ("sandbox.sha256", raw.sandbox.sha256.is_some()),
            (
                COMPONENT_SHA256_FIELD,
                raw.metadata.contains_key("component_sha256"),
            ),
            (
                COMPONENT_SHA256_PIN_FIELD,
                raw.metadata.contains_key("component_sha256_pin"),
            ),
            (
                COMPONENT_SHA256_HEX_FIELD,
                raw.metadata.contains_key("component_sha256_hex"),
            ),
        ] {
            if set {
                bad.add(
                    name,
                    "an http_json connector reaches its endpoint only and reads no file; remove it"
                        .into(),
                );
            }
        }
        // A failed endpoint parse is a finding, so `parsed` is there when nothing was found.
        let Endpoint {
            https,
            host,
            port,
            target,
        } = bad.finish(parsed)?.ok_or(ManifestError::Field {
            path: path.to_owned(),
            field: endpoint_field,
            message: "cannot be parsed".into(),
        })?;
        let allow_private_network = raw.sandbox.allow_private_network;
        Ok(Self::without_module(
            path,
            raw,
            Bridge::Http(HttpBridge {
                endpoint,
                host,
                port,
                path: target,
                https,
                headers,
                required_keys,
                allow_other_keys,
                allow_private_network,
            }),
            described,
        ))
    }

    fn parse_foreign(
        path: &Path,
        raw: RawManifest,
        kind: ForeignKind,
        described: (Catalog, Identity),
        mut bad: Findings<'_>,
    ) -> Result<Self, ManifestError> {
        let command = match raw.metadata.get("command").filter(|c| !c.is_empty()) {
            Some(c) => c.clone(),
            None => {
                bad.add(
                    "metadata.command",
                    "missing: name the program to run".into(),
                );
                String::new()
            }
        };
        let args: Vec<String> = match raw.metadata.get("args_json") {
            None => Vec::new(),
            Some(text) => bad
                .take(
                    "metadata.args_json",
                    serde_json::from_str(text)
                        .map_err(|e| format!("not a JSON array of strings: {e}")),
                )
                .unwrap_or_default(),
        };
        if args.len() > MAX_ARGS {
            bad.add(
                "metadata.args_json",
                format!("{} arguments, at most {MAX_ARGS}", args.len()),
            );
        }
        // `${PLUGIN_DIR}` is the package's own directory, which the program's sandbox may read.
        let dir = path
            .parent()
            .unwrap_or(Path::new("."))
            .display()
            .to_string();
        let command = command.replace(PLUGIN_DIR_VAR, &dir);
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.replace(PLUGIN_DIR_VAR, &dir))
            .collect();
        bad.tier(&raw, "balanced", "foreign programs");
        for (name, set) in [
            ("sandbox.config", !raw.sandbox.config.is_empty()),
            ("sandbox.input", raw.sandbox.input.is_some()),
            ("sandbox.fuel", raw.sandbox.fuel.is_some()),
            ("sandbox.sha256", raw.sandbox.sha256.is_some()),
            (
                COMPONENT_SHA256_FIELD,
                raw.metadata.contains_key("component_sha256"),
            ),
            (
                COMPONENT_SHA256_PIN_FIELD,
                raw.metadata.contains_key("component_sha256_pin"),
            ),
            (
                COMPONENT_SHA256_HEX_FIELD,
                raw.metadata.contains_key("component_sha256_hex"),
            ),
            ("sandbox.allow_wasi", raw.sandbox.allow_wasi),
        ] {
            if set {
                bad.add(
                    name,
                    format!(
                        "applies to WASM plugins only; remove it from a {} plugin",
                        kind.as_str()
                    ),
                );
            }
        }
        let mut grants = |name: &'static str, list: &[String]| -> Vec<PathBuf> {
            if list.len() > MAX_ARGS {
                bad.add(name, format!("{} grants, at most {MAX_ARGS}", list.len()));
                return Vec::new();
            }
            list.iter()
                .filter_map(|g| {
                    let p = PathBuf::from(g);
                    if !p.is_absolute() || g.contains('\0') {
                        bad.add(name, format!("{g:?}: give an absolute path"));
                        return None;
                    }
                    Some(p)
                })
                .collect()
        };
        let read = grants("sandbox.read", &raw.sandbox.read);
        let write = grants("sandbox.write", &raw.sandbox.write);
        let net = raw
            .sandbox
            .net
            .iter()
            .filter_map(|n| {
                bad.take(
                    "sandbox.net",
                    n.parse()
                        .map_err(|e: loong_sandbox::NetGrantError| e.to_string()),
                )
            })
            .collect::<Vec<_>>();
        let allow_private_network = raw.sandbox.allow_private_network;
        let egress = raw.sandbox.egress.unwrap_or_default();
        for (field, v) in [
            ("sandbox.egress.max_connections", egress.max_connections),
            ("sandbox.egress.max_bytes", egress.max_bytes),
        ] {
            if v == Some(0) {
                bad.add(
                    field,
                    "0: give at least 1 (loongd's [egress] value is the most)".into(),
                );
            }
        }
        let max_line_bytes = raw.sandbox.max_line_bytes.unwrap_or(DEFAULT_MAX_LINE_BYTES);
        if max_line_bytes == 0 || max_line_bytes > MAX_LINE_BYTES {
            bad.add(
                "sandbox.max_line_bytes",
                format!("{max_line_bytes}: give 1 to {MAX_LINE_BYTES}"),
            );
        }
        bad.finish(())?;
        Ok(Self::without_module(
            path,
            raw,
            Bridge::Foreign(ForeignBridge {
                kind,
                command,
                args,
                read,
                write,
                net,
                max_line_bytes,
                allow_private_network,
                egress,
            }),
            described,
        ))
    }

    /// The module as loongd hands it to a worker: read (see [`Self::read_module`]), a
    /// WebAssembly module by its magic number, and of the sha256 the manifest pins, if any.
    /// loongd's loader and `loongctl plugins doctor` both check a module this way.
    pub fn read_checked_module(&self) -> Result<Vec<u8>, ManifestError> {
        let module = self.read_module()?;
        let field = |message: String| ManifestError::Field {
            path: self.path.clone(),
            field: "metadata.component",
            message,
        };
        if !module.starts_with(WASM_MAGIC) {
            return Err(field(format!(
                "{} is not a WebAssembly module (its first bytes are not 00 61 73 6d)",
                self.component.display()
            )));
        }
        if let Some(expected) = &self.sha256 {
            use sha2::Digest;
            let actual = hex(&sha2::Sha256::digest(&module));
            if &actual != expected {
                return Err(ManifestError::Field {
                    path: self.path.clone(),
                    field: self.sha256_field,
                    message: format!(
                        "pins the module {} to sha256 {expected}, but its sha256 is {actual}; correct the pin or replace the module",
                        self.component.display()
                    ),
                });
            }
        }
        Ok(module)
    }

    /// Reads the module, at most one byte over its size cap (so that the worker reports the
    /// size error by name) and never out of the plugin directory.
    pub fn read_module(&self) -> Result<Vec<u8>, ManifestError> {
        let cap = self.limits.max_module_bytes.min(MAX_MODULE_BYTES);
        // A symlink may not lead the module path out of the plugin directory.
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let io = |source| ManifestError::Io {
            path: self.component.clone(),
            source,
        };
        let real_dir = dir.canonicalize().map_err(io)?;
        let real = self.component.canonicalize().map_err(io)?;
        if !real.starts_with(&real_dir) {
            return Err(ManifestError::Field {
                path: self.path.clone(),
                field: "metadata.component",
                message: format!("{} leads outside the plugin directory", real.display()),
            });
        }
        let rel = real.strip_prefix(&real_dir).unwrap_or(&real);
        let root = open_package_dir(&real_dir)?;
        // One byte over the cap is read so the engine reports the size error.
        read_beneath(&root, &real_dir, rel, cap + 1)
    }
}

/// The first bytes of every WebAssembly binary.
pub const WASM_MAGIC: &[u8] = b"\0asm";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The version of an embedded source manifest that gives none (public Loong's default).
pub const DEFAULT_EMBEDDED_VERSION: &str = "0.1.0";

#[cfg(test)]
mod tests;
