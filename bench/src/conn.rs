//! One bench client's connection: HTTP/1.1 over hyper's own client connection for mirrorkv
//! (`Http1`, lean on purpose: the bench measures the server, not the client), etcd's gRPC client
//! for etcd (`Conn`), and the bulk load of a cell's key space.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use jepsen_lite::cluster::encode_key;

use crate::cells::{bench_key, bench_value, OpKind, Store, REQUEST_TIMEOUT_MS};

/// One HTTP/1.1 connection to a mirrorkv node, made again after an error.
///
/// The bench drives mirrorkv through hyper's own client connection rather than reqwest: on
/// these 2 cores the load generator shares the CPU with the cluster it measures, and reqwest's
/// pool, URL parsing and middleware cost about as much CPU per request as a node's whole HTTP
/// handling. etcd is driven through etcd-client, a thin layer over tonic's gRPC channel.
pub(crate) struct Http1 {
    addr: String,
    /// With `--tls`: the node's TLS and token (`tls`).
    tls: Option<crate::tls::MirrorTls>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Http1 {
    /// A client for the node at `base`, which connects on its first request.
    pub(crate) fn new(base: &str) -> Http1 {
        let addr = base
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string();
        Http1 {
            tls: crate::tls::mirror(&addr),
            addr,
            sender: None,
        }
    }

    /// A client for the node at `base`, connected now (within `REQUEST_TIMEOUT_MS`).
    async fn open(base: &str) -> Result<Http1, String> {
        let mut http = Http1::new(base);
        let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
        let connected = tokio::time::timeout(timeout, Self::connect(&http.addr, http.tls.as_ref()))
            .await
            .map_err(|_| {
                format!(
                    "no connection to {} within {REQUEST_TIMEOUT_MS} ms",
                    http.addr
                )
            })?;
        http.sender = Some(connected?);
        Ok(http)
    }

    async fn connect(
        addr: &str,
        tls: Option<&crate::tls::MirrorTls>,
    ) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        match tls {
            None => Self::http1_over(stream, addr).await,
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(crate::tls::MirrorTls::server_name(), stream)
                    .await
                    .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                Self::http1_over(stream, addr).await
            }
        }
    }

    /// HTTP/1.1 over `io`; a task drives the connection until the sender is dropped or the
    /// connection fails.
    async fn http1_over<I>(io: I, addr: &str) -> Result<SendRequest<Full<Bytes>>, String>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Send one request and read its whole answer.
    pub(crate) async fn request(
        &mut self,
        method: Method,
        path_and_query: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), String> {
        let work = async {
            let sender = match &mut self.sender {
                Some(sender) if !sender.is_closed() => sender,
                _ => self
                    .sender
                    .insert(Self::connect(&self.addr, self.tls.as_ref()).await?),
            };
            sender.ready().await.map_err(|e| e.to_string())?;
            let mut request = Request::builder();
            if let Some(token) = self.tls.as_ref().and_then(|tls| tls.token.as_deref()) {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = request
                .method(method)
                .uri(path_and_query)
                .header(header::HOST, &self.addr)
                .header(header::CONTENT_TYPE, content_type)
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| e.to_string())?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            // Read the whole body, as a real client would.
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        let answer =
            match tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), work).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT_MS} ms")),
            };
        if answer.is_err() {
            // The connection may hold a half-read answer: start afresh.
            self.sender = None;
        }
        answer
    }
}

/// One client's connection to one node.
pub(crate) enum Conn {
    Mirror {
        http: Http1,
        level: String,
    },
    Etcd {
        kv: etcd_client::KvClient,
        serializable: bool,
    },
}

