//! One foreign program, run as a child of the stdio worker inside the worker's own sandbox,
//! and spoken to over its stdin and stdout: JSON lines (`process_stdio`) or MCP
//! (`mcp_stdio`, JSON-RPC 2.0, one message per line).
//!
//! The program is never trusted: every line it writes is bounded ([`PeerSpec::max_line_bytes`]),
//! parsed, and matched to the call waiting for it; every call has a deadline; its stderr is
//! kept up to [`MAX_STDERR_BYTES`]. A malformed line, an oversized line, an answer to another
//! id, silence past the deadline or an exit mid-call fails that call with a typed
//! [`PeerError`], and the program is killed; the next call starts it afresh.

/// The proxy variables a sandbox with a network grant carries, passed on to the program.
const PROXY_ENV: [&str; 8] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

use std::{
    collections::VecDeque,
    io::{self, Read, Write},
    os::fd::AsFd,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use loong_ipc::schema::{check_input_schema, MAX_INPUT_SCHEMAS_TOTAL_BYTES};
use loong_ipc::{
    message::worker::{MAX_LOG_LINES, MAX_LOG_LINE_BYTES, MAX_TOOLS, MAX_TOOL_NAME_BYTES},
    FailureKind, InvokeTool, KernelRequest, PeerProtocol, PeerSpec, PluginFailure, ToolInfo,
};
use loong_worker_runtime::KernelLink;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::{json, Value};

/// Bytes of the program's stderr kept (the most recent ones).
pub const MAX_STDERR_BYTES: usize = 64 * 1024;
/// Bytes of stderr quoted in a failure message.
pub const STDERR_QUOTE_BYTES: usize = 1024;
/// How long a program has to start and (MCP) finish its handshake and tool listing.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Messages a program may send during one call besides the answer (MCP notifications,
/// its own requests); past this the call fails as a flood.
pub const MAX_MESSAGES_PER_CALL: usize = 1024;
/// Pages of `tools/list` followed.
pub const MAX_TOOL_PAGES: usize = 16;
/// The JSON-lines protocol version spoken (`version` in each frame).
pub const JSON_LINES_VERSION: u64 = 1;
/// The MCP protocol version asked for.
pub const MCP_PROTOCOL_VERSION: &str = "2025-06-18";
/// `PATH` given to the program.
pub const PEER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Bytes read from the program per read(2).
const READ_CHUNK: usize = 64 * 1024;
/// Bytes of a tool's own error text kept in a failure.
pub const MAX_TOOL_ERROR_BYTES: usize = 2048;
/// Bytes of a malformed line quoted in a failure.
pub const MALFORMED_QUOTE_BYTES: usize = 120;
/// How long an ended program has to be reaped and to finish its stderr before its exit is
/// reported.
pub const EXIT_GRACE: Duration = Duration::from_millis(200);
/// How long the cancellation of a request past its deadline may take to send.
pub const CANCEL_SEND_TIMEOUT: Duration = Duration::from_millis(100);
/// `tool.call` requests a JSON-lines program may make during one call; past this the call
/// fails as a flood.
pub const MAX_TOOL_CALLS_PER_CALL: usize = 64;
/// How often an ending program is polled.
const REAP_POLL: Duration = Duration::from_millis(2);

/// Why a call to the program failed. The program is killed after each, except
/// [`PeerError::Tool`] and [`PeerError::UnknownTool`], which are well-formed answers.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("the program could not be started: {0}")]
    Start(String),
    #[error("no answer within {0} ms")]
    Timeout(u128),
    #[error("a line over {0} bytes")]
    LineTooLarge(u64),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("an answer for id {got}, while call {want} was waiting")]
    WrongId { got: String, want: u64 },
    #[error("the program exited during the call ({0})")]
    Exited(String),
    #[error("the output is {len} bytes, over the {max}-byte limit")]
    OutputTooLarge { len: usize, max: u64 },
    #[error("the tool reported an error: {0}")]
    Tool(String),
    #[error("no tool named {0:?}")]
    UnknownTool(String),
    #[error("the input is not a JSON object of arguments: {0}")]
    BadInput(String),
}

impl PeerError {
    fn kind(&self) -> FailureKind {
        match self {
            PeerError::Start(_) => FailureKind::PeerStartFailed,
            PeerError::Timeout(_) => FailureKind::Timeout,
            PeerError::LineTooLarge(_) => FailureKind::PeerLineTooLarge,
            PeerError::Malformed(_) => FailureKind::PeerMalformed,
            PeerError::WrongId { .. } => FailureKind::PeerWrongId,
            PeerError::Exited(_) => FailureKind::PeerExited,
            PeerError::OutputTooLarge { .. } => FailureKind::OutputTooLarge,
            PeerError::Tool(_) => FailureKind::ToolError,
            PeerError::UnknownTool(_) => FailureKind::UnknownTool,
            PeerError::BadInput(_) => FailureKind::ToolError,
        }
    }

    /// Whether the program may be used again after this error.
    fn keeps_program(&self) -> bool {
        matches!(
            self,
            PeerError::Tool(_) | PeerError::UnknownTool(_) | PeerError::BadInput(_)
        )
    }
}

