//! The typed requests and answers of the API (`../shared/API.md`), and how values travel in
//! JSON: `"value"` when UTF-8, `"value_base64"` otherwise, both read.

use base64::Engine;
use serde_json::{json, Value};

use crate::error::ClientError;

/// A read level (`?consistency=`), strongest first. The server's default is `Linearizable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Strong,
    Linearizable,
    Lease,
    Leader,
    Stale,
}

impl Consistency {
    /// The name in the query string.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Strong => "strong",
            Consistency::Linearizable => "linearizable",
            Consistency::Lease => "lease",
            Consistency::Leader => "leader",
            Consistency::Stale => "stale",
        }
    }
}

impl std::str::FromStr for Consistency {
    type Err = ClientError;

    fn from_str(text: &str) -> Result<Self, ClientError> {
        Ok(match text {
            "strong" => Consistency::Strong,
            "linearizable" => Consistency::Linearizable,
            "lease" => Consistency::Lease,
            "leader" => Consistency::Leader,
            "stale" => Consistency::Stale,
            other => {
                return Err(ClientError::Invalid(format!(
                    "unknown read level {other:?} (strong, linearizable, lease, leader or stale)"
                )))
            }
        })
    }
}

/// How one read is served. `Default` is the client's level and its read-your-writes index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Overrides the client's level for this read.
    pub consistency: Option<Consistency>,
    /// Serve at or after this index; raised to the client's last seen index when the client
    /// reads its own writes (`ClientOptions::read_your_writes`).
    pub min_index: Option<u64>,
    /// For `stale` and `leader`: refuse unless this node heard from a leader this recently.
    pub max_staleness_ms: Option<u64>,
}

/// Conditions and the idempotency key of one write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Apply only if the key's `mod_index` is this (`If-Match`).
    pub if_mod_index: Option<u64>,
    /// Apply a put only if the key does not exist (`If-None-Match: *`).
    pub if_absent: bool,
    /// The `Idempotency-Key`; one is generated when the client makes writes idempotent and
    /// this is `None`.
    pub idempotency_key: Option<String>,
    /// Attach the put key to this lease (`?lease=`): it is deleted when the lease ends.
    pub lease: Option<u64>,
}

/// The answer to a read, with the index it was read at and who served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read<T> {
    /// The serving node's applied index at the read.
    pub index: u64,
    /// The id of the node that served the read, if it said.
    pub node: Option<u64>,
    /// The level actually used, if the node said.
    pub consistency: Option<String>,
    pub value: T,
}

/// A key, its value and its indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    /// Empty for a `keys_only` range.
    pub value: Vec<u8>,
    pub mod_index: u64,
    pub create_index: u64,
}

impl KeyValue {
    /// The value as text, or `base64:...` when it is not UTF-8.
    pub fn value_text(&self) -> String {
        match std::str::from_utf8(&self.value) {
            Ok(text) => text.to_string(),
            Err(_) => format!("base64:{}", base64_engine().encode(&self.value)),
        }
    }

    /// The contract's JSON form: `key`, `value` or `value_base64`, `mod_index`, `create_index`.
    pub fn to_json(&self) -> Value {
        let mut item = json!({"key": self.key, "mod_index": self.mod_index, "create_index": self.create_index});
        put_value(&mut item, &self.value);
        item
    }

    pub(crate) fn from_json(item: &Value) -> Result<Self, ClientError> {
        Ok(KeyValue {
            key: item["key"]
                .as_str()
                .ok_or_else(|| ClientError::Decode(format!("an item without a key: {item}")))?
                .to_string(),
            value: value_of(item)?,
            mod_index: item["mod_index"].as_u64().unwrap_or(0),
            create_index: item["create_index"].as_u64().unwrap_or(0),
        })
    }
}

/// The answer to a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResult {
    /// The log index of the write.
    pub index: u64,
    /// The key's `mod_index` before, `None` if it did not exist.
    pub prev_mod_index: Option<u64>,
}

/// The answer to a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteResult {
    pub index: u64,
    /// Whether the key existed.
    pub deleted: bool,
}

/// One range read: a prefix or `[start, end)`, one page at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Range {
    /// Keys with this prefix; `start` then only moves the beginning inside it, and `end` must
    /// be `None` (the server refuses both).
    pub prefix: Option<String>,
    /// First key (inclusive).
    pub start: Option<String>,
    /// End of the range (exclusive); `None` is unbounded.
    pub end: Option<String>,
    /// Most keys per page (the server's default is 1000, its maximum 10000).
    pub limit: Option<usize>,
    pub keys_only: bool,
}

impl Range {
    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &str) -> Self {
        Range {
            prefix: Some(prefix.to_string()),
            ..Range::default()
        }
    }
}

