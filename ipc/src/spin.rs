//! How long one end of a connection busy-polls its socket before it sleeps, adapted to how
//! long its waits have lately lasted (the rule of the kernel's haltpoll cpuidle governor).
//!
//! A thread that sleeps lets its CPU go idle; on a virtual machine whose idle CPU halts at
//! once, waking it again is the hypervisor's business and costs more than the whole round
//! trip of a quick request. So an end that waits for a peer who usually answers (or asks
//! again) within a few tens of microseconds polls the socket for that long first, and
//! sleeps only after. The window is zero until a wait proves short, grows while waits last
//! longer than it but within [`SPIN_MAX`], and drops to zero at the first wait longer than
//! that: a connection that goes quiet costs one window at most, then sleeps.
//!
//! An end spins only while the machine has CPUs to spare ([`cpus_to_spare`]: tasks seldom
//! waited for a CPU lately): on a busy machine no CPU halts, and a spin would only take the
//! CPU other work needs.

#[cfg(feature = "tokio")]
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};
use std::{
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

/// The window after the first wait that proves short.
pub const SPIN_START: Duration = Duration::from_micros(25);

/// The longest window; a wait longer than this ends the spinning (the window drops to zero).
pub const SPIN_MAX: Duration = Duration::from_micros(100);

/// How long the machine's load, once read, stands for it.
pub const LOAD_READ_EVERY: Duration = Duration::from_millis(100);

/// The share of the last ten seconds (in percent) in which some task waited for a CPU, from
/// which on the machine has no CPU to spare.
pub const CPU_PRESSURE_MAX_PERCENT: f64 = 10.0;

/// Where the machine's CPU pressure is read (Linux's pressure stall information).
const CPU_PRESSURE: &str = "/proc/pressure/cpu";

/// Where the machine's load average is read, when it has no pressure file.
const LOADAVG: &str = "/proc/loadavg";

/// How recent the last reading of the pressure file must be for the stall since it to stand
/// for the machine's load (instead of the file's ten-second average).
pub const STALL_DELTA_MAX_AGE: Duration = Duration::from_secs(1);

/// One reading of the machine's load: when, what it said, and the pressure file's
/// cumulative stall (`some total=`, µs) if it had one.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    spare: bool,
    stall_us: Option<u64>,
}

/// Whether the machine has CPUs to spare: tasks waited for a CPU less than
/// [`CPU_PRESSURE_MAX_PERCENT`] of the time (`/proc/pressure/cpu`): of the time since the
/// last reading, when that is at most [`STALL_DELTA_MAX_AGE`] old (the `total=` stall's
/// growth, which follows a burst of load within [`LOAD_READ_EVERY`]), else of the last ten
/// seconds (`avg10`); on a kernel without that file, its one-minute load average
/// (`/proc/loadavg`) is below its number of CPUs. Read at most once per [`LOAD_READ_EVERY`]
/// in a process; a load that cannot be read is none to spare.
pub fn cpus_to_spare() -> bool {
    static CPUS: OnceLock<f64> = OnceLock::new();
    static LAST: Mutex<Option<Reading>> = Mutex::new(None);
    // The answer most recently read, for a caller that finds another reading the file: it
    // never waits on that reading (callers hold locks and run on runtime threads).
    static SPARE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let mut last = match LAST.try_lock() {
        Ok(last) => last,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            return SPARE.load(std::sync::atomic::Ordering::Relaxed);
        }
    };
    if let Some(r) = *last {
        if r.at.elapsed() < LOAD_READ_EVERY {
            return r.spare;
        }
    }
    let now = Instant::now();
    let reading = match std::fs::read_to_string(CPU_PRESSURE) {
        Ok(pressure) => {
            let before = last.and_then(|r| Some((now.duration_since(r.at), r.stall_us?)));
            Reading {
                at: now,
                spare: little_pressure_since(&pressure, before),
                stall_us: stall_total(&pressure),
            }
        }
        Err(_) => {
            let cpus = *CPUS.get_or_init(|| {
                std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
            });
            Reading {
                at: now,
                spare: std::fs::read_to_string(LOADAVG).is_ok_and(|l| below(&l, cpus)),
                stall_us: None,
            }
        }
    };
    *last = Some(reading);
    SPARE.store(reading.spare, std::sync::atomic::Ordering::Relaxed);
    reading.spare
}

/// The `some` line of a pressure file, without its `some ` prefix.
fn some_line(pressure: &str) -> Option<&str> {
    pressure.lines().find_map(|l| l.strip_prefix("some "))
}

