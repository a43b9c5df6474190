//! Bytes to a [`Plan`]: the size and nesting bounds first, then the typed parse.
//!
//! The depth is counted over the raw bytes before serde sees them, so a hostile plan of a
//! million `[` is refused in one pass with a named bound, not by the parser's recursion
//! limit.

use crate::{
    error::PlanError,
    limits::{MAX_PLAN_BYTES, MAX_PLAN_DEPTH},
    plan::Plan,
};

/// Parses a plan from its JSON bytes. Nothing is checked beyond the shape; see
/// [`crate::validate`].
pub fn parse(bytes: &[u8]) -> Result<Plan, PlanError> {
    if bytes.len() > MAX_PLAN_BYTES {
        return Err(PlanError::PlanTooLarge {
            bytes: bytes.len(),
            max: MAX_PLAN_BYTES,
        });
    }
    check_depth(bytes, MAX_PLAN_DEPTH)?;
    serde_json::from_slice(bytes).map_err(|e| PlanError::Malformed {
        message: without_position(&e),
        line: e.line(),
        column: e.column(),
    })
}

/// Refuses JSON whose arrays and objects nest deeper than `max`. Brackets inside strings
/// do not count; malformed JSON is left for the parser to name.
fn check_depth(bytes: &[u8], max: usize) -> Result<(), PlanError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (offset, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(PlanError::PlanTooDeep { max, offset });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// serde_json's message carries " at line L column C"; the error carries them as fields.
fn without_position(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    }
}
