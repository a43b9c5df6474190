//! A request/response round trip over the control socket (blocking client → loongd →
//! back), beside the floor measured in the same run: a raw 64-byte ping-pong over a Unix
//! socket pair with an echo thread. The goal is a round trip within 1.3× the floor.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use criterion::{criterion_group, criterion_main, Criterion};
use loong_ipc::{
    client::{Client, ConnectOptions},
    paths::Layout,
    ControlRequest, ControlResponse, PeerKind,
};

fn floor(c: &mut Criterion) {
    let (mut a, mut b) = UnixStream::pair().expect("pair");
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    c.bench_function("floor/unix_pingpong_64B", |bench| {
        bench.iter(|| {
            a.write_all(&msg).expect("write");
            a.read_exact(&mut back).expect("read");
        })
    });
    drop(a);
    let _ = echo.join();
}

fn control(c: &mut Criterion) {
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
    c.bench_function("control/status_round_trip", |b| {
        b.iter(|| {
            let r: ControlResponse = client
                .call(ControlRequest::Status, deadline)
                .expect("status");
            std::hint::black_box(r)
        })
    });
    c.bench_function("control/ping_round_trip", |b| {
        b.iter(|| client.ping(deadline).expect("pong"))
    });
    let _: ControlResponse = client
        .call(ControlRequest::Shutdown, deadline)
        .expect("shutdown");
    daemon.join().expect("daemon thread").expect("daemon ran");
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = floor, control
}
criterion_main!(benches);
