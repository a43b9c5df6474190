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
//! is dispatched by a binary search over syscall numbers ([`dispatch`]), each listed call's
//! argument rules compiled by seccompiler. The kernel prepares a filter at install by running
//! it for every syscall number (the per-filter cache of always-allowed calls), with interrupts
//! off, so a linear chain of a few hundred instructions cost that much per number and per
//! spawn; a search runs about twenty (the balanced tier: 118 on average before, the
//! restricted tier 227).
//!
//! Filters stack: the kernel runs all and applies the most severe action (on a tie, the
//! data of the last installed), and each install costs a verification, a JIT and that
//! preparation. So the guard and the profile are one program ([`chain`]) wherever that is
//! exactly what the two stacked would decide: every call the guard answers other than by
//! allowing or killing (`clone3`, the socket calls of its policy) is one the profile allows
//! whatever its arguments (a kill is the most severe action, so the guard's kills decide
//! either way). Otherwise the two are installed as before, the profile's last: once an
//! allowlist is in, not even `prctl` or `seccomp` (which installing another filter needs) may
//! run.

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

/// The most instructions the kernel takes in one filter (`BPF_MAXINSNS`).
pub const MAX_FILTER_INSTRUCTIONS: usize = 4096;

/// `BPF_JMP | BPF_JA`: an unconditional jump over `k` instructions (32 bits, any distance).
const JA: u16 = 0x05;
/// `BPF_JMP | BPF_JGE | BPF_K`.
const JGE_K: u16 = 0x35;
/// `BPF_RET | BPF_K`.
const RET_K: u16 = 0x06;
/// `BPF_LD | BPF_W | BPF_ABS`.
const LD_W_ABS: u16 = 0x20;
/// Where `seccomp_data` holds the syscall number and the architecture.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// What a profile's program answers for one syscall number: always the same action, or
/// the number's argument rules (seccompiler's chain) decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dispatch {
    Always(u32),
    Rules(i64),
}

/// What `rules` (seccompiler's model: a listed number with no rules takes `matched`, with
/// rules `matched` when one of them holds and `mismatch` otherwise; an unlisted one takes
/// `mismatch`) answers for `nr`.
fn dispatch_of(
    rules: &BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: u32,
    matched: u32,
    nr: i64,
) -> Dispatch {
    match rules.get(&nr) {
        None => Dispatch::Always(mismatch),
        Some(r) if r.is_empty() => Dispatch::Always(matched),
        Some(_) => Dispatch::Rules(nr),
    }
}

