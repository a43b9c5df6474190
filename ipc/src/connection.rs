//! Async framed connections (tokio), for loongd and the workers.
//!
//! A connection is split into a [`FrameReader`] and a [`FrameWriter`] so that one task can
//! read requests while others write replies. Reading waits for a frame's first byte for as
//! long as the caller allows (the idle timeout); from then on the whole frame must arrive
//! within the frame deadline, so a peer trickling bytes is dropped.

use std::{io, time::Duration};

use serde::{de::DeserializeOwned, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::{timeout_at, Instant},
};

use crate::{
    frame::{self, FrameBuffer, FrameError, FrameLimit},
    message::handshake::{HandshakeError, HandshakeReply, Hello, Welcome},
};

/// Why a connection failed. Every variant ends that connection only.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// A frame was over the limit or did not decode.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame's bytes did not all arrive within the frame deadline.
    #[error(
        "frame not complete within {timeout_ms} ms of its first byte ({buffered} bytes received)"
    )]
    FrameTimeout { timeout_ms: u128, buffered: usize },
    /// No frame began within the idle timeout.
    #[error("no frame within the idle timeout of {timeout_ms} ms")]
    IdleTimeout { timeout_ms: u128 },
    /// The peer did not take a frame within the write deadline.
    #[error("peer did not accept a frame within {timeout_ms} ms")]
    WriteTimeout { timeout_ms: u128 },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes received)")]
    UnexpectedEof { buffered: usize },
    /// The stream ended before the handshake finished.
    #[error("stream ended during the handshake")]
    ClosedDuringHandshake,
    /// The handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

/// The reading half of a framed connection.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: FrameBuffer,
    frame_timeout: Duration,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `inner` that accepts frames up to `limit` and gives each frame
    /// `frame_timeout` from its first byte to its last.
    pub fn new(inner: R, limit: FrameLimit, frame_timeout: Duration) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: FrameBuffer::new(limit),
            frame_timeout,
        }
    }

    /// Changes the frame limit.
    pub fn set_limit(&mut self, limit: FrameLimit) {
        self.buf.set_limit(limit);
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Reads the next message. Waits up to `idle` (forever when `None`) for a frame to
    /// begin; `Ok(None)` is a clean end of stream between frames.
    pub async fn read<T: DeserializeOwned>(
        &mut self,
        idle: Option<Duration>,
    ) -> Result<Option<T>, ConnError> {
        self.read_with(idle, FrameBuffer::next_message).await
    }

    /// Like [`read`](Self::read) but returns the raw body, for messages that must be
    /// inspected before they are decoded (the handshake).
    pub async fn read_body(
        &mut self,
        idle: Option<Duration>,
    ) -> Result<Option<Vec<u8>>, ConnError> {
        self.read_with(idle, FrameBuffer::next_body).await
    }

    async fn read_with<T>(
        &mut self,
        idle: Option<Duration>,
        take: impl Fn(&mut FrameBuffer) -> Result<Option<T>, FrameError>,
    ) -> Result<Option<T>, ConnError> {
        let idle_deadline = idle.map(|d| Instant::now() + d);
        let mut frame_deadline =
            (self.buf.buffered() > 0).then(|| Instant::now() + self.frame_timeout);
        loop {
            if let Some(msg) = take(&mut self.buf)? {
                return Ok(Some(msg));
            }
            let space = self.buf.read_space()?;
            let read = self.inner.read(space);
            let n = match (frame_deadline, idle_deadline) {
                (Some(at), _) => {
                    timeout_at(at, read)
                        .await
                        .map_err(|_| ConnError::FrameTimeout {
                            timeout_ms: self.frame_timeout.as_millis(),
                            buffered: self.buf.buffered(),
                        })??
                }
                (None, Some(at)) => {
                    timeout_at(at, read)
                        .await
                        .map_err(|_| ConnError::IdleTimeout {
                            timeout_ms: idle.unwrap_or_default().as_millis(),
                        })??
                }
                (None, None) => read.await?,
            };
            if n == 0 {
                return match self.buf.buffered() {
                    0 => Ok(None),
                    buffered => Err(ConnError::UnexpectedEof { buffered }),
                };
            }
            self.buf.commit(n);
            frame_deadline.get_or_insert_with(|| Instant::now() + self.frame_timeout);
        }
    }
}

