//! One `http_json` exchange over a socket loongd connected: POST the input as JSON, read a
//! bounded HTTP/1.1 answer, and check it; over TLS ([`tls`]) when the endpoint is `https://`.
//!
//! The worker never connects anywhere itself (its sandbox has no network); loongd connects to
//! the endpoint's pinned address and passes the socket. A redirect is refused rather than
//! followed, a status other than 2xx is the tool's error, and the body must be JSON within
//! `max_output_bytes` and, when a contract is declared, an object with the required keys (and
//! no others when the contract says so).

use std::{
    io::{self, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use loong_ipc::{FailureKind, HttpSpec, PluginFailure};

pub mod tls;

pub use tls::Trust;

/// Largest response head (status line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most response headers.
pub const MAX_HEADERS: usize = 64;
/// Bytes of an error body quoted in a failure message.
pub const QUOTE_BYTES: usize = 512;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("no complete answer within {0} ms")]
    Timeout(u128),
    #[error("the connection failed: {0}")]
    Io(io::Error),
    #[error("the answer is not HTTP/1.x: {0}")]
    NotHttp(String),
    #[error("the endpoint redirected ({status}) to {location:?}; a connector reaches only its declared endpoint")]
    Redirect { status: u16, location: String },
    #[error("the endpoint answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the answer is over the {0}-byte limit")]
    TooLarge(u64),
    #[error("the answer is not JSON: {0}")]
    NotJson(String),
    #[error("the answer breaks the response contract: {0}")]
    Contract(String),
    #[error("TLS with {host} failed: {reason}")]
    Tls { host: String, reason: String },
}

impl HttpError {
    /// The failure class loongd records.
    pub fn kind(&self) -> FailureKind {
        match self {
            HttpError::Timeout(_) => FailureKind::Timeout,
            HttpError::Io(_) => FailureKind::ConnectFailed,
            HttpError::NotHttp(_) | HttpError::Contract(_) => FailureKind::ContractViolation,
            HttpError::Redirect { .. } => FailureKind::RedirectRefused,
            HttpError::Status { .. } => FailureKind::ToolError,
            HttpError::TooLarge(_) => FailureKind::OutputTooLarge,
            HttpError::NotJson(_) => FailureKind::OutputNotJson,
            HttpError::Tls { .. } => FailureKind::TlsFailed,
        }
    }

    /// As a plugin failure naming the plugin.
    pub fn failure(&self, plugin_id: &str) -> PluginFailure {
        PluginFailure::new(self.kind(), format!("plugin {plugin_id}: {self}"))
    }
}

/// The connection an exchange runs on: the passed socket itself, or a TLS session over it.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    /// Only while TLS takes the socket over.
    Closed,
}

impl Conn {
    fn socket(&self) -> io::Result<&TcpStream> {
        match self {
            Conn::Plain(s) => Ok(s),
            Conn::Tls(t) => Ok(t.get_ref()),
            Conn::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(t) => t.read(buf),
            Conn::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(t) => t.write(buf),
            Conn::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

/// A connection with one deadline for the whole exchange.
struct Timed {
    stream: Conn,
    /// The name TLS verifies (for naming it in a failure).
    host: String,
    deadline: Instant,
    started: Instant,
}

impl Timed {
    fn left(&self) -> Result<Duration, HttpError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout(self.started.elapsed().as_millis()));
        }
        Ok(left)
    }

    fn map(&self, e: io::Error) -> HttpError {
        if let Some(reason) = tls::reason(&e) {
            return HttpError::Tls {
                host: self.host.clone(),
                reason,
            };
        }
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                HttpError::Timeout(self.started.elapsed().as_millis())
            }
            _ => HttpError::Io(e),
        }
    }

    fn write_all(&mut self, mut buf: &[u8]) -> Result<(), HttpError> {
        while !buf.is_empty() {
            let left = self.left()?;
            self.stream
                .socket()
                .and_then(|s| s.set_write_timeout(Some(left)))
                .map_err(HttpError::Io)?;
            match self.stream.write(buf) {
                Ok(0) => return Err(HttpError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.map(e)),
            }
        }
        Ok(())
    }

    /// Appends what arrives (at most `room` bytes) to `buf`; 0 at the end of the stream.
    fn read_some(&mut self, buf: &mut Vec<u8>, room: usize) -> Result<usize, HttpError> {
        let left = self.left()?;
        self.stream
            .socket()
            .and_then(|s| s.set_read_timeout(Some(left)))
            .map_err(HttpError::Io)?;
        let mut chunk = [0u8; 16 * 1024];
        let want = room.clamp(1, chunk.len());
        loop {
            match self.stream.read(&mut chunk[..want]) {
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.map(e)),
            }
        }
    }
}

