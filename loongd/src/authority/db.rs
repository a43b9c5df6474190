//! `HOME/state.db`: the SQLite file the token table and the approvals share (WAL, synchronous
//! commits), one connection per store behind a lock.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, PoisonError,
    },
};

use rusqlite::Connection;

use super::tokens::TokenError;

/// How long a statement waits for another connection's write lock before it fails.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One connection to the state database.
#[derive(Debug)]
pub struct StateDb {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Set while the connection may be unsynced (`synchronous = NORMAL`), cleared once it is
    /// synchronous again: an unsynced run that did not restore it (a panic, a transaction
    /// left open, a failed pragma) leaves it set, and the next use restores it first.
    unsynced: AtomicBool,
}

impl StateDb {
    /// Opens `path` and applies `schema`.
    pub fn open(path: &Path, schema: &str) -> Result<StateDb, TokenError> {
        let err = |source| TokenError::Db {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.execute_batch(schema).map_err(err)?;
        Ok(StateDb {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            unsynced: AtomicBool::new(false),
        })
    }

    /// Runs `f` on the connection, naming the file in errors. Its commits are synchronous:
    /// a connection an unsynced run left unsynced is restored first, or `f` does not run.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, TokenError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let synced = if self.unsynced.load(Ordering::Acquire) {
            self.synced(&conn)
        } else {
            Ok(())
        };
        synced
            .and_then(|()| f(&conn))
            .map_err(|source| TokenError::Db {
                path: self.path.clone(),
                source,
            })
    }

    /// Makes `c` synchronous again: a transaction an unsynced run left open is rolled back
    /// (it was never committed; the safety level cannot change inside one).
    fn synced(&self, c: &Connection) -> rusqlite::Result<()> {
        if !c.is_autocommit() {
            c.execute_batch("ROLLBACK")?;
        }
        c.pragma_update(None, "synchronous", "FULL")?;
        self.unsynced.store(false, Ordering::Release);
        Ok(())
    }

    /// Runs `f` on the connection with commits that wait for no fsync (`synchronous =
    /// NORMAL` in WAL mode): what `f` commits survives loongd's crash (`kill -9`), not the
    /// machine's, until the next synchronous commit on the file (any store's), whose fsync of
    /// the log carries it too. Only for a write whose loss with the machine loses nothing: a
    /// claim that is made again at the next start.
    pub fn with_unsynced<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, TokenError> {
        self.with(|c| {
            // Set first: whatever way `f` ends (an error, a panic), the connection's next
            // use makes it synchronous before anything else runs on it.
            self.unsynced.store(true, Ordering::Release);
            c.pragma_update(None, "synchronous", "NORMAL")?;
            let out = f(c);
            let restored = self.synced(c);
            let out = out?;
            restored?;
            Ok(out)
        })
    }

    /// A write transaction on `c` that takes the database's write lock at its start (waiting
    /// out another connection's, up to the busy timeout). A deferred one that reads first
    /// fails at its first write, at once ("database is locked"), when another connection
    /// (every store has its own) wrote since it read: waiting cannot help it.
    pub fn write(c: &Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
        rusqlite::Transaction::new_unchecked(c, rusqlite::TransactionBehavior::Immediate)
    }

    /// Adds each of `columns` (`(name, declaration)`) that `table` lacks: a table written by
    /// an older loongd gains them, with NULL in its existing rows.
    pub fn add_columns(&self, table: &str, columns: &[(&str, &str)]) -> Result<(), TokenError> {
        self.with(|c| {
            let present: Vec<String> = {
                let mut s = c.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
                let rows = s.query_map([], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            for (name, decl) in columns {
                if !present.iter().any(|p| p == name) {
                    c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {decl}"))?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PRAGMA synchronous` values.
    const FULL: i64 = 2;
    const NORMAL: i64 = 1;

    fn db() -> (tempfile::TempDir, StateDb) {
        let dir = tempfile::tempdir().expect("dir");
        let db = StateDb::open(&dir.path().join("state.db"), "CREATE TABLE t (a INTEGER);")
            .expect("open");
        (dir, db)
    }

    fn synchronous(c: &Connection) -> rusqlite::Result<i64> {
        c.query_row("PRAGMA synchronous", [], |r| r.get(0))
    }

    #[test]
    fn an_unsynced_run_that_panics_or_leaves_a_transaction_open_leaves_no_unsynced_commit() {
        let (_d, db) = db();
        // Positive control: inside, commits are unsynced; after a run that ends well, synced.
        assert_eq!(db.with_unsynced(synchronous).expect("inside"), NORMAL);
        assert_eq!(db.with(synchronous).expect("after"), FULL);
        // A panic inside (the lock's poison is ignored by the next use).
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = db.with_unsynced(|c| -> rusqlite::Result<()> {
                c.execute("INSERT INTO t VALUES (1)", [])?;
                panic!("a bug in the unsynced run");
            });
        }));
        assert!(panicked.is_err());
        assert_eq!(db.with(synchronous).expect("after a panic"), FULL);
        // A run that fails with its transaction open (the level cannot change inside one).
        let failed = db.with_unsynced(|c| -> rusqlite::Result<()> {
            c.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2);")?;
            c.execute("INSERT INTO no_such_table VALUES (3)", [])?;
            Ok(())
        });
        assert!(failed.is_err());
        let after = db
            .with(|c| Ok((synchronous(c)?, c.is_autocommit())))
            .expect("after an open transaction");
        assert_eq!(after, (FULL, true));
        // What the failed run left uncommitted is not committed by the next one.
        let rows: i64 = db
            .with(|c| c.query_row("SELECT COUNT(*) FROM t WHERE a = 2", [], |r| r.get(0)))
            .expect("count");
        assert_eq!(rows, 0);
    }
}
