//! The shared worker runtime: what every worker process does around its own work.
//!
//! 1. Adopt the socket loongd handed over as fd 3 ([`loong_sandbox::worker`]).
//! 2. Build the worker's state (for the WASM worker: the engine, its linker and ticker).
//! 3. Confine itself a final time, before reading the first byte from loongd: no path opens
//!    and no process, socket or exec from here on. A worker that runs foreign programs
//!    instead becomes the child subreaper of what it starts and makes itself non-dumpable
//!    ([`descendants`]).
//! 4. Answer loongd's handshake as the callee; only `PeerKind::Kernel` is served.
//! 5. Serve: one request at a time, pings answered between requests (loongd's health
//!    checks), until loongd closes the socket. After answering a call that says the machine
//!    has CPUs to spare, the worker polls for the next request for an adaptive window
//!    before it sleeps ([`loong_ipc::spin`]; loongd reads the machine's load, which the
//!    worker's sandbox does not let it read).
//!
//! The loop is blocking and single-threaded: a worker runs one call at a time and loongd
//! keeps a pool. A worker holds no secrets and never mints tokens; it only answers.

use std::{
    io::{self, Read, Write},
    os::{fd::AsFd, unix::net::UnixStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

pub mod descendants;
pub mod service;

use loong_ipc::{
    frame::{self, FrameBuffer, FrameLimit},
    message::worker::WORKER_MAX_FRAME_BYTES,
    spin::SpinWindow,
    Call, ErrorKind, HandshakeReply, Hello, Limits, PeerKind, RejectReason, RemoteError, Reply,
    Welcome, WorkerRequest, WorkerResponse, PROTOCOL_VERSION,
};

/// How long loongd has to send its hello once the worker is ready.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one frame may take from its first byte to its last.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// What a worker kind does with each request.
pub trait Handler {
    /// Answers one request. `Err` is a failure of the worker itself (loongd replaces it);
    /// a plugin's own failure is an `Ok(WorkerResponse::Failed(..))`.
    fn handle(&mut self, req: WorkerRequest) -> Result<WorkerResponse, RemoteError>;

    /// Answers one request with `link`, on which the worker may make kernel calls on behalf
    /// of that request while it serves it. A kind that makes none keeps the default.
    fn handle_with(
        &mut self,
        req: WorkerRequest,
        link: KernelLink,
    ) -> Result<WorkerResponse, RemoteError> {
        drop(link);
        self.handle(req)
    }
}

pub use kernel::{KernelLink, KernelLinkError};

/// Why a worker could not build its state before serving; the message says what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

impl From<String> for BuildError {
    fn from(s: String) -> Self {
        BuildError(s)
    }
}

impl From<&str> for BuildError {
    fn from(s: &str) -> Self {
        BuildError(s.to_string())
    }
}

mod kernel;

/// Why a worker stopped.
#[derive(Debug)]
pub enum Stop {
    /// loongd closed the socket between frames: a normal end.
    Closed,
    /// Anything else; the message says what.
    Failed(String),
}

/// Runs a worker: adopt the socket, `build` the state, confine, handshake, serve. Returns
/// the process exit code (0 for a normal end, 2 when anything failed, reported on stderr).
pub fn main<H: Handler>(build_id: &str, build: impl FnOnce() -> Result<H, BuildError>) -> i32 {
    main_with(build_id, Final::Confine, build)
}

/// The last confinement step a worker takes before serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    /// [`loong_sandbox::worker::confine_self`]: no opens, no processes, no sockets.
    Confine,
    /// [`loong_sandbox::worker::confine_self_accepting`]: as `Confine`, but `accept` stays
    /// allowed, for a service that serves the listener loongd passed it (the gateway).
    ConfineAccepting,
    /// The tier's sandbox only: for a worker that must start a foreign program itself (the
    /// program inherits the same sandbox, which is the boundary). The worker holds what it
    /// starts instead ([`descendants::hold_descendants`]): it is their child subreaper and is
    /// itself non-dumpable.
    TierOnly,
}

/// [`main`] with a choice of the final step.
pub fn main_with<H: Handler>(
    build_id: &str,
    last: Final,
    build: impl FnOnce() -> Result<H, BuildError>,
) -> i32 {
    match run(build_id, last, build) {
        Stop::Closed => 0,
        Stop::Failed(why) => {
            let _ = writeln!(io::stderr(), "worker: {why}");
            2
        }
    }
}

fn run<H: Handler>(
    build_id: &str,
    last: Final,
    build: impl FnOnce() -> Result<H, BuildError>,
) -> Stop {
    let sock = match loong_sandbox::worker::inherited_socket() {
        Ok(s) => s,
        Err(e) => return Stop::Failed(format!("no control socket: {e}")),
    };
    if matches!(last, Final::Confine | Final::ConfineAccepting) {
        // Before `build` starts any thread: malloc must not open files once confined.
        if let Err(e) = loong_sandbox::worker::bound_malloc_arenas() {
            return Stop::Failed(format!("bounding malloc before confinement: {e}"));
        }
    }
    let mut handler = match build() {
        Ok(h) => h,
        Err(e) => return Stop::Failed(format!("initialisation failed: {e}")),
    };
    match last {
        Final::Confine => {
            if let Err(e) = loong_sandbox::worker::confine_self() {
                return Stop::Failed(format!("final self-confinement failed: {e}"));
            }
        }
        Final::ConfineAccepting => {
            if let Err(e) = loong_sandbox::worker::confine_self_accepting() {
                return Stop::Failed(format!("final self-confinement failed: {e}"));
            }
        }
        Final::TierOnly => {
            if let Err(e) = descendants::hold_descendants() {
                return Stop::Failed(e.to_string());
            }
        }
    }
    let mut conn = match Conn::new(sock) {
        Ok(c) => c,
        Err(e) => return Stop::Failed(format!("control socket: {e}")),
    };
    if let Err(e) = conn.handshake(build_id) {
        return Stop::Failed(format!("handshake: {e}"));
    }
    serve(conn.shared(), &mut handler)
}

fn serve<H: Handler>(conn: kernel::Shared, handler: &mut H) -> Stop {
    loop {
        let call: Call<WorkerRequest> = match kernel::lock(&conn).read(None) {
            Ok(Some(c)) => c,
            Ok(None) => return Stop::Closed,
            Err(e) => return Stop::Failed(format!("reading a request: {e}")),
        };
        let reply = match call {
            Call::Request { id, body, .. } => {
                // Whether to poll for the next request, as the one that came now says.
                let spare = matches!(
                    body,
                    WorkerRequest::Invoke {
                        cpus_to_spare: true,
                        ..
                    }
                );
                kernel::lock(&conn).spare = spare;
                Reply::Response {
                    id,
                    result: handler.handle_with(body, KernelLink::new(conn.clone(), id)),
                }
            }
            Call::Ping { nonce } => Reply::Pong { nonce },
            // One call at a time: a request is finished before the next frame is read, so
            // there is nothing in flight to cancel or to stream into; an answer to a kernel
            // call withdrawn at its deadline may still arrive, and is dropped.
            Call::Cancel { .. } | Call::Stream { .. } | Call::KernelReply { .. } => continue,
        };
        if let Err(e) = kernel::lock(&conn).write(&reply) {
            return Stop::Failed(format!("writing a reply: {e}"));
        }
    }
}

/// A blocking framed connection over the inherited socket. Reading and writing are apart:
/// a service's reader thread waits for frames while other threads write kernel calls
/// ([`service::AsyncLink`]); each frame is written whole under the writer's lock.
pub(crate) struct Conn {
    /// The socket as a plain file: read(2) and write(2), because the restricted tier refuses
    /// recvfrom and sendto, which the socket types use.
    sock: Arc<std::fs::File>,
    buf: FrameBuffer,
    writer: Arc<Mutex<Writer>>,
    /// How long a wait for the next frame polls before it sleeps, adapted to how long such
    /// waits lately lasted.
    spin: SpinWindow,
    /// Whether the machine had CPUs to spare, as the last call said (see
    /// [`WorkerRequest::Invoke`]): a wait polls only then.
    pub(crate) spare: bool,
}

/// The writing side of [`Conn`].
pub(crate) struct Writer {
    sock: Arc<std::fs::File>,
    limit: FrameLimit,
    out: Vec<u8>,
}

impl Writer {
    pub(crate) fn write<T: serde::Serialize>(&mut self, msg: &T) -> io::Result<()> {
        self.out.clear();
        frame::encode(msg, self.limit, &mut self.out)
            .map_err(|e| io::Error::other(e.to_string()))?;
        (&*self.sock).write_all(&self.out)
    }
}

impl Conn {
    pub(crate) fn new(sock: UnixStream) -> io::Result<Conn> {
        let limit = FrameLimit::new(u64::from(WORKER_MAX_FRAME_BYTES))
            .map_err(|e| io::Error::other(e.to_string()))?;
        let sock = Arc::new(std::fs::File::from(std::os::fd::OwnedFd::from(sock)));
        Ok(Conn {
            sock: sock.clone(),
            buf: FrameBuffer::new(limit),
            writer: Arc::new(Mutex::new(Writer {
                sock,
                limit,
                out: Vec::new(),
            })),
            spin: SpinWindow::default(),
            spare: false,
        })
    }

    /// The writing side, for a thread that writes while another reads.
    pub(crate) fn writer(&self) -> Arc<Mutex<Writer>> {
        self.writer.clone()
    }

    fn handshake(&mut self, build_id: &str) -> io::Result<()> {
        let body = self
            .read_body(Some(HELLO_TIMEOUT))?
            .ok_or_else(|| io::Error::other("loongd closed before its hello"))?;
        let reject = |me: &mut Conn, why: RejectReason| {
            let _ = me.write(&HandshakeReply::Rejected(why.clone()));
            Err(io::Error::other(why.to_string()))
        };
        let hello = match Hello::decode(&body) {
            Ok(h) => h,
            Err(loong_ipc::HandshakeError::VersionMismatch { theirs, .. }) => {
                return reject(
                    self,
                    RejectReason::VersionMismatch {
                        server: PROTOCOL_VERSION,
                        client: theirs,
                    },
                )
            }
            Err(_) => return reject(self, RejectReason::BadHello),
        };
        if hello.peer_kind != PeerKind::Kernel {
            return reject(
                self,
                RejectReason::WrongPeerKind {
                    kind: hello.peer_kind,
                },
            );
        }
        self.write(&HandshakeReply::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            build: build_id.into(),
            connection_id: 0,
            limits: Limits {
                max_frame_bytes: WORKER_MAX_FRAME_BYTES,
                max_in_flight: 1,
                frame_read_timeout_ms: FRAME_TIMEOUT.as_millis() as u32,
            },
        }))
    }

    pub(crate) fn read<T: serde::de::DeserializeOwned>(
        &mut self,
        idle: Option<Duration>,
    ) -> io::Result<Option<T>> {
        match self.read_body(idle)? {
            None => Ok(None),
            Some(body) => frame::decode_body(&body)
                .map(Some)
                .map_err(|e| io::Error::other(e.to_string())),
        }
    }

    /// The next frame's body; `None` at a clean end of stream between frames.
    fn read_body(&mut self, idle: Option<Duration>) -> io::Result<Option<Vec<u8>>> {
        // Set at the frame's first byte: the rest must arrive by then.
        let mut frame_deadline: Option<Instant> = None;
        // A wait for a frame not yet begun polls for the spin window first.
        let mut spun: Option<Instant> = None;
        loop {
            if let Some(body) = self
                .buf
                .next_body()
                .map_err(|e| io::Error::other(e.to_string()))?
            {
                return Ok(Some(body));
            }
            let waiting = if self.buf.buffered() > 0 {
                let until = *frame_deadline.get_or_insert_with(|| Instant::now() + FRAME_TIMEOUT);
                Some(until.saturating_duration_since(Instant::now()))
            } else {
                idle
            };
            // poll(2), not SO_RCVTIMEO: the restricted tier refuses setsockopt. Without a
            // limit too: a read(2) that sleeps on a Unix stream socket is woken each time
            // loongd consumes a frame this worker wrote (the kernel's write-space wake-up,
            // which a blocked read does not filter), so a worker blocked between calls would
            // be woken once more per answer; a poll for POLLIN sleeps through those.
            let ms = match waiting {
                Some(limit) => {
                    PollTimeout::from(u16::try_from(limit.as_millis()).unwrap_or(u16::MAX))
                }
                None => PollTimeout::NONE,
            };
            let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            if self.buf.buffered() == 0 {
                let start = Instant::now();
                spun = Some(start);
                let until = start + self.spin.window_given(self.spare);
                while Instant::now() < until
                    && matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0) | Err(_))
                {
                    std::hint::spin_loop();
                }
            }
            let ready = match poll(&mut fds, ms) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => other.map_err(io::Error::from)?,
            };
            if ready == 0 {
                let limit = waiting.unwrap_or_default();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no data within {} ms", limit.as_millis()),
                ));
            }
            let sock = &self.sock;
            let n = self
                .buf
                .fill(|space| (&**sock).read(space))
                .map_err(|e| io::Error::other(e.to_string()))??;
            if n > 0 {
                if let Some(start) = spun.take() {
                    // The wait for this frame's first bytes ended: the window adapts to it.
                    self.spin.record(start.elapsed());
                }
            }
            if n == 0 {
                return if self.buf.buffered() == 0 {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stream ended inside a frame",
                    ))
                };
            }
        }
    }

    pub(crate) fn write<T: serde::Serialize>(&mut self, msg: &T) -> io::Result<()> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .write(msg)
    }
}

