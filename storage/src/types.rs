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
///
/// Decoding is depth-limited (`MAX_COMMAND_DEPTH`, see the `Deserialize` impl below): the type
/// nests (`Idempotent`, `Batch`), postcard has no depth limit of its own, and a frame of a few
/// kilobytes of nested commands from any peer would otherwise overflow the stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    /// the first result; the same key on another command within the window is refused.
    /// `issued_at_ms` and `window_ms` are the leader's (its batcher stamps them as it forms the
    /// entry); every node compares the same logged numbers, so the outcome is deterministic.
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
    /// Grant a lease of `ttl_ms`. Its id is `index << 8` plus its place among the grants of
    /// its entry ([`lease_id`]): unique, and increasing with the log. Refused when
    /// `max_leases` leases live already (the granting node's limit, logged so every node
    /// decides the same).
    LeaseGrant { ttl_ms: u64, max_leases: u64 },
    /// End lease `id` now: delete it and every key attached to it, in this one entry. Goes
    /// alone in its entry ([`Command::goes_alone`]).
    LeaseRevoke { id: u64 },
    /// The leader's: end the leases `ids`, whose TTL ran out on its clock, with their keys.
    /// Leases already gone are skipped. Goes alone in its entry.
    LeaseExpire { ids: Vec<u64> },
    /// A `Put` that also attaches `key` to a lease (a put without one detaches it).
    PutLeased {
        key: String,
        value: Vec<u8>,
        precondition: Precondition,
        lease: LeaseAttach,
    },
    /// A change of access control: roles and tokens (`auth`). Goes alone in its entry.
    Auth(crate::auth::AuthCommand),
}

/// The lease a put attaches its key to, and the most keys that lease may hold (the limit of
/// the node that took the put, logged so that every node decides the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttach {
    pub id: u64,
    pub max_keys: u64,
}

/// The id of the `nth` lease granted by the entry at `index` (`Command::LeaseGrant`). An
/// entry holds at most 256 grants: apply refuses the rest.
pub fn lease_id(index: u64, nth: u64) -> u64 {
    (index << 8) | nth
}

/// The longest TTL a lease may have (a day), checked wherever a grant enters a node.
pub const MAX_LEASE_TTL_MS: u64 = 24 * 3600 * 1000;

/// Most leases one entry may grant (the place of a grant in its entry is the low byte of its
/// id).
pub const MAX_GRANTS_PER_ENTRY: u64 = 256;

/// The deepest nesting of commands a decoder accepts: a batch holds idempotent commands that
/// hold a command (3), with room to spare. Deeper is refused as malformed.
pub const MAX_COMMAND_DEPTH: u32 = 8;

thread_local! {
    /// Commands being decoded on this thread, outermost first (decoding is synchronous).
    static COMMAND_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Counts one level of command decoding while it lives.
struct DepthGuard;

impl DepthGuard {
    fn enter() -> Option<Self> {
        COMMAND_DEPTH.with(|depth| {
            let current = depth.get();
            (current < MAX_COMMAND_DEPTH).then(|| {
                depth.set(current + 1);
                DepthGuard
            })
        })
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        COMMAND_DEPTH.with(|depth| depth.set(depth.get() - 1));
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Some(_level) = DepthGuard::enter() else {
            return Err(serde::de::Error::custom(format!(
                "commands nested more than {MAX_COMMAND_DEPTH} deep"
            )));
        };
        CommandWire::deserialize(deserializer)
    }
}

/// `Command`'s shape for decoding, field for field (serde's remote derive); its nested
/// commands decode through `Command`'s own impl, so every level is counted.
#[derive(Deserialize)]
#[serde(remote = "Command")]
enum CommandWire {
    Put {
        key: String,
        value: Vec<u8>,
        precondition: Precondition,
    },
    Delete {
        key: String,
        precondition: Precondition,
    },
    Txn(Txn),
    Barrier,
    Idempotent {
        key: String,
        issued_at_ms: u64,
        window_ms: u64,
        command: Box<Command>,
    },
    Batch(Vec<Command>),
    LeaseGrant {
        ttl_ms: u64,
        max_leases: u64,
    },
    LeaseRevoke {
        id: u64,
    },
    LeaseExpire {
        ids: Vec<u64>,
    },
    PutLeased {
        key: String,
        value: Vec<u8>,
        precondition: Precondition,
        lease: LeaseAttach,
    },
    Auth(crate::auth::AuthCommand),
}

/// The limits a client command must keep, checked by [`Command::validate`] wherever a
/// command enters a node: an HTTP request, a write forwarded by another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Compares and ops of both branches together.
    pub max_txn_ops: usize,
    pub max_idempotency_key_bytes: usize,
}

