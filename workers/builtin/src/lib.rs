//! Loong's built-in tools, as one worker runs them inside its sandbox:
//!
//! - `file.read {path, max_bytes?}` → `{path, content, bytes, truncated}` (UTF-8 text);
//! - `file.write {path, content}` → `{path, bytes}`;
//! - `file.edit {path, old, new, all?}` → `{path, replacements}` (exactly one match unless
//!   `all`);
//! - `shell.exec {command}` → `{exit_code, signal, stdout, stderr, truncated, timed_out}`
//!   (`/bin/sh -c` in the workspace, an empty environment but `PATH`, output capped, killed at
//!   the deadline with its whole process group).
//!
//! A file tool opens only the file loongd decided the call on, beneath the decided scope,
//! with the kernel refusing any symlink on the way ([`files`]). Behind that, the sandbox's
//! mount namespace and the worker's landlock domain grant the tool's roots and nothing else.

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
    io::{self, Read},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use loong_ipc::{BuiltinSpec, DecidedFile, FailureKind, PluginFailure};
use serde_json::{json, Value};

pub mod files;

/// The built-in tools this worker runs.
pub const TOOLS: [&str; 4] = ["file.read", "file.write", "file.edit", "shell.exec"];
/// How often `shell.exec` checks whether its shell has ended.
const WAIT_POLL: Duration = Duration::from_millis(5);
/// `PATH` for `shell.exec`.
pub const SHELL_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Why a built-in call failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("bad input: {0}")]
    Input(String),
    #[error("{0} is outside this tool's roots ({1})")]
    OutsideRoots(String, String),
    #[error("{0} changed after the call was decided (a symlink or an escape is now on its path); nothing was opened, call again")]
    Swapped(String),
    #[error("{0} is not a regular file")]
    NotRegular(String),
    #[error("{0} has {1} hard links, and another name may lie outside the scope; write to a file with one link")]
    HardLinked(String, u64),
    #[error("{0}: the call carries no decided file; loongd decides every file call")]
    NotDecided(String),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0} is not UTF-8 text")]
    NotText(String),
    #[error("{0}")]
    Edit(String),
    #[error("the output is over the {0}-byte limit")]
    TooLarge(u64),
    #[error("the command could not be run: {0}")]
    Spawn(io::Error),
}

impl ToolError {
    pub fn failure(&self, tool: &str) -> PluginFailure {
        let kind = match self {
            ToolError::TooLarge(_) => FailureKind::OutputTooLarge,
            _ => FailureKind::ToolError,
        };
        PluginFailure::new(kind, format!("{tool}: {self}"))
    }
}

pub(crate) fn str_field<'a>(input: &'a Value, name: &str) -> Result<&'a str, ToolError> {
    input
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::Input(format!("`{name}` (a string) is required")))
}

/// A configured built-in tool: its spec and, for a file tool, its roots held open.
#[derive(Debug)]
pub struct Builtin {
    pub spec: BuiltinSpec,
    roots: files::Roots,
}

impl Builtin {
    /// Takes `spec`; a file tool opens its roots now (before the worker narrows its landlock
    /// domain to them).
    pub fn configure(spec: BuiltinSpec) -> Result<Builtin, ToolError> {
        let roots = if spec.tool.starts_with("file.") {
            files::Roots::open(&spec.roots)?
        } else {
            files::Roots::none()
        };
        Ok(Builtin { spec, roots })
    }

    /// Runs one call; the answer is JSON. A file tool opens only `decided`, the file loongd
    /// decided the call on.
    pub fn run(&self, input: &[u8], decided: Option<&DecidedFile>) -> Result<Value, ToolError> {
        let input: Value =
            serde_json::from_slice(input).map_err(|e| ToolError::Input(e.to_string()))?;
        let (spec, roots) = (&self.spec, &self.roots);
        match spec.tool.as_str() {
            "file.read" => files::read(spec, roots, decided, &input),
            "file.write" => files::write(spec, roots, decided, &input),
            "file.edit" => files::edit(spec, roots, decided, &input),
            "shell.exec" => shell(spec, &input),
            other => Err(ToolError::Input(format!("no built-in tool {other:?}"))),
        }
    }
}

