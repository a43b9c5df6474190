//! Frames: a `u32` little-endian body length, then a postcard-encoded body.
//!
//! The length prefix is checked against the connection's [`FrameLimit`] before any byte of
//! the body is buffered, so a peer announcing 4 GiB costs four bytes of memory. A partial
//! frame is "need more bytes" (`Ok(None)`), never an error. A body that does not decode, or
//! that decodes with bytes left over, is an error that ends the connection.

use serde::{de::DeserializeOwned, Serialize};

/// Bytes in the length prefix.
pub const LEN_PREFIX_BYTES: usize = 4;
/// Default largest body a connection accepts (1 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 1 << 20;
/// No connection may be configured above this body size (16 MiB).
pub const HARD_MAX_FRAME_BYTES: u32 = 16 << 20;
/// How much a reader asks the socket for when it does not yet know the frame's size.
pub const READ_CHUNK_BYTES: usize = 4096;

/// The largest body one connection accepts, always within `1..=HARD_MAX_FRAME_BYTES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimit(u32);

impl FrameLimit {
    /// The default limit, [`DEFAULT_MAX_FRAME_BYTES`].
    pub const DEFAULT: FrameLimit = FrameLimit(DEFAULT_MAX_FRAME_BYTES);
    /// The hard ceiling, [`HARD_MAX_FRAME_BYTES`].
    pub const CEILING: FrameLimit = FrameLimit(HARD_MAX_FRAME_BYTES);

    /// A limit of `bytes`, refused when zero or above the hard ceiling.
    pub fn new(bytes: u64) -> Result<FrameLimit, FrameError> {
        match u32::try_from(bytes) {
            Ok(b) if b > 0 && b <= HARD_MAX_FRAME_BYTES => Ok(FrameLimit(b)),
            _ => Err(FrameError::LimitOutOfRange { bytes }),
        }
    }

    /// The limit in bytes.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for FrameLimit {
    fn default() -> Self {
        FrameLimit::DEFAULT
    }
}

/// Why bytes could not be turned into a message, or a message into bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix (or an encoded message) is above the connection's limit.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: u64, limit: u32 },
    /// The body is not a valid postcard encoding of the expected message.
    #[error("malformed frame body ({len} bytes): {source}")]
    Malformed {
        len: usize,
        #[source]
        source: postcard::Error,
    },
    /// The body decoded, but bytes were left after the message.
    #[error("frame body has {extra} trailing bytes after the message")]
    TrailingBytes { extra: usize },
    /// A configured limit outside `1..=16 MiB`.
    #[error("frame limit of {bytes} bytes is outside 1..={HARD_MAX_FRAME_BYTES}")]
    LimitOutOfRange { bytes: u64 },
}

/// The bytes `msg` takes in a frame's body (`None` when it cannot be encoded), for a sender
/// that sizes an answer before it sends it.
pub fn encoded_len<T: Serialize>(msg: &T) -> Option<usize> {
    postcard::experimental::serialized_size(msg).ok()
}

/// Appends one frame holding `msg` to `out`. On error `out` is left as it was.
pub fn encode<T: Serialize>(
    msg: &T,
    limit: FrameLimit,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let body =
        postcard::to_allocvec(msg).map_err(|source| FrameError::Malformed { len: 0, source })?;
    if body.len() > limit.get() as usize {
        return Err(FrameError::TooLarge {
            len: body.len() as u64,
            limit: limit.get(),
        });
    }
    out.reserve(LEN_PREFIX_BYTES + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// The body length a buffer announces, checked against `limit`; `None` until the whole
/// prefix is there.
pub fn declared_len(buf: &[u8], limit: FrameLimit) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..LEN_PREFIX_BYTES) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if len > limit.get() {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            limit: limit.get(),
        });
    }
    Ok(Some(len as usize))
}

/// Splits the first complete frame off `buf`: its body and the bytes it used.
pub fn split(buf: &[u8], limit: FrameLimit) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(len) = declared_len(buf, limit)? else {
        return Ok(None);
    };
    let end = LEN_PREFIX_BYTES + len;
    Ok(buf.get(LEN_PREFIX_BYTES..end).map(|body| (body, end)))
}

/// Decodes a whole body into one message; trailing bytes are an error.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(body).map_err(|source| FrameError::Malformed {
        len: body.len(),
        source,
    })?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes { extra: rest.len() });
    }
    Ok(msg)
}