/// One page of a range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangePage {
    pub items: Vec<KeyValue>,
    /// The `start` of the next page, `None` on the last.
    pub next: Option<String>,
}

/// A transaction: if every compare holds, `success` runs, else `failure`; one log index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_index` is this (0: the key does not exist).
    ModIndex {
        key: String,
        mod_index: u64,
    },
    Value {
        key: String,
        value: Vec<u8>,
    },
    Exists {
        key: String,
        exists: bool,
    },
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
    Get { key: String },
}

impl Txn {
    /// The `POST /v1/txn` body.
    pub fn to_json(&self) -> Value {
        let compare: Vec<Value> = self
            .compare
            .iter()
            .map(|c| match c {
                Compare::ModIndex { key, mod_index } => json!({"key": key, "mod_index": mod_index}),
                Compare::Value { key, value } => {
                    let mut item = json!({"key": key});
                    put_value(&mut item, value);
                    item
                }
                Compare::Exists { key, exists } => json!({"key": key, "exists": exists}),
            })
            .collect();
        let ops = |ops: &[TxnOp]| -> Vec<Value> {
            ops.iter()
                .map(|op| match op {
                    TxnOp::Put { key, value } => {
                        let mut put = json!({"key": key});
                        put_value(&mut put, value);
                        json!({ "put": put })
                    }
                    TxnOp::Delete { key } => json!({"delete": {"key": key}}),
                    TxnOp::Get { key } => json!({"get": {"key": key}}),
                })
                .collect()
        };
        json!({"compare": compare, "success": ops(&self.success), "failure": ops(&self.failure)})
    }
}

/// The answer to a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    pub index: u64,
    pub results: Vec<TxnOpResult>,
}

/// The result of one transaction operation, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResult {
    Put {
        prev_mod_index: Option<u64>,
    },
    Delete {
        deleted: bool,
    },
    /// `None`: the key does not exist.
    Get(Option<KeyValue>),
}

impl TxnResult {
    /// The contract's JSON form of the answer.
    pub fn to_json(&self) -> Value {
        let results: Vec<Value> = self
            .results
            .iter()
            .map(|result| match result {
                TxnOpResult::Put { prev_mod_index } => {
                    json!({"put": {"prev_mod_index": prev_mod_index}})
                }
                TxnOpResult::Delete { deleted } => json!({"delete": {"deleted": deleted}}),
                TxnOpResult::Get(found) => json!({"get": found.as_ref().map(KeyValue::to_json)}),
            })
            .collect();
        json!({"succeeded": self.succeeded, "index": self.index, "results": results})
    }

    pub(crate) fn from_json(body: &Value) -> Result<Self, ClientError> {
        let mut results = Vec::new();
        for result in body["results"].as_array().into_iter().flatten() {
            results.push(if let Some(put) = result.get("put") {
                TxnOpResult::Put {
                    prev_mod_index: put["prev_mod_index"].as_u64(),
                }
            } else if let Some(delete) = result.get("delete") {
                TxnOpResult::Delete {
                    deleted: delete["deleted"] == true,
                }
            } else if let Some(get) = result.get("get") {
                TxnOpResult::Get(if get.is_null() {
                    None
                } else {
                    Some(KeyValue::from_json(get)?)
                })
            } else {
                return Err(ClientError::Decode(format!("a txn result: {result}")));
            });
        }
        Ok(TxnResult {
            succeeded: body["succeeded"] == true,
            index: index_of(body)?,
            results,
        })
    }
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub cluster_id: Option<String>,
    pub leader: Option<u64>,
    pub term: Option<u64>,
    pub commit_index: Option<u64>,
    pub members: Vec<Member>,
    /// The whole answer as the node sent it, with what this type does not name (the answering
    /// node's own view, `node`).
    pub raw: Value,
}

/// One member in `ClusterStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub api_addr: String,
    pub raft_addr: String,
    /// `voter` or `mirror`.
    pub role: String,
    pub applied_index: Option<u64>,
    pub lag: Option<u64>,
    /// `false` when the answering node could not reach it.
    pub reachable: bool,
}

impl ClusterStatus {
    pub(crate) fn from_json(body: &Value) -> Result<Self, ClientError> {
        let text = |v: &Value| v.as_str().map(str::to_string);
        let members = body["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                Ok(Member {
                    id: m["id"]
                        .as_u64()
                        .ok_or_else(|| ClientError::Decode(format!("a member without id: {m}")))?,
                    api_addr: text(&m["api_addr"]).unwrap_or_default(),
                    raft_addr: text(&m["raft_addr"]).unwrap_or_default(),
                    role: text(&m["role"]).unwrap_or_default(),
                    applied_index: m["applied_index"].as_u64(),
                    lag: m["lag"].as_u64(),
                    reachable: m["reachable"] != false,
                })
            })
            .collect::<Result<_, ClientError>>()?;
        Ok(ClusterStatus {
            cluster_id: match &body["cluster_id"] {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            },
            leader: body["leader"].as_u64(),
            term: body["term"].as_u64(),
            commit_index: body["commit_index"].as_u64(),
            members,
            raw: body.clone(),
        })
    }
}

