//! Plugin discovery: `HOME/plugins/<plugin_id>/loong.plugin.json`, read at start and on
//! `loongctl plugins reload`.
//!
//! loongd parses the manifest and reads the module's bytes (bounded, never through a symlink
//! out of the plugin's directory) and checks them against the manifest's sha256 pin, if any;
//! it never compiles a module. Each ready plugin is then loaded once in a worker, which is
//! where a module that is invalid, too large or importing something refused is found out. A foreign program
//! (`process_stdio`, `mcp_stdio`) gets a pool of its own, one stdio worker whose sandbox
//! carries the plugin's grants; loading it starts the program and lists its tools. A broken
//! plugin is kept in a `failed` state with the reason; it never stops loongd or another
//! plugin.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use loong_ipc::{HttpSpec, PeerProtocol, PeerSpec, PluginView, WasmPlugin};
use loong_profiles::plugin::{Bridge, Catalog, ForeignKind, PluginManifest, TrustTier};

use sha2::{Digest, Sha256};

use crate::authority::keys::{parse_public, TrustKey};
use crate::config::PluginsConfig;
use crate::egress::resolve::Resolver;

use super::{LoadInfo, Loadable, Supervisor, Wire, WorkerKind};

/// Why a package's signature or digests do not verify; the message names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VerifyError(pub String);

impl From<String> for VerifyError {
    fn from(s: String) -> Self {
        VerifyError(s)
    }
}

impl From<&str> for VerifyError {
    fn from(s: &str) -> Self {
        VerifyError(s.to_string())
    }
}

/// The most plugin directories read, in name order. Sized for the scale goal of
/// docs/performance.md (500 WASM plugins beside 80 MCP servers) with room to spare; it bounds
/// what a start or a reload reads and holds, not what an operator is expected to install.
/// Directories past it are not loaded, and a start or reload says so in loongd's log.
pub const MAX_PLUGINS: usize = 1024;

/// What an answer carrying one [`PluginView`] adds to the view's own encoding (the reply's
/// envelope and the frame's header), with room to spare.
pub const VIEW_ANSWER_OVERHEAD_BYTES: usize = 1024;

/// Each discovery's plugins get a new generation, so workers reload changed modules.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A new plugin generation.
pub(crate) fn next_generation() -> u64 {
    GENERATION.fetch_add(1, Ordering::Relaxed)
}

/// The bridge kind of a WASM plugin ([`Plugin::bridge_kind`]): its calls run in a WASM worker
/// and have no effect outside it but what they ask of the host.
pub(crate) const WASM_BRIDGE: &str = "wasm";

/// A discovered plugin.
#[derive(Debug, Clone)]
pub(crate) struct Plugin {
    pub id: String,
    pub version: String,
    pub summary: String,
    pub dir: PathBuf,
    /// `wasm`, `process_stdio` or `mcp_stdio`.
    pub bridge_kind: &'static str,
    /// What tool search shows (and `defer_loading`).
    pub catalog: Catalog,
    /// The effective trust tier (see [`trust_of`]).
    pub trust: TrustTier,
    /// The key that signed the package: `ID (NAME)`.
    pub signer: Option<String>,
    /// The package digest its lock entry records, for an installed plugin.
    pub lock_digest: Option<String>,
    /// The capabilities its manifest declares, in our spelling (`invoke_tool`: its calls may
    /// call tools through loongd).
    pub capabilities: Vec<String>,
    pub state: State,
}

/// Where a plugin stands.
#[derive(Debug, Clone)]
pub(crate) enum State {
    /// Loadable: what loads it, the worker kind of its own pool (`None`: the shared WASM
    /// pool), and, once a worker loaded it, its digest or tools and the pool that runs it.
    Ready {
        plugin: Loadable,
        kind: Option<Box<WorkerKind>>,
        info: LoadInfo,
        pool: Option<Arc<Supervisor>>,
    },
    /// Not runnable, and why.
    Failed(String),
    /// Installed and checked, but not enabled by the operator (an unverified plugin whose
    /// bridge runs native code, or one an operator disabled).
    Disabled(String),
}

