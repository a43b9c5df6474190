//! A cold plugin call against one bubblewrap spawn of `/bin/true`, in the same run:
//!
//! - the floors, each sample interleaved with the others: `/bin/true` as a process, and
//!   `bwrap --unshare-all --die-with-parent … /bin/true` (skipped, and said so, without
//!   bubblewrap);
//! - the first call after `workers kill` (every worker of the pool killed, the call made
//!   [`SETTLE`] later, as a person or an agent would): what the spare worker and the
//!   compiled-module cache are for;
//! - the same call made at once after the kill (the pool's replacement still starting);
//! - the first call after `plugins reload` (a new generation: every worker loads the module
//!   again);
//! - install to first answer: `loongctl plugins install` of the echo package, then its first
//!   call, both whole processes (and `plugins remove` between samples, untimed).
//!
//! - scale: [`SCALE_PLUGINS`] WASM plugins installed (`LOONG_SCALE_PLUGINS` overrides; 0
//!   skips): loongd's start (discovery loads each once), `plugins reload`, `tools search`
//!   (p50, p99) and loongd's resident memory.
//!
//! It drives the binaries in `LOONG_BIN_DIR`, or the release directory it runs from
//! (`cargo build --release --bins`, which `scripts/bench` does); without them it says so.
//! Times are medians and 99th percentiles of hand-timed samples; the goal is a ratio to the
//! bubblewrap spawn measured here.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use loong_ipc::{
    client::{Client, ConnectOptions},
    ControlRequest, ControlResponse, InvokeRequest, PeerKind,
};

#[path = "../../bench_support.rs"]
mod bench_support;
use bench_support::{percentile, release_dir};

/// Samples of each figure (`LOONG_COLD_SAMPLES` overrides).
const SAMPLES: usize = 30;
/// Samples of install to first answer (each installs and removes a package).
const INSTALL_SAMPLES: usize = 10;
/// Plugins installed for the scale figures.
const SCALE_PLUGINS: usize = 500;
/// Searches timed at that scale.
const SEARCHES: usize = 200;
/// Reloads timed at that scale.
const RELOADS: usize = 3;
/// How long after a kill or a reload the timed call is made.
const SETTLE: Duration = Duration::from_millis(150);

fn report(name: &str, samples: &mut [Duration]) -> Duration {
    let med = percentile(samples, 0.5);
    let p99 = percentile(samples, 0.99);
    println!(
        "{name:44} median {:8.2} ms   p99 {:8.2} ms   (n = {})",
        med.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        samples.len()
    );
    med
}

