//! What the storage property tests share.

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestRunner};

/// The proptest seed of test `name`: `PROPTEST_RNG_SEED` if set (to replay a run), else a
/// fresh one. Printed either way, with the command that replays it.
fn proptest_seed(name: &str) -> u64 {
    let seed: u64 = match std::env::var("PROPTEST_RNG_SEED") {
        Ok(value) => value.parse().expect("PROPTEST_RNG_SEED is a u64"),
        Err(_) => {
            use std::time::{SystemTime, UNIX_EPOCH};
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
        }
    };
    println!("{name} seed: {seed} (replay with PROPTEST_RNG_SEED={seed})");
    seed
}

/// Run `case` on `cases` values of `strategy`, one after another on a single-threaded
/// runtime, with the seed of `proptest_seed`; a failure panics with the seed and the shrunk
/// input.
pub fn run_cases<S, F, Fut>(name: &str, cases: u32, strategy: &S, case: F)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
    F: Fn(S::Value) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let seed = proptest_seed(name);
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    TestRunner::new(config)
        .run(strategy, |value| {
            runtime.block_on(case(value));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}, seed {seed}: {e}"));
}
