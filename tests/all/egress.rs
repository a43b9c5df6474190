//! The egress broker end to end: a sandbox with a network grant is in an empty network
//! namespace, and its only way out is loongd's broker, through the proxy its environment names
//! or a raw forward on a loopback port, decided per connection and audited.

use std::{
    fs,
    net::{TcpListener, TcpStream, UdpSocket},
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use crate::{
    bridges::{args_json, install_foreign, shared_dir, write_file, LocalHttp, MCP_ROOT},
    support::{skip, text, Home},
    workers::{details, invoke},
};

/// The host's own non-loopback address (the one its default route leaves from), if it has one.
pub(crate) fn host_address() -> Option<std::net::IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// A listener on every host address that only counts the connections it accepts.
pub(crate) fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            if c.is_ok() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (port, n)
}

/// Installs the network peer as plugin `net` with `grants`; returns its directory (kept alive).
pub(crate) fn install_net_peer(home: &Home, grants: &[String]) -> tempfile::TempDir {
    install_net_peer_as(home, "net", grants)
}

/// Installs the network peer as plugin `id` with `grants`.
pub(crate) fn install_net_peer_as(home: &Home, id: &str, grants: &[String]) -> tempfile::TempDir {
    install_net_peer_with(home, id, grants, "")
}

/// Installs the network peer as plugin `id` with `grants` and more of its `sandbox` block
/// (`extra`, e.g. `, "allow_private_network": true`).
pub(crate) fn install_net_peer_with(
    home: &Home,
    id: &str,
    grants: &[String],
    extra: &str,
) -> tempfile::TempDir {
    let dir = shared_dir("np");
    let script = dir.path().join("net_peer.py");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("all/peers/net_peer.py");
    write_file(&script, &fs::read_to_string(src).expect("peer"), 0o644);
    install_foreign(
        home,
        id,
        &format!(
            r#""bridge_kind": "process_stdio", "command": "/usr/bin/python3", "args_json": {}"#,
            args_json(&[&script.display().to_string()])
        ),
        &format!(
            r#""read": [{:?}], "net": {}, "timeout_ms": 30000{extra}"#,
            dir.path().display().to_string(),
            serde_json::to_string(grants).expect("grants")
        ),
    );
    dir
}

pub(crate) fn call(home: &Home, payload: serde_json::Value) -> serde_json::Value {
    let (code, out, err) = invoke(home, &["net", "--input", &payload.to_string()]);
    assert_eq!(code, 0, "{payload}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{payload}: {e}: {out}"))
}

