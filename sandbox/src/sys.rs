//! The only module in the workspace allowed to use `unsafe`: thin wrappers over the few
//! system calls nix does not cover safely (fork, close_range, pidfd_open, raw errno-style
//! probes), each with a `// SAFETY:` argument that local reasoning can check.
#![allow(unsafe_code)]

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    process::Command,
};

/// Result of [`fork`].
#[derive(Debug)]
pub(crate) enum Forked {
    /// In the parent: the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// `fork(2)`.
///
/// Only the spawn helper calls this, and the helper is single-threaded (it is its own
/// process, started by `execve`, and never creates a thread), so the child may run any code.
pub(crate) fn fork() -> io::Result<Forked> {
    // SAFETY: the caller is the single-threaded spawn helper (see above), so no lock can be
    // held by another thread at the time of the fork.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child.as_raw())),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// The stack a child of [`vfork_exec`] runs on (its own mapping, reserved, not committed: only
/// the pages it touches are made), with [`GUARD_BYTES`] at its low end that fault.
const VFORK_STACK_BYTES: usize = 1 << 20;
/// The inaccessible low end of that stack: an overflow faults there instead of writing the
/// memory below it, which the parent shares.
const GUARD_BYTES: usize = 64 << 10;

/// The exit code of a child of [`vfork_exec`] whose closure returned.
pub(crate) const VFORK_CHILD_RETURNED: i32 = 125;

/// The highest signal number of the kernel (`_NSIG`), the last one whose handler a child of
/// [`vfork_exec`] resets.
const KERNEL_SIGNALS: i32 = 64;

/// The kernel's `struct sigaction` for `rt_sigaction` (not libc's: glibc refuses the numbers
/// it keeps for itself, whose handlers a child must not keep either).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// In a child of [`vfork_exec`] (with every signal blocked) and in a forked payload: every
/// signal the parent handles goes back to its default action (an ignored one stays ignored,
/// as across `execve`), so no handler of the parent's runs in the child (on the memory they
/// share, when vforked).
pub(crate) fn reset_handlers() {
    for sig in 1..=KERNEL_SIGNALS {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut now = KernelSigaction {
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        // SAFETY: rt_sigaction with a null new action and a live `KernelSigaction` (the
        // kernel's layout, of the size passed) to write the current one into; no handler is
        // installed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<KernelSigaction>(),
                &mut now as *mut KernelSigaction,
                std::mem::size_of::<u64>(),
            )
        };
        if rc != 0 || now.handler == libc::SIG_DFL || now.handler == libc::SIG_IGN {
            continue;
        }
        let default = KernelSigaction {
            handler: libc::SIG_DFL,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        // SAFETY: as above; the new action is SIG_DFL, which is no function, so no restorer
        // is needed and no code of this process runs for the signal.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

/// Sets the calling thread's signal mask to `to`; returns the one it had.
fn set_signal_mask(to: &libc::sigset_t) -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is a valid (empty) set.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are live values of the right type for the duration of the call;
    // pthread_sigmask only changes this thread's mask (SIGKILL and SIGSTOP stay unblockable).
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, to, &mut old) };
    old
}

/// What a child of [`vfork_exec`] starts with: its closure and the signal mask to restore.
struct VforkStart<F> {
    child: Option<F>,
    mask: libc::sigset_t,
}

/// `clone(CLONE_VM | CLONE_VFORK | SIGCHLD)`: runs `child` in a new process that shares this
/// one's memory (no copy of the address space, no copy-on-write faults, nothing for the
/// child's `execve` to tear down), on a stack of its own, while the calling thread waits until
/// the child has called `execve` or exited; returns the child's pid.
///
/// The child has its own descriptor table, working directory, credentials, seccomp filters,
/// landlock domain and signal handlers (none of `CLONE_FILES`, `CLONE_FS`, `CLONE_THREAD`,
/// `CLONE_SIGHAND` is given): only memory is shared, and only while the caller waits. Every
/// signal is blocked from before the clone; the child resets every handled signal to its
/// default action, then takes the caller's mask back, before `child` runs (so a signal
/// never runs a handler of the caller's on the shared memory), and the caller takes its mask
/// back once the child has exec'd or exited. `child` must end in `execve` or `_exit` (one
/// that returns exits with [`VFORK_CHILD_RETURNED`]) and must not unwind. Only the
/// single-threaded reaper calls this, so no other thread runs on the shared memory while the
/// child does.
pub(crate) fn vfork_exec<F: FnOnce()>(child: F) -> io::Result<i32> {
    extern "C" fn entry<F: FnOnce()>(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` points to the `VforkStart<F>` in `vfork_exec`'s frame, which stays
        // alive and untouched while this child runs: the thread that owns the frame is
        // suspended (`CLONE_VFORK`) until the child has exec'd or exited.
        let start = unsafe { &mut *(arg as *mut VforkStart<F>) };
        reset_handlers();
        set_signal_mask(&start.mask);
        if let Some(f) = start.child.take() {
            f();
        }
        exit_now(VFORK_CHILD_RETURNED)
    }
    // SAFETY: an anonymous private mapping at an address the kernel chooses; no existing
    // memory is touched, and the result is checked before use.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            VFORK_STACK_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let unmap = || {
        // SAFETY: `stack` is the mapping made above, of that length, used by nothing once the
        // child has exec'd or exited (or was never started).
        unsafe { libc::munmap(stack, VFORK_STACK_BYTES) };
    };
    // SAFETY: the low end of the mapping made above, which nothing uses yet.
    if unsafe { libc::mprotect(stack, GUARD_BYTES, libc::PROT_NONE) } != 0 {
        let e = io::Error::last_os_error();
        unmap();
        return Err(e);
    }
    // SAFETY: a zeroed sigset_t is valid; sigfillset only writes the set it is given.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::sigfillset(&mut all) };
    let mask = set_signal_mask(&all);
    let mut start = VforkStart {
        child: Some(child),
        mask,
    };
    // The stack grows down from the mapping's end (page-aligned, so 16-byte aligned).
    let top = (stack as usize + VFORK_STACK_BYTES) as *mut libc::c_void;
    // SAFETY: `entry::<F>` never returns (it runs `F`, which ends in execve or _exit); `top`
    // is the end of a writable mapping of this process that nothing else uses; the argument
    // is the live `start` (see `entry`). With CLONE_VM | CLONE_VFORK this thread resumes only
    // once the child has exec'd or exited, so it never runs beside the child on the shared
    // memory, and the caller is single-threaded (see above).
    let pid = unsafe {
        libc::clone(
            entry::<F>,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &mut start as *mut VforkStart<F> as *mut libc::c_void,
        )
    };
    let err = io::Error::last_os_error();
    set_signal_mask(&start.mask);
    unmap();
    if pid < 0 {
        return Err(err);
    }
    Ok(pid)
}

/// A program, its arguments and its environment made ready for `execve` before the child
/// that runs it starts (a child of [`vfork_exec`] allocates nothing for its `execve`). An
/// argument with a NUL byte inside becomes empty (the plan refuses such input before).
pub(crate) struct ExecArgs {
    prog: std::ffi::CString,
    _strings: Vec<std::ffi::CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl ExecArgs {
    pub(crate) fn new<'a>(
        prog: &[u8],
        argv: impl IntoIterator<Item = &'a [u8]>,
        envp: impl IntoIterator<Item = &'a [u8]>,
    ) -> ExecArgs {
        let c = |b: &[u8]| std::ffi::CString::new(b).unwrap_or_default();
        let args: Vec<std::ffi::CString> = argv.into_iter().map(c).collect();
        let env: Vec<std::ffi::CString> = envp.into_iter().map(c).collect();
        // The pointers point into each string's own heap buffer, which moving the strings
        // into `_strings` below does not move.
        let ptrs = |v: &[std::ffi::CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        let (argv, envp) = (ptrs(&args), ptrs(&env));
        let mut strings = args;
        strings.extend(env);
        ExecArgs {
            prog: c(prog),
            _strings: strings,
            argv,
            envp,
        }
    }

    /// `execve`; returns only on failure, with the errno.
    pub(crate) fn exec(&self) -> i32 {
        // SAFETY: the program is a NUL-terminated string and both arrays are null-terminated
        // arrays of pointers to NUL-terminated strings, all owned by `self`, which outlives
        // the call; execve reads them and, on success, does not return.
        unsafe { libc::execve(self.prog.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL)
    }
}

/// `setgroups`, `setresgid`, `setresuid` as the system calls themselves: the change is this
/// process's alone. glibc's wrappers would pass it to every thread it knows of, and in a
/// child of [`vfork_exec`] those are the caller's (whose memory the child shares).
pub(crate) fn set_groups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: a pointer to `groups.len()` live gid values, which the kernel only reads.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `setresgid(2)` as the system call (see [`set_groups`]).
pub(crate) fn set_resgid(r: u32, e: u32, s: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    let rc = unsafe { libc::syscall(libc::SYS_setresgid, r, e, s) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `setresuid(2)` as the system call (see [`set_groups`]).
pub(crate) fn set_resuid(r: u32, e: u32, s: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    let rc = unsafe { libc::syscall(libc::SYS_setresuid, r, e, s) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `close_range(first, ~0, 0)`: closes every descriptor from `first` up.
pub(crate) fn close_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes plain integers and only closes descriptors; no memory is
    // passed. Descriptors owned by Rust objects alive in this process could be invalidated,
    // so callers use it only in the helper before any such object exists above `first`.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `MOUNT_ATTR_RDONLY` of `<linux/mount.h>`.
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `MOUNT_ATTR_NOSUID`.
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// `MOUNT_ATTR_NODEV`.
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `struct mount_attr` of `<linux/mount.h>` (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH | AT_RECURSIVE)`: sets `attr_set` (only sets, never
/// clears) on the mount whose root `fd` holds and on every mount below it.
pub(crate) fn mount_set_recursive(fd: BorrowedFd<'_>, attr_set: u64) -> io::Result<()> {
    mount_set(fd, attr_set, libc::AT_RECURSIVE)
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH)`: sets `attr_set` on the mount whose root `fd`
/// holds only, not on the mounts below it.
pub(crate) fn mount_set_one(fd: BorrowedFd<'_>, attr_set: u64) -> io::Result<()> {
    mount_set(fd, attr_set, 0)
}

fn mount_set(fd: BorrowedFd<'_>, attr_set: u64, recursive: libc::c_int) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the path is a NUL-terminated static string and `attr` a live, initialised
    // `struct mount_attr` whose size is passed with it; the kernel only reads both for the
    // duration of the call, and `fd` is a descriptor borrowed for that duration.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | recursive) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `statx(fd, "", AT_EMPTY_PATH)`: the object's (`st_dev`, `st_ino`) and whether it is the
/// root of a mount (`STATX_ATTR_MOUNT_ROOT`); an error when the kernel does not report that
/// attribute (before Linux 5.8).
pub(crate) fn mount_root_id(fd: BorrowedFd<'_>) -> io::Result<((u64, u64), bool)> {
    // SAFETY: `statx` is plain data; all-zero is a valid value that the call overwrites.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated static path, a descriptor borrowed for the call and a pointer
    // to a live `statx` the kernel writes within its size.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_INO,
            &mut stx,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let attr = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if stx.stx_attributes_mask & attr == 0 {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    let dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    Ok(((dev, stx.stx_ino), stx.stx_attributes & attr != 0))
}

/// `pidfd_open(pid, 0)`.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; on success the kernel returns a new descriptor that
    // nothing else owns, which we wrap exactly once.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by no one else (see above).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A connected pair of close-on-exec `SOCK_SEQPACKET` Unix sockets (the spawn server's and
/// its helpers' message channels).
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`.
pub(crate) fn pidfd_send_signal(pidfd: RawFd, sig: i32) -> io::Result<()> {
    // SAFETY: integer arguments and a null siginfo pointer, which the call documents as valid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Arranges for the child of `cmd` to receive `fds[i].0` as descriptor `fds[i].1`.
///
/// The closure runs between fork and exec in a possibly multi-threaded parent, so it does
/// only async-signal-safe work: `dup2`/`fcntl` on descriptors that were opened before the
/// fork. Targets must not collide with each other's sources (the caller places sources above
/// every target).
pub(crate) fn map_fds(cmd: &mut Command, fds: Vec<(RawFd, RawFd)>) {
    let closure = move || -> io::Result<()> {
        for &(from, to) in &fds {
            if from == to {
                // SAFETY: fcntl on a descriptor that is open in the child; clears CLOEXEC so it
                // survives exec. Async-signal-safe.
                let flags = unsafe { libc::fcntl(from, libc::F_GETFD) };
                // SAFETY: as above.
                if flags < 0
                    || unsafe { libc::fcntl(from, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0
                {
                    return Err(io::Error::last_os_error());
                }
            // SAFETY: dup2 of an open descriptor onto a target number; async-signal-safe, and
            // the new descriptor does not carry CLOEXEC.
            } else if unsafe { libc::dup2(from, to) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure only calls dup2 and fcntl, which are async-signal-safe, and touches
    // no memory other than its own captured vector (allocated before the fork).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, closure);
    }
}

/// `struct clone_args` of `<linux/sched.h>` (`CLONE_ARGS_SIZE_VER0`).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// A fork (`clone3` with `CLONE_PIDFD`) that gives the parent a pidfd of its child made with
/// it: the child is named by its pidfd whatever happens to its pid (a caller that ignores
/// `SIGCHLD` has its dead children reaped at once, and their pids reused). The caller is
/// single-threaded, as for [`fork`].
pub(crate) fn fork_pidfd() -> io::Result<Option<OwnedFd>> {
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
    };
    // SAFETY: `args` is a live, initialised `struct clone_args` whose size is passed with it,
    // and `pidfd` a live int the kernel writes once; without a stack the child continues on
    // a copy of this (single-threaded) process's memory, as after `fork`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match rc {
        0 => Ok(None),
        r if r < 0 => Err(io::Error::last_os_error()),
        // SAFETY: `pidfd` is a new descriptor the kernel made for us alone.
        _ => Ok(Some(unsafe { OwnedFd::from_raw_fd(pidfd) })),
    }
}

/// A raw system call with up to six integer arguments; returns the result or `-errno`.
/// Used only by the host probe (`host.rs`) to ask the kernel whether a mechanism exists.
pub(crate) fn raw_syscall(nr: i64, args: [u64; 6]) -> i64 {
    // SAFETY: callers pass only integer arguments (null pointers or sizes), never pointers to
    // memory the kernel could write; the probe calls are ones whose integer-only forms are
    // harmless (queries).
    let rc = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
    if rc < 0 {
        -i64::from(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL),
        )
    } else {
        rc
    }
}

/// Adopts descriptor `fd` as an owned descriptor. Callers pass only descriptors that nothing
/// else in this process owns: ones inherited across exec by contract (the spawn helper's fds
/// 3 and 4), received through SCM_RIGHTS, or just returned by `fcntl(F_DUPFD_CLOEXEC)` or
/// a successful `openat2` (`openat::openat2`).
pub(crate) fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // F_GETFD tells us whether the descriptor is open at all, without side effects.
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).map_err(io::Error::from)?;
    // SAFETY: the descriptor is open (checked above) and, by the callers' contract, owned by
    // nothing else in this process, so wrapping it once cannot double-close it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets SIGCHLD's disposition: ignored (the kernel reaps children at once, as the spawn
/// server wants) or the default (what every forked child must restore before it waits).
pub(crate) fn sigchld(ignore: bool) -> io::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    let handler = if ignore {
        SigHandler::SigIgn
    } else {
        SigHandler::SigDfl
    };
    // SAFETY: SIG_IGN and SIG_DFL are not functions, so no handler code can run in a signal
    // context; changing a disposition is otherwise harmless in this single-threaded process.
    unsafe { signal(Signal::SIGCHLD, handler) }
        .map(|_| ())
        .map_err(io::Error::from)
}

/// Installs `handler` for `sig`, every other signal blocked while it runs (it is meant to end
/// the process: see the reaper's `helper_died`).
pub(crate) fn on_signal(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    install_handler(sig, handler, 0, true)
}

/// `sigaction(sig)` with `handler`, `flags`, and every signal blocked while it runs when
/// `block_all` (else none). The handler must do only async-signal-safe work.
fn install_handler(
    sig: libc::c_int,
    handler: extern "C" fn(libc::c_int),
    flags: libc::c_int,
    block_all: bool,
) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid value (empty mask, no flags); the fields set
    // below are plain integers and the address of an `extern "C"` handler whose callers
    // promise it does only async-signal-safe work.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler as usize;
    act.sa_flags = flags;
    if block_all {
        // SAFETY: `act.sa_mask` is a valid sigset_t owned by `act`.
        unsafe { libc::sigfillset(&mut act.sa_mask) };
    }
    // SAFETY: `act` is a valid sigaction that outlives the call; the old action is not asked
    // for (null), which the call documents as valid.
    let rc = unsafe { libc::sigaction(sig, &act, std::ptr::null_mut()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where [`forward_interrupt`] sends SIGINT: a pidfd (the helper's reaper), or -1.
static INTERRUPT_PIDFD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// The SIGINT handler of the helper and the reaper. The helper (outside the sandbox) passes
/// the signal to its reaper through the reaper's pidfd; the reaper, pid 1 of the sandbox's
/// pid namespace, passes it to every other process of that namespace (`kill(-1)`, what a
/// terminal's Ctrl-C does to a foreground process group). Any other process does nothing (the
/// payload, forked or vforked, resets every handler to the default first thing, see
/// [`reset_handlers`], so it never runs this): `kill(-1)` is only ever sent from pid 1 of a
/// new pid namespace, never on the host.
extern "C" fn forward_interrupt(_sig: libc::c_int) {
    // SAFETY: errno is thread-local and this process has one thread; saving and restoring it
    // keeps the interrupted code's errno. getpid, kill and pidfd_send_signal take integers
    // (and a null siginfo) and are async-signal-safe; the atomic load is lock-free.
    unsafe {
        let errno = *libc::__errno_location();
        let fd = INTERRUPT_PIDFD.load(std::sync::atomic::Ordering::Relaxed);
        if fd >= 0 {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGINT,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            );
        } else if libc::getpid() == 1 {
            libc::kill(-1, libc::SIGINT);
        }
        *libc::__errno_location() = errno;
    }
}

/// Installs [`forward_interrupt`] for SIGINT (with `SA_RESTART`), forwarding to `to` (a
/// pidfd this process keeps open for the rest of its life) when given.
pub(crate) fn forward_interrupts(to: Option<OwnedFd>) -> io::Result<()> {
    use std::os::fd::IntoRawFd;
    if let Some(fd) = to {
        INTERRUPT_PIDFD.store(fd.into_raw_fd(), std::sync::atomic::Ordering::Relaxed);
    }
    // `forward_interrupt` does only async-signal-safe work.
    install_handler(libc::SIGINT, forward_interrupt, libc::SA_RESTART, false)
}

/// `_exit(code)`: leaves a forked child without running the parent's exit handlers.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an integer and never returns; skipping atexit handlers is the point.
    unsafe { libc::_exit(code) }
}

/// `close_range(first, last, 0)`.
pub(crate) fn close_between(first: u32, last: u32) -> io::Result<()> {
    if first > last {
        return Ok(());
    }
    // SAFETY: as for `close_from`: integer arguments, called in a forked child that owns no
    // Rust object whose descriptor lies in the range.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, prog)`: installs one more
/// filter on every thread of the process without `prctl` (a worker under the restricted
/// allowlist may call `seccomp` but not `prctl`; `no_new_privs` is already set by its
/// sandbox).
pub(crate) fn seccomp_set_filter(prog: &[seccompiler::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies the
    // program and keeps no pointer to it. seccompiler's `sock_filter` has libc's layout.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &fprog as *const libc::sock_fprog,
        )
    };
    match rc {
        0 => Ok(()),
        // With TSYNC, a positive answer is the id of a thread that could not be synced.
        tid if tid > 0 => Err(io::Error::other(format!(
            "thread {tid} could not take the filter"
        ))),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Sends one descriptor over a Unix socket (`SCM_RIGHTS`, with one byte of payload).
pub(crate) fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(&[1u8])];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    Ok(())
}

/// One message received with [`recv_owning_fds`].
#[derive(Debug)]
pub(crate) struct Received {
    /// The bytes of the message read into the buffer.
    pub bytes: usize,
    /// The control data did not fit (`MSG_CTRUNC`): descriptors beyond `max_fds` were
    /// closed by the kernel, and the message is to be refused.
    pub truncated: bool,
    /// Every descriptor installed for the message (close-on-exec), owned.
    pub fds: Vec<OwnedFd>,
}

/// `recvmsg` of one message into `buf` with room for `max_fds` descriptors, every
/// descriptor the kernel installed owned, even when the control data was truncated
/// (`MSG_CTRUNC`: the kernel installs those that fit and closes the rest; nix's parser
/// refuses such a message, which would leave the installed ones open for ever).
pub(crate) fn recv_owning_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    flags: libc::c_int,
) -> io::Result<Received> {
    let fd_bytes = u32::try_from(max_fds * std::mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: CMSG_SPACE computes a length from an integer; it reads no memory.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    // u64 words: aligned for a cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data (integers and pointers); all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `iov` (over `buf`, live and writable for its length) and at
    // `control` (live and writable for `space` bytes), both outliving the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    let end = control.as_ptr() as usize + (msg.msg_controllen as usize).min(space);
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR and CMSG_NXTHDR stay within its
    // `msg_controllen` bytes of `control`, which is live.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` is a header CMSG_FIRSTHDR/CMSG_NXTHDR found inside `control`.
        let header = unsafe { std::ptr::read_unaligned(c) };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: the data of the header `c`, inside `control`.
            let data = unsafe { libc::CMSG_DATA(c) };
            let data_len = (c as usize + header.cmsg_len as usize)
                .min(end)
                .saturating_sub(data as usize);
            for i in 0..data_len / std::mem::size_of::<libc::c_int>() {
                // SAFETY: the i-th descriptor of the header's data, inside `control` (bounded
                // by the header's length and the control data's end above).
                let raw = unsafe { std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i)) };
                // SAFETY: each descriptor was just installed by SCM_RIGHTS for this process;
                // nothing else refers to it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR; `c` is a header inside the control data.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    Ok(Received {
        bytes: n as usize,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        fds,
    })
}

/// Receives the descriptors of one `SCM_RIGHTS` message (close-on-exec); an empty list when
/// the message carried none, an error at the end of the stream.
pub(crate) fn receive_fds(sock: BorrowedFd<'_>) -> io::Result<Vec<OwnedFd>> {
    let mut byte = [0u8; 1];
    let msg = recv_owning_fds(sock, &mut byte, MESSAGE_FDS, 0)?;
    if msg.bytes == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if msg.truncated {
        return Err(truncated());
    }
    Ok(msg.fds)
}

/// The most descriptors [`receive_fds`] and [`recv_tagged`] take from one message; one
/// carrying more is refused, every descriptor of it closed.
const MESSAGE_FDS: usize = 4;

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a message carried more than {MESSAGE_FDS} descriptors; refused, all closed"),
    )
}

