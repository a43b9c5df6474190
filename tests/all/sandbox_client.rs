//! A sandbox run and its client: the sandbox dies with the client's connection whatever ends
//! loongctl (and `sandbox.exited` says `client_gone`), Ctrl-C is passed on and then escalates
//! to a kill, a cancel or a deadline is recorded as such, a long run is not idleness, and
//! clients that stop reading cost loongd a bounded amount of memory.

use std::{
    io::Write,
    os::unix::process::ExitStatusExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use loong_ipc::{Call, ControlRequest, ControlResponse, Reply, SandboxRunRequest, StreamChunk};
use nix::{sys::signal::Signal, unistd::Pid};

use crate::{
    support::{bin, cmdline_has, process_alive, skip, text, wait_until, Home, Raw},
    workers::details,
};

/// Pids of sandboxed processes whose command line contains `marker` (loongctl's own
/// command line names it too, and is left out).
fn payloads(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| cmdline_has(*pid, marker) && !cmdline_has(*pid, "loongctl"))
                .collect()
        })
        .unwrap_or_default()
}

/// `loongctl sandbox run --tier balanced -- ARGV…`, stdin from `stdin`.
fn run(home: &Home, argv: &[&str], stdin: Stdio) -> Child {
    Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["sandbox", "run", "--tier", "balanced", "--"])
        .args(argv)
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loongctl")
}

fn signal(child: &Child, sig: Signal) {
    nix::sys::signal::kill(Pid::from_raw(child.id() as i32), sig).expect("signal loongctl");
}

/// Whether this process ignores `sig` (`SigIgn` of its status), as every process it
/// starts then does.
fn ignored_here(sig: Signal) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1 << (sig as i32 - 1)) != 0)
}

/// Waits for the payload carrying `marker` and returns its pid.
fn payload_of(marker: &str) -> u32 {
    assert!(
        wait_until(Duration::from_secs(20), || !payloads(marker).is_empty()),
        "the payload {marker} never appeared"
    );
    payloads(marker)[0]
}

/// The `sandbox.exited` details whose `cause` is `cause`.
fn exits_with(home: &Home, cause: &str) -> Vec<serde_json::Value> {
    details(home, "sandbox.exited")
        .into_iter()
        .filter(|d| d["cause"] == cause)
        .collect()
}

/// Marker arguments for `sleep`: a long, unique number of seconds.
fn marker(n: u32) -> String {
    format!("{}.{}", 100_000 + n, std::process::id())
}

/// Feeds `child`'s stdin without end, so the run's input stalls on a program that does not
/// read it.
fn flood_stdin(child: &mut Child) {
    let mut stdin = child.stdin.take().expect("piped stdin");
    std::thread::spawn(move || {
        let block = vec![b'x'; 64 * 1024];
        while stdin.write_all(&block).is_ok() {}
    });
}

