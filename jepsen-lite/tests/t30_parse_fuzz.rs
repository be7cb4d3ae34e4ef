//! `jepsen-lite check` reads files it did not write: every history format (our JSONL, Jepsen
//! EDN, a Jepsen console log) is parsed from arbitrary text, and cut or mangled real
//! histories, with a clear error or a history, never a panic or a stack overflow. Seeded:
//! the seed is printed, `PROPTEST_RNG_SEED=<seed>` replays a run.

use jepsen_lite::parse;
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

/// Parse `text` the way `check` does, operations included.
fn parse_fully(text: &str) {
    if let Ok(history) = parse::parse(text) {
        let _ = history.operations();
    }
}

/// Text made of the formats' own tokens, so the parsers get past their first byte.
fn history_like() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("#{".to_string()),
        Just(":type".to_string()),
        Just(":invoke".to_string()),
        Just(":ok".to_string()),
        Just(":fail".to_string()),
        Just(":info".to_string()),
        Just(":f".to_string()),
        Just(":read".to_string()),
        Just(":write".to_string()),
        Just(":cas".to_string()),
        Just(":value".to_string()),
        Just(":process".to_string()),
        Just(":time".to_string()),
        Just("nil".to_string()),
        Just("\"".to_string()),
        Just("\\".to_string()),
        Just("\n".to_string()),
        Just(" ".to_string()),
        Just(",".to_string()),
        Just("\"type\":".to_string()),
        Just("\"process\":".to_string()),
        Just("\"value\":".to_string()),
        Just("INFO".to_string()),
        Just("jepsen.util".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[a-z0-9:\\-\\.]{0,6}",
    ];
    proptest::collection::vec(token, 0..200).prop_map(|tokens| tokens.concat())
}

#[test]
fn arbitrary_text_is_parsed_or_refused_without_panic() {
    let (mut text_runner, seed) = runner("history text", 3000);
    text_runner
        .run(&history_like(), |text| {
            parse_fully(&text);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let (mut bytes_runner, seed) = runner("history bytes", 1000);
    bytes_runner
        .run(&proptest::collection::vec(any::<u8>(), 0..1024), |bytes| {
            parse_fully(&String::from_utf8_lossy(&bytes));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
}

/// Nesting far past any real history is an error, not a stack overflow.
#[test]
fn deep_nesting_is_refused() {
    for open in ["[", "(", "{", "#{", "{\"a\":"] {
        let text = open.repeat(200_000);
        assert!(parse::parse(&text).is_err(), "{open} x 200000 parsed");
    }
}

/// A real history, cut at every 97th byte and with bytes replaced, parses or fails cleanly.
#[test]
fn cut_and_mangled_real_histories_are_parsed_or_refused() {
    let manifest = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let dir = manifest.join("../../shared/corpus/jepsen-etcd/jepsen");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let text = files
        .iter()
        .find_map(|path| {
            std::fs::read_to_string(path)
                .ok()
                .filter(|t| t.len() > 1000)
        })
        .expect("a history of the corpus");
    // The first 20000 bytes: enough lines of every kind, and fast.
    let bytes = &text.as_bytes()[..text.len().min(20_000)];
    for cut in (0..bytes.len()).step_by(97) {
        parse_fully(&String::from_utf8_lossy(&bytes[..cut]));
    }
    for at in (0..bytes.len()).step_by(89) {
        for replacement in [b'{', b'"', b'\n', b']', b'\\'] {
            let mut mangled = bytes.to_vec();
            mangled[at] = replacement;
            parse_fully(&String::from_utf8_lossy(&mangled));
        }
    }
}
