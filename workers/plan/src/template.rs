//! `{{step}}` and `{{step#/pointer}}` placeholders, as upstream resolves them.
//!
//! A string that is exactly one placeholder becomes the value it names (of any type); a
//! placeholder inside a longer string is replaced by the value's text (a string as is,
//! anything else as JSON). A missing leading `/` in the pointer is added. Values are
//! inserted once and never scanned again, so a tool's answer that contains `{{…}}` stays
//! text: a placeholder cannot come from data. Resolution is bounded: the bytes it builds
//! are counted as it goes and it stops at [`MAX_VALUE_BYTES`](crate::limits::MAX_VALUE_BYTES)
//! before copying anything larger.

use std::io;

use serde_json::Value;

use crate::{error::TemplateProblem, limits::MAX_TEMPLATE_EXPR_BYTES};

const OPEN: &str = "{{";
const CLOSE: &str = "}}";

/// One placeholder: the step it reads and, when given, the pointer into its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ref<'a> {
    /// The placeholder as written, braces included.
    pub raw: &'a str,
    pub step: &'a str,
    /// Normalised to start with `/`.
    pub pointer: Option<String>,
}

/// A string with at least one placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed<'a> {
    /// The whole string is one placeholder.
    Whole(Ref<'a>),
    /// Text and placeholders, in order.
    Mixed(Vec<Piece<'a>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    Text(&'a str),
    Ref(Ref<'a>),
}

impl<'a> Parsed<'a> {
    /// The placeholders, in order.
    pub fn refs(&self) -> Vec<&Ref<'a>> {
        match self {
            Parsed::Whole(r) => vec![r],
            Parsed::Mixed(pieces) => pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Ref(r) => Some(r),
                    Piece::Text(_) => None,
                })
                .collect(),
        }
    }
}

/// Parses `raw`; `Ok(None)` when it holds no `{{`.
pub(crate) fn parse(raw: &str) -> Result<Option<Parsed<'_>>, (String, TemplateProblem)> {
    let Some(first) = raw.find(OPEN) else {
        return Ok(None);
    };
    let mut pieces = Vec::new();
    let mut cursor = 0;
    let mut start = first;
    loop {
        if start > cursor {
            pieces.push(Piece::Text(&raw[cursor..start]));
        }
        let body = start + OPEN.len();
        let Some(len) = raw[body..].find(CLOSE) else {
            return Err((clip(&raw[start..]), TemplateProblem::Unclosed));
        };
        let end = body + len + CLOSE.len();
        let whole = &raw[start..end];
        let r = parse_expr(whole, &raw[body..body + len]).map_err(|p| (clip(whole), p))?;
        pieces.push(Piece::Ref(r));
        cursor = end;
        match raw[cursor..].find(OPEN) {
            Some(next) => start = cursor + next,
            None => break,
        }
    }
    if cursor < raw.len() {
        pieces.push(Piece::Text(&raw[cursor..]));
    }
    if let [Piece::Ref(r)] = pieces.as_slice() {
        return Ok(Some(Parsed::Whole(r.clone())));
    }
    Ok(Some(Parsed::Mixed(pieces)))
}

fn parse_expr<'a>(raw: &'a str, expr: &'a str) -> Result<Ref<'a>, TemplateProblem> {
    if expr.len() > MAX_TEMPLATE_EXPR_BYTES {
        return Err(TemplateProblem::TooLong {
            max: MAX_TEMPLATE_EXPR_BYTES,
        });
    }
    let expr = expr.trim();
    let (step, pointer) = match expr.split_once('#') {
        Some((s, p)) => (s.trim(), Some(p.trim())),
        None => (expr, None),
    };
    if step.is_empty() {
        return Err(TemplateProblem::EmptyExpression);
    }
    let pointer = match pointer {
        None => None,
        Some("") => return Err(TemplateProblem::EmptyPointer),
        Some(p) => Some(normalise_pointer(p)),
    };
    Ok(Ref { raw, step, pointer })
}

