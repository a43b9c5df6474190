//! Compiling a tier's seccomp profile into BPF, once per tier.
//!
//! Besides the profile's own list, every tier gets structural guards that a list of names
//! cannot express:
//! - `clone3` answers ENOSYS, so libc falls back to `clone`, whose flags a filter can see;
//! - `clone` with any `CLONE_NEW*` flag is refused (a kill under an allowlist; EPERM under a
//!   denylist that denies `unshare`, so both ways of making a namespace agree);
//! - under a denylist in a tier that isolates the network, `socket`/`socketpair` outside the
//!   allowed families answer EAFNOSUPPORT;
//! - with a TCP grant (the sandbox then shares the host's network namespace, and landlock's
//!   TCP rules are all that narrow it to the granted ports), every path past those rules is
//!   closed: INET sockets other than plain TCP streams (UDP, raw, MPTCP, SCTP, SMC) answer
//!   EAFNOSUPPORT, connect-on-send (`MSG_FASTOPEN`, the fast-open socket options) answers
//!   EOPNOTSUPP, an upper layer (`TCP_ULP`, which can make the socket SMC) answers
//!   EOPNOTSUPP, TCP repair, binding, listening or accepting (a listener or an abstract unix
//!   name there would be reachable from the host) answer EPERM;
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

/// The `socket` protocols an `AF_INET`/`AF_INET6` stream socket may name under a TCP grant:
/// the default (which is TCP) and `IPPROTO_TCP`. Landlock's TCP rules see TCP only, so an
/// MPTCP (262), SCTP (132) or SMC (256) stream socket would connect past them.
pub const GRANTED_STREAM_PROTOCOLS: [u32; 2] = [0, libc::IPPROTO_TCP as u32];

/// The `send*` flag that connects on send (TCP fast open) without `connect`, which is the
/// only call landlock's connect rule sees. Refused with EOPNOTSUPP, what a kernel with client
/// fast open disabled answers, so programs fall back to `connect`.
pub const CONNECT_ON_SEND: u32 = libc::MSG_FASTOPEN as u32;

/// The `send*` calls that take flags, each with the argument that holds them (for `sendmsg`
/// the argument, not the `msghdr`'s `msg_flags`, which the kernel overwrites).
pub const SEND_FLAGS_ARG: [(&str, i64, u8); 3] = [
    ("sendto", libc::SYS_sendto, 3),
    ("sendmsg", libc::SYS_sendmsg, 2),
    ("sendmmsg", libc::SYS_sendmmsg, 3),
];

/// `IPPROTO_TCP` socket options refused under a TCP grant, with the errno and why.
/// `TCP_ULP` swaps the socket's protocol operations for an upper layer's: with `smc` (kernels
/// that offer it) the socket stops being TCP to landlock, which then checks none of its
/// connects, so no upper layer is attached at all (kernel TLS offload included; TLS in the
/// program is unaffected). EOPNOTSUPP, as for a layer the kernel lacks, so programs fall back.
pub const REFUSED_TCP_OPTIONS: [(i32, i32, &str); 10] = [
    (
        libc::TCP_ULP,
        libc::EOPNOTSUPP,
        "an upper layer landlock does not see",
    ),
    (
        libc::TCP_FASTOPEN_CONNECT,
        libc::EOPNOTSUPP,
        "connects on the first send",
    ),
    (
        libc::TCP_FASTOPEN,
        libc::EOPNOTSUPP,
        "fast open on a listener",
    ),
    (libc::TCP_FASTOPEN_KEY, libc::EOPNOTSUPP, "fast open keys"),
    (
        libc::TCP_FASTOPEN_NO_COOKIE,
        libc::EOPNOTSUPP,
        "fast open without a cookie",
    ),
    (
        libc::TCP_REPAIR,
        libc::EPERM,
        "a connection without a handshake",
    ),
    (libc::TCP_REPAIR_QUEUE, libc::EPERM, "repair mode"),
    (libc::TCP_QUEUE_SEQ, libc::EPERM, "repair mode"),
    (libc::TCP_REPAIR_OPTIONS, libc::EPERM, "repair mode"),
    (libc::TCP_REPAIR_WINDOW, libc::EPERM, "repair mode"),
];

