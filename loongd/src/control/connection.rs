//! One operator connection (its peer already checked at accept): handshake, then requests until the peer leaves,
//! misbehaves, idles out or the daemon shuts down. Anything wrong ends this connection only.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use loong_ipc::{
    connection::{read_hello, ConnError, FrameReader, FrameWriter},
    frame::FrameLimit,
    Call, ControlRequest, ControlResponse, ErrorKind, HandshakeError, HandshakeReply, Limits,
    PeerKind, RejectReason, RemoteError, Reply, RequestId, StreamChunk, Welcome, PROTOCOL_VERSION,
};
use tokio::{
    net::{unix::UCred, UnixStream},
    sync::mpsc,
    task::AbortHandle,
};
use tracing::Instrument;

use super::{handlers, ClientSlot};
use crate::{audit, Kernel};

type InFlight = Arc<Mutex<HashMap<RequestId, Entry>>>;
pub(crate) type Outbox = mpsc::Sender<Reply<ControlResponse>>;

/// Input chunks queued per request before the connection stops reading.
const INPUT_QUEUE: usize = 8;

/// A request in flight: how to abort it and where its input goes.
#[derive(Debug)]
struct Entry {
    abort: AbortHandle,
    input: mpsc::Sender<StreamChunk>,
}

/// A running request's byte streams: its output goes out as `Reply::Stream` chunks ahead of
/// its response; its input arrives from `Call::Stream` chunks.
#[derive(Debug)]
pub(crate) struct RequestIo {
    id: RequestId,
    conn: u64,
    out: Outbox,
    /// Input chunks (a sandboxed program's stdin).
    pub(crate) input: mpsc::Receiver<StreamChunk>,
}

impl RequestIo {
    /// The audit correlation id of this request.
    pub(crate) fn correlation(&self) -> String {
        format!("conn-{}/req-{}", self.conn, self.id)
    }

    /// Sends an output chunk; `false` when the client is gone.
    pub(crate) async fn emit(&self, chunk: StreamChunk) -> bool {
        self.out
            .send(Reply::Stream { id: self.id, chunk })
            .await
            .is_ok()
    }
}

