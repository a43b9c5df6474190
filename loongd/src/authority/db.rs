//! `HOME/state.db`: the SQLite file the token table and the approvals share (WAL, synchronous
//! commits), one connection per store behind a lock.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use rusqlite::Connection;

use super::tokens::TokenError;

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
}
