//! The agent's memory: each session's messages in `HOME/state.db` (table `agent_messages`,
//! added by state.db schema version 2), oldest first by sequence number, and its rolling
//! summary (table `agent_summaries`, version 4). A turn is sent the summary and the turns
//! after it (each from a user message up to the next); when those reach
//! [`WINDOW_TURNS`] + [`SUMMARY_BATCH_TURNS`], all but the last [`WINDOW_TURNS`] are folded:
//! the model is asked to summarise them into the summary ([`Recall::fold`]), and the new
//! summary is kept with the turn's messages, in one transaction, so a turn and its summary
//! are kept whole or not at all. Reading and writing are decided as `memory.read` /
//! `memory.write` on the session by the caller (`control::agent_api`).

use std::path::Path;

use rusqlite::{params, OptionalExtension};

use super::{db::StateDb, tokens::TokenError};

/// Recent turns always sent whole with each new one (older ones are in the summary; they
/// stay in the table, shown by `loongctl memory show`).
pub const WINDOW_TURNS: u32 = 8;
/// Turns past the window that wait before they are folded into the summary together (one
/// summary call per this many turns, not one per turn).
pub const SUMMARY_BATCH_TURNS: u32 = 4;
/// The most bytes of messages (as JSON) one fold sends to be summarised; older ones past it
/// are left out of the summary (they stay in the table).
pub const MAX_FOLD_BYTES: usize = 256 << 10;
/// The most messages one fold reads.
const MAX_FOLD_MESSAGES: u32 = 4096;
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

const SUMMARY_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS agent_summaries (
    session TEXT PRIMARY KEY,
    summary TEXT NOT NULL,
    through_seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
);";

/// The statement of state.db's schema step from version 1 to 2.
pub const SCHEMA_STEP: &str = SCHEMA;
/// The statement of state.db's schema step from version 3 to 4: the rolling summaries.
pub const SUMMARY_SCHEMA_STEP: &str = SUMMARY_SCHEMA;

