//! The audit writer's queue: one ordered queue under a mutex, bounded, whose producers wake
//! the writer only when it must be woken.
//!
//! Records are committed in the order they are queued: every message goes to the back of
//! the one queue, and the writer takes from its front. A producer wakes the writer only when
//! the writer waits without end (nothing queued, no linger), or when its message is waited
//! for (an acknowledged record, a flush, a stop) or fills a group while the writer lingers.
//! A record nobody waits for, queued while the writer commits or lingers, wakes nobody: it
//! rides the next commit, at the latest [`LINGER`] after it was queued. After a commit that
//! someone waited for, the writer lingers up to [`LINGER`] for what follows (a call's
//! outcome, the next call's records), so a call answered between two calls costs the writer
//! one wake-up, not two. The queue holds at most `bound` messages ([`super::QUEUE_DEPTH`]):
//! past it, producers wait for room, as they did on the channel this replaced.
//!
//! Before it sleeps, the writer polls the queue for an adaptive window ([`loong_ipc::spin`]:
//! zero until its waits prove short, zero again after a long one, and only while the machine
//! has CPUs to spare): a producer that would wake it while it polls only tells it so, and the
//! next call's records, queued within the window, find the writer's thread (and its CPU)
//! awake. A queue that goes quiet costs the writer one window at most, then it sleeps.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
    },
    time::Instant,
};

use loong_ipc::spin::SpinWindow;

use tokio::sync::{oneshot, Semaphore, TryAcquireError};

use super::{Event, GROUP_MAX, HELP_MAX, LINGER};

// Records kept after a failed commit stay in the writer's group, which takes nothing new
// while it holds a full group: what is kept is bounded by the group.
const _: () = assert!(super::KEPT_MAX <= GROUP_MAX);

/// Where the writer acknowledges an append: its sequence number, or why the commit failed.
pub(super) type Ack = oneshot::Sender<Result<u64, String>>;

/// One message to the writer.
pub(super) enum Msg {
    /// A record someone waits for.
    Append(Event, Ack),
    /// A record nobody waits for, and when it was queued.
    Later(Event, Instant),
    /// Commit whatever is queued (a reader wants to see it).
    Flush(Ack),
    /// Records appended together, acknowledged once, for the last of them.
    Batch(Vec<Event>, Ack),
    Shutdown(oneshot::Sender<()>),
}

impl Msg {
    /// Whether someone waits for the message: queuing it wakes a lingering writer.
    fn waited(&self) -> bool {
        !matches!(self, Msg::Later(..))
    }

    fn records(&self) -> usize {
        match self {
            Msg::Append(..) | Msg::Later(..) => 1,
            Msg::Batch(events, _) => events.len(),
            Msg::Flush(_) | Msg::Shutdown(_) => 0,
        }
    }
}

/// What the writer is doing, as its producers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// Taking messages or committing: it looks at the queue again before it waits.
    Busy,
    /// Waiting for any message.
    Endless,
    /// Waiting until a deadline: only a waited message, or a full group, wakes it earlier.
    Lingering,
}

struct State {
    msgs: VecDeque<Msg>,
    /// Records in `msgs`.
    records: usize,
    writer: Writer,
    /// Every producer is gone: the writer commits what is left and stops.
    producers_gone: bool,
    /// The writer has stopped: nothing more is queued.
    closed: bool,
    /// The writer polls `Queue::poked` before it sleeps: waking it is telling it there.
    spinning: bool,
}

/// The queue shared by the producers and the writer.
pub(super) struct Queue {
    state: Mutex<State>,
    wake: Condvar,
    /// Room for messages: a producer takes a permit per message and the writer gives it back
    /// when it takes the message.
    room: Semaphore,
    bound: usize,
    /// The writer's wake-ups: each return from a wait (woken, or its deadline passed).
    wakeups: AtomicU64,
    /// Set by a producer that wakes the writer while it polls (`State::spinning`).
    poked: AtomicBool,
    /// How long the writer polls before it sleeps (its own; a mutex only to share the queue).
    spin: Mutex<SpinWindow>,
    /// While set, the writer takes nothing (a writer thread woken late, for tests).
    #[cfg(test)]
    paused: AtomicBool,
    /// While set, a writer that stopped does not end (for tests).
    #[cfg(test)]
    hold_stopped: AtomicBool,
}

