//! Prepared roots (root mode): runs with the same root enter a template mount namespace the
//! spawn server built once, and mount only their own `/proc` and `/tmp`. A run on a template
//! is told apart by its root: the template's tmpfs, the same directory (its modification time,
//! to the nanosecond, is when the template was built) for every run on it, where a root built
//! for the run alone is a tmpfs of its own, made then (a device number alone is reused).

use std::{fs, os::unix::fs::PermissionsExt};

use crate::support::{is_root, skip, text, Home};

/// The configuration without sandboxes built ahead.
const NO_SPARE: &str = "[sandbox]\nspare = false\n";

/// Tries for a pair of runs on the same template: the host's mount table changing meanwhile
/// (another test mounting) drops every template, so a pair may straddle a rebuild.
const PAIR_TRIES: usize = 6;

/// A directory to hold a test's grants, not below `/tmp` (a run's fresh `/tmp` would cover a
/// grant there, so its root would not be prepared): the target's temporary directory, or
/// `/var/tmp` when the target itself is below `/tmp` (a clone there).
fn grants_dir() -> tempfile::TempDir {
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let base = if target.starts_with("/tmp") {
        std::path::Path::new("/var/tmp")
    } else {
        target
    };
    fs::create_dir_all(base).expect("a directory for grants");
    tempfile::tempdir_in(base).expect("tempdir")
}

/// What one run printed, split at its `KEY` lines.
struct Seen {
    dev: String,
    lines: Vec<String>,
}

fn run(home: &Home, grants: &[&str], script: &str) -> Seen {
    let mut args = vec!["sandbox", "run", "--tier", "balanced"];
    args.extend_from_slice(grants);
    let script = format!("echo DEV $(stat -c '%d %y' /); {script}");
    args.extend_from_slice(&["--", "/bin/sh", "-c", &script]);
    let out = home.ctl(&args);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    let mut lines: Vec<String> = stdout.lines().map(str::to_string).collect();
    let dev = lines
        .iter()
        .position(|l| l.starts_with("DEV "))
        .map(|i| lines.remove(i)[4..].to_string())
        .expect("the root's stat");
    Seen { dev, lines }
}

/// Lines of `seen` after `tag` up to the next upper-case tag.
fn section(seen: &Seen, tag: &str) -> Vec<String> {
    seen.lines
        .iter()
        .skip_while(|l| l.as_str() != tag)
        .skip(1)
        .take_while(|l| !l.chars().all(|c| c.is_ascii_uppercase()))
        .cloned()
        .collect()
}

/// No run's state reaches the next on a template: a run that writes to every place it might
/// (`/tmp`, the root, `/dev`, a remount of the root) is followed by a run on the same template
/// (the same root directory) that finds none of it; the root and `/dev` refuse writes (the
/// template's superblocks are shared; both are read-only mounts) where `/tmp`, the run's own,
/// takes one (the control). The template run's mount table is the one a root built for the run alone
/// has: no old root, no host mount, the same mount points.
#[test]
fn a_run_on_a_prepared_root_leaves_nothing_to_the_next() {
    if !is_root() {
        skip(
            "a_run_on_a_prepared_root_leaves_nothing_to_the_next",
            "prepared roots are root mode's",
        );
        return;
    }
    let home = Home::new();
    home.start();
    let mounts = "echo MOUNTS; cut -d' ' -f5 /proc/self/mountinfo | sort";
    let first = run(&home, &[], mounts);
    let look =
        "echo FOUND; for f in /tmp/mark /mark /dev/mark /dev/dir; do test -e $f && echo $f; done";
    let write = "echo WROTE; \
                 (echo x > /tmp/mark) 2>/dev/null && echo /tmp/mark; \
                 (echo x > /mark) 2>/dev/null && echo /mark; \
                 (echo x > /dev/mark) 2>/dev/null && echo /dev/mark; \
                 mkdir /dev/dir 2>/dev/null && echo /dev/dir; \
                 mount -o remount,rw / 2>/dev/null && echo remount; \
                 (echo x > /dev/null) && echo /dev/null";
    let mut paired = false;
    for _ in 0..PAIR_TRIES {
        let writer = run(&home, &[], &format!("{look}; {write}"));
        let opts = "echo OPTIONS; awk '$5 == \"/\" || $5 == \"/dev\" { print $5 \" \" $6 }' /proc/self/mountinfo";
        let reader = run(&home, &[], &format!("{look}; {opts}; {mounts}"));
        // Controls: the run's own /tmp takes a write, and a device node stays usable.
        assert_eq!(
            section(&writer, "WROTE"),
            ["/tmp/mark", "/dev/null"],
            "only /tmp and the device nodes take a write"
        );
        assert!(
            section(&reader, "FOUND").is_empty(),
            "a run found what the one before wrote: {:?}",
            section(&reader, "FOUND")
        );
        let points = section(&reader, "MOUNTS");
        assert!(
            !points.iter().any(|p| p.starts_with("/oldroot")),
            "{points:?}"
        );
        assert_eq!(
            points,
            section(&first, "MOUNTS"),
            "a run on a template has other mounts than a root built for it"
        );
        if writer.dev == reader.dev {
            // On a template, the root's tmpfs and /dev (shared by every run on it) are
            // read-only mounts.
            let options = section(&reader, "OPTIONS");
            assert_eq!(options.len(), 2, "{options:?}");
            for line in &options {
                let flags = line.split_once(' ').map(|(_, f)| f).unwrap_or_default();
                assert!(flags.split(',').any(|f| f == "ro"), "{options:?}");
            }
            paired = true;
            break;
        }
    }
    assert!(paired, "no two runs of the same root shared a template");
}

