//! `loongctl onboard` (flags, or typed at a terminal with the key not echoed) against a local
//! OpenAI-format provider (the first `ask` right after
//! it), a provider that refuses the key (the config is still written, exit 0, the next
//! command printed), a second onboard refused without `--force`, the key kept out of the
//! config and every output; and `loongctl doctor --fix` on a loose home and a stale socket.

use std::{
    fs,
    os::unix::{fs::PermissionsExt, net::UnixListener},
};

use crate::{
    agent::{text_answer, Provider, Reply},
    secrets::ctl_stdin,
    support::{text, Home},
};

const KEY: &str = "sk-onboard-test-7f3a";

fn onboard(home: &Home, provider: &Provider, extra: &[&str]) -> std::process::Output {
    let url = format!("http://127.0.0.1:{}/v1", provider.port);
    let mut args = vec![
        "onboard",
        "--non-interactive",
        "--kind",
        "openai",
        "--base-url",
        &url,
        "--model",
        "test-model",
        "--api-key-stdin",
    ];
    args.extend_from_slice(extra);
    ctl_stdin(home, &args, &format!("{KEY}\n"))
}

fn config(home: &Home) -> String {
    fs::read_to_string(home.path().join("loongd.toml")).unwrap_or_default()
}

#[test]
fn onboard_then_ask_answers_and_the_key_is_only_in_the_secret_store() {
    let provider = Provider::start(vec![text_answer("ok"), text_answer("hello from the model")]);
    let home = Home::with_config("# the operator's note\n[metrics]\n");
    fs::set_permissions(
        home.path().join("loongd.toml"),
        fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");
    home.start();
    let out = onboard(&home, &provider, &[]);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{so}{se}\n{}", home.log());
    assert!(so.contains("probe: main answered"), "{so}{se}");
    assert!(so.contains("IP literal"), "{so}");
    assert!(so.contains("reads loongd.toml only when it starts"), "{so}");
    let cfg = config(&home);
    assert!(
        cfg.contains("# the operator's note") && cfg.contains("[metrics]"),
        "{cfg}"
    );
    assert!(
        cfg.contains("[providers.main]") && cfg.contains("provider = \"main\""),
        "{cfg}"
    );
    assert!(cfg.contains("${secret:main_api_key}"), "{cfg}");
    let mode = fs::metadata(home.path().join("loongd.toml"))
        .expect("config")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o640, "the file keeps its mode");
    // The key reached the provider (probe), bound to http://127.0.0.1:PORT.
    let requests = provider.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let list = home.ctl(&["secrets", "list", "--json"]);
    let bound = format!("http://127.0.0.1:{}", provider.port);
    assert!(
        text(&list.stdout).contains(&bound),
        "{}",
        text(&list.stdout)
    );

    // The first ask.
    let ask = home.ctl(&["ask", "say hello"]);
    assert_eq!(ask.status.code(), Some(0), "{}", text(&ask.stderr));
    assert_eq!(text(&ask.stdout).trim(), "hello from the model");

    // The key is in no output and not in the config.
    for shown in [
        so,
        se,
        cfg,
        text(&list.stdout),
        text(&ask.stdout),
        text(&ask.stderr),
    ] {
        assert!(!shown.contains(KEY), "{shown}");
    }
    let all = home.ctl(&["audit", "recent", "--limit", "1000", "--json"]);
    assert!(!text(&all.stdout).contains(KEY));
}

#[test]
fn a_refused_probe_still_writes_the_config_exits_0_and_names_the_next_command() {
    let provider = Provider::start(vec![Reply::Status(
        401,
        r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#
            .into(),
    )]);
    let home = Home::new();
    home.start();
    let out = onboard(&home, &provider, &[]);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{so}{se}");
    assert!(so.contains("probe failed") && so.contains("auth"), "{so}");
    assert!(
        so.contains("next:") && so.contains("secrets set main_api_key --host"),
        "{so}"
    );
    assert!(config(&home).contains("[providers.main]"));
    assert!(!so.contains(KEY) && !se.contains(KEY));
    assert!(!config(&home).contains(KEY));
}

