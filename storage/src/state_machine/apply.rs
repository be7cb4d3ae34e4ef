//! Applying entries: one `WriteBatch` per entry with its data changes and the new applied log
//! id; transactions, batches and idempotent commands; leases and the keys attached to them;
//! pruning expired idempotency records.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use openraft::EntryPayload;
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, DB};

use super::StateMachine;
use crate::changes::{self, Change, ChangeKind, StoredChange};
use crate::codec;
use crate::db::{self, get_record, CF_SM, KEY_APPLIED, KEY_MEMBERSHIP};
use crate::error::{Result, StorageError};
use crate::key_index::{KeyIndex, KeyMeta};
use crate::leases::{LeaseEvent, LeaseRecord};
use crate::records::{decode_idempotency_record, IdempotencyRecord};
use crate::types::{
    lease_id, ApplyRefusal, Command, CommandResult, Entry, KeyRecord, LeaseAttach, Response,
    StoredMembership, MAX_GRANTS_PER_ENTRY,
};

/// Most expired idempotency records removed per applied idempotent command: bounds the work of
/// one apply while keeping the table's size bounded by the writes of one window.
const MAX_EXPIRED_PRUNED_PER_APPLY: usize = 64;

mod txn;
use txn::{check, run_txn};

/// What one entry's commands read of the state before the entry: a key's indexes from the
/// [`KeyIndex`] when it holds them, otherwise its record from RocksDB, looked up once; a
/// batch's keys missing from the index are looked up together, in one MultiGet, before its
/// commands run. Only state from before the entry is kept here: a batch's commands have
/// disjoint keys (`Command::Batch`), so no command reads a key that another command of the
/// entry changed.
struct Reads<'a> {
    db: &'a DB,
    index: &'a KeyIndex,
    /// Records with their lease ids (0: none).
    records: HashMap<String, Option<(KeyRecord, u64)>>,
    /// The index changes the entry's writes make, in order; applied to the index only once the
    /// entry's write batch is in RocksDB.
    index_updates: Vec<(String, Option<KeyMeta>)>,
    /// Idempotency keys this entry wrote records for, and the oldest issue time still inside
    /// a window among its commands: expired records are pruned once per entry, after its
    /// commands, and never one this entry wrote.
    idempotency_written: HashSet<String>,
    idempotency_expired_before_ms: Option<u64>,
    /// The entry's changes, for the change listener (`None`: no listener, nothing kept).
    changes: Option<Vec<Change>>,
    /// Lease records as the entry's commands left them so far (`None`: ended): unlike data
    /// keys, commands of one entry share leases (a grant counts, puts attach keys), and each
    /// sees what the commands before it did.
    leases: HashMap<u64, Option<LeaseRecord>>,
    /// Live leases before the entry, and what its commands added (grants) and took away.
    lease_count: u64,
    lease_count_delta: i64,
    /// Keys the entry's commands attached to leases, less those they detached.
    lease_keys_delta: i64,
    /// Leases granted by the entry so far (the low byte of the next grant's id).
    grants: u64,
    /// Leases granted and ended, for the lease listener once the entry is written.
    lease_events: Vec<LeaseEvent>,
    /// Role and token writes, for the auth table once the entry is written.
    auth_writes: Vec<crate::auth::AuthWrite>,
}

impl<'a> Reads<'a> {
    fn new(db: &'a DB, index: &'a KeyIndex, keep_changes: bool, lease_count: u64) -> Self {
        Self {
            db,
            index,
            records: HashMap::new(),
            index_updates: Vec::new(),
            idempotency_written: HashSet::new(),
            idempotency_expired_before_ms: None,
            changes: keep_changes.then(Vec::new),
            leases: HashMap::new(),
            lease_count,
            lease_count_delta: 0,
            lease_keys_delta: 0,
            grants: 0,
            lease_events: Vec::new(),
            auth_writes: Vec::new(),
        }
    }

