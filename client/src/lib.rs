//! A typed client of the mirrorkv HTTP API (`../shared/API.md`), used by `mirrorkv ctl`,
//! jepsen-lite's workloads and the node's tests. It knows the contract's rules so callers do not have to: which requests
//! may go to another node, how keys and values travel, and how to read one's own writes.
//!
//! - [`client`]: [`Client`] and [`ClientOptions`]: endpoint failover, idempotency keys,
//!   read-your-writes; [`client::watch`]: [`Watch`], a change stream that resumes by itself.
//! - [`types`]: typed requests and answers ([`KeyValue`], [`Range`], [`Txn`], [`ClusterStatus`], ...).
//! - [`keys`]: the one encoding of keys in URLs.
//! - [`error`]: [`ClientError`], which says whether a retry can help.
//!
//! By default a client gives every write an `Idempotency-Key` (so a write whose answer was lost
//! is sent to the next node without applying twice) and passes the highest index it has seen as
//! `min_index` on every read (so a read on any node sees the client's own writes).
//!
//! ```no_run
//! use mirrorkv_client::{Client, Compare, Range, ReadOptions, Txn, TxnOp};
//!
//! # async fn example() -> Result<(), mirrorkv_client::ClientError> {
//! let client = Client::new(["127.0.0.1:2379", "127.0.0.1:2380", "127.0.0.1:2381"])?;
//! let written = client.put("config/color", "blue").await?;
//! // Any node, and still the value just written: the read carries `min_index`.
//! let read = client.get("config/color").await?;
//! assert!(read.index >= written.index);
//! assert_eq!(read.value.unwrap().value, b"blue");
//!
//! // Every key under a prefix, page after page.
//! let all = client
//!     .range_all(&Range::prefix("config/"), 10_000, &ReadOptions::default())
//!     .await?;
//! for item in &all.value.items {
//!     println!("{} = {}", item.key, item.value_text());
//! }
//!
//! // Compare-and-swap in one transaction.
//! let swapped = client
//!     .txn(&Txn {
//!         compare: vec![Compare::ModIndex { key: "config/color".into(), mod_index: written.index }],
//!         success: vec![TxnOp::Put { key: "config/color".into(), value: b"green".to_vec() }],
//!         failure: vec![TxnOp::Get { key: "config/color".into() }],
//!     })
//!     .await?;
//! println!("swapped: {}", swapped.succeeded);
//! # Ok(())
//! # }
//! ```
//!
//! Reads at another level, and conditional writes:
//!
//! ```no_run
//! use mirrorkv_client::{Client, ClientOptions, Consistency, ReadOptions, WriteOptions};
//!
//! # async fn example() -> Result<(), mirrorkv_client::ClientError> {
//! let client = Client::with_options(
//!     ["127.0.0.1:2379"],
//!     ClientOptions { consistency: Some(Consistency::Lease), ..ClientOptions::default() },
//! )?;
//! let stale = client
//!     .get_with("k", &ReadOptions { consistency: Some(Consistency::Stale), ..ReadOptions::default() })
//!     .await?;
//! let only_if_new = WriteOptions { if_absent: true, ..WriteOptions::default() };
//! match client.put_with("k", "first", &only_if_new).await {
//!     Ok(put) => println!("created at {}", put.index),
//!     Err(e) if e.code() == Some("precondition_failed") => println!("already there"),
//!     Err(e) => return Err(e),
//! }
//! # let _ = stale;
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod error;
pub mod keys;
pub mod types;

pub use client::auth::{CreatedToken, Permission};
pub use client::lease::{Election, Lease, LeaseInfo, Lock};
pub use client::watch::{Event, EventKind, Watch, WatchMessage, WatchOptions, WatchTarget};
pub use client::{new_idempotency_key, Backup, Client, ClientOptions, ClientTls, MAX_PAGE_KEYS};
pub use error::ClientError;
pub use types::{
    ClusterStatus, Compare, Consistency, DeleteResult, KeyValue, Member, PutResult, Range,
    RangePage, Read, ReadOptions, SnapshotResult, Txn, TxnOp, TxnOpResult, TxnResult, WriteOptions,
};