/// Calls refused with EPERM when the sandbox shares the host's network namespace (a TCP
/// grant): a listener there is reachable from the host, and `listen` on an unbound socket
/// autobinds an ephemeral port on every address without the `bind` landlock sees. Seccomp
/// cannot see a descriptor's family, so unix sockets cannot listen there either. `bind` too:
/// landlock refuses every TCP port already, and an abstract unix name bound there is in the
/// host's namespace (a datagram socket receives what host processes send to that name, and
/// any socket takes the name from the host service that would bind it).
pub const HOST_LISTEN_SYSCALLS: [(&str, i64); 4] = [
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("accept", libc::SYS_accept),
    ("accept4", libc::SYS_accept4),
];

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

/// The system calls the egress relay makes after its filter is installed: wait for a
/// listener, accept, pass the socket on, close it, memory for the message, and exit.
pub const RELAY_SYSCALLS: [i64; 14] = [
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_accept4,
    libc::SYS_sendmsg,
    libc::SYS_close,
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_rt_sigreturn,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The egress relay's allowlist: [`RELAY_SYSCALLS`], anything else kills it.
pub fn relay_filter() -> Result<BpfProgram, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        RELAY_SYSCALLS.iter().map(|nr| (*nr, Vec::new())).collect();
    rules.insert(
        libc::SYS_fcntl,
        vec![rule(vec![cond(
            1,
            SeccompCmpOp::Eq,
            libc::F_GETFD as u64,
        )?])?],
    );
    program(rules, SeccompAction::KillProcess, SeccompAction::Allow)
}

/// Which sockets the guard lets through (`None`: the guard does not look at sockets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketPolicy {
    /// `AF_UNIX` only.
    UnixOnly,
    /// `AF_UNIX`, and `AF_INET`/`AF_INET6` TCP stream sockets that connect only through
    /// `connect` and never listen (a TCP grant, in the host's network namespace).
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

/// Where `seccomp_data` keeps the low 32 bits of argument `n` (the kernel reads an `int`
/// argument from exactly those).
const fn arg_lo(n: u8) -> u32 {
    16 + 8 * n as u32
}

fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | e as u32
}

/// Hand-written guard, one program so that it costs one install: kill on a foreign
/// architecture (so the ia32 `socketcall` entry too) or any x32 syscall number, answer ENOSYS
/// to `clone3`, and, with a socket policy, refuse the sockets and socket calls outside it (see
/// the module docs); allow everything else (the profile's own filter decides that).
pub fn guard(sockets: Option<SocketPolicy>) -> BpfProgram {
    use Ins::*;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const NR: u32 = 0;
    const ARCH: u32 = 4;
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
        ]);
        if policy == SocketPolicy::UnixAndTcp {
            p.extend(host_network_dispatch());
        }
        p.extend([
            Ret(libc::SECCOMP_RET_ALLOW),
            Label("family"),
            Ld(arg_lo(0)),
            Jeq(libc::AF_UNIX as u32, Some("allow"), None),
        ]);
        if policy == SocketPolicy::UnixAndTcp {
            p.extend(tcp_socket());
        }
        p.extend([Label("eafnosupport"), Ret(errno(libc::EAFNOSUPPORT))]);
        if policy == SocketPolicy::UnixAndTcp {
            p.extend(host_network_checks());
        }
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

/// With a TCP grant: which syscalls go to which check (the accumulator holds the number;
/// each `send*` call's check is labelled with its name).
fn host_network_dispatch() -> Vec<Ins> {
    use Ins::*;
    let mut p = Vec::new();
    for (name, nr, _) in SEND_FLAGS_ARG {
        p.push(Jeq(nr as u32, Some(name), None));
    }
    p.push(Jeq(libc::SYS_setsockopt as u32, Some("sockopt"), None));
    for (_, nr) in HOST_LISTEN_SYSCALLS {
        p.push(Jeq(nr as u32, Some("eperm"), None));
    }
    p
}

/// With a TCP grant, after the domain was loaded: `AF_INET`/`AF_INET6` only as plain TCP
/// streams (landlock restricts TCP only); everything else falls through or jumps to the
/// EAFNOSUPPORT that ends the family check.
fn tcp_socket() -> Vec<Ins> {
    use Ins::*;
    let mut p = vec![
        Jeq(libc::AF_INET as u32, Some("stream"), None),
        Jeq(libc::AF_INET6 as u32, None, Some("eafnosupport")),
        Label("stream"),
        Ld(arg_lo(1)),
        And(SOCKET_TYPE_MASK as u32),
        Jeq(libc::SOCK_STREAM as u32, None, Some("eafnosupport")),
        Ld(arg_lo(2)),
    ];
    for proto in GRANTED_STREAM_PROTOCOLS {
        p.push(Jeq(proto, Some("allow"), None));
    }
    p
}

