//! Typed outcomes across the wire: a client acts on `RemoteError::kind` and `detail` (the
//! approval pending or expired, the stage that denied, the class of a worker failure), never
//! on a message's text.

use std::{fs, time::Duration};

use loong_ipc::{
    client::{Client, ClientError, ConnectOptions, Event},
    BearerSecret, ControlRequest, ControlResponse, Denial, DenialStage, ErrorDetail, ErrorKind,
    FailureClass, FailureKind, InvokeRequest, PeerKind, RemoteError,
};

use crate::{
    support::{text, wait_until, Home},
    workers::install_examples,
};

fn client(home: &Home) -> Client {
    let opts = ConnectOptions {
        peer_kind: PeerKind::Operator,
        build: "test".into(),
        timeout: Duration::from_secs(5),
    };
    Client::connect(&home.socket(), &opts).expect("connect")
}

/// Invokes `tool` over a raw client with `deadline`; the answer, or the typed error.
fn invoke(
    home: &Home,
    tool: &str,
    token: Option<&str>,
    deadline: Duration,
) -> Result<ControlResponse, RemoteError> {
    let mut c = client(home);
    let id = c
        .start(
            ControlRequest::Invoke(InvokeRequest {
                tool: tool.into(),
                input: "{}".into(),
                token: token.map(BearerSecret::new),
            }),
            deadline,
        )
        .expect("start");
    let until = std::time::Instant::now() + deadline + Duration::from_secs(5);
    loop {
        match c.next_event::<ControlResponse>(id, until) {
            Ok(Event::Chunk(_)) => continue,
            Ok(Event::Done(r)) => return Ok(r),
            Err(ClientError::Remote(e)) => return Err(e),
            Err(e) => panic!("invoke {tool}: {e}"),
        }
    }
}

fn token(home: &Home, pack: &str, cap: &str) -> String {
    let out = home.ctl(&[
        "tokens", "issue", "--pack", pack, "--agent", "bot", "--cap", cap, "--ttl", "1h",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

fn approvals(home: &Home) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_slice(&home.ctl(&["approvals", "list", "--json"]).stdout)
            .unwrap_or_default();
    v.as_array().cloned().unwrap_or_default()
}

fn pending(home: &Home) -> Vec<String> {
    approvals(home)
        .iter()
        .filter(|x| x["state"] == "pending")
        .filter_map(|x| x["id"].as_str().map(String::from))
        .collect()
}

/// A home with the example plugins and a pack that asks for approval of every call, whose
/// requests expire after `approval_timeout_ms`.
fn home_with_careful_pack(approval_timeout_ms: u64) -> Home {
    let home = Home::with_config(&format!(
        "[approvals]\ntimeout_ms = {approval_timeout_ms}\n"
    ));
    install_examples(&home);
    fs::create_dir_all(home.path().join("packs")).expect("packs");
    fs::write(
        home.path().join("packs/careful.toml"),
        "id = \"careful\"\ndomain = \"test\"\nversion = \"1\"\ngrants = [\"tool.invoke:echo\"]\napproval = \"always\"\n",
    )
    .expect("pack");
    home.start();
    home
}

/// A request whose deadline passes while it waits for an approval is answered
/// `ApprovalPending` with the approval's id (it was a bare `DeadlineExceeded`, and loongctl
/// guessed exit 5 from the word "approval" in the note on stderr); the approval stays
/// pending. loongctl's exit code follows the typed class.
#[test]
fn a_deadline_passed_during_an_approval_is_a_typed_approval_pending() {
    let home = home_with_careful_pack(300_000);
    // Positive control: the operator's own call needs no approval and answers.
    assert!(matches!(
        invoke(&home, "echo", None, Duration::from_secs(30)),
        Ok(ControlResponse::Invoked(_))
    ));
    let careful = token(&home, "careful", "tool.invoke:echo");
    let err = invoke(&home, "echo", Some(&careful), Duration::from_millis(1500))
        .expect_err("held for an approval");
    // The approval it waited for is named, and withdrawn with the request.
    let asked: Vec<String> = approvals(&home)
        .iter()
        .filter_map(|x| x["id"].as_str().map(String::from))
        .collect();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(err.kind, ErrorKind::ApprovalPending, "{err}");
    assert_eq!(
        err.detail,
        Some(ErrorDetail::ApprovalPending {
            approval: asked[0].clone()
        }),
        "{err}"
    );
    assert!(
        err.message.contains("is withdrawn with the request"),
        "{err}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || pending(&home).is_empty()),
        "{:?}",
        approvals(&home)
    );
    // The same through loongctl: exit 5, from the class.
    let out = home.ctl(&["invoke", "echo", "--token", &careful, "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
}

/// A denial names its stage, capability and target; a dead token is denied at the token
/// stage; a worker's failure is its class.
#[test]
fn denials_and_failures_are_typed() {
    let home = Home::new();
    install_examples(&home);
    home.start();
    let reader = token(&home, "docs-reader", "tool.invoke:echo");
    // Positive control: within the token's grant.
    assert!(matches!(
        invoke(&home, "echo", Some(&reader), Duration::from_secs(30)),
        Ok(ControlResponse::Invoked(_))
    ));
    let err = invoke(
        &home,
        "json-transform",
        Some(&reader),
        Duration::from_secs(30),
    )
    .expect_err("outside the token");
    assert_eq!(err.kind, ErrorKind::Denied, "{err}");
    match &err.detail {
        Some(ErrorDetail::Denied(Denial {
            stage,
            capability,
            target,
            ..
        })) => {
            assert_eq!(*stage, DenialStage::TokenGrants, "{err}");
            assert_eq!(
                (capability.as_str(), target.as_str()),
                ("tool.invoke", "json-transform")
            );
        }
        other => panic!("not a typed denial: {other:?} ({err})"),
    }
    let err = invoke(&home, "echo", Some("not-a-secret"), Duration::from_secs(30))
        .expect_err("an unknown secret");
    assert!(
        matches!(&err.detail, Some(ErrorDetail::Denied(d)) if d.stage == DenialStage::Token),
        "{err:?}"
    );
    // A plugin that traps fails with its class, not text to parse.
    let dir = home.path().join("plugins/trap");
    fs::create_dir_all(&dir).expect("dir");
    fs::write(
        dir.join("plugin.wasm"),
        wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "run") (result i32) unreachable))"#)
            .expect("wat"),
    )
    .expect("module");
    fs::write(
        dir.join("loong.plugin.json"),
        r#"{"api_version": "v1alpha1", "plugin_id": "trap", "version": "0.1.0", "summary": "test",
        "capabilities": [], "metadata": {"bridge_kind": "wasm", "component": "plugin.wasm"},
        "sandbox": {"tier": "restricted"}}"#,
    )
    .expect("manifest");
    assert!(home.ctl(&["plugins", "reload"]).status.success());
    assert!(wait_until(Duration::from_secs(10), || text(
        &home.ctl(&["plugins", "list"]).stdout
    )
    .contains("trap")));
    let err = invoke(&home, "trap", None, Duration::from_secs(30)).expect_err("a trap");
    assert_eq!(err.kind, ErrorKind::WorkerFailed, "{err}");
    assert_eq!(
        err.detail,
        Some(ErrorDetail::WorkerFailed(FailureClass::Plugin(
            FailureKind::Trap
        ))),
        "{err}"
    );
}

