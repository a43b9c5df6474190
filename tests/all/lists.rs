//! Every list pages in bounded frames: 100,000 tokens are listed whole (a page at a time),
//! in part (`--limit`, `--after`) and as one JSON array, and one deep in the list can be found
//! and revoked; approvals page past their first page the same way.

use std::collections::HashSet;

use crate::support::{text, Home};

/// Tokens in the big list.
const TOKENS: usize = 100_000;
/// Approval requests in the approvals list (more than two pages).
const APPROVALS: usize = 1_200;

/// Copies the row of `table` whose `id` is `seed` `count - 1` times under new ids (and with
/// `unique` columns made unique too), straight into a stopped daemon's `state.db`.
fn multiply(home: &Home, table: &str, seed: &str, count: usize, unique: &[&str]) {
    let db = rusqlite::Connection::open(home.path().join("state.db")).expect("state.db");
    let cols: Vec<String> = db
        .prepare(&format!("PRAGMA table_info({table})"))
        .expect("table info")
        .query_map([], |r| r.get::<_, String>(1))
        .expect("columns")
        .collect::<Result<_, _>>()
        .expect("columns");
    let exprs: Vec<String> = cols
        .iter()
        .map(|c| {
            if c == "id" {
                format!("{c} || printf('-%06d', n.i)")
            } else if unique.contains(&c.as_str()) {
                "printf('%064d', n.i)".to_string()
            } else {
                c.clone()
            }
        })
        .collect();
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
         INSERT INTO {table} ({}) SELECT {} FROM {table}, n WHERE {table}.id = ?1",
        cols.join(", "),
        exprs.join(", ")
    );
    let n = db
        .execute(&sql, rusqlite::params![seed, (count - 1) as i64])
        .expect("multiply rows");
    assert_eq!(n, count - 1);
}

#[test]
fn a_hundred_thousand_tokens_are_listed_revoked_and_paged() {
    let home = Home::new();
    home.start();
    let out = home.ctl(&[
        "tokens",
        "issue",
        "--pack",
        "docs-reader",
        "--agent",
        "bot",
        "--cap",
        "fs.read:/srv/docs",
        "--ttl",
        "1h",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let issued: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let seed = issued["id"].as_str().expect("id").to_string();
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    multiply(&home, "tokens", &seed, TOKENS, &["secret_sha256"]);
    home.start();

    // The whole list, a page at a time: every token once, none twice.
    let out = home.ctl(&["tokens", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    let ids: Vec<&str> = listed
        .lines()
        .map(|l| l.split_whitespace().next().expect("id"))
        .collect();
    assert_eq!(ids.len(), TOKENS);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), TOKENS);
    assert!(ids.contains(&seed.as_str()));

    // The same as one JSON array.
    let out = home.ctl(&["tokens", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json array");
    assert_eq!(all.len(), TOKENS);
    assert_eq!(all[77_777]["id"], ids[77_777]);

    // A part: ten after the 50,000th, in the same order.
    let after = ids[49_999];
    let out = home.ctl(&["tokens", "list", "--limit", "10", "--after", after]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let part: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().expect("id").to_string())
        .collect();
    assert_eq!(part, ids[50_000..50_010]);

    // One deep in the list is found and revoked by its id; the control beside it is not.
    let deep = ids[99_990];
    assert!(home.ctl(&["tokens", "revoke", deep]).status.success());
    let out = home.ctl(&["tokens", "list", "--limit", "2", "--after", ids[99_989]]);
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert!(
        lines[0].starts_with(deep) && lines[0].contains("revoked"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with(ids[99_991]) && !lines[1].contains("revoked"),
        "{lines:?}"
    );
}

#[test]
fn approvals_page_past_their_first_page() {
    let home = Home::new();
    home.start();
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    {
        let db = rusqlite::Connection::open(home.path().join("state.db")).expect("state.db");
        db.execute(
            "INSERT INTO approvals (id, created_ms, deadline_ms, state, actor, pack, capability,
             target, score, reasons) VALUES ('ap-seed', 1, 2, 'denied', 'uid:0', 'operator',
             'fs.write', '/srv/x', 30, 'test')",
            [],
        )
        .expect("seed approval");
    }
    multiply(&home, "approvals", "ap-seed", APPROVALS, &[]);
    home.start();
    let out = home.ctl(&["approvals", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json array");
    assert_eq!(all.len(), APPROVALS);
    let ids: HashSet<&str> = all.iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids.len(), APPROVALS);
    // `show` finds one past the first page.
    let last = all[APPROVALS - 1]["id"].as_str().expect("id");
    let out = home.ctl(&["approvals", "show", last]);
    assert!(
        out.status.success() && text(&out.stdout).contains(last),
        "{}",
        text(&out.stderr)
    );
    // A cursor that names nothing is refused, never answered as a list that has ended
    // (tokens and approvals page by the cursor's place, which only a real one has); a real
    // one is the control.
    let out = home.ctl(&[
        "approvals",
        "list",
        "--after",
        all[0]["id"].as_str().expect("id"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (list, kind) in [("approvals", "approval"), ("tokens", "token")] {
        let out = home.ctl(&[list, "list", "--after", "nope-9"]);
        assert!(
            !out.status.success()
                && text(&out.stderr).contains(&format!("there is no {kind} nope-9")),
            "{list}: {} {}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}
