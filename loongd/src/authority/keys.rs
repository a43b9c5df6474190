//! The trust-anchor keyring: ed25519 public keys that may sign policy data (risk profiles now;
//! plugin publishers later), each with a trust tier. Rotation: a new key is accepted only with
//! a signature by the key it replaces; revocation: a revoked or replaced key verifies nothing.
//! Private keys never reach loongd (loongctl generates and signs locally).

use std::path::Path;

use ed25519_dalek::{Signature, VerifyingKey};
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use super::{db::StateDb, tokens::TokenError};

/// Trust tiers a key may carry.
pub const TIERS: [&str; 2] = ["official", "verified-community"];

pub use loong_ipc::message::control::rotation_message;

/// A key's id: the first 8 bytes of sha256(public key), hex.
pub fn key_id(public: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// A keyring entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustKey {
    pub id: String,
    pub name: String,
    pub tier: String,
    pub public: String,
    pub added_ms: i64,
    pub revoked_ms: Option<i64>,
    pub replaced_by: Option<String>,
}

/// Why a keyring change was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Db(#[from] TokenError),
    #[error("public key must be 64 hex digits (32 bytes)")]
    BadPublic,
    #[error("tier must be official or verified-community")]
    BadTier,
    #[error("key {0} is already in the keyring")]
    Exists(String),
    #[error("no active key {0}")]
    NoSuchKey(String),
    #[error("the rotation signature does not verify under key {0}")]
    BadRotation(String),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS trust_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    tier TEXT NOT NULL,
    public TEXT NOT NULL,
    added_ms INTEGER NOT NULL,
    revoked_ms INTEGER,
    replaced_by TEXT
);
";

fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<TrustKey> {
    Ok(TrustKey {
        id: r.get(0)?,
        name: r.get(1)?,
        tier: r.get(2)?,
        public: r.get(3)?,
        added_ms: r.get(4)?,
        revoked_ms: r.get(5)?,
        replaced_by: r.get(6)?,
    })
}

const COLUMNS: &str = "id, name, tier, public, added_ms, revoked_ms, replaced_by";

/// Parses 64 hex digits into a public key.
pub fn parse_public(hex_text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = hex::decode(hex_text.trim()).map_err(|_| KeyError::BadPublic)?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::BadPublic)?;
    VerifyingKey::from_bytes(&arr).map_err(|_| KeyError::BadPublic)?;
    Ok(arr)
}

/// The keyring.
#[derive(Debug)]
pub struct Keyring {
    db: StateDb,
}

impl Keyring {
    /// Opens (creating) the table in `path`.
    pub fn open(path: &Path) -> Result<Keyring, TokenError> {
        Ok(Keyring {
            db: StateDb::open(path, SCHEMA)?,
        })
    }

    /// Adds a trust anchor.
    pub fn add(&self, name: &str, tier: &str, public_hex: &str) -> Result<TrustKey, KeyError> {
        if !TIERS.contains(&tier) {
            return Err(KeyError::BadTier);
        }
        let public = parse_public(public_hex)?;
        let id = key_id(&public);
        let exists = self.db.with(|c| {
            c.query_row("SELECT 1 FROM trust_keys WHERE id = ?1", [&id], |_| Ok(()))
                .optional()
        })?;
        if exists.is_some() {
            return Err(KeyError::Exists(id));
        }
        let k = TrustKey {
            id,
            name: name.into(),
            tier: tier.into(),
            public: hex::encode(public),
            added_ms: crate::now_ms(),
            revoked_ms: None,
            replaced_by: None,
        };
        self.db.with(|c| {
            c.execute(
                &format!(
                    "INSERT INTO trust_keys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL)"
                ),
                params![k.id, k.name, k.tier, k.public, k.added_ms],
            )
        })?;
        Ok(k)
    }

    /// Every key.
    pub fn list(&self) -> Result<Vec<TrustKey>, KeyError> {
        Ok(self.db.with(|c| {
            let mut s = c.prepare(&format!(
                "SELECT {COLUMNS} FROM trust_keys ORDER BY added_ms"
            ))?;
            let rows = s.query_map([], read)?;
            rows.collect()
        })?)
    }

    fn active(&self, id: &str) -> Result<TrustKey, KeyError> {
        self.db
            .with(|c| {
                c.query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM trust_keys WHERE id = ?1 AND revoked_ms IS NULL"
                    ),
                    [id],
                    read,
                )
                .optional()
            })?
            .ok_or_else(|| KeyError::NoSuchKey(id.into()))
    }

    /// Revokes a key.
    pub fn revoke(&self, id: &str) -> Result<(), KeyError> {
        self.active(id)?;
        self.db.with(|c| {
            c.execute(
                "UPDATE trust_keys SET revoked_ms = ?2 WHERE id = ?1",
                params![id, crate::now_ms()],
            )
        })?;
        Ok(())
    }

    /// Replaces key `old_id` by `new_public`, which the old key must have signed.
    pub fn rotate(
        &self,
        old_id: &str,
        new_public_hex: &str,
        signature_hex: &str,
    ) -> Result<TrustKey, KeyError> {
        let old = self.active(old_id)?;
        let new_public = parse_public(new_public_hex)?;
        let old_key = VerifyingKey::from_bytes(&parse_public(&old.public)?)
            .map_err(|_| KeyError::BadPublic)?;
        let sig = hex::decode(signature_hex.trim())
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
            .map(|b| Signature::from_bytes(&b));
        if sig.is_none_or(|s| {
            old_key
                .verify_strict(&rotation_message(&new_public), &s)
                .is_err()
        }) {
            return Err(KeyError::BadRotation(old_id.into()));
        }
        let new = self.add(&old.name, &old.tier, new_public_hex)?;
        self.db.with(|c| {
            c.execute(
                "UPDATE trust_keys SET revoked_ms = ?2, replaced_by = ?3 WHERE id = ?1",
                params![old_id, crate::now_ms(), new.id],
            )
        })?;
        Ok(new)
    }

    /// The active key that signed `message` with `signature`, if any.
    pub fn verifier(
        &self,
        message: &[u8],
        signature: &[u8; 64],
    ) -> Result<Option<TrustKey>, KeyError> {
        let sig = Signature::from_bytes(signature);
        for k in self.list()?.into_iter().filter(|k| k.revoked_ms.is_none()) {
            let public = parse_public(&k.public)?;
            if VerifyingKey::from_bytes(&public)
                .is_ok_and(|v| v.verify_strict(message, &sig).is_ok())
            {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }
}
