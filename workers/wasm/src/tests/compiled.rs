//! Compiled modules: made when asked, mapped when they hold for this module and engine, and
//! refused (the module then compiled afresh and run as itself) when they do not.

use loong_ipc::{CompiledModule, CompiledUse};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{engine, module};
use crate::{PluginSpec, WasmEngine};

/// A plugin that answers `{"which": N}` whatever its input.
fn answers(n: u32) -> PluginSpec {
    let text = format!("{{\"which\":{n}}}");
    let quoted = text.replace('"', "\\\"");
    let wat = module(&format!(
        r#"(data (i32.const 16) "{quoted}")
           (func (export "run") (drop (call $write_output (i32.const 16) (i32.const {}))))"#,
        text.len()
    ));
    PluginSpec {
        plugin_id: format!("answers-{n}"),
        module: wat::parse_str(&wat).expect("test WAT compiles"),
        entrypoint: "run".into(),
        ..PluginSpec::default()
    }
}

/// `n`'s compiled module, made by a fresh engine asked for it.
fn artifact(n: u32) -> CompiledModule {
    let maker = WasmEngine::new().expect("engine");
    let loaded = maker
        .load_with_cache(PluginSpec {
            want_compiled: true,
            ..answers(n)
        })
        .expect("loads");
    assert_eq!(loaded.compiled_use, CompiledUse::Compiled);
    loaded.compiled.expect("an artifact when asked")
}

/// Loads `n` with `compiled` on the shared engine; the call must answer `n` whatever became
/// of the artifact. Returns what did.
fn load_with(n: u32, compiled: CompiledModule) -> CompiledUse {
    let loaded = engine()
        .load_with_cache(PluginSpec {
            compiled: Some(compiled),
            want_compiled: true,
            ..answers(n)
        })
        .expect("loads");
    let out = loaded.plugin.invoke(b"{}").expect("call");
    assert_eq!(out.output, json!({ "which": n }));
    // A mapped module is not answered again; a refused one is, compiled afresh.
    assert_eq!(
        loaded.compiled.is_some(),
        loaded.compiled_use != CompiledUse::Mapped,
        "{:?}",
        loaded.compiled_use
    );
    loaded.compiled_use
}

fn refused(used: &CompiledUse, what: &str) -> bool {
    matches!(used, CompiledUse::Refused(why) if why.contains(what))
}

#[test]
fn an_artifact_is_made_only_when_asked_and_mapped_on_the_same_engine() {
    let plain = engine().load_with_cache(answers(1)).expect("loads");
    assert!(plain.compiled.is_none(), "not asked, none made");
    let a = artifact(1);
    assert_eq!(a.engine, engine().engine_key());
    assert_eq!(
        a.module_sha256,
        hex::encode(Sha256::digest(&answers(1).module))
    );
    assert_eq!(load_with(1, a), CompiledUse::Mapped);
}

#[test]
fn a_corrupted_or_truncated_artifact_is_refused_and_the_module_compiled() {
    // The control: the artifact as made is mapped.
    assert_eq!(load_with(2, artifact(2)), CompiledUse::Mapped);
    // One bit flipped in its code, its stored digest unchanged.
    let mut flipped = artifact(2);
    let mid = flipped.bytes.len() / 2;
    flipped.bytes[mid] ^= 0x40;
    let used = load_with(2, flipped);
    assert!(refused(&used, "corrupted or truncated"), "{used:?}");
    // Truncated, its stored digest unchanged.
    let mut cut = artifact(2);
    cut.bytes.truncate(cut.bytes.len() / 2);
    let used = load_with(2, cut);
    assert!(refused(&used, "corrupted or truncated"), "{used:?}");
    // Truncated with a digest that matches it: wasmtime itself refuses it.
    let mut cut = artifact(2);
    cut.bytes.truncate(cut.bytes.len() / 2);
    cut.sha256 = hex::encode(Sha256::digest(&cut.bytes));
    let used = load_with(2, cut);
    assert!(refused(&used, "wasmtime refused"), "{used:?}");
}

#[test]
fn an_artifact_of_another_module_is_refused_and_the_module_runs_as_itself() {
    // Module 3's artifact offered for module 4: mapping it would run 3's code as 4. (An
    // artifact whose key lies about its module cannot be told from its bytes: that is why
    // loongd takes artifacts only from workers that ran no guest code, for the module it
    // asked them to load.)
    let used = load_with(4, artifact(3));
    assert!(refused(&used, "not this one"), "{used:?}");
}

#[test]
fn an_artifact_of_another_engine_or_version_is_refused() {
    // Another key (another wasmtime version or configuration, as the key says).
    let mut other = artifact(5);
    other.engine = "loong-worker-wasm-0.0.0/00000000000000000000000000000000".into();
    let used = load_with(5, other);
    assert!(refused(&used, "not this worker's"), "{used:?}");
    // An artifact really made by another configuration (no fuel, no epochs), under this
    // engine's key: wasmtime's own header check refuses it.
    let other_engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(&other_engine, answers(5).module).expect("compiles");
    let bytes = module.serialize().expect("serializes");
    let forged = CompiledModule {
        module_sha256: hex::encode(Sha256::digest(&answers(5).module)),
        engine: engine().engine_key().to_owned(),
        sha256: hex::encode(Sha256::digest(&bytes)),
        bytes,
    };
    let used = load_with(5, forged);
    assert!(refused(&used, "wasmtime refused"), "{used:?}");
}
