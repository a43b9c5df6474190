//! A plugin call end to end, against its floors, in one run:
//!
//! - the in-process floor: a fresh `Store`, instantiation and the echo plugin's `run`;
//! - a raw Unix-socket round trip (64 bytes each way, blocking, two threads);
//! - the warm call: a control client → loongd (decision, audit) → a WASM worker → back, with
//!   the audit trail's default durability (an fsync per commit) and with `sync = "normal"`;
//! - a nested kernel call: `tool-caller` calling echo through `call_tool`, against a
//!   control-socket invoke of echo, interleaved;
//! - the cold call: a worker killed, then the next call (spawn, handshake, load, call);
//! - 1,000 concurrent calls over 50 connections, each answered exactly once, against the same
//!   burst's shape with none of its work (`e2e/burst_floor.rs`) run just before it;
//! - resident memory of an idle loongd and an idle worker.
//!
//! It drives the release binaries (`cargo build --release --bins`, which `scripts/bench`
//! does), or those in `LOONG_BIN_DIR`, on a temporary home; without them it says so and measures only the floor. Times are
//! medians and 99th percentiles of hand-timed samples: the goal is stated as a ratio to the
//! floors measured here, in the same run, on the same machine.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use loong_ipc::{
    client::{Client, ConnectOptions},
    ControlRequest, ControlResponse, InvokeRequest, PeerKind,
};
use loong_worker_wasm::{PluginSpec, WasmEngine};

#[path = "../../bench_support.rs"]
mod bench_support;
use bench_support::{figure, percentile, release_dir, us, Figure};
#[path = "e2e/burst_floor.rs"]
mod burst_floor;

const WARM_CALLS: usize = 3_000;
const FLOOR_CALLS: usize = 20_000;
const RTT_SAMPLES: usize = 20_000;
const COLD_SAMPLES: usize = 20;
const CONCURRENT_THREADS: usize = 50;
const CONCURRENT_PER_THREAD: usize = 20;
/// Calls per connection in the concurrent burst, in place of [`CONCURRENT_PER_THREAD`]: a
/// burst long enough to profile (`perf stat -p`, `perf record -p`).
const BURST_ENV: &str = "LOONG_E2E_BURST_PER_CONNECTION";
/// Set to `1`: only the concurrent burst runs (after the warm-up), and the bench prints
/// loongd's pid and waits `LOONG_E2E_BURST_DELAY_MS` before it, to attach a profiler.
const BURST_ONLY_ENV: &str = "LOONG_E2E_BURST_ONLY";
const BURST_DELAY_ENV: &str = "LOONG_E2E_BURST_DELAY_MS";

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.parse().ok()
}

fn report(name: &str, samples: &mut [Duration]) -> Duration {
    report_p99(name, samples).0
}

/// [`report`], returning the 99th percentile too.
fn report_p99(name: &str, samples: &mut [Duration]) -> (Duration, Duration) {
    let med = percentile(samples, 0.5);
    let p99 = percentile(samples, 0.99);
    println!(
        "{name:40} median {:9.1} µs   p99 {:9.1} µs   (n = {})",
        med.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        samples.len()
    );
    (med, p99)
}

/// A figure in µs with its p99 and no floor of its own (a floor, or a figure printed beside
/// one).
fn figure_us(name: &str, med: Duration, p99: Duration) {
    figure(&Figure {
        name,
        value: us(med),
        unit: "µs",
        p99: Some(us(p99)),
        ..Figure::default()
    });
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins")
}

fn floor() -> Duration {
    let engine = WasmEngine::new().expect("engine");
    let module = std::fs::read(examples().join("echo/plugin.wasm")).expect("echo module");
    let echo = engine
        .load(PluginSpec {
            plugin_id: "echo".into(),
            module,
            entrypoint: "run".into(),
            ..PluginSpec::default()
        })
        .expect("echo loads");
    let input = br#"{"ping":1}"#;
    let mut samples: Vec<Duration> = (0..FLOOR_CALLS)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(echo.invoke(input).expect("call"));
            t.elapsed()
        })
        .collect();
    let (med, p99) = report_p99("floor: in-process call (fresh Store)", &mut samples);
    figure_us("in-process plugin call (fresh Store)", med, p99);
    med
}

