//! A small blocking client: one connection, one request at a time.
//!
//! loongctl uses it so that the CLI needs neither tokio nor threads. It speaks any message
//! family: [`Client::call`] is generic over the request and response types.

use std::{
    io::{self, Read, Write},
    os::{fd::AsFd, unix::net::UnixStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    poll::{poll, PollFd, PollFlags, PollTimeout},
};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    frame::{self, FrameBuffer, FrameError, FrameLimit},
    message::{
        envelope::{Call, RemoteError, Reply, RequestId, StreamChunk, MAX_DEADLINE_MS},
        handshake::{HandshakeError, HandshakeReply, Hello, PeerKind, Welcome},
    },
    spin::SpinWindow,
};

/// Extra time the client waits past a request's deadline for the callee's own
/// "deadline exceeded" answer.
pub const DEADLINE_GRACE: Duration = Duration::from_millis(500);

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// What this client is.
    pub peer_kind: PeerKind,
    /// This client's build, sent in `Hello`.
    pub build: String,
    /// Bound on connecting and on the handshake.
    pub timeout: Duration,
}

/// Why a call did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (it does not exist, or no process accepts on it).
    #[error("no daemon is listening on {}", socket.display())]
    NotRunning { socket: PathBuf },
    /// Connecting failed for another reason (permissions, a path that is not a socket).
    #[error("cannot connect to {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The socket failed after connecting.
    #[error("i/o error on the control socket: {0}")]
    Io(#[source] io::Error),
    /// No answer arrived in time.
    #[error("no answer before the deadline")]
    Timeout,
    /// The peer closed the connection.
    #[error("the daemon closed the connection")]
    Closed,
    /// A frame was over the limit or did not decode.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The callee answered with an error.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The callee answered a request this client did not send.
    #[error("answer to request {got}, expected {expected}")]
    UnexpectedReply { expected: RequestId, got: RequestId },
}

/// The largest request [`Client::connect_with`] sends behind its hello, before it knows the
/// callee's frame limit (loongd's default is 1 MiB; one configured below 4 KiB refuses such a
/// request as it would refuse it sent after the handshake).
pub const PIPELINED_MAX_BYTES: usize = 4096;

/// The deadline as the envelope carries it.
fn deadline_ms(deadline: Duration) -> u32 {
    u32::try_from(deadline.as_millis())
        .unwrap_or(MAX_DEADLINE_MS)
        .min(MAX_DEADLINE_MS)
}

/// How long a blocking write of one frame may take.
pub const CONNECT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How far past its own bound a socket timeout already set may let one read or write wait
/// before it is set again. A call sets `SO_RCVTIMEO`/`SO_SNDTIMEO` only when the timeout in
/// place is longer than what remains of its bound by more than this (or when none is set
/// yet), so calls in a row with the same deadline set none; a timeout in place that is
/// shorter than what remains ends the wait early, and the wait is taken up again with what
/// remains. So a call returns [`ClientError::Timeout`] at most `TIMEOUT_SLACK` after its
/// bound, never before it.
pub const TIMEOUT_SLACK: Duration = Duration::from_millis(20);

/// The socket timeout in place on one direction of a socket (shared by the handles of one
/// socket: a socket option is the socket's, not the handle's), so that it is set only when
/// it must change.
#[derive(Debug, Clone, Default)]
struct SetTimeout(Arc<Mutex<Option<Duration>>>);

impl SetTimeout {
    /// Bounds the next blocking read or write to about `left` (within [`TIMEOUT_SLACK`]):
    /// sets the timeout through `set` only when none is in place, or when the one in place
    /// would wait longer than `left` plus the slack.
    fn bound(
        &self,
        left: Duration,
        set: impl FnOnce(Option<Duration>) -> io::Result<()>,
    ) -> Result<(), ClientError> {
        let mut in_place = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if in_place.is_some_and(|t| t <= left + TIMEOUT_SLACK) {
            return Ok(());
        }
        // Unknown if setting it fails part-way.
        *in_place = None;
        set(Some(left)).map_err(ClientError::Io)?;
        *in_place = Some(left);
        Ok(())
    }