/// Why [`Command::validate`] refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCommand {
    /// A key or value over its limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// A shape no client command has, or a transaction of too many operations (400, as the
    /// API answers a txn over `max_txn_ops`).
    #[error("{0}")]
    Invalid(String),
}

impl Command {
    /// Check a client command against `limits` before it is proposed: a `Put`, `Delete`, `Txn`
    /// or `Barrier`, optionally inside one `Idempotent`. `Batch` is the leader's own grouping
    /// and never comes from a client. Apply stays total for any command (it answers
    /// `CommandResult::Refused` to shapes it cannot run); this keeps the log free of them.
    pub fn validate(&self, limits: &CommandLimits) -> Result<(), InvalidCommand> {
        let key = |key: &str, what: &str| {
            if key.len() > limits.max_key_bytes {
                return Err(InvalidCommand::TooLarge(format!(
                    "{what} of {} bytes exceeds max_key_bytes={}",
                    key.len(),
                    limits.max_key_bytes
                )));
            }
            Ok(())
        };
        let value = |value: &[u8]| {
            if value.len() > limits.max_value_bytes {
                return Err(InvalidCommand::TooLarge(format!(
                    "value of {} bytes exceeds max_value_bytes={}",
                    value.len(),
                    limits.max_value_bytes
                )));
            }
            Ok(())
        };
        match self {
            Command::Put {
                key: k, value: v, ..
            }
            | Command::PutLeased {
                key: k, value: v, ..
            } => {
                key(k, "key")?;
                value(v)
            }
            Command::LeaseGrant { ttl_ms, .. } => {
                if !(1..=MAX_LEASE_TTL_MS).contains(ttl_ms) {
                    return Err(InvalidCommand::Invalid(format!(
                        "a lease TTL of {ttl_ms} ms is not between 1 and {MAX_LEASE_TTL_MS}"
                    )));
                }
                Ok(())
            }
            Command::LeaseRevoke { .. } => Ok(()),
            Command::LeaseExpire { .. } => Err(InvalidCommand::Invalid(
                "leases are expired by the leader only".into(),
            )),
            Command::Delete { key: k, .. } => key(k, "key"),
            Command::Txn(txn) => {
                let ops = txn.compare.len() + txn.success.len() + txn.failure.len();
                if ops > limits.max_txn_ops {
                    return Err(InvalidCommand::Invalid(format!(
                        "a transaction of {ops} compares and ops exceeds max_txn_ops={}",
                        limits.max_txn_ops
                    )));
                }
                for compare in &txn.compare {
                    key(&compare.key, "key")?;
                    if let CompareTarget::Value(v) = &compare.target {
                        value(v)?;
                    }
                }
                for op in txn.success.iter().chain(&txn.failure) {
                    match op {
                        TxnOp::Put { key: k, value: v }
                        | TxnOp::PutLeased {
                            key: k, value: v, ..
                        } => {
                            key(k, "key")?;
                            value(v)?;
                        }
                        TxnOp::Delete { key: k } | TxnOp::Get { key: k } => key(k, "key")?,
                    }
                }
                Ok(())
            }
            Command::Barrier => Ok(()),
            Command::Idempotent {
                key: k, command, ..
            } => {
                if k.len() > limits.max_idempotency_key_bytes {
                    return Err(InvalidCommand::TooLarge(format!(
                        "Idempotency-Key of {} bytes exceeds max_idempotency_key_bytes={}",
                        k.len(),
                        limits.max_idempotency_key_bytes
                    )));
                }
                match **command {
                    Command::Idempotent { .. }
                    | Command::Batch(_)
                    | Command::Barrier
                    | Command::LeaseExpire { .. } => Err(InvalidCommand::Invalid(
                        "an idempotent command holds a put, a delete, a transaction or a lease grant or revoke"
                            .into(),
                    )),
                    ref inner => inner.validate(limits),
                }
            }
            Command::Batch(_) => Err(InvalidCommand::Invalid(
                "a client command cannot be a batch".into(),
            )),
            Command::Auth(auth) => auth
                .validate(limits.max_key_bytes)
                .map_err(InvalidCommand::Invalid),
        }
    }