/// What a turn recalls of its session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recall {
    /// The summary of the turns before `window`'s (and before `fold`'s).
    pub summary: Option<String>,
    /// The turns sent whole, oldest first.
    pub window: Vec<Kept>,
    /// Turns to fold into the summary now (empty: none), oldest first.
    pub fold: Vec<Kept>,
    /// The last sequence number the new summary covers, when `fold` is not empty.
    pub fold_through: Option<u64>,
}

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
            db: StateDb::open(path, &format!("{SCHEMA}\n{SUMMARY_SCHEMA}"))?,
        })
    }

    /// The session's summary and the turns after it: all of them while they are fewer than
    /// [`WINDOW_TURNS`] + [`SUMMARY_BATCH_TURNS`], else the last [`WINDOW_TURNS`] to send and
    /// the ones before them to fold (at most [`MAX_FOLD_BYTES`], the most recent kept).
    pub fn recall(&self, session: &str) -> Result<Recall, TokenError> {
        self.db.with(|c| {
            let (summary, through) = c
                .query_row(
                    "SELECT summary, through_seq FROM agent_summaries WHERE session = ?1",
                    params![session],
                    |r| Ok((Some(r.get::<_, String>(0)?), r.get::<_, i64>(1)?)),
                )
                .optional()?
                .unwrap_or((None, 0));
            let turns: i64 = c.query_row(
                "SELECT COUNT(*) FROM agent_messages WHERE session = ?1 AND role = 'user'
                 AND seq > ?2",
                params![session, through],
                |r| r.get(0),
            )?;
            let mut recall = Recall {
                summary,
                ..Recall::default()
            };
            let mut start = through + 1;
            if turns >= i64::from(WINDOW_TURNS + SUMMARY_BATCH_TURNS) {
                start = c.query_row(
                    "SELECT seq FROM agent_messages WHERE session = ?1 AND role = 'user'
                     ORDER BY seq DESC LIMIT 1 OFFSET ?2",
                    params![session, WINDOW_TURNS - 1],
                    |r| r.get(0),
                )?;
                let mut s = c.prepare(
                    "SELECT seq, role, json FROM agent_messages WHERE session = ?1
                     AND seq > ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4",
                )?;
                let mut bytes = 0usize;
                for k in s.query_map(params![session, through, start, MAX_FOLD_MESSAGES], kept)? {
                    let k = k?;
                    bytes += k.json.len();
                    if bytes > MAX_FOLD_BYTES {
                        break;
                    }
                    recall.fold.push(k);
                }
                recall.fold.reverse();
                // A fold that starts mid-turn (cut by the bound) starts at its next turn.
                let first_user = recall.fold.iter().position(|k| k.role == "user");
                recall.fold.drain(..first_user.unwrap_or(recall.fold.len()));
                recall.fold_through = Some((start - 1).unsigned_abs());
            }
            let mut s = c.prepare(
                "SELECT seq, role, json FROM agent_messages WHERE session = ?1 AND seq >= ?2
                 ORDER BY seq",
            )?;
            recall.window = s
                .query_map(params![session, start], kept)?
                .collect::<rusqlite::Result<_>>()?;
            Ok(recall)
        })
    }

    /// Appends `messages` (role, JSON) to the session, in one transaction.
    pub fn append(&self, session: &str, messages: &[(String, String)]) -> Result<(), TokenError> {
        self.append_folded(session, messages, None)
    }

    /// Appends `messages` (role, JSON) to the session and, when given, replaces its summary
    /// with `summary` covering the messages up to sequence number `through`, in one
    /// transaction.
    pub fn append_folded(
        &self,
        session: &str,
        messages: &[(String, String)],
        summary: Option<(&str, u64)>,
    ) -> Result<(), TokenError> {
        self.db
            .with(|c| Self::append_in(c, session, messages, summary))
    }

    /// [`MemoryStore::append_folded`] committed without waiting for an fsync
    /// ([`StateDb::with_unsynced`]): for a caller whose next commit to state.db is
    /// synchronous and comes before anyone is answered (a channel's answer), which carries
    /// these rows to disk with it.
    pub fn append_folded_unsynced(
        &self,
        session: &str,
        messages: &[(String, String)],
        summary: Option<(&str, u64)>,
    ) -> Result<(), TokenError> {
        self.db
            .with_unsynced(|c| Self::append_in(c, session, messages, summary))
    }

    fn append_in(
        c: &rusqlite::Connection,
        session: &str,
        messages: &[(String, String)],
        summary: Option<(&str, u64)>,
    ) -> rusqlite::Result<()> {
        {
            let tx = StateDb::write(c)?;
            if let Some((text, through)) = summary {
                tx.execute(
                    "INSERT OR REPLACE INTO agent_summaries (session, summary, through_seq, at_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        session,
                        text,
                        i64::try_from(through).unwrap_or(i64::MAX),
                        now_ms()
                    ],
                )?;
            }
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
        }
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

    /// Forgets the session and its summary; how many messages it had.
    pub fn clear(&self, session: &str) -> Result<u64, TokenError> {
        self.db.with(|c| {
            c.execute(
                "DELETE FROM agent_summaries WHERE session = ?1",
                params![session],
            )?;
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

    fn turns(store: &MemoryStore, session: &str, range: std::ops::Range<u32>) {
        for turn in range {
            store
                .append(
                    session,
                    &[
                        ("user".into(), format!("{{\"n\":{turn}}}")),
                        ("assistant".into(), "{}".into()),
                    ],
                )
                .expect("append");
        }
    }

    /// Below the fold's threshold every turn after the summary is sent; at it, the last
    /// WINDOW_TURNS are sent and the ones before them are to be folded; a fold kept with
    /// the next turn moves the window on; clear forgets messages and summary.
    #[test]
    fn the_window_is_the_turns_after_the_summary_and_a_batch_past_it_is_folded() {
        let dir = tempfile::tempdir().expect("dir");
        let store = MemoryStore::open(&dir.path().join("state.db")).expect("open");
        let threshold = WINDOW_TURNS + SUMMARY_BATCH_TURNS;
        turns(&store, "s1", 0..threshold - 1);
        store
            .append("s2", &[("user".into(), "{}".into())])
            .expect("append");
        let r = store.recall("s1").expect("recall");
        assert_eq!(r.window.len(), 2 * (threshold as usize - 1));
        assert!(r.fold.is_empty() && r.fold_through.is_none() && r.summary.is_none());

        turns(&store, "s1", threshold - 1..threshold);
        let r = store.recall("s1").expect("recall");
        assert_eq!(r.window.len(), 2 * WINDOW_TURNS as usize);
        assert_eq!(r.window[0].role, "user");
        assert_eq!(r.window[0].json, format!("{{\"n\":{SUMMARY_BATCH_TURNS}}}"));
        assert_eq!(r.fold.len(), 2 * SUMMARY_BATCH_TURNS as usize);
        assert_eq!(r.fold[0].json, "{\"n\":0}");
        let through = r.fold_through.expect("through");
        assert_eq!(through, r.window[0].seq - 1);

        // The next turn is kept with the summary: the window moves on, nothing to fold.
        store
            .append_folded(
                "s1",
                &[("user".into(), "{\"n\":99}".into())],
                Some(("they counted", through)),
            )
            .expect("append");
        let r = store.recall("s1").expect("recall");
        assert_eq!(r.summary.as_deref(), Some("they counted"));
        assert!(r.fold.is_empty(), "{r:?}");
        assert_eq!(r.window[0].json, format!("{{\"n\":{SUMMARY_BATCH_TURNS}}}"));
        assert_eq!(r.window.len(), 2 * WINDOW_TURNS as usize + 1);
        assert_eq!(
            store.show("s1").expect("show").len(),
            2 * threshold as usize + 1
        );
        let sessions = store.sessions(None, 10).expect("sessions");
        assert_eq!(sessions.len(), 2);
        assert_eq!(
            store.clear("s1").expect("clear"),
            2 * u64::from(threshold) + 1
        );
        assert_eq!(store.recall("s1").expect("recall"), Recall::default());
        assert_eq!(store.recall("s2").expect("recall").window.len(), 1);
    }

    /// A fold is bounded in bytes, the most recent kept, and starts at a turn.
    #[test]
    fn a_fold_is_bounded_and_starts_at_a_turn() {
        let dir = tempfile::tempdir().expect("dir");
        let store = MemoryStore::open(&dir.path().join("state.db")).expect("open");
        let big = format!("\"{}\"", "x".repeat(MAX_FOLD_BYTES / 3));
        for _ in 0..SUMMARY_BATCH_TURNS {
            store
                .append(
                    "s",
                    &[
                        ("user".into(), "{}".into()),
                        ("assistant".into(), big.clone()),
                    ],
                )
                .expect("append");
        }
        turns(&store, "s", 0..WINDOW_TURNS);
        let r = store.recall("s").expect("recall");
        let bytes: usize = r.fold.iter().map(|k| k.json.len()).sum();
        assert!(bytes <= MAX_FOLD_BYTES, "{bytes}");
        assert!(!r.fold.is_empty());
        assert_eq!(r.fold[0].role, "user");
        assert_eq!(r.fold.last().map(|k| k.json.as_str()), Some(big.as_str()));
    }
}
