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
//! An end spins only while the machine has CPUs to spare ([`cpus_to_spare`]: no task is
//! waiting for a CPU now, and lately some CPU went idle and, with this process's spins, half a
//! CPU's time did): on a busy machine no CPU halts, and a spin would only take the CPU other
//! work needs.

#[cfg(feature = "tokio")]
use std::sync::Arc;
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

/// The window after the first wait that proves short.
pub const SPIN_START: Duration = Duration::from_micros(25);

/// The longest window; a wait longer than this ends the spinning (the window drops to zero).
pub const SPIN_MAX: Duration = Duration::from_micros(100);

/// How long the machine's load, once read, stands for it.
pub const LOAD_READ_EVERY: Duration = Duration::from_millis(100);

/// How much CPU time, in CPUs, must have gone idle or to this process's spins since the last
/// reading for the machine to have CPUs to spare. Half a CPU: on two CPUs, a client and
/// loongd handing requests back and forth, both spinning, leave about that (a peer's spin is
/// another process's time, which cannot be told from any other work).
pub const SPARE_CPUS: f64 = 0.5;

/// How much of the CPU time since the last reading, in CPUs, must have gone idle in fact
/// (not to this process's spins) for the machine to have CPUs to spare: a twentieth, over a
/// 100 ms reading one clock tick of `/proc/stat` (`USER_HZ` 100), so some CPU went idle and the
/// machine was not saturated. Spins alone never keep the gate open, so neither does work a
/// spinning end let run between its polls.
pub const MIN_IDLE_CPUS: f64 = 0.05;

/// Where the machine's CPU times (its `cpu` line: idle, iowait and steal) and the number of
/// tasks running or ready to run now (`procs_running`) are read.
const STAT: &str = "/proc/stat";

/// How old the last reading may be for the interval since it to stand for the machine's load
/// now; past it, a reading counts as a process's first.
pub const READING_MAX_AGE: Duration = Duration::from_secs(1);

/// The time this process's ends have spent polling (ns, all threads): what a spin took of the
/// CPU time other work could have used, and gives back by sleeping.
static SPUN_NS: AtomicU64 = AtomicU64::new(0);

/// Counts `spun`, the part of a wait an end spent polling, towards this process's spin time
/// ([`cpus_to_spare`] counts it as spare: a spin does not shut the gate on itself).
pub fn spun(spun: Duration) {
    let ns = u64::try_from(spun.as_nanos()).unwrap_or(u64::MAX);
    SPUN_NS.fetch_add(ns, Ordering::Relaxed);
}

/// One reading of the machine's load: when, what it said, and the CPU times the interval to
/// the next one is measured from.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    spare: bool,
    times: Option<CpuTimes>,
}

/// Cumulative CPU times: the machine's idle (with iowait: a CPU waiting on a disk is free to
/// run), its steal (what the hypervisor gave other guests while this one wanted to run), this
/// process's own CPU time, and the part of it its ends spent spinning (wall time, at most
/// the process's own CPU time over an interval).
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuTimes {
    idle: Duration,
    steal: Duration,
    own: Duration,
    spun: Duration,
}

/// What one reading found: the CPUs this process may use (affinity and quota), the CPUs
/// online, the tasks running or ready to run now (this thread included), and the times.
#[derive(Debug, Clone, Copy)]
struct Load {
    usable: usize,
    online: usize,
    running: Option<usize>,
    times: Option<CpuTimes>,
}

