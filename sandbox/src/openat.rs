//! Opening a name beneath a directory fd with `openat2(2)`, as an owned descriptor: what
//! loongd uses to read an operator-supplied tree without ever following a link out of it.
//! The descriptor is adopted through `sys` (the one module allowed `unsafe`).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
};

pub use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

/// How an entry of an operator-supplied tree (a plugin package) is opened for reading:
/// never through a link, never out of the directory or its mount, never blocking (a FIFO
/// opens at once, to be refused by its `fstat`), never as a controlling terminal.
pub fn beneath_read_only() -> OpenHow {
    OpenHow::new()
        .flags(
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_CLOEXEC,
        )
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        )
}

/// Opens `name` relative to the directory `dir` as `how` says, returning the descriptor
/// owned. The error is the system call's (`ELOOP` for a symlink under
/// `RESOLVE_NO_SYMLINKS`, `EXDEV` for a mount point under `RESOLVE_NO_XDEV`, `ENOSYS` on a
/// kernel before 5.6).
pub fn openat2(dir: BorrowedFd<'_>, name: &str, how: OpenHow) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::openat2(dir.as_raw_fd(), name, how).map_err(io::Error::from)?;
    // The descriptor was just returned by a successful open: nothing else owns it.
    crate::sys::adopt_fd(fd)
}

/// [`openat2`] with the open flags, mode and resolution rules given as the kernel's numbers
/// (`O_*`, a mode, `RESOLVE_*`); close-on-exec is always added.
pub fn openat2_bits(
    dir: BorrowedFd<'_>,
    path: &std::ffi::CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::from_bits_retain(flags | libc::O_CLOEXEC))
        .mode(nix::sys::stat::Mode::from_bits_retain(mode))
        .resolve(ResolveFlag::from_bits_retain(resolve));
    let fd = nix::fcntl::openat2(dir.as_raw_fd(), path, how).map_err(io::Error::from)?;
    // The descriptor was just returned by a successful open: nothing else owns it.
    crate::sys::adopt_fd(fd)
}
