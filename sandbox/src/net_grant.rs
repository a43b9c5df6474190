//! Network grants, `HOST:PORT`: one grammar for every place a grant is written (`sandbox.net`
//! in a manifest, `--allow-net`, `[builtins] shell_net`, the scope of a `net.egress` grant).
//!
//! `HOST` is an exact name (`api.example.com`), a suffix pattern (`*.example.com`: any name
//! with at least one more label, never `example.com` itself) or an IP literal (`10.0.0.1`,
//! `[::1]`); `PORT` is a number from 1 to 65535 or `*`. Names are ASCII (an internationalised
//! name is written in its `xn--` form), compared without case, and stored lowercased without
//! a trailing dot.

use std::{fmt, net::IpAddr, str::FromStr};

/// The longest host name (RFC 1035, without the trailing dot).
pub const MAX_NAME_BYTES: usize = 253;
/// The longest label of a host name.
pub const MAX_LABEL_BYTES: usize = 63;
/// The longest grant text accepted at all (a bracketed IPv6 literal and a port fit easily).
pub const MAX_GRANT_BYTES: usize = MAX_NAME_BYTES + 8;

/// The host part of a grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// Exactly this name (lowercase, no trailing dot).
    Exact(String),
    /// Any name ending in `.` and this suffix, with at least one label before it.
    Suffix(String),
    /// Exactly this address.
    Ip(IpAddr),
}

/// The port part of a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortPattern {
    Port(u16),
    /// `*`: every port.
    Any,
}

/// A network destination pattern a sandbox may connect to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetGrant {
    pub host: HostPattern,
    pub port: PortPattern,
    /// The host as text (a name, or the address without brackets), for [`NetGrant::exact`].
    text: String,
}

/// Why a network grant does not parse. Each message names the grant and what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetGrantError {
    #[error(
        "network grant `{0}` is not HOST:PORT; write e.g. `api.example.com:443`, `*.example.com:443`, `10.0.0.1:5432` or `[::1]:8080`"
    )]
    NotHostPort(String),
    #[error(
        "network grant `{grant}`: `{port}` is not a port; write a number from 1 to 65535 (without a sign or leading zeros), or `*` for every port"
    )]
    BadPort { grant: String, port: String },
    #[error("network grant `{grant}`: the host {why}")]
    BadHost { grant: String, why: String },
}

impl NetGrant {
    /// A grant of `host` on `port`.
    pub fn new(host: HostPattern, port: PortPattern) -> NetGrant {
        let text = match &host {
            HostPattern::Exact(n) => n.clone(),
            HostPattern::Suffix(s) => format!("*.{s}"),
            HostPattern::Ip(ip) => ip.to_string(),
        };
        NetGrant { host, port, text }
    }

