//! A connection's write half, shared by its writer task and by whoever makes a reply when
//! nothing is queued: the reading loop (a pong, a refusal, an answer given at once) and a
//! request's task (its answer) then write it themselves, without waking the writer task.
//! The writer task writes what is queued (back-pressure: a client that reads slowly), several
//! queued frames in one write, and the rest of a frame the reading loop's write left to it.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, PoisonError,
    },
};

use loong_ipc::{connection::ConnError, frame::FrameLimit};
use tokio::{
    sync::{mpsc, Mutex, Notify, Semaphore},
    task::JoinHandle,
};
use tracing::Instrument;

use super::wire::WriteSide;

use crate::request::{Outbox, Outgoing, StartWriter, OUTPUT_BUDGET_BYTES};

/// Frames the writer task takes from the outbox for one write at most.
pub(super) const WRITE_BATCH: usize = 32;

/// The frame buffer's capacity a connection keeps between writes; a larger one (a batch of
/// large frames, one large answer) is given back once written.
const RETAINED_BUF_BYTES: usize = 64 * 1024;

/// The write half and its frame buffer.
#[derive(Debug)]
struct Half {
    /// `None` once the connection ended: dropping the write half hangs up on the client even
    /// while a request that runs on still holds the sink.
    w: Option<WriteSide>,
    buf: Vec<u8>,
    /// A frame the socket took in part, left to the writer task: its reply (which holds its
    /// budget share and in-flight slot until it is written), and where in `buf` its rest
    /// begins. Nothing else is written before that rest.
    rest: Option<(Box<Outgoing>, usize)>,
}

/// Marks the sink closed when dropped armed: a frame whose writing stopped part-way (the
/// socket failed, the writer gave up, or its task was aborted or cancelled mid-write) may be
/// followed by nothing, since the client would read the next frame's bytes as its rest.
struct Unfinished<'a> {
    closed: &'a AtomicBool,
    armed: bool,
}

impl Unfinished<'_> {
    /// The frame is whole.
    fn done(mut self) {
        self.armed = false;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.closed.store(true, Ordering::Release);
        }
    }
}

/// Empties the frame buffer once its frames are written, keeping at most
/// [`RETAINED_BUF_BYTES`] of it for the next.
fn written(buf: &mut Vec<u8>) {
    buf.clear();
    buf.shrink_to(RETAINED_BUF_BYTES);
}

/// What [`Sink::try_write`] did.
enum Tried {
    Whole,
    /// Not written: queue it.
    Not,
    Broken,
    /// The socket took this many of the frame's bytes.
    Part(usize),
}

/// What [`Sink::write_now`] did with a reply.
#[derive(Debug)]
pub(super) enum Now {
    /// Written whole.
    Written,
    /// Not written (something is queued, the writer is busy, the socket is full): queue it.
    Queue(Box<Outgoing>),
    /// The connection is unusable: the peer is gone, or a frame was cut short.
    Broken,
}

/// A connection's writer task, started by the first reply queued for it ([`StartWriter`]):
/// a connection whose replies are all written at once by whoever makes them (a `status`,
/// a sandbox run of a program that writes nothing) never spawns one, so the runtime neither
/// makes nor polls that task, nor wakes its other thread for it (a task spawned while the
/// request's task is queued to run next is offered to a parked thread).
#[derive(Debug)]
pub(super) struct Writer {
    state: std::sync::Mutex<WriterState>,
    /// The connection's span, which the task runs in.
    span: tracing::Span,
}

#[derive(Debug)]
enum WriterState {
    /// Nothing queued yet: what the task will own.
    Idle {
        sink: Arc<Sink>,
        rx: mpsc::Receiver<Box<Outgoing>>,
    },
    Running(JoinHandle<Result<(), ConnError>>),
    /// The connection ended ([`Writer::finish`]).
    Ended,
}

