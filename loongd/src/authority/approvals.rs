//! Approvals, persisted in `HOME/state.db`: requests that wait for an operator, and one-time
//! full-access windows (a scope, an expiry and a number of uses).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::tokens::TokenError;

/// Most uses a full-access window may carry.
pub const MAX_WINDOW_USES: u32 = 1000;
/// Longest a full-access window may last.
pub const MAX_WINDOW_TTL_MS: i64 = 86_400_000;

/// One approval request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub id: String,
    pub created_ms: i64,
    pub deadline_ms: i64,
    /// `pending`, `approved`, `denied` or `expired`.
    pub state: String,
    pub actor: String,
    pub pack: String,
    pub capability: String,
    pub target: String,
    pub score: u32,
    pub reasons: String,
    pub resolver: Option<String>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    actor TEXT NOT NULL,
    pack TEXT NOT NULL,
    capability TEXT NOT NULL,
    target TEXT NOT NULL,
    score INTEGER NOT NULL,
    reasons TEXT NOT NULL,
    resolver TEXT,
    resolved_ms INTEGER
);
CREATE TABLE IF NOT EXISTS windows (
    id TEXT PRIMARY KEY,
    pack TEXT,
    expires_ms INTEGER NOT NULL,
    uses_left INTEGER NOT NULL,
    creator TEXT NOT NULL
);
";

const COLUMNS: &str =
    "id, created_ms, deadline_ms, state, actor, pack, capability, target, score, reasons, resolver";

fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Approval> {
    Ok(Approval {
        id: r.get(0)?,
        created_ms: r.get(1)?,
        deadline_ms: r.get(2)?,
        state: r.get(3)?,
        actor: r.get(4)?,
        pack: r.get(5)?,
        capability: r.get(6)?,
        target: r.get(7)?,
        score: r.get::<_, i64>(8)? as u32,
        reasons: r.get(9)?,
        resolver: r.get(10)?,
    })
}

/// The approvals table.
#[derive(Debug)]
pub struct ApprovalStore {
    db: super::db::StateDb,
}

fn random_id() -> Result<String, TokenError> {
    let mut raw = [0u8; 8];
    getrandom::getrandom(&mut raw).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(hex::encode(raw))
}

impl ApprovalStore {
    /// Opens (creating) the tables in `path`.
    pub fn open(path: &Path) -> Result<ApprovalStore, TokenError> {
        Ok(ApprovalStore {
            db: super::db::StateDb::open(path, SCHEMA)?,
        })
    }

    fn db<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, TokenError> {
        self.db.with(f)
    }

    /// Records a pending request that expires at `deadline_ms`.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        actor: &str,
        pack: &str,
        capability: &str,
        target: &str,
        score: u32,
        reasons: &str,
        deadline_ms: i64,
    ) -> Result<Approval, TokenError> {
        let a = Approval {
            id: random_id()?,
            created_ms: crate::now_ms(),
            deadline_ms,
            state: "pending".into(),
            actor: actor.into(),
            pack: pack.into(),
            capability: capability.into(),
            target: target.into(),
            score,
            reasons: reasons.into(),
            resolver: None,
        };
        self.db(|c| {
            c.execute(
                &format!("INSERT INTO approvals ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL)"),
                params![a.id, a.created_ms, a.deadline_ms, a.state, a.actor, a.pack, a.capability, a.target, a.score, a.reasons],
            )
        })?;
        Ok(a)
    }

    /// The request `id`.
    pub fn get(&self, id: &str) -> Result<Option<Approval>, TokenError> {
        self.db(|c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"),
                [id],
                read,
            )
            .optional()
        })
    }

    /// Every request, pending first, newest first.
    pub fn list(&self) -> Result<Vec<Approval>, TokenError> {
        self.db(|c| {
            let mut s = c.prepare(&format!("SELECT {COLUMNS} FROM approvals ORDER BY state != 'pending', created_ms DESC LIMIT 1000"))?;
            let rows = s.query_map([], read)?;
            rows.collect()
        })
    }

    /// Moves a pending request to `state` (approved, denied, expired); `None` if it was not
    /// pending.
    pub fn resolve(
        &self,
        id: &str,
        state: &str,
        resolver: &str,
    ) -> Result<Option<Approval>, TokenError> {
        let n = self.db(|c| {
            c.execute(
                "UPDATE approvals SET state = ?2, resolver = ?3, resolved_ms = ?4 WHERE id = ?1 AND state = 'pending'",
                params![id, state, resolver, crate::now_ms()],
            )
        })?;
        if n == 0 {
            return Ok(None);
        }
        self.get(id)
    }

    /// Expires pending requests whose deadline passed (their waiter gave up or is gone).
    pub fn expire_overdue(&self) -> Result<usize, TokenError> {
        self.db(|c| {
            c.execute(
                "UPDATE approvals SET state = 'expired', resolver = 'loongd', resolved_ms = ?1 WHERE state = 'pending' AND deadline_ms <= ?1",
                [crate::now_ms()],
            )
        })
    }

    /// Expires every pending request (their waiters died with the previous daemon).
    pub fn expire_all_pending(&self) -> Result<Vec<String>, TokenError> {
        self.db(|c| {
            let ids: Vec<String> = {
                let mut s = c.prepare("SELECT id FROM approvals WHERE state = 'pending'")?;
                let rows = s.query_map([], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            c.execute("UPDATE approvals SET state = 'expired', resolver = 'loongd', resolved_ms = ?1 WHERE state = 'pending'", [crate::now_ms()])?;
            Ok(ids)
        })
    }

    /// Opens a full-access window for `pack` (every pack when `None`).
    pub fn open_window(
        &self,
        pack: Option<&str>,
        ttl_ms: i64,
        uses: u32,
        creator: &str,
    ) -> Result<String, TokenError> {
        let id = random_id()?;
        self.db(|c| c.execute("INSERT INTO windows (id, pack, expires_ms, uses_left, creator) VALUES (?1, ?2, ?3, ?4, ?5)", params![id, pack, crate::now_ms() + ttl_ms, uses, creator]))?;
        Ok(id)
    }

    /// Spends one use of a live window covering `pack`; its id, or `None`.
    pub fn take_window_use(&self, pack: &str) -> Result<Option<String>, TokenError> {
        self.db(|c| {
            let id: Option<String> = c
                .query_row(
                    "SELECT id FROM windows WHERE (pack IS NULL OR pack = ?1) AND uses_left > 0 AND expires_ms > ?2 ORDER BY expires_ms LIMIT 1",
                    params![pack, crate::now_ms()],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = &id {
                c.execute("UPDATE windows SET uses_left = uses_left - 1 WHERE id = ?1 AND uses_left > 0", [id])?;
            }
            Ok(id)
        })
    }
}
