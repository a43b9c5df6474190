//! The approvals one token may leave pending (`[approvals] max_pending_per_token`, enforced
//! in the approvals store, so every path that asks is covered), and the withdrawal of a
//! request whose caller went away (`effects::approval::Withdraw`).

use std::{
    fs,
    net::Shutdown,
    process::{Child, Command, Stdio},
    time::Duration,
};

use loong_ipc::{
    BearerSecret, Call, ControlRequest, ControlResponse, InvokeRequest, Reply, SandboxRunRequest,
    StreamChunk,
};

use crate::{
    kernel_calls::{issue, json},
    support::{bin, text, wait_until, Home, Raw},
    workers::install_examples,
};

/// The bound these tests configure.
const LIMIT: usize = 2;
/// loongctl's exit code for a denial.
const EXIT_DENIED: i32 = 4;

/// A home whose pack `t` asks for approval of every call, with the example plugins.
fn careful_home() -> Home {
    let home = Home::with_config(&format!(
        "[approvals]\ntimeout_ms = 120000\nmax_pending_per_token = {LIMIT}\n"
    ));
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\napproval = \"always\"\n",
    )
    .expect("pack");
    install_examples(&home);
    home.start();
    home
}

/// `loongctl invoke echo --token SECRET`, waiting for its approval in the background.
fn invoke_in_background(home: &Home, secret: &str) -> Child {
    Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args([
            "invoke",
            "echo",
            "--token",
            secret,
            "--input",
            r#"{"ping":1}"#,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loongctl")
}

/// Every request, as `approvals list --json` shows it.
fn requests(home: &Home) -> Vec<serde_json::Value> {
    let out = home.ctl(&["approvals", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    json(&text(&out.stdout))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The pending requests of token `id` (its public id).
fn pending_of(home: &Home, id: &str) -> Vec<String> {
    requests(home)
        .into_iter()
        .filter(|r| r["state"] == "pending" && r["token"] == id)
        .filter_map(|r| r["id"].as_str().map(String::from))
        .collect()
}

fn wait_for_pending(home: &Home, id: &str, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            seen = pending_of(home, id);
            seen.len() == n
        }),
        "token {id}: {} pending, expected {n}\n{}",
        seen.len(),
        home.log()
    );
    seen
}

fn records(home: &Home, kind: &str) -> Vec<serde_json::Value> {
    let out = home.ctl(&[
        "audit", "recent", "--kind", kind, "--limit", "1000", "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    json(&text(&out.stdout))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn finish(c: Child) -> (Option<i32>, String) {
    let out = c.wait_with_output().expect("wait");
    (out.status.code(), text(&out.stderr))
}

/// A token with `max_pending_per_token` approvals pending is denied its next one at once,
/// without asking: typed (a denial naming the token and what to do) and recorded; another
/// token still asks (the control); once one of the first token's is decided, it asks again.
/// Before, every request was kept pending, without bound.
#[test]
fn a_tokens_pending_approvals_are_bounded_and_another_token_still_asks() {
    let home = careful_home();
    let (first, first_id) = issue(&home, &["tool.invoke:echo"]);
    let (other, other_id) = issue(&home, &["tool.invoke:echo"]);
    let mut waiting: Vec<Child> = (0..LIMIT)
        .map(|_| invoke_in_background(&home, &first))
        .collect();
    let asked = wait_for_pending(&home, &first_id, LIMIT);

    // One past the bound: denied at once, naming the token and the key, nothing asked.
    let out = home.ctl(&["invoke", "echo", "--token", &first, "--input", "{}"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_DENIED), "{err}");
    assert!(
        err.contains(&format!("token {first_id} has {LIMIT} approvals pending"))
            && err.contains("approvals.max_pending_per_token")
            && err.contains("loongctl approvals list"),
        "{err}"
    );
    assert_eq!(pending_of(&home, &first_id), asked);
    let denied: Vec<_> = records(&home, "approval.resolved")
        .into_iter()
        .filter(|r| {
            r["detail"]["state"] == "denied"
                && r["detail"]["token"] == first_id.as_str()
                && r["detail"]["reason"]
                    .as_str()
                    .is_some_and(|w| w.contains("max_pending_per_token"))
        })
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");

    // The control: another token asks.
    waiting.push(invoke_in_background(&home, &other));
    wait_for_pending(&home, &other_id, 1);

    // One of the first token's decided: it asks again.
    assert!(home.ctl(&["approvals", "deny", &asked[0]]).status.success());
    waiting.push(invoke_in_background(&home, &first));
    wait_for_pending(&home, &first_id, LIMIT);

    for id in pending_of(&home, &first_id)
        .into_iter()
        .chain(pending_of(&home, &other_id))
    {
        let _ = home.ctl(&["approvals", "deny", &id]);
    }
    for c in waiting {
        let (code, err) = finish(c);
        assert_eq!(code, Some(EXIT_DENIED), "{err}");
    }
}

/// A caller that goes away while it waits (killed, or its request's deadline passed)
/// withdraws its request: loongd expires it, noted and recorded (`approval.expired`), so no
/// operator approves on behalf of nobody, and it no longer counts against the token's bound
/// (the token asks again). A caller that stays keeps its request pending (the control).
/// Before, the request stayed pending until its own deadline.
#[test]
fn a_caller_that_goes_away_withdraws_the_approval_it_waited_for() {
    let home = careful_home();
    let (secret, id) = issue(&home, &["tool.invoke:echo"]);
    let mut gone = invoke_in_background(&home, &secret);
    let first = wait_for_pending(&home, &id, 1);
    let stays = invoke_in_background(&home, &secret);
    let both = wait_for_pending(&home, &id, 2);
    let kept: Vec<String> = both.into_iter().filter(|a| *a != first[0]).collect();

    gone.kill().expect("kill the caller");
    let _ = gone.wait();
    let left = wait_for_pending(&home, &id, 1);
    assert_eq!(left, kept, "the other caller's request stays pending");
    let shown = json(&text(
        &home.ctl(&["approvals", "show", &first[0], "--json"]).stdout,
    ));
    assert_eq!(shown["state"], "expired", "{shown}");
    assert!(
        shown["note"]
            .as_str()
            .is_some_and(|n| n.contains("its caller went away")),
        "{shown}"
    );
    let expired: Vec<_> = records(&home, "approval.expired")
        .into_iter()
        .filter(|r| r["detail"]["approval"] == first[0].as_str())
        .collect();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["detail"]["token"], id.as_str(), "{expired:?}");
    // Approving it now is refused: there is nothing to approve.
    let late = home.ctl(&["approvals", "approve", &first[0]]);
    assert!(!late.status.success(), "{}", text(&late.stdout));

    // A request whose deadline passes is withdrawn with it, and named in the answer.
    let out = home.ctl(&[
        "invoke",
        "echo",
        "--token",
        &secret,
        "--input",
        "{}",
        "--timeout",
        "1",
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("is withdrawn with the request"), "{err}");
    assert_eq!(wait_for_pending(&home, &id, 1), kept);

    assert!(home.ctl(&["approvals", "deny", &kept[0]]).status.success());
    let (code, err) = finish(stays);
    assert_eq!(code, Some(EXIT_DENIED), "{err}");
}

/// A client that sends its request and half-closes its socket (it writes no more, and may
/// read on) is gone to loongd from that end of stream: the approval its request asks for
/// afterwards is withdrawn (expired, noted, recorded), as one asked before the end is.
/// Before, one asked after the connection had taken stock of what its requests waited for
/// (its writer still flushing) stayed pending for its whole timeout, for an operator to
/// approve on behalf of a client loongd had let go. The control: the same request from a
/// client that stays keeps its approval pending.
#[test]
fn an_approval_asked_after_its_client_half_closed_is_withdrawn() {
    let home = careful_home();
    let (secret, id) = issue(&home, &["tool.invoke:echo"]);
    let stays = invoke_in_background(&home, &secret);
    let kept = wait_for_pending(&home, &id, 1);

    let mut raw = Raw::connect(&home.socket());
    raw.handshake();
    raw.send(&Call::Request {
        id: 1,
        deadline_ms: 60_000,
        body: ControlRequest::Invoke(InvokeRequest {
            tool: "echo".into(),
            input: r#"{"ping":1}"#.into(),
            token: Some(BearerSecret::new(secret.clone())),
        }),
    })
    .expect("send the request");
    raw.stream
        .shutdown(Shutdown::Write)
        .expect("half-close the socket");
    let mut asked = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            asked = requests(&home)
                .into_iter()
                .find(|r| r["token"] == id.as_str() && r["id"] != kept[0].as_str());
            asked.is_some()
        }),
        "the half-closed client's request was never asked\n{}",
        home.log()
    );
    let asked = asked
        .and_then(|r| r["id"].as_str().map(String::from))
        .unwrap_or_default();
    let mut shown = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            shown = json(&text(
                &home.ctl(&["approvals", "show", &asked, "--json"]).stdout,
            ));
            shown["state"] == "expired"
        }),
        "the request of a client that went away stays {shown}"
    );
    assert!(
        shown["note"]
            .as_str()
            .is_some_and(|n| n.contains("its caller went away")),
        "{shown}"
    );
    let expired = records(&home, "approval.expired")
        .into_iter()
        .filter(|r| r["detail"]["approval"] == asked.as_str())
        .count();
    assert_eq!(expired, 1);
    // The control: the caller that stays still waits.
    assert_eq!(pending_of(&home, &id), kept);
    drop(raw);
    assert!(home.ctl(&["approvals", "deny", &kept[0]]).status.success());
    let (code, err) = finish(stays);
    assert_eq!(code, Some(EXIT_DENIED), "{err}");
}