/// `SO_PEERGROUPS` (Linux 4.13; the same number on x86_64 and every generic architecture).
const SO_PEERGROUPS: libc::c_int = 59;
/// The most supplementary groups a process may have (`NGROUPS_MAX`).
const NGROUPS_MAX: usize = 65536;
/// Groups asked for on the first try; a longer list is read again at its size.
const PEER_GROUPS_FIRST_TRY: usize = 64;

/// `getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS)`: the supplementary groups the peer of a unix
/// socket had when it connected (as this process's user namespace sees them).
pub(crate) fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut want = PEER_GROUPS_FIRST_TRY;
    loop {
        let mut groups = vec![0u32; want];
        let mut len = libc::socklen_t::try_from(want * std::mem::size_of::<u32>())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `groups` is a live buffer of `len` bytes that getsockopt may fill, and `len`
        // is a live socklen_t it may update; the fd is borrowed for the call.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let bytes = len as usize;
        if rc == 0 {
            groups.truncate(bytes / std::mem::size_of::<u32>());
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // ERANGE: the list is longer; `len` now holds its size.
        let need = bytes / std::mem::size_of::<u32>();
        if err.raw_os_error() != Some(libc::ERANGE) || need <= want || need > NGROUPS_MAX {
            return Err(err);
        }
        want = need;
    }
}

