//! The egress broker's limits end to end: connections and bytes per sandbox and per plugin
//! (across a worker's restarts), the broker's total, the rate of new connections, idle
//! connections, and a flood of refusals counted rather than recorded one by one.

use std::sync::atomic::Ordering;

use crate::{
    bridges::LocalHttp,
    egress::*,
    support::{text, Home},
    workers::{details, invoke},
};

#[test]
fn a_sandbox_s_connections_and_bytes_are_limited_by_its_egress_settings() {
    let granted = LocalHttp::text("loong-limit-page");
    let grants = vec![format!("127.0.0.1:{}", granted.port)];
    let two = serde_json::json!({
        "op": "two", "target": grants[0], "url": granted.url(),
    });
    // Control: the default limit serves a held tunnel and a second request together.
    let home = Home::new();
    let _peer = install_net_peer(&home, &grants);
    home.start();
    let got = call(&home, two.clone());
    assert!(
        got["first"]
            .as_str()
            .is_some_and(|f| f.starts_with("HTTP/1.1 200")),
        "{got}"
    );
    assert_eq!(got["second"]["status"], 200, "{got}");
    // One connection at once: the second is refused while the tunnel is held, and says why.
    let home = Home::with_config("[egress]\nmax_connections = 1\n");
    let _peer = install_net_peer(&home, &grants);
    home.start();
    let got = call(&home, two);
    assert!(
        got["first"]
            .as_str()
            .is_some_and(|f| f.starts_with("HTTP/1.1 200")),
        "{got}"
    );
    assert_eq!(got["second"]["status"], 503, "{got}");
    let body = got["second"]["body"].as_str().unwrap_or_default();
    assert!(
        body.contains("plugin net has 1 connections open, its limit"),
        "{body}"
    );
    // Bytes: a sandbox allowed 4 KiB gets the start of a 16 KiB page, its connection closed
    // at the limit (`byte_limit` in net.closed), and its next connection is refused.
    let big = LocalHttp::start(|_, _| ("200 OK".into(), "text/plain", "b".repeat(16 * 1024)));
    let home = Home::with_config("[egress]\nmax_bytes = 4096\n");
    let _peer = install_net_peer(&home, &[format!("127.0.0.1:{}", big.port)]);
    home.start();
    let get = || call(&home, serde_json::json!({"op": "get", "url": big.url()}));
    let first = get();
    assert!(
        first["body"].as_str().map_or(0, str::len) < 16 * 1024,
        "the whole page passed the limit"
    );
    let second = get();
    assert_eq!(second["status"], 403, "{second}");
    assert!(
        second["body"]
            .as_str()
            .is_some_and(|b| b.contains("has moved its limit of 4096 bytes")),
        "{second}"
    );
    assert_eq!(big.accepted(), 1);
    let closed = details(&home, "net.closed");
    assert!(
        closed.iter().any(|d| d["outcome"] == "byte_limit"),
        "{closed:?}"
    );
    // Never a byte past the limit, however the reads fell: the chunk that crosses it is cut.
    let moved: Vec<u64> = closed
        .iter()
        .map(|d| d["bytes_out"].as_u64().unwrap_or(0) + d["bytes_in"].as_u64().unwrap_or(0))
        .collect();
    assert!(moved.iter().sum::<u64>() <= 4096, "{closed:?}");
}

#[test]
fn a_flood_of_refused_connections_is_counted_not_recorded_one_by_one() {
    let granted = LocalHttp::text("loong-flood-control");
    let (other, other_seen) = counting_listener();
    // The connection rate out of the way: the flood is of refusals the rate would allow.
    let home = Home::with_config(
        "[egress]\nconnections_per_second = 100000\nconnections_burst = 100000\n",
    );
    home.start();
    let grant = format!("127.0.0.1:{}", granted.port);
    // 300 CONNECTs to a port that is not granted, each on its own connection, then one
    // request to the grant (the positive control: the sandbox is still served).
    let script = format!(
        r#"
import os, socket, urllib.request
port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
refused = 0
for i in range(300):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"CONNECT 127.0.0.1:{other} HTTP/1.1\r\n\r\n")
    if s.recv(64).startswith(b"HTTP/1.1 403"):
        refused += 1
    s.close()
print("refused", refused)
print(urllib.request.urlopen("{url}", timeout=10).read().decode())
"#,
        url = granted.url()
    );
    let out = home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--allow-net",
        &grant,
        "--",
        "/usr/bin/python3",
        "-c",
        &script,
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("refused 300"), "{stdout}");
    assert!(stdout.contains("loong-flood-control"), "{stdout}");
    assert_eq!(other_seen.load(Ordering::SeqCst), 0);
    // A bounded number of records one by one, the rest counted in one record.
    let denied = details(&home, "net.denied");
    let one_by_one = denied.iter().filter(|d| d["port"] == other).count();
    assert!(
        one_by_one <= 64,
        "{one_by_one} refusals recorded one by one"
    );
    let counted: u64 = wait_for_count(&home);
    assert_eq!(counted + one_by_one as u64, 300, "{denied:?}");
}

