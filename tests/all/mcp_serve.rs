//! `loongctl mcp serve`: Loong as an MCP server on stdio, driven by the official Python `mcp`
//! SDK (the client Claude Code's and Codex's configurations start the same way): it lists
//! exactly the tools its token may invoke, under names MCP clients accept; each call goes
//! through the kernel as that token; denials, unknown tools and hostile input are answered.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::{
    kernel_calls::json,
    support::{bin, skip, text, Home},
    workers::{detail, install_examples},
};

/// The venv `.ci/run` (scripts/install-mcp-servers) makes, with the `mcp` SDK and
/// mcp-server-time.
const MCP_ROOT: &str = "/opt/loong-mcp";
/// `mcp serve`'s line limit (`MAX_MCP_LINE_BYTES` in cli/src/cmd/mcp.rs).
const MAX_MCP_LINE_BYTES: usize = 4 * 1024 * 1024;

/// The client: lists the tools, then runs each step of its plan (a tool call, or a command),
/// and prints what it saw as JSON.
const CLIENT: &str = r#"
import asyncio, json, subprocess, sys
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

ctl, home, token_file, plan = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])

async def main():
    params = StdioServerParameters(
        command=ctl, args=["--home", home, "mcp", "serve", "--token-file", token_file])
    out = {"calls": []}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            listed = await s.list_tools()
            out["tools"] = {t.name: {"description": t.description, "schema": t.input_schema}
                            for t in listed.tools}
            for step in plan:
                if "run" in step:
                    subprocess.run(step["run"], check=True, capture_output=True)
                    continue
                try:
                    r = await s.call_tool(step["name"], step.get("arguments", {}))
                    out["calls"].append({
                        "name": step["name"], "is_error": bool(r.is_error),
                        "text": "".join(c.text for c in r.content if c.type == "text"),
                        "structured": r.structured_content})
                except MCPError as e:
                    out["calls"].append({"name": step["name"], "protocol_error": e.error.message,
                                         "code": e.error.code})
    print(json.dumps(out))

asyncio.run(main())
"#;

fn python() -> Result<std::path::PathBuf, String> {
    let py = Path::new(MCP_ROOT).join("venv/bin/python3");
    let ok = Command::new(&py)
        .args(["-c", "import mcp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(py)
    } else {
        Err(format!(
            "{} cannot import the `mcp` SDK (`.ci/run` installs it with scripts/install-mcp-servers)",
            py.display()
        ))
    }
}

/// Runs the client against `home` under the secret in `token_file`; its report.
fn client(home: &Home, token_file: &Path, plan: &serde_json::Value) -> serde_json::Value {
    let py = python().expect("checked by the caller");
    let script = home.path().join("client.py");
    fs::write(&script, CLIENT).expect("client script");
    let out = Command::new(py)
        .arg(&script)
        .arg(bin("loongctl"))
        .arg(home.path())
        .arg(token_file)
        .arg(plan.to_string())
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "the MCP client failed: {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    json(&text(&out.stdout))
}

/// A pack `t` granting `tool.invoke` and `fs.read`, without approvals.
fn pack(home: &Home) {
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\", \"fs.read\"]\napproval = \"never\"\n",
    )
    .expect("pack");
}

/// Issues a token of pack `t` with `caps` and writes its secret to a file only root reads;
/// the file and the token's public id.
pub(crate) fn token_file(home: &Home, caps: &[&str], name: &str) -> (std::path::PathBuf, String) {
    let (secret, id) = crate::kernel_calls::issue(home, caps);
    let path = home.path().join(name);
    fs::write(&path, format!("{secret}\n")).expect("token file");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    (path, id)
}

fn call(report: &serde_json::Value, i: usize) -> &serde_json::Value {
    &report["calls"][i]
}

