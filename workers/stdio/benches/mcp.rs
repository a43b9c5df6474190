//! The same trivial MCP tool (`get_current_time` of the real `mcp-server-time`, from PyPI)
//! called two ways, in one run:
//!
//! - directly, from the official Python `mcp` client over stdio (`mcp_direct.py`);
//! - through Loong: a control client → loongd (decision, audit) → the stdio worker → the
//!   same server, confined, and back; with the audit trail's default durability (an fsync per
//!   commit) and with `sync = "normal"`.
//!
//! Medians and 99th percentiles of hand-timed samples; the goal is Loong at most 1.3× the
//! direct call. It drives the release binaries (`scripts/bench` builds them) and the servers
//! `scripts/install-mcp-servers` installs; without either it says so and measures nothing.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use loong_ipc::{
    client::{Client, ConnectOptions},
    ControlRequest, ControlResponse, InvokeRequest, PeerKind,
};

#[path = "../../bench_support.rs"]
mod bench_support;
use bench_support::{percentile, release_dir};

const CALLS: usize = 1_000;
const WARMUP: usize = 100;
const MCP_ROOT: &str = "/opt/loong-mcp";

fn direct(server: &Path) -> Duration {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/mcp_direct.py");
    let out = Command::new(Path::new(MCP_ROOT).join("venv/bin/python"))
        .arg(script)
        .arg(server)
        .arg(CALLS.to_string())
        .arg(WARMUP.to_string())
        .current_dir("/tmp")
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "the direct client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON figures");
    let med = v["median_us"].as_f64().expect("median");
    println!(
        "{:44} median {:9.1} µs   p99 {:9.1} µs   (n = {})",
        "direct: Python mcp client → server",
        med,
        v["p99_us"].as_f64().unwrap_or(0.0),
        v["n"]
    );
    Duration::from_secs_f64(med / 1e6)
}

fn through_loong(bin: &Path, server: &Path, config: &str, name: &str, direct: Duration) {
    let home = tempfile::tempdir_in("/tmp").expect("home");
    let dir = home.path().join("plugins/time");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    let manifest = serde_json::json!({
        "api_version": "v1alpha1", "plugin_id": "time", "version": "0.1.0",
        "metadata": {"bridge_kind": "mcp_stdio", "command": server,
            "args_json": "[\"--local-timezone\", \"UTC\"]"},
        "sandbox": {"timeout_ms": 10000},
    });
    std::fs::write(dir.join("loong.plugin.json"), manifest.to_string()).expect("manifest");
    std::fs::write(home.path().join("loongd.toml"), config).expect("config");
    let ctl = |args: &[&str]| {
        Command::new(bin.join("loongctl"))
            .arg("--home")
            .arg(home.path())
            .args(args)
            .output()
            .expect("loongctl")
    };
    let out = ctl(&["daemon", "start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let opts = ConnectOptions {
        peer_kind: PeerKind::Operator,
        build: "bench".into(),
        timeout: Duration::from_secs(5),
    };
    let mut c = Client::connect(&home.path().join("run/loongd.sock"), &opts).expect("connect");
    let mut call = || -> u64 {
        let r: ControlResponse = c
            .call(
                ControlRequest::Invoke(InvokeRequest {
                    tool: "time/get_current_time".into(),
                    input: r#"{"timezone":"UTC"}"#.into(),
                    token: None,
                }),
                Duration::from_secs(60),
            )
            .expect("call");
        let ControlResponse::Invoked(out) = r else {
            panic!("unexpected answer {r:?}")
        };
        out.worker_wall_us
    };
    for _ in 0..WARMUP {
        call();
    }
    let mut worker = Vec::with_capacity(CALLS);
    let mut samples: Vec<Duration> = (0..CALLS)
        .map(|_| {
            let t = Instant::now();
            worker.push(Duration::from_micros(call()));
            t.elapsed()
        })
        .collect();
    let med = percentile(&mut samples, 0.5);
    println!(
        "{:44} median {:9.1} µs   p99 {:9.1} µs   (n = {CALLS})",
        name,
        med.as_secs_f64() * 1e6,
        percentile(&mut samples, 0.99).as_secs_f64() * 1e6,
    );
    println!(
        "{:44} median {:9.1} µs   (the worker ↔ server exchange alone)",
        "  of which in the worker",
        percentile(&mut worker, 0.5).as_secs_f64() * 1e6,
    );
    println!(
        "{:44} {:.2}× (goal ≤ 1.3×)",
        "  … / direct",
        med.as_secs_f64() / direct.as_secs_f64()
    );
    ctl(&["daemon", "stop"]);
}

fn main() {
    let server = Path::new(MCP_ROOT).join("venv/bin/mcp-server-time");
    let Some(bin) = release_dir("loong-worker-stdio") else {
        println!("mcp: skipped: the release binaries are missing; run scripts/bench");
        return;
    };
    if !server.exists() {
        println!(
            "mcp: skipped: {} is missing; run scripts/install-mcp-servers",
            server.display()
        );
        return;
    }
    let direct = direct(&server);
    through_loong(
        &bin,
        &server,
        "",
        "through Loong (audit sync = full)",
        direct,
    );
    through_loong(
        &bin,
        &server,
        "[audit]\nsync = \"normal\"\n",
        "through Loong (audit sync = normal)",
        direct,
    );
}
