//! The confinement steps themselves, each failing with the name of the step and the errno.

use std::os::fd::{AsRawFd, OwnedFd};

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use nix::{
    sched::CloneFlags,
    sys::{prctl, signal::Signal},
    unistd::{Gid, Uid},
};

use super::{idmap, mounts, nix_fail, server, Failure, FIRST_PASSED_FD};
use crate::{
    plan::{IdMap, Plan, GATE_OPEN},
    subids::{SubRange, INSIDE_SANDBOX_ID},
    sys,
};

/// The landlock ABI this code was written and tested against. Newer kernels are used at this
/// ABI, never silently at a higher one.
pub const LANDLOCK_ABI: ABI = ABI::V6;

/// Unshares the plan's namespaces; with a user namespace, maps the helper's ids to the
/// plan's inside ids.
pub(super) fn unshare(plan: &Plan) -> Result<(), Failure> {
    if plan.namespaces == 0 {
        return Ok(());
    }
    let outside_uid = Uid::effective().as_raw();
    let outside_gid = Gid::effective().as_raw();
    if let Some(
        m @ IdMap {
            subordinate: Some(ranges),
            ..
        },
    ) = plan.id_map
    {
        return unshare_subordinate(plan, m, ranges);
    }
    nix::sched::unshare(CloneFlags::from_bits_truncate(plan.namespaces))
        .map_err(nix_fail("unshare"))?;
    if let Some(m) = plan.id_map {
        let write = |file: &str, text: String| {
            std::fs::write(file, text)
                .map_err(|e| Failure::new("write id map", e.raw_os_error().unwrap_or(0), file))
        };
        write("/proc/self/setgroups", "deny".into())?;
        write(
            "/proc/self/uid_map",
            format!("{} {outside_uid} 1\n", m.inside_uid),
        )?;
        write(
            "/proc/self/gid_map",
            format!("{} {outside_gid} 1\n", m.inside_gid),
        )?;
    }
    Ok(())
}

/// The bytes the mapper's answer may take (the first lines of a tool's complaint).
const MAPPER_ANSWER_MAX: u64 = 1024;

