//! The parent side: a dedicated spawner thread owns the spawn server (`loong-spawn --serve`)
//! and sends it one request per sandbox; a [`Child`] tracks the sandbox by pidfd until it
//! exits. A caller with an event loop of its own (loongd's `sandbox run`) makes the request
//! on its own thread instead and watches the helper's report itself ([`Pending`]), so the
//! spawner thread is neither woken nor held for it.
//!
//! The server is started from one long-lived thread because its parent-death signal fires
//! when the *thread* that forked it exits; a short-lived thread (a runtime's blocking pool)
//! would kill every sandbox when it retired. The thread lives as long as the [`Spawner`]. A
//! server that died is restarted on the next spawn, always by that thread.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufRead, BufReader, Read, Write},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use crate::{
    cgroup::{CgroupLimits, SandboxCgroup},
    helper::server,
    host::{CgroupSupport, Host, Mechanism},
    profile::{Tier, TierProfile},
    seccomp,
    spec::{PlanContext, SandboxSpec, SpecError, DEFAULT_SANDBOX_ID},
    subids::{IdMode, Missing},
    sys,
};

/// The helper's executable name, found next to the running executable.
pub const HELPER_NAME: &str = "loong-spawn";
/// The server's socket is moved at least this high before it is mapped to fd 3.
const FD_STAGING_MIN: i32 = 64;
/// The most descriptors a spec may hand over.
pub const MAX_PASS_FDS: usize = server::MAX_PASS_FDS;
/// The buffer a [`Child`] reads its helper's report lines through.
const REPORT_BUFFER_BYTES: usize = 512;
/// The most of a helper's report [`Child::try_wait`] reads after its exit (a few short lines
/// are all a helper writes).
const REPORT_MAX_BYTES: usize = 64 * 1024;
/// How long the helper may take to report `exec` or a failed step.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the spawn server may take to answer a request (it forks the helper and answers
/// at once). A server that does not answer in time is killed and replaced, so a hung one
/// neither holds the thread that asked (a runtime worker of loongd's) for ever nor has its
/// late answer read as the next request's.
pub const SERVER_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How a payload's standard stream is connected.
#[derive(Debug, Default)]
pub enum StdioSpec {
    /// `/dev/null`.
    #[default]
    Null,
    /// A new pipe; the parent's end is in the [`Child`].
    Pipe,
    /// This descriptor.
    Fd(OwnedFd),
}

/// Why spawning failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The spec was refused; nothing ran.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A confinement step failed in the helper; the payload never ran.
    #[error("sandbox setup failed at `{step}`: {} ({detail})", nix::Error::from_raw(*errno))]
    Setup {
        step: String,
        errno: i32,
        detail: String,
    },
    /// Starting the helper, or talking to it, failed.
    #[error("cannot start the sandbox helper {}: {source}", helper.display())]
    Helper {
        helper: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The per-sandbox cgroup could not be created.
    #[error("cannot create the sandbox's cgroup: {0}")]
    Cgroup(#[source] io::Error),
    /// A profile did not compile.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// The spawner thread is gone.
    #[error("the spawner thread has stopped")]
    Stopped,
    /// loongd is not root and cannot give sandboxes subordinate ids; nothing ran.
    #[error("refusing to run a sandbox as loongd's own uid: {0}; or, to accept that (degraded: an escape owns loongd's state), set `[sandbox] rootless_own_uid = true`")]
    OwnUid(#[source] Missing),
}

/// How the payload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReport {
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal, when it was killed.
    pub signal: Option<i32>,
    /// CPU time in user mode (µs) of everything in the sandbox.
    pub user_us: u64,
    /// CPU time in kernel mode (µs).
    pub system_us: u64,
    /// Peak resident memory (KiB) of the largest process.
    pub max_rss_kib: u64,
    /// The kernel OOM-killed a process of the sandbox.
    pub oom_killed: bool,
}

impl ExitReport {
    /// The shell's view: the exit code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (_, Some(s)) => 128 + s,
            (Some(c), None) => c,
            (None, None) => 1,
        }
    }
}

/// A running sandbox.
#[derive(Debug)]
pub struct Child {
    pid: u32,
    pidfd: OwnedFd,
    report: BufReader<File>,
    /// What [`Child::try_exit_line`] and [`Child::try_wait`] read of the report, unparsed.
    report_text: Vec<u8>,
    /// The report's end was read, or as much of it as is read at all ([`REPORT_MAX_BYTES`]).
    report_closed: bool,
    /// The report's descriptor was made non-blocking.
    report_nonblocking: bool,
    /// Whether the helper's `exit` line ends the run ([`Child::try_exit_line`]): only with a
    /// pid namespace, and not with a cgroup of its own, nor with subordinate ids (a slot,
    /// freed at the helper's exit).
    exit_line_ends: bool,
    cgroup: Option<SandboxCgroup>,
    /// The parent's end of the payload's stdin, when it was [`StdioSpec::Pipe`].
    pub stdin: Option<OwnedFd>,
    /// The parent's end of the payload's stdout.
    pub stdout: Option<OwnedFd>,
    /// The parent's end of the payload's stderr.
    pub stderr: Option<OwnedFd>,
    /// Mechanisms the tier needs that this sandbox runs without (degraded mode).
    pub degraded: Vec<Mechanism>,
}

impl Child {
    /// The helper's pid (the sandbox's outermost process).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A pidfd for the helper; readable once it has exited.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Kills the whole sandbox: the helper dies, its reaper follows (parent-death signal),
    /// and with the reaper (pid 1) every process of the pid namespace.
    /// With a v2 cgroup, every process in it dies at once through its `cgroup.kill` first.
    /// Needs no new descriptor, so it works when the process is out of them.
    pub fn kill(&self) -> io::Result<()> {
        let by_cgroup = self
            .cgroup
            .as_ref()
            .and_then(SandboxCgroup::kill_file)
            .map_or(Ok(()), |f| crate::cgroup::kill(&f));
        signal_pidfd(self.pidfd.as_raw_fd(), libc::SIGKILL).and(by_cgroup)
    }