/// Decodes the first frame in `buf`: the message and the bytes it used, or `None` when more
/// bytes are needed.
pub fn decode<T: DeserializeOwned>(
    buf: &[u8],
    limit: FrameLimit,
) -> Result<Option<(T, usize)>, FrameError> {
    match split(buf, limit)? {
        Some((body, used)) => Ok(Some((decode_body(body)?, used))),
        None => Ok(None),
    }
}

/// Read-side buffering shared by the blocking client and the async connection.
///
/// It only ever asks the socket for bytes it may keep: up to [`READ_CHUNK_BYTES`] while
/// the prefix is incomplete, and then at most what the (already checked) prefix announced,
/// so it never holds more than `limit + READ_CHUNK_BYTES + 4` bytes.
#[derive(Debug)]
pub struct FrameBuffer {
    /// `buf[..filled]` holds received bytes; the rest is room for the next read.
    buf: Vec<u8>,
    filled: usize,
    limit: FrameLimit,
}

impl FrameBuffer {
    /// An empty buffer for a connection with `limit`.
    pub fn new(limit: FrameLimit) -> FrameBuffer {
        FrameBuffer {
            buf: Vec::new(),
            filled: 0,
            limit,
        }
    }

    /// The connection's limit.
    pub fn limit(&self) -> FrameLimit {
        self.limit
    }

    /// Changes the limit (after the handshake agreed on one).
    pub fn set_limit(&mut self, limit: FrameLimit) {
        self.limit = limit;
    }

    /// Bytes received that do not yet form a whole frame; non-zero means a frame is in
    /// progress and its read deadline runs.
    pub fn buffered(&self) -> usize {
        self.filled
    }

    /// Whether the buffer holds a whole frame (or a prefix no frame can start with, which
    /// the next [`next_message`](Self::next_message) reports): taking it needs no read.
    pub fn has_frame(&self) -> bool {
        !matches!(split(&self.buf[..self.filled], self.limit), Ok(None))
    }

    fn take(&mut self, used: usize) {
        self.buf.copy_within(used..self.filled, 0);
        self.filled -= used;
    }