#[test]
fn onboarding_the_same_provider_twice_is_refused_without_force() {
    let provider = Provider::start(vec![text_answer("ok")]);
    let home = Home::new();
    home.start();
    let first = onboard(&home, &provider, &["--no-restart"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let before = config(&home);
    let again = onboard(&home, &provider, &["--no-restart"]);
    assert_eq!(again.status.code(), Some(2));
    let err = text(&again.stderr);
    assert!(err.contains("\"main\"") && err.contains("--force"), "{err}");
    assert_eq!(config(&home), before, "a refusal leaves the file as it was");
    // The controls: another name, and --force, are accepted.
    let other = onboard(&home, &provider, &["--no-restart", "--name", "second"]);
    assert_eq!(other.status.code(), Some(0), "{}", text(&other.stderr));
    assert!(config(&home).contains("[providers.second]"));
    let forced = onboard(&home, &provider, &["--no-restart", "--force"]);
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    assert!(config(&home).contains("provider = \"main\""));
}

fn fix_json(home: &Home) -> (i32, serde_json::Value) {
    let out = home.ctl(&["doctor", "--fix", "--json"]);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn doctor_fix_narrows_a_world_writable_home_and_leaves_a_tight_one_alone() {
    let home = Home::new();
    home.start();
    assert!(home.ctl(&["daemon", "stop"]).status.success());
    // The control: a home as loongd left it needs nothing.
    let (code, v) = fix_json(&home);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["fixed"], serde_json::json!([]), "{v}");
    assert_eq!(v["not_fixed"], serde_json::json!([]), "{v}");

    fs::set_permissions(home.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let (code, v) = fix_json(&home);
    assert_eq!(code, 0, "{v}");
    let fixed = v["fixed"].as_array().cloned().unwrap_or_default();
    assert_eq!(fixed.len(), 1, "{v}");
    assert_eq!(fixed[0]["what"], "loose_mode");
    assert_eq!(fixed[0]["path"], home.path().display().to_string());
    let mode = fs::metadata(home.path())
        .expect("home")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o700);

    // A mode tighter than loongd's is never widened.
    fs::set_permissions(home.path(), fs::Permissions::from_mode(0o500)).expect("chmod");
    let (_, v) = fix_json(&home);
    assert_eq!(v["fixed"], serde_json::json!([]), "{v}");
    let mode = fs::metadata(home.path())
        .expect("home")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o500);
    fs::set_permissions(home.path(), fs::Permissions::from_mode(0o700)).expect("chmod");

    // What it cannot fix is reported with the command that does.
    fs::write(
        home.path().join("loongd.toml"),
        "[agent]\nprovider = \"nope\"\n",
    )
    .expect("write");
    let (code, v) = fix_json(&home);
    assert_eq!(code, 1, "{v}");
    let left = v["not_fixed"].as_array().cloned().unwrap_or_default();
    assert_eq!(left.len(), 1, "{v}");
    assert_eq!(left[0]["what"], "config");
    assert!(
        left[0]["fix"].as_str().unwrap_or("").contains("onboard"),
        "{v}"
    );
}

#[test]
fn doctor_fix_removes_a_stale_socket_but_not_a_live_daemons() {
    let home = Home::new();
    home.start();
    // The control: loongd holds the home's lock, so its socket stays and it still answers.
    let (_, v) = fix_json(&home);
    assert_eq!(v["fixed"], serde_json::json!([]), "{v}");
    assert!(home.socket().exists());
    home.status();
    assert!(home.ctl(&["daemon", "stop"]).status.success());

    // A socket left behind (a daemon killed before it could remove it).
    let listener = UnixListener::bind(home.socket()).expect("bind");
    drop(listener);
    assert!(home.socket().exists());
    let (code, v) = fix_json(&home);
    assert_eq!(code, 0, "{v}");
    let fixed = v["fixed"].as_array().cloned().unwrap_or_default();
    assert_eq!(fixed.len(), 1, "{v}");
    assert_eq!(fixed[0]["what"], "stale_socket");
    assert!(!home.socket().exists());
    home.start();
}

/// Interactive onboard on a terminal: the answers are typed, the key is not echoed.
#[test]
fn interactive_onboard_reads_the_key_without_echo_and_the_first_ask_answers() {
    use std::{
        io::{Read, Write},
        process::{Command, Stdio},
        sync::{Arc, Mutex},
        time::Duration,
    };
    let provider = Provider::start(vec![text_answer("ok"), text_answer("hi there")]);
    // No loongd yet: onboard starts it (the secret store is loongd's).
    let home = Home::new();
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut child = Command::new(crate::support::bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .arg("onboard")
        .stdin(Stdio::from(pty.slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run loongctl");
    let mut master = std::fs::File::from(pty.master);
    let err = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().expect("stderr");
    let kept = err.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut echoed = master.try_clone().expect("clone");
    let echo = Arc::new(Mutex::new(String::new()));
    let seen = echo.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok(n) = echoed.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let wait_for = |needle: &str| {
        assert!(
            crate::support::wait_until(Duration::from_secs(20), || err
                .lock()
                .expect("lock")
                .contains(needle)),
            "no {needle:?} in {}",
            err.lock().expect("lock")
        );
    };
    let url = format!("http://127.0.0.1:{}/v1", provider.port);
    wait_for("provider kind");
    master.write_all(b"openai\n").expect("type");
    wait_for("base URL");
    master
        .write_all(format!("{url}\n").as_bytes())
        .expect("type");
    wait_for("model");
    master.write_all(b"test-model\n").expect("type");
    wait_for("not shown");
    master
        .write_all(format!("{KEY}\n").as_bytes())
        .expect("type");
    let out = child.wait_with_output().expect("wait");
    let _ = reader.join();
    let so = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{so}{}",
        err.lock().expect("lock")
    );
    assert!(so.contains("probe: main answered"), "{so}");
    let typed = echo.lock().expect("lock").clone();
    // The control: what was typed before the key was echoed; the key was not.
    assert!(typed.contains("test-model"), "{typed:?}");
    assert!(!typed.contains(KEY), "{typed:?}");
    assert!(!so.contains(KEY) && !config(&home).contains(KEY));
    let ask = home.ctl(&["ask", "hi"]);
    assert_eq!(
        text(&ask.stdout).trim(),
        "hi there",
        "{}",
        text(&ask.stderr)
    );
}
