//! Approval flows through loongctl: approve once, deny, timeout, a full-access window used up
//! by its count and by its expiry, the denylist under full access, and risk scoring.

use std::{
    fs,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::support::{bin, text, wait_until, Home};

fn home_with(timeout_ms: u64) -> (Home, String) {
    let home = Home::with_config(&format!("[approvals]\ntimeout_ms = {timeout_ms}\n"));
    let token = crate::support::start_with_careful_token(&home, "process.exec:echo");
    (home, token)
}

fn run(home: &Home, args: &[&str]) -> Child {
    Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["sandbox", "run", "--tier", "balanced"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loongctl")
}

fn pending(home: &Home) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&home.ctl(&["approvals", "list", "--json"]).stdout)
            .unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["state"] == "pending")
                .filter_map(|x| x["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for exactly one pending approval and returns its id.
fn one_pending(home: &Home) -> String {
    let mut id = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || match pending(home).as_slice() {
            [one] => {
                id = one.clone();
                true
            }
            _ => false,
        }),
        "no pending approval appeared"
    );
    id
}

fn finish(c: Child) -> (Option<i32>, String, String) {
    let out = c.wait_with_output().expect("wait");
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

fn kinds(home: &Home, kind: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(
        &home
            .ctl(&[
                "audit", "recent", "--kind", kind, "--limit", "1000", "--json",
            ])
            .stdout,
    )
    .expect("json");
    v.as_array().cloned().unwrap_or_default()
}

#[test]
fn approve_once_deny_and_the_audit_of_both() {
    let (home, token) = home_with(20_000);
    let child = run(
        &home,
        &["--token", &token, "--", "/bin/echo", "approved-run"],
    );
    let id = one_pending(&home);
    assert!(home.ctl(&["approvals", "approve", &id]).status.success());
    let (code, out, err) = finish(child);
    assert_eq!((code, out.as_str()), (Some(0), "approved-run\n"), "{err}");
    assert!(err.contains(&format!("approval {id} pending")), "{err}");

    let child = run(&home, &["--token", &token, "--", "/bin/echo", "denied-run"]);
    let id2 = one_pending(&home);
    assert!(home.ctl(&["approvals", "deny", &id2]).status.success());
    let (code, out, err) = finish(child);
    assert_eq!((code, out.as_str()), (Some(4), ""));
    assert!(
        err.contains(&format!("approval {id2} denied by uid:")),
        "{err}"
    );
    // Resolving twice is refused.
    assert_eq!(
        home.ctl(&["approvals", "approve", &id2]).status.code(),
        Some(1)
    );

    assert_eq!(kinds(&home, "approval.requested").len(), 2);
    let resolved = kinds(&home, "approval.resolved");
    assert_eq!(resolved.len(), 2);
    let uid = format!("uid:{}", nix::unistd::Uid::effective().as_raw());
    assert!(
        resolved
            .iter()
            .all(|r| r["detail"]["resolver"] == uid.as_str()),
        "{resolved:?}"
    );
    assert!(home.ctl(&["audit", "verify"]).status.success());
}

#[test]
fn unanswered_approvals_time_out_as_denials() {
    let (home, token) = home_with(1_000);
    let (code, _, err) = finish(run(&home, &["--token", &token, "--", "/bin/echo", "x"]));
    assert_eq!(code, Some(5), "{err}");
    assert!(
        err.contains("was not answered within 1000 ms: denied"),
        "{err}"
    );
    assert_eq!(kinds(&home, "approval.expired").len(), 1);
    assert!(pending(&home).is_empty());
}

#[test]
fn full_access_windows_are_bounded_by_uses_and_expiry_and_never_beat_the_denylist() {
    let (home, token) = home_with(20_000);
    // Approving with a window of two uses for the pack.
    let first = run(&home, &["--token", &token, "--", "/bin/echo", "first"]);
    let id = one_pending(&home);
    assert!(home
        .ctl(&[
            "approvals",
            "approve",
            &id,
            "--full-access",
            "--ttl",
            "1h",
            "--uses",
            "2",
            "--pack",
            "careful"
        ])
        .status
        .success());
    assert_eq!(finish(first).0, Some(0));
    for n in 0..2 {
        let (code, out, err) = finish(run(
            &home,
            &["--token", &token, "--", "/bin/echo", "windowed"],
        ));
        assert_eq!(
            (code, out.as_str()),
            (Some(0), "windowed\n"),
            "use {n}: {err}"
        );
    }
    // Used up: the next one waits again.
    let third = run(&home, &["--token", &token, "--", "/bin/echo", "third"]);
    let id = one_pending(&home);
    assert!(home.ctl(&["approvals", "deny", &id]).status.success());
    assert_eq!(finish(third).0, Some(4));

    // A window that expires.
    let fourth = run(&home, &["--token", &token, "--", "/bin/echo", "fourth"]);
    let id = one_pending(&home);
    assert!(home
        .ctl(&[
            "approvals",
            "approve",
            &id,
            "--full-access",
            "--ttl",
            "1s",
            "--uses",
            "100"
        ])
        .status
        .success());
    assert_eq!(finish(fourth).0, Some(0));
    std::thread::sleep(Duration::from_millis(1200));
    let fifth = run(&home, &["--token", &token, "--", "/bin/echo", "fifth"]);
    let id = one_pending(&home);
    assert!(home.ctl(&["approvals", "deny", &id]).status.success());
    assert_eq!(finish(fifth).0, Some(4));

    // Under a wide-open window for every pack, a risky operator command is approved by the
    // window, and a denylisted program is still denied.
    let sixth = run(&home, &["--token", &token, "--", "/bin/echo", "sixth"]);
    let id = one_pending(&home);
    assert!(home
        .ctl(&[
            "approvals",
            "approve",
            &id,
            "--full-access",
            "--ttl",
            "1h",
            "--uses",
            "100"
        ])
        .status
        .success());
    assert_eq!(finish(sixth).0, Some(0));
    let (code, _, err) = finish(run(
        &home,
        &[
            "--",
            "/bin/sh",
            "-c",
            "rm -rf /tmp/loong-approvals-nothing-here",
        ],
    ));
    assert_eq!(
        code,
        Some(0),
        "the window approves a high-risk command: {err}"
    );
    let (code, _, err) = finish(run(
        &home,
        &[
            "--",
            "/bin/sh",
            "-c",
            "echo hi; dd if=/dev/zero count=1 of=/dev/null",
        ],
    ));
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("dd is denylisted"), "{err}");
    assert!(
        pending(&home).is_empty(),
        "nothing waits: the denylist answered first"
    );
}

