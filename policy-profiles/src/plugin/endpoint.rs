//! `http_json` endpoints and `web.fetch` URLs: `http(s)://HOST[:PORT][/PATH]` split into
//! scheme, host, port and request target, with a typed error naming the URL.

/// Why an endpoint URL does not parse; the message names the URL and what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EndpointError(pub String);

impl From<String> for EndpointError {
    fn from(s: String) -> Self {
        EndpointError(s)
    }
}

impl From<&str> for EndpointError {
    fn from(s: &str) -> Self {
        EndpointError(s.to_string())
    }
}

/// Longest endpoint URL.
pub const MAX_ENDPOINT_BYTES: usize = 1024;

/// An `http_json` endpoint or a `web.fetch` URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://`: the worker runs TLS to `host` and never falls back to plain HTTP.
    pub https: bool,
    /// Lowercase; an IPv6 literal without its brackets.
    pub host: String,
    /// The port (80 for `http://`, 443 for `https://` when none is given).
    pub port: u16,
    /// Path and query (`/` when the URL has none).
    pub target: String,
}

impl Endpoint {
    /// The `Host` header: the host, with its port when it is not the scheme's default.
    pub fn host_header(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        match (self.port == default, self.host.contains(':')) {
            (true, false) => self.host.clone(),
            (true, true) => format!("[{}]", self.host),
            (false, false) => format!("{}:{}", self.host, self.port),
            (false, true) => format!("[{}]:{}", self.host, self.port),
        }
    }
}

/// Splits an `http_json` endpoint or a `web.fetch` URL, `http://HOST[:PORT][/PATH]` or
/// `https://HOST[:PORT][/PATH]`, into its scheme, host, port and request target.
pub fn parse_endpoint(e: &str) -> Result<Endpoint, EndpointError> {
    let bad = || {
        EndpointError(format!(
            "{e:?} does not parse: expected http(s)://HOST[:PORT]/PATH"
        ))
    };
    if e.is_empty() {
        return Err("missing: give the URL the connector posts to".into());
    }
    if e.len() > MAX_ENDPOINT_BYTES || e.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad());
    }
    let (https, rest) = match (e.strip_prefix("https://"), e.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return Err(bad()),
    };
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let target = if target.starts_with('?') {
        format!("/{target}")
    } else {
        target.to_string()
    };
    if authority.contains('@') || target.contains('#') {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c));
    let port = match port {
        None if https => 443,
        None => 80,
        Some(p) => p.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(bad)?,
    };
    if !host_ok {
        return Err(bad());
    }
    Ok(Endpoint {
        https,
        host: host.to_ascii_lowercase(),
        port,
        target,
    })
}
