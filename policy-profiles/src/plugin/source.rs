//! Where a package's manifest is, found as public Loong's scanner finds it: its
//! `loong.plugin.json`, or else a manifest embedded in a source file as JSON between a
//! `LOONG_PLUGIN_START` and a `LOONG_PLUGIN_END` comment line (`#`, `//`, `--`, `;`, `/*`, `*`
//! comment prefixes are stripped from each line). A `loong.plugin.json` wins; an embedded
//! manifest beside it is only checked not to contradict it (public Loong refuses such a
//! conflict too). A package with neither but an OpenClaw manifest (`openclaw.plugin.json`, or
//! `package.json` with an `openclaw` block) is refused, naming what it lacks here.
//!
//! Unlike public Loong's scanner, the search is bounded: at most [`MAX_SOURCE_FILES`] files,
//! [`MAX_SOURCE_DEPTH`] levels, and a file over [`MAX_SOURCE_FILE_BYTES`] is not searched.
//! [`MAX_SOURCE_ENTRIES`] entries listed. Symlinks are never followed: every file is opened
//! beneath the package directory's descriptor, through no link, without blocking, and read only
//! when it is a regular file.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::{ManifestError, MANIFEST_FILE, MAX_MANIFEST_BYTES};

/// Why an embedded manifest block does not parse; the message says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

impl From<String> for SourceError {
    fn from(s: String) -> Self {
        SourceError(s)
    }
}

impl From<&str> for SourceError {
    fn from(s: &str) -> Self {
        SourceError(s.to_string())
    }
}

/// The comment line that opens an embedded manifest.
pub const START_MARKER: &str = "LOONG_PLUGIN_START";
/// The comment line that closes it.
pub const END_MARKER: &str = "LOONG_PLUGIN_END";
/// The most files of one package searched for an embedded manifest (more refuse the package).
pub const MAX_SOURCE_FILES: usize = loong_ipc::package::MAX_PACKAGE_FILES;
/// The most entries (files and directories, empty ones too) one search lists.
pub const MAX_SOURCE_ENTRIES: usize = loong_ipc::package::MAX_PACKAGE_ENTRIES;
/// A larger file is not searched for an embedded manifest (so one search reads at most
/// `MAX_SOURCE_FILES * MAX_SOURCE_FILE_BYTES`, 256 MiB, the most a package may hold).
pub const MAX_SOURCE_FILE_BYTES: u64 = 256 * 1024;
/// How deep below the package directory files are searched.
pub const MAX_SOURCE_DEPTH: usize = loong_ipc::package::MAX_PACKAGE_DEPTH;
/// Directories never searched (public Loong's scanner skips the same).
pub const SKIPPED_DIRS: &[&str] = &[".git", "target", "node_modules", ".venv", ".idea", ".codex"];
/// OpenClaw's modern manifest file.
pub const OPENCLAW_MANIFEST_FILE: &str = "openclaw.plugin.json";
/// The npm file a legacy OpenClaw package declares itself in (`openclaw` block).
pub const PACKAGE_JSON_FILE: &str = "package.json";
/// The comment prefixes stripped from an embedded manifest's lines (public Loong's).
const COMMENT_PREFIXES: &[&str] = &["//", "#", "--", ";", "/*", "*/", "*"];
/// The fields an embedded manifest beside a `loong.plugin.json` may not contradict.
pub const IDENTITY_FIELDS: &[&str] = &[
    "plugin_id",
    "provider_id",
    "connector_name",
    "channel_id",
    "endpoint",
];

/// Where a manifest was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestSource {
    /// The package's `loong.plugin.json`.
    Package,
    /// A marker block in this source file (relative to the package directory).
    EmbeddedSource(PathBuf),
}

/// A manifest found in a package directory.
#[derive(Debug)]
pub(crate) struct Found {
    /// The file it was read from.
    pub path: PathBuf,
    /// Its JSON text (for an embedded one, the block with the comment prefixes stripped).
    pub text: Vec<u8>,
    pub source: ManifestSource,
}