/// The cumulative stall of a pressure file's `some` line (`total=`, µs).
fn stall_total(pressure: &str) -> Option<u64> {
    some_line(pressure)?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Whether a pressure file (as `/proc/pressure/cpu` reads) shows little stall: given
/// `before`, the age and the `total=` stall of the last reading, the stall grown since then
/// is below [`CPU_PRESSURE_MAX_PERCENT`] of that age, when the age is at most
/// [`STALL_DELTA_MAX_AGE`] and both totals parse; otherwise [`little_pressure`]'s ten-second
/// average decides. No when nothing parses.
fn little_pressure_since(pressure: &str, before: Option<(Duration, u64)>) -> bool {
    let delta = before
        .filter(|(age, _)| *age <= STALL_DELTA_MAX_AGE && !age.is_zero())
        .and_then(|(age, then)| Some((age, stall_total(pressure)?.checked_sub(then)?)));
    match delta {
        Some((age, stalled_us)) => {
            (stalled_us as f64) < age.as_micros() as f64 * CPU_PRESSURE_MAX_PERCENT / 100.0
        }
        None => little_pressure(pressure),
    }
}

/// Whether the `some` line of a pressure file (as `/proc/pressure/cpu` reads) has its
/// ten-second average below [`CPU_PRESSURE_MAX_PERCENT`]; no when it does not parse.
fn little_pressure(pressure: &str) -> bool {
    some_line(pressure)
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("avg10=")))
        .and_then(|v| v.parse::<f64>().ok())
        .is_some_and(|p| p < CPU_PRESSURE_MAX_PERCENT)
}

/// Whether the one-minute load average `loadavg` (as `/proc/loadavg` reads) is below `cpus`;
/// no when it does not parse.
fn below(loadavg: &str, cpus: f64) -> bool {
    loadavg
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok())
        .is_some_and(|l| l < cpus)
}

/// One end's busy-poll window, adapted wait by wait.
#[derive(Debug, Clone, Default)]
pub struct SpinWindow {
    window: Duration,
    /// A window set by a test, kept whatever the waits.
    fixed: bool,
}

impl SpinWindow {
    /// A window that never adapts, for tests that need a spin of a known length.
    #[cfg(any(test, feature = "test-support"))]
    pub fn fixed(window: Duration) -> SpinWindow {
        SpinWindow {
            window,
            fixed: true,
        }
    }

    /// How long the next wait polls before it sleeps: the window while the machine has CPUs
    /// to spare ([`cpus_to_spare`], asked only when the window is not zero), else zero. A
    /// test's fixed window is always given.
    pub fn window(&self) -> Duration {
        if self.fixed || (!self.window.is_zero() && cpus_to_spare()) {
            self.window
        } else {
            Duration::ZERO
        }
    }

    /// [`SpinWindow::window`] for an end that cannot read the machine's load itself (a
    /// confined worker): `spare` says whether the machine has CPUs to spare, as its peer
    /// read it. None when it has not, a test's fixed window included.
    pub fn window_given(&self, spare: bool) -> Duration {
        if spare && (self.fixed || !self.window.is_zero()) {
            self.window
        } else {
            Duration::ZERO
        }
    }

    /// Adapts the window to a wait that lasted `waited` in all (polling and sleeping): kept
    /// when the poll saw the wait's end, grown when the wait outlasted it but not
    /// [`SPIN_MAX`], zero when it outlasted that.
    pub fn record(&mut self, waited: Duration) {
        if waited <= self.window || self.fixed {
            return;
        }
        self.window = if waited > SPIN_MAX {
            Duration::ZERO
        } else if self.window.is_zero() {
            SPIN_START
        } else {
            (self.window * 2).min(SPIN_MAX)
        };
    }
}

/// A wait of a task on a runtime thread that polls for its [`SpinWindow`] before it sleeps:
/// while the window lasts, a wait that finds nothing gives the runtime back (its other ready
/// tasks run and its driver is polled, as after `tokio::task::yield_now`) and is polled
/// again, so the runtime thread stays awake without holding it; then the task waits for its
/// waker as any other.
#[cfg(feature = "tokio")]
#[derive(Debug, Clone, Default)]
pub struct SpinWait {
    /// The window, adapted to this end's waits.
    pub window: SpinWindow,
    /// The wait under way: when it began, and until when it polls.
    wait: Option<(Instant, Instant)>,
    /// For an end that reads a peer it does not trust ([`SpinWait::asked_by`]): set by this
    /// end's own writes. Such an end spins only within one window after each write, so a peer
    /// that trickles bytes it was not asked for (one at a time, or frames nobody waits for)
    /// finds it asleep, not polling a CPU for as long as it keeps sending.
    asked: Option<Arc<AtomicBool>>,
    /// The end of the window the last write opened.
    asked_until: Option<Instant>,
}

