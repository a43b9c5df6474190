//! The HTTP client a channel uses: rustls with ring and the compiled-in web PKI roots (the
//! worker reads no file), the egress broker's proxy from `HTTPS_PROXY`/`HTTP_PROXY` in its
//! environment, no redirects (a redirect would carry a bot token or a bearer elsewhere), and
//! bodies read up to a bound.

use std::sync::Arc;
use std::time::Duration;

use crate::error::ChannelError;
use crate::limits::CONNECT_TIMEOUT;

/// The header loongd's egress broker puts on an answer it made itself (RFC 9209), such as its
/// `429` when the sandbox opens connections faster than `[egress] connections_per_second`:
/// that refusal is the broker's, over in milliseconds, not the platform's rate limit.
pub const PROXY_STATUS: &str = "proxy-status";

/// The TLS configuration: rustls with the ring provider and the compiled-in roots.
fn tls_config() -> Result<rustls::ClientConfig, ChannelError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ChannelError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A client of `base` whose requests each end within `timeout`. A plain `http://` base goes
/// through the egress proxy as forwarded requests, one a connection (the proxy sends the
/// destination `Connection: close`, and closes), but the destination's answer need not say
/// so: a connection kept for reuse was then found closed at the next request, which failed
/// (and the poller backed off 2 s). Such a client keeps no idle connection; an `https://`
/// base (a CONNECT tunnel, kept) does.
pub fn client(timeout: Duration, base: &str) -> Result<reqwest::Client, ChannelError> {
    let builder = reqwest::Client::builder();
    let builder = if base.starts_with("https://") {
        builder
    } else {
        builder.pool_max_idle_per_host(0)
    };
    builder
        .tls_backend_preconfigured(tls_config()?)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ChannelError::Client(e.without_url().to_string()))
}

/// Reads `response`'s body, refusing it past `limit` bytes (checked against the declared
/// length first, then as it streams).
pub async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
    what: &'static str,
) -> Result<Vec<u8>, ChannelError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ChannelError::TooLarge { what, limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| ChannelError::Http {
        method: what,
        source: e.without_url(),
    })? {
        if body.len() + chunk.len() > limit {
            return Err(ChannelError::TooLarge { what, limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `base` without trailing slashes, checked to be an `http` or `https` URL.
pub fn base_url(base: &str, what: &'static str) -> Result<String, ChannelError> {
    let trimmed = base.trim_end_matches('/');
    let ok = reqwest::Url::parse(trimmed)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if !ok {
        return Err(ChannelError::BadUrl {
            what,
            url: crate::error::printable(base, 200),
        });
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(
            base_url("https://api.telegram.org/", "api base").expect("ok"),
            "https://api.telegram.org"
        );
        assert_eq!(
            base_url("http://127.0.0.1:8080", "api base").expect("ok"),
            "http://127.0.0.1:8080"
        );
        for bad in ["ftp://x", "not a url", "file:///etc/passwd", ""] {
            let err = base_url(bad, "api base").expect_err(bad).to_string();
            assert!(err.starts_with("the api base is not a valid url"), "{err}");
        }
    }
}