/// The answer to `POST /v1/snapshot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotResult {
    pub index: u64,
    pub snapshot_bytes: Option<u64>,
    pub took_ms: Option<u64>,
    pub purged_index: Option<u64>,
}

fn base64_engine() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Set `value` or `value_base64` on a JSON object.
pub(crate) fn put_value(item: &mut Value, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(text) => item["value"] = Value::from(text),
        Err(_) => item["value_base64"] = Value::from(base64_engine().encode(value)),
    }
}

/// The bytes of `value` or `value_base64` (empty when neither is there: `keys_only`).
pub(crate) fn value_of(item: &Value) -> Result<Vec<u8>, ClientError> {
    match (item["value"].as_str(), item["value_base64"].as_str()) {
        (Some(text), _) => Ok(text.as_bytes().to_vec()),
        (None, Some(b64)) => base64_engine()
            .decode(b64)
            .map_err(|e| ClientError::Decode(format!("value_base64: {e}"))),
        (None, None) => Ok(Vec::new()),
    }
}

/// The `index` of an answer's body.
pub(crate) fn index_of(body: &Value) -> Result<u64, ClientError> {
    body["index"]
        .as_u64()
        .ok_or_else(|| ClientError::Decode(format!("an answer without an index: {body}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_travel_as_text_or_base64_and_come_back_the_same() {
        for value in [b"plain".to_vec(), vec![0xff, 0x00, 0xfe], Vec::new()] {
            let kv = KeyValue {
                key: "k".into(),
                value: value.clone(),
                mod_index: 3,
                create_index: 2,
            };
            let json = kv.to_json();
            assert_eq!(
                json["value_base64"].is_string(),
                std::str::from_utf8(&value).is_err()
            );
            assert_eq!(KeyValue::from_json(&json).unwrap(), kv);
        }
    }

    #[test]
    fn a_txn_is_the_contract_body() {
        let txn = Txn {
            compare: vec![
                Compare::ModIndex {
                    key: "a".into(),
                    mod_index: 3,
                },
                Compare::Value {
                    key: "b".into(),
                    value: b"x".to_vec(),
                },
                Compare::Exists {
                    key: "c".into(),
                    exists: false,
                },
            ],
            success: vec![
                TxnOp::Put {
                    key: "a".into(),
                    value: b"1".to_vec(),
                },
                TxnOp::Delete { key: "b".into() },
                TxnOp::Get { key: "c".into() },
            ],
            failure: vec![TxnOp::Get { key: "a".into() }],
        };
        let expected: Value = serde_json::from_str(
            r#"{"compare": [{"key": "a", "mod_index": 3}, {"key": "b", "value": "x"}, {"key": "c", "exists": false}],
                "success": [{"put": {"key": "a", "value": "1"}}, {"delete": {"key": "b"}}, {"get": {"key": "c"}}],
                "failure": [{"get": {"key": "a"}}]}"#,
        )
        .unwrap();
        assert_eq!(txn.to_json(), expected);
    }

    #[test]
    fn a_txn_answer_decodes_every_result_kind() {
        let body: Value = serde_json::from_str(
            r#"{"succeeded": true, "index": 9, "results": [{"put": {"prev_mod_index": null}},
                {"delete": {"deleted": true}}, {"get": null},
                {"get": {"key": "c", "value_base64": "/w==", "mod_index": 4, "create_index": 1}}]}"#,
        )
        .unwrap();
        let result = TxnResult::from_json(&body).unwrap();
        assert_eq!(TxnResult::from_json(&result.to_json()).unwrap(), result);
        assert!(result.succeeded);
        assert_eq!(result.index, 9);
        assert_eq!(
            result.results,
            vec![
                TxnOpResult::Put {
                    prev_mod_index: None
                },
                TxnOpResult::Delete { deleted: true },
                TxnOpResult::Get(None),
                TxnOpResult::Get(Some(KeyValue {
                    key: "c".into(),
                    value: vec![0xff],
                    mod_index: 4,
                    create_index: 1
                })),
            ]
        );
    }

    #[test]
    fn levels_parse_by_name_and_refuse_others() {
        for level in [
            Consistency::Strong,
            Consistency::Linearizable,
            Consistency::Lease,
            Consistency::Leader,
            Consistency::Stale,
        ] {
            assert_eq!(level.as_str().parse::<Consistency>().unwrap(), level);
        }
        assert!("eventual".parse::<Consistency>().is_err());
    }
}
