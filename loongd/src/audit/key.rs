//! The daemon's own signing key for audit checkpoints: 32 secret bytes in
//! `HOME/keys/audit.key` (mode 0600, created on first start), the public half beside it.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::AuditError;

/// The daemon's checkpoint key.
pub struct AuditKey {
    signing: SigningKey,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl AuditKey {
    /// Loads `DIR/audit.key`, creating it (and `audit.pub`) on first use.
    pub fn load_or_create(dir: &Path) -> Result<AuditKey, AuditError> {
        let io = |path: &Path| {
            let path: PathBuf = path.to_path_buf();
            move |source| AuditError::Key {
                path: path.clone(),
                source,
            }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let path = dir.join("audit.key");
        let signing = match fs::read(&path) {
            Ok(bytes) => {
                let secret: [u8; 32] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| AuditError::BadKey {
                            path: path.clone(),
                            len: bytes.len(),
                        })?;
                SigningKey::from_bytes(&secret)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                getrandom::getrandom(&mut secret).map_err(|e| AuditError::Key {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io(&path))?;
                f.write_all(&secret).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
                let key = SigningKey::from_bytes(&secret);
                let pubpath = dir.join("audit.pub");
                fs::write(&pubpath, hex::encode(key.verifying_key().as_bytes()))
                    .map_err(io(&pubpath))?;
                key
            }
            Err(e) => return Err(io(&path)(e)),
        };
        Ok(AuditKey { signing })
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// The public half.
    pub fn verifying(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// A short id: the first 8 bytes of sha256(public key), hex.
    pub fn id(&self) -> String {
        key_id(&self.verifying())
    }
}

/// The id of a public key.
pub fn key_id(k: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(k.as_bytes())[..8])
}
