//! Property tests for the codec: every message round-trips, any bytes decode to a message,
//! "need more" or a typed error, and an oversize prefix is refused from the prefix alone.

use proptest::prelude::*;

use crate::{
    frame::{self, FrameBuffer, FrameError, FrameLimit, HARD_MAX_FRAME_BYTES},
    Call, ControlRequest, ControlResponse, HandshakeReply, Hello, Reply, WorkerRequest,
    WorkerResponse,
};

fn round_trip<T>(msg: &T) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut out = Vec::new();
    frame::encode(msg, FrameLimit::CEILING, &mut out)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(
        frame::decode::<T>(&out, FrameLimit::CEILING),
        Ok(Some((clone_of(msg)?, out.len())))
    );
    Ok(())
}

fn clone_of<T: serde::Serialize + serde::de::DeserializeOwned>(
    msg: &T,
) -> Result<T, TestCaseError> {
    let bytes = postcard::to_allocvec(msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
    postcard::from_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))
}

/// Decoding arbitrary bytes: a message, need-more, or one of the typed errors.
fn decodes_totally(bytes: &[u8], limit: FrameLimit) {
    match frame::decode::<Call<ControlRequest>>(bytes, limit) {
        Ok(Some((_, used))) => assert!(used <= bytes.len()),
        Ok(None) => assert!(
            bytes.len() < 4
                || bytes.len()
                    < 4 + frame::declared_len(bytes, limit)
                        .ok()
                        .flatten()
                        .unwrap_or(0)
        ),
        Err(FrameError::TooLarge { limit: l, .. }) => assert_eq!(l, limit.get()),
        Err(FrameError::Malformed { .. } | FrameError::TrailingBytes { .. }) => {}
        Err(e @ FrameError::LimitOutOfRange { .. }) => {
            panic!("decoder invented a config error: {e}")
        }
    }
    let _ = frame::decode::<Reply<ControlResponse>>(bytes, limit);
    let _ = frame::decode::<HandshakeReply>(bytes, limit);
    let _ = frame::decode::<Call<WorkerRequest>>(bytes, limit);
    let _ = frame::decode::<Reply<WorkerResponse>>(bytes, limit);
    let _ = Hello::decode(bytes);
}

/// The derived strategies for the message enums nest deeply enough (every variant's fields,
/// the typed error details) to overflow a test thread's default stack in a debug build, and
/// grow with every variant added; their cases run on a thread with this much stack.
const ROUND_TRIP_STACK_BYTES: usize = 64 * 1024 * 1024;
/// Cases per round-trip property.
const ROUND_TRIP_CASES: u32 = 512;

/// Every value the strategy `make` builds generates round-trips, checked on a thread with
/// room for it (the strategy is built there: a derived one is neither `Send` nor `Sync`).
fn round_trips<S, F>(make: F)
where
    F: FnOnce() -> S + Send + 'static,
    S: Strategy,
    S::Value: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let run = move || {
        let strategy = make();
        let mut runner =
            proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(ROUND_TRIP_CASES));
        runner
            .run(&strategy, |msg| round_trip(&msg))
            .map_err(|e| e.to_string())
    };
    let outcome = std::thread::Builder::new()
        .stack_size(ROUND_TRIP_STACK_BYTES)
        .spawn(run)
        .expect("a test thread")
        .join()
        .expect("the round trip does not panic");
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

#[test]
fn worker_requests_round_trip() {
    round_trips(any::<Call<WorkerRequest>>);
}

#[test]
fn worker_replies_round_trip() {
    round_trips(any::<Reply<WorkerResponse>>);
}

#[test]
fn calls_round_trip() {
    round_trips(any::<Call<ControlRequest>>);
}

#[test]
fn replies_round_trip() {
    round_trips(any::<Reply<ControlResponse>>);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn handshakes_round_trip(hello in any::<Hello>(), reply in any::<HandshakeReply>()) {
        round_trip(&hello)?;
        round_trip(&reply)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), limit in 1u32..=512) {
        decodes_totally(&bytes, FrameLimit::new(u64::from(limit)).expect("in range"));
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_prefix_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        decodes_totally(&bytes, FrameLimit::DEFAULT);
    }

    #[test]
    fn oversize_prefix_is_refused_before_allocation(limit in 1u32..=HARD_MAX_FRAME_BYTES, excess in 1u64..=u64::from(u32::MAX)) {
        let len = (u64::from(limit) + excess).min(u64::from(u32::MAX));
        prop_assume!(len > u64::from(limit));
        let limit = FrameLimit::new(u64::from(limit)).expect("in range");
        let prefix = (len as u32).to_le_bytes();
        // Only the four prefix bytes exist: the refusal cannot have read, or made room for, a body.
        prop_assert_eq!(frame::decode::<Call<ControlRequest>>(&prefix, limit), Err(FrameError::TooLarge { len, limit: limit.get() }));
        let mut buf = FrameBuffer::new(limit);
        buf.fill(|space: &mut [u8]| -> Result<usize, ()> { space[..4].copy_from_slice(&prefix); Ok(4) }).expect("prefix not yet known").expect("read");
        prop_assert_eq!(buf.read_space().err(), Some(FrameError::TooLarge { len, limit: limit.get() }));
    }
}

/// Messages framed back to back and read in pieces cut anywhere decode in order. Run like
/// the round trips, on a thread with room for the derived strategy.
#[test]
fn streams_cut_anywhere_decode_in_order() {
    let run = || {
        let strategy = (
            proptest::collection::vec(any::<Call<ControlRequest>>(), 1..8),
            proptest::collection::vec(1usize..64, 1..64),
        );
        let mut runner =
            proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(ROUND_TRIP_CASES));
        runner
            .run(&strategy, |(msgs, cuts)| cut_anywhere(&msgs, &cuts))
            .map_err(|e| e.to_string())
    };
    let outcome = std::thread::Builder::new()
        .stack_size(ROUND_TRIP_STACK_BYTES)
        .spawn(run)
        .expect("a test thread")
        .join()
        .expect("the property does not panic");
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

fn cut_anywhere(
    msgs: &[Call<ControlRequest>],
    cuts: &[usize],
) -> Result<(), proptest::test_runner::TestCaseError> {
    let mut wire = Vec::new();
    for m in msgs {
        frame::encode(m, FrameLimit::DEFAULT, &mut wire).expect("encodes");
    }
    let mut buf = FrameBuffer::new(FrameLimit::DEFAULT);
    let mut got = Vec::new();
    let mut pos = 0;
    let mut cut = cuts.iter().cycle();
    while pos < wire.len() {
        let n = (*cut.next().expect("cycle")).min(wire.len() - pos);
        buf.fill(|space: &mut [u8]| -> Result<usize, ()> {
            let n = n.min(space.len());
            space[..n].copy_from_slice(&wire[pos..pos + n]);
            Ok(n)
        })
        .expect("within limit")
        .map(|n| pos += n)
        .expect("read");
        while let Some(m) = buf
            .next_message::<Call<ControlRequest>>()
            .expect("valid frames")
        {
            got.push(m);
        }
    }
    prop_assert_eq!(got.as_slice(), msgs);
    prop_assert_eq!(buf.buffered(), 0);
    Ok(())
}

/// The cargo-fuzz seed corpus (`ipc/fuzz/corpus/frame_decode`) replayed through the same
/// checks the fuzz target makes, so the corpus is exercised on every test run.
#[test]
fn fuzz_seed_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame_decode");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("seed corpus present") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("readable");
        decodes_totally(&bytes, FrameLimit::DEFAULT);
        seen += 1;
    }
    assert!(seen >= 5, "seed corpus has only {seen} entries");
}
