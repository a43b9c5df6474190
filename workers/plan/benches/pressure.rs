//! Upstream's programmatic pressure scenarios, run through loongd against a real WASM
//! connector in its confined worker, beside each schedule's own floor measured in the same
//! run.
//!
//! Each scenario is a `programmatic_tool_call` plan sent to a running loongd (release
//! binaries) by a control client: loongd decides and audits the call, the restricted plan
//! worker interprets the plan, and every connector call is a kernel call that loongd decides,
//! audits and runs in a WASM worker. The connector `webhook` is a WASM plugin that writes its
//! input back, or fails (exit code 5) when the input's first key is `FAIL`.
//!
//! The floor is the same plan run by the same interpreter in this process against a kernel
//! that answers at once: what the schedule itself costs (its rate-limit waits, its
//! cooldowns), with no IPC, decision, audit or WASM. The goal (issue 16) is a p95 within
//! 1.1× of that floor.
//!
//! Upstream's connector is an in-process stub with a test hook that sleeps (`delay_ms`) and
//! fails a given number of times; a real WASM guest has no clock, so the calls here take
//! what the path takes, and the failing calls fail every time. `rate_limit_steady_state` has
//! 12 calls (upstream's batch has 6 under `max_calls: 12`; the issue names 12).
//!
//! It drives the release binaries (`cargo build --release --bins`, which `scripts/bench`
//! does); without them it says so and measures only the floors.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use loong_ipc::{
    client::{Client, ConnectOptions},
    ControlRequest, ControlResponse, InvokeRequest, PeerKind,
};
use loong_worker_plan::{CallError, FailureClass, Kernel, Options};
use serde_json::{json, Value};

#[path = "../../bench_support.rs"]
mod bench_support;
use bench_support::{percentile, release_dir};

/// Runs of the whole suite (a fresh loongd each).
const RUNS: usize = 3;
/// Plans per scenario per run, after the warm-up.
const ITERATIONS: usize = 30;
const WARM_UP: usize = 3;
const TOOL: &str = "programmatic_tool_call";

