//! An install copies exactly what it checked: loongd opens each entry of the operator's
//! package once, beneath the package directory and without following links, and copies from
//! that descriptor; a symlink swapped in mid-install, a FIFO or a device is refused at once
//! and holds up no other plugin operation.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use crate::{
    supply_chain::{ctl_ok, example_module, view, wasm_package},
    support::{self, text, Home},
};

/// Installs attempted while the swapper runs.
const SWAP_ROUNDS: usize = 40;
/// The size of the file copied before the swapped one.
const BLOB_BYTES: usize = 8 * 1024 * 1024;
/// The longest one install (or another plugin operation) may take before it counts as hung.
const NO_HANG: Duration = Duration::from_secs(30);

/// Runs `loongctl ARGS` on `home`, failing the test if it takes longer than [`NO_HANG`].
fn bounded(home: &Home, args: &[&str]) -> std::process::Output {
    let (tx, rx) = mpsc::channel();
    let (bin_home, owned): (PathBuf, Vec<String>) = (
        home.path().to_path_buf(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    std::thread::spawn(move || {
        let out = std::process::Command::new(support::bin("loongctl"))
            .arg("--home")
            .arg(&bin_home)
            .args(&owned)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run loongctl");
        let _ = tx.send(out);
    });
    rx.recv_timeout(NO_HANG)
        .unwrap_or_else(|_| panic!("loongctl {args:?} hung for {NO_HANG:?}"))
}

/// Whether `hay` contains `needle` (first-byte scan, quick even unoptimized).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return true;
    };
    hay.iter()
        .enumerate()
        .filter(|(_, b)| **b == first)
        .any(|(i, _)| hay[i..].starts_with(needle))
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            out.extend(files_containing(&path, needle));
        } else if kind.is_file() && fs::read(&path).is_ok_and(|b| contains(&b, needle)) {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_symlink_swapped_in_while_installing_never_puts_a_secret_into_the_package() {
    let home = Home::new();
    home.start();
    let work = tempfile::Builder::new()
        .prefix("lsw")
        .tempdir_in("/tmp")
        .expect("work");
    // A secret only root can read (a stand-in for loongd's keys/audit.key), and a FIFO.
    let vault = work.path().join("vault");
    fs::create_dir(&vault).expect("vault");
    fs::set_permissions(&vault, fs::Permissions::from_mode(0o700)).expect("chmod");
    let secret = vault.join("audit.key");
    let secret_bytes = b"loong-secret-7f3a9c1e5b2d4a6c8e0f".to_vec();
    fs::write(&secret, &secret_bytes).expect("secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    let fifo = vault.join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .output()
        .expect("mkfifo");
    assert!(made.status.success(), "{}", text(&made.stderr));

    let pkg = work.path().join("swap");
    wasm_package(&pkg, "swap", "1", &example_module("echo"), None);
    // The swapped file sorts after a large one, so a copy that checks, then copies each file
    // again by path, spends a while between checking it and copying it.
    fs::write(pkg.join("a-blob.bin"), vec![7u8; BLOB_BYTES]).expect("blob");
    fs::write(pkg.join("z-data.txt"), "public").expect("data");
    // The swapper: z-data.txt is, in turn, a symlink to the secret, a plain file, a symlink
    // to the FIFO, a plain file; each change is one atomic rename.
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, pkg, work) = (stop.clone(), pkg.clone(), work.path().to_path_buf());
        let targets = [Some(secret.clone()), None, Some(fifo.clone()), None];
        std::thread::spawn(move || {
            let staged = work.join("next");
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for t in &targets {
                    let _ = fs::remove_file(&staged);
                    match t {
                        Some(t) => std::os::unix::fs::symlink(t, &staged).expect("symlink"),
                        None => fs::write(&staged, "public").expect("plain"),
                    }
                    fs::rename(&staged, pkg.join("z-data.txt")).expect("swap");
                    swaps += 1;
                }
            }
            swaps
        })
    };
    let shown = pkg.display().to_string();
    let (mut installed, mut refused) = (0, 0);
    for round in 0..SWAP_ROUNDS {
        let out = bounded(&home, &["plugins", "install", &shown]);
        if out.status.success() {
            installed += 1;
        } else {
            let err = text(&out.stderr);
            assert!(
                out.status.code() == Some(2) && err.contains("data.txt"),
                "round {round}: {err}"
            );
            refused += 1;
        }
        let leaked = files_containing(&home.path().join("plugins"), &secret_bytes);
        assert!(
            leaked.is_empty(),
            "round {round}: the secret leaked into {leaked:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().expect("swapper");
    assert!(
        swaps > SWAP_ROUNDS as u64,
        "the swapper ran ({swaps} swaps)"
    );
    // Positive control: with the tree left alone, the package installs and serves, and the
    // lock agrees with what was installed.
    fs::write(pkg.join("z-data.txt"), "public").expect("plain");
    ctl_ok(&home, &["plugins", "install", &shown]);
    assert_eq!(view(&home, "swap")["state"], "ready");
    assert_eq!(
        fs::read(home.path().join("plugins/swap/z-data.txt")).expect("data"),
        b"public"
    );
    ctl_ok(&home, &["plugins", "verify", "--lock"]);
    eprintln!("{installed} installed, {refused} refused during {swaps} swaps");
}

#[test]
fn a_fifo_or_device_in_a_package_is_refused_at_once_and_delays_nothing_else() {
    let home = Home::new();
    home.start();
    let work = tempfile::Builder::new()
        .prefix("lff")
        .tempdir_in("/tmp")
        .expect("work");
    let good = work.path().join("good");
    wasm_package(&good, "good", "1", &example_module("echo"), None);
    ctl_ok(&home, &["plugins", "install", &good.display().to_string()]);

    let fifo_pkg = work.path().join("fifo");
    wasm_package(&fifo_pkg, "fifo", "1", &example_module("echo"), None);
    let made = std::process::Command::new("mkfifo")
        .arg(fifo_pkg.join("pipe"))
        .output()
        .expect("mkfifo");
    assert!(made.status.success(), "{}", text(&made.stderr));
    let mut cases = vec![(fifo_pkg, "pipe")];
    let dev_pkg = work.path().join("dev");
    wasm_package(&dev_pkg, "dev", "1", &example_module("echo"), None);
    let made = std::process::Command::new("mknod")
        .arg(dev_pkg.join("null"))
        .args(["c", "1", "3"])
        .output()
        .expect("mknod");
    if made.status.success() {
        cases.push((dev_pkg, "null"));
    } else {
        support::skip(
            "a_fifo_or_device_in_a_package_is_refused_at_once_and_delays_nothing_else (device part)",
            &format!("mknod failed: {}", text(&made.stderr)),
        );
    }
    for (pkg, entry) in cases {
        // The refused install and, meanwhile, other plugin operations all finish promptly.
        let shown = pkg.display().to_string();
        let others = {
            let path = home.path().to_path_buf();
            std::thread::spawn(move || {
                let home_arg = path.display().to_string();
                ["reload", "list"].map(|op| {
                    std::process::Command::new(support::bin("loongctl"))
                        .args(["--home", &home_arg, "plugins", op])
                        .output()
                        .expect("loongctl")
                        .status
                        .success()
                })
            })
        };
        let out = bounded(&home, &["plugins", "install", &shown]);
        let err = text(&out.stderr);
        assert!(
            out.status.code() == Some(2) && err.contains(entry) && err.contains("special files"),
            "{entry}: {err}"
        );
        assert_eq!(others.join().expect("others"), [true, true], "{entry}");
        assert_eq!(
            bounded(&home, &["plugins", "disable", "good"])
                .status
                .code(),
            Some(0)
        );
        assert_eq!(
            bounded(&home, &["plugins", "enable", "good"]).status.code(),
            Some(0)
        );
    }
    assert!(!home.path().join("plugins/fifo").exists());
    assert_eq!(view(&home, "good")["state"], "ready");
}