#[test]
fn mcp_serve_lists_and_calls_exactly_what_its_token_may_invoke() {
    const TEST: &str = "mcp_serve_lists_and_calls_exactly_what_its_token_may_invoke";
    if let Err(why) = python() {
        return skip(TEST, &why);
    }
    let time = Path::new(MCP_ROOT).join("venv/bin/mcp-server-time");
    if !time.exists() {
        return skip(
            TEST,
            &format!("{} is missing (`.ci/run` installs it)", time.display()),
        );
    }
    let shared = crate::bridges::shared_dir("lq");
    let notes = shared.path().join("notes.txt");
    crate::bridges::write_file(&notes, "notes for the model\n", 0o644);
    let home = Home::with_config(&format!(
        "[builtins]\nread_roots = [{:?}]\n",
        shared.path().display().to_string()
    ));
    pack(&home);
    install_examples(&home);
    // An MCP server behind Loong's MCP server: two tools, `time/get_current_time` and
    // `time/convert_time`.
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

    // The token may invoke echo, the time server's get_current_time and file.read; not
    // json-transform, config-reader or convert_time, which the pack would allow.
    let (file, id) = token_file(
        &home,
        &[
            "tool.invoke:echo",
            "tool.invoke:time/get_current_time",
            "fs.read",
        ],
        "token",
    );
    let plan = serde_json::json!([
        {"name": "echo", "arguments": {"ping": 1}},
        {"name": "file__read", "arguments": {"path": notes.display().to_string()}},
        {"name": "time--get_current_time", "arguments": {"timezone": "UTC"}},
        {"name": "json-transform", "arguments": {}},
        {"name": "time--convert_time", "arguments": {}},
        {"name": "no-such-tool", "arguments": {}},
        {"run": [bin("loongctl").display().to_string(), "--home", home.path().display().to_string(), "tokens", "revoke", id]},
        {"name": "echo", "arguments": {"ping": 2}},
    ]);
    let report = client(&home, &file, &plan);

    // Exactly the tools the token may invoke, under MCP-valid names (`.` → `__`,
    // `/` → `--`), each with an object schema.
    let tools = report["tools"].as_object().expect("tools");
    let mut names: Vec<&str> = tools.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["echo", "file__read", "time--get_current_time"],
        "{report}"
    );
    for (name, t) in tools {
        assert_eq!(t["schema"]["type"], "object", "{name}: {t}");
    }
    // Each with its real input schema: a built-in's fixed one, an MCP server's own.
    assert_eq!(
        tools["file__read"]["schema"]["required"],
        serde_json::json!(["path"]),
        "{report}"
    );
    assert_eq!(
        tools["time--get_current_time"]["schema"]["properties"]["timezone"]["type"], "string",
        "{report}"
    );
    // The description is the MCP server's own, and names the Loong tool, so the mapping can
    // be read back.
    assert!(
        tools["time--get_current_time"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("Get current time in a specific timezone")
                && d.contains("`time/get_current_time`")),
        "{report}"
    );

    // A WASM plugin: its JSON object output is text and structured content.
    let echo = call(&report, 0);
    assert_eq!(echo["is_error"], false, "{echo}");
    assert_eq!(echo["structured"], serde_json::json!({"ping": 1}), "{echo}");
    assert_eq!(
        json(echo["text"].as_str().expect("text")),
        serde_json::json!({"ping": 1})
    );
    // A dotted built-in and an MCP server's PLUGIN/TOOL, called by their mapped names.
    let read = call(&report, 1);
    assert_eq!(read["is_error"], false, "{read}");
    assert!(
        read["text"]
            .as_str()
            .is_some_and(|t| t.contains("notes for the model")),
        "{read}"
    );
    // The MCP server's own result is passed on as it gave it (its structured content, not
    // wrapped again).
    let now = call(&report, 2);
    assert_eq!(now["is_error"], false, "{now}");
    assert_eq!(now["structured"]["timezone"], "UTC", "{now}");
    assert!(
        now["text"].as_str().is_some_and(|t| t.contains("UTC")),
        "{now}"
    );
    // Tools the token lacks are unknown to this server: errors naming them.
    for i in [3, 4, 5] {
        let c = call(&report, i);
        let name = c["name"].as_str().expect("name");
        assert!(
            c["protocol_error"]
                .as_str()
                .is_some_and(|m| m.contains("unknown tool") && m.contains(name)),
            "{c}"
        );
    }
    // Revoked mid-session: the kernel denies the next call, a tool error with the reason.
    let denied = call(&report, 6);
    assert_eq!(denied["is_error"], true, "{denied}");
    let why = denied["text"].as_str().expect("text");
    assert!(
        why.starts_with("denied: ") && why.contains("revoked"),
        "{why}"
    );

    // Every call was decided under the token's public id: the allowed echo and the denied one.
    let trail: serde_json::Value =
        serde_json::from_slice(&home.ctl(&["audit", "token-trail", &id, "--json"]).stdout)
            .expect("token trail");
    let decisions: Vec<serde_json::Value> = trail
        .as_array()
        .expect("array")
        .iter()
        .filter(|r| r["kind"] == "policy.decision")
        .map(detail)
        .filter(|d| d["capability"] == "tool.invoke" && d["target"] == "echo")
        .collect();
    assert!(
        decisions
            .iter()
            .any(|d| d["allowed"] == true && d["token"] == id.as_str()),
        "{decisions:?}"
    );
    assert!(
        decisions.iter().any(|d| d["allowed"] == false
            && d["token"] == id.as_str()
            && d["reason"].as_str().is_some_and(|r| r.contains("revoked"))),
        "{decisions:?}"
    );
    let invoked: Vec<serde_json::Value> = trail
        .as_array()
        .expect("array")
        .iter()
        .filter(|r| r["kind"] == "tool.invoked")
        .map(detail)
        .collect();
    for tool in ["echo", "file.read", "time/get_current_time"] {
        assert!(
            invoked.iter().any(|d| d["tool"] == tool),
            "{tool} not invoked under the token: {invoked:?}"
        );
    }
}

