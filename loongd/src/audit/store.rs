//! The SQLite store and its writer thread (group commit), in whose stead a waiter commits when
//! the writer has not yet taken its record and is not committing ([`Commit::commit_here`]).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    thread::JoinHandle,
};

use ed25519_dalek::VerifyingKey;
use loong_ipc::spin::{SpinWait, SpinWindow};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use super::{
    chain_hash_of, checkpoint_message,
    queue::{HoldsTaken, Msg, Pending, Producer, Queue, Taken, Waiter},
    verify::{Scope, VerifyReport},
    witness::{self, Witness},
    AuditKey, Event, Kind, Record, CHECKPOINT_EVERY, COMMIT_RETRY, LINGER, QUEUE_DEPTH,
};

/// Why the audit trail failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database {}: {source}", path.display())]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("audit key {}: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit key {} is {len} bytes, not 32; restore it from a backup (a new key cannot verify old checkpoints)", path.display())]
    BadKey { path: PathBuf, len: usize },
    #[error("the audit writer failed to commit: {0}")]
    Commit(String),
    #[error("the audit writer has stopped")]
    Stopped,
    #[error("audit database {} holds an object loongd did not create ({kind} {name}), which could change or drop records as they are written; remove it, then verify the trail", path.display())]
    Foreign {
        path: PathBuf,
        kind: String,
        name: String,
    },
    #[error("{0}; set audit.witness_file to a writable path (ideally on another file system)")]
    Witness(#[from] witness::WitnessError),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    correlation TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_kind ON audit (kind, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    time_ms INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    signature BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('format', '1');
";

/// A query for `audit recent` / `export`.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub kind: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only records after this sequence number.
    pub after_seq: Option<u64>,
    /// Most records returned.
    pub limit: u32,
    /// Oldest first (export) instead of newest first (recent).
    pub ascending: bool,
}

/// A queued record's commit (see [`Audit::queue`]).
pub struct Commit {
    done: oneshot::Receiver<Result<u64, String>>,
    /// The spin window of the trail's waits for commits ([`Audit::commit_spin`]).
    spin: Arc<Mutex<SpinWindow>>,
    /// The writer's core, for committing in its stead ([`Commit::help`]).
    writer: Arc<Shared>,
}

impl std::fmt::Debug for Commit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commit").finish_non_exhaustive()
    }
}

impl Commit {
    /// Waits until the record is on disk; returns its sequence number. The wait polls for
    /// the commit for the trail's spin window before it sleeps ([`loong_ipc::spin`]): a
    /// commit that comes within it (a warm call's, with `normal`) finds the waiting runtime
    /// thread awake.
    pub async fn committed(self) -> Result<u64, AuditError> {
        let window = self
            .spin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut wait = SpinWait::new(window);
        let done = wait.on(self.done).await;
        *self.spin.lock().unwrap_or_else(PoisonError::into_inner) = wait.window;
        done.map_err(|_| AuditError::Stopped)?
            .map_err(AuditError::Commit)
    }

    /// [`Commit::committed`] for a waiter with nothing else to do until the record is on
    /// disk (a sandbox run's gate, its answer): when the writer thread has not yet taken the
    /// record (woken, it may wait for a halted CPU for a millisecond or more) and is not
    /// committing, this runtime thread commits in its stead ([`Commit::help`]): what is
    /// queued, in order, as one group, as the writer would. A waiter whose commit overlaps
    /// other work of its own (a WASM call's, while its worker runs the call) waits with
    /// [`Commit::committed`]: committing here would hold that work behind the commit.
    pub async fn commit_here(mut self) -> Result<u64, AuditError> {
        if let Some(done) = self.help() {
            return done;
        }
        self.committed().await
    }

    /// Commits in the writer's stead when the record is not yet committed and nobody is
    /// committing: takes the trail's core (never waits for it), takes what is queued (never
    /// a stop) and commits it as the writer would, then reads its own acknowledgement.
    ///
    /// Only on a multi-thread runtime (its other thread runs the runtime's other tasks), and
    /// on this thread: [`tokio::task::block_in_place`] hands the thread's tasks to another
    /// thread it wakes, which measured as costly as the wake-up it saves. So only a plain
    /// group: at most [`HELP_MAX`](super::HELP_MAX) records, no checkpoint to sign (no
    /// witness to write), no SIEM lane, never a failed commit's retry; a commit that meets
    /// another connection's write lock goes back to the writer at once. What holds the thread
    /// is the group's SQLite work and one `fdatasync`, as long as the disk takes. `None` when
    /// it did not commit (the caller waits as before).
    fn help(&mut self) -> Option<Result<u64, AuditError>> {
        use tokio::{runtime::RuntimeFlavor, sync::oneshot::error::TryRecvError};
        let acknowledged = |done: Result<Result<u64, String>, TryRecvError>| match done {
            Ok(r) => Some(r.map_err(AuditError::Commit)),
            Err(TryRecvError::Closed) => Some(Err(AuditError::Stopped)),
            Err(TryRecvError::Empty) => None,
        };
        if let Some(done) = acknowledged(self.done.try_recv()) {
            return Some(done);
        }
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
        if !multi {
            return None;
        }
        let writer = &self.writer;
        let Ok(mut held) = writer.core.try_lock() else {
            // The writer (or another waiter) commits: wait for it.
            return None;
        };
        let core = held.as_mut()?;
        // Committed between the first look and the lock.
        if let Some(done) = acknowledged(self.done.try_recv()) {
            return Some(done);
        }
        // After a failed commit, the writer retries after its pause: waiters do not add
        // attempts of their own. A commit that signs a checkpoint (its witness written and
        // synced too) or ships to a SIEM lane is the writer's as well.
        if core.retry_at.is_some()
            || core.siem.any()
            || !writer.queue.take_for_helper(&mut core.taken.pending)
        {
            return None;
        }
        if core.signs() {
            // Taken, in order, for the writer to commit: it is woken for them.
            writer.queue.rouse_writer();
            return None;
        }
        let records = !core.taken.pending.batch.is_empty();
        let step = core.commit_taken(true);
        drop(held);
        if records && matches!(step, Step::Done) {
            writer
                .helped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::metrics::audit_committed_by_waiter();
        }
        if matches!(step, Step::Failed | Step::Busy) {
            writer.queue.rouse_writer();
        }
        acknowledged(self.done.try_recv())
    }
}

