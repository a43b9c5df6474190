//! The plan: everything the spawn helper does, fully resolved by the parent, and its wire
//! encoding on the helper's fd 3.
//!
//! The helper decides nothing; it executes a plan. The encoding is a small, bounded
//! length-prefixed format written by hand, so the privileged launch path links no serde.

use std::{
    ffi::OsString,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::PathBuf,
};

use seccompiler::sock_filter;

use crate::subids::SubRange;

/// A resource's number in a plan's rlimits: the kernel's, which libc types as unsigned on
/// glibc and signed on musl (loongctl's target); nix's enum holds the same numbers on both.
pub(crate) fn rlimit(resource: nix::sys::resource::Resource) -> u32 {
    resource as u32
}

/// The resources a plan's rlimits may name, each set by the helper as it is; a plan naming
/// any other is refused ([`resource`]).
pub(crate) const RLIMITS: [nix::sys::resource::Resource; 9] = {
    use nix::sys::resource::Resource as R;
    [
        R::RLIMIT_AS,
        R::RLIMIT_DATA,
        R::RLIMIT_CORE,
        R::RLIMIT_CPU,
        R::RLIMIT_FSIZE,
        R::RLIMIT_NOFILE,
        R::RLIMIT_NPROC,
        R::RLIMIT_STACK,
        R::RLIMIT_MEMLOCK,
    ]
};

/// The resource a plan's rlimit number names, if it is one of [`RLIMITS`].
pub(crate) fn resource(number: u32) -> Option<nix::sys::resource::Resource> {
    RLIMITS.into_iter().find(|r| rlimit(*r) == number)
}

/// The largest plan the helper reads.
pub const MAX_PLAN_BYTES: usize = 4 << 20;
/// The most items in any list of a plan.
pub const MAX_PLAN_ITEMS: usize = 4096;
/// Plan format version, checked by the helper.
pub const PLAN_VERSION: u32 = 2;

/// One step of building the new root, relative to it (paths are absolute inside the sandbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// A tmpfs at `dst` of at most `size` bytes, with the root directory's `mode`.
    Tmpfs { dst: PathBuf, size: u64, mode: u32 },
    /// A bind mount of host `src` at `dst`, read-only unless `writable`; `nosuid`, `nodev`.
    Bind {
        src: PathBuf,
        dst: PathBuf,
        writable: bool,
    },
    /// A symlink at `dst` pointing to `target`.
    Symlink { target: PathBuf, dst: PathBuf },
    /// A fresh procfs at `dst` (needs the new pid namespace).
    Proc { dst: PathBuf },
    /// A minimal `/dev`: null, zero, full, random, urandom, and nothing else.
    Dev { dst: PathBuf },
}

/// What landlock enforces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LandlockPlan {
    /// Readable and executable trees (system directories, the program).
    pub rx: Vec<PathBuf>,
    /// Readable trees.
    pub ro: Vec<PathBuf>,
    /// Readable and writable trees.
    pub rw: Vec<PathBuf>,
    /// Whether TCP bind/connect is handled (ABI ≥ 4).
    pub restrict_net: bool,
    /// TCP ports connect is allowed to.
    pub connect_ports: Vec<u16>,
    /// Whether abstract unix sockets and signals are scoped (ABI ≥ 6).
    pub scopes: bool,
    /// Refuse to run unless the ruleset is fully enforced.
    pub required: bool,
}

/// The sandbox's way out when it has a network grant: loopback listeners inside its own
/// network namespace, served by a relay process that passes each accepted connection to
/// loongd's egress broker over the egress socket (the descriptor after the payload's
/// handed-over ones, never given to the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPlan {
    /// The HTTP proxy's loopback port (tag 0).
    pub proxy_port: u16,
    /// One loopback port per raw forward (tag i for the i-th, from 1).
    pub forwards: Vec<u16>,
}

