//! `SandboxSpec`: what a caller asks for, validated and turned into a [`Plan`] for a tier
//! profile on this host. Bad input is refused here, before anything is spawned.

use std::{
    ffi::OsString,
    os::{
        fd::OwnedFd,
        unix::{ffi::OsStringExt, fs::PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use nix::sys::resource::Resource;

use crate::{
    host::{Host, Mechanism},
    plan::{rlimit, EgressPlan, IdMap, LandlockPlan, MountOp, Plan},
    profile::{LandlockMode, TierProfile},
    subids::{SubRange, INSIDE_SANDBOX_ID},
    Tier,
};

/// The uid and gid a sandbox runs as when loongd is root (`nobody`/`nogroup`).
pub const DEFAULT_SANDBOX_ID: (u32, u32) = (65534, 65534);
/// The most grants of each kind one spec may carry.
pub const MAX_GRANTS: usize = 256;
/// The most arguments and environment entries.
pub const MAX_ARGS: usize = 4096;
/// Host trees no grant may reach into: the sandbox gets its own `/proc` and `/dev`, and no
/// `/sys`.
pub const KERNEL_TREES: [&str; 3] = ["/proc", "/sys", "/dev"];
/// `PATH` inside a sandbox.
pub const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

pub use crate::net_grant::{NetGrant, NetGrantError};

/// The loopback port a sandbox's HTTP proxy listens on, inside its own network namespace
/// (the next free one above it when a raw forward takes it).
pub const PROXY_PORT: u16 = 3128;
/// The proxy variables a sandbox with a network grant gets (upper and lower case); a
/// request's own values for them are replaced.
pub const PROXY_VARIABLES: [&str; 6] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];
/// Set empty, so that no destination bypasses the proxy.
pub const NO_PROXY_VARIABLES: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// The raw forwards of `net`, in grant order: every grant with an exact destination whose
/// port no other exact grant names (a port two destinations share would be ambiguous, so it
/// is served by the proxy only). Forward `i` (from 1) is the relay's tag `i`.
pub fn forwards(net: &[NetGrant]) -> Vec<(String, u16)> {
    let exact: Vec<(&str, u16)> = net.iter().filter_map(NetGrant::exact).collect();
    let mut out: Vec<(String, u16)> = Vec::new();
    for (host, port) in &exact {
        let shared = exact
            .iter()
            .any(|(h, p)| p == port && !h.eq_ignore_ascii_case(host));
        if !shared && !out.iter().any(|(_, p)| p == port) {
            out.push((host.to_string(), *port));
        }
    }
    out
}

/// The proxy's port given the forwards' ports: [`PROXY_PORT`], or the next one no forward
/// takes.
pub fn proxy_port(forwards: &[(String, u16)]) -> u16 {
    let mut port = PROXY_PORT;
    while forwards.iter().any(|(_, p)| *p == port) {
        port = port.wrapping_add(1).max(1024);
    }
    port
}

/// Resource limits of one sandbox; `None` leaves the tier's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory: cgroup `memory.max` where available, and `RLIMIT_AS`.
    pub memory_bytes: Option<u64>,
    /// Processes: cgroup `pids.max` where available, else `RLIMIT_NPROC`.
    pub pids: Option<u64>,
    /// Wall-clock limit, enforced by the parent.
    pub timeout: Option<Duration>,
    /// CPU seconds (`RLIMIT_CPU`: SIGXCPU at the limit, SIGKILL a second later).
    pub cpu_secs: Option<u64>,
}

/// What to run and how to confine it.
#[derive(Debug, Clone, Default)]
pub struct SandboxSpec {
    pub tier: Option<Tier>,
    /// The program: an absolute path, or a name looked up on the sandbox's `PATH`.
    pub program: PathBuf,
    /// Arguments after `argv[0]`.
    pub args: Vec<OsString>,
    /// Extra environment (names validated; the rest of the environment is cleared).
    pub env: Vec<(String, OsString)>,
    /// Paths readable inside, at the same path.
    pub read: Vec<PathBuf>,
    /// Paths readable and writable inside, at the same path.
    pub write: Vec<PathBuf>,
    /// TCP destinations.
    pub net: Vec<NetGrant>,
    pub limits: Limits,
    /// Run even if the host lacks a mechanism the tier needs (the caller audits it).
    pub allow_degraded: bool,
    /// Descriptors handed to the payload as 3, 4, … (counted; the fds travel separately).
    pub pass_fds: u32,
    /// Set by loongd for its own worker programs only, never from a request.
    pub kernel: KernelOverrides,
    /// A plugin's own installed package, readable inside at the same path. Set by loongd
    /// only: it is the one path under loongd's (hidden) home a sandbox may see, and it may not
    /// contain any hidden path.
    pub package: Option<PathBuf>,
    /// Set when `read` and `write` are the resolved paths a decision allowed (loongd's
    /// `sandbox run`): a grant that no longer resolves to itself changed since it was decided
    /// and is refused ([`SpecError::GrantChanged`]) rather than resolved anew.
    pub decided_grants: bool,
    /// The sandbox's end of the egress socket (a `SOCK_SEQPACKET` socketpair whose other end
    /// loongd's broker reads). Required with a network grant;
    /// only the sandbox's relay holds it, never the payload.
    pub egress: Option<Arc<OwnedFd>>,
    /// The read end of a gate pipe: the payload waits before its `execve` until the other
    /// end's holder writes [`crate::plan::GATE_OPEN`], and exits without running when the
    /// other end closes first ([`crate::plan::Plan::gate`]). loongd's `sandbox run` opens it
    /// once the run's decisions are committed to the audit trail.
    pub gate: Option<Arc<OwnedFd>>,
}

/// Departures from a tier's rlimits that loongd makes for its own worker programs (a request
/// can only tighten its tier; see [`Limits`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelOverrides {
    /// No `RLIMIT_AS`: wasmtime reserves gigabytes of address space for each linear memory
    /// (guard regions), so the cgroup's `memory.max` and the engine's own limits bound memory.
    pub unbounded_address_space: bool,
    /// No `RLIMIT_CPU`: a long-lived worker would otherwise die after the tier's CPU seconds
    /// summed over all its calls; each call is bounded by its own deadline instead.
    pub unbounded_cpu: bool,
    /// Tasks (threads) the payload may run, instead of the tier's process limit: the cgroup's
    /// `pids.max` where there is one, else `RLIMIT_NPROC`.
    pub threads: Option<u64>,
}

