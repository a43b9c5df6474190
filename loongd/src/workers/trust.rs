//! The trust anchors loongd hands its HTTP workers, which run TLS themselves (loongd never
//! does): the host's system store and the operator's `[egress] ca_bundle`, read once at
//! start as DER certificates. The public roots (webpki-roots) are compiled into the worker.
//! A worker is confined without a file system, so it cannot read these itself.

use std::{path::Path, sync::OnceLock};

use loong_ipc::message::worker::{MAX_CERT_BYTES, MAX_TRUST_BYTES, MAX_TRUST_CERTS};
use rustls_pki_types::{pem::PemObject, CertificateDer};

static ANCHORS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();

/// Largest `[egress] ca_bundle` read: the trust bound in PEM (base64 and armour) with room.
pub const MAX_CA_BUNDLE_BYTES: u64 = 2 * MAX_TRUST_BYTES as u64;

/// Why the operator's CA bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("[egress] ca_bundle {path}: {why}; give a readable PEM file of CA certificates")]
    Bundle { path: String, why: String },
}

/// Reads the operator's bundle (every certificate in it, or an error naming the file) and
/// the system store (what it has; a store that cannot be read is logged and skipped), and
/// keeps them for every HTTP worker started from now on. The bundle comes first, so that the
/// bound ([`MAX_TRUST_CERTS`]) never drops one of the operator's certificates.
pub(crate) fn load(ca_bundle: Option<&Path>) -> Result<usize, TrustError> {
    let mut anchors = Vec::new();
    if let Some(path) = ca_bundle {
        let bad = |why: String| TrustError::Bundle {
            path: path.display().to_string(),
            why,
        };
        let text = read_bundle(path).map_err(bad)?;
        for cert in CertificateDer::pem_slice_iter(&text) {
            let cert = cert.map_err(|e| bad(format!("a certificate does not parse: {e}")))?;
            if cert.len() > MAX_CERT_BYTES {
                return Err(bad(format!(
                    "a certificate is over the {MAX_CERT_BYTES}-byte limit"
                )));
            }
            anchors.push(cert.to_vec());
        }
        if anchors.is_empty() {
            return Err(bad("it holds no PEM certificate".into()));
        }
        let bytes: usize = anchors.iter().map(Vec::len).sum();
        if anchors.len() > MAX_TRUST_CERTS || bytes > MAX_TRUST_BYTES {
            return Err(bad(format!(
                "over {MAX_TRUST_CERTS} certificates or {MAX_TRUST_BYTES} bytes"
            )));
        }
    }
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        tracing::warn!(error = %e, "a part of the system trust store could not be read; it is skipped");
    }
    let mut bytes: usize = anchors.iter().map(Vec::len).sum();
    for cert in system.certs {
        if anchors.len() >= MAX_TRUST_CERTS || bytes + cert.len() > MAX_TRUST_BYTES {
            tracing::warn!(
                limit = MAX_TRUST_CERTS,
                "the system trust store has more certificates than an HTTP worker takes; the rest are skipped"
            );
            break;
        }
        if cert.len() <= MAX_CERT_BYTES {
            bytes += cert.len();
            anchors.push(cert.to_vec());
        }
    }
    let n = anchors.len();
    // A second load (a unit test's second daemon) keeps the first: the process has one.
    let _ = ANCHORS.set(anchors);
    Ok(n)
}

/// The bundle's bytes: a regular file (a FIFO or a device would hang or grow the start)
/// within [`MAX_CA_BUNDLE_BYTES`].
fn read_bundle(path: &Path) -> Result<Vec<u8>, String> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    let mut text = Vec::new();
    file.take(MAX_CA_BUNDLE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_CA_BUNDLE_BYTES {
        return Err(format!("it is over the {MAX_CA_BUNDLE_BYTES}-byte limit"));
    }
    Ok(text)
}

/// The anchors an HTTP worker gets beside the compiled-in public roots.
pub(crate) fn anchors() -> Vec<Vec<u8>> {
    ANCHORS.get().cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_that_is_not_a_bounded_regular_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("dir");
        let fifo = dir.path().join("ca.pem");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        let err = read_bundle(&fifo).expect_err("a fifo");
        assert!(err.contains("not a regular file"), "{err}");
        let err = read_bundle(Path::new("/dev/zero")).expect_err("a device");
        assert!(err.contains("not a regular file"), "{err}");
        let big = dir.path().join("big.pem");
        let f = std::fs::File::create(&big).expect("big");
        f.set_len(MAX_CA_BUNDLE_BYTES + 1).expect("grow");
        let err = read_bundle(&big).expect_err("too big");
        assert!(err.contains("byte limit"), "{err}");
        // The control: a regular file within the bound is read.
        let ok = dir.path().join("ok.pem");
        std::fs::write(&ok, "x").expect("ok");
        assert_eq!(read_bundle(&ok).expect("a file"), b"x");
    }
}