    /// Parses a `net.egress` scope: `HOST:PORT` as a grant, or `HOST` alone (a bare IPv6
    /// address too) for every port of that host.
    pub fn parse_scope(s: &str) -> Result<NetGrant, NetGrantError> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(NetGrant::new(HostPattern::Ip(ip), PortPattern::Any));
        }
        let bracketed = s.starts_with('[') && s.ends_with(']');
        if bracketed || !s.contains(':') {
            if s.len() > MAX_GRANT_BYTES {
                return Err(NetGrantError::BadHost {
                    grant: clip(s),
                    why: format!("is longer than {MAX_NAME_BYTES} bytes"),
                });
            }
            let host = parse_host(s, bracketed).map_err(|why| NetGrantError::BadHost {
                grant: s.to_string(),
                why,
            })?;
            return Ok(NetGrant::new(host, PortPattern::Any));
        }
        s.parse()
    }

    /// Whether a connection to `host` (a name or an IP literal as asked: any case, an IPv6
    /// address with or without brackets, a name with or without its trailing dot) on `port`
    /// is within this grant. A name never matches an address grant nor an address a name one.
    pub fn admits(&self, host: &str, port: u16) -> bool {
        let port_ok = match self.port {
            PortPattern::Any => port != 0,
            PortPattern::Port(p) => p == port,
        };
        port_ok
            && match Asked::parse(host) {
                Some(Asked::Ip(ip)) => self.host == HostPattern::Ip(ip),
                Some(Asked::Name(name)) => match &self.host {
                    HostPattern::Exact(n) => *n == name,
                    HostPattern::Suffix(s) => in_suffix(&name, s),
                    HostPattern::Ip(_) => false,
                },
                None => false,
            }
    }

    /// The one destination of a grant that names exactly one host (or address) and a numeric
    /// port, as `(host or address text, port)`, an IPv6 address without brackets (so it
    /// parses as an `IpAddr`); `None` for a pattern (a suffix, or port `*`).
    pub fn exact(&self) -> Option<(&str, u16)> {
        match (&self.host, self.port) {
            (HostPattern::Exact(_) | HostPattern::Ip(_), PortPattern::Port(p)) => {
                Some((&self.text, p))
            }
            _ => None,
        }
    }

    /// Whether the grant is exactly the IP literal `ip`.
    pub fn names_ip(&self, ip: IpAddr) -> bool {
        self.host == HostPattern::Ip(ip)
    }

    /// Whether every destination `other` admits, this grant admits too (so `other` may be
    /// delegated under it).
    pub fn covers(&self, other: &NetGrant) -> bool {
        let port = match (self.port, other.port) {
            (PortPattern::Any, _) => true,
            (PortPattern::Port(a), PortPattern::Port(b)) => a == b,
            (PortPattern::Port(_), PortPattern::Any) => false,
        };
        port && match (&self.host, &other.host) {
            (HostPattern::Suffix(s), HostPattern::Suffix(o)) => o == s || in_suffix(o, s),
            (HostPattern::Suffix(s), HostPattern::Exact(o)) => in_suffix(o, s),
            (a, b) => a == b,
        }
    }

    /// Whether some destination is admitted by both grants.
    pub fn overlaps(&self, other: &NetGrant) -> bool {
        let port = match (self.port, other.port) {
            (PortPattern::Port(a), PortPattern::Port(b)) => a == b,
            _ => true,
        };
        let (a, b) = (
            NetGrant::new(self.host.clone(), PortPattern::Any),
            NetGrant::new(other.host.clone(), PortPattern::Any),
        );
        port && (a.covers(&b) || b.covers(&a))
    }
}

/// Whether `name` lies strictly under `suffix` (`a.example.com` under `example.com`).
fn in_suffix(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len() + 1
        && name.ends_with(suffix)
        && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
}

/// A host as a connection asks for it.
enum Asked {
    Name(String),
    Ip(IpAddr),
}

impl Asked {
    fn parse(host: &str) -> Option<Asked> {
        let inner = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = inner.parse::<IpAddr>() {
            return Some(Asked::Ip(ip));
        }
        if inner.len() != host.len() {
            return None;
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        check_name(&name).ok()?;
        Some(Asked::Name(name))
    }
}

impl fmt::Display for NetGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]")?,
            _ => f.write_str(&self.text)?,
        }
        match self.port {
            PortPattern::Port(p) => write!(f, ":{p}"),
            PortPattern::Any => f.write_str(":*"),
        }
    }
}

