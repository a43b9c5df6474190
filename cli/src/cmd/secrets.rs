//! `loongctl secrets set | list | rm`: the secrets `http_json` manifests name as
//! `${secret:NAME}`. A value is read from stdin or a file, never from an argument (which
//! `ps` and the shell's history would show), and is never printed.

use std::{
    io::{BufRead, IsTerminal, Read},
    path::PathBuf,
};

use anyhow::{anyhow, Context};
use clap::Subcommand;
use loong_ipc::{paths::Layout, ControlRequest, ControlResponse, SecretValue, SecretView};

use super::audit::rfc3339;
use crate::{exit, text::Esc, Failure};

/// The largest value read (the store's own bound is checked by loongd; this one keeps a
/// mistaken `--file /dev/zero` from filling memory).
pub const MAX_READ_BYTES: u64 = 64 * 1024;

/// `loongctl secrets …`.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Set (or replace) secret NAME; the value is read from stdin (one trailing newline is
    /// dropped), or from --file.
    Set {
        name: String,
        /// Read the value from FILE instead of stdin.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Send it only to this endpoint (repeatable, at least one): over https, HOST (any
        /// port) or HOST:PORT; over plain http, only http://HOST:PORT. A package that names
        /// it with another endpoint is sent nothing.
        #[arg(long = "host", value_name = "HOST", required = true)]
        hosts: Vec<String>,
    },
    /// Secrets by name, with when each was set; never their values.
    List {
        /// Print JSON (an array of {name, set_ms, hosts}).
        #[arg(long)]
        json: bool,
    },
    /// Remove secret NAME.
    Rm { name: String },
}

fn call(layout: &Layout, req: ControlRequest) -> Result<Vec<SecretView>, Failure> {
    match crate::request(layout, req)? {
        ControlResponse::Secrets(s) => Ok(s),
        other => Err(anyhow!("unexpected answer: {other:?}").into()),
    }
}

pub(crate) fn read_value(file: Option<PathBuf>) -> Result<String, Failure> {
    let mut bytes = Vec::new();
    match &file {
        Some(path) => std::fs::File::open(path)
            .with_context(|| format!("reading the secret from {}", path.display()))?
            .take(MAX_READ_BYTES + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading the secret from {}", path.display()))?,
        None if std::io::stdin().is_terminal() => read_unechoed(&mut bytes)?,
        None => std::io::stdin()
            .take(MAX_READ_BYTES + 1)
            .read_to_end(&mut bytes)
            .context("reading the secret from stdin")?,
    };
    if bytes.len() as u64 > MAX_READ_BYTES {
        return Err(Failure {
            code: exit::USAGE,
            error: anyhow!("the secret is over {MAX_READ_BYTES} bytes"),
        });
    }
    let mut text = String::from_utf8(bytes).map_err(|_| Failure {
        code: exit::USAGE,
        error: anyhow!("the secret is not UTF-8 text"),
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

fn print(s: &SecretView) {
    let to = if s.hosts.is_empty() {
        "no host (set it again with --host)".to_string()
    } else {
        s.hosts
            .iter()
            .map(|h| Esc(h).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "{:<32} set {}  to {to}",
        Esc(&s.name),
        rfc3339(i64::try_from(s.set_ms).unwrap_or(i64::MAX))
    );
}

/// Echo off on the terminal until dropped.
struct NoEcho {
    saved: nix::sys::termios::Termios,
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// One line typed at the terminal, not echoed (what a terminal shows, its scrollback and a
/// screen share would otherwise keep), with a prompt on stderr.
fn read_unechoed(bytes: &mut Vec<u8>) -> Result<usize, Failure> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    eprint!("value (not shown; end with Enter): ");
    tcsetattr(&stdin, SetArg::TCSAFLUSH, &quiet).context("turning the terminal's echo off")?;
    let _restore = NoEcho { saved };
    let n = stdin
        .lock()
        .take(MAX_READ_BYTES + 1)
        .read_until(b'\n', bytes)
        .context("reading the secret from the terminal")?;
    Ok(n)
}

pub(crate) fn run(layout: &Layout, cmd: SecretsCommand) -> Result<u8, Failure> {
    match cmd {
        SecretsCommand::Set { name, file, hosts } => {
            let value = SecretValue::new(read_value(file)?);
            call(layout, ControlRequest::SecretSet { name, value, hosts })?
                .iter()
                .for_each(print);
        }
        SecretsCommand::List { json } => {
            let all = call(layout, ControlRequest::SecretList)?;
            if json {
                let rows: Vec<serde_json::Value> = all
                    .iter()
                    .map(|s| serde_json::json!({ "name": s.name, "set_ms": s.set_ms, "hosts": s.hosts }))
                    .collect();
                println!(
                    "{}",
                    crate::text::json_value(&serde_json::Value::Array(rows))
                );
            } else {
                all.iter().for_each(print);
            }
        }
        SecretsCommand::Rm { name } => {
            call(layout, ControlRequest::SecretRemove { name })?
                .iter()
                .for_each(|s| println!("removed {}", Esc(&s.name)));
        }
    }
    Ok(exit::OK)
}
