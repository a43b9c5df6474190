//! `loong-compat`: the two chat wire formats most tools speak, on the gateway's chat turn.
//!
//! [`openai`] is `POST /v1/chat/completions` (OpenAI chat completions) and [`anthropic`] is
//! `POST /v1/messages` (Anthropic messages). Each parses a request body into a
//! [`ChatRequest`](loong_agent_wire::chat::ChatRequest) and renders the turn's
//! [`ChatEvent`](loong_agent_wire::chat::ChatEvent)s as that format's response: one JSON
//! body, or server-sent events as they arrive. Pure bytes in and out: no HTTP server, no
//! I/O; the gateway worker mounts them.
//!
//! Request bodies are hostile input: their size ([`MAX_BODY_BYTES`]) and nesting depth
//! ([`MAX_JSON_DEPTH`]) are checked before they are parsed, every field is checked for its
//! type, and a refusal is a [`CompatError`] naming the field, answered as a 400 (413 for
//! size) in the caller's format.

use serde::Serialize;
use thiserror::Error;

pub mod anthropic;
pub mod openai;

/// The largest request body parsed.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// The deepest nesting of arrays and objects in a request body (tool schemas included).
pub const MAX_JSON_DEPTH: usize = 64;

/// A request refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CompatError {
    #[error(
        "the request body is {bytes} bytes, above the limit of {limit}; send a shorter history"
    )]
    TooLarge { bytes: usize, limit: usize },
    #[error("the request body nests arrays and objects deeper than {limit}; flatten it")]
    TooDeep { limit: usize },
    #[error("the request body is not JSON: {0}")]
    NotJson(String),
    #[error("{field}: {message}")]
    Field { field: String, message: String },
    /// The request is outside the chat turn's bounds (the message names the field).
    #[error("{0}")]
    Bounds(#[from] loong_agent_wire::chat::ChatBoundsError),
}

impl CompatError {
    /// The HTTP status it is answered with.
    pub fn status(&self) -> u16 {
        match self {
            CompatError::TooLarge { .. } => 413,
            _ => 400,
        }
    }

    pub(crate) fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        CompatError::Field {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks `body`'s size and depth, then parses it as a JSON object.
pub(crate) fn parse_object(
    body: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, CompatError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(CompatError::TooLarge {
            bytes: body.len(),
            limit: MAX_BODY_BYTES,
        });
    }
    check_depth(body)?;
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(CompatError::NotJson("the body is not a JSON object".into())),
        Err(e) => Err(CompatError::NotJson(e.to_string())),
    }
}

/// Refuses nesting deeper than [`MAX_JSON_DEPTH`], counting brackets outside strings (so the
/// parser never recurses that far on hostile input).
fn check_depth(body: &[u8]) -> Result<(), CompatError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(CompatError::TooDeep {
                        limit: MAX_JSON_DEPTH,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A field's reader: typed access that names the field in its error.
pub(crate) struct Fields<'a> {
    pub(crate) path: String,
    pub(crate) map: &'a serde_json::Map<String, serde_json::Value>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(
        path: impl Into<String>,
        map: &'a serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        Self {
            path: path.into(),
            map,
        }
    }

    pub(crate) fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The field, `None` when absent or null.
    pub(crate) fn get(&self, key: &str) -> Option<&'a serde_json::Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn str(&self, key: &str) -> Result<Option<&'a str>, CompatError> {
        match self.get(key) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(CompatError::field(self.name(key), "must be a string")),
        }
    }

    pub(crate) fn required_str(&self, key: &str) -> Result<&'a str, CompatError> {
        self.str(key)?
            .ok_or_else(|| CompatError::field(self.name(key), "is required"))
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, CompatError> {
        match self.get(key) {
            None => Ok(None),
            Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(CompatError::field(self.name(key), "must be true or false")),
        }
    }

    pub(crate) fn u32(&self, key: &str) -> Result<Option<u32>, CompatError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .map(Some)
                .ok_or_else(|| {
                    CompatError::field(self.name(key), "must be a positive integer below 2^32")
                }),
        }
    }

    pub(crate) fn array(
        &self,
        key: &str,
    ) -> Result<Option<&'a Vec<serde_json::Value>>, CompatError> {
        match self.get(key) {
            None => Ok(None),
            Some(serde_json::Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(CompatError::field(self.name(key), "must be an array")),
        }
    }

    pub(crate) fn object(&self, key: &str) -> Result<Option<Fields<'a>>, CompatError> {
        match self.get(key) {
            None => Ok(None),
            Some(serde_json::Value::Object(m)) => Ok(Some(Fields::new(self.name(key), m))),
            Some(_) => Err(CompatError::field(self.name(key), "must be an object")),
        }
    }
}

