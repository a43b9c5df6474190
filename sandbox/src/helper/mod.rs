//! The spawn helper: the code `loong-spawn` runs. It is single-threaded and executes a
//! [`Plan`] in the order the anchors converge on:
//!
//! parent-death signal → read the plan → close every other fd → new session → cgroups →
//! unshare namespaces (and write the id maps; rootless with subordinate ids, a mapper forked
//! before the unshare has `newuidmap`/`newgidmap` write them) → fork the reaper (pid 1 of the new pid
//! namespace) → the reaper builds the root and forks the payload → the payload: fds, cwd,
//! rlimits, uid/gid drop, `no_new_privs`, landlock, seccomp (last) → `execve`.
//!
//! The helper stays outside the namespaces and reports to loongd on fd 4, one line each:
//! `exec` when the payload's `execve` succeeded, `error STEP\tERRNO\tDETAIL` when a step
//! failed (nothing ran), `exit CODE SIGNAL UTIME_US STIME_US MAXRSS_KB` at the end.

pub(crate) mod confine;
pub mod idmap;
mod mounts;
mod relay;
pub mod server;
mod spare;
mod template;

pub(crate) use template::shape;

use std::{
    fs::File,
    io::{Read, Write},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
};

use nix::{
    sys::{
        prctl,
        signal::Signal,
        wait::{waitpid, WaitStatus},
    },
    unistd::Pid,
};

use crate::{
    plan::{Plan, MAX_PLAN_BYTES},
    sys::{self, Forked},
};

/// The helper's fd carrying the plan.
pub const PLAN_FD: i32 = 3;
/// The helper's fd for reports to loongd.
pub const REPORT_FD: i32 = 4;
/// The first descriptor handed over for the payload.
pub const FIRST_PASSED_FD: i32 = 5;
/// Exit code of the helper when setup failed before the payload ran.
pub const SETUP_FAILED: i32 = 125;

/// A failed step: its name, the errno, and what it was acting on.
#[derive(Debug)]
pub(crate) struct Failure {
    step: &'static str,
    errno: i32,
    detail: String,
}

impl Failure {
    pub(crate) fn new(step: &'static str, errno: i32, detail: impl Into<String>) -> Failure {
        Failure {
            step,
            errno,
            detail: detail.into(),
        }
    }

    fn line(&self) -> String {
        let clean = |s: &str| s.replace(['\t', '\n'], " ");
        format!(
            "error {}\t{}\t{}\n",
            self.step,
            self.errno,
            clean(&self.detail)
        )
    }
}

fn nix_fail(step: &'static str) -> impl FnOnce(nix::Error) -> Failure {
    move |e| Failure::new(step, e as i32, "")
}

/// Entry point of `loong-spawn`. Never returns.
pub fn main() -> ! {
    // Die with the thread that launched us (loongd's spawner thread lives as long as loongd).
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    let mut report = match sys::adopt_fd(REPORT_FD) {
        Ok(fd) => File::from(fd),
        Err(_) => {
            eprintln!("loong-spawn is started by loongd only (fd 4 is not open)");
            sys::exit_now(SETUP_FAILED)
        }
    };
    if nix::unistd::getppid().as_raw() == 1 {
        sys::exit_now(SETUP_FAILED);
    }
    let code = match run(&mut report) {
        Ok(code) => code,
        Err(f) => {
            let _ = report.write_all(f.line().as_bytes());
            SETUP_FAILED
        }
    };
    sys::exit_now(code)
}

fn read_plan() -> Result<Plan, Failure> {
    let fd = sys::adopt_fd(PLAN_FD)
        .map_err(|e| Failure::new("open plan", e.raw_os_error().unwrap_or(0), ""))?;
    let mut buf = Vec::new();
    File::from(fd)
        .take(MAX_PLAN_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Failure::new("read plan", e.raw_os_error().unwrap_or(0), ""))?;
    Plan::decode(&buf).map_err(|e| Failure::new("decode plan", libc::EINVAL, e.to_string()))
}