/// The connector: echoes its input, or exits with 5 when the input starts `{"FAIL`.
const WEBHOOK_WAT: &str = r#"
(module
  (import "loong" "input_len" (func $input_len (result i32)))
  (import "loong" "read_input" (func $read_input (param i32 i32) (result i32)))
  (import "loong" "write_output" (func $write_output (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (result i32)
    (local $n i32)
    (local.set $n (call $input_len))
    (if (i32.gt_u (local.get $n) (i32.const 60000)) (then (return (i32.const 3))))
    (if (i32.lt_s (call $read_input (i32.const 1024) (local.get $n)) (i32.const 0))
      (then (return (i32.const 1))))
    (if (i32.eq (i32.load8_u (i32.const 1026)) (i32.const 70))
      (then (return (i32.const 5))))
    (if (i32.lt_s (call $write_output (i32.const 1024) (local.get $n)) (i32.const 0))
      (then (return (i32.const 2))))
    (i32.const 0)))
"#;

struct Scenario {
    name: &'static str,
    plan: Value,
    /// The schedule's floor as arithmetic (what the waits alone add up to), for the table.
    schedule_ms: u64,
}

fn call(id: &str, priority: &str, fail: bool) -> Value {
    let payload = if fail {
        json!({"FAIL": true, "channel": id})
    } else {
        json!({"channel": id, "text": "pressure"})
    };
    json!({"call_id": id, "connector_name": "webhook", "operation": "notify",
        "priority_class": priority, "payload": payload})
}

fn concurrency(max: usize, adaptive: bool) -> Value {
    json!({"max_in_flight": max, "min_in_flight": 1, "fairness": "weighted_round_robin",
        "adaptive_budget": adaptive, "high_weight": 3, "normal_weight": 2, "low_weight": 1,
        "adaptive_recovery_successes": 2, "adaptive_upshift_step": 1,
        "adaptive_downshift_step": 1,
        "adaptive_reduce_on": ["connector_execution_error", "circuit_open"]})
}

fn scenarios() -> Vec<Scenario> {
    let priorities = ["high", "normal", "normal", "low", "high", "low"];
    let rate_calls: Vec<Value> = (0..12)
        .map(|i| call(&format!("r{}", i + 1), priorities[i % 6], false))
        .collect();
    let no_retry = json!({"max_attempts": 1, "initial_backoff_ms": 10, "max_backoff_ms": 20,
        "jitter_ratio": 0.0, "adaptive_jitter": false});
    let mut a_fail = call("a-fail", "high", true);
    a_fail["retry"] = json!({"max_attempts": 2, "initial_backoff_ms": 20, "max_backoff_ms": 80,
        "jitter_ratio": 0.0, "adaptive_jitter": false});
    let mut c_fail = call("c-fail", "high", true);
    c_fail["retry"] = no_retry;
    let breaker = json!({"failure_threshold": 1, "cooldown_ms": 120, "half_open_max_calls": 1,
        "success_threshold": 1});
    vec![
        Scenario {
            name: "rate_limit_steady_state",
            plan: json!({
                "caller": "pressure-suite", "max_calls": 12, "allowed_connectors": ["webhook"],
                "connector_rate_limits": {"webhook": {"min_interval_ms": 12}},
                "concurrency": concurrency(4, false), "return_step": "fanout",
                "steps": [{"kind": "connector_batch", "step_id": "fanout", "parallel": true,
                    "continue_on_error": false, "calls": rate_calls}]
            }),
            schedule_ms: 11 * 12,
        },
        Scenario {
            name: "adaptive_concurrency_recovery",
            plan: json!({
                "caller": "pressure-suite", "max_calls": 12, "allowed_connectors": ["webhook"],
                "connector_rate_limits": {"webhook": {"min_interval_ms": 5}},
                "concurrency": concurrency(4, true), "return_step": "fanout",
                "steps": [{"kind": "connector_batch", "step_id": "fanout", "parallel": true,
                    "continue_on_error": true, "calls": [
                        a_fail, call("a1", "high", false), call("a2", "normal", false),
                        call("a3", "normal", false), call("a4", "low", false),
                        call("a5", "low", false)]}]
            }),
            // Six calls five ms apart (the failure is permanent: no retry, no backoff).
            schedule_ms: 5 * 5,
        },
        Scenario {
            name: "circuit_open_pressure",
            plan: json!({
                "caller": "pressure-suite", "max_calls": 10, "allowed_connectors": ["webhook"],
                "connector_circuit_breakers": {"webhook": breaker},
                "concurrency": concurrency(1, false), "return_step": "fanout",
                "steps": [{"kind": "connector_batch", "step_id": "fanout", "parallel": false,
                    "continue_on_error": true, "calls": [
                        c_fail, call("c1", "normal", false), call("c2", "normal", false),
                        call("c3", "low", false)]}]
            }),
            // One call; the breaker refuses the other three without one.
            schedule_ms: 0,
        },
        Scenario {
            name: "circuit_half_open_transition",
            // open (a failure) → half-open once the 120 ms cooldown passed (the second call
            // of `pacer`, rate-limited to 130 ms, holds the plan back) → closed (one success).
            plan: json!({
                "caller": "pressure-suite", "max_calls": 4,
                "allowed_connectors": ["webhook", "pacer"],
                "connector_circuit_breakers": {"webhook": breaker},
                "connector_rate_limits": {"pacer": {"min_interval_ms": 130}},
                "concurrency": concurrency(1, false), "return_step": "probe",
                "steps": [
                    {"kind": "connector_batch", "step_id": "trip", "parallel": false,
                        "continue_on_error": true, "calls": [call("h-fail", "high", true)]},
                    {"kind": "connector_call", "step_id": "p1", "connector_name": "pacer",
                        "payload": {"n": 1}},
                    {"kind": "connector_call", "step_id": "p2", "connector_name": "pacer",
                        "payload": {"n": 2}},
                    {"kind": "connector_call", "step_id": "probe", "connector_name": "webhook",
                        "payload": {"n": 3}}
                ]
            }),
            schedule_ms: 130,
        },
    ]
}

/// The kernel of the floor: answers at once, like the connector (a `FAIL` input fails).
struct Instant0;

impl Kernel for Instant0 {
    async fn call_tool(&self, _tool: &str, input: Value) -> Result<Value, CallError> {
        if input.get("FAIL").is_some() {
            return Err(CallError::ToolFailed {
                class: FailureClass::Permanent,
                message: "exit code 5".into(),
            });
        }
        Ok(input)
    }
}

/// The plan run in this process against [`Instant0`], on the real clock.
fn floor_once(plan: &[u8]) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let t = Instant::now();
    let answer = rt.block_on(loong_worker_plan::run(&Instant0, plan, Options::default()));
    let took = t.elapsed();
    answer.expect("the floor's plan runs");
    took
}

fn connect(socket: &Path) -> Client {
    let opts = ConnectOptions {
        peer_kind: PeerKind::Operator,
        build: "bench".into(),
        timeout: Duration::from_secs(5),
    };
    Client::connect(socket, &opts).expect("connect")
}

/// One plan through loongd: its wall time and the connector calls it made.
fn invoke(c: &mut Client, plan: &str) -> (Duration, u64, Value) {
    let t = Instant::now();
    let r: ControlResponse = c
        .call(
            ControlRequest::Invoke(InvokeRequest {
                tool: TOOL.into(),
                input: plan.into(),
                token: None,
            }),
            Duration::from_secs(60),
        )
        .expect("the plan runs");
    let took = t.elapsed();
    let ControlResponse::Invoked(out) = r else {
        panic!("unexpected answer {r:?}")
    };
    let answer: Value = serde_json::from_str(&out.output).expect("the answer is JSON");
    let calls = answer["connector_calls"].as_u64().expect("connector_calls");
    (took, calls, answer)
}

fn home() -> tempfile::TempDir {
    let home = tempfile::Builder::new()
        .prefix("lp")
        .tempdir_in("/tmp")
        .expect("home");
    let module = wat::parse_str(WEBHOOK_WAT).expect("the connector compiles");
    for id in ["webhook", "pacer"] {
        let dir = home.path().join("plugins").join(id);
        std::fs::create_dir_all(&dir).expect("plugin dir");
        std::fs::write(dir.join("plugin.wasm"), &module).expect("module");
        std::fs::write(
            dir.join("loong.plugin.json"),
            format!(
                r#"{{"api_version": "v1alpha1", "plugin_id": "{id}", "version": "0.1.0",
                "summary": "pressure connector", "capabilities": [],
                "metadata": {{"bridge_kind": "wasm", "component": "plugin.wasm"}},
                "sandbox": {{"input": "bare", "tier": "restricted"}}}}"#
            ),
        )
        .expect("manifest");
    }
    // LOONG_BENCH_AUDIT_SYNC=normal measures the path without an fsync per commit.
    let sync = std::env::var("LOONG_BENCH_AUDIT_SYNC").unwrap_or_else(|_| "full".into());
    std::fs::write(
        home.path().join("loongd.toml"),
        format!("[builtins]\nplans = true\n\n[workers]\nwasm_pool_size = 4\n\n[audit]\nsync = {sync:?}\n"),
    )
    .expect("config");
    home
}