/// The most recent stderr bytes of the program.
#[derive(Debug, Default)]
struct StderrLog {
    kept: VecDeque<u8>,
    /// Bytes written in all.
    total: u64,
    /// The program's stderr reached its end (everything it wrote is here).
    closed: bool,
}

type SharedLog = Arc<Mutex<StderrLog>>;

fn lock(log: &SharedLog) -> std::sync::MutexGuard<'_, StderrLog> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StderrLog {
    fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        self.kept.extend(bytes);
        let over = self.kept.len().saturating_sub(MAX_STDERR_BYTES);
        self.kept.drain(..over);
    }

    /// The bytes written since `mark` (a past `total`) that are still kept.
    fn since(&self, mark: u64) -> Vec<u8> {
        let new = usize::try_from(self.total - mark).unwrap_or(usize::MAX);
        let start = self.kept.len().saturating_sub(new);
        self.kept.range(start..).copied().collect()
    }
}

/// A running program.
#[derive(Debug)]
struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: LineReader,
    stderr: SharedLog,
}

impl Running {
    fn start(spec: &PeerSpec) -> Result<Running, PeerError> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(&spec.command)
            .args(&spec.args)
            .current_dir(&spec.cwd)
            .env_clear()
            .env("PATH", PEER_PATH)
            .env("HOME", &spec.cwd)
            .env("LANG", "C.UTF-8")
            // The egress proxy's variables, which the sandbox set for a network grant (nothing
            // else of the worker's environment passes).
            .envs(
                PROXY_ENV
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that whatever it starts is killed with it.
            .process_group(0)
            .spawn()
            .map_err(|e| PeerError::Start(start_failure(spec, &e)))?;
        let (Some(stdin), Some(stdout), Some(mut err)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(PeerError::Start("its pipes were not set up".into()));
        };
        set_nonblocking(&stdin).map_err(|e| PeerError::Start(format!("stdin: {e}")))?;
        let stderr = SharedLog::default();
        let log = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                lock(&log).push(&buf[..n]);
            }
            lock(&log).closed = true;
        });
        Ok(Running {
            child,
            stdin,
            lines: LineReader::new(stdout, spec.max_line_bytes),
            stderr,
        })
    }

    /// Writes one line (a newline is added) by `deadline`.
    fn send(&mut self, msg: &Value, deadline: Instant) -> Result<(), PeerError> {
        let mut line = serde_json::to_vec(msg).map_err(|e| PeerError::BadInput(e.to_string()))?;
        line.push(b'\n');
        let mut rest = &line[..];
        while !rest.is_empty() {
            match self.stdin.write(rest) {
                Ok(0) => return Err(self.exited()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_for(self.stdin.as_fd(), PollFlags::POLLOUT, deadline)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(self.exited()),
            }
        }
        Ok(())
    }

    /// The next line, parsed as JSON.
    fn receive(&mut self, deadline: Instant) -> Result<Value, PeerError> {
        match self.lines.next_line(deadline) {
            Ok(line) => serde_json::from_slice(&line).map_err(|e| {
                let shown = String::from_utf8_lossy(&line[..line.len().min(MALFORMED_QUOTE_BYTES)])
                    .into_owned();
                PeerError::Malformed(format!("{e} in {shown:?}"))
            }),
            Err(LineError::Eof) => Err(self.exited()),
            Err(LineError::TooLarge(max)) => Err(PeerError::LineTooLarge(max)),
            Err(LineError::Timeout(ms)) => Err(PeerError::Timeout(ms)),
            Err(LineError::Io(e)) => Err(PeerError::Malformed(format!("reading: {e}"))),
        }
    }

    /// The program's end, as an error: its status once it is reaped, with its last stderr.
    fn exited(&mut self) -> PeerError {
        // Its stdout closed; give it a moment to be reaped and its stderr to be read.
        let until = Instant::now() + EXIT_GRACE;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s.to_string(),
                Ok(None) if Instant::now() < until => {
                    std::thread::sleep(REAP_POLL);
                }
                _ => break "its stdout closed".into(),
            }
        };
        // Its last words: the stderr reader reaches the end once the program is gone.
        while !lock(&self.stderr).closed && Instant::now() < until {
            std::thread::sleep(REAP_POLL);
        }
        let tail = self.stderr_tail();
        if tail.is_empty() {
            PeerError::Exited(status)
        } else {
            PeerError::Exited(format!("{status}; stderr ends: {tail}"))
        }
    }

    fn stderr_tail(&self) -> String {
        let log = lock(&self.stderr);
        let mark = log.total.saturating_sub(STDERR_QUOTE_BYTES as u64);
        String::from_utf8_lossy(&log.since(mark)).trim().to_string()
    }

    fn kill(mut self) {
        let pgid = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Everything it started, including what left its process group and session: the
        // worker is their subreaper, so they are its children by now or once their parent
        // dies.
        loong_worker_runtime::descendants::end_descendants();
    }
}

