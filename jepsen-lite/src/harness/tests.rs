//! Unit tests of the harness.

use super::*;

/// Each run starts on empty stores: a second run into the same `--out` continued the first
/// run's cluster, whose keys the watch checker then counted as bad reads.
#[test]
fn a_run_starts_with_no_nodes_folder_of_a_previous_run() {
    let out = tempfile::tempdir().unwrap();
    let old_data = out.path().join("nodes/node1/db");
    std::fs::create_dir_all(&old_data).unwrap();
    std::fs::write(old_data.join("CURRENT"), b"MANIFEST-000001").unwrap();
    std::fs::write(out.path().join("history.edn"), b"[]").unwrap();
    let dir = fresh_nodes_dir(out.path()).unwrap();
    assert_eq!(dir, out.path().join("nodes"));
    assert!(!dir.exists(), "the previous run's nodes are gone");
    assert!(
        out.path().join("history.edn").exists(),
        "nothing else is touched"
    );
    // And a first run, with no folder yet, is fine.
    assert_eq!(fresh_nodes_dir(out.path()).unwrap(), dir);
}
