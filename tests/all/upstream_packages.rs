//! Public Loong's shipped and example packages (tests/fixtures/upstream, copied verbatim at
//! its commit e6880c91) install here unchanged, and those runnable here answer: the stdio
//! echo example (embedded in a Python file, `command: cat`), the secure WASM example
//! (embedded in a Rust file, with a real `secure_echo.wasm`), and the WhatsApp bridge's
//! http_json connector, called against a local stand-in for its bridge.

use std::{
    fs,
    io::{Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    supply_chain::{ctl_ok, view},
    support::{self, text, Home},
    workers::invoke,
};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/upstream")
        .join(rel)
}

/// A package directory `name` in `work` holding the fixture files `files` as they are.
fn package(work: &Path, name: &str, files: &[&str]) -> PathBuf {
    let dir = work.join(name);
    fs::create_dir_all(&dir).expect("package dir");
    for f in files {
        let from = fixture(f);
        let to = dir.join(from.file_name().expect("a file name"));
        fs::copy(&from, &to).expect("copy the fixture");
    }
    dir
}

fn work_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lup")
        .tempdir_in("/tmp")
        .expect("work dir")
}

#[test]
fn the_stdio_echo_example_installs_from_its_python_source_and_answers_with_the_echoed_request() {
    let work = work_dir();
    let dir = package(
        work.path(),
        "stdio-echo",
        &["plugins-process/stdio_echo_plugin.py"],
    );
    let shown = dir.display().to_string();
    let home = Home::new();
    home.start();
    let doctor = ctl_ok(&home, &["plugins", "doctor", &shown]);
    assert!(
        doctor.contains("manifest embedded in stdio_echo_plugin.py")
            && doctor.contains("no problem found"),
        "{doctor}"
    );
    ctl_ok(&home, &["plugins", "install", &shown]);
    let p = view(&home, "stdio-echo-py");
    // Its version is its metadata.version; it runs native code (cat) unsigned, so it waits
    // for the operator; its trust_tier claim proves nothing.
    assert_eq!(p["version"], "0.1.0", "{p}");
    assert_eq!(p["bridge_kind"], "process_stdio", "{p}");
    assert_eq!(p["state"], "disabled", "{p}");
    assert_eq!(p["trust"], "unverified", "{p}");
    // The same package as an archive (one directory holding the one source file) installs as
    // its directory does: the archive's package is found as install finds a manifest.
    let archive = work.path().join("stdio-echo.tar.gz");
    let packed = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(work.path())
        .arg("stdio-echo")
        .status()
        .expect("tar");
    assert!(packed.success());
    ctl_ok(&home, &["plugins", "remove", "stdio-echo-py"]);
    ctl_ok(
        &home,
        &["plugins", "install", &archive.display().to_string()],
    );
    assert_eq!(view(&home, "stdio-echo-py")["state"], "disabled");
    ctl_ok(&home, &["plugins", "enable", "stdio-echo-py"]);
    // `cat` writes back the request line loongd's bridge sent, whose payload is the input.
    let (code, out, err) = invoke(
        &home,
        &["stdio-echo-py", "--input", r#"{"hello": "loong"}"#],
    );
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).expect("a JSON answer");
    assert_eq!(answer, serde_json::json!({"hello": "loong"}), "{out}");
}

