//! The tools the agent offers a model, as the provider receives them: each with the JSON
//! schema of its input (a manifest's `metadata.input_schema_json`, an MCP server's
//! `tools/list` `inputSchema`, a built-in's fixed one), a hostile schema refused with its
//! plugin; and, past `[agent] max_offered_tools`, `tool_search` in their place.

use std::{collections::BTreeMap, fs};

use crate::{
    agent::{ask, text_answer, tool_answer, tool_messages, Provider},
    kernel_calls::{issue, json, trail},
    supply_chain::{ctl_ok, view},
    support::Home,
    workers::{detail, install_examples},
};

/// The grant a token needs to ask the agent at all.
const ASK: &str = "tool.invoke:agent.turn";

/// A pack `t` granting `tool.invoke` and `fs.read`.
fn pack(home: &Home) {
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\", \"fs.read\"]\n",
    )
    .expect("pack");
}

/// The tools of a provider request: wire name → `function` (`description`, `parameters`).
pub(crate) fn offered_functions(
    request: &serde_json::Value,
) -> BTreeMap<String, serde_json::Value> {
    request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let f = &t["function"];
            Some((f["name"].as_str()?.to_string(), f.clone()))
        })
        .collect()
}

/// `loongctl plugins init` of `kind` into the home's plugins directory, as `id`.
fn init(home: &Home, id: &str, kind: &str) -> std::path::PathBuf {
    let dir = home.path().join("plugins").join(id);
    ctl_ok(
        home,
        &[
            "plugins",
            "init",
            &dir.display().to_string(),
            "--kind",
            kind,
        ],
    );
    dir
}

/// Sets `metadata.input_schema_json` of the manifest in `dir`.
fn set_schema(dir: &std::path::Path, schema: &str) {
    let path = dir.join("loong.plugin.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("manifest")).expect("JSON");
    m["metadata"]["input_schema_json"] = serde_json::json!(schema);
    fs::write(&path, m.to_string()).expect("manifest");
}

#[test]
fn offered_tools_carry_the_input_schemas_of_their_manifests_mcp_servers_and_built_ins() {
    let dir = tempfile::Builder::new()
        .prefix("lschema")
        .tempdir_in("/tmp")
        .expect("dir");
    let provider = Provider::start(vec![text_answer("ok")]);
    let home = Home::with_config(&provider.config(&format!(
        "[builtins]\nread_roots = [\"{}\"]\n",
        dir.path().display()
    )));
    pack(&home);
    // A JSON-lines program whose manifest gives its schema, and one whose schema is not an
    // object schema; an MCP server, and one whose tools/list gives a string schema.
    let schema = r#"{"type": "object", "properties": {"name": {"type": "string", "description": "who"}}, "required": ["name"]}"#;
    set_schema(&init(&home, "greet", "stdio"), schema);
    set_schema(&init(&home, "badmanifest", "stdio"), r#"["object"]"#);
    init(&home, "hello", "mcp");
    let bad_server = init(&home, "badserver", "mcp");
    let server = bad_server.join("server.py");
    let source = fs::read_to_string(&server).expect("server.py");
    let hostile = source.replace(
        r#""inputSchema": {"type": "object","#,
        r#""inputSchema": {"type": "string","#,
    );
    assert_ne!(
        source, hostile,
        "the scaffold's schema is where the test expects it"
    );
    fs::write(&server, hostile).expect("server.py");
    home.start();

    let (secret, _) = issue(
        &home,
        &[
            ASK,
            "tool.invoke:greet",
            "tool.invoke:badmanifest",
            "tool.invoke:hello/hello",
            "tool.invoke:badserver/hello",
            "fs.read",
        ],
    );
    let (code, out, err) = ask(&home, &["hello", "--token", &secret, "--json"]);
    assert_eq!(code, 0, "{err}\n{}", home.log());
    assert_eq!(json(&out)["answer"], "ok");
    let tools = offered_functions(&provider.requests()[0]);
    let names: Vec<&str> = tools.keys().map(String::as_str).collect();
    assert_eq!(names, ["file_read", "greet", "hello_hello"], "{tools:?}");
    // The manifest's schema, as written.
    assert_eq!(
        tools["greet"]["parameters"],
        json(schema),
        "{}",
        tools["greet"]
    );
    // The MCP server's own inputSchema, and its own description.
    assert_eq!(
        tools["hello_hello"]["parameters"],
        serde_json::json!({"type": "object", "properties": {"name": {"type": "string"}}}),
    );
    assert!(
        tools["hello_hello"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("Greets whoever is named")),
        "{}",
        tools["hello_hello"]
    );
    // A built-in's fixed schema names what it reads.
    let read = &tools["file_read"]["parameters"];
    assert_eq!(read["type"], "object");
    assert_eq!(read["required"], serde_json::json!(["path"]), "{read}");
    assert_eq!(read["properties"]["path"]["type"], "string", "{read}");

    // The hostile schemas were refused with their plugins, naming why.
    let bad = view(&home, "badmanifest");
    assert_eq!(bad["state"], "failed", "{bad}");
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("metadata.input_schema_json")),
        "{bad}"
    );
    let bad = view(&home, "badserver");
    assert_eq!(bad["state"], "failed", "{bad}");
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("\"hello\"") && e.contains("\"type\": \"object\"")),
        "{bad}"
    );
}

