//! `loongctl sandbox run`: loongd spawns the program confined; loongctl relays stdio and
//! exits with the program's exit code (or 128 + the signal that killed it).

use std::{
    ffi::OsString,
    io::{Read, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use loong_ipc::{
    client::Event, paths::Layout, ControlRequest, ControlResponse, SandboxRunRequest, StreamChunk,
    MAX_CHUNK_BYTES,
};

use crate::{connect, Failure};

/// Added to `--timeout` for the request's own deadline, so loongd reports the timeout itself.
pub const DEADLINE_SLACK: Duration = Duration::from_secs(30);
/// The request deadline without `--timeout`.
pub const NO_TIMEOUT_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);

/// `loongctl sandbox …`.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Run PROGRAM in a sandbox of the given tier; stdio is relayed, and loongctl exits with
    /// the program's exit code, or 128 + the signal that killed it (159 for a seccomp kill).
    Run(RunArgs),
}

/// Arguments of `sandbox run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// restricted, balanced or trusted.
    #[arg(long)]
    tier: String,
    /// A path the program may read (same path inside the sandbox).
    #[arg(long = "read", value_name = "PATH")]
    read: Vec<PathBuf>,
    /// A path the program may read and write (same path inside the sandbox).
    #[arg(long = "write", value_name = "PATH")]
    write: Vec<PathBuf>,
    /// A TCP destination the program may connect to (balanced and trusted tiers).
    #[arg(long = "allow-net", value_name = "HOST:PORT")]
    allow_net: Vec<String>,
    /// Wall-clock limit in seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Memory limit in bytes (suffixes K, M, G allowed).
    #[arg(long, value_name = "BYTES")]
    memory: Option<String>,
    /// Process limit.
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// CPU-time limit in seconds (RLIMIT_CPU: SIGXCPU, exit 152).
    #[arg(long, value_name = "SECS")]
    cpu: Option<u64>,
    /// Pass this variable from loongctl's environment (the rest is cleared).
    #[arg(long = "env", value_name = "NAME")]
    env: Vec<String>,
    /// Run even where this host cannot fully enforce the tier (logged and audited).
    #[arg(long)]
    allow_degraded: bool,
    /// Decide the run under this capability token, given by its secret (default:
    /// $LOONG_TOKEN, else the operator's own authority).
    #[arg(long, value_name = "SECRET")]
    token: Option<String>,
    /// Output (stdout + stderr) relayed before the program is killed (suffixes K, M, G).
    #[arg(long, value_name = "BYTES")]
    max_output: Option<String>,
    /// The program and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    command: Vec<OsString>,
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
    let mut client = connect(layout)?;
    let id = client.start(ControlRequest::SandboxRun(Box::new(req)), deadline)?;
    let mut input = client.input()?;
    // Stdin is fed from a thread; the process exits without waiting for it.
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_CHUNK_BYTES];
        let mut stdin = std::io::stdin().lock();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = input.send(id, StreamChunk::StdinEnd);
                    return;
                }
                Ok(n) => {
                    if input
                        .send(id, StreamChunk::Stdin(buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    let until = Instant::now() + deadline + loong_ipc::client::DEADLINE_GRACE;
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    loop {
        match client.next_event::<ControlResponse>(id, until)? {
            Event::Chunk(StreamChunk::Stdout(b)) => {
                let _ = out.write_all(&b);
                let _ = out.flush();
            }
            Event::Chunk(StreamChunk::Stderr(b)) => {
                let _ = err.write_all(&b);
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
                return Ok(u8::try_from(e.shell_code.clamp(0, 255)).unwrap_or(1));
            }
            Event::Done(other) => {
                return Err(anyhow!("unexpected answer to sandbox run: {other:?}").into())
            }
        }
    }
}
