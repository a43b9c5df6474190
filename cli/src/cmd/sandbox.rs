//! `loongctl sandbox run`: loongd spawns the program confined; loongctl relays stdio and
//! exits with the program's exit code (or 128 + the signal that killed it).

use std::{
    ffi::OsString,
    io::{Read, Write},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use loong_ipc::{
    client::{Client, Event, InputWriter},
    paths::Layout,
    ControlRequest, ControlResponse, RequestId, SandboxRunRequest, StreamChunk, INTERRUPTS_TO_KILL,
    MAX_CHUNK_BYTES,
};
use nix::sys::{
    signal::{SigSet, Signal},
    signalfd::{SfdFlags, SignalFd},
};

use crate::{start, start_with_input, Failure};

/// Added to `--timeout` for the request's own deadline, so loongd reports the timeout itself.
pub const DEADLINE_SLACK: Duration = Duration::from_secs(30);
/// The request deadline without `--timeout`.
pub const NO_TIMEOUT_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);

/// `loongctl sandbox …`.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Run PROGRAM in a sandbox of the given tier; stdio is relayed, and loongctl exits with
    /// the program's exit code, or 128 + the signal that killed it (159 for a seccomp kill).
    ///
    /// The sandbox lives only as long as loongctl: whatever ends loongctl (SIGTERM, SIGHUP,
    /// SIGKILL, a closed stdout) ends it too. Ctrl-C is passed to the program as SIGINT; a
    /// second Ctrl-C kills it (137), a third leaves at once (130).
    Run(RunArgs),
}

/// Arguments of `sandbox run` (also built by the fast parse, `crate::fast`).
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// restricted, balanced or trusted.
    #[arg(long)]
    pub(crate) tier: String,
    /// A path the program may read (same path inside the sandbox).
    #[arg(long = "read", value_name = "PATH")]
    pub(crate) read: Vec<PathBuf>,
    /// A path the program may read and write (same path inside the sandbox).
    #[arg(long = "write", value_name = "PATH")]
    pub(crate) write: Vec<PathBuf>,
    /// A TCP destination the program may connect to (balanced and trusted tiers).
    #[arg(long = "allow-net", value_name = "HOST:PORT")]
    pub(crate) allow_net: Vec<String>,
    /// Wall-clock limit in seconds.
    #[arg(long, value_name = "SECS")]
    pub(crate) timeout: Option<f64>,
    /// Memory limit in bytes (suffixes K, M, G allowed).
    #[arg(long, value_name = "BYTES")]
    pub(crate) memory: Option<String>,
    /// Process limit.
    #[arg(long, value_name = "N")]
    pub(crate) pids: Option<u64>,
    /// CPU-time limit in seconds (RLIMIT_CPU: SIGXCPU, exit 152).
    #[arg(long, value_name = "SECS")]
    pub(crate) cpu: Option<u64>,
    /// Pass this variable from loongctl's environment (the rest is cleared).
    #[arg(long = "env", value_name = "NAME")]
    pub(crate) env: Vec<String>,
    /// Run even where this host cannot fully enforce the tier (logged and audited).
    #[arg(long)]
    pub(crate) allow_degraded: bool,
    /// Decide the run under this capability token, given by its secret (default:
    /// $LOONG_TOKEN, else the operator's own authority).
    #[arg(long, value_name = "SECRET")]
    pub(crate) token: Option<String>,
    /// Output (stdout + stderr) relayed before the program is killed (suffixes K, M, G).
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_output: Option<String>,
    /// The program and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    pub(crate) command: Vec<OsString>,
}

/// Parses `123`, `64K`, `16M`, `1G`.
fn bytes(flag: &str, s: &str) -> anyhow::Result<u64> {
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| {
        anyhow!("{flag} {s}: expected a number of bytes, optionally with K, M or G")
    })?;
    n.checked_mul(mult)
        .ok_or_else(|| anyhow!("{flag} {s}: too large"))
}

fn text(flag: &str, p: &OsString) -> anyhow::Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{flag} {}: not valid UTF-8", p.to_string_lossy()))
}

fn absolute(flag: &str, p: &PathBuf) -> anyhow::Result<String> {
    let abs = std::path::absolute(p).with_context(|| format!("{flag} {}", p.display()))?;
    text(flag, &abs.into_os_string())
}