impl Writer {
    /// The writer of `sink`'s connection, reading the queue `rx`; not started yet.
    pub(super) fn new(sink: Arc<Sink>, rx: mpsc::Receiver<Box<Outgoing>>) -> Arc<Writer> {
        Arc::new(Writer {
            state: std::sync::Mutex::new(WriterState::Idle { sink, rx }),
            span: tracing::Span::current(),
        })
    }

    fn spawn(&self, sink: Arc<Sink>, mut rx: mpsc::Receiver<Box<Outgoing>>) -> WriterState {
        let task = async move { sink.drain(&mut rx).await }.instrument(self.span.clone());
        WriterState::Running(tokio::spawn(task))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection has ended: the writer task to let flush, if one runs, or if a request
    /// still running holds the queue and may fill it (started now, as it would have been);
    /// `None` when nothing was queued and nothing can be. Nothing starts it afterwards.
    pub(super) fn finish(&self) -> Option<JoinHandle<Result<(), ConnError>>> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, WriterState::Ended) {
            WriterState::Running(task) => Some(task),
            WriterState::Idle { sink, rx } if rx.sender_strong_count() > 0 || !rx.is_empty() => {
                match self.spawn(sink, rx) {
                    WriterState::Running(task) => Some(task),
                    _ => None,
                }
            }
            WriterState::Idle { .. } | WriterState::Ended => None,
        }
    }

    /// Whether the task was ever started.
    #[cfg(test)]
    pub(super) fn started(&self) -> bool {
        !matches!(*self.lock(), WriterState::Idle { .. })
    }
}

impl StartWriter for Writer {
    fn start(&self) {
        let mut state = self.lock();
        if matches!(*state, WriterState::Idle { .. }) {
            if let WriterState::Idle { sink, rx } =
                std::mem::replace(&mut *state, WriterState::Ended)
            {
                *state = self.spawn(sink, rx);
            }
        }
    }
}

/// A connection's write half.
#[derive(Debug)]
pub(super) struct Sink {
    half: Mutex<Half>,
    limit: FrameLimit,
    /// The connection's output budget: while all of it is free, no stream chunk is between
    /// its producer and the socket, so an answer written at once cannot overtake its own
    /// request's output.
    budget: Arc<Semaphore>,
    /// A frame was cut short, or the connection ended: nothing more may be written.
    closed: AtomicBool,
    /// A rest of a frame waits in `half` for the writer task.
    rest_left: AtomicBool,
    /// Wakes the writer task for such a rest.
    rest_queued: Notify,
}

impl Sink {
    pub(super) fn new(w: WriteSide, limit: FrameLimit, budget: Arc<Semaphore>) -> Sink {
        Sink {
            half: Mutex::new(Half {
                w: Some(w),
                buf: Vec::new(),
                rest: None,
            }),
            limit,
            budget,
            closed: AtomicBool::new(false),
            rest_left: AtomicBool::new(false),
            rest_queued: Notify::new(),
        }
    }

    /// Writes `out` at once as [`write_now`](Self::write_now) does, without ever waiting: the
    /// rest of a frame the socket took only in part is left to the writer task (written
    /// before anything else, as a queued reply waits for a slow client), so the caller (the
    /// reading loop) goes on reading. [`Now::Written`] then means the frame is whole or is
    /// the writer task's to finish.
    pub(super) fn write_or_hand_off(&self, tx: &Outbox, out: Box<Outgoing>) -> Now {
        let Ok(mut half) = self.half.try_lock() else {
            return Now::Queue(out);
        };
        let n = match self.try_write(tx, &mut half, &out) {
            Tried::Whole => return Now::Written,
            Tried::Not => return Now::Queue(out),
            Tried::Broken => return Now::Broken,
            Tried::Part(n) => n,
        };
        half.rest = Some((out, n));
        self.rest_left.store(true, Ordering::Release);
        self.rest_queued.notify_one();
        tx.start_writer();
        Now::Written
    }