#[test]
fn a_json_lines_program_reaches_only_its_grant_and_only_through_the_broker() {
    let granted = LocalHttp::text("loong-granted-page");
    let other = LocalHttp::text("loong-other-page");
    let (raw_port, raw_seen) = counting_listener();
    let home = Home::new();
    let grants = vec![
        format!("127.0.0.1:{}", granted.port),
        format!("127.0.0.1:{raw_port}"),
    ];
    let _peer = install_net_peer(&home, &grants);
    // A plugin granted a name that resolves to a loopback address, without
    // sandbox.allow_private_network.
    let named_server = LocalHttp::text("loong-named-page");
    let _named = install_net_peer_as(
        &home,
        "named",
        &[format!("localhost:{}", named_server.port)],
    );
    home.start();

    // A private answer for a name is refused, naming the setting; its server sees nothing.
    let input = serde_json::json!({
        "op": "get", "url": format!("http://localhost:{}/page.txt", named_server.port),
    });
    let (code, out, err) = invoke(&home, &["named", "--input", &input.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("403")
            && out.contains("resolves to 127.0.0.1, a loopback address; set sandbox.allow_private_network to true"),
        "{out}"
    );
    assert_eq!(named_server.accepted(), 0);

    // The proxy variables point inside the sandbox; nothing bypasses them.
    let env = call(&home, serde_json::json!({"op": "env"}));
    let proxy = env["HTTP_PROXY"].as_str().expect("HTTP_PROXY").to_string();
    assert!(proxy.starts_with("http://127.0.0.1:"), "{env}");
    assert_eq!(env["HTTPS_PROXY"], env["HTTP_PROXY"], "{env}");
    assert_eq!(env["NO_PROXY"], "", "{env}");

    // The program holds neither the egress socket nor a listener: no socket at all.
    let fds = call(&home, serde_json::json!({"op": "fds"}));
    let held = fds["fds"].as_object().expect("fds");
    assert!(!held.is_empty(), "{fds}");
    assert!(
        !held
            .values()
            .any(|t| t.as_str().is_some_and(|t| t.starts_with("socket:"))),
        "{fds}"
    );

    // Through the proxy: the granted server answers (positive control) ...
    let got = call(
        &home,
        serde_json::json!({"op": "get", "url": granted.url()}),
    );
    assert_eq!(got["status"], 200, "{got}");
    assert_eq!(got["body"], "loong-granted-page", "{got}");
    assert_eq!(granted.accepted(), 1);
    // ... the other port on the same host gets the broker's 403, naming the rule, and its
    // server sees no connection.
    let got = call(&home, serde_json::json!({"op": "get", "url": other.url()}));
    assert_eq!(got["status"], 403, "{got}");
    let body = got["body"].as_str().unwrap_or_default();
    let want = format!(
        "loong egress: 127.0.0.1:{} is not granted to plugin net; grants: {}",
        other.port,
        grants.join(", ")
    );
    assert!(body.starts_with(&want), "{body}");
    assert_eq!(other.accepted(), 0, "the ungranted server saw a connection");

    // Two requests on one kept-alive connection: the first is decided and answered; the
    // second, for another destination, never reaches it (one decided request per connection).
    let got = call(
        &home,
        serde_json::json!({"op": "pipeline", "urls": [granted.url(), other.url()]}),
    );
    let answer = got["got"].as_str().unwrap_or_default();
    assert!(answer.contains("loong-granted-page"), "{got}");
    assert!(!answer.contains("loong-other-page"), "{got}");
    assert_eq!(other.accepted(), 0, "the second request reached its host");

    // Hostile heads are answered 400 with the reason and reach nothing; the same request
    // well-formed is the control.
    let ok_head = format!("GET http://127.0.0.1:{}/ HTTP/1.1\r\n\r\n", granted.port);
    let got = call(
        &home,
        serde_json::json!({"op": "raw_head", "head": ok_head}),
    );
    assert!(
        got["got"]
            .as_str()
            .is_some_and(|g| g.starts_with("HTTP/1.1 200")),
        "{got}"
    );
    let before = granted.accepted();
    for (head, why) in [
        (
            format!(
                "GET http://127.0.0.1:{}/ HTTP/1.1\r\nX: {}\r\n\r\n",
                granted.port,
                "a".repeat(9000)
            ),
            "above 8192 bytes",
        ),
        (
            format!("CONNECT 127.1:{} HTTP/1.1\r\n\r\n", granted.port),
            "dotted-quad",
        ),
        (
            format!(
                "GET http://127.0.0.1:{}@evil.test/ HTTP/1.1\r\n\r\n",
                granted.port
            ),
            "userinfo",
        ),
        (
            format!(
                "GET http://127.0.0.1:{}/ HTTP/1.1\nHost: x\n\n\r\n\r\n",
                granted.port
            ),
            "CRLF",
        ),
    ] {
        let got = call(&home, serde_json::json!({"op": "raw_head", "head": head}));
        let answer = got["got"].as_str().unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 400"), "{why}: {answer}");
        assert!(answer.contains(why), "{why}: {answer}");
    }
    assert_eq!(
        granted.accepted(),
        before,
        "a hostile head reached the server"
    );

    // A raw connection to the granted address and port is its forward (positive control).
    let got = call(
        &home,
        serde_json::json!({"op": "connect", "host": "127.0.0.1", "port": granted.port}),
    );
    assert_eq!(got["result"], "ok", "{got}");
    assert!(
        got["got"]
            .as_str()
            .is_some_and(|g| g.starts_with("HTTP/1.1 200")),
        "{got}"
    );
    assert_eq!(granted.accepted(), before + 1);
    // Inside, the other port's address has nothing behind it.
    let got = call(
        &home,
        serde_json::json!({"op": "connect", "host": "127.0.0.1", "port": other.port}),
    );
    assert_ne!(got["result"], "ok", "{got}");
    // The host's own address on a granted port: no route. Control: from the host it connects.
    match host_address() {
        None => skip(
            "a_json_lines_program_reaches_only_its_grant_and_only_through_the_broker",
            "the host has no non-loopback address; the no-route checks were not run",
        ),
        Some(ip) => {
            TcpStream::connect((ip, raw_port)).expect("the host reaches its own listener");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while raw_seen.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let before = raw_seen.load(Ordering::SeqCst);
            assert_eq!(before, 1, "the host's own connection was counted");
            let host = ip.to_string();
            for (op, bad) in [("connect", "ENETUNREACH"), ("fastopen", ""), ("mptcp", "")] {
                let got = call(
                    &home,
                    serde_json::json!({"op": op, "host": host, "port": raw_port}),
                );
                let r = got["result"].as_str().unwrap_or_default();
                assert_ne!(r, "ok", "{op}: {got}");
                assert!(r.contains(bad), "{op}: {got}");
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert_eq!(
                raw_seen.load(Ordering::SeqCst),
                before,
                "a sandbox reached the host's address"
            );
        }
    }

    // The relay (the sandbox's `loong-spawn` running as the sandbox's uid) holds sockets only
    // (its three listeners and the egress socket), under seccomp with no_new_privs.
    let relays: Vec<(u32, String)> = fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, fs::read_to_string(format!("/proc/{pid}/status")).ok()?)))
        .filter(|(_, st)| {
            st.lines().any(|l| l == "Name:\tloong-spawn")
                && st.lines().any(|l| l.starts_with("Uid:\t65534\t"))
        })
        .collect();
    assert!(!relays.is_empty(), "no relay found");
    for (pid, st) in &relays {
        assert!(
            st.lines().any(|l| l == "Seccomp:\t2") && st.lines().any(|l| l == "NoNewPrivs:\t1"),
            "relay {pid}: {st}"
        );
        let fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                    .map(|t| t.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            !fds.is_empty() && fds.iter().all(|t| t.starts_with("socket:")),
            "relay {pid} holds {fds:?}"
        );
    }

    // doctor shows the broker: the two plugins' workers are served, with nothing open now.
    let doc: serde_json::Value =
        serde_json::from_slice(&home.ctl(&["doctor", "--json"]).stdout).expect("doctor JSON");
    assert_eq!(
        (
            doc["egress_sandboxes"].as_u64(),
            doc["egress_open"].as_u64()
        ),
        (Some(2), Some(0)),
        "{doc}"
    );
    let shown = text(&home.ctl(&["doctor"]).stdout);
    assert!(
        shown.contains("egress broker: 2 sandboxes, 0 open connections"),
        "{shown}"
    );

    // The trail: the connections with their bytes, and the refusal with its reason.
    let connected = details(&home, "net.connected");
    assert!(
        connected.iter().any(|d| d["plugin"] == "net"
            && d["host"] == "127.0.0.1"
            && d["port"] == granted.port
            && d["address"] == format!("127.0.0.1:{}", granted.port)),
        "{connected:?}"
    );
    let closed = details(&home, "net.closed");
    assert!(
        closed.iter().any(|d| d["port"] == granted.port
            && d["bytes_out"].as_u64() > Some(0)
            && d["bytes_in"].as_u64() > Some(0)
            && d["outcome"] == "closed"),
        "{closed:?}"
    );
    let denied = details(&home, "net.denied");
    assert!(
        denied.iter().any(|d| d["port"] == other.port
            && d["reason"]
                .as_str()
                .is_some_and(|r| r.contains("is not granted to plugin net"))),
        "{denied:?}"
    );
}