/// Why the program could not be started, naming the path at fault: a spawn reports only
/// an errno (`Permission denied`), which reads as if the program itself were unreadable when
/// it is often the working directory (a granted directory) that the sandbox's uid cannot
/// enter.
fn start_failure(spec: &PeerSpec, e: &io::Error) -> String {
    use nix::unistd::AccessFlags;
    let cwd = std::path::Path::new(&spec.cwd);
    let command = std::path::Path::new(&spec.command);
    let checks = [
        (
            cwd,
            AccessFlags::R_OK | AccessFlags::X_OK,
            "the working directory",
        ),
        (command, AccessFlags::X_OK, "the program"),
    ];
    for (path, need, role) in checks {
        if let Some(why) = inaccessible(path, need) {
            return format!("{}: {e}: {role} {why}", spec.command);
        }
    }
    format!("{}: {e}", spec.command)
}

/// The first component of `path` (an absolute path) that this process cannot use: every
/// ancestor must be searchable, and `path` itself allow `need`. Names the component, its
/// mode and owner, and the uid asking; `None` when everything is reachable.
fn inaccessible(path: &std::path::Path, need: nix::unistd::AccessFlags) -> Option<String> {
    use nix::unistd::{access, AccessFlags};
    use std::os::unix::fs::MetadataExt;
    // `access` answers for the real uid, the one the sandbox gave this worker and its
    // program.
    let uid = nix::unistd::getuid();
    let ancestors: Vec<&std::path::Path> = path.ancestors().collect();
    for (i, p) in ancestors.iter().rev().enumerate() {
        let last = i + 1 == ancestors.len();
        let flags = if last { need } else { AccessFlags::X_OK };
        if access(*p, flags).is_ok() {
            continue;
        }
        let shown = match std::fs::metadata(p) {
            Ok(m) => format!(
                "(mode {:04o}, owner uid {} gid {})",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ),
            Err(e) => format!("({e})"),
        };
        return Some(if last {
            format!(
                "{} {shown} cannot be used by the sandbox's uid {uid}: make it readable and \
                 searchable for that uid (for example chmod o+rx) or grant a path it can read",
                p.display()
            )
        } else {
            format!(
                "{} lies under {} {shown}, which the sandbox's uid {uid} cannot search: make \
                 that directory searchable for that uid (for example chmod o+x) or grant a \
                 path outside it",
                path.display(),
                p.display()
            )
        });
    }
    None
}

fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let raw = fd.as_fd().as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(raw, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    Ok(())
}

/// Waits until `fd` is ready for `what`, or fails with a timeout at `deadline`.
fn wait_for(
    fd: std::os::fd::BorrowedFd<'_>,
    what: PollFlags,
    deadline: Instant,
) -> Result<(), PeerError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, what)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) if Instant::now() >= deadline => {
                return Err(PeerError::Timeout(left.as_millis()));
            }
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => return Ok(()),
            Err(e) => return Err(PeerError::Malformed(format!("poll: {e}"))),
        }
    }
}

#[derive(Debug)]
enum LineError {
    Eof,
    TooLarge(u64),
    Timeout(u128),
    Io(io::Error),
}

/// Newline-delimited reading with a bound on each line.
#[derive(Debug)]
struct LineReader {
    src: ChildStdout,
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    max: u64,
}

impl LineReader {
    fn new(src: ChildStdout, max: u64) -> LineReader {
        LineReader {
            src,
            buf: Vec::new(),
            scanned: 0,
            max,
        }
    }

    fn next_line(&mut self, deadline: Instant) -> Result<Vec<u8>, LineError> {
        let started = Instant::now();
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                self.scanned = 0;
                if line.len() as u64 > self.max {
                    return Err(LineError::TooLarge(self.max));
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(line);
            }
            self.scanned = self.buf.len();
            if self.buf.len() as u64 > self.max {
                return Err(LineError::TooLarge(self.max));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.src.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) if Instant::now() >= deadline => {
                    return Err(LineError::Timeout(started.elapsed().as_millis()))
                }
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(LineError::Io(e.into())),
            }
            let len = self.buf.len();
            self.buf.resize(len + READ_CHUNK, 0);
            let read = self.src.read(&mut self.buf[len..]);
            self.buf.truncate(len + *read.as_ref().unwrap_or(&0));
            match read {
                // poll said readable and nothing came: the end of the stream.
                Ok(0) => return Err(LineError::Eof),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LineError::Io(e)),
            }
        }
    }
}

/// What one successful call produced.
#[derive(Debug)]
pub struct Answer {
    /// The output, as JSON text.
    pub output: Vec<u8>,
    /// Lines the program wrote to stderr during the call (bounded).
    pub logs: Vec<String>,
    pub logs_dropped: u32,
    /// CPU the program used during the call, µs (from its `/proc` entry; 0 if unreadable).
    pub cpu_us: u64,
    /// The program's peak resident memory so far, bytes (`VmHWM`).
    pub peak_memory_bytes: u64,
}

/// The program's CPU time so far, µs (`utime + stime` of `/proc/PID/stat`).
fn proc_cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(100);
    Some(ticks * 1_000_000 / hz)
}

