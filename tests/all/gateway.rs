//! The gateway (`loong-worker-gateway`): Loong's tools over MCP streamable HTTP, driven by the
//! official Python `mcp` SDK, and the gateway's HTTP refusals, driven by plain HTTP/1.1: each
//! request authenticated in loongd under its bearer's token, `Host` and `Origin` checked
//! against DNS rebinding, limits answered 413/429, and the worker restarted by its supervisor
//! when it dies.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    kernel_calls::{issue, json},
    support::{skip, text, Home},
    workers::{details, install_examples},
};

const MCP_ROOT: &str = "/opt/loong-mcp";

/// The client: one or more streamable-HTTP sessions under a bearer; runs its plan and prints
/// what it saw as JSON.
const CLIENT: &str = r#"
import asyncio, json, sys
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

url, secret, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

def seen(r):
    return {"is_error": bool(r.is_error),
            "text": "".join(c.text for c in r.content if c.type == "text"),
            "structured": r.structured_content}

async def session(steps, out):
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {secret}"})
    async with client:
        async with streamable_http_client(url, http_client=client) as (read, write, *_):
            async with ClientSession(read, write) as s:
                await s.initialize()
                listed = await s.list_tools()
                out["tools"] = {t.name: {"description": t.description, "schema": t.input_schema}
                                for t in listed.tools}
                for step in steps:
                    try:
                        r = await s.call_tool(step["name"], step.get("arguments", {}))
                        out["calls"].append(dict(name=step["name"], **seen(r)))
                    except MCPError as e:
                        out["calls"].append({"name": step["name"], "protocol_error": e.error.message})

async def many(sessions, calls, out):
    # `sessions` sessions, each making `calls` echo calls at once; every answer checked.
    async def one(n):
        got = []
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {secret}"})
        async with client:
            async with streamable_http_client(url, http_client=client) as (read, write, *_):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    rs = await asyncio.gather(*[
                        s.call_tool("echo", {"session": n, "call": i}) for i in range(calls)])
                    for i, r in enumerate(rs):
                        got.append((r.structured_content or {}).get("call") == i
                                   and (r.structured_content or {}).get("session") == n
                                   and not r.is_error)
        return got
    results = await asyncio.gather(*[one(n) for n in range(sessions)])
    out["answered"] = sum(len(r) for r in results)
    out["right"] = sum(sum(1 for ok in r if ok) for r in results)

async def main():
    out = {"calls": []}
    if isinstance(plan, dict):
        await many(plan["sessions"], plan["calls"], out)
    else:
        await session(plan, out)
    print(json.dumps(out))

asyncio.run(main())
"#;

fn python() -> Result<std::path::PathBuf, String> {
    let py = Path::new(MCP_ROOT).join("venv/bin/python3");
    let ok = Command::new(&py)
        .args(["-c", "import mcp.client.streamable_http"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(py)
    } else {
        Err(format!(
            "{} cannot import the `mcp` SDK's streamable HTTP client (`.ci/run` installs it)",
            py.display()
        ))
    }
}

/// Runs the client; its report, or its stderr when it failed.
fn client(
    home: &Home,
    port: u16,
    secret: &str,
    plan: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let py = python().map_err(|e| e.to_string())?;
    let script = home.path().join("gateway_client.py");
    fs::write(&script, CLIENT).expect("client script");
    let out = Command::new(py)
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}/mcp"))
        .arg(secret)
        .arg(plan.to_string())
        .output()
        .expect("python runs");
    // The SDK logs what it finds wrong without failing (a session's end answered with a
    // status it does not expect, among others): a warning is a failure here.
    let stderr = text(&out.stderr);
    if out.status.success() && !stderr.contains("WARNING") && !stderr.contains("failed") {
        Ok(json(&text(&out.stdout)))
    } else {
        Err(format!("{}\n{}", text(&out.stderr), text(&out.stdout)))
    }
}

/// A free loopback port (bound and released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A home whose gateway starts with loongd on `port`, with `extra` `[gateway]` keys.
pub(crate) fn gateway_home(port: u16, extra: &str) -> Home {
    let home = Home::with_config(&format!(
        "[gateway]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n{extra}"
    ));
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\", \"fs.read\", \"fs.write\"]\napproval = \"never\"\n",
    )
    .expect("pack");
    install_examples(&home);
    home
}

/// One HTTP/1.1 exchange: the status, the headers (lowercase names) and the body.
pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// Waits until the gateway answers `/health`.
pub(crate) fn wait_for_gateway(home: &Home, port: u16) {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/health", &[], "").0 == 200
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the gateway did not answer on {port}:\n{}", home.log());
}