/// Whether the machine has CPUs to spare for a spin.
///
/// Never when this process may use fewer than two CPUs, or fewer than the machine has online
/// (a CPU quota or an affinity mask: the machine's idle time would not be its own). Otherwise
/// no more tasks are running or ready to run now than there are CPUs (`/proc/stat`'s
/// `procs_running`, this thread included), and, over the interval since the last reading
/// when that is at most [`READING_MAX_AGE`] old, the CPU time that went idle (iowait
/// included, less the time stolen by the hypervisor) came to at least [`MIN_IDLE_CPUS`], and
/// with this process's spins ([`spun`]) to at least [`SPARE_CPUS`]; a process's first reading
/// has the running count alone.
/// Read at most once per [`LOAD_READ_EVERY`] in a process; a load that cannot be read is
/// none to spare (so a process whose `/proc` shows only process directories, as under
/// systemd's `ProcSubset=pid`, never spins).
///
/// Linux's CPU pressure (`/proc/pressure/cpu`) is not the measure: a task woken by a peer
/// waits on its waker's CPU until the waker sleeps, and the pressure file counts that wait,
/// so two processes handing a message back and forth on an idle machine read as 13-70 %
/// stall. Nor is the process's whole CPU time: its own work, a flood of requests included,
/// is not CPU to spare.
pub fn cpus_to_spare() -> bool {
    static LAST: Mutex<Option<Reading>> = Mutex::new(None);
    // The answer most recently read, for a caller that finds another reading the file: it
    // never waits on that reading (callers hold locks and run on runtime threads).
    static SPARE: AtomicBool = AtomicBool::new(false);
    let mut last = match LAST.try_lock() {
        Ok(last) => last,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            return SPARE.load(Ordering::Relaxed);
        }
    };
    if let Some(r) = *last {
        if r.at.elapsed() < LOAD_READ_EVERY {
            return r.spare;
        }
    }
    let now = Instant::now();
    let load = read_load();
    let since = last.and_then(|r| Some((now.duration_since(r.at), r.times?)));
    let reading = Reading {
        at: now,
        spare: decide(&load, since),
        times: load.times,
    };
    *last = Some(reading);
    SPARE.store(reading.spare, Ordering::Relaxed);
    reading.spare
}

/// Reads the machine's load now (see [`Load`]).
fn read_load() -> Load {
    let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
    let stat = std::fs::read_to_string(STAT).unwrap_or_default();
    // Unknown: more than any process may use, so no spin.
    let online = online_cpus(&stat).unwrap_or(usize::MAX);
    let own = own_cpu_time();
    let spun = Duration::from_nanos(SPUN_NS.load(Ordering::Relaxed));
    Load {
        usable,
        online,
        running: procs_running(&stat),
        times: cpu_idle_and_steal(&stat)
            .zip(own)
            .map(|((idle, steal), own)| CpuTimes {
                idle,
                steal,
                own,
                spun,
            }),
    }
}

/// The rule of [`cpus_to_spare`] on one reading, given the age and times of the last one.
fn decide(load: &Load, since: Option<(Duration, CpuTimes)>) -> bool {
    if load.usable < 2 || load.usable < load.online {
        return false;
    }
    if load.running.is_none_or(|running| running > load.online) {
        return false;
    }
    match (since, load.times) {
        (_, None) => false,
        (Some((age, then)), Some(now)) if age <= READING_MAX_AGE => spare_since(age, then, now),
        (_, Some(_)) => true,
    }
}

/// Whether, over `age` from the reading `then` to `now`, the CPU time that went idle (less the
/// time stolen) came to at least [`MIN_IDLE_CPUS`], and with this process's spins (at most its
/// own CPU time over the interval) to at least [`SPARE_CPUS`]. None when a time went back or
/// no time passed.
fn spare_since(age: Duration, then: CpuTimes, now: CpuTimes) -> bool {
    let grown = |now: Duration, then: Duration| now.checked_sub(then);
    let (Some(idle), Some(steal), Some(own), Some(spun)) = (
        grown(now.idle, then.idle),
        grown(now.steal, then.steal),
        grown(now.own, then.own),
        grown(now.spun, then.spun),
    ) else {
        return false;
    };
    let idle = idle.saturating_sub(steal);
    let free = idle.saturating_add(spun.min(own));
    !age.is_zero()
        && idle.as_secs_f64() >= MIN_IDLE_CPUS * age.as_secs_f64()
        && free.as_secs_f64() >= SPARE_CPUS * age.as_secs_f64()
}

/// The clock ticks per second `/proc/stat` counts in (`USER_HZ`).
fn user_hz() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|n| u64::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(100)
    })
}