impl Plugin {
    /// Whether its tools are named `ID/TOOL` (an MCP server's) rather than by its id.
    pub(crate) fn has_named_tools(&self) -> bool {
        self.bridge_kind == ForeignKind::McpStdio.as_str()
    }

    /// The JSON schema of `tool`'s input, as the model and MCP clients are offered it: an
    /// MCP server's tool's `inputSchema` from its `tools/list`, otherwise the manifest's
    /// `metadata.input_schema_json` (a built-in's is fixed); `{"type": "object"}` when there
    /// is none. Each was checked when it was read; a worker's is checked again here, and one
    /// that fails is not offered (the tool is, with the empty schema).
    pub(crate) fn input_schema(&self, tool: &str) -> serde_json::Value {
        let text = if self.has_named_tools() {
            self.listed(tool).and_then(|t| t.input_schema.as_deref())
        } else {
            self.catalog.input_schema.as_deref()
        };
        text.and_then(|t| loong_ipc::schema::parse_input_schema(t).ok())
            .unwrap_or_else(|| serde_json::json!({"type": "object"}))
    }

    /// What `tool` does: an MCP server's tool's own description, else the plugin's summary.
    pub(crate) fn tool_description(&self, tool: &str) -> &str {
        self.listed(tool)
            .map(|t| t.description.as_str())
            .filter(|d| !d.is_empty())
            .unwrap_or(&self.summary)
    }

    /// The entry of an MCP server's tool `ID/TOOL` in its `tools/list`.
    fn listed(&self, tool: &str) -> Option<&loong_ipc::ToolInfo> {
        let State::Ready { info, .. } = &self.state else {
            return None;
        };
        let own = tool.strip_prefix(self.id.as_str())?.strip_prefix('/')?;
        info.tools.iter().find(|t| t.name == own)
    }

    /// The tool names callers use.
    pub(crate) fn tool_names(&self) -> Vec<String> {
        match &self.state {
            State::Ready { info, .. } if self.has_named_tools() => info
                .tools
                .iter()
                .map(|t| format!("{}/{}", self.id, t.name))
                .collect(),
            State::Ready { .. } => vec![self.id.clone()],
            State::Failed(_) | State::Disabled(_) => Vec::new(),
        }
    }

    /// The id of the key that signed its package (`signer` is `ID (NAME)`).
    pub(crate) fn signer_key(&self) -> Option<&str> {
        self.signer
            .as_deref()
            .and_then(|s| s.split(' ').next())
            .filter(|id| !id.is_empty())
    }

    /// Not started at discovery, and not loaded yet: its first call loads it.
    pub(crate) fn deferred(&self) -> bool {
        self.catalog.defer_loading
            && matches!(&self.state, State::Ready { info, .. } if !info.loaded)
    }

    /// The plugin with every tool's name and input schema (`plugins show`, an install).
    pub(crate) fn view(&self) -> PluginView {
        self.view_of(usize::MAX, true)
    }

    /// [`Plugin::view`] when it fits one answer on a connection whose frame limit is `room`
    /// bytes (with room for the answer's envelope), `Err` with its encoded size otherwise: a
    /// program of many tools with large schemas may not fit a small limit, and an answer
    /// past the limit would close the connection with no word of why.
    pub(crate) fn view_within(&self, room: usize) -> Result<PluginView, usize> {
        let view = self.view();
        let size = loong_ipc::frame::encoded_len(&view).unwrap_or(usize::MAX);
        if size.saturating_add(VIEW_ANSWER_OVERHEAD_BYTES) > room {
            return Err(size);
        }
        Ok(view)
    }

    /// The plugin as a page of `plugins list` carries it: its first
    /// [`MAX_LISTED_TOOLS`](loong_ipc::message::control::MAX_LISTED_TOOLS) tool names and
    /// their count, no schema.
    pub(crate) fn listed_view(&self) -> PluginView {
        self.view_of(loong_ipc::message::control::MAX_LISTED_TOOLS, false)
    }

