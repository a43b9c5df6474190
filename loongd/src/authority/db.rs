//! `HOME/state.db`: the SQLite file the token table and the approvals share (WAL, synchronous
//! commits), one connection per store behind a lock.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
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
        })
    }

    /// Runs `f` on the connection, naming the file in errors.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, TokenError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&conn).map_err(|source| TokenError::Db {
            path: self.path.clone(),
            source,
        })
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
            c.pragma_update(None, "synchronous", "NORMAL")?;
            let out = f(c);
            let restored = c.pragma_update(None, "synchronous", "FULL");
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