#[test]
fn risky_operator_commands_need_approval() {
    let (home, _) = home_with(20_000);
    // Positive control: an ordinary command runs at once.
    assert_eq!(
        finish(run(&home, &["--", "/bin/sh", "-c", "echo calm"])).0,
        Some(0)
    );
    let risky = run(
        &home,
        &[
            "--",
            "/bin/sh",
            "-c",
            "rm -rf /tmp/loong-approvals-nothing-here",
        ],
    );
    let id = one_pending(&home);
    let shown: serde_json::Value =
        serde_json::from_slice(&home.ctl(&["approvals", "show", &id, "--json"]).stdout)
            .expect("json");
    assert_eq!(shown["score"], 11);
    assert_eq!(shown["pack"], "operator");
    assert!(home.ctl(&["approvals", "deny", &id]).status.success());
    assert_eq!(finish(risky).0, Some(4));
    let dry = home.ctl(&[
        "policy",
        "decide",
        "--cap",
        "process.exec",
        "--target",
        "rm",
    ]);
    assert_eq!(
        dry.status.code(),
        Some(0),
        "the program alone is below the threshold"
    );
}

/// Issues a token in `pack` for `agent`; its secret.
fn issue(home: &Home, pack: &str, agent: &str, caps: &[&str], ttl: &str) -> String {
    let mut a = vec![
        "tokens", "issue", "--pack", pack, "--agent", agent, "--ttl", ttl,
    ];
    for c in caps {
        a.extend(["--cap", c]);
    }
    let out = home.ctl(&a);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

fn show(home: &Home, id: &str) -> serde_json::Value {
    serde_json::from_slice(&home.ctl(&["approvals", "show", id, "--json"]).stdout).expect("json")
}

#[test]
fn an_approval_never_outlives_the_token_that_asked() {
    let (home, token) = home_with(20_000);
    // Revoked while its request waits: the request is denied at once, by loongd, audited.
    let child = run(&home, &["--token", &token, "--", "/bin/echo", "revoked"]);
    let id = one_pending(&home);
    let asked = show(&home, &id);
    let tok = asked["token"]
        .as_str()
        .expect("the token's public id")
        .to_string();
    assert!(
        tok.starts_with("tok_") && asked["agent"] == "bot",
        "{asked}"
    );
    let requested = kinds(&home, "approval.requested");
    assert_eq!(
        (
            &requested[0]["detail"]["token"],
            &requested[0]["detail"]["agent"]
        ),
        (&serde_json::json!(tok), &serde_json::json!("bot"))
    );
    assert!(home.ctl(&["tokens", "revoke", &tok]).status.success());
    let (code, out, err) = finish(child);
    assert_eq!((code, out.as_str()), (Some(4), ""), "{err}");
    assert!(
        err.contains(&format!(
            "approval {id} denied by loongd: its token {tok} is no longer valid: token revoked"
        )),
        "{err}"
    );
    assert_eq!(
        home.ctl(&["approvals", "approve", &id]).status.code(),
        Some(1),
        "no longer pending"
    );
    let resolved = kinds(&home, "approval.resolved");
    assert!(
        resolved
            .iter()
            .any(|r| r["detail"]["approval"] == id.as_str()
                && r["detail"]["state"] == "denied"
                && r["detail"]["resolver"] == "loongd"
                && r["detail"]["reason"]
                    .as_str()
                    .is_some_and(|w| w.contains("token revoked"))),
        "{resolved:?}"
    );

    // Expired while it waits: approving it is refused and turns it into a denial.
    let issued = std::time::Instant::now();
    let short = issue(&home, "careful", "bot", &["process.exec:echo"], "4s");
    let child = run(&home, &["--token", &short, "--", "/bin/echo", "expired"]);
    let id = one_pending(&home);
    std::thread::sleep(Duration::from_millis(4300).saturating_sub(issued.elapsed()));
    let late = home.ctl(&["approvals", "approve", &id]);
    assert_eq!(late.status.code(), Some(4), "{}", text(&late.stderr));
    assert!(
        text(&late.stderr).contains(&format!("approval {id} cannot be approved: its token"))
            && text(&late.stderr).contains("token expired"),
        "{}",
        text(&late.stderr)
    );
    let (code, out, err) = finish(child);
    assert_eq!((code, out.as_str()), (Some(4), ""), "{err}");
    assert!(
        err.contains("denied by loongd") && err.contains("token expired"),
        "{err}"
    );

    // Outlived by its pack's generation while it waits.
    let live = issue(&home, "careful", "bot", &["process.exec:echo"], "1h");
    let child = run(&home, &["--token", &live, "--", "/bin/echo", "stale"]);
    let id = one_pending(&home);
    assert!(home
        .ctl(&["tokens", "revoke-generation", "--pack", "careful"])
        .status
        .success());
    let (code, out, err) = finish(child);
    assert_eq!((code, out.as_str()), (Some(4), ""), "{err}");
    assert!(
        err.contains(&format!("approval {id} denied by loongd"))
            && err.contains("below its pack's generation"),
        "{err}"
    );

    // Positive control: a live token's request, approved, runs.
    let fresh = issue(&home, "careful", "bot", &["process.exec:echo"], "1h");
    let child = run(&home, &["--token", &fresh, "--", "/bin/echo", "fresh"]);
    let id = one_pending(&home);
    assert!(home.ctl(&["approvals", "approve", &id]).status.success());
    let (code, out, err) = finish(child);
    assert_eq!((code, out.as_str()), (Some(0), "fresh\n"), "{err}");
    assert!(home.ctl(&["audit", "verify"]).status.success());
}

fn spawn_ctl(home: &Home, args: &[&str]) -> Child {
    Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loongctl")
}

#[test]
fn approvers_see_the_whole_effect_escaped() {
    let (home, _) = home_with(20_000);
    // A risky command whose tail hides itself on a terminal: an escape that clears the line,
    // a carriage return, a comment.
    let cmd = "rm -rf /tmp/loong-approvals-nothing-here # \u{1b}[2K\rall clear";
    let risky = run(&home, &["--", "/bin/sh", "-c", cmd]);
    let id = one_pending(&home);
    let shown = show(&home, &id);
    assert_eq!(
        shown["argv"],
        serde_json::json!(["/bin/sh", "-c", cmd]),
        "{shown}"
    );
    let requested = kinds(&home, "approval.requested");
    assert_eq!(requested[0]["detail"]["argv"][2], cmd);
    for view in [
        home.ctl(&["approvals", "show", &id]),
        home.ctl(&["approvals", "list"]),
    ] {
        let out = text(&view.stdout);
        assert!(
            out.contains(
                "command: \"/bin/sh\" \"-c\" \"rm -rf /tmp/loong-approvals-nothing-here # \\x1b[2K\\rall clear\""
            ),
            "{out}"
        );
        assert!(
            !out.contains('\u{1b}') && !out.contains('\r'),
            "raw control characters: {out:?}"
        );
    }
    assert!(home.ctl(&["approvals", "deny", &id]).status.success());
    assert_eq!(finish(risky).0, Some(4));
}

/// `approvals list --json` and `show --json` print a requester's C1 control and bidi
/// override as JSON escapes, never raw (a terminal acts on both, and serde writes them raw
/// in a string); the control: the JSON still holds them, and the plain views escape them too.
#[test]
fn approvers_see_the_json_of_an_effect_escaped() {
    let (home, _) = home_with(20_000);
    let cmd = "rm -rf /tmp/loong-approvals-nothing-here # \u{9b}2K\u{202e}txt.exe";
    let risky = run(&home, &["--", "/bin/sh", "-c", cmd]);
    let id = one_pending(&home);
    for args in [
        vec!["approvals", "list", "--json"],
        vec!["approvals", "show", id.as_str(), "--json"],
        vec!["approvals", "list"],
    ] {
        let out = text(&home.ctl(&args).stdout);
        assert!(
            !out.contains('\u{9b}') && !out.contains('\u{202e}'),
            "{args:?}: raw controls in {out:?}"
        );
    }
    assert_eq!(show(&home, &id)["argv"][2], cmd);
    assert!(home.ctl(&["approvals", "deny", &id]).status.success());
    assert_eq!(finish(risky).0, Some(4));
}

#[test]
fn approvers_see_a_tool_call_with_its_input_previewed_and_digested() {
    let dir = tempfile::Builder::new()
        .prefix("lap")
        .tempdir_in("/tmp")
        .expect("dir");
    let d = dir.path().display().to_string();
    let home = Home::with_config(&format!(
        "[approvals]\ntimeout_ms = 20000\n[builtins]\nwrite_roots = [\"{d}\"]\nworkspace = \"{d}\"\n"
    ));
    fs::create_dir_all(home.path().join("packs")).expect("packs");
    fs::write(
        home.path().join("packs/writers.toml"),
        format!("id = \"writers\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"process.exec\", \"fs.write:{d}\"]\napproval = \"always\"\n"),
    )
    .expect("pack");
    home.start();
    let token = issue(
        &home,
        "writers",
        "bot",
        &["process.exec", &format!("fs.write:{d}")],
        "1h",
    );

    // shell.exec: the full command line, and the tool with its input.
    let input = serde_json::json!({ "command": "rm -rf ./x # \u{1b}]0;title\u{7}" }).to_string();
    let child = spawn_ctl(
        &home,
        &["invoke", "shell.exec", "--token", &token, "--input", &input],
    );
    let id = one_pending(&home);
    let shown = show(&home, &id);
    assert_eq!(
        shown["argv"],
        serde_json::json!(["/bin/sh", "-c", "rm -rf ./x # \u{1b}]0;title\u{7}"]),
        "{shown}"
    );
    assert_eq!(
        (
            &shown["tool"],
            &shown["input_preview"],
            &shown["input_truncated"]
        ),
        (&"shell.exec".into(), &input.as_str().into(), &false.into()),
        "{shown}"
    );
    let out = text(&home.ctl(&["approvals", "show", &id]).stdout);
    assert!(
        out.contains("\\x1b]0;title\\x07") && !out.contains('\u{1b}'),
        "{out:?}"
    );
    assert!(home.ctl(&["approvals", "deny", &id]).status.success());
    assert_eq!(finish(child).0, Some(4));

    // file.write with a large input: the path, a bounded preview that says it was cut, and
    // the digest and size of the whole input.
    let path = format!("{d}/out.txt");
    let content = format!("\u{1b}[2J{}", "x".repeat(3000));
    let input = serde_json::json!({ "path": path, "content": content }).to_string();
    let child = spawn_ctl(
        &home,
        &["invoke", "file.write", "--token", &token, "--input", &input],
    );
    let id = one_pending(&home);
    let shown = show(&home, &id);
    let sha = {
        let mut c = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sha256sum");
        std::io::Write::write_all(&mut c.stdin.take().expect("stdin"), input.as_bytes())
            .expect("write");
        let out = c.wait_with_output().expect("sha256sum");
        text(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(shown["target"], path.as_str());
    assert_eq!(shown["tool"], "file.write");
    assert_eq!(shown["input_bytes"], input.len());
    assert_eq!(shown["input_sha256"], sha.as_str());
    assert_eq!(shown["input_truncated"], true);
    assert_eq!(shown["input_preview"], &input[..1024]);
    let out = text(&home.ctl(&["approvals", "show", &id]).stdout);
    assert!(
        out.contains(&format!("cut: the first 1024 of {} bytes", input.len()))
            && out.contains(&sha)
            && !out.contains('\u{1b}'),
        "{out:?}"
    );
    assert!(home.ctl(&["approvals", "deny", &id]).status.success());
    assert_eq!(finish(child).0, Some(4));
    assert!(!std::path::Path::new(&path).exists());

    // A path a sandbox run asks for is shown with the command line that will use it.
    let child = run(
        &home,
        &[
            "--token",
            &token,
            "--write",
            &d,
            "--",
            "/bin/echo",
            "writes",
        ],
    );
    let exec = one_pending(&home);
    assert!(home.ctl(&["approvals", "approve", &exec]).status.success());
    let mut write = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            write = pending(&home).into_iter().next().unwrap_or_default();
            !write.is_empty()
        }),
        "the write waits for its own approval"
    );
    let shown = show(&home, &write);
    assert_eq!(
        (&shown["capability"], &shown["target"], &shown["argv"]),
        (
            &"fs.write".into(),
            &d.as_str().into(),
            &serde_json::json!(["/bin/echo", "writes"])
        ),
        "{shown}"
    );
    assert!(home.ctl(&["approvals", "deny", &write]).status.success());
    assert_eq!(finish(child).0, Some(4));
}