fn request(a: &RunArgs) -> Result<SandboxRunRequest, Failure> {
    let usage = |e: anyhow::Error| Failure {
        code: crate::exit::USAGE,
        error: e,
    };
    let mut env = Vec::new();
    for name in &a.env {
        let value = std::env::var(name)
            .map_err(|_| usage(anyhow!("--env {name}: not set in loongctl's environment")))?;
        env.push((name.clone(), value));
    }
    let timeout_ms = match a.timeout {
        None => None,
        Some(t) if t.is_finite() && t >= 0.0 => Some((t * 1000.0).round() as u64),
        Some(t) => return Err(usage(anyhow!("--timeout {t}: expected seconds, 0 or more"))),
    };
    let program = text("PROGRAM", &a.command[0]).map_err(usage)?;
    let program = if program.contains('/') {
        absolute("PROGRAM", &PathBuf::from(program)).map_err(usage)?
    } else {
        program
    };
    Ok(SandboxRunRequest {
        tier: a.tier.clone(),
        program,
        args: a.command[1..]
            .iter()
            .map(|x| text("argument", x))
            .collect::<anyhow::Result<_>>()
            .map_err(usage)?,
        read: a
            .read
            .iter()
            .map(|p| absolute("--read", p))
            .collect::<anyhow::Result<_>>()
            .map_err(usage)?,
        write: a
            .write
            .iter()
            .map(|p| absolute("--write", p))
            .collect::<anyhow::Result<_>>()
            .map_err(usage)?,
        allow_net: a.allow_net.clone(),
        timeout_ms,
        memory_bytes: a
            .memory
            .as_deref()
            .map(|m| bytes("--memory", m))
            .transpose()
            .map_err(usage)?,
        pids: a.pids,
        cpu_secs: a.cpu,
        token: crate::bearer(a.token.clone()),
        env,
        allow_degraded: a.allow_degraded,
        max_output_bytes: a
            .max_output
            .as_deref()
            .map(|m| bytes("--max-output", m))
            .transpose()
            .map_err(usage)?,
    })
}

pub(crate) fn run(layout: &Layout, cmd: SandboxCommand) -> Result<u8, Failure> {
    let SandboxCommand::Run(args) = cmd;
    let req = request(&args)?;
    let deadline = req
        .timeout_ms
        .map(|t| Duration::from_millis(t) + DEADLINE_SLACK)
        .unwrap_or(NO_TIMEOUT_DEADLINE);
    // The request travels in the same write as the hello (one round trip for both); with
    // stdin on `/dev/null` its end goes in that write too, so loongd reads all three at once
    // instead of being woken again for the end.
    let body = ControlRequest::SandboxRun(Box::new(req));
    let no_stdin = stdin_is_dev_null();
    let (mut client, id, stdin_ended) = if no_stdin {
        start_with_input(layout, body, deadline, StreamChunk::StdinEnd)?
    } else {
        let (client, id) = start(layout, body, deadline)?;
        (client, id, false)
    };
    // From here on SIGINT is taken through a signalfd polled beside the connection on this
    // thread (blocked before any thread starts, and only once connected, so a daemon that
    // `connect` started never inherits the mask). Before this an interrupt ends loongctl,
    // and its connection's end ends the run.
    let sigint = SigSet::from(Signal::SIGINT);
    sigint
        .thread_block()
        .map_err(|e| anyhow!("cannot take SIGINT for the sandbox's interrupts: {e}"))?;
    let signals = SignalFd::with_flags(&sigint, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| anyhow!("cannot take SIGINT for the sandbox's interrupts: {e}"))?;
    let input = Arc::new(Mutex::new(client.input()?));
    let mut interrupts = 0u32;
    if no_stdin {
        // Nothing to read: the end is sent here (unless it went with the request), without
        // a thread. A send that fails means the connection is gone, which the next event
        // reports.
        if !stdin_ended {
            let _ = lock(&input).send(id, StreamChunk::StdinEnd);
        }
    } else {
        spawn_stdin_feeder(input.clone(), id)?;
    }
    let until = Instant::now() + deadline + loong_ipc::client::DEADLINE_GRACE;
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    loop {
        // A frame already read is taken first; else the connection and SIGINT are waited
        // for together (a deadline that passes is the read's to report).
        if !client.has_frame() && wait_event(&client, &signals, until) == Woken::Signal {
            while let Ok(Some(_)) = signals.read_signal() {
                interrupts += 1;
                interrupted(&input, id, interrupts);
            }
            continue;
        }
        match client.next_event::<ControlResponse>(id, until)? {
            Event::Chunk(StreamChunk::Stdout(b)) => {
                if let Err(e) = out.write_all(&b).and_then(|()| out.flush()) {
                    return Err(reader_gone(e));
                }
            }
            Event::Chunk(StreamChunk::Stderr(b)) => {
                if let Err(e) = err.write_all(&b) {
                    return Err(reader_gone(e));
                }
            }
            Event::Chunk(_) => {}
            Event::Done(ControlResponse::SandboxExited(e)) => {
                let _ = out.flush();
                if !e.degraded.is_empty() {
                    eprintln!(
                        "loongctl: warning: ran DEGRADED, without {}",
                        crate::text::esc_join(&e.degraded, ", ")
                    );
                }
                if e.timed_out {
                    eprintln!(
                        "loongctl: killed at the --timeout of {:.3}s",
                        args.timeout.unwrap_or_default()
                    );
                }
                if e.output_limit_exceeded {
                    eprintln!("loongctl: killed after exceeding the output limit");
                }
                if e.oom_killed {
                    eprintln!("loongctl: the kernel OOM-killed a process at the memory limit");
                }
                if interrupts >= INTERRUPTS_TO_KILL && e.signal == Some(Signal::SIGKILL as i32) {
                    eprintln!("loongctl: killed at interrupt {INTERRUPTS_TO_KILL}");
                }
                return Ok(u8::try_from(e.shell_code.clamp(0, 255)).unwrap_or(1));
            }
            Event::Done(other) => {
                return Err(anyhow!("unexpected answer to sandbox run: {other:?}").into())
            }
        }
    }
}

