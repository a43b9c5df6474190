//! The capability-token table, persisted in `HOME/state.db` so tokens survive restarts.
//!
//! A token is a 128-bit random id; the table holds what it grants (always within its pack's
//! grants), for which agent, until when, and its pack's generation when it was issued. Bumping
//! a pack's generation revokes all of that pack's tokens at once.

use std::path::{Path, PathBuf};

use loong_profiles::pack::{Grant, Pack};
use rusqlite::{params, Connection, OptionalExtension};

/// Bounds on a token's lifetime.
pub const MIN_TTL_MS: i64 = 1_000;
pub const MAX_TTL_MS: i64 = 366 * 86_400_000;
/// Bound on an agent's name.
pub const MAX_AGENT_BYTES: usize = 128;
/// Most grants one token carries.
pub const MAX_TOKEN_GRANTS: usize = 64;

/// A token as the table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
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
    #[error("no randomness for a token id: {0}")]
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

/// The token table.
#[derive(Debug)]
pub struct TokenStore {
    db: super::db::StateDb,
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
";

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
        Ok(TokenStore {
            db: super::db::StateDb::open(path, SCHEMA)?,
        })
    }

    fn db<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, TokenError> {
        self.db.with(f)
    }

    /// The current generation of `pack`.
    pub fn generation(&self, pack: &str) -> Result<u64, TokenError> {
        self.db(|c| {
            c.query_row(
                "SELECT generation FROM pack_generations WHERE pack = ?1",
                [pack],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|g| g.unwrap_or(0) as u64)
        })
    }

    /// Issues a token for `agent` in `pack` with `grants` (each within the pack's grants).
    pub fn issue(
        &self,
        pack: &Pack,
        agent: &str,
        grants: Vec<Grant>,
        ttl_ms: i64,
    ) -> Result<Token, TokenError> {
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
        let mut raw = [0u8; 16];
        getrandom::getrandom(&mut raw).map_err(|e| TokenError::Random(e.to_string()))?;
        let now = crate::now_ms();
        let token = Token {
            id: hex::encode(raw),
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
                    "INSERT INTO tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)"
                ),
                params![
                    token.id,
                    token.pack,
                    token.agent,
                    text.join("\n"),
                    token.issued_ms,
                    token.expires_ms,
                    token.generation as i64
                ],
            )
        })?;
        Ok(token)
    }

    /// Every token, newest first.
    pub fn list(&self) -> Result<Vec<Token>, TokenError> {
        self.db(|c| {
            let mut s = c.prepare(&format!(
                "SELECT {COLUMNS} FROM tokens ORDER BY issued_ms DESC"
            ))?;
            let rows = s.query_map([], read_token)?;
            rows.collect()
        })
    }

    /// Revokes one token; `false` when there is no such token.
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

    /// The token `id` if it is valid now, else why not.
    pub fn check(&self, id: &str) -> Result<Result<Token, TokenDenial>, TokenError> {
        let found = self.db(|c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM tokens WHERE id = ?1"),
                [id],
                read_token,
            )
            .optional()
        })?;
        let Some(t) = found else {
            return Ok(Err(TokenDenial::Unknown));
        };
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
