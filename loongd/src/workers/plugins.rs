//! Plugin discovery: `HOME/plugins/<plugin_id>/loong.plugin.json`, read at start and on
//! `loongctl plugins reload`.
//!
//! loongd parses the manifest and reads the module's bytes (bounded, never through a symlink
//! out of the plugin's directory); it never compiles a module. Each ready plugin is then
//! loaded once in a worker, which is where a module that is invalid, too large, pinned to
//! another digest or importing something refused is found out. A broken plugin is kept in a
//! `failed` state with the reason; it never stops loongd or another plugin.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use loong_ipc::{PluginView, WasmPlugin};
use loong_profiles::plugin::{PluginManifest, MANIFEST_FILE};

use super::Loadable;

/// The most plugin directories read.
pub const MAX_PLUGINS: usize = 256;

/// Each discovery's plugins get a new generation, so workers reload changed modules.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A discovered plugin.
#[derive(Debug, Clone)]
pub(crate) struct Plugin {
    pub id: String,
    pub version: String,
    pub summary: String,
    pub dir: PathBuf,
    pub state: State,
}

/// Where a plugin stands.
#[derive(Debug, Clone)]
pub(crate) enum State {
    /// Loadable; `sha256` once a worker loaded it.
    Ready {
        plugin: Loadable,
        sha256: Option<String>,
    },
    /// Not runnable, and why.
    Failed(String),
}

impl Plugin {
    pub(crate) fn view(&self) -> PluginView {
        let (state, error, sha256) = match &self.state {
            State::Ready { sha256, .. } => ("ready", None, sha256.clone()),
            State::Failed(why) => ("failed", Some(why.clone()), None),
        };
        PluginView {
            id: self.id.clone(),
            version: self.version.clone(),
            summary: self.summary.clone(),
            bridge_kind: "wasm".into(),
            state: state.into(),
            error,
            sha256,
            path: self.dir.display().to_string(),
        }
    }
}

/// Reads every plugin directory under `root` (absent: no plugins), sorted by id.
pub(crate) fn discover(root: &Path) -> Vec<Plugin> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    let mut out: Vec<Plugin> = Vec::new();
    for dir in dirs.into_iter().take(MAX_PLUGINS) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let failed = |why: String| Plugin {
            id: name.clone(),
            version: String::new(),
            summary: String::new(),
            dir: dir.clone(),
            state: State::Failed(why),
        };
        let plugin = match PluginManifest::load_dir(&dir) {
            Err(e) => failed(e.to_string()),
            Ok(m) if m.plugin_id != name => failed(format!(
                "{}: plugin_id {:?} does not match its directory {name:?}; rename one",
                dir.join(MANIFEST_FILE).display(),
                m.plugin_id
            )),
            Ok(m) => match m.read_module() {
                Err(e) => failed(e.to_string()),
                Ok(module) => Plugin {
                    id: m.plugin_id.clone(),
                    version: m.version.clone(),
                    summary: m.summary.clone(),
                    dir: dir.clone(),
                    state: State::Ready {
                        plugin: Loadable {
                            wire: Arc::new(wire(m, module)),
                            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
                        },
                        sha256: None,
                    },
                },
            },
        };
        out.push(plugin);
    }
    out
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
    }
}

/// The plugins by id.
pub(crate) type Registry = BTreeMap<String, Plugin>;
