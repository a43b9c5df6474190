//! Foreign text never drives the operator's terminal: every human-readable view of loongctl,
//! fed by a stand-in daemon that puts a hostile string into every text field of its answers,
//! prints that string escaped (visible, never obeyed).
//!
//! The stand-in speaks the real control protocol on a home's socket, so loongctl runs
//! unchanged; what it answers is what a hostile plugin, MCP server, program or agent could
//! make loongd relay (tool descriptions, plugin errors and logs, stderr, manifest summaries,
//! paths an agent chose).

use std::{
    io::{Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    process::Output,
    time::Duration,
};

use loong_ipc::{
    frame::{self, FrameLimit},
    ApprovalView, AuditRecordView, AuditVerifyReport, BearerSecret, Call, ControlRequest,
    ControlResponse, DecisionView, DoctorReport, ErrorKind, HandshakeReply, Hello, InvokeResult,
    KeyView, Limits, LockCheck, MechanismReport, PackView, PluginView, RemoteError, Reply,
    SandboxExit, StatusReport, StreamChunk, TierReport, TokenView, ToolHit, Welcome, WorkerView,
    PROTOCOL_VERSION,
};

use crate::support::Home;

/// Clears the screen, sets the window title, rings the bell, returns the carriage to paint
/// over the line, a C1 CSI, a bidi override, a zero-width space, a backspace and a newline.
const HOSTILE: &str = "\x1b[2J\x1b]0;pwned\x07\rFAKE ok\u{9b}1m\u{202e}gnp.exe\u{200b}\x08\nX";
/// How [`HOSTILE`]'s clear-screen shows once escaped: proof the field was printed.
const SHOWN: &str = "\\x1b[2J";

fn h() -> String {
    HOSTILE.to_string()
}

/// The answer a hostile daemon's relay could produce for `req`, every text field hostile.
fn answer(req: &ControlRequest) -> Result<ControlResponse, RemoteError> {
    use ControlResponse as R;
    Ok(match req {
        // Every list is one page long: the page after it is empty.
        ControlRequest::TokenList(p) if p.after.is_some() => R::Tokens(vec![]),
        ControlRequest::PackList(p) if p.after.is_some() => R::Packs(vec![]),
        ControlRequest::ApprovalList(p) if p.after.is_some() => R::Approvals(vec![]),
        ControlRequest::KeyList(p) if p.after.is_some() => R::Keys(vec![]),
        ControlRequest::PluginList(p) if p.after.is_some() => R::Plugins(vec![]),
        ControlRequest::WorkerList(p) if p.after.is_some() => R::Workers(vec![]),
        ControlRequest::AuditTokenTrail { page, .. } if page.after.is_some() => {
            R::AuditRecords(vec![])
        }
        ControlRequest::Status => R::Status(StatusReport {
            version: h(),
            protocol_version: PROTOCOL_VERSION,
            pid: 1,
            uptime_ms: 1,
            home: h(),
            socket_path: h(),
            connected_clients: 1,
        }),
        ControlRequest::Doctor => R::Doctor(DoctorReport {
            mechanisms: vec![MechanismReport {
                name: h(),
                available: false,
                detail: h(),
                fix: Some(h()),
            }],
            tiers: vec![TierReport {
                tier: h(),
                enforceable: false,
                missing: vec![h()],
            }],
            landlock_abi: 6,
            root: true,
            error: Some(h()),
            egress_sandboxes: 0,
            egress_open: 0,
            ids_mode: h(),
            ids_detail: Some(h()),
            ids_lacks: vec![h()],
            ids_own_uid: true,
        }),
        ControlRequest::AuditQuery(_)
        | ControlRequest::AuditShow { .. }
        | ControlRequest::AuditTokenTrail { .. } => {
            R::AuditRecords(vec![AuditRecordView {
                seq: 1,
                time_ms: 0,
                kind: h(),
                actor: h(),
                correlation: h(),
                // What loongd stores is JSON: control characters arrive JSON-escaped, the
                // format characters raw.
                detail: serde_json::json!({ "path": HOSTILE }).to_string(),
                hash: h(),
            }])
        }
        ControlRequest::AuditSummary { .. } => R::AuditSummary(vec![(h(), 1, 1, 0)]),
        ControlRequest::AuditVerify => R::AuditVerified(AuditVerifyReport {
            records: 1,
            checkpoints: 0,
            first_bad_seq: Some(1),
            problem: Some(h()),
        }),
        ControlRequest::TokenList(_) | ControlRequest::TokenIssue { .. } => {
            R::Tokens(vec![TokenView {
                id: h(),
                pack: h(),
                agent: h(),
                grants: vec![h()],
                issued_ms: 0,
                expires_ms: 0,
                generation: 1,
                state: h(),
                secret: Some(BearerSecret::new(h())),
            }])
        }
        ControlRequest::PackList(_) => R::Packs(vec![PackView {
            id: HOSTILE_PACK.into(),
            domain: h(),
            version: h(),
            summary: h(),
            grants: vec![h()],
            connectors: vec![h()],
            approval: h(),
            generation: 1,
        }]),
        ControlRequest::ApprovalList(_) | ControlRequest::ApprovalResolve { .. } => {
            R::Approvals(vec![ApprovalView {
                id: HOSTILE_APPROVAL.into(),
                created_ms: 0,
                deadline_ms: 0,
                state: h(),
                actor: h(),
                pack: h(),
                capability: h(),
                target: h(),
                score: 1,
                reasons: h(),
                resolver: Some(h()),
                token: Some(h()),
                agent: Some(h()),
                argv: vec![h(), h()],
                tool: Some(h()),
                input_preview: Some(h()),
                input_sha256: Some(h()),
                input_bytes: Some(1),
                note: Some(h()),
                caller: Some(h()),
                chain: Some(loong_ipc::ApprovalChain {
                    root: h(),
                    parent: h(),
                    depth: 1,
                }),
            }])
        }
        ControlRequest::KeyList(_) | ControlRequest::KeyRevoke { .. } => R::Keys(vec![KeyView {
            id: h(),
            name: h(),
            tier: h(),
            public: h(),
            added_ms: 0,
            state: h(),
            replaced_by: Some(h()),
        }]),
        ControlRequest::PolicyDecide { .. } => R::Decided(DecisionView {
            allowed: false,
            needs_approval: false,
            reason: Some(h()),
            pack: h(),
        }),
        ControlRequest::PolicyCheck { .. } => R::PolicyReport {
            problems: vec![h()],
        },
        ControlRequest::Invoke(_) => R::Invoked(InvokeResult {
            tool: h(),
            // A tool's JSON: valid JSON keeps C1 controls, bidi overrides and zero-width
            // characters raw inside its strings, and a carriage return between its tokens.
            output: format!("{}\r", serde_json::json!({ "ok": h() })),
            worker: 1,
            logs: vec![h()],
            wall_us: 1,
            worker_wall_us: 1,
            cpu_us: 1,
            fuel_consumed: None,
            peak_memory_bytes: 1,
        }),
        ControlRequest::PluginList(_) | ControlRequest::PluginReload => {
            R::Plugins(vec![plugin(None), plugin(Some(h()))])
        }
        ControlRequest::PluginVerifyLock => R::LockReport(vec![
            LockCheck {
                id: h(),
                version: h(),
                locked: h(),
                drift: vec![],
            },
            LockCheck {
                id: h(),
                version: h(),
                locked: h(),
                drift: vec![h()],
            },
        ]),
        ControlRequest::ToolSearch(_) => R::ToolHits(vec![ToolHit {
            name: h(),
            plugin: h(),
            summary: h(),
            description: HOSTILE.replace('\n', " "),
            tags: vec![h()],
            input_examples: vec![h()],
            output_examples: vec![h()],
            trust: h(),
            claimed_trust: Some(h()),
            state: h(),
            bridge_kind: h(),
            score: 1,
        }]),
        ControlRequest::WorkerList(_) => R::Workers(vec![WorkerView {
            id: 1,
            pid: 1,
            kind: h(),
            tier: h(),
            state: h(),
            tool: Some(h()),
            calls: 1,
            started_ms: 0,
        }]),
        ControlRequest::SandboxRun(_) => R::SandboxExited(SandboxExit {
            code: Some(0),
            signal: None,
            shell_code: 0,
            timed_out: false,
            output_limit_exceeded: false,
            oom_killed: false,
            user_us: 0,
            system_us: 0,
            max_rss_kib: 0,
            degraded: vec![h()],
        }),
        // Everything else fails with a hostile error message (a plugin's error text).
        _ => return Err(RemoteError::new(ErrorKind::WorkerFailed, h())),
    })
}

/// Ids the CLI looks up in a list by equality, so they stay printable.
const HOSTILE_PACK: &str = "pack";
const HOSTILE_APPROVAL: &str = "ap1";

fn plugin(error: Option<String>) -> PluginView {
    PluginView {
        id: h(),
        version: h(),
        summary: h(),
        bridge_kind: h(),
        state: h(),
        error,
        sha256: Some(h()),
        path: h(),
        tools: vec![h(), h()],
        input_schemas: vec![h(), h()],
        trust: h(),
        signer: Some(h()),
        lock_digest: Some(h()),
        tool_count: 2,
    }
}

fn send<T: serde::Serialize>(s: &mut UnixStream, msg: &T) -> std::io::Result<()> {
    let mut out = Vec::new();
    frame::encode(msg, FrameLimit::CEILING, &mut out).expect("encodes");
    s.write_all(&out)
}

fn recv<T: serde::de::DeserializeOwned>(s: &mut UnixStream) -> Option<T> {
    let mut prefix = [0u8; 4];
    s.read_exact(&mut prefix).ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(prefix) as usize];
    s.read_exact(&mut body).ok()?;
    frame::decode_body(&body).ok()
}