/// Turns an unexpected internal failure into the error loongd sees.
pub fn internal(message: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, message)
}

/// A load or start refused, saying why.
pub fn refused(message: String) -> WorkerResponse {
    WorkerResponse::Failed(loong_ipc::PluginFailure::new(
        loong_ipc::FailureKind::LoadRefused,
        message,
    ))
}

/// The answer to a configuring request meant for another kind of worker: names the plugin
/// (or tool) and the worker that runs it. loongd never sends one; it answers a confused or
/// hostile peer. `this` is the worker's own program name.
pub fn wrong_worker(req: &WorkerRequest, this: &str) -> WorkerResponse {
    let (what, name, runs) = match req {
        WorkerRequest::Load(p) => ("plugin", &p.plugin_id, "loong-worker-wasm"),
        WorkerRequest::Start(p) => ("plugin", &p.plugin_id, "loong-worker-stdio"),
        WorkerRequest::Connector(c) => ("plugin", &c.plugin_id, "loong-worker-http"),
        WorkerRequest::Builtin(b) => ("tool", &b.tool, "loong-worker-builtin"),
        _ => return refused(format!("{this} does not take this request")),
    };
    refused(format!(
        "{what} {name}: {this} does not run it; {runs} does"
    ))
}

/// The answer to configuring a worker that serves one tool, `name`.
pub fn one_tool(name: &str) -> WorkerResponse {
    WorkerResponse::Described(vec![loong_ipc::ToolInfo {
        name: name.to_string(),
        description: String::new(),
        input_schema: None,
    }])
}

