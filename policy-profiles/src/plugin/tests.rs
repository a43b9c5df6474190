//! Unit tests of the manifest parser: structure, semantics, pins, slots, bridges and the
//! seed corpus of the manifest fuzz target.

use super::*;

#[test]
fn manifests_are_validated() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("config-reader");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/config-reader");
    std::fs::copy(example.join(MANIFEST_FILE), dir.join(MANIFEST_FILE)).expect("copy manifest");
    std::fs::write(dir.join("plugin.wasm"), b"\0asm\x01\0\0\0").expect("module");
    let good = std::fs::read_to_string(dir.join(MANIFEST_FILE)).expect("read");
    let path = dir.join(MANIFEST_FILE);
    let parsed = PluginManifest::parse(&path, good.as_bytes()).expect("example parses");
    assert_eq!(parsed.plugin_id, "config-reader");
    assert_eq!(parsed.limits.fuel, Some(1_000_000));
    assert_eq!(parsed.component, dir.join("plugin.wasm"));

    let cases = [
        (
            r#""api_version": "v1alpha1""#,
            r#""api_version": "v2""#,
            "api_version",
        ),
        (
            r#""plugin_id": "config-reader""#,
            r#""plugin_id": "../etc""#,
            "plugin_id",
        ),
        (
            r#""component": "plugin.wasm""#,
            r#""component": "../x.wasm""#,
            "metadata.component",
        ),
        (
            r#""component": "plugin.wasm""#,
            r#""component": "/etc/passwd""#,
            "metadata.component",
        ),
        (
            r#""bridge_kind": "wasm""#,
            r#""bridge_kind": "native_ffi""#,
            "bridge_kind",
        ),
        (
            r#""tier": "restricted""#,
            r#""tier": "trusted""#,
            "sandbox.tier",
        ),
        (r#""summary""#, r#""surprise": 1, "summary""#, "surprise"),
        (
            r#""fuel": 1000000"#,
            r#""fuel": 1, "allow_wasi": true"#,
            "allow_wasi",
        ),
    ];
    for (from, to, expect) in cases {
        assert!(good.contains(from), "fixture lacks {from}");
        let bad = good.replacen(from, to, 1);
        let err = PluginManifest::parse(&path, bad.as_bytes()).expect_err("must be refused");
        let msg = err.to_string();
        assert!(msg.contains(expect), "{to}: {msg}");
        assert!(msg.contains(MANIFEST_FILE), "error names the file: {msg}");
    }

    // A symlinked module that leads outside the plugin directory is refused.
    let outside = tmp.path().join("outside.wasm");
    std::fs::copy(dir.join("plugin.wasm"), &outside).expect("copy");
    std::fs::remove_file(dir.join("plugin.wasm")).expect("rm");
    std::os::unix::fs::symlink(&outside, dir.join("plugin.wasm")).expect("symlink");
    let manifest = PluginManifest::load_dir(&dir).expect("manifest parses");
    let err = manifest.read_module().expect_err("must be refused");
    assert!(
        err.to_string().contains("outside the plugin directory"),
        "{err}"
    );
    // Positive control: the module inside the directory is read.
    std::fs::remove_file(dir.join("plugin.wasm")).expect("rm");
    std::fs::copy(&outside, dir.join("plugin.wasm")).expect("copy back");
    assert_eq!(manifest.read_module().expect("module reads").len(), 8);

    // A declared module cap over what a worker frame carries is refused by name.
    let big = good.replacen(
        r#""fuel": 1000000"#,
        r#""fuel": 1000000, "max_module_bytes": 99999999999"#,
        1,
    );
    let err = PluginManifest::parse(&path, big.as_bytes()).expect_err("over the ceiling");
    assert!(err.to_string().contains("max_module_bytes"), "{err}");
}

