//! A tool's input schema as it crosses a socket: the JSON schema of the tool's arguments,
//! from a plugin manifest (`metadata.input_schema_json`), an MCP server's `tools/list`
//! (`inputSchema`) or a built-in's fixed one, bounded and checked before anyone keeps it.
//!
//! A schema is only a description for the model and for MCP clients: no decision reads it
//! (each call is still decided on its tool and target), so the check is about size and
//! shape, not about meaning. Accepted: a JSON object whose `type` is `"object"` (a tool's
//! arguments are one object), at most [`MAX_INPUT_SCHEMA_BYTES`] as compact JSON and nested
//! at most [`MAX_INPUT_SCHEMA_DEPTH`] deep. It travels as compact JSON text (postcard carries
//! no free-form JSON values).

use serde_json::Value;

/// The largest input schema one tool may have, as compact JSON (bytes).
pub const MAX_INPUT_SCHEMA_BYTES: usize = 8 << 10;
/// The deepest nesting of objects and arrays an input schema may have.
pub const MAX_INPUT_SCHEMA_DEPTH: usize = 16;
/// The most bytes of input schemas one program's tool list may carry in all (so a list of
/// [`crate::message::worker::MAX_TOOLS`] tools stays well inside one frame).
pub const MAX_INPUT_SCHEMAS_TOTAL_BYTES: usize = 256 << 10;

/// Why an input schema was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("the input schema is not JSON ({0}); give a JSON schema object")]
    NotJson(String),
    #[error("the input schema is {len} bytes, above the {max}-byte limit; give a smaller schema")]
    TooLarge { len: usize, max: usize },
    #[error("the input schema nests deeper than {max} levels; give a flatter schema")]
    TooDeep { max: usize },
    #[error("the input schema must be a JSON object with \"type\": \"object\" (a tool takes one object of arguments)")]
    NotObject,
}

/// Checks `schema` and gives its compact JSON text.
pub fn check_input_schema(schema: &Value) -> Result<String, SchemaError> {
    if depth(schema) > MAX_INPUT_SCHEMA_DEPTH {
        return Err(SchemaError::TooDeep {
            max: MAX_INPUT_SCHEMA_DEPTH,
        });
    }
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err(SchemaError::NotObject);
    }
    let text = schema.to_string();
    if text.len() > MAX_INPUT_SCHEMA_BYTES {
        return Err(SchemaError::TooLarge {
            len: text.len(),
            max: MAX_INPUT_SCHEMA_BYTES,
        });
    }
    Ok(text)
}

/// Parses and checks a schema given as JSON text (a manifest's value, or one a worker sent);
/// the text's length is checked before it is parsed.
pub fn parse_input_schema(text: &str) -> Result<Value, SchemaError> {
    // Whitespace may make a valid schema's text longer than its compact form, but not by
    // more than a factor the bound on the source (a manifest, a frame) already holds.
    if text.len() > 4 * MAX_INPUT_SCHEMA_BYTES {
        return Err(SchemaError::TooLarge {
            len: text.len(),
            max: MAX_INPUT_SCHEMA_BYTES,
        });
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| SchemaError::NotJson(e.to_string()))?;
    check_input_schema(&value)?;
    Ok(value)
}

/// How deep `v` nests (a scalar is 0), without recursion: a hostile schema cannot exhaust
/// the stack of whoever checks it.
fn depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(d + 1);
        if deepest > MAX_INPUT_SCHEMA_DEPTH {
            return deepest;
        }
        stack.extend(children.map(|c| (c, d + 1)));
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(schema: Value, expect: Result<(), SchemaError>) {
        assert_eq!(check_input_schema(&schema).map(|_| ()), expect, "{schema}");
    }

    #[test]
    fn an_object_schema_within_the_bounds_is_kept_and_anything_else_refused() {
        check(
            json!({"type": "object", "properties": {"path": {"type": "string"}}}),
            Ok(()),
        );
        check(json!({"type": "object"}), Ok(()));
        check(json!({"type": "string"}), Err(SchemaError::NotObject));
        check(json!({"properties": {}}), Err(SchemaError::NotObject));
        check(json!([{"type": "object"}]), Err(SchemaError::NotObject));
        check(json!("object"), Err(SchemaError::NotObject));
        let big = "x".repeat(MAX_INPUT_SCHEMA_BYTES);
        assert!(matches!(
            check_input_schema(&json!({"type": "object", "description": big})),
            Err(SchemaError::TooLarge { .. })
        ));
        let mut deep = json!({"type": "string"});
        for _ in 0..MAX_INPUT_SCHEMA_DEPTH {
            deep = json!({"type": "object", "properties": {"a": deep}});
        }
        check(
            deep,
            Err(SchemaError::TooDeep {
                max: MAX_INPUT_SCHEMA_DEPTH,
            }),
        );
        let mut shallow = json!({"type": "string"});
        for _ in 0..(MAX_INPUT_SCHEMA_DEPTH / 2 - 1) {
            shallow = json!({"type": "object", "properties": {"a": shallow}});
        }
        check(shallow, Ok(()));
    }

    #[test]
    fn schema_text_is_bounded_before_it_is_parsed() {
        assert!(matches!(
            parse_input_schema("not json"),
            Err(SchemaError::NotJson(_))
        ));
        let huge = format!(
            "{{\"type\": \"object\"{}}}",
            " ".repeat(4 * MAX_INPUT_SCHEMA_BYTES)
        );
        assert!(matches!(
            parse_input_schema(&huge),
            Err(SchemaError::TooLarge { .. })
        ));
        assert_eq!(
            parse_input_schema(r#" {"type": "object"} "#),
            Ok(json!({"type": "object"}))
        );
    }
}
