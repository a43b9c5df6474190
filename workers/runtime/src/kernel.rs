//! The worker's end of kernel calls: while it serves request `call`, a worker asks loongd for
//! effects on the same socket (see `loong_ipc::message::kernel`).
//!
//! A [`KernelLink`] is bound to the request it was handed with: every kernel call it sends
//! names that request, so a worker cannot speak for another one. [`KernelLink::send`] and
//! [`KernelLink::next_answer`] let several calls be in flight at once, matched by id;
//! [`KernelLink::call`] is one call and its answer. While it waits, the link answers
//! loongd's pings and drops answers to calls it withdrew.

use std::{
    collections::BTreeSet,
    io,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use loong_ipc::{
    Call, KernelRequest, RemoteError, Reply, RequestId, WorkerRequest, WorkerResponse,
};

use crate::Conn;

/// The connection, shared by the serving loop and the link it hands a request.
pub(crate) type Shared = Arc<Mutex<Conn>>;

pub(crate) fn lock(c: &Shared) -> std::sync::MutexGuard<'_, Conn> {
    c.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Conn {
    pub(crate) fn shared(self) -> Shared {
        Arc::new(Mutex::new(self))
    }
}

/// loongd's answer to one kernel call: its bytes, or its error.
pub type Answer = Result<Vec<u8>, RemoteError>;

/// Why a kernel call has no answer from loongd.
#[derive(Debug, thiserror::Error)]
pub enum KernelLinkError {
    /// loongd answered with an error (a denial, a budget, the tool's failure: its detail
    /// says which).
    #[error("{0}")]
    Remote(RemoteError),
    /// No answer within the time the worker gave it; the call was withdrawn.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The request could not be encoded (a field past its bound).
    #[error("{0}")]
    Request(#[from] loong_ipc::KernelCallError),
    /// The socket failed or loongd broke the protocol.
    #[error("the link to loongd failed: {0}")]
    Transport(String),
}

/// The kernel-call side of one request a worker serves.
pub struct KernelLink {
    conn: Shared,
    call: RequestId,
    next: RequestId,
    in_flight: BTreeSet<RequestId>,
}

impl std::fmt::Debug for KernelLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelLink")
            .field("call", &self.call)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl KernelLinkError {
    /// The class a plugin is told: `denied` (policy, an approval not given, or a capability
    /// the plugin does not declare), `budget_exceeded` (the chain's depth, the root's calls
    /// or wall time, the worker's calls in flight), `timeout` (no answer within the time the
    /// worker gave the call, whichever side saw it pass first), or
    /// `failed` (the tool failed or does not exist, or anything else).
    pub fn kind_name(&self) -> &'static str {
        use loong_ipc::{ErrorDetail, ErrorKind};
        match self {
            KernelLinkError::Remote(r) => {
                if matches!(r.detail, Some(ErrorDetail::BudgetExceeded(_)))
                    || matches!(r.kind, ErrorKind::BudgetExceeded | ErrorKind::Overloaded)
                {
                    "budget_exceeded"
                } else if matches!(r.kind, ErrorKind::Denied | ErrorKind::ApprovalPending) {
                    "denied"
                } else if r.kind == ErrorKind::DeadlineExceeded {
                    "timeout"
                } else {
                    "failed"
                }
            }
            KernelLinkError::Timeout(_) => "timeout",
            KernelLinkError::Request(_) | KernelLinkError::Transport(_) => "failed",
        }
    }

    /// What it says, for the plugin (loongd's message for a remote error).
    pub fn message(&self) -> String {
        match self {
            KernelLinkError::Remote(r) => r.message.clone(),
            other => other.to_string(),
        }
    }
}

fn transport(e: impl std::fmt::Display) -> KernelLinkError {
    KernelLinkError::Transport(e.to_string())
}

impl KernelLink {
    pub(crate) fn new(conn: Shared, call: RequestId) -> KernelLink {
        KernelLink {
            conn,
            call,
            next: 0,
            in_flight: BTreeSet::new(),
        }
    }

    /// The connection and the request, for a service's [`crate::service::AsyncLink`].
    pub(crate) fn into_parts(self) -> (Shared, RequestId) {
        (self.conn, self.call)
    }

    /// The request this link speaks for.
    pub fn call_id(&self) -> RequestId {
        self.call
    }

    /// Sends `req` as a kernel call that loongd may take up to `timeout` to answer; returns
    /// its id.
    pub fn send(
        &mut self,
        req: &KernelRequest,
        timeout: Duration,
    ) -> Result<RequestId, KernelLinkError> {
        self.next += 1;
        let id = self.next;
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let call = req.encode(id, self.call, ms)?;
        lock(&self.conn)
            .write(&Reply::<WorkerResponse>::Kernel(call))
            .map_err(transport)?;
        self.in_flight.insert(id);
        Ok(id)
    }

    /// Withdraws kernel call `id`; its answer, if one comes, is dropped.
    pub fn cancel(&mut self, id: RequestId) -> Result<(), KernelLinkError> {
        if self.in_flight.remove(&id) {
            lock(&self.conn)
                .write(&Reply::<WorkerResponse>::KernelCancel { id })
                .map_err(transport)?;
        }
        Ok(())
    }

    /// The next answer to one of the calls in flight, waiting until `until`: its id and
    /// the answer's bytes, or loongd's error. `Ok(None)` when nothing answered in time.
    pub fn next_answer(
        &mut self,
        until: Instant,
    ) -> Result<Option<(RequestId, Answer)>, KernelLinkError> {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut conn = lock(&self.conn);
            let frame: Call<WorkerRequest> = match conn.read(Some(left)) {
                Ok(Some(f)) => f,
                Ok(None) => return Err(transport("loongd closed the socket")),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(None),
                Err(e) => return Err(transport(e)),
            };
            match frame {
                Call::KernelReply { id, result } => {
                    if self.in_flight.remove(&id) {
                        return Ok(Some((id, result)));
                    }
                }
                Call::Ping { nonce } => conn
                    .write(&Reply::<WorkerResponse>::Pong { nonce })
                    .map_err(transport)?,
                // loongd sends no second request while one is in flight.
                Call::Request { id, .. } => {
                    return Err(transport(format!(
                        "loongd sent request {id} while request {} was in flight",
                        self.call
                    )))
                }
                Call::Cancel { .. } | Call::Stream { .. } => {}
            }
        }
    }

    /// One kernel call and its answer, waiting at most `timeout`; past it the call is
    /// withdrawn and the answer is [`KernelLinkError::Timeout`].
    pub fn call(
        &mut self,
        req: &KernelRequest,
        timeout: Duration,
    ) -> Result<Vec<u8>, KernelLinkError> {
        let until = Instant::now() + timeout;
        let id = self.send(req, timeout)?;
        loop {
            match self.next_answer(until)? {
                Some((got, result)) if got == id => return result.map_err(KernelLinkError::Remote),
                Some(_) => continue,
                None => {
                    self.cancel(id)?;
                    return Err(KernelLinkError::Timeout(timeout));
                }
            }
        }
    }
}
