//! loongd's start over a large audit trail, and `audit verify` of the whole of it:
//!
//! - a trail of [`TRAIL_BYTES`] (`LOONG_AUDIT_TRAIL_MIB` overrides) is written through
//!   loongd's own audit library (`audit::open_with`, the writer loongd runs: chained, hashed,
//!   checkpointed and signed as loongd signs), shaped as one run of loongd: `daemon.started`,
//!   calls' decisions, invocations and completions with realistic details, `daemon.stopped`;
//! - the floor is the same run's shape with [`FLOOR_RECORDS`] records, in a second home;
//! - timed, alternately over both homes, [`STARTS`] times each: the trail's opening with its
//!   start-up verification (the tail since the newest checkpoint and the witness) in this
//!   process, then `loongctl daemon start` as a whole process (stopped, untimed, after each);
//! - `loongctl audit verify` (the whole chain) over the large trail, [`VERIFIES`] times.
//!
//! The records read by the start-up verification are printed beside the trail's: a start
//! reads the tail, whatever the trail's size. It drives the binaries in `LOONG_BIN_DIR`
//! (default target/release); without them it measures the library figures only. The homes
//! live in one temporary directory, removed at the end. Nothing here asserts a time.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use loongd::audit::{self, witness::DEFAULT_WITNESS_FILE, Durability, Event, Kind};

#[path = "../../workers/bench_support.rs"]
mod bench_support;
use bench_support::{figure, percentile, Figure};

/// The large trail's size (database and write-ahead log), when `LOONG_AUDIT_TRAIL_MIB` is unset.
const TRAIL_BYTES: u64 = 1 << 30;
/// Records of the floor's trail.
const FLOOR_RECORDS: u64 = 1_000;
/// Records queued to the writer at once while generating.
const GENERATE_BATCH: usize = 2_048;
/// Batches between two looks at the trail's size while generating.
const SIZE_EVERY: u64 = 16;
/// Timed starts over each home.
const STARTS: usize = 5;
/// Timed whole-trail verifications.
const VERIFIES: usize = 3;
/// How long `audit verify` may take over the large trail before the bench gives up.
const VERIFY_LIMIT: Duration = Duration::from_secs(600);

/// One call's records, as loongd writes them: the decision, the invocation and the outcome.
fn call_events(i: u64) -> [Event; 3] {
    let correlation: std::sync::Arc<str> = format!("conn-{}/req-{i}", i % 97).into();
    let actor: std::sync::Arc<str> = format!("token:tok_{:016x}", i % 13).into();
    let input_digest = format!("{:064x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    [
        Event {
            kind: Kind::PolicyDecision,
            actor: actor.clone(),
            correlation: correlation.clone(),
            detail: serde_json::json!({
                "tool": format!("files-{}/read_file", i % 500), "allowed": true,
                "reason": "allowed by the token's capabilities (fs.read under /srv/data) and the pack's rules",
                "token": format!("tok_{:016x}", i % 13), "pack": "developer",
                "capabilities": ["fs.read", "fs.list", "net.egress:api.example.com:443"],
                "input_sha256": input_digest, "risk": "low", "generation": 7,
            }).into(),
        },
        Event {
            kind: Kind::ToolInvoked,
            actor: actor.clone(),
            correlation: correlation.clone(),
            detail: serde_json::json!({
                "tool": format!("files-{}/read_file", i % 500), "plugin": format!("files-{}", i % 500),
                "worker": i % 8, "input_sha256": input_digest, "bridge_kind": "mcp_stdio",
                "input": {"path": format!("/srv/data/projects/p{}/src/module_{}.rs", i % 31, i % 1000),
                          "offset": 0, "length": 65536},
            }).into(),
        },
        Event {
            kind: Kind::ToolCompleted,
            actor,
            correlation,
            detail: serde_json::json!({
                "tool": format!("files-{}/read_file", i % 500), "worker": i % 8,
                "wall_us": 800 + i % 900, "cpu_us": 300 + i % 400, "peak_memory_bytes": 24_117_248,
                "output_bytes": 4096 + i % 60_000, "output_sha256": format!("{:064x}", i ^ 0x5a5a),
            }).into(),
        },
    ]
}

