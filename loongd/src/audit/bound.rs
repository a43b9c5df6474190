//! Bounding a record's detail field by field, so that foreign text cannot push what a record
//! says about its actor out of the trail.
//!
//! A detail within [`MAX_DETAIL_BYTES`] is stored as it is. In a longer one, a string longer than [`MAX_FIELD_BYTES`] is replaced by a marker object
//! `{"truncated": true, "bytes": N, "sha256": H, "head": "first bytes…"}`, and a list longer
//! than [`MAX_LIST_ITEMS`] by `{"truncated": true, "items": N, "bytes": N, "sha256": H,
//! "head": [first items]}` (`bytes` and `sha256` over the list's compact JSON). The kernel
//! puts only strings where foreign text goes, so an object where a string or a list belongs
//! is always a marker. Identity fields ([`IDENTITY_KEYS`]: who acted, under which token and
//! capability, what was decided, which plugin, trust and signer) are kept whole; the kernel
//! bounds them at their source far below [`MAX_IDENTITY_BYTES`], and only a longer one (which
//! no source accepts) is cut like any other field. When the bounded detail is still above
//! [`MAX_DETAIL_BYTES`], the largest other fields lose their heads, largest first; as a last
//! resort the detail keeps only its top-level identity fields beside the whole detail's length
//! and digest: whole while they fit, the rest as markers without a head. Every marker describes
//! the caller's value, not what an earlier cut left of it.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::MAX_DETAIL_BYTES;

/// A string field longer than this is cut and marked.
pub const MAX_FIELD_BYTES: usize = 2048;
/// How much of a cut string the marker keeps.
pub const FIELD_HEAD_BYTES: usize = 512;
/// A list longer than this keeps its first items only, marked.
pub const MAX_LIST_ITEMS: usize = 64;
/// An identity field is kept whole up to this length.
pub const MAX_IDENTITY_BYTES: usize = 2048;
/// Detail keys that name who and what a record is about; never cut (up to
/// [`MAX_IDENTITY_BYTES`]).
pub const IDENTITY_KEYS: [&str; 12] = [
    "agent",
    "token",
    "capability",
    "allowed",
    "decision",
    "pack",
    "plugin",
    "plugin_id",
    "trust",
    "signer",
    "tool",
    "tier",
];

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn head(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn string_marker(s: &str, keep_head: bool) -> Value {
    let mut m = Map::new();
    m.insert("truncated".into(), Value::Bool(true));
    m.insert("bytes".into(), s.len().into());
    m.insert("sha256".into(), sha256_hex(s.as_bytes()).into());
    if keep_head {
        m.insert("head".into(), head(s, FIELD_HEAD_BYTES).into());
    }
    Value::Object(m)
}

fn list_marker(items: &[Value], kept: Option<Vec<Value>>) -> Value {
    let text = Value::Array(items.to_vec()).to_string();
    let mut m = Map::new();
    m.insert("truncated".into(), Value::Bool(true));
    m.insert("items".into(), items.len().into());
    m.insert("bytes".into(), text.len().into());
    m.insert("sha256".into(), sha256_hex(text.as_bytes()).into());
    if let Some(kept) = kept {
        m.insert("head".into(), Value::Array(kept));
    }
    Value::Object(m)
}

fn is_identity(key: &str, v: &Value) -> bool {
    IDENTITY_KEYS.contains(&key) && v.to_string().len() <= MAX_IDENTITY_BYTES
}

/// Cuts every over-long string and list in `v` (not identity fields).
fn cut_fields(v: &mut Value) {
    match v {
        Value::String(s) if s.len() > MAX_FIELD_BYTES => *v = string_marker(s, true),
        Value::Array(items) if items.len() > MAX_LIST_ITEMS => {
            let mut kept: Vec<Value> = items[..MAX_LIST_ITEMS].to_vec();
            kept.iter_mut().for_each(cut_fields);
            *v = list_marker(items, Some(kept));
        }
        Value::Array(items) => items.iter_mut().for_each(cut_fields),
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if !is_identity(k, child) {
                    cut_fields(child);
                }
            }
        }
        _ => {}
    }
}

