//! The lockfile, `HOME/plugins.lock`: for every installed plugin its version, the digest and
//! file hashes of its package, its signer and effective tier, and whether the operator
//! enabled it. Written whole and atomically (a temporary file, fsync, rename) on every
//! install, upgrade, enable, disable and remove; read at each discovery, where a package that
//! no longer matches its entry is refused as drift.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The file's first field.
pub const LOCK_FORMAT: &str = "loong-plugins-lock v1";
/// The lockfile's name in loongd's home.
pub const LOCK_FILE: &str = "plugins.lock";
/// Largest lockfile read.
pub const MAX_LOCK_BYTES: u64 = 16 * 1024 * 1024;

/// One installed plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    pub version: String,
    pub digest: String,
    /// `[path, sha256]` of every file of the package.
    pub files: Vec<(String, String)>,
    pub signer: Option<String>,
    pub trust: String,
    /// The tier the operator capped this plugin at when installing it (`--trust`).
    #[serde(default)]
    pub ceiling: Option<String>,
    pub enabled: bool,
    pub installed_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockFile {
    format: String,
    plugins: BTreeMap<String, LockEntry>,
}

/// The entries by plugin id.
pub type Lock = BTreeMap<String, LockEntry>;

fn path(home: &Path) -> PathBuf {
    home.join(LOCK_FILE)
}

/// Reads the lockfile (absent: empty).
pub fn read(home: &Path) -> Result<Lock, String> {
    let p = path(home);
    let shown = p.display();
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lock::new()),
        Err(e) => return Err(format!("{shown}: {e}")),
    };
    if bytes.len() as u64 > MAX_LOCK_BYTES {
        return Err(format!("{shown}: over {MAX_LOCK_BYTES} bytes"));
    }
    let file: LockFile = serde_json::from_slice(&bytes).map_err(|e| format!("{shown}: {e}"))?;
    if file.format != LOCK_FORMAT {
        return Err(format!(
            "{shown}: format {:?}, expected {LOCK_FORMAT:?}",
            file.format
        ));
    }
    Ok(file.plugins)
}

/// Replaces the lockfile with `lock`, atomically.
pub fn write(home: &Path, lock: &Lock) -> Result<(), String> {
    let p = path(home);
    let tmp = home.join(format!(".{LOCK_FILE}.tmp"));
    let file = LockFile {
        format: LOCK_FORMAT.into(),
        plugins: lock.clone(),
    };
    let text = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(&text)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &p).map_err(|e| format!("{}: {e}", p.display()))?;
    if let Ok(dir) = std::fs::File::open(home) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// What differs between a lock entry and the package in `dir` now (empty: nothing).
pub fn drift(entry: &LockEntry, dir: &Path) -> Vec<String> {
    if !dir.is_dir() {
        return vec![format!("{} is missing", dir.display())];
    }
    let now = match loong_ipc::package::digest(dir) {
        Ok(d) => d,
        Err(e) => return vec![e.to_string()],
    };
    if now.digest == entry.digest {
        return Vec::new();
    }
    let sig = loong_ipc::package::PackageSignature {
        format: String::new(),
        key_id: String::new(),
        digest: entry.digest.clone(),
        signature: String::new(),
        files: entry.files.clone(),
    };
    let changed = sig.changed_files(&now);
    if changed.is_empty() {
        vec!["the digest differs".into()]
    } else {
        changed
    }
}
