//! A file decision binds to the object that is used. The built-in file tools open the file
//! their call was decided on: a name swapped for a symlink into another root between the
//! decision and the open (`renameat2(RENAME_EXCHANGE)` in a loop), a directory on the path
//! swapped the same way, and a hard link to a file in another root never let a token scoped
//! to one root read or write under another. Paths with `.` or `..` are refused as the docs
//! say. A `sandbox run` binds the grant it decided, not what the name leads to later, and
//! makes a mount point only where it was planned, never through a symlink swapped in.

use std::{
    fs,
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use loong_ipc::{
    client::{Client, ClientError, ConnectOptions},
    ControlRequest, ControlResponse, ErrorKind, InvokeRequest, PeerKind,
};

use crate::support::{text, Home};

/// Calls each race makes while the swapper runs.
const RACE_CALLS: usize = 1_000;
/// Each call's deadline.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// Two read roots and two write roots; the token is scoped to `docs` and `out`.
struct Setup {
    _dir: tempfile::TempDir,
    docs: PathBuf,
    other: PathBuf,
    out: PathBuf,
    elsewhere: PathBuf,
    home: Home,
    token: String,
}

fn setup() -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("lbf")
        .tempdir_in("/tmp")
        .expect("temp dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let base = dir.path().canonicalize().expect("real path");
    let [docs, other, out, elsewhere] = ["docs", "other", "out", "elsewhere"].map(|d| base.join(d));
    for (d, mode) in [
        (&docs, 0o755),
        (&other, 0o755),
        (&out, 0o777),
        (&elsewhere, 0o777),
    ] {
        fs::create_dir(d).expect("dir");
        fs::set_permissions(d, fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let home = Home::with_config(&format!(
        "[audit]\nsync = \"normal\"\n[builtins]\nread_roots = [{:?}, {:?}]\nwrite_roots = [{:?}, {:?}]\n",
        docs.display().to_string(),
        other.display().to_string(),
        out.display().to_string(),
        elsewhere.display().to_string(),
    ));
    fs::create_dir_all(home.path().join("packs")).expect("packs");
    fs::write(
        home.path().join("packs/agent.toml"),
        format!(
            "id = \"agent\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"fs.read:{}\", \"fs.write:{}\", \"process.exec:cat\"]\napproval = \"never\"\n",
            docs.display(),
            out.display()
        ),
    )
    .expect("pack");
    home.start();
    let issued = home.ctl(&[
        "tokens",
        "issue",
        "--pack",
        "agent",
        "--agent",
        "bot",
        "--cap",
        &format!("fs.read:{}", docs.display()),
        "--cap",
        &format!("fs.write:{}", out.display()),
        "--cap",
        "process.exec:cat",
        "--ttl",
        "1h",
    ]);
    assert!(issued.status.success(), "{}", text(&issued.stderr));
    let token = text(&issued.stdout).trim().to_string();
    Setup {
        _dir: dir,
        docs,
        other,
        out,
        elsewhere,
        home,
        token,
    }
}

fn write_file(path: &Path, body: &str) {
    fs::write(path, body).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).expect("chmod");
}

fn client(home: &Home) -> Client {
    let opts = ConnectOptions {
        peer_kind: PeerKind::Operator,
        build: "test".into(),
        timeout: Duration::from_secs(10),
    };
    Client::connect(&home.socket(), &opts).expect("connect")
}

/// How one call ended.
#[derive(Debug, PartialEq)]
enum Ended {
    /// The tool answered this JSON.
    Answered(serde_json::Value),
    /// Policy denied it (the decision saw the swapped name).
    Denied,
    /// The worker refused to open what the decision had not seen.
    Swapped,
    /// Refused as a bad request.
    Bad(String),
    /// The tool failed otherwise.
    Failed(String),
}

fn call(c: &mut Client, token: &str, tool: &str, input: serde_json::Value) -> Ended {
    let req = ControlRequest::Invoke(InvokeRequest {
        tool: tool.into(),
        input: input.to_string(),
        token: Some(loong_ipc::BearerSecret::new(token)),
    });
    match c.call::<_, ControlResponse>(req, CALL_DEADLINE) {
        Ok(ControlResponse::Invoked(out)) => {
            Ended::Answered(serde_json::from_str(&out.output).expect("JSON output"))
        }
        Ok(other) => panic!("unexpected answer {other:?}"),
        Err(ClientError::Remote(e)) if e.kind == ErrorKind::Denied => Ended::Denied,
        Err(ClientError::Remote(e))
            if e.kind == ErrorKind::WorkerFailed
                && e.message.contains("changed after the call was decided") =>
        {
            Ended::Swapped
        }
        Err(ClientError::Remote(e)) if e.kind == ErrorKind::BadRequest => Ended::Bad(e.message),
        Err(ClientError::Remote(e)) if e.kind == ErrorKind::WorkerFailed => {
            Ended::Failed(e.message)
        }
        Err(e) => panic!("{tool} {input}: unexpected failure: {e}"),
    }
}

/// Runs `body` while a thread exchanges `a` and `b` (`renameat2(RENAME_EXCHANGE)`) in a
/// loop; returns `body`'s result and the number of exchanges.
fn while_swapping<T>(a: &Path, b: &Path, body: impl FnOnce() -> T) -> (T, usize) {
    let stop = AtomicBool::new(false);
    let swaps = AtomicUsize::new(0);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                nix::fcntl::renameat2(None, a, None, b, nix::fcntl::RenameFlags::RENAME_EXCHANGE)
                    .expect("exchange");
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        });
        while swaps.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        let out = body();
        stop.store(true, Ordering::Relaxed);
        out
    });
    (out, swaps.into_inner())
}

