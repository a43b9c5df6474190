//! A request/response round trip over the control socket (blocking client → loongd →
//! back), beside the floor measured in the same run: a raw 64-byte ping-pong over a Unix
//! socket pair with an echo thread. The goal is a round trip within 1.3× the floor.
//!
//! Hand-timed, interleaved: each round of the loop times one floor ping-pong, one status
//! request and one protocol ping, so that a busy machine slows the three alike. Reports
//! medians and 99th percentiles, and an `@figure` line each for `scripts/bench`.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use loong_ipc::{
    client::{Client, ConnectOptions},
    paths::Layout,
    ControlRequest, ControlResponse, PeerKind,
};

#[path = "../../workers/bench_support.rs"]
mod bench_support;
use bench_support::{figure, percentile, us, Figure};

/// Rounds of the interleaved loop (each: one floor, one status, one ping).
const ROUNDS: usize = 20_000;
/// Rounds run first and not counted.
const WARM_UP: usize = 2_000;

fn report(name: &str, samples: &mut [Duration]) -> (f64, f64) {
    let med = us(percentile(samples, 0.5));
    let p99 = us(percentile(samples, 0.99));
    println!(
        "{name:40} median {med:9.1} µs   p99 {p99:9.1} µs   (n = {})",
        samples.len()
    );
    (med, p99)
}

fn main() {
    // `cargo bench` passes `--bench`; this binary takes no options.
    let (mut a, mut b) = UnixStream::pair().expect("pair");
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let home = tempfile::Builder::new()
        .prefix("lb")
        .tempdir_in("/tmp")
        .expect("home");
    let layout = Layout::user(home.path()).expect("layout");
    let daemon_layout = layout.clone();
    let daemon = std::thread::spawn(move || {
        loongd::run(
            loongd::Options {
                layout: daemon_layout,
                foreground: true,
                accept_audit_integrity_failure: false,
                notify: None,
            },
            |_| {},
        )
    });
    let opts = ConnectOptions {
        peer_kind: PeerKind::Operator,
        build: "bench".into(),
        timeout: Duration::from_secs(5),
    };
    let mut client = loop {
        match Client::connect(&layout.socket, &opts) {
            Ok(c) => break c,
            Err(_) if !daemon.is_finished() => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("loongd did not start: {e}"),
        }
    };
    let deadline = Duration::from_secs(5);
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let (mut floor, mut status, mut ping) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..WARM_UP + ROUNDS {
        let t = Instant::now();
        a.write_all(&msg).expect("write");
        a.read_exact(&mut back).expect("read");
        let f = t.elapsed();
        let t = Instant::now();
        let r: ControlResponse = client
            .call(ControlRequest::Status, deadline)
            .expect("status");
        std::hint::black_box(r);
        let s = t.elapsed();
        let t = Instant::now();
        client.ping(deadline).expect("pong");
        let p = t.elapsed();
        if round >= WARM_UP {
            floor.push(f);
            status.push(s);
            ping.push(p);
        }
    }
    let (floor_med, floor_p99) = report("floor: raw unix-socket round trip", &mut floor);
    let (status_med, status_p99) = report("control status round trip", &mut status);
    let (ping_med, ping_p99) = report("control ping round trip", &mut ping);
    println!(
        "{:40} {:.2}× the floor (goal ≤ 1.3×)",
        "  status / floor",
        status_med / floor_med
    );
    figure(&Figure {
        name: "raw Unix round trip (64 B)",
        value: floor_med,
        unit: "µs",
        p99: Some(floor_p99),
        ..Figure::default()
    });
    figure(&Figure {
        name: "control status round trip",
        value: status_med,
        unit: "µs",
        p99: Some(status_p99),
        floor: Some(("raw Unix round trip", floor_med)),
        goal: "≤ 1.3×",
    });
    figure(&Figure {
        name: "control ping round trip",
        value: ping_med,
        unit: "µs",
        p99: Some(ping_p99),
        floor: Some(("raw Unix round trip", floor_med)),
        goal: "",
    });
    let _: ControlResponse = client
        .call(ControlRequest::Shutdown, deadline)
        .expect("shutdown");
    daemon.join().expect("daemon thread").expect("daemon ran");
    drop(a);
    let _ = echo.join();
}