/// What the writer thread and a waiter committing in its stead share: the queue, and the
/// core that commits (taken by one at a time; `None` once the writer has stopped).
pub(super) struct Shared {
    queue: Arc<Queue>,
    core: Mutex<Option<Core>>,
    /// Commits made by waiters in the writer's stead.
    helped: std::sync::atomic::AtomicU64,
}

/// What a commit needs: the trail's one connection, its key, its tail, its SIEM lanes and
/// its witness, and what was taken for the next commit.
struct Core {
    conn: Connection,
    key: AuditKey,
    last_seq: u64,
    last_hash: [u8; 32],
    siem: super::siem::Siem,
    witness_path: PathBuf,
    /// The final checkpoint signs only what this run appended: a trail that failed its start
    /// check and was closed at once keeps its evidence unsigned.
    appended: bool,
    /// The write-ahead log's automatic checkpoint (pages), as the trail was opened with it.
    autocheckpoint: i64,
    /// The last commit failed: the next is not tried before this (its failure plus
    /// [`COMMIT_RETRY`]).
    retry_at: Option<std::time::Instant>,
    taken: Taken,
}

impl HoldsTaken for Core {
    fn taken(&mut self) -> &mut Taken {
        &mut self.taken
    }
}

/// How long the writer waits for another connection's write lock before its commit fails
/// (rusqlite's default, set here by name).
const WRITER_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A waiter's commit, while it lasts (restored when dropped, a panic included): the
/// connection does not wait for another connection's write lock (the group goes back to
/// the writer untouched, nothing written and nobody acknowledged, and the writer waits for
/// the lock as it always did), and does not checkpoint the write-ahead log into the
/// database (several MiB written and synced: the writer's next commit does it).
struct Helping<'a> {
    conn: &'a Connection,
    autocheckpoint: i64,
}

impl<'a> Helping<'a> {
    fn begin(conn: &'a Connection, autocheckpoint: i64) -> Helping<'a> {
        let _ = conn.busy_timeout(std::time::Duration::ZERO);
        let _ = conn.pragma_update(None, "wal_autocheckpoint", 0);
        Helping {
            conn,
            autocheckpoint,
        }
    }
}

impl Drop for Helping<'_> {
    fn drop(&mut self) {
        let _ = self.conn.busy_timeout(WRITER_BUSY_TIMEOUT);
        let _ = self
            .conn
            .pragma_update(None, "wal_autocheckpoint", self.autocheckpoint);
    }
}

/// Whether a commit failed on another connection's write lock.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy)
}

/// What became of a commit of what was taken.
enum Step {
    Done,
    /// A waiter's commit met another connection's write lock: nothing was written, and what
    /// was taken is the writer's to commit.
    Busy,
    /// It failed: the records of effects that happened are kept for the next.
    Failed,
    /// A stop was taken: the writer stops.
    Stop,
}

/// A handle on the audit trail; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: Arc<Producer>,
    writer: Arc<Shared>,
    db: Arc<PathBuf>,
    witness: Arc<PathBuf>,
    verifying: VerifyingKey,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    startup: Arc<Startup>,
    /// How long a wait for a commit polls before it sleeps, adapted to how long the waits for
    /// commits lately lasted (one window for the trail: its commits come one after another).
    commit_spin: Arc<Mutex<SpinWindow>>,
}

/// What the trail said when it was opened, before anything was appended.
#[derive(Debug, Clone)]
pub struct Startup {
    /// The tail since the newest checkpoint, checked against the witness.
    pub integrity: VerifyReport,
    /// The run before this one.
    pub previous: PreviousRun,
}

/// The last run recorded in the trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviousRun {
    /// The sequence number of its `daemon.started`, when it did not record `daemon.stopped`.
    pub unclean: Option<u64>,
    /// The last record in the trail.
    pub last_seq: u64,
    /// Its `tool.invoked` records that have no outcome.
    pub dangling: Vec<Dangling>,
    /// The tool records read to find them: none when the index counts one outcome per
    /// invocation (the usual case, whatever the run's length), every one of the run's
    /// otherwise.
    pub scanned: u64,
}

/// What the trail says of one approval (read at a start, for an approval the store shows
/// approved and not yet taken): the store only names candidates; a record loongd signs of
/// one follows from this.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalTrail {
    /// Its `approval.requested` was recorded.
    pub requested: bool,
    /// The state of its `approval.resolved` (`approved`, `denied`), when one was recorded.
    pub resolved: Option<String>,
    /// An `approval.unused` or `approval.expired` was recorded for it already.
    pub ended: bool,
    /// A record other than an approval's follows its resolution in the correlation of its
    /// request, in the same run: its waiter went on with it (the effect was recorded).
    pub acted_on: bool,
}