fn error_type(body: &str) -> String {
    json(body)["error"]["type"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn gateway_mcp_serves_exactly_the_bearers_tools_and_each_call_goes_through_the_kernel() {
    const TEST: &str =
        "gateway_mcp_serves_exactly_the_bearers_tools_and_each_call_goes_through_the_kernel";
    if let Err(why) = python() {
        return skip(TEST, &why);
    }
    let time = Path::new(MCP_ROOT).join("venv/bin/mcp-server-time");
    if !time.exists() {
        return skip(TEST, &format!("{} is missing", time.display()));
    }
    let port = free_port();
    let home = gateway_home(port, "");
    // file.read over a shared directory and /etc: reading /etc/shadow is a denial by
    // loongd's denylist, whatever the token holds.
    let shared = crate::bridges::shared_dir("gw");
    let mut config = fs::read_to_string(home.path().join("loongd.toml")).expect("config");
    config = format!(
        "[builtins]\nread_roots = [{:?}, \"/etc\"]\n{config}",
        shared.path().display().to_string()
    );
    fs::write(home.path().join("loongd.toml"), config).expect("config");
    let dir = home.path().join("plugins/time");
    fs::create_dir_all(&dir).expect("plugin dir");
    let manifest = serde_json::json!({
        "api_version": "v1alpha1", "plugin_id": "time", "version": "0.1.0",
        "summary": "the time", "capabilities": [],
        "metadata": {"bridge_kind": "mcp_stdio", "command": time.display().to_string(),
            "args_json": serde_json::to_string(&["--local-timezone", "UTC"]).expect("args")},
        "sandbox": {"timeout_ms": 10000},
    });
    fs::write(dir.join("loong.plugin.json"), manifest.to_string()).expect("manifest");
    home.start();
    wait_for_gateway(&home, port);
    let (secret, id) = issue(
        &home,
        &[
            "tool.invoke:echo",
            "tool.invoke:time/get_current_time",
            "fs.read",
        ],
    );
    let config_path = "/etc/shadow".to_string();
    let plan = serde_json::json!([
        {"name": "echo", "arguments": {"ping": 1}},
        {"name": "time--get_current_time", "arguments": {"timezone": "UTC"}},
        {"name": "file__read", "arguments": {"path": config_path}},
        {"name": "json-transform", "arguments": {}},
        {"name": "no-such-tool", "arguments": {}},
    ]);
    let report = client(&home, port, &secret, &plan)
        .unwrap_or_else(|e| panic!("client: {e}\n{}", home.log()));
    let tools = report["tools"].as_object().expect("tools");
    let mut names: Vec<&str> = tools.keys().map(String::as_str).collect();
    names.sort_unstable();
    // The same names as `mcp serve` gives (the shared mapping): `.` → `__`, `/` → `--`.
    assert_eq!(
        names,
        ["echo", "file__read", "time--get_current_time"],
        "{report}"
    );
    let echo = &report["calls"][0];
    assert_eq!(echo["is_error"], false, "{echo}");
    assert_eq!(echo["structured"], serde_json::json!({"ping": 1}), "{echo}");
    // A confined MCP server's tool, its own result passed on.
    let now = &report["calls"][1];
    assert_eq!(now["is_error"], false, "{now}");
    assert_eq!(now["structured"]["timezone"], "UTC", "{now}");
    // Denied by loongd (its home is denylisted): a tool error with the reason.
    let denied = &report["calls"][2];
    assert_eq!(denied["is_error"], true, "{denied}");
    assert!(
        denied["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("denied: ")),
        "{denied}"
    );
    // Not the token's, and not a tool at all: unknown to this server, by name.
    for i in [3, 4] {
        let c = &report["calls"][i];
        let name = c["name"].as_str().expect("name");
        assert!(
            c["protocol_error"]
                .as_str()
                .is_some_and(|m| m.contains("unknown tool") && m.contains(name)),
            "{c}"
        );
    }
    // Every call decided under the token's public id, with the outcome recorded.
    let trail = crate::kernel_calls::trail(&home, &id);
    let decided: Vec<(String, bool)> = trail
        .iter()
        .filter(|r| r["kind"] == "policy.decision")
        .map(|r| {
            let d = crate::workers::detail(r);
            (
                d["target"].as_str().unwrap_or("").to_string(),
                d["allowed"] == true,
            )
        })
        .collect();
    assert!(decided.contains(&("echo".to_string(), true)), "{decided:?}");
    assert!(
        decided.contains(&("time/get_current_time".to_string(), true)),
        "{decided:?}"
    );
    assert!(
        decided.iter().any(|(t, ok)| t == &config_path && !ok),
        "{decided:?}"
    );
}

#[test]
fn gateway_refuses_no_bearer_a_dead_or_grantless_token_and_a_foreign_host_or_origin() {
    let port = free_port();
    let home = gateway_home(port, "max_body_bytes = 4096\n");
    home.start();
    wait_for_gateway(&home, port);
    let (secret, _) = issue(&home, &["tool.invoke:echo"]);
    let bearer = format!("Bearer {secret}");
    let auth = ("Authorization", bearer.as_str());
    // The positive control: the bearer, a loopback Host, no Origin.
    let (status, _, body) = http(port, "GET", "/v1/models", &[auth], "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["object"], "list", "{body}");
    // /health needs no bearer.
    assert_eq!(http(port, "GET", "/health", &[], "").0, 200);

    // No bearer: 401, typed, with a challenge.
    let (status, headers, body) = http(port, "GET", "/v1/models", &[], "");
    assert_eq!(
        (status, error_type(&body).as_str()),
        (401, "unauthorized"),
        "{body}"
    );
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "www-authenticate" && v.starts_with("Bearer")),
        "{headers:?}"
    );
    // A secret that names no token, and a revoked one: 401.
    let (status, _, body) = http(
        port,
        "POST",
        "/mcp",
        &[("Authorization", "Bearer not-a-token")],
        "{}",
    );
    assert_eq!(
        (status, error_type(&body).as_str()),
        (401, "unauthorized"),
        "{body}"
    );
    let (dead, dead_id) = issue(&home, &["tool.invoke:echo"]);
    assert!(home.ctl(&["tokens", "revoke", &dead_id]).status.success());
    let dead = format!("Bearer {dead}");
    let (status, _, body) = http(
        port,
        "GET",
        "/v1/models",
        &[("Authorization", dead.as_str())],
        "",
    );
    assert_eq!(
        (status, error_type(&body).as_str()),
        (401, "unauthorized"),
        "{body}"
    );
    assert!(body.contains("revoked"), "{body}");
    // A live token that may invoke no tool: 403, typed.
    let (grantless, grantless_id) = issue(&home, &["fs.write:/tmp/nothing-here"]);
    let grantless = format!("Bearer {grantless}");
    let (status, _, body) = http(
        port,
        "POST",
        "/mcp",
        &[("Authorization", grantless.as_str())],
        "{}",
    );
    assert_eq!(
        (status, error_type(&body).as_str()),
        (403, "forbidden"),
        "{body}"
    );
    // The refusal is in that token's trail.
    let trail = crate::kernel_calls::trail(&home, &grantless_id);
    assert!(
        trail.iter().any(
            |r| r["kind"] == "policy.decision" && crate::workers::detail(r)["allowed"] == false
        ),
        "{trail:?}"
    );

    // DNS rebinding: a foreign Host or Origin is refused before anything else, on /mcp and
    // elsewhere; loopback ones pass (the controls).
    for path in ["/mcp", "/v1/models"] {
        let (status, _, body) = http(port, "POST", path, &[auth, ("Host", "evil.example")], "{}");
        assert_eq!(
            (status, error_type(&body).as_str()),
            (403, "host_not_allowed"),
            "{path}: {body}"
        );
        let (status, _, body) = http(
            port,
            "POST",
            path,
            &[auth, ("Host", "evil.example:7878")],
            "{}",
        );
        assert_eq!(status, 403, "{path}: {body}");
        let (status, _, body) = http(
            port,
            "POST",
            path,
            &[auth, ("Origin", "https://evil.example")],
            "{}",
        );
        assert_eq!(
            (status, error_type(&body).as_str()),
            (403, "origin_not_allowed"),
            "{path}: {body}"
        );
    }
    let (status, _, body) = http(
        port,
        "GET",
        "/v1/models",
        &[auth, ("Host", "localhost")],
        "",
    );
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = http(
        port,
        "GET",
        "/v1/models",
        &[auth, ("Origin", "http://localhost:3000")],
        "",
    );
    assert_eq!(status, 200, "{body}");

    // A body past gateway.max_body_bytes: 413, in OpenAI's error body on
    // /v1/chat/completions with the gateway's own type; one within it goes on.
    let big = "x".repeat(5000);
    let (status, _, body) = http(port, "POST", "/v1/chat/completions", &[auth], &big);
    assert_eq!(
        (status, error_type(&body).as_str()),
        (413, "payload_too_large"),
        "{body}"
    );
    assert!(body.contains("max_body_bytes"), "{body}");
    // Within it, the body reaches the chat route's parser (`messages` missing: its 400).
    let (status, _, body) = http(port, "POST", "/v1/chat/completions", &[auth], "{}");
    assert_eq!(
        (status, error_type(&body).as_str()),
        (400, "invalid_request_error"),
        "{body}"
    );
    assert!(body.contains("messages"), "{body}");
}

#[test]
fn gateway_rate_per_token_answers_429_with_retry_after_and_spares_other_tokens() {
    let port = free_port();
    let home = gateway_home(port, "requests_per_second = 1\nburst = 3\n");
    home.start();
    wait_for_gateway(&home, port);
    let (a, _) = issue(&home, &["tool.invoke:echo"]);
    let (b, _) = issue(&home, &["tool.invoke:echo"]);
    let a = format!("Bearer {a}");
    let b = format!("Bearer {b}");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(http(
            port,
            "GET",
            "/v1/models",
            &[("Authorization", a.as_str())],
            "",
        ));
    }
    let codes: Vec<u16> = statuses.iter().map(|s| s.0).collect();
    assert_eq!(&codes[..3], [200, 200, 200], "{codes:?}");
    let limited = statuses
        .iter()
        .find(|s| s.0 == 429)
        .expect("a 429 past the burst");
    assert_eq!(error_type(&limited.2), "rate_limited", "{}", limited.2);
    assert!(
        limited
            .1
            .iter()
            .any(|(n, v)| n == "retry-after" && v == "1"),
        "{:?}",
        limited.1
    );
    // Another token is not held back.
    assert_eq!(
        http(
            port,
            "GET",
            "/v1/models",
            &[("Authorization", b.as_str())],
            ""
        )
        .0,
        200
    );
}

/// A client that trickles a request's head (slowloris) or sends none is closed once the
/// gateway's header deadline passes (10 s), so that many such connections cannot hold the
/// worker's descriptors; a whole request on a fresh connection is answered (the control).
#[test]
fn gateway_closes_a_connection_that_never_finishes_its_headers() {
    let port = free_port();
    let home = gateway_home(port, "");
    home.start();
    wait_for_gateway(&home, port);
    let started = Instant::now();
    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut idle = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .expect("send a partial head");
    for s in [&mut slow, &mut idle] {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut buf = [0u8; 512];
        let closed = s.read(&mut buf).is_ok();
        assert!(
            closed,
            "the connection was still open after {:?}",
            started.elapsed()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(http(port, "GET", "/health", &[], "").0, 200);
}

/// Made-up secrets, more than the limits table holds (4,096) within one refill of the
/// bucket, each refused (401, or 429 past their own budget), leave a real token unrefused: the table is keyed by the
/// authenticated token, so a client without one cannot fill it.
#[test]
fn gateway_made_up_secrets_cannot_fill_the_limits_table_against_real_tokens() {
    const CONNECTIONS: usize = 8;
    const PER_CONNECTION: usize = 520;
    let port = free_port();
    let home = gateway_home(port, "requests_per_second = 1\nburst = 60\n");
    home.start();
    wait_for_gateway(&home, port);
    let (good, _) = issue(&home, &["tool.invoke:echo"]);
    let floods: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(60)))
                    .expect("timeout");
                let mut out = String::new();
                for i in 0..PER_CONNECTION {
                    let close = if i + 1 == PER_CONNECTION { "Connection: close\r\n" } else { "" };
                    out.push_str(&format!(
                        "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{close}Authorization: Bearer made-up-{c}-{i}\r\n\r\n"
                    ));
                }
                s.write_all(out.as_bytes()).expect("send");
                let mut raw = Vec::new();
                let _ = s.read_to_end(&mut raw);
                let raw = String::from_utf8_lossy(&raw);
                // 401 from loongd, or 429 once made-up secrets exceed their own budget.
                raw.matches("HTTP/1.1 401").count() + raw.matches("auth_failures_limited").count()
            })
        })
        .collect();
    let refused: usize = floods.into_iter().map(|t| t.join().expect("flood")).sum();
    assert_eq!(refused, CONNECTIONS * PER_CONNECTION);
    // The made-up secrets' own budget refills (AUTH_FAILURES_PER_SECOND).
    std::thread::sleep(Duration::from_secs(2));
    let (status, _, body) = http(
        port,
        "GET",
        "/v1/models",
        &[("Authorization", format!("Bearer {good}").as_str())],
        "",
    );
    assert_eq!(status, 200, "{body}");
}

