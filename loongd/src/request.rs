//! One request's handle, shared by the connection that serves it and the effect path below:
//! its correlation id, its byte streams (output as stream chunks under the connection's
//! output budget, input from the client), why it stopped, and the approval it waits for.
//!
//! It sits below `control/` and `effects/` so that neither imports the other for it: the
//! connection makes one per request, the effect path only uses it.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use loong_ipc::{ControlResponse, Reply, RequestId, StreamChunk};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Where a request's replies go when they are not written at once: the connection's queue
/// for its writer task, which the first reply queued starts ([`StartWriter`]), so a
/// connection whose replies are all written at once never has one. Its items are boxed, so
/// the channel's slots (allocated in blocks) stay small for every connection.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Box<Outgoing>>,
    writer: Option<Arc<dyn StartWriter>>,
}

/// Starts a connection's writer task if it is not running yet; called after each reply is
/// queued.
pub(crate) trait StartWriter: std::fmt::Debug + Send + Sync {
    fn start(&self);
}

impl From<mpsc::Sender<Box<Outgoing>>> for Outbox {
    /// A queue whose receiver its owner reads itself (no writer task to start).
    fn from(tx: mpsc::Sender<Box<Outgoing>>) -> Outbox {
        Outbox { tx, writer: None }
    }
}

impl Outbox {
    /// A queue read by the writer task that `writer` starts.
    pub(crate) fn new(tx: mpsc::Sender<Box<Outgoing>>, writer: Arc<dyn StartWriter>) -> Outbox {
        Outbox {
            tx,
            writer: Some(writer),
        }
    }

    fn queued(&self) {
        if let Some(w) = &self.writer {
            w.start();
        }
    }

    /// Queues `out`, waiting for room; the writer task is started if it is not running.
    pub(crate) async fn send(
        &self,
        out: Box<Outgoing>,
    ) -> Result<(), mpsc::error::SendError<Box<Outgoing>>> {
        self.tx.send(out).await?;
        self.queued();
        Ok(())
    }

    /// Queues `out` if there is room now; the writer task is started if it is not running.
    pub(crate) fn try_send(
        &self,
        out: Box<Outgoing>,
    ) -> Result<(), mpsc::error::TrySendError<Box<Outgoing>>> {
        self.tx.try_send(out)?;
        self.queued();
        Ok(())
    }

    /// Whether nothing is queued (every slot free).
    pub(crate) fn is_empty(&self) -> bool {
        self.tx.capacity() == self.tx.max_capacity()
    }

    /// Has the writer task started (to write the rest of a frame left to it).
    pub(crate) fn start_writer(&self) {
        self.queued();
    }
}

/// Output bytes (stream chunks) queued per connection for a client that reads slowly, the
/// chunk being written included. A producer that finds the budget spent waits for the
/// client: a sandbox's output back-pressures the program, and a stalled client costs loongd
/// at most this much, never an amount that grows with the program's output.
pub(crate) const OUTPUT_BUDGET_BYTES: usize = 8 * 1024;

/// Why a request stopped before it finished. A sandbox run records it in `sandbox.exited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopCause {
    /// The client cancelled the request.
    Cancelled,
    /// The client's connection ended (it closed, was killed, broke the protocol or stopped
    /// taking replies).
    ClientGone,
    /// The request's deadline passed.
    Deadline,
}

impl StopCause {
    /// The name audit records use.
    pub(crate) fn name(self) -> &'static str {
        match self {
            StopCause::Cancelled => "cancelled",
            StopCause::ClientGone => "client_gone",
            StopCause::Deadline => "deadline",
        }
    }
}

/// Set once, before a request's task is stopped, so its cleanup can say why.
pub(crate) type StopCell = Arc<OnceLock<StopCause>>;

/// The approvals a request waits for, in the order they were asked, while it waits (a root
/// call and its nested calls may wait for several at once, each its own entry): read by the
/// connection when the request's deadline passes, so the answer is the typed
/// `ApprovalPending` naming the oldest still waited for, not a bare deadline; and whether
/// its client is gone, after which it waits for none.
pub(crate) type WaitCell = Arc<Mutex<Waits>>;

/// What a [`WaitCell`] holds.
#[derive(Debug, Default)]
pub(crate) struct Waits {
    /// The approvals waited for, oldest first.
    pub(crate) ids: Vec<String>,
    /// Set once its client went away ([`Waits::close`]): no approval is waited for after.
    gone: bool,
}