/// How a stand-in daemon answers a request.
type Answer = fn(&ControlRequest) -> Result<ControlResponse, RemoteError>;

/// One connection of the stand-in daemon: handshake, then answer each request.
fn serve(mut s: UnixStream, answer: Answer) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let Some(_hello) = recv::<Hello>(&mut s) else {
        return;
    };
    let welcome = HandshakeReply::Welcome(Welcome {
        protocol_version: PROTOCOL_VERSION,
        build: "hostile stand-in".into(),
        connection_id: 1,
        limits: Limits {
            max_frame_bytes: 1 << 20,
            max_in_flight: 4,
            frame_read_timeout_ms: 10_000,
        },
    });
    if send(&mut s, &welcome).is_err() {
        return;
    }
    while let Some(call) = recv::<Call<ControlRequest>>(&mut s) {
        let Call::Request { id, body, .. } = call else {
            continue;
        };
        if matches!(body, ControlRequest::Invoke(_)) {
            // A note on stderr while it runs, as loongd sends about approvals. (A sandboxed
            // program's own output is relayed byte for byte, as if it ran in this terminal.)
            let chunk = StreamChunk::Stderr(HOSTILE.as_bytes().to_vec());
            let _ = send(&mut s, &Reply::<ControlResponse>::Stream { id, chunk });
        }
        let _ = send(
            &mut s,
            &Reply::Response {
                id,
                result: answer(&body),
            },
        );
    }
}