/// A flood of made-up secrets reaches loongd (which decides and records each) at most
/// AUTH_FAILURE_BURST at once and AUTH_FAILURES_PER_SECOND after: the rest are answered 429
/// in the worker. Once the bucket refills, a real token is answered (the control).
#[test]
fn gateway_bounds_the_made_up_secrets_it_sends_loongd_to_record() {
    const FLOOD: usize = 600;
    let port = free_port();
    let home = gateway_home(port, "");
    home.start();
    wait_for_gateway(&home, port);
    let (good, _) = issue(&home, &["tool.invoke:echo"]);
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut out = String::new();
    for i in 0..FLOOD {
        let close = if i + 1 == FLOOD {
            "Connection: close\r\n"
        } else {
            ""
        };
        out.push_str(&format!(
            "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{close}Authorization: Bearer made-up-{i}\r\n\r\n"
        ));
    }
    s.write_all(out.as_bytes()).expect("send");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw);
    let elapsed = started.elapsed().as_secs() as usize + 1;
    let unauthorized = raw.matches("HTTP/1.1 401").count();
    let limited = raw.matches("auth_failures_limited").count();
    assert_eq!(unauthorized + limited, FLOOD, "{unauthorized} + {limited}");
    assert!(
        unauthorized <= 100 + 20 * elapsed,
        "{unauthorized} made-up secrets reached loongd in {elapsed} s"
    );
    std::thread::sleep(Duration::from_secs(2));
    let (status, _, body) = http(
        port,
        "GET",
        "/v1/models",
        &[("Authorization", format!("Bearer {good}").as_str())],
        "",
    );
    assert_eq!(status, 200, "{body}");
}