fn loongctl(bin: &Path, home: &Path, args: &[&str]) {
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
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Checks what each scenario is about held in `answer`.
fn check(name: &str, answer: &Value) {
    let out = &answer["result"];
    match name {
        "rate_limit_steady_state" => {
            assert_eq!(out["success_calls"], 12, "{answer}");
            assert!(
                out["scheduler"]["peak_in_flight"].as_u64() >= Some(2),
                "{answer}"
            );
        }
        "adaptive_concurrency_recovery" => {
            assert_eq!(out["failed_calls"], 1, "{answer}");
            assert!(
                out["scheduler"]["budget_reductions"].as_u64() >= Some(1),
                "{answer}"
            );
        }
        "circuit_open_pressure" => {
            for c in ["c1", "c2", "c3"] {
                assert_eq!(out["by_call"][c]["error_code"], "circuit_open", "{answer}");
            }
        }
        "circuit_half_open_transition" => {
            assert_eq!(
                answer["telemetry"][0]["breakers"]["webhook"], "open",
                "{answer}"
            );
            let probe = &out["execution"];
            assert_eq!(probe["circuit_phase_before"], "half_open", "{answer}");
            assert_eq!(probe["circuit_phase_after"], "closed", "{answer}");
        }
        _ => {}
    }
}

fn main() {
    // Criterion's harness flags (`--bench`) are not ours.
    let scenarios = scenarios();
    let plans: Vec<String> = scenarios.iter().map(|s| s.plan.to_string()).collect();
    let bin: Option<PathBuf> =
        release_dir("loong-worker-plan").filter(|d| d.join("loong-worker-wasm").exists());
    if bin.is_none() {
        println!(
            "pressure: the release binaries are missing (cargo build --release --bins); floors only"
        );
    }
    println!(
        "{:32} {:>4} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>7}",
        "scenario",
        "run",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "plans/s",
        "calls/s",
        "floor p50",
        "sched ms",
        "p95/flr"
    );
    for run in 1..=RUNS {
        let home = home();
        let mut client = bin.as_ref().map(|b| {
            loongctl(b, home.path(), &["daemon", "start"]);
            connect(&home.path().join("run/loongd.sock"))
        });
        for (s, plan) in scenarios.iter().zip(&plans) {
            let mut floor: Vec<Duration> = (0..ITERATIONS)
                .map(|_| floor_once(plan.as_bytes()))
                .collect();
            let floor_p50 = percentile(&mut floor, 0.5);
            let Some(c) = client.as_mut() else {
                println!(
                    "{:32} {run:>4} floor p50 {:.1} ms (schedule {} ms)",
                    s.name,
                    ms(floor_p50),
                    s.schedule_ms
                );
                continue;
            };
            for _ in 0..WARM_UP {
                let (_, _, answer) = invoke(c, plan);
                check(s.name, &answer);
            }
            let mut samples = Vec::with_capacity(ITERATIONS);
            let mut calls = 0u64;
            let started = Instant::now();
            for _ in 0..ITERATIONS {
                let (took, n, answer) = invoke(c, plan);
                check(s.name, &answer);
                samples.push(took);
                calls += n;
            }
            let wall = started.elapsed().as_secs_f64();
            let p50 = percentile(&mut samples, 0.5);
            let p95 = percentile(&mut samples, 0.95);
            let p99 = percentile(&mut samples, 0.99);
            println!(
                "{:32} {run:>4} {:9.1} {:9.1} {:9.1} {:9.1} {:8.1} {:9.1} {:9} {:7.2}",
                s.name,
                ms(p50),
                ms(p95),
                ms(p99),
                ITERATIONS as f64 / wall,
                calls as f64 / wall,
                ms(floor_p50),
                s.schedule_ms,
                // A floor under a millisecond (no wait in the schedule) has no useful ratio.
                if floor_p50 < Duration::from_millis(1) {
                    f64::NAN
                } else {
                    ms(p95) / ms(floor_p50)
                }
            );
        }
        if let Some(b) = &bin {
            drop(client);
            loongctl(b, home.path(), &["daemon", "stop"]);
        }
    }
}