/// Replies queued for the writer beyond the in-flight bound (pongs, refusals).
const OUTBOX_SLACK: usize = 16;
/// How long a closing connection waits for its writer to flush.
const WRITER_FLUSH: Duration = Duration::from_secs(2);

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
                kernel.audit.record_later(audit::Event { kind: audit::Kind::ProtocolViolation, actor, correlation: format!("conn-{conn}"), detail }).await;
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
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, limit, ipc.frame_read_timeout());
    let mut writer = FrameWriter::new(w, limit, ipc.frame_read_timeout());

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
        let _ = writer
            .write(&HandshakeReply::Rejected(reason.clone()))
            .await;
        return match cause {
            Some(e) => Err(e),
            None => Err(ConnError::Handshake(HandshakeError::Rejected(reason))),
        };
    }
    writer
        .write(&HandshakeReply::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            build: concat!("loongd ", env!("CARGO_PKG_VERSION")).to_string(),
            connection_id: conn,
            limits: Limits {
                max_frame_bytes: limit.get(),
                max_in_flight: ipc.max_in_flight,
                frame_read_timeout_ms: u32::try_from(ipc.frame_read_timeout_ms).unwrap_or(u32::MAX),
            },
        }))
        .await?;

    let max_in_flight = ipc.max_in_flight as usize;
    let (tx, mut rx) = mpsc::channel::<Reply<ControlResponse>>(max_in_flight + OUTBOX_SLACK);
    let writer_task = tokio::spawn(
        async move {
            while let Some(reply) = rx.recv().await {
                writer.write(&reply).await?;
            }
            Ok::<_, ConnError>(())
        }
        .in_current_span(),
    );
    let in_flight: InFlight = Arc::default();
    let idle = Some(ipc.idle_timeout());
    let outcome = loop {
        let call = tokio::select! {
            call = reader.read::<Call<ControlRequest>>(idle) => call,
            _ = kernel.shut_down() => break Ok(()),
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
                if let Some(refusal) = start(
                    kernel,
                    conn,
                    &in_flight,
                    &tx,
                    cred,
                    id,
                    deadline_ms,
                    body,
                    max_in_flight,
                ) {
                    if tx
                        .send(Reply::Response {
                            id,
                            result: Err(refusal),
                        })
                        .await
                        .is_err()
                    {
                        break Ok(());
                    }
                }
            }
            Call::Stream { id, chunk } => {
                if !chunk.within_bounds() {
                    break Err(ConnError::Frame(loong_ipc::FrameError::TooLarge {
                        len: loong_ipc::MAX_CHUNK_BYTES as u64 + 1,
                        limit: loong_ipc::MAX_CHUNK_BYTES as u32,
                    }));
                }
                let input = lock(&in_flight).get(&id).map(|e| e.input.clone());
                if let Some(input) = input {
                    // Back-pressure: a program that does not read its stdin stalls this
                    // connection's reading, and only this connection's.
                    let _ = input.send(chunk).await;
                }
            }
            Call::Cancel { id } => {
                let entry = lock(&in_flight).remove(&id);
                if let Some(entry) = entry {
                    entry.abort.abort();
                    let result = Err(RemoteError::new(
                        ErrorKind::Cancelled,
                        format!("request {id} cancelled by the client"),
                    ));
                    if tx.send(Reply::Response { id, result }).await.is_err() {
                        break Ok(());
                    }
                }
            }
            Call::Ping { nonce } => {
                if tx.send(Reply::Pong { nonce }).await.is_err() {
                    break Ok(());
                }
            }
        }
    };
    if outcome.is_err() {
        // The peer broke the protocol: its pending requests are abandoned with it.
        for (_, entry) in lock(&in_flight).drain() {
            entry.abort.abort();
        }
    }
    drop(tx);
    match tokio::time::timeout(WRITER_FLUSH, writer_task).await {
        Ok(Ok(Err(e))) if outcome.is_ok() => return Err(e),
        Ok(_) => {}
        Err(_) => tracing::debug!("writer did not flush in time"),
    }
    outcome
}

/// Starts a request, or says why it is refused at once.
#[allow(clippy::too_many_arguments)]
fn start(
    kernel: &Arc<Kernel>,
    conn: u64,
    in_flight: &InFlight,
    tx: &Outbox,
    cred: UCred,
    id: RequestId,
    deadline_ms: u32,
    body: ControlRequest,
    max_in_flight: usize,
) -> Option<RemoteError> {
    let mut map = lock(in_flight);
    if map.contains_key(&id) {
        return Some(RemoteError::new(
            ErrorKind::DuplicateId,
            format!("request {id} is already in flight"),
        ));
    }
    if map.len() >= max_in_flight {
        return Some(RemoteError::new(
            ErrorKind::Overloaded,
            format!("{max_in_flight} requests already in flight on this connection"),
        ));
    }
    let deadline = Duration::from_millis(u64::from(deadline_ms));
    let (kernel, in_flight_task, tx) = (kernel.clone(), in_flight.clone(), tx.clone());
    let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
    let io = RequestIo {
        id,
        conn,
        out: tx.clone(),
        input: input_rx,
    };
    let task = tokio::spawn(
        async move {
            let result =
                match tokio::time::timeout(deadline, handlers::handle(&kernel, body, &cred, io))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(RemoteError::new(
                        ErrorKind::DeadlineExceeded,
                        format!("request {id} did not finish within {deadline_ms} ms"),
                    )),
                };
            // Whoever removes the entry answers: this task, or a Cancel that got there first.
            let mine = lock(&in_flight_task).remove(&id).is_some();
            if mine {
                let _ = tx.send(Reply::Response { id, result }).await;
            }
        }
        .in_current_span(),
    );
    // The map is still locked, so the task cannot finish before its entry exists.
    map.insert(
        id,
        Entry {
            abort: task.abort_handle(),
            input: input_tx,
        },
    );
    None
}

fn lock(m: &InFlight) -> std::sync::MutexGuard<'_, HashMap<RequestId, Entry>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
