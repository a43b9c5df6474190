//! TLS end to end: `http_json` connectors and `web.fetch` against a real local HTTPS server
//! (Python's `ssl`), with a CA, leaf certificates and a rogue CA made here by the `openssl`
//! tool. Trusted through `[egress] ca_bundle`, a call succeeds; a certificate for another
//! name or from an unknown CA is a typed `tls_failed` naming the host and the reason; an
//! `https` endpoint that answers in plain HTTP is never spoken to in plain; `http://` works.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::{
    bridges::shared_dir,
    support::{skip, Home},
    workers::{details, invoke, plugins},
};

/// A CA and the leaves it signed, in a directory every uid may read.
pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// `None` when the machine has no `openssl` tool or no Python.
    pub(crate) fn new() -> Option<Pki> {
        let has = |p: &str| {
            Command::new(p)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        };
        if !has("openssl") || !Path::new("/usr/bin/python3").exists() {
            return None;
        }
        let pki = Pki {
            dir: shared_dir("pki"),
        };
        for ca in ["ca", "rogue"] {
            openssl(
                pki.dir.path(),
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=loong test {ca}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        }
        Some(pki)
    }

    /// A leaf for `san` (`DNS:localhost,IP:127.0.0.1`) signed by `ca`, valid two days;
    /// returns (cert, key).
    pub(crate) fn leaf(&self, name: &str, ca: &str, san: &str) -> (PathBuf, PathBuf) {
        self.leaf_for_days(name, ca, san, "2")
    }

    /// The same, valid `days` (0: it expires the second it is made).
    fn leaf_for_days(&self, name: &str, ca: &str, san: &str, days: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        let (key, csr, cert, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        fs::write(
            d.join(&ext),
            format!(
                "subjectAltName={san}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
            ),
        )
        .expect("ext");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                days,
                "-extfile",
                &ext,
            ],
        );
        (d.join(cert), d.join(key))
    }

    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// The test server (`peers/https_server.py`), plain or with TLS; killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
    pub(crate) log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    pub(crate) fn start(tls: Option<&(PathBuf, PathBuf)>) -> Server {
        let dir = shared_dir("srv");
        let log = dir.path().join("requests.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("all/peers/https_server.py");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(script).arg(&log);
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the test server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the server's port");
        let port = line.trim().parse().expect("a port");
        Server {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// The requests it received, as JSON objects.
    pub(crate) fn requests(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a request line"))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs an `http_json` connector that may reach loopback.
pub(crate) fn install_connector(home: &Home, id: &str, endpoint: &str, extra_metadata: &str) {
    let dir = home.path().join("plugins").join(id);
    fs::create_dir_all(&dir).expect("plugin dir");
    let manifest = format!(
        r#"{{"api_version": "v1alpha1", "plugin_id": "{id}", "version": "0.1.0",
        "summary": "test {id}", "capabilities": ["network_egress"],
        "metadata": {{"bridge_kind": "http_json", "endpoint": "{endpoint}"{extra_metadata}}},
        "sandbox": {{"allow_private_network": true, "timeout_ms": 3000}}}}"#
    );
    fs::write(dir.join("loong.plugin.json"), manifest).expect("manifest");
}

/// A home trusting `ca` through `[egress] ca_bundle`, with `web.fetch` allowed to loopback.
pub(crate) fn home_trusting(ca: &Path) -> Home {
    Home::with_config(&format!(
        "[builtins]\nfetch = true\nfetch_allow_private = true\n\n[egress]\nca_bundle = {:?}\n",
        ca.display().to_string()
    ))
}

fn call(home: &Home, tool: &str, input: &str) -> (i32, String, String) {
    invoke(home, &[tool, "--input", input])
}

fn fetch(home: &Home, url: &str) -> (i32, String, String) {
    call(
        home,
        "web.fetch",
        &serde_json::json!({ "url": url }).to_string(),
    )
}

#[test]
fn https_connectors_and_fetches_verify_the_server_and_fail_typed() {
    let Some(pki) = Pki::new() else {
        return skip(
            "https_connectors_and_fetches_verify_the_server_and_fail_typed",
            "no openssl tool or no /usr/bin/python3",
        );
    };
    let good = Server::start(Some(&pki.leaf("good", "ca", "DNS:localhost,IP:127.0.0.1")));
    let wrong = Server::start(Some(&pki.leaf("wrong", "ca", "DNS:other.test")));
    let rogue = Server::start(Some(&pki.leaf("rogue-leaf", "rogue", "DNS:localhost")));
    let expired_made = std::time::Instant::now();
    let expired = Server::start(Some(&pki.leaf_for_days(
        "expired",
        "ca",
        "DNS:localhost",
        "0",
    )));
    let plain = Server::start(None);
    let home = home_trusting(&pki.ca());
    let https = |s: &Server, path: &str| format!("https://localhost:{}{path}", s.port);
    install_connector(&home, "good", &https(&good, "/hook"), "");
    install_connector(&home, "wrong", &https(&wrong, "/hook"), "");
    install_connector(&home, "rogue", &https(&rogue, "/hook"), "");
    install_connector(&home, "stale", &https(&expired, "/hook"), "");
    // By address: verified against the certificate's IP names.
    let by_ip = |s: &Server| format!("https://127.0.0.1:{}/hook", s.port);
    install_connector(&home, "good-ip", &by_ip(&good), "");
    install_connector(&home, "rogue-ip", &by_ip(&rogue), "");
    // An https endpoint whose server speaks plain HTTP: never spoken to in plain.
    install_connector(&home, "downgrade", &https(&plain, "/hook"), "");
    install_connector(
        &home,
        "plain",
        &format!("http://127.0.0.1:{}/hook", plain.port),
        "",
    );
    home.start();
    for p in plugins(&home) {
        let id = p["id"].as_str().unwrap_or_default();
        if [
            "good",
            "good-ip",
            "wrong",
            "rogue",
            "rogue-ip",
            "stale",
            "downgrade",
            "plain",
        ]
        .contains(&id)
        {
            assert_eq!(p["state"], "ready", "{p}");
        }
    }

    // Trusted through the bundle: the call succeeds, over TLS.
    let (code, out, err) = call(&home, "good", r#"{"n": 1}"#);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v, serde_json::json!({"ok": true, "got": {"n": 1}}));
    let (code, _, err) = call(&home, "good-ip", "{}");
    assert_eq!(code, 0, "{err}");
    assert_eq!(good.requests().len(), 2);
    // The control: plain http:// still works.
    let (code, _, err) = call(&home, "plain", "{}");
    assert_eq!(code, 0, "{err}");
    assert_eq!(plain.requests().len(), 1);

    // The zero-day leaf is past its notAfter (whole seconds) a second after it was made.
    std::thread::sleep(
        std::time::Duration::from_millis(1_100).saturating_sub(expired_made.elapsed()),
    );
    // Typed failures naming the host and the reason; the servers never saw a request.
    for (id, reason) in [
        ("wrong", "name mismatch"),
        ("rogue", "unknown issuer"),
        ("rogue-ip", "unknown issuer"),
        ("stale", "failed: expired"),
        ("downgrade", "did not complete a TLS handshake"),
    ] {
        let (code, _, err) = call(&home, id, "{}");
        assert_eq!(code, 7, "{id}: {err}");
        assert!(
            err.contains("tls_failed")
                && err.contains(if id.ends_with("-ip") {
                    "127.0.0.1"
                } else {
                    "localhost"
                })
                && err.contains(reason),
            "{id}: {err}"
        );
    }
    assert!(
        wrong.requests().is_empty() && rogue.requests().is_empty() && expired.requests().is_empty()
    );
    assert_eq!(
        plain.requests().len(),
        1,
        "the https call reached it in plain"
    );
    let failed = details(&home, "tool.failed");
    for id in ["wrong", "rogue", "stale", "downgrade"] {
        assert!(
            failed
                .iter()
                .any(|d| d["tool"] == id && d["failure"] == "tls_failed"),
            "no tool.failed tls_failed for {id}: {failed:?}"
        );
    }

    // web.fetch: the same verification.
    let (code, out, err) = fetch(&home, &https(&good, "/page"));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (v["status"].as_u64(), v["body"].as_str()),
        (Some(200), Some("loong-tls-page"))
    );
    for (s, reason) in [(&wrong, "name mismatch"), (&rogue, "unknown issuer")] {
        let (code, _, err) = fetch(&home, &https(s, "/page"));
        assert_eq!(code, 7, "{err}");
        assert!(
            err.contains("tls_failed") && err.contains("localhost") && err.contains(reason),
            "{err}"
        );
    }
    let (code, _, err) = fetch(&home, &format!("http://127.0.0.1:{}/page", plain.port));
    assert_eq!(code, 0, "{err}");

    // Without the bundle the test CA is unknown: the same good server is refused.
    let bare = Home::with_config("[builtins]\nfetch = true\nfetch_allow_private = true\n");
    install_connector(&bare, "good", &https(&good, "/hook"), "");
    bare.start();
    let (code, _, err) = call(&bare, "good", "{}");
    assert!(
        code == 7 && err.contains("tls_failed") && err.contains("unknown issuer"),
        "{err}"
    );
    let (code, _, err) = fetch(&bare, &https(&good, "/page"));
    assert!(code == 7 && err.contains("unknown issuer"), "{err}");
}

#[test]
fn a_ca_bundle_that_does_not_load_stops_loongd_naming_it() {
    let dir = shared_dir("bundle");
    let bad = dir.path().join("bad.pem");
    fs::write(&bad, "not a certificate\n").expect("write");
    for (path, expect) in [
        (bad, "holds no PEM certificate"),
        (dir.path().join("missing.pem"), "missing.pem"),
    ] {
        let home = Home::with_config(&format!(
            "[egress]\nca_bundle = {:?}\n",
            path.display().to_string()
        ));
        let out = home.ctl(&["daemon", "start"]);
        let all = format!("{}{}", String::from_utf8_lossy(&out.stderr), home.log());
        assert!(!out.status.success(), "started with {path:?}");
        assert!(all.contains("ca_bundle") && all.contains(expect), "{all}");
    }
}