/// How each request of a token ended is in the token's trail (`audit token-trail`), by
/// every path that ends one: approved or denied by an operator, expired at its deadline,
/// expired by `approvals list` past its deadline, and expired as loongd starts again. The
/// control: each request's `approval.requested` is there. Before, only a withdrawal and
/// loongd's own denials named the token: the others were recorded without it, and
/// `approvals list` expired requests without any record.
#[test]
fn every_end_of_a_tokens_request_is_in_its_trail() {
    let home = Home::with_config("[approvals]\ntimeout_ms = 1500\n");
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\napproval = \"always\"\n",
    )
    .expect("pack");
    install_examples(&home);
    home.start();
    let (secret, id) = issue(&home, &["tool.invoke:echo"]);
    let ends = |approval: &str| -> Vec<String> {
        crate::kernel_calls::trail(&home, &id)
            .into_iter()
            .filter(|r| r["detail"]["approval"] == approval)
            .filter_map(|r| r["kind"].as_str().map(String::from))
            .collect()
    };

    // Approved, then denied, by the operator.
    for verb in ["approve", "deny"] {
        let waiting = invoke_in_background(&home, &secret);
        let asked = wait_for_pending(&home, &id, 1);
        assert!(home.ctl(&["approvals", verb, &asked[0]]).status.success());
        let _ = finish(waiting);
        assert_eq!(
            ends(&asked[0]),
            ["approval.requested", "approval.resolved"],
            "{verb}"
        );
    }

    // Expired at its deadline by its waiter.
    let out = home.ctl(&["invoke", "echo", "--token", &secret, "--input", "{}"]);
    assert!(!out.status.success());
    let expired: Vec<String> = requests(&home)
        .into_iter()
        .filter(|r| r["state"] == "expired")
        .filter_map(|r| r["id"].as_str().map(String::from))
        .collect();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(
        ends(&expired[0]),
        ["approval.requested", "approval.expired"]
    );

    // Expired as loongd starts again (its waiter died with the daemon).
    let waiting = invoke_in_background(&home, &secret);
    let asked = wait_for_pending(&home, &id, 1);
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    let _ = finish(waiting);
    home.start();
    assert!(
        wait_until(Duration::from_secs(10), || ends(&asked[0]).len() == 2),
        "{:?}",
        ends(&asked[0])
    );
    assert_eq!(ends(&asked[0]), ["approval.requested", "approval.expired"]);
}

