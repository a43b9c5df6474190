//! The file tools (`file.read`, `file.write`, `file.edit`), bound to the file their call was
//! decided on.
//!
//! loongd resolves the caller's path (every symlink and `..`), decides it against the
//! caller's grants, and sends the resolved path with the scope the grants confine it to
//! ([`DecidedFile`]). The worker holds a descriptor of each of its roots from configuration
//! on; for a call it opens the deeper of the scope and the root that holds the path, then
//! the path beneath that directory, both with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
//! | RESOLVE_NO_MAGICLINKS)`. A name swapped for a symlink after the decision (to another
//! root, out of the scope, or anywhere) is refused by the kernel at the open, so the file
//! used is one that lies beneath the decided scope under the decided name.
//!
//! Writes and edits also refuse what could carry a write out of the scope under a name
//! inside it: anything but a regular file (a FIFO, a device), and a file with more than one
//! hard link (its other name may lie anywhere on the same file system). Nothing is truncated
//! before those checks, and an edit reads and writes one descriptor.

use std::{
    fs::File,
    io::{self, Read},
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use loong_ipc::{BuiltinSpec, DecidedFile};
use loong_sandbox::worker::open_beneath;
use nix::fcntl::OFlag;
use serde_json::{json, Value};

use crate::{str_field, ToolError};

/// Mode of a file `file.write` creates (before the umask).
const NEW_FILE_MODE: u32 = 0o666;

/// The tool's roots, each held open (`O_PATH`) from configuration on: every file a call
/// opens is reached from one of these descriptors.
#[derive(Debug)]
pub struct Roots(Vec<(PathBuf, OwnedFd)>);

impl Roots {
    /// No roots: every file is outside them (`shell.exec`).
    pub fn none() -> Roots {
        Roots(Vec::new())
    }

    /// Opens each root, an absolute path without symlinks (loongd resolved it).
    pub fn open(roots: &[String]) -> Result<Roots, ToolError> {
        // O_PATH: the tier's landlock domain grants no read of `/` itself.
        let top = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(dir_flags())
            .open("/")
            .map_err(io_err(Path::new("/")))?;
        let mut out = Vec::with_capacity(roots.len());
        for r in roots {
            let root = plain_absolute(r)?;
            let rel = root.strip_prefix("/").unwrap_or(&root);
            let fd = open_beneath(top.as_fd(), rel, dir_flags(), 0).map_err(io_err(&root))?;
            out.push((root, fd));
        }
        Ok(Roots(out))
    }

    fn names(&self) -> String {
        self.0
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The directory to open `decided.path` beneath (the deeper of the decided scope and
    /// the root that holds the path, opened beneath that root) and the path's rest.
    fn beneath(&self, decided: &DecidedFile) -> Result<(OwnedFd, PathBuf), ToolError> {
        let path = plain_absolute(&decided.path)?;
        let scope = plain_absolute(&decided.scope)?;
        if !path.starts_with(&scope) {
            return Err(ToolError::OutsideRoots(
                decided.path.clone(),
                decided.scope.clone(),
            ));
        }
        // The deepest root that holds the path; the scope and the root both hold it, so one
        // lies within the other.
        let (root, fd) = self
            .0
            .iter()
            .filter(|(r, _)| path.starts_with(r))
            .max_by_key(|(r, _)| r.as_os_str().len())
            .ok_or_else(|| ToolError::OutsideRoots(decided.path.clone(), self.names()))?;
        let base = if scope.starts_with(root) {
            scope.as_path()
        } else {
            root.as_path()
        };
        let down = base.strip_prefix(root).unwrap_or(Path::new(""));
        let dir = open_beneath(fd.as_fd(), down, dir_flags(), 0).map_err(opened(base))?;
        let rest = path
            .strip_prefix(base)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        if rest.as_os_str().is_empty() {
            return Err(ToolError::NotRegular(decided.path.clone()));
        }
        Ok((dir, rest))
    }

    /// Opens the decided file with `flags` (and `mode` when it creates one); refuses anything
    /// but a regular file, and, when `single_link`, a file with other hard links.
    fn open_file(
        &self,
        decided: &DecidedFile,
        flags: OFlag,
        mode: u32,
        single_link: bool,
    ) -> Result<File, ToolError> {
        let (dir, rest) = self.beneath(decided)?;
        let path = Path::new(&decided.path);
        // O_NONBLOCK: opening a FIFO never waits for its other end (it is refused below).
        let flags = flags | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        let file =
            File::from(open_beneath(dir.as_fd(), &rest, flags.bits(), mode).map_err(opened(path))?);
        let meta = file.metadata().map_err(io_err(path))?;
        if !meta.is_file() {
            return Err(ToolError::NotRegular(decided.path.clone()));
        }
        if single_link && meta.nlink() > 1 {
            return Err(ToolError::HardLinked(decided.path.clone(), meta.nlink()));
        }
        Ok(file)
    }
}

fn dir_flags() -> i32 {
    (OFlag::O_PATH | OFlag::O_DIRECTORY).bits()
}

/// `p` as an absolute path of plain names: no `.`, `..` or empty component in its text
/// (`Path` would drop a `.` or a doubled `/` silently).
pub fn plain_absolute(p: &str) -> Result<PathBuf, ToolError> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err(not_plain(p));
    };
    if !rest.is_empty()
        && rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(not_plain(p));
    }
    Ok(PathBuf::from(p))
}

