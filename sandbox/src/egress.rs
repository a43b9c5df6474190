//! loongd's end of a sandbox's egress socket: the socket pair, and one message read from it
//! (a tag byte and the accepted connection the sandbox's relay passed; see
//! `helper/relay.rs`).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
};

/// A `SOCK_SEQPACKET` socket pair (close-on-exec): loongd's end first (non-blocking), the
/// sandbox's second (blocking: its relay waits for room; its [`crate::SandboxSpec::egress`]).
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::{
        fcntl::{fcntl, FcntlArg, OFlag},
        sys::socket::{socketpair, AddressFamily, SockFlag, SockType},
    };
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    fcntl(ours.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    Ok((ours, theirs))
}

/// One message, without blocking (`WouldBlock` when none is queued): its tag and the
/// descriptors it carried; `None` once the sandbox's end is closed.
pub fn receive(sock: BorrowedFd<'_>) -> io::Result<Option<(u8, Vec<OwnedFd>)>> {
    crate::sys::recv_tagged(sock)
}
