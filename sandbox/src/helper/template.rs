//! Prepared roots: the spawn server keeps, per distinct root, a *template* mount namespace
//! built once by a short-lived child exactly as a run's root is built
//! ([`mounts::build_template`]), held as an nsfs descriptor. A run whose root matches one
//! enters it (`setns`, which sets its root and working directory to the template's root),
//! unshares a private copy, and mounts only what is its own ([`mounts::enter`]): no tmpfs
//! root, no `pivot_root`, no binds, no detach of the old root.
//!
//! A template is keyed on everything that shapes the root: the plan's mount steps, encoded
//! whole, and the identity (device, inode) of every bind source as a bind pins it, so a
//! grant whose path was swapped for another directory (or a symlink, which pinning refuses)
//! builds another template rather than reusing the old bind. Any change to the server's
//! mount table (a host mount below a grant, an unmount) drops them all. The server keeps at
//! most [`MAX_TEMPLATES`], the least recently used dropped; a restarted server has none.
//! Only root mode without a user namespace uses them (the helper enters a template while it
//! is still privileged over the namespace's owner); rootless runs and the trusted tier (whose
//! root is the host's, bound whole) build their root as before.
//!
//! The helper asks the server for a template it missed on the server's template socket
//! (fd [`TEMPLATE_SOCK_FD`] in each helper, a `SOCK_SEQPACKET` pair): `b'B'` and the key it
//! computed; it says which template it used with `b'U'` and the template's serial (u64 LE),
//! for the least-recently-used order. The server builds between requests, never during one.

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
    sync::Mutex,
    time::{Duration, Instant},
};

use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::{
        prctl,
        signal::Signal,
        socket::{recv, send, MsgFlags},
    },
};

use super::{mounts, server::SHARED_NETNS_FD};
use crate::{
    plan::{MountOp, Plan},
    sys,
};

/// The most templates the server keeps.
pub const MAX_TEMPLATES: usize = 8;
/// The helper's end of the template socket, below the shared network namespace's descriptor.
pub(super) const TEMPLATE_SOCK_FD: RawFd = SHARED_NETNS_FD - 1;
/// Where the templates' descriptors are parked, one each from here: above every placement
/// target, below the template socket.
const FIRST_TEMPLATE_FD: RawFd = TEMPLATE_SOCK_FD - MAX_TEMPLATES as RawFd;
/// The largest key (a plan's mount steps and its sources' identities) a template is made for.
pub const MAX_KEY_BYTES: usize = 64 << 10;
/// How long the server waits for a template's builder before it gives up on it.
const BUILD_TIMEOUT: Duration = Duration::from_secs(2);
/// The most roots remembered as failed to prepare, the oldest forgotten first.
pub const MAX_FAILED: usize = 32;
/// How long a root that failed to prepare is not tried again.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(60);
/// Message tags on the template socket.
const BUILD: u8 = b'B';
const USED: u8 = b'U';
/// A helper found the template it entered changed since it was built (a kept mount gone or
/// replaced, [`mounts::template_marks`]): the server drops it.
const CHANGED: u8 = b'X';

/// One template as a forked helper sees it: its key, where its descriptor is parked, its
/// serial.
struct Known {
    key: Vec<u8>,
    fd: RawFd,
    serial: u64,
    marks: Vec<mounts::SourceId>,
}

/// The template a run enters: its parked descriptor, its serial, and the identity of each
/// mount it keeps as its builder saw them ([`mounts::template_marks`]).
pub(super) struct Chosen {
    pub fd: RawFd,
    pub serial: u64,
    pub marks: Vec<mounts::SourceId>,
    /// The identity of each bind source when it was chosen (the template's key has them).
    pub ids: Vec<mounts::SourceId>,
}

/// The server's templates as its forked helpers inherit them; `None` outside a server that
/// keeps templates (the helper then builds every root).
static KNOWN: Mutex<Option<Vec<Known>>> = Mutex::new(None);