#[test]
fn an_approver_needs_control_approvals_and_is_never_the_requester() {
    let home = Home::with_config("[approvals]\ntimeout_ms = 20000\n");
    fs::create_dir_all(home.path().join("packs")).expect("packs");
    fs::write(
        home.path().join("packs/ops.toml"),
        "id = \"ops\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"process.exec:sh\", \"process.exec:rm\", \"control.approvals\"]\napproval = \"on-high-risk\"\n",
    )
    .expect("pack");
    fs::write(
        home.path().join("packs/other.toml"),
        "id = \"other\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"control.approvals\"]\napproval = \"never\"\n",
    )
    .expect("pack");
    home.start();
    let caps = ["process.exec:sh", "process.exec:rm", "control.approvals"];
    let requester = issue(&home, "ops", "bot", &caps, "1h");
    let same_agent = issue(&home, "ops", "bot", &["control.approvals"], "1h");
    // The same agent under another spelling: a capital and a zero-width space.
    let same_agent_spelled = issue(&home, "ops", "Bot\u{200b}", &["control.approvals"], "1h");
    let no_grant = issue(&home, "ops", "carol", &["process.exec:sh"], "1h");
    let reviewer = issue(&home, "ops", "alice", &["control.approvals"], "1h");
    let outsider = issue(&home, "other", "dave", &["control.approvals"], "1h");
    let risky = [
        "--token",
        &requester,
        "--",
        "/bin/sh",
        "-c",
        "rm -rf /tmp/loong-approvals-nothing-here",
    ];
    let child = run(&home, &risky);
    let id = one_pending(&home);
    let refused = |token: &str, want: &str| {
        for verb in ["approve", "deny"] {
            let out = home.ctl(&["approvals", verb, &id, "--token", token]);
            assert_eq!(out.status.code(), Some(4), "{verb}: {}", text(&out.stderr));
            assert!(
                text(&out.stderr).contains(want),
                "{verb}: {}",
                text(&out.stderr)
            );
        }
    };
    refused(&requester, "the same token cannot resolve it");
    refused(
        &same_agent,
        "requested by agent bot; the same agent (bot) cannot resolve it",
    );
    refused(
        &same_agent_spelled,
        "requested by agent bot; the same agent (Bot\\u{200b}) cannot resolve it",
    );
    refused(&no_grant, "control.approvals on");
    refused(&no_grant, "the token does not grant it");
    refused(
        &outsider,
        "a token of pack other resolves only its own pack's requests",
    );
    // A window is the operator's alone.
    let window = home.ctl(&[
        "approvals",
        "approve",
        &id,
        "--token",
        &reviewer,
        "--full-access",
        "--ttl",
        "1h",
        "--uses",
        "3",
    ]);
    assert_eq!(window.status.code(), Some(2), "{}", text(&window.stderr));
    assert_eq!(pending(&home), vec![id.clone()], "still waiting");
    // Positive control: another agent's token that holds control.approvals.
    let ok = home.ctl(&["approvals", "approve", &id, "--token", &reviewer]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let (code, _, err) = finish(child);
    assert_eq!(code, Some(0), "{err}");
    let resolved = kinds(&home, "approval.resolved");
    assert!(
        resolved[0]["detail"]["resolver"]
            .as_str()
            .is_some_and(|r| r.contains("agent:alice")),
        "{resolved:?}"
    );
    let refusals = kinds(&home, "policy.decision")
        .into_iter()
        .filter(|r| {
            r["detail"]["capability"] == "control.approvals" && r["detail"]["allowed"] == false
        })
        .count();
    assert_eq!(refusals, 12, "every refusal is audited");
    // The operator, whose pack grants control.approvals, still resolves; a token may not
    // resolve the operator's own requests (another pack).
    let child = run(&home, &risky);
    let id = one_pending(&home);
    let theirs = run(
        &home,
        &[
            "--",
            "/bin/sh",
            "-c",
            "rm -rf /tmp/loong-approvals-nothing-here",
        ],
    );
    let mut both = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        both = pending(&home);
        both.len() == 2
    }));
    let operators = both
        .iter()
        .find(|p| **p != id)
        .expect("the operator's request")
        .clone();
    let out = home.ctl(&["approvals", "approve", &operators, "--token", &reviewer]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(home.ctl(&["approvals", "deny", &id]).status.success());
    assert!(home
        .ctl(&["approvals", "deny", &operators])
        .status
        .success());
    assert_eq!(finish(child).0, Some(4));
    assert_eq!(finish(theirs).0, Some(4));
}