    /// The view with at most `names` tool names, and their schemas when `schemas`.
    fn view_of(&self, names: usize, schemas: bool) -> PluginView {
        let (state, error, sha256) = match &self.state {
            State::Ready { .. } if self.deferred() => ("deferred", None, None),
            State::Ready { info, .. } => ("ready", None, info.sha256.clone()),
            State::Failed(why) => ("failed", Some(why.clone()), None),
            State::Disabled(why) => ("disabled", Some(why.clone()), None),
        };
        // Each tool's name with the schema text it was listed with (its manifest's, for a
        // plugin that is one tool), read once each.
        let tools: Vec<(String, Option<&str>)> = match &self.state {
            State::Ready { info, .. } if self.has_named_tools() => info
                .tools
                .iter()
                .map(|t| (format!("{}/{}", self.id, t.name), t.input_schema.as_deref()))
                .collect(),
            State::Ready { .. } => vec![(self.id.clone(), self.catalog.input_schema.as_deref())],
            State::Failed(_) | State::Disabled(_) => Vec::new(),
        };
        let tool_count = u32::try_from(tools.len()).unwrap_or(u32::MAX);
        let shown = &tools[..tools.len().min(names)];
        PluginView {
            id: self.id.clone(),
            version: self.version.clone(),
            summary: self.summary.clone(),
            bridge_kind: self.bridge_kind.into(),
            state: state.into(),
            error,
            sha256,
            path: self.dir.display().to_string(),
            input_schemas: if schemas {
                shown.iter().map(|(_, text)| schema_text(*text)).collect()
            } else {
                Vec::new()
            },
            tools: shown.iter().map(|(name, _)| name.clone()).collect(),
            trust: self.trust.as_str().into(),
            signer: self.signer.clone(),
            lock_digest: self.lock_digest.clone(),
            tool_count,
        }
    }
}

/// The schema a tool is offered with, as compact JSON text: `text` when it passes the input
/// schema check again, otherwise `{"type":"object"}` (see [`Plugin::input_schema`]).
fn schema_text(text: Option<&str>) -> String {
    text.and_then(|t| loong_ipc::schema::parse_input_schema(t).ok())
        .unwrap_or_else(|| serde_json::json!({"type": "object"}))
        .to_string()
}

/// Checks a package's signature against the keyring. `Ok(None)`: unsigned. An error (the
/// plugin is then refused) names what is wrong: an unknown or revoked key, a signature that
/// does not verify, a file changed after signing. The signature is checked first, over the
/// message its own file list rebuilds, so the file names a refusal shows are either signed
/// or recomputed from the package, never free text from the signature file.
pub(crate) fn verify_package(
    dir: &Path,
    keys: &[TrustKey],
) -> Result<Option<TrustKey>, VerifyError> {
    use loong_ipc::package::{self, PackageSignature, SIGNATURE_FILE};
    let sig_path = dir.join(SIGNATURE_FILE);
    let shown = sig_path.display();
    // Read as the manifest is: never through a link, never waiting on a FIFO, and no more
    // than the bound (a hand-placed package's signature may be anything).
    let read = loong_profiles::plugin::read_package_file(
        dir,
        SIGNATURE_FILE,
        package::MAX_SIGNATURE_BYTES as u64,
    );
    let text = match read {
        Ok(None) => return Ok(None),
        Ok(Some(text)) => text,
        Err(e) => return Err(e.to_string().into()),
    };
    let sig = PackageSignature::parse(&text).map_err(|e| format!("{shown}: {e}"))?;
    // `parse` checked the key id is hex and the file list rebuilds the digest.
    let message = sig
        .message()
        .ok_or_else(|| format!("{shown}: {}", package::SignatureFileError::FileList))?;
    let key = keys.iter().find(|k| k.id == sig.key_id).ok_or_else(|| {
        format!(
            "{shown}: signed by key {}, which is not in the keyring (`loongctl keys add`)",
            sig.key_id
        )
    })?;
    if key.revoked_ms.is_some() {
        return Err(format!(
            "{shown}: signed by key {} ({}), which is revoked{}; refusing it",
            key.id,
            key.name,
            key.replaced_by
                .as_ref()
                .map(|r| format!(" (replaced by {r}: sign again with it)"))
                .unwrap_or_default()
        )
        .into());
    }
    let signature: [u8; 64] = hex::decode(&sig.signature)
        .ok()
        .and_then(|b| b.as_slice().try_into().ok())
        .ok_or_else(|| format!("{shown}: the signature is not 128 hex digits"))?;
    let public = parse_public(&key.public).map_err(|e| e.to_string())?;
    let verifies = ed25519_dalek::VerifyingKey::from_bytes(&public).is_ok_and(|v| {
        v.verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&signature))
            .is_ok()
    });
    if !verifies {
        return Err(format!(
            "{shown}: the signature does not verify under key {} ({}); refusing it",
            key.id, key.name
        )
        .into());
    }
    let now = package::digest(dir).map_err(|e| e.to_string())?;
    if now.digest != sig.digest {
        return Err(format!(
            "{}: the package changed after it was signed ({}); refusing it",
            dir.display(),
            sig.changed_files(&now).join(", ")
        )
        .into());
    }
    Ok(Some(key.clone()))
}