/// The answer to a call for a tool this worker was not configured with.
pub fn not_configured(name: &str) -> WorkerResponse {
    WorkerResponse::Failed(loong_ipc::PluginFailure::new(
        loong_ipc::FailureKind::NotLoaded,
        format!("{name} is not configured in this worker"),
    ))
}

/// CPU time (user + system) of the calling thread, µs: a call's cost when the worker runs it
/// on its own thread.
pub fn thread_cpu_us() -> u64 {
    usage_us(nix::sys::resource::UsageWho::RUSAGE_THREAD)
}

/// CPU time of the worker's waited-for children, µs: a call's cost when it ran a program
/// that has ended.
pub fn children_cpu_us() -> u64 {
    usage_us(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
}

fn usage_us(who: nix::sys::resource::UsageWho) -> u64 {
    nix::sys::resource::getrusage(who)
        .map(|u| {
            let us = |t: nix::sys::time::TimeVal| {
                u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
                    + u64::try_from(t.tv_usec()).unwrap_or(0)
            };
            us(u.user_time()) + us(u.system_time())
        })
        .unwrap_or(0)
}

/// Peak resident memory of this process, KiB, from `getrusage` (a confined worker can no
/// longer open `/proc`).
pub fn peak_rss_kib() -> u64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| u64::try_from(u.max_rss()).unwrap_or(0))
        .unwrap_or(0)
}

