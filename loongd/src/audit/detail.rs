//! A record's detail, made once where the record is made: either a JSON value bounded by the
//! writer (most records), or the stored text itself, already bounded ([`Detail::Text`], made
//! by [`object`] on the paths every call takes), which the writer stores and hashes as it is.
//!
//! [`object`] writes an object's fields straight into its text, in the order and with the
//! escapes a `serde_json::Value` of the same fields would have (keys in byte order, compact
//! JSON), so the stored bytes, and the chain hash over them, are those the value would give.
//! A text over [`MAX_DETAIL_BYTES`] is bounded by [`bound::bound`] over that value, exactly
//! as a value's detail is.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::{bound, MAX_DETAIL_BYTES};

/// What a record says beyond its kind, actor and correlation.
#[derive(Debug, Clone)]
pub enum Detail {
    /// A JSON value, bounded into its text by the writer.
    Json(Value),
    /// The stored text, bounded where it was made (only [`object`] makes one).
    Text(Bounded),
}

/// A detail's stored text, made only by [`object`]: JSON, at most [`MAX_DETAIL_BYTES`].
#[derive(Debug, Clone)]
pub struct Bounded(String);

impl Bounded {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Detail {
    /// The text stored and hashed: at most [`MAX_DETAIL_BYTES`], over-long fields cut and
    /// marked ([`bound`]).
    pub fn bounded(&self) -> Cow<'_, str> {
        match self {
            Detail::Json(v) => Cow::Owned(bound::bound(v)),
            Detail::Text(t) => Cow::Borrowed(&t.0),
        }
    }

    /// The detail's top-level object, to add fields to: a text is parsed back into its value
    /// first (and bounded again by the writer), so a field added to any record is kept, never
    /// dropped. `None` only for a detail that is not an object.
    pub fn object_mut(&mut self) -> Option<&mut Map<String, Value>> {
        if let Detail::Text(t) = self {
            let v = serde_json::from_str(&t.0).unwrap_or(Value::Null);
            *self = Detail::Json(v);
        }
        match self {
            Detail::Json(v) => v.as_object_mut(),
            Detail::Text(_) => None,
        }
    }

    /// The detail as a JSON value (parsed back from a text; for tests and rare readers).
    pub fn value(&self) -> Value {
        match self {
            Detail::Json(v) => v.clone(),
            Detail::Text(t) => serde_json::from_str(&t.0).unwrap_or(Value::Null),
        }
    }
}

impl From<Value> for Detail {
    fn from(v: Value) -> Detail {
        Detail::Json(v)
    }
}

