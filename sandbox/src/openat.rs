//! Opening a name beneath a directory fd with `openat2(2)`, as an owned descriptor: what
//! loongd uses to read an operator-supplied tree without ever following a link out of it.
//! The descriptor is adopted through `sys` (the one module allowed `unsafe`).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
};

pub use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

/// Opens `name` relative to the directory `dir` as `how` says, returning the descriptor
/// owned. The error is the system call's (`ELOOP` for a symlink under
/// `RESOLVE_NO_SYMLINKS`, `EXDEV` for a mount point under `RESOLVE_NO_XDEV`, `ENOSYS` on a
/// kernel before 5.6).
pub fn openat2(dir: BorrowedFd<'_>, name: &str, how: OpenHow) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::openat2(dir.as_raw_fd(), name, how).map_err(io::Error::from)?;
    // The descriptor was just returned by a successful open: nothing else owns it.
    crate::sys::adopt_fd(fd)
}
