//! Schema versions of loongd's databases, `HOME/state.db` and `HOME/audit.db`, kept in
//! SQLite's `PRAGMA user_version` (a header field: no table, so nothing in the audit trail's
//! records or its hash chain changes when it is set).
//!
//! Checked at start, before any store opens a file: a version this loongd does not know (a
//! newer loongd wrote it) is refused, never downgraded; an older one is migrated forward, one
//! step at a time, in one transaction with the new version. Version 0 is a database written
//! before versions existed; its step to 1 only stamps the version (the stores' own
//! `CREATE … IF NOT EXISTS` and added columns already bring such a file to version 1's
//! tables). A migration of `audit.db` never rewrites a record; the migrations made are
//! named in the run's `daemon.started` record.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};

/// The schema version of `state.db` this loongd writes.
pub const STATE_DB_VERSION: u32 = 5;
/// The schema version of `audit.db` this loongd writes.
pub const AUDIT_DB_VERSION: u32 = 1;

/// A database that cannot be brought to this loongd's version.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{} has schema version {found}, newer than the {known} this loongd knows: a newer loongd wrote it; run that loongd (or a newer one), or restore a backup this version wrote (it is never downgraded)", path.display())]
    Newer {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("{}: migrating the schema from version {from}: {source}", path.display())]
    Db {
        path: PathBuf,
        from: u32,
        #[source]
        source: rusqlite::Error,
    },
}

/// One migration made at start: `file` went from version `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Migration {
    pub file: String,
    pub from: u32,
    pub to: u32,
}

/// The statements of each step, by the version it starts from (`STEPS[v]`: `v` to `v + 1`).
/// Step 0 (both files) stamps the version only.
/// Step 1 (state.db): the agent's memory, `agent_messages` (`crate::authority::memory`).
/// Step 2 (state.db): the chat channels, `channels`, `channel_offsets`, `channel_inbox`,
/// `channel_outbox`, `channel_events` (`crate::authority::channels`).
/// Step 3 (state.db): the agent's rolling summaries, `agent_summaries`.
/// Step 4 (state.db): the approvals offered over chat, `channel_offers`, and each channel's
/// token generation (`channels.generation`).
const STATE_STEPS: &[&str] = &[
    "",
    crate::authority::memory::SCHEMA_STEP,
    crate::authority::channels::SCHEMA_STEP,
    crate::authority::memory::SUMMARY_SCHEMA_STEP,
    crate::authority::channels::OFFERS_SCHEMA_STEP,
];
const AUDIT_STEPS: &[&str] = &[""];

/// Checks and migrates `HOME/state.db` and `HOME/audit.db`; returns the migrations made (a
/// file loongd creates now is stamped, not migrated). Every file is checked before any is
/// migrated, so a home with one newer file is left entirely as it was.
pub fn prepare_home(home: &Path) -> Result<Vec<Migration>, SchemaError> {
    let files = [
        ("state.db", STATE_DB_VERSION, STATE_STEPS),
        (crate::audit::DB_FILE, AUDIT_DB_VERSION, AUDIT_STEPS),
    ];
    for (file, known, _) in files {
        let path = home.join(file);
        if !path.exists() {
            continue;
        }
        let found = version_of(&path).map_err(|source| SchemaError::Db {
            path: path.clone(),
            from: 0,
            source,
        })?;
        if found > known {
            return Err(SchemaError::Newer { path, found, known });
        }
    }
    let mut done = Vec::new();
    for (file, known, steps) in files {
        if let Some(m) = prepare(&home.join(file), known, steps)? {
            done.push(m);
        }
    }
    Ok(done)
}

/// Brings the database at `path` to version `known` with `steps`.
fn prepare(path: &Path, known: u32, steps: &[&str]) -> Result<Option<Migration>, SchemaError> {
    let err = |from| {
        move |source| SchemaError::Db {
            path: path.to_path_buf(),
            from,
            source,
        }
    };
    let mut conn = Connection::open(path).map_err(err(0))?;
    let found: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err(0))?;
    if found > known {
        return Err(SchemaError::Newer {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    if found == known {
        return Ok(None);
    }
    let fresh = conn
        .query_row("SELECT 1 FROM sqlite_master LIMIT 1", [], |_| Ok(()))
        .optional()
        .map_err(err(found))?
        .is_none();
    let tx = conn.transaction().map_err(err(found))?;
    for (v, sql) in steps
        .iter()
        .enumerate()
        .skip(found as usize)
        .take(known.saturating_sub(found) as usize)
    {
        tx.execute_batch(sql).map_err(err(v as u32))?;
    }
    tx.pragma_update(None, "user_version", known)
        .map_err(err(found))?;
    tx.commit().map_err(err(found))?;
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((!fresh).then_some(Migration {
        file,
        from: found,
        to: known,
    }))
}

/// The version `path` carries (0: none, or no such file).
pub fn version_of(path: &Path) -> rusqlite::Result<u32> {
    Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?
        .pragma_query_value(None, "user_version", |r| r.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_has_its_steps() {
        assert_eq!(STATE_STEPS.len(), STATE_DB_VERSION as usize);
        assert_eq!(AUDIT_STEPS.len(), AUDIT_DB_VERSION as usize);
    }

    #[test]
    fn a_fresh_file_is_stamped_an_old_one_migrated_a_newer_one_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let fresh = dir.path().join("fresh.db");
        assert_eq!(prepare(&fresh, 1, &[""]).expect("fresh"), None);
        assert_eq!(version_of(&fresh).expect("v"), 1);
        let old = dir.path().join("old.db");
        Connection::open(&old)
            .expect("open")
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (7)")
            .expect("old");
        let m = prepare(&old, 1, &[""]).expect("old").expect("migrated");
        assert_eq!((m.file.as_str(), m.from, m.to), ("old.db", 0, 1));
        let kept: i64 = Connection::open(&old)
            .expect("open")
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .expect("kept");
        assert_eq!(kept, 7);
        // Already current: nothing to do.
        assert_eq!(prepare(&old, 1, &[""]).expect("again"), None);
        // Newer than known: refused, and left as it was.
        Connection::open(&old)
            .expect("open")
            .pragma_update(None, "user_version", 9)
            .expect("stamp");
        let err = prepare(&old, 1, &[""]).expect_err("newer").to_string();
        assert!(
            err.contains("old.db has schema version 9, newer than the 1 this loongd knows")
                && err.contains("never downgraded"),
            "{err}"
        );
        assert_eq!(version_of(&old).expect("v"), 9);
    }
}
