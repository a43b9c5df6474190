//! What this host can enforce: the landlock ABI, seccomp, each namespace kind, cgroups,
//! `no_new_privs`, pidfd. `loongctl doctor` shows it; spawning consults it to fail closed.
//!
//! Namespace support is tested by really unsharing, in a child of the spawn helper
//! (`loong-spawn --probe`), never in loongd's own multi-threaded process.
//!
//! `LOONG_SANDBOX_DISABLE=landlock,userns,…` makes the probe report the named mechanisms
//! missing. It can only take mechanisms away, never add one; tests use it to show that a
//! missing mechanism is refused.

use std::{collections::BTreeMap, path::PathBuf};

use crate::{profile::Tier, sys};

/// The environment variable that hides mechanisms from the probe.
pub const DISABLE_ENV: &str = "LOONG_SANDBOX_DISABLE";

/// One confinement mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mechanism {
    Landlock,
    Seccomp,
    NoNewPrivs,
    UserNs,
    PidNs,
    MountNs,
    NetNs,
    IpcNs,
    UtsNs,
    Cgroup,
    Pidfd,
    Procfs,
}

impl Mechanism {
    /// Every mechanism, in report order.
    pub const ALL: [Mechanism; 12] = [
        Mechanism::Landlock,
        Mechanism::Seccomp,
        Mechanism::NoNewPrivs,
        Mechanism::UserNs,
        Mechanism::PidNs,
        Mechanism::MountNs,
        Mechanism::NetNs,
        Mechanism::IpcNs,
        Mechanism::UtsNs,
        Mechanism::Cgroup,
        Mechanism::Pidfd,
        Mechanism::Procfs,
    ];

    /// The name used in reports, errors and `LOONG_SANDBOX_DISABLE`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Landlock => "landlock",
            Mechanism::Seccomp => "seccomp",
            Mechanism::NoNewPrivs => "no_new_privs",
            Mechanism::UserNs => "userns",
            Mechanism::PidNs => "pidns",
            Mechanism::MountNs => "mountns",
            Mechanism::NetNs => "netns",
            Mechanism::IpcNs => "ipcns",
            Mechanism::UtsNs => "utsns",
            Mechanism::Cgroup => "cgroup",
            Mechanism::Pidfd => "pidfd",
            Mechanism::Procfs => "procfs",
        }
    }

    /// The `unshare` flag that tests it, for namespaces.
    pub fn clone_flag(self) -> Option<i32> {
        Some(match self {
            Mechanism::UserNs => libc::CLONE_NEWUSER,
            Mechanism::PidNs => libc::CLONE_NEWPID,
            Mechanism::MountNs => libc::CLONE_NEWNS,
            Mechanism::NetNs => libc::CLONE_NEWNET,
            Mechanism::IpcNs => libc::CLONE_NEWIPC,
            Mechanism::UtsNs => libc::CLONE_NEWUTS,
            _ => return None,
        })
    }

    /// The namespace kinds, in probe order.
    pub const NAMESPACES: [Mechanism; 6] = [
        Mechanism::UserNs,
        Mechanism::PidNs,
        Mechanism::MountNs,
        Mechanism::NetNs,
        Mechanism::IpcNs,
        Mechanism::UtsNs,
    ];

    fn from_name(s: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// Whether a mechanism works here, with detail and, when it does not, the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    pub available: bool,
    pub detail: String,
    pub fix: Option<String>,
}

/// Where cgroup limits can be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupSupport {
    /// A writable cgroup v2 directory with the memory and pids controllers delegated.
    V2 { dir: PathBuf },
    /// cgroup v1 hierarchies for memory and pids (and cpu when present), writable by us.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: Option<PathBuf>,
    },
    /// A writable (delegated) cgroup v2 directory without the memory or pids controller
    /// (`missing` names them): each sandbox is still placed in a child cgroup of its own and
    /// killed through its `cgroup.kill`, but memory and process limits are rlimits.
    V2Placement {
        dir: PathBuf,
        missing: Vec<&'static str>,
    },
    /// None of these: limits fall back to rlimits.
    None,
}

/// The cgroup v2 controllers the per-sandbox limits are written to.
pub const LIMIT_CONTROLLERS: [&str; 2] = ["memory", "pids"];