/// Starts `loongctl mcp serve` on `home` with raw pipes; its stdin, a channel of its stdout
/// lines, and the child.
fn raw_server(
    home: &Home,
    token: &Path,
    extra: &[&str],
) -> (
    std::process::ChildStdin,
    mpsc::Receiver<String>,
    std::process::Child,
) {
    let mut child = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["mcp", "serve", "--token-file"])
        .arg(token)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mcp serve starts");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (stdin, rx, child)
}

/// The next answer with `id`; every line read is kept in `seen`. `None` when none came
/// within `wait`.
fn answer(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<serde_json::Value>,
    id: u64,
    wait: Duration,
) -> Option<serde_json::Value> {
    let until = std::time::Instant::now() + wait;
    loop {
        let left = until.checked_duration_since(std::time::Instant::now())?;
        let line = rx.recv_timeout(left).ok()?;
        let v: serde_json::Value = serde_json::from_str(&line).expect("every answer is JSON");
        seen.push(v.clone());
        if v["id"] == id {
            return Some(v);
        }
    }
}

/// Initializes the session (request 1); its answer.
fn initialize(
    send: &mut impl FnMut(&str),
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<serde_json::Value>,
) -> serde_json::Value {
    send(
        &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}})
        .to_string(),
    );
    let init = answer(rx, seen, 1, Duration::from_secs(20)).expect("initialize answered");
    send(r#"{"jsonrpc": "2.0", "method": "notifications/initialized"}"#);
    init
}

#[test]
fn mcp_serve_reports_an_approval_wait_as_a_tool_error_naming_the_approval() {
    let home = Home::new();
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\napproval = \"always\"\n",
    )
    .expect("pack");
    install_examples(&home);
    home.start();
    let (file, _) = token_file(&home, &["tool.invoke:echo"], "token");
    let (mut stdin, rx, mut child) = raw_server(&home, &file, &["--timeout", "2"]);
    let mut seen = Vec::new();
    let mut send = |line: &str| {
        stdin.write_all(line.as_bytes()).expect("write");
        stdin.write_all(b"\n").expect("write");
        stdin.flush().expect("flush");
    };
    initialize(&mut send, &rx, &mut seen);
    // Listed, and the description says each call waits for an approval.
    send(r#"{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}"#);
    let listed = answer(&rx, &mut seen, 2, Duration::from_secs(20)).expect("tools/list answered");
    let tools = listed["result"]["tools"].as_array().expect("tools");
    assert_eq!(tools.len(), 1, "{listed}");
    assert_eq!(tools[0]["name"], "echo", "{listed}");
    assert!(
        tools[0]["description"]
            .as_str()
            .is_some_and(|d| d.contains("approval")),
        "{listed}"
    );
    send(
        r#"{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {"x": 1}}}"#,
    );
    let waited = answer(&rx, &mut seen, 3, Duration::from_secs(30)).expect("tools/call answered");
    assert_eq!(waited["result"]["isError"], true, "{waited}");
    let why = waited["result"]["content"][0]["text"]
        .as_str()
        .expect("text");
    // The approval it names is the one the call asked for, withdrawn with the call (expired
    // by loongd, noted): nothing waits for it, so no operator approves it for nothing.
    let states = || -> Vec<(String, String, String)> {
        let list: serde_json::Value =
            serde_json::from_slice(&home.ctl(&["approvals", "list", "--json"]).stdout)
                .expect("approvals");
        list.as_array()
            .expect("array")
            .iter()
            .map(|a| {
                let field = |k: &str| a[k].as_str().unwrap_or_default().to_string();
                (field("id"), field("state"), field("note"))
            })
            .collect()
    };
    let mut asked = states();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let id = asked[0].0.clone();
    assert!(
        why.contains(&format!(
            "approval {id} of this call of echo was not decided"
        )) && why.contains("is withdrawn with it"),
        "{why}"
    );
    assert!(
        crate::support::wait_until(Duration::from_secs(10), || {
            asked = states();
            asked[0].1 == "expired"
        }),
        "{asked:?}"
    );
    assert!(asked[0].2.contains("its caller went away"), "{asked:?}");
    drop(stdin);
    assert!(child.wait().expect("wait").success());
}

