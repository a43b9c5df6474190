//! A sandbox run's own records in the trail: its start while it runs and before its end,
//! and its end when loongd stops while it runs.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use crate::audit::recent;
use crate::support::{bin, text, wait_until, Home};

/// A run's start (`sandbox.spawned`) waits for its end to share its commit, never longer
/// than the audit writer's `LINGER` (20 ms): a run that lasts has its start in the trail while
/// it runs, and kept through a `kill -9` of loongd; a short run's start precedes its end.
#[test]
fn a_runs_start_is_recorded_while_it_runs_and_before_its_end() {
    let home = Home::new();
    let pid = home.start();
    let short = home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "trusted",
        "--",
        "/bin/echo",
        "short",
    ]);
    assert!(short.status.success(), "{}", text(&short.stderr));
    let mut long = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args([
            "sandbox",
            "run",
            "--tier",
            "trusted",
            "--",
            "/bin/sleep",
            "60",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("loongctl");
    let is_long =
        |r: &serde_json::Value| r["detail"]["request"]["args"] == serde_json::json!(["60"]);
    let recorded = wait_until(Duration::from_secs(10), || {
        recent(&home, "sandbox.spawned").iter().any(is_long)
    });
    let running = long.try_wait().expect("loongctl").is_none();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    let _ = long.wait();
    assert!(recorded, "a running sandbox's start is not in the trail");
    assert!(running, "the long run ended before its start was seen");
    home.start();
    let spawned = recent(&home, "sandbox.spawned");
    assert!(spawned.iter().any(is_long), "{spawned:?}");
    assert!(
        !recent(&home, "sandbox.exited")
            .iter()
            .any(|r| r["detail"]["program"] == "/bin/sleep"),
        "the long run was not cut off by the kill"
    );
    let s = spawned
        .iter()
        .find(|r| r["detail"]["request"]["args"] == serde_json::json!(["short"]))
        .expect("the short run's start");
    let exited = recent(&home, "sandbox.exited");
    let e = exited
        .iter()
        .find(|r| r["correlation"] == s["correlation"])
        .expect("the short run's end");
    assert!(
        s["seq"].as_u64() < e["seq"].as_u64(),
        "start {s} after end {e}"
    );
    let ok = home.ctl(&["audit", "verify", "--json"]);
    assert!(ok.status.success(), "{}", text(&ok.stdout));
}

/// A run still going when loongd stops is killed and its start and end are in the trail,
/// both before `daemon.stopped` (the trail's last record of that run of loongd).
#[test]
fn a_run_going_when_loongd_stops_is_recorded_ended_before_the_stop() {
    let home = Home::new();
    home.start_env(&[("LOONG_SANDBOX_DISABLE", "landlock")]);
    let mut long = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args([
            "sandbox",
            "run",
            "--tier",
            "restricted",
            "--allow-degraded",
            "--",
            "/bin/sleep",
            "60",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("loongctl");
    let is_long =
        |r: &serde_json::Value| r["detail"]["request"]["args"] == serde_json::json!(["60"]);
    assert!(wait_until(Duration::from_secs(10), || {
        recent(&home, "sandbox.spawned").iter().any(is_long)
    }));
    let out = home.ctl(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = long.wait();
    home.start();
    let spawned = recent(&home, "sandbox.spawned");
    let s = spawned
        .iter()
        .find(|r| is_long(r))
        .expect("the run's start");
    let exited = recent(&home, "sandbox.exited");
    let e = exited
        .iter()
        .find(|r| r["correlation"] == s["correlation"])
        .unwrap_or_else(|| {
            panic!(
                "the run's end is not in the trail: {exited:?}\n{}",
                home.log()
            )
        });
    let stopped = recent(&home, "daemon.stopped");
    let last_stop = stopped
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .min()
        .expect("daemon.stopped");
    assert!(
        e["seq"].as_u64() < Some(last_stop),
        "end {e} after the stop {stopped:?}"
    );
    assert_eq!(e["detail"]["cause"], "loongd_stopped", "{e}");
    assert!(
        s["seq"].as_u64() < e["seq"].as_u64(),
        "start {s} after end {e}"
    );
    let degraded = recent(&home, "sandbox.degraded");
    assert!(
        degraded
            .iter()
            .any(|r| r["correlation"] == s["correlation"]),
        "{degraded:?}"
    );
    let unclean = recent(&home, "daemon.unclean_stop");
    assert!(unclean.is_empty(), "{unclean:?}");
}

/// A program that closes its stdout and stderr and runs on is still supervised until it
/// exits: its wall-clock limit kills it (the end recorded as a timeout), and so does loongd's
/// stop (recorded before `daemon.stopped`). The end of a run's output is not the end of the
/// run: the helper and reaper no longer hold the run's pipes, so the output ends when the
/// program closes it. Control: the same program with its output open meets the same limit.
#[test]
fn a_run_that_closes_its_output_is_still_supervised_until_it_exits() {
    let home = Home::new();
    home.start();
    let run = |script: &str, timeout: Option<&str>| {
        let mut c = Command::new(bin("loongctl"));
        c.arg("--home")
            .arg(home.path())
            .args(["sandbox", "run", "--tier", "balanced"]);
        if let Some(t) = timeout {
            c.args(["--timeout", t]);
        }
        c.args(["--", "/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("loongctl")
    };
    let ended_within = |child: &mut std::process::Child, limit: Duration| {
        let ended = wait_until(limit, || child.try_wait().ok().flatten().is_some());
        if !ended {
            let _ = child.kill();
        }
        let _ = child.wait();
        ended
    };
    let cause = |args: &str| {
        recent(&home, "sandbox.exited")
            .iter()
            .find(|r| {
                r["detail"]["program"] == "/bin/sh"
                    && recent(&home, "sandbox.spawned").iter().any(|s| {
                        s["correlation"] == r["correlation"]
                            && s["detail"]["request"]["args"][1] == args
                    })
            })
            .map(|r| r["detail"]["cause"].clone())
    };
    for script in ["exec >&- 2>&-; exec sleep 60", "exec sleep 60"] {
        let mut child = run(script, Some("1"));
        assert!(
            ended_within(&mut child, Duration::from_secs(20)),
            "{script}: the run outlived its 1 s limit"
        );
        assert_eq!(
            cause(script),
            Some(serde_json::json!("timeout")),
            "{script}"
        );
    }
    let closed = "exec >&- 2>&-; exec sleep 61";
    let mut child = run(closed, None);
    assert!(wait_until(Duration::from_secs(10), || {
        recent(&home, "sandbox.spawned")
            .iter()
            .any(|s| s["detail"]["request"]["args"][1] == closed)
    }));
    let out = home.ctl(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        ended_within(&mut child, Duration::from_secs(20)),
        "the run outlived loongd's stop"
    );
    home.start();
    assert_eq!(cause(closed), Some(serde_json::json!("loongd_stopped")));
    let end = recent(&home, "sandbox.exited")
        .iter()
        .filter(|r| r["detail"]["cause"] == "loongd_stopped")
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .expect("the stopped run's end");
    let stop = recent(&home, "daemon.stopped")
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .min()
        .expect("daemon.stopped");
    assert!(end < stop, "the run's end ({end}) after the stop ({stop})");
    let unclean = recent(&home, "daemon.unclean_stop");
    assert!(unclean.is_empty(), "{unclean:?}");
}