/// A uid/gid mapping for a new user namespace: `inside` maps to the helper's own ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub inside_uid: u32,
    pub inside_gid: u32,
    /// Rootless with subordinate ids: loongd's user's uid and gid ranges. The sandbox's ids
    /// inside ([`crate::subids::INSIDE_SANDBOX_ID`], the plan's `creds`) map to the id of
    /// the sandbox's slot in each, written by `newuidmap`/`newgidmap`; never loongd's own.
    pub subordinate: Option<(SubRange, SubRange)>,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// `CLONE_NEW*` flags to unshare.
    pub namespaces: i32,
    /// Present when a user namespace is created.
    pub id_map: Option<IdMap>,
    /// Hostname in the new UTS namespace.
    pub hostname: String,
    /// Steps that build the new root; empty means the root is not changed.
    pub mounts: Vec<MountOp>,
    /// Landlock, when applied.
    pub landlock: Option<LandlockPlan>,
    /// `(resource, soft, hard)` triples.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// The cgroup files the helper moves itself through before unsharing
    /// ([`crate::cgroup::join_self`]).
    pub cgroup_join: Vec<PathBuf>,
    /// Seccomp programs, installed in order (last, just before exec).
    pub seccomp: Vec<Vec<sock_filter>>,
    /// uid and gid to switch to (when the helper runs as root without a user namespace).
    pub creds: Option<(u32, u32)>,
    /// The payload's environment, `NAME=value` each.
    pub env: Vec<OsString>,
    /// The program, as a path inside the sandbox.
    pub program: PathBuf,
    /// `argv`, `argv[0]` included.
    pub argv: Vec<OsString>,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    /// Descriptors handed to the payload: the helper receives them at 5, 6, … and the
    /// payload gets them at 3, 4, … in order.
    pub pass_fds: u32,
    /// Join the spawn server's shared empty network namespace instead of creating one (only
    /// when landlock scopes keep sandboxes in it from reaching each other's abstract sockets).
    pub share_netns: bool,
    /// Loopback listeners and the relay to loongd's broker (a network grant).
    pub egress: Option<EgressPlan>,
    /// The payload waits on a gate before its `execve` (the descriptor after the payload's
    /// and the egress socket): one byte [`GATE_OPEN`] lets it run; anything else, or the
    /// gate's end without a byte, and it exits without running. loongd opens the gate once
    /// the run's decisions are durable in the audit trail, so the sandbox is built while they
    /// commit and nothing runs before they are recorded.
    pub gate: bool,
}

/// The byte that opens a payload's gate ([`Plan::gate`]).
pub const GATE_OPEN: u8 = b'g';

/// A plan that did not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("plan truncated at byte {0}")]
    Truncated(usize),
    #[error("plan list of {0} items is above the limit of {MAX_PLAN_ITEMS}")]
    TooMany(usize),
    #[error("plan of {0} bytes is above the limit of {MAX_PLAN_BYTES}")]
    TooLarge(usize),
    #[error("plan version {0} is not {PLAN_VERSION}")]
    Version(u32),
    #[error("unknown tag {0} in plan")]
    Tag(u8),
    #[error("{0} trailing bytes after the plan")]
    Trailing(usize),
}

#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn path(&mut self, p: &std::path::Path) {
        self.bytes(p.as_os_str().as_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u32(n as u32);
    }
}

