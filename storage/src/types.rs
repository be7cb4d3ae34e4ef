//! The replicated data model: what a log entry carries, what applying it answers, and how a key
//! is stored. These types are persisted and sent between nodes; add enum variants only at the
//! end so that existing logs keep decoding.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a cluster member can be reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Address of the node-to-node transport (raft-net).
    pub raft_addr: String,
    /// Address of the HTTP API.
    pub api_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

/// A condition a single-key write must satisfy to take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// Always apply.
    None,
    /// Apply only if the key exists with exactly this `mod_index` (`If-Match`).
    ModIndex(u64),
    /// Apply only if the key does not exist (`If-None-Match: *`).
    Absent,
    /// Apply only if the key exists, whatever its `mod_index` (`If-Match: *`). Last, so that
    /// log entries written before it existed decode as before.
    Exists,
}

/// A client write, as it is stored in the log and applied by every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set `key` to `value`.
    Put {
        key: String,
        value: Vec<u8>,
        precondition: Precondition,
    },
    /// Remove `key`.
    Delete {
        key: String,
        precondition: Precondition,
    },
    /// If every compare holds run `success`, else `failure`; atomically at one index.
    Txn(Txn),
    /// Changes nothing. A `strong` read appends one and reads once it is applied, which orders
    /// the read with every write in the log.
    Barrier,
    /// `command`, applied at most once per idempotency `key` within `window_ms`: a repeat answers
    /// the first result. `issued_at_ms` is the proposing node's wall clock; every node compares
    /// the same logged numbers, so the outcome is deterministic.
    Idempotent {
        key: String,
        issued_at_ms: u64,
        window_ms: u64,
        command: Box<Command>,
    },
    /// Several client commands proposed together, applied in order at one index, each with its
    /// own result. The proposer (the API's write batcher) only groups commands whose
    /// `conflict_keys` are pairwise disjoint, so no key changes twice at one index and a key's
    /// `mod_index` still names exactly one version of it.
    Batch(Vec<Command>),
}

impl Command {
    /// What this command reads or writes, tagged by namespace (`d` data key, `i` idempotency
    /// key): two commands with disjoint sets commute and may share one log entry.
    pub fn conflict_keys(&self) -> Vec<(u8, &str)> {
        let mut keys = Vec::new();
        self.collect_conflict_keys(&mut keys);
        keys
    }

    fn collect_conflict_keys<'a>(&'a self, keys: &mut Vec<(u8, &'a str)>) {
        match self {
            Command::Put { key, .. } | Command::Delete { key, .. } => keys.push((b'd', key)),
            Command::Txn(txn) => {
                keys.extend(txn.compare.iter().map(|c| (b'd', c.key.as_str())));
                for op in txn.success.iter().chain(&txn.failure) {
                    let key = match op {
                        TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => key,
                    };
                    keys.push((b'd', key));
                }
            }
            Command::Barrier => {}
            Command::Idempotent { key, command, .. } => {
                keys.push((b'i', key));
                command.collect_conflict_keys(keys);
            }
            Command::Batch(commands) => {
                for command in commands {
                    command.collect_conflict_keys(keys);
                }
            }
        }
    }

    /// About how many bytes this command takes encoded: its keys and values plus a little for
    /// each part. Batches are bounded with it, so that an entry or a forwarded frame of many
    /// commands stays well under the transport's frame limit.
    pub fn approx_bytes(&self) -> usize {
        // Per part: enum tags, varint lengths (up to 10 bytes each) and integers.
        const PART_BYTES: usize = 32;
        match self {
            Command::Put { key, value, .. } => PART_BYTES + key.len() + value.len(),
            Command::Delete { key, .. } => PART_BYTES + key.len(),
            Command::Txn(txn) => {
                let compares: usize = txn
                    .compare
                    .iter()
                    .map(|c| {
                        PART_BYTES
                            + c.key.len()
                            + match &c.target {
                                CompareTarget::Value(v) => v.len(),
                                _ => 0,
                            }
                    })
                    .sum();
                let ops: usize = txn
                    .success
                    .iter()
                    .chain(&txn.failure)
                    .map(|op| match op {
                        TxnOp::Put { key, value } => PART_BYTES + key.len() + value.len(),
                        TxnOp::Delete { key } | TxnOp::Get { key } => PART_BYTES + key.len(),
                    })
                    .sum();
                PART_BYTES + compares + ops
            }
            Command::Barrier => PART_BYTES,
            Command::Idempotent { key, command, .. } => {
                PART_BYTES + key.len() + command.approx_bytes()
            }
            Command::Batch(commands) => {
                PART_BYTES + commands.iter().map(Command::approx_bytes).sum::<usize>()
            }
        }
    }
}

