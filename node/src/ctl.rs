//! `mirrorkv ctl`: the command-line client, like `etcdctl`. It is a subcommand of the one
//! `mirrorkv` binary so that operators install one file and the client always speaks the same
//! API version as the server next to it.
//!
//! `--endpoints` lists nodes; a request goes to the next one when a node cannot be reached or
//! answers that it is unavailable (503/429, or a 504 on a read), which never applies anything
//! twice. Output is for people by default and JSON with `--json`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Options of every `mirrorkv ctl` command.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// API addresses of cluster nodes (HOST:PORT, comma-separated); tried in order.
    #[arg(
        long,
        env = "MIRRORKV_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub endpoints: Vec<String>,
    /// Print the API's JSON instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
    /// Read level: strong, linearizable, lease, leader or stale.
    #[arg(long, global = true)]
    pub consistency: Option<String>,
    /// Deadline of each HTTP request.
    #[arg(long, global = true, default_value_t = 30_000)]
    pub timeout_ms: u64,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Print a key's value.
    Get { key: String },
    /// Set a key; the value is the argument, or standard input if absent.
    Put { key: String, value: Option<String> },
    /// Delete a key.
    Del { key: String },
    /// List keys with a prefix (every page, up to --limit keys).
    Scan {
        #[arg(long, default_value = "")]
        prefix: String,
        /// Most keys listed.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
        #[arg(long)]
        keys_only: bool,
    },
    /// Run a transaction from a JSON file in the `POST /v1/txn` format (`-`: standard input).
    Txn { file: PathBuf },
    /// Cluster commands.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Membership commands.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Build a snapshot on the first reachable endpoint and compact its log.
    Snapshot,
    /// Write a consistent backup to standard output (`mirrorkv ctl backup > FILE`).
    Backup,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, and every member's role, applied index and lag.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Add a mirror (a non-voting member that catches up by snapshot and log).
    Add {
        id: u64,
        #[arg(long)]
        api_addr: String,
        #[arg(long)]
        raft_addr: String,
    },
    /// Make a caught-up mirror a voter.
    Promote { id: u64 },
    /// Remove a member (the leader hands over if it removes itself).
    Remove { id: u64 },
}

/// Everything but RFC 3986's unreserved characters is percent-encoded in a query value.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// In a key's path, `/` stays as it is (the API takes `/` inside keys).
const KEY_PATH: &AsciiSet = &QUERY_VALUE.remove(b'/');

fn key_path(key: &str) -> String {
    utf8_percent_encode(key, KEY_PATH).to_string()
}

fn query_value(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

struct Client {
    http: reqwest::Client,
    endpoints: Vec<String>,
}

/// May the same request go to the next endpoint? Only when nothing can have been applied.
fn try_next(status: StatusCode, is_read: bool) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE
        || status == StatusCode::TOO_MANY_REQUESTS
        || (is_read && status == StatusCode::GATEWAY_TIMEOUT)
}

impl Client {
    /// Send to each endpoint in turn until one answers for good.
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        json: bool,
    ) -> anyhow::Result<reqwest::Response> {
        let is_read = method == Method::GET;
        let mut last_error = String::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let url = format!("http://{endpoint}{path_and_query}");
            let mut request = self.http.request(method.clone(), &url);
            if let Some(body) = &body {
                request = request.body(body.clone());
                if json {
                    request = request.header("content-type", "application/json");
                }
            }
            match request.send().await {
                Ok(response)
                    if i + 1 < self.endpoints.len() && try_next(response.status(), is_read) =>
                {
                    last_error = format!("{endpoint}: {}", response.status());
                }
                Ok(response) => return Ok(response),
                // Not connected: nothing was sent, the next endpoint may take it.
                Err(e) if e.is_connect() => last_error = format!("{endpoint}: {e}"),
                Err(e) if is_read => last_error = format!("{endpoint}: {e}"),
                Err(e) => bail!("{endpoint}: {e} (the write may or may not have been applied)"),
            }
        }
        bail!("no endpoint answered; last error: {last_error}")
    }

    /// `send`, then the answer's JSON, or the API's error.
    async fn json(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        json: bool,
    ) -> anyhow::Result<Value> {
        json_ok(self.send(method, path_and_query, body, json).await?).await
    }
}

/// The API's error message, or the status line.
async fn error_of(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(body) if body["error"].is_object() => {
            let error = &body["error"];
            let retry = if error["retryable"].as_bool() == Some(true) {
                " (retryable)"
            } else {
                ""
            };
            let mut message = format!(
                "{status}: {}: {}{retry}",
                error["code"].as_str().unwrap_or("error"),
                error["message"].as_str().unwrap_or("")
            );
            if body["outcome"] == "unknown" {
                message.push_str("; outcome unknown: the write may or may not have been applied");
            }
            anyhow::anyhow!(message)
        }
        _ => anyhow::anyhow!("{status}: {text}"),
    }
}

