//! The server name a TLS ClientHello asks for, read from the first bytes a sandbox's program
//! sends on a tunnel, without terminating TLS: only the record and handshake framing and the
//! `server_name` extension are parsed, bounded ([`MAX_HELLO_BYTES`]), as hostile input.
//!
//! A hello that is not a well-formed ClientHello, that repeats an extension, that names more
//! than one host or a host that is not a plain DNS name, or that carries
//! `encrypted_client_hello` (whose inner hello may name any host) is refused: the broker
//! cannot say which host it is for.

/// The most bytes of records read to find a whole ClientHello (a post-quantum key share
/// makes one about 1.3 KiB; the record layer allows 16 KiB per record).
pub(crate) const MAX_HELLO_BYTES: usize = 16 * 1024 + 5;

/// The record type of a handshake message.
pub(crate) const HANDSHAKE_RECORD: u8 = 0x16;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: u16 = 0;
const ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
const HOST_NAME: u8 = 0;

/// What the bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hello {
    /// Not whole yet: read more.
    Incomplete,
    /// A whole ClientHello, naming this host (lower-case, no trailing dot), or none.
    Whole(Option<String>),
}

/// Why the first bytes are not a ClientHello the broker can check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HelloError {
    #[error("the tunnel's first bytes are not a TLS handshake; a CONNECT tunnel carries TLS only (grant HOST:PORT for a raw connection)")]
    NotTls,
    #[error("the TLS ClientHello is above {MAX_HELLO_BYTES} bytes")]
    TooLarge,
    #[error("the TLS ClientHello is malformed ({0})")]
    Malformed(&'static str),
    #[error(
        "the TLS ClientHello carries encrypted_client_hello, whose inner hello may name any host"
    )]
    Encrypted,
}

/// Reads the ClientHello at the start of `buf` (TLS records as sent).
pub(crate) fn parse(buf: &[u8]) -> Result<Hello, HelloError> {
    if buf.first().is_some_and(|b| *b != HANDSHAKE_RECORD) {
        return Err(HelloError::NotTls);
    }
    // The handshake message, gathered from the records it spans.
    let mut msg = Vec::new();
    let mut at = 0;
    loop {
        if at > MAX_HELLO_BYTES {
            return Err(HelloError::TooLarge);
        }
        let Some(header) = buf.get(at..at + 5) else {
            return Ok(Hello::Incomplete);
        };
        if header[0] != HANDSHAKE_RECORD {
            return Err(HelloError::Malformed(
                "a record before the hello's end is not a handshake record",
            ));
        }
        if header[1] != 3 {
            return Err(HelloError::Malformed("record version"));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16 * 1024 {
            return Err(HelloError::Malformed("record length"));
        }
        let Some(body) = buf.get(at + 5..at + 5 + len) else {
            return if at + 5 + len > MAX_HELLO_BYTES {
                Err(HelloError::TooLarge)
            } else {
                Ok(Hello::Incomplete)
            };
        };
        msg.extend_from_slice(body);
        at += 5 + len;
        if msg[0] != CLIENT_HELLO {
            return Err(HelloError::Malformed(
                "the first handshake message is not a ClientHello",
            ));
        }
        if let Some(n) = msg_len(&msg) {
            if n > MAX_HELLO_BYTES {
                return Err(HelloError::TooLarge);
            }
            if msg.len() >= n {
                if msg.len() > n {
                    return Err(HelloError::Malformed("bytes after the hello in its record"));
                }
                return client_hello(&msg[4..]).map(Hello::Whole);
            }
        }
    }
}

/// The whole length (header included) of the handshake message at the start of `msg`, once
/// its header is there.
fn msg_len(msg: &[u8]) -> Option<usize> {
    let h = msg.get(..4)?;
    Some(4 + (usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3])))
}

/// A cursor over a ClientHello's body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if self.0.len() < n {
            return Err(HelloError::Malformed(what));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a one- or two-byte length.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}

fn client_hello(msg: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader(msg);
    r.take(2, "legacy version")?;
    r.take(32, "random")?;
    if r.vec8("session id")?.len() > 32 {
        return Err(HelloError::Malformed("session id"));
    }
    let suites = r.vec16("cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher suites"));
    }
    if r.vec8("compression methods")?.is_empty() {
        return Err(HelloError::Malformed("compression methods"));
    }
    if r.0.is_empty() {
        return Ok(None);
    }
    let mut exts = Reader(r.vec16("extensions")?);
    if !r.0.is_empty() {
        return Err(HelloError::Malformed("bytes after the extensions"));
    }
    let mut seen = std::collections::HashSet::new();
    let mut name = None;
    while !exts.0.is_empty() {
        let kind = exts.u16("extension type")?;
        let data = exts.vec16("extension")?;
        if !seen.insert(kind) {
            return Err(HelloError::Malformed("an extension is repeated"));
        }
        match kind {
            SERVER_NAME => name = Some(server_name(data)?),
            ENCRYPTED_CLIENT_HELLO => return Err(HelloError::Encrypted),
            _ => {}
        }
    }
    Ok(name)
}

/// The one host name of a `server_name` extension.
fn server_name(data: &[u8]) -> Result<String, HelloError> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16("server name list")?);
    if !r.0.is_empty() || list.0.is_empty() {
        return Err(HelloError::Malformed("server name list"));
    }
    let mut host = None;
    while !list.0.is_empty() {
        let kind = list.u8("server name type")?;
        let name = list.vec16("server name")?;
        if kind != HOST_NAME || host.is_some() {
            return Err(HelloError::Malformed(
                "the server name list names more than one host",
            ));
        }
        host = Some(name);
    }
    let name = host.ok_or(HelloError::Malformed("server name list"))?;
    let ok = !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !ok {
        return Err(HelloError::Malformed("the server name is not a DNS name"));
    }
    let text = String::from_utf8_lossy(name).to_ascii_lowercase();
    Ok(text.trim_end_matches('.').to_string())
}