/// A template's key: the mount steps (the plan encoding of a plan holding only them) and the
/// identity of each bind source, each length-prefixed.
pub(crate) fn key(ops: &[MountOp], ids: &[mounts::SourceId]) -> Vec<u8> {
    let steps = Plan {
        mounts: ops.to_vec(),
        ..Plan::default()
    }
    .encode();
    let mut k = Vec::with_capacity(8 + steps.len() + ids.len() * 16);
    k.extend_from_slice(&(steps.len() as u32).to_le_bytes());
    k.extend_from_slice(&steps);
    k.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for (dev, ino) in ids {
        k.extend_from_slice(&dev.to_le_bytes());
        k.extend_from_slice(&ino.to_le_bytes());
    }
    k
}

/// The mount steps a key was made from.
fn steps_of(key: &[u8]) -> Option<Vec<MountOp>> {
    let len = u32::from_le_bytes(key.get(..4)?.try_into().ok()?) as usize;
    let steps = key.get(4..4usize.checked_add(len)?)?;
    Plan::decode(steps).ok().map(|p| p.mounts)
}

/// Whether `plan`'s root may come from a template: root mode without a user namespace (the
/// helper must be privileged over the template's owner), a new mount namespace to copy it
/// into, ids to drop to, and a root [`mounts::preparable`] accepts.
fn applies(plan: &Plan) -> bool {
    nix::unistd::Uid::effective().is_root()
        && plan.id_map.is_none()
        && plan.creds.is_some()
        && plan.namespaces & libc::CLONE_NEWNS != 0
        && plan.namespaces & libc::CLONE_NEWUSER == 0
        && mounts::preparable(&plan.mounts)
}

/// The most bytes a run's shape ([`shape`]) may take; a larger one is built as any other run.
pub const MAX_SHAPE_BYTES: usize = MAX_KEY_BYTES;

/// The *shape* of `plan`: what a sandbox built ahead of its request ([`super::spare`]) was
/// built for, everything the helper and the reaper use before the payload starts (its
/// namespaces, hostname, mount steps, ids and shared network namespace), encoded as a plan
/// holding only them. `None` for a run no spare may serve: one whose root no template may
/// prepare ([`applies`]), one without a pid namespace of its own (its reaper is not the
/// init whose exit ends the run), one that joins a cgroup or has a network grant (both per
/// run, before the payload), and one whose shape is above [`MAX_SHAPE_BYTES`].
pub fn shape(plan: &Plan) -> Option<Vec<u8>> {
    if !applies(plan)
        || plan.namespaces & libc::CLONE_NEWPID == 0
        || !plan.cgroup_join.is_empty()
        || plan.egress.is_some()
    {
        return None;
    }
    let shape = Plan {
        namespaces: plan.namespaces,
        hostname: plan.hostname.clone(),
        mounts: plan.mounts.clone(),
        creds: plan.creds,
        share_netns: plan.share_netns,
        ..Plan::default()
    }
    .encode();
    (shape.len() <= MAX_SHAPE_BYTES).then_some(shape)
}

/// In the helper, before it closes the server's descriptors: the template matching `plan`,
/// if the server has one (its parked descriptor, still open; the helper keeps it through its
/// descriptor cleanup, enters it and closes it). On a miss the server is asked to build one
/// for the next run; this run builds its root itself.
pub(super) fn choose(plan: &Plan) -> Option<Chosen> {
    if !applies(plan) {
        return None;
    }
    let known = KNOWN.lock().ok()?;
    let known = known.as_ref()?;
    // A source that cannot be pinned now fails this run's own build the same way.
    let ids = mounts::source_ids(&plan.mounts).ok()?;
    let key = key(&plan.mounts, &ids);
    match known.iter().find(|k| k.key == key) {
        Some(k) => {
            let mut msg = [0u8; 9];
            msg[0] = USED;
            msg[1..].copy_from_slice(&k.serial.to_le_bytes());
            tell(&msg);
            Some(Chosen {
                fd: k.fd,
                serial: k.serial,
                marks: k.marks.clone(),
                ids,
            })
        }
        None => {
            if key.len() <= MAX_KEY_BYTES {
                let mut msg = Vec::with_capacity(1 + key.len());
                msg.push(BUILD);
                msg.extend_from_slice(&key);
                tell(&msg);
            }
            None
        }
    }
}

