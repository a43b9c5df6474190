//! The proxy request head a sandbox's program sends: parsed strictly, so that what is decided
//! is exactly where the bytes go. `CONNECT host:port` (a tunnel, for TLS) or an absolute-form
//! `http://` request, whose head is rewritten to origin form for the destination.
//!
//! Refused outright, before any decision: a head above [`MAX_HEAD_BYTES`]; a line not ended
//! by CRLF (a bare CR or LF), a folded header or a NUL; userinfo (`a@b`) or a `%` in an
//! authority; an IPv6 address without brackets (`a:b.test:443` is no host); a host that is
//! neither a name nor a plain address (`127.1`, `0x7f.0.0.1`,
//! `2130706433` would each reach an address nobody named); an `https://` absolute form (use
//! CONNECT); both `Content-Length` and `Transfer-Encoding`, or two `Content-Length`s
//! (request smuggling). The absolute URI's authority is the destination: a `Host` header that
//! disagrees is replaced, `Proxy-*` headers are dropped, and `Connection: close` is sent, so
//! one client connection carries one decided request.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The largest request head read from a sandbox (request line and headers).
pub(crate) const MAX_HEAD_BYTES: usize = 8 * 1024;

/// A parsed proxy request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProxyRequest {
    /// `CONNECT host:port`: a tunnel.
    Connect { host: String, port: u16 },
    /// An absolute-form request, with the head to send to the destination (origin form).
    Forward {
        host: String,
        port: u16,
        head: Vec<u8>,
    },
}

impl ProxyRequest {
    /// The destination.
    pub(crate) fn authority(&self) -> (&str, u16) {
        match self {
            ProxyRequest::Connect { host, port } | ProxyRequest::Forward { host, port, .. } => {
                (host, *port)
            }
        }
    }
}

