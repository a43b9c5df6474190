//! What tests of both ends of a Unix socket share to show that a thread sleeps through a
//! wake-up (the socket's write-space wake-up), or stays awake through a short wait (a spin):
//! a thread's scheduling state and its voluntary context switches, read from /proc. Built
//! only with the `test-support` feature, which only dev-dependencies turn on (and for this
//! crate's own tests).

use std::time::Duration;

/// Thread `tid`'s state letter and voluntary context switches, from /proc.
fn thread_sched(tid: i32) -> (char, u64) {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("stat");
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .expect("state");
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).expect("status");
    let switches = status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches");
    (state, switches)
}

/// The calling thread's id.
pub fn thread_id() -> i32 {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    link.file_name()
        .and_then(|t| t.to_str()?.parse().ok())
        .expect("a thread id")
}

/// Thread `tid`'s voluntary context switches so far (one per sleep).
pub fn sleeps(tid: i32) -> u64 {
    thread_sched(tid).1
}

/// Whether thread `tid` sleeps now (state `S`), rather than running or waiting for a CPU.
pub fn asleep(tid: i32) -> bool {
    thread_sched(tid).0 == 'S'
}

/// Waits until thread `tid` sleeps and has not switched for a while; its switches then.
pub fn settled(tid: i32) -> u64 {
    let mut last = None;
    for _ in 0..500 {
        std::thread::sleep(Duration::from_millis(10));
        let (state, switches) = thread_sched(tid);
        if state == 'S' && last == Some(switches) {
            return switches;
        }
        last = (state == 'S').then_some(switches);
    }
    panic!("thread {tid} never settled asleep");
}

/// Runs `wait` on a current-thread runtime of its own thread (as a runtime thread of loongd
/// waits); gives the thread's id, known before `wait` starts, and its handle.
#[cfg(feature = "tokio")]
pub fn runtime_thread<T: Send + 'static>(
    wait: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> (i32, std::thread::JoinHandle<T>) {
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tid_tx.send(thread_id()).expect("tid");
        rt.block_on(wait())
    });
    (tid_rx.recv().expect("tid"), handle)
}