/// In the helper, in its private copy of the template `chosen` (after `setns` and
/// `unshare`): whether every mount the template keeps is still in place as it was built. When
/// it is not, the server is told to drop the template.
pub(super) fn intact(plan: &Plan, chosen: &Chosen) -> bool {
    let ok = mounts::template_marks(&plan.mounts).is_ok_and(|m| m == chosen.marks);
    if !ok {
        let mut msg = [0u8; 9];
        msg[0] = CHANGED;
        msg[1..].copy_from_slice(&chosen.serial.to_le_bytes());
        tell(&msg);
    }
    ok
}

/// In a sandbox built ahead on the template `chosen` ([`super::spare`]), when a run is handed
/// to it: whether the template is still the one the run's helper would choose now. Each bind
/// source, found below `host_root` (the root the spare had before it entered the template),
/// is the object it was when the template was chosen (a grant's path swapped for another
/// directory since names another root: its run is built as any other, on its own template),
/// and every mount the template keeps is in place ([`intact`], which tells the server when
/// one is not).
pub(super) fn still_chosen(
    plan: &Plan,
    chosen: &Chosen,
    host_root: std::os::fd::BorrowedFd<'_>,
) -> bool {
    mounts::source_ids_in(host_root, &plan.mounts).is_ok_and(|ids| ids == chosen.ids)
        && intact(plan, chosen)
}

/// Sends `msg` to the server without waiting: a full queue loses a hint, nothing else.
fn tell(msg: &[u8]) {
    let _ = send(
        TEMPLATE_SOCK_FD,
        msg,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    );
}

/// The server's templates, least recently used first out. `H` is what holds one (its
/// descriptor; anything in tests).
pub(super) struct Table<H> {
    entries: Vec<Entry<H>>,
    clock: u64,
    serial: u64,
}

struct Entry<H> {
    key: Vec<u8>,
    slot: usize,
    held: H,
    used: u64,
    serial: u64,
}

impl<H> Default for Table<H> {
    fn default() -> Table<H> {
        Table {
            entries: Vec::new(),
            clock: 0,
            serial: 0,
        }
    }
}

impl<H> Table<H> {
    fn has(&self, key: &[u8]) -> bool {
        self.entries.iter().any(|e| e.key == key)
    }

    /// The slot a new template goes to, and the template dropped to free it (the least
    /// recently used, when all [`MAX_TEMPLATES`] are taken), which the caller closes before
    /// it fills the slot.
    fn make_room(&mut self) -> (usize, Option<H>) {
        if let Some(slot) = (0..MAX_TEMPLATES).find(|s| !self.entries.iter().any(|e| e.slot == *s))
        {
            return (slot, None);
        }
        let oldest = self
            .entries
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.used)
            .map(|(i, _)| i)
            .unwrap_or(0);
        let e = self.entries.swap_remove(oldest);
        (e.slot, Some(e.held))
    }

    fn put(&mut self, slot: usize, key: Vec<u8>, held: H) {
        self.clock += 1;
        self.serial += 1;
        self.entries.push(Entry {
            key,
            slot,
            held,
            used: self.clock,
            serial: self.serial,
        });
    }

    fn touch(&mut self, serial: u64) {
        self.clock += 1;
        if let Some(e) = self.entries.iter_mut().find(|e| e.serial == serial) {
            e.used = self.clock;
        }
    }

    /// Drops the template `serial`, if it is still kept.
    fn remove(&mut self, serial: u64) -> Option<H> {
        let i = self.entries.iter().position(|e| e.serial == serial)?;
        Some(self.entries.swap_remove(i).held)
    }

    fn clear(&mut self) {
        self.entries.clear();
    }
}

