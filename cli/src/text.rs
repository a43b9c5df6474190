//! Foreign text made safe for the operator's terminal.
//!
//! Tool descriptions, plugin logs and errors, a program's stderr, manifest text, an agent's
//! path: anything loongctl did not write itself can carry terminal control sequences (clear
//! the screen, set the window title, a carriage return that paints a fake line over a real
//! one) or invisible Unicode that reorders what the operator reads. Every human-readable view
//! passes such text through [`esc`], which shows each of those characters visibly instead:
//! C0 controls (newline and tab included), DEL and C1 controls as `\xNN` (`\n`, `\r`, `\t` by
//! name), the backslash itself as `\\` (so the shown text maps back to exactly one input),
//! and Unicode format characters (bidi overrides and isolates, zero-width characters,
//! line and paragraph separators, the BOM, tags) as `\u{…}`. `--json` output is left as it
//! is: JSON escapes control characters itself, and a program reads it, not a person.

use std::{borrow::Cow, fmt};

/// Whether `c` must not reach a terminal as it is.
pub fn needs_escape(c: char) -> bool {
    let u = c as u32;
    u < 0x20 || (0x7f..=0x9f).contains(&u) || is_format(u)
}

/// Unicode's invisible format characters (general category Cf) and the line and paragraph
/// separators: each can hide or reorder text on screen.
fn is_format(u: u32) -> bool {
    matches!(
        u,
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// `s` with every character that [`needs_escape`] shown as an escape; borrowed when there is
/// none.
pub fn esc(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || needs_escape(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    use fmt::Write as _;
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x100 && needs_escape(c) => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// `s` escaped line by line: its line breaks stay line breaks, every other character that
/// [`needs_escape`] is shown. For loongd's own multi-line messages (an error listing several
/// problems), which may quote foreign text.
pub fn esc_lines(s: &str) -> String {
    s.split('\n').map(|l| esc(l)).collect::<Vec<_>>().join("\n")
}

/// `s` escaped and in double quotes (a quote inside is escaped too): one argument of a
/// command line, shown so that its bounds are plain.
pub fn quoted(s: &str) -> String {
    format!("\"{}\"", esc(s).replace('"', "\\\""))
}

/// Each of `items` escaped, joined by `sep`.
pub fn esc_join(items: &[String], sep: &str) -> String {
    items.iter().map(|s| esc(s)).collect::<Vec<_>>().join(sep)
}

/// A tool's JSON output made safe for a terminal and still the same JSON: a character that
/// [`needs_escape`] inside a string becomes its `\uXXXX` escape (a C1 control, a bidi
/// override or a line separator is valid raw in a JSON string), a carriage return or tab
/// between tokens becomes a space, and line breaks between tokens stay. Text that is not JSON
/// is shown as [`esc_lines`] shows it.
pub fn json_text(s: &str) -> String {
    use fmt::Write as _;
    if serde_json::from_str::<serde::de::IgnoredAny>(s).is_err() {
        return esc_lines(s);
    }
    // In valid JSON a control character outside a string is whitespace, and every other
    // character that needs escaping is inside a string, where its escape is the same text.
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | ' ' => out.push(c),
            '\r' | '\t' => out.push(' '),
            c if needs_escape(c) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// `v` as compact JSON made safe for a terminal, still the same JSON ([`json_text`]): what
/// every `--json` prints, since its strings may hold a plugin's or a client's words.
pub fn json_value(v: &serde_json::Value) -> String {
    json_text(&v.to_string())
}

/// A value that prints as [`esc`] of its text.
#[derive(Debug, Clone, Copy)]
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&esc(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expect: &str) {
        assert_eq!(esc(input), expect);
    }

    #[test]
    fn control_and_format_characters_are_shown_not_obeyed() {
        check("plain text, ünïcode, 中文", "plain text, ünïcode, 中文");
        check("\x1b[2J\x1b]0;title\x07", "\\x1b[2J\\x1b]0;title\\x07");
        check("ok\rFAKE", "ok\\rFAKE");
        check("a\nb\tc", "a\\nb\\tc");
        check("back\x08space\x7f", "back\\x08space\\x7f");
        check("\u{9b}31m c1 csi", "\\x9b31m c1 csi");
        check("evil\u{202e}txt.exe", "evil\\u{202e}txt.exe");
        check("zero\u{200b}width\u{feff}", "zero\\u{200b}width\\u{feff}");
        check("\u{2066}isolate\u{2069}", "\\u{2066}isolate\\u{2069}");
        check("tag\u{e0041}", "tag\\u{e0041}");
        check("back\\slash \\x1b", "back\\\\slash \\\\x1b");
        assert_eq!(quoted("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
        assert!(matches!(esc("nothing to do"), Cow::Borrowed(_)));
    }

    #[test]
    fn lines_stay_lines_and_nothing_else_passes() {
        assert_eq!(
            esc_lines("2 problems:\n  - a\r\x1b[1A\n  - b"),
            "2 problems:\n  - a\\r\\x1b[1A\n  - b"
        );
    }

    #[test]
    fn json_output_stays_json_and_shows_what_a_terminal_would_obey() {
        let raw = "{\"a\":\"x\u{9b}1m\u{202e}y\u{2028}\u{1d173}\u{7f}\"}\r\t\n";
        let shown = json_text(raw);
        assert!(
            !shown.chars().any(|c| c != '\n' && needs_escape(c)),
            "{shown}"
        );
        assert_eq!(
            shown,
            "{\"a\":\"x\\u009b1m\\u202ey\\u2028\\ud834\\udd73\\u007f\"}  \n"
        );
        let same: serde_json::Value = serde_json::from_str(&shown).expect("still JSON");
        let orig: serde_json::Value = serde_json::from_str(raw).expect("JSON");
        assert_eq!(same, orig);
        // Positive control: plain JSON is untouched; text that is not JSON is escaped.
        assert_eq!(json_text("{\"ok\": [1, \"é\"]}"), "{\"ok\": [1, \"é\"]}");
        assert_eq!(json_text("not json\x1b[2J"), "not json\\x1b[2J");
    }

    #[test]
    fn padding_applies_to_the_escaped_text() {
        assert_eq!(format!("[{:<6}]", Esc("a\rb")), "[a\\rb  ]");
    }
}