#[test]
fn a_sandbox_dies_with_its_client_whatever_ends_loongctl() {
    let home = Home::new();
    home.start();
    // Positive control: a run that ends by itself records `exited`.
    let done = home.ctl(&["sandbox", "run", "--tier", "balanced", "--", "/bin/true"]);
    assert_eq!(done.status.code(), Some(0), "{}", text(&done.stderr));
    assert_eq!(exits_with(&home, "exited").len(), 1);

    let cases = [
        (Signal::SIGTERM, false),
        (Signal::SIGKILL, false),
        (Signal::SIGHUP, false),
        // The program reads no stdin and loongctl has more to send: loongd has stopped
        // reading this connection (back-pressure) and must notice the hang-up anyway.
        (Signal::SIGKILL, true),
    ];
    // Run under `nohup`, this process ignores SIGHUP and so does every loongctl it starts:
    // that case would wait for a loongctl that never ends.
    let hup_ignored = ignored_here(Signal::SIGHUP);
    if hup_ignored {
        skip(
            "a_sandbox_dies_with_its_client_whatever_ends_loongctl (SIGHUP)",
            "SIGHUP is ignored in this process (run under nohup?), and loongctl inherits that",
        );
    }
    let mut ended = 0;
    for (i, (sig, stalled)) in cases.into_iter().enumerate() {
        if sig == Signal::SIGHUP && hup_ignored {
            continue;
        }
        ended += 1;
        let m = marker(i as u32 + 1);
        let stdin = if stalled {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut ctl = run(&home, &["/bin/sleep", &m], stdin);
        if stalled {
            flood_stdin(&mut ctl);
        }
        let pid = payload_of(&m);
        // Positive control: while loongctl lives, so does the sandbox.
        std::thread::sleep(Duration::from_millis(300));
        assert!(process_alive(pid), "{sig} stalled={stalled}: died early");
        assert!(ctl.try_wait().expect("try_wait").is_none());
        signal(&ctl, sig);
        let status = ctl.wait().expect("wait loongctl");
        assert_eq!(status.signal(), Some(sig as i32), "{status:?}");
        assert!(
            wait_until(Duration::from_secs(10), || !process_alive(pid)),
            "{sig} stalled={stalled}: the sandboxed program outlived its client"
        );
        assert!(
            wait_until(Duration::from_secs(10), || exits_with(&home, "client_gone")
                .len()
                == ended),
            "{sig} stalled={stalled}: no client_gone record: {:?}",
            details(&home, "sandbox.exited")
        );
    }
    for d in exits_with(&home, "client_gone") {
        assert_eq!(d["signal"], 9, "{d}");
        assert_eq!(d["program"], "/bin/sleep", "{d}");
    }
}

#[test]
fn repeated_interrupts_escalate_to_a_kill() {
    let home = Home::new();
    home.start();
    let gap = Duration::from_millis(800);

    // Positive control: a program that keeps SIGINT's default dies of the first Ctrl-C.
    let m = marker(11);
    let ctl = run(&home, &["/bin/sleep", &m], Stdio::null());
    let pid = payload_of(&m);
    signal(&ctl, Signal::SIGINT);
    let out = ctl.wait_with_output().expect("loongctl");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(!process_alive(pid));
    let exited = exits_with(&home, "exited");
    assert_eq!(exited.len(), 1, "{exited:?}");
    assert_eq!(
        (exited[0]["signal"].clone(), exited[0]["interrupts"].clone()),
        (2.into(), 1.into())
    );

    // A program that ignores SIGINT survives the first, and the second kills it.
    let ignoring = |m: &str| format!("trap '' INT; exec /bin/sleep {m}");
    let m = marker(12);
    let script = ignoring(&m);
    let mut ctl = run(&home, &["/bin/sh", "-c", &script], Stdio::null());
    let pid = payload_of(&m);
    signal(&ctl, Signal::SIGINT);
    std::thread::sleep(gap);
    assert!(process_alive(pid), "a program ignoring SIGINT died of one");
    assert!(ctl.try_wait().expect("try_wait").is_none());
    signal(&ctl, Signal::SIGINT);
    let out = ctl.wait_with_output().expect("loongctl");
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("killed at interrupt 2"),
        "{}",
        text(&out.stderr)
    );
    assert!(wait_until(Duration::from_secs(10), || !process_alive(pid)));
    let interrupted = exits_with(&home, "interrupted");
    assert_eq!(interrupted.len(), 1, "{interrupted:?}");
    assert_eq!(interrupted[0]["interrupts"], 2);

    // With its input stalled the interrupts cannot reach loongd; the third leaves, and the
    // connection's end kills the program.
    let m = marker(13);
    let script = ignoring(&m);
    let mut ctl = run(&home, &["/bin/sh", "-c", &script], Stdio::piped());
    flood_stdin(&mut ctl);
    let pid = payload_of(&m);
    for _ in 0..2 {
        signal(&ctl, Signal::SIGINT);
        std::thread::sleep(gap);
        assert!(process_alive(pid));
    }
    signal(&ctl, Signal::SIGINT);
    let status = ctl.wait().expect("loongctl");
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(
        wait_until(Duration::from_secs(10), || !process_alive(pid)),
        "the program outlived loongctl's third interrupt"
    );
    assert!(wait_until(Duration::from_secs(10), || exits_with(
        &home,
        "client_gone"
    )
    .len()
        == 1));
}

/// loongctl takes Ctrl-C on the thread that relays the run (a signalfd polled beside the
/// connection), not on a thread of its own: with stdin on `/dev/null` a run's loongctl is one
/// thread, and its first Ctrl-C still interrupts the program (the control: the run ends as
/// SIGINT's, recorded with its interrupt).
#[test]
fn ctrl_c_is_taken_without_a_thread_of_its_own() {
    let home = Home::new();
    home.start();
    let m = marker(41);
    let ctl = run(&home, &["/bin/sleep", &m], Stdio::null());
    let pid = payload_of(&m);
    let threads = std::fs::read_dir(format!("/proc/{}/task", ctl.id()))
        .expect("loongctl's threads")
        .count();
    assert_eq!(threads, 1, "loongctl runs {threads} threads");
    signal(&ctl, Signal::SIGINT);
    let out = ctl.wait_with_output().expect("loongctl");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(wait_until(Duration::from_secs(10), || !process_alive(pid)));
    let exited = exits_with(&home, "exited");
    assert_eq!(exited.len(), 1, "{exited:?}");
    assert_eq!(
        (exited[0]["signal"].clone(), exited[0]["interrupts"].clone()),
        (2.into(), 1.into())
    );
}

/// loongd's spawn servers (`loong-spawn --serve`, its children).
fn spawn_servers(loongd: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            cmdline_has(*p, "--serve")
                && std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                        == Some(loongd.to_string().as_str())
                })
        })
        .collect()
}