#[test]
fn public_loongs_capability_spelling_and_bridge_aliases_read_as_ours() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join(MANIFEST_FILE);
    let manifest = |caps: &str, kind: &str, extra: &str| {
        format!(
            r#"{{"api_version": "v1alpha1", "plugin_id": "p", "version": "1",
            "capabilities": [{caps}],
            "metadata": {{"bridge_kind": "{kind}", {extra}}}}}"#
        )
    };
    let parsed = |caps: &str, kind: &str, extra: &str| {
        let text = manifest(caps, kind, extra);
        let m = PluginManifest::parse(&path, text.as_bytes()).expect(&text);
        format!("{m:?}")
    };
    // Positive control: our spelling.
    let ours = r#""invoke_connector", "network_egress", "filesystem_read""#;
    let upstream = r#""InvokeConnector", "NetworkEgress", "FilesystemRead""#;
    let mixed = r#""InvokeConnector", "network_egress", "FilesystemRead""#;
    let wasm = r#""component": "p.wasm""#;
    let stdio = r#""command": "sh""#;
    let http = r#""endpoint": "http://127.0.0.1:8080/h""#;
    let bridges = [
        ("wasm", wasm, &["wasm_component", "WASM", " wasm "][..]),
        ("process_stdio", stdio, &["stdio", "Stdio"][..]),
        ("mcp_stdio", stdio, &["mcp", "mcp_server"][..]),
        ("http_json", http, &["http", "HTTP_JSON"][..]),
    ];
    for (kind, extra, aliases) in bridges {
        let want = parsed(ours, kind, extra);
        assert!(
            want.contains(
                r#"capabilities: ["invoke_connector", "network_egress", "filesystem_read"]"#
            ),
            "{want}"
        );
        assert_eq!(
            parsed(upstream, kind, extra),
            want,
            "{kind}: upstream spelling"
        );
        assert_eq!(parsed(mixed, kind, extra), want, "{kind}: mixed spelling");
        for alias in aliases {
            assert_eq!(parsed(upstream, alias, extra), want, "{alias}");
        }
    }
    // Public Loong's dotted names for the filesystem capabilities.
    assert_eq!(
        parsed(r#""fs.read", "fs.write""#, "wasm", wasm),
        parsed(r#""filesystem_read", "filesystem_write""#, "wasm", wasm)
    );
    // A name that is neither spelling is refused by the parser, naming it (so discovery,
    // install and doctor, which all parse, refuse it alike).
    let text = manifest(r#""invokeConnector""#, "wasm", wasm);
    let err = PluginManifest::parse(&path, text.as_bytes()).expect_err("unknown capability");
    assert!(
        err.to_string()
            .contains(r#"capabilities: capability "invokeConnector" is unknown"#),
        "{err}"
    );
    // The kinds public Loong names but this kernel does not run are refused by name.
    for label in [
        "native_ffi",
        "ffi",
        "acp_bridge",
        "acp",
        "acp_runtime",
        "acpx",
        "unknown",
    ] {
        let text = manifest(upstream, label, stdio);
        let err = PluginManifest::parse(&path, text.as_bytes()).expect_err(label);
        let err = err.to_string();
        assert!(err.contains("metadata.bridge_kind"), "{label}: {err}");
        assert!(err.contains(&format!("`{label}`")), "{label}: {err}");
        assert!(err.contains("does not run"), "{label}: {err}");
    }
    let text = manifest(upstream, "ffi", stdio);
    let err = PluginManifest::parse(&path, text.as_bytes()).expect_err("ffi");
    assert!(err.to_string().contains("native FFI bridge"), "{err}");
    let text = manifest(upstream, "carrier_pigeon", stdio);
    let err = PluginManifest::parse(&path, text.as_bytes()).expect_err("unknown");
    assert!(
        err.to_string().contains("\"carrier_pigeon\" is unknown"),
        "{err}"
    );
}

#[test]
fn foreign_manifests_are_validated() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join(MANIFEST_FILE);
    let good = r#"{"api_version": "v1alpha1", "plugin_id": "lines", "version": "1",
        "capabilities": ["filesystem_read", "network_egress"],
        "metadata": {"bridge_kind": "process_stdio", "command": "sh",
            "args_json": "[\"-c\", \"cat\"]"},
        "sandbox": {"read": ["/usr/share"], "net": ["127.0.0.1:8080"], "timeout_ms": 500}}"#;
    let mut m = PluginManifest::parse(&path, good.as_bytes()).expect("parses");
    let Bridge::Foreign(f) = &m.bridge else {
        panic!("a foreign bridge: {:?}", m.bridge)
    };
    assert_eq!(f.kind, ForeignKind::ProcessStdio);
    assert_eq!(f.args, ["-c", "cat"]);
    assert_eq!(f.net[0].port, loong_sandbox::PortPattern::Port(8080));
    assert_eq!(m.limits.timeout_ms, 500);
    assert_eq!(m.catalog, Catalog::default());
    assert_eq!(f.egress, EgressLimits::default());
    // The plugin's own egress limits are read as given (loongd clamps them to its own).
    let tight = good.replacen(
        r#""timeout_ms""#,
        r#""egress": {"max_connections": 2, "max_bytes": 4096}, "timeout_ms""#,
        1,
    );
    let t = PluginManifest::parse(&path, tight.as_bytes()).expect("egress parses");
    let Bridge::Foreign(tf) = &t.bridge else {
        unreachable!()
    };
    assert_eq!(
        tf.egress,
        EgressLimits {
            max_connections: Some(2),
            max_bytes: Some(4096)
        }
    );
    let with_catalog = good.replacen(
        r#""version": "1","#,
        r#""version": "1", "tags": ["a"], "trust_tier": "verified-community", "defer_loading": true, "input_examples": [{"n": 1}],"#,
        1,
    );
    let c = PluginManifest::parse(&path, with_catalog.as_bytes())
        .expect("catalog parses")
        .catalog;
    assert_eq!(c.tags, ["a"]);
    assert_eq!(c.claimed_trust, Some(TrustTier::VerifiedCommunity));
    assert!(c.defer_loading);
    assert_eq!(c.input_examples, [r#"{"n":1}"#]);
    m.check_host().expect("sh exists");
    let Bridge::Foreign(f) = &m.bridge else {
        unreachable!()
    };
    assert!(
        f.command.starts_with('/') && f.command.ends_with("/sh"),
        "{}",
        f.command
    );

    let cases = [
        (r#""command": "sh","#, "", "metadata.command"),
        (
            r#""[\"-c\", \"cat\"]""#,
            r#""-c cat""#,
            "metadata.args_json",
        ),
        (
            r#""timeout_ms""#,
            r#""tier": "restricted", "timeout_ms""#,
            "sandbox.tier",
        ),
        (r#""/usr/share""#, r#""usr/share""#, "sandbox.read"),
        (r#""127.0.0.1:8080""#, r#""127.0.0.1""#, "sandbox.net"),
        (
            r#""timeout_ms""#,
            r#""egress": {"max_bytes": 0}, "timeout_ms""#,
            "sandbox.egress.max_bytes",
        ),
        (
            r#""timeout_ms""#,
            r#""egress": {"max_connections": 0}, "timeout_ms""#,
            "sandbox.egress.max_connections",
        ),
        (
            r#""timeout_ms""#,
            r#""fuel": 5, "timeout_ms""#,
            "sandbox.fuel",
        ),
        (
            r#""command": "sh","#,
            r#""command": "sh", "component_sha256": "","#,
            "metadata.component_sha256",
        ),
        (
            r#""timeout_ms""#,
            r#""max_line_bytes": 0, "timeout_ms""#,
            "max_line_bytes",
        ),
        (r#""process_stdio""#, r#""native_ffi""#, "bridge_kind"),
        (
            r#""version": "1","#,
            r#""version": "1", "tags": "x","#,
            "tags",
        ),
        (
            r#""version": "1","#,
            r#""version": "1", "trust_tier": "gold","#,
            "trust_tier",
        ),
        (
            r#""version": "1","#,
            r#""version": "1", "defer_loading": "yes","#,
            "defer_loading",
        ),
        (
            r#""version": "1","#,
            r#""version": "1", "input_examples": {},"#,
            "input_examples",
        ),
    ];
    for (from, to, expect) in cases {
        assert!(good.contains(from), "fixture lacks {from}");
        let bad = good.replacen(from, to, 1);
        let err = PluginManifest::parse(&path, bad.as_bytes()).expect_err(to);
        assert!(err.to_string().contains(expect), "{to}: {err}");
    }
    // http_json: the endpoint is parsed and named when it does not parse; https and
    // grants are refused by name.
    let http = |endpoint: &str, sandbox: &str| {
        format!(
            r#"{{"api_version": "v1alpha1", "plugin_id": "hook", "version": "1",
            "capabilities": ["network_egress"],
            "metadata": {{"bridge_kind": "http_json", "endpoint": "{endpoint}",
            "response_contract_json": "{{\"required\": [\"ok\"]}}"}},
            "sandbox": {{{sandbox}}}}}"#
        )
    };
    let m = PluginManifest::parse(
        &path,
        http("http://Svc.example:8080/v1/hook?x=1", "").as_bytes(),
    )
    .expect("an http_json manifest parses");
    let Bridge::Http(h) = &m.bridge else {
        panic!("an http bridge: {:?}", m.bridge)
    };
    assert_eq!(
        (h.host.as_str(), h.port, h.path.as_str()),
        ("svc.example", 8080, "/v1/hook?x=1")
    );
    assert_eq!(h.required_keys.as_deref(), Some(&["ok".to_string()][..]));
    assert!(h.allow_other_keys && !h.allow_private_network);
    for (endpoint, sandbox, expect) in [
        ("http//x:99999", "", "metadata.endpoint"),
        ("http://x:99999/", "", "metadata.endpoint"),
        ("http://user@x/", "", "metadata.endpoint"),
        ("ftp://x/", "", "metadata.endpoint"),
        ("http://x/", r#""net": ["x:80"]"#, "sandbox.net"),
        ("http://x/", r#""tier": "trusted""#, "sandbox.tier"),
    ] {
        let err =
            PluginManifest::parse(&path, http(endpoint, sandbox).as_bytes()).expect_err(endpoint);
        assert!(err.to_string().contains(expect), "{endpoint}: {err}");
    }
    let e = parse_endpoint("http://[::1]:9/").expect("v6");
    assert_eq!(
        (e.https, e.host.as_str(), e.port, e.target.as_str()),
        (false, "::1", 9, "/")
    );
    // https: port 443 by default, and the Host header leaves the default port out.
    let e = parse_endpoint("https://Api.Example/v1?q").expect("https");
    assert_eq!(
        (e.https, e.host.as_str(), e.port, e.target.as_str()),
        (true, "api.example", 443, "/v1?q")
    );
    assert_eq!(e.host_header(), "api.example");
    let e = parse_endpoint("https://api.example:80/").expect("https on 80");
    assert_eq!(e.host_header(), "api.example:80");
    let m = PluginManifest::parse(&path, http("https://svc.example/hook", "").as_bytes())
        .expect("an https endpoint parses");
    let Bridge::Http(h) = &m.bridge else {
        panic!("an http bridge: {:?}", m.bridge)
    };
    assert!(h.https && h.port == 443, "{h:?}");
    // metadata.headers_json: checked at parse, a hostile header named.
    let with_headers = |headers: &str| {
        http("https://svc.example/hook", "").replace(
            r#""response_contract_json""#,
            &format!(
                r#""headers_json": {}, "response_contract_json""#,
                serde_json::json!(headers)
            ),
        )
    };
    let m = PluginManifest::parse(
        &path,
        with_headers(r#"{"Authorization": "Bearer ${secret:svc_key}"}"#).as_bytes(),
    )
    .expect("headers with a secret parse");
    let Bridge::Http(h) = &m.bridge else {
        panic!("an http bridge: {:?}", m.bridge)
    };
    assert_eq!(
        h.headers,
        vec![(
            "Authorization".to_string(),
            "Bearer ${secret:svc_key}".to_string()
        )]
    );
    for (headers, expect) in [
        (r#"{"Host": "evil"}"#, "\"Host\""),
        (r#"{"X-A": "a\r\nHost: evil"}"#, "\"X-A\""),
    ] {
        let err =
            PluginManifest::parse(&path, with_headers(headers).as_bytes()).expect_err(headers);
        let text = err.to_string();
        assert!(
            text.contains("metadata.headers_json") && text.contains(expect),
            "{headers}: {text}"
        );
    }

    // What the host lacks is named: a program, a granted path.
    for (from, to, expect) in [
        (
            r#""sh""#,
            r#""loong-no-such-program""#,
            "loong-no-such-program",
        ),
        (
            r#""/usr/share""#,
            r#""/loong/no/such/dir""#,
            "/loong/no/such/dir",
        ),
    ] {
        let bad = good.replacen(from, to, 1);
        let mut m = PluginManifest::parse(&path, bad.as_bytes()).expect("parses");
        let err = m.check_host().expect_err(to);
        assert!(err.to_string().contains(expect), "{to}: {err}");
    }
    // Both at once are both named.
    let bad = good
        .replacen(r#""sh""#, r#""loong-no-such-program""#, 1)
        .replacen(r#""/usr/share""#, r#""/loong/no/such/dir""#, 1);
    let mut m = PluginManifest::parse(&path, bad.as_bytes()).expect("parses");
    match m.check_host() {
        Err(ManifestError::Problems { problems, .. }) => {
            assert_eq!(problems.len(), 2, "{problems:?}");
            assert!(
                problems[0].contains("loong-no-such-program"),
                "{problems:?}"
            );
            assert!(problems[1].contains("/loong/no/such/dir"), "{problems:?}");
        }
        other => panic!("expected both problems, got {other:?}"),
    }
}

/// A WASM manifest with the given extra `metadata` and `sandbox` members (JSON text,
/// each with a trailing comma or empty).
fn wasm_with(metadata: &str, sandbox: &str) -> String {
    format!(
        r#"{{"api_version": "v1alpha1", "plugin_id": "p", "version": "1",
        "metadata": {{{metadata} "bridge_kind": "wasm", "component": "p.wasm"}},
        "sandbox": {{{sandbox} "tier": "restricted"}}}}"#
    )
}

#[test]
fn sha256_pins_are_normalised_as_public_loong_does() {
    let hex = "ab".repeat(32);
    for accepted in [
        hex.clone(),
        format!("sha256:{hex}"),
        format!("SHA256:{hex}"),
        format!("Sha256:{}", hex.to_uppercase()),
        hex.to_uppercase(),
        format!("  sha256: {hex}\n"),
        format!("\t{hex} "),
    ] {
        assert_eq!(
            normalize_sha256_pin(&accepted).as_deref(),
            Some(hex.as_str()),
            "{accepted:?}"
        );
    }
    for refused in [
        String::new(),
        "  ".into(),
        "sha256:".into(),
        "ab".repeat(31),
        "ab".repeat(33),
        format!("{}zz", "ab".repeat(31)),
        format!("sha512:{hex}"),
        format!("sha256:sha256:{hex}"),
        format!("{}:{}", &hex[..32], &hex[32..]),
        format!("{hex}\u{0}"),
    ] {
        assert_eq!(normalize_sha256_pin(&refused), None, "{refused:?}");
    }
}

#[test]
fn a_module_pin_is_honoured_in_either_field_and_both_must_agree() {
    let path = Path::new("/p/loong.plugin.json");
    let hex = "0f".repeat(32);
    let parse = |text: String| PluginManifest::parse(path, text.as_bytes());
    // Positive controls: each accepted spelling, in each field, gives the normalised pin.
    for (metadata, sandbox, field) in [
        (
            format!(r#""component_sha256": "sha256:{hex}","#),
            String::new(),
            COMPONENT_SHA256_FIELD,
        ),
        (
            format!(r#""component_sha256": " SHA256:{}  ","#, hex.to_uppercase()),
            String::new(),
            COMPONENT_SHA256_FIELD,
        ),
        (
            String::new(),
            format!(r#""sha256": "{}","#, hex.to_uppercase()),
            SANDBOX_SHA256_FIELD,
        ),
        (
            format!(r#""component_sha256": "{hex}","#),
            format!(r#""sha256": "sha256:{hex}","#),
            "metadata.component_sha256 and sandbox.sha256",
        ),
    ] {
        let m = parse(wasm_with(&metadata, &sandbox)).expect("a good pin parses");
        assert_eq!(
            m.sha256.as_deref(),
            Some(hex.as_str()),
            "{metadata} {sandbox}"
        );
        assert_eq!(m.sha256_field, field);
    }
    let unpinned = parse(wasm_with("", "")).expect("unpinned parses");
    assert_eq!((unpinned.sha256, unpinned.sha256_field), (None, ""));

    // Refusals: a malformed pin in either field, and two pins that disagree.
    let other = "1e".repeat(32);
    for (metadata, sandbox, field, says) in [
        (
            r#""component_sha256": "sha256:abc","#.to_string(),
            String::new(),
            COMPONENT_SHA256_FIELD,
            "\"sha256:abc\" is not a sha256 digest",
        ),
        (
            r#""component_sha256": "","#.to_string(),
            String::new(),
            COMPONENT_SHA256_FIELD,
            "is not a sha256 digest",
        ),
        (
            String::new(),
            format!(r#""sha256": "md5:{hex}","#),
            SANDBOX_SHA256_FIELD,
            "is not a sha256 digest",
        ),
        (
            format!(r#""component_sha256": "{hex}","#),
            format!(r#""sha256": "{other}","#),
            SANDBOX_SHA256_FIELD,
            "make the two pins agree",
        ),
    ] {
        let err = parse(wasm_with(&metadata, &sandbox)).expect_err("refused");
        let msg = err.to_string();
        assert!(
            matches!(&err, ManifestError::Field { field: f, .. } if *f == field),
            "{field}: {msg}"
        );
        assert!(msg.contains(says), "{says}: {msg}");
    }
    // A pin too long to show whole is cut in the message.
    let long = format!(r#""component_sha256": "{}","#, "x".repeat(10_000));
    let msg = parse(wasm_with(&long, ""))
        .expect_err("refused")
        .to_string();
    assert!(msg.len() < 1_000, "{} bytes", msg.len());
}

#[test]
fn every_structural_problem_is_reported_in_one_run() {
    let path = Path::new("/p/loong.plugin.json");
    let text = r#"{"api_version": "v1alpha1", "plugin_id": "x", "surprise": 1,
        "also": true, "metadata": {"bridge_kind": "wasm", "component": 5},
        "sandbox": {"tier": "restricted", "tiers": "typo"}}"#;
    let err = PluginManifest::parse(path, text.as_bytes()).expect_err("refused");
    let msg = err.to_string();
    for named in [
        "unknown field \"surprise\"",
        "unknown field \"also\"",
        "version is missing",
        "metadata.component must be a string",
        "unknown field sandbox.tiers",
        "5 problems",
        "/p/loong.plugin.json",
    ] {
        assert!(msg.contains(named), "{named}: {msg}");
    }
}

#[test]
fn every_semantic_problem_is_reported_in_one_run() {
    let path = Path::new("/p/loong.plugin.json");
    let problems = |text: &str| match PluginManifest::parse(path, text.as_bytes()) {
        Err(ManifestError::Problems { problems, .. }) => problems,
        other => panic!("expected a list of problems, got {other:?}"),
    };
    let wasm = problems(
        r#"{"api_version": "v2", "plugin_id": "Bad Id", "version": "1", "tags": 3,
        "metadata": {"bridge_kind": "wasm", "component": "../out.wasm"},
        "sandbox": {"tier": "balanced", "allow_wasi": true}}"#,
    );
    let foreign = problems(
        r#"{"api_version": "v1alpha1", "plugin_id": "f", "version": "1",
        "metadata": {"bridge_kind": "process_stdio", "command": "/bin/cat",
            "args_json": "{}"},
        "sandbox": {"tier": "trusted", "read": ["relative"], "net": ["nowhere"],
            "fuel": 5}}"#,
    );
    let http = problems(
        r#"{"api_version": "v1alpha1", "plugin_id": "h", "version": "1",
        "metadata": {"bridge_kind": "http_json", "endpoint": "ftp://x"},
        "sandbox": {"tier": "restricted", "read": ["/etc"]}}"#,
    );
    for (list, fields) in [
        (
            &wasm,
            &[
                "api_version",
                "plugin_id",
                "tags",
                "metadata.component",
                "sandbox.tier",
                "sandbox.allow_wasi",
            ][..],
        ),
        (
            &foreign,
            &[
                "metadata.args_json",
                "sandbox.tier",
                "sandbox.fuel",
                "sandbox.read",
                "sandbox.net",
            ][..],
        ),
        (
            &http,
            &["metadata.endpoint", "sandbox.tier", "sandbox.read"][..],
        ),
    ] {
        assert_eq!(list.len(), fields.len(), "{list:?}");
        for f in fields {
            assert!(
                list.iter().any(|p| p.starts_with(&format!("{f}: "))),
                "{f}: {list:?}"
            );
        }
    }
    // One problem keeps its field's own error, and a sound manifest parses.
    let one = PluginManifest::parse(
        path,
        br#"{"api_version": "v1alpha1", "plugin_id": "o", "version": "1",
        "metadata": {"bridge_kind": "wasm", "component": "p.wasm"},
        "sandbox": {"allow_wasi": true}}"#,
    );
    assert!(
        matches!(
            one,
            Err(ManifestError::Field {
                field: "sandbox.allow_wasi",
                ..
            })
        ),
        "{one:?}"
    );
    PluginManifest::parse(
        path,
        br#"{"api_version": "v1alpha1", "plugin_id": "o", "version": "1",
        "metadata": {"bridge_kind": "wasm", "component": "p.wasm"}}"#,
    )
    .expect("a sound manifest parses");
}

/// A WASM manifest in public Loong's shape (top-level `provider_id`/`channel_id` as given,
/// no `sandbox` block unless `sandbox`, members with a trailing comma, is non-empty).
fn upstream_wasm(top: &str, metadata: &str, sandbox: &str) -> String {
    let sandbox = if sandbox.is_empty() {
        String::new()
    } else {
        format!(r#", "sandbox": {{{sandbox} "tier": "restricted"}}"#)
    };
    format!(
        r#"{{"api_version": "v1alpha1", "plugin_id": "p", "version": "1", {top}
        "metadata": {{{metadata} "bridge_kind": "wasm_component", "component": "p.wasm"}}{sandbox}}}"#
    )
}

/// `sandbox.input`: public Loong's request envelope unless the manifest says `"bare"`; the
/// envelope names `provider_id` (the plugin id when absent) and `channel_id` (none when
/// absent). A value that is neither, a non-string id, and the field on a bridge that runs no
/// module are refused by name.
#[test]
fn the_guest_reads_the_envelope_unless_the_manifest_says_bare() {
    let path = Path::new("/p/loong.plugin.json");
    let parse = |text: String| PluginManifest::parse(path, text.as_bytes());
    let envelope = |p: &str, c: Option<&str>| loong_ipc::GuestInput::Envelope {
        provider_id: p.into(),
        channel_id: c.map(String::from),
    };
    let upstream = upstream_wasm(r#""provider_id": "prov", "channel_id": "primary","#, "", "");
    assert_eq!(
        parse(upstream).expect("upstream shape").input,
        envelope("prov", Some("primary"))
    );
    assert_eq!(
        parse(upstream_wasm("", "", "")).expect("no ids").input,
        envelope("p", None)
    );
    assert_eq!(
        parse(wasm_with("", r#""input": "envelope","#))
            .expect("explicit")
            .input,
        envelope("p", None)
    );
    assert_eq!(
        parse(wasm_with("", r#""input": "bare","#))
            .expect("bare")
            .input,
        loong_ipc::GuestInput::Bare
    );
    for (text, field) in [
        (wasm_with("", r#""input": "raw","#), "sandbox.input"),
        (upstream_wasm(r#""provider_id": 7,"#, "", ""), "provider_id"),
        (
            upstream_wasm(r#""channel_id": ["a"],"#, "", ""),
            "channel_id",
        ),
    ] {
        let err = parse(text).expect_err("refused").to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
    let stdio = r#"{"api_version": "v1alpha1", "plugin_id": "p", "version": "1",
        "metadata": {"bridge_kind": "process_stdio", "command": "/bin/cat"},
        "sandbox": {"input": "bare"}}"#;
    let err = parse(stdio.into()).expect_err("refused").to_string();
    assert!(err.contains("sandbox.input"), "{err}");
}

/// Public Loong's `build_wasm_guest_config_includes_allowlisted_provider_and_channel_values`
/// (`crates/spec/src/spec_runtime/wasm_runtime_tests.rs`), with the manifest as the provider:
///   provider metadata {"region": "ap-southeast-1", "secret": "hidden"}, channel metadata
///   {"mode": "strict"}; allowlist {"channel.mode", "provider.missing", "provider.region"}
///   assert_eq!(guest_config, {"channel.mode": b"strict", "provider.region": b"ap-southeast-1"})
/// A manifest's channel carries public Loong's channel metadata, `source_plugin` (the plugin
/// id), so `channel.source_plugin` stands for `channel.mode`. And its key rule, from
/// `bridge_runtime_policy_tests.rs` (`"provider.region name"` is refused naming
/// guest_readable_config_keys): a prefixed key must name a key with no whitespace.
#[test]
fn provider_and_channel_keys_resolve_from_the_manifest_as_public_loong_does() {
    let path = Path::new("/p/loong.plugin.json");
    let parse = |text: String| PluginManifest::parse(path, text.as_bytes());
    let keys = r#""guest_readable_config_keys":
        ["channel.source_plugin", "provider.missing", "provider.region", "greeting"],
        "config": {"greeting": "hi", "hidden": "no"},"#;
    let m = parse(upstream_wasm(
        r#""channel_id": "primary","#,
        r#""region": "ap-southeast-1", "secret": "hidden","#,
        keys,
    ))
    .expect("parses");
    let config: Vec<(&str, &str)> = m
        .config
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        config,
        [
            ("channel.source_plugin", "p"),
            ("greeting", "hi"),
            ("hidden", "no"),
            ("provider.region", "ap-southeast-1"),
        ]
    );
    // Only the allowlisted keys reach the guest (the engine filters `config` by them):
    // `provider.secret` is not among them, and without a channel_id there is no channel.
    assert!(!m.config.contains_key("provider.secret"));
    let no_channel = parse(upstream_wasm("", r#""region": "x","#, keys)).expect("parses");
    assert!(!no_channel.config.contains_key("channel.source_plugin"));
    for (sandbox, field) in [
        (
            r#""guest_readable_config_keys": ["provider.region name"],"#,
            "guest_readable_config_keys",
        ),
        (
            r#""guest_readable_config_keys": ["provider."],"#,
            "guest_readable_config_keys",
        ),
        (
            r#""guest_readable_config_keys": ["channel. x"],"#,
            "guest_readable_config_keys",
        ),
        // Set twice: in sandbox.config and from metadata.
        (
            r#""guest_readable_config_keys": ["provider.region"],
               "config": {"provider.region": "eu"},"#,
            "sandbox.config",
        ),
    ] {
        let err = parse(upstream_wasm("", r#""region": "x","#, sandbox))
            .expect_err("refused")
            .to_string();
        assert!(err.contains(field), "{sandbox}: {err}");
    }
    // Control: a sandbox.config key under the prefix that metadata does not set is kept.
    let own = parse(upstream_wasm(
        "",
        r#""region": "x","#,
        r#""guest_readable_config_keys": ["provider.name"], "config": {"provider.name": "demo"},"#,
    ))
    .expect("parses");
    assert_eq!(
        own.config.get("provider.name").map(String::as_str),
        Some("demo")
    );
}

/// Public Loong's other metadata pins, `component_sha256_pin` and `component_sha256_hex`, are
/// honoured like `component_sha256`, never ignored. Its
/// `resolve_expected_wasm_sha256_rejects_conflicting_metadata_pins`
/// (`crates/spec/src/spec_runtime/wasm_runtime_tests.rs`):
///   metadata {"component_sha256": "aa"×32, "component_sha256_pin": "bb"×32}
///   assert!(error.contains("conflicting wasm sha256 pins"));
/// Ours refuses naming the second field and both digests. A bridge that runs no module
/// refuses each of them too.
#[test]
fn public_loongs_other_metadata_pins_are_honoured() {
    let path = Path::new("/p/loong.plugin.json");
    let parse = |text: String| PluginManifest::parse(path, text.as_bytes());
    let (aa, bb) = ("aa".repeat(32), "bb".repeat(32));
    for (key, field) in [
        ("component_sha256_pin", COMPONENT_SHA256_PIN_FIELD),
        ("component_sha256_hex", COMPONENT_SHA256_HEX_FIELD),
    ] {
        // Positive control: the pin is read, normalised, and named.
        let m = parse(wasm_with(&format!(r#""{key}": " SHA256:{aa} ","#), ""))
            .expect("a good pin parses");
        assert_eq!(
            (m.sha256.as_deref(), m.sha256_field),
            (Some(aa.as_str()), field)
        );
        // Agreeing with component_sha256: one pin.
        let m = parse(wasm_with(
            &format!(r#""component_sha256": "{aa}", "{key}": "sha256:{aa}","#),
            "",
        ))
        .expect("agreeing pins parse");
        assert_eq!(m.sha256.as_deref(), Some(aa.as_str()));
        for metadata in [
            format!(r#""component_sha256": "{aa}", "{key}": "{bb}","#),
            format!(r#""{key}": "deadbeef","#),
        ] {
            let err = parse(wasm_with(&metadata, "")).expect_err("refused");
            assert!(
                matches!(&err, ManifestError::Field { field: f, .. } if *f == field),
                "{metadata}: {err}"
            );
        }
        let stdio = format!(
            r#"{{"api_version": "v1alpha1", "plugin_id": "p", "version": "1",
            "metadata": {{"bridge_kind": "process_stdio", "command": "/bin/cat", "{key}": "{aa}"}}}}"#
        );
        let err = parse(stdio).expect_err("refused").to_string();
        assert!(err.contains(field), "{err}");
    }
}
#[test]
fn public_loongs_identity_fields_are_read_with_its_defaults_and_the_top_level_endpoint_serves_http()
{
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join(MANIFEST_FILE);
    let parse = |extra: &str, metadata: &str| {
        let text = format!(
            r#"{{"api_version": "v1alpha1", "plugin_id": "wa", "version": "0.1.0",
            "capabilities": ["InvokeConnector", "NetworkEgress"], {extra}
            "metadata": {{"bridge_kind": "http_json"{metadata}}}}}"#
        );
        PluginManifest::parse(&path, text.as_bytes())
    };
    // Upstream's shape: the URL at the top level only.
    let m = parse(
        r#""provider_id": "wa-bridge", "connector_name": "wa-http", "channel_id": "wa",
        "endpoint": "http://127.0.0.1:39731/bridge","#,
        "",
    )
    .expect("the top-level endpoint serves an http_json connector");
    let Bridge::Http(h) = &m.bridge else {
        panic!("http: {:?}", m.bridge)
    };
    assert_eq!(
        (h.host.as_str(), h.port, h.path.as_str()),
        ("127.0.0.1", 39731, "/bridge")
    );
    assert_eq!(
        m.identity,
        Identity {
            provider_id: "wa-bridge".into(),
            connector_name: "wa-http".into(),
            channel_id: Some("wa".into()),
            endpoint: Some("http://127.0.0.1:39731/bridge".into()),
        }
    );
    // Ours: metadata.endpoint; the identity defaults to the plugin id.
    let m = parse("", r#", "endpoint": "http://127.0.0.1:9/h""#).expect("ours");
    assert_eq!(m.identity.provider_id, "wa");
    assert_eq!(m.identity.connector_name, "wa");
    assert_eq!(m.identity.channel_id, None);
    // Both, agreeing: fine; differing: refused naming both.
    parse(
        r#""endpoint": "http://127.0.0.1:9/h","#,
        r#", "endpoint": "http://127.0.0.1:9/h""#,
    )
    .expect("agreeing endpoints");
    let err = parse(
        r#""endpoint": "http://127.0.0.1:9/a","#,
        r#", "endpoint": "http://127.0.0.1:9/h""#,
    )
    .expect_err("two endpoints");
    assert!(
        err.to_string()
            .contains("endpoint: \"http://127.0.0.1:9/a\" differs from metadata.endpoint"),
        "{err}"
    );
    // Neither: the connector has nowhere to post.
    let err = parse("", "").expect_err("no endpoint");
    assert!(
        err.to_string().contains("metadata.endpoint: missing"),
        "{err}"
    );
    // A bad identity field is named; a non-string is a type error.
    for (extra, want) in [
        (r#""provider_id": "","#, "provider_id: give 1 to"),
        (r#""channel_id": "a\nb","#, "channel_id: give 1 to"),
        (r#""connector_name": 7,"#, "connector_name must be a string"),
    ] {
        let err = parse(extra, r#", "endpoint": "http://127.0.0.1:9/h""#).expect_err(extra);
        assert!(err.to_string().contains(want), "{extra}: {err}");
    }
}

#[test]
fn a_built_in_name_two_versions_that_disagree_and_a_module_that_is_not_one_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let write = |id: &str, version_meta: &str, module: &[u8], pin: &str| {
        std::fs::write(tmp.path().join("p.wasm"), module).expect("module");
        let text = format!(
            r#"{{"api_version": "v1alpha1", "plugin_id": "{id}", "version": "1.0.0",
            "metadata": {{"bridge_kind": "wasm", "component": "p.wasm"{version_meta}{pin}}}}}"#
        );
        std::fs::write(tmp.path().join(MANIFEST_FILE), text).expect("manifest");
        check_package(tmp.path())
    };
    let module = b"\0asm\x01\0\0\0";
    // Positive control.
    let (m, read) = write("ok", "", module, "").expect("a good package");
    assert_eq!(read.as_deref(), Some(&module[..]));
    assert_eq!(m.source, ManifestSource::Package);
    let err = write("file.read", "", module, "").expect_err("built-in");
    assert!(
        err.to_string()
            .contains("plugin_id: \"file.read\" is the name of a built-in tool"),
        "{err}"
    );
    write("ok", r#", "version": "1.0.0""#, module, "").expect("the same version");
    let err = write("ok", r#", "version": "2.0.0""#, module, "").expect_err("two versions");
    assert!(
        err.to_string()
            .contains("metadata.version: \"2.0.0\" differs from version \"1.0.0\""),
        "{err}"
    );
    let err = write("ok", "", b"MZ not wasm", "").expect_err("not wasm");
    assert!(
        err.to_string().contains("is not a WebAssembly module"),
        "{err}"
    );
    // The manifest's pin is checked against the module by the same function.
    let digest = {
        use sha2::Digest;
        super::hex(&sha2::Sha256::digest(module))
    };
    let pin = |d: &str| format!(r#", "component_sha256": "sha256:{d}""#);
    write("ok", "", module, &pin(&digest.to_uppercase())).expect("a matching pin");
    let err = write("ok", "", module, &pin(&"0".repeat(64))).expect_err("a wrong pin");
    let text = err.to_string();
    assert!(
        text.contains("metadata.component_sha256: pins the module")
            && text.contains(&format!("but its sha256 is {digest}")),
        "{text}"
    );
}

/// A guest-readable key listed twice is one key, as in public Loong (its allowlist is a
/// set): the second listing resolves to the same value and is not refused as set both in
/// `sandbox.config` and from `metadata`. Control: a key that `sandbox.config` really sets
/// as well is still refused naming `sandbox.config`.
#[test]
fn a_guest_readable_key_listed_twice_is_one_key() {
    let path = Path::new("/p/loong.plugin.json");
    let parse = |text: String| PluginManifest::parse(path, text.as_bytes());
    let twice = r#""guest_readable_config_keys": ["provider.region", "provider.region",
        "channel.source_plugin", "channel.source_plugin"],"#;
    let m = parse(upstream_wasm(
        r#""channel_id": "c","#,
        r#""region": "r","#,
        twice,
    ))
    .expect("a key listed twice parses");
    assert_eq!(
        m.config.get("provider.region").map(String::as_str),
        Some("r")
    );
    assert_eq!(
        m.config.get("channel.source_plugin").map(String::as_str),
        Some("p")
    );
    let both = r#""guest_readable_config_keys": ["provider.region"],
        "config": {"provider.region": "s"},"#;
    let err = parse(upstream_wasm("", r#""region": "r","#, both))
        .expect_err("set twice")
        .to_string();
    assert!(err.contains("sandbox.config"), "{err}");
}

/// A WASM plugin's configuration is held to the Load message's bounds when the manifest is
/// read: more entries than one message carries (counting the resolved `provider.` keys), or
/// a value over the text bound, is refused naming the field, never loaded and refused by the
/// worker at every call. Control: exactly at each bound parses.
#[test]
fn configuration_over_the_load_messages_bounds_is_refused_at_parse() {
    use loong_ipc::message::worker::{MAX_CONFIG_ENTRIES, MAX_CONFIG_TEXT_BYTES};
    let path = Path::new("/p/loong.plugin.json");
    let parse = |text: String| PluginManifest::parse(path, text.as_bytes());
    let config = |n: usize, value_len: usize| {
        let entries: Vec<String> = (0..n)
            .map(|i| format!(r#""k{i}": "{}""#, "v".repeat(value_len)))
            .collect();
        format!(r#""config": {{{}}},"#, entries.join(","))
    };
    parse(wasm_with(
        "",
        &config(MAX_CONFIG_ENTRIES, MAX_CONFIG_TEXT_BYTES),
    ))
    .expect("at both bounds");
    let err = parse(wasm_with("", &config(MAX_CONFIG_ENTRIES + 1, 1)))
        .expect_err("one entry too many")
        .to_string();
    assert!(
        err.contains("sandbox.config") && err.contains("entries"),
        "{err}"
    );
    let err = parse(wasm_with("", &config(1, MAX_CONFIG_TEXT_BYTES + 1)))
        .expect_err("a value too long")
        .to_string();
    assert!(
        err.contains("sandbox.config") && err.contains("bytes"),
        "{err}"
    );
    // The resolved keys count: 256 set in config plus one provider key resolved from metadata.
    let mut sandbox = config(MAX_CONFIG_ENTRIES, 1);
    sandbox.push_str(r#""guest_readable_config_keys": ["provider.region"],"#);
    let err = parse(wasm_with(r#""region": "r","#, &sandbox))
        .expect_err("a resolved key over the count")
        .to_string();
    assert!(
        err.contains("sandbox.config") && err.contains("entries"),
        "{err}"
    );
}

/// `metadata.input_schema_json` is kept as compact JSON when it is an object schema within
/// the bounds; anything else (not JSON, not an object schema, too large) refuses the manifest
/// by the field's name.
#[test]
fn a_manifests_input_schema_is_checked_and_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join(MANIFEST_FILE);
    let with = |schema: &str| {
        let quoted = serde_json::to_string(schema).expect("a JSON string");
        format!(
            r#"{{"api_version": "v1alpha1", "plugin_id": "lines", "version": "1",
            "metadata": {{"bridge_kind": "process_stdio", "command": "sh",
                "args_json": "[\"-c\", \"cat\"]", "input_schema_json": {quoted}}}}}"#
        )
    };
    let good =
        r#"{"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}"#;
    let m = PluginManifest::parse(&path, with(good).as_bytes()).expect("a schema parses");
    assert_eq!(
        m.catalog.input_schema.as_deref(),
        Some(r#"{"properties":{"text":{"type":"string"}},"required":["text"],"type":"object"}"#)
    );
    let huge = format!(
        r#"{{"type": "object", "description": "{}"}}"#,
        "x".repeat(loong_ipc::schema::MAX_INPUT_SCHEMA_BYTES)
    );
    let mut deep = r#"{"type": "string"}"#.to_string();
    for _ in 0..loong_ipc::schema::MAX_INPUT_SCHEMA_DEPTH {
        deep = format!(r#"{{"type": "object", "properties": {{"a": {deep}}}}}"#);
    }
    for (bad, says) in [
        ("not json", "not JSON"),
        (r#"{"type": "string"}"#, r#""type": "object""#),
        (r#"["object"]"#, r#""type": "object""#),
        (huge.as_str(), "byte limit"),
        (deep.as_str(), "nests deeper"),
    ] {
        let err = PluginManifest::parse(&path, with(bad).as_bytes())
            .expect_err(bad)
            .to_string();
        assert!(
            err.contains("metadata.input_schema_json") && err.contains(says),
            "{bad}: {err}"
        );
    }
}
