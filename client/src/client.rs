//! `Client`: one handle on a cluster. Each request goes to the endpoint that answered last and,
//! when that one cannot take it, to the next, but only when sending it again cannot apply it
//! twice (a read, a write that never reached a node, or a write with an idempotency key).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::error::ClientError;
use crate::keys::{key_path, query_value};
use crate::types::{
    index_of, ClusterStatus, Consistency, DeleteResult, KeyValue, PutResult, Range, RangePage,
    Read, ReadOptions, SnapshotResult, Txn, TxnResult, WriteOptions,
};

/// How a `Client` behaves; `Default` is what most callers want.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Deadline of each HTTP request, in milliseconds.
    pub timeout_ms: u64,
    /// The read level of every read that does not set its own (`None`: the server's default,
    /// `linearizable`).
    pub consistency: Option<Consistency>,
    /// Pass the highest index this client has seen as `min_index` on every read, so a read on
    /// any node sees this client's own writes (and never goes back behind an earlier read).
    pub read_your_writes: bool,
    /// Give every write an `Idempotency-Key`, so a write whose answer was lost can be sent to
    /// the next endpoint without applying twice.
    pub idempotent_writes: bool,
    /// The largest answer body read, in bytes (a backup is streamed, not bounded). The API's
    /// own answers stay far below the default: a range page is at most 4 MiB by default, a
    /// transaction's answer at most 8 MiB.
    pub max_answer_bytes: usize,
    /// HTTPS: the CA to trust (and a client certificate, for nodes that ask for one). Endpoints
    /// given without a scheme are then `https://`.
    pub tls: Option<ClientTls>,
    /// The bearer token sent on every request (nodes started with `--auth`).
    pub token: Option<String>,
}

/// What a client needs for HTTPS. Only `ca_pem` is trusted: no system roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA certificate(s) that signed the nodes' certificates (PEM).
    pub ca_pem: Vec<u8>,
    /// A client certificate and its key, both PEM, one after the other (`--tls-client-ca`).
    pub identity_pem: Option<Vec<u8>>,
}

impl ClientTls {
    /// Read the CA file, and the client certificate and key files if given.
    pub fn from_files(
        ca: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self, ClientError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| ClientError::Invalid(format!("reading {}: {e}", path.display())))
        };
        let identity_pem = match identity {
            Some((cert, key)) => {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                Some(pem)
            }
            None => None,
        };
        Ok(Self {
            ca_pem: read(ca)?,
            identity_pem,
        })
    }

    /// `builder` trusting only the CA and presenting the identity, if any.
    pub fn configure(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, ClientError> {
        let invalid = |what: &str, e: reqwest::Error| ClientError::Invalid(format!("{what}: {e}"));
        let mut builder = builder.use_rustls_tls();
        for ca in reqwest::Certificate::from_pem_bundle(&self.ca_pem)
            .map_err(|e| invalid("the CA certificate", e))?
        {
            builder = builder.add_root_certificate(ca);
        }
        if let Some(identity) = &self.identity_pem {
            builder = builder.identity(
                reqwest::Identity::from_pem(identity)
                    .map_err(|e| invalid("the client certificate", e))?,
            );
        }
        Ok(builder)
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout_ms: 30_000,
            consistency: None,
            read_your_writes: true,
            idempotent_writes: true,
            max_answer_bytes: 64 * 1024 * 1024,
            tls: None,
            token: None,
        }
    }
}

/// A client of one cluster. Cheap to clone; clones share their connections and their
/// read-your-writes index.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// For answers that stream (watches, backups): no deadline on the whole answer, which may
    /// last hours; each read of it has one instead (`timeout_ms`).
    stream_http: reqwest::Client,
    endpoints: Arc<[String]>,
    options: ClientOptions,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// The highest index any answer carried.
    seen_index: AtomicU64,
    /// The endpoint that answered last: requests start there.
    preferred: AtomicUsize,
}

/// One request as `send` sends it to each endpoint in turn.
pub(crate) struct Call<'a> {
    pub(crate) method: Method,
    pub(crate) path_and_query: &'a str,
    /// The body and its content type (`Bytes`: each attempt shares it, none copies it).
    pub(crate) body: Option<(bytes::Bytes, &'static str)>,
    pub(crate) headers: &'a [(&'static str, String)],
    pub(crate) resend: Resend,
}

impl<'a> Call<'a> {
    /// A request without a body or headers.
    pub(crate) fn plain(method: Method, path_and_query: &'a str, resend: Resend) -> Self {
        Call {
            method,
            path_and_query,
            body: None,
            headers: &[],
            resend,
        }
    }
}

