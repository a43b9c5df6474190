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
//! An end spins only while the machine has CPUs to spare ([`cpus_to_spare`]: lately, at least
//! one CPU's time went idle or to this process): on a busy machine no CPU halts, and a spin
//! would only take the CPU other work needs.

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

/// How much CPU time, in CPUs, must have gone idle or to this process since the last reading
/// for the machine to have CPUs to spare: one whole CPU that other work did not use, which a
/// spin can take without making any of that work wait.
pub const SPARE_CPUS: f64 = 1.0;

/// Where the machine's idle time is read: `/proc/uptime`'s second field, the seconds all
/// CPUs have spent idle (summed over CPUs, in hundredths).
const UPTIME: &str = "/proc/uptime";

/// Where the number of tasks running or ready to run now is read (`/proc/loadavg`'s fourth
/// field, `running/total`), for a process's first reading, which has no interval to measure.
const LOADAVG: &str = "/proc/loadavg";

/// How old the last reading may be for the interval since it to stand for the machine's load
/// now; past it, a reading counts as a process's first.
pub const READING_MAX_AGE: Duration = Duration::from_secs(1);

/// One reading of the machine's load: when, what it said, and the CPU time the interval to
/// the next one is measured from.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    spare: bool,
    times: Option<CpuTimes>,
}

/// The machine's idle CPU time and this process's own CPU time, both cumulative.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuTimes {
    idle: Duration,
    own: Duration,
}

/// Whether the machine has CPUs to spare for a spin. Never on a machine of one CPU (a spin
/// there holds the only CPU its peer needs to answer). Otherwise: of the time since the last
/// reading, when that is at most [`READING_MAX_AGE`] old, the CPU time that went idle
/// (`/proc/uptime`) or to this process (`getrusage`: its own threads, spin included, so a
/// spin does not count against itself) came to at least [`SPARE_CPUS`]; at a process's
/// first reading, fewer tasks are running or ready to run (`/proc/loadavg`, this thread
/// included) than the machine has CPUs. Read at most once per [`LOAD_READ_EVERY`] in a
/// process; a load that cannot be read is none to spare.
///
/// Linux's CPU pressure (`/proc/pressure/cpu`) is not the measure: a task woken by a peer
/// waits on its waker's CPU until the waker sleeps, and the pressure file counts that wait,
/// so two threads handing a message back and forth on an idle machine read as 13-70 % stall.
pub fn cpus_to_spare() -> bool {
    static CPUS: OnceLock<usize> = OnceLock::new();
    static LAST: Mutex<Option<Reading>> = Mutex::new(None);
    // The answer most recently read, for a caller that finds another reading the file: it
    // never waits on that reading (callers hold locks and run on runtime threads).
    static SPARE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let cpus = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if cpus < 2 {
        return false;
    }
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
    let times = std::fs::read_to_string(UPTIME)
        .ok()
        .and_then(|u| idle_time(&u))
        .zip(own_cpu_time())
        .map(|(idle, own)| CpuTimes { idle, own });
    let since = last.and_then(|r| Some((now.duration_since(r.at), r.times?)));
    let spare = match (since, times) {
        (Some((age, then)), Some(times)) if age <= READING_MAX_AGE => spare_since(age, then, times),
        _ => std::fs::read_to_string(LOADAVG).is_ok_and(|l| fewer_running(&l, cpus)),
    };
    let reading = Reading {
        at: now,
        spare,
        times,
    };
    *last = Some(reading);
    SPARE.store(reading.spare, std::sync::atomic::Ordering::Relaxed);
    reading.spare
}

/// The idle time of all CPUs together, from `/proc/uptime` (`<up> <idle>`, seconds).
fn idle_time(uptime: &str) -> Option<Duration> {
    let idle: f64 = uptime.split_whitespace().nth(1)?.parse().ok()?;
    Duration::try_from_secs_f64(idle).ok()
}

/// This process's CPU time so far, its threads' user and system time together.
fn own_cpu_time() -> Option<Duration> {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).ok()?;
    let micros = |t: nix::sys::time::TimeVal| {
        u64::try_from(t.tv_sec())
            .ok()?
            .checked_mul(1_000_000)?
            .checked_add(u64::try_from(t.tv_usec()).ok()?)
    };
    Some(Duration::from_micros(
        micros(usage.user_time())?.checked_add(micros(usage.system_time())?)?,
    ))
}