async fn json_ok(response: reqwest::Response) -> anyhow::Result<Value> {
    if !response.status().is_success() {
        return Err(error_of(response).await);
    }
    response.json().await.context("reading the answer")
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn value_text(item: &Value) -> String {
    match (item["value"].as_str(), item["value_base64"].as_str()) {
        (Some(value), _) => value.to_string(),
        (None, Some(b64)) => format!("base64:{b64}"),
        _ => String::new(),
    }
}

fn read_input(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
        Ok(bytes)
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// Run one `mirrorkv ctl` command.
pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    if args.endpoints.is_empty() {
        bail!("--endpoints is empty");
    }
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_millis(args.timeout_ms))
        .build()?;
    let client = Client {
        http,
        endpoints: args.endpoints.clone(),
    };
    let level = args
        .consistency
        .as_ref()
        .map(|c| format!("consistency={}", query_value(c)));
    let with_level = |path: String| match &level {
        Some(level) if path.contains('?') => format!("{path}&{level}"),
        Some(level) => format!("{path}?{level}"),
        None => path,
    };
    match args.command {
        CtlCommand::Get { key } => {
            let response = client
                .send(
                    Method::GET,
                    &with_level(format!("/v1/kv/{}", key_path(&key))),
                    None,
                    false,
                )
                .await?;
            if !response.status().is_success() {
                return Err(error_of(response).await);
            }
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim_matches('"').to_string())
            };
            let mod_index = header("etag");
            let create_index = header("x-mirrorkv-create-index");
            let index = header("x-mirrorkv-index");
            let value = response.bytes().await?;
            if args.json {
                let mut item = serde_json::json!({"key": key, "mod_index": mod_index.and_then(|m| m.parse::<u64>().ok()), "create_index": create_index.and_then(|c| c.parse::<u64>().ok()), "index": index.and_then(|i| i.parse::<u64>().ok())});
                match std::str::from_utf8(&value) {
                    Ok(text) => item["value"] = Value::from(text),
                    Err(_) => {
                        use base64::Engine;
                        item["value_base64"] =
                            Value::from(base64::engine::general_purpose::STANDARD.encode(&value))
                    }
                }
                print_json(&item)?;
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(&value)?;
                if !value.ends_with(b"\n") {
                    out.write_all(b"\n")?;
                }
            }
        }
        CtlCommand::Put { key, value } => {
            let value = match value {
                Some(value) => value.into_bytes(),
                None => read_input(&PathBuf::from("-"))?,
            };
            let body = client
                .json(
                    Method::PUT,
                    &format!("/v1/kv/{}", key_path(&key)),
                    Some(value),
                    false,
                )
                .await?;
            if args.json {
                print_json(&body)?;
            } else {
                println!("OK index {}", body["index"]);
            }
        }
        CtlCommand::Del { key } => {
            let body = client
                .json(
                    Method::DELETE,
                    &format!("/v1/kv/{}", key_path(&key)),
                    None,
                    false,
                )
                .await?;
            if args.json {
                print_json(&body)?;
            } else if body["deleted"] == true {
                println!("deleted (index {})", body["index"]);
            } else {
                println!("not found (index {})", body["index"]);
            }
        }
        CtlCommand::Scan {
            prefix,
            limit,
            keys_only,
        } => {
            let mut items = Vec::new();
            let mut start: Option<String> = None;
            let mut index = Value::Null;
            // Every page at the asked level; `next` continues where the last page stopped.
            while items.len() < limit {
                let page_limit = (limit - items.len()).min(10_000);
                let mut path = format!(
                    "/v1/kv?prefix={}&limit={page_limit}&keys_only={keys_only}",
                    query_value(&prefix)
                );
                if let Some(start) = &start {
                    path.push_str(&format!("&start={}", query_value(start)));
                }
                let page = client
                    .json(Method::GET, &with_level(path), None, false)
                    .await?;
                if index.is_null() {
                    index = page["index"].clone();
                }
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                match page["next"].as_str() {
                    Some(next) => start = Some(next.to_string()),
                    None => break,
                }
            }
            if args.json {
                print_json(&serde_json::json!({"index": index, "items": items, "next": start}))?;
            } else {
                for item in &items {
                    let key = item["key"].as_str().unwrap_or("");
                    if keys_only {
                        println!("{key}");
                    } else {
                        println!("{key} = {}", value_text(item));
                    }
                }
            }
        }
        CtlCommand::Txn { file } => {
            let body = read_input(&file)?;
            serde_json::from_slice::<Value>(&body)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let answer = client
                .json(
                    Method::POST,
                    &with_level("/v1/txn".to_string()),
                    Some(body),
                    true,
                )
                .await?;
            if args.json {
                print_json(&answer)?;
            } else {
                let succeeded = answer["succeeded"] == true;
                println!(
                    "{} (index {})",
                    if succeeded {
                        "SUCCEEDED"
                    } else {
                        "FAILED compare"
                    },
                    answer["index"]
                );
                for result in answer["results"].as_array().cloned().unwrap_or_default() {
                    if let Some(put) = result.get("put") {
                        println!("put: prev_mod_index {}", put["prev_mod_index"]);
                    } else if let Some(delete) = result.get("delete") {
                        println!("delete: deleted {}", delete["deleted"]);
                    } else if let Some(get) = result.get("get") {
                        if get.is_null() {
                            println!("get: not found");
                        } else {
                            println!(
                                "get: {} = {}",
                                get["key"].as_str().unwrap_or(""),
                                value_text(get)
                            );
                        }
                    }
                }
            }
        }
        CtlCommand::Cluster {
            command: ClusterCommand::Status,
        } => {
            let body = client.json(Method::GET, "/v1/cluster", None, false).await?;
            if args.json {
                print_json(&body)?;
            } else {
                print_status(&body);
            }
        }
        CtlCommand::Member { command } => {
            let (method, path, body) = match &command {
                MemberCommand::Add {
                    id,
                    api_addr,
                    raft_addr,
                } => (
                    Method::POST,
                    "/v1/cluster/members".to_string(),
                    Some(serde_json::to_vec(
                        &serde_json::json!({"id": id, "api_addr": api_addr, "raft_addr": raft_addr}),
                    )?),
                ),
                MemberCommand::Promote { id } => (
                    Method::POST,
                    format!("/v1/cluster/members/{id}/promote"),
                    None,
                ),
                MemberCommand::Remove { id } => {
                    (Method::DELETE, format!("/v1/cluster/members/{id}"), None)
                }
            };
            let answer = client.json(method, &path, body, true).await?;
            if args.json {
                print_json(&answer)?;
            } else {
                match command {
                    MemberCommand::Add { id, .. } => {
                        println!("added mirror {id} (membership index {})", answer["index"])
                    }
                    MemberCommand::Promote { id } => {
                        println!(
                            "promoted {id} to voter (membership index {})",
                            answer["index"]
                        )
                    }
                    MemberCommand::Remove { id } => {
                        println!("removed {id} (membership index {})", answer["index"])
                    }
                }
            }
        }
        CtlCommand::Snapshot => {
            let answer = client
                .json(Method::POST, "/v1/snapshot", None, false)
                .await?;
            if args.json {
                print_json(&answer)?;
            } else {
                println!(
                    "snapshot at index {} ({} bytes, {} ms); log purged up to {}",
                    answer["index"],
                    answer["snapshot_bytes"],
                    answer["took_ms"],
                    answer["purged_index"]
                );
            }
        }
        CtlCommand::Backup => {
            use std::io::IsTerminal;
            if std::io::stdout().is_terminal() {
                bail!("refusing to write a backup to a terminal; redirect it: mirrorkv ctl backup > FILE");
            }
            let mut response = client
                .send(
                    Method::GET,
                    &with_level("/v1/backup".to_string()),
                    None,
                    false,
                )
                .await?;
            if !response.status().is_success() {
                return Err(error_of(response).await);
            }
            let index = response
                .headers()
                .get("x-mirrorkv-index")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            let mut out = std::io::stdout().lock();
            let mut bytes = 0u64;
            while let Some(chunk) = response
                .chunk()
                .await
                .context("the backup stream broke off")?
            {
                out.write_all(&chunk)?;
                bytes += chunk.len() as u64;
            }
            out.flush()?;
            if args.json {
                eprintln!(
                    "{}",
                    serde_json::json!({"index": index.parse::<u64>().ok(), "bytes": bytes})
                );
            } else {
                eprintln!("backup at index {index}: {bytes} bytes");
            }
        }
    }
    Ok(())
}

/// `cluster status` as a table.
fn print_status(body: &Value) {
    let show = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "cluster {}  leader {}  term {}  commit index {}",
        show(&body["cluster_id"]),
        show(&body["leader"]),
        show(&body["term"]),
        show(&body["commit_index"])
    );
    let leader = body["leader"].as_u64();
    let rows: Vec<[String; 7]> = body["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let role = match (m["id"].as_u64() == leader, m["role"].as_str()) {
                (true, Some(role)) => format!("{role} (leader)"),
                (_, role) => role.unwrap_or("-").to_string(),
            };
            [
                show(&m["id"]),
                role,
                show(&m["api_addr"]),
                show(&m["raft_addr"]),
                show(&m["applied_index"]),
                show(&m["lag"]),
                if m["reachable"] == false {
                    "no".into()
                } else {
                    "yes".into()
                },
            ]
        })
        .collect();
    let header = ["ID", "ROLE", "API", "RAFT", "APPLIED", "LAG", "REACHABLE"];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}
