//! Tests of the log's layout on SQLite's own files, without the trail: under the write lock
//! only, never after a frame a crash cut short, never through a link.

use std::path::Path;

use rusqlite::Connection;

use super::*;

/// The log is laid out only under SQLite's write lock (another connection committing
/// between the read of the log's end and the zeros would have its frames overwritten), and
/// not at all when it ends inside a frame (zeros could complete a frame a crash cut short,
/// a commit never acknowledged); with each obstacle gone, it is, and the records in it are
/// kept.
#[test]
fn the_log_is_laid_out_only_under_the_write_lock_and_never_after_a_cut_frame() {
    let len = |p: &Path| std::fs::metadata(p).expect("the log").len();
    let rows = |db: &Path| -> i64 {
        Connection::open(db)
            .expect("db")
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count")
    };
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("t.db");
    let ours = Connection::open(&db).expect("db");
    ours.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    ours.busy_timeout(std::time::Duration::from_millis(50))
        .expect("timeout");
    ours.execute_batch("CREATE TABLE t (x BLOB)")
        .expect("table");
    let theirs = Connection::open(&db).expect("db");
    theirs
        .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (zeroblob(10000));")
        .expect("their write");
    let before = len(&path(&db));
    assert!(
        lay_out(&ours, &db).is_err(),
        "laid out while another connection held the write lock"
    );
    assert_eq!(
        len(&path(&db)),
        before,
        "the log was written without the lock"
    );
    assert!(ours.is_autocommit());
    theirs.execute_batch("COMMIT").expect("their commit");
    lay_out(&ours, &db).expect("laid out once the lock is free");
    let laid = len(&path(&db));
    assert!(
        laid > 1000 * (4096 + WAL_FRAME_HEADER_BYTES),
        "the log is {laid} bytes"
    );
    assert!(ours.is_autocommit());

    // Crash copies: the files as they are now (the log holds their commit), and the same
    // with the log cut inside its last frame.
    let copy = |cut: Option<u64>| -> (tempfile::TempDir, std::path::PathBuf) {
        let to = tempfile::tempdir().expect("dir");
        let copied = to.path().join("t.db");
        std::fs::copy(&db, &copied).expect("copies");
        std::fs::copy(path(&db), path(&copied)).expect("copies");
        if let Some(at) = cut {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path(&copied))
                .expect("the log");
            f.set_len(at).expect("cut");
        }
        (to, copied)
    };
    let (_kept, whole) = copy(None);
    assert_eq!(
        rows(&whole),
        1,
        "their committed row is recovered from the log"
    );
    // The log holds more than three frames (the table's, their row's): cut it inside its
    // third, as a crash in that frame's write would.
    let frame = 4096 + WAL_FRAME_HEADER_BYTES;
    let frames_end = WAL_HEADER_BYTES + 3 * frame;
    let (_cut_dir, cut) = copy(Some(frames_end - 100));
    let conn = Connection::open(&cut).expect("db");
    lay_out(&conn, &cut).expect("nothing to do is not an error");
    assert_eq!(len(&path(&cut)), frames_end - 100, "a cut log was laid out");
    // The positive control: the same log cut at a frame's end is laid out.
    let (_whole_dir, at_end) = copy(Some(frames_end));
    let conn = Connection::open(&at_end).expect("db");
    lay_out(&conn, &at_end).expect("laid out");
    assert!(len(&path(&at_end)) > frames_end);
}

/// The log is opened without following a link: one planted at the log's name (here while
/// SQLite holds the real log open) gets no zeros and its target is untouched; with the real
/// log back at its name, it is laid out.
#[test]
fn a_link_at_the_logs_name_is_not_followed() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("t.db");
    let ours = Connection::open(&db).expect("db");
    ours.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    ours.execute_batch("CREATE TABLE t (x)").expect("table");
    let real = dir.path().join("real-wal");
    std::fs::rename(path(&db), &real).expect("moved aside");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"not a log").expect("victim");
    std::os::unix::fs::symlink(&victim, path(&db)).expect("link");
    assert!(lay_out(&ours, &db).is_err(), "laid out through a link");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"not a log");
    assert!(ours.is_autocommit());
    std::fs::remove_file(path(&db)).expect("unlink");
    std::fs::rename(&real, path(&db)).expect("moved back");
    let before = std::fs::metadata(path(&db)).expect("the log").len();
    lay_out(&ours, &db).expect("laid out");
    assert!(std::fs::metadata(path(&db)).expect("the log").len() > before);
}
