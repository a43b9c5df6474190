//! The audit trail seen through loongctl: what loongd records, verification that names the
//! first bad record, and durability under `kill -9`.

use std::{
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::support::{bin, text, wait_until, Home, Raw};

fn recent(home: &Home, kind: &str) -> Vec<serde_json::Value> {
    let out = home.ctl(&[
        "audit", "recent", "--kind", kind, "--limit", "1000", "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn loongd_records_what_it_does_and_verify_names_the_first_bad_record() {
    let home = Home::new();
    home.start_env(&[("LOONG_SANDBOX_DISABLE", "landlock")]);
    // A run, a degraded run, a refusal and a protocol violation.
    assert!(home
        .ctl(&[
            "sandbox",
            "run",
            "--tier",
            "trusted",
            "--",
            "/bin/echo",
            "audited"
        ])
        .status
        .success());
    assert!(home
        .ctl(&[
            "sandbox",
            "run",
            "--tier",
            "restricted",
            "--allow-degraded",
            "--",
            "/bin/true"
        ])
        .status
        .success());
    assert_eq!(
        home.ctl(&["sandbox", "run", "--tier", "restricted", "--", "/bin/true"])
            .status
            .code(),
        Some(6)
    );
    let mut raw = Raw::connect(&home.socket());
    raw.send_bytes(&u32::MAX.to_le_bytes()).expect("send");
    assert!(raw.closed_by_peer());
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    home.start();

    let started = recent(&home, "daemon.started");
    assert_eq!(started.len(), 2, "{started:?}");
    assert_eq!(recent(&home, "daemon.stopped").len(), 1);
    let spawned = recent(&home, "sandbox.spawned");
    assert_eq!(spawned.len(), 2);
    let echo = spawned
        .iter()
        .find(|r| r["detail"]["request"]["args"] == serde_json::json!(["audited"]))
        .expect("the echo run");
    assert_eq!(
        echo["actor"],
        format!("uid:{}", nix::unistd::Uid::effective().as_raw())
    );
    let exited = recent(&home, "sandbox.exited");
    assert!(
        exited
            .iter()
            .any(|r| r["correlation"] == echo["correlation"] && r["detail"]["code"] == 0),
        "{exited:?}"
    );
    let degraded = recent(&home, "sandbox.degraded");
    assert_eq!(degraded.len(), 1);
    assert_eq!(
        degraded[0]["detail"]["missing"],
        serde_json::json!(["landlock"])
    );
    let refused = recent(&home, "sandbox.refused");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["detail"]["class"], "sandbox unavailable");
    assert!(wait_until(Duration::from_secs(5), || !recent(
        &home,
        "protocol.violation"
    )
    .is_empty()));
    let unknown = home.ctl(&["audit", "recent", "--kind", "no.such.kind"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("unknown audit kind `no.such.kind`"));

    // Untouched, the trail verifies, with the checkpoint signed at the clean stop.
    let ok = home.ctl(&["audit", "verify", "--json"]);
    assert!(ok.status.success(), "{}", text(&ok.stdout));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("json");
    assert_eq!(v["ok"], true);
    assert!(v["checkpoints"].as_u64() >= Some(1), "{v}");
    // Change one stored record behind loongd's back: verify fails and names it.
    let db = rusqlite::Connection::open(home.path().join("audit.db")).expect("db");
    db.execute("UPDATE audit SET detail = '{}' WHERE seq = 3", [])
        .expect("tamper");
    let bad = home.ctl(&["audit", "verify"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stdout).contains("audit trail BROKEN at record 3"),
        "{}",
        text(&bad.stdout)
    );
}

#[test]
fn acknowledged_runs_survive_kill_9() {
    let home = Arc::new(Home::new());
    let pid = home.start();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for c in 0..3 {
        let (home, stop, acked) = (home.clone(), stop.clone(), acked.clone());
        clients.push(std::thread::spawn(move || {
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let marker = format!("m-{c}-{n}");
                let out = Command::new(bin("loongctl"))
                    .arg("--home")
                    .arg(home.path())
                    .args([
                        "sandbox",
                        "run",
                        "--tier",
                        "trusted",
                        "--",
                        "/bin/echo",
                        &marker,
                    ])
                    .stdin(Stdio::null())
                    .output()
                    .expect("loongctl");
                if out.status.success() && text(&out.stdout).trim() == marker {
                    acked.lock().expect("lock").push(marker);
                } else {
                    return; // the daemon is gone
                }
            }
        }));
    }
    assert!(
        wait_until(Duration::from_secs(20), || acked
            .lock()
            .expect("lock")
            .len()
            >= 30),
        "runs did not get going"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    home.start();
    let ok = home.ctl(&["audit", "verify", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("json");
    assert_eq!(v["ok"], true, "{v}");
    let spawned = recent(&home, "sandbox.spawned");
    let exited = recent(&home, "sandbox.exited");
    let acked = acked.lock().expect("lock").clone();
    for marker in &acked {
        let s = spawned
            .iter()
            .find(|r| r["detail"]["request"]["args"] == serde_json::json!([marker]))
            .unwrap_or_else(|| panic!("acknowledged run {marker} has no spawned record"));
        assert!(
            exited.iter().any(|e| e["correlation"] == s["correlation"]),
            "acknowledged run {marker} has no exited record"
        );
    }
    assert!(acked.len() >= 30, "only {} runs acknowledged", acked.len());
}

#[test]
fn siem_lanes_get_every_record_and_fail_closed_refuses_the_effect() {
    let dir = tempfile::Builder::new()
        .prefix("ls")
        .tempdir_in("/tmp")
        .expect("dir");
    let jsonl = dir.path().join("audit.jsonl");
    let sock_path = dir.path().join("log.sock");
    let syslog = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("syslog socket");
    syslog.set_nonblocking(true).expect("nonblocking");
    let config = format!(
        "[audit]\njsonl_file = \"{}\"\njsonl_failure = \"closed\"\nsyslog = true\nsyslog_socket = \"{}\"\n",
        jsonl.display(),
        sock_path.display()
    );
    let home = Home::with_config(&config);
    home.start();
    assert!(home
        .ctl(&["sandbox", "run", "--tier", "trusted", "--", "/bin/true"])
        .status
        .success());
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    // The JSONL file holds exactly the trail, line for line.
    home.start();
    let export = text(&home.ctl(&["audit", "export", "--format", "jsonl"]).stdout);
    let exported: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let shipped: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .expect("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(shipped.len() >= 5, "{shipped:?}");
    for (s, e) in shipped.iter().zip(&exported) {
        assert_eq!(
            (&s["seq"], &s["hash"], &s["kind"]),
            (&e["seq"], &e["hash"], &e["kind"])
        );
    }
    // Syslog got an RFC 5424 message per record.
    let mut buf = [0u8; 65536];
    let mut messages = Vec::new();
    while let Ok(n) = syslog.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        messages.len() >= shipped.len(),
        "{} syslog messages for {} records",
        messages.len(),
        shipped.len()
    );
    assert!(
        messages.iter().all(|m| m.starts_with("<86>1 - - loongd ")),
        "{messages:?}"
    );
    assert!(messages
        .iter()
        .any(|m| m.contains("\"kind\":\"sandbox.exited\"")));
    assert!(home.ctl(&["daemon", "stop"]).status.success());

    // Fail-closed: a JSONL lane that cannot be written refuses what it would record (here
    // loongd's own start); fail-open lets it proceed.
    let unwritable =
        "[audit]\njsonl_file = \"/nonexistent-dir/audit.jsonl\"\njsonl_failure = \"closed\"\n";
    let closed = Home::with_config(unwritable);
    let out = closed.ctl(&["daemon", "start"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("audit JSONL lane /nonexistent-dir/audit.jsonl"),
        "{}",
        text(&out.stderr)
    );
    let open = Home::with_config(&unwritable.replace("closed", "open"));
    open.start();
    assert!(open
        .ctl(&["sandbox", "run", "--tier", "trusted", "--", "/bin/true"])
        .status
        .success());
}

/// sha256 of `s`, hex (by `sha256sum`, independent of loongd's code).
fn sha256_hex(s: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), s.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    text(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

#[test]
fn a_padded_operator_run_keeps_who_asked_and_what_was_decided_in_every_lane() {
    let dir = tempfile::Builder::new()
        .prefix("lb")
        .tempdir_in("/tmp")
        .expect("dir");
    let jsonl = dir.path().join("audit.jsonl");
    let home = Home::with_config(&format!("[audit]\njsonl_file = \"{}\"\n", jsonl.display()));
    home.start();
    let padded = format!("marker{}", " ".repeat(17_000));
    let out = home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "trusted",
        "--",
        "/bin/echo",
        &padded,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let uid = format!("uid:{}", nix::unistd::Uid::effective().as_raw());
    let check_arg = |arg: &serde_json::Value| {
        assert_eq!(arg["truncated"], true, "{arg}");
        assert_eq!(arg["bytes"], padded.len(), "{arg}");
        assert_eq!(arg["sha256"], sha256_hex(&padded), "{arg}");
        assert!(
            arg["head"]
                .as_str()
                .is_some_and(|h| h.starts_with("marker")),
            "{arg}"
        );
    };
    let spawned = recent(&home, "sandbox.spawned");
    assert_eq!(spawned.len(), 1, "{spawned:?}");
    let s = &spawned[0];
    assert_eq!(s["actor"], uid);
    assert_eq!(s["detail"]["request"]["tier"], "trusted");
    assert_eq!(s["detail"]["request"]["program"], "/bin/echo");
    assert!(s["detail"]["pid"].as_u64().is_some(), "{s}");
    check_arg(&s["detail"]["request"]["args"][0]);
    let decisions: Vec<_> = recent(&home, "policy.decision")
        .into_iter()
        .filter(|r| r["correlation"] == s["correlation"])
        .collect();
    assert!(!decisions.is_empty(), "no decision for the run");
    for d in &decisions {
        assert_eq!(d["actor"], uid);
        assert_eq!(d["detail"]["allowed"], true, "{d}");
        assert!(d["detail"]["capability"].as_str().is_some(), "{d}");
        assert!(d["detail"].get("truncated").is_none(), "{d}");
    }
    let exec = decisions
        .iter()
        .find(|d| d["detail"]["capability"] == "process.exec")
        .expect("the process.exec decision");
    assert_eq!(exec["detail"]["target"], "echo", "{exec}");
    assert_eq!(exec["detail"]["argv"][0], "/bin/echo", "{exec}");
    check_arg(&exec["detail"]["argv"][1]);
    // The JSONL lane ships the same bounded record.
    let shipped: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .expect("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let lane = shipped
        .iter()
        .find(|r| r["kind"] == "sandbox.spawned")
        .expect("shipped");
    assert_eq!(lane["detail"], s["detail"]);
}
