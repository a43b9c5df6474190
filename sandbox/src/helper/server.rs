//! `loong-spawn --serve`: the spawn server. loongd's spawner thread starts it once; it stays
//! single-threaded and, per request, forks a child that runs the ordinary helper path
//! ([`super::main`]) on the descriptors the request carried. Forking this small process is
//! far cheaper than loongd forking itself and exec'ing a helper for every sandbox.
//!
//! Protocol on fd 3 (a `SOCK_SEQPACKET` socket): a request is one message, `b'S'`, the
//! number of handed-over descriptors (u32 LE), the request's sequence number (u64 LE) and,
//! when a sandbox built ahead may run it, the run's shape ([`super::spare`]), carrying by
//! SCM_RIGHTS the plan pipe's read end, the report pipe's write end, stdin, stdout, stderr
//! and the handed-over descriptors. The answer is `b'P'` and the child's pid
//! (i32 LE) with a pidfd for it, or `b'E'` and an errno, then the request's sequence number
//! (u64 LE): a caller that gave up on a request before its answer came (loongd's request
//! task dropped) leaves that answer to the next caller, which knows it is not its own. The
//! server answers requests one by one, in order. The server ignores SIGCHLD, so the kernel reaps its children; how a sandbox ended
//! travels on its report pipe.

use std::{
    io::IoSlice,
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use nix::sys::{
    prctl,
    signal::Signal,
    socket::{sendmsg, ControlMessage, MsgFlags},
};

use super::{FIRST_PASSED_FD, PLAN_FD, REPORT_FD};
use crate::sys::{self, Forked};

/// The server's fd carrying requests.
pub const SERVER_FD: RawFd = 3;
/// Request tag.
pub const SPAWN: u8 = b'S';
/// Answer tag: spawned.
pub const SPAWNED: u8 = b'P';
/// Answer tag: failed.
pub const FAILED: u8 = b'E';
/// The most descriptors a spec may hand over.
pub const MAX_PASS_FDS: usize = 32;
/// Descriptors in a request besides the handed-over ones.
pub const FIXED_FDS: usize = 5;
/// The bytes of a request and of an answer: the tag, a u32 or i32, the sequence number. A
/// request may carry its run's shape after them ([`super::template::shape`], at most
/// [`MAX_SHAPE_BYTES`]): a request with one may be run by a sandbox built ahead for that
/// shape ([`super::spare`]).
pub const MESSAGE_BYTES: usize = 13;
pub use super::template::MAX_SHAPE_BYTES;
/// Received descriptors are moved at least this high before being placed, so no source
/// collides with a target (targets stay below `FIRST_PASSED_FD + MAX_PASS_FDS`).
const STAGE_MIN: RawFd = 64;
/// Where the shared network namespace's descriptor lives in the server and its children.
pub(super) const SHARED_NETNS_FD: RawFd = STAGE_MIN - 1;

fn answer(sock: &OwnedFd, tag: u8, value: i32, seq: u64, fd: Option<&OwnedFd>) {
    let mut bytes = [0u8; MESSAGE_BYTES];
    bytes[0] = tag;
    bytes[1..5].copy_from_slice(&value.to_le_bytes());
    bytes[5..].copy_from_slice(&seq.to_le_bytes());
    let raw: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage> = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    let _ = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        &cmsgs,
        MsgFlags::empty(),
        None,
    );
}

/// The argument that gives the server the directory its slot claim file is in
/// (`loong-spawn --serve --claims-in DIR`): loongd's user's home directory, which loongd
/// looks up ([`claim_dir`]) so that the server looks no user up.
pub const CLAIMS_IN_ARG: &str = "--claims-in";