/// One token opens MCP sessions up to MAX_MCP_SESSIONS_PER_TOKEN (64), then is answered
/// 429 sessions_limited (unbounded, its idle sessions would fill the worker's memory);
/// another token still opens one but cannot delete a's by its id, and a deleted session
/// makes room again.
#[test]
fn gateway_bounds_the_mcp_sessions_one_token_holds() {
    const PER_TOKEN: usize = 64;
    let port = free_port();
    let home = gateway_home(port, "");
    home.start();
    wait_for_gateway(&home, port);
    let (a, _) = issue(&home, &["tool.invoke:echo"]);
    let (b, _) = issue(&home, &["tool.invoke:echo"]);
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let open = |secret: &str| {
        let bearer = format!("Bearer {secret}");
        http(
            port,
            "POST",
            "/mcp",
            &[
                ("Authorization", bearer.as_str()),
                ("Accept", "application/json, text/event-stream"),
                ("Content-Type", "application/json"),
            ],
            init,
        )
    };
    let mut first = None;
    for i in 0..PER_TOKEN {
        let (status, headers, body) = open(&a);
        assert_eq!(status, 200, "session {i}: {body}");
        if first.is_none() {
            first = headers
                .into_iter()
                .find(|(n, _)| n == "mcp-session-id")
                .map(|(_, v)| v);
        }
    }
    let (status, _, body) = open(&a);
    assert_eq!(status, 429, "{body}");
    assert_eq!(error_type(&body), "sessions_limited", "{body}");
    assert_eq!(open(&b).0, 200, "another token is not held back");
    let first = first.expect("a session id");
    // Another token cannot delete (or use) a's session by its id.
    let other = format!("Bearer {b}");
    let (status, _, body) = http(
        port,
        "DELETE",
        "/mcp",
        &[
            ("Authorization", other.as_str()),
            ("Mcp-Session-Id", first.as_str()),
            ("Mcp-Protocol-Version", "2025-06-18"),
        ],
        "",
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(open(&a).0, 429, "a's session is still open");
    let bearer = format!("Bearer {a}");
    let (status, _, body) = http(
        port,
        "DELETE",
        "/mcp",
        &[
            ("Authorization", bearer.as_str()),
            ("Mcp-Session-Id", first.as_str()),
            ("Mcp-Protocol-Version", "2025-06-18"),
        ],
        "",
    );
    assert!(status < 300, "{status} {body}");
    assert_eq!(open(&a).0, 200, "a deleted session makes room");
}

/// A chunked body (no Content-Length) above `max_body_bytes` on /mcp is a typed 413 (it
/// was rmcp's 500); the same request small enough is answered (the control).
#[test]
fn gateway_refuses_a_chunked_body_above_the_limit() {
    let port = free_port();
    let home = gateway_home(port, "max_body_bytes = 4096\n");
    home.start();
    wait_for_gateway(&home, port);
    let (secret, _) = issue(&home, &["tool.invoke:echo"]);
    let chunked = |pad: usize| {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"{}","version":"1"}}}}}}"#,
            "x".repeat(pad)
        );
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut req = format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nAuthorization: Bearer {secret}\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        for part in body.as_bytes().chunks(1000) {
            req.push_str(&format!(
                "{:x}\r\n{}\r\n",
                part.len(),
                String::from_utf8_lossy(part)
            ));
        }
        req.push_str("0\r\n\r\n");
        let _ = s.write_all(req.as_bytes());
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let raw = String::from_utf8_lossy(&raw).into_owned();
        raw.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .unwrap_or(0)
    };
    assert_eq!(chunked(10), 200);
    let big = chunked(64 * 1024);
    assert_eq!(big, 413, "a 64 KiB chunked body");
}

