//! Fuzzes the frame decoder: any bytes give a message, "need more" or a typed error.
//! Run with `cargo +nightly fuzz run frame_decode` from `ipc/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loong_ipc::{
    frame::{self, FrameBuffer, FrameLimit},
    Call, ControlRequest, ControlResponse, HandshakeReply, Hello, Reply,
};

fuzz_target!(|data: &[u8]| {
    let limit = FrameLimit::DEFAULT;
    let _ = frame::decode::<Call<ControlRequest>>(data, limit);
    let _ = frame::decode::<Reply<ControlResponse>>(data, limit);
    let _ = frame::decode::<HandshakeReply>(data, limit);
    let _ = Hello::decode(data);
    // The streaming buffer, fed the same bytes in 3-byte pieces.
    let mut buf = FrameBuffer::new(limit);
    for chunk in data.chunks(3) {
        let fed = buf.fill(|space: &mut [u8]| -> Result<usize, ()> {
            let n = chunk.len().min(space.len());
            space[..n].copy_from_slice(&chunk[..n]);
            Ok(n)
        });
        if fed.is_err() {
            return;
        }
        while let Ok(Some(_)) = buf.next_message::<Call<ControlRequest>>() {}
    }
});
