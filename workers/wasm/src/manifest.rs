//! WASM plugin manifests: public Loong's `loong.plugin.json` shape, with
//! the `sandbox` block that says how the plugin runs here.
//!
//! Unknown top-level fields are refused (as public Loong refuses them);
//! public Loong's other top-level fields are accepted and ignored by this
//! engine. The module path (`metadata.component`) is relative to the
//! manifest and may not leave the plugin's directory.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::engine::{PluginLimits, PluginSpec};

/// The only manifest API version understood.
pub const MANIFEST_API_VERSION: &str = "v1alpha1";
/// The manifest's file name inside a plugin directory.
pub const MANIFEST_FILE: &str = "loong.plugin.json";
/// Largest manifest read.
pub const MAX_MANIFEST_BYTES: u64 = 256 * 1024;
/// Longest plugin id.
pub const MAX_PLUGIN_ID_LEN: usize = 64;

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
    provider_id: Option<serde_json::Value>,
    connector_name: Option<serde_json::Value>,
    channel_id: Option<serde_json::Value>,
    endpoint: Option<serde_json::Value>,
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
    max_memory_bytes: Option<usize>,
    max_output_bytes: Option<usize>,
    max_module_bytes: Option<usize>,
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
}

/// A parsed, validated WASM plugin manifest.
#[derive(Debug, Clone)]
pub struct WasmPluginManifest {
    /// Where the manifest was read from.
    pub path: PathBuf,
    pub version: String,
    pub summary: String,
    pub capabilities: Vec<String>,
    /// The module file, resolved against the manifest's directory.
    pub component: PathBuf,
    /// What the engine loads, with `module` still empty: [`Self::into_spec`] reads it.
    pub plugin: PluginSpec,
}

impl WasmPluginManifest {
    /// Reads and validates `dir/loong.plugin.json`.
    pub fn load_dir(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = read_capped(&path, MAX_MANIFEST_BYTES)?;
        Self::parse(&path, &text)
    }

    /// Validates manifest text; `path` names it in errors and roots `component`.
    pub fn parse(path: &Path, text: &[u8]) -> Result<Self, ManifestError> {
        let field = |field, message: String| ManifestError::Field {
            path: path.to_owned(),
            field,
            message,
        };
        let raw: RawManifest = serde_json::from_slice(text).map_err(|e| ManifestError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if raw.api_version != MANIFEST_API_VERSION {
            return Err(field(
                "api_version",
                format!("{:?} is not {MANIFEST_API_VERSION:?}", raw.api_version),
            ));
        }
        if raw.plugin_id.is_empty()
            || raw.plugin_id.len() > MAX_PLUGIN_ID_LEN
            || !raw
                .plugin_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
            || raw.plugin_id.starts_with('.')
        {
            return Err(field(
                "plugin_id",
                format!(
                    "{:?}: use 1 to {MAX_PLUGIN_ID_LEN} of a-z 0-9 - _ . (not leading .)",
                    raw.plugin_id
                ),
            ));
        }
        match raw.metadata.get("bridge_kind").map(String::as_str) {
            Some("wasm" | "wasm_component") => {}
            other => {
                return Err(field(
                    "metadata.bridge_kind",
                    format!("{other:?}: this loader takes \"wasm\" or \"wasm_component\""),
                ))
            }
        }
        let component = raw
            .metadata
            .get("component")
            .ok_or_else(|| field("metadata.component", "missing: name the .wasm file".into()))?;
        let relative = Path::new(component);
        if component.is_empty()
            || !relative
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(field(
                "metadata.component",
                format!("{component:?} must be a relative path inside the plugin directory"),
            ));
        }
        let tier = raw.sandbox.tier.as_deref().unwrap_or("restricted");
        if tier != "restricted" {
            return Err(field(
                "sandbox.tier",
                format!("{tier:?}: WASM plugins run in the restricted tier"),
            ));
        }
        if raw.sandbox.allow_wasi {
            return Err(field(
                "sandbox.allow_wasi",
                "WASI is not provided to plugins; remove allow_wasi".into(),
            ));
        }
        for key in &raw.sandbox.guest_readable_config_keys {
            if key.len() > crate::MAX_CONFIG_KEY_BYTES {
                return Err(field(
                    "sandbox.guest_readable_config_keys",
                    format!("a key is over {} bytes", crate::MAX_CONFIG_KEY_BYTES),
                ));
            }
        }
        let defaults = PluginLimits::default();
        let limits = PluginLimits {
            timeout_ms: raw.sandbox.timeout_ms.unwrap_or(defaults.timeout_ms),
            max_memory_bytes: raw
                .sandbox
                .max_memory_bytes
                .unwrap_or(defaults.max_memory_bytes),
            max_output_bytes: raw
                .sandbox
                .max_output_bytes
                .unwrap_or(defaults.max_output_bytes),
            fuel: raw.sandbox.fuel,
            max_module_bytes: raw
                .sandbox
                .max_module_bytes
                .unwrap_or(defaults.max_module_bytes),
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok(Self {
            path: path.to_owned(),
            version: raw.version,
            summary: raw.summary,
            capabilities: raw.capabilities,
            component: dir.join(relative),
            plugin: PluginSpec {
                plugin_id: raw.plugin_id,
                module: Vec::new(),
                entrypoint: raw
                    .metadata
                    .get("entrypoint")
                    .cloned()
                    .unwrap_or_else(|| "run".into()),
                limits,
                config: raw.sandbox.config,
                guest_readable_config_keys: raw.sandbox.guest_readable_config_keys,
                sha256: raw.sandbox.sha256,
                blocked_import_prefixes: raw.sandbox.blocked_import_prefixes,
            },
        })
    }

    /// Reads the module (refusing one over the size cap without reading it
    /// all) and returns the spec the engine loads.
    pub fn into_spec(self) -> Result<PluginSpec, ManifestError> {
        let cap = self
            .plugin
            .limits
            .max_module_bytes
            .min(crate::MAX_MODULE_BYTES_CEILING);
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
        // One byte over the cap is read so the engine reports the size error.
        let module = read_capped_lenient(&real, cap as u64 + 1)?;
        Ok(PluginSpec {
            module,
            ..self.plugin
        })
    }
}

fn read_capped_lenient(path: &Path, limit: u64) -> Result<Vec<u8>, ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, ManifestError> {
    let bytes = read_capped_lenient(path, limit + 1)?;
    if bytes.len() as u64 > limit {
        return Err(ManifestError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}
