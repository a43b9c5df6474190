//! The control API: loongctl (or any operator client) → loongd, on the control socket.

use serde::{Deserialize, Serialize};

/// Bound on each text field of [`StatusReport`].
pub const MAX_STATUS_TEXT_BYTES: usize = 4096;

/// What an operator client asks loongd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ControlRequest {
    /// Report the daemon's identity and state; answered by [`ControlResponse::Status`].
    Status,
    /// Shut down gracefully: stop accepting, finish requests in flight, remove the socket;
    /// answered by [`ControlResponse::ShuttingDown`] before the daemon exits.
    Shutdown,
}

/// loongd's answers on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ControlResponse {
    /// The answer to [`ControlRequest::Status`].
    Status(StatusReport),
    /// The answer to [`ControlRequest::Shutdown`]: the daemon is going down.
    ShuttingDown,
}

/// The daemon's state as `loongctl status` shows it.
///
/// Paths are sent as text (lossily converted when they are not UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct StatusReport {
    /// loongd's version.
    pub version: String,
    /// The protocol version it speaks.
    pub protocol_version: u16,
    /// Its process id.
    pub pid: u32,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// Its home (state directory).
    pub home: String,
    /// The control socket's path.
    pub socket_path: String,
    /// Clients connected to the control socket, this one included.
    pub connected_clients: u32,
}