/// Whether `sni` (as [`parse`] gives it) is what a tunnel to `host` may carry: the same name
/// (case and a trailing dot aside); for an IP literal, no name at all (a server name is never
/// an address).
pub(crate) fn matches(host: &str, sni: Option<&str>) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return sni.is_none();
    }
    sni.is_some_and(|s| s.eq_ignore_ascii_case(host.trim_end_matches('.')))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with these extensions (type, data), in one record.
    fn hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0);
        body.extend([0, 2, 0x13, 0x01]);
        body.extend([1, 0]);
        let mut e = Vec::new();
        for (k, d) in exts {
            e.extend(k.to_be_bytes());
            e.extend((d.len() as u16).to_be_bytes());
            e.extend(d);
        }
        body.extend((e.len() as u16).to_be_bytes());
        body.extend(e);
        let mut msg = vec![CLIENT_HELLO, 0];
        msg.extend((body.len() as u16).to_be_bytes());
        msg.extend(body);
        let mut rec = vec![HANDSHAKE_RECORD, 3, 1];
        rec.extend((msg.len() as u16).to_be_bytes());
        rec.extend(msg);
        rec
    }

    fn sni(names: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for n in names {
            list.push(HOST_NAME);
            list.extend((n.len() as u16).to_be_bytes());
            list.extend(*n);
        }
        let mut d = (list.len() as u16).to_be_bytes().to_vec();
        d.extend(list);
        d
    }

    #[test]
    fn the_server_name_is_read_whole_or_split_into_records_and_reads() {
        let h = hello(&[
            (10, vec![0, 2, 0, 29]),
            (SERVER_NAME, sni(&[b"API.Example.test."])),
        ]);
        assert_eq!(parse(&h), Ok(Hello::Whole(Some("api.example.test".into()))));
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(Hello::Incomplete), "cut at {cut}");
        }
        // The same message split over two records.
        let msg = &h[5..];
        let (a, b) = msg.split_at(10);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend([HANDSHAKE_RECORD, 3, 3]);
            two.extend((part.len() as u16).to_be_bytes());
            two.extend(part);
        }
        assert_eq!(
            parse(&two),
            Ok(Hello::Whole(Some("api.example.test".into())))
        );
        // No extension at all, or none naming a host: no name.
        assert_eq!(parse(&hello(&[])), Ok(Hello::Whole(None)));
    }

    #[test]
    fn hellos_that_cannot_be_checked_are_refused() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
        assert_eq!(
            parse(&hello(&[
                (ENCRYPTED_CLIENT_HELLO, vec![0]),
                (SERVER_NAME, sni(&[b"a.test"]))
            ])),
            Err(HelloError::Encrypted)
        );
        for bad in [
            hello(&[
                (SERVER_NAME, sni(&[b"a.test"])),
                (SERVER_NAME, sni(&[b"b.test"])),
            ]),
            hello(&[(SERVER_NAME, sni(&[b"a.test", b"b.test"]))]),
            hello(&[(SERVER_NAME, sni(&[b"a.test\0.b.test"]))]),
            hello(&[(SERVER_NAME, sni(&[b""]))]),
        ] {
            assert!(
                matches!(parse(&bad), Err(HelloError::Malformed(_))),
                "{bad:?}"
            );
        }
        // A length that runs past the extension block.
        let mut h = hello(&[(SERVER_NAME, sni(&[b"a.test"]))]);
        let n = h.len();
        h[n - 8] = 0xff;
        assert!(matches!(parse(&h), Err(HelloError::Malformed(_))));
        // A record or a message above the bound, however it is announced.
        let mut big = vec![
            HANDSHAKE_RECORD,
            3,
            1,
            0x40,
            0x00,
            CLIENT_HELLO,
            0xff,
            0xff,
            0xff,
        ];
        big.resize(MAX_HELLO_BYTES + 100, 0);
        assert_eq!(parse(&big), Err(HelloError::TooLarge));
        let mut records = Vec::new();
        while records.len() <= MAX_HELLO_BYTES {
            records.extend([HANDSHAKE_RECORD, 3, 1, 0x40, 0x00]);
            records.resize(records.len() + 0x4000, 0);
        }
        records[5] = CLIENT_HELLO;
        records[6] = 0x01;
        assert_eq!(parse(&records), Err(HelloError::TooLarge));
        // Random bytes never panic.
        let mut x: u32 = 1;
        for len in 0..600 {
            let mut b = vec![HANDSHAKE_RECORD, 3, 1, (len >> 8) as u8, len as u8];
            for _ in 0..len {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                b.push((x >> 16) as u8);
            }
            let _ = parse(&b);
        }
    }

    #[test]
    fn a_name_matches_its_authority_and_an_address_matches_no_name() {
        assert!(matches("api.example.test", Some("api.example.test")));
        assert!(matches("API.example.test.", Some("api.example.test")));
        assert!(!matches("api.example.test", Some("other.test")));
        assert!(!matches("api.example.test", None));
        assert!(matches("127.0.0.1", None));
        assert!(matches("[::1]", None));
        assert!(!matches("127.0.0.1", Some("cdn.example.test")));
    }
}
