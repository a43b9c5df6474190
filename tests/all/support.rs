//! Shared harness: temporary homes, running loongctl, a raw protocol client, skips.

use std::{
    fs,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use loong_ipc::{
    frame::{self, FrameLimit},
    HandshakeReply, Hello, PeerKind, Welcome,
};

/// The directory holding the workspace's built binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/all-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// The loongctl the package ships: built for musl (`scripts/musl-target`) in the tests'
/// profile, as the test command builds it (`scripts/test`); `None` when it is not built.
pub fn musl_loongctl() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let out = std::process::Command::new(root.join("scripts/musl-target"))
        .output()
        .expect("run scripts/musl-target");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let triple = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dir = bin_dir();
    let ctl = dir
        .parent()
        .expect("the target directory")
        .join(triple)
        .join(dir.file_name().expect("the profile's directory"))
        .join("loongctl");
    ctl.exists().then_some(ctl)
}

/// A built binary of the workspace.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} is missing: build the binaries first with `cargo build --workspace --bins` (the README's test command does)", p.display());
    p
}

/// Reports a test as skipped: says why on stderr and records it in
/// `target/loong-skipped.txt`, which the test command prints, so a skip never passes for a pass.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    let path = bin_dir().parent().map(|t| t.join("loong-skipped.txt"));
    if let Some(path) = path {
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A temporary home; any daemon started on it is killed when it is dropped.
pub struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    /// A fresh home with the default configuration.
    pub fn new() -> Home {
        Home {
            dir: tempfile::Builder::new()
                .prefix("lh")
                .tempdir_in("/tmp")
                .expect("temp home"),
        }
    }

    /// A fresh home whose `loongd.toml` is `config`.
    pub fn with_config(config: &str) -> Home {
        let h = Home::new();
        fs::write(h.path().join("loongd.toml"), config).expect("write config");
        h
    }

    /// A fresh home under `parent` whose `loongd.toml` is `config`.
    pub fn with_config_in(parent: &Path, config: &str) -> Home {
        let h = Home {
            dir: tempfile::Builder::new()
                .prefix("lh")
                .tempdir_in(parent)
                .expect("temp home"),
        };
        fs::write(h.path().join("loongd.toml"), config).expect("write config");
        h
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("run/loongd.sock")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.path().join("log/loongd.log")).unwrap_or_default()
    }

    /// Runs `loongctl --home HOME ARGS…`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_env(args, &[])
    }

    /// Runs `loongctl --home HOME ARGS…` with extra environment (which a daemon it starts
    /// inherits).
    pub fn ctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(bin("loongctl"))
            .arg("--home")
            .arg(self.path())
            .args(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run loongctl")
    }

    /// Starts the daemon and returns its pid.
    pub fn start(&self) -> u32 {
        self.start_env(&[])
    }

    /// Starts the daemon with extra environment and returns its pid.
    pub fn start_env(&self, env: &[(&str, &str)]) -> u32 {
        let out = self.ctl_env(&["daemon", "start"], env);
        assert!(
            out.status.success(),
            "daemon start failed: {}\n{}",
            text(&out.stderr),
            self.log()
        );
        self.status().pid
    }

    /// `loongctl status --json`, which must succeed.
    pub fn status(&self) -> Status {
        let out = self.ctl(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed ({:?}): {}\nlog:\n{}",
            out.status.code(),
            text(&out.stderr),
            self.log()
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
        Status {
            pid: v["pid"].as_u64().expect("pid") as u32,
            connected_clients: v["connected_clients"].as_u64().expect("connected_clients") as u32,
            json: v,
        }
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if let Ok(pid) = fs::read_to_string(self.path().join("loongd.lock")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                if process_alive(pid as u32) && cmdline_has(pid as u32, "loongd") {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

/// What `status --json` said.
#[derive(Debug)]
pub struct Status {
    pub pid: u32,
    pub connected_clients: u32,
    pub json: serde_json::Value,
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// Whether every thread of `pid` has exited (or the process is gone): a killed process's
/// leader turns zombie while its other threads still hold its descriptors (a listening
/// socket among them), so [`process_alive`] can say "dead" before they are released.
pub fn process_gone(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| {
        fs::read_to_string(t.path().join("stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .is_none_or(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        })
    })
}

pub fn cmdline_has(pid: u32, needle: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// A raw client that can say anything on the socket.
pub struct Raw {
    pub stream: UnixStream,
}

impl Raw {
    pub fn connect(socket: &Path) -> Raw {
        let stream = UnixStream::connect(socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw { stream }
    }

    pub fn send_bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b)
    }

    pub fn send<T: serde::Serialize>(&mut self, msg: &T) -> std::io::Result<()> {
        let mut out = Vec::new();
        frame::encode(msg, FrameLimit::CEILING, &mut out).expect("encodes");
        self.send_bytes(&out)
    }

    /// Reads one whole frame as `T`; `None` if the peer closed the connection first.
    pub fn recv<T: serde::de::DeserializeOwned>(&mut self) -> Option<T> {
        let mut prefix = [0u8; 4];
        if self.stream.read_exact(&mut prefix).is_err() {
            return None;
        }
        let mut body = vec![0u8; u32::from_le_bytes(prefix) as usize];
        self.stream.read_exact(&mut body).ok()?;
        Some(frame::decode_body(&body).expect("the daemon sends valid frames"))
    }

    /// Sends a valid hello and returns the welcome.
    pub fn handshake(&mut self) -> Welcome {
        self.send(&Hello::new(PeerKind::Operator, "raw-test"))
            .expect("send hello");
        match self.recv::<HandshakeReply>() {
            Some(HandshakeReply::Welcome(w)) => w,
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    /// Whether the daemon has closed this connection (reads end of stream or a reset
    /// within the read timeout), discarding anything it sent before.
    pub fn closed_by_peer(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// The uid and gid of `nobody`, which an unprivileged loongd runs as in these tests.
pub const NOBODY: u32 = 65534;

/// `loongctl --home HOME ARGS…`, as `nobody` when asked (root switches with setpriv).
pub fn ctl(home: &Home, as_nobody: bool, args: &[&str]) -> Output {
    if !as_nobody {
        return home.ctl(args);
    }
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("setpriv loongctl")
}

/// Writes the pack `careful` (grants `grant`, every call approved by an operator), starts
/// loongd and issues a token of it for agent `bot` with `grant`: its bearer secret.
pub fn start_with_careful_token(home: &Home, grant: &str) -> String {
    fs::create_dir_all(home.path().join("packs")).expect("packs");
    fs::write(
        home.path().join("packs/careful.toml"),
        format!(
            "id = \"careful\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"{grant}\"]\napproval = \"always\"\n"
        ),
    )
    .expect("pack");
    home.start();
    let out = home.ctl(&[
        "tokens", "issue", "--pack", "careful", "--agent", "bot", "--cap", grant, "--ttl", "1h",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}
