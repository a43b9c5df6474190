//! Commits made by a waiter in the writer's stead ([`Commit::committed`]): in order with
//! what the writer holds, never a stop, never a large group, never a retry of a failed
//! commit, and only on a multi-thread runtime. The writer thread is held before it takes
//! anything ([`Audit::pause_writer`]), as a writer woken on a halted CPU is held.

use std::time::Duration;

use rusqlite::Connection;

use super::super::{open, siem, verify, witness, AuditKey, Event, Kind, Query, DB_FILE, HELP_MAX};
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

/// With the writer held, queues `before` (records nobody waits for) and `event`, and waits
/// for `event` with `wait` on `rt`: it must not be committed within `HELD` (nobody but the
/// writer may commit it); let go, the writer commits it. Returns its sequence number, the
/// writer held again.
fn left_to_the_writer<F>(
    audit: &Audit,
    rt: tokio::runtime::Runtime,
    before: Vec<Event>,
    event: Event,
    wait: fn(Commit) -> F,
    what: &str,
) -> u64
where
    F: std::future::Future<Output = Result<u64, AuditError>>,
{
    let seq = rt.block_on(async {
        for e in before {
            audit.record_later(e).await;
        }
        let commit = audit.queue(event).await.expect("queued");
        let waiting = wait(commit);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(HELD, &mut waiting).await.is_err(),
            "{what} while the writer was held"
        );
        audit.pause_writer(false);
        tokio::time::timeout(DUE, waiting)
            .await
            .expect("the writer commits it once let go")
            .expect("committed")
    });
    // Past the linger after that commit, then held again before it takes anything.
    std::thread::sleep(LINGER * 3);
    audit.pause_writer(true);
    seq
}

