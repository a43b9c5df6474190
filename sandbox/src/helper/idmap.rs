//! `loong-spawn --idmap`: runs `newuidmap`/`newgidmap` for a rootless loongd that cannot.
//!
//! A hardened service without capabilities runs with `no_new_privs` (systemd implies it for
//! `SystemCallFilter=`, `RestrictNamespaces=` and the like), and under `no_new_privs` the
//! setuid `newuidmap` runs as the caller and cannot map subordinate ids. This server runs as
//! the same user outside `no_new_privs` (`loong-idmap.socket` and its service): it answers
//! only peers of its own uid, runs the two tools with the numbers asked for, and the tools
//! themselves check what they always check (the target process is the user's, the ids are
//! the user's own or in its `/etc/subuid`/`/etc/subgid` ranges). It grants nothing the user
//! could not do by running the tools itself.
//!
//! Protocol: one request a connection, a line of nine decimal numbers `PID U_IN U_OUT
//! U_IN2 U_OUT2 G_IN G_OUT G_IN2 G_OUT2`; the answer is `ok` or `error WHAT`, one line.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::Path,
    time::Duration,
};

use crate::{
    subids::{find_tool, NEWGIDMAP, NEWUIDMAP},
    sys,
};

/// Where the rootless unit's helper asks (`loong-idmap.socket` listens there).
pub const IDMAP_SOCKET: &str = "/run/loong-idmap.sock";
/// The longest request line.
pub const MAX_REQUEST_BYTES: u64 = 256;
/// How long a peer may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The first descriptor systemd passes (`sd_listen_fds`).
const LISTEN_FD: i32 = 3;

/// Why ids were not mapped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdmapError {
    #[error("{tool} is not installed as a setuid-root program; install Debian's `uidmap`")]
    NoTool { tool: &'static str },
    #[error("{tool} {pid} {map}: {status} ({why})")]
    Refused {
        tool: String,
        pid: u32,
        map: String,
        status: String,
        why: String,
    },
    #[error("{tool}: {why}")]
    Run { tool: String, why: String },
    #[error("request {0:?} is not nine numbers with a pid other than 0")]
    BadRequest(String),
    #[error("uid {peer} may not ask; only uid {me}")]
    Peer { peer: u32, me: u32 },
    #[error("the request could not be read: {0}")]
    Read(String),
    #[error("{IDMAP_SOCKET}: {0} (loongd runs with no_new_privs: start loong-idmap.socket)")]
    Server(String),
    #[error("the idmap server on {IDMAP_SOCKET} answered: {0}")]
    Answered(String),
}

/// Entry point of `loong-spawn --idmap [PATH]`: serves the socket systemd passed (fd 3,
/// `LISTEN_FDS=1` for this pid), or binds `PATH` (tests). Never returns.
pub fn main(path: Option<&Path>) -> ! {
    let listener = match path {
        Some(p) => match UnixListener::bind(p) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("loong-spawn --idmap: cannot listen on {}: {e}", p.display());
                sys::exit_now(1)
            }
        },
        None => {
            let ours = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
            if !ours || std::env::var("LISTEN_FDS").ok().as_deref() != Some("1") {
                eprintln!("loong-spawn --idmap is started by loong-idmap.socket (LISTEN_FDS=1), or given a socket path");
                sys::exit_now(1)
            }
            match sys::adopt_fd(LISTEN_FD) {
                Ok(fd) => UnixListener::from(fd),
                Err(e) => {
                    eprintln!("loong-spawn --idmap: fd 3: {e}");
                    sys::exit_now(1)
                }
            }
        }
    };
    let me = nix::unistd::getuid().as_raw();
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let answer = serve(&conn, me);
        let line = match answer {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("error {}\n", e.to_string().replace('\n', " ")),
        };
        let _ = conn.write_all(line.as_bytes());
    }
    sys::exit_now(0)
}

fn serve(conn: &UnixStream, me: u32) -> Result<(), IdmapError> {
    let peer = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| IdmapError::Read(format!("peer credentials: {e}")))?;
    // A peer of another uid is answered at once: it never holds the server while it sends.
    if peer.uid() != me {
        return Err(IdmapError::Peer {
            peer: peer.uid(),
            me,
        });
    }
    conn.set_write_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| IdmapError::Read(e.to_string()))?;
    let line = read_request(conn, REQUEST_TIMEOUT)?;
    let n = parse(&line)?;
    run_tools(n[0], [n[1], n[2], n[3], n[4]], [n[5], n[6], n[7], n[8]])
}

