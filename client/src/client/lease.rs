//! Leases, locks and elections, built only from the contract's routes (`shared/API.md`,
//! "Leases (TTL), locks and elections"), so any HTTP client can do the same:
//!
//! - [`Lease`]: a granted lease that keeps itself alive in the background until dropped or
//!   revoked, and says when it is lost.
//! - [`Lock`]: a key under `_lock/NAME/` attached to a lease and created only if absent (a
//!   transaction that also reads `_lock/NAME`, so that two joins never share a log index); the
//!   holder is the key created first, each waiter watches the key just ahead of it. The
//!   fencing token is the lock key's `mod_index`: strictly increasing per lock.
//! - [`Election`]: the same queue under `_elect/NAME/`, whose first key's value names the
//!   leader.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::watch::{EventKind, WatchMessage, WatchOptions, WatchTarget};
use super::{Call, Client, Resend};
use crate::error::ClientError;
use crate::types::{Consistency, KeyValue, Range, ReadOptions, WriteOptions};

/// A live lease as `GET /v1/lease/{id}` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: u64,
    pub ttl_s: u64,
    /// Until the leader expires it, unless renewed.
    pub remaining_ms: u64,
    /// Its keys, in key order.
    pub keys: Vec<String>,
}

/// Keys of one lock or election queue at most: more waiters than this are refused.
const MAX_QUEUE_KEYS: usize = 10_000;

impl Client {
    /// Grant a lease of `ttl_s` seconds; its id.
    pub async fn lease_grant(&self, ttl_s: u64) -> Result<u64, ClientError> {
        let (headers, resend) = self.write_headers(&WriteOptions::default());
        let body = json!({ "ttl_s": ttl_s }).to_string().into_bytes();
        let call = Call {
            method: Method::POST,
            path_and_query: "/v1/lease",
            body: Some((body.into(), "application/json")),
            headers: &headers,
            resend,
        };
        let answer = self.send_json(&call).await?;
        answer["id"]
            .as_u64()
            .ok_or_else(|| ClientError::Decode(format!("a lease grant without an id: {answer}")))
    }

    /// Renew lease `id`: it lives its whole TTL from now. `not_found` once it ended.
    pub async fn lease_keepalive(&self, id: u64) -> Result<u64, ClientError> {
        let path = format!("/v1/lease/{id}/keepalive");
        // Renewing twice is renewing: safe to send to the next node.
        let answer = self
            .send_json(&Call::plain(Method::POST, &path, Resend::Read))
            .await?;
        answer["ttl_s"]
            .as_u64()
            .ok_or_else(|| ClientError::Decode(format!("a keepalive without ttl_s: {answer}")))
    }

    /// End lease `id` now and delete its keys; how many keys were deleted.
    pub async fn lease_revoke(&self, id: u64) -> Result<u64, ClientError> {
        let (headers, resend) = self.write_headers(&WriteOptions::default());
        let path = format!("/v1/lease/{id}");
        let call = Call {
            headers: &headers,
            ..Call::plain(Method::DELETE, &path, resend)
        };
        let answer = self.send_json(&call).await?;
        Ok(answer["keys_deleted"].as_u64().unwrap_or(0))
    }

    /// Lease `id`'s TTL, time left and keys.
    pub async fn lease_info(&self, id: u64) -> Result<LeaseInfo, ClientError> {
        let path = format!("/v1/lease/{id}");
        let answer = self
            .send_json(&Call::plain(Method::GET, &path, Resend::Read))
            .await?;
        let number = |name: &str| {
            answer[name]
                .as_u64()
                .ok_or_else(|| ClientError::Decode(format!("a lease without {name}: {answer}")))
        };
        let keys = answer["keys"]
            .as_array()
            .ok_or_else(|| ClientError::Decode(format!("a lease without keys: {answer}")))?
            .iter()
            .filter_map(|key| key.as_str().map(String::from))
            .collect();
        Ok(LeaseInfo {
            id: number("id")?,
            ttl_s: number("ttl_s")?,
            remaining_ms: number("remaining_ms")?,
            keys,
        })
    }

    /// Grant a lease of `ttl_s` seconds that keeps itself alive until dropped or revoked.
    pub async fn lease(&self, ttl_s: u64) -> Result<Lease, ClientError> {
        let asked = tokio::time::Instant::now();
        let id = self.lease_grant(ttl_s).await?;
        Ok(Lease::keep(self.clone(), id, ttl_s, asked))
    }
}

