//! The audit trail seen through loongctl: what loongd records, verification that names the
//! first bad record, durability under `kill -9`, tampered trails that stop loongd's start
//! (truncated, cut back, rechained), the witness, calls closed after a crash, and details
//! bounded field by field.

use std::{
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::support::{bin, text, wait_until, Home, Raw};

pub(crate) fn recent(home: &Home, kind: &str) -> Vec<serde_json::Value> {
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

/// `sandbox run` builds the sandbox while its decision commits, but the payload waits on a
/// gate that opens only once the decision is recorded: when the record cannot be committed
/// (here a fail-closed syslog lane whose receiver went away), the run is refused and the
/// program never runs. The control: the same run while the lane is up runs.
#[test]
fn a_run_whose_decision_cannot_be_recorded_never_runs_its_program() {
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
    let sock_path = dir.path().join("log.sock");
    let syslog = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("syslog socket");
    syslog
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !stop.load(Ordering::SeqCst) {
                let _ = syslog.recv(&mut buf);
            }
        })
    };
    let config = format!(
        "[audit]\nsyslog = true\nsyslog_socket = \"{}\"\nsyslog_failure = \"closed\"\n",
        sock_path.display()
    );
    let home = Home::with_config(&config);
    home.start();
    let run = |mark: &str| {
        home.ctl(&[
            "sandbox",
            "run",
            "--tier",
            "trusted",
            "--",
            "/bin/sh",
            "-c",
            &format!("echo ran > {}", marks.join(mark).display()),
        ])
    };
    // The control: with the lane up, the run is recorded and runs.
    let out = run("up");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(marks.join("up").exists(), "the control run did not run");
    // The lane's receiver goes: every commit now fails closed.
    stop.store(true, Ordering::SeqCst);
    reader.join().expect("syslog reader");
    std::fs::remove_file(&sock_path).expect("remove the syslog socket");
    let out = run("down");
    assert!(
        !out.status.success(),
        "a run whose decision failed to commit succeeded"
    );
    assert!(
        text(&out.stderr).contains("syslog"),
        "{}",
        text(&out.stderr)
    );
    // A payload let through would have written its mark at once; give it time to.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !marks.join("down").exists(),
        "the program ran although its decision was not recorded"
    );
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
    // A syslog daemon reads as messages come (a datagram queue holds only a few), until the
    // test has what it needs.
    syslog
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .expect("timeout");
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut messages = Vec::new();
        while let Ok(n) = syslog.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        messages
    });
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
    // (Checkpoint lines are shipped between them.)
    let shipped: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .expect("jsonl")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|l| l.get("checkpoint").is_none())
        .collect();
    assert!(shipped.len() >= 5, "{shipped:?}");
    for (s, e) in shipped.iter().zip(&exported) {
        assert_eq!(
            (&s["seq"], &s["hash"], &s["kind"]),
            (&e["seq"], &e["hash"], &e["kind"])
        );
    }
    // Syslog got an RFC 5424 message per record.
    let messages = reader.join().expect("syslog reader");
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
    // The signed checkpoint of the clean stop went to syslog too.
    assert!(
        messages.iter().any(|m| m.contains("{\"checkpoint\":{")),
        "{messages:?}"
    );
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

/// sha256 of `s`, hex.
fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
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

/// The stored trail of a stopped daemon's home.
fn db(home: &Home) -> rusqlite::Connection {
    rusqlite::Connection::open(home.path().join("audit.db")).expect("db")
}

