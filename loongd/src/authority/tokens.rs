//! The capability-token table, persisted in `HOME/state.db` so tokens survive restarts.
//!
//! A token has two names. Its public id (`tok_` and 128 random bits in hex) is what records,
//! lists, revocation and the audit trail use. Its bearer secret (`loong_` and 256 random bits
//! in hex) is what a caller presents; it is shown once, when the token is issued, and the
//! table keeps only its sha256. The table also holds what the token grants (always within its
//! pack's grants), for which agent, until when, and its pack's generation when it was issued.
//! Bumping a pack's generation revokes all of that pack's tokens at once.
//!
//! A table written before the split (where the id was the secret, and so sits in the audit
//! trail) is migrated on open: those rows keep their id, get no secret hash (so no presented
//! secret ever matches them) and are revoked by [`TokenStore::retire_old_format`], which
//! loongd audits at startup.

use std::path::{Path, PathBuf};

use loong_ipc::BearerSecret;
use loong_profiles::pack::{Grant, Pack};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

/// Bounds on a token's lifetime.
pub const MIN_TTL_MS: i64 = 1_000;
pub const MAX_TTL_MS: i64 = 366 * 86_400_000;
/// Bound on an agent's name.
pub const MAX_AGENT_BYTES: usize = 128;
/// Most grants one token carries.
pub const MAX_TOKEN_GRANTS: usize = 64;
/// What a public token id starts with.
pub const ID_PREFIX: &str = "tok_";
/// What a bearer secret starts with.
pub const SECRET_PREFIX: &str = loong_ipc::message::control::BEARER_SECRET_PREFIX;
/// Random bytes in a public id.
pub const ID_BYTES: usize = 16;
/// Random bytes in a bearer secret.
pub const SECRET_BYTES: usize = 32;

/// A token as the table holds it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The public id.
    pub id: String,
    pub pack: String,
    pub agent: String,
    pub grants: Vec<Grant>,
    pub issued_ms: i64,
    pub expires_ms: i64,
    pub generation: u64,
    pub revoked_ms: Option<i64>,
}

/// Why a presented token is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenDenial {
    #[error("unknown token")]
    Unknown,
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
    #[error("token of generation {token} is below its pack's generation {pack} (revoked with the generation)")]
    StaleGeneration { token: u64, pack: u64 },
}

/// Why a token could not be issued or changed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("state database {}: {source}", path.display())]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("no randomness for a token id or secret: {0}")]
    Random(String),
    #[error("--ttl must be between 1s and 366d")]
    Ttl,
    #[error("agent name must be 1 to {MAX_AGENT_BYTES} bytes")]
    Agent,
    #[error("a token carries 1 to {MAX_TOKEN_GRANTS} capabilities")]
    GrantCount,
    #[error("pack `{pack}` does not grant {grant}; a token's capabilities are always within its pack's grants")]
    NotInPack { pack: String, grant: String },
}

/// A token just issued, with its bearer secret: the only time loongd holds the secret (as a
/// [`BearerSecret`], so a `Debug` of this, in a log line or a failed test, never shows it).
#[derive(Debug)]
pub struct Issued {
    pub token: Token,
    pub secret: BearerSecret,
}

/// The token table.
#[derive(Debug)]
pub struct TokenStore {
    db: super::db::StateDb,
}