/// The package's manifest: `loong.plugin.json`, else its one embedded source manifest. Every
/// file is read beneath the package directory's descriptor (see [`super::package::open_beneath`]).
pub(crate) fn find(dir: &Path) -> Result<Found, ManifestError> {
    let root = super::open_package_dir(dir)?;
    let package = dir.join(MANIFEST_FILE);
    let package_text = match super::read_beneath_capped(
        &root,
        dir,
        Path::new(MANIFEST_FILE),
        MAX_MANIFEST_BYTES,
    ) {
        Ok(text) => Some(text),
        Err(ManifestError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let embedded = embedded_manifests(&root, dir, package_text.as_deref())?;
    if let Some(text) = package_text {
        return Ok(Found {
            path: package,
            text,
            source: ManifestSource::Package,
        });
    }
    match embedded {
        Embedded::None => Err(openclaw(&root, dir)?.unwrap_or(ManifestError::NoManifest {
            dir: dir.to_owned(),
        })),
        Embedded::One(file, block) => {
            let relative = file.strip_prefix(dir).unwrap_or(&file).to_path_buf();
            Ok(Found {
                path: file,
                text: block.into_bytes(),
                source: ManifestSource::EmbeddedSource(relative),
            })
        }
        Embedded::Several(files) => Err(ManifestError::SeveralEmbedded {
            dir: dir.to_owned(),
            files: files
                .iter()
                .map(|f| f.strip_prefix(dir).unwrap_or(f).display().to_string())
                .collect(),
        }),
    }
}

/// Whether `dir` holds a manifest as [`find`] looks for one: `loong.plugin.json`, a source
/// file within the package's bounds embedding one (at any level, as install and discovery
/// search), or an OpenClaw manifest (which [`find`] then refuses by name). What an archive's
/// unpacking asks to find the package in it.
pub fn holds_manifest(dir: &Path) -> bool {
    // The same search install and discovery run (a source file anywhere within the package's
    // bounds, not only at its top): anything but "no manifest" holds one, and a manifest it
    // then refuses (several embedded, OpenClaw, unreadable) is reported by install by name.
    !matches!(find(dir), Err(ManifestError::NoManifest { .. }))
}

/// The embedded manifests of a package: at most one block is kept in memory.
enum Embedded {
    None,
    One(PathBuf, String),
    /// The files holding one, in path order (their blocks are not kept).
    Several(Vec<PathBuf>),
}

/// The embedded manifest blocks in the package's files, by path. Beside a `loong.plugin.json`
/// (`package`) each is checked not to contradict it as it is found.
fn embedded_manifests(
    root: &File,
    dir: &Path,
    package: Option<&[u8]>,
) -> Result<Embedded, ManifestError> {
    let mut files = Vec::new();
    let mut entries = 0;
    collect(dir, 0, &mut files, &mut entries)?;
    files.sort();
    let mut out = Embedded::None;
    for (file, len) in files {
        if len > MAX_SOURCE_FILE_BYTES {
            continue;
        }
        let rel = file.strip_prefix(dir).unwrap_or(&file);
        // A file swapped since the walk for a link, a FIFO or a device is not read.
        let Ok(bytes) = super::read_beneath(root, dir, rel, MAX_SOURCE_FILE_BYTES + 1) else {
            continue;
        };
        // A file that is not UTF-8 holds no manifest (public Loong skips it too).
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        let found = match block(&text) {
            Ok(None) => continue,
            Ok(Some(b)) => b,
            Err(message) => {
                return Err(ManifestError::Parse {
                    path: file,
                    message: message.to_string(),
                })
            }
        };
        if let Some(package_text) = package {
            no_conflict(&dir.join(MANIFEST_FILE), package_text, &file, &found)?;
        }
        out = match out {
            Embedded::None => Embedded::One(file, found),
            Embedded::One(first, _) => Embedded::Several(vec![first, file]),
            Embedded::Several(mut all) => {
                all.push(file);
                Embedded::Several(all)
            }
        };
    }
    Ok(out)
}

/// The regular files under `dir` (symlinks and special files are not followed or read), at
/// most [`MAX_SOURCE_FILES`] of them among at most [`MAX_SOURCE_ENTRIES`] entries.
fn collect(
    dir: &Path,
    depth: usize,
    files: &mut Vec<(PathBuf, u64)>,
    entries: &mut usize,
) -> Result<(), ManifestError> {
    if depth > MAX_SOURCE_DEPTH {
        return Ok(());
    }
    let io = |source| ManifestError::Io {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        *entries += 1;
        if *entries > MAX_SOURCE_ENTRIES {
            return Err(ManifestError::TooManyEntries {
                dir: dir.to_owned(),
                limit: MAX_SOURCE_ENTRIES,
            });
        }
        let kind = entry.file_type().map_err(io)?;
        let path = entry.path();
        if kind.is_dir() {
            let skipped = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| SKIPPED_DIRS.contains(&n));
            if !skipped {
                collect(&path, depth + 1, files, entries)?;
            }
        } else if kind.is_file() {
            if files.len() == MAX_SOURCE_FILES {
                return Err(ManifestError::TooManyFiles {
                    dir: dir.to_owned(),
                    limit: MAX_SOURCE_FILES,
                });
            }
            let len = entry.metadata().map_err(io)?.len();
            files.push((path, len));
        }
    }
    Ok(())
}

/// A line without its comment prefix and surrounding whitespace.
fn clean(line: &str) -> &str {
    let trimmed = line.trim_start();
    COMMENT_PREFIXES
        .iter()
        .find_map(|p| trimmed.strip_prefix(p))
        .unwrap_or(trimmed)
        .trim_start()
}

/// Whether a line is the marker (`# LOONG_PLUGIN_START`, `/* LOONG_PLUGIN_START */`, …).
fn is_marker(line: &str, marker: &str) -> bool {
    let c = clean(line).trim_end();
    c.strip_suffix("*/").unwrap_or(c).trim_end() == marker
}

/// The JSON between the first start marker line and the end marker line after it, or `None`
/// when the text has no start marker line.
pub fn block(text: &str) -> Result<Option<String>, SourceError> {
    let mut lines = text.lines();
    if !lines.by_ref().any(|l| is_marker(l, START_MARKER)) {
        return Ok(None);
    }
    let mut json = String::new();
    for line in lines {
        if is_marker(line, END_MARKER) {
            return Ok(Some(json));
        }
        json.push_str(clean(line));
        json.push('\n');
        if json.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(format!(
                "the manifest between {START_MARKER} and {END_MARKER} is over {MAX_MANIFEST_BYTES} bytes"
            ).into());
        }
    }
    Err(
        format!("{START_MARKER} without a {END_MARKER} line after it: close the manifest block")
            .into(),
    )
}

