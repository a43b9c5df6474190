//! loongd's own bounds on a gateway worker taken over (`loongd/src/services/gateway_guard.rs`):
//! driven through the debug-build worker's test hook, which sends loongd the kernel calls a
//! test describes past every limit of the worker's own, as a compromised worker would.
//! Each bound has its positive control.

use std::time::{Duration, Instant};

use crate::{
    gateway::{free_port, gateway_home, http, wait_for_gateway},
    kernel_calls::{issue, json},
    support::{text, Home},
};

const HOOK: &str = "/__test/kernel-calls";
const RAW_CALLS_ENV: &str = "LOONG_TEST_GATEWAY_RAW_CALLS";
/// loongd's refusal budget (`REFUSAL_RECORD_BURST`, `REFUSAL_RECORDS_PER_SECOND`).
const RECORD_BURST: u64 = 100;
const RECORDS_PER_SECOND: u64 = 20;

fn hostile_gateway(extra: &str) -> (Home, u16) {
    let port = free_port();
    let home = gateway_home(port, extra);
    home.start_env(&[(RAW_CALLS_ENV, "1")]);
    wait_for_gateway(&home, port);
    (home, port)
}

/// Sends the script through the hook; loongd's answers: `{"ok", "errors", "messages"}`.
fn calls(port: u16, script: serde_json::Value) -> serde_json::Value {
    let (status, _, body) = http(
        port,
        "POST",
        HOOK,
        &[("Content-Type", "application/json")],
        &script.to_string(),
    );
    assert_eq!(status, 200, "{body}");
    json(&body)
}

fn count(v: &serde_json::Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or(0)
}