/// The host report.
#[derive(Debug, Clone)]
pub struct Host {
    pub landlock_abi: i32,
    pub mechanisms: BTreeMap<Mechanism, Availability>,
    pub cgroup: CgroupSupport,
    pub root: bool,
}

/// The landlock ABI the tiers need for their required rules (TCP rules: 4; scopes: 6).
pub const REQUIRED_LANDLOCK_ABI: i32 = 6;

impl Host {
    /// Builds the report from namespace results (from `loong-spawn --probe`) and local checks.
    pub fn assemble(namespaces: &BTreeMap<Mechanism, Result<(), i32>>) -> Host {
        let disabled: Vec<Mechanism> = std::env::var(DISABLE_ENV)
            .unwrap_or_default()
            .split(',')
            .filter_map(|s| Mechanism::from_name(s.trim()))
            .collect();
        let root = nix::unistd::Uid::effective().is_root();
        let mut m = BTreeMap::new();
        let ok = |detail: String| Availability {
            available: true,
            detail,
            fix: None,
        };
        let missing = |detail: String, fix: &str| Availability {
            available: false,
            detail,
            fix: Some(fix.to_string()),
        };

        // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) returns the ABI.
        let abi = sys::raw_syscall(libc::SYS_landlock_create_ruleset, [0, 0, 1, 0, 0, 0]);
        let landlock_abi = i32::try_from(abi).unwrap_or(0).max(0);
        m.insert(
            Mechanism::Landlock,
            if landlock_abi >= REQUIRED_LANDLOCK_ABI {
                ok(format!("ABI {landlock_abi} (tiers pin ABI {REQUIRED_LANDLOCK_ABI})"))
            } else if landlock_abi > 0 {
                missing(format!("ABI {landlock_abi}, below the {REQUIRED_LANDLOCK_ABI} the tiers need (TCP rules, scopes)"), "run a kernel ≥ 6.12 with landlock in the lsm= list")
            } else {
                missing(format!("not available (errno {})", -abi), "enable CONFIG_SECURITY_LANDLOCK and add landlock to the lsm= boot parameter")
            },
        );
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        m.insert(
            Mechanism::Seccomp,
            if status.contains("Seccomp_filters:") || status.contains("Seccomp:") {
                ok("seccomp filter mode".into())
            } else {
                missing(
                    "no Seccomp field in /proc/self/status".into(),
                    "enable CONFIG_SECCOMP_FILTER",
                )
            },
        );
        m.insert(
            Mechanism::NoNewPrivs,
            if status.contains("NoNewPrivs:") {
                ok("prctl(PR_SET_NO_NEW_PRIVS)".into())
            } else {
                missing("not reported".into(), "a kernel ≥ 3.5")
            },
        );
        for mech in Mechanism::NAMESPACES {
            let a = match namespaces.get(&mech) {
                Some(Ok(())) => ok("unshare works".into()),
                Some(Err(e)) => missing(
                    format!("unshare failed: {}", nix::Error::from_raw(*e)),
                    if mech == Mechanism::UserNs {
                        "raise user.max_user_namespaces above 0 (and kernel.unprivileged_userns_clone=1 where it exists), or run loongd as root"
                    } else {
                        "run loongd as root or with user namespaces available"
                    },
                ),
                None => missing("not probed".into(), "install loong-spawn next to loongd"),
            };
            m.insert(mech, a);
        }
        m.insert(
            Mechanism::Procfs,
            match namespaces.get(&Mechanism::Procfs) {
                Some(Ok(())) => ok("a new /proc mounts in a new pid namespace".into()),
                Some(Err(e)) => missing(
                    format!(
                        "a new /proc in a new pid namespace is refused: {}",
                        nix::Error::from_raw(*e)
                    ),
                    "a mount over part of /proc (systemd's ProtectKernelTunables=, ProtectKernelLogs=) is locked in a sandbox's user namespace: add ProcSubset=pid, as the rootless unit does, or drop those directives (docs/SECURITY.md, \"Rootless mode\")",
                ),
                None => missing("not probed".into(), "install loong-spawn next to loongd"),
            },
        );
        let cgroup = detect_cgroup(root);
        m.insert(
            Mechanism::Cgroup,
            match &cgroup {
                CgroupSupport::V2 { dir } => ok(format!("cgroup v2 delegated at {}", dir.display())),
                CgroupSupport::V1 { memory, pids, .. } => ok(format!("cgroup v1 ({}, {})", memory.display(), pids.display())),
                CgroupSupport::V2Placement { dir, missing: lacks } => missing(
                    format!(
                        "cgroup v2 delegated at {} without the {} controller{}: each sandbox gets a child cgroup there (killed through cgroup.kill), but --memory and --pids are rlimits (RLIMIT_AS, RLIMIT_NPROC), not cgroup limits",
                        dir.display(),
                        lacks.join(" and "),
                        if lacks.len() > 1 { "s" } else { "" }
                    ),
                    "enable the controllers in the parent cgroup's cgroup.subtree_control before delegating (systemd: a host whose cgroup v2 hierarchy has memory and pids, with Delegate=yes)",
                ),
                CgroupSupport::None => missing(
                    "no writable cgroup with memory and pids controllers".into(),
                    "delegate a cgroup v2 subtree to loongd (systemd Delegate=yes) or run loongd as root; limits fall back to rlimits",
                ),
            },
        );
        let pidfd = sys::pidfd_open(std::process::id() as i32);
        m.insert(
            Mechanism::Pidfd,
            match pidfd {
                Ok(_) => ok("pidfd_open".into()),
                Err(e) => missing(format!("pidfd_open failed: {e}"), "a kernel ≥ 5.3"),
            },
        );
        for &d in &disabled {
            m.insert(
                d,
                missing(
                    format!("disabled by {DISABLE_ENV}"),
                    "unset LOONG_SANDBOX_DISABLE",
                ),
            );
        }
        // A cgroup that places sandboxes but limits nothing stays, unless disabled.
        let placement = matches!(cgroup, CgroupSupport::V2Placement { .. })
            && !disabled.contains(&Mechanism::Cgroup);
        let cgroup = if m.get(&Mechanism::Cgroup).is_some_and(|a| a.available) || placement {
            cgroup
        } else {
            CgroupSupport::None
        };
        Host {
            landlock_abi,
            mechanisms: m,
            cgroup,
            root,
        }
    }

