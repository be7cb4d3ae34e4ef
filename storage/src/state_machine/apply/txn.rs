//! Conditions: a single write's precondition, and a transaction's compares and branch.

use super::Overlay;
use crate::error::Result;
use crate::types::{
    ApplyRefusal, CommandResult, CompareTarget, Precondition, Txn, TxnOp, TxnOpResult,
    MAX_TXN_RESPONSE_BYTES,
};

/// `Some(PreconditionFailed)` if `precondition` does not hold for `key`.
pub(super) fn check(
    overlay: &mut Overlay<'_, '_>,
    key: &str,
    precondition: Precondition,
) -> Result<Option<CommandResult>> {
    let current = overlay.meta(key)?.map(|m| m.mod_index);
    let holds = match precondition {
        Precondition::None => true,
        Precondition::ModIndex(m) => current == Some(m),
        Precondition::Absent => current.is_none(),
        Precondition::Exists => current.is_some(),
    };
    Ok((!holds).then_some(CommandResult::PreconditionFailed { mod_index: current }))
}

pub(super) fn run_txn(
    overlay: &mut Overlay<'_, '_>,
    index: u64,
    txn: Txn,
) -> Result<CommandResult> {
    let mut succeeded = true;
    for compare in &txn.compare {
        let holds = match &compare.target {
            CompareTarget::ModIndex(m) => {
                overlay.meta(&compare.key)?.map_or(0, |c| c.mod_index) == *m
            }
            CompareTarget::Value(v) => overlay.record(&compare.key)?.is_some_and(|r| &r.value == v),
            CompareTarget::Exists(exists) => overlay.meta(&compare.key)?.is_some() == *exists,
        };
        if !holds {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { txn.success } else { txn.failure };
    let mut results = Vec::with_capacity(ops.len());
    let mut answer_bytes = 0u64;
    for op in ops {
        if let TxnOp::Get { key } = &op {
            let value_bytes = overlay.record(key)?.map_or(0, |r| r.value.len());
            answer_bytes += (key.len() + value_bytes) as u64;
            if answer_bytes > MAX_TXN_RESPONSE_BYTES {
                return Ok(CommandResult::Refused(ApplyRefusal::ResponseTooLarge {
                    at_least_bytes: answer_bytes,
                    max_bytes: MAX_TXN_RESPONSE_BYTES,
                }));
            }
        }
        results.push(match op {
            TxnOp::Put { key, value } => TxnOpResult::Put {
                prev_mod_index: overlay.put(index, &key, value, 0)?,
            },
            TxnOp::PutLeased { key, value, lease } => {
                if let Some(refusal) = overlay.attach_refusal(&key, lease)? {
                    // Nothing of a refused transaction is staged.
                    return Ok(CommandResult::Refused(refusal));
                }
                TxnOpResult::Put {
                    prev_mod_index: overlay.put(index, &key, value, lease.id)?,
                }
            }
            TxnOp::Delete { key } => TxnOpResult::Delete {
                deleted: overlay.delete(&key)?,
            },
            TxnOp::Get { key } => {
                let record = overlay.record(&key)?.cloned();
                TxnOpResult::Get { key, record }
            }
        });
    }
    Ok(CommandResult::Txn { succeeded, results })
}
