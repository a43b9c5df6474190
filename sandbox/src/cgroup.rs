//! Per-sandbox cgroups: a child cgroup with memory and pids limits (and cpu where present),
//! joined by the helper before it unshares, removed after the sandbox exits.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::host::CgroupSupport;

/// Limits for one sandbox's cgroup.
#[derive(Debug, Clone, Copy, Default)]
pub struct CgroupLimits {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// A created cgroup: its directories, removed on drop (after the sandbox has exited).
#[derive(Debug)]
pub struct SandboxCgroup {
    dirs: Vec<PathBuf>,
}

impl SandboxCgroup {
    /// Creates the cgroup `name` under what `support` offers and writes the limits. Returns
    /// the `cgroup.procs` files the helper joins.
    pub fn create(
        support: &CgroupSupport,
        name: &str,
        limits: CgroupLimits,
    ) -> std::io::Result<(SandboxCgroup, Vec<PathBuf>)> {
        let mut cg = SandboxCgroup { dirs: Vec::new() };
        let mk = |cg: &mut SandboxCgroup, base: &Path| -> std::io::Result<PathBuf> {
            let d = base.join(name);
            fs::create_dir(&d)?;
            cg.dirs.push(d.clone());
            Ok(d)
        };
        match support {
            CgroupSupport::None => {}
            CgroupSupport::V2 { dir } => {
                let d = mk(&mut cg, dir)?;
                if let Some(m) = limits.memory_bytes {
                    fs::write(d.join("memory.max"), m.to_string())?;
                    let _ = fs::write(d.join("memory.swap.max"), "0");
                }
                if let Some(p) = limits.pids {
                    fs::write(d.join("pids.max"), p.to_string())?;
                }
            }
            CgroupSupport::V1 { memory, pids, .. } => {
                let dm = mk(&mut cg, memory)?;
                if let Some(m) = limits.memory_bytes {
                    fs::write(dm.join("memory.limit_in_bytes"), m.to_string())?;
                }
                let dp = mk(&mut cg, pids)?;
                if let Some(p) = limits.pids {
                    fs::write(dp.join("pids.max"), p.to_string())?;
                }
            }
        }
        let procs = cg.dirs.iter().map(|d| d.join("cgroup.procs")).collect();
        Ok((cg, procs))
    }

    /// Whether the kernel OOM-killed something in this cgroup.
    pub fn oom_killed(&self) -> bool {
        self.dirs.iter().any(|d| {
            let v2 = fs::read_to_string(d.join("memory.events")).unwrap_or_default();
            let v1 = fs::read_to_string(d.join("memory.oom_control")).unwrap_or_default();
            v2.lines()
                .chain(v1.lines())
                .any(|l| l.starts_with("oom_kill ") && l.trim_end() != "oom_kill 0")
        })
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            // Empty once every process of the sandbox is gone; a leftover is retried by the
            // next loongd start (it removes stale `loong-*` children).
            let _ = fs::remove_dir(d);
        }
    }
}
