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

use std::{
    sync::{Mutex, OnceLock, PoisonError},
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

/// Whether the machine has CPUs to spare: in the last ten seconds, tasks waited for a CPU
/// less than [`CPU_PRESSURE_MAX_PERCENT`] of the time (`/proc/pressure/cpu`); on a kernel
/// without that file, its one-minute load average (`/proc/loadavg`) is below its number of
/// CPUs. Read at most once per [`LOAD_READ_EVERY`] in a process; a load that cannot be read
/// is none to spare.
pub fn cpus_to_spare() -> bool {
    static CPUS: OnceLock<f64> = OnceLock::new();
    static LAST: Mutex<Option<(Instant, bool)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((at, spare)) = *last {
        if at.elapsed() < LOAD_READ_EVERY {
            return spare;
        }
    }
    let spare = match std::fs::read_to_string(CPU_PRESSURE) {
        Ok(pressure) => little_pressure(&pressure),
        Err(_) => {
            let cpus = *CPUS.get_or_init(|| {
                std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
            });
            std::fs::read_to_string(LOADAVG).is_ok_and(|l| below(&l, cpus))
        }
    };
    *last = Some((Instant::now(), spare));
    spare
}

/// Whether the `some` line of a pressure file (as `/proc/pressure/cpu` reads) has its
/// ten-second average below [`CPU_PRESSURE_MAX_PERCENT`]; no when it does not parse.
fn little_pressure(pressure: &str) -> bool {
    pressure
        .lines()
        .find_map(|l| l.strip_prefix("some "))
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
}
