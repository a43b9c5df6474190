//! The adversarial probe suite (the escape catalogue, rows 1–39, plus the extra attempts the
//! sandbox issue names). Each attempt is one run of `loong-probe` through `loongctl sandbox
//! run` per tier where it applies; the test asserts the exact refusal (errno or signal). Every
//! row also runs unconfined as its positive control, so no row can pass because the probe
//! never really tried; where running unconfined would change the host (`mount`), the control
//! is a harmless variant that proves the same call works. The network rows are checked from
//! the host side as well: no confined run may reach the listener on `{other}` (whatever the
//! probe printed), and every unconfined control aimed at it must have arrived.

use std::{
    fs,
    io::BufRead,
    net::{TcpListener, TcpStream},
    os::unix::{
        fs::PermissionsExt,
        net::{SocketAddr, UnixListener},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::{
    rootless::{Rootless, Setup},
    support::{bin, ctl, is_root, skip, text, Home, NOBODY},
};

mod rows;

use rows::{Expect, ROOTLESS, ROWS, UNPRIVILEGED};
use Expect::*;

/// Where the build script put the probe (or why it could not).
const PROBE: &str = env!("LOONG_PROBE");

fn probe_path(test: &str) -> Option<PathBuf> {
    if PROBE.starts_with("unavailable") {
        skip(test, PROBE);
        return None;
    }
    Some(PathBuf::from(PROBE))
}

/// The fixtures every row may use.
struct Lab {
    home: Home,
    work: tempfile::TempDir,
    ro: tempfile::TempDir,
    secret: tempfile::TempDir,
    port: u16,
    other: u16,
    abstract_name: String,
    as_nobody: bool,
    /// loongd runs rootless with subordinate ids (`crate::rootless`).
    rootless: Option<Rootless>,
    sibling: Child,
    loongd: u32,
    /// The listeners on `{port}` (the port rows grant) and `{other}` (never granted), both
    /// non-blocking so that [`Lab::reached_other`] can empty their queues.
    granted: TcpListener,
    ungranted: TcpListener,
    _keep: (UnixListener, UnixListener),
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.sibling.kill();
        let _ = self.sibling.wait();
    }
}

fn dir(mode: u32) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("lp")
        .tempdir_in("/tmp")
        .expect("temp dir");
    fs::set_permissions(d.path(), fs::Permissions::from_mode(mode)).expect("chmod");
    d
}