/// Puts the regular file back under `name` if the race left the symlink there.
fn settle(name: &Path, other: &Path) {
    if fs::symlink_metadata(name)
        .expect("name")
        .file_type()
        .is_symlink()
    {
        nix::fcntl::renameat2(
            None,
            name,
            None,
            other,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .expect("exchange back");
    }
}

#[test]
fn a_read_scoped_to_one_root_never_reads_another_through_a_swapped_symlink() {
    let s = setup();
    write_file(&s.docs.join("race"), "public");
    write_file(&s.other.join("secret"), "SECRET-other-root");
    symlink(s.other.join("secret"), s.docs.join("swap")).expect("symlink");
    let mut c = client(&s.home);
    let input = serde_json::json!({ "path": s.docs.join("race") });
    // The control: the same call reads the ordinary file, and a symlink that stays in the
    // token's root still works (loongd resolves it before deciding).
    symlink(s.docs.join("race"), s.docs.join("alias")).expect("symlink");
    for path in [s.docs.join("race"), s.docs.join("alias")] {
        match call(
            &mut c,
            &s.token,
            "file.read",
            serde_json::json!({ "path": path }),
        ) {
            Ended::Answered(v) => assert_eq!(v["content"], "public"),
            other => panic!("control {}: {other:?}", path.display()),
        }
    }
    // One that leads into the other root is denied.
    assert_eq!(
        call(
            &mut c,
            &s.token,
            "file.read",
            serde_json::json!({ "path": s.docs.join("swap") })
        ),
        Ended::Denied
    );
    let (ends, swaps) = while_swapping(&s.docs.join("race"), &s.docs.join("swap"), || {
        (0..RACE_CALLS)
            .map(|_| call(&mut c, &s.token, "file.read", input.clone()))
            .collect::<Vec<_>>()
    });
    let leaks = ends
        .iter()
        .filter(|e| matches!(e, Ended::Answered(v) if v["content"] != "public"))
        .count();
    let count = |f: fn(&Ended) -> bool| ends.iter().filter(|e| f(e)).count();
    let (read, denied, swapped) = (
        count(|e| matches!(e, Ended::Answered(_))),
        count(|e| *e == Ended::Denied),
        count(|e| *e == Ended::Swapped),
    );
    assert_eq!(leaks, 0, "{read} read, {denied} denied, {swapped} refused");
    assert_eq!(read + denied + swapped, RACE_CALLS, "{ends:?}");
    assert!(
        swaps > 0 && denied + swapped > 0,
        "the swapper raced the calls: {swaps} exchanges, {read} read, {denied} denied, {swapped} refused"
    );
    // And the control again once the race is over.
    settle(&s.docs.join("race"), &s.docs.join("swap"));
    match call(&mut c, &s.token, "file.read", input) {
        Ended::Answered(v) => assert_eq!(v["content"], "public"),
        other => panic!("control after the race: {other:?}"),
    }
}

#[test]
fn a_write_scoped_to_one_root_never_lands_in_another() {
    let s = setup();
    let victim = s.elsewhere.join("victim");
    write_file(&victim, "untouched");
    let mut c = client(&s.home);
    let write = |path: &Path| serde_json::json!({ "path": path, "content": "WRITTEN" });
    let edit =
        |path: &Path| serde_json::json!({ "path": path, "old": "untouched", "new": "EDITED" });

    // The last name swapped with a symlink to a file in the other write root.
    let target = s.out.join("target");
    write_file(&target, "untouched");
    symlink(&victim, s.out.join("swap")).expect("symlink");
    // A directory on the path swapped with a symlink to the other write root.
    fs::create_dir(s.out.join("sub")).expect("dir");
    fs::set_permissions(s.out.join("sub"), fs::Permissions::from_mode(0o777)).expect("chmod");
    write_file(&s.out.join("sub/victim"), "untouched");
    symlink(&s.elsewhere, s.out.join("subswap")).expect("symlink");

    // The controls: each call succeeds on the ordinary file.
    for (tool, input) in [
        ("file.write", write(&target)),
        ("file.edit", edit(&s.out.join("sub/victim"))),
    ] {
        assert!(
            matches!(
                call(&mut c, &s.token, tool, input.clone()),
                Ended::Answered(_)
            ),
            "control {tool} {input}"
        );
    }
    write_file(&target, "untouched");
    write_file(&s.out.join("sub/victim"), "untouched");

    let half = RACE_CALLS / 2;
    let races = [
        (target.clone(), s.out.join("swap"), target.clone()),
        (
            s.out.join("sub"),
            s.out.join("subswap"),
            s.out.join("sub/victim"),
        ),
    ];
    for (a, b, path) in &races {
        let (ends, swaps) = while_swapping(a, b, || {
            (0..RACE_CALLS)
                .map(|i| {
                    let (tool, input) = if i < half {
                        ("file.write", write(path))
                    } else {
                        ("file.edit", edit(path))
                    };
                    call(&mut c, &s.token, tool, input)
                })
                .collect::<Vec<_>>()
        });
        // Once the file under the name was written, an edit finds no `untouched` there and
        // fails after its open, which the race was about.
        assert!(ends.iter().all(|e| !matches!(e, Ended::Bad(_))), "{ends:?}");
        assert!(swaps > 0, "the swapper ran");
        settle(a, b);
        assert_eq!(
            fs::read_to_string(&victim).expect("victim"),
            "untouched",
            "a write landed outside the token's root ({} → {})",
            a.display(),
            b.display()
        );
    }
    let names: Vec<String> = fs::read_dir(&s.elsewhere)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["victim"],
        "a file was created outside the token's root"
    );

    // A hard link in the token's root to the other root's file: refused before any byte
    // is written; the same write to a file with one link succeeds.
    fs::hard_link(&victim, s.out.join("hard")).expect("hard link");
    for (tool, input) in [
        ("file.write", write(&s.out.join("hard"))),
        ("file.edit", edit(&s.out.join("hard"))),
    ] {
        match call(&mut c, &s.token, tool, input) {
            Ended::Failed(m) => assert!(m.contains("hard links"), "{tool}: {m}"),
            other => panic!("{tool} through a hard link: {other:?}"),
        }
    }
    assert_eq!(fs::read_to_string(&victim).expect("victim"), "untouched");
    assert!(matches!(
        call(&mut c, &s.token, "file.write", write(&target)),
        Ended::Answered(_)
    ));
}