/// Rootless with subordinate ids: unshares, then has `newuidmap`/`newgidmap` map the helper's
/// own ids to the inside ids of `m` and [`INSIDE_SANDBOX_ID`] to this sandbox's subordinate
/// ids (its slot in each range). The tools must run in the parent user namespace (a setuid
/// program is not setuid in a namespace that does not map its owner), so a mapper forked
/// before the unshare runs them once told to, and answers what failed.
fn unshare_subordinate(
    plan: &Plan,
    m: IdMap,
    (uids, gids): (SubRange, SubRange),
) -> Result<(), Failure> {
    let exhausted = |count: u32| {
        Failure::new(
            "subordinate ids",
            libc::EAGAIN,
            format!("no slot of the {count} subordinate ids of loongd's range could be claimed: each is held by a live sandbox of this loongd or another of its user, or the slot claim file (.loong-subids.lock in the user's home directory, the user's alone; the spawn server logs why) cannot be used; widen the user's ranges in /etc/subuid and /etc/subgid, stop the other loongd, or give the user a home directory only it may write"),
        )
    };
    let slot = *server::SLOT
        .get()
        .ok_or_else(|| exhausted(uids.count.min(gids.count)))?;
    if slot >= uids.count || slot >= gids.count {
        return Err(exhausted(uids.count.min(gids.count)));
    }
    let uid_map = [
        m.inside_uid,
        Uid::effective().as_raw(),
        INSIDE_SANDBOX_ID,
        uids.start + slot,
    ];
    let gid_map = [
        m.inside_gid,
        Gid::effective().as_raw(),
        INSIDE_SANDBOX_ID,
        gids.start + slot,
    ];
    let me = nix::unistd::getpid().as_raw();
    let (go_r, go_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(nix_fail("pipe"))?;
    let (ans_r, ans_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(nix_fail("pipe"))?;
    let mapper = match sys::fork()
        .map_err(|e| Failure::new("fork id mapper", e.raw_os_error().unwrap_or(0), ""))?
    {
        sys::Forked::Child => {
            drop((go_w, ans_r));
            mapper(me, uid_map, gid_map, go_r, ans_w)
        }
        sys::Forked::Parent(pid) => nix::unistd::Pid::from_raw(pid),
    };
    drop((go_r, ans_w));
    // On failure the mapper reads end-of-file on its pipe and exits without mapping.
    nix::sched::unshare(CloneFlags::from_bits_truncate(plan.namespaces))
        .map_err(nix_fail("unshare"))?;
    nix::unistd::write(&go_w, b"m").map_err(nix_fail("start id mapper"))?;
    drop(go_w);
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(
        &mut std::io::Read::take(std::fs::File::from(ans_r), MAPPER_ANSWER_MAX),
        &mut answer,
    );
    let status = loop {
        match nix::sys::wait::waitpid(mapper, None) {
            Err(nix::Error::EINTR) => continue,
            other => break other,
        }
    };
    let mapped = matches!(status, Ok(nix::sys::wait::WaitStatus::Exited(_, 0)));
    if !mapped || !answer.is_empty() {
        return Err(Failure::new(
            "map subordinate ids",
            libc::EPERM,
            if answer.is_empty() {
                format!("the id mapper ended with {status:?}")
            } else {
                answer
            },
        ));
    }
    Ok(())
}

/// The forked mapper: waits for the helper to have unshared its user namespace, then runs
/// `newuidmap PID IN OUT 1 …` and `newgidmap` on it. Exits 0 when both mapped; otherwise
/// writes what failed to `ans_w` and exits 1.
fn mapper(pid: i32, uid_map: [u32; 4], gid_map: [u32; 4], go_r: OwnedFd, ans_w: OwnedFd) -> ! {
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    let fail = |msg: String| -> ! {
        let _ = nix::unistd::write(&ans_w, msg.as_bytes());
        sys::exit_now(1)
    };
    let mut go = [0u8; 1];
    if !matches!(nix::unistd::read(go_r.as_raw_fd(), &mut go), Ok(1)) {
        sys::exit_now(1);
    }
    // Only stdio and the answer pipe (close-on-exec) stay: the setuid tools get none of the
    // sandbox's descriptors.
    let keep = ans_w.as_raw_fd() as u32;
    drop(go_r);
    if sys::close_between(3, keep.saturating_sub(1)).is_err() || sys::close_from(keep + 1).is_err()
    {
        fail("close descriptors before newuidmap".into());
    }
    // Under no_new_privs the setuid tools would run as us and fail: the idmap server, which
    // runs outside it as the same user, runs them.
    let mapped = if crate::subids::no_new_privs() {
        idmap::ask(pid as u32, uid_map, gid_map)
    } else {
        idmap::run_tools(pid as u32, uid_map, gid_map)
    };
    match mapped {
        Ok(()) => sys::exit_now(0),
        Err(e) => fail(e.to_string()),
    }
}

/// In the reaper, first, in every mode: not dumpable, so that no process of its uid that
/// lacks `CAP_SYS_PTRACE` over it can ptrace it, read or write its memory
/// (`/proc/1/mem` from the payload's pid namespace) or take its descriptors. Rootless without
/// subordinate ids (`rootless_own_uid`) the reaper keeps loongd's uid, which the payload
/// shares; in the other modes it holds another uid than the payload's as well. The payload,
/// started after (vforked, on this very memory until its `execve`), is not dumpable until its
/// `execve`, its id change included ([`take_ids`]); `execve` makes a program dumpable again
/// unless its credentials changed, as before.
pub(super) fn reaper_undumpable() -> Result<(), Failure> {
    prctl::set_dumpable(false).map_err(nix_fail("reaper set dumpable"))
}

/// In the reaper, once the payload is forked, rootless with subordinate ids only: the reaper
/// takes the sandbox's ids too, so no process of the sandbox keeps loongd's uid. It stays
/// undumpable (no payload of the same uid can ptrace it or take its descriptors) and hears of
/// the helper's death as before, by `pdeathsig` (the uid change clears the parent-death
/// signal; it is set again).
pub(super) fn drop_reaper(plan: &Plan, pdeathsig: Signal) -> Result<(), Failure> {
    let subordinate = plan.id_map.is_some_and(|m| m.subordinate.is_some());
    let Some((uid, gid)) = plan.creds.filter(|_| subordinate) else {
        return Ok(());
    };
    take_ids(uid, gid, "reaper ")?;
    prctl::set_pdeathsig(pdeathsig).map_err(nix_fail("set parent-death signal"))?;
    Ok(())
}

/// Takes `uid` and `gid` (the only group) for good, so that the memory of this process is
/// never dumpable to them meanwhile, whatever `fs.suid_dumpable` says: the kernel makes it
/// dumpable per that sysctl when the effective or filesystem ids change (a payload started
/// by `vfork_exec` shares that memory with the root reaper until its `execve`). Each id
/// changes first with the saved one kept (a process of the new ids alone may not ptrace a
/// process whose saved ids differ from its own), the memory is made undumpable, then the
/// saved ids follow (a change of the saved ids alone leaves the flag as it is). Undumpable
/// memory is checked for at the end: no uid or gid change leaves it dumpable. `prefix` names
/// whose step failed ("reaper " or "").
pub(crate) fn take_ids(uid: u32, gid: u32, prefix: &'static str) -> Result<(), Failure> {
    let (kept_uid, kept_gid) = (Uid::effective().as_raw(), Gid::effective().as_raw());
    let step = |name: &'static str| -> &'static str {
        match (prefix.is_empty(), name) {
            (true, n) => n,
            (false, "setgroups") => "reaper setgroups",
            (false, "setresgid") => "reaper setresgid",
            (false, "setresuid") => "reaper setresuid",
            (false, _) => "reaper set dumpable",
        }
    };
    let fail = |name: &'static str| {
        move |e: std::io::Error| Failure::new(step(name), e.raw_os_error().unwrap_or(0), "")
    };
    sys::set_groups(&[gid]).map_err(fail("setgroups"))?;
    sys::set_resgid(gid, gid, kept_gid).map_err(fail("setresgid"))?;
    sys::set_resuid(uid, uid, kept_uid).map_err(fail("setresuid"))?;
    prctl::set_dumpable(false).map_err(|e| Failure::new(step("set dumpable"), e as i32, ""))?;
    sys::set_resgid(gid, gid, gid).map_err(fail("setresgid"))?;
    sys::set_resuid(uid, uid, uid).map_err(fail("setresuid"))?;
    if prctl::get_dumpable() != Ok(false) {
        return Err(Failure::new(
            step("set dumpable"),
            libc::EPERM,
            "the memory became dumpable with the id change",
        ));
    }
    Ok(())
}

/// Whether nothing reads the pipe whose writing end is `w` any more (its reader exited).
pub(super) fn helper_gone(w: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut p = [PollFd::new(w.as_fd(), PollFlags::POLLOUT)];
    poll(&mut p, PollTimeout::ZERO).is_ok_and(|_| {
        p[0].revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
    })
}

/// In the reaper: hostname and the new root (`entered`: a copy of a prepared root, which
/// only takes the run's own mounts).
pub(super) fn setup_root(plan: &Plan, entered: bool) -> Result<(), Failure> {
    if plan.namespaces & libc::CLONE_NEWUTS != 0 && !plan.hostname.is_empty() {
        nix::unistd::sethostname(&plan.hostname).map_err(nix_fail("sethostname"))?;
    }
    if entered {
        mounts::enter(&plan.mounts)?;
    } else if !plan.mounts.is_empty() {
        mounts::build_root(&plan.mounts)?;
    }
    Ok(())
}

/// In the payload, just before `execve`: descriptors, cwd, `no_new_privs`, landlock, the
/// gate, credentials, rlimits, and seccomp last.
pub(super) fn payload(plan: &Plan, err_w: &OwnedFd) -> Result<(), Failure> {
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(nix_fail("set parent-death signal"))?;
    let n = plan.pass_fds as i32;
    let err = err_w.as_raw_fd();
    // The gate is kept (close-on-exec, above the error pipe) through the first steps of the
    // confinement below (descriptors, directory, `no_new_privs`, landlock) and waited for
    // then: nothing of the program runs until loongd says what it decided is recorded, and
    // those steps are made while the record commits, not after.
    let gate = if plan.gate {
        let at = nix::fcntl::fcntl(
            gate_fd(plan),
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(err + 1),
        )
        .map_err(nix_fail("keep the gate"))?;
        Some(at)
    } else {
        None
    };
    // Handed-over fds: 5, 6, … become 3, 4, …; each target is below its source and every
    // lower source was consumed already, so no source is overwritten before it is used.
    for i in 0..n {
        nix::unistd::dup2(FIRST_PASSED_FD + i, 3 + i).map_err(nix_fail("dup2 handed-over fd"))?;
    }
    // Everything else goes, except the error pipe and the gate (close-on-exec) until execve.
    let keep_from = (3 + n) as u32;
    if err >= 3 + n {
        let close = |from: i32, to: u32| {
            sys::close_between(from as u32, to)
                .map_err(|e| Failure::new("close_range", e.raw_os_error().unwrap_or(0), ""))
        };
        close(keep_from as i32, err as u32 - 1)?;
        match gate {
            // Above the error pipe (it was copied there).
            Some(gate) => {
                close(err + 1, gate as u32 - 1)?;
                close(gate + 1, u32::MAX)?;
            }
            None => close(err + 1, u32::MAX)?,
        }
    } else {
        return Err(Failure::new(
            "close_range",
            libc::EBADF,
            "error pipe below the handed-over fds",
        ));
    }
    nix::unistd::chdir(&plan.cwd)
        .map_err(|e| Failure::new("chdir", e as i32, plan.cwd.display().to_string()))?;
    // `no_new_privs` and landlock (a ruleset applies whatever the ids) before the gate, so
    // they are made while the run's records commit; the gate is waited for with the ids the
    // payload started with, so no host process of the sandbox's uid can signal it meanwhile
    // (its kill would read as an `execve`).
    prctl::set_no_new_privs().map_err(nix_fail("no_new_privs"))?;
    if let Some(l) = &plan.landlock {
        landlock(l)?;
    }
    if let Some(gate) = gate {
        wait_gate(gate)?;
    }
    if let Some((uid, gid)) = plan.creds {
        let reaper = nix::unistd::getppid();
        take_ids(uid, gid, "")?;
        if sys::set_resuid(0, 0, 0).is_ok() {
            return Err(Failure::new(
                "drop root",
                libc::EPERM,
                "root could be regained",
            ));
        }
        // The id change cleared the parent-death signal: set again, and a reaper that died
        // meanwhile (no signal sent) seen by the parent's change.
        prctl::set_pdeathsig(Signal::SIGKILL).map_err(nix_fail("set parent-death signal"))?;
        if nix::unistd::getppid() != reaper {
            return Err(Failure::new(
                "set parent-death signal",
                libc::ESRCH,
                "the reaper is gone",
            ));
        }
    }
    // After the uid change: an RLIMIT_NPROC set before it would make execve fail with EAGAIN
    // (the kernel marks a setuid over the limit).
    for &(res, soft, hard) in &plan.rlimits {
        set_rlimit(res, soft, hard)?;
    }
    for prog in &plan.seccomp {
        seccompiler::apply_filter(prog)
            .map_err(|e| Failure::new("seccomp", libc::EINVAL, e.to_string()))?;
    }
    Ok(())
}

/// Where the payload finds the gate ([`crate::plan::Plan::gate`]): the descriptor after the
/// handed-over ones and the egress socket.
fn gate_fd(plan: &Plan) -> i32 {
    FIRST_PASSED_FD + plan.pass_fds as i32 + i32::from(plan.egress.is_some())
}

/// Waits for the gate ([`crate::plan::Plan::gate`]) on `gate`. Only [`GATE_OPEN`] lets the
/// payload run; the gate's end without it (loongd could not commit the run's decisions, or is
/// gone) refuses the run.
fn wait_gate(gate: i32) -> Result<(), Failure> {
    let mut byte = [0u8; 1];
    let got = loop {
        match nix::unistd::read(gate, &mut byte) {
            Err(nix::Error::EINTR) => continue,
            other => break other,
        }
    };
    match got {
        Ok(1) if byte[0] == GATE_OPEN => Ok(()),
        Ok(_) => Err(Failure::new(
            "gate",
            libc::ECANCELED,
            "the run's decisions were not recorded; nothing ran",
        )),
        Err(e) => Err(Failure::new("gate", e as i32, "")),
    }
}

fn set_rlimit(res: u32, soft: u64, hard: u64) -> Result<(), Failure> {
    let Some(resource) = crate::plan::resource(res) else {
        return Err(Failure::new(
            "setrlimit",
            libc::EINVAL,
            format!("resource {res}"),
        ));
    };
    nix::sys::resource::setrlimit(resource, soft, hard)
        .map_err(|e| Failure::new("setrlimit", e as i32, format!("{resource:?}")))
}

fn landlock(l: &crate::plan::LandlockPlan) -> Result<(), Failure> {
    let abi = LANDLOCK_ABI;
    let err = |e: landlock::RulesetError| Failure::new("landlock", libc::ENOTSUP, e.to_string());
    let level = if l.required {
        CompatLevel::HardRequirement
    } else {
        CompatLevel::BestEffort
    };
    let mut rs = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?;
    if l.restrict_net {
        rs = rs.handle_access(AccessNet::from_all(abi)).map_err(err)?;
    }
    if l.scopes {
        rs = rs.scope(Scope::from_all(abi)).map_err(err)?;
    }
    let mut c = rs.create().map_err(err)?;
    c = c
        .add_rules(path_beneath_rules(&l.rx, AccessFs::from_read(abi)))
        .map_err(err)?;
    c = c
        .add_rules(path_beneath_rules(
            &l.ro,
            AccessFs::ReadFile | AccessFs::ReadDir,
        ))
        .map_err(err)?;
    c = c
        .add_rules(path_beneath_rules(&l.rw, AccessFs::from_all(abi)))
        .map_err(err)?;
    for &port in &l.connect_ports {
        c = c
            .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
            .map_err(err)?;
    }
    let status = c.restrict_self().map_err(err)?;
    if l.required && status.ruleset != RulesetStatus::FullyEnforced {
        return Err(Failure::new(
            "landlock",
            libc::ENOTSUP,
            format!("ruleset {:?}, full enforcement required", status.ruleset),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_tells_the_reaper_its_helper_is_gone() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        // Control: with its reader there, the helper is not gone.
        assert!(!helper_gone(&w));
        drop(r);
        assert!(helper_gone(&w));
    }

    /// The uid and gid a sandbox drops to in these tests (the host's `nobody`).
    const SANDBOX_ID: u32 = 65534;
    const SUID_DUMPABLE: &str = "/proc/sys/fs/suid_dumpable";
    /// What the probe writes into the shared memory.
    const MARK: [u8; 8] = *b"LOONGMEM";

    /// `fs.suid_dumpable` set for a test, restored when dropped.
    struct SuidDumpable(String);

    impl SuidDumpable {
        fn set(to: &str) -> Option<SuidDumpable> {
            let old = std::fs::read_to_string(SUID_DUMPABLE).ok()?;
            std::fs::write(SUID_DUMPABLE, to).ok()?;
            Some(SuidDumpable(old.trim().to_string()))
        }
    }

    impl Drop for SuidDumpable {
        fn drop(&mut self) {
            let _ = std::fs::write(SUID_DUMPABLE, &self.0);
        }
    }

    /// Runs `change` (an id change to [`SANDBOX_ID`]) in a child of `vfork_exec`, which then
    /// holds the window before its `execve` open while a probe process of the sandbox uid
    /// writes [`MARK`] into the memory the child shares with this process (through
    /// `/proc/CHILD/mem`, at the address of `target`); returns whether the write landed.
    fn probe_write(change: fn() -> bool, target: &std::sync::atomic::AtomicU64) -> bool {
        use std::{io::Read, os::unix::process::CommandExt, sync::atomic::Ordering};
        target.store(0, Ordering::SeqCst);
        let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let (gate_r, gate_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let at = target as *const _ as usize;
        let probe = std::thread::spawn(move || {
            let mut pid = [0u8; 4];
            std::fs::File::from(ready_r)
                .read_exact(&mut pid)
                .expect("the child's pid");
            let pid = i32::from_le_bytes(pid);
            assert!(pid > 0, "the id change failed in the child");
            let script = format!(
                "printf {} | dd of=/proc/{pid}/mem bs=1 seek={at} conv=notrunc status=none",
                std::str::from_utf8(&MARK).expect("ascii")
            );
            let status = std::process::Command::new("/bin/sh")
                .args(["-c", &script])
                .uid(SANDBOX_ID)
                .gid(SANDBOX_ID)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("run the probe");
            nix::unistd::write(&gate_w, b"g").expect("open the gate");
            status.success()
        });
        let pid = sys::vfork_exec(|| {
            let me = if change() {
                nix::unistd::getpid().as_raw()
            } else {
                0
            };
            let _ = nix::unistd::write(&ready_w, &me.to_le_bytes());
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(gate_r.as_raw_fd(), &mut b);
            sys::exit_now(0)
        })
        .expect("clone");
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        let wrote = probe.join().expect("probe");
        let landed = target.load(Ordering::SeqCst) == u64::from_le_bytes(MARK);
        assert_eq!(wrote, landed, "the probe's exit and the memory disagree");
        landed
    }

    /// With `fs.suid_dumpable` at 1, a payload's id change (here in a child of `vfork_exec`,
    /// sharing this process's memory as the payload shares the root reaper's) never leaves
    /// that memory open to a process of the sandbox uid before the `execve`: the probe cannot
    /// write into it. The control: the plain change (`setresuid(u, u, u)`) leaves it open, and
    /// the probe's write lands.
    #[test]
    fn an_id_change_never_opens_the_shared_memory_to_the_sandbox_uid() {
        use std::sync::atomic::AtomicU64;
        static TARGET: AtomicU64 = AtomicU64::new(0);
        if !Uid::effective().is_root() {
            eprintln!("skipped: the id change needs root");
            return;
        }
        let Some(_sysctl) = SuidDumpable::set("1") else {
            eprintln!("skipped: {SUID_DUMPABLE} cannot be written here");
            return;
        };
        fn plain() -> bool {
            sys::set_groups(&[SANDBOX_ID]).is_ok()
                && sys::set_resgid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID).is_ok()
                && sys::set_resuid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID).is_ok()
        }
        fn taken() -> bool {
            take_ids(SANDBOX_ID, SANDBOX_ID, "").is_ok()
        }
        assert!(
            probe_write(plain, &TARGET),
            "control: the plain id change leaves the memory writable to the sandbox uid"
        );
        assert!(
            !probe_write(taken, &TARGET),
            "the sandbox uid wrote into the memory shared before the execve"
        );
    }
}