fn not_plain(p: &str) -> ToolError {
    ToolError::Input(format!(
        "{p:?}: give an absolute path without . or .. components or a doubled or trailing /"
    ))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ToolError + '_ {
    move |source| ToolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// An open's error: a symlink or an escape met on the way is [`ToolError::Swapped`].
fn opened(path: &Path) -> impl FnOnce(io::Error) -> ToolError + '_ {
    move |source| match source.raw_os_error() {
        Some(nix::libc::ELOOP | nix::libc::EXDEV) => ToolError::Swapped(path.display().to_string()),
        _ => ToolError::Io {
            path: path.display().to_string(),
            source,
        },
    }
}

fn decided<'a>(tool: &str, d: Option<&'a DecidedFile>) -> Result<&'a DecidedFile, ToolError> {
    let d = d.ok_or_else(|| ToolError::NotDecided(tool.to_string()))?;
    d.check_bounds()
        .map_err(|e| ToolError::Input(e.to_string()))?;
    Ok(d)
}

/// `file.read`: at most `max_bytes` (and the tool's limit) of UTF-8 text.
pub fn read(
    spec: &BuiltinSpec,
    roots: &Roots,
    d: Option<&DecidedFile>,
    input: &Value,
) -> Result<Value, ToolError> {
    let asked = str_field(input, "path")?;
    let d = decided(&spec.tool, d)?;
    let limit = input
        .get("max_bytes")
        .and_then(Value::as_u64)
        .unwrap_or(spec.max_output_bytes)
        .min(spec.max_output_bytes);
    let file = roots.open_file(d, OFlag::O_RDONLY, 0, false)?;
    let path = Path::new(&d.path);
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    let truncated = bytes.len() as u64 > limit;
    bytes.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let content = match String::from_utf8(bytes) {
        Ok(s) => s,
        // A cut may split a character: keep the whole ones.
        Err(e) if truncated && e.utf8_error().error_len().is_none() => {
            let good = e.utf8_error().valid_up_to();
            let mut b = e.into_bytes();
            b.truncate(good);
            String::from_utf8(b).map_err(|_| ToolError::NotText(d.path.clone()))?
        }
        Err(_) => return Err(ToolError::NotText(d.path.clone())),
    };
    Ok(json!({"path": asked, "bytes": content.len(), "content": content, "truncated": truncated}))
}