#[test]
fn paths_with_dot_or_dot_dot_are_refused_as_the_docs_say() {
    let s = setup();
    write_file(&s.docs.join("a.txt"), "public");
    let mut c = client(&s.home);
    let docs = s.docs.display().to_string();
    // The control.
    match call(
        &mut c,
        &s.token,
        "file.read",
        serde_json::json!({ "path": format!("{docs}/a.txt") }),
    ) {
        Ended::Answered(v) => assert_eq!(v["content"], "public"),
        other => panic!("control: {other:?}"),
    }
    for (tool, path) in [
        ("file.read", format!("{docs}/./a.txt")),
        ("file.read", format!("{docs}/.")),
        ("file.read", format!("{docs}/../docs/a.txt")),
        ("file.read", "docs/a.txt".to_string()),
        ("file.write", format!("{}/./new", s.out.display())),
        ("file.edit", format!("{}/sub/../x", s.out.display())),
    ] {
        let input = serde_json::json!({ "path": path, "content": "x", "old": "a", "new": "b" });
        match call(&mut c, &s.token, tool, input) {
            Ended::Bad(m) => assert!(m.contains("without . or .."), "{tool} {path}: {m}"),
            other => panic!("{tool} {path}: {other:?}"),
        }
    }
    assert!(!s.out.join("new").exists());
}

