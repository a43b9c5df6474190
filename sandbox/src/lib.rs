//! `loong-sandbox`: turns a plain [`SandboxSpec`] into a running, confined child process.
//!
//! loongd owns a [`Spawner`]; each spawn starts the single-threaded `loong-spawn` helper,
//! which executes a fully resolved plan: namespaces, a minimal root, rlimits, an unprivileged
//! uid, `no_new_privs`, landlock, and seccomp last. This crate knows nothing about the IPC
//! protocol, tokio or configuration files; tier profiles arrive as plain data.
//!
//! `unsafe` lives in [`sys`] only.

pub mod cgroup;
pub mod egress;
pub mod helper;
pub mod host;
pub mod net_grant;
pub mod openat;
pub mod peer;
pub mod plan;
pub mod profile;
pub mod seccomp;
pub mod spawn;
pub mod spec;
pub mod subids;
mod sys;
pub mod syscalls;
pub mod worker;

pub use host::{Host, Mechanism};
pub use net_grant::{HostPattern, PortPattern};
pub use profile::{
    LandlockMode, Namespaces, RlimitProfile, SeccompMode, SyscallEntry, SystemPath, Tier,
    TierProfile, UnknownTier,
};
pub use spawn::{
    Child, ExitReport, Killer, Pending, SpawnError, Spawner, SpawnerConfig, StdioSpec,
};
pub use spec::{KernelOverrides, Limits, NetGrant, NetGrantError, SandboxSpec, SpecError};
