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
//!   skips them) and MCP servers advertising [`SCALE_MCP_TOOLS`] tools in all
//!   (`LOONG_SCALE_MCP_TOOLS` overrides; each server is `scale_mcp.py`, a stdio MCP server
//!   listing [`TOOLS_PER_SERVER`] tools with realistic descriptions and input schemas, in
//!   pages): loongd's start (discovery loads each once), `plugins reload`, `tools search`
//!   (p50, p99), `plugins list` and loongd's resident memory. `LOONG_SCALE_ONLY=1` runs
//!   this part alone.
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
use bench_support::{figure, percentile, release_dir, Figure};

/// Samples of each figure (`LOONG_COLD_SAMPLES` overrides).
const SAMPLES: usize = 30;
/// Samples of install to first answer (each installs and removes a package).
const INSTALL_SAMPLES: usize = 10;
/// Plugins installed for the scale figures.
const SCALE_PLUGINS: usize = 500;
/// MCP tools advertised for the scale figures, by servers of [`TOOLS_PER_SERVER`] tools.
const SCALE_MCP_TOOLS: usize = 20_000;
/// Tools one scale MCP server lists (at most `MAX_TOOLS`, 256, a server).
const TOOLS_PER_SERVER: usize = 250;
/// Tools on one page of its `tools/list`.
const TOOLS_PAGE: usize = 100;
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

/// `samples`' row of the summary table (scripts/bench), against `floor` when there is one.
fn row(name: &str, samples: &mut [Duration], floor: Option<(&str, Duration)>, goal: &str) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    figure(&Figure {
        name,
        value: ms(percentile(samples, 0.5)),
        unit: "ms",
        p99: Some(ms(percentile(samples, 0.99))),
        floor: floor.map(|(n, d)| (n, ms(d))),
        goal,
    });
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
    if std::env::var_os("LOONG_SCALE_ONLY").is_some() {
        scale_figures(&bin);
        return;
    }
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
    let bw = floor.map(|d| ("bwrap … /bin/true", d));
    row(
        "cold call: first after workers kill",
        &mut after_kill,
        bw,
        "< 1× bwrap",
    );
    row(
        "cold call: at once after workers kill",
        &mut at_once,
        bw,
        "< 1× bwrap",
    );
    row(
        "cold call: first after plugins reload",
        &mut after_reload,
        bw,
        "< 1× bwrap",
    );

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
    row(
        "install to first answer (two loongctl)",
        &mut installs,
        bw,
        "reported",
    );
    drop(c);
    loongctl(&bin, home.path(), &["daemon", "stop"]);

    scale_figures(&bin);
}