/// How long (ms) loongd's test hook holds a withdrawal's record, and a resolver's wake of
/// its waiter after the approval is recorded (`LOONG_TEST_APPROVAL_DELAY_MS`): the gaps an
/// approve or a cancellation lands in below.
const RACE_DELAY_MS: &str = "3000";

/// [`careful_home`] with loongd's approval-race hook set.
fn racing_home() -> Home {
    let home = Home::with_config(&format!(
        "[approvals]\ntimeout_ms = 120000\nmax_pending_per_token = {LIMIT}\n"
    ));
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\napproval = \"always\"\n",
    )
    .expect("pack");
    install_examples(&home);
    home.start_env(&[("LOONG_TEST_APPROVAL_DELAY_MS", RACE_DELAY_MS)]);
    home
}

/// A raw client's `invoke echo` under `secret`, as request 1, left waiting for its approval.
fn raw_invoke(home: &Home, secret: &str) -> Raw {
    let mut raw = Raw::connect(&home.socket());
    raw.handshake();
    raw.send(&Call::Request {
        id: 1,
        deadline_ms: 60_000,
        body: ControlRequest::Invoke(InvokeRequest {
            tool: "echo".into(),
            input: r#"{"ping":1}"#.into(),
            token: Some(BearerSecret::new(secret.to_string())),
        }),
    })
    .expect("send the request");
    raw
}

