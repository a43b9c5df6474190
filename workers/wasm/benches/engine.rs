//! The in-process floor of a plugin call: a fresh `Store`, instantiation from the cached
//! `InstancePre` and the echo plugin's `run`, on the pooling allocator. The warm call through
//! loongd and a worker is measured against this floor once the supervisor exists.
//! Compiling the module is measured beside it, since a worker does it once per plugin.

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
    c.bench_function("wasm/call_echo_fresh_store", |b| {
        b.iter(|| black_box(echo.invoke(black_box(input)).expect("call")))
    });
    c.bench_function("wasm/load_echo_compile", |b| {
        b.iter(|| black_box(engine.load(spec.clone()).expect("load")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
