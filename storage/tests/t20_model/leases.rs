//! The lease part of t20's model: leases granted, keys attached and detached, leases revoked
//! and expired with their keys, checked against the store's reader after every op.

use std::collections::{BTreeMap, BTreeSet};

use mirrorkv_storage::{
    lease_id, ApplyRefusal, Command, CommandResult, CompareTarget, KvReader, LeaseAttach,
    LeaseInfo, Precondition, Txn, TxnOp, TxnOpResult,
};

use super::{key_name, Op};

/// Few live leases and keys per lease, so that both limits are met often.
pub const MAX_LEASES: u64 = 4;
pub const MAX_KEYS_PER_LEASE: u64 = 3;

#[derive(Debug, Default, Clone)]
pub struct LeaseModel {
    /// Live leases: TTL and attached keys.
    pub leases: BTreeMap<u64, (u64, BTreeSet<String>)>,
    /// The lease of every leased key.
    pub key_lease: BTreeMap<String, u64>,
    /// Every id ever granted (ended ones must read as absent).
    pub granted: BTreeSet<u64>,
}

impl LeaseModel {
    /// A lease id for `slot`: one of the live leases, or (for slots past them) an ended or
    /// never-granted one.
    pub fn id_for(&self, slot: u8) -> u64 {
        let live: Vec<u64> = self.leases.keys().copied().collect();
        let slot = slot as usize;
        if slot < live.len() {
            return live[slot];
        }
        self.granted
            .iter()
            .find(|id| !self.leases.contains_key(id))
            .copied()
            .unwrap_or(lease_id(1_000_000, 7))
    }

    pub fn attach(id: u64) -> LeaseAttach {
        LeaseAttach {
            id,
            max_keys: MAX_KEYS_PER_LEASE,
        }
    }

    /// The grant of the `nth` lease of the entry at `index`.
    pub fn grant(&mut self, index: u64, nth: u64, ttl_ms: u64, max_leases: u64) -> CommandResult {
        if self.leases.len() as u64 >= max_leases {
            return CommandResult::Refused(ApplyRefusal::TooManyLeases { max: max_leases });
        }
        let id = lease_id(index, nth);
        self.leases.insert(id, (ttl_ms, BTreeSet::new()));
        self.granted.insert(id);
        CommandResult::LeaseGranted { id, ttl_ms }
    }

    /// Why `key` may not be attached to `attach.id`, if it may not.
    pub fn refusal(&self, key: &str, attach: LeaseAttach) -> Option<ApplyRefusal> {
        let Some((_, keys)) = self.leases.get(&attach.id) else {
            return Some(ApplyRefusal::LeaseNotFound { id: attach.id });
        };
        if !keys.contains(key) && keys.len() as u64 >= attach.max_keys {
            return Some(ApplyRefusal::TooManyKeysOnLease {
                id: attach.id,
                max: attach.max_keys,
            });
        }
        None
    }

    /// `key` is now attached to `lease` (0: none).
    pub fn set_lease(&mut self, key: &str, lease: u64) {
        if let Some(old) = self.key_lease.remove(key) {
            if let Some((_, keys)) = self.leases.get_mut(&old) {
                keys.remove(key);
            }
        }
        if lease != 0 {
            self.key_lease.insert(key.to_string(), lease);
            self.leases
                .get_mut(&lease)
                .expect("attached to a live lease")
                .1
                .insert(key.to_string());
        }
    }

    /// End lease `id`: its keys, to delete, or `None` if it does not live.
    pub fn end(&mut self, id: u64) -> Option<BTreeSet<String>> {
        let (_, keys) = self.leases.remove(&id)?;
        for key in &keys {
            self.key_lease.remove(key);
        }
        Some(keys)
    }

    /// The reader holds exactly these leases, with their TTLs and keys.
    pub fn check(&self, reader: &KvReader) {
        for id in &self.granted {
            let read = reader.lease(*id, 1000).unwrap().value;
            match self.leases.get(id) {
                Some((ttl_ms, keys)) => {
                    let info = read.expect("a live lease reads back");
                    assert_eq!(
                        info,
                        LeaseInfo {
                            id: *id,
                            ttl_ms: *ttl_ms,
                            key_count: keys.len() as u64,
                            keys: keys.iter().cloned().collect(),
                        },
                        "lease {id}"
                    );
                }
                None => assert_eq!(read, None, "ended lease {id} is gone"),
            }
        }
    }
}