/// The sequence numbers of the records of `kind`, oldest first.
fn seqs(c: &rusqlite::Connection, kind: &str) -> Vec<i64> {
    let mut stmt = c
        .prepare("SELECT seq FROM audit WHERE kind = ?1 ORDER BY seq")
        .expect("query");
    stmt.query_map([kind], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("seqs")
}

/// A home with two clean runs (each with a sandbox run), stopped, and the sequence numbers
/// of its two `daemon.stopped` records. Untouched, it verifies (the positive control).
fn two_runs(config: &str) -> (Home, i64, i64) {
    let home = Home::with_config(config);
    for _ in 0..2 {
        home.start();
        assert!(home
            .ctl(&["sandbox", "run", "--tier", "trusted", "--", "/bin/true"])
            .status
            .success());
        let ok = home.ctl(&["audit", "verify", "--json"]);
        assert!(ok.status.success(), "{}", text(&ok.stdout));
        assert!(home.ctl(&["daemon", "stop"]).status.success());
    }
    let stops = seqs(&db(&home), "daemon.stopped");
    assert_eq!(stops.len(), 2);
    (home, stops[0], stops[1])
}

/// `sha256(prev ‖ canonical)` of record `seq` as it is stored (format v1).
fn chain(c: &rusqlite::Connection, prev: &[u8], seq: i64) -> Vec<u8> {
    use sha2::Digest;
    let (t, fields): (i64, [String; 4]) = c
        .query_row(
            "SELECT time_ms, kind, actor, correlation, detail FROM audit WHERE seq = ?1",
            [seq],
            |r| Ok((r.get(0)?, [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?])),
        )
        .expect("row");
    let mut v = b"loong-audit-v1\0".to_vec();
    v.extend_from_slice(&(seq as u64).to_be_bytes());
    v.extend_from_slice(&t.to_be_bytes());
    for f in &fields {
        v.extend_from_slice(&(f.len() as u32).to_be_bytes());
        v.extend_from_slice(f.as_bytes());
    }
    let mut h = sha2::Sha256::new();
    h.update(prev);
    h.update(&v);
    h.finalize().to_vec()
}

/// Recomputes every link and hash from `from` to the head, as a careful forger would.
fn rechain(c: &rusqlite::Connection, from: i64) {
    let head: i64 = c
        .query_row("SELECT MAX(seq) FROM audit", [], |r| r.get(0))
        .expect("head");
    let mut prev: Vec<u8> = c
        .query_row("SELECT hash FROM audit WHERE seq = ?1", [from - 1], |r| {
            r.get(0)
        })
        .unwrap_or_else(|_| vec![0u8; 32]);
    for seq in from..=head {
        let h = chain(c, &prev, seq);
        c.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![prev, h, seq],
        )
        .expect("rewrite");
        prev = h;
    }
}

/// `daemon start` must fail, naming `seq` as the first bad record and `why`.
fn refused_at(home: &Home, seq: i64, why: &str) {
    let out = home.ctl(&["daemon", "start"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "the audit trail fails verification at record {seq}:"
        )),
        "{err}"
    );
    assert!(err.contains(why), "{err}");
}