/// The request line, read within `deadline` in all (not per read: a peer dribbling a byte
/// at a time cannot hold the single-threaded server longer) and at most
/// [`MAX_REQUEST_BYTES`].
pub fn read_request(conn: &UnixStream, deadline: Duration) -> Result<String, IdmapError> {
    let read_err = |e: std::io::Error| IdmapError::Read(e.to_string());
    let end = std::time::Instant::now() + deadline;
    let mut line = Vec::new();
    let mut buf = [0u8; MAX_REQUEST_BYTES as usize];
    while !line.contains(&b'\n') && (line.len() as u64) < MAX_REQUEST_BYTES {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(IdmapError::Read(format!(
                "no request line within {deadline:?}"
            )));
        }
        conn.set_read_timeout(Some(left)).map_err(read_err)?;
        let room = MAX_REQUEST_BYTES as usize - line.len();
        match (&*conn).read(&mut buf[..room]) {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        }
    }
    let first = line.split(|&b| b == b'\n').next().unwrap_or_default();
    Ok(String::from_utf8_lossy(first).into_owned())
}

/// The nine numbers of a request line.
pub fn parse(line: &str) -> Result<[u32; 9], IdmapError> {
    let bad = || IdmapError::BadRequest(line.trim().to_string());
    let nums: Vec<u32> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let n: [u32; 9] = nums.try_into().map_err(|_| bad())?;
    if n[0] == 0 {
        return Err(bad());
    }
    Ok(n)
}

/// Runs `newuidmap PID IN OUT 1 IN2 OUT2 1` and `newgidmap` likewise.
pub fn run_tools(pid: u32, uid_map: [u32; 4], gid_map: [u32; 4]) -> Result<(), IdmapError> {
    for (name, paths, map) in [
        ("newuidmap", NEWUIDMAP, uid_map),
        ("newgidmap", NEWGIDMAP, gid_map),
    ] {
        let tool = find_tool(&paths).ok_or(IdmapError::NoTool { tool: name })?;
        let [in0, out0, in1, out1] = map.map(|i| i.to_string());
        let out = std::process::Command::new(&tool)
            .args([
                pid.to_string(),
                in0,
                out0,
                "1".into(),
                in1,
                out1,
                "1".into(),
            ])
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| IdmapError::Run {
                tool: tool.display().to_string(),
                why: e.to_string(),
            })?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            return Err(IdmapError::Refused {
                tool: tool.display().to_string(),
                pid,
                map: map.map(|i| i.to_string()).join(" "),
                status: out.status.to_string(),
                why: why.lines().next().unwrap_or("").trim().to_string(),
            });
        }
    }
    Ok(())
}

/// Asks the server at [`IDMAP_SOCKET`] to map `pid` (from a helper under `no_new_privs`).
pub fn ask(pid: u32, uid_map: [u32; 4], gid_map: [u32; 4]) -> Result<(), IdmapError> {
    let server = |e: std::io::Error| IdmapError::Server(e.to_string());
    let mut conn = UnixStream::connect(IDMAP_SOCKET).map_err(server)?;
    conn.set_read_timeout(Some(REQUEST_TIMEOUT * 2))
        .map_err(server)?;
    let nums: Vec<String> = std::iter::once(pid)
        .chain(uid_map)
        .chain(gid_map)
        .map(|n| n.to_string())
        .collect();
    conn.write_all(format!("{}\n", nums.join(" ")).as_bytes())
        .map_err(server)?;
    let mut answer = String::new();
    BufReader::new((&conn).take(MAX_REQUEST_BYTES * 4))
        .read_line(&mut answer)
        .map_err(server)?;
    match answer.trim_end() {
        "ok" => Ok(()),
        other => Err(IdmapError::Answered(
            other.strip_prefix("error ").unwrap_or(other).to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_read_within_one_deadline_in_all() {
        let deadline = Duration::from_millis(400);
        // Control: a whole line at once is read.
        let (a, mut b) = UnixStream::pair().expect("pair");
        b.write_all(b"1 2 3\nrest").expect("write");
        assert_eq!(read_request(&a, deadline), Ok("1 2 3".to_string()));
        // A peer that sends a byte every 100ms, each well within a per-read timeout, is cut
        // off at the deadline.
        let (a, mut b) = UnixStream::pair().expect("pair");
        let dribble = std::thread::spawn(move || {
            for _ in 0..30 {
                if b.write_all(b"1").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let t = std::time::Instant::now();
        let got = read_request(&a, deadline);
        let took = t.elapsed();
        drop(a);
        let _ = dribble.join();
        assert!(matches!(got, Err(IdmapError::Read(_))), "{got:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[test]
    fn requests_are_nine_numbers_and_nothing_else() {
        assert_eq!(
            parse("12 0 998 65534 100000 0 998 65534 100000\n"),
            Ok([12, 0, 998, 65534, 100000, 0, 998, 65534, 100000])
        );
        for bad in [
            "",
            "1 2 3",
            "12 0 998 1 65534 100000 0 998 65534 100000",
            "x 0 998 65534 100000 0 998 65534 100000",
            "-1 0 0 0 0 0 0 0 0",
            "0 0 998 65534 100000 0 998 65534 100000",
        ] {
            assert_eq!(
                parse(bad),
                Err(IdmapError::BadRequest(bad.trim().to_string())),
                "{bad:?}"
            );
        }
    }
}
