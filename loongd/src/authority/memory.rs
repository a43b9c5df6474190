//! The agent's memory: each session's messages in `HOME/state.db` (table `agent_messages`,
//! added by state.db schema version 2), oldest first by sequence number. A turn is sent the
//! session's last [`WINDOW_TURNS`] turns (each from a user message up to the next), and what
//! it adds is appended in one transaction, so a turn is kept whole or not at all. Reading
//! and writing are decided as `memory.read` / `memory.write` on the session by the caller
//! (`control::agent_api`).

use std::path::Path;

use rusqlite::{params, OptionalExtension};

use super::{db::StateDb, tokens::TokenError};

/// Recent turns sent with each new one (the rolling summary of older turns is not made
/// yet: they stay in the table, shown by `loongctl memory show`, and are not sent).
pub const WINDOW_TURNS: u32 = 8;
/// The most messages `memory show` returns.
pub const MAX_SHOWN_MESSAGES: u32 = 10_000;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS agent_messages (
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    json TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (session, seq)
);";

/// The statement of state.db's schema step from version 1 to 2.
pub const SCHEMA_STEP: &str = SCHEMA;

/// One kept message: its number, role and JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub seq: u64,
    pub role: String,
    pub json: String,
}

/// The sessions' messages.
#[derive(Debug)]
pub struct MemoryStore {
    db: StateDb,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl MemoryStore {
    /// Opens the table in `path`.
    pub fn open(path: &Path) -> Result<MemoryStore, TokenError> {
        Ok(MemoryStore {
            db: StateDb::open(path, SCHEMA)?,
        })
    }

    /// The session's last [`WINDOW_TURNS`] turns, oldest first.
    pub fn window(&self, session: &str) -> Result<Vec<Kept>, TokenError> {
        self.db.with(|c| {
            let start: i64 = c
                .query_row(
                    "SELECT seq FROM agent_messages WHERE session = ?1 AND role = 'user'
                     ORDER BY seq DESC LIMIT 1 OFFSET ?2",
                    params![session, WINDOW_TURNS - 1],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            let mut s = c.prepare(
                "SELECT seq, role, json FROM agent_messages WHERE session = ?1 AND seq >= ?2
                 ORDER BY seq",
            )?;
            let rows = s.query_map(params![session, start], kept)?;
            rows.collect()
        })
    }

    /// Appends `messages` (role, JSON) to the session, in one transaction.
    pub fn append(&self, session: &str, messages: &[(String, String)]) -> Result<(), TokenError> {
        self.db.with(|c| {
            let tx = c.unchecked_transaction()?;
            let next: i64 = tx.query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM agent_messages WHERE session = ?1",
                params![session],
                |r| r.get(0),
            )?;
            let at = now_ms();
            for (i, (role, json)) in messages.iter().enumerate() {
                let seq = next.saturating_add(i64::try_from(i).unwrap_or(i64::MAX));
                tx.execute(
                    "INSERT INTO agent_messages (session, seq, role, json, at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![session, seq, role, json, at],
                )?;
            }
            tx.commit()
        })
    }

    /// The sessions after `after`, by id: each with its message count and last change
    /// (Unix seconds).
    pub fn sessions(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, u64, i64)>, TokenError> {
        self.db.with(|c| {
            let mut s = c.prepare(
                "SELECT session, COUNT(*), MAX(at_ms) FROM agent_messages WHERE session > ?1
                 GROUP BY session ORDER BY session LIMIT ?2",
            )?;
            let rows = s.query_map(params![after.unwrap_or(""), limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?.unsigned_abs(),
                    r.get::<_, i64>(2)? / 1000,
                ))
            })?;
            rows.collect()
        })
    }

    /// The session's messages, oldest first (at most [`MAX_SHOWN_MESSAGES`]).
    pub fn show(&self, session: &str) -> Result<Vec<Kept>, TokenError> {
        self.db.with(|c| {
            let mut s = c.prepare(
                "SELECT seq, role, json FROM agent_messages WHERE session = ?1
                 ORDER BY seq LIMIT ?2",
            )?;
            let rows = s.query_map(params![session, MAX_SHOWN_MESSAGES], kept)?;
            rows.collect()
        })
    }

    /// Forgets the session; how many messages it had.
    pub fn clear(&self, session: &str) -> Result<u64, TokenError> {
        self.db.with(|c| {
            c.execute(
                "DELETE FROM agent_messages WHERE session = ?1",
                params![session],
            )
            .map(|n| n as u64)
        })
    }
}

fn kept(r: &rusqlite::Row<'_>) -> rusqlite::Result<Kept> {
    Ok(Kept {
        seq: r.get::<_, i64>(0)?.unsigned_abs(),
        role: r.get(1)?,
        json: r.get(2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window is the last turns whole, from a user message on; clear forgets them.
    #[test]
    fn the_window_is_the_last_turns_from_a_user_message_on() {
        let dir = tempfile::tempdir().expect("dir");
        let store = MemoryStore::open(&dir.path().join("state.db")).expect("open");
        for turn in 0..WINDOW_TURNS + 2 {
            store
                .append(
                    "s1",
                    &[
                        ("user".into(), format!("{{\"n\":{turn}}}")),
                        ("assistant".into(), "{}".into()),
                    ],
                )
                .expect("append");
        }
        store
            .append("s2", &[("user".into(), "{}".into())])
            .expect("append");
        let window = store.window("s1").expect("window");
        assert_eq!(window.len(), 2 * WINDOW_TURNS as usize);
        assert_eq!(window[0].role, "user");
        assert_eq!(window[0].json, "{\"n\":2}");
        assert_eq!(
            store.show("s1").expect("show").len(),
            2 * (WINDOW_TURNS as usize + 2)
        );
        let sessions = store.sessions(None, 10).expect("sessions");
        assert_eq!(sessions.len(), 2);
        assert_eq!(
            store.clear("s1").expect("clear"),
            2 * (u64::from(WINDOW_TURNS) + 2)
        );
        assert!(store.window("s1").expect("window").is_empty());
        assert_eq!(store.window("s2").expect("window").len(), 1);
    }
}