/// Entry point of `loong-spawn --serve`, `claims_in` the directory given with
/// [`CLAIMS_IN_ARG`]. Never returns.
pub fn main(claims_in: Option<&std::path::Path>) -> ! {
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    let Ok(sock) = sys::adopt_fd(SERVER_FD) else {
        eprintln!("loong-spawn --serve is started by loongd only (fd 3 is not open)");
        sys::exit_now(super::SETUP_FAILED)
    };
    if nix::unistd::getppid().as_raw() == 1
        || sys::close_from(SERVER_FD as u32 + 1).is_err()
        || sys::sigchld(true).is_err()
    {
        sys::exit_now(super::SETUP_FAILED);
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    if nix::unistd::Uid::effective().is_root() {
        // Parked at a fixed number above every placement target and below the staging range,
        // so placing a request's descriptors never overwrites it.
        let parked = shared_netns().and_then(|fd| {
            let raw = nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(SHARED_NETNS_FD),
            )
            .ok()?;
            let owned = sys::adopt_fd(raw).ok()?;
            (raw == SHARED_NETNS_FD).then_some(owned)
        });
        if let Some(fd) = parked {
            let _ = SHARED_NETNS.set(fd);
        }
    }
    // Subordinate ids are the user's, not this server's: rootless, every slot is claimed
    // across processes too (see `Slots`). A claim file that cannot be used claims nothing,
    // and no sandbox is given subordinate ids. Its directory is loongd's to name: the server
    // looks no user up (a static build reaches no NSS module).
    let me = nix::unistd::Uid::effective();
    let claims = (!me.is_root()).then(|| {
        claims_at(claims_in, me.as_raw()).inspect_err(|why| {
            eprintln!("loong-spawn --serve: no subordinate ids can be claimed: {why}");
        })
    });
    let mut slots = Slots {
        claims,
        ..Slots::default()
    };
    // Root only: prepared roots, built between requests (see `template`).
    let mut templates = if me.is_root() {
        super::template::Templates::start(STAGE_MIN)
    } else {
        None
    };
    // Root only, with templates: a sandbox built ahead for the runs asked for lately.
    let mut spares = super::spare::Spares::default();
    // A request and its shape; allocated once.
    let mut buf = vec![0u8; MESSAGE_BYTES + MAX_SHAPE_BYTES + 1];
    loop {
        if let Some(t) = &mut templates {
            spares.prepare(t, STAGE_MIN);
            t.wait_for(&sock);
        }
        // Every received descriptor owned at once, so each is closed whatever happens next,
        // those of a request whose control data was truncated too (it is refused).
        let (n, truncated, fds) = match receive_request(&sock, &mut buf) {
            Ok(r) => (r.bytes, r.truncated, r.fds),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => sys::exit_now(0),
        };
        if n == 0 {
            sys::exit_now(0); // loongd closed its end
        }
        let (pass, seq) = if (MESSAGE_BYTES..buf.len()).contains(&n) {
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&buf[5..MESSAGE_BYTES]);
            (
                u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize,
                u64::from_le_bytes(seq),
            )
        } else {
            (usize::MAX, 0)
        };
        if buf[0] != SPAWN || truncated || pass > MAX_PASS_FDS || fds.len() != FIXED_FDS + pass {
            answer(&sock, FAILED, libc::EINVAL, seq, None);
            continue;
        }
        if let (Some(t), true) = (&templates, n > MESSAGE_BYTES) {
            if let Some((pid, pidfd)) = spares.hand(t, &buf[MESSAGE_BYTES..n], &fds, pass as u32) {
                drop(fds);
                answer(&sock, SPAWNED, pid, seq, Some(&pidfd));
                continue;
            }
        }
        let slot = slots.free();
        // The child waits for a byte on this pipe, sent once its slot is recorded as held:
        // if the server cannot hold it (no pidfd, no descriptor left), the child exits
        // without running, and no sandbox ever runs on a slot the server thinks free.
        let (go_r, go_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => {
                answer(&sock, FAILED, e as i32, seq, None);
                continue;
            }
        };
        let server_pid = nix::unistd::getpid();
        match sys::fork() {
            Ok(Forked::Child) => {
                drop((sock, go_w));
                // Die with the server, which numbers the slots: a helper it never knew of
                // (orphaned before this, and reparented to a subreaper that is not pid 1)
                // would hold a slot a restarted server hands out again.
                if prctl::set_pdeathsig(Signal::SIGKILL).is_err()
                    || nix::unistd::getppid() != server_pid
                {
                    sys::exit_now(super::SETUP_FAILED);
                }
                let mut go = [0u8; 1];
                if !matches!(nix::unistd::read(go_r.as_raw_fd(), &mut go), Ok(1)) {
                    sys::exit_now(super::SETUP_FAILED);
                }
                drop(go_r);
                if let Some(s) = &slot {
                    let _ = SLOT.set(s.index);
                }
                drop(slot);
                child(fds)
            }
            Ok(Forked::Parent(pid)) => {
                drop((fds, go_r));
                let held = sys::pidfd_open(pid).and_then(|pidfd| {
                    slots.hold(slot, &pidfd)?;
                    nix::unistd::write(&go_w, b"g").map_err(std::io::Error::from)?;
                    Ok(pidfd)
                });
                // Without the byte (go_w closed here), the child exits.
                drop(go_w);
                match held {
                    Ok(pidfd) => answer(&sock, SPAWNED, pid, seq, Some(&pidfd)),
                    Err(e) => answer(
                        &sock,
                        FAILED,
                        e.raw_os_error().unwrap_or(libc::EIO),
                        seq,
                        None,
                    ),
                }
            }
            Err(e) => answer(
                &sock,
                FAILED,
                e.raw_os_error().unwrap_or(libc::EIO),
                seq,
                None,
            ),
        }
    }
}