#[test]
fn sandbox_run_with_a_grant_uses_the_broker_and_is_refused_elsewhere() {
    let granted = LocalHttp::text("loong-run-granted");
    let other = LocalHttp::text("loong-run-other");
    let home = Home::new();
    home.start();
    let grant = format!("127.0.0.1:{}", granted.port);
    let curl = |url: &str| {
        home.ctl(&[
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--allow-net",
            &grant,
            "--",
            "/usr/bin/curl",
            "-sS",
            "-i",
            "--max-time",
            "10",
            url,
        ])
    };
    if !Path::new("/usr/bin/curl").exists() {
        return skip(
            "sandbox_run_with_a_grant_uses_the_broker_and_is_refused_elsewhere",
            "/usr/bin/curl is missing",
        );
    }
    // Positive control: the granted server, through the proxy curl takes from the environment.
    let ok = curl(&granted.url());
    let out = text(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{out}{}", text(&ok.stderr));
    assert!(out.contains("loong-run-granted"), "{out}");
    assert_eq!(granted.accepted(), 1);
    // Another port: the broker's 403 with its reason; the server sees nothing.
    let refused = curl(&other.url());
    let out = text(&refused.stdout);
    assert!(
        out.starts_with("HTTP/1.1 403"),
        "{out}{}",
        text(&refused.stderr)
    );
    assert!(
        out.contains(&format!(
            "loong egress: 127.0.0.1:{} is not granted to this sandbox (uid:0); grants: {grant}",
            other.port
        )),
        "{out}"
    );
    assert_eq!(other.accepted(), 0);
    // The run's start precedes every record of its connections: its broker serves only once
    // `sandbox.spawned` is queued.
    let records = |kind: &str| -> Vec<serde_json::Value> {
        let out = home.ctl(&[
            "audit", "recent", "--kind", kind, "--limit", "1000", "--json",
        ]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    };
    let spawned = records("sandbox.spawned");
    let mut connections = records("net.denied");
    connections.extend(records("net.connected"));
    assert!(connections.len() >= 2, "{connections:?}");
    for c in &connections {
        let s = spawned
            .iter()
            .find(|s| s["correlation"] == c["correlation"])
            .unwrap_or_else(|| panic!("no start for {c}"));
        assert!(s["seq"].as_u64() < c["seq"].as_u64(), "start {s} after {c}");
    }
    // A name that resolves to a loopback address is refused (its server sees nothing): a
    // run reaches a private address only by granting the address itself, as above.
    let by_name = format!("localhost:{}", other.port);
    let named = home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--allow-net",
        &by_name,
        "--",
        "/usr/bin/curl",
        "-sS",
        "-i",
        "--max-time",
        "10",
        &format!("http://{by_name}/page.txt"),
    ]);
    let out = text(&named.stdout);
    assert!(
        out.starts_with("HTTP/1.1 403"),
        "{out}{}",
        text(&named.stderr)
    );
    assert!(
        out.contains(&format!(
            "localhost resolves to 127.0.0.1, a loopback address; grant the address itself (--allow-net 127.0.0.1:{}) to reach it",
            other.port
        )),
        "{out}"
    );
    assert_eq!(other.accepted(), 0);
    // Without the proxy (curl --noproxy), nothing is reachable at all: no route.
    let direct = home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--allow-net",
        &grant,
        "--",
        "/usr/bin/curl",
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        "5",
        &other.url(),
    ]);
    assert_ne!(direct.status.code(), Some(0), "{}", text(&direct.stdout));
    assert_eq!(other.accepted(), 0);
    // The run's connections are decided on its effect path, as the operator: recorded.
    let decisions = details(&home, "policy.decision");
    assert!(
        decisions.iter().any(|d| d["capability"] == "net.egress"
            && d["target"] == grant
            && d["allowed"] == true),
        "{decisions:?}"
    );
    let connected = details(&home, "net.connected");
    assert!(
        connected.iter().any(|d| d["port"] == granted.port),
        "{connected:?}"
    );
}

