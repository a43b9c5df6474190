//! The audit writer's own cost per warm call, in process: each call queues its decision and
//! `tool.invoked` as one message and waits for their commit, then queues its outcome without
//! waiting (it rides the next call's commit), as `invoke` does. Prints, per call and for each
//! `audit.sync`, the writer thread's CPU time and context switches (read from
//! `/proc/self/task/<tid>/`), and the wall time of the waited commit. Run with
//! `cargo bench --profile fast -p loongd --bench audit_commit`; `LOONG_AUDIT_CALLS` sets the
//! calls per run (default [`CALLS`]).

use std::time::{Duration, Instant};

use loongd::audit::{self, siem::SiemConfig, witness, Durability, Event, Kind};

/// Calls per run.
const CALLS: usize = 3_000;
/// Calls before the measured ones (the database's first pages, the prepared statements).
const WARM_UP: usize = 300;

/// How long to look for the writer thread by its name (it names itself once it runs).
const FIND_WRITER: Duration = Duration::from_secs(5);

/// The writer thread's id, found by its name.
fn writer_tid() -> Option<String> {
    let until = Instant::now() + FIND_WRITER;
    loop {
        if let Some(tid) = named_writer() {
            return Some(tid);
        }
        if Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn named_writer() -> Option<String> {
    std::fs::read_dir("/proc/self/task").ok()?.find_map(|t| {
        let t = t.ok()?;
        let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
        (comm.trim() == "loong-audit").then(|| t.file_name().to_string_lossy().into_owned())
    })
}

/// The thread's CPU time (ns) and its voluntary and involuntary context switches.
fn usage(tid: &str) -> (u64, u64, u64) {
    let base = format!("/proc/self/task/{tid}");
    let cpu = std::fs::read_to_string(format!("{base}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("{base}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        cpu,
        field("voluntary_ctxt_switches:"),
        field("nonvoluntary_ctxt_switches:"),
    )
}

fn event(kind: Kind, i: usize) -> Event {
    Event {
        kind,
        actor: "uid:0/conn-1".into(),
        correlation: format!("conn-1/req-{i}").into(),
        detail: serde_json::json!({
            "tool": "echo.echo", "version": "0.1.0",
            "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "input_bytes": 10, "token": "tok_0123456789abcdef", "allowed": true,
            "capability": "tool.invoke", "agent": "bench",
        })
        .into(),
    }
}

fn run(durability: Durability, calls: usize) {
    let dir = tempfile::tempdir().expect("dir");
    let trail = audit::open_with(
        dir.path(),
        SiemConfig::default(),
        durability,
        &dir.path().join(witness::DEFAULT_WITNESS_FILE),
    )
    .expect("opens");
    let tid = writer_tid().expect("the writer thread");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut waits: Vec<Duration> = Vec::with_capacity(calls);
    rt.block_on(async {
        let call = |i: usize| {
            let trail = trail.clone();
            async move {
                let t = Instant::now();
                trail
                    .queue_all(vec![
                        event(Kind::PolicyDecision, i),
                        event(Kind::ToolInvoked, i),
                    ])
                    .await
                    .expect("queued")
                    .committed()
                    .await
                    .expect("committed");
                let waited = t.elapsed();
                trail.record_later(event(Kind::ToolCompleted, i)).await;
                waited
            }
        };
        for i in 0..WARM_UP {
            call(i).await;
        }
        let before = usage(&tid);
        for i in 0..calls {
            waits.push(call(WARM_UP + i).await);
        }
        let after = usage(&tid);
        waits.sort();
        let per = |a: u64, b: u64| (b - a) as f64 / calls as f64;
        println!(
            "audit.sync = {:6}  writer CPU {:6.1} µs/call   switches {:.2} voluntary + {:.2} involuntary /call   commit waited: median {:7.1} µs, p99 {:7.1} µs  (n = {calls})",
            durability.as_str(),
            per(before.0, after.0) / 1e3,
            per(before.1, after.1),
            per(before.2, after.2),
            waits[calls / 2].as_secs_f64() * 1e6,
            waits[calls * 99 / 100].as_secs_f64() * 1e6,
        );
        trail.shutdown().await;
    });
}

fn main() {
    let calls = std::env::var("LOONG_AUDIT_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CALLS);
    run(Durability::Normal, calls);
    run(Durability::Full, calls);
}