#[test]
fn newest_records_deleted_with_their_checkpoints_stop_the_start_until_the_operator_overrides() {
    let (home, _, s2) = two_runs("");
    let c = db(&home);
    let cut = s2 - 3;
    c.execute("DELETE FROM audit WHERE seq > ?1", [cut])
        .expect("tamper");
    c.execute("DELETE FROM checkpoints WHERE seq > ?1", [cut])
        .expect("tamper");
    refused_at(
        &home,
        s2,
        &format!("but the database ends at record {cut} (the trail was truncated)"),
    );
    // The override starts it, and the trail says what was accepted.
    let out = home.ctl(&["daemon", "start", "--accept-audit-integrity-failure"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let failed = recent(&home, "audit.integrity_failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["detail"]["first_bad_seq"], s2);
    assert!(failed[0]["detail"]["problem"]
        .as_str()
        .is_some_and(|p| p.contains("truncated")));
    // The cut run looks unstopped, so the start also records the unclean stop.
    assert_eq!(recent(&home, "daemon.unclean_stop").len(), 1);
    let v = home.ctl(&["audit", "verify", "--json"]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v.stdout));
    // A run that then stops cleanly is signed and witnessed: the next start needs no override.
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    home.start();
}

#[test]
fn a_trail_cut_back_to_an_older_checkpoint_is_refused_by_the_witness() {
    let (home, s1, s2) = two_runs("");
    let c = db(&home);
    c.execute("DELETE FROM audit WHERE seq > ?1", [s1])
        .expect("tamper");
    c.execute("DELETE FROM checkpoints WHERE seq > ?1", [s1])
        .expect("tamper");
    refused_at(
        &home,
        s2,
        &format!("the witness file holds a signed checkpoint at record {s2}, but the database ends at record {s1}"),
    );
}

#[test]
fn a_rewritten_and_rechained_span_with_its_checkpoints_deleted_is_refused() {
    let (home, s1, _) = two_runs("");
    let c = db(&home);
    c.execute(
        "UPDATE audit SET detail = '{\"forged\":true}' WHERE seq = ?1",
        [s1 + 3],
    )
    .expect("tamper");
    rechain(&c, s1 + 3);
    c.execute("DELETE FROM checkpoints WHERE seq > ?1", [s1])
        .expect("tamper");
    // The second run's first records lost the checkpoint loongd signs at every run's start.
    refused_at(
        &home,
        s1 + 1,
        "records follow a clean stop that no signed checkpoint covers",
    );
}

#[test]
fn a_middle_record_deleted_renumbered_and_rechained_without_checkpoints_is_refused() {
    let (home, _, _) = two_runs("");
    let c = db(&home);
    c.execute("DELETE FROM audit WHERE seq = 3", [])
        .expect("tamper");
    let head: i64 = c
        .query_row("SELECT MAX(seq) FROM audit", [], |r| r.get(0))
        .expect("head");
    for seq in 4..=head {
        c.execute("UPDATE audit SET seq = ?1 WHERE seq = ?2", [seq - 1, seq])
            .expect("renumber");
    }
    rechain(&c, 3);
    c.execute("DELETE FROM checkpoints", []).expect("tamper");
    let start = seqs(&c, "daemon.started")[0];
    refused_at(&home, start, "no signed checkpoint covers the start");
}

#[test]
fn a_run_appended_after_the_witnessed_clean_stop_is_refused() {
    let (home, _, s2) = two_runs("");
    let c = db(&home);
    // A forged run, chained correctly after the signed and witnessed stop: its start cannot
    // carry loongd's checkpoint.
    c.execute_batch(&format!(
        "INSERT INTO audit SELECT seq + 1, time_ms, 'daemon.started', actor, '', '{{}}', hash, hash FROM audit WHERE seq = {s2};
         INSERT INTO audit SELECT seq + 1, time_ms, 'approval.resolved', 'uid:0', '', '{{\"approved\":true}}', hash, hash FROM audit WHERE seq = {s2} + 1;"
    ))
    .expect("append");
    rechain(&c, s2 + 1);
    refused_at(&home, s2 + 1, "no signed checkpoint covers the start");
    // Positive control: without the forged run, the trail starts.
    c.execute("DELETE FROM audit WHERE seq > ?1", [s2])
        .expect("restore");
    home.start();
}

#[test]
fn a_configuration_pointed_at_a_fresh_witness_does_not_set_the_old_one_aside() {
    let (home, s1, s2) = two_runs("");
    let (old, new) = (
        home.path().join("audit.witness"),
        home.path().join("new.witness"),
    );
    let config = home.path().join("loongd.toml");
    std::fs::write(
        &config,
        format!("[audit]\nwitness_file = \"{}\"\n", new.display()),
    )
    .expect("config");
    // Positive control: the operator moves the witness with the configuration.
    std::fs::copy(&old, &new).expect("copy");
    std::fs::remove_file(&old).expect("move");
    home.start();
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    std::fs::copy(&new, &old).expect("copy back");
    std::fs::write(&config, "").expect("config");
    home.start();
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    // The attack: the configuration names a fresh path, the database forgets the old one, and
    // the trail is cut back to the first run; the old witness is still where it was.
    let head = seqs(&db(&home), "daemon.stopped").pop().expect("stop");
    std::fs::remove_file(&new).expect("stale");
    std::fs::write(
        &config,
        format!("[audit]\nwitness_file = \"{}\"\n", new.display()),
    )
    .expect("config");
    let c = db(&home);
    c.execute("DELETE FROM audit WHERE seq > ?1", [s1])
        .expect("tamper");
    c.execute("DELETE FROM checkpoints WHERE seq > ?1", [s1])
        .expect("tamper");
    c.execute("DELETE FROM meta WHERE key = 'witness_file'", [])
        .expect("tamper");
    assert!(head > s2);
    refused_at(
        &home,
        head,
        &format!("but the database ends at record {s1} (the trail was truncated)"),
    );
}

#[test]
fn the_witness_and_the_siem_lane_hold_the_latest_signed_checkpoint() {
    let dir = tempfile::Builder::new()
        .prefix("lw")
        .tempdir_in("/tmp")
        .expect("dir");
    let (witness, jsonl) = (
        dir.path().join("w/audit.witness"),
        dir.path().join("a.jsonl"),
    );
    std::fs::create_dir(dir.path().join("w")).expect("witness dir");
    let config = format!(
        "[audit]\nwitness_file = \"{}\"\njsonl_file = \"{}\"\n",
        witness.display(),
        jsonl.display()
    );
    let (home, _, s2) = two_runs(&config);
    assert!(!home.path().join("audit.witness").exists());
    let w: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&witness).expect("witness")).expect("json");
    assert_eq!(w["seq"], s2, "{w}");
    assert_eq!(w["format"], "loong-audit-witness-v1");
    let stored: Vec<u8> = db(&home)
        .query_row("SELECT hash FROM audit WHERE seq = ?1", [s2], |r| r.get(0))
        .expect("record");
    assert_eq!(w["hash"], hex::encode(stored));
    let lines = std::fs::read_to_string(&jsonl).expect("jsonl");
    let last = lines
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l.get("checkpoint").is_some())
        .expect("a checkpoint line");
    assert_eq!(last["checkpoint"], w);
    // Without its witness the trail's newest checkpoint cannot be confirmed: refused.
    let kept = std::fs::read(&witness).expect("witness");
    std::fs::remove_file(&witness).expect("remove");
    refused_at(&home, s2, "is missing, though loongd wrote it");
    std::fs::write(&witness, &kept).expect("restore");
    home.start();
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    // A witness that cannot be written stops the start, not the first checkpoint.
    let lost = Home::with_config("[audit]\nwitness_file = \"/nonexistent-dir/audit.witness\"\n");
    let out = lost.ctl(&["daemon", "start"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("audit witness file /nonexistent-dir/audit.witness"),
        "{}",
        text(&out.stderr)
    );
}

