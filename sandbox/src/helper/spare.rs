//! A sandbox built ahead of its request: the spawn server keeps one *spare* helper, forked
//! while it is idle for the shape of the runs it has been asked for lately
//! ([`template::shape`]: namespaces, hostname, mount steps, ids), which does what a run's
//! helper does before the payload (the template entered, the namespaces unshared, the reaper
//! forked, its `/proc` and `/tmp` mounted) and then waits. A
//! request whose shape is the spare's is handed to it; any other is forked as before, and so
//! is every run when no spare is ready.
//!
//! The spare is never trusted to be what it was: everything a run's own helper reads before
//! its payload is read again, or checked unchanged, when the run comes. When a request is
//! handed to it, the helper checks that the template is the one a run's helper would choose
//! now (each bind source the same object, found from the host's root it held before it
//! entered the template) and that every mount it keeps is in place ([`template::intact`]),
//! before it says it takes the run (a changed one is refused, the server told, and the
//! request forked as before); the reaper reads the run's real plan and refuses to run
//! anything (a setup failure) unless its shape is the one the sandbox was built for and its
//! descriptors are the ones the plan hands over; the payload's own confinement (ids,
//! rlimits, landlock, seccomp, the gate) is the run's, made after that, as for every run. A
//! spare is used once, and dropped (killed) when the server's templates change (a host
//! mount change, a template found changed, built or evicted) and with the server (its
//! parent-death signal).
//!
//! Protocol on the spare's socket (a `SOCK_SEQPACKET` pair, the server's end and the
//! helper's): the helper sends [`READY`] once its reaper's root is built; the server offers a
//! request as the number of handed-over descriptors and of all its descriptors (u32 LE
//! each); the helper answers [`TAKEN`], or [`STALE`] and exits; after `TAKEN` the server
//! sends [`GO`] with the request's descriptors (`SCM_RIGHTS`, in the request's order). Between the helper and its reaper, on a
//! pair of their own: [`READY`] from the reaper, then the run's descriptors (the plan's pipe,
//! stdio, the handed-over ones and the gate).

use std::{
    fs::File,
    io::Read,
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::{
        prctl,
        signal::Signal,
        socket::{recv, send, MsgFlags},
    },
    unistd::Pid,
};

use super::{
    confine, fail, reaper_run, reaper_start,
    server::{FIXED_FDS, MAX_PASS_FDS},
    template, Failure, FIRST_PASSED_FD, SETUP_FAILED,
};
use crate::{
    plan::{Plan, MAX_PLAN_BYTES},
    sys::{self, Forked},
};

/// The spare's message: its sandbox is built and waits for a run.
const READY: u8 = b'R';
/// The spare's answer to a request handed to it: it runs it.
const TAKEN: u8 = b'K';
/// The spare's answer to a request handed to it: its template changed since it was built; it
/// runs nothing and exits.
const STALE: u8 = b'S';
/// The server's word after [`TAKEN`], carrying the request's descriptors: run it. Until it
/// comes the spare has none of them, so a server that gave up waiting (and forks the request
/// as any other) kills a spare that can run nothing and holds nothing of the run: a run is
/// never started twice.
const GO: u8 = b'G';
/// How long the server waits for the spare's answer to a request before it drops the spare
/// and forks the request as any other.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a shape whose spare failed waits before another is built for it (sooner when the
/// templates change): a spare that keeps failing costs a fork a while, not one per request.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(5);
/// Where the spare's and its reaper's own descriptors are moved: above every descriptor a run
/// places (stdio, the handed-over ones, the egress socket and the gate) and below the
/// templates' parked descriptors, so placing a run's descriptors overwrites none of them.
const SPARE_SOCK_FD: RawFd = 40;
const _: () = assert!(SPARE_SOCK_FD > FIRST_PASSED_FD + MAX_PASS_FDS as RawFd);
/// The spare's other descriptors go at or above this (a handful, below the templates').
const SPARE_FDS_FROM: RawFd = SPARE_SOCK_FD + 1;

