//! The staging copy of an operator's package: the one place loongd reads an operator-supplied
//! tree, so the one place that must not be fooled by it.
//!
//! The package directory is resolved once (the `open` of its path); every entry below it is
//! opened once, relative to its directory's fd, with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` and `O_NOFOLLOW | O_NONBLOCK`, then `fstat`ed: only
//! directories and regular files with one link pass, and a regular file is copied from that
//! same fd. A FIFO or device is refused by its `fstat` before any read, so nothing blocks; a
//! symlink swapped in at any moment fails the open (`ELOOP`/`EXDEV`) instead of being
//! followed. When the caller is not root, every entry must also be readable by the caller
//! itself (owner, primary group or other bits of the fd's mode): loongd's root rights never
//! lend the operator a file they could not read. Everything later checked (manifest,
//! signature, digest, lock entry) is read from the copy in loongd's home, never the source.

use std::{
    fs,
    io::{Read, Write},
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::fs::{OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use loong_ipc::package::{
    MAX_PACKAGE_BYTES, MAX_PACKAGE_DEPTH, MAX_PACKAGE_ENTRIES, MAX_PACKAGE_FILES,
};
use loong_sandbox::openat::{self, OFlag, OpenHow};
use nix::sys::stat::{FileStat, SFlag};

/// The size of the buffer a file is copied through.
const COPY_BUFFER_BYTES: usize = 64 * 1024;

/// The read bit of a mode's owner, group or other triple.
const READ: u32 = 0o4;
/// The search (execute) bit of a mode's triple.
const SEARCH: u32 = 0o1;

/// Who asked for the copy: root reads anything, anyone else only what they could read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reader {
    pub uid: u32,
    pub gid: u32,
}

/// Why a package could not be staged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StageError {
    #[error("{path}: {source}; give a package directory you can read")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: a package may hold only regular files and directories (no symlinks, mount points or special files)")]
    NotRegular(String),
    #[error("{0}: a file with other hard links is not installed; copy it into the package")]
    HardLink(String),
    #[error("{path}: uid {uid} cannot read it, and loongd installs only what its caller can read")]
    NotReadable { path: String, uid: u32 },
    #[error("{0}: a file name must be UTF-8 without newlines")]
    BadName(String),
    #[error("{0}: the package is over {MAX_PACKAGE_FILES} files, {MAX_PACKAGE_ENTRIES} entries, {MAX_PACKAGE_BYTES} bytes or {MAX_PACKAGE_DEPTH} levels")]
    TooLarge(String),
    #[error("{0}: the package is empty")]
    Empty(String),
    #[error("{0}: give the package directory as an absolute path")]
    Relative(String),
    #[error("{0} is inside loongd's home; install from a copy elsewhere")]
    InsideHome(String),
    #[error("staging {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// How every entry below the package directory is opened: never through a link, never out
/// of the directory or its mount, never blocking (a FIFO opens at once, then is refused).
fn how() -> OpenHow {
    openat::beneath_read_only()
}

/// Copies the package directory `src` into `dst` (which must not exist yet). The copy is
/// world-readable whatever loongd's umask (directories 0755, files 0644, or 0755 when
/// executable): a foreign program's sandbox reads its package as the sandbox uid, and a
/// package holds nothing secret. Directories are created only for the files they hold.
pub(crate) fn copy_package(
    src: &Path,
    dst: &Path,
    home: &Path,
    reader: Reader,
) -> Result<(), StageError> {
    let shown = src.display().to_string();
    if !src.is_absolute() {
        return Err(StageError::Relative(shown));
    }
    let root: OwnedFd = fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW).bits())
        .open(src)
        .map_err(|source| StageError::Open {
            path: shown.clone(),
            source,
        })?
        .into();
    // Where the directory really is, from the fd (not the path, which could change).
    let real = fs::read_link(format!("/proc/self/fd/{}", root.as_raw_fd())).map_err(|source| {
        StageError::Read {
            path: shown.clone(),
            source,
        }
    })?;
    let home = fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    if real.starts_with(&home) {
        return Err(StageError::InsideHome(shown));
    }
    let mut copy = Copy {
        dst: dst.to_path_buf(),
        reader,
        files: 0,
        entries: 0,
        bytes: 0,
        made: Vec::new(),
    };
    // The caller must reach the package as well as read it: a directory they cannot search
    // (another user's 0700 home) hides what is below it, whatever its own bits say. The
    // directories are those that hold the opened package, reached by `..` from its
    // descriptor, not those its path names now (a directory above it renamed between the
    // open and the check showed searchable ones in their place).
    if reader.uid != 0 {
        let mut below = root.try_clone().map_err(|source| StageError::Open {
            path: shown.clone(),
            source,
        })?;
        let mut below_stat = fstat(&below, &shown)?;
        for depth in 1.. {
            let at = real
                .ancestors()
                .nth(depth)
                .map_or_else(|| shown.clone(), |p| p.display().to_string());
            let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC);
            let above =
                openat::openat2(below.as_fd(), "..", how).map_err(|source| StageError::Open {
                    path: at.clone(),
                    source,
                })?;
            let stat = fstat(&above, &at)?;
            if (stat.st_dev, stat.st_ino) == (below_stat.st_dev, below_stat.st_ino) {
                break; // `/`, its own parent
            }
            copy.allows(&stat, &at, SEARCH)?;
            (below, below_stat) = (above, stat);
        }
    }
    let stat = fstat(&root, &shown)?;
    copy.readable(&stat, &shown, true)?;
    copy.dir(root, "", 0)?;
    let signed = copy.files - usize::from(dst.join(loong_ipc::package::SIGNATURE_FILE).exists());
    if signed == 0 {
        return Err(StageError::Empty(shown));
    }
    Ok(())
}