/// The program seccompiler would build from `rules` (the same architecture check, the same
/// actions, each listed number's rules compiled by seccompiler itself), with the syscall
/// number found by a binary search over the runs of numbers that share an answer instead of
/// a comparison per listed number in turn.
fn dispatch(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, seccompiler::BackendError> {
    // seccompiler's own checks of the rules and the actions.
    SeccompFilter::new(
        rules.clone(),
        mismatch.clone(),
        matched.clone(),
        TargetArch::x86_64,
    )?;
    let (miss, hit) = (u32::from(mismatch), u32::from(matched));
    let mut out = vec![
        ins(LD_W_ABS, 0, 0, ARCH_OFFSET),
        ins(0x15, 1, 0, AUDIT_ARCH_X86_64),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        ins(LD_W_ABS, 0, 0, NR_OFFSET),
    ];
    // Runs of numbers with one answer, each from its first number up to the next run's.
    let mut runs: Vec<(u32, Dispatch)> = vec![(0, Dispatch::Always(miss))];
    let mut push = |from: u32, d: Dispatch| match runs.last_mut() {
        Some(last) if last.0 == from => last.1 = d,
        Some(last) if last.1 == d && !matches!(d, Dispatch::Rules(_)) => {}
        _ => runs.push((from, d)),
    };
    for &nr in rules.keys() {
        let Ok(n) = u32::try_from(nr) else {
            return Err(seccompiler::BackendError::InvalidArgumentNumber);
        };
        push(n, dispatch_of(&rules, miss, hit, nr));
        if let Some(next) = n.checked_add(1) {
            if !rules.contains_key(&i64::from(next)) {
                push(next, Dispatch::Always(miss));
            }
        }
    }
    // Jumps to each listed number's rules, resolved once they are placed after the search.
    let mut to_rules: Vec<(usize, i64)> = Vec::new();
    search(&runs, &mut out, &mut to_rules);
    let mut placed: BTreeMap<i64, usize> = BTreeMap::new();
    for (nr, chain) in rules {
        if chain.is_empty() {
            continue;
        }
        placed.insert(nr, out.len());
        for rule in chain {
            out.extend(BpfProgram::from(rule));
            out.push(ins(RET_K, 0, 0, hit));
        }
        out.push(ins(RET_K, 0, 0, miss));
    }
    // seccompiler's layout ends with the default action after the last chain, and a rule's
    // (never taken) jump out of its chain lands there: the kernel checks every jump.
    out.push(ins(RET_K, 0, 0, miss));
    for (at, nr) in to_rules {
        let target = placed[&nr];
        out[at].k = (target - at - 1) as u32;
    }
    if out.len() >= MAX_FILTER_INSTRUCTIONS {
        return Err(seccompiler::BackendError::FilterTooLarge(out.len()));
    }
    Ok(out)
}

/// Emits the binary search over `runs` (sorted, the first from 0, each up to the next):
/// `A >= k` (the middle run's first number) jumps on to the upper half, else it skips to the
/// lower half that follows; the upper half is reached by an unconditional jump, which has
/// the reach a conditional one's eight bits lack.
fn search(runs: &[(u32, Dispatch)], out: &mut BpfProgram, to_rules: &mut Vec<(usize, i64)>) {
    if let [(_, d)] = runs {
        match *d {
            Dispatch::Always(action) => out.push(ins(RET_K, 0, 0, action)),
            Dispatch::Rules(nr) => {
                to_rules.push((out.len(), nr));
                out.push(ins(JA, 0, 0, 0));
            }
        }
        return;
    }
    let mid = runs.len() / 2;
    out.push(ins(JGE_K, 0, 1, runs[mid].0));
    let to_upper = out.len();
    out.push(ins(JA, 0, 0, 0));
    search(&runs[..mid], out, to_rules);
    out[to_upper].k = (out.len() - to_upper - 1) as u32;
    search(&runs[mid..], out, to_rules);
}

/// The calls the guard of `sockets` may answer other than by allowing or killing: read off
/// its dispatch table ([`guard_dispatch`]), the only place the guard looks at a syscall
/// number (past the architecture and x32 checks), so a call the guard comes to decide is on
/// this list without anyone keeping it.
fn guard_decides(sockets: Option<SocketPolicy>) -> Vec<i64> {
    guard_dispatch(sockets)
        .into_iter()
        .map(|(nr, _)| nr)
        .collect()
}

/// The guard's dispatch table: each syscall number it checks, and the label of its check
/// (an answer, or the argument checks that answer). Every other number is allowed.
fn guard_dispatch(sockets: Option<SocketPolicy>) -> Vec<(i64, &'static str)> {
    let mut t = vec![(libc::SYS_clone3, "enosys")];
    if let Some(policy) = sockets {
        t.extend([
            (libc::SYS_socket, "family"),
            (libc::SYS_socketpair, "family"),
        ]);
        if policy == SocketPolicy::UnixAndTcp {
            t.extend(SEND_FLAGS_ARG.iter().map(|&(name, nr, _)| (nr, name)));
            t.push((libc::SYS_setsockopt, "sockopt"));
            t.extend(HOST_LISTEN_SYSCALLS.iter().map(|&(_, nr)| (nr, "eperm")));
        }
    }
    t
}

/// `first` then `then` as one program: each of `first`'s allowing returns becomes a jump to
/// `then`, so `first`'s other answers stand and what it allows is `then`'s to decide.
fn chain(first: &[sock_filter], then: BpfProgram) -> BpfProgram {
    let len = first.len();
    let mut out: BpfProgram = first
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if f.code == RET_K && f.k == libc::SECCOMP_RET_ALLOW {
                ins(JA, 0, 0, (len - i - 1) as u32)
            } else {
                f.clone()
            }
        })
        .collect();
    out.extend(then);
    out
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
    dispatch(
        relay_rules()?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
    )
}