/// The server's spare: its helper (pid, pidfd, socket), the shape it was built for and the
/// templates' generation it was built in.
pub(super) struct Spare {
    pid: i32,
    pidfd: OwnedFd,
    sock: OwnedFd,
    shape: Vec<u8>,
    generation: u64,
    ready: bool,
    /// Set once it has taken a run, which it then runs for the request's caller.
    taken: bool,
}

impl Drop for Spare {
    fn drop(&mut self) {
        // Its reaper dies with it (parent-death signal).
        if !self.taken {
            let _ = sys::pidfd_send_signal(self.pidfd.as_raw_fd(), libc::SIGKILL);
        }
    }
}

/// What became of a request offered to the spare.
pub(super) enum Handed {
    /// The spare runs it: its helper's pid and pidfd, the server's answer.
    Taken(i32, OwnedFd),
    /// The spare cannot (not built yet, another shape): fork it as any other; the spare is
    /// given back.
    Refused(Spare),
    /// The spare is gone, or was handed the request and did not take it in time (changed
    /// since it was built, too slow): killed; fork it as any other.
    Failed,
}

impl Spare {
    /// Forks a spare for `shape` (a [`template::shape`]) in the templates' `generation`, its
    /// descriptors moved at or above `stage_min` (closed by every request's child). `None`
    /// when it cannot be forked.
    pub(super) fn make(shape: &[u8], generation: u64, stage_min: RawFd) -> Option<Spare> {
        let (ours, theirs) = sys::seqpacket_pair().ok()?;
        let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
        let server = nix::unistd::getpid();
        match sys::fork().ok()? {
            Forked::Child => {
                drop((ours, go_w));
                // Die with the server, as a request's helper does; wait until the server
                // holds a pidfd for it.
                let mut go = [0u8; 1];
                if prctl::set_pdeathsig(Signal::SIGKILL).is_err()
                    || nix::unistd::getppid() != server
                    || !matches!(nix::unistd::read(go_r.as_raw_fd(), &mut go), Ok(1))
                {
                    sys::exit_now(SETUP_FAILED);
                }
                drop(go_r);
                build(shape, theirs)
            }
            Forked::Parent(pid) => {
                drop((theirs, go_r));
                let high = |fd: &OwnedFd| -> Option<OwnedFd> {
                    let raw = nix::fcntl::fcntl(
                        fd.as_raw_fd(),
                        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(stage_min),
                    )
                    .ok()?;
                    sys::adopt_fd(raw).ok()
                };
                // Without the byte (go_w closed here), the child exits.
                let pidfd = sys::pidfd_open(pid).ok().and_then(|p| high(&p))?;
                let sock = high(&ours)?;
                nix::unistd::write(&go_w, b"g").ok()?;
                Some(Spare {
                    pid,
                    pidfd,
                    sock,
                    shape: shape.to_vec(),
                    generation,
                    ready: false,
                    taken: false,
                })
            }
        }
    }

    /// The shape the spare was built for.
    pub(super) fn shape(&self) -> &[u8] {
        &self.shape
    }

    /// The templates' generation the spare was built in.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the spare has said it is built (without waiting); `None` once it is gone.
    fn ready(&mut self) -> Option<bool> {
        if self.ready {
            return Some(true);
        }
        let mut b = [0u8; 1];
        match recv(self.sock.as_raw_fd(), &mut b, MsgFlags::MSG_DONTWAIT) {
            Ok(1) if b[0] == READY => {
                self.ready = true;
                Some(true)
            }
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => Some(false),
            _ => None,
        }
    }

