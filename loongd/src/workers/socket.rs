//! loongd's end of a worker's socket, registered with the runtime for reading only.
//!
//! A Unix stream socket wakes every waiter on its sender's side each time the peer consumes
//! what the sender wrote (the kernel's write-space wake-up). A socket registered for both
//! directions (what `tokio::net::UnixStream` does) therefore wakes a parked runtime thread
//! each time a worker reads a request loongd sent it, for nothing: no task waits to write.
//! Here the socket is registered for readability only, and a write that finds the socket
//! full (a module being loaded, larger than the socket's buffer) registers a duplicate of it
//! for writability for as long as writes keep blocking.
//!
//! A read that finds nothing polls the socket for an adaptive window first
//! ([`loong_ipc::spin`], as a control connection's reading side does), giving the runtime back
//! between polls: a warm call's answer, which a worker writes within a few tens of
//! microseconds, then finds loongd's runtime thread, and its CPU, awake. The window is zero
//! until the worker's answers prove quick, and zero again after one that was not (a slow
//! call, an idle worker): such a wait costs one window at most, then sleeps.

use std::{
    io::{self, Read, Write},
    os::{fd::OwnedFd, unix::net::UnixStream},
    pin::Pin,
    sync::{atomic::AtomicBool, Arc},
    task::{ready, Context, Poll},
};

use loong_ipc::spin::{self, yield_to_runtime, SpinWait};
use tokio::io::{unix::AsyncFd, AsyncRead, AsyncWrite, Interest, ReadBuf};

/// The reading half.
#[derive(Debug)]
pub(super) struct ReadHalf {
    sock: Arc<UnixStream>,
    /// A duplicate of the socket, registered for readability: it only tells when to read.
    readable: AsyncFd<OwnedFd>,
    /// How long a read that finds nothing polls before it waits for the runtime: only within
    /// one window after loongd wrote to the worker (`asked`), so a worker that sends what
    /// nobody asked for, a byte at a time, cannot keep a runtime thread polling.
    spin: SpinWait,
}

/// The writing half.
#[derive(Debug)]
pub(super) struct WriteHalf {
    sock: Arc<UnixStream>,
    /// A duplicate of the socket registered for writability, while writes block.
    waiting: Option<AsyncFd<OwnedFd>>,
    /// Tells the reading half that loongd wrote (its next wait may spin).
    asked: Arc<AtomicBool>,
}

/// A duplicate of `sock` registered with the runtime for `interest` only. The registration
/// owns its `OwnedFd`, which nothing can close or swap under it (the safe constructor is
/// deprecated only for types that could; its replacement is `unsafe`, which this crate does
/// not allow).
#[allow(deprecated)]
fn register(sock: &UnixStream, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::with_interest(OwnedFd::from(sock.try_clone()?), interest)
}

