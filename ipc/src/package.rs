//! A plugin package's canonical digest: what a publisher signs (`loongctl plugins sign`) and
//! loongd verifies at discovery. Both ends must compute it byte for byte alike, which is why
//! it lives in the one crate they share.
//!
//! The signed message is a line naming the format, then one line per regular file of the
//! package directory (recursively, the signature file excepted), sorted by path:
//!
//! ```text
//! loong-plugin-package v1
//! <sha256 hex>  <relative path>
//! ```
//!
//! A symlink, a special file, a name that is not UTF-8 or holds a newline, or a package past
//! the bounds below cannot be signed or verified: the error names it.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

/// The top-level fields a manifest may have (public Loong's).
pub const TOP_LEVEL_FIELDS: &[&str] = &[
    "api_version",
    "plugin_id",
    "version",
    "summary",
    "capabilities",
    "metadata",
    "sandbox",
    "provider_id",
    "connector_name",
    "channel_id",
    "endpoint",
    "trust_tier",
    "tags",
    "input_examples",
    "output_examples",
    "defer_loading",
    "setup",
    "slot_claims",
    "compatibility",
];

/// The fields of the `sandbox` block.
pub const SANDBOX_FIELDS: &[&str] = &[
    "tier",
    "timeout_ms",
    "max_memory_bytes",
    "max_output_bytes",
    "max_module_bytes",
    "fuel",
    "config",
    "guest_readable_config_keys",
    "sha256",
    "allow_wasi",
    "blocked_import_prefixes",
    "read",
    "write",
    "net",
    "max_line_bytes",
    "allow_private_network",
    "input",
    "egress",
];

/// The capability names a manifest may declare: ours (snake_case) and public Loong's
/// serialised spelling of the same `Capability` variant (serde's default, the variant name).
/// Both spellings mean the same capability; loongd keeps ours.
pub const CAPABILITIES: &[(&str, &str)] = &[
    ("invoke_tool", "InvokeTool"),
    ("invoke_connector", "InvokeConnector"),
    ("memory_read", "MemoryRead"),
    ("memory_write", "MemoryWrite"),
    ("filesystem_read", "FilesystemRead"),
    ("filesystem_write", "FilesystemWrite"),
    ("network_egress", "NetworkEgress"),
    ("observe_telemetry", "ObserveTelemetry"),
    ("control_read", "ControlRead"),
    ("control_write", "ControlWrite"),
    ("control_approvals", "ControlApprovals"),
    ("control_pairing", "ControlPairing"),
    ("control_acp", "ControlAcp"),
];

/// Public Loong's dotted capability names (its newer `capability.rs` wire names) that mean
/// one of ours.
pub const CAPABILITY_ALIASES: &[(&str, &str)] = &[
    ("fs.read", "filesystem_read"),
    ("fs.write", "filesystem_write"),
];

/// Public Loong's capabilities this kernel does not honour, with what each is: a manifest
/// declaring one is refused, naming it.
pub const REFUSED_CAPABILITIES: &[(&str, &str)] = &[
    ("ScheduleTask", "public Loong's task scheduling"),
    ("schedule_task", "public Loong's task scheduling"),
    ("agent.spawn_subagent", "public Loong's sub-agent spawning"),
];

/// Our name of a capability given in any accepted spelling (`invoke_tool`, `InvokeTool`,
/// `fs.read`), or `None` for a name that is none of them.
pub fn capability(name: &str) -> Option<&'static str> {
    CAPABILITIES
        .iter()
        .find(|(ours, upstream)| *ours == name || *upstream == name)
        .map(|(ours, _)| *ours)
        .or_else(|| {
            CAPABILITY_ALIASES
                .iter()
                .find(|(alias, _)| *alias == name)
                .map(|(_, ours)| *ours)
        })
}

