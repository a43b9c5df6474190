//! Public Loong's WASM host-ABI fixtures, ported: every WAT module of its
//! `crates/spec/src/spec_runtime/wasm_runtime_tests.rs`, and the two of
//! `crates/daemon/tests/integration/spec_runtime.rs` that import module `loong`, run on this
//! engine. Each test quotes upstream's setup and assertions next to ours.
//!
//! Upstream's shared setup (`test_wasm_runtime_policy`, `test_wasm_command`,
//! `provider_with_metadata`, `test_wasm_channel`): fuel limit 200,000, no timeout unless the
//! test sets one, output cap 256 KiB, provider `provider-x`, channel `channel-wasm`,
//! operation `invoke`, payload `{"input":"ping"}`. Config values are given here as loongd
//! resolves them from a manifest (`provider.K` is `metadata.K`; the resolution itself is
//! tested in policy-profiles); upstream's evidence fields that this engine does not report
//! (`host_abi_enabled`, `entrypoint_signature`, `guest_exit_code`, cache fields) are quoted
//! but not checked, as docs/plugins.md says.

use serde_json::{json, Value};

use super::{echo_still_works, engine};
use crate::{InvokeError, LoadedPlugin, PluginLimits, PluginSpec, RequestEnvelope};

/// Upstream's `test_wasm_command` payload.
const PING: &[u8] = br#"{"input":"ping"}"#;

/// A fixture loaded as upstream's test policy runs it: fuel 200,000, the envelope addressed to
/// `provider-x` on `channel-wasm`, and `config` the guest-readable values.
fn upstream(id: &str, wat_text: &str, config: &[(&str, &str)]) -> PluginSpec {
    PluginSpec {
        plugin_id: id.into(),
        module: wat::parse_str(wat_text).expect("upstream WAT compiles"),
        entrypoint: "run".into(),
        limits: PluginLimits {
            fuel: Some(200_000),
            ..PluginLimits::default()
        },
        config: config
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        guest_readable_config_keys: config.iter().map(|(k, _)| (*k).to_owned()).collect(),
        envelope: Some(RequestEnvelope {
            provider_id: "provider-x".into(),
            channel_id: Some("channel-wasm".into()),
        }),
        ..PluginSpec::default()
    }
}

fn load(spec: PluginSpec) -> LoadedPlugin {
    engine().load(spec).expect("upstream fixture loads")
}

/// Upstream's `execute_wasm_component_bridge_reads_allowlisted_guest_config_value` module.
fn config_echo_wat(key: &str) -> String {
    let n = key.len();
    format!(
        r#"(module
              (import "loong" "config_len" (func $config_len (param i32 i32) (result i32)))
              (import "loong" "read_config" (func $read_config (param i32 i32 i32 i32) (result i32)))
              (import "loong" "write_output" (func $write_output (param i32 i32) (result i32)))
              (func (export "run") (result i32)
                (local $value_len i32)
                i32.const 0
                i32.const {n}
                call $config_len
                local.tee $value_len
                i32.const 0
                i32.lt_s
                if
                  i32.const 1
                  return
                end
                i32.const 63
                i32.const 34
                i32.store8
                i32.const 0
                i32.const {n}
                i32.const 64
                local.get $value_len
                call $read_config
                local.get $value_len
                i32.ne
                if
                  i32.const 2
                  return
                end
                i32.const 64
                local.get $value_len
                i32.add
                i32.const 34
                i32.store8
                i32.const 63
                local.get $value_len
                i32.const 2
                i32.add
                call $write_output
                local.get $value_len
                i32.const 2
                i32.add
                i32.ne
                if
                  i32.const 3
                  return
                end
                i32.const 0)
              (memory (export "memory") 1)
              (data (i32.const 0) "{key}"))"#
    )
}

/// Upstream's module that passes when `config_len` answers -2 (missing and disallowed keys).
fn config_unavailable_wat(key: &str) -> String {
    let n = key.len();
    format!(
        r#"(module
              (import "loong" "config_len" (func $config_len (param i32 i32) (result i32)))
              (func (export "run") (result i32)
                i32.const 0
                i32.const {n}
                call $config_len
                i32.const -2
                i32.eq
                if (result i32)
                  i32.const 0
                else
                  i32.const 1
                end)
              (memory (export "memory") 1)
              (data (i32.const 0) "{key}"))"#
    )
}

/// Upstream's `execute_wasm_component_bridge_exchanges_request_output_and_logs` module, also
/// the first `loong` fixture of `spec_runtime.rs`.
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
              (data (i32.const 0) "hello"))
        "#;

/// Upstream's module that writes the eight bytes `not-json`.
const NOT_JSON_WAT: &str = r#"
            (module
              (import "loong" "write_output" (func $write_output (param i32 i32) (result i32)))
              (func (export "run") (result i32)
                i32.const 0
                i32.const 8
                call $write_output
                drop
                i32.const 0)
              (memory (export "memory") 1)
              (data (i32.const 0) "not-json"))
        "#;