/// Port `*` is kept by the broker, which decides each connection: a run granted
/// `127.0.0.1:*` reaches two servers on two ports of that address through its proxy, another
/// address gets the broker's 403 naming the grant, and without the proxy nothing is reachable
/// (no route; landlock's connect rule is the proxy's port only).
#[test]
fn sandbox_run_with_a_port_star_grant_reaches_every_port_of_its_host_only() {
    if !Path::new("/usr/bin/curl").exists() {
        return skip(
            "sandbox_run_with_a_port_star_grant_reaches_every_port_of_its_host_only",
            "/usr/bin/curl is missing",
        );
    }
    let one = LocalHttp::text("loong-star-one");
    let two = LocalHttp::text("loong-star-two");
    let home = Home::new();
    home.start();
    let run = |extra: &[&str], urls: &[&str]| {
        let mut args = vec![
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--allow-net",
            "127.0.0.1:*",
            "--",
            "/usr/bin/curl",
            "-sS",
            "-i",
            "--max-time",
            "10",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(urls);
        home.ctl(&args)
    };
    let ok = run(&[], &[&one.url(), &two.url()]);
    let out = text(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{out}{}", text(&ok.stderr));
    assert!(
        out.contains("loong-star-one") && out.contains("loong-star-two"),
        "{out}"
    );
    assert_eq!((one.accepted(), two.accepted()), (1, 1));
    let elsewhere = format!("http://127.0.0.2:{}/page.txt", one.port);
    let refused = run(&[], &[&elsewhere]);
    let out = text(&refused.stdout);
    assert!(
        out.starts_with("HTTP/1.1 403")
            && out.contains(&format!(
                "loong egress: 127.0.0.2:{} is not granted to this sandbox (uid:0); grants: 127.0.0.1:*",
                one.port
            )),
        "{out}{}",
        text(&refused.stderr)
    );
    let direct = run(&["--noproxy", "*"], &[&one.url()]);
    assert_ne!(direct.status.code(), Some(0), "{}", text(&direct.stdout));
    assert_eq!((one.accepted(), two.accepted()), (1, 1));
}

#[test]
fn the_real_fetch_server_granted_a_name_reaches_it_and_nothing_else() {
    let test = "the_real_fetch_server_granted_a_name_reaches_it_and_nothing_else";
    let fetch = Path::new(MCP_ROOT).join("venv/bin/mcp-server-fetch");
    if !fetch.exists() {
        return skip(test, &format!("{} is missing", fetch.display()));
    }
    let granted = LocalHttp::text("loong-fetch-granted");
    let other = LocalHttp::text("loong-fetch-other");
    let home = Home::new();
    let metadata = format!(
        r#""bridge_kind": "mcp_stdio", "command": {:?}, "args_json": {}"#,
        fetch.display().to_string(),
        args_json(&["--allow-private-ips", "--ignore-robots-txt"])
    );
    // Granted by name; `localhost` is a loopback address, which the plugin allows.
    install_foreign(
        &home,
        "fetch",
        &metadata,
        &format!(
            r#""net": ["localhost:{}"], "allow_private_network": true, "timeout_ms": 30000"#,
            granted.port
        ),
    );
    home.start();
    let get = |url: String| {
        let input = serde_json::json!({ "url": url, "raw": true }).to_string();
        invoke(&home, &["fetch/fetch", "--input", &input])
    };
    let (code, out, err) = get(format!("http://localhost:{}/page.txt", granted.port));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("loong-fetch-granted"), "{out}");
    assert_eq!(granted.accepted(), 1);
    let (code, out, _) = get(format!("http://localhost:{}/page.txt", other.port));
    assert!(code != 0 || out.contains("403"), "{out}");
    assert!(!out.contains("loong-fetch-other"), "{out}");
    assert_eq!(other.accepted(), 0);
    let denied = details(&home, "net.denied");
    assert!(
        denied
            .iter()
            .any(|d| d["host"] == "localhost" && d["port"] == other.port),
        "{denied:?}"
    );
}

#[test]
fn shell_exec_with_shell_net_reaches_its_grant_through_the_broker() {
    let granted = LocalHttp::text("loong-shell-net-page");
    let other = LocalHttp::text("loong-shell-other-page");
    let shared = shared_dir("sn");
    let ws = shared.path().join("ws");
    fs::create_dir(&ws).expect("ws");
    fs::set_permissions(&ws, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
    let home = Home::with_config(&format!(
        "[builtins]\nworkspace = {:?}\nshell_net = [\"127.0.0.1:{}\"]\ntimeout_ms = 15000\n",
        ws.display().to_string(),
        granted.port
    ));
    home.start();
    let curl = |url: String| -> String {
        let input = serde_json::json!({ "command": format!("curl -sS -i --max-time 10 {url}") });
        let (code, out, err) = invoke(
            &home,
            &["shell.exec", "--input", &input.to_string(), "--json"],
        );
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        v["output"]["stdout"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // Positive control: the granted server, through the proxy the shell's environment names.
    let out = curl(granted.url());
    assert!(out.contains("loong-shell-net-page"), "{out}");
    assert_eq!(granted.accepted(), 1);
    // The same host on another port: the broker's 403, naming the tool; no connection made.
    let out = curl(other.url());
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(
        out.contains(&format!(
            "127.0.0.1:{} is not granted to plugin shell.exec",
            other.port
        )),
        "{out}"
    );
    assert_eq!(other.accepted(), 0);
}

#[test]
fn a_token_revoked_mid_run_stops_the_run_s_next_connection() {
    use std::io::{BufRead, Write};
    let granted = LocalHttp::text("loong-token-page");
    let grant = format!("127.0.0.1:{}", granted.port);
    let home = Home::new();
    fs::create_dir_all(home.path().join("packs")).expect("packs");
    fs::write(
        home.path().join("packs/t.toml"),
        format!(
            "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"process.exec:sh\", \"process.exec:curl\", \"process.exec:echo\", \"process.exec:read\", \"net.egress:{grant}\"]\napproval = \"never\"\n"
        ),
    )
    .expect("pack");
    home.start();
    let (secret, id) = crate::kernel_calls::issue(
        &home,
        &[
            "process.exec:sh",
            "process.exec:curl",
            "process.exec:echo",
            "process.exec:read",
            &format!("net.egress:{grant}"),
        ],
    );
    // One curl, a line from stdin, another curl to the same granted destination.
    let script = format!(
        "curl -sS -i --max-time 10 {url}; echo; echo DONE-ONE; read x; curl -sS -i --max-time 10 {url}",
        url = granted.url()
    );
    let mut run = held_run(&home, Some(&secret), &grant, "/bin/sh", &script);
    let mut out = std::io::BufReader::new(run.stdout.take().expect("stdout"));
    let mut first = String::new();
    let mut line = String::new();
    while out.read_line(&mut line).expect("read") > 0 && !line.contains("DONE-ONE") {
        first.push_str(&line);
        line.clear();
    }
    // Positive control: under the live token, the connection was decided and made.
    if !first.contains("loong-token-page") {
        let _ = run.kill();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut run.stderr.take().expect("stderr"), &mut err);
        panic!("the first connection failed: {first}{err}");
    }
    assert_eq!(granted.accepted(), 1);
    let revoked = home.ctl(&["tokens", "revoke", &id]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let mut stdin = run.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("write");
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("rest");
    let _ = run.wait();
    // The next connection is decided anew: the revoked token refuses it.
    assert!(rest.starts_with("HTTP/1.1 403"), "{rest}");
    assert!(
        rest.contains(&format!("net.egress on {grant} denied")),
        "{rest}"
    );
    assert_eq!(
        granted.accepted(),
        1,
        "a connection under a revoked token was made"
    );
}

/// A listener on 127.0.0.1 that accepts and then holds every connection open, silent, never
/// closing it (a malicious remote server); counts what it accepted.
pub(crate) fn silent_listener() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(c);
        }
    });
    (port, n)
}

