//! Per-sandbox cgroups: a child cgroup with memory and pids limits (and cpu where present),
//! joined by the helper before it unshares, removed after the sandbox exits.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::host::CgroupSupport;

/// The file a single-threaded process writes `0` to, to move itself into a v1 cgroup.
pub const JOIN_V1: &str = "tasks";
/// The file a process writes `0` to, to move itself into a v2 cgroup.
pub const JOIN_V2: &str = "cgroup.procs";
/// The v2 file that kills every process of a cgroup when `1` is written to it.
pub const KILL_V2: &str = "cgroup.kill";

/// Kills every process of the v2 cgroup whose [`KILL_V2`] file is `file`. A cgroup already
/// removed (its sandbox gone) is not an error.
pub fn kill(file: &Path) -> std::io::Result<()> {
    match fs::write(file, "1") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Moves the calling process into the cgroup whose `file` ([`JOIN_V1`] or [`JOIN_V2`]) is
/// given. Through `tasks` only the calling thread moves, so the process must have exactly one
/// thread; this is checked, and a process with more is refused (`EBUSY`) rather than left
/// partly outside its limits.
pub fn join_self(file: &Path) -> std::io::Result<()> {
    if file.file_name().is_some_and(|n| n == JOIN_V1) && threads()? != 1 {
        return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
    }
    fs::write(file, "0")
}

/// The calling process's thread count, from `/proc/self/stat` (field 20).
fn threads() -> std::io::Result<u64> {
    let stat = fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(17))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))
}

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
    /// the files the helper joins through (see [`join_self`]).
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
            // Placement only: the limits are rlimits (the plan knows: no cgroup mechanism).
            CgroupSupport::V2Placement { dir, .. } => {
                mk(&mut cg, dir)?;
            }
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
        let join = match support {
            // v1: the helper, still single-threaded, moves its own thread through `tasks`.
            // Writing a pid to `cgroup.procs` takes the global threadgroup lock for writing,
            // which waits for an RCU grace period (about 10 ms on the development machine);
            // moving the calling thread alone does not take it (about 0.3 ms per hierarchy).
            CgroupSupport::V1 { .. } => JOIN_V1,
            // v2 has no such path: `cgroup.threads` cannot cross domain cgroups.
            _ => JOIN_V2,
        };
        let files = cg.dirs.iter().map(|d| d.join(join)).collect();
        Ok((cg, files))
    }

    /// The `cgroup.kill` file of this sandbox's v2 cgroup, where the kernel has one (5.14):
    /// writing `1` kills every process in the cgroup at once.
    pub fn kill_file(&self) -> Option<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.join(KILL_V2))
            .find(|f| f.exists())
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
        CgroupSupport::V2 { dir } | CgroupSupport::V2Placement { dir, .. } => vec![dir.as_path()],
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

/// How many times a sandbox's cgroup is tried for removal, [`REMOVE_RETRY_PAUSE`] apart: the
/// helper's exit, which the drop follows, may be seen before the kernel has let go of the
/// cgroup's last task (`rmdir` says `EBUSY`).
pub const REMOVE_TRIES: u32 = 50;
/// The pause between two tries.
pub const REMOVE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            // Empty once every process of the sandbox is gone; a leftover is retried by the
            // next loongd start (it removes stale `loong-*` children).
            for _ in 0..REMOVE_TRIES {
                match fs::remove_dir(d) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(REMOVE_RETRY_PAUSE);
                    }
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_threaded_process_moves_itself_through_tasks() {
        let dir = tempfile::tempdir().expect("dir");
        // The test process has the harness's threads and this one.
        let (stop, parked) = std::sync::mpsc::channel::<()>();
        let extra = std::thread::spawn(move || parked.recv());
        assert!(threads().expect("threads") >= 2);
        let tasks = dir.path().join(JOIN_V1);
        let err = join_self(&tasks).expect_err("a threaded process is refused");
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
        assert!(!tasks.exists(), "nothing was written");
        // Positive control: the whole-process file takes any process.
        let procs = dir.path().join(JOIN_V2);
        join_self(&procs).expect("cgroup.procs");
        assert_eq!(fs::read_to_string(&procs).expect("read"), "0");
        drop(stop);
        let _ = extra.join();
    }

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

    /// A writable cgroup v2 directory of this process's hierarchy (root's), if there is one.
    fn writable_v2() -> Option<PathBuf> {
        let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = info.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(point))
        })?;
        nix::unistd::access(&mount, nix::unistd::AccessFlags::W_OK)
            .is_ok()
            .then_some(mount)
    }

    #[test]
    fn cgroup_kill_ends_every_process_of_the_cgroup_and_a_removed_one_is_no_error() {
        let Some(mount) = writable_v2() else {
            eprintln!("SKIPPED cgroup::tests::cgroup_kill_…: no writable cgroup v2 hierarchy");
            return;
        };
        let dir = mount.join(format!("loong-test-kill-{}", std::process::id()));
        fs::create_dir(&dir).expect("create cgroup");
        if !dir.join(KILL_V2).exists() {
            let _ = fs::remove_dir(&dir);
            eprintln!("SKIPPED cgroup::tests::cgroup_kill_…: no cgroup.kill (Linux 5.14)");
            return;
        }
        let spawn = || {
            let c = std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .expect("sleep");
            fs::write(dir.join(JOIN_V2), c.id().to_string()).expect("move into the cgroup");
            c
        };
        let (mut a, mut b) = (spawn(), spawn());
        // Control: both live in the cgroup until it is killed.
        assert_eq!(a.try_wait().expect("wait"), None);
        assert_eq!(b.try_wait().expect("wait"), None);
        kill(&dir.join(KILL_V2)).expect("cgroup.kill");
        for c in [&mut a, &mut b] {
            let status = c.wait().expect("wait");
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(libc::SIGKILL)
            );
        }
        for _ in 0..REMOVE_TRIES {
            if fs::remove_dir(&dir).is_ok() {
                break;
            }
            std::thread::sleep(REMOVE_RETRY_PAUSE);
        }
        assert!(!dir.exists());
        kill(&dir.join(KILL_V2)).expect("a removed cgroup is no error");
    }
}