/// The refusals the broker counted instead of recording one by one (its `unrecorded` records).
fn wait_for_count(home: &Home) -> u64 {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n: u64 = details(home, "net.denied")
            .iter()
            .filter_map(|d| d["unrecorded"].as_u64())
            .sum();
        if n > 0 || std::time::Instant::now() > until {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn the_broker_s_connections_for_all_sandboxes_together_are_limited() {
    let granted = LocalHttp::text("loong-total-page");
    let grants = vec![format!("127.0.0.1:{}", granted.port)];
    let two = serde_json::json!({
        "op": "two", "target": grants[0], "url": granted.url(),
    });
    // Positive control: two connections at once are within a total of two.
    let home = Home::with_config("[egress]\nmax_total_connections = 2\n");
    let _peer = install_net_peer(&home, &grants);
    home.start();
    let got = call(&home, two.clone());
    assert_eq!(got["second"]["status"], 200, "{got}");
    // A total of one: the held tunnel takes it, the next connection (within the sandbox's own
    // limit) is refused and says why.
    let home = Home::with_config("[egress]\nmax_total_connections = 1\n");
    let _peer = install_net_peer(&home, &grants);
    home.start();
    let got = call(&home, two);
    assert!(
        got["first"]
            .as_str()
            .is_some_and(|f| f.starts_with("HTTP/1.1 200")),
        "{got}"
    );
    assert_eq!(got["second"]["status"], 503, "{got}");
    let body = got["second"]["body"].as_str().unwrap_or_default();
    assert!(
        body.contains("loongd's egress broker has 1 connections open for all sandboxes"),
        "{body}"
    );
}

/// A connection silent both ways for `[egress] idle_timeout_ms` is ended by the broker and
/// recorded closed `idle_timeout`; one that speaks within it is relayed (positive control).
#[test]
fn a_silent_connection_is_ended_after_the_idle_timeout() {
    let (port, _) = saw_server();
    let grant = format!("127.0.0.1:{port}");
    let home = Home::with_config("[egress]\nidle_timeout_ms = 500\n");
    home.start();
    // On the raw forward: one connection speaks after 0.1 s, another after 2 s.
    let script = format!(
        r#"
import socket, time
for wait in (0.1, 2.0):
    s = socket.create_connection(("127.0.0.1", {port}), timeout=10)
    time.sleep(wait)
    got = b""
    try:
        s.sendall(b"PING\r\n\r\n")
        while True:
            more = s.recv(4096)
            if not more:
                break
            got += more
    except OSError as e:
        got += repr(e).encode()
    print(wait, "SAW" if b"SAW:PING" in got else "NOTHING", flush=True)
"#
    );
    let (code, out) = run_python(&home, &grant, &script);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0.1 SAW"), "{out}");
    assert!(out.contains("2.0 NOTHING"), "{out}");
    let closed = details(&home, "net.closed");
    assert_eq!(
        closed
            .iter()
            .filter(|d| d["port"] == port && d["outcome"] == "idle_timeout")
            .count(),
        1,
        "{closed:?}"
    );
}

/// New connections above `[egress] connections_per_second` and its burst are refused: `429`
/// through the proxy with the reason, marked `Proxy-Status: loongd` as the broker's own (a
/// channel worker retries it on a short step, not the platform's 2 s), `net.denied` code
/// `rate_limited`; those within the burst are relayed (positive control: the destination's
/// answers are not marked), and the bucket refills with time.
#[test]
fn a_sandbox_s_new_connections_are_rate_limited() {
    let (port, seen) = saw_server();
    let grant = format!("127.0.0.1:{port}");
    let home = Home::with_config("[egress]\nconnections_per_second = 1\nconnections_burst = 3\n");
    home.start();
    let script = format!(
        r#"
import os, socket, time
proxy = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
def once():
    s = socket.create_connection(("127.0.0.1", proxy), timeout=10)
    s.sendall(b"GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n")
    got = b""
    while True:
        more = s.recv(4096)
        if not more:
            break
        got += more
    return got.decode(errors="replace")
first = [once() for _ in range(6)]
print("STATUS", " ".join(a.split(" ")[1] for a in first))
print("REASON", [a for a in first if " 429 " in a][:1])
print("MARKED", " ".join(str("\r\nproxy-status: loongd\r\n" in a.lower()) for a in first))
time.sleep(2.2)
print("LATER", once().split(" ")[1])
"#
    );
    let (code, out) = run_python(&home, &grant, &script);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("STATUS 200 200 200 429 429 429"), "{out}");
    assert!(
        out.contains("MARKED False False False True True True"),
        "{out}"
    );
    assert!(
        out.contains("faster than 1 per second (at most 3 at once)"),
        "{out}"
    );
    assert!(out.contains("LATER 200"), "{out}");
    assert!(seen.load(Ordering::SeqCst) > 0);
    let denied = details(&home, "net.denied");
    assert_eq!(
        denied
            .iter()
            .filter(|d| d["code"] == "rate_limited")
            .count(),
        3,
        "{denied:?}"
    );
}

/// A plugin's `sandbox.egress` limits tighten loongd's `[egress]` ones, never loosen them: a
/// plugin asking for one connection at once gets one (its second is refused 503 naming the
/// limit) while the same plugin asking for two gets both (the control); a plugin asking for
/// more bytes than loongd allows gets loongd's limit.
#[test]
fn a_plugin_s_egress_limits_only_tighten_loongd_s() {
    let granted = LocalHttp::text("loong-override-page");
    let grants = vec![format!("127.0.0.1:{}", granted.port)];
    let two = serde_json::json!({
        "op": "two", "target": grants[0], "url": granted.url(),
    });
    for (asked, second) in [(2, 200), (1, 503)] {
        let home = Home::new();
        let _peer = install_net_peer_with(
            &home,
            "net",
            &grants,
            &format!(r#", "egress": {{"max_connections": {asked}}}"#),
        );
        home.start();
        let got = call(&home, two.clone());
        assert!(
            got["first"]
                .as_str()
                .is_some_and(|f| f.starts_with("HTTP/1.1 200")),
            "{got}"
        );
        assert_eq!(got["second"]["status"], second, "asked {asked}: {got}");
        if second == 503 {
            let body = got["second"]["body"].as_str().unwrap_or_default();
            assert!(
                body.contains("plugin net has 1 connections open, its limit"),
                "{body}"
            );
        }
    }
    // Asking for more than loongd allows: loongd's 4 KiB applies.
    let big = LocalHttp::start(|_, _| ("200 OK".into(), "text/plain", "b".repeat(16 * 1024)));
    let home = Home::with_config("[egress]\nmax_bytes = 4096\n");
    let _peer = install_net_peer_with(
        &home,
        "net",
        &[format!("127.0.0.1:{}", big.port)],
        r#", "egress": {"max_bytes": 1000000000}"#,
    );
    home.start();
    let get = || call(&home, serde_json::json!({"op": "get", "url": big.url()}));
    let first = get();
    assert!(
        first["body"].as_str().map_or(0, str::len) < 16 * 1024,
        "the whole page passed loongd's limit: {first}"
    );
    let second = get();
    assert_eq!(second["status"], 403, "{second}");
    assert!(
        second["body"]
            .as_str()
            .is_some_and(|b| b.contains("has moved its limit of 4096 bytes")),
        "{second}"
    );
}

/// A plugin's byte budget outlives its worker: killed and restarted, the worker of a plugin
/// that spent `[egress] max_bytes` is refused (loongd keeps the budget per plugin for
/// `egress::BYTE_WINDOW`), while another plugin still has its own (the control).
#[test]
fn a_restarted_worker_gets_no_fresh_byte_budget() {
    let big = LocalHttp::start(|_, _| ("200 OK".into(), "text/plain", "b".repeat(16 * 1024)));
    let home = Home::with_config("[egress]\nmax_bytes = 4096\n");
    let grant = [format!("127.0.0.1:{}", big.port)];
    let _peer = install_net_peer(&home, &grant);
    let _other = install_net_peer_as(&home, "other", &grant);
    home.start();
    let get = |tool: &str| {
        let input = serde_json::json!({"op": "get", "url": big.url()}).to_string();
        let (code, out, err) = invoke(&home, &[tool, "--input", &input]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).expect("JSON")
    };
    // Bytes flowed until the limit cut the page short (urllib says how much it read).
    let reached = |v: &serde_json::Value| {
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("IncompleteRead(3") || e.contains("IncompleteRead(4"))
    };
    let first = get("net");
    assert!(reached(&first), "{first}");
    // The worker is killed; the next call starts another.
    let before: Vec<u64> = crate::workers::workers(&home)
        .iter()
        .filter(|w| w["kind"] == "stdio")
        .filter_map(|w| w["pid"].as_u64())
        .collect();
    assert!(!before.is_empty(), "no stdio worker");
    for pid in &before {
        crate::kernel_calls::kill9(i32::try_from(*pid).expect("pid"));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let again = get("net");
    assert_eq!(again["status"], 403, "{again}");
    assert!(
        again["body"]
            .as_str()
            .is_some_and(|b| b.contains("plugin net has moved its limit of 4096 bytes")),
        "{again}"
    );
    let after: Vec<u64> = crate::workers::workers(&home)
        .iter()
        .filter(|w| w["kind"] == "stdio")
        .filter_map(|w| w["pid"].as_u64())
        .collect();
    // A worker was started again after the kill (the refusal is its new sandbox's).
    assert!(
        after.iter().any(|p| !before.contains(p)),
        "{before:?} {after:?}"
    );
    // Control: another plugin's budget is its own.
    let other = get("other");
    assert!(reached(&other), "{other}");
}