fn unix_round_trip() -> Duration {
    let (mut a, mut b) = UnixStream::pair().expect("pair");
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let msg = [7u8; 64];
    let mut buf = [0u8; 64];
    let mut samples: Vec<Duration> = (0..RTT_SAMPLES)
        .map(|_| {
            let t = Instant::now();
            a.write_all(&msg).expect("write");
            a.read_exact(&mut buf).expect("read");
            t.elapsed()
        })
        .collect();
    drop(a);
    let _ = echo.join();
    let (med, p99) = report_p99("floor: raw unix-socket round trip", &mut samples);
    figure_us("raw Unix round trip (64 B)", med, p99);
    med
}

/// Bytes of the file the overwrite floor writes into, laid out first (the trail's
/// write-ahead log is laid out to about 4.6 MiB: `loongd/src/audit/wal.rs`).
const FSYNC_FLOOR_FILE_BYTES: usize = 4 << 20;
/// Stride of the overwrite floor's writes: one SQLite frame (a 4 KiB page and its header).
const FSYNC_FLOOR_STRIDE: usize = 4096 + 24;

/// One `fdatasync` of a small write in `dir`, the floor of a durable audit commit, which
/// every allowed call waits for (overlapped with the worker's run). The trail's log is laid
/// out ahead, so a commit overwrites written blocks: the floor is 256 bytes written over a
/// file laid out the same way, at each frame's place in turn. The `fdatasync` of an append,
/// which also waits for a journal commit of the file system (the floor before the log was
/// laid out, and larger), is printed beside it.
fn fsync_floor(dir: &Path) -> Duration {
    use std::os::unix::fs::FileExt;
    let sample = |path: &Path, overwrite: bool| -> Vec<Duration> {
        let mut f = std::fs::File::create(path).expect("fsync file");
        if overwrite {
            f.write_all(&vec![0u8; FSYNC_FLOOR_FILE_BYTES])
                .expect("lay out");
            f.sync_all().expect("fsync");
        }
        let v = (0..500)
            .map(|i| {
                if overwrite {
                    let at = (i * FSYNC_FLOOR_STRIDE) % (FSYNC_FLOOR_FILE_BYTES - 256);
                    f.write_all_at(&[1u8; 256], at as u64).expect("write");
                } else {
                    f.write_all(&[1u8; 256]).expect("write");
                }
                let t = Instant::now();
                f.sync_data().expect("fsync");
                t.elapsed()
            })
            .collect();
        let _ = std::fs::remove_file(path);
        v
    };
    let mut appends = sample(&dir.join("fsync-floor-append"), false);
    let (append, append_p99) = report_p99("fsync of an append (the file grows)", &mut appends);
    let mut samples = sample(&dir.join("fsync-floor"), true);
    let (med, p99) = report_p99("floor: fsync of an overwrite (audit commit)", &mut samples);
    figure_us("fsync of a small overwrite", med, p99);
    figure_us("fsync of a small append", append, append_p99);
    med
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn descendant(pid: u32, comm: &str) -> Option<u32> {
    burst_floor::process_tree(pid).into_iter().find(|p| {
        std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|n| n.trim().starts_with(comm))
    })
}

fn invoke(c: &mut Client, n: u64) -> u64 {
    invoke_tool(c, "echo", n)
}

/// Calls echo with `{"n": n}`; returns the `n` its answer carries back.
fn invoke_echoed(c: &mut Client, n: u64) -> u64 {
    let r: ControlResponse = c
        .call(
            ControlRequest::Invoke(InvokeRequest {
                tool: "echo".into(),
                input: format!(r#"{{"n":{n}}}"#),
                token: None,
            }),
            Duration::from_secs(60),
        )
        .expect("call");
    let ControlResponse::Invoked(out) = r else {
        panic!("unexpected answer {r:?}")
    };
    let v: serde_json::Value = serde_json::from_str(&out.output).expect("echo answers JSON");
    find_n(&v).unwrap_or(u64::MAX)
}

/// The first `"n"` number anywhere in `v`.
fn find_n(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Object(m) => m
            .get("n")
            .and_then(serde_json::Value::as_u64)
            .or_else(|| m.values().find_map(find_n)),
        serde_json::Value::Array(a) => a.iter().find_map(find_n),
        _ => None,
    }
}