/// The machine's idle time (idle and iowait) and stolen time, all CPUs together, from
/// `/proc/stat`'s `cpu` line (`cpu user nice system idle iowait irq softirq steal ...`, in
/// `USER_HZ` ticks); none when it does not parse.
fn cpu_idle_and_steal(stat: &str) -> Option<(Duration, Duration)> {
    let line = stat.lines().find_map(|l| l.strip_prefix("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let at = |i: usize| ticks.get(i).copied();
    let idle = at(3)?.checked_add(at(4)?)?;
    let steal = at(7)?;
    let time = |t: u64| {
        let hz = user_hz();
        Some(
            Duration::from_secs(t / hz)
                + Duration::from_nanos((t % hz).checked_mul(1_000_000_000)? / hz),
        )
    };
    Some((time(idle)?, time(steal)?))
}

/// The tasks running or ready to run now, from `/proc/stat`'s `procs_running` line.
fn procs_running(stat: &str) -> Option<usize> {
    stat.lines()
        .find_map(|l| l.strip_prefix("procs_running "))?
        .trim()
        .parse()
        .ok()
}

/// The machine's online CPUs: `/proc/stat` has a `cpuN` line for each. Not
/// `sysconf(_NPROCESSORS_ONLN)`, which musl (loongctl's libc) answers with the CPUs of this
/// process's affinity mask, the very count [`decide`] compares it with. None when it has no
/// such line.
fn online_cpus(stat: &str) -> Option<usize> {
    let n = stat
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    (n > 0).then_some(n)
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
    /// The wait under way.
    wait: Option<Wait>,
    /// For an end that reads a peer it does not trust ([`SpinWait::asked_by`]): set by this
    /// end's own writes. Such an end spins only within one window after each write, so a peer
    /// that trickles bytes it was not asked for (one at a time, or frames nobody waits for)
    /// finds it asleep, not polling a CPU for as long as it keeps sending.
    asked: Option<Arc<AtomicBool>>,
    /// The end of the window the last write opened.
    asked_until: Option<Instant>,
    /// The time this end's waits have spent polling, all told ([`spun`] counts it for the
    /// process).
    spun: Duration,
}

/// One wait of a [`SpinWait`]: when it began, until when it polls, and whether it waits for
/// what this end asked (the first wait after its write, or any wait of an end that reads no
/// untrusted peer).
#[cfg(feature = "tokio")]
#[derive(Debug, Clone, Copy)]
struct Wait {
    since: Instant,
    until: Instant,
    answers: bool,
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
        // This end wrote while the wait was under way (a reply it sent while reading): what
        // comes next is what it asked, so the wait starts again from now as one for that,
        // its part before not counted.
        let asked_meanwhile = self.wait.is_some_and(|w| !w.answers)
            && self
                .asked
                .as_ref()
                .is_some_and(|flag| flag.load(Ordering::Acquire));
        if asked_meanwhile {
            if let Some(w) = self.wait.take() {
                self.count_spin(now.min(w.until).saturating_duration_since(w.since));
            }
        }
        if self.wait.is_none() {
            let (until, answers) = match &self.asked {
                None => (now + self.window.window(), true),
                Some(flag) if flag.swap(false, Ordering::AcqRel) => {
                    let until = now + self.window.window();
                    self.asked_until = Some(until);
                    (until, true)
                }
                Some(_) => (self.asked_until.unwrap_or(now), false),
            };
            self.wait = Some(Wait {
                since: now,
                until,
                answers,
            });
        }
        self.wait.is_some_and(|w| now < w.until)
    }

    /// The wait under way (if any) ended: the window adapts to how long it took. For an end
    /// [`SpinWait::asked_by`] a flag, only a wait for what its last write asked (the first
    /// after it) grows the window: one that follows bytes the peer sent unasked (a client's
    /// first frames, before this end wrote anything) can only end the spinning, so a
    /// connection that is opened, asked once and closed never learns to spin.
    pub fn ended(&mut self) {
        if let Some(w) = self.wait.take() {
            self.count_spin(
                Instant::now()
                    .min(w.until)
                    .saturating_duration_since(w.since),
            );
            let waited = w.since.elapsed();
            if w.answers || waited > SPIN_MAX {
                self.window.record(waited);
            }
        }
    }

    /// Counts `polled`, the part of a wait this end spent polling, for the end and for the
    /// process ([`spun`]).
    fn count_spin(&mut self, polled: Duration) {
        self.spun = self.spun.saturating_add(polled);
        spun(polled);
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

    /// The online count is the machine's, from `/proc/stat`'s per-CPU lines, whatever this
    /// process's affinity: read from a thread bound to one CPU, it is still every CPU the
    /// kernel lists online (`/sys/devices/system/cpu/online`), while the usable count is one.
    /// Built for musl (`scripts/test` runs these tests so), the count read through
    /// `sysconf(_NPROCESSORS_ONLN)` was the affinity mask's: one, and the gate open.
    #[test]
    fn online_cpus_are_the_machine_s_whatever_the_affinity() {
        let stat = "cpu  10 0 5 100 0 0 0 0 0 0\ncpu0 5 0 2 50 0 0 0 0 0 0\ncpu3 5 0 3 50 0 0 0 0 0 0\nintr 1\nctxt 9\nprocs_running 1\n";
        assert_eq!(online_cpus(stat), Some(2));
        assert_eq!(online_cpus("cpu  1 2 3\nintr 1\n"), None);
        assert_eq!(online_cpus(""), None);
        let Ok(sysfs) = std::fs::read_to_string("/sys/devices/system/cpu/online") else {
            eprintln!("SKIPPED spin::tests::online_cpus_…: no /sys/devices/system/cpu/online");
            return;
        };
        let listed: usize = sysfs
            .trim()
            .split(',')
            .map(|r| match r.split_once('-') {
                Some((a, b)) => {
                    let n = |x: &str| x.parse::<usize>().expect("a CPU number");
                    n(b) - n(a) + 1
                }
                None => 1,
            })
            .sum();
        if listed < 2 {
            eprintln!("SKIPPED spin::tests::online_cpus_…: one CPU online, no mask narrower");
            return;
        }
        let load = std::thread::spawn(|| {
            let mut one = nix::sched::CpuSet::new();
            let cpu = nix::sched::sched_getcpu().expect("sched_getcpu");
            one.set(cpu).expect("a CPU");
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one)
                .expect("bind the thread to one CPU");
            read_load()
        })
        .join()
        .expect("the bound thread");
        assert_eq!(load.usable, 1, "the thread is bound to one CPU");
        assert_eq!(load.online, listed, "online CPUs against {sysfs:?}");
        assert!(!decide(&load, None), "a bound process never spins");
    }

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

    /// A test's fixed window is given whatever the machine's load.
    #[test]
    fn a_fixed_window_is_given_whatever_the_load() {
        let w = SpinWindow::fixed(Duration::from_millis(300));
        assert_eq!(w.window(), Duration::from_millis(300));
        assert_eq!(SpinWindow::default().window(), Duration::ZERO);
    }

    fn times(idle: u64, steal: u64, own: u64, spun: u64) -> CpuTimes {
        let ms = Duration::from_millis;
        CpuTimes {
            idle: ms(idle),
            steal: ms(steal),
            own: ms(own),
            spun: ms(spun),
        }
    }

    /// Over an interval, the machine has CPUs to spare when a twentieth of a CPU went idle in
    /// fact and, with this process's spins (no more than its CPU time), half a CPU, less the
    /// time stolen, whatever the interval's length; spins alone, the process's other work, a
    /// time that went back, or no time, are none.
    #[test]
    fn the_gate_counts_idle_time_and_its_own_spins_as_spare() {
        let then = times(10_000, 300, 500, 200);
        // `floor` is a millisecond above a twentieth of the interval (8 and 20 ms).
        for (age, half, floor) in [(160, 80, 9), (400, 200, 21)] {
            let age = Duration::from_millis(age);
            let rest = half - floor;
            // Half a CPU idle; a twentieth idle and the rest spun; just short of either.
            assert!(spare_since(age, then, times(10_000 + half, 300, 500, 200)));
            assert!(spare_since(
                age,
                then,
                times(10_000 + floor, 300, 500 + rest, 200 + rest)
            ));
            assert!(!spare_since(
                age,
                then,
                times(10_000 + half - 1, 300, 500, 200)
            ));
            // Spins with less than a twentieth idle: spins alone never hold the gate open.
            let spins = times(10_000 + floor - 2, 300, 500 + 2 * half, 200 + 2 * half);
            assert!(!spare_since(age, then, spins));
            // The process's own work that is not a spin is not spare (a flood of requests).
            assert!(!spare_since(
                age,
                then,
                times(10_000 + floor, 300, 500 + 4 * half, 200)
            ));
            // Spin time counts up to the process's CPU time over the interval.
            let capped = times(10_000 + floor, 300, 500 + rest / 2, 200 + 4 * half);
            assert!(!spare_since(age, then, capped));
            // Stolen time comes off the idle time.
            assert!(!spare_since(age, then, times(10_000 + half, 301, 500, 200)));
            assert!(spare_since(
                age,
                then,
                times(10_000 + half + 1, 301, 500, 200)
            ));
        }
        let tenth = Duration::from_millis(100);
        // Times that went back, or no time at all.
        assert!(!spare_since(tenth, then, times(9_000, 300, 700, 200)));
        assert!(!spare_since(tenth, then, times(10_200, 300, 400, 200)));
        assert!(!spare_since(tenth, then, times(10_200, 299, 500, 200)));
        assert!(!spare_since(tenth, then, times(10_200, 300, 500, 199)));
        assert!(!spare_since(
            Duration::ZERO,
            then,
            times(10_100, 300, 500, 200)
        ));
    }

    /// The rule's order: a process that may use fewer than two CPUs, or fewer than are online,
    /// never spins; nor while more tasks run than there are CPUs; then the interval since a
    /// recent reading decides, and without one (a first reading, an old one, times that could
    /// not be read) the running count alone.
    #[test]
    fn the_gate_decides_on_cpus_then_running_tasks_then_the_interval() {
        let quiet = times(10_100, 0, 0, 0);
        let busy = times(10_000, 0, 0, 0);
        let then = times(10_000, 0, 0, 0);
        let load = |usable, online, running, times| Load {
            usable,
            online,
            running,
            times: Some(times),
        };
        let recent = Some((Duration::from_millis(100), then));
        let old = Some((READING_MAX_AGE + Duration::from_millis(1), then));
        let edge = Some((READING_MAX_AGE, then));
        assert!(decide(&load(2, 2, Some(2), quiet), recent));
        assert!(!decide(&load(2, 2, Some(2), busy), recent));
        assert!(!decide(&load(1, 1, Some(1), quiet), recent));
        assert!(!decide(&load(2, 8, Some(1), quiet), recent));
        assert!(decide(&load(4, 4, Some(4), quiet), recent));
        assert!(!decide(&load(2, 2, Some(3), quiet), recent));
        assert!(!decide(&load(2, 2, None, quiet), recent));
        // A first or old reading: the running count alone.
        assert!(decide(&load(2, 2, Some(2), busy), None));
        assert!(!decide(&load(2, 2, Some(3), busy), None));
        assert!(decide(&load(2, 2, Some(1), busy), old));
        assert!(!decide(&load(2, 2, Some(2), busy), edge));
        // Times that cannot be read: none to spare, whatever the count.
        let unread = Load {
            times: None,
            ..load(2, 2, Some(1), quiet)
        };
        assert!(!decide(&unread, recent));
        assert!(!decide(&unread, None));
    }

    /// `/proc/stat`'s `cpu` and `procs_running` lines parse (and nothing else does), and this
    /// machine gives every time the gate measures: the process's own CPU time grows with what
    /// any of its threads uses.
    #[test]
    fn the_times_the_gate_measures_are_read_here() {
        let stat = "cpu  1083277 738403 256419 464268 7962 0 2788 3809 0 0\n\
                    cpu0 542761 320525 116702 236562 2358 0 220 1781 0 0\n\
                    intr 1 2 3\nprocs_running 3\nprocs_blocked 0\n";
        let hz = user_hz();
        let ticks = |t: u64| Duration::from_secs_f64(t as f64 / hz as f64);
        let (idle, steal) = cpu_idle_and_steal(stat).expect("cpu line");
        assert!(idle.abs_diff(ticks(464_268 + 7_962)) < Duration::from_millis(1));
        assert!(steal.abs_diff(ticks(3_809)) < Duration::from_millis(1));
        assert_eq!(procs_running(stat), Some(3));
        assert_eq!(cpu_idle_and_steal("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(cpu_idle_and_steal("cpu  1 2 3 4 5 6 7\n"), None);
        assert_eq!(cpu_idle_and_steal("cpu  1 2 3 x 5 6 7 8\n"), None);
        assert_eq!(cpu_idle_and_steal(""), None);
        assert_eq!(procs_running("procs_running many\n"), None);
        assert_eq!(procs_running(""), None);
        let here = read_load();
        assert!(here.usable >= 1 && here.online >= 1, "{here:?}");
        assert!(here.running.is_some_and(|r| r >= 1), "{here:?}");
        assert!(here.times.is_some(), "{here:?}");
        let before = own_cpu_time().expect("getrusage");
        // Another thread works until the process's time has grown by 10 ms (at most 10 s of
        // the machine's time, however loaded).
        let grew = std::thread::spawn(move || {
            let give_up = Instant::now() + Duration::from_secs(10);
            let mut x = 0u64;
            while Instant::now() < give_up {
                for _ in 0..100_000 {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                if own_cpu_time().is_some_and(|t| t >= before + Duration::from_millis(10)) {
                    return true;
                }
            }
            false
        })
        .join()
        .expect("busy thread");
        assert!(
            grew,
            "the process's CPU time did not grow with another thread's work"
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

    /// An end that reads an untrusted peer learns to spin only from waits for what it asked:
    /// waits for bytes the peer sent unasked (a client's first frames) never grow its window,
    /// however short (so a connection opened, asked once and closed never spins), while the
    /// first wait after its write does; a long unasked wait still ends the spinning.
    #[cfg(feature = "tokio")]
    #[test]
    fn only_a_wait_for_what_the_end_asked_grows_its_window() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut unasked = SpinWait::default().asked_by(flag.clone());
        for _ in 0..100 {
            unasked.again();
            unasked.ended();
        }
        assert_eq!(unasked.window.window, Duration::ZERO);
        // The control: the same quick waits, each after a write, grow it (a try preempted for
        // longer than SPIN_MAX does not count, so a few are allowed).
        let mut asked = SpinWait::default().asked_by(flag.clone());
        let grown = (0..100).any(|_| {
            asked.ask();
            asked.again();
            asked.ended();
            !asked.window.window.is_zero()
        });
        assert!(grown, "no wait after a write grew the window");
        // A long wait nobody asked for ends the spinning.
        asked.again();
        asked.wait = asked.wait.map(|w| Wait {
            since: w.since - 2 * SPIN_MAX,
            ..w
        });
        asked.ended();
        assert_eq!(asked.window.window, Duration::ZERO);
    }

    /// A write made while a wait for unasked bytes is under way makes what comes next a
    /// wait for what the end asked: it spins for its window.
    #[cfg(feature = "tokio")]
    #[test]
    fn a_write_during_a_wait_makes_it_one_for_what_was_asked() {
        let flag = Arc::new(AtomicBool::new(false));
        let window = SpinWindow::fixed(Duration::from_secs(2));
        let mut end = SpinWait::new(window.clone()).asked_by(flag.clone());
        // Unasked: no spin at all, whatever the window.
        assert!(!end.again());
        assert!(end.wait.is_some_and(|w| !w.answers));
        // This end writes meanwhile: the wait starts again as one for what it asked.
        end.ask();
        assert!(end.again(), "the wait after the write spins");
        assert!(end.wait.is_some_and(|w| w.answers));
        end.ended();
        // The control: without a write the unasked wait stays one.
        let mut plain = SpinWait::new(window).asked_by(flag);
        assert!(!plain.again());
        assert!(!plain.again());
        assert!(plain.wait.is_some_and(|w| !w.answers));
    }

    /// A wait counts the part of it that spun towards the process's spin time (which the gate
    /// counts as spare): all of a window that ends before what it waits for.
    #[cfg(feature = "tokio")]
    #[test]
    fn a_spinning_wait_counts_its_spin() {
        let window = Duration::from_millis(20);
        let before = SPUN_NS.load(Ordering::Relaxed);
        let wait = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(async {
                let mut wait = SpinWait::new(SpinWindow::fixed(window));
                wait.on(tokio::time::sleep(3 * window)).await;
                wait
            });
        assert_eq!(wait.spun, window, "the spin counted for the wait");
        let process = Duration::from_nanos(SPUN_NS.load(Ordering::Relaxed) - before);
        assert!(process >= window, "{process:?} counted for the process");
        // The control: a wait that does not spin counts nothing.
        let mut quiet = SpinWait::default();
        quiet.again();
        quiet.ended();
        assert_eq!(quiet.spun, Duration::ZERO);
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
