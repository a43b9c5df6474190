//! Spawn-to-exit of `/bin/true` under each tier, beside (in the same run) a plain fork+exec
//! floor and `bwrap --unshare-all --die-with-parent` with a comparable read-only root. The
//! goal: restricted and balanced at most 2 ms median and at most 0.5× bubblewrap, while
//! doing more (landlock and seccomp, which bubblewrap does not apply).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use criterion::{criterion_group, criterion_main, Criterion};
use loong_sandbox::{SandboxSpec, Spawner, SpawnerConfig, StdioSpec, Tier};

fn spec(tier: Tier) -> SandboxSpec {
    SandboxSpec {
        tier: Some(tier),
        program: PathBuf::from("/bin/true"),
        ..SandboxSpec::default()
    }
}

fn spawn(c: &mut Criterion) {
    let profiles = loong_profiles::bundled().expect("bundled profiles are valid");
    let mut config = SpawnerConfig::new(profiles);
    config.helper = PathBuf::from(env!("CARGO_BIN_EXE_loong-spawn"));
    let spawner = Spawner::start(config).expect("spawner starts");
    let mut g = c.benchmark_group("spawn_true");
    g.bench_function("floor_fork_exec", |b| {
        b.iter(|| {
            Command::new("/bin/true")
                .stdin(Stdio::null())
                .status()
                .expect("runs")
        })
    });
    for tier in Tier::ALL {
        g.bench_function(tier.as_str(), |b| {
            b.iter(|| {
                let child = spawner
                    .spawn(
                        spec(tier),
                        [StdioSpec::Null, StdioSpec::Null, StdioSpec::Null],
                        Vec::new(),
                    )
                    .expect("spawns");
                let r = child.wait().expect("waits");
                assert_eq!(r.code, Some(0));
            })
        });
    }
    // The WASM worker's spec (a memory and pids cgroup, loongd's rlimit overrides) around
    // the same payload: what a cold worker pays before its own start-up.
    g.bench_function("restricted_worker_spec", |b| {
        b.iter(|| {
            let spec = SandboxSpec {
                limits: loong_sandbox::Limits {
                    memory_bytes: Some(768 << 20),
                    pids: Some(4),
                    ..Default::default()
                },
                kernel: loong_sandbox::KernelOverrides {
                    unbounded_address_space: true,
                    unbounded_cpu: true,
                    threads: Some(4),
                },
                ..spec(Tier::Restricted)
            };
            let child = spawner
                .spawn(
                    spec,
                    [StdioSpec::Null, StdioSpec::Null, StdioSpec::Null],
                    Vec::new(),
                )
                .expect("spawns");
            let r = child.wait().expect("waits");
            assert_eq!(r.code, Some(0));
        })
    });
    if Path::new("/usr/bin/bwrap").exists() {
        g.bench_function("bwrap_unshare_all", |b| {
            b.iter(|| {
                let s = Command::new("/usr/bin/bwrap")
                    .args(["--unshare-all", "--die-with-parent", "--new-session"])
                    .args([
                        "--ro-bind",
                        "/usr",
                        "/usr",
                        "--symlink",
                        "usr/bin",
                        "/bin",
                        "--symlink",
                        "usr/lib",
                        "/lib",
                    ])
                    .args([
                        "--symlink",
                        "usr/lib64",
                        "/lib64",
                        "--proc",
                        "/proc",
                        "--dev",
                        "/dev",
                        "--tmpfs",
                        "/tmp",
                    ])
                    .arg("/bin/true")
                    .stdin(Stdio::null())
                    .status()
                    .expect("bwrap runs");
                assert!(s.success());
            })
        });
    } else {
        eprintln!("bwrap_unshare_all skipped: install Debian's bubblewrap to measure it");
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1)).sample_size(60);
    targets = spawn
}
criterion_main!(benches);
