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
//! The structural guards are one small hand-assembled program ([`guard`]); the profile's list
//! is compiled by seccompiler. Filters stack: the kernel runs all and applies the most severe
//! action, and each install costs tens of µs, so a tier installs exactly two. The profile's own
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

/// Which sockets the guard lets through (`None`: the guard does not look at sockets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketPolicy {
    /// `AF_UNIX` only.
    UnixOnly,
    /// `AF_UNIX`, and `AF_INET`/`AF_INET6` stream sockets (a TCP grant).
    UnixAndTcp,
}

/// A BPF instruction whose jump targets are labels, resolved by [`assemble`].
enum Ins {
    Ld(u32),
    And(u32),
    /// `if A == k goto t else goto f` (labels; `None` falls through).
    Jeq(u32, Option<&'static str>, Option<&'static str>),
    Jge(u32, Option<&'static str>, Option<&'static str>),
    Ret(u32),
    Label(&'static str),
}

fn assemble(prog: &[Ins]) -> BpfProgram {
    const LD_W_ABS: u16 = 0x20;
    const AND_K: u16 = 0x54;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    let mut at = std::collections::HashMap::new();
    let mut n = 0usize;
    for ins in prog {
        match ins {
            Ins::Label(l) => {
                at.insert(*l, n);
            }
            _ => n += 1,
        }
    }
    let mut out = Vec::with_capacity(n);
    for ins in prog {
        let here = out.len();
        // Offsets count from the instruction after this one; programs here are a few dozen
        // instructions, far below the 255 a jump can reach.
        let off = |l: &Option<&'static str>| l.map_or(0, |l| (at[l] - here - 1) as u8);
        let i = |code, jt, jf, k| sock_filter { code, jt, jf, k };
        match ins {
            Ins::Label(_) => continue,
            Ins::Ld(k) => out.push(i(LD_W_ABS, 0, 0, *k)),
            Ins::And(k) => out.push(i(AND_K, 0, 0, *k)),
            Ins::Jeq(k, t, f) => out.push(i(JEQ_K, off(t), off(f), *k)),
            Ins::Jge(k, t, f) => out.push(i(JGE_K, off(t), off(f), *k)),
            Ins::Ret(k) => out.push(i(RET_K, 0, 0, *k)),
        }
    }
    out
}

/// Hand-written guard, one program so that it costs one install: kill on a foreign
/// architecture or any x32 syscall number, answer ENOSYS to `clone3`, and, with a socket
/// policy, answer EAFNOSUPPORT to sockets outside it; allow everything else (the profile's
/// own filter decides that).
pub fn guard(sockets: Option<SocketPolicy>) -> BpfProgram {
    use Ins::*;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    const ARG0_LO: u32 = 16;
    const ARG1_LO: u32 = 24;
    let errno = |e: i32| libc::SECCOMP_RET_ERRNO | e as u32;
    let mut p = vec![
        Ld(ARCH),
        Jeq(AUDIT_ARCH_X86_64, None, Some("kill")),
        Ld(NR),
        Jge(X32_SYSCALL_BIT, Some("kill"), None),
        Jeq(libc::SYS_clone3 as u32, Some("enosys"), None),
    ];
    if let Some(policy) = sockets {
        p.extend([
            Jeq(libc::SYS_socket as u32, Some("family"), None),
            Jeq(libc::SYS_socketpair as u32, Some("family"), None),
            Ret(libc::SECCOMP_RET_ALLOW),
            Label("family"),
            // The domain is an int: its low 32 bits are what the kernel reads.
            Ld(ARG0_LO),
            Jeq(libc::AF_UNIX as u32, Some("allow"), None),
        ]);
        if policy == SocketPolicy::UnixAndTcp {
            p.extend([
                Jeq(libc::AF_INET as u32, Some("stream"), None),
                Jeq(libc::AF_INET6 as u32, Some("stream"), None),
                Ret(errno(libc::EAFNOSUPPORT)),
                // Landlock restricts TCP only: a grant never extends to datagram, raw or
                // packet sockets.
                Label("stream"),
                Ld(ARG1_LO),
                And(SOCKET_TYPE_MASK as u32),
                Jeq(libc::SOCK_STREAM as u32, Some("allow"), None),
            ]);
        }
        p.push(Ret(errno(libc::EAFNOSUPPORT)));
    }
    p.extend([
        Label("allow"),
        Ret(libc::SECCOMP_RET_ALLOW),
        Label("enosys"),
        Ret(errno(libc::ENOSYS)),
        Label("kill"),
        Ret(libc::SECCOMP_RET_KILL_PROCESS),
    ]);
    assemble(&p)
}

/// Compiles `profile`; `net` says whether the sandbox was granted network (AF_INET/AF_INET6
/// sockets), which only a denylist tier can be.
pub fn compile(profile: &TierProfile, net: bool) -> Result<Vec<BpfProgram>, SeccompError> {
    let err = |e: seccompiler::BackendError| SeccompError {
        tier: profile.tier,
        reason: e.to_string(),
    };
    let mut out = Vec::new();
    match profile.seccomp_mode {
        SeccompMode::Allowlist => {
            // The allowlist kills x32 numbers and foreign sockets by itself; the guard adds
            // clone3 → ENOSYS (the allowlist lets clone3 through for that).
            out.push(guard(None));
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
            rules.insert(libc::SYS_clone3, Vec::new());
            out.push(
                program(rules, SeccompAction::KillProcess, SeccompAction::Allow).map_err(err)?,
            );
        }
        SeccompMode::Denylist => {
            // Tiers that isolate the network also filter socket families; a tier that shares
            // the host's network (trusted) does not.
            let sockets = profile.namespaces.net.then_some(if net {
                SocketPolicy::UnixAndTcp
            } else {
                SocketPolicy::UnixOnly
            });
            out.push(guard(sockets));
            let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
            for s in &profile.syscalls {
                rules.insert(s.nr, Vec::new());
            }
            // A profile that denies unshare denies namespaces: clone may not make them either
            // (one rule per flag, each "(flags & F) == F").
            if rules.contains_key(&libc::SYS_unshare) {
                let ns_clone = CLONE_NAMESPACE_FLAGS
                    .iter()
                    .map(|&f| rule(vec![cond(0, SeccompCmpOp::MaskedEq(f as u64), f as u64)?]))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(err)?;
                rules.entry(libc::SYS_clone).or_insert(ns_clone);
            }
            out.push(
                program(
                    rules,
                    SeccompAction::Allow,
                    SeccompAction::Errno(libc::EPERM as u32),
                )
                .map_err(err)?,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_jumps_stay_inside_and_end_in_returns() {
        for policy in [
            None,
            Some(SocketPolicy::UnixOnly),
            Some(SocketPolicy::UnixAndTcp),
        ] {
            let p = guard(policy);
            for (n, ins) in p.iter().enumerate() {
                if ins.code & 0x07 == 0x05 {
                    // A conditional jump: both targets within the program.
                    assert!(
                        n + 1 + (ins.jt as usize) < p.len() && n + 1 + (ins.jf as usize) < p.len(),
                        "{policy:?} #{n}"
                    );
                }
            }
            let last = &p[p.len() - 3..];
            assert!(
                last.iter().all(|i| i.code == 0x06),
                "{policy:?} ends in returns"
            );
            assert_eq!(last[2].k, libc::SECCOMP_RET_KILL_PROCESS);
        }
    }
}