/// The program's peak resident memory, bytes (`VmHWM` of `/proc/PID/status`).
fn proc_peak_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The worker's program: started on [`Peer::start`], restarted after any failure that
/// leaves it untrusted.
#[derive(Debug)]
pub struct Peer {
    spec: PeerSpec,
    running: Option<Running>,
    tools: Vec<ToolInfo>,
    next_id: u64,
}

impl Peer {
    pub fn new(spec: PeerSpec) -> Peer {
        Peer {
            spec,
            running: None,
            tools: Vec::new(),
            next_id: 0,
        }
    }

    /// The plugin this program serves.
    pub fn plugin_id(&self) -> &str {
        &self.spec.plugin_id
    }

    /// Starts the program (MCP: handshake and tool listing) and returns its tools.
    pub fn start(&mut self) -> Result<Vec<ToolInfo>, PluginFailure> {
        self.stop();
        self.ensure_running().map_err(|e| self.failure(&e))?;
        Ok(self.tools.clone())
    }

    fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.kill();
        }
    }

    fn ensure_running(&mut self) -> Result<(), PeerError> {
        if self.running.is_some() {
            return Ok(());
        }
        let mut running = Running::start(&self.spec)?;
        let tools = match self.spec.protocol {
            PeerProtocol::JsonLines => Ok(vec![ToolInfo {
                name: self.spec.plugin_id.clone(),
                description: String::new(),
                input_schema: None,
            }]),
            PeerProtocol::Mcp => self.mcp_handshake(&mut running),
        };
        match tools {
            Ok(tools) => {
                self.tools = tools;
                self.running = Some(running);
                Ok(())
            }
            Err(e) => {
                let e = match e {
                    PeerError::Start(_) => e,
                    other => {
                        PeerError::Start(format!("{other}{}", quote_stderr(&running.stderr_tail())))
                    }
                };
                running.kill();
                Err(e)
            }
        }
    }

    /// Calls `tool` with `input` (JSON text).
    pub fn call(&mut self, tool: &str, input: &[u8]) -> Result<Answer, PluginFailure> {
        self.call_with(tool, input, None)
    }

    /// Calls `tool` with `input` (JSON text); a JSON-lines program's `tool.call` requests
    /// go to loongd on `kernel` (without one, each is answered `denied`).
    pub fn call_with(
        &mut self,
        tool: &str,
        input: &[u8],
        kernel: Option<&mut KernelLink>,
    ) -> Result<Answer, PluginFailure> {
        let result = self.try_call(tool, input, kernel);
        result.map_err(|e| {
            let failure = self.failure(&e);
            if !e.keeps_program() {
                self.stop();
            }
            failure
        })
    }

    fn failure(&self, e: &PeerError) -> PluginFailure {
        PluginFailure::new(e.kind(), format!("plugin {}: {e}", self.spec.plugin_id))
    }

    fn try_call(
        &mut self,
        tool: &str,
        input: &[u8],
        kernel: Option<&mut KernelLink>,
    ) -> Result<Answer, PeerError> {
        let input: Value =
            serde_json::from_slice(input).map_err(|e| PeerError::BadInput(e.to_string()))?;
        self.ensure_running()?;
        if !self.tools.iter().any(|t| t.name == tool) {
            return Err(PeerError::UnknownTool(tool.to_string()));
        }
        self.next_id += 1;
        let id = self.next_id;
        let deadline = Instant::now() + Duration::from_millis(self.spec.timeout_ms);
        let protocol = self.spec.protocol;
        let max_output = self.spec.max_output_bytes;
        let running = self
            .running
            .as_mut()
            .ok_or(PeerError::Exited("the program is not running".into()))?;
        let mark = lock(&running.stderr).total;
        let pid = running.child.id();
        // Orphans of the program that ended since the last call, held by the worker as
        // their subreaper.
        loong_worker_runtime::descendants::reap_ended(Some(pid));
        let cpu_before = proc_cpu_us(pid);
        let output = match protocol {
            PeerProtocol::JsonLines => json_lines_call(running, id, input, deadline, kernel)?,
            PeerProtocol::Mcp => mcp_call(running, id, tool, input, deadline)?,
        };
        let output =
            serde_json::to_vec(&output).map_err(|e| PeerError::Malformed(e.to_string()))?;
        if output.len() as u64 > max_output {
            return Err(PeerError::OutputTooLarge {
                len: output.len(),
                max: max_output,
            });
        }
        let (logs, logs_dropped) = stderr_lines(&lock(&running.stderr).since(mark));
        let cpu_us = match (cpu_before, proc_cpu_us(pid)) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        Ok(Answer {
            output,
            logs,
            logs_dropped,
            cpu_us,
            peak_memory_bytes: proc_peak_bytes(pid).unwrap_or(0),
        })
    }

    /// `initialize`, `notifications/initialized`, then `tools/list` (following cursors).
    fn mcp_handshake(&mut self, running: &mut Running) -> Result<Vec<ToolInfo>, PeerError> {
        let deadline = Instant::now() + START_TIMEOUT;
        self.next_id += 1;
        let init = json!({
            "protocolVersion": MCP_PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "loong", "version": env!("CARGO_PKG_VERSION")},
        });
        let answer = mcp_request(running, self.next_id, "initialize", init, deadline)?;
        if answer
            .get("protocolVersion")
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(PeerError::Malformed(
                "the initialize result has no protocolVersion".into(),
            ));
        }
        running.send(
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            deadline,
        )?;
        let mut listing = ToolListing::default();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_TOOL_PAGES {
            self.next_id += 1;
            let params = match &cursor {
                Some(c) => json!({ "cursor": c }),
                None => json!({}),
            };
            let page = mcp_request(running, self.next_id, "tools/list", params, deadline)?;
            cursor = listing.add_page(&page)?;
            if cursor.is_none() {
                break;
            }
        }
        Ok(listing.tools)
    }
}