/// One request read from the server's socket into `buf`, with every descriptor it carried
/// owned ([`sys::recv_owning_fds`]), room made for the most a request may carry.
fn receive_request(sock: &OwnedFd, buf: &mut [u8]) -> std::io::Result<sys::Received> {
    use std::os::fd::AsFd;
    sys::recv_owning_fds(sock.as_fd(), buf, FIXED_FDS + MAX_PASS_FDS, 0)
}

/// The slot of the sandbox this forked child runs: an index no other live sandbox of this
/// server holds, which a rootless helper turns into its subordinate ids
/// ([`crate::subids`]). Unset when every slot is taken.
pub(crate) static SLOT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The file, in the home directory of the user whose subordinate ranges are drawn on, whose
/// byte `N` an open file description write-locks (`F_OFD_SETLK`) to claim slot `N` across
/// processes. Only that user may open it (see [`claims_at`]), so no other account can hold a
/// slot; the kernel drops the lock with the description's last descriptor (a killed server
/// frees its slots).
pub const SLOT_CLAIM_FILE: &str = ".loong-subids.lock";

/// The mode bits of the claim file and of its directory that would let another account in: a
/// group or others who may write the directory could replace the file, and one who may open
/// the file could read-lock every byte of it.
const FOREIGN_DIR_BITS: u32 = 0o022;
const FOREIGN_FILE_BITS: u32 = 0o077;

/// The directory whose [`SLOT_CLAIM_FILE`] claims `uid`'s slots: its home directory, from the
/// user database. loongd looks it up (through NSS, so an LDAP or sssd account has one too)
/// and gives it to the server ([`CLAIMS_IN_ARG`]); the server never calls this.
pub fn claim_dir(uid: u32) -> Result<std::path::PathBuf, ClaimFileError> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .map_err(|e| ClaimFileError::NoUser {
            uid,
            why: e.to_string(),
        })?
        .map(|user| user.dir)
        .ok_or_else(|| ClaimFileError::NoUser {
            uid,
            why: "no passwd entry".to_owned(),
        })
}

/// Whether the directory `dir` can hold `uid`'s claim file (created `0600` if missing):
/// loongd checks what it will give the server as it starts, so a claim file the server
/// would refuse is reported (and the mode said) there, not only on the server's stderr.
pub fn check_claim_dir(dir: &std::path::Path, uid: u32) -> Result<(), ClaimFileError> {
    claim_file_in(dir, uid).map(drop)
}

