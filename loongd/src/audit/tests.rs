//! The audit trail's tests: the writer's groups and commits, the chain, checkpoints and the
//! witness, kept records after a failed commit.

use rusqlite::{params, Connection, OptionalExtension};

use super::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn the_writers_chain_hash_is_the_hash_of_the_canonical_encoding() {
    // The writer hashes the fields as it goes; verification hashes `canonical`'s buffer.
    // Both must agree byte for byte, or every trail written would fail verification.
    let prev = [7u8; 32];
    let cases: [(u64, i64, &str, &str, &str, &str); 4] = [
        (1, 0, "daemon.started", "loongd", "", "{}"),
        (
            256,
            -5,
            "tool.invoked",
            "uid:0",
            "conn-1/req-2",
            r#"{"tool":"echo.echo"}"#,
        ),
        (u64::MAX, i64::MAX, "", "", "", ""),
        (
            9,
            1,
            "policy.decision",
            "agent:é",
            "ç",
            "{\"x\":\"\u{1f600}\"}",
        ),
    ];
    for (seq, t, k, a, c, d) in cases {
        assert_eq!(
            chain_hash_of(&prev, seq, t, k, a, c, d),
            chain_hash(&prev, &canonical(seq, t, k, a, c, d)),
            "seq {seq}"
        );
    }
    // The control: a field moved to its neighbour changes the hash.
    assert_ne!(
        chain_hash_of(&prev, 1, 0, "ab", "", "", "{}"),
        chain_hash_of(&prev, 1, 0, "a", "b", "", "{}")
    );
}

/// A trail of `n` records (with a final checkpoint), and its database path.
fn trail(n: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    let audit = open(dir.path()).expect("opens");
    runtime().block_on(async {
        for i in 0..n {
            let e = Event {
                kind: Kind::SandboxExited,
                actor: "uid:0".into(),
                correlation: format!("c-{i}").into(),
                detail: serde_json::json!({ "i": i }).into(),
            };
            audit.record(e).await.expect("records");
        }
        audit.shutdown().await;
    });
    let db = dir.path().join(DB_FILE);
    (dir, db)
}

fn verify_at(dir: &Path) -> VerifyReport {
    let key = AuditKey::load_or_create(&dir.join("keys")).expect("key");
    verify(
        &Connection::open(dir.join(DB_FILE)).expect("db"),
        &key.verifying(),
    )
    .expect("verifies")
}

fn first_bad(dir: &Path) -> Option<(u64, String)> {
    verify_at(dir).first_bad
}

#[test]
fn unwaited_records_linger_for_company_and_flush_or_time_commits_them() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = open(dir.path()).expect("opens");
    let ev = |i: u64| Event::daemon(Kind::SandboxExited, serde_json::json!({ "i": i }));
    let all = Query {
        kind: None,
        since_ms: None,
        until_ms: None,
        after_seq: None,
        limit: 100,
        ascending: true,
    };
    runtime().block_on(async {
        // Alone, an unwaited record is not committed at once …
        audit.record_later(ev(0)).await;
        tokio::time::sleep(LINGER / 4).await;
        assert!(audit.query(&all).expect("query").is_empty());
        // … a waited record joins it in one commit, in order …
        let seq = audit.record(ev(1)).await.expect("records");
        assert_eq!(seq, 2);
        assert_eq!(audit.query(&all).expect("query").len(), 2);
        // … a flush commits it for a reader …
        audit.record_later(ev(2)).await;
        audit.flush().await.expect("flushes");
        assert_eq!(audit.query(&all).expect("query").len(), 3);
        // … and so does the end of the linger.
        audit.record_later(ev(3)).await;
        tokio::time::sleep(LINGER * 5).await;
        assert_eq!(audit.query(&all).expect("query").len(), 4);
        audit.shutdown().await;
    });
    let report = verify_at(dir.path());
    assert_eq!((report.records, report.first_bad.is_none()), (4, true));
}

/// Time a test grants the machine beyond a promised bound (a busy machine delays threads).
const SCHEDULING_SLACK: std::time::Duration = std::time::Duration::from_millis(500);

