//! The sandbox's own helper on the way out: with a network grant, the reaper brings up the
//! loopback of the sandbox's empty network namespace, binds the HTTP proxy's listener and one
//! listener per raw forward on 127.0.0.1, and forks the relay. The relay only accepts: each
//! accepted connection goes to loongd's egress broker over the egress socket as one message,
//! one tag byte (0 = the proxy, i = the i-th forward) with the socket by `SCM_RIGHTS`. It
//! holds nothing else (every other descriptor is closed), runs as the sandbox's uid, not
//! dumpable (so the payload cannot take its descriptors), with `no_new_privs`, and under a seccomp allowlist of the few calls it makes
//! ([`crate::seccomp::RELAY_SYSCALLS`]). The payload never holds the listeners or the egress
//! socket: the reaper closes its copies before it forks the payload.

use std::{
    io::IoSlice,
    net::{Ipv4Addr, TcpListener},
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
};

use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::{
        prctl,
        signal::Signal,
        socket::{accept4, sendmsg, ControlMessage, MsgFlags, SockFlag},
    },
};

use super::{nix_fail, Failure};
use crate::{
    plan::{EgressPlan, Plan},
    sys::{self, Forked},
};

fn io_fail(step: &'static str, detail: String) -> impl FnOnce(std::io::Error) -> Failure {
    move |e| Failure::new(step, e.raw_os_error().unwrap_or(libc::EIO), detail)
}

/// In the reaper, inside the sandbox's namespaces: the loopback, the listeners and the
/// relay. `sock` is the egress socket's descriptor; the reaper's copies of it and of the
/// listeners are closed before this returns.
pub(super) fn start(plan: &Plan, egress: &EgressPlan, sock: RawFd) -> Result<(), Failure> {
    let sock = sys::adopt_fd(sock).map_err(io_fail("egress socket", format!("fd {sock}")))?;
    sys::loopback_up().map_err(io_fail("bring up loopback", "lo".into()))?;
    let mut listeners = Vec::with_capacity(1 + egress.forwards.len());
    for port in std::iter::once(egress.proxy_port).chain(egress.forwards.iter().copied()) {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(io_fail(
            "bind egress listener",
            format!("127.0.0.1:{port} (two grants for one port, or the proxy's port)"),
        ))?;
        l.set_nonblocking(true)
            .map_err(io_fail("bind egress listener", format!("127.0.0.1:{port}")))?;
        listeners.push(l);
    }
    match sys::fork().map_err(io_fail("fork egress relay", String::new()))? {
        Forked::Child => relay(plan, listeners, sock),
        Forked::Parent(_) => Ok(()),
    }
}

/// The relay process. Never returns.
fn relay(plan: &Plan, listeners: Vec<TcpListener>, sock: OwnedFd) -> ! {
    // Not the reaper's handlers (its SIGTERM handler kills the reaper's children).
    sys::reset_handlers();
    if confine(plan, &listeners, &sock).is_err() {
        sys::exit_now(super::SETUP_FAILED);
    }
    let mut fds: Vec<PollFd> = listeners
        .iter()
        .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
        .collect();
    loop {
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => sys::exit_now(1),
        }
        for (tag, pfd) in fds.iter().enumerate() {
            if !pfd
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLIN))
            {
                continue;
            }
            let listener = listeners[tag].as_raw_fd();
            loop {
                let conn = match accept4(listener, SockFlag::SOCK_CLOEXEC) {
                    Ok(c) => c,
                    Err(nix::Error::EINTR) => continue,
                    // EAGAIN: drained; anything else (a descriptor limit): wait for the next.
                    Err(_) => break,
                };
                let conn = match sys::adopt_fd(conn) {
                    Ok(c) => c,
                    Err(_) => break,
                };
                let fd = [conn.as_raw_fd()];
                let tag = [tag as u8];
                let sent = sendmsg::<()>(
                    sock.as_raw_fd(),
                    &[IoSlice::new(&tag)],
                    &[ControlMessage::ScmRights(&fd)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                );
                drop(conn);
                if sent.is_err() {
                    // loongd's broker is gone: nothing can leave any more.
                    sys::exit_now(0);
                }
            }
        }
    }
}

/// Only the listeners and the egress socket stay open; the sandbox's uid; `no_new_privs`;
/// then the allowlist.
fn confine(plan: &Plan, listeners: &[TcpListener], sock: &OwnedFd) -> Result<(), Failure> {
    let reaper = nix::unistd::getppid();
    let mut keep: Vec<u32> = listeners
        .iter()
        .map(|l| l.as_raw_fd() as u32)
        .chain(std::iter::once(sock.as_raw_fd() as u32))
        .collect();
    keep.sort_unstable();
    let mut from = 0u32;
    for k in keep {
        if k > from {
            sys::close_between(from, k - 1).map_err(io_fail("close_range", String::new()))?;
        }
        from = k + 1;
    }
    sys::close_from(from).map_err(io_fail("close_range", String::new()))?;
    // Undumpable from within the id change on (`take_ids`): no process of the sandbox's uid
    // reaches the relay's memory or descriptors at any point, whatever `fs.suid_dumpable`.
    if let Some((uid, gid)) = plan.creds {
        super::confine::take_ids(uid, gid, "")?;
    }
    // After the uid change, which clears a parent-death signal: the relay (and with it the
    // egress socket) dies with the reaper even without a pid namespace; if the reaper is gone
    // already, so is the relay.
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(nix_fail("set parent-death signal"))?;
    if nix::unistd::getppid() != reaper {
        sys::exit_now(0);
    }
    // Not dumpable: a payload of the same uid can neither ptrace it nor take its descriptors
    // (`pidfd_getfd`), whichever uid mapping the sandbox has.
    prctl::set_dumpable(false).map_err(nix_fail("set dumpable"))?;
    prctl::set_no_new_privs().map_err(nix_fail("no_new_privs"))?;
    let filter = crate::seccomp::relay_filter()
        .map_err(|e| Failure::new("relay seccomp", libc::EINVAL, e.to_string()))?;
    seccompiler::apply_filter(&filter)
        .map_err(|e| Failure::new("relay seccomp", libc::EINVAL, e.to_string()))?;
    Ok(())
}