fn relay_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
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
    Ok(rules)
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
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    let mut p = vec![
        Ld(ARCH),
        Jeq(AUDIT_ARCH_X86_64, None, Some("kill")),
        Ld(NR),
        Jge(X32_SYSCALL_BIT, Some("kill"), None),
    ];
    p.extend(
        guard_dispatch(sockets)
            .into_iter()
            .map(|(nr, check)| Jeq(nr as u32, Some(check), None)),
    );
    if let Some(policy) = sockets {
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

/// A tier's syscall rules in seccompiler's model: the guard's socket policy, the listed
/// numbers with their argument rules, and the actions for an unlisted and a listed call.
type TierRules = (
    Option<SocketPolicy>,
    BTreeMap<i64, Vec<SeccompRule>>,
    SeccompAction,
    SeccompAction,
);

fn tier_rules(profile: &TierProfile, net: bool) -> Result<TierRules, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for s in &profile.syscalls {
        rules.insert(s.nr, Vec::new());
    }
    Ok(match profile.seccomp_mode {
        SeccompMode::Allowlist => {
            // The allowlist kills x32 numbers and foreign sockets by itself; the guard adds
            // clone3 → ENOSYS (the allowlist lets clone3 through for that).
            let ns_mask: u64 = CLONE_NAMESPACE_FLAGS.iter().fold(0, |m, f| m | *f as u64);
            // clone only without namespace flags.
            if let Some(clone_rules) = rules.get_mut(&libc::SYS_clone) {
                *clone_rules = vec![rule(vec![cond(0, SeccompCmpOp::MaskedEq(ns_mask), 0)?])?];
            }
            rules.insert(libc::SYS_clone3, Vec::new());
            (
                None,
                rules,
                SeccompAction::KillProcess,
                SeccompAction::Allow,
            )
        }
        SeccompMode::Denylist => {
            // Tiers that isolate the network also filter socket families; a tier that shares
            // the host's network (trusted) does not.
            let sockets = profile.namespaces.net.then_some(if net {
                SocketPolicy::UnixAndTcp
            } else {
                SocketPolicy::UnixOnly
            });
            // A profile that denies unshare denies namespaces: clone may not make them either
            // (one rule per flag, each "(flags & F) == F").
            if rules.contains_key(&libc::SYS_unshare) {
                let ns_clone = CLONE_NAMESPACE_FLAGS
                    .iter()
                    .map(|&f| rule(vec![cond(0, SeccompCmpOp::MaskedEq(f as u64), f as u64)?]))
                    .collect::<Result<Vec<_>, _>>()?;
                rules.entry(libc::SYS_clone).or_insert(ns_clone);
            }
            (
                sockets,
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(libc::EPERM as u32),
            )
        }
    })
}

