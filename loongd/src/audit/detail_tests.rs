//! Tests of a detail written once: its text against the JSON value's, byte for byte, bounds included.

use serde_json::{json, Value};

use super::*;
use crate::audit::bound::{FIELD_HEAD_BYTES, MAX_FIELD_BYTES, MAX_LIST_ITEMS};

/// The text of a detail built by [`object`].
fn text(d: &Detail) -> &str {
    match d {
        Detail::Text(t) => t.as_str(),
        Detail::Json(v) => panic!("object made a value, not a text: {v}"),
    }
}

/// `object(fields, extra)` stores exactly what the value's detail stores.
fn same(fields: &[(&str, Field<'_>)], extra: Option<(&str, Field<'_>)>, value: &Value) {
    let made = object(fields, extra);
    assert_eq!(text(&made), bound::bound(value), "fields {fields:?}");
    assert!(text(&made).len() <= MAX_DETAIL_BYTES);
    assert_eq!(made.bounded(), Detail::Json(value.clone()).bounded());
}

const HOSTILE: &str =
    "quote \" back \\ slash / tab \t nl \n cr \r nul \u{0} bell \u{7} del \u{7f} \
     é € \u{2028}\u{2029} \u{1f600} </script> {\"k\":1}";

#[test]
fn a_detail_written_once_is_the_text_of_the_same_value() {
    let argv = vec!["/bin/sh".to_string(), "-c".into(), HOSTILE.into()];
    let empty: Vec<String> = Vec::new();
    let asked = json!({ "tier": "balanced", "args": [HOSTILE, 1.5, -3, null, {"b": [true]}] });
    let nested = [
        ("root", Field::Str("conn-1/req-2")),
        ("parent", Field::OptStr(Some("conn-1/req-2"))),
        ("depth", Field::U64(1)),
    ];
    // Keys given out of order (written in byte order: upper case, digits, `_` and
    // non-ASCII keys included), every kind of field, strings with every escape.
    same(
        &[
            ("target", Field::Str(HOSTILE)),
            ("capability", Field::Str("process.exec")),
            ("argv", Field::Strs(Some(&argv))),
            ("script", Field::OptStr(None)),
            ("Zed", Field::U64(u64::MAX)),
            ("n_neg", Field::I64(i64::MIN)),
            ("fuel", Field::OptU64(None)),
            ("fuel2", Field::OptU64(Some(7))),
            ("allowed", Field::Bool(false)),
            ("ok", Field::Bool(true)),
            ("none", Field::Strs(None)),
            ("empty", Field::Strs(Some(&empty))),
            ("request", Field::Value(&asked)),
            ("é", Field::Str("")),
            ("10", Field::U64(0)),
            ("a_b", Field::Object(&nested)),
            (HOSTILE, Field::Str("a key with escapes")),
        ],
        None,
        &json!({
            "target": HOSTILE, "capability": "process.exec", "argv": argv, "script": null,
            "Zed": u64::MAX, "n_neg": i64::MIN, "fuel": null, "fuel2": 7, "allowed": false,
            "ok": true, "none": null, "empty": [], "request": asked, "é": "", "10": 0,
            "a_b": { "root": "conn-1/req-2", "parent": "conn-1/req-2", "depth": 1 },
            HOSTILE: "a key with escapes",
        }),
    );
    same(&[], None, &json!({}));
    same(&[], Some(("chain", Field::U64(1))), &json!({ "chain": 1 }));
}

#[test]
fn a_key_given_again_keeps_its_last_value_as_a_map_does() {
    let mut v = json!({ "tool": "a", "chain": "mine" });
    v["tool"] = "b".into();
    v["chain"] = json!({ "depth": 2 });
    let inner = [("depth", Field::U64(2))];
    same(
        &[
            ("tool", Field::Str("a")),
            ("chain", Field::Str("mine")),
            ("tool", Field::Str("b")),
        ],
        Some(("chain", Field::Object(&inner))),
        &v,
    );
}

// The cases of `bound`'s own tests, made by `object`: a detail over the limit is bounded
// exactly as the same value is.

#[test]
fn a_padded_shell_command_is_bounded_as_its_value_is() {
    let command = format!("rm -rf /{}", " ".repeat(17_000));
    let argv = vec!["/bin/sh".to_string(), "-c".into(), command.clone()];
    let fields = [
        ("capability", Field::Str("process.exec")),
        ("target", Field::OptStr(Some(&command))),
        ("argv", Field::Strs(Some(&argv))),
        ("script", Field::OptStr(None)),
        ("token", Field::OptStr(Some("tok-1a2b"))),
        ("pack", Field::Str("ops")),
        ("agent", Field::OptStr(Some("bot"))),
        ("allowed", Field::Bool(false)),
        (
            "reason",
            Field::OptStr(Some("process.exec is not granted to token tok-1a2b")),
        ),
    ];
    let value = json!({
        "capability": "process.exec", "target": command, "argv": argv, "script": null,
        "token": "tok-1a2b", "pack": "ops", "agent": "bot", "allowed": false,
        "reason": "process.exec is not granted to token tok-1a2b",
    });
    same(&fields, None, &value);
    // The cut is there: the target is a marker keeping its head and the whole's digest.
    let b: Value = serde_json::from_str(text(&object(&fields, None))).expect("JSON");
    assert_eq!(b["target"]["truncated"], true);
    assert_eq!(b["target"]["bytes"], command.len());
    assert_eq!(
        b["target"]["head"].as_str().map(str::len),
        Some(FIELD_HEAD_BYTES)
    );
    assert_eq!(b["token"], "tok-1a2b");
    // Under the limit, the same fields are stored whole.
    let short = [("target", Field::Str("rm -rf /")), fields[2]];
    let whole = object(&short, None);
    assert!(text(&whole).contains("\"target\":\"rm -rf /\""));
}

#[test]
fn a_padded_sandbox_request_is_bounded_as_its_value_is() {
    let arg = "x".repeat(20_000);
    let asked = json!({ "tier": "trusted", "program": "/bin/echo", "args": [arg, "two"] });
    let degraded: Vec<String> = Vec::new();
    same(
        &[
            ("request", Field::Value(&asked)),
            ("pid", Field::U64(42)),
            ("degraded", Field::Strs(Some(&degraded))),
        ],
        None,
        &json!({ "request": asked, "pid": 42, "degraded": [] }),
    );
}

#[test]
fn many_long_tool_names_are_bounded_as_their_value_is() {
    let tools: Vec<String> = (0..202).map(|i| format!("{i:0>128}")).collect();
    let sha = "ab".repeat(32);
    let fields = [
        ("plugin", Field::Str("noisy")),
        ("version", Field::Str("1.0.0")),
        ("trust", Field::Str("unverified")),
        ("sha256", Field::OptStr(Some(&sha))),
        ("tools", Field::Strs(Some(&tools))),
    ];
    same(
        &fields,
        None,
        &json!({ "plugin": "noisy", "version": "1.0.0", "trust": "unverified",
            "sha256": sha, "tools": tools }),
    );
    let b: Value = serde_json::from_str(text(&object(&fields, None))).expect("JSON");
    assert_eq!(
        b["tools"]["head"].as_array().map(Vec::len),
        Some(MAX_LIST_ITEMS)
    );
}

#[test]
fn a_long_message_and_many_long_fields_are_bounded_as_their_value_is() {
    let message = "E".repeat(100_000);
    same(
        &[
            ("tool", Field::Str("lines")),
            ("wall_us", Field::U64(10)),
            ("message", Field::Str(&message)),
        ],
        None,
        &json!({ "tool": "lines", "wall_us": 10, "message": message }),
    );
    let long = "y".repeat(5000);
    let keys: Vec<String> = (0..60).map(|i| format!("f{i}")).collect();
    let mut fields = vec![("agent", Field::Str("bot")), ("token", Field::Str("tok-9"))];
    let mut value = json!({ "agent": "bot", "token": "tok-9" });
    for k in &keys {
        fields.push((k, Field::Str(&long)));
        value[k] = long.as_str().into();
    }
    same(&fields, None, &value);
    assert!(long.len() > MAX_FIELD_BYTES);
}

#[test]
fn an_identity_past_its_bound_and_a_cut_inside_a_character_are_bounded_as_their_value_is() {
    let agent = "a".repeat(MAX_DETAIL_BYTES + 1);
    same(
        &[
            ("agent", Field::Str(&agent)),
            ("allowed", Field::Bool(true)),
        ],
        None,
        &json!({ "agent": agent, "allowed": true }),
    );
    let s = "€".repeat(MAX_DETAIL_BYTES);
    same(
        &[("message", Field::Str(&s))],
        Some(("chain", Field::U64(3))),
        &json!({ "message": s, "chain": 3 }),
    );
    // Only identity fields that large: the last resort keeps them beside the digest.
    let big = "t".repeat(MAX_DETAIL_BYTES / 2);
    same(
        &[("tool", Field::Str(&big)), ("plugin", Field::Str(&big))],
        None,
        &json!({ "tool": big, "plugin": big }),
    );
}

/// Fields added to a record whose detail was written once as its text are kept: the text is
/// made a value again (before, such fields were dropped without a word).
#[test]
fn fields_added_to_a_text_detail_are_kept() {
    let mut d = object(
        &[("pid", Field::U64(7)), ("tool", Field::Str("echo"))],
        None,
    );
    let more = d.object_mut().expect("an object");
    more.insert("code".into(), Value::from(0));
    assert_eq!(d.value(), json!({ "pid": 7, "tool": "echo", "code": 0 }));
    assert_eq!(
        d.bounded(),
        json!({ "code": 0, "pid": 7, "tool": "echo" }).to_string()
    );
}