/// Marks that an end which reads through a [`SpinWait::asked_by`] wrote to its peer: its
/// next wait may spin, for one window.
#[cfg(feature = "tokio")]
pub fn asked(flag: &AtomicBool) {
    flag.store(true, Ordering::Release);
}

#[cfg(feature = "tokio")]
impl SpinWait {
    /// A wait with `window`.
    pub fn new(window: SpinWindow) -> SpinWait {
        SpinWait {
            window,
            ..SpinWait::default()
        }
    }

    /// The same wait, spinning only within one window after each write its end marks on
    /// `flag` ([`asked`]): for reading a peer that could otherwise keep it polling.
    pub fn asked_by(mut self, flag: Arc<AtomicBool>) -> SpinWait {
        self.asked = Some(flag);
        self
    }

    /// Marks that this end wrote, as its writing half does ([`asked`]): its next wait may
    /// spin for one window. Nothing for a wait not [`SpinWait::asked_by`] a flag.
    pub fn ask(&self) {
        if let Some(flag) = &self.asked {
            asked(flag);
        }
    }

    /// Whether a poll that found nothing polls again: the wait under way (begun now if none
    /// is) is still within its window. When it does, the caller tries once more, and if that
    /// finds nothing either, hands the runtime back ([`yield_to_runtime`]) and returns
    /// `Pending`; when it does not, the caller returns `Pending` to wait for its waker. An
    /// end [`SpinWait::asked_by`] a flag polls only until one window after its last write,
    /// however many reads that window holds.
    pub fn again(&mut self) -> bool {
        let now = Instant::now();
        if self.wait.is_none() {
            let until = match &self.asked {
                None => now + self.window.window(),
                Some(flag) if flag.swap(false, Ordering::AcqRel) => {
                    let until = now + self.window.window();
                    self.asked_until = Some(until);
                    until
                }
                Some(_) => self.asked_until.unwrap_or(now),
            };
            self.wait = Some((now, until));
        }
        self.wait.is_some_and(|(_, until)| now < until)
    }

    /// The wait under way (if any) ended: the window adapts to how long it took.
    pub fn ended(&mut self) {
        if let Some((since, _)) = self.wait.take() {
            self.window.record(since.elapsed());
        }
    }

