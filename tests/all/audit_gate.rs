//! The audit gate: an effect waits for the commit of its decision. A run's payload, a
//! built-in's write, a sandbox's connection and an approval's effect each happen only once
//! their record is durable, and never when it cannot be (a fail-closed lane down, loongd killed).

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    audit::*,
    support::{bin, text, wait_until, Home},
};

/// The processes `depth` generations below `pid` (its children are depth 1).
fn descendants_at(pid: u32, depth: usize) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // The parent is the second field after the command's closing parenthesis.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut level = vec![pid];
    for _ in 0..depth {
        level = parents
            .iter()
            .filter(|(_, ppid)| level.contains(ppid))
            .map(|(p, _)| *p)
            .collect();
    }
    level
}

/// How far below loongd a sandbox's payload runs: the spawn server, the helper, the reaper,
/// the payload.
const PAYLOAD_DEPTH: usize = 4;

/// The sandbox is built while its decision commits, and its payload `execve`s only once the
/// commit is durable: with the commit held (a fail-closed syslog lane whose receiver stopped
/// reading), the payload is forked and waits at its gate, and loongd killed then leaves a
/// program that never ran (the gate's end closes with loongd). The control: the same held
/// run, its lane read again, runs its program, and its trail shows the decision before
/// `sandbox.spawned`.
#[test]
fn a_run_whose_loongd_dies_before_its_decision_is_recorded_never_runs_its_program() {
    let dir = tempfile::Builder::new()
        .prefix("lg")
        .tempdir_in("/tmp")
        .expect("dir");
    // The trusted tier runs as an unprivileged uid on the host's file system: the program
    // leaves its mark in a directory anyone may write.
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).expect("marks");
    std::fs::set_permissions(&marks, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let mut lane = SyslogLane::up(dir.path());
    let home = Home::with_config(&lane.config());
    let loongd = home.start();
    let run = |mark: &str| {
        Command::new(bin("loongctl"))
            .arg("--home")
            .arg(home.path())
            .args(["sandbox", "run", "--tier", "trusted", "--", "/bin/sh", "-c"])
            .arg(format!("echo ran > {}", marks.join(mark).display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run loongctl")
    };
    // The payload is forked (or, let through, has left its mark already).
    let waiting = |mark: &str| {
        wait_until(Duration::from_secs(20), || {
            !descendants_at(loongd, PAYLOAD_DEPTH).is_empty() || marks.join(mark).exists()
        })
    };
    // The control: held at its gate, then let through once the lane reads again.
    lane.stall();
    let held = run("held");
    assert!(waiting("held"), "the control's payload was never forked");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !marks.join("held").exists(),
        "the program ran while its decision was not recorded"
    );
    lane.resume();
    let out = held.wait_with_output().expect("the control run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(marks.join("held").exists(), "the control run did not run");
    let spawned = recent(&home, "sandbox.spawned");
    let start = spawned
        .iter()
        .find(|s| s["detail"]["request"]["program"] == "/bin/sh")
        .expect("the control's sandbox.spawned");
    let decided = recent(&home, "policy.decision")
        .into_iter()
        .filter(|d| d["correlation"] == start["correlation"])
        .filter_map(|d| d["seq"].as_u64())
        .min()
        .expect("the control's decision");
    assert!(
        start["seq"].as_u64().is_some_and(|s| decided < s),
        "the decision (seq {decided}) does not precede {start}"
    );
    // loongd dies while the decision is held: the payload, waiting at its gate, never runs.
    lane.stall();
    let mut killed = run("killed");
    assert!(waiting("killed"), "the payload was never forked");
    let payloads = descendants_at(loongd, PAYLOAD_DEPTH);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(loongd as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill loongd");
    let status = killed.wait().expect("the killed run");
    assert!(!status.success(), "a run whose loongd died succeeded");
    assert!(
        wait_until(Duration::from_secs(10), || payloads
            .iter()
            .all(|p| crate::support::process_gone(*p))),
        "the payload outlived loongd"
    );
    // A payload let through would have written its mark at once; give it time to.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !marks.join("killed").exists(),
        "the program ran although loongd died before its decision was recorded"
    );
}

/// A built-in tool acts on the host (file.write writes a file), so its call waits for the
/// commit of its decision: when the record cannot be committed (a fail-closed lane down) the
/// call is refused and the file is never written. The control: with the lane up it is.
#[test]
fn a_builtin_call_whose_decision_cannot_be_recorded_has_no_effect() {
    let dir = tempfile::Builder::new()
        .prefix("lg")
        .tempdir_in("/tmp")
        .expect("dir");
    let rw = dir.path().join("rw");
    std::fs::create_dir(&rw).expect("rw");
    std::fs::set_permissions(&rw, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let mut lane = SyslogLane::up(dir.path());
    let home = Home::with_config(&format!(
        "{}[builtins]\nwrite_roots = [{:?}]\n",
        lane.config(),
        rw.display().to_string()
    ));
    home.start();
    let write = |name: &str| {
        let input = serde_json::json!({"path": rw.join(name), "content": "x"}).to_string();
        home.ctl(&["invoke", "file.write", "--input", &input, "--json"])
    };
    let out = write("up.txt");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(rw.join("up.txt").exists(), "the control call wrote nothing");
    lane.down();
    let out = write("down.txt");
    assert!(
        !out.status.success(),
        "a call whose decision failed to commit succeeded"
    );
    assert!(
        text(&out.stderr).contains("syslog"),
        "{}",
        text(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !rw.join("down.txt").exists(),
        "file.write wrote although its decision was not recorded"
    );
}

/// A sandbox's connection is decided on its run's effect path, and the decision is on disk
/// before the connection is made: with a fail-closed lane down, the broker refuses it and the
/// server sees nothing. The control: the same run's first connection, while the lane is up.
#[test]
fn a_connection_whose_decision_cannot_be_recorded_is_not_made() {
    use std::io::{BufRead, Read, Write};
    let dir = tempfile::Builder::new()
        .prefix("lg")
        .tempdir_in("/tmp")
        .expect("dir");
    let mut lane = SyslogLane::up(dir.path());
    let server = crate::bridges::LocalHttp::text("loong-lane-page");
    let grant = format!("127.0.0.1:{}", server.port);
    let home = Home::with_config(&lane.config());
    home.start();
    let script = format!(
        "curl -sS -i --max-time 10 {url}; echo; echo DONE-ONE; read x; curl -sS -i --max-time 10 {url}",
        url = server.url()
    );
    let mut run = crate::egress::held_run(&home, None, &grant, "/bin/sh", &script);
    let mut out = std::io::BufReader::new(run.stdout.take().expect("stdout"));
    let mut first = String::new();
    let mut line = String::new();
    while out.read_line(&mut line).expect("read") > 0 && !line.contains("DONE-ONE") {
        first.push_str(&line);
        line.clear();
    }
    if !first.contains("loong-lane-page") {
        let _ = run.kill();
        let mut err = String::new();
        let _ = run.stderr.take().expect("stderr").read_to_string(&mut err);
        panic!("the first connection failed: {first}{err}");
    }
    assert_eq!(server.accepted(), 1);
    lane.down();
    let mut stdin = run.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("write");
    drop(stdin);
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("rest");
    let _ = run.wait();
    assert!(rest.starts_with("HTTP/1.1 403"), "{rest}");
    assert!(rest.contains("could not be recorded"), "{rest}");
    assert_eq!(
        server.accepted(),
        1,
        "a connection was made although its decision was not recorded"
    );
}

/// A run's payload waits at its gate for a bounded time: when the audit trail is stuck (a
/// fail-closed lane whose receiver stopped reading), the run is refused well before the
/// spawner's setup timeout, so the spawner is not held longer and the gate never opens for a
/// payload the spawner gave up on; the program never runs. The control: the same run while
/// the lane reads.
#[test]
fn a_run_whose_decision_is_stuck_in_the_trail_is_refused_in_bounded_time() {
    let dir = tempfile::Builder::new()
        .prefix("lg")
        .tempdir_in("/tmp")
        .expect("dir");
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).expect("marks");
    std::fs::set_permissions(&marks, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let mut lane = SyslogLane::up(dir.path());
    let home = Home::with_config(&lane.config());
    home.start();
    let run = |mark: &str| {
        Command::new(bin("loongctl"))
            .arg("--home")
            .arg(home.path())
            .args(["sandbox", "run", "--tier", "trusted", "--", "/bin/sh", "-c"])
            .arg(format!("echo ran > {}", marks.join(mark).display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sandbox run")
    };
    let out = run("up").wait_with_output().expect("control run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(marks.join("up").exists(), "the control run did not run");
    lane.stall();
    let started = std::time::Instant::now();
    let mut child = run("stuck");
    let ended = wait_until(Duration::from_secs(20), || {
        child.try_wait().ok().flatten().is_some()
    });
    let took = started.elapsed();
    if !ended {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("stuck run");
    lane.down();
    assert!(ended, "a run whose decision could not be committed hung");
    assert!(
        took < Duration::from_secs(9),
        "refused only after {took:?}: {}",
        text(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "a run whose decision was not committed succeeded"
    );
    assert!(
        text(&out.stderr).contains("not recorded"),
        "{}",
        text(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !marks.join("stuck").exists(),
        "the program ran although its decision was not recorded"
    );
}

/// An approval acts only once its resolution is on record: while `approvals approve` cannot
/// commit it (a fail-closed lane that stopped reading right after the approver's own
/// decision), its run keeps waiting, even past its deadline, and never runs; once the lane
/// fails outright the approval becomes a denial. The control: the same approval while the lane
/// reads.
#[test]
fn an_approval_whose_resolution_is_not_recorded_lets_nothing_run() {
    let dir = tempfile::Builder::new()
        .prefix("lg")
        .tempdir_in("/tmp")
        .expect("dir");
    let mut lane = SyslogLane::up(dir.path());
    let home = Home::with_config(&format!(
        "{}[approvals]\ntimeout_ms = 3000\n",
        lane.config()
    ));
    let token = crate::support::start_with_careful_token(&home, "process.exec:echo");
    let run = |word: &str| {
        Command::new(bin("loongctl"))
            .arg("--home")
            .arg(home.path())
            .args(["sandbox", "run", "--tier", "balanced", "--token", &token])
            .args(["--", "/bin/echo", word])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("loongctl")
    };
    let pending = || -> String {
        let mut id = None;
        assert!(
            wait_until(Duration::from_secs(10), || {
                let out = home.ctl(&["approvals", "list", "--json"]);
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                id = v.as_array().and_then(|a| {
                    a.iter()
                        .find(|x| x["state"] == "pending")
                        .and_then(|x| x["id"].as_str().map(String::from))
                });
                id.is_some()
            }),
            "no pending approval appeared"
        );
        id.unwrap_or_default()
    };
    let child = run("approved-up");
    let out = home.ctl(&["approvals", "approve", &pending()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = child.wait_with_output().expect("control run");
    assert_eq!(text(&out.stdout), "approved-up\n", "{}", text(&out.stderr));

    let mut child = run("approved-down");
    let id = pending();
    // Room for one record: the approver's own decision; its resolution's send then blocks.
    lane.stall();
    if let Some(held) = &lane.held {
        let mut buf = [0u8; 65536];
        held.recv(&mut buf).expect("one datagram");
    }
    let approver = {
        let (ctl, home_path, id) = (bin("loongctl"), home.path().to_path_buf(), id.clone());
        std::thread::spawn(move || {
            Command::new(ctl)
                .arg("--home")
                .arg(home_path)
                .args(["approvals", "approve", &id])
                .output()
                .expect("approve")
        })
    };
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(stdout), &mut s);
        let _ = tx.send(s);
    });
    // Past the approval's deadline, with its resolution still not on record.
    std::thread::sleep(Duration::from_secs(5));
    let early = rx.try_recv().ok();
    // The lane fails outright: the resolution's commit fails, and everything ends.
    lane.down();
    let approved = approver.join().expect("approver");
    let rest = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    let out = child.wait_with_output().expect("run");
    assert!(
        !early
            .as_deref()
            .unwrap_or_default()
            .contains("approved-down")
            && !rest.contains("approved-down"),
        "the program ran although its approval was not recorded: {}",
        text(&out.stderr)
    );
    assert!(
        !approved.status.success(),
        "an approval whose resolution failed to commit was accepted"
    );
    assert!(
        text(&out.stderr).contains("could not be recorded"),
        "{}",
        text(&out.stderr)
    );
}