fn invoke_tool(c: &mut Client, tool: &str, n: u64) -> u64 {
    let r: ControlResponse = c
        .call(
            ControlRequest::Invoke(InvokeRequest {
                tool: tool.into(),
                input: format!(r#"{{"n":{n}}}"#),
                token: None,
            }),
            Duration::from_secs(60),
        )
        .expect("call");
    let ControlResponse::Invoked(out) = r else {
        panic!("unexpected answer {r:?}")
    };
    out.worker
}

fn connect(socket: &Path) -> Client {
    let opts = ConnectOptions {
        peer_kind: PeerKind::Operator,
        build: "bench".into(),
        timeout: Duration::from_secs(5),
    };
    Client::connect(socket, &opts).expect("connect")
}

/// A temporary home with the echo and tool-caller plugins and `config` as loongd.toml.
fn home_with_echo(config: &str) -> tempfile::TempDir {
    let home = tempfile::tempdir_in("/tmp").expect("home");
    for name in ["echo", "tool-caller"] {
        let plugins = home.path().join("plugins").join(name);
        std::fs::create_dir_all(&plugins).expect("plugins");
        for f in ["loong.plugin.json", "plugin.wasm"] {
            std::fs::copy(examples().join(name).join(f), plugins.join(f)).expect("copy");
        }
    }
    std::fs::write(home.path().join("loongd.toml"), config).expect("config");
    home
}

fn loongctl(bin: &Path, home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin.join("loongctl"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .expect("loongctl")
}

/// Warm calls with `[audit] sync = "normal"`: the same path without an fsync on it.
fn warm_without_fsync(bin: &Path, budget: Duration) {
    let home = home_with_echo("[audit]\nsync = \"normal\"\n");
    let out = loongctl(bin, home.path(), &["daemon", "start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = connect(&home.path().join("run/loongd.sock"));
    for i in 0..200 {
        invoke(&mut c, i);
    }
    let mut samples: Vec<Duration> = (0..WARM_CALLS as u64)
        .map(|i| {
            let t = Instant::now();
            invoke(&mut c, i);
            t.elapsed()
        })
        .collect();
    let (warm, p99) = report_p99("warm call, audit sync = normal", &mut samples);
    figure(&Figure {
        name: "warm call, audit.sync = normal",
        value: us(warm),
        unit: "µs",
        p99: Some(us(p99)),
        floor: Some(("in-process call + 2 round trips", us(budget))),
        goal: "≤ 2×",
    });
    println!(
        "{:40} {:.2}× (goal ≤ 2×)",
        "  … / (floor + 2 round trips)",
        warm.as_secs_f64() / budget.as_secs_f64()
    );
    loongctl(bin, home.path(), &["daemon", "stop"]);
}

fn end_to_end(bin: &Path, floor: Duration, rtt: Duration) {
    let home = home_with_echo(&std::env::var("LOONG_E2E_CONFIG").unwrap_or_default());
    let ctl = |args: &[&str]| loongctl(bin, home.path(), args);
    let sync = fsync_floor(home.path());
    let out = ctl(&["daemon", "start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let socket = home.path().join("run/loongd.sock");
    let mut c = connect(&socket);
    for i in 0..200 {
        invoke(&mut c, i);
    }
    if std::env::var(BURST_ONLY_ENV).is_ok_and(|v| v == "1") {
        let status = ctl(&["status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status");
        let loongd = status["pid"].as_u64().expect("pid") as u32;
        println!("loongd pid {loongd}");
        let delay = env_usize(BURST_DELAY_ENV).unwrap_or(0) as u64;
        std::thread::sleep(Duration::from_millis(delay));
        burst(&socket, loongd);
        ctl(&["daemon", "stop"]);
        return;
    }

    let mut samples: Vec<Duration> = (0..WARM_CALLS as u64)
        .map(|i| {
            let t = Instant::now();
            invoke(&mut c, i);
            t.elapsed()
        })
        .collect();
    let (warm, p99) = report_p99("warm call: client → loongd → worker", &mut samples);
    let budget = floor + rtt * 2;
    figure(&Figure {
        name: "warm call, audit.sync = full",
        value: us(warm),
        unit: "µs",
        p99: Some(us(p99)),
        floor: Some(("in-process call + 2 round trips + fsync", us(budget + sync))),
        goal: "≤ 1.2×",
    });
    println!(
        "{:40} {:.2}× (floor + 2 round trips = {:.1} µs; goal ≤ 2×)",
        "warm / (floor + 2 round trips)",
        warm.as_secs_f64() / budget.as_secs_f64(),
        budget.as_secs_f64() * 1e6
    );
    println!(
        "{:40} {:.2}× (with one durable audit commit = {:.1} µs)",
        "warm / (floor + 2 round trips + fsync)",
        warm.as_secs_f64() / (budget + sync).as_secs_f64(),
        (budget + sync).as_secs_f64() * 1e6
    );
    warm_without_fsync(bin, budget);

    // A nested kernel call: tool-caller (a warm WASM worker) calls echo through loongd. The
    // nested call's cost is the caller's median less echo's (the caller's own work is
    // echo's: read the input, write an output), compared with a control-socket invoke of
    // echo, each run interleaved in the same loop.
    for i in 0..200 {
        invoke_tool(&mut c, "tool-caller", i);
    }
    let (mut direct, mut nested): (Vec<Duration>, Vec<Duration>) = (0..WARM_CALLS as u64)
        .map(|i| {
            let t = Instant::now();
            invoke(&mut c, i);
            let d = t.elapsed();
            let t = Instant::now();
            invoke_tool(&mut c, "tool-caller", i);
            (d, t.elapsed())
        })
        .unzip();
    let direct = report("control-socket invoke of echo", &mut direct);
    let caller = report("invoke of tool-caller (echo nested)", &mut nested);
    let kernel_call = caller.saturating_sub(direct);
    println!(
        "{:40} median {:9.1} µs   {:.2}× the control-socket invoke (goal ≤ 1.2×)",
        "  nested call_tool to echo (difference)",
        kernel_call.as_secs_f64() * 1e6,
        kernel_call.as_secs_f64() / direct.as_secs_f64()
    );

    // Idle memory, after the warm-up and before the cold and concurrent runs.
    std::thread::sleep(Duration::from_millis(300));
    let status = ctl(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status");
    let loongd_pid = status["pid"].as_u64().expect("pid") as u32;
    let workers = ctl(&["workers", "list", "--json"]);
    let workers: serde_json::Value = serde_json::from_slice(&workers.stdout).expect("workers");
    let helper = workers[0]["pid"].as_u64().expect("worker pid") as u32;
    let worker = descendant(helper, "loong-worker-wa").expect("worker process");
    println!(
        "{:40} loongd {} KiB (goal ≤ 20480), WASM worker {} KiB (goal ≤ 30720)",
        "idle resident memory",
        rss_kib(loongd_pid).unwrap_or(0),
        rss_kib(worker).unwrap_or(0)
    );

    // Cold: kill the worker (sequential calls use one), then time the next call, which finds
    // it dead and spawns, handshakes, loads and calls.
    let mut cold: Vec<Duration> = Vec::new();
    for i in 0..COLD_SAMPLES as u64 {
        let list = ctl(&["workers", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&list.stdout).expect("list");
        for id in list
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|w| w["id"].as_u64())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
        {
            ctl(&["workers", "kill", &id.to_string()]);
        }
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        invoke(&mut c, i);
        cold.push(t.elapsed());
    }
    report("cold call: spawn + load + call", &mut cold);
    burst(&socket, loongd_pid);
    ctl(&["daemon", "stop"]);
}

/// 50 connections at once, each making its calls one after the other; every answer must
/// carry its own call's input back.
fn burst(socket: &Path, loongd: u32) {
    let per_thread = env_usize(BURST_ENV).unwrap_or(CONCURRENT_PER_THREAD);
    let dir = socket.parent().expect("the socket's directory");
    let floor = burst_floor::run(dir, CONCURRENT_THREADS, per_thread);
    let floor_rate = floor.rate;
    println!(
        "{:40} {} calls, {:.0} calls/s, median {:.1} µs, p99 {:.1} µs, CPU {:.1} µs a call",
        "floor: the same burst, no work",
        CONCURRENT_THREADS * per_thread,
        floor.rate,
        us(floor.median),
        us(floor.p99),
        floor.cpu_per_call_us
    );
    figure(&Figure {
        name: "floor: the burst, no work",
        value: floor_rate,
        unit: "calls/s",
        p99: None,
        floor: None,
        goal: "",
    });
    // loongd and every process below it (its workers), and this bench (the clients' threads).
    let cpu = || burst_floor::tree_cpu_ticks(loongd) + burst_floor::cpu_ticks("self");
    let cpu_before = cpu();
    let t = Instant::now();
    let answered: Vec<(u64, u64, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CONCURRENT_THREADS)
            .map(|th| {
                s.spawn(move || {
                    let mut c = connect(socket);
                    (0..per_thread)
                        .map(|i| {
                            let n = (th * per_thread + i) as u64;
                            let t = Instant::now();
                            let echoed = invoke_echoed(&mut c, n);
                            (n, echoed, t.elapsed())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    let wall = t.elapsed();
    let cpu_per_call =
        burst_floor::ticks_us(cpu() - cpu_before) / (CONCURRENT_THREADS * per_thread) as f64;
    // Each call's answer carries its own input back: every call answered, once, with its own.
    let own = answered.iter().filter(|(n, echoed, _)| n == echoed).count();
    let unique: std::collections::BTreeSet<u64> = answered.iter().map(|(_, e, _)| *e).collect();
    let rate = answered.len() as f64 / wall.as_secs_f64();
    let mut latency: Vec<Duration> = answered.iter().map(|(_, _, d)| *d).collect();
    let (med, p99) = (
        percentile(&mut latency, 0.5),
        percentile(&mut latency, 0.99),
    );
    println!(
        "{:40} {} calls, {} answered with their own input, {} distinct, {:.0} ms, {:.0} calls/s, median {:.1} µs, p99 {:.1} µs",
        format!("concurrent: {CONCURRENT_THREADS} connections × {per_thread}"),
        answered.len(),
        own,
        unique.len(),
        wall.as_secs_f64() * 1e3,
        rate,
        us(med),
        us(p99)
    );
    assert_eq!((own, unique.len()), (answered.len(), answered.len()));
    println!(
        "{:40} {:.2}× the floor's rate (goal ≥ 20,000 calls/s); CPU {:.1} µs a call, {:.2}× the floor's",
        "  … / the same burst with no work",
        rate / floor_rate,
        cpu_per_call,
        cpu_per_call / floor.cpu_per_call_us
    );
    figure(&Figure {
        name: "1,000 concurrent calls over 50 connections (sync = full)",
        value: rate,
        unit: "calls/s",
        p99: None,
        floor: Some(("the burst's shape, no work", floor_rate)),
        goal: "≥ 20000 calls/s",
    });
    figure_us("  latency of one of them", med, p99);
}

fn main() {
    if std::env::var(burst_floor::ECHO_WORKER_ENV).is_ok_and(|v| v == "1") {
        burst_floor::echo_worker();
    }
    // `cargo bench` passes `--bench`; this binary takes no options.
    let floor = floor();
    let rtt = unix_round_trip();
    let bins = std::env::var_os("LOONG_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| release_dir("loong-worker-wasm"));
    match bins {
        Some(dir) => end_to_end(&dir, floor, rtt),
        None => println!(
            "end to end: skipped: the release binaries are missing; run `cargo build --release --bins` (scripts/bench does)"
        ),
    }
}