fn run(report: &mut File) -> Result<i32, Failure> {
    // loongd runs with umask 077; the sandbox's root must be traversable by the sandbox uid,
    // and programs expect the conventional mask.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let mut plan = read_plan()?;
    // Join the server's shared empty network namespace (before its descriptor is closed
    // below) instead of unsharing one.
    if plan.share_netns && plan.namespaces & libc::CLONE_NEWNET != 0 {
        if let Some(netns) = server::SHARED_NETNS.get() {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(nix_fail("setns shared netns"))?;
            plan.namespaces &= !libc::CLONE_NEWNET;
        }
    }
    // Only stdio, the report fd, the handed-over fds and the egress socket survive, and the
    // prepared root this run enters, if the server holds one for it (parked above them).
    let keep_to = FIRST_PASSED_FD as u32
        + plan.pass_fds
        + u32::from(plan.egress.is_some())
        + u32::from(plan.gate);
    let close_fail =
        |e: std::io::Error| Failure::new("close_range", e.raw_os_error().unwrap_or(0), "");
    // The template socket stays open until the template is checked: a changed one is told
    // to the server on it ([`template::intact`]).
    let template = match template::choose(&plan) {
        Some(c) if c.fd as u32 > keep_to => {
            sys::close_between(keep_to, c.fd as u32 - 1).map_err(close_fail)?;
            sys::close_between(c.fd as u32 + 1, template::TEMPLATE_SOCK_FD as u32 - 1)
                .map_err(close_fail)?;
            sys::close_from(template::TEMPLATE_SOCK_FD as u32 + 1).map_err(close_fail)?;
            sys::adopt_fd(c.fd).ok().map(|fd| (fd, c))
        }
        _ => {
            sys::close_from(keep_to).map_err(close_fail)?;
            None
        }
    };
    nix::fcntl::fcntl(
        report.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(nix_fail("cloexec report fd"))?;
    // The run's stdio is the payload's alone: once the payload has started, the helper and
    // the reaper each put the host's /dev/null (opened here, close-on-exec, before any root
    // is entered) in its place, so the output's end is the payload's exit, not the helper's
    // (whose exit tears the run's namespaces down). Without /dev/null they keep it, as before.
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .ok();
    nix::unistd::setsid().map_err(nix_fail("setsid"))?;
    for file in &plan.cgroup_join {
        crate::cgroup::join_self(file).map_err(|e| {
            Failure::new(
                "join cgroup",
                e.raw_os_error().unwrap_or(0),
                file.display().to_string(),
            )
        })?;
    }
    // Entering the template sets this process's root and working directory to the template's
    // root; the unshare below makes the run's mount namespace a private copy of it. A
    // template that cannot be entered leaves everything as it was: the run builds its root.
    // The server's namespace is kept to come back to: a template whose mounts changed since
    // it was built is left for a root built here.
    let (mut entered, mut chosen, mut home_ns) = (false, None, None);
    if let Some((ns, c)) = template {
        let home = File::open("/proc/self/ns/mnt").ok();
        if home.is_some() && nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS).is_ok() {
            (entered, chosen, home_ns) = (true, Some(c), home);
        }
    }
    confine::unshare(&plan)?;
    // Before anything else in the private copy: every mount the template keeps is still the
    // one its builder made (a host user can make the kernel detach a mask or a nested grant
    // mounted on a host directory entry, in every namespace). If not, the server drops it
    // and this run goes back to the server's namespace and builds its root there.
    if let (Some(c), Some(home)) = (chosen.take(), home_ns.take()) {
        if !template::intact(&plan, &c) {
            nix::sched::setns(home, nix::sched::CloneFlags::CLONE_NEWNS)
                .map_err(nix_fail("setns back from a changed prepared root"))?;
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                .map_err(nix_fail("unshare after a changed prepared root"))?;
            entered = false;
        }
    }
    let _ = nix::unistd::close(template::TEMPLATE_SOCK_FD);

    // The payload reports a failed step (or nothing, when execve succeeds) on this pipe.
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(nix_fail("pipe"))?;
    // The reaper reports the payload's wait status on this one.
    let (st_r, st_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(nix_fail("pipe"))?;
    let reaper = match sys::fork()
        .map_err(|e| Failure::new("fork reaper", e.raw_os_error().unwrap_or(0), ""))?
    {
        Forked::Child => {
            drop((err_r, st_r));
            reaper(&plan, entered, err_w, st_w, null.as_ref())
        }
        Forked::Parent(pid) => Pid::from_raw(pid),
    };
    drop((err_w, st_w));
    leave_stdio(null.as_ref());
    drop(null);
    attend(report, reaper, err_r, st_r)
}

/// The helper once its reaper is forked: passes loongd's interrupts on to it, reports the
/// payload's `execve` (or the failed step) and, at the end, how the run ended; returns the
/// helper's exit code.
fn attend(report: &mut File, reaper: Pid, err_r: OwnedFd, st_r: OwnedFd) -> Result<i32, Failure> {
    // loongd interrupts a sandbox (an operator's Ctrl-C) by sending SIGINT to this helper,
    // which passes it on to the reaper by pidfd (no pid-reuse race). Installed before `exec`
    // is reported, so loongd never interrupts a helper that would die of it.
    if let Ok(pidfd) = sys::pidfd_open(reaper.as_raw()) {
        let _ = sys::forward_interrupts(Some(pidfd));
    }

    let mut setup = String::new();
    let _ = File::from(err_r).take(4096).read_to_string(&mut setup);
    let setup = setup.trim_end();
    let exec_ok = setup.is_empty();
    if exec_ok {
        let _ = report.write_all(b"exec\n");
    } else {
        let _ = report.write_all(format!("error {setup}\n").as_bytes());
    }
    let reaped = loop {
        match waitpid(reaper, None) {
            Err(nix::Error::EINTR) => continue,
            other => break other,
        }
    };
    let mut st = [0u8; 8];
    let got = File::from(st_r).read(&mut st).unwrap_or(0);
    // The payload's own status, as the reaper saw it; else the reaper's.
    let (code, signal) = if got == 8 {
        (
            i32::from_le_bytes([st[0], st[1], st[2], st[3]]),
            i32::from_le_bytes([st[4], st[5], st[6], st[7]]),
        )
    } else {
        match reaped {
            Ok(WaitStatus::Exited(_, c)) => (c, 0),
            Ok(WaitStatus::Signaled(_, s, _)) => (-1, s as i32),
            _ => (-1, libc::SIGKILL),
        }
    };
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).ok();
    let (ut, stt, rss) = usage
        .map(|u| {
            let us = |t: nix::sys::time::TimeVal| t.tv_sec() * 1_000_000 + t.tv_usec();
            (us(u.user_time()), us(u.system_time()), u.max_rss())
        })
        .unwrap_or_default();
    let _ = report.write_all(format!("exit {code} {signal} {ut} {stt} {rss}\n").as_bytes());
    if !exec_ok {
        return Ok(SETUP_FAILED);
    }
    Ok(if signal != 0 { 128 + signal } else { code })
}