    /// Lease `id` as the entry's commands so far left it.
    fn lease(&mut self, id: u64) -> Result<Option<LeaseRecord>> {
        if let Some(lease) = self.leases.get(&id) {
            return Ok(*lease);
        }
        let lease = match self
            .db
            .get_pinned_cf(db::cf(self.db, CF_SM), db::lease_key(id))?
        {
            Some(bytes) => Some(codec::decode(&bytes)?),
            None => None,
        };
        self.leases.insert(id, lease);
        Ok(lease)
    }

    /// The key's indexes as applied before this entry: from the index if it holds the key,
    /// otherwise from the key's record.
    fn meta(&mut self, key: &str) -> Result<Option<KeyMeta>> {
        if !self.records.contains_key(key) {
            if let Some(meta) = self.index.get(key) {
                return Ok(Some(meta));
            }
        }
        Ok(self.record(key)?.map(|(record, lease)| record.meta(*lease)))
    }

    /// The key's record and lease as applied before this entry; read from RocksDB the first
    /// time only.
    fn record(&mut self, key: &str) -> Result<Option<&(KeyRecord, u64)>> {
        if !self.records.contains_key(key) {
            let record = get_record(self.db, key)?;
            self.records.insert(key.to_string(), record);
        }
        Ok(self.records.get(key).and_then(Option::as_ref))
    }

    /// Look up the data keys `commands` touch that the index does not hold, in one sorted
    /// MultiGet.
    fn prefetch(&mut self, commands: &[Command]) -> Result<()> {
        let mut keys: Vec<&str> = commands
            .iter()
            .flat_map(Command::conflict_keys)
            .filter(|(namespace, _)| *namespace == b'd')
            .map(|(_, key)| key)
            .filter(|key| !self.records.contains_key(*key) && self.index.get(key).is_none())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let data_keys: Vec<Vec<u8>> = keys.iter().map(|key| db::data_key(key)).collect();
        let found = self
            .db
            .batched_multi_get_cf(db::cf(self.db, CF_SM), &data_keys, true);
        for (key, found) in keys.into_iter().zip(found) {
            let record = match found? {
                Some(bytes) => Some(db::decode_record(&bytes)?),
                None => None,
            };
            self.records.insert(key.to_string(), record);
        }
        Ok(())
    }
}

/// The writes of one command being applied: reads see them before they reach RocksDB, so the
/// ops of a transaction see each other, and they are committed as one batch.
struct Overlay<'r, 'a> {
    reads: &'r mut Reads<'a>,
    changes: BTreeMap<String, Staged>,
    /// Leases this command changed (`None`: ended).
    leases: BTreeMap<u64, Option<LeaseRecord>>,
    /// Keys this command attached to a lease (true) or detached from one (false).
    lease_members: BTreeMap<(u64, String), bool>,
    lease_count_delta: i64,
    lease_keys_delta: i64,
    lease_events: Vec<LeaseEvent>,
}

/// One key this command changed: its `mod_index` before the command (taken when the command
/// first touched it) and what it is now with its lease (`None`: deleted).
struct Staged {
    before: Option<u64>,
    after: Option<(KeyRecord, u64)>,
}

impl<'r, 'a> Overlay<'r, 'a> {
    fn new(reads: &'r mut Reads<'a>) -> Self {
        Self {
            reads,
            changes: BTreeMap::new(),
            leases: BTreeMap::new(),
            lease_members: BTreeMap::new(),
            lease_count_delta: 0,
            lease_keys_delta: 0,
            lease_events: Vec::new(),
        }
    }

    /// The key's record as this command sees it (its own changes first). Borrowed: only a
    /// txn's value compare and get need it; everything else needs only [`Self::meta`].
    fn record(&mut self, key: &str) -> Result<Option<&KeyRecord>> {
        let stored = match self.changes.get(key) {
            Some(staged) => staged.after.as_ref(),
            None => self.reads.record(key)?,
        };
        Ok(stored.map(|(record, _)| record))
    }