#[test]
fn gateway_answers_a_thousand_concurrent_calls_over_fifty_sessions_each_once() {
    const TEST: &str = "gateway_answers_a_thousand_concurrent_calls_over_fifty_sessions_each_once";
    if let Err(why) = python() {
        return skip(TEST, &why);
    }
    let port = free_port();
    let home = gateway_home(
        port,
        "requests_per_second = 100000\nburst = 100000\nmax_streams_per_token = 4096\n",
    );
    home.start();
    wait_for_gateway(&home, port);
    let (secret, _) = issue(&home, &["tool.invoke:echo"]);
    let report = client(
        &home,
        port,
        &secret,
        &serde_json::json!({"sessions": 50, "calls": 20}),
    )
    .unwrap_or_else(|e| panic!("client: {e}\n{}", home.log()));
    assert_eq!(report["answered"], 1000, "{report}");
    assert_eq!(
        report["right"], 1000,
        "each call answered once, with its own input: {report}"
    );
}

#[test]
fn gateway_worker_killed_is_restarted_and_the_next_request_succeeds() {
    const TEST: &str = "gateway_worker_killed_is_restarted_and_the_next_request_succeeds";
    if let Err(why) = python() {
        return skip(TEST, &why);
    }
    let port = free_port();
    let home = gateway_home(port, "");
    home.start();
    wait_for_gateway(&home, port);
    let (secret, _) = issue(&home, &["tool.invoke:echo"]);
    let bearer = format!("Bearer {secret}");
    // An open stream: a standalone SSE GET on a live session.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let (status, headers, body) = http(
        port,
        "POST",
        "/mcp",
        &[
            ("Authorization", bearer.as_str()),
            ("Accept", "application/json, text/event-stream"),
            ("Content-Type", "application/json"),
        ],
        init,
    );
    assert_eq!(status, 200, "{body}");
    let session = headers
        .iter()
        .find(|(n, _)| n == "mcp-session-id")
        .map(|(_, v)| v.clone())
        .expect("a session id");
    write!(
        s,
        "GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {bearer}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {session}\r\nMcp-Protocol-Version: 2025-06-18\r\n\r\n"
    )
    .expect("open the stream");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut first = [0u8; 12];
    s.read_exact(&mut first).expect("the stream's head");
    assert_eq!(
        &first,
        b"HTTP/1.1 200",
        "{}",
        String::from_utf8_lossy(&first)
    );

    let spawned = details(&home, "worker.spawned");
    let pid = spawned
        .iter()
        .find(|d| d["kind"] == "gateway")
        .and_then(|d| d["pid"].as_u64())
        .expect("the gateway worker's spawn record");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the gateway worker");
    // The client's stream ends with the worker (an end or a reset, not a read timeout).
    let mut rest = Vec::new();
    let ended = s.read_to_end(&mut rest);
    assert!(
        !matches!(&ended, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the stream outlived the worker: {ended:?}"
    );
    // The supervisor restarts it (audited), and the next request succeeds.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let restarted = details(&home, "worker.restarted");
        if restarted.iter().any(|d| d["service"] == "gateway") {
            break;
        }
        assert!(
            Instant::now() < until,
            "no worker.restarted:\n{}",
            home.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let exited = details(&home, "worker.exited");
    assert!(
        exited.iter().any(|d| d["pid"].as_u64() == Some(pid)),
        "{exited:?}"
    );
    wait_for_gateway(&home, port);
    let report = client(
        &home,
        port,
        &secret,
        &serde_json::json!([{"name": "echo", "arguments": {"after": true}}]),
    )
    .unwrap_or_else(|e| panic!("client: {e}\n{}", home.log()));
    assert_eq!(
        report["calls"][0]["structured"],
        serde_json::json!({"after": true}),
        "{report}"
    );
    assert_ne!(
        details(&home, "worker.spawned")
            .iter()
            .filter(|d| d["kind"] == "gateway")
            .count(),
        1,
        "a new gateway worker was spawned"
    );
}

#[test]
fn gateway_runs_stops_and_pairs_from_the_cli_and_status_counts_its_requests() {
    let port = free_port();
    let home = gateway_home(port, "");
    let config = fs::read_to_string(home.path().join("loongd.toml")).expect("config");
    fs::write(
        home.path().join("loongd.toml"),
        config.replace("enabled = true", "enabled = false"),
    )
    .expect("config");
    home.start();
    let status = |home: &Home| -> serde_json::Value {
        let out = home.ctl(&["gateway", "status", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        json(&text(&out.stdout))
    };
    let listen = format!("127.0.0.1:{port}");
    let s = status(&home);
    assert_eq!(
        (s["running"].as_bool(), s["listen"].as_str()),
        (Some(false), Some(listen.as_str())),
        "{s}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens before `gateway run`"
    );

    // pair: a token of the pack and the client configuration naming this gateway.
    let out = home.ctl(&[
        "gateway", "pair", "--pack", "t", "--agent", "claude", "--ttl", "1h", "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pair = json(&text(&out.stdout));
    let secret = pair["secret"].as_str().expect("secret").to_string();
    assert_eq!(
        pair["env"]["OPENAI_BASE_URL"],
        format!("http://{listen}/v1"),
        "{pair}"
    );
    assert_eq!(
        pair["env"]["ANTHROPIC_BASE_URL"],
        format!("http://{listen}"),
        "{pair}"
    );
    assert_eq!(
        pair["mcp"]["mcpServers"]["loong"]["url"],
        format!("http://{listen}/mcp"),
        "{pair}"
    );
    assert_eq!(
        pair["mcp"]["mcpServers"]["loong"]["headers"]["Authorization"],
        format!("Bearer {secret}"),
        "{pair}"
    );

    let out = home.ctl(&["gateway", "run", "--json"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        home.log()
    );
    assert_eq!(json(&text(&out.stdout))["running"], true);
    wait_for_gateway(&home, port);
    let bearer = format!("Bearer {secret}");
    let (code, _, body) = http(
        port,
        "GET",
        "/v1/models",
        &[("Authorization", bearer.as_str())],
        "",
    );
    assert_eq!(code, 200, "the paired token is served: {body}");
    // A second run is refused while one runs.
    let again = home.ctl(&["gateway", "run"]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already running"),
        "{}",
        text(&again.stderr)
    );
    // status counts the requests (reported by the worker within a couple of seconds).
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(&home);
        if s["requests"].as_u64().unwrap_or(0) >= 2 {
            assert!(s["pid"].as_u64().unwrap_or(0) > 0, "{s}");
            break;
        }
        assert!(
            Instant::now() < until,
            "status never counted the requests: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // stop: answered once drained; nothing listens after; a second stop says so.
    let started = Instant::now();
    let out = home.ctl(&["gateway", "stop", "--drain", "5s", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json(&text(&out.stdout))["running"], false);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "an idle gateway stops at once"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the listener is closed"
    );
    let out = home.ctl(&["gateway", "stop"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not running"),
        "{}",
        text(&out.stderr)
    );
    // And it runs again on the same address.
    assert!(home.ctl(&["gateway", "run"]).status.success());
    wait_for_gateway(&home, port);
}

/// Over `/mcp`, a client that sends a `progressToken` is told of an approval wait by progress
/// notifications naming the approval (loongd tells the worker which approval its call waits
/// for: `gateway_waiting`), and answered with the tool's result once it is approved, a tool
/// error once denied.
#[test]
fn gateway_mcp_reports_an_approval_wait_as_progress_and_answers_when_it_is_decided() {
    const TEST: &str =
        "gateway_mcp_reports_an_approval_wait_as_progress_and_answers_when_it_is_decided";
    if let Err(why) = python() {
        return skip(TEST, &why);
    }
    let port = free_port();
    let home = gateway_home(port, "");
    fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\napproval = \"always\"\n",
    )
    .expect("pack");
    home.start();
    wait_for_gateway(&home, port);
    let (secret, _) = issue(&home, &["tool.invoke:echo"]);
    let how = serde_json::json!({
        "transport": "http", "url": format!("http://127.0.0.1:{port}/mcp"), "secret": secret,
    });
    let mut plan = crate::mcp_serve::approval_progress_plan();
    if let Some(steps) = plan.as_array_mut() {
        // The call without progress waits CALL_TIMEOUT (120 s) here: `mcp serve`'s test
        // shows that answer.
        steps.truncate(2);
    }
    let got = crate::mcp_serve::progress_client(&home, &how, &plan);
    crate::mcp_serve::check_approval_progress(&got);
}

/// One `/mcp` POST of `message` under `bearer` in session `session` (none: a new one).
pub(crate) fn mcp_post(
    port: u16,
    bearer: &str,
    session: Option<&str>,
    message: &serde_json::Value,
) -> (u16, Vec<(String, String)>, String) {
    let auth = format!("Bearer {bearer}");
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", "2025-06-18"),
    ];
    if let Some(id) = session {
        headers.push(("Mcp-Session-Id", id));
    }
    http(port, "POST", "/mcp", &headers, &message.to_string())
}

/// A request of an MCP session is answered only once loongd has authenticated its bearer
/// again (the worker may start serving it meanwhile, from the session's known token): a
/// token revoked mid-session is refused 401 on the session's next request, and its call ran
/// nowhere; the same call just before the revocation is answered (the control).
#[test]
fn gateway_mcp_session_of_a_token_revoked_mid_session_is_refused_on_its_next_request() {
    let port = free_port();
    let home = gateway_home(port, "");
    home.start();
    wait_for_gateway(&home, port);
    let (secret, id) = issue(&home, &["tool.invoke:echo"]);
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}});
    let (status, headers, body) = mcp_post(port, &secret, None, &init);
    assert_eq!(status, 200, "{body}");
    let session = headers
        .iter()
        .find(|(n, _)| n == "mcp-session-id")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("a session id: {headers:?}"));
    let initialized = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, body) = mcp_post(port, &secret, Some(&session), &initialized);
    assert!(status == 202 || status == 200, "{status} {body}");
    let call = |n: u64| {
        serde_json::json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"call": n}}})
    };
    let (status, _, body) = mcp_post(port, &secret, Some(&session), &call(2));
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#"\"call\":2"#) || body.contains(r#""call":2"#),
        "{body}"
    );
    assert!(home.ctl(&["tokens", "revoke", &id]).status.success());
    let (status, _, body) = mcp_post(port, &secret, Some(&session), &call(3));
    assert_eq!(
        (status, error_type(&body).as_str()),
        (401, "unauthorized"),
        "{body}"
    );
    // Only the call before the revocation ran.
    let invoked = crate::kernel_calls::trail(&home, &id)
        .iter()
        .filter(|r| r["kind"] == "tool.invoked")
        .count();
    assert_eq!(invoked, 1, "{}", home.log());
}