/// The reaper: pid 1 of the new pid namespace. Builds the root, forks the payload, waits
/// for it and reports its status; its exit takes every process left in the namespace down.
fn reaper(plan: &Plan, entered: bool, err_w: OwnedFd, st_w: OwnedFd, null: Option<&File>) -> ! {
    // The report is the helper's alone to write: its `exit` line ends the run for loongd.
    let _ = nix::unistd::close(REPORT_FD);
    let pdeathsig = reaper_start(plan, &err_w);
    if let Err(f) = confine::setup_root(plan, entered) {
        fail(&err_w, &f);
    }
    reaper_run(plan, pdeathsig, err_w, st_w, null)
}

/// Reports the failed step `f` to the helper and exits: nothing of the run ran.
fn fail(err_w: &OwnedFd, f: &Failure) -> ! {
    send_failure(err_w, f);
    sys::exit_now(SETUP_FAILED)
}

/// The reaper's start, before its root: its parent-death signal (returned), its interrupts
/// and, without a pid namespace, its clean-up when the helper dies; not dumpable.
fn reaper_start(plan: &Plan, err_w: &OwnedFd) -> Signal {
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    // As pid 1 the reaper gets only the signals it handles: SIGINT from the helper is passed
    // to every process of the namespace.
    let _ = sys::forward_interrupts(None);
    // Without a pid namespace (a degraded run) no init's exit takes the run's other processes
    // down: the reaper adopts every orphan of the run instead, to kill it when the payload
    // ends (`kill_the_rest`), or when the helper dies (loongd killing the run: its timeout, a
    // Ctrl-C's kill, its client gone, loongd's stop): then the reaper hears it as SIGTERM, its
    // parent-death signal here, instead of dying of SIGKILL, and kills and reaps everything
    // below it before it exits (`helper_died`).
    let own_init = plan.namespaces & libc::CLONE_NEWPID != 0;
    let report = |f: Failure| -> ! { fail(err_w, &f) };
    let pdeathsig = if own_init {
        Signal::SIGKILL
    } else {
        let _ = prctl::set_child_subreaper(true);
        if let Err(e) = sys::on_signal(libc::SIGTERM, helper_died) {
            report(Failure::new(
                "reaper SIGTERM handler",
                e.raw_os_error().unwrap_or(0),
                "",
            ));
        }
        if let Err(e) = prctl::set_pdeathsig(Signal::SIGTERM) {
            report(Failure::new("reaper parent-death signal", e as i32, ""));
        }
        Signal::SIGTERM
    };
    // Not dumpable in every mode, before anything of the sandbox runs beside it.
    if let Err(f) = confine::reaper_undumpable() {
        report(f);
    }
    pdeathsig
}