/// With the writer held, a waiter with nothing else to do commits its record itself, and
/// with it, in order, what was queued before it (a record nobody waits for). The controls:
/// a waiter that waits with `committed` (its commit overlaps work of its own) does not, nor
/// one on a current-thread runtime, nor one whose group would be larger than `HELP_MAX`
/// records: each record waits for the writer.
#[test]
fn a_waiter_commits_in_the_writers_stead_in_order_and_only_where_it_may() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = held_trail(dir.path());
    multi_thread().block_on(async {
        audit.record_later(ev(Kind::WorkerExited, 1)).await;
        let commit = audit.queue(ev(Kind::ToolInvoked, 2)).await.expect("queued");
        let seq = tokio::time::timeout(DUE, commit.commit_here())
            .await
            .expect("the waiter committed while the writer was held")
            .expect("committed");
        assert_eq!(seq, 3, "the waited record follows the earlier one");
    });
    assert_eq!(audit.commits_by_waiters(), 1);
    let seq = left_to_the_writer(
        &audit,
        multi_thread(),
        Vec::new(),
        ev(Kind::ToolInvoked, 3),
        Commit::committed,
        "a waiter that waits with `committed` committed",
    );
    assert_eq!(seq, 4);
    let seq = left_to_the_writer(
        &audit,
        current_thread(),
        Vec::new(),
        ev(Kind::ToolInvoked, 4),
        Commit::commit_here,
        "a waiter on a current-thread runtime committed",
    );
    assert_eq!(seq, 5);
    let seq = left_to_the_writer(
        &audit,
        multi_thread(),
        (0..HELP_MAX as u64)
            .map(|i| ev(Kind::WorkerExited, 100 + i))
            .collect(),
        ev(Kind::ToolInvoked, 5),
        Commit::commit_here,
        "a waiter committed a group of more than HELP_MAX records",
    );
    assert_eq!(seq, 6 + HELP_MAX as u64);
    audit.pause_writer(false);
    current_thread().block_on(audit.shutdown());
    assert_eq!(audit.commits_by_waiters(), 1, "a waiter committed");
    let order: Vec<_> = trail(&audit).into_iter().map(|(_, i)| i).collect();
    let mut expected: Vec<_> = (0..=4).map(Some).collect();
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
        let seq = tokio::time::timeout(DUE, before.commit_here())
            .await
            .expect("the waiter committed the record before the stop")
            .expect("committed");
        assert_eq!(seq, 2);
        let waiting = after.commit_here();
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
/// The failure: a row slipped in at the next sequence number by another connection.
#[test]
fn a_waiters_failed_commit_is_kept_for_the_writer_and_not_retried_by_waiters() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = held_trail(dir.path());
    let other = Connection::open(dir.path().join(DB_FILE)).expect("db");
    let slip = |sql: &str| {
        other
            .execute(sql, [])
            .expect("another connection writes between commits")
    };
    slip("INSERT INTO audit VALUES (2, 0, 'x', 'x', '', '{}', x'', x'')");
    multi_thread().block_on(async {
        audit.record_later(ev(Kind::WorkerExited, 1)).await;
        let refused = audit.queue(ev(Kind::ToolInvoked, 2)).await.expect("queued");
        let refused = tokio::time::timeout(DUE, refused.commit_here())
            .await
            .expect("the waiter's commit failed at once");
        assert!(
            matches!(refused, Err(AuditError::Commit(_))),
            "a commit over a slipped-in row: {refused:?}"
        );
        assert_eq!(audit.commits_by_waiters(), 0, "a failed commit counted");
        slip("DELETE FROM audit WHERE seq = 2");
        // The row is gone, but the last commit failed: the retry is the writer's.
        let next = audit.queue(ev(Kind::ToolInvoked, 3)).await.expect("queued");
        let waiting = next.commit_here();
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
    assert_eq!(audit.commits_by_waiters(), 0);
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

/// A waiter whose commit meets another connection's write lock does not wait for it on its
/// runtime thread (the writer's wait is up to `WRITER_BUSY_TIMEOUT`): its group goes back
/// to the writer, which commits it once the lock is gone; nothing is refused or lost. Were
/// the waiter to wait for the lock, its poll could not be cut short: the wait below would
/// last the whole busy timeout.
#[test]
fn a_waiter_meeting_another_connections_lock_leaves_its_group_to_the_writer() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = held_trail(dir.path());
    let blocker = Connection::open(dir.path().join(DB_FILE)).expect("db");
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("the write lock");
    multi_thread().block_on(async {
        audit.record_later(ev(Kind::WorkerExited, 1)).await;
        let commit = audit.queue(ev(Kind::ToolInvoked, 2)).await.expect("queued");
        let waiting = commit.commit_here();
        tokio::pin!(waiting);
        let began = std::time::Instant::now();
        let early = tokio::time::timeout(HELD, &mut waiting).await;
        let took = began.elapsed();
        assert!(early.is_err(), "the locked commit answered: {early:?}");
        // Not a timing: a waiter that waits for the lock is held the whole busy timeout.
        assert!(
            took < WRITER_BUSY_TIMEOUT / 2,
            "the waiter waited {took:?} for the lock on its runtime thread"
        );
        blocker.execute_batch("COMMIT").expect("released");
        audit.pause_writer(false);
        let seq = tokio::time::timeout(DUE, waiting)
            .await
            .expect("the writer commits once let go")
            .expect("committed");
        assert_eq!(seq, 3);
        audit.shutdown().await;
    });
    assert_eq!(audit.commits_by_waiters(), 0);
    let order: Vec<_> = trail(&audit).into_iter().map(|(_, i)| i).collect();
    assert_eq!(order, vec![Some(0), Some(1), Some(2)]);
    assert!(verifies(dir.path()));
}

/// What a waiter leaves to the writer although it could take it: a group that signs a
/// checkpoint (here a start's, whose witness is written and synced), and any group of a
/// trail with a SIEM lane. Each waits while the writer is held and is committed once it
/// is let go. The control is the first test: a plain group, committed by the waiter.
#[test]
fn a_waiter_leaves_a_signing_group_and_a_shipped_one_to_the_writer() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = held_trail(dir.path());
    let shipped = tempfile::tempdir().expect("dir");
    let jsonl = shipped.path().join("audit.jsonl");
    let siem = siem::SiemConfig {
        jsonl: Some((jsonl.clone(), siem::FailureMode::Closed)),
        syslog: None,
    };
    let laned = super::super::open_with(
        shipped.path(),
        siem,
        super::super::Durability::Full,
        &shipped.path().join(witness::DEFAULT_WITNESS_FILE),
    )
    .expect("opens");
    current_thread().block_on(async {
        laned
            .record(ev(Kind::WorkerExited, 0))
            .await
            .expect("records");
    });
    std::thread::sleep(LINGER * 3);
    laned.pause_writer(true);
    for (trail_, event) in [
        (&audit, ev(Kind::DaemonStarted, 1)),
        (&laned, ev(Kind::ToolInvoked, 1)),
    ] {
        multi_thread().block_on(async {
            let commit = trail_.queue(event).await.expect("queued");
            let waiting = commit.commit_here();
            tokio::pin!(waiting);
            assert!(
                tokio::time::timeout(HELD, &mut waiting).await.is_err(),
                "a waiter committed a group that was the writer's"
            );
            trail_.pause_writer(false);
            let seq = tokio::time::timeout(DUE, waiting)
                .await
                .expect("the writer commits once let go")
                .expect("committed");
            assert_eq!(seq, 2);
            trail_.shutdown().await;
        });
        assert_eq!(trail_.commits_by_waiters(), 0);
    }
    // The second start is signed (a second start without a stop between them is, to the
    // verifier, an unclean stop's: only the laned trail is verified whole).
    let signed: i64 = Connection::open(dir.path().join(DB_FILE))
        .expect("db")
        .query_row("SELECT count(*) FROM checkpoints WHERE seq = 2", [], |r| {
            r.get(0)
        })
        .expect("checkpoints");
    assert_eq!(signed, 1, "the start's group was committed unsigned");
    assert!(verifies(shipped.path()));
    let lines = std::fs::read_to_string(&jsonl).expect("the lane's file");
    for kind in [Kind::WorkerExited, Kind::ToolInvoked] {
        let shipped = format!("\"kind\":\"{}\"", kind.as_str());
        assert!(lines.contains(&shipped), "{kind:?} not shipped: {lines}");
    }
}

