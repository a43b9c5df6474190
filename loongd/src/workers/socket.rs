//! loongd's end of a worker's socket, registered with the runtime for reading only.
//!
//! A Unix stream socket wakes every waiter on its sender's side each time the peer consumes
//! what the sender wrote (the kernel's write-space wake-up). A socket registered for both
//! directions (what `tokio::net::UnixStream` does) therefore wakes a parked runtime thread
//! each time a worker reads a request loongd sent it, for nothing: no task waits to write.
//! Here the socket is registered for readability only, and a write that finds the socket
//! full (a module being loaded, larger than the socket's buffer) registers a duplicate of it
//! for writability for as long as writes keep blocking.

use std::{
    io::{self, Read, Write},
    os::{fd::OwnedFd, unix::net::UnixStream},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use tokio::io::{unix::AsyncFd, AsyncRead, AsyncWrite, Interest, ReadBuf};

/// The reading half.
#[derive(Debug)]
pub(super) struct ReadHalf {
    sock: Arc<UnixStream>,
    /// A duplicate of the socket, registered for readability: it only tells when to read.
    readable: AsyncFd<OwnedFd>,
}

/// The writing half.
#[derive(Debug)]
pub(super) struct WriteHalf {
    sock: Arc<UnixStream>,
    /// A duplicate of the socket registered for writability, while writes block.
    waiting: Option<AsyncFd<OwnedFd>>,
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
    Ok((
        ReadHalf {
            sock: sock.clone(),
            readable,
        },
        WriteHalf {
            sock,
            waiting: None,
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
            let mut guard = ready!(me.readable.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|_| (&*me.sock).read(unfilled)) {
                Ok(Ok(n)) => {
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
        test_support::settled,
        Call, Reply, WorkerRequest, WorkerResponse,
    };

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
}