    /// Tries to write `out` whole without waiting, holding the write half: when nothing is
    /// queued for the writer task (the outbox empty, no stream chunk anywhere between its
    /// producer and the socket, no rest of a frame left to it) and the socket takes the
    /// frame's first bytes. [`Tried::Part`]: the frame is in `half.buf`, its first bytes out.
    fn try_write(&self, tx: &Outbox, half: &mut Half, out: &Outgoing) -> Tried {
        if !tx.is_empty() || self.budget.available_permits() != OUTPUT_BUDGET_BYTES {
            return Tried::Not;
        }
        let Half { w, buf, rest } = half;
        let Some(w) = w.as_mut().filter(|_| !self.closed.load(Ordering::Acquire)) else {
            return Tried::Broken;
        };
        if rest.is_some() {
            return Tried::Not;
        }
        buf.clear();
        // A reply that cannot be encoded is the writer task's to fail on, as before.
        if loong_ipc::frame::encode(&out.reply, self.limit, buf).is_err() {
            written(buf);
            return Tried::Not;
        }
        let n = match w.try_write(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Tried::Not,
            Err(_) => {
                self.closed.store(true, Ordering::Release);
                return Tried::Broken;
            }
        };
        if n == buf.len() {
            written(buf);
            Tried::Whole
        } else {
            Tried::Part(n)
        }
    }

    /// Writes `out` at once when nothing is queued for the writer task (the outbox empty, no
    /// stream chunk anywhere between its producer and the socket), the writer is free and the
    /// socket takes the frame's first bytes without waiting; the rest of a frame the socket
    /// took only in part is written waiting, until `give_up` resolves (the frame is then cut
    /// short: [`Now::Broken`]). Anything else gives `out` back to be queued.
    pub(super) async fn write_now(
        &self,
        tx: &Outbox,
        out: Box<Outgoing>,
        give_up: impl Future<Output = ()>,
    ) -> Now {
        if !tx.is_empty() || self.budget.available_permits() != OUTPUT_BUDGET_BYTES {
            return Now::Queue(out);
        }
        let Ok(mut half) = self.half.try_lock() else {
            return Now::Queue(out);
        };
        let n = match self.try_write(tx, &mut half, &out) {
            Tried::Whole => return Now::Written,
            Tried::Not => return Now::Queue(out),
            Tried::Broken => return Now::Broken,
            Tried::Part(n) => n,
        };
        let Half { w, buf, .. } = &mut *half;
        let Some(w) = w.as_mut() else {
            return Now::Broken;
        };
        // Part of the frame is out: only its rest may follow, or nothing (also when this
        // future is dropped here: its task aborted).
        let unfinished = Unfinished {
            closed: &self.closed,
            armed: true,
        };
        let rest = tokio::select! {
            r = w.write_all(&buf[n..]) => r.is_ok(),
            () = give_up => false,
        };
        if rest {
            unfinished.done();
            written(buf);
            Now::Written
        } else {
            Now::Broken
        }
    }

    /// Closes the sink once the connection has ended: a request that finishes later is
    /// answered to nobody, as when its client left. Waits for a write under way (a writer
    /// task's is aborted first, a request's gives up when the connection ends).
    pub(super) async fn close(&self) {
        let mut half = self.half.lock().await;
        self.closed.store(true, Ordering::Release);
        half.w = None;
    }