    /// The key's indexes as this command sees them (its own changes first).
    fn meta(&mut self, key: &str) -> Result<Option<KeyMeta>> {
        match self.changes.get(key) {
            Some(staged) => Ok(staged
                .after
                .as_ref()
                .map(|(record, lease)| record.meta(*lease))),
            None => self.reads.meta(key),
        }
    }

    /// Lease `id` as this command sees it (its own changes first).
    fn lease(&mut self, id: u64) -> Result<Option<LeaseRecord>> {
        match self.leases.get(&id) {
            Some(lease) => Ok(*lease),
            None => self.reads.lease(id),
        }
    }

    /// Live leases as this command sees them.
    fn lease_count(&self) -> u64 {
        let delta = self.reads.lease_count_delta + self.lease_count_delta;
        self.reads.lease_count.saturating_add_signed(delta)
    }

    /// Why `key` may not be attached to `attach.id` now, if it may not.
    fn attach_refusal(&mut self, key: &str, attach: LeaseAttach) -> Result<Option<ApplyRefusal>> {
        let Some(lease) = self.lease(attach.id)? else {
            return Ok(Some(ApplyRefusal::LeaseNotFound { id: attach.id }));
        };
        let attached_already = self.meta(key)?.is_some_and(|m| m.lease == attach.id);
        if !attached_already && lease.keys >= attach.max_keys {
            return Ok(Some(ApplyRefusal::TooManyKeysOnLease {
                id: attach.id,
                max: attach.max_keys,
            }));
        }
        Ok(None)
    }

    /// Put `key` at `index`, attached to `lease` (0: none; the caller checked that it may be).
    fn put(&mut self, index: u64, key: &str, value: Vec<u8>, lease: u64) -> Result<Option<u64>> {
        let current = self.meta(key)?;
        let record = KeyRecord {
            value,
            mod_index: index,
            create_index: current.map_or(index, |c| c.create_index),
        };
        self.move_to_lease(key, current.map_or(0, |c| c.lease), lease)?;
        self.set(key, current, Some((record, lease)));
        Ok(current.map(|c| c.mod_index))
    }

    fn delete(&mut self, key: &str) -> Result<bool> {
        let current = self.meta(key)?;
        if let Some(current) = current {
            self.move_to_lease(key, current.lease, 0)?;
        }
        self.set(key, current, None);
        Ok(current.is_some())
    }

    /// Detach `key` from lease `from` and attach it to lease `to` (0: none).
    fn move_to_lease(&mut self, key: &str, from: u64, to: u64) -> Result<()> {
        if from == to {
            return Ok(());
        }
        for (id, attach) in [(from, false), (to, true)] {
            if id == 0 {
                continue;
            }
            // A key's lease always exists (ending a lease deletes its keys); a missing one is
            // only forgotten.
            if let Some(mut lease) = self.lease(id)? {
                lease.keys = if attach {
                    lease.keys + 1
                } else {
                    lease.keys.saturating_sub(1)
                };
                self.leases.insert(id, Some(lease));
                self.lease_keys_delta += if attach { 1 } else { -1 };
            }
            self.lease_members.insert((id, key.to_string()), attach);
        }
        Ok(())
    }

    /// Grant a lease of `ttl_ms` at `index`, unless `max_leases` live already.
    fn grant(&mut self, index: u64, ttl_ms: u64, max_leases: u64) -> Result<CommandResult> {
        let nth = self.reads.grants;
        if nth >= MAX_GRANTS_PER_ENTRY {
            return Ok(CommandResult::Refused(ApplyRefusal::NotAlone));
        }
        if self.lease_count() >= max_leases {
            return Ok(CommandResult::Refused(ApplyRefusal::TooManyLeases {
                max: max_leases,
            }));
        }
        let id = lease_id(index, nth);
        self.reads.grants += 1;
        self.leases
            .insert(id, Some(LeaseRecord { ttl_ms, keys: 0 }));
        self.lease_count_delta += 1;
        self.lease_events.push(LeaseEvent::Granted { id, ttl_ms });
        Ok(CommandResult::LeaseGranted { id, ttl_ms })
    }