/// A durable commit syncs the trail's WAL with fdatasync(2), never fsync(2): fsync also
/// flushes the file's timestamps, which on ext4 waits for a journal commit of everything the
/// machine wrote (docs/performance-log.md, "One fsync is `fdatasync`"). Traced with strace through a start and
/// a clean stop (each a `synchronous = FULL` commit).
#[test]
fn the_audit_trail_syncs_its_commits_with_fdatasync() {
    const TEST: &str = "the_audit_trail_syncs_its_commits_with_fdatasync";
    let traced = Command::new("strace").arg("-V").output();
    if !traced.is_ok_and(|o| o.status.success()) {
        crate::support::skip(TEST, "strace is not installed");
        return;
    }
    let home = Home::new();
    let trace = home.path().join("sync.trace");
    let mut strace = Command::new("strace")
        .args(["-f", "-y", "-qq", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["daemon", "start"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace");
    assert!(
        wait_until(Duration::from_secs(30), || home
            .path()
            .join("run/loongd.sock")
            .exists()
            && home.ctl(&["status"]).status.success()),
        "loongd did not start under strace"
    );
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    let _ = strace.wait();
    let trace = std::fs::read_to_string(&trace).expect("trace");
    let wal = |call: &str| {
        trace
            .lines()
            .filter(|l| l.contains(&format!("{call}(")) && l.contains("audit.db-wal>"))
            .count()
    };
    // Positive control: the trace sees the WAL's syncs at all.
    assert!(wal("fdatasync") >= 2, "no fdatasync of the WAL:\n{trace}");
    assert_eq!(
        wal(" fsync") + wal("]fsync"),
        0,
        "the WAL was synced with fsync:\n{trace}"
    );
}

/// What an answered tool call promises (docs/performance.md, "4. loongd's fixed cost per call"): its decision and
/// its `tool.invoked` record were committed before the answer, so `kill -9` of loongd right
/// after answers leaves every answered call in the trail; calls from several connections at
/// once, so that the records share group commits.
#[test]
fn answered_tool_calls_survive_kill_9_right_after_the_answer() {
    const CLIENTS: usize = 4;
    let home = Arc::new(Home::new());
    crate::workers::install_examples(&home);
    let pid = home.start();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (socket, stop, answered) = (home.socket(), stop.clone(), answered.clone());
            std::thread::spawn(move || {
                let opts = loong_ipc::client::ConnectOptions {
                    peer_kind: loong_ipc::PeerKind::Operator,
                    build: "test".into(),
                    timeout: Duration::from_secs(5),
                };
                let mut client =
                    loong_ipc::client::Client::connect(&socket, &opts).expect("connect");
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let marker = format!("k-{c}-{n}");
                    let call = loong_ipc::ControlRequest::Invoke(loong_ipc::InvokeRequest {
                        tool: "echo".into(),
                        input: serde_json::json!({ "marker": marker }).to_string(),
                        token: None,
                    });
                    match client
                        .call::<_, loong_ipc::ControlResponse>(call, Duration::from_secs(30))
                    {
                        Ok(loong_ipc::ControlResponse::Invoked(out)) => {
                            assert!(out.output.contains(&marker), "{}", out.output);
                            answered.lock().expect("lock").push(marker);
                        }
                        _ => return, // the daemon is gone
                    }
                }
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(30), || answered
            .lock()
            .expect("lock")
            .len()
            >= 40),
        "calls did not get going"
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
    let answered = answered.lock().expect("lock").len();
    home.start();
    let ok = home.ctl(&["audit", "verify", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("json");
    assert_eq!(v["ok"], true, "{v}");
    let echo = |r: &&serde_json::Value| r["detail"]["tool"] == "echo";
    let invoked = recent(&home, "tool.invoked").iter().filter(echo).count();
    let allowed = recent(&home, "policy.decision")
        .iter()
        .filter(|r| r["detail"]["allowed"] == true)
        .count();
    // Every answered call is there; calls cut off before their answer may be too.
    assert!(
        invoked >= answered && allowed >= answered,
        "{answered} calls answered, {invoked} tool.invoked and {allowed} allowed decisions recorded"
    );
    assert!(answered >= 40, "only {answered} calls answered");
}

#[test]
fn calls_cut_off_by_kill_9_are_closed_at_the_next_start() {
    let home = Home::new();
    crate::workers::install_examples(&home);
    crate::workers::install_spin(&home, 60_000);
    let pid = home.start();
    crate::workers::echo_works(&home);
    const CALLS: usize = 3;
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            Command::new(bin("loongctl"))
                .arg("--home")
                .arg(home.path())
                .args(["invoke", "spin"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("invoke")
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(20), || recent(&home, "tool.invoked")
            .iter()
            .filter(|r| r["detail"]["tool"] == "spin")
            .count()
            == CALLS),
        "the calls did not start"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    for mut c in calls {
        let _ = c.wait();
    }
    home.start();
    let unclean = recent(&home, "daemon.unclean_stop");
    assert_eq!(unclean.len(), 1, "{unclean:?}");
    assert_eq!(unclean[0]["detail"]["dangling_calls"], CALLS);
    let failed = recent(&home, "tool.failed");
    let invoked = recent(&home, "tool.invoked");
    for i in &invoked {
        let outcomes: Vec<_> = failed
            .iter()
            .chain(&recent(&home, "tool.completed"))
            .filter(|f| f["correlation"] == i["correlation"])
            .cloned()
            .collect();
        assert_eq!(outcomes.len(), 1, "{i}: {outcomes:?}");
        if i["detail"]["tool"] == "spin" {
            let f = &outcomes[0];
            assert_eq!(f["kind"], "tool.failed");
            assert_eq!(f["actor"], i["actor"]);
            assert_eq!(f["detail"]["failure"], "kernel_stopped");
            assert_eq!(f["detail"]["invoked_seq"], i["seq"]);
            assert!(
                f["detail"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("loongd stopped")),
                "{f}"
            );
        } else {
            // The positive control: the echo call that answered keeps its own outcome.
            assert_eq!(outcomes[0]["kind"], "tool.completed", "{outcomes:?}");
        }
    }
    let v = home.ctl(&["audit", "verify", "--json"]);
    assert!(v.status.success(), "{}", text(&v.stdout));
}

#[test]
fn an_mcp_server_listing_many_long_tool_names_keeps_its_plugin_loaded_identity() {
    let dir = tempfile::Builder::new()
        .prefix("lm")
        .tempdir_in("/tmp")
        .expect("dir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let script = dir.path().join("many_tools_mcp.py");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("all/peers/many_tools_mcp.py"),
        &script,
    )
    .expect("copy the server");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let home = Home::new();
    let plugin = home.path().join("plugins/many");
    std::fs::create_dir_all(&plugin).expect("plugin dir");
    let manifest = serde_json::json!({
        "api_version": "v1alpha1", "plugin_id": "many", "version": "0.1.0",
        "summary": "many long tool names", "capabilities": ["filesystem_read"],
        "metadata": {"bridge_kind": "mcp_stdio", "command": "/usr/bin/python3",
            "args_json": serde_json::to_string(&[script.display().to_string()]).expect("args")},
        "sandbox": {"read": [dir.path().display().to_string()], "timeout_ms": 10000},
    });
    std::fs::write(plugin.join("loong.plugin.json"), manifest.to_string()).expect("manifest");
    home.start();
    let loaded = recent(&home, "plugin.loaded");
    let many = loaded
        .iter()
        .find(|r| r["detail"]["plugin"] == "many")
        .unwrap_or_else(|| panic!("no plugin.loaded for many: {loaded:?}"));
    let d = &many["detail"];
    let listed = crate::workers::plugins(&home)
        .into_iter()
        .find(|p| p["id"] == "many")
        .expect("listed");
    assert_eq!(d["version"], "0.1.0", "{d}");
    assert_eq!(d["bridge_kind"], "mcp_stdio", "{d}");
    assert_eq!(d["trust"], listed["trust"], "{d}");
    assert!(d.get("signer").is_some(), "{d}");
    let names: Vec<String> = (0..202)
        .map(|i| format!("t{i:03}{}", "x".repeat(124)))
        .collect();
    let list = serde_json::to_string(&names).expect("names");
    let tools = &d["tools"];
    assert_eq!(tools["truncated"], true, "{d}");
    assert_eq!(tools["items"], 202);
    assert_eq!(tools["bytes"], list.len());
    assert_eq!(tools["sha256"], sha256_hex(&list));
    assert_eq!(tools["head"].as_array().map(Vec::len), Some(64));
    assert_eq!(tools["head"][0], names[0].as_str());
}

#[test]
fn a_denied_padded_shell_command_keeps_who_asked_and_why_it_was_denied() {
    let ws = tempfile::Builder::new()
        .prefix("lx")
        .tempdir_in("/tmp")
        .expect("dir");
    std::fs::set_permissions(
        ws.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let home = Home::with_config(&format!("[builtins]\nworkspace = {:?}\n", ws.path()));
    std::fs::create_dir_all(home.path().join("packs")).expect("packs");
    std::fs::write(
        home.path().join("packs/reader.toml"),
        "id = \"reader\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"fs.read:/tmp\"]\napproval = \"never\"\n",
    )
    .expect("pack");
    home.start();
    let out = home.ctl(&[
        "tokens",
        "issue",
        "--pack",
        "reader",
        "--agent",
        "bot",
        "--cap",
        "fs.read:/tmp",
        "--ttl",
        "1h",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    let command = format!("rm -rf /tmp/x{}", " ".repeat(17_000));
    let input = serde_json::json!({ "command": command }).to_string();
    let out = home.ctl(&["invoke", "shell.exec", "--token", &token, "--input", &input]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let denied: Vec<_> = recent(&home, "policy.decision")
        .into_iter()
        .filter(|r| r["detail"]["allowed"] == false)
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    let d = &denied[0]["detail"];
    assert_eq!(d["capability"], "process.exec", "{d}");
    assert_eq!(d["agent"], "bot", "{d}");
    assert_eq!(d["pack"], "reader", "{d}");
    assert!(d["token"].as_str().is_some_and(|t| !t.is_empty()), "{d}");
    assert!(d["reason"].as_str().is_some_and(|r| !r.is_empty()), "{d}");
    // shell.exec is decided on its script: the target is the first program it runs.
    assert_eq!(d["target"], "rm", "{d}");
    let script = &d["script"];
    assert_eq!(script["truncated"], true, "{d}");
    assert_eq!(script["bytes"], command.len());
    assert_eq!(script["sha256"], sha256_hex(&command));
    assert!(
        script["head"]
            .as_str()
            .is_some_and(|h| h.starts_with("rm -rf /tmp/x")),
        "{d}"
    );
}

/// A syslog receiver for a fail-closed lane that the test can take away: while it runs every
/// commit succeeds; [`SyslogLane::down`] removes it, and every commit from then on fails.
pub(crate) struct SyslogLane {
    sock: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<std::os::unix::net::UnixDatagram>>,
    /// The receiver, kept open but no longer read ([`SyslogLane::stall`]).
    pub(crate) held: Option<std::os::unix::net::UnixDatagram>,
}

impl SyslogLane {
    pub(crate) fn up(dir: &std::path::Path) -> SyslogLane {
        let sock = dir.join("log.sock");
        let syslog = std::os::unix::net::UnixDatagram::bind(&sock).expect("syslog socket");
        syslog
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let reader = SyslogLane::read_until_stopped(syslog, stop.clone());
        SyslogLane {
            sock,
            stop,
            reader: Some(reader),
            held: None,
        }
    }

    fn read_until_stopped(
        syslog: std::os::unix::net::UnixDatagram,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<std::os::unix::net::UnixDatagram> {
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !stop.load(Ordering::SeqCst) {
                let _ = syslog.recv(&mut buf);
            }
            syslog
        })
    }

    /// A stalled receiver reads again: the commits it held complete.
    pub(crate) fn resume(&mut self) {
        if let Some(syslog) = self.held.take() {
            self.stop.store(false, Ordering::SeqCst);
            self.reader = Some(SyslogLane::read_until_stopped(syslog, self.stop.clone()));
        }
    }

    pub(crate) fn config(&self) -> String {
        format!(
            "[audit]\nsyslog = true\nsyslog_socket = \"{}\"\nsyslog_failure = \"closed\"\n",
            self.sock.display()
        )
    }

    /// The receiver stays but reads no more: once its queue is full, a send blocks, and with
    /// it every commit.
    pub(crate) fn stall(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            self.held = Some(r.join().expect("syslog reader"));
            // Its queue filled at once: the next record's send blocks.
            let filler = std::os::unix::net::UnixDatagram::unbound().expect("filler");
            filler.set_nonblocking(true).expect("nonblocking");
            while filler.send_to(b"filler", &self.sock).is_ok() {}
        }
    }

    pub(crate) fn down(&mut self) {
        self.stall();
        self.held = None;
        std::fs::remove_file(&self.sock).expect("remove the syslog socket");
    }
}