/// Why a declared capability is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// A capability public Loong defines but this kernel does not honour.
    #[error("capability `{name}` is {what}, which this kernel does not honour: remove it")]
    NotHonoured {
        /// The name as the manifest gave it.
        name: String,
        /// What the capability is.
        what: &'static str,
    },
    /// A name no one defines.
    #[error("capability {name:?} is unknown: use one of {known} (or public Loong's spelling of one, such as InvokeTool)")]
    Unknown {
        /// The name as the manifest gave it.
        name: String,
        /// Our names, comma-separated.
        known: String,
    },
}

/// Our name of a declared capability, or why it is refused (one public Loong defines that we
/// do not honour is named as such, not as unknown).
pub fn check_capability(name: &str) -> Result<&'static str, CapabilityError> {
    if let Some(ours) = capability(name) {
        return Ok(ours);
    }
    match REFUSED_CAPABILITIES.iter().find(|(n, _)| *n == name) {
        Some((_, what)) => Err(CapabilityError::NotHonoured {
            name: name.to_owned(),
            what,
        }),
        None => Err(CapabilityError::Unknown {
            name: name.to_owned(),
            known: CAPABILITIES
                .iter()
                .map(|(ours, _)| *ours)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The bridge loongd runs a plugin with, named by `metadata.bridge_kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeKind {
    /// A WebAssembly module in the WASM worker.
    Wasm,
    /// A foreign program spoken to in JSON lines.
    ProcessStdio,
    /// An MCP server over stdio.
    McpStdio,
    /// A connector that posts JSON to an endpoint.
    HttpJson,
}

/// Every `metadata.bridge_kind` label accepted, with the bridge it runs on: ours and public
/// Loong's aliases (its `parse_bridge_kind_label`, which also ignores case and surrounding
/// whitespace).
pub const BRIDGE_KINDS: &[(&str, BridgeKind)] = &[
    ("wasm", BridgeKind::Wasm),
    ("wasm_component", BridgeKind::Wasm),
    ("process_stdio", BridgeKind::ProcessStdio),
    ("stdio", BridgeKind::ProcessStdio),
    ("mcp_stdio", BridgeKind::McpStdio),
    ("mcp_server", BridgeKind::McpStdio),
    ("mcp", BridgeKind::McpStdio),
    ("http_json", BridgeKind::HttpJson),
    ("http", BridgeKind::HttpJson),
];

/// Public Loong's bridge kinds this kernel does not run, with what each is.
pub const REFUSED_BRIDGE_KINDS: &[(&str, &str)] = &[
    (
        "native_ffi",
        "public Loong's native FFI bridge (a library loaded into the host process)",
    ),
    (
        "ffi",
        "public Loong's native FFI bridge (a library loaded into the host process)",
    ),
    ("acp_bridge", "public Loong's ACP bridge"),
    ("acp", "public Loong's ACP bridge"),
    ("acp_runtime", "public Loong's ACP runtime"),
    ("acpx", "public Loong's ACP runtime"),
    (
        "unknown",
        "public Loong's placeholder for a bridge it could not infer",
    ),
];

/// Why a `metadata.bridge_kind` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BridgeKindError {
    /// A kind public Loong names but this kernel does not run.
    #[error("bridge_kind `{label}` is {what}, which this kernel does not run: package it as wasm, process_stdio, mcp_stdio or http_json")]
    NotRun {
        /// The label as the manifest gave it.
        label: String,
        /// What the kind is.
        what: &'static str,
    },
    /// A label no one defines.
    #[error("bridge_kind {label:?} is unknown: use wasm, process_stdio, mcp_stdio or http_json (or one of public Loong's aliases)")]
    Unknown {
        /// The label as the manifest gave it.
        label: String,
    },
}

/// The bridge a `metadata.bridge_kind` label runs on, compared as public Loong does (ASCII
/// case and surrounding whitespace ignored). A kind we do not run is refused by name.
pub fn bridge_kind(label: &str) -> Result<BridgeKind, BridgeKindError> {
    let key = label.trim().to_ascii_lowercase();
    if let Some((_, kind)) = BRIDGE_KINDS.iter().find(|(name, _)| *name == key) {
        return Ok(*kind);
    }
    match REFUSED_BRIDGE_KINDS.iter().find(|(name, _)| *name == key) {
        Some((_, what)) => Err(BridgeKindError::NotRun {
            label: label.to_owned(),
            what,
        }),
        None => Err(BridgeKindError::Unknown {
            label: label.to_owned(),
        }),
    }
}

/// The built-in tools' names (loongd's `file.read`, …): a plugin may not take one as its id,
/// which loongd's loader and `loongctl plugins doctor` both check against this list.
pub const BUILTIN_TOOLS: &[&str] = &[
    "file.read",
    "file.write",
    "file.edit",
    "shell.exec",
    "web.fetch",
    "programmatic_tool_call",
    "browser.open",
    "browser.extract",
    "browser.click",
    "browser.type",
    "browser.wait",
    "browser.screenshot",
    "browser.close",
];

/// The first line of the signed message.
pub const PACKAGE_FORMAT: &str = "loong-plugin-package v1";
/// The detached signature's file name inside the package.
pub const SIGNATURE_FILE: &str = "loong.plugin.sig";
/// The largest signature file read.
pub const MAX_SIGNATURE_BYTES: usize = 1024 * 1024;
/// Bounds on a package.
pub const MAX_PACKAGE_FILES: usize = 1024;
pub const MAX_PACKAGE_BYTES: u64 = 256 * 1024 * 1024;
pub const MAX_PACKAGE_DEPTH: usize = 8;
/// Bound on the entries of a package (files and directories, empty ones too) and of the names
/// one walk may list: an operator's package is walked, listed and unpacked only this far.
pub const MAX_PACKAGE_ENTRIES: usize = 4 * MAX_PACKAGE_FILES;

/// One file of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    /// Relative to the package directory, `/`-separated.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// A package's files and the message a signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageDigest {
    pub files: Vec<PackageFile>,
    /// The signed message (see the module docs).
    pub message: Vec<u8>,
    /// sha256 of `message`, hex: the package's identity in the lockfile and the audit trail.
    pub digest: String,
}

/// Why a package could not be digested.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0}: a package may hold only regular files and directories (no symlinks or special files)"
    )]
    NotRegular(PathBuf),
    #[error("{0}: a file name must be UTF-8 without newlines")]
    BadName(PathBuf),
    #[error("{0}: the package is over {MAX_PACKAGE_FILES} files, {MAX_PACKAGE_BYTES} bytes or {MAX_PACKAGE_DEPTH} levels")]
    TooLarge(PathBuf),
}

/// What an install refuses in a package's tree that its digest does not (loongd's staging copy
/// refuses each with this very text, which its unit tests hold it to), so that
/// `loongctl plugins doctor` refuses it too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("{0}: a file with other hard links is not installed; copy it into the package")]
    HardLink(String),
    #[error("{0}: a package may hold only regular files and directories (no symlinks, mount points or special files)")]
    NotRegular(String),
    #[error("{0}: the package is empty")]
    Empty(String),
}

/// The tree problems of the package directory `dir` (paths relative to it), within the
/// package bounds (a tree past them is [`digest`]'s to refuse).
pub fn tree_problems(dir: &Path) -> Vec<TreeError> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let Ok(root) = std::fs::symlink_metadata(dir) else {
        return out;
    };
    let mut files = 0usize;
    let mut entries = 0usize;
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((at, depth)) = stack.pop() {
        let Ok(list) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in list.flatten() {
            entries += 1;
            if entries > MAX_PACKAGE_ENTRIES || depth > MAX_PACKAGE_DEPTH {
                return out;
            }
            let path = entry.path();
            let rel = path
                .strip_prefix(dir)
                .map(|r| shown(&r.to_string_lossy()))
                .unwrap_or_default();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if meta.dev() != root.dev() {
                    out.push(TreeError::NotRegular(rel));
                } else {
                    stack.push((path, depth + 1));
                }
            } else if meta.is_file() {
                if meta.nlink() != 1 {
                    out.push(TreeError::HardLink(rel.clone()));
                }
                if rel != SIGNATURE_FILE {
                    files += 1;
                }
            }
        }
    }
    if files == 0 {
        out.push(TreeError::Empty(dir.display().to_string()));
    }
    out
}

/// Digests the package directory `dir`.
pub fn digest(dir: &Path) -> Result<PackageDigest, PackageError> {
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut entries = 0usize;
    walk(dir, dir, 0, &mut files, &mut total, &mut entries)?;
    files.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let mut message = format!("{PACKAGE_FORMAT}\n").into_bytes();
    for f in &files {
        message.extend_from_slice(format!("{}  {}\n", f.sha256, f.path).as_bytes());
    }
    let digest = hex(&Sha256::digest(&message));
    Ok(PackageDigest {
        files,
        message,
        digest,
    })
}

fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    files: &mut Vec<PackageFile>,
    total: &mut u64,
    entries: &mut usize,
) -> Result<(), PackageError> {
    if depth > MAX_PACKAGE_DEPTH {
        return Err(PackageError::TooLarge(dir.to_path_buf()));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackageError::Io { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        // Empty directories too: a walk lists at most this many names.
        *entries += 1;
        if *entries > MAX_PACKAGE_ENTRIES {
            return Err(PackageError::TooLarge(path));
        }
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_dir() {
            walk(root, &path, depth + 1, files, total, entries)?;
            continue;
        }
        if !kind.is_file() {
            return Err(PackageError::NotRegular(path));
        }
        let rel = path
            .strip_prefix(root)
            .ok()
            .and_then(|r| r.to_str())
            .filter(|r| !r.contains('\n'))
            .ok_or_else(|| PackageError::BadName(path.clone()))?
            .to_string();
        if rel == SIGNATURE_FILE {
            continue;
        }
        if files.len() == MAX_PACKAGE_FILES {
            return Err(PackageError::TooLarge(path));
        }
        let listed = entry.metadata().map_err(io(&path))?;
        let mut f = open_listed(&path, &listed)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut bytes = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(io(&path))?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            *total += n as u64;
            if *total > MAX_PACKAGE_BYTES {
                return Err(PackageError::TooLarge(path));
            }
            hasher.update(&buf[..n]);
        }
        files.push(PackageFile {
            path: rel,
            sha256: hex(&hasher.finalize()),
            bytes,
        });
    }
    Ok(())
}

/// Opens the regular file the walk listed at `path` (`listed`, its `lstat`), never another:
/// not through a link (`O_NOFOLLOW`), not waiting on a FIFO (`O_NONBLOCK`), and refused
/// unless it is a regular file and the very file listed (a directory on its path swapped for
/// a link since would lead elsewhere).
fn open_listed(path: &Path, listed: &std::fs::Metadata) -> Result<std::fs::File, PackageError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => PackageError::NotRegular(path.to_path_buf()),
            _ => PackageError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let opened = f.metadata().map_err(|source| PackageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !opened.is_file() || (opened.dev(), opened.ino()) != (listed.dev(), listed.ino()) {
        return Err(PackageError::NotRegular(path.to_path_buf()));
    }
    Ok(f)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A detached package signature (`loong.plugin.sig`, JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSignature {
    /// [`PACKAGE_FORMAT`].
    pub format: String,
    /// The signing key's id (what `loongctl keys list` shows).
    pub key_id: String,
    /// The package digest signed, hex.
    pub digest: String,
    /// The ed25519 signature over the message, hex (128 digits).
    pub signature: String,
    /// The files signed, `[path, sha256]` (part of the signed message; kept here so that a
    /// verifier can name the file that changed).
    pub files: Vec<(String, String)>,
}

/// Why a signature file cannot be taken at its word: each names only what loongd or loongctl
/// recomputed or what the format allows, never free text from the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureFileError {
    #[error("not a signature file ({0}); sign the package again with `loongctl plugins sign`")]
    Syntax(String),
    #[error(
        "its format is not {PACKAGE_FORMAT:?}; sign the package again with `loongctl plugins sign`"
    )]
    Format,
    #[error("its key id is not {KEY_ID_HEX} hex digits; sign the package again")]
    KeyId,
    #[error("its file list does not give its digest, so the list is not what was signed; sign the package again")]
    FileList,
}

/// The length of a key id in hex digits (the first 8 bytes of sha256(public key)).
pub const KEY_ID_HEX: usize = 16;

/// How one file of a package compares with what was signed (or locked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    Same,
    Changed,
    Added,
    Removed,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Same => "ok",
            FileState::Changed => "changed",
            FileState::Added => "added",
            FileState::Removed => "removed",
        }
    }
}

/// A path as it may be shown: control characters escaped, so a hostile name cannot forge
/// lines or terminal sequences in a message.
pub fn shown(path: &str) -> String {
    if path.chars().any(char::is_control) {
        path.escape_debug().to_string()
    } else {
        path.to_string()
    }
}

/// Every path of `signed` and `now`, sorted, with how it compares.
pub fn compare(signed: &[(String, String)], now: &PackageDigest) -> Vec<(String, FileState)> {
    let signed: std::collections::BTreeMap<&str, &str> = signed
        .iter()
        .map(|(p, h)| (p.as_str(), h.as_str()))
        .collect();
    let current: std::collections::BTreeMap<&str, &str> = now
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.sha256.as_str()))
        .collect();
    let mut out: Vec<(String, FileState)> = current
        .iter()
        .map(|(p, h)| {
            let state = match signed.get(p) {
                Some(s) if s == h => FileState::Same,
                Some(_) => FileState::Changed,
                None => FileState::Added,
            };
            (p.to_string(), state)
        })
        .collect();
    out.extend(
        signed
            .keys()
            .filter(|p| !current.contains_key(*p))
            .map(|p| (p.to_string(), FileState::Removed)),
    );
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out
}

impl PackageSignature {
    /// Parses a signature file and checks what can be checked without a key: its format, the
    /// shape of its key id, and that its file list rebuilds its digest (so that, once the
    /// signature verifies over [`PackageSignature::message`], the list is authenticated too).
    pub fn parse(bytes: &[u8]) -> Result<PackageSignature, SignatureFileError> {
        let sig: PackageSignature = serde_json::from_slice(bytes).map_err(|e| {
            SignatureFileError::Syntax(format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        if sig.format != PACKAGE_FORMAT {
            return Err(SignatureFileError::Format);
        }
        if sig.key_id.len() != KEY_ID_HEX || !sig.key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SignatureFileError::KeyId);
        }
        let rebuilt = sig.message().ok_or(SignatureFileError::FileList)?;
        if hex(&Sha256::digest(&rebuilt)) != sig.digest {
            return Err(SignatureFileError::FileList);
        }
        Ok(sig)
    }

    /// The message the file list stands for (what the signature must verify over), or `None`
    /// when a name or hash could not have been produced by [`digest`] (a newline, a hash
    /// that is not 64 lowercase hex digits, an unsorted or repeated path).
    pub fn message(&self) -> Option<Vec<u8>> {
        let mut message = format!("{PACKAGE_FORMAT}\n").into_bytes();
        let mut last: Option<&str> = None;
        for (path, sha) in &self.files {
            let hash_ok =
                sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            let sorted = last.is_none_or(|l| l.as_bytes() < path.as_bytes());
            if !hash_ok || !sorted || path.is_empty() || path.contains('\n') {
                return None;
            }
            last = Some(path);
            message.extend_from_slice(format!("{sha}  {path}\n").as_bytes());
        }
        Some(message)
    }

    /// The files that differ between what was signed and `now`: changed, added or removed.
    /// Only meaningful once the signature verified (the list is then authenticated).
    pub fn changed_files(&self, now: &PackageDigest) -> Vec<String> {
        compare(&self.files, now)
            .into_iter()
            .filter(|(_, s)| *s != FileState::Same)
            .map(|(p, s)| format!("{} ({})", shown(&p), s.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_lists_a_bounded_tree_and_reads_only_the_regular_file_it_listed() {
        // The control: a one-file package digests.
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("a.txt"), "a").expect("file");
        let d = digest(dir.path()).expect("digests");
        assert_eq!(d.files.len(), 1);
        // Empty directories are entries too: past the bound, refused.
        for i in 0..=MAX_PACKAGE_ENTRIES {
            std::fs::create_dir(dir.path().join(format!("d{i}"))).expect("dir");
        }
        let err = digest(dir.path()).expect_err("too many entries");
        assert!(matches!(err, PackageError::TooLarge(_)), "{err}");
        // A file listed, then swapped for a FIFO or for a link, is not opened as listed: the
        // open neither waits for a writer nor follows the link.
        let swap = tempfile::tempdir().expect("dir");
        let path = swap.path().join("f");
        std::fs::write(&path, "f").expect("file");
        let listed = std::fs::symlink_metadata(&path).expect("lstat");
        std::fs::remove_file(&path).expect("rm");
        let status = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo");
        assert!(status.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let fifo = path.clone();
        let fifo_listed = listed.clone();
        std::thread::spawn(move || {
            let _ = tx.send(open_listed(&fifo, &fifo_listed).map(|_| ()));
        });
        let opened = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the open does not wait on a FIFO");
        assert!(
            matches!(opened, Err(PackageError::NotRegular(_))),
            "{opened:?}"
        );
        std::fs::remove_file(&path).expect("rm");
        let outside = tempfile::NamedTempFile::new().expect("outside");
        std::os::unix::fs::symlink(outside.path(), &path).expect("symlink");
        let opened = open_listed(&path, &listed);
        assert!(
            matches!(opened, Err(PackageError::NotRegular(_))),
            "{opened:?}"
        );
    }

    #[test]
    fn public_loongs_capability_spelling_means_the_same_capability_as_ours() {
        for (ours, upstream) in CAPABILITIES {
            assert_eq!(capability(ours), Some(*ours), "{ours}");
            assert_eq!(capability(upstream), Some(*ours), "{upstream}");
        }
        assert_eq!(capability("InvokeConnector"), Some("invoke_connector"));
        assert_eq!(capability("fs.read"), Some("filesystem_read"));
        assert_eq!(capability("fs.write"), Some("filesystem_write"));
        for refused in ["invokeconnector", "Invoke_Tool", "invoke.tool", "", "root"] {
            assert_eq!(capability(refused), None, "{refused:?}");
            let e = check_capability(refused).expect_err(refused);
            assert!(matches!(e, CapabilityError::Unknown { .. }), "{e}");
            assert!(e.to_string().contains(&format!("{refused:?}")), "{e}");
        }
        for (name, _) in REFUSED_CAPABILITIES {
            let e = check_capability(name).expect_err(name);
            assert!(matches!(e, CapabilityError::NotHonoured { .. }), "{e}");
            assert!(e.to_string().contains(&format!("`{name}`")), "{e}");
            assert!(e.to_string().contains("does not honour"), "{e}");
        }
        assert_eq!(check_capability("InvokeTool"), Ok("invoke_tool"));
    }

    #[test]
    fn every_bridge_kind_alias_maps_to_the_bridge_of_our_name_or_is_refused_by_name() {
        let ours = [
            ("wasm", BridgeKind::Wasm),
            ("process_stdio", BridgeKind::ProcessStdio),
            ("mcp_stdio", BridgeKind::McpStdio),
            ("http_json", BridgeKind::HttpJson),
        ];
        for (name, kind) in ours {
            assert_eq!(bridge_kind(name), Ok(kind), "{name}");
        }
        let aliases = [
            ("wasm_component", "wasm"),
            ("stdio", "process_stdio"),
            ("mcp", "mcp_stdio"),
            ("mcp_server", "mcp_stdio"),
            ("http", "http_json"),
            (" HTTP_JSON ", "http_json"),
            ("Wasm", "wasm"),
        ];
        for (alias, name) in aliases {
            assert_eq!(bridge_kind(alias), bridge_kind(name), "{alias}");
        }
        for label in [
            "native_ffi",
            "ffi",
            "FFI",
            "acp_bridge",
            "acp",
            "acp_runtime",
            "acpx",
            "unknown",
        ] {
            let e = bridge_kind(label).expect_err(label);
            assert!(matches!(e, BridgeKindError::NotRun { .. }), "{label}: {e}");
            let text = e.to_string();
            assert!(text.contains(&format!("`{label}`")), "{text}");
            assert!(text.contains("does not run"), "{text}");
        }
        assert!(bridge_kind("ffi")
            .expect_err("ffi")
            .to_string()
            .contains("native FFI bridge"));
        let e = bridge_kind("carrier_pigeon").expect_err("unknown");
        assert!(matches!(e, BridgeKindError::Unknown { .. }), "{e}");
        assert!(e.to_string().contains("carrier_pigeon"), "{e}");
    }

    #[test]
    fn a_signature_file_is_taken_only_when_its_file_list_gives_its_digest() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("a.txt"), "a").expect("a");
        let d = digest(dir.path()).expect("digest");
        let sig = |files: Vec<(String, String)>, key_id: &str| {
            serde_json::to_vec(&PackageSignature {
                format: PACKAGE_FORMAT.into(),
                key_id: key_id.into(),
                digest: d.digest.clone(),
                signature: String::new(),
                files,
            })
            .expect("json")
        };
        let honest: Vec<(String, String)> = d
            .files
            .iter()
            .map(|f| (f.path.clone(), f.sha256.clone()))
            .collect();
        let parsed = PackageSignature::parse(&sig(honest.clone(), "0123456789abcdef"))
            .expect("an honest file parses");
        assert_eq!(parsed.message().as_deref(), Some(d.message.as_slice()));
        // A list with forged names (a newline to fake a line of a message) does not.
        let mut forged = honest.clone();
        forged.push(("zz\nrefusing: all is fine".into(), "0".repeat(64)));
        assert_eq!(
            PackageSignature::parse(&sig(forged, "0123456789abcdef")),
            Err(SignatureFileError::FileList)
        );
        // Nor a key id that is free text, nor JSON that is not a signature (the error names
        // the position, never the file's text).
        assert_eq!(
            PackageSignature::parse(&sig(honest, "vendor\nok")),
            Err(SignatureFileError::KeyId)
        );
        let err = PackageSignature::parse(br#"{"format": "x", "zz\nforged": 1}"#)
            .expect_err("not a signature")
            .to_string();
        assert!(!err.contains("forged"), "{err}");
        assert_eq!(shown("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
    }

    #[test]
    fn the_digest_covers_every_file_but_the_signature_in_a_fixed_order() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join("sub")).expect("sub");
        std::fs::write(dir.path().join("b.txt"), "b").expect("b");
        std::fs::write(dir.path().join("sub/a.txt"), "a").expect("a");
        let one = digest(dir.path()).expect("digest");
        assert_eq!(
            one.files
                .iter()
                .map(|f| f.path.as_str())
                .collect::<Vec<_>>(),
            ["b.txt", "sub/a.txt"]
        );
        assert!(one.message.starts_with(b"loong-plugin-package v1\n"));
        // The signature file is not covered; any other change is.
        std::fs::write(dir.path().join(SIGNATURE_FILE), "{}").expect("sig");
        assert_eq!(digest(dir.path()).expect("digest").digest, one.digest);
        std::fs::write(dir.path().join("sub/a.txt"), "A").expect("tamper");
        assert_ne!(digest(dir.path()).expect("digest").digest, one.digest);
        std::fs::write(dir.path().join("sub/a.txt"), "a").expect("restore");
        std::fs::write(dir.path().join("c.txt"), "").expect("add");
        assert_ne!(digest(dir.path()).expect("digest").digest, one.digest);
        // A symlink cannot be signed.
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).expect("link");
        let err = digest(dir.path()).expect_err("symlink");
        assert!(err.to_string().contains("link"), "{err}");
    }
}