    /// Whether `mech` is available.
    pub fn has(&self, mech: Mechanism) -> bool {
        self.mechanisms.get(&mech).is_some_and(|a| a.available)
    }

    /// The mechanisms `tier` needs that this host lacks.
    pub fn missing_for(&self, tier: Tier) -> Vec<Mechanism> {
        required(tier, self.root)
            .into_iter()
            .filter(|m| !self.has(*m))
            .collect()
    }
}

/// What each tier cannot do without. The user namespace is needed only when loongd is not
/// root (root builds namespaces directly and drops to an unprivileged uid).
pub fn required(tier: Tier, root: bool) -> Vec<Mechanism> {
    use Mechanism::*;
    // Every tier mounts a /proc of its own pid namespace.
    let mut v = match tier {
        Tier::Restricted | Tier::Balanced => vec![
            Landlock, Seccomp, NoNewPrivs, PidNs, MountNs, NetNs, IpcNs, UtsNs, Procfs,
        ],
        Tier::Trusted => vec![Seccomp, NoNewPrivs, PidNs, MountNs, Procfs],
    };
    if !root {
        v.push(UserNs);
    }
    v
}

fn own_cgroup(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        (ctrls.split(',').any(|c| c == controller) || (controller.is_empty() && ctrls.is_empty()))
            .then(|| path.to_string())
    })
}

fn writable_dir(p: &std::path::Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok()
}

fn detect_cgroup(root: bool) -> CgroupSupport {
    // v2: our own cgroup, writable, with memory and pids available to children; failing
    // those controllers, a writable one places sandboxes (after root's v1, which limits).
    let mut placement = None;
    for mount in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let base = PathBuf::from(mount);
        if !base.join("cgroup.controllers").exists() {
            continue;
        }
        if let Some(path) = own_cgroup("") {
            let dir = base.join(path.trim_start_matches('/'));
            if !writable_dir(&dir) || !dir.join("cgroup.procs").exists() {
                continue;
            }
            let ctrls =
                std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
            let missing: Vec<&'static str> = LIMIT_CONTROLLERS
                .into_iter()
                .filter(|c| !ctrls.split_whitespace().any(|e| e == *c))
                .collect();
            if missing.is_empty() {
                return CgroupSupport::V2 { dir };
            }
            placement.get_or_insert(CgroupSupport::V2Placement { dir, missing });
        }
    }
    if !root {
        return placement.unwrap_or(CgroupSupport::None);
    }
    let v1 = |ctrl: &str| {
        let own = own_cgroup(ctrl)?;
        let dir = PathBuf::from("/sys/fs/cgroup")
            .join(ctrl)
            .join(own.trim_start_matches('/'));
        writable_dir(&dir).then_some(dir)
    };
    match (v1("memory"), v1("pids")) {
        (Some(memory), Some(pids)) => CgroupSupport::V1 {
            memory,
            pids,
            cpu: v1("cpu"),
        },
        _ => placement.unwrap_or(CgroupSupport::None),
    }
}

