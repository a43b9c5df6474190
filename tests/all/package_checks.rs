//! What the operator is told about a package: `plugins verify DIR` (signature, signer and
//! tier, every file's hash), refusals that show only signed or recomputed text, a private key
//! refused as a trust anchor, `plugins enable` failing loudly, an archive that is not one
//! package, and a drifted plugin listed with its locked version.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use crate::{
    revocation::{native_package, sign},
    supply_chain::generate,
    supply_chain::{ctl_ok, example_module, view, wasm_package},
    support::{text, Home},
};

fn run(home: &Home, args: &[&str]) -> (Option<i32>, String, String) {
    let out = home.ctl(args);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn verify_dir_checks_signer_tier_and_every_file_and_refusals_show_only_signed_names() {
    let home = Home::new();
    home.start();
    let work = tempfile::Builder::new()
        .prefix("lvd")
        .tempdir_in("/tmp")
        .expect("work");
    let key = work.path().join("v.key");
    let (public, id) = generate(&home, &key);
    ctl_ok(
        &home,
        &[
            "keys", "add", "--name", "vendor", "--public", &public, "--tier", "official",
        ],
    );
    let pkg = work.path().join("checked");
    wasm_package(&pkg, "checked", "1", &example_module("echo"), None);
    let shown = pkg.display().to_string();
    // Unsigned: nothing proves it (exit 8), every file still listed with its hash.
    let (code, out, _) = run(&home, &["plugins", "verify", &shown]);
    assert!(code == Some(8) && out.contains("unsigned"), "{out}");
    sign(&home, &pkg, &key);
    let (code, out, err) = run(&home, &["plugins", "verify", &shown]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("{id} (vendor), tier official, active"))
            && out
                .lines()
                .filter(|l| l.trim_start().starts_with("ok "))
                .count()
                == 2,
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&run(&home, &["plugins", "verify", &shown, "--json"]).1)
            .expect("JSON");
    assert!(json["ok"] == true && json["tier"] == "official", "{json}");

    // A changed file: named (from the signed list), exit 8.
    let manifest = pkg.join("loong.plugin.json");
    let original = fs::read_to_string(&manifest).expect("manifest");
    fs::write(&manifest, original.replace("checked 1", "checked one")).expect("tamper");
    let (code, out, _) = run(&home, &["plugins", "verify", &shown]);
    assert!(
        code == Some(8) && out.contains("changed") && out.contains("loong.plugin.json"),
        "{out}"
    );
    let (code, _, err) = run(&home, &["plugins", "install", &shown]);
    assert!(
        code == Some(2) && err.contains("loong.plugin.json (changed)"),
        "{err}"
    );
    fs::write(&manifest, &original).expect("restore");

    // A signature file whose file list carries text of its own (a forged line), on a package
    // that also changed, is refused without showing that text, by verify and by install.
    fs::write(&manifest, original.replace("checked 1", "checked one")).expect("tamper");
    let sig_path = pkg.join("loong.plugin.sig");
    let honest = fs::read_to_string(&sig_path).expect("sig");
    let mut forged: serde_json::Value = serde_json::from_str(&honest).expect("JSON");
    forged["files"]
        .as_array_mut()
        .expect("files")
        .push(serde_json::json!([
            "zz\nINJECTED: all files verified",
            "0".repeat(64)
        ]));
    fs::write(&sig_path, forged.to_string()).expect("forge");
    for args in [
        ["plugins", "verify", &shown],
        ["plugins", "install", &shown],
    ] {
        let (code, out, err) = run(&home, &args);
        assert!(code == Some(8) || code == Some(2), "{args:?}");
        assert!(
            !out.contains("INJECTED") && !err.contains("INJECTED"),
            "{args:?}: {out}{err}"
        );
        assert!(
            (out.clone() + &err).contains("file list does not give its digest"),
            "{args:?}: {out}{err}"
        );
    }
    // Positive control: the honest signature over the untouched package installs, as
    // official.
    fs::write(&manifest, &original).expect("restore");
    fs::write(&sig_path, &honest).expect("restore sig");
    ctl_ok(&home, &["plugins", "install", &shown]);
    assert_eq!(view(&home, "checked")["trust"], "official");
    // A revoked signer fails verify DIR.
    ctl_ok(&home, &["keys", "revoke", &id]);
    let (code, out, _) = run(&home, &["plugins", "verify", &shown]);
    assert!(code == Some(8) && out.contains("revoked"), "{out}");
}