/// The effective trust tier: the lowest of what the manifest claims (no claim: no limit) and
/// what the signature proves (unsigned: `unverified`).
pub(crate) fn trust_of(claimed: Option<TrustTier>, signer: Option<&TrustKey>) -> TrustTier {
    let proved = signer
        .and_then(|k| k.tier.parse().ok())
        .unwrap_or(TrustTier::Unverified);
    proved.max(claimed.unwrap_or(TrustTier::Official))
}

/// Whether a plugin bridge runs native code (a foreign program): such a plugin is never
/// enabled automatically unless its signature proves a tier above `unverified`.
pub(crate) fn runs_native_code(bridge_kind: &str) -> bool {
    bridge_kind == ForeignKind::ProcessStdio.as_str()
        || bridge_kind == ForeignKind::McpStdio.as_str()
}

/// What the install's scan adds to the checks every load makes: the findings (high-risk
/// keywords, found by the parser in the manifest's text, embedded in a source file or not)
/// that keep an unverified plugin disabled. It refuses nothing: every refusal is the
/// manifest parser's, which discovery and `loongctl plugins doctor` share.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub findings: Vec<String>,
}

/// The install's scan of a parsed manifest.
pub(crate) fn scan(m: &PluginManifest) -> Scan {
    Scan {
        findings: m.high_risk.clone(),
    }
}

