//! TLS for `https://` endpoints, run here in the worker over the socket loongd passed
//! (loongd never runs TLS): rustls with the ring provider, the server verified as the
//! endpoint's host against the public roots compiled in (webpki-roots) and the anchors loongd
//! read for us (the system store and `[egress] ca_bundle`). A handshake that fails is a
//! [`HttpError::Tls`] naming the host and the reason; nothing falls back to plain HTTP.

use std::{io, sync::Arc};

use rustls::{pki_types::ServerName, CertificateError, ClientConfig, ClientConnection};

use super::{Conn, HttpError, Timed};

/// Why the trust anchors loongd handed over do not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TrustError(pub String);

impl From<String> for TrustError {
    fn from(s: String) -> Self {
        TrustError(s)
    }
}

impl From<&str> for TrustError {
    fn from(s: &str) -> Self {
        TrustError(s.to_string())
    }
}

/// The roots one connector's or `web.fetch`'s calls verify servers against.
#[derive(Debug, Clone)]
pub struct Trust {
    config: Arc<ClientConfig>,
    /// How many of loongd's anchors parsed (the rest are skipped).
    pub extra: usize,
}

impl Trust {
    /// The public roots and the DER certificates loongd handed over (one that does not parse
    /// is skipped: a system store may hold a certificate webpki cannot use).
    pub fn new(extra: &[Vec<u8>]) -> Result<Trust, TrustError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let (added, _skipped) = roots.add_parsable_certificates(
            extra
                .iter()
                .map(|c| rustls::pki_types::CertificateDer::from(c.as_slice())),
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("the TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Trust {
            config: Arc::new(config),
            extra: added,
        })
    }
}

/// Starts TLS to `name` on the plain connection in `io` and completes the handshake within
/// the exchange's deadline.
pub(crate) fn handshake(io: &mut Timed, name: &str, trust: &Trust) -> Result<(), HttpError> {
    let fail = |reason: String| HttpError::Tls {
        host: name.to_string(),
        reason,
    };
    let server = ServerName::try_from(name.to_string())
        .map_err(|e| fail(format!("{name:?} is not a server name: {e}")))?;
    let conn =
        ClientConnection::new(trust.config.clone(), server).map_err(|e| fail(e.to_string()))?;
    let plain = std::mem::replace(&mut io.stream, Conn::Closed);
    let Conn::Plain(sock) = plain else {
        return Err(fail("TLS was started twice on one connection".into()));
    };
    io.stream = Conn::Tls(Box::new(rustls::StreamOwned::new(conn, sock)));
    loop {
        let left = io.left()?;
        let Conn::Tls(t) = &mut io.stream else {
            return Err(fail("the connection was lost during the handshake".into()));
        };
        if !t.conn.is_handshaking() {
            return Ok(());
        }
        t.sock.set_read_timeout(Some(left)).map_err(HttpError::Io)?;
        t.sock
            .set_write_timeout(Some(left))
            .map_err(HttpError::Io)?;
        match t.conn.complete_io(&mut t.sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(fail(
                    "the server closed the connection during the handshake".into(),
                ))
            }
            Err(e) => return Err(io.map(e)),
        }
    }
}

/// The reason a TLS error gives, as an operator reads it; `None` for an error that is not
/// TLS's.
pub(crate) fn reason(e: &io::Error) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(describe(tls))
}

/// One line per class of failure.
pub fn describe(e: &rustls::Error) -> String {
    let rustls::Error::InvalidCertificate(c) = e else {
        return format!("the server did not complete a TLS handshake: {e}");
    };
    match c {
        CertificateError::UnknownIssuer => "unknown issuer: the certificate is not signed by a trusted CA (for an internal CA, add it to [egress] ca_bundle)".into(),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("name mismatch: the certificate is not valid for this host ({c})")
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("expired: {c}")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("not valid yet: {c}")
        }
        CertificateError::Revoked => "revoked".into(),
        CertificateError::BadSignature => "bad signature on the certificate".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            format!("the certificate is not for a TLS server: {c}")
        }
        other => format!("invalid certificate: {other}"),
    }
}
