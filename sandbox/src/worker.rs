//! What a worker process does for itself inside its sandbox: take the socket loongd handed it
//! (fd 3), and, once initialised, confine itself further before it reads the first untrusted
//! byte.
//!
//! The final step narrows what the tier already enforces, never widens it:
//! - a landlock ruleset that handles every file-system and network access and grants none,
//!   and scopes signals and abstract sockets (after it, no path opens at all);
//! - a seccomp filter that kills the process on `execve`, new processes (`fork`, `vfork`,
//!   `clone` without `CLONE_THREAD`), `open*`, sockets, `ptrace` and cross-process memory
//!   access, installed on every thread (`SECCOMP_FILTER_FLAG_TSYNC`), so the threads started
//!   during initialisation (the WASM epoch ticker) carry it too. The landlock ruleset binds
//!   the calling thread, which is the one that runs plugin code; the other threads keep the
//!   tier's ruleset (landlock has no thread sync before ABI 8).
//!
//! Both calls only ever add restrictions, which is why the restricted tier's allowlist lets a
//! payload make them (`seccomp`, `landlock_*`) while it refuses `prctl`.

use std::{
    collections::BTreeMap,
    io,
    os::{fd::AsRawFd, unix::net::UnixStream},
};

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope,
};
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

use crate::{helper::confine::LANDLOCK_ABI, sys};

/// The descriptor a worker's control socket arrives on.
pub const WORKER_SOCKET_FD: i32 = 3;

/// Syscalls a confined worker may never make again (each kills the process).
pub const FINAL_DENIED_SYSCALLS: &[(&str, i64)] = &[
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
    ("fork", libc::SYS_fork),
    ("vfork", libc::SYS_vfork),
    ("open", libc::SYS_open),
    ("openat", libc::SYS_openat),
    ("openat2", libc::SYS_openat2),
    ("creat", libc::SYS_creat),
    ("socket", libc::SYS_socket),
    ("socketpair", libc::SYS_socketpair),
    ("connect", libc::SYS_connect),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("accept", libc::SYS_accept),
    ("accept4", libc::SYS_accept4),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("memfd_create", libc::SYS_memfd_create),
    ("mknod", libc::SYS_mknod),
    ("mknodat", libc::SYS_mknodat),
];

/// Why a worker could not confine itself; the worker must then exit.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("landlock: {0}")]
    Landlock(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
}

/// The descriptor a worker that receives connected sockets from loongd (the HTTP worker)
/// gets them on.
pub const WORKER_BROKER_FD: i32 = 4;

/// Takes ownership of the control socket loongd handed over as fd 3.
pub fn inherited_socket() -> io::Result<UnixStream> {
    adopt_socket(WORKER_SOCKET_FD)
}

/// Takes ownership of the socket loongd passes connections on, fd 4.
pub fn inherited_broker() -> io::Result<UnixStream> {
    adopt_socket(WORKER_BROKER_FD)
}

fn adopt_socket(n: i32) -> io::Result<UnixStream> {
    let fd = sys::adopt_fd(n)?;
    let stat = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(io::Error::from)?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {n} is not a socket; a worker is started by loongd"),
        ));
    }
    // Close-on-exec: a worker that starts a foreign program must not hand it loongd's socket.
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(io::Error::from)?;
    Ok(UnixStream::from(fd))
}

/// The final self-confinement (see the module docs). Fails closed: the caller exits on error.
pub fn confine_self() -> Result<(), ConfineError> {
    let err = |e: landlock::RulesetError| ConfineError::Landlock(e.to_string());
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .map_err(err)?
        .handle_access(AccessNet::from_all(LANDLOCK_ABI))
        .map_err(err)?
        .scope(Scope::from_all(LANDLOCK_ABI))
        .map_err(err)?
        .create()
        .map_err(err)?
        // The sandbox set no_new_privs already; setting it again needs prctl.
        .no_new_privs(false)
        .restrict_self()
        .map_err(err)?;
    fully_enforced(status.ruleset)?;
    sys::seccomp_set_filter(&final_filter()?).map_err(|e| ConfineError::Seccomp(e.to_string()))
}

