//! Tier profiles as plain data: what each tier confines, independent of where the data came
//! from (the `loong-profiles` crate parses the reviewed files in `policy-profiles/`).

use std::{fmt, path::PathBuf, str::FromStr};

/// The three tiers, weakest confinement last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// WASM plugins and untrusted code: seccomp allowlist, no network, nothing on disk but
    /// what is granted.
    Restricted,
    /// Foreign programs (process_stdio, MCP servers): seccomp denylist, system dirs
    /// read-only, network only as granted.
    Balanced,
    /// Programs the operator trusts: pid and mount namespaces, a short denylist.
    Trusted,
}

impl Tier {
    /// Every tier.
    pub const ALL: [Tier; 3] = [Tier::Restricted, Tier::Balanced, Tier::Trusted];

    /// The tier's name as written in profiles and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Restricted => "restricted",
            Tier::Balanced => "balanced",
            Tier::Trusted => "trusted",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tier name that is none of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier `{0}`: expected restricted, balanced or trusted")]
pub struct UnknownTier(pub String);

impl FromStr for Tier {
    type Err = UnknownTier;
    fn from_str(s: &str) -> Result<Tier, UnknownTier> {
        match s {
            "restricted" => Ok(Tier::Restricted),
            "balanced" => Ok(Tier::Balanced),
            "trusted" => Ok(Tier::Trusted),
            other => Err(UnknownTier(other.to_string())),
        }
    }
}

/// How a tier's seccomp filter treats syscalls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompMode {
    /// Only the listed syscalls run; anything else kills the process (SIGSYS).
    Allowlist,
    /// The listed syscalls fail with EPERM; everything else runs.
    Denylist,
}

/// One syscall of a profile, with the reason it is listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallEntry {
    /// Its name (x86_64).
    pub name: String,
    /// Its number.
    pub nr: i64,
    /// Why it is on the list (required in the files; kept for `policy check`).
    pub why: String,
}

/// The rlimits a tier applies (`None`: left as inherited). `CORE` is always 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RlimitProfile {
    /// Address space bytes (`RLIMIT_AS`); never used where wasmtime runs.
    pub address_space: Option<u64>,
    /// CPU seconds (`RLIMIT_CPU`; SIGXCPU at the soft limit, SIGKILL one second later).
    pub cpu_secs: Option<u64>,
    /// Largest file written (`RLIMIT_FSIZE`).
    pub file_size: Option<u64>,
    /// Open descriptors (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// Processes of the sandbox's uid (`RLIMIT_NPROC`).
    pub processes: Option<u64>,
}

/// Which namespaces a tier unshares. The user namespace is added when loongd is not root.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Namespaces {
    pub pid: bool,
    pub mount: bool,
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
}

/// How much landlock a tier requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockMode {
    /// Full enforcement at the pinned ABI, or refuse to spawn.
    Required,
    /// Whatever the kernel supports.
    BestEffort,
    /// Not applied.
    Off,
}

/// A host path bound read-only into the sandbox (when it exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPath {
    pub path: PathBuf,
    /// Executables and libraries may be run from it.
    pub exec: bool,
}

/// Everything a tier applies before the spec's own grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierProfile {
    pub tier: Tier,
    pub namespaces: Namespaces,
    pub landlock: LandlockMode,
    /// Landlock TCP rules (bind and connect denied except granted ports).
    pub landlock_net: bool,
    /// Landlock scopes (abstract unix sockets, signals).
    pub landlock_scopes: bool,
    /// Read-only system paths in the sandbox's root.
    pub system_paths: Vec<SystemPath>,
    /// Size of the private `/tmp` (bytes); 0 for none.
    pub tmp_bytes: u64,
    /// The private `/tmp` is writable.
    pub tmp_writable: bool,
    pub seccomp_mode: SeccompMode,
    pub syscalls: Vec<SyscallEntry>,
    pub rlimits: RlimitProfile,
}
