//! Holding the processes a worker starts: a worker that runs foreign programs (the stdio
//! worker's program, the built-in worker's `shell.exec`) becomes their *child subreaper*, so
//! every descendant, including one that double-forked and called `setsid`, is re-parented to
//! the worker rather than to the sandbox's pid 1 when its parent dies, and the worker can kill
//! it. The worker also makes itself non-dumpable, so a program running beside it under the same
//! uid cannot open the worker's `/proc/PID/mem` or `environ` (a non-dumpable process's
//! `/proc` entries need `CAP_SYS_PTRACE`, which no sandbox holds).
//!
//! A process group or session kill is not enough: `setsid` leaves both. Nor is killing the
//! worker's children round after round on its own: a tree whose deepest process forks again
//! whenever a pid is free grows back by one generation while each round takes one away, and
//! outlasts any number of rounds. In its own pid namespace (its parent is the namespace's
//! pid 1, the sandbox's reaper) the worker therefore sends `kill(-1, SIGKILL)`, which the
//! kernel delivers to every other process of the namespace but pid 1 in one step that a fork
//! cannot outrun (a fork under way when it lands fails), and the rounds only reap. Where the
//! rounds are all there is and a tree outlasts them, [`end_descendants`] ends the worker
//! itself: its reaper, pid 1, then exits and the kernel kills what is left of the namespace.

use std::{
    fs,
    io::{self, Write},
    sync::atomic::{AtomicBool, Ordering},
};

use nix::{
    errno::Errno,
    sys::{
        signal::{kill, Signal},
        wait::{waitpid, WaitPidFlag},
    },
    unistd::Pid,
};

/// Rounds of "kill every child, reap it" before [`kill_descendants`] gives up. Each round
/// reaches at least one generation deeper; a tree that survives this many rounds keeps
/// forking, which the worker's own death ends ([`end_descendants`]).
pub const MAX_KILL_ROUNDS: usize = 64;

/// The exit code of a worker that could not end what it started ([`end_descendants`]).
pub const DESCENDANTS_SURVIVED: i32 = 3;

/// Set once [`hold_descendants`] succeeded: only then are this process's children all its
/// own programs' (a library's unit tests share their process with other tests' children,
/// which [`kill_descendants`] must leave alone).
static HOLDING: AtomicBool = AtomicBool::new(false);

/// Why the worker cannot hold its descendants.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("prctl({what}) failed: {errno}; the worker cannot hold the processes it starts")]
    Prctl { what: &'static str, errno: Errno },
    #[error(
        "/proc names this process {seen:?} but it is pid {pid}: the worker needs its own pid \
         namespace's /proc to find the processes it starts"
    )]
    ForeignProc { seen: String, pid: u32 },
}

/// Makes this process the child subreaper of everything it starts and non-dumpable. Call it
/// before starting any program; it fails closed when either setting or the check that `/proc`
/// is this pid namespace's own fails.
pub fn hold_descendants() -> Result<(), HoldError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|errno| HoldError::Prctl {
        what: "PR_SET_CHILD_SUBREAPER",
        errno,
    })?;
    nix::sys::prctl::set_dumpable(false).map_err(|errno| HoldError::Prctl {
        what: "PR_SET_DUMPABLE",
        errno,
    })?;
    let pid = std::process::id();
    let seen = fs::read_link("/proc/self")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("unreadable ({e})"));
    if seen != pid.to_string() {
        return Err(HoldError::ForeignProc { seen, pid });
    }
    HOLDING.store(true, Ordering::SeqCst);
    Ok(())
}

/// A child of this process: its pid and `/proc` state letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChildProc {
    pid: i32,
    state: u8,
}

/// This process's children, from `/proc/*/stat` (only thread-group leaders are listed there,
/// so the worker's own threads are not among them).
fn children() -> io::Result<Vec<ChildProc>> {
    let me = i64::from(std::process::id());
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // A process may end between the listing and the read.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((state, ppid)) = parse_stat(&stat) {
            if ppid == me {
                found.push(ChildProc { pid, state });
            }
        }
    }
    Ok(found)
}