/// Why a spec was refused. Nothing was spawned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("no tier given: choose restricted, balanced or trusted")]
    NoTier,
    #[error("program `{0}` not found (give an absolute path or a name on {SANDBOX_PATH})")]
    ProgramNotFound(String),
    #[error("program {0} is not an executable file")]
    NotExecutable(String),
    #[error("{flag} {path}: the path does not exist")]
    PathNotFound { flag: &'static str, path: String },
    #[error("{flag} {path}: give an absolute path")]
    NotAbsolute { flag: &'static str, path: String },
    #[error("{flag} {path}: `..` is not allowed in the path; give the path it names")]
    DotDot { flag: &'static str, path: String },
    #[error("{flag} {path} changed after it was decided (it now resolves to {now}); nothing was run, run again")]
    GrantChanged {
        flag: &'static str,
        path: String,
        now: String,
    },
    #[error("conflicting grants: {0}")]
    Conflict(String),
    #[error("{what} of 0 is not a limit; omit it to use the tier's default")]
    ZeroLimit { what: &'static str },
    #[error("too many {what}: {count}, at most {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("environment name `{0}` is not a valid variable name")]
    BadEnvName(String),
    #[error("tier {tier} cannot be enforced on this host: {} missing (see `loongctl doctor`); pass --allow-degraded to run it anyway", names(.missing))]
    Unavailable { tier: Tier, missing: Vec<Mechanism> },
    #[error("--allow-net cannot be enforced on this host: {} missing (see `loongctl doctor`); a network grant never runs without them, not even with --allow-degraded", names(.missing))]
    NetUnenforced { missing: Vec<Mechanism> },
    #[error("a network grant needs loongd's egress broker, and none was attached to this sandbox")]
    NoEgress,
}

fn names(m: &[Mechanism]) -> String {
    m.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
}

/// The context a spec is planned in.
#[derive(Debug)]
pub struct PlanContext<'a> {
    pub host: &'a Host,
    pub profile: &'a TierProfile,
    /// uid/gid to drop to when root.
    pub sandbox_id: (u32, u32),
    /// Paths no sandbox may see (loongd's home, keys, configuration); granting one is a
    /// conflict, and the trusted tier gets them masked.
    pub hidden: &'a [PathBuf],
    pub seccomp: Vec<Vec<seccompiler::sock_filter>>,
    pub cgroup_join: Vec<PathBuf>,
    /// Rootless with subordinate ids: loongd's user's uid and gid ranges ([`crate::subids`]).
    pub subordinate: Option<(SubRange, SubRange)>,
}

/// A validated plan and the mechanisms it runs without (degraded).
#[derive(Debug)]
pub struct Planned {
    pub plan: Plan,
    pub degraded: Vec<Mechanism>,
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn check_paths(
    flag: &'static str,
    paths: &[PathBuf],
    decided: bool,
) -> Result<Vec<PathBuf>, SpecError> {
    if paths.len() > MAX_GRANTS {
        return Err(SpecError::TooMany {
            what: "grants",
            count: paths.len(),
            max: MAX_GRANTS,
        });
    }
    paths
        .iter()
        .map(|p| {
            let shown = p.display().to_string();
            if !p.is_absolute() {
                return Err(SpecError::NotAbsolute { flag, path: shown });
            }
            let real = std::fs::canonicalize(p).map_err(|_| SpecError::PathNotFound {
                flag,
                path: shown.clone(),
            })?;
            if decided && real != *p {
                return Err(SpecError::GrantChanged {
                    flag,
                    path: shown,
                    now: real.display().to_string(),
                });
            }
            Ok(real)
        })
        .collect()
}

impl SandboxSpec {
    /// Validates the spec and resolves it into a plan for `ctx`.
    pub fn plan(&self, ctx: PlanContext<'_>) -> Result<Planned, SpecError> {
        let tier = self.tier.ok_or(SpecError::NoTier)?;
        let profile = ctx.profile;
        for (what, v) in [
            ("memory", self.limits.memory_bytes),
            ("pids", self.limits.pids),
            ("cpu", self.limits.cpu_secs),
        ] {
            if v == Some(0) {
                return Err(SpecError::ZeroLimit { what });
            }
        }
        if self.limits.timeout == Some(Duration::ZERO) {
            return Err(SpecError::ZeroLimit { what: "timeout" });
        }
        if self.args.len() > MAX_ARGS || self.env.len() > MAX_ARGS {
            return Err(SpecError::TooMany {
                what: "arguments or environment entries",
                count: self.args.len().max(self.env.len()),
                max: MAX_ARGS,
            });
        }
        for (name, _) in &self.env {
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(SpecError::BadEnvName(name.clone()));
            }
        }
        let read = check_paths("--read", &self.read, self.decided_grants)?;
        let write = check_paths("--write", &self.write, self.decided_grants)?;
        for r in &read {
            if write.contains(r) {
                return Err(SpecError::Conflict(format!(
                    "{} is granted both --read and --write; keep one",
                    r.display()
                )));
            }
        }
        for g in read.iter().chain(&write) {
            if g == Path::new("/") {
                return Err(SpecError::Conflict(
                    "granting / defeats the sandbox; grant the directories needed".into(),
                ));
            }
            if let Some(k) = KERNEL_TREES.iter().find(|k| g.starts_with(k)) {
                return Err(SpecError::Conflict(format!(
                    "{} is under {k}, which would expose the host's kernel interfaces; the sandbox has its own",
                    g.display()
                )));
            }
            if let Some(h) = ctx
                .hidden
                .iter()
                .find(|h| g.starts_with(h) || h.starts_with(g))
            {
                return Err(SpecError::Conflict(format!(
                    "{} overlaps loongd's own state at {}",
                    g.display(),
                    h.display()
                )));
            }
        }
        if !self.net.is_empty() && tier == Tier::Restricted {
            return Err(SpecError::Conflict(
                "the restricted tier has no network; use --tier balanced for --allow-net".into(),
            ));
        }
        // A tier that keeps the host's network (trusted) has nothing a grant could narrow:
        // refused rather than accepted as a promise nothing keeps.
        if !self.net.is_empty() && !profile.namespaces.net {
            return Err(SpecError::Conflict(format!(
                "the {tier} tier has the host's whole network, which --allow-net cannot narrow; use --tier balanced for a network grant"
            )));
        }
        let mut read = read;
        if let Some(pkg) = &self.package {
            let shown = pkg.display().to_string();
            let pkg = std::fs::canonicalize(pkg).map_err(|_| SpecError::PathNotFound {
                flag: "package",
                path: shown.clone(),
            })?;
            if let Some(h) = ctx.hidden.iter().find(|h| h.starts_with(&pkg)) {
                return Err(SpecError::Conflict(format!(
                    "the package {shown} contains loongd's own state at {}",
                    h.display()
                )));
            }
            if KERNEL_TREES.iter().any(|k| pkg.starts_with(k)) || pkg == Path::new("/") {
                return Err(SpecError::Conflict(format!("{shown} cannot be a package")));
            }
            read.push(pkg);
        }
        let program = self.resolve_program()?;

        // Fail closed on missing mechanisms, unless degraded mode was asked for.
        let missing = ctx.host.missing_for(tier);
        if !missing.is_empty() && !self.allow_degraded {
            return Err(SpecError::Unavailable { tier, missing });
        }
        let has = |m: Mechanism| ctx.host.has(m);
        let root = ctx.host.root;
        let ns = profile.namespaces;
        let mut flags = 0;
        // Every sandbox of a tier that isolates the network gets an empty network namespace,
        // with a grant too: a grant is served by loongd's egress broker, never by the host's
        // network.
        let want_net_ns = ns.net;
        for (on, mech) in [
            (ns.pid, Mechanism::PidNs),
            (ns.mount, Mechanism::MountNs),
            (want_net_ns, Mechanism::NetNs),
            (ns.ipc, Mechanism::IpcNs),
            (ns.uts, Mechanism::UtsNs),
        ] {
            if on && has(mech) {
                flags |= mech.clone_flag().unwrap_or(0);
            }
        }
        let mut id_map = None;
        let mut creds = root.then_some(ctx.sandbox_id);
        if let (false, Some(sub)) = (root, ctx.subordinate) {
            // Rootless with subordinate ids: every sandbox, whatever its tier, gets a user
            // namespace where it runs as its own subordinate id (never loongd's), and a pid
            // namespace, so none of its processes outlives the helper that holds its id.
            if !has(Mechanism::UserNs) || !has(Mechanism::PidNs) {
                return Err(SpecError::Unavailable {
                    tier,
                    missing: vec![Mechanism::UserNs, Mechanism::PidNs]
                        .into_iter()
                        .filter(|m| !has(*m))
                        .collect(),
                });
            }
            flags |= libc::CLONE_NEWUSER | libc::CLONE_NEWPID;
            id_map = Some(IdMap {
                inside_uid: 0,
                inside_gid: 0,
                subordinate: Some(sub),
            });
            creds = Some((INSIDE_SANDBOX_ID, INSIDE_SANDBOX_ID));
        } else if !root && flags != 0 {
            if has(Mechanism::UserNs) {
                flags |= libc::CLONE_NEWUSER;
                let uid = nix::unistd::Uid::effective().as_raw();
                let gid = nix::unistd::Gid::effective().as_raw();
                id_map = Some(IdMap {
                    inside_uid: uid,
                    inside_gid: gid,
                    subordinate: None,
                });
            } else {
                // Without a user namespace an unprivileged helper cannot unshare the rest.
                flags = 0;
            }
        }

        let mounts = if flags & libc::CLONE_NEWNS != 0 {
            self.mounts(tier, profile, &program, &read, &write, ctx.hidden)
        } else {
            Vec::new()
        };
        let landlock = match profile.landlock {
            LandlockMode::Off => None,
            _ if !has(Mechanism::Landlock) => None,
            mode => Some(self.landlock(profile, mode, &program, &read, &write)),
        };
        // A grant is served only through the sandbox's own empty network namespace and the
        // egress socket; without a network namespace it would be the host's whole network.
        // Degraded mode never drops that.
        let egress = if self.net.is_empty() {
            None
        } else {
            if flags & libc::CLONE_NEWNET == 0 {
                return Err(SpecError::NetUnenforced {
                    missing: vec![Mechanism::NetNs],
                });
            }
            if self.egress.is_none() {
                return Err(SpecError::NoEgress);
            }
            let fwd = forwards(&self.net);
            Some(EgressPlan {
                proxy_port: proxy_port(&fwd),
                forwards: fwd.iter().map(|(_, p)| *p).collect(),
            })
        };
        let landlock = landlock.map(|mut l| {
            // Defence in depth: connect only to the proxy and the forwards.
            l.connect_ports = egress
                .iter()
                .flat_map(|e| std::iter::once(e.proxy_port).chain(e.forwards.iter().copied()))
                .collect();
            l
        });
        // Only root's sandboxes share the server's network namespace, and only where landlock
        // scopes abstract unix sockets to each sandbox.
        let share_netns = root
            && egress.is_none()
            && flags & libc::CLONE_NEWNET != 0
            && landlock.as_ref().is_some_and(|l| l.scopes && l.required);
        let mut rlimits = vec![(rlimit(Resource::RLIMIT_CORE), 0, 0)];
        let r = &profile.rlimits;
        // With a cgroup, memory is its memory.max (an over-limit sandbox is OOM-killed) and the
        // address space keeps the tier's bound; without one, RLIMIT_AS carries the limit.
        // A request only ever tightens its tier's limits (the smaller of the two wins).
        let tighter = |asked: Option<u64>, tier: Option<u64>| match (asked, tier) {
            (Some(a), Some(t)) => Some(a.min(t)),
            (a, t) => a.or(t),
        };
        // With a cgroup, memory is its memory.max (an over-limit sandbox is OOM-killed) and
        // processes its pids.max, and the rlimits keep the tier's bounds; without one, the
        // rlimits carry the request too (RLIMIT_NPROC counts every process of the uid).
        // A cgroup that only places the sandbox (no cgroup mechanism: no memory or pids
        // controller) limits nothing.
        let cgroup = !ctx.cgroup_join.is_empty() && ctx.host.has(Mechanism::Cgroup);
        let mem = if self.kernel.unbounded_address_space {
            None
        } else if cgroup {
            r.address_space
        } else {
            tighter(self.limits.memory_bytes, r.address_space)
        };
        // A sandbox whose address space is left unbounded (a worker's runtime reserves far
        // more than it uses) and that no cgroup holds still has its memory bounded: by
        // RLIMIT_DATA, which counts the private writable mappings (what it allocates), not
        // the inaccessible reservations.
        let data = if self.kernel.unbounded_address_space && !cgroup {
            self.limits.memory_bytes
        } else {
            None
        };
        let nproc = match self.kernel.threads {
            // RLIMIT_NPROC counts every task of the uid host-wide; pids.max counts this one.
            Some(_) if cgroup => None,
            Some(t) => Some(t),
            None if cgroup => r.processes,
            None => tighter(self.limits.pids, r.processes),
        };
        let cpu = if self.kernel.unbounded_cpu {
            self.limits.cpu_secs
        } else {
            tighter(self.limits.cpu_secs, r.cpu_secs)
        };
        for (res, v) in [
            (rlimit(Resource::RLIMIT_AS), mem),
            (rlimit(Resource::RLIMIT_DATA), data),
            (rlimit(Resource::RLIMIT_CPU), cpu),
            (rlimit(Resource::RLIMIT_FSIZE), r.file_size),
            (rlimit(Resource::RLIMIT_NOFILE), r.open_files),
            (rlimit(Resource::RLIMIT_NPROC), nproc),
        ] {
            if let Some(v) = v {
                // CPU: SIGXCPU at the soft limit, SIGKILL a second later.
                let hard = if res == rlimit(Resource::RLIMIT_CPU) {
                    v + 1
                } else {
                    v
                };
                rlimits.push((res, v, hard));
            }
        }
        let mut env: Vec<OsString> = vec![
            format!("PATH={SANDBOX_PATH}").into(),
            "HOME=/".into(),
            "LANG=C.UTF-8".into(),
        ];
        let proxied = |k: &str| PROXY_VARIABLES.contains(&k) || NO_PROXY_VARIABLES.contains(&k);
        for (k, v) in &self.env {
            if egress.is_some() && proxied(k) {
                continue;
            }
            let mut e = format!("{k}=").into_bytes();
            e.extend_from_slice(v.as_encoded_bytes());
            env.push(OsString::from_vec(e));
        }
        if let Some(e) = &egress {
            let url = format!("http://127.0.0.1:{}", e.proxy_port);
            env.extend(PROXY_VARIABLES.iter().map(|v| format!("{v}={url}").into()));
            env.extend(NO_PROXY_VARIABLES.iter().map(|v| format!("{v}=").into()));
        }
        let argv0 = program
            .file_name()
            .map(OsString::from)
            .unwrap_or_else(|| program.clone().into_os_string());
        let mut argv = vec![argv0];
        argv.extend(self.args.iter().cloned());

        let mut degraded: Vec<Mechanism> = missing;
        if !ctx.host.has(Mechanism::Cgroup)
            && (self.limits.memory_bytes.is_some() || self.limits.pids.is_some())
        {
            degraded.push(Mechanism::Cgroup);
        }
        degraded.sort();
        degraded.dedup();
        Ok(Planned {
            plan: Plan {
                namespaces: flags,
                id_map,
                hostname: "loong".into(),
                mounts,
                landlock,
                rlimits,
                cgroup_join: ctx.cgroup_join,
                seccomp: if has(Mechanism::Seccomp) {
                    ctx.seccomp
                } else {
                    Vec::new()
                },
                creds,
                env,
                program,
                argv,
                cwd: PathBuf::from("/"),
                pass_fds: self.pass_fds,
                share_netns,
                egress,
                gate: self.gate.is_some(),
            },
            degraded,
        })
    }

    fn resolve_program(&self) -> Result<PathBuf, SpecError> {
        let shown = self.program.display().to_string();
        // The program's path is bound into the sandbox name by name: a `..` would name one
        // file to the checks here and the kernel's exec, another to the bind.
        if self
            .program
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(SpecError::DotDot {
                flag: "program",
                path: shown,
            });
        }
        let p = if self.program.is_absolute() {
            self.program.clone()
        } else if self.program.components().count() == 1 {
            SANDBOX_PATH
                .split(':')
                .map(|d| Path::new(d).join(&self.program))
                .find(|c| is_executable(c))
                .ok_or_else(|| SpecError::ProgramNotFound(shown.clone()))?
        } else {
            return Err(SpecError::NotAbsolute {
                flag: "program",
                path: shown,
            });
        };
        if !p.exists() {
            return Err(SpecError::ProgramNotFound(shown));
        }
        if !is_executable(&p) {
            return Err(SpecError::NotExecutable(shown));
        }
        Ok(p)
    }

    fn mounts(
        &self,
        tier: Tier,
        profile: &TierProfile,
        program: &Path,
        read: &[PathBuf],
        write: &[PathBuf],
        hidden: &[PathBuf],
    ) -> Vec<MountOp> {
        let mut ops = Vec::new();
        if tier == Tier::Trusted {
            ops.push(MountOp::Bind {
                src: "/".into(),
                dst: "/".into(),
                writable: true,
            });
            for h in hidden {
                if h.exists() {
                    ops.push(MountOp::Tmpfs {
                        dst: h.clone(),
                        size: 4096,
                        mode: 0o700,
                    });
                }
            }
            ops.push(MountOp::Proc {
                dst: "/proc".into(),
            });
            return ops;
        }
        for sp in &profile.system_paths {
            if sp.path == Path::new("/proc") {
                continue; // the sandbox gets its own procfs below; the host's is never bound
            }
            match std::fs::symlink_metadata(&sp.path) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(&sp.path) {
                        ops.push(MountOp::Symlink {
                            target,
                            dst: sp.path.clone(),
                        });
                    }
                }
                Ok(_) => ops.push(MountOp::Bind {
                    src: sp.path.clone(),
                    dst: sp.path.clone(),
                    writable: false,
                }),
                Err(_) => {}
            }
        }
        // loongd's own paths inside a bound system path (the system layout's `/etc/loong`,
        // a home under `/opt`) are masked as in the trusted tier: a file there that its
        // mode lets anyone read is still not in the sandbox.
        for h in hidden {
            let bound = profile.system_paths.iter().any(|s| h.starts_with(&s.path));
            if bound && h.is_dir() {
                ops.push(MountOp::Tmpfs {
                    dst: h.clone(),
                    size: 4096,
                    mode: 0o700,
                });
            }
        }
        ops.push(MountOp::Proc {
            dst: "/proc".into(),
        });
        ops.push(MountOp::Dev { dst: "/dev".into() });
        if profile.tmp_bytes > 0 {
            ops.push(MountOp::Tmpfs {
                dst: "/tmp".into(),
                size: profile.tmp_bytes,
                mode: if profile.tmp_writable { 0o1777 } else { 0o755 },
            });
        }
        let covered = |p: &Path| {
            profile.system_paths.iter().any(|s| p.starts_with(&s.path))
                || read.iter().chain(write).any(|g| p.starts_with(g))
        };
        if !covered(program) {
            ops.push(MountOp::Bind {
                src: program.to_path_buf(),
                dst: program.to_path_buf(),
                writable: false,
            });
        }
        // Shallow grants first, so a deeper grant is mounted on top of its parent's.
        let mut grants: Vec<(&PathBuf, bool)> = read
            .iter()
            .map(|p| (p, false))
            .chain(write.iter().map(|p| (p, true)))
            .collect();
        grants.sort_by_key(|(p, _)| p.components().count());
        for (p, writable) in grants {
            ops.push(MountOp::Bind {
                src: p.clone(),
                dst: p.clone(),
                writable,
            });
        }
        ops
    }

    fn landlock(
        &self,
        profile: &TierProfile,
        mode: LandlockMode,
        program: &Path,
        read: &[PathBuf],
        write: &[PathBuf],
    ) -> LandlockPlan {
        let mut rx: Vec<PathBuf> = profile
            .system_paths
            .iter()
            .filter(|s| s.exec)
            .map(|s| s.path.clone())
            .collect();
        rx.push(program.to_path_buf());
        let mut ro: Vec<PathBuf> = profile
            .system_paths
            .iter()
            .filter(|s| !s.exec)
            .map(|s| s.path.clone())
            .collect();
        ro.extend(read.iter().cloned());
        let mut rw: Vec<PathBuf> = write.to_vec();
        rw.extend(
            [
                "/dev/null",
                "/dev/zero",
                "/dev/full",
                "/dev/random",
                "/dev/urandom",
            ]
            .map(PathBuf::from),
        );
        if profile.tmp_bytes > 0 && profile.tmp_writable {
            rw.push("/tmp".into());
        }
        LandlockPlan {
            rx,
            ro,
            rw,
            restrict_net: profile.landlock_net,
            connect_ports: Vec::new(),
            scopes: profile.landlock_scopes,
            required: mode == LandlockMode::Required,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        host::{Availability, CgroupSupport},
        profile::{Namespaces, RlimitProfile, SeccompMode},
    };

    fn host() -> Host {
        let ok = Availability {
            available: true,
            detail: String::new(),
            fix: None,
        };
        Host {
            landlock_abi: 7,
            mechanisms: Mechanism::ALL
                .iter()
                .map(|m| (*m, ok.clone()))
                .collect::<BTreeMap<_, _>>(),
            cgroup: CgroupSupport::None,
            root: true,
        }
    }

    fn profile() -> TierProfile {
        TierProfile {
            tier: Tier::Restricted,
            namespaces: Namespaces {
                pid: true,
                mount: true,
                net: true,
                ipc: true,
                uts: true,
            },
            landlock: LandlockMode::Required,
            landlock_net: true,
            landlock_scopes: true,
            system_paths: Vec::new(),
            tmp_bytes: 0,
            tmp_writable: false,
            seccomp_mode: SeccompMode::Allowlist,
            syscalls: Vec::new(),
            rlimits: RlimitProfile {
                address_space: Some(1 << 30),
                cpu_secs: Some(60),
                file_size: None,
                open_files: Some(64),
                processes: Some(0),
            },
        }
    }

    fn soft_limit(plan: &Plan, res: Resource) -> Option<u64> {
        // Every rlimit a spec plans is one the helper sets (`helper::confine::set_rlimit`).
        for (r, _, _) in &plan.rlimits {
            assert!(crate::plan::resource(*r).is_some(), "resource {r}");
        }
        plan.rlimits
            .iter()
            .find(|(r, _, _)| *r == rlimit(res))
            .map(|(_, soft, _)| *soft)
    }

    #[test]
    fn rootless_with_subordinate_ids_every_sandbox_gets_a_user_and_pid_namespace_and_nobody_inside()
    {
        let mut h = host();
        h.root = false;
        let ranges = (
            SubRange {
                start: 100_000,
                count: 10,
            },
            SubRange {
                start: 200_000,
                count: 10,
            },
        );
        // A profile with no namespace at all still gets both.
        let mut bare = profile();
        bare.namespaces = Namespaces {
            pid: false,
            mount: false,
            net: false,
            ipc: false,
            uts: false,
        };
        for p in [profile(), bare] {
            let ctx = |sub| PlanContext {
                host: &h,
                profile: &p,
                sandbox_id: DEFAULT_SANDBOX_ID,
                hidden: &[],
                seccomp: Vec::new(),
                cgroup_join: Vec::new(),
                subordinate: sub,
            };
            let spec = SandboxSpec {
                tier: Some(Tier::Restricted),
                program: "/bin/true".into(),
                ..SandboxSpec::default()
            };
            let plan = spec.clone().plan(ctx(Some(ranges))).expect("plans").plan;
            assert_ne!(plan.namespaces & libc::CLONE_NEWUSER, 0);
            assert_ne!(plan.namespaces & libc::CLONE_NEWPID, 0);
            assert_eq!(plan.creds, Some((INSIDE_SANDBOX_ID, INSIDE_SANDBOX_ID)));
            let m = plan.id_map.expect("an id map");
            assert_eq!(
                (m.inside_uid, m.inside_gid, m.subordinate),
                (0, 0, Some(ranges))
            );
            // Control: without ranges (the degraded mode), the sandbox keeps loongd's uid.
            let plan = spec.plan(ctx(None)).expect("plans").plan;
            assert_eq!(plan.creds, None);
            assert!(plan.id_map.is_none_or(|m| m.subordinate.is_none()));
        }
        // Without user or pid namespaces the mode cannot hold: refused, even degraded.
        for missing in [Mechanism::UserNs, Mechanism::PidNs] {
            let mut h = h.clone();
            h.mechanisms.insert(
                missing,
                Availability {
                    available: false,
                    detail: String::new(),
                    fix: None,
                },
            );
            let p = profile();
            let spec = SandboxSpec {
                tier: Some(Tier::Restricted),
                program: "/bin/true".into(),
                allow_degraded: true,
                ..SandboxSpec::default()
            };
            let err = spec
                .plan(PlanContext {
                    host: &h,
                    profile: &p,
                    sandbox_id: DEFAULT_SANDBOX_ID,
                    hidden: &[],
                    seccomp: Vec::new(),
                    cgroup_join: Vec::new(),
                    subordinate: Some(ranges),
                })
                .expect_err("refused");
            assert!(
                matches!(&err, SpecError::Unavailable { missing: m, .. } if m == &vec![missing]),
                "{err:?}"
            );
        }
    }

    #[test]
    fn only_a_package_may_be_seen_inside_loongd_s_home_and_never_its_state() {
        let (h, p) = (host(), profile());
        let home = tempfile::tempdir().expect("home");
        let home = home.path().canonicalize().expect("real path");
        let package = home.join("plugins/lines");
        // loongd's state placed under the plugins directory (a run directory, say).
        let state = home.join("plugins/.run");
        std::fs::create_dir_all(&package).expect("package");
        std::fs::create_dir_all(&state).expect("state");
        let hidden = [home.clone()];
        let ctx = || PlanContext {
            host: &h,
            profile: &p,
            sandbox_id: DEFAULT_SANDBOX_ID,
            hidden: &hidden,
            seccomp: Vec::new(),
            cgroup_join: Vec::new(),
            subordinate: None,
        };
        let base = SandboxSpec {
            tier: Some(Tier::Restricted),
            program: "/bin/true".into(),
            ..SandboxSpec::default()
        };
        // The package is readable inside, although it is under the hidden home.
        let with_package = SandboxSpec {
            package: Some(package.clone()),
            ..base.clone()
        };
        let plan = with_package.plan(ctx()).expect("a package plans").plan;
        let landlock = plan.landlock.expect("landlock is planned");
        assert!(landlock.ro.contains(&package), "{:?}", landlock.ro);
        assert!(!landlock.rw.contains(&package));
        // The same path as an ordinary grant is refused: only loongd sets a package.
        let as_grant = SandboxSpec {
            read: vec![package.clone()],
            ..base.clone()
        };
        assert!(matches!(as_grant.plan(ctx()), Err(SpecError::Conflict(_))));
        // A package that holds loongd's state is refused: the home itself, or a directory
        // with a hidden path inside it.
        for wide in [home.clone(), home.join("plugins")] {
            let hidden_inside = [home.clone(), state.clone()];
            let ctx = PlanContext {
                hidden: if wide == home {
                    &hidden
                } else {
                    &hidden_inside
                },
                ..ctx()
            };
            let spec = SandboxSpec {
                package: Some(wide.clone()),
                ..base.clone()
            };
            let err = spec.plan(ctx).expect_err("refused");
            assert!(
                matches!(err, SpecError::Conflict(_)),
                "{}: {err}",
                wide.display()
            );
        }
    }

    /// loongd's paths inside a bound system path are masked in a confined tier; a hidden
    /// path outside every bound one gets nothing (it is not in the root at all).
    #[test]
    fn loongd_s_paths_under_a_bound_system_path_are_masked() {
        let h = host();
        let sys = tempfile::tempdir().expect("system dir");
        let sys = sys.path().canonicalize().expect("real path");
        let config = sys.join("loong");
        std::fs::create_dir_all(&config).expect("config dir");
        let elsewhere = tempfile::tempdir().expect("home");
        let elsewhere = elsewhere.path().canonicalize().expect("real path");
        let mut p = profile();
        p.system_paths = vec![crate::profile::SystemPath {
            path: sys.clone(),
            exec: false,
        }];
        let hidden = [config.clone(), elsewhere.clone()];
        let ctx = PlanContext {
            host: &h,
            profile: &p,
            sandbox_id: DEFAULT_SANDBOX_ID,
            hidden: &hidden,
            seccomp: Vec::new(),
            cgroup_join: Vec::new(),
            subordinate: None,
        };
        let spec = SandboxSpec {
            tier: Some(Tier::Restricted),
            program: "/bin/true".into(),
            ..SandboxSpec::default()
        };
        let mounts = spec.plan(ctx).expect("plans").plan.mounts;
        let bound = mounts
            .iter()
            .position(|m| matches!(m, MountOp::Bind { dst, writable: false, .. } if *dst == sys));
        let masked = mounts
            .iter()
            .position(|m| matches!(m, MountOp::Tmpfs { dst, .. } if *dst == config));
        assert!(bound.is_some(), "the system path is bound: {mounts:?}");
        assert!(
            masked > bound,
            "loongd's path is masked over it: {mounts:?}"
        );
        assert!(
            !mounts
                .iter()
                .any(|m| matches!(m, MountOp::Tmpfs { dst, .. } if *dst == elsewhere)),
            "{mounts:?}"
        );
    }

    #[test]
    fn a_request_never_widens_its_tier() {
        let (h, p) = (host(), profile());
        let ctx = || PlanContext {
            host: &h,
            profile: &p,
            sandbox_id: DEFAULT_SANDBOX_ID,
            hidden: &[],
            seccomp: Vec::new(),
            cgroup_join: Vec::new(),
            subordinate: None,
        };
        let spec = |limits| SandboxSpec {
            tier: Some(Tier::Restricted),
            program: "/bin/true".into(),
            limits,
            ..SandboxSpec::default()
        };
        let wide = spec(Limits {
            memory_bytes: Some(8 << 30),
            pids: Some(16),
            timeout: None,
            cpu_secs: Some(600),
        });
        let plan = wide.plan(ctx()).expect("plans").plan;
        assert_eq!(soft_limit(&plan, Resource::RLIMIT_NPROC), Some(0));
        assert_eq!(soft_limit(&plan, Resource::RLIMIT_AS), Some(1 << 30));
        assert_eq!(soft_limit(&plan, Resource::RLIMIT_CPU), Some(60));
        // Tighter requests do apply.
        let tight = spec(Limits {
            memory_bytes: Some(64 << 20),
            pids: None,
            timeout: None,
            cpu_secs: Some(2),
        });
        let plan = tight.plan(ctx()).expect("plans").plan;
        assert_eq!(soft_limit(&plan, Resource::RLIMIT_AS), Some(64 << 20));
        assert_eq!(soft_limit(&plan, Resource::RLIMIT_CPU), Some(2));
        assert_eq!(soft_limit(&plan, Resource::RLIMIT_CORE), Some(0));
    }

    /// A worker's address space is unbounded (its runtime reserves gigabytes); with no cgroup
    /// to hold its memory, RLIMIT_DATA bounds what it allocates. Control: with a cgroup
    /// joined, the cgroup's memory.max does, and no RLIMIT_DATA is set.
    #[test]
    fn an_unbounded_address_space_without_a_cgroup_is_bounded_by_rlimit_data() {
        let (mut h, p) = (host(), profile());
        h.mechanisms
            .entry(Mechanism::Cgroup)
            .and_modify(|a| a.available = false);
        let spec = SandboxSpec {
            tier: Some(Tier::Restricted),
            program: "/bin/true".into(),
            limits: Limits {
                memory_bytes: Some(768 << 20),
                ..Limits::default()
            },
            kernel: KernelOverrides {
                unbounded_address_space: true,
                ..KernelOverrides::default()
            },
            ..SandboxSpec::default()
        };
        let plan = |h: &Host, join: Vec<PathBuf>| {
            spec.plan(PlanContext {
                host: h,
                profile: &p,
                sandbox_id: DEFAULT_SANDBOX_ID,
                hidden: &[],
                seccomp: Vec::new(),
                cgroup_join: join,
                subordinate: None,
            })
            .expect("plans")
            .plan
        };
        let bare = plan(&h, Vec::new());
        assert_eq!(soft_limit(&bare, Resource::RLIMIT_AS), None);
        assert_eq!(soft_limit(&bare, Resource::RLIMIT_DATA), Some(768 << 20));
        let with_cgroup = plan(&host(), vec!["/sys/fs/cgroup/x/cgroup.procs".into()]);
        assert_eq!(soft_limit(&with_cgroup, Resource::RLIMIT_DATA), None);
        assert_eq!(soft_limit(&with_cgroup, Resource::RLIMIT_AS), None);
    }

    #[test]
    fn a_network_grant_is_refused_where_nothing_enforces_it() {
        let balanced = TierProfile {
            tier: Tier::Balanced,
            seccomp_mode: SeccompMode::Denylist,
            ..profile()
        };
        let trusted = TierProfile {
            tier: Tier::Trusted,
            namespaces: Namespaces {
                net: false,
                ..balanced.namespaces
            },
            landlock: LandlockMode::Off,
            landlock_net: false,
            ..balanced.clone()
        };
        let without = |m: Mechanism| {
            let mut h = host();
            h.mechanisms.entry(m).and_modify(|a| a.available = false);
            h
        };
        let spec = |tier, net: &str| SandboxSpec {
            tier: Some(tier),
            program: "/bin/true".into(),
            net: net
                .split_whitespace()
                .map(|g| g.parse().expect("grant"))
                .collect(),
            allow_degraded: true,
            ..SandboxSpec::default()
        };
        let plan = |h: &Host, p: &TierProfile, s: SandboxSpec| {
            s.plan(PlanContext {
                host: h,
                profile: p,
                sandbox_id: DEFAULT_SANDBOX_ID,
                hidden: &[],
                seccomp: Vec::new(),
                cgroup_join: Vec::new(),
                subordinate: None,
            })
        };
        let egress = || {
            let (a, _) = std::os::unix::net::UnixDatagram::pair().expect("socketpair");
            Some(Arc::new(OwnedFd::from(a)))
        };
        let with_egress = |tier, net: &str| SandboxSpec {
            egress: egress(),
            ..spec(tier, net)
        };
        // Control: a balanced grant plans in the sandbox's own network namespace, with the
        // proxy and one raw forward, landlock's connect rule for exactly those two ports, and
        // the proxy variables (a request's own value for one is replaced).
        let mut asked = with_egress(Tier::Balanced, "127.0.0.1:8080 a.test:443 b.test:443");
        asked.env = vec![("HTTPS_PROXY".into(), "http://elsewhere:1".into())];
        let ok = plan(&host(), &balanced, asked)
            .expect("a balanced grant plans")
            .plan;
        assert_ne!(ok.namespaces & libc::CLONE_NEWNET, 0);
        assert!(!ok.share_netns);
        let e = ok.egress.as_ref().expect("an egress plan");
        // Two names on one port are served by the proxy only.
        assert_eq!(
            (e.proxy_port, e.forwards.as_slice()),
            (PROXY_PORT, &[8080][..])
        );
        let l = ok.landlock.as_ref().expect("landlock is planned");
        assert!(
            l.restrict_net && l.connect_ports == [PROXY_PORT, 8080],
            "{l:?}"
        );
        let env: Vec<String> = ok.env.iter().map(|e| e.to_string_lossy().into()).collect();
        let proxy = format!("HTTPS_PROXY=http://127.0.0.1:{PROXY_PORT}");
        assert!(env.contains(&proxy), "{env:?}");
        assert!(env.contains(&"NO_PROXY=".to_string()), "{env:?}");
        assert!(!env.iter().any(|e| e.contains("elsewhere")), "{env:?}");
        // A forward on the proxy's port moves the proxy.
        let moved = plan(
            &host(),
            &balanced,
            with_egress(Tier::Balanced, "127.0.0.1:3128"),
        )
        .expect("plans")
        .plan;
        let e = moved.egress.expect("an egress plan");
        assert_eq!(
            (e.proxy_port, e.forwards),
            (PROXY_PORT + 1, vec![PROXY_PORT])
        );
        // No grant: the same namespace, no egress.
        let none = plan(&host(), &balanced, with_egress(Tier::Balanced, ""))
            .expect("plans")
            .plan;
        assert!(none.egress.is_none() && none.namespaces & libc::CLONE_NEWNET != 0);
        // A grant without the broker's socket is refused.
        let err =
            plan(&host(), &balanced, spec(Tier::Balanced, "127.0.0.1:8080")).expect_err("refused");
        assert_eq!(err, SpecError::NoEgress);
        // Degraded mode may run without landlock or seccomp (the namespace is the boundary),
        // never without a network namespace under a grant.
        for m in [Mechanism::Landlock, Mechanism::Seccomp] {
            plan(
                &without(m),
                &balanced,
                with_egress(Tier::Balanced, "127.0.0.1:8080"),
            )
            .unwrap_or_else(|e| panic!("degraded without {m:?} plans: {e}"));
        }
        // Port `*` (and a suffix) is served by the proxy alone, which decides each connection:
        // no forward, and landlock's connect rule only for the proxy's port.
        let any = plan(
            &host(),
            &balanced,
            with_egress(Tier::Balanced, "localhost:* *.example.test:443"),
        )
        .expect("port * plans")
        .plan;
        let e = any.egress.as_ref().expect("an egress plan");
        assert!(e.forwards.is_empty(), "{e:?}");
        let l = any.landlock.as_ref().expect("landlock is planned");
        assert_eq!(l.connect_ports, [PROXY_PORT]);
        let h = without(Mechanism::NetNs);
        plan(&h, &balanced, with_egress(Tier::Balanced, "")).expect("degraded, no grant");
        let err = plan(&h, &balanced, with_egress(Tier::Balanced, "127.0.0.1:8080"))
            .expect_err("refused");
        assert!(
            matches!(&err, SpecError::NetUnenforced { missing } if *missing == [Mechanism::NetNs]),
            "{err}"
        );
        // The trusted tier keeps the host's network: a grant there would narrow nothing.
        plan(&host(), &trusted, spec(Tier::Trusted, "")).expect("trusted plans");
        let err = plan(
            &host(),
            &trusted,
            with_egress(Tier::Trusted, "127.0.0.1:8080"),
        )
        .expect_err("refused");
        assert!(
            err.to_string()
                .contains("the trusted tier has the host's whole network"),
            "{err}"
        );
    }
}
