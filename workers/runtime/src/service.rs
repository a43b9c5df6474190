//! A service worker's end of kernel calls, usable from tokio: the gateway and the channel
//! workers originate work (an HTTP request, a chat message) and ask loongd for it while they
//! serve loongd's one `Serve` request.
//!
//! [`AsyncLink::start`] takes the [`KernelLink`] of that request. A reader thread owns the
//! socket's reading side: it hands each kernel call's answer to the task waiting for it
//! (matched by id), answers loongd's pings, and sees loongd withdraw the `Serve` request (a
//! `Cancel`: drain and stop) or close the socket. Any task writes its kernel call itself, one
//! whole frame under the writer's lock, so many calls are in flight at once. Every call names
//! the `Serve` request, as a [`KernelLink`]'s do. [`AsyncLink::close`] ends the reader and
//! refuses further calls before the worker answers `Serve`.

use std::{
    collections::HashMap,
    io,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::JoinHandle,
    time::Duration,
};

use loong_ipc::{Call, KernelRequest, Reply, RequestId, WorkerRequest, WorkerResponse};
use tokio::sync::{oneshot, watch};

use crate::{
    kernel::{self, Answer, Shared},
    KernelLink, KernelLinkError, Writer,
};

/// How long the reader waits for a frame before it looks whether it should end: the most
/// [`AsyncLink::close`] waits for it.
pub const READ_TICK: Duration = Duration::from_millis(100);

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Inner {
    call: RequestId,
    next: AtomicU64,
    writer: Arc<Mutex<Writer>>,
    /// Cleared (under the writer's lock) by `close`: no kernel call is written after it.
    open: AtomicBool,
    /// Tells the reader to end.
    quit: AtomicBool,
    pending: Mutex<HashMap<RequestId, oneshot::Sender<Answer>>>,
    /// `true` once loongd withdrew the `Serve` request or the link ended.
    stop: watch::Sender<bool>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

/// Kernel calls from many tasks at once on behalf of one `Serve` request. Cloning shares it.
#[derive(Clone)]
pub struct AsyncLink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AsyncLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncLink")
            .field("call", &self.inner.call)
            .finish_non_exhaustive()
    }
}

fn transport(e: impl std::fmt::Display) -> KernelLinkError {
    KernelLinkError::Transport(e.to_string())
}

/// Withdraws a kernel call whose caller stopped waiting (its deadline passed, or its task
/// was dropped): its answer, if one comes, is dropped.
struct Waiting<'a> {
    inner: &'a Inner,
    id: RequestId,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if locked(&self.inner.pending).remove(&self.id).is_some() {
            let _ = self
                .inner
                .write(&Reply::<WorkerResponse>::KernelCancel { id: self.id });
        }
    }
}

impl Inner {
    fn write(&self, frame: &Reply<WorkerResponse>) -> Result<(), KernelLinkError> {
        let mut w = locked(&self.writer);
        if !self.open.load(Ordering::Acquire) {
            return Err(transport("the service's link to loongd is closed"));
        }
        w.write(frame).map_err(transport)
    }
}

impl AsyncLink {
    /// Starts the reader thread for the `Serve` request `link` was handed with.
    pub fn start(link: KernelLink) -> Result<AsyncLink, KernelLinkError> {
        let (conn, call) = link.into_parts();
        let writer = kernel::lock(&conn).writer();
        let inner = Arc::new(Inner {
            call,
            next: AtomicU64::new(0),
            writer,
            open: AtomicBool::new(true),
            quit: AtomicBool::new(false),
            pending: Mutex::default(),
            stop: watch::Sender::new(false),
            reader: Mutex::new(None),
        });
        let for_reader = inner.clone();
        let handle = std::thread::Builder::new()
            .name("kernel-link".into())
            .spawn(move || read_loop(&for_reader, &conn))
            .map_err(transport)?;
        *locked(&inner.reader) = Some(handle);
        Ok(AsyncLink { inner })
    }

    /// The `Serve` request this link speaks for.
    pub fn call_id(&self) -> RequestId {
        self.inner.call
    }