    /// A handle that can kill this sandbox after the `Child` has moved elsewhere (to a thread
    /// waiting for it).
    pub fn killer(&self) -> io::Result<Killer> {
        Ok(Killer {
            pidfd: self.pidfd.try_clone()?,
            cgroup_kill: self.cgroup.as_ref().and_then(SandboxCgroup::kill_file),
        })
    }

    /// Waits for the sandbox to end (blocking) and returns how it ended. The helper writes
    /// an `exit` line last; a helper that was killed writes none, and is reported as killed
    /// by SIGKILL once its pidfd says it is gone.
    pub fn wait(mut self) -> io::Result<ExitReport> {
        // What an earlier non-blocking read took is read again here, with the rest.
        if self.report_nonblocking {
            nix::fcntl::fcntl(
                self.report.get_ref().as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
            )?;
            self.report_nonblocking = false;
        }
        // Everything left, after what was read before (a line may straddle the two): parsed
        // once, whole.
        if !self.report_closed {
            let left = REPORT_MAX_BYTES.saturating_sub(self.report_text.len()) as u64;
            (&mut self.report)
                .take(left)
                .read_to_end(&mut self.report_text)?;
        }
        let report = exit_line(&self.report_text);
        while !wait_readable(self.pidfd.as_fd(), Duration::from_secs(60)) {}
        Ok(self.ended(report))
    }

    /// How the sandbox ended, without blocking, once its helper has exited (its pidfd is
    /// readable): what the helper reported is already in its pipe, so an async caller takes
    /// it on its own thread instead of handing [`Child::wait`] to a blocking one. `None`
    /// while the helper still runs. Dropping the `Child` afterwards removes its cgroup, which
    /// may wait ([`Child::holds_cgroup`]).
    pub fn try_wait(&mut self) -> Option<io::Result<ExitReport>> {
        if !wait_readable(self.pidfd.as_fd(), Duration::ZERO) {
            return None;
        }
        // The helper, the only writer of report lines, is gone: everything it wrote is
        // buffered or in the pipe. The pipe is read without blocking, so a descriptor of it
        // left open elsewhere cannot hold the caller.
        if let Err(e) = self.read_report() {
            return Some(Err(e));
        }
        Some(Ok(self.ended(exit_line(&self.report_text))))
    }