/// How long a run may wait for a spawn server that does not answer: loongd's bound
/// (`SERVER_ANSWER_TIMEOUT`, 5 s) with room for a loaded machine.
const STUCK_SERVER_WAIT: Duration = Duration::from_secs(30);

/// The spawn server's answer is read on loongd's runtime, so a server that never answers
/// (here stopped) must not hold a run, or the runtime, for ever: the run that asked fails
/// within loongd's bound, saying so, and the server is replaced, so the next run runs. The
/// control: a run before it stopped.
#[test]
fn a_spawn_server_that_does_not_answer_fails_its_run_and_is_replaced() {
    let home = Home::new();
    let loongd = home.start();
    let echo = |word: &str| {
        home.ctl(&[
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--",
            "/bin/echo",
            word,
        ])
    };
    let out = echo("before");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = spawn_servers(loongd);
    assert_eq!(before.len(), 1, "loongd's spawn servers: {before:?}");
    let server = Pid::from_raw(before[0] as i32);
    nix::sys::signal::kill(server, Signal::SIGSTOP).expect("stop the spawn server");
    let mut stuck = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args([
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--",
            "/bin/echo",
            "stuck",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loongctl");
    let ended = wait_until(STUCK_SERVER_WAIT, || {
        stuck.try_wait().is_ok_and(|s| s.is_some())
    });
    if !ended {
        let _ = stuck.kill();
        let _ = nix::sys::signal::kill(server, Signal::SIGKILL);
        panic!("a run waited {STUCK_SERVER_WAIT:?} for a spawn server that does not answer");
    }
    let out = stuck.wait_with_output().expect("the stuck run");
    assert!(
        !out.status.success(),
        "a run without a server's answer succeeded"
    );
    assert!(
        text(&out.stderr).contains("did not answer"),
        "{}",
        text(&out.stderr)
    );
    let out = echo("after");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "after\n");
    let after = spawn_servers(loongd);
    assert!(
        after.len() == 1 && after != before,
        "spawn servers before {before:?}, after {after:?}"
    );
}

/// loongd's runtime threads (`worker_threads` in loongd/src/lib.rs).
const LOONGD_RUNTIME_WORKERS: usize = 2;
/// How long the stuck runs below are given to reach the spawn server before `status` is
/// asked: a run slower than this makes the test pass without showing anything (never fail).
const STUCK_RUNS_SETTLE: Duration = Duration::from_secs(1);

/// The spawn server's answer is awaited on loongd's runtime, not read by a blocking call on
/// one of its threads: with more runs waiting for a server that does not answer (here
/// stopped) than the runtime has threads, loongd still answers `status`, while the stopped
/// server is still the one it waits for (before, each run held a runtime thread, in the
/// read or on the lock, and nothing was answered until the server's bound had passed and
/// the server been killed). The waiting runs then end (the first saying the server did not
/// answer), and a run after them runs.
#[test]
fn a_spawn_server_that_does_not_answer_holds_no_runtime_thread() {
    let home = Home::new();
    let loongd = home.start();
    let echo = |word: &str| {
        home.ctl(&[
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--",
            "/bin/echo",
            word,
        ])
    };
    let out = echo("before");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = spawn_servers(loongd);
    assert_eq!(before.len(), 1, "loongd's spawn servers: {before:?}");
    let server = Pid::from_raw(before[0] as i32);
    nix::sys::signal::kill(server, Signal::SIGSTOP).expect("stop the spawn server");
    let mut stuck: Vec<std::process::Child> = (0..=LOONGD_RUNTIME_WORKERS)
        .map(|i| {
            Command::new(bin("loongctl"))
                .arg("--home")
                .arg(home.path())
                .args(["sandbox", "run", "--tier", "balanced", "--", "/bin/echo"])
                .arg(format!("stuck{i}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("loongctl")
        })
        .collect();
    std::thread::sleep(STUCK_RUNS_SETTLE);
    let status = home.ctl(&["status"]);
    let server_alive = std::fs::read_to_string(format!("/proc/{server}/stat")).is_ok_and(|s| {
        s.rsplit_once(')').is_some_and(|(_, rest)| {
            rest.trim_start().starts_with('t') || rest.trim_start().starts_with('T')
        })
    });
    let pending = stuck
        .iter_mut()
        .map(|c| c.try_wait())
        .filter(|w| w.as_ref().is_ok_and(Option::is_none))
        .count();
    let ended = wait_until(STUCK_SERVER_WAIT, || {
        stuck
            .iter_mut()
            .all(|c| c.try_wait().is_ok_and(|s| s.is_some()))
    });
    if !ended {
        for c in &mut stuck {
            let _ = c.kill();
        }
        let _ = nix::sys::signal::kill(server, Signal::SIGKILL);
        panic!("runs waited {STUCK_SERVER_WAIT:?} for a spawn server that does not answer");
    }
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert!(
        server_alive && pending > 0,
        "status was answered only once the stopped server was replaced (still stopped: \
         {server_alive}, runs waiting: {pending})"
    );
    let errors: Vec<String> = stuck
        .into_iter()
        .map(|c| c.wait_with_output().expect("a stuck run"))
        .filter(|o| !o.status.success())
        .map(|o| text(&o.stderr))
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("did not answer")),
        "{errors:?}"
    );
    let out = echo("after");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "after\n");
}