/// A `tool.invoked` record without a `tool.completed` or `tool.failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dangling {
    pub seq: u64,
    pub actor: String,
    pub correlation: String,
    pub tool: Option<String>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> AuditError + '_ {
    move |source| AuditError::Db {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a 32-byte hash column.
pub(super) fn hash32(v: Vec<u8>) -> [u8; 32] {
    let mut h = [0u8; 32];
    if v.len() == 32 {
        h.copy_from_slice(&v);
    }
    h
}

pub(super) fn read_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        seq: row.get::<_, i64>(0)? as u64,
        time_ms: row.get(1)?,
        kind: row.get(2)?,
        actor: row.get(3)?,
        correlation: row.get(4)?,
        detail: row.get(5)?,
        prev_hash: hash32(row.get(6)?),
        hash: hash32(row.get(7)?),
    })
}

pub(super) const RECORD_COLUMNS: &str =
    "seq, time_ms, kind, actor, correlation, detail, prev_hash, hash";

impl Audit {
    /// Opens (creating) the database at `db` and starts the writer thread.
    pub fn open(
        db: &Path,
        key: AuditKey,
        siem: super::siem::SiemConfig,
        durability: super::Durability,
        witness: &Path,
    ) -> Result<Audit, AuditError> {
        witness::probe(witness)?;
        let conn = Connection::open(db).map_err(db_err(db))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err(db))?;
        // With `Full`, every committed group is on disk before its appends are acknowledged.
        let sync = match durability {
            super::Durability::Full => "FULL",
            super::Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(db_err(db))?;
        conn.busy_timeout(WRITER_BUSY_TIMEOUT).map_err(db_err(db))?;
        let autocheckpoint: i64 = conn
            .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
            .map_err(db_err(db))?;
        conn.execute_batch(SCHEMA).map_err(db_err(db))?;
        // Only loongd's tables and indexes: a trigger, or a constraint's index with ON
        // CONFLICT IGNORE, slipped in while loongd was stopped would run inside every append.
        let foreign: Option<(String, String)> = conn
            .query_row(
                "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view') OR (type = 'table' AND name NOT IN ('audit', 'checkpoints', 'meta')) OR (type = 'index' AND name NOT IN ('audit_kind', 'sqlite_autoindex_meta_1')) LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err(db))?;
        if let Some((kind, name)) = foreign {
            return Err(AuditError::Foreign {
                path: db.to_path_buf(),
                kind,
                name,
            });
        }
        let tail: Option<(i64, Vec<u8>)> = conn
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err(db))?;
        let (last_seq, last_hash) = tail
            .map(|(s, h)| (s as u64, hash32(h)))
            .unwrap_or((0, [0u8; 32]));
        // Best effort: a trail whose log cannot be laid out ahead commits as before, each
        // commit extending the file.
        if let Err(e) = super::wal::lay_out(&conn, db) {
            tracing::warn!(error = %e, db = %db.display(), "the audit trail's write-ahead log could not be laid out ahead; commits extend it (each a journal commit of the file system)");
        }
        if !conn.is_autocommit() {
            // The layout's transaction was neither committed nor rolled back: the writer
            // could begin none of its own.
            conn.execute_batch("ROLLBACK").map_err(db_err(db))?;
        }
        let verifying = key.verifying();
        let startup = Startup {
            integrity: integrity(&conn, &verifying, witness, Scope::Tail).map_err(db_err(db))?,
            previous: previous_run(&conn).map_err(db_err(db))?,
        };
        let (rx, tx) = Queue::new(QUEUE_DEPTH);
        let shared = Arc::new(Shared {
            queue: rx,
            core: Mutex::new(Some(Core {
                conn,
                key,
                last_seq,
                last_hash,
                siem: super::siem::Siem::new(siem),
                witness_path: witness.to_path_buf(),
                appended: false,
                retry_at: None,
                autocheckpoint,
                taken: Taken::default(),
            })),
            helped: Default::default(),
        });
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("loong-audit".into())
            .spawn(move || writer(&writer_shared))
            .map_err(|source| AuditError::Key {
                path: db.to_path_buf(),
                source,
            })?;
        Ok(Audit {
            tx: Arc::new(tx),
            writer: shared,
            db: Arc::new(db.to_path_buf()),
            witness: Arc::new(witness.to_path_buf()),
            verifying,
            thread: Arc::new(Mutex::new(Some(thread))),
            startup: Arc::new(startup),
            commit_spin: Arc::default(),
        })
    }

    /// Sets the window of the waits for commits (for tests that need a spin of a known
    /// length).
    #[cfg(test)]
    pub(super) fn set_commit_spin(&self, window: SpinWindow) {
        *self
            .commit_spin
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = window;
    }

    /// The commit `done` acknowledges.
    fn commit(&self, done: oneshot::Receiver<Result<u64, String>>) -> Commit {
        Commit {
            done,
            spin: self.commit_spin.clone(),
            writer: self.writer.clone(),
        }
    }

    /// What the trail said when it was opened.
    pub fn startup(&self) -> &Startup {
        &self.startup
    }

    /// Messages queued for the writer and not yet taken (at most [`QUEUE_DEPTH`]).
    pub fn queue_depth(&self) -> usize {
        self.tx.depth()
    }

    /// The writer's wake-ups so far.
    #[cfg(test)]
    pub(super) fn writer_wakeups(&self) -> u64 {
        self.tx.queue().wakeups()
    }

    /// Holds the writer thread before it takes anything, as one woken late would be (`true`),
    /// or lets it go.
    #[cfg(test)]
    pub(crate) fn pause_writer(&self, paused: bool) {
        self.writer.queue.pause(paused);
    }

    /// Holds the writer's thread, once it stopped, before it ends (`true`), or lets it end.
    #[cfg(test)]
    pub(super) fn hold_stopped_writer(&self, held: bool) {
        self.writer.queue.hold_stopped_writer(held);
    }

