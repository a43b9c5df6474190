//! Who is on the other end of a unix socket, as the kernel recorded it at `connect`: the
//! supplementary groups (`SO_PEERGROUPS`), which unlike `/proc/PID/status` cannot describe
//! another process once the peer's pid is reused. Read through `sys` (the one module allowed
//! `unsafe`).

use std::{io, os::fd::BorrowedFd};

/// The supplementary groups the peer of the unix socket `fd` had when it connected.
pub fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    crate::sys::peer_groups(fd)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peer_groups_are_this_process_s_own() {
        use std::os::fd::AsFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let mut got = super::peer_groups(a.as_fd()).expect("SO_PEERGROUPS");
        let mut want: Vec<u32> = nix::unistd::getgroups()
            .expect("getgroups")
            .iter()
            .map(|g| g.as_raw())
            .collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    }
}