/// Who waits for a taken record's commit.
pub(super) enum Waiter {
    /// Nobody: a `record_later` record, or one kept after a failed commit.
    Nobody,
    /// An earlier record of a [`Msg::Batch`], acknowledged with the batch's last record.
    Batch,
    /// The record's own waiter (or, for a batch's last record, the batch's).
    Ack(Ack),
}

/// What was taken for the next commit, and when the linger after the last commit ends: held
/// with the trail's connection, by whoever commits (the writer, or a waiter in its stead).
#[derive(Default)]
pub(super) struct Taken {
    pub pending: Pending,
    /// After a commit someone waited for, the end of the linger for what follows it (a
    /// call's outcome rides the next call's commit instead of waking the writer on its own).
    pub window: Option<Instant>,
}

/// What holds the [`Taken`] of a trail's commits (with its connection).
pub(super) trait HoldsTaken {
    fn taken(&mut self) -> &mut Taken;
}

impl HoldsTaken for Taken {
    fn taken(&mut self) -> &mut Taken {
        self
    }
}

/// What the writer took for its next commit.
#[derive(Default)]
pub(super) struct Pending {
    pub batch: Vec<(Event, Waiter)>,
    pub flushes: Vec<Ack>,
    pub shutdown: Option<oneshot::Sender<()>>,
    /// When the oldest record in `batch` that nobody waits for was queued.
    oldest_later: Option<Instant>,
}

impl Pending {
    /// Whether someone waits for what was taken.
    pub fn waited(&self) -> bool {
        !self.flushes.is_empty()
            || self.shutdown.is_some()
            || self.batch.iter().any(|(_, w)| matches!(w, Waiter::Ack(_)))
    }

    /// After a failed commit of `batch`: tells each waiter, and keeps, in order at the front
    /// of the next group, every record whose effect happened or may happen. A message is
    /// dropped whole, and only when its waiter heard the refusal and one of its records
    /// announces an effect that waits for it ([`super::Kind::gates_its_effect`]): that waiter
    /// refuses the effect. Every other record is kept (a waiter that went away hears nothing,
    /// so its effect may have happened), its waiter (if any) told that it is kept; the kept
    /// records are due again [`LINGER`] after now. Returns how many records were dropped.
    pub fn fail(&mut self, why: &str) -> usize {
        let taken = std::mem::take(&mut self.batch);
        let mut kept = Vec::with_capacity(taken.len());
        let mut span: Vec<Event> = Vec::new();
        let mut dropped = 0;
        for (event, waiter) in taken {
            match waiter {
                Waiter::Nobody => kept.push((event, Waiter::Nobody)),
                Waiter::Batch => span.push(event),
                Waiter::Ack(ack) => {
                    span.push(event);
                    let heard = if span.iter().any(|e| e.kind.gates_its_effect()) {
                        ack.send(Err(why.to_string())).is_ok()
                    } else {
                        let _ = ack.send(Err(format!(
                            "{why}; the record is kept and committed with the next group that commits"
                        )));
                        false
                    };
                    if heard {
                        dropped += span.len();
                        span.clear();
                    } else {
                        kept.extend(span.drain(..).map(|e| (e, Waiter::Nobody)));
                    }
                }
            }
        }
        // A batch ends with its acknowledged record; anything left is kept all the same.
        kept.extend(span.drain(..).map(|e| (e, Waiter::Nobody)));
        self.batch = kept;
        // What is kept is due again at once; with nothing kept, nothing is due.
        self.oldest_later = (!self.batch.is_empty()).then(Instant::now);
        dropped
    }

    /// Forgets what was taken, once it is committed (or failed).
    pub fn clear(&mut self) {
        self.batch.clear();
        self.flushes.clear();
        self.shutdown = None;
        self.oldest_later = None;
    }

    fn is_empty(&self) -> bool {
        self.batch.is_empty() && self.flushes.is_empty() && self.shutdown.is_none()
    }

    /// Sorts one message into the pending work.
    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Append(e, a) => self.batch.push((e, Waiter::Ack(a))),
            Msg::Later(e, at) => {
                self.batch.push((e, Waiter::Nobody));
                self.oldest_later.get_or_insert(at);
            }
            Msg::Flush(a) => self.flushes.push(a),
            Msg::Batch(events, a) => {
                let last = events.len().saturating_sub(1);
                let mut ack = Some(a);
                for (i, e) in events.into_iter().enumerate() {
                    let waiter = match ack.take_if(|_| i == last) {
                        Some(a) => Waiter::Ack(a),
                        None => Waiter::Batch,
                    };
                    self.batch.push((e, waiter));
                }
                // An empty batch has nothing to acknowledge later: answer with the current tail.
                if let Some(a) = ack {
                    self.flushes.push(a);
                }
            }
            Msg::Shutdown(a) => self.shutdown = Some(a),
        }
    }
}

