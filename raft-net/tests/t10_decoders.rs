//! Every byte a peer can send is decoded without a panic and without an allocation sized by
//! a length it claims: arbitrary bytes as a stream of frames, arbitrary payloads as requests
//! and answers. Seeded: the seed is printed, `PROPTEST_RNG_SEED=<seed>` replays a run.

use mirrorkv_raft_net::frame;
use mirrorkv_raft_net::{NetError, RpcRequest, RpcResponse};
use mirrorkv_storage::codec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

fn runner(name: &str, cases: u32) -> (TestRunner, u64) {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("{name} seed: {seed} (replay with PROPTEST_RNG_SEED={seed})");
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    };
    (TestRunner::new(config), seed)
}

/// Read every frame of `bytes` as a server reads a connection, decoding each payload as a
/// request and as an answer; stops at the first error or the end.
async fn read_all(mut bytes: &[u8], max_frame_bytes: u32) -> Result<usize, NetError> {
    let mut frames = 0;
    while let Some(frame) = frame::read(&mut bytes, max_frame_bytes, 1000).await? {
        let _ = codec::decode::<RpcRequest>(&frame.payload);
        let _ = codec::decode::<RpcResponse>(&frame.payload);
        frames += 1;
    }
    Ok(frames)
}

#[test]
fn arbitrary_bytes_are_read_as_frames_or_refused_without_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (mut runner, seed) = runner("raft-net frames", 3000);
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..2048), |bytes| {
            let _ = runtime.block_on(read_all(&bytes, 1 << 20));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
}

#[test]
fn arbitrary_payloads_in_well_formed_frames_decode_or_fail_cleanly() {
    let (mut runner, seed) = runner("raft-net payloads", 3000);
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..512), |payload| {
            let _ = codec::decode::<RpcRequest>(&payload);
            let _ = codec::decode::<RpcResponse>(&payload);
            // Framed, the payload is read back whole.
            let bytes = frame::encode(7, &payload, 1 << 20).unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let read =
                runtime.block_on(async { frame::read(&mut bytes.as_slice(), 1 << 20, 1000).await });
            prop_assert_eq!(read.unwrap().map(|f| f.payload), Some(payload));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
}

/// A frame that claims far more than the limit is refused before anything is allocated; one
/// that claims up to the limit and brings little is refused as cut short.
#[test]
fn claimed_lengths_are_checked_before_they_are_believed() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let too_large = [0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0];
    let error = runtime.block_on(read_all(&too_large, 1 << 20)).unwrap_err();
    assert!(matches!(error, NetError::FrameTooLarge { .. }), "{error}");
    let mut short = (1u32 << 20).to_be_bytes().to_vec();
    short.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]);
    let error = runtime.block_on(read_all(&short, 1 << 20)).unwrap_err();
    assert!(!matches!(error, NetError::FrameTooLarge { .. }), "{error}");
}