/// The claim file as checked when the server started: its directory held open (never
/// resolved by path again) and the file's identity, which every claim compares with the
/// file it opens there, refusing (claiming nothing) one replaced since.
#[derive(Debug)]
struct ClaimFile {
    dir: OwnedFd,
    /// The file's path as given, for messages.
    path: std::path::PathBuf,
    dev: u64,
    ino: u64,
    uid: u32,
}

/// The claim file of `uid` in the directory loongd gave (`claims_in`), created `0600` if
/// missing: an error when none was given, or naming the path when the directory is not
/// `uid`'s alone to write or the file is not `uid`'s alone to open.
fn claims_at(claims_in: Option<&std::path::Path>, uid: u32) -> Result<ClaimFile, ClaimFileError> {
    let dir = claims_in.ok_or(ClaimFileError::NotGiven)?;
    claim_file_in(dir, uid)
}

/// Why a user's slot claim file cannot be used (no sandbox then gets subordinate ids).
#[derive(Debug, thiserror::Error)]
pub enum ClaimFileError {
    /// The user's passwd entry (its home directory) cannot be read.
    #[error("uid {uid}: {why}; give the user a passwd entry with a home directory")]
    NoUser { uid: u32, why: String },
    /// loongd gave the spawn server no directory for the claim file.
    #[error("no directory for the slot claim file was given ({CLAIMS_IN_ARG} DIR); loongd gives its user's home directory when it has a passwd entry")]
    NotGiven,
    /// The directory given is not an absolute path.
    #[error("slot claim directory {} is not an absolute path", path.display())]
    NotAbsolute { path: std::path::PathBuf },
    /// The home directory cannot be read.
    #[error("home directory {}: {source}", path.display())]
    Home {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The home directory is not the user's own, or others may write it.
    #[error("home directory {} is not a directory that uid {uid} alone may write", path.display())]
    HomeNotPrivate { path: std::path::PathBuf, uid: u32 },
    /// The claim file cannot be opened or read.
    #[error("slot claim file {}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The claim file is not the user's own with mode 0600.
    #[error("slot claim file {} is not a file that uid {uid} alone may open (mode 0600)", path.display())]
    FileNotPrivate { path: std::path::PathBuf, uid: u32 },
    /// The claim file is not the one checked when the server started.
    #[error("slot claim file {} is not the file checked when the spawn server started (replaced, or its mode or owner changed since); no slot is claimed: restore it, or restart loongd to check it again", path.display())]
    Replaced { path: std::path::PathBuf },
}

/// Opening flags of the claim file's directory: held open, never resolved by path again; a
/// symbolic link at its path is refused.
const CLAIM_DIR_FLAGS: nix::fcntl::OFlag = nix::fcntl::OFlag::O_RDONLY
    .union(nix::fcntl::OFlag::O_DIRECTORY)
    .union(nix::fcntl::OFlag::O_NOFOLLOW)
    .union(nix::fcntl::OFlag::O_CLOEXEC);
/// Opening flags of the claim file, in its held directory.
const CLAIM_FILE_FLAGS: nix::fcntl::OFlag = nix::fcntl::OFlag::O_RDWR
    .union(nix::fcntl::OFlag::O_NOFOLLOW)
    .union(nix::fcntl::OFlag::O_CLOEXEC);

/// The claim file in the directory `home` (see [`claims_at`]): the directory opened once
/// (`O_DIRECTORY | O_NOFOLLOW`) and checked through its descriptor, the file opened in it
/// (`openat`, `O_NOFOLLOW`, created `0600` if missing) and checked through its own.
fn claim_file_in(home: &std::path::Path, uid: u32) -> Result<ClaimFile, ClaimFileError> {
    use nix::sys::stat::{fstat, Mode};
    if !home.is_absolute() {
        return Err(ClaimFileError::NotAbsolute {
            path: home.to_owned(),
        });
    }
    let home_error = |e: nix::Error| ClaimFileError::Home {
        path: home.to_owned(),
        source: e.into(),
    };
    let dir = nix::fcntl::open(home, CLAIM_DIR_FLAGS, Mode::empty()).map_err(home_error)?;
    let dir = sys::adopt_fd(dir).map_err(|source| ClaimFileError::Home {
        path: home.to_owned(),
        source,
    })?;
    let st = fstat(dir.as_raw_fd()).map_err(home_error)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR
        || st.st_uid != uid
        || st.st_mode & FOREIGN_DIR_BITS != 0
    {
        return Err(ClaimFileError::HomeNotPrivate {
            path: home.to_owned(),
            uid,
        });
    }
    let path = home.join(SLOT_CLAIM_FILE);
    let file = open_claim_file(&dir, nix::fcntl::OFlag::O_CREAT).map_err(|source| {
        ClaimFileError::File {
            path: path.clone(),
            source,
        }
    })?;
    let st = fstat(file.as_raw_fd()).map_err(|e| ClaimFileError::File {
        path: path.clone(),
        source: e.into(),
    })?;
    if !private_file(&st, uid) {
        return Err(ClaimFileError::FileNotPrivate { path, uid });
    }
    Ok(ClaimFile {
        dir,
        path,
        dev: st.st_dev,
        ino: st.st_ino,
        uid,
    })
}

/// The claim file opened in its held directory, with `extra` flags.
fn open_claim_file(dir: &OwnedFd, extra: nix::fcntl::OFlag) -> std::io::Result<OwnedFd> {
    let raw = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        SLOT_CLAIM_FILE,
        CLAIM_FILE_FLAGS | extra,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )?;
    sys::adopt_fd(raw)
}

