//! One worker process and loongd's end of its socket: a request and its answer within a
//! deadline, a ping, the passing of a connection on the broker socket, whether the process
//! has exited, and its stderr relayed to the log. Every way a worker fails is a
//! [`WorkerFault`], whose class the call that met it fails with.

use std::{collections::HashMap, time::Duration};

use loong_ipc::{
    connection::{FrameReader, FrameWriter},
    Call, FailureClass, Reply, WorkerRequest, WorkerResponse,
};
use loong_sandbox::Child;
use tokio::{
    io::AsyncReadExt,
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
};

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
    pub(super) reader: FrameReader<OwnedReadHalf>,
    pub(super) writer: FrameWriter<OwnedWriteHalf>,
    pub(super) child: Option<Child>,
    pub(super) loaded: HashMap<String, u64>,
    pub(super) next_req: u64,
    /// loongd's end of the worker's fd 4, for a kind with a broker.
    pub(super) broker: Option<std::os::unix::net::UnixStream>,
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

impl Worker {
    /// Sends one request and waits for its answer until `deadline`.
    pub(super) async fn request(
        &mut self,
        body: WorkerRequest,
        deadline: Duration,
    ) -> Result<WorkerResponse, WorkerFault> {
        self.next_req += 1;
        let id = self.next_req;
        let call = Call::Request {
            id,
            deadline_ms: u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX),
            body,
        };
        let until = tokio::time::Instant::now() + deadline;
        self.writer
            .write(&call)
            .await
            .map_err(|e| WorkerFault::Died(format!("sending the request: {e}")))?;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let reply = tokio::time::timeout(left, self.reader.read::<Reply<WorkerResponse>>(None))
                .await
                .map_err(|_| WorkerFault::Deadline(deadline))?
                .map_err(|e| WorkerFault::Died(format!("reading the answer: {e}")))?
                .ok_or_else(|| WorkerFault::Died("the worker closed its socket".into()))?;
            match reply {
                Reply::Response { id: got, result } if got == id => {
                    return result.map_err(|e| WorkerFault::Protocol(format!("worker error: {e}")))
                }
                Reply::Pong { .. } => continue,
                other => {
                    return Err(WorkerFault::Protocol(format!(
                        "unexpected frame from the worker: {}",
                        frame_name(&other)
                    )))
                }
            }
        }
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