impl Waits {
    /// Its client went away: what it waits for now, to withdraw; an approval it asks for
    /// later is refused by [`RequestIo::wait_on`] (under the same lock, so none slips
    /// between the two).
    pub(crate) fn close(&mut self) -> Vec<String> {
        self.gone = true;
        self.ids.clone()
    }
}

/// A reply on its way to the writer. A stream chunk holds its share of the connection's
/// [`OUTPUT_BUDGET_BYTES`], and a request's answer its request's slot of `max_in_flight`,
/// until its frame is written.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) reply: Reply<ControlResponse>,
    pub(crate) _held: Option<OwnedSemaphorePermit>,
}

impl From<Reply<ControlResponse>> for Box<Outgoing> {
    fn from(reply: Reply<ControlResponse>) -> Box<Outgoing> {
        Box::new(Outgoing { reply, _held: None })
    }
}

/// A running request's byte streams: its output goes out as `Reply::Stream` chunks ahead of
/// its response; its input arrives from `Call::Stream` chunks.
#[derive(Debug)]
pub(crate) struct RequestIo {
    pub(crate) id: RequestId,
    pub(crate) conn: u64,
    pub(crate) out: Outbox,
    pub(crate) budget: Arc<Semaphore>,
    pub(crate) stop: StopCell,
    pub(crate) waiting: WaitCell,
    /// Input chunks (a sandboxed program's stdin, the operator's interrupts): a sandbox run
    /// only, the one request that reads input; `None` for every other, whose input chunks
    /// are dropped as they arrive.
    pub(crate) input: Option<mpsc::Receiver<StreamChunk>>,
    /// The gateway's chat turn only: where the agent's text deltas and the caller's tool
    /// calls go as they arrive (kernel calls `show_text` and `chat_event`), in order.
    pub(crate) chat: Option<mpsc::Sender<loong_agent_wire::chat::ChatEvent>>,
}

impl RequestIo {
    /// The audit correlation id of this request.
    pub(crate) fn correlation(&self) -> String {
        format!("conn-{}/req-{}", self.conn, self.id)
    }

    /// Why the request was stopped, once it has been (read by cleanup that outlives it).
    pub(crate) fn stop_cell(&self) -> StopCell {
        self.stop.clone()
    }

    /// Notes that the request (or a nested call of its chain) waits for approval `id`;
    /// `false`, noting nothing, when its client went away already ([`Waits::close`]): the
    /// approval is then asked for nobody, and must be withdrawn.
    pub(crate) fn wait_on(&self, id: &str) -> bool {
        let mut waits = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waits.gone {
            return false;
        }
        waits.ids.push(id.to_string());
        true
    }

    /// Notes that the wait for approval `id` ended; the others' entries stay.
    pub(crate) fn done_waiting(&self, id: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ids
            .retain(|w| w != id);
    }

    /// Sends an output chunk, first waiting for its share of the connection's output budget
    /// (the client reading what is queued); `false` when the client is gone.
    pub(crate) async fn emit(&self, chunk: StreamChunk) -> bool {
        let bytes = match &chunk {
            StreamChunk::Stdin(b) | StreamChunk::Stdout(b) | StreamChunk::Stderr(b) => b.len(),
            StreamChunk::ApprovalPending(id) => id.len(),
            StreamChunk::StdinEnd | StreamChunk::Interrupt => 0,
        };
        match self.reserve(bytes).await {
            Some(share) => self.emit_within(chunk, share).await,
            None => false,
        }
    }

    /// Waits until the connection's output budget has room for `bytes` (at least 1, at most
    /// the whole budget) and holds it; `None` when the connection is gone.
    pub(crate) async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let share = u32::try_from(bytes.clamp(1, OUTPUT_BUDGET_BYTES)).unwrap_or(1);
        self.budget.clone().acquire_many_owned(share).await.ok()
    }

    /// Sends an output chunk under a share [`reserve`](Self::reserve)d for it, released once
    /// its frame is written; `false` when the client is gone.
    pub(crate) async fn emit_within(
        &self,
        chunk: StreamChunk,
        share: OwnedSemaphorePermit,
    ) -> bool {
        self.out
            .send(Box::new(Outgoing {
                reply: Reply::Stream { id: self.id, chunk },
                _held: Some(share),
            }))
            .await
            .is_ok()
    }
}