struct R<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PlanError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or(PlanError::Truncated(self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PlanError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, PlanError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, PlanError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, PlanError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn os(&mut self) -> Result<OsString, PlanError> {
        Ok(OsString::from_vec(self.bytes()?))
    }
    fn path(&mut self) -> Result<PathBuf, PlanError> {
        Ok(PathBuf::from(self.os()?))
    }
    fn len(&mut self) -> Result<usize, PlanError> {
        let n = self.u32()? as usize;
        if n > MAX_PLAN_ITEMS {
            return Err(PlanError::TooMany(n));
        }
        Ok(n)
    }
    fn list<T>(
        &mut self,
        mut f: impl FnMut(&mut Self) -> Result<T, PlanError>,
    ) -> Result<Vec<T>, PlanError> {
        let n = self.len()?;
        (0..n).map(|_| f(self)).collect()
    }
}

impl Plan {
    /// Encodes the plan.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W::default();
        w.u32(PLAN_VERSION);
        w.u32(self.namespaces as u32);
        match self.id_map {
            None => w.u8(0),
            Some(m) => {
                w.u8(if m.subordinate.is_some() { 2 } else { 1 });
                w.u32(m.inside_uid);
                w.u32(m.inside_gid);
                if let Some((u, g)) = m.subordinate {
                    for r in [u, g] {
                        w.u32(r.start);
                        w.u32(r.count);
                    }
                }
            }
        }
        w.bytes(self.hostname.as_bytes());
        w.len(self.mounts.len());
        for m in &self.mounts {
            match m {
                MountOp::Tmpfs { dst, size, mode } => {
                    w.u8(0);
                    w.path(dst);
                    w.u64(*size);
                    w.u32(*mode);
                }
                MountOp::Bind { src, dst, writable } => {
                    w.u8(1);
                    w.path(src);
                    w.path(dst);
                    w.u8(u8::from(*writable));
                }
                MountOp::Symlink { target, dst } => {
                    w.u8(2);
                    w.path(target);
                    w.path(dst);
                }
                MountOp::Proc { dst } => {
                    w.u8(3);
                    w.path(dst);
                }
                MountOp::Dev { dst } => {
                    w.u8(4);
                    w.path(dst);
                }
            }
        }
        match &self.landlock {
            None => w.u8(0),
            Some(l) => {
                w.u8(1);
                for set in [&l.rx, &l.ro, &l.rw] {
                    w.len(set.len());
                    set.iter().for_each(|p| w.path(p));
                }
                w.u8(u8::from(l.restrict_net));
                w.len(l.connect_ports.len());
                l.connect_ports.iter().for_each(|p| w.u32(u32::from(*p)));
                w.u8(u8::from(l.scopes));
                w.u8(u8::from(l.required));
            }
        }
        w.len(self.rlimits.len());
        for (r, s, h) in &self.rlimits {
            w.u32(*r);
            w.u64(*s);
            w.u64(*h);
        }
        w.len(self.cgroup_join.len());
        self.cgroup_join.iter().for_each(|p| w.path(p));
        w.len(self.seccomp.len());
        for prog in &self.seccomp {
            w.len(prog.len());
            for i in prog {
                w.u32(u32::from(i.code));
                w.u8(i.jt);
                w.u8(i.jf);
                w.u32(i.k);
            }
        }
        match self.creds {
            None => w.u8(0),
            Some((u, g)) => {
                w.u8(1);
                w.u32(u);
                w.u32(g);
            }
        }
        w.len(self.env.len());
        self.env.iter().for_each(|e| w.bytes(e.as_bytes()));
        w.path(&self.program);
        w.len(self.argv.len());
        self.argv.iter().for_each(|a| w.bytes(a.as_bytes()));
        w.path(&self.cwd);
        w.u32(self.pass_fds);
        w.u8(u8::from(self.share_netns));
        match &self.egress {
            None => w.u8(0),
            Some(e) => {
                w.u8(1);
                w.u32(u32::from(e.proxy_port));
                w.len(e.forwards.len());
                e.forwards.iter().for_each(|p| w.u32(u32::from(*p)));
            }
        }
        w.u8(u8::from(self.gate));
        w.0
    }

    /// Decodes a plan, refusing anything over its bounds.
    pub fn decode(b: &[u8]) -> Result<Plan, PlanError> {
        if b.len() > MAX_PLAN_BYTES {
            return Err(PlanError::TooLarge(b.len()));
        }
        let mut r = R { b, pos: 0 };
        let v = r.u32()?;
        if v != PLAN_VERSION {
            return Err(PlanError::Version(v));
        }
        let namespaces = r.u32()? as i32;
        let id_map = match r.u8()? {
            0 => None,
            t @ (1 | 2) => {
                let inside_uid = r.u32()?;
                let inside_gid = r.u32()?;
                let subordinate = if t == 2 {
                    let mut range = || -> Result<SubRange, PlanError> {
                        Ok(SubRange {
                            start: r.u32()?,
                            count: r.u32()?,
                        })
                    };
                    Some((range()?, range()?))
                } else {
                    None
                };
                Some(IdMap {
                    inside_uid,
                    inside_gid,
                    subordinate,
                })
            }
            t => return Err(PlanError::Tag(t)),
        };
        let hostname = String::from_utf8_lossy(&r.bytes()?).into_owned();
        let mounts = r.list(|r| {
            Ok(match r.u8()? {
                0 => MountOp::Tmpfs {
                    dst: r.path()?,
                    size: r.u64()?,
                    mode: r.u32()?,
                },
                1 => MountOp::Bind {
                    src: r.path()?,
                    dst: r.path()?,
                    writable: r.u8()? != 0,
                },
                2 => MountOp::Symlink {
                    target: r.path()?,
                    dst: r.path()?,
                },
                3 => MountOp::Proc { dst: r.path()? },
                4 => MountOp::Dev { dst: r.path()? },
                t => return Err(PlanError::Tag(t)),
            })
        })?;
        let landlock = match r.u8()? {
            0 => None,
            1 => Some(LandlockPlan {
                rx: r.list(R::path)?,
                ro: r.list(R::path)?,
                rw: r.list(R::path)?,
                restrict_net: r.u8()? != 0,
                connect_ports: r.list(|r| Ok(r.u32()? as u16))?,
                scopes: r.u8()? != 0,
                required: r.u8()? != 0,
            }),
            t => return Err(PlanError::Tag(t)),
        };
        let rlimits = r.list(|r| Ok((r.u32()?, r.u64()?, r.u64()?)))?;
        let cgroup_join = r.list(R::path)?;
        let seccomp = r.list(|r| {
            r.list(|r| {
                Ok(sock_filter {
                    code: r.u32()? as u16,
                    jt: r.u8()?,
                    jf: r.u8()?,
                    k: r.u32()?,
                })
            })
        })?;
        let creds = match r.u8()? {
            0 => None,
            1 => Some((r.u32()?, r.u32()?)),
            t => return Err(PlanError::Tag(t)),
        };
        let env = r.list(R::os)?;
        let program = r.path()?;
        let argv = r.list(R::os)?;
        let cwd = r.path()?;
        let pass_fds = r.u32()?;
        let share_netns = r.u8()? != 0;
        let egress = match r.u8()? {
            0 => None,
            1 => Some(EgressPlan {
                proxy_port: r.u32()? as u16,
                forwards: r.list(|r| Ok(r.u32()? as u16))?,
            }),
            t => return Err(PlanError::Tag(t)),
        };
        let gate = match r.u8()? {
            0 => false,
            1 => true,
            t => return Err(PlanError::Tag(t)),
        };
        if r.pos != b.len() {
            return Err(PlanError::Trailing(b.len() - r.pos));
        }
        Ok(Plan {
            namespaces,
            id_map,
            hostname,
            mounts,
            landlock,
            rlimits,
            cgroup_join,
            seccomp,
            creds,
            env,
            program,
            argv,
            cwd,
            pass_fds,
            share_netns,
            egress,
            gate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers are the kernel's (`asm-generic/resource.h`, which x86-64 and arm64 use),
    /// not merely libc's (which nix takes its own from), and each maps back to its resource;
    /// others are refused.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn a_plans_rlimit_numbers_are_the_kernels() {
        use nix::sys::resource::Resource as R;
        for (r, kernels) in [
            (R::RLIMIT_CPU, 0),
            (R::RLIMIT_FSIZE, 1),
            (R::RLIMIT_DATA, 2),
            (R::RLIMIT_STACK, 3),
            (R::RLIMIT_CORE, 4),
            (R::RLIMIT_NPROC, 6),
            (R::RLIMIT_NOFILE, 7),
            (R::RLIMIT_MEMLOCK, 8),
            (R::RLIMIT_AS, 9),
        ] {
            assert_eq!(rlimit(r), kernels, "{r:?}");
            assert_eq!(resource(kernels), Some(r), "{r:?}");
            assert!(RLIMITS.contains(&r), "{r:?}");
        }
        // RLIMIT_RSS (5), RLIMIT_LOCKS (10), and numbers past the kernel's: refused.
        for other in [5, 10, 11, 15, 16, u32::MAX] {
            assert_eq!(resource(other), None, "{other}");
        }
    }

    fn sample() -> Plan {
        Plan {
            namespaces: libc::CLONE_NEWPID | libc::CLONE_NEWNS,
            id_map: Some(IdMap {
                inside_uid: 1000,
                inside_gid: 1000,
                subordinate: Some((
                    SubRange {
                        start: 100000,
                        count: 65536,
                    },
                    SubRange {
                        start: 200000,
                        count: 10,
                    },
                )),
            }),
            hostname: "loong".into(),
            mounts: vec![
                MountOp::Tmpfs {
                    dst: "/".into(),
                    size: 1 << 20,
                    mode: 0o755,
                },
                MountOp::Bind {
                    src: "/usr".into(),
                    dst: "/usr".into(),
                    writable: false,
                },
                MountOp::Symlink {
                    target: "usr/bin".into(),
                    dst: "/bin".into(),
                },
                MountOp::Proc {
                    dst: "/proc".into(),
                },
                MountOp::Dev { dst: "/dev".into() },
            ],
            landlock: Some(LandlockPlan {
                rx: vec!["/usr".into()],
                ro: vec![],
                rw: vec!["/tmp/x".into()],
                restrict_net: true,
                connect_ports: vec![443],
                scopes: true,
                required: true,
            }),
            rlimits: vec![(rlimit(nix::sys::resource::Resource::RLIMIT_CORE), 0, 0)],
            cgroup_join: vec!["/sys/fs/cgroup/pids/loong/1/cgroup.procs".into()],
            seccomp: vec![vec![sock_filter {
                code: 6,
                jt: 0,
                jf: 0,
                k: 0x7fff_0000,
            }]],
            creds: Some((65534, 65534)),
            env: vec!["PATH=/usr/bin".into()],
            program: "/bin/true".into(),
            argv: vec!["true".into()],
            cwd: "/".into(),
            pass_fds: 1,
            share_netns: true,
            egress: Some(EgressPlan {
                proxy_port: 3128,
                forwards: vec![8080, 5432],
            }),
            gate: true,
        }
    }

    #[test]
    fn round_trip() {
        let p = sample();
        assert_eq!(Plan::decode(&p.encode()), Ok(p));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(Plan::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Plan::decode(&long), Err(PlanError::Trailing(1)));
    }

    /// A helper and a loongd of different plan formats refuse each other's plans by the
    /// version word, before any field: a version-1 plan (no gate byte) is not read as this
    /// format, nor this format by a version-1 helper; and a gate that is neither on nor off
    /// is refused, never taken as open.
    #[test]
    fn another_format_s_plan_and_an_unknown_gate_are_refused() {
        let bytes = sample().encode();
        let mut v1 = bytes[..bytes.len() - 1].to_vec();
        v1[..4].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(Plan::decode(&v1), Err(PlanError::Version(1)));
        let mut later = bytes.clone();
        later[..4].copy_from_slice(&(PLAN_VERSION + 1).to_le_bytes());
        assert_eq!(
            Plan::decode(&later),
            Err(PlanError::Version(PLAN_VERSION + 1))
        );
        let mut odd_gate = bytes.clone();
        if let Some(g) = odd_gate.last_mut() {
            *g = 2;
        }
        assert_eq!(Plan::decode(&odd_gate), Err(PlanError::Tag(2)));
        // The control: the plan itself, gate on and off.
        let mut off = sample();
        off.gate = false;
        assert_eq!(Plan::decode(&off.encode()), Ok(off));
        assert!(Plan::decode(&bytes).is_ok_and(|p| p.gate));
    }
}