/// The state letter and parent pid of a `/proc/PID/stat` line (the command, which may hold
/// spaces and parentheses, ends at the last `)`).
fn parse_stat(stat: &str) -> Option<(u8, i64)> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether this process is alone with what it starts in a pid namespace of its own: its
/// parent is the namespace's pid 1 (the sandbox's reaper). Nowhere else is `kill(-1)` safe:
/// outside a namespace of its own it reaches every process of the uid. A worker whose
/// spawner died is killed by its parent-death signal, so it is never adopted by a host's
/// pid 1 and taken for one in a namespace of its own.
fn own_pid_namespace() -> bool {
    std::process::id() != 1 && nix::unistd::getppid() == Pid::from_raw(1)
}

/// Kills every process this worker started that is still there, and reaps them. In a pid
/// namespace of its own, one `kill(-1, SIGKILL)` reaches them all at once (and a fork under
/// way with them); then, or elsewhere alone, each round SIGKILLs every child (a child's pid
/// cannot be reused before it is reaped, so the signal reaches that process) and waits for
/// it. Returns how many were reaped; an error when processes were still being started after
/// [`MAX_KILL_ROUNDS`] rounds. Does nothing in a process that did not call
/// [`hold_descendants`].
pub fn kill_descendants() -> io::Result<usize> {
    if !HOLDING.load(Ordering::SeqCst) {
        return Ok(0);
    }
    if own_pid_namespace() {
        match kill(Pid::from_raw(-1), Signal::SIGKILL) {
            // ESRCH: nothing but pid 1 and the worker is left.
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(errno) => return Err(io::Error::from(errno)),
        }
    }
    let mut killed = 0;
    for _ in 0..MAX_KILL_ROUNDS {
        let kids = children()?;
        if kids.is_empty() {
            return Ok(killed);
        }
        for k in &kids {
            let _ = kill(Pid::from_raw(k.pid), Signal::SIGKILL);
        }
        for k in &kids {
            let _ = waitpid(Pid::from_raw(k.pid), None);
        }
        killed += kids.len();
    }
    Err(io::Error::other(format!(
        "processes were still being started after {MAX_KILL_ROUNDS} rounds of kills"
    )))
}

/// [`kill_descendants`], and when that fails, the end of the worker (exit code
/// [`DESCENDANTS_SURVIVED`]): a worker must not go on serving beside processes it could not
/// end, and its death ends them (its reaper, pid 1 of the sandbox, exits with it and the
/// kernel kills the rest of the namespace; loongd replaces the worker).
pub fn end_descendants() {
    if let Err(e) = kill_descendants() {
        let _ = writeln!(
            io::stderr(),
            "worker: the processes a program started could not be ended ({e}); stopping"
        );
        std::process::exit(DESCENDANTS_SURVIVED);
    }
}

/// Reaps the children that have already ended (orphans of a running program that the worker
/// inherited as their subreaper), leaving `keep` (the program itself, which its own handle
/// waits for) alone.
pub fn reap_ended(keep: Option<u32>) {
    if !HOLDING.load(Ordering::SeqCst) {
        return;
    }
    let Ok(kids) = children() else { return };
    for k in kids {
        if k.state == b'Z' && u32::try_from(k.pid).ok() != keep {
            let _ = waitpid(Pid::from_raw(k.pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_parsed_past_the_command() {
        assert_eq!(parse_stat("12 (a) b) c) S 7 12 12 0 -1"), Some((b'S', 7)));
        assert_eq!(parse_stat("13 (sleep) Z 1 13"), Some((b'Z', 1)));
        assert_eq!(parse_stat("13 (sleep)"), None);
        assert_eq!(parse_stat("garbage"), None);
    }
}