/// `file.write`: the content replaces the file's (created when missing).
pub fn write(
    spec: &BuiltinSpec,
    roots: &Roots,
    d: Option<&DecidedFile>,
    input: &Value,
) -> Result<Value, ToolError> {
    let asked = str_field(input, "path")?;
    let content = str_field(input, "content")?;
    let d = decided(&spec.tool, d)?;
    let file = roots.open_file(d, OFlag::O_WRONLY | OFlag::O_CREAT, NEW_FILE_MODE, true)?;
    replace(&file, Path::new(&d.path), content.as_bytes())?;
    Ok(json!({"path": asked, "bytes": content.len()}))
}

/// `file.edit`: `old` replaced by `new` (exactly once unless `all`), read and written on one
/// descriptor.
pub fn edit(
    spec: &BuiltinSpec,
    roots: &Roots,
    d: Option<&DecidedFile>,
    input: &Value,
) -> Result<Value, ToolError> {
    let asked = str_field(input, "path")?;
    let old = str_field(input, "old")?;
    let new = str_field(input, "new")?;
    let all = input.get("all").and_then(Value::as_bool).unwrap_or(false);
    if old.is_empty() {
        return Err(ToolError::Input("`old` must not be empty".into()));
    }
    let d = decided(&spec.tool, d)?;
    let limit = spec.max_output_bytes;
    let mut file = roots.open_file(d, OFlag::O_RDWR, 0, true)?;
    let path = Path::new(&d.path);
    let mut bytes = Vec::new();
    (&mut file)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() as u64 > limit {
        return Err(ToolError::TooLarge(limit));
    }
    let text = String::from_utf8(bytes).map_err(|_| ToolError::NotText(d.path.clone()))?;
    let found = text.matches(old).count();
    if found == 0 {
        return Err(ToolError::Edit(format!(
            "{}: the text to replace is not there",
            d.path
        )));
    }
    if found > 1 && !all {
        return Err(ToolError::Edit(format!(
            "{}: the text to replace occurs {found} times; give more context or set all",
            d.path
        )));
    }
    replace(&file, path, text.replace(old, new).as_bytes())?;
    Ok(json!({"path": asked, "replacements": found}))
}

