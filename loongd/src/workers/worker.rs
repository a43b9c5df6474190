//! One worker process and loongd's end of its socket: a request and its answer within a
//! deadline, a ping, the passing of a connection on the broker socket, whether the process
//! has exited, and its stderr relayed to the log. Every way a worker fails is a
//! [`WorkerFault`], whose class the call that met it fails with.

use std::{collections::HashMap, future::Future, pin::Pin, task::Poll, time::Duration};

use loong_ipc::{
    connection::{FrameReader, FrameWriter},
    Budget, BudgetExceeded, Call, ErrorDetail, ErrorKind, FailureClass, KernelCall, RemoteError,
    Reply, RequestId, WorkerRequest, WorkerResponse,
};
use loong_sandbox::Child;
use tokio::io::AsyncReadExt;

use super::socket::{ReadHalf, WriteHalf};

/// How long a worker has from spawn to a finished handshake.
pub const WORKER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a ping may take.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes of a worker's stderr kept for the log.
pub const MAX_WORKER_STDERR_BYTES: usize = 16 * 1024;
/// Largest frame write may take this long before the worker counts as stuck.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One worker process and the caller's end of its socket.
pub(super) struct Worker {
    pub(super) id: u64,
    pub(super) pid: u32,
    pub(super) reader: FrameReader<ReadHalf>,
    pub(super) writer: FrameWriter<WriteHalf>,
    pub(super) child: Option<Child>,
    pub(super) loaded: HashMap<String, u64>,
    pub(super) next_req: u64,
    /// loongd's end of the worker's fd 4, for a kind with a broker.
    pub(super) broker: Option<std::os::unix::net::UnixStream>,
    /// It has been sent a call (guest code may have run in it): loongd takes no compiled
    /// module from it any more.
    pub(super) served: bool,
    /// The principal (a token's public id, or the operator's own) whose calls it has served,
    /// in a pool that keeps one principal per worker ([`super::Supervisor`]'s agent pool).
    pub(super) principal: Option<String>,
}

/// Why a request to a worker failed (the worker is retired for each).
#[derive(Debug, thiserror::Error)]
pub(super) enum WorkerFault {
    /// No answer within the deadline.
    #[error("no answer within {} ms", .0.as_millis())]
    Deadline(Duration),
    /// The socket failed or closed: the worker died or is dying.
    #[error("{0}")]
    Died(String),
    /// The worker answered with something it must not (an unexpected frame, an answer out of
    /// bounds).
    #[error("{0}")]
    Protocol(String),
}

impl WorkerFault {
    pub(super) fn class(&self) -> FailureClass {
        match self {
            WorkerFault::Deadline(_) => FailureClass::WorkerDeadline,
            WorkerFault::Died(_) => FailureClass::WorkerDied,
            WorkerFault::Protocol(_) => FailureClass::WorkerProtocol,
        }
    }
}

/// A kernel call's answer in the making: the answer's bytes, or why there are none.
pub(crate) type KernelAnswer<'h> =
    Pin<Box<dyn Future<Output = Result<Vec<u8>, RemoteError>> + Send + 'h>>;

/// What serves the kernel calls a worker makes while it runs one call: the effect path,
/// bound to that call's chain.
pub(crate) trait KernelCalls: Send + Sync {
    /// Kernel calls one worker may have in flight at once.
    fn max_in_flight(&self) -> usize;
    /// Starts `call`, made by worker `worker`; dropping the answer abandons it.
    fn start(&self, worker: u64, call: KernelCall) -> KernelAnswer<'_>;
}