    /// The most bytes this command's answer can take encoded, if every key it gets holds a
    /// value of `max_value_bytes`. Batches are bounded with it too, so that the answers of one
    /// entry (kept in memory by every node's apply) and of one forwarded frame stay under
    /// [`MAX_ANSWER_BYTES_PER_BATCH`].
    pub fn max_answer_bytes(&self, max_value_bytes: usize) -> usize {
        const PART_BYTES: usize = 32;
        match self {
            Command::Put { .. }
            | Command::Delete { .. }
            | Command::Barrier
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseExpire { .. }
            | Command::PutLeased { .. }
            | Command::Auth(_) => 2 * PART_BYTES + 2 * crate::auth::MAX_ROLE_NAME_BYTES,
            Command::Txn(txn) => {
                let ops = txn.success.len().max(txn.failure.len());
                let gets: usize = txn
                    .success
                    .iter()
                    .chain(&txn.failure)
                    .map(|op| match op {
                        TxnOp::Get { key } => PART_BYTES + key.len() + max_value_bytes,
                        _ => 0,
                    })
                    .sum();
                2 * PART_BYTES
                    + ops * PART_BYTES
                    + gets.min(MAX_TXN_RESPONSE_BYTES as usize + ops * PART_BYTES)
            }
            Command::Idempotent { command, .. } => command.max_answer_bytes(max_value_bytes),
            Command::Batch(commands) => {
                PART_BYTES
                    + commands
                        .iter()
                        .map(|c| c.max_answer_bytes(max_value_bytes))
                        .sum::<usize>()
            }
        }
    }

    /// What this command reads or writes, tagged by namespace (`d` data key, `i` idempotency
    /// key): two commands with disjoint sets commute and may share one log entry.
    pub fn conflict_keys(&self) -> Vec<(u8, &str)> {
        let mut keys = Vec::new();
        self.collect_conflict_keys(&mut keys);
        keys
    }

    fn collect_conflict_keys<'a>(&'a self, keys: &mut Vec<(u8, &'a str)>) {
        match self {
            Command::Put { key, .. }
            | Command::Delete { key, .. }
            | Command::PutLeased { key, .. } => keys.push((b'd', key)),
            // Grants read and write only the lease count, in order within their entry; revokes
            // and expiries go alone (`goes_alone`).
            Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseExpire { .. } => {}
            Command::Txn(txn) => {
                keys.extend(txn.compare.iter().map(|c| (b'd', c.key.as_str())));
                for op in txn.success.iter().chain(&txn.failure) {
                    let key = match op {
                        TxnOp::Put { key, .. }
                        | TxnOp::PutLeased { key, .. }
                        | TxnOp::Delete { key }
                        | TxnOp::Get { key } => key,
                    };
                    keys.push((b'd', key));
                }
            }
            // Goes alone (`goes_alone`).
            Command::Barrier | Command::Auth(_) => {}
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
            // Two more varints of up to 10 bytes: the lease and its key limit.
            Command::PutLeased { key, value, .. } => PART_BYTES + 20 + key.len() + value.len(),
            Command::Delete { key, .. } => PART_BYTES + key.len(),
            Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => PART_BYTES,
            // A varint of up to 10 bytes per id.
            Command::LeaseExpire { ids } => PART_BYTES + 10 * ids.len(),
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
                        TxnOp::PutLeased { key, value, .. } => {
                            PART_BYTES + 20 + key.len() + value.len()
                        }
                        TxnOp::Delete { key } | TxnOp::Get { key } => PART_BYTES + key.len(),
                    })
                    .sum();
                PART_BYTES + compares + ops
            }
            Command::Barrier => PART_BYTES,
            Command::Auth(auth) => PART_BYTES + auth.approx_bytes(),
            Command::Idempotent { key, command, .. } => {
                PART_BYTES + key.len() + command.approx_bytes()
            }
            Command::Batch(commands) => {
                PART_BYTES + commands.iter().map(Command::approx_bytes).sum::<usize>()
            }
        }
    }
}

