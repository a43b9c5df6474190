//! One operator connection (its peer already checked at accept): handshake, then requests until the peer leaves,
//! misbehaves, idles out or the daemon shuts down. Anything wrong ends this connection only.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use loong_ipc::{
    connection::{read_hello, ConnError, FrameReader},
    frame::FrameLimit,
    Budget, BudgetExceeded, Call, ControlRequest, ControlResponse, ErrorDetail, ErrorKind,
    HandshakeError, HandshakeReply, Limits, PeerKind, RejectReason, RemoteError, Reply, RequestId,
    StreamChunk, Welcome, PROTOCOL_VERSION,
};
use tokio::{
    net::{unix::UCred, UnixStream},
    sync::{mpsc, Notify, Semaphore},
    task::AbortHandle,
};
use tracing::Instrument;

use super::{
    handlers,
    sink::{Now, Sink, Writer},
    wire::{self, WriteSide},
};
use crate::{
    audit,
    request::{Outbox, Outgoing, RequestIo, StopCause, StopCell, WaitCell, OUTPUT_BUDGET_BYTES},
    Kernel,
};

type InFlight = Arc<Mutex<HashMap<RequestId, Entry>>>;

/// Input chunks queued per request before the connection stops reading.
const INPUT_QUEUE: usize = 2;

