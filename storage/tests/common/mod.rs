//! What the storage property tests share.

/// The proptest seed of test `name`: `PROPTEST_RNG_SEED` if set (to replay a run), else a
/// fresh one. Printed either way, with the command that replays it.
pub fn proptest_seed(name: &str) -> u64 {
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