/// Waits until `audit` holds `count` records; how long that took from `since`, or `None`
/// when they were not all there by `since + bound`.
fn committed_within(
    audit: &Audit,
    count: usize,
    since: std::time::Instant,
    bound: std::time::Duration,
) -> Option<std::time::Duration> {
    let all = Query {
        limit: u32::MAX,
        ..Query::default()
    };
    loop {
        if audit.query(&all).expect("query").len() >= count {
            return Some(since.elapsed());
        }
        if since.elapsed() > bound {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn an_outcome_queued_later_follows_its_calls_records_while_calls_race() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = open(dir.path()).expect("opens");
    const CALLS: u64 = 300;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    // Each record is numbered under one lock held while it is queued: its number is its
    // place in the queue, which the trail must keep.
    let numbered = std::sync::Arc::new(tokio::sync::Mutex::new(0u64));
    let last_queued = rt.block_on(async {
        let calls: Vec<_> = (0..CALLS)
            .map(|call| {
                let (audit, numbered) = (audit.clone(), numbered.clone());
                tokio::spawn(async move {
                    let ev = |kind, n: u64| {
                        Event::daemon(kind, serde_json::json!({ "n": n, "call": call }))
                    };
                    // The decision and the invocation, waited for, as a warm call queues them.
                    let (commit, invoked) = {
                        let mut n = numbered.lock().await;
                        *n += 2;
                        let both =
                            vec![ev(Kind::PolicyDecision, *n - 1), ev(Kind::ToolInvoked, *n)];
                        (audit.queue_all(both).await.expect("queued"), *n)
                    };
                    // Records nobody waits for race with it (a worker's exit, a load).
                    if call % 3 == 0 {
                        let mut n = numbered.lock().await;
                        *n += 1;
                        audit.record_later(ev(Kind::WorkerExited, *n)).await;
                    }
                    let seq = commit.committed().await.expect("committed");
                    // Durable before its waiter wakes: a reader sees it already.
                    let record = audit
                        .get(seq)
                        .expect("reads")
                        .expect("committed before its waiter woke");
                    let detail: serde_json::Value =
                        serde_json::from_str(&record.detail).expect("json");
                    assert_eq!(
                        detail["n"], invoked,
                        "the acknowledged sequence number is another record's"
                    );
                    if call % 2 == 0 {
                        tokio::task::yield_now().await;
                    }
                    // The outcome, waited for by nobody.
                    let mut n = numbered.lock().await;
                    *n += 1;
                    audit.record_later(ev(Kind::ToolCompleted, *n)).await;
                    std::time::Instant::now()
                })
            })
            .collect();
        let mut last = None;
        for c in calls {
            let at = c.await.expect("call");
            last = Some(last.map_or(at, |l: std::time::Instant| l.max(at)));
        }
        last.expect("calls ran")
    });
    let total = rt.block_on(async { *numbered.lock().await });
    // Nothing else comes: the last outcomes are committed within LINGER all the same.
    let took = committed_within(
        &audit,
        total as usize,
        last_queued,
        LINGER + SCHEDULING_SLACK,
    );
    assert!(
        took.is_some(),
        "records nobody waits for were not committed within LINGER"
    );
    let all = Query {
        limit: u32::MAX,
        ascending: true,
        ..Query::default()
    };
    let records = audit.query(&all).expect("query");
    let queued: Vec<u64> = records
        .iter()
        .map(|r| {
            let detail: serde_json::Value = serde_json::from_str(&r.detail).expect("json");
            detail["n"].as_u64().expect("numbered")
        })
        .collect();
    // The committed order is the queued order, with nothing lost or repeated.
    assert_eq!(queued, (1..=total).collect::<Vec<_>>());
    let mut at = std::collections::HashMap::<(String, u64), u64>::new();
    for r in &records {
        let detail: serde_json::Value = serde_json::from_str(&r.detail).expect("json");
        at.insert(
            (r.kind.clone(), detail["call"].as_u64().expect("call")),
            r.seq,
        );
    }
    for call in 0..CALLS {
        let invoked = at[&(Kind::ToolInvoked.as_str().to_string(), call)];
        let done = at[&(Kind::ToolCompleted.as_str().to_string(), call)];
        assert!(
            invoked < done,
            "call {call}: outcome {done} before invocation {invoked}"
        );
    }
    rt.block_on(async {
        // An unwaited record when the writer waits without end (its linger long over) …
        tokio::time::sleep(LINGER * 3).await;
        audit
            .record_later(Event::daemon(Kind::WorkerExited, serde_json::json!({})))
            .await;
        let took = committed_within(
            &audit,
            total as usize + 1,
            std::time::Instant::now(),
            LINGER + SCHEDULING_SLACK,
        );
        assert!(
            took.is_some(),
            "a lone record nobody waits for was not committed within LINGER"
        );
        // … and one queued in the linger after a waited commit, with nothing after it.
        audit
            .record(Event::daemon(Kind::WorkerSpawned, serde_json::json!({})))
            .await
            .expect("records");
        audit
            .record_later(Event::daemon(Kind::WorkerExited, serde_json::json!({})))
            .await;
        let took = committed_within(
            &audit,
            total as usize + 3,
            std::time::Instant::now(),
            LINGER + SCHEDULING_SLACK,
        );
        assert!(
            took.is_some(),
            "a record queued in the linger was not committed within LINGER"
        );
    });
    rt.block_on(audit.shutdown());
    let report = verify_at(dir.path());
    assert_eq!(
        (report.records, report.first_bad.is_none()),
        (total + 3, true)
    );
}

#[test]
fn a_calls_outcome_rides_the_next_calls_commit_without_waking_the_writer() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = open(dir.path()).expect("opens");
    const CALLS: u64 = 100;
    let ev = |kind, i: u64| Event::daemon(kind, serde_json::json!({ "i": i }));
    runtime().block_on(async {
        let call = |i: u64| {
            let audit = audit.clone();
            async move {
                let invoked = vec![ev(Kind::PolicyDecision, i), ev(Kind::ToolInvoked, i)];
                audit
                    .queue_all(invoked)
                    .await
                    .expect("queued")
                    .committed()
                    .await
                    .expect("committed");
                // The worker's answer comes after the commit, when the writer waits; the
                // next call comes after the client read the answer.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                audit.record_later(ev(Kind::ToolCompleted, i)).await;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        call(0).await;
        let before = audit.writer_wakeups();
        for i in 1..=CALLS {
            call(i).await;
        }
        let woke = audit.writer_wakeups() - before;
        // One wake-up a call (its records; the outcome before them rides along), and a
        // few more where the machine held this loop past LINGER.
        assert!(
            woke <= CALLS + CALLS / 4,
            "{woke} wake-ups of the writer for {CALLS} calls"
        );
        // The last outcome is committed with nothing after it (positive control).
        let total = 3 * (CALLS as usize + 1);
        let took = committed_within(
            &audit,
            total,
            std::time::Instant::now(),
            LINGER + SCHEDULING_SLACK,
        );
        assert!(took.is_some(), "the last outcome was not committed");
        audit.shutdown().await;
    });
    let report = verify_at(dir.path());
    assert_eq!(
        (report.records, report.first_bad.is_none()),
        (3 * (CALLS + 1), true)
    );
}

#[test]
fn a_commit_that_fails_midway_leaves_nothing_and_the_next_one_continues_the_chain() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = open(dir.path()).expect("opens");
    let ev = |i: u64| Event {
        kind: Kind::SandboxExited,
        actor: "uid:0".into(),
        correlation: format!("c-{i}").into(),
        detail: serde_json::json!({ "i": i }).into(),
    };
    let all = Query {
        limit: u32::MAX,
        ascending: true,
        ..Query::default()
    };
    runtime().block_on(async {
        let tail = audit.record(ev(0)).await.expect("records");
        // A row slipped in by another connection (the writer holds no lock between
        // commits) takes the second sequence number of the next group: its first insert
        // succeeds, its second fails.
        let other = Connection::open(dir.path().join(DB_FILE)).expect("db");
        let taken = tail as i64 + 2;
        assert_eq!(tail, 1, "a fresh trail starts at 1");
        other
            .execute(
                "INSERT INTO audit VALUES (?1, 0, 'x', 'x', '', '{}', x'', x'')",
                params![taken],
            )
            .expect("a second connection writes between commits");
        // Calls handed to a worker: their waiter, told the commit failed, refuses them,
        // so they are dropped (records of effects that happened are kept; see below).
        let invoked = |i: u64| Event {
            kind: Kind::ToolInvoked,
            ..ev(i)
        };
        let failed = audit
            .queue_all(vec![invoked(1), invoked(2)])
            .await
            .expect("queued")
            .committed()
            .await;
        assert!(
            failed.is_err(),
            "a group whose insert failed was acknowledged"
        );
        // Nothing of the group stays: its first record was rolled back with it.
        let seqs: Vec<u64> = audit
            .query(&all)
            .expect("query")
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, vec![tail, tail + 2], "the failed group left a record");
        other
            .execute("DELETE FROM audit WHERE seq = ?1", params![taken])
            .expect("the slipped row removed");
        // The positive control: the writer goes on from the tail it had.
        let next = audit.record(ev(3)).await.expect("the next commit succeeds");
        assert_eq!(next, tail + 1);
        audit.shutdown().await;
    });
    let report = verify_at(dir.path());
    assert_eq!(report.first_bad, None);
}

/// Records of a failed commit, then of the commit after it: with `fail`, a second
/// connection holds seq 2 while they are queued (every group fails at its first insert);
/// without, the same records are queued on a free trail. Returns the trail's records as
/// (kind, correlation) and what each waiter heard.
fn across_a_failed_commit(fail: bool) -> (Vec<(String, String)>, Vec<bool>, VerifyReport) {
    let dir = tempfile::tempdir().expect("dir");
    let audit = open(dir.path()).expect("opens");
    let ev = |kind: Kind, c: &str| Event {
        kind,
        actor: "uid:0".into(),
        correlation: c.into(),
        detail: serde_json::json!({}).into(),
    };
    let all = Query {
        limit: u32::MAX,
        ascending: true,
        ..Query::default()
    };
    let heard = runtime().block_on(async {
        let tail = audit
            .record(ev(Kind::ToolInvoked, "a"))
            .await
            .expect("records");
        assert_eq!(tail, 1, "a fresh trail starts at 1");
        let other = Connection::open(dir.path().join(DB_FILE)).expect("db");
        if fail {
            other
                .execute(
                    "INSERT INTO audit VALUES (2, 0, 'x', 'x', '', '{}', x'', x'')",
                    [],
                )
                .expect("a second connection writes between commits");
        }
        // Call a's outcome, queued without a waiter (its answer already went out) …
        audit.record_later(ev(Kind::ToolCompleted, "a")).await;
        // … call b handed to a worker: its waiter refuses it when told the commit failed …
        let b = audit.record(ev(Kind::ToolInvoked, "b")).await.is_ok();
        // … a revocation that happened before its record: its waiter waits only for it
        // to be durable …
        let revoked = audit.record(ev(Kind::TokenRevoked, "r")).await.is_ok();
        // … a sandbox's start and end, whose waiter went away.
        drop(
            audit
                .queue_all(vec![
                    ev(Kind::SandboxSpawned, "s"),
                    ev(Kind::SandboxExited, "s"),
                ])
                .await
                .expect("queued"),
        );
        audit.record_later(ev(Kind::NetClosed, "n")).await;
        let flushed = audit.flush().await.is_ok();
        if fail {
            // Still failing: nothing of the queued records is in yet.
            assert_eq!(audit.query(&all).expect("query").len(), 2);
            other
                .execute("DELETE FROM audit WHERE seq = 2", [])
                .expect("the slipped row removed");
        }
        audit
            .flush()
            .await
            .expect("a flush after the failure commits");
        audit.shutdown().await;
        vec![b, revoked, flushed]
    });
    let records = audit
        .query(&all)
        .expect("query")
        .into_iter()
        .map(|r| (r.kind, r.correlation))
        .collect();
    (records, heard, verify_at(dir.path()))
}

#[test]
fn a_failed_commit_keeps_the_records_of_effects_that_happened_in_order() {
    let kc = |k: Kind, c: &str| (k.as_str().to_string(), c.to_string());
    // The control: without a failure, every record lands in the order it was queued.
    let (records, heard, report) = across_a_failed_commit(false);
    assert_eq!(heard, vec![true, true, true]);
    assert_eq!(
        records,
        vec![
            kc(Kind::ToolInvoked, "a"),
            kc(Kind::ToolCompleted, "a"),
            kc(Kind::ToolInvoked, "b"),
            kc(Kind::TokenRevoked, "r"),
            kc(Kind::SandboxSpawned, "s"),
            kc(Kind::SandboxExited, "s"),
            kc(Kind::NetClosed, "n"),
        ]
    );
    assert_eq!(report.first_bad, None);
    // With failed commits: the waiters hear the failure; call b (refused by its waiter)
    // is the only record dropped; every record of an effect that happened lands, in
    // order, once a commit succeeds, and the chain verifies.
    let (records, heard, report) = across_a_failed_commit(true);
    assert_eq!(heard, vec![false, false, false]);
    assert_eq!(
        records,
        vec![
            kc(Kind::ToolInvoked, "a"),
            kc(Kind::ToolCompleted, "a"),
            kc(Kind::TokenRevoked, "r"),
            kc(Kind::SandboxSpawned, "s"),
            kc(Kind::SandboxExited, "s"),
            kc(Kind::NetClosed, "n"),
        ],
        "a failed commit lost or reordered a record of an effect that happened"
    );
    assert_eq!(report.first_bad, None);
}

#[test]
fn an_outcome_queued_while_another_connection_holds_the_write_lock_lands_after_it() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = open(dir.path()).expect("opens");
    let ev = |kind: Kind| Event {
        kind,
        actor: "uid:0".into(),
        correlation: "c".into(),
        detail: serde_json::json!({}).into(),
    };
    let kinds = || -> Vec<String> {
        audit
            .query(&Query {
                limit: u32::MAX,
                ascending: true,
                ..Query::default()
            })
            .expect("query")
            .into_iter()
            .map(|r| r.kind)
            .collect()
    };
    runtime().block_on(async {
        audit.record(ev(Kind::ToolInvoked)).await.expect("records");
        // The control: with the database free, a flush commits at once.
        audit.flush().await.expect("a flush on a free database");
        let other = Connection::open(dir.path().join(DB_FILE)).expect("db");
        other
            .execute_batch("BEGIN IMMEDIATE")
            .expect("a second connection takes the write lock");
        // The call's outcome, queued without a waiter (its answer went out), while the
        // lock is held past the writer's busy timeout: its commit fails …
        audit.record_later(ev(Kind::ToolCompleted)).await;
        assert!(
            audit.flush().await.is_err(),
            "a commit succeeded while another connection held the write lock"
        );
        other.execute_batch("ROLLBACK").expect("the lock released");
        // … and the outcome lands once the lock is released.
        audit
            .flush()
            .await
            .expect("a flush after the lock was released");
        audit.shutdown().await;
    });
    assert_eq!(
        kinds(),
        vec![
            Kind::ToolInvoked.as_str().to_string(),
            Kind::ToolCompleted.as_str().to_string()
        ],
        "the outcome queued during a failed commit was lost"
    );
    assert_eq!(verify_at(dir.path()).first_bad, None);
}

