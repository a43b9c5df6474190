//! Starting, stopping, one daemon per home, several homes side by side, crash recovery.

use std::{process::Command, time::Duration};

use crate::support::{bin, process_alive, process_gone, text, wait_until, Home};

#[test]
fn no_daemon_means_exit_3_and_a_hint() {
    let home = Home::new();
    let out = home.ctl(&["status"]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(
        err.contains("loongd is not running") && err.contains("daemon start"),
        "{err}"
    );
    assert_eq!(home.ctl(&["daemon", "status"]).status.code(), Some(3));
    // Stopping nothing is not an error.
    assert_eq!(home.ctl(&["daemon", "stop"]).status.code(), Some(0));
}

#[test]
fn status_json_has_the_documented_fields() {
    let home = Home::new();
    let pid = home.start();
    let s = home.status();
    for field in [
        "version",
        "protocol_version",
        "pid",
        "uptime_ms",
        "home",
        "socket_path",
        "connected_clients",
    ] {
        assert!(
            s.json.get(field).is_some(),
            "missing `{field}` in {}",
            s.json
        );
    }
    assert_eq!(s.pid, pid);
    assert_eq!(s.json["home"].as_str(), home.path().to_str());
    assert_eq!(s.json["socket_path"].as_str(), home.socket().to_str());
    assert_eq!(
        s.json["protocol_version"].as_u64(),
        Some(u64::from(loong_ipc::PROTOCOL_VERSION))
    );
    // Default configuration is written with commented defaults, and the socket is private.
    let cfg = std::fs::read_to_string(home.path().join("loongd.toml")).expect("config written");
    assert!(cfg.contains("# max_frame_bytes = 1048576"), "{cfg}");
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&home.socket()), 0o600);
    assert_eq!(mode(&home.path().join("run")), 0o700);
    // Graceful stop removes the socket and the process.
    let out = home.ctl(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!process_alive(pid));
    assert!(!home.socket().exists());
}

#[test]
fn one_daemon_per_home_and_homes_side_by_side() {
    let a = Home::new();
    let b = Home::new();
    let pa = a.start();
    let pb = b.start();
    assert_ne!(pa, pb);
    assert_eq!(a.status().pid, pa);
    assert_eq!(b.status().pid, pb);
    // A second daemon on home A is refused with a clear message, and A keeps running.
    let second = Command::new(bin("loongd"))
        .arg("--home")
        .arg(a.path())
        .arg("--foreground")
        .output()
        .expect("run loongd");
    assert_eq!(second.status.code(), Some(1));
    let err = text(&second.stderr);
    assert!(
        err.contains(&format!("another loongd (pid {pa}) is already running")),
        "{err}"
    );
    assert_eq!(a.status().pid, pa);
    // `daemon start` on a running home is a no-op naming the running daemon.
    let again = a.ctl(&["daemon", "start"]);
    assert!(again.status.success());
    assert!(text(&again.stdout).contains(&format!("already running (pid {pa}")));
}

#[test]
fn kill_9_then_start_recovers_the_stale_socket() {
    let home = Home::new();
    let pid = home.start();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    assert!(wait_until(Duration::from_secs(5), || process_gone(pid)));
    assert!(
        home.socket().exists(),
        "a killed daemon leaves its socket behind"
    );
    assert_eq!(
        home.ctl(&["status"]).status.code(),
        Some(3),
        "a stale socket is not a running daemon"
    );
    let pid2 = home.start();
    assert_ne!(pid, pid2);
    assert!(
        home.log().contains("replacing a stale control socket"),
        "{}",
        home.log()
    );
}

#[test]
fn sigterm_shuts_down_gracefully() {
    let home = Home::new();
    let pid = home.start();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert!(
        wait_until(Duration::from_secs(10), || !process_alive(pid)),
        "loongd exits on SIGTERM"
    );
    assert!(
        !home.socket().exists(),
        "the socket is removed on a graceful shutdown"
    );
    assert!(home.log().contains("SIGTERM: shutting down"));
}

#[test]
fn bad_configuration_is_refused_with_file_line_and_key() {
    let home = Home::with_config("[ipc]\n# a comment\nmax_frame_bytez = 10\n");
    let out = home.ctl(&["daemon", "start"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let want = format!(
        "{}:3: unknown field `max_frame_bytez`",
        home.path().join("loongd.toml").display()
    );
    assert!(err.contains(&want), "expected `{want}` in:\n{err}");
}