/// A lease kept alive in the background: a keepalive every third of its TTL, retried on
/// failure. It is lost when a keepalive finds it ended, or when none succeeded for a whole TTL
/// (the cluster may have expired it); [`Lease::lost`] says so.
pub struct Lease {
    id: u64,
    ttl_s: u64,
    client: Client,
    lost: watch::Receiver<Option<String>>,
    /// The send time of the last acknowledged grant or keepalive, plus the TTL.
    alive_until: std::sync::Arc<std::sync::Mutex<tokio::time::Instant>>,
    keeper: JoinHandle<()>,
}

impl Lease {
    fn keep(client: Client, id: u64, ttl_s: u64, asked: tokio::time::Instant) -> Lease {
        let (lost_tx, lost) = watch::channel(None);
        let ttl = Duration::from_secs(ttl_s);
        let alive_until = std::sync::Arc::new(std::sync::Mutex::new(asked + ttl));
        let keeper = tokio::spawn({
            let (client, alive_until) = (client.clone(), alive_until.clone());
            async move {
                let mut renewed_at = tokio::time::Instant::now();
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    loop {
                        let sent = tokio::time::Instant::now();
                        match client.lease_keepalive(id).await {
                            Ok(_) => {
                                renewed_at = sent;
                                *alive_until.lock().unwrap_or_else(|p| p.into_inner()) = sent + ttl;
                                break;
                            }
                            Err(e) if e.code() == Some("not_found") => {
                                let _ = lost_tx.send(Some(format!("lease {id} ended: {e}")));
                                return;
                            }
                            Err(e) if renewed_at.elapsed() >= ttl => {
                                let _ = lost_tx.send(Some(format!(
                                    "lease {id}: no keepalive succeeded for its TTL of {ttl_s} s; last error: {e}"
                                )));
                                return;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    }
                }
            }
        });
        Lease {
            id,
            ttl_s,
            client,
            lost,
            alive_until,
            keeper,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn ttl_s(&self) -> u64 {
        self.ttl_s
    }

    /// Until when the cluster certainly keeps the lease: the send time of the last
    /// acknowledged grant or keepalive plus the TTL (the server never ends it earlier).
    pub fn alive_until(&self) -> tokio::time::Instant {
        *self.alive_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the lease is lost, if it is.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.borrow().clone()
    }

    /// Resolves once the lease is lost, with why.
    pub async fn lost(&self) -> String {
        let mut lost = self.lost.clone();
        let reason = match lost.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => format!("lease {}: its keeper stopped", self.id),
        };
        reason
    }

    /// Stop keeping it alive and end it now, deleting its keys.
    pub async fn revoke(self) -> Result<u64, ClientError> {
        self.keeper.abort();
        self.client.lease_revoke(self.id).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Not revoked: it runs out after its TTL.
        self.keeper.abort();
    }
}

/// A place in a lock's or an election's queue: a key under `prefix` attached to `lease`.
struct Queued {
    key: String,
    create_index: u64,
}

/// Create `prefix` + the lease id with `value`, attached to `lease`, if it does not exist:
/// one transaction that also reads the queue's own name (`prefix` without its `/`), a key
/// nobody writes. The read makes two joins of one queue conflict, so the leader never puts
/// them in one log entry and every key of a queue has its own `create_index`: the queue's
/// order, and the lock's fencing token, are then strict (a plain `If-None-Match: *` put could
/// share an index with another waiter's).
async fn join_queue(
    client: &Client,
    prefix: &str,
    lease: &Lease,
    value: &[u8],
) -> Result<Queued, ClientError> {
    let key = format!("{prefix}{:020}", lease.id());
    let mut put = json!({"key": key, "lease": lease.id()});
    crate::types::put_value(&mut put, value);
    let body = json!({
        "compare": [{"key": key, "exists": false}],
        "success": [{"put": put}, {"get": {"key": prefix.trim_end_matches('/')}}],
    });
    let joined = client
        .txn_json(body.to_string().into_bytes(), &WriteOptions::default())
        .await?;
    if !joined.succeeded {
        return Err(ClientError::Invalid(format!(
            "{key} exists already: lease {} is in the queue twice",
            lease.id()
        )));
    }
    Ok(Queued {
        key,
        create_index: joined.index,
    })
}

/// Wait until `mine` is the first key under `prefix` (the oldest `create_index`); its record
/// then. Watches the key just ahead until it is deleted, then looks again.
async fn wait_first(
    client: &Client,
    prefix: &str,
    mine: &Queued,
    lease: &Lease,
) -> Result<KeyValue, ClientError> {
    let linearizable = ReadOptions {
        consistency: Some(Consistency::Linearizable),
        ..ReadOptions::default()
    };
    loop {
        let queue = client
            .range_all(&Range::prefix(prefix), MAX_QUEUE_KEYS, &linearizable)
            .await?;
        let Some(me) = queue.value.items.iter().find(|kv| kv.key == mine.key) else {
            return Err(ClientError::Invalid(format!(
                "{} is gone: lease {} ended before the turn came",
                mine.key,
                lease.id()
            )));
        };
        // By (create_index, key): joins of one queue never share an index (`join_queue`), the
        // key only breaks a tie a queue written by other means could have.
        let place = |kv: &KeyValue| (kv.create_index, kv.key.clone());
        let mine_place = (mine.create_index, mine.key.clone());
        let ahead = queue
            .value
            .items
            .iter()
            .filter(|kv| place(kv) < mine_place)
            .max_by_key(|kv| place(kv));
        let Some(ahead) = ahead else {
            return Ok(me.clone());
        };
        let mut watch = client.watch(
            WatchTarget::Key(ahead.key.clone()),
            WatchOptions {
                from_index: Some(queue.index + 1),
                ..WatchOptions::default()
            },
        );
        loop {
            let message = tokio::select! {
                message = watch.next() => message?,
                reason = lease.lost() => return Err(ClientError::Invalid(reason)),
            };
            if let WatchMessage::Event(event) = message {
                if event.kind == EventKind::Delete {
                    break;
                }
            }
        }
    }
}

/// A held lock; see the module doc. Dropping it without [`Lock::release`] lets it go when its
/// lease runs out.
pub struct Lock {
    lease: Lease,
    key: String,
    fencing_token: u64,
}

impl Lock {
    /// Wait for lock `name`, held through a lease of `ttl_s` seconds.
    pub async fn acquire(client: &Client, name: &str, ttl_s: u64) -> Result<Lock, ClientError> {
        let prefix = format!("_lock/{name}/");
        let lease = client.lease(ttl_s).await?;
        let mine = join_queue(client, &prefix, &lease, b"").await?;
        let me = wait_first(client, &prefix, &mine, &lease).await?;
        Ok(Lock {
            lease,
            key: mine.key,
            fencing_token: me.mod_index,
        })
    }

    /// The lock key's `mod_index`: larger than every earlier holder's. A guarded write compares
    /// it (a txn with `{"key": lock_key, "mod_index": token}`) so that a holder that lost the
    /// lock without knowing cannot write.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Let the lock go now (its lease is revoked, which deletes its key).
    pub async fn release(self) -> Result<(), ClientError> {
        self.lease.revoke().await.map(|_| ())
    }
}

/// A campaign in election `name`; see the module doc.
pub struct Election {
    lease: Lease,
    key: String,
}

impl Election {
    /// Campaign with `value` through a lease of `ttl_s` seconds; returns once elected.
    pub async fn campaign(
        client: &Client,
        name: &str,
        value: &[u8],
        ttl_s: u64,
    ) -> Result<Election, ClientError> {
        let prefix = format!("_elect/{name}/");
        let lease = client.lease(ttl_s).await?;
        let mine = join_queue(client, &prefix, &lease, value).await?;
        wait_first(client, &prefix, &mine, &lease).await?;
        Ok(Election {
            lease,
            key: mine.key,
        })
    }

    /// The leader of election `name` now: the first key of its queue, with its value.
    pub async fn leader(client: &Client, name: &str) -> Result<Option<KeyValue>, ClientError> {
        let linearizable = ReadOptions {
            consistency: Some(Consistency::Linearizable),
            ..ReadOptions::default()
        };
        let queue = client
            .range_all(
                &Range::prefix(&format!("_elect/{name}/")),
                MAX_QUEUE_KEYS,
                &linearizable,
            )
            .await?;
        Ok(queue
            .value
            .items
            .into_iter()
            .min_by_key(|kv| kv.create_index))
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Step down now (the lease is revoked, which deletes the key).
    pub async fn resign(self) -> Result<(), ClientError> {
        self.lease.revoke().await.map(|_| ())
    }
}