fn ratio(name: &str, what: Duration, floor: Option<Duration>) {
    if let Some(floor) = floor {
        println!(
            "{:44} {:.2}× one bwrap spawn (goal < 1×)",
            format!("  {name}"),
            what.as_secs_f64() / floor.as_secs_f64()
        );
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins")
}

fn bin_dir() -> Option<PathBuf> {
    match std::env::var_os("LOONG_BIN_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None => release_dir("loong-worker-wasm"),
    }
}

/// The bubblewrap command the issue compares with: every namespace unshared, the system's
/// programs read-only, a fresh /proc and /dev.
fn bwrap() -> Option<Command> {
    let path = ["/usr/bin/bwrap", "/bin/bwrap"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let mut c = Command::new(path);
    c.args([
        "--unshare-all",
        "--die-with-parent",
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
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "/bin/true",
    ]);
    Some(c)
}

fn time_process(c: &mut Command) -> Duration {
    let t = Instant::now();
    let status = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("process");
    let d = t.elapsed();
    assert!(status.success(), "{c:?} failed: {status}");
    d
}

fn connect(socket: &Path) -> Client {
    let opts = ConnectOptions {
        peer_kind: PeerKind::Operator,
        build: "bench".into(),
        timeout: Duration::from_secs(5),
    };
    Client::connect(socket, &opts).expect("connect")
}

fn call(c: &mut Client, req: ControlRequest) -> ControlResponse {
    c.call(req, Duration::from_secs(60)).expect("call")
}

fn invoke(c: &mut Client, tool: &str, n: u64) {
    let r = call(
        c,
        ControlRequest::Invoke(InvokeRequest {
            tool: tool.into(),
            input: format!(r#"{{"n":{n}}}"#),
            token: None,
        }),
    );
    assert!(matches!(r, ControlResponse::Invoked(_)), "{r:?}");
}

fn kill_all(c: &mut Client) {
    let ControlResponse::Workers(list) = call(
        c,
        ControlRequest::WorkerList(loong_ipc::Page {
            after: None,
            limit: 0,
        }),
    ) else {
        panic!("workers list answered something else")
    };
    for w in list {
        call(c, ControlRequest::WorkerKill { id: w.id });
    }
}

fn loongctl(bin: &Path, home: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(bin.join("loongctl"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .expect("loongctl");
    assert!(
        out.status.success(),
        "loongctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn main() {
    // `cargo bench` passes `--bench`; this binary takes no options.
    let samples = std::env::var("LOONG_COLD_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SAMPLES);
    let Some(bin) = bin_dir() else {
        println!(
            "cold call: skipped: the release binaries are missing; run `cargo build --release --bins` (scripts/bench does) or set LOONG_BIN_DIR"
        );
        return;
    };
    let home = tempfile::tempdir_in("/tmp").expect("home");
    let plugins = home.path().join("plugins/echo");
    std::fs::create_dir_all(&plugins).expect("plugins");
    for f in ["loong.plugin.json", "plugin.wasm"] {
        std::fs::copy(examples().join("echo").join(f), plugins.join(f)).expect("copy");
    }
    loongctl(&bin, home.path(), &["daemon", "start"]);
    let mut c = connect(&home.path().join("run/loongd.sock"));
    for i in 0..20 {
        invoke(&mut c, "echo", i);
    }

    let mut bw = bwrap();
    if bw.is_none() {
        println!("bwrap: skipped: bubblewrap is not installed (apt-get install bubblewrap)");
    }
    let (mut truth, mut spawns, mut after_kill, mut at_once, mut after_reload) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..samples as u64 {
        truth.push(time_process(&mut Command::new("/bin/true")));
        if let Some(b) = bw.as_mut() {
            spawns.push(time_process(b));
        }
        kill_all(&mut c);
        std::thread::sleep(SETTLE);
        let t = Instant::now();
        invoke(&mut c, "echo", i);
        after_kill.push(t.elapsed());

        kill_all(&mut c);
        let t = Instant::now();
        invoke(&mut c, "echo", i);
        at_once.push(t.elapsed());

        call(&mut c, ControlRequest::PluginReload);
        std::thread::sleep(SETTLE);
        let t = Instant::now();
        invoke(&mut c, "echo", i);
        after_reload.push(t.elapsed());
    }
    println!("cold plugin call (echo), {samples} interleaved samples:");
    report("floor: /bin/true as a process", &mut truth);
    let floor = (!spawns.is_empty()).then(|| report("floor: bwrap … /bin/true", &mut spawns));
    let d = report("first call after workers kill", &mut after_kill);
    ratio("first call after kill", d, floor);
    let d = report("call at once after workers kill", &mut at_once);
    ratio("call at once after kill", d, floor);
    let d = report("first call after plugins reload", &mut after_reload);
    ratio("first call after reload", d, floor);

    // Install to first answer: a second copy of echo under another id.
    let package = tempfile::tempdir_in("/tmp").expect("package");
    let manifest = std::fs::read_to_string(examples().join("echo/loong.plugin.json"))
        .expect("manifest")
        .replacen(
            "\"plugin_id\": \"echo\"",
            "\"plugin_id\": \"echo-installed\"",
            1,
        );
    std::fs::write(package.path().join("loong.plugin.json"), manifest).expect("manifest");
    std::fs::copy(
        examples().join("echo/plugin.wasm"),
        package.path().join("plugin.wasm"),
    )
    .expect("module");
    let dir = package.path().to_str().expect("utf-8 path");
    let mut installs = Vec::new();
    for _ in 0..INSTALL_SAMPLES {
        let t = Instant::now();
        loongctl(&bin, home.path(), &["plugins", "install", dir]);
        loongctl(
            &bin,
            home.path(),
            &["invoke", "echo-installed", "--input", r#"{"n":1}"#],
        );
        installs.push(t.elapsed());
        loongctl(&bin, home.path(), &["plugins", "remove", "echo-installed"]);
    }
    report("install to first answer (two loongctl)", &mut installs);
    drop(c);
    loongctl(&bin, home.path(), &["daemon", "stop"]);

    let n = std::env::var("LOONG_SCALE_PLUGINS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SCALE_PLUGINS);
    if n > 0 {
        scale(&bin, n);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `n` copies of echo, each its own plugin (the same module: one compilation, then the
/// compiled-module cache), with words to search for in their summaries.
fn scale(bin: &Path, n: usize) {
    let home = tempfile::tempdir_in("/tmp").expect("home");
    let manifest =
        std::fs::read_to_string(examples().join("echo/loong.plugin.json")).expect("manifest");
    let words = ["alpha", "beta", "gamma", "delta", "omega"];
    for i in 0..n {
        let id = format!("scale-{i:04}");
        let dir = home.path().join("plugins").join(&id);
        std::fs::create_dir_all(&dir).expect("plugin dir");
        let m = manifest
            .replacen(
                "\"plugin_id\": \"echo\"",
                &format!("\"plugin_id\": \"{id}\""),
                1,
            )
            .replacen(
                "Writes its JSON input back",
                &format!("Writes its input back {} {i}", words[i % words.len()]),
                1,
            );
        std::fs::write(dir.join("loong.plugin.json"), m).expect("manifest");
        std::fs::copy(examples().join("echo/plugin.wasm"), dir.join("plugin.wasm"))
            .expect("module");
    }
    let t = Instant::now();
    loongctl(bin, home.path(), &["daemon", "start"]);
    let start = t.elapsed();
    let mut c = connect(&home.path().join("run/loongd.sock"));
    let ControlResponse::Status(st) = call(&mut c, ControlRequest::Status) else {
        panic!("status answered something else")
    };
    println!("scale: {n} WASM plugins");
    println!(
        "{:44} {:8.2} ms",
        "loongd start (discovery loads each)",
        start.as_secs_f64() * 1e3
    );
    let mut reloads: Vec<Duration> = (0..RELOADS)
        .map(|_| {
            let t = Instant::now();
            call(&mut c, ControlRequest::PluginReload);
            t.elapsed()
        })
        .collect();
    report("plugins reload", &mut reloads);
    let mut searches: Vec<Duration> = (0..SEARCHES)
        .map(|i| {
            let t = Instant::now();
            let r = call(
                &mut c,
                ControlRequest::ToolSearch(loong_ipc::ToolSearchRequest {
                    query: format!("{} input", words[i % words.len()]),
                    trust: None,
                    limit: 20,
                }),
            );
            assert!(matches!(r, ControlResponse::ToolHits(_)), "{r:?}");
            t.elapsed()
        })
        .collect();
    report("tools search (20 hits)", &mut searches);
    println!("{:44} {} KiB", "loongd resident memory", rss_kib(st.pid));
    drop(c);
    loongctl(bin, home.path(), &["daemon", "stop"]);
}