    /// The writer task: writes what is queued, in order, several frames per write when
    /// several are queued, waiting for a slow client as long as the connection lives.
    pub(super) async fn drain(
        &self,
        rx: &mut mpsc::Receiver<Box<Outgoing>>,
    ) -> Result<(), ConnError> {
        let mut taken: Vec<Box<Outgoing>> = Vec::with_capacity(WRITE_BATCH);
        loop {
            let end = tokio::select! {
                biased;
                () = self.rest_queued.notified() => false,
                first = rx.recv() => match first {
                    Some(first) => {
                        taken.push(first);
                        false
                    }
                    None => true,
                },
            };
            if end && !self.rest_left.load(Ordering::Acquire) {
                return Ok(());
            }
            while !end && taken.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(out) => taken.push(out),
                    Err(_) => break,
                }
            }
            let mut half = self.half.lock().await;
            let Half { w: slot, buf, rest } = &mut *half;
            let Some(w) = slot
                .as_mut()
                .filter(|_| !self.closed.load(Ordering::Acquire))
            else {
                return Err(ConnError::Io(std::io::ErrorKind::BrokenPipe.into()));
            };
            // The rest of a frame the reading loop's write left comes first.
            if let Some((_reply, from)) = rest.as_ref() {
                let unfinished = Unfinished {
                    closed: &self.closed,
                    armed: true,
                };
                if let Err(e) = w.write_all(&buf[*from..]).await {
                    drop(unfinished);
                    *slot = None;
                    return Err(ConnError::from(e));
                }
                unfinished.done();
                written(buf);
                *rest = None;
                self.rest_left.store(false, Ordering::Release);
            }
            if end {
                return Ok(());
            }
            if taken.is_empty() {
                continue;
            }
            buf.clear();
            // A reply that cannot be encoded ends the writer, after those before it.
            let encoded = taken
                .iter()
                .try_for_each(|out| loong_ipc::frame::encode(&out.reply, self.limit, buf));
            // A write that fails or is stopped part-way (the task aborted) closes the sink.
            let unfinished = Unfinished {
                closed: &self.closed,
                armed: true,
            };
            let sent = w.write_all(buf).await;
            let ended = match sent {
                Ok(()) => encoded.map_err(ConnError::from),
                Err(e) => Err(ConnError::from(e)),
            };
            if let Err(e) = ended {
                // The writer ends, and the connection's output with it: nothing is written
                // after a reply that was lost, and the client is hung up on at once, though
                // the reading loop or a request's task still holds the sink.
                drop(unfinished);
                *slot = None;
                return Err(e);
            }
            unfinished.done();
            written(buf);
            // Their budget shares and in-flight slots are released once they are written.
            taken.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use loong_ipc::{
        connection::FrameReader, ControlResponse, ErrorKind, RemoteError, Reply, StreamChunk,
    };
    use tokio::net::UnixStream;

    use super::*;

    const LIMIT: FrameLimit = FrameLimit::DEFAULT;
    const WAIT: Duration = Duration::from_secs(10);

    fn pair() -> (
        Arc<Sink>,
        Outbox,
        mpsc::Receiver<Box<Outgoing>>,
        FrameReader<UnixStream>,
    ) {
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        let (_, w) = super::super::wire::split(ours).expect("split");
        let budget = Arc::new(Semaphore::new(OUTPUT_BUDGET_BYTES));
        let (tx, rx) = mpsc::channel(8);
        (
            Arc::new(Sink::new(w, LIMIT, budget)),
            tx.into(),
            rx,
            FrameReader::new(theirs, LIMIT, WAIT),
        )
    }

    fn answer(id: u64, message_bytes: usize) -> Box<Outgoing> {
        Box::from(Reply::Response {
            id,
            result: Err(RemoteError::new(
                ErrorKind::Internal,
                "x".repeat(message_bytes),
            )),
        })
    }

    async fn next(peer: &mut FrameReader<UnixStream>) -> Reply<ControlResponse> {
        peer.read::<Reply<ControlResponse>>(Some(WAIT))
            .await
            .expect("a whole frame")
            .expect("not the end")
    }

    fn id_of(reply: &Reply<ControlResponse>) -> Option<u64> {
        match reply {
            Reply::Response { id, .. } | Reply::Stream { id, .. } => Some(*id),
            _ => None,
        }
    }

    #[tokio::test]
    async fn an_answer_is_written_at_once_when_nothing_is_queued() {
        let (sink, tx, mut rx, mut peer) = pair();
        let now = sink
            .write_now(&tx, answer(1, 10), std::future::pending())
            .await;
        assert!(matches!(now, Now::Written), "{now:?}");
        assert_eq!(id_of(&next(&mut peer).await), Some(1));
        assert!(
            rx.try_recv().is_err(),
            "nothing went through the writer task"
        );
    }