    /// End lease `id` with every key attached to it; the keys deleted, or `None` if the lease
    /// does not exist. Reads the lease's keys from RocksDB: the command is alone in its entry
    /// (`Command::goes_alone`), so they are exactly the lease's keys now.
    fn end_lease(&mut self, id: u64) -> Result<Option<u64>> {
        if self.lease(id)?.is_none() {
            return Ok(None);
        }
        let prefix = db::lease_member_key(id, "");
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(db::lease_members_end(id));
        let iter = self.reads.db.iterator_cf_opt(
            db::cf(self.reads.db, CF_SM),
            read_options,
            IteratorMode::From(&prefix, Direction::Forward),
        );
        let mut keys = Vec::new();
        for item in iter {
            let (member, _) = item?;
            let key = std::str::from_utf8(&member[prefix.len()..])
                .map_err(|_| StorageError::Invariant("a lease's key that is not UTF-8".into()))?;
            keys.push(key.to_string());
        }
        for key in &keys {
            self.delete(key)?;
        }
        self.leases.insert(id, None);
        self.lease_count_delta -= 1;
        self.lease_events.push(LeaseEvent::Ended { id });
        Ok(Some(keys.len() as u64))
    }

    /// Run a lease grant, revoke or expiry at `index`.
    fn execute_lease(&mut self, index: u64, command: Command) -> Result<CommandResult> {
        Ok(match command {
            Command::LeaseGrant { ttl_ms, max_leases } => self.grant(index, ttl_ms, max_leases)?,
            Command::LeaseRevoke { id } => match self.end_lease(id)? {
                None => CommandResult::Refused(ApplyRefusal::LeaseNotFound { id }),
                Some(keys_deleted) => CommandResult::LeasesEnded {
                    leases: 1,
                    keys_deleted,
                },
            },
            Command::LeaseExpire { ids } => {
                let (mut leases, mut keys_deleted) = (0, 0);
                for id in ids {
                    if let Some(keys) = self.end_lease(id)? {
                        leases += 1;
                        keys_deleted += keys;
                    }
                }
                CommandResult::LeasesEnded {
                    leases,
                    keys_deleted,
                }
            }
            _ => unreachable!("only lease commands come here"),
        })
    }

    /// Record that `key`, which this command sees as `current`, is now `after`.
    fn set(&mut self, key: &str, current: Option<KeyMeta>, after: Option<(KeyRecord, u64)>) {
        match self.changes.get_mut(key) {
            Some(staged) => staged.after = after,
            // First touched now: what the command sees is the state before it.
            None => {
                let before = current.map(|c| c.mod_index);
                self.changes
                    .insert(key.to_string(), Staged { before, after });
            }
        }
    }