    /// One kernel call and its answer, waiting at most `timeout`; past it (or when the
    /// returned future is dropped) the call is withdrawn.
    pub async fn call(
        &self,
        req: KernelRequest,
        timeout: Duration,
    ) -> Result<Vec<u8>, KernelLinkError> {
        let inner = &*self.inner;
        let id = inner.next.fetch_add(1, Ordering::Relaxed) + 1;
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let frame = req.encode(id, inner.call, ms)?;
        let (tx, rx) = oneshot::channel();
        locked(&inner.pending).insert(id, tx);
        let waiting = Waiting { inner, id };
        inner.write(&Reply::Kernel(frame))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => {
                std::mem::forget(waiting);
                answer.map_err(KernelLinkError::Remote)
            }
            Ok(Err(_)) => Err(transport("the link to loongd ended before the answer")),
            Err(_) => Err(KernelLinkError::Timeout(timeout)),
        }
    }

    /// Whether loongd has asked the service to stop (or the link ended).
    pub fn stopping(&self) -> bool {
        *self.inner.stop.borrow()
    }

    /// Resolves once loongd withdrew the `Serve` request (drain and stop) or the link ended.
    pub async fn stopped(&self) {
        let mut rx = self.inner.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Refuses further kernel calls, fails those still waiting, and ends the reader thread
    /// (waiting at most about [`READ_TICK`]), so that the worker's serve loop reads the socket
    /// again. Call it before answering the `Serve` request.
    pub fn close(&self) {
        {
            let _w = locked(&self.inner.writer);
            self.inner.open.store(false, Ordering::Release);
        }
        self.inner.quit.store(true, Ordering::Release);
        let handle = locked(&self.inner.reader).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        locked(&self.inner.pending).clear();
        self.inner.stop.send_replace(true);
    }
}