/// Cancels request 1 of `raw` and reads on to its answer (the cancellation's).
fn cancel(raw: &mut Raw) {
    raw.send(&Call::<ControlRequest>::Cancel { id: 1 })
        .expect("send the cancel");
    loop {
        match raw.recv::<Reply<ControlResponse>>() {
            Some(Reply::Response { id: 1, result }) => {
                assert!(result.is_err(), "a cancelled request answered {result:?}");
                return;
            }
            Some(_) => {}
            None => panic!("the connection closed before the cancellation was answered"),
        }
    }
}

fn records_of(home: &Home, kind: &str, approval: &str) -> Vec<serde_json::Value> {
    records(home, kind)
        .into_iter()
        .filter(|r| r["detail"]["approval"] == approval)
        .collect()
}

/// An approve landing the instant its waiter leaves (the request cancelled, the withdrawal's
/// record held back by the test hook) finds the request withdrawn and is refused saying so;
/// the trail has the withdrawal (`approval.expired`) and no approval. Before, the request
/// stayed pending until a task spawned by the waiter's drop ran, and an approve in that gap
/// was recorded `approved` though nothing ran.
#[test]
fn an_approve_after_its_waiter_left_is_refused_as_withdrawn() {
    let home = racing_home();
    let (secret, id) = issue(&home, &["tool.invoke:echo"]);
    let mut raw = raw_invoke(&home, &secret);
    let asked = wait_for_pending(&home, &id, 1);
    cancel(&mut raw);
    let late = home.ctl(&["approvals", "approve", &asked[0]]);
    let err = text(&late.stderr);
    assert!(!late.status.success(), "{}", text(&late.stdout));
    assert!(
        err.contains(&format!(
            "approval {} was withdrawn: its caller went away",
            asked[0]
        )),
        "{err}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || records_of(
            &home,
            "approval.expired",
            &asked[0]
        )
        .len()
            == 1),
        "the withdrawal is recorded once\n{}",
        home.log()
    );
    let approved: Vec<_> = records_of(&home, "approval.resolved", &asked[0]);
    assert!(approved.is_empty(), "{approved:?}");
    assert!(records(&home, "tool.invoked").is_empty());
}