/// The writing half of a framed connection.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    out: Vec<u8>,
    limit: FrameLimit,
    write_timeout: Duration,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer over `inner` that sends frames up to `limit` and gives up on a peer that
    /// does not take one within `write_timeout`.
    pub fn new(inner: W, limit: FrameLimit, write_timeout: Duration) -> FrameWriter<W> {
        FrameWriter {
            inner,
            out: Vec::new(),
            limit,
            write_timeout,
        }
    }

    /// Changes the frame limit.
    pub fn set_limit(&mut self, limit: FrameLimit) {
        self.limit = limit;
    }

    /// The underlying writer, for a caller that writes frames itself from now on.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Sends one message as one frame.
    pub async fn write<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnError> {
        self.out.clear();
        frame::encode(msg, self.limit, &mut self.out)?;
        tokio::time::timeout(self.write_timeout, self.inner.write_all(&self.out))
            .await
            .map_err(|_| ConnError::WriteTimeout {
                timeout_ms: self.write_timeout.as_millis(),
            })??;
        Ok(())
    }

    /// Sends one message as one frame, waiting for the peer as long as it takes: for output
    /// that back-pressures its producer while the peer reads slowly. The caller bounds the
    /// wait (a request's own deadline, the peer closing).
    pub async fn write_waiting<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnError> {
        self.out.clear();
        frame::encode(msg, self.limit, &mut self.out)?;
        self.inner.write_all(&self.out).await?;
        Ok(())
    }

    /// Shuts the write side down, so the peer sees the end of the stream.
    pub async fn shutdown(&mut self) -> Result<(), ConnError> {
        self.inner.shutdown().await?;
        Ok(())
    }
}

/// Reads the callee's side of the handshake: the caller's `Hello`, within `timeout`.
pub async fn read_hello<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    timeout: Duration,
) -> Result<Hello, ConnError> {
    let body = reader
        .read_body(Some(timeout))
        .await?
        .ok_or(ConnError::ClosedDuringHandshake)?;
    Ok(Hello::decode(&body)?)
}