fn fstat(fd: &OwnedFd, shown: &str) -> Result<FileStat, StageError> {
    nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| StageError::Open {
        path: shown.to_string(),
        source: e.into(),
    })
}

struct Copy {
    dst: PathBuf,
    reader: Reader,
    files: usize,
    /// Every name listed so far (directories too, empty ones included).
    entries: usize,
    bytes: u64,
    /// Directories of the copy created so far (relative).
    made: Vec<String>,
}

impl Copy {
    /// Whether the caller could read (and, for a directory, search) what `stat` describes.
    fn readable(&self, stat: &FileStat, shown: &str, directory: bool) -> Result<(), StageError> {
        self.allows(stat, shown, if directory { READ | SEARCH } else { READ })
    }

    /// Whether the mode bits in `stat` grant the caller `need` (of [`READ`], [`SEARCH`]).
    fn allows(&self, stat: &FileStat, shown: &str, need: u32) -> Result<(), StageError> {
        if self.reader.uid == 0 {
            return Ok(());
        }
        let bits = if stat.st_uid == self.reader.uid {
            stat.st_mode >> 6
        } else if stat.st_gid == self.reader.gid {
            stat.st_mode >> 3
        } else {
            stat.st_mode
        };
        if bits & need == need {
            Ok(())
        } else {
            Err(StageError::NotReadable {
                path: shown.to_string(),
                uid: self.reader.uid,
            })
        }
    }

