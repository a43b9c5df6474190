//! Commits made by a waiter in the writer's stead ([`Commit::committed`]): in order with
//! what the writer holds, never a stop, never a large group, never a retry of a failed
//! commit, and only on a multi-thread runtime. The writer thread is held before it takes
//! anything ([`Audit::pause_writer`]), as a writer woken on a halted CPU is held.

use std::time::Duration;

use rusqlite::Connection;

use super::super::{open, verify, AuditKey, Event, Kind, Query, DB_FILE, HELP_MAX};
use super::*;

/// Long enough for a commit nobody makes to show that nobody makes it.
const HELD: Duration = Duration::from_millis(200);
/// Long enough for a commit someone makes on a busy machine.
const DUE: Duration = Duration::from_secs(10);

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn ev(kind: Kind, i: u64) -> Event {
    Event::daemon(kind, serde_json::json!({ "i": i }))
}

/// The trail's records, oldest first, as (kind, `i`).
fn trail(audit: &Audit) -> Vec<(String, Option<u64>)> {
    let all = Query {
        limit: u32::MAX,
        ascending: true,
        ..Query::default()
    };
    audit
        .query(&all)
        .expect("query")
        .into_iter()
        .map(|r| {
            let detail: serde_json::Value = serde_json::from_str(&r.detail).expect("json");
            (r.kind, detail["i"].as_u64())
        })
        .collect()
}

fn verifies(dir: &Path) -> bool {
    let key = AuditKey::load_or_create(&dir.join("keys")).expect("key");
    let conn = Connection::open(dir.join(DB_FILE)).expect("db");
    verify(&conn, &key.verifying())
        .expect("verifies")
        .first_bad
        .is_none()
}

/// An opened trail whose writer has committed once and gone to sleep, then is held.
fn held_trail(dir: &Path) -> Audit {
    let audit = open(dir).expect("opens");
    current_thread().block_on(async {
        audit
            .record(ev(Kind::DaemonStarted, 0))
            .await
            .expect("records");
    });
    // Past the linger after that commit: the writer waits without end, and the next
    // message wakes it into the pause, before it takes anything.
    std::thread::sleep(LINGER * 3);
    audit.pause_writer(true);
    audit
}

/// With the writer held, a waiter commits its record itself, and with it, in order, what
/// was queued before it (a record nobody waits for). The controls: on a current-thread
/// runtime the waiter does not (its record waits for the writer), nor when the group would
/// be larger than `HELP_MAX` records.
#[test]
fn a_waiter_commits_in_the_writers_stead_in_order_and_only_where_it_may() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = held_trail(dir.path());
    multi_thread().block_on(async {
        audit.record_later(ev(Kind::WorkerExited, 1)).await;
        let commit = audit.queue(ev(Kind::ToolInvoked, 2)).await.expect("queued");
        let seq = tokio::time::timeout(DUE, commit.committed())
            .await
            .expect("the waiter committed while the writer was held")
            .expect("committed");
        assert_eq!(seq, 3, "the waited record follows the earlier one");
    });
    assert_eq!(audit.commits_by_waiters(), 1);
    // The control: a current-thread runtime has no other thread to run its tasks.
    current_thread().block_on(async {
        let commit = audit.queue(ev(Kind::ToolInvoked, 3)).await.expect("queued");
        let waiting = commit.committed();
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(HELD, &mut waiting).await.is_err(),
            "a record was committed on a current-thread runtime while the writer was held"
        );
        audit.pause_writer(false);
        let seq = tokio::time::timeout(DUE, waiting)
            .await
            .expect("the writer commits it once let go")
            .expect("committed");
        assert_eq!(seq, 4);
    });
    assert_eq!(audit.commits_by_waiters(), 1, "a waiter committed");
    // The bound: a group larger than HELP_MAX records is the writer's, even on a
    // multi-thread runtime.
    std::thread::sleep(LINGER * 3);
    audit.pause_writer(true);
    multi_thread().block_on(async {
        for i in 0..HELP_MAX as u64 {
            audit.record_later(ev(Kind::WorkerExited, 100 + i)).await;
        }
        let commit = audit.queue(ev(Kind::ToolInvoked, 5)).await.expect("queued");
        let waiting = commit.committed();
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(HELD, &mut waiting).await.is_err(),
            "a waiter committed a group of more than HELP_MAX records"
        );
        audit.pause_writer(false);
        let seq = tokio::time::timeout(DUE, waiting)
            .await
            .expect("the writer commits it once let go")
            .expect("committed");
        assert_eq!(seq, 5 + HELP_MAX as u64);
        audit.shutdown().await;
    });
    assert_eq!(audit.commits_by_waiters(), 1, "a waiter committed");
    let order: Vec<_> = trail(&audit).into_iter().map(|(_, i)| i).collect();
    let mut expected = vec![Some(0), Some(1), Some(2), Some(3)];
    expected.extend((0..HELP_MAX as u64).map(|i| Some(100 + i)));
    expected.push(Some(5));
    assert_eq!(order, expected);
    assert!(verifies(dir.path()));
}