// Upstream: provider metadata {"region": "us-east-1"}, allowlist {"provider.region"}.
//   assert_eq!(execution["status"], json!("executed"));
//   assert_eq!(execution["runtime"]["host_abi_enabled"], json!(true));
//   assert_eq!(execution["runtime"]["output_json"], json!("us-east-1"));
#[test]
fn upstream_reads_allowlisted_guest_config_value() {
    let key = "provider.region";
    let plugin = load(upstream(
        "u-config",
        &config_echo_wat(key),
        &[(key, "us-east-1")],
    ));
    assert_eq!(
        plugin.invoke(PING).expect("config read").output,
        json!("us-east-1")
    );
}

// Upstream: provider metadata has no `missing`; allowlist {"provider.missing"}; the guest
// returns 0 only when config_len answers -2.
//   assert_eq!(execution["status"], json!("executed"));
//   assert_eq!(execution["runtime"]["guest_exit_code"], json!(0));
//   assert_eq!(execution["runtime"]["output_json"], Value::Null);
#[test]
fn upstream_fails_closed_for_missing_guest_config_key() {
    let key = "provider.missing";
    let mut spec = upstream("u-missing", &config_unavailable_wat(key), &[]);
    // Allowlisted, with no value: what loongd sends for a key that resolves to nothing.
    spec.guest_readable_config_keys = vec![key.into()];
    let out = load(spec).invoke(PING).expect("exit 0 is success");
    assert_eq!(out.output, Value::Null);
}

// Upstream: provider metadata {"region": "us-east-1"}, allowlist empty.
//   assert_eq!(execution["status"], json!("executed"));
//   assert_eq!(execution["runtime"]["guest_exit_code"], json!(0));
//   assert_eq!(execution["runtime"]["output_json"], Value::Null);
#[test]
fn upstream_fails_closed_for_disallowed_guest_config_key() {
    let key = "provider.region";
    let mut spec = upstream(
        "u-disallowed",
        &config_unavailable_wat(key),
        &[(key, "us-east-1")],
    );
    // The value is in the plugin's config but not guest-readable.
    spec.guest_readable_config_keys.clear();
    let out = load(spec).invoke(PING).expect("exit 0 is success");
    assert_eq!(out.output, Value::Null);
    // Control: the same module with the key allowlisted sees the value (config_len is not
    // -2), so it returns 1 and the call fails.
    let allowed = load(upstream(
        "u-allowed",
        &config_unavailable_wat(key),
        &[(key, "us-east-1")],
    ));
    assert_eq!(
        allowed.invoke(PING).expect_err("the key is readable"),
        InvokeError::ExitCode { code: 1 }
    );
}

// Upstream: allowlist {"provider.region"} = "us-east-1"; read_config with a buffer one byte
// short; the guest returns 0 only when it answers -3.
//   assert_eq!(execution["status"], json!("executed"));
//   assert_eq!(execution["runtime"]["guest_exit_code"], json!(0));
//   assert_eq!(execution["runtime"]["output_json"], Value::Null);
#[test]
fn upstream_reports_buffer_too_small_for_guest_config_read() {
    let key = "provider.region";
    let n = key.len();
    let wat_text = format!(
        r#"(module
              (import "loong" "config_len" (func $config_len (param i32 i32) (result i32)))
              (import "loong" "read_config" (func $read_config (param i32 i32 i32 i32) (result i32)))
              (func (export "run") (result i32)
                (local $value_len i32)
                i32.const 0
                i32.const {n}
                call $config_len
                local.set $value_len
                i32.const 0
                i32.const {n}
                i32.const 64
                local.get $value_len
                i32.const 1
                i32.sub
                call $read_config
                i32.const -3
                i32.eq
                if (result i32)
                  i32.const 0
                else
                  i32.const 1
                end)
              (memory (export "memory") 1)
              (data (i32.const 0) "{key}"))"#
    );
    let plugin = load(upstream("u-small", &wat_text, &[(key, "us-east-1")]));
    assert_eq!(plugin.invoke(PING).expect("-3 seen").output, Value::Null);
}

