//! `mirrorkv ctl`: the command-line client, like `etcdctl`. It is a subcommand of the one
//! `mirrorkv` binary so that operators install one file and the client always speaks the same
//! API version as the server next to it.
//!
//! Every request goes through `mirrorkv-client`: `--endpoints` lists nodes, and a request goes
//! to the next one only when that cannot apply anything twice (see `mirrorkv_client::client`);
//! writes carry an idempotency key. One function per command; output is for people by default
//! and JSON with `--json`.

mod auth;
mod lease;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use mirrorkv_client::{
    Client, ClientOptions, ClusterStatus, Consistency, Event, EventKind, KeyValue, Range,
    ReadOptions, TxnOpResult, WatchMessage, WatchOptions, WatchTarget, WriteOptions,
};
use serde_json::{json, Value};

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
    /// Speak HTTPS, trusting only this CA (PEM); endpoints without a scheme become https://.
    #[arg(long, global = true, env = "MIRRORKV_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM), for nodes started with --tls-client-ca; needs --key.
    #[arg(
        long = "cert",
        global = true,
        env = "MIRRORKV_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<std::path::PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(
        long = "key",
        global = true,
        env = "MIRRORKV_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<std::path::PathBuf>,
    /// The bearer token of nodes started with --auth (prefer the environment variable: a
    /// flag shows in the process list).
    #[arg(long, global = true, env = "MIRRORKV_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Print a key's value.
    Get { key: String },
    /// Set a key; the value is the argument, or standard input if absent.
    Put {
        key: String,
        value: Option<String>,
        /// Attach the key to this lease: it is deleted when the lease ends.
        #[arg(long)]
        lease: Option<u64>,
    },
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
    /// Print each change of a key, or of every key under --prefix, one line each, as it
    /// happens; resumes by itself if the connection breaks.
    Watch {
        /// The key to watch (or give --prefix).
        #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
        key: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
        /// Start with the changes at this index (default: only changes from now on).
        #[arg(long)]
        from_index: Option<u64>,
        /// Exit after this many events (default: run until interrupted).
        #[arg(long)]
        max_events: Option<u64>,
    },
    /// Lease commands: grant, keepalive, revoke, get.
    Lease {
        #[command(subcommand)]
        command: lease::LeaseCommand,
    },
    /// Roles and tokens (nodes started with --auth; admin only).
    Auth {
        #[command(subcommand)]
        command: auth::AuthCommand,
    },
    /// Hold lock NAME while COMMAND runs (`mirrorkv ctl lock NAME -- COMMAND...`); the command
    /// gets the fencing token in MIRRORKV_FENCING_TOKEN and the lock key in MIRRORKV_LOCK_KEY.
    Lock {
        name: String,
        /// TTL of the lock's lease: how long the lock outlives a holder that dies.
        #[arg(long, default_value_t = 10)]
        ttl_s: u64,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Campaign in election NAME with VALUE: print when elected, hold until interrupted.
    Elect {
        name: String,
        #[arg(required_unless_present = "observe")]
        value: Option<String>,
        /// Print the leader's value now and at every change instead of campaigning.
        #[arg(long)]
        observe: bool,
        /// TTL of the campaign's lease.
        #[arg(long, default_value_t = 10)]
        ttl_s: u64,
    },
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

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
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
    let consistency = args
        .consistency
        .as_deref()
        .map(str::parse::<Consistency>)
        .transpose()?;
    let tls = match &args.ca {
        Some(ca) => Some(mirrorkv_client::ClientTls::from_files(
            ca,
            args.client_cert.as_deref().zip(args.client_key.as_deref()),
        )?),
        None if args.client_cert.is_some() => anyhow::bail!("--cert needs --ca"),
        None => None,
    };
    let options = ClientOptions {
        timeout_ms: args.timeout_ms,
        consistency,
        tls,
        token: args.token,
        ..ClientOptions::default()
    };
    let client = Client::with_options(args.endpoints, options)?;
    let json = args.json;
    match args.command {
        CtlCommand::Get { key } => get(&client, &key, json).await,
        CtlCommand::Put { key, value, lease } => put(&client, &key, value, lease, json).await,
        CtlCommand::Del { key } => del(&client, &key, json).await,
        CtlCommand::Scan {
            prefix,
            limit,
            keys_only,
        } => scan(&client, &prefix, limit, keys_only, json).await,
        CtlCommand::Txn { file } => txn(&client, &file, json).await,
        CtlCommand::Cluster {
            command: ClusterCommand::Status,
        } => cluster_status(&client, json).await,
        CtlCommand::Member { command } => member(&client, command, json).await,
        CtlCommand::Snapshot => snapshot(&client, json).await,
        CtlCommand::Backup => backup(&client, json).await,
        CtlCommand::Watch {
            key,
            prefix,
            from_index,
            max_events,
        } => {
            let target = match (key, prefix) {
                (Some(key), _) => WatchTarget::Key(key),
                (None, Some(prefix)) => WatchTarget::Prefix(prefix),
                (None, None) => bail!("give a KEY or --prefix"),
            };
            let options = WatchOptions {
                from_index,
                consistency,
                ..WatchOptions::default()
            };
            watch(&client, target, options, max_events, json).await
        }
        CtlCommand::Lease { command } => lease::lease(&client, command, json).await,
        CtlCommand::Auth { command } => auth::auth(&client, command, json).await,
        CtlCommand::Lock {
            name,
            ttl_s,
            command,
        } => lease::lock(&client, &name, ttl_s, &command).await,
        CtlCommand::Elect {
            name,
            value,
            observe,
            ttl_s,
        } => lease::elect(&client, &name, value, observe, ttl_s).await,
    }
}