/// A client that lists every page of `tools/list` (following `nextCursor`), calls a name no
/// page offered, then one tool by name, and lists with cursors the server never gave (made
/// up, or a position written as a number); prints each page's names and cursor, the calls'
/// outcomes and each bad cursor's error.
const PAGING_CLIENT: &str = r#"
import asyncio, json, sys
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

url, secret, call = sys.argv[1], sys.argv[2], sys.argv[3]

async def main():
    out = {"pages": []}
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {secret}"})
    async with client:
        async with streamable_http_client(url, http_client=client) as (read, write, *_):
            async with ClientSession(read, write) as s:
                await s.initialize()
                cursor = None
                while True:
                    params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
                    page = await s.list_tools(params=params)
                    out["pages"].append({"names": [t.name for t in page.tools],
                                         "next": page.next_cursor})
                    cursor = page.next_cursor
                    if cursor is None or len(out["pages"]) > 10:
                        break
                try:
                    r = await s.call_tool("no-such-tool", {})
                    out["unknown"] = {"is_error": bool(r.is_error)}
                except MCPError as e:
                    out["unknown"] = {"protocol_error": e.error.message}
                if call:
                    try:
                        r = await s.call_tool(call, {})
                        out["call"] = {"is_error": bool(r.is_error)}
                    except MCPError as e:
                        out["call"] = {"protocol_error": e.error.message}
                out["bad_cursors"] = {}
                for bad in ["not-ours", "0", "4096"]:
                    try:
                        await s.list_tools(params=types.PaginatedRequestParams(cursor=bad))
                        out["bad_cursors"][bad] = "accepted"
                    except MCPError as e:
                        out["bad_cursors"][bad] = e.error.message
    print(json.dumps(out))