/// The scale part, at the sizes the environment asks for.
fn scale_figures(bin: &Path) {
    let n = std::env::var("LOONG_SCALE_PLUGINS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SCALE_PLUGINS);
    let tools = std::env::var("LOONG_SCALE_MCP_TOOLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SCALE_MCP_TOOLS);
    if n > 0 || tools > 0 {
        scale(bin, n, tools);
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

/// Times `req` `n` times over `c`; reports the samples' median and p99 beside `floor`'s.
fn timed(
    c: &mut Client,
    name: &str,
    n: usize,
    floor: (&str, Duration),
    req: impl Fn(usize) -> ControlRequest,
) {
    let mut samples: Vec<Duration> = (0..n)
        .map(|i| {
            let t = Instant::now();
            let r = call(c, req(i));
            assert!(
                matches!(
                    r,
                    ControlResponse::ToolHits(_) | ControlResponse::Plugins(_)
                ),
                "{r:?}"
            );
            t.elapsed()
        })
        .collect();
    report(name, &mut samples);
    figure(&Figure {
        name,
        value: percentile(&mut samples, 0.5).as_secs_f64() * 1e3,
        unit: "ms",
        p99: Some(percentile(&mut samples, 0.99).as_secs_f64() * 1e3),
        floor: Some((floor.0, floor.1.as_secs_f64() * 1e3)),
        goal: "p99 ≤ 50 ms",
    });
}

/// Every page of `plugins list`; returns the plugins listed.
fn list_all(c: &mut Client) -> usize {
    let mut after = None;
    let mut n = 0;
    loop {
        let ControlResponse::Plugins(page) = call(
            c,
            ControlRequest::PluginList(loong_ipc::Page { after, limit: 0 }),
        ) else {
            panic!("plugins list answered something else")
        };
        let Some(last) = page.last() else {
            return n;
        };
        n += page.len();
        after = Some(last.id.clone());
    }
}

/// `n` copies of echo, each its own plugin (the same module: one compilation, then the
/// compiled-module cache), with words to search for in their summaries; and MCP servers
/// (`scale_mcp.py`, [`TOOLS_PER_SERVER`] tools each) advertising `tools` tools in all.
fn scale(bin: &Path, n: usize, tools: usize) {
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
    // The server's script, where the sandbox may read it (the home is private).
    let servers = tempfile::tempdir_in("/tmp").expect("server dir");
    let script = servers.path().join("scale_mcp.py");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/scale_mcp.py"),
        &script,
    )
    .expect("copy the server");
    for (path, mode) in [(servers.path(), 0o755), (script.as_path(), 0o644)] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod");
    }
    let server_count = tools.div_ceil(TOOLS_PER_SERVER);
    for s in 0..server_count {
        let id = format!("mcp-{s:03}");
        let dir = home.path().join("plugins").join(&id);
        std::fs::create_dir_all(&dir).expect("plugin dir");
        let count = TOOLS_PER_SERVER.min(tools - s * TOOLS_PER_SERVER);
        let args = [
            script.display().to_string(),
            s.to_string(),
            count.to_string(),
            TOOLS_PAGE.to_string(),
        ];
        let m = serde_json::json!({
            "api_version": "v1alpha1", "plugin_id": id, "version": "0.1.0",
            "summary": format!("service {s}'s records: issues, invoices, tickets and reports"),
            "capabilities": ["filesystem_read"],
            "metadata": {"bridge_kind": "mcp_stdio", "command": "/usr/bin/python3",
                "args_json": serde_json::to_string(&args).expect("args")},
            "sandbox": {"read": [servers.path().display().to_string()], "timeout_ms": 20000},
        });
        std::fs::write(dir.join("loong.plugin.json"), m.to_string()).expect("manifest");
    }
    let t = Instant::now();
    loongctl(bin, home.path(), &["daemon", "start"]);
    let start = t.elapsed();
    let mut c = connect(&home.path().join("run/loongd.sock"));
    let ControlResponse::Status(st) = call(&mut c, ControlRequest::Status) else {
        panic!("status answered something else")
    };
    let ControlResponse::ToolHits(every) = call(
        &mut c,
        ControlRequest::ToolSearch(loong_ipc::ToolSearchRequest {
            query: "records".into(),
            trust: None,
            limit: 1,
        }),
    ) else {
        panic!("tools search answered something else")
    };
    println!(
        "scale: {n} WASM plugins, {server_count} MCP servers with {tools} tools ({} plugins listed)",
        list_all(&mut c)
    );
    assert!(
        server_count == 0 || !every.is_empty(),
        "no MCP tool is searchable"
    );
    println!(
        "{:44} {:8.2} ms",
        "loongd start (discovery loads each)",
        start.as_secs_f64() * 1e3
    );
    figure(&Figure {
        name: "loongd start (scale)",
        value: start.as_secs_f64() * 1e3,
        unit: "ms",
        goal: "≤ 2 s (500 plugins); reported (20,000 MCP tools)",
        ..Default::default()
    });
    let mut reloads: Vec<Duration> = (0..RELOADS)
        .map(|_| {
            let t = Instant::now();
            call(&mut c, ControlRequest::PluginReload);
            t.elapsed()
        })
        .collect();
    report("plugins reload", &mut reloads);
    figure(&Figure {
        name: "plugins reload (scale)",
        value: percentile(&mut reloads, 0.5).as_secs_f64() * 1e3,
        unit: "ms",
        goal: "≤ 1 s (500 plugins); reported (20,000 MCP tools)",
        ..Default::default()
    });
    let queries = [
        "alpha input",
        "create invoice",
        "search ticket gamma",
        "export report workspace",
        "delete",
    ];
    // The floor: a control round trip that neither searches nor writes a record.
    let mut statuses: Vec<Duration> = (0..SEARCHES)
        .map(|_| {
            let t = Instant::now();
            call(&mut c, ControlRequest::Status);
            t.elapsed()
        })
        .collect();
    let status = report("control status (floor)", &mut statuses);
    let floor = ("status round trip", status);
    timed(&mut c, "tools search (20 hits)", SEARCHES, floor, |i| {
        ControlRequest::ToolSearch(loong_ipc::ToolSearchRequest {
            query: queries[i % queries.len()].into(),
            trust: None,
            limit: 20,
        })
    });
    timed(
        &mut c,
        "tools search \"\" (every tool, first 100)",
        SEARCHES / 4,
        floor,
        |_| {
            ControlRequest::ToolSearch(loong_ipc::ToolSearchRequest {
                query: String::new(),
                trust: None,
                limit: 100,
            })
        },
    );
    let mut lists: Vec<Duration> = (0..SEARCHES / 4)
        .map(|_| {
            let t = Instant::now();
            list_all(&mut c);
            t.elapsed()
        })
        .collect();
    report("plugins list (every page)", &mut lists);
    let rss = rss_kib(st.pid);
    println!("{:44} {} KiB", "loongd resident memory", rss);
    figure(&Figure {
        name: "loongd resident memory (scale)",
        value: rss as f64 / 1024.0,
        unit: "MiB",
        goal: "≤ 64 MiB (500 plugins); ≤ 128 MiB (and 20,000 MCP tools)",
        ..Default::default()
    });
    drop(c);
    loongctl(bin, home.path(), &["daemon", "stop"]);
}