/// Input chunks for a request that reads none (an `invoke` waiting for its approval) are
/// dropped as they arrive: they hold neither the connection's reading nor the request (it
/// has no input channel; before, the third chunk held the connection's reading until the
/// request ended). A sandbox run on the same connection still gets its input (the control).
#[test]
fn input_for_a_request_that_reads_none_is_dropped_and_holds_nothing() {
    let home = careful_home();
    let (secret, id) = issue(&home, &["tool.invoke:echo"]);
    let mut raw = raw_invoke(&home, &secret);
    wait_for_pending(&home, &id, 1);
    for _ in 0..8 {
        raw.send(&Call::<ControlRequest>::Stream {
            id: 1,
            chunk: StreamChunk::Stdin(b"ignored".to_vec()),
        })
        .expect("send a chunk");
    }
    raw.send(&Call::<ControlRequest>::Ping { nonce: 7 })
        .expect("send a ping");
    // The request's own notes (its approval's) may come first.
    loop {
        match raw.recv::<Reply<ControlResponse>>() {
            Some(Reply::Pong { nonce: 7 }) => break,
            Some(Reply::Stream { id: 1, .. }) => {}
            other => panic!(
                "the connection stopped reading behind input for a request that reads none: \
                 {other:?}"
            ),
        }
    }
    // The control: a sandbox run's input reaches its program.
    raw.send(&Call::Request {
        id: 2,
        deadline_ms: 60_000,
        body: ControlRequest::SandboxRun(Box::new(SandboxRunRequest {
            tier: "balanced".into(),
            program: "/bin/cat".into(),
            ..Default::default()
        })),
    })
    .expect("send the run");
    for chunk in [StreamChunk::Stdin(b"fed".to_vec()), StreamChunk::StdinEnd] {
        raw.send(&Call::<ControlRequest>::Stream { id: 2, chunk })
            .expect("send the run's input");
    }
    let mut out = Vec::new();
    loop {
        match raw.recv::<Reply<ControlResponse>>() {
            Some(Reply::Stream {
                id: 2,
                chunk: StreamChunk::Stdout(b),
            }) => out.extend(b),
            Some(Reply::Response { id: 2, result }) => {
                assert!(result.is_ok(), "{result:?}");
                break;
            }
            Some(_) => {}
            None => panic!("the connection closed before the run ended\n{}", home.log()),
        }
    }
    assert_eq!(out, b"fed");
    cancel(&mut raw);
}

/// Starts `loongctl approvals approve ID` and returns it once the store shows the request
/// approved (the approver's command still running: it waits for its record).
fn approve_in_background(home: &Home, id: &str) -> std::process::Child {
    let approve = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["approvals", "approve", id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loongctl");
    assert!(
        wait_until(Duration::from_secs(20), || {
            let shown = json(&text(
                &home.ctl(&["approvals", "show", id, "--json"]).stdout,
            ));
            shown["state"] == "approved"
        }),
        "the request was never approved\n{}",
        home.log()
    );
    approve
}

/// An approve that wins the race with its waiter's leaving (the request approved, the
/// waiter cancelled before the resolver wakes it, held back by the test hook) is recorded
/// as approved and then as unused (`approval.unused`: nothing ran), and nothing runs.
/// Before, the trail said approved and nothing followed. The control, in the same home: an
/// approve of a waiter that stays runs its effect once, and no `approval.unused` is written.
#[test]
fn an_approval_its_waiter_left_before_taking_is_recorded_unused() {
    let home = racing_home();
    let (secret, id) = issue(&home, &["tool.invoke:echo"]);
    let mut raw = raw_invoke(&home, &secret);
    let asked = wait_for_pending(&home, &id, 1);
    let approve = approve_in_background(&home, &asked[0]);
    cancel(&mut raw);
    let (code, err) = finish(approve);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        wait_until(Duration::from_secs(20), || records_of(
            &home,
            "approval.unused",
            &asked[0]
        )
        .len()
            == 1),
        "no record that the approved effect did not run\n{}",
        home.log()
    );
    let unused = records_of(&home, "approval.unused", &asked[0]);
    assert_eq!(unused[0]["detail"]["token"], id.as_str(), "{unused:?}");
    assert!(
        unused[0]["detail"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("nothing ran")),
        "{unused:?}"
    );
    assert_eq!(records_of(&home, "approval.resolved", &asked[0]).len(), 1);
    assert!(records_of(&home, "approval.expired", &asked[0]).is_empty());
    assert!(records(&home, "tool.invoked").is_empty());
    drop(raw);

    // The control: a waiter that stays runs the approved effect, once.
    let stays = invoke_in_background(&home, &secret);
    let kept = wait_for_pending(&home, &id, 1);
    assert!(home
        .ctl(&["approvals", "approve", &kept[0]])
        .status
        .success());
    let (code, err) = finish(stays);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(records(&home, "tool.invoked").len(), 1);
    assert!(records_of(&home, "approval.unused", &kept[0]).is_empty());
    assert_eq!(records(&home, "approval.unused").len(), 1);
}