/// What holds a template in the server: its descriptor, and the identity of every mount it
/// keeps.
pub(super) struct Held {
    /// Open for as long as the template is kept.
    _ns: OwnedFd,
    marks: Vec<mounts::SourceId>,
}

/// The server's side: the templates, the socket helpers ask on, and its own mount table,
/// watched for changes.
pub(super) struct Templates {
    asks: OwnedFd,
    mountinfo: File,
    table: Table<Held>,
    /// The last builder's pidfd, until it is gone.
    builder: Option<OwnedFd>,
    failed: Failed,
    /// Where the helpers' messages are read: allocated once, not zeroed per message. The
    /// server forks a helper per run, and each page of a buffer zeroed after a fork is a
    /// copy-on-write fault while that helper lives (17 of them for the 64 KiB a key may
    /// take, against the one page a `USED` message writes).
    ask_buf: Vec<u8>,
    /// Changed with every change of the table ([`Templates::generation`]).
    generation: u64,
}

/// Whether the process of `pidfd` has not exited (a pidfd polls readable once it has).
fn alive(pidfd: &OwnedFd) -> bool {
    let mut p = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut p, PollTimeout::ZERO), Ok(0))
}

/// Roots whose build failed lately (their keys as asked), at most [`MAX_FAILED`].
#[derive(Default)]
struct Failed {
    keys: std::collections::VecDeque<(Vec<u8>, Instant)>,
}

impl Failed {
    /// Whether `key` failed less than [`RETRY_FAILED_AFTER`] before `now`.
    fn holds(&mut self, key: &[u8], now: Instant) -> bool {
        self.keys
            .retain(|(_, at)| now.saturating_duration_since(*at) < RETRY_FAILED_AFTER);
        self.keys.iter().any(|(k, _)| k == key)
    }

    fn add(&mut self, key: Vec<u8>, now: Instant) {
        if self.keys.len() >= MAX_FAILED {
            self.keys.pop_front();
        }
        self.keys.push_back((key, now));
    }
}

impl Templates {
    /// Set up in the server (root only), its ends moved at or above `stage_min` (closed by
    /// every forked child before it runs the helper) and the helpers' end parked at
    /// [`TEMPLATE_SOCK_FD`]. `None` when any of it fails: every root is built as before.
    pub(super) fn start(stage_min: RawFd) -> Option<Templates> {
        Templates::start_with(stage_min, File::open(MOUNTINFO))
    }