#[test]
fn records_kept_past_a_full_group_hold_new_effects_until_a_commit_succeeds() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = open(dir.path()).expect("opens");
    let all = Query {
        limit: u32::MAX,
        ascending: true,
        ..Query::default()
    };
    let n = KEPT_MAX as u64 + 10;
    runtime().block_on(async {
        let tail = audit
            .record(Event::daemon(Kind::SandboxExited, serde_json::json!({})))
            .await
            .expect("records");
        let other = Connection::open(dir.path().join(DB_FILE)).expect("db");
        other
            .execute(
                "INSERT INTO audit VALUES (?1, 0, 'x', 'x', '', '{}', x'', x'')",
                params![tail as i64 + 1],
            )
            .expect("a second connection writes between commits");
        // More outcomes than a group, none waited for, while every commit fails …
        for i in 0..n {
            let e = Event::daemon(Kind::WorkerExited, serde_json::json!({ "i": i }));
            audit.record_later(e).await;
        }
        // … then a call: it is neither refused nor let through while the kept records
        // fill the writer's group; it waits (fail closed), and nothing is dropped.
        let call = audit
            .queue(Event::daemon(Kind::ToolInvoked, serde_json::json!({})))
            .await
            .expect("queued");
        let committed = call.committed();
        tokio::pin!(committed);
        let held = tokio::time::timeout(COMMIT_RETRY * 10, &mut committed).await;
        assert!(
            held.is_err(),
            "a call was answered while the kept records filled a group: {held:?}"
        );
        other
            .execute("DELETE FROM audit WHERE seq = ?1", params![tail as i64 + 1])
            .expect("the slipped row removed");
        // Once a commit succeeds, the call follows every kept record.
        let seq = committed.await.expect("the call commits after the failure");
        assert_eq!(seq, tail + n + 1);
        audit.shutdown().await;
    });
    let records = audit.query(&all).expect("query");
    let order: Vec<Option<u64>> = records[1..records.len() - 1]
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(&r.detail).expect("json")["i"].as_u64())
        .collect();
    assert_eq!(order, (0..n).map(Some).collect::<Vec<_>>());
    assert_eq!(verify_at(dir.path()).first_bad, None);
}