/// loongd killed (`kill -9`) between an approve and its waiter's taking of it (the wake held
/// back by the test hook): the next start records `approval.unused` for it (nothing ran),
/// under the token that asked, and the start after records it no more. Before, the trail
/// said approved and nothing followed, for ever. The control, in the same home: an approval
/// its waiter took (the effect ran) is never recorded unused by a restart.
#[test]
fn an_approval_left_untaken_by_a_killed_loongd_is_recorded_unused_once_at_the_next_start() {
    let home = racing_home();
    let (secret, id) = issue(&home, &["tool.invoke:echo"]);

    // The control first: approved and taken, the effect ran.
    let stays = invoke_in_background(&home, &secret);
    let kept = wait_for_pending(&home, &id, 1);
    assert!(home
        .ctl(&["approvals", "approve", &kept[0]])
        .status
        .success());
    let (code, err) = finish(stays);
    assert_eq!(code, Some(0), "{err}");

    let waiter = invoke_in_background(&home, &secret);
    let asked = wait_for_pending(&home, &id, 1);
    let approve = approve_in_background(&home, &asked[0]);
    let pid = home.status().pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    let _ = finish(approve);
    let _ = finish(waiter);
    assert!(
        wait_until(Duration::from_secs(20), || !std::path::Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()),
        "loongd {pid} is still there"
    );
    home.start();
    let unused = records_of(&home, "approval.unused", &asked[0]);
    assert_eq!(unused.len(), 1, "{unused:?}\n{}", home.log());
    assert_eq!(unused[0]["detail"]["token"], id.as_str(), "{unused:?}");
    assert!(
        unused[0]["detail"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("nothing ran")),
        "{unused:?}"
    );
    assert!(
        records_of(&home, "approval.unused", &kept[0]).is_empty(),
        "the approval its waiter took is not unused"
    );
    assert_eq!(
        records(&home, "tool.invoked").len(),
        1,
        "the control's call"
    );

    // Once: the next start does not record it again; nor one after a start killed between
    // the record's commit and the store's note (its approval left unmarked, or left `open`):
    // the trail has the record.
    for taken in [None, Some("open")] {
        let out = home.ctl(&["daemon", "stop"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        edit_approval(&home, &asked[0], "approved", taken);
        home.start();
        assert_eq!(
            records_of(&home, "approval.unused", &asked[0]).len(),
            1,
            "taken {taken:?}\n{}",
            home.log()
        );
        assert_eq!(records(&home, "approval.unused").len(), 1);
    }
}

/// Sets approval `id`'s `state` and `taken` mark in state.db (loongd stopped): what a crash
/// at some point, or an edit of the store, leaves there.
fn edit_approval(home: &Home, id: &str, state: &str, taken: Option<&str>) {
    let db = rusqlite::Connection::open(home.path().join("state.db")).expect("state.db");
    let n = db
        .execute(
            "UPDATE approvals SET state = ?2, taken = ?3 WHERE id = ?1",
            rusqlite::params![id, state, taken],
        )
        .expect("edit the approval");
    assert_eq!(n, 1, "approval {id}");
}

/// Kills loongd (`kill -9`) and waits until it is gone.
fn kill_loongd(home: &Home) {
    let pid = home.status().pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    assert!(
        wait_until(Duration::from_secs(20), || !std::path::Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()),
        "loongd {pid} is still there"
    );
}

/// The store is not the authority for what a start records: state.db edited while loongd is
/// stopped (an approval whose effect ran, a denied one and one the trail never saw, each
/// shown approved and untaken, unmarked and then `open`) makes loongd sign no
/// `approval.unused` nor `approval.expired` for any of them. Before, each was recorded
/// "approved ... nothing ran", contradicting the trail (the effect's records, the denial).
/// The positive control, the real crash, is
/// [`an_approval_left_untaken_by_a_killed_loongd_is_recorded_unused_once_at_the_next_start`].
#[test]
fn a_store_edited_while_loongd_is_stopped_makes_it_sign_no_false_approval_record() {
    let home = careful_home();
    let (secret, id) = issue(&home, &["tool.invoke:echo"]);
    let ran = invoke_in_background(&home, &secret);
    let asked = wait_for_pending(&home, &id, 1);
    assert!(home
        .ctl(&["approvals", "approve", &asked[0]])
        .status
        .success());
    let (code, err) = finish(ran);
    assert_eq!(code, Some(0), "{err}");
    let ran = asked[0].clone();
    let refused = invoke_in_background(&home, &secret);
    let asked = wait_for_pending(&home, &id, 1);
    assert!(home.ctl(&["approvals", "deny", &asked[0]]).status.success());
    let (code, err) = finish(refused);
    assert_eq!(code, Some(EXIT_DENIED), "{err}");
    let denied = asked[0].clone();
    let expired_before = records(&home, "approval.expired").len();

    let out = home.ctl(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    {
        // One the trail never saw: a copy of the denied one under another id.
        let db = rusqlite::Connection::open(home.path().join("state.db")).expect("state.db");
        db.execute_batch(&format!(
            "CREATE TEMP TABLE f AS SELECT * FROM approvals WHERE id = '{denied}'; \
             UPDATE f SET id = 'ap-forged'; INSERT INTO approvals SELECT * FROM f;"
        ))
        .expect("forge an approval");
    }
    for taken in [None, Some("open")] {
        for a in [ran.as_str(), denied.as_str(), "ap-forged"] {
            edit_approval(&home, a, "approved", taken);
        }
        home.start();
        assert!(
            records(&home, "approval.unused").is_empty(),
            "taken {taken:?}: {:?}",
            records(&home, "approval.unused")
        );
        assert_eq!(
            records(&home, "approval.expired").len(),
            expired_before,
            "taken {taken:?}"
        );
        let out = home.ctl(&["daemon", "stop"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

/// loongd killed between an approve's commit in the store and its record (state.db shows it
/// approved and `open`, the trail has its request and no resolution): the next start records
/// it ended without running (`approval.expired`, "before the approval ... was recorded"),
/// once, and the store says so too; never `approval.unused` of an approval the trail never
/// had. Before, it stayed approved in the store and unended in the trail for ever.
#[test]
fn an_approve_killed_before_its_record_is_recorded_expired_once_at_the_next_start() {
    let home = careful_home();
    let (secret, id) = issue(&home, &["tool.invoke:echo"]);
    let waiter = invoke_in_background(&home, &secret);
    let asked = wait_for_pending(&home, &id, 1);
    kill_loongd(&home);
    let _ = finish(waiter);
    edit_approval(&home, &asked[0], "approved", Some("open"));
    for _ in 0..2 {
        home.start();
        let expired = records_of(&home, "approval.expired", &asked[0]);
        assert_eq!(expired.len(), 1, "{expired:?}\n{}", home.log());
        assert!(
            expired[0]["detail"]["why"]
                .as_str()
                .is_some_and(|w| w.contains("before the approval") && w.contains("nothing ran")),
            "{expired:?}"
        );
        assert_eq!(expired[0]["detail"]["token"], id.as_str(), "{expired:?}");
        assert!(records(&home, "approval.unused").is_empty());
        let shown = json(&text(
            &home.ctl(&["approvals", "show", &asked[0], "--json"]).stdout,
        ));
        assert_eq!(shown["state"], "expired", "{shown}");
        let out = home.ctl(&["daemon", "stop"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

/// A request left pending by a killed loongd is recorded expired ("loongd restarted") at the
/// next start, once; and once only when that start was killed between its record's commit
/// and the store's expiry (the request still pending in state.db, its ending on record).
/// Before, the start expired the requests in the store and recorded them later, so a kill
/// in between lost their records, and one killed after the record recorded it again.
#[test]
fn a_request_left_pending_by_a_killed_loongd_is_recorded_expired_once() {
    let home = careful_home();
    let (secret, id) = issue(&home, &["tool.invoke:echo"]);
    let waiter = invoke_in_background(&home, &secret);
    let asked = wait_for_pending(&home, &id, 1);
    kill_loongd(&home);
    let _ = finish(waiter);
    for round in 0..2 {
        home.start();
        let expired = records_of(&home, "approval.expired", &asked[0]);
        assert_eq!(
            expired.len(),
            1,
            "round {round}: {expired:?}\n{}",
            home.log()
        );
        assert_eq!(
            expired[0]["detail"]["why"], "loongd restarted",
            "{expired:?}"
        );
        assert_eq!(expired[0]["detail"]["token"], id.as_str(), "{expired:?}");
        let shown = json(&text(
            &home.ctl(&["approvals", "show", &asked[0], "--json"]).stdout,
        ));
        assert_eq!(shown["state"], "expired", "{shown}");
        let out = home.ctl(&["daemon", "stop"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        edit_approval(&home, &asked[0], "pending", None);
    }
}

/// A full-access window in state.db that the trail never recorded opening (its approve
/// committed it in the store and loongd was killed before the record, or the store was
/// edited while loongd was stopped) is closed at the next start: the next call asks. The
/// control: a window on record survives a restart and approves a call at once. Before, the
/// unrecorded window approved every call of every pack.
#[test]
fn a_full_access_window_the_trail_never_recorded_is_closed_at_the_next_start() {
    let home = careful_home();
    let (secret, id) = issue(&home, &["tool.invoke:echo"]);
    let first = invoke_in_background(&home, &secret);
    let asked = wait_for_pending(&home, &id, 1);
    let out = home.ctl(&[
        "approvals",
        "approve",
        &asked[0],
        "--full-access",
        "--ttl",
        "1h",
        "--uses",
        "1",
        "--pack",
        "t",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, err) = finish(first);
    assert_eq!(code, Some(0), "{err}");

    // The control: the recorded window survives a restart and approves the next call.
    let out = home.ctl(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    home.start();
    let (code, err) = finish(invoke_in_background(&home, &secret));
    assert_eq!(code, Some(0), "the recorded window: {err}\n{}", home.log());
    assert!(pending_of(&home, &id).is_empty());

    kill_loongd(&home);
    {
        let db = rusqlite::Connection::open(home.path().join("state.db")).expect("state.db");
        db.execute(
            "INSERT INTO windows (id, pack, expires_ms, uses_left, creator) VALUES \
             ('w-unrecorded', NULL, 9000000000000, 100, 'uid:0')",
            [],
        )
        .expect("a window the trail never saw");
    }
    home.start();
    let asks = invoke_in_background(&home, &secret);
    let asked = wait_for_pending(&home, &id, 1);
    assert!(home.ctl(&["approvals", "deny", &asked[0]]).status.success());
    let (code, err) = finish(asks);
    assert_eq!(code, Some(EXIT_DENIED), "{err}");
    assert!(
        records(&home, "approval.resolved")
            .iter()
            .all(|r| r["detail"]["window"] != "w-unrecorded"),
        "the unrecorded window approved a call"
    );
}