async fn get(client: &Client, key: &str, json: bool) -> anyhow::Result<()> {
    let read = client.get(key).await?;
    let Some(found) = read.value else {
        bail!("not_found: no key {key:?} (read at index {})", read.index);
    };
    if json {
        let mut item = found.to_json();
        item["index"] = Value::from(read.index);
        return print_json(&item);
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&found.value)?;
    if !found.value.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    Ok(())
}

async fn put(
    client: &Client,
    key: &str,
    value: Option<String>,
    lease: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let value = match value {
        Some(value) => value.into_bytes(),
        None => read_input(Path::new("-"))?,
    };
    let options = WriteOptions {
        lease,
        ..WriteOptions::default()
    };
    let put = client.put_with(key, value, &options).await?;
    if json {
        print_json(&json!({"index": put.index, "prev_mod_index": put.prev_mod_index}))
    } else {
        println!("OK index {}", put.index);
        Ok(())
    }
}

async fn del(client: &Client, key: &str, json: bool) -> anyhow::Result<()> {
    let deleted = client.delete(key).await?;
    if json {
        return print_json(&json!({"index": deleted.index, "deleted": deleted.deleted}));
    }
    let what = if deleted.deleted {
        "deleted"
    } else {
        "not found"
    };
    println!("{what} (index {})", deleted.index);
    Ok(())
}

async fn scan(
    client: &Client,
    prefix: &str,
    limit: usize,
    keys_only: bool,
    json: bool,
) -> anyhow::Result<()> {
    let range = Range {
        keys_only,
        ..Range::prefix(prefix)
    };
    // Every page at the asked level; each continues where the last stopped.
    let all = client
        .range_all(&range, limit, &ReadOptions::default())
        .await?;
    if json {
        let items: Vec<Value> = all.value.items.iter().map(KeyValue::to_json).collect();
        return print_json(&json!({"index": all.index, "items": items, "next": all.value.next}));
    }
    for item in &all.value.items {
        if keys_only {
            println!("{}", item.key);
        } else {
            println!("{} = {}", item.key, item.value_text());
        }
    }
    Ok(())
}

async fn txn(client: &Client, file: &Path, json: bool) -> anyhow::Result<()> {
    let body = read_input(file)?;
    serde_json::from_slice::<Value>(&body)
        .with_context(|| format!("{} is not JSON", file.display()))?;
    let answer = client.txn_json(body, &WriteOptions::default()).await?;
    if json {
        return print_json(&answer.to_json());
    }
    let outcome = if answer.succeeded {
        "SUCCEEDED"
    } else {
        "FAILED compare"
    };
    println!("{outcome} (index {})", answer.index);
    for result in &answer.results {
        match result {
            TxnOpResult::Put { prev_mod_index } => {
                println!("put: prev_mod_index {}", json!(prev_mod_index))
            }
            TxnOpResult::Delete { deleted } => println!("delete: deleted {deleted}"),
            TxnOpResult::Get(None) => println!("get: not found"),
            TxnOpResult::Get(Some(found)) => {
                println!("get: {} = {}", found.key, found.value_text())
            }
        }
    }
    Ok(())
}

async fn cluster_status(client: &Client, json: bool) -> anyhow::Result<()> {
    let status = client.cluster_status().await?;
    if json {
        print_json(&status.raw)
    } else {
        print_status(&status);
        Ok(())
    }
}

