//! The gateway on a Unix socket (`[gateway] listen = "/PATH"`): loongd binds it and passes
//! it to the worker, which serves the same routes and checks as on TCP; a path that is not a
//! socket is never replaced. And the worker's confinement (the balanced tier, no network).

use std::{
    fs,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    kernel_calls::issue,
    support::{text, Home},
    workers::install_examples,
};

/// One HTTP/1.1 exchange over the socket at `path`: the status and the body.
fn http_unix(path: &Path, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let Ok(mut s) = UnixStream::connect(path) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut req = format!("GET {target} HTTP/1.1\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

fn home_listening_on(name: &str, enabled: bool) -> (Home, std::path::PathBuf) {
    let home = Home::new();
    let socket = home.path().join(name);
    fs::write(
        home.path().join("loongd.toml"),
        format!(
            "[gateway]\nenabled = {enabled}\nlisten = \"{}\"\n",
            socket.display()
        ),
    )
    .expect("config");
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\napproval = \"never\"\n",
    )
    .expect("pack");
    install_examples(&home);
    (home, socket)
}

/// Served on a Unix socket: `/health`, and `/v1/models` under a bearer (the controls); no
/// bearer is 401 and a foreign Host 403, as on TCP. A `listen` path that exists and is not
/// a socket is refused by name, and left as it was.
#[test]
fn gateway_serves_on_a_unix_socket_and_never_replaces_a_file_that_is_not_one() {
    let (home, socket) = home_listening_on("gw.sock", true);
    home.start();
    let until = Instant::now() + Duration::from_secs(30);
    while http_unix(&socket, "/health", &[("Host", "localhost")]).0 != 200 {
        assert!(
            Instant::now() < until,
            "no gateway on {}: {}",
            socket.display(),
            home.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (secret, _) = issue(&home, &["tool.invoke:echo"]);
    let bearer = format!("Bearer {secret}");
    let (status, body) = http_unix(
        &socket,
        "/v1/models",
        &[("Host", "localhost"), ("Authorization", &bearer)],
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_unix(&socket, "/v1/models", &[("Host", "localhost")]);
    assert_eq!(status, 401, "{body}");
    let (status, body) = http_unix(
        &socket,
        "/v1/models",
        &[("Host", "evil.example"), ("Authorization", &bearer)],
    );
    assert_eq!(status, 403, "{body}");

    // A regular file where the socket should be: refused by name, kept.
    let (home, path) = home_listening_on("not-a-socket", false);
    fs::write(&path, "keep me").expect("file");
    home.start();
    let out = home.ctl(&["gateway", "run"]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("exists and is not a socket") && err.contains("not-a-socket"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&path).expect("kept"), "keep me");
}

/// The process named `loong-worker-gateway` (its 15-byte `comm`) at or under `root`.
fn worker_under(root: u64) -> Option<u64> {
    let field = |pid: u64, name: &str| -> Option<String> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let mut frontier = vec![root];
    while let Some(pid) = frontier.pop() {
        if field(pid, "Name:").is_some_and(|n| "loong-worker-gateway".starts_with(&n)) {
            return Some(pid);
        }
        for entry in fs::read_dir("/proc").ok()?.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if field(child, "PPid:").and_then(|p| p.parse::<u64>().ok()) == Some(pid) {
                frontier.push(child);
            }
        }
    }
    None
}

/// The gateway worker is confined as the balanced tier says: its own (empty) network
/// namespace, seccomp filtering, no new privileges, not root; loongd, which bound the
/// listener, shares the test's network namespace (the control).
#[test]
fn gateway_worker_runs_confined_without_a_network_of_its_own() {
    let (home, socket) = home_listening_on("gw.sock", true);
    let loongd = home.start();
    let until = Instant::now() + Duration::from_secs(30);
    while http_unix(&socket, "/health", &[("Host", "localhost")]).0 != 200 {
        assert!(Instant::now() < until, "no gateway: {}", home.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = home.ctl(&["gateway", "status", "--json"]);
    let status = crate::kernel_calls::json(&text(&out.stdout));
    let spawner = status["pid"].as_u64().unwrap_or(0);
    assert!(spawner > 0, "{status}");
    let pid = worker_under(spawner).unwrap_or_else(|| panic!("no gateway worker under {status}"));
    let ns = |pid: String| fs::read_link(format!("/proc/{pid}/ns/net")).expect("ns/net");
    assert_eq!(ns(loongd.to_string()), ns("self".into()), "the control");
    assert_ne!(
        ns(pid.to_string()),
        ns("self".into()),
        "the worker's own namespace"
    );
    let proc_status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert_eq!(field("Seccomp:"), "2", "{proc_status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{proc_status}");
    assert_ne!(field("Uid:"), "0", "{proc_status}");
}