#[test]
fn a_private_key_file_is_never_taken_as_a_public_key() {
    let home = Home::new();
    home.start();
    let work = tempfile::tempdir().expect("work");
    let key = work.path().join("secret.key");
    let (public, _) = generate(&home, &key);
    let arg = format!("@{}", key.display());
    let (code, _, err) = run(
        &home,
        &[
            "keys", "add", "--name", "oops", "--public", &arg, "--tier", "official",
        ],
    );
    assert!(
        code == Some(2) && err.contains("secret.key") && err.contains("private key"),
        "{err}"
    );
    // Even with the label gone (a key file from before it), an owner-only file is refused.
    let digits: String = fs::read_to_string(&key)
        .expect("key")
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let bare = work.path().join("bare.key");
    fs::write(&bare, &digits).expect("bare");
    fs::set_permissions(&bare, fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, _, err) = run(
        &home,
        &[
            "keys",
            "add",
            "--name",
            "oops",
            "--public",
            &format!("@{}", bare.display()),
        ],
    );
    assert!(code == Some(2) && err.contains("bare.key"), "{err}");
    assert!(!text(&home.ctl(&["keys", "list"]).stdout).contains("oops"));
    // Positive control: the public key in a readable file is added; the private key file
    // still signs.
    let public_file = work.path().join("public.hex");
    fs::write(&public_file, &public).expect("public");
    fs::set_permissions(&public_file, fs::Permissions::from_mode(0o644)).expect("chmod");
    ctl_ok(
        &home,
        &[
            "keys",
            "add",
            "--name",
            "ok",
            "--public",
            &format!("@{}", public_file.display()),
        ],
    );
    let pkg = work.path().join("signed");
    wasm_package(&pkg, "signed", "1", &example_module("echo"), None);
    sign(&home, &pkg, &key);
}

#[test]
fn enable_fails_loudly_archives_hold_one_package_and_drift_keeps_the_locked_version() {
    let home = Home::new();
    home.start();
    let work = tempfile::Builder::new()
        .prefix("lef")
        .tempdir_in("/tmp")
        .expect("work");
    // An unverified native plugin installs disabled; it is an MCP server that exits at once,
    // so the load check enabling runs fails and it ends `failed`: exit 9, naming why.
    let broken = work.path().join("broken");
    native_package(&broken, "broken");
    fs::write(broken.join("peer.py"), "import sys\nsys.exit(3)\n").expect("script");
    let manifest = broken.join("loong.plugin.json");
    let text_now = fs::read_to_string(&manifest).expect("manifest");
    fs::write(&manifest, text_now.replace("process_stdio", "mcp_stdio")).expect("mcp");
    ctl_ok(
        &home,
        &["plugins", "install", &broken.display().to_string()],
    );
    assert_eq!(view(&home, "broken")["state"], "disabled");
    let (code, _, err) = run(&home, &["plugins", "enable", "broken"]);
    assert!(
        code == Some(9) && err.contains("broken") && err.contains("failed"),
        "{code:?} {err}"
    );
    // Positive control: one that comes up exits 0.
    let good = work.path().join("good");
    native_package(&good, "good");
    ctl_ok(&home, &["plugins", "install", &good.display().to_string()]);
    let (code, _, err) = run(&home, &["plugins", "enable", "good"]);
    assert_eq!(code, Some(0), "{err}");

    // An archive with two top-level directories says what is wrong with the archive.
    let two = work.path().join("two");
    wasm_package(&two.join("one"), "one", "1", &example_module("echo"), None);
    wasm_package(
        &two.join("other"),
        "other",
        "1",
        &example_module("echo"),
        None,
    );
    let archive = work.path().join("two.tar.gz");
    let out = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&two)
        .args(["one", "other"])
        .output()
        .expect("tar");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, _, err) = run(
        &home,
        &["plugins", "install", &archive.display().to_string()],
    );
    assert!(
        code == Some(2)
            && err.contains("2 top-level entries (one, other)")
            && !err.contains(".staging"),
        "{err}"
    );

    // A drifted plugin (its manifest deleted behind loongd's back) is listed with the version
    // its lock entry records and what drifted.
    let drift = work.path().join("drifty");
    wasm_package(&drift, "drifty", "4.2.0", &example_module("echo"), None);
    ctl_ok(&home, &["plugins", "install", &drift.display().to_string()]);
    fs::remove_file(home.path().join("plugins/drifty/loong.plugin.json")).expect("drift");
    ctl_ok(&home, &["plugins", "reload"]);
    let p = view(&home, "drifty");
    assert!(
        p["state"] == "failed"
            && p["version"] == "4.2.0"
            && p["error"]
                .as_str()
                .is_some_and(|e| e.contains("loong.plugin.json (removed)")),
        "{p}"
    );
    assert!(Path::new(&home.path().join("plugins.lock")).exists());
}
