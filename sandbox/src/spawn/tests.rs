//! Tests of the spawner's own pieces: a child's report, the rootless id mode, a payload's null stdio.

use super::*;

/// A `Child` whose helper is `helper` (a live process) and whose report is read from
/// the pipe returned with it.
fn child_of(helper: &std::process::Child) -> (Child, File) {
    let (r, w) = std::io::pipe().expect("pipe");
    let child = Child {
        pid: helper.id(),
        pidfd: sys::pidfd_open(helper.id() as i32).expect("pidfd"),
        report: BufReader::with_capacity(REPORT_BUFFER_BYTES, File::from(OwnedFd::from(r))),
        report_text: Vec::new(),
        report_closed: false,
        report_nonblocking: false,
        exit_line_ends: true,
        cgroup: None,
        stdin: None,
        stdout: None,
        stderr: None,
        degraded: Vec::new(),
    };
    (child, File::from(OwnedFd::from(w)))
}

/// The `exit` line ends the sandbox for its caller as soon as it is read, the helper
/// still alive (it has reaped the reaper: no process of the sandbox is left; its own exit
/// is not waited for), and only once the line is whole; `try_wait`, which waits for the
/// helper, has nothing yet (the control). A report that ends without the line says so,
/// for the caller to wait for the helper instead.
#[test]
fn the_exit_line_ends_a_sandbox_before_its_helper_is_gone() {
    let mut helper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("a live process for the helper");
    let (mut child, mut w) = child_of(&helper);
    assert_eq!(child.try_exit_line().expect("read"), None);
    w.write_all(b"exit 3 0 11 22").expect("write");
    assert_eq!(
        child.try_exit_line().expect("read"),
        None,
        "a part of the line"
    );
    w.write_all(b" 33\n").expect("write");
    let report = child.try_exit_line().expect("read").expect("the exit");
    assert_eq!(
        (
            report.code,
            report.signal,
            report.user_us,
            report.system_us,
            report.max_rss_kib
        ),
        (Some(3), None, 11, 22, 33)
    );
    assert!(child.try_wait().is_none(), "the helper still runs");
    assert!(!child.report_closed());

    // Where the line does not end a run (no pid namespace, a cgroup, subordinate ids),
    // the same line is left for the helper's exit.
    let (mut other, mut w) = child_of(&helper);
    other.exit_line_ends = false;
    w.write_all(b"exit 3 0 11 22 33\n").expect("write");
    assert_eq!(other.try_exit_line().expect("read"), None);
    assert!(!other.ends_at_exit_line());

    let (mut child, w) = child_of(&helper);
    drop(w);
    assert_eq!(child.try_exit_line().expect("read"), None);
    assert!(child.report_closed(), "the report ended without the line");

    // A blocking wait after a part of the line was read without blocking joins the two.
    let (mut partial, mut w) = child_of(&helper);
    w.write_all(b"exit 5 0 1 2").expect("write");
    assert_eq!(partial.try_exit_line().expect("read"), None);
    w.write_all(b" 3\n").expect("write");
    drop(w);

    let _ = helper.kill();
    let _ = helper.wait();
    let ended = child.try_wait().expect("the helper is gone").expect("read");
    assert_eq!(
        ended.signal,
        Some(libc::SIGKILL),
        "killed, with no exit line"
    );
    let waited = partial.wait().expect("wait");
    assert_eq!((waited.code, waited.max_rss_kib), (Some(5), 3));
}

/// Rootless with subordinate ids, a claim directory that cannot be had (the user's home
/// not looked up, as on a transient NSS failure, or one another account may write) turns
/// the mode into "without subordinate ids", saying why, so `doctor` and each refusal
/// name the cause (before, the lookup's error was dropped: the mode still read
/// "subordinate" and every sandbox was refused for want of a slot, with no word of why).
/// Control: the user's own private directory keeps the mode and is given to the server.
#[test]
fn subordinate_ids_without_a_usable_claim_directory_are_refused_saying_why() {
    use crate::subids::{Missing, SubRange};
    use std::os::unix::fs::PermissionsExt;
    let me = nix::unistd::Uid::effective().as_raw();
    let range = SubRange {
        start: 200_000,
        count: 65536,
    };
    let subordinate = IdMode::Subordinate {
        user: "loong".into(),
        uid: range,
        gid: range,
    };
    let nss_down = |uid| {
        Err(server::ClaimFileError::NoUser {
            uid,
            why: "the user database did not answer".into(),
        })
    };
    let (ids, dir) = with_claims(subordinate.clone(), me, nss_down);
    assert!(dir.is_none());
    let IdMode::OwnUid(missing @ Missing::NoClaims { .. }) = &ids else {
        panic!("the mode after a failed lookup: {ids:?}");
    };
    let refusal = SpawnError::OwnUid(missing.clone()).to_string();
    assert!(refusal.contains("did not answer"), "{refusal}");
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let given = home.path().to_path_buf();
    let (ids, dir) = with_claims(subordinate.clone(), me, |_| Ok(given.clone()));
    assert!(dir.is_none());
    assert!(
        matches!(&ids, IdMode::OwnUid(Missing::NoClaims { why }) if why.contains("alone may write")),
        "{ids:?}"
    );
    // Control: the directory made private.
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let (ids, dir) = with_claims(subordinate.clone(), me, |_| Ok(given.clone()));
    assert_eq!((ids, dir), (subordinate, Some(given)));
}

#[test]
fn a_payloads_null_stdio_is_the_null_device_or_nothing() {
    // Positive control: the host's /dev/null.
    assert!(open_null(Path::new(NULL_DEVICE)).is_ok());
    // A regular file, and another device, at that name are refused.
    let f = tempfile::NamedTempFile::new().expect("temp file");
    let err = open_null(f.path()).expect_err("a regular file");
    assert!(err.to_string().contains("is not the null device"), "{err}");
    assert!(open_null(Path::new("/dev/zero")).is_err());
}
