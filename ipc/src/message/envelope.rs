//! The envelope around every frame after the handshake.
//!
//! The caller sends [`Call`]s; the callee sends [`Reply`]s. Requests carry an id, unique
//! among the caller's requests in flight, and a relative deadline in milliseconds (relative,
//! so the two processes need not agree on a clock). Replies match by id and may arrive in
//! any order. The callee bounds requests in flight per connection
//! ([`Limits::max_in_flight`](super::handshake::Limits)); one above it is answered with
//! [`ErrorKind::Overloaded`] at once.

use serde::{Deserialize, Serialize};

use super::{kernel::KernelCall, outcome::ErrorDetail};

/// A request id, chosen by the caller.
pub type RequestId = u64;

/// Bound on [`RemoteError::message`].
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;
/// The longest deadline a request may carry (one day); above it is treated as this.
pub const MAX_DEADLINE_MS: u32 = 24 * 60 * 60 * 1000;

/// A frame from the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Call<Req> {
    /// A request; answered by exactly one [`Reply::Response`] with the same id.
    Request {
        /// The caller's id for this request.
        id: RequestId,
        /// Milliseconds the caller will wait; the callee answers
        /// [`ErrorKind::DeadlineExceeded`] when it cannot finish in time.
        deadline_ms: u32,
        /// What is asked.
        body: Req,
    },
    /// The caller no longer wants the answer to request `id`; the callee stops work on it and
    /// answers [`ErrorKind::Cancelled`] (or nothing, when it had already answered).
    Cancel {
        /// The request to cancel.
        id: RequestId,
    },
    /// A liveness probe, answered by [`Reply::Pong`] with the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Input for request `id` while it runs (a sandboxed program's stdin). Ignored for
    /// requests that take no input.
    Stream {
        /// The request the chunk belongs to.
        id: RequestId,
        /// The chunk.
        chunk: StreamChunk,
    },
    /// The answer to the callee's kernel call `id` ([`Reply::Kernel`]): the answer's bytes
    /// (what they are depends on the call's kind), or why there are none. Only loongd sends
    /// it, only to its workers.
    KernelReply {
        /// The kernel call answered.
        id: RequestId,
        /// The answer, or why there is none.
        result: Result<Vec<u8>, RemoteError>,
    },
}

/// Bound on the bytes of one [`StreamChunk`].
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;
/// The [`StreamChunk::Interrupt`] that kills the program; the ones before it are delivered
/// to the program as SIGINT.
pub const INTERRUPTS_TO_KILL: u32 = 2;

/// A piece of a running request's byte streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum StreamChunk {
    /// Bytes for the program's stdin (at most [`MAX_CHUNK_BYTES`]).
    Stdin(Vec<u8>),
    /// The caller's stdin ended.
    StdinEnd,
    /// Bytes the program wrote to stdout (at most [`MAX_CHUNK_BYTES`]).
    Stdout(Vec<u8>),
    /// Bytes the program wrote to stderr (at most [`MAX_CHUNK_BYTES`]).
    Stderr(Vec<u8>),
    /// The operator interrupted the caller (Ctrl-C): the callee delivers SIGINT to the
    /// program, and kills it at the [`INTERRUPTS_TO_KILL`]th interrupt.
    Interrupt,
    /// The request waits for an operator's approval: its id (at most
    /// [`MAX_APPROVAL_ID_BYTES`]), so a client can offer to resolve it (`loongctl chat`). Sent
    /// with the note for people on stderr, which says the same in words.
    ApprovalPending(String),
}

/// Bound on the approval id a [`StreamChunk::ApprovalPending`] carries.
pub const MAX_APPROVAL_ID_BYTES: usize = 128;

impl StreamChunk {
    /// Whether the chunk is within [`MAX_CHUNK_BYTES`].
    pub fn within_bounds(&self) -> bool {
        match self {
            StreamChunk::Stdin(b) | StreamChunk::Stdout(b) | StreamChunk::Stderr(b) => {
                b.len() <= MAX_CHUNK_BYTES
            }
            StreamChunk::StdinEnd | StreamChunk::Interrupt => true,
            StreamChunk::ApprovalPending(id) => id.len() <= MAX_APPROVAL_ID_BYTES,
        }
    }
}

/// A frame from the callee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Reply<Resp> {
    /// The outcome of request `id`.
    Response {
        /// The request answered.
        id: RequestId,
        /// The answer, or why there is none.
        result: Result<Resp, RemoteError>,
    },
    /// The answer to [`Call::Ping`].
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Output of request `id` while it runs; its [`Reply::Response`] comes last.
    Stream {
        /// The request the chunk belongs to.
        id: RequestId,
        /// The chunk.
        chunk: StreamChunk,
    },
    /// A worker asks loongd for an effect on behalf of the request it serves (see
    /// [`kernel`](super::kernel)); answered by one [`Call::KernelReply`] with the same id.
    Kernel(KernelCall),
    /// The worker no longer wants the answer to its kernel call `id`; loongd stops work on
    /// it and sends no answer (one already on its way is dropped by the worker).
    KernelCancel {
        /// The kernel call withdrawn.
        id: RequestId,
    },
}

/// Why a request failed, as the callee tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[error("{kind}: {message}")]
pub struct RemoteError {
    /// The class of failure; loongctl maps it to an exit code.
    pub kind: ErrorKind,
    /// A human-readable explanation (at most [`MAX_ERROR_MESSAGE_BYTES`]). For people only:
    /// what a client acts on is `kind` and `detail`.
    pub message: String,
    /// What there is to act on beyond the class, typed (protocol 3).
    // Boxed in the property tests' strategy, whose nested type would overflow their stack.
    #[cfg_attr(
        test,
        proptest(
            strategy = "proptest::strategy::Strategy::boxed(proptest::prelude::any::<Option<ErrorDetail>>())"
        )
    )]
    pub detail: Option<ErrorDetail>,
}

impl RemoteError {
    /// An error of `kind`, its message cut to the bound on a character boundary.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> RemoteError {
        RemoteError {
            kind,
            message: super::truncated(message.into(), MAX_ERROR_MESSAGE_BYTES),
            detail: None,
        }
    }

    /// This error with its typed detail.
    pub fn with_detail(mut self, detail: ErrorDetail) -> RemoteError {
        self.detail = Some(detail);
        self
    }
}

/// Classes of request failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ErrorKind {
    /// The request was not valid (a field out of bounds, an unknown name).
    #[error("bad request")]
    BadRequest,
    /// The request's deadline passed before it finished.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The caller cancelled the request.
    #[error("cancelled")]
    Cancelled,
    /// Too many requests are in flight on this connection.
    #[error("overloaded")]
    Overloaded,
    /// A request with this id is already in flight.
    #[error("duplicate request id")]
    DuplicateId,
    /// Policy denied the effect.
    #[error("denied by policy")]
    Denied,
    /// The effect needs an approval that was not given in time.
    #[error("approval pending")]
    ApprovalPending,
    /// The host cannot enforce the sandbox the effect needs.
    #[error("sandbox unavailable")]
    SandboxUnavailable,
    /// The worker running the effect failed.
    #[error("worker failed")]
    WorkerFailed,
    /// The named thing does not exist.
    #[error("not found")]
    NotFound,
    /// The daemon is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// An unexpected failure inside the callee.
    #[error("internal error")]
    Internal,
    /// A budget of the call chain ran out (its depth, its calls, its wall time); the detail
    /// names which.
    #[error("budget exceeded")]
    BudgetExceeded,
}