/// The tools of an MCP server's `tools/list` pages as they arrive. A server names each tool
/// once and hands out each cursor once: a name listed twice (on one page or across pages) or
/// a cursor that repeats refuses the whole listing, naming it, so the plugin's load fails
/// with the reason rather than serving copies of one tool.
#[derive(Debug, Default)]
struct ToolListing {
    tools: Vec<ToolInfo>,
    names: std::collections::HashSet<String>,
    cursors: std::collections::HashSet<String>,
    /// The bytes of the input schemas kept so far.
    schema_bytes: usize,
}

impl ToolListing {
    /// Adds one page; returns the cursor of the next one, if any.
    fn add_page(&mut self, page: &Value) -> Result<Option<String>, PeerError> {
        let listed = page
            .get("tools")
            .and_then(Value::as_array)
            .ok_or_else(|| PeerError::Malformed("tools/list has no tools array".into()))?;
        for t in listed {
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| valid_tool_name(n))
                .ok_or_else(|| {
                    PeerError::Malformed(format!(
                        "a tool name must be 1 to {MAX_TOOL_NAME_BYTES} of A-Z a-z 0-9 _ - ."
                    ))
                })?;
            if self.tools.len() == MAX_TOOLS {
                return Err(PeerError::Malformed(format!("more than {MAX_TOOLS} tools")));
            }
            if !self.names.insert(name.to_string()) {
                return Err(PeerError::Malformed(format!(
                    "tools/list names the tool {name:?} more than once; a server lists each \
                     tool once"
                )));
            }
            let description = t
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let input_schema = match t.get("inputSchema") {
                None | Some(Value::Null) => None,
                Some(schema) => Some(check_input_schema(schema).map_err(|e| {
                    PeerError::Malformed(format!("tools/list: the tool {name:?}: {e}"))
                })?),
            };
            self.schema_bytes += input_schema.as_ref().map_or(0, String::len);
            if self.schema_bytes > MAX_INPUT_SCHEMAS_TOTAL_BYTES {
                return Err(PeerError::Malformed(format!(
                    "tools/list: the input schemas are over {MAX_INPUT_SCHEMAS_TOTAL_BYTES} bytes in all"
                )));
            }
            self.tools.push(ToolInfo {
                name: name.to_string(),
                description: cut(
                    description,
                    loong_ipc::message::worker::MAX_TOOL_DESCRIPTION_BYTES,
                ),
                input_schema,
            });
        }
        let Some(cursor) = page.get("nextCursor").and_then(Value::as_str) else {
            return Ok(None);
        };
        if !self.cursors.insert(cursor.to_string()) {
            let shown = cut(cursor, MALFORMED_QUOTE_BYTES);
            return Err(PeerError::Malformed(format!(
                "tools/list handed out the cursor {shown:?} twice; a server's cursors must \
                 move on"
            )));
        }
        Ok(Some(cursor.to_string()))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tool name as Loong names it (`PLUGIN_ID/NAME`): no slash, no space, no control bytes.
pub fn valid_tool_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_TOOL_NAME_BYTES
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn quote_stderr(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; stderr ends: {tail}")
    }
}

/// Splits stderr bytes into at most [`MAX_LOG_LINES`] lines of [`MAX_LOG_LINE_BYTES`].
fn stderr_lines(bytes: &[u8]) -> (Vec<String>, u32) {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let dropped = all.len().saturating_sub(MAX_LOG_LINES);
    let logs = all
        .into_iter()
        .take(MAX_LOG_LINES)
        .map(|l| cut(l, MAX_LOG_LINE_BYTES))
        .collect();
    (logs, u32::try_from(dropped).unwrap_or(u32::MAX))
}

