//! Rootless mode: loongd as an ordinary user confines sandboxes with user namespaces, and each
//! sandbox runs as its own id from the user's subordinate range, never loongd's uid. loongd
//! runs as [`USER`] inside a mount namespace whose `/etc` has a writable layer of its own
//! holding the user's passwd and group entries and its `/etc/subuid` and `/etc/subgid` ranges
//! (the host's `/etc` is never touched); `newuidmap` reads them there. Checked from the host
//! side: a sandbox's payload and reaper run as a subordinate uid, two live sandboxes as two,
//! and a sandbox cannot write a directory of loongd's user that loongd itself can. Without a
//! range, without `newuidmap` or under `no_new_privs`, spawns are refused naming the fix;
//! `[sandbox] rootless_own_uid = true` runs them as loongd's own uid, and says so.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use crate::support::{bin, is_root, skip, text, wait_until, Home};

/// The rootless user's uid and gid (unused on the test machines; it exists only in the
/// namespace's `/etc`).
pub const UID: u32 = 64_000;
/// Its name.
pub const USER: &str = "loongrl";
/// The first id of its subordinate uid and gid ranges.
pub const SUB_START: u32 = 1_100_000;
/// The width of each range.
pub const SUB_COUNT: u32 = 65_536;

/// What the namespace's `/etc` gives the user, and what else it lacks or has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// A passwd entry and both ranges: subordinate ids.
    Ranges,
    /// A passwd entry and no range.
    NoRange,
    /// Both ranges, but `newuidmap` is not installed (`/dev/null` is bound over it).
    NoTool,
    /// Both ranges, and loongd started with `no_new_privs`.
    NoNewPrivs,
    /// As above, with the idmap server (`loong-spawn --idmap`, as `loong-idmap.socket`
    /// runs it) listening on `/run/loong-idmap.sock` outside `no_new_privs`.
    NoNewPrivsWithIdmap,
    /// Both ranges, and `/proc` as systemd 252 leaves it under `ProtectKernelTunables=` and
    /// `ProtectKernelLogs=` alone: read-only binds over `/proc/sys`, `/proc/sysrq-trigger`
    /// and the rest of its list, an inaccessible file over `/proc/kmsg`, `/proc/kcore` and
    /// `/proc/kallsyms` ([`UNIT_PROC_LAYOUT`]).
    ProtectKernelProc,
    /// As above, with a `/proc` of `subset=pid,hidepid=invisible` mounted over it: the
    /// rootless unit's layout (`ProcSubset=pid`, `ProtectProc=invisible`).
    UnitProc,
    /// Both ranges, and loongd started in a cgroup v2 directory delegated to the user (owned
    /// by it, with its `cgroup.procs`, `cgroup.subtree_control` and `cgroup.threads`, as
    /// systemd's `Delegate=yes` leaves it) with no controller enabled: [`Rootless::cgroup`].
    DelegatedCgroup,
}

/// The mount point of the host's cgroup v2 hierarchy, if it has one.
pub fn cgroup_v2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// The shell that gives the namespace's `/proc` the layout of [`Setup::ProtectKernelProc`]
/// (`$1` is a directory for the inaccessible file), and with `$2 = subset` the instance of
/// [`Setup::UnitProc`] over it. The lists are systemd 252's (`src/core/namespace.c`,
/// `protect_kernel_tunables_proc_table` and `protect_kernel_logs_proc_table`); the lower
/// `/proc` keeps these mounts under the new instance, as the host's `/proc` under the unit's
/// root keeps its own.
pub const UNIT_PROC_LAYOUT: &str = r#"
    : > "$1/inaccessible"; chmod 0 "$1/inaccessible"
    for p in acpi apm asound bus fs irq latency_stats mtrr scsi sys sysrq-trigger timer_stats; do
        if [ -e "/proc/$p" ]; then mount --bind "/proc/$p" "/proc/$p"; mount -o remount,bind,ro "/proc/$p"; fi
    done
    for p in kallsyms kcore kmsg; do
        if [ -e "/proc/$p" ]; then mount --bind "$1/inaccessible" "/proc/$p"; fi
    done
    if [ "$2" = subset ]; then
        mount -t proc -o nosuid,nodev,noexec,subset=pid,hidepid=invisible loong-unit-proc /proc
    fi
"#;

/// A mount namespace's files for the rootless user: `/etc` entries and a scratch directory
/// for the overlay's layers.
pub struct Rootless {
    dir: tempfile::TempDir,
    setup: Setup,
    /// The user's home directory (its passwd entry's), where the spawn server keeps the
    /// slot claim file; its own unless shared ([`Rootless::sharing_user_home`]).
    user_home: PathBuf,
    _own_user_home: Option<tempfile::TempDir>,
    /// [`Setup::DelegatedCgroup`]'s directory, removed on drop.
    pub cgroup: Option<PathBuf>,
}

/// Why this machine cannot run the rootless tests, if it cannot.
pub fn unavailable() -> Option<&'static str> {
    let have = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !is_root() || !have("unshare") || !have("setpriv") {
        return Some("needs root, unshare and setpriv (util-linux)");
    }
    if fs::read_to_string("/proc/sys/user/max_user_namespaces").is_ok_and(|v| v.trim() == "0") {
        return Some("user namespaces are disabled (user.max_user_namespaces = 0)");
    }
    let setuid = |p: &str| fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o4000 != 0);
    if !setuid("/usr/bin/newuidmap") || !setuid("/usr/bin/newgidmap") {
        return Some("newuidmap/newgidmap are not installed setuid (apt-get install uidmap)");
    }
    None
}

impl Rootless {
    pub fn new(setup: Setup) -> Rootless {
        Rootless::build(setup, None)
    }

    /// As [`Rootless::new`], with `other`'s user home: the namespaces of two loongds of one
    /// user, which share its slot claim file.
    pub fn sharing_user_home(setup: Setup, other: &Rootless) -> Rootless {
        Rootless::build(setup, Some(other.user_home.clone()))
    }

    /// The user's home directory.
    pub fn user_home(&self) -> &Path {
        &self.user_home
    }