impl Lab {
    fn new(mode: Mode) -> Lab {
        use std::os::linux::net::SocketAddrExt;
        let as_nobody = mode == Mode::Nobody;
        let rootless = match mode {
            Mode::Subordinate => Some(Rootless::new(Setup::Ranges)),
            Mode::SubordinateUnitProc => Some(Rootless::new(Setup::UnitProc)),
            _ => None,
        };
        // Unprivileged here means loongd's own uid (no subordinate ids): the degraded mode,
        // which must be chosen.
        let home = if let Some(ns) = &rootless {
            ns.home("")
        } else if as_nobody || !is_root() {
            Home::with_config("[sandbox]\nrootless_own_uid = true\n")
        } else {
            Home::new()
        };
        if as_nobody {
            std::os::unix::fs::chown(home.path(), Some(NOBODY), Some(NOBODY)).expect("chown home");
        }
        let loongd = if let Some(ns) = &rootless {
            ns.start(&home)
        } else {
            let started = ctl(&home, as_nobody, &["daemon", "start"]);
            assert!(
                started.status.success(),
                "{}\n{}",
                text(&started.stderr),
                home.log()
            );
            home.status().pid
        };
        let work = dir(0o777);
        let ro = dir(0o755);
        fs::write(ro.path().join("data"), "data").expect("data");
        let secret = dir(0o755);
        fs::write(secret.path().join("secret"), "secret").expect("secret");
        fs::set_permissions(ro.path().join("data"), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        fs::set_permissions(
            secret.path().join("secret"),
            fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let tcp = TcpListener::bind("127.0.0.1:0").expect("tcp");
        let other = TcpListener::bind("127.0.0.1:0").expect("tcp");
        for l in [&tcp, &other] {
            l.set_nonblocking(true).expect("non-blocking listener");
        }
        let abstract_name = format!("loong-probe-{}-{}", std::process::id(), loongd);
        let abs = UnixListener::bind_addr(
            &SocketAddr::from_abstract_name(abstract_name.as_bytes()).expect("name"),
        )
        .expect("abstract");
        let sock = UnixListener::bind(work.path().join("sock")).expect("unix socket");
        fs::set_permissions(work.path().join("sock"), fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let sibling = Command::new("sleep")
            .arg("600")
            .stdout(Stdio::null())
            .spawn()
            .expect("sleep");
        Lab {
            port: tcp.local_addr().expect("addr").port(),
            other: other.local_addr().expect("addr").port(),
            home,
            work,
            ro,
            secret,
            abstract_name,
            as_nobody,
            rootless,
            sibling,
            loongd,
            granted: tcp,
            ungranted: other,
            _keep: (abs, sock),
        }
    }

    /// How many connections reached the `{other}` listener since the last call; empties both
    /// listeners' queues (connections to `{port}` are expected and only drained).
    fn reached_other(&self) -> usize {
        let drain = |l: &TcpListener| std::iter::from_fn(|| l.accept().ok()).count();
        drain(&self.granted);
        drain(&self.ungranted)
    }

    fn fill(&self, s: &str, tier: &str) -> String {
        let p = |d: &tempfile::TempDir| d.path().display().to_string();
        s.replace("{secret}", &p(&self.secret))
            .replace("{ro}", &p(&self.ro))
            .replace("{work}", &p(&self.work))
            .replace("{home}", &self.home.path().display().to_string())
            .replace("{port}", &self.port.to_string())
            .replace("{other}", &self.other.to_string())
            .replace("{abstract}", &self.abstract_name)
            .replace("{sibling}", &self.sibling.id().to_string())
            .replace("{loongd}", &self.loongd.to_string())
            .replace("{tier}", tier)
    }

    /// Runs the probe confined; returns loongctl's exit code, stdout and stderr.
    fn confined(
        &self,
        probe: &Path,
        tier: &str,
        flags: &[&str],
        args: &[&str],
    ) -> (Option<i32>, String, String) {
        let mut a: Vec<String> = vec!["sandbox".into(), "run".into(), "--tier".into(), tier.into()];
        a.extend([
            "--read".into(),
            self.ro.path().display().to_string(),
            "--write".into(),
            self.work.path().display().to_string(),
        ]);
        a.extend(flags.iter().map(|f| self.fill(f, tier)));
        a.push("--".into());
        a.push(probe.display().to_string());
        a.extend(args.iter().map(|x| self.fill(x, tier)));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = match &self.rootless {
            Some(_) => crate::rootless::ctl(&self.home, &refs),
            None => ctl(&self.home, self.as_nobody, &refs),
        };
        (
            out.status.code(),
            text(&out.stdout).trim_end().to_string(),
            text(&out.stderr),
        )
    }

    fn unconfined(&self, probe: &Path, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(probe)
            .args(args.iter().map(|x| self.fill(x, "control")))
            .stdin(Stdio::null())
            .output()
            .expect("run probe");
        use std::os::unix::process::ExitStatusExt;
        let code = out.status.code().or(out.status.signal().map(|s| 128 + s));
        (
            code,
            text(&out.stdout).trim_end().to_string(),
            text(&out.stderr),
        )
    }
}

fn matches(expect: Expect, got: &(Option<i32>, String, String)) -> bool {
    match expect {
        Says(s) => got.0 == Some(0) && got.1 == s,
        Starts(s) => got.0 == Some(0) && got.1.starts_with(s),
        Killed(sig) => got.0 == Some(128 + sig),
        Ends(s) => got.0 == Some(0) && got.1.ends_with(s),
    }
}

#[test]
fn escape_catalogue_under_every_tier() {
    let Some(probe) = probe_path("escape_catalogue_under_every_tier") else {
        return;
    };
    if !is_root() {
        skip(
            "escape_catalogue_under_every_tier",
            "the root column needs loongd as root; escape_catalogue_unprivileged covers this user",
        );
        return;
    }
    run_catalogue(&probe, Mode::Root);
}

/// The catalogue with loongd as an ordinary user whose sandboxes each run as a subordinate
/// id (`crate::rootless`): the root column's expectations, except where [`ROOTLESS`] says
/// otherwise and why.
#[test]
fn escape_catalogue_rootless_with_subordinate_ids() {
    let test = "escape_catalogue_rootless_with_subordinate_ids";
    let Some(probe) = probe_path(test) else {
        return;
    };
    if let Some(why) = crate::rootless::unavailable() {
        skip(test, why);
        return;
    }
    run_catalogue(&probe, Mode::Subordinate);
}

/// The rootless column again, with loongd's namespace given the rootless unit's `/proc`
/// (`crate::rootless::Setup::UnitProc`): every row holds as without it.
#[test]
fn escape_catalogue_rootless_under_the_rootless_units_proc_layout() {
    let test = "escape_catalogue_rootless_under_the_rootless_units_proc_layout";
    let Some(probe) = probe_path(test) else {
        return;
    };
    if let Some(why) = crate::rootless::unavailable() {
        skip(test, why);
        return;
    }
    run_catalogue(&probe, Mode::SubordinateUnitProc);
}

#[test]
fn escape_catalogue_unprivileged() {
    let Some(probe) = probe_path("escape_catalogue_unprivileged") else {
        return;
    };
    if fs::read_to_string("/proc/sys/user/max_user_namespaces").is_ok_and(|v| v.trim() == "0") {
        skip(
            "escape_catalogue_unprivileged",
            "user namespaces are disabled (user.max_user_namespaces = 0)",
        );
        return;
    }
    if !is_root() && nix::unistd::Uid::effective().as_raw() != NOBODY {
        skip(
            "escape_catalogue_unprivileged",
            "the expectations are written for loongd running as nobody (uid 65534)",
        );
        return;
    }
    run_catalogue(
        &probe,
        if is_root() {
            Mode::Nobody
        } else {
            Mode::Unprivileged
        },
    );
}

/// Whom loongd runs as for a catalogue run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Root: sandboxes drop to `nobody`.
    Root,
    /// `nobody` through setpriv, without subordinate ids: sandboxes keep loongd's own uid
    /// (the degraded mode).
    Nobody,
    /// The test itself is not root: loongd runs as this user, degraded as above.
    Unprivileged,
    /// An ordinary user with subordinate ranges, in a mount namespace (`crate::rootless`).
    Subordinate,
    /// As above, the namespace's `/proc` laid out as the rootless unit's.
    SubordinateUnitProc,
}

/// Runs every row under `mode`.
fn run_catalogue(probe: &Path, mode: Mode) {
    let lab = Lab::new(mode);
    let unprivileged = matches!(mode, Mode::Nobody | Mode::Unprivileged);
    for t in ["restricted", "balanced", "trusted", "control"] {
        fs::write(lab.work.path().join(format!("mv-{t}")), "x").expect("rename source");
        fs::set_permissions(
            lab.work.path().join(format!("mv-{t}")),
            fs::Permissions::from_mode(0o666),
        )
        .expect("chmod");
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for row in ROWS {
        if let Some((args, expect)) = row.control {
            let got = lab.unconfined(probe, args);
            checked += 1;
            if !matches(expect, &got) {
                failures.push(format!(
                    "{}: the unconfined control expected {expect:?}, got {got:?}",
                    row.name
                ));
            }
            // A control aimed at {other} must really arrive there, or the host-side check
            // below proves nothing for that row.
            if lab.reached_other() == 0 && args.contains(&"{other}") {
                failures.push(format!(
                    "{}: the unconfined control never reached the listener on {{other}}",
                    row.name
                ));
            }
        }
        for (tier, expect) in [
            ("restricted", row.restricted),
            ("balanced", row.balanced),
            ("trusted", row.trusted),
        ] {
            let Some(mut expect) = expect else { continue };
            if matches!(mode, Mode::Subordinate | Mode::SubordinateUnitProc) {
                if let Some((_, _, e, _)) = ROOTLESS
                    .iter()
                    .find(|(n, t, _, _)| *n == row.name && *t == tier)
                {
                    expect = *e;
                }
            }
            if unprivileged {
                if let Some((_, _, e, _)) = UNPRIVILEGED
                    .iter()
                    .find(|(n, t, _, _)| *n == row.name && *t == tier)
                {
                    expect = *e;
                }
            }
            let got = lab.confined(probe, tier, row.flags, row.args);
            checked += 1;
            if !matches(expect, &got) {
                failures.push(format!(
                    "{} [{tier}]: expected {expect:?}, got {got:?}",
                    row.name
                ));
            }
            // No sandbox ever reaches the port no row grants, whatever the probe printed.
            let reached = lab.reached_other();
            if reached > 0 {
                failures.push(format!(
                    "{} [{tier}]: {reached} connection(s) reached the ungranted listener on {{other}}",
                    row.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 120, "only {checked} checks ran");
    // The daemon survived every attempt.
    assert_eq!(lab.home.status().pid, lab.loongd);
    // Kill-type outcomes said why on stderr.
    let flood = lab.confined(probe, "balanced", &["--max-output", "1M"], &["flood"]);
    assert!(
        flood.2.contains("exceeding the output limit"),
        "{}",
        flood.2
    );
    let slow = lab.confined(probe, "balanced", &["--timeout", "1"], &["spin"]);
    assert!(slow.2.contains("killed at the --timeout"), "{}", slow.2);
    // Only root has a cgroup here (no delegated cgroup v2 subtree for an ordinary user).
    if mode == Mode::Root {
        let oom = lab.confined(
            probe,
            "balanced",
            &["--memory", "64M"],
            &["alloc", "256", "touch"],
        );
        assert!(oom.2.contains("OOM-killed"), "{}", oom.2);
    }
}

/// How long a knock on a port a probe says it listens on may take.
const KNOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `cmd` (a probe in a listen mode), reads its first line and, when it says
/// "listening PORT", tries to connect to that port on the host's 127.0.0.1. Returns the line
/// and whether the host got through.
fn listen_and_knock(mut cmd: Command) -> (String, bool) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the listening probe");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read the probe's first line");
    let line = line.trim().to_string();
    let reached = line
        .strip_prefix("listening ")
        .and_then(|p| p.parse::<u16>().ok())
        .is_some_and(|p| {
            TcpStream::connect_timeout(&([127, 0, 0, 1], p).into(), KNOCK_TIMEOUT).is_ok()
        });
    let _ = child.kill();
    let _ = child.wait();
    (line, reached)
}

/// A sandbox with a connect grant is in its own network namespace (its way out is loongd's
/// egress broker); `listen()` on an unbound socket, which would autobind an ephemeral port, is
/// still refused by the seccomp guard, and the host reaches nothing. Control: the same probe unconfined is reachable from the host
/// (rows 9c–9h of the catalogue show the errno per tier, and that a sandbox without a grant
/// still listens on unix sockets).
#[test]
fn a_sandbox_with_a_network_grant_listens_on_nothing_the_host_can_reach() {
    let test = "a_sandbox_with_a_network_grant_listens_on_nothing_the_host_can_reach";
    let Some(probe) = probe_path(test) else {
        return;
    };
    let home = Home::new();
    home.start();
    let granted = TcpListener::bind("127.0.0.1:0").expect("tcp");
    let grant = format!("127.0.0.1:{}", granted.local_addr().expect("addr").port());
    let sandboxed = |mode: &str| {
        let mut c = Command::new(bin("loongctl"));
        c.arg("--home").arg(home.path());
        c.args([
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--allow-net",
            &grant,
        ]);
        c.arg("--").arg(&probe).args([mode, "3"]);
        c
    };
    for mode in ["tcp-listen", "tcp6-listen"] {
        let mut unconfined = Command::new(&probe);
        unconfined.args([mode, "3"]);
        let (line, reached) = listen_and_knock(unconfined);
        assert!(
            line.starts_with("listening ") && reached,
            "{mode} unconfined: {line}, reached from the host: {reached}"
        );
        let (line, reached) = listen_and_knock(sandboxed(mode));
        assert_eq!(
            (line.as_str(), reached),
            ("EPERM", false),
            "{mode} with a connect grant"
        );
    }
}

/// A sandbox with a connect grant once shared the host's abstract unix namespace, where a
/// datagram socket bound to a name would receive what host processes send to it. It has its
/// own network namespace now, and `bind` is still refused. Control: the same probe
/// unconfined binds and receives the host's datagram.
#[test]
fn a_sandbox_with_a_network_grant_takes_no_abstract_name_the_host_can_send_to() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let test = "a_sandbox_with_a_network_grant_takes_no_abstract_name_the_host_can_send_to";
    let Some(probe) = probe_path(test) else {
        return;
    };
    let home = Home::new();
    home.start();
    let granted = TcpListener::bind("127.0.0.1:0").expect("tcp");
    let grant = format!("127.0.0.1:{}", granted.local_addr().expect("addr").port());
    // Binds NAME in the probe, then sends it a datagram from the host; the probe's lines.
    let bind_and_send = |mut cmd: Command, name: &str| -> Vec<String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the probe");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut lines = Vec::new();
        let mut line = String::new();
        out.read_line(&mut line).expect("first line");
        lines.push(line.trim().to_string());
        if line.trim() == "bound" {
            let addr = SocketAddr::from_abstract_name(name).expect("abstract address");
            let host = UnixDatagram::unbound().expect("datagram");
            let _ = host.send_to_addr(b"from-the-host", &addr);
            let mut line = String::new();
            out.read_line(&mut line).expect("second line");
            lines.push(line.trim().to_string());
        }
        let _ = child.kill();
        let _ = child.wait();
        lines
    };
    let name = format!("loong-squat-{}", std::process::id());
    let mut unconfined = Command::new(&probe);
    unconfined.args(["abstract-dgram", &name, "3"]);
    assert_eq!(
        bind_and_send(unconfined, &name),
        ["bound", "received from-the-host"],
        "unconfined"
    );
    let mut sandboxed = Command::new(bin("loongctl"));
    sandboxed.arg("--home").arg(home.path());
    sandboxed.args([
        "sandbox",
        "run",
        "--tier",
        "balanced",
        "--allow-net",
        &grant,
    ]);
    sandboxed
        .arg("--")
        .arg(&probe)
        .args(["abstract-dgram", &name, "3"]);
    assert_eq!(
        bind_and_send(sandboxed, &name),
        ["EPERM"],
        "with a connect grant"
    );
}