    /// Takes the next whole frame's body out of the buffer, if there is one.
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some((body, used)) = split(&self.buf[..self.filled], self.limit)? else {
            return Ok(None);
        };
        let body = body.to_vec();
        self.take(used);
        Ok(Some(body))
    }

    /// Decodes the next whole frame out of the buffer, if there is one.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let Some((body, used)) = split(&self.buf[..self.filled], self.limit)? else {
            return Ok(None);
        };
        let msg = decode_body(body);
        self.take(used);
        msg.map(Some)
    }

    /// Room for the next read: what the current frame may still use, at least
    /// [`READ_CHUNK_BYTES`]. Refuses when the buffered prefix is over the limit. Call
    /// [`commit`](Self::commit) with the number of bytes read into it.
    pub fn read_space(&mut self) -> Result<&mut [u8], FrameError> {
        let want = match declared_len(&self.buf[..self.filled], self.limit)? {
            None => READ_CHUNK_BYTES,
            Some(len) => (LEN_PREFIX_BYTES + len)
                .saturating_sub(self.filled)
                .max(READ_CHUNK_BYTES),
        };
        if self.buf.len() < self.filled + want {
            self.buf.resize(self.filled + want, 0);
        }
        Ok(&mut self.buf[self.filled..self.filled + want])
    }

    /// Records that `n` bytes were read into the space [`read_space`](Self::read_space) gave.
    pub fn commit(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.buf.len());
    }

    /// Reads once through `read` into [`read_space`](Self::read_space) and commits what it
    /// read; returns what `read` returned (0 means end of stream).
    pub fn fill<E>(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<Result<usize, E>, FrameError> {
        let res = read(self.read_space()?);
        if let Ok(n) = res {
            self.commit(n);
        }
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::control::ControlRequest;
    use crate::message::envelope::Call;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn round_trip_and_need_more() {
        let msg: Call<ControlRequest> = Call::Request {
            id: 7,
            deadline_ms: 1000,
            body: ControlRequest::Status,
        };
        let mut out = Vec::new();
        encode(&msg, FrameLimit::DEFAULT, &mut out).expect("encodes");
        for cut in 0..out.len() {
            assert_eq!(
                decode::<Call<ControlRequest>>(&out[..cut], FrameLimit::DEFAULT),
                Ok(None),
                "cut at {cut}"
            );
        }
        assert_eq!(
            decode(&out, FrameLimit::DEFAULT),
            Ok(Some((msg, out.len())))
        );
    }

    /// A caller polling the socket must know when a frame already waits in the buffer (two
    /// frames read at once): `has_frame` says so for a whole frame only, not for a part.
    #[test]
    fn has_frame_tells_a_whole_buffered_frame_from_a_part() {
        let mut buf = FrameBuffer::new(FrameLimit::DEFAULT);
        assert!(!buf.has_frame());
        let two = [frame(b"\x01"), frame(b"\x02")].concat();
        let first = two.len() / 2;
        let read = |buf: &mut FrameBuffer, bytes: &[u8]| {
            buf.fill(|space: &mut [u8]| {
                space[..bytes.len()].copy_from_slice(bytes);
                Ok::<usize, ()>(bytes.len())
            })
            .expect("fill")
            .expect("read");
        };
        // A part of the first frame: nothing to take yet.
        read(&mut buf, &two[..first - 1]);
        assert!(!buf.has_frame());
        // Both frames, read at once: the second waits in the buffer after the first.
        read(&mut buf, &two[first - 1..]);
        assert!(buf.has_frame());
        assert_eq!(buf.next_body().expect("first"), Some(b"\x01".to_vec()));
        assert!(buf.has_frame());
        assert_eq!(buf.next_body().expect("second"), Some(b"\x02".to_vec()));
        assert!(!buf.has_frame());
    }

    #[test]
    fn oversize_prefix_is_refused_from_the_prefix_alone() {
        let four_gib = u32::MAX.to_le_bytes();
        assert_eq!(
            decode::<Call<ControlRequest>>(&four_gib, FrameLimit::DEFAULT),
            Err(FrameError::TooLarge {
                len: u64::from(u32::MAX),
                limit: DEFAULT_MAX_FRAME_BYTES
            })
        );
        let mut fb = FrameBuffer::new(FrameLimit::DEFAULT);
        fb.fill(|b: &mut [u8]| -> Result<usize, ()> {
            b[..4].copy_from_slice(&four_gib);
            Ok(4)
        })
        .expect("prefix unknown before the read")
        .expect("read ok");
        // The next fill must refuse instead of asking for 4 GiB of room.
        assert_eq!(
            fb.fill(|_: &mut [u8]| -> Result<usize, ()> { Ok(0) }).err(),
            Some(FrameError::TooLarge {
                len: u64::from(u32::MAX),
                limit: DEFAULT_MAX_FRAME_BYTES
            })
        );
    }

    #[test]
    fn trailing_bytes_and_truncated_bodies() {
        let mut body =
            postcard::to_allocvec(&Call::<ControlRequest>::Ping { nonce: 1 }).expect("encodes");
        body.push(0);
        assert_eq!(
            decode::<Call<ControlRequest>>(&frame(&body), FrameLimit::DEFAULT),
            Err(FrameError::TrailingBytes { extra: 1 })
        );
        // A request whose body is cut short inside the frame is malformed, not "need more".
        let full = postcard::to_allocvec(&Call::Request {
            id: 300,
            deadline_ms: 5,
            body: ControlRequest::Status,
        })
        .expect("encodes");
        let r = decode::<Call<ControlRequest>>(&frame(&full[..2]), FrameLimit::DEFAULT);
        assert!(
            matches!(r, Err(FrameError::Malformed { len: 2, .. })),
            "{r:?}"
        );
    }

    #[test]
    fn encode_refuses_a_message_over_the_limit_and_keeps_the_buffer() {
        let limit = FrameLimit::new(8).expect("valid");
        let mut out = vec![1, 2, 3];
        let msg = String::from("a string longer than eight bytes");
        assert_eq!(
            encode(&msg, limit, &mut out),
            Err(FrameError::TooLarge { len: 33, limit: 8 })
        );
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn limits_are_bounded() {
        assert!(FrameLimit::new(0).is_err());
        assert!(FrameLimit::new(u64::from(HARD_MAX_FRAME_BYTES) + 1).is_err());
        assert_eq!(
            FrameLimit::new(u64::from(HARD_MAX_FRAME_BYTES)).map(FrameLimit::get),
            Ok(HARD_MAX_FRAME_BYTES)
        );
    }
}