/// JSON pointers to the strings and lists in `v` outside identity fields, with their sizes.
fn leaves(v: &Value, at: &str, out: &mut Vec<(String, usize)>) {
    match v {
        Value::String(_) | Value::Array(_) => out.push((at.to_string(), v.to_string().len())),
        Value::Object(_) if is_marker(v) => out.push((at.to_string(), v.to_string().len())),
        Value::Object(map) => {
            for (k, child) in map {
                if !is_identity(k, child) {
                    let key = k.replace('~', "~0").replace('/', "~1");
                    leaves(child, &format!("{at}/{key}"), out);
                }
            }
        }
        _ => {}
    }
}

fn is_marker(v: &Value) -> bool {
    v.get("truncated") == Some(&Value::Bool(true)) && v.get("sha256").is_some()
}

/// The marker without a head for whatever `v` is (a marker already, a string or a list).
fn headless(v: &Value) -> Value {
    match v {
        Value::String(s) => string_marker(s, false),
        Value::Array(items) => list_marker(items, None),
        Value::Object(m) => {
            let mut m = m.clone();
            m.remove("head");
            Value::Object(m)
        }
        other => other.clone(),
    }
}

/// `detail` as stored: its JSON text, at most [`MAX_DETAIL_BYTES`], with over-long fields
/// cut and marked and identity fields whole.
pub fn bound(detail: &Value) -> String {
    // The same compact text as `Display`, written straight into a buffer rather than through
    // a formatter (serialising a `Value` cannot fail: its keys are strings).
    let text = serde_json::to_string(detail).unwrap_or_else(|_| detail.to_string());
    if text.len() <= MAX_DETAIL_BYTES {
        return text;
    }
    let mut v = detail.clone();
    cut_fields(&mut v);
    let mut size = v.to_string().len();
    if size > MAX_DETAIL_BYTES {
        let mut found = Vec::new();
        leaves(&v, "", &mut found);
        // Markers (already cut strings and lists) are leaves too: their heads go first.
        found.sort_by_key(|(_, len)| std::cmp::Reverse(*len));
        for (at, len) in found {
            if size <= MAX_DETAIL_BYTES {
                break;
            }
            // The marker describes what the caller gave, not what the first pass left: a
            // list whose items were cut keeps the digest of its original items.
            let original = detail.pointer(&at);
            if let Some(slot) = v.pointer_mut(&at) {
                let m = headless(original.unwrap_or(slot));
                let mlen = m.to_string().len();
                if mlen < len {
                    *slot = m;
                    size = size - len + mlen;
                }
            }
        }
    }
    let bounded = v.to_string();
    if bounded.len() <= MAX_DETAIL_BYTES {
        return bounded;
    }
    // Only identity fields are left that large: keep those at the top level, whole while they
    // fit beside the whole detail's length and digest, then as headless markers (every
    // identity field may hold up to MAX_IDENTITY_BYTES, more than the bound together).
    last_resort(&v, &text)
}

/// Room the last resort keeps for its own `truncated`, `bytes` and `sha256` and the braces.
const LAST_RESORT_RESERVE: usize = 128;