/// Whether `st` is a regular file of `uid` that no other account may open.
fn private_file(st: &libc::stat, uid: u32) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
        && st.st_uid == uid
        && st.st_mode & FOREIGN_FILE_BITS == 0
}

/// A slot chosen for one sandbox: its index, and, rootless, the open file description that
/// write-locks its byte of the [`SLOT_CLAIM_FILE`] (held until the sandbox's helper has
/// exited).
struct Slot {
    index: u32,
    claim: Option<OwnedFd>,
}

/// Which slots live sandboxes hold: the pidfd of each slot's helper. A helper outlives every
/// process of its sandbox (it waits for the reaper, pid 1 of the sandbox's pid namespace, and
/// the kernel ends the namespace's other processes before the reaper is reaped), so a slot
/// is free again once its helper has exited.
///
/// A slot's subordinate ids belong to the user, not to this server: another loongd of the
/// same user (another home) numbers slots from 0 too. So, rootless, a slot is also claimed by
/// write-locking its byte of the user's [`SLOT_CLAIM_FILE`], which no other account may open
/// (an abstract socket name, which any account may bind, would let one deny every slot); a
/// slot locked by another open file description is skipped.
#[derive(Default)]
struct Slots {
    held: Vec<Option<(OwnedFd, Option<OwnedFd>)>>,
    /// The claim file of the user whose slots are claimed across processes, or why it cannot
    /// be used; `None` as root (sandboxes drop to `sandbox.uid`, no range is shared).
    claims: Option<Result<ClaimFile, ClaimFileError>>,
}