    /// Offers the request `fds` (in the request's order, `pass` of them handed over) of the
    /// shape `shape` to the spare. Taken, the server closes its copies and answers with the
    /// spare's pid and pidfd.
    pub(super) fn hand(mut self, shape: &[u8], fds: &[OwnedFd], pass: u32) -> Handed {
        if self.shape != shape {
            return Handed::Refused(self);
        }
        match self.ready() {
            Some(true) => {}
            Some(false) => return Handed::Refused(self),
            None => return Handed::Failed,
        }
        // The answer's pidfd, made before the spare can take anything.
        let Ok(answer) = self.pidfd.try_clone() else {
            return Handed::Refused(self);
        };
        // The request's size first, without its descriptors: a spare the server gives up on
        // holds none of them (the run forked instead would wait for its end).
        let count = u32::try_from(fds.len()).unwrap_or(u32::MAX);
        let mut offer = [0u8; 8];
        offer[..4].copy_from_slice(&pass.to_le_bytes());
        offer[4..].copy_from_slice(&count.to_le_bytes());
        if send(self.sock.as_raw_fd(), &offer, MsgFlags::MSG_NOSIGNAL).is_err() {
            return Handed::Failed;
        }
        let mut polls = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(ANSWER_TIMEOUT).unwrap_or(PollTimeout::ZERO);
        let answered = loop {
            match poll(&mut polls, timeout) {
                Err(nix::Error::EINTR) => continue,
                Ok(n) => break n > 0,
                Err(_) => break false,
            }
        };
        let mut b = [0u8; 1];
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        if answered
            && matches!(recv(self.sock.as_raw_fd(), &mut b, MsgFlags::MSG_DONTWAIT), Ok(1) if b[0] == TAKEN)
            && nix::sys::socket::sendmsg::<()>(
                self.sock.as_raw_fd(),
                &[std::io::IoSlice::new(&[GO])],
                &[nix::sys::socket::ControlMessage::ScmRights(&raw)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .is_ok()
        {
            self.taken = true;
            return Handed::Taken(self.pid, answer);
        }
        // Stale, gone or too slow: killed (its drop) and the request forked as any other.
        Handed::Failed
    }
}

/// The spare's helper, forked by the server: builds the sandbox for `shape` as a run's
/// helper would, up to its reaper's root, says it is ready and waits for its run. Never
/// returns; exits without a word when anything fails before a run is handed to it (the
/// server sees its socket's end).
fn build(shape_bytes: &[u8], sock: OwnedFd) -> ! {
    let quit = || -> ! { sys::exit_now(SETUP_FAILED) };
    if sys::sigchld(false).is_err() {
        quit();
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let Ok(mut shape) = Plan::decode(shape_bytes) else {
        quit()
    };
    if template::shape(&shape).as_deref() != Some(shape_bytes) {
        quit();
    }
    if shape.share_netns && shape.namespaces & libc::CLONE_NEWNET != 0 {
        if let Some(netns) = super::server::SHARED_NETNS.get() {
            if nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                quit();
            }
            shape.namespaces &= !libc::CLONE_NEWNET;
        }
    }
    let Some(chosen) = template::choose(&shape) else {
        quit()
    };

    // Only the socket, the template and the template socket stay (a changed template is told
    // to the server on it).
    let parked = park(&sock, SPARE_SOCK_FD);
    drop(sock);
    let Ok(sock) = parked else { quit() };
    let t = template::TEMPLATE_SOCK_FD as u32;
    if sys::close_between(3, SPARE_SOCK_FD as u32 - 1).is_err()
        || sys::close_between(SPARE_SOCK_FD as u32 + 1, chosen.fd as u32 - 1).is_err()
        || sys::close_between(chosen.fd as u32 + 1, t - 1).is_err()
        || sys::close_from(t + 1).is_err()
    {
        quit();
    }
    let Ok(ns) = sys::adopt_fd(chosen.fd) else {
        quit()
    };
    // The host's root (opened before the template is entered), from which the bind sources
    // are found again when a run comes.
    let Ok(host_root) = super::mounts::host_root()
        .map_err(drop)
        .and_then(|r| high(&r).map_err(drop))
    else {
        quit()
    };
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .ok()
        .and_then(|f| high(&OwnedFd::from(f)).ok())
        .map(File::from);
    // Its stdio is the server's until then: a spare holds the host's null device there, as a
    // run's helper does once its payload has started.
    super::leave_stdio(null.as_ref());
    if nix::unistd::setsid().is_err()
        || nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS).is_err()
        || confine::unshare(&shape).is_err()
    {
        quit();
    }
    drop(ns);
    if !template::intact(&shape, &chosen) {
        quit();
    }
    let pair = || -> std::io::Result<(OwnedFd, OwnedFd)> {
        let (a, b) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok((high(&a)?, high(&b)?))
    };
    let (Ok((err_r, err_w)), Ok((st_r, st_w))) = (pair(), pair()) else {
        quit()
    };
    let Ok((hand, theirs)) = sys::seqpacket_pair().and_then(|(a, b)| Ok((high(&a)?, high(&b)?)))
    else {
        quit()
    };
    let reaper = match sys::fork() {
        Ok(Forked::Child) => {
            drop((err_r, st_r, hand, sock, host_root));
            let _ = nix::unistd::close(template::TEMPLATE_SOCK_FD);
            spare_reaper(&shape, shape_bytes, err_w, st_w, null.as_ref(), theirs)
        }
        Ok(Forked::Parent(pid)) => Pid::from_raw(pid),
        Err(_) => quit(),
    };
    drop((err_w, st_w, theirs));
    let mut b = [0u8; 1];
    if !matches!(recv(hand.as_raw_fd(), &mut b, MsgFlags::empty()), Ok(1) if b[0] == READY)
        || send(sock.as_raw_fd(), &[READY], MsgFlags::MSG_NOSIGNAL).is_err()
    {
        quit();
    }
    // The run: its size, then (once the spare takes it and the server says go) its
    // descriptors.
    let mut offer = [0u8; 8];
    if !matches!(recv(sock.as_raw_fd(), &mut offer, MsgFlags::empty()), Ok(8)) {
        quit();
    }
    let pass = u32::from_le_bytes([offer[0], offer[1], offer[2], offer[3]]) as usize;
    let count = u32::from_le_bytes([offer[4], offer[5], offer[6], offer[7]]) as usize;
    if pass > MAX_PASS_FDS || count != FIXED_FDS + pass {
        quit();
    }
    // The checks a run's own helper makes, now, when the run starts: the template is the one
    // it would choose (the same bind sources) and still intact; and the reaper is alive (its
    // end of the pair not closed).
    let reaper_alive = {
        let mut p = [PollFd::new(hand.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut p, PollTimeout::ZERO), Ok(0))
    };
    if !reaper_alive || !template::still_chosen(&shape, &chosen, host_root.as_fd()) {
        let _ = send(sock.as_raw_fd(), &[STALE], MsgFlags::MSG_NOSIGNAL);
        quit();
    }
    let _ = nix::unistd::close(template::TEMPLATE_SOCK_FD);
    drop(host_root);
    if send(sock.as_raw_fd(), &[TAKEN], MsgFlags::MSG_NOSIGNAL).is_err() {
        quit();
    }
    let Ok(got) = sys::recv_owning_fds(sock.as_fd(), &mut b, FIXED_FDS + MAX_PASS_FDS, 0) else {
        quit()
    };
    if got.bytes != 1 || b[0] != GO || got.truncated || got.fds.len() != count {
        quit();
    }
    drop(sock);
    // Request order: plan, report, stdin, stdout, stderr, handed-over…; the reaper gets all
    // but the report, which is the helper's alone.
    let mut fds = got.fds;
    let mut report = File::from(fds.remove(1));
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let forwarded = nix::sys::socket::sendmsg::<()>(
        hand.as_raw_fd(),
        &[std::io::IoSlice::new(&[0u8])],
        &[nix::sys::socket::ControlMessage::ScmRights(&raw)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
    drop((fds, hand));
    if let Err(e) = forwarded {
        use std::io::Write;
        let f = Failure::new("hand the run to its reaper", e as i32, "");
        let _ = report.write_all(f.line().as_bytes());
        sys::exit_now(SETUP_FAILED);
    }
    let code = match super::attend(&mut report, reaper, err_r, st_r) {
        Ok(code) => code,
        Err(f) => {
            use std::io::Write;
            let _ = report.write_all(f.line().as_bytes());
            SETUP_FAILED
        }
    };
    sys::exit_now(code)
}

/// The spare's reaper: its root built for `shape`, it says so and waits for the run; then it
/// reads the run's plan, refuses it unless its shape is `shape_bytes` and it brought the
/// descriptors the plan hands over, places them, and runs the payload as every reaper does.
fn spare_reaper(
    shape: &Plan,
    shape_bytes: &[u8],
    err_w: OwnedFd,
    st_w: OwnedFd,
    null: Option<&File>,
    hand: OwnedFd,
) -> ! {
    let pdeathsig = reaper_start(shape, &err_w);
    if let Err(f) = confine::setup_root(shape, true) {
        fail(&err_w, &f);
    }
    if send(hand.as_raw_fd(), &[READY], MsgFlags::MSG_NOSIGNAL).is_err() {
        sys::exit_now(SETUP_FAILED);
    }
    let mut byte = [0u8; 1];
    let got = match sys::recv_owning_fds(hand.as_fd(), &mut byte, FIXED_FDS - 1 + MAX_PASS_FDS, 0) {
        Ok(got) if got.bytes == 1 => got,
        // The helper is gone, or left without a run (stale): nothing to report.
        _ => sys::exit_now(SETUP_FAILED),
    };
    drop(hand);
    let refuse =
        |detail: &str| -> ! { fail(&err_w, &Failure::new("spare sandbox", libc::EINVAL, detail)) };
    if got.truncated {
        refuse("more descriptors than a run hands over; nothing ran");
    }
    let mut fds = got.fds;
    if fds.is_empty() {
        refuse("no plan; nothing ran");
    }
    let mut buf = Vec::new();
    if let Err(e) = File::from(fds.remove(0))
        .take(MAX_PLAN_BYTES as u64 + 1)
        .read_to_end(&mut buf)
    {
        fail(
            &err_w,
            &Failure::new("read plan", e.raw_os_error().unwrap_or(0), ""),
        );
    }
    let plan = match Plan::decode(&buf) {
        Ok(plan) => plan,
        Err(e) => fail(
            &err_w,
            &Failure::new("decode plan", libc::EINVAL, e.to_string()),
        ),
    };
    if let Err(f) = check_run(shape_bytes, &plan, fds.len()) {
        fail(&err_w, &f);
    }
    // Stdio at 0, 1, 2; the handed-over descriptors and the gate from FIRST_PASSED_FD, where
    // the payload takes them. Each is moved above every target first, so none is overwritten
    // before it is placed.
    let mut targets = vec![0, 1, 2];
    targets.extend((0..fds.len() - 3).map(|i| FIRST_PASSED_FD + i as RawFd));
    let mut staged = Vec::with_capacity(fds.len());
    for fd in &fds {
        match high(fd) {
            Ok(s) => staged.push(s),
            Err(e) => fail(
                &err_w,
                &Failure::new(
                    "place the run's descriptors",
                    e.raw_os_error().unwrap_or(0),
                    "",
                ),
            ),
        }
    }
    drop(fds);
    for (from, &to) in staged.iter().zip(&targets) {
        if let Err(e) = nix::unistd::dup2(from.as_raw_fd(), to) {
            fail(
                &err_w,
                &Failure::new("place the run's descriptors", e as i32, ""),
            );
        }
    }
    drop(staged);
    reaper_run(&plan, pdeathsig, err_w, st_w, null)
}

/// Whether the run of `plan`, which brought `brought` descriptors besides its plan's (stdio,
/// the handed-over ones, the gate), may run in a sandbox built for the shape `shape_bytes`:
/// its own shape is that one (so it may have a spare at all, and every step made before it
/// came is the step its own helper would have made), and it brought what its plan hands over.
fn check_run(shape_bytes: &[u8], plan: &Plan, brought: usize) -> Result<(), Failure> {
    if template::shape(plan).as_deref() != Some(shape_bytes) {
        return Err(Failure::new(
            "spare sandbox",
            libc::EINVAL,
            "the run's plan is not of the shape its sandbox was built for; nothing ran",
        ));
    }
    // A run with a spare has no network grant (its shape says so): no egress socket.
    let expected = 3 + plan.pass_fds as usize + usize::from(plan.gate);
    if brought != expected {
        return Err(Failure::new(
            "spare sandbox",
            libc::EINVAL,
            format!("the run brought {brought} descriptors where its plan hands over {expected}; nothing ran"),
        ));
    }
    Ok(())
}

/// A close-on-exec copy of `fd` at or above [`SPARE_FDS_FROM`].
fn high(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    let raw = nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(SPARE_FDS_FROM),
    )?;
    sys::adopt_fd(raw)
}

/// A close-on-exec copy of `fd` at exactly `at`.
fn park(fd: &OwnedFd, at: RawFd) -> std::io::Result<OwnedFd> {
    let raw = nix::unistd::dup3(fd.as_raw_fd(), at, nix::fcntl::OFlag::O_CLOEXEC)?;
    sys::adopt_fd(raw)
}

/// The server's side: at most one spare, for the shape of the last two requests that could
/// have had one when they were the same (so that runs of two shapes, one after the other, do
/// not each throw the other's spare away).
#[derive(Default)]
pub(super) struct Spares {
    spare: Option<Spare>,
    /// The shape of the last request that could have had a spare.
    last: Option<Vec<u8>>,
    /// The shape a spare is kept for.
    wanted: Option<Vec<u8>>,
    /// A shape whose spare failed (ended before it was ready, or did not take a run in
    /// time), the templates' generation then, and when: not built again in that generation
    /// for [`RETRY_FAILED_AFTER`].
    failed: Option<(Vec<u8>, u64, Instant)>,
}

impl Spares {
    /// Between requests: drops a spare of another shape or of templates changed since, and
    /// forks one for the wanted shape when a template for it is kept.
    pub(super) fn prepare(&mut self, templates: &template::Templates, stage_min: RawFd) {
        let generation = templates.generation();
        if self.spare.as_ref().is_some_and(|s| {
            s.generation() != generation || Some(s.shape()) != self.wanted.as_deref()
        }) {
            self.spare = None;
        }
        if let Some(s) = &mut self.spare {
            if s.ready().is_none() {
                self.failed = Some((s.shape().to_vec(), s.generation(), Instant::now()));
                self.spare = None;
            }
        }
        let Some(wanted) = self.wanted.as_deref() else {
            return;
        };
        if self.spare.is_some()
            || self.failed.as_ref().is_some_and(|(f, g, at)| {
                f == wanted && *g == generation && at.elapsed() < RETRY_FAILED_AFTER
            })
        {
            return;
        }
        if Plan::decode(wanted).is_ok_and(|p| templates.serves(&p.mounts)) {
            self.spare = Spare::make(wanted, generation, stage_min);
        }
    }

    /// Offers a request of the shape `shape` (its descriptors `fds`, `pass` of them handed
    /// over) to the spare: its helper's pid and pidfd when the spare runs it.
    pub(super) fn hand(
        &mut self,
        templates: &template::Templates,
        shape: &[u8],
        fds: &[OwnedFd],
        pass: u32,
    ) -> Option<(i32, OwnedFd)> {
        if self.last.as_deref() == Some(shape) {
            if self.wanted.as_deref() != Some(shape) {
                self.wanted = Some(shape.to_vec());
            }
        } else {
            self.last = Some(shape.to_vec());
        }
        let spare = self.spare.take()?;
        if spare.generation() != templates.generation() {
            return None;
        }
        let failed = (spare.shape().to_vec(), spare.generation(), Instant::now());
        match spare.hand(shape, fds, pass) {
            Handed::Taken(pid, pidfd) => Some((pid, pidfd)),
            Handed::Refused(back) => {
                self.spare = Some(back);
                None
            }
            // Not built again until the templates change (a changed template the spare
            // found is dropped when the server reads its word): no request pays for a spare
            // that keeps failing.
            Handed::Failed => {
                self.failed = Some(failed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{EgressPlan, MountOp};

    /// A plan a spare may run: root mode's balanced shape, its own stdio, a gate.
    fn plan() -> Plan {
        Plan {
            namespaces: libc::CLONE_NEWNS
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWNET,
            hostname: "loong".into(),
            mounts: vec![
                MountOp::Bind {
                    src: "/usr".into(),
                    dst: "/usr".into(),
                    writable: false,
                },
                MountOp::Proc {
                    dst: "/proc".into(),
                },
                MountOp::Tmpfs {
                    dst: "/tmp".into(),
                    size: 1 << 20,
                    mode: 0o1777,
                },
            ],
            creds: Some((65534, 65534)),
            share_netns: true,
            program: "/bin/true".into(),
            argv: vec!["true".into()],
            cwd: "/".into(),
            gate: true,
            ..Plan::default()
        }
    }

    /// A spare runs only a plan of the shape it was built for, with the descriptors that plan
    /// hands over; each field of the shape changed, a network grant or a cgroup added, or a
    /// descriptor more or less, and it runs nothing. The control: the same plan, and one that
    /// differs only in what the payload does (program, arguments, environment, directory,
    /// limits), is run.
    #[test]
    fn a_spare_runs_only_a_plan_of_its_shape() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped a_spare_runs_only_a_plan_of_its_shape: shapes are root mode's");
            return;
        }
        let base = plan();
        let shape = template::shape(&base).expect("a shape");
        assert!(check_run(&shape, &base, 4).is_ok());
        let payload_only = Plan {
            program: "/bin/sh".into(),
            argv: vec!["sh".into(), "-c".into(), "exit 3".into()],
            env: vec!["A=b".into()],
            cwd: "/tmp".into(),
            rlimits: vec![(
                crate::plan::rlimit(nix::sys::resource::Resource::RLIMIT_NOFILE),
                64,
                64,
            )],
            pass_fds: 2,
            ..base.clone()
        };
        assert!(check_run(&shape, &payload_only, 6).is_ok());
        let others: Vec<(&str, Plan)> = vec![
            (
                "hostname",
                Plan {
                    hostname: "other".into(),
                    ..base.clone()
                },
            ),
            (
                "namespaces",
                Plan {
                    namespaces: base.namespaces & !libc::CLONE_NEWIPC,
                    ..base.clone()
                },
            ),
            (
                "ids",
                Plan {
                    creds: Some((1000, 1000)),
                    ..base.clone()
                },
            ),
            (
                "shared netns",
                Plan {
                    share_netns: false,
                    ..base.clone()
                },
            ),
            (
                "mounts",
                Plan {
                    mounts: base.mounts[1..].to_vec(),
                    ..base.clone()
                },
            ),
            (
                "writable bind",
                Plan {
                    mounts: vec![MountOp::Bind {
                        src: "/usr".into(),
                        dst: "/usr".into(),
                        writable: true,
                    }],
                    ..base.clone()
                },
            ),
            (
                "egress",
                Plan {
                    egress: Some(EgressPlan {
                        proxy_port: 3128,
                        forwards: Vec::new(),
                    }),
                    ..base.clone()
                },
            ),
            (
                "cgroup",
                Plan {
                    cgroup_join: vec!["/sys/fs/cgroup/x/cgroup.procs".into()],
                    ..base.clone()
                },
            ),
            (
                "no pid namespace",
                Plan {
                    namespaces: base.namespaces & !libc::CLONE_NEWPID,
                    ..base.clone()
                },
            ),
        ];
        for (what, other) in others {
            let err = check_run(&shape, &other, 4).expect_err(what);
            assert!(
                err.line().contains("not of the shape"),
                "{what}: {}",
                err.line()
            );
        }
        for brought in [3, 5] {
            let err = check_run(&shape, &base, brought).expect_err("descriptors");
            assert!(err.line().contains("descriptors where"), "{}", err.line());
        }
    }
}