    /// [`Templates::start`] with the server's mount table as opened: templates are kept only
    /// while a change of it can drop them, so none are when it cannot be watched (not
    /// opened, or not moved out of the way of the helpers' descriptors).
    fn start_with(stage_min: RawFd, opened: std::io::Result<File>) -> Option<Templates> {
        let mountinfo = watch(opened, stage_min)?;
        let (ours, theirs) = sys::seqpacket_pair().ok()?;
        let high = |fd: OwnedFd| -> Option<OwnedFd> {
            let raw = nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(stage_min),
            )
            .ok()?;
            sys::adopt_fd(raw).ok()
        };
        let asks = high(ours)?;
        let parked = park(&theirs, TEMPLATE_SOCK_FD)?;
        // Held for the server's life: every helper it forks inherits it.
        std::mem::forget(parked);
        *KNOWN.lock().ok()? = Some(Vec::new());
        Some(Templates {
            asks,
            mountinfo,
            table: Table::default(),
            builder: None,
            failed: Failed::default(),
            ask_buf: vec![0u8; 1 + MAX_KEY_BYTES + 1],
            generation: 0,
        })
    }

    /// Waits until `requests` is readable (or closed), meanwhile building the templates
    /// helpers asked for and dropping every template when the server's mount table changes.
    pub(super) fn wait_for(&mut self, requests: &OwnedFd) {
        loop {
            let mut polls = vec![
                PollFd::new(requests.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.asks.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.mountinfo.as_fd(), PollFlags::POLLPRI),
            ];
            match poll(&mut polls, PollTimeout::NONE) {
                Err(nix::Error::EINTR) => continue,
                Err(_) => return,
                Ok(_) => {}
            }
            let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
            let (request, asked, moved) = (
                ready(&polls[0]),
                ready(&polls[1]),
                polls.get(2).is_some_and(ready),
            );
            drop(polls);
            if moved {
                // A mount or unmount on the host: a template's binds may no longer be what a
                // run built now would bind (a mount below a grant, a file system gone).
                self.table.clear();
                self.publish();
            }
            if asked {
                self.serve_asks();
            }
            if request {
                return;
            }
        }
    }

    /// Reads every message waiting on the template socket.
    fn serve_asks(&mut self) {
        let mut buf = std::mem::take(&mut self.ask_buf);
        self.serve_asks_into(&mut buf);
        self.ask_buf = buf;
    }

    fn serve_asks_into(&mut self, buf: &mut [u8]) {
        loop {
            let n = match recv(self.asks.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) if n > 0 => n,
                Err(nix::Error::EINTR) => continue,
                _ => return,
            };
            match buf[0] {
                USED if n == 9 => {
                    let serial = u64::from_le_bytes(buf[1..9].try_into().unwrap_or_default());
                    self.table.touch(serial);
                }
                CHANGED if n == 9 => {
                    let serial = u64::from_le_bytes(buf[1..9].try_into().unwrap_or_default());
                    if self.table.remove(serial).is_some() {
                        self.publish();
                    }
                }
                BUILD if n > 1 && n <= 1 + MAX_KEY_BYTES => {
                    let asked = buf[1..n].to_vec();
                    if !self.table.has(&asked) {
                        if let Some(steps) = steps_of(&asked) {
                            self.build(&asked, &steps);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Builds a template for `steps` in a child and keeps it, keyed on what the child bound.
    /// At most one builder is alive: one stuck (an uninterruptible sleep in a file system)
    /// holds off every later build until it is gone, and each run builds its own root
    /// meanwhile. A root whose build failed is not tried again for [`RETRY_FAILED_AFTER`].
    fn build(&mut self, asked: &[u8], steps: &[MountOp]) {
        if self.builder.as_ref().is_some_and(alive) || self.failed.holds(asked, Instant::now()) {
            return;
        }
        let (built, builder) = build_in_child(steps);
        self.builder = builder;
        let Some(Built { key, marks, ns }) = built else {
            self.failed.add(asked.to_vec(), Instant::now());
            return;
        };
        if self.table.has(&key) {
            return;
        }
        let (slot, dropped) = self.table.make_room();
        drop(dropped);
        if let Some(parked) = park(&ns, FIRST_TEMPLATE_FD + slot as RawFd) {
            self.table.put(slot, key, Held { _ns: parked, marks });
        }
        self.publish();
    }

    /// A number that changes whenever the table does: a sandbox built ahead on a template is
    /// dropped when it has changed since ([`super::spare`]).
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a template is kept for the mount steps `steps` (as a plan holding only them
    /// encodes them; its sources' identities are checked by the helper that enters it).
    pub(super) fn serves(&self, steps: &[MountOp]) -> bool {
        let steps = Plan {
            mounts: steps.to_vec(),
            ..Plan::default()
        }
        .encode();
        self.table.entries.iter().any(|e| {
            let len = e
                .key
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes);
            len.and_then(|l| e.key.get(4..4 + l as usize)) == Some(&steps[..])
        })
    }

    /// What forked helpers see of the table.
    fn publish(&mut self) {
        self.generation += 1;
        if let Ok(mut known) = KNOWN.lock() {
            *known = Some(
                self.table
                    .entries
                    .iter()
                    .map(|e| Known {
                        key: e.key.clone(),
                        fd: FIRST_TEMPLATE_FD + e.slot as RawFd,
                        serial: e.serial,
                        marks: e.held.marks.clone(),
                    })
                    .collect(),
            );
        }
    }
}

/// The server's own mount table, whose changes `poll` reports (`POLLPRI`).
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// `opened` (the mount table) moved to a close-on-exec descriptor at or above `stage_min`;
/// `None` when it was not opened or cannot be moved.
fn watch(opened: std::io::Result<File>, stage_min: RawFd) -> Option<File> {
    let f = opened.ok()?;
    let raw = nix::fcntl::fcntl(
        f.as_raw_fd(),
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(stage_min),
    )
    .ok()?;
    sys::adopt_fd(raw).ok().map(File::from)
}

/// A close-on-exec copy of `fd` at exactly `at` (whatever was there is closed).
fn park(fd: &OwnedFd, at: RawFd) -> Option<OwnedFd> {
    let raw = nix::unistd::dup3(fd.as_raw_fd(), at, nix::fcntl::OFlag::O_CLOEXEC).ok()?;
    (raw == at).then(|| sys::adopt_fd(raw).ok()).flatten()
}

/// Forks a builder (named by a pidfd) that unshares a mount namespace, opens it, builds the
/// template there and sends its key, the identities of its mounts and the namespace's
/// descriptor (`SCM_RIGHTS`) over a socket pair, then exits: the namespace kept is the one
/// the builder built in, never one found by pid (a dead builder's pid may be another
/// process's). `None` when anything fails or takes longer than [`BUILD_TIMEOUT`], or the
/// namespace received is the server's own. The builder is killed through its pidfd
/// whatever happens; the pidfd is returned so that the server sees when it is gone.
fn build_in_child(steps: &[MountOp]) -> (Option<Built>, Option<OwnedFd>) {
    let Ok((ours, theirs)) = sys::seqpacket_pair() else {
        return (None, None);
    };
    let server = nix::unistd::getpid();
    let pidfd = match sys::fork_pidfd() {
        Err(_) => return (None, None),
        Ok(Some(pidfd)) => pidfd,
        Ok(None) => {
            drop(ours);
            if prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != server {
                sys::exit_now(1);
            }
            let keep = theirs.as_raw_fd() as u32;
            if sys::close_between(3, keep.saturating_sub(1)).is_err()
                || sys::close_from(keep + 1).is_err()
                || nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).is_err()
            {
                sys::exit_now(1);
            }
            // Opened now, while the host's procfs is still reachable: the namespace this
            // process unshared.
            let Ok(ns) = File::open("/proc/self/ns/mnt") else {
                sys::exit_now(1)
            };
            let Ok(ids) = mounts::build_template(steps) else {
                sys::exit_now(1)
            };
            let Ok(marks) = mounts::template_marks(steps) else {
                sys::exit_now(1)
            };
            let mut msg = key(steps, &ids);
            for (dev, ino) in marks {
                msg.extend_from_slice(&dev.to_le_bytes());
                msg.extend_from_slice(&ino.to_le_bytes());
            }
            let fds = [ns.as_raw_fd()];
            let sent = nix::sys::socket::sendmsg::<()>(
                theirs.as_raw_fd(),
                &[std::io::IoSlice::new(&msg)],
                &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            );
            sys::exit_now(i32::from(sent != Ok(msg.len())))
        }
    };
    drop(theirs);
    let built = receive_built(&ours, steps);
    // Gone already after a message; stuck (an uninterruptible sleep) it stays counted.
    let _ = sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL);
    (built, Some(pidfd))
}

/// A template as its builder sent it.
struct Built {
    key: Vec<u8>,
    marks: Vec<mounts::SourceId>,
    ns: OwnedFd,
}

/// The builder's one message, within [`BUILD_TIMEOUT`]: the key of `steps`, the marks after
/// it, and exactly one descriptor, a mount namespace other than the server's.
fn receive_built(sock: &OwnedFd, steps: &[MountOp]) -> Option<Built> {
    let due = Instant::now() + BUILD_TIMEOUT;
    loop {
        let left = due.checked_duration_since(Instant::now())?;
        let mut p = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut p, PollTimeout::from(ms)) {
            Ok(0) => return None,
            Ok(_) => break,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return None,
        }
    }
    let mut buf = vec![0u8; MAX_KEY_BYTES * 2 + 1];
    let msg = sys::recv_owning_fds(sock.as_fd(), &mut buf, 1, libc::MSG_DONTWAIT).ok()?;
    if msg.truncated || msg.bytes == 0 || msg.bytes > MAX_KEY_BYTES * 2 {
        return None;
    }
    let mut fds = msg.fds;
    let ns = fds.pop()?;
    if !fds.is_empty() {
        return None;
    }
    let ours = nix::sys::stat::stat("/proc/self/ns/mnt").ok()?;
    let st = nix::sys::stat::fstat(ns.as_raw_fd()).ok()?;
    // Never the server's own namespace (the host's root): only a namespace of its own.
    if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino) {
        return None;
    }
    buf.truncate(msg.bytes);
    let (key, marks) = split_marks(steps, buf)?;
    Some(Built { key, marks, ns })
}

