//! The adversarial probe suite (the escape catalogue, rows 1–39, plus the extra attempts the
//! sandbox issue names). Each attempt is one run of `loong-probe` through `loongctl sandbox
//! run` per tier where it applies; the test asserts the exact refusal (errno or signal). Every
//! row also runs unconfined as its positive control, so no row can pass because the probe
//! never really tried; where running unconfined would change the host (`mount`), the control
//! is a harmless variant that proves the same call works.

use std::{
    fs,
    net::TcpListener,
    os::unix::{
        fs::PermissionsExt,
        net::{SocketAddr, UnixListener},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::support::{ctl, is_root, skip, text, Home, NOBODY};

/// Where the build script put the probe (or why it could not).
const PROBE: &str = env!("LOONG_PROBE");

fn probe_path(test: &str) -> Option<PathBuf> {
    if PROBE.starts_with("unavailable") {
        skip(test, PROBE);
        return None;
    }
    Some(PathBuf::from(PROBE))
}

/// What a run must produce.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Exit 0 and exactly this output line.
    Says(&'static str),
    /// Exit 0 and output starting with this.
    Starts(&'static str),
    /// Killed by this signal (loongctl exits 128 + signal).
    Killed(i32),
    /// Exit 0 and output ending with this.
    Ends(&'static str),
}

/// One escape attempt: the probe's arguments (with placeholders), the unconfined control,
/// and the outcome per tier (`None`: the row does not apply to that tier).
struct Row {
    name: &'static str,
    args: &'static [&'static str],
    /// Extra `sandbox run` flags for this row.
    flags: &'static [&'static str],
    /// Unconfined run (as the test's user); `None` when another row is the control.
    control: Option<(&'static [&'static str], Expect)>,
    restricted: Option<Expect>,
    balanced: Option<Expect>,
    trusted: Option<Expect>,
}

use Expect::*;

const SIGKILL: i32 = 9;
const SIGXCPU: i32 = 24;
const SIGXFSZ: i32 = 25;
const SIGSYS: i32 = 31;

/// The catalogue. Placeholders: {secret} (a host dir not granted), {ro} (a read grant),
/// {work} (a write grant), {port}/{other} (TCP listeners), {abstract}, {home}, {sibling},
/// {loongd}, {tier}.
const ROWS: &[Row] = &[
    Row {
        name: "1 read /etc/shadow",
        args: &["read", "/etc/shadow"],
        flags: &[],
        control: Some((&["read", "/etc/shadow"], Says("ok"))),
        restricted: Some(Says("ENOENT")),
        balanced: Some(Says("EACCES")),
        trusted: Some(Says("EACCES")),
    },
    Row {
        name: "2 read a file outside the grants",
        args: &["read", "{secret}/secret"],
        flags: &[],
        control: Some((&["read", "{secret}/secret"], Says("ok"))),
        restricted: Some(Says("ENOENT")),
        balanced: Some(Says("ENOENT")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "2b read loongd's own configuration",
        args: &["read", "{home}/loongd.toml"],
        flags: &[],
        control: Some((&["read", "{home}/loongd.toml"], Says("ok"))),
        restricted: Some(Says("ENOENT")),
        balanced: Some(Says("ENOENT")),
        trusted: Some(Says("EACCES")),
    },
    Row {
        name: "2c read a granted file (control)",
        args: &["read", "{ro}/data"],
        flags: &[],
        control: None,
        restricted: Some(Says("ok")),
        balanced: Some(Says("ok")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "3 create a file outside the workdir",
        args: &["create", "{secret}/new-{tier}"],
        flags: &[],
        control: Some((&["create", "{secret}/control"], Says("ok"))),
        restricted: Some(Says("ENOENT")),
        balanced: Some(Says("ENOENT")),
        trusted: Some(Says("EACCES")),
    },
    Row {
        name: "3b create a file in a system directory",
        args: &["create", "/usr/loong-probe-{tier}"],
        flags: &[],
        control: None,
        restricted: Some(Says("EROFS")),
        balanced: Some(Says("EROFS")),
        trusted: Some(Says("EACCES")),
    },
    Row {
        name: "4 create a file in the workdir (control)",
        args: &["create", "{work}/new-{tier}"],
        flags: &[],
        control: None,
        restricted: Some(Says("ok")),
        balanced: Some(Says("ok")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "5 symlink in the workdir to a hidden file",
        args: &["symlink-read", "{work}/l-{tier}", "{secret}/secret"],
        flags: &[],
        control: Some((
            &["symlink-read", "{work}/l-control", "{secret}/secret"],
            Says("ok"),
        )),
        restricted: Some(Says("ENOENT")),
        balanced: Some(Says("ENOENT")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "5b symlink in the workdir to an ungranted directory",
        args: &["symlink-read", "{work}/r-{tier}", "/"],
        flags: &[],
        control: Some((&["symlink-read", "{work}/r-control", "/"], Says("ok"))),
        restricted: Some(Says("EACCES")),
        balanced: Some(Says("EACCES")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "6 hardlink a granted file into the workdir",
        args: &["link", "{ro}/data", "{work}/h-{tier}"],
        flags: &[],
        control: Some((&["link", "{ro}/data", "{work}/h-control"], Says("ok"))),
        restricted: Some(Says("EXDEV")),
        balanced: Some(Says("EXDEV")),
        trusted: Some(Says("EPERM")),
    },
    Row {
        name: "7 rename a workdir file out of the grants",
        args: &["rename", "{work}/mv-{tier}", "{secret}/moved-{tier}"],
        flags: &[],
        control: Some((
            &["rename", "{work}/mv-control", "{secret}/moved-control"],
            Says("ok"),
        )),
        restricted: Some(Says("ENOENT")),
        balanced: Some(Says("ENOENT")),
        trusted: Some(Says("EACCES")),
    },
    Row {
        name: "8 TCP connect to 127.0.0.1",
        args: &["tcp-connect", "127.0.0.1", "{port}"],
        flags: &[],
        control: Some((&["tcp-connect", "127.0.0.1", "{port}"], Says("ok"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EAFNOSUPPORT")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "8b TCP connect to a granted port (control)",
        args: &["tcp-connect", "127.0.0.1", "{port}"],
        flags: &["--allow-net", "127.0.0.1:{port}"],
        control: None,
        restricted: None,
        balanced: Some(Says("ok")),
        trusted: None,
    },
    Row {
        name: "8c TCP connect to a port outside the grant",
        args: &["tcp-connect", "127.0.0.1", "{other}"],
        flags: &["--allow-net", "127.0.0.1:{port}"],
        control: Some((&["tcp-connect", "127.0.0.1", "{other}"], Says("ok"))),
        restricted: None,
        balanced: Some(Says("EACCES")),
        trusted: None,
    },
    Row {
        name: "9 TCP bind",
        args: &["tcp-bind", "0"],
        flags: &[],
        control: Some((&["tcp-bind", "0"], Says("ok"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EAFNOSUPPORT")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "9b TCP bind with a connect grant",
        args: &["tcp-bind", "0"],
        flags: &["--allow-net", "127.0.0.1:{port}"],
        control: None,
        restricted: None,
        balanced: Some(Says("EACCES")),
        trusted: None,
    },
    Row {
        name: "10 UDP sendto 127.0.0.1",
        args: &["udp-send", "{port}"],
        flags: &[],
        control: Some((&["udp-send", "{port}"], Says("ok"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EAFNOSUPPORT")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "10b UDP with a TCP grant (landlock's gap, closed by seccomp)",
        args: &["udp-send", "{port}"],
        flags: &["--allow-net", "127.0.0.1:{port}"],
        control: None,
        restricted: None,
        balanced: Some(Says("EAFNOSUPPORT")),
        trusted: None,
    },
    Row {
        name: "11 netlink socket",
        args: &["netlink"],
        flags: &[],
        control: Some((&["netlink"], Says("ok"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EAFNOSUPPORT")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "12 connect loongd-side abstract socket",
        args: &["abstract-connect", "{abstract}"],
        flags: &[],
        control: Some((&["abstract-connect", "{abstract}"], Says("ok"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("ECONNREFUSED")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "12b abstract socket from the host network namespace (landlock scope)",
        args: &["abstract-connect", "{abstract}"],
        flags: &["--allow-net", "127.0.0.1:{port}"],
        control: None,
        restricted: None,
        balanced: Some(Says("EPERM")),
        trusted: None,
    },
    Row {
        name: "13 connect loongd's control socket",
        args: &["unix-connect", "{home}/run/loongd.sock"],
        flags: &[],
        control: Some((&["unix-connect", "{home}/run/loongd.sock"], Says("ok"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("ENOENT")),
        trusted: Some(Says("EACCES")),
    },
    Row {
        name: "13b connect a socket in the workdir (control)",
        args: &["unix-connect", "{work}/sock"],
        flags: &[],
        control: None,
        restricted: None,
        balanced: Some(Says("ok")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "14 signal a sibling",
        args: &["kill", "{sibling}"],
        flags: &[],
        control: Some((&["kill", "{sibling}"], Says("ok"))),
        restricted: Some(Says("ESRCH")),
        balanced: Some(Says("ESRCH")),
        trusted: Some(Says("ESRCH")),
    },
    Row {
        name: "15 signal loongd",
        args: &["kill", "{loongd}"],
        flags: &[],
        control: Some((&["kill", "{loongd}"], Says("ok"))),
        restricted: Some(Says("ESRCH")),
        balanced: Some(Says("ESRCH")),
        trusted: Some(Says("ESRCH")),
    },
    Row {
        name: "16 ptrace a sibling",
        args: &["ptrace", "{sibling}"],
        flags: &[],
        control: Some((&["ptrace", "{sibling}"], Says("ok"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EPERM")),
        trusted: Some(Says("ESRCH")),
    },
    Row {
        name: "17 process_vm_readv a sibling",
        args: &["vmread", "{sibling}"],
        flags: &[],
        control: Some((&["vmread", "{sibling}"], Says("EFAULT"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EPERM")),
        trusted: Some(Says("ESRCH")),
    },
    Row {
        name: "18 read another process's /proc environ",
        args: &["read", "/proc/{sibling}/environ"],
        flags: &[],
        control: Some((&["read", "/proc/{sibling}/environ"], Says("ok"))),
        restricted: Some(Says("ENOENT")),
        balanced: Some(Says("ENOENT")),
        trusted: Some(Says("ENOENT")),
    },
    Row {
        name: "19 open /proc/self/mem read-write",
        args: &["open-rw", "/proc/self/mem"],
        flags: &[],
        control: Some((&["open-rw", "/proc/self/mem"], Says("ok"))),
        restricted: Some(Says("EACCES")),
        balanced: Some(Says("EACCES")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "20 inherited descriptors",
        args: &["list-fds"],
        flags: &[],
        control: None,
        restricted: Some(Says("0 1 2")),
        balanced: Some(Says("0 1 2")),
        trusted: Some(Says("0 1 2")),
    },
    Row {
        name: "21 unshare(user|mount) + mount",
        args: &["unshare-mount"],
        flags: &[],
        control: Some((&["unshare-mount"], Says("ok"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EPERM")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "22 mount tmpfs",
        args: &["mount"],
        flags: &[],
        control: None,
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EPERM")),
        trusted: Some(Says("EPERM")),
    },
    Row {
        name: "23 chroot",
        args: &["chroot"],
        flags: &[],
        control: Some((&["chroot"], Says("ok"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EPERM")),
        trusted: Some(Says("EPERM")),
    },
    Row {
        name: "24 setns into a network namespace",
        args: &["setns"],
        flags: &[],
        control: Some((&["setns"], Says("ok"))),
        // Landlock does not cover the /proc/self/ns magic links; the allowlist catches setns.
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EPERM")),
        trusted: Some(Says("EPERM")),
    },
    Row {
        name: "25 keyctl",
        args: &["keyctl"],
        flags: &[],
        control: Some((&["keyctl"], Says("ok"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EPERM")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "26 bpf",
        args: &["bpf"],
        flags: &[],
        control: Some((&["bpf"], Says("ok"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EPERM")),
        trusted: Some(Says("EPERM")),
    },
    Row {
        name: "27 io_uring_setup",
        args: &["io-uring"],
        flags: &[],
        control: Some((&["io-uring"], Says("ok"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EPERM")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "28 userfaultfd",
        args: &["userfaultfd"],
        flags: &[],
        control: Some((&["userfaultfd"], Says("ok"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EPERM")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "29 perf_event_open",
        args: &["perf"],
        flags: &[],
        control: Some((&["perf"], Says("ok"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EPERM")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "30 clone(CLONE_NEWUSER)",
        args: &["clone-newuser"],
        flags: &[],
        control: Some((&["clone-newuser"], Says("ok"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Says("EPERM")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "31 clone3 answers ENOSYS",
        args: &["clone3"],
        flags: &[],
        control: Some((&["clone3"], Says("EINVAL"))),
        restricted: Some(Says("ENOSYS")),
        balanced: Some(Says("ENOSYS")),
        trusted: Some(Says("ENOSYS")),
    },
    Row {
        name: "32 x32 syscall number",
        args: &["x32"],
        flags: &[],
        control: Some((&["x32"], Says("ENOSYS"))),
        restricted: Some(Killed(SIGSYS)),
        balanced: Some(Killed(SIGSYS)),
        trusted: Some(Killed(SIGSYS)),
    },
    Row {
        name: "34 fork bomb",
        args: &["forkbomb", "200"],
        flags: &["--pids", "16"],
        control: Some((&["forkbomb", "50"], Says("forked=50 ok"))),
        restricted: Some(Says("forked=0 EAGAIN")),
        balanced: Some(Starts("forked=1")),
        trusted: Some(Starts("forked=1")),
    },
    Row {
        name: "35 malloc 2 GiB untouched",
        args: &["alloc", "2048"],
        flags: &[],
        control: Some((&["alloc", "2048"], Says("ok"))),
        restricted: Some(Says("ENOMEM")),
        balanced: None,
        trusted: None,
    },
    Row {
        name: "35b touch 256 MiB under a 64 MiB memory limit",
        args: &["alloc", "256", "touch"],
        flags: &["--memory", "64M"],
        control: None,
        restricted: None,
        balanced: Some(Killed(SIGKILL)),
        trusted: Some(Killed(SIGKILL)),
    },
    Row {
        name: "35c allocate 32 MiB under the same limit (control)",
        args: &["alloc", "32"],
        flags: &["--memory", "64M"],
        control: None,
        restricted: None,
        balanced: Some(Says("ok")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "36 open 2000 descriptors",
        args: &["fds", "2000"],
        flags: &[],
        control: Some((&["fds", "2000"], Says("opened=2000 ok"))),
        restricted: Some(Says("opened=61 EMFILE")),
        balanced: Some(Says("opened=1021 EMFILE")),
        trusted: Some(Says("opened=2000 ok")),
    },
    Row {
        name: "37 write a 32 MiB file",
        args: &["bigfile", "{work}/big-{tier}", "32"],
        flags: &[],
        control: Some((&["bigfile", "{work}/big-control", "32"], Says("ok"))),
        restricted: Some(Killed(SIGXFSZ)),
        balanced: Some(Says("ok")),
        trusted: Some(Says("ok")),
    },
    Row {
        name: "38 CPU spin as the first process",
        args: &["spin"],
        flags: &["--cpu", "1", "--timeout", "30"],
        control: None,
        restricted: Some(Killed(SIGXCPU)),
        balanced: Some(Killed(SIGXCPU)),
        trusted: Some(Killed(SIGXCPU)),
    },
    Row {
        name: "39 CPU spin in a grandchild",
        args: &["spin-child"],
        flags: &["--cpu", "1", "--timeout", "30"],
        control: None,
        restricted: Some(Says("EAGAIN")),
        balanced: Some(Says("child-signal=24")),
        trusted: Some(Says("child-signal=24")),
    },
    Row {
        name: "40 output flood",
        args: &["flood"],
        flags: &["--max-output", "1M"],
        control: None,
        restricted: Some(Killed(SIGKILL)),
        balanced: Some(Killed(SIGKILL)),
        trusted: Some(Killed(SIGKILL)),
    },
    Row {
        name: "41 wall-clock spin past --timeout",
        args: &["spin"],
        flags: &["--timeout", "1"],
        control: None,
        restricted: Some(Killed(SIGKILL)),
        balanced: Some(Killed(SIGKILL)),
        trusted: Some(Killed(SIGKILL)),
    },
    Row {
        name: "42 no_new_privs and seccomp",
        args: &["status"],
        flags: &[],
        control: Some((&["status"], Starts("NoNewPrivs:\t0"))),
        restricted: Some(Says("EACCES")),
        balanced: Some(Says("NoNewPrivs:\t1\nSeccomp:\t2")),
        trusted: Some(Says("NoNewPrivs:\t1\nSeccomp:\t2")),
    },
];

/// Rows whose outcome differs when loongd is not root, and why. Everything else must match
/// the root column exactly.
const UNPRIVILEGED: &[(&str, &str, Expect, &str)] = &[
    ("34 fork bomb", "balanced", Ends("EAGAIN"), "no cgroup: --pids is RLIMIT_NPROC, which counts every process of the uid, loongd's included"),
    ("34 fork bomb", "trusted", Ends("EAGAIN"), "as above"),
    ("35b touch 256 MiB under a 64 MiB memory limit", "balanced", Says("ENOMEM"), "no cgroup: --memory is RLIMIT_AS, so the allocation itself fails"),
    ("35b touch 256 MiB under a 64 MiB memory limit", "trusted", Says("ENOMEM"), "as above"),
    ("2b read loongd's own configuration", "trusted", Says("ENOENT"), "the mask over loongd's home belongs to the sandbox uid, which is loongd's own: it is empty, not forbidden"),
    ("13 connect loongd's control socket", "trusted", Says("ENOENT"), "as above"),
];

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
    sibling: Child,
    loongd: u32,
    _keep: (TcpListener, TcpListener, UnixListener, UnixListener),
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
    fn new(as_nobody: bool) -> Lab {
        use std::os::linux::net::SocketAddrExt;
        let home = Home::new();
        if as_nobody {
            std::os::unix::fs::chown(home.path(), Some(NOBODY), Some(NOBODY)).expect("chown home");
        }
        let started = ctl(&home, as_nobody, &["daemon", "start"]);
        assert!(
            started.status.success(),
            "{}\n{}",
            text(&started.stderr),
            home.log()
        );
        let loongd = home.status().pid;
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
            sibling,
            loongd,
            _keep: (tcp, other, abs, sock),
        }
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
        let out = ctl(&self.home, self.as_nobody, &refs);
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
    run_catalogue(&probe, false);
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
    run_catalogue(&probe, is_root());
}

/// Runs every row; `as_nobody` runs loongd (and loongctl) as `nobody` through setpriv.
fn run_catalogue(probe: &Path, as_nobody: bool) {
    let lab = Lab::new(as_nobody);
    let unprivileged = as_nobody || !is_root();
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
        }
        for (tier, expect) in [
            ("restricted", row.restricted),
            ("balanced", row.balanced),
            ("trusted", row.trusted),
        ] {
            let Some(mut expect) = expect else { continue };
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
    if !unprivileged {
        let oom = lab.confined(
            probe,
            "balanced",
            &["--memory", "64M"],
            &["alloc", "256", "touch"],
        );
        assert!(oom.2.contains("OOM-killed"), "{}", oom.2);
    }
}