/// Why a head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("the request head is above {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("the request head is not text")]
    NotText,
    #[error("every line of the request head must end in CRLF (a bare CR or LF, a folded header or a NUL was sent)")]
    LineEnding,
    #[error("request line {0:?} is not `METHOD TARGET HTTP/1.x`")]
    RequestLine(String),
    #[error("authority {0:?}: {1}")]
    Authority(String, &'static str),
    #[error("target {0:?}: give an absolute http:// URL, or CONNECT host:port for https")]
    Target(String),
    #[error("header line {0:?} is not `Name: value`")]
    Header(String),
    #[error("the request has {0}; send one length")]
    Length(&'static str),
}

/// Where the head ends (just after its blank line) in `buf`, if it does.
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a whole head (up to and including its blank line).
pub(crate) fn parse(head: &[u8]) -> Result<ProxyRequest, HeadError> {
    if head.len() > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let text = std::str::from_utf8(head).map_err(|_| HeadError::NotText)?;
    let body = text.strip_suffix("\r\n\r\n").ok_or(HeadError::LineEnding)?;
    let mut lines = body.split("\r\n");
    if lines
        .clone()
        .any(|l| l.contains(['\r', '\n', '\0']) || l.starts_with([' ', '\t']))
    {
        return Err(HeadError::LineEnding);
    }
    let line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(HeadError::RequestLine(line.into()));
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") || method.is_empty() || !is_token(method) {
        return Err(HeadError::RequestLine(line.into()));
    }
    let mut headers = Vec::new();
    for l in lines {
        let (name, value) = l
            .split_once(':')
            .filter(|(n, _)| !n.is_empty() && is_token(n))
            .ok_or_else(|| HeadError::Header(l.into()))?;
        headers.push((name, value.trim_matches([' ', '\t'])));
    }
    if method == "CONNECT" {
        let (host, port) = authority(target, None)?;
        return Ok(ProxyRequest::Connect { host, port });
    }
    let lower = target.to_ascii_lowercase();
    let rest = match lower.strip_prefix("http://") {
        Some(_) => &target["http://".len()..],
        None => return Err(HeadError::Target(target.into())),
    };
    if rest.contains('#') {
        return Err(HeadError::Target(target.into()));
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (auth, path) = rest.split_at(split);
    let (host, port) = authority(auth, Some(80))?;
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    let is = |n: &str, want: &str| n.eq_ignore_ascii_case(want);
    let lengths = headers
        .iter()
        .filter(|(n, _)| is(n, "content-length"))
        .count();
    let chunked = headers.iter().any(|(n, _)| is(n, "transfer-encoding"));
    if lengths > 1 {
        return Err(HeadError::Length("two Content-Length headers"));
    }
    if lengths == 1 && chunked {
        return Err(HeadError::Length(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    let shown = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let host_header = if port == 80 {
        shown
    } else {
        format!("{shown}:{port}")
    };
    let mut out = format!("{method} {path} {version}\r\nHost: {host_header}\r\n");
    for (name, value) in headers {
        let hop = ["host", "connection", "keep-alive", "te", "upgrade"]
            .iter()
            .any(|h| is(name, h))
            || name.len() >= 6 && is(&name[..6], "proxy-");
        if !hop {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    Ok(ProxyRequest::Forward {
        host,
        port,
        head: out.into_bytes(),
    })
}

/// An HTTP token (a method or a header name).
fn is_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `host:port` (`[v6]:port`); `default` is the port when none is given (none for CONNECT).
/// The host comes back lower-case, without brackets or one trailing dot.
fn authority(a: &str, default: Option<u16>) -> Result<(String, u16), HeadError> {
    let bad = |why| Err(HeadError::Authority(a.into(), why));
    if a.contains('@') {
        return bad("userinfo is not accepted in a proxy request");
    }
    if a.contains('%') {
        return bad("percent-encoding is not accepted in a host");
    }
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let Some((h, after)) = rest.split_once(']') else {
            return bad("an IPv6 address needs its closing bracket");
        };
        let Ok(v6) = h.parse::<Ipv6Addr>() else {
            return bad("not an IPv6 address");
        };
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return bad("text after the IPv6 address"),
            },
        };
        // The canonical text (`0:0::1` is `::1`), as a grant names it.
        (v6.to_string(), port)
    } else {
        if a.bytes().filter(|b| *b == b':').count() > 1 {
            return bad("an IPv6 address needs brackets ([v6]:port)");
        }
        match a.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (a.to_ascii_lowercase(), None),
        }
    };
    let port = match (port, default) {
        (Some(p), _) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return bad("the port is not a number from 1 to 65535"),
        },
        (None, Some(d)) => d,
        (None, None) => return bad("CONNECT needs host:port"),
    };
    if host.contains(':') {
        return Ok((host, port));
    }
    let host = host.strip_suffix('.').unwrap_or(&host).to_string();
    if host.is_empty() || host.len() > 253 {
        return bad("no host name");
    }
    let labels_ok = host.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return bad("not a host name");
    }
    // A numeric last label is only ever a dotted-quad address: the resolver reads `127.1`,
    // `0x7f.1` or `2130706433` as an address nobody named.
    let last = host.rsplit('.').next().unwrap_or_default();
    let numeric = last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x");
    if numeric && host.parse::<Ipv4Addr>().is_err() {
        return bad("a numeric host must be a dotted-quad IPv4 address");
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        // `127.000.0.1` parses nowhere here, but keep the canonical text.
        return Ok((ip.to_string(), port));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(head: &str) -> (String, u16, String) {
        match parse(head.as_bytes()) {
            Ok(ProxyRequest::Forward { host, port, head }) => {
                (host, port, String::from_utf8(head).expect("text"))
            }
            other => panic!("{head:?}: {other:?}"),
        }
    }

    #[test]
    fn connect_and_absolute_form_parse() {
        assert_eq!(
            parse(b"CONNECT api.example.test:443 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(ProxyRequest::Connect {
                host: "api.example.test".into(),
                port: 443
            })
        );
        assert_eq!(
            parse(b"CONNECT [::1]:80 HTTP/1.1\r\n\r\n"),
            Ok(ProxyRequest::Connect {
                host: "::1".into(),
                port: 80
            })
        );
        assert_eq!(
            parse(b"CONNECT [0:0::FFFF:127.0.0.1]:80 HTTP/1.1\r\n\r\n"),
            Ok(ProxyRequest::Connect {
                host: "::ffff:127.0.0.1".into(),
                port: 80
            })
        );
        let (host, port, head) = forward(
            "GET http://Example.TEST./a?b=1 HTTP/1.1\r\nHost: example.test\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!((host.as_str(), port), ("example.test", 80));
        assert_eq!(
            head,
            "GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let (_, port, head) = forward("GET http://127.0.0.1:8080 HTTP/1.0\r\n\r\n");
        assert_eq!(port, 8080);
        assert!(
            head.starts_with("GET / HTTP/1.0\r\nHost: 127.0.0.1:8080\r\n"),
            "{head}"
        );
    }

    #[test]
    fn a_host_header_that_disagrees_is_replaced_by_the_uri_s_authority() {
        let (host, _, head) =
            forward("GET http://a.test/ HTTP/1.1\r\nHost: evil.test\r\nhost: evil2.test\r\n\r\n");
        assert_eq!(host, "a.test");
        assert!(!head.contains("evil"), "{head}");
        assert!(head.contains("Host: a.test\r\n"), "{head}");
    }

    #[test]
    fn hostile_heads_are_refused() {
        let big = format!(
            "GET http://a.test/ HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(parse(big.as_bytes()), Err(HeadError::TooLarge));
        for (head, want) in [
            ("GET http://a.test/ HTTP/1.1\n\n", "CRLF"),
            ("GET http://a.test/ HTTP/1.1\r\nX: 1\nY: 2\r\n\r\n", "CRLF"),
            ("GET http://a.test/ HTTP/1.1\r\nX: 1\r\n folded\r\n\r\n", "CRLF"),
            ("GET http://a.test/ HTTP/1.1\r\nX: a\0b\r\n\r\n", "CRLF"),
            ("GET http://a.test/ HTTP/1.1", "CRLF"),
            ("GET  http://a.test/ HTTP/1.1\r\n\r\n", "request line"),
            ("GET http://a.test/ HTTP/2\r\n\r\n", "request line"),
            ("GET /relative HTTP/1.1\r\nHost: a.test\r\n\r\n", "absolute http://"),
            ("GET https://a.test/ HTTP/1.1\r\n\r\n", "absolute http://"),
            ("GET http://a@b.test/ HTTP/1.1\r\n\r\n", "userinfo"),
            ("CONNECT user:pw@b.test:443 HTTP/1.1\r\n\r\n", "userinfo"),
            ("GET http://a%2etest/ HTTP/1.1\r\n\r\n", "percent"),
            ("CONNECT a.test HTTP/1.1\r\n\r\n", "CONNECT needs"),
            ("CONNECT a.test:0 HTTP/1.1\r\n\r\n", "port"),
            ("CONNECT a.test:+443 HTTP/1.1\r\n\r\n", "port"),
            ("CONNECT a.test:65536 HTTP/1.1\r\n\r\n", "port"),
            ("CONNECT [::1:443 HTTP/1.1\r\n\r\n", "closing bracket"),
            ("CONNECT [zz::1]:443 HTTP/1.1\r\n\r\n", "IPv6"),
            ("CONNECT 127.1:80 HTTP/1.1\r\n\r\n", "dotted-quad"),
            ("CONNECT 2130706433:80 HTTP/1.1\r\n\r\n", "dotted-quad"),
            ("CONNECT 0x7f.0.0.1:80 HTTP/1.1\r\n\r\n", "dotted-quad"),
            ("CONNECT a..test:80 HTTP/1.1\r\n\r\n", "not a host name"),
            ("CONNECT a:b.example.test:443 HTTP/1.1\r\n\r\n", "brackets"),
            ("CONNECT ::1:80 HTTP/1.1\r\n\r\n", "brackets"),
            ("CONNECT ::ffff:127.0.0.1:80 HTTP/1.1\r\n\r\n", "brackets"),
            ("GET http://a.test:80:80/ HTTP/1.1\r\n\r\n", "brackets"),
            ("GET http://::1/ HTTP/1.1\r\n\r\n", "brackets"),
            ("CONNECT a/b:80 HTTP/1.1\r\n\r\n", "not a host name"),
            ("GET http://a.test/ HTTP/1.1\r\nBad Name: x\r\n\r\n", "Name: value"),
            (
                "POST http://a.test/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "both",
            ),
            (
                "POST http://a.test/ HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\n",
                "two Content-Length",
            ),
        ] {
            let err = parse(head.as_bytes()).expect_err(head).to_string();
            assert!(err.contains(want), "{head:?}: {err}");
        }
        assert_eq!(parse(b"\xff\xfe\r\n\r\n"), Err(HeadError::NotText));
    }

    #[test]
    fn the_end_of_a_head_is_found_only_at_a_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), None);
    }
}