/// The stored form of a bearer secret.
fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn random_hex(n: usize) -> Result<String, TokenError> {
    let mut raw = vec![0u8; n];
    getrandom::getrandom(&mut raw).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(hex::encode(raw))
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    pack TEXT NOT NULL,
    agent TEXT NOT NULL,
    grants TEXT NOT NULL,
    issued_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE TABLE IF NOT EXISTS pack_generations (pack TEXT PRIMARY KEY, generation INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tokens_newest_first ON tokens (issued_ms DESC, id);
";

/// Columns added since the table was first written: `(name, declaration)`.
const ADDED_COLUMNS: &[(&str, &str)] = &[("secret_sha256", "TEXT")];

const INDEXES: &str = "CREATE UNIQUE INDEX IF NOT EXISTS tokens_secret ON tokens (secret_sha256);";

fn read_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<Token> {
    let grants: String = r.get(3)?;
    Ok(Token {
        id: r.get(0)?,
        pack: r.get(1)?,
        agent: r.get(2)?,
        // Written by this module only; a line that no longer parses grants nothing.
        grants: grants
            .lines()
            .filter_map(|g| Grant::parse(g).ok())
            .collect(),
        issued_ms: r.get(4)?,
        expires_ms: r.get(5)?,
        generation: r.get::<_, i64>(6)? as u64,
        revoked_ms: r.get(7)?,
    })
}

const COLUMNS: &str = "id, pack, agent, grants, issued_ms, expires_ms, generation, revoked_ms";

impl TokenStore {
    /// Opens (creating) the table in `path`.
    pub fn open(path: &Path) -> Result<TokenStore, TokenError> {
        let db = super::db::StateDb::open(path, SCHEMA)?;
        db.add_columns("tokens", ADDED_COLUMNS)?;
        db.with(|c| c.execute_batch(INDEXES))?;
        Ok(TokenStore { db })
    }

    /// Revokes every live token written before ids and secrets were split (its id was its
    /// secret, and is in the audit trail); returns their ids, for loongd to audit.
    pub fn retire_old_format(&self) -> Result<Vec<String>, TokenError> {
        self.db(|c| {
            let ids: Vec<String> = {
                let mut s = c.prepare(
                    "SELECT id FROM tokens WHERE secret_sha256 IS NULL AND revoked_ms IS NULL",
                )?;
                let rows = s.query_map([], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            c.execute(
                "UPDATE tokens SET revoked_ms = ?1 WHERE secret_sha256 IS NULL AND revoked_ms IS NULL",
                [crate::now_ms()],
            )?;
            Ok(ids)
        })
    }

    fn db<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, TokenError> {
        self.db.with(f)
    }

    /// The current generation of `pack`.
    pub fn generation(&self, pack: &str) -> Result<u64, TokenError> {
        // Prepared once per connection: every token check (each kernel call of a gateway
        // request, each decision) reads it.
        self.db(|c| {
            c.prepare_cached("SELECT generation FROM pack_generations WHERE pack = ?1")?
                .query_row([pack], |r| r.get::<_, i64>(0))
                .optional()
                .map(|g| g.unwrap_or(0) as u64)
        })
    }

    /// Issues a token for `agent` in `pack` with `grants` (each within the pack's grants);
    /// the answer carries its secret, which the table does not keep.
    pub fn issue(
        &self,
        pack: &Pack,
        agent: &str,
        grants: Vec<Grant>,
        ttl_ms: i64,
    ) -> Result<Issued, TokenError> {
        if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
            return Err(TokenError::Ttl);
        }
        if agent.is_empty() || agent.len() > MAX_AGENT_BYTES {
            return Err(TokenError::Agent);
        }
        if grants.is_empty() || grants.len() > MAX_TOKEN_GRANTS {
            return Err(TokenError::GrantCount);
        }
        if let Some(g) = grants.iter().find(|g| !pack.covers(g)) {
            return Err(TokenError::NotInPack {
                pack: pack.id.clone(),
                grant: g.to_string(),
            });
        }
        let secret = format!("{SECRET_PREFIX}{}", random_hex(SECRET_BYTES)?);
        let now = crate::now_ms();
        let token = Token {
            id: format!("{ID_PREFIX}{}", random_hex(ID_BYTES)?),
            pack: pack.id.clone(),
            agent: agent.to_string(),
            grants,
            issued_ms: now,
            expires_ms: now + ttl_ms,
            generation: self.generation(&pack.id)?,
            revoked_ms: None,
        };
        let text: Vec<String> = token.grants.iter().map(ToString::to_string).collect();
        self.db(|c| {
            c.execute(
                &format!(
                    "INSERT INTO tokens ({COLUMNS}, secret_sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8)"
                ),
                params![
                    token.id,
                    token.pack,
                    token.agent,
                    text.join("\n"),
                    token.issued_ms,
                    token.expires_ms,
                    token.generation as i64,
                    secret_hash(&secret),
                ],
            )
        })?;
        Ok(Issued {
            token,
            secret: BearerSecret::new(secret),
        })
    }

    /// Every token, newest first.
    /// At most `limit` tokens, newest first, after the token `after` in that order (from the
    /// newest when `None`; nothing when `after` names no token).
    pub fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Token>, TokenError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db(|c| {
            let mut s = c.prepare(&format!(
                "SELECT {COLUMNS} FROM tokens
                 WHERE ?1 IS NULL
                    OR (-issued_ms, id) > (SELECT -issued_ms, id FROM tokens WHERE id = ?1)
                 ORDER BY issued_ms DESC, id LIMIT ?2"
            ))?;
            let rows = s.query_map(params![after, limit], read_token)?;
            rows.collect()
        })
    }

    /// Revokes one token by its public id; `false` when there is no such live token.
    pub fn revoke(&self, id: &str) -> Result<bool, TokenError> {
        self.db(|c| {
            c.execute(
                "UPDATE tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, crate::now_ms()],
            )
        })
        .map(|n| n > 0)
    }

    /// Bumps `pack`'s generation, revoking every token issued before; returns the new one.
    pub fn bump_generation(&self, pack: &str) -> Result<u64, TokenError> {
        self.db(|c| {
            c.execute(
                "INSERT INTO pack_generations (pack, generation) VALUES (?1, 1) ON CONFLICT(pack) DO UPDATE SET generation = generation + 1",
                [pack],
            )?;
            c.query_row("SELECT generation FROM pack_generations WHERE pack = ?1", [pack], |r| r.get::<_, i64>(0)).map(|g| g as u64)
        })
    }

    /// The token whose bearer secret is `secret`, if it is valid now, else why not.
    pub fn check(&self, secret: &str) -> Result<Result<Token, TokenDenial>, TokenError> {
        let hash = secret_hash(secret);
        self.check_where("secret_sha256", &hash)
    }

    /// The public id of the token whose secret is `secret`, live or not (`None`: no token).
    pub fn id_of(&self, secret: &str) -> Result<Option<String>, TokenError> {
        let hash = secret_hash(secret);
        crate::metrics::token_looked_up();
        self.db(|c| {
            c.query_row(
                "SELECT id FROM tokens WHERE secret_sha256 = ?1",
                [hash],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// The token with public id `id`, if it is valid now, else why not (for re-checking the
    /// authority behind a request that waited, where loongd kept only the id).
    pub fn check_id(&self, id: &str) -> Result<Result<Token, TokenDenial>, TokenError> {
        self.check_where("id", id)
    }

    fn check_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Result<Token, TokenDenial>, TokenError> {
        // Prepared once per connection and column (the statement cache): a token is checked
        // on every kernel call a gateway request makes and every decision.
        crate::metrics::token_looked_up();
        let found = self.db(|c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM tokens WHERE {column} = ?1"))?
                .query_row([value], read_token)
                .optional()
        })?;
        let Some(t) = found else {
            return Ok(Err(TokenDenial::Unknown));
        };
        self.validity(t)
    }

    /// `t` if it is valid now, else why not.
    fn validity(&self, t: Token) -> Result<Result<Token, TokenDenial>, TokenError> {
        if t.revoked_ms.is_some() {
            return Ok(Err(TokenDenial::Revoked));
        }
        if t.expires_ms <= crate::now_ms() {
            return Ok(Err(TokenDenial::Expired));
        }
        let pack_gen = self.generation(&t.pack)?;
        if t.generation < pack_gen {
            return Ok(Err(TokenDenial::StaleGeneration {
                token: t.generation,
                pack: pack_gen,
            }));
        }
        Ok(Ok(t))
    }
}

/// Who an agent's name names, for separation of duties: its letters in lower case, without
/// whitespace, controls or the invisible characters that only change how a name looks
/// (soft hyphen, zero-width and bidi marks, joiners, variation selectors, tags). Tokens for
/// "bot", "Bot" and "bot\u{200b}" are one agent's, which cannot approve its own requests.
pub fn agent_key(name: &str) -> String {
    name.chars()
        .filter(|c| {
            let u = *c as u32;
            !(c.is_whitespace()
                || c.is_control()
                || matches!(
                    u,
                    0x00AD
                        | 0x034F
                        | 0x061C
                        | 0x115F..=0x1160
                        | 0x180B..=0x180F
                        | 0x200B..=0x200F
                        | 0x202A..=0x202E
                        | 0x2060..=0x206F
                        | 0x3164
                        | 0xFE00..=0xFE0F
                        | 0xFEFF
                        | 0xFFA0
                        | 0x1D173..=0x1D17A
                        | 0xE0000..=0xE0FFF
                ))
        })
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_that_read_alike_are_one_agent() {
        for alike in [
            "Bot",
            "BOT",
            " bot",
            "bot\u{200b}",
            "b\u{200d}ot",
            "bot\u{fe0f}",
            "\u{202e}bot",
        ] {
            assert_eq!(agent_key(alike), agent_key("bot"), "{alike:?}");
        }
        // Positive control: other names stay apart.
        for other in ["bot2", "robot", "b-ot", "bøt"] {
            assert_ne!(agent_key(other), agent_key("bot"), "{other:?}");
        }
    }

    fn pack() -> Pack {
        Pack {
            id: "p".into(),
            domain: "d".into(),
            version: "1".into(),
            summary: String::new(),
            grants: vec![Grant::parse("fs.read:/a").expect("grant")],
            connectors: Vec::new(),
            approval: "never".into(),
        }
    }

    #[test]
    fn a_token_is_presented_by_its_secret_and_named_by_its_id() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("state.db");
        let store = TokenStore::open(&path).expect("open");
        let grants = vec![Grant::parse("fs.read:/a").expect("grant")];
        let issued = store.issue(&pack(), "bot", grants, 60_000).expect("issue");
        let (id, secret) = (issued.token.id.clone(), issued.secret.expose().to_string());
        assert!(id.starts_with(ID_PREFIX) && id.len() == ID_PREFIX.len() + 2 * ID_BYTES);
        assert!(
            secret.starts_with(SECRET_PREFIX)
                && secret.len() == SECRET_PREFIX.len() + 2 * SECRET_BYTES
        );
        // Printing what issue returned (a log line, a failed assertion) never shows it.
        assert!(!format!("{issued:?}").contains(&secret[SECRET_PREFIX.len()..]));
        // The secret opens it; the public id does not; the id finds it for a re-check.
        assert_eq!(
            store.check(&secret).expect("check").map(|t| t.id),
            Ok(id.clone())
        );
        assert_eq!(store.check(&id).expect("check"), Err(TokenDenial::Unknown));
        assert_eq!(
            store.check_id(&id).expect("check").map(|t| t.id),
            Ok(id.clone())
        );
        assert_eq!(
            store.check_id(&secret).expect("check"),
            Err(TokenDenial::Unknown)
        );
        assert_eq!(store.id_of(&secret).expect("id"), Some(id.clone()));
        // The table keeps only the secret's hash.
        drop(store);
        let bytes = [&path, &dir.path().join("state.db-wal")]
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .flatten()
            .collect::<Vec<u8>>();
        let hex = &secret[SECRET_PREFIX.len()..];
        assert!(
            !String::from_utf8_lossy(&bytes).contains(hex),
            "the secret is stored"
        );
        assert!(String::from_utf8_lossy(&bytes).contains(&secret_hash(&secret)));
    }

    #[test]
    fn old_format_rows_are_migrated_and_retired() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("state.db");
        // A table as loongd wrote it before the split: the id was the bearer secret.
        let old = "00112233445566778899aabbccddeeff";
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(SCHEMA.replace("IF NOT EXISTS ", "").as_str())
                .expect("old schema");
            c.execute(
                &format!("INSERT INTO tokens ({COLUMNS}) VALUES (?1, 'p', 'bot', 'fs.read:/a', 0, ?2, 0, NULL)"),
                params![old, i64::MAX],
            )
            .expect("old row");
        }
        let store = TokenStore::open(&path).expect("migrates");
        // Presented as before, it opens nothing, even before it is retired.
        assert_eq!(store.check(old).expect("check"), Err(TokenDenial::Unknown));
        assert_eq!(
            store.retire_old_format().expect("retire"),
            vec![old.to_string()]
        );
        assert_eq!(
            store.check_id(old).expect("check"),
            Err(TokenDenial::Revoked)
        );
        assert!(store.retire_old_format().expect("again").is_empty(), "once");
        // Positive control: a token issued after the migration works.
        let grants = vec![Grant::parse("fs.read:/a").expect("grant")];
        let issued = store.issue(&pack(), "bot", grants, 60_000).expect("issue");
        assert!(store.check(issued.secret.expose()).expect("check").is_ok());
        // Opening again keeps the migrated table as it is.
        drop(store);
        let again = TokenStore::open(&path).expect("reopen");
        assert_eq!(again.list(None, 10).expect("list").len(), 2);
    }
}