/// A waiter takes nothing from behind a stop: the records before it are committed by the
/// waiter, a record queued after it is the writer's, which stops first (its waiter hears so),
/// and the trail verifies.
#[test]
fn a_waiter_never_takes_the_writers_stop_nor_what_follows_it() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = held_trail(dir.path());
    multi_thread().block_on(async {
        let before = audit.queue(ev(Kind::ToolInvoked, 1)).await.expect("queued");
        // The stop, as `Audit::shutdown` queues it (not awaited here: a stop taken by a
        // waiter would leave the writer running, and the test would hang, not fail).
        let (ack, stopped) = tokio::sync::oneshot::channel();
        assert!(audit.tx.send(Msg::Shutdown(ack)).await.is_ok());
        assert_eq!(audit.queue_depth(), 2, "the stop was not queued");
        let after = audit
            .queue(ev(Kind::ToolInvoked, 2))
            .await
            .expect("queued before the writer stopped");
        let seq = tokio::time::timeout(DUE, before.committed())
            .await
            .expect("the waiter committed the record before the stop")
            .expect("committed");
        assert_eq!(seq, 2);
        let waiting = after.committed();
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(HELD, &mut waiting).await.is_err(),
            "a waiter committed past the writer's stop"
        );
        audit.pause_writer(false);
        let after = tokio::time::timeout(DUE, waiting)
            .await
            .expect("the stopped writer answers");
        assert!(
            matches!(after, Err(AuditError::Stopped)),
            "a record queued behind the stop: {after:?}"
        );
        tokio::time::timeout(DUE, stopped)
            .await
            .expect("the writer acknowledges its stop")
            .expect("acknowledged");
        let writer = audit
            .thread
            .lock()
            .expect("the writer's handle")
            .take()
            .expect("the writer's thread");
        let deadline = std::time::Instant::now() + DUE;
        while !writer.is_finished() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(writer.is_finished(), "the writer did not stop");
    });
    assert_eq!(audit.commits_by_waiters(), 1);
    let kinds: Vec<_> = trail(&audit).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        [Kind::DaemonStarted.as_str(), Kind::ToolInvoked.as_str()]
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
    );
    assert!(verifies(dir.path()));
}

/// A waiter's commit that fails keeps the records of effects that happened and refuses its
/// own (it announces an effect that waits for it); the next waiter does not try again
/// before the writer's pause, and the writer, let go, commits what was kept, then the next.
#[test]
fn a_waiters_failed_commit_is_kept_for_the_writer_and_not_retried_by_waiters() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = held_trail(dir.path());
    let blocker = Connection::open(dir.path().join(DB_FILE)).expect("db");
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("the write lock");
    multi_thread().block_on(async {
        audit.record_later(ev(Kind::WorkerExited, 1)).await;
        let refused = audit.queue(ev(Kind::ToolInvoked, 2)).await.expect("queued");
        let refused = tokio::time::timeout(DUE, refused.committed())
            .await
            .expect("the waiter's commit failed at once");
        assert!(
            matches!(refused, Err(AuditError::Commit(_))),
            "a commit under another connection's write lock: {refused:?}"
        );
        assert_eq!(audit.commits_by_waiters(), 1);
        blocker.execute_batch("COMMIT").expect("released");
        // The lock is gone, but the last commit failed: the retry is the writer's.
        let next = audit.queue(ev(Kind::ToolInvoked, 3)).await.expect("queued");
        let waiting = next.committed();
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(HELD, &mut waiting).await.is_err(),
            "a waiter retried a failed commit"
        );
        audit.pause_writer(false);
        let seq = tokio::time::timeout(DUE, waiting)
            .await
            .expect("the writer commits once let go")
            .expect("committed");
        assert_eq!(seq, 3, "the kept record, then this one");
        audit.shutdown().await;
    });
    assert_eq!(audit.commits_by_waiters(), 1);
    let order: Vec<_> = trail(&audit).into_iter().take(3).collect();
    assert_eq!(
        order,
        vec![
            (Kind::DaemonStarted.as_str().to_string(), Some(0)),
            (Kind::WorkerExited.as_str().to_string(), Some(1)),
            (Kind::ToolInvoked.as_str().to_string(), Some(3)),
        ]
    );
    assert!(verifies(dir.path()));
}

/// Waiters and the writer race for commits (four runtime threads, the writer free): every
/// acknowledged sequence number is its own record's, every record is in the trail once, and
/// the trail verifies.
#[test]
fn waiters_and_the_writer_racing_for_commits_keep_one_chain() {
    const TASKS: u64 = 8;
    const EACH: u64 = 150;
    let dir = tempfile::tempdir().expect("dir");
    let audit = open(dir.path()).expect("opens");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let audit = audit.clone();
                tokio::spawn(async move {
                    for n in 0..EACH {
                        let i = t * 1000 + n;
                        if n % 4 == 0 {
                            audit.record_later(ev(Kind::WorkerExited, i)).await;
                            continue;
                        }
                        let commit = audit.queue(ev(Kind::ToolInvoked, i)).await.expect("queued");
                        let seq = commit.committed().await.expect("committed");
                        let record = audit.get(seq).expect("reads").expect("on disk");
                        let detail: serde_json::Value =
                            serde_json::from_str(&record.detail).expect("json");
                        assert_eq!(detail["i"].as_u64(), Some(i), "another record's number");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        audit.shutdown().await;
    });
    let records = trail(&audit);
    let mut seen: Vec<u64> = records.iter().filter_map(|(_, i)| *i).collect();
    seen.sort_unstable();
    let mut expected: Vec<u64> = (0..TASKS)
        .flat_map(|t| (0..EACH).map(move |n| t * 1000 + n))
        .collect();
    expected.sort_unstable();
    assert_eq!(seen, expected, "a record lost or written twice");
    assert!(verifies(dir.path()));
    // How many commits were the waiters' depends on the scheduler (the tests above make one
    // deterministically); it is printed, not asserted.
    eprintln!("{} commits made by waiters", audit.commits_by_waiters());
}
