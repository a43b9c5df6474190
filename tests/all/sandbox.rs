//! Sandbox behaviour beyond single escape attempts: what the host sees of a confined process,
//! cleanup when loongd dies, failing closed, setuid, bad input, doctor, policy check, and
//! isolation between sandboxes that share a network namespace. (The unprivileged, user
//! namespace path runs the whole escape catalogue: `sandbox_probes.rs`.)

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::support::{bin, is_root, process_alive, skip, text, wait_until, Home};

const PROBE: &str = env!("LOONG_PROBE");

fn probe(test: &str) -> Option<PathBuf> {
    if PROBE.starts_with("unavailable") {
        skip(test, PROBE);
        return None;
    }
    Some(PathBuf::from(PROBE))
}

/// Pids of processes whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    crate::support::cmdline_has(*pid, marker)
                        && !crate::support::cmdline_has(*pid, "loongctl")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `loongctl sandbox run --tier TIER -- PROBE spin MARKER`, stdio on `/dev/null`: a payload
/// that runs until killed, found by `MARKER` in its command line.
fn spin_run(home: &Home, tier: &str, probe: &Path, marker: &str) -> std::process::Child {
    Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["sandbox", "run", "--tier", tier, "--"])
        .arg(probe)
        .args(["spin", marker])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("loongctl")
}

fn status_field(pid: u32, field: &str) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
}

#[test]
fn confined_process_seen_from_the_host_and_killed_with_loongd() {
    let Some(probe) = probe("confined_process_seen_from_the_host_and_killed_with_loongd") else {
        return;
    };
    let home = Home::new();
    let loongd = home.start();
    let marker = format!("marker-{}-{loongd}", std::process::id());
    let mut runs = Vec::new();
    for tier in ["restricted", "balanced", "trusted"] {
        let m = format!("{marker}-{tier}");
        let child = spin_run(&home, tier, &probe, &m);
        runs.push((tier, m, child));
    }
    let mut payloads = Vec::new();
    for (tier, m, _) in &runs {
        assert!(
            wait_until(Duration::from_secs(10), || !pids_with(m).is_empty()),
            "{tier} payload never appeared"
        );
        let pid = pids_with(m)[0];
        // Positive control: this test's own process has neither.
        assert_eq!(
            status_field(std::process::id(), "NoNewPrivs:").as_deref(),
            Some("0")
        );
        assert_eq!(
            status_field(pid, "NoNewPrivs:").as_deref(),
            Some("1"),
            "{tier}"
        );
        assert_eq!(
            status_field(pid, "Seccomp:").as_deref(),
            Some("2"),
            "{tier}"
        );
        assert_eq!(
            status_field(pid, "CapEff:").as_deref(),
            Some("0000000000000000"),
            "{tier}"
        );
        if is_root() {
            let uid = status_field(pid, "Uid:").unwrap_or_default();
            assert!(uid.starts_with("65534"), "{tier} runs as {uid}, not nobody");
        }
        // The payload is not pid 1 of its namespace: a reaper is.
        let nspid = status_field(pid, "NSpid:").unwrap_or_default();
        assert!(
            nspid.ends_with("\t2") || nspid.ends_with(" 2"),
            "{tier} NSpid {nspid:?}"
        );
        payloads.push(pid);
    }
    // kill -9 of loongd takes every sandbox down.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(loongd as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    for pid in &payloads {
        assert!(
            wait_until(Duration::from_secs(10), || !process_alive(*pid)),
            "confined pid {pid} survived loongd"
        );
    }
    assert!(
        pids_with(&marker).is_empty(),
        "leftover confined processes: {:?}",
        pids_with(&marker)
    );
    for (_, _, mut c) in runs {
        let _ = c.wait();
    }
}

/// What `/proc/PID/fd/FD` names.
fn fd_target(pid: u32, fd: u32) -> String {
    fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("unreadable: {e}"))
}