fn shell(spec: &BuiltinSpec, input: &Value) -> Result<Value, ToolError> {
    use std::os::unix::process::CommandExt;
    let command = str_field(input, "command")?;
    let cwd = spec
        .roots
        .first()
        .ok_or_else(|| ToolError::Input("shell.exec has no workspace".into()))?;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", SHELL_PATH)
        .env("HOME", cwd)
        .env("LANG", "C.UTF-8")
        // The egress proxy's variables, which the sandbox set for a network grant (nothing
        // else of the worker's environment passes).
        .envs(
            PROXY_ENV
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(ToolError::Spawn)?;
    let cap = usize::try_from(spec.max_output_bytes).unwrap_or(usize::MAX);
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut total = 0usize;
            if let Some(mut p) = pipe {
                let mut buf = [0u8; 8192];
                while let Ok(n) = p.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n;
                    let room = cap.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
            (kept, total)
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + Duration::from_millis(spec.timeout_ms);
    let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
                break child.wait().map_err(ToolError::Spawn)?;
            }
            Ok(None) => std::thread::sleep(WAIT_POLL),
            Err(e) => return Err(ToolError::Spawn(e)),
        }
    };
    // Whatever the shell left running holds the pipes open: end the group, and every
    // process it started that left the group (`setsid`), which the worker holds as their
    // subreaper.
    let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
    loong_worker_runtime::descendants::end_descendants();
    let (stdout, out_total) = out.join().unwrap_or_default();
    let (stderr, err_total) = err.join().unwrap_or_default();
    use std::os::unix::process::ExitStatusExt;
    Ok(json!({
        "exit_code": status.code(),
        "signal": status.signal(),
        "stdout": String::from_utf8_lossy(&stdout),
        "stderr": String::from_utf8_lossy(&stderr),
        "truncated": out_total > stdout.len() || err_total > stderr.len(),
        "timed_out": timed_out,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tool: &str, root: &std::path::Path) -> BuiltinSpec {
        BuiltinSpec {
            tool: tool.into(),
            roots: vec![root.display().to_string()],
            timeout_ms: 2_000,
            max_output_bytes: 64,
        }
    }

    fn call(spec: &BuiltinSpec, input: Value) -> Result<Value, ToolError> {
        Builtin::configure(spec.clone())
            .expect("configured")
            .run(input.to_string().as_bytes(), None)
    }

    #[test]
    fn shell_exec_caps_output_and_kills_at_the_deadline() {
        let dir = tempfile::tempdir().expect("dir");
        let s = spec("shell.exec", dir.path());
        let r = call(&s, json!({"command": "pwd; echo err >&2; exit 3"})).expect("runs");
        assert_eq!(r["exit_code"], 3);
        assert_eq!(
            r["stdout"].as_str().map(str::trim),
            Some(dir.path().to_str().expect("utf-8"))
        );
        assert_eq!(r["stderr"], "err\n");
        let r = call(&s, json!({"command": "yes | head -c 100000"})).expect("runs");
        assert_eq!(
            (r["stdout"].as_str().map(str::len), r["truncated"].as_bool()),
            (Some(64), Some(true))
        );
        let mut quick = s.clone();
        quick.timeout_ms = 200;
        let r = call(&quick, json!({"command": "sleep 30 & sleep 30"})).expect("runs");
        // Killed (SIGKILL) at the deadline, not ended by itself.
        assert_eq!(
            (r["timed_out"].as_bool(), r["signal"].as_i64()),
            (Some(true), Some(9))
        );
        assert_eq!(r["exit_code"], serde_json::Value::Null);
    }
}