fn read_loop(inner: &Inner, conn: &Shared) {
    let ended = |why: &str| {
        let _ = why;
        inner.stop.send_replace(true);
        locked(&inner.pending).clear();
    };
    while !inner.quit.load(Ordering::Acquire) {
        let frame: Call<WorkerRequest> = match kernel::lock(conn).read(Some(READ_TICK)) {
            Ok(Some(f)) => f,
            Ok(None) => return ended("loongd closed the socket"),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
            Err(e) => return ended(&e.to_string()),
        };
        match frame {
            Call::KernelReply { id, result } => {
                if let Some(tx) = locked(&inner.pending).remove(&id) {
                    let _ = tx.send(result);
                }
            }
            Call::Ping { nonce } => {
                if locked(&inner.writer)
                    .write(&Reply::<WorkerResponse>::Pong { nonce })
                    .is_err()
                {
                    return ended("writing a pong failed");
                }
            }
            // loongd withdrew the Serve request: drain and stop.
            Call::Cancel { id } if id == inner.call => {
                inner.stop.send_replace(true);
            }
            // loongd sends no second request while Serve is in flight.
            Call::Request { .. } => return ended("loongd sent a request while Serve runs"),
            Call::Cancel { .. } | Call::Stream { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loong_ipc::{
        frame::{self, FrameBuffer, FrameLimit},
        message::worker::WORKER_MAX_FRAME_BYTES,
        ErrorKind, InvokeTool, KernelCall, RemoteError,
    };
    use std::{
        io::{Read, Write},
        os::unix::net::UnixStream,
    };

    /// loongd's end, blocking: reads kernel calls, writes answers.
    struct Loongd {
        sock: UnixStream,
        buf: FrameBuffer,
        limit: FrameLimit,
    }

    impl Loongd {
        fn read(&mut self) -> Reply<WorkerResponse> {
            loop {
                if let Some(body) = self.buf.next_body().expect("frame") {
                    return frame::decode_body(&body).expect("decodes");
                }
                let sock = &mut self.sock;
                let n = self
                    .buf
                    .fill(|space| sock.read(space))
                    .expect("room")
                    .expect("reads");
                assert!(n > 0, "the worker closed its end");
            }
        }

        fn write(&mut self, call: &Call<WorkerRequest>) {
            let mut out = Vec::new();
            frame::encode(call, self.limit, &mut out).expect("encodes");
            self.sock.write_all(&out).expect("writes");
        }
    }

    fn pair(call: RequestId) -> (AsyncLink, Shared, Loongd) {
        let (worker, loongd) = UnixStream::pair().expect("socketpair");
        let conn = crate::Conn::new(worker).expect("conn").shared();
        let link = AsyncLink::start(KernelLink::new(conn.clone(), call)).expect("starts");
        let limit = FrameLimit::new(u64::from(WORKER_MAX_FRAME_BYTES)).expect("limit");
        (
            link,
            conn,
            Loongd {
                sock: loongd,
                buf: FrameBuffer::new(limit),
                limit,
            },
        )
    }

    fn invoke(n: usize) -> KernelRequest {
        KernelRequest::InvokeTool(InvokeTool {
            tool: "echo".into(),
            input: format!("{n}"),
        })
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("runtime")
    }

    #[test]
    fn many_calls_in_flight_each_get_their_own_answer_in_any_order() {
        const CALLS: usize = 200;
        let (link, _conn, mut loongd) = pair(9);
        let server = std::thread::spawn(move || {
            let mut got: Vec<KernelCall> = Vec::new();
            while got.len() < CALLS {
                match loongd.read() {
                    Reply::Kernel(k) => got.push(k),
                    other => panic!("unexpected frame {other:?}"),
                }
            }
            // Answer in reverse order, echoing each call's input.
            for k in got.iter().rev() {
                assert_eq!(k.call, 9, "every call names the Serve request");
                let Ok(KernelRequest::InvokeTool(t)) = k.request() else {
                    panic!("an invoke")
                };
                loongd.write(&Call::KernelReply {
                    id: k.id,
                    result: Ok(t.input.into_bytes()),
                });
            }
            loongd
        });
        let rt = runtime();
        let answers = rt.block_on(async {
            let mut tasks = Vec::new();
            for n in 0..CALLS {
                let link = link.clone();
                tasks.push(tokio::spawn(async move {
                    link.call(invoke(n), Duration::from_secs(20)).await
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("joins"));
            }
            out
        });
        for (n, a) in answers.into_iter().enumerate() {
            assert_eq!(a.expect("answered"), format!("{n}").into_bytes());
        }
        let _loongd = server.join().expect("server");
        link.close();
    }

    #[test]
    fn a_call_past_its_timeout_is_withdrawn_and_a_remote_error_is_typed() {
        let (link, _conn, mut loongd) = pair(4);
        let rt = runtime();
        let server = std::thread::spawn(move || {
            let Reply::Kernel(first) = loongd.read() else {
                panic!("a kernel call")
            };
            // Not answered: the worker withdraws it.
            let Reply::KernelCancel { id } = loongd.read() else {
                panic!("a cancel")
            };
            assert_eq!(id, first.id);
            let Reply::Kernel(second) = loongd.read() else {
                panic!("a kernel call")
            };
            loongd.write(&Call::KernelReply {
                id: second.id,
                result: Err(RemoteError::new(ErrorKind::Denied, "no grant")),
            });
            loongd
        });
        rt.block_on(async {
            let r = link.call(invoke(1), Duration::from_millis(200)).await;
            assert!(matches!(r, Err(KernelLinkError::Timeout(_))), "{r:?}");
            let r = link.call(invoke(2), Duration::from_secs(20)).await;
            assert!(
                matches!(&r, Err(KernelLinkError::Remote(e)) if e.kind == ErrorKind::Denied),
                "{r:?}"
            );
        });
        let _loongd = server.join().expect("server");
        link.close();
    }

    #[test]
    fn a_cancel_of_the_serve_request_asks_the_service_to_stop_and_close_frees_the_socket() {
        let (link, conn, mut loongd) = pair(3);
        assert!(!link.stopping());
        // A ping is answered while serving; a cancel of another request changes nothing.
        loongd.write(&Call::Ping { nonce: 77 });
        assert!(matches!(loongd.read(), Reply::Pong { nonce: 77 }));
        loongd.write(&Call::Cancel { id: 2 });
        loongd.write(&Call::Ping { nonce: 78 });
        assert!(matches!(loongd.read(), Reply::Pong { nonce: 78 }));
        assert!(
            !link.stopping(),
            "a cancel of another request is not a stop"
        );
        loongd.write(&Call::Cancel { id: 3 });
        let rt = runtime();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), link.stopped())
                .await
                .expect("stop seen");
        });
        link.close();
        // Closed: no kernel call is written any more.
        let r = rt.block_on(link.call(invoke(1), Duration::from_secs(1)));
        assert!(matches!(r, Err(KernelLinkError::Transport(_))), "{r:?}");
        // The serve loop reads the socket again.
        loongd.write(&Call::Ping { nonce: 5 });
        let frame: Option<Call<WorkerRequest>> = kernel::lock(&conn)
            .read(Some(Duration::from_secs(5)))
            .expect("reads");
        assert!(matches!(frame, Some(Call::Ping { nonce: 5 })), "{frame:?}");
    }

    #[test]
    fn loongd_closing_the_socket_fails_the_waiting_calls_and_stops() {
        let (link, _conn, mut loongd) = pair(1);
        let rt = runtime();
        let server = std::thread::spawn(move || {
            let _ = loongd.read();
            drop(loongd);
        });
        let r = rt.block_on(link.call(invoke(1), Duration::from_secs(20)));
        assert!(matches!(r, Err(KernelLinkError::Transport(_))), "{r:?}");
        assert!(link.stopping());
        server.join().expect("server");
        link.close();
    }
}