/// Performs the caller's side of the handshake and adopts the callee's frame limit.
pub async fn handshake_as_caller<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    hello: &Hello,
    timeout: Duration,
) -> Result<Welcome, ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    writer.write(hello).await?;
    let reply: HandshakeReply = reader
        .read(Some(timeout))
        .await?
        .ok_or(ConnError::ClosedDuringHandshake)?;
    let welcome = reply.into_welcome()?;
    let limit = FrameLimit::new(u64::from(welcome.limits.max_frame_bytes))?;
    reader.set_limit(limit);
    writer.set_limit(limit);
    Ok(welcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{control::ControlRequest, envelope::Call, handshake::PeerKind};

    #[tokio::test]
    async fn trickled_frame_hits_the_frame_deadline() {
        let (a, mut b) = tokio::net::UnixStream::pair().expect("pair");
        let mut reader = FrameReader::new(a, FrameLimit::DEFAULT, Duration::from_millis(150));
        let mut bytes = Vec::new();
        frame::encode(
            &Call::Request {
                id: 1,
                deadline_ms: 10,
                body: ControlRequest::Status,
            },
            FrameLimit::DEFAULT,
            &mut bytes,
        )
        .expect("encodes");
        let trickle = tokio::spawn(async move {
            for byte in bytes {
                if b.write_all(&[byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        });
        let got = reader.read::<Call<ControlRequest>>(None).await;
        assert!(
            matches!(
                got,
                Err(ConnError::FrameTimeout {
                    timeout_ms: 150,
                    ..
                })
            ),
            "{got:?}"
        );
        trickle.abort();
    }

    /// Reads in a row on one reader keep their own bounds: an earlier read's bound neither
    /// ends a later read that waits longer, nor lets one with a shorter bound wait past it;
    /// and a frame begun after a long idle wait is still held to the frame deadline.
    #[tokio::test]
    async fn reads_in_a_row_keep_their_own_idle_and_frame_bounds() {
        const FRAME: Duration = Duration::from_millis(150);
        let (a, mut b) = tokio::net::UnixStream::pair().expect("pair");
        let mut reader = FrameReader::new(a, FrameLimit::DEFAULT, FRAME);
        let mut ping = Vec::new();
        frame::encode(
            &Call::<ControlRequest>::Ping { nonce: 1 },
            FrameLimit::DEFAULT,
            &mut ping,
        )
        .expect("encodes");
        let idle = |ms| Some(Duration::from_millis(ms));
        // Armed at about 300 ms by a read that gets its frame after 50 ms.
        let sent = ping.clone();
        let send = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            b.write_all(&sent).await.expect("write");
            b
        });
        let got = reader.read::<Call<ControlRequest>>(idle(300)).await;
        assert!(matches!(got, Ok(Some(Call::Ping { nonce: 1 }))), "{got:?}");
        let mut b = send.await.expect("sender");
        // Longer: that earlier bound passes during this read and does not end it.
        let t = Instant::now();
        let got = reader.read::<Call<ControlRequest>>(idle(600)).await;
        let waited = t.elapsed();
        assert!(
            matches!(got, Err(ConnError::IdleTimeout { timeout_ms: 600 })),
            "{got:?}"
        );
        assert!(
            waited >= Duration::from_millis(600),
            "ended early: {waited:?}"
        );
        // Armed at 5 s by a read that gets its frame at once; then a shorter bound holds.
        b.write_all(&ping).await.expect("write");
        let got = reader.read::<Call<ControlRequest>>(idle(5_000)).await;
        assert!(matches!(got, Ok(Some(Call::Ping { .. }))), "{got:?}");
        let t = Instant::now();
        let got = reader.read::<Call<ControlRequest>>(idle(100)).await;
        let waited = t.elapsed();
        assert!(
            matches!(got, Err(ConnError::IdleTimeout { timeout_ms: 100 })),
            "{got:?}"
        );
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        // A long idle bound armed, then a frame begins and stalls: the frame deadline holds.
        let t = Instant::now();
        let begun = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            b.write_all(&ping[..3]).await.expect("write");
            b
        });
        let got = reader.read::<Call<ControlRequest>>(idle(10_000)).await;
        let waited = t.elapsed();
        assert!(
            matches!(
                got,
                Err(ConnError::FrameTimeout {
                    timeout_ms: 150,
                    buffered: 3
                })
            ),
            "{got:?}"
        );
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        drop(begun.await);
    }

    #[tokio::test]
    async fn frames_split_and_joined_arbitrarily_arrive_whole() {
        let (a, mut b) = tokio::net::UnixStream::pair().expect("pair");
        let mut reader = FrameReader::new(a, FrameLimit::DEFAULT, Duration::from_secs(5));
        let mut bytes = Vec::new();
        for id in 0..50u64 {
            frame::encode(
                &Call::<ControlRequest>::Ping { nonce: id },
                FrameLimit::DEFAULT,
                &mut bytes,
            )
            .expect("encodes");
        }
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(7) {
                b.write_all(chunk).await.expect("write");
            }
        });
        for id in 0..50u64 {
            assert_eq!(
                reader
                    .read::<Call<ControlRequest>>(None)
                    .await
                    .expect("reads"),
                Some(Call::Ping { nonce: id })
            );
        }
        writer.await.expect("writer");
        assert!(reader
            .read::<Call<ControlRequest>>(None)
            .await
            .expect("eof")
            .is_none());
    }

    #[tokio::test]
    async fn handshake_reports_a_mismatch_as_typed() {
        let (a, b) = tokio::net::UnixStream::pair().expect("pair");
        let (ar, aw) = a.into_split();
        let (br, bw) = b.into_split();
        let callee = tokio::spawn(async move {
            let mut r = FrameReader::new(br, FrameLimit::DEFAULT, Duration::from_secs(1));
            let mut w = FrameWriter::new(bw, FrameLimit::DEFAULT, Duration::from_secs(1));
            let got = read_hello(&mut r, Duration::from_secs(1)).await;
            let Err(ConnError::Handshake(HandshakeError::VersionMismatch { ours, theirs })) = got
            else {
                panic!("expected a mismatch, got {got:?}");
            };
            w.write(&HandshakeReply::Rejected(
                crate::RejectReason::VersionMismatch {
                    server: ours,
                    client: theirs,
                },
            ))
            .await
            .expect("writes");
        });
        let mut r = FrameReader::new(ar, FrameLimit::DEFAULT, Duration::from_secs(1));
        let mut w = FrameWriter::new(aw, FrameLimit::DEFAULT, Duration::from_secs(1));
        let hello = Hello {
            protocol_version: crate::PROTOCOL_VERSION + 1,
            peer_kind: PeerKind::Operator,
            build: "t".into(),
        };
        let got = handshake_as_caller(&mut r, &mut w, &hello, Duration::from_secs(1)).await;
        assert!(
            matches!(
                got,
                Err(ConnError::Handshake(HandshakeError::VersionMismatch { ours, theirs }))
                    if ours == crate::PROTOCOL_VERSION + 1 && theirs == crate::PROTOCOL_VERSION
            ),
            "{got:?}"
        );
        callee.await.expect("callee");
    }
}
