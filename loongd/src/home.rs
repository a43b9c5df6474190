//! Taking ownership of a home: directories with tight modes, the single-daemon lock, and
//! the control socket (a stale one left by a crashed daemon is replaced).

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{Read, Seek, Write},
    os::unix::{
        fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt},
        net::UnixListener,
    },
    path::{Path, PathBuf},
};

use loong_ipc::paths::Layout;
use nix::unistd::{Gid, Uid};

/// Mode of the directory holding the socket when no group is allowed.
pub const RUN_DIR_MODE: u32 = 0o700;
/// Mode of the directory holding the socket when a group is allowed (search only).
pub const RUN_DIR_GROUP_MODE: u32 = 0o710;
/// Mode of the control socket when no group is allowed.
pub const SOCKET_MODE: u32 = 0o600;
/// Mode of the control socket when a group is allowed.
pub const SOCKET_GROUP_MODE: u32 = 0o660;

/// Why a home could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// Another loongd holds the lock.
    #[error("another loongd (pid {pid}) is already running on home {}; stop it with `loongctl --home {} daemon stop`", home.display(), home.display())]
    AlreadyRunning { home: PathBuf, pid: String },
    /// Something is at the socket path that is not a socket.
    #[error("{} exists and is not a socket; move it away and start again", path.display())]
    NotASocket { path: PathBuf },
    /// A directory loongd must own belongs to someone else.
    #[error("{} is owned by uid {owner}, not by loongd's uid {ours}; fix its ownership", path.display())]
    ForeignOwner {
        path: PathBuf,
        owner: u32,
        ours: u32,
    },
    /// A file system operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> HomeError + 'a {
    move |source| HomeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A home this process owns: the lock is held until it is dropped, and the socket is
/// removed then.
#[derive(Debug)]
pub struct HomeLock {
    _lock: File,
    socket: PathBuf,
}

impl Drop for HomeLock {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.socket) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(socket = %self.socket.display(), error = %e, "could not remove the control socket");
            }
        }
    }
}

/// Creates the home's directories, takes the lock and binds the control socket.
/// `group` is the gid allowed besides the owner, if any.
pub fn take(layout: &Layout, group: Option<Gid>) -> Result<(HomeLock, UnixListener), HomeError> {
    let ours = Uid::effective().as_raw();
    make_private_dir(&layout.home, 0o700, ours)?;
    if let Some(config_dir) = layout.config_file.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(config_dir)
            .map_err(io("creating", config_dir))?;
    }
    if let Some(log_dir) = layout.log_file.parent() {
        make_private_dir(log_dir, 0o700, ours)?;
    }
    let run_mode = if group.is_some() {
        RUN_DIR_GROUP_MODE
    } else {
        RUN_DIR_MODE
    };
    make_private_dir(&layout.run_dir, run_mode, ours)?;
    if let Some(gid) = group {
        nix::unistd::chown(&layout.run_dir, None, Some(gid)).map_err(|e| HomeError::Io {
            what: "changing the group of",
            path: layout.run_dir.clone(),
            source: e.into(),
        })?;
    }

    let lock = lock(layout)?;

    match fs::symlink_metadata(&layout.socket) {
        Ok(m) if m.file_type().is_socket() => {
            // We hold the lock, so no daemon serves this socket: it is stale.
            tracing::warn!(socket = %layout.socket.display(), "replacing a stale control socket left by a daemon that did not shut down");
            fs::remove_file(&layout.socket)
                .map_err(io("removing the stale socket", &layout.socket))?;
        }
        Ok(_) => {
            return Err(HomeError::NotASocket {
                path: layout.socket.clone(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting", &layout.socket)(e)),
    }
    let listener = UnixListener::bind(&layout.socket)
        .map_err(io("binding the control socket", &layout.socket))?;
    let guard = HomeLock {
        _lock: lock,
        socket: layout.socket.clone(),
    };
    let mode = if group.is_some() {
        SOCKET_GROUP_MODE
    } else {
        SOCKET_MODE
    };
    fs::set_permissions(&layout.socket, fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", &layout.socket))?;
    if let Some(gid) = group {
        nix::unistd::chown(&layout.socket, None, Some(gid)).map_err(|e| HomeError::Io {
            what: "changing the group of",
            path: layout.socket.clone(),
            source: e.into(),
        })?;
    }
    Ok((guard, listener))
}

/// Creates `path` with `mode` if missing; if present, it must be ours, and its mode is set.
fn make_private_dir(path: &Path, mode: u32, ours: u32) -> Result<(), HomeError> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io("creating", path))?;
    let meta = fs::metadata(path).map_err(io("inspecting", path))?;
    if meta.uid() != ours {
        return Err(HomeError::ForeignOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            ours,
        });
    }
    if meta.mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(io("setting the mode of", path))?;
    }
    Ok(())
}

