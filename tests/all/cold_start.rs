//! The cold plugin call: a spare WASM worker started ahead of need (as confined as any, used
//! by the first call after a kill), and the compiled-module cache under the home (made by a
//! worker that ran no guest code, mapped on the next load, a bad one refused and replaced).

use std::{fs, path::PathBuf, time::Duration};

use crate::support::{is_root, wait_until, Home};
use crate::workers::{
    details, echo_works, find_descendant, install_examples, invoke, status_field, workers,
};

/// The stored artifact of the echo example's module.
fn echo_artifact(home: &Home) -> PathBuf {
    artifact_of(home, "echo")
}

/// The stored artifact of an installed example's module.
fn artifact_of(home: &Home, plugin: &str) -> PathBuf {
    home.path()
        .join(format!("cache/wasm/{}.cwasm", module_digest(home, plugin)))
}

fn module_digest(home: &Home, plugin: &str) -> String {
    use sha2::Digest;
    let module = fs::read(home.path().join(format!("plugins/{plugin}/plugin.wasm")))
        .expect("example module");
    hex::encode(sha2::Sha256::digest(&module))
}

/// How echo's last load came by its module (`plugin.loaded`'s `compiled`).
fn last_echo_load(home: &Home) -> String {
    details(home, "plugin.loaded")
        .into_iter()
        .find(|d| d["plugin"] == "echo")
        .and_then(|d| d["compiled"].as_str().map(String::from))
        .unwrap_or_default()
}

fn reload(home: &Home) {
    let out = home.ctl(&["plugins", "reload"]);
    assert!(
        out.status.success(),
        "{}",
        crate::support::text(&out.stderr)
    );
}

/// Whether the artifact file is whole: its bytes match the digest in its first line.
fn artifact_is_whole(path: &PathBuf) -> bool {
    use sha2::Digest;
    let Ok(bytes) = fs::read(path) else {
        return false;
    };
    let Some(n) = bytes.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let header = String::from_utf8_lossy(&bytes[..n]).to_string();
    let claimed = header.split('\t').nth(2).unwrap_or_default().to_string();
    hex::encode(sha2::Sha256::digest(&bytes[n + 1..])) == claimed
}

#[test]
fn compiled_modules_are_cached_mapped_and_a_bad_one_is_compiled_afresh() {
    let home = Home::new();
    install_examples(&home);
    home.start();
    let path = echo_artifact(&home);
    // Discovery's load compiled echo in a worker that had run nothing, which answered the
    // artifact; loongd stored it under its home.
    assert!(
        wait_until(Duration::from_secs(10), || artifact_is_whole(&path)),
        "no artifact stored at {}",
        path.display()
    );
    assert_eq!(last_echo_load(&home), "compiled");
    // A reload loads echo again: the artifact is mapped, nothing is compiled.
    reload(&home);
    assert_eq!(last_echo_load(&home), "mapped");
    echo_works(&home);

    // Corrupted on disk (one bit of its code): refused, the module compiled afresh, and the
    // answer is still echo's.
    let mut bytes = fs::read(&path).expect("artifact");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, &bytes).expect("corrupt");
    // Calls above made the workers unfit to give artifacts: kill them, so that the next load
    // runs in a worker that has served nothing.
    for w in workers(&home) {
        home.ctl(&["workers", "kill", &w["id"].to_string()]);
    }
    reload(&home);
    let how = last_echo_load(&home);
    assert!(
        how.starts_with("refused:") && how.contains("corrupted or truncated"),
        "{how}"
    );
    echo_works(&home);
    // The fresh artifact replaced it, and is mapped next time.
    assert!(
        wait_until(Duration::from_secs(10), || artifact_is_whole(&path)),
        "the refused artifact was not replaced"
    );
    for w in workers(&home) {
        home.ctl(&["workers", "kill", &w["id"].to_string()]);
    }
    reload(&home);
    assert_eq!(last_echo_load(&home), "mapped");

    // Truncated: refused the same way.
    let bytes = fs::read(&path).expect("artifact");
    fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    reload(&home);
    let how = last_echo_load(&home);
    assert!(how.starts_with("refused:"), "{how}");
    echo_works(&home);
}

/// Write access to the home while loongd is stopped: another module's artifact, relabelled as
/// echo's with every digest in its header made consistent (the format this build writes,
/// and the same with any tag), is never mapped. Echo is compiled afresh and answers as echo;
/// the control: what this run stored is mapped on a reload.
#[test]
fn an_artifact_forged_while_loongd_was_stopped_is_never_mapped() {
    use sha2::Digest;
    let home = Home::new();
    install_examples(&home);
    home.start();
    let (echo, other) = (echo_artifact(&home), artifact_of(&home, "json-transform"));
    assert!(
        wait_until(Duration::from_secs(10), || artifact_is_whole(&echo)
            && artifact_is_whole(&other)),
        "no artifacts stored"
    );
    assert!(home.ctl(&["daemon", "stop"]).status.success());

    let stored = fs::read(&other).expect("artifact");
    let n = stored.iter().position(|&b| b == b'\n').expect("header");
    let header = String::from_utf8_lossy(&stored[..n]).to_string();
    let fields: Vec<&str> = header.split('\t').collect();
    let body = &stored[n + 1..];
    let mut forged = format!(
        "{}\t{}\t{}",
        module_digest(&home, "echo"),
        fields[1],
        hex::encode(sha2::Sha256::digest(body))
    );
    // A tag, when the build writes one, copied from the other module's file.
    if let Some(tag) = fields.get(3) {
        forged.push('\t');
        forged.push_str(tag);
    }
    forged.push('\n');
    let mut forged = forged.into_bytes();
    forged.extend_from_slice(body);
    fs::write(&echo, &forged).expect("forge");

    home.start();
    assert_eq!(
        last_echo_load(&home),
        "compiled",
        "the forged artifact was mapped"
    );
    echo_works(&home);
    assert!(
        wait_until(Duration::from_secs(10), || artifact_is_whole(&echo)
            && fs::read(&echo).is_ok_and(|b| b != forged)),
        "this run stored no artifact of its own"
    );
    reload(&home);
    assert_eq!(last_echo_load(&home), "mapped", "the control");
    echo_works(&home);
}

