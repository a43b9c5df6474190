//! The kernel's authority through loongctl: tokens within packs, revocation one by one and by
//! generation, persistence across restarts, the denylist over the operator, shell rules, and
//! bad policy data refused at startup with file, field and problem.

use std::{fs, os::unix::fs::PermissionsExt, time::Duration};

use crate::support::{text, Home};

struct Fixture {
    home: Home,
    data: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let home = Home::new();
    let data = tempfile::Builder::new()
        .prefix("ld")
        .tempdir_in("/tmp")
        .expect("dir");
    fs::set_permissions(data.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(data.path().join("f"), "data\n").expect("file");
    fs::set_permissions(data.path().join("f"), fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    let pack = format!(
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"fs.read:{}\", \"process.exec:cat\", \"process.exec:sh\", \"process.exec:echo\"]\n",
        data.path().display()
    );
    fs::write(home.path().join("packs/t.toml"), pack).expect("pack");
    home.start();
    Fixture { home, data }
}

impl Fixture {
    fn issue(&self, caps: &[&str], ttl: &str) -> std::process::Output {
        let mut a = vec![
            "tokens", "issue", "--pack", "t", "--agent", "bot", "--ttl", ttl,
        ];
        for c in caps {
            a.extend(["--cap", c]);
        }
        self.home.ctl(&a)
    }

    fn cat(&self, token: &str, file: &str) -> std::process::Output {
        let d = self.data.path().display().to_string();
        self.home.ctl(&[
            "sandbox", "run", "--tier", "balanced", "--token", token, "--read", &d, "--",
            "/bin/cat", file,
        ])
    }
}

#[test]
fn tokens_within_packs_revocation_and_restarts() {
    let f = fixture();
    let d = f.data.path().display().to_string();
    let file = format!("{d}/f");
    let out = f.issue(&[&format!("fs.read:{d}"), "process.exec:cat"], "10m");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert_eq!(token.len(), 32, "a 128-bit id in hex: {token}");

    // Allowed within the token; denied (exit 4) for what the token does not grant.
    let ok = f.cat(&token, &file);
    assert_eq!(
        (ok.status.code(), text(&ok.stdout).as_str()),
        (Some(0), "data\n"),
        "{}",
        text(&ok.stderr)
    );
    let outside = f.home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--token",
        &token,
        "--read",
        "/etc",
        "--",
        "/bin/cat",
        "/etc/hostname",
    ]);
    assert_eq!(outside.status.code(), Some(4));
    assert!(
        text(&outside.stderr).contains("fs.read on /etc denied: the token does not grant it"),
        "{}",
        text(&outside.stderr)
    );
    let other_prog = f.home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--token",
        &token,
        "--",
        "/bin/echo",
        "x",
    ]);
    assert_eq!(
        other_prog.status.code(),
        Some(4),
        "echo is in the pack but not in the token"
    );

    // A token beyond its pack is never issued; nor one for an unknown pack.
    let beyond = f.issue(&[&format!("fs.write:{d}")], "10m");
    assert_eq!(beyond.status.code(), Some(2));
    assert!(
        text(&beyond.stderr).contains(&format!("pack `t` does not grant fs.write:{d}")),
        "{}",
        text(&beyond.stderr)
    );
    let unknown_pack = f.home.ctl(&[
        "tokens", "issue", "--pack", "nope", "--agent", "a", "--cap", "fs.read", "--ttl", "1m",
    ]);
    assert_eq!(unknown_pack.status.code(), Some(2));

    // Tokens survive a restart.
    assert!(f.home.ctl(&["daemon", "stop"]).status.success());
    f.home.start();
    assert_eq!(
        f.cat(&token, &file).status.code(),
        Some(0),
        "the token outlived the restart"
    );

    // Revoke one: only it stops working.
    let second = text(
        &f.issue(&[&format!("fs.read:{d}"), "process.exec:cat"], "10m")
            .stdout,
    )
    .trim()
    .to_string();
    assert!(f.home.ctl(&["tokens", "revoke", &token]).status.success());
    let revoked = f.cat(&token, &file);
    assert_eq!(revoked.status.code(), Some(4));
    assert!(
        text(&revoked.stderr).contains("token revoked"),
        "{}",
        text(&revoked.stderr)
    );
    assert_eq!(
        f.cat(&second, &file).status.code(),
        Some(0),
        "the other token still works"
    );

    // Bump the generation: every earlier token of the pack stops; a new one works.
    assert!(f
        .home
        .ctl(&["tokens", "revoke-generation", "--pack", "t"])
        .status
        .success());
    let stale = f.cat(&second, &file);
    assert_eq!(stale.status.code(), Some(4));
    assert!(
        text(&stale.stderr).contains("below its pack's generation"),
        "{}",
        text(&stale.stderr)
    );
    let third = text(
        &f.issue(&[&format!("fs.read:{d}"), "process.exec:cat"], "10m")
            .stdout,
    )
    .trim()
    .to_string();
    assert_eq!(f.cat(&third, &file).status.code(), Some(0));

    // Unknown and expired tokens.
    let unknown = f.cat("00000000000000000000000000000000", &file);
    assert!(
        text(&unknown.stderr).contains("unknown token"),
        "{}",
        text(&unknown.stderr)
    );
    let short = text(
        &f.issue(&[&format!("fs.read:{d}"), "process.exec:cat"], "1s")
            .stdout,
    )
    .trim()
    .to_string();
    std::thread::sleep(Duration::from_millis(1300));
    let expired = f.cat(&short, &file);
    assert_eq!(expired.status.code(), Some(4));
    assert!(
        text(&expired.stderr).contains("token expired"),
        "{}",
        text(&expired.stderr)
    );

    // tokens list shows every state.
    let list: serde_json::Value =
        serde_json::from_slice(&f.home.ctl(&["tokens", "list", "--json"]).stdout).expect("json");
    let state = |id: &str| {
        list.as_array()
            .expect("array")
            .iter()
            .find(|t| t["id"] == id)
            .map(|t| t["state"].clone())
    };
    assert_eq!(state(&token), Some("revoked".into()));
    assert_eq!(state(&second), Some("stale".into()));
    assert_eq!(state(&third), Some("active".into()));
    assert_eq!(state(&short), Some("expired".into()));

    // Every issue, revocation, bump and decision is in the trail, which verifies.
    let kinds = |k: &str| {
        let v: serde_json::Value = serde_json::from_slice(
            &f.home
                .ctl(&["audit", "recent", "--kind", k, "--limit", "1000", "--json"])
                .stdout,
        )
        .expect("json");
        v.as_array().map(Vec::len).unwrap_or(0)
    };
    assert_eq!(kinds("token.issued"), 4);
    assert_eq!(kinds("token.revoked"), 1);
    assert_eq!(kinds("token.generation_bumped"), 1);
    assert!(kinds("policy.decision") >= 12);
    assert!(f.home.ctl(&["audit", "verify"]).status.success());

    // The token's own trail, and decisions summarised per pack.
    let trail: serde_json::Value = serde_json::from_slice(
        &f.home
            .ctl(&["audit", "token-trail", &token, "--json"])
            .stdout,
    )
    .expect("json");
    let kinds: Vec<&str> = trail
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert_eq!(kinds.first(), Some(&"token.issued"), "{kinds:?}");
    assert!(
        kinds.contains(&"policy.decision") && kinds.contains(&"token.revoked"),
        "{kinds:?}"
    );
    let summary: serde_json::Value = serde_json::from_slice(
        &f.home
            .ctl(&["audit", "summary", "--group-by", "pack", "--json"])
            .stdout,
    )
    .expect("json");
    let t = summary
        .as_array()
        .expect("array")
        .iter()
        .find(|g| g["key"] == "t")
        .cloned()
        .expect("pack t");
    assert!(
        t["allowed"].as_u64() >= Some(4) && t["denied"].as_u64() >= Some(2),
        "{t}"
    );
    assert_eq!(
        f.home
            .ctl(&["audit", "summary", "--group-by", "colour"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn the_denylist_and_shell_rules_bind_the_operator_too() {
    let f = fixture();
    // Positive control: the operator may run a plain shell command.
    assert_eq!(
        f.home
            .ctl(&[
                "sandbox",
                "run",
                "--tier",
                "balanced",
                "--",
                "/bin/sh",
                "-c",
                "echo hi | cat"
            ])
            .status
            .code(),
        Some(0)
    );
    // A denylisted program hidden inside the command line.
    let dd = f.home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--",
        "/bin/sh",
        "-c",
        "echo hi; x=$(dd if=/dev/zero count=1 of=/dev/null)",
    ]);
    assert_eq!(dd.status.code(), Some(4));
    assert!(
        text(&dd.stderr).contains("shell rules: the command line runs dd: dd is denylisted"),
        "{}",
        text(&dd.stderr)
    );
    // A denylisted path, even for the operator pack that grants everything.
    let shadow = f.home.ctl(&[
        "policy",
        "decide",
        "--cap",
        "fs.read",
        "--target",
        "/etc/shadow",
        "--json",
    ]);
    assert_eq!(shadow.status.code(), Some(4));
    let v: serde_json::Value = serde_json::from_slice(&shadow.stdout).expect("json");
    assert_eq!(v["reason"], "denylisted: path /etc/shadow is denylisted");
    // loongd's own home is always denylisted.
    let home = f.home.path().join("audit.db").display().to_string();
    assert_eq!(
        f.home
            .ctl(&["policy", "decide", "--cap", "fs.read", "--target", &home])
            .status
            .code(),
        Some(4)
    );
    assert_eq!(
        f.home
            .ctl(&[
                "policy",
                "decide",
                "--cap",
                "fs.read",
                "--target",
                "/etc/hostname"
            ])
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn bad_policy_data_stops_loongd_with_every_problem_named() {
    let home = Home::new();
    fs::create_dir_all(home.path().join("packs")).expect("dir");
    fs::write(home.path().join("packs/bad.toml"), "id = \"bad\"\ndomain = \"d\"\nversion = \"1\"\nextra = 1\ngrants = [\"fs.read:relative\", \"no.such\"]\n").expect("bad pack");
    fs::write(
        home.path().join("packs/dup.toml"),
        "id = \"operator\"\ndomain = \"d\"\nversion = \"1\"\ngrants = []\n",
    )
    .expect("dup pack");
    let out = home.ctl(&["daemon", "start"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let bad = home.path().join("packs/bad.toml").display().to_string();
    let dup = home.path().join("packs/dup.toml").display().to_string();
    for want in [
        format!("{bad}:4: extra: unknown key"),
        format!("{bad}:5: grants: the scope of `fs.read:relative` must be an absolute path"),
        format!("{bad}:5: grants: unknown capability `no.such`"),
        format!("{dup}: id: pack `operator` is already defined"),
    ] {
        assert!(err.contains(&want), "missing `{want}` in:\n{err}");
    }
}
