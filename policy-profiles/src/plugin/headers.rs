//! An `http_json` connector's request headers (`metadata.headers_json`) and the secrets they
//! name: the header grammar checked at install and check, the `${secret:NAME}` references,
//! and the substitution loongd makes when it hands a call to the worker.
//!
//! A header is refused when its name is not an HTTP token, when the worker writes it itself
//! or it steers the connection (`Host`, `Content-Length`, `Transfer-Encoding`, `Connection`,
//! ...), or when its value holds a control character (CR and LF above all: no header may
//! smuggle another, or a second request). A secret's value obeys the same value rule.

use std::collections::BTreeMap;

/// Why a header (or a secret value) is refused; the message names the header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HeaderError(pub String);

impl From<String> for HeaderError {
    fn from(s: String) -> Self {
        HeaderError(s)
    }
}

impl From<&str> for HeaderError {
    fn from(s: &str) -> Self {
        HeaderError(s.to_string())
    }
}

/// Most headers one connector declares.
pub const MAX_HEADERS: usize = 32;
/// Longest header name.
pub const MAX_HEADER_NAME_BYTES: usize = 128;
/// Longest header value as written in the manifest (before substitution).
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;
/// Longest secret name.
pub const MAX_SECRET_NAME_BYTES: usize = 64;
/// Largest secret value.
pub const MAX_SECRET_VALUE_BYTES: usize = 8192;

/// Headers the worker writes itself, or that steer the connection or its framing.
const RESERVED: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "user-agent",
    "accept",
];

const OPEN: &str = "${secret:";

/// Whether `name` is a secret name: `[A-Za-z0-9_.-]{1,64}`.
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SECRET_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Checks a secret's value: within [`MAX_SECRET_VALUE_BYTES`], not empty, and fit for a
/// header value (no control character but tab).
pub fn check_secret_value(value: &str) -> Result<(), HeaderError> {
    if value.is_empty() {
        return Err("the value is empty".into());
    }
    if value.len() > MAX_SECRET_VALUE_BYTES {
        return Err(format!(
            "the value is {} bytes, over the {MAX_SECRET_VALUE_BYTES}-byte limit",
            value.len()
        )
        .into());
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(
            "the value holds a control character (CR, LF, NUL, ...), which no header value may"
                .into(),
        );
    }
    Ok(())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses `metadata.headers_json` (a JSON object of header names to string values) and
/// checks every header; an error names the header that failed.
pub fn parse_headers_json(text: &str) -> Result<Vec<(String, String)>, HeaderError> {
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(text).map_err(|e| {
        format!("expected a JSON object of header names to string values, such as {{\"Authorization\": \"Bearer ${{secret:NAME}}\"}}: {e}")
    })?;
    if map.len() > MAX_HEADERS {
        return Err(format!("{} headers, above the limit of {MAX_HEADERS}", map.len()).into());
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        let serde_json::Value::String(value) = value else {
            return Err(format!("header {name:?}: the value must be a string").into());
        };
        check_header(&name, &value)?;
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(format!("header {name:?} is given twice; keep one").into());
        }
        out.push((name, value));
    }
    Ok(out)
}

/// Checks one header as written in a manifest.
pub fn check_header(name: &str, value: &str) -> Result<(), HeaderError> {
    if name.is_empty() || name.len() > MAX_HEADER_NAME_BYTES || !name.bytes().all(is_tchar) {
        return Err(format!(
            "header {name:?}: the name is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~, at most {MAX_HEADER_NAME_BYTES} bytes)"
        ).into());
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str()) || lower.starts_with("proxy-") {
        return Err(format!(
            "header {name:?} is written by the worker or steers the connection; remove it"
        )
        .into());
    }
    if value.len() > MAX_HEADER_VALUE_BYTES {
        return Err(
            format!("header {name:?}: the value is over {MAX_HEADER_VALUE_BYTES} bytes").into(),
        );
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "header {name:?}: the value holds a control character (CR, LF, NUL, ...)"
        )
        .into());
    }
    secret_names(value).map_err(|e| format!("header {name:?}: {e}"))?;
    Ok(())
}

/// The secrets a header value names, in order; an error when a `${` does not open a
/// well-formed `${secret:NAME}`.
pub fn secret_names(value: &str) -> Result<Vec<&str>, HeaderError> {
    let mut names = Vec::new();
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        let after = &rest[i..];
        let Some(body) = after.strip_prefix(OPEN) else {
            return Err(format!(
                "{:?} is not a secret reference: write ${{secret:NAME}}",
                &after[..after.len().min(16)]
            )
            .into());
        };
        let end = body
            .find('}')
            .ok_or_else(|| "a ${secret: reference is not closed with }".to_string())?;
        let name = &body[..end];
        if !valid_secret_name(name) {
            return Err(format!(
                "secret name {name:?} is not [A-Za-z0-9_.-]{{1,{MAX_SECRET_NAME_BYTES}}}"
            )
            .into());
        }
        names.push(name);
        rest = &body[end + 1..];
    }
    Ok(names)
}