impl Queue {
    /// A queue of at most `bound` messages, and the producers' handle on it.
    pub fn new(bound: usize) -> (Arc<Queue>, Producer) {
        let queue = Arc::new(Queue {
            state: Mutex::new(State {
                msgs: VecDeque::new(),
                records: 0,
                writer: Writer::Busy,
                producers_gone: false,
                closed: false,
                spinning: false,
            }),
            wake: Condvar::new(),
            room: Semaphore::new(bound),
            bound,
            wakeups: AtomicU64::new(0),
            poked: AtomicBool::new(false),
            spin: Mutex::new(SpinWindow::default()),
            #[cfg(test)]
            paused: AtomicBool::new(false),
            #[cfg(test)]
            hold_stopped: AtomicBool::new(false),
        });
        (queue.clone(), Producer(queue))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds the writer before it takes anything (`true`), as a writer thread woken late
    /// would be, or lets it go.
    #[cfg(test)]
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
    }

    /// Holds a writer that stopped before it ends (`true`), or lets it end.
    #[cfg(test)]
    pub fn hold_stopped_writer(&self, held: bool) {
        self.hold_stopped.store(held, Ordering::Release);
    }

    /// Where the writer's thread, stopped, waits while [`Queue::hold_stopped_writer`] holds
    /// it.
    #[cfg(test)]
    pub fn hold_stopped(&self) {
        while self.hold_stopped.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The writer's wake-ups so far.
    #[cfg(test)]
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Moves queued messages to `p`, in order, until it holds a group ([`GROUP_MAX`] records)
    /// or a stop, or the queue is empty; a waiter committing in the writer's stead
    /// (`helper`) takes no stop, nor anything behind one (the stop is the writer's).
    fn take_into(&self, s: &mut State, p: &mut Pending, helper: bool) {
        let mut taken = 0;
        while p.batch.len() < GROUP_MAX && p.shutdown.is_none() {
            if helper && matches!(s.msgs.front(), Some(Msg::Shutdown(_))) {
                break;
            }
            let Some(m) = s.msgs.pop_front() else {
                break;
            };
            s.records -= m.records();
            taken += 1;
            p.take(m);
        }
        if taken > 0 {
            self.room.add_permits(taken);
        }
    }

    /// Waits for the writer's next commit and takes it into the [`Taken`] that `core` holds,
    /// which it returns locked (at most [`GROUP_MAX`] records, and nothing after a stop): it
    /// is due when someone waits for what was taken, when it is a full group, when its
    /// oldest unwaited record has waited [`LINGER`], or when the linger after the last
    /// commit is over with something taken. `core` is not held while the writer waits, so
    /// that a waiter can commit in its stead ([`Queue::take_for_helper`]). Returns `None`
    /// when every producer is gone and nothing is left to commit, or `core` is empty.
    pub fn next<'a, C: HoldsTaken>(
        &self,
        core: &'a Mutex<Option<C>>,
    ) -> Option<MutexGuard<'a, Option<C>>> {
        loop {
            #[cfg(test)]
            while self.paused.load(Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let mut held = core.lock().unwrap_or_else(PoisonError::into_inner);
            let Taken { pending: p, window } = held.as_mut()?.taken();
            let mut s = self.lock();
            self.take_into(&mut s, p, false);
            if p.waited() || p.batch.len() >= GROUP_MAX {
                s.writer = Writer::Busy;
                drop(s);
                return Some(held);
            }
            if s.producers_gone && s.msgs.is_empty() {
                s.writer = Writer::Busy;
                let any = !p.is_empty();
                drop(s);
                return any.then_some(held);
            }
            let deadline = match (p.oldest_later.map(|t| t + LINGER), *window) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                if !p.is_empty() {
                    s.writer = Writer::Busy;
                    drop(s);
                    return Some(held);
                }
                *window = None;
                continue;
            }
            s.writer = match deadline {
                Some(_) => Writer::Lingering,
                None => Writer::Endless,
            };
            // Lock order: the core, then the queue; the core is free while the writer waits.
            drop(held);
            let mut s = self.wait(s, deadline);
            s.writer = Writer::Busy;
        }
    }

    /// For a waiter that commits in the writer's stead, holding the trail's core while the
    /// writer does not: takes into `p` what is queued, as the writer would, but never a stop.
    /// False, and nothing taken, when there is nothing to commit, when the group would be
    /// larger than [`HELP_MAX`] records (the writer's to commit), or when the writer has
    /// stopped.
    pub fn take_for_helper(&self, p: &mut Pending) -> bool {
        let mut s = self.lock();
        if s.closed || p.batch.len() + s.records > HELP_MAX {
            return false;
        }
        self.take_into(&mut s, p, true);
        !p.is_empty()
    }

    /// After a waiter took records it leaves to the writer (kept after its failed commit,
    /// met with another connection's lock, or signing a checkpoint): wakes the writer to
    /// commit them, unless it is busy.
    pub fn rouse_writer(&self) {
        let wake = {
            let mut s = self.lock();
            s.writer != Writer::Busy && self.rouse(&mut s)
        };
        if wake {
            self.wake.notify_one();
        }
    }

    /// The writer waits, as `s.writer` says, until a producer wakes it or `deadline` passes:
    /// first polling for its spin window, then asleep on the condition variable.
    fn wait<'a>(
        &'a self,
        mut s: MutexGuard<'a, State>,
        deadline: Option<Instant>,
    ) -> MutexGuard<'a, State> {
        let mut spin = self.spin.lock().unwrap_or_else(PoisonError::into_inner);
        let start = Instant::now();
        let window = spin.window();
        if !window.is_zero() {
            let until = deadline.map_or(start + window, |d| d.min(start + window));
            s.spinning = true;
            self.poked.store(false, Ordering::Relaxed);
            drop(s);
            while !self.poked.load(Ordering::Acquire) && Instant::now() < until {
                std::hint::spin_loop();
            }
            loong_ipc::spin::spun(Instant::now().min(until).saturating_duration_since(start));
            s = self.lock();
            s.spinning = false;
        }
        // A producer that found the writer polling set it busy, under the lock.
        if s.writer != Writer::Busy {
            let now = Instant::now();
            match deadline {
                // The deadline passed while the writer polled: no sleep.
                Some(d) if d <= now => {}
                Some(d) => {
                    s = self
                        .wake
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    self.wakeups.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    s = self.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
                    self.wakeups.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        spin.record(start.elapsed());
        s
    }

    /// Wakes the writer (its state is set busy): tells it so while it polls, or wakes it
    /// from its sleep. Called under the lock; true when the caller must notify the condition
    /// variable once it has released it.
    fn rouse(&self, s: &mut State) -> bool {
        s.writer = Writer::Busy;
        if s.spinning {
            self.poked.store(true, Ordering::Release);
            false
        } else {
            true
        }
    }

    /// The writer has stopped: what is still queued is dropped (its waiters hear that the
    /// writer stopped) and nothing more is queued.
    pub fn close(&self) {
        let dropped = {
            let mut s = self.lock();
            s.closed = true;
            s.records = 0;
            std::mem::take(&mut s.msgs)
        };
        self.room.close();
        drop(dropped);
    }
}

/// The producers' handle on the queue; when the last one goes (with the last `Audit`), the
/// writer commits what is left and stops.
pub(super) struct Producer(Arc<Queue>);

impl Producer {
    /// Queues `msg` behind every message queued before it, waiting for room while the queue
    /// is full; gives it back when the writer has stopped.
    pub async fn send(&self, msg: Msg) -> Result<(), Msg> {
        match self.0.room.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => return Err(msg),
        }
        self.push(msg)
    }

    /// Queues `msg` as [`Producer::send`] does, except that a caller dropped while it waits
    /// for room (a request whose client went away) does not take the message with it: with
    /// room the message is queued at once, and without it the wait is a task of its own,
    /// which queues the message whatever becomes of the caller (who still waits for it, so a
    /// full queue holds its producers as before). False when the writer has stopped.
    pub async fn send_detached(self: &Arc<Self>, msg: Msg) -> bool {
        let msg = match self.0.room.try_acquire() {
            Ok(permit) => {
                permit.forget();
                return self.push(msg).is_ok();
            }
            Err(TryAcquireError::Closed) => return false,
            Err(TryAcquireError::NoPermits) => msg,
        };
        let producer = Arc::clone(self);
        let queued = tokio::spawn(async move { producer.send(msg).await.is_ok() });
        matches!(queued.await, Ok(true))
    }

    /// Puts `msg`, whose room is taken, behind every message queued before it, and wakes the
    /// writer if it must; gives it back when the writer has stopped.
    fn push(&self, msg: Msg) -> Result<(), Msg> {
        let q = &self.0;
        let wake = {
            let mut s = q.lock();
            if s.closed {
                return Err(msg);
            }
            let wake = match s.writer {
                Writer::Busy => false,
                Writer::Endless => true,
                Writer::Lingering => msg.waited() || s.records + msg.records() >= GROUP_MAX,
            };
            s.records += msg.records();
            s.msgs.push_back(msg);
            // Woken once: the writer looks at the whole queue when it runs.
            wake && q.rouse(&mut s)
        };
        if wake {
            q.wake.notify_one();
        }
        Ok(())
    }

    /// Messages queued and not yet taken by the writer (at most the bound).
    pub fn depth(&self) -> usize {
        self.0.bound.saturating_sub(self.0.room.available_permits())
    }

    /// The queue itself (for tests).
    #[cfg(test)]
    pub fn queue(&self) -> &Arc<Queue> {
        &self.0
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let wake = {
            let mut s = self.0.lock();
            s.producers_gone = true;
            s.writer != Writer::Busy && self.0.rouse(&mut s)
        };
        if wake {
            self.0.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::Kind;

    /// The writer's next commit, taken as the writer takes it (with nothing held before).
    fn next_taken(queue: &Queue) -> Option<Pending> {
        let core = Mutex::new(Some(Taken::default()));
        let mut held = queue.next(&core)?;
        let taken = held.as_mut()?;
        Some(std::mem::take(&mut taken.pending))
    }

    fn later(i: u64) -> Msg {
        Msg::Later(
            Event::daemon(Kind::WorkerExited, serde_json::json!({ "i": i })),
            Instant::now(),
        )
    }

    /// A record of an effect that happened is queued even when its caller is dropped while a
    /// full queue holds it (a client gone mid-request): the detached send's wait outlives
    /// the caller. The control is the plain send, which a dropped caller takes with it.
    #[test]
    fn a_detached_send_whose_caller_is_dropped_while_the_queue_is_full_is_still_queued() {
        const BOUND: usize = 2;
        let (queue, producer) = Queue::new(BOUND);
        let producer = Arc::new(producer);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            for i in 0..BOUND as u64 {
                assert!(producer.send_detached(later(i)).await, "queued at once");
            }
            // Both sends wait for room, and both callers are dropped while they wait.
            for send in [
                Box::pin(async { producer.send(later(100)).await.is_ok() })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = bool>>>,
                Box::pin(producer.send_detached(later(200))),
            ] {
                let held = tokio::time::timeout(Duration::from_millis(50), send).await;
                assert!(held.is_err(), "a full queue took one more message");
            }
            let taken = next_taken(&queue).expect("took");
            assert_eq!(taken.batch.len(), BOUND);
            // The room made by the writer goes to the detached send's own task only.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(producer.depth(), 1, "the dropped detached send was lost");
            let after = next_taken(&queue).expect("took");
            let queued: Vec<_> = after
                .batch
                .iter()
                .map(|(e, _)| e.detail.value()["i"].as_u64())
                .collect();
            assert_eq!(queued, vec![Some(200)]);
        });
    }

    #[test]
    fn a_full_queue_holds_its_producers_until_the_writer_takes_from_it() {
        const BOUND: usize = 3;
        let (queue, producer) = Queue::new(BOUND);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            // With room, a message is queued at once (the positive control) …
            for i in 0..BOUND as u64 {
                let sent = tokio::time::timeout(Duration::from_secs(5), producer.send(later(i)));
                assert!(sent.await.expect("queued at once").is_ok());
            }
            assert_eq!(producer.depth(), BOUND);
            // … a full queue holds the next producer …
            let next = producer.send(later(BOUND as u64));
            tokio::pin!(next);
            let held = tokio::time::timeout(Duration::from_millis(100), &mut next).await;
            assert!(held.is_err(), "a full queue took one more message");
            // … until the writer takes what is queued; the held message follows it.
            let taken = next_taken(&queue).expect("took");
            assert_eq!(taken.batch.len(), BOUND);
            let sent = tokio::time::timeout(Duration::from_secs(5), &mut next).await;
            assert!(sent.expect("queued once there was room").is_ok());
            let after = next_taken(&queue).expect("took");
            let order: Vec<_> = taken
                .batch
                .iter()
                .chain(&after.batch)
                .map(|(e, _)| e.detail.value()["i"].as_u64())
                .collect();
            assert_eq!(order, (0..=BOUND as u64).map(Some).collect::<Vec<_>>());
            // A stopped writer refuses producers, also one that waited for room.
            for i in 0..BOUND as u64 {
                assert!(producer.send(later(i)).await.is_ok());
            }
            let waiting = producer.send(later(9));
            tokio::pin!(waiting);
            assert!(
                tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                    .await
                    .is_err()
            );
            queue.close();
            assert!(
                waiting.await.is_err(),
                "a producer queued behind a stopped writer"
            );
            assert!(producer.send(later(10)).await.is_err());
        });
    }

    /// Runs the writer's wait for its next commit on a thread of its own, with its spin
    /// window `window`; gives the thread's id, and at the end whether it took something and
    /// whether it slept (a voluntary switch) while it waited.
    fn waiting_writer(
        window: SpinWindow,
    ) -> (
        Arc<Queue>,
        Producer,
        i32,
        std::thread::JoinHandle<(bool, bool)>,
    ) {
        let (queue, producer) = Queue::new(16);
        *queue.spin.lock().expect("spin") = window;
        let writer = queue.clone();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let tid = loong_ipc::test_support::thread_id();
            tid_tx.send(tid).expect("tid");
            let before = loong_ipc::test_support::sleeps(tid);
            let took = next_taken(&writer).is_some_and(|taken| taken.waited());
            let slept = loong_ipc::test_support::sleeps(tid) != before;
            (took, slept)
        });
        (queue, producer, tid_rx.recv().expect("tid"), handle)
    }

    fn flush(producer: &Producer) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (ack, _done) = oneshot::channel();
        assert!(rt.block_on(producer.send(Msg::Flush(ack))).is_ok());
    }

    /// A message someone waits for, queued within the writer's spin window, finds the
    /// writer awake: it takes it without having slept. The control: without a window the
    /// writer sleeps until the producer wakes it.
    #[test]
    fn a_message_queued_within_the_writers_window_finds_it_awake() {
        for (window, sleeps) in [
            (SpinWindow::fixed(Duration::from_secs(3)), false),
            (SpinWindow::default(), true),
        ] {
            let (_queue, producer, tid, writer) = waiting_writer(window);
            std::thread::sleep(Duration::from_millis(20));
            if sleeps {
                // The message must come once the writer waits, not before (a writer slow to
                // start would find it queued and have nothing to sleep for): up to a second.
                let asleep = (0..100).any(|_| {
                    loong_ipc::test_support::asleep(tid) || {
                        std::thread::sleep(Duration::from_millis(10));
                        false
                    }
                });
                assert!(asleep, "the writer without a window never slept");
            }
            flush(&producer);
            let (took, slept) = writer.join().expect("writer");
            assert!(took, "the writer took the message");
            assert_eq!(slept, sleeps, "the writer slept while it waited");
        }
    }

    /// A writer whose window grew with short waits, then waits long (a quiet queue), is
    /// asleep well before long: the spin is bounded (SPIN_MAX). The control: a window that
    /// outlasts the quiet keeps it awake at the same point. Either way a message wakes it.
    #[test]
    fn a_quiet_queue_leaves_the_writer_asleep() {
        let probe = Duration::from_millis(200);
        let mut grown = SpinWindow::default();
        grown.record(Duration::from_micros(10));
        grown.record(loong_ipc::spin::SPIN_MAX);
        for (window, asleep) in [
            (grown, true),
            (SpinWindow::fixed(Duration::from_secs(2)), false),
        ] {
            let (_queue, producer, tid, writer) = waiting_writer(window);
            std::thread::sleep(probe);
            let slept = loong_ipc::test_support::asleep(tid);
            flush(&producer);
            let (took, _) = writer.join().expect("writer");
            assert!(took, "the writer took the message");
            assert_eq!(slept, asleep, "asleep {probe:?} into a quiet queue");
        }
    }
}
