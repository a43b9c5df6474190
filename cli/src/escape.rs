//! Escaping text that came from someone else before it reaches the operator's terminal.
//!
//! A command line, a path or a tool's input can carry control characters (an escape sequence
//! that clears the line, a carriage return that overwrites what was printed before). Shown
//! as they are, they make an approver see something other than what they approve. Every such
//! character, and the backslash itself, is written as a Rust-style escape, so the shown text
//! maps back to exactly one input.

/// `s` with every control character (C0, DEL, C1), every bidirectional-text control and the
/// backslash escaped; printable text, including non-ASCII letters, is kept.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

/// `s` escaped and in double quotes (a quote inside is escaped too): one argument of a
/// command line, shown so its bounds are plain.
pub fn quoted(s: &str) -> String {
    format!("\"{}\"", escape(s).replace('"', "\\\""))
}

/// The characters that reorder how text is displayed (Unicode bidi embeddings, overrides and
/// isolates, and the marks).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: &str) {
        assert_eq!(escape(input), expect, "{input:?}");
    }

    #[test]
    fn control_characters_are_escaped_and_text_is_kept() {
        check("rm -rf / # fine", "rm -rf / # fine");
        check("a\u{1b}[2Kb", "a\\u{1b}[2Kb");
        check("line\rover", "line\\rover");
        check("two\nlines\ttab", "two\\nlines\\ttab");
        check("c1\u{9b}x del\u{7f}", "c1\\u{9b}x del\\u{7f}");
        check("bidi\u{202e}txt", "bidi\\u{202e}txt");
        check("back\\slash", "back\\\\slash");
        check("né 日本", "né 日本");
        assert_eq!(quoted("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
    }
}