    /// Stage this command's writes at `index` into `batch`, each with its record in the change
    /// history (a delete of a key that did not exist changes nothing and records nothing).
    fn stage(self, index: u64, batch: &mut WriteBatch) -> Result<()> {
        let cf = db::cf(self.reads.db, CF_SM);
        for (id, lease) in self.leases {
            match &lease {
                Some(lease) => batch.put_cf(cf, db::lease_key(id), codec::encode(lease)?),
                None => batch.delete_cf(cf, db::lease_key(id)),
            }
            self.reads.leases.insert(id, lease);
        }
        for ((id, key), attached) in self.lease_members {
            match attached {
                true => batch.put_cf(cf, db::lease_member_key(id, &key), []),
                false => batch.delete_cf(cf, db::lease_member_key(id, &key)),
            }
        }
        self.reads.lease_count_delta += self.lease_count_delta;
        self.reads.lease_keys_delta += self.lease_keys_delta;
        self.reads.lease_events.extend(self.lease_events);
        for (key, Staged { before, after }) in self.changes {
            let prev_mod_index = before;
            let (meta, kind) = match after {
                Some((record, lease)) => {
                    batch.put_cf(cf, db::data_key(&key), db::encode_record(&record, lease)?);
                    let meta = record.meta(lease);
                    let kind = ChangeKind::Put {
                        mod_index: record.mod_index,
                        create_index: record.create_index,
                        value: record.value,
                    };
                    (Some(meta), Some(kind))
                }
                None => {
                    batch.delete_cf(cf, db::data_key(&key));
                    (None, prev_mod_index.map(|_| ChangeKind::Delete))
                }
            };
            if let Some(kind) = kind {
                let change = StoredChange {
                    kind,
                    prev_mod_index,
                };
                changes::stage(self.reads.db, batch, index, &key, &change)?;
                if let Some(kept) = &mut self.reads.changes {
                    kept.push(Change {
                        index,
                        key: key.clone(),
                        kind: change.kind,
                        prev_mod_index: change.prev_mod_index,
                    });
                }
            }
            self.reads.index_updates.push((key, meta));
        }
        Ok(())
    }
}

impl StateMachine {
    /// Execute one command at `index`, staging its writes into `batch`. The answer's index is
    /// where the command took effect: `index`, or the first attempt's for an idempotent retry.
    fn execute(
        &self,
        index: u64,
        command: Command,
        reads: &mut Reads<'_>,
        batch: &mut WriteBatch,
    ) -> Result<Response> {
        let refused = |refusal| Response {
            index,
            result: CommandResult::Refused(refusal),
        };
        if let Command::Idempotent {
            key,
            issued_at_ms,
            window_ms,
            command,
        } = command
        {
            if matches!(*command, Command::Idempotent { .. } | Command::Batch(_)) {
                return Ok(refused(ApplyRefusal::NestedCommand));
            }
            return self.execute_idempotent(
                index,
                &key,
                (issued_at_ms, window_ms),
                *command,
                reads,
                batch,
            );
        }
        if let Command::Batch(commands) = command {
            // Each command stages its writes into `batch` in turn; they do not see each other's
            // writes, which is why a batch only groups commands with disjoint conflict keys.
            reads.prefetch(&commands)?;
            let mut responses = Vec::with_capacity(commands.len());
            let alone = commands.len() == 1;
            for command in commands {
                responses.push(if matches!(command, Command::Batch(_)) {
                    refused(ApplyRefusal::NestedCommand)
                } else if command.goes_alone() && !alone {
                    refused(ApplyRefusal::NotAlone)
                } else {
                    self.execute(index, command, reads, batch)?
                });
            }
            return Ok(Response {
                index,
                result: CommandResult::Batch(responses),
            });
        }
        let mut overlay = Overlay::new(reads);
        let result = match command {
            Command::Put {
                key,
                value,
                precondition,
            } => match check(&mut overlay, &key, precondition)? {
                Some(failed) => failed,
                None => CommandResult::Put {
                    prev_mod_index: overlay.put(index, &key, value, 0)?,
                },
            },
            Command::PutLeased {
                key,
                value,
                precondition,
                lease,
            } => match check(&mut overlay, &key, precondition)? {
                Some(failed) => failed,
                None => match overlay.attach_refusal(&key, lease)? {
                    Some(refusal) => CommandResult::Refused(refusal),
                    None => CommandResult::Put {
                        prev_mod_index: overlay.put(index, &key, value, lease.id)?,
                    },
                },
            },
            Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseExpire { .. } => overlay.execute_lease(index, command)?,
            Command::Delete { key, precondition } => match check(&mut overlay, &key, precondition)?
            {
                Some(failed) => failed,
                None => CommandResult::Delete {
                    deleted: overlay.delete(&key)?,
                },
            },
            Command::Txn(txn) => match run_txn(&mut overlay, index, txn)? {
                // Nothing of a refused transaction is staged.
                refused @ CommandResult::Refused(_) => {
                    return Ok(Response {
                        index,
                        result: refused,
                    })
                }
                result => result,
            },
            Command::Barrier => CommandResult::Nothing,
            Command::Auth(auth) => {
                let writes = &mut overlay.reads.auth_writes;
                super::auth_apply::stage(&self.db, &self.auth, &auth, batch, writes)?
            }
            Command::Idempotent { .. } | Command::Batch(_) => {
                unreachable!("handled above")
            }
        };
        overlay.stage(index, batch)?;
        Ok(Response { index, result })
    }