/// Brings the loopback interface (`lo`) of the caller's network namespace up:
/// `ioctl(SIOCGIFFLAGS)`, then `ioctl(SIOCSIFFLAGS)` with `IFF_UP` added. Needs
/// `CAP_NET_ADMIN` in the namespace's owning user namespace (the sandbox's reaper has it).
pub(crate) fn loopback_up() -> io::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let s = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    // SAFETY: ifreq is plain old data (integers, a char array and a union of such); all
    // zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a live ifreq the kernel reads the name from and writes the flags into;
    // the socket is borrowed for the call.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS as libc::Ioctl, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled `ifru_flags`, the union member read and written here.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as above; the kernel only reads `req`.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS as libc::Ioctl, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message of an egress socket without blocking: its first byte (the tag) and
/// the descriptors it carried (close-on-exec); `None` at the end of the stream.
pub(crate) fn recv_tagged(sock: BorrowedFd<'_>) -> io::Result<Option<(u8, Vec<OwnedFd>)>> {
    let mut byte = [0u8; 1];
    let msg = recv_owning_fds(sock, &mut byte, MESSAGE_FDS, libc::MSG_DONTWAIT)?;
    if msg.truncated {
        return Err(truncated());
    }
    if msg.bytes == 0 && msg.fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((byte[0], msg.fds)))
}