    #[tokio::test]
    async fn an_answer_never_overtakes_queued_replies_or_output() {
        let (sink, tx, mut rx, mut peer) = pair();
        // A stream chunk of request 1 holds a share of the output budget until it is written:
        // request 1's answer made now must follow it, not overtake it.
        let share = sink
            .budget
            .clone()
            .acquire_many_owned(3)
            .await
            .expect("budget");
        tx.send(Box::new(Outgoing {
            reply: Reply::Stream {
                id: 1,
                chunk: StreamChunk::Stdout(b"out".to_vec()),
            },
            _held: Some(share),
        }))
        .await
        .expect("queued");
        let now = sink
            .write_now(&tx, answer(1, 10), std::future::pending())
            .await;
        let Now::Queue(first) = now else {
            panic!("written ahead of queued output: {now:?}")
        };
        // The chunk taken by the writer task (out of the outbox, not yet written) still holds
        // its share: the answer waits for it all the same.
        let taken = rx.recv().await.expect("the chunk");
        let now = sink.write_now(&tx, first, std::future::pending()).await;
        let Now::Queue(first) = now else {
            panic!("written ahead of a chunk the writer holds: {now:?}")
        };
        let (held, mut writing) = mpsc::channel(8);
        held.send(taken).await.expect("requeued");
        held.send(first).await.expect("requeued");
        drop(held);
        sink.drain(&mut writing).await.expect("drained");
        // A queued pong (no budget) keeps its place too.
        tx.send(Box::from(Reply::Pong { nonce: 7 }))
            .await
            .expect("queued");
        let now = sink
            .write_now(&tx, answer(2, 10), std::future::pending())
            .await;
        let Now::Queue(second) = now else {
            panic!("written ahead of a queued pong: {now:?}")
        };
        tx.send(second).await.expect("queued");
        drop(tx);
        sink.drain(&mut rx).await.expect("drained");
        let got: Vec<_> = [
            next(&mut peer).await,
            next(&mut peer).await,
            next(&mut peer).await,
            next(&mut peer).await,
        ]
        .iter()
        .map(|r| (matches!(r, Reply::Stream { .. }), id_of(r)))
        .collect();
        assert_eq!(
            got,
            [
                (true, Some(1)),
                (false, Some(1)),
                (false, None),
                (false, Some(2))
            ]
        );
        // Once everything is written, the budget is whole again and answers go at once.
        let now = sink
            .write_now(&tx_closed_free(), answer(3, 10), std::future::pending())
            .await;
        assert!(matches!(now, Now::Written), "{now:?}");
    }

    fn big(id: u64, bytes: usize) -> Box<Outgoing> {
        Box::from(Reply::Stream {
            id,
            chunk: StreamChunk::Stdout(vec![b'x'; bytes]),
        })
    }

    fn tx_closed_free() -> Outbox {
        mpsc::channel(1).0.into()
    }