/// Narrows the calling thread (and the threads and processes it starts afterwards) to
/// `read` and `write` and nothing else on the file system: a landlock ruleset that handles
/// every file-system access and grants reads beneath `read` and everything beneath `write`.
/// For a worker whose work is opening paths under a few roots: after this, even the tier's
/// read-only system directories are refused. Fails closed.
pub fn confine_to_roots(
    read: &[std::path::PathBuf],
    write: &[std::path::PathBuf],
) -> Result<(), ConfineError> {
    let err = |e: landlock::RulesetError| ConfineError::Landlock(e.to_string());
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(landlock::path_beneath_rules(
            read,
            AccessFs::from_read(LANDLOCK_ABI),
        ))
        .map_err(err)?
        .add_rules(landlock::path_beneath_rules(
            write,
            AccessFs::from_all(LANDLOCK_ABI),
        ))
        .map_err(err)?
        .no_new_privs(false)
        .restrict_self()
        .map_err(err)?;
    fully_enforced(status.ruleset)?;
    Ok(())
}

fn fully_enforced(ruleset: RulesetStatus) -> Result<(), ConfineError> {
    if ruleset != RulesetStatus::FullyEnforced {
        return Err(ConfineError::Landlock(format!(
            "ruleset {ruleset:?}, full enforcement required"
        )));
    }
    Ok(())
}

/// malloc's arenas in a worker that confines itself: one, the main arena (grown by `brk`).
/// glibc opens files from inside malloc and free for its other arenas only:
/// `/sys/devices/system/cpu/online` to size them when many threads allocate at once, and
/// `/proc/sys/vm/overcommit_memory` the first time `free` shrinks one of their heaps; a
/// worker confined by [`confine_self`] is killed by either open, under load.
pub const CONFINED_MALLOC_ARENAS: i32 = 1;

/// Keeps malloc to [`CONFINED_MALLOC_ARENAS`]: called before a worker starts any thread
/// (threads that allocated already keep their arena). Fails when malloc refuses it.
pub fn bound_malloc_arenas() -> io::Result<()> {
    if sys::malloc_arena_max(CONFINED_MALLOC_ARENAS) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "malloc refused M_ARENA_MAX {CONFINED_MALLOC_ARENAS}"
        )))
    }
}

/// [`confine_self`] for a worker that serves a listener loongd bound and passed it (the
/// gateway's, fd 4): the same, except that `accept`/`accept4` stay allowed, so that it takes
/// connections on that listener. It still cannot make a socket, bind or listen: no other
/// listener exists in it. A denied call kills it, as in every confined worker (malloc's
/// own opens are kept away by [`bound_malloc_arenas`]).
pub fn confine_self_accepting() -> Result<(), ConfineError> {
    confine_with(&final_filter_except(
        &["accept", "accept4"],
        SeccompAction::KillProcess,
    )?)
}

fn confine_with(filter: &seccompiler::BpfProgram) -> Result<(), ConfineError> {
    let err = |e: landlock::RulesetError| ConfineError::Landlock(e.to_string());
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .map_err(err)?
        .handle_access(AccessNet::from_all(LANDLOCK_ABI))
        .map_err(err)?
        .scope(Scope::from_all(LANDLOCK_ABI))
        .map_err(err)?
        .create()
        .map_err(err)?
        .no_new_privs(false)
        .restrict_self()
        .map_err(err)?;
    fully_enforced(status.ruleset)?;
    sys::seccomp_set_filter(filter).map_err(|e| ConfineError::Seccomp(e.to_string()))
}

fn final_filter() -> Result<seccompiler::BpfProgram, ConfineError> {
    final_filter_except(&[], SeccompAction::KillProcess)
}

fn final_filter_except(
    keep: &[&str],
    denied: SeccompAction,
) -> Result<seccompiler::BpfProgram, ConfineError> {
    let err = |e: seccompiler::BackendError| ConfineError::Seccomp(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = FINAL_DENIED_SYSCALLS
        .iter()
        .filter(|(name, _)| !keep.contains(name))
        .map(|&(_, nr)| (nr, Vec::new()))
        .collect();
    // clone without CLONE_THREAD makes a process.
    let no_thread = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        0,
    )
    .map_err(err)?;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![no_thread]).map_err(err)?],
    );
    let filter =
        SeccompFilter::new(rules, SeccompAction::Allow, denied, TargetArch::x86_64).map_err(err)?;
    seccompiler::BpfProgram::try_from(filter).map_err(err)
}