/// A call's answer for a worker that neither meters fuel nor keeps logs: `output`, with the
/// wall time since `started`, the CPU since `cpu_before` (thread plus waited-for children),
/// and the worker's peak resident memory.
pub fn plain_output(output: Vec<u8>, started: Instant, cpu_before: u64) -> WorkerResponse {
    WorkerResponse::Output(loong_ipc::CallOutput {
        output,
        logs: Vec::new(),
        logs_dropped: 0,
        wall_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        cpu_us: (thread_cpu_us() + children_cpu_us()).saturating_sub(cpu_before),
        fuel_consumed: None,
        peak_memory_bytes: peak_rss_kib() * 1024,
    })
}

/// A worker's figures: what it has loaded and how many calls it answered.
pub fn stats(loaded: Vec<String>, calls: u64) -> WorkerResponse {
    WorkerResponse::Stats(loong_ipc::WorkerStats {
        rss_kib: peak_rss_kib(),
        loaded,
        calls,
    })
}

#[cfg(test)]
mod tests {
    use loong_ipc::spin::SpinWindow;
    use loong_ipc::test_support::settled;

    use super::*;

    /// A worker waiting for loongd's next request is not woken when loongd reads the answer
    /// it wrote before (the socket's write-space wake-up, one more context switch per call),
    /// only by the request itself.
    #[test]
    fn a_worker_waiting_for_a_request_sleeps_through_loongd_reading_its_answer() {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let waiting = std::thread::spawn(move || {
            let mut conn = Conn::new(theirs).expect("conn");
            tid_tx.send(nix::unistd::gettid().as_raw()).expect("tid");
            // An answer, then the wait for the next request, as `serve` does.
            conn.write(&Reply::<WorkerResponse>::Pong { nonce: 1 })
                .expect("answer");
            conn.read::<Call<WorkerRequest>>(None)
        });
        let tid = tid_rx.recv().expect("tid");
        let limit = FrameLimit::new(u64::from(WORKER_MAX_FRAME_BYTES)).expect("limit");
        let mut loongd = std::fs::File::from(std::os::fd::OwnedFd::from(ours));
        let before = settled(tid);
        // loongd reads the answer: the worker's wait must not end for it.
        let mut buf = FrameBuffer::new(limit);
        let answer = loop {
            if let Some(body) = buf.next_body().expect("frame") {
                break body;
            }
            buf.fill(|space| loongd.read(space))
                .expect("fill")
                .expect("read");
        };
        let pong: Reply<WorkerResponse> = frame::decode_body(&answer).expect("pong");
        assert!(matches!(pong, Reply::Pong { nonce: 1 }), "{pong:?}");
        let after = settled(tid);
        assert_eq!(
            after, before,
            "the waiting worker was woken by loongd reading its answer"
        );
        // The control: the request itself wakes it, and it is read.
        let mut out = Vec::new();
        frame::encode(&Call::<WorkerRequest>::Ping { nonce: 2 }, limit, &mut out).expect("encode");
        loongd.write_all(&out).expect("request");
        let got = waiting.join().expect("thread").expect("read");
        assert!(matches!(got, Some(Call::Ping { nonce: 2 })), "{got:?}");
    }

