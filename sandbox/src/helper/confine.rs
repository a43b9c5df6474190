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

use super::{mounts, nix_fail, Failure, FIRST_PASSED_FD};
use crate::{plan::Plan, sys};

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

/// In the reaper: hostname and the new root.
pub(super) fn setup_root(plan: &Plan) -> Result<(), Failure> {
    if plan.namespaces & libc::CLONE_NEWUTS != 0 && !plan.hostname.is_empty() {
        nix::unistd::sethostname(&plan.hostname).map_err(nix_fail("sethostname"))?;
    }
    if !plan.mounts.is_empty() {
        mounts::build_root(&plan.mounts)?;
    }
    Ok(())
}

/// In the payload, just before `execve`: descriptors, cwd, credentials, rlimits,
/// `no_new_privs`, landlock, and seccomp last.
pub(super) fn payload(plan: &Plan, err_w: &OwnedFd) -> Result<(), Failure> {
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(nix_fail("set parent-death signal"))?;
    // Handed-over fds: 5, 6, … become 3, 4, …; each target is below its source and every
    // lower source was consumed already, so no source is overwritten before it is used.
    let n = plan.pass_fds as i32;
    let err = err_w.as_raw_fd();
    for i in 0..n {
        nix::unistd::dup2(FIRST_PASSED_FD + i, 3 + i).map_err(nix_fail("dup2 handed-over fd"))?;
    }
    // Everything else goes, except the error pipe (close-on-exec) until execve.
    let keep_from = (3 + n) as u32;
    if err >= 3 + n {
        sys::close_between(keep_from, err as u32 - 1)
            .map_err(|e| Failure::new("close_range", e.raw_os_error().unwrap_or(0), ""))?;
        sys::close_between(err as u32 + 1, u32::MAX)
            .map_err(|e| Failure::new("close_range", e.raw_os_error().unwrap_or(0), ""))?;
    } else {
        return Err(Failure::new(
            "close_range",
            libc::EBADF,
            "error pipe below the handed-over fds",
        ));
    }
    nix::unistd::chdir(&plan.cwd)
        .map_err(|e| Failure::new("chdir", e as i32, plan.cwd.display().to_string()))?;
    if let Some((uid, gid)) = plan.creds {
        let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
        nix::unistd::setgroups(&[g]).map_err(nix_fail("setgroups"))?;
        nix::unistd::setresgid(g, g, g).map_err(nix_fail("setresgid"))?;
        nix::unistd::setresuid(u, u, u).map_err(nix_fail("setresuid"))?;
        if nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok() {
            return Err(Failure::new(
                "drop root",
                libc::EPERM,
                "root could be regained",
            ));
        }
    }
    // After the uid change: an RLIMIT_NPROC set before it would make execve fail with EAGAIN
    // (the kernel marks a setuid over the limit).
    for &(res, soft, hard) in &plan.rlimits {
        set_rlimit(res, soft, hard)?;
    }
    prctl::set_no_new_privs().map_err(nix_fail("no_new_privs"))?;
    if let Some(l) = &plan.landlock {
        landlock(l)?;
    }
    for prog in &plan.seccomp {
        seccompiler::apply_filter(prog)
            .map_err(|e| Failure::new("seccomp", libc::EINVAL, e.to_string()))?;
    }
    Ok(())
}

fn set_rlimit(res: u32, soft: u64, hard: u64) -> Result<(), Failure> {
    use nix::sys::resource::Resource as R;
    let resource = match res {
        libc::RLIMIT_AS => R::RLIMIT_AS,
        libc::RLIMIT_CORE => R::RLIMIT_CORE,
        libc::RLIMIT_CPU => R::RLIMIT_CPU,
        libc::RLIMIT_FSIZE => R::RLIMIT_FSIZE,
        libc::RLIMIT_NOFILE => R::RLIMIT_NOFILE,
        libc::RLIMIT_NPROC => R::RLIMIT_NPROC,
        libc::RLIMIT_STACK => R::RLIMIT_STACK,
        libc::RLIMIT_MEMLOCK => R::RLIMIT_MEMLOCK,
        other => {
            return Err(Failure::new(
                "setrlimit",
                libc::EINVAL,
                format!("resource {other}"),
            ))
        }
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