/// Reads one package directory: manifest, signature, lock entry.
pub(crate) fn read_package(
    dir: &Path,
    name: &str,
    keys: &[TrustKey],
    lock: &super::lock::Lock,
    pins: &PluginsConfig,
    resolver: &Resolver,
) -> Plugin {
    let entry = lock.get(name);
    let failed = |why: String| Plugin {
        id: name.to_string(),
        // What the lock says was installed, when the package itself cannot say.
        version: entry.map(|e| e.version.clone()).unwrap_or_default(),
        summary: String::new(),
        dir: dir.to_path_buf(),
        bridge_kind: "unknown",
        catalog: Catalog::default(),
        trust: TrustTier::Unverified,
        signer: None,
        lock_digest: lock.get(name).map(|e| e.digest.clone()),
        capabilities: Vec::new(),
        state: State::Failed(why),
    };
    // An installed package is first compared with its lock entry: a drifted one is refused
    // as drift (with its locked version), whatever else is now wrong with it.
    if let Some(entry) = entry {
        let drift = super::lock::drift(entry, dir);
        if !drift.is_empty() {
            return failed(format!(
                "{}: the package no longer matches its lock entry ({} {}: {}); reinstall it or run `loongctl plugins verify --lock`",
                dir.display(),
                name,
                entry.version,
                drift.join(", ")
            ));
        }
    }
    // The checks `loongctl plugins doctor` makes too (one library function), then loongd's
    // own: the directory name, the keyring, the operator's pins and address policy.
    let (mut m, module) = match loong_profiles::plugin::check_package(dir) {
        Err(e) => return failed(e.to_string()),
        Ok(checked) => checked,
    };
    let pinned_private = pins.private_endpoints.contains(&m.plugin_id);
    match &mut m.bridge {
        Bridge::Http(h) => h.allow_private_network |= pinned_private,
        Bridge::Foreign(f) => f.allow_private_network |= pinned_private,
        Bridge::Wasm => {}
    }
    if m.plugin_id != name {
        return failed(format!(
            "{}: plugin_id {:?} does not match its directory {name:?}; rename one",
            m.path.display(),
            m.plugin_id
        ));
    }
    let signer = match verify_package(dir, keys) {
        Err(why) => return failed(why.to_string()),
        Ok(s) => s,
    };
    let manifest = m.path.clone();
    let mut p = match ready(m, module, resolver) {
        Ok(p) => p,
        Err(why) => return failed(why),
    };
    if let Err(why) = check_operator_pin(&p, &manifest, pins) {
        return failed(why);
    }
    p.dir = dir.to_path_buf();
    p.trust = trust_of(p.catalog.claimed_trust, signer.as_ref());
    p.signer = signer.map(|k| format!("{} ({})", k.id, k.name));
    if let Some(entry) = entry {
        p.lock_digest = Some(entry.digest.clone());
        if let Some(ceiling) = entry
            .ceiling
            .as_deref()
            .and_then(|c| c.parse::<TrustTier>().ok())
        {
            p.trust = p.trust.max(ceiling);
        }
        if !entry.enabled {
            p.state = State::Disabled(format!(
                "installed but not enabled: `loongctl plugins enable {name}`"
            ));
        }
    }
    p
}

/// Reads every plugin directory under `root` (absent: no plugins; names starting with `.`
/// are loongd's own staging), sorted by id; each package's signature is checked against
/// `keys` and an installed one against its lock entry.
pub(crate) fn discover(
    root: &Path,
    keys: &[TrustKey],
    lock: &super::lock::Lock,
    pins: &PluginsConfig,
    resolver: &Resolver,
) -> Vec<Plugin> {
    let mut out: Vec<Plugin> = Vec::new();
    for dir in plugin_dirs(root) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(read_package(&dir, &name, keys, lock, pins, resolver));
    }
    refuse_slot_conflicts(&mut out);
    out
}

/// The plugin directories under `root` that discovery reads: the first [`MAX_PLUGINS`] by
/// name, in name order, loongd's own staging and removed copies (names starting with `.`)
/// not among them. Only those are held while the directory is read, however many entries it
/// has; loongd's log says how many more there are, in one line.
fn plugin_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    // The first MAX_PLUGINS by name seen so far; the greatest of them on top.
    let mut first: std::collections::BinaryHeap<PathBuf> = std::collections::BinaryHeap::new();
    let mut found = 0usize;
    for e in entries.flatten() {
        if e.file_name().as_encoded_bytes().starts_with(b".")
            || !e.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        found += 1;
        let dir = e.path();
        if first.len() < MAX_PLUGINS {
            first.push(dir);
        } else if first.peek().is_some_and(|last| dir < *last) {
            first.pop();
            first.push(dir);
        }
    }
    if found > MAX_PLUGINS {
        tracing::warn!(
            found,
            limit = MAX_PLUGINS,
            "more plugin directories than loongd loads: the ones after the first {MAX_PLUGINS} \
             by name are not loaded; remove plugins you do not use"
        );
    }
    first.into_sorted_vec()
}