    fn execute_idempotent(
        &self,
        index: u64,
        key: &str,
        (issued_at_ms, window_ms): (u64, u64),
        command: Command,
        reads: &mut Reads<'_>,
        batch: &mut WriteBatch,
    ) -> Result<Response> {
        let cf = db::cf(&self.db, CF_SM);
        let previous: Option<IdempotencyRecord> =
            match self.db.get_pinned_cf(cf, db::idempotency_key(key))? {
                Some(bytes) => Some(decode_idempotency_record(&bytes)?),
                None => None,
            };
        let fingerprint = codec::fingerprint(&command)?;
        if let Some(previous) = &previous {
            if previous.issued_at_ms.saturating_add(window_ms) >= issued_at_ms {
                if previous.fingerprint.is_some_and(|f| f != fingerprint) {
                    // The key names another request: refuse, change nothing.
                    return Ok(Response {
                        index,
                        result: CommandResult::Refused(ApplyRefusal::IdempotencyKeyReused),
                    });
                }
                // A retry within the window: answer the first result, change nothing.
                return Ok(previous.response.clone());
            }
        }
        let response = self.execute(index, command, reads, batch)?;
        if let Some(previous) = previous {
            batch.delete_cf(cf, db::idempotency_time_key(previous.issued_at_ms, key));
        }
        let record = IdempotencyRecord {
            issued_at_ms,
            response: response.clone(),
            fingerprint: Some(fingerprint),
        };
        batch.put_cf(cf, db::idempotency_key(key), codec::encode(&record)?);
        batch.put_cf(cf, db::idempotency_time_key(issued_at_ms, key), []);
        reads.idempotency_written.insert(key.to_string());
        let expired_before_ms = issued_at_ms.saturating_sub(window_ms);
        reads.idempotency_expired_before_ms = Some(
            reads
                .idempotency_expired_before_ms
                .map_or(expired_before_ms, |t| t.min(expired_before_ms)),
        );
        Ok(response)
    }