    fn build(setup: Setup, shared_home: Option<PathBuf>) -> Rootless {
        let own_user_home = shared_home.is_none().then(|| {
            let d = tempfile::Builder::new()
                .prefix("lrlhome")
                .tempdir_in("/tmp")
                .expect("user home");
            std::os::unix::fs::chown(d.path(), Some(UID), Some(UID)).expect("chown user home");
            d
        });
        let user_home = shared_home.unwrap_or_else(|| {
            own_user_home
                .as_ref()
                .expect("own user home")
                .path()
                .to_path_buf()
        });
        let dir = tempfile::Builder::new()
            .prefix("lrl")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let etc = dir.path().join("etc");
        fs::create_dir(&etc).expect("etc");
        let host = |f: &str| fs::read_to_string(Path::new("/etc").join(f)).unwrap_or_default();
        fs::write(
            etc.join("passwd"),
            format!(
                "{}{USER}:x:{UID}:{UID}:Loong rootless test:{}:/usr/sbin/nologin\n",
                host("passwd"),
                user_home.display()
            ),
        )
        .expect("passwd");
        fs::write(
            etc.join("group"),
            format!("{}{USER}:x:{UID}:\n", host("group")),
        )
        .expect("group");
        let range = if setup == Setup::NoRange {
            "someoneelse:200000:65536\n".to_string()
        } else {
            format!("{USER}:{SUB_START}:{SUB_COUNT}\n")
        };
        for f in ["subuid", "subgid"] {
            fs::write(etc.join(f), &range).expect("sub ranges");
        }
        fs::create_dir(dir.path().join("layers")).expect("layers");
        let cgroup = (setup == Setup::DelegatedCgroup).then(|| {
            let mount = cgroup_v2_mount().expect("a cgroup v2 hierarchy (see cgroup_v2_mount)");
            let name = dir.path().file_name().expect("temp dir name").to_owned();
            let cg = mount.join(name);
            fs::create_dir(&cg).expect("create the delegated cgroup");
            for f in [
                "",
                "cgroup.procs",
                "cgroup.subtree_control",
                "cgroup.threads",
            ] {
                std::os::unix::fs::chown(cg.join(f), Some(UID), Some(UID)).expect("delegate");
            }
            cg
        });
        Rootless {
            dir,
            setup,
            user_home,
            _own_user_home: own_user_home,
            cgroup,
        }
    }

    /// A home owned by the rootless user, with `config` as its `loongd.toml`.
    pub fn home(&self, config: &str) -> Home {
        let home = Home::with_config(config);
        chown_tree(home.path());
        home
    }

    /// Starts loongd on `home` as the user, inside the namespace (it stays there).
    pub fn start(&self, home: &Home) -> u32 {
        let script = r#"set -e
            mount -t tmpfs loong-rootless "$1/layers"
            mkdir -p "$1/layers/u" "$1/layers/w"
            mount -t overlay loong-etc -o "lowerdir=/etc,upperdir=$1/layers/u,workdir=$1/layers/w" /etc
            for f in passwd group subuid subgid; do cat "$1/etc/$f" > "/etc/$f"; done
            if [ "$2" = no-tool ]; then mount --bind /dev/null /usr/bin/newuidmap; fi
            case "$2" in
                cgroup) echo $$ > "$7/cgroup.procs" ;;
                unit-proc) sh -c "$6" sh "$1/layers" subset ;;
                protect-kernel-proc) sh -c "$6" sh "$1/layers" - ;;
            esac
            if [ "$2" = idmap ]; then
                mount -t tmpfs -o mode=1777 loong-run /run
                "$3" --reuid="$4" --regid="$4" --clear-groups "$5" --idmap /run/loong-idmap.sock </dev/null >/dev/null 2>"$1/idmap.log" &
                echo $! > "$1/idmap.pid"
                n=0; while [ ! -S /run/loong-idmap.sock ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done
            fi
            shift 7
            exec "$@""#;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "-m",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(self.dir.path())
        .arg(match self.setup {
            Setup::NoTool => "no-tool",
            Setup::NoNewPrivsWithIdmap => "idmap",
            Setup::ProtectKernelProc => "protect-kernel-proc",
            Setup::UnitProc => "unit-proc",
            Setup::DelegatedCgroup => "cgroup",
            _ => "-",
        })
        .arg("setpriv")
        .arg(UID.to_string())
        .arg(bin("loong-spawn"))
        .arg(UNIT_PROC_LAYOUT)
        .arg(self.cgroup.as_deref().unwrap_or(Path::new("-")));
        cmd.args(setpriv(matches!(
            self.setup,
            Setup::NoNewPrivs | Setup::NoNewPrivsWithIdmap
        )));
        cmd.arg(bin("loongctl"))
            .arg("--home")
            .arg(home.path())
            .args(["daemon", "start"])
            .stdin(Stdio::null());
        let out = cmd.output().expect("unshare loongctl daemon start");
        assert!(
            out.status.success(),
            "{}\n{}",
            text(&out.stderr),
            home.log()
        );
        home.status().pid
    }
}