    /// The helper's report: readable once it has written its `exit` line, or has ended.
    pub fn report_fd(&self) -> BorrowedFd<'_> {
        self.report.get_ref().as_fd()
    }

    /// How the sandbox ended, without blocking, as soon as its helper has written its `exit`
    /// line, before the helper itself is gone. The helper writes that line only once it has
    /// reaped the reaper, pid 1 of the sandbox's pid namespace (every tier has one unless
    /// degraded), whose exit takes every other process of that namespace down first: no
    /// process of the sandbox is left. What the helper still does (its own exit, which tears
    /// the run's namespaces down) is not waited for. `None` until the line is there; and
    /// always where the line does not end a run ([`Child::ends_at_exit_line`]), as when the
    /// report ended without it ([`Child::report_closed`]: a helper killed): wait for the pidfd
    /// and [`Child::try_wait`] then.
    pub fn try_exit_line(&mut self) -> io::Result<Option<ExitReport>> {
        if !self.exit_line_ends {
            return Ok(None);
        }
        self.read_report()?;
        // Only a whole line: the helper writes it in one write, read here perhaps in parts.
        let whole = match self.report_text.iter().rposition(|&b| b == b'\n') {
            Some(end) => &self.report_text[..=end],
            None => return Ok(None),
        };
        Ok(exit_line(whole).map(|r| self.ended(Some(r))))
    }

    /// Whether the helper's `exit` line ends the run. Only for a sandbox with a pid namespace
    /// of its own, where the line (written once the namespace's init is reaped) means every
    /// process of it is gone; not for one with a cgroup of its own, which is removed only once
    /// the helper has left it, nor for one with subordinate ids, whose slot the server frees
    /// at the helper's exit (a caller answered before that could find no slot for its next
    /// run): those end when the helper is gone.
    pub fn ends_at_exit_line(&self) -> bool {
        self.exit_line_ends
    }

    /// Whether the report has nothing more to give: its end was read, or all of it that is
    /// read at all.
    pub fn report_closed(&self) -> bool {
        self.report_closed
    }

    /// Reads what the report holds now, without blocking, after what was read before (the
    /// buffered part first); stops at its end or at [`REPORT_MAX_BYTES`].
    fn read_report(&mut self) -> io::Result<()> {
        let buffered = self.report.buffer().len();
        if buffered > 0 {
            let take = buffered.min(REPORT_MAX_BYTES.saturating_sub(self.report_text.len()));
            self.report_text
                .extend_from_slice(&self.report.buffer()[..take]);
            self.report.consume(buffered);
        }
        if self.report_closed {
            return Ok(());
        }
        let file = self.report.get_mut();
        if !self.report_nonblocking {
            nix::fcntl::fcntl(
                file.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )?;
            self.report_nonblocking = true;
        }
        let mut chunk = [0u8; REPORT_BUFFER_BYTES];
        loop {
            if self.report_text.len() >= REPORT_MAX_BYTES {
                self.report_closed = true;
                return Ok(());
            }
            match io::Read::read(file, &mut chunk) {
                Ok(0) => {
                    self.report_closed = true;
                    return Ok(());
                }
                Ok(n) => {
                    let take = n.min(REPORT_MAX_BYTES - self.report_text.len());
                    self.report_text.extend_from_slice(&chunk[..take]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the sandbox has a cgroup of its own, which dropping the `Child` removes
    /// (retrying, with pauses, while the kernel still empties it).
    pub fn holds_cgroup(&self) -> bool {
        self.cgroup.is_some()
    }

    /// The exit as reported (a helper that was killed reports none: SIGKILL), with the
    /// cgroup's OOM kills.
    fn ended(&self, report: Option<ExitReport>) -> ExitReport {
        let mut r = report.unwrap_or(ExitReport {
            code: None,
            signal: Some(libc::SIGKILL),
            user_us: 0,
            system_us: 0,
            max_rss_kib: 0,
            oom_killed: false,
        });
        r.oom_killed = self.cgroup.as_ref().is_some_and(SandboxCgroup::oom_killed);
        r
    }
}

/// Kills a sandbox through its pidfd (no pid-reuse race).
#[derive(Debug)]
pub struct Killer {
    pidfd: OwnedFd,
    /// The sandbox's v2 `cgroup.kill`, when it has one.
    cgroup_kill: Option<PathBuf>,
}

impl Killer {
    /// Kills the sandbox: every process of its v2 cgroup through `cgroup.kill` where it has
    /// one, and SIGKILL to its helper, which takes the whole sandbox down in any case.
    pub fn kill(&self) -> io::Result<()> {
        let by_cgroup = self
            .cgroup_kill
            .as_deref()
            .map_or(Ok(()), crate::cgroup::kill);
        self.signal(libc::SIGKILL).and(by_cgroup)
    }

    /// Sends SIGINT to the sandbox's helper, which passes it to every process of the sandbox
    /// (what Ctrl-C does to a terminal's foreground processes); they may catch or ignore it.
    pub fn interrupt(&self) -> io::Result<()> {
        self.signal(libc::SIGINT)
    }

    fn signal(&self, sig: i32) -> io::Result<()> {
        signal_pidfd(self.pidfd.as_raw_fd(), sig)
    }
}

/// Sends `sig` through a pidfd; a process already gone is not an error.
fn signal_pidfd(pidfd: i32, sig: i32) -> io::Result<()> {
    match sys::pidfd_send_signal(pidfd, sig) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other,
    }
}

/// The last `exit` line of a report's text, parsed.
fn exit_line(text: &[u8]) -> Option<ExitReport> {
    String::from_utf8_lossy(text)
        .lines()
        .rev()
        .find_map(|line| line.trim_end().strip_prefix("exit ").map(parse_exit))
        .flatten()
}

fn parse_exit(s: &str) -> Option<ExitReport> {
    let v: Vec<i64> = s
        .split(' ')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [code, signal, ut, st, rss] = v[..] else {
        return None;
    };
    Some(ExitReport {
        code: (signal == 0).then_some(code as i32),
        signal: (signal != 0).then_some(signal as i32),
        user_us: ut.max(0) as u64,
        system_us: st.max(0) as u64,
        max_rss_kib: rss.max(0) as u64,
        oom_killed: false,
    })
}

/// Configuration of a [`Spawner`].
#[derive(Debug, Clone)]
pub struct SpawnerConfig {
    /// The `loong-spawn` executable.
    pub helper: PathBuf,
    /// One profile per tier.
    pub profiles: BTreeMap<Tier, TierProfile>,
    /// uid/gid sandboxes run as when loongd is root.
    pub sandbox_id: (u32, u32),
    /// Paths no sandbox may see.
    pub hidden: Vec<PathBuf>,
    /// Prefix of per-sandbox cgroup names.
    pub cgroup_prefix: String,
    /// loongd is not root and has no subordinate ids: run sandboxes as loongd's own uid
    /// (degraded) instead of refusing them.
    pub rootless_own_uid: bool,
    /// Offer the spawn server each run's shape, so that a sandbox built ahead may run it
    /// ([`crate::helper::shape`]; root mode only).
    pub spare: bool,
}

impl SpawnerConfig {
    /// Defaults: the helper next to the running executable, `nobody`, nothing hidden.
    pub fn new(profiles: BTreeMap<Tier, TierProfile>) -> SpawnerConfig {
        let helper = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join(HELPER_NAME)))
            .unwrap_or_else(|| PathBuf::from(HELPER_NAME));
        SpawnerConfig {
            helper,
            profiles,
            sandbox_id: DEFAULT_SANDBOX_ID,
            hidden: Vec::new(),
            rootless_own_uid: false,
            spare: true,
            // The pid and the start time: a pid is reused, and a cgroup left by a process
            // that was killed must not collide with a new one's.
            cgroup_prefix: format!(
                "loong-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0)
            ),
        }
    }
}

/// Where a spawn's outcome goes: called once, on the spawner thread. A caller that no longer
/// wants the [`Child`] (its request was dropped) must kill it, so no sandbox runs unwatched.
pub type SpawnReply = Box<dyn FnOnce(Result<Child, SpawnError>) + Send>;

enum Job {
    /// A whole spawn, its payload's `exec` awaited on the spawner thread.
    Spawn {
        spec: Box<SandboxSpec>,
        stdio: [StdioSpec; 3],
        pass: Vec<OwnedFd>,
        reply: SpawnReply,
    },
    /// The spawn server of this generation died: the spawner thread (whose death the
    /// server's parent-death signal follows) starts a new one for a spawn made on another
    /// thread, unless another waiter's restart already replaced it.
    Restart(u64, tokio::sync::oneshot::Sender<io::Result<()>>),
}

/// What every spawn works with, on the spawner thread or on a caller's
/// ([`Spawner::start_spawn`]).
struct Shared {
    config: SpawnerConfig,
    host: Arc<Host>,
    compiled: BTreeMap<(Tier, bool), Vec<seccompiler::BpfProgram>>,
    seq: AtomicU64,
    ids: Arc<IdMode>,
    /// Where the spawn server claims slots (rootless: loongd's user's home directory, looked
    /// up here, never by the server); `None` as root, or when the user has no passwd entry
    /// (the server then claims nothing and gives no sandbox subordinate ids).
    claims_in: Option<PathBuf>,
    /// The spawn server, one request at a time (held until the request's answer, by the
    /// spawner thread blocking, by a runtime's task awaiting it).
    server: tokio::sync::Mutex<ServerSlot>,
}

/// The spawn server and its generation: each server started is one more. A request that
/// finds its server gone (or not answering) empties the slot under the lock and asks for a
/// restart naming the generation it found; the spawner thread replaces only that generation
/// (or an empty slot), so many runs that saw one server die start one new server between
/// them, and none kills a healthy replacement with the sandboxes started on it.
#[derive(Debug, Default)]
struct ServerSlot {
    current: Option<Server>,
    generation: u64,
}

/// Starts sandboxes from one long-lived thread, or from a caller's thread with the
/// payload's `exec` awaited by the caller ([`Spawner::start_spawn`]).
#[derive(Debug)]
pub struct Spawner {
    jobs: mpsc::Sender<Job>,
    host: Arc<Host>,
    ids: Arc<IdMode>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// The server, locked from a thread outside any async runtime (the spawner thread).
fn lock_server(m: &tokio::sync::Mutex<ServerSlot>) -> tokio::sync::MutexGuard<'_, ServerSlot> {
    m.blocking_lock()
}

impl Spawner {
    /// Probes the host (with the helper), starts the spawner thread and its spawn server.
    pub fn start(config: SpawnerConfig) -> Result<Spawner, SpawnError> {
        let host = Arc::new(probe_host(&config.helper)?);
        let me = nix::unistd::Uid::effective();
        let (ids, claims_in) = if me.is_root() {
            (IdMode::Root, None)
        } else {
            with_claims(IdMode::detect(), me.as_raw(), server::claim_dir)
        };
        let ids = Arc::new(ids);
        crate::cgroup::sweep_stale(&host.cgroup);
        let mut compiled = BTreeMap::new();
        for (tier, p) in &config.profiles {
            compiled.insert((*tier, false), seccomp::compile(p, false)?);
            compiled.insert((*tier, true), seccomp::compile(p, true)?);
        }
        let shared = Arc::new(Shared {
            config,
            host: host.clone(),
            compiled,
            seq: AtomicU64::new(0),
            ids: ids.clone(),
            claims_in,
            server: tokio::sync::Mutex::new(ServerSlot::default()),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("loong-spawner".into())
            .spawn(move || {
                let shared = thread_shared;
                // The server must be forked by this thread (see the module docs).
                match Server::start(&shared.config.helper, shared.claims_in.as_deref()) {
                    Ok(s) => {
                        lock_server(&shared.server).current = Some(s);
                        let _ = ready_tx.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
                let restart = |generation| restart_here(&shared, generation);
                for job in rx {
                    match job {
                        Job::Spawn {
                            spec,
                            stdio,
                            pass,
                            reply,
                        } => {
                            let r = prepare(&shared, *spec, stdio, pass).and_then(|p| {
                                let (pid, pidfd) = exchange(&shared, &restart, &p)
                                    .map_err(|e| helper_error(&shared, e))?;
                                p.sent(pid, pidfd).finish()
                            });
                            reply(r);
                        }
                        Job::Restart(generation, done) => {
                            let _ = done.send(restart(generation));
                        }
                    }
                }
                // The server goes with this thread (its parent-death signal fires now).
                lock_server(&shared.server).current = None;
            })
            .map_err(|source| SpawnError::Helper {
                helper: PathBuf::from("loong-spawner thread"),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Spawner {
                jobs: tx,
                host,
                ids,
                shared,
            }),
            Ok(Err(source)) => Err(SpawnError::Helper {
                helper: PathBuf::from(HELPER_NAME),
                source,
            }),
            Err(_) => Err(SpawnError::Stopped),
        }
    }

    /// What the host can enforce.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Whose ids sandboxes run as.
    pub fn ids(&self) -> &IdMode {
        &self.ids
    }

    /// Spawns a sandbox; blocks until its payload has exec'd or setup failed.
    pub fn spawn(
        &self,
        spec: SandboxSpec,
        stdio: [StdioSpec; 3],
        pass: Vec<OwnedFd>,
    ) -> Result<Child, SpawnError> {
        let (reply, rx) = mpsc::channel();
        self.submit(
            spec,
            stdio,
            pass,
            Box::new(move |r| {
                let _ = reply.send(r);
            }),
        )?;
        rx.recv().map_err(|_| SpawnError::Stopped)?
    }

    /// Queues a spawn without waiting for it: `reply` gets the outcome on the spawner thread.
    pub fn submit(
        &self,
        spec: SandboxSpec,
        stdio: [StdioSpec; 3],
        pass: Vec<OwnedFd>,
        reply: SpawnReply,
    ) -> Result<(), SpawnError> {
        self.jobs
            .send(Job::Spawn {
                spec: Box::new(spec),
                stdio,
                pass,
                reply,
            })
            .map_err(|_| SpawnError::Stopped)
    }

    /// Starts a spawn on the calling task of a tokio runtime, without the spawner thread:
    /// plans it, asks the spawn server for the helper and sends it the plan, then returns.
    /// The caller waits for the helper's report ([`Pending::report`] turns readable when the
    /// payload has exec'd or a step failed) and takes the outcome with [`Pending::finish`].
    /// The server's answer (its fork of the helper) is awaited, its socket watched by the
    /// runtime, never blocking a thread, for [`SERVER_ANSWER_TIMEOUT`] at most; a dead server
    /// is restarted by the spawner thread, awaited here.
    pub async fn start_spawn(
        &self,
        spec: SandboxSpec,
        stdio: [StdioSpec; 3],
        pass: Vec<OwnedFd>,
    ) -> Result<Pending, SpawnError> {
        let prepared = prepare(&self.shared, spec, stdio, pass)?;
        let (pid, pidfd) = exchange_async(&self.shared, &self.jobs, &prepared)
            .await
            .map_err(|e| helper_error(&self.shared, e))?;
        Ok(prepared.sent(pid, pidfd))
    }
}

/// Rootless, the ids sandboxes get and the directory the spawn server claims slots in:
/// loongd's user's home (`lookup`, through NSS), checked here as the server will check it.
/// Subordinate ids need it: a failed lookup (even a transient NSS failure) or a directory or
/// claim file another account could reach gives no sandbox subordinate ids, and the mode
/// says why ([`Missing::NoClaims`]: `doctor`, `daemon.started` and every refusal show it),
/// rather than leave them refused for loongd's life with no word of it.
fn with_claims(
    ids: IdMode,
    uid: u32,
    lookup: impl FnOnce(u32) -> Result<PathBuf, server::ClaimFileError>,
) -> (IdMode, Option<PathBuf>) {
    let usable = lookup(uid).and_then(|dir| server::check_claim_dir(&dir, uid).map(|()| dir));
    match (ids, usable) {
        (ids, Ok(dir)) => (ids, Some(dir)),
        (IdMode::Subordinate { .. }, Err(why)) => (
            IdMode::OwnUid(crate::subids::Missing::NoClaims {
                why: why.to_string(),
            }),
            None,
        ),
        (ids, Err(_)) => (ids, None),
    }
}

/// Starts a new spawn server from the spawner thread, replacing the dead one of
/// `generation`: a server of a later generation already running (another waiter's restart
/// started it) is kept, with its sandboxes.
fn restart_here(shared: &Shared, generation: u64) -> io::Result<()> {
    let mut slot = lock_server(&shared.server);
    if slot.current.is_some() && slot.generation != generation {
        return Ok(());
    }
    slot.current = None;
    let started = Server::start(&shared.config.helper, shared.claims_in.as_deref())?;
    slot.current = Some(started);
    slot.generation = slot.generation.wrapping_add(1);
    Ok(())
}

/// A sandbox whose plan is sent, its payload not yet reported as running.
#[derive(Debug)]
pub struct Pending {
    child: Child,
    /// When the helper's report is due ([`SETUP_TIMEOUT`] after the plan was sent).
    due: std::time::Instant,
    /// The report's first line, once read.
    line: Option<String>,
}

impl Pending {
    /// The helper's report pipe: readable once the payload has exec'd, a step failed or the
    /// helper died.
    pub fn report(&self) -> BorrowedFd<'_> {
        self.child.report.get_ref().as_fd()
    }

    /// The sandbox, for a caller that gives up on it: killing it is then the caller's.
    pub fn child(&self) -> &Child {
        &self.child
    }

    /// When the helper's report is due; [`Pending::finish`] waits no longer.
    pub fn due(&self) -> std::time::Instant {
        self.due
    }

    /// Gives the sandbox up whatever its setup became: the caller kills it.
    pub fn abandon(self) -> Child {
        self.child
    }

    /// Reads the report's first line, waiting for it until it is due; `true` when it says
    /// the payload exec'd. After a `false`, [`Pending::finish`] kills and waits (it blocks).
    pub fn exec_reported(&mut self) -> bool {
        if self.line.is_none() {
            let wait = self
                .due
                .saturating_duration_since(std::time::Instant::now());
            let mut line = String::new();
            if wait_readable(self.report(), wait) {
                if let Err(e) = self.child.report.read_line(&mut line) {
                    line = format!("reading the helper's report: {e}");
                }
            }
            self.line = Some(line);
        }
        self.line.as_deref().is_some_and(|l| l.trim_end() == "exec")
    }

    /// The running sandbox once its payload exec'd; else the failed step, the sandbox
    /// killed and waited for. Waits for the report until it is due.
    pub fn finish(mut self) -> Result<Child, SpawnError> {
        if self.exec_reported() {
            return Ok(self.child);
        }
        let other = self.line.take().unwrap_or_default();
        let child = self.child;
        let _ = child.kill();
        let (step, errno, detail) = parse_error(other.trim_end());
        let _ = child.wait();
        Err(SpawnError::Setup {
            step,
            errno,
            detail,
        })
    }
}

/// Probes the host: local checks plus `loong-spawn --probe` for namespaces.
pub fn probe_host(helper: &Path) -> Result<Host, SpawnError> {
    let out = Command::new(helper)
        .arg("--probe")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|source| SpawnError::Helper {
            helper: helper.to_path_buf(),
            source,
        })?;
    Ok(Host::assemble(&crate::host::parse_probe(
        &String::from_utf8_lossy(&out.stdout),
    )))
}

/// The running spawn server and our end of its socket (non-blocking: a blocking caller waits
/// with `poll`, an async one through the runtime).
#[derive(Debug)]
struct Server {
    sock: OwnedFd,
    /// `None` once handed to its reaper.
    process: Option<std::process::Child>,
    /// The sequence number of the next request.
    next: u64,
}

/// What a request's answer carries: the new helper's pid and pidfd.
type Answer = (u32, OwnedFd);
/// The descriptors an answer carries: the pidfd.
const ANSWER_FDS: usize = 1;

impl Server {
    /// Starts `helper --serve`, giving it `claims_in` (see [`server::CLAIMS_IN_ARG`]).
    fn start(helper: &Path, claims_in: Option<&Path>) -> io::Result<Server> {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(io::Error::from)?;
        // The server's end blocks (its loop waits for requests); only ours does not.
        let theirs = staged(&theirs)?;
        nix::fcntl::fcntl(
            theirs.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .map_err(io::Error::from)?;
        let mut cmd = Command::new(helper);
        cmd.arg("--serve");
        if let Some(dir) = claims_in {
            cmd.arg(server::CLAIMS_IN_ARG).arg(dir);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).env_clear();
        sys::map_fds(&mut cmd, vec![(theirs.as_raw_fd(), server::SERVER_FD)]);
        let process = Some(cmd.spawn()?);
        Ok(Server {
            sock: ours,
            process,
            next: 0,
        })
    }

    /// Sends one request without waiting (`WouldBlock` when the socket is full); returns its
    /// sequence number.
    fn send(&mut self, fds: &[RawFd], pass: u32, shape: &[u8]) -> io::Result<u64> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let seq = self.next;
        let mut req = [0u8; server::MESSAGE_BYTES];
        req[0] = server::SPAWN;
        req[1..5].copy_from_slice(&pass.to_le_bytes());
        req[5..].copy_from_slice(&seq.to_le_bytes());
        let send = |shape: &[u8]| {
            sendmsg::<()>(
                self.sock.as_raw_fd(),
                &[io::IoSlice::new(&req), io::IoSlice::new(shape)],
                &[ControlMessage::ScmRights(fds)],
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            )
        };
        match send(shape) {
            // A shape above what the socket takes in one message (a small send buffer): the
            // request without it, built as any other.
            Err(nix::Error::EMSGSIZE) if !shape.is_empty() => send(&[]),
            other => other,
        }
        .map_err(io::Error::from)?;
        self.next = seq.wrapping_add(1);
        Ok(seq)
    }

    /// The answer to request `seq` if it has come (`WouldBlock` if not yet). Answers to
    /// earlier requests, whose callers gave up on them, are read and dropped (their helpers,
    /// never sent a plan, exit).
    fn answer(&self, seq: u64) -> io::Result<Answer> {
        loop {
            let mut buf = [0u8; 16];
            // Every descriptor received is owned, those of an answer carrying more than its
            // one (truncated, refused) too.
            let msg =
                sys::recv_owning_fds(self.sock.as_fd(), &mut buf, ANSWER_FDS, libc::MSG_DONTWAIT)?;
            let received = msg.fds;
            if msg.bytes == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the spawn server closed its socket",
                ));
            }
            if msg.bytes != server::MESSAGE_BYTES || msg.truncated {
                return Err(malformed());
            }
            let value = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
            let mut answered = [0u8; 8];
            answered.copy_from_slice(&buf[5..server::MESSAGE_BYTES]);
            if u64::from_le_bytes(answered) != seq {
                continue;
            }
            return match (buf[0], received.into_iter().next()) {
                (server::SPAWNED, Some(pidfd)) => Ok((value as u32, pidfd)),
                (server::FAILED, _) => Err(io::Error::from_raw_os_error(value)),
                _ => Err(malformed()),
            };
        }
    }

    /// Sends one request and waits for its answer on this thread, [`SERVER_ANSWER_TIMEOUT`]
    /// at most (`TimedOut` after).
    fn request(&mut self, fds: &[RawFd], pass: u32, shape: &[u8]) -> io::Result<Answer> {
        use nix::poll::PollFlags;
        let due = std::time::Instant::now() + SERVER_ANSWER_TIMEOUT;
        let wait = |fd: BorrowedFd<'_>, events: PollFlags| {
            let left = due.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || !wait_for(fd, events, left) {
                return Err(io::Error::from(io::ErrorKind::TimedOut));
            }
            Ok(())
        };
        let seq = loop {
            match self.send(fds, pass, shape) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(self.sock.as_fd(), PollFlags::POLLOUT)?
                }
                other => break other?,
            }
        };
        loop {
            match self.answer(seq) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(self.sock.as_fd(), PollFlags::POLLIN)?
                }
                other => return other,
            }
        }
    }

    /// [`Server::request`] on a tokio runtime: the socket is watched by the runtime's
    /// reactor while the answer is awaited (the caller bounds the wait).
    async fn request_async(
        &mut self,
        fds: &[RawFd],
        pass: u32,
        shape: &[u8],
    ) -> io::Result<Answer> {
        use tokio::io::Interest;
        // Copies of our end registered for this request, each for the one readiness it waits
        // for (a writable edge would wake the reactor for nothing at every request read): an
        // `OwnedFd` owned by the `AsyncFd` cannot be closed under the registration.
        let seq = match self.send(fds, pass, shape) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let full = watch(&self.sock, Interest::WRITABLE)?;
                loop {
                    let mut ready = full.writable().await?;
                    match self.send(fds, pass, shape) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                        other => break other?,
                    }
                }
            }
            other => other?,
        };
        let watched = watch(&self.sock, Interest::READABLE)?;
        loop {
            let mut ready = watched.readable().await?;
            match self.answer(seq) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                other => return other,
            }
        }
    }
}

