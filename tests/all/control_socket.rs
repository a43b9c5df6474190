//! The control socket under attack: each attack ends only its own connection, and a
//! well-behaved client and `loongctl status` keep being answered throughout.

use std::{process::Command, time::Duration};

use loong_ipc::{
    Call, ControlRequest, ControlResponse, ErrorKind, HandshakeReply, Hello, PeerKind,
    RejectReason, Reply, PROTOCOL_VERSION,
};

use crate::support::{bin, is_root, skip, text, wait_until, Home, Raw};

/// Short deadlines so the trickle attack is quick; the rest is default.
const FAST_CONFIG: &str = "[ipc]\nframe_read_timeout_ms = 400\nhandshake_timeout_ms = 1000\n";

fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// The daemon still serves: a long-lived client gets a pong, and loongctl gets a status.
fn still_serving(home: &Home, loyal: &mut Raw, nonce: u64) {
    loyal
        .send(&Call::<ControlRequest>::Ping { nonce })
        .expect("loyal ping");
    assert_eq!(
        loyal.recv::<Reply<ControlResponse>>(),
        Some(Reply::Pong { nonce }),
        "loyal client after attack {nonce}"
    );
    home.status();
}

#[test]
fn attacks_end_only_their_own_connection() {
    let home = Home::with_config(FAST_CONFIG);
    let pid = home.start();
    let sock = home.socket();
    let mut loyal = Raw::connect(&sock);
    loyal.handshake();

    // 1. A 4 GiB length prefix, after a valid handshake and as the very first frame.
    let mut a = Raw::connect(&sock);
    a.handshake();
    a.send_bytes(&u32::MAX.to_le_bytes()).expect("send prefix");
    assert!(a.closed_by_peer(), "4 GiB prefix after hello");
    let mut a = Raw::connect(&sock);
    a.send_bytes(&u32::MAX.to_le_bytes()).expect("send prefix");
    assert_eq!(
        a.recv::<HandshakeReply>(),
        Some(HandshakeReply::Rejected(RejectReason::BadHello))
    );
    assert!(a.closed_by_peer());
    still_serving(&home, &mut loyal, 1);

    // 2. Truncated postcard: a request cut inside its varint id.
    let mut a = Raw::connect(&sock);
    a.handshake();
    a.send_bytes(&frame_of(&[0, 0x80])).expect("send");
    assert!(a.closed_by_peer(), "truncated body");
    still_serving(&home, &mut loyal, 2);

    // 3. Trailing garbage after a valid ping inside one frame.
    let mut a = Raw::connect(&sock);
    a.handshake();
    a.send_bytes(&frame_of(&[2, 5, 0xde, 0xad])).expect("send");
    assert!(a.closed_by_peer(), "trailing bytes");
    still_serving(&home, &mut loyal, 3);

    // 4. A request before the hello.
    let mut a = Raw::connect(&sock);
    a.send(&Call::Request {
        id: 1,
        deadline_ms: 1000,
        body: ControlRequest::Status,
    })
    .expect("send");
    assert_eq!(
        a.recv::<HandshakeReply>(),
        Some(HandshakeReply::Rejected(RejectReason::BadHello))
    );
    assert!(a.closed_by_peer(), "request before hello");
    still_serving(&home, &mut loyal, 4);

    // 5. A wrong protocol version: a typed refusal naming both versions.
    let mut a = Raw::connect(&sock);
    a.send(&Hello {
        protocol_version: PROTOCOL_VERSION + 1,
        peer_kind: PeerKind::Operator,
        build: "future".into(),
    })
    .expect("send");
    assert_eq!(
        a.recv::<HandshakeReply>(),
        Some(HandshakeReply::Rejected(RejectReason::VersionMismatch {
            server: PROTOCOL_VERSION,
            client: PROTOCOL_VERSION + 1
        }))
    );
    assert!(a.closed_by_peer(), "wrong version");
    still_serving(&home, &mut loyal, 5);

    // 6. A frame trickled a byte at a time, slower than the frame deadline allows.
    let mut a = Raw::connect(&sock);
    a.handshake();
    let mut bytes = Vec::new();
    loong_ipc::frame::encode(
        &Call::Request {
            id: 9,
            deadline_ms: 1000,
            body: ControlRequest::Status,
        },
        loong_ipc::FrameLimit::DEFAULT,
        &mut bytes,
    )
    .expect("encodes");
    let mut sent = 0;
    for b in &bytes {
        if a.send_bytes(&[*b]).is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(a.closed_by_peer(), "trickled frame");
    assert!(
        sent < bytes.len() || a.recv::<Reply<ControlResponse>>().is_none(),
        "the trickled request must not be answered"
    );
    still_serving(&home, &mut loyal, 6);

    // 7. Two hundred connections at once, half of them handshaken, all idle.
    let mut crowd: Vec<Raw> = (0..200).map(|_| Raw::connect(&sock)).collect();
    for c in crowd.iter_mut().step_by(2) {
        c.handshake();
    }
    let during = home.status();
    assert!(
        during.connected_clients >= 100,
        "connected_clients {} while 100 handshaken clients are connected",
        during.connected_clients
    );
    still_serving(&home, &mut loyal, 7);
    drop(crowd);
    assert!(
        wait_until(Duration::from_secs(10), || home.status().connected_clients
            <= 2),
        "the crowd's slots are released"
    );

    // The daemon never restarted, and it logged the violations.
    assert_eq!(home.status().pid, pid);
    let log = home.log();
    assert!(
        log.contains("protocol violation"),
        "log names protocol violations:\n{log}"
    );
}

#[test]
fn requests_are_bounded_deadlined_and_matched_by_id() {
    let home = Home::with_config("[ipc]\nmax_in_flight = 2\n");
    home.start();
    let mut c = Raw::connect(&home.socket());
    let welcome = c.handshake();
    assert_eq!(welcome.limits.max_in_flight, 2);
    // Two pipelined requests with distinct ids both get their own answers.
    c.send(&Call::Request {
        id: 10,
        deadline_ms: 5000,
        body: ControlRequest::Status,
    })
    .expect("send");
    c.send(&Call::Request {
        id: 11,
        deadline_ms: 5000,
        body: ControlRequest::Status,
    })
    .expect("send");
    let mut ids = Vec::new();
    for _ in 0..2 {
        match c.recv::<Reply<ControlResponse>>() {
            Some(Reply::Response {
                id,
                result: Ok(ControlResponse::Status(s)),
            }) => {
                assert_eq!(s.protocol_version, loong_ipc::PROTOCOL_VERSION);
                ids.push(id);
            }
            other => panic!("expected a status, got {other:?}"),
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, vec![10, 11]);
    // Cancelling a request that is already answered is a no-op; a ping still answers.
    c.send(&Call::<ControlRequest>::Cancel { id: 10 })
        .expect("send");
    c.send(&Call::<ControlRequest>::Ping { nonce: 99 })
        .expect("send");
    assert_eq!(
        c.recv::<Reply<ControlResponse>>(),
        Some(Reply::Pong { nonce: 99 })
    );
    // A zero deadline cannot be met.
    c.send(&Call::Request {
        id: 12,
        deadline_ms: 0,
        body: ControlRequest::Status,
    })
    .expect("send");
    match c.recv::<Reply<ControlResponse>>() {
        Some(Reply::Response {
            id: 12,
            result: Err(e),
        }) => assert_eq!(e.kind, ErrorKind::DeadlineExceeded),
        Some(Reply::Response {
            id: 12,
            result: Ok(_),
        }) => {} // answered within the same tick: allowed
        other => panic!("unexpected {other:?}"),
    }
}

/// The next response on `c`, skipping stream chunks.
fn next_response(c: &mut Raw) -> (u64, Result<ControlResponse, loong_ipc::RemoteError>) {
    loop {
        match c.recv::<Reply<ControlResponse>>() {
            Some(Reply::Response { id, result }) => return (id, result),
            Some(Reply::Stream { .. }) => {}
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

/// A request that stays in flight until it is cancelled: a confined `sleep`.
fn held(id: u64) -> Call<ControlRequest> {
    Call::Request {
        id,
        deadline_ms: 60_000,
        body: ControlRequest::SandboxRun(Box::new(loong_ipc::SandboxRunRequest {
            tier: "balanced".into(),
            program: "/bin/sleep".into(),
            args: vec!["30".into()],
            ..Default::default()
        })),
    }
}

fn status_call(id: u64) -> Call<ControlRequest> {
    Call::Request {
        id,
        deadline_ms: 5000,
        body: ControlRequest::Status,
    }
}

/// A status is answered by the connection's reading loop, without a task of its own, and
/// still as any request is: the id of a request in flight is refused (`DuplicateId`), a full
/// in-flight budget refuses it (`Overloaded`), and otherwise it is answered under its own id.
#[test]
fn a_status_answered_at_once_is_still_matched_by_id_and_bounded() {
    let home = Home::with_config("[ipc]\nmax_in_flight = 2\n");
    home.start();
    let mut c = Raw::connect(&home.socket());
    c.handshake();
    c.send(&held(1)).expect("send");
    c.send(&status_call(1)).expect("send");
    match next_response(&mut c) {
        (1, Err(e)) => assert_eq!(e.kind, ErrorKind::DuplicateId, "{e}"),
        other => panic!("a status reusing id 1 in flight: expected DuplicateId, got {other:?}"),
    }
    // The control: a fresh id is answered, under its own id, while the run is in flight.
    c.send(&status_call(2)).expect("send");
    match next_response(&mut c) {
        (2, Ok(ControlResponse::Status(s))) => {
            assert_eq!(s.protocol_version, loong_ipc::PROTOCOL_VERSION)
        }
        other => panic!("expected the status of id 2, got {other:?}"),
    }
    // Two runs fill the budget of 2: a status is refused, not answered past it.
    c.send(&held(3)).expect("send");
    c.send(&status_call(4)).expect("send");
    match next_response(&mut c) {
        (4, Err(e)) => assert_eq!(e.kind, ErrorKind::Overloaded, "{e}"),
        other => panic!("a status past max_in_flight: expected Overloaded, got {other:?}"),
    }
    // Once the runs are cancelled, a status is answered again.
    for id in [1, 3] {
        c.send(&Call::<ControlRequest>::Cancel { id })
            .expect("send");
    }
    let mut cancelled = Vec::new();
    for _ in 0..2 {
        match next_response(&mut c) {
            (id, Err(e)) if e.kind == ErrorKind::Cancelled => cancelled.push(id),
            other => panic!("expected a cancellation, got {other:?}"),
        }
    }
    cancelled.sort_unstable();
    assert_eq!(cancelled, vec![1, 3]);
    c.send(&status_call(5)).expect("send");
    assert!(
        matches!(next_response(&mut c), (5, Ok(ControlResponse::Status(_)))),
        "a status after the runs ended is answered\n{}",
        home.log()
    );
}

/// A cancelled request's place in the in-flight budget is free once its cancellation has been
/// read: the budget goes with the answer (here the `Cancelled` one), not with the cancelled
/// task, which the runtime drops some time later. With a budget of one, each round holds the
/// budget with a run, cancels it, and asks for a status at once; before, a status that
/// arrived before the runtime had dropped the cancelled task was refused `Overloaded` (seen
/// under a loaded machine's scheduling). The control is the same status asked while the run
/// holds the budget: refused.
#[test]
fn a_cancelled_requests_budget_is_free_once_its_cancellation_is_read() {
    const ROUNDS: u64 = 100;
    let home = Home::with_config("[ipc]\nmax_in_flight = 1\n");
    home.start();
    let mut c = Raw::connect(&home.socket());
    c.handshake();
    for round in 0..ROUNDS {
        let (run, status) = (2 * round + 1, 2 * round + 2);
        c.send(&held(run)).expect("send");
        if round == 0 {
            c.send(&status_call(status)).expect("send");
            match next_response(&mut c) {
                (id, Err(e)) if id == status => assert_eq!(e.kind, ErrorKind::Overloaded, "{e}"),
                other => {
                    panic!("a status past a budget of one: expected Overloaded, got {other:?}")
                }
            }
        }
        c.send(&Call::<ControlRequest>::Cancel { id: run })
            .expect("send");
        match next_response(&mut c) {
            (id, Err(e)) if id == run && e.kind == ErrorKind::Cancelled => {}
            other => panic!("round {round}: expected run {run} cancelled, got {other:?}"),
        }
        c.send(&status_call(status)).expect("send");
        match next_response(&mut c) {
            (id, Ok(ControlResponse::Status(_))) if id == status => {}
            other => panic!(
                "round {round}: a status after the cancellation was read: expected it answered, got {other:?}"
            ),
        }
    }
}

#[test]
fn peers_are_checked_with_so_peercred() {
    if !is_root() {
        skip(
            "peers_are_checked_with_so_peercred",
            "needs root to run a client under another uid",
        );
        return;
    }
    // With `nogroup` allowed, the socket is group-reachable; nobody:nogroup gets in, while
    // nobody with another primary group is refused by the credential check itself.
    let home = Home::with_config("[control]\nallowed_group = \"nogroup\"\n");
    home.start();
    // The home itself is 0700; let others traverse it to reach run/ (0710, group nogroup).
    std::fs::set_permissions(
        home.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .expect("chmod home");
    let as_user = |gid: &str| {
        Command::new("setpriv")
            .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups"])
            .arg(bin("loongctl"))
            .arg("--home")
            .arg(home.path())
            .args(["status", "--json"])
            .output()
            .expect("setpriv")
    };
    let allowed = as_user("65534");
    assert!(
        allowed.status.success(),
        "nobody:nogroup is in the allowed group: {}",
        text(&allowed.stderr)
    );
    // Same uid, another group: to reach the socket it must still pass the mode bits, so
    // open them and let SO_PEERCRED be the only guard.
    std::fs::set_permissions(
        home.path().join("run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .expect("chmod run");
    std::fs::set_permissions(
        home.socket(),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .expect("chmod sock");
    let refused = as_user("1");
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("uid 65534 is not allowed"),
        "{}",
        text(&refused.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(5), || home
            .log()
            .contains("refused a control connection from uid 65534")),
        "log names the uid:\n{}",
        home.log()
    );
    // The refusal is in the audit trail, naming the uid.
    let audit = home.ctl(&["audit", "recent", "--kind", "peer.refused", "--json"]);
    let records: serde_json::Value = serde_json::from_slice(&audit.stdout).expect("json");
    assert_eq!(records[0]["detail"]["uid"], 65534, "{records}");
    assert_eq!(records[0]["actor"], "uid:65534");
    home.status();
}

#[test]
fn connections_beyond_max_clients_are_refused_then_served_again() {
    let home = Home::with_config("[control]\nmax_clients = 2\n");
    home.start();
    let mut a = Raw::connect(&home.socket());
    a.handshake();
    let mut b = Raw::connect(&home.socket());
    b.handshake();
    let mut c = Raw::connect(&home.socket());
    assert_eq!(
        c.recv::<HandshakeReply>(),
        Some(HandshakeReply::Rejected(RejectReason::TooManyConnections {
            limit: 2
        }))
    );
    assert_eq!(
        home.ctl(&["status"]).status.code(),
        Some(1),
        "status is refused while both slots are taken"
    );
    drop((a, b));
    assert!(
        wait_until(Duration::from_secs(5), || home
            .ctl(&["status"])
            .status
            .success()),
        "a freed slot serves again"
    );
}

/// Opens `count` connections to `socket` as `uid:gid` and holds them, idle, until its stdin
/// closes; returns once all are connected.
struct IdlePeers(std::process::Child);

impl IdlePeers {
    fn open(socket: &std::path::Path, uid: u32, gid: u32, count: usize) -> IdlePeers {
        use std::io::BufRead;
        const HOLD: &str = r#"use Socket; my @held;
for (1..$ARGV[1]) { socket(my $s, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
  connect($s, pack_sockaddr_un($ARGV[0])) or die "connect: $!"; push @held, $s; }
$| = 1; print "held\n"; my $eof = <STDIN>;"#;
        let mut child = Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                "perl",
                "-e",
                HOLD,
            ])
            .arg(socket)
            .arg(count.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("setpriv perl");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line, "held\n", "all {count} connections are open");
        IdlePeers(child)
    }
}

impl Drop for IdlePeers {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// Lets any uid reach the socket through the mode bits, so SO_PEERCRED is the only guard.
fn open_to_everyone(home: &Home) {
    use std::os::unix::fs::PermissionsExt;
    for (p, mode) in [
        (home.path().to_path_buf(), 0o711),
        (home.path().join("run"), 0o711),
        (home.socket(), 0o666),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

#[test]
fn a_refused_peer_holds_nothing() {
    if !is_root() || Command::new("perl").arg("-v").output().is_err() {
        skip(
            "a_refused_peer_holds_nothing",
            "needs root (to connect as another uid) and perl (to hold idle connections)",
        );
        return;
    }
    // A long handshake timeout: a slot a refused peer held would stay taken all test long.
    let home = Home::with_config("[ipc]\nhandshake_timeout_ms = 60000\n");
    home.start();
    open_to_everyone(&home);
    // More idle connections from a refused uid than there are slots.
    let _idle = IdlePeers::open(&home.socket(), 65534, 65534, 300);
    home.status();
    // A refused client is told why, not that the daemon closed the connection.
    let refused = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["status"])
        .output()
        .expect("setpriv");
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("refused: uid 65534 is not allowed on this socket"),
        "{}",
        text(&refused.stderr)
    );
    let audit = home.ctl(&["audit", "recent", "--kind", "peer.refused", "--json"]);
    let records: serde_json::Value = serde_json::from_slice(&audit.stdout).expect("json");
    assert_eq!(records[0]["actor"], "uid:65534", "{records}");
}

#[test]
fn the_group_leaves_a_reserve_for_the_operator() {
    if !is_root() || Command::new("perl").arg("-v").output().is_err() {
        skip(
            "the_group_leaves_a_reserve_for_the_operator",
            "needs root (to connect as another uid) and perl (to hold idle connections)",
        );
        return;
    }
    // Four slots: the group may take two, the last two are root's and loongd's.
    let home = Home::with_config(
        "[control]\nallowed_group = \"nogroup\"\nmax_clients = 4\n[ipc]\nhandshake_timeout_ms = 60000\n",
    );
    home.start();
    open_to_everyone(&home);
    let as_member = || {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin("loongctl"))
            .arg("--home")
            .arg(home.path())
            .args(["status"])
            .output()
            .expect("setpriv")
    };
    // Positive control: a member is served while the group's slots are free.
    let served = as_member();
    assert!(served.status.success(), "{}", text(&served.stderr));
    let _idle = IdlePeers::open(&home.socket(), 65534, 65534, 2);
    let full = as_member();
    assert!(
        text(&full.stderr).contains("too many connections (limit 2)"),
        "{}",
        text(&full.stderr)
    );
    home.status();
}

#[test]
fn a_flood_of_refused_peers_is_counted_not_recorded_one_by_one() {
    if !is_root() || Command::new("perl").arg("-v").output().is_err() {
        skip(
            "a_flood_of_refused_peers_is_counted_not_recorded_one_by_one",
            "needs root (to connect as another uid) and perl (to open many connections)",
        );
        return;
    }
    // control::peer::REFUSALS_RECORDED_PER_WINDOW
    const ONE_BY_ONE: usize = 16;
    const FLOOD: usize = 400;
    let home = Home::new();
    home.start();
    open_to_everyone(&home);
    drop(IdlePeers::open(&home.socket(), 65534, 65534, FLOOD));
    // The backlog is served in order: once this is answered, every refused peer was seen.
    home.status();
    let refused = |home: &Home| -> Vec<serde_json::Value> {
        let out = home.ctl(&[
            "audit",
            "recent",
            "--kind",
            "peer.refused",
            "--limit",
            "1000",
            "--json",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let records: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        records.as_array().expect("records").clone()
    };
    // Positive control: the first refusals are each recorded, naming the uid.
    assert!(
        wait_until(Duration::from_secs(5), || refused(&home).len()
            >= ONE_BY_ONE),
        "{:?}",
        refused(&home)
    );
    let records = refused(&home);
    assert_eq!(
        records.len(),
        ONE_BY_ONE,
        "the flood is not one record each"
    );
    assert!(
        records.iter().all(|r| r["actor"] == "uid:65534"),
        "{records:?}"
    );
    // The rest are counted, and the count reaches the trail at the latest when loongd stops.
    assert_eq!(home.ctl(&["daemon", "stop"]).status.code(), Some(0));
    home.start();
    let records = refused(&home);
    let counted: Vec<_> = records
        .iter()
        .filter(|r| r["detail"]["refusals"].is_u64())
        .collect();
    assert_eq!(counted.len(), 1, "{records:?}");
    assert_eq!(counted[0]["actor"], "uid:65534");
    assert_eq!(
        counted[0]["detail"]["refusals"],
        (FLOOD - ONE_BY_ONE) as u64,
        "{records:?}"
    );
    assert_eq!(records.len(), ONE_BY_ONE + 1, "{records:?}");
}

/// Connects to `socket` as uid 65534, primary group 1 and no others (not a member of
/// `nogroup`), leaves the connection to a forked child and exits; returns the pids of the
/// connecting process and of the child.
fn connect_and_leave(socket: &std::path::Path) -> (u32, u32) {
    use std::io::BufRead;
    const LEAVE: &str = r#"use Socket; socket(my $s, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
connect($s, pack_sockaddr_un($ARGV[0])) or die "connect: $!";
my $child = fork() // die "fork: $!"; if ($child == 0) { close STDOUT; sleep 30; exit 0 }
$| = 1; print "$$ $child\n";"#;
    let mut perl = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=1",
            "--clear-groups",
            "perl",
            "-e",
            LEAVE,
        ])
        .arg(socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv perl");
    let mut line = String::new();
    std::io::BufReader::new(perl.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    perl.wait().expect("wait");
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    (pids[0], pids[1])
}

/// Starts a process that is a member of `nogroup` (uid 1, supplementary group 65534) as pid
/// `pid` (through `ns_last_pid`); `None` when another process took the pid first.
fn member_at_pid(pid: u32) -> Option<std::process::Child> {
    std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
    let child = Command::new("setpriv")
        .args(["--reuid=1", "--regid=1", "--groups=65534", "sleep", "30"])
        .spawn()
        .expect("setpriv sleep");
    if child.id() == pid {
        return Some(child);
    }
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn membership_is_what_the_peer_had_when_it_connected_not_what_its_pid_is_now() {
    let test = "membership_is_what_the_peer_had_when_it_connected_not_what_its_pid_is_now";
    if !is_root()
        || Command::new("perl").arg("-v").output().is_err()
        || std::fs::metadata("/proc/sys/kernel/ns_last_pid").is_err()
    {
        skip(
            test,
            "needs root, perl and ns_last_pid (to put another process at the peer's pid)",
        );
        return;
    }
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let home = Home::with_config("[control]\nallowed_group = \"nogroup\"\n");
    let daemon = Pid::from_raw(home.start() as i32);
    open_to_everyone(&home);
    // Positive control: a member by its supplementary groups only is served.
    let member = Command::new("setpriv")
        .args(["--reuid=1", "--regid=1", "--groups=65534"])
        .arg(bin("loongctl"))
        .arg("--home")
        .arg(home.path())
        .args(["status"])
        .output()
        .expect("setpriv");
    assert!(member.status.success(), "{}", text(&member.stderr));
    // A non-member connects while loongd is stopped, so the connection waits in the backlog;
    // it leaves the connection to a child and exits, and a member takes its pid.
    let mut held = None;
    for _ in 0..5 {
        kill(daemon, Signal::SIGSTOP).expect("SIGSTOP");
        let (peer, child) = connect_and_leave(&home.socket());
        let reused = (0..20).find_map(|_| member_at_pid(peer));
        if let Some(m) = reused {
            held = Some((m, child));
            break;
        }
        let _ = kill(Pid::from_raw(child as i32), Signal::SIGKILL);
        kill(daemon, Signal::SIGCONT).expect("SIGCONT");
    }
    let Some((mut impostor, child)) = held else {
        let _ = kill(daemon, Signal::SIGCONT);
        skip(
            test,
            "could not put a process at the peer's pid (a busy host)",
        );
        return;
    };
    // The impostor is a member once setpriv has set its groups (and exec'd sleep).
    let status = format!("/proc/{}/status", impostor.id());
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&status)
            .is_ok_and(
                |s| s.contains("Groups:\t65534") && s.contains("Name:\tsleep")
            )),
        "the impostor is a member of nogroup"
    );
    kill(daemon, Signal::SIGCONT).expect("SIGCONT");
    let refused = wait_until(Duration::from_secs(5), || {
        home.log()
            .contains("refused a control connection from uid 65534")
    });
    let _ = impostor.kill();
    let _ = impostor.wait();
    let _ = kill(Pid::from_raw(child as i32), Signal::SIGKILL);
    assert!(refused, "the non-member is refused:\n{}", home.log());
    home.status();
}

/// Requests a client sends without reading a single answer (far more than loongd's socket
/// buffers and the client's could hold if loongd stopped reading).
const UNREAD_REQUESTS: u64 = 10_000;
/// Requests sent at once, then a pause: half of the default `max_in_flight`, so that each
/// batch is answered before the next and none is refused for being in flight.
const UNREAD_BATCH: u64 = 32;

/// A client that sends requests and reads none of the answers holds at most `max_in_flight`
/// answers in loongd: past that it is refused, and once the refusals fill its queue it is no
/// longer read, so its own sends block. Each answer had been taken off the in-flight count
/// before it was queued, so a client pacing its requests below `max_in_flight` was read on
/// without bound, parking one task and its answer per request behind the stalled writer.
/// Once the client reads, everything it was answered arrives (the control), and another
/// client is served throughout.
#[test]
fn a_client_that_reads_no_answers_is_no_longer_read() {
    use std::io::Write;
    let home = Home::new();
    home.start();
    let mut loyal = Raw::connect(&home.socket());
    loyal.handshake();
    let mut c = Raw::connect(&home.socket());
    c.handshake();
    let mut sender = c.stream.try_clone().expect("clone");
    sender
        .set_write_timeout(Some(Duration::from_secs(3)))
        .expect("write timeout");
    let mut sent = 0;
    for id in 1..=UNREAD_REQUESTS {
        let mut frame = Vec::new();
        loong_ipc::frame::encode(
            &Call::Request {
                id,
                deadline_ms: 60_000,
                body: ControlRequest::Status,
            },
            loong_ipc::FrameLimit::CEILING,
            &mut frame,
        )
        .expect("encodes");
        if sender.write_all(&frame).is_err() {
            break;
        }
        sent += 1;
        if id % UNREAD_BATCH == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(
        sent < UNREAD_REQUESTS,
        "loongd read all {sent} requests of a client that read none of its answers"
    );
    still_serving(&home, &mut loyal, 1);
    // The control: what was answered arrives once the client reads, refusals after the
    // first answers. (The last frame may be cut, which then ends the connection.)
    let (mut answered, mut refused) = (0, 0);
    while let Some(reply) = c.recv::<Reply<ControlResponse>>() {
        match reply {
            Reply::Response { result: Ok(_), .. } => answered += 1,
            Reply::Response { result: Err(e), .. } if e.kind == ErrorKind::Overloaded => {
                refused += 1
            }
            other => panic!("unexpected {other:?}"),
        }
        if answered + refused == sent {
            break;
        }
    }
    eprintln!("{sent} sent, {answered} answered, {refused} refused");
    assert!(
        answered >= 4 && refused >= 1,
        "{sent} sent, {answered} answered, {refused} refused"
    );
    still_serving(&home, &mut loyal, 2);
}

/// A run's output and its answer keep their order, and every frame arrives whole, while the
/// same client floods pings and statuses (answered at once by the reading loop) and reads
/// slowly (the writer task draining what is queued).
#[test]
fn a_runs_output_precedes_its_answer_while_pings_and_statuses_flood() {
    use loong_ipc::StreamChunk;
    const BYTES: usize = 2_000_000;
    let home = Home::new();
    home.start();
    let mut c = Raw::connect(&home.socket());
    c.handshake();
    c.send(&Call::Request {
        id: 1,
        deadline_ms: 120_000,
        body: ControlRequest::SandboxRun(Box::new(loong_ipc::SandboxRunRequest {
            tier: "balanced".into(),
            program: "/usr/bin/head".into(),
            args: vec!["-c".into(), BYTES.to_string(), "/dev/zero".into()],
            ..Default::default()
        })),
    })
    .expect("send");
    let mut sender = Raw {
        stream: c.stream.try_clone().expect("clone"),
    };
    let flood = std::thread::spawn(move || {
        let mut n = 0u64;
        for i in 0..3000u64 {
            let call = if i % 2 == 0 {
                Call::<ControlRequest>::Ping { nonce: i }
            } else {
                status_call(100 + i)
            };
            if sender.send(&call).is_err() {
                break;
            }
            n += 1;
        }
        n
    });
    let (mut out, mut done, mut after, mut pongs, mut statuses, mut overloaded) =
        (0usize, false, 0, Vec::new(), 0, 0);
    let mut k = 0u64;
    while let Some(r) = c.recv::<Reply<ControlResponse>>() {
        k += 1;
        if k.is_multiple_of(50) {
            std::thread::sleep(Duration::from_millis(2));
        }
        match r {
            Reply::Stream { id: 1, chunk } => {
                if done {
                    after += 1;
                }
                if let StreamChunk::Stdout(b) = chunk {
                    out += b.len();
                }
            }
            Reply::Response { id: 1, result } => {
                done = true;
                eprintln!("run answered: {result:?}");
            }
            Reply::Pong { nonce } => pongs.push(nonce),
            Reply::Response { result: Ok(_), .. } => statuses += 1,
            Reply::Response { result: Err(e), .. } if e.kind == ErrorKind::Overloaded => {
                overloaded += 1
            }
            other => panic!("unexpected {other:?}"),
        }
        if done && pongs.len() == 1500 && statuses + overloaded == 1500 {
            break;
        }
    }
    let sent = flood.join().expect("flood");
    let inversions = pongs.windows(2).filter(|w| w[0] > w[1]).count();
    eprintln!(
        "sent {sent} out {out} done {done} after {after} pongs {} inversions {inversions} statuses {statuses} overloaded {overloaded}",
        pongs.len()
    );
    assert!(done && after == 0 && out == BYTES);
}

/// An answer too large for the connection's frame limit ends the writer, and with it the
/// connection's output: the client sees the end at once, instead of waiting for an answer
/// that was lost while later ones were still written (the reading loop and the requests'
/// tasks kept the socket open). A ping before it is answered (the control).
#[test]
fn an_answer_too_large_for_a_frame_hangs_up_at_once() {
    const SMALL_FRAMES: &str = "[ipc]\nmax_frame_bytes = 600\n";
    let home = Home::with_config(SMALL_FRAMES);
    home.start();
    let mut loyal = Raw::connect(&home.socket());
    loyal.handshake();
    let mut c = Raw::connect(&home.socket());
    c.handshake();
    c.send(&Call::<ControlRequest>::Ping { nonce: 1 })
        .expect("send");
    assert_eq!(
        c.recv::<Reply<ControlResponse>>(),
        Some(Reply::Pong { nonce: 1 })
    );
    // loongd's metrics are far larger than 600 bytes.
    c.send(&Call::Request {
        id: 1,
        deadline_ms: 5000,
        body: ControlRequest::Metrics,
    })
    .expect("send");
    c.stream
        .set_read_timeout(Some(Duration::from_secs(4)))
        .expect("timeout");
    assert!(
        c.closed_by_peer(),
        "the connection whose answer was lost was not hung up on\n{}",
        home.log()
    );
    still_serving(&home, &mut loyal, 1);
}
