//! Secrets end to end: `loongctl secrets set` (stdin, or a file) → loongd's store → a
//! connector's header, for its own endpoint only; the value appears nowhere else: not in
//! the trail, the logs, `plugins list`, `secrets list`, an upstream error that echoes it, or
//! any file of the home but the store. Removed, the call fails naming it.

use std::{
    fs,
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use crate::{
    support::{bin, text, Home},
    tls::{install_connector, Server},
    workers::{details, invoke, plugins},
};

/// `loongctl --home HOME ARGS…` with `stdin` fed to it.
pub(crate) fn ctl_stdin(home: &Home, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run loongctl");
    // A command refused before it reads its stdin (a usage error) closes the pipe first:
    // what it answers is the result, not the broken pipe.
    if let Err(e) = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
    {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
    }
    child.wait_with_output().expect("loongctl output")
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if meta.is_file() {
            if let Ok(bytes) = fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

#[test]
fn a_secret_reaches_only_its_connectors_endpoint_and_nothing_records_it() {
    let server = Server::start(None);
    let other = Server::start(None);
    let value = format!(
        "loong-secret-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let tenant = "tenant-from-a-file-7f3a";
    let home = Home::with_config("[builtins]\nfetch = true\nfetch_allow_private = true\n");
    let headers = serde_json::json!(
        r#"{"Authorization": "Bearer ${secret:svc_key}", "X-Tenant": "${secret:tenant}"}"#
    );
    let with_headers = format!(r#", "headers_json": {headers}"#);
    let base = format!("http://127.0.0.1:{}", server.port);
    install_connector(&home, "svc", &format!("{base}/hook"), &with_headers);
    install_connector(&home, "echoer", &format!("{base}/echo-auth"), &with_headers);
    install_connector(
        &home,
        "cutter",
        &format!("{base}/echo-auth-cut"),
        &with_headers,
    );
    install_connector(
        &home,
        "other",
        &format!("http://127.0.0.1:{}/hook", other.port),
        "",
    );
    // Another port of the same address (any local user may listen there), naming the
    // secret in plain HTTP: it is bound to the service's port.
    install_connector(
        &home,
        "neighbour",
        &format!("http://127.0.0.1:{}/hook", other.port),
        &with_headers,
    );
    // A connector elsewhere that names the same secret: it is bound to 127.0.0.1.
    install_connector(
        &home,
        "thief",
        &format!("http://localhost:{}/hook", other.port),
        &with_headers,
    );
    // A secret over plain HTTP to a public host is refused at discovery (no
    // allow_private_network here), naming https.
    let dir = home.path().join("plugins/plainpub");
    fs::create_dir_all(&dir).expect("plugin dir");
    fs::write(
        dir.join("loong.plugin.json"),
        format!(
            r#"{{"api_version": "v1alpha1", "plugin_id": "plainpub", "version": "0.1.0",
            "capabilities": ["network_egress"],
            "metadata": {{"bridge_kind": "http_json", "endpoint": "http://api.example.invalid/x"{with_headers}}}}}"#
        ),
    )
    .expect("manifest");
    // A hostile header is refused at discovery, naming it; the others load (the control).
    install_connector(
        &home,
        "hostile",
        &format!("{base}/hook"),
        r#", "headers_json": "{\"Host\": \"evil.example\"}""#,
    );
    home.start();
    let ps = plugins(&home);
    let state = |id: &str| {
        let p = ps.iter().find(|p| p["id"] == id).expect("listed");
        (
            p["state"].clone(),
            p["error"].as_str().unwrap_or_default().to_string(),
        )
    };
    for id in ["svc", "echoer", "cutter", "other", "thief", "neighbour"] {
        assert_eq!(state(id).0, "ready", "{id}: {}", state(id).1);
    }
    let (st, err) = state("hostile");
    assert!(st == "failed" && err.contains("\"Host\""), "{st} {err}");
    let (st, err) = state("plainpub");
    assert!(
        st == "failed" && err.contains("names a secret") && err.contains("https://"),
        "{st} {err}"
    );

    // Not set yet: the call fails naming the secret and the command, and connects nowhere.
    let (code, _, err) = invoke(&home, &["svc", "--input", "{}"]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("svc_key") && err.contains("loongctl secrets set svc_key"),
        "{err}"
    );
    assert!(
        server.requests().is_empty(),
        "a call without its secret connected"
    );

    // A value is never an argument; from stdin (one newline dropped) and from a file.
    let out = home.ctl(&["secrets", "set", "svc_key", &value]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let bound = format!("http://127.0.0.1:{}", server.port);
    let out = ctl_stdin(
        &home,
        &["secrets", "set", "svc_key", "--host", &bound],
        &format!("{value}\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = tempfile::NamedTempFile::new().expect("file");
    fs::write(file.path(), tenant).expect("write");
    let out = home.ctl(&[
        "secrets",
        "set",
        "tenant",
        "--host",
        &bound,
        "--file",
        &file.path().display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A value that would smuggle a header is refused (the control: the two above).
    let out = ctl_stdin(
        &home,
        &["secrets", "set", "bad", "--host", "127.0.0.1"],
        "x\r\nHost: evil\n",
    );
    assert!(!out.status.success(), "a CR LF value was accepted");
    // A secret bound to no host is refused: any package could name it.
    let out = ctl_stdin(&home, &["secrets", "set", "unbound"], "v\n");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--host"),
        "{}",
        text(&out.stderr)
    );

    // It reaches the connector's own endpoint as the header value.
    let (code, out, err) = invoke(&home, &["svc", "--input", r#"{"n": 1}"#]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(&value), "{out}");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        reqs[0]["headers"]["Authorization"],
        format!("Bearer {value}")
    );
    assert_eq!(reqs[0]["headers"]["X-Tenant"], tenant);

    // An upstream that echoes the header: the error names the secret, never its value.
    let (code, _, err) = invoke(&home, &["echoer", "--input", "{}"]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("[secret:svc_key]") && !err.contains(&value),
        "{err}"
    );
    // One whose quote in the error is cut inside the value: the cut piece is redacted too.
    let (code, _, err) = invoke(&home, &["cutter", "--input", "{}"]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("Bearer [secret:svc_key]") && !err.contains(&value[..10]),
        "{err}"
    );

    // Not to web.fetch of the same server, nor to another connector's host.
    let url = format!("{base}/page");
    let (code, _, err) = invoke(
        &home,
        &[
            "web.fetch",
            "--input",
            &serde_json::json!({ "url": url }).to_string(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let fetched = server.requests().pop().expect("the fetch");
    assert_eq!(fetched["method"], "GET");
    assert!(
        fetched["headers"].get("Authorization").is_none(),
        "{fetched}"
    );
    let (code, _, err) = invoke(&home, &["other", "--input", "{}"]);
    assert_eq!(code, 0, "{err}");
    // Another connector naming the secret, at a host it is not bound to: refused by name.
    let (code, _, err) = invoke(&home, &["thief", "--input", "{}"]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("svc_key") && err.contains("not to localhost") && !err.contains(&value),
        "{err}"
    );
    let (code, _, err) = invoke(&home, &["neighbour", "--input", "{}"]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("svc_key")
            && err.contains(&format!("not to 127.0.0.1:{}", other.port))
            && !err.contains(&value),
        "{err}"
    );
    assert_eq!(
        other.requests().len(),
        1,
        "the other host was reached with the secret"
    );
    let seen = fs::read_to_string(&other.log).unwrap_or_default();
    assert!(!seen.is_empty() && !seen.contains(&value) && !seen.contains(tenant));

    // Listed by name only; audited by name only.
    let out = home.ctl(&["secrets", "list", "--json"]);
    let listed = text(&out.stdout);
    assert!(
        out.status.success() && listed.contains("svc_key") && listed.contains("tenant"),
        "{listed}"
    );
    let set = details(&home, "secret.set");
    assert!(
        set.iter()
            .any(|d| d["name"] == "svc_key" && d["hosts"] == serde_json::json!([bound])),
        "{set:?}"
    );
    let plugins_json = text(&home.ctl(&["plugins", "list", "--json"]).stdout);
    let export = text(&home.ctl(&["audit", "export", "--format", "jsonl"]).stdout);
    for (what, shown) in [
        ("secrets list", &listed),
        ("plugins list", &plugins_json),
        ("audit export", &export),
    ] {
        assert!(!shown.contains(&value), "{what} shows the secret");
        assert!(!shown.contains(tenant), "{what} shows the file's secret");
    }
    assert!(export.contains("secret.set"), "the set is not in the trail");
    // No file of the home holds it but the store (the log, state.db, the trail, the lanes).
    let holding = files_holding(home.path(), value.as_bytes());
    let store = home.path().join("secrets.json").display().to_string();
    assert_eq!(holding, vec![store.clone()], "files holding the secret");
    let mode = fs::metadata(&store).expect("store").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    // Removed: the call fails naming it; the removal is audited.
    let out = home.ctl(&["secrets", "rm", "svc_key"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, _, err) = invoke(&home, &["svc", "--input", "{}"]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("loongctl secrets set svc_key"), "{err}");
    assert_eq!(
        server.requests().len(),
        4,
        "a call without its secret connected"
    );
    let removed = details(&home, "secret.removed");
    assert!(
        removed.iter().any(|d| d["name"] == "svc_key"),
        "{removed:?}"
    );
    let holding = files_holding(home.path(), value.as_bytes());
    assert!(holding.is_empty(), "still held after rm: {holding:?}");
}

#[test]
fn a_secret_crosses_plain_http_only_to_internal_addresses_whatever_the_manifest_allows() {
    // `allow_private_network` is the package's own word (every connector here sets it): it
    // admits internal addresses, it does not make a public one internal. A secret named
    // over plain HTTP to a public address is refused at discovery, by IPv4, IPv6 and an
    // IPv6 form carrying a public IPv4; nothing is resolved or connected for these literals.
    let home = Home::new();
    let headers = serde_json::json!(r#"{"Authorization": "Bearer ${secret:svc_key}"}"#);
    let with_headers = format!(r#", "headers_json": {headers}"#);
    let public = [
        ("pub4", "http://8.8.8.8/x"),
        ("pub6", "http://[2001:4860:4860::8888]/x"),
        ("pubmapped", "http://[::ffff:8.8.8.8]:8080/x"),
    ];
    for (id, endpoint) in public {
        install_connector(&home, id, endpoint, &with_headers);
    }
    // The controls: the same headers to a loopback address in plain, to the public address
    // over TLS, and the public address in plain naming no secret.
    install_connector(&home, "internal", "http://127.0.0.1:9/x", &with_headers);
    install_connector(&home, "tlspub", "https://8.8.8.8/x", &with_headers);
    install_connector(&home, "plainpub", "http://8.8.8.8/x", "");
    home.start();
    let ps = plugins(&home);
    let state = |id: &str| {
        let p = ps.iter().find(|p| p["id"] == id).expect("listed");
        (
            p["state"].as_str().unwrap_or_default().to_string(),
            p["error"].as_str().unwrap_or_default().to_string(),
        )
    };
    for (id, _) in public {
        let (st, err) = state(id);
        assert!(
            st == "failed" && err.contains("names a secret") && err.contains("public address"),
            "{id}: {st} {err}"
        );
    }
    for id in ["internal", "tlspub", "plainpub"] {
        let (st, err) = state(id);
        assert_eq!(st, "ready", "{id}: {err}");
    }
}

#[test]
fn headers_grown_by_their_secrets_past_the_call_bound_fail_in_loongd_naming_the_header() {
    // A manifest may name one secret hundreds of times in a value: filled in, the header is
    // refused by loongd before it is built further or sent, naming it; nothing is connected.
    let home = Home::new();
    let many = "${secret:big}".repeat(300);
    let headers = serde_json::json!(format!(r#"{{"X-Big": "{many}"}}"#));
    install_connector(
        &home,
        "grower",
        "http://127.0.0.1:9/x",
        &format!(r#", "headers_json": {headers}"#),
    );
    let small = serde_json::json!(r#"{"X-Small": "${secret:big}"}"#);
    install_connector(
        &home,
        "control",
        "http://127.0.0.1:9/x",
        &format!(r#", "headers_json": {small}"#),
    );
    home.start();
    let out = ctl_stdin(
        &home,
        &["secrets", "set", "big", "--host", "http://127.0.0.1:9"],
        &"v".repeat(8000),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, _, err) = invoke(&home, &["grower", "--input", "{}"]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("\"X-Big\"") && err.contains("byte limit") && !err.contains("vvvv"),
        "{err}"
    );
    // The control: the same secret once gets as far as connecting (nothing listens on 9).
    let (_, _, err) = invoke(&home, &["control", "--input", "{}"]);
    assert!(!err.contains("byte limit"), "{err}");
}

#[test]
fn a_secret_typed_at_a_terminal_is_not_echoed() {
    // `script` runs loongctl on a pseudo-terminal and records what the terminal shows;
    // typed at it, the value is read with echo off (one line), and set.
    let home = Home::new();
    home.start();
    let value = format!("typed-secret-{}", std::process::id());
    let cmd = format!(
        "{} --home {} secrets set typed --host api.example",
        bin("loongctl").display(),
        home.path().display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script");
    let mut stdin = child.stdin.take().expect("stdin");
    // Typed once the prompt is up (echo is off by then), then the line ends.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    stdin
        .write_all(format!("{value}\n").as_bytes())
        .expect("type");
    std::thread::sleep(std::time::Duration::from_millis(500));
    drop(stdin);
    let out = child.wait_with_output().expect("script output");
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{shown}");
    assert!(
        !shown.contains(&value),
        "the terminal showed the value: {shown}"
    );
    // The control: it was set (listed by name).
    let listed = text(&home.ctl(&["secrets", "list", "--json"]).stdout);
    assert!(listed.contains("\"typed\""), "{listed}");
}