/// Counts a connection for as long as it lives.
#[derive(Debug)]
pub(crate) struct ClientSlot(pub(crate) Arc<Kernel>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0
            .connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A request in flight: how to abort it and where its input goes.
#[derive(Debug)]
struct Entry {
    abort: AbortHandle,
    /// A sandbox run's input; `None` for a request that reads none (its chunks are dropped).
    input: Option<mpsc::Sender<StreamChunk>>,
    stop: StopCell,
    /// The approvals it waits for: withdrawn when its client goes away.
    waiting: WaitCell,
    /// Whether the request lives only for its client (a sandbox run): it is stopped when the
    /// client's connection ends. Other requests run to their end and are audited; their
    /// answers are dropped.
    ends_with_client: bool,
    /// Its place in the connection's answer budget (`answers`): held until its answer is
    /// written, and taken into that answer by whoever removes the entry to answer (its task,
    /// or a `Cancel`), so the budget is free again once the client has read the answer, not
    /// when the runtime gets round to dropping a cancelled task.
    slot: tokio::sync::OwnedSemaphorePermit,
}

/// Replies queued for the writer beyond the in-flight bound (pongs, refusals).
const OUTBOX_SLACK: usize = 16;

/// How long a closing connection waits for its writer to flush.
const WRITER_FLUSH: Duration = Duration::from_secs(2);

/// Sends a reply the reading loop itself makes (a pong, a refusal, an answer given at once,
/// a cancellation's answer): written at once when nothing is queued, the rest of a frame the
/// socket takes only in part left to the writer task ([`Sink::write_or_hand_off`]), so the
/// loop never waits on the socket for it; else queued for the writer task, waiting at most
/// `wait` (the idle timeout) for room: a client that takes none of its replies for that long
/// is gone. `false` when it is.
async fn queue(sink: &Sink, tx: &Outbox, reply: impl Into<Box<Outgoing>>, wait: Duration) -> bool {
    let reply = match sink.write_or_hand_off(tx, reply.into()) {
        Now::Written => return true,
        Now::Broken => return false,
        Now::Queue(reply) => reply,
    };
    // Room in the outbox (the usual case) needs no timer.
    let reply = match tx.try_send(reply) {
        Ok(()) => return true,
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
        Err(mpsc::error::TrySendError::Full(reply)) => reply,
    };
    matches!(tokio::time::timeout(wait, tx.send(reply)).await, Ok(Ok(())))
}

/// Writes a refusal without waiting; used when the daemon will not even read the hello.
pub(crate) fn reject_now(stream: &UnixStream, reply: &HandshakeReply) {
    let mut out = Vec::new();
    if loong_ipc::frame::encode(reply, FrameLimit::DEFAULT, &mut out).is_ok() {
        let _ = stream.try_write(&out);
    }
}

/// Serves one connection whose peer `cred` was already found allowed at accept.
pub(crate) async fn serve(
    stream: UnixStream,
    kernel: Arc<Kernel>,
    conn: u64,
    _slot: ClientSlot,
    cred: UCred,
) {
    let span = tracing::info_span!(
        "conn",
        id = conn,
        uid = cred.uid(),
        pid = cred.pid().unwrap_or(0)
    );
    async move {
        match run(stream, &kernel, conn, cred).await {
            Ok(()) => tracing::debug!("connection closed"),
            Err(ConnError::IdleTimeout { timeout_ms }) => {
                tracing::debug!(timeout_ms, "idle connection closed")
            }
            Err(ConnError::Io(e)) => tracing::debug!(error = %e, "connection ended"),
            Err(ConnError::Handshake(HandshakeError::Rejected(RejectReason::ShuttingDown))) => {}
            // Everything else is the peer breaking the protocol.
            Err(e) => {
                tracing::warn!(error = %e, "protocol violation; connection closed");
                let detail = serde_json::json!({ "conn": conn, "uid": cred.uid(), "pid": cred.pid(), "error": e.to_string() });
                let actor = format!("uid:{}", cred.uid());
                kernel.audit.record_later(audit::Event::new(audit::Kind::ProtocolViolation, actor, format!("conn-{conn}"), detail)).await;
            }
        }
    }
    .instrument(span)
    .await
}

async fn run(
    stream: UnixStream,
    kernel: &Arc<Kernel>,
    conn: u64,
    cred: UCred,
) -> Result<(), ConnError> {
    let ipc = &kernel.config.ipc;
    let limit = FrameLimit::new(u64::from(ipc.max_frame_bytes))?;
    // Registered for what the connection waits for only (`wire`): no wake-up per answer
    // when the client reads it.
    let (r, w) = wire::split(stream)?;
    let mut reader = FrameReader::new(r, limit, ipc.frame_read_timeout());
    let mut w = Some(w);

    let refusal = match read_hello(&mut reader, ipc.handshake_timeout()).await {
        Err(ConnError::Handshake(HandshakeError::VersionMismatch { ours, theirs })) => Some((
            RejectReason::VersionMismatch {
                server: ours,
                client: theirs,
            },
            None,
        )),
        Err(ConnError::Io(e)) => return Err(ConnError::Io(e)),
        Err(e) => Some((RejectReason::BadHello, Some(e))),
        Ok(h) if h.peer_kind != PeerKind::Operator => {
            Some((RejectReason::WrongPeerKind { kind: h.peer_kind }, None))
        }
        Ok(_) if *kernel.shutdown.borrow() => Some((RejectReason::ShuttingDown, None)),
        Ok(_) => None,
    };
    if let Some((reason, cause)) = refusal {
        let _ = write_frame(
            &mut w,
            &HandshakeReply::Rejected(reason.clone()),
            limit,
            ipc.frame_read_timeout(),
        )
        .await;
        return match cause {
            Some(e) => Err(e),
            None => Err(ConnError::Handshake(HandshakeError::Rejected(reason))),
        };
    }
    let welcome = HandshakeReply::Welcome(Welcome {
        protocol_version: PROTOCOL_VERSION,
        build: concat!("loongd ", env!("CARGO_PKG_VERSION")).to_string(),
        connection_id: conn,
        limits: Limits {
            max_frame_bytes: limit.get(),
            max_in_flight: ipc.max_in_flight,
            frame_read_timeout_ms: u32::try_from(ipc.frame_read_timeout_ms).unwrap_or(u32::MAX),
        },
    });
    write_frame(&mut w, &welcome, limit, ipc.frame_read_timeout()).await?;
    let w = w.ok_or(ConnError::Io(std::io::ErrorKind::BrokenPipe.into()))?;

    let max_in_flight = ipc.max_in_flight as usize;
    let (tx, rx) = mpsc::channel::<Box<Outgoing>>(max_in_flight + OUTBOX_SLACK);
    let budget = Arc::new(Semaphore::new(OUTPUT_BUDGET_BYTES));
    let sink = Arc::new(Sink::new(w, limit, budget.clone()));
    // Closed when the connection ends: a request's task still writing the rest of an answer
    // the socket took in part gives up then.
    let ended = Arc::new(Semaphore::new(0));
    // A client that reads slowly is back-pressure, not an error: the writer waits for it as
    // long as the connection lives, and the connection's end stops the writer (below). It
    // is started by the first reply queued for it, not before.
    let writer = Writer::new(sink.clone(), rx);
    let tx = Outbox::new(tx, writer.clone());
    let in_flight: InFlight = Arc::default();
    // A request holds one of these from its start until its answer is written, so a client
    // that sends requests and reads no answers holds at most `max_in_flight` of them (and
    // their tasks) in loongd, then is refused, then is no longer read.
    let answers = Arc::new(Semaphore::new(max_in_flight));
    // Signalled when a request ends, so the idle timeout starts once none is in flight.
    let request_ended = Arc::new(Notify::new());
    let mut shutting_down = false;
    // Made once for the connection, not once per request.
    let shutdown = kernel.shut_down();
    tokio::pin!(shutdown);
    let outcome = loop {
        // The idle timeout is for connections with nothing in flight: a long sandbox run or an
        // approval wait is not idleness.
        let idle = lock(&in_flight).is_empty().then(|| ipc.idle_timeout());
        let call = tokio::select! {
            call = reader.read::<Call<ControlRequest>>(idle) => call,
            () = request_ended.notified(), if idle.is_none() => continue,
            () = &mut shutdown => {
                shutting_down = true;
                break Ok(());
            }
        };
        let call = match call {
            Ok(Some(call)) => call,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match call {
            Call::Request {
                id,
                deadline_ms,
                body,
            } => {
                let shared = Shared {
                    in_flight: &in_flight,
                    tx: &tx,
                    sink: &sink,
                    ended: &ended,
                    budget: &budget,
                    answers: &answers,
                    request_ended: &request_ended,
                };
                let now = start(
                    kernel,
                    conn,
                    shared,
                    cred,
                    id,
                    deadline_ms,
                    body,
                    max_in_flight,
                );
                if let Some(now) = now {
                    if !queue(&sink, &tx, now, ipc.idle_timeout()).await {
                        break Ok(());
                    }
                }
            }
            // loongd asks an operator client nothing: an answer to a kernel call is dropped.
            Call::KernelReply { .. } => {}
            Call::Stream { id, chunk } => {
                if !chunk.within_bounds() {
                    break Err(ConnError::Frame(loong_ipc::FrameError::TooLarge {
                        len: loong_ipc::MAX_CHUNK_BYTES as u64 + 1,
                        limit: loong_ipc::MAX_CHUNK_BYTES as u32,
                    }));
                }
                // A chunk for a request that reads no input is dropped, as one for no request is.
                let input = lock(&in_flight).get(&id).and_then(|e| e.input.clone());
                let full = match input.as_ref().map(|input| input.try_send(chunk)) {
                    Some(Err(mpsc::error::TrySendError::Full(chunk))) => Some(chunk),
                    _ => None,
                };
                if let (Some(input), Some(chunk)) = (input, full) {
                    // Back-pressure: a program that does not read its stdin stalls this
                    // connection's reading, and only this connection's. A client that leaves
                    // meanwhile is still noticed (a watch registered for this wait only).
                    let watch = reader.get_ref().watch();
                    tokio::select! {
                        _ = input.send(chunk) => {}
                        () = wire::hang_up(watch.as_ref()) => break Ok(()),
                    }
                }
            }
            Call::Cancel { id } => {
                let entry = lock(&in_flight).remove(&id);
                if let Some(entry) = entry {
                    let _ = entry.stop.set(StopCause::Cancelled);
                    entry.abort.abort();
                    let result = Err(RemoteError::new(
                        ErrorKind::Cancelled,
                        format!("request {id} cancelled by the client"),
                    ));
                    let answer = Box::new(Outgoing {
                        reply: Reply::Response { id, result },
                        _held: Some(entry.slot),
                    });
                    if !queue(&sink, &tx, answer, ipc.idle_timeout()).await {
                        break Ok(());
                    }
                }
            }
            Call::Ping { nonce } => {
                if !queue(&sink, &tx, Reply::Pong { nonce }, ipc.idle_timeout()).await {
                    break Ok(());
                }
            }
        }
    };
    if !shutting_down {
        // The client is gone (it closed, was killed, broke the protocol or stopped taking
        // replies). A request that lives only for it is stopped and records why; after a
        // protocol violation every request is abandoned.
        lock(&in_flight).retain(|_, entry| {
            let stop = outcome.is_err() || entry.ends_with_client;
            if stop {
                let _ = entry.stop.set(StopCause::ClientGone);
                entry.abort.abort();
            }
            !stop
        });
        // The requests that run on are answered to nobody: what they wait for an approver to
        // decide is withdrawn (expired and recorded), their waits end, and none is approved on
        // behalf of a client that left. A request that asks later finds its client gone as
        // it notes the wait (the cell is closed here, under its lock) and withdraws that
        // request itself (`effects::approval::wait`): its output may still be taken while
        // the writer flushes, so that is no sign the client is there.
        let waited: Vec<String> = lock(&in_flight)
            .values()
            .flat_map(|e| {
                e.waiting
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .close()
            })
            .collect();
        for id in waited {
            if let Err(e) = crate::effects::approval::withdraw(kernel, &id).await {
                tracing::warn!(approval = %id, error = %e, "withdrawing an approval whose client went away");
            }
        }
    }
    drop(tx);
    let flushed = match writer.finish() {
        Some(task) => {
            let abort = task.abort_handle();
            let flushed = tokio::time::timeout(WRITER_FLUSH, task).await;
            // A writer still waiting for a client that does not read ends with the
            // connection, and so does a request's task writing the rest of its answer.
            abort.abort();
            Some(flushed)
        }
        None => None,
    };
    ended.close();
    sink.close().await;
    match flushed {
        Some(Ok(Ok(Err(e)))) if outcome.is_ok() => return Err(e),
        Some(Err(_)) => tracing::debug!("writer did not flush in time"),
        _ => {}
    }
    outcome
}

/// Writes one frame of the handshake within `timeout` (a peer that takes none is gone); the
/// write side is dropped (the client hung up on) when a frame is cut short.
async fn write_frame(
    w: &mut Option<WriteSide>,
    msg: &HandshakeReply,
    limit: FrameLimit,
    timeout: Duration,
) -> Result<(), ConnError> {
    let Some(side) = w.as_ref() else {
        return Err(ConnError::Io(std::io::ErrorKind::BrokenPipe.into()));
    };
    let mut out = Vec::new();
    loong_ipc::frame::encode(msg, limit, &mut out)?;
    let written = match tokio::time::timeout(timeout, side.write_all(&out)).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => ConnError::Io(e),
        Err(_) => ConnError::WriteTimeout {
            timeout_ms: timeout.as_millis(),
        },
    };
    *w = None;
    Err(written)
}

/// What requests of one connection share.
#[derive(Clone, Copy)]
struct Shared<'a> {
    in_flight: &'a InFlight,
    tx: &'a Outbox,
    sink: &'a Arc<Sink>,
    ended: &'a Arc<Semaphore>,
    budget: &'a Arc<Semaphore>,
    answers: &'a Arc<Semaphore>,
    request_ended: &'a Arc<Notify>,
}

