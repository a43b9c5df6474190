//! `loongctl chat`: one turn per line on one session, driven by lines on stdin (a script) and
//! typed on a terminal (line editing and history), against a local provider server.

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{
    agent::{text_answer, tool_answer, Provider},
    kernel_calls::{issue, json},
    support::{bin, text, wait_until, Home},
    workers::install_examples,
};

/// The user messages of a provider request, in order.
fn users(request: &serde_json::Value) -> Vec<String> {
    request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn chat_reads_lines_from_a_script_keeps_the_session_and_runs_its_commands() {
    let provider = Provider::start(vec![
        text_answer("hello, Ada"),
        text_answer("you are Ada"),
        text_answer("a fresh start"),
    ]);
    let home = Home::with_config(&provider.config(""));
    install_examples(&home);
    std::fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    std::fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\", \"memory.read\", \"memory.write\"]\n",
    )
    .expect("pack");
    home.start();
    let (secret, _) = issue(
        &home,
        &[
            "tool.invoke:agent.turn",
            "tool.invoke:echo",
            "memory.read",
            "memory.write",
        ],
    );
    let mut child = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["chat", "--session", "c1", "--token", &secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run loongctl chat");
    let script =
        "/help\n/session\nI am Ada\nwho am I?\n/tools\n/nope\n/clear\nagain\n/exit\nnever asked\n";
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write the script");
    let out = child.wait_with_output().expect("wait");
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{so}{se}");
    for said in [
        "session c1",
        "/tools     the tools",
        "\nc1\n",
        "hello, Ada\n",
        "you are Ada\n",
        "unknown command /nope",
        "cleared c1: 4 messages",
        "a fresh start\n",
    ] {
        assert!(so.contains(said), "{said:?} not in {so}{se}");
    }
    // /tools lists what the token may call, and nothing else.
    assert!(so.contains("echo\t"), "{so}");
    assert!(
        !so.contains("json-transform") && !so.contains("agent.turn\t"),
        "{so}"
    );
    // The turns share the session: the second is sent the first; after /clear, nothing.
    let requests = provider.requests();
    assert_eq!(requests.len(), 3, "/exit ends the chat: {requests:?}");
    assert_eq!(users(&requests[0]), ["I am Ada"]);
    assert_eq!(users(&requests[1]), ["I am Ada", "who am I?"]);
    assert_eq!(users(&requests[2]), ["again"]);
    let listed = json(&text(&home.ctl(&["memory", "list", "--json"]).stdout));
    assert_eq!(listed[0]["session"], "c1", "{listed}");
    assert_eq!(listed[0]["messages"], 2, "{listed}");
}

#[test]
fn chat_on_a_terminal_edits_the_line_and_recalls_history() {
    let provider = Provider::start(vec![text_answer("first"), text_answer("second")]);
    let home = Home::with_config(&provider.config(""));
    home.start();
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let mut child = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["chat", "--session", "t1"])
        // The history file goes to this home, not the tester's.
        .env("HOME", home.path())
        .env("TERM", "xterm")
        .stdin(Stdio::from(slave.try_clone().expect("clone")))
        .stdout(Stdio::from(slave.try_clone().expect("clone")))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("run loongctl chat");
    let mut master = std::fs::File::from(pty.master);
    let shown = Arc::new(Mutex::new(String::new()));
    let kept = shown.clone();
    let mut reader = master.try_clone().expect("clone");
    let mut answerer = master.try_clone().expect("clone");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            let got = String::from_utf8_lossy(&buf[..n]).into_owned();
            // The line editor asks where the cursor is; a terminal answers.
            for _ in 0..got.matches("\x1b[6n").count() {
                let _ = answerer.write_all(b"\x1b[1;1R");
            }
            kept.lock().expect("lock").push_str(&got);
        }
    });
    let wait_for = |needle: &str, count: usize| {
        assert!(
            wait_until(Duration::from_secs(20), || shown
                .lock()
                .expect("lock")
                .matches(needle)
                .count()
                >= count),
            "no {needle:?} in {:?}",
            shown.lock().expect("lock")
        );
    };
    // An empty prompt, as the line editor draws it: the chat waits for a line.
    const READY: &str = "> \r\x1b[2C";
    wait_for(READY, 1);
    // A typo erased with backspace, and a word inserted after moving left.
    master.write_all(b"helo thrr\x7f\x7fere").expect("type");
    master
        .write_all(b"\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[Dl")
        .expect("type");
    master.write_all(b"\r").expect("enter");
    wait_for("first", 1);
    wait_for(READY, 2);
    // The line before, recalled with the up arrow.
    master.write_all(b"\x1b[A\r").expect("recall");
    wait_for("second", 1);
    wait_for(READY, 3);
    master.write_all(b"\x04").expect("Ctrl-D");
    let ended = wait_until(Duration::from_secs(20), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !ended {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait");
    assert!(
        ended && status.success(),
        "{:?}",
        shown.lock().expect("lock")
    );
    let requests = provider.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(users(&requests[0]), ["hello there"]);
    assert_eq!(users(&requests[1]), ["hello there", "hello there"]);
    // The history is kept for the next chat.
    let history =
        std::fs::read_to_string(home.path().join(".loong_chat_history")).expect("history file");
    assert!(history.contains("hello there"), "{history}");
}

#[test]
fn chat_offers_to_approve_a_tool_call_that_waits_and_the_turn_goes_on() {
    let ws = tempfile::Builder::new()
        .prefix("lchatws")
        .tempdir_in("/tmp")
        .expect("dir");
    let provider = Provider::start(vec![
        tool_answer(
            "shell_exec",
            &serde_json::json!({"command": "rm -rf /tmp/loong-chat-nothing-here"}),
        ),
        text_answer("removed"),
        tool_answer(
            "shell_exec",
            &serde_json::json!({"command": "rm -rf /tmp/loong-chat-nothing-here-either"}),
        ),
        text_answer("not removed"),
    ]);
    let home = Home::with_config(&provider.config(&format!(
        "[builtins]\nworkspace = \"{}\"\n\n[approvals]\ntimeout_ms = 20000\n",
        ws.path().display()
    )));
    std::fs::create_dir_all(home.path().join("packs")).expect("packs dir");
    std::fs::write(
        home.path().join("packs/t.toml"),
        "id = \"t\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke\", \"memory.read\", \"memory.write\", \"process.exec\"]\napproval = \"on-high-risk\"\n",
    )
    .expect("pack");
    home.start();
    let (secret, _) = issue(
        &home,
        &[
            "tool.invoke:agent.turn",
            "memory.read",
            "memory.write",
            "process.exec",
        ],
    );
    let mut child = Command::new(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["chat", "--session", "a1", "--token", &secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run loongctl chat");
    // Approve the first call inline; deny the second.
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"clean up\ny\nclean up again\nn\n/exit\n")
        .expect("write the script");
    let out = child.wait_with_output().expect("wait");
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{so}{se}");
    // The request was shown (loongd's note, with its id) and offered inline.
    assert!(se.contains("pending: process.exec"), "{se}");
    assert!(
        so.contains("pending (shown above): approve it now?"),
        "{so}"
    );
    assert!(
        so.contains("approved ") && so.contains("denied "),
        "{so}{se}"
    );
    assert!(
        so.contains("removed\n") && so.contains("not removed\n"),
        "{so}"
    );
    let requests = provider.requests();
    assert_eq!(requests.len(), 4, "{requests:?}");
    let ran = &crate::agent::tool_messages(&requests[1])[0];
    assert!(
        !ran["content"]
            .as_str()
            .unwrap_or_default()
            .starts_with("error"),
        "the approved call ran: {ran}"
    );
    let refused = crate::agent::tool_messages(&requests[3]);
    let refused = refused.last().expect("a tool message");
    assert!(
        refused["content"]
            .as_str()
            .is_some_and(|c| c.contains("denied")),
        "the denied call was refused: {refused}"
    );
}