impl Conn {
    pub(crate) async fn run(&mut self, op: OpKind, key: &str, value: &[u8]) -> Result<(), String> {
        match self {
            Conn::Mirror { http, level } => {
                const BYTES: &str = "application/octet-stream";
                let (status, body) = match op {
                    OpKind::Get => {
                        let path = format!("/v1/kv/{}?consistency={level}", encode_key(key));
                        http.request(Method::GET, &path, BYTES, Vec::new()).await
                    }
                    OpKind::Put => {
                        let path = format!("/v1/kv/{}", encode_key(key));
                        http.request(Method::PUT, &path, BYTES, value.to_vec())
                            .await
                    }
                    OpKind::Txn => {
                        let body = serde_json::to_vec(&serde_json::json!({
                            "compare": [{"key": key, "exists": true}],
                            "success": [{"put": {"key": key, "value": String::from_utf8_lossy(value)}}],
                        }))
                        .map_err(|e| e.to_string())?;
                        http.request(Method::POST, "/v1/txn", "application/json", body)
                            .await
                    }
                }?;
                if status.is_success() || (op == OpKind::Get && status.as_u16() == 404) {
                    Ok(())
                } else {
                    Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
                }
            }
            Conn::Etcd { kv, serializable } => {
                use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
                match op {
                    OpKind::Get => {
                        let options = serializable.then(|| GetOptions::new().with_serializable());
                        kv.get(key, options).await.map(|_| ())
                    }
                    OpKind::Put => kv.put(key, value, None).await.map(|_| ()),
                    OpKind::Txn => kv
                        .txn(
                            Txn::new()
                                .when([Compare::version(key, CompareOp::Greater, 0)])
                                .and_then([TxnOp::put(key, value, None)]),
                        )
                        .await
                        .map(|_| ()),
                }
                .map_err(|e| e.to_string())
            }
        }
    }
}

/// An etcd client of the one member at `endpoint`, each request bounded by
/// `REQUEST_TIMEOUT_MS`.
pub(crate) async fn etcd_connect(endpoint: &str) -> anyhow::Result<etcd_client::Client> {
    let mut options = etcd_client::ConnectOptions::new()
        .with_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .with_connect_timeout(Duration::from_secs(5));
    if let Some(tls) = crate::tls::etcd(endpoint) {
        options = options.with_tls(tls);
    }
    Ok(etcd_client::Client::connect([endpoint], Some(options)).await?)
}

pub(crate) async fn connect(store: Store, endpoint: String, level: &str) -> anyhow::Result<Conn> {
    Ok(match store {
        Store::Mirrorkv => Conn::Mirror {
            http: Http1::open(&endpoint).await.map_err(anyhow::Error::msg)?,
            level: level.to_string(),
        },
        Store::Etcd => {
            let client = etcd_connect(&endpoint).await?;
            Conn::Etcd {
                kv: client.kv_client(),
                serializable: level == "stale",
            }
        }
    })
}

pub(crate) async fn load_batch(
    conn: &mut Conn,
    keys: &[u64],
    value_bytes: usize,
) -> anyhow::Result<()> {
    match conn {
        Conn::Mirror { http, .. } => {
            let success: Vec<serde_json::Value> = keys
                .iter()
                .map(|&k| {
                    serde_json::json!({"put": {"key": bench_key(k), "value": String::from_utf8_lossy(&bench_value(value_bytes, k))}})
                })
                .collect();
            let body = serde_json::to_vec(&serde_json::json!({ "success": success }))?;
            let (status, body) = http
                .request(Method::POST, "/v1/txn", "application/json", body)
                .await
                .map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                status.is_success(),
                "preload: {status}: {}",
                String::from_utf8_lossy(&body)
            );
            Ok(())
        }
        Conn::Etcd { kv, .. } => {
            let ops: Vec<etcd_client::TxnOp> = keys
                .iter()
                .map(|&k| etcd_client::TxnOp::put(bench_key(k), bench_value(value_bytes, k), None))
                .collect();
            kv.clone()
                .txn(etcd_client::Txn::new().and_then(ops))
                .await?;
            Ok(())
        }
    }
}