/// A secret a header names that is not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the secret {0:?} is not set; set it with `loongctl secrets set {0}`")]
pub struct MissingSecret(pub String);

/// `value` with each `${secret:NAME}` replaced by `lookup(NAME)`; the first secret that is
/// not set fails. `value` was checked by [`check_header`].
pub fn substitute(
    value: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, MissingSecret> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find(OPEN) {
        out.push_str(&rest[..i]);
        let body = &rest[i + OPEN.len()..];
        let Some(end) = body.find('}') else {
            out.push_str(&rest[i..]);
            return Ok(out);
        };
        let name = &body[..end];
        out.push_str(&lookup(name).ok_or_else(|| MissingSecret(name.to_string()))?);
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_headers_are_refused_by_name() {
        for (json, expect) in [
            (r#"{"Host": "x"}"#, "\"Host\""),
            (r#"{"content-length": "1"}"#, "\"content-length\""),
            (
                r#"{"Transfer-Encoding": "chunked"}"#,
                "\"Transfer-Encoding\"",
            ),
            (r#"{"Connection": "keep-alive"}"#, "\"Connection\""),
            (r#"{"Proxy-Authorization": "x"}"#, "\"Proxy-Authorization\""),
            (r#"{"X-A\r\nEvil": "x"}"#, "not an HTTP token"),
            (r#"{"X A": "x"}"#, "not an HTTP token"),
            (r#"{"": "x"}"#, "not an HTTP token"),
            (
                r#"{"X-A": "a\r\nHost: evil"}"#,
                "\"X-A\": the value holds a control",
            ),
            (r#"{"X-A": "a\nb"}"#, "\"X-A\": the value holds a control"),
            (r#"{"X-A": "a\u0000"}"#, "control character"),
            (r#"{"X-A": 1}"#, "\"X-A\": the value must be a string"),
            (r#"{"X-A": "${env:HOME}"}"#, "not a secret reference"),
            (r#"{"X-A": "${secret:a b}"}"#, "secret name \"a b\""),
            (r#"{"X-A": "${secret:x"}"#, "not closed"),
            (r#"{"X-A": "a", "x-a": "b"}"#, "given twice"),
            (r#"["X-A"]"#, "expected a JSON object"),
        ] {
            let err = parse_headers_json(json).expect_err(json);
            assert!(err.0.contains(expect), "{json}: {err}");
        }
        // Positive control: ordinary headers and references pass.
        let ok = parse_headers_json(
            r#"{"Authorization": "Bearer ${secret:api.key-1}", "X-Tenant": "t\t1"}"#,
        )
        .expect("ordinary headers");
        assert_eq!(ok.len(), 2);
        assert_eq!(secret_names(&ok[0].1).expect("names"), vec!["api.key-1"]);
    }

    #[test]
    fn substitution_replaces_each_reference_and_names_a_missing_one() {
        let lookup = |n: &str| (n == "k").then(|| "s3cr3t".to_string());
        assert_eq!(
            substitute("Bearer ${secret:k}; again=${secret:k}", lookup).expect("set"),
            "Bearer s3cr3t; again=s3cr3t"
        );
        assert_eq!(substitute("plain", lookup).expect("plain"), "plain");
        let err = substitute("Bearer ${secret:gone}", lookup).expect_err("missing");
        assert_eq!(err, MissingSecret("gone".into()));
        assert!(
            err.to_string().contains("loongctl secrets set gone"),
            "{err}"
        );
    }

    #[test]
    fn secret_names_and_values_are_bounded() {
        assert!(valid_secret_name("A_b.c-9"));
        for bad in [
            "",
            "a b",
            "a/b",
            "a$",
            &"x".repeat(MAX_SECRET_NAME_BYTES + 1),
        ] {
            assert!(!valid_secret_name(bad), "{bad}");
        }
        check_secret_value("token value\twith tab").expect("ordinary");
        for bad in ["", "a\nb", "a\rb", "a\u{0}"] {
            assert!(check_secret_value(bad).is_err(), "{bad:?}");
        }
        let big = "x".repeat(MAX_SECRET_VALUE_BYTES + 1);
        assert!(check_secret_value(&big).is_err());
    }
}