/// Two ready plugins may not hold the same slot and key when either claims it exclusively:
/// the first by id keeps it, the later one is refused with a reason naming both. The order
/// is the plugins' ids, so the outcome does not depend on timing or directory order.
pub(crate) fn refuse_slot_conflicts(plugins: &mut [Plugin]) {
    use loong_profiles::plugin::SlotMode;
    let mut held: BTreeMap<(String, String), (String, SlotMode)> = BTreeMap::new();
    let mut order: Vec<usize> = (0..plugins.len()).collect();
    order.sort_by(|a, b| plugins[*a].id.cmp(&plugins[*b].id));
    for i in order {
        let p = &plugins[i];
        if !matches!(p.state, State::Ready { .. }) {
            continue;
        }
        let conflict = p.catalog.slots.iter().find_map(|c| {
            let (holder, mode) = held.get(&(c.slot.clone(), c.key.clone()))?;
            (c.mode == SlotMode::Exclusive || *mode == SlotMode::Exclusive).then(|| {
                format!(
                    "slot {:?} (key {:?}) is claimed by {holder} and {}, and at least one claim is exclusive; {} keeps it (first by id), {} is refused",
                    c.slot, c.key, p.id, holder, p.id
                )
            })
        });
        match conflict {
            Some(why) => plugins[i].state = State::Failed(why),
            None => {
                for c in &p.catalog.slots {
                    held.entry((c.slot.clone(), c.key.clone()))
                        .or_insert((p.id.clone(), c.mode));
                }
            }
        }
    }
}

fn ready(
    m: PluginManifest,
    module: Option<Vec<u8>>,
    resolver: &Resolver,
) -> Result<Plugin, String> {
    let capabilities = m.capabilities.clone();
    let (bridge_kind, wire, kind) = match &m.bridge {
        Bridge::Wasm => {
            // `check_package` read and checked it (magic number, the manifest's pin).
            let module = module.ok_or_else(|| format!("{}: no module read", m.path.display()))?;
            (WASM_BRIDGE, Wire::Wasm(wire(m.clone(), module)), None)
        }
        Bridge::Foreign(f) => {
            // The program's working directory: its first writable grant, else its first
            // readable directory, else the sandbox's private /tmp.
            let cwd = f
                .write
                .iter()
                .chain(&f.read)
                .find(|p| p.is_dir())
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "/tmp".into());
            let spec = PeerSpec {
                plugin_id: m.plugin_id.clone(),
                protocol: match f.kind {
                    ForeignKind::ProcessStdio => PeerProtocol::JsonLines,
                    ForeignKind::McpStdio => PeerProtocol::Mcp,
                },
                command: f.command.clone(),
                args: f.args.clone(),
                cwd,
                timeout_ms: m.limits.timeout_ms,
                max_line_bytes: f.max_line_bytes,
                max_output_bytes: m.limits.max_output_bytes,
            };
            spec.check_bounds()
                .map_err(|e| format!("{}: {e}", m.path.display()))?;
            // The program may read its own package (a script, its modules), read-only.
            let kind = WorkerKind {
                package: m.path.parent().map(PathBuf::from),
                net_owner: Some(m.plugin_id.clone()),
                allow_private_network: f.allow_private_network,
                egress_asked: f.egress,
                ..WorkerKind::stdio(f.read.clone(), f.write.clone(), f.net.clone())
            };
            (f.kind.as_str(), Wire::Peer(spec), Some(Box::new(kind)))
        }
        Bridge::Http(h) => {
            // A secret crosses a public network only inside TLS: over plain HTTP only to an
            // internal service the operator let the connector reach.
            let names_secret = h.headers.iter().any(|(_, v)| {
                !loong_profiles::plugin::headers::secret_names(v)
                    .unwrap_or_default()
                    .is_empty()
            });
            if names_secret && !h.https && !h.allow_private_network {
                return Err(format!(
                    "{}: metadata.headers_json names a secret, which is sent in plain HTTP only to an internal endpoint (sandbox.allow_private_network); use an https:// endpoint",
                    m.path.display()
                ));
            }
            // Resolved once, here: each call connects to these addresses and no others.
            let addrs = super::net::pin(resolver, &h.host, h.port, h.allow_private_network)
                .map_err(|e| {
                    format!(
                        "{}: metadata.endpoint {}: {e}",
                        m.path.display(),
                        h.endpoint
                    )
                })?;
            // `allow_private_network` is the package's own word: it admits internal addresses,
            // it does not make a public one internal. Judged on the addresses pinned, which
            // are the only ones a call connects to.
            if let Some(public) = addrs.iter().find(|a| {
                names_secret && !h.https && crate::egress::ranges::special_range(a.ip()).is_none()
            }) {
                return Err(format!(
                    "{}: metadata.headers_json names a secret, which is sent in plain HTTP only to an internal endpoint, and {} resolves to the public address {}; use an https:// endpoint",
                    m.path.display(),
                    h.endpoint,
                    public.ip()
                ));
            }
            let endpoint = loong_profiles::plugin::Endpoint {
                https: h.https,
                host: h.host.clone(),
                port: h.port,
                target: h.path.clone(),
            };
            let spec = HttpSpec {
                plugin_id: m.plugin_id.clone(),
                host: endpoint.host_header(),
                path: h.path.clone(),
                timeout_ms: m.limits.timeout_ms,
                max_output_bytes: m.limits.max_output_bytes,
                required_keys: h.required_keys.clone(),
                allow_other_keys: h.allow_other_keys,
                fetch: false,
                tls: h.https,
                server_name: h.host.clone(),
                trust: Vec::new(),
            };
            spec.check_bounds()
                .map_err(|e| format!("{}: {e}", m.path.display()))?;
            (
                "http_json",
                Wire::Http {
                    spec,
                    addrs,
                    fetch_allow_private: false,
                    headers: h.headers.clone(),
                },
                Some(Box::new(WorkerKind::http())),
            )
        }
    };
    Ok(Plugin {
        id: m.plugin_id.clone(),
        version: m.version.clone(),
        summary: m.summary.clone(),
        dir: m.path.parent().map(PathBuf::from).unwrap_or_default(),
        bridge_kind,
        catalog: m.catalog.clone(),
        trust: TrustTier::Unverified,
        signer: None,
        lock_digest: None,
        capabilities,
        state: State::Ready {
            plugin: Loadable {
                id: m.plugin_id,
                wire: Arc::new(wire),
                generation: next_generation(),
            },
            kind,
            info: LoadInfo::default(),
            pool: None,
        },
    })
}