#[test]
fn a_commit_after_a_transaction_left_open_rolls_it_back_and_succeeds() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join(DB_FILE);
    drop(open(dir.path()).expect("opens"));
    let key = AuditKey::load_or_create(&dir.path().join("keys")).expect("key");
    let mut conn = Connection::open(&db).expect("db");
    let ev = Event::daemon(Kind::SandboxExited, serde_json::json!({}));
    // The control: a connection in autocommit commits.
    let (seq, hash, _, _) =
        store::commit_for_test(&mut conn, &key, &[&ev], (0, [0; 32])).expect("commits");
    assert_eq!(seq, 1);
    // A connection left inside a transaction (as a failed ROLLBACK leaves it) …
    conn.execute_batch("BEGIN; INSERT INTO meta (key, value) VALUES ('left', 'open')")
        .expect("a transaction left open");
    assert!(!conn.is_autocommit());
    // … still commits the next group, without what the open transaction held.
    let (seq, _, _, _) =
        store::commit_for_test(&mut conn, &key, &[&ev], (seq, hash)).expect("the next commit");
    assert_eq!(seq, 2);
    assert!(conn.is_autocommit());
    let left: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'left'", [], |r| {
            r.get(0)
        })
        .optional()
        .expect("query");
    assert_eq!(left, None, "the open transaction's write was committed");
    drop(conn);
    assert_eq!(verify_at(dir.path()).first_bad, None);
}

#[test]
fn an_untouched_trail_verifies_with_its_checkpoints() {
    let (dir, _) = trail(600);
    let r = verify_at(dir.path());
    assert_eq!(r.first_bad, None);
    assert_eq!(r.records, 600);
    // The run's first record, periodic checkpoints at 256 and 512, and the final one at 600.
    assert_eq!(r.checkpoints, 4);
}

#[test]
fn a_changed_record_is_found() {
    let (dir, db) = trail(10);
    Connection::open(&db)
        .expect("db")
        .execute("UPDATE audit SET detail = '{\"i\":99}' WHERE seq = 4", [])
        .expect("tamper");
    let (seq, why) = first_bad(dir.path()).expect("detected");
    assert_eq!(seq, 4);
    assert!(why.contains("do not match its hash"), "{why}");
}

#[test]
fn a_deleted_record_is_found() {
    let (dir, db) = trail(10);
    Connection::open(&db)
        .expect("db")
        .execute("DELETE FROM audit WHERE seq = 6", [])
        .expect("tamper");
    let (seq, why) = first_bad(dir.path()).expect("detected");
    assert_eq!(seq, 6);
    assert!(why.contains("missing"), "{why}");
}

#[test]
fn reordered_records_are_found() {
    let (dir, db) = trail(10);
    let c = Connection::open(&db).expect("db");
    // Swap the contents (everything but the position) of records 3 and 4.
    c.execute_batch(
        "UPDATE audit SET seq = -3 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = -3;",
    )
    .expect("tamper");
    let (seq, why) = first_bad(dir.path()).expect("detected");
    assert_eq!(seq, 3);
    assert!(
        why.contains("link to the previous record is broken"),
        "{why}"
    );
}

