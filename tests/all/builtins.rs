//! The built-in tools end to end (file, shell.exec, web.fetch): each confined to its grants
//! in its own worker, decided on its effect, offered only as granted.

use std::{fs, os::unix::fs::PermissionsExt};

use crate::{
    bridges::{search, shared_dir, write_file, LocalHttp},
    support::{text, Home},
    workers::{details, invoke, plugins, records},
};

/// Where `.ci/run` installs the MCP servers the tests run (outside any home, readable by
/// the sandbox's uid).

#[test]
fn builtin_tools_are_confined_to_their_grants_and_decided_on_their_effect() {
    let shared = shared_dir("lb");
    let ro = shared.path().join("ro");
    let rw = shared.path().join("rw");
    let ws = shared.path().join("ws");
    for (d, mode) in [(&ro, 0o755), (&rw, 0o777), (&ws, 0o777)] {
        fs::create_dir(d).expect("dir");
        fs::set_permissions(d, fs::Permissions::from_mode(mode)).expect("chmod");
    }
    write_file(&ro.join("a.txt"), "readable\n", 0o644);
    // Inside a root, leading out of it: the path is resolved before it is decided and opened.
    std::os::unix::fs::symlink("/etc/hostname", ro.join("out")).expect("symlink");
    assert!(
        fs::read_to_string("/etc/hostname").is_ok(),
        "the target itself is readable"
    );
    let listener = LocalHttp::text("loong-shell-page");
    let home = Home::with_config(&format!(
        "[builtins]\nread_roots = [{:?}]\nwrite_roots = [{:?}]\nworkspace = {:?}\ntimeout_ms = 5000\n",
        ro.display().to_string(),
        rw.display().to_string(),
        ws.display().to_string()
    ));
    fs::create_dir_all(home.path().join("packs")).expect("packs");
    fs::write(
        home.path().join("packs/reader.toml"),
        format!(
            "id = \"reader\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"fs.read:{}\"]\napproval = \"never\"\n",
            ro.display()
        ),
    )
    .expect("pack");
    home.start();
    let call = |tool: &str, input: serde_json::Value| {
        invoke(&home, &[tool, "--input", &input.to_string(), "--json"])
    };
    let output = |out: &str| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(out).expect("JSON")["output"].clone()
    };

    let (code, out, err) = call("file.read", serde_json::json!({"path": ro.join("a.txt")}));
    assert_eq!(code, 0, "{err}");
    assert_eq!(output(&out)["content"], "readable\n");
    let (code, _, err) = call("file.read", serde_json::json!({"path": ro.join("out")}));
    assert_eq!(
        code, 7,
        "a symlink out of the root must not be followed: {err}"
    );
    assert!(
        err.contains("/etc/hostname is outside this tool's roots"),
        "loongd resolved it, and the worker opens only what lies beneath a root: {err}"
    );
    let (code, _, err) = call("file.read", serde_json::json!({"path": "/etc/hostname"}));
    assert!(code == 7 && err.contains("outside"), "{err}");

    let target = rw.join("new.txt");
    let (code, _, err) = call(
        "file.write",
        serde_json::json!({"path": target, "content": "one two"}),
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = call(
        "file.edit",
        serde_json::json!({"path": target, "old": "two", "new": "2"}),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(output(&out)["replacements"], 1);
    assert_eq!(fs::read_to_string(&target).expect("written"), "one 2");
    // Writing is for write_roots only, even where reading is granted.
    let (code, _, err) = call(
        "file.write",
        serde_json::json!({"path": ro.join("b.txt"), "content": "x"}),
    );
    assert_eq!(code, 7, "{err}");
    assert!(!ro.join("b.txt").exists());

    // shell.exec: in the workspace, without the file roots, without a network, bounded.
    let script = format!(
        "pwd; echo made > made.txt; cat {} || echo no-read-root; \
         (exec 3<>/dev/tcp/127.0.0.1/{}) 2>/dev/null && echo connected || echo no-network",
        ro.join("a.txt").display(),
        listener.port
    );
    let (code, out, err) = call(
        "shell.exec",
        serde_json::json!({"command": format!("bash -c {}", shell_quote(&script))}),
    );
    assert_eq!(code, 0, "{err}");
    let o = output(&out);
    let stdout = o["stdout"].as_str().unwrap_or_default();
    assert!(stdout.starts_with(&ws.display().to_string()), "{o}");
    assert!(
        stdout.contains("no-read-root") && stdout.contains("no-network"),
        "{o}"
    );
    assert_eq!(
        fs::read_to_string(ws.join("made.txt")).expect("made"),
        "made\n"
    );
    assert_eq!(listener.accepted(), 0);
    let (code, out, err) = call("shell.exec", serde_json::json!({"command": "sleep 30"}));
    assert_eq!(code, 0, "{err}");
    assert_eq!(output(&out)["timed_out"], true);
    // What a command leaves running, even in a session of its own, ends with its call; while
    // the call runs, it runs (the control).
    // The command waits up to 3 s (within the call's 5 s) for the first tick (a loaded machine
    // may start the loop late), so the control does not depend on the machine's speed.
    let daemon = "setsid -f sh -c 'while :; do date +%s%N > tick; sleep 0.05; done' \
                  </dev/null >/dev/null 2>&1; \
                  for i in $(seq 60); do test -s tick && break; sleep 0.05; done; \
                  test -s tick && echo ticking";
    let (code, out, err) = call("shell.exec", serde_json::json!({"command": daemon}));
    assert_eq!(code, 0, "{err}");
    assert_eq!(output(&out)["stdout"], "ticking\n", "{out}");
    // A file a process left behind keeps changing while anything of it still runs.
    let stays_still = |name: &str, why: &str| {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let before = fs::read_to_string(ws.join(name)).expect(name);
        std::thread::sleep(std::time::Duration::from_millis(500));
        let after = fs::read_to_string(ws.join(name)).expect(name);
        assert_eq!(after, before, "{why}");
    };
    stays_still("tick", "the command's daemon outlived its call");
    // Nor does a tree that outgrows the kill rounds: its deepest process forks again as soon
    // as a pid is free, so each round that takes the top generation away gives a new one at
    // the bottom (at most 100 generations where the machine sets no pids limit). It is
    // running when the call ends (the control: `full` is written at generation 40) and is
    // still ended with the call, all of it.
    let grows = r#"my $d = 0; while (1) { my $p = fork; if (!defined $p) { open my $f, ">", "grow"; print $f "$d $$ " . rand; close $f; next } if ($p) { waitpid $p, 0; next } $d++; open my $g, ">", "grow"; print $g "$d $$"; close $g; if ($d == 40) { open my $f, ">", "full"; close $f } if ($d >= 100) { while (1) { open my $f, ">", "grow"; print $f rand; close $f; select undef, undef, undef, 0.01 } } }"#;
    let grower = format!(
        "setsid -f perl -e {} </dev/null >/dev/null 2>&1; \
         while ! test -e full; do :; done; echo full",
        shell_quote(grows)
    );
    let (code, out, err) = call("shell.exec", serde_json::json!({"command": grower}));
    assert_eq!(code, 0, "{err}");
    assert_eq!(output(&out)["stdout"], "full\n", "{out}");
    stays_still(
        "grow",
        "a tree that forks again as it is killed outlived its call",
    );
    // A call's CPU is accounted, the shell's included.
    let (code, out, err) = call(
        "shell.exec",
        serde_json::json!({"command": "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"}),
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert!(v["cpu_us"].as_u64().is_some_and(|c| c > 0), "{v}");

    // Decided on the effect: a token that may read the read root reads there, and may not
    // write or read elsewhere (exit 4).
    let out = home.ctl(&[
        "tokens",
        "issue",
        "--pack",
        "reader",
        "--agent",
        "bot",
        "--cap",
        &format!("fs.read:{}", ro.display()),
        "--ttl",
        "1h",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    let with_token = |tool: &str, input: serde_json::Value| {
        invoke(
            &home,
            &[tool, "--token", &token, "--input", &input.to_string()],
        )
    };
    let (code, _, err) = with_token("file.read", serde_json::json!({"path": ro.join("a.txt")}));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = with_token("file.read", serde_json::json!({"path": target}));
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = with_token(
        "file.write",
        serde_json::json!({"path": rw.join("t.txt"), "content": "x"}),
    );
    assert_eq!(code, 4, "{err}");
    let decisions: Vec<serde_json::Value> = details(&home, "policy.decision");
    assert!(
        decisions.iter().any(|d| d.to_string().contains("fs.write")),
        "the write was decided as fs.write: {decisions:?}"
    );

    // Found by search, as official: they are part of loongd.
    let hits = search(&home, &["shell"]);
    assert_eq!(hits[0]["name"], "shell.exec");
    assert_eq!(hits[0]["trust"], "official");
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn shell_exec_runs_only_the_programs_its_token_grants() {
    let shared = shared_dir("lx");
    let ws = shared.path().join("ws");
    fs::create_dir(&ws).expect("dir");
    fs::set_permissions(&ws, fs::Permissions::from_mode(0o777)).expect("chmod");
    let home = Home::with_config(&format!(
        "[builtins]\nworkspace = {:?}\ntimeout_ms = 5000\n",
        ws.display().to_string()
    ));
    fs::create_dir_all(home.path().join("packs")).expect("packs");
    fs::write(
        home.path().join("packs/runner.toml"),
        "id = \"runner\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"process.exec\"]\napproval = \"never\"\n",
    )
    .expect("pack");
    home.start();
    let issue = |caps: &[&str]| {
        let mut args = vec![
            "tokens", "issue", "--pack", "runner", "--agent", "bot", "--ttl", "1h",
        ];
        for c in caps {
            args.extend(["--cap", c]);
        }
        let out = home.ctl(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    let run = |token: &str, command: &str| {
        let input = serde_json::json!({ "command": command }).to_string();
        invoke(
            &home,
            &["shell.exec", "--token", token, "--input", &input, "--json"],
        )
    };
    let stdout = |out: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(out).expect("JSON");
        v["output"]["stdout"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // The shell shell.exec starts is the tool's own: echo and cat are all it needs.
    let echo_cat = issue(&["process.exec:echo", "process.exec:cat"]);
    let (code, out, err) = run(&echo_cat, "echo hi | cat");
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout(&out), "hi\n");
    // A shell in the command line is decided like any program: not granted.
    for smuggled in [
        "echo id | sh",
        "sh -c id",
        "env sh -c id",
        "echo id | xargs sh",
    ] {
        let (code, _, err) = run(&echo_cat, smuggled);
        assert_eq!(code, 4, "{smuggled}: {err}");
        assert!(
            err.contains("process.exec on sh denied: the token does not grant it")
                || err.contains("the command line runs sh and sh itself is not granted")
                || err.contains("the command line runs sh, which runs code from its arguments or input, and sh itself is not granted"),
            "{smuggled}: {err}"
        );
    }
    // Lines /bin/sh reads otherwise than a naive reader did: each ran sh before.
    for line in [
        "echo\r#;sh -c id",
        "$(echo 'sh -c id ')echo",
        "x='5 sh -c id'; nice -n $x cat",
        "echo `echo \\`sh -c id\\``",
        "echo \"$(echo ${x:-)}; sh -c id)\"",
        "echo \"$(case x in x) sh -c id;; esac)\"",
        "for PATH in .; do cat x; done",
    ] {
        let (code, _, err) = run(&echo_cat, line);
        assert_eq!(code, 4, "{line:?}: {err}");
    }
    // Positive control: a token that grants sh itself runs it.
    let with_sh = issue(&["process.exec:echo", "process.exec:sh"]);
    let (code, out, err) = run(&with_sh, "echo 'echo from-sh' | sh");
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout(&out), "from-sh\n");
    // The decision records the script, not a shell the tool implies.
    let decisions = details(&home, "policy.decision");
    assert!(
        decisions.iter().any(|d| d["script"] == "echo hi | cat"
            && d["target"] == "echo"
            && d["allowed"] == true),
        "{decisions:?}"
    );
}

#[test]
fn builtin_tools_are_offered_only_as_granted() {
    let home = Home::with_config("[builtins]\nread_roots = [\"/tmp/loong-no-such-root\"]\n");
    home.start();
    let ps = plugins(&home);
    let file_read = ps
        .iter()
        .find(|p| p["id"] == "file.read")
        .expect("file.read is granted a root, so it is listed");
    assert_eq!(file_read["state"], "failed");
    assert!(
        file_read["error"]
            .as_str()
            .is_some_and(|e| e.contains("/tmp/loong-no-such-root")),
        "{file_read}"
    );
    // Nothing granted: not offered at all.
    for id in ["file.write", "file.edit", "shell.exec"] {
        assert!(!ps.iter().any(|p| p["id"] == id), "{id} is offered: {ps:?}");
        let (code, _, err) = invoke(&home, &[id, "--input", r#"{"command": "id"}"#]);
        assert!(code != 0 && err.contains("no tool named"), "{id}: {err}");
    }
    let (code, _, err) = invoke(&home, &["file.read", "--input", r#"{"path": "/tmp/x"}"#]);
    assert_eq!(code, 2, "{err}");
    assert!(records(&home, "worker.spawned").is_empty());
}

#[test]
fn web_fetch_is_decided_per_host_and_refuses_private_addresses_unless_granted() {
    let page = LocalHttp::text("loong-fetched-page");
    let url = page.url();
    let input = serde_json::json!({ "url": url }).to_string();

    // Without the operator's leave, a loopback address is refused before any connection.
    let strict = Home::with_config("[builtins]\nfetch = true\n");
    strict.start();
    let (code, _, err) = invoke(&strict, &["web.fetch", "--input", &input]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("address_refused") && err.contains("fetch_allow_private"),
        "{err}"
    );
    assert_eq!(page.accepted(), 0, "a refused fetch connected");
    // The same for the IPv6 forms that carry a loopback IPv4 address.
    for host in [
        "[::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::1]",
        "[::ffff:127.0.0.1]",
    ] {
        let input = serde_json::json!({ "url": format!("http://{host}:{}/", page.port) });
        let (code, _, err) = invoke(&strict, &["web.fetch", "--input", &input.to_string()]);
        assert_eq!(code, 7, "{host}: {err}");
        assert!(
            err.contains("address_refused") && err.contains("loopback"),
            "{host}: {err}"
        );
    }
    assert_eq!(page.accepted(), 0, "a refused fetch connected");
    let failed: Vec<serde_json::Value> = details(&strict, "tool.failed");
    assert!(
        failed.iter().any(|d| d["failure"] == "address_refused"),
        "{failed:?}"
    );

    // With it: fetched, as JSON describing the answer.
    let open = Home::with_config("[builtins]\nfetch = true\nfetch_allow_private = true\n");
    fs::create_dir_all(open.path().join("packs")).expect("packs");
    fs::write(
        open.path().join("packs/fetcher.toml"),
        format!(
            "id = \"fetcher\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"net.egress:127.0.0.1:{}\"]\napproval = \"never\"\n",
            page.port
        ),
    )
    .expect("pack");
    open.start();
    let (code, out, err) = invoke(&open, &["web.fetch", "--input", &input]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (v["status"].as_u64(), v["body"].as_str()),
        (Some(200), Some("loong-fetched-page"))
    );
    assert_eq!(page.accepted(), 1);
    // A URL that is neither http:// nor https:// is refused by name before anything is
    // decided (https itself is tests/all/tls.rs's).
    let (code, _, err) = invoke(
        &open,
        &["web.fetch", "--input", r#"{"url": "ftp://example.com/"}"#],
    );
    assert!(code == 2 && err.contains("ftp://example.com/"), "{err}");

    // Decided as net.egress on HOST:PORT: a token for this port fetches, another port is
    // denied (exit 4) and never connected.
    let out = open.ctl(&[
        "tokens",
        "issue",
        "--pack",
        "fetcher",
        "--agent",
        "bot",
        "--cap",
        &format!("net.egress:127.0.0.1:{}", page.port),
        "--ttl",
        "1h",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    let (code, _, err) = invoke(&open, &["web.fetch", "--token", &token, "--input", &input]);
    assert_eq!(code, 0, "{err}");
    let other = LocalHttp::text("never");
    let other_input = serde_json::json!({ "url": other.url() }).to_string();
    let (code, _, err) = invoke(
        &open,
        &["web.fetch", "--token", &token, "--input", &other_input],
    );
    assert_eq!(code, 4, "{err}");
    assert_eq!(other.accepted(), 0);
}
