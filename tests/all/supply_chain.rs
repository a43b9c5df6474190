//! Signed plugin packages: a detached ed25519 signature over every file of the package,
//! checked against loongd's keyring at discovery. The effective trust tier is the lowest of
//! what the manifest claims and what the signature proves.

use std::{fs, path::Path};

use crate::{
    support::{text, Home},
    workers::{install_examples, invoke, json_list, plugins, records},
};

/// `keys generate` into `file`; returns (public hex, key id).
fn generate(home: &Home, file: &Path) -> (String, String) {
    let out = home.ctl(&["keys", "generate", "--out", &file.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let field = |name: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .expect("generate prints the key")
    };
    (field("public:"), field("id:"))
}

fn sign(home: &Home, plugin: &str, key: &Path) {
    let dir = home.path().join("plugins").join(plugin);
    let out = home.ctl(&[
        "plugins",
        "sign",
        &dir.display().to_string(),
        "--key",
        &key.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn set_claim(home: &Home, plugin: &str, tier: &str) {
    let path = home
        .path()
        .join("plugins")
        .join(plugin)
        .join("loong.plugin.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("manifest")).expect("JSON");
    m["trust_tier"] = serde_json::Value::String(tier.into());
    fs::write(&path, m.to_string()).expect("manifest");
}

fn view(home: &Home, id: &str) -> serde_json::Value {
    plugins(home)
        .into_iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("{id} listed"))
}

fn reload(home: &Home) {
    let out = home.ctl(&["plugins", "reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn signatures_prove_a_tier_and_tampering_or_revocation_refuses_the_package() {
    let home = Home::new();
    install_examples(&home);
    home.start();
    let keys = tempfile::tempdir().expect("key dir");
    let official = keys.path().join("official.key");
    let community = keys.path().join("community.key");
    let (off_pub, off_id) = generate(&home, &official);
    let (com_pub, com_id) = generate(&home, &community);
    for (name, public, tier) in [
        ("vendor", &off_pub, "official"),
        ("friend", &com_pub, "verified-community"),
    ] {
        let out = home.ctl(&[
            "keys", "add", "--name", name, "--public", public, "--tier", tier,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // echo claims official but is signed by a verified-community key; json-transform is
    // signed by the official key and claims nothing; config-reader is unsigned.
    set_claim(&home, "echo", "official");
    sign(&home, "echo", &community);
    sign(&home, "json-transform", &official);
    reload(&home);
    let tiers: Vec<(String, String)> = ["echo", "json-transform", "config-reader"]
        .iter()
        .map(|id| {
            let p = view(&home, id);
            assert_eq!(p["state"], "ready", "{p}");
            (
                p["trust"].as_str().unwrap_or_default().to_string(),
                p["signer"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        tiers,
        [
            (
                "verified-community".to_string(),
                format!("{com_id} (friend)")
            ),
            ("official".to_string(), format!("{off_id} (vendor)")),
            ("unverified".to_string(), String::new()),
        ],
        "the lowest of the claim and the proof"
    );
    let names = |trust: &str| -> Vec<String> {
        json_list(&home, &["tools", "search", "", "--trust", trust, "--json"])
            .iter()
            .filter_map(|h| h["name"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(names("official"), ["json-transform"]);
    assert_eq!(names("verified-community"), ["echo", "json-transform"]);
    let loaded: Vec<serde_json::Value> = records(&home, "plugin.loaded")
        .iter()
        .map(crate::workers::detail)
        .collect();
    assert!(loaded
        .iter()
        .any(|d| d["plugin"] == "echo" && d["trust"] == "verified-community"));

    // A file changed after signing: refused, naming the file; the others keep serving.
    let summary_path = home.path().join("plugins/json-transform/loong.plugin.json");
    let original = fs::read_to_string(&summary_path).expect("manifest");
    fs::write(
        &summary_path,
        original.replacen("Wraps", "Quietly wraps", 1),
    )
    .expect("tamper");
    reload(&home);
    let p = view(&home, "json-transform");
    assert_eq!(p["state"], "failed", "{p}");
    assert!(
        p["error"]
            .as_str()
            .is_some_and(|e| e.contains("loong.plugin.json (changed)")),
        "{p}"
    );
    let (code, _, err) = invoke(&home, &["json-transform"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = invoke(&home, &["echo", "--input", "{}"]);
    assert_eq!(code, 0, "{err}");
    // Put back as signed: accepted again (the positive control).
    fs::write(&summary_path, &original).expect("restore");
    reload(&home);
    assert_eq!(view(&home, "json-transform")["state"], "ready");

    // The community key revoked: what it signed is refused.
    let out = home.ctl(&["keys", "revoke", &com_id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    reload(&home);
    let p = view(&home, "echo");
    assert_eq!(p["state"], "failed", "{p}");
    assert!(
        p["error"].as_str().is_some_and(|e| e.contains("revoked")),
        "{p}"
    );
    assert_eq!(view(&home, "json-transform")["state"], "ready");
    assert!(records(&home, "plugin.refused")
        .iter()
        .map(crate::workers::detail)
        .any(|d| d["plugin"] == "echo"
            && d["reason"].as_str().is_some_and(|r| r.contains("revoked"))));

    // A signature by a key loongd does not know proves nothing, and is refused.
    let stranger = keys.path().join("stranger.key");
    generate(&home, &stranger);
    sign(&home, "config-reader", &stranger);
    reload(&home);
    let p = view(&home, "config-reader");
    assert!(
        p["state"] == "failed"
            && p["error"]
                .as_str()
                .is_some_and(|e| e.contains("not in the keyring")),
        "{p}"
    );
}

/// Copies the echo example as plugin `id` with `slot_claims`.
fn echo_as(home: &Home, id: &str, slots: serde_json::Value) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/echo");
    let dst = home.path().join("plugins").join(id);
    fs::create_dir_all(&dst).expect("dir");
    fs::copy(src.join("plugin.wasm"), dst.join("plugin.wasm")).expect("module");
    let mut m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(src.join("loong.plugin.json")).expect("manifest"))
            .expect("JSON");
    m["plugin_id"] = serde_json::Value::String(id.into());
    m["slot_claims"] = slots;
    fs::write(dst.join("loong.plugin.json"), m.to_string()).expect("manifest");
}

#[test]
fn an_exclusive_slot_goes_to_one_plugin_and_the_refusal_names_both() {
    let home = Home::new();
    let claim =
        |mode: &str| serde_json::json!([{"slot": "channel.telegram", "key": "main", "mode": mode}]);
    // Written in reverse order: the outcome follows the ids, not the directory order.
    echo_as(&home, "zulu", claim("exclusive"));
    echo_as(&home, "alpha", claim("exclusive"));
    echo_as(&home, "mike", claim("shared"));
    echo_as(
        &home,
        "bravo",
        serde_json::json!([{"slot": "memory", "key": "", "mode": "shared"}]),
    );
    echo_as(
        &home,
        "charlie",
        serde_json::json!([{"slot": "memory", "key": "", "mode": "shared"}]),
    );
    home.start();
    for _ in 0..2 {
        let states: Vec<(String, String)> = plugins(&home)
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap_or_default().to_string(),
                    p["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let state = |id: &str| {
            states
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, s)| s.clone())
                .unwrap_or_default()
        };
        assert_eq!(state("alpha"), "ready", "{states:?}");
        // Two shared claims on another slot coexist (the positive control).
        assert_eq!(
            (state("bravo"), state("charlie")),
            ("ready".into(), "ready".into())
        );
        for loser in ["mike", "zulu"] {
            assert_eq!(state(loser), "failed", "{states:?}");
            let error = view(&home, loser)["error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                error.contains("alpha")
                    && error.contains(loser)
                    && error.contains("channel.telegram"),
                "{loser}: {error}"
            );
        }
        reload(&home);
    }
    let (code, _, err) = invoke(&home, &["alpha", "--input", "{}"]);
    assert_eq!(code, 0, "{err}");
}
