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