/// Adds the leading `/` upstream adds.
pub(crate) fn normalise_pointer(p: &str) -> String {
    if p.is_empty() || p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

/// A placeholder as an error shows it (cut to a readable length).
fn clip(s: &str) -> String {
    const SHOWN: usize = 80;
    match s.char_indices().nth(SHOWN) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Why a resolution stopped.
#[derive(Debug)]
pub(crate) enum ResolveError {
    Template {
        template: String,
        problem: TemplateProblem,
    },
    TooLarge,
}

/// Resolves every placeholder in `value`, reading step outputs through `lookup`; the bytes
/// built are bounded by `budget`.
pub(crate) fn resolve<'v>(
    value: &Value,
    lookup: &dyn Fn(&str) -> Option<&'v Value>,
    budget: usize,
) -> Result<Value, ResolveError> {
    let mut left = budget;
    resolve_in(value, lookup, &mut left)
}

fn resolve_in<'v>(
    value: &Value,
    lookup: &dyn Fn(&str) -> Option<&'v Value>,
    left: &mut usize,
) -> Result<Value, ResolveError> {
    match value {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                spend(left, k.len() + 4)?;
                out.insert(k.clone(), resolve_in(v, lookup, left)?);
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => items
            .iter()
            .map(|v| {
                spend(left, 1)?;
                resolve_in(v, lookup, left)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::String(raw) => resolve_string(raw, lookup, left),
        Value::Null | Value::Bool(_) | Value::Number(_) => {
            spend(left, 8)?;
            Ok(value.clone())
        }
    }
}

fn resolve_string<'v>(
    raw: &str,
    lookup: &dyn Fn(&str) -> Option<&'v Value>,
    left: &mut usize,
) -> Result<Value, ResolveError> {
    let parsed = match parse(raw) {
        Ok(None) => {
            spend(left, raw.len() + 2)?;
            return Ok(Value::String(raw.to_string()));
        }
        Ok(Some(p)) => p,
        Err((template, problem)) => return Err(ResolveError::Template { template, problem }),
    };
    match parsed {
        Parsed::Whole(r) => {
            let v = target(&r, lookup)?;
            spend(left, json_size(v, *left).ok_or(ResolveError::TooLarge)?)?;
            Ok(v.clone())
        }
        Parsed::Mixed(pieces) => {
            let mut out = String::new();
            for piece in pieces {
                match piece {
                    Piece::Text(t) => {
                        spend(left, t.len())?;
                        out.push_str(t);
                    }
                    Piece::Ref(r) => match target(&r, lookup)? {
                        Value::String(s) => {
                            spend(left, s.len())?;
                            out.push_str(s);
                        }
                        other => {
                            let n = json_size(other, *left).ok_or(ResolveError::TooLarge)?;
                            spend(left, n)?;
                            out.push_str(&other.to_string());
                        }
                    },
                }
            }
            Ok(Value::String(out))
        }
    }
}

fn target<'v>(
    r: &Ref<'_>,
    lookup: &dyn Fn(&str) -> Option<&'v Value>,
) -> Result<&'v Value, ResolveError> {
    let fail = |problem| ResolveError::Template {
        template: clip(r.raw),
        problem,
    };
    let source = lookup(r.step).ok_or_else(|| {
        fail(TemplateProblem::UnknownStep {
            reference: r.step.to_string(),
        })
    })?;
    match &r.pointer {
        None => Ok(source),
        Some(p) => source.pointer(p).ok_or_else(|| {
            fail(TemplateProblem::PointerNotFound {
                reference: r.step.to_string(),
                pointer: p.clone(),
            })
        }),
    }
}

fn spend(left: &mut usize, n: usize) -> Result<(), ResolveError> {
    *left = left.checked_sub(n).ok_or(ResolveError::TooLarge)?;
    Ok(())
}

/// The bytes of `value` as compact JSON, or `None` when over `limit` (counting stops there).
pub(crate) fn json_size<T: serde::Serialize + ?Sized>(value: &T, limit: usize) -> Option<usize> {
    struct Counter {
        n: usize,
        limit: usize,
    }
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.n = self.n.saturating_add(buf.len());
            if self.n > self.limit {
                return Err(io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter { n: 0, limit };
    serde_json::to_writer(&mut c, value).ok()?;
    Some(c.n)
}