#[test]
fn a_request_too_large_to_show_is_denied_and_never_stops_the_list() {
    let (home, token) = home_with(20_000);
    // A megabyte of arguments (8 of the kernel's longest): an approver could not be shown
    // it whole, and its page would pass the frame limit.
    let big = "a".repeat(131_000);
    let mut args: Vec<&str> = vec!["--token", &token, "--", "/bin/echo"];
    args.extend(std::iter::repeat_n(big.as_str(), 8));
    args.push("tail");
    let (code, _, err) = finish(run(&home, &args));
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("denied without asking"), "{err}");
    assert!(pending(&home).is_empty(), "nothing was put to an approver");
    // Positive control: a request an approver can read waits for one.
    let child = run(&home, &["--token", &token, "--", "/bin/echo", &big]);
    let id = one_pending(&home);
    assert!(home.ctl(&["approvals", "deny", &id]).status.success());
    assert_eq!(finish(child).0, Some(4));

    // A request stored larger than a page (written into the table while loongd was stopped)
    // is listed with its command line replaced by a note, and the list goes on.
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    {
        let db = rusqlite::Connection::open(home.path().join("state.db")).expect("state.db");
        let effect = serde_json::json!({ "argv": vec![big.as_str(); 9] }).to_string();
        db.execute(
            "INSERT INTO approvals (id, created_ms, deadline_ms, state, actor, pack, capability,
             target, score, reasons, effect) VALUES ('ap-huge', 1, 2, 'expired', 'uid:0',
             'careful', 'process.exec', 'echo', 0, 'test', ?1)",
            [effect],
        )
        .expect("huge approval");
    }
    home.start();
    let out = home.ctl(&["approvals", "list"]);
    let listed = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        listed.contains("ap-huge") && listed.contains("too large to list") && listed.contains(&id),
        "{}",
        &listed[..listed.len().min(2000)]
    );
}