/// A copy of `fd` registered with the current runtime's reactor for `interest`.
fn watch(
    fd: &OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // Deprecated for inner values that could change their descriptor under the
    // registration; an `OwnedFd` owned by the `AsyncFd` can be neither swapped nor closed
    // (the replacement is `unsafe`, which this crate keeps to `sys`).
    #[allow(deprecated)]
    tokio::io::unix::AsyncFd::with_interest(fd.try_clone()?, interest)
}

fn malformed() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "malformed answer from the spawn server",
    )
}

impl Drop for Server {
    /// Kills the server (and, through their parent-death signal, the helpers of every
    /// sandbox still running on it) and leaves its reaping to a thread of its own: a server
    /// stuck in uninterruptible sleep would otherwise hold the dropping thread (a runtime
    /// worker of loongd's, under the server's lock) until the kernel let it go.
    fn drop(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        let _ = process.kill();
        if let Ok(Some(_)) = process.try_wait() {
            return;
        }
        let reaper = std::thread::Builder::new()
            .name(SERVER_REAPER_THREAD.into())
            .spawn(move || {
                let _ = process.wait();
            });
        // No thread to be had: the zombie is left (a process entry, nothing running) rather
        // than the caller held.
        drop(reaper);
    }
}

/// The name of the short-lived thread that reaps a spawn server killed on replacement.
const SERVER_REAPER_THREAD: &str = "loong-spawn-reaper";

