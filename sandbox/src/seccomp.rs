//! Compiling a tier's seccomp profile into BPF, once per tier.
//!
//! Besides the profile's own list, every tier gets structural guards that a list of names
//! cannot express:
//! - `clone3` answers ENOSYS, so libc falls back to `clone`, whose flags a filter can see;
//! - `clone` with any `CLONE_NEW*` flag is refused (a kill under an allowlist; EPERM under a
//!   denylist that denies `unshare`, so both ways of making a namespace agree);
//! - under a denylist in a tier that isolates the network, `socket`/`socketpair` outside the
//!   allowed families (and non-stream INET sockets) answer EAFNOSUPPORT;
//! - under a denylist, any x32 syscall number (`nr | 0x40000000`) kills the process
//!   (seccompiler checks the architecture but not the x32 bit).
//!
//! Filters stack: the kernel runs all and applies the most severe action. The profile's own
//! filter is installed last: once an allowlist is in, not even `prctl` or `seccomp` (which
//! installing another filter needs) may run.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use crate::profile::{SeccompMode, TierProfile};

/// Flags of `clone` that create namespaces.
pub const CLONE_NAMESPACE_FLAGS: [i32; 7] = [
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

/// Socket types other than `SOCK_STREAM`, refused for AF_INET/AF_INET6 even with a grant.
pub const NON_STREAM_SOCKET_TYPES: [i32; 6] = [
    libc::SOCK_DGRAM,
    libc::SOCK_RAW,
    libc::SOCK_RDM,
    libc::SOCK_SEQPACKET,
    6,  /* SOCK_DCCP */
    10, /* SOCK_PACKET */
];
/// The bits of `socket`'s type argument that hold the type (the rest are flags).
pub const SOCKET_TYPE_MASK: u64 = 0xf;

/// The x32 ABI bit of a syscall number.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// A profile that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("seccomp profile for {tier} does not compile: {reason}")]
pub struct SeccompError {
    pub tier: crate::Tier,
    pub reason: String,
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(conds)
}

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    val: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, val)
}

fn program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, seccompiler::BackendError> {
    let arch = TargetArch::x86_64;
    BpfProgram::try_from(SeccompFilter::new(rules, mismatch, matched, arch)?)
}

/// Hand-written: kill on a foreign architecture or any x32 syscall number, answer ENOSYS to
/// `clone3`, else allow. (One program instead of two saves a filter install per spawn.)
pub fn x32_guard() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    let i = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        i(LD_W_ABS, 0, 0, 4),                    // A = arch
        i(JEQ_K, 0, 5, AUDIT_ARCH_X86_64),       // foreign arch → kill
        i(LD_W_ABS, 0, 0, 0),                    // A = nr
        i(JGE_K, 3, 0, X32_SYSCALL_BIT),         // x32 → kill
        i(JEQ_K, 0, 1, libc::SYS_clone3 as u32), // clone3 → ENOSYS
        i(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        i(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        i(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
    ]
}

/// Compiles `profile`; `net` says whether the sandbox was granted network (AF_INET/AF_INET6
/// sockets), which only a denylist tier can be.
pub fn compile(profile: &TierProfile, net: bool) -> Result<Vec<BpfProgram>, SeccompError> {
    let err = |e: seccompiler::BackendError| SeccompError {
        tier: profile.tier,
        reason: e.to_string(),
    };
    let mut out = Vec::new();
    // clone with a namespace flag: one rule per flag, each "(flags & F) == F".
    let ns_clone = || -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        CLONE_NAMESPACE_FLAGS
            .iter()
            .map(|&f| rule(vec![cond(0, SeccompCmpOp::MaskedEq(f as u64), f as u64)?]))
            .collect()
    };
    match profile.seccomp_mode {
        SeccompMode::Allowlist => {
            let mut c3 = BTreeMap::new();
            c3.insert(libc::SYS_clone3, Vec::new());
            out.push(
                program(
                    c3,
                    SeccompAction::Allow,
                    SeccompAction::Errno(libc::ENOSYS as u32),
                )
                .map_err(err)?,
            );
            let ns_mask: u64 = CLONE_NAMESPACE_FLAGS.iter().fold(0, |m, f| m | *f as u64);
            let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
            for s in &profile.syscalls {
                rules.insert(s.nr, Vec::new());
            }
            // clone only without namespace flags.
            if let Some(clone_rules) = rules.get_mut(&libc::SYS_clone) {
                *clone_rules = vec![rule(vec![
                    cond(0, SeccompCmpOp::MaskedEq(ns_mask), 0).map_err(err)?
                ])
                .map_err(err)?];
            }
            // clone3 passes the allowlist and answers ENOSYS from the filter before it.
            rules.insert(libc::SYS_clone3, Vec::new());
            out.push(
                program(rules, SeccompAction::KillProcess, SeccompAction::Allow).map_err(err)?,
            );
        }
        SeccompMode::Denylist => {
            out.push(x32_guard());
            let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
            for s in &profile.syscalls {
                rules.insert(s.nr, Vec::new());
            }
            // A profile that denies unshare denies namespaces: clone may not make them either.
            if rules.contains_key(&libc::SYS_unshare) {
                rules
                    .entry(libc::SYS_clone)
                    .or_insert(ns_clone().map_err(err)?);
            }
            let deny = program(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(libc::EPERM as u32),
            )
            .map_err(err)?;
            // socket families: AF_UNIX always, AF_INET/AF_INET6 with a network grant.
            let mut families = vec![libc::AF_UNIX as u64];
            if net {
                families.extend([libc::AF_INET as u64, libc::AF_INET6 as u64]);
            }
            let not_allowed = || -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
                let mut rules = vec![rule(
                    families
                        .iter()
                        .map(|f| cond(0, SeccompCmpOp::Ne, *f))
                        .collect::<Result<_, _>>()?,
                )?];
                // Landlock restricts TCP only: a network grant never extends to datagram,
                // raw or packet sockets.
                if net {
                    for fam in [libc::AF_INET, libc::AF_INET6] {
                        for ty in NON_STREAM_SOCKET_TYPES {
                            rules.push(rule(vec![
                                cond(0, SeccompCmpOp::Eq, fam as u64)?,
                                cond(1, SeccompCmpOp::MaskedEq(SOCKET_TYPE_MASK), ty as u64)?,
                            ])?);
                        }
                    }
                }
                Ok(rules)
            };
            // Tiers that isolate the network also filter socket families; a tier that shares
            // the host's network (trusted) does not.
            if profile.namespaces.net {
                let mut fam = BTreeMap::new();
                fam.insert(libc::SYS_socket, not_allowed().map_err(err)?);
                fam.insert(libc::SYS_socketpair, not_allowed().map_err(err)?);
                out.push(
                    program(
                        fam,
                        SeccompAction::Allow,
                        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
                    )
                    .map_err(err)?,
                );
            }
            out.push(deny);
        }
    }
    Ok(out)
}