/// The builder's message split into its key and the identities of the mounts the template
/// keeps (16 bytes each, at its end): the key's length is its own first field and what
/// follows.
fn split_marks(steps: &[MountOp], mut msg: Vec<u8>) -> Option<(Vec<u8>, Vec<mounts::SourceId>)> {
    let steps_len = u32::from_le_bytes(msg.get(..4)?.try_into().ok()?) as usize;
    let at = 4usize.checked_add(steps_len)?;
    let ids = u32::from_le_bytes(msg.get(at..at.checked_add(4)?)?.try_into().ok()?) as usize;
    let key_len = at.checked_add(4)?.checked_add(ids.checked_mul(16)?)?;
    let tail = msg.get(key_len..)?;
    if tail.len() % 16 != 0 {
        return None;
    }
    let marks: Vec<mounts::SourceId> = tail
        .chunks_exact(16)
        .map(|c| {
            let n = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
            (n(&c[..8]), n(&c[8..]))
        })
        .collect();
    // The key is of the steps asked for.
    msg.truncate(key_len);
    (steps_of(&msg)? == steps).then_some((msg, marks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(src: &str, writable: bool) -> MountOp {
        MountOp::Bind {
            src: src.into(),
            dst: src.into(),
            writable,
        }
    }

    /// Everything that shapes a root is in its key: the steps (a read-only and a writable
    /// grant of the same path differ) and each source's identity (the same path, another
    /// directory). Control: the same steps and identities give the same key, and the steps
    /// are read back from it.
    #[test]
    fn a_key_differs_with_every_thing_that_shapes_the_root() {
        let ro = [bind("/srv/a", false)];
        let rw = [bind("/srv/a", true)];
        let k = key(&ro, &[(1, 2)]);
        assert_eq!(k, key(&ro, &[(1, 2)]));
        assert_ne!(k, key(&rw, &[(1, 2)]));
        assert_ne!(k, key(&ro, &[(1, 3)]));
        assert_ne!(k, key(&ro, &[(2, 2)]));
        assert_ne!(
            k,
            key(&[bind("/srv/a", false), bind("/srv/b", false)], &[(1, 2)])
        );
        assert_eq!(steps_of(&k).expect("steps"), ro.to_vec());
        assert!(steps_of(&k[..k.len() / 2]).is_none());
        assert!(steps_of(b"\xff\xff\xff\xff").is_none());
    }

    /// A server whose mount table cannot be watched keeps no templates (a template would
    /// outlive a host mount below one of its grants): starting fails before anything is set
    /// up or published. The control: an opened mount table is watched.
    #[test]
    fn no_templates_are_kept_when_the_mount_table_cannot_be_watched() {
        let refused = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(Templates::start_with(64, Err(refused)).is_none());
        assert!(KNOWN.lock().expect("known").is_none(), "published a table");
        assert!(watch(Err(std::io::Error::from_raw_os_error(libc::EMFILE)), 64).is_none());
        let watched = watch(File::open(MOUNTINFO), 64).expect("the mount table is watched");
        assert!(watched.as_raw_fd() >= 64);
    }

    /// The server keeps only the namespace descriptor its builder sent with its key (never one
    /// looked up by pid): a message without one, with two, or carrying the server's own
    /// namespace is refused, as is a key of other steps. The control: the key of the steps
    /// asked for with one other namespace's descriptor is taken, marks and all.
    #[test]
    fn only_a_namespace_the_builder_sent_is_kept() {
        use nix::sys::socket::{sendmsg, socketpair, AddressFamily, ControlMessage, SockFlag};
        let steps = [bind("/srv/a", false)];
        let mut msg = key(&steps, &[(1, 2)]);
        msg.extend_from_slice(&7u64.to_le_bytes());
        msg.extend_from_slice(&8u64.to_le_bytes());
        let own = File::open("/proc/self/ns/mnt").expect("own ns");
        let other = File::open("/proc/self/ns/net").expect("another ns");
        let send = |bytes: &[u8], fds: &[RawFd]| {
            let (a, b) = socketpair(
                AddressFamily::Unix,
                nix::sys::socket::SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .expect("pair");
            let cmsg = [ControlMessage::ScmRights(fds)];
            let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
            sendmsg::<()>(
                b.as_raw_fd(),
                &[std::io::IoSlice::new(bytes)],
                cmsgs,
                MsgFlags::empty(),
                None,
            )
            .expect("send");
            receive_built(&a, &steps)
        };
        assert!(send(&msg, &[]).is_none(), "a key without a namespace");
        assert!(send(&msg, &[own.as_raw_fd()]).is_none(), "the server's own");
        let two = [other.as_raw_fd(), other.as_raw_fd()];
        assert!(send(&msg, &two).is_none(), "two descriptors");
        let other_steps = key(&[bind("/srv/b", false)], &[(1, 2)]);
        assert!(send(&other_steps, &[other.as_raw_fd()]).is_none());
        let got = send(&msg, &[other.as_raw_fd()]).expect("taken");
        assert_eq!(got.key, key(&steps, &[(1, 2)]));
        assert_eq!(got.marks, [(7, 8)]);
    }

    /// A root that failed to prepare is not tried again for a while, and at most
    /// [`MAX_FAILED`] are remembered; the control: another root, and the same root once the
    /// while is over, are tried.
    #[test]
    fn a_root_that_failed_is_not_retried_for_a_while() {
        let now = Instant::now();
        let mut f = Failed::default();
        f.add(vec![1], now);
        assert!(f.holds(&[1], now + Duration::from_secs(1)));
        assert!(!f.holds(&[2], now));
        assert!(!f.holds(&[1], now + RETRY_FAILED_AFTER));
        for i in 0..=MAX_FAILED as u32 {
            f.add(i.to_le_bytes().to_vec(), now);
        }
        assert_eq!(f.keys.len(), MAX_FAILED);
        assert!(!f.holds(&0u32.to_le_bytes(), now));
        assert!(f.holds(&(MAX_FAILED as u32).to_le_bytes(), now));
    }

    /// At most [`MAX_TEMPLATES`] are kept; a new one takes the slot of the least recently
    /// used, and a template a run used recently is kept over one it did not.
    #[test]
    fn the_least_recently_used_template_goes_first() {
        let mut t: Table<u32> = Table::default();
        for i in 0..MAX_TEMPLATES as u32 {
            let (slot, dropped) = t.make_room();
            assert_eq!((slot, dropped), (i as usize, None));
            t.put(slot, vec![i as u8], i);
        }
        // The first one built is used again: the second is now the oldest.
        let first = t.entries[0].serial;
        t.touch(first);
        let (slot, dropped) = t.make_room();
        assert_eq!((slot, dropped), (1, Some(1)));
        t.put(slot, vec![100], 100);
        assert_eq!(t.entries.len(), MAX_TEMPLATES);
        assert!(t.has(&[0]) && t.has(&[100]) && !t.has(&[1]));
        t.clear();
        assert!(!t.has(&[0]));
        assert_eq!(t.make_room(), (0, None));
    }
}