/// One field's value in an [`object`].
#[derive(Debug, Clone, Copy)]
pub enum Field<'a> {
    Str(&'a str),
    /// A string, or `null`.
    OptStr(Option<&'a str>),
    U64(u64),
    /// A number, or `null`.
    OptU64(Option<u64>),
    I64(i64),
    Bool(bool),
    /// A list of strings, or `null`.
    Strs(Option<&'a [String]>),
    /// Any JSON value.
    Value(&'a Value),
    /// A nested object, its fields in any order (written in key order).
    Object(&'a [(&'a str, Field<'a>)]),
}

/// The object of `fields` (in any order; a key given twice keeps its last value, as a map
/// does), then `extra` (a field added to it: it replaces a field of the same key), as its
/// stored text, bounded as [`bound::bound`] bounds the same value.
pub fn object(fields: &[(&str, Field<'_>)], extra: Option<(&str, Field<'_>)>) -> Detail {
    let extra = extra.as_slice();
    let mut out = Vec::with_capacity(2 + estimate(fields) + estimate(extra));
    write_object(&mut out, &[fields, extra]);
    // The writer writes only UTF-8 (string slices, escapes, digits and punctuation).
    let text = String::from_utf8(out)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    if text.len() <= MAX_DETAIL_BYTES {
        return Detail::Text(Bounded(text));
    }
    let mut map = Map::new();
    for (k, f) in fields.iter().chain(extra) {
        map.insert((*k).to_string(), f.to_value());
    }
    Detail::Text(Bounded(bound::bound(&Value::Object(map))))
}

/// About how many bytes `fields` take as JSON (a capacity, not a bound).
fn estimate(fields: &[(&str, Field<'_>)]) -> usize {
    fields
        .iter()
        .map(|(k, f)| {
            k.len()
                + 4
                + match f {
                    Field::Str(s) | Field::OptStr(Some(s)) => s.len() + 2,
                    Field::OptStr(None)
                    | Field::Strs(None)
                    | Field::OptU64(None)
                    | Field::Bool(_) => 5,
                    Field::U64(_) | Field::OptU64(Some(_)) | Field::I64(_) => 20,
                    Field::Strs(Some(l)) => 2 + l.iter().map(|s| s.len() + 3).sum::<usize>(),
                    Field::Value(_) => 64,
                    Field::Object(inner) => 2 + estimate(inner),
                }
        })
        .sum()
}

/// Writes the object of the fields of `parts`, keys in byte order (a `BTreeMap`'s), each key
/// once with the last value given for it.
fn write_object(out: &mut Vec<u8>, parts: &[&[(&str, Field<'_>)]]) {
    out.push(b'{');
    let mut last: Option<&str> = None;
    loop {
        // The smallest key after the last written; of equal keys, the last given.
        let mut next: Option<(&str, &Field<'_>)> = None;
        for (k, f) in parts.iter().flat_map(|p| p.iter()) {
            if last.is_some_and(|l| *k <= l) {
                continue;
            }
            if next.is_none_or(|(n, _)| *k <= n) {
                next = Some((k, f));
            }
        }
        let Some((k, f)) = next else { break };
        if last.is_some() {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        f.write(out);
        last = Some(k);
    }
    out.push(b'}');
}

// Writing JSON into a `Vec` cannot fail: the writer is infallible and every serialised type
// here (strings, integers, `Value`, whose keys are strings) serialises without error, so the
// results below are dropped; a `Field` of another type would have to keep that true.
fn write_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's own string escaping, as a `Value::String` is written.
    let _ = serde_json::to_writer(&mut *out, s);
}

impl Field<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match *self {
            Field::Str(s) | Field::OptStr(Some(s)) => write_str(out, s),
            Field::OptStr(None) | Field::Strs(None) | Field::OptU64(None) => {
                out.extend_from_slice(b"null")
            }
            Field::U64(n) | Field::OptU64(Some(n)) => {
                let _ = serde_json::to_writer(&mut *out, &n);
            }
            Field::I64(n) => {
                let _ = serde_json::to_writer(&mut *out, &n);
            }
            Field::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            Field::Strs(Some(list)) => {
                out.push(b'[');
                for (i, s) in list.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_str(out, s);
                }
                out.push(b']');
            }
            Field::Value(v) => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
            Field::Object(inner) => write_object(out, &[inner]),
        }
    }

    /// The same field as a JSON value.
    fn to_value(self) -> Value {
        match self {
            Field::Str(s) | Field::OptStr(Some(s)) => Value::from(s),
            Field::OptStr(None) | Field::Strs(None) | Field::OptU64(None) => Value::Null,
            Field::U64(n) | Field::OptU64(Some(n)) => Value::from(n),
            Field::I64(n) => Value::from(n),
            Field::Bool(b) => Value::Bool(b),
            Field::Strs(Some(list)) => Value::from(list.to_vec()),
            Field::Value(v) => v.clone(),
            Field::Object(inner) => {
                let mut map = Map::new();
                for (k, f) in inner {
                    map.insert((*k).to_string(), f.to_value());
                }
                Value::Object(map)
            }
        }
    }
}

#[cfg(test)]
#[path = "detail_tests.rs"]
mod tests;