impl Slots {
    /// The lowest free slot, after releasing those whose helper has exited; `None` when
    /// [`crate::subids::MAX_SLOTS`] are held, here or (rootless) by other processes.
    fn free(&mut self) -> Option<Slot> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let idx: Vec<usize> = (0..self.held.len())
            .filter(|&i| self.held[i].is_some())
            .collect();
        let exited: Vec<usize> = {
            let mut polls: Vec<PollFd> = idx
                .iter()
                .filter_map(|&i| self.held[i].as_ref())
                .map(|(fd, _)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                .collect();
            if poll(&mut polls, PollTimeout::ZERO).is_err() {
                return None;
            }
            polls
                .iter()
                .zip(&idx)
                .filter(|(p, _)| p.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, &i)| i)
                .collect()
        };
        for i in exited {
            self.held[i] = None;
        }
        for index in 0..crate::subids::MAX_SLOTS {
            if self.held.get(index as usize).is_some_and(Option::is_some) {
                continue;
            }
            let claim = match &self.claims {
                None => None,
                Some(Err(_)) => return None,
                Some(Ok(file)) => match claim(file, index) {
                    Ok(Some(fd)) => Some(fd),
                    // Held by another process (another loongd of this user): the next one.
                    Ok(None) => continue,
                    Err(why) => {
                        eprintln!("loong-spawn --serve: no slot is claimed: {why}");
                        return None;
                    }
                },
            };
            while self.held.len() <= index as usize {
                self.held.push(None);
            }
            return Some(Slot { index, claim });
        }
        None
    }

    /// Marks `slot` held by the helper behind `pidfd` (copies kept above the descriptors a
    /// forked child places, which it closes).
    fn hold(&mut self, slot: Option<Slot>, pidfd: &OwnedFd) -> std::io::Result<()> {
        let Some(slot) = slot else { return Ok(()) };
        let kept = above_staging(pidfd)?;
        let claim = slot.claim.as_ref().map(above_staging).transpose()?;
        if let Some(s) = self.held.get_mut(slot.index as usize) {
            *s = Some((kept, claim));
        }
        Ok(())
    }
}

/// A close-on-exec copy of `fd` at or above `STAGE_MIN`, which every forked child closes
/// before it runs the helper.
fn above_staging(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    let raw = nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(STAGE_MIN),
    )
    .map_err(std::io::Error::from)?;
    sys::adopt_fd(raw)
}

/// Write-locks byte `slot` of the claim file `file` through an open file description of its
/// own, opened in the directory held since the start and refused unless it is the file
/// checked then (same device and inode, still the user's alone): `None` when another
/// description holds a lock there.
fn claim(file: &ClaimFile, slot: u32) -> std::io::Result<Option<OwnedFd>> {
    let fd = open_claim_file(&file.dir, nix::fcntl::OFlag::empty())?;
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    if (st.st_dev, st.st_ino) != (file.dev, file.ino) || !private_file(&st, file.uid) {
        return Err(std::io::Error::other(ClaimFileError::Replaced {
            path: file.path.clone(),
        }));
    }
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: libc::off_t::from(slot),
        l_len: 1,
        l_pid: 0,
    };
    match nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_OFD_SETLK(&lock)) {
        Ok(_) => Ok(Some(fd)),
        Err(nix::Error::EAGAIN | nix::Error::EACCES) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The shared empty network namespace, when the server holds one.
pub(crate) static SHARED_NETNS: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

/// Creates an empty network namespace held by a child that only waits, and returns a
/// descriptor for it. Sandboxes joining it skip creating and destroying a namespace of their
/// own (the largest fixed cost of a spawn); its loopback is down and, without capabilities,
/// stays down.
fn shared_netns() -> Option<OwnedFd> {
    let server = nix::unistd::getpid();
    match sys::fork().ok()? {
        Forked::Child => {
            // A server killed between the fork and the parent-death signal never sends it:
            // the holder, orphaned already, would wait for ever (found as namespace holders
            // left behind by loongds killed as they started).
            if prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != server {
                sys::exit_now(1);
            }
            let _ = sys::close_from(0);
            if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                sys::exit_now(1);
            }
            loop {
                nix::unistd::pause();
            }
        }
        Forked::Parent(pid) => {
            // Wait until the holder has left our namespace.
            let ours = std::fs::read_link("/proc/self/ns/net").ok()?;
            for _ in 0..1000 {
                match std::fs::read_link(format!("/proc/{pid}/ns/net")) {
                    Ok(theirs) if theirs != ours => {
                        let f = std::fs::File::open(format!("/proc/{pid}/ns/net")).ok()?;
                        return Some(OwnedFd::from(f));
                    }
                    Ok(_) => std::thread::sleep(std::time::Duration::from_micros(200)),
                    Err(_) => return None,
                }
            }
            None
        }
    }
}