/// An approval nobody answers before its own deadline is a typed `ApprovalExpired` naming it,
/// and a denied one a denial at the approval stage.
#[test]
fn an_expired_or_denied_approval_is_typed() {
    let home = home_with_careful_pack(1_000);
    let careful = token(&home, "careful", "tool.invoke:echo");
    let err = invoke(&home, "echo", Some(&careful), Duration::from_secs(30)).expect_err("expired");
    assert_eq!(err.kind, ErrorKind::ApprovalPending, "{err}");
    let Some(ErrorDetail::ApprovalExpired { approval }) = &err.detail else {
        panic!("not a typed expiry: {err:?}");
    };
    let shown = home.ctl(&["approvals", "show", approval, "--json"]);
    assert!(
        text(&shown.stdout).contains("expired"),
        "{}",
        text(&shown.stdout)
    );
    // Denied by an operator while it waits: a denial at the approval stage.
    let home = home_with_careful_pack(300_000);
    let careful = token(&home, "careful", "tool.invoke:echo");
    let asker = {
        let socket = home.socket();
        let secret = careful.clone();
        std::thread::spawn(move || {
            let opts = ConnectOptions {
                peer_kind: PeerKind::Operator,
                build: "test".into(),
                timeout: Duration::from_secs(5),
            };
            let mut c = Client::connect(&socket, &opts).expect("connect");
            c.call::<_, ControlResponse>(
                ControlRequest::Invoke(InvokeRequest {
                    tool: "echo".into(),
                    input: "{}".into(),
                    token: Some(BearerSecret::new(secret)),
                }),
                Duration::from_secs(30),
            )
        })
    };
    let mut waiting = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        waiting = pending(&home);
        waiting.len() == 1
    }));
    assert!(home
        .ctl(&["approvals", "deny", &waiting[0]])
        .status
        .success());
    let err = match asker.join().expect("asker") {
        Err(ClientError::Remote(e)) => e,
        other => panic!("not denied: {other:?}"),
    };
    assert_eq!(err.kind, ErrorKind::Denied, "{err}");
    assert!(
        matches!(&err.detail, Some(ErrorDetail::Denied(d)) if d.stage == DenialStage::Approval && d.target == "echo"),
        "{err:?}"
    );
}
