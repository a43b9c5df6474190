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
//! Paths must be absolute and lexically under one of the tool's roots; that check only words
//! the error. The boundary is the sandbox: its mount namespace and landlock grant those roots
//! and nothing else, so a symlink inside a root that leads out of it is refused by the kernel.

use std::{
    io::{self, Read},
    path::{Component, Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use loong_ipc::{BuiltinSpec, FailureKind, PluginFailure};
use serde_json::{json, Value};

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

fn str_field<'a>(input: &'a Value, name: &str) -> Result<&'a str, ToolError> {
    input
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::Input(format!("`{name}` (a string) is required")))
}

/// An absolute path without `.` or `..`, lexically under one of `roots`.
pub fn checked_path(path: &str, roots: &[String]) -> Result<PathBuf, ToolError> {
    let p = Path::new(path);
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(ToolError::Input(format!(
            "{path:?}: give an absolute path without . or .."
        )));
    }
    if !roots.iter().any(|r| p.starts_with(r)) {
        return Err(ToolError::OutsideRoots(path.into(), roots.join(", ")));
    }
    Ok(p.to_path_buf())
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ToolError + '_ {
    move |source| ToolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Runs one built-in call; the answer is JSON.
pub fn run(spec: &BuiltinSpec, input: &[u8]) -> Result<Value, ToolError> {
    let input: Value =
        serde_json::from_slice(input).map_err(|e| ToolError::Input(e.to_string()))?;
    match spec.tool.as_str() {
        "file.read" => read(spec, &input),
        "file.write" => write(spec, &input),
        "file.edit" => edit(spec, &input),
        "shell.exec" => shell(spec, &input),
        other => Err(ToolError::Input(format!("no built-in tool {other:?}"))),
    }
}

fn read(spec: &BuiltinSpec, input: &Value) -> Result<Value, ToolError> {
    let path = checked_path(str_field(input, "path")?, &spec.roots)?;
    let limit = input
        .get("max_bytes")
        .and_then(Value::as_u64)
        .unwrap_or(spec.max_output_bytes)
        .min(spec.max_output_bytes);
    let file = std::fs::File::open(&path).map_err(io_err(&path))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(&path))?;
    let truncated = bytes.len() as u64 > limit;
    bytes.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let content = match String::from_utf8(bytes) {
        Ok(s) => s,
        // A cut may split a character: keep the whole ones.
        Err(e) if truncated && e.utf8_error().error_len().is_none() => {
            let good = e.utf8_error().valid_up_to();
            let mut b = e.into_bytes();
            b.truncate(good);
            String::from_utf8(b).map_err(|_| ToolError::NotText(path.display().to_string()))?
        }
        Err(_) => return Err(ToolError::NotText(path.display().to_string())),
    };
    Ok(json!({"path": path, "bytes": content.len(), "content": content, "truncated": truncated}))
}

fn write(spec: &BuiltinSpec, input: &Value) -> Result<Value, ToolError> {
    let path = checked_path(str_field(input, "path")?, &spec.roots)?;
    let content = str_field(input, "content")?;
    std::fs::write(&path, content).map_err(io_err(&path))?;
    Ok(json!({"path": path, "bytes": content.len()}))
}

fn edit(spec: &BuiltinSpec, input: &Value) -> Result<Value, ToolError> {
    let path = checked_path(str_field(input, "path")?, &spec.roots)?;
    let old = str_field(input, "old")?;
    let new = str_field(input, "new")?;
    let all = input.get("all").and_then(Value::as_bool).unwrap_or(false);
    if old.is_empty() {
        return Err(ToolError::Input("`old` must not be empty".into()));
    }
    let limit = spec.max_output_bytes;
    let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
    if meta.len() > limit {
        return Err(ToolError::TooLarge(limit));
    }
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let found = text.matches(old).count();
    if found == 0 {
        return Err(ToolError::Edit(format!(
            "{}: the text to replace is not there",
            path.display()
        )));
    }
    if found > 1 && !all {
        return Err(ToolError::Edit(format!(
            "{}: the text to replace occurs {found} times; give more context or set all",
            path.display()
        )));
    }
    let edited = text.replace(old, new);
    std::fs::write(&path, edited).map_err(io_err(&path))?;
    Ok(json!({"path": path, "replacements": found}))
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
    let _ = loong_worker_runtime::descendants::kill_descendants();
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

    fn spec(tool: &str, root: &Path) -> BuiltinSpec {
        BuiltinSpec {
            tool: tool.into(),
            roots: vec![root.display().to_string()],
            timeout_ms: 2_000,
            max_output_bytes: 64,
        }
    }

    fn call(spec: &BuiltinSpec, input: Value) -> Result<Value, ToolError> {
        run(spec, input.to_string().as_bytes())
    }

    #[test]
    fn file_tools_read_write_and_edit_inside_their_roots() {
        let dir = tempfile::tempdir().expect("dir");
        let f = dir.path().join("a.txt");
        let path = f.display().to_string();
        let w = call(
            &spec("file.write", dir.path()),
            json!({"path": path, "content": "one two two"}),
        )
        .expect("write");
        assert_eq!(w["bytes"], 11);
        let r = call(&spec("file.read", dir.path()), json!({"path": path})).expect("read");
        assert_eq!(r["content"], "one two two");
        let err = call(
            &spec("file.edit", dir.path()),
            json!({"path": path, "old": "two", "new": "2"}),
        )
        .expect_err("ambiguous");
        assert!(err.to_string().contains("2 times"), "{err}");
        let e = call(
            &spec("file.edit", dir.path()),
            json!({"path": path, "old": "two", "new": "2", "all": true}),
        )
        .expect("edit all");
        assert_eq!(e["replacements"], 2);
        assert_eq!(std::fs::read_to_string(&f).expect("read"), "one 2 2");
        // Reads are capped; a cut never splits a character.
        std::fs::write(&f, "é".repeat(40)).expect("write");
        let r = call(&spec("file.read", dir.path()), json!({"path": path})).expect("read");
        assert_eq!(
            (r["bytes"].as_u64(), r["truncated"].as_bool()),
            (Some(64), Some(true))
        );
        // Outside the roots, relative, or with `..`: refused by name.
        for bad in [
            "/etc/hostname",
            "a.txt",
            &format!("{}/../x", dir.path().display()),
        ] {
            let err =
                call(&spec("file.read", dir.path()), json!({"path": bad})).expect_err("refused");
            assert_eq!(
                err.failure("file.read").kind,
                FailureKind::ToolError,
                "{bad}"
            );
        }
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