/// Makes `bytes` the whole content of `file`.
fn replace(file: &File, path: &Path, bytes: &[u8]) -> Result<(), ToolError> {
    file.write_all_at(bytes, 0).map_err(io_err(path))?;
    file.set_len(bytes.len() as u64).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use loong_ipc::FailureKind;

    use super::*;
    use crate::Builtin;

    /// A read root `docs`, another root `other` (with a secret) and a write root `out`, all
    /// under one real directory.
    struct Tree {
        _dir: tempfile::TempDir,
        base: PathBuf,
    }

    impl Tree {
        fn new() -> Tree {
            let dir = tempfile::tempdir().expect("dir");
            let base = dir.path().canonicalize().expect("real path");
            for d in ["docs", "other", "out", "outside"] {
                std::fs::create_dir(base.join(d)).expect("mkdir");
            }
            std::fs::write(base.join("docs/race"), "public").expect("file");
            std::fs::write(base.join("other/secret"), "secret").expect("file");
            std::fs::write(base.join("outside/kept"), "kept").expect("file");
            Tree { _dir: dir, base }
        }

        fn p(&self, rel: &str) -> String {
            self.base.join(rel).display().to_string()
        }

        fn tool(&self, tool: &str, roots: &[&str]) -> Builtin {
            Builtin::configure(BuiltinSpec {
                tool: tool.into(),
                roots: roots.iter().map(|r| self.p(r)).collect(),
                timeout_ms: 2_000,
                max_output_bytes: 64,
            })
            .expect("configured")
        }
    }

    fn decided(path: &str, scope: &str) -> DecidedFile {
        DecidedFile {
            path: path.into(),
            scope: scope.into(),
        }
    }

    fn call(tool: &Builtin, d: &DecidedFile, input: Value) -> Result<Value, ToolError> {
        let mut input = input;
        input["path"] = json!(d.path);
        tool.run(input.to_string().as_bytes(), Some(d))
    }

    #[test]
    fn file_tools_read_write_and_edit_the_decided_file() {
        let t = Tree::new();
        let out = decided(&t.p("out/a.txt"), &t.p("out"));
        let w = call(
            &t.tool("file.write", &["out"]),
            &out,
            json!({"content": "one two two"}),
        )
        .expect("write");
        assert_eq!(w["bytes"], 11);
        let reader = t.tool("file.read", &["docs", "out"]);
        let r = call(&reader, &out, json!({})).expect("read");
        assert_eq!(r["content"], "one two two");
        let editor = t.tool("file.edit", &["out"]);
        let err = call(&editor, &out, json!({"old": "two", "new": "2"})).expect_err("ambiguous");
        assert!(err.to_string().contains("2 times"), "{err}");
        let e = call(
            &editor,
            &out,
            json!({"old": "two", "new": "2", "all": true}),
        )
        .expect("edit all");
        assert_eq!(e["replacements"], 2);
        assert_eq!(
            std::fs::read_to_string(t.base.join("out/a.txt")).expect("read"),
            "one 2 2"
        );
        // A shorter write leaves nothing of the longer content behind.
        call(
            &t.tool("file.write", &["out"]),
            &out,
            json!({"content": "x"}),
        )
        .expect("write");
        assert_eq!(
            std::fs::read_to_string(t.base.join("out/a.txt")).expect("read"),
            "x"
        );
        // Reads are capped; a cut never splits a character.
        std::fs::write(t.base.join("out/a.txt"), "é".repeat(40)).expect("write");
        let r = call(&reader, &out, json!({})).expect("read");
        assert_eq!(
            (r["bytes"].as_u64(), r["truncated"].as_bool()),
            (Some(64), Some(true))
        );
    }

    #[test]
    fn a_file_tool_opens_nothing_but_a_decided_file_beneath_its_scope_and_roots() {
        let t = Tree::new();
        let reader = t.tool("file.read", &["docs", "other"]);
        // The control: the decided file, in scope.
        let ok = decided(&t.p("docs/race"), &t.p("docs"));
        assert_eq!(
            call(&reader, &ok, json!({})).expect("read")["content"],
            "public"
        );
        // No decision, a path outside the scope, outside the roots, or not plain: refused.
        let err = reader
            .run(json!({"path": ok.path}).to_string().as_bytes(), None)
            .expect_err("undecided");
        assert!(matches!(err, ToolError::NotDecided(_)), "{err}");
        let cases = [
            decided(&t.p("other/secret"), &t.p("docs")),
            decided(&t.p("outside/kept"), "/"),
            decided(&t.p("docs/./race"), &t.p("docs")),
            decided(&t.p("docs/../other/secret"), &t.p("docs")),
            decided(&t.p("docs//race"), &t.p("docs")),
            decided("docs/race", "/"),
            decided(&t.p("docs"), &t.p("docs")),
        ];
        for d in cases {
            let err = call(&reader, &d, json!({})).expect_err("refused");
            assert_eq!(
                err.failure("file.read").kind,
                FailureKind::ToolError,
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_symlink_on_the_decided_path_is_refused_by_the_kernel_wherever_it_leads() {
        let t = Tree::new();
        let reader = t.tool("file.read", &["docs", "other"]);
        let writer = t.tool("file.write", &["docs", "other"]);
        let editor = t.tool("file.edit", &["docs", "other"]);
        // The last name, to another root, within the scope, or dangling; a directory on the
        // way, to another root.
        symlink(t.base.join("other/secret"), t.base.join("docs/to-other")).expect("link");
        symlink("race", t.base.join("docs/to-race")).expect("link");
        symlink(t.base.join("other/new"), t.base.join("docs/dangling")).expect("link");
        symlink(t.base.join("other"), t.base.join("docs/dir")).expect("link");
        for rel in [
            "docs/to-other",
            "docs/to-race",
            "docs/dangling",
            "docs/dir/secret",
        ] {
            let d = decided(&t.p(rel), &t.p("docs"));
            for (tool, input) in [
                (&reader, json!({})),
                (&writer, json!({"content": "x"})),
                (&editor, json!({"old": "s", "new": "x"})),
            ] {
                let err = call(tool, &d, input).expect_err("refused");
                assert!(matches!(err, ToolError::Swapped(_)), "{rel}: {err}");
            }
        }
        assert_eq!(
            std::fs::read_to_string(t.base.join("other/secret")).expect("read"),
            "secret"
        );
        assert!(!t.base.join("other/new").exists(), "created through a link");
    }

    #[test]
    fn writes_refuse_hard_links_and_special_files_before_touching_them() {
        let t = Tree::new();
        let writer = t.tool("file.write", &["out"]);
        let editor = t.tool("file.edit", &["out"]);
        std::fs::hard_link(t.base.join("outside/kept"), t.base.join("out/linked")).expect("link");
        let d = decided(&t.p("out/linked"), &t.p("out"));
        let err = call(&writer, &d, json!({"content": "x"})).expect_err("hard link");
        assert!(matches!(err, ToolError::HardLinked(_, 2)), "{err}");
        let err = call(&editor, &d, json!({"old": "kept", "new": "x"})).expect_err("hard link");
        assert!(matches!(err, ToolError::HardLinked(_, 2)), "{err}");
        assert_eq!(
            std::fs::read_to_string(t.base.join("outside/kept")).expect("read"),
            "kept"
        );
        // A FIFO is refused at once: a write's open does not wait for a reader (ENXIO), a
        // read's finds no regular file.
        nix::unistd::mkfifo(&t.base.join("out/fifo"), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        let f = decided(&t.p("out/fifo"), &t.p("out"));
        let err = call(&writer, &f, json!({"content": "x"})).expect_err("fifo");
        assert!(
            matches!(&err, ToolError::Io { source, .. } if source.raw_os_error() == Some(nix::libc::ENXIO)),
            "{err}"
        );
        let err = call(&t.tool("file.read", &["out"]), &f, json!({})).expect_err("fifo");
        assert!(matches!(err, ToolError::NotRegular(_)), "{err}");
        // The control: once the other name is gone, the same write succeeds.
        std::fs::remove_file(t.base.join("outside/kept")).expect("unlink");
        call(&writer, &d, json!({"content": "x"})).expect("single link");
    }

    #[test]
    fn a_name_swapped_with_a_symlink_in_a_loop_never_leaks_the_other_root() {
        const CALLS: usize = 2_000;
        const MAX_CALLS: usize = 200_000;
        let t = Tree::new();
        let reader = t.tool("file.read", &["docs", "other"]);
        symlink(t.base.join("other/secret"), t.base.join("docs/swap")).expect("link");
        let (race, swap) = (t.base.join("docs/race"), t.base.join("docs/swap"));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let swaps = std::sync::atomic::AtomicUsize::new(0);
        let d = decided(&t.p("docs/race"), &t.p("docs"));
        let (mut read, mut refused) = (0, 0);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    nix::fcntl::renameat2(
                        None,
                        &race,
                        None,
                        &swap,
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    )
                    .expect("exchange");
                    swaps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
            // At least CALLS calls, and on until the swapper has beaten one (a loaded machine
            // may run the two threads one after the other for a while).
            while swaps.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                std::thread::yield_now();
            }
            while read + refused < CALLS || (refused == 0 && read + refused < MAX_CALLS) {
                match call(&reader, &d, json!({})) {
                    Ok(v) => {
                        assert_eq!(v["content"], "public", "leaked");
                        read += 1;
                    }
                    Err(ToolError::Swapped(_)) => refused += 1,
                    Err(e) => panic!("unexpected failure: {e}"),
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        assert!(
            refused > 0,
            "the swapper beat a call ({read} read, {refused} refused)"
        );
        // The control: with the file back under its name, the same call reads it.
        if std::fs::symlink_metadata(&race)
            .expect("race")
            .file_type()
            .is_symlink()
        {
            std::fs::rename(&swap, &race).expect("put back");
        }
        assert_eq!(
            call(&reader, &d, json!({})).expect("read")["content"],
            "public"
        );
    }
}
