//! Test builds only: the confinement probes a test asks the worker to run from inside its
//! sandbox in place of a turn (`TurnInput::probes`), the hardening suite's methods seen from
//! the agent worker's own process: an `open` of a path, a direct TCP `connect`, and an HTTP
//! `CONNECT` through the sandbox's proxy. Each answers one line, `PROBE -> RESULT`, where the
//! result is `ok`, `errno N`, `status CODE` or `error: ...`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// How long one probe's connection may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes of a proxy's answer read for its status line.
const MAX_STATUS_BYTES: usize = 512;

fn errno(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("errno {n}"),
        None => format!("error: {e}"),
    }
}

/// The proxy's address from the sandbox's environment (`HTTP_PROXY`, as `http://HOST:PORT`).
fn proxy() -> Result<SocketAddr, String> {
    let url = std::env::var("HTTP_PROXY").map_err(|_| "error: no HTTP_PROXY".to_string())?;
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    authority
        .parse()
        .map_err(|e| format!("error: HTTP_PROXY {authority:?}: {e}"))
}

/// An HTTP request through the proxy, as the provider client makes one: `GET` in absolute
/// form (`get`), or a `CONNECT` tunnel (`tunnel`).
fn through_proxy(target: &str, tunnel: bool) -> String {
    let proxy = match proxy() {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut stream = match TcpStream::connect_timeout(&proxy, PROBE_TIMEOUT) {
        Ok(s) => s,
        Err(e) => return errno(&e),
    };
    let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
    let request = if tunnel {
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")
    } else {
        format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
    };
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return errno(&e);
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while head.len() < MAX_STATUS_BYTES && !head.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(e) => return errno(&e),
        }
    }
    let line = String::from_utf8_lossy(&head);
    match line.split_whitespace().nth(1) {
        Some(code) => format!("status {code}"),
        None => format!("error: no status line in {line:?}"),
    }
}

/// Runs one probe and says what it got.
pub fn run(probe: &str) -> String {
    let result = match probe.split_once(':') {
        Some(("open", path)) => match std::fs::File::open(path) {
            Ok(_) => "ok".to_string(),
            Err(e) => errno(&e),
        },
        Some(("connect", addr)) => match addr.parse::<SocketAddr>() {
            Ok(a) => match TcpStream::connect_timeout(&a, PROBE_TIMEOUT) {
                Ok(_) => "ok".to_string(),
                Err(e) => errno(&e),
            },
            Err(e) => format!("error: {addr:?}: {e}"),
        },
        Some(("get", target)) => through_proxy(target, false),
        Some(("tunnel", target)) => through_proxy(target, true),
        _ => "error: unknown probe".to_string(),
    };
    format!("{probe} -> {result}")
}
