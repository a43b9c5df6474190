//! The handshake: the first frame each way on every connection.
//!
//! The caller sends [`Hello`]; the callee answers [`HandshakeReply::Welcome`] or
//! [`HandshakeReply::Rejected`] and, after a rejection, closes. `protocol_version` is the
//! first field of `Hello` and of `Welcome`, so a peer of any version can read it: a
//! mismatch is the typed [`HandshakeError::VersionMismatch`] on both sides.

use serde::{Deserialize, Serialize};

use super::{check_len, BoundError};
use crate::frame::{self, FrameError};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 7;
/// Bound on [`Hello::build`] and [`Welcome::build`].
pub const MAX_BUILD_BYTES: usize = 128;

/// Who opens a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum PeerKind {
    /// An operator client such as loongctl, on the control socket.
    Operator,
    /// A worker process spawned by loongd, on its inherited socketpair.
    Worker,
    /// loongd itself, when it is the caller (towards a worker).
    Kernel,
}

/// The first frame a caller sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Hello {
    /// The protocol version the caller speaks; must stay the first field.
    pub protocol_version: u16,
    /// What kind of peer the caller is.
    pub peer_kind: PeerKind,
    /// The caller's build, for logs (at most [`MAX_BUILD_BYTES`]).
    pub build: String,
}

impl Hello {
    /// A `Hello` for this build.
    pub fn new(peer_kind: PeerKind, build: impl Into<String>) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            peer_kind,
            build: build.into(),
        }
    }

    /// Reads a `Hello` body: the version first, so a mismatch is reported as such even when
    /// the rest of the body has a layout this build does not know.
    pub fn decode(body: &[u8]) -> Result<Hello, HandshakeError> {
        let (version, _) = postcard::take_from_bytes::<u16>(body).map_err(|source| {
            HandshakeError::Frame(FrameError::Malformed {
                len: body.len(),
                source,
            })
        })?;
        if version == 0 {
            // Versions start at 1; a zero is some other message sent before the hello.
            return Err(HandshakeError::NotAHello);
        }
        if version != PROTOCOL_VERSION {
            return Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
        let hello: Hello = frame::decode_body(body)?;
        check_len("build", &hello.build, MAX_BUILD_BYTES)?;
        Ok(hello)
    }
}

/// Limits the callee applies to this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Limits {
    /// Largest frame body either side may send.
    pub max_frame_bytes: u32,
    /// Requests the callee accepts in flight at once on this connection.
    pub max_in_flight: u32,
    /// Once a frame's first byte arrives, the rest must arrive within this many ms.
    pub frame_read_timeout_ms: u32,
}

/// The callee's acceptance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Welcome {
    /// The protocol version the callee speaks; must stay the first field.
    pub protocol_version: u16,
    /// The callee's build (at most [`MAX_BUILD_BYTES`]).
    pub build: String,
    /// An id for this connection, as it appears in the callee's logs.
    pub connection_id: u64,
    /// The limits in force.
    pub limits: Limits,
}

/// Why a callee refused a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum RejectReason {
    /// The caller's protocol version is not the callee's.
    #[error("protocol version mismatch: server speaks {server}, client speaks {client}")]
    VersionMismatch { server: u16, client: u16 },
    /// The peer's uid (from SO_PEERCRED) is neither the daemon's, root, nor in the allowed group.
    #[error(
        "uid {uid} is not allowed on this socket (only root, the daemon's own uid and members of its `control.allowed_group` may connect; run loongctl as one of them)"
    )]
    PeerNotAllowed { uid: u32 },
    /// The callee already serves its maximum number of connections.
    #[error("too many connections (limit {limit})")]
    TooManyConnections { limit: u32 },
    /// This socket does not serve this kind of peer.
    #[error("peer kind {kind:?} is not served on this socket")]
    WrongPeerKind { kind: PeerKind },
    /// The first frame was not a valid `Hello`.
    #[error("the first frame was not a valid hello")]
    BadHello,
    /// The callee is shutting down.
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