impl Command {
    /// Whether this command must be the only one in its log entry: a lease revoke or expiry
    /// deletes keys that no conflict key names, so it may not share an entry with writes that
    /// could touch them. Apply refuses one inside a batch (`ApplyRefusal::NotAlone`).
    pub fn goes_alone(&self) -> bool {
        match self {
            Command::LeaseRevoke { .. } | Command::LeaseExpire { .. } | Command::Auth(_) => true,
            Command::Idempotent { command, .. } => command.goes_alone(),
            _ => false,
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
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    Get {
        key: String,
    },
    /// A put that attaches the key to a lease. Last, so that existing logs keep decoding.
    PutLeased {
        key: String,
        value: Vec<u8>,
        lease: LeaseAttach,
    },
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
    /// The command was not applied and changed nothing: its shape is one the API never
    /// proposes (a batch inside a batch, an idempotent command inside another), or its answer
    /// would exceed what an answer may carry (`MAX_TXN_RESPONSE_BYTES`). Deciding this in
    /// apply, from the command and the state alone, keeps apply total: every node answers the
    /// same, and no command can make apply fail (storage/DESIGN.md, "No input may make apply
    /// fail").
    Refused(ApplyRefusal),
    /// A lease was granted (`Command::LeaseGrant`).
    LeaseGranted { id: u64, ttl_ms: u64 },
    /// A revoke or an expiry ended `leases` leases and deleted `keys_deleted` keys with them.
    LeasesEnded { leases: u64, keys_deleted: u64 },
}

/// Why a command was refused by apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyRefusal {
    /// A `Batch` inside a `Batch`, or an `Idempotent` inside an `Idempotent`.
    NestedCommand,
    /// The transaction's gets would answer more than `max_bytes` bytes of keys and values
    /// (`at_least_bytes` counted when the limit was passed).
    ResponseTooLarge { at_least_bytes: u64, max_bytes: u64 },
    /// The `Idempotency-Key` answered another request (another method, key or body) within
    /// its window.
    IdempotencyKeyReused,
    /// The lease does not exist (never granted, revoked or expired).
    LeaseNotFound { id: u64 },
    /// `max` leases live already.
    TooManyLeases { max: u64 },
    /// The lease holds `max` keys already.
    TooManyKeysOnLease { id: u64, max: u64 },
    /// A lease revoke or expiry inside a batch, or more than `MAX_GRANTS_PER_ENTRY` grants in
    /// one entry (the proposer never forms either).
    NotAlone,
    /// A token for a role, or a role removal, that names no role.
    RoleNotFound { name: String },
    /// A token revoke that names no token.
    TokenNotFound { id: String },
    /// `max` roles exist already.
    TooManyRoles { max: u64 },
    /// `max` live tokens exist already.
    TooManyTokens { max: u64 },
    /// A token of this id or secret exists already (ids and secrets are drawn at random: a
    /// retry with new ones succeeds).
    TokenExists { id: String },
}

impl fmt::Display for ApplyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyRefusal::NestedCommand => write!(f, "a batch or idempotent command nested in another"),
            ApplyRefusal::IdempotencyKeyReused => write!(
                f,
                "this Idempotency-Key was used for a different request (method, key or body) within its window; nothing was applied (use a new key for a new request)"
            ),
            ApplyRefusal::LeaseNotFound { id } => {
                write!(f, "lease {id} does not exist (never granted, revoked or expired)")
            }
            ApplyRefusal::TooManyLeases { max } => write!(
                f,
                "{max} leases are live, the most max_leases allows; nothing was applied (revoke leases or raise --max-leases)"
            ),
            ApplyRefusal::TooManyKeysOnLease { id, max } => write!(
                f,
                "lease {id} holds {max} keys, the most max_keys_per_lease allows; nothing was applied (use another lease)"
            ),
            ApplyRefusal::NotAlone => write!(
                f,
                "a lease revoke or expiry must be alone in its entry, and an entry grants at most {MAX_GRANTS_PER_ENTRY} leases"
            ),
            ApplyRefusal::ResponseTooLarge {
                at_least_bytes,
                max_bytes,
            } => write!(
                f,
                "the transaction's gets would answer at least {at_least_bytes} bytes, more than the {max_bytes} bytes an answer may carry; nothing was applied (split the gets over several transactions or reads)"
            ),
            ApplyRefusal::RoleNotFound { name } => write!(f, "role {name:?} does not exist"),
            ApplyRefusal::TokenNotFound { id } => {
                write!(f, "token {id:?} does not exist (never created, revoked or expired)")
            }
            ApplyRefusal::TooManyRoles { max } => write!(
                f,
                "{max} roles exist, the most a cluster holds; nothing was applied (delete roles first)"
            ),
            ApplyRefusal::TooManyTokens { max } => write!(
                f,
                "{max} live tokens exist, the most a cluster holds; nothing was applied (revoke tokens first)"
            ),
            ApplyRefusal::TokenExists { id } => write!(
                f,
                "a token with id {id:?} or the same secret exists already; nothing was applied (retry: a new one is drawn)"
            ),
        }
    }
}

/// Most bytes of keys and values one transaction's gets may answer. A constant, not a setting:
/// apply decides with it, and every node must decide the same. It bounds what one apply keeps in
/// memory, what an idempotency record stores (and so every record of a snapshot or backup
/// stream, whose frames hold at most `stream::MAX_FRAME_BYTES`), and a forwarded answer.
pub const MAX_TXN_RESPONSE_BYTES: u64 = 8 * 1024 * 1024;

/// Most bytes of answers (`Command::max_answer_bytes`) one batch of commands may produce: one
/// log entry, or one forwarded frame (whose answers come back in one frame); a single command
/// that could answer more goes alone. Twice the largest transaction answer.
pub const MAX_ANSWER_BYTES_PER_BATCH: usize = 2 * MAX_TXN_RESPONSE_BYTES as usize;

/// Terms and log indexes at or past this are refused wherever they come from outside the log
/// (a restored backup, an installed snapshot's header): no cluster gets there (2^62 entries at
/// a million a second take 146,000 years), and openraft adds to both.
pub const MAX_LOG_POSITION: u64 = 1 << 62;

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
mod tests;
