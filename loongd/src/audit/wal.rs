//! The audit trail's write-ahead log, laid out ahead at each open so that a commit
//! overwrites written blocks instead of extending the file (docs/SECURITY.md, "The audit
//! trail"; docs/performance-log.md, "The trail's log laid out ahead").

use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// SQLite's write-ahead log of the database at `db`: `<db>-wal`.
pub(super) fn path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// Lays out the trail's write-ahead log (`<db>-wal`) up to the size it reaches before
/// SQLite's automatic checkpoint restarts it (`wal_autocheckpoint` frames of `page_size`
/// bytes and their headers, and [`WAL_LAYOUT_MARGIN_FRAMES`] for the commit that crosses
/// it), in written zeros, once per open. SQLite deletes the log at a clean close and grows
/// it from nothing after each start; a commit that extends the file changes its size, so
/// its `fdatasync` waits for a journal commit of the file system (a kernel thread woken on
/// a busy CPU), and one that overwrites written blocks does not. Zeros past the log's valid
/// frames are what SQLite's recovery reads as the log's end (a frame whose salt and
/// checksum do not match its header's, or a header without the log's magic number):
/// <https://www.sqlite.org/fileformat2.html#walformat>.
///
/// It runs under SQLite's write lock (an empty `BEGIN IMMEDIATE` transaction, which writes
/// no frame), so no other connection on the file appends while the log's end is read and
/// zeros are written after it. The file is opened without following a link; nothing is
/// done to a log larger already, nor past [`MAX_WAL_LAYOUT_BYTES`], nor to one that ends
/// inside its header or a frame (a write a crash cut short: zeros after it could complete
/// that frame as it was being written, a commit never acknowledged).
pub(super) fn lay_out(conn: &Connection, db: &Path) -> std::io::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(std::io::Error::other)?;
    let laid = lay_out_locked(conn, db);
    let ended = conn
        .execute_batch("COMMIT")
        .or_else(|_| conn.execute_batch("ROLLBACK"));
    laid.and(ended.map_err(std::io::Error::other))
}

fn lay_out_locked(conn: &Connection, db: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let pragma = |name: &str| -> std::io::Result<u64> {
        conn.pragma_query_value(None, name, |r| r.get::<_, i64>(0))
            .map_err(std::io::Error::other)
            .map(|v| u64::try_from(v).unwrap_or(0))
    };
    let (frames, page) = (pragma("wal_autocheckpoint")?, pragma("page_size")?);
    let frame = page + WAL_FRAME_HEADER_BYTES;
    let want = (WAL_HEADER_BYTES
        + frames
            .saturating_add(WAL_LAYOUT_MARGIN_FRAMES)
            .saturating_mul(frame))
    .min(MAX_WAL_LAYOUT_BYTES);
    let wal = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path(db))?;
    let mut at = wal.metadata()?.len();
    if at >= want {
        return Ok(());
    }
    if at != 0 && (at < WAL_HEADER_BYTES || !(at - WAL_HEADER_BYTES).is_multiple_of(frame)) {
        tracing::info!(db = %db.display(), bytes = at, "the audit trail's write-ahead log ends inside a frame (a write a crash cut short); it is not laid out ahead this run");
        return Ok(());
    }
    let zeros = vec![0u8; WAL_LAYOUT_CHUNK_BYTES];
    while at < want {
        let n = usize::try_from(want - at).map_or(zeros.len(), |left| left.min(zeros.len()));
        wal.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    wal.sync_data()
}

/// The write-ahead log's header and each frame's (SQLite's file format).
pub(super) const WAL_HEADER_BYTES: u64 = 32;
pub(super) const WAL_FRAME_HEADER_BYTES: u64 = 24;
/// Frames laid out past the automatic checkpoint's threshold: the commit that crosses it
/// writes all its frames before the checkpoint runs (a run's commit writes a few; a
/// burst's group commit more).
pub(super) const WAL_LAYOUT_MARGIN_FRAMES: u64 = 128;
/// The most of the write-ahead log laid out ahead: SQLite's default (1,000 frames of 4 KiB)
/// is about 4 MiB; a configuration past this one is laid out only up to it.
const MAX_WAL_LAYOUT_BYTES: u64 = 16 << 20;
/// Zeros written at once while laying the log out.
const WAL_LAYOUT_CHUNK_BYTES: usize = 256 << 10;

#[cfg(test)]
#[path = "wal_tests.rs"]
mod tests;