#[test]
fn a_consistently_rewritten_chain_is_caught_by_the_signed_checkpoint() {
    let (dir, db) = trail(10);
    let c = Connection::open(&db).expect("db");
    // Change record 5 and recompute every hash after it, as a careful forger would.
    c.execute(
        "UPDATE audit SET detail = '{\"i\":\"forged\"}' WHERE seq = 5",
        [],
    )
    .expect("tamper");
    let mut prev: [u8; 32] = c
        .query_row("SELECT hash FROM audit WHERE seq = 4", [], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .map(|v| v.try_into().expect("32"))
        .expect("row");
    for seq in 5..=10i64 {
        let (t, k, a, co, d): (i64, String, String, String, String) = c
            .query_row(
                "SELECT time_ms, kind, actor, correlation, detail FROM audit WHERE seq = ?1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .expect("row");
        let h = chain_hash(&prev, &canonical(seq as u64, t, &k, &a, &co, &d));
        c.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            params![prev.as_slice(), h.as_slice(), seq],
        )
        .expect("rewrite");
        prev = h;
    }
    let (seq, why) = first_bad(dir.path()).expect("detected");
    assert_eq!(seq, 10);
    assert!(
        why.contains("differs from what the signed checkpoint recorded"),
        "{why}"
    );
}

#[test]
fn a_forged_checkpoint_signature_is_found() {
    let (dir, db) = trail(10);
    Connection::open(&db)
        .expect("db")
        .execute(
            "UPDATE checkpoints SET signature = zeroblob(64) WHERE seq = 10",
            [],
        )
        .expect("tamper");
    let (seq, why) = first_bad(dir.path()).expect("detected");
    assert_eq!(seq, 10);
    assert!(why.contains("signature does not verify"), "{why}");
}

#[test]
fn a_truncated_tail_behind_a_checkpoint_is_found() {
    let (dir, db) = trail(10);
    Connection::open(&db)
        .expect("db")
        .execute("DELETE FROM audit WHERE seq >= 9", [])
        .expect("tamper");
    let (seq, why) = first_bad(dir.path()).expect("detected");
    assert_eq!(seq, 10);
    assert!(why.contains("truncated"), "{why}");
}

/// A trail of `runs` clean runs of `n` records each (`daemon.started` … `daemon.stopped`).
fn runs(runs: u64, n: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    for _ in 0..runs {
        let audit = open(dir.path()).expect("opens");
        runtime().block_on(async {
            let ev = |k| Event::daemon(k, serde_json::json!({}));
            audit
                .record(ev(Kind::DaemonStarted))
                .await
                .expect("records");
            for _ in 2..n {
                audit
                    .record(ev(Kind::SandboxExited))
                    .await
                    .expect("records");
            }
            audit
                .record(ev(Kind::DaemonStopped))
                .await
                .expect("records");
            audit.shutdown().await;
        });
    }
    let db = dir.path().join(DB_FILE);
    (dir, db)
}

#[test]
fn a_clean_stop_carries_its_checkpoint_and_one_without_it_is_found() {
    let (dir, db) = runs(2, 5);
    // Positive control: each start and stop (records 1, 5, 6 and 10) is signed.
    let r = verify_at(dir.path());
    assert_eq!((r.first_bad, r.checkpoints), (None, 4));
    Connection::open(&db)
        .expect("db")
        .execute("DELETE FROM checkpoints WHERE seq = 5", [])
        .expect("tamper");
    let (seq, why) = first_bad(dir.path()).expect("detected");
    assert_eq!(seq, 5);
    assert!(
        why.contains("no signed checkpoint covers the stop"),
        "{why}"
    );
}

#[test]
fn a_head_past_its_expected_checkpoint_is_found() {
    let (dir, db) = trail(600);
    Connection::open(&db)
        .expect("db")
        .execute("DELETE FROM checkpoints WHERE seq >= 512", [])
        .expect("tamper");
    let (seq, why) = first_bad(dir.path()).expect("detected");
    assert_eq!(seq, 512);
    assert!(why.contains("one is expected every 256 records"), "{why}");
}

#[test]
fn a_start_after_an_unstopped_run_must_say_so() {
    let dir = tempfile::tempdir().expect("dir");
    let audit = open(dir.path()).expect("opens");
    runtime().block_on(async {
        let ev = |k| Event::daemon(k, serde_json::json!({}));
        for k in [
            Kind::DaemonStarted,
            Kind::SandboxExited,
            Kind::DaemonStarted,
            Kind::DaemonUncleanStop,
            Kind::DaemonStopped,
        ] {
            audit.record(ev(k)).await.expect("records");
        }
        audit.shutdown().await;
    });
    assert_eq!(first_bad(dir.path()), None);
    // Rebuild the chain without the daemon.unclean_stop (record 4).
    let c = Connection::open(dir.path().join(DB_FILE)).expect("db");
    c.execute_batch(
        "DELETE FROM audit WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = 5; DELETE FROM checkpoints WHERE seq >= 4;",
    )
    .expect("tamper");
    rechain(&c, 4, 4);
    let key = AuditKey::load_or_create(&dir.path().join("keys")).expect("key");
    let sig = key.sign(&checkpoint_message(4, &hash_of(&c, 4)));
    c.execute(
        "INSERT INTO checkpoints VALUES (4, ?1, 0, ?2, ?3)",
        params![hash_of(&c, 4).as_slice(), key.id(), sig.as_slice()],
    )
    .expect("re-signed");
    let (seq, why) = first_bad(dir.path()).expect("detected");
    assert_eq!(seq, 3);
    assert!(why.contains("daemon.unclean_stop"), "{why}");
}

#[test]
fn the_tail_scope_reads_only_past_the_newest_checkpoint() {
    let (dir, db) = runs(2, 5);
    let c = Connection::open(&db).expect("db");
    // A change before the newest checkpoint is the full walk's to find …
    c.execute("UPDATE audit SET detail = '{\"x\":1}' WHERE seq = 2", [])
        .expect("tamper");
    let key = AuditKey::load_or_create(&dir.path().join("keys")).expect("key");
    let tail = verify_scope(&c, &key.verifying(), Scope::Tail).expect("verifies");
    assert_eq!((tail.first_bad, tail.records), (None, 0));
    assert_eq!(first_bad(dir.path()).map(|b| b.0), Some(2));
    // … a change after it is the tail's.
    c.execute(
        "INSERT INTO audit SELECT 11, time_ms, kind, actor, correlation, detail, hash, hash FROM audit WHERE seq = 10",
        [],
    )
    .expect("append");
    let tail = verify_scope(&c, &key.verifying(), Scope::Tail).expect("verifies");
    assert_eq!(tail.first_bad.map(|b| b.0), Some(11));
}

/// Appends a record of `kind` chained to the head, as someone without the key can.
fn append(c: &Connection, kind: Kind) -> i64 {
    let head: i64 = c
        .query_row("SELECT MAX(seq) FROM audit", [], |r| r.get(0))
        .expect("head");
    let (seq, prev) = (head + 1, hash_of(c, head));
    let detail = "{\"forged\":true}";
    let h = chain_hash(
        &prev,
        &canonical(seq as u64, 1, kind.as_str(), "uid:0", "", detail),
    );
    c.execute(
        "INSERT INTO audit VALUES (?1, 1, ?2, 'uid:0', '', ?3, ?4, ?5)",
        params![seq, kind.as_str(), detail, prev.as_slice(), h.as_slice()],
    )
    .expect("append");
    seq
}

fn tail_first_bad(dir: &Path) -> Option<(u64, String)> {
    let key = AuditKey::load_or_create(&dir.join("keys")).expect("key");
    let c = Connection::open(dir.join(DB_FILE)).expect("db");
    verify_scope(&c, &key.verifying(), Scope::Tail)
        .expect("verifies")
        .first_bad
}

#[test]
fn records_appended_after_a_clean_stop_are_found() {
    // A forged run (its start cannot be signed) and forged records without a start, each
    // chained correctly after the signed stop at 5.
    for kinds in [
        &[Kind::DaemonStarted, Kind::ApprovalResolved][..],
        &[Kind::ApprovalResolved, Kind::TokenRevoked][..],
        &[
            Kind::ProfileLoaded,
            Kind::DaemonStarted,
            Kind::DaemonUncleanStop,
        ][..],
    ] {
        let (dir, db) = runs(1, 5);
        assert_eq!(first_bad(dir.path()), None);
        let c = Connection::open(&db).expect("db");
        for k in kinds {
            append(&c, *k);
        }
        for (scope, bad) in [
            ("full", first_bad(dir.path())),
            ("tail", tail_first_bad(dir.path())),
        ] {
            let (seq, why) = bad.unwrap_or_else(|| panic!("{kinds:?} {scope}: not found"));
            assert_eq!(seq, 6, "{kinds:?} {scope}: {why}");
            assert!(why.contains("no signed checkpoint covers"), "{why}");
        }
    }
    // Positive control: loongd's own next run (its first records signed) verifies.
    let (dir, _) = runs(2, 5);
    assert_eq!(tail_first_bad(dir.path()), None);
}

#[test]
fn a_trigger_or_view_slipped_into_the_database_stops_the_open() {
    for (kind, sql) in [
        ("trigger", "CREATE TRIGGER drop_exits BEFORE INSERT ON audit WHEN NEW.kind = 'sandbox.exited' BEGIN SELECT RAISE(IGNORE); END"),
        ("view", "CREATE VIEW recent AS SELECT * FROM audit"),
        ("table", "CREATE TABLE extra (x)"),
        (
            "index",
            "ALTER TABLE audit RENAME TO old; CREATE TABLE audit (seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, kind TEXT NOT NULL, actor TEXT NOT NULL, correlation TEXT NOT NULL, detail TEXT NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL, UNIQUE (kind, actor) ON CONFLICT IGNORE); INSERT INTO audit SELECT * FROM old; DROP TABLE old",
        ),
    ] {
        let (dir, db) = trail(3);
        // Positive control: the untouched trail opens again.
        open(dir.path()).expect("opens");
        Connection::open(&db)
            .expect("db")
            .execute_batch(sql)
            .expect("tamper");
        let e = open(dir.path()).expect_err("refused").to_string();
        assert!(
            e.contains("holds an object loongd did not create") && e.contains(kind),
            "{e}"
        );
    }
}

#[test]
fn a_record_numbered_below_one_is_found() {
    for seq in [0, -7] {
        let (dir, db) = trail(10);
        Connection::open(&db)
            .expect("db")
            .execute(
                "INSERT INTO audit SELECT ?1, time_ms, kind, actor, correlation, '{\"forged\":1}', prev_hash, hash FROM audit WHERE seq = 3",
                [seq],
            )
            .expect("tamper");
        for bad in [first_bad(dir.path()), tail_first_bad(dir.path())] {
            let (at, why) = bad.expect("found");
            assert_eq!(at, 0);
            assert!(why.contains(&format!("numbered {seq}")), "{why}");
        }
    }
}

fn hash_of(c: &Connection, seq: i64) -> [u8; 32] {
    c.query_row("SELECT hash FROM audit WHERE seq = ?1", [seq], |r| {
        r.get::<_, Vec<u8>>(0)
    })
    .map(|v| v.try_into().expect("32"))
    .expect("row")
}

/// Recomputes the chain from `from` to `to`, as a careful forger would.
fn rechain(c: &Connection, from: i64, to: i64) {
    let mut prev = if from > 1 {
        hash_of(c, from - 1)
    } else {
        [0u8; 32]
    };
    for seq in from..=to {
        let (t, k, a, co, d): (i64, String, String, String, String) = c
            .query_row(
                "SELECT time_ms, kind, actor, correlation, detail FROM audit WHERE seq = ?1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .expect("row");
        let h = chain_hash(&prev, &canonical(seq as u64, t, &k, &a, &co, &d));
        c.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            params![prev.as_slice(), h.as_slice(), seq],
        )
        .expect("rewrite");
        prev = h;
    }
}

#[test]
fn every_kind_is_emitted_somewhere() {
    // Each declared kind must appear outside this module, or it is dead vocabulary.
    fn collect(dir: &Path, skip: &Path, text: &mut String) {
        for e in std::fs::read_dir(dir).expect("source dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                collect(&p, skip, text);
            } else if p.extension().is_some_and(|x| x == "rs") && !p.starts_with(skip) {
                text.push_str(&std::fs::read_to_string(&p).expect("source"));
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut text = String::new();
    collect(&src, &src.join("audit"), &mut text);
    for k in Kind::ALL {
        let name = format!("{k:?}");
        assert!(
            text.contains(&format!("Kind::{name}")),
            "audit kind {name} is declared but never emitted"
        );
    }
}

/// One run of loongd in `dir`'s trail: `daemon.started` (with `reconciled` failures of
/// earlier calls in its commit, as a start records them), `calls` calls each invoked
/// and answered but those in `open`, then `daemon.stopped`.
fn run(dir: &Path, reconciled: u64, calls: u64, open_calls: &[u64]) {
    let audit = open(dir).expect("opens");
    let call = |kind: Kind, i: u64| Event {
        kind,
        actor: "uid:0".into(),
        correlation: format!("conn-1/req-{i}").into(),
        detail: serde_json::json!({ "tool": "echo", "i": i }).into(),
    };
    runtime().block_on(async {
        let mut start = vec![Event::daemon(Kind::DaemonStarted, serde_json::json!({}))];
        start.extend((0..reconciled).map(|i| Event {
            detail: serde_json::json!({ "tool": "echo", "failure": "kernel_stopped", "invoked_seq": i + 1 }).into(),
            ..call(Kind::ToolFailed, 1_000_000 + i)
        }));
        audit.queue_all(start).await.expect("queued").committed().await.expect("start");
        let mut commits = Vec::new();
        for i in 0..calls {
            let mut events = vec![call(Kind::ToolInvoked, i)];
            if !open_calls.contains(&i) {
                events.push(call(Kind::ToolCompleted, i));
            }
            commits.push(audit.queue_all(events).await.expect("queued"));
        }
        for c in commits {
            c.committed().await.expect("call");
        }
        audit
            .record(Event::daemon(Kind::DaemonStopped, serde_json::json!({})))
            .await
            .expect("stop");
        audit.shutdown().await;
    });
}

/// What a start reads of `dir`'s trail: the records the verification walked, the tool
/// records read to find open calls, and the open calls.
fn start_reads(dir: &Path) -> (u64, u64, Vec<u64>) {
    let audit = open(dir).expect("opens");
    let s = audit.startup().clone();
    runtime().block_on(audit.shutdown());
    assert_eq!(s.integrity.first_bad, None);
    let open: Vec<u64> = s.previous.dangling.iter().map(|d| d.seq).collect();
    (s.integrity.records, s.previous.scanned, open)
}

#[test]
fn a_start_after_a_long_run_reads_only_the_tail_and_no_answered_call() {
    let dir = tempfile::tempdir().expect("dir");
    let calls = 4 * CHECKPOINT_EVERY;
    run(dir.path(), 0, calls, &[]);
    let (walked, scanned, open) = start_reads(dir.path());
    // 2 + 2 × 1,024 records, none of them read but the few since the last checkpoint.
    assert!(
        walked < CHECKPOINT_EVERY,
        "the start walked {walked} records"
    );
    assert_eq!((scanned, open), (0, vec![]));
    // A whole verification reads every one.
    assert_eq!(verify_at(dir.path()).records, 2 * calls + 2);
}

#[test]
fn a_start_still_finds_the_calls_a_run_left_open() {
    let dir = tempfile::tempdir().expect("dir");
    run(dir.path(), 0, 300, &[7, 250]);
    let (_, scanned, open) = start_reads(dir.path());
    // Records 1 (started), then two per answered call: call i's invocation is 2 + 2i.
    assert_eq!(open, vec![16, 501]);
    assert!(scanned > 0);
}

#[test]
fn a_runs_failures_of_earlier_calls_neither_hide_nor_invent_open_calls() {
    // The start's failures of the run before's calls are outcomes without an invocation
    // in this run: they are set aside, not taken for answers of this run's calls.
    for (open_calls, scanned, found) in [
        (&[][..], Some(0), 0),
        (&[10, 11, 12][..], None, 3),
        (&[10][..], None, 1),
    ] {
        let dir = tempfile::tempdir().expect("dir");
        run(dir.path(), 0, 3, &[0, 1, 2]);
        run(dir.path(), 3, 50, open_calls);
        let (_, read, open) = start_reads(dir.path());
        assert_eq!(open.len(), found, "open calls {open_calls:?}");
        if let Some(s) = scanned {
            assert_eq!(read, s, "open calls {open_calls:?}");
        }
    }
}

/// A commit that comes within the trail's spin window finds the runtime thread that waits
/// for it awake: the thread does not sleep for it. The control: without a window the thread
/// sleeps until the writer's acknowledgement wakes it. Each commit is held back 50 ms by
/// another connection's write lock, so that it cannot be done before the thread waits for
/// it (a commit as quick as one `fdatasync` of a laid-out log could be, and the control then
/// found nothing to sleep for).
#[test]
fn a_commit_within_the_spin_window_finds_its_waiter_awake() {
    use loong_ipc::{spin::SpinWindow, test_support};
    const HELD: std::time::Duration = std::time::Duration::from_millis(50);
    let dir = tempfile::tempdir().expect("dir");
    let audit = open(dir.path()).expect("opens");
    for (window, sleeps) in [
        (SpinWindow::fixed(std::time::Duration::from_secs(3)), false),
        (SpinWindow::default(), true),
    ] {
        audit.set_commit_spin(window);
        let blocker = Connection::open(dir.path().join(DB_FILE)).expect("db");
        blocker
            .execute_batch("BEGIN IMMEDIATE")
            .expect("the write lock");
        let release = std::thread::spawn(move || {
            std::thread::sleep(HELD);
            blocker.execute_batch("COMMIT").expect("released");
        });
        let waiting = audit.clone();
        let slept = std::thread::spawn(move || {
            let tid = test_support::thread_id();
            runtime().block_on(async {
                let commit = waiting
                    .queue(Event::daemon(Kind::WorkerExited, serde_json::json!({})))
                    .await
                    .expect("queued");
                let before = test_support::sleeps(tid);
                commit.committed().await.expect("committed");
                test_support::sleeps(tid) != before
            })
        })
        .join()
        .expect("thread");
        release.join().expect("release");
        assert_eq!(slept, sleeps, "the waiting thread slept for the commit");
    }
}

/// Records whose detail is written once as its text ([`detail::object`]) are stored, hashed,
/// verified and shipped as the same records built as JSON values: in one trail, each pair
/// (the value's, then the text's) has the same kind, actor, correlation and detail, the
/// text's record hashed with the value's fields gives its stored hash, the trail verifies,
/// and the SIEM lines differ only in their sequence number, time and hash.
#[test]
fn a_detail_written_once_is_stored_hashed_and_shipped_as_its_value() {
    use detail::{object, Field};
    let dir = tempfile::tempdir().expect("dir");
    let jsonl = dir.path().join("audit.jsonl");
    let siem = siem::SiemConfig {
        jsonl: Some((jsonl.clone(), siem::FailureMode::Closed)),
        syslog: None,
    };
    let witness = dir.path().join(witness::DEFAULT_WITNESS_FILE);
    let audit = open_with(dir.path(), siem, Durability::Full, &witness).expect("opens");
    let hostile = "a \"quoted\" \\ path\u{0}\u{2028} é \u{1f600}";
    let long = "x".repeat(MAX_DETAIL_BYTES + 100);
    let argv = vec!["/bin/sh".to_string(), "-c".into(), hostile.into()];
    let chain = [
        ("root", Field::Str("conn-1/req-2")),
        ("parent", Field::OptStr(Some("conn-1/req-2"))),
        ("depth", Field::U64(1)),
    ];
    let pairs: Vec<(Event, Event)> = vec![
        (
            Event::new(
                Kind::PolicyDecision,
                "uid:0",
                "conn-1/req-2.1",
                serde_json::json!({
                    "capability": "process.exec", "target": hostile, "argv": argv,
                    "script": null, "token": "tok-1", "pack": "ops", "agent": null,
                    "allowed": true, "reason": null,
                    "chain": { "root": "conn-1/req-2", "parent": "conn-1/req-2", "depth": 1 },
                }),
            ),
            Event::new(
                Kind::PolicyDecision,
                "uid:0",
                "conn-1/req-2.1",
                object(
                    &[
                        ("capability", Field::Str("process.exec")),
                        ("target", Field::OptStr(Some(hostile))),
                        ("argv", Field::Strs(Some(&argv))),
                        ("script", Field::OptStr(None)),
                        ("token", Field::OptStr(Some("tok-1"))),
                        ("pack", Field::Str("ops")),
                        ("agent", Field::OptStr(None)),
                        ("allowed", Field::Bool(true)),
                        ("reason", Field::OptStr(None)),
                    ],
                    Some(("chain", Field::Object(&chain))),
                ),
            ),
        ),
        (
            Event::new(
                Kind::ToolInvoked,
                "uid:0",
                "conn-1/req-3",
                serde_json::json!({ "tool": hostile, "version": "1.0.0", "sha256": null,
                    "input_bytes": 12, "token": null }),
            ),
            Event::new(
                Kind::ToolInvoked,
                "uid:0",
                "conn-1/req-3",
                object(
                    &[
                        ("tool", Field::Str(hostile)),
                        ("version", Field::Str("1.0.0")),
                        ("sha256", Field::OptStr(None)),
                        ("input_bytes", Field::U64(12)),
                        ("token", Field::OptStr(None)),
                    ],
                    None,
                ),
            ),
        ),
        (
            Event::new(
                Kind::ToolCompleted,
                "uid:0",
                "conn-1/req-3",
                serde_json::json!({ "tool": "echo", "message": long, "fuel_consumed": 9 }),
            ),
            Event::new(
                Kind::ToolCompleted,
                "uid:0",
                "conn-1/req-3",
                object(
                    &[
                        ("tool", Field::Str("echo")),
                        ("message", Field::Str(&long)),
                        ("fuel_consumed", Field::OptU64(Some(9))),
                    ],
                    None,
                ),
            ),
        ),
    ];
    let n = pairs.len();
    runtime().block_on(async {
        for (old, new) in pairs {
            audit.queue_all(vec![old, new]).await.expect("queues");
        }
        audit.flush().await.expect("flushes");
        audit.shutdown().await;
    });
    let conn = Connection::open(dir.path().join(DB_FILE)).expect("db");
    type Row = (i64, i64, String, String, String, String, Vec<u8>, Vec<u8>);
    let rows: Vec<Row> = conn
        .prepare("SELECT seq, time_ms, kind, actor, correlation, detail, prev_hash, hash FROM audit WHERE kind != 'daemon.started' AND kind != 'daemon.stopped' ORDER BY seq")
        .expect("prepares")
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
        })
        .expect("queries")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows.len(), 2 * n);
    for pair in rows.chunks(2) {
        let (old, new) = (&pair[0], &pair[1]);
        assert_eq!(
            (&old.2, &old.3, &old.4, &old.5),
            (&new.2, &new.3, &new.4, &new.5)
        );
        assert!(new.5.len() <= MAX_DETAIL_BYTES);
        let prev: [u8; 32] = new.6.as_slice().try_into().expect("prev hash");
        let hashed = chain_hash_of(&prev, new.0 as u64, new.1, &old.2, &old.3, &old.4, &old.5);
        assert_eq!(hashed.as_slice(), new.7.as_slice(), "seq {}", new.0);
    }
    // The over-long detail was bounded: its message is a marker.
    assert!(rows[5].5.contains("\"truncated\":true"), "{}", rows[5].5);
    assert_eq!(verify_at(dir.path()).first_bad, None);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .expect("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .filter(|l: &serde_json::Value| {
            l.get("checkpoint").is_none()
                && l["kind"] != "daemon.started"
                && l["kind"] != "daemon.stopped"
        })
        .map(|mut l| {
            for k in ["seq", "time_ms", "hash"] {
                l.as_object_mut().expect("object").remove(k);
            }
            l
        })
        .collect();
    assert_eq!(lines.len(), 2 * n);
    for pair in lines.chunks(2) {
        assert_eq!(pair[0], pair[1]);
    }
}

