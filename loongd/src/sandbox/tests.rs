//! Tests of a confined run's pieces that need no sandbox: a run's end awaited with and without the reactor, and its start record written once.

use std::{io::Write, os::fd::AsFd, time::Duration};

use super::{readable, spawned_detail};

const WAIT: Duration = Duration::from_secs(10);

/// A descriptor readable already (a helper's report with its line in it, a helper gone: here
/// a pipe with a byte in it, or whose writer is gone) is seen without registering it with
/// the runtime's reactor: on a runtime without one, where a registration fails, the wait
/// still ends.
#[test]
fn a_descriptor_readable_already_is_seen_without_the_reactor() {
    let no_reactor = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let (r, mut w) = std::io::pipe().expect("pipe");
    w.write_all(b"x").expect("write");
    no_reactor.block_on(async {
        tokio::time::timeout(WAIT, readable(r.as_fd()))
            .await
            .expect("a readable descriptor was seen at once");
    });
    let (r, w) = std::io::pipe().expect("pipe");
    drop(w);
    no_reactor.block_on(async {
        tokio::time::timeout(WAIT, readable(r.as_fd()))
            .await
            .expect("a hung-up descriptor was seen at once");
    });
}

/// The control: a descriptor that turns readable later is waited for (registered with the
/// reactor), and the wait ends when it does, not before. (One the reactor refuses is polled
/// instead, its registration tried again at each poll: a loop that sleeps, by construction.)
#[test]
fn a_descriptor_that_turns_readable_later_is_waited_for() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (r, mut w) = std::io::pipe().expect("pipe");
    let (told, hear) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        hear.recv().expect("told");
        w.write_all(b"x").expect("write");
    });
    runtime.block_on(async {
        let early = tokio::time::timeout(Duration::from_millis(100), readable(r.as_fd())).await;
        assert!(
            early.is_err(),
            "the wait ended before the descriptor was readable"
        );
        told.send(()).expect("tell");
        tokio::time::timeout(WAIT, readable(r.as_fd()))
            .await
            .expect("the wait ended once the descriptor was readable");
    });
    writer.join().expect("writer");
}

/// A run's `sandbox.spawned`, written once as its text, stores the bytes its JSON value
/// stored: with and without its degraded list, a hostile or padded argument included.
#[test]
fn a_runs_start_record_written_once_keeps_its_bytes() {
    let hostile = "a \"b\" \\ \u{0} \u{2028} é";
    let padded = "x".repeat(crate::audit::MAX_DETAIL_BYTES);
    for arg in [hostile, padded.as_str()] {
        let asked = serde_json::json!({
            "tier": "balanced", "program": "/bin/echo", "args": [arg, "two"],
            "read": ["/tmp"], "write": [], "allow_net": [], "timeout_ms": null,
            "memory_bytes": 1, "env": ["HOME"],
        });
        for degraded in [Vec::new(), vec!["landlock".to_string(), "cgroup".into()]] {
            let new = spawned_detail(&asked, 4242, Some(&degraded));
            let old = crate::audit::Detail::from(
                serde_json::json!({ "request": asked, "pid": 4242u32, "degraded": degraded }),
            );
            assert_eq!(new.bounded(), old.bounded());
        }
        let new = spawned_detail(&asked, 7, None);
        let old = crate::audit::Detail::from(serde_json::json!({ "request": asked, "pid": 7u32 }));
        assert_eq!(new.bounded(), old.bounded());
    }
}

/// A gate whose decisions' commit ends past its deadline stays shut although the commit
/// succeeded (a commit made on the gate's own thread cannot be cut short, and a timeout
/// looks at what it waits for before its deadline): the run is refused and the payload
/// reads the gate's end. The control: the same commit, ending within its deadline, opens
/// the gate.
#[test]
fn a_gate_whose_commit_ends_past_its_deadline_stays_shut() {
    use std::{future::Future, io::Read, task::Poll};

    use crate::audit::{Event, Kind};
    const LATE: Duration = Duration::from_millis(200);
    for (within, opens) in [(WAIT * 6, true), (LATE / 4, false)] {
        let dir = tempfile::tempdir().expect("dir");
        let audit = crate::audit::open(dir.path()).expect("opens");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let ev = || Event::daemon(Kind::PolicyDecision, serde_json::json!({}));
        rt.block_on(audit.record(ev())).expect("records");
        // Past the writer's linger: it waits for the next record, and is held before it
        // takes it.
        std::thread::sleep(LATE);
        audit.pause_writer(true);
        let (mut payload_end, gate) = std::io::pipe().expect("pipe");
        let opened = rt.block_on(async {
            let commit = audit.queue(ev()).await.expect("queued");
            let opening = super::open_gate(vec![commit], Some(gate), within);
            tokio::pin!(opening);
            let first = std::future::poll_fn(|cx| Poll::Ready(opening.as_mut().poll(cx))).await;
            assert!(first.is_pending(), "the gate opened before its commit");
            // The commit ends LATE after the gate began waiting, which is not polled meanwhile.
            audit.pause_writer(false);
            std::thread::sleep(LATE);
            assert!(
                audit.get(2).expect("reads").is_some(),
                "the writer did not commit"
            );
            opening.await
        });
        let mut byte = Vec::new();
        payload_end.read_to_end(&mut byte).expect("the gate's end");
        assert_eq!(opened.is_ok(), opens, "within {within:?}: {opened:?}");
        assert_eq!(
            byte,
            if opens {
                vec![loong_sandbox::plan::GATE_OPEN]
            } else {
                Vec::new()
            },
            "within {within:?}: what the payload read at its gate"
        );
    }
}