// Upstream: payload {"input":"ping","nested":{"ok":true}}.
//   let expected_request = super::wasm_bridge_request_payload(&provider, &channel, &command);
//   assert_eq!(execution["status"], json!("executed"));
//   assert_eq!(execution["runtime"]["host_abi_enabled"], json!(true));
//   assert_eq!(execution["runtime"]["entrypoint_signature"], json!("() -> i32"));
//   assert_eq!(execution["runtime"]["guest_exit_code"], json!(0));
//   assert_eq!(execution["runtime"]["guest_logs"], json!(["hello"]));
//   assert_eq!(execution["runtime"]["guest_logs_truncated"], json!(false));
//   assert_eq!(execution["runtime"]["output_json"], expected_request);
#[test]
fn upstream_exchanges_request_output_and_logs() {
    let plugin = load(upstream("u-exchange", EXCHANGE_WAT, &[]));
    let payload = json!({"input": "ping", "nested": {"ok": true}});
    let out = plugin
        .invoke(payload.to_string().as_bytes())
        .expect("exchange");
    assert_eq!(
        out.output,
        json!({
            "provider_id": "provider-x",
            "channel_id": "channel-wasm",
            "operation": "invoke",
            "payload": payload,
        })
    );
    assert_eq!(out.logs, vec!["hello".to_owned()]);
    assert_eq!(out.logs_dropped, 0);
}

// Upstream (`crates/daemon/tests/integration/spec_runtime.rs`,
// `execute_spec_wasm_component_bridge_exchanges_request_output_when_runtime_enabled`): the same
// module from an embedded-source manifest with provider_id "wasm-runtime-provider",
// channel_id "primary", a component_sha256 pin, fuel 200,000, operation "invoke", payload
// {"input":"ping"}.
//   let expected_request = json!({"provider_id": "wasm-runtime-provider",
//       "channel_id": "primary", "operation": "invoke", "payload": {"input": "ping"}});
//   assert_eq!(report.outcome["outcome"]["payload"]["bridge_execution"]["status"], "executed");
//   assert_eq!(...["runtime"]["guest_logs"], json!(["hello"]));
//   assert_eq!(...["runtime"]["output_json"], expected_request);
//   assert_eq!(...["runtime"]["fuel_limit"], 200_000);
//   assert!(...["runtime"]["fuel_consumed"].is_number());
//   assert_eq!(...["runtime"]["expected_sha256"], digest_hex);  (and artifact_sha256)
// Through loongd with an installed package: tests/all/upstream_abi.rs.
#[test]
fn upstream_spec_runtime_exchanges_request_output() {
    let module = wat::parse_str(EXCHANGE_WAT).expect("upstream WAT compiles");
    let digest = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(&module))
    };
    let plugin = load(PluginSpec {
        sha256: Some(digest),
        envelope: Some(RequestEnvelope {
            provider_id: "wasm-runtime-provider".into(),
            channel_id: Some("primary".into()),
        }),
        ..upstream("u-spec-exchange", EXCHANGE_WAT, &[])
    });
    let out = plugin.invoke(PING).expect("exchange");
    assert_eq!(
        out.output,
        json!({"provider_id": "wasm-runtime-provider", "channel_id": "primary",
               "operation": "invoke", "payload": {"input": "ping"}})
    );
    assert_eq!(out.logs, vec!["hello".to_owned()]);
    assert!(out.fuel_consumed.is_some_and(|f| f > 0 && f <= 200_000));
}

// Upstream (`spec_runtime.rs`,
// `execute_spec_wasm_component_bridge_reads_allowlisted_guest_config_when_runtime_enabled`):
// the config module above, manifest metadata {"region": "us-east-1", …}, the operator's
// guest_readable_config_keys ["provider.region"].
//   assert_eq!(report.outcome["outcome"]["payload"]["bridge_execution"]["status"], "executed");
//   assert_eq!(...["runtime"]["host_abi_enabled"], true);
//   assert_eq!(...["runtime"]["output_json"], json!("us-east-1"));
// Through loongd with an installed package: tests/all/upstream_abi.rs.
#[test]
fn upstream_spec_runtime_reads_allowlisted_guest_config() {
    let key = "provider.region";
    let plugin = load(upstream(
        "u-spec-config",
        &config_echo_wat(key),
        &[(key, "us-east-1")],
    ));
    assert_eq!(
        plugin.invoke(PING).expect("config").output,
        json!("us-east-1")
    );
}