/// `secure_echo.wasm`: answers a fixed object, whatever the request looks like (the bare
/// input, or public Loong's request envelope), after reading the whole request, so the test
/// does not depend on how the request is shaped.
const SECURE_ECHO_WAT: &str = r#"
(module
  (import "loong" "input_len" (func $input_len (result i32)))
  (import "loong" "read_input" (func $read_input (param i32 i32) (result i32)))
  (import "loong" "write_output" (func $write_output (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"echo\":\"wasm-secure-echo\"}")
  (func (export "run") (result i32)
    (local $n i32)
    (local.set $n (call $input_len))
    (if (i32.gt_u (local.get $n) (i32.const 60000)) (then (return (i32.const 1))))
    (drop (call $read_input (i32.const 1024) (local.get $n)))
    (drop (call $write_output (i32.const 0) (i32.const 27)))
    (i32.const 0)))
"#;

#[test]
fn the_secure_wasm_example_installs_from_its_rust_source_with_a_real_module_and_answers() {
    let work = work_dir();
    let dir = package(
        work.path(),
        "secure-wasm",
        &["plugins-wasm/secure_wasm_plugin.rs"],
    );
    fs::write(
        dir.join("secure_echo.wasm"),
        wat::parse_str(SECURE_ECHO_WAT).expect("the module assembles"),
    )
    .expect("module");
    let shown = dir.display().to_string();
    let home = Home::new();
    home.start();
    let doctor = ctl_ok(&home, &["plugins", "doctor", &shown]);
    assert!(
        doctor.contains("manifest embedded in secure_wasm_plugin.rs")
            && doctor.contains("trust_tier \"official\" is a claim"),
        "{doctor}"
    );
    ctl_ok(&home, &["plugins", "install", &shown]);
    let p = view(&home, "wasm-secure-echo");
    // bridge_kind wasm_component runs on our WASM bridge; "official" is only a claim: an
    // unsigned package is unverified.
    assert_eq!(p["bridge_kind"], "wasm", "{p}");
    assert_eq!(p["version"], "1.0.0", "{p}");
    assert_eq!(p["state"], "ready", "{p}");
    assert_eq!(p["trust"], "unverified", "{p}");
    let (code, out, err) = invoke(&home, &["wasm-secure-echo", "--input", r#"{"n": 1}"#]);
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).expect("a JSON answer");
    assert_eq!(
        answer,
        serde_json::json!({"echo": "wasm-secure-echo"}),
        "{out}"
    );
}

/// The port the WhatsApp bridge's manifest posts to.
const WHATSAPP_BRIDGE_PORT: u16 = 39731;
const WHATSAPP_ID: &str = "whatsapp-personal-baileys-bridge";

/// Answers one HTTP request on `listener` with `{"ok": true, "got": BODY}`; gives up after a
/// few seconds.
fn answer_once(listener: TcpListener) -> std::thread::JoinHandle<Option<String>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(false).ok()?;
        let (mut conn, _) = listener.accept().ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Headers, then as much body as Content-Length says (bounded).
        let body = loop {
            let n = conn.read(&mut buf).ok()?;
            if n == 0 || got.len() > 65536 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    break (
                        head.lines().next().unwrap_or_default().to_string(),
                        body.to_string(),
                    );
                }
            }
        };
        let answer = format!(r#"{{"ok": true, "got": {}}}"#, body.1);
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        );
        conn.write_all(reply.as_bytes()).ok()?;
        Some(body.0)
    })
}

#[test]
fn the_whatsapp_bridge_connector_installs_unchanged_and_posts_to_its_bridge() {
    let work = work_dir();
    let dir = package(
        work.path(),
        "whatsapp-personal-bridge",
        &["whatsapp-personal-bridge/loong.plugin.json"],
    );
    let shown = dir.display().to_string();
    // Its endpoint is on loopback and its manifest (public Loong's: no sandbox block) does not
    // allow a private network: refused by name until the operator allows it.
    let home = Home::new();
    home.start();
    let doctor = ctl_ok(&home, &["plugins", "doctor", &shown]);
    assert!(doctor.contains("private_endpoints"), "{doctor}");
    let out = home.ctl(&["plugins", "install", &shown]);
    let err = text(&out.stderr);
    assert!(
        out.status.code() == Some(2)
            && err.contains("a loopback address")
            && err.contains("127.0.0.1"),
        "{err}"
    );
    drop(home);
    // The operator allows it in loongd.toml: the manifest installs unchanged.
    let home = Home::with_config(&format!(
        "[plugins]\nprivate_endpoints = [\"{WHATSAPP_ID}\"]\n"
    ));
    home.start();
    ctl_ok(&home, &["plugins", "install", &shown]);
    let p = view(&home, WHATSAPP_ID);
    assert_eq!(p["bridge_kind"], "http_json", "{p}");
    assert_eq!(p["state"], "ready", "{p}");
    assert_eq!(p["version"], "0.1.0", "{p}");
    // Calling it needs its bridge (Node.js and Baileys) running: a local stand-in answers on
    // the bridge's port, if it is free on this machine.
    let Ok(listener) = TcpListener::bind(("127.0.0.1", WHATSAPP_BRIDGE_PORT)) else {
        support::skip(
            "the_whatsapp_bridge_connector_installs_unchanged_and_posts_to_its_bridge (call)",
            "port 39731, the bridge's, is taken on this machine",
        );
        return;
    };
    let served = answer_once(listener);
    let input = r#"{"operation": "send_message", "payload": {"text": "hi"}}"#;
    let (code, out, err) = invoke(&home, &[WHATSAPP_ID, "--input", input]);
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).expect("a JSON answer");
    assert_eq!(answer["ok"], true, "{out}");
    assert_eq!(answer["got"]["payload"]["text"], "hi", "{out}");
    let request_line = served.join().expect("the stand-in").expect("one request");
    assert!(request_line.starts_with("POST /bridge "), "{request_line}");
}

