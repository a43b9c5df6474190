//! One page of a list answer: the items after the caller's cursor, at most the page's count
//! and at most [`MAX_PAGE_BYTES`] of encoded items, so no answer outgrows a frame whatever
//! the list holds (10,000 tokens once made `tokens list` fail at the frame limit).

use loong_ipc::{frame::encoded_len, message::control::MAX_PAGE_BYTES, Page};
use serde::Serialize;

/// The page of `items` (in key order) that `page` asks for: those for which `is_after` holds
/// (their key sorts after the cursor), at most [`Page::items`] of them, and no more once
/// their encoding passes [`MAX_PAGE_BYTES`]; the first item is always kept, so every page
/// moves on.
pub(crate) fn page_of<T: Serialize>(
    items: impl IntoIterator<Item = T>,
    is_after: impl Fn(&T) -> bool,
    page: &Page,
) -> Vec<T> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for item in items.into_iter().filter(|i| is_after(i)) {
        if out.len() >= page.items() {
            break;
        }
        bytes += encoded_len(&item).unwrap_or(MAX_PAGE_BYTES);
        if bytes > MAX_PAGE_BYTES && !out.is_empty() {
            break;
        }
        out.push(item);
    }
    out
}

/// Whether `key` sorts after the page's cursor.
pub(crate) fn after_text(page: &Page, key: &str) -> bool {
    page.after.as_deref().is_none_or(|a| key > a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(after: Option<&str>, limit: u32) -> Page {
        Page {
            after: after.map(str::to_string),
            limit,
        }
    }

    #[test]
    fn pages_follow_the_cursor_the_count_and_the_byte_bound() {
        let items: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let p = page(Some("k3"), 4);
        let got = page_of(items.clone(), |k| after_text(&p, k), &p);
        assert_eq!(got, ["k4", "k5", "k6", "k7"]);
        let p = page(Some("k9"), 4);
        assert!(page_of(items.clone(), |k| after_text(&p, k), &p).is_empty());
        // 0 asks for the most a page holds.
        let p = page(None, 0);
        assert_eq!(page_of(items, |k| after_text(&p, k), &p).len(), 10);
        // Large items: the byte bound cuts the page, but never to nothing.
        let big: Vec<String> = (0..10)
            .map(|i| format!("{i}{}", "x".repeat(200_000)))
            .collect();
        let p = page(None, 0);
        let got = page_of(big.clone(), |k| after_text(&p, k), &p);
        assert_eq!(got.len(), 2);
        let huge = vec!["y".repeat(MAX_PAGE_BYTES * 2)];
        assert_eq!(page_of(huge, |k| after_text(&p, k), &p).len(), 1);
    }
}