/// The reaper once its root is built: the relay of a network grant, the payload started,
/// waited for and its status reported.
fn reaper_run(
    plan: &Plan,
    pdeathsig: Signal,
    err_w: OwnedFd,
    st_w: OwnedFd,
    null: Option<&File>,
) -> ! {
    let own_init = plan.namespaces & libc::CLONE_NEWPID != 0;
    let report = |f: Failure| -> ! { fail(&err_w, &f) };
    // With a network grant: the loopback, the listeners and the relay, which alone holds them
    // and the egress socket from here on.
    if let Some(egress) = &plan.egress {
        let sock = FIRST_PASSED_FD + plan.pass_fds as i32;
        if let Err(f) = relay::start(plan, egress, sock) {
            report(f);
        }
    }
    // The payload shares the reaper's memory until its `execve` (no copy of the address
    // space, which `execve` would drop at once), the reaper waiting meanwhile: it has nothing
    // to do until then, except, rootless with subordinate ids, leave loongd's uid, which must
    // happen while the payload is still ours (before its `execve`), so that case forks.
    let subordinate = plan.id_map.is_some_and(|m| m.subordinate.is_some());
    // Made before the payload starts: the vforked payload allocates nothing for its `execve`.
    let exec = sys::ExecArgs::new(
        plan.program.as_os_str().as_bytes(),
        plan.argv.iter().map(|a| a.as_bytes()),
        plan.env.iter().map(|e| e.as_bytes()),
    );
    let started = if subordinate {
        match sys::fork() {
            Ok(Forked::Child) => {
                sys::reset_handlers();
                drop(st_w);
                payload(plan, &exec, &err_w)
            }
            Ok(Forked::Parent(pid)) => Ok(pid),
            Err(e) => Err(e),
        }
    } else {
        // The payload closes the status pipe's writing end with the rest (`close_range`), and
        // `execve` its copy of the error pipe's. From its start on, this path of the reaper
        // allocates nothing (`drop_reaper` has nothing to do, then polls, waits and writes
        // from the stack): a payload killed inside `malloc` before its `execve` (an OOM kill)
        // would leave the shared allocator's lock held.
        sys::vfork_exec(|| payload(plan, &exec, &err_w))
    };
    let payload = match started {
        Ok(pid) => Pid::from_raw(pid),
        Err(e) => report(Failure::new(
            "fork payload",
            e.raw_os_error().unwrap_or(0),
            "",
        )),
    };
    // The payload has its own descriptor table (a copy, whether forked or vforked).
    leave_stdio(null);
    // Rootless with subordinate ids: the reaper, too, leaves loongd's uid for the sandbox's.
    if let Err(f) = confine::drop_reaper(plan, pdeathsig) {
        let _ = nix::sys::signal::kill(payload, Signal::SIGKILL);
        if !own_init {
            kill_the_rest();
        }
        report(f);
    }
    // A helper that died before the parent-death signal was set (at the reaper's start, or
    // again after the uid change, which clears it) sent none: the sandbox would outlive the
    // helper (and, rootless, the slot its ids come from). The helper holds the status pipe's
    // only reading end, so the pipe tells; the payload (which may have exec'd) is killed, and
    // the reaper's exit takes the rest of the namespace down.
    if confine::helper_gone(&st_w) {
        let _ = nix::sys::signal::kill(payload, Signal::SIGKILL);
        if !own_init {
            kill_the_rest();
        }
        sys::exit_now(SETUP_FAILED);
    }
    drop(err_w);
    loop {
        let (code, signal) = match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == payload => (code, 0),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == payload => (-1, sig as i32),
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(_) => (-1, libc::SIGKILL),
        };
        if !own_init {
            kill_the_rest();
        }
        finish(&st_w, code, signal)
    }
}

/// The reaper's SIGTERM handler in a run without a pid namespace, where SIGTERM is its
/// parent-death signal: the helper is gone (loongd killed the run), so is every process
/// below the reaper once this returns, and the reaper exits. It never returns to the code it
/// interrupted (a wait, a mount, the payload's start), and does only what is safe in a
/// handler: system calls (`open`, `read`, `close`, `kill`, `waitpid`, `_exit`) on the stack.
extern "C" fn helper_died(_sig: libc::c_int) {
    kill_the_rest();
    sys::exit_now(128 + libc::SIGKILL)
}