    /// Copies the directory open as `fd` (the package-relative path `rel`).
    fn dir(&mut self, fd: OwnedFd, rel: &str, depth: usize) -> Result<(), StageError> {
        if depth > MAX_PACKAGE_DEPTH {
            return Err(StageError::TooLarge(rel.to_string()));
        }
        let listing = fd.try_clone().map_err(|source| StageError::Open {
            path: rel.to_string(),
            source,
        })?;
        let mut dir = nix::dir::Dir::from(listing).map_err(|e| StageError::Open {
            path: rel.to_string(),
            source: e.into(),
        })?;
        let mut names: Vec<Vec<u8>> = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| StageError::Open {
                path: rel.to_string(),
                source: e.into(),
            })?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                // Counted as listed: a directory of a million names is refused, not held.
                self.entries += 1;
                if self.entries > MAX_PACKAGE_ENTRIES {
                    return Err(StageError::TooLarge(if rel.is_empty() {
                        ".".to_string()
                    } else {
                        rel.to_string()
                    }));
                }
                names.push(name.to_vec());
            }
        }
        names.sort();
        for name in names {
            let name = String::from_utf8(name)
                .map_err(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
                .and_then(|n| if n.contains('\n') { Err(n) } else { Ok(n) })
                .map_err(|bad| {
                    let bad = bad.escape_debug();
                    StageError::BadName(if rel.is_empty() {
                        bad.to_string()
                    } else {
                        format!("{rel}/{bad}")
                    })
                })?;
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            self.entry(&fd, &name, &path, depth)?;
        }
        Ok(())
    }

    /// Opens one entry of the directory `parent` once, and copies it from that fd.
    fn entry(
        &mut self,
        parent: &OwnedFd,
        name: &str,
        path: &str,
        depth: usize,
    ) -> Result<(), StageError> {
        let fd = openat::openat2(parent.as_fd(), name, how()).map_err(|source| {
            match source.raw_os_error() {
                // A symlink (refused by RESOLVE_NO_SYMLINKS and O_NOFOLLOW) or a mount point.
                Some(libc_errno) if is_link_or_mount(libc_errno) => {
                    StageError::NotRegular(path.to_string())
                }
                _ => StageError::Open {
                    path: path.to_string(),
                    source,
                },
            }
        })?;
        let stat = fstat(&fd, path)?;
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFDIR {
            self.readable(&stat, path, true)?;
            return self.dir(fd, path, depth + 1);
        }
        if kind != SFlag::S_IFREG {
            return Err(StageError::NotRegular(path.to_string()));
        }
        if stat.st_nlink != 1 {
            return Err(StageError::HardLink(path.to_string()));
        }
        self.readable(&stat, path, false)?;
        self.files += 1;
        if self.files > MAX_PACKAGE_FILES + 1 {
            return Err(StageError::TooLarge(path.to_string()));
        }
        self.file(fs::File::from(fd), path, stat.st_mode & 0o111 != 0)
    }

    /// Writes the copy of one regular file, reading only from `from`.
    fn file(&mut self, mut from: fs::File, path: &str, exec: bool) -> Result<(), StageError> {
        let to = self.dst.join(path);
        let write = |source| StageError::Write {
            path: to.clone(),
            source,
        };
        self.parents(path)?;
        let mode = if exec { 0o755 } else { 0o644 };
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&to)
            .map_err(write)?;
        let mut buf = vec![0u8; COPY_BUFFER_BYTES];
        loop {
            let n = match from.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(StageError::Read {
                        path: path.to_string(),
                        source,
                    })
                }
            };
            if n == 0 {
                break;
            }
            self.bytes += n as u64;
            if self.bytes > MAX_PACKAGE_BYTES {
                return Err(StageError::TooLarge(path.to_string()));
            }
            out.write_all(&buf[..n]).map_err(write)?;
        }
        out.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(write)?;
        Ok(())
    }

    /// Creates the copy's directories above `path` (0755), once each.
    fn parents(&mut self, path: &str) -> Result<(), StageError> {
        let mut dirs: Vec<&str> = vec![""];
        dirs.extend(
            path.match_indices('/')
                .map(|(i, _)| &path[..i])
                .collect::<Vec<_>>(),
        );
        for d in dirs {
            if self.made.iter().any(|m| m == d) {
                continue;
            }
            let at = self.dst.join(d);
            match fs::create_dir(&at) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && !d.is_empty() => {}
                Err(source) => return Err(StageError::Write { path: at, source }),
            }
            fs::set_permissions(&at, fs::Permissions::from_mode(0o755)).map_err(|source| {
                StageError::Write {
                    path: at.clone(),
                    source,
                }
            })?;
            self.made.push(d.to_string());
        }
        Ok(())
    }
}

