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

/// Removes the empty per-sandbox cgroups (`loong-PID-…`) that processes no longer alive
/// left behind (a loongd that was killed never dropped its sandboxes' cgroups). A cgroup of a
/// live process, or one that still holds a task, is left alone.
pub fn sweep_stale(support: &CgroupSupport) -> usize {
    let bases: Vec<&Path> = match support {
        CgroupSupport::None => Vec::new(),
        CgroupSupport::V2 { dir } => vec![dir.as_path()],
        CgroupSupport::V1 { memory, pids, .. } => vec![memory.as_path(), pids.as_path()],
    };
    let mut removed = 0;
    for base in bases {
        let Ok(entries) = fs::read_dir(base) else {
            continue;
        };
        // Listed first, removed after: removing while reading a cgroup directory skips entries.
        let names: Vec<(String, PathBuf)> = entries
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        for (name, path) in names {
            let Some(pid) = name
                .strip_prefix("loong-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            if fs::remove_dir(&path).is_ok() {
                removed += 1;
            }
        }
    }
    removed
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_cgroups_of_dead_processes_are_swept_and_live_ones_kept() {
        let base = tempfile::tempdir().expect("dir");
        // A pid above pid_max is never alive; this process's own is.
        let dead = base.path().join("loong-4194305-1700000000000-3");
        let live = base
            .path()
            .join(format!("loong-{}-1700000000000-0", std::process::id()));
        let other = base.path().join("someone-else");
        let busy = base.path().join("loong-4194306-1-0");
        for d in [&dead, &live, &other, &busy] {
            fs::create_dir(d).expect("dir");
        }
        // A non-empty cgroup directory cannot be removed (as with a task in it).
        fs::write(busy.join("cgroup.procs"), "1").expect("file");
        let support = CgroupSupport::V2 {
            dir: base.path().to_path_buf(),
        };
        assert_eq!(sweep_stale(&support), 1);
        assert!(!dead.exists());
        assert!(live.exists() && other.exists() && busy.exists());
    }
}