asyncio.run(main())
"#;

/// A token granted tools past the first `MAX_GATEWAY_TOOLS` (4,096) of the plugin set is
/// offered them: `tools/list` is cut from the tools the token may invoke, not from every
/// tool before its grants are checked (which offered such a token nothing, and refused its
/// requests as a token that may invoke no tool). Its token is looked up in the token store
/// a few times for each request, not once for each of the set's 4,352 tools. The control: a
/// token granted every tool is offered all of them over two pages, the first of 4,096 with a
/// `nextCursor`, the second the rest and none again, and may call a tool of the second page
/// after a call of a name no page offered; a cursor the server never gave (made up, or a
/// position written as a number) is refused.
#[test]
fn gateway_lists_a_tokens_tools_past_the_first_page_of_the_set_and_pages_the_rest() {
    const TEST: &str =
        "gateway_lists_a_tokens_tools_past_the_first_page_of_the_set_and_pages_the_rest";
    if !crate::support::is_root() {
        return skip(TEST, "sandboxed stdio workers need root");
    }
    let py = match python() {
        Ok(p) => p,
        Err(e) => return skip(TEST, &e),
    };
    const SERVERS: u32 = 17;
    const TOOLS: u32 = 256;
    const MAX_LOOKUPS_PER_CLIENT_RUN: u32 = 64;
    let port = free_port();
    let home = gateway_home(port, "");
    let (dir, script) = crate::bridges::scale_peer();
    // `zz-` sorts after the examples: zz-16's tools come after 4,096 others.
    for n in 0..SERVERS {
        let id = format!("zz-{n:02}");
        crate::bridges::install_scale_peer(&home, dir.path(), &script, &id, "serve", TOOLS);
    }
    home.start();
    wait_for_gateway(&home, port);
    let script_path = home.path().join("paging_client.py");
    fs::write(&script_path, PAGING_CLIENT).expect("client script");
    let run = |secret: &str, call: &str| {
        let out = Command::new(&py)
            .arg(&script_path)
            .arg(format!("http://127.0.0.1:{port}/mcp"))
            .arg(secret)
            .arg(call)
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "{}\n{}\n{}",
            text(&out.stderr),
            text(&out.stdout),
            home.log()
        );
        json(&text(&out.stdout))
    };

    let lookups = || {
        let out = home.ctl(&["metrics"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("loong_token_lookups_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no loong_token_lookups_total"))
    };
    let late = "zz-16--tool_200";
    let (secret, id) = issue(&home, &["tool.invoke:zz-16/tool_200"]);
    let before = lookups();
    let report = run(&secret, late);
    // initialize, a listing, two calls and three bad cursors, each request authenticated
    // and admitted: a few lookups each, whatever the size of the set.
    let looked_up = lookups() - before;
    assert!(
        looked_up <= f64::from(MAX_LOOKUPS_PER_CLIENT_RUN),
        "{looked_up} token lookups for one client's run over {} tools",
        SERVERS * TOOLS
    );
    let pages = report["pages"].as_array().expect("pages");
    assert_eq!(pages.len(), 1, "{report}");
    assert_eq!(pages[0]["names"], serde_json::json!([late]), "{report}");
    assert!(pages[0]["next"].is_null(), "{report}");
    assert_eq!(report["call"]["is_error"], false, "{report}");
    // The listing's records: the tool it offered, after the refusals of the tools before it.
    let out = home.ctl(&["audit", "token-trail", &id, "--json", "--limit", "10000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let trail: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("trail");
    assert!(
        trail.iter().any(|r| r["kind"] == "policy.decision"
            && crate::workers::detail(r)["target"] == "zz-16/tool_200"
            && crate::workers::detail(r)["allowed"] == true),
        "the offered tool's decision is recorded"
    );

    // The control: every tool, over two pages.
    let (secret, _) = issue(&home, &["tool.invoke"]);
    let report = run(&secret, "zz-16--tool_255");
    let pages = report["pages"].as_array().expect("pages");
    assert_eq!(pages.len(), 2, "{}", report["pages"][0]["next"]);
    let first = pages[0]["names"].as_array().expect("names");
    assert_eq!(first.len(), loong_ipc::message::gateway::MAX_GATEWAY_TOOLS);
    assert!(pages[0]["next"].is_string(), "{}", pages[0]["next"]);
    assert!(pages[1]["next"].is_null());
    let mut all: Vec<&str> = pages
        .iter()
        .flat_map(|p| p["names"].as_array().expect("names"))
        .filter_map(|n| n.as_str())
        .collect();
    let listed = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), listed, "no tool on two pages");
    for n in 0..SERVERS {
        for t in [0, TOOLS - 1] {
            let name = format!("zz-{n:02}--tool_{t}");
            assert!(all.contains(&name.as_str()), "{name} is listed");
        }
    }
    assert!(all.contains(&"echo"), "the examples are listed too");
    assert!(report["unknown"].is_object(), "{report}");
    assert_eq!(
        report["call"]["is_error"], false,
        "a second page's tool is callable after a call of an unknown name: {report}"
    );
    for bad in ["not-ours", "0", "4096"] {
        assert!(
            report["bad_cursors"][bad]
                .as_str()
                .is_some_and(|m| m.contains("is not one this server gave")),
            "{bad}: {report}"
        );
    }
}
