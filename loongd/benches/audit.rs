//! Audited appends per second with durable group commit (each append acknowledged only after
//! its transaction is committed with `synchronous = FULL`). Goal: at least 50,000 per second.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loongd::audit::{self, Event, Kind};

/// Appends in flight at once (concurrent callers).
const CONCURRENCY: usize = 512;
/// Appends per measured batch.
const BATCH: u64 = 20_000;

fn appends(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("dir");
    let trail = audit::open(dir.path()).expect("opens");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(10);
    g.bench_function("durable_appends", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                rt.block_on(async {
                    let mut tasks = Vec::with_capacity(CONCURRENCY);
                    for w in 0..CONCURRENCY {
                        let trail = trail.clone();
                        tasks.push(tokio::spawn(async move {
                            for i in 0..(BATCH / CONCURRENCY as u64) {
                                let e = Event {
                                    kind: Kind::SandboxExited,
                                    actor: "uid:0".into(),
                                    correlation: format!("conn-{w}/req-{i}").into(),
                                    detail: serde_json::json!({ "tier": "balanced", "code": 0, "user_us": i }).into(),
                                };
                                trail.record(e).await.expect("recorded");
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.expect("task");
                    }
                });
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
    rt.block_on(trail.shutdown());
}

criterion_group!(benches, appends);
criterion_main!(benches);