    #[test]
    fn a_request_for_another_worker_names_the_one_that_runs_it() {
        let builtin = WorkerRequest::Builtin(Box::new(loong_ipc::BuiltinSpec {
            tool: "file.read".into(),
            roots: Vec::new(),
            timeout_ms: 1,
            max_output_bytes: 1,
        }));
        let WorkerResponse::Failed(f) = wrong_worker(&builtin, "loong-worker-http") else {
            panic!("refused")
        };
        assert_eq!(f.kind, loong_ipc::FailureKind::LoadRefused);
        assert_eq!(
            f.message,
            "tool file.read: loong-worker-http does not run it; loong-worker-builtin does"
        );
        let WorkerResponse::Failed(f) = wrong_worker(&WorkerRequest::Stats, "loong-worker-http")
        else {
            panic!("refused")
        };
        assert!(
            f.message.contains("loong-worker-http does not take"),
            "{}",
            f.message
        );
    }

    /// A handler that answers every request at once.
    struct Quick;

    impl Handler for Quick {
        fn handle(&mut self, _req: WorkerRequest) -> Result<WorkerResponse, RemoteError> {
            Ok(stats(Vec::new(), 0))
        }
    }

    /// loongd's end of a worker serving with `Quick` on a thread of its own, whose wait for
    /// the next request has the spin window `spin`.
    struct Served {
        loongd: std::fs::File,
        buf: FrameBuffer,
        limit: FrameLimit,
        tid: i32,
        worker: std::thread::JoinHandle<Stop>,
        next_id: u64,
    }

