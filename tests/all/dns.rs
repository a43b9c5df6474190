//! Names are looked up once per connection by loongd's own resolver (`[egress] resolver`,
//! here a small DNS server the test runs), and every address of the answer is checked before
//! anything is dialled: a name that rebinds to loopback never reaches it, a private answer is
//! refused by name, and a host-pattern grant admits only the names under it.

use std::{fs, net::Ipv4Addr};

use crate::{
    bridges::{install_hook, LocalHttp},
    dns_server::{DnsServer, TYPE_A},
    egress::install_net_peer_with,
    support::{text, Home},
    workers::{details, invoke, plugins},
};

/// A public address (no range `workers::net` refuses); dialling it may fail or answer, and the
/// call's short deadline bounds either.
const PUBLIC: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);

/// A home that offers `web.fetch` and asks `dns` for every name.
fn home(dns: &DnsServer, allow_private: bool) -> Home {
    Home::with_config(&format!(
        "[builtins]\nfetch = true\nfetch_allow_private = {allow_private}\ntimeout_ms = 2000\n[egress]\nresolver = \"{}\"\nlookup_timeout_ms = 2000\n",
        dns.addr
    ))
}

fn fetch(home: &Home, url: &str, token: Option<&str>) -> (i32, String, String) {
    let input = serde_json::json!({ "url": url }).to_string();
    let mut args = vec!["web.fetch", "--input", &input];
    if let Some(t) = token {
        args.extend(["--token", t]);
    }
    invoke(home, &args)
}

/// Rebinding: the name answers a public address at one lookup and 127.0.0.1 at the next. Each
/// call looks it up exactly once and dials only what that lookup answered and passed, so the
/// loopback server the name would reach sees no connection, however often it is fetched.
#[test]
fn a_name_that_rebinds_to_loopback_never_reaches_it_and_each_call_looks_it_up_once() {
    const CALLS: usize = 6;
    let page = LocalHttp::text("loopback-page");
    let dns = DnsServer::start(vec![(
        "rebind.test".into(),
        vec![vec![PUBLIC], vec![Ipv4Addr::LOCALHOST]],
    )]);
    let strict = home(&dns, false);
    strict.start();
    let url = format!("http://rebind.test:{}/", page.port);
    for call in 0..CALLS {
        let (code, _, err) = fetch(&strict, &url, None);
        assert_eq!(
            dns.queries("rebind.test", TYPE_A),
            call + 1,
            "call {call} did not make exactly one lookup"
        );
        if call % 2 == 1 {
            assert_eq!(code, 7, "call {call}: {err}");
            assert!(
                err.contains("address_refused")
                    && err.contains("rebind.test resolves to 127.0.0.1, a loopback address"),
                "call {call}: {err}"
            );
        }
    }
    assert_eq!(page.accepted(), 0, "a rebound name reached loopback");
    let failed = details(&strict, "tool.failed");
    assert_eq!(
        failed
            .iter()
            .filter(|d| d["failure"] == "address_refused")
            .count(),
        CALLS / 2,
        "{failed:?}"
    );
}

/// A private answer is refused with the address and its range, before any connection, as is
/// an answer that mixes a public address with a loopback one; the same names reach the local
/// server once the operator allows private answers (the control).
#[test]
fn a_name_resolving_to_a_private_address_is_refused_unless_allowed() {
    let page = LocalHttp::text("private-page");
    let dns = DnsServer::start(vec![
        (
            "private.test".into(),
            vec![vec![Ipv4Addr::new(10, 1, 2, 3)]],
        ),
        ("local.test".into(), vec![vec![Ipv4Addr::LOCALHOST]]),
        ("mixed.test".into(), vec![vec![PUBLIC, Ipv4Addr::LOCALHOST]]),
    ]);
    let strict = home(&dns, false);
    strict.start();
    for (name, want) in [
        (
            "private.test",
            "private.test resolves to 10.1.2.3, a private address",
        ),
        (
            "local.test",
            "local.test resolves to 127.0.0.1, a loopback address",
        ),
        (
            "mixed.test",
            "mixed.test resolves to 127.0.0.1, a loopback address",
        ),
    ] {
        let (code, _, err) = fetch(&strict, &format!("http://{name}:{}/", page.port), None);
        assert_eq!(code, 7, "{name}: {err}");
        assert!(
            err.contains("address_refused")
                && err.contains(want)
                && err.contains("fetch_allow_private"),
            "{name}: {err}"
        );
        assert_eq!(dns.queries(name, TYPE_A), 1, "{name}");
    }
    assert_eq!(page.accepted(), 0, "a refused fetch connected");

    // Control: with the operator's leave the same loopback name is fetched.
    let open = home(&dns, true);
    open.start();
    let (code, out, err) = fetch(&open, &format!("http://local.test:{}/", page.port), None);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (v["status"].as_u64(), v["body"].as_str()),
        (Some(200), Some("private-page"))
    );
    assert_eq!(page.accepted(), 1);
}