/// One JSON-lines exchange: `{method, id, payload, version}` out, the frame with the same id
/// back, whose `payload` is the output (or whose `error` is the tool's failure). Before it,
/// the program may ask for tool calls (`tool.call`, see [`KernelCalls`]).
fn json_lines_call(
    running: &mut Running,
    id: u64,
    input: Value,
    deadline: Instant,
    kernel: Option<&mut KernelLink>,
) -> Result<Value, PeerError> {
    let want = id.to_string();
    running.send(
        &json!({"method": "tools/call", "id": want, "payload": input, "version": JSON_LINES_VERSION}),
        deadline,
    )?;
    let mut calls = KernelCalls::new(kernel);
    let frame = loop {
        let frame = running.receive(deadline)?;
        #[cfg(debug_assertions)]
        if let Some(answer) = calls.test_show_text(&frame, deadline) {
            running.send(&answer, deadline)?;
            continue;
        }
        match calls.take(&frame)? {
            None => break frame,
            Some((cid, tool, input)) => {
                let answer = calls.run(cid, &tool, &input, deadline)?;
                running.send(&answer, deadline)?;
            }
        }
    };
    let obj = frame
        .as_object()
        .ok_or_else(|| PeerError::Malformed("a frame must be a JSON object".into()))?;
    let got = match obj.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(PeerError::Malformed("the frame has no id".into())),
    };
    if got != want {
        return Err(PeerError::WrongId { got, want: id });
    }
    if let Some(v) = obj.get("version") {
        if v.as_u64().is_none_or(|v| v > JSON_LINES_VERSION) {
            return Err(PeerError::Malformed(format!(
                "version {v}, this bridge speaks {JSON_LINES_VERSION}"
            )));
        }
    }
    if let Some(e) = obj.get("error") {
        let msg = e
            .get("message")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| e.to_string());
        return Err(PeerError::Tool(cut(&msg, MAX_TOOL_ERROR_BYTES)));
    }
    obj.get("payload")
        .cloned()
        .ok_or_else(|| PeerError::Malformed("the frame has neither payload nor error".into()))
}

/// A JSON-lines program's tool calls during one call: while it serves the call, it may write
/// `{"method": "tool.call", "id": N, "payload": {"tool": T, "input": I}}`; the worker asks
/// loongd (a kernel call, decided under the chain's authority) and writes back
/// `{"id": N, "payload": RESULT}` or `{"id": N, "error": {"kind": K, "message": M}}`, `K`
/// being `denied`, `failed` or `budget_exceeded`. A frame with another field, an id used
/// before in this call, or more than [`MAX_TOOL_CALLS_PER_CALL`] requests fails the call
/// (and only it). A call's deadline keeps running while a tool call waits.
struct KernelCalls<'k> {
    kernel: Option<&'k mut KernelLink>,
    seen: std::collections::BTreeSet<String>,
}

impl<'k> KernelCalls<'k> {
    fn new(kernel: Option<&'k mut KernelLink>) -> KernelCalls<'k> {
        KernelCalls {
            kernel,
            seen: std::collections::BTreeSet::new(),
        }
    }

    /// Test builds only: `{"method": "test.show_text", "id": N, "payload": {"text": T}}`
    /// makes the worker send the kernel call `show_text` (which only the agent's turn may
    /// send), as a compromised worker would; the answer is `{"id": N, "payload": "shown"}` or
    /// the refusal (`tests/all/kernel_calls.rs`). A release worker has no such method: the
    /// frame is then taken as the call's answer, and refused as one.
    #[cfg(debug_assertions)]
    fn test_show_text(&mut self, frame: &Value, deadline: Instant) -> Option<Value> {
        if frame.get("method").and_then(Value::as_str) != Some("test.show_text") {
            return None;
        }
        let id = frame.get("id").cloned().unwrap_or(Value::Null);
        let text = frame
            .pointer("/payload/text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let kernel = self.kernel.as_deref_mut()?;
        let req = KernelRequest::ShowText(loong_ipc::ShowText { text });
        let left = deadline.saturating_duration_since(Instant::now());
        Some(match kernel.call(&req, left) {
            Ok(_) => json!({"id": id, "payload": "shown"}),
            Err(e) => json!({"id": id, "error": {"kind": e.kind_name(), "message": e.message()}}),
        })
    }

    /// The request a frame is, as `(id, tool, input)`; `None` for any frame that is not a
    /// `tool.call` (the call's answer); a malformed request fails the call.
    fn take(&mut self, frame: &Value) -> Result<Option<(Value, String, String)>, PeerError> {
        let Some(obj) = frame.as_object() else {
            return Ok(None);
        };
        if obj.get("method").and_then(Value::as_str) != Some("tool.call") {
            return Ok(None);
        }
        let bad = |why: String| Err(PeerError::Malformed(format!("tool.call: {why}")));
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "method" | "id" | "payload"))
        {
            return bad(format!(
                "unknown field {k:?}; a request has method, id and payload"
            ));
        }
        let id = match obj.get("id") {
            Some(v @ (Value::Number(_) | Value::String(_))) => v.clone(),
            _ => return bad("the request has no id (a number or a string)".into()),
        };
        if self.seen.len() >= MAX_TOOL_CALLS_PER_CALL {
            return bad(format!(
                "more than {MAX_TOOL_CALLS_PER_CALL} tool calls during one call"
            ));
        }
        if !self.seen.insert(id.to_string()) {
            return bad(format!(
                "id {id} was used before in this call; use a new id"
            ));
        }
        let Some(payload) = obj.get("payload").and_then(Value::as_object) else {
            return bad("the payload must be an object {tool, input}".into());
        };
        if let Some(k) = payload
            .keys()
            .find(|k| !matches!(k.as_str(), "tool" | "input"))
        {
            return bad(format!(
                "unknown payload field {k:?}; the payload has tool and input"
            ));
        }
        let Some(tool) = payload.get("tool").and_then(Value::as_str) else {
            return bad("the payload names no tool (a string)".into());
        };
        let input = payload.get("input").cloned().unwrap_or(Value::Null);
        let input =
            serde_json::to_string(&input).map_err(|e| PeerError::Malformed(e.to_string()))?;
        Ok(Some((id, tool.to_string(), input)))
    }

