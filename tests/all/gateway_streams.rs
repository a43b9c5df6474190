//! A token's open streams through the gateway (`[gateway] max_streams_per_token`): past the
//! bound a typed 429, another token spared, room again once one closes; `gateway status`
//! counts the open stream, and `gateway stop` closes it and answers within its drain.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use crate::{
    gateway::{free_port, gateway_home, http, wait_for_gateway},
    kernel_calls::{issue, json},
    support::text,
};

/// Opens an MCP session under `bearer` and its standalone SSE stream; the stream's socket.
fn open_stream(port: u16, bearer: &str) -> TcpStream {
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let (status, headers, body) = http(
        port,
        "POST",
        "/mcp",
        &[
            ("Authorization", bearer),
            ("Accept", "application/json, text/event-stream"),
            ("Content-Type", "application/json"),
        ],
        init,
    );
    assert_eq!(status, 200, "{body}");
    let session = headers
        .iter()
        .find(|(n, _)| n == "mcp-session-id")
        .map(|(_, v)| v.clone())
        .expect("a session id");
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {bearer}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {session}\r\nMcp-Protocol-Version: 2025-06-18\r\n\r\n"
    )
    .expect("open the stream");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut first = [0u8; 12];
    s.read_exact(&mut first).expect("the stream's head");
    assert_eq!(
        &first,
        b"HTTP/1.1 200",
        "{}",
        String::from_utf8_lossy(&first)
    );
    s
}

fn models(port: u16, bearer: &str) -> (u16, String) {
    let (status, _, body) = http(port, "GET", "/v1/models", &[("Authorization", bearer)], "");
    (status, body)
}

/// With `max_streams_per_token = 1`, a token holding an open SSE stream is answered `429
/// rate_limited` naming the key, while another token is served (the control); `status`
/// counts the stream; `stop` closes it and answers well within its drain; a stream closed by
/// its client makes room again.
#[test]
fn gateway_bounds_a_tokens_open_streams_and_stop_closes_them() {
    let port = free_port();
    let home = gateway_home(port, "max_streams_per_token = 1\n");
    home.start();
    wait_for_gateway(&home, port);
    let (first, _) = issue(&home, &["tool.invoke:echo"]);
    let (other, _) = issue(&home, &["tool.invoke:echo"]);
    let (first, other) = (format!("Bearer {first}"), format!("Bearer {other}"));
    assert_eq!(models(port, &first).0, 200, "the control: no stream open");

    let stream = open_stream(port, &first);
    let (status, body) = models(port, &first);
    assert_eq!(status, 429, "{body}");
    assert_eq!(json(&body)["error"]["type"], "rate_limited", "{body}");
    assert!(body.contains("max_streams_per_token"), "{body}");
    assert_eq!(models(port, &other).0, 200, "another token is spared");

    // status counts the open stream (reported by the worker each second).
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let out = home.ctl(&["gateway", "status", "--json"]);
        let s = json(&text(&out.stdout));
        if s["open_streams"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            Instant::now() < until,
            "status never counted the stream: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Closed by its client: room again.
    drop(stream);
    let until = Instant::now() + Duration::from_secs(10);
    while models(port, &first).0 != 200 {
        assert!(Instant::now() < until, "the closed stream still counts");
        std::thread::sleep(Duration::from_millis(100));
    }

    // stop closes an open stream and answers within its drain.
    let mut stream = open_stream(port, &first);
    let started = Instant::now();
    let out = home.ctl(&["gateway", "stop", "--drain", "10s", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped within the drain"
    );
    let mut rest = Vec::new();
    let ended = stream.read_to_end(&mut rest);
    assert!(
        !matches!(&ended, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the stream outlived the stop: {ended:?}"
    );
}
