//! Public Loong's WASM host-ABI fixtures through loongd: packages in public Loong's shape
//! (top-level `provider_id`/`channel_id`, `bridge_kind: wasm_component`, a
//! `metadata.component_sha256` pin, no `sandbox` block) installed with `loongctl plugins
//! install` and called with `loongctl invoke`. The guest reads public Loong's request
//! envelope and the `provider.`/`channel.` config keys resolved from the manifest; the
//! unit-level ports of every fixture are in workers/wasm/src/tests/upstream.rs.

use std::{fs, path::Path};

use sha2::{Digest, Sha256};

use crate::support::{text, Home};
use crate::workers::invoke;

/// Public Loong's `execute_spec_wasm_component_bridge_exchanges_request_output_when_runtime_
/// enabled` module: logs "hello", reads its input at 32 and writes it back.
const EXCHANGE_WAT: &str = r#"
    (module
      (import "loong" "input_len" (func $input_len (result i32)))
      (import "loong" "read_input" (func $read_input (param i32 i32) (result i32)))
      (import "loong" "write_output" (func $write_output (param i32 i32) (result i32)))
      (import "loong" "log" (func $log (param i32 i32) (result i32)))
      (func (export "run") (result i32)
        (local $input_len i32)
        i32.const 0
        i32.const 5
        call $log
        drop
        call $input_len
        local.set $input_len
        i32.const 32
        local.get $input_len
        call $read_input
        drop
        i32.const 32
        local.get $input_len
        call $write_output
        drop
        i32.const 0)
      (memory (export "memory") 1)
      (data (i32.const 0) "hello"))"#;

/// Public Loong's `…reads_allowlisted_guest_config_when_runtime_enabled` module: writes the
/// value of config key `key` as a JSON string.
fn config_wat(key: &str) -> String {
    let n = key.len();
    format!(
        r#"(module
      (import "loong" "config_len" (func $config_len (param i32 i32) (result i32)))
      (import "loong" "read_config" (func $read_config (param i32 i32 i32 i32) (result i32)))
      (import "loong" "write_output" (func $write_output (param i32 i32) (result i32)))
      (func (export "run") (result i32)
        (local $value_len i32)
        (local.set $value_len (call $config_len (i32.const 0) (i32.const {n})))
        (if (i32.lt_s (local.get $value_len) (i32.const 0)) (then (return (i32.const 1))))
        (i32.store8 (i32.const 63) (i32.const 34))
        (if (i32.ne (call $read_config (i32.const 0) (i32.const {n}) (i32.const 64)
                                       (local.get $value_len))
                    (local.get $value_len))
          (then (return (i32.const 2))))
        (i32.store8 (i32.add (i32.const 64) (local.get $value_len)) (i32.const 34))
        (drop (call $write_output (i32.const 63) (i32.add (local.get $value_len) (i32.const 2))))
        (i32.const 0))
      (memory (export "memory") 1)
      (data (i32.const 0) "{key}"))"#
    )
}

/// Writes a package in public Loong's shape: `id` with provider `id`-provider, channel
/// "primary", the module pinned in `metadata.component_sha256`, `metadata` extra members and
/// an optional `sandbox` block (`None`: none, as public Loong writes them).
fn upstream_package(
    dir: &Path,
    id: &str,
    wat_text: &str,
    metadata: serde_json::Value,
    sandbox: Option<serde_json::Value>,
) {
    fs::create_dir_all(dir).expect("package dir");
    let module = wat::parse_str(wat_text).expect("fixture WAT compiles");
    let digest = hex::encode(Sha256::digest(&module));
    fs::write(dir.join("plugin.wasm"), module).expect("module");
    let provider = format!("{id}-provider");
    let mut meta = serde_json::json!({
        "bridge_kind": "wasm_component", "component": "plugin.wasm",
        "component_sha256": format!("sha256:{digest}"), "entrypoint": "run", "version": "1.0.0",
    });
    if let (Some(m), Some(extra)) = (meta.as_object_mut(), metadata.as_object()) {
        m.extend(extra.clone());
    }
    let mut manifest = serde_json::json!({
        "api_version": "v1alpha1", "version": "1.0.0", "plugin_id": id,
        "provider_id": provider, "connector_name": provider, "channel_id": "primary",
        "endpoint": format!("local://{provider}/invoke"), "capabilities": [],
        "metadata": meta,
    });
    if let Some(sb) = sandbox {
        manifest["sandbox"] = sb;
    }
    fs::write(dir.join("loong.plugin.json"), manifest.to_string()).expect("manifest");
}