fn lock(layout: &Layout) -> Result<File, HomeError> {
    let path = &layout.lock_file;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io("opening the lock file", path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim().chars().take(20).collect::<String>();
            return Err(HomeError::AlreadyRunning {
                home: layout.home.clone(),
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid
                },
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io("locking", path)(e)),
    }
    file.set_len(0).map_err(io("writing", path))?;
    file.rewind().map_err(io("writing", path))?;
    writeln!(file, "{}", std::process::id()).map_err(io("writing", path))?;
    Ok(file)
}

/// What [`read_bounded`] read.
#[derive(Debug, PartialEq, Eq)]
pub enum Bounded {
    /// The whole file, at most the bound.
    Read(Vec<u8>),
    /// The file is larger than the bound (its size, or more than the bound when it grew).
    TooLarge(u64),
}

/// Reads the regular file at `path`, at most `max` bytes, from one descriptor: the size is
/// judged on the file that is read, not on what the name led to a moment before (a symlink
/// to `/dev/zero` has size 0, and a file swapped in after a `metadata` could be any size).
/// Opening never waits (`O_NONBLOCK`: a FIFO opens at once) and anything but a regular file
/// is refused before a byte is read, so a FIFO or device at the name cannot hang or exhaust
/// loongd.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Bounded> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device or directory); give a file",
        ));
    }
    if meta.len() > max {
        return Ok(Bounded::TooLarge(meta.len()));
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    let len = bytes.len() as u64;
    Ok(if len > max {
        Bounded::TooLarge(len)
    } else {
        Bounded::Read(bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_read_judges_the_file_it_reads() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("f");
        fs::write(&file, "12345").expect("write");
        // The control: a regular file within the bound, and one just above it.
        assert_eq!(
            read_bounded(&file, 5).expect("read"),
            Bounded::Read(b"12345".to_vec())
        );
        assert_eq!(read_bounded(&file, 4).expect("read"), Bounded::TooLarge(5));
        // A link to an endless device (size 0 by metadata), a FIFO with no writer and a
        // directory are refused before a byte is read.
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).expect("link");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        for p in [&zero, &fifo, &dir.path().to_path_buf()] {
            let err = read_bounded(p, 4096).expect_err("refused");
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{p:?}: {err}");
        }
    }

    #[test]
    fn second_take_is_refused_and_stale_socket_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::user(dir.path()).expect("layout");
        let (guard, _l) = take(&layout, None).expect("first take");
        let mode = fs::metadata(&layout.socket).expect("socket").mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        assert_eq!(
            fs::metadata(&layout.run_dir).expect("run dir").mode() & 0o777,
            RUN_DIR_MODE
        );
        let err = take(&layout, None).expect_err("second take");
        assert!(
            matches!(&err, HomeError::AlreadyRunning { pid, .. } if *pid == std::process::id().to_string()),
            "{err}"
        );
        drop((guard, _l));
        assert!(
            !layout.socket.exists(),
            "a clean release removes the socket"
        );
        let _again = take(&layout, None).expect("taken again after release");
        // A crashed daemon leaves its socket behind; the next one replaces it.
        let dir2 = tempfile::tempdir().expect("tempdir");
        let layout2 = Layout::user(dir2.path()).expect("layout");
        fs::create_dir_all(&layout2.run_dir).expect("run dir");
        drop(UnixListener::bind(&layout2.socket).expect("stale socket"));
        let (_g, _l2) = take(&layout2, None).expect("stale socket replaced");
        assert!(fs::symlink_metadata(&layout2.socket)
            .expect("socket")
            .file_type()
            .is_socket());
    }

    #[test]
    fn a_file_at_the_socket_path_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::user(dir.path()).expect("layout");
        fs::create_dir_all(&layout.run_dir).expect("run dir");
        fs::write(&layout.socket, b"not a socket").expect("file");
        assert!(matches!(
            take(&layout, None),
            Err(HomeError::NotASocket { .. })
        ));
    }
}