/// The names `tools/list` gives under the token in `file`.
pub(crate) fn listed(home: &Home, file: &Path) -> Vec<String> {
    let (mut stdin, rx, mut child) = raw_server(home, file, &[]);
    let mut seen = Vec::new();
    let mut send = |line: &str| {
        stdin.write_all(line.as_bytes()).expect("write");
        stdin.write_all(b"\n").expect("write");
        stdin.flush().expect("flush");
    };
    initialize(&mut send, &rx, &mut seen);
    send(r#"{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}"#);
    let listed = answer(&rx, &mut seen, 2, Duration::from_secs(20)).expect("tools/list answered");
    drop(stdin);
    assert!(child.wait().expect("wait").success());
    let mut names: Vec<String> = listed["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str().map(String::from))
        .collect();
    names.sort_unstable();
    names
}

#[test]
fn mcp_serve_offers_programmatic_tool_call_only_to_a_token_that_may_invoke_it() {
    let home = Home::with_config("[builtins]\nplans = true\n");
    crate::kernel_calls::pack(&home);
    install_examples(&home);
    home.start();
    let (with, _) = token_file(
        &home,
        &["tool.invoke:programmatic_tool_call", "tool.invoke:echo"],
        "with",
    );
    let (without, _) = token_file(&home, &["tool.invoke:echo"], "without");
    assert_eq!(listed(&home, &with), ["echo", "programmatic_tool_call"]);
    assert_eq!(listed(&home, &without), ["echo"]);
}

#[test]
fn mcp_serve_answers_hostile_input_and_keeps_serving() {
    let home = Home::new();
    crate::kernel_calls::pack(&home);
    install_examples(&home);
    home.start();
    let (file, _) = token_file(&home, &["tool.invoke:echo"], "token");
    let (mut stdin, rx, mut child) = raw_server(&home, &file, &[]);
    let mut seen = Vec::new();
    let mut send = |line: &str| {
        stdin.write_all(line.as_bytes()).expect("write");
        stdin.write_all(b"\n").expect("write");
        stdin.flush().expect("flush");
    };
    send(
        &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}})
        .to_string(),
    );
    let init = answer(&rx, &mut seen, 1, Duration::from_secs(20)).expect("initialize answered");
    assert!(
        init["result"]["capabilities"]["tools"].is_object(),
        "{init}"
    );
    send(r#"{"jsonrpc": "2.0", "method": "notifications/initialized"}"#);

    // Malformed JSON is dropped; well-formed JSON that is no JSON-RPC message is answered
    // as an invalid request; an unknown method is an error naming its class.
    send("{not json");
    send(r#"{"jsonrpc": "2.0", "id": 2, "method": 5}"#);
    send(r#"{"jsonrpc": "2.0", "id": 3, "method": "no/such/method", "params": {}}"#);
    let unknown =
        answer(&rx, &mut seen, 3, Duration::from_secs(20)).expect("unknown method answered");
    assert_eq!(unknown["error"]["code"], -32601, "{unknown}");
    // A line above the limit (here a ping padded past 4 MiB) is dropped unread: no answer.
    let pad = "x".repeat(MAX_MCP_LINE_BYTES + 1);
    send(
        &serde_json::json!({"jsonrpc": "2.0", "id": 4, "method": "ping",
            "params": {"_meta": {"pad": pad}}})
        .to_string(),
    );
    // Control: the same ping, small, is answered; and after all of it the server still calls
    // tools through the kernel.
    send(r#"{"jsonrpc": "2.0", "id": 5, "method": "ping"}"#);
    send(
        r#"{"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "echo", "arguments": {"after": "hostile"}}}"#,
    );
    let pong = answer(&rx, &mut seen, 5, Duration::from_secs(20)).expect("ping answered");
    assert!(pong["result"].is_object(), "{pong}");
    let echo = answer(&rx, &mut seen, 6, Duration::from_secs(30)).expect("tools/call answered");
    assert_eq!(
        echo["result"]["structuredContent"],
        serde_json::json!({"after": "hostile"}),
        "{echo}"
    );
    // Nothing ever answered the oversized ping (the ping after it was answered, so it would
    // have been too).
    while let Ok(line) = rx.try_recv() {
        seen.push(serde_json::from_str(&line).expect("JSON"));
    }
    assert!(
        !seen.iter().any(|v| v["id"] == 4),
        "the oversized line was read: {seen:?}"
    );
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the server is still up"
    );
    drop(stdin);
    let status = child.wait().expect("wait");
    assert!(
        status.success(),
        "it ends cleanly when the client closes stdin"
    );
}

/// A burst of `tools/list` requests (each a dry run per tool, audited) costs at most two
/// listings, not one per request: listings run one at a time and the requests that arrived
/// while one ran share the next. A `tools/list` sent after the burst is answered is listed
/// afresh (the control: nothing is served from a stale listing).
#[test]
fn mcp_serve_lists_a_burst_of_tools_list_requests_at_most_twice() {
    const BURST: u64 = 40;
    let home = Home::new();
    crate::kernel_calls::pack(&home);
    install_examples(&home);
    home.start();
    let (file, id) = token_file(&home, &["tool.invoke:echo"], "token");
    let (mut stdin, rx, mut child) = raw_server(&home, &file, &[]);
    let mut seen = Vec::new();
    let mut send = |line: &str| {
        stdin.write_all(line.as_bytes()).expect("write");
        stdin.write_all(b"\n").expect("write");
        stdin.flush().expect("flush");
    };
    initialize(&mut send, &rx, &mut seen);
    let burst: String = (0..BURST)
        .map(|i| {
            format!(
                "{{\"jsonrpc\": \"2.0\", \"id\": {}, \"method\": \"tools/list\"}}\n",
                100 + i
            )
        })
        .collect();
    send(burst.trim_end());
    // The answers come in any order: each is read until all are in.
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let mut answered = std::collections::BTreeMap::new();
    while answered.len() < BURST as usize {
        let left = until
            .checked_duration_since(std::time::Instant::now())
            .unwrap_or_else(|| panic!("{} of {BURST} tools/list answered", answered.len()));
        let line = rx.recv_timeout(left).expect("an answer");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        if let Some(id) = v["id"]
            .as_u64()
            .filter(|id| (100..100 + BURST).contains(id))
        {
            answered.insert(id, v);
        }
    }
    for listed in answered.values() {
        let names: Vec<&str> = listed["result"]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert_eq!(names, ["echo"], "{listed}");
    }
    let decided = |home: &Home| {
        let trail: serde_json::Value =
            serde_json::from_slice(&home.ctl(&["audit", "token-trail", &id, "--json"]).stdout)
                .expect("token trail");
        trail
            .as_array()
            .expect("array")
            .iter()
            .filter(|r| r["kind"] == "policy.decision")
            .map(detail)
            .filter(|d| d["capability"] == "tool.invoke" && d["target"] == "echo")
            .count()
    };
    let after_burst = decided(&home);
    assert!(
        (1..=2).contains(&after_burst),
        "{BURST} tools/list requests made {after_burst} listings"
    );
    send(r#"{"jsonrpc": "2.0", "id": 200, "method": "tools/list"}"#);
    answer(&rx, &mut seen, 200, Duration::from_secs(20)).expect("tools/list answered");
    assert_eq!(
        decided(&home),
        after_burst + 1,
        "a later tools/list lists afresh"
    );
    drop(stdin);
    assert!(child.wait().expect("wait").success());
}

/// `$LOONG_TOKEN` set but holding no secret (a client configuration expanding an unset
/// variable) stops `mcp serve` with a usage error naming it, instead of serving with the
/// operator's own authority; the control: a secret in `$LOONG_TOKEN` is taken.
#[test]
fn mcp_serve_refuses_a_loong_token_that_holds_no_secret() {
    let home = Home::new();
    crate::kernel_calls::pack(&home);
    home.start();
    let (file, _) = token_file(&home, &["tool.invoke:echo"], "token");
    let secret = fs::read_to_string(&file).expect("secret");
    let serve = |value: &str| {
        Command::new(bin("loongctl"))
            .arg("--home")
            .arg(home.path())
            .args(["mcp", "serve"])
            .env("LOONG_TOKEN", value)
            .stdin(Stdio::null())
            .output()
            .expect("mcp serve runs")
    };
    for empty in ["", "  "] {
        let out = serve(empty);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{empty:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("LOONG_TOKEN"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = serve(secret.trim());
    assert!(
        out.status.code() != Some(2) && !text(&out.stderr).contains("LOONG_TOKEN"),
        "{}",
        text(&out.stderr)
    );
}

/// Calls beyond the 16 in flight and the 64 waiting (`MAX_MCP_CALLS_WAITING`) are answered
/// at once with a tool error saying so, instead of being held (each with its input) without
/// bound; the control: the calls within the bound are taken and none of them says so.
#[test]
fn mcp_serve_answers_calls_beyond_those_it_holds_at_once() {
    const HELD: u64 = 16 + 64;
    const BEYOND: u64 = 3;
    let home = Home::new();
    pack(&home);
    crate::workers::install_spin(&home, 5_000);
    home.start();
    let (file, _) = token_file(&home, &["tool.invoke:spin"], "token");
    let (mut stdin, rx, mut child) = raw_server(&home, &file, &["--timeout", "60"]);
    let mut seen = Vec::new();
    let mut send = |line: &str| {
        stdin.write_all(line.as_bytes()).expect("write");
        stdin.write_all(b"\n").expect("write");
        stdin.flush().expect("flush");
    };
    initialize(&mut send, &rx, &mut seen);
    // The name is learnt first, so no call waits on a listing.
    send(r#"{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}"#);
    answer(&rx, &mut seen, 2, Duration::from_secs(20)).expect("tools/list answered");
    let burst: String = (0..HELD + BEYOND)
        .map(|i| {
            format!(
                "{{\"jsonrpc\": \"2.0\", \"id\": {}, \"method\": \"tools/call\", \"params\": {{\"name\": \"spin\", \"arguments\": {{}}}}}}\n",
                100 + i
            )
        })
        .collect();
    send(burst.trim_end());
    let refused = |v: &serde_json::Value| {
        v["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("wait their turn"))
    };
    let until = std::time::Instant::now() + Duration::from_secs(4);
    let mut answered = Vec::new();
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        answered.push(serde_json::from_str::<serde_json::Value>(&line).expect("JSON"));
    }
    let turned_away = answered.iter().filter(|v| refused(v)).count() as u64;
    assert!(
        (1..=BEYOND).contains(&turned_away),
        "{turned_away} of {} calls turned away: {answered:?}",
        HELD + BEYOND
    );
    assert!(
        answered.len() as u64 <= BEYOND + 16,
        "more answers than the calls turned away and those in flight: {answered:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The client for approval waits: each step calls a tool, with a progress callback when
/// `progress` is set; the callback answers the approval its first report names (`answer`:
/// `approve` or `deny`) with loongctl. Prints each call's result and the progress messages
/// it saw. Over stdio (`mcp serve`) or streamable HTTP (the gateway's `/mcp`).
pub(crate) const PROGRESS_CLIENT: &str = r#"
import asyncio, json, re, sys
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

ctl, home, how, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])

async def steps(s):
    await s.initialize()
    out = []
    for step in plan:
        seen, acted = [], []
        async def on_progress(progress, total, message, step=step, seen=seen, acted=acted):
            seen.append({"progress": progress, "message": message})
            m = re.search(r"approval (\S+?):", message or "")
            if m and not acted:
                acted.append(m.group(1))
                p = await asyncio.create_subprocess_exec(
                    ctl, "--home", home, "approvals", step["answer"], m.group(1),
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                await p.wait()
        cb = on_progress if step.get("progress") else None
        r = await s.call_tool(step["name"], step.get("arguments", {}), progress_callback=cb)
        out.append({"is_error": bool(r.is_error),
                    "text": "".join(c.text for c in r.content if c.type == "text"),
                    "structured": r.structured_content, "progress": seen, "answered": acted})
    return out

async def main():
    if how["transport"] == "stdio":
        params = StdioServerParameters(command=ctl, args=["--home", home, "mcp", "serve",
                                       "--token-file", how["token_file"], "--timeout", "3"])
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as s:
                out = await steps(s)
    else:
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {how['secret']}"})
        async with client:
            async with streamable_http_client(how["url"], http_client=client) as (read, write, *_):
                async with ClientSession(read, write) as s:
                    out = await steps(s)
    print(json.dumps(out))

asyncio.run(main())
"#;

/// Runs [`PROGRESS_CLIENT`] with `how` (its transport); its report, one entry per step.
pub(crate) fn progress_client(
    home: &Home,
    how: &serde_json::Value,
    plan: &serde_json::Value,
) -> Vec<serde_json::Value> {
    let py = python().expect("checked by the caller");
    let script = home.path().join("progress_client.py");
    fs::write(&script, PROGRESS_CLIENT).expect("client script");
    let out = Command::new(py)
        .arg(&script)
        .arg(bin("loongctl"))
        .arg(home.path())
        .arg(how.to_string())
        .arg(plan.to_string())
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "the MCP client failed: {}\n{}\n{}",
        text(&out.stderr),
        text(&out.stdout),
        home.log()
    );
    json(&text(&out.stdout))
        .as_array()
        .cloned()
        .expect("a list of results")
}

/// Checks a report of [`PROGRESS_CLIENT`] for the plan [approve with progress, deny with
/// progress, no progress]: the first is answered with the tool's result once approved, after
/// progress naming its approval; the second is a tool error saying it was denied; the third
/// (no progress token) the tool error naming the approval, withdrawn with the call (when the
/// plan has it).
pub(crate) fn check_approval_progress(got: &[serde_json::Value]) {
    assert!(got.len() >= 2, "{got:?}");
    let approved = &got[0];
    let id = approved["answered"][0].as_str().unwrap_or_default();
    assert!(
        !id.is_empty(),
        "the first report names the approval: {approved}"
    );
    assert!(
        approved["progress"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("waiting for approval {id}"))),
        "{approved}"
    );
    assert_eq!(approved["is_error"], false, "{approved}");
    assert_eq!(
        approved["structured"]["n"], 1,
        "the tool's own result: {approved}"
    );
    let denied = &got[1];
    assert!(
        !denied["answered"][0]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{denied}"
    );
    assert_eq!(denied["is_error"], true, "{denied}");
    assert!(
        denied["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("denied:")),
        "{denied}"
    );
    let Some(plain) = got.get(2) else {
        return;
    };
    assert_eq!(plain["is_error"], true, "{plain}");
    assert!(
        plain["text"].as_str().is_some_and(
            |t| t.contains("was not decided while the call waited, and is withdrawn with it")
        ),
        "{plain}"
    );
    assert_eq!(plain["progress"], serde_json::json!([]), "{plain}");
}

/// The plan [`check_approval_progress`] checks.
pub(crate) fn approval_progress_plan() -> serde_json::Value {
    serde_json::json!([
        {"name": "echo", "arguments": {"n": 1}, "progress": true, "answer": "approve"},
        {"name": "echo", "arguments": {"n": 2}, "progress": true, "answer": "deny"},
        {"name": "echo", "arguments": {"n": 3}},
    ])
}

/// A client that sends a `progressToken` is told of an approval wait by progress
/// notifications naming the approval, and answered with the tool's result once it is
/// approved (a tool error once denied); without a progress token the call still ends at
/// `--timeout` with the tool error naming the approval.
#[test]
fn mcp_serve_reports_an_approval_wait_as_progress_and_answers_when_it_is_decided() {
    const TEST: &str =
        "mcp_serve_reports_an_approval_wait_as_progress_and_answers_when_it_is_decided";
    if let Err(why) = python() {
        return skip(TEST, &why);
    }
    let home = Home::new();
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\napproval = \"always\"\n",
    )
    .expect("pack");
    install_examples(&home);
    home.start();
    let (file, _) = token_file(&home, &["tool.invoke:echo"], "token");
    let how = serde_json::json!({"transport": "stdio", "token_file": file});
    let got = progress_client(&home, &how, &approval_progress_plan());
    check_approval_progress(&got);
}