    /// Commits made so far by waiters in the writer's stead ([`Commit::commit_here`]).
    #[cfg(test)]
    pub(super) fn commits_by_waiters(&self) -> u64 {
        self.writer
            .helped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Appends `event` and waits until it is committed; returns its sequence number.
    pub async fn record(&self, event: Event) -> Result<u64, AuditError> {
        self.queue(event).await?.committed().await
    }

    /// Queues `event` and returns at once with a handle that resolves when it is committed.
    /// Records are committed in the order they are queued, in groups, so work that does not
    /// depend on the record can overlap the commit; the caller still waits for it before it
    /// answers anyone.
    pub async fn queue(&self, event: Event) -> Result<Commit, AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Append(event, ack))
            .await
            .map_err(|_| AuditError::Stopped)?;
        Ok(self.commit(done))
    }

    /// Appends `event` without waiting for the commit (it is still queued in order; a failed
    /// commit keeps it, in order, for the next one: see [`super::KEPT_MAX`]). It wakes the
    /// writer only when the writer waits without end; queued while a commit or its linger is
    /// under way, it rides the next commit, at the latest [`LINGER`] after now.
    ///
    /// The record is of an effect that has happened, so a caller dropped while a full queue
    /// holds it (a client gone mid-request) does not lose it ([`Producer::send_detached`]).
    pub async fn record_later(&self, event: Event) {
        let queued = Msg::Later(event, std::time::Instant::now());
        if !self.tx.send_detached(queued).await {
            tracing::error!("the audit writer has stopped; an audit record could not be queued");
        }
    }

    /// Queues `events` as one message, so that they are committed in the same group, and
    /// returns the commit of the last.
    pub async fn queue_all(&self, events: Vec<Event>) -> Result<Commit, AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Batch(events, ack))
            .await
            .map_err(|_| AuditError::Stopped)?;
        Ok(self.commit(done))
    }

    /// Commits every record queued so far (lingering ones included); readers call it first so
    /// that they see everything that happened before they asked.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Flush(ack))
            .await
            .map_err(|_| AuditError::Stopped)?;
        self.commit(done).committed().await.map(|_| ())
    }

    /// Commits what is queued, signs a final checkpoint and stops the writer.
    pub async fn shutdown(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(ack)).await.is_ok() {
            let _ = done.await;
        }
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    fn reader(&self) -> Result<Connection, AuditError> {
        Connection::open_with_flags(
            self.db.as_path(),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err(&self.db))
    }

    /// Records matching `q`.
    pub fn query(&self, q: &Query) -> Result<Vec<Record>, AuditError> {
        let conn = self.reader()?;
        let order = if q.ascending { "ASC" } else { "DESC" };
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM audit WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR time_ms >= ?2) \
             AND (?3 IS NULL OR time_ms <= ?3) AND (?5 IS NULL OR seq > ?5) ORDER BY seq {order} LIMIT ?4"
        );
        let mut stmt = conn.prepare(&sql).map_err(db_err(&self.db))?;
        let rows = stmt
            .query_map(
                params![
                    q.kind,
                    q.since_ms,
                    q.until_ms,
                    q.limit,
                    q.after_seq.map(|s| s as i64)
                ],
                read_record,
            )
            .map_err(db_err(&self.db))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err(&self.db))?;
        Ok(rows)
    }

    /// The record `seq`.
    pub fn get(&self, seq: u64) -> Result<Option<Record>, AuditError> {
        let conn = self.reader()?;
        conn.query_row(
            &format!("SELECT {RECORD_COLUMNS} FROM audit WHERE seq = ?1"),
            [seq as i64],
            read_record,
        )
        .optional()
        .map_err(db_err(&self.db))
    }

    /// Records per `group` (`kind`, `pack`, `agent` or `token`), with how many decisions in
    /// each were allowed and denied; largest groups first.
    pub fn summary(&self, group: &str) -> Result<Vec<(String, u64, u64, u64)>, AuditError> {
        let key = match group {
            "kind" => "kind",
            "pack" => "json_extract(detail, '$.pack')",
            "agent" => "json_extract(detail, '$.agent')",
            "token" => "json_extract(detail, '$.token')",
            _ => return Ok(Vec::new()),
        };
        let conn = self.reader()?;
        let sql = format!(
            "SELECT {key} AS k, COUNT(*), \
             SUM(kind = 'policy.decision' AND json_extract(detail, '$.allowed') = 1), \
             SUM(kind = 'policy.decision' AND json_extract(detail, '$.allowed') = 0) \
             FROM audit WHERE k IS NOT NULL GROUP BY k ORDER BY COUNT(*) DESC LIMIT 1000"
        );
        let mut stmt = conn.prepare(&sql).map_err(db_err(&self.db))?;
        let rows = stmt
            .query_map([], |r| {
                let n = |i| r.get::<_, Option<i64>>(i).map(|v| v.unwrap_or(0) as u64);
                Ok((r.get::<_, String>(0)?, n(1)?, n(2)?, n(3)?))
            })
            .map_err(db_err(&self.db))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err(&self.db))?;
        Ok(rows)
    }

    /// Every record about capability token `token`, oldest first.
    pub fn token_trail(
        &self,
        token: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, AuditError> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(&format!("SELECT {RECORD_COLUMNS} FROM audit WHERE json_extract(detail, '$.token') = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3"))
            .map_err(db_err(&self.db))?;
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(rusqlite::params![token, after, limit], read_record)
            .map_err(db_err(&self.db))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err(&self.db))?;
        Ok(rows)
    }

    /// What the trail says of approval `id` ([`ApprovalTrail`]). Reads the approval records
    /// by the kind index, and the records of its request's correlation from its resolution to
    /// the next start (correlations repeat across runs).
    pub fn approval_trail(&self, id: &str) -> Result<ApprovalTrail, AuditError> {
        let conn = self.reader()?;
        let first = |kind: Kind| -> rusqlite::Result<Option<(i64, String, Option<String>)>> {
            conn.query_row(
                "SELECT seq, correlation, json_extract(detail, '$.state') FROM audit \
                 WHERE kind = ?1 AND json_extract(detail, '$.approval') = ?2 ORDER BY seq LIMIT 1",
                params![kind.as_str(), id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get::<_, Option<String>>(2).ok().flatten(),
                    ))
                },
            )
            .optional()
        };
        let read = || -> rusqlite::Result<ApprovalTrail> {
            let requested = first(Kind::ApprovalRequested)?;
            let resolved = first(Kind::ApprovalResolved)?;
            let ended =
                first(Kind::ApprovalUnused)?.is_some() || first(Kind::ApprovalExpired)?.is_some();
            let acted_on = match (&requested, &resolved) {
                (Some((_, correlation, _)), Some((at, _, _))) => conn.query_row(
                    "SELECT EXISTS (SELECT 1 FROM audit WHERE seq > ?1 AND correlation = ?2 \
                     AND kind NOT LIKE 'approval.%' AND seq < COALESCE((SELECT MIN(seq) FROM audit \
                     WHERE kind = ?3 AND seq > ?1), 9223372036854775807))",
                    params![at, correlation, Kind::DaemonStarted.as_str()],
                    |r| r.get::<_, bool>(0),
                )?,
                _ => false,
            };
            Ok(ApprovalTrail {
                requested: requested.is_some(),
                resolved: resolved.map(|(_, _, state)| state.unwrap_or_default()),
                ended,
                acted_on,
            })
        };
        read().map_err(db_err(&self.db))
    }

    /// The approvals named by the `kind` records whose `why` is `why` (read at a start: the
    /// requests an earlier start recorded ended, so that one killed before it ended them in
    /// the store records none twice). Reads that kind's records by the kind index.
    pub fn approvals_recorded(
        &self,
        kind: Kind,
        why: &str,
    ) -> Result<std::collections::HashSet<String>, AuditError> {
        let conn = self.reader()?;
        let read = || -> rusqlite::Result<std::collections::HashSet<String>> {
            let mut stmt = conn.prepare(
                "SELECT json_extract(detail, '$.approval') FROM audit \
                 WHERE kind = ?1 AND json_extract(detail, '$.why') = ?2",
            )?;
            let rows = stmt.query_map(params![kind.as_str(), why], |r| {
                r.get::<_, Option<String>>(0)
            })?;
            let mut ids = std::collections::HashSet::new();
            for id in rows {
                if let Some(id) = id? {
                    ids.insert(id);
                }
            }
            Ok(ids)
        };
        read().map_err(db_err(&self.db))
    }

    /// Whether the trail records the opening of full-access window `id` (an
    /// `approval.resolved` naming it with its `full_access`). Reads that kind's records by the
    /// kind index.
    pub fn window_opened(&self, id: &str) -> Result<bool, AuditError> {
        let conn = self.reader()?;
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM audit WHERE kind = ?1 \
             AND json_extract(detail, '$.window') = ?2 AND json_extract(detail, '$.full_access') IS NOT NULL)",
            params![Kind::ApprovalResolved.as_str(), id],
            |r| r.get::<_, bool>(0),
        )
        .map_err(db_err(&self.db))
    }

    /// Verifies the whole trail against the chain, the signed checkpoints and the witness.
    pub fn verify(&self) -> Result<VerifyReport, AuditError> {
        integrity(&self.reader()?, &self.verifying, &self.witness, Scope::Full)
            .map_err(db_err(&self.db))
    }
}

