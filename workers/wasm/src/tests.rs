//! Hostile and well-behaved plugins against one engine. Every refusal is
//! followed by a normal call on the same engine that must succeed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{InvokeError, LoadError, LoadedPlugin, PluginLimits, PluginSpec, WasmEngine};

mod compiled;
mod upstream;

fn engine() -> &'static WasmEngine {
    static ENGINE: OnceLock<WasmEngine> = OnceLock::new();
    ENGINE.get_or_init(|| WasmEngine::new().expect("engine"))
}

fn spec(id: &str, wat_text: &str) -> PluginSpec {
    PluginSpec {
        plugin_id: id.into(),
        module: wat::parse_str(wat_text).expect("test WAT compiles"),
        entrypoint: "run".into(),
        limits: PluginLimits {
            timeout_ms: 200,
            ..PluginLimits::default()
        },
        ..PluginSpec::default()
    }
}

fn load(id: &str, wat_text: &str) -> LoadedPlugin {
    engine().load(spec(id, wat_text)).expect("plugin loads")
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins")
}

fn id_of(m: &serde_json::Value) -> &str {
    m["plugin_id"].as_str().expect("plugin_id")
}

/// An example plugin as loongd would send it: its manifest's `sandbox` block (loongd parses
/// manifests; this engine only ever sees the wire form) and its WAT compiled.
fn example(name: &str) -> LoadedPlugin {
    let src = examples_dir().join(name);
    let text = std::fs::read(src.join("loong.plugin.json")).expect("example manifest");
    let m: serde_json::Value = serde_json::from_slice(&text).expect("example manifest is JSON");
    let sb = &m["sandbox"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let wire = loong_ipc::WasmPlugin {
        plugin_id: m["plugin_id"].as_str().expect("plugin_id").into(),
        module: wat::parse_file(src.join("plugin.wat")).expect("example WAT compiles"),
        entrypoint: m["metadata"]["entrypoint"].as_str().unwrap_or("run").into(),
        timeout_ms: sb["timeout_ms"]
            .as_u64()
            .unwrap_or(crate::DEFAULT_TIMEOUT_MS),
        max_memory_bytes: sb["max_memory_bytes"]
            .as_u64()
            .unwrap_or(crate::DEFAULT_MAX_MEMORY_BYTES as u64),
        max_output_bytes: sb["max_output_bytes"]
            .as_u64()
            .unwrap_or(crate::DEFAULT_MAX_OUTPUT_BYTES as u64),
        max_module_bytes: crate::DEFAULT_MAX_MODULE_BYTES as u64,
        fuel: sb["fuel"].as_u64(),
        config: sb["config"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().into()))
                    .collect()
            })
            .unwrap_or_default(),
        guest_readable_config_keys: strings(&sb["guest_readable_config_keys"]),
        sha256: None,
        blocked_import_prefixes: Vec::new(),
        input: match sb["input"].as_str() {
            Some("bare") => loong_ipc::GuestInput::Bare,
            _ => loong_ipc::GuestInput::Envelope {
                provider_id: m["provider_id"].as_str().unwrap_or(id_of(&m)).into(),
                channel_id: m["channel_id"].as_str().map(String::from),
            },
        },
        compiled: None,
        want_compiled: false,
    };
    engine()
        .load(PluginSpec::from(wire))
        .expect("example loads")
}