/// Where one exchange goes: the `Host` header, the request target, and the TLS to run (the
/// name to verify, and the roots), if any.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub tls: Option<(&'a str, &'a Trust)>,
}

/// POSTs `body` (JSON) as `spec` says over `stream`, with the extra `headers`, and returns
/// the checked answer (JSON).
pub fn post(
    stream: TcpStream,
    spec: &HttpSpec,
    target: Target<'_>,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Vec<u8>, HttpError> {
    let (status, body) = exchange(stream, spec, "POST", target, headers, Some(body))?;
    if !(200..300).contains(&status.code) {
        return Err(match status.code {
            300..=399 => HttpError::Redirect {
                status: status.code,
                location: status.location,
            },
            code => HttpError::Status {
                status: code,
                body: quote(&body),
            },
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| HttpError::NotJson(e.to_string()))?;
    check_contract(&value, spec)?;
    serde_json::to_vec(&value).map_err(|e| HttpError::NotJson(e.to_string()))
}

/// `web.fetch`: GETs `path` from `host` over `stream` and describes the answer as JSON
/// (`{status, content_type, location, bytes, body}`, the body as text). A redirect is
/// answered, not followed: fetching its target is another call, decided again.
pub fn get(stream: TcpStream, spec: &HttpSpec, target: Target<'_>) -> Result<Vec<u8>, HttpError> {
    let (status, body) = exchange(stream, spec, "GET", target, &[], None)?;
    let answer = serde_json::json!({
        "status": status.code,
        "content_type": status.content_type,
        "location": (!status.location.is_empty()).then_some(&status.location),
        "bytes": body.len(),
        "body": String::from_utf8_lossy(&body),
    });
    serde_json::to_vec(&answer).map_err(|e| HttpError::NotJson(e.to_string()))
}

/// One request and its bounded answer.
fn exchange(
    stream: TcpStream,
    spec: &HttpSpec,
    method: &str,
    target: Target<'_>,
    headers: &[(String, String)],
    body: Option<&[u8]>,
) -> Result<(Status, Vec<u8>), HttpError> {
    // The headers were checked at install (names are tokens, values hold no CR or LF);
    // checked again here, so that no value can end the head early whatever loongd sent.
    let mut extra = String::new();
    for (name, value) in headers {
        if name.is_empty()
            || name.bytes().any(|b| !b.is_ascii_graphic() || b == b':')
            || value.chars().any(|c| c.is_control() && c != '\t')
        {
            return Err(HttpError::NotHttp(format!(
                "the request header {name:?} is not fit to send"
            )));
        }
        extra.push_str(&format!("{name}: {value}\r\n"));
    }
    let started = Instant::now();
    let Target { host, path, tls } = target;
    let mut io = Timed {
        stream: Conn::Plain(stream),
        host: tls.map_or(host, |(name, _)| name).to_string(),
        deadline: started + Duration::from_millis(spec.timeout_ms),
        started,
    };
    if let Some((name, trust)) = tls {
        tls::handshake(&mut io, name, trust)?;
    }

    let content = match body {
        Some(b) => format!(
            "Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ),
        None => String::new(),
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{content}{extra}User-Agent: loong-worker-http/{}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION"),
    );
    io.write_all(head.as_bytes())?;
    if let Some(b) = body {
        io.write_all(b)?;
    }
    let max = spec.max_output_bytes;
    let (status, framing, mut buf) = read_head(&mut io)?;
    let body = match framing {
        Framing::Length(n) if n > max => return Err(HttpError::TooLarge(max)),
        Framing::Length(n) => {
            let n = usize::try_from(n).map_err(|_| HttpError::TooLarge(max))?;
            while buf.len() < n {
                let room = n - buf.len();
                if io.read_some(&mut buf, room)? == 0 {
                    return Err(HttpError::NotHttp(format!(
                        "the body ended after {} of {n} bytes",
                        buf.len()
                    )));
                }
            }
            buf.truncate(n);
            buf
        }
        Framing::Chunked => read_chunked(&mut io, buf, max)?,
        Framing::UntilClose => {
            while io.read_some(&mut buf, usize::MAX)? > 0 {
                if buf.len() as u64 > max {
                    return Err(HttpError::TooLarge(max));
                }
            }
            buf
        }
    };
    if body.len() as u64 > max {
        return Err(HttpError::TooLarge(max));
    }
    Ok((status, body))
}

/// The answer's status, what it is, and where it redirects, if it does.
struct Status {
    code: u16,
    content_type: String,
    location: String,
}

enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// Reads up to the end of the head (skipping `1xx` heads); returns the body bytes already read.
fn read_head(io: &mut Timed) -> Result<(Status, Framing, Vec<u8>), HttpError> {
    let mut buf = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let code = resp.code.unwrap_or(0);
                if (100..200).contains(&code) {
                    buf.drain(..len);
                    continue;
                }
                let header = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
                };
                let framing = if header("transfer-encoding")
                    .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
                {
                    Framing::Chunked
                } else if let Some(n) = header("content-length") {
                    Framing::Length(n.parse().map_err(|_| {
                        HttpError::NotHttp(format!("Content-Length {n:?} is not a number"))
                    })?)
                } else {
                    Framing::UntilClose
                };
                let status = Status {
                    code,
                    content_type: header("content-type").unwrap_or_default(),
                    location: header("location").unwrap_or_default(),
                };
                buf.drain(..len);
                return Ok((status, framing, buf));
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() >= MAX_HEAD_BYTES {
                    return Err(HttpError::NotHttp(format!(
                        "the head is over {MAX_HEAD_BYTES} bytes"
                    )));
                }
                let room = MAX_HEAD_BYTES - buf.len();
                if io.read_some(&mut buf, room)? == 0 {
                    return Err(HttpError::NotHttp(
                        "the connection closed before a complete head".into(),
                    ));
                }
            }
            Err(e) => return Err(HttpError::NotHttp(e.to_string())),
        }
    }
}