/// An embedded manifest beside `loong.plugin.json` may not contradict it on the fields that
/// say which plugin it is (public Loong refuses such a package too).
fn no_conflict(
    package: &Path,
    package_text: &[u8],
    file: &Path,
    block: &str,
) -> Result<(), ManifestError> {
    let parse = |path: &Path, text: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(text).map_err(|e| ManifestError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    };
    let ours = parse(package, package_text)?;
    let theirs = parse(file, block.as_bytes())?;
    for field in IDENTITY_FIELDS {
        if let Some(value) = theirs.get(field) {
            if ours.get(field) != Some(value) {
                return Err(ManifestError::Conflict {
                    path: package.to_owned(),
                    source_file: file.to_owned(),
                    field,
                });
            }
        }
    }
    Ok(())
}

/// The file `name` of the package, or `None` when it has none.
fn read_if_present(root: &File, dir: &Path, name: &str) -> Result<Option<Vec<u8>>, ManifestError> {
    match super::read_beneath_capped(root, dir, Path::new(name), MAX_MANIFEST_BYTES) {
        Ok(text) => Ok(Some(text)),
        Err(ManifestError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The refusal of an OpenClaw package, as public Loong's compatibility shim reads it, or
/// `None` when the directory holds none.
fn openclaw(root: &File, dir: &Path) -> Result<Option<ManifestError>, ManifestError> {
    let modern = dir.join(OPENCLAW_MANIFEST_FILE);
    if let Some(text) = read_if_present(root, dir, OPENCLAW_MANIFEST_FILE)? {
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| ManifestError::Parse {
                path: modern.clone(),
                message: e.to_string(),
            })?;
        // The two fields public Loong's shim requires, with its words.
        let id = v.get("id").and_then(|i| i.as_str()).map(str::trim);
        let Some(id) = id.filter(|i| !i.is_empty()) else {
            return Ok(Some(ManifestError::OpenClaw {
                path: modern,
                what: "openclaw.plugin.json must declare id".into(),
            }));
        };
        if !v.get("configSchema").is_some_and(|c| c.is_object()) {
            return Ok(Some(ManifestError::OpenClaw {
                path: modern,
                what: "openclaw.plugin.json must declare configSchema object".into(),
            }));
        }
        return Ok(Some(ManifestError::OpenClaw {
            path: modern,
            what: format!(
                "an OpenClaw plugin ({:?}) that public Loong runs as JavaScript through its openclaw-modern-compat shim, which this kernel does not have",
                id.chars().take(64).collect::<String>()
            ),
        }));
    }
    let legacy = dir.join(PACKAGE_JSON_FILE);
    if let Some(text) = read_if_present(root, dir, PACKAGE_JSON_FILE)? {
        let declares = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .is_some_and(|v| v.get("openclaw").is_some_and(|o| o.is_object()));
        if declares {
            return Ok(Some(ManifestError::OpenClaw {
                path: legacy,
                what: "a legacy OpenClaw package (package.json#openclaw) that public Loong runs as JavaScript through its openclaw-legacy-compat shim, which this kernel does not have".into(),
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::super::{Bridge, PluginManifest};
    use super::*;

    const PY: &str = r#"#!/usr/bin/env python3
# LOONG_PLUGIN_START
# {
#   "plugin_id": "echo-py",
#   "provider_id": "echo",
#   "connector_name": "echo-conn",
#   "channel_id": "primary",
#   "endpoint": "local://echo",
#   "capabilities": ["InvokeConnector"],
#   "metadata": {"bridge_kind": "process_stdio", "command": "cat", "version": "0.2.0"}
# }
# LOONG_PLUGIN_END
print("hello")
"#;

    fn package(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("dir");
        for (name, text) in files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("parent");
            }
            std::fs::write(path, text).expect("file");
        }
        dir
    }

    #[test]
    fn an_embedded_source_manifest_is_read_with_public_loongs_defaults() {
        let dir = package(&[("plugin.py", PY), ("README.md", "no markers here")]);
        let m = PluginManifest::load_dir(dir.path()).expect("the embedded manifest loads");
        assert_eq!(
            m.source,
            ManifestSource::EmbeddedSource(PathBuf::from("plugin.py"))
        );
        assert_eq!(m.path, dir.path().join("plugin.py"));
        // No top-level version: metadata.version; no api_version: the current one.
        assert_eq!(m.version, "0.2.0");
        assert_eq!(m.identity.provider_id, "echo");
        assert_eq!(m.identity.connector_name, "echo-conn");
        assert_eq!(m.identity.channel_id.as_deref(), Some("primary"));
        assert_eq!(m.identity.endpoint.as_deref(), Some("local://echo"));
        assert_eq!(m.capabilities, ["invoke_connector"]);
        assert!(matches!(m.bridge, Bridge::Foreign(_)), "{:?}", m.bridge);
        // `//` comments (Rust, JavaScript) and a block comment read the same.
        let rs = PY
            .replace("# ", "// ")
            .replace("#!/usr/bin/env python3\n", "");
        let dir = package(&[("src/lib.rs", &rs)]);
        let m = PluginManifest::load_dir(dir.path()).expect("// comments");
        assert_eq!(
            m.source,
            ManifestSource::EmbeddedSource(PathBuf::from("src/lib.rs"))
        );
        let block = PY
            .replace("# LOONG_PLUGIN_START", "/* LOONG_PLUGIN_START")
            .replace("# LOONG_PLUGIN_END", "LOONG_PLUGIN_END */")
            .replace("# ", " * ");
        let dir = package(&[("plugin.c", &block)]);
        PluginManifest::load_dir(dir.path()).expect("a block comment");
        // Without metadata.version either, public Loong's default version.
        let dir = package(&[("p.py", &PY.replace(r#", "version": "0.2.0""#, ""))]);
        let m = PluginManifest::load_dir(dir.path()).expect("no version");
        assert_eq!(m.version, crate::plugin::DEFAULT_EMBEDDED_VERSION);
    }

    #[test]
    fn loong_plugin_json_takes_precedence_and_may_not_be_contradicted() {
        let json = r#"{"api_version": "v1alpha1", "plugin_id": "echo-py", "version": "0.2.0",
            "provider_id": "echo", "connector_name": "echo-conn", "channel_id": "primary",
            "endpoint": "local://echo", "capabilities": ["invoke_tool"],
            "metadata": {"bridge_kind": "process_stdio", "command": "cat"}}"#;
        let dir = package(&[("plugin.py", PY), (MANIFEST_FILE, json)]);
        let m = PluginManifest::load_dir(dir.path()).expect("the package manifest wins");
        assert_eq!(m.source, ManifestSource::Package);
        assert_eq!(m.capabilities, ["invoke_tool"]);
        // A marker block naming another provider contradicts it: refused, naming both.
        let other = PY.replace(r#""provider_id": "echo""#, r#""provider_id": "other""#);
        let dir = package(&[("plugin.py", &other), (MANIFEST_FILE, json)]);
        let err = PluginManifest::load_dir(dir.path()).expect_err("a conflict");
        let text = err.to_string();
        assert!(
            text.contains("provider_id differs from the embedded manifest in")
                && text.contains("plugin.py"),
            "{text}"
        );
    }

    #[test]
    fn a_package_with_no_manifest_several_or_an_open_block_is_refused_by_name() {
        let dir = package(&[("README.md", "nothing")]);
        let err = PluginManifest::load_dir(dir.path()).expect_err("none");
        assert!(matches!(err, ManifestError::NoManifest { .. }), "{err}");
        assert!(err.to_string().contains("LOONG_PLUGIN_START"), "{err}");
        let dir = package(&[("a.py", PY), ("b.py", PY)]);
        let err = PluginManifest::load_dir(dir.path()).expect_err("two");
        assert!(
            err.to_string()
                .contains("2 source files hold a manifest (a.py, b.py)"),
            "{err}"
        );
        let open = PY.replace("# LOONG_PLUGIN_END\n", "");
        let dir = package(&[("a.py", &open)]);
        let err = PluginManifest::load_dir(dir.path()).expect_err("no end");
        assert!(
            err.to_string().contains("without a LOONG_PLUGIN_END"),
            "{err}"
        );
        // A marker only mentioned in prose (not a line of its own) opens nothing.
        let dir = package(&[("a.md", "put LOONG_PLUGIN_START in a comment line")]);
        assert!(matches!(
            PluginManifest::load_dir(dir.path()),
            Err(ManifestError::NoManifest { .. })
        ));
    }

    #[test]
    fn the_search_is_bounded_and_skips_what_public_loong_skips() {
        // A file over the bound is not searched; one at the bound is.
        let padded = format!("{PY}{}", "#".repeat(MAX_SOURCE_FILE_BYTES as usize));
        let dir = package(&[("big.py", &padded)]);
        assert!(matches!(
            PluginManifest::load_dir(dir.path()),
            Err(ManifestError::NoManifest { .. })
        ));
        let fits = format!(
            "{PY}{}",
            "#".repeat(MAX_SOURCE_FILE_BYTES as usize - PY.len())
        );
        let dir = package(&[("big.py", &fits)]);
        PluginManifest::load_dir(dir.path()).expect("a file at the bound is searched");
        // Skipped directories and symlinks are not searched.
        let dir = package(&[("node_modules/x/p.py", PY), (".git/p.py", PY)]);
        assert!(matches!(
            PluginManifest::load_dir(dir.path()),
            Err(ManifestError::NoManifest { .. })
        ));
        let outside = package(&[("p.py", PY)]);
        let dir = package(&[]);
        std::os::unix::fs::symlink(outside.path().join("p.py"), dir.path().join("p.py"))
            .expect("symlink");
        assert!(matches!(
            PluginManifest::load_dir(dir.path()),
            Err(ManifestError::NoManifest { .. })
        ));
        // Too many files: refused, naming the bound.
        let dir = package(&[]);
        for i in 0..=MAX_SOURCE_FILES {
            std::fs::write(dir.path().join(format!("f{i}")), "").expect("file");
        }
        let err = PluginManifest::load_dir(dir.path()).expect_err("too many");
        assert!(matches!(err, ManifestError::TooManyFiles { .. }), "{err}");
    }

    /// `check_package` on `dir` in a thread, or `None` when it has not answered in time.
    fn check_within(dir: &Path) -> Option<Result<(), String>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = dir.to_owned();
        std::thread::spawn(move || {
            let outcome = crate::plugin::check_package(&dir)
                .map(|_| ())
                .map_err(|e| e.to_string());
            let _ = tx.send(outcome);
        });
        rx.recv_timeout(std::time::Duration::from_secs(10)).ok()
    }

    #[test]
    fn a_package_file_that_is_a_symlink_or_a_fifo_is_refused_not_followed_or_waited_on() {
        let json = r#"{"api_version": "v1alpha1", "plugin_id": "echo-py", "version": "0.2.0",
            "capabilities": ["invoke_tool"],
            "metadata": {"bridge_kind": "process_stdio", "command": "cat"}}"#;
        // The control: the same manifest as a regular file loads.
        let good = package(&[(MANIFEST_FILE, json)]);
        assert_eq!(check_within(good.path()), Some(Ok(())));
        // A loong.plugin.json that is a symlink to a manifest outside the package.
        let dir = package(&[]);
        std::os::unix::fs::symlink(
            good.path().join(MANIFEST_FILE),
            dir.path().join(MANIFEST_FILE),
        )
        .expect("symlink");
        let outcome = check_within(dir.path()).expect("an answer");
        assert!(
            outcome
                .as_ref()
                .is_err_and(|e| e.contains("only regular files and directories")),
            "{outcome:?}"
        );
        // The same through a symlinked directory on the way to a file.
        let dir = package(&[]);
        std::os::unix::fs::symlink(good.path(), dir.path().join("src")).expect("symlink");
        let module = r#"{"api_version": "v1alpha1", "plugin_id": "w", "version": "1",
            "capabilities": ["invoke_tool"],
            "metadata": {"bridge_kind": "wasm", "component": "src/loong.plugin.json"}}"#;
        std::fs::write(dir.path().join(MANIFEST_FILE), module).expect("manifest");
        let outcome = check_within(dir.path()).expect("an answer");
        assert!(outcome.is_err(), "{outcome:?}");
        // A FIFO where a manifest or an OpenClaw manifest is: refused at once, nothing waits.
        for name in [MANIFEST_FILE, OPENCLAW_MANIFEST_FILE, PACKAGE_JSON_FILE] {
            let dir = package(&[]);
            nix::unistd::mkfifo(&dir.path().join(name), nix::sys::stat::Mode::S_IRWXU)
                .expect("fifo");
            let outcome = check_within(dir.path());
            assert!(
                outcome
                    .as_ref()
                    .is_some_and(|o| o.as_ref().is_err_and(|e| e.contains("only regular files"))),
                "{name}: {outcome:?}"
            );
        }
    }

    #[test]
    fn the_search_lists_a_bounded_number_of_directories() {
        // Empty directories hold no file, yet each is listed: their number is bounded too.
        let dir = package(&[("p.py", PY)]);
        for i in 0..=MAX_SOURCE_ENTRIES {
            std::fs::create_dir(dir.path().join(format!("d{i}"))).expect("dir");
        }
        let err = PluginManifest::load_dir(dir.path()).expect_err("too many entries");
        assert!(matches!(err, ManifestError::TooManyEntries { .. }), "{err}");
        // The control: at the bound, it is searched.
        std::fs::remove_dir(dir.path().join("d0")).expect("rm");
        std::fs::remove_dir(dir.path().join("d1")).expect("rm");
        PluginManifest::load_dir(dir.path()).expect("within the bound");
    }

    #[test]
    fn an_openclaw_package_is_refused_naming_what_it_lacks_here() {
        let modern = r#"{"id": "weather", "configSchema": {}, "channels": ["x"]}"#;
        let dir = package(&[(OPENCLAW_MANIFEST_FILE, modern), ("index.js", "")]);
        let err = PluginManifest::load_dir(dir.path()).expect_err("openclaw");
        let text = err.to_string();
        assert!(
            matches!(err, ManifestError::OpenClaw { .. })
                && text.contains("\"weather\"")
                && text.contains("openclaw-modern-compat shim")
                && text.contains("metadata.command"),
            "{text}"
        );
        // What public Loong's shim itself requires is named in its words.
        for (doc, want) in [
            (r#"{"configSchema": {}}"#, "must declare id"),
            (r#"{"id": "w"}"#, "must declare configSchema object"),
        ] {
            let dir = package(&[(OPENCLAW_MANIFEST_FILE, doc)]);
            let err = PluginManifest::load_dir(dir.path()).expect_err(want);
            assert!(err.to_string().contains(want), "{err}");
        }
        let legacy = r#"{"name": "w", "openclaw": {"extensions": ["./index.js"]}}"#;
        let dir = package(&[(PACKAGE_JSON_FILE, legacy), ("index.js", "")]);
        let err = PluginManifest::load_dir(dir.path()).expect_err("legacy");
        assert!(err.to_string().contains("legacy OpenClaw package"), "{err}");
        // A package.json without an openclaw block is no OpenClaw package.
        let dir = package(&[(PACKAGE_JSON_FILE, r#"{"name": "w"}"#)]);
        assert!(matches!(
            PluginManifest::load_dir(dir.path()),
            Err(ManifestError::NoManifest { .. })
        ));
    }
}
