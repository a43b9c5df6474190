//! A control connection's socket, registered with the runtime for what the connection waits
//! for and nothing more: readable (and the peer's hang-up) for its reading side, writable
//! only while a write waits for room.
//!
//! A Unix socket reports itself writable each time its peer takes bytes from it, so a socket
//! registered for writability (as a `tokio::net::UnixStream` always is) wakes loongd's
//! parked runtime thread once more per answer, when the client reads it, for nothing: a
//! thread's wake-up per request on a kept connection, and the client's read paying for
//! waking it. Here the socket is registered for readability only; a write that finds it
//! full registers a second handle on it for writability until it has room, then drops it.

use std::{
    io::{self, Read},
    net::Shutdown,
    os::{fd::AsRawFd, unix::net::UnixStream as StdStream},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use nix::{
    errno::Errno,
    sys::socket::{send, MsgFlags},
};
use tokio::io::{unix::AsyncFd, AsyncRead, Interest, ReadBuf};

/// Registers `stream` with the runtime for `interest`.
fn register(stream: StdStream, interest: Interest) -> io::Result<AsyncFd<StdStream>> {
    // As in `sandbox.rs`: the safe constructor is deprecated for descriptors a type could
    // swap or close under the registration; a `UnixStream` owned by the `AsyncFd` can do
    // neither, and the replacement is `unsafe`, which this crate does not allow.
    #[allow(deprecated)]
    AsyncFd::with_interest(stream, interest)
}

/// Splits an accepted connection into its reading and writing sides.
pub(super) fn split(stream: tokio::net::UnixStream) -> io::Result<(ReadSide, WriteSide)> {
    let std = stream.into_std()?;
    std.set_nonblocking(true)?;
    let fd = Arc::new(register(std, Interest::READABLE)?);
    Ok((ReadSide(fd.clone()), WriteSide(fd)))
}

/// The reading side: an [`AsyncRead`] woken by readability only.
#[derive(Debug)]
pub(super) struct ReadSide(Arc<AsyncFd<StdStream>>);

impl ReadSide {
    /// A second handle on the socket that only watches for the peer's hang-up (see
    /// [`hang_up`]), for the times the connection stops reading; `None` if the socket cannot
    /// be duplicated or registered.
    pub(super) fn watch(&self) -> Option<AsyncFd<StdStream>> {
        let dup = self.0.get_ref().try_clone().ok()?;
        register(dup, Interest::READABLE).ok()
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let room = unfilled.len();
            match guard.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    // A read that did not fill the room emptied the socket: the next waits for
                    // the next event rather than trying a read that would find nothing (as
                    // tokio's own streams do). Bytes that came meanwhile raised a new event,
                    // which this does not clear.
                    if n < room {
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Not readable after all: the readiness is cleared, wait for the next.
                Err(_would_block) => continue,
            }
        }
    }
}

/// Resolves once the peer has hung up, without reading from the socket; never when there is
/// no watch handle.
pub(super) async fn hang_up(watch: Option<&AsyncFd<StdStream>>) {
    let Some(watch) = watch else {
        return std::future::pending().await;
    };
    loop {
        match watch.readable().await {
            Ok(guard) if guard.ready().is_read_closed() => return,
            // Bytes are waiting that the connection will read later: forget this readiness
            // and wait for the next event (more bytes, or the hang-up, which stays set).
            Ok(mut guard) => guard.clear_ready(),
            Err(_) => return,
        }
    }
}

/// The writing side. Dropping it hangs up on the client (its write direction is shut down)
/// even while the reading side lives on.
#[derive(Debug)]
pub(super) struct WriteSide(Arc<AsyncFd<StdStream>>);

impl WriteSide {
    /// Writes what the socket takes of `buf` now, without waiting (a client that left is an
    /// error, never a `SIGPIPE`).
    pub(super) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match send(self.0.get_ref().as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL) {
                Err(Errno::EINTR) => {}
                r => return r.map_err(io::Error::from),
            }
        }
    }

    /// Writes all of `buf`, waiting for room as long as it takes (the caller bounds the wait).
    pub(super) async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.try_write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits until the socket has room, through a handle registered for writability for the
    /// wait only (registering it reports room that came meanwhile: no wake-up is lost).
    async fn writable(&self) -> io::Result<()> {
        let dup = self.0.get_ref().try_clone()?;
        let fd = register(dup, Interest::WRITABLE)?;
        let _ready = fd.writable().await?;
        Ok(())
    }
}

impl Drop for WriteSide {
    fn drop(&mut self) {
        let _ = self.0.get_ref().shutdown(Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn pair() -> ((ReadSide, WriteSide), tokio::net::UnixStream) {
        let (ours, theirs) = tokio::net::UnixStream::pair().expect("socket pair");
        (split(ours).expect("split"), theirs)
    }

    /// A write larger than the socket's buffer waits for room and finishes once the peer
    /// reads; bytes arrive in order, and dropping the write side is seen as the end.
    #[tokio::test]
    async fn a_write_waits_for_room_and_the_end_follows_the_last_byte() {
        const BIG: usize = 2 << 20;
        let ((_r, w), mut peer) = pair();
        let data: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let reading = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.expect("read");
            got
        });
        let first = w.try_write(&data).expect("room for some");
        assert!(first < BIG, "the socket's buffer is smaller than the write");
        tokio::time::timeout(WAIT, async {
            w.write_all(&data[first..]).await.expect("written");
            drop(w);
        })
        .await
        .expect("the write finished as the peer read");
        let got = tokio::time::timeout(WAIT, reading)
            .await
            .expect("the end seen")
            .expect("reader");
        assert!(
            got == expect,
            "{} bytes of {BIG} arrived in order",
            got.len()
        );
    }

    /// The watch resolves when the peer hangs up, not while bytes merely wait to be read.
    #[tokio::test]
    async fn the_watch_sees_the_hang_up_and_not_bytes() {
        use tokio::io::AsyncWriteExt;
        let ((r, _w), mut peer) = pair();
        let watch = r.watch();
        assert!(watch.is_some());
        peer.write_all(b"bytes").await.expect("write");
        let early = tokio::time::timeout(Duration::from_millis(200), hang_up(watch.as_ref())).await;
        assert!(early.is_err(), "bytes are not a hang-up");
        drop(peer);
        tokio::time::timeout(WAIT, hang_up(watch.as_ref()))
            .await
            .expect("the hang-up is seen");
    }
}
