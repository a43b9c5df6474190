//! Splitting an answer into the parts a platform accepts.
//!
//! Lengths are counted in UTF-16 code units, as Telegram counts a message's characters (a
//! character outside the basic plane counts two), so a part is never over the limit
//! whichever way the platform counts. A split falls on a character boundary, preferably at
//! the last line break (or else space) in the second half of the part.

/// The note that ends the last part when an answer had more parts than are sent.
pub const CUT_NOTE: &str = "\n[answer cut: too long for this chat]";

/// `text` in parts of at most `max_units` UTF-16 code units, at most `max_parts` of them (the
/// last one then ends with [`CUT_NOTE`]). An empty text is no part.
pub fn split(text: &str, max_units: usize, max_parts: usize) -> Vec<String> {
    let max_units = max_units.max(CUT_NOTE.len() + 2);
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if parts.len() + 1 == max_parts && units(rest) > max_units {
            let room = max_units - CUT_NOTE.len();
            let end = hard_end(rest, room);
            parts.push(format!("{}{CUT_NOTE}", &rest[..end]));
            break;
        }
        let end = split_end(rest, max_units);
        parts.push(rest[..end].to_owned());
        rest = &rest[end..];
    }
    parts
}

/// The UTF-16 length of `s`.
pub fn units(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// The byte index where the longest prefix of `s` within `max` units ends.
fn hard_end(s: &str, max: usize) -> usize {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += c.len_utf16();
        if used > max {
            return i;
        }
    }
    s.len()
}

/// Where the first part of `s` ends: all of it if it fits, else the last line break (or
/// space) in the second half of the longest fitting prefix, else that prefix.
fn split_end(s: &str, max: usize) -> usize {
    let end = hard_end(s, max);
    if end == s.len() {
        return end;
    }
    let head = &s[..end];
    let half = end / 2;
    for sep in ['\n', ' '] {
        if let Some(i) = head.rfind(sep) {
            if i >= half {
                return i + 1;
            }
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_thousand_characters_are_two_parts() {
        let text = "a".repeat(5000);
        let parts = split(&text, 4096, 20);
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [4096, 904]
        );
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn a_short_text_is_one_part_and_empty_is_none() {
        assert_eq!(split("hello", 4096, 20), ["hello"]);
        assert!(split("", 4096, 20).is_empty());
        let exact = "b".repeat(4096);
        assert_eq!(split(&exact, 4096, 20), [exact]);
    }

    #[test]
    fn splits_on_character_boundaries_counting_utf16() {
        // Each emoji is 4 bytes and 2 UTF-16 units: 3000 of them are 6000 units.
        let text = "😀".repeat(3000);
        let parts = split(&text, 4096, 20);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| units(p) <= 4096));
        assert_eq!(units(&parts[0]), 4096);
        assert_eq!(parts.concat(), text);
        // Mixed widths: no part is ever over, and nothing is lost.
        let mixed = "é😀x中".repeat(2000);
        let parts = split(&mixed, 4096, 20);
        assert!(parts.iter().all(|p| units(p) <= 4096));
        assert_eq!(parts.concat(), mixed);
    }

    #[test]
    fn prefers_a_line_break_in_the_second_half() {
        let text = format!("{}\n{}", "a".repeat(3000), "b".repeat(3000));
        let parts = split(&text, 4096, 20);
        assert_eq!(parts[0], format!("{}\n", "a".repeat(3000)));
        assert_eq!(parts[1], "b".repeat(3000));
        // A break in the first half is not taken: the part would be too short.
        let text = format!("{}\n{}", "a".repeat(100), "b".repeat(5000));
        assert_eq!(units(&split(&text, 4096, 20)[0]), 4096);
    }

    #[test]
    fn too_many_parts_are_cut_with_a_note() {
        let text = "c".repeat(4096 * 30);
        let parts = split(&text, 4096, 3);
        assert_eq!(parts.len(), 3);
        assert!(parts[2].ends_with(CUT_NOTE));
        assert!(parts.iter().all(|p| units(p) <= 4096));
    }
}