#[test]
fn a_sandbox_run_binds_the_grant_it_decided_not_what_the_name_leads_to_later() {
    // Each run starts a sandbox, so fewer than the tools' calls; each still races.
    const RUNS: usize = 200;
    let s = setup();
    write_file(&s.docs.join("race"), "public");
    write_file(&s.other.join("secret"), "SECRET-other-root");
    // Relative: the spawn helper resolves an absolute one against its own (temporary) root.
    symlink("../other/secret", s.docs.join("swap")).expect("symlink");
    let (race, secret) = (s.docs.join("race"), s.other.join("secret"));
    let run = || {
        let out = s.home.ctl(&[
            "sandbox",
            "run",
            "--token",
            &s.token,
            "--tier",
            "balanced",
            "--read",
            &race.display().to_string(),
            "--",
            "/usr/bin/cat",
            &race.display().to_string(),
            &secret.display().to_string(),
        ]);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    // The control: the granted file is read, the other root is not there.
    let (_, stdout, stderr) = run();
    assert!(
        stdout.contains("public") && !stdout.contains("SECRET"),
        "{stdout} {stderr}"
    );
    let (ends, swaps) = while_swapping(&race, &s.docs.join("swap"), || {
        (0..RUNS).map(|_| run()).collect::<Vec<_>>()
    });
    let leaks = ends.iter().filter(|(_, o, _)| o.contains("SECRET")).count();
    let read = ends.iter().filter(|(_, o, _)| o.contains("public")).count();
    let refused = ends
        .iter()
        .filter(|(c, o, _)| *c != Some(0) && !o.contains("public"))
        .count();
    assert_eq!(
        leaks, 0,
        "{read} read, {refused} refused or denied: {ends:?}"
    );
    assert!(
        swaps > 0 && refused > 0,
        "the swapper raced the runs: {read} read, {refused} refused"
    );
    settle(&race, &s.docs.join("swap"));
    let (_, stdout, stderr) = run();
    assert!(
        stdout.contains("public"),
        "control after the race: {stdout} {stderr}"
    );
}

#[test]
fn a_sandbox_run_never_makes_a_mount_point_through_a_directory_swapped_for_a_symlink() {
    // The spawn helper makes a deeper grant's mount point inside the bind of its parent
    // grant, which is the host's directory: a name on the way swapped for a symlink into the
    // host's root (seen from the helper under /oldroot) must fail the spawn, not make the
    // directory there as root.
    const RUNS: usize = 200;
    let s = setup();
    let victim = s.out.parent().expect("base").join("victim");
    fs::create_dir(&victim).expect("victim");
    let (a, link) = (s.out.join("a"), s.out.join("l"));
    fs::create_dir_all(a.join("b")).expect("nested grant");
    write_file(&a.join("b/f"), "nested");
    symlink(
        Path::new("/oldroot").join(victim.strip_prefix("/").expect("absolute")),
        &link,
    )
    .expect("symlink");
    let nested = a.join("b");
    let run = || {
        let out = s.home.ctl(&[
            "sandbox",
            "run",
            "--token",
            &s.token,
            "--tier",
            "balanced",
            "--write",
            &s.out.display().to_string(),
            "--write",
            &nested.display().to_string(),
            "--",
            "/usr/bin/cat",
            &nested.join("f").display().to_string(),
        ]);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    // The control: the nested grant is mounted and its file read.
    let (code, stdout, stderr) = run();
    assert!(
        code == Some(0) && stdout.contains("nested"),
        "{code:?} {stdout} {stderr}"
    );
    let (ends, swaps) = while_swapping(&a, &link, || (0..RUNS).map(|_| run()).collect::<Vec<_>>());
    let made: Vec<_> = fs::read_dir(&victim)
        .expect("victim")
        .map(|e| e.expect("entry").file_name())
        .collect();
    let read = ends.iter().filter(|(_, o, _)| o.contains("nested")).count();
    let refused = ends.iter().filter(|(c, _, _)| *c != Some(0)).count();
    assert!(
        made.is_empty(),
        "made {made:?} outside the grants ({read} read, {refused} refused)"
    );
    assert!(
        swaps > 0 && refused > 0,
        "the swapper raced the runs: {read} read, {refused} refused"
    );
    settle(&a, &link);
    let (code, stdout, stderr) = run();
    assert!(
        code == Some(0) && stdout.contains("nested"),
        "control after the race: {code:?} {stdout} {stderr}"
    );
}