/// A run waiting for its approval when loongd stops does not hold the stop (nor is it waited
/// for): it is refused, never started, and its refusal is in the trail before
/// `daemon.stopped`.
#[test]
fn a_run_waiting_for_its_approval_when_loongd_stops_is_refused_and_recorded() {
    let (home, token) = home_with(60_000);
    let child = run(&home, &["--token", &token, "--", "/bin/echo", "never-run"]);
    one_pending(&home);
    let asked = std::time::Instant::now();
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    let took = asked.elapsed();
    let (_, out, err) = finish(child);
    assert!(!out.contains("never-run"), "{out}{err}");
    assert!(took < Duration::from_secs(4), "the stop took {took:?}");
    home.start();
    let refused = kinds(&home, "sandbox.refused");
    let r = refused
        .iter()
        .find(|r| r["detail"]["request"]["args"] == serde_json::json!(["never-run"]))
        .unwrap_or_else(|| panic!("no refusal: {refused:?}\n{}", home.log()));
    let stopped = kinds(&home, "daemon.stopped");
    let stop = stopped
        .iter()
        .filter_map(|s| s["seq"].as_u64())
        .min()
        .expect("daemon.stopped");
    assert!(r["seq"].as_u64() < Some(stop), "{r} after {stopped:?}");
    assert!(kinds(&home, "sandbox.spawned")
        .iter()
        .all(|s| s["detail"]["request"]["args"] != serde_json::json!(["never-run"])));
}