/// The positive control run after every refusal.
fn echo_still_works() {
    let echo = example("echo");
    let out = echo.invoke(br#"{"ping":1}"#).expect("echo call");
    assert_eq!(out.output, json!({"ping": 1}));
}

const IMPORTS: &str = r#"
  (import "loong" "input_len" (func $input_len (result i32)))
  (import "loong" "read_input" (func $read_input (param i32 i32) (result i32)))
  (import "loong" "write_output" (func $write_output (param i32 i32) (result i32)))
  (import "loong" "log" (func $log (param i32 i32) (result i32)))
  (import "loong" "abort" (func $abort (param i32)))
"#;

fn module(body: &str) -> String {
    format!("(module {IMPORTS} (memory (export \"memory\") 1) {body})")
}

#[test]
fn examples_behave() {
    let echo = example("echo");
    let big = json!({"text": "x".repeat(200_000)});
    let out = echo.invoke(big.to_string().as_bytes()).expect("large echo");
    assert_eq!(out.output, big);

    let transform = example("json-transform");
    let out = transform.invoke(br#"[1,2,3]"#).expect("transform");
    assert_eq!(
        out.output,
        json!({"plugin": "json-transform", "input": [1, 2, 3]})
    );
    assert_eq!(out.logs, vec!["json-transform: wrapping input".to_owned()]);

    let reader = example("config-reader");
    let out = reader.invoke(b"{}").expect("config reader");
    assert_eq!(
        out.output,
        json!({"provider.name": "demo", "secret.token": "unavailable"})
    );
    let fuel = out.fuel_consumed.expect("fuel budget set in the manifest");
    assert!(fuel > 0 && fuel < 1_000_000, "fuel used: {fuel}");
}

#[test]
fn infinite_loop_times_out() {
    let looping = load(
        "loop",
        &module(r#"(func (export "run") (result i32) (loop $l (br $l)) (i32.const 0))"#),
    );
    assert_eq!(
        looping.invoke(b"{}").expect_err("must be refused"),
        InvokeError::Timeout { timeout_ms: 200 }
    );
    echo_still_works();
}

/// An idle engine's epoch ticker sleeps (an idle worker was woken 200 times a second), and a
/// call wakes it before its guest runs: a runaway guest still stops at its deadline. Its own
/// engine: the shared one's ticker runs while other tests call.
#[test]
fn an_idle_engine_s_ticker_sleeps_and_a_call_still_stops_at_its_deadline() {
    use std::time::{Duration, Instant};
    // The runaway call's deadline (200 ms) is longer than the ticker's idle window: a call
    // whose guard ended early would be caught by the ticker's sleep.
    const _: () = assert!(200 / crate::EPOCH_TICK_MS > crate::EPOCH_IDLE_TICKS as u64);
    let engine = WasmEngine::new().expect("engine");
    let looping = engine
        .load(spec(
            "loop",
            r#"(module (func (export "run") (result i32) (loop $l (br $l)) (i32.const 0)))"#,
        ))
        .expect("loads");
    let echo = engine
        .load(spec(
            "quick",
            r#"(module (func (export "run") (result i32) (i32.const 0)))"#,
        ))
        .expect("loads");
    // Just after a call, it ticks (the control; waited for, not timed: a loaded machine
    // stretches its sleeps).
    echo.invoke(b"{}").expect("quick call");
    let (before, _) = engine.ticker();
    let until = Instant::now() + Duration::from_secs(10);
    while engine.ticker().0 < before + 3 {
        assert!(
            Instant::now() < until,
            "the ticker did not tick after a call"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Then it sleeps: no tick at all over 300 ms.
    while !engine.ticker().1 {
        assert!(Instant::now() < until, "the ticker never slept");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (asleep, _) = engine.ticker();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(engine.ticker().0, asleep, "an idle ticker ticked");
    // A call wakes it: the runaway guest stops at its 200 ms deadline (on a thread, so that a
    // ticker left asleep fails this test instead of hanging the suite).
    let (done, result) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = done.send(looping.invoke(b"{}"));
    });
    let err = match result.recv_timeout(Duration::from_secs(20)) {
        Ok(r) => r.expect_err("must be refused"),
        Err(_) => {
            // Ends the guest left running, so that it does not spin through the other tests.
            engine.advance_epoch(1_000);
            panic!("the runaway call never stopped: the ticker was left asleep");
        }
    };
    assert_eq!(err, InvokeError::Timeout { timeout_ms: 200 });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn fuel_runs_out() {
    let mut s = spec(
        "burn",
        &module(r#"(func (export "run") (result i32) (loop $l (br $l)) (i32.const 0))"#),
    );
    s.limits.fuel = Some(10_000);
    s.limits.timeout_ms = 10_000;
    let burn = engine().load(s).expect("loads");
    assert_eq!(
        burn.invoke(b"{}").expect_err("must be refused"),
        InvokeError::FuelExhausted { fuel: 10_000 }
    );
    echo_still_works();
}

#[test]
fn memory_grow_bomb_hits_the_limit() {
    let bomb = load(
        "grow-bomb",
        &module(
            r#"(func (export "run") (result i32)
                 (loop $l (br_if $l (i32.ge_s (memory.grow (i32.const 16)) (i32.const 0))))
                 (i32.const 0))"#,
        ),
    );
    match bomb.invoke(b"{}").expect_err("must be refused") {
        InvokeError::MemoryLimit { requested, limit } => {
            assert_eq!(limit, crate::DEFAULT_MAX_MEMORY_BYTES);
            assert!(requested > limit);
        }
        other => panic!("expected a memory limit error, got {other:?}"),
    }
    // A module whose initial memory is already over the limit fails the same way.
    let huge = load(
        "huge-initial",
        &format!("(module {IMPORTS} (memory (export \"memory\") 1000) (func (export \"run\") (result i32) (i32.const 0)))"),
    );
    assert!(matches!(
        huge.invoke(b"{}").expect_err("must be refused"),
        InvokeError::MemoryLimit { .. }
    ));
    echo_still_works();
}

/// `write_output` is public Loong's: one write per call, `-1` for a write over the cap or a
/// second write, and a call whose last write was refused fails with that refusal.
#[test]
fn output_is_written_once_and_capped() {
    // A guest that keeps writing: the first write is taken, every later one answers -1
    // (the guest checks), and the call fails as written twice.
    let flood = load(
        "flood",
        &module(
            r#"(data (i32.const 0) "{}")
               (func (export "run") (result i32) (local $i i32)
                 (if (i32.ne (call $write_output (i32.const 0) (i32.const 2)) (i32.const 2))
                   (then (return (i32.const 5))))
                 (loop $l
                   (if (i32.ne (call $write_output (i32.const 0) (i32.const 65536)) (i32.const -1))
                     (then (return (i32.const 6))))
                   (local.set $i (i32.add (local.get $i) (i32.const 1)))
                   (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
                 (i32.const 0))"#,
        ),
    );
    assert_eq!(
        flood.invoke(b"{}").expect_err("must be refused"),
        InvokeError::OutputWrittenTwice
    );
    // One write over the cap answers -1 before any byte is copied; the call fails with it.
    let mut over = spec(
        "over-cap",
        &module(
            r#"(func (export "run") (result i32)
                 (if (i32.ne (call $write_output (i32.const 0) (i32.const 65536)) (i32.const -1))
                   (then (return (i32.const 5))))
                 (i32.const 0))"#,
        ),
    );
    over.limits.max_output_bytes = 1024;
    let over = engine().load(over).expect("loads");
    assert_eq!(
        over.invoke(b"{}").expect_err("must be refused"),
        InvokeError::OutputTooLarge { cap: 1024 }
    );
    // Bytes outside the guest's memory: -1, and the call fails with it.
    let outside = load(
        "outside",
        &module(
            r#"(func (export "run") (result i32)
                 (if (i32.ne (call $write_output (i32.const 65530) (i32.const 100)) (i32.const -1))
                   (then (return (i32.const 5))))
                 (i32.const 0))"#,
        ),
    );
    assert_eq!(
        outside.invoke(b"{}").expect_err("must be refused"),
        InvokeError::OutputUnreadable
    );
    // Control: a refused write followed by one that fits is the call's output, as in public
    // Loong (a refusal is cleared by the next successful write).
    let retry = load(
        "retry",
        &module(
            r#"(data (i32.const 0) "{\"ok\":1}")
               (func (export "run") (result i32)
                 (drop (call $write_output (i32.const 0) (i32.const 0x7fffffff)))
                 (drop (call $write_output (i32.const 0) (i32.const 8)))
                 (i32.const 0))"#,
        ),
    );
    assert_eq!(retry.invoke(b"{}").expect("retry").output, json!({"ok": 1}));
    echo_still_works();
}

#[test]
fn abort_is_a_typed_error() {
    let aborting = load(
        "aborting",
        &module(r#"(func (export "run") (result i32) (call $abort (i32.const 42)) (i32.const 0))"#),
    );
    assert_eq!(
        aborting.invoke(b"{}").expect_err("must be refused"),
        InvokeError::Aborted { code: 42 }
    );
    echo_still_works();
}

#[test]
fn traps_exit_codes_and_bad_output_are_errors() {
    let trapping = load(
        "trap",
        &module(r#"(func (export "run") (result i32) unreachable)"#),
    );
    assert!(matches!(
        trapping.invoke(b"{}").expect_err("must be refused"),
        InvokeError::Trap { .. }
    ));
    let failing = load(
        "exit",
        &module(r#"(func (export "run") (result i32) (i32.const 7))"#),
    );
    assert_eq!(
        failing.invoke(b"{}").expect_err("must be refused"),
        InvokeError::ExitCode { code: 7 }
    );
    let garbage = load(
        "garbage",
        &module(
            r#"(data (i32.const 0) "not json")
               (func (export "run") (drop (call $write_output (i32.const 0) (i32.const 8))))"#,
        ),
    );
    assert!(matches!(
        garbage.invoke(b"{}").expect_err("must be refused"),
        InvokeError::OutputNotJson { .. }
    ));
    // Out-of-bounds pointers get -1, not host memory.
    let probe = load(
        "oob",
        &module(
            r#"(data (i32.const 0) "{\"oob\":true}")
               (func (export "run") (result i32)
                 (if (i32.ne (call $write_output (i32.const 65530) (i32.const 100)) (i32.const -1))
                   (then (return (i32.const 9))))
                 (if (i32.ne (call $read_input (i32.const -5) (i32.const 100)) (i32.const -1))
                   (then (return (i32.const 10))))
                 ;; A buffer the guest does not have, although the input would fit at its
                 ;; start, and one that ends one byte past the memory.
                 (if (i32.ne (call $read_input (i32.const 0) (i32.const 0x7fffffff)) (i32.const -1))
                   (then (return (i32.const 11))))
                 (if (i32.ne (call $read_input (i32.const 65000) (i32.const 537)) (i32.const -1))
                   (then (return (i32.const 12))))
                 ;; Control: a buffer that ends exactly at the memory's end is served.
                 (if (i32.ne (call $read_input (i32.const 65000) (i32.const 536)) (i32.const 2))
                   (then (return (i32.const 13))))
                 (drop (call $write_output (i32.const 0) (i32.const 12)))
                 (i32.const 0))"#,
        ),
    );
    assert_eq!(
        probe.invoke(b"{}").expect("oob probe").output,
        json!({"oob": true})
    );
    let too_big = vec![b' '; crate::MAX_INPUT_BYTES + 1];
    assert!(matches!(
        probe.invoke(&too_big).expect_err("must be refused"),
        InvokeError::InputTooLarge { .. }
    ));
    echo_still_works();
}

#[test]
fn logs_are_bounded() {
    let chatty = load(
        "chatty",
        &module(
            r#"(data (i32.const 0) "{}")
               (func (export "run") (result i32) (local $i i32)
                 (loop $l
                   (drop (call $log (i32.const 100) (i32.const 100)))
                   (local.set $i (i32.add (local.get $i) (i32.const 1)))
                   (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
                 (drop (call $write_output (i32.const 0) (i32.const 2)))
                 (i32.const 0))"#,
        ),
    );
    let out = chatty.invoke(b"{}").expect("chatty call");
    assert_eq!(out.logs.len(), crate::MAX_LOG_ENTRIES);
    assert_eq!(out.logs_dropped as usize, 1000 - crate::MAX_LOG_ENTRIES);
}

#[test]
fn imports_are_policed_at_load() {
    let wasi = spec(
        "wasi",
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                   (func (export "run")))"#,
    );
    let err = engine().load(wasi).expect_err("must be refused");
    assert!(matches!(err, LoadError::ImportRefused { .. }), "{err}");
    assert!(err.to_string().contains("WASI"), "{err}");

    let mut blocked = spec(
        "blocked",
        r#"(module (import "env" "syscall" (func)) (func (export "run")))"#,
    );
    blocked.blocked_import_prefixes = vec!["env".into()];
    let err = engine().load(blocked).expect_err("must be refused");
    assert!(err.to_string().contains("\"env\" is blocked"), "{err}");

    let foreign = spec(
        "foreign",
        r#"(module (import "host" "spawn" (func)) (func (export "run")))"#,
    );
    assert!(matches!(
        engine().load(foreign).expect_err("must be refused"),
        LoadError::ImportRefused { .. }
    ));
    let unknown = spec(
        "unknown",
        r#"(module (import "loong" "exec" (func)) (func (export "run")))"#,
    );
    assert!(engine()
        .load(unknown)
        .expect_err("must be refused")
        .to_string()
        .contains("no such function"));
    let no_entry = spec("no-entry", r#"(module (func (export "main")))"#);
    assert!(matches!(
        engine().load(no_entry).expect_err("must be refused"),
        LoadError::Entrypoint { .. }
    ));
    let bad_sig = spec("bad-sig", r#"(module (func (export "run") (param i32)))"#);
    assert!(matches!(
        engine().load(bad_sig).expect_err("must be refused"),
        LoadError::Entrypoint { .. }
    ));
    let mut not_wasm = spec("not-wasm", "(module)");
    not_wasm.module = b"\0asm\x01\0\0\0garbage".to_vec();
    assert!(matches!(
        engine().load(not_wasm).expect_err("must be refused"),
        LoadError::Invalid { .. }
    ));
    echo_still_works();
}

#[test]
fn size_cap_and_digest_pin() {
    let text = module(
        r#"(data (i32.const 0) "{}") (func (export "run") (drop (call $write_output (i32.const 0) (i32.const 2))))"#,
    );
    let mut oversize = spec("oversize", &text);
    let size = oversize.module.len();
    oversize.limits.max_module_bytes = size - 1;
    assert!(matches!(
        engine().load(oversize).expect_err("must be refused"),
        LoadError::TooLarge { cap, .. } if cap == size - 1
    ));

    let mut pinned = spec("pinned", &text);
    let digest = hex::encode(Sha256::digest(&pinned.module));
    pinned.sha256 = Some("0".repeat(64));
    assert!(matches!(
        engine().load(pinned.clone()).expect_err("must be refused"),
        LoadError::DigestMismatch { .. }
    ));
    pinned.sha256 = Some("not-hex".into());
    assert!(matches!(
        engine().load(pinned.clone()).expect_err("must be refused"),
        LoadError::BadDigestPin { .. }
    ));
    // Positive controls: the right pin and the exact size both load and run.
    pinned.sha256 = Some(digest.to_uppercase());
    pinned.limits.max_module_bytes = size;
    let ok = engine().load(pinned).expect("pinned module loads");
    assert_eq!(ok.invoke(b"{}").expect("pinned call").output, json!({}));
    echo_still_works();
}

/// The committed `plugin.wasm` of each example is its `plugin.wat` compiled: the demo and
/// `HOME/plugins` use the binary, the tests the text, and the two cannot drift.
/// `LOONG_BLESS=1` rewrites the binaries.
#[test]
fn example_modules_match_their_wat() {
    let bless = std::env::var_os("LOONG_BLESS").is_some();
    let mut checked = 0;
    for entry in std::fs::read_dir(examples_dir()).expect("examples") {
        let dir = entry.expect("entry").path();
        let wat_path = dir.join("plugin.wat");
        if !wat_path.exists() {
            continue;
        }
        let want = wat::parse_file(&wat_path).expect("example WAT compiles");
        let wasm_path = dir.join("plugin.wasm");
        if bless {
            std::fs::write(&wasm_path, &want).expect("write module");
        }
        let got = std::fs::read(&wasm_path).unwrap_or_default();
        assert!(
            got == want,
            "{} is not {} compiled; run `LOONG_BLESS=1 cargo test -p loong-worker-wasm example_modules`",
            wasm_path.display(),
            wat_path.display()
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} examples found");
}

/// A module of `n` empty functions, each exported so none is dead code.
fn many_functions(n: usize) -> String {
    let funcs: String = (0..n)
        .map(|i| format!("(func (export \"f{i}\") (result i32) (i32.const {i}))"))
        .collect();
    module(&format!(
        r#"{funcs} (data (i32.const 0) "{{}}")
           (func (export "run") (result i32)
             (drop (call $write_output (i32.const 0) (i32.const 2))) (i32.const 0))"#
    ))
}

#[test]
fn compile_work_is_bounded_before_and_during_compilation() {
    // 60,000 functions are refused by a parse of the headers, well before any compilation.
    let hostile = spec("many", &many_functions(60_000));
    let started = std::time::Instant::now();
    let err = engine().load(hostile).expect_err("must be refused");
    assert!(
        matches!(err, LoadError::Shape { .. })
            && err.to_string().contains("over the limit of 10000"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Control: a module of many functions, within the limits, loads and runs.
    let fine = engine()
        .load(spec("some", &many_functions(200)))
        .expect("loads");
    assert_eq!(fine.invoke(b"{}").expect("runs").output, json!({}));

    // One oversized function body.
    let body: String = "(drop (i32.const 1))".repeat(200_000);
    let err = engine()
        .load(spec(
            "huge-body",
            &module(&format!(r#"(func (export "run") {body})"#)),
        ))
        .expect_err("must be refused");
    assert!(err.to_string().contains("a function body of"), "{err}");

    // The deadline: a compilation past it is refused, and the worker told to go.
    let hurried = WasmEngine::new()
        .expect("engine")
        .with_compile_timeout(std::time::Duration::from_millis(1));
    let err = hurried
        .load(spec("slow", &many_functions(2_000)))
        .expect_err("must be refused");
    assert!(
        matches!(err, LoadError::CompileTimeout { .. }) && err.poisons_worker(),
        "{err}"
    );
    assert!(err.to_string().contains("longer than 1 ms"), "{err}");
    echo_still_works();
}

#[test]
fn a_64_bit_memory_is_refused_at_load() {
    for (what, wat_text) in [
        (
            "memory",
            r#"(module (memory (export "memory") i64 1) (func (export "run")))"#,
        ),
        (
            "memory",
            r#"(module (import "loong" "mem" (memory i64 1)) (func (export "run")))"#,
        ),
        (
            "table",
            r#"(module (memory (export "memory") 1) (table i64 1 funcref) (func (export "run")))"#,
        ),
    ] {
        let err = engine()
            .load(spec("wide", wat_text))
            .expect_err("must be refused");
        assert!(
            matches!(err, LoadError::Shape { .. })
                && err
                    .to_string()
                    .contains(&format!("a 64-bit {what} (memory64)")),
            "{wat_text}: {err}"
        );
    }
    // wasmtime itself refuses it too, behind the precheck.
    let mut config = wasmtime::Config::new();
    config.wasm_memory64(false);
    let plain = wasmtime::Engine::new(&config).expect("engine");
    let bytes = wat::parse_str(r#"(module (memory i64 1))"#).expect("wat");
    assert!(wasmtime::Module::from_binary(&plain, &bytes).is_err());
    echo_still_works();
}

/// The codes of public Loong's `wasm_host_abi.rs` that its fixtures do not reach: a
/// `read_input` buffer shorter than the input is -1 (not -3, which only `read_config` uses);
/// a `log` entry over 4 KiB or not UTF-8 is -1 and not kept; an entry past the count bound is
/// dropped with 0; an empty entry is kept and answers its length, 0.
#[test]
fn host_abi_codes_match_public_loong() {
    let probe = load(
        "codes",
        &module(
            r#"(data (i32.const 0) "\ff\fe")
               (data (i32.const 16) "{}")
               (func (export "run") (result i32) (local $i i32)
                 ;; The input is 8 bytes; a 7-byte buffer is -1, an 8-byte one is served.
                 (if (i32.ne (call $read_input (i32.const 1024) (i32.const 7)) (i32.const -1))
                   (then (return (i32.const 10))))
                 (if (i32.ne (call $read_input (i32.const 1024) (i32.const 8)) (i32.const 8))
                   (then (return (i32.const 11))))
                 ;; An entry over 4 KiB, and one that is not UTF-8: -1.
                 (if (i32.ne (call $log (i32.const 1024) (i32.const 4097)) (i32.const -1))
                   (then (return (i32.const 12))))
                 (if (i32.ne (call $log (i32.const 0) (i32.const 2)) (i32.const -1))
                   (then (return (i32.const 13))))
                 ;; A 4 KiB entry is kept; an empty one is kept and answers 0.
                 (if (i32.ne (call $log (i32.const 1024) (i32.const 4096)) (i32.const 4096))
                   (then (return (i32.const 14))))
                 (if (i32.ne (call $log (i32.const 16) (i32.const 0)) (i32.const 0))
                   (then (return (i32.const 15))))
                 ;; Fill the count bound, then one more is dropped (0).
                 (loop $l
                   (drop (call $log (i32.const 16) (i32.const 1)))
                   (local.set $i (i32.add (local.get $i) (i32.const 1)))
                   (br_if $l (i32.lt_u (local.get $i) (i32.const 62))))
                 (if (i32.ne (call $log (i32.const 16) (i32.const 1)) (i32.const 0))
                   (then (return (i32.const 16))))
                 (drop (call $write_output (i32.const 16) (i32.const 2)))
                 (i32.const 0))"#,
        ),
    );
    let out = probe.invoke(b"[1,2,33]").expect("codes probe");
    assert_eq!(out.output, json!({}));
    assert_eq!(out.logs.len(), crate::MAX_LOG_ENTRIES);
    assert_eq!(out.logs[0].len(), 4096);
    assert_eq!(out.logs[1], "");
    assert_eq!(out.logs_dropped, 1);
}

/// The request envelope: the caller's bytes as `payload`, `channel_id` null when the manifest
/// names none, the input bound applied to what the guest reads (envelope included), and a
/// caller's input that is not JSON refused before the guest runs. Control: the same module
/// without the envelope reads the input as given.
#[test]
fn the_request_envelope_wraps_the_callers_input() {
    let echo_wat = std::fs::read_to_string(examples_dir().join("echo/plugin.wat")).expect("wat");
    let mut s = spec("enveloped", &echo_wat);
    s.envelope = Some(crate::RequestEnvelope {
        provider_id: "prov \"quoted\"".into(),
        channel_id: None,
    });
    let enveloped = engine().load(s).expect("loads");
    let out = enveloped
        .invoke(br#" {"b":1,"a":[true]} "#)
        .expect("enveloped");
    assert_eq!(
        out.output,
        json!({"provider_id": "prov \"quoted\"", "channel_id": null, "operation": "invoke",
               "payload": {"b": 1, "a": [true]}})
    );
    assert!(matches!(
        enveloped.invoke(b"{not json").expect_err("must be refused"),
        InvokeError::InputNotJson { .. }
    ));
    assert!(matches!(
        enveloped.invoke(b"").expect_err("must be refused"),
        InvokeError::InputNotJson { .. }
    ));
    // An input that fits alone but not with the envelope around it.
    let near = format!("\"{}\"", "x".repeat(crate::MAX_INPUT_BYTES - 2));
    match enveloped
        .invoke(near.as_bytes())
        .expect_err("must be refused")
    {
        InvokeError::InputTooLarge { size, limit } => {
            assert_eq!(limit, crate::MAX_INPUT_BYTES);
            assert!(size > limit, "{size}");
        }
        other => panic!("expected InputTooLarge, got {other:?}"),
    }
    // Control: bare, the same bytes reach the guest as given.
    let mut bare = spec("bare", &echo_wat);
    bare.limits.max_output_bytes = crate::MAX_OUTPUT_BYTES_CEILING;
    let bare = engine().load(bare).expect("loads");
    assert_eq!(
        bare.invoke(br#"{"b":1}"#).expect("bare").output,
        json!({"b": 1})
    );
    assert_eq!(
        bare.invoke(near.as_bytes()).expect("fits bare").output,
        json!("x".repeat(crate::MAX_INPUT_BYTES - 2))
    );
}

/// The envelope is always JSON: a caller's input that is not exactly one JSON value in UTF-8
/// never reaches the guest. serde_json skips a string it ignores without decoding it, so bytes
/// that are not UTF-8 inside a string passed the check; a guest with a lenient decoder would
/// read an overlong `"` (`C0 A2`) as a quote, end the payload early and see top-level keys the
/// caller wrote after it (a second `provider_id`). Control: the same shapes in valid UTF-8.
#[test]
fn the_envelope_holds_only_one_utf8_json_value() {
    let echo_wat = std::fs::read_to_string(examples_dir().join("echo/plugin.wat")).expect("wat");
    let mut s = spec("enveloped-utf8", &echo_wat);
    s.envelope = Some(crate::RequestEnvelope {
        provider_id: "p".into(),
        channel_id: Some("c\u{1}\"".into()),
    });
    let p = engine().load(s).expect("loads");
    let refused: &[&[u8]] = &[
        // One JSON string to a skipping parser; to a decoder that reads C0 A2 as `"`:
        // `"", "provider_id": "evil", "x": ""`, which overrides the envelope's provider_id.
        b"\"\xc0\xa2,\xc0\xa2provider_id\xc0\xa2:\xc0\xa2evil\xc0\xa2,\xc0\xa2x\xc0\xa2:\"",
        b"\"\xff\xfe\"",
        b"{\"\xc3\":1}",
        b"\xef\xbb\xbf{}",
        b"{} {}",
        b"{},",
        b"{}}{",
        b"{\"a\":[}",
        b"{}\0",
        "{}\u{a0}".as_bytes(),
    ];
    for input in refused {
        match p.invoke(input) {
            Err(InvokeError::InputNotJson { .. }) => {}
            other => panic!(
                "{:?} must be refused as not JSON, got {other:?}",
                input.escape_ascii().to_string()
            ),
        }
    }
    let out = p
        .invoke(" {\"\u{e9}\":\"\u{1F600}\",\"a\":1,\"a\":2}\n".as_bytes())
        .expect("valid UTF-8 JSON is enveloped");
    assert_eq!(out.output["provider_id"], json!("p"));
    assert_eq!(out.output["channel_id"], json!("c\u{1}\""));
    assert_eq!(
        out.output["payload"],
        json!({"\u{e9}": "\u{1F600}", "a": 2})
    );
}

/// A kernel link that answers `answer` (or waits past the call's deadline), recording what
/// it was asked.
struct Stub {
    answer: Result<Vec<u8>, crate::ToolCallError>,
    /// Answers only once the whole timeout has passed.
    late: bool,
    asked: std::sync::Arc<std::sync::Mutex<Vec<(String, String, std::time::Duration)>>>,
}

impl crate::ToolCaller for Stub {
    fn call_tool(
        &mut self,
        tool: &str,
        input: &str,
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>, crate::ToolCallError> {
        self.asked
            .lock()
            .expect("lock")
            .push((tool.into(), input.into(), timeout));
        if self.late {
            std::thread::sleep(timeout);
        }
        self.answer.clone()
    }
}

type Asked = std::sync::Arc<std::sync::Mutex<Vec<(String, String, std::time::Duration)>>>;

fn stub(answer: Result<Vec<u8>, crate::ToolCallError>) -> (Box<dyn crate::ToolCaller>, Asked) {
    let asked = Asked::default();
    let s = Stub {
        late: answer == Err(crate::ToolCallError::Deadline),
        answer,
        asked: asked.clone(),
    };
    (Box::new(s), asked)
}

#[test]
fn call_tool_hands_the_result_to_read_result_and_maps_each_refusal_to_its_code() {
    use crate::ToolCallError;
    let caller = example("tool-caller");
    let (link, asked) = stub(Ok(b"[1,2]".to_vec()));
    let out = caller.invoke_with(br#"{"q":1}"#, Some(link)).expect("call");
    assert_eq!(out.output, json!([1, 2]));
    let asked = asked.lock().expect("lock").clone();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        (asked[0].0.as_str(), asked[0].1.as_str()),
        ("echo", r#"{"q":1}"#)
    );
    // The kernel call waits at most what is left of the guest's own deadline.
    assert!(asked[0].2 <= std::time::Duration::from_millis(10_000));

    for (answer, code, kind) in [
        (ToolCallError::Denied("no".into()), -2, "denied"),
        (ToolCallError::Failed("broke".into()), -3, "failed"),
        (
            ToolCallError::OverBudget("deep".into()),
            -4,
            "budget_exceeded",
        ),
    ] {
        let (link, _) = stub(Err(answer));
        let out = caller.invoke_with(b"{}", Some(link)).expect("call");
        assert_eq!(out.output["code"], code, "{}", out.output);
        assert_eq!(out.output["error"]["kind"], kind, "{}", out.output);
    }
    // Without a kernel link (a call loongd serves no kernel calls for): denied.
    let out = caller.invoke(b"{}").expect("call");
    assert_eq!(out.output["code"], -2, "{}", out.output);
    // A result past the bound is the tool's failure, not a result.
    let (link, _) = stub(Ok(vec![b' '; crate::MAX_TOOL_RESULT_BYTES + 1]));
    let out = caller.invoke_with(b"{}", Some(link)).expect("call");
    assert_eq!(out.output["code"], -3, "{}", out.output);
    echo_still_works();
}

#[test]
fn call_tool_refuses_bad_pointers_and_lengths_with_minus_one() {
    let imports = r#"
      (import "loong" "write_output" (func $write_output (param i32 i32) (result i32)))
      (import "loong" "call_tool" (func $call_tool (param i32 i32 i32 i32) (result i32)))
      (import "loong" "read_result" (func $read_result (param i32 i32) (result i32)))"#;
    // Writes [call_tool(ARGS), read_result(0, 16)] as two digits-or-minus-one codes.
    let probe = |args: &str| {
        let wat = format!(
            r#"(module {imports} (memory (export "memory") 1)
              (data (i32.const 0) "echo")
              (data (i32.const 8) "{{}}")
              (data (i32.const 100) "[ 0, 0]")
              (func $digit (param $at i32) (param $v i32)
                (if (i32.lt_s (local.get $v) (i32.const 0))
                  (then (i32.store8 (i32.sub (local.get $at) (i32.const 1)) (i32.const 45))
                        (local.set $v (i32.sub (i32.const 0) (local.get $v)))))
                (i32.store8 (local.get $at) (i32.add (i32.const 48) (local.get $v))))
              (func (export "run") (result i32)
                (call $digit (i32.const 102) (call $call_tool {args}))
                (call $digit (i32.const 105) (call $read_result (i32.const 200) (i32.const 16)))
                (drop (call $write_output (i32.const 100) (i32.const 7)))
                (i32.const 0)))"#
        );
        let p = load("probe", &wat);
        let (link, asked) = stub(Ok(b"7".to_vec()));
        let out = p.invoke_with(b"{}", Some(link)).expect("call");
        let n = asked.lock().expect("lock").len();
        (out.output, n)
    };
    // The control: a good call answers the result's length (1) and read_result copies it.
    assert_eq!(
        probe("(i32.const 0) (i32.const 4) (i32.const 8) (i32.const 2)"),
        (json!([1, 1]), 1)
    );
    for bad in [
        "(i32.const 0) (i32.const -1) (i32.const 8) (i32.const 2)",
        "(i32.const -5) (i32.const 4) (i32.const 8) (i32.const 2)",
        "(i32.const 0) (i32.const 4) (i32.const 65530) (i32.const 100)",
        "(i32.const 0) (i32.const 300) (i32.const 8) (i32.const 2)",
    ] {
        // -1, no result to read (-1), and loongd never asked.
        assert_eq!(probe(bad), (json!([-1, -1]), 0), "{bad}");
    }
}

#[test]
fn a_guest_waiting_on_a_kernel_call_stops_at_its_own_deadline() {
    let mut s = spec(
        "tool-caller",
        &std::fs::read_to_string(examples_dir().join("tool-caller/plugin.wat")).expect("wat"),
    );
    s.limits.timeout_ms = 300;
    let caller = engine().load(s).expect("loads");
    let (link, asked) = stub(Err(crate::ToolCallError::Deadline));
    let started = std::time::Instant::now();
    let err = caller.invoke_with(b"{}", Some(link)).expect_err("stopped");
    assert_eq!(err, InvokeError::Timeout { timeout_ms: 300 });
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let waited = asked.lock().expect("lock")[0].2;
    assert!(
        waited <= std::time::Duration::from_millis(300),
        "{waited:?}"
    );
    // An answer that comes back just as the deadline passes does not keep the guest alive.
    let late = Stub {
        answer: Ok(b"1".to_vec()),
        late: true,
        asked: Asked::default(),
    };
    let err = caller
        .invoke_with(b"{}", Some(Box::new(late)))
        .expect_err("stopped");
    assert_eq!(err, InvokeError::Timeout { timeout_ms: 300 });
    echo_still_works();
}