/// The callee's answer to `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum HandshakeReply {
    /// The connection is accepted with these limits.
    Welcome(Welcome),
    /// The connection is refused; the callee closes it after this frame.
    Rejected(RejectReason),
}

impl HandshakeReply {
    /// Turns the reply a caller received into the callee's limits or a typed error.
    pub fn into_welcome(self) -> Result<Welcome, HandshakeError> {
        match self {
            HandshakeReply::Welcome(w) if w.protocol_version != PROTOCOL_VERSION => {
                Err(HandshakeError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: w.protocol_version,
                })
            }
            HandshakeReply::Welcome(w) => {
                check_len("build", &w.build, MAX_BUILD_BYTES)?;
                Ok(w)
            }
            HandshakeReply::Rejected(RejectReason::VersionMismatch { server, client }) => {
                Err(HandshakeError::VersionMismatch {
                    ours: client,
                    theirs: server,
                })
            }
            HandshakeReply::Rejected(reason) => Err(HandshakeError::Rejected(reason)),
        }
    }
}

/// A handshake that did not complete.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The peers speak different protocol versions.
    #[error("protocol version mismatch: this side speaks {ours}, the peer speaks {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },
    /// The peer refused the connection.
    #[error("refused: {0}")]
    Rejected(RejectReason),
    /// The first frame was some other message (its leading field is not a version).
    #[error("the first frame is not a hello")]
    NotAHello,
    /// The handshake frame did not decode.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A handshake field is over its bound.
    #[error(transparent)]
    Bound(#[from] BoundError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_future_hello_is_reported_as_a_version_mismatch() {
        // Version 9 with a body layout this build cannot parse.
        let mut body = postcard::to_allocvec(&9u16).expect("encodes");
        body.extend_from_slice(&[0xff; 40]);
        assert_eq!(
            Hello::decode(&body),
            Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 9
            })
        );
        let ok = postcard::to_allocvec(&Hello::new(PeerKind::Operator, "t")).expect("encodes");
        assert_eq!(Hello::decode(&ok), Ok(Hello::new(PeerKind::Operator, "t")));
    }

    #[test]
    fn a_request_sent_before_the_hello_is_not_a_hello() {
        use crate::{Call, ControlRequest};
        let body = postcard::to_allocvec(&Call::Request {
            id: 1,
            deadline_ms: 5,
            body: ControlRequest::Status,
        })
        .expect("encodes");
        assert_eq!(Hello::decode(&body), Err(HandshakeError::NotAHello));
    }

    #[test]
    fn both_sides_see_a_typed_mismatch() {
        let server_says = HandshakeReply::Rejected(RejectReason::VersionMismatch {
            server: 1,
            client: 2,
        });
        assert_eq!(
            server_says.into_welcome(),
            Err(HandshakeError::VersionMismatch { ours: 2, theirs: 1 })
        );
        let limits = Limits {
            max_frame_bytes: 1,
            max_in_flight: 1,
            frame_read_timeout_ms: 1,
        };
        let w = Welcome {
            protocol_version: PROTOCOL_VERSION + 1,
            build: String::new(),
            connection_id: 1,
            limits,
        };
        assert_eq!(
            HandshakeReply::Welcome(w).into_welcome(),
            Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: PROTOCOL_VERSION + 1
            })
        );
    }

    #[test]
    fn oversize_build_strings_are_refused() {
        let h = Hello::new(PeerKind::Worker, "x".repeat(MAX_BUILD_BYTES + 1));
        let body = postcard::to_allocvec(&h).expect("encodes");
        assert_eq!(
            Hello::decode(&body),
            Err(HandshakeError::Bound(BoundError {
                field: "build",
                len: MAX_BUILD_BYTES + 1,
                max: MAX_BUILD_BYTES
            }))
        );
    }
}