fn writer(shared: &Shared) {
    // However the writer ends, its queue is closed (a producer hears that it stopped) and its
    // core dropped (the connection closed; no waiter commits after it).
    struct Closed<'a>(&'a Shared);
    impl Drop for Closed<'_> {
        fn drop(&mut self) {
            self.0.queue.close();
            let core = self
                .0
                .core
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            drop(core);
        }
    }
    let shared = Closed(shared);
    loop {
        let Some(mut held) = shared.0.queue.next(&shared.0.core) else {
            break;
        };
        let Some(core) = held.as_mut() else {
            break;
        };
        // After a failed commit (the writer's or a waiter's), the next waits out its pause.
        let now = std::time::Instant::now();
        if let Some(wait) = core.retry_at.and_then(|at| at.checked_duration_since(now)) {
            drop(held);
            std::thread::sleep(wait);
            continue;
        }
        if let Step::Stop = core.commit_taken(false) {
            // Nothing commits after the stop: the queue is closed and the core dropped before
            // the core is let go, so no waiter can take it in between.
            shared.0.queue.close();
            *held = None;
            break;
        }
    }
    #[cfg(test)]
    shared.0.queue.hold_stopped();
}

impl Core {
    /// Whether committing what was taken signs a checkpoint (and writes the witness), by the
    /// rules [`commit`] signs by.
    fn signs(&self) -> bool {
        let pending = &self.taken.pending;
        signs_last(
            self.appended,
            pending.batch.len(),
            pending.shutdown.is_some(),
        ) || (pending.batch.iter())
            .zip(self.last_seq + 1..)
            .any(|((e, _), seq)| signed_at(seq, e.kind))
    }

