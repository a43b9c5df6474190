//! Metrics: `loongctl metrics` and `[metrics] listen`'s `/metrics` serve OpenMetrics text that
//! the Python `prometheus_client` parser accepts, with the counts of what happened; a listen
//! address beyond loopback is refused at start.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixStream,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    support::{skip, text, wait_until, Home},
    workers::{echo_token, invoke, start_with_careful_pack, workers},
};

/// Where `.ci/run` installs `prometheus-client` (beside the MCP servers).
const VENV_PYTHON: &str = "/opt/loong-mcp/venv/bin/python3";

/// Parses with `prometheus_client.openmetrics.parser`; prints every sample as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

/// A Python with the OpenMetrics parser, or `None`.
fn python() -> Option<&'static str> {
    [VENV_PYTHON, "python3"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// `name{labels}` → value, as the Python parser read `text`; panics when it refuses it.
fn parse(python: &str, exposition: &str) -> BTreeMap<String, f64> {
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python ran");
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the text: {}\n{exposition}",
        text(&out.stderr)
    );
    let samples: Vec<(String, BTreeMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).expect("samples");
    samples
        .into_iter()
        .map(|(name, labels, value)| {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (format!("{name}{{{}}}", labels.join(",")), value)
        })
        .collect()
}

fn get(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

/// One HTTP GET on `port`; (status line, headers, body).
fn http_get(port: u16, path: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
    let mut all = String::new();
    s.read_to_string(&mut all).expect("answer");
    let (head, body) = all.split_once("\r\n\r\n").expect("a head and a body");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn metrics_count_calls_denials_sandboxes_and_kills_and_parse_as_openmetrics() {
    let test = "metrics::metrics_count_calls_denials_sandboxes_and_kills_and_parse_as_openmetrics";
    let Some(python) = python() else {
        return skip(
            test,
            "no Python with prometheus_client (the OpenMetrics parser); .ci/run installs it",
        );
    };
    let port = free_port();
    let home = Home::with_config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[approvals]\ntimeout_ms = 400\n"
    ));
    start_with_careful_pack(&home);
    let issue = |pack: &str| echo_token(&home, pack);
    let token = issue("docs-reader");
    // Two allowed calls (the operator's, a token's), one denied (outside the token's grant).
    let (code, _, err) = invoke(&home, &["echo", "--input", "{}"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = invoke(&home, &["echo", "--token", &token, "--input", "{}"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = invoke(&home, &["json-transform", "--token", &token]);
    assert_eq!(code, 4, "{err}");
    // One held for an approval nobody gives: requested, then refused (expired); it never ran.
    let careful = issue("careful");
    let (code, _, err) = invoke(&home, &["echo", "--token", &careful]);
    assert_eq!(code, 5, "{err}");
    let out = home.ctl(&["sandbox", "run", "--tier", "restricted", "--", "/bin/true"]);
    assert!(out.status.success(), "sandbox run: {}", text(&out.stderr));
    let id = workers(&home)[0]["id"].as_u64().expect("a worker id");
    let out = home.ctl(&["workers", "kill", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = home.ctl(&["metrics"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exposition = text(&out.stdout);
    assert!(exposition.ends_with("# EOF\n"), "{exposition}");
    let m = parse(python, &exposition);
    let expect = [
        ("loong_effect_calls_total{capability=tool.invoke}", 4.0),
        ("loong_effect_denials_total{capability=tool.invoke}", 1.0),
        (
            "loong_effect_approvals_total{capability=tool.invoke,outcome=requested}",
            1.0,
        ),
        (
            "loong_effect_approvals_total{capability=tool.invoke,outcome=refused}",
            1.0,
        ),
        ("loong_tool_calls_total{outcome=completed,tool=echo}", 2.0),
        ("loong_tool_call_duration_seconds_count{tool=echo}", 2.0),
        ("loong_sandbox_spawns_total{tier=restricted}", 1.0),
        ("loong_worker_kills_total{kind=wasm}", 1.0),
    ];
    for (key, want) in expect {
        assert_eq!(get(&m, key), want, "{key} in\n{exposition}");
    }
    // The calls were decided before they ran; the denied one never ran.
    assert_eq!(
        get(
            &m,
            "loong_tool_calls_total{outcome=completed,tool=json-transform}"
        ),
        0.0
    );
    assert!(
        get(&m, "loong_worker_spawns_total{kind=wasm}") >= 1.0,
        "{exposition}"
    );
    assert!(
        get(&m, "loong_audit_commits_total{}") >= 1.0,
        "{exposition}"
    );
    assert!(get(&m, "loong_audit_commit_duration_seconds_count{}") >= 1.0);
    assert!(m.contains_key("loong_audit_queue_depth{}"), "{exposition}");
    // Live workers are what the pools hold (the killed one replaced, none counted twice).
    assert!(
        wait_until(Duration::from_secs(10), || {
            let listed = workers(&home)
                .iter()
                .filter(|w| w["kind"] == "wasm")
                .count() as f64;
            let out = home.ctl(&["metrics"]);
            let live = get(
                &parse(python, &text(&out.stdout)),
                "loong_workers_live{kind=wasm}",
            );
            live >= 1.0 && live == listed
        }),
        "loong_workers_live disagrees with workers list"
    );

    // The same series over HTTP on the loopback port.
    let (status, headers, body) = http_get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{headers}");
    assert!(
        headers.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    let served = parse(python, &body);
    for (key, want) in expect {
        assert_eq!(get(&served, key), want, "{key} over HTTP in\n{body}");
    }
    // Only /metrics is served.
    let (status, _, _) = http_get(port, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn a_metrics_address_beyond_loopback_is_refused_at_start() {
    for addr in ["0.0.0.0:9464", "[::]:9464", "192.0.2.1:9464"] {
        let home = Home::with_config(&format!("[metrics]\nlisten = \"{addr}\"\n"));
        let out = home.ctl(&["daemon", "start"]);
        let said = format!("{}{}", text(&out.stderr), home.log());
        assert!(!out.status.success(), "{addr}: started");
        assert!(
            said.contains(&format!("{addr} is not a loopback address")),
            "{addr}: {said}"
        );
        assert!(!home.socket().exists() || home.ctl(&["status"]).status.code() != Some(0));
    }
    // The controls: a loopback address (an ephemeral port) starts; a Unix socket serves
    // /metrics, and its file is gone after a clean stop.
    let home = Home::with_config("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    home.start();
    assert!(home.ctl(&["metrics"]).status.success());
    let dir = tempfile::tempdir().expect("dir");
    let sock = dir.path().join("metrics.sock");
    let home = Home::with_config(&format!(
        "[metrics]\nlisten = \"unix:{}\"\n",
        sock.display()
    ));
    home.start();
    let mut s = UnixStream::connect(&sock).expect("connect to the metrics socket");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut all = String::new();
    s.read_to_string(&mut all).expect("answer");
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(
        all.ends_with("# EOF\n") && all.contains("loong_audit_commits_total"),
        "{all}"
    );
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    assert!(
        wait_until(Duration::from_secs(5), || !sock.exists()),
        "the metrics socket outlived loongd"
    );
}