/// In the forked child: put the request's descriptors where the helper expects them, then
/// run the helper. Request order: plan, report, stdin, stdout, stderr, handed-over….
fn child(fds: Vec<OwnedFd>) -> ! {
    if sys::sigchld(false).is_err() {
        sys::exit_now(super::SETUP_FAILED);
    }
    let mut targets = vec![PLAN_FD, REPORT_FD, 0, 1, 2];
    targets.extend((0..fds.len().saturating_sub(FIXED_FDS)).map(|i| FIRST_PASSED_FD + i as RawFd));
    let mut staged = Vec::with_capacity(fds.len());
    for fd in &fds {
        match nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(STAGE_MIN),
        ) {
            Ok(raw) => staged.push(raw),
            Err(_) => sys::exit_now(super::SETUP_FAILED),
        }
    }
    drop(fds);
    for (&from, &to) in staged.iter().zip(&targets) {
        if nix::unistd::dup2(from, to).is_err() {
            sys::exit_now(super::SETUP_FAILED);
        }
    }
    // The staged copies (all at or above STAGE_MIN) go; the helper closes anything else.
    let _ = sys::close_from(STAGE_MIN as u32);
    super::main()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A claim file of this process's uid in a fresh directory of its own.
    fn claim_dir() -> (tempfile::TempDir, ClaimFile) {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = nix::unistd::Uid::effective().as_raw();
        let file = claim_file_in(dir.path(), me).expect("claim file");
        (dir, file)
    }

    #[test]
    fn a_slot_another_process_holds_is_skipped_and_taken_once_released() {
        let (_dir, file) = claim_dir();
        let other_file =
            claim_file_in(_dir.path(), nix::unistd::Uid::effective().as_raw()).expect("claim file");
        let mut slots = Slots {
            claims: Some(Ok(other_file)),
            ..Slots::default()
        };
        // Another server of the same user holds slot 0.
        let other = claim(&file, 0).expect("claim").expect("slot 0 free");
        let first = slots.free().expect("a slot");
        assert_eq!(first.index, 1);
        // The chosen slot is held now: no third server can take it.
        assert!(claim(&file, 1).expect("claim").is_none());
        // Control: once the other server lets go, slot 0 is this one's.
        drop(other);
        let second = slots.free().expect("a slot");
        assert_eq!(second.index, 0);
        drop((first, second));
        assert!(claim(&file, 1).expect("claim").is_some());
    }

    /// The server claims in the directory loongd gave, for a uid the user database does not
    /// know (the server looks no user up); without one, or with a relative one, it claims
    /// nothing and says why.
    #[test]
    fn the_claim_file_is_in_the_directory_given_and_none_is_looked_up() {
        let me = nix::unistd::Uid::effective().as_raw();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = claims_at(Some(dir.path()), me).expect("the given directory");
        assert_eq!(file.path, dir.path().join(SLOT_CLAIM_FILE));
        assert!(file.path.is_file());
        let err = claims_at(None, me).expect_err("no directory given");
        assert!(err.to_string().contains(CLAIMS_IN_ARG), "{err}");
        let err = claims_at(Some(std::path::Path::new("home/x")), me).expect_err("relative");
        assert!(err.to_string().contains("not an absolute path"), "{err}");
    }

    /// A claim opens the file in the directory held since the start and checks it is the file
    /// checked then: one replaced since (renamed over, or the directory's path pointed
    /// elsewhere) claims nothing and says so. Before, each claim reopened the path unchecked.
    /// Control: the unchanged file claims, and a directory renamed away is still the one used.
    #[test]
    fn a_claim_file_replaced_after_the_start_claims_nothing() {
        let (dir, file) = claim_dir();
        // Control: the file checked at the start claims.
        assert!(claim(&file, 0).expect("the unchanged file").is_some());
        // Replaced by another file of the same owner and mode: refused, saying why.
        let other = dir.path().join("other");
        std::fs::write(&other, b"").expect("another file");
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::rename(&other, &file.path).expect("replace the claim file");
        let err = claim(&file, 1).expect_err("a replaced file");
        assert!(err.to_string().contains("not the file checked"), "{err}");
        let mut slots = Slots {
            claims: Some(Ok(file)),
            ..Slots::default()
        };
        assert!(slots.free().is_none(), "a slot claimed in a replaced file");
        // The directory held, not its path: a checked file in a directory renamed away still
        // claims there, and a new directory at the old path is not used.
        let (dir, file) = claim_dir();
        let moved = tempfile::tempdir().expect("tempdir");
        let away = moved.path().join("away");
        std::fs::rename(dir.path(), &away).expect("move the directory");
        std::fs::create_dir(dir.path()).expect("a new directory at the path");
        assert!(claim(&file, 2).expect("the held directory").is_some());
        assert!(!dir.path().join(SLOT_CLAIM_FILE).exists());
    }

    /// A request whose control data does not fit (more descriptors than any request may
    /// carry) is read as truncated, to be refused, and every descriptor the kernel installed
    /// for it is owned, so closed: a pipe's write end sent in every slot leaves its reader at
    /// EOF once the request is dropped. Before, nix refused to parse a truncated message and
    /// the installed descriptors stayed open in the server. Control: a request that fits is
    /// read whole.
    #[test]
    fn a_truncated_requests_descriptors_are_all_closed() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let send = |fds: &[RawFd]| {
            let mut req = [0u8; MESSAGE_BYTES];
            req[0] = SPAWN;
            sendmsg::<()>(
                ours.as_raw_fd(),
                &[IoSlice::new(&req)],
                &[ControlMessage::ScmRights(fds)],
                MsgFlags::empty(),
                None,
            )
            .expect("send a request");
        };
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .expect("pipe");
        send(&[w.as_raw_fd(); FIXED_FDS + MAX_PASS_FDS + 3]);
        // Control: one that fits.
        send(&[w.as_raw_fd(); FIXED_FDS]);
        drop(w);
        let mut buf = [0u8; 16];
        let got = receive_request(&theirs, &mut buf).expect("the truncated request");
        assert!(got.truncated);
        assert_eq!(got.bytes, MESSAGE_BYTES);
        drop(got);
        let got = receive_request(&theirs, &mut buf).expect("the request that fits");
        assert_eq!((got.truncated, got.fds.len()), (false, FIXED_FDS));
        drop(got);
        let mut byte = [0u8; 1];
        assert_eq!(
            nix::unistd::read(r.as_raw_fd(), &mut byte),
            Ok(0),
            "a descriptor of a request is still open"
        );
    }

    #[test]
    fn as_root_nothing_is_claimed() {
        let (_dir, file) = claim_dir();
        let _other = claim(&file, 0).expect("claim").expect("slot 0 free");
        let mut slots = Slots::default();
        let slot = slots.free().expect("a slot");
        assert_eq!((slot.index, slot.claim.is_none()), (0, true));
    }

    /// No other account may write the claim file's directory or open the file; one that
    /// could would hold every slot (a read lock on each byte). An unusable file claims
    /// nothing.
    #[test]
    fn a_claim_file_another_account_could_reach_is_refused() {
        let me = nix::unistd::Uid::effective().as_raw();
        let (dir, file) = claim_dir();
        let file = file.path;
        assert_eq!(
            std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = claim_file_in(dir.path(), me).expect_err("a readable file");
        assert!(err.to_string().contains("alone may open"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let err = claim_file_in(dir.path(), me).expect_err("a writable directory");
        assert!(err.to_string().contains("alone may write"), "{err}");
        let err = claim_file_in(dir.path(), me.wrapping_add(1)).expect_err("another uid's");
        assert!(err.to_string().contains("alone may write"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        // Control: the directory and the file restored.
        assert_eq!(claim_file_in(dir.path(), me).expect("usable").path, file);
        let mut slots = Slots {
            claims: Some(Err(ClaimFileError::NoUser {
                uid: 0,
                why: "unusable".into(),
            })),
            ..Slots::default()
        };
        assert!(slots.free().is_none());
    }
}