/// Splits `sock` (made non-blocking) into its halves, registered for reading only.
pub(super) fn split(sock: UnixStream) -> io::Result<(ReadHalf, WriteHalf)> {
    sock.set_nonblocking(true)?;
    let readable = register(&sock, Interest::READABLE)?;
    let sock = Arc::new(sock);
    let asked = Arc::new(AtomicBool::new(false));
    Ok((
        ReadHalf {
            sock: sock.clone(),
            readable,
            spin: SpinWait::default().asked_by(asked.clone()),
        },
        WriteHalf {
            sock,
            waiting: None,
            asked,
        },
    ))
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            let Poll::Ready(guard) = me.readable.poll_read_ready(cx) else {
                // Nothing to read that the runtime knows of: poll the socket itself while the
                // window lasts, giving the runtime back between polls; then wait for the
                // runtime (the task's waker is registered for readability either way).
                if !me.spin.again() {
                    return Poll::Pending;
                }
                match (&*me.sock).read(buf.initialize_unfilled()) {
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
            match guard.try_io(|_| (&*me.sock).read(unfilled)) {
                Ok(Ok(n)) => {
                    me.spin.ended();
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        loop {
            match (&*me.sock).write(data) {
                Ok(n) => {
                    me.waiting = None;
                    spin::asked(&me.asked);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Registered after the write failed: room made since is reported at once.
            let waiting = match &mut me.waiting {
                Some(w) => w,
                None => me.waiting.insert(register(&me.sock, Interest::WRITABLE)?),
            };
            let mut guard = ready!(waiting.poll_write_ready(cx))?;
            guard.clear_ready();
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.sock.shutdown(std::net::Shutdown::Write))
    }
}

impl Drop for WriteHalf {
    /// The worker sees the end of the stream, as with tokio's own write half.
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use loong_ipc::{
        connection::{FrameReader, FrameWriter},
        frame::{self, FrameBuffer, FrameLimit},
        spin::SpinWindow,
        test_support::{self, settled},
        Call, Reply, WorkerRequest, WorkerResponse,
    };
    use tokio::io::AsyncReadExt;

    use super::*;

    /// loongd, waiting for a worker's answer, is not woken when the worker reads the
    /// request loongd sent (the socket's write-space wake-up), only by the answer; and a
    /// frame larger than the socket's buffer is still written whole, waiting for room.
    #[test]
    fn loongd_waiting_for_an_answer_sleeps_through_the_worker_reading_its_request() {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let limit = FrameLimit::new(8 << 20).expect("limit");
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let big = vec![7u8; 4 << 20];
        let sent = big.clone();
        let loongd = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let (r, w) = split(ours).expect("split");
                let mut reader = FrameReader::new(r, limit, Duration::from_secs(30));
                let mut writer = FrameWriter::new(w, limit, Duration::from_secs(30));
                tid_tx.send(nix::unistd::gettid().as_raw()).expect("tid");
                writer
                    .write(&Call::<WorkerRequest>::Ping { nonce: 1 })
                    .await
                    .expect("request");
                let first = reader.read::<Reply<WorkerResponse>>(None).await;
                // A frame larger than the socket takes at once.
                writer
                    .write(&Call::<WorkerRequest>::KernelReply {
                        id: 9,
                        result: Ok(sent),
                    })
                    .await
                    .expect("a large frame");
                let second = reader.read::<Reply<WorkerResponse>>(None).await;
                (first, second)
            })
        });
        let tid = tid_rx.recv().expect("tid");
        let mut worker = theirs;
        let mut buf = FrameBuffer::new(limit);
        let mut next = |worker: &mut UnixStream| -> Call<WorkerRequest> {
            loop {
                if let Some(body) = buf.next_body().expect("frame") {
                    return frame::decode_body(&body).expect("decodes");
                }
                buf.fill(|space| worker.read(space))
                    .expect("fill")
                    .expect("read");
            }
        };
        let before = settled(tid);
        // The worker reads the request: loongd's wait must not end for it.
        let request = next(&mut worker);
        assert!(matches!(request, Call::Ping { nonce: 1 }), "{request:?}");
        let after = settled(tid);
        assert_eq!(
            after, before,
            "loongd was woken by the worker reading its request"
        );
        // The control: the answer wakes it, and it is read.
        let answer = |worker: &mut UnixStream, nonce| {
            let mut out = Vec::new();
            frame::encode(&Reply::<WorkerResponse>::Pong { nonce }, limit, &mut out)
                .expect("encode");
            worker.write_all(&out).expect("answer");
        };
        answer(&mut worker, 1);
        let large = next(&mut worker);
        assert!(
            matches!(&large, Call::KernelReply { id: 9, result: Ok(data) } if *data == big),
            "the large frame arrives whole"
        );
        answer(&mut worker, 2);
        let (first, second) = loongd.join().expect("thread");
        assert!(
            matches!(first, Ok(Some(Reply::Pong { nonce: 1 }))),
            "{first:?}"
        );
        assert!(
            matches!(second, Ok(Some(Reply::Pong { nonce: 2 }))),
            "{second:?}"
        );
    }

    /// Runs `read` on a current-thread runtime of its own thread over the reading half of a
    /// worker socket whose spin window is `spin` (the default when `None`), as loongd reads
    /// after it sent the worker a request; gives the thread's id and the worker's end.
    fn reading_thread<T: Send + 'static>(
        spin: Option<SpinWindow>,
        read: impl FnOnce(ReadHalf) -> Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
    ) -> (i32, UnixStream, std::thread::JoinHandle<T>) {
        reading_thread_asked(spin, true, read)
    }

    /// [`reading_thread`], loongd having sent the worker something (`asked`) or not.
    fn reading_thread_asked<T: Send + 'static>(
        spin: Option<SpinWindow>,
        asked: bool,
        read: impl FnOnce(ReadHalf) -> Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
    ) -> (i32, UnixStream, std::thread::JoinHandle<T>) {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let (tid, handle) = test_support::runtime_thread(move || {
            Box::pin(async move {
                let (mut r, _w) = split(ours).expect("split");
                if let Some(spin) = spin {
                    r.spin.window = spin;
                }
                if asked {
                    r.spin.ask();
                }
                read(r).await
            })
        });
        (tid, theirs, handle)
    }

    /// A worker's answer that comes within the spin window, in pieces, is read in order by a
    /// runtime thread that never sleeps for it. (Without the spin it sleeps in the runtime's
    /// park until each piece's readiness wakes it.)
    #[test]
    fn an_answer_within_the_spin_window_is_read_without_sleeping() {
        for (spin, sleeps) in [
            (Some(SpinWindow::fixed(Duration::from_secs(3))), false),
            (None, true),
        ] {
            let (_tid, mut worker, reader) = reading_thread(spin, |mut r| {
                Box::pin(async move {
                    let tid = test_support::thread_id();
                    let before = test_support::sleeps(tid);
                    let mut got = [0u8; 6];
                    r.read_exact(&mut got).await.expect("read");
                    (before, test_support::sleeps(tid), got)
                })
            });
            for piece in [&b"ab"[..], b"cd", b"ef"] {
                std::thread::sleep(Duration::from_millis(20));
                worker.write_all(piece).expect("write");
            }
            let (before, after, got) = reader.join().expect("reader");
            assert_eq!(&got, b"abcdef");
            assert_eq!(
                after != before,
                sleeps,
                "the runtime thread slept while the answer came in pieces"
            );
        }
    }

    /// A worker that sends what loongd did not ask for (here a byte at a time, with a window
    /// that would outlast them all) finds loongd's runtime thread asleep for each piece: a
    /// read spins only within one window after loongd wrote, so a worker cannot keep a
    /// runtime thread polling for as long as it trickles bytes. The control: the same pieces
    /// after loongd wrote are read without sleeping.
    #[test]
    fn a_worker_that_trickles_bytes_nobody_asked_for_finds_loongd_asleep() {
        for asked in [false, true] {
            let spin = Some(SpinWindow::fixed(Duration::from_secs(3)));
            let (_tid, mut worker, reader) = reading_thread_asked(spin, asked, |mut r| {
                Box::pin(async move {
                    let tid = test_support::thread_id();
                    let before = test_support::sleeps(tid);
                    let mut got = [0u8; 4];
                    r.read_exact(&mut got).await.expect("read");
                    (test_support::sleeps(tid) - before, got)
                })
            });
            for piece in [&b"a"[..], b"b", b"c", b"d"] {
                std::thread::sleep(Duration::from_millis(20));
                worker.write_all(piece).expect("write");
            }
            let (slept, got) = reader.join().expect("reader");
            assert_eq!(&got, b"abcd");
            if asked {
                assert_eq!(
                    slept, 0,
                    "asked, the pieces within the window find it awake"
                );
            } else {
                assert!(slept >= 4, "unasked, it slept {slept} times for 4 pieces");
            }
        }
    }

    /// A read that spins gives the runtime back between its polls: another task of the same
    /// single-threaded runtime (a timer) runs on time while the read spins with nothing to
    /// read.
    #[test]
    fn a_spinning_read_lets_the_runtimes_other_tasks_run() {
        let spin = SpinWindow::fixed(Duration::from_secs(30));
        let (_tid, _worker, reader) = reading_thread(Some(spin), |mut r| {
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

    /// A worker connection whose window grew with answers that came at once, then goes
    /// quiet (a slow call, an idle worker), leaves its runtime thread asleep well before
    /// long: the spin is bounded (SPIN_MAX). The control: a window that outlasts the quiet
    /// keeps the thread awake at the same point.
    #[test]
    fn a_quiet_worker_leaves_the_runtime_thread_asleep() {
        let probe = Duration::from_millis(200);
        for (spin, asleep) in [
            (None, true),
            (Some(SpinWindow::fixed(Duration::from_secs(2))), false),
        ] {
            let fixed = spin.is_some();
            let (tid, mut worker, reader) = reading_thread(spin, |mut r| {
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
                worker.write_all(b"x").expect("write");
                std::thread::sleep(Duration::from_micros(20));
            }
            std::thread::sleep(probe);
            let slept = test_support::asleep(tid);
            drop(worker);
            reader.join().expect("reader");
            assert_eq!(
                slept, asleep,
                "asleep {probe:?} after the last byte (fixed window: {fixed})"
            );
        }
    }
}