/// Compiles `profile`; `net` says whether the sandbox was granted network (AF_INET/AF_INET6
/// sockets), which only a denylist tier can be. One program when the guard and the profile
/// chain exactly (see the module docs), else the two, the profile's last.
pub fn compile(profile: &TierProfile, net: bool) -> Result<Vec<BpfProgram>, SeccompError> {
    let err = |e: seccompiler::BackendError| SeccompError {
        tier: profile.tier,
        reason: e.to_string(),
    };
    let (sockets, rules, mismatch, matched) = tier_rules(profile, net).map_err(err)?;
    let guard = guard(sockets);
    let (miss, hit) = (u32::from(mismatch.clone()), u32::from(matched.clone()));
    let defers = guard_decides(sockets)
        .into_iter()
        .all(|nr| dispatch_of(&rules, miss, hit, nr) == Dispatch::Always(libc::SECCOMP_RET_ALLOW));
    let profile_prog = dispatch(rules, mismatch, matched).map_err(err)?;
    if defers {
        let one = chain(&guard, profile_prog);
        if one.len() >= MAX_FILTER_INSTRUCTIONS {
            return Err(err(seccompiler::BackendError::FilterTooLarge(one.len())));
        }
        Ok(vec![one])
    } else {
        Ok(vec![guard, profile_prog])
    }
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

    /// Runs `prog` on an x86_64 syscall `nr` with `args`, as the kernel would.
    fn run(prog: &BpfProgram, nr: i64, args: [u64; 6]) -> u32 {
        exec(prog, AUDIT_ARCH_X86_64, nr as u32, args).0
    }

    /// Runs `prog` on a syscall of `arch`, as the kernel would (the instructions these
    /// programs hold; any other fails the test): its answer and the instructions it ran.
    fn exec(prog: &BpfProgram, arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut acc, mut pc, mut steps) = (0u32, 0usize, 0usize);
        loop {
            let i = &prog[pc];
            pc += 1;
            steps += 1;
            let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match i.code {
                0x20 => {
                    let k = i.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().expect("4 bytes"));
                }
                0x54 => acc &= i.k,
                0x05 => pc += i.k as usize,
                0x15 => pc += jump(acc == i.k),
                0x25 => pc += jump(acc > i.k),
                0x35 => pc += jump(acc >= i.k),
                0x45 => pc += jump(acc & i.k != 0),
                0x06 => return (i.k, steps),
                other => panic!("instruction {other:#x} is not interpreted"),
            }
        }
    }

    /// What the kernel answers with `filters` installed in this order: each runs, newest
    /// first, and an answer replaces the one so far only when its action is strictly more
    /// severe (a lower signed action value), so on a tie the newest filter's data stands.
    fn stacked(filters: &[BpfProgram], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let action = |r: u32| (r & libc::SECCOMP_RET_ACTION_FULL) as i32;
        let mut answer = None;
        for f in filters.iter().rev() {
            let cur = exec(f, arch, nr, args).0;
            answer = match answer {
                Some(a) if action(cur) >= action(a) => Some(a),
                _ => Some(cur),
            };
        }
        answer.expect("at least one filter")
    }

    /// The programs of before this change: the guard, then seccompiler's own (a comparison
    /// per listed number, in turn) installed after it.
    fn two_filters(profile: &TierProfile, net: bool) -> Vec<BpfProgram> {
        let (sockets, rules, miss, hit) = tier_rules(profile, net).expect("rules");
        let linear = BpfProgram::try_from(
            SeccompFilter::new(rules, miss, hit, TargetArch::x86_64).expect("filter"),
        )
        .expect("program");
        vec![guard(sockets), linear]
    }

    /// Arguments that take every branch of the guard and of the profiles' argument rules.
    fn arg_cases() -> Vec<[u64; 6]> {
        use libc::*;
        let mut cases = vec![[0; 6], [u64::MAX; 6], [1 << 32; 6]];
        for f in CLONE_NAMESPACE_FLAGS {
            cases.push([f as u64 | SIGCHLD as u64, 0, 0, 0, 0, 0]);
            cases.push([(f as u64) << 32, 0, 0, 0, 0, 0]);
        }
        let stream = SOCK_STREAM as u64 | SOCK_CLOEXEC as u64;
        for family in [AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET] {
            for (ty, proto) in [
                (stream, 0),
                (SOCK_DGRAM as u64, 0),
                (stream, IPPROTO_MPTCP as u64),
                (SOCK_RAW as u64, IPPROTO_TCP as u64),
            ] {
                cases.push([family as u64, ty, proto, 0, 0, 0]);
            }
        }
        let fastopen = MSG_FASTOPEN as u64;
        cases.extend([
            [3, 0, fastopen, fastopen, 0, 0],
            [3, 0, 1, MSG_NOSIGNAL as u64, 0, 0],
            [3, IPPROTO_TCP as u64, TCP_ULP as u64, 0, 4, 0],
            [3, IPPROTO_TCP as u64, TCP_REPAIR as u64, 0, 4, 0],
            [3, IPPROTO_TCP as u64, TCP_NODELAY as u64, 0, 4, 0],
            [3, SOL_SOCKET as u64, TCP_FASTOPEN_CONNECT as u64, 0, 4, 0],
            [3, F_GETFD as u64, 0, 0, 0, 0],
            [3, F_SETFD as u64, 0, 0, 0, 0],
        ]);
        cases
    }

    /// Syscall numbers: every x86_64 one and beyond, x32 numbers, the largest.
    fn nr_cases() -> Vec<u32> {
        let mut nrs: Vec<u32> = (0..1024).collect();
        nrs.extend([X32_SYSCALL_BIT, X32_SYSCALL_BIT | 1, X32_SYSCALL_BIT | 41]);
        nrs.extend([X32_SYSCALL_BIT | 435, X32_SYSCALL_BIT - 1, u32::MAX]);
        nrs
    }

    /// Every decision `now` makes equals what `before` (stacked) made, on both
    /// architectures, for every syscall number and argument case.
    fn assert_same_decisions(what: &str, before: &[BpfProgram], now: &[BpfProgram]) {
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        let args = arg_cases();
        for arch in [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386] {
            for nr in nr_cases() {
                for a in &args {
                    assert_eq!(
                        stacked(now, arch, nr, *a),
                        stacked(before, arch, nr, *a),
                        "{what}: arch {arch:#x} syscall {nr} {a:?}"
                    );
                }
            }
        }
    }

    /// A profile of `tier` whose seccomp part is `mode` listing `nrs`, isolating the network
    /// as `net_ns` says (the rest plays no part in the filters).
    fn profile_of(
        tier: crate::Tier,
        net_ns: bool,
        mode: SeccompMode,
        nrs: impl IntoIterator<Item = (String, i64)>,
    ) -> TierProfile {
        use crate::profile::*;
        TierProfile {
            tier,
            namespaces: Namespaces {
                pid: true,
                mount: true,
                net: net_ns,
                ipc: true,
                uts: true,
            },
            landlock: LandlockMode::Required,
            landlock_net: true,
            landlock_scopes: true,
            system_paths: Vec::new(),
            tmp_bytes: 0,
            tmp_writable: false,
            seccomp_mode: mode,
            syscalls: nrs
                .into_iter()
                .map(|(name, nr)| SyscallEntry {
                    name,
                    nr,
                    why: "test".into(),
                })
                .collect(),
            rlimits: RlimitProfile::default(),
        }
    }

    /// A balanced-like profile of `mode` listing `nrs`.
    fn synthetic(mode: SeccompMode, nrs: impl IntoIterator<Item = i64>) -> TierProfile {
        let nrs = nrs.into_iter().map(|nr| (format!("nr{nr}"), nr));
        profile_of(crate::Tier::Balanced, true, mode, nrs)
    }

    /// The bundled tiers (their filters' parts: the profiles crate has its own copy of this
    /// crate's types), and profiles that take the search's far jumps (a long allowlist,
    /// alternating listed and unlisted numbers).
    fn profiles() -> Vec<(String, TierProfile)> {
        let mut out = Vec::new();
        for (tier, p) in loong_profiles::bundled().expect("bundled") {
            let mode = match format!("{:?}", p.seccomp_mode).as_str() {
                "Allowlist" => SeccompMode::Allowlist,
                "Denylist" => SeccompMode::Denylist,
                other => panic!("seccomp mode {other}"),
            };
            let ours: crate::Tier = tier.as_str().parse().expect("tier");
            let nrs = p.syscalls.iter().map(|s| (s.name.clone(), s.nr));
            out.push((
                tier.to_string(),
                profile_of(ours, p.namespaces.net, mode, nrs),
            ));
        }
        assert_eq!(out.len(), 3, "every bundled tier");
        out.push((
            "long allowlist".into(),
            synthetic(
                SeccompMode::Allowlist,
                (0..460).filter(|n| n % 7 != 3 && *n != libc::SYS_socket),
            ),
        ));
        out.push((
            "alternating denylist".into(),
            synthetic(SeccompMode::Denylist, (0..460).step_by(2).map(|n| n + 1)),
        ));
        out
    }

    #[test]
    fn the_chained_filter_decides_every_call_as_the_two_stacked_did() {
        for (name, p) in profiles() {
            for net in [false, true] {
                let now = compile(&p, net).expect("compiles");
                assert_same_decisions(&format!("{name} net={net}"), &two_filters(&p, net), &now);
                if !name.contains("alternating") {
                    // The cut holds for every bundled tier: one install per spawn.
                    assert_eq!(now.len(), 1, "{name} net={net} installs one filter");
                }
            }
        }
    }

    /// What the kernel checks of a classic program before it takes it (`bpf_check_classic`,
    /// `seccomp_check_filter`): known instructions only, loads inside `seccomp_data` and
    /// aligned, every jump inside the program, a return last.
    fn assert_kernel_takes(what: &str, prog: &BpfProgram) {
        let n = prog.len();
        assert!(
            n > 0 && n < MAX_FILTER_INSTRUCTIONS,
            "{what}: {n} instructions"
        );
        for (pc, i) in prog.iter().enumerate() {
            match i.code {
                0x20 => assert!(i.k < 64 && i.k % 4 == 0, "{what} #{pc}: load {}", i.k),
                0x54 | 0x06 => {}
                0x05 => assert!((i.k as usize) < n - pc - 1, "{what} #{pc}: ja {}", i.k),
                0x15 | 0x25 | 0x35 | 0x45 => assert!(
                    pc + usize::from(i.jt) + 1 < n && pc + usize::from(i.jf) + 1 < n,
                    "{what} #{pc}: jump out"
                ),
                other => panic!("{what} #{pc}: instruction {other:#x}"),
            }
        }
        assert_eq!(prog[n - 1].code, 0x06, "{what}: ends in a return");
    }

    #[test]
    fn every_program_is_one_the_kernel_takes() {
        for (name, p) in profiles() {
            for net in [false, true] {
                for prog in compile(&p, net).expect("compiles") {
                    assert_kernel_takes(&format!("{name} net={net}"), &prog);
                }
            }
        }
        assert_kernel_takes("relay", &relay_filter().expect("relay"));
    }

    #[test]
    fn the_relay_filter_decides_every_call_as_seccompiler_s_did() {
        let linear = BpfProgram::try_from(
            SeccompFilter::new(
                relay_rules().expect("rules"),
                SeccompAction::KillProcess,
                SeccompAction::Allow,
                TargetArch::x86_64,
            )
            .expect("filter"),
        )
        .expect("program");
        assert_same_decisions("relay", &[linear], &[relay_filter().expect("relay")]);
    }

    /// The guard answers other than allow or kill only for the calls `guard_decides` names:
    /// the condition under which it is chained in front of a profile looks at no other.
    #[test]
    fn the_guard_decides_only_the_calls_it_names() {
        for policy in [
            None,
            Some(SocketPolicy::UnixOnly),
            Some(SocketPolicy::UnixAndTcp),
        ] {
            let named = guard_decides(policy);
            let g = guard(policy);
            for nr in nr_cases() {
                for a in arg_cases() {
                    let r = exec(&g, AUDIT_ARCH_X86_64, nr, a).0;
                    let plain = r == libc::SECCOMP_RET_ALLOW || r == libc::SECCOMP_RET_KILL_PROCESS;
                    assert!(
                        plain || named.contains(&i64::from(nr)),
                        "{policy:?}: syscall {nr} {a:?} answered {r:#x}"
                    );
                }
            }
            // Control: each named call is answered otherwise for some arguments.
            for nr in named {
                assert!(
                    arg_cases().iter().any(|a| {
                        let r = exec(&g, AUDIT_ARCH_X86_64, nr as u32, *a).0;
                        r != libc::SECCOMP_RET_ALLOW && r != libc::SECCOMP_RET_KILL_PROCESS
                    }),
                    "{policy:?}: syscall {nr} is never decided by the guard"
                );
            }
        }
    }

    /// A profile that itself decides a call the guard answers (here `socket`, denied) keeps
    /// the two filters: chained, the guard's EAFNOSUPPORT would stand where the kernel gives
    /// the profile's EPERM.
    #[test]
    fn a_profile_deciding_a_call_the_guard_answers_keeps_two_filters() {
        let inet = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0];
        let denies_socket = synthetic(
            SeccompMode::Denylist,
            [libc::SYS_socket, libc::SYS_ptrace, libc::SYS_unshare],
        );
        let now = compile(&denies_socket, false).expect("compiles");
        assert_eq!(now.len(), 2);
        assert_eq!(
            stacked(&now, AUDIT_ARCH_X86_64, libc::SYS_socket as u32, inet),
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32
        );
        assert_same_decisions("denies socket", &two_filters(&denies_socket, false), &now);
        // Control: without `socket` on the list, one program, and the guard's answer.
        let other = synthetic(SeccompMode::Denylist, [libc::SYS_ptrace, libc::SYS_unshare]);
        let now = compile(&other, false).expect("compiles");
        assert_eq!(now.len(), 1);
        assert_eq!(
            stacked(&now, AUDIT_ARCH_X86_64, libc::SYS_socket as u32, inet),
            libc::SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32
        );
    }

    /// The kernel runs each filter for every syscall number when it is installed (its cache
    /// of always-allowed calls), per spawn: a number is found in a handful of comparisons,
    /// not one per listed call.
    #[test]
    fn a_syscall_number_is_searched_not_walked() {
        /// Instructions a call without argument rules may take through one tier's program: a
        /// search of depth log2(runs), two instructions a level, the guard's few in front.
        const MAX_STEPS: usize = 40;
        for (name, p) in profiles() {
            let now = compile(&p, false).expect("compiles");
            let (_, rules, _, _) = tier_rules(&p, false).expect("rules");
            let mut worst = 0;
            for nr in 0..1024u32 {
                if rules.get(&i64::from(nr)).is_some_and(|r| !r.is_empty()) {
                    continue;
                }
                for f in &now {
                    worst = worst.max(exec(f, AUDIT_ARCH_X86_64, nr, [0; 6]).1);
                }
            }
            assert!(
                worst <= MAX_STEPS,
                "{name}: {worst} instructions for one number"
            );
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