/// A transaction: compares, then the ops of one branch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// One compare of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub target: CompareTarget,
}

/// What a compare checks. A missing key has `mod_index` 0 and no value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    ModIndex(u64),
    Value(Vec<u8>),
    Exists(bool),
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
    Get { key: String },
}

/// The result of one transaction operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    Put {
        prev_mod_index: Option<u64>,
    },
    Delete {
        deleted: bool,
    },
    Get {
        key: String,
        record: Option<KeyRecord>,
    },
}

/// What applying one log entry produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// A blank or membership entry: nothing for a client.
    Nothing,
    /// The put took effect; `prev_mod_index` is the key's previous `mod_index`, if it existed.
    Put { prev_mod_index: Option<u64> },
    /// The delete ran; `deleted` says whether the key existed.
    Delete { deleted: bool },
    /// The precondition did not hold and nothing changed; `mod_index` is the key's current one.
    PreconditionFailed { mod_index: Option<u64> },
    /// A transaction ran its `success` branch (`succeeded`) or its `failure` branch.
    Txn {
        succeeded: bool,
        results: Vec<TxnOpResult>,
    },
    /// The answers of a `Command::Batch`, in order.
    Batch(Vec<Response>),
}

/// The answer of the state machine for one applied entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Log index at which the entry took effect.
    pub index: u64,
    pub result: CommandResult,
}

/// A key's stored value with its indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub value: Vec<u8>,
    /// Log index of the write that last changed the key.
    pub mod_index: u64,
    /// Log index of the write that created the key (since it last did not exist).
    pub create_index: u64,
}

openraft::declare_raft_types!(
    /// The openraft type configuration of mirrorkv.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Node id type used across the workspace.
pub type NodeId = u64;
/// A log entry of mirrorkv.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id of mirrorkv.
pub type LogId = openraft::LogId<NodeId>;
/// The openraft handle of a mirrorkv node.
pub type Raft = openraft::Raft<TypeConfig>;
/// Membership as stored with the log id it was applied at.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
/// openraft's storage error, which the storage traits must return.
pub type RaftStorageError = openraft::StorageError<NodeId>;

#[cfg(test)]
mod tests {
    use super::*;

    /// `approx_bytes` bounds batches against the frame limit, so it must not undercount.
    #[test]
    fn approx_bytes_covers_the_encoded_size() {
        let put = |key: &str, value_bytes: usize| Command::Put {
            key: key.into(),
            value: vec![7; value_bytes],
            precondition: Precondition::ModIndex(u64::MAX),
        };
        let txn = Command::Txn(Txn {
            compare: vec![Compare {
                key: "k".repeat(300),
                target: CompareTarget::Value(vec![1; 70_000]),
            }],
            success: vec![
                TxnOp::Put {
                    key: "a".into(),
                    value: vec![2; 200],
                },
                TxnOp::Delete { key: "b".into() },
            ],
            failure: vec![TxnOp::Get {
                key: "c".repeat(20_000),
            }],
        });
        let idempotent = Command::Idempotent {
            key: "writer-1".into(),
            issued_at_ms: u64::MAX,
            window_ms: u64::MAX,
            command: Box::new(put("x", 5)),
        };
        let commands = vec![
            put("", 0),
            put("key", 100),
            put(&"k".repeat(16_384), 1 << 20),
            Command::Delete {
                key: "gone".into(),
                precondition: Precondition::Absent,
            },
            Command::Barrier,
            txn.clone(),
            idempotent.clone(),
            Command::Batch(vec![put("a", 100), txn, idempotent]),
        ];
        for command in commands {
            let encoded = crate::codec::encode(&command).unwrap().len();
            assert!(
                encoded <= command.approx_bytes(),
                "{encoded} encoded bytes > approx {} for {command:?}",
                command.approx_bytes()
            );
        }
    }
}