/// A template is never used for another root: a grant whose directory was swapped for
/// another after the template was built (same path, another inode) is bound anew, showing the
/// new directory's files and none of the old one's, and a read-only and a writable grant of the
/// same path each get their own (the read-only runs never write, the writable runs do). The
/// control: before the swap, runs of the same grant share a template and see its files.
#[test]
fn a_template_is_used_only_for_the_root_it_was_built_for() {
    if !is_root() {
        skip(
            "a_template_is_used_only_for_the_root_it_was_built_for",
            "prepared roots are root mode's",
        );
        return;
    }
    let host = grants_dir();
    fs::set_permissions(host.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let grant = host.path().join("grant");
    let make = |file: &str| {
        fs::create_dir(&grant).expect("grant");
        fs::set_permissions(&grant, fs::Permissions::from_mode(0o777)).expect("chmod");
        fs::write(grant.join(file), "").expect("file");
    };
    make("old");
    let home = Home::new();
    home.start();
    let g = grant.display().to_string();
    let list = format!("echo FILES; ls {g}");
    let mut paired = false;
    for _ in 0..PAIR_TRIES {
        let a = run(&home, &["--read", &g], &list);
        let b = run(&home, &["--read", &g], &list);
        for s in [&a, &b] {
            assert_eq!(section(s, "FILES"), ["old"]);
        }
        if a.dev == b.dev {
            paired = true;
            break;
        }
    }
    assert!(paired, "no two runs of the same grant shared a template");
    // The grant's path now names another directory.
    fs::rename(&grant, host.path().join("moved")).expect("move the grant away");
    make("new");
    let after = run(&home, &["--read", &g], &list);
    assert_eq!(
        section(&after, "FILES"),
        ["new"],
        "a run bound the directory the grant's path named when its template was built"
    );
    // Read-only and writable grants of the same path, alternately, twice each.
    let write =
        format!("echo WROTE; (touch {g}/w) 2>/dev/null && echo w; rm -f {g}/w 2>/dev/null; true");
    for _ in 0..2 {
        let ro = run(&home, &["--read", &g], &write);
        assert!(
            section(&ro, "WROTE").is_empty(),
            "a read-only grant took a write"
        );
        let rw = run(&home, &["--write", &g], &write);
        assert_eq!(
            section(&rw, "WROTE"),
            ["w"],
            "a writable grant took no write"
        );
    }
}

/// A template never hides a change of the host's mount table: a mount made on the host below a
/// granted directory after the grant's template was built is in the next run's root, as it
/// would be in a root built for that run (any mount or unmount drops every template). The
/// control: before the mount, runs of the grant share a template and see the bare directory.
#[test]
fn a_host_mount_made_after_a_template_was_built_is_in_the_next_run() {
    if !is_root() {
        skip(
            "a_host_mount_made_after_a_template_was_built_is_in_the_next_run",
            "prepared roots are root mode's",
        );
        return;
    }
    let host = grants_dir();
    fs::set_permissions(host.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let sub = host.path().join("sub");
    fs::create_dir(&sub).expect("sub");
    let home = Home::new();
    home.start();
    let g = host.path().display().to_string();
    let list = format!("echo FILES; ls {g}/sub");
    let mut paired = false;
    for _ in 0..PAIR_TRIES {
        let a = run(&home, &["--read", &g], &list);
        let b = run(&home, &["--read", &g], &list);
        for s in [&a, &b] {
            assert!(section(s, "FILES").is_empty(), "{:?}", s.lines);
        }
        if a.dev == b.dev {
            paired = true;
            break;
        }
    }
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=755,size=65536", "tmpfs"])
        .arg(&sub)
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        fs::write(sub.join("marker"), "m").expect("marker");
    }
    let after = mounted.then(|| run(&home, &["--read", &g], &list));
    let _ = std::process::Command::new("umount").arg(&sub).status();
    assert!(paired, "no two runs of the same grant shared a template");
    assert!(mounted, "cannot mount a tmpfs");
    assert_eq!(
        after.map(|s| section(&s, "FILES")).unwrap_or_default(),
        ["marker"],
        "a run did not see a mount the host made before it started"
    );
}

/// A template whose kept mount the kernel removed is not used: a host user who may write a
/// granted directory replaces the entry a read-only grant below it is bound on with the same
/// file (`ln f .t; rm f; mv .t f`: same inode, same key), which makes the kernel detach that
/// bind from every namespace, the template's included. The next run still finds the file
/// read-only (its root is checked and, changed, built anew). The controls: before, runs of
/// the plan share a template and find the file read-only and its directory writable.
#[test]
fn a_template_whose_nested_grant_the_host_unlinked_is_not_used() {
    if !is_root() {
        skip(
            "a_template_whose_nested_grant_the_host_unlinked_is_not_used",
            "prepared roots are root mode's",
        );
        return;
    }
    let host = grants_dir();
    fs::set_permissions(host.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let dir = host.path().join("p");
    fs::create_dir(&dir).expect("dir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
    let cfg = dir.join("deploy.cfg");
    fs::write(&cfg, "v1\n").expect("cfg");
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o666)).expect("chmod");
    let home = Home::new();
    home.start();
    let (d, c) = (dir.display().to_string(), cfg.display().to_string());
    let grants = ["--write", d.as_str(), "--read", c.as_str()];
    let probe = format!(
        "echo WROTE; (echo x >> {c}) 2>/dev/null && echo cfg; \
         (echo x > {d}/other) 2>/dev/null && echo other; true"
    );
    let mut paired = false;
    for _ in 0..PAIR_TRIES {
        let a = run(&home, &grants, &probe);
        let b = run(&home, &grants, &probe);
        for s in [&a, &b] {
            assert_eq!(section(s, "WROTE"), ["other"], "{:?}", s.lines);
        }
        if a.dev == b.dev {
            paired = true;
            break;
        }
    }
    assert!(paired, "no two runs of the same plan shared a template");
    // The host's entry replaced by the same inode.
    let tmp = dir.join(".t");
    fs::hard_link(&cfg, &tmp).expect("link");
    fs::remove_file(&cfg).expect("unlink");
    fs::rename(&tmp, &cfg).expect("rename");
    // The changed template is dropped (the run that found it changed tells the server) and
    // another built: runs share a root again, and the grant still holds in each. Before, the
    // helper had closed the socket it tells the server on, the changed template was kept, and
    // every later run found it changed and built its own root.
    let mut rebuilt = false;
    let mut before = run(&home, &grants, &probe);
    for _ in 0..PAIR_TRIES + 2 {
        let after = run(&home, &grants, &probe);
        for s in [&before, &after] {
            assert_eq!(
                section(s, "WROTE"),
                ["other"],
                "a read-only grant took a write after the host replaced its entry"
            );
        }
        if before.dev == after.dev {
            rebuilt = true;
            break;
        }
        before = after;
    }
    assert!(
        rebuilt,
        "no two runs shared a template after the changed one"
    );
    assert_eq!(fs::read_to_string(&cfg).expect("cfg"), "v1\n");
}

/// When the run's `/tmp` was mounted, as the host's clock gives it (seconds since the epoch;
/// a tmpfs root's time is the kernel's coarse clock, a tick behind at most).
fn tmp_made(seen: &Seen) -> f64 {
    section(seen, "TMP")
        .first()
        .and_then(|l| l.trim().parse().ok())
        .expect("the time /tmp was made")
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// How long the tests wait between runs so that a sandbox built ahead is told by its age
/// from one built for its run.
const IDLE: std::time::Duration = std::time::Duration::from_millis(400);

/// A run of a shape runs lately is served by a sandbox the spawn server built ahead for it
/// (its `/tmp` mounted before the run was asked for), which is the sandbox a run built for
/// it would be: an empty, writable `/tmp` of its own, the payload pid 2 under the reaper,
/// nothing of the run before it. A run of another shape is not (its `/tmp` is mounted after
/// it was asked for), and does not use up the spare, which the next run of its shape finds.
#[test]
fn a_sandbox_built_ahead_serves_only_runs_of_its_shape() {
    if !is_root() {
        skip(
            "a_sandbox_built_ahead_serves_only_runs_of_its_shape",
            "sandboxes built ahead are root mode's",
        );
        return;
    }
    let host = grants_dir();
    fs::set_permissions(host.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let home = Home::new();
    home.start();
    let probe = "echo TMP; date +%s.%N -r /tmp; echo FOUND; ls -A /tmp; \
                 echo WROTE; (echo x > /tmp/mark) && echo /tmp/mark; echo PID; echo $$";
    let other_grant = host.path().display().to_string();
    let mut seen = None;
    for _ in 0..PAIR_TRIES {
        // The shape asked twice in a row: the server keeps a spare for it once its template
        // is built (after the first run).
        for _ in 0..3 {
            run(&home, &[], probe);
        }
        std::thread::sleep(IDLE);
        let asked = now();
        let other = run(&home, &["--read", &other_grant], probe);
        let served = run(&home, &[], probe);
        // A host mount change meanwhile (another test's) drops every template and spare.
        if tmp_made(&served) < asked - IDLE.as_secs_f64() / 2.0 {
            seen = Some((asked, other, served));
            break;
        }
    }
    let (asked, other, served) = seen.expect("no run was served by a sandbox built ahead");
    // The run of another shape had its sandbox built for it, after it was asked for.
    assert!(
        tmp_made(&other) > asked - 0.05,
        "a run of another shape ran in a sandbox built ahead: /tmp made at {}, asked at {asked}",
        tmp_made(&other)
    );
    for s in [&other, &served] {
        assert!(section(s, "FOUND").is_empty(), "{:?}", section(s, "FOUND"));
        assert_eq!(section(s, "WROTE"), ["/tmp/mark"]);
        assert_eq!(section(s, "PID"), ["2"]);
    }
}

/// `[sandbox] spare = false` keeps no sandbox built ahead: after the same runs that have one
/// served by a spare with the default, every run's `/tmp` is mounted after it was asked for.
#[test]
fn without_spares_every_sandbox_is_built_for_its_run() {
    if !is_root() {
        skip(
            "without_spares_every_sandbox_is_built_for_its_run",
            "sandboxes built ahead are root mode's",
        );
        return;
    }
    let home = Home::with_config(NO_SPARE);
    home.start();
    let probe = "echo TMP; date +%s.%N -r /tmp";
    for _ in 0..3 {
        run(&home, &[], probe);
    }
    for _ in 0..2 {
        std::thread::sleep(IDLE);
        let asked = now();
        let seen = run(&home, &[], probe);
        assert!(
            tmp_made(&seen) > asked - 0.05,
            "a run ran in a sandbox built ahead with spares off: /tmp made at {}, asked at {asked}",
            tmp_made(&seen)
        );
    }
}
