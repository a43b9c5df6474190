//! What loongd configures the gateway with (`ServeSpec::config_json`, from `[gateway]`).

use serde::Deserialize;

/// The gateway's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Whether the listener is a Unix socket.
    pub unix: bool,
    /// `Host` values answered (empty: loopback names).
    pub allowed_hosts: Vec<String>,
    /// `Origin` values allowed (empty: loopback origins).
    pub allowed_origins: Vec<String>,
    pub max_body_bytes: u64,
    pub max_streams_per_token: u32,
    pub requests_per_second: u32,
    pub burst: u32,
    /// The agent's configured model names (`/v1/models`).
    pub models: Vec<String>,
    /// Whether the debug-build test hook is served (`test_hook.rs`; a release loongd never
    /// sets it and a release worker has no hook).
    #[serde(default)]
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    pub test_raw_calls: bool,
}

/// The `Host` names answered when `[gateway] allowed_hosts` is empty (any port).
pub const LOOPBACK_HOSTS: [&str; 4] = ["localhost", "127.0.0.1", "::1", "[::1]"];

/// Why the gateway cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the gateway's configuration from loongd: {0}")]
    Config(String),
    #[error("the gateway's listener (fd 4): {0}")]
    Listener(std::io::Error),
}

impl Config {
    pub fn parse(json: &str) -> Result<Config, GatewayError> {
        let c: Config =
            serde_json::from_str(json).map_err(|e| GatewayError::Config(e.to_string()))?;
        if c.max_streams_per_token == 0 || c.requests_per_second == 0 || c.burst == 0 {
            return Err(GatewayError::Config("its limits must be at least 1".into()));
        }
        Ok(c)
    }

    /// Whether `host` (a `Host` header: `name` or `name:port`) is answered.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let name = strip_port(&host);
        if self.allowed_hosts.is_empty() {
            return LOOPBACK_HOSTS.contains(&name);
        }
        self.allowed_hosts.iter().any(|a| {
            let a = a.trim().to_ascii_lowercase();
            a == host || (strip_port(&a) == a && a == name)
        })
    }

    /// Whether a request with `Origin: origin` is answered.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        if self.allowed_origins.is_empty() {
            let Some(rest) = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
            else {
                return false;
            };
            return !rest.contains('/') && LOOPBACK_HOSTS.contains(&strip_port(rest));
        }
        self.allowed_origins
            .iter()
            .any(|a| a.trim().to_ascii_lowercase() == origin)
    }
}

/// `name` of `name:port` (`[v6]:port` keeps its brackets; a bare `::1` is a name). After a
/// bracketed literal only `:port` may follow: `[::1]evil.example` stays whole (no name).
fn strip_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|r| r.find(']')) {
        let (name, rest) = host.split_at(end + 2);
        let port_only = rest.is_empty()
            || rest
                .strip_prefix(':')
                .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()));
        return if port_only { name } else { host };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(hosts: &[&str], origins: &[&str]) -> Config {
        Config {
            unix: false,
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            max_body_bytes: 1024,
            max_streams_per_token: 1,
            requests_per_second: 1,
            burst: 1,
            models: Vec::new(),
            test_raw_calls: false,
        }
    }

    #[test]
    fn only_loopback_hosts_by_default_and_the_configured_ones_otherwise() {
        let c = config(&[], &[]);
        for ok in [
            "127.0.0.1:7878",
            "localhost",
            "LOCALHOST:1",
            "[::1]:7878",
            "::1",
        ] {
            assert!(c.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7878",
            "127.0.0.1.evil.example",
            "localhost.evil.example:7878",
            "",
            "0.0.0.0:7878",
            "localhost.",
            "[::1]evil.example",
            "[::1].evil.example:7878",
            "[::1]@evil.example",
            "[::1]:7878x",
        ] {
            assert!(!c.host_allowed(bad), "{bad}");
        }
        let c = config(&["gw.internal", "api.example:8443"], &[]);
        assert!(c.host_allowed("gw.internal:7878"));
        assert!(c.host_allowed("api.example:8443"));
        assert!(
            !c.host_allowed("api.example:7878"),
            "a port given is the only one"
        );
        assert!(
            !c.host_allowed("localhost:7878"),
            "configured names replace loopback"
        );
    }

    #[test]
    fn only_loopback_origins_by_default_and_the_configured_ones_otherwise() {
        let c = config(&[], &[]);
        for ok in [
            "http://localhost:3000",
            "http://127.0.0.1",
            "https://[::1]:8443",
        ] {
            assert!(c.origin_allowed(ok), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "http://localhost.evil.example",
            "null",
            "file://",
            "http://127.0.0.1.evil.example:80",
            "http://localhost/x",
            "http://[::1]@evil.example",
            "http://[::1].evil.example",
            "http://localhost.",
        ] {
            assert!(!c.origin_allowed(bad), "{bad}");
        }
        let c = config(&[], &["https://app.example"]);
        assert!(c.origin_allowed("https://APP.example"));
        assert!(!c.origin_allowed("http://localhost:3000"));
    }
}