    /// Waits for `fut`, polling it for the window before it sleeps.
    pub async fn on<F: std::future::Future>(&mut self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(out) => {
                self.ended();
                std::task::Poll::Ready(out)
            }
            std::task::Poll::Pending => {
                if self.again() {
                    yield_to_runtime(cx);
                }
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// Has the runtime poll the task again once it has run its other ready tasks and polled its
/// driver (what `tokio::task::yield_now` does), from inside a `poll` function.
#[cfg(feature = "tokio")]
pub fn yield_to_runtime(cx: &mut std::task::Context<'_>) {
    use std::future::Future;
    let yielded = std::pin::pin!(tokio::task::yield_now());
    // Its first poll hands the task's waker to the runtime and is always pending.
    let _pending = yielded.poll(cx);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_micros(10);
    const LONG: Duration = Duration::from_millis(5);

    /// No spin until a wait proves short; then the window grows while waits outlast it
    /// within the bound, up to the bound, and is kept while the poll sees the waits end.
    #[test]
    fn the_window_grows_with_short_waits_up_to_its_bound() {
        let mut w = SpinWindow::default();
        assert_eq!(w.window, Duration::ZERO);
        w.record(SHORT);
        assert_eq!(w.window, SPIN_START);
        w.record(SHORT);
        assert_eq!(w.window, SPIN_START, "a wait the poll saw end keeps it");
        for _ in 0..10 {
            w.record(SPIN_MAX);
        }
        assert_eq!(w.window, SPIN_MAX);
    }

    /// A wait longer than the bound ends the spinning at once, however large the window.
    #[test]
    fn a_long_wait_ends_the_spinning() {
        let mut w = SpinWindow::default();
        w.record(SHORT);
        for _ in 0..10 {
            w.record(SPIN_MAX);
        }
        w.record(SPIN_MAX + Duration::from_micros(1));
        assert_eq!(w.window, Duration::ZERO);
        w.record(LONG);
        assert_eq!(w.window, Duration::ZERO, "long waits keep it at zero");
    }

    /// A test's fixed window is kept whatever the waits.
    #[test]
    fn a_fixed_window_is_kept() {
        let mut w = SpinWindow::fixed(Duration::from_millis(300));
        w.record(LONG);
        w.record(Duration::from_secs(1));
        w.record(SHORT);
        assert_eq!(w.window, Duration::from_millis(300));
    }

    /// The machine has CPUs to spare only while tasks seldom waited for one in the last ten
    /// seconds; a pressure file that does not parse is none to spare.
    #[test]
    fn cpus_are_spare_while_tasks_seldom_wait_for_one() {
        let file = |some: &str| {
            format!("some avg10={some} avg60=34.62 avg300=70.52 total=46256205956\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
        };
        assert!(little_pressure(&file("0.00")));
        assert!(little_pressure(&file("6.93")));
        assert!(!little_pressure(&file("10.00")));
        assert!(!little_pressure(&file("71.20")));
        assert!(!little_pressure(
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        ));
        assert!(!little_pressure("some avg10=low"));
        assert!(!little_pressure(""));
    }

    /// Without a pressure file, the machine has CPUs to spare only while its one-minute load
    /// is below their number; a load that does not parse is none to spare.
    #[test]
    fn cpus_are_spare_below_the_load_of_all_of_them() {
        assert!(below("0.52 0.80 1.10 1/136 4242", 2.0));
        assert!(!below("2.00 0.80 1.10 3/136 4242", 2.0));
        assert!(!below("6.75 7.17 6.25 6/136 4242", 2.0));
        assert!(!below("", 2.0));
        assert!(!below("high", 64.0));
    }

    /// A test's fixed window is given whatever the machine's load.
    #[test]
    fn a_fixed_window_is_given_whatever_the_load() {
        let w = SpinWindow::fixed(Duration::from_millis(300));
        assert_eq!(w.window(), Duration::from_millis(300));
        assert_eq!(SpinWindow::default().window(), Duration::ZERO);
    }

    /// With a reading of the pressure file at most `STALL_DELTA_MAX_AGE` old, the stall grown
    /// since it decides (so the gate follows a burst of load within a reading's interval),
    /// whatever the ten-second average says; an older reading, a total that does not parse
    /// or one that went back leaves it to the average.
    #[test]
    fn the_gate_follows_the_stall_since_the_last_reading() {
        let file = |avg10: &str, total: u64| {
            format!("some avg10={avg10} avg60=1.00 avg300=1.00 total={total}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
        };
        let tenth = Duration::from_millis(100);
        // 100 ms since a reading at 1,000,000 µs of stall.
        let since = Some((tenth, 1_000_000));
        // A burst just ended: the average still high, the last 100 ms quiet (5 ms stalled).
        assert!(little_pressure_since(&file("60.00", 1_005_000), since));
        // Load just began: the average still low, 50 of the last 100 ms stalled.
        assert!(!little_pressure_since(&file("0.50", 1_050_000), since));
        // At the bound (10 % of 100 ms): none to spare.
        assert!(!little_pressure_since(&file("0.00", 1_010_000), since));
        assert!(little_pressure_since(&file("0.00", 1_009_999), since));
        // A reading too old, or none: the average decides.
        let old = Some((STALL_DELTA_MAX_AGE + tenth, 1_000_000));
        assert!(!little_pressure_since(&file("60.00", 1_005_000), old));
        assert!(little_pressure_since(&file("0.50", 1_050_000), old));
        assert!(!little_pressure_since(&file("60.00", 1_005_000), None));
        // A total that went back, or does not parse: the average decides.
        assert!(!little_pressure_since(&file("60.00", 999_000), since));
        assert!(!little_pressure_since(
            "some avg10=60.00 avg60=1.00 avg300=1.00 total=many\n",
            since
        ));
        // Nothing parses: none to spare.
        assert!(!little_pressure_since("", since));
        assert_eq!(
            stall_total(&file("1.00", 46_256_205_956)),
            Some(46_256_205_956)
        );
    }

    /// An end told that the machine has no CPU to spare does not spin, however its window
    /// grew (a test's fixed window included); told it has, it spins for its window.
    #[test]
    fn an_end_told_there_is_no_cpu_to_spare_does_not_spin() {
        let mut grown = SpinWindow::default();
        grown.record(SHORT);
        assert_eq!(grown.window_given(true), SPIN_START);
        assert_eq!(grown.window_given(false), Duration::ZERO);
        let fixed = SpinWindow::fixed(Duration::from_millis(300));
        assert_eq!(fixed.window_given(true), Duration::from_millis(300));
        assert_eq!(fixed.window_given(false), Duration::ZERO);
        assert_eq!(SpinWindow::default().window_given(true), Duration::ZERO);
    }

    #[cfg(feature = "tokio")]
    use crate::test_support::runtime_thread;

    /// What a wait within the window waits for finds its runtime thread awake: the thread
    /// does not sleep for it. The control: without a window it sleeps until woken.
    #[cfg(feature = "tokio")]
    #[test]
    fn a_wait_within_the_window_finds_its_runtime_thread_awake() {
        for (window, sleeps) in [
            (SpinWindow::fixed(Duration::from_secs(3)), false),
            (SpinWindow::default(), true),
        ] {
            let fixed = window.fixed;
            let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
            let (go_tx, go_rx) = std::sync::mpsc::channel();
            let (tid, waiting) = runtime_thread(move || {
                Box::pin(async move {
                    let mut wait = SpinWait::new(window);
                    go_tx.send(()).expect("go");
                    wait.on(rx).await
                })
            });
            go_rx.recv().expect("go");
            let before = crate::test_support::sleeps(tid);
            std::thread::sleep(Duration::from_millis(20));
            // It slept if it went to sleep in these 20 ms, or is asleep now (it may have gone
            // to sleep before `before` was read, and then sleeps on with no switch counted).
            let slept =
                || crate::test_support::sleeps(tid) != before || crate::test_support::asleep(tid);
            let mut during = slept();
            // On a loaded machine the waiting thread may not have run yet: one expected to
            // sleep is given until it has (the spinning one must not sleep in any case).
            let patience = Instant::now() + Duration::from_secs(10);
            while sleeps && !during && Instant::now() < patience {
                std::thread::sleep(Duration::from_millis(1));
                during = slept();
            }
            tx.send(7).expect("send");
            assert_eq!(waiting.join().expect("thread"), Ok(7));
            assert_eq!(
                during, sleeps,
                "the runtime thread slept while it waited (fixed window: {fixed})"
            );
        }
    }

    /// A wait that spins gives the runtime back between its polls: another task of the same
    /// single-threaded runtime (a timer) runs on time while the wait spins for nothing.
    #[cfg(feature = "tokio")]
    #[test]
    fn a_spinning_wait_lets_the_runtimes_other_tasks_run() {
        let (_tid, waiting) = runtime_thread(|| {
            Box::pin(async {
                let t = Instant::now();
                let mut wait = SpinWait::new(SpinWindow::fixed(Duration::from_secs(30)));
                let timer = tokio::spawn(tokio::time::sleep(Duration::from_millis(20)));
                tokio::select! {
                    () = wait.on(std::future::pending::<()>()) => None,
                    _ = timer => Some(t.elapsed()),
                }
            })
        });
        let took = waiting.join().expect("thread");
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(10)),
            "the timer task did not run while the wait spun: {took:?}"
        );
    }

    /// A wait whose window grew with short waits, then lasts, leaves its runtime thread
    /// asleep well before long: the spin is bounded (SPIN_MAX), and the window drops to
    /// zero after it. The control: a window that outlasts the wait keeps the thread awake.
    #[cfg(feature = "tokio")]
    #[test]
    fn a_long_wait_leaves_its_runtime_thread_asleep() {
        let probe = Duration::from_millis(200);
        let mut grown = SpinWindow::default();
        grown.record(SHORT);
        grown.record(SPIN_MAX);
        for (window, asleep) in [
            (grown, true),
            (SpinWindow::fixed(Duration::from_secs(2)), false),
        ] {
            let fixed = window.fixed;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let (tid, waiting) = runtime_thread(move || {
                Box::pin(async move {
                    let mut wait = SpinWait::new(window);
                    let _ = wait.on(rx).await;
                    wait.window
                })
            });
            std::thread::sleep(probe);
            let slept = crate::test_support::asleep(tid);
            tx.send(()).expect("send");
            let after = waiting.join().expect("thread");
            assert_eq!(
                slept, asleep,
                "asleep {probe:?} into the wait (fixed window: {fixed})"
            );
            if !fixed {
                assert_eq!(
                    after.window,
                    Duration::ZERO,
                    "a long wait ends the spinning"
                );
            }
        }
    }
}