impl Drop for Rootless {
    fn drop(&mut self) {
        // Everything in the delegated cgroup (loongd, its sandboxes), then the directories.
        if let Some(cg) = &self.cgroup {
            let _ = fs::write(cg.join("cgroup.kill"), "1");
            wait_until(Duration::from_secs(10), || {
                fs::read_to_string(cg.join("cgroup.events"))
                    .is_ok_and(|e| e.lines().any(|l| l == "populated 0"))
            });
            for e in fs::read_dir(cg).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    let _ = fs::remove_dir(e.path());
                }
            }
            let _ = fs::remove_dir(cg);
        }
        // The idmap server started in the namespace.
        if let Some(pid) = fs::read_to_string(self.dir.path().join("idmap.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `setpriv` switching to the rootless user (no supplementary groups).
fn setpriv(no_new_privs: bool) -> Vec<String> {
    let mut a = vec![
        "setpriv".to_string(),
        format!("--reuid={UID}"),
        format!("--regid={UID}"),
        "--clear-groups".to_string(),
    ];
    if no_new_privs {
        a.push("--no-new-privs".into());
    }
    a
}

fn chown_tree(p: &Path) {
    std::os::unix::fs::chown(p, Some(UID), Some(UID)).expect("chown");
    if p.is_dir() {
        for e in fs::read_dir(p).expect("read dir").flatten() {
            chown_tree(&e.path());
        }
    }
}

/// `loongctl --home HOME ARGS…` as the rootless user (from the host's namespace: the socket
/// is in the home).
pub fn ctl(home: &Home, args: &[&str]) -> Output {
    command(home, args).output().expect("setpriv loongctl")
}

fn command(home: &Home, args: &[&str]) -> Command {
    let p = setpriv(false);
    let mut c = Command::new(&p[0]);
    c.args(&p[1..])
        .arg(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(args)
        .stdin(Stdio::null());
    c
}

/// A `sleep` with a marker argument, run in a sandbox of `tier` in the background.
fn sleeper(home: &Home, tier: &str, marker: &str) -> Child {
    command(
        home,
        &["sandbox", "run", "--tier", tier, "--", "/bin/sleep", marker],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("sandbox run sleep")
}

/// The pid of the process whose command line is `sleep MARKER`.
fn find_sleep(marker: &str) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let argv: Vec<&[u8]> = cmd.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
        // The sleep itself (argv[0] is its path), not the loongctl that asked for it.
        (argv.len() == 2 && argv[0].ends_with(b"sleep") && argv[1] == marker.as_bytes())
            .then_some(pid)
    })
}

/// A field of `/proc/PID/status` (the host's view): its first number.
fn status_field(pid: u32, field: &str) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn in_range(id: u32) -> bool {
    (SUB_START..SUB_START + SUB_COUNT).contains(&id)
}

fn stop(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn a_rootless_sandbox_runs_as_its_own_subordinate_uid_never_loongds() {
    let test = "rootless::a_rootless_sandbox_runs_as_its_own_subordinate_uid_never_loongds";
    if let Some(why) = unavailable() {
        skip(test, why);
        return;
    }
    let ns = Rootless::new(Setup::Ranges);
    let home = ns.home("");
    let loongd = ns.start(&home);
    assert_eq!(status_field(loongd, "Uid:"), Some(UID));
    // Two sandboxes at once (balanced and trusted): each payload, and its reaper (its
    // parent, pid 1 of its pid namespace), runs as a subordinate uid and gid, a different one
    // per sandbox.
    let tag = std::process::id();
    let markers = [
        format!("{}1", 900_000 + tag % 1000),
        format!("{}2", 900_000 + tag % 1000),
    ];
    let a = sleeper(&home, "balanced", &markers[0]);
    let b = sleeper(&home, "trusted", &markers[1]);
    let mut pids = [0u32; 2];
    for (i, m) in markers.iter().enumerate() {
        assert!(
            wait_until(Duration::from_secs(20), || find_sleep(m).is_some()),
            "sandbox {m} never started: {}",
            home.log()
        );
        pids[i] = find_sleep(m).unwrap_or_default();
    }
    let mut uids = Vec::new();
    for pid in pids {
        let uid = status_field(pid, "Uid:").expect("payload uid");
        let gid = status_field(pid, "Gid:").expect("payload gid");
        assert!(
            in_range(uid) && in_range(gid),
            "payload {pid}: uid {uid} gid {gid}"
        );
        assert_ne!(uid, UID);
        // No supplementary group of loongd's survives.
        let s = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let groups = s
            .lines()
            .find(|l| l.starts_with("Groups:"))
            .unwrap_or_default();
        assert!(
            groups
                .split_whitespace()
                .skip(1)
                .all(|g| g.parse().is_ok_and(in_range)),
            "{groups}"
        );
        let reaper = status_field(pid, "PPid:").expect("reaper");
        let reaper_uid = status_field(reaper, "Uid:").expect("reaper uid");
        assert_eq!(reaper_uid, uid, "the reaper {reaper} of {pid}");
        uids.push(uid);
    }
    assert_ne!(uids[0], uids[1], "two live sandboxes share a uid");
    // Positive control for the host-side view: loongd itself is the user's own uid.
    assert!(!in_range(status_field(loongd, "Uid:").unwrap_or_default()));
    stop(a);
    stop(b);

    // A directory of loongd's user (as its home is: 0755 here, so only the uid keeps others
    // out), granted for writing: loongd's uid can write it, a sandbox cannot.
    let own = tempfile::Builder::new()
        .prefix("lrl-own")
        .tempdir_in("/tmp")
        .expect("own dir");
    fs::set_permissions(own.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    chown_tree(own.path());
    let dir = own.path().display().to_string();
    let write = |file: &str| format!("echo x > {dir}/{file}");
    let control = Command::new("setpriv")
        .args(&setpriv(false)[1..])
        .args(["sh", "-c", &write("by-loongd")])
        .output()
        .expect("setpriv sh");
    assert!(control.status.success(), "{}", text(&control.stderr));
    assert!(own.path().join("by-loongd").exists());
    for tier in ["balanced", "trusted"] {
        let out = ctl(
            &home,
            &[
                "sandbox",
                "run",
                "--tier",
                tier,
                "--write",
                &dir,
                "--",
                "/bin/sh",
                "-c",
                &write(tier),
            ],
        );
        assert_ne!(out.status.code(), Some(0), "{tier}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("Permission denied"),
            "{tier}: {}",
            text(&out.stderr)
        );
        assert!(
            !own.path().join(tier).exists(),
            "{tier} wrote loongd's directory"
        );
    }
    // And the sandbox did run: it can write where its own uid may.
    let open = tempfile::Builder::new()
        .prefix("lrl-open")
        .tempdir_in("/tmp")
        .expect("open dir");
    fs::set_permissions(open.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let odir = open.path().display().to_string();
    let out = ctl(
        &home,
        &[
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--write",
            &odir,
            "--",
            "/bin/sh",
            "-c",
            &format!("echo x > {odir}/f"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let made = fs::metadata(open.path().join("f")).expect("written");
    assert!(in_range(std::os::unix::fs::MetadataExt::uid(&made)));
    // doctor names the mode and the ranges.
    let doctor = ctl(&home, &["doctor", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&doctor.stdout).expect("doctor json");
    assert_eq!(v["ids_mode"], "rootless with subordinate ids", "{v}");
    assert!(
        v["ids_detail"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("uids {SUB_START}..")) && d.contains(USER)),
        "{v}"
    );
}

#[test]
fn rootless_without_a_range_newuidmap_or_with_no_new_privs_refuses_unless_degraded() {
    let test =
        "rootless::rootless_without_a_range_newuidmap_or_with_no_new_privs_refuses_unless_degraded";
    if let Some(why) = unavailable() {
        skip(test, why);
        return;
    }
    let run = |home: &Home| {
        ctl(
            home,
            &["sandbox", "run", "--tier", "balanced", "--", "/bin/true"],
        )
    };
    for (setup, says) in [
        (Setup::NoRange, "/etc/subuid gives the user loongrl"),
        (Setup::NoTool, "newuidmap is not installed"),
        (Setup::NoNewPrivs, "no_new_privs"),
    ] {
        let ns = Rootless::new(setup);
        let home = ns.home("");
        ns.start(&home);
        let out = run(&home);
        let err = text(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{setup:?}: {err}");
        assert!(
            err.contains("refusing to run a sandbox as loongd's own uid") && err.contains(says),
            "{setup:?}: {err}"
        );
        let doctor = ctl(&home, &["doctor", "--json"]);
        assert_eq!(doctor.status.code(), Some(6), "{setup:?}");
        let v: serde_json::Value = serde_json::from_slice(&doctor.stdout).expect("doctor json");
        assert_eq!(
            v["ids_mode"], "rootless without subordinate ids (sandboxes refused)",
            "{v}"
        );
        // The degraded option: the same host runs it, as loongd's own uid, and says so in
        // doctor and in the start record.
        let degraded = ns.home("[sandbox]\nrootless_own_uid = true\n");
        ns.start(&degraded);
        let out = ctl(
            &degraded,
            &[
                "sandbox", "run", "--tier", "balanced", "--", "/bin/sh", "-c", "id -u",
            ],
        );
        assert_eq!(
            (out.status.code(), text(&out.stdout).trim()),
            (Some(0), UID.to_string().as_str()),
            "{setup:?}: {}",
            text(&out.stderr)
        );
        let doctor = ctl(&degraded, &["doctor", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&doctor.stdout).expect("doctor json");
        assert_eq!(v["ids_mode"], "rootless degraded (loongd's own uid)", "{v}");
        let trail = ctl(
            &degraded,
            &["audit", "recent", "--kind", "daemon.started", "--json"],
        );
        let trail = text(&trail.stdout);
        assert!(
            trail.contains("rootless degraded (loongd's own uid)"),
            "daemon.started does not record the mode: {trail}"
        );
    }
    // Control: with a range, the tool and privileges, the same run succeeds.
    let ns = Rootless::new(Setup::Ranges);
    let home = ns.home("");
    ns.start(&home);
    let out = run(&home);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// loongd's own workers (a WASM plugin's) run rootless too, each as a subordinate uid, and
/// still answer.
#[test]
fn plugins_run_under_a_rootless_loongd_with_subordinate_ids() {
    let test = "rootless::plugins_run_under_a_rootless_loongd_with_subordinate_ids";
    if let Some(why) = unavailable() {
        skip(test, why);
        return;
    }
    let ns = Rootless::new(Setup::Ranges);
    let home = ns.home("");
    crate::workers::install_examples(&home);
    chown_tree(home.path());
    ns.start(&home);
    let out = ctl(&home, &["invoke", "echo", "--input", r#"{"u":1}"#]);
    assert_eq!(
        (out.status.code(), text(&out.stdout).trim()),
        (Some(0), r#"{"u":1}"#),
        "{}\n{}",
        text(&out.stderr),
        home.log()
    );
    let out = ctl(&home, &["workers", "list", "--json"]);
    let ws: serde_json::Value = serde_json::from_slice(&out.stdout).expect("workers JSON");
    let pid = ws[0]["pid"].as_u64().expect("pid");
    let worker = crate::workers::find_descendant(pid, "loong-worker-wa").expect("worker process");
    let uid = status_field(worker as u32, "Uid:").expect("worker uid");
    assert!(in_range(uid), "the worker runs as uid {uid}");
    // Its address space is unbounded (wasmtime's reservations); its memory is bounded all the
    // same: by its cgroup's memory.max where a cgroup holds it, else by RLIMIT_DATA.
    let limits = fs::read_to_string(format!("/proc/{worker}/limits")).expect("limits");
    let data = limits
        .lines()
        .find(|l| l.starts_with("Max data size"))
        .and_then(|l| l.split_whitespace().nth(3))
        .expect("Max data size")
        .to_string();
    let cgroup = fs::read_to_string(format!("/proc/{worker}/cgroup")).unwrap_or_default();
    let by_cgroup = cgroup
        .lines()
        .filter_map(|l| l.strip_prefix("0::"))
        .flat_map(|p| {
            ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"].map(|m| format!("{m}{p}/memory.max"))
        })
        .any(|f| fs::read_to_string(f).is_ok_and(|v| v.trim() != "max"));
    assert!(
        data != "unlimited" || by_cgroup,
        "the worker's memory is unbounded:\n{limits}\n{cgroup}"
    );
}

/// Two loongds of one user (two homes) share its subordinate ranges and each numbers its
/// slots from 0; a slot is claimed across processes, so their live sandboxes never run as one
/// id (before, both ran as the range's first id and could signal each other). Both loongds
/// run their sandbox: the second takes the next slot rather than refuse.
#[test]
fn two_loongds_of_one_user_never_give_two_live_sandboxes_one_subordinate_id() {
    let test = "rootless::two_loongds_of_one_user_never_give_two_live_sandboxes_one_subordinate_id";
    if let Some(why) = unavailable() {
        skip(test, why);
        return;
    }
    let first = Rootless::new(Setup::Ranges);
    let second = Rootless::sharing_user_home(Setup::Ranges, &first);
    let (first_home, second_home) = (first.home(""), second.home(""));
    first.start(&first_home);
    second.start(&second_home);
    let tag = std::process::id();
    let markers = [
        format!("{}3", 900_000 + tag % 1000),
        format!("{}4", 900_000 + tag % 1000),
    ];
    let a = sleeper(&first_home, "balanced", &markers[0]);
    assert!(
        wait_until(Duration::from_secs(20), || find_sleep(&markers[0])
            .is_some()),
        "the first loongd's sandbox never started: {}",
        first_home.log()
    );
    let b = sleeper(&second_home, "balanced", &markers[1]);
    assert!(
        wait_until(Duration::from_secs(20), || find_sleep(&markers[1])
            .is_some()),
        "the second loongd's sandbox never started: {}",
        second_home.log()
    );
    let uid = |m: &str| {
        find_sleep(m)
            .and_then(|pid| status_field(pid, "Uid:"))
            .expect("payload uid")
    };
    let (ua, ub) = (uid(&markers[0]), uid(&markers[1]));
    assert!(in_range(ua) && in_range(ub), "{ua} {ub}");
    assert_ne!(ua, ub, "two loongds' sandboxes run as one subordinate uid");
    stop(a);
    stop(b);
}

/// No other account can hold a slot of the user's: the abstract socket names that claimed
/// slots before (`loong-subids/UID/SLOT`, which any account may bind, so one could deny every
/// spawn) claim nothing, and the slot claim file in the user's home is the user's alone to
/// open. Control: the sandbox runs as slot 0's id with slot 0's old name held by root.
#[test]
fn another_account_holding_a_slots_name_or_file_takes_no_slot() {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let test = "rootless::another_account_holding_a_slots_name_or_file_takes_no_slot";
    if let Some(why) = unavailable() {
        skip(test, why);
        return;
    }
    let ns = Rootless::new(Setup::Ranges);
    let home = ns.home("");
    ns.start(&home);
    // The old claim: a SOCK_SEQPACKET socket bound to the name (the kernel keeps abstract
    // names apart by socket type).
    let squat = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let name = UnixAddr::new_abstract(format!("loong-subids/{UID}/0").as_bytes()).expect("name");
    bind(std::os::fd::AsRawFd::as_raw_fd(&squat), &name).expect("squat slot 0");
    let out = ctl(
        &home,
        &[
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--",
            "/bin/cat",
            "/proc/self/uid_map",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let map = text(&out.stdout);
    let outside: Vec<u32> = map
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .filter(|&id| in_range(id))
        .collect();
    assert_eq!(outside, [SUB_START], "slot 0's id: {map}");
    let file = ns.user_home().join(".loong-subids.lock");
    assert!(file.is_file(), "no claim file at {}", file.display());
    for open in [": < \"$0\"", ": <> \"$0\""] {
        let status = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
            ])
            .arg(open)
            .arg(&file)
            .stderr(Stdio::null())
            .status()
            .expect("setpriv");
        assert!(!status.success(), "nobody opened the claim file ({open})");
    }
}

/// Under `no_new_privs` (as every hardened unit without capabilities runs), the setuid
/// `newuidmap` cannot map ids; the idmap server (`loong-idmap.socket`), running as the same
/// user outside `no_new_privs`, runs it for loongd, and the sandbox still gets its own
/// subordinate uid. The server answers only its own uid. Control: without the server the
/// same loongd refuses (`rootless_without_…`).
#[test]
fn under_no_new_privs_the_idmap_server_maps_a_sandbox_to_its_subordinate_uid() {
    let test =
        "rootless::under_no_new_privs_the_idmap_server_maps_a_sandbox_to_its_subordinate_uid";
    if let Some(why) = unavailable() {
        skip(test, why);
        return;
    }
    let ns = Rootless::new(Setup::NoNewPrivsWithIdmap);
    let home = ns.home("");
    let loongd = ns.start(&home);
    let status = fs::read_to_string(format!("/proc/{loongd}/status")).expect("status");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let out = ctl(
        &home,
        &[
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--",
            "/bin/sh",
            "-c",
            "cat /proc/self/uid_map",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stderr),
        home.log()
    );
    // The sandbox's own view of its map: inside 65534 is one id of the range.
    let map = text(&out.stdout);
    let sandbox_line = map
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"65534"))
        .unwrap_or_default();
    let outside: u32 = sandbox_line
        .get(1)
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    assert!(in_range(outside), "{map}");
    // A peer of another uid (root, here) is refused.
    let idmap_pid = fs::read_to_string(ns.dir.path().join("idmap.pid")).expect("idmap pid");
    let sock = format!("/proc/{}/root/run/loong-idmap.sock", idmap_pid.trim());
    let mut conn = std::os::unix::net::UnixStream::connect(&sock).expect("connect idmap");
    // It is answered before it is read: the write may find the server gone.
    let _ = std::io::Write::write_all(&mut conn, b"1 0 0 1 1 0 0 1 1\n");
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut conn, &mut answer);
    assert!(answer.starts_with("error uid 0 may not ask"), "{answer}");
}

/// The rootless unit's `/proc` (`ProcSubset=pid` and `ProtectProc=invisible` over the mounts of
/// `ProtectKernelTunables=` and `ProtectKernelLogs=`, [`Setup::UnitProc`]): sandboxes of every
/// tier start, each in a `/proc` of its own (its pid namespace: its payload is pid 2, its
/// reaper pid 1), and loongd's host report is the same as without the layout. Control, the
/// kernel behaviour the unit relies on: the same locked mounts without the `subset=pid`
/// instance over them, and the kernel refuses every sandbox its `/proc` (`doctor` shows
/// `procfs` missing with the fix, and every tier refused).
#[test]
fn rootless_sandboxes_run_under_the_rootless_units_proc_layout() {
    let test = "rootless::rootless_sandboxes_run_under_the_rootless_units_proc_layout";
    if let Some(why) = unavailable() {
        skip(test, why);
        return;
    }
    let doctor = |home: &Home| {
        let out = ctl(home, &["doctor", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", text(&out.stderr)));
        (
            v["mechanisms"].clone(),
            v["tiers"].clone(),
            v["error"].clone(),
        )
    };
    let plain = Rootless::new(Setup::Ranges);
    let plain_home = plain.home("");
    plain.start(&plain_home);
    let ns = Rootless::new(Setup::UnitProc);
    let home = ns.home("");
    let loongd = ns.start(&home);
    // The layout is in place in loongd's namespace: the subset instance on top, the locked
    // read-only `/proc/sys` under it.
    let mountinfo = fs::read_to_string(format!("/proc/{loongd}/mountinfo")).expect("mountinfo");
    assert!(
        mountinfo
            .lines()
            .any(|l| l.contains(" /proc ") && l.contains("subset=pid")),
        "{mountinfo}"
    );
    assert!(
        mountinfo
            .lines()
            .any(|l| l.contains(" /proc/sys ") && l.contains(" ro,")),
        "{mountinfo}"
    );
    assert!(!Path::new(&format!("/proc/{loongd}/root/proc/sys")).exists());
    // The restricted tier's filter admits no shell (no `fork`): a program alone.
    let out = ctl(
        &home,
        &["sandbox", "run", "--tier", "restricted", "--", "/bin/true"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "restricted: {}\n{}",
        text(&out.stderr),
        home.log()
    );
    for tier in ["balanced", "trusted"] {
        let out = ctl(
            &home,
            &[
                "sandbox",
                "run",
                "--tier",
                tier,
                "--",
                "/bin/sh",
                "-c",
                "echo $$; ls /proc/sys",
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{tier}: {}\n{}",
            text(&out.stderr),
            home.log()
        );
        let stdout = text(&out.stdout);
        assert_eq!(stdout.lines().next(), Some("2"), "{tier}: {stdout}");
        assert!(stdout.lines().any(|l| l == "kernel"), "{tier}: {stdout}");
    }
    assert_eq!(doctor(&home), doctor(&plain_home));
    // Control: the locked mounts alone. doctor says so, with the fix, and every tier is
    // refused up front; degraded, the helper's own mount is refused.
    let locked = Rootless::new(Setup::ProtectKernelProc);
    let locked_home = locked.home("");
    locked.start(&locked_home);
    let (mechanisms, tiers, _) = doctor(&locked_home);
    let procfs = mechanisms
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "procfs"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(procfs["available"], false, "{procfs}");
    assert!(
        procfs["detail"]
            .as_str()
            .is_some_and(|d| d.contains("refused: EPERM"))
            && procfs["fix"]
                .as_str()
                .is_some_and(|f| f.contains("ProcSubset=pid")),
        "{procfs}"
    );
    assert!(
        tiers
            .as_array()
            .is_some_and(|t| t.iter().all(|t| t["enforceable"] == false)),
        "{tiers}"
    );
    let out = ctl(
        &locked_home,
        &["sandbox", "run", "--tier", "balanced", "--", "/bin/true"],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("procfs"),
        "{}",
        text(&out.stderr)
    );
    let out = ctl(
        &locked_home,
        &[
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--allow-degraded",
            "--",
            "/bin/true",
        ],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("proc"), "{}", text(&out.stderr));
}

/// A cgroup v2 subtree delegated to loongd's user without the memory and pids controllers
/// (this machine's v2 hierarchy has neither): loongd places each sandbox in a child cgroup of
/// its own there and kills it through the cgroup, and `doctor` names the missing controllers
/// and says that `--memory` and `--pids` are rlimits; a run asking for them is refused unless
/// degraded (control: with `--allow-degraded` it runs). Control for the placement: a loongd
/// without the delegation (`Setup::Ranges`) runs its sandbox in the cgroup it was started in.
#[test]
fn a_rootless_loongd_places_each_sandbox_in_a_child_of_its_delegated_cgroup_and_kills_it_there() {
    let test = "rootless::a_rootless_loongd_places_each_sandbox_in_a_child_of_its_delegated_cgroup_and_kills_it_there";
    if let Some(why) = unavailable() {
        skip(test, why);
        return;
    }
    if cgroup_v2_mount().is_none() {
        skip(test, "no cgroup v2 hierarchy is mounted");
        return;
    }
    let ns = Rootless::new(Setup::DelegatedCgroup);
    let cg = ns.cgroup.clone().expect("the delegated cgroup");
    if !cg.join("cgroup.kill").exists() {
        skip(test, "the kernel has no cgroup.kill (Linux 5.14)");
        return;
    }
    let name = cg
        .file_name()
        .and_then(|n| n.to_str())
        .expect("cgroup name")
        .to_string();
    let home = ns.home("");
    let loongd = ns.start(&home);
    let v2_path = |pid: u32| {
        fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            })
    };
    assert_eq!(v2_path(loongd), Some(format!("/{name}")));
    let out = ctl(&home, &["doctor", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    let cgroup = v["mechanisms"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "cgroup"))
        .cloned()
        .unwrap_or_default();
    let detail = cgroup["detail"].as_str().unwrap_or_default();
    assert_eq!(cgroup["available"], false, "{cgroup}");
    assert!(
        detail.contains(&format!(
            "{} without the memory and pids controllers",
            cg.display()
        )) && detail.contains("--memory and --pids are rlimits"),
        "{detail}"
    );
    let lacks = v["ids_lacks"].to_string();
    assert!(
        lacks.contains("lacks the memory and pids controllers: each sandbox gets a child cgroup"),
        "{lacks}"
    );
    // Limits it cannot hold as cgroup limits are refused, naming what is missing, unless the
    // run is degraded (then they are rlimits).
    let limited = |home: &Home, degraded: bool| {
        let mut args = vec!["sandbox", "run", "--tier", "balanced", "--memory", "64M"];
        if degraded {
            args.push("--allow-degraded");
        }
        args.extend(["--", "/bin/true"]);
        ctl(home, &args)
    };
    let out = limited(&home, false);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains(&format!(
            "the delegated cgroup {} lacks the memory and pids controllers",
            cg.display()
        )),
        "{}",
        text(&out.stderr)
    );
    let out = limited(&home, true);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("ran DEGRADED, without cgroup"),
        "{}",
        text(&out.stderr)
    );
    let tag = std::process::id();
    let markers = [
        format!("{}5", 900_000 + tag % 1000),
        format!("{}6", 900_000 + tag % 1000),
    ];
    let a = sleeper(&home, "balanced", &markers[0]);
    let b = sleeper(&home, "trusted", &markers[1]);
    let mut children = Vec::new();
    for m in &markers {
        assert!(
            wait_until(Duration::from_secs(20), || find_sleep(m).is_some()),
            "sandbox {m} never started: {}",
            home.log()
        );
        let pid = find_sleep(m).unwrap_or_default();
        let path = v2_path(pid).unwrap_or_default();
        let child = path
            .strip_prefix(&format!("/{name}/"))
            .unwrap_or_else(|| panic!("sandbox {pid} is in {path}, not a child of /{name}"))
            .to_string();
        assert!(!child.contains('/') && cg.join(&child).is_dir(), "{path}");
        children.push(child);
    }
    assert_ne!(children[0], children[1]);
    // Killed at its timeout: the sandbox's cgroup is emptied and removed.
    let out = ctl(
        &home,
        &[
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--timeout",
            "1",
            "--",
            "/bin/sleep",
            "30",
        ],
    );
    assert!(
        text(&out.stderr).contains("killed at the --timeout"),
        "{}",
        text(&out.stderr)
    );
    stop(a);
    stop(b);
    let leftover = || {
        fs::read_dir(&cg)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || leftover() == 0),
        "{} sandbox cgroups left under {}",
        leftover(),
        cg.display()
    );
    // Control: without the delegation the sandbox stays in loongd's own cgroup.
    let plain = Rootless::new(Setup::Ranges);
    let plain_home = plain.home("");
    let plain_loongd = plain.start(&plain_home);
    let marker = format!("{}7", 900_000 + tag % 1000);
    let c = sleeper(&plain_home, "balanced", &marker);
    assert!(wait_until(Duration::from_secs(20), || find_sleep(&marker).is_some()));
    let pid = find_sleep(&marker).unwrap_or_default();
    assert_eq!(v2_path(pid), v2_path(plain_loongd));
    stop(c);
    let out = limited(&plain_home, false);
    assert!(
        text(&out.stderr).contains("no writable cgroup with the memory and pids controllers"),
        "{}",
        text(&out.stderr)
    );
}

/// The idmap server answers a peer of another uid at once, before reading anything from it:
/// a peer that connects and sends nothing holds the single-threaded server for no time
/// (before, it was read for up to the request timeout, and every spawn of loongd waited).
/// Control: the server then answers its own uid's request.
#[test]
fn the_idmap_server_turns_a_peer_of_another_uid_away_without_reading_it() {
    let test = "rootless::the_idmap_server_turns_a_peer_of_another_uid_away_without_reading_it";
    if !is_root() {
        skip(test, "needs root (to run the server as another uid)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    chown_tree(dir.path());
    let sock = dir.path().join("idmap.sock");
    let p = setpriv(false);
    let server = Killed(
        Command::new(&p[0])
            .args(&p[1..])
            .arg(bin("loong-spawn"))
            .arg("--idmap")
            .arg(&sock)
            .stdin(Stdio::null())
            .spawn()
            .expect("start idmap server"),
    );
    assert!(answers(&sock), "the idmap server never listened");
    let ask = |send: &[u8]| {
        let t = std::time::Instant::now();
        let mut conn = std::os::unix::net::UnixStream::connect(&sock)
            .unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        std::io::Write::write_all(&mut conn, send).expect("write");
        let mut answer = String::new();
        let _ = std::io::Read::read_to_string(&mut conn, &mut answer);
        (answer, t.elapsed())
    };
    // Root connects and sends nothing (the connection stays open for writing).
    let (answer, took) = ask(b"");
    assert!(answer.starts_with("error uid 0 may not ask"), "{answer}");
    assert!(took < Duration::from_secs(2), "held the server {took:?}");
    drop(server);
    // Control: a server of root's own uid reads root's request (and refuses it as
    // malformed).
    let _ = fs::remove_file(&sock);
    let _server = Killed(
        Command::new(bin("loong-spawn"))
            .arg("--idmap")
            .arg(&sock)
            .stdin(Stdio::null())
            .spawn()
            .expect("start idmap server"),
    );
    assert!(answers(&sock), "the idmap server never listened");
    let (answer, _) = ask(b"1 2 3\n");
    assert!(answer.starts_with("error request \"1 2 3\""), "{answer}");
}

/// Whether the server on `sock` takes a connection within 10 s. The socket's file exists from
/// `bind`, before the server's `listen`, when a connect is still refused; an empty connection
/// is answered at once (another uid's) or read to its end (the server's own uid's).
fn answers(sock: &Path) -> bool {
    wait_until(Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(sock).is_ok()
    })
}

/// A child killed and reaped when dropped (also when a test panics).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Rootless without subordinate ids (`rootless_own_uid`) the reaper keeps loongd's uid: it
/// is not dumpable, so a process of loongd's uid outside the sandbox (no capability over it)
/// can neither read its `/proc/PID/environ` nor open its `/proc/PID/mem` (what a ptrace
/// attach gives); the control: the same process opens the payload's, which it may (it owns
/// the sandbox's user namespace). Before, the reaper was made undumpable only with
/// subordinate ids, and any process of loongd's user could ptrace it.
#[test]
fn a_degraded_sandboxs_reaper_is_undumpable_and_out_of_a_same_uid_process_reach() {
    let test =
        "rootless::a_degraded_sandboxs_reaper_is_undumpable_and_out_of_a_same_uid_process_reach";
    if let Some(why) = unavailable() {
        skip(test, why);
        return;
    }
    let ns = Rootless::new(Setup::NoRange);
    let home = ns.home("[sandbox]\nrootless_own_uid = true\n");
    ns.start(&home);
    let marker = "31.41592";
    let run = sleeper(&home, "balanced", marker);
    let mut payload = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            payload = find_sleep(marker);
            payload.is_some()
        }),
        "the sandbox's sleep never ran"
    );
    let payload = payload.unwrap_or_default();
    let reaper = status_field(payload, "PPid:").unwrap_or_default();
    // The same uid on both sides: only the reaper's being undumpable keeps the process out.
    assert_eq!(status_field(reaper, "Uid:"), Some(UID));
    assert_eq!(status_field(payload, "Uid:"), Some(UID));
    let probe = format!(
        "for f in /proc/{reaper}/environ /proc/{reaper}/mem /proc/{payload}/environ /proc/{payload}/mem; do \
         if (exec 3<\"$f\") 2>/dev/null; then echo \"$f open\"; else echo \"$f refused\"; fi; done"
    );
    let p = setpriv(false);
    let out = Command::new(&p[0])
        .args(&p[1..])
        .args(["sh", "-c", &probe])
        .output()
        .expect("setpriv sh");
    stop(run);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}\n{}", text(&out.stderr));
    for f in ["environ", "mem"] {
        let line = format!("/proc/{reaper}/{f} refused");
        assert!(said.contains(&line), "{line}: {said}");
        let line = format!("/proc/{payload}/{f} open");
        assert!(said.contains(&line), "the control, {line}: {said}");
    }
}

/// Starts `loong-spawn --serve` as [`UID`] (which the host's user database does not hold),
/// with `--claims-in DIR` when `claims_in` is given, asks it one malformed request (answered
/// once its claim file is settled), closes its socket and returns whether it answered and
/// what it wrote to stderr.
fn serve_as_the_user(claims_in: Option<&Path>) -> (bool, String) {
    use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    // The server's end goes to the shell only (fd 3 there); cloexec again once it started.
    let inherit = |on: bool| {
        let flags = if on {
            nix::fcntl::FdFlag::empty()
        } else {
            nix::fcntl::FdFlag::FD_CLOEXEC
        };
        nix::fcntl::fcntl(theirs.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(flags))
            .expect("F_SETFD");
    };
    let p = setpriv(false);
    let mut cmd = Command::new("bash");
    cmd.args(["-c", "exec 3<&\"$0\"; exec \"$@\""])
        .arg(theirs.as_raw_fd().to_string())
        .args(&p)
        .arg(bin("loong-spawn"))
        .arg("--serve");
    if let Some(dir) = claims_in {
        cmd.arg("--claims-in").arg(dir);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    inherit(true);
    let spawned = cmd.spawn();
    inherit(false);
    let server = Killed(spawned.expect("start the spawn server"));
    drop(theirs);
    send(ours.as_raw_fd(), b"X", MsgFlags::MSG_NOSIGNAL).expect("send a request");
    nix::sys::socket::setsockopt(
        &ours,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(10, 0),
    )
    .expect("SO_RCVTIMEO");
    let mut answer = [0u8; 16];
    let answered = recv(ours.as_raw_fd(), &mut answer, MsgFlags::empty()).is_ok_and(|n| n >= 5)
        && answer[0] == b'E';
    // Its socket closed, the server exits.
    drop(ours);
    let mut server = server;
    let mut stderr = String::new();
    if let Some(mut err) = server.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
    }
    (answered, stderr)
}

/// The spawn server looks no user up (a static `loong-spawn` reaches no NSS module, so an
/// LDAP or sssd account would have no home there): loongd gives it the directory of its slot
/// claim file (its user's home, looked up by loongd), and the server checks and uses that.
/// Run as a uid the host's user database does not hold, it claims in the directory given
/// (before, it looked the uid up and claimed nothing); a directory another account may
/// write, or none, claims nothing, and the server says why and still answers.
#[test]
fn the_spawn_server_claims_slots_where_loongd_says_and_looks_no_user_up() {
    use std::os::unix::fs::MetadataExt;
    let test = "rootless::the_spawn_server_claims_slots_where_loongd_says_and_looks_no_user_up";
    if let Some(why) = unavailable() {
        skip(test, why);
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("lrlclaims")
        .tempdir_in("/tmp")
        .expect("tempdir");
    chown_tree(dir.path());
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
    let file = dir.path().join(".loong-subids.lock");
    let (answered, stderr) = serve_as_the_user(Some(dir.path()));
    assert!(answered, "the server did not answer: {stderr}");
    let meta = fs::metadata(&file)
        .unwrap_or_else(|e| panic!("no claim file at {}: {e}; {stderr}", file.display()));
    assert_eq!((meta.uid(), meta.mode() & 0o777), (UID, 0o600));
    assert!(!stderr.contains("no subordinate ids"), "{stderr}");
    // A directory others may write: refused, nothing created there.
    fs::remove_file(&file).expect("remove the claim file");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let (answered, stderr) = serve_as_the_user(Some(dir.path()));
    assert!(answered, "the server did not answer: {stderr}");
    assert!(stderr.contains("alone may write"), "{stderr}");
    assert!(
        !file.exists(),
        "a claim file in a directory others may write"
    );
    // No directory given: refused, saying what loongd gives.
    let (answered, stderr) = serve_as_the_user(None);
    assert!(answered, "the server did not answer: {stderr}");
    assert!(stderr.contains("--claims-in"), "{stderr}");
}

/// glibc's lookups through NSS (users, groups, shadow, hosts, services, protocols,
/// netgroups, the login name): a static `loong-spawn` (as the package links it) would still
/// `dlopen` the `libnss_*` modules for any of them, so it must call none. Checked on the
/// dynamic build the tests run, whose imports show them.
const NSS_LOOKUPS: &[&str] = &[
    "getpwuid_r",
    "getpwnam_r",
    "getpwuid",
    "getpwnam",
    "getpwent",
    "getpwent_r",
    "getgrgid_r",
    "getgrnam_r",
    "getgrgid",
    "getgrnam",
    "getgrent",
    "getgrent_r",
    "getgrouplist",
    "initgroups",
    "getspnam",
    "getspnam_r",
    "getaddrinfo",
    "gethostbyname",
    "gethostbyname_r",
    "gethostbyname2",
    "gethostbyname2_r",
    "gethostbyaddr",
    "gethostbyaddr_r",
    "gethostent",
    "gethostent_r",
    "getnameinfo",
    "getservbyname",
    "getservbyname_r",
    "getservbyport",
    "getservbyport_r",
    "getservent",
    "getservent_r",
    "getprotobyname",
    "getprotobyname_r",
    "getprotobynumber",
    "getprotobynumber_r",
    "getprotoent",
    "getprotoent_r",
    "innetgr",
    "getnetgrent",
    "getnetgrent_r",
    "setnetgrent",
    "getlogin",
    "getlogin_r",
];

/// The glibc functions `binary` imports (`nm -D --undefined-only`), or `None` without `nm`.
fn imports(binary: &Path) -> Option<Vec<String>> {
    let out = Command::new("nm")
        .args(["-D", "--undefined-only"])
        .arg(binary)
        .output()
        .ok()?;
    assert!(out.status.success(), "nm: {}", text(&out.stderr));
    Some(
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().last())
            .map(|s| s.split('@').next().unwrap_or(s).to_string())
            .collect(),
    )
}

/// `loong-spawn` (the helper, the spawn server, the idmap server, the probe) and loongctl call
/// no user, group, host or service database lookup: loongd looks up what it needs and gives
/// it to the server (`--claims-in`), so linking it statically loses no LDAP or sssd account;
/// and loongctl, which the package builds for musl (whose NSS and resolver are not glibc's),
/// does nothing musl would do differently there. Control: loongd, which looks its user up,
/// imports `getpwuid_r`, so the check sees such an import.
#[test]
fn loongctl_and_loong_spawn_look_up_no_user_or_name() {
    let test = "rootless::loongctl_and_loong_spawn_look_up_no_user_or_name";
    for name in ["loong-spawn", "loongctl"] {
        let Some(imported) = imports(&bin(name)) else {
            skip(test, "nm is not installed (binutils)");
            return;
        };
        // Control: nm read a dynamic symbol table (a static binary shows none, and so no
        // lookup, whatever it calls).
        assert!(
            imported.iter().any(|s| s == "write"),
            "{name}: no dynamic imports to read (linked static?): {imported:?}"
        );
        let found: Vec<&String> = imported
            .iter()
            .filter(|s| NSS_LOOKUPS.contains(&s.as_str()))
            .collect();
        assert!(found.is_empty(), "{name} imports {found:?}");
    }
    // The musl loongctl the package ships, which links its libc in: musl's user, group, host
    // and service lookups read these files by name, so none is in the binary. Control: the
    // spin's /proc/stat, which it reads, is.
    match crate::support::musl_loongctl() {
        Some(musl) => {
            let bytes = std::fs::read(&musl).expect("read the musl loongctl");
            let holds = |s: &str| bytes.windows(s.len()).any(|w| w == s.as_bytes());
            assert!(holds("/proc/stat"), "the control string is missing");
            for file in [
                "/etc/passwd",
                "/etc/group",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/etc/services",
            ] {
                assert!(!holds(file), "{} names {file}", musl.display());
            }
        }
        None => skip(
            test,
            "the musl loongctl is not built (the test command builds it); its files not checked",
        ),
    }
    let loongd = imports(&bin("loongd")).expect("nm");
    assert!(loongd.iter().any(|s| s == "getpwuid_r"), "{loongd:?}");
}