/// Decodes a chunked body of at most `max` bytes; `buf` holds what was read after the head.
fn read_chunked(io: &mut Timed, mut buf: Vec<u8>, max: u64) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let (skip, size) = loop {
            match httparse::parse_chunk_size(&buf) {
                Ok(httparse::Status::Complete(v)) => break v,
                Ok(httparse::Status::Partial) => {
                    if buf.len() > 1024 || io.read_some(&mut buf, 1024)? == 0 {
                        return Err(HttpError::NotHttp("a chunk size line is broken".into()));
                    }
                }
                Err(_) => return Err(HttpError::NotHttp("a chunk size does not parse".into())),
            }
        };
        buf.drain(..skip);
        if size == 0 {
            return Ok(body);
        }
        if body.len() as u64 + size > max {
            return Err(HttpError::TooLarge(max));
        }
        // The chunk and its CRLF.
        let need = usize::try_from(size).map_err(|_| HttpError::TooLarge(max))? + 2;
        while buf.len() < need {
            let room = need - buf.len();
            if io.read_some(&mut buf, room)? == 0 {
                return Err(HttpError::NotHttp("the body ended inside a chunk".into()));
            }
        }
        if &buf[need - 2..need] != b"\r\n" {
            return Err(HttpError::NotHttp("a chunk does not end with CRLF".into()));
        }
        body.extend_from_slice(&buf[..need - 2]);
        buf.drain(..need);
    }
}

