//! Signed plugin packages: a detached ed25519 signature over every file of the package,
//! checked against loongd's keyring at discovery. The effective trust tier is the lowest of
//! what the manifest claims and what the signature proves.

use std::{fs, path::Path};

use crate::{
    support::{text, Home},
    workers::{details, install_examples, invoke, json_list, plugins, records},
};

/// `keys generate` into `file`; returns (public hex, key id).
pub(crate) fn generate(home: &Home, file: &Path) -> (String, String) {
    let out = home.ctl(&["keys", "generate", "--out", &file.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let field = |name: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .expect("generate prints the key")
    };
    (field("public:"), field("id:"))
}

fn sign(home: &Home, plugin: &str, key: &Path) {
    let dir = home.path().join("plugins").join(plugin);
    let out = home.ctl(&[
        "plugins",
        "sign",
        &dir.display().to_string(),
        "--key",
        &key.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn set_claim(home: &Home, plugin: &str, tier: &str) {
    let path = home
        .path()
        .join("plugins")
        .join(plugin)
        .join("loong.plugin.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("manifest")).expect("JSON");
    m["trust_tier"] = serde_json::Value::String(tier.into());
    fs::write(&path, m.to_string()).expect("manifest");
}

pub(crate) fn view(home: &Home, id: &str) -> serde_json::Value {
    plugins(home)
        .into_iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("{id} listed"))
}

fn reload(home: &Home) {
    let out = home.ctl(&["plugins", "reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn signatures_prove_a_tier_and_tampering_or_revocation_refuses_the_package() {
    let home = Home::new();
    install_examples(&home);
    home.start();
    let keys = tempfile::tempdir().expect("key dir");
    let official = keys.path().join("official.key");
    let community = keys.path().join("community.key");
    let (off_pub, off_id) = generate(&home, &official);
    let (com_pub, com_id) = generate(&home, &community);
    for (name, public, tier) in [
        ("vendor", &off_pub, "official"),
        ("friend", &com_pub, "verified-community"),
    ] {
        let out = home.ctl(&[
            "keys", "add", "--name", name, "--public", public, "--tier", tier,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // echo claims official but is signed by a verified-community key; json-transform is
    // signed by the official key and claims nothing; config-reader is unsigned.
    set_claim(&home, "echo", "official");
    sign(&home, "echo", &community);
    sign(&home, "json-transform", &official);
    reload(&home);
    let tiers: Vec<(String, String)> = ["echo", "json-transform", "config-reader"]
        .iter()
        .map(|id| {
            let p = view(&home, id);
            assert_eq!(p["state"], "ready", "{p}");
            (
                p["trust"].as_str().unwrap_or_default().to_string(),
                p["signer"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        tiers,
        [
            (
                "verified-community".to_string(),
                format!("{com_id} (friend)")
            ),
            ("official".to_string(), format!("{off_id} (vendor)")),
            ("unverified".to_string(), String::new()),
        ],
        "the lowest of the claim and the proof"
    );
    let names = |trust: &str| -> Vec<String> {
        json_list(&home, &["tools", "search", "", "--trust", trust, "--json"])
            .iter()
            .filter_map(|h| h["name"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(names("official"), ["json-transform"]);
    assert_eq!(names("verified-community"), ["echo", "json-transform"]);
    let loaded: Vec<serde_json::Value> = details(&home, "plugin.loaded");
    assert!(loaded
        .iter()
        .any(|d| d["plugin"] == "echo" && d["trust"] == "verified-community"));

    // A file changed after signing: refused, naming the file; the others keep serving.
    let summary_path = home.path().join("plugins/json-transform/loong.plugin.json");
    let original = fs::read_to_string(&summary_path).expect("manifest");
    fs::write(
        &summary_path,
        original.replacen("Wraps", "Quietly wraps", 1),
    )
    .expect("tamper");
    reload(&home);
    let p = view(&home, "json-transform");
    assert_eq!(p["state"], "failed", "{p}");
    assert!(
        p["error"]
            .as_str()
            .is_some_and(|e| e.contains("loong.plugin.json (changed)")),
        "{p}"
    );
    let (code, _, err) = invoke(&home, &["json-transform"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = invoke(&home, &["echo", "--input", "{}"]);
    assert_eq!(code, 0, "{err}");
    // Put back as signed: accepted again (the positive control).
    fs::write(&summary_path, &original).expect("restore");
    reload(&home);
    assert_eq!(view(&home, "json-transform")["state"], "ready");

    // The community key revoked: what it signed is refused.
    let out = home.ctl(&["keys", "revoke", &com_id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    reload(&home);
    let p = view(&home, "echo");
    assert_eq!(p["state"], "failed", "{p}");
    assert!(
        p["error"].as_str().is_some_and(|e| e.contains("revoked")),
        "{p}"
    );
    assert_eq!(view(&home, "json-transform")["state"], "ready");
    assert!(details(&home, "plugin.refused")
        .into_iter()
        .any(|d| d["plugin"] == "echo"
            && d["reason"].as_str().is_some_and(|r| r.contains("revoked"))));

    // A signature by a key loongd does not know proves nothing, and is refused.
    let stranger = keys.path().join("stranger.key");
    generate(&home, &stranger);
    sign(&home, "config-reader", &stranger);
    reload(&home);
    let p = view(&home, "config-reader");
    assert!(
        p["state"] == "failed"
            && p["error"]
                .as_str()
                .is_some_and(|e| e.contains("not in the keyring")),
        "{p}"
    );
}

/// Copies the echo example as plugin `id` with `slot_claims`.
fn echo_as(home: &Home, id: &str, slots: serde_json::Value) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/echo");
    let dst = home.path().join("plugins").join(id);
    fs::create_dir_all(&dst).expect("dir");
    fs::copy(src.join("plugin.wasm"), dst.join("plugin.wasm")).expect("module");
    let mut m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(src.join("loong.plugin.json")).expect("manifest"))
            .expect("JSON");
    m["plugin_id"] = serde_json::Value::String(id.into());
    m["slot_claims"] = slots;
    fs::write(dst.join("loong.plugin.json"), m.to_string()).expect("manifest");
}

#[test]
fn an_exclusive_slot_goes_to_one_plugin_and_the_refusal_names_both() {
    let home = Home::new();
    let claim =
        |mode: &str| serde_json::json!([{"slot": "channel.telegram", "key": "main", "mode": mode}]);
    // Written in reverse order: the outcome follows the ids, not the directory order.
    echo_as(&home, "zulu", claim("exclusive"));
    echo_as(&home, "alpha", claim("exclusive"));
    echo_as(&home, "mike", claim("shared"));
    echo_as(
        &home,
        "bravo",
        serde_json::json!([{"slot": "memory", "key": "", "mode": "shared"}]),
    );
    echo_as(
        &home,
        "charlie",
        serde_json::json!([{"slot": "memory", "key": "", "mode": "shared"}]),
    );
    home.start();
    for _ in 0..2 {
        let states: Vec<(String, String)> = plugins(&home)
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap_or_default().to_string(),
                    p["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let state = |id: &str| {
            states
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, s)| s.clone())
                .unwrap_or_default()
        };
        assert_eq!(state("alpha"), "ready", "{states:?}");
        // Two shared claims on another slot coexist (the positive control).
        assert_eq!(
            (state("bravo"), state("charlie")),
            ("ready".into(), "ready".into())
        );
        for loser in ["mike", "zulu"] {
            assert_eq!(state(loser), "failed", "{states:?}");
            let error = view(&home, loser)["error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                error.contains("alpha")
                    && error.contains(loser)
                    && error.contains("channel.telegram"),
                "{loser}: {error}"
            );
        }
        reload(&home);
    }
    let (code, _, err) = invoke(&home, &["alpha", "--input", "{}"]);
    assert_eq!(code, 0, "{err}");
}

/// Writes a WASM plugin package `id` at `version` into `dir` (outside any home): `module` is
/// the compiled module, `probe` the manifest's health check; the guest reads the caller's
/// input as given (`sandbox.input = "bare"`).
pub(crate) fn wasm_package(
    dir: &Path,
    id: &str,
    version: &str,
    module: &[u8],
    probe: Option<&str>,
) {
    fs::create_dir_all(dir).expect("package dir");
    fs::write(dir.join("plugin.wasm"), module).expect("module");
    let mut metadata = serde_json::json!({"bridge_kind": "wasm", "component": "plugin.wasm"});
    if let Some(p) = probe {
        metadata["health_check_json"] = serde_json::Value::String(p.into());
    }
    let manifest = serde_json::json!({
        "api_version": "v1alpha1", "plugin_id": id, "version": version,
        "summary": format!("{id} {version}"), "metadata": metadata,
        "sandbox": {"input": "bare", "tier": "restricted", "timeout_ms": 2000},
    });
    fs::write(dir.join("loong.plugin.json"), manifest.to_string()).expect("manifest");
}

pub(crate) fn example_module(name: &str) -> Vec<u8> {
    fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/plugins")
            .join(name)
            .join("plugin.wasm"),
    )
    .expect("example module")
}

pub(crate) fn ctl_ok(home: &Home, args: &[&str]) -> String {
    let out = home.ctl(args);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn upgrades_switch_without_losing_a_call_and_a_failed_one_rolls_back() {
    use loong_ipc::{
        client::{Client, ConnectOptions},
        ControlRequest, ControlResponse, InvokeRequest, PeerKind,
    };
    use std::sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    };
    let pkgs = tempfile::Builder::new()
        .prefix("lk")
        .tempdir_in("/tmp")
        .expect("packages");
    let probe = Some(r#"{"input": {"probe": true}}"#);
    let v1 = pkgs.path().join("v1");
    let v2 = pkgs.path().join("v2");
    let v3 = pkgs.path().join("v3");
    wasm_package(&v1, "greeter", "0.1.0", &example_module("echo"), probe);
    wasm_package(
        &v2,
        "greeter",
        "0.2.0",
        &example_module("json-transform"),
        probe,
    );
    let aborts = wat::parse_str(crate::workers::module(
        r#"(func (export "run") (call $abort (i32.const 3)))"#,
    ))
    .expect("WAT");
    wasm_package(&v3, "greeter", "0.3.0", &aborts, probe);

    let home = Home::new();
    home.start();
    ctl_ok(&home, &["plugins", "install", &v1.display().to_string()]);
    let greeter = view(&home, "greeter");
    assert_eq!(greeter["state"], "ready", "{greeter}");
    assert_eq!(greeter["version"], "0.1.0");
    assert_eq!(
        greeter["lock_digest"].as_str().map(str::len),
        Some(64),
        "{greeter}"
    );

    // A steady load of calls through the whole sequence.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let socket = home.socket();
            std::thread::spawn(move || {
                let opts = ConnectOptions {
                    peer_kind: PeerKind::Operator,
                    build: "test".into(),
                    timeout: std::time::Duration::from_secs(5),
                };
                let mut c = Client::connect(&socket, &opts).expect("connect");
                while !stop.load(Ordering::SeqCst) {
                    let r: Result<ControlResponse, _> = c.call(
                        ControlRequest::Invoke(InvokeRequest {
                            tool: "greeter".into(),
                            input: r#"{"n": 1}"#.into(),
                            token: None,
                        }),
                        std::time::Duration::from_secs(60),
                    );
                    match r {
                        Ok(ControlResponse::Invoked(_)) => ok.fetch_add(1, Ordering::SeqCst),
                        other => {
                            eprintln!("a call failed: {other:?}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));

    ctl_ok(&home, &["plugins", "upgrade", &v2.display().to_string()]);
    let (code, out, err) = invoke(&home, &["greeter", "--input", r#"{"n": 2}"#]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("json-transform"),
        "the new version serves: {out}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));

    // The next version aborts on its probe: refused, the running one keeps serving.
    let out = home.ctl(&["plugins", "upgrade", &v3.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("health check") && err.contains("0.2.0 keeps serving"),
        "{err}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().expect("load thread");
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "a call failed during the upgrades"
    );
    assert!(
        ok.load(Ordering::SeqCst) > 20,
        "{} calls",
        ok.load(Ordering::SeqCst)
    );
    assert_eq!(view(&home, "greeter")["version"], "0.2.0");
    let installed = records(&home, "plugin.installed");
    assert_eq!(installed.len(), 2, "{installed:?}");
    let rolled: Vec<serde_json::Value> = details(&home, "plugin.rolled_back");
    assert!(
        rolled.len() == 1 && rolled[0]["version"] == "0.3.0" && rolled[0]["serving"] == "0.2.0",
        "{rolled:?}"
    );
    assert!(
        !home
            .path()
            .join("plugins")
            .read_dir()
            .expect("plugins")
            .any(|e| e
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .starts_with(".staging")),
        "a failed upgrade leaves no staging copy"
    );

    // The lock: clean, then drift after a change behind loongd's back.
    let out = home.ctl(&["plugins", "verify", "--lock"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    fs::write(
        home.path().join("plugins/greeter/plugin.wasm"),
        b"\0asm\x01\0\0\0",
    )
    .expect("tamper");
    let out = home.ctl(&["plugins", "verify", "--lock"]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("plugin.wasm (changed)"),
        "{}",
        text(&out.stdout)
    );
    reload(&home);
    let p = view(&home, "greeter");
    assert!(
        p["state"] == "failed" && p["error"].as_str().is_some_and(|e| e.contains("lock")),
        "{p}"
    );
}

#[test]
fn an_unverified_native_bridge_is_installed_disabled_until_an_operator_enables_it() {
    let pkgs = tempfile::Builder::new()
        .prefix("ln")
        .tempdir_in("/tmp")
        .expect("packages");
    let pkg = pkgs.path().join("lines");
    fs::create_dir_all(&pkg).expect("pkg");
    // The program is the package's own script, run from where it is installed (inside
    // loongd's home, which the sandbox sees only that one directory of).
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("all/peers/jsonl_peer.py"),
        pkg.join("peer.py"),
    )
    .expect("script");
    let manifest = serde_json::json!({
        "api_version": "v1alpha1", "plugin_id": "lines", "version": "0.1.0",
        "metadata": {"bridge_kind": "process_stdio", "command": "/usr/bin/python3",
            "args_json": "[\"${PLUGIN_DIR}/peer.py\"]",
            "health_check_json": "{\"input\": {\"probe\": 1}}"},
        "sandbox": {"timeout_ms": 2000},
    });
    fs::write(pkg.join("loong.plugin.json"), manifest.to_string()).expect("manifest");
    let home = Home::new();
    home.start();
    ctl_ok(&home, &["plugins", "install", &pkg.display().to_string()]);
    let p = view(&home, "lines");
    assert_eq!(p["state"], "disabled", "{p}");
    assert!(
        records(&home, "worker.spawned").is_empty(),
        "nothing runs before enable"
    );
    let (code, _, err) = invoke(&home, &["lines", "--input", "{}"]);
    assert!(code == 2 && err.contains("disabled"), "{err}");

    ctl_ok(&home, &["plugins", "enable", "lines"]);
    assert_eq!(view(&home, "lines")["state"], "ready");
    let enabled = records(&home, "plugin.enabled");
    assert!(
        enabled.len() == 1
            && enabled[0]["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("uid:")),
        "{enabled:?}"
    );
    let (code, out, err) = invoke(&home, &["lines", "--input", r#"{"n": 1}"#]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["echo"], serde_json::json!({"n": 1}), "{v}");
    // It reads its own package, and nothing else of loongd's home.
    let read = |path: &Path| {
        let input = serde_json::json!({"mode": "read", "path": path}).to_string();
        let (code, out, err) = invoke(&home, &["lines", "--input", &input]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).expect("JSON")
    };
    let own = read(&home.path().join("plugins/lines/peer.py"));
    assert!(own["read"].as_u64().is_some_and(|n| n > 0), "{own}");
    for secret in ["plugins.lock", "state.db", "loongd.toml"] {
        let path = home.path().join(secret);
        let got = read(&path);
        assert!(got["error"].is_string(), "{secret} is visible: {got}");
    }
    assert!(home.path().join("plugins.lock").exists());

    ctl_ok(&home, &["plugins", "disable", "lines"]);
    assert_eq!(view(&home, "lines")["state"], "disabled");
    ctl_ok(&home, &["plugins", "remove", "lines"]);
    assert!(!plugins(&home).iter().any(|p| p["id"] == "lines"));
    assert!(!home.path().join("plugins/lines").exists());
    for kind in ["plugin.installed", "plugin.disabled", "plugin.removed"] {
        assert_eq!(records(&home, kind).len(), 1, "{kind}");
    }
}

/// Splits a command line on spaces, keeping single-quoted words whole (what the README's
/// commands need).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn the_readme_quickstart_goes_from_init_to_an_audited_confined_call() {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
        .expect("README");
    let block = readme
        .split("<!-- plugin-quickstart -->")
        .nth(1)
        .and_then(|b| b.split("<!-- /plugin-quickstart -->").next())
        .expect("the README marks its quickstart");
    let commands: Vec<Vec<String>> = block
        .lines()
        .filter(|l| l.starts_with("loongctl "))
        .map(|l| words(l)[1..].to_vec())
        .collect();
    assert!(commands.len() >= 4, "{commands:?}");
    let home = Home::new();
    home.start();
    let work = tempfile::Builder::new()
        .prefix("lq")
        .tempdir_in("/tmp")
        .expect("work dir");
    let mut last = String::new();
    for args in &commands {
        let out = std::process::Command::new(crate::support::bin("loongctl"))
            .arg("--home")
            .arg(home.path())
            .args(args)
            .current_dir(work.path())
            .output()
            .expect("loongctl");
        assert!(
            out.status.success(),
            "README step {args:?} failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        if args.first().is_some_and(|a| a == "invoke") {
            assert_eq!(text(&out.stdout).trim(), r#"{"hello":"loong"}"#);
        }
        last = text(&out.stdout);
    }
    // The last step shows the call's audit records.
    assert!(last.contains("tool.completed"), "{last}");
    let done = records(&home, "tool.completed");
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(view(&home, "hello")["trust"], "unverified");
}

#[test]
fn every_kind_init_makes_runs_as_it_is() {
    let home = Home::new();
    home.start();
    let work = tempfile::Builder::new()
        .prefix("li")
        .tempdir_in("/tmp")
        .expect("work dir");
    for kind in ["wasm", "stdio", "mcp"] {
        let dir = work.path().join(format!("made-{kind}"));
        let d = dir.display().to_string();
        ctl_ok(&home, &["plugins", "init", &d, "--kind", kind]);
        let doctor = ctl_ok(&home, &["plugins", "doctor", &d]);
        assert!(doctor.contains("no problem found"), "{doctor}");
        ctl_ok(&home, &["plugins", "install", &d]);
        let id = format!("made-{kind}");
        if kind != "wasm" {
            assert_eq!(view(&home, &id)["state"], "disabled");
            ctl_ok(&home, &["plugins", "enable", &id]);
        }
        let tool = if kind == "mcp" {
            format!("{id}/hello")
        } else {
            id.clone()
        };
        let (code, out, err) = invoke(&home, &[&tool, "--input", r#"{"name": "loong"}"#]);
        assert_eq!(code, 0, "{kind}: {err}");
        assert!(out.contains("loong"), "{kind}: {out}");
    }
    // The doctor names what would stop a package, without running it.
    let broken = work.path().join("made-wasm");
    fs::write(broken.join("plugin.wasm"), b"not wasm").expect("break");
    let manifest = broken.join("loong.plugin.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&manifest).expect("manifest")).expect("JSON");
    m["surprise"] = serde_json::json!(1);
    m["another"] = serde_json::json!(2);
    let shown = broken.display().to_string();
    let original = fs::read_to_string(&manifest).expect("manifest");
    fs::write(&manifest, m.to_string()).expect("manifest");
    let out = home.ctl(&["plugins", "doctor", &shown]);
    assert_eq!(out.status.code(), Some(2));
    let report = text(&out.stdout);
    for named in ["\"surprise\"", "\"another\""] {
        assert!(report.contains(named), "{named}: {report}");
    }
    // With the manifest mended, the module is checked (as install checks it).
    fs::write(&manifest, original).expect("manifest");
    let out = home.ctl(&["plugins", "doctor", &shown]);
    assert_eq!(out.status.code(), Some(2));
    let report = text(&out.stdout);
    assert!(report.contains("not a WebAssembly module"), "{report}");
}

#[test]
fn the_static_scan_and_the_operator_ceiling_shape_an_install() {
    let home = Home::new();
    home.start();
    let pkgs = tempfile::Builder::new()
        .prefix("ls")
        .tempdir_in("/tmp")
        .expect("packages");
    let keys = tempfile::tempdir().expect("keys");
    let official = keys.path().join("official.key");
    let (public, _) = generate(&home, &official);
    ctl_ok(
        &home,
        &[
            "keys", "add", "--name", "vendor", "--public", &public, "--tier", "official",
        ],
    );

    // A grant its capabilities do not declare: refused, naming what to declare.
    let grants = pkgs.path().join("grants");
    fs::create_dir_all(&grants).expect("dir");
    let manifest = serde_json::json!({
        "api_version": "v1alpha1", "plugin_id": "grants", "version": "1",
        "capabilities": ["invoke_tool", "teleport"],
        "metadata": {"bridge_kind": "process_stdio", "command": "/bin/cat"},
        "sandbox": {"write": ["/tmp"]},
    });
    fs::write(grants.join("loong.plugin.json"), manifest.to_string()).expect("manifest");
    let out = home.ctl(&["plugins", "install", &grants.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("filesystem_write") && err.contains("teleport"),
        "{err}"
    );
    assert!(!plugins(&home).iter().any(|p| p["id"] == "grants"));

    // A high-risk keyword keeps an unsigned WASM plugin disabled; signed by an official key,
    // the same package is enabled, unless the operator caps its tier.
    let risky = pkgs.path().join("risky");
    wasm_package(&risky, "risky", "1", &example_module("echo"), None);
    let path = risky.join("loong.plugin.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("manifest")).expect("JSON");
    m["summary"] = serde_json::json!("runs sudo for you");
    fs::write(&path, m.to_string()).expect("manifest");
    let r = risky.display().to_string();
    ctl_ok(&home, &["plugins", "install", &r]);
    let p = view(&home, "risky");
    assert_eq!(p["state"], "disabled", "{p}");
    assert!(
        p["error"].as_str().is_some_and(|e| e.contains("sudo")),
        "{p}"
    );
    ctl_ok(
        &home,
        &[
            "plugins",
            "sign",
            &r,
            "--key",
            &official.display().to_string(),
        ],
    );
    ctl_ok(&home, &["plugins", "upgrade", &r]);
    let p = view(&home, "risky");
    assert_eq!(
        (p["state"].as_str(), p["trust"].as_str()),
        (Some("ready"), Some("official"))
    );
    ctl_ok(
        &home,
        &["plugins", "upgrade", &r, "--trust", "verified-community"],
    );
    reload(&home);
    let p = view(&home, "risky");
    assert_eq!(
        (p["state"].as_str(), p["trust"].as_str()),
        (Some("ready"), Some("verified-community")),
        "the operator's ceiling holds across a reload"
    );

    // An unsigned copy would install disabled. As an upgrade of the serving plugin it is
    // refused and the signed version keeps serving; once disabled by hand, it replaces it.
    let unsigned = pkgs.path().join("risky-unsigned");
    fs::create_dir_all(&unsigned).expect("dir");
    for f in ["loong.plugin.json", "plugin.wasm"] {
        fs::copy(risky.join(f), unsigned.join(f)).expect("copy");
    }
    let u = unsigned.display().to_string();
    let out = home.ctl(&["plugins", "upgrade", &u]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    for named in [
        "would be installed disabled",
        "sudo",
        "plugins disable risky",
        "risky 1 keeps serving",
    ] {
        assert!(err.contains(named), "{named}: {err}");
    }
    let p = view(&home, "risky");
    assert_eq!(
        (p["state"].as_str(), p["trust"].as_str()),
        (Some("ready"), Some("verified-community"))
    );
    let (code, out, err) = invoke(&home, &["risky", "--input", r#"{"ping":2}"#]);
    assert_eq!((code, out.trim()), (0, r#"{"ping":2}"#), "{err}");
    assert!(details(&home, "plugin.rolled_back")
        .iter()
        .any(|d| d["plugin"] == "risky"
            && d["serving"] == "1"
            && d["reason"]
                .as_str()
                .is_some_and(|r| r.contains("would be installed disabled"))));
    ctl_ok(&home, &["plugins", "disable", "risky"]);
    ctl_ok(&home, &["plugins", "upgrade", &u]);
    let p = view(&home, "risky");
    assert_eq!(
        (p["state"].as_str(), p["trust"].as_str()),
        (Some("disabled"), Some("unverified")),
        "{p}"
    );

    let installed: Vec<serde_json::Value> = details(&home, "plugin.installed");
    assert!(installed
        .iter()
        .any(|d| d["findings"].to_string().contains("sudo") && d["enabled"] == false));
}

#[test]
fn an_archive_installs_like_its_directory_and_a_hostile_one_writes_nothing() {
    let home = Home::new();
    home.start();
    let pkgs = tempfile::Builder::new()
        .prefix("la")
        .tempdir_in("/tmp")
        .expect("packages");
    let dir = pkgs.path().join("archived");
    wasm_package(&dir, "archived", "1", &example_module("echo"), None);
    let good = pkgs.path().join("archived.tar.gz");
    let out = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&good)
        .arg("-C")
        .arg(pkgs.path())
        .arg("archived")
        .output()
        .expect("tar");
    assert!(out.status.success(), "{}", text(&out.stderr));
    ctl_ok(&home, &["plugins", "install", &good.display().to_string()]);
    assert_eq!(view(&home, "archived")["state"], "ready");
    let (code, out, err) = invoke(&home, &["archived", "--input", r#"{"a": 1}"#]);
    assert_eq!((code, out.trim()), (0, r#"{"a":1}"#), "{err}");

    // Hostile archives, made with Python's tarfile: a path out of the package, an absolute
    // path, a symlink, a device, too many directories, too deep a path. Each is refused naming its entry, and nothing is written.
    let script = r#"
import io, sys, tarfile
kind, path = sys.argv[1], sys.argv[2]
with tarfile.open(path, "w") as t:
    def add(name, data=b"x", **kw):
        info = tarfile.TarInfo(name)
        for k, v in kw.items():
            setattr(info, k, v)
        info.size = len(data) if info.type == tarfile.REGTYPE else 0
        t.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    add("pkg/loong.plugin.json", b"{}")
    if kind == "dotdot":
        add("pkg/../../loong-escaped")
    elif kind == "absolute":
        add("/tmp/loong-escaped-abs")
    elif kind == "symlink":
        add("pkg/link", type=tarfile.SYMTYPE, linkname="/etc/passwd")
    elif kind == "device":
        add("pkg/dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
    elif kind == "wide":
        for i in range(4096):
            add("pkg/d%d" % i, type=tarfile.DIRTYPE)
    elif kind == "deep":
        add("pkg/" + "d/" * 12 + "f")
"#;
    for (kind, entry) in [
        ("dotdot", "pkg/../../loong-escaped"),
        ("absolute", "/tmp/loong-escaped-abs"),
        ("symlink", "pkg/link"),
        ("device", "pkg/dev"),
        // Bounds on every entry, directories too (package::MAX_PACKAGE_ENTRIES is 4096: the
        // manifest is the first), and on nesting.
        ("wide", "pkg/d4095"),
        ("deep", "pkg/d/d/d/d/d/d/d/d/d/d/d/d/f"),
    ] {
        let archive = pkgs.path().join(format!("{kind}.tar"));
        let out = std::process::Command::new("python3")
            .args(["-c", script, kind])
            .arg(&archive)
            .output()
            .expect("python3");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = home.ctl(&["plugins", "install", &archive.display().to_string()]);
        assert_eq!(out.status.code(), Some(2), "{kind}");
        let err = text(&out.stderr);
        assert!(err.contains(entry), "{kind}: {err}");
    }
    assert!(!Path::new("/tmp/loong-escaped").exists());
    assert!(!Path::new("/tmp/loong-escaped-abs").exists());
    assert_eq!(plugins(&home).len(), 1);
}

#[test]
fn a_manifest_in_public_loongs_spelling_installs_and_answers_and_a_kind_we_do_not_run_is_refused_by_name(
) {
    let home = Home::new();
    home.start();
    let pkgs = tempfile::Builder::new()
        .prefix("up")
        .tempdir_in("/tmp")
        .expect("packages");
    let rewrite = |dir: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let path = dir.join("loong.plugin.json");
        let mut m: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).expect("manifest")).expect("JSON");
        f(&mut m);
        fs::write(&path, m.to_string()).expect("manifest");
    };

    // Upstream's capability spelling and bridge alias: installed, ready, and it answers.
    let up = pkgs.path().join("upstream-caps");
    wasm_package(&up, "upstream-caps", "1", &example_module("echo"), None);
    rewrite(&up, &|m| {
        m["capabilities"] = serde_json::json!(["InvokeTool", "ObserveTelemetry"]);
        m["metadata"]["bridge_kind"] = serde_json::json!("wasm_component");
    });
    ctl_ok(&home, &["plugins", "install", &up.display().to_string()]);
    let p = view(&home, "upstream-caps");
    assert_eq!(p["state"], "ready", "{p}");
    let (code, out, err) = invoke(&home, &["upstream-caps", "--input", r#"{"ping":1}"#]);
    assert_eq!((code, out.trim()), (0, r#"{"ping":1}"#), "{err}");

    // A grant declared in upstream's spelling meets the scan (the native bridge installs,
    // disabled as unsigned); the same package without the declaration is refused.
    let native = pkgs.path().join("upstream-native");
    fs::create_dir_all(&native).expect("dir");
    let manifest = |caps: serde_json::Value, kind: &str| {
        serde_json::json!({
            "api_version": "v1alpha1", "plugin_id": "upstream-native", "version": "1",
            "capabilities": caps,
            "metadata": {"bridge_kind": kind, "command": "/bin/cat"},
            "sandbox": {"write": ["/tmp"]},
        })
        .to_string()
    };
    let n = native.display().to_string();
    let path = native.join("loong.plugin.json");
    fs::write(&path, manifest(serde_json::json!(["InvokeTool"]), "stdio")).expect("manifest");
    let out = home.ctl(&["plugins", "install", &n]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("filesystem_write"),
        "{}",
        text(&out.stderr)
    );
    let caps = serde_json::json!(["InvokeTool", "FilesystemWrite"]);
    fs::write(&path, manifest(caps.clone(), "stdio")).expect("manifest");
    ctl_ok(&home, &["plugins", "install", &n]);
    assert_eq!(view(&home, "upstream-native")["state"], "disabled");

    // A capability public Loong defines that this kernel does not honour: refused by name.
    let sched = pkgs.path().join("upstream-sched");
    wasm_package(&sched, "upstream-sched", "1", &example_module("echo"), None);
    rewrite(&sched, &|m| {
        m["capabilities"] = serde_json::json!(["InvokeTool", "ScheduleTask"]);
    });
    let out = home.ctl(&["plugins", "install", &sched.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("capability `ScheduleTask`") && err.contains("does not honour"),
        "{err}"
    );
    assert!(!plugins(&home).iter().any(|p| p["id"] == "upstream-sched"));

    // Public Loong's native FFI bridge: refused at install, naming the kind; nothing installed.
    let ffi = pkgs.path().join("upstream-ffi");
    fs::create_dir_all(&ffi).expect("dir");
    fs::write(
        ffi.join("loong.plugin.json"),
        manifest(caps, "ffi").replace("upstream-native", "upstream-ffi"),
    )
    .expect("manifest");
    let out = home.ctl(&["plugins", "install", &ffi.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("bridge_kind `ffi`") && err.contains("does not run"),
        "{err}"
    );
    assert!(!plugins(&home).iter().any(|p| p["id"] == "upstream-ffi"));
}
