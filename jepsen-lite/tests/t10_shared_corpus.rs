//! Every history of `shared/corpus/jepsen-etcd` gets the verdict `verdicts.tsv` records.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use jepsen_lite::model::Register;
use jepsen_lite::{check, parse, CheckOptions, Verdict};

fn corpus_dir() -> PathBuf {
    // shared/ sits beside the repository (CI copies it there too). The manifest dir is read
    // when the test runs (cargo sets it), not when it was built: a build cache shared between
    // clones may hand this binary to a clone at another path.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let dir = manifest.join("../../shared/corpus/jepsen-etcd");
    assert!(
        dir.is_dir(),
        "the shared corpus is expected at {}",
        dir.display()
    );
    dir
}

#[test]
fn t10_checker_agrees_with_every_etcd_verdict() {
    let dir = corpus_dir();
    let tsv = std::fs::read_to_string(dir.join("verdicts.tsv")).unwrap();
    let started = Instant::now();
    let mut checked = 0;
    let mut disagreements = Vec::new();
    for line in tsv.lines().skip(1) {
        let fields: Vec<&str> = line.split('\t').collect();
        let expected = match fields[1] {
            "true" => Verdict::Linearizable,
            "false" => Verdict::NotLinearizable,
            _ => continue, // the empty file has no verdict
        };
        let text = std::fs::read_to_string(dir.join(fields[0])).unwrap();
        let operations = parse::parse(&text).unwrap().operations().unwrap();
        let result = check(
            &Register,
            &operations,
            CheckOptions {
                time_limit: Duration::from_secs(60),
                max_states_per_key: jepsen_lite::DEFAULT_MAX_STATES_PER_KEY,
                threads: 2,
            },
        );
        if result.verdict != expected {
            disagreements.push(format!(
                "{}: expected {expected:?}, got {:?}",
                fields[0], result.verdict
            ));
        }
        checked += 1;
    }
    println!(
        "t10: checked {checked} histories in {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(checked, 102);
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}
