//! What frames mean. One file per message family.
//!
//! Compatibility rule: variants and fields are only ever appended. The first frame each way
//! (the [`handshake`]) keeps its layout forever, so that two builds of different protocol
//! versions can still tell each other so.

pub mod channel;
pub mod control;
pub mod envelope;
pub mod gateway;
pub mod handshake;
pub mod kernel;
pub mod outcome;
pub mod worker;

/// Checks a variable-size text field against its documented bound.
pub(crate) fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), BoundError> {
    if value.len() > max {
        return Err(BoundError {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

/// `s` cut to at most `max` bytes on a character boundary.
pub(crate) fn truncated(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// A field longer than its documented bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}` is {len} bytes, above its bound of {max}")]
pub struct BoundError {
    /// The field's name.
    pub field: &'static str,
    /// Its length in bytes.
    pub len: usize,
    /// The bound.
    pub max: usize,
}