impl FromStr for NetGrant {
    type Err = NetGrantError;
    fn from_str(s: &str) -> Result<NetGrant, NetGrantError> {
        let bad_host = |why: String| NetGrantError::BadHost {
            grant: clip(s),
            why,
        };
        if s.len() > MAX_GRANT_BYTES {
            return Err(bad_host(format!("is longer than {MAX_NAME_BYTES} bytes")));
        }
        if s.contains("://") {
            return Err(bad_host(
                "is a URL; write only HOST:PORT (`api.example.com:443`)".into(),
            ));
        }
        if let Some((user, _)) = s.split_once('@') {
            return Err(bad_host(format!(
                "has user information (`{user}@`); write only HOST:PORT (`api.example.com:443`)"
            )));
        }
        let (host, port, bracketed) = match s.strip_prefix('[') {
            Some(rest) => {
                let (h, after) = rest
                    .split_once(']')
                    .ok_or_else(|| NetGrantError::NotHostPort(s.to_string()))?;
                let port = after
                    .strip_prefix(':')
                    .ok_or_else(|| NetGrantError::NotHostPort(s.to_string()))?;
                (h, port, true)
            }
            None => {
                let (h, p) = s
                    .rsplit_once(':')
                    .ok_or_else(|| NetGrantError::NotHostPort(s.to_string()))?;
                if h.contains(':') {
                    return Err(bad_host(format!(
                        "`{h}` is an IPv6 address without brackets; write `[{h}]:{p}`"
                    )));
                }
                (h, p, false)
            }
        };
        let port = parse_port(port).ok_or_else(|| NetGrantError::BadPort {
            grant: s.to_string(),
            port: port.to_string(),
        })?;
        if host.is_empty() {
            return Err(NetGrantError::NotHostPort(s.to_string()));
        }
        let host = parse_host(host, bracketed).map_err(bad_host)?;
        Ok(NetGrant::new(host, port))
    }
}

/// A grant's text, cut to a length an error message can carry.
fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_GRANT_BYTES) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn parse_port(p: &str) -> Option<PortPattern> {
    if p == "*" {
        return Some(PortPattern::Any);
    }
    if p.is_empty() || p.len() > 5 || p.starts_with('0') || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().map(PortPattern::Port)
}

/// Parses the host part (`bracketed`: it was written as `[...]`, so it must be an IPv6
/// address). The error says what is wrong and what to write.
fn parse_host(host: &str, bracketed: bool) -> Result<HostPattern, String> {
    let inner = if bracketed {
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    } else {
        host
    };
    if bracketed {
        return match inner.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => Ok(HostPattern::Ip(IpAddr::V6(v6))),
            Err(_) => Err(format!(
                "`[{inner}]` is not an IPv6 address; write one in brackets (`[2001:db8::1]:443`), without a zone"
            )),
        };
    }
    if let Ok(ip) = inner.parse::<IpAddr>() {
        if ip.is_ipv6() {
            return Err(format!(
                "`{inner}` is an IPv6 address without brackets; write `[{inner}]`"
            ));
        }
        return Ok(HostPattern::Ip(ip));
    }
    if inner.contains('@') {
        return Err(format!(
            "`{inner}` has user information; write only the host (`api.example.com:443`)"
        ));
    }
    if inner.contains(['/', '?', '#']) {
        return Err(format!(
            "`{inner}` has a path or query; write only HOST:PORT (`api.example.com:443`)"
        ));
    }
    if inner == "*" {
        return Err(
            "`*` alone would grant every host; name the hosts, or a domain's names as `*.example.com`"
                .into(),
        );
    }
    let (suffix, name) = match inner.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, inner),
    };
    if name.contains('*') {
        return Err(format!(
            "`{inner}`: a wildcard is allowed only as the whole first label, as in `*.example.com`"
        ));
    }
    if name.ends_with('.') && !name.is_empty() {
        return Err(format!(
            "`{inner}` ends with a dot; write it without (`{}`)",
            inner.trim_end_matches('.')
        ));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        // Names compare without case: store the lowercase form.
        return parse_host(&inner.to_ascii_lowercase(), false);
    }
    check_name(name).map_err(|why| format!("`{inner}` {why}"))?;
    Ok(if suffix {
        HostPattern::Suffix(name.to_string())
    } else {
        HostPattern::Exact(name.to_string())
    })
}