    /// Remove up to `MAX_EXPIRED_PRUNED_PER_APPLY` records issued before `expired_before_ms`,
    /// except those of `keep` (written by the entry being applied: its batch already holds
    /// their new records, which deleting the old key would remove).
    fn prune_idempotency(
        &self,
        expired_before_ms: u64,
        keep: &HashSet<String>,
        batch: &mut WriteBatch,
    ) -> Result<()> {
        let cf = db::cf(&self.db, CF_SM);
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(db::idempotency_time_key(expired_before_ms, ""));
        let start = [db::IDEMPOTENCY_TIME_TAG];
        let iter = self.db.iterator_cf_opt(
            cf,
            read_options,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter.take(MAX_EXPIRED_PRUNED_PER_APPLY) {
            let (time_key, _) = item?;
            let Some(key) = time_key.get(9..).and_then(|k| std::str::from_utf8(k).ok()) else {
                return Err(StorageError::Invariant(
                    "malformed idempotency expiry key".into(),
                ));
            };
            if keep.contains(key) {
                continue;
            }
            batch.delete_cf(cf, &time_key);
            batch.delete_cf(cf, db::idempotency_key(key));
        }
        Ok(())
    }

    pub(super) fn publish_index_size(&self) {
        let counters = &self.counters;
        let (keys, bytes) = (self.index.len() as u64, self.index.bytes() as u64);
        counters.key_index_keys.store(keys, Ordering::Relaxed);
        counters.key_index_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Apply `entry`; its changes are added to `changes` when there is a listener.
    pub(super) fn apply_one(
        &mut self,
        entry: Entry,
        changes: &mut Vec<Change>,
    ) -> Result<Response> {
        let log_id = entry.log_id;
        // Invariant: entries are applied once each, in log order.
        assert!(
            self.applied < Some(log_id),
            "apply out of order: applied {:?}, entry {log_id}",
            self.applied
        );
        let cf = db::cf(&self.db, CF_SM);
        let mut batch = WriteBatch::default();
        let mut index_updates = Vec::new();
        let mut lease_events = Vec::new();
        let mut auth_writes = Vec::new();
        let mut lease_count = self.lease_count;
        let mut lease_keys_delta = 0;
        let nothing = Response {
            index: log_id.index,
            result: CommandResult::Nothing,
        };
        let response = match entry.payload {
            EntryPayload::Blank => nothing,
            EntryPayload::Normal(command) => {
                let mut reads = Reads::new(
                    &self.db,
                    &self.index,
                    self.listener.is_some(),
                    self.lease_count,
                );
                let response = self.execute(log_id.index, command, &mut reads, &mut batch)?;
                if let Some(expired_before_ms) = reads.idempotency_expired_before_ms {
                    self.prune_idempotency(
                        expired_before_ms,
                        &reads.idempotency_written,
                        &mut batch,
                    )?;
                }
                index_updates = reads.index_updates;
                lease_events = reads.lease_events;
                auth_writes = reads.auth_writes;
                lease_keys_delta = reads.lease_keys_delta;
                lease_count = reads
                    .lease_count
                    .saturating_add_signed(reads.lease_count_delta);
                let mut entry_changes = reads.changes.unwrap_or_default();
                // In key order within the entry (a batch stages command by command), as the
                // history reads them back.
                entry_changes.sort_unstable_by(|a, b| a.key.cmp(&b.key));
                changes.extend(entry_changes);
                response
            }
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(log_id), membership);
                batch.put_cf(cf, KEY_MEMBERSHIP, codec::encode(&self.membership)?);
                nothing
            }
        };
        let new_compact =
            changes::prune_to(self.changes_compact, log_id.index, self.history_entries);
        if let Some(new_compact) = new_compact {
            changes::stage_prune(&self.db, &mut batch, self.changes_compact, new_compact)?;
        }
        batch.put_cf(cf, KEY_APPLIED, codec::encode(&Some(log_id))?);
        // Told before the applied index moves, so that a renewal answered once this index is
        // applied (coordinator `leases_as_leader`) never finds a lease this entry ended. The
        // entry is committed: a write that fails here stops the node, which then re-applies it.
        if let Some(listener) = &self.lease_listener {
            for event in lease_events {
                match event {
                    LeaseEvent::Granted { id, ttl_ms } => listener.granted(id, ttl_ms),
                    LeaseEvent::Ended { id } => listener.ended(&[id]),
                }
            }
        }
        // Data, history and applied index move together; see the module doc for why no fsync
        // here.
        self.db.write(batch)?;
        if let Some(new_compact) = new_compact {
            self.changes_compact = new_compact;
        }
        // Only now, so the index never holds what RocksDB does not.
        if !index_updates.is_empty() {
            for (key, meta) in index_updates {
                self.index.set(&key, meta);
            }
            self.publish_index_size();
        }
        self.auth.apply(auth_writes);
        self.lease_count = lease_count;
        if lease_keys_delta != 0 {
            let keys = self.counters.lease_keys.load(Ordering::Relaxed);
            self.counters.lease_keys.store(
                keys.saturating_add_signed(lease_keys_delta),
                Ordering::Relaxed,
            );
        }
        self.applied = Some(log_id);
        Ok(response)
    }
}