    /// Sets the timeout to exactly `left`: after a wait the timeout in place ended early.
    fn reset(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Writes all of `bytes` to `stream`, each blocking write bounded by `until` (within
/// [`TIMEOUT_SLACK`]): a timeout in place that ends a write before `until` is set again to
/// what remains, and the write goes on where it stopped.
fn write_until(
    stream: &mut UnixStream,
    timeout: &SetTimeout,
    mut bytes: &[u8],
    until: Instant,
) -> Result<(), ClientError> {
    while !bytes.is_empty() {
        let s = &*stream;
        timeout.bound(remaining(until)?, |t| s.set_write_timeout(t))?;
        match stream.write(bytes) {
            Ok(0) => return Err(ClientError::Closed),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => timeout.reset(),
            Err(e) => return Err(io_error(e)),
        }
    }
    Ok(())
}

/// An event of a streaming request.
#[derive(Debug)]
pub enum Event<Resp> {
    /// Output while it runs.
    Chunk(StreamChunk),
    /// The final answer.
    Done(Resp),
}

/// Sends input chunks for a streaming request (see [`Client::input`]).
#[derive(Debug)]
pub struct InputWriter {
    stream: UnixStream,
    write_timeout: SetTimeout,
    out: Vec<u8>,
    limit: FrameLimit,
}

impl InputWriter {
    /// Sends `chunk` for request `id`.
    pub fn send(&mut self, id: RequestId, chunk: StreamChunk) -> Result<(), ClientError> {
        self.out.clear();
        frame::encode(&Call::<()>::Stream { id, chunk }, self.limit, &mut self.out)?;
        write_until(
            &mut self.stream,
            &self.write_timeout,
            &self.out,
            Instant::now() + CONNECT_WRITE_TIMEOUT,
        )
    }
}

/// A connected, handshaken client.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    /// The socket's receive and send timeouts in place (the send one shared with the
    /// connection's [`InputWriter`]s).
    write_timeout: SetTimeout,
    buf: FrameBuffer,
    out: Vec<u8>,
    welcome: Welcome,
    next_id: RequestId,
    /// How long a wait for the callee polls before it sleeps ([`crate::spin`]).
    spin: SpinWindow,
}

impl Client {
    /// Connects to `socket` and performs the handshake.
    pub fn connect(socket: &Path, opts: &ConnectOptions) -> Result<Client, ClientError> {
        let mut client = Client::open(socket)?;
        client.out.clear();
        frame::encode(
            &Hello::new(opts.peer_kind, opts.build.clone()),
            client.buf.limit(),
            &mut client.out,
        )?;
        client.handshake(Instant::now() + opts.timeout)?;
        Ok(client)
    }

    /// Connects to `socket` and sends `body` as its first request in the same write as the
    /// hello, so the request costs no round trip of its own; returns the request's id, whose
    /// answer is read with [`Client::next_event`]. A request that encodes to more than
    /// [`PIPELINED_MAX_BYTES`] waits for the handshake instead (the callee's frame limit is
    /// known only then). The callee reads the request only after it welcomed the hello; a
    /// refused hello is answered, and the request never read.
    pub fn connect_with<Req: Serialize>(
        socket: &Path,
        opts: &ConnectOptions,
        body: Req,
        deadline: Duration,
    ) -> Result<(Client, RequestId), ClientError> {
        let (client, id, _) = Client::connect_with_input(socket, opts, body, deadline, None)?;
        Ok((client, id))
    }

    /// [`Client::connect_with`], with `input`, the request's first input chunk (a stdin's
    /// end known before connecting), sent in the same write behind a request that went with
    /// the hello: the callee reads hello, request and chunk at once instead of being woken
    /// again for the chunk. Returns whether the chunk went (not when the request waited for
    /// the handshake: the caller then sends it itself).
    pub fn connect_with_input<Req: Serialize>(
        socket: &Path,
        opts: &ConnectOptions,
        body: Req,
        deadline: Duration,
        input: Option<StreamChunk>,
    ) -> Result<(Client, RequestId, bool), ClientError> {
        let mut client = Client::open(socket)?;
        client.out.clear();
        let hello = Hello::new(opts.peer_kind, opts.build.clone());
        frame::encode(&hello, client.buf.limit(), &mut client.out)?;
        let id = client.take_id();
        let request = Call::Request {
            id,
            deadline_ms: deadline_ms(deadline),
            body,
        };
        let hello_len = client.out.len();
        let small = FrameLimit::new(PIPELINED_MAX_BYTES as u64)?;
        let pipelined = frame::encode(&request, small, &mut client.out).is_ok();
        let request_end = client.out.len();
        let input_sent = match input {
            Some(chunk) if pipelined => {
                let chunk = Call::<()>::Stream { id, chunk };
                let fits = frame::encode(&chunk, small, &mut client.out).is_ok();
                if !fits {
                    client.out.truncate(request_end);
                }
                fits
            }
            _ => false,
        };
        client.handshake(Instant::now() + opts.timeout)?;
        let sent = request_end.saturating_sub(hello_len + frame::LEN_PREFIX_BYTES);
        if !pipelined {
            client.send(&request, Instant::now() + CONNECT_WRITE_TIMEOUT)?;
        } else if sent > client.buf.limit().get() as usize {
            // Only a daemon configured below PIPELINED_MAX_BYTES gets here; it refuses the
            // frame as it would have refused the request sent after the handshake.
            return Err(FrameError::TooLarge {
                len: sent as u64,
                limit: client.buf.limit().get(),
            }
            .into());
        }
        Ok((client, id, input_sent))
    }

    /// A connected client that has not yet sent anything.
    fn open(socket: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                socket: socket.to_path_buf(),
            },
            _ => ClientError::Connect {
                socket: socket.to_path_buf(),
                source,
            },
        })?;
        Ok(Client {
            stream,
            write_timeout: SetTimeout::default(),
            buf: FrameBuffer::new(FrameLimit::DEFAULT),
            out: Vec::new(),
            welcome: Welcome {
                protocol_version: 0,
                build: String::new(),
                connection_id: 0,
                limits: crate::Limits {
                    max_frame_bytes: 0,
                    max_in_flight: 0,
                    frame_read_timeout_ms: 0,
                },
            },
            next_id: 1,
            spin: SpinWindow::default(),
        })
    }

    /// Writes what `out` holds (the hello, perhaps a request behind it) and reads the
    /// handshake's answer.
    fn handshake(&mut self, deadline: Instant) -> Result<(), ClientError> {
        // A daemon that refuses the peer at accept writes its refusal and closes without
        // reading the hello: sending may then fail, but the refusal is still there to read.
        let sent = self.write_out(deadline);
        // The hello's answer teaches the spin window nothing: it comes once a connection,
        // so a connection used for one call (`loongctl status`, `sandbox run`) never reads
        // the machine's load nor spins, and a window grows from the calls' own answers.
        let window = self.spin.clone();
        let received = self.receive(deadline);
        self.spin = window;
        let reply: HandshakeReply = match (received, sent) {
            (Ok(reply), _) => reply,
            (Err(_), Err(e)) | (Err(e), Ok(())) => return Err(e),
        };
        self.welcome = reply.into_welcome()?;
        self.buf.set_limit(FrameLimit::new(u64::from(
            self.welcome.limits.max_frame_bytes,
        ))?);
        Ok(())
    }

    fn take_id(&mut self) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// What the callee said in its `Welcome`.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends one request and waits for its answer, up to `deadline` plus [`DEADLINE_GRACE`].
    pub fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        body: Req,
        deadline: Duration,
    ) -> Result<Resp, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let deadline_ms = u32::try_from(deadline.as_millis())
            .unwrap_or(MAX_DEADLINE_MS)
            .min(MAX_DEADLINE_MS);
        let until = Instant::now() + deadline + DEADLINE_GRACE;
        self.send(
            &Call::Request {
                id,
                deadline_ms,
                body,
            },
            until,
        )?;
        loop {
            match self.receive::<Reply<Resp>>(until)? {
                Reply::Response { id: got, result } if got == id => return Ok(result?),
                Reply::Response { id: got, .. } => {
                    return Err(ClientError::UnexpectedReply { expected: id, got })
                }
                Reply::Pong { .. } | Reply::Stream { .. } => continue,
                // Only a worker asks loongd; a server that asks its client is broken.
                Reply::Kernel(k) => {
                    return Err(ClientError::UnexpectedReply {
                        expected: id,
                        got: k.id,
                    })
                }
                Reply::KernelCancel { id: got } => {
                    return Err(ClientError::UnexpectedReply { expected: id, got })
                }
            }
        }
    }

    /// Sends a request whose answer streams (see [`Client::next_event`]); returns its id.
    pub fn start<Req: Serialize>(
        &mut self,
        body: Req,
        deadline: Duration,
    ) -> Result<RequestId, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let deadline_ms = u32::try_from(deadline.as_millis())
            .unwrap_or(MAX_DEADLINE_MS)
            .min(MAX_DEADLINE_MS);
        self.send(
            &Call::Request {
                id,
                deadline_ms,
                body,
            },
            Instant::now() + CONNECT_WRITE_TIMEOUT,
        )?;
        Ok(id)
    }

    /// The next chunk or the final answer of streaming request `id`, waiting until `until`.
    pub fn next_event<Resp: DeserializeOwned>(
        &mut self,
        id: RequestId,
        until: Instant,
    ) -> Result<Event<Resp>, ClientError> {
        loop {
            match self.receive::<Reply<Resp>>(until)? {
                Reply::Stream { id: got, chunk } if got == id => return Ok(Event::Chunk(chunk)),
                Reply::Response { id: got, result } if got == id => {
                    return Ok(Event::Done(result?))
                }
                Reply::Stream { id: got, .. }
                | Reply::Response { id: got, .. }
                | Reply::KernelCancel { id: got } => {
                    return Err(ClientError::UnexpectedReply { expected: id, got })
                }
                Reply::Kernel(k) => {
                    return Err(ClientError::UnexpectedReply {
                        expected: id,
                        got: k.id,
                    })
                }
                Reply::Pong { .. } => continue,
            }
        }
    }

    /// Whether a whole frame is already read and waiting: the next [`Client::next_event`]
    /// then returns without reading the socket. A caller that polls the socket ([`AsFd`])
    /// beside other descriptors takes these first, or it would wait for bytes it has.
    pub fn has_frame(&self) -> bool {
        self.buf.has_frame()
    }

    /// A second handle on the connection that sends input chunks, for a thread feeding a
    /// streaming request while this client reads its events.
    pub fn input(&self) -> Result<InputWriter, ClientError> {
        Ok(InputWriter {
            stream: self.stream.try_clone().map_err(ClientError::Io)?,
            write_timeout: self.write_timeout.clone(),
            out: Vec::new(),
            limit: self.buf.limit(),
        })
    }

    /// Sends a ping and waits for its pong.
    pub fn ping(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let nonce = self.next_id;
        self.next_id += 1;
        let until = Instant::now() + timeout;
        self.send(&Call::<()>::Ping { nonce }, until)?;
        loop {
            if let Reply::<()>::Pong { nonce: got } = self.receive(until)? {
                if got == nonce {
                    return Ok(());
                }
            }
        }
    }

    fn send<T: Serialize>(&mut self, msg: &T, until: Instant) -> Result<(), ClientError> {
        self.out.clear();
        frame::encode(msg, self.buf.limit(), &mut self.out)?;
        self.write_out(until)
    }

    fn write_out(&mut self, until: Instant) -> Result<(), ClientError> {
        write_until(&mut self.stream, &self.write_timeout, &self.out, until)
    }

    fn receive<T: DeserializeOwned>(&mut self, until: Instant) -> Result<T, ClientError> {
        loop {
            if let Some(msg) = self.buf.next_message()? {
                return Ok(msg);
            }
            // Waits in poll(2) for POLLIN, not in a read(2) bounded by SO_RCVTIMEO: a read
            // asleep on a Unix stream socket is woken each time the peer takes a frame this
            // client wrote (the kernel's write-space wake-up, which a sleeping read does not
            // filter), so every call would wake its client once for nothing; a poll for
            // POLLIN sleeps through those, and its limit is the call's own (no socket option
            // to set). The read that follows finds bytes or the end, and does not sleep.
            if !self.wait_readable(until)? {
                continue;
            }
            let stream = &mut self.stream;
            match self.buf.fill(|space| stream.read(space))? {
                Ok(0) => return Err(ClientError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
    }
}

impl Client {
    /// Waits until `until` for bytes or the end, polling without sleeping for the spin
    /// window first ([`crate::spin`]: an answer that comes within it finds this thread, and
    /// its CPU, awake), then asleep in poll(2); adapts the window to how long the wait took.
    /// `false` when `until` passed first or a signal interrupted the sleep.
    fn wait_readable(&mut self, until: Instant) -> Result<bool, ClientError> {
        let start = Instant::now();
        let spin_until = until.min(start + self.spin.window());
        let mut ready = false;
        while !ready && Instant::now() < spin_until {
            ready = readable(&self.stream, Duration::ZERO)?;
            std::hint::spin_loop();
        }
        crate::spin::spun(
            Instant::now()
                .min(spin_until)
                .saturating_duration_since(start),
        );
        if !ready {
            ready = readable(&self.stream, remaining(until)?)?;
        }
        if ready {
            self.spin.record(start.elapsed());
        }
        Ok(ready)
    }
}

/// The connection's socket, for a caller that polls it beside other descriptors (see
/// [`Client::has_frame`]).
impl AsFd for Client {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// Waits up to `left` (rounded up to whole milliseconds, so never less) for `stream` to have
/// bytes to read or its end; `false` when `left` passed first or a signal interrupted the wait.
fn readable(stream: &UnixStream, left: Duration) -> Result<bool, ClientError> {
    let ms = left.as_micros().div_ceil(1000);
    let timeout =
        PollTimeout::try_from(i32::try_from(ms).unwrap_or(i32::MAX)).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(n) => Ok(n > 0),
        Err(Errno::EINTR) => Ok(false),
        Err(e) => Err(ClientError::Io(io::Error::from(e))),
    }
}

fn remaining(until: Instant) -> Result<Duration, ClientError> {
    match until.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(ClientError::Timeout),
    }
}

/// A blocking read or write that ended at its socket timeout.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn io_error(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ClientError::Closed,
        _ => ClientError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::net::UnixListener, thread};

    use super::*;
    use crate::message::handshake::PROTOCOL_VERSION;

    const WAIT: Duration = Duration::from_secs(5);

    /// A callee that reads `frames` frames before it writes anything, then welcomes the
    /// hello and answers the request it read; returns the request's body.
    fn callee(listener: UnixListener, frames: usize) -> thread::JoinHandle<String> {
        thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(WAIT)).expect("timeout");
            let mut buf = FrameBuffer::new(FrameLimit::DEFAULT);
            let hello: Hello = read_message(&mut s, &mut buf);
            let request: Option<Call<String>> =
                (frames > 1).then(|| read_message(&mut s, &mut buf));
            assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
            write_welcome(&mut s);
            let request = match request {
                Some(r) => r,
                None => read_message(&mut s, &mut buf),
            };
            let Call::Request { id, body, .. } = request else {
                panic!("not a request")
            };
            let mut out = Vec::new();
            let answer: Reply<String> = Reply::Response {
                id,
                result: Ok(format!("answer to {}", body.len())),
            };
            frame::encode(&answer, FrameLimit::DEFAULT, &mut out).expect("answer");
            s.write_all(&out).expect("write answer");
            body
        })
    }

    fn read_message<T: DeserializeOwned>(s: &mut UnixStream, buf: &mut FrameBuffer) -> T {
        loop {
            if let Some(m) = buf.next_message().expect("a frame") {
                return m;
            }
            let n = buf
                .fill(|space| s.read(space))
                .expect("fill")
                .expect("read");
            assert!(n > 0, "the client closed");
        }
    }

    fn options() -> ConnectOptions {
        ConnectOptions {
            peer_kind: PeerKind::Operator,
            build: "test".into(),
            timeout: WAIT,
        }
    }

    /// A small first request reaches the callee with the hello, before it welcomed anything:
    /// a callee that waits for both frames before writing answers it (with the request sent
    /// after the welcome it would wait until the client's timeout).
    #[test]
    fn a_small_first_request_travels_with_the_hello() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.sock");
        let server = callee(UnixListener::bind(&path).expect("bind"), 2);
        let (mut client, id) =
            Client::connect_with(&path, &options(), "status".to_string(), WAIT).expect("connect");
        let answer = client.next_event::<String>(id, Instant::now() + WAIT);
        assert!(
            matches!(answer, Ok(Event::Done(ref a)) if a == "answer to 6"),
            "{answer:?}"
        );
        assert_eq!(server.join().expect("callee"), "status");
    }

    /// A first request above PIPELINED_MAX_BYTES waits for the welcome (the callee's limit):
    /// the callee reads the hello alone, and the request still arrives and is answered.
    #[test]
    fn a_large_first_request_waits_for_the_welcome() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.sock");
        let server = callee(UnixListener::bind(&path).expect("bind"), 1);
        let big = "x".repeat(PIPELINED_MAX_BYTES + 1);
        let (mut client, id) =
            Client::connect_with(&path, &options(), big.clone(), WAIT).expect("connect");
        let answer = client.next_event::<String>(id, Instant::now() + WAIT);
        let want = format!("answer to {}", big.len());
        assert!(
            matches!(answer, Ok(Event::Done(ref a)) if *a == want),
            "{answer:?}"
        );
        assert_eq!(server.join().expect("callee"), big);
    }

    /// A first input chunk given with a small first request reaches the callee with hello
    /// and request, before it welcomed anything (a callee that reads all three before writing
    /// answers it; sent after the welcome, the chunk would leave it waiting until its read
    /// timeout); the client is told it went.
    #[test]
    fn a_first_input_chunk_travels_with_hello_and_request() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(WAIT)).expect("timeout");
            let mut buf = FrameBuffer::new(FrameLimit::DEFAULT);
            let _: Hello = read_message(&mut s, &mut buf);
            let request: Call<String> = read_message(&mut s, &mut buf);
            let chunk: Call<String> = read_message(&mut s, &mut buf);
            write_welcome(&mut s);
            let Call::Request { id, .. } = request else {
                panic!("not a request")
            };
            let mut out = Vec::new();
            let answer: Reply<String> = Reply::Response {
                id,
                result: Ok("done".into()),
            };
            frame::encode(&answer, FrameLimit::DEFAULT, &mut out).expect("answer");
            s.write_all(&out).expect("write answer");
            chunk
        });
        let (mut client, id, sent) = Client::connect_with_input(
            &path,
            &options(),
            "run".to_string(),
            WAIT,
            Some(StreamChunk::StdinEnd),
        )
        .expect("connect");
        assert!(sent, "the chunk did not go with the request");
        let answer = client.next_event::<String>(id, Instant::now() + WAIT);
        assert!(
            matches!(answer, Ok(Event::Done(ref a)) if a == "done"),
            "{answer:?}"
        );
        let chunk = server.join().expect("callee");
        assert!(
            matches!(chunk, Call::Stream { id: got, chunk: StreamChunk::StdinEnd } if got == id),
            "{chunk:?}"
        );
    }

    /// The control: behind a first request too large to go with the hello the chunk is not
    /// sent either (the caller sends it after), and the request is still answered.
    #[test]
    fn no_input_chunk_goes_behind_a_request_that_waits_for_the_welcome() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.sock");
        let server = callee(UnixListener::bind(&path).expect("bind"), 1);
        let big = "x".repeat(PIPELINED_MAX_BYTES + 1);
        let (mut client, id, sent) = Client::connect_with_input(
            &path,
            &options(),
            big.clone(),
            WAIT,
            Some(StreamChunk::StdinEnd),
        )
        .expect("connect");
        assert!(!sent, "a chunk went ahead of its request");
        let answer = client.next_event::<String>(id, Instant::now() + WAIT);
        assert!(matches!(answer, Ok(Event::Done(_))), "{answer:?}");
        assert_eq!(server.join().expect("callee"), big);
    }

    /// Answers a client's hello as loongd does: a welcome with the default limits.
    fn write_welcome(s: &mut UnixStream) {
        let mut out = Vec::new();
        let welcome = HandshakeReply::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            build: "test".into(),
            connection_id: 1,
            limits: crate::Limits {
                max_frame_bytes: FrameLimit::DEFAULT.get(),
                max_in_flight: 4,
                frame_read_timeout_ms: 1000,
            },
        });
        frame::encode(&welcome, FrameLimit::DEFAULT, &mut out).expect("welcome");
        s.write_all(&out).expect("write welcome");
    }

    /// A callee that welcomes the hello, then answers each request after the milliseconds
    /// its body names, or never when it names none.
    fn slow_callee(listener: UnixListener) -> thread::JoinHandle<()> {
        answering_callee(listener, None)
    }

    /// [`slow_callee`], its welcome written as it accepts when `welcome_first` is given (and
    /// told there), before the hello is read: the client's wait for it then ends at once.
    fn answering_callee(
        listener: UnixListener,
        welcome_first: Option<std::sync::mpsc::Sender<()>>,
    ) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = FrameBuffer::new(FrameLimit::DEFAULT);
            let early = welcome_first.is_some();
            if let Some(welcomed) = welcome_first {
                write_welcome(&mut s);
                welcomed.send(()).expect("welcomed");
            }
            let _: Hello = read_message(&mut s, &mut buf);
            if !early {
                write_welcome(&mut s);
            }
            loop {
                let request = loop {
                    match buf.next_message::<Call<String>>() {
                        Ok(Some(m)) => break m,
                        Ok(None) => {}
                        Err(e) => panic!("{e}"),
                    }
                    match buf.fill(|space| s.read(space)) {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    }
                };
                let Call::Request { id, body, .. } = request else {
                    continue;
                };
                let Ok(ms) = body.parse::<u64>() else {
                    continue;
                };
                thread::sleep(Duration::from_millis(ms));
                let mut out = Vec::new();
                let answer: Reply<String> = Reply::Response {
                    id,
                    result: Ok(body),
                };
                frame::encode(&answer, FrameLimit::DEFAULT, &mut out).expect("answer");
                if s.write_all(&out).is_err() {
                    return;
                }
            }
        })
    }

    /// The socket timeout a call leaves in place neither stretches a later call's bound (a
    /// long one, then a short one that is never answered: it ends at its own bound) nor
    /// shortens it (a short one that ended, then a long one answered after the short one's
    /// bound: it waits on and gets its answer).
    #[test]
    fn a_timeout_left_in_place_neither_stretches_nor_shortens_the_next_calls_bound() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.sock");
        let server = slow_callee(UnixListener::bind(&path).expect("bind"));
        let mut client = Client::connect(&path, &options()).expect("connect");
        let answer: Result<String, _> = client.call("0".to_string(), Duration::from_secs(20));
        assert_eq!(answer.ok().as_deref(), Some("0"));
        // Never answered, with a bound of 100 ms + DEADLINE_GRACE.
        let short = Duration::from_millis(100);
        let t = Instant::now();
        let answer: Result<String, _> = client.call("never".to_string(), short);
        let took = t.elapsed();
        assert!(matches!(answer, Err(ClientError::Timeout)), "{answer:?}");
        let bound = short + DEADLINE_GRACE;
        assert!(
            took >= bound && took < bound + TIMEOUT_SLACK + Duration::from_secs(1),
            "{took:?}"
        );
        // Answered after 1.2 s, past the bound the socket timeout was last set to.
        let answer: Result<String, _> = client.call("1200".to_string(), Duration::from_secs(5));
        assert_eq!(answer.ok().as_deref(), Some("1200"));
        drop(client);
        server.join().expect("callee");
    }

    /// The client's thread id, the signal it sends just before its last call, the thread
    /// (its voluntary switches before and after that call, and the answer), and the home of
    /// the callee's socket.
    type ClientThread = (
        i32,
        std::sync::mpsc::Receiver<()>,
        thread::JoinHandle<(u64, u64, String)>,
        tempfile::TempDir,
    );

    /// Makes one call `last` (a request body: answered after the milliseconds it names) on
    /// a client of its own thread whose spin window is `spin` (the default when `None`),
    /// after `warm` calls answered at once.
    fn client_thread(spin: Option<SpinWindow>, warm: usize, last: &'static str) -> ClientThread {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.sock");
        let server = slow_callee(UnixListener::bind(&path).expect("bind"));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel();
        let client = thread::spawn(move || {
            let tid = crate::test_support::thread_id();
            tid_tx.send(tid).expect("tid");
            let mut client = Client::connect(&path, &options()).expect("connect");
            if let Some(spin) = spin {
                client.spin = spin;
            }
            for _ in 0..warm {
                let answer: Result<String, _> = client.call("0".to_string(), WAIT);
                assert_eq!(answer.ok().as_deref(), Some("0"));
            }
            let before = crate::test_support::sleeps(tid);
            go_tx.send(()).expect("go");
            let answer: String = client.call(last.to_string(), WAIT).expect("answer");
            let after = crate::test_support::sleeps(tid);
            drop(client);
            server.join().expect("callee");
            (before, after, answer)
        });
        let tid = tid_rx.recv().expect("tid");
        (tid, go_rx, client, dir)
    }

    /// An answer that comes within the spin window finds the client awake: the call does not
    /// sleep (no voluntary switch), and the answer is its own. (Without the spin the client
    /// sleeps in poll(2) until the answer wakes it.)
    #[test]
    fn an_answer_within_the_spin_window_finds_the_client_awake() {
        let spin = SpinWindow::fixed(Duration::from_secs(3));
        let (_tid, _go, client, _dir) = client_thread(Some(spin), 0, "20");
        let (before, after, answer) = client.join().expect("client");
        assert_eq!(answer, "20");
        assert_eq!(
            after, before,
            "the client slept while the answer was on its way"
        );
    }

    /// A client whose window grew with answers given at once, then waits long for one, is
    /// asleep well before that answer: the spin is bounded (SPIN_MAX). The control: a client
    /// whose window outlasts the wait is still awake at the same point.
    #[test]
    fn a_client_that_waits_long_is_asleep_within_the_spin_bound() {
        let probe = Duration::from_millis(200);
        let (tid, go, client, _dir) = client_thread(None, 50, "600");
        go.recv().expect("go");
        thread::sleep(probe);
        let slept = crate::test_support::asleep(tid);
        let (before, after, answer) = client.join().expect("client");
        assert_eq!(answer, "600");
        assert!(slept, "the client was still awake {probe:?} into its wait");
        assert!(after > before, "the client never slept while it waited");

        let spin = SpinWindow::fixed(Duration::from_secs(3));
        let (tid, go, client, _dir) = client_thread(Some(spin), 0, "600");
        go.recv().expect("go");
        thread::sleep(probe);
        let slept = crate::test_support::asleep(tid);
        let (before, after, answer) = client.join().expect("client");
        assert_eq!(answer, "600");
        assert!(
            !slept,
            "the control: a client spinning through the wait is awake"
        );
        assert_eq!(after, before);
    }

    /// The hello's answer teaches the spin window nothing: a welcome that was waiting when
    /// the client read it leaves the window zero, so a connection used for one call never
    /// reads the machine's load nor spins. The control: answers to calls given at once grow
    /// it (the first of up to 100 calls whose wait was short enough).
    #[test]
    fn the_hello_s_answer_teaches_the_spin_window_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.sock");
        let (welcomed_tx, welcomed) = std::sync::mpsc::channel();
        let server = answering_callee(UnixListener::bind(&path).expect("bind"), Some(welcomed_tx));
        // The hello is sent once the welcome waits in the socket, as `connect` sends it.
        let mut client = Client::open(&path).expect("open");
        welcomed.recv().expect("welcomed");
        let opts = options();
        frame::encode(
            &Hello::new(opts.peer_kind, opts.build.clone()),
            client.buf.limit(),
            &mut client.out,
        )
        .expect("hello");
        client
            .handshake(Instant::now() + opts.timeout)
            .expect("handshake");
        assert_eq!(
            client.spin.window_given(true),
            Duration::ZERO,
            "the window grew from the hello's answer"
        );
        let mut grew = false;
        for _ in 0..100 {
            let answer: String = client.call("0".to_string(), WAIT).expect("answer");
            assert_eq!(answer, "0");
            if !client.spin.window_given(true).is_zero() {
                grew = true;
                break;
            }
        }
        assert!(grew, "the control: no call's answer grew the window");
        drop(client);
        server.join().expect("callee");
    }
}
