//! The burst's floor: the concurrent burst's shape with none of its work, measured in the same
//! run as the burst, so that its rate reads as a fraction of what this machine's hops and one
//! durable commit per group allow.
//!
//! The same clients (50 threads, each one connection making its calls one after the other,
//! 64-byte frames, blocking); a server on a tokio runtime of 2 threads, a task per connection,
//! as loongd's; 2 worker processes (this bench run again, [`ECHO_WORKER_ENV`]) that echo
//! each frame with a blocking read and write; and a group commit: a writer thread appends 64
//! bytes per call and `fdatasync`s once per group, and a call is answered when its worker has
//! answered and its append is durable. What it leaves out is everything a call does: framing
//! with postcard, the decision, the records (JSON, SQLite, the chain's hash), WASM, metrics.

use std::{
    io::{Read, Write},
    os::{fd::OwnedFd, unix::net::UnixStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{oneshot, Semaphore},
};

/// Set to `1` in a worker of the floor: the process echoes 64-byte frames from stdin to
/// stdout until stdin ends.
pub const ECHO_WORKER_ENV: &str = "LOONG_E2E_FLOOR_ECHO_WORKER";
/// Worker processes, as loongd's default WASM pool (`wasm_pool_size`).
const WORKERS: usize = 2;
/// loongd's runtime threads on this machine's 2 cores.
const SERVER_THREADS: usize = 2;
const FRAME: usize = 64;
/// Calls each connection makes before the timed burst.
const WARM_UP_CALLS: usize = 4;

/// A floor worker's whole life (see [`ECHO_WORKER_ENV`]).
pub fn echo_worker() -> ! {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut buf = [0u8; FRAME];
    while input.read_exact(&mut buf).is_ok() {
        if output
            .write_all(&buf)
            .and_then(|()| output.flush())
            .is_err()
        {
            break;
        }
    }
    std::process::exit(0)
}

/// The group commit: calls queue a waiter; the writer takes every waiter queued, appends a
/// frame for each, `fdatasync`s once and answers them all.
#[derive(Default)]
struct Commits {
    queue: Mutex<(Vec<oneshot::Sender<()>>, bool)>,
    wake: Condvar,
}

impl Commits {
    fn queue(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let was_empty = q.0.is_empty();
        q.0.push(tx);
        drop(q);
        if was_empty {
            self.wake.notify_one();
        }
        rx
    }

    fn stop(&self) {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        self.wake.notify_one();
    }

    fn writer(&self, path: &Path) {
        let mut file = std::fs::File::create(path).expect("floor commit file");
        let mut group = Vec::new();
        loop {
            {
                let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                while q.0.is_empty() && !q.1 {
                    q = self.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
                if q.0.is_empty() {
                    return;
                }
                std::mem::swap(&mut group, &mut q.0);
            }
            file.write_all(&vec![0u8; FRAME * group.len()])
                .expect("floor append");
            file.sync_data().expect("floor fdatasync");
            for w in group.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

/// A floor worker process and the server's end of its socket.
fn spawn_worker() -> (Child, UnixStream) {
    let (ours, theirs) = UnixStream::pair().expect("worker socket");
    let input = OwnedFd::from(theirs.try_clone().expect("worker socket"));
    let child = Command::new(std::env::current_exe().expect("bench path"))
        .env(ECHO_WORKER_ENV, "1")
        .stdin(Stdio::from(input))
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("floor worker");
    (child, ours)
}

/// Each connection makes `per_thread` calls one after the other, all connections at once;
/// returns each call's number, the number its answer carried back and its latency.
fn drive(clients: &mut [UnixStream], per_thread: usize) -> Vec<(u64, u64, Duration)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter_mut()
            .enumerate()
            .map(|(th, c)| {
                s.spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let n = (th * per_thread + i) as u64;
                            let mut buf = [0u8; FRAME];
                            buf[..8].copy_from_slice(&n.to_le_bytes());
                            let t = Instant::now();
                            c.write_all(&buf).expect("floor call");
                            c.read_exact(&mut buf).expect("floor answer");
                            let echoed = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                            (n, echoed, t.elapsed())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("floor client"))
            .collect()
    })
}

/// CPU time (user + system, clock ticks) of process `pid` (`self` for this one), every thread.
pub fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// What the floor's burst measured.
pub struct Floor {
    /// Calls per second.
    pub rate: f64,
    /// A call's latency.
    pub median: Duration,
    pub p99: Duration,
    /// CPU time per call of every process (clients, server, writer, workers), µs.
    pub cpu_per_call_us: f64,
}

/// Runs the floor's burst: `threads` connections × `per_thread` calls, every answer checked to
/// be its own call's.
pub fn run(dir: &Path, threads: usize, per_thread: usize) -> Floor {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(SERVER_THREADS)
        .enable_io()
        .build()
        .expect("floor runtime");
    let (mut children, workers): (Vec<Child>, Vec<UnixStream>) =
        (0..WORKERS).map(|_| spawn_worker()).unzip();
    let commits = Arc::new(Commits::default());
    let writer = {
        let commits = commits.clone();
        let path = dir.join("burst-floor-commits");
        std::thread::spawn(move || commits.writer(&path))
    };
    let idle = Arc::new(Mutex::new(Vec::new()));
    for w in workers {
        w.set_nonblocking(true).expect("nonblocking");
        let w = runtime.block_on(async { tokio::net::UnixStream::from_std(w) });
        idle.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(w.expect("worker stream"));
    }
    let permits = Arc::new(Semaphore::new(WORKERS));
    let mut clients: Vec<UnixStream> = Vec::with_capacity(threads);
    for _ in 0..threads {
        let (client, server) = UnixStream::pair().expect("connection");
        server.set_nonblocking(true).expect("nonblocking");
        let (idle, permits, commits) = (idle.clone(), permits.clone(), commits.clone());
        runtime.spawn(async move {
            let mut conn = tokio::net::UnixStream::from_std(server).expect("connection stream");
            let mut buf = [0u8; FRAME];
            while conn.read_exact(&mut buf).await.is_ok() {
                let durable = commits.queue();
                {
                    let _permit = permits.acquire().await.expect("permits");
                    let mut worker = idle
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .pop()
                        .expect("a permit has its worker");
                    worker.write_all(&buf).await.expect("to the worker");
                    worker.read_exact(&mut buf).await.expect("from the worker");
                    idle.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(worker);
                }
                durable.await.expect("committed");
                if conn.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        clients.push(client);
    }
    // Every connection and worker is used once before the timed burst, as loongd's are by the
    // bench's warm-up calls.
    drive(&mut clients, WARM_UP_CALLS);
    let processes_cpu = || {
        cpu_ticks("self")
            + children
                .iter()
                .map(|c| cpu_ticks(&c.id().to_string()))
                .sum::<u64>()
    };
    let cpu_before = processes_cpu();
    let t = Instant::now();
    let answered = drive(&mut clients, per_thread);
    let wall = t.elapsed();
    let cpu = processes_cpu() - cpu_before;
    assert!(
        answered.iter().all(|(n, echoed, _)| n == echoed),
        "a floor call was answered with another call's frame"
    );
    runtime.shutdown_timeout(Duration::from_secs(1));
    commits.stop();
    let _ = writer.join();
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut latency: Vec<Duration> = answered.iter().map(|(_, _, d)| *d).collect();
    Floor {
        rate: answered.len() as f64 / wall.as_secs_f64(),
        median: super::percentile(&mut latency, 0.5),
        p99: super::percentile(&mut latency, 0.99),
        cpu_per_call_us: ticks_us(cpu) / answered.len() as f64,
    }
}

/// The kernel's clock ticks per second in `/proc/PID/stat` (`USER_HZ`): 100 on Linux,
/// whatever the kernel's own `HZ`.
const USER_HZ: f64 = 100.0;

/// `ticks` in µs.
pub fn ticks_us(ticks: u64) -> f64 {
    ticks as f64 / USER_HZ * 1e6
}

/// Process `root` and every process below it, as `/proc` shows them now (a process in another
/// pid namespace is there under its host pid; children of every thread, by their parent pid).
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// CPU time (clock ticks) of process `root` and of every process below it.
pub fn tree_cpu_ticks(root: u32) -> u64 {
    process_tree(root)
        .iter()
        .map(|p| cpu_ticks(&p.to_string()))
        .sum()
}