fn last_resort(v: &Value, text: &str) -> String {
    let mut m = Map::new();
    let mut size = LAST_RESORT_RESERVE;
    if let Value::Object(map) = v {
        // In the order of IDENTITY_KEYS: who acted and what was decided first.
        for key in IDENTITY_KEYS {
            let Some(child) = map.get(key).filter(|c| is_identity(key, c)) else {
                continue;
            };
            let whole = child.to_string().len() + key.len() + 4;
            let kept = if size + whole <= MAX_DETAIL_BYTES {
                size += whole;
                child.clone()
            } else {
                let marker = match child {
                    Value::String(s) => string_marker(s, false),
                    other => string_marker(&other.to_string(), false),
                };
                let len = marker.to_string().len() + key.len() + 4;
                if size + len > MAX_DETAIL_BYTES {
                    continue;
                }
                size += len;
                marker
            };
            m.insert(key.to_string(), kept);
        }
    }
    m.insert("truncated".into(), Value::Bool(true));
    m.insert("bytes".into(), text.len().into());
    m.insert("sha256".into(), sha256_hex(text.as_bytes()).into());
    Value::Object(m).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn bounded(detail: &Value) -> Value {
        let text = bound(detail);
        assert!(text.len() <= MAX_DETAIL_BYTES, "{} bytes", text.len());
        serde_json::from_str(&text).expect("bounded detail is JSON")
    }

    /// The marker a cut string must carry.
    fn check_cut(marker: &Value, original: &str) {
        assert_eq!(marker["truncated"], true, "{marker}");
        assert_eq!(marker["bytes"], original.len(), "{marker}");
        assert_eq!(
            marker["sha256"],
            sha256_hex(original.as_bytes()),
            "{marker}"
        );
        let h = marker["head"].as_str().expect("head");
        assert!(original.starts_with(h) && h.len() <= FIELD_HEAD_BYTES);
    }

    #[test]
    fn a_small_detail_is_stored_as_it_is() {
        let d = json!({ "tool": "echo", "message": "short", "n": 3 });
        assert_eq!(bound(&d), d.to_string());
        // The text is `Display`'s compact JSON, escapes, numbers and nesting included.
        let d = json!({
            "s": "quote \" back \\ tab \t nul \u{0} é \u{1f600}", "f": 1.5, "neg": -7,
            "big": u64::MAX, "list": [null, true, [], {}], "nested": { "a": { "b": [1] } },
        });
        assert_eq!(bound(&d), d.to_string());
    }

    #[test]
    fn a_padded_shell_command_keeps_the_decision_identity() {
        // policy.decision of a denied shell.exec whose command is padded with spaces.
        let command = format!("rm -rf /{}", " ".repeat(17_000));
        let argv = vec!["/bin/sh".to_string(), "-c".into(), command.clone()];
        let d = json!({
            "capability": "process.exec", "target": command, "argv": argv, "token": "tok-1a2b",
            "pack": "ops", "agent": "bot", "allowed": false,
            "reason": "process.exec is not granted to token tok-1a2b",
        });
        let b = bounded(&d);
        for key in ["capability", "token", "pack", "agent", "allowed", "reason"] {
            assert_eq!(b[key], d[key], "{key} must survive: {b}");
        }
        check_cut(&b["target"], &command);
        check_cut(&b["argv"][2], &command);
        assert_eq!(b["argv"][0], "/bin/sh");
    }

    #[test]
    fn a_padded_sandbox_run_keeps_its_request_shape() {
        // sandbox.spawned of an operator's run with a padded argument.
        let arg = "x".repeat(20_000);
        let d = json!({
            "request": { "tier": "trusted", "program": "/bin/echo", "args": [arg.clone(), "two"] },
            "pid": 42, "degraded": [],
        });
        let b = bounded(&d);
        assert_eq!(b["request"]["tier"], "trusted");
        assert_eq!(b["request"]["program"], "/bin/echo");
        assert_eq!(b["pid"], 42);
        check_cut(&b["request"]["args"][0], &arg);
        assert_eq!(b["request"]["args"][1], "two");
    }

    #[test]
    fn many_long_tool_names_keep_the_plugin_identity() {
        // plugin.loaded of an MCP server listing 202 tools with 128-byte names.
        let tools: Vec<String> = (0..202).map(|i| format!("{i:0>128}")).collect();
        let d = json!({
            "plugin": "noisy", "version": "1.0.0", "bridge_kind": "mcp_stdio",
            "trust": "unverified", "signer": "publisher-a", "sha256": "ab".repeat(32),
            "tools": tools,
        });
        let b = bounded(&d);
        for key in [
            "plugin",
            "version",
            "bridge_kind",
            "trust",
            "signer",
            "sha256",
        ] {
            assert_eq!(b[key], d[key], "{key} must survive: {b}");
        }
        let list = &b["tools"];
        let text = Value::from(tools.clone()).to_string();
        assert_eq!(list["truncated"], true);
        assert_eq!(list["items"], 202);
        assert_eq!(list["bytes"], text.len());
        assert_eq!(list["sha256"], sha256_hex(text.as_bytes()));
        assert_eq!(list["head"].as_array().map(Vec::len), Some(MAX_LIST_ITEMS));
        assert_eq!(list["head"][0], tools[0].as_str());
    }

    #[test]
    fn a_long_tool_error_keeps_the_call_identity() {
        // tool.failed with a plugin's long error message.
        let message = "E".repeat(100_000);
        let d = json!({ "tool": "lines", "worker": "w-3", "wall_us": 10,
            "failure": "plugin_error", "message": message });
        let b = bounded(&d);
        assert_eq!(
            (&b["tool"], &b["worker"], &b["failure"]),
            (&d["tool"], &d["worker"], &d["failure"])
        );
        check_cut(&b["message"], &message);
    }

    #[test]
    fn many_cut_fields_lose_their_heads_before_an_identity_is_touched() {
        let mut d = Map::new();
        d.insert("agent".into(), "bot".into());
        d.insert("token".into(), "tok-9".into());
        for i in 0..60 {
            d.insert(format!("f{i}"), "y".repeat(5000).into());
        }
        let b = bounded(&Value::Object(d));
        assert_eq!((&b["agent"], &b["token"]), (&json!("bot"), &json!("tok-9")));
        assert_eq!(b["f0"]["bytes"], 5000);
        assert_eq!(b["f0"]["truncated"], true);
    }

    #[test]
    fn an_identity_past_its_bound_is_cut_like_any_field() {
        let agent = "a".repeat(MAX_DETAIL_BYTES + 1);
        let b = bounded(&json!({ "agent": agent, "allowed": true }));
        check_cut(&b["agent"], &agent);
        assert_eq!(b["allowed"], true);
    }

    #[test]
    fn a_list_whose_items_were_cut_is_marked_with_the_digest_of_its_original_items() {
        // 64 items (not too many) of 3,000 bytes: each item is cut first, then the list loses
        // its head; its marker must still describe the command line as it was given.
        let argv: Vec<String> = (0..MAX_LIST_ITEMS).map(|i| format!("{i:0>3000}")).collect();
        let b = bounded(&json!({ "capability": "process.exec", "argv": argv }));
        let text = Value::from(argv.clone()).to_string();
        assert_eq!(b["capability"], "process.exec");
        assert_eq!(b["argv"]["truncated"], true, "{b}");
        assert_eq!(b["argv"]["items"], MAX_LIST_ITEMS);
        assert_eq!(b["argv"]["bytes"], text.len());
        assert_eq!(b["argv"]["sha256"], sha256_hex(text.as_bytes()));
    }

    #[test]
    fn every_identity_field_at_its_bound_still_fits_the_last_resort() {
        // Each identity field just within MAX_IDENTITY_BYTES: together past the detail's
        // bound, so the last resort must mark some rather than keep them all.
        let mut d = Map::new();
        for key in IDENTITY_KEYS {
            d.insert(key.into(), "i".repeat(MAX_IDENTITY_BYTES - 2).into());
        }
        d.insert("message".into(), "m".repeat(100_000).into());
        let d = Value::Object(d);
        let b = bounded(&d);
        assert_eq!(b["truncated"], true, "{b}");
        assert_eq!(b["bytes"], d.to_string().len());
        // The first identity fields are whole, the rest marked by their length and digest.
        assert_eq!(b["agent"], d["agent"]);
        let last = IDENTITY_KEYS[IDENTITY_KEYS.len() - 1];
        let s = d[last].as_str().expect("string");
        assert_eq!(b[last]["bytes"], s.len(), "{b}");
        assert_eq!(b[last]["sha256"], sha256_hex(s.as_bytes()));
        assert!(b.get("message").is_none());
    }

    #[test]
    fn cuts_end_on_a_character_boundary() {
        // Three-byte characters: the head's byte bound falls inside one.
        let s = "€".repeat(MAX_DETAIL_BYTES);
        let b = bounded(&json!({ "message": s }));
        check_cut(&b["message"], &s);
    }
}