#[test]
fn a_worker_that_served_a_call_gives_no_artifact() {
    // One worker, no spare: every load below runs in it.
    let home = Home::with_config("[workers]\nwasm_pool_size = 1\nwasm_spare = false\n");
    install_examples(&home);
    home.start();
    let path = echo_artifact(&home);
    assert!(wait_until(Duration::from_secs(10), || artifact_is_whole(
        &path
    )));
    // It serves a call (guest code ran in it); the artifact is removed, and the reload
    // compiles echo there again: nothing is stored from it.
    echo_works(&home);
    fs::remove_file(&path).expect("remove");
    reload(&home);
    assert_eq!(last_echo_load(&home), "compiled");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !path.exists(),
        "an artifact was stored from a worker that had served a call"
    );
    echo_works(&home);
    // The control: a new worker, which has served nothing, gives one.
    for w in workers(&home) {
        home.ctl(&["workers", "kill", &w["id"].to_string()]);
    }
    reload(&home);
    assert!(
        wait_until(Duration::from_secs(10), || artifact_is_whole(&path)),
        "a worker that had served nothing gave no artifact"
    );
}

/// The spare's confinement, as the restricted tier's: no new privileges, the tier's filter
/// (its guard and allowlist as one program) plus the worker's own, no capabilities, nobody
/// when loongd is root.
fn assert_confined(helper: u64) {
    let pid = find_descendant(helper, "loong-worker-wa").expect("worker process");
    assert_eq!(status_field(pid, "NoNewPrivs").as_deref(), Some("1"));
    assert_eq!(status_field(pid, "Seccomp").as_deref(), Some("2"));
    assert_eq!(status_field(pid, "Seccomp_filters").as_deref(), Some("2"));
    assert_eq!(
        status_field(pid, "CapEff").as_deref(),
        Some("0000000000000000")
    );
    if is_root() {
        let uid = status_field(pid, "Uid").expect("uid");
        assert!(uid.starts_with("65534"), "worker runs as nobody: {uid}");
    }
}

fn spare(home: &Home) -> Option<serde_json::Value> {
    workers(home).into_iter().find(|w| w["state"] == "spare")
}

/// The worker that answered an echo call.
fn echo_worker(home: &Home) -> u64 {
    let (code, out, err) = invoke(home, &["echo", "--input", "{}", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("invoke JSON");
    v["worker"].as_u64().expect("worker")
}

#[test]
fn a_spare_worker_is_confined_listed_and_takes_the_first_call_after_a_kill() {
    let home = Home::new();
    install_examples(&home);
    home.start();
    echo_works(&home);
    // Every worker killed: a spare is started before any call asks, as confined as any
    // worker of its kind, listed as `spare`, and the next call runs on it without a spawn of
    // its own.
    for w in workers(&home) {
        home.ctl(&["workers", "kill", &w["id"].to_string()]);
    }
    let mut found = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            found = spare(&home);
            found.is_some()
        }),
        "no spare after the kill: {:?}",
        workers(&home)
    );
    let s = found.expect("spare");
    assert_eq!(
        (s["kind"].as_str(), s["tier"].as_str(), s["calls"].as_u64()),
        (Some("wasm"), Some("restricted"), Some(0))
    );
    assert_confined(s["pid"].as_u64().expect("pid"));
    let spawned = details(&home, "worker.spawned").len();
    assert_eq!(echo_worker(&home), s["id"].as_u64().expect("id"));
    let after = details(&home, "worker.spawned");
    // The call spawned nothing on its path; at most the next spare since.
    assert!(after.len() <= spawned + 1, "{after:?}");
    echo_works(&home);
}

#[test]
fn without_a_spare_or_a_wasm_plugin_no_worker_runs_before_it_is_needed() {
    // The control for the test above: with `wasm_spare = false`, after a kill no worker is
    // started until a call needs one.
    let home = Home::with_config("[workers]\nwasm_spare = false\n");
    install_examples(&home);
    home.start();
    echo_works(&home);
    for w in workers(&home) {
        home.ctl(&["workers", "kill", &w["id"].to_string()]);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(workers(&home).is_empty(), "{:?}", workers(&home));
    echo_works(&home);
    // With the spare on but no WASM plugin installed, no WASM worker runs at all.
    let empty = Home::new();
    empty.start();
    std::thread::sleep(Duration::from_millis(500));
    assert!(workers(&empty).is_empty(), "{:?}", workers(&empty));
    assert!(details(&empty, "worker.spawned").is_empty());
}