// Upstream: `(module (func (export "run")))`.
//   assert_eq!(execution["status"], json!("executed"));
//   assert_eq!(execution["runtime"]["host_abi_enabled"], json!(false));
//   assert_eq!(execution["runtime"]["entrypoint_signature"], json!("() -> ()"));
//   assert_eq!(execution["runtime"]["guest_exit_code"], Value::Null);
//   assert_eq!(execution["runtime"]["guest_logs"], json!([]));
//   assert_eq!(execution["runtime"]["output_json"], Value::Null);
#[test]
fn upstream_preserves_legacy_unit_signature() {
    let plugin = load(upstream("u-unit", r#"(module (func (export "run")))"#, &[]));
    let out = plugin.invoke(PING).expect("a () -> () entry succeeds");
    assert_eq!(out.output, Value::Null);
    assert!(out.logs.is_empty());
}

// Upstream: imports only input_len, exports no memory.
//   assert_eq!(execution["status"], json!("executed"));
//   assert_eq!(execution["runtime"]["guest_exit_code"], json!(0));
//   assert_eq!(execution["runtime"]["host_abi_enabled"], json!(true));
#[test]
fn upstream_allows_scalar_host_abi_imports_without_memory() {
    let plugin = load(upstream(
        "u-scalar",
        r#"(module
              (import "loong" "input_len" (func $input_len (result i32)))
              (func (export "run") (result i32)
                call $input_len
                drop
                i32.const 0))"#,
        &[],
    ));
    assert_eq!(plugin.invoke(PING).expect("scalar").output, Value::Null);
}

// Upstream: imports read_input, exports no memory.
//   assert_eq!(execution["status"], json!("failed"));
//   assert_eq!(execution["reason"], json!("wasm host ABI requires exported memory"));
//   assert_eq!(execution["runtime"]["host_abi_enabled"], json!(true));
// Ours: the module loads (upstream fails the call, not the load) and each call fails with
// MemoryNotExported, naming the import.
#[test]
fn upstream_fails_when_memory_backed_host_abi_is_missing_memory() {
    let plugin = load(upstream(
        "u-no-memory",
        r#"(module
              (import "loong" "read_input" (func $read_input (param i32 i32) (result i32)))
              (func (export "run") (result i32)
                i32.const 0
                i32.const 0
                call $read_input
                drop
                i32.const 0))"#,
        &[],
    ));
    let err = plugin.invoke(PING).expect_err("no memory");
    assert_eq!(
        err,
        InvokeError::MemoryNotExported {
            import: "read_input".into()
        }
    );
    assert!(err.to_string().contains("exports no memory"), "{err}");
    echo_still_works();
}

// Upstream: a start function that loops; fuel limit None, wasm_timeout_ms Some(50).
//   assert_eq!(execution["status"], json!("failed"));
//   assert_eq!(execution["reason"], json!("wasm execution timed out after 50ms"));
//   assert_eq!(execution["runtime"]["timeout_ms"], json!(50));
//   assert_eq!(execution["runtime"]["timeout_triggered"], json!(true));
#[test]
fn upstream_times_out_during_instantiation_start_function() {
    let mut spec = upstream(
        "u-start-loop",
        r#"(module
              (func $start
                (loop
                  br 0))
              (func (export "run") (result i32)
                i32.const 0)
              (start $start))"#,
        &[],
    );
    spec.limits.fuel = None;
    spec.limits.timeout_ms = 50;
    assert_eq!(
        load(spec).invoke(PING).expect_err("start loops"),
        InvokeError::Timeout { timeout_ms: 50 }
    );
    echo_still_works();
}

// Upstream: writes the eight bytes "not-json".
//   assert_eq!(execution["status"], json!("failed"));
//   assert!(execution["reason"].as_str()...contains("wasm guest output is not valid JSON"));
//   assert_eq!(execution["runtime"]["output_text"], json!("not-json"));
#[test]
fn upstream_fails_when_guest_output_is_not_json() {
    let plugin = load(upstream("u-not-json", NOT_JSON_WAT, &[]));
    assert!(matches!(
        plugin.invoke(PING).expect_err("not JSON"),
        InvokeError::OutputNotJson { .. }
    ));
}

// Upstream: the same module, wasm_max_output_bytes Some(4).
//   assert_eq!(execution["status"], json!("failed"));
//   assert_eq!(execution["reason"], json!("wasm guest output exceeds host ABI limit of 4 bytes"));
//   assert_eq!(execution["runtime"]["max_output_bytes"], json!(4));
#[test]
fn upstream_respects_configured_output_limit() {
    let mut spec = upstream("u-output-cap", NOT_JSON_WAT, &[]);
    spec.limits.max_output_bytes = 4;
    let plugin = load(spec);
    assert_eq!(plugin.limits().max_output_bytes, 4);
    assert_eq!(
        plugin.invoke(PING).expect_err("over the cap"),
        InvokeError::OutputTooLarge { cap: 4 }
    );
}

// Upstream: abort(7).
//   assert_eq!(execution["status"], json!("failed"));
//   assert_eq!(execution["reason"], json!("wasm guest aborted with code 7"));
//   assert_eq!(execution["runtime"]["host_abi_enabled"], json!(true));
//   assert_eq!(execution["runtime"]["entrypoint_signature"], json!("() -> i32"));
#[test]
fn upstream_reports_guest_abort_reason() {
    let plugin = load(upstream(
        "u-abort",
        r#"(module
              (import "loong" "abort" (func $abort (param i32)))
              (func (export "run") (result i32)
                i32.const 7
                call $abort
                i32.const 0)
              (memory (export "memory") 1))"#,
        &[],
    ));
    assert_eq!(
        plugin.invoke(PING).expect_err("aborts"),
        InvokeError::Aborted { code: 7 }
    );
}