/// Nothing is committed after the writer's stop, whoever would commit it: once the stop is
/// committed and acknowledged, a record queued by a request still running is refused (the
/// writer stopped), here while the stopped writer's thread is held before it ends (where a
/// core still open would let a waiter commit past the final checkpoint).
#[test]
fn nothing_is_committed_after_the_writers_stop() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = open(dir.path()).expect("opens");
    multi_thread().block_on(async {
        audit
            .record(ev(Kind::WorkerExited, 0))
            .await
            .expect("records");
        audit.hold_stopped_writer(true);
        let (ack, stopped) = tokio::sync::oneshot::channel();
        assert!(audit.tx.send(Msg::Shutdown(ack)).await.is_ok());
        tokio::time::timeout(DUE, stopped)
            .await
            .expect("the writer acknowledges its stop")
            .expect("acknowledged");
        let late = match audit.queue(ev(Kind::ToolInvoked, 1)).await {
            Ok(commit) => tokio::time::timeout(DUE, commit.commit_here())
                .await
                .expect("answered"),
            Err(e) => Err(e),
        };
        audit.hold_stopped_writer(false);
        assert!(
            matches!(late, Err(AuditError::Stopped)),
            "a record after the stop: {late:?}"
        );
    });
    let order: Vec<_> = trail(&audit).into_iter().map(|(_, i)| i).collect();
    assert_eq!(order, vec![Some(0)]);
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
                        let seq = commit.commit_here().await.expect("committed");
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

/// A waiter's commit does not checkpoint the write-ahead log into the database (several MiB
/// written and synced on a runtime thread), and leaves the connection as the writer had it
/// (its busy timeout, its automatic checkpoint); the writer's next commit checkpoints. The
/// automatic checkpoint is set to one page here, so that any commit crosses it; the database
/// file grows only when the log is checkpointed into it.
#[test]
fn a_waiters_commit_does_not_checkpoint_the_log_and_leaves_the_connection_as_it_was() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = held_trail(dir.path());
    let pragma = |name: &str| -> i64 {
        let held = audit.writer.core.lock().expect("the core");
        let core = held.as_ref().expect("open");
        core.conn
            .pragma_query_value(None, name, |r| r.get(0))
            .expect("pragma")
    };
    {
        let mut held = audit.writer.core.lock().expect("the core");
        let core = held.as_mut().expect("open");
        core.conn
            .pragma_update(None, "wal_autocheckpoint", 1)
            .expect("pragma");
        core.autocheckpoint = 1;
    }
    let timeout_before = pragma("busy_timeout");
    let size = || {
        std::fs::metadata(dir.path().join(DB_FILE))
            .expect("the database")
            .len()
    };
    let wide = |i: u64| {
        Event::daemon(
            Kind::WorkerExited,
            serde_json::json!({ "i": i, "pad": "x".repeat(2000) }),
        )
    };
    let before = size();
    multi_thread().block_on(async {
        for i in 1..=20 {
            audit.record_later(wide(i)).await;
        }
        let commit = audit
            .queue(ev(Kind::ToolInvoked, 21))
            .await
            .expect("queued");
        tokio::time::timeout(DUE, commit.commit_here())
            .await
            .expect("the waiter committed")
            .expect("committed");
    });
    assert_eq!(audit.commits_by_waiters(), 1);
    assert_eq!(size(), before, "the waiter's commit checkpointed the log");
    assert_eq!(pragma("wal_autocheckpoint"), 1);
    assert_eq!(pragma("busy_timeout"), timeout_before);
    // The control: the writer's commit checkpoints.
    audit.pause_writer(false);
    current_thread().block_on(async {
        audit
            .record(ev(Kind::ToolInvoked, 22))
            .await
            .expect("records");
    });
    assert!(
        size() > before,
        "the writer's commit did not checkpoint the log"
    );
    current_thread().block_on(audit.shutdown());
    assert!(verifies(dir.path()));
}
