//! openraft's own storage conformance suite, run against our RocksDB store.

use mirrorkv_storage::{LogStore, RaftStorageError, StateMachine, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), RaftStorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log_store, state_machine) = mirrorkv_storage::open(dir.path()).expect("open store");
        Ok((dir, log_store, state_machine))
    }
}

#[test]
fn t10_openraft_storage_suite_passes() {
    Suite::test_all(RocksBuilder).expect("openraft storage conformance suite");
}