/// The null device a payload's `Null` stdio is opened from.
const NULL_DEVICE: &str = "/dev/null";
/// The null device's (major, minor).
const NULL_RDEV: (u64, u64) = (1, 3);

/// `path` opened read-write for a payload's stdio, once it is seen to be the null device: a
/// regular file left at loongd's `/dev/null` (root's `rm` and a redirection make one, which
/// then collects what root discards) is refused, not handed to every worker.
fn open_null(path: &Path) -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let st = nix::sys::stat::fstat(f.as_raw_fd()).map_err(io::Error::from)?;
    let is_null = st.st_mode & libc::S_IFMT == libc::S_IFCHR
        && st.st_rdev == nix::sys::stat::makedev(NULL_RDEV.0, NULL_RDEV.1);
    if !is_null {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not the null device (a character device 1:3)",
                path.display()
            ),
        ));
    }
    Ok(OwnedFd::from(f))
}

fn stdio_fd(s: StdioSpec, payload_reads: bool) -> io::Result<(OwnedFd, Option<OwnedFd>)> {
    Ok(match s {
        StdioSpec::Null => (open_null(Path::new(NULL_DEVICE))?, None),
        StdioSpec::Fd(fd) => (fd, None),
        StdioSpec::Pipe => {
            let (r, w) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
            if payload_reads {
                (r, Some(w))
            } else {
                (w, Some(r))
            }
        }
    })
}