/// Polls the trail until `kind` has a record for `port`, for up to `secs` seconds.
pub(crate) fn wait_for_port(
    home: &Home,
    kind: &str,
    port: u16,
    secs: u64,
) -> Vec<serde_json::Value> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let got = details(home, kind);
        if got.iter().any(|d| d["port"] == port) || std::time::Instant::now() > until {
            return got;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_connection_ends_with_its_sandbox_even_when_the_server_never_closes() {
    if !Path::new("/usr/bin/curl").exists() {
        return skip(
            "a_connection_ends_with_its_sandbox_even_when_the_server_never_closes",
            "/usr/bin/curl is missing",
        );
    }
    let (port, accepted) = silent_listener();
    let granted = LocalHttp::text("loong-ends-control");
    let home = Home::new();
    home.start();
    let run = |p: u16, url: &str| {
        home.ctl(&[
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--allow-net",
            &format!("127.0.0.1:{p}"),
            "--",
            "/usr/bin/curl",
            "-sS",
            "--max-time",
            "2",
            url,
        ])
    };
    // Positive control: a server that answers and closes; its connection is closed and recorded.
    let ok = run(granted.port, &granted.url());
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let closed = wait_for_port(&home, "net.closed", granted.port, 10);
    assert!(
        closed.iter().any(|d| d["port"] == granted.port),
        "{closed:?}"
    );
    // The silent server holds its end forever; the sandbox gives up and exits.
    let out = run(port, &format!("http://127.0.0.1:{port}/"));
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // The broker's connection ends with the sandbox: recorded closed, nothing left open.
    let closed = wait_for_port(&home, "net.closed", port, 10);
    let mine: Vec<_> = closed.iter().filter(|d| d["port"] == port).collect();
    assert_eq!(mine.len(), 1, "{closed:?}");
    assert_eq!(mine[0]["outcome"], "sandbox_ended", "{mine:?}");
    let mut report = String::new();
    for _ in 0..25 {
        report = text(&home.ctl(&["doctor"]).stdout);
        if report.contains("egress broker: 0 sandboxes, 0 open connections") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        report.contains("egress broker: 0 sandboxes, 0 open connections"),
        "{report}"
    );
}

#[test]
fn a_token_revoked_mid_connection_ends_the_connection() {
    use std::io::{BufRead, Write};
    let (port, _) = saw_server();
    let grant = format!("127.0.0.1:{port}");
    let home = Home::new();
    fs::create_dir_all(home.path().join("packs")).expect("packs");
    fs::write(
        home.path().join("packs/t.toml"),
        format!(
            "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"process.exec:python3\", \"net.egress:{grant}\"]\napproval = \"never\"\n"
        ),
    )
    .expect("pack");
    home.start();
    // A tunnel opened under the token, held idle until a line on stdin, then used: its TLS
    // hello (no server name, for an address), made by Python's ssl without a socket.
    let script = format!(
        r#"
import os, socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(incoming, outgoing)
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"CONNECT {grant} HTTP/1.1\r\n\r\n")
print("OPEN", s.recv(200).split(b"\r\n")[0].decode(), flush=True)
sys.stdin.readline()
got = b""
try:
    s.sendall(outgoing.read())
    while True:
        b = s.recv(4096)
        if not b:
            break
        got += b
except OSError as e:
    print("ERROR", e)
print("GOT", got[:8].decode(errors="replace"))
"#
    );
    let held = |revoke: bool| -> String {
        let (secret, id) = crate::kernel_calls::issue(
            &home,
            &["process.exec:python3", &format!("net.egress:{grant}")],
        );
        let mut run = held_run(&home, Some(&secret), &grant, "/usr/bin/python3", &script);
        let mut out = std::io::BufReader::new(run.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read");
        if !line.starts_with("OPEN HTTP/1.1 200") {
            let _ = run.kill();
            let mut err = String::new();
            let _ =
                std::io::Read::read_to_string(&mut run.stderr.take().expect("stderr"), &mut err);
            panic!("the tunnel was not opened: {line}{err}");
        }
        if revoke {
            let revoked = home.ctl(&["tokens", "revoke", &id]);
            assert!(revoked.status.success(), "{}", text(&revoked.stderr));
            // The broker decides the open connection again as the revocation lands.
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let mut stdin = run.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("write");
        drop(stdin);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).expect("rest");
        let _ = run.wait();
        rest
    };
    // Positive control: a tunnel held under a live token carries its request.
    let rest = held(false);
    assert!(rest.contains("GOT HTTP/1.1"), "{rest}");
    // Revoked while the tunnel is open: the tunnel ends; nothing more reaches the server.
    let rest = held(true);
    assert!(!rest.contains("GOT HTTP/1.1"), "{rest}");
    let closed = details(&home, "net.closed");
    assert!(
        closed.iter().any(|d| d["outcome"] == "withdrawn"
            && d["reason"]
                .as_str()
                .is_some_and(|r| r.contains(&format!("net.egress on {grant} denied")))),
        "{closed:?}"
    );
}

#[test]
fn connections_after_a_revocation_are_refused_without_a_decision_each() {
    use std::io::{BufRead, Write};
    let granted = LocalHttp::text("loong-sticky-page");
    let grant = format!("127.0.0.1:{}", granted.port);
    let home = Home::new();
    fs::create_dir_all(home.path().join("packs")).expect("packs");
    fs::write(
        home.path().join("packs/t.toml"),
        format!(
            "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"process.exec:python3\", \"net.egress:{grant}\"]\napproval = \"never\"\n"
        ),
    )
    .expect("pack");
    home.start();
    let (secret, id) = crate::kernel_calls::issue(
        &home,
        &["process.exec:python3", &format!("net.egress:{grant}")],
    );
    // One connection (the positive control), a line from stdin, then 200 more.
    let script = format!(
        r#"
import os, socket, sys
port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
def once():
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"CONNECT {grant} HTTP/1.1\r\n\r\n")
    line = s.recv(200).split(b"\r\n")[0].decode()
    s.close()
    return line
print("FIRST", once(), flush=True)
sys.stdin.readline()
print("REFUSED", sum(once().startswith("HTTP/1.1 403") for _ in range(200)))
"#
    );
    let mut run = held_run(&home, Some(&secret), &grant, "/usr/bin/python3", &script);
    let mut out = std::io::BufReader::new(run.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    if !line.starts_with("FIRST HTTP/1.1 200") {
        let _ = run.kill();
        panic!("the first connection failed: {line}");
    }
    let revoked = home.ctl(&["tokens", "revoke", &id]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let mut stdin = run.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("write");
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("rest");
    let _ = run.wait();
    assert!(rest.contains("REFUSED 200"), "{rest}");
    // The effect path refused the destination once; the rest were refused by that answer.
    let refusals = details(&home, "policy.decision")
        .into_iter()
        .filter(|d| d["capability"] == "net.egress" && d["allowed"] == false)
        .count();
    assert!(
        (1..=2).contains(&refusals),
        "{refusals} refused decisions recorded"
    );
}

#[test]
fn a_connection_open_when_loongd_stops_is_recorded_closed() {
    let granted = LocalHttp::text("loong-stop-page");
    let grant = format!("127.0.0.1:{}", granted.port);
    let home = Home::new();
    home.start();
    // A tunnel opened and held (the program waits far longer than the test).
    let script = format!(
        r#"
import os, socket, time
port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"CONNECT {grant} HTTP/1.1\r\n\r\n")
print("OPEN", s.recv(200).split(b"\r\n")[0].decode(), flush=True)
time.sleep(60)
"#
    );
    let mut run = held_run(&home, None, &grant, "/usr/bin/python3", &script);
    let mut out = std::io::BufReader::new(run.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("read");
    if !line.starts_with("OPEN HTTP/1.1 200") {
        let _ = run.kill();
        panic!("the tunnel was not opened: {line}");
    }
    // Positive control: the open connection is recorded connected.
    let connected = details(&home, "net.connected");
    assert!(
        connected.iter().any(|d| d["port"] == granted.port),
        "{connected:?}"
    );
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    let _ = run.kill();
    let _ = run.wait();
    home.start();
    let closed = details(&home, "net.closed");
    assert!(
        closed
            .iter()
            .any(|d| d["port"] == granted.port && d["outcome"] == "loongd_stopped"),
        "{closed:?}"
    );
}

/// `loongctl sandbox run --tier balanced [--token T] --allow-net GRANT -- PROGRAM -c SCRIPT`,
/// its stdio piped, for a test that holds the run open while it acts on the host.
pub(crate) fn held_run(
    home: &Home,
    token: Option<&str>,
    grant: &str,
    program: &str,
    script: &str,
) -> std::process::Child {
    let mut args = vec!["sandbox", "run", "--tier", "balanced"];
    if let Some(t) = token {
        args.extend(["--token", t]);
    }
    args.extend(["--allow-net", grant, "--", program, "-c", script]);
    std::process::Command::new(crate::support::bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sandbox run")
}

/// A server that answers what it first receives: an HTTP answer whose body is `SAW:` and the
/// bytes it got (lossy text); it counts the bytes every connection brought.
pub(crate) fn saw_server() -> (u16, Arc<AtomicUsize>) {
    use std::io::{Read, Write};
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let got = match c.read(&mut buf) {
                    Ok(k) if k > 0 => k,
                    _ => return,
                };
                seen.fetch_add(got, Ordering::SeqCst);
                let body = format!("SAW:{}", String::from_utf8_lossy(&buf[..got]));
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    (port, n)
}

/// Domain fronting: a session through the broker is for the host it was granted for. A
/// CONNECT tunnel carries TLS only, and its ClientHello must name the CONNECT's host (an IP
/// literal's, no name); a raw forward carries any protocol, but a TLS hello on it is checked
/// the same way. A refused hello reaches nothing (the server counts no byte) and is recorded
/// `net.denied` with its code; each refusal has its positive control.
#[test]
fn a_tunnel_s_tls_hello_must_name_its_host() {
    let (named, named_bytes) = saw_server();
    let (literal, literal_bytes) = saw_server();
    let home = Home::new();
    let _peer = install_net_peer_with(
        &home,
        "net",
        &[format!("localhost:{named}"), format!("127.0.0.1:{literal}")],
        r#", "allow_private_network": true"#,
    );
    home.start();
    let hello = |target: String, sni: Option<&str>, via: &str, plain: bool| {
        call(
            &home,
            serde_json::json!({"op": "hello", "target": target, "sni": sni, "via": via, "plain": plain}),
        )
    };
    let by_name = format!("localhost:{named}");
    let by_ip = format!("127.0.0.1:{literal}");
    let passed = |got: &serde_json::Value| {
        got["got"]
            .as_str()
            .is_some_and(|g| g.contains("SAW:\u{16}\u{3}") || g.contains("SAW:\u{fffd}"))
    };
    // Positive controls: the name's own hello, through the tunnel and on the forward; no name
    // for an address.
    for (target, sni, via) in [
        (&by_name, Some("localhost"), "proxy"),
        (&by_name, Some("LOCALHOST."), "proxy"),
        (&by_name, Some("localhost"), "forward"),
        (&by_ip, None, "proxy"),
    ] {
        let got = hello(target.clone(), sni, via, false);
        assert!(passed(&got), "{target} {sni:?} {via}: {got}");
    }
    // Plain bytes on a forward pass (a raw grant carries any protocol).
    let got = hello(by_name.clone(), None, "forward", true);
    assert!(
        got["got"]
            .as_str()
            .is_some_and(|g| g.contains("SAW:PLAIN-BYTES")),
        "{got}"
    );
    let before = (
        named_bytes.load(Ordering::SeqCst),
        literal_bytes.load(Ordering::SeqCst),
    );
    // Refused: another name, no name, a name for an address, plain bytes in a tunnel.
    for (target, sni, via, plain) in [
        (&by_name, Some("other.test"), "proxy", false),
        (&by_name, None, "proxy", false),
        (&by_name, Some("other.test"), "forward", false),
        (&by_ip, Some("localhost"), "proxy", false),
        (&by_name, None, "proxy", true),
    ] {
        let got = hello(target.clone(), sni, via, plain);
        if via == "proxy" {
            // The tunnel was opened (200 cannot be taken back), then closed unanswered.
            assert_eq!(
                got["status"], "HTTP/1.1 200 Connection Established",
                "{got}"
            );
        }
        assert_eq!(
            got["got"], "",
            "{target} {sni:?} {via} plain={plain}: {got}"
        );
    }
    assert_eq!(
        (
            named_bytes.load(Ordering::SeqCst),
            literal_bytes.load(Ordering::SeqCst)
        ),
        before,
        "a refused hello reached its server"
    );
    let denied = details(&home, "net.denied");
    let coded = |code: &str, host: &str, want: &str| {
        denied.iter().any(|d| {
            d["code"] == code
                && d["host"] == host
                && d["plugin"] == "net"
                && d["reason"].as_str().is_some_and(|r| r.contains(want))
        })
    };
    assert!(
        coded(
            "sni_mismatch",
            "localhost",
            "names \"other.test\", not \"localhost\""
        ),
        "{denied:?}"
    );
    assert!(
        coded("sni_mismatch", "localhost", "names no server"),
        "{denied:?}"
    );
    assert!(
        coded(
            "sni_mismatch",
            "127.0.0.1",
            "names \"localhost\", not \"127.0.0.1\""
        ),
        "{denied:?}"
    );
    assert!(
        coded("not_tls", "localhost", "carries TLS only"),
        "{denied:?}"
    );
    assert_eq!(
        denied
            .iter()
            .filter(|d| d["code"] == "sni_mismatch")
            .count(),
        4,
        "{denied:?}"
    );
}

/// Plain HTTP through the proxy: the absolute URI's authority is where the request goes and
/// what its `Host` header says; a `Host` naming another site is replaced, so a server behind
/// the granted address that routes by `Host` sees only the granted name.
#[test]
fn an_absolute_form_request_s_host_header_is_the_granted_authority() {
    let (port, _) = saw_server();
    let home = Home::new();
    let _peer = install_net_peer(&home, &[format!("127.0.0.1:{port}")]);
    home.start();
    for host in [format!("127.0.0.1:{port}"), "evil.test".to_string()] {
        let head = format!("GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let got = call(&home, serde_json::json!({"op": "raw_head", "head": head}));
        let text = got["got"].as_str().unwrap_or_default();
        assert!(text.starts_with("HTTP/1.1 200"), "{got}");
        assert!(
            text.contains(&format!(
                "SAW:GET /x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            )),
            "{got}"
        );
        assert!(!text.contains("evil.test"), "{got}");
    }
}

/// A `sandbox run` of a Python script granted `grant`: its stdout, and the run's exit code.
pub(crate) fn run_python(home: &Home, grant: &str, script: &str) -> (Option<i32>, String) {
    let out = home.ctl(&[
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--allow-net",
        grant,
        "--",
        "/usr/bin/python3",
        "-c",
        script,
    ]);
    (
        out.status.code(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}