/// The content of the `n`th tool message of a request, as JSON when it is.
fn told(request: &serde_json::Value, n: usize) -> String {
    tool_messages(request)[n]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn past_max_offered_tools_the_model_searches_and_calls_only_what_the_token_may() {
    let ws = tempfile::Builder::new()
        .prefix("lsearch")
        .tempdir_in("/tmp")
        .expect("dir");
    let provider = Provider::start(vec![
        // A tool configured but not granted is never found.
        tool_answer(
            "tool_search",
            &serde_json::json!({"query": "shell exec command"}),
        ),
        // A tool the token may call, but not found yet, is not offered.
        tool_answer("json-transform", &serde_json::json!({"x": 1})),
        tool_answer(
            "tool_search",
            &serde_json::json!({"query": "writes its input back"}),
        ),
        tool_answer("echo", &serde_json::json!({"ping": 7})),
        text_answer("echo said ping 7"),
    ]);
    let home = Home::with_config(&format!(
        "[providers.local]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{}/v1\"\nmodel = \"test-model\"\n\n[agent]\nprovider = \"local\"\nmax_steps = 8\nmax_offered_tools = 2\n\n[builtins]\nworkspace = \"{}\"\n",
        provider.port,
        ws.path().display()
    ));
    install_examples(&home);
    pack(&home);
    home.start();
    let (secret, id) = issue(
        &home,
        &[
            ASK,
            "tool.invoke:echo",
            "tool.invoke:json-transform",
            "tool.invoke:config-reader",
        ],
    );
    let (code, out, err) = ask(&home, &["hello", "--token", &secret, "--json"]);
    assert_eq!(code, 0, "{err}\n{}", home.log());
    assert_eq!(json(&out)["answer"], "echo said ping 7", "{out}");
    let requests = provider.requests();
    assert_eq!(requests.len(), 5, "{requests:?}");
    // Three tools may be called, more than two: only tool_search is offered at first.
    let first: Vec<String> = offered_functions(&requests[0]).into_keys().collect();
    assert_eq!(first, ["tool_search"]);
    assert_eq!(
        offered_functions(&requests[0])["tool_search"]["parameters"]["required"],
        serde_json::json!(["query"])
    );
    let none = json(&told(&requests[1], 0));
    assert_eq!(none["found"], serde_json::json!([]), "{none}");
    assert!(
        told(&requests[2], 1).contains("not available"),
        "{}",
        told(&requests[2], 1)
    );
    let found = json(&told(&requests[3], 2));
    assert_eq!(found["found"][0]["name"], "echo", "{found}");
    // The found tool is offered from the next step, within the bound, and its call runs
    // through the kernel under the token.
    let next: Vec<String> = offered_functions(&requests[3]).into_keys().collect();
    assert_eq!(next, ["echo", "tool_search"], "{next:?}");
    assert!(
        told(&requests[4], 3).contains("\"ping\":7"),
        "{}",
        told(&requests[4], 3)
    );
    let records = trail(&home, &id);
    let invoked: Vec<String> = records
        .iter()
        .filter(|r| r["kind"] == "tool.invoked")
        .filter_map(|r| detail(r)["tool"].as_str().map(str::to_string))
        .collect();
    assert!(invoked.contains(&"echo".to_string()), "{invoked:?}");
    assert!(
        !invoked.contains(&"json-transform".to_string()),
        "{invoked:?}"
    );
    // The call of the tool not yet found was refused without a kernel call, and audited.
    let refused = records
        .iter()
        .filter(|r| r["kind"] == "policy.decision")
        .map(detail)
        .find(|d| d["target"] == "json-transform")
        .expect("the refusal is in the trail");
    assert_eq!(refused["stage"], "not_offered", "{refused}");
}

/// A request's system prompt (OpenAI: the first message, `role: system`).
fn system_of(request: &serde_json::Value) -> String {
    request["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "system"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The user messages of a request, in order.
fn user_texts(request: &serde_json::Value) -> Vec<String> {
    request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn when_the_window_overflows_the_model_summarises_the_old_turns_and_the_summary_survives_a_restart()
{
    // WINDOW_TURNS + SUMMARY_BATCH_TURNS (loongd/src/authority/memory.rs): the turns after
    // which a fold is made.
    const WINDOW: usize = 8;
    const BATCH: usize = 4;
    const SUMMARY: &str = "The user counted from q0 to q3.";
    let mut script: Vec<_> = (0..WINDOW + BATCH)
        .map(|n| text_answer(&format!("a{n}")))
        .collect();
    script.push(text_answer(SUMMARY));
    script.push(text_answer("after the fold"));
    script.push(text_answer("after the restart"));
    let provider = Provider::start(script);
    let home = Home::with_config(&provider.config(""));
    home.start();
    let ask_ok = |prompt: &str| {
        let (code, out, err) = ask(&home, &[prompt, "--session", "s1"]);
        assert_eq!(code, 0, "{prompt}: {err}\n{}", home.log());
        out
    };
    for n in 0..WINDOW + BATCH {
        ask_ok(&format!("q{n}"));
    }
    // Below the threshold every turn is sent whole and nothing is summarised (the control).
    let requests = provider.requests();
    assert_eq!(requests.len(), WINDOW + BATCH);
    let last = &requests[WINDOW + BATCH - 1];
    assert!(
        !system_of(last).contains("Summary of the earlier"),
        "{last}"
    );
    assert_eq!(user_texts(last).len(), WINDOW + BATCH, "{last}");

    // The next turn first asks the model to fold the oldest turns into a summary, then
    // sends the summary as context and the last WINDOW turns whole.
    assert_eq!(ask_ok("q12").trim(), "after the fold");
    let requests = provider.requests();
    assert_eq!(
        requests.len(),
        WINDOW + BATCH + 2,
        "one extra provider call"
    );
    let fold = &requests[WINDOW + BATCH];
    assert!(
        fold["tools"].as_array().is_none_or(Vec::is_empty),
        "a summary request offers no tools: {fold}"
    );
    let asked = user_texts(fold).join("\n");
    assert!(
        asked.starts_with("Update the summary of this conversation."),
        "{asked}"
    );
    for n in 0..BATCH {
        assert!(asked.contains(&format!("user: q{n}\n")), "{asked}");
        assert!(asked.contains(&format!("assistant: a{n}\n")), "{asked}");
    }
    assert!(!asked.contains("user: q4\n"), "{asked}");
    let turn = &requests[WINDOW + BATCH + 1];
    assert!(
        system_of(turn).contains(&format!(
            "Summary of the earlier conversation in this session:\n{SUMMARY}"
        )),
        "{turn}"
    );
    let sent = user_texts(turn);
    let want: Vec<String> = (BATCH..=WINDOW + BATCH).map(|n| format!("q{n}")).collect();
    assert_eq!(sent, want, "{turn}");

    // The summary is kept with the session: after a restart it is sent again, with no new
    // fold, and the old turns are still in memory.
    let out = home.ctl(&["daemon", "stop"]);
    assert!(out.status.success());
    home.start();
    assert_eq!(ask_ok("q13").trim(), "after the restart");
    let requests = provider.requests();
    assert_eq!(requests.len(), WINDOW + BATCH + 3, "no second fold");
    let after = &requests[WINDOW + BATCH + 2];
    assert!(system_of(after).contains(SUMMARY), "{after}");
    assert_eq!(user_texts(after).first().map(String::as_str), Some("q4"));
    let out = home.ctl(&["memory", "show", "s1", "--json"]);
    let shown = json(&crate::support::text(&out.stdout));
    assert_eq!(shown[0]["message"]["text"], "q0", "{shown}");
    // Clearing the session forgets its summary too.
    assert!(home.ctl(&["memory", "clear", "s1"]).status.success());
    assert_eq!(ask_ok("fresh").trim(), "after the restart");
    let fresh = &provider.requests()[WINDOW + BATCH + 3];
    assert!(!system_of(fresh).contains(SUMMARY), "{fresh}");
    assert_eq!(user_texts(fresh), ["fresh"]);
}

/// The browser tools are offered to the agent when its token holds `browser.control` (any
/// scope: each call is still decided on its `HOST:PORT`) and not otherwise, as the provider
/// receives the request's tools. Nothing is browsed: no Chromium is started to offer them.
#[test]
fn the_agent_is_offered_the_browser_tools_only_when_its_token_holds_browser_control() {
    let provider = Provider::start(vec![text_answer("ok")]);
    let home = Home::with_config(
        &provider.config("[browser]\nenabled = true\nchromium = \"/usr/bin/true\"\n"),
    );
    fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\", \"browser.control\"]\n",
    )
    .expect("pack");
    home.start();
    let browser_tools = |request: &serde_json::Value| -> Vec<String> {
        offered_functions(request)
            .into_keys()
            .filter(|n| n.starts_with("browser"))
            .collect()
    };
    let (without, _) = issue(&home, &[ASK, "tool.invoke:echo"]);
    let (code, _, err) = ask(&home, &["hello", "--token", &without]);
    assert_eq!(code, 0, "{err}\n{}", home.log());
    let (with, _) = issue(&home, &[ASK, "browser.control:127.0.0.1:9"]);
    let (code, _, err) = ask(&home, &["hello", "--token", &with]);
    assert_eq!(code, 0, "{err}\n{}", home.log());
    let requests = provider.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(browser_tools(&requests[0]), Vec::<String>::new());
    let mut expected: Vec<String> = [
        "browser_click",
        "browser_close",
        "browser_extract",
        "browser_open",
        "browser_screenshot",
        "browser_type",
        "browser_wait",
    ]
    .map(String::from)
    .to_vec();
    expected.sort();
    assert_eq!(browser_tools(&requests[1]), expected);
    // Each is offered with its input's schema (`browser.open` needs its `url`).
    assert_eq!(
        offered_functions(&requests[1])["browser_open"]["parameters"]["required"],
        serde_json::json!(["url"]),
        "{}",
        requests[1]
    );
}

#[test]
fn tool_search_finds_the_browser_tools_exactly_when_the_browser_is_enabled() {
    for enabled in [false, true] {
        let home = Home::with_config(&format!(
            "[browser]\nenabled = {enabled}\nchromium = \"/usr/bin/true\"\n"
        ));
        home.start();
        let hits = crate::bridges::search(&home, &["screenshot of a page"]);
        let browser: Vec<String> = hits
            .iter()
            .filter_map(|h| h["name"].as_str().map(String::from))
            .filter(|n| n.starts_with("browser."))
            .collect();
        if enabled {
            assert!(
                browser.iter().any(|n| n == "browser.screenshot"),
                "{hits:?}"
            );
        } else {
            // The control: the same search without the browser finds none of its tools.
            assert_eq!(browser, Vec::<String>::new(), "{hits:?}");
        }
    }
}