/// loongctl's own stdout or stderr is closed (`| head`): loongctl leaves as a SIGPIPE death
/// would, and its connection's end makes loongd kill the program.
fn reader_gone(e: std::io::Error) -> Failure {
    Failure {
        code: EXIT_OUTPUT_CLOSED,
        error: anyhow!("writing the program's output: {e}; the program is killed"),
    }
}

/// Exit status when loongctl's own output is closed: 128 + SIGPIPE, as a shell reports a
/// process killed by it.
pub const EXIT_OUTPUT_CLOSED: u8 = 141;
/// Exit status when the operator leaves with repeated interrupts: 128 + SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;
/// How long an interrupt waits for the connection while stdin is being sent.
pub const INTERRUPT_SEND_WAIT: Duration = Duration::from_millis(500);

/// The stack of `sandbox run`'s stdin thread (std's default is 2 MiB): it holds its buffer
/// on the heap and calls nothing deep (a read, a send).
pub const RELAY_THREAD_STACK_BYTES: usize = 64 * 1024;

/// `/dev/null`'s device number (major 1, minor 3, as Linux fixes it).
const DEV_NULL_RDEV: u64 = 0x103;

/// Whether loongctl's stdin is `/dev/null` (a script's or an agent's `</dev/null`): its
/// end is known without reading, so no thread is started to read it.
fn stdin_is_dev_null() -> bool {
    use std::os::{
        fd::AsFd,
        unix::fs::{FileTypeExt, MetadataExt},
    };
    let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == DEV_NULL_RDEV)
}

/// Starts `sandbox run`'s stdin thread, on a small stack.
fn spawn_small(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), Failure> {
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(RELAY_THREAD_STACK_BYTES)
        .spawn(f)
        .map(drop)
        .map_err(|e| anyhow!("cannot start loongctl's {name} thread: {e}").into())
}

/// Sends loongctl's stdin as input chunks; the process exits without waiting for it.
fn spawn_stdin_feeder(input: Arc<Mutex<InputWriter>>, id: RequestId) -> Result<(), Failure> {
    spawn_small("stdin", move || {
        let mut buf = vec![0u8; MAX_CHUNK_BYTES];
        let mut stdin = std::io::stdin().lock();
        loop {
            let chunk = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(StreamChunk::Stdin(buf[..n].to_vec())),
            };
            let last = chunk.is_none();
            let sent = lock(&input).send(id, chunk.unwrap_or(StreamChunk::StdinEnd));
            if last || sent.is_err() {
                return;
            }
        }
    })
}

/// What woke [`wait_event`].
#[derive(Debug, PartialEq, Eq)]
enum Woken {
    /// The connection is readable (or closed, or the deadline passed): read it.
    Connection,
    /// A SIGINT waits in the signalfd.
    Signal,
}

/// Waits until the connection is readable or a SIGINT arrives, at most until `until`.
fn wait_event(client: &Client, signals: &SignalFd, until: Instant) -> Woken {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [
            PollFd::new(client.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(n) if n > 0 => {
                let signalled = fds[1].revents().is_some_and(|r| !r.is_empty());
                // Both: the interrupt first, the connection on the next turn.
                return if signalled {
                    Woken::Signal
                } else {
                    Woken::Connection
                };
            }
            // The deadline passed, or poll failed: the read reports it.
            _ => return Woken::Connection,
        }
    }
}

/// One SIGINT (Ctrl-C), the `n`th: each one up to [`INTERRUPTS_TO_KILL`] is sent to loongd,
/// which delivers SIGINT to the program and kills it at the last; one more and loongctl
/// leaves at once (its connection's end makes loongd kill the program, recorded as
/// `client_gone`).
fn interrupted(input: &Mutex<InputWriter>, id: RequestId, n: u32) {
    if n > INTERRUPTS_TO_KILL {
        eprintln!("loongctl: interrupted {n} times; leaving (loongd kills the program)");
        std::process::exit(i32::from(EXIT_INTERRUPTED));
    }
    // The stdin thread may be blocked sending to a program that does not read: then the
    // interrupt cannot pass, and the next Ctrl-C leaves.
    let until = Instant::now() + INTERRUPT_SEND_WAIT;
    let sent = loop {
        if let Ok(mut w) = input.try_lock() {
            break w.send(id, StreamChunk::Interrupt).is_ok();
        }
        if Instant::now() >= until {
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    match (sent, n < INTERRUPTS_TO_KILL) {
        (true, true) => {
            eprintln!("loongctl: interrupt passed to the program; Ctrl-C again kills it")
        }
        (true, false) => {
            eprintln!("loongctl: killing the program; Ctrl-C again leaves at once")
        }
        (false, _) => eprintln!(
            "loongctl: the interrupt could not reach loongd (the program is not reading its input); Ctrl-C again leaves at once"
        ),
    }
}

fn lock(m: &Mutex<InputWriter>) -> std::sync::MutexGuard<'_, InputWriter> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