/// `ELOOP` (a symlink) or `EXDEV` (a mount point) from an open beneath the package.
fn is_link_or_mount(errno: i32) -> bool {
    errno == nix::errno::Errno::ELOOP as i32 || errno == nix::errno::Errno::EXDEV as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `loongctl plugins doctor` finds these in a tree with `loong_ipc::package::tree_problems`
    /// and must say what the staging copy says.
    #[test]
    fn doctor_words_the_tree_refusals_as_the_staging_copy_does() {
        use loong_ipc::package::TreeError;
        let p = "sub/a.txt".to_string();
        for (ours, doctors) in [
            (
                StageError::HardLink(p.clone()),
                TreeError::HardLink(p.clone()),
            ),
            (
                StageError::NotRegular(p.clone()),
                TreeError::NotRegular(p.clone()),
            ),
            (StageError::Empty(p.clone()), TreeError::Empty(p.clone())),
        ] {
            assert_eq!(ours.to_string(), doctors.to_string());
        }
    }

    const ROOT: Reader = Reader { uid: 0, gid: 0 };

    fn package() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("dir");
        fs::write(dir.path().join("loong.plugin.json"), "{}").expect("manifest");
        fs::create_dir(dir.path().join("sub")).expect("sub");
        fs::write(dir.path().join("sub/a.txt"), "a").expect("a");
        dir
    }

    fn stage(src: &Path, reader: Reader) -> (tempfile::TempDir, Result<(), StageError>) {
        let out = tempfile::tempdir().expect("out");
        let home = tempfile::tempdir().expect("home");
        let dst = out.path().join("staged");
        let r = copy_package(src, &dst, home.path(), reader);
        (out, r)
    }

    #[test]
    fn a_plain_package_is_copied_and_anything_else_is_refused_by_its_name() {
        let pkg = package();
        let (out, r) = stage(pkg.path(), ROOT);
        r.expect("a plain package stages");
        assert_eq!(
            fs::read(out.path().join("staged/sub/a.txt")).expect("copied"),
            b"a"
        );
        // A symlink, a FIFO, a hard link: each refused, naming the entry.
        type Make = fn(&Path);
        let cases: [(&str, Make); 3] = [
            ("link", |d| {
                std::os::unix::fs::symlink("/etc/hostname", d.join("link")).expect("symlink")
            }),
            ("fifo", |d| {
                nix::unistd::mkfifo(
                    &d.join("fifo"),
                    nix::sys::stat::Mode::from_bits_truncate(0o644),
                )
                .expect("fifo")
            }),
            ("sub/a.txt", |d| {
                fs::hard_link(d.join("sub/a.txt"), d.join("twin")).expect("hard link")
            }),
        ];
        for (name, make) in cases {
            let pkg = package();
            make(pkg.path());
            let (_out, r) = stage(pkg.path(), ROOT);
            let err = r.expect_err(name).to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn empty_directories_count_against_the_entry_bound() {
        // Positive control: a package with a few empty directories stages.
        let pkg = package();
        for i in 0..8 {
            fs::create_dir(pkg.path().join(format!("empty{i}"))).expect("dir");
        }
        let (_out, r) = stage(pkg.path(), ROOT);
        r.expect("a few empty directories");
        // Names past the bound in one directory, none of them a file: refused while listed.
        let pkg = package();
        let wide = pkg.path().join("sub/wide");
        fs::create_dir(&wide).expect("wide");
        for i in 0..=MAX_PACKAGE_ENTRIES {
            fs::create_dir(wide.join(i.to_string())).expect("dir");
        }
        let (_out, r) = stage(pkg.path(), ROOT);
        let err = r.expect_err("too many entries").to_string();
        assert!(err.contains("sub/wide") && err.contains("entries"), "{err}");
    }

    #[test]
    fn a_relative_path_or_a_newline_in_a_name_is_refused_by_name() {
        let (_out, r) = stage(Path::new("relative/pkg"), ROOT);
        let err = r.expect_err("relative").to_string();
        assert!(
            err.contains("relative/pkg") && err.contains("absolute"),
            "{err}"
        );
        let pkg = package();
        fs::write(pkg.path().join("sub/bad\nname"), "x").expect("bad name");
        let (_out, r) = stage(pkg.path(), ROOT);
        let err = r.expect_err("newline").to_string();
        assert!(
            err.contains("sub/bad\\nname") && !err.contains('\n'),
            "{err}"
        );
    }

    #[test]
    fn a_caller_who_is_not_root_stages_only_what_it_could_read_itself() {
        use std::os::unix::fs::MetadataExt;
        let pkg = package();
        let owner = fs::metadata(pkg.path()).expect("meta");
        let other = Reader {
            uid: owner.uid() + 4242,
            gid: owner.gid() + 4242,
        };
        fs::set_permissions(pkg.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        for f in ["loong.plugin.json", "sub/a.txt"] {
            fs::set_permissions(pkg.path().join(f), fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        fs::set_permissions(pkg.path().join("sub"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let (_out, r) = stage(pkg.path(), other);
        r.expect("world-readable files stage for anyone");
        fs::set_permissions(
            pkg.path().join("sub/a.txt"),
            fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        let (_out, r) = stage(pkg.path(), other);
        let err = r.expect_err("unreadable").to_string();
        assert!(
            err.contains("sub/a.txt") && err.contains("cannot read"),
            "{err}"
        );
        let (_out, r) = stage(pkg.path(), ROOT);
        r.expect("root reads it");
    }

    #[test]
    fn a_caller_who_is_not_root_stages_nothing_below_a_directory_it_cannot_search() {
        use std::os::unix::fs::MetadataExt;
        // A world-readable package inside a private directory (another user's 0700 home).
        let private = tempfile::tempdir().expect("private");
        let pkg = private.path().join("pkg");
        fs::create_dir(&pkg).expect("pkg");
        fs::write(pkg.join("loong.plugin.json"), "{}").expect("manifest");
        fs::set_permissions(&pkg, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(
            pkg.join("loong.plugin.json"),
            fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let owner = fs::metadata(&pkg).expect("meta");
        let other = Reader {
            uid: owner.uid() + 4242,
            gid: owner.gid() + 4242,
        };
        fs::set_permissions(private.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        let (_out, r) = stage(&pkg, other);
        let err = r.expect_err("private parent").to_string();
        let shown = fs::canonicalize(private.path()).expect("real");
        assert!(
            err.contains(&shown.display().to_string()) && err.contains("cannot read"),
            "{err}"
        );
        // Control: once the parent is searchable (not even readable), it stages.
        fs::set_permissions(private.path(), fs::Permissions::from_mode(0o711)).expect("chmod");
        let (_out, r) = stage(&pkg, other);
        r.expect("a searchable parent");
    }

    #[test]
    fn the_directories_above_a_package_are_judged_as_they_hold_it_not_by_their_names() {
        use std::os::unix::fs::MetadataExt;
        // ATTEMPTS stagings race a swapper that exchanges `shared` (holding a private `v`
        // above a world-readable package) with `decoy` (a searchable `v` and a package of
        // the same name): the private package must never stage for another user, however
        // the names and the directories above it line up.
        const ATTEMPTS: usize = 2_000;
        let base = tempfile::tempdir().expect("base");
        let base = base.path().canonicalize().map(|p| (base, p)).expect("real");
        let (shared, decoy) = (base.1.join("shared"), base.1.join("decoy"));
        for (top, v_mode, body) in [(&shared, 0o700, "private"), (&decoy, 0o755, "decoy")] {
            let pkg = top.join("v/pkg");
            fs::create_dir_all(&pkg).expect("pkg");
            fs::write(pkg.join("loong.plugin.json"), body).expect("manifest");
            fs::set_permissions(
                pkg.join("loong.plugin.json"),
                fs::Permissions::from_mode(0o644),
            )
            .expect("chmod");
            fs::set_permissions(&pkg, fs::Permissions::from_mode(0o755)).expect("chmod");
            fs::set_permissions(top.join("v"), fs::Permissions::from_mode(v_mode)).expect("chmod");
        }
        let owner = fs::metadata(&shared).expect("meta");
        let other = Reader {
            uid: owner.uid() + 4242,
            gid: owner.gid() + 4242,
        };
        let given = shared.join("v/pkg");
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (mut staged, mut leaked, mut refused) = (0, 0, 0);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    nix::fcntl::renameat2(
                        None,
                        &shared,
                        None,
                        &decoy,
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    )
                    .expect("exchange");
                }
            });
            for _ in 0..ATTEMPTS {
                let (out, r) = stage(&given, other);
                match r {
                    Ok(()) => {
                        let body = fs::read_to_string(out.path().join("staged/loong.plugin.json"))
                            .expect("staged");
                        if body == "private" {
                            leaked += 1;
                        } else {
                            staged += 1;
                        }
                    }
                    Err(_) => refused += 1,
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        assert_eq!(leaked, 0, "{staged} staged, {refused} refused");
        // The control: the decoy, searchable all the way, staged during the race.
        assert!(
            staged > 0 && refused > 0,
            "{staged} staged, {refused} refused"
        );
    }
}
