//! Walking a TOML document with spans, collecting every problem with its line.

use std::ops::Range;

use toml_edit::{ImDocument, TableLike};

use crate::Problem;

pub(crate) struct Ctx<'a> {
    pub(crate) text: &'a str,
    pub(crate) file: &'a str,
    pub(crate) problems: Vec<Problem>,
}

impl Ctx<'_> {
    pub(crate) fn line(&self, span: Option<Range<usize>>) -> usize {
        span.map(|s| {
            self.text[..s.start.min(self.text.len())]
                .matches('\n')
                .count()
                + 1
        })
        .unwrap_or(1)
    }

    pub(crate) fn add(
        &mut self,
        span: Option<Range<usize>>,
        field: &str,
        message: impl Into<String>,
    ) {
        let line = self.line(span);
        self.problems.push(Problem {
            file: self.file.to_string(),
            line,
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// Flags keys of `t` outside `known`.
    pub(crate) fn known_keys(&mut self, t: &dyn TableLike, at: &str, known: &[&str]) {
        for (k, _) in t.iter() {
            if !known.contains(&k) {
                let span = t.get_key_value(k).and_then(|(key, _)| key.span());
                let field = if at.is_empty() {
                    k.to_string()
                } else {
                    format!("{at}.{k}")
                };
                self.add(
                    span,
                    &field,
                    format!("unknown key; expected one of: {}", known.join(", ")),
                );
            }
        }
    }

    pub(crate) fn table<'t>(
        &mut self,
        t: &'t dyn TableLike,
        key: &str,
        at: &str,
    ) -> Option<&'t dyn TableLike> {
        let item = t.get(key)?;
        match item.as_table_like() {
            Some(tt) => Some(tt),
            None => {
                self.add(item.span(), &join(at, key), "expected a table");
                None
            }
        }
    }

    pub(crate) fn bool(&mut self, t: &dyn TableLike, key: &str, at: &str, default: bool) -> bool {
        match t.get(key) {
            None => default,
            Some(i) => i.as_bool().unwrap_or_else(|| {
                self.add(i.span(), &join(at, key), "expected true or false");
                default
            }),
        }
    }

    pub(crate) fn uint(&mut self, t: &dyn TableLike, key: &str, at: &str) -> Option<u64> {
        let i = t.get(key)?;
        match i.as_integer() {
            Some(v) if v >= 0 => Some(v as u64),
            Some(v) => {
                self.add(
                    i.span(),
                    &join(at, key),
                    format!("{v} is negative; expected a count of 0 or more"),
                );
                None
            }
            None => {
                self.add(i.span(), &join(at, key), "expected an integer");
                None
            }
        }
    }

    pub(crate) fn string<'t>(
        &mut self,
        t: &'t dyn TableLike,
        key: &str,
        at: &str,
        span: Option<Range<usize>>,
    ) -> Option<&'t str> {
        match t.get(key) {
            None => {
                self.add(span, &join(at, key), "missing");
                None
            }
            Some(i) => match i.as_str() {
                Some(s) => Some(s),
                None => {
                    self.add(i.span(), &join(at, key), "expected a string");
                    None
                }
            },
        }
    }
}

pub(crate) fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// Parses the context's text, recording a syntax error as its one problem.
/// Parses `text` (named `file` in problems) and checks its top-level keys against `known`.
/// A document that is not TOML at all gives `Err` with its one problem; anything else is
/// left for the caller to walk, collecting problems in the returned context.
pub(crate) fn open<'a>(
    text: &'a str,
    file: &'a str,
    known: &[&str],
) -> Result<(Ctx<'a>, ImDocument<&'a str>), Vec<Problem>> {
    let mut c = Ctx {
        text,
        file,
        problems: Vec::new(),
    };
    match ImDocument::parse(text) {
        Ok(doc) => {
            c.known_keys(doc.as_table(), "", known);
            Ok((c, doc))
        }
        Err(e) => {
            c.add(e.span(), "", e.message().trim().to_string());
            Err(c.problems)
        }
    }
}