/// How [`open_beneath`] resolves a path: never above the directory it starts from, through
/// no symlink (so through no magic link either).
pub const BENEATH_NO_SYMLINKS: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// Opens `path`, a relative path of plain names, beneath the directory `dir` with
/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: the kernel
/// refuses a `..` or absolute path (`EXDEV`) and any symlink met on the way, the last name
/// included (`ELOOP`), at the moment of the open. So a name swapped for a symlink between a
/// check and this open is refused, not followed. `flags` are `open(2)` flags (close-on-exec
/// is always added), `mode` the mode of a file `O_CREAT` makes. An empty `path` opens `dir`
/// itself again.
pub fn open_beneath(
    dir: std::os::fd::BorrowedFd<'_>,
    path: &std::path::Path,
    flags: i32,
    mode: u32,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let rel = if path.as_os_str().is_empty() {
        std::ffi::CString::from(c".")
    } else {
        std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?
    };
    crate::openat::openat2_bits(dir, &rel, flags, mode, BENEATH_NO_SYMLINKS)
}

/// loongd's side of a broker socket: passes one connected socket to the worker.
pub fn send_connection(broker: &UnixStream, conn: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsFd;
    sys::send_fd(broker.as_fd(), conn)
}

/// A worker's side: waits up to `wait` for the one socket loongd passes on `broker`.
pub fn receive_connection(
    broker: &UnixStream,
    wait: std::time::Duration,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd;
    broker.set_read_timeout(Some(wait))?;
    let mut fds = sys::receive_fds(broker.as_fd())?.into_iter();
    match (fds.next(), fds.next()) {
        (Some(fd), None) => Ok(fd),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "expected exactly one descriptor",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "LOONG_FINAL_CONFINE_CHILD";

    /// In a child process (this test binary run again): a file opens before the final
    /// confinement (the positive control) and the same open kills the process after it.
    #[test]
    fn after_confine_self_an_open_kills_the_worker() {
        if std::env::var_os(CHILD).is_some() {
            nix::sys::prctl::set_no_new_privs().expect("no_new_privs");
            std::fs::read("/proc/self/status").expect("opens before confinement");
            println!("opened-before");
            confine_self().expect("confines");
            println!("confined");
            let after = std::fs::read("/proc/self/status");
            println!("opened-after {}", after.is_ok());
            std::process::exit(0);
        }
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "worker::tests::after_confine_self_an_open_kills_the_worker",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("opened-before"), "{stdout}");
        assert!(stdout.contains("confined"), "{stdout}");
        assert!(
            !stdout.contains("opened-after"),
            "the open survived: {stdout}"
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{:?}", out.status);
    }

    const ACCEPTING_CHILD: &str = "LOONG_FINAL_CONFINE_ACCEPTING_CHILD";

    /// `confine_self_accepting` (the gateway's): `accept` on a listener made before still
    /// runs (the positive control: EAGAIN on an empty non-blocking listener), and an open
    /// kills the process as in every confined worker, not an EPERM it may retry around.
    #[test]
    fn after_confine_self_accepting_accept_runs_and_an_open_kills_the_worker() {
        if std::env::var_os(ACCEPTING_CHILD).is_some() {
            nix::sys::prctl::set_no_new_privs().expect("no_new_privs");
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listens");
            listener.set_nonblocking(true).expect("non-blocking");
            confine_self_accepting().expect("confines");
            let accepted = listener.accept().map(|_| ()).map_err(|e| e.kind());
            println!("accepted {accepted:?}");
            let after = std::fs::read("/proc/self/status");
            println!("opened-after {}", after.is_ok());
            std::process::exit(0);
        }
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "worker::tests::after_confine_self_accepting_accept_runs_and_an_open_kills_the_worker",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ACCEPTING_CHILD, "1")
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("accepted Err(WouldBlock)"), "{stdout}");
        assert!(
            !stdout.contains("opened-after"),
            "the open did not kill the worker: {stdout}"
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{:?}", out.status);
    }

    #[test]
    fn final_filter_compiles_and_names_real_syscalls() {
        let prog = final_filter().expect("compiles");
        assert!(prog.len() > FINAL_DENIED_SYSCALLS.len());
        for (name, nr) in FINAL_DENIED_SYSCALLS {
            assert_eq!(crate::syscalls::number(name), Some(*nr), "{name}");
        }
    }
}