/// The most of `/proc/thread-self/children` read at once (the rest is read in the next
/// round).
const CHILDREN_READ_BYTES: usize = 4096;
/// The most children one round kills (each pid takes at least two bytes of the list).
const CHILDREN_PER_ROUND: usize = CHILDREN_READ_BYTES / 2;
/// How long a round waits, at most, for one of the children it killed to be reapable before
/// it reads the list again, and in how many steps.
const ROUND_WAIT: std::time::Duration = std::time::Duration::from_millis(1);
const ROUND_WAIT_STEPS: u32 = 10;

/// In a reaper without a pid namespace of its own, once the payload has ended or the helper
/// is gone: kills every process left below it and reaps it, round after round (a process
/// whose parent is killed is reparented to the reaper, a child subreaper since before
/// anything of the run started, and killed in the next round), until it has no child left.
/// Its children are read from `/proc/thread-self/children` (the reaper is one thread) into a
/// buffer on the stack; only a number the kernel ended with its space is taken (a read may
/// end inside the next one, which the next round reads whole); where the list cannot be read
/// nothing is killed, never a process the run did not start (no `kill(-1)` outside a pid
/// namespace of its own). A round reaps the children it killed, each by its pid (a listed pid
/// is the reaper's child until the reaper reaps it, so it cannot have been reused), and never
/// blocks: a wait for any child would wait on the orphans of the killed ones, alive until the
/// next round kills them, and a wait for one killed child would wait on whatever keeps it
/// from being reaped (a tracer's hold on its zombie, a file system daemon it waits on), which
/// the next round kills. When none of them is reapable yet, the round looks again at most
/// [`ROUND_WAIT_STEPS`] times over [`ROUND_WAIT`] before it reads the list again. Allocates
/// nothing (the reaper's SIGTERM handler runs it).
fn kill_the_rest() {
    loop {
        let fd = match nix::fcntl::open(
            "/proc/thread-self/children",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(_) => return,
        };
        let mut buf = [0u8; CHILDREN_READ_BYTES];
        let n = nix::unistd::read(fd, &mut buf).unwrap_or(0);
        let _ = nix::unistd::close(fd);
        let mut killed = [0i32; CHILDREN_PER_ROUND];
        let mut count = 0;
        let mut pid: i32 = 0;
        for &b in &buf[..n] {
            if b.is_ascii_digit() {
                pid = pid.saturating_mul(10).saturating_add(i32::from(b - b'0'));
            } else {
                if b == b' ' && pid > 1 && count < killed.len() {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                    killed[count] = pid;
                    count += 1;
                }
                pid = 0;
            }
        }
        if count == 0 {
            return;
        }
        for _ in 0..ROUND_WAIT_STEPS {
            let mut reaped = false;
            for &p in &killed[..count] {
                let done = loop {
                    match waitpid(Pid::from_raw(p), Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                        Err(nix::Error::EINTR) => continue,
                        Ok(WaitStatus::StillAlive) => break false,
                        // Reaped, or no longer the reaper's to reap.
                        _ => break true,
                    }
                };
                reaped |= done;
            }
            if reaped {
                break;
            }
            // nanosleep(2) on the stack: no lock, no allocation.
            std::thread::sleep(ROUND_WAIT / ROUND_WAIT_STEPS);
        }
    }
}

/// Puts `null` (the host's /dev/null) in place of this process's stdio, which is the run's,
/// so that only the payload (and what it starts) holds the run's pipes. Nothing is changed
/// without it. Allocates nothing (the reaper calls it after the payload shares its memory).
fn leave_stdio(null: Option<&File>) {
    if let Some(null) = null {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}

fn finish(st_w: &OwnedFd, code: i32, signal: i32) -> ! {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&code.to_le_bytes());
    b[4..].copy_from_slice(&signal.to_le_bytes());
    let _ = nix::unistd::write(st_w, &b);
    sys::exit_now(if signal != 0 {
        128 + signal
    } else {
        code & 0xff
    })
}

/// The payload: final confinement, then `execve`. On failure it reports on `err_w`.
fn payload(plan: &Plan, exec: &sys::ExecArgs, err_w: &OwnedFd) -> ! {
    let f = match confine::payload(plan, err_w) {
        Err(f) => f,
        Ok(()) => {
            let errno = exec.exec();
            Failure::new("execve", errno, plan.program.display().to_string())
        }
    };
    send_failure(err_w, &f);
    sys::exit_now(SETUP_FAILED)
}

/// Writes a failed step to the helper's error pipe (without the `error ` prefix, which the
/// helper adds when it forwards the line to loongd).
fn send_failure(fd: &OwnedFd, f: &Failure) {
    let line = f.line();
    let _ = nix::unistd::write(fd, line.trim_start_matches("error ").as_bytes());
}