/// Every record, oldest first.
fn records(home: &Home) -> Vec<serde_json::Value> {
    let out = home.ctl(&["audit", "export", "--format", "jsonl"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(json)
        .collect()
}

/// Refusals of `kind` recorded for a worker: (one by one, the sum of the coalesced ones' counts, how
/// many coalesced records).
fn by_worker(records: &[serde_json::Value], kind: &str) -> (u64, u64, u64) {
    let mut out = (0, 0, 0);
    for r in records {
        let actor = r["actor"].as_str().unwrap_or("");
        if r["kind"] != kind || !actor.starts_with("worker:") || r["detail"]["allowed"] == true {
            continue;
        }
        match r["detail"]["coalesced"].as_u64() {
            Some(n) => {
                out.1 += n;
                out.2 += 1;
            }
            None => out.0 += 1,
        }
    }
    out
}

/// A flood of refused bearers (made-up secrets to gateway_auth and gateway_invoke) and of
/// kernel calls the gateway may not make, sent by the worker past its own budget: each is
/// refused, at most the refusal budget is recorded one by one, and the rest are counted in
/// coalesced records, so that none goes unrecorded and the trail grows by a bounded number
/// of records. A live token is served all along (the control).
#[test]
fn gateway_guard_coalesces_a_flood_of_refusals_into_counted_records() {
    const AUTHS: u64 = 600;
    const INVOKES: u64 = 300;
    const VIOLATIONS: u64 = 400;
    let (home, port) = hostile_gateway("");
    let (good, _) = issue(&home, &["tool.invoke:echo"]);
    let started = Instant::now();
    let a = calls(
        port,
        serde_json::json!({"kind": "gateway_auth", "bearer": "made-up-{i}", "count": AUTHS}),
    );
    assert_eq!(a["errors"]["Denied"], AUTHS, "{a}");
    let b = calls(
        port,
        serde_json::json!({"kind": "gateway_invoke", "bearer": "made-up-b{i}", "tool": "echo", "count": INVOKES}),
    );
    assert_eq!(b["errors"]["Denied"], INVOKES, "{b}");
    let v = calls(
        port,
        serde_json::json!({"kind": "channel_send", "pad": 8, "count": VIOLATIONS}),
    );
    assert_eq!(v["errors"]["Denied"], VIOLATIONS, "{v}");
    let elapsed = started.elapsed().as_secs() + 1;
    // The control: a live token is authenticated and its call served.
    let ok = calls(
        port,
        serde_json::json!({"kind": "gateway_invoke", "bearer": good, "tool": "echo", "count": 1}),
    );
    assert_eq!(count(&ok, "ok"), 1, "{ok}");
    let (status, _, body) = http(
        port,
        "GET",
        "/v1/models",
        &[("Authorization", format!("Bearer {good}").as_str())],
        "",
    );
    assert_eq!(status, 200, "{body}");
    // The windows' records are written a second after they open.
    std::thread::sleep(Duration::from_secs(3));
    let all = records(&home);
    let (one_by_one, coalesced, windows) = by_worker(&all, "policy.decision");
    let (v_one, v_coalesced, v_windows) = by_worker(&all, "protocol.violation");
    // Every refusal is recorded, one by one or counted.
    assert_eq!(
        one_by_one + coalesced,
        AUTHS + INVOKES,
        "refused bearers: {one_by_one} one by one + {coalesced} counted"
    );
    assert_eq!(v_one + v_coalesced, VIOLATIONS, "{v_one} + {v_coalesced}");
    // One by one only within the budget; the rest in few records.
    assert!(
        one_by_one + v_one <= RECORD_BURST + RECORDS_PER_SECOND * elapsed,
        "{one_by_one} + {v_one} records one by one in {elapsed} s"
    );
    assert!(
        windows >= 1 && windows <= elapsed + 1,
        "{windows} coalesced records"
    );
    assert!(v_windows >= 1 && v_windows <= elapsed + 1, "{v_windows}");
    assert!(home.ctl(&["audit", "verify"]).status.success());
}

/// A token's kernel calls through a worker that ignores its own limits: loongd serves at
/// most CALLS_PER_REQUEST (4) times `burst` at once and refuses the rest (Overloaded, named
/// for the token), and as many in flight as 4 × `max_streams_per_token`; another token is
/// served meanwhile, and the first again once its bucket refills (the controls).
#[test]
fn gateway_guard_bounds_a_tokens_kernel_calls_per_second_and_in_flight() {
    let (home, port) =
        hostile_gateway("max_streams_per_token = 2\nrequests_per_second = 5\nburst = 10\n");
    let (a, a_id) = issue(&home, &["tool.invoke:echo"]);
    let (b, _) = issue(&home, &["tool.invoke:echo"]);
    let (c, c_id) = issue(&home, &["tool.invoke:echo"]);
    let started = Instant::now();
    let r = calls(
        port,
        serde_json::json!({"kind": "gateway_auth", "bearer": a, "count": 300}),
    );
    let elapsed = started.elapsed().as_secs() + 1;
    let served = count(&r, "ok");
    assert!(
        served >= 8 && served <= 40 + 20 * elapsed,
        "{served} of token a's calls served in {elapsed} s: {r}"
    );
    assert_eq!(served + count(&r["errors"], "Overloaded"), 300, "{r}");
    assert!(
        r["messages"].to_string().contains(&a_id),
        "the refusal names the token: {r}"
    );
    // Another token is served meanwhile; token a again a few seconds later.
    let other = calls(
        port,
        serde_json::json!({"kind": "gateway_auth", "bearer": b, "count": 5}),
    );
    assert_eq!(count(&other, "ok"), 5, "{other}");
    std::thread::sleep(Duration::from_secs(3));
    let again = calls(
        port,
        serde_json::json!({"kind": "gateway_auth", "bearer": a, "count": 5}),
    );
    assert_eq!(count(&again, "ok"), 5, "{again}");

    // In flight: 40 calls at once (within the burst of 40) of a fresh token; loongd serves
    // at most 8 at a time, so some are refused for that.
    let r = calls(
        port,
        serde_json::json!({"kind": "gateway_invoke", "bearer": c, "tool": "echo", "count": 40}),
    );
    let messages = r["messages"].to_string();
    assert!(
        count(&r, "ok") >= 1 && messages.contains("in flight") && messages.contains(&c_id),
        "{r}"
    );
}

/// A kernel call above `max_body_bytes` × 2 + 64 KiB is refused before it is decoded; one
/// within it is served (the control).
#[test]
fn gateway_guard_refuses_a_kernel_call_larger_than_the_body_limit_allows() {
    let (home, port) = hostile_gateway("max_body_bytes = 65536\n");
    let (good, _) = issue(&home, &["tool.invoke:echo"]);
    let within = calls(
        port,
        serde_json::json!({"kind": "gateway_invoke", "bearer": good, "tool": "echo", "pad": 150_000, "count": 1}),
    );
    assert_eq!(count(&within, "ok"), 1, "{within}");
    let above = calls(
        port,
        serde_json::json!({"kind": "gateway_invoke", "bearer": good, "tool": "echo", "pad": 200_000, "count": 1}),
    );
    assert_eq!(above["errors"]["BadRequest"], 1, "{above}");
    assert!(
        above["messages"].to_string().contains("max_body_bytes"),
        "{above}"
    );
}

/// The approvals pending now.
fn pending_approvals(home: &Home) -> Vec<String> {
    let out = home.ctl(&["approvals", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["state"] == "pending")
                .filter_map(|x| x["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A warm `/mcp` session's request goes ahead while loongd authenticates its secret again,
/// but makes no kernel call under it before loongd has confirmed it: when the confirmation
/// is refused (here loongd's limit on the token's calls in flight, held full but for one
/// place by the hook's calls waiting for approvals), nothing took effect for a request
/// answered with the refusal. Each call is answered 200 and makes exactly one approval
/// request (the control: the confirmation takes the free place first, then the call does);
/// before, the confirmation and the call raced for the place, and a call whose confirmation
/// lost asked for an approval and was answered 503.
#[test]
fn gateway_mcp_warm_session_calls_nothing_before_loongd_confirms_its_secret() {
    let port = free_port();
    let home = gateway_home(port, "max_streams_per_token = 1\n");
    std::fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\napproval = \"always\"\n",
    )
    .expect("pack");
    home.start_env(&[(RAW_CALLS_ENV, "1")]);
    wait_for_gateway(&home, port);
    let (secret, _) = issue(&home, &["tool.invoke:echo"]);
    // Three of the token's four places (4 × max_streams_per_token) held by calls waiting.
    let holders = {
        let secret = secret.clone();
        std::thread::spawn(move || {
            calls(
                port,
                serde_json::json!({"kind": "gateway_invoke", "bearer": secret, "tool": "echo", "count": 3}),
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending_approvals(&home).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "three held calls: {}",
            home.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut seen = pending_approvals(&home);
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}});
    let (status, headers, body) = crate::gateway::mcp_post(port, &secret, None, &init);
    assert_eq!(status, 200, "{body}");
    let session = headers
        .iter()
        .find(|(n, _)| n == "mcp-session-id")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("a session id: {headers:?}"));
    let initialized = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, body) = crate::gateway::mcp_post(port, &secret, Some(&session), &initialized);
    assert!(status == 202 || status == 200, "{status} {body}");
    for n in 2..10u64 {
        let call = serde_json::json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"call": n}}});
        let (secret, session) = (secret.clone(), session.clone());
        let posted = std::thread::spawn(move || {
            crate::gateway::mcp_post(port, &secret, Some(&session), &call)
        });
        // Its approval, denied at once, so that the call is answered.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut asked = Vec::new();
        while Instant::now() < deadline && (asked.is_empty() || !posted.is_finished()) {
            for id in pending_approvals(&home) {
                if !seen.contains(&id) {
                    assert!(home.ctl(&["approvals", "deny", &id]).status.success());
                    seen.push(id.clone());
                    asked.push(id);
                }
            }
            if posted.is_finished() && asked.is_empty() {
                // Give a call that went on after its answer the time to ask.
                std::thread::sleep(Duration::from_millis(500));
                for id in pending_approvals(&home) {
                    if !seen.contains(&id) {
                        seen.push(id.clone());
                        asked.push(id);
                    }
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (status, _, body) = posted.join().expect("the call");
        assert_eq!(
            (status, asked.len()),
            (200, 1),
            "call {n}: answered {status} {body}, approvals asked {asked:?}\n{}",
            home.log()
        );
    }
    for id in pending_approvals(&home) {
        let _ = home.ctl(&["approvals", "deny", &id]);
    }
    let _ = holders.join();
}

/// Refusals counted past the budget and not yet recorded when loongd stops are recorded at
/// the gateway's stop, before loongd's last record: none is lost (a window's record was
/// written a second after it opened, by a task the shutdown dropped).
#[test]
fn gateway_guard_records_the_counted_refusals_when_loongd_stops() {
    const AUTHS: u64 = 2000;
    let (home, port) = hostile_gateway("");
    let a = calls(
        port,
        serde_json::json!({"kind": "gateway_auth", "bearer": "made-up-{i}", "count": AUTHS}),
    );
    assert_eq!(a["errors"]["Denied"], AUTHS, "{a}");
    // At once, while the last window is open.
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    home.start();
    let all = records(&home);
    let (one_by_one, coalesced, windows) = by_worker(&all, "policy.decision");
    assert!(windows >= 1, "the control: refusals were counted");
    assert_eq!(
        one_by_one + coalesced,
        AUTHS,
        "refused bearers: {one_by_one} one by one + {coalesced} counted"
    );
    // Recorded before loongd's last record.
    let stopped = all
        .iter()
        .position(|r| r["kind"] == "daemon.stopped")
        .expect("loongd's stop is recorded");
    let last_counted = all
        .iter()
        .rposition(|r| r["detail"]["coalesced"].is_u64())
        .expect("a counted record");
    assert!(last_counted < stopped, "{last_counted} after {stopped}");
}

/// A token's chat turns hold its place among its kernel calls in flight until each ends,
/// its stream read or not: a worker that starts turns and never reads them (their streams
/// dropped, the turns still running) is refused past loongd's limit for the token (4 ×
/// max_streams_per_token), while another token starts its own (the control). Before, a turn
/// gave its place back once started, so that a token's turns at once were bounded only by
/// the streams the worker holds for all tokens together.
#[test]
fn gateway_guard_bounds_a_tokens_chat_turns_running_at_once() {
    const TURNS: u64 = 10;
    const LIMIT: u64 = 4;
    // Every answer stalls: the turns run on.
    let provider = crate::agent::Provider::start(vec![crate::agent::Reply::Stall(Vec::new())]);
    let port = free_port();
    let home = Home::with_config(&provider.config(&format!(
        "[gateway]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nmax_streams_per_token = 1\n"
    )));
    std::fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    std::fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\napproval = \"never\"\n",
    )
    .expect("pack");
    crate::workers::install_examples(&home);
    home.start_env(&[(RAW_CALLS_ENV, "1")]);
    wait_for_gateway(&home, port);
    let (secret, _) = issue(&home, &["tool.invoke:agent.turn"]);
    let (other, _) = issue(&home, &["tool.invoke:agent.turn"]);
    let started = calls(
        port,
        serde_json::json!({"kind": "gateway_chat_start", "bearer": secret, "count": TURNS}),
    );
    assert_eq!(count(&started, "ok"), LIMIT, "{started}");
    assert_eq!(started["errors"]["Overloaded"], TURNS - LIMIT, "{started}");
    // The control: another token's turn starts.
    let control = calls(
        port,
        serde_json::json!({"kind": "gateway_chat_start", "bearer": other, "count": 1}),
    );
    assert_eq!(count(&control, "ok"), 1, "{control}");
}

/// A `gateway_invoke` asking for a short wait is given loongd's shortest
/// (`MIN_GATEWAY_INVOKE_WAIT_MS`): a call waiting for an approval keeps its token's place
/// among its calls in flight that long, so that a worker taken over cannot ask for
/// approvals faster than its token's calls in flight allow (past them: `Overloaded`, no
/// approval asked). Before, a call asking for a 200 ms wait was answered then and gave its
/// place back while its approval stayed pending, and each batch asked for more.
#[test]
fn gateway_guard_a_short_invoke_wait_does_not_free_a_place_while_its_approval_is_pending() {
    const LIMIT: u64 = 4;
    let port = free_port();
    let home = gateway_home(port, "max_streams_per_token = 1\n");
    std::fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\napproval = \"always\"\n",
    )
    .expect("pack");
    home.start_env(&[(RAW_CALLS_ENV, "1")]);
    wait_for_gateway(&home, port);
    let (secret, _) = issue(&home, &["tool.invoke:echo"]);
    let script = serde_json::json!({"kind": "gateway_invoke", "bearer": secret, "tool": "echo",
        "count": LIMIT, "wait_ms": 200});
    let first = {
        let script = script.clone();
        std::thread::spawn(move || calls(port, script))
    };
    // The control: the first batch's calls each ask for an approval.
    let deadline = Instant::now() + Duration::from_secs(20);
    while (pending_approvals(&home).len() as u64) < LIMIT {
        assert!(
            Instant::now() < deadline,
            "the first batch's approvals: {}",
            home.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let second = calls(port, script);
    let asked = pending_approvals(&home);
    for id in &asked {
        let _ = home.ctl(&["approvals", "deny", id]);
    }
    let _ = first.join();
    assert_eq!(second["errors"]["Overloaded"], LIMIT, "{second}");
    assert_eq!(asked.len() as u64, LIMIT, "{asked:?}");
}

/// A `gateway_invoke` the worker withdraws once it has asked for an approval gives its
/// token's place among its calls in flight back, and its approval is withdrawn with it
/// (expired by loongd, recorded as `approval.expired` under the token): withdrawn calls
/// leave nothing pending for an operator to approve on behalf of nobody, and the next batch
/// asks again (the control: each call asked). Before, each batch of withdrawn calls left its
/// approvals pending until their deadline.
#[test]
fn gateway_guard_a_withdrawn_calls_approval_is_withdrawn_with_it() {
    const LIMIT: u64 = 4;
    let port = free_port();
    let home = gateway_home(port, "max_streams_per_token = 1\n");
    std::fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\napproval = \"always\"\n",
    )
    .expect("pack");
    home.start_env(&[(RAW_CALLS_ENV, "1")]);
    wait_for_gateway(&home, port);
    let (secret, id) = issue(&home, &["tool.invoke:echo"]);
    let script = serde_json::json!({"kind": "gateway_invoke", "bearer": secret, "tool": "echo",
        "count": LIMIT, "timeout_ms": 1000});
    let of_token = |kind: &str| -> Vec<serde_json::Value> {
        records(&home)
            .into_iter()
            .filter(|r| r["kind"] == kind && r["detail"]["token"] == id.as_str())
            .collect()
    };
    for batch in 1..=2u64 {
        let answered = calls(port, script.clone());
        assert_eq!(count(&answered, "ok"), 0, "{answered}");
        // Each call asked for an approval (the control), and each was withdrawn with it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pending_approvals(&home).is_empty()
            || of_token("approval.expired").len() as u64 != batch * LIMIT
        {
            assert!(
                Instant::now() < deadline,
                "batch {batch}: {answered}\n{:?}",
                of_token("approval.expired")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            of_token("approval.requested").len() as u64,
            batch * LIMIT,
            "{answered}"
        );
        assert!(of_token("approval.expired")
            .iter()
            .all(|r| r["detail"]["why"]
                .as_str()
                .is_some_and(|w| w.contains("its caller went away"))));
    }
}

/// A chat turn may ask for approvals as a tool's call does: a token with as many approvals
/// pending as its calls in flight through the gateway may be (here asked by `loongctl invoke`,
/// as an honest gateway meets it) starts no turn. The refusal is labelled for what it is: a
/// denial at the approval stage naming the token and what to do, recorded as the token's
/// `policy.decision`, not as a protocol violation of the worker (which it was before).
/// Another token starts one (the control); once the waiting callers go away, their
/// approvals are withdrawn and the first token starts one too.
#[test]
fn gateway_guard_refuses_a_chat_turn_of_a_token_with_its_approvals_pending_as_a_policy_denial() {
    const LIMIT: usize = 4;
    let provider = crate::agent::Provider::start(vec![crate::agent::Reply::Stall(Vec::new())]);
    let port = free_port();
    let home = Home::with_config(&provider.config(&format!(
        "[gateway]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nmax_streams_per_token = 1\n"
    )));
    std::fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    std::fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\"]\napproval = \"always\"\n",
    )
    .expect("pack");
    crate::workers::install_examples(&home);
    home.start_env(&[(RAW_CALLS_ENV, "1")]);
    wait_for_gateway(&home, port);
    let (secret, id) = issue(&home, &["tool.invoke:echo", "tool.invoke:agent.turn"]);
    let (other, _) = issue(&home, &["tool.invoke:agent.turn"]);
    let mut callers: Vec<std::process::Child> = (0..LIMIT)
        .map(|_| {
            std::process::Command::new(crate::support::bin("loongctl"))
                .arg("--home")
                .arg(home.path())
                .args(["invoke", "echo", "--token", &secret, "--input", "{}"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("loongctl")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending_approvals(&home).len() < LIMIT {
        assert!(
            Instant::now() < deadline,
            "the callers' approvals: {}",
            home.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = calls(
        port,
        serde_json::json!({"kind": "gateway_chat_start", "bearer": secret, "count": 1}),
    );
    assert_eq!(refused["errors"]["Denied"], 1, "{refused}");
    let message = refused["messages"][0].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("token {id} has {LIMIT} approvals pending"))
            && message.contains("loongctl approvals list"),
        "{refused}"
    );
    let all = records(&home);
    let decisions: Vec<_> = all
        .iter()
        .filter(|r| {
            r["kind"] == "policy.decision"
                && r["detail"]["token"] == id.as_str()
                && r["detail"]["stage"] == "approval"
                && r["detail"]["kernel_call"] == "gateway_chat_start"
        })
        .collect();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["detail"]["allowed"], false);
    assert_eq!(by_worker(&all, "protocol.violation"), (0, 0, 0));
    let control = calls(
        port,
        serde_json::json!({"kind": "gateway_chat_start", "bearer": other, "count": 1}),
    );
    assert_eq!(count(&control, "ok"), 1, "{control}");

    for c in &mut callers {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Their approvals withdrawn (the other token's turn still waits for its own).
    let of_first = || -> usize {
        let out = home.ctl(&["approvals", "list", "--json"]);
        json(&text(&out.stdout))
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| r["state"] == "pending" && r["token"] == id.as_str())
                    .count()
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while of_first() > 0 {
        assert!(Instant::now() < deadline, "withdrawn: {}", of_first());
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = calls(
        port,
        serde_json::json!({"kind": "gateway_chat_start", "bearer": secret, "count": 1}),
    );
    assert_eq!(count(&again, "ok"), 1, "{again}");
}