    /// Runs one tool call; the frame to write back. Its deadline is the call's.
    fn run(
        &mut self,
        id: Value,
        tool: &str,
        input: &str,
        deadline: Instant,
    ) -> Result<Value, PeerError> {
        let error = |kind: &str, message: String| json!({"id": id, "error": {"kind": kind, "message": cut(&message, MAX_TOOL_ERROR_BYTES)}});
        let Some(kernel) = self.kernel.as_deref_mut() else {
            return Ok(error(
                "denied",
                "this call has no kernel link: tools cannot be called from it".into(),
            ));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let req = KernelRequest::InvokeTool(InvokeTool {
            tool: tool.to_string(),
            input: input.to_string(),
        });
        match kernel.call(&req, left) {
            Ok(out) => {
                let result: Value = serde_json::from_slice(&out)
                    .map_err(|e| PeerError::Malformed(format!("tool {tool}'s output: {e}")))?;
                Ok(json!({"id": id, "payload": result}))
            }
            // The call's own deadline passed while the tool ran.
            Err(e) if e.kind_name() == "timeout" => Err(PeerError::Timeout(left.as_millis())),
            Err(e) => Ok(error(e.kind_name(), e.message())),
        }
    }
}

/// `tools/call`; an `isError` result is the tool's failure. At the deadline the server is
/// told the request is cancelled (it is then killed by the caller).
fn mcp_call(
    running: &mut Running,
    id: u64,
    tool: &str,
    input: Value,
    deadline: Instant,
) -> Result<Value, PeerError> {
    if !input.is_object() {
        return Err(PeerError::BadInput(
            "MCP tools take an object of named arguments".into(),
        ));
    }
    let params = json!({"name": tool, "arguments": input});
    let result = match mcp_request(running, id, "tools/call", params, deadline) {
        Err(PeerError::Timeout(ms)) => {
            let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": id, "reason": "deadline passed"}});
            let _ = running.send(&cancel, Instant::now() + CANCEL_SEND_TIMEOUT);
            return Err(PeerError::Timeout(ms));
        }
        other => other?,
    };
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        let text: Vec<&str> = result
            .get("content")
            .and_then(Value::as_array)
            .map(|c| {
                c.iter()
                    .filter_map(|item| item.get("text").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        return Err(PeerError::Tool(cut(&text.join("\n"), MAX_TOOL_ERROR_BYTES)));
    }
    Ok(result)
}

/// Sends a JSON-RPC request and waits for its response, answering the server's own requests
/// (a `ping`; anything else is "method not found") and skipping its notifications.
fn mcp_request(
    running: &mut Running,
    id: u64,
    method: &str,
    params: Value,
    deadline: Instant,
) -> Result<Value, PeerError> {
    running.send(
        &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        deadline,
    )?;
    for _ in 0..MAX_MESSAGES_PER_CALL {
        let msg = running.receive(deadline)?;
        let obj = msg
            .as_object()
            .ok_or_else(|| PeerError::Malformed("a JSON-RPC message must be an object".into()))?;
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(PeerError::Malformed("not JSON-RPC 2.0".into()));
        }
        match (obj.get("id"), obj.get("method")) {
            // The server's own request.
            (Some(their), Some(m)) => {
                let reply = if m.as_str() == Some("ping") {
                    json!({"jsonrpc": "2.0", "id": their, "result": {}})
                } else {
                    json!({"jsonrpc": "2.0", "id": their,
                        "error": {"code": -32601, "message": "method not found"}})
                };
                running.send(&reply, deadline)?;
            }
            // A notification (logging, progress, list changes).
            (None, Some(_)) => {}
            (Some(got), None) => {
                if got.as_u64() != Some(id) {
                    return Err(PeerError::WrongId {
                        got: got.to_string(),
                        want: id,
                    });
                }
                if let Some(e) = obj.get("error") {
                    let msg = e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("no message");
                    return Err(PeerError::Tool(format!(
                        "{method}: {}",
                        cut(msg, MAX_TOOL_ERROR_BYTES)
                    )));
                }
                return obj
                    .get("result")
                    .cloned()
                    .ok_or_else(|| PeerError::Malformed("a response without a result".into()));
            }
            (None, None) => {
                return Err(PeerError::Malformed(
                    "a message with neither id nor method".into(),
                ))
            }
        }
    }
    Err(PeerError::Malformed(format!(
        "more than {MAX_MESSAGES_PER_CALL} messages without an answer"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_keeps_the_most_recent_bytes() {
        let mut log = StderrLog::default();
        log.push(&vec![b'a'; MAX_STDERR_BYTES]);
        let mark = log.total;
        log.push(b"late\n");
        assert_eq!(log.kept.len(), MAX_STDERR_BYTES);
        assert_eq!(log.since(mark), b"late\n");
        assert_eq!(log.total, MAX_STDERR_BYTES as u64 + 5);
    }

    #[test]
    fn tool_names_are_checked() {
        assert!(valid_tool_name("read_text_file"));
        assert!(valid_tool_name("get-current.time"));
        for bad in [
            "",
            "a/b",
            "a b",
            "a\nb",
            &"x".repeat(MAX_TOOL_NAME_BYTES + 1),
        ] {
            assert!(!valid_tool_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_tool_listed_twice_or_a_cursor_that_repeats_refuses_the_listing() {
        let tool = |n: &str| json!({"name": n, "description": "d"});
        // Control: distinct names over two pages, then the end.
        let mut ok = ToolListing::default();
        let next = ok
            .add_page(&json!({"tools": [tool("a"), tool("b")], "nextCursor": "p2"}))
            .expect("first page");
        assert_eq!(next.as_deref(), Some("p2"));
        assert_eq!(
            ok.add_page(&json!({"tools": [tool("c")]})).expect("last"),
            None
        );
        let names: Vec<&str> = ok.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);

        // The same name twice on one page.
        let err = ToolListing::default()
            .add_page(&json!({"tools": [tool("a"), tool("a")]}))
            .expect_err("duplicate on one page");
        assert!(
            err.to_string().contains(r#"the tool "a" more than once"#),
            "{err}"
        );

        // The same name on a later page.
        let mut l = ToolListing::default();
        l.add_page(&json!({"tools": [tool("a")], "nextCursor": "p2"}))
            .expect("first page");
        let err = l
            .add_page(&json!({"tools": [tool("a")], "nextCursor": "p3"}))
            .expect_err("duplicate across pages");
        assert!(
            err.to_string().contains(r#"the tool "a" more than once"#),
            "{err}"
        );

        // A cursor that comes back, even with new names on its page.
        let mut l = ToolListing::default();
        l.add_page(&json!({"tools": [tool("a")], "nextCursor": "again"}))
            .expect("first page");
        let err = l
            .add_page(&json!({"tools": [tool("b")], "nextCursor": "again"}))
            .expect_err("a repeated cursor");
        assert!(err.to_string().contains(r#"cursor "again" twice"#), "{err}");
    }

    #[test]
    fn a_tools_input_schema_is_kept_checked_and_a_bad_one_refuses_the_listing() {
        use loong_ipc::schema::MAX_INPUT_SCHEMA_BYTES;
        let schema = json!({"type": "object", "properties": {"q": {"type": "string"}}});
        // Control: a schema is kept as compact JSON; a tool without one has none.
        let mut ok = ToolListing::default();
        ok.add_page(&json!({"tools": [
            {"name": "a", "inputSchema": schema},
            {"name": "b"},
        ]}))
        .expect("a listing with schemas");
        assert_eq!(ok.tools[0].input_schema, Some(schema.to_string()));
        assert_eq!(ok.tools[1].input_schema, None);

        for (bad, says) in [
            (json!({"type": "string"}), "\"type\": \"object\""),
            (json!([1, 2]), "\"type\": \"object\""),
            (
                json!({"type": "object", "description": "x".repeat(MAX_INPUT_SCHEMA_BYTES)}),
                "byte limit",
            ),
        ] {
            let err = ToolListing::default()
                .add_page(&json!({"tools": [{"name": "t", "inputSchema": bad}]}))
                .expect_err("a bad schema");
            let err = err.to_string();
            assert!(
                err.contains("the tool \"t\"") && err.contains(says),
                "{err}"
            );
        }

        // Many schemas each within the bound, over the total, refuse the listing too.
        let big = json!({"type": "object", "description": "y".repeat(MAX_INPUT_SCHEMA_BYTES - 64)});
        let tools: Vec<Value> = (0..(MAX_INPUT_SCHEMAS_TOTAL_BYTES / MAX_INPUT_SCHEMA_BYTES + 1))
            .map(|n| json!({"name": format!("t{n}"), "inputSchema": big}))
            .collect();
        let err = ToolListing::default()
            .add_page(&json!({ "tools": tools }))
            .expect_err("over the total");
        assert!(err.to_string().contains("in all"), "{err}");
    }

    #[test]
    fn stderr_lines_are_bounded() {
        let many = "x\n".repeat(MAX_LOG_LINES + 3);
        let (logs, dropped) = stderr_lines(many.as_bytes());
        assert_eq!((logs.len(), dropped), (MAX_LOG_LINES, 3));
        let (logs, _) = stderr_lines("y".repeat(MAX_LOG_LINE_BYTES * 2).as_bytes());
        assert_eq!(logs[0].len(), MAX_LOG_LINE_BYTES);
    }
}