fn staged(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let raw = nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(FD_STAGING_MIN),
    )
    .map_err(io::Error::from)?;
    sys::adopt_fd(raw)
}

/// Plans a spawn and makes the descriptors of its request to the spawn server.
fn prepare(
    ctx: &Shared,
    spec: SandboxSpec,
    stdio: [StdioSpec; 3],
    pass: Vec<OwnedFd>,
) -> Result<Prepared, SpawnError> {
    let config = &ctx.config;
    let subordinate = match &*ctx.ids {
        IdMode::Root => None,
        IdMode::Subordinate { uid, gid, .. } => Some((*uid, *gid)),
        IdMode::OwnUid(_) if config.rootless_own_uid => None,
        IdMode::OwnUid(m) => return Err(SpawnError::OwnUid(m.clone())),
    };
    let tier = spec.tier.ok_or(SpecError::NoTier)?;
    let profile = config.profiles.get(&tier).ok_or(SpecError::NoTier)?;
    // The egress socket and the gate travel after the payload's descriptors (a slot each).
    if pass.len() + usize::from(!spec.net.is_empty()) + usize::from(spec.gate.is_some())
        > MAX_PASS_FDS
    {
        return Err(SpecError::TooMany {
            what: "handed-over descriptors",
            count: pass.len(),
            max: MAX_PASS_FDS,
        }
        .into());
    }
    let mut spec = spec;
    spec.pass_fds = pass.len() as u32;
    let n = ctx.seq.fetch_add(1, Ordering::Relaxed);
    let wants_cgroup = spec.limits.memory_bytes.is_some() || spec.limits.pids.is_some();
    // A delegated cgroup v2 without the limit controllers still places every sandbox in a
    // child of its own (killed through `cgroup.kill`); its limits stay rlimits.
    let placement = matches!(ctx.host.cgroup, CgroupSupport::V2Placement { .. });
    let (cgroup, procs) = if (wants_cgroup && ctx.host.has(Mechanism::Cgroup)) || placement {
        let (c, p) = SandboxCgroup::create(
            &ctx.host.cgroup,
            &format!("{}-{n}", config.cgroup_prefix),
            CgroupLimits {
                memory_bytes: spec.limits.memory_bytes,
                pids: spec.limits.pids,
            },
        )
        .map_err(SpawnError::Cgroup)?;
        (Some(c), p)
    } else {
        (None, Vec::new())
    };
    let seccomp = ctx
        .compiled
        .get(&(tier, !spec.net.is_empty()))
        .cloned()
        .unwrap_or_default();
    let planned = spec.plan(PlanContext {
        host: &ctx.host,
        profile,
        sandbox_id: config.sandbox_id,
        hidden: &config.hidden,
        seccomp,
        cgroup_join: procs,
        subordinate,
    })?;
    let helper_err = |source| helper_error(ctx, source);

    let [i, o, e] = stdio;
    let (si, pin) = stdio_fd(i, true).map_err(helper_err)?;
    let (so, pout) = stdio_fd(o, false).map_err(helper_err)?;
    let (se, perr) = stdio_fd(e, false).map_err(helper_err)?;
    let (plan_r, plan_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| helper_err(e.into()))?;
    let (rep_r, rep_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| helper_err(e.into()))?;
    let mut fds: Vec<RawFd> = [&plan_r, &rep_w, &si, &so, &se]
        .iter()
        .map(|f| f.as_raw_fd())
        .collect();
    fds.extend(pass.iter().map(|f| f.as_raw_fd()));
    // The egress socket, after the payload's descriptors: the helper keeps it for the relay.
    if planned.plan.egress.is_some() {
        if let Some(e) = &spec.egress {
            fds.push(e.as_raw_fd());
        }
    }
    // The gate, last: the payload waits on it before its execve.
    if planned.plan.gate {
        if let Some(g) = &spec.gate {
            fds.push(g.as_raw_fd());
        }
    }
    let sent = (fds.len() - server::FIXED_FDS) as u32;
    Ok(Prepared {
        fds,
        sent,
        keep: (plan_r, rep_w, si, so, se, pass),
        spec,
        shape: if config.spare {
            crate::helper::shape(&planned.plan).unwrap_or_default()
        } else {
            Vec::new()
        },
        plan: planned.plan.encode(),
        degraded: planned.degraded,
        exit_line_ends: cgroup.is_none()
            && subordinate.is_none()
            && planned.plan.namespaces & libc::CLONE_NEWPID != 0,
        plan_w,
        rep_r,
        cgroup,
        parent_ends: [pin, pout, perr],
    })
}

