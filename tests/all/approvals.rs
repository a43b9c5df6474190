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
    fs::create_dir_all(home.path().join("packs")).expect("packs");
    fs::write(
        home.path().join("packs/careful.toml"),
        "id = \"careful\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"process.exec:echo\"]\napproval = \"always\"\n",
    )
    .expect("pack");
    home.start();
    let out = home.ctl(&[
        "tokens",
        "issue",
        "--pack",
        "careful",
        "--agent",
        "bot",
        "--cap",
        "process.exec:echo",
        "--ttl",
        "1h",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
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
