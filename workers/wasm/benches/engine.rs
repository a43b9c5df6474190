//! The in-process floor of a plugin call: a fresh `Store`, instantiation from the cached
//! `InstancePre` and the echo plugin's `run`, on the pooling allocator. The warm call through
//! loongd and a worker is measured against this floor once the supervisor exists.
//! Compiling the module is measured beside it, since a worker does it once per plugin, and the
//! process's resident memory with the engine ready is printed.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use loong_worker_wasm::{PluginSpec, WasmEngine};

fn bench(c: &mut Criterion) {
    let engine = WasmEngine::new().expect("engine");
    let wat_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/plugins/echo/plugin.wat"
    );
    let module = wat::parse_file(wat_path).expect("echo WAT compiles");
    let spec = PluginSpec {
        plugin_id: "echo".into(),
        module,
        entrypoint: "run".into(),
        ..PluginSpec::default()
    };
    let echo = engine.load(spec.clone()).expect("echo loads");
    let input = br#"{"ping":1}"#;
    echo.invoke(input).expect("first call");
    // Resident memory of this process with one engine, its pool and one loaded plugin: the
    // nearest in-process figure to an idle WASM worker until the worker binary exists.
    if let Some(kib) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()))
        })
    {
        println!("wasm/engine_idle_rss: {kib}");
    }
    c.bench_function("wasm/call_echo_fresh_store", |b| {
        b.iter(|| black_box(echo.invoke(black_box(input)).expect("call")))
    });
    c.bench_function("wasm/load_echo_compile", |b| {
        b.iter(|| black_box(engine.load(spec.clone()).expect("load")))
    });
    // What a new worker does before its first call: the engine (its pool reserved, its
    // ticker started), then the plugin's compile.
    c.bench_function("wasm/engine_new", |b| {
        b.iter(|| black_box(WasmEngine::new().expect("engine")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