/// An answer taken for good: its status, headers and body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    response: reqwest::Response,
}

/// What may be sent again to the next endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resend {
    /// A read: it changes nothing.
    Read,
    /// A write with an idempotency key: a second copy answers the first's result.
    IdempotentWrite,
    /// A write without one: only if it never reached a node.
    Write,
}

/// May a request that got `status` go to the next endpoint? Only when the node did not take it
/// (503, 429, or 410 from a node removed from the cluster) or, for a request that cannot apply
/// twice, when its outcome is unknown (504).
fn try_next(status: StatusCode, resend: Resend) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::GONE
        || (resend != Resend::Write && status == StatusCode::GATEWAY_TIMEOUT)
}

/// The most keys the API serves in one range page.
pub const MAX_PAGE_KEYS: usize = 10_000;

/// A fresh idempotency key: 128 random bits in hex.
pub fn new_idempotency_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)?
        .to_str()
        .ok()?
        .trim_matches('"')
        .parse()
        .ok()
}

impl Client {
    /// A client of the nodes at `endpoints` (`HOST:PORT`, `http://HOST:PORT` or
    /// `https://HOST:PORT`), with the default options.
    pub fn new<S: Into<String>>(
        endpoints: impl IntoIterator<Item = S>,
    ) -> Result<Self, ClientError> {
        Self::with_options(endpoints, ClientOptions::default())
    }