/// The trail's write-ahead log is laid out ahead, in written zeros, to the size at which
/// SQLite's automatic checkpoint restarts it (and a margin), so a commit overwrites blocks
/// instead of extending the file (whose `fdatasync` would wait for a journal commit of the
/// file system). As in a daemon's start, the trail is opened on a home whose log SQLite
/// deleted at a clean close. The files as a crash leaves them (copied after commits,
/// without SQLite's shared index, so the copy is recovered from the log) hold every
/// committed record, which the database file alone does not, the zeros past the last
/// frame read as the log's end; and so after the log restarted from its beginning with
/// frames of the earlier pass and zeros past the new ones.
#[test]
fn the_write_ahead_log_is_laid_out_ahead_and_a_crash_keeps_every_commit() {
    use super::wal::{WAL_FRAME_HEADER_BYTES, WAL_HEADER_BYTES, WAL_LAYOUT_MARGIN_FRAMES};
    const FIRST: u64 = 40;
    /// Far more single-record commits than 1,000 frames take.
    const MOST: u64 = 5_000;
    let dir = tempfile::tempdir().expect("dir");
    let wal = super::wal::path(&dir.path().join(DB_FILE));
    let first = open(dir.path()).expect("opens");
    runtime().block_on(first.shutdown());
    drop(first);
    assert!(
        !wal.exists(),
        "SQLite deletes the log at a clean close, as a daemon's start finds it"
    );
    let audit = open(dir.path()).expect("opens");
    let laid = std::fs::metadata(&wal).expect("the log").len();
    // SQLite's defaults: 1,000 frames of 4 KiB before a checkpoint.
    assert_eq!(
        laid,
        WAL_HEADER_BYTES + (1000 + WAL_LAYOUT_MARGIN_FRAMES) * (4096 + WAL_FRAME_HEADER_BYTES),
        "the log is laid out to the checkpoint's threshold and the margin"
    );
    let salt = || -> [u8; 8] {
        let head = std::fs::read(&wal).expect("the log");
        head[12..20]
            .try_into()
            .expect("the checkpoint's sequence and the first salt")
    };
    let all = Query {
        limit: u32::MAX,
        ..Query::default()
    };
    let crash_copy = |with_log: bool| -> VerifyReport {
        let crash = tempfile::tempdir().expect("dir");
        let mut names = vec![DB_FILE.to_string()];
        if with_log {
            names.push(format!("{DB_FILE}-wal"));
        }
        for name in names {
            std::fs::copy(dir.path().join(&name), crash.path().join(&name)).expect("copies");
        }
        copy_dir(&dir.path().join("keys"), &crash.path().join("keys"));
        verify_at(crash.path())
    };
    let rt = runtime();
    let record = |i: u64| {
        let e = Event::daemon(Kind::SandboxExited, serde_json::json!({ "i": i }));
        rt.block_on(audit.record(e)).expect("records");
    };
    for i in 0..FIRST {
        record(i);
    }
    let held = audit.query(&all).expect("query").len() as u64;
    assert!(held >= FIRST);
    // The commits overwrote the zeros: the log did not grow.
    assert_eq!(std::fs::metadata(&wal).expect("the log").len(), laid);
    let report = crash_copy(true);
    assert_eq!((report.records, report.first_bad), (held, None));
    // The positive control: the records were in the log, not yet in the database file.
    assert!(
        crash_copy(false).records < held,
        "the database file alone held every record: the copy did not need the log"
    );

    // Past a checkpoint: the log restarts from its beginning (a new checkpoint sequence and
    // salt in its header) and is still not extended.
    let before = salt();
    let mut i = FIRST;
    while salt() == before {
        assert!(i < MOST, "the log did not restart after {MOST} commits");
        record(i);
        i += 1;
    }
    for _ in 0..FIRST {
        record(i);
        i += 1;
    }
    assert_eq!(std::fs::metadata(&wal).expect("the log").len(), laid);
    let held = audit.query(&all).expect("query").len() as u64;
    let report = crash_copy(true);
    assert_eq!((report.records, report.first_bad), (held, None));
    rt.block_on(audit.shutdown());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for e in std::fs::read_dir(from).expect("dir").flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copies");
    }
}