fn check_contract(value: &serde_json::Value, spec: &HttpSpec) -> Result<(), HttpError> {
    let Some(required) = &spec.required_keys else {
        return Ok(());
    };
    let obj = value
        .as_object()
        .ok_or_else(|| HttpError::Contract("the answer is not a JSON object".into()))?;
    if let Some(missing) = required.iter().find(|k| !obj.contains_key(k.as_str())) {
        return Err(HttpError::Contract(format!(
            "the key {missing:?} is missing"
        )));
    }
    if !spec.allow_other_keys {
        if let Some(extra) = obj.keys().find(|k| !required.contains(k)) {
            return Err(HttpError::Contract(format!(
                "the key {extra:?} is not in the contract"
            )));
        }
    }
    Ok(())
}

fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(QUOTE_BYTES)]);
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn spec() -> HttpSpec {
        HttpSpec {
            plugin_id: "hook".into(),
            host: "127.0.0.1".into(),
            path: "/hook".into(),
            timeout_ms: 2_000,
            max_output_bytes: 1024,
            required_keys: None,
            allow_other_keys: true,
            fetch: false,
            tls: false,
            server_name: String::new(),
            trust: Vec::new(),
        }
    }

    /// A real HTTP server for one connection: reads the request head and body, checks them,
    /// and writes `answer` raw.
    fn exchange(answer: &'static [u8], spec: &HttpSpec) -> Result<Vec<u8>, HttpError> {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(br#"{"q":1}"#) {
                if conn.read(&mut byte).expect("read") == 0 {
                    break;
                }
                req.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&req).into_owned();
            let _ = conn.write_all(answer);
            text
        });
        let stream = TcpStream::connect(addr).expect("connect");
        let target = Target {
            host: &spec.host,
            path: &spec.path,
            tls: None,
        };
        let got = post(stream, spec, target, &[], br#"{"q":1}"#);
        let req = server.join().expect("server");
        assert!(req.starts_with("POST /hook HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Content-Length: 7\r\n"), "{req}");
        assert!(req.contains("Host: 127.0.0.1\r\n"), "{req}");
        got
    }

    #[test]
    fn answers_are_read_by_length_by_chunks_and_to_the_close() {
        let s = spec();
        let by_length = exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"a\": 1}",
            &s,
        );
        assert_eq!(by_length.expect("length"), br#"{"a":1}"#);
        let chunked = exchange(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n5\r\n\": 2}\r\n0\r\n\r\n",
            &s,
        );
        assert_eq!(chunked.expect("chunked"), br#"{"a":2}"#);
        let to_close = exchange(b"HTTP/1.0 200 OK\r\n\r\n[1, 2]", &s);
        assert_eq!(to_close.expect("to close"), b"[1,2]");
        let after_continue = exchange(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}",
            &s,
        );
        assert_eq!(after_continue.expect("after 100"), b"{}");
    }

    #[test]
    fn bad_answers_get_their_class() {
        let s = spec();
        let cases: [(&'static [u8], FailureKind); 7] = [
            (
                b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n",
                FailureKind::RedirectRefused,
            ),
            (
                b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nboom",
                FailureKind::ToolError,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n",
                FailureKind::OutputTooLarge,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
                FailureKind::OutputNotJson,
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n", FailureKind::ContractViolation),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffff\r\n",
                FailureKind::OutputTooLarge,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
                FailureKind::ContractViolation,
            ),
        ];
        for (answer, kind) in cases {
            let err = exchange(answer, &s).expect_err("must fail");
            assert_eq!(err.kind(), kind, "{err}");
        }
        let redirect = exchange(
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://elsewhere/\r\n\r\n",
            &s,
        )
        .expect_err("redirect");
        assert!(
            redirect.to_string().contains("http://elsewhere/"),
            "{redirect}"
        );
    }

    #[test]
    fn a_declared_contract_is_enforced() {
        let mut s = spec();
        s.required_keys = Some(vec!["ok".into()]);
        let answer: &'static [u8] =
            b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{\"ok\": true, \"x\": 1}";
        exchange(answer, &s).expect("other keys allowed");
        s.allow_other_keys = false;
        let err = exchange(answer, &s).expect_err("strict");
        assert!(err.to_string().contains("\"x\""), "{err}");
        let err = exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"no\": 1}",
            &s,
        )
        .expect_err("missing");
        assert_eq!(err.kind(), FailureKind::ContractViolation);
    }

    /// Sends one POST with `headers` to a server that records what arrives until the close.
    fn sent_with(headers: &[(String, String)]) -> (Result<Vec<u8>, HttpError>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_millis(500)))
                .expect("timeout");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if got.ends_with(b"{}") {
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
                    break;
                }
            }
            String::from_utf8_lossy(&got).into_owned()
        });
        let s = spec();
        let target = Target {
            host: &s.host,
            path: &s.path,
            tls: None,
        };
        let stream = TcpStream::connect(addr).expect("connect");
        let answer = post(stream, &s, target, headers, b"{}");
        (answer, server.join().expect("server"))
    }

    #[test]
    fn headers_are_sent_and_one_that_would_split_the_head_is_refused_before_any_byte() {
        let ok = vec![("Authorization".to_string(), "Bearer t0k".to_string())];
        let (answer, seen) = sent_with(&ok);
        answer.expect("sent");
        assert!(seen.contains("\r\nAuthorization: Bearer t0k\r\n"), "{seen}");
        for (name, value) in [
            ("X-A", "a\r\nHost: evil"),
            ("X A", "v"),
            ("X-A:", "v"),
            ("", "v"),
        ] {
            let h = vec![(name.to_string(), value.to_string())];
            let (answer, seen) = sent_with(&h);
            let err = answer.expect_err(name);
            assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
            assert!(seen.is_empty(), "{name:?}: sent {seen:?}");
        }
    }

    #[test]
    fn a_silent_endpoint_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hold = std::thread::spawn(move || {
            let conn = listener.accept().expect("accept");
            std::thread::sleep(Duration::from_millis(800));
            drop(conn);
        });
        let mut s = spec();
        s.timeout_ms = 200;
        let target = Target {
            host: &s.host,
            path: &s.path,
            tls: None,
        };
        let err = post(
            TcpStream::connect(addr).expect("connect"),
            &s,
            target,
            &[],
            b"{}",
        )
        .expect_err("slow");
        assert_eq!(err.kind(), FailureKind::Timeout, "{err}");
        hold.join().expect("server");
    }

    #[test]
    fn a_tls_handshake_that_stalls_or_drips_ends_at_the_deadline() {
        // A server that accepts and says nothing, and one that drips a TLS record header a
        // byte at a time: the handshake ends at the exchange's deadline either way; one
        // that answers in plain text is a typed TLS failure (the control for the kind).
        let trust = Trust::new(&[]).expect("trust");
        for (what, reply) in [
            ("silent", None),
            ("drip", Some(&b"\x16\x03\x03\x40\x00"[..])),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let hold = std::thread::spawn(move || {
                let (mut conn, _) = listener.accept().expect("accept");
                for b in reply.unwrap_or_default() {
                    std::thread::sleep(Duration::from_millis(60));
                    let _ = conn.write_all(&[*b]);
                }
                std::thread::sleep(Duration::from_millis(900));
            });
            let mut s = spec();
            s.timeout_ms = 300;
            let target = Target {
                host: &s.host,
                path: &s.path,
                tls: Some(("a.example", &trust)),
            };
            let started = Instant::now();
            let err = post(
                TcpStream::connect(addr).expect("connect"),
                &s,
                target,
                &[],
                b"{}",
            )
            .expect_err(what);
            assert_eq!(err.kind(), FailureKind::Timeout, "{what}: {err}");
            assert!(started.elapsed() < Duration::from_millis(800), "{what}");
            hold.join().expect("server");
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hold = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            std::thread::sleep(Duration::from_millis(200));
        });
        let s = spec();
        let target = Target {
            host: &s.host,
            path: &s.path,
            tls: Some(("a.example", &trust)),
        };
        let err = post(
            TcpStream::connect(addr).expect("connect"),
            &s,
            target,
            &[],
            b"{}",
        )
        .expect_err("plain");
        assert_eq!(err.kind(), FailureKind::TlsFailed, "{err}");
        assert!(err.to_string().contains("a.example"), "{err}");
        hold.join().expect("server");
    }
}