impl super::Harness {
    /// A transaction as the model runs it: its result, or why it was refused (nothing changed).
    pub(crate) fn model_txn(
        &mut self,
        index: u64,
        txn: &Txn,
    ) -> Result<CommandResult, ApplyRefusal> {
        let succeeded = txn.compare.iter().all(|c| {
            let current = self.model.get(&c.key);
            match &c.target {
                CompareTarget::ModIndex(m) => current.map_or(0, |r| r.mod_index) == *m,
                CompareTarget::Value(v) => current.is_some_and(|r| &r.value == v),
                CompareTarget::Exists(e) => current.is_some() == *e,
            }
        });
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        // A refused transaction changes nothing: run it on copies.
        let (model, leases) = (self.model.clone(), self.leases.clone());
        let mut results = Vec::new();
        for op in ops {
            results.push(match op {
                TxnOp::Put { key, value } => TxnOpResult::Put {
                    prev_mod_index: self.model_put(index, key, value),
                },
                TxnOp::PutLeased { key, value, lease } => {
                    if let Some(refusal) = self.leases.refusal(key, *lease) {
                        (self.model, self.leases) = (model, leases);
                        return Err(refusal);
                    }
                    TxnOpResult::Put {
                        prev_mod_index: self.model_put_leased(index, key, value, lease.id),
                    }
                }
                TxnOp::Delete { key } => TxnOpResult::Delete {
                    deleted: self.model_delete(key),
                },
                TxnOp::Get { key } => TxnOpResult::Get {
                    key: key.clone(),
                    record: self.model.get(key).cloned(),
                },
            });
        }
        Ok(CommandResult::Txn { succeeded, results })
    }

    /// A lease grant, revoke or expiry as the model runs it.
    pub(crate) fn model_lease(&mut self, index: u64, command: &Command) -> CommandResult {
        match command {
            Command::LeaseGrant { ttl_ms, max_leases } => {
                let result = self
                    .leases
                    .grant(index, self.entry_grants, *ttl_ms, *max_leases);
                if matches!(result, CommandResult::LeaseGranted { .. }) {
                    self.entry_grants += 1;
                }
                result
            }
            Command::LeaseRevoke { id } => match self.model_end_lease(*id) {
                None => CommandResult::Refused(ApplyRefusal::LeaseNotFound { id: *id }),
                Some(keys_deleted) => CommandResult::LeasesEnded {
                    leases: 1,
                    keys_deleted,
                },
            },
            Command::LeaseExpire { ids } => {
                let (mut leases, mut keys_deleted) = (0, 0);
                for id in ids {
                    if let Some(keys) = self.model_end_lease(*id) {
                        leases += 1;
                        keys_deleted += keys;
                    }
                }
                CommandResult::LeasesEnded {
                    leases,
                    keys_deleted,
                }
            }
            _ => unreachable!("only lease commands"),
        }
    }

    /// The command of a lease op.
    pub(crate) fn lease_command(&self, op: Op) -> Command {
        match op {
            Op::Grant { ttl_s } => Command::LeaseGrant {
                ttl_ms: u64::from(ttl_s) * 1000,
                max_leases: MAX_LEASES,
            },
            Op::PutLeased { key, slot, value } => Command::PutLeased {
                key: key_name(key),
                value,
                precondition: Precondition::None,
                lease: LeaseModel::attach(self.leases.id_for(slot)),
            },
            Op::TxnLeased { key, slot } => Command::Txn(Txn {
                compare: Vec::new(),
                success: vec![
                    TxnOp::Delete { key: key_name(11) },
                    TxnOp::PutLeased {
                        key: key_name(key),
                        value: vec![key],
                        lease: LeaseModel::attach(self.leases.id_for(slot)),
                    },
                ],
                failure: Vec::new(),
            }),
            Op::Revoke { slot } => Command::LeaseRevoke {
                id: self.leases.id_for(slot),
            },
            Op::Expire { slots } => Command::LeaseExpire {
                ids: slots
                    .into_iter()
                    .map(|slot| self.leases.id_for(slot))
                    .collect(),
            },
            Op::GrantsInBatch { keys, slot } => {
                let grant = Command::LeaseGrant {
                    ttl_ms: 2000,
                    max_leases: MAX_LEASES,
                };
                let lease = LeaseModel::attach(self.leases.id_for(slot));
                let mut commands = vec![grant.clone()];
                commands.extend(keys.into_iter().map(|key| Command::PutLeased {
                    key: key_name(key),
                    value: vec![key],
                    precondition: Precondition::None,
                    lease,
                }));
                commands.push(grant);
                Command::Batch(commands)
            }
            _ => unreachable!("only lease ops"),
        }
    }
}
