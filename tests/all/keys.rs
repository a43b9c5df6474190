//! Trust anchors and signed policy: key generation stays on the operator's side, rotation
//! needs the old key's signature, revocation stops a key, and an operator risk profile loads
//! only when its pin and signature hold (else loongd refuses to start, and says so in the
//! audit trail).

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use crate::support::{bin, text, Home};

fn generate(dir: &Path, name: &str) -> (String, String) {
    let out = std::process::Command::new(bin("loongctl"))
        .args(["keys", "generate", "--out"])
        .arg(dir.join(name))
        .output()
        .expect("loongctl");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    let field = |k: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .expect("field")
    };
    (field("public:"), field("id:"))
}

fn keys(home: &Home) -> serde_json::Value {
    serde_json::from_slice(&home.ctl(&["keys", "list", "--json"]).stdout).expect("json")
}

fn state(home: &Home, id: &str) -> Option<String> {
    keys(home)
        .as_array()?
        .iter()
        .find(|k| k["id"] == id)
        .and_then(|k| k["state"].as_str().map(String::from))
}

#[test]
fn keyring_generate_add_rotate_revoke() {
    let home = Home::new();
    home.start();
    let dir = tempfile::tempdir().expect("dir");
    let (pub_a, id_a) = generate(dir.path(), "a.key");
    assert_eq!(
        fs::metadata(dir.path().join("a.key"))
            .expect("key")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let again = home.ctl(&[
        "keys",
        "generate",
        "--out",
        &dir.path().join("a.key").display().to_string(),
    ]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "an existing key file is never overwritten"
    );
    assert!(home
        .ctl(&["keys", "add", "--name", "acme", "--tier", "official", "--public", &pub_a])
        .status
        .success());
    assert_eq!(
        home.ctl(&["keys", "add", "--name", "x", "--public", "zz"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        home.ctl(&["keys", "add", "--name", "x", "--tier", "gold", "--public", &pub_a])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(state(&home, &id_a).as_deref(), Some("active"));

    // Rotation needs the old key's signature over the new key.
    let (pub_b, id_b) = generate(dir.path(), "b.key");
    let b_key = dir.path().join("b.key").display().to_string();
    let a_key = dir.path().join("a.key").display().to_string();
    let forged = home.ctl(&[
        "keys",
        "rotate",
        &id_a,
        "--key",
        &b_key,
        "--new-public",
        &pub_b,
    ]);
    assert_eq!(forged.status.code(), Some(2));
    assert!(text(&forged.stderr).contains(&format!(
        "the rotation signature does not verify under key {id_a}"
    )));
    assert!(home
        .ctl(&[
            "keys",
            "rotate",
            &id_a,
            "--key",
            &a_key,
            "--new-public",
            &pub_b
        ])
        .status
        .success());
    assert_eq!(state(&home, &id_a).as_deref(), Some("replaced"));
    assert_eq!(state(&home, &id_b).as_deref(), Some("active"));
    let b = keys(&home)
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["id"] == id_b)
        .cloned()
        .expect("b");
    assert_eq!(b["tier"], "official", "a rotated key keeps its tier");
    assert!(home.ctl(&["keys", "revoke", &id_b]).status.success());
    assert_eq!(state(&home, &id_b).as_deref(), Some("revoked"));
    assert_eq!(home.ctl(&["keys", "revoke", &id_b]).status.code(), Some(2));
    for kind in ["key.added", "key.rotated", "key.revoked"] {
        let v: serde_json::Value = serde_json::from_slice(
            &home
                .ctl(&["audit", "recent", "--kind", kind, "--json"])
                .stdout,
        )
        .expect("json");
        assert!(!v.as_array().expect("array").is_empty(), "no {kind} record");
    }
}

fn sha256_hex(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    text(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

#[test]
fn operator_risk_profiles_load_only_when_pinned_and_signed() {
    let home = Home::new();
    home.start();
    let dir = tempfile::tempdir().expect("dir");
    let (pub_k, id_k) = generate(dir.path(), "k.key");
    let (pub_r, id_r) = generate(dir.path(), "r.key");
    assert!(home
        .ctl(&["keys", "add", "--name", "policy", "--public", &pub_k])
        .status
        .success());
    assert!(home
        .ctl(&["keys", "add", "--name", "old", "--public", &pub_r])
        .status
        .success());
    assert!(home.ctl(&["keys", "revoke", &id_r]).status.success());
    // Positive control: with the bundled profile, echo needs no approval.
    assert_eq!(
        home.ctl(&[
            "policy",
            "decide",
            "--cap",
            "process.exec",
            "--target",
            "echo"
        ])
        .status
        .code(),
        Some(0)
    );
    assert!(home.ctl(&["daemon", "stop"]).status.success());

    let profile = dir.path().join("risk.toml");
    fs::write(&profile, "threshold = 5\n[programs]\necho = 10\n").expect("profile");
    let sign = |key: &str| {
        let out = home.ctl(&[
            "keys",
            "sign",
            "--key",
            &dir.path().join(key).display().to_string(),
            &profile.display().to_string(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    let config = |pin: &str, signed: bool| {
        fs::write(home.path().join("loongd.toml"), format!("[policy]\nrisk_profile = \"{}\"\nrisk_profile_sha256 = \"{pin}\"\nrisk_profile_signed = {signed}\n", profile.display()))
            .expect("config")
    };

    // Pinned and signed by an active key: loaded, and in effect.
    sign("k.key");
    config(&sha256_hex(&profile), true);
    home.start();
    assert_eq!(
        home.ctl(&[
            "policy",
            "decide",
            "--cap",
            "process.exec",
            "--target",
            "echo"
        ])
        .status
        .code(),
        Some(5),
        "the operator profile makes echo high-risk"
    );
    let loaded: serde_json::Value = serde_json::from_slice(
        &home
            .ctl(&["audit", "recent", "--kind", "profile.loaded", "--json"])
            .stdout,
    )
    .expect("json");
    assert_eq!(loaded[0]["detail"]["signer"], id_k.as_str());
    assert!(home.ctl(&["daemon", "stop"]).status.success());

    let refused = |why: &str| {
        let out = home.ctl(&["daemon", "start"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "loongd must refuse to start ({why})"
        );
        text(&out.stderr)
    };
    // A wrong pin.
    config(&"0".repeat(64), false);
    assert!(refused("pin").contains("does not match the pinned"));
    // Changed after signing (the pin follows the change, the signature cannot).
    fs::write(&profile, "threshold = 5\n[programs]\necho = 1\n").expect("tamper");
    config(&sha256_hex(&profile), true);
    assert!(refused("tampered").contains("no active trust anchor signed"));
    // Signed by a revoked key.
    sign("r.key");
    assert!(refused("revoked signer").contains("no active trust anchor signed"));
    // A signature required but missing.
    fs::remove_file(dir.path().join("risk.toml.sig")).expect("rm sig");
    assert!(refused("missing signature").contains("a signature is required"));

    // Every refusal is in the audit trail.
    fs::write(home.path().join("loongd.toml"), "").expect("plain config");
    home.start();
    let rejected: serde_json::Value = serde_json::from_slice(
        &home
            .ctl(&["audit", "recent", "--kind", "profile.rejected", "--json"])
            .stdout,
    )
    .expect("json");
    assert_eq!(rejected.as_array().map(Vec::len), Some(4), "{rejected}");
    assert!(home.ctl(&["audit", "verify"]).status.success());
}
