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
