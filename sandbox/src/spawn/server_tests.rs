//! The spawn server's tests: its answer awaited on the runtime, late answers, restarts by
//! generation, a dropped server killed and reaped off the dropping thread.

use super::*;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};

/// A spawn server played by the test: our end in a [`Server`] (its process a `true`),
/// the server's end returned, and a descriptor to send in requests and answers.
fn fake_server() -> (Server, OwnedFd, OwnedFd) {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .expect("socketpair");
    let process = Command::new("true").spawn().expect("true");
    let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let server = Server {
        sock: ours,
        process: Some(process),
        next: 0,
    };
    (server, theirs, r)
}

/// The sequence number of the request waiting on `theirs`, if one is.
fn take_request(theirs: &OwnedFd) -> Option<u64> {
    let mut buf = [0u8; 16];
    let mut cmsg = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        theirs.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    for c in msg.cmsgs().expect("cmsgs") {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            drop(fds.into_iter().map(sys::adopt_fd).collect::<Vec<_>>());
        }
    }
    assert_eq!(msg.bytes, server::MESSAGE_BYTES);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&buf[5..server::MESSAGE_BYTES]);
    Some(u64::from_le_bytes(seq))
}

/// Answers request `seq`: spawned as `pid`, with `fd` for its pidfd.
fn give_answer(theirs: &OwnedFd, pid: i32, seq: u64, fd: &OwnedFd) {
    let mut bytes = [0u8; server::MESSAGE_BYTES];
    bytes[0] = server::SPAWNED;
    bytes[1..5].copy_from_slice(&pid.to_le_bytes());
    bytes[5..].copy_from_slice(&seq.to_le_bytes());
    sendmsg::<()>(
        theirs.as_raw_fd(),
        &[io::IoSlice::new(&bytes)],
        &[ControlMessage::ScmRights(&[fd.as_raw_fd()])],
        MsgFlags::empty(),
        None,
    )
    .expect("answer");
}

/// A server dropped (replaced, or not answering, under the lock on a runtime thread) is
/// killed at once and reaped by a thread of its own: the process is gone soon after,
/// leaving no zombie.
#[test]
fn a_dropped_server_is_killed_and_reaped_off_the_dropping_thread() {
    let (mut server, _theirs, _fd) = fake_server();
    let sleeper = Command::new("sleep").arg("300").spawn().expect("sleep");
    let pid = sleeper.id();
    server.process = Some(sleeper);
    drop(server);
    let gone = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(
        gone,
        "the dropped server {pid} is still running or unreaped"
    );
}

/// How long dropping a server may take on the dropping thread in the test below.
const DROP_RETURNS_WITHIN: Duration = Duration::from_secs(2);

/// A server that cannot be reaped yet (here: traced by a stopped `strace`, so its exit is
/// seen by no one but the tracer, as a server stuck in uninterruptible sleep is not
/// reaped) does not hold the thread that drops it: before, the drop waited for the reap
/// on that thread (a runtime worker of loongd's, the server's lock held). Control: once
/// the tracer is gone, the server is reaped (by its reaper thread).
#[test]
fn a_dropped_server_that_cannot_be_reaped_yet_does_not_hold_the_dropping_thread() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let (mut server, _theirs, _fd) = fake_server();
    let mut sleeper = Command::new("sleep").arg("300").spawn().expect("sleep");
    let pid = sleeper.id();
    let tracer = Command::new("strace")
        .args(["-qq", "-o", "/dev/null", "-p", &pid.to_string()])
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut tracer) = tracer else {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        eprintln!("SKIPPED a_dropped_server_that_cannot_be_reaped_yet_does_not_hold_the_dropping_thread: strace is not installed");
        return;
    };
    let traced = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
        })
    });
    assert!(traced, "strace did not attach to {pid}");
    kill(Pid::from_raw(tracer.id() as i32), Signal::SIGSTOP).expect("stop the tracer");
    server.process = Some(sleeper);
    let (done, returned) = mpsc::channel();
    std::thread::spawn(move || {
        drop(server);
        let _ = done.send(());
    });
    let returned = returned.recv_timeout(DROP_RETURNS_WITHIN).is_ok();
    let _ = tracer.kill();
    let _ = tracer.wait();
    assert!(
        returned,
        "dropping the server held its thread until the server could be reaped"
    );
    let reaped = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(reaped, "the dropped server {pid} was never reaped");
}

/// A request whose caller gave up (loongd's request task dropped while it awaited the
/// answer) leaves its answer on the socket; the next request must not take it for its
/// own (it would watch and kill another sandbox's helper). Control: the next request's
/// own answer is taken.
#[test]
fn a_late_answer_to_a_request_given_up_is_never_taken_for_the_next() {
    let (mut server, theirs, fd) = fake_server();
    let given_up = server.send(&[fd.as_raw_fd()], 0, &[]).expect("send");
    let played = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match take_request(&theirs) {
                Some(seq) => seen.push(seq),
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        give_answer(&theirs, 100, seen[0], &fd);
        give_answer(&theirs, 101, seen[1], &fd);
        (theirs, seen)
    });
    let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let (pid, _pidfd) = server.request(&[r.as_raw_fd()], 0, &[]).expect("answer");
    let (_theirs, seen) = played.join().expect("fake server");
    assert_eq!(seen, [given_up, given_up + 1]);
    assert_eq!(pid, 101, "the answer to the request given up was taken");
}

/// The server's answer is awaited on the runtime, not read by a blocking call: on a
/// runtime of one thread the fake server is a task beside the request, so a blocking
/// read would keep it from ever answering (the request would time out). A request given
/// up while it waits (its future dropped) frees the lock, and its late answer is skipped.
#[test]
fn the_servers_answer_is_awaited_without_blocking_the_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (mut server, theirs, fd) = fake_server();
        let send_fd = fd.try_clone().expect("dup");
        let played = tokio::spawn(async move {
            let watched = watch(&theirs, tokio::io::Interest::READABLE).expect("watch");
            let mut seen = Vec::new();
            while seen.len() < 2 {
                let mut ready = watched.readable().await.expect("readable");
                match take_request(&theirs) {
                    Some(seq) => seen.push(seq),
                    None => ready.clear_ready(),
                }
            }
            give_answer(&theirs, 100, seen[0], &fd);
            give_answer(&theirs, 101, seen[1], &fd);
            (theirs, seen)
        });
        // Given up: the fake server answers nothing until a second request comes.
        let first = tokio::time::timeout(
            Duration::from_millis(50),
            server.request_async(&[send_fd.as_raw_fd()], 0, &[]),
        )
        .await;
        assert!(first.is_err(), "answered before a second request");
        let (pid, _pidfd) = tokio::time::timeout(
            SERVER_ANSWER_TIMEOUT,
            server.request_async(&[send_fd.as_raw_fd()], 0, &[]),
        )
        .await
        .expect("the fake server answered on the same thread")
        .expect("answer");
        assert_eq!(pid, 101);
        let (_theirs, seen) = played.await.expect("fake server");
        assert_eq!(seen, [0, 1]);
    });
}