/// A token scoped to `net.egress:*.example.test:PORT` fetches names under the suffix on that
/// port only: the bare domain, a look-alike with the suffix inside it, and another port are
/// denied before any lookup or connection.
#[test]
fn a_suffix_grant_admits_names_under_it_and_refuses_look_alikes() {
    let page = LocalHttp::text("suffix-page");
    let other = LocalHttp::text("never");
    let names = [
        "a.example.test",
        "a.b.example.test",
        "example.test",
        "example.test.evil",
    ];
    let dns = DnsServer::start(
        names
            .iter()
            .map(|n| (n.to_string(), vec![vec![Ipv4Addr::LOCALHOST]]))
            .collect(),
    );
    let open = home(&dns, true);
    fs::create_dir_all(open.path().join("packs")).expect("packs");
    fs::write(
        open.path().join("packs/fetcher.toml"),
        "id = \"fetcher\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"net.egress:*.example.test:*\"]\napproval = \"never\"\n",
    )
    .expect("pack");
    open.start();
    let scope = format!("net.egress:*.example.test:{}", page.port);
    let out = open.ctl(&[
        "tokens", "issue", "--pack", "fetcher", "--agent", "bot", "--cap", &scope, "--ttl", "1h",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    for name in ["a.example.test", "A.B.Example.Test"] {
        let (code, _, err) = fetch(
            &open,
            &format!("http://{name}:{}/", page.port),
            Some(&token),
        );
        assert_eq!(code, 0, "{name}: {err}");
    }
    assert_eq!(page.accepted(), 2);
    for url in [
        format!("http://example.test:{}/", page.port),
        format!("http://example.test.evil:{}/", page.port),
        format!("http://a.example.test:{}/", other.port),
    ] {
        let (code, _, err) = fetch(&open, &url, Some(&token));
        assert_eq!(code, 4, "{url}: {err}");
    }
    assert_eq!((page.accepted(), other.accepted()), (2, 0));
    assert_eq!(dns.queries("example.test", TYPE_A), 0);
    assert_eq!(dns.queries("example.test.evil", TYPE_A), 0);
    // A pattern that is not one is refused when the token is issued, naming what to write.
    let out = open.ctl(&[
        "tokens",
        "issue",
        "--pack",
        "fetcher",
        "--agent",
        "bot",
        "--cap",
        "net.egress:*.:443",
        "--ttl",
        "1h",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("network grant `*.:443`"),
        "{}",
        text(&out.stderr)
    );
}

/// A connector's endpoint name is looked up once, through the same resolver, when the plugin
/// is discovered: its calls dial the pinned address and ask nothing more, so a later answer
/// (here a private address) cannot move it. A name answering a private address is refused at
/// discovery, naming the address, its range and the setting; the same answer with the
/// setting is the control.
#[test]
fn a_connector_endpoint_is_looked_up_once_at_discovery_through_the_resolver() {
    const CALLS: usize = 3;
    let server = LocalHttp::start(|_, _| {
        (
            "200 OK".into(),
            "application/json",
            r#"{"ok": true}"#.into(),
        )
    });
    let dns = DnsServer::start(vec![
        (
            "hook.test".into(),
            vec![vec![Ipv4Addr::LOCALHOST], vec![Ipv4Addr::new(10, 9, 9, 9)]],
        ),
        ("inner.test".into(), vec![vec![Ipv4Addr::LOCALHOST]]),
    ]);
    let home = Home::with_config(&format!(
        "[egress]\nresolver = \"{}\"\nlookup_timeout_ms = 2000\n",
        dns.addr
    ));
    let private = r#""allow_private_network": true, "timeout_ms": 2000"#;
    let endpoint = |name: &str| format!("http://{name}:{}/hook", server.port);
    install_hook(&home, "pinned", &endpoint("hook.test"), "", private);
    install_hook(&home, "inner", &endpoint("inner.test"), "", "");
    home.start();
    let ps = plugins(&home);
    let state = |id: &str| {
        let p = ps.iter().find(|p| p["id"] == id).expect("listed");
        (
            p["state"].as_str().unwrap_or_default().to_string(),
            p["error"].as_str().unwrap_or_default().to_string(),
        )
    };
    let (st, err) = state("inner");
    assert!(
        st == "failed"
            && err.contains("inner.test resolves to 127.0.0.1, a loopback address")
            && err.contains("sandbox.allow_private_network"),
        "{st} {err}"
    );
    assert_eq!(state("pinned").0, "ready", "{}", state("pinned").1);
    let asked = dns.queries("hook.test", TYPE_A);
    assert!(asked >= 1, "discovery asked the resolver");
    for call in 0..CALLS {
        let (code, out, err) = invoke(&home, &["pinned", "--input", "{}"]);
        assert_eq!(code, 0, "call {call}: {err}");
        assert_eq!(out.trim(), r#"{"ok":true}"#, "call {call}");
    }
    assert_eq!(server.accepted(), CALLS);
    assert_eq!(
        dns.queries("hook.test", TYPE_A),
        asked,
        "a call looked the endpoint up again"
    );
}

/// The egress broker asks the same resolver, once per connection, and dials only what that
/// lookup answered and passed. A JSON-lines program granted `*.example.test:*` (a suffix and
/// port `*`, which only the broker can keep) fetches a name that answers a public address at
/// one lookup and 127.0.0.1 at the next, through its proxy: each connection is one query,
/// every loopback answer is the broker's 403 naming the address, and the loopback server the
/// name would reach sees nothing. A name outside the suffix is refused before any lookup.
/// The control: the same program with `sandbox.allow_private_network` reaches that server on
/// exactly the loopback answers, so the path the strict run refused is a real one.
#[test]
fn the_broker_looks_each_connection_up_once_and_never_dials_a_rebound_name_s_loopback() {
    const CONNECTIONS: usize = 6;
    const NAME: &str = "rebind.example.test";
    let page = LocalHttp::text("rebound-page");
    let dns = DnsServer::start(vec![(
        NAME.into(),
        vec![vec![PUBLIC], vec![Ipv4Addr::LOCALHOST]],
    )]);
    let home = Home::with_config(&format!(
        "[egress]\nresolver = \"{}\"\nlookup_timeout_ms = 2000\n",
        dns.addr
    ));
    let grants = ["*.example.test:*".to_string()];
    let _strict = install_net_peer_with(&home, "strict", &grants, "");
    let _open = install_net_peer_with(&home, "open", &grants, r#", "allow_private_network": true"#);
    home.start();
    // A public answer is dialled for real; the short timeout bounds whatever answers there.
    let get = |id: &str, url: &str| {
        let input = serde_json::json!({ "op": "get", "url": url, "timeout": 3 });
        let (code, out, err) = invoke(&home, &[id, "--input", &input.to_string()]);
        assert_eq!(code, 0, "{id} {url}: {err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let url = format!("http://{NAME}:{}/", page.port);
    for conn in 0..CONNECTIONS {
        let got = get("strict", &url);
        assert_eq!(
            dns.queries(NAME, TYPE_A),
            conn + 1,
            "connection {conn} did not make exactly one lookup: {got}"
        );
        if conn % 2 == 1 {
            let body = got["body"].as_str().unwrap_or_default();
            assert!(
                got["status"] == 403
                    && body.contains(&format!("{NAME} resolves to 127.0.0.1, a loopback address; set sandbox.allow_private_network to true")),
                "connection {conn}: {got}"
            );
        }
    }
    assert_eq!(page.accepted(), 0, "a rebound name reached loopback");
    let denied = details(&home, "net.denied");
    assert_eq!(
        denied
            .iter()
            .filter(|d| d["host"] == NAME
                && d["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("127.0.0.1, a loopback address")))
            .count(),
        CONNECTIONS / 2,
        "{denied:?}"
    );
    // Outside the suffix: the broker's 403 naming the grants, and no lookup at all.
    let evil = get(
        "strict",
        &format!("http://example.test.evil:{}/", page.port),
    );
    assert!(
        evil["status"] == 403
            && evil["body"].as_str().is_some_and(
                |b| b.contains("is not granted to plugin strict; grants: *.example.test:*")
            ),
        "{evil}"
    );
    assert_eq!(dns.queries("example.test.evil", TYPE_A), 0);
    assert_eq!(page.accepted(), 0);

    // Control: private answers allowed; the script goes on where it was (public first).
    for conn in 0..CONNECTIONS {
        let got = get("open", &url);
        assert_eq!(
            dns.queries(NAME, TYPE_A),
            CONNECTIONS + conn + 1,
            "control connection {conn} did not make exactly one lookup: {got}"
        );
        if conn % 2 == 1 {
            assert!(
                got["status"] == 200 && got["body"] == "rebound-page",
                "control connection {conn}: {got}"
            );
        }
    }
    assert_eq!(page.accepted(), CONNECTIONS / 2);
}