/// The run's stdio is its payload's alone: once the payload runs, neither the reaper (its
/// parent, pid 1 of its namespace) nor the helper (the reaper's parent) holds the run's
/// pipes, each having put /dev/null in their place, so the output ends with the payload's
/// exit and not with the helper's, which tears the run's namespaces down as it exits. The
/// control: the payload's own stdio is the run's pipes. In every tier.
#[test]
fn only_the_payload_holds_the_run_s_stdio() {
    let test = "only_the_payload_holds_the_run_s_stdio";
    let Some(probe) = probe(test) else {
        return;
    };
    if !is_root() {
        skip(
            test,
            "reads the descriptors of processes of other uids in /proc",
        );
        return;
    }
    let home = Home::new();
    let loongd = home.start();
    let marker = format!("stdio-{}-{loongd}", std::process::id());
    for tier in ["restricted", "balanced", "trusted"] {
        let m = format!("{marker}-{tier}");
        let mut child = spin_run(&home, tier, &probe, &m);
        assert!(
            wait_until(Duration::from_secs(10), || !pids_with(&m).is_empty()),
            "{tier} payload never appeared"
        );
        let payload = pids_with(&m)[0];
        let parent = |pid: u32| {
            status_field(pid, "PPid:")
                .and_then(|p| p.parse::<u32>().ok())
                .expect("a parent")
        };
        let reaper = parent(payload);
        let helper = parent(reaper);
        for fd in 0..3 {
            let own = fd_target(payload, fd);
            assert!(
                own.starts_with("pipe:["),
                "{tier}: the payload's fd {fd} is {own}"
            );
            for (who, pid) in [("reaper", reaper), ("helper", helper)] {
                // The reaper puts /dev/null in place once the payload's `execve` has
                // returned to it: a moment after the payload appears.
                wait_until(Duration::from_secs(5), || fd_target(pid, fd) == "/dev/null");
                assert_eq!(
                    fd_target(pid, fd),
                    "/dev/null",
                    "{tier}: the {who}'s fd {fd} (the payload's is {own})"
                );
            }
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(payload as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the payload");
        let _ = child.wait();
    }
}

/// A started loongd whose sandboxes have no pid namespace (`LOONG_SANDBOX_DISABLE=pidns`);
/// `None`, the test reported skipped, where loongd is not root (rootless needs one).
fn home_without_pid_namespaces(test: &str) -> Option<Home> {
    if !is_root() {
        skip(
            test,
            "a root loongd runs without a pid namespace here (rootless needs one)",
        );
        return None;
    }
    let home = Home::new();
    home.start_env(&[("LOONG_SANDBOX_DISABLE", "pidns")]);
    Some(home)
}

/// SIGKILL to each of `pids` (what a failed test left running).
fn kill_all(pids: &[u32]) {
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A run degraded without a pid namespace has no init whose exit takes its other processes
/// down: its reaper adopts them (a child subreaper) and kills what is left when the payload
/// ends, so a process the run started and detached (a new session, its output closed) is gone
/// by the time the run is answered. Before, it ran on past `sandbox.exited`. The positive
/// control: the detached process was running (the payload saw it alive before it exited).
#[test]
fn a_run_without_a_pid_namespace_leaves_no_process_behind() {
    let test = "a_run_without_a_pid_namespace_leaves_no_process_behind";
    let Some(home) = home_without_pid_namespaces(test) else {
        return;
    };
    let marker = format!("8000.{}", std::process::id());
    // The run's pid namespace is the host's: the payload's pid is a host pid, not 2 (the
    // first child of a namespace's init, as in every run with a pid namespace).
    let script = format!(
        "echo PID $$; setsid sleep {marker} </dev/null >/dev/null 2>&1 & sleep 0.3; kill -0 $! && echo ALIVE"
    );
    let out = home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--allow-degraded",
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let pid: u32 = lines
        .first()
        .and_then(|l| l.strip_prefix("PID "))
        .and_then(|p| p.parse().ok())
        .unwrap_or_default();
    assert!(pid > 2, "the run had a pid namespace of its own: {stdout}");
    assert_eq!(
        lines.get(1),
        Some(&"ALIVE"),
        "the detached process never ran: {stdout}"
    );
    let left = pids_with(&marker);
    kill_all(&left);
    assert!(left.is_empty(), "left behind after the run: {left:?}");
}

/// The same run killed while it goes (its `--timeout`): loongd kills the helper, and without a
/// pid namespace nothing else ends the run's processes. The reaper hears the helper's death
/// (SIGTERM, its parent-death signal in such a run) and kills and reaps every process below it,
/// then exits: the payload, what it detached and the reaper are gone, and the run is answered
/// at its timeout. Before, the reaper died of SIGKILL, the payload and its detached child ran
/// on, and loongctl waited for the request's deadline (the timeout + 30 s) for output that
/// never ended. Three runs: the reaper's clean-up once waited for any child after reaping a
/// killed one, and so for ever on that one's orphan, not yet killed (a race no test makes
/// certain). The positive control: the detached process was running before the kill.
#[test]
fn a_run_without_a_pid_namespace_killed_while_it_goes_leaves_no_process_behind() {
    let test = "a_run_without_a_pid_namespace_killed_while_it_goes_leaves_no_process_behind";
    let Some(home) = home_without_pid_namespaces(test) else {
        return;
    };
    let mut failures = Vec::new();
    for round in 0..3 {
        // Whole seconds, so that `sleep` takes them; long and distinct for this test process
        // and round, as every process whose command line holds one is killed below.
        let (detached, payload) = (
            format!("8197353{round}{}", std::process::id()),
            format!("8297353{round}{}", std::process::id()),
        );
        let script = format!(
            "echo REAPER $PPID; setsid sleep {detached} </dev/null >/dev/null 2>&1 & sleep 0.3; kill -0 $! && echo ALIVE; sleep {payload}"
        );
        let started = std::time::Instant::now();
        let out = home.ctl(&[
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--allow-degraded",
            "--timeout",
            "2",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ]);
        let took = started.elapsed();
        let stdout = text(&out.stdout);
        let reaper: Option<u32> = stdout
            .lines()
            .find_map(|l| l.strip_prefix("REAPER "))
            .and_then(|p| p.trim().parse().ok());
        let reaper_alive = |pid: u32| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("loong-spawn"))
        };
        // The kill is the helper's; the reaper's clean-up follows it within moments. What is
        // left is killed here before anything is judged, so a failure leaves nothing running.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let left = || {
            let mut left = pids_with(&detached);
            left.extend(pids_with(&payload));
            left.extend(reaper.filter(|p| reaper_alive(*p)));
            left
        };
        let mut remaining = left();
        while !remaining.is_empty() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(50));
            remaining = left();
        }
        kill_all(&remaining);
        let stderr = text(&out.stderr);
        if !stdout.contains("ALIVE") || reaper.is_none() {
            failures.push(format!(
                "round {round}: the detached process never ran: {stdout} {stderr}"
            ));
        }
        if !remaining.is_empty() {
            failures.push(format!(
                "round {round}: left behind after the kill (the reaper {reaper:?} among them?): {remaining:?}"
            ));
        }
        if !stderr.contains("killed at the --timeout") {
            failures.push(format!(
                "round {round}: not killed at its timeout: {stderr}"
            ));
        }
        if took > std::time::Duration::from_secs(20) {
            failures.push(format!(
                "round {round}: answered after {took:?}, not at its 2 s timeout"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn missing_mechanism_fails_closed_unless_degraded_is_asked() {
    let home = Home::new();
    home.start_env(&[("LOONG_SANDBOX_DISABLE", "landlock")]);
    let refused = home.ctl(&["sandbox", "run", "--tier", "restricted", "--", "/bin/true"]);
    assert_eq!(refused.status.code(), Some(6), "{}", text(&refused.stderr));
    let err = text(&refused.stderr);
    assert!(
        err.contains("tier restricted cannot be enforced on this host: landlock missing")
            && err.contains("--allow-degraded"),
        "{err}"
    );
    // Positive control: a tier that does not need landlock still runs.
    let trusted = home.ctl(&["sandbox", "run", "--tier", "trusted", "--", "/bin/true"]);
    assert_eq!(trusted.status.code(), Some(0), "{}", text(&trusted.stderr));
    // Asked for explicitly, degraded mode runs, says so, and is logged.
    let degraded = home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "restricted",
        "--allow-degraded",
        "--",
        "/bin/true",
    ]);
    assert_eq!(
        degraded.status.code(),
        Some(0),
        "{}",
        text(&degraded.stderr)
    );
    assert!(
        text(&degraded.stderr).contains("ran DEGRADED, without landlock"),
        "{}",
        text(&degraded.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(5), || home
            .log()
            .contains("sandbox started DEGRADED")),
        "{}",
        home.log()
    );
    // A network grant's boundary is the sandbox's own network namespace and loongd's egress
    // broker, not landlock: the same degraded run with --allow-net runs (degraded mode never
    // drops the namespace under a grant; the spec's unit test refuses that).
    let granted = home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--allow-degraded",
        "--allow-net",
        "127.0.0.1:9",
        "--",
        "/bin/true",
    ]);
    assert_eq!(granted.status.code(), Some(0), "{}", text(&granted.stderr));
    // doctor says the same, with exit 6.
    let doc = home.ctl(&["doctor", "--json"]);
    assert_eq!(doc.status.code(), Some(6));
    let v: serde_json::Value = serde_json::from_slice(&doc.stdout).expect("json");
    let mech = v["mechanisms"]
        .as_array()
        .expect("mechanisms")
        .iter()
        .find(|m| m["name"] == "landlock")
        .expect("landlock row");
    assert_eq!(mech["available"], false);
    assert!(mech["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("LOONG_SANDBOX_DISABLE"));
    let tier = |name: &str| {
        v["tiers"]
            .as_array()
            .expect("tiers")
            .iter()
            .find(|t| t["tier"] == name)
            .cloned()
            .expect("tier")
    };
    assert_eq!(tier("restricted")["enforceable"], false);
    assert_eq!(
        tier("restricted")["missing"],
        serde_json::json!(["landlock"])
    );
    assert_eq!(tier("trusted")["enforceable"], true);
}

#[test]
fn doctor_reports_every_mechanism_and_tier() {
    let home = Home::new();
    home.start();
    let out = home.ctl(&["doctor", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    let names: Vec<&str> = v["mechanisms"]
        .as_array()
        .expect("mechanisms")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    for n in [
        "landlock",
        "seccomp",
        "no_new_privs",
        "userns",
        "pidns",
        "mountns",
        "netns",
        "ipcns",
        "utsns",
        "cgroup",
        "pidfd",
        "procfs",
    ] {
        assert!(names.contains(&n), "doctor lacks {n}: {names:?}");
    }
    for m in v["mechanisms"].as_array().expect("mechanisms") {
        if m["available"] == false {
            assert!(
                m["fix"].is_string(),
                "a missing mechanism names its fix: {m}"
            );
        }
    }
    let all_ok = v["tiers"]
        .as_array()
        .expect("tiers")
        .iter()
        .all(|t| t["enforceable"] == true);
    assert_eq!(out.status.code(), Some(if all_ok { 0 } else { 6 }));
    if v["landlock_abi"].as_i64().unwrap_or(0) >= 6 && all_ok {
        // On this kernel the restricted tier runs with landlock at HardRequirement: a spawn
        // succeeding proves full enforcement (anything less refuses to start).
        let ok = home.ctl(&["sandbox", "run", "--tier", "restricted", "--", "/bin/true"]);
        assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    }
}

#[test]
fn setuid_binaries_do_not_elevate() {
    let Some(probe) = probe("setuid_binaries_do_not_elevate") else {
        return;
    };
    if !is_root() {
        skip(
            "setuid_binaries_do_not_elevate",
            "needs root to make a setuid-root binary",
        );
        return;
    }
    let home = Home::new();
    home.start();
    let dir = tempfile::Builder::new()
        .prefix("ls")
        .tempdir_in("/tmp")
        .expect("dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let suid = dir.path().join("suid-probe");
    fs::copy(&probe, &suid).expect("copy");
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).expect("setuid");
    // Positive control: run by nobody outside any sandbox, the setuid bit works.
    let control = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&suid)
        .arg("euid")
        .output()
        .expect("setpriv");
    assert_eq!(text(&control.stdout).trim(), "euid=0");
    for tier in ["restricted", "balanced", "trusted"] {
        let d = dir.path().display().to_string();
        let s = suid.display().to_string();
        let out = home.ctl(&[
            "sandbox", "run", "--tier", tier, "--read", &d, "--", &s, "euid",
        ]);
        assert_eq!(
            text(&out.stdout).trim(),
            "euid=65534",
            "{tier}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn bad_input_is_refused_and_nothing_spawns() {
    let home = Home::new();
    home.start();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--tier",
                "balanced",
                "--read",
                "/definitely/not/here",
                "--",
                "/bin/true",
            ],
            "--read /definitely/not/here: the path does not exist",
        ),
        (
            &["--tier", "medium", "--", "/bin/true"],
            "unknown tier `medium`: expected restricted, balanced or trusted",
        ),
        (
            &["--tier", "balanced", "--memory", "0", "--", "/bin/true"],
            "memory of 0 is not a limit",
        ),
        (
            &["--tier", "balanced", "--pids", "0", "--", "/bin/true"],
            "pids of 0 is not a limit",
        ),
        (
            &["--tier", "balanced", "--", "/no/such/program"],
            "program `/no/such/program` not found",
        ),
        (
            &["--tier", "balanced", "--", "no-such-program-anywhere"],
            "program `no-such-program-anywhere` not found",
        ),
        (
            &[
                "--tier",
                "balanced",
                "--read",
                "/etc",
                "--write",
                "/etc",
                "--",
                "/bin/true",
            ],
            "/etc is granted both --read and --write",
        ),
        (
            &[
                "--tier",
                "restricted",
                "--allow-net",
                "127.0.0.1:80",
                "--",
                "/bin/true",
            ],
            "the restricted tier has no network",
        ),
        (
            &[
                "--tier",
                "trusted",
                "--allow-net",
                "127.0.0.1:80",
                "--",
                "/bin/true",
            ],
            "the trusted tier has the host's whole network, which --allow-net cannot narrow",
        ),
        (
            &["--tier", "balanced", "--read", "/proc/1", "--", "/bin/true"],
            "/proc/1 is under /proc",
        ),
        (
            &["--tier", "balanced", "--write", "/", "--", "/bin/true"],
            "granting / defeats the sandbox",
        ),
        (
            &[
                "--tier",
                "balanced",
                "--allow-net",
                "example:0",
                "--",
                "/bin/true",
            ],
            "network grant `example:0`: `0` is not a port",
        ),
        (
            &[
                "--tier",
                "balanced",
                "--allow-net",
                "nocolon",
                "--",
                "/bin/true",
            ],
            "`nocolon` is not HOST:PORT",
        ),
        (
            &["--tier", "balanced", "--memory", "lots", "--", "/bin/true"],
            "--memory lots: expected a number of bytes",
        ),
        (
            &[
                "--tier",
                "balanced",
                "--env",
                "LOONG_TEST_SURELY_UNSET",
                "--",
                "/bin/true",
            ],
            "--env LOONG_TEST_SURELY_UNSET: not set",
        ),
    ];
    let home_str = home.path().display().to_string();
    for (args, want) in cases {
        let mut a = vec!["sandbox", "run"];
        a.extend_from_slice(args);
        let out = home.ctl(&a);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(want),
            "{args:?}: expected `{want}` in {}",
            text(&out.stderr)
        );
    }
    // A grant of loongd's own home is refused by the policy denylist before the sandbox's own
    // check (which stays as a second line) would see it.
    let own = home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--read",
        &home_str,
        "--",
        "/bin/true",
    ]);
    assert_eq!(own.status.code(), Some(4));
    assert!(
        text(&own.stderr).contains(&format!("path {home_str} is denylisted")),
        "{}",
        text(&own.stderr)
    );
    assert!(
        !home.log().contains("sandbox started"),
        "nothing may have been spawned:\n{}",
        home.log()
    );
    // Positive control: the same daemon runs a valid request.
    let ok = home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--read",
        "/etc",
        "--",
        "/bin/true",
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
}