fn helper_error(ctx: &Shared, source: io::Error) -> SpawnError {
    SpawnError::Helper {
        helper: ctx.config.helper.clone(),
        source,
    }
}

/// A planned spawn and the descriptors of its request to the spawn server.
struct Prepared {
    /// The request's descriptors, in order (borrowed from `keep` and `spec`).
    fds: Vec<RawFd>,
    /// How many of them are handed over (after the fixed ones).
    sent: u32,
    /// The sandbox's ends (plan reader, report writer, stdio, handed-over): ours are closed
    /// once the server has them, so EOFs mean what they should.
    keep: (OwnedFd, OwnedFd, OwnedFd, OwnedFd, OwnedFd, Vec<OwnedFd>),
    /// Holds the egress socket and the gate until they are sent.
    spec: SandboxSpec,
    /// The run's shape, when a sandbox built ahead may run it ([`crate::helper::shape`]);
    /// empty when not.
    shape: Vec<u8>,
    plan: Vec<u8>,
    degraded: Vec<Mechanism>,
    /// Whether the helper's `exit` line will end the run ([`Child::ends_at_exit_line`]).
    exit_line_ends: bool,
    plan_w: OwnedFd,
    rep_r: OwnedFd,
    cgroup: Option<SandboxCgroup>,
    parent_ends: [Option<OwnedFd>; 3],
}

