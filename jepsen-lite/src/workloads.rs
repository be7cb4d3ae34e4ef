//! The `set` and `bank` workloads (the `register` one lives in `harness`, next to the checker
//! it feeds). Both check their own invariant at the end instead of a linearizability search.
//!
//! - `set`: clients add unique elements (one key `set/<element>` each). At the end every
//!   acknowledged add must be present ("lost" otherwise) and nothing present may be an element
//!   no client tried to add ("unexpected"). Adds whose outcome is unknown may go either way.
//! - `bank`: accounts `bank/<i>` start at `INITIAL_BALANCE` each; clients move money between two
//!   accounts with a transaction that compares both accounts' `mod_index`, and read all accounts
//!   with one range read (one index). Every read must see the same total and no negative balance.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirrorkv_client::{
    Client, ClientError, ClientOptions, Compare, Consistency, Range, ReadOptions, Txn, TxnOp,
};
use serde::Serialize;

/// A client of the one node at `api` as a test needs it: every request goes to that node only
/// (no resend elsewhere), writes carry no idempotency key and reads no `min_index` floor (each
/// would change what the history records), reads are at `consistency`, each request bounded by
/// `timeout`.
pub fn node_client(
    api: &str,
    timeout: Duration,
    consistency: &str,
    tls: &crate::cluster::ClientAccess,
) -> Result<Client, String> {
    let consistency: Consistency = consistency
        .parse()
        .map_err(|e: ClientError| e.to_string())?;
    Client::with_options(
        [api],
        ClientOptions {
            timeout_ms: timeout.as_millis() as u64,
            consistency: Some(consistency),
            read_your_writes: false,
            idempotent_writes: false,
            tls: tls.tls.clone(),
            token: tls.token.clone(),
            ..ClientOptions::default()
        },
    )
    .map_err(|e| e.to_string())
}

/// What every client of a run shares: where to send, how fast, how long to wait, when to stop.
#[derive(Clone)]
pub struct ClientContext {
    /// One client per node (`node_client`), in node order.
    pub clients: Vec<Client>,
    /// Time between two operations of one client.
    pub interval: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    pub stop: Arc<AtomicBool>,
    /// Most operations one client issues.
    pub max_ops: u64,
}

impl ClientContext {
    /// Wait for this client's next turn at its pace; `false` once the run is stopping.
    pub async fn next_turn(&self, next_at: &mut tokio::time::Instant) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        tokio::time::sleep_until(*next_at).await;
        *next_at += self.interval;
        true
    }
}

/// Money in each account at the start.
pub const INITIAL_BALANCE: i64 = 100;

/// What a `set` or `bank` run found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct InvariantReport {
    pub attempted: usize,
    pub acknowledged: usize,
    pub unknown: usize,
    /// Acknowledged adds missing at the end (set).
    pub lost: Vec<String>,
    /// Elements present that no client tried to add (set).
    pub unexpected: Vec<String>,
    /// Reads whose total or balances break the invariant (bank).
    pub bad_reads: Vec<String>,
    pub reads: usize,
}

impl InvariantReport {
    pub fn valid(&self) -> bool {
        self.lost.is_empty() && self.unexpected.is_empty() && self.bad_reads.is_empty()
    }
}

/// Shared tallies of a set run.
#[derive(Default)]
pub struct SetTally {
    pub attempted: BTreeSet<String>,
    pub acknowledged: BTreeSet<String>,
    pub unknown: BTreeSet<String>,
}

/// One `set` client: adds `slot-counter` elements until `stop` (bounded by `max_ops`).
pub async fn set_client(slot: u64, ctx: ClientContext, tally: Arc<Mutex<SetTally>>) {
    let mut next_at = tokio::time::Instant::now();
    for counter in 0..ctx.max_ops {
        if !ctx.next_turn(&mut next_at).await {
            break;
        }
        let element = format!("{slot}-{counter}");
        let client = &ctx.clients[(counter as usize + slot as usize) % ctx.clients.len()];
        tally
            .lock()
            .expect("tally")
            .attempted
            .insert(element.clone());
        let key = format!("set/{element}");
        let answer = tokio::time::timeout(ctx.timeout, client.put(&key, element.clone())).await;
        let mut tally = tally.lock().expect("tally");
        match answer {
            Ok(Ok(_)) => {
                tally.acknowledged.insert(element);
            }
            Ok(Err(e)) if !e.write_may_have_applied() => {}
            _ => {
                tally.unknown.insert(element);
            }
        }
    }
}