    /// Commits what was taken in one transaction and acknowledges it (each waiter its
    /// record's sequence number, or why it failed); a failure keeps the records of effects
    /// that happened, in order, for the next commit ([`Pending::fail`]).
    fn commit_taken(&mut self, helping: bool) -> Step {
        let Pending {
            batch,
            flushes,
            shutdown,
            ..
        } = &mut self.taken.pending;
        let shutdown = shutdown.take();
        self.taken.window = None;
        if batch.is_empty() && shutdown.is_none() {
            for a in flushes.drain(..) {
                let _ = a.send(Ok(self.last_seq));
            }
            self.taken.pending.clear();
            return Step::Done;
        }
        let waited = batch.iter().any(|(_, w)| matches!(w, Waiter::Ack(_)));
        let mut failed = false;
        let events: Vec<&Event> = batch.iter().map(|(e, _)| e).collect();
        let began = std::time::Instant::now();
        // The committed records are built only for whoever reads them: a SIEM lane or the
        // debug log. Otherwise each would copy its kind, actor and correlation for nobody.
        let keep = self.siem.any() || log_wanted();
        let helped = helping.then(|| Helping::begin(&self.conn, self.autocheckpoint));
        let done = commit(
            &self.conn,
            &self.key,
            &events,
            (self.last_seq, self.last_hash),
            signs_last(self.appended, events.len(), shutdown.is_some()),
            keep,
        );
        drop(helped);
        if helping && done.as_ref().is_err_and(is_busy) && shutdown.is_none() {
            return Step::Busy;
        }
        match done {
            Ok((seq, hash, records, signed)) => {
                self.appended |= seq > self.last_seq;
                crate::metrics::audit_committed(began.elapsed());
                log_records(&records);
                // The records are committed; a fail-closed SIEM lane that failed still refuses
                // the effects they record.
                let mut shipped = self.siem.ship(&records).map_err(|e| e.to_string());
                if let Some(w) = signed {
                    // Like a fail-closed lane: an unwritten witness refuses the effects
                    // recorded with its checkpoint (the records stay in the trail).
                    let witnessed = witness_out(&self.conn, &self.witness_path, &w);
                    shipped = shipped
                        .and(self.siem.ship_checkpoint(&w).map_err(|e| e.to_string()))
                        .and(witnessed);
                }
                for (n, (_, waiter)) in batch.drain(..).enumerate() {
                    if let Waiter::Ack(ack) = waiter {
                        let _ = ack.send(shipped.clone().map(|()| self.last_seq + 1 + n as u64));
                    }
                }
                (self.last_seq, self.last_hash) = (seq, hash);
                for a in flushes.drain(..) {
                    let _ = a.send(Ok(self.last_seq));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for a in flushes.drain(..) {
                    let _ = a.send(Err(why.clone()));
                }
                // The records of effects that happened stay, in order, at the front of the
                // next group: a failure loses no record (see [`Pending::fail`]).
                let dropped = self.taken.pending.fail(&why);
                tracing::error!(error = %e, kept = self.taken.pending.batch.len(), dropped, "audit commit failed; its records are kept for the next commit");
                if shutdown.is_some() && !self.taken.pending.batch.is_empty() {
                    tracing::error!(
                        records = self.taken.pending.batch.len(),
                        "the audit writer stops with records it could not commit"
                    );
                }
                failed = true;
            }
        }
        self.retry_at = failed.then(|| std::time::Instant::now() + COMMIT_RETRY);
        if !failed {
            self.taken.pending.clear();
        }
        if let Some(a) = shutdown {
            let _ = a.send(());
            return Step::Stop;
        }
        if failed {
            return Step::Failed;
        }
        if waited {
            self.taken.window = Some(std::time::Instant::now() + LINGER);
        }
        Step::Done
    }
}

/// Echoes committed records to the log at debug level, with the fields an operator selects
/// them by (in the journal: `LOONG_KIND`, `LOONG_CORRELATION`, `LOONG_PLUGIN`,
/// `LOONG_WORKER_PID`, `LOONG_SEQ`). The trail stays the record; this is an index into it.
fn log_records(records: &[super::Record]) {
    if !log_wanted() {
        return;
    }
    for r in records {
        let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap_or_default();
        let plugin = detail.get("plugin").and_then(serde_json::Value::as_str);
        let worker_pid = if r.kind.starts_with("worker.") {
            detail.get("pid").and_then(serde_json::Value::as_u64)
        } else {
            None
        };
        let correlation = Some(r.correlation.as_str()).filter(|c| !c.is_empty());
        tracing::debug!(
            target: AUDIT_LOG_TARGET,
            seq = r.seq,
            kind = r.kind.as_str(),
            actor = r.actor.as_str(),
            correlation,
            plugin,
            worker_pid,
            "audit record"
        );
    }
}

/// Whether [`log_records`] logs anything.
fn log_wanted() -> bool {
    tracing::enabled!(target: AUDIT_LOG_TARGET, tracing::Level::DEBUG)
}

/// The log target of [`log_records`] (`LOONG_LOG=loongd::audit=debug` shows only these).
pub const AUDIT_LOG_TARGET: &str = "loongd::audit";

/// Whether the record `seq` of `kind` gets a checkpoint of its own: at every multiple of
/// [`CHECKPOINT_EVERY`], and every start and stop. A clean stop carries its own checkpoint,
/// in its own transaction, so that no crash can leave a `daemon.stopped` unsigned; a start
/// carries one too, so that a run appended by someone else after a clean stop cannot pass
/// for loongd's.
fn signed_at(seq: u64, kind: Kind) -> bool {
    seq.is_multiple_of(CHECKPOINT_EVERY)
        || matches!(kind, Kind::DaemonStopped | Kind::DaemonStarted)
}

/// Whether [`commit`] signs a checkpoint after a group's last record, `records` of them, in
/// a run that `appended` already: this run's first records (records after a clean stop that
/// no checkpoint covers were not written by loongd), and at a stop what this run appended.
fn signs_last(appended: bool, records: usize, stopping: bool) -> bool {
    (!appended && records > 0) || (stopping && appended)
}

/// What one transaction committed: the new tail (sequence number and hash), its records
/// (when asked for), and the newest checkpoint it signed.
type Committed = (u64, [u8; 32], Vec<Record>, Option<Witness>);

/// Appends `events` in one transaction after the tail `(seq, hash)`, signing a checkpoint at
/// every multiple of [`CHECKPOINT_EVERY`], every `daemon.started` and `daemon.stopped`, and at
/// the end when `sign_last`; returns the new tail, and the records when `keep`. Nothing
/// changes on error. The transaction's `BEGIN` and `COMMIT` are prepared once, like its
/// inserts, not parsed again for every commit.
fn commit(
    conn: &Connection,
    key: &AuditKey,
    events: &[&Event],
    tail: (u64, [u8; 32]),
    sign_last: bool,
    keep: bool,
) -> rusqlite::Result<Committed> {
    // A connection left inside a transaction (a ROLLBACK that failed) is rolled back first:
    // otherwise every later BEGIN fails and the writer never commits again.
    if !conn.is_autocommit() {
        conn.execute_batch("ROLLBACK")?;
    }
    conn.prepare_cached("BEGIN")?.execute([])?;
    let done = append(conn, key, events, tail, sign_last, keep)
        .and_then(|c| conn.prepare_cached("COMMIT")?.execute([]).map(|_| c));
    if done.is_err() && !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "could not roll back a failed audit commit");
        }
    }
    done
}