    impl Served {
        fn new(spin: SpinWindow) -> Served {
            let (ours, theirs) = UnixStream::pair().expect("pair");
            let (tid_tx, tid_rx) = std::sync::mpsc::channel();
            let worker = std::thread::spawn(move || {
                let mut conn = Conn::new(theirs).expect("conn");
                conn.spin = spin;
                tid_tx.send(nix::unistd::gettid().as_raw()).expect("tid");
                serve(conn.shared(), &mut Quick)
            });
            let limit = FrameLimit::new(u64::from(WORKER_MAX_FRAME_BYTES)).expect("limit");
            Served {
                loongd: std::fs::File::from(std::os::fd::OwnedFd::from(ours)),
                buf: FrameBuffer::new(limit),
                limit,
                tid: tid_rx.recv().expect("tid"),
                worker,
                next_id: 0,
            }
        }

        /// Sends a call saying whether the machine has CPUs to spare, and reads its answer.
        fn call(&mut self, cpus_to_spare: bool) {
            self.next_id += 1;
            let call = Call::Request {
                id: self.next_id,
                deadline_ms: 10_000,
                body: WorkerRequest::Invoke {
                    plugin_id: "echo".into(),
                    input: b"{}".to_vec(),
                    decided: None,
                    headers: Vec::new(),
                    cpus_to_spare,
                },
            };
            let mut out = Vec::new();
            frame::encode(&call, self.limit, &mut out).expect("encode");
            self.loongd.write_all(&out).expect("request");
            let body = loop {
                if let Some(body) = self.buf.next_body().expect("frame") {
                    break body;
                }
                let loongd = &mut self.loongd;
                self.buf
                    .fill(|space| loongd.read(space))
                    .expect("fill")
                    .expect("read");
            };
            let reply: Reply<WorkerResponse> = frame::decode_body(&body).expect("reply");
            assert!(
                matches!(reply, Reply::Response { id, result: Ok(_) } if id == self.next_id),
                "{reply:?}"
            );
        }

        fn close(self) {
            drop(self.loongd);
            let stop = self.worker.join().expect("worker");
            assert!(matches!(stop, Stop::Closed), "{stop:?}");
        }
    }

    /// After answering a call that says the machine has CPUs to spare, a worker polls for
    /// the next request: a request within its window finds it awake (it is running between
    /// the two calls and sleeps not once). Told that the machine has none, it sleeps at
    /// once, whatever its window. (Its sleeps are not counted for that case: it may fall
    /// asleep before the count is read and wake for the second call after, one sleep each
    /// side of the counts; its state between the calls is what tells.)
    #[test]
    fn a_worker_told_there_are_cpus_to_spare_finds_the_next_request_awake() {
        use loong_ipc::test_support::{asleep, sleeps};
        for spare in [true, false] {
            let mut served = Served::new(SpinWindow::fixed(Duration::from_secs(3)));
            served.call(spare);
            let before = sleeps(served.tid);
            std::thread::sleep(Duration::from_millis(20));
            let slept = if spare {
                asleep(served.tid)
            } else {
                // A loaded machine may take a while to put it to sleep: up to a second.
                (0..100).any(|_| {
                    asleep(served.tid) || {
                        std::thread::sleep(Duration::from_millis(10));
                        false
                    }
                })
            };
            served.call(spare);
            let after = sleeps(served.tid);
            served.close();
            assert_eq!(
                slept, !spare,
                "the worker's state between two calls (CPUs to spare: {spare})"
            );
            if spare {
                assert_eq!(after, before, "the worker slept between two calls");
            }
        }
    }

    /// A worker whose window grew with requests that came at once, then goes quiet, is
    /// asleep well before long: the spin is bounded (SPIN_MAX). The control: a window that
    /// outlasts the quiet keeps it awake at the same point.
    #[test]
    fn a_quiet_worker_is_asleep_within_the_spin_bound() {
        let probe = Duration::from_millis(200);
        for (spin, asleep) in [
            (SpinWindow::default(), true),
            (SpinWindow::fixed(Duration::from_secs(2)), false),
        ] {
            let mut served = Served::new(spin);
            for _ in 0..20 {
                served.call(true);
            }
            std::thread::sleep(probe);
            let slept = loong_ipc::test_support::asleep(served.tid);
            served.close();
            assert_eq!(slept, asleep, "asleep {probe:?} after the last call");
        }
    }
}
