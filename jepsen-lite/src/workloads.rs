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

use serde::Serialize;
use serde_json::{json, Value as Json};

use crate::cluster::encode_key;

/// What every client of a run shares: where to send, how fast, how long to wait, when to stop.
#[derive(Clone)]
pub struct ClientContext {
    pub apis: Vec<String>,
    pub http: reqwest::Client,
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
    let ClientContext {
        apis,
        http,
        timeout,
        ..
    } = ctx.clone();
    let mut next_at = tokio::time::Instant::now();
    for counter in 0..ctx.max_ops {
        if !ctx.next_turn(&mut next_at).await {
            break;
        }
        let element = format!("{slot}-{counter}");
        let api = &apis[(counter as usize + slot as usize) % apis.len()];
        tally
            .lock()
            .expect("tally")
            .attempted
            .insert(element.clone());
        let url = format!("{api}/v1/kv/{}", encode_key(&format!("set/{element}")));
        let answer =
            tokio::time::timeout(timeout, http.put(url).body(element.clone()).send()).await;
        let mut tally = tally.lock().expect("tally");
        match answer {
            Ok(Ok(response)) if response.status() == 200 => {
                tally.acknowledged.insert(element);
            }
            // Refused before delivery, or a definite error: not added.
            Ok(Err(e)) if e.is_connect() => {}
            Ok(Ok(response)) if response.status().is_client_error() || response.status() == 503 => {
            }
            _ => {
                tally.unknown.insert(element);
            }
        }
    }
}

/// Read every key under `prefix` through `api` with a linearizable range read, page by page.
pub async fn read_prefix(
    http: &reqwest::Client,
    api: &str,
    prefix: &str,
    consistency: &str,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut start: Option<String> = None;
    loop {
        let mut url = format!(
            "{api}/v1/kv?prefix={}&limit=1000&consistency={consistency}",
            encode_key(prefix)
        );
        if let Some(start) = &start {
            url.push_str(&format!("&start={}", encode_key(start)));
        }
        let response = http.get(url).send().await.map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("range read answered {}", response.status()));
        }
        let body: Json = response.json().await.map_err(|e| e.to_string())?;
        for item in body["items"].as_array().into_iter().flatten() {
            let key = item["key"].as_str().unwrap_or_default().to_string();
            let value = item["value"].as_str().unwrap_or_default().to_string();
            out.insert(key, value);
        }
        match body["next"].as_str() {
            Some(next) => start = Some(next.to_string()),
            None => return Ok(out),
        }
    }
}

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
pub async fn open_accounts(http: &reqwest::Client, api: &str, accounts: u64) -> Result<(), String> {
    let puts: Vec<Json> = (0..accounts)
        .map(|i| json!({"put": {"key": format!("bank/{i}"), "value": INITIAL_BALANCE.to_string()}}))
        .collect();
    let response = http
        .post(format!("{api}/v1/txn"))
        .json(&json!({"success": puts}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("opening accounts answered {}", response.status()));
    }
    Ok(())
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
    let ClientContext {
        apis,
        http,
        timeout,
        ..
    } = ctx.clone();
    let mut next_at = tokio::time::Instant::now();
    for counter in 0..ctx.max_ops {
        if !ctx.next_turn(&mut next_at).await {
            break;
        }
        let api = &apis[(counter as usize + slot as usize) % apis.len()];
        // Every read of all accounts is judged, whatever its consistency level: a range page is
        // read at one index, so even a stale read must balance.
        let Ok(Ok(balances)) =
            tokio::time::timeout(timeout, read_prefix(&http, api, "bank/", &consistency)).await
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
        let body = json!({
            "compare": [
                {"key": format!("bank/{from}"), "value": from_balance.to_string()},
                {"key": format!("bank/{to}"), "value": to_balance.to_string()},
            ],
            "success": [
                {"put": {"key": format!("bank/{from}"), "value": (from_balance - amount).to_string()}},
                {"put": {"key": format!("bank/{to}"), "value": (to_balance + amount).to_string()}},
            ],
        });
        tally.lock().expect("tally").transfers_attempted += 1;
        let answer = tokio::time::timeout(
            timeout,
            http.post(format!("{api}/v1/txn")).json(&body).send(),
        )
        .await;
        let mut tally = tally.lock().expect("tally");
        match answer {
            Ok(Ok(response)) if response.status() == 200 => tally.transfers_ok += 1,
            Ok(Err(e)) if e.is_connect() => {}
            Ok(Ok(response)) if response.status().is_client_error() || response.status() == 503 => {
            }
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