/// The trail's bytes on disk: the database and its write-ahead log.
fn trail_bytes(home: &Path) -> u64 {
    ["audit.db", "audit.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(home.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// Writes one run of loongd into `home`'s trail: `daemon.started`, calls until the trail
/// holds `bytes` or `records` (whichever comes first), `daemon.stopped`. Returns the records.
fn generate(rt: &tokio::runtime::Runtime, home: &Path, bytes: u64, records: u64) -> u64 {
    let witness = home.join(DEFAULT_WITNESS_FILE);
    let trail = audit::open_with(home, Default::default(), Durability::Normal, &witness)
        .expect("opens the trail");
    let written = rt.block_on(async {
        let started = Event::daemon(
            Kind::DaemonStarted,
            serde_json::json!({ "pid": std::process::id(), "audit_witness": witness.display().to_string() }),
        );
        trail.record(started).await.expect("started");
        let mut n = 1u64;
        let mut i = 0u64;
        let mut pending = None;
        for batches in 0u64.. {
            if n >= records || (batches % SIZE_EVERY == 0 && trail_bytes(home) >= bytes) {
                break;
            }
            let mut batch = Vec::with_capacity(GENERATE_BATCH);
            while batch.len() < GENERATE_BATCH {
                batch.extend(call_events(i));
                i += 1;
            }
            n += batch.len() as u64;
            // One batch in flight while the next is built.
            let commit = trail.queue_all(batch).await.expect("queued");
            if let Some(c) = pending.replace(commit) {
                c.committed().await.expect("committed");
            }
        }
        if let Some(c) = pending {
            c.committed().await.expect("committed");
        }
        let stopped = Event::daemon(Kind::DaemonStopped, serde_json::json!({ "reason": "bench" }));
        trail.record(stopped).await.expect("stopped");
        trail.shutdown().await;
        n + 1
    });
    written
}

/// Opens `home`'s trail as loongd's start does; returns how long it took and the records
/// its verification read.
fn open_once(home: &Path) -> (Duration, u64) {
    let t = Instant::now();
    let trail = audit::open_with(
        home,
        Default::default(),
        Durability::Full,
        &home.join(DEFAULT_WITNESS_FILE),
    )
    .expect("opens the trail");
    let took = t.elapsed();
    let integrity = &trail.startup().integrity;
    assert!(
        integrity.first_bad.is_none(),
        "the generated trail fails its check: {:?}",
        integrity.first_bad
    );
    let read = integrity.records;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(trail.shutdown());
    (took, read)
}

fn loongctl(bins: &Path, home: &Path, args: &[&str]) -> (Duration, std::process::Output) {
    let t = Instant::now();
    let out = Command::new(bins.join("loongctl"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .expect("runs loongctl");
    (t.elapsed(), out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(name: &str, samples: &mut [Duration], floor: Option<(&str, Duration)>, goal: &str) {
    let med = percentile(samples, 0.5);
    let p99 = percentile(samples, 0.99);
    println!(
        "{name:52} median {:9.2} ms   max {:9.2} ms   (n = {})",
        ms(med),
        ms(p99),
        samples.len()
    );
    figure(&Figure {
        name,
        value: ms(med),
        unit: "ms",
        p99: Some(ms(p99)),
        floor: floor.map(|(n, d)| (n, ms(d))),
        goal,
    });
}

fn main() {
    let bytes = std::env::var("LOONG_AUDIT_TRAIL_MIB")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(TRAIL_BYTES, |m| m << 20);
    let bins = std::env::var_os("LOONG_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    let have_bins = ["loongd", "loongctl"].iter().all(|b| bins.join(b).exists());
    let root = tempfile::tempdir_in("/tmp").expect("bench directory");
    let (big, small) = (root.path().join("big"), root.path().join("small"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let t = Instant::now();
    let records = generate(&rt, &big, bytes, u64::MAX);
    let took = t.elapsed();
    let size = trail_bytes(&big);
    println!(
        "generated {records} records, {:.1} MiB, in {:.1} s ({:.0} records/s) through loongd's audit writer",
        size as f64 / (1u64 << 20) as f64,
        took.as_secs_f64(),
        records as f64 / took.as_secs_f64()
    );
    let floor_records = generate(&rt, &small, u64::MAX, FLOOR_RECORDS);
    drop(rt);
    let (mut opens, mut floor_opens) = (Vec::new(), Vec::new());
    let (mut starts, mut floor_starts) = (Vec::new(), Vec::new());
    let mut read = 0;
    for _ in 0..STARTS {
        let (d, r) = open_once(&big);
        opens.push(d);
        read = r;
        floor_opens.push(open_once(&small).0);
        if have_bins {
            for (home, into) in [(&big, &mut starts), (&small, &mut floor_starts)] {
                let (d, out) = loongctl(&bins, home, &["daemon", "start"]);
                assert!(
                    out.status.success(),
                    "loongd did not start over {}: {}",
                    home.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                into.push(d);
                loongctl(&bins, home, &["daemon", "stop"]);
            }
        }
    }
    println!(
        "trail: {records} records, {:.1} MiB; the start-up verification read {read} of them",
        trail_bytes(&big) as f64 / (1u64 << 20) as f64
    );
    let floor_name = format!("the same over {floor_records} records");
    report(
        "audit trail opened and checked (1 GiB, library)",
        &mut opens,
        Some((&floor_name, percentile(&mut floor_opens, 0.5))),
        "independent of the trail's size",
    );
    if !have_bins {
        println!(
            "no loongd and loongctl in {} (cargo build --release --bins): the whole-process figures are skipped",
            bins.display()
        );
        return;
    }
    report(
        "loongd start (1 GiB audit trail, loongctl daemon start)",
        &mut starts,
        Some((&floor_name, percentile(&mut floor_starts, 0.5))),
        "≤ 2 s, independent of the trail's size",
    );
    let (_, out) = loongctl(&bins, &big, &["daemon", "start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut verifies = Vec::new();
    for _ in 0..VERIFIES {
        let (d, out) = loongctl(&bins, &big, &["audit", "verify", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && d < VERIFY_LIMIT,
            "audit verify over the large trail failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        verifies.push(d);
    }
    loongctl(&bins, &big, &["daemon", "stop"]);
    report(
        "audit verify, whole 1 GiB trail (loongctl)",
        &mut verifies,
        None,
        "reported (reads every record)",
    );
}