/// The answer to `body` when the reading loop can give it at once, without a task of its own
/// (no deadline's timer, in-flight entry or input channel): a request that reads loongd's
/// state and waits for nothing. `None`: the request runs in its own task.
fn answered_inline(kernel: &Kernel, body: &ControlRequest) -> Option<ControlResponse> {
    match body {
        ControlRequest::Status => Some(ControlResponse::Status(handlers::status(kernel))),
        _ => None,
    }
}

/// Starts a request in a task of its own (`None`), or gives the reply to send at once: its
/// refusal (its id in flight, the connection's in-flight budget full), or its answer when the
/// reading loop gives it ([`answered_inline`]), which holds its slot of the in-flight budget
/// until it is written, like any answer.
#[allow(clippy::too_many_arguments)]
fn start(
    kernel: &Arc<Kernel>,
    conn: u64,
    shared: Shared<'_>,
    cred: UCred,
    id: RequestId,
    deadline_ms: u32,
    body: ControlRequest,
    max_in_flight: usize,
) -> Option<Box<Outgoing>> {
    let refused = |error: RemoteError| {
        Some(Box::<Outgoing>::from(Reply::Response {
            id,
            result: Err(error),
        }))
    };
    let mut map = lock(shared.in_flight);
    if map.contains_key(&id) {
        return refused(RemoteError::new(
            ErrorKind::DuplicateId,
            format!("request {id} is already in flight"),
        ));
    }
    // In flight, or answered and waiting for the client to read the answer.
    let Ok(answer_slot) = shared.answers.clone().try_acquire_owned() else {
        return refused(
            RemoteError::new(
                ErrorKind::Overloaded,
                format!(
                    "{max_in_flight} requests already in flight on this connection or answered \
                 and not yet read"
                ),
            )
            .with_detail(ErrorDetail::BudgetExceeded(BudgetExceeded {
                budget: Budget::InFlight,
                limit: max_in_flight as u64,
            })),
        );
    };
    if let Some(answer) = answered_inline(kernel, &body) {
        return Some(Box::new(Outgoing {
            reply: Reply::Response {
                id,
                result: Ok(answer),
            },
            _held: Some(answer_slot),
        }));
    }
    let (kernel, in_flight_task, tx) =
        (kernel.clone(), shared.in_flight.clone(), shared.tx.clone());
    let ended = shared.request_ended.clone();
    let (sink, conn_ended) = (shared.sink.clone(), shared.ended.clone());
    let ends_with_client = matches!(body, ControlRequest::SandboxRun(_));
    // Only a sandbox run reads input (its program's stdin, interrupts): no other request
    // gets a channel.
    let reads_input = matches!(body, ControlRequest::SandboxRun(_));
    let (input_tx, input_rx) = if reads_input {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let stop = StopCell::default();
    let waiting = WaitCell::default();
    let waiting_entry = waiting.clone();
    let io = RequestIo {
        id,
        conn,
        out: tx.clone(),
        budget: shared.budget.clone(),
        stop: stop.clone(),
        waiting: waiting.clone(),
        input: input_rx,
        chat: None,
    };
    let answering = Answering {
        id,
        deadline_ms,
        stop: stop.clone(),
        waiting,
        in_flight: in_flight_task,
        ended,
        sink,
        conn_ended,
        tx,
    };
    // The handler's future (the largest of any request's: an `invoke`'s is about 14 KiB) is
    // made on the heap when the task first runs, so the task that is moved into place at its
    // spawn and overwritten at its end holds only the request and a pointer.
    let task = tokio::spawn(
        answering
            .answer(async move { Box::pin(handlers::handle(&kernel, body, &cred, io)).await })
            .in_current_span(),
    );
    // The map is still locked, so the task cannot finish before its entry exists.
    map.insert(
        id,
        Entry {
            abort: task.abort_handle(),
            input: input_tx,
            stop,
            waiting: waiting_entry,
            ends_with_client,
            slot: answer_slot,
        },
    );
    None
}

/// What a request's task needs to answer it: within its deadline, once, unless a
/// cancellation answered first.
struct Answering {
    id: RequestId,
    deadline_ms: u32,
    stop: StopCell,
    waiting: WaitCell,
    in_flight: InFlight,
    ended: Arc<Notify>,
    sink: Arc<Sink>,
    conn_ended: Arc<Semaphore>,
    tx: Outbox,
}

impl Answering {
    /// Runs `handler` until it answers or the deadline passes, then answers the client.
    async fn answer(
        self,
        handler: impl std::future::Future<Output = Result<ControlResponse, RemoteError>>,
    ) {
        let Answering {
            id,
            deadline_ms,
            stop,
            waiting,
            in_flight,
            ended,
            sink,
            conn_ended,
            tx,
        } = self;
        let deadline = Duration::from_millis(u64::from(deadline_ms));
        let result = tokio::select! {
            r = handler => r,
            // The cause is set before the handler is dropped, so its cleanup sees it; and
            // what it waits for is read before that cleanup clears it.
            approval = async {
                tokio::time::sleep(deadline).await;
                let _ = stop.set(StopCause::Deadline);
                waiting.lock().unwrap_or_else(PoisonError::into_inner).ids.first().cloned()
            } => Err(past_deadline(id, deadline_ms, approval)),
        };
        // Whoever removes the entry answers: this task, or a Cancel that got there first.
        let mine = lock(&in_flight).remove(&id);
        ended.notify_one();
        if let Some(entry) = mine {
            let answer = Box::new(Outgoing {
                reply: Reply::Response { id, result },
                _held: Some(entry.slot),
            });
            // Written here when nothing is queued; else the writer task writes it.
            let gone = async {
                let _ = conn_ended.acquire().await;
            };
            if let Now::Queue(answer) = sink.write_now(&tx, answer, gone).await {
                let _ = tx.send(answer).await;
            }
        }
    }
}

/// The answer to a request whose deadline passed: `ApprovalPending`, naming the approval,
/// when it was waiting for one (the approval is withdrawn as the request's handler is
/// dropped: `effects::approval::Withdraw`), else
/// `DeadlineExceeded`.
fn past_deadline(id: RequestId, deadline_ms: u32, approval: Option<String>) -> RemoteError {
    match approval {
        Some(approval) => RemoteError::new(
            ErrorKind::ApprovalPending,
            format!(
                "request {id} did not finish within {deadline_ms} ms: approval {approval} is still pending at the deadline, and is withdrawn with the request (an approval given now would run nothing); ask again, and have the new request approved while it waits (`loongctl approvals list`)"
            ),
        )
        .with_detail(ErrorDetail::ApprovalPending { approval }),
        None => RemoteError::new(
            ErrorKind::DeadlineExceeded,
            format!("request {id} did not finish within {deadline_ms} ms"),
        ),
    }
}

fn lock(m: &InFlight) -> std::sync::MutexGuard<'_, HashMap<RequestId, Entry>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use loong_ipc::StreamChunk;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// A reply of the reading loop that the socket takes only in part (a client that stops
    /// reading mid-answer) does not hold the loop until the client reads, as it did for up to
    /// the idle timeout: the loop goes on at once, the writer task finishes the frame, and
    /// the reply made after it follows it whole.
    #[tokio::test]
    async fn a_reply_taken_in_part_does_not_hold_the_reading_loop() {
        // Larger than a Unix socket's buffer: the socket takes only part of it.
        const BIG: usize = 900 * 1024;
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        let (_r, w) = wire::split(ours).expect("split");
        let limit = FrameLimit::DEFAULT;
        let budget = Arc::new(Semaphore::new(OUTPUT_BUDGET_BYTES));
        let sink = Arc::new(Sink::new(w, limit, budget));
        let (tx, rx) = mpsc::channel::<Box<Outgoing>>(8);
        // Started by the rest of the frame left to it.
        let writer = Writer::new(sink.clone(), rx);
        let tx = Outbox::new(tx, writer.clone());
        let big = Reply::<ControlResponse>::Stream {
            id: 1,
            chunk: StreamChunk::Stdout(vec![b'x'; BIG]),
        };
        let went_on = tokio::time::timeout(Duration::from_secs(2), queue(&sink, &tx, big, WAIT))
            .await
            .ok();
        assert_eq!(
            went_on,
            Some(true),
            "the reading loop waited for the client"
        );
        let pong = Reply::<ControlResponse>::Pong { nonce: 9 };
        assert!(queue(&sink, &tx, pong, WAIT).await);
        let mut peer = FrameReader::new(theirs, limit, WAIT);
        let first = peer.read::<Reply<ControlResponse>>(Some(WAIT)).await;
        assert!(
            matches!(&first, Ok(Some(Reply::Stream { id: 1, chunk: StreamChunk::Stdout(b) })) if b.len() == BIG),
            "the whole frame arrived"
        );
        let second = peer.read::<Reply<ControlResponse>>(Some(WAIT)).await;
        assert!(
            matches!(second, Ok(Some(Reply::Pong { nonce: 9 }))),
            "{second:?}"
        );
        drop(tx);
        let task = writer
            .finish()
            .expect("the rest of the frame started the writer");
        let ended = tokio::time::timeout(WAIT, task).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    }

    /// A connection whose replies are all written at once by whoever makes them never
    /// starts its writer task (one task fewer, and no other runtime thread woken for it);
    /// the first reply that must be queued starts it, and it writes that reply in order.
    #[tokio::test]
    async fn the_writer_task_starts_with_the_first_reply_queued() {
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        let (_r, w) = wire::split(ours).expect("split");
        let limit = FrameLimit::DEFAULT;
        let budget = Arc::new(Semaphore::new(OUTPUT_BUDGET_BYTES));
        let sink = Arc::new(Sink::new(w, limit, budget.clone()));
        let (tx, rx) = mpsc::channel::<Box<Outgoing>>(8);
        let writer = Writer::new(sink.clone(), rx);
        let tx = Outbox::new(tx, writer.clone());
        let mut peer = FrameReader::new(theirs, limit, WAIT);
        for nonce in 1..=3 {
            assert!(queue(&sink, &tx, Reply::Pong { nonce }, WAIT).await);
            let got = peer.read::<Reply<ControlResponse>>(Some(WAIT)).await;
            assert!(
                matches!(got, Ok(Some(Reply::Pong { nonce: n })) if n == nonce),
                "{got:?}"
            );
        }
        assert!(
            !writer.started(),
            "replies written at once started the writer"
        );
        // A stream chunk on its way holds a share of the output budget: a reply made now
        // must not overtake it, so it is queued, and that starts the writer.
        let share = budget.clone().acquire_owned().await.expect("budget");
        assert!(queue(&sink, &tx, Reply::Pong { nonce: 4 }, WAIT).await);
        assert!(writer.started(), "a queued reply did not start the writer");
        drop(share);
        let got = peer.read::<Reply<ControlResponse>>(Some(WAIT)).await;
        assert!(matches!(got, Ok(Some(Reply::Pong { nonce: 4 }))), "{got:?}");
        drop(tx);
        let task = writer.finish().expect("started");
        let ended = tokio::time::timeout(WAIT, task).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    }

    /// At the connection's end a writer never started is not started when nothing can be
    /// queued any more; it is when a request still running holds the queue (its answer may
    /// still be flushed to a client that reads, as before).
    #[tokio::test]
    async fn an_idle_writer_starts_at_the_end_only_for_requests_still_running() {
        let (ours, _theirs) = UnixStream::pair().expect("socket pair");
        let (_r, w) = wire::split(ours).expect("split");
        let budget = Arc::new(Semaphore::new(OUTPUT_BUDGET_BYTES));
        let sink = Arc::new(Sink::new(w, FrameLimit::DEFAULT, budget));
        let (tx, rx) = mpsc::channel::<Box<Outgoing>>(8);
        let writer = Writer::new(sink.clone(), rx);
        drop(Outbox::new(tx, writer.clone()));
        assert!(writer.finish().is_none(), "nothing could be queued");
        let (tx, rx) = mpsc::channel::<Box<Outgoing>>(8);
        let writer = Writer::new(sink, rx);
        let running = Outbox::new(tx, writer.clone());
        let task = writer.finish().expect("a request still holds the queue");
        drop(running);
        let ended = tokio::time::timeout(WAIT, task).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    }
}
