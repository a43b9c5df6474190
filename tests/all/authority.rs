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

    /// Issues a token; its secret and public id.
    fn issued(&self, caps: &[&str], ttl: &str) -> (String, String) {
        let mut a = vec![
            "tokens", "issue", "--pack", "t", "--agent", "bot", "--ttl", ttl, "--json",
        ];
        for c in caps {
            a.extend(["--cap", c]);
        }
        let out = self.home.ctl(&a);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        (
            v["secret"].as_str().expect("secret").to_string(),
            v["id"].as_str().expect("id").to_string(),
        )
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
    // The plain answer is the secret alone (for --token); the public id goes to stderr.
    let token = text(&out.stdout).trim().to_string();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(
        token.strip_prefix("loong_").is_some_and(|h| hex(h, 64)),
        "a 256-bit secret: {token}"
    );
    let token_id = text(&out.stderr)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(
        token_id.strip_prefix("tok_").is_some_and(|h| hex(h, 32)),
        "a 128-bit public id: {}",
        text(&out.stderr)
    );

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
    let (second, second_id) = f.issued(&[&format!("fs.read:{d}"), "process.exec:cat"], "10m");
    assert_eq!(
        f.home.ctl(&["tokens", "revoke", &token]).status.code(),
        Some(2),
        "revocation takes the public id; loongctl does not send the secret"
    );
    assert!(f
        .home
        .ctl(&["tokens", "revoke", &token_id])
        .status
        .success());
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
    let (third, third_id) = f.issued(&[&format!("fs.read:{d}"), "process.exec:cat"], "10m");
    assert_eq!(f.cat(&third, &file).status.code(), Some(0));

    // Unknown and expired tokens.
    let unknown = f.cat("00000000000000000000000000000000", &file);
    assert!(
        text(&unknown.stderr).contains("unknown token"),
        "{}",
        text(&unknown.stderr)
    );
    // The public id is no bearer credential.
    let unknown = f.cat(&third_id, &file);
    assert!(
        text(&unknown.stderr).contains("unknown token"),
        "{}",
        text(&unknown.stderr)
    );
    let (short, short_id) = f.issued(&[&format!("fs.read:{d}"), "process.exec:cat"], "1s");
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
    assert_eq!(state(&token_id), Some("revoked".into()));
    assert_eq!(state(&second_id), Some("stale".into()));
    assert_eq!(state(&third_id), Some("active".into()));
    assert_eq!(state(&short_id), Some("expired".into()));
    assert_eq!(state(&token), None, "a secret is never listed");

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
            .ctl(&["audit", "token-trail", &token_id, "--json"])
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

/// Every place a run's words end up: the trail (export and the JSONL lane), syslog, the
/// daemon's log, the state database's files, and what loongctl printed.
fn everything_written(
    home: &Home,
    export: String,
    jsonl: &std::path::Path,
    syslog: &[String],
) -> Vec<(String, String)> {
    let mut out = vec![
        ("audit export".to_string(), export),
        (
            "jsonl lane".to_string(),
            fs::read_to_string(jsonl).unwrap_or_default(),
        ),
        ("syslog".to_string(), syslog.join("\n")),
        ("daemon log".to_string(), home.log()),
    ];
    for name in ["state.db", "state.db-wal", "audit.db", "audit.db-wal"] {
        let bytes = fs::read(home.path().join(name)).unwrap_or_default();
        out.push((
            name.to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    out
}

#[test]
fn bearer_secrets_never_reach_the_trail_logs_exports_or_errors() {
    let dir = tempfile::Builder::new()
        .prefix("lsec")
        .tempdir_in("/tmp")
        .expect("dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let data = dir.path().join("data");
    fs::create_dir(&data).expect("data");
    fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(data.join("f"), "data\n").expect("file");
    fs::set_permissions(data.join("f"), fs::Permissions::from_mode(0o644)).expect("chmod");
    let jsonl = dir.path().join("audit.jsonl");
    let sock = dir.path().join("log.sock");
    let syslog = std::os::unix::net::UnixDatagram::bind(&sock).expect("syslog socket");
    syslog
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    // Drained as it comes: a datagram socket's queue is short, and a full one stalls loongd.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drain = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut messages = Vec::new();
            let mut buf = [0u8; 65536];
            loop {
                match syslog.recv(&mut buf) {
                    Ok(n) => messages.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Err(_) if done.load(std::sync::atomic::Ordering::SeqCst) => return messages,
                    Err(_) => {}
                }
            }
        })
    };
    let d = data.display().to_string();
    let home = Home::with_config(&format!(
        "[audit]\njsonl_file = \"{}\"\nsyslog = true\nsyslog_socket = \"{}\"\n[builtins]\nread_roots = [\"{d}\"]\n",
        jsonl.display(),
        sock.display()
    ));
    fs::create_dir_all(home.path().join("packs")).expect("packs");
    fs::write(
        home.path().join("packs/t.toml"),
        format!("id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"fs.read:{d}\", \"process.exec:cat\", \"process.exec:echo\"]\napproval = \"never\"\n"),
    )
    .expect("pack");
    home.start_env(&[("RUST_LOG", "trace")]);
    let issued = home.ctl(&[
        "tokens",
        "issue",
        "--pack",
        "t",
        "--agent",
        "bot",
        "--cap",
        &format!("fs.read:{d}"),
        "--cap",
        "process.exec:cat",
        "--ttl",
        "10m",
        "--json",
    ]);
    assert!(issued.status.success(), "{}", text(&issued.stderr));
    let v: serde_json::Value = serde_json::from_slice(&issued.stdout).expect("json");
    let (secret, id) = (
        v["secret"].as_str().expect("secret").to_string(),
        v["id"].as_str().expect("id").to_string(),
    );
    assert_ne!(secret, id);

    // Use it every way a token is used: allowed, denied, a dry run, a tool call, after its
    // revocation; and present a wrong secret.
    let file = format!("{d}/f");
    let mut printed = Vec::new();
    let mut ctl = |args: &[&str]| {
        let out = home.ctl(args);
        let both = format!("{}{}", text(&out.stdout), text(&out.stderr));
        printed.push(both.clone());
        assert_ne!(out.status.code(), Some(1), "loongctl {args:?}: {both}");
        out.status.code()
    };
    let run = |extra: &[&str]| -> Vec<String> {
        [
            "sandbox", "run", "--tier", "balanced", "--token", &secret, "--read", &d, "--",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let ok = run(&["/bin/cat", &file]);
    let ok: Vec<&str> = ok.iter().map(String::as_str).collect();
    let echo = run(&["/bin/echo", "x"]);
    let echo: Vec<&str> = echo.iter().map(String::as_str).collect();
    assert_eq!(ctl(&ok), Some(0));
    assert_eq!(ctl(&echo), Some(4));
    // The secret can stay out of the process list: LOONG_TOKEN instead of --token.
    let by_env = [
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--",
        "/bin/echo",
        "x",
    ];
    assert_eq!(home.ctl(&by_env).status.code(), Some(0), "the operator may");
    let env = home.ctl_env(&by_env, &[("LOONG_TOKEN", &secret)]);
    assert_eq!(env.status.code(), Some(4), "{}", text(&env.stderr));
    assert!(!format!("{}{}", text(&env.stdout), text(&env.stderr)).contains(&secret));
    assert_eq!(
        ctl(&[
            "policy",
            "decide",
            "--token",
            &secret,
            "--cap",
            "fs.read",
            "--target",
            "/etc/hostname"
        ]),
        Some(4)
    );
    let input = serde_json::json!({ "path": file }).to_string();
    assert_eq!(
        ctl(&["invoke", "file.read", "--token", &secret, "--input", &input]),
        Some(0)
    );
    assert_eq!(ctl(&["tokens", "list", "--json"]), Some(0));
    assert_eq!(ctl(&["tokens", "revoke", &id]), Some(0));
    assert_eq!(ctl(&ok), Some(4));
    assert_eq!(
        ctl(&["invoke", "file.read", "--token", &secret, "--input", &input]),
        Some(4)
    );
    assert_eq!(ctl(&["audit", "token-trail", &id, "--json"]), Some(0));
    assert_eq!(
        ctl(&["audit", "recent", "--limit", "1000", "--json"]),
        Some(0)
    );
    let export = text(&home.ctl(&["audit", "export", "--format", "jsonl"]).stdout);
    assert!(home.ctl(&["daemon", "stop"]).status.success());

    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let messages = drain.join().expect("syslog reader");
    let mut places = everything_written(&home, export, &jsonl, &messages);
    places.push(("loongctl output".to_string(), printed.join("\n")));
    // Positive control: the token's public id is in each sink that records its use.
    for (name, body) in &places[..3] {
        assert!(body.contains(&id), "{name} does not name the token {id}");
    }
    assert!(
        !messages.is_empty() && !home.log().is_empty(),
        "syslog and the log were written"
    );
    for (name, body) in &places {
        assert!(!body.contains(&secret), "the secret is in the {name}");
        // Nor its hex part alone, in any case.
        let hex = &secret["loong_".len()..];
        assert!(
            !body.to_ascii_lowercase().contains(hex),
            "the secret's hex is in the {name}"
        );
    }
    // The trail records the uses under the public id: decisions and the tool call.
    home.start();
    let trail: serde_json::Value =
        serde_json::from_slice(&home.ctl(&["audit", "token-trail", &id, "--json"]).stdout)
            .expect("json");
    let kinds: Vec<&str> = trail
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    for want in [
        "token.issued",
        "policy.decision",
        "tool.invoked",
        "token.revoked",
    ] {
        assert!(kinds.contains(&want), "{want} missing from {kinds:?}");
    }
}

#[test]
fn a_bearer_secret_given_as_a_token_id_is_not_sent() {
    // No daemon runs: a request that loongctl sends fails as "not running", one it refuses
    // first fails as a usage error.
    let home = Home::new();
    let secret = format!("loong_{}", "ab".repeat(32));
    // Positive control: a public id is sent on.
    let out = home.ctl(&["tokens", "revoke", "tok_0011"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    for args in [
        &["tokens", "revoke", secret.as_str()][..],
        &["audit", "token-trail", secret.as_str()][..],
    ] {
        let out = home.ctl(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("the secret was not sent") && !err.contains(&secret),
            "{args:?}: {err}"
        );
    }
}