/// Every key under `prefix` and its value, read through `client` at `consistency`, a page of
/// at most 1000 keys at a time (one page, one index, for the few keys a bank run has).
pub async fn read_prefix(
    client: &Client,
    prefix: &str,
    consistency: Consistency,
) -> Result<BTreeMap<String, String>, String> {
    let range = Range {
        prefix: Some(prefix.to_string()),
        limit: Some(1000),
        ..Range::default()
    };
    let options = ReadOptions {
        consistency: Some(consistency),
        ..ReadOptions::default()
    };
    let read = client
        .range_all(&range, MAX_PREFIX_KEYS, &options)
        .await
        .map_err(|e| format!("range read of {prefix:?}: {e}"))?;
    Ok(read
        .value
        .items
        .into_iter()
        .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
        .collect())
}

/// The most keys `read_prefix` reads: more than any run writes under one prefix.
const MAX_PREFIX_KEYS: usize = 10_000_000;

/// The `set` verdict from the tally and the final read.
pub fn judge_set(tally: &SetTally, present: &BTreeMap<String, String>) -> InvariantReport {
    let present: BTreeSet<String> = present
        .keys()
        .filter_map(|k| k.strip_prefix("set/"))
        .map(str::to_string)
        .collect();
    InvariantReport {
        attempted: tally.attempted.len(),
        acknowledged: tally.acknowledged.len(),
        unknown: tally.unknown.len(),
        lost: tally.acknowledged.difference(&present).cloned().collect(),
        unexpected: present.difference(&tally.attempted).cloned().collect(),
        bad_reads: Vec::new(),
        reads: 1,
    }
}

/// Create the accounts of a bank run in one transaction.
pub async fn open_accounts(client: &Client, accounts: u64) -> Result<(), String> {
    let txn = Txn {
        compare: Vec::new(),
        success: (0..accounts)
            .map(|i| TxnOp::Put {
                key: format!("bank/{i}"),
                value: INITIAL_BALANCE.to_string().into_bytes(),
            })
            .collect(),
        failure: Vec::new(),
    };
    client
        .txn(&txn)
        .await
        .map(|_| ())
        .map_err(|e| format!("opening accounts: {e}"))
}

/// Check one read of all accounts; `Some(problem)` if it breaks the invariant.
pub fn judge_bank_read(balances: &BTreeMap<String, String>, accounts: u64) -> Option<String> {
    let expected = INITIAL_BALANCE * accounts as i64;
    let mut total = 0i64;
    for (key, value) in balances {
        let Ok(balance) = value.parse::<i64>() else {
            return Some(format!("{key} holds {value:?}, not a number"));
        };
        if balance < 0 {
            return Some(format!("{key} is negative: {balance}"));
        }
        total += balance;
    }
    if balances.len() as u64 != accounts || total != expected {
        return Some(format!("{} accounts, total {total}; expected {accounts} accounts, total {expected}: {balances:?}", balances.len()));
    }
    None
}

/// Shared tallies of a bank run.
#[derive(Default)]
pub struct BankTally {
    pub transfers_attempted: usize,
    pub transfers_ok: usize,
    pub transfers_unknown: usize,
    pub reads: usize,
    pub bad_reads: Vec<String>,
}

