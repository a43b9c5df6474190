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
//!
//! Without that wake-up loongd's runtime thread parks after each answer, and on a virtual
//! machine whose idle CPU halts at once the client's next request pays for waking that CPU.
//! So a read that finds nothing first polls the socket for an adaptive window
//! ([`loong_ipc::spin`]: zero until the connection's waits prove short, zero again after a
//! long one), giving the runtime back between polls so that its other tasks run and its
//! driver is polled; only then does it wait for the runtime to wake it.

use std::{
    io::{self, Read},
    net::Shutdown,
    os::{fd::AsRawFd, unix::net::UnixStream as StdStream},
    pin::Pin,
    sync::{atomic::AtomicBool, Arc},
    task::{Context, Poll},
};

use loong_ipc::spin::{self, yield_to_runtime, SpinWait};

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
    let asked = Arc::new(AtomicBool::new(false));
    Ok((
        ReadSide::new(fd.clone(), asked.clone()),
        WriteSide(fd, asked),
    ))
}

/// The reading side: an [`AsyncRead`] woken by readability only, that polls the socket for
/// its spin window before it waits.
#[derive(Debug)]
pub(super) struct ReadSide {
    fd: Arc<AsyncFd<StdStream>>,
    /// Polls only within one window after loongd wrote to the client (`asked`): a client that
    /// trickles bytes without being answered cannot keep a runtime thread polling.
    spin: SpinWait,
}

impl ReadSide {
    fn new(fd: Arc<AsyncFd<StdStream>>, asked: Arc<AtomicBool>) -> ReadSide {
        ReadSide {
            fd,
            spin: SpinWait::default().asked_by(asked),
        }
    }

    /// A second handle on the socket that only watches for the peer's hang-up (see
    /// [`hang_up`]), for the times the connection stops reading; `None` if the socket cannot
    /// be duplicated or registered.
    pub(super) fn watch(&self) -> Option<AsyncFd<StdStream>> {
        let dup = self.fd.get_ref().try_clone().ok()?;
        register(dup, Interest::READABLE).ok()
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            let Poll::Ready(guard) = me.fd.poll_read_ready(cx) else {
                // Nothing to read that the runtime knows of: poll the socket itself while the
                // window lasts, giving the runtime back between polls; then wait for the
                // runtime (the task's waker is registered for readability either way).
                if !me.spin.again() {
                    return Poll::Pending;
                }
                match me.fd.get_ref().read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        me.spin.ended();
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        yield_to_runtime(cx);
                        return Poll::Pending;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            };
            let mut guard = guard?;
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
                    me.spin.ended();
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
pub(super) struct WriteSide(Arc<AsyncFd<StdStream>>, Arc<AtomicBool>);

impl WriteSide {
    /// Writes what the socket takes of `buf` now, without waiting (a client that left is an
    /// error, never a `SIGPIPE`).
    pub(super) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match send(self.0.get_ref().as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL) {
                Err(Errno::EINTR) => {}
                Ok(n) => {
                    spin::asked(&self.1);
                    return Ok(n);
                }
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
    use std::{io::Write, time::Duration};

    use loong_ipc::{spin::SpinWindow, test_support};
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

    /// Runs `read` on a current-thread runtime of its own thread over the reading side of a
    /// socket whose spin window is `spin` (the default when `None`); gives the thread's id
    /// and the peer's end of the socket.
    fn reading_thread<T: Send + 'static>(
        spin: Option<SpinWindow>,
        read: impl FnOnce(ReadSide, i32) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
            + Send
            + 'static,
    ) -> (i32, StdStream, std::thread::JoinHandle<T>) {
        let (ours, theirs) = StdStream::pair().expect("socket pair");
        let (tid, handle) = test_support::runtime_thread(move || {
            Box::pin(async move {
                let tid = test_support::thread_id();
                ours.set_nonblocking(true).expect("non-blocking");
                let ours = tokio::net::UnixStream::from_std(ours).expect("register");
                let (mut r, _w) = split(ours).expect("split");
                if let Some(spin) = spin {
                    r.spin.window = spin;
                }
                // As after loongd answered: the next wait may spin.
                r.spin.ask();
                read(r, tid).await
            })
        });
        (tid, theirs, handle)
    }

    /// Bytes that come within the spin window, in pieces, are read in order by a runtime
    /// thread that never sleeps for them. (Without the spin it sleeps in the runtime's park
    /// until each piece's readiness wakes it.)
    #[test]
    fn bytes_within_the_spin_window_are_read_in_order_without_sleeping() {
        let spin = SpinWindow::fixed(Duration::from_secs(3));
        let (_tid, mut peer, reader) = reading_thread(Some(spin), |mut r, tid| {
            Box::pin(async move {
                let before = test_support::sleeps(tid);
                let mut got = [0u8; 6];
                r.read_exact(&mut got).await.expect("read");
                (before, test_support::sleeps(tid), got)
            })
        });
        for piece in [&b"ab"[..], b"cd", b"ef"] {
            std::thread::sleep(Duration::from_millis(20));
            peer.write_all(piece).expect("write");
        }
        let (before, after, got) = reader.join().expect("reader");
        assert_eq!(&got, b"abcdef");
        assert_eq!(
            after, before,
            "the runtime thread slept while the bytes came"
        );
    }

    /// A read that spins gives the runtime back between its polls: another task of the same
    /// single-threaded runtime (a timer) runs on time while the read spins with nothing to
    /// read.
    #[test]
    fn a_spinning_read_lets_the_runtimes_other_tasks_run() {
        let spin = SpinWindow::fixed(Duration::from_secs(30));
        let (_tid, _peer, reader) = reading_thread(Some(spin), |mut r, _| {
            Box::pin(async move {
                let t = std::time::Instant::now();
                let timer = tokio::spawn(tokio::time::sleep(Duration::from_millis(20)));
                let mut byte = [0u8; 1];
                tokio::select! {
                    _ = r.read(&mut byte) => None,
                    _ = timer => Some(t.elapsed()),
                }
            })
        });
        let took = reader.join().expect("reader");
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(10)),
            "the timer task did not run while the read spun: {took:?}"
        );
    }

    /// A connection whose window grew with bytes that came at once, then goes quiet, leaves
    /// its runtime thread asleep well before long: the spin is bounded (SPIN_MAX). The
    /// control: a window that outlasts the quiet keeps the thread awake at the same point.
    #[test]
    fn a_quiet_connection_leaves_its_runtime_thread_asleep() {
        let probe = Duration::from_millis(200);
        for (spin, asleep) in [
            (None, true),
            (Some(SpinWindow::fixed(Duration::from_secs(2))), false),
        ] {
            let fixed = spin.as_ref().map(SpinWindow::window);
            let (tid, mut peer, reader) = reading_thread(spin, |mut r, _| {
                Box::pin(async move {
                    let mut byte = [0u8; 1];
                    // Each byte answered, as loongd answers a request: the next wait is one
                    // for what it asked, so the window grows while the bytes come quickly.
                    while r.read(&mut byte).await.is_ok_and(|n| n > 0) {
                        r.spin.ask();
                    }
                })
            });
            for _ in 0..50 {
                peer.write_all(b"x").expect("write");
                std::thread::sleep(Duration::from_micros(20));
            }
            std::thread::sleep(probe);
            let slept = test_support::asleep(tid);
            drop(peer);
            reader.join().expect("reader");
            assert_eq!(
                slept, asleep,
                "asleep {probe:?} after the last byte (fixed window {fixed:?})"
            );
        }
    }
}