/// `run` grows its memory by 300 pages (about 19 MiB, past the 16 MiB default) and answers;
/// `spin` never returns. Neither looks at its request, whatever its shape.
const DEFAULTS_WAT: &str = r#"
(module
  (import "loong" "write_output" (func $write_output (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"grown\":true}")
  (func (export "run") (result i32)
    (drop (memory.grow (i32.const 300)))
    (drop (call $write_output (i32.const 0) (i32.const 14)))
    (i32.const 0))
  (func (export "spin") (result i32)
    (loop $forever (br $forever))
    (i32.const 0)))
"#;

#[test]
fn a_manifest_without_a_sandbox_block_runs_under_the_documented_defaults() {
    let work = work_dir();
    let write = |name: &str, entrypoint: &str, sandbox: &str| {
        let dir = work.path().join(name);
        fs::create_dir_all(&dir).expect("dir");
        fs::write(
            dir.join("plugin.wasm"),
            wat::parse_str(DEFAULTS_WAT).expect("assembles"),
        )
        .expect("module");
        // Public Loong's shape: no sandbox block (unless the control adds one).
        let manifest = format!(
            r#"{{"api_version": "v1alpha1", "plugin_id": "{name}", "version": "0.1.0",
            "provider_id": "{name}", "connector_name": "{name}",
            "capabilities": ["InvokeConnector"], {sandbox}
            "metadata": {{"bridge_kind": "wasm_component", "component": "plugin.wasm",
                "entrypoint": "{entrypoint}"}}}}"#
        );
        fs::write(dir.join("loong.plugin.json"), manifest).expect("manifest");
        dir.display().to_string()
    };
    let home = Home::new();
    home.start();
    ctl_ok(&home, &["plugins", "install", &write("bare", "run", "")]);
    ctl_ok(&home, &["plugins", "install", &write("spin", "spin", "")]);
    ctl_ok(
        &home,
        &[
            "plugins",
            "install",
            &write(
                "roomy",
                "run",
                r#""sandbox": {"max_memory_bytes": 33554432},"#,
            ),
        ],
    );
    // Memory: 16 MiB by default, so growing to about 20 MiB fails the call; the control,
    // allowed 32 MiB, grows.
    let (code, _, err) = invoke(&home, &["bare", "--input", r#"{"grow": true}"#]);
    assert_ne!(code, 0, "grew past the default memory cap");
    assert!(err.to_lowercase().contains("memory"), "{err}");
    let (code, out, err) = invoke(&home, &["roomy", "--input", r#"{"grow": true}"#]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("grown"), "{out}");
    // Wall time: 2000 ms by default, so a call that never returns is stopped then.
    let started = std::time::Instant::now();
    let (code, _, err) = invoke(&home, &["spin", "--input", "{}"]);
    let took = started.elapsed();
    assert_ne!(code, 0, "a call that never returns answered");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(15),
        "stopped after {took:?}: {err}"
    );
    assert!(err.to_lowercase().contains("time"), "{err}");
}

/// An archive whose package keeps its embedded manifest in a nested source file (as a Rust
/// or Python project does, `src/…`) installs as the same directory does: the archive's
/// package is found by the search install runs, not by looking at its top only. Control: an
/// archive holding no manifest anywhere is refused naming what it lacks.
#[test]
fn an_archive_whose_manifest_is_embedded_in_a_nested_source_file_installs() {
    let work = work_dir();
    let dir = work.path().join("nested-echo");
    fs::create_dir_all(dir.join("src")).expect("src");
    fs::copy(
        fixture("plugins-process/stdio_echo_plugin.py"),
        dir.join("src/stdio_echo_plugin.py"),
    )
    .expect("copy the fixture");
    let tar = |name: &str, what: &str| {
        let archive = work.path().join(name);
        let packed = std::process::Command::new("tar")
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(work.path())
            .arg(what)
            .status()
            .expect("tar");
        assert!(packed.success());
        archive.display().to_string()
    };
    let archive = tar("nested-echo.tar.gz", "nested-echo");
    let home = Home::new();
    home.start();
    ctl_ok(&home, &["plugins", "install", &dir.display().to_string()]);
    ctl_ok(&home, &["plugins", "remove", "stdio-echo-py"]);
    ctl_ok(&home, &["plugins", "install", &archive]);
    assert_eq!(view(&home, "stdio-echo-py")["state"], "disabled");
    fs::create_dir_all(work.path().join("empty/src")).expect("empty");
    fs::write(
        work.path().join("empty/src/main.py"),
        "print('no manifest')\n",
    )
    .expect("file");
    let empty = tar("empty.tar.gz", "empty");
    let out = home.ctl(&["plugins", "install", &empty]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("holds no loong.plugin.json"), "{err}");
}