/// With a TCP grant: the flag and option checks the dispatch jumps to.
fn host_network_checks() -> Vec<Ins> {
    use Ins::*;
    let mut p = Vec::new();
    for (name, _, arg) in SEND_FLAGS_ARG {
        p.extend([
            Label(name),
            Ld(arg_lo(arg)),
            And(CONNECT_ON_SEND),
            Jeq(0, Some("allow"), Some("eopnotsupp")),
        ]);
    }
    p.extend([
        Label("sockopt"),
        Ld(arg_lo(1)),
        Jeq(libc::IPPROTO_TCP as u32, None, Some("allow")),
        Ld(arg_lo(2)),
    ]);
    for (opt, e, _) in REFUSED_TCP_OPTIONS {
        let to = if e == libc::EPERM {
            "eperm"
        } else {
            "eopnotsupp"
        };
        p.push(Jeq(opt as u32, Some(to), None));
    }
    p.extend([
        Ret(libc::SECCOMP_RET_ALLOW),
        Label("eopnotsupp"),
        Ret(errno(libc::EOPNOTSUPP)),
        Label("eperm"),
        Ret(errno(libc::EPERM)),
    ]);
    p
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

    /// Runs `prog` on an x86_64 syscall `nr` with `args`, as the kernel would (only the
    /// instructions [`assemble`] emits).
    fn run(prog: &BpfProgram, nr: i64, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_le_bytes());
        data[4..8].copy_from_slice(&0xC000_003Eu32.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                0x20 => {
                    let k = i.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().expect("4 bytes"));
                }
                0x54 => acc &= i.k,
                0x15 => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
                0x35 => pc += usize::from(if acc >= i.k { i.jt } else { i.jf }),
                0x06 => return i.k,
                other => panic!("instruction {other:#x} is not interpreted"),
            }
        }
    }

    #[test]
    fn a_tcp_grant_admits_plain_tcp_connects_only() {
        use libc::*;
        let allow = SECCOMP_RET_ALLOW;
        let err = |e: i32| SECCOMP_RET_ERRNO | e as u32;
        let tcp = Some(SocketPolicy::UnixAndTcp);
        let unix = Some(SocketPolicy::UnixOnly);
        let stream = SOCK_STREAM as u64 | SOCK_CLOEXEC as u64 | SOCK_NONBLOCK as u64;
        let inet = AF_INET as u64;
        let inet6 = AF_INET6 as u64;
        let fastopen = MSG_FASTOPEN as u64 | MSG_NOSIGNAL as u64;
        let tcp_level = IPPROTO_TCP as u64;
        #[rustfmt::skip]
        let cases: &[(Option<SocketPolicy>, i64, [u64; 6], u32)] = &[
            // Sockets: plain TCP streams only, whatever the flags in the type.
            (tcp, SYS_socket, [inet, stream, 0, 0, 0, 0], allow),
            (tcp, SYS_socket, [inet6, SOCK_STREAM as u64, IPPROTO_TCP as u64, 0, 0, 0], allow),
            (tcp, SYS_socket, [AF_UNIX as u64, SOCK_DGRAM as u64, 0, 0, 0, 0], allow),
            (tcp, SYS_socket, [inet, stream, IPPROTO_MPTCP as u64, 0, 0, 0], err(EAFNOSUPPORT)),
            (tcp, SYS_socket, [inet6, stream, IPPROTO_MPTCP as u64, 0, 0, 0], err(EAFNOSUPPORT)),
            (tcp, SYS_socket, [inet, stream, IPPROTO_SCTP as u64, 0, 0, 0], err(EAFNOSUPPORT)),
            (tcp, SYS_socket, [inet, stream, 256, 0, 0, 0], err(EAFNOSUPPORT)),
            // The kernel reads an int: high bits do not smuggle a protocol of 0 past the check.
            (tcp, SYS_socket, [inet, stream, 1 << 32 | IPPROTO_MPTCP as u64, 0, 0, 0], err(EAFNOSUPPORT)),
            (tcp, SYS_socket, [inet, SOCK_DGRAM as u64, 0, 0, 0, 0], err(EAFNOSUPPORT)),
            (tcp, SYS_socket, [inet, SOCK_RAW as u64, IPPROTO_TCP as u64, 0, 0, 0], err(EAFNOSUPPORT)),
            (tcp, SYS_socket, [inet, SOCK_SEQPACKET as u64, IPPROTO_SCTP as u64, 0, 0, 0], err(EAFNOSUPPORT)),
            (tcp, SYS_socket, [AF_NETLINK as u64, SOCK_RAW as u64, 0, 0, 0, 0], err(EAFNOSUPPORT)),
            (tcp, SYS_socketpair, [inet, stream, IPPROTO_MPTCP as u64, 0, 0, 0], err(EAFNOSUPPORT)),
            // Connect-on-send, in each call's own flags argument.
            (tcp, SYS_sendto, [3, 0, 1, fastopen, 0, 0], err(EOPNOTSUPP)),
            (tcp, SYS_sendto, [3, 0, 1, MSG_NOSIGNAL as u64, 0, 0], allow),
            (tcp, SYS_sendmsg, [3, 0, fastopen, 0, 0, 0], err(EOPNOTSUPP)),
            (tcp, SYS_sendmsg, [3, 0, MSG_DONTWAIT as u64, 0, 0, 0], allow),
            (tcp, SYS_sendmmsg, [3, 0, 1, fastopen, 0, 0], err(EOPNOTSUPP)),
            (tcp, SYS_sendmmsg, [3, 0, 1, 0, 0, 0], allow),
            // TCP options that connect without connect, or repair a connection.
            (tcp, SYS_setsockopt, [3, tcp_level, TCP_FASTOPEN_CONNECT as u64, 0, 4, 0], err(EOPNOTSUPP)),
            (tcp, SYS_setsockopt, [3, tcp_level, TCP_FASTOPEN as u64, 0, 4, 0], err(EOPNOTSUPP)),
            (tcp, SYS_setsockopt, [3, tcp_level, TCP_REPAIR as u64, 0, 4, 0], err(EPERM)),
            (tcp, SYS_setsockopt, [3, tcp_level, TCP_REPAIR_WINDOW as u64, 0, 4, 0], err(EPERM)),
            (tcp, SYS_setsockopt, [3, tcp_level, TCP_ULP as u64, 0, 4, 0], err(EOPNOTSUPP)),
            (tcp, SYS_setsockopt, [3, SOL_TCP as u64, TCP_ULP as u64, 0, 4, 0], err(EOPNOTSUPP)),
            (tcp, SYS_setsockopt, [3, tcp_level | 1 << 32, TCP_ULP as u64 | 1 << 32, 0, 4, 0], err(EOPNOTSUPP)),
            (tcp, SYS_setsockopt, [3, tcp_level, TCP_NODELAY as u64, 0, 4, 0], allow),
            (tcp, SYS_setsockopt, [3, SOL_SOCKET as u64, TCP_FASTOPEN_CONNECT as u64, 0, 4, 0], allow),
            // No listener in the host's network namespace.
            (tcp, SYS_listen, [3, 8, 0, 0, 0, 0], err(EPERM)),
            (tcp, SYS_accept, [3, 0, 0, 0, 0, 0], err(EPERM)),
            (tcp, SYS_accept4, [3, 0, 0, 0, 0, 0], err(EPERM)),
            (tcp, SYS_connect, [3, 0, 16, 0, 0, 0], allow),
            (tcp, SYS_bind, [3, 0, 16, 0, 0, 0], err(EPERM)),
            (tcp, SYS_bind, [3, 0, 3 + 12, 0, 0, 0], err(EPERM)),
            (unix, SYS_bind, [3, 0, 3 + 12, 0, 0, 0], allow),
            // Without a grant the namespace is empty: unix listeners and flags are its own.
            (unix, SYS_socket, [inet, stream, 0, 0, 0, 0], err(EAFNOSUPPORT)),
            (unix, SYS_socket, [AF_UNIX as u64, stream, 0, 0, 0, 0], allow),
            (unix, SYS_listen, [3, 8, 0, 0, 0, 0], allow),
            (unix, SYS_sendto, [3, 0, 1, fastopen, 0, 0], allow),
            // The trusted tier's guard does not look at sockets.
            (None, SYS_socket, [inet, stream, IPPROTO_MPTCP as u64, 0, 0, 0], allow),
            (None, SYS_listen, [3, 8, 0, 0, 0, 0], allow),
        ];
        for &(policy, nr, args, want) in cases {
            let got = run(&guard(policy), nr, args);
            assert_eq!(got, want, "{policy:?} syscall {nr} {args:?}");
        }
    }
}