fn install(home: &Home, dir: &Path) {
    let out = home.ctl(&["plugins", "install", &dir.display().to_string()]);
    assert!(out.status.success(), "install: {}", text(&out.stderr));
}

fn call(home: &Home, id: &str, input: &str) -> serde_json::Value {
    let (code, out, err) = invoke(home, &[id, "--input", input]);
    assert_eq!(code, 0, "{id}: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{id} prints JSON: {e}: {out}"))
}

/// Upstream: `execute_spec_wasm_component_bridge_exchanges_request_output_when_runtime_enabled`
///   operation "invoke", payload {"input":"ping"}
///   assert_eq!(...["runtime"]["output_json"], json!({"provider_id": "wasm-runtime-provider",
///       "channel_id": "primary", "operation": "invoke", "payload": {"input": "ping"}}));
/// Here: the same module, installed from a package in public Loong's shape, answers the
/// envelope; the same package declaring `sandbox.input = "bare"` answers the input as given.
#[test]
fn an_upstream_package_reads_the_request_envelope_end_to_end() {
    let home = Home::new();
    home.start();
    let pkgs = tempfile::Builder::new()
        .prefix("upabi")
        .tempdir_in("/tmp")
        .expect("packages");
    let run = pkgs.path().join("wasm-runtime");
    upstream_package(
        &run,
        "wasm-runtime",
        EXCHANGE_WAT,
        serde_json::json!({}),
        None,
    );
    install(&home, &run);
    assert_eq!(
        call(&home, "wasm-runtime", r#"{"input":"ping"}"#),
        serde_json::json!({"provider_id": "wasm-runtime-provider", "channel_id": "primary",
                           "operation": "invoke", "payload": {"input": "ping"}})
    );
    // Control: declared bare, the guest reads the caller's input as given.
    let bare = pkgs.path().join("wasm-bare");
    upstream_package(
        &bare,
        "wasm-bare",
        EXCHANGE_WAT,
        serde_json::json!({}),
        Some(serde_json::json!({"input": "bare"})),
    );
    install(&home, &bare);
    assert_eq!(
        call(&home, "wasm-bare", r#"{"input":"ping"}"#),
        serde_json::json!({"input": "ping"})
    );
}

/// Upstream: `execute_spec_wasm_component_bridge_reads_allowlisted_guest_config_when_runtime_
/// enabled`: manifest metadata {"region": "us-east-1"}, guest_readable_config_keys
/// ["provider.region"]
///   assert_eq!(...["runtime"]["output_json"], json!("us-east-1"));
/// Here: the allowlist is the manifest's `sandbox.guest_readable_config_keys` (a documented
/// difference); `provider.region` reads `metadata.region`, `channel.source_plugin` the plugin
/// id (public Loong's channel metadata), and a key not allowlisted is unavailable (the guest
/// returns 1, so the call fails with exit code 1).
#[test]
fn provider_and_channel_config_keys_reach_an_installed_plugin() {
    let home = Home::new();
    home.start();
    let pkgs = tempfile::Builder::new()
        .prefix("upcfg")
        .tempdir_in("/tmp")
        .expect("packages");
    let region = serde_json::json!({"region": "us-east-1", "secret": "hidden"});
    for (id, key) in [
        ("cfg-region", "provider.region"),
        ("cfg-channel", "channel.source_plugin"),
    ] {
        let dir = pkgs.path().join(id);
        upstream_package(
            &dir,
            id,
            &config_wat(key),
            region.clone(),
            Some(serde_json::json!({"guest_readable_config_keys": [key]})),
        );
        install(&home, &dir);
    }
    assert_eq!(
        call(&home, "cfg-region", r#"{"input":"ping"}"#),
        serde_json::json!("us-east-1")
    );
    assert_eq!(
        call(&home, "cfg-channel", "{}"),
        serde_json::json!("cfg-channel")
    );
    // The refusal: metadata.secret is in the manifest but not allowlisted.
    let dir = pkgs.path().join("cfg-secret");
    upstream_package(
        &dir,
        "cfg-secret",
        &config_wat("provider.secret"),
        region,
        Some(serde_json::json!({"guest_readable_config_keys": ["provider.region"]})),
    );
    install(&home, &dir);
    let (code, out, err) = invoke(&home, &["cfg-secret", "--input", "{}"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("exited with code 1"), "{err}");
    assert!(
        !out.contains("hidden") && !err.contains("hidden"),
        "{out}{err}"
    );
}
