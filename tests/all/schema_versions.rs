//! Schema versions: a home written before versions (`tests/fixtures/schema-v0-home`, version
//! 0) is migrated forward at start with its data kept, its audit records untouched and its
//! trail still verifying; a database with a version newer than this loongd knows is refused,
//! naming the file and the version, and left as it was.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use rusqlite::Connection;

use crate::{
    support::{text, Home},
    workers::{details, json_list},
};

/// The token the fixture's home issued.
const FIXTURE_TOKEN: &str = "tok_fb0311c28a83ef92edc37189c9da5902";

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/schema-v0-home")
}

/// A home holding a copy of the fixture (git keeps no modes: the private ones are set here).
fn home_from_fixture() -> Home {
    let home = Home::new();
    let keys = home.path().join("keys");
    fs::create_dir_all(&keys).expect("keys dir");
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o700)).expect("chmod");
    for f in [
        "audit.db",
        "state.db",
        "audit.witness",
        "keys/audit.key",
        "keys/audit.pub",
    ] {
        let to = home.path().join(f);
        fs::copy(fixture().join(f), &to).expect("copy the fixture");
        fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    home
}

fn version(path: &Path) -> u32 {
    Connection::open(path)
        .expect("open")
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version")
}

fn set_version(path: &Path, v: u32) {
    Connection::open(path)
        .expect("open")
        .pragma_update(None, "user_version", v)
        .expect("set user_version");
}

/// One audit row as stored: (seq, kind, detail, prev_hash, hash).
type Row = (i64, String, String, Vec<u8>, Vec<u8>);

/// Every audit row, as stored.
fn audit_rows(path: &Path) -> Vec<Row> {
    let c = Connection::open(path).expect("open");
    let mut s = c
        .prepare("SELECT seq, kind, detail, prev_hash, hash FROM audit ORDER BY seq")
        .expect("select");
    s.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .expect("rows")
    .collect::<Result<_, _>>()
    .expect("rows")
}

#[test]
fn a_home_from_before_schema_versions_is_migrated_with_its_data_and_trail_intact() {
    let home = home_from_fixture();
    let (audit, state) = (home.path().join("audit.db"), home.path().join("state.db"));
    assert_eq!(
        (version(&audit), version(&state)),
        (0, 0),
        "the fixture is version 0"
    );
    let before = audit_rows(&audit);
    assert!(!before.is_empty());
    home.start();
    // Stamped with the current version; the token and the records are all still there.
    assert_eq!((version(&audit), version(&state)), (1, 5));
    let tokens = json_list(&home, &["tokens", "list", "--json"]);
    assert!(
        tokens
            .iter()
            .any(|t| t["id"] == FIXTURE_TOKEN && t["agent"] == "fixture"),
        "the fixture's token was lost: {tokens:?}"
    );
    let after = audit_rows(&audit);
    assert_eq!(
        after[..before.len()],
        before[..],
        "a migration rewrote audit records"
    );
    let out = home.ctl(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // The migrations are named in the signed trail, in this run's start record.
    let started = details(&home, "daemon.started");
    assert_eq!(
        started[0]["schema_migrations"],
        serde_json::json!([
            { "file": "state.db", "from": 0, "to": 5 },
            { "file": "audit.db", "from": 0, "to": 1 },
        ]),
        "{started:?}"
    );
    // A second start has nothing to migrate.
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    home.start();
    assert_eq!(
        details(&home, "daemon.started")[0]["schema_migrations"],
        serde_json::json!([])
    );
    assert!(home.ctl(&["daemon", "stop"]).status.success());

    // A file a newer loongd wrote is refused, named with its version, and never downgraded;
    // the other file is left at its version too (checked before anything is migrated).
    set_version(&state, 0);
    // Each file's known version: audit.db 1, state.db 5 (the agent's memory, the channels,
    // the agent's summaries, the approvals offered over chat and the channels' generations).
    for (file, path, known) in [("audit.db", &audit, 1), ("state.db", &state, 5)] {
        let newer = known + 1;
        set_version(path, newer);
        let rows = audit_rows(&audit).len();
        let out = home.ctl(&["daemon", "start"]);
        let said = format!("{}{}", text(&out.stderr), home.log());
        assert!(!out.status.success(), "{file}: started on a newer schema");
        assert!(
            said.contains(&format!(
                "{} has schema version {newer}, newer than the {known} this loongd knows",
                path.display()
            )),
            "{file}: {said}"
        );
        assert_eq!(version(path), newer, "{file} was downgraded");
        if file == "audit.db" {
            assert_eq!(
                version(&state),
                0,
                "state.db was migrated beside a newer audit.db"
            );
        }
        assert_eq!(audit_rows(&audit).len(), rows, "{file}: the trail changed");
        set_version(path, known);
    }
    // The control: back at the known version, it starts and verifies.
    home.start();
    assert!(home.ctl(&["audit", "verify"]).status.success());
}
