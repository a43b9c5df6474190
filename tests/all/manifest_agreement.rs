//! One check path: on a corpus of good and bad packages (every capability spelling, every
//! bridge kind we refuse, embedded-source and OpenClaw packages, missing fields, bad pins, …),
//! `loongctl plugins doctor`, `loongctl plugins install` and discovery of the same package
//! placed by hand (`plugins reload`) agree: all accept it, or all refuse it with the same
//! message.

use std::{fs, path::Path};

use sha2::{Digest, Sha256};

use crate::{
    supply_chain::{ctl_ok, example_module},
    support::{text, Home},
    workers::plugins,
};

/// What a case's package holds besides its manifest.
#[derive(Clone, Copy)]
enum Module {
    /// The echo example module as `plugin.wasm`.
    Echo,
    /// `plugin.wasm` that is not WebAssembly.
    Garbage,
    None,
}

/// One package: its directory name, files, and what all three must say (`None`: accept; else
/// a text each refusal contains).
struct Case {
    name: &'static str,
    files: Vec<(&'static str, String)>,
    module: Module,
    refused: Option<&'static str>,
}

fn wasm(name: &'static str, extra: &str, refused: Option<&'static str>) -> Case {
    wasm_with(name, r#"["invoke_tool"]"#, "wasm", extra, refused)
}

fn wasm_with(
    name: &'static str,
    caps: &str,
    kind: &str,
    extra: &str,
    refused: Option<&'static str>,
) -> Case {
    let manifest = format!(
        r#"{{"api_version": "v1alpha1", "plugin_id": "{name}", "version": "1.0.0",
        "capabilities": {caps}, {extra}
        "metadata": {{"bridge_kind": "{kind}", "component": "plugin.wasm"}}}}"#
    );
    Case {
        name,
        files: vec![("loong.plugin.json", manifest)],
        module: Module::Echo,
        refused,
    }
}

fn manifest_case(
    name: &'static str,
    manifest: String,
    module: Module,
    refused: Option<&'static str>,
) -> Case {
    Case {
        name,
        files: vec![("loong.plugin.json", manifest)],
        module,
        refused,
    }
}

fn echo_sha256() -> String {
    hex::encode(Sha256::digest(example_module("echo")))
}

/// A WASM manifest with `metadata` given whole (to place pins and versions in it).
fn wasm_meta(
    name: &'static str,
    metadata: &str,
    sandbox: &str,
    refused: Option<&'static str>,
) -> Case {
    manifest_case(
        name,
        format!(
            r#"{{"api_version": "v1alpha1", "plugin_id": "{name}", "version": "1.0.0",
            "capabilities": ["invoke_tool"], {sandbox}
            "metadata": {{"bridge_kind": "wasm", "component": "plugin.wasm"{metadata}}}}}"#
        ),
        Module::Echo,
        refused,
    )
}

fn stdio(
    name: &'static str,
    caps: &str,
    kind: &str,
    sandbox: &str,
    refused: Option<&'static str>,
) -> Case {
    manifest_case(
        name,
        format!(
            r#"{{"api_version": "v1alpha1", "plugin_id": "{name}", "version": "1.0.0",
            "capabilities": {caps}, "sandbox": {{{sandbox}}},
            "metadata": {{"bridge_kind": "{kind}", "command": "/bin/cat"}}}}"#
        ),
        Module::None,
        refused,
    )
}

fn http(
    name: &'static str,
    caps: &str,
    top: &str,
    meta: &str,
    refused: Option<&'static str>,
) -> Case {
    manifest_case(
        name,
        format!(
            r#"{{"api_version": "v1alpha1", "plugin_id": "{name}", "version": "1.0.0",
            "capabilities": {caps}, {top}
            "sandbox": {{"allow_private_network": true}},
            "metadata": {{"bridge_kind": "http_json"{meta}}}}}"#
        ),
        Module::None,
        refused,
    )
}

/// An embedded-source manifest in `file` (comment prefix `prefix`).
fn embedded(name: &'static str, prefix: &str, body: &str) -> String {
    let mut out = format!("{prefix} LOONG_PLUGIN_START\n");
    for line in body.lines() {
        out.push_str(&format!("{prefix} {line}\n"));
    }
    out.push_str(&format!("{prefix} LOONG_PLUGIN_END\n"));
    out.push_str(&format!("{prefix} the rest of {name}'s source\n"));
    out
}

