//! Revoking (or rotating out) a publisher key acts at once: every plugin that key vouched for
//! is refused without waiting for a reload, its workers drain, search stops listing it, and
//! the change is audited; plugins the key did not sign keep serving.

use std::{fs, path::Path, time::Duration};

use crate::{
    supply_chain::{ctl_ok, example_module, generate, view, wasm_package},
    support::Home,
    workers::{details, invoke, json_list, workers},
};

/// How long a drained pool may take to stop its worker.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

pub(crate) fn sign(home: &Home, dir: &Path, key: &Path) {
    ctl_ok(
        home,
        &[
            "plugins",
            "sign",
            &dir.display().to_string(),
            "--key",
            &key.display().to_string(),
        ],
    );
}

fn search(home: &Home, trust: &str) -> Vec<String> {
    json_list(home, &["tools", "search", "", "--trust", trust, "--json"])
        .iter()
        .filter_map(|h| h["name"].as_str().map(String::from))
        .collect()
}

/// A native (process_stdio) package `id` in `dir`: the test peer script.
pub(crate) fn native_package(dir: &Path, id: &str) {
    fs::create_dir_all(dir).expect("pkg");
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("all/peers/jsonl_peer.py"),
        dir.join("peer.py"),
    )
    .expect("script");
    let manifest = serde_json::json!({
        "api_version": "v1alpha1", "plugin_id": id, "version": "0.1.0",
        "summary": "a signed native plugin",
        "metadata": {"bridge_kind": "process_stdio", "command": "/usr/bin/python3",
            "args_json": "[\"${PLUGIN_DIR}/peer.py\"]",
            "health_check_json": "{\"input\": {\"probe\": 1}}"},
        "sandbox": {"timeout_ms": 2000},
    });
    fs::write(dir.join("loong.plugin.json"), manifest.to_string()).expect("manifest");
}

/// Whether a stdio worker runs (lines is the only native plugin here).
fn native_worker_runs(home: &Home) -> bool {
    workers(home).iter().any(|w| w["kind"] == "stdio")
}

#[test]
fn a_revoked_or_rotated_key_withdraws_what_it_signed_at_once() {
    let home = Home::new();
    home.start();
    let work = tempfile::Builder::new()
        .prefix("lrv")
        .tempdir_in("/tmp")
        .expect("work");
    let (pub_a, id_a) = generate(&home, &work.path().join("a.key"));
    let (pub_b, id_b) = generate(&home, &work.path().join("b.key"));
    let (pub_c, _) = generate(&home, &work.path().join("c.key"));
    for (name, public, tier) in [
        ("vendor", &pub_a, "official"),
        ("friend", &pub_b, "verified-community"),
    ] {
        ctl_ok(
            &home,
            &[
                "keys", "add", "--name", name, "--public", public, "--tier", tier,
            ],
        );
    }
    // lines: native, signed by A (official); echoed: WASM, signed by B; plain: unsigned.
    let lines = work.path().join("lines");
    native_package(&lines, "lines");
    sign(&home, &lines, &work.path().join("a.key"));
    let echoed = work.path().join("echoed");
    wasm_package(&echoed, "echoed", "1", &example_module("echo"), None);
    sign(&home, &echoed, &work.path().join("b.key"));
    let plain = work.path().join("plain");
    wasm_package(&plain, "plain", "1", &example_module("echo"), None);
    for dir in [&lines, &echoed, &plain] {
        ctl_ok(&home, &["plugins", "install", &dir.display().to_string()]);
    }
    // Positive control: all serve, lines as official.
    let p = view(&home, "lines");
    assert!(p["state"] == "ready" && p["trust"] == "official", "{p}");
    for id in ["lines", "echoed", "plain"] {
        let (code, _, err) = invoke(&home, &[id, "--input", r#"{"n": 1}"#]);
        assert_eq!(code, 0, "{id}: {err}");
    }
    assert!(search(&home, "official").contains(&"lines".to_string()));
    assert!(native_worker_runs(&home));

    // A revoked: lines is refused now, with no reload.
    ctl_ok(&home, &["keys", "revoke", &id_a]);
    let p = view(&home, "lines");
    assert!(
        p["state"] == "failed"
            && p["trust"] == "unverified"
            && p["error"].as_str().is_some_and(|e| e.contains("revoked")),
        "{p}"
    );
    let (code, _, err) = invoke(&home, &["lines", "--input", "{}"]);
    assert_ne!(code, 0, "a withdrawn plugin still answers: {err}");
    assert!(!search(&home, "official").contains(&"lines".to_string()));
    assert!(!search(&home, "unverified").contains(&"lines".to_string()));
    let refused = details(&home, "plugin.refused");
    assert!(
        refused
            .iter()
            .any(|d| d["plugin"] == "lines" && d["key"] == id_a.as_str()),
        "{refused:?}"
    );
    let deadline = std::time::Instant::now() + DRAIN_WAIT;
    while native_worker_runs(&home) {
        assert!(
            std::time::Instant::now() < deadline,
            "the withdrawn plugin's worker is still running: {:?}",
            workers(&home)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // What A did not sign keeps serving.
    for id in ["echoed", "plain"] {
        assert_eq!(view(&home, id)["state"], "ready", "{id}");
    }

    // B rotated out (to C): what B signed is refused at once too; plain still serves.
    ctl_ok(
        &home,
        &[
            "keys",
            "rotate",
            &id_b,
            "--key",
            &work.path().join("b.key").display().to_string(),
            "--new-public",
            &pub_c,
        ],
    );
    let p = view(&home, "echoed");
    assert!(
        p["state"] == "failed" && p["error"].as_str().is_some_and(|e| e.contains("revoked")),
        "{p}"
    );
    let (code, _, _) = invoke(&home, &["echoed", "--input", "{}"]);
    assert_ne!(code, 0);
    assert!(details(&home, "plugin.refused")
        .iter()
        .any(|d| d["plugin"] == "echoed" && d["key"] == id_b.as_str()));
    let (code, _, err) = invoke(&home, &["plain", "--input", "{}"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(view(&home, "plain")["state"], "ready");
}