/// Characters a terminal obeys, left in loongctl's output. Newlines between loongctl's own
/// lines are layout; every other one is a failure.
fn obeyed(out: &str) -> Vec<char> {
    out.chars()
        .filter(|&c| c != '\n' && loongctl_needs_escape(c))
        .collect()
}

/// The CLI's own rule, restated here so the test does not trust the code it checks.
fn loongctl_needs_escape(c: char) -> bool {
    let u = c as u32;
    u < 0x20
        || (0x7f..=0x9f).contains(&u)
        || matches!(u, 0x200b..=0x200f | 0x2028..=0x202e | 0x2066..=0x2069 | 0xfeff)
}

#[test]
fn every_view_escapes_foreign_text() {
    let home = Home::new();
    std::fs::create_dir_all(home.path().join("run")).expect("run dir");
    let listener = UnixListener::bind(home.socket()).expect("bind the stand-in socket");
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || serve(s, answer));
        }
    });
    let policy = home.path().join("p.toml");
    std::fs::write(&policy, "x = 1\n").expect("policy file");
    let policy = policy.display().to_string();
    // Every human-readable view loongctl has that shows text from loongd.
    let views: &[&[&str]] = &[
        &["status"],
        &["daemon", "status"],
        &["doctor"],
        &["audit", "recent"],
        &["audit", "show", "1"],
        &["audit", "summary"],
        &["audit", "token-trail", "t"],
        &["audit", "verify"],
        &["tokens", "list"],
        &[
            "tokens", "issue", "--pack", "p", "--agent", "a", "--cap", "fs.read", "--ttl", "1h",
        ],
        &["packs", "list"],
        &["packs", "show", HOSTILE_PACK],
        &["approvals", "list"],
        &["approvals", "show", HOSTILE_APPROVAL],
        &["approvals", "deny", HOSTILE_APPROVAL],
        &["keys", "list"],
        &["policy", "decide", "--cap", "fs.read", "--target", "/x"],
        &["policy", "check", &policy],
        &["invoke", "t", "--input", "{}"],
        &["plugins", "list"],
        &["plugins", "reload"],
        &["plugins", "verify", "--lock"],
        &["tools", "search", "x"],
        &["workers", "list"],
        &["workers", "kill", "1"],
        &["sandbox", "run", "--tier", "restricted", "--", "/bin/true"],
    ];
    let mut failures = Vec::new();
    for args in views {
        let out: Output = home.ctl(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let bad = obeyed(&text);
        if !bad.is_empty() {
            failures.push(format!("{args:?}: obeyed {bad:?} in {text:?}"));
        } else if !text.contains(SHOWN) && !text.contains("\\u{202e}") {
            failures.push(format!(
                "{args:?}: the hostile text was not shown: {text:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn plugins_doctor_warns_about_control_characters_in_manifest_text() {
    let home = Home::new();
    let dir = home.path().join("pkg");
    let dir_s = dir.display().to_string();
    let out = home.ctl(&["plugins", "init", &dir_s, "--kind", "wasm"]);
    assert!(out.status.success(), "{out:?}");
    // Positive control: the package as written has nothing to warn about.
    let clean = home.ctl(&["plugins", "doctor", &dir_s]);
    let clean_text = String::from_utf8_lossy(&clean.stdout).to_string();
    assert!(clean.status.success(), "{clean_text}");
    assert!(!clean_text.contains("WARN"), "{clean_text}");

    let manifest = dir.join("loong.plugin.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).expect("manifest")).expect("json");
    m["summary"] = serde_json::Value::String(HOSTILE.into());
    m["tags"] = serde_json::json!(["ok", "\u{202e}txt"]);
    std::fs::write(&manifest, m.to_string()).expect("write manifest");
    let out = home.ctl(&["plugins", "doctor", &dir_s]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(obeyed(&text).is_empty(), "{text:?}");
    assert!(
        text.contains("WARN  summary: control or invisible format characters in \\x1b[2J"),
        "{text}"
    );
    assert!(text.contains("WARN  tags[1]: "), "{text}");
    assert!(!text.contains("tags[0]"), "{text}");
}

#[test]
fn package_views_show_foreign_names_escaped_one_line_each() {
    let home = Home::new();
    let dir = home.path().join("pkg");
    let dir_s = dir.display().to_string();
    let out = home.ctl(&["plugins", "init", &dir_s, "--kind", "wasm"]);
    assert!(out.status.success(), "{out:?}");
    // Positive control: the package's own names are listed as they are.
    let clean = home.ctl(&["plugins", "verify", &dir_s]);
    let clean_text = String::from_utf8_lossy(&clean.stdout).to_string();
    assert!(clean_text.contains("  loong.plugin.json"), "{clean_text}");

    // A file name is the package's: a bidi override and a C1 CSI are valid in one.
    std::fs::write(dir.join("evil\u{202e}gnp.exe\u{9b}1m"), b"x").expect("file");
    let out = home.ctl(&["plugins", "verify", &dir_s]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(obeyed(&text).is_empty(), "{text:?}");
    assert!(text.contains("evil\\u{202e}gnp.exe\\x9b1m"), "{text}");

    // A line break in the manifest's text never makes a line of doctor's own.
    let manifest = dir.join("loong.plugin.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).expect("manifest")).expect("json");
    m["plugin_id"] = serde_json::Value::String("pkg\n  ok    FORGED".into());
    std::fs::write(&manifest, m.to_string()).expect("write manifest");
    let out = home.ctl(&["plugins", "doctor", &dir_s]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("FORGED"), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("  ok    FORGED")),
        "{text}"
    );
}

/// A daemon whose lists never move on: every page asked for, whatever its cursor, is the
/// first one again.
fn stuck(req: &ControlRequest) -> Result<ControlResponse, RemoteError> {
    match req {
        ControlRequest::TokenList(_) => Ok(ControlResponse::Tokens(vec![TokenView {
            id: "tok_same".into(),
            pack: "p".into(),
            agent: "a".into(),
            grants: vec![],
            issued_ms: 0,
            expires_ms: 0,
            generation: 1,
            state: "active".into(),
            secret: None,
        }])),
        other => answer(other),
    }
}

#[test]
fn a_list_that_does_not_move_on_ends_loongctl() {
    let home = Home::new();
    std::fs::create_dir_all(home.path().join("run")).expect("run dir");
    let listener = UnixListener::bind(home.socket()).expect("bind the stand-in socket");
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || serve(s, stuck));
        }
    });
    // Positive control: `--limit` ends a list whatever the daemon answers.
    let out = home.ctl(&["tokens", "list", "--limit", "1"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("tok_same")
            .count(),
        1
    );
    // Without it loongctl asked for the page after tok_same forever, printing it each time.
    let mut child = std::process::Command::new(crate::support::bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["tokens", "list"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run loongctl");
    let ended = crate::support::wait_until(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("loongctl's output");
    assert!(ended, "loongctl still asking after 20 s");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not move on"),
        "{err}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("tok_same")
            .count(),
        1
    );
}

/// A daemon relaying a plugin's failure whose message holds a line of loongctl's own.
fn failing(req: &ControlRequest) -> Result<ControlResponse, RemoteError> {
    match req {
        ControlRequest::Invoke(_) => Err(RemoteError::new(
            ErrorKind::WorkerFailed,
            "invalid_input: bad\nloongctl: FORGED approval granted",
        )),
        other => answer(other),
    }
}

#[test]
fn a_plugins_failure_never_prints_a_line_of_loongctls_own() {
    let home = Home::new();
    std::fs::create_dir_all(home.path().join("run")).expect("run dir");
    let listener = UnixListener::bind(home.socket()).expect("bind the stand-in socket");
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || serve(s, failing));
        }
    });
    let out = home.ctl(&["invoke", "t", "--input", "{}"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad\\nloongctl: FORGED"), "{err}");
    assert!(
        !err.lines().any(|l| l.starts_with("loongctl: FORGED")),
        "{err}"
    );
}
