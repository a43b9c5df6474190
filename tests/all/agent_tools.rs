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