/// The operator's pins (`[plugins]` in loongd.toml) for a ready WASM plugin, checked before
/// any worker sees its module: a pin in `plugins.wasm_sha256` must match the module (and so
/// the manifest's pin, which matched already), and with `plugins.require_wasm_pin` a module
/// pinned nowhere is refused.
fn check_operator_pin(p: &Plugin, manifest: &Path, pins: &PluginsConfig) -> Result<(), String> {
    let State::Ready { plugin, .. } = &p.state else {
        return Ok(());
    };
    let Wire::Wasm(w) = plugin.wire.as_ref() else {
        return Ok(());
    };
    match pins.wasm_sha256.get(&p.id) {
        Some(expected) => {
            let actual = hex::encode(Sha256::digest(&w.module));
            if &actual != expected {
                return Err(format!(
                    "{}: loongd.toml plugins.wasm_sha256.{} pins the module to sha256 {expected}, but its sha256 is {actual}; correct the pin or replace the module",
                    manifest.display(),
                    p.id
                ));
            }
        }
        None if pins.require_wasm_pin && w.sha256.is_none() => {
            return Err(format!(
                "{}: the module is not pinned, and loongd.toml sets plugins.require_wasm_pin; pin its sha256 in metadata.component_sha256 or in loongd.toml plugins.wasm_sha256.{}",
                manifest.display(),
                p.id
            ));
        }
        None => {}
    }
    Ok(())
}

fn wire(m: PluginManifest, module: Vec<u8>) -> WasmPlugin {
    WasmPlugin {
        plugin_id: m.plugin_id,
        module,
        entrypoint: m.entrypoint,
        timeout_ms: m.limits.timeout_ms,
        max_memory_bytes: m.limits.max_memory_bytes,
        max_output_bytes: m.limits.max_output_bytes,
        max_module_bytes: m.limits.max_module_bytes,
        fuel: m.limits.fuel,
        config: m.config.into_iter().collect(),
        guest_readable_config_keys: m.guest_readable_config_keys,
        sha256: m.sha256,
        blocked_import_prefixes: m.blocked_import_prefixes,
        input: m.input,
        compiled: None,
        want_compiled: false,
    }
}

