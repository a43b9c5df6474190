//! Frame codec throughput: encode + decode of the control API's common messages.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use loong_ipc::{
    frame::{self, FrameLimit},
    Call, ControlRequest, ControlResponse, Reply, StatusReport,
};

fn codec(c: &mut Criterion) {
    let req: Call<ControlRequest> = Call::Request {
        id: 42,
        deadline_ms: 10_000,
        body: ControlRequest::Status,
    };
    let resp: Reply<ControlResponse> = Reply::Response {
        id: 42,
        result: Ok(ControlResponse::Status(StatusReport {
            version: "0.1.0".into(),
            protocol_version: 1,
            pid: 12345,
            uptime_ms: 987_654,
            home: "/var/lib/loong".into(),
            socket_path: "/run/loong/loongd.sock".into(),
            connected_clients: 3,
        })),
    };
    let mut g = c.benchmark_group("frame");
    let mut buf = Vec::with_capacity(256);
    g.bench_function("encode_decode_request", |b| {
        b.iter(|| {
            buf.clear();
            frame::encode(black_box(&req), FrameLimit::DEFAULT, &mut buf).expect("encodes");
            let got: Option<(Call<ControlRequest>, usize)> =
                frame::decode(black_box(&buf), FrameLimit::DEFAULT).expect("decodes");
            black_box(got)
        })
    });
    g.bench_function("encode_decode_status_reply", |b| {
        b.iter(|| {
            buf.clear();
            frame::encode(black_box(&resp), FrameLimit::DEFAULT, &mut buf).expect("encodes");
            let got: Option<(Reply<ControlResponse>, usize)> =
                frame::decode(black_box(&buf), FrameLimit::DEFAULT).expect("decodes");
            black_box(got)
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
