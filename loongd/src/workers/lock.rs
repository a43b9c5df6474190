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

/// Why the lockfile could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: over {MAX_LOCK_BYTES} bytes; restore it from a backup or reinstall the plugins", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: format {found:?}, expected {LOCK_FORMAT:?}", path.display())]
    Format { path: PathBuf, found: String },
}

/// Reads the lockfile (absent: empty).
pub fn read(home: &Path) -> Result<Lock, LockError> {
    let p = path(home);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lock::new()),
        Err(source) => return Err(LockError::Io { path: p, source }),
    };
    if bytes.len() as u64 > MAX_LOCK_BYTES {
        return Err(LockError::TooLarge { path: p });
    }
    let file: LockFile = match serde_json::from_slice(&bytes) {
        Ok(f) => f,
        Err(source) => return Err(LockError::Json { path: p, source }),
    };
    if file.format != LOCK_FORMAT {
        return Err(LockError::Format {
            path: p,
            found: file.format,
        });
    }
    Ok(file.plugins)
}

/// Replaces the lockfile with `lock`, atomically.
pub fn write(home: &Path, lock: &Lock) -> Result<(), LockError> {
    let p = path(home);
    let tmp = home.join(format!(".{LOCK_FILE}.tmp"));
    let file = LockFile {
        format: LOCK_FORMAT.into(),
        plugins: lock.clone(),
    };
    let text = serde_json::to_vec_pretty(&file).map_err(|source| LockError::Json {
        path: p.clone(),
        source,
    })?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LockError::Io { path, source }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&text)
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, &p).map_err(io(&p))?;
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