/// One `bank` client: alternately reads all accounts and transfers between two of them.
pub async fn bank_client(
    slot: u64,
    ctx: ClientContext,
    accounts: u64,
    consistency: String,
    tally: Arc<Mutex<BankTally>>,
) {
    let Ok(consistency) = consistency.parse::<Consistency>() else {
        return;
    };
    let mut next_at = tokio::time::Instant::now();
    for counter in 0..ctx.max_ops {
        if !ctx.next_turn(&mut next_at).await {
            break;
        }
        let client = &ctx.clients[(counter as usize + slot as usize) % ctx.clients.len()];
        // Every read of all accounts is judged, whatever its consistency level: a range page is
        // read at one index, so even a stale read must balance.
        let Ok(Ok(balances)) =
            tokio::time::timeout(ctx.timeout, read_prefix(client, "bank/", consistency)).await
        else {
            continue;
        };
        {
            let mut tally = tally.lock().expect("tally");
            tally.reads += 1;
            if let Some(problem) = judge_bank_read(&balances, accounts) {
                tally.bad_reads.push(problem);
            }
        }
        if counter % 2 == 1 {
            continue;
        }
        let from = (slot + counter) % accounts;
        let to = (from + 1 + counter % (accounts - 1).max(1)) % accounts;
        let (Some(from_balance), Some(to_balance)) = (
            balances
                .get(&format!("bank/{from}"))
                .and_then(|v| v.parse::<i64>().ok()),
            balances
                .get(&format!("bank/{to}"))
                .and_then(|v| v.parse::<i64>().ok()),
        ) else {
            continue;
        };
        let amount = (counter as i64 % 7 + 1).min(from_balance);
        if amount <= 0 || from == to {
            continue;
        }
        // Compare the values read, so a transfer only applies to the balances it saw.
        let (from_key, to_key) = (format!("bank/{from}"), format!("bank/{to}"));
        let txn = Txn {
            compare: vec![
                Compare::Value {
                    key: from_key.clone(),
                    value: from_balance.to_string().into_bytes(),
                },
                Compare::Value {
                    key: to_key.clone(),
                    value: to_balance.to_string().into_bytes(),
                },
            ],
            success: vec![
                TxnOp::Put {
                    key: from_key,
                    value: (from_balance - amount).to_string().into_bytes(),
                },
                TxnOp::Put {
                    key: to_key,
                    value: (to_balance + amount).to_string().into_bytes(),
                },
            ],
            failure: Vec::new(),
        };
        tally.lock().expect("tally").transfers_attempted += 1;
        let answer = tokio::time::timeout(ctx.timeout, client.txn(&txn)).await;
        let mut tally = tally.lock().expect("tally");
        match answer {
            // Applied or not, the answer is definite (a failed compare changes nothing).
            Ok(Ok(_)) => tally.transfers_ok += 1,
            Ok(Err(e)) if !e.write_may_have_applied() => {}
            _ => tally.transfers_unknown += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_reports_lost_and_unexpected() {
        let mut tally = SetTally::default();
        for e in ["a", "b", "c"] {
            tally.attempted.insert(e.into());
        }
        tally.acknowledged.insert("a".into());
        tally.acknowledged.insert("b".into());
        tally.unknown.insert("c".into());
        let present: BTreeMap<String, String> = [("set/a", ""), ("set/c", ""), ("set/z", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let report = judge_set(&tally, &present);
        assert_eq!(report.lost, vec!["b".to_string()]);
        assert_eq!(report.unexpected, vec!["z".to_string()]);
        assert!(!report.valid());
    }

    #[test]
    fn bank_reads_must_balance() {
        let balances = |v: &[i64]| -> BTreeMap<String, String> {
            v.iter()
                .enumerate()
                .map(|(i, b)| (format!("bank/{i}"), b.to_string()))
                .collect()
        };
        assert_eq!(judge_bank_read(&balances(&[100, 100, 100]), 3), None);
        assert_eq!(judge_bank_read(&balances(&[90, 110, 100]), 3), None);
        assert!(judge_bank_read(&balances(&[90, 100, 100]), 3).is_some());
        assert!(judge_bank_read(&balances(&[-10, 210, 100]), 3).is_some());
        assert!(judge_bank_read(&balances(&[100, 100]), 3).is_some());
    }
}