/// Checks a lowercase name without a trailing dot: ASCII labels of letters, digits, `-` and
/// `_`, none empty or longer than [`MAX_LABEL_BYTES`], no `-` at either end, and a last
/// label that is not a number (so no name reads as an IPv4 address in another notation).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty; write a host name, `*.example.com` or an IP address".into());
    }
    if !name.is_ascii() {
        return Err("is not ASCII; write an internationalised name in its `xn--` form".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("is longer than {MAX_NAME_BYTES} bytes"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("has an empty label (`..`, or a dot at either end)".into());
        }
        if label.len() > MAX_LABEL_BYTES {
            return Err(format!("has a label longer than {MAX_LABEL_BYTES} bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(
                "has a character other than a letter, a digit, `-` or `_` in a label".into(),
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("has a label that starts or ends with `-`".into());
        }
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit())
        || (last.starts_with("0x") && last[2..].bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(
            "reads as a number, not a name; write an IPv4 address as four decimal numbers (`127.0.0.1`)"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> NetGrant {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn suffix_patterns_admit_names_strictly_under_them_on_their_port() {
        let w = g("*.example.test:443");
        for (host, port) in [
            ("a.example.test", 443),
            ("a.b.example.test", 443),
            ("A.Example.TEST", 443),
            ("a.example.test.", 443),
        ] {
            assert!(w.admits(host, port), "{host}:{port}");
        }
        for (host, port) in [
            ("example.test", 443),
            ("example.test.evil", 443),
            ("aexample.test", 443),
            ("evilexample.test", 443),
            ("a.evilexample.test", 443),
            ("a.example.test.evil", 443),
            ("a.example.test", 444),
            ("a.example.test", 0),
            (".example.test", 443),
            ("a..example.test", 443),
            ("a.example.test..", 443),
            ("", 443),
            ("198.51.100.7", 443),
            ("[::1]", 443),
            ("a.exämple.test", 443),
        ] {
            assert!(!w.admits(host, port), "{host}:{port}");
        }
        let any = g("*.example.test:*");
        assert!(any.admits("a.example.test", 1) && any.admits("a.example.test", 65535));
        assert!(!any.admits("example.test", 443) && !any.admits("a.example.test", 0));
    }

    #[test]
    fn exact_names_and_addresses_admit_only_themselves() {
        let n = g("API.example.com:443");
        assert_eq!(n.host, HostPattern::Exact("api.example.com".into()));
        assert!(n.admits("api.example.com", 443) && n.admits("Api.Example.Com.", 443));
        assert!(!n.admits("x.api.example.com", 443) && !n.admits("example.com", 443));
        assert_eq!(n.exact(), Some(("api.example.com", 443)));

        let v4 = g("127.0.0.1:8080");
        assert!(v4.admits("127.0.0.1", 8080) && !v4.admits("127.0.0.1", 8081));
        assert!(!v4.admits("localhost", 8080) && !v4.admits("127.1", 8080));
        assert!(!v4.admits("::ffff:127.0.0.1", 8080));
        assert!(v4.names_ip("127.0.0.1".parse().expect("ip")));
        assert!(!v4.names_ip("127.0.0.2".parse().expect("ip")));
        assert_eq!(v4.exact(), Some(("127.0.0.1", 8080)));

        let v6 = g("[::1]:8080");
        assert!(v6.admits("::1", 8080) && v6.admits("[::1]", 8080));
        assert!(v6.admits("[0:0::1]", 8080) && !v6.admits("127.0.0.1", 8080));
        assert_eq!(v6.exact(), Some(("::1", 8080)));
        assert!(v6.names_ip("::1".parse().expect("ip")));

        // A pattern has no one destination.
        assert_eq!(g("*.example.com:443").exact(), None);
        assert_eq!(g("api.example.com:*").exact(), None);
        assert!(!g("localhost:80").names_ip("127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn grants_round_trip_through_their_text() {
        for (text, canonical) in [
            ("api.example.com:443", "api.example.com:443"),
            ("API.Example.COM:443", "api.example.com:443"),
            ("*.example.test:443", "*.example.test:443"),
            ("*.Example.test:*", "*.example.test:*"),
            ("10.0.0.1:5432", "10.0.0.1:5432"),
            ("[::1]:8080", "[::1]:8080"),
            ("[0:0::1]:*", "[::1]:*"),
            ("localhost:65535", "localhost:65535"),
            ("xn--bcher-kva.example:80", "xn--bcher-kva.example:80"),
            ("_srv.example.com:1", "_srv.example.com:1"),
        ] {
            let parsed = g(text);
            assert_eq!(parsed.to_string(), canonical, "{text}");
            assert_eq!(g(canonical), parsed, "{text}");
        }
    }

    /// Every hostile or malformed grant is refused, with a message that names the grant and
    /// what to write instead.
    #[test]
    fn hostile_grants_are_refused_with_what_to_write() {
        for (text, want) in [
            ("", "is not HOST:PORT"),
            ("nocolon", "is not HOST:PORT"),
            (":443", "is not HOST:PORT"),
            ("*:443", "`*` alone would grant every host"),
            ("*.:443", "is empty"),
            ("**.x:443", "only as the whole first label"),
            ("*x.example.com:443", "only as the whole first label"),
            ("a.*.example.com:443", "only as the whole first label"),
            ("example.*:443", "only as the whole first label"),
            ("*.*.example.com:443", "only as the whole first label"),
            ("a..example.com:443", "empty label"),
            (".example.com:443", "empty label"),
            (
                "example.com.:443",
                "ends with a dot; write it without (`example.com`)",
            ),
            ("exämple.com:443", "xn--"),
            ("-a.example.com:443", "starts or ends with `-`"),
            ("a b.example.com:443", "other than a letter"),
            ("example.com:0", "`0` is not a port"),
            ("example.com:65536", "`65536` is not a port"),
            ("example.com:+80", "`+80` is not a port"),
            ("example.com:080", "`080` is not a port"),
            ("example.com:", "`` is not a port"),
            ("example.com:http", "`http` is not a port"),
            ("user@example.com:443", "user information"),
            ("user:pw@example.com:443", "user information"),
            ("example.com/path:443", "has a path"),
            ("example.com:443/path", "is not a port"),
            ("http://example.com:443", "is a URL"),
            ("::1:80", "without brackets; write `[::1]:80`"),
            ("[::1]", "is not HOST:PORT"),
            ("[::1]80", "is not HOST:PORT"),
            ("[example.com]:80", "is not an IPv6 address"),
            ("[fe80::1%eth0]:80", "is not an IPv6 address"),
            ("[127.0.0.1]:80", "is not an IPv6 address"),
            ("127.1:80", "reads as a number"),
            ("0x7f.1:80", "reads as a number"),
            ("2130706433:80", "reads as a number"),
            ("*.1:80", "reads as a number"),
        ] {
            let err = text.parse::<NetGrant>().expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(
                err.starts_with(&format!("network grant `{text}`")),
                "{text:?}: {err}"
            );
        }
        let long = format!("{}.example.com:443", "a".repeat(64));
        assert!(long
            .parse::<NetGrant>()
            .expect_err("long")
            .to_string()
            .contains("longer than 63"));
        let huge = format!("{}:443", "a.".repeat(200));
        assert!(huge.parse::<NetGrant>().is_err());
    }

    proptest::proptest! {
        /// Any text, hostile or not: parsing never panics, what parses prints in a canonical
        /// form that parses to the same grant, and a grant admits what it names exactly.
        #[test]
        fn any_text_parses_to_a_grant_that_round_trips_or_is_refused(
            s in "(\\*\\.)?[a-zA-Z0-9_-]{1,10}(\\.[a-zA-Z0-9-]{1,6}){0,3}\\.?:([0-9]{1,6}|\\*)|\\[[0-9a-fA-F:.]{2,20}\\]:[0-9]{1,5}|[a-zA-Z0-9*.:\\[\\]@/_%-]{0,40}|\\PC{0,40}"
        ) {
            if let Ok(g) = s.parse::<NetGrant>() {
                let shown = g.to_string();
                let again = shown.parse::<NetGrant>();
                proptest::prop_assert_eq!(again, Ok(g.clone()), "{}", shown);
                if let Some((host, port)) = g.exact() {
                    proptest::prop_assert!(g.admits(host, port), "{}", shown);
                }
            }
            let _ = NetGrant::parse_scope(&s);
        }

        /// Every address, in either family, is a grant that prints as written canonically
        /// and admits that address (with or without brackets) and no neighbour.
        #[test]
        fn every_address_grant_round_trips_and_admits_itself(
            v6 in proptest::prelude::any::<[u16; 8]>(),
            v4 in proptest::prelude::any::<u32>(),
            port in 1u16..,
        ) {
            let v6 = std::net::Ipv6Addr::from(v6);
            let v4 = std::net::Ipv4Addr::from(v4);
            for (text, ip) in [
                (format!("[{v6}]:{port}"), IpAddr::V6(v6)),
                (format!("{v4}:{port}"), IpAddr::V4(v4)),
            ] {
                let g: NetGrant = text.parse().map_err(|e: NetGrantError| {
                    proptest::test_runner::TestCaseError::fail(e.to_string())
                })?;
                proptest::prop_assert_eq!(g.to_string(), text.clone());
                proptest::prop_assert!(g.names_ip(ip) && g.admits(&ip.to_string(), port));
                if port < u16::MAX {
                    proptest::prop_assert!(!g.admits(&ip.to_string(), port + 1));
                }
            }
        }
    }

    #[test]
    fn scopes_take_a_port_or_leave_it_open() {
        assert_eq!(
            NetGrant::parse_scope("*.example.com").expect("scope"),
            g("*.example.com:*")
        );
        assert_eq!(
            NetGrant::parse_scope("api.example.com:443").expect("scope"),
            g("api.example.com:443")
        );
        assert_eq!(NetGrant::parse_scope("::1").expect("scope"), g("[::1]:*"));
        assert_eq!(NetGrant::parse_scope("[::1]").expect("scope"), g("[::1]:*"));
        assert_eq!(
            NetGrant::parse_scope("api.example.com:*").expect("scope"),
            g("api.example.com:*")
        );
        for bad in [
            "*",
            "a..b",
            "*.",
            "a.*.b",
            "example.com:0",
            "user@example.com",
            "example.com/x",
        ] {
            assert!(NetGrant::parse_scope(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn covering_and_overlapping_follow_admission() {
        assert!(g("*.a.com:*").covers(&g("*.b.a.com:443")));
        assert!(g("*.a.com:443").covers(&g("x.a.com:443")));
        assert!(!g("*.a.com:443").covers(&g("a.com:443")));
        assert!(!g("*.a.com:443").covers(&g("x.a.com:*")));
        assert!(!g("b.a.com:443").covers(&g("*.a.com:443")));
        assert!(!g("*.b.a.com:443").covers(&g("*.a.com:443")));
        assert!(!g("*.a.com:443").covers(&g("*.xa.com:443")));
        assert!(!g("*.a.com:443").covers(&g("*.evila.com:443")));
        assert!(!g("*.a.com:443").covers(&g("x.evila.com:443")));
        assert!(!g("localhost:80").covers(&g("127.0.0.1:80")));
        assert!(g("*.a.com:443").overlaps(&g("x.a.com:*")));
        assert!(g("x.a.com:443").overlaps(&g("*.a.com:443")));
        assert!(!g("*.a.com:443").overlaps(&g("*.b.com:443")));
        assert!(!g("*.a.com:443").overlaps(&g("x.a.com:80")));
    }
}
