//! A bounded parser of `text/event-stream` (the WHATWG HTML "server-sent events" format).
//!
//! Bytes go in as they arrive, in pieces of any size; complete events come out. Lines end in
//! CRLF, LF or CR (a CRLF split across two pieces is one terminator). A line starting with `:`
//! is a comment; `data` lines are joined with `\n`; `event` names the event; `id`, `retry` and
//! unknown fields are ignored, as the format says. A blank line dispatches the event (one with
//! no data is dropped). A line, an event and the whole stream each have a size bound, checked
//! as bytes arrive, before they are kept.

use crate::limits::{MAX_ANSWER_BYTES, MAX_SSE_EVENT_BYTES, MAX_SSE_LINE_BYTES};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field, if one was given.
    pub event: Option<String>,
    /// The `data` lines, joined with `\n`.
    pub data: String,
    /// The line number of the blank line that dispatched it (for error messages).
    pub line: u64,
}

/// The bounds one parser keeps.
#[derive(Debug, Clone, Copy)]
pub struct SseLimits {
    /// The longest line, in bytes.
    pub line: usize,
    /// The largest event (its data), in bytes.
    pub event: usize,
    /// The most bytes of the whole stream.
    pub stream: usize,
}

impl Default for SseLimits {
    fn default() -> Self {
        Self {
            line: MAX_SSE_LINE_BYTES,
            event: MAX_SSE_EVENT_BYTES,
            stream: MAX_ANSWER_BYTES,
        }
    }
}

/// Why the stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line longer than the bound.
    #[error("line {line} is longer than {limit} bytes")]
    LineTooLong { line: u64, limit: usize },
    /// An event larger than the bound.
    #[error("the event ending at line {line} is larger than {limit} bytes")]
    EventTooLarge { line: u64, limit: usize },
    /// The stream is larger than the bound.
    #[error("the stream is larger than {limit} bytes")]
    StreamTooLarge { limit: usize },
    /// A line that is not UTF-8.
    #[error("line {line} is not UTF-8")]
    NotUtf8 { line: u64 },
}

/// The parser's state between pieces.
#[derive(Debug)]
pub struct SseParser {
    limits: SseLimits,
    line: Vec<u8>,
    line_no: u64,
    skip_lf: bool,
    total: usize,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// A parser keeping `limits`.
    pub fn new(limits: SseLimits) -> Self {
        Self {
            limits,
            line: Vec::new(),
            line_no: 0,
            skip_lf: false,
            total: 0,
            event: None,
            data: String::new(),
            has_data: false,
        }
    }

    /// The number of lines seen so far.
    pub fn line(&self) -> u64 {
        self.line_no
    }

    /// Feeds the next piece of the stream, appending every event it completes to `out`.
    pub fn feed(&mut self, piece: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        self.total = self.total.saturating_add(piece.len());
        if self.total > self.limits.stream {
            return Err(SseError::StreamTooLarge {
                limit: self.limits.stream,
            });
        }
        for &byte in piece {
            if std::mem::take(&mut self.skip_lf) && byte == b'\n' {
                continue;
            }
            match byte {
                b'\n' | b'\r' => {
                    self.skip_lf = byte == b'\r';
                    self.line_no += 1;
                    self.end_line(out)?;
                }
                _ => {
                    if self.line.len() >= self.limits.line {
                        return Err(SseError::LineTooLong {
                            line: self.line_no + 1,
                            limit: self.limits.line,
                        });
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let raw = std::mem::take(&mut self.line);
        let line = String::from_utf8(raw).map_err(|_| SseError::NotUtf8 { line: self.line_no })?;
        if line.is_empty() {
            let data = std::mem::take(&mut self.data);
            let event = self.event.take();
            if std::mem::take(&mut self.has_data) {
                out.push(SseEvent {
                    event,
                    data,
                    line: self.line_no,
                });
            }
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match field {
            "data" => {
                let grown = self.data.len() + value.len() + usize::from(self.has_data);
                if grown > self.limits.event {
                    return Err(SseError::EventTooLarge {
                        line: self.line_no,
                        limit: self.limits.event,
                    });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pieces: &[&[u8]], limits: SseLimits) -> Result<Vec<SseEvent>, SseError> {
        let mut parser = SseParser::new(limits);
        let mut out = Vec::new();
        for piece in pieces {
            parser.feed(piece, &mut out)?;
        }
        Ok(out)
    }

    fn data(events: &[SseEvent]) -> Vec<(Option<&str>, &str)> {
        events
            .iter()
            .map(|e| (e.event.as_deref(), e.data.as_str()))
            .collect()
    }

    #[test]
    fn every_line_ending_and_a_crlf_split_across_pieces() {
        let got = parse(
            &[
                b"event: a\r",
                b"\ndata: 1\r\n\r",
                b"\ndata:2\n\ndata: 3\r\rdata: x\n",
            ],
            SseLimits::default(),
        )
        .expect("parses");
        assert_eq!(data(&got), vec![(Some("a"), "1"), (None, "2"), (None, "3")]);
    }

    #[test]
    fn comments_ids_and_unknown_fields_are_skipped_and_data_lines_join() {
        let got = parse(
            &[b": ping\nid: 7\nretry: 10\nfoo: bar\ndata: a\ndata\ndata: b\n\n\n"],
            SseLimits::default(),
        )
        .expect("parses");
        assert_eq!(data(&got), vec![(None, "a\n\nb")]);
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_events() {
        let text = b"event: x\ndata: {\"a\":1}\n\ndata: [DONE]\n\n";
        let pieces: Vec<&[u8]> = text.chunks(1).collect();
        let got = parse(&pieces, SseLimits::default()).expect("parses");
        assert_eq!(data(&got), vec![(Some("x"), "{\"a\":1}"), (None, "[DONE]")]);
    }

    #[test]
    fn each_bound_is_kept_and_its_positive_control_passes() {
        let limits = SseLimits {
            line: 16,
            event: 18,
            stream: 64,
        };
        assert!(parse(&[b"data: 0123456789\n\n"], limits).is_ok());
        assert_eq!(
            parse(&[b"data: 0123456789a\n"], limits),
            Err(SseError::LineTooLong { line: 1, limit: 16 })
        );
        assert!(parse(&[b"data: 0123456789\ndata: 0123456\n\n"], limits).is_ok());
        assert_eq!(
            parse(&[b"data: 0123456789\ndata: 01234567\n"], limits),
            Err(SseError::EventTooLarge { line: 2, limit: 18 })
        );
        let long = [b"data: 01234\n\n".as_slice(); 5].concat();
        assert_eq!(
            parse(&[&long, b"data: x\n\n"], limits),
            Err(SseError::StreamTooLarge { limit: 64 })
        );
        assert_eq!(
            parse(&[b"data: \xff\n"], limits),
            Err(SseError::NotUtf8 { line: 1 })
        );
    }
}