/// [`commit`] without a final checkpoint or kept records, for tests.
#[cfg(test)]
pub(super) fn commit_for_test(
    conn: &mut Connection,
    key: &AuditKey,
    events: &[&Event],
    tail: (u64, [u8; 32]),
) -> rusqlite::Result<Committed> {
    commit(conn, key, events, tail, false, false)
}

/// The inserts of [`commit`], inside its transaction.
fn append(
    tx: &Connection,
    key: &AuditKey,
    events: &[&Event],
    (mut seq, mut hash): (u64, [u8; 32]),
    sign_last: bool,
    keep: bool,
) -> rusqlite::Result<Committed> {
    let mut records = Vec::with_capacity(if keep { events.len() } else { 0 });
    let mut signed = None;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO audit (seq, time_ms, kind, actor, correlation, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut checkpoint =
            tx.prepare_cached("INSERT OR REPLACE INTO checkpoints (seq, hash, time_ms, key_id, signature) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        let key_id = key.id();
        let mut sign = |seq: u64, hash: &[u8; 32], time: i64| -> rusqlite::Result<()> {
            let sig = key.sign(&checkpoint_message(seq, hash));
            checkpoint.execute(params![
                seq as i64,
                hash.as_slice(),
                time,
                key_id,
                sig.as_slice()
            ])?;
            signed = Some(Witness {
                seq,
                hash: *hash,
                time_ms: time,
                key_id: key_id.clone(),
                signature: sig.to_vec(),
            });
            Ok(())
        };
        for e in events {
            let time = crate::now_ms();
            let detail = e.detail.bounded();
            let prev = hash;
            seq += 1;
            hash = chain_hash_of(
                &prev,
                seq,
                time,
                e.kind.as_str(),
                &e.actor,
                &e.correlation,
                &detail,
            );
            insert.execute(params![
                seq as i64,
                time,
                e.kind.as_str(),
                &*e.actor,
                &*e.correlation,
                &*detail,
                prev.as_slice(),
                hash.as_slice()
            ])?;
            if keep {
                records.push(Record {
                    seq,
                    time_ms: time,
                    kind: e.kind.as_str().to_string(),
                    actor: e.actor.to_string(),
                    correlation: e.correlation.to_string(),
                    detail: detail.into_owned(),
                    prev_hash: prev,
                    hash,
                });
            }
            if signed_at(seq, e.kind) {
                sign(seq, &hash, time)?;
            }
        }
        if sign_last && seq > 0 {
            sign(seq, &hash, crate::now_ms())?;
        }
    }
    Ok((seq, hash, records, signed))
}

/// Writes the witness after a commit that signed a checkpoint, and notes in the database
/// that it exists (so that a missing one is noticed). A failed write is logged and returned:
/// the checkpoint is in the database, and the next one writes the witness again.
fn witness_out(conn: &Connection, path: &Path, w: &Witness) -> Result<(), String> {
    if let Err(e) = witness::write(path, w) {
        tracing::error!(error = %e, "could not write the audit witness");
        return Err(e.to_string());
    }
    let noted = conn.execute(
        "INSERT INTO meta (key, value) VALUES ('witness_file', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE value != excluded.value",
        [path.to_string_lossy()],
    );
    if let Err(e) = noted {
        tracing::error!(error = %e, "could not note the audit witness in the database");
    }
    Ok(())
}

/// Verifies `conn` over `scope`, then against the witness at `path`. The witness is read
/// first: it is written after its commit, so the database read after it holds at least that.
fn integrity(
    conn: &Connection,
    key: &VerifyingKey,
    path: &Path,
    scope: Scope,
) -> rusqlite::Result<VerifyReport> {
    let read = witness::read(path);
    let mut report = super::verify::verify_scope(conn, key, scope)?;
    let newest: Option<i64> =
        conn.query_row("SELECT MAX(seq) FROM checkpoints", [], |r| r.get(0))?;
    let at = newest.map_or(0, |s| s as u64);
    match read {
        Ok(Some(w)) => super::verify::check_witness(conn, key, &w, &mut report)?,
        Ok(None) => {
            let noted: Option<String> = conn
                .query_row(
                    "SELECT value FROM meta WHERE key = 'witness_file'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if noted.as_deref() == Some(&*path.to_string_lossy()) {
                report.bad(at, format!("the witness file {} is missing, though loongd wrote it (it was deleted, or the trail's newest checkpoint cannot be confirmed); restore it from a backup or the SIEM's last checkpoint line", path.display()));
            }
        }
        Err(e) => report.bad(at, e.to_string()),
    }
    // The witness the newest start named, when the configuration now names another: a
    // configuration pointed at a fresh path (and the database's note of the old one
    // deleted) must not set aside the witness kept out of reach. One the operator moved
    // away is gone, and is not asked for.
    let named: Option<String> = conn
        .query_row(
            "SELECT json_extract(detail, '$.audit_witness') FROM audit WHERE kind = ?1 ORDER BY seq DESC LIMIT 1",
            [super::Kind::DaemonStarted.as_str()],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten();
    if let Some(old) = named.filter(|n| Path::new(n) != path) {
        match witness::read(Path::new(&old)) {
            Ok(Some(w)) => super::verify::check_witness(conn, key, &w, &mut report)?,
            Ok(None) => {}
            Err(e) => report.bad(at, e.to_string()),
        }
    }
    Ok(report)
}

/// The last run in the trail: whether it stopped cleanly, and its calls without an outcome.
fn previous_run(conn: &Connection) -> rusqlite::Result<PreviousRun> {
    let last_of = |kind: Kind| -> rusqlite::Result<Option<i64>> {
        conn.query_row(
            "SELECT MAX(seq) FROM audit WHERE kind = ?1",
            [kind.as_str()],
            |r| r.get(0),
        )
    };
    let last_seq: Option<i64> = conn.query_row("SELECT MAX(seq) FROM audit", [], |r| r.get(0))?;
    let Some(started) = last_of(Kind::DaemonStarted)? else {
        return Ok(PreviousRun {
            last_seq: last_seq.map_or(0, |s| s as u64),
            ..PreviousRun::default()
        });
    };
    let stopped = last_of(Kind::DaemonStopped)?.is_some_and(|s| s > started);
    let unclean = (!stopped).then_some(started as u64);
    let last_seq = last_seq.map_or(0, |s| s as u64);
    if every_call_answered(conn, started)? {
        return Ok(PreviousRun {
            unclean,
            last_seq,
            dangling: Vec::new(),
            scanned: 0,
        });
    }
    // Correlations are unique within one run: an outcome after the invocation closes it.
    let mut scanned = 0u64;
    let mut answered = std::collections::HashSet::new();
    let mut stmt =
        conn.prepare("SELECT correlation FROM audit WHERE kind IN (?1, ?2) AND seq > ?3")?;
    let mut rows = stmt.query(params![
        Kind::ToolCompleted.as_str(),
        Kind::ToolFailed.as_str(),
        started
    ])?;
    while let Some(r) = rows.next()? {
        scanned += 1;
        answered.insert(r.get::<_, String>(0)?);
    }
    let mut stmt = conn.prepare(
        "SELECT seq, actor, correlation, json_extract(detail, '$.tool') FROM audit WHERE kind = ?1 AND seq > ?2 ORDER BY seq",
    )?;
    let dangling = stmt
        .query_map(params![Kind::ToolInvoked.as_str(), started], |r| {
            Ok(Dangling {
                seq: r.get::<_, i64>(0)? as u64,
                actor: r.get(1)?,
                correlation: r.get(2)?,
                tool: r.get::<_, Option<String>>(3).ok().flatten(),
            })
        })?
        .inspect(|_| scanned += 1)
        .filter(|d| {
            d.as_ref()
                .map_or(true, |d| !answered.contains(&d.correlation))
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(PreviousRun {
        unclean,
        last_seq,
        dangling,
        scanned,
    })
}

/// Whether every `tool.invoked` of the run that began at `started` has its outcome, told
/// from counts of the kind index alone (no record is read but the few after `started`):
/// each invocation records exactly one outcome (`tool.completed` or `tool.failed`) in its
/// own run, and the only other outcomes in a run are the `tool.failed` its start recorded
/// for the run before's unanswered calls, in the start's own commit (`invoked_seq` before
/// `started`). So the counts balance exactly when no call is left open; when they do not,
/// the caller reads the run's tool records to name the open ones.
fn every_call_answered(conn: &Connection, started: i64) -> rusqlite::Result<bool> {
    let count = |kinds: &[Kind]| -> rusqlite::Result<i64> {
        let mut n = 0;
        for k in kinds {
            n += conn.query_row(
                "SELECT COUNT(*) FROM audit WHERE kind = ?1 AND seq > ?2",
                params![k.as_str(), started],
                |r| r.get::<_, i64>(0),
            )?;
        }
        Ok(n)
    };
    let invoked = count(&[Kind::ToolInvoked])?;
    let outcomes = count(&[Kind::ToolCompleted, Kind::ToolFailed])?;
    // The start's commit: its unclean-stop note, then one failure per earlier open call.
    let mut stmt = conn.prepare(
        "SELECT kind, json_extract(detail, '$.invoked_seq') FROM audit WHERE seq > ?1 ORDER BY seq",
    )?;
    let mut rows = stmt.query([started])?;
    let mut earlier = 0i64;
    while let Some(r) = rows.next()? {
        let kind: String = r.get(0)?;
        let invoked_seq: Option<i64> = r.get::<_, Option<i64>>(1).ok().flatten();
        if kind == Kind::DaemonUncleanStop.as_str() {
            continue;
        }
        match invoked_seq {
            Some(s) if kind == Kind::ToolFailed.as_str() && s < started => earlier += 1,
            _ => break,
        }
    }
    Ok(outcomes - earlier == invoked)
}

#[cfg(test)]
#[path = "help_tests.rs"]
mod help_tests;