/// Whether, over `age` from the reading `then` to `now`, the CPU time that went idle or to
/// this process came to at least [`SPARE_CPUS`] CPUs. None when a time went back.
fn spare_since(age: Duration, then: CpuTimes, now: CpuTimes) -> bool {
    let (Some(idle), Some(own)) = (
        now.idle.checked_sub(then.idle),
        now.own.checked_sub(then.own),
    ) else {
        return false;
    };
    !age.is_zero() && (idle + own).as_secs_f64() >= SPARE_CPUS * age.as_secs_f64()
}

/// Whether fewer tasks are running or ready to run now than `cpus`, from `/proc/loadavg`
/// (`<1m> <5m> <15m> <running>/<total> <last pid>`); no when it does not parse.
fn fewer_running(loadavg: &str, cpus: usize) -> bool {
    loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/'))
        .and_then(|(running, _)| running.parse::<usize>().ok())
        .is_some_and(|running| running < cpus)
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

    /// At a process's first reading, the machine has CPUs to spare only while fewer tasks
    /// run or wait to run than it has CPUs; a count that does not parse is none to spare.
    #[test]
    fn a_first_reading_finds_cpus_to_spare_while_fewer_tasks_run_than_there_are_cpus() {
        assert!(fewer_running("0.52 0.80 1.10 1/136 4242", 2));
        assert!(!fewer_running("0.10 0.80 1.10 2/136 4242", 2));
        assert!(!fewer_running("6.75 7.17 6.25 6/136 4242", 2));
        assert!(fewer_running("6.75 7.17 6.25 6/136 4242", 64));
        assert!(!fewer_running("", 2));
        assert!(!fewer_running("0.52 0.80 1.10 many/136 4242", 64));
        assert!(!fewer_running("0.52 0.80 1.10", 64));
    }

    /// A test's fixed window is given whatever the machine's load.
    #[test]
    fn a_fixed_window_is_given_whatever_the_load() {
        let w = SpinWindow::fixed(Duration::from_millis(300));
        assert_eq!(w.window(), Duration::from_millis(300));
        assert_eq!(SpinWindow::default().window(), Duration::ZERO);
    }

    /// Over an interval, the machine has CPUs to spare when the CPU time that went idle or to
    /// this process (a spin's own included) comes to one CPU's worth; a time that went back, or
    /// an interval of nothing, is none to spare.
    #[test]
    fn the_gate_counts_idle_time_and_its_own_as_spare() {
        let ms = Duration::from_millis;
        let at = |idle, own| CpuTimes {
            idle: ms(idle),
            own: ms(own),
        };
        let then = at(10_000, 500);
        let tenth = ms(100);
        // One CPU idle throughout.
        assert!(spare_since(tenth, then, at(10_100, 500)));
        // Part idle, part this process's own (its spin): still one CPU others did not use.
        assert!(spare_since(tenth, then, at(10_060, 540)));
        // Others took more than one CPU's time.
        assert!(!spare_since(tenth, then, at(10_050, 520)));
        assert!(!spare_since(tenth, then, at(10_000, 500)));
        // Times that went back, or no time at all.
        assert!(!spare_since(tenth, then, at(9_000, 700)));
        assert!(!spare_since(tenth, then, at(10_200, 400)));
        assert!(!spare_since(Duration::ZERO, then, at(10_100, 500)));
    }

    /// `/proc/uptime`'s idle field parses (and nothing else does), and this machine gives
    /// both times the gate measures, this process's own growing with the CPU it uses.
    #[test]
    fn the_times_the_gate_measures_are_read_here() {
        assert_eq!(
            idle_time("12240.14 4582.02\n"),
            Some(Duration::from_millis(4_582_020))
        );
        assert_eq!(idle_time(""), None);
        assert_eq!(idle_time("12240.14"), None);
        assert_eq!(idle_time("12240.14 idle"), None);
        assert_eq!(idle_time("12240.14 -1.00"), None);
        let uptime = std::fs::read_to_string(UPTIME).expect("/proc/uptime");
        assert!(idle_time(&uptime).is_some(), "{uptime:?}");
        let before = own_cpu_time().expect("getrusage");
        let busy = Instant::now();
        let mut x = 0u64;
        while busy.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = own_cpu_time().expect("getrusage");
        assert!(after > before, "{before:?} then {after:?}");
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