fn embedded_wasm(name: &'static str) -> String {
    format!(
        r#"{{"plugin_id": "{name}", "provider_id": "{name}", "connector_name": "{name}",
"channel_id": "primary", "capabilities": ["InvokeConnector"], "trust_tier": "official",
"metadata": {{"bridge_kind": "wasm_component", "component": "plugin.wasm", "version": "1.0.0"}}}}"#
    )
}

fn corpus() -> Vec<Case> {
    let pin = echo_sha256();
    let mut cases = vec![
        // Accepted.
        wasm("ours-spelling", "", None),
        wasm_with(
            "upstream-spelling",
            r#"["InvokeConnector", "InvokeTool", "MemoryRead", "ObserveTelemetry"]"#,
            "wasm",
            "",
            None,
        ),
        wasm_with(
            "dotted-spelling",
            r#"["fs.read", "fs.write"]"#,
            "wasm",
            "",
            None,
        ),
        wasm_with(
            "component-alias",
            r#"["InvokeTool"]"#,
            " Wasm_Component ",
            "",
            None,
        ),
        wasm_meta(
            "good-upstream-pin",
            &format!(r#", "component_sha256": " SHA256:{} ""#, pin.to_uppercase()),
            "",
            None,
        ),
        wasm_meta(
            "good-two-pins",
            &format!(r#", "component_sha256": "sha256:{pin}""#),
            &format!(r#""sandbox": {{"sha256": "{pin}"}},"#),
            None,
        ),
        wasm(
            "identity-fields",
            r#""provider_id": "p", "connector_name": "c", "channel_id": "primary",
            "endpoint": "local://identity-fields/invoke", "trust_tier": "official","#,
            None,
        ),
        Case {
            name: "embedded-rust",
            files: vec![(
                "plugin.rs",
                embedded("embedded-rust", "//", &embedded_wasm("embedded-rust")),
            )],
            module: Module::Echo,
            refused: None,
        },
        stdio("stdio-alias", r#"["InvokeConnector"]"#, "stdio", "", None),
        stdio(
            "stdio-grant",
            r#"["FilesystemRead"]"#,
            "process_stdio",
            r#""read": ["/usr/share"]"#,
            None,
        ),
        http(
            "http-top-endpoint",
            r#"["InvokeConnector", "NetworkEgress"]"#,
            r#""endpoint": "http://127.0.0.1:9/hook","#,
            "",
            None,
        ),
        // Refused: capabilities.
        wasm_with(
            "unknown-cap",
            r#"["teleport"]"#,
            "wasm",
            "",
            Some(r#"capability "teleport" is unknown"#),
        ),
        wasm_with(
            "camel-cap",
            r#"["invokeConnector"]"#,
            "wasm",
            "",
            Some(r#"capability "invokeConnector" is unknown"#),
        ),
        wasm_with(
            "schedule-cap",
            r#"["ScheduleTask"]"#,
            "wasm",
            "",
            Some("capability `ScheduleTask` is public Loong's task scheduling"),
        ),
        wasm_with(
            "subagent-cap",
            r#"["agent.spawn_subagent"]"#,
            "wasm",
            "",
            Some("capability `agent.spawn_subagent` is public Loong's sub-agent spawning"),
        ),
        stdio(
            "undeclared-read",
            r#"["InvokeConnector"]"#,
            "process_stdio",
            r#""read": ["/usr/share"]"#,
            Some(r#"must declare "filesystem_read" because it is granted sandbox.read"#),
        ),
        http(
            "connector-egress",
            r#"["InvokeConnector"]"#,
            r#""endpoint": "http://127.0.0.1:9/hook","#,
            "",
            None,
        ),
        http(
            "undeclared-egress",
            r#"["InvokeTool"]"#,
            r#""endpoint": "http://127.0.0.1:9/hook","#,
            "",
            Some(r#"must declare "network_egress" because it posts to an endpoint"#),
        ),
        // Refused: bridges.
        wasm_with(
            "unknown-kind-label",
            r#"["InvokeTool"]"#,
            "carrier_pigeon",
            "",
            Some(r#"bridge_kind "carrier_pigeon" is unknown"#),
        ),
        // Refused: fields.
        manifest_case(
            "no-version",
            r#"{"api_version": "v1alpha1", "plugin_id": "no-version",
            "metadata": {"bridge_kind": "wasm", "component": "plugin.wasm"}}"#
                .into(),
            Module::Echo,
            Some("version is missing"),
        ),
        manifest_case(
            "no-metadata",
            r#"{"api_version": "v1alpha1", "plugin_id": "no-metadata", "version": "1"}"#.into(),
            Module::Echo,
            Some("metadata is missing"),
        ),
        wasm(
            "unknown-field",
            r#""colour": "red","#,
            Some(r#"unknown field "colour""#),
        ),
        manifest_case(
            "bad-api",
            r#"{"api_version": "v2", "plugin_id": "bad-api", "version": "1",
            "metadata": {"bridge_kind": "wasm", "component": "plugin.wasm"}}"#
                .into(),
            Module::Echo,
            Some(r#"api_version: "v2" is not "v1alpha1""#),
        ),
        manifest_case(
            "file.read",
            r#"{"api_version": "v1alpha1", "plugin_id": "file.read", "version": "1",
            "metadata": {"bridge_kind": "wasm", "component": "plugin.wasm"}}"#
                .into(),
            Module::Echo,
            Some(r#"plugin_id: "file.read" is the name of a built-in tool"#),
        ),
        wasm_meta(
            "two-versions",
            r#", "version": "2.0.0""#,
            "",
            Some(r#"metadata.version: "2.0.0" differs from version "1.0.0""#),
        ),
        http(
            "two-endpoints",
            r#"["NetworkEgress"]"#,
            r#""endpoint": "http://127.0.0.1:9/a","#,
            r#", "endpoint": "http://127.0.0.1:9/b""#,
            Some(r#"endpoint: "http://127.0.0.1:9/a" differs from metadata.endpoint"#),
        ),
        // Refused: pins and modules.
        wasm_meta(
            "wrong-pin",
            &format!(r#", "component_sha256": "{}""#, "0".repeat(64)),
            "",
            Some("metadata.component_sha256: pins the module"),
        ),
        wasm_meta(
            "malformed-pin",
            r#", "component_sha256": "sha256:abc""#,
            "",
            Some(r#"metadata.component_sha256: "sha256:abc" is not a sha256 digest"#),
        ),
        wasm_meta(
            "disagreeing-pins",
            &format!(r#", "component_sha256": "{pin}""#),
            &format!(r#""sandbox": {{"sha256": "{}"}},"#, "1".repeat(64)),
            Some("make the two pins agree"),
        ),
        stdio(
            "pin-on-stdio",
            "[]",
            "process_stdio",
            &format!(r#""sha256": "{pin}""#),
            Some("sandbox.sha256: applies to WASM plugins only"),
        ),
        Case {
            module: Module::Garbage,
            ..wasm("not-wasm", "", Some("is not a WebAssembly module"))
        },
        // Refused: where the manifest is.
        Case {
            name: "no-manifest",
            files: vec![("README.md", "a package without a manifest".into())],
            module: Module::None,
            refused: Some("no loong.plugin.json, and no file in it holds a manifest"),
        },
        Case {
            name: "two-embedded",
            files: vec![
                (
                    "a.py",
                    embedded("two-embedded", "#", &embedded_wasm("two-embedded")),
                ),
                (
                    "b.py",
                    embedded("two-embedded", "#", &embedded_wasm("two-embedded")),
                ),
            ],
            module: Module::Echo,
            refused: Some("2 source files hold a manifest (a.py, b.py)"),
        },
        Case {
            name: "open-embedded",
            files: vec![("a.py", "# LOONG_PLUGIN_START\n# {}\n".into())],
            module: Module::None,
            refused: Some("LOONG_PLUGIN_START without a LOONG_PLUGIN_END line"),
        },
        Case {
            name: "conflicting-embedded",
            files: vec![
                (
                    "loong.plugin.json",
                    r#"{"api_version": "v1alpha1", "plugin_id": "conflicting-embedded",
                    "version": "1.0.0", "provider_id": "ours",
                    "metadata": {"bridge_kind": "wasm", "component": "plugin.wasm"}}"#
                        .into(),
                ),
                (
                    "plugin.rs",
                    embedded(
                        "conflicting-embedded",
                        "//",
                        &embedded_wasm("conflicting-embedded"),
                    ),
                ),
            ],
            module: Module::Echo,
            refused: Some("provider_id differs from the embedded manifest in"),
        },
        Case {
            name: "openclaw-modern",
            files: vec![
                (
                    "openclaw.plugin.json",
                    r#"{"id": "weather", "configSchema": {}}"#.into(),
                ),
                ("index.js", "export default {}".into()),
            ],
            module: Module::None,
            refused: Some("openclaw-modern-compat shim, which this kernel does not have"),
        },
        Case {
            name: "openclaw-legacy",
            files: vec![
                (
                    "package.json",
                    r#"{"name": "w", "openclaw": {"extensions": ["./index.js"]}}"#.into(),
                ),
                ("index.js", "export default {}".into()),
            ],
            module: Module::None,
            refused: Some("a legacy OpenClaw package (package.json#openclaw)"),
        },
        Case {
            name: "openclaw-no-schema",
            files: vec![("openclaw.plugin.json", r#"{"id": "weather"}"#.into())],
            module: Module::None,
            refused: Some("openclaw.plugin.json must declare configSchema object"),
        },
    ];
    for kind in [
        "native_ffi",
        "ffi",
        "acp_bridge",
        "acp",
        "acp_runtime",
        "acpx",
        "unknown",
    ] {
        let name: &'static str = Box::leak(format!("refused-kind-{kind}").into_boxed_str());
        let why: &'static str = Box::leak(format!("bridge_kind `{kind}` is").into_boxed_str());
        cases.push(wasm_with(name, r#"["InvokeTool"]"#, kind, "", Some(why)));
    }
    cases
}

fn write_case(root: &Path, case: &Case) -> std::path::PathBuf {
    let dir = root.join(case.name);
    for (name, body) in &case.files {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        fs::write(path, body).expect("file");
    }
    match case.module {
        Module::Echo => fs::write(dir.join("plugin.wasm"), example_module("echo")).expect("module"),
        Module::Garbage => fs::write(dir.join("plugin.wasm"), b"MZ not a module").expect("module"),
        Module::None => {}
    }
    dir
}

/// A message with the package's directory, wherever it was read (`dirs`, and install's
/// staging copy `STAGING_ROOT.staging-PID-N`), written `<pkg>`.
fn normalise(message: &str, dirs: &[String], staging_root: &str) -> String {
    let mut out = message.to_string();
    for d in dirs {
        out = out.replace(d.as_str(), "<pkg>");
    }
    let prefix = format!("{staging_root}.staging-");
    while let Some(at) = out.find(&prefix) {
        let rest = &out[at + prefix.len()..];
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '-'))
            .unwrap_or(rest.len());
        out.replace_range(at..at + prefix.len() + len, "<pkg>");
    }
    out
}

#[test]
fn doctor_install_and_reload_agree_on_every_package_of_the_corpus() {
    let work = tempfile::Builder::new()
        .prefix("lma")
        .tempdir_in("/tmp")
        .expect("work");
    let installer = Home::new();
    installer.start();
    let placer = Home::new();
    placer.start();
    let cases = corpus();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut disagreements = Vec::new();
    for case in &cases {
        let dir = write_case(work.path(), case);
        let shown = dir.display().to_string();
        // doctor
        let out = installer.ctl(&["plugins", "doctor", &shown]);
        let report = text(&out.stdout);
        let fails: Vec<String> = report
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("FAIL  "))
            .map(String::from)
            .collect();
        let doctor_ok = out.status.code() == Some(0);
        // install
        let out = installer.ctl(&["plugins", "install", &shown]);
        let install_ok = out.status.success();
        let install_err = text(&out.stderr);
        // reload of the same package placed by hand
        let placed = placer.path().join("plugins").join(case.name);
        fs::create_dir_all(placed.parent().expect("plugins")).expect("plugins dir");
        let copy = std::process::Command::new("cp")
            .arg("-a")
            .arg(&dir)
            .arg(&placed)
            .status()
            .expect("cp");
        assert!(copy.success());
        ctl_ok(&placer, &["plugins", "reload"]);
        let listed = plugins(&placer)
            .into_iter()
            .find(|p| p["id"] == case.name)
            .unwrap_or_else(|| panic!("{}: not listed after reload", case.name));
        let reload_ok = listed["state"] != "failed";
        let reload_err = listed["error"].as_str().unwrap_or_default().to_string();

        let dirs = [placed.display().to_string(), shown.clone()];
        let staging_root = format!("{}/plugins/", installer.path().display());
        let verdict = format!(
            "{}: doctor {doctor_ok} ({fails:?}), install {install_ok} ({install_err}), reload {reload_ok} ({reload_err})",
            case.name
        );
        match case.refused {
            None => {
                if !(doctor_ok && install_ok && reload_ok) {
                    disagreements.push(format!("should be accepted: {verdict}"));
                }
            }
            Some(why) => {
                let all_refuse = !doctor_ok && !install_ok && !reload_ok;
                let all_say = fails.iter().any(|f| f.contains(why))
                    && install_err.contains(why)
                    && reload_err.contains(why);
                // The same message: each problem doctor lists (its file written <pkg>) is in
                // what install and reload say.
                let install_n = normalise(&install_err, &dirs, &staging_root);
                let reload_n = normalise(&reload_err, &dirs, &staging_root);
                // (A manifest with several problems is one message listing them; doctor
                // gives each a line naming the file: the file and each problem must match.)
                let same = fails.iter().filter(|f| f.contains(why)).all(|f| {
                    let f = normalise(f, &dirs, &staging_root);
                    let (file, problem) = f.split_once(": ").unwrap_or(("", f.as_str()));
                    [&install_n, &reload_n]
                        .iter()
                        .all(|m| m.contains(file) && m.contains(problem))
                });
                if !(all_refuse && all_say && same) {
                    disagreements.push(format!(
                        "should be refused alike with {why:?}: {verdict}\n  normalised: install {install_n:?}, reload {reload_n:?}"
                    ));
                }
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} packages:\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
}

/// What install's staging copy refuses in the package's tree (a hard-linked file, an empty
/// package), doctor refuses too, in the same words; a good package is the control.
#[test]
fn doctor_refuses_what_the_install_copy_refuses_in_the_tree_in_its_words() {
    let work = tempfile::Builder::new()
        .prefix("lmt")
        .tempdir_in("/tmp")
        .expect("work");
    let home = Home::new();
    home.start();
    let good = write_case(work.path(), &wasm("tree-good", "", None));
    let linked = write_case(work.path(), &wasm("tree-linked", "", None));
    fs::write(work.path().join("outside.txt"), "shared").expect("outside");
    fs::hard_link(work.path().join("outside.txt"), linked.join("notes.txt")).expect("link");
    let empty = work.path().join("tree-empty");
    fs::create_dir_all(&empty).expect("empty");
    let cases = [
        (&good, None),
        (
            &linked,
            Some("notes.txt: a file with other hard links is not installed"),
        ),
        (&empty, Some(": the package is empty")),
    ];
    for (dir, refused) in cases {
        let shown = dir.display().to_string();
        let doctor = home.ctl(&["plugins", "doctor", &shown]);
        let report = text(&doctor.stdout);
        let install = home.ctl(&["plugins", "install", &shown]);
        let err = text(&install.stderr);
        match refused {
            None => assert!(
                doctor.status.success() && install.status.success(),
                "{shown}: {report}{err}"
            ),
            Some(why) => {
                assert!(
                    !doctor.status.success() && !install.status.success(),
                    "{shown}: {report}{err}"
                );
                let line = report
                    .lines()
                    .filter_map(|l| l.trim_start().strip_prefix("FAIL  "))
                    .find(|l| l.contains(why))
                    .unwrap_or_else(|| panic!("doctor does not say {why:?}: {report}"));
                assert!(err.contains(line), "install said {err:?}, doctor {line:?}");
            }
        }
    }
}