/// `loong-spawn --probe`: tries each namespace in a fresh child and prints `NAME OK` or
/// `NAME ERRNO` lines.
pub fn probe_namespaces_main() -> ! {
    let mut out = String::new();
    for mech in Mechanism::NAMESPACES {
        // Unprivileged, namespaces come with a user namespace (as the plans use them).
        let with_user = if nix::unistd::Uid::effective().is_root() {
            0
        } else {
            libc::CLONE_NEWUSER
        };
        let flag = mech.clone_flag().unwrap_or(0) | with_user;
        let result = match sys::fork() {
            Ok(sys::Forked::Child) => {
                let code =
                    match nix::sched::unshare(nix::sched::CloneFlags::from_bits_truncate(flag)) {
                        Ok(()) => 0,
                        Err(e) => e as i32,
                    };
                sys::exit_now(code)
            }
            Ok(sys::Forked::Parent(pid)) => {
                match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
                    Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => "OK".to_string(),
                    Ok(nix::sys::wait::WaitStatus::Exited(_, e)) => e.to_string(),
                    _ => libc::EINVAL.to_string(),
                }
            }
            Err(e) => e.raw_os_error().unwrap_or(libc::EINVAL).to_string(),
        };
        out.push_str(&format!("{} {result}\n", mech.name()));
    }
    out.push_str(&format!(
        "{} {}\n",
        Mechanism::Procfs.name(),
        probe_procfs()
    ));
    print!("{out}");
    sys::exit_now(0)
}

/// Whether a sandbox could mount its `/proc`: in a child, new mount and pid namespaces (and a
/// user namespace when not root, as the plans make them), then, in the pid namespace's first
/// process, a private copy of the mounts and `proc` mounted over `/proc` there. The kernel
/// refuses it to a user namespace when no `/proc` instance is fully visible (a locked mount
/// covers part of each). `OK` or the errno.
fn probe_procfs() -> String {
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID;
    if !nix::unistd::Uid::effective().is_root() {
        flags |= libc::CLONE_NEWUSER;
    }
    let code_of = |pid: i32| match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
        _ => libc::EINVAL,
    };
    let code = match sys::fork() {
        Ok(sys::Forked::Child) => {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::from_bits_truncate(flags)) {
                sys::exit_now(e as i32);
            }
            let code = match sys::fork() {
                Ok(sys::Forked::Child) => {
                    use nix::mount::{mount, MsFlags};
                    let private = mount(
                        None::<&str>,
                        "/",
                        None::<&str>,
                        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                        None::<&str>,
                    );
                    let proc = private.and_then(|()| {
                        mount(
                            Some("proc"),
                            "/proc",
                            Some("proc"),
                            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                            None::<&str>,
                        )
                    });
                    sys::exit_now(proc.map_or_else(|e| e as i32, |()| 0))
                }
                Ok(sys::Forked::Parent(pid)) => code_of(pid),
                Err(e) => e.raw_os_error().unwrap_or(libc::EINVAL),
            };
            sys::exit_now(code)
        }
        Ok(sys::Forked::Parent(pid)) => code_of(pid),
        Err(e) => e.raw_os_error().unwrap_or(libc::EINVAL),
    };
    if code == 0 {
        "OK".into()
    } else {
        code.to_string()
    }
}

/// Parses `loong-spawn --probe` output.
pub fn parse_probe(text: &str) -> BTreeMap<Mechanism, Result<(), i32>> {
    text.lines()
        .filter_map(|l| {
            let (name, res) = l.split_once(' ')?;
            let m = Mechanism::from_name(name)?;
            Some((
                m,
                if res == "OK" {
                    Ok(())
                } else {
                    Err(res.parse().unwrap_or(libc::EINVAL))
                },
            ))
        })
        .collect()
}
