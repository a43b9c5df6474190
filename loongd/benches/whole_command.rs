//! Whole commands timed as processes, as a user's shell runs them: `loongctl sandbox run
//! --tier balanced -- /bin/true` against bubblewrap running `/bin/true` with the balanced
//! tier's mounts, and `loongctl status`, each beside the floor (`/bin/true` exec'd the same
//! way) measured in the same run. The commands run alternately, N rounds (`LOONG_WHOLE_N`,
//! default 200), against the binaries in `LOONG_BIN_DIR` (default target/release). The goal
//! is `sandbox run` within 0.7× bubblewrap; nothing here asserts a time.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

#[path = "../../workers/bench_support.rs"]
mod bench_support;
use bench_support::{figure, Figure};

/// Rounds when `LOONG_WHOLE_N` is unset.
const DEFAULT_ROUNDS: usize = 200;
/// Untimed rounds first (page cache, the daemon's first spawn server).
const WARMUP_ROUNDS: usize = 10;

/// bubblewrap with the mounts of the balanced tier (`policy-profiles/tiers/balanced.toml`):
/// every namespace, a tmpfs root, `/usr`, `/etc` and `/opt` read-only, the merged-usr
/// symlinks, a fresh `/proc`, a minimal `/dev`, a private `/tmp`, a new session and death
/// with its parent. (loong's balanced tier adds landlock, seccomp, rlimits and a cgroup.)
const BWRAP_ARGS: &[&str] = &[
    "--unshare-all",
    "--die-with-parent",
    "--new-session",
    "--tmpfs",
    "/",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/bin",
    "/bin",
    "--symlink",
    "usr/lib",
    "/lib",
    "--symlink",
    "usr/lib64",
    "/lib64",
    "--symlink",
    "usr/sbin",
    "/sbin",
    "--ro-bind",
    "/etc",
    "/etc",
    "--ro-bind-try",
    "/opt",
    "/opt",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--tmpfs",
    "/tmp",
    "--",
    "/bin/true",
];

struct Case {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    times: Vec<Duration>,
}

impl Case {
    fn new(name: &'static str, program: impl Into<PathBuf>, args: &[&str]) -> Case {
        Case {
            name,
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            times: Vec::new(),
        }
    }

    /// Runs the command once as a whole process; its exit must be 0.
    fn once(&self) -> Duration {
        let start = Instant::now();
        let status = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("spawn the command");
        let took = start.elapsed();
        assert!(status.success(), "{} failed: {status}", self.name);
        took
    }

    fn quantile(&self, q: f64) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        t[((t.len() - 1) as f64 * q).round() as usize]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that does not name this bench skips it.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| !a.starts_with("--") && !"whole_command".contains(a.as_str()))
    {
        return;
    }
    let bins = std::env::var_os("LOONG_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    let rounds = std::env::var("LOONG_WHOLE_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let loongctl = bins.join("loongctl");
    let home = tempfile::Builder::new()
        .prefix("lw")
        .tempdir_in("/tmp")
        .expect("home");
    let home_arg = home.path().to_str().expect("utf-8 home").to_string();
    let started = Command::new(&loongctl)
        .args(["--home", &home_arg, "daemon", "start"])
        .stdout(Stdio::null())
        .status()
        .expect("loongctl daemon start");
    assert!(started.success(), "loongd did not start");

    let bwrap = Path::new("/usr/bin/bwrap");
    let mut cases = vec![Case::new("floor: /bin/true", "/bin/true", &[])];
    if bwrap.exists() {
        cases.push(Case::new(
            "bwrap (balanced mounts) /bin/true",
            bwrap,
            BWRAP_ARGS,
        ));
    } else {
        println!("bwrap not installed (apt-get install bubblewrap): its row is skipped");
    }
    cases.push(Case::new(
        "loongctl sandbox run --tier balanced -- /bin/true",
        &loongctl,
        &[
            "--home",
            &home_arg,
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--",
            "/bin/true",
        ],
    ));
    cases.push(Case::new(
        "loongctl status",
        &loongctl,
        &["--home", &home_arg, "status"],
    ));
    for _ in 0..WARMUP_ROUNDS {
        for c in &cases {
            c.once();
        }
    }
    for _ in 0..rounds {
        for c in &mut cases {
            let t = c.once();
            c.times.push(t);
        }
    }
    let _ = Command::new(&loongctl)
        .args(["--home", &home_arg, "daemon", "stop"])
        .stdout(Stdio::null())
        .status();

    let floor = cases[0].quantile(0.5);
    println!(
        "whole commands, {rounds} rounds alternately, binaries from {}",
        bins.display()
    );
    println!(
        "{:52} {:>10} {:>10} {:>9}",
        "command", "median ms", "p99 ms", "× floor"
    );
    for c in &cases {
        let med = c.quantile(0.5);
        println!(
            "{:52} {:10.3} {:10.3} {:9.2}",
            c.name,
            ms(med),
            ms(c.quantile(0.99)),
            med.as_secs_f64() / floor.as_secs_f64()
        );
    }
    let by = |prefix: &str| cases.iter().find(|c| c.name.starts_with(prefix));
    if let (Some(run), Some(bw)) = (by("loongctl sandbox"), by("bwrap")) {
        println!(
            "sandbox run / bwrap: {:.2}× median, {:.2}× p99 (goal ≤ 0.7×)",
            run.quantile(0.5).as_secs_f64() / bw.quantile(0.5).as_secs_f64(),
            run.quantile(0.99).as_secs_f64() / bw.quantile(0.99).as_secs_f64()
        );
    }
    // The summary table's rows (scripts/bench): the floors, the whole command against
    // bubblewrap (issue 23's item 1), `status` against `/bin/true`.
    let row = |c: &Case, floor: Option<&Case>, goal: &str| {
        figure(&Figure {
            name: c.name,
            value: ms(c.quantile(0.5)),
            unit: "ms",
            p99: Some(ms(c.quantile(0.99))),
            floor: floor.map(|f| (f.name, ms(f.quantile(0.5)))),
            goal,
        });
    };
    let bw = by("bwrap");
    for c in &cases {
        match c.name {
            n if n.starts_with("loongctl sandbox") => row(c, bw, "≤ 0.7× bwrap"),
            n if n.starts_with("loongctl status") => row(c, Some(&cases[0]), "reported"),
            n if n.starts_with("bwrap") => row(c, Some(&cases[0]), ""),
            _ => row(c, None, ""),
        }
    }
}