/// Polls every kernel call in flight; the first to finish, with its id.
async fn next_done(
    inflight: &mut Vec<(RequestId, KernelAnswer<'_>)>,
) -> (RequestId, Result<Vec<u8>, RemoteError>) {
    std::future::poll_fn(|cx| {
        for i in 0..inflight.len() {
            if let Poll::Ready(r) = inflight[i].1.as_mut().poll(cx) {
                let (id, _) = inflight.swap_remove(i);
                return Poll::Ready((id, r));
            }
        }
        Poll::Pending
    })
    .await
}

/// What happened first while a request runs.
enum Event {
    /// The request is withdrawn, with this long to drain ([`Worker::serve_until`]).
    Stop(Duration),
    Frame(Result<Option<Reply<WorkerResponse>>, loong_ipc::connection::ConnError>),
    Done(RequestId, Result<Vec<u8>, RemoteError>),
}

fn refusal(kind: ErrorKind, message: String) -> RemoteError {
    RemoteError::new(kind, message)
}

impl Worker {
    /// Sends one request and waits for its answer until `deadline`.
    pub(super) async fn request(
        &mut self,
        body: WorkerRequest,
        deadline: Duration,
    ) -> Result<WorkerResponse, WorkerFault> {
        self.serve(body, deadline, None).await
    }

    /// Sends one request and waits for its answer until `deadline`, serving the kernel
    /// calls the worker makes meanwhile with `host` (without one, each is refused). A
    /// kernel call must name this request; at most `host.max_in_flight()` run at once. When
    /// the answer comes (or the deadline passes) the calls still in flight are abandoned.
    pub(super) async fn serve(
        &mut self,
        body: WorkerRequest,
        deadline: Duration,
        host: Option<&dyn KernelCalls>,
    ) -> Result<WorkerResponse, WorkerFault> {
        self.serve_until(body, deadline, host, None).await
    }

    /// [`Worker::serve`], for a request that runs until it is withdrawn (a service's
    /// `Serve`): when `stop` resolves with a drain time, loongd sends the worker a `Cancel` of
    /// the request and waits for its answer that much longer at most (within `deadline`).
    pub(super) async fn serve_until(
        &mut self,
        body: WorkerRequest,
        deadline: Duration,
        host: Option<&dyn KernelCalls>,
        mut stop: Option<Pin<&mut (dyn Future<Output = Duration> + Send)>>,
    ) -> Result<WorkerResponse, WorkerFault> {
        self.next_req += 1;
        let id = self.next_req;
        let call = Call::Request {
            id,
            deadline_ms: u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX),
            body,
        };
        let mut until = tokio::time::Instant::now() + deadline;
        self.writer
            .write(&call)
            .await
            .map_err(|e| WorkerFault::Died(format!("sending the request: {e}")))?;
        let mut inflight: Vec<(RequestId, KernelAnswer<'_>)> = Vec::new();
        let mut limit = deadline;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let reader = &mut self.reader;
            let waiting = &mut inflight;
            let stopping = &mut stop;
            let event = tokio::time::timeout(left, async move {
                let stop_now = async {
                    match stopping {
                        Some(f) => f.as_mut().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    (kid, r) = next_done(waiting), if !waiting.is_empty() => Event::Done(kid, r),
                    frame = reader.read::<Reply<WorkerResponse>>(None) => Event::Frame(frame),
                    drain = stop_now => Event::Stop(drain),
                }
            })
            .await
            .map_err(|_| WorkerFault::Deadline(limit))?;
            let reply = match event {
                Event::Done(kid, result) => {
                    self.answer(kid, result).await?;
                    continue;
                }
                Event::Stop(drain) => {
                    // Withdrawn: the worker drains within `drain` and answers.
                    stop = None;
                    let cancel = Call::<WorkerRequest>::Cancel { id };
                    tokio::time::timeout(WRITE_TIMEOUT, self.writer.write(&cancel))
                        .await
                        .map_err(|_| WorkerFault::Deadline(WRITE_TIMEOUT))?
                        .map_err(|e| WorkerFault::Died(format!("withdrawing the request: {e}")))?;
                    until = until.min(tokio::time::Instant::now() + drain);
                    limit = drain;
                    continue;
                }
                Event::Frame(frame) => frame
                    .map_err(|e| WorkerFault::Died(format!("reading the answer: {e}")))?
                    .ok_or_else(|| WorkerFault::Died("the worker closed its socket".into()))?,
            };
            match reply {
                Reply::Response { id: got, result } if got == id => {
                    return result.map_err(|e| WorkerFault::Protocol(format!("worker error: {e}")))
                }
                Reply::Pong { .. } => continue,
                Reply::Kernel(k) => {
                    let kid = k.id;
                    // A worker's runtime binds every kernel call to the request it serves;
                    // one that names another (a request answered before, one never sent) was
                    // forged by something in the worker that is not its runtime (a guest that
                    // escaped into the process, which may serve other plugins' calls later):
                    // a protocol violation, and the worker is retired.
                    if k.call != id {
                        return Err(WorkerFault::Protocol(format!(
                            "kernel call {kid} names call {}, but this worker serves call {id}: a worker asks only for the call it serves",
                            k.call
                        )));
                    }
                    let refused = match host {
                        None => Some(refusal(
                            ErrorKind::Denied,
                            "kernel calls are served only while a worker runs a tool call".into(),
                        )),
                        Some(_) if inflight.iter().any(|(i, _)| *i == kid) => Some(refusal(
                            ErrorKind::DuplicateId,
                            format!("kernel call {kid} is already in flight; use a new id"),
                        )),
                        Some(h) if inflight.len() >= h.max_in_flight() => Some(
                            refusal(
                                ErrorKind::Overloaded,
                                format!(
                                    "kernel call {kid}: {} kernel calls are already in flight from this worker, the most allowed (kernel_calls.max_in_flight)",
                                    inflight.len()
                                ),
                            )
                            .with_detail(ErrorDetail::BudgetExceeded(BudgetExceeded {
                                budget: Budget::InFlight,
                                limit: h.max_in_flight() as u64,
                            })),
                        ),
                        Some(_) => None,
                    };
                    match (refused, host) {
                        (Some(e), _) => self.answer(kid, Err(e)).await?,
                        (None, Some(h)) => inflight.push((kid, h.start(self.id, k))),
                        (None, None) => {}
                    }
                }
                // Withdrawn: dropping its future abandons the call (its record is closed).
                Reply::KernelCancel { id: kid } => inflight.retain(|(i, _)| *i != kid),
                other => {
                    return Err(WorkerFault::Protocol(format!(
                        "unexpected frame from the worker: {}",
                        frame_name(&other)
                    )))
                }
            }
        }
    }

    /// Answers kernel call `id`.
    async fn answer(
        &mut self,
        id: RequestId,
        result: Result<Vec<u8>, RemoteError>,
    ) -> Result<(), WorkerFault> {
        let reply = Call::<WorkerRequest>::KernelReply { id, result };
        tokio::time::timeout(WRITE_TIMEOUT, self.writer.write(&reply))
            .await
            .map_err(|_| WorkerFault::Deadline(WRITE_TIMEOUT))?
            .map_err(|e| WorkerFault::Died(format!("answering a kernel call: {e}")))
    }

    /// A ping answered within [`PING_TIMEOUT`].
    pub(super) async fn ping(&mut self) -> Result<(), WorkerFault> {
        let nonce = self.next_req.wrapping_add(1) ^ 0x5eed;
        self.writer
            .write(&Call::<WorkerRequest>::Ping { nonce })
            .await
            .map_err(|e| WorkerFault::Died(format!("sending a ping: {e}")))?;
        let reply = tokio::time::timeout(
            PING_TIMEOUT,
            self.reader.read::<Reply<WorkerResponse>>(None),
        )
        .await
        .map_err(|_| WorkerFault::Deadline(PING_TIMEOUT))?
        .map_err(|e| WorkerFault::Died(format!("reading a pong: {e}")))?;
        match reply {
            Some(Reply::Pong { nonce: n }) if n == nonce => Ok(()),
            Some(other) => Err(WorkerFault::Protocol(format!(
                "unexpected frame for a ping: {}",
                frame_name(&other)
            ))),
            None => Err(WorkerFault::Died("the worker closed its socket".into())),
        }
    }

    /// Passes a socket loongd connected for the call to the worker, on its broker socket
    /// (fd 4); the worker holds its own copy afterwards.
    pub(super) fn pass_connection(&self, conn: &std::net::TcpStream) -> Result<(), WorkerFault> {
        let broker = self.broker.as_ref().ok_or_else(|| {
            WorkerFault::Protocol("a worker without a broker socket was handed a connection".into())
        })?;
        loong_sandbox::worker::send_connection(broker, std::os::fd::AsFd::as_fd(conn))
            .map_err(|e| WorkerFault::Died(format!("passing the connection: {e}")))
    }

    /// Whether the worker process has exited (its pidfd is readable).
    pub(super) fn exited(&self) -> bool {
        self.child.as_ref().is_none_or(|c| {
            let mut fds = [nix::poll::PollFd::new(
                c.pidfd(),
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).is_ok_and(|n| n > 0)
        })
    }
}

fn frame_name(r: &Reply<WorkerResponse>) -> &'static str {
    match r {
        Reply::Response { .. } => "a response to another request",
        Reply::Pong { .. } => "a pong",
        Reply::Stream { .. } => "a stream chunk",
        Reply::Kernel(_) => "a kernel call",
        Reply::KernelCancel { .. } => "a kernel call's cancel",
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

pub(super) fn kill_now(worker: &Worker) {
    if let Some(c) = &worker.child {
        let _ = c.kill();
    }
}

/// Relays a worker's stderr to loongd's log, up to [`MAX_WORKER_STDERR_BYTES`].
pub(super) async fn log_stderr(id: u64, fd: std::os::fd::OwnedFd) {
    let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = vec![0u8; 4096];
    let mut total = 0usize;
    while let Ok(n) = rx.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if total < MAX_WORKER_STDERR_BYTES {
            let text = String::from_utf8_lossy(&buf[..n]);
            tracing::warn!(worker = id, "worker stderr: {}", text.trim_end());
        }
        total += n;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use loong_ipc::{frame::FrameLimit, InvokeTool, KernelRequest};
    use tokio::net::{
        unix::{OwnedReadHalf, OwnedWriteHalf},
        UnixStream,
    };

    use super::*;

    /// Answers each kernel call with its tool's name, after `delay`.
    struct Echoing {
        max: usize,
        delay: Duration,
        started: AtomicUsize,
    }

    impl KernelCalls for Echoing {
        fn max_in_flight(&self) -> usize {
            self.max
        }

        fn start(&self, _worker: u64, call: KernelCall) -> KernelAnswer<'_> {
            self.started.fetch_add(1, Ordering::Relaxed);
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                match call.request() {
                    Ok(KernelRequest::InvokeTool(t)) => Ok(t.tool.into_bytes()),
                    Ok(KernelRequest::ShowText(t)) => Ok(t.text.into_bytes()),
                    Ok(KernelRequest::ChatEvent(e)) => Ok(e.event_json.into_bytes()),
                    Ok(KernelRequest::Service(c)) => Ok(c.payload),
                    Err(e) => Err(RemoteError::new(ErrorKind::BadRequest, e.to_string())),
                }
            })
        }
    }

    type Side = (FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>);

    fn pair() -> (Worker, Side) {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let (ar, aw) = super::super::socket::split(a).expect("split");
        b.set_nonblocking(true).expect("nonblocking");
        let (br, bw) = UnixStream::from_std(b).expect("tokio").into_split();
        let t = Duration::from_secs(5);
        let worker = Worker {
            id: 1,
            pid: 0,
            reader: FrameReader::new(ar, FrameLimit::DEFAULT, t),
            writer: FrameWriter::new(aw, FrameLimit::DEFAULT, t),
            child: None,
            loaded: HashMap::new(),
            next_req: 0,
            broker: None,
            served: false,
            principal: None,
        };
        let side = (
            FrameReader::new(br, FrameLimit::DEFAULT, t),
            FrameWriter::new(bw, FrameLimit::DEFAULT, t),
        );
        (worker, side)
    }

    fn kernel_call(id: RequestId, call: RequestId, tool: &str) -> Reply<WorkerResponse> {
        let req = KernelRequest::InvokeTool(InvokeTool {
            tool: tool.into(),
            input: "{}".into(),
        });
        Reply::Kernel(req.encode(id, call, 1000).expect("encodes"))
    }

    async fn answer_of(side: &mut Side) -> (RequestId, Result<Vec<u8>, RemoteError>) {
        match side.0.read::<Call<WorkerRequest>>(None).await {
            Ok(Some(Call::KernelReply { id, result })) => (id, result),
            other => panic!("expected a kernel reply, got {other:?}"),
        }
    }

    /// The fake worker: reads the request, runs `script` on its side, then answers.
    async fn serve_with(
        host: Option<&dyn KernelCalls>,
        script: impl AsyncFnOnce(&mut Side, RequestId),
    ) -> Result<WorkerResponse, WorkerFault> {
        let (mut worker, mut side) = pair();
        let fake = async move {
            let Ok(Some(Call::Request { id, .. })) = side.0.read::<Call<WorkerRequest>>(None).await
            else {
                panic!("no request")
            };
            script(&mut side, id).await;
            side.1
                .write(&Reply::Response {
                    id,
                    result: Ok(WorkerResponse::Unloaded),
                })
                .await
                .expect("answer");
        };
        let (got, ()) = tokio::join!(
            worker.serve(WorkerRequest::Stats, Duration::from_secs(10), host),
            fake
        );
        got
    }

    /// A service's fake worker: reads the Serve request, then waits for its cancel and
    /// answers `Stopped` after `linger` (or never, with `None`).
    async fn serve_until_stopped(linger: Option<Duration>) -> Result<WorkerResponse, WorkerFault> {
        let (mut worker, mut side) = pair();
        let fake = async move {
            let Ok(Some(Call::Request { id, .. })) = side.0.read::<Call<WorkerRequest>>(None).await
            else {
                panic!("no request")
            };
            let next = side.0.read::<Call<WorkerRequest>>(None).await;
            assert!(
                matches!(next, Ok(Some(Call::Cancel { id: c })) if c == id),
                "the Serve request is withdrawn: {next:?}"
            );
            if let Some(linger) = linger {
                tokio::time::sleep(linger).await;
                side.1
                    .write(&Reply::Response {
                        id,
                        result: Ok(WorkerResponse::Stopped),
                    })
                    .await
                    .expect("answer");
            }
            std::future::pending::<()>().await;
        };
        let stop = std::pin::pin!(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Duration::from_millis(500)
        });
        let served = worker.serve_until(
            WorkerRequest::Stats,
            Duration::from_secs(3600),
            None,
            Some(stop),
        );
        tokio::select! {
            got = served => got,
            () = fake => unreachable!("the fake never ends"),
        }
    }

    #[tokio::test]
    async fn a_withdrawn_service_drains_within_its_deadline_or_is_faulted() {
        // Answers within the drain: its answer.
        let got = serve_until_stopped(Some(Duration::from_millis(100))).await;
        assert!(matches!(got, Ok(WorkerResponse::Stopped)), "{got:?}");
        // Never answers: a deadline fault at the drain (not at the request's hour).
        let started = std::time::Instant::now();
        let got = serve_until_stopped(None).await;
        assert!(
            matches!(got, Err(WorkerFault::Deadline(d)) if d == Duration::from_millis(500)),
            "{got:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_kernel_call_is_served_only_for_the_request_in_flight() {
        let host = Echoing {
            max: 4,
            delay: Duration::ZERO,
            started: AtomicUsize::new(0),
        };
        // The control: a kernel call naming the request in flight is served.
        let got = serve_with(Some(&host), async |side, id| {
            side.1
                .write(&kernel_call(2, id, "echo"))
                .await
                .expect("send");
            assert_eq!(answer_of(side).await, (2, Ok(b"echo".to_vec())));
        })
        .await;
        assert_eq!(got.expect("served"), WorkerResponse::Unloaded);
        assert_eq!(host.started.load(Ordering::Relaxed), 1);

        // Another request's id (one never sent, the null id): a protocol
        // violation that fails the request (the pool retires the worker and audits it), and
        // the call is never started.
        for foreign in [|id: RequestId| id + 1, |_| 0] {
            let got = serve_with(Some(&host), async |side, id| {
                side.1
                    .write(&kernel_call(1, foreign(id), "echo"))
                    .await
                    .expect("send");
            })
            .await;
            assert!(
                matches!(&got, Err(WorkerFault::Protocol(m)) if m.contains("names call")),
                "{got:?}"
            );
        }
        assert_eq!(host.started.load(Ordering::Relaxed), 1);

        // A request served without a host (a load, a probe): every kernel call is refused.
        let got = serve_with(None, async |side, id| {
            side.1
                .write(&kernel_call(1, id, "echo"))
                .await
                .expect("send");
            let (_, r) = answer_of(side).await;
            assert_eq!(r.expect_err("refused").kind, ErrorKind::Denied);
        })
        .await;
        assert_eq!(got.expect("served"), WorkerResponse::Unloaded);
    }

    /// A kernel call naming the request this worker answered before (a guest that escaped
    /// into the worker during that call, acting during the next) fails the next request as a
    /// protocol violation, and is never started.
    #[tokio::test]
    async fn a_kernel_call_naming_a_request_answered_before_is_a_protocol_violation() {
        let host = Echoing {
            max: 4,
            delay: Duration::ZERO,
            started: AtomicUsize::new(0),
        };
        let (mut worker, mut side) = pair();
        let fake = async move {
            let mut first = None;
            for round in 0..2 {
                let Ok(Some(Call::Request { id, .. })) =
                    side.0.read::<Call<WorkerRequest>>(None).await
                else {
                    panic!("no request")
                };
                if round == 0 {
                    first = Some(id);
                    // The control: the first request's own kernel call is served.
                    side.1.write(&kernel_call(1, id, "ok")).await.expect("send");
                    assert_eq!(answer_of(&mut side).await, (1, Ok(b"ok".to_vec())));
                } else {
                    let stale = first.expect("the first request");
                    side.1
                        .write(&kernel_call(1, stale, "stale"))
                        .await
                        .expect("send");
                }
                side.1
                    .write(&Reply::Response {
                        id,
                        result: Ok(WorkerResponse::Unloaded),
                    })
                    .await
                    .expect("answer");
            }
        };
        let loongd = async {
            let t = Duration::from_secs(10);
            let one = worker.serve(WorkerRequest::Stats, t, Some(&host)).await;
            let two = worker.serve(WorkerRequest::Stats, t, Some(&host)).await;
            (one, two)
        };
        let ((one, two), ()) = tokio::join!(loongd, fake);
        assert_eq!(one.expect("served"), WorkerResponse::Unloaded);
        assert!(
            matches!(&two, Err(WorkerFault::Protocol(m)) if m.contains("names call 1")),
            "{two:?}"
        );
        assert_eq!(host.started.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn kernel_calls_in_flight_are_bounded_and_ids_are_unique() {
        let host = Echoing {
            max: 2,
            delay: Duration::from_millis(300),
            started: AtomicUsize::new(0),
        };
        let got = serve_with(Some(&host), async |side, id| {
            for (kid, tool) in [(1, "a"), (2, "b"), (3, "c"), (1, "again")] {
                side.1
                    .write(&kernel_call(kid, id, tool))
                    .await
                    .expect("send");
            }
            // The third is over the bound, the fourth reuses an id in flight: both refused
            // at once, before the two in flight finish.
            let (kid, r) = answer_of(side).await;
            let e = r.expect_err("over the bound");
            assert_eq!((kid, e.kind), (3, ErrorKind::Overloaded));
            assert_eq!(
                e.detail,
                Some(ErrorDetail::BudgetExceeded(BudgetExceeded {
                    budget: Budget::InFlight,
                    limit: 2
                }))
            );
            let (kid, r) = answer_of(side).await;
            assert_eq!(
                (kid, r.expect_err("reused").kind),
                (1, ErrorKind::DuplicateId)
            );
            let mut done = vec![answer_of(side).await, answer_of(side).await];
            done.sort_by_key(|(k, _)| *k);
            assert_eq!(done, vec![(1, Ok(b"a".to_vec())), (2, Ok(b"b".to_vec()))]);
        })
        .await;
        assert_eq!(got.expect("served"), WorkerResponse::Unloaded);
        assert_eq!(host.started.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_withdrawn_kernel_call_is_dropped_and_its_id_is_free_again() {
        let host = Echoing {
            max: 2,
            delay: Duration::from_millis(100),
            started: AtomicUsize::new(0),
        };
        let got = serve_with(Some(&host), async |side, id| {
            side.1
                .write(&kernel_call(1, id, "slow"))
                .await
                .expect("send");
            side.1
                .write(&Reply::<WorkerResponse>::KernelCancel { id: 1 })
                .await
                .expect("cancel");
            // The id is free again: a new call with it is served (and answered first: the
            // withdrawn one, which would take a minute, is gone).
            side.1.write(&kernel_call(1, id, "x")).await.expect("send");
            let answer = tokio::time::timeout(Duration::from_secs(5), answer_of(side)).await;
            assert_eq!(answer.expect("answered"), (1, Ok(b"x".to_vec())));
        })
        .await;
        assert_eq!(got.expect("served"), WorkerResponse::Unloaded);
        assert_eq!(host.started.load(Ordering::Relaxed), 2);
    }
}