    /// A client of the nodes at `endpoints` with `options`.
    pub fn with_options<S: Into<String>>(
        endpoints: impl IntoIterator<Item = S>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(Into::into)
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .map(|e| {
                if e.contains("://") {
                    e
                } else {
                    format!("{scheme}://{e}")
                }
            })
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::Invalid("no endpoints".into()));
        }
        let mut headers = HeaderMap::new();
        if let Some(token) = &options.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Invalid("a token of printable characters".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let builder = || {
            let builder = reqwest::Client::builder()
                .tcp_nodelay(true)
                .default_headers(headers.clone());
            match &options.tls {
                Some(tls) => tls.configure(builder),
                None => Ok(builder),
            }
        };
        let http = builder()?
            .timeout(Duration::from_millis(options.timeout_ms))
            .build()
            .map_err(|e| ClientError::Invalid(format!("building the HTTP client: {e}")))?;
        let stream_http = builder()?
            .connect_timeout(Duration::from_millis(options.timeout_ms))
            .build()
            .map_err(|e| ClientError::Invalid(format!("building the HTTP client: {e}")))?;
        Ok(Client {
            http,
            stream_http,
            endpoints: endpoints.into(),
            options,
            shared: Arc::default(),
        })
    }

    /// The highest index an answer has carried so far (the read-your-writes floor).
    pub fn seen_index(&self) -> u64 {
        self.shared.seen_index.load(Ordering::Relaxed)
    }

    fn saw(&self, index: Option<u64>) {
        if let Some(index) = index {
            self.shared.seen_index.fetch_max(index, Ordering::Relaxed);
        }
    }

    /// Send to the preferred endpoint, then the others in turn, until one answers for good.
    async fn send(&self, call: &Call<'_>) -> Result<Answer, ClientError> {
        self.send_on(&self.http, call).await
    }

    /// `send` through `http` (`stream_http` for answers that stream).
    async fn send_on(
        &self,
        http: &reqwest::Client,
        call: &Call<'_>,
    ) -> Result<Answer, ClientError> {
        let Call {
            method,
            path_and_query,
            body,
            headers,
            resend,
        } = call;
        let resend = *resend;
        let count = self.endpoints.len();
        let first = self.shared.preferred.load(Ordering::Relaxed) % count;
        let mut last = String::new();
        for attempt in 0..count {
            let at = (first + attempt) % count;
            let endpoint = &self.endpoints[at];
            let mut request = http.request(method.clone(), format!("{endpoint}{path_and_query}"));
            for (name, value) in headers.iter() {
                request = request.header(*name, value);
            }
            if let Some((bytes, content_type)) = body {
                request = request
                    .header("content-type", *content_type)
                    .body(bytes.clone());
            }
            match request.send().await {
                Ok(response) if attempt + 1 < count && try_next(response.status(), resend) => {
                    last = format!("{endpoint}: {}", response.status());
                }
                Ok(response) => {
                    self.shared.preferred.store(at, Ordering::Relaxed);
                    let (status, headers) = (response.status(), response.headers().clone());
                    self.saw(header_u64(&headers, "x-mirrorkv-index"));
                    return Ok(Answer {
                        status,
                        headers,
                        response,
                    });
                }
                // Not connected: nothing was sent, the next endpoint may take it.
                Err(e) if e.is_connect() || resend != Resend::Write => {
                    last = format!("{endpoint}: {e}");
                }
                Err(e) => {
                    return Err(ClientError::OutcomeUnknown {
                        endpoint: endpoint.clone(),
                        message: e.to_string(),
                    })
                }
            }
        }
        Err(ClientError::Unreachable { last })
    }

    /// `send`, then the answer's JSON body, or the API's error.
    pub(crate) async fn send_json(&self, call: &Call<'_>) -> Result<Value, ClientError> {
        let answer = self.send(call).await?;
        let bytes = self.read_body(answer.response).await?;
        if !answer.status.is_success() {
            return Err(ClientError::from_answer(answer.status, &bytes));
        }
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode(format!("a JSON answer: {e}")))?;
        self.saw(value["index"].as_u64());
        Ok(value)
    }

    /// An answer's whole body, refused past `max_answer_bytes`.
    async fn read_body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, ClientError> {
        let max = self.options.max_answer_bytes;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ClientError::Decode(format!("reading the answer: {e}")))?
        {
            if body.len() + chunk.len() > max {
                return Err(ClientError::Decode(format!(
                    "an answer over max_answer_bytes ({max})"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The query string of a read: its level and its `min_index`.
    fn read_query(&self, options: &ReadOptions) -> Vec<String> {
        let mut query = Vec::new();
        if let Some(level) = options.consistency.or(self.options.consistency) {
            query.push(format!("consistency={}", level.as_str()));
        }
        let floor = self
            .options
            .read_your_writes
            .then(|| self.seen_index())
            .filter(|&i| i > 0);
        if let Some(min_index) = options.min_index.max(floor) {
            query.push(format!("min_index={min_index}"));
        }
        if let Some(ms) = options.max_staleness_ms {
            query.push(format!("max_staleness_ms={ms}"));
        }
        query
    }

    /// The headers of a write and how it may be resent.
    pub(crate) fn write_headers(
        &self,
        options: &WriteOptions,
    ) -> (Vec<(&'static str, String)>, Resend) {
        let mut headers = Vec::new();
        if let Some(m) = options.if_mod_index {
            headers.push(("if-match", format!("\"{m}\"")));
        }
        if options.if_absent {
            headers.push(("if-none-match", "*".to_string()));
        }
        let key = options
            .idempotency_key
            .clone()
            .or_else(|| self.options.idempotent_writes.then(new_idempotency_key));
        match key {
            Some(key) => {
                headers.push(("idempotency-key", key));
                (headers, Resend::IdempotentWrite)
            }
            None => (headers, Resend::Write),
        }
    }

    /// Read `key` at the client's level.
    pub async fn get(&self, key: &str) -> Result<Read<Option<KeyValue>>, ClientError> {
        self.get_with(key, &ReadOptions::default()).await
    }

    /// Read `key` with `options`. A missing key is `value: None` (its read index still counts).
    pub async fn get_with(
        &self,
        key: &str,
        options: &ReadOptions,
    ) -> Result<Read<Option<KeyValue>>, ClientError> {
        check_key(key)?;
        let path = with_query(
            format!("/v1/kv/{}", key_path(key)),
            &self.read_query(options),
        );
        let answer = self
            .send(&Call::plain(Method::GET, &path, Resend::Read))
            .await?;
        let headers = answer.headers;
        let status = answer.status;
        let bytes = self.read_body(answer.response).await?;
        let value = match status {
            StatusCode::NOT_FOUND if headers.contains_key("x-mirrorkv-index") => None,
            status if status.is_success() => Some(KeyValue {
                key: key.to_string(),
                value: bytes,
                mod_index: header_u64(&headers, "etag").unwrap_or(0),
                create_index: header_u64(&headers, "x-mirrorkv-create-index").unwrap_or(0),
            }),
            status => return Err(ClientError::from_answer(status, &bytes)),
        };
        Ok(read_of(&headers, value))
    }

    /// Set `key` to `value`.
    pub async fn put(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
    ) -> Result<PutResult, ClientError> {
        self.put_with(key, value, &WriteOptions::default()).await
    }

    /// Set `key` to `value` under `options`' conditions (`precondition_failed` when one fails).
    pub async fn put_with(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        options: &WriteOptions,
    ) -> Result<PutResult, ClientError> {
        check_key(key)?;
        let (headers, resend) = self.write_headers(options);
        let path = match options.lease {
            Some(lease) => format!("/v1/kv/{}?lease={lease}", key_path(key)),
            None => format!("/v1/kv/{}", key_path(key)),
        };
        let body = Some((value.into().into(), "application/octet-stream"));
        let call = Call {
            method: Method::PUT,
            path_and_query: &path,
            body,
            headers: &headers,
            resend,
        };
        let answer = self.send_json(&call).await?;
        Ok(PutResult {
            index: index_of(&answer)?,
            prev_mod_index: answer["prev_mod_index"].as_u64(),
        })
    }

    /// Delete `key`.
    pub async fn delete(&self, key: &str) -> Result<DeleteResult, ClientError> {
        self.delete_with(key, &WriteOptions::default()).await
    }

    /// Delete `key` under `options`' conditions.
    pub async fn delete_with(
        &self,
        key: &str,
        options: &WriteOptions,
    ) -> Result<DeleteResult, ClientError> {
        check_key(key)?;
        let (headers, resend) = self.write_headers(options);
        let path = format!("/v1/kv/{}", key_path(key));
        let call = Call {
            headers: &headers,
            ..Call::plain(Method::DELETE, &path, resend)
        };
        let answer = self.send_json(&call).await?;
        Ok(DeleteResult {
            index: index_of(&answer)?,
            deleted: answer["deleted"] == true,
        })
    }

    /// One page of `range`.
    pub async fn range(
        &self,
        range: &Range,
        options: &ReadOptions,
    ) -> Result<Read<RangePage>, ClientError> {
        let mut query = Vec::new();
        if let Some(prefix) = &range.prefix {
            query.push(format!("prefix={}", query_value(prefix)));
        }
        if let Some(start) = &range.start {
            query.push(format!("start={}", query_value(start)));
        }
        if let Some(end) = &range.end {
            query.push(format!("end={}", query_value(end)));
        }
        if let Some(limit) = range.limit {
            query.push(format!("limit={limit}"));
        }
        if range.keys_only {
            query.push("keys_only=true".into());
        }
        query.extend(self.read_query(options));
        let path = with_query("/v1/kv".into(), &query);
        let answer = self
            .send(&Call::plain(Method::GET, &path, Resend::Read))
            .await?;
        let headers = answer.headers;
        let bytes = self.read_body(answer.response).await?;
        if !answer.status.is_success() {
            return Err(ClientError::from_answer(answer.status, &bytes));
        }
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode(format!("a range answer: {e}")))?;
        let items = body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(KeyValue::from_json)
            .collect::<Result<_, _>>()?;
        let page = RangePage {
            items,
            next: body["next"].as_str().map(str::to_string),
        };
        let mut read = read_of(&headers, page);
        read.index = index_of(&body)?;
        Ok(read)
    }

    /// Up to `max_keys` keys of `range`, page after page. Each page is read at its own index
    /// (never below the first's, with read-your-writes); the answer's index is the first page's.
    pub async fn range_all(
        &self,
        range: &Range,
        max_keys: usize,
        options: &ReadOptions,
    ) -> Result<Read<RangePage>, ClientError> {
        if max_keys == 0 {
            return Err(ClientError::Invalid("max_keys must be at least 1".into()));
        }
        let mut range = range.clone();
        range.limit = Some(max_keys.min(MAX_PAGE_KEYS));
        let mut all = self.range(&range, options).await?;
        while let Some(next) = all.value.next.clone() {
            let left = max_keys.saturating_sub(all.value.items.len());
            if left == 0 {
                break;
            }
            range.start = Some(next);
            range.limit = Some(left.min(MAX_PAGE_KEYS));
            let page = self.range(&range, options).await?;
            // Every page holds at least one key (the API's rule), so the walk always ends; a
            // page without one would loop here forever.
            if page.value.items.is_empty() && page.value.next.is_some() {
                return Err(ClientError::Decode(
                    "a range page with no keys but a next key".into(),
                ));
            }
            all.value.items.extend(page.value.items);
            all.value.next = page.value.next;
        }
        Ok(all)
    }

    /// Run `txn` (always linearizable: it is one log entry).
    pub async fn txn(&self, txn: &Txn) -> Result<TxnResult, ClientError> {
        let body = txn.to_json().to_string().into_bytes();
        self.txn_json(body, &WriteOptions::default()).await
    }

    /// Run a transaction given as the `POST /v1/txn` JSON body.
    pub async fn txn_json(
        &self,
        body: Vec<u8>,
        options: &WriteOptions,
    ) -> Result<TxnResult, ClientError> {
        let (headers, resend) = self.write_headers(options);
        let call = Call {
            method: Method::POST,
            path_and_query: "/v1/txn",
            body: Some((body.into(), "application/json")),
            headers: &headers,
            resend,
        };
        let answer = self.send_json(&call).await?;
        TxnResult::from_json(&answer)
    }

    /// Leader, term and every member's state, as the first node to answer sees them.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        let body = self
            .send_json(&Call::plain(Method::GET, "/v1/cluster", Resend::Read))
            .await?;
        ClusterStatus::from_json(&body)
    }

    /// Add a mirror (a non-voting member). Returns the membership change's index.
    pub async fn add_mirror(
        &self,
        id: u64,
        api_addr: &str,
        raft_addr: &str,
    ) -> Result<u64, ClientError> {
        let body = json!({"id": id, "api_addr": api_addr, "raft_addr": raft_addr});
        self.membership(Method::POST, "/v1/cluster/members".into(), Some(body))
            .await
    }

    /// Make a caught-up mirror a voter. Returns the membership change's index.
    pub async fn promote(&self, id: u64) -> Result<u64, ClientError> {
        self.membership(
            Method::POST,
            format!("/v1/cluster/members/{id}/promote"),
            None,
        )
        .await
    }

    /// Remove a member. Returns the membership change's index.
    pub async fn remove_member(&self, id: u64) -> Result<u64, ClientError> {
        self.membership(Method::DELETE, format!("/v1/cluster/members/{id}"), None)
            .await
    }

    async fn membership(
        &self,
        method: Method,
        path: String,
        body: Option<Value>,
    ) -> Result<u64, ClientError> {
        let body = body.map(|b| (b.to_string().into(), "application/json"));
        // Not idempotent by key; a membership change is sent once (`Resend::Write`).
        let call = Call {
            body,
            ..Call::plain(method, &path, Resend::Write)
        };
        let answer = self.send_json(&call).await?;
        index_of(&answer)
    }

    /// Build a snapshot on the first endpoint that answers and compact its log.
    pub async fn snapshot(&self) -> Result<SnapshotResult, ClientError> {
        let body = self
            .send_json(&Call::plain(Method::POST, "/v1/snapshot", Resend::Write))
            .await?;
        Ok(SnapshotResult {
            index: index_of(&body)?,
            snapshot_bytes: body["snapshot_bytes"].as_u64(),
            took_ms: body["took_ms"].as_u64(),
            purged_index: body["purged_index"].as_u64(),
        })
    }

    /// Start streaming a consistent backup (read at `options`' level).
    pub async fn backup(&self, options: &ReadOptions) -> Result<Backup, ClientError> {
        let path = with_query("/v1/backup".into(), &self.read_query(options));
        let answer = self
            .send_on(
                &self.stream_http,
                &Call::plain(Method::GET, &path, Resend::Read),
            )
            .await?;
        if !answer.status.is_success() {
            let bytes = self.read_body(answer.response).await?;
            return Err(ClientError::from_answer(answer.status, &bytes));
        }
        Ok(Backup {
            index: header_u64(&answer.headers, "x-mirrorkv-index"),
            response: answer.response,
            chunk_timeout: Duration::from_millis(self.options.timeout_ms),
        })
    }
}

/// A backup being received, a chunk at a time.
pub struct Backup {
    /// The log index the backup is a copy at.
    pub index: Option<u64>,
    response: reqwest::Response,
    /// Longest wait for the next chunk (`ClientOptions::timeout_ms`).
    chunk_timeout: Duration,
}

impl Backup {
    /// The next bytes of the backup, `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, ClientError> {
        let timeout = self.chunk_timeout;
        match tokio::time::timeout(timeout, self.response.chunk()).await {
            Ok(chunk) => {
                chunk.map_err(|e| ClientError::Decode(format!("the backup stream broke off: {e}")))
            }
            Err(_) => Err(ClientError::Decode(format!(
                "the backup stream sent nothing for {} ms (timeout_ms)",
                timeout.as_millis()
            ))),
        }
    }
}

fn check_key(key: &str) -> Result<(), ClientError> {
    if key.is_empty() {
        return Err(ClientError::Invalid("the key must not be empty".into()));
    }
    Ok(())
}

fn with_query(path: String, query: &[String]) -> String {
    if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

fn read_of<T>(headers: &HeaderMap, value: T) -> Read<T> {
    Read {
        index: header_u64(headers, "x-mirrorkv-index").unwrap_or(0),
        node: header_u64(headers, "x-mirrorkv-node"),
        consistency: headers
            .get("x-mirrorkv-consistency")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        value,
    }
}

pub mod auth;
pub mod lease;
pub mod watch;

#[cfg(test)]
mod tests;