/// Runs waiting on one spawn server when it dies (here stopped, so that they queue, then
/// killed).
const WAITERS_ON_A_DEAD_SERVER: usize = 3;

/// Several runs waiting on a spawn server that dies each find it gone, but it is replaced
/// once: a restart names the server it found dead, and one that another waiter's restart
/// already replaced is kept. Before, every waiter's restart killed the server then running,
/// and with it (parent-death signal) the sandboxes the other waiters had started on it. So
/// every waiting run, its payload outliving the others' recovery, runs to its end, and one
/// new server is seen. The control: a run before the server stopped.
#[test]
fn runs_waiting_on_a_dead_spawn_server_replace_it_once() {
    let home = Home::new();
    let loongd = home.start();
    let out = home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--",
        "/bin/echo",
        "before",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = spawn_servers(loongd);
    assert_eq!(before.len(), 1, "loongd's spawn servers: {before:?}");
    // A sandbox live on the server that dies: it dies with it, and its end is recorded.
    let live_marker = marker(23);
    let mut live = run(&home, &["/bin/sleep", &live_marker], Stdio::null());
    payload_of(&live_marker);
    let server = Pid::from_raw(before[0] as i32);
    nix::sys::signal::kill(server, Signal::SIGSTOP).expect("stop the spawn server");
    let waiting: Vec<std::process::Child> = (0..WAITERS_ON_A_DEAD_SERVER)
        .map(|i| {
            Command::new(bin("loongctl"))
                .arg("--home")
                .arg(home.path())
                .args([
                    "sandbox", "run", "--tier", "balanced", "--", "/bin/sh", "-c",
                ])
                .arg(format!("sleep 2; echo waited{i}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("loongctl")
        })
        .collect();
    std::thread::sleep(STUCK_RUNS_SETTLE);
    nix::sys::signal::kill(server, Signal::SIGKILL).expect("kill the spawn server");
    // Every server seen while the runs recover and run.
    let mut seen = std::collections::BTreeSet::new();
    let due = Instant::now() + STUCK_SERVER_WAIT;
    let mut waiting = waiting;
    while Instant::now() < due
        && !waiting
            .iter_mut()
            .all(|c| c.try_wait().is_ok_and(|s| s.is_some()))
    {
        seen.extend(spawn_servers(loongd));
        std::thread::sleep(Duration::from_millis(10));
    }
    seen.extend(spawn_servers(loongd));
    seen.remove(&before[0]);
    for (i, c) in waiting.into_iter().enumerate() {
        let out = c.wait_with_output().expect("a waiting run");
        assert!(
            out.status.success() && text(&out.stdout) == format!("waited{i}\n"),
            "run {i} (servers seen after the first: {seen:?}): {:?} {}",
            out.status,
            text(&out.stderr)
        );
    }
    assert_eq!(
        seen.len(),
        1,
        "spawn servers started after the first: {seen:?}"
    );
    let live_status = live.wait().expect("the live run");
    assert!(
        !live_status.success(),
        "a sandbox outlived its spawn server"
    );
    let recorded = wait_until(Duration::from_secs(10), || {
        details(&home, "sandbox.exited").iter().any(|d| {
            d["program"] == "/bin/sleep" && d["signal"] == i64::from(Signal::SIGKILL as i32)
        })
    });
    assert!(
        recorded,
        "the end of the sandbox killed with its server is not recorded: {:?}",
        details(&home, "sandbox.exited")
    );
}

/// The trail's records of `kind` for the run `correlation`, oldest first.
fn run_records(home: &Home, kind: &str, correlation: &str) -> Vec<serde_json::Value> {
    let mut rs: Vec<serde_json::Value> = crate::workers::records(home, kind)
        .into_iter()
        .filter(|r| r["correlation"] == correlation)
        .collect();
    rs.reverse();
    rs
}

/// The sequence number of a run's first decision and of its first record of `kind`.
fn decided_then(home: &Home, kind: &str, correlation: &str) -> (Option<u64>, Option<u64>) {
    let first = |k: &str| {
        run_records(home, k, correlation)
            .first()
            .and_then(|r| r["seq"].as_u64())
    };
    (first("policy.decision"), first(kind))
}

/// A run whose client leaves while the run waits for the spawn server (its lock, its
/// answer, its restart; here the server is stopped) was allowed but never started: the
/// trail shows its decision followed by its refusal (`cause: client_gone`), never a decision
/// left without either a refusal or an end. The control: a run that completes has its
/// decision followed by its end.
#[test]
fn a_run_whose_client_leaves_while_it_waits_for_the_spawn_server_is_recorded_refused() {
    let home = Home::new();
    let loongd = home.start();
    let out = home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--",
        "/bin/echo",
        "before",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exited = details(&home, "sandbox.exited");
    assert_eq!(exited.len(), 1, "{exited:?}");
    let done = crate::workers::records(&home, "sandbox.exited")[0]["correlation"]
        .as_str()
        .expect("a correlation")
        .to_string();
    let (decided, ended) = decided_then(&home, "sandbox.exited", &done);
    assert!(
        decided.is_some() && ended > decided,
        "a completed run: decision {decided:?}, end {ended:?}"
    );
    let servers = spawn_servers(loongd);
    assert_eq!(servers.len(), 1, "loongd's spawn servers: {servers:?}");
    let server = Pid::from_raw(servers[0] as i32);
    nix::sys::signal::kill(server, Signal::SIGSTOP).expect("stop the spawn server");
    let mut waiting = run(&home, &["/bin/echo", "left"], Stdio::null());
    std::thread::sleep(STUCK_RUNS_SETTLE);
    let _ = waiting.kill();
    let _ = waiting.wait();
    let refused = || {
        crate::workers::records(&home, "sandbox.refused")
            .into_iter()
            .find(|r| crate::workers::detail(r)["cause"] == "client_gone")
    };
    let found = wait_until(Duration::from_secs(10), || refused().is_some());
    let _ = nix::sys::signal::kill(server, Signal::SIGKILL);
    assert!(
        found,
        "a run whose client left while it waited has no refusal: {:?}\n{}",
        details(&home, "sandbox.refused"),
        home.log()
    );
    let refusal = refused().expect("the refusal");
    let correlation = refusal["correlation"].as_str().expect("a correlation");
    let (decided, refused_at) = decided_then(&home, "sandbox.refused", correlation);
    assert!(
        decided.is_some() && refused_at > decided,
        "decision {decided:?}, refusal {refused_at:?}"
    );
    assert!(
        run_records(&home, "sandbox.spawned", correlation).is_empty(),
        "a refused run is recorded started"
    );
}

/// A run is planned and handed to the spawn server on loongd's runtime, but a server that
/// died is still replaced (by the spawner thread, which its parent-death signal follows):
/// the run after its death runs. The control: a run before it.
#[test]
fn a_run_after_the_spawn_server_died_starts_a_new_one() {
    let home = Home::new();
    let loongd = home.start();
    let servers = || spawn_servers(loongd);
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let echo = |word: &str| {
        ok(home.ctl(&[
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--",
            "/bin/echo",
            word,
        ]))
    };
    assert_eq!(echo("before"), "before\n");
    let before = servers();
    assert_eq!(before.len(), 1, "loongd's spawn servers: {before:?}");
    nix::sys::signal::kill(Pid::from_raw(before[0] as i32), Signal::SIGKILL)
        .expect("kill the spawn server");
    assert!(wait_until(Duration::from_secs(10), || !process_alive(
        before[0]
    )));
    assert_eq!(echo("after"), "after\n");
    let after = servers();
    assert!(
        after.len() == 1 && after != before,
        "spawn servers before {before:?}, after {after:?}"
    );
}

/// Resident and peak resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Clients that stop reading a sandbox's endless output (the control socket's whole limit of
/// them) cost loongd a bounded amount of memory, and it is returned when they leave.
const STALLED_CLIENTS: usize = 256;
/// loongd's peak resident memory with every client stalled.
const PEAK_LIMIT_KIB: u64 = 64 * 1024;
/// What loongd's resident memory may stay above its own idle size once they are gone (a
/// bound on what the clients cost, not on loongd's code and start-up state, which grow with
/// what loongd does: the resolver and the egress broker added 3.7 MiB idle, not a byte per
/// client).
const AFTER_GROWTH_LIMIT_KIB: u64 = 16 * 1024;
/// How long loongd has to get there.
const RETURN_WITHIN: Duration = Duration::from_secs(15);

#[test]
fn clients_that_stop_reading_cannot_grow_loongd() {
    let home = Home::new();
    let loongd = home.start();
    let started = Instant::now();
    let marker = format!("stalled-{}-{loongd}", std::process::id());
    let (base, _) = rss_kib(loongd);
    let request = Call::Request {
        id: 1,
        deadline_ms: 300_000,
        body: ControlRequest::SandboxRun(Box::new(SandboxRunRequest {
            tier: "balanced".into(),
            program: "/usr/bin/yes".into(),
            args: vec![marker.clone()],
            ..Default::default()
        })),
    };
    let mut clients: Vec<Raw> = (0..STALLED_CLIENTS)
        .map(|_| {
            let mut c = Raw::connect(&home.socket());
            c.handshake();
            c.send(&request).expect("send the run");
            c
        })
        .collect();
    // Each run is confirmed by its first output chunk; from then on nobody reads.
    for (i, c) in clients.iter_mut().enumerate() {
        c.stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        match c.recv::<Reply<ControlResponse>>() {
            Some(Reply::Stream {
                chunk: StreamChunk::Stdout(_),
                ..
            }) => {}
            other => panic!("client {i}: expected output, got {other:?}\n{}", home.log()),
        }
    }
    assert_eq!(payloads(&marker).len(), STALLED_CLIENTS);
    // Every program is blocked on its full pipe: the output it would write grows nothing.
    std::thread::sleep(Duration::from_secs(2));
    let (during, peak) = rss_kib(loongd);
    eprintln!("loongd RSS: {base} KiB idle, {during} KiB with {STALLED_CLIENTS} stalled clients, peak {peak} KiB ({:?})", started.elapsed());
    assert!(
        peak < PEAK_LIMIT_KIB,
        "loongd peaked at {peak} KiB with {STALLED_CLIENTS} stalled clients"
    );
    drop(clients);
    assert!(
        wait_until(Duration::from_secs(30), || payloads(&marker).is_empty()),
        "{} sandboxes outlived their clients",
        payloads(&marker).len()
    );
    assert!(wait_until(Duration::from_secs(10), || home
        .status()
        .connected_clients
        <= 1));
    // The last exits are being recorded while the check starts; give them a moment.
    let gone = Instant::now();
    let returned = wait_until(RETURN_WITHIN, || {
        rss_kib(loongd).0 < base + AFTER_GROWTH_LIMIT_KIB
    });
    let (after, _) = rss_kib(loongd);
    eprintln!(
        "loongd RSS after the clients left: {after} KiB ({:?} later)",
        gone.elapsed()
    );
    assert!(returned, "loongd kept {after} KiB after the clients left");
    assert_eq!(
        exits_with(&home, "client_gone").len(),
        STALLED_CLIENTS,
        "every stalled run records client_gone"
    );
}

#[test]
fn a_long_run_is_not_idleness_and_idle_connections_still_end() {
    let home = Home::with_config("[ipc]\nidle_timeout_ms = 500\n");
    home.start();
    // A run that sends and reads nothing for four idle timeouts is not idle: it finishes.
    let out = home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--",
        "/bin/sleep",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(exits_with(&home, "exited").len(), 1);
    // Positive controls: a connection with nothing in flight still idles out, and so does
    // one whose request has ended.
    let started = Instant::now();
    let mut idle = Raw::connect(&home.socket());
    idle.handshake();
    assert!(idle.closed_by_peer(), "an idle connection stayed open");
    let mut done = Raw::connect(&home.socket());
    done.handshake();
    done.send(&Call::Request {
        id: 1,
        deadline_ms: 5_000,
        body: ControlRequest::Status,
    })
    .expect("send");
    assert!(matches!(
        done.recv::<Reply<ControlResponse>>(),
        Some(Reply::Response { id: 1, .. })
    ));
    assert!(
        done.closed_by_peer(),
        "a connection idle after its request stayed open"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[test]
fn cancelled_and_deadlined_runs_are_killed_and_recorded_so() {
    let home = Home::new();
    home.start();
    let m = marker(21);
    let mut c = Raw::connect(&home.socket());
    c.handshake();
    c.send(&Call::Request {
        id: 7,
        deadline_ms: 60_000,
        body: ControlRequest::SandboxRun(Box::new(SandboxRunRequest {
            tier: "balanced".into(),
            program: "/bin/sleep".into(),
            args: vec![m.clone()],
            ..Default::default()
        })),
    })
    .expect("send the run");
    let pid = payload_of(&m);
    std::thread::sleep(Duration::from_millis(200));
    assert!(process_alive(pid), "died before the cancel");
    c.send(&Call::<ControlRequest>::Cancel { id: 7 })
        .expect("send the cancel");
    match c.recv::<Reply<ControlResponse>>() {
        Some(Reply::Response {
            id: 7,
            result: Err(e),
        }) => {
            assert_eq!(e.kind, loong_ipc::ErrorKind::Cancelled, "{e}")
        }
        other => panic!("expected the cancellation, got {other:?}"),
    }
    assert!(wait_until(Duration::from_secs(10), || !process_alive(pid)));
    assert!(
        wait_until(Duration::from_secs(10), || exits_with(&home, "cancelled")
            .len()
            == 1),
        "{:?}",
        details(&home, "sandbox.exited")
    );
    // The connection itself lives on.
    c.send(&Call::<ControlRequest>::Ping { nonce: 3 })
        .expect("ping");
    assert!(matches!(
        c.recv::<Reply<ControlResponse>>(),
        Some(Reply::Pong { nonce: 3 })
    ));
    // A run past its request's deadline is killed and recorded as such.
    let m = marker(22);
    c.send(&Call::Request {
        id: 8,
        deadline_ms: 1_500,
        body: ControlRequest::SandboxRun(Box::new(SandboxRunRequest {
            tier: "balanced".into(),
            program: "/bin/sleep".into(),
            args: vec![m.clone()],
            ..Default::default()
        })),
    })
    .expect("send the run");
    let pid = payload_of(&m);
    match c.recv::<Reply<ControlResponse>>() {
        Some(Reply::Response {
            id: 8,
            result: Err(e),
        }) => {
            assert_eq!(e.kind, loong_ipc::ErrorKind::DeadlineExceeded, "{e}")
        }
        other => panic!("expected the deadline, got {other:?}"),
    }
    assert!(wait_until(Duration::from_secs(10), || !process_alive(pid)));
    assert!(
        wait_until(Duration::from_secs(10), || exits_with(&home, "deadline")
            .len()
            == 1),
        "{:?}",
        details(&home, "sandbox.exited")
    );
}

#[test]
fn a_closed_output_ends_loongctl_and_its_sandbox() {
    let home = Home::new();
    home.start();
    let m = marker(31);
    let mut ctl = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args([
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--",
            "/usr/bin/yes",
            &m,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loongctl");
    let pid = payload_of(&m);
    // Positive control: while loongctl's output is read, the program runs.
    let mut stdout = ctl.stdout.take().expect("piped stdout");
    let mut head = vec![0u8; 4096];
    std::io::Read::read_exact(&mut stdout, &mut head).expect("output");
    assert!(text(&head).contains(&m));
    assert!(process_alive(pid));
    drop(stdout); // `| head` has read enough
    let status = ctl.wait().expect("loongctl");
    assert_eq!(status.code(), Some(141), "{status:?}");
    assert!(wait_until(Duration::from_secs(10), || !process_alive(pid)));
    assert!(wait_until(Duration::from_secs(10), || exits_with(
        &home,
        "client_gone"
    )
    .len()
        == 1));
}

/// loongctl sends its run in the hello's write: the run still relays stdin, stdout and
/// stderr, exits with the program's code, and its decision, `sandbox.spawned` and
/// `sandbox.exited` records are committed when loongctl returns (read straight from the
/// database, without an audit query, which would flush what lingers first).
#[test]
fn a_run_sent_with_its_hello_relays_stdio_exits_with_its_code_and_is_recorded_first() {
    let home = Home::new();
    home.start();
    let mut child = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["sandbox", "run", "--tier", "balanced", "--"])
        .args([
            "/bin/sh",
            "-c",
            "read line; echo \"out:$line\"; echo err:1 >&2; exit 3",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loongctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("loongctl output");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out:hello\n");
    assert!(text(&out.stderr).contains("err:1"), "{}", text(&out.stderr));
    let db = rusqlite::Connection::open(home.path().join("audit.db")).expect("db");
    let correlation: String = db
        .query_row(
            "SELECT correlation FROM audit WHERE kind = 'sandbox.exited' ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("a sandbox.exited record when loongctl returned");
    for kind in ["policy.decision", "sandbox.spawned"] {
        let n: i64 = db
            .query_row(
                "SELECT count(*) FROM audit WHERE kind = ?1 AND correlation = ?2",
                [kind, correlation.as_str()],
                |r| r.get(0),
            )
            .expect("count");
        assert!(n >= 1, "no {kind} record for the run {correlation}");
    }
}

/// loongctl parses its hot command lines without clap's tree (`loongctl::fast`) and, with
/// stdin on `/dev/null`, starts no thread to read it: what a user sees stays the same. A
/// program reading `/dev/null` gets its end at once, a failing program's code is loongctl's,
/// the output is relayed, and every malformed line still gets clap's error and exit 2, and
/// `--help` clap's help (the positive control: the same lines well formed run).
#[test]
fn the_fast_command_line_keeps_claps_errors_and_the_programs_code() {
    let home = Home::new();
    home.start();
    let h = home.path().display().to_string();
    let ctl = |args: &[&str], stdin: Stdio| {
        Command::new(bin("loongctl"))
            .args(args)
            .stdin(stdin)
            .output()
            .expect("loongctl")
    };
    // A reader of /dev/null sees its end (a missing end would run into the timeout), and the
    // program's code and output come back. (A shell builtin: the balanced tier lets the
    // program fork no child.)
    let prog = "if read line; then echo \"got:$line\"; else echo eof; fi; echo err:1 >&2; exit 7";
    for stdin in [Stdio::null(), Stdio::piped()] {
        let out = ctl(
            &[
                "--home",
                &h,
                "sandbox",
                "run",
                "--tier",
                "balanced",
                "--timeout",
                "10",
                "--",
                "/bin/sh",
                "-c",
                prog,
            ],
            stdin,
        );
        assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "eof\n");
        assert!(text(&out.stderr).contains("err:1"), "{}", text(&out.stderr));
    }
    let ok = ctl(
        &[
            "sandbox",
            "--home",
            &h,
            "run",
            "--tier=balanced",
            "/bin/true",
        ],
        Stdio::null(),
    );
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let ok = ctl(&["status", "--home", &h, "--json"], Stdio::null());
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).contains("\"protocol_version\""),
        "{}",
        text(&ok.stdout)
    );

    let run = |extra: &[&str]| {
        let mut a = vec!["--home", h.as_str(), "sandbox", "run"];
        a.extend_from_slice(extra);
        ctl(&a, Stdio::null())
    };
    for (out, want) in [
        (
            run(&["--tier", "balanced", "--pids", "x", "--", "/bin/true"]),
            "invalid value 'x' for '--pids <N>'",
        ),
        (
            run(&["--tier", "balanced", "--timeout", "soon", "/bin/true"]),
            "invalid value 'soon' for '--timeout <SECS>'",
        ),
        (
            run(&["--tier", "a", "--tier", "b", "/bin/true"]),
            "cannot be used multiple times",
        ),
        (
            ctl(&["--home", &h, "status", "--bogus"], Stdio::null()),
            "unexpected argument '--bogus'",
        ),
        (
            run(&["--tier", "balanced"]),
            "the following required arguments were not provided",
        ),
        (run(&["/bin/true"]), "--tier <TIER>"),
        (
            ctl(&["--home", &h, "--system", "status"], Stdio::null()),
            "cannot be used with",
        ),
        (
            ctl(&["--home", &h, "status", "--json=1"], Stdio::null()),
            "unexpected value '1' for '--json'",
        ),
        (
            ctl(&["--home", &h, "invoke", "a", "b"], Stdio::null()),
            "unexpected argument 'b'",
        ),
        (ctl(&["--home", &h, "invoke"], Stdio::null()), "<TOOL>"),
    ] {
        assert_eq!(out.status.code(), Some(2), "{want}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(want),
            "{want}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).starts_with("error: "),
            "{}",
            text(&out.stderr)
        );
    }
    for args in [
        &["sandbox", "run", "--help"][..],
        &["status", "--help"],
        &["invoke", "-h"],
    ] {
        let out = ctl(args, Stdio::null());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("Usage: loongctl "),
            "{args:?}: {}",
            text(&out.stdout)
        );
    }
}

/// A client that leaves while its run starts (loongctl killed at any instant of the spawn):
/// whenever the program ran (its marker file exists), the run's start and end are in the
/// trail, however the request was dropped.
#[test]
fn a_run_whose_client_leaves_while_it_starts_is_recorded_whenever_its_program_ran() {
    const RUNS: u64 = 40;
    const LATE_RUNS: u64 = 3;
    let home = Home::new();
    home.start();
    let out = tempfile::Builder::new()
        .prefix("loong-orphan")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(
        out.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let dir = out.path().display().to_string();
    for i in 0..RUNS {
        let mut c = Command::new(bin("loongctl"))
            .arg("--home")
            .arg(home.path())
            .args([
                "sandbox", "run", "--tier", "balanced", "--write", &dir, "--",
            ])
            .args([
                "/bin/sh",
                "-c",
                &format!("echo > {dir}/m{i}; sleep 30"),
                "orphan",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("loongctl");
        // From 2 ms to 21.5 ms after the start (the spawn's every step); the last runs a
        // while longer, so that some program runs however loaded the host is.
        let pause = if i + LATE_RUNS >= RUNS {
            Duration::from_millis(500)
        } else {
            Duration::from_micros(500 * i + 2_000)
        };
        std::thread::sleep(pause);
        let _ = c.kill();
        let _ = c.wait();
    }
    let ran: Vec<u64> = (0..RUNS)
        .filter(|i| out.path().join(format!("m{i}")).exists())
        .collect();
    // Positive control: some programs ran before their client left.
    assert!(!ran.is_empty(), "no run got as far as its program");
    let recorded = |i: u64| {
        let needle = format!("m{i};");
        home.ctl(&[
            "audit",
            "recent",
            "--kind",
            "sandbox.spawned",
            "--limit",
            "1000",
            "--json",
        ])
        .stdout
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
    };
    for i in &ran {
        assert!(
            wait_until(Duration::from_secs(10), || recorded(*i)),
            "run {i} ran (its marker exists) but its start is not in the trail; ran: {ran:?}\n{}",
            home.log()
        );
    }
    // And none outlives its client.
    assert!(
        wait_until(Duration::from_secs(10), || payloads(&dir).is_empty()),
        "programs outlived their clients: {:?}",
        payloads(&dir)
    );
}