/// The plugins by id.
pub(crate) type Registry = BTreeMap<String, Plugin>;

#[cfg(test)]
mod tests {
    use super::*;

    /// `verify_package` on `dir` in a thread, or `None` when it has not answered in time.
    fn verify_within(dir: &Path) -> Option<Result<Option<TrustKey>, VerifyError>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = dir.to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(verify_package(&dir, &[]));
        });
        rx.recv_timeout(std::time::Duration::from_secs(10)).ok()
    }

    #[test]
    fn a_signature_file_that_is_a_fifo_a_link_or_endless_is_refused_without_waiting_or_reading_it_all(
    ) {
        use loong_ipc::package::SIGNATURE_FILE;
        // The control: no signature file is an unsigned package.
        let dir = tempfile::tempdir().expect("dir");
        assert!(matches!(verify_within(dir.path()), Some(Ok(None))));
        // A FIFO: refused at once, nothing waits for a writer.
        let fifo = tempfile::tempdir().expect("dir");
        nix::unistd::mkfifo(
            &fifo.path().join(SIGNATURE_FILE),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .expect("fifo");
        let outcome = verify_within(fifo.path());
        assert!(
            outcome.as_ref().is_some_and(|o| o
                .as_ref()
                .is_err_and(|e| e.0.contains("only regular files"))),
            "{outcome:?}"
        );
        // A link to an endless file: not followed (it was read to the end, without bound).
        let zero = tempfile::tempdir().expect("dir");
        std::os::unix::fs::symlink("/dev/zero", zero.path().join(SIGNATURE_FILE)).expect("symlink");
        let outcome = verify_within(zero.path());
        assert!(
            outcome.as_ref().is_some_and(|o| o
                .as_ref()
                .is_err_and(|e| e.0.contains("only regular files"))),
            "{outcome:?}"
        );
        // A regular file over the bound: refused naming it, read no further.
        let big = tempfile::tempdir().expect("dir");
        let file = std::fs::File::create(big.path().join(SIGNATURE_FILE)).expect("file");
        file.set_len(64 * package_bound()).expect("sparse");
        let outcome = verify_within(big.path());
        assert!(
            outcome
                .as_ref()
                .is_some_and(|o| o.as_ref().is_err_and(|e| e.0.contains("over"))),
            "{outcome:?}"
        );
    }

    #[test]
    fn staging_directories_take_no_plugins_place_and_the_listing_is_bounded() {
        let root = tempfile::tempdir().expect("dir");
        // loongd's own staging and removed copies (`.`-named) sort before every plugin.
        for i in 0..MAX_PLUGINS {
            std::fs::create_dir(root.path().join(format!(".staging-{i}"))).expect("dir");
        }
        for id in ["a-first", "b-second"] {
            std::fs::create_dir(root.path().join(id)).expect("dir");
        }
        // Control: a file is no plugin.
        std::fs::write(root.path().join("c-file"), b"").expect("file");
        let names = |dirs: Vec<PathBuf>| -> Vec<String> {
            dirs.iter()
                .filter_map(|d| Some(d.file_name()?.to_string_lossy().into_owned()))
                .collect()
        };
        assert_eq!(names(plugin_dirs(root.path())), ["a-first", "b-second"]);
        // Past the bound, the first by name are read, in name order.
        for i in 0..MAX_PLUGINS {
            std::fs::create_dir(root.path().join(format!("p-{i:05}"))).expect("dir");
        }
        let read = names(plugin_dirs(root.path()));
        assert_eq!(read.len(), MAX_PLUGINS);
        assert_eq!(read[..3], ["a-first", "b-second", "p-00000"]);
        assert_eq!(read[MAX_PLUGINS - 1], format!("p-{:05}", MAX_PLUGINS - 3));
    }

    fn package_bound() -> u64 {
        loong_ipc::package::MAX_SIGNATURE_BYTES as u64
    }
}
