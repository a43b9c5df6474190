//! The tools the agent offers a model, as the provider receives them: each with the JSON
//! schema of its input (a manifest's `metadata.input_schema_json`, an MCP server's
//! `tools/list` `inputSchema`, a built-in's fixed one), a hostile schema refused with its
//! plugin; and, past `[agent] max_offered_tools`, `tool_search` in their place.

use std::{collections::BTreeMap, fs};

use crate::{
    agent::{ask, text_answer, Provider},
    kernel_calls::{issue, json},
    supply_chain::{ctl_ok, view},
    support::Home,
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
