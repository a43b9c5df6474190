//! Packaging and operations: the Debian package `scripts/package` builds (its contents, lintian,
//! loongd finding its workers in `/usr/lib/loong/`) and the generated completions.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use crate::support::{bin, bin_dir, skip, text, Home};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The package, built once per test run from the binaries the tests use (`--bins`).
fn package() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let out = Command::new(workspace().join("scripts/package"))
            .arg("--bins")
            .arg(bin_dir())
            .output()
            .expect("run scripts/package");
        assert!(
            out.status.success(),
            "scripts/package failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let deb = PathBuf::from(text(&out.stdout).trim());
        assert!(
            deb.starts_with(workspace().join("target/debian")),
            "{}",
            deb.display()
        );
        deb
    })
}

const BINARIES: [&str; 7] = [
    "usr/bin/loongd",
    "usr/bin/loongctl",
    "usr/lib/loong/loong-spawn",
    "usr/lib/loong/loong-worker-wasm",
    "usr/lib/loong/loong-worker-http",
    "usr/lib/loong/loong-worker-builtin",
    "usr/lib/loong/loong-worker-stdio",
];

#[test]
fn package_holds_every_binary_the_unit_the_conffile_man_pages_and_completions() {
    if !have("dpkg-deb") {
        skip(
            "packaging::package_holds_every_binary…",
            "dpkg-deb is not installed (apt-get install dpkg)",
        );
        return;
    }
    let deb = package();
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(deb)
        .output()
        .expect("dpkg-deb -c");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    let files: BTreeSet<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches("./"))
        .collect();
    let mut wanted: Vec<&str> = BINARIES.to_vec();
    wanted.extend([
        "lib/systemd/system/loongd.service",
        "usr/lib/sysusers.d/loong.conf",
        "usr/lib/tmpfiles.d/loong.conf",
        "etc/loong/loongd.toml",
        "usr/share/man/man8/loongd.8.gz",
        "usr/share/man/man1/loongctl.1.gz",
        "usr/share/bash-completion/completions/loongctl",
        "usr/share/zsh/vendor-completions/_loongctl",
        "usr/share/fish/vendor_completions.d/loongctl.fish",
        "usr/share/loong/tiers/restricted.toml",
        "usr/share/loong/packs/operator.toml",
        "usr/share/loong/denylist.toml",
        "usr/share/doc/loong/copyright",
    ]);
    for w in wanted {
        assert!(files.contains(w), "{w} is not in the package:\n{listing}");
    }
    // The binaries are executable; nothing else is.
    for l in listing.lines() {
        let path = l.split_whitespace().nth(5).unwrap_or_default();
        let rel = path.trim_start_matches("./");
        if l.starts_with('-') {
            let exec = l.as_bytes().get(3) == Some(&b'x');
            assert_eq!(exec, BINARIES.contains(&rel), "{l}");
        }
    }
    // The configuration is a conffile, so an operator's edits survive an upgrade.
    let conffiles = Command::new("dpkg-deb")
        .arg("-I")
        .arg(deb)
        .arg("conffiles")
        .output()
        .expect("dpkg-deb -I");
    assert_eq!(text(&conffiles.stdout).trim(), "/etc/loong/loongd.toml");
    // It is loongd's own commented default.
    let extracted = tempfile::tempdir().expect("tempdir");
    extract(deb, extracted.path());
    let shipped = fs::read_to_string(extracted.path().join("etc/loong/loongd.toml")).expect("conf");
    let own = Command::new(bin("loongd"))
        .arg("--default-config")
        .output()
        .expect("loongd --default-config");
    assert_eq!(shipped, text(&own.stdout));
    assert!(shipped.contains("# level = \"info\""), "{shipped}");
}

fn extract(deb: &Path, dir: &Path) {
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(dir)
        .output()
        .expect("dpkg-deb -x");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn package_passes_lintian() {
    if !have("dpkg-deb") || !have("lintian") {
        skip(
            "packaging::package_passes_lintian",
            "lintian is not installed (apt-get install lintian; .ci/run installs it)",
        );
        return;
    }
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning"])
        .arg(package())
        .output()
        .expect("lintian");
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "lintian: {report}");
    assert!(
        !report
            .lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "{report}"
    );
}

#[test]
fn packaged_loongd_finds_its_workers_in_usr_lib_loong() {
    if !have("dpkg-deb") {
        skip(
            "packaging::packaged_loongd_finds_its_workers_in_usr_lib_loong",
            "dpkg-deb is not installed",
        );
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    extract(package(), root.path());
    let ctl = root.path().join("usr/bin/loongctl");
    // Nothing but loongd and loongctl in usr/bin: the workers are only in usr/lib/loong.
    assert!(!root.path().join("usr/bin/loong-worker-wasm").exists());
    let home = Home::new();
    crate::workers::install_examples(&home);
    let run = |args: &[&str]| {
        Command::new(&ctl)
            .arg("--home")
            .arg(home.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("packaged loongctl")
    };
    let started = run(&["daemon", "start"]);
    assert!(started.status.success(), "{}", text(&started.stderr));
    let status = run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let pid = v["pid"].as_u64().expect("pid");
    let exe = fs::read_link(format!("/proc/{pid}/exe")).expect("loongd exe");
    assert!(
        exe.starts_with(fs::canonicalize(root.path()).expect("root")),
        "the packaged loongd runs: {}",
        exe.display()
    );
    // The spawn helper was found (the sandbox is available) and a WASM worker started.
    let doctor = run(&["doctor", "--json"]);
    assert!(
        !text(&doctor.stdout).contains("loong-spawn"),
        "{}",
        text(&doctor.stdout)
    );
    let echo = run(&["invoke", "echo", "--input", r#"{"ping":1}"#]);
    assert_eq!(
        (echo.status.code(), text(&echo.stdout).trim()),
        (Some(0), r#"{"ping":1}"#),
        "{}\n{}",
        text(&echo.stderr),
        home.log()
    );
    let _ = run(&["daemon", "stop"]);
}

#[test]
fn completions_are_generated_for_bash_zsh_and_fish() {
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef loongctl"),
        ("fish", "complete -c loongctl"),
    ] {
        let out = Command::new(bin("loongctl"))
            .args(["completions", shell])
            .env_remove("HOME")
            .env_remove("LOONG_HOME")
            .env_remove("XDG_STATE_HOME")
            .output()
            .expect("loongctl completions");
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(needle), "{shell}: {script}");
        assert!(script.contains("daemon"), "{shell} completes subcommands");
    }
    // An unknown shell is a usage error.
    let out = Command::new(bin("loongctl"))
        .args(["completions", "tcsh"])
        .output()
        .expect("loongctl completions");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