impl Prepared {
    /// Sends the plan to the helper the server forked (`pid`, `pidfd`): the sandbox is on its
    /// way, its report due within [`SETUP_TIMEOUT`].
    fn sent(self, pid: u32, pidfd: OwnedFd) -> Pending {
        let Prepared {
            keep,
            spec,
            plan,
            degraded,
            exit_line_ends,
            plan_w,
            rep_r,
            cgroup,
            parent_ends: [pin, pout, perr],
            ..
        } = self;
        // Our copies of the sandbox's ends go now, so EOFs mean what they should.
        drop((keep, spec));
        let mut plan_w = File::from(plan_w);
        // A failed write means the helper died early; its report says why.
        let _ = plan_w.write_all(&plan);
        drop(plan_w);
        let due = std::time::Instant::now() + SETUP_TIMEOUT;
        // Report lines are short; a sandbox can live long, so its reader stays small.
        let report = BufReader::with_capacity(REPORT_BUFFER_BYTES, File::from(rep_r));
        Pending {
            child: Child {
                pid,
                pidfd,
                report,
                report_text: Vec::new(),
                report_closed: false,
                report_nonblocking: false,
                exit_line_ends,
                cgroup,
                stdin: pin,
                stdout: pout,
                stderr: perr,
                degraded,
            },
            due,
            line: None,
        }
    }
}

/// The error of a server that did not answer within [`SERVER_ANSWER_TIMEOUT`] (it is
/// replaced).
fn not_answering() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the spawn server did not answer within {} s; it is replaced for the next sandbox",
            SERVER_ANSWER_TIMEOUT.as_secs()
        ),
    )
}

/// Whether `answer` says the server is gone (its socket closed): a new one is started and
/// the request made again, once.
fn server_gone<T>(answer: &io::Result<T>) -> bool {
    answer.as_ref().is_err_and(|e| {
        matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET))
            || e.kind() == io::ErrorKind::UnexpectedEof
    })
}

/// One request on the spawn server, on the calling thread, blocking for its answer (the
/// spawner thread's spawns); `restart` replaces a dead server.
fn exchange(
    ctx: &Shared,
    restart: &dyn Fn(u64) -> io::Result<()>,
    prepared: &Prepared,
) -> io::Result<(u32, OwnedFd)> {
    let request = || {
        let mut slot = lock_server(&ctx.server);
        let answer = match slot.current.as_mut() {
            Some(s) => s.request(&prepared.fds, prepared.sent, &prepared.shape),
            None => Err(io::Error::from_raw_os_error(libc::EPIPE)),
        };
        settle(&mut slot, answer)
    };
    let (answer, generation) = request();
    if server_gone(&answer) {
        restart(generation)?;
        return request().0;
    }
    answer
}

/// A request's answer as its caller sees it, with the generation of the server it was made
/// on (under the lock): a server that did not answer, or is gone, is dropped from the slot
/// here (killed, reaped elsewhere), so no later request is made on it and a restart naming
/// this generation replaces it.
fn settle(slot: &mut ServerSlot, answer: io::Result<Answer>) -> (io::Result<Answer>, u64) {
    let generation = slot.generation;
    if answer
        .as_ref()
        .is_err_and(|e| e.kind() == io::ErrorKind::TimedOut)
    {
        slot.current = None;
        return (Err(not_answering()), generation);
    }
    if server_gone(&answer) {
        slot.current = None;
    }
    (answer, generation)
}

/// [`exchange`] on an async runtime: the server's answer is awaited on the runtime (its
/// socket watched, no thread blocked), one request in flight at a time (the lock is held
/// until the answer, or until the caller gives up: the late answer is then skipped by the
/// next request, which knows it by its sequence number). A dead server is replaced by the
/// spawner thread, awaited here.
async fn exchange_async(
    ctx: &Shared,
    jobs: &mpsc::Sender<Job>,
    prepared: &Prepared,
) -> io::Result<(u32, OwnedFd)> {
    let request = || async {
        let mut slot = ctx.server.lock().await;
        let answer = match slot.current.as_mut() {
            Some(s) => tokio::time::timeout(
                SERVER_ANSWER_TIMEOUT,
                s.request_async(&prepared.fds, prepared.sent, &prepared.shape),
            )
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
            None => Err(io::Error::from_raw_os_error(libc::EPIPE)),
        };
        settle(&mut slot, answer)
    };
    let (answer, generation) = request().await;
    if server_gone(&answer) {
        let (done, rx) = tokio::sync::oneshot::channel();
        let stopped = || io::Error::other("the spawner thread has stopped");
        jobs.send(Job::Restart(generation, done))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())??;
        return request().await.0;
    }
    answer
}

fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    wait_for(fd, nix::poll::PollFlags::POLLIN, timeout)
}

/// Whether `fd` has one of `events` (or an error or hang-up) within `timeout`.
fn wait_for(fd: BorrowedFd<'_>, events: nix::poll::PollFlags, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollTimeout};
    let mut fds = [PollFd::new(fd, events)];
    let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut fds, ms), Ok(n) if n > 0)
}

fn parse_error(line: &str) -> (String, i32, String) {
    let Some(rest) = line.strip_prefix("error ") else {
        return (
            "helper".into(),
            libc::EIO,
            if line.is_empty() {
                "the helper exited without a report".into()
            } else {
                line.into()
            },
        );
    };
    let mut it = rest.splitn(3, '\t');
    let step = it.next().unwrap_or("unknown").to_string();
    let errno = it.next().and_then(|e| e.parse().ok()).unwrap_or(libc::EIO);
    let detail = it.next().unwrap_or("").to_string();
    (step, errno, detail)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod server_tests;