    #[tokio::test]
    async fn a_frame_the_socket_takes_in_part_is_finished_or_ends_the_connection() {
        // Larger than a Unix socket's buffer: the first write takes only part of it.
        const BIG: usize = 900 * 1024;
        let (sink, tx, mut rx, mut peer) = pair();
        let reading = tokio::spawn(async move {
            let got = next(&mut peer).await;
            (got, peer)
        });
        let now = sink
            .write_now(&tx, big(1, BIG), std::future::pending())
            .await;
        assert!(matches!(now, Now::Written), "{now:?}");
        let (got, _peer) = reading.await.expect("reader");
        assert!(
            matches!(&got, Reply::Stream { id: 1, chunk: StreamChunk::Stdout(b) } if b.len() == BIG),
            "the whole frame arrived"
        );

        // Nobody reads: the rest waits until the connection gives up, then nothing more is
        // written (the frame was cut short), by the reply path or the writer task.
        let (sink, tx, mut rx2, _peer) = pair();
        let now = sink
            .write_now(&tx, big(1, BIG), std::future::ready(()))
            .await;
        assert!(matches!(now, Now::Broken), "{now:?}");
        let now = sink
            .write_now(&tx, answer(2, 10), std::future::pending())
            .await;
        assert!(matches!(now, Now::Broken), "{now:?}");
        tx.send(answer(3, 10)).await.expect("queued");
        drop(tx);
        assert!(sink.drain(&mut rx2).await.is_err());
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn an_answer_after_the_connection_ended_is_written_to_nobody() {
        let (sink, tx, _rx, mut peer) = pair();
        sink.close().await;
        let now = sink
            .write_now(&tx, answer(1, 10), std::future::pending())
            .await;
        assert!(matches!(now, Now::Broken), "{now:?}");
        drop(sink);
        let end = peer.read::<Reply<ControlResponse>>(Some(WAIT)).await;
        assert!(matches!(end, Ok(None)), "{end:?}");
    }

    /// Waits until a write holds the sink's lock (a task writing the rest of a frame).
    async fn writing(sink: &Sink) {
        let held = async {
            while sink.half.try_lock().is_ok() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(WAIT, held)
            .await
            .expect("a write holds the sink: the socket took the frame only in part");
    }

    #[tokio::test]
    async fn a_write_cut_short_by_cancellation_ends_the_connections_output() {
        // Larger than a Unix socket's buffer: the socket takes only part of it.
        const BIG: usize = 900 * 1024;
        // A reply's writer (the reading loop, a request's task) stopped mid-frame.
        let (sink, tx, _rx, _peer) = pair();
        let task = tokio::spawn({
            let (sink, tx) = (sink.clone(), tx.clone());
            async move {
                sink.write_now(&tx, big(1, BIG), std::future::pending())
                    .await
            }
        });
        writing(&sink).await;
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        let now = sink
            .write_now(&tx, answer(2, 10), std::future::pending())
            .await;
        assert!(matches!(now, Now::Broken), "{now:?}");
        let (held, mut writing_rx) = mpsc::channel(1);
        held.send(answer(3, 10)).await.expect("queued");
        drop(held);
        assert!(sink.drain(&mut writing_rx).await.is_err());

        // The writer task stopped mid-frame (the connection's end aborts it).
        let (sink, _tx, _rx, _peer) = pair();
        let (held, mut queued) = mpsc::channel(1);
        held.send(big(1, BIG)).await.expect("queued");
        let task = tokio::spawn({
            let sink = sink.clone();
            async move { sink.drain(&mut queued).await }
        });
        writing(&sink).await;
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        let now = sink
            .write_now(&tx_closed_free(), answer(2, 10), std::future::pending())
            .await;
        assert!(matches!(now, Now::Broken), "{now:?}");

        // The control: a writer that is not stopped finishes its frame, and the next follows.
        let (sink, tx, _rx, mut peer) = pair();
        let task = tokio::spawn({
            let (sink, tx) = (sink.clone(), tx.clone());
            async move {
                sink.write_now(&tx, big(1, BIG), std::future::pending())
                    .await
            }
        });
        writing(&sink).await;
        let first = next(&mut peer).await;
        assert!(matches!(task.await, Ok(Now::Written)));
        let now = sink
            .write_now(&tx, answer(2, 10), std::future::pending())
            .await;
        assert!(matches!(now, Now::Written), "{now:?}");
        assert_eq!(
            (id_of(&first), id_of(&next(&mut peer).await)),
            (Some(1), Some(2))
        );
    }

    #[tokio::test]
    async fn the_client_sees_the_end_while_a_request_still_holds_the_sink() {
        // A request that runs on after its client left (answered to nobody) keeps a handle on
        // the sink; the connection's end still hangs up on the client.
        const END: Duration = Duration::from_secs(2);
        let (sink, _tx, _rx, mut peer) = pair();
        let request = sink.clone();
        sink.close().await;
        let end = peer.read::<Reply<ControlResponse>>(Some(END)).await;
        assert!(matches!(end, Ok(None)), "{end:?}");
        drop(request);
    }

    #[tokio::test]
    async fn a_writer_that_fails_ends_the_connections_output_and_hangs_up() {
        const END: Duration = Duration::from_secs(2);
        let too_large = LIMIT.get() as usize + 1;
        // A reply that cannot be encoded ends the writer task after those before it, and the
        // connection's output with it: no answer is written after the one that was lost, and
        // the client sees the end although the reading loop and requests still hold the sink.
        let (sink, tx, _rx, mut peer) = pair();
        let (held, mut queued) = mpsc::channel(2);
        held.send(answer(1, 10)).await.expect("queued");
        held.send(big(2, too_large)).await.expect("queued");
        drop(held);
        assert!(sink.drain(&mut queued).await.is_err());
        let now = sink
            .write_now(&tx, answer(3, 10), std::future::pending())
            .await;
        assert!(matches!(now, Now::Broken), "{now:?}");
        assert_eq!(id_of(&next(&mut peer).await), Some(1));
        let end = peer.read::<Reply<ControlResponse>>(Some(END)).await;
        assert!(matches!(end, Ok(None)), "{end:?}");
    }

    #[tokio::test]
    async fn a_connection_keeps_no_large_buffer_once_its_frames_are_written() {
        // A batch of large frames (a client that read slowly, then reads) is encoded in one
        // buffer; once written, the connection does not keep that much memory for its life.
        const FRAME: usize = 100 * 1024;
        let (sink, _tx, _rx, mut peer) = pair();
        let reading = tokio::spawn(async move {
            for _ in 0..WRITE_BATCH {
                next(&mut peer).await;
            }
            peer
        });
        let (held, mut queued) = mpsc::channel(WRITE_BATCH);
        for id in 0..WRITE_BATCH as u64 {
            held.send(big(id, FRAME)).await.expect("queued");
        }
        drop(held);
        sink.drain(&mut queued).await.expect("drained");
        let _peer = reading.await.expect("reader");
        let kept = sink.half.try_lock().expect("free").buf.capacity();
        assert!(kept <= RETAINED_BUF_BYTES, "{kept} bytes kept");
        // The same for one large answer written at once.
        let (sink, tx, _rx, mut peer) = pair();
        let reading = tokio::spawn(async move { next(&mut peer).await });
        let now = sink
            .write_now(&tx, big(1, 4 * FRAME), std::future::pending())
            .await;
        assert!(matches!(now, Now::Written), "{now:?}");
        reading.await.expect("reader");
        let kept = sink.half.try_lock().expect("free").buf.capacity();
        assert!(kept <= RETAINED_BUF_BYTES, "{kept} bytes kept");
    }

    #[tokio::test]
    async fn a_rest_left_to_the_writer_goes_first_and_a_rest_cut_short_ends_the_output() {
        // Larger than a Unix socket's buffer: the socket takes only part of it.
        const BIG: usize = 900 * 1024;
        // Nobody reads: the rest waits for the writer task, and nothing is written before it.
        let (sink, tx, mut rx, _peer) = pair();
        let now = sink.write_or_hand_off(&tx, big(1, BIG));
        assert!(matches!(now, Now::Written), "{now:?}");
        let now = sink.write_or_hand_off(&tx, answer(2, 10));
        assert!(
            matches!(now, Now::Queue(_)),
            "written ahead of the rest: {now:?}"
        );
        let now = sink
            .write_now(&tx, answer(3, 10), std::future::pending())
            .await;
        assert!(
            matches!(now, Now::Queue(_)),
            "written ahead of the rest: {now:?}"
        );
        // The writer task stopped mid-rest (the connection's end aborts it): nothing more.
        let task = tokio::spawn({
            let sink = sink.clone();
            async move { sink.drain(&mut rx).await }
        });
        writing(&sink).await;
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        let now = sink.write_or_hand_off(&tx_closed_free(), answer(4, 10));
        assert!(matches!(now, Now::Broken), "{now:?}");
    }
}