#[test]
fn policy_check_reports_every_problem_at_once() {
    let home = Home::new();
    home.start();
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.toml");
    fs::write(&bad, "tier = \"balanced\"\nsurprise = 1\n[seccomp]\nmode = \"maybe\"\nsyscalls = [ { name = \"nosuchcall\", why = \"x\" } ]\n").expect("write");
    let out = home.ctl(&["policy", "check", &bad.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    let f = bad.display().to_string();
    for want in [
        format!("{f}:2: surprise: unknown key"),
        format!("{f}:4: seccomp.mode: expected \"allowlist\" or \"denylist\""),
        format!("{f}:5: seccomp.syscalls[0].name: `nosuchcall` is not a known x86_64 syscall"),
    ] {
        assert!(report.contains(&want), "missing `{want}` in:\n{report}");
    }
    // Positive control: the bundled profiles check clean.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root")
        .join("policy-profiles/tiers");
    for t in ["restricted", "balanced", "trusted"] {
        let p = root.join(format!("{t}.toml")).display().to_string();
        let ok = home.ctl(&["policy", "check", &p]);
        assert_eq!(ok.status.code(), Some(0), "{t}: {}", text(&ok.stdout));
    }
}

#[test]
fn sandboxes_sharing_a_network_namespace_cannot_reach_each_other() {
    let Some(probe) = probe("sandboxes_sharing_a_network_namespace_cannot_reach_each_other") else {
        return;
    };
    let home = Home::new();
    home.start();
    let name = format!("loong-shared-{}", std::process::id());
    let p = probe.display().to_string();
    let mut listener = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args([
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--",
            &p,
            "abstract-listen",
            &name,
            "20",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("listener");
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(listener.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "listening");
    for tier in ["restricted", "balanced"] {
        let out = home.ctl(&[
            "sandbox",
            "run",
            "--tier",
            tier,
            "--",
            &p,
            "abstract-connect",
            &name,
        ]);
        let want = if tier == "restricted" {
            (Some(159), "")
        } else {
            (Some(0), "EPERM")
        };
        assert_eq!(
            (out.status.code(), text(&out.stdout).trim()),
            want,
            "{tier}: {}",
            text(&out.stderr)
        );
    }
    // Positive control: inside one sandbox, abstract sockets work.
    let own = home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--",
        &p,
        "abstract-self",
        &format!("{name}-self"),
    ]);
    assert_eq!(text(&own.stdout).trim(), "ok", "{}", text(&own.stderr));
    let _ = listener.kill();
    let _ = listener.wait();
}

#[test]
fn a_home_reached_through_a_symlink_overlaps_a_grant_of_its_real_path() {
    // loongd's own paths are compared with a grant as the grant is, resolved: a home named
    // through a symlinked directory is still loongd's state at its real path.
    let base = tempfile::Builder::new()
        .prefix("lhs")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let base_real = base.path().canonicalize().expect("real path");
    let (real, other) = (base_real.join("real"), base_real.join("other"));
    fs::create_dir(&real).expect("real");
    fs::create_dir(&other).expect("other");
    std::os::unix::fs::symlink(&real, base_real.join("link")).expect("link");
    let home = base_real.join("link/home");
    let ctl = |args: &[&str]| {
        Command::new(bin("loongctl"))
            .arg("--home")
            .arg(&home)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run loongctl")
    };
    let started = ctl(&["daemon", "start"]);
    assert!(started.status.success(), "{}", text(&started.stderr));
    let run = |grant: &Path| {
        let out = ctl(&[
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--read",
            &grant.display().to_string(),
            "--",
            "/usr/bin/true",
        ]);
        (out.status.code(), text(&out.stderr))
    };
    // The control: a directory beside it is granted. (Both run before any assertion, so
    // the daemon is stopped whatever they show.)
    let ((code, stderr), control) = (run(&real), run(&other));
    let stopped = ctl(&["daemon", "stop"]);
    assert!(
        code != Some(0) && stderr.contains("overlaps loongd's own state"),
        "{code:?} {stderr}"
    );
    assert_eq!(control.0, Some(0), "{}", control.1);
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
}

#[test]
fn a_variable_that_changes_what_runs_is_not_passed_in() {
    let home = Home::new();
    home.start();
    let run = |name: &str, value: &str| {
        home.ctl_env(
            &[
                "sandbox",
                "run",
                "--tier",
                "balanced",
                "--env",
                name,
                "--",
                "/bin/sh",
                "-c",
                "echo \"[$LD_PRELOAD][$LOONG_TEST_PASSED]\"",
            ],
            &[(name, value)],
        )
    };
    // Positive control: another variable is passed in.
    let out = run("LOONG_TEST_PASSED", "yes");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("[][yes]"),
        "{}",
        text(&out.stdout)
    );
    // The dynamic loader's, and the search path's: what runs would not be what was decided.
    for (name, value) in [
        ("LD_PRELOAD", "/nonexistent/x.so"),
        ("PATH", "/tmp"),
        ("BASH_ENV", "/tmp/x"),
    ] {
        let out = run(name, value);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{name}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(&format!(
                "--env {name}: a variable that changes which program runs"
            )),
            "{name}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stdout).contains("[/nonexistent"), "{name}");
    }
    // The refusal is audited with the names asked for (never their values).
    let out = home.ctl(&["audit", "recent", "--kind", "sandbox.refused", "--json"]);
    let records = text(&out.stdout);
    assert!(
        records.contains("LD_PRELOAD") && !records.contains("/nonexistent/x.so"),
        "{records}"
    );
}

/// A run's payload holds its stdio and nothing else: the gate it waited on before its
/// `execve` and the egress socket (a network grant) are closed by then, under each tier. The
/// control: a descriptor the program opens itself is listed.
#[test]
fn a_run_s_payload_holds_neither_its_gate_nor_the_egress_socket() {
    let home = Home::new();
    home.start();
    let fds = |args: &[&str], script: &str| -> Vec<String> {
        let mut all = vec!["sandbox", "run"];
        all.extend_from_slice(args);
        all.extend(["--", "/bin/sh", "-c", script]);
        let out = home.ctl(&all);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let listed = "exec 7</dev/null; ls /proc/self/fd";
    assert!(
        fds(&["--tier", "trusted"], listed).contains(&"7".to_string()),
        "the control's own descriptor is not listed"
    );
    for args in [
        &["--tier", "trusted"][..],
        &["--tier", "balanced"][..],
        &["--tier", "balanced", "--allow-net", "127.0.0.1:9"][..],
    ] {
        // ls's own directory descriptor is the lowest free one: 3.
        assert_eq!(
            fds(args, "ls /proc/self/fd"),
            ["0", "1", "2", "3"],
            "{args:?}"
        );
    }
}

/// A run's payload starts with no signal blocked and none caught (balanced and trusted; the
/// restricted tier may not read `/proc`): the
/// reaper blocks every signal before it starts the payload (which shares its memory until
/// its `execve`), and the payload resets the reaper's handlers and takes the reaper's mask
/// back before it runs anything of the plan. The control: the fields are read (a program
/// that blocks nothing shows the mask as zeros, not as nothing).
#[test]
fn a_run_s_payload_starts_with_no_signal_blocked_or_caught() {
    let home = Home::new();
    home.start();
    for tier in ["balanced", "trusted"] {
        let out = home.ctl(&[
            "sandbox",
            "run",
            "--tier",
            tier,
            "--",
            "/bin/cat",
            "/proc/self/status",
        ]);
        assert!(out.status.success(), "{tier}: {}", text(&out.stderr));
        let status = text(&out.stdout);
        for field in ["SigBlk:", "SigCgt:"] {
            let value = status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .map(str::trim)
                .unwrap_or_else(|| panic!("{tier}: no {field} in {status}"));
            assert_eq!(value, "0000000000000000", "{tier}: {field}");
        }
    }
}

/// A balanced run's root holds what its plan put there and nothing of how it was built: the
/// old root's mount point is gone (it was removed, not only detached), no mount lies at or
/// below it, and the root's own tmpfs is read-only, where its private `/tmp` takes a write
/// (the control, with the system paths the plan binds listed in its mount table).
#[test]
fn a_balanced_root_keeps_no_trace_of_the_old_root() {
    let home = Home::new();
    home.start();
    // `/` itself is not readable under landlock: names are looked up, not listed.
    let script = "for n in usr tmp oldroot; do test -e /$n && echo $n; done; echo MOUNTS; cut -d' ' -f5 /proc/self/mountinfo; echo WRITES; \
                  (echo x > /x) 2>/dev/null && echo root-written; \
                  echo y > /tmp/y && cat /tmp/y";
    let out = home.ctl(&[
        "sandbox", "run", "--tier", "balanced", "--", "/bin/sh", "-c", script,
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    let (listing, rest) = stdout.split_once("MOUNTS").expect("listing");
    let (mounts, writes) = rest.split_once("WRITES").expect("mounts");
    let names: Vec<&str> = listing.split_whitespace().collect();
    let points: Vec<&str> = mounts.split_whitespace().collect();
    // Controls: the root lists the plan's paths and its mount table the system binds.
    assert!(
        names.contains(&"usr") && names.contains(&"tmp"),
        "{names:?}"
    );
    assert!(
        points.contains(&"/usr") && points.contains(&"/proc"),
        "{points:?}"
    );
    assert!(!names.contains(&"oldroot"), "{names:?}");
    assert!(
        !points.iter().any(|p| p.starts_with("/oldroot")),
        "{points:?}"
    );
    assert_eq!(
        writes.split_whitespace().collect::<Vec<_>>(),
        ["y"],
        "the root tmpfs took a write, or /tmp did not"
    );
}

/// A grant's bind is recursive, so a mount below the granted directory on the host (a tmpfs
/// here, writable by every uid) comes into the sandbox too: under a read-only grant it is
/// read-only, `nosuid` and `nodev` like the grant itself, where a writable grant of the same
/// directory writes through to it (the control). (The trusted tier binds the host's root
/// whole, its mounts with their own flags, and no grant.)
#[test]
fn a_mount_below_a_read_only_grant_is_read_only_too() {
    let host = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(host.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let sub = host.path().join("sub");
    fs::create_dir(&sub).expect("sub");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=1777,size=65536", "tmpfs"])
        .arg(&sub)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        skip(
            "a_mount_below_a_read_only_grant_is_read_only_too",
            "cannot mount a tmpfs (not root)",
        );
        return;
    }
    let home = Home::new();
    home.start();
    let dir = host.path().display().to_string();
    let script = format!(
        "grep ' {dir}/sub ' /proc/self/mountinfo | cut -d' ' -f6; \
         (echo x > {dir}/sub/x) 2>/dev/null && echo WROTE; true"
    );
    let run = |tier: &str, grant: &str| {
        let out = home.ctl(&[
            "sandbox", "run", "--tier", tier, grant, &dir, "--", "/bin/sh", "-c", &script,
        ]);
        let _ = fs::remove_file(sub.join("x"));
        (text(&out.stdout), text(&out.stderr))
    };
    let results: Vec<_> = [("balanced", "--read"), ("balanced", "--write")]
        .iter()
        .map(|&(tier, grant)| (tier, grant, run(tier, grant)))
        .collect();
    let _ = Command::new("umount").arg(&sub).status();
    for (tier, grant, (stdout, stderr)) in results {
        let opts: Vec<&str> = stdout
            .lines()
            .next()
            .unwrap_or_default()
            .split(',')
            .collect();
        assert!(
            opts.contains(&"nosuid") && opts.contains(&"nodev"),
            "{tier} {grant}: {stdout} {stderr}"
        );
        if grant == "--read" {
            assert!(opts.contains(&"ro"), "{tier}: {stdout} {stderr}");
            assert!(!stdout.contains("WROTE"), "{tier}: {stdout}");
        } else {
            // The control: a writable grant writes through to the mount below it.
            assert!(
                stdout.contains("WROTE"),
                "{tier} {grant}: {stdout} {stderr}"
            );
        }
    }
}

/// A run's mounts are its own from the moment its root is built: a mount made on the host
/// below a granted directory (a shared mount on the host) while the run is under way does not
/// appear inside (the sandbox's mounts are private, so nothing propagates in, writable or
/// not). The control: the same mount, made before the next run, is bound with the grant.
#[test]
fn a_host_mount_made_during_a_run_does_not_appear_inside() {
    let host = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    for d in [host.path(), work.path()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let sub = host.path().join("sub");
    fs::create_dir(&sub).expect("sub");
    let mount = || {
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=1777,size=65536", "tmpfs"])
            .arg(&sub)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !is_root() {
        skip(
            "a_host_mount_made_during_a_run_does_not_appear_inside",
            "cannot mount a tmpfs (not root)",
        );
        return;
    }
    // The granted directory is a shared mount on the host, so a mount below it propagates to
    // every copy that stayed its peer or slave: only the sandbox's own private mounts keep
    // it out.
    let shared = Command::new("mount")
        .arg("--bind")
        .arg(host.path())
        .arg(host.path())
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("mount")
            .arg("--make-shared")
            .arg(host.path())
            .status()
            .is_ok_and(|s| s.success());
    let home = Home::new();
    home.start();
    let (dir, w) = (
        host.path().display().to_string(),
        work.path().display().to_string(),
    );
    let script = format!(
        "touch {w}/ready; i=0; while [ ! -e {dir}/go ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; \
         test -e {dir}/go && echo GO; grep -c ' {dir}/sub ' /proc/self/mountinfo; ls {dir}/sub; \
         (echo x > {dir}/sub/x) 2>/dev/null && echo WROTE; true"
    );
    let args = [
        "sandbox", "run", "--tier", "balanced", "--read", &dir, "--write", &w, "--", "/bin/sh",
        "-c", &script,
    ];
    let child = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run loongctl");
    let ready = wait_until(Duration::from_secs(20), || {
        work.path().join("ready").exists()
    });
    let mounted = ready && mount();
    if mounted {
        fs::write(sub.join("marker"), "m").expect("marker");
    }
    fs::write(host.path().join("go"), "").expect("go");
    let during = child.wait_with_output().expect("wait");
    let (stdout, stderr) = (text(&during.stdout), text(&during.stderr));
    // The control: the mount is there before this run starts.
    let before = home.ctl(&args);
    let _ = Command::new("umount").arg(&sub).status();
    let _ = Command::new("umount").arg(host.path()).status();
    assert!(shared && ready && mounted, "{stdout} {stderr}");
    assert_eq!(
        stdout.split_whitespace().collect::<Vec<_>>(),
        ["GO", "0"],
        "a host mount made during the run appeared inside: {stderr}"
    );
    let control = text(&before.stdout);
    assert_eq!(
        control.split_whitespace().collect::<Vec<_>>(),
        ["GO", "1", "marker"],
        "{}",
        text(&before.stderr)
    );
}

/// A program path is bound into the sandbox as the kernel resolves it or not at all: a `..`
/// in it (`DIR/private/../tool`, which names `DIR/tool`) must not bind `DIR/private/tool`, a
/// file the caller never named, from behind a directory the sandbox uid cannot search (the
/// helper, root, can), where the private `/tmp` would let the run read it. The control: the
/// same program named plainly runs and reads nothing of the private directory.
#[test]
fn a_dotdot_in_the_program_path_binds_nothing_it_does_not_name() {
    if !is_root() {
        skip(
            "a_dotdot_in_the_program_path_binds_nothing_it_does_not_name",
            "the private directory is only private to a uid other than the helper's",
        );
        return;
    }
    let top = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(top.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let private = top.path().join("private");
    fs::create_dir(&private).expect("private");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).expect("chmod");
    let secret = private.join("tool");
    fs::write(&secret, "SECRET\n").expect("secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).expect("chmod");
    let tool = top.path().join("tool");
    fs::write(
        &tool,
        format!("#!/bin/sh\necho RAN; cat {} 2>&1\n", secret.display()),
    )
    .expect("tool");
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).expect("chmod");
    let home = Home::new();
    home.start();
    let tool_s = tool.display().to_string();
    let dotted = format!("{}/private/../tool", top.path().display());
    let run = |program: &str| {
        let out = home.ctl(&[
            "sandbox", "run", "--tier", "balanced", "--read", &tool_s, "--", program,
        ]);
        (text(&out.stdout), text(&out.stderr))
    };
    let (plain, plain_err) = run(&tool_s);
    assert!(plain.contains("RAN"), "{plain} {plain_err}");
    assert!(!plain.contains("SECRET"), "{plain}");
    let (stdout, stderr) = run(&dotted);
    assert!(
        !stdout.contains("SECRET"),
        "a file behind the private directory was bound in: {stdout} {stderr}"
    );
    assert!(stderr.contains("`..` is not allowed"), "{stdout} {stderr}");
}