/// The mount flags `statvfs(3)` reports for `path` (`f_flag`), every bit the kernel set: nix's
/// `FsFlags` keeps only the bits it names for the libc it was built for (no `ST_NOSYMFOLLOW`
/// at all, no `ST_RELATIME` on musl), so a flag it does not name would be lost.
pub(crate) fn statvfs_flags(path: &std::path::Path) -> io::Result<libc::c_ulong> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `st` points to
    // writable memory of the size of the struct statvfs fills.
    if unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the whole struct.
    Ok(unsafe { st.assume_init() }.f_flag)
}

/// Sets glibc malloc's `M_ARENA_MAX` to `n`. Beyond the main arena, malloc opens files a
/// worker confined by [`crate::worker::confine_self`] may no longer open
/// ([`crate::worker::CONFINED_MALLOC_ARENAS`]). Returns whether malloc took it.
#[cfg(target_env = "gnu")]
pub(crate) fn malloc_arena_max(n: i32) -> bool {
    // SAFETY: mallopt sets one of malloc's parameters from a plain integer; it takes malloc's
    // own lock and touches no memory of the caller's.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
}

/// Built for another libc (loongctl on musl, which never confines a worker): malloc is not
/// glibc's, and nothing is set.
#[cfg(not(target_env = "gnu"))]
pub(crate) fn malloc_arena_max(_n: i32) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

    /// The child runs on the caller's memory (what it writes there is seen) and the caller
    /// resumes only once it has exited (it writes after a pause); its descriptor table is its
    /// own (a descriptor it closes stays open in the caller).
    #[test]
    fn a_vforked_child_shares_only_memory_and_its_parent_waits_for_it() {
        let seen = AtomicU32::new(0);
        let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let raw = r.as_raw_fd();
        let pid = vfork_exec(|| {
            let _ = nix::unistd::close(raw);
            std::thread::sleep(std::time::Duration::from_millis(50));
            seen.store(7, Ordering::SeqCst);
            exit_now(3)
        })
        .expect("clone");
        assert_eq!(seen.load(Ordering::SeqCst), 7);
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).expect("wait");
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 3)
        );
        // Control: the caller's descriptor is still open.
        assert!(nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFD).is_ok());
    }

    fn handler_of(sig: i32) -> usize {
        let mut now = KernelSigaction {
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        // SAFETY: a query (null new action) into a live struct of the kernel's layout.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<KernelSigaction>(),
                &mut now as *mut KernelSigaction,
                std::mem::size_of::<u64>(),
            )
        };
        now.handler
    }

    fn blocked(sig: i32) -> bool {
        // SAFETY: a zeroed sigset_t is valid; a query with a null new set only writes `now`.
        let mut now: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe {
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut now);
            libc::sigismember(&now, sig) == 1
        }
    }

    /// A vforked child runs none of its parent's signal handlers: a signal the caller handles
    /// is at its default action in the child before its closure runs, and the child's mask is
    /// the caller's (not the everything-blocked one of the clone); the caller keeps its
    /// handler and gets its mask back.
    #[test]
    fn a_vforked_child_starts_with_default_handlers_and_its_callers_mask() {
        extern "C" fn noop(_: libc::c_int) {}
        use nix::sys::signal::{pthread_sigmask, signal, SigHandler, SigSet, SigmaskHow, Signal};
        // SAFETY: a handler that does nothing, for a signal nothing sends in this test.
        unsafe { signal(Signal::SIGUSR2, SigHandler::Handler(noop)) }.expect("handler");
        let mut winch = SigSet::empty();
        winch.add(Signal::SIGWINCH);
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&winch), None).expect("mask");
        let (handler, winch_blocked, usr1_blocked) =
            (AtomicUsize::new(7), AtomicU32::new(9), AtomicU32::new(9));
        let pid = vfork_exec(|| {
            handler.store(handler_of(libc::SIGUSR2), Ordering::SeqCst);
            winch_blocked.store(u32::from(blocked(libc::SIGWINCH)), Ordering::SeqCst);
            usr1_blocked.store(u32::from(blocked(libc::SIGUSR1)), Ordering::SeqCst);
            exit_now(0)
        })
        .expect("clone");
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        let in_parent = handler_of(libc::SIGUSR2);
        let parent_winch = blocked(libc::SIGWINCH);
        let parent_usr1 = blocked(libc::SIGUSR1);
        pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&winch), None).expect("mask");
        // SAFETY: the default action, no code.
        unsafe { signal(Signal::SIGUSR2, SigHandler::SigDfl) }.expect("default");
        assert_eq!(
            handler.load(Ordering::SeqCst),
            libc::SIG_DFL,
            "the child kept the handler"
        );
        assert_eq!(
            winch_blocked.load(Ordering::SeqCst),
            1,
            "the caller's mask in the child"
        );
        assert_eq!(
            usr1_blocked.load(Ordering::SeqCst),
            0,
            "all signals blocked in the child"
        );
        // Control: the caller keeps its handler, and its own mask.
        assert_eq!(in_parent, noop as extern "C" fn(libc::c_int) as usize);
        assert!(parent_winch && !parent_usr1);
    }
}