/// `value` (at `path`) as an object's fields.
pub(crate) fn object_at<'a>(
    path: String,
    value: &'a serde_json::Value,
) -> Result<Fields<'a>, CompatError> {
    match value {
        serde_json::Value::Object(m) => Ok(Fields::new(path, m)),
        _ => Err(CompatError::field(path, "must be an object")),
    }
}

/// Checks the request against the chat turn's own bounds.
pub(crate) fn bounded(
    req: loong_agent_wire::chat::ChatRequest,
) -> Result<loong_agent_wire::chat::ChatRequest, CompatError> {
    req.check_bounds()?;
    Ok(req)
}

/// A fresh id for a response: `prefix` then the time and a counter, unique in this process.
pub(crate) fn fresh_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}{nanos:x}{n:x}")
}

/// The Unix time, in seconds.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `value` as JSON bytes (the types rendered here always encode).
pub(crate) fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<Model<'a>>,
    has_more: bool,
    first_id: Option<&'a str>,
    last_id: Option<&'a str>,
}

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    display_name: &'a str,
    created_at: &'static str,
}

/// The body of `GET /v1/models`, one shape both SDKs read: OpenAI's list (`object`, and per
/// model `id`, `object`, `created`, `owned_by`) with Anthropic's fields beside it
/// (`has_more`, `first_id`, `last_id`, and per model `type`, `display_name`, `created_at`);
/// each SDK ignores the other's.
pub fn models_body(names: &[String]) -> Vec<u8> {
    json(&ModelList {
        object: "list",
        data: names
            .iter()
            .map(|id| Model {
                id,
                object: "model",
                created: 0,
                owned_by: "loong",
                kind: "model",
                display_name: id,
                created_at: "1970-01-01T00:00:00Z",
            })
            .collect(),
        has_more: false,
        first_id: names.first().map(String::as_str),
        last_id: names.last().map(String::as_str),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_too_large_or_too_deep_is_refused_before_it_is_parsed() {
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        let refused = parse_object(&big).map(|_| ()).expect_err("too large");
        assert_eq!(refused.status(), 413);
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH + 1),
            "]".repeat(MAX_JSON_DEPTH + 1)
        );
        let body = format!("{{\"a\":{deep}}}");
        assert_eq!(
            parse_object(body.as_bytes()).map(|_| ()),
            Err(CompatError::TooDeep {
                limit: MAX_JSON_DEPTH
            })
        );
        // Brackets inside strings do not count; the depth limit itself is accepted.
        let quoted = format!("{{\"a\":\"{}\"}}", "[".repeat(1000));
        assert!(parse_object(quoted.as_bytes()).is_ok());
        let at_limit = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_JSON_DEPTH - 1),
            "]".repeat(MAX_JSON_DEPTH - 1)
        );
        assert!(parse_object(at_limit.as_bytes()).is_ok());
        assert!(matches!(parse_object(b"[1]"), Err(CompatError::NotJson(_))));
    }

    /// Every cut of a valid body, and every byte flipped, is parsed or refused, never a
    /// panic; the whole body parses (the positive control).
    #[test]
    fn a_cut_or_mangled_body_is_refused_without_a_panic() {
        let openai = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c","content":"r"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"stream":true}"#;
        let anthropic = br#"{"model":"m","max_tokens":5,"system":[{"type":"text","text":"s"}],"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"r"}]}]}],"tools":[{"name":"f","input_schema":{"type":"object"}}]}"#;
        assert!(openai::parse_request(openai).is_ok());
        assert!(anthropic::parse_request(anthropic).is_ok());
        for body in [&openai[..], &anthropic[..]] {
            for cut in 0..body.len() {
                let _ = openai::parse_request(&body[..cut]);
                let _ = anthropic::parse_request(&body[..cut]);
            }
            for at in 0..body.len() {
                for b in [b'[', b'{', b'"', b'0', b'\\', 0xff] {
                    let mut mangled = body.to_vec();
                    mangled[at] = b;
                    let _ = openai::parse_request(&mangled);
                    let _ = anthropic::parse_request(&mangled);
                }
            }
        }
    }

    #[test]
    fn the_model_list_has_both_formats_fields() {
        let body: serde_json::Value =
            serde_json::from_slice(&models_body(&["loong".into()])).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"object": "list", "data": [{
                "id": "loong", "object": "model", "created": 0, "owned_by": "loong",
                "type": "model", "display_name": "loong", "created_at": "1970-01-01T00:00:00Z"
            }], "has_more": false, "first_id": "loong", "last_id": "loong"})
        );
    }
}