async fn member(client: &Client, command: MemberCommand, json: bool) -> anyhow::Result<()> {
    let (index, done) = match command {
        MemberCommand::Add {
            id,
            api_addr,
            raft_addr,
        } => (
            client.add_mirror(id, &api_addr, &raft_addr).await?,
            format!("added mirror {id}"),
        ),
        MemberCommand::Promote { id } => {
            (client.promote(id).await?, format!("promoted {id} to voter"))
        }
        MemberCommand::Remove { id } => (client.remove_member(id).await?, format!("removed {id}")),
    };
    if json {
        print_json(&json!({ "index": index }))
    } else {
        println!("{done} (membership index {index})");
        Ok(())
    }
}

async fn snapshot(client: &Client, json: bool) -> anyhow::Result<()> {
    let done = client.snapshot().await?;
    if json {
        return print_json(&json!({
            "index": done.index,
            "snapshot_bytes": done.snapshot_bytes,
            "took_ms": done.took_ms,
            "purged_index": done.purged_index,
        }));
    }
    let show = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    println!(
        "snapshot at index {} ({} bytes, {} ms); log purged up to {}",
        done.index,
        show(done.snapshot_bytes),
        show(done.took_ms),
        show(done.purged_index)
    );
    Ok(())
}

async fn backup(client: &Client, json: bool) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        bail!("refusing to write a backup to a terminal; redirect it: mirrorkv ctl backup > FILE");
    }
    let mut backup = client.backup(&ReadOptions::default()).await?;
    let mut out = std::io::stdout().lock();
    let mut bytes = 0u64;
    while let Some(chunk) = backup.chunk().await? {
        out.write_all(&chunk)?;
        bytes += chunk.len() as u64;
    }
    out.flush()?;
    if json {
        eprintln!("{}", json!({"index": backup.index, "bytes": bytes}));
    } else {
        let index = backup.index.map_or("?".to_string(), |i| i.to_string());
        eprintln!("backup at index {index}: {bytes} bytes");
    }
    Ok(())
}

/// `cluster status` as a table.
async fn watch(
    client: &Client,
    target: WatchTarget,
    options: WatchOptions,
    max_events: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let mut stream = client.watch(target, options);
    let mut printed = 0u64;
    while max_events.is_none_or(|max| printed < max) {
        let WatchMessage::Event(event) = stream.next().await? else {
            continue;
        };
        let line = if json {
            event_json(&event).to_string()
        } else {
            match &event.kind {
                EventKind::Put { value, .. } => {
                    let value = KeyValue {
                        key: event.key.clone(),
                        value: value.clone(),
                        mod_index: event.index,
                        create_index: 0,
                    };
                    format!("{} put {} {}", event.index, event.key, value.value_text())
                }
                EventKind::Delete => format!("{} delete {}", event.index, event.key),
            }
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        printed += 1;
    }
    Ok(())
}

/// An event as the contract writes it on a watch stream.
fn event_json(event: &Event) -> Value {
    let mut line = json!({"index": event.index, "key": event.key,
                          "prev_mod_index": event.prev_mod_index});
    match &event.kind {
        EventKind::Put {
            value,
            mod_index,
            create_index,
        } => {
            let item = KeyValue {
                key: event.key.clone(),
                value: value.clone(),
                mod_index: *mod_index,
                create_index: *create_index,
            }
            .to_json();
            line["type"] = json!("put");
            for field in ["value", "value_base64", "mod_index", "create_index"] {
                if !item[field].is_null() {
                    line[field] = item[field].clone();
                }
            }
        }
        EventKind::Delete => line["type"] = json!("delete"),
    }
    line
}

fn print_status(status: &ClusterStatus) {
    let show = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    println!(
        "cluster {}  leader {}  term {}  commit index {}",
        status.cluster_id.as_deref().unwrap_or("-"),
        show(status.leader),
        show(status.term),
        show(status.commit_index)
    );
    let rows: Vec<[String; 7]> = status
        .members
        .iter()
        .map(|m| {
            let role = if Some(m.id) == status.leader {
                format!("{} (leader)", m.role)
            } else {
                m.role.clone()
            };
            [
                m.id.to_string(),
                role,
                m.api_addr.clone(),
                m.raft_addr.clone(),
                show(m.applied_index),
                show(m.lag),
                if m.reachable { "yes" } else { "no" }.to_string(),
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
