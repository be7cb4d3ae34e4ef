//! `mirrorkv restore`: build a new data dir from a backup (`GET /v1/backup`, `mirrorkv ctl
//! backup`). The node started on it forms a new cluster, of itself alone or of the members
//! given with `--initial-cluster` (restore each of them from the same file), holding exactly
//! the backup's data at the backup's index.
//!
//! All or nothing: the store is built in a hidden sibling directory and renamed into place only
//! after every check passed (magic, version, every frame's checksum, key order, the end frame's
//! counts), so a corrupted or truncated backup leaves no data dir behind.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use mirrorkv_storage::{NodeId, NodeInfo};

use crate::config::{cluster_id, parse_initial_cluster};

/// Arguments of `mirrorkv restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup file (`-` reads standard input).
    #[arg(long)]
    pub from: PathBuf,
    /// The data dir to create; it must not exist or be empty.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The id of the node that will run on this data dir.
    #[arg(long)]
    pub id: NodeId,
    /// Members of the new cluster, `1=RAFT_ADDR/API_ADDR,...` (the same on every member).
    #[arg(long, conflicts_with_all = ["api_addr", "raft_addr"])]
    pub initial_cluster: Option<String>,
    /// For a new single-node cluster: this node's API address.
    #[arg(long, requires = "raft_addr")]
    pub api_addr: Option<String>,
    /// For a new single-node cluster: this node's raft address.
    #[arg(long, requires = "api_addr")]
    pub raft_addr: Option<String>,
}

fn members(args: &RestoreArgs) -> anyhow::Result<BTreeMap<NodeId, NodeInfo>> {
    if let Some(spec) = &args.initial_cluster {
        let members = parse_initial_cluster(spec)?;
        if !members.contains_key(&args.id) {
            bail!("--initial-cluster does not list --id {}", args.id);
        }
        return Ok(members);
    }
    match (&args.api_addr, &args.raft_addr) {
        (Some(api_addr), Some(raft_addr)) => Ok(BTreeMap::from([(
            args.id,
            NodeInfo {
                api_addr: api_addr.clone(),
                raft_addr: raft_addr.clone(),
            },
        )])),
        _ => bail!("give --initial-cluster, or --api-addr and --raft-addr for a single node"),
    }
}

fn is_empty_dir(path: &Path) -> anyhow::Result<bool> {
    Ok(std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .next()
        .is_none())
}

/// Run `mirrorkv restore`; prints what it restored and how to start the node.
pub fn run(args: RestoreArgs) -> anyhow::Result<()> {
    if args.id == 0 {
        bail!("--id must be a positive integer");
    }
    let members = members(&args)?;
    let data_dir = &args.data_dir;
    if data_dir.exists() && !is_empty_dir(data_dir)? {
        bail!(
            "{} exists and is not empty; restore only creates a new data dir",
            data_dir.display()
        );
    }
    let name = data_dir
        .file_name()
        .context("--data-dir must name a directory")?
        .to_string_lossy()
        .to_string();
    let parent = match data_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    let staging = parent.join(format!(".{name}.restoring"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing a stale {}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging)?;
    let input: Box<dyn Read> = if args.from.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(&args.from)
                .with_context(|| format!("opening {}", args.from.display()))?,
        )
    };
    let summary = match mirrorkv_storage::backup::restore(
        BufReader::with_capacity(1 << 20, input),
        &staging.join("db"),
        args.id,
        &members,
    ) {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            bail!(
                "refused {}: {e}; nothing was written to {}",
                args.from.display(),
                data_dir.display()
            );
        }
    };
    let new_cluster_id = cluster_id(&members);
    let published = crate::write_cluster_id(&staging, &new_cluster_id).and_then(|()| {
        if data_dir.exists() {
            std::fs::remove_dir(data_dir)?;
        }
        std::fs::rename(&staging, data_dir)?;
        std::fs::File::open(&parent)?.sync_all()?;
        Ok(())
    });
    if let Err(e) = published {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e.context("publishing the restored data dir"));
    }
    let me = &members[&args.id];
    let spec: Vec<String> = members
        .iter()
        .map(|(id, node)| format!("{id}={}/{}", node.raft_addr, node.api_addr))
        .collect();
    println!(
        "restored index {} ({} entries, {} bytes) into {} for node {} of new cluster {new_cluster_id}",
        summary.index,
        summary.entries,
        summary.bytes,
        data_dir.display(),
        args.id
    );
    println!(
        "start it with: mirrorkv --id {} --data-dir {} --api-addr {} --raft-addr {} --initial-cluster {}",
        args.id,
        data_dir.display(),
        me.api_addr,
        me.raft_addr,
        spec.join(",")
    );
    Ok(())
}
