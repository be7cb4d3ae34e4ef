//! `mirrorkv ctl lease|lock|elect`: leases, locks and elections (`mirrorkv_client::lease`).

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use mirrorkv_client::{Client, Election, Lock, WatchMessage, WatchOptions, WatchTarget};
use serde_json::json;

use super::print_json;

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease of TTL_S seconds; prints its id.
    Grant { ttl_s: u64 },
    /// Keep lease ID alive until interrupted (a keepalive every third of its TTL), or once.
    Keepalive {
        id: u64,
        #[arg(long)]
        once: bool,
    },
    /// End lease ID now and delete its keys.
    Revoke { id: u64 },
    /// Print lease ID's TTL, time left and keys.
    Get { id: u64 },
}

pub async fn lease(client: &Client, command: LeaseCommand, json: bool) -> anyhow::Result<()> {
    match command {
        LeaseCommand::Grant { ttl_s } => {
            let id = client.lease_grant(ttl_s).await?;
            match json {
                true => print_json(&json!({"id": id, "ttl_s": ttl_s})),
                false => {
                    println!("{id}");
                    Ok(())
                }
            }
        }
        LeaseCommand::Keepalive { id, once } => loop {
            let ttl_s = client.lease_keepalive(id).await?;
            match json {
                true => print_json(&json!({"id": id, "ttl_s": ttl_s}))?,
                false => println!("lease {id} renewed for {ttl_s} s"),
            }
            if once {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ttl_s * 1000 / 3)) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        },
        LeaseCommand::Revoke { id } => {
            let keys_deleted = client.lease_revoke(id).await?;
            match json {
                true => print_json(&json!({"id": id, "keys_deleted": keys_deleted})),
                false => {
                    println!("lease {id} revoked, {keys_deleted} keys deleted");
                    Ok(())
                }
            }
        }
        LeaseCommand::Get { id } => {
            let info = client.lease_info(id).await?;
            if json {
                return print_json(&json!({"id": info.id, "ttl_s": info.ttl_s,
                    "remaining_ms": info.remaining_ms, "keys": info.keys}));
            }
            println!(
                "lease {} ttl {} s, {} ms left, {} keys",
                info.id,
                info.ttl_s,
                info.remaining_ms,
                info.keys.len()
            );
            for key in info.keys {
                println!("{key}");
            }
            Ok(())
        }
    }
}

/// Hold lock `name` while `command` runs, with the fencing token in
/// `MIRRORKV_FENCING_TOKEN`; exits with the command's status. If the lock's lease is lost
/// meanwhile the command is killed and this fails.
pub async fn lock(
    client: &Client,
    name: &str,
    ttl_s: u64,
    command: &[String],
) -> anyhow::Result<()> {
    let Some((program, args)) = command.split_first() else {
        bail!("give the command to run after --");
    };
    let lock = Lock::acquire(client, name, ttl_s).await?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("MIRRORKV_FENCING_TOKEN", lock.fencing_token().to_string())
        .env("MIRRORKV_LOCK_KEY", lock.key())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let status = tokio::select! {
        status = child.wait() => status?,
        reason = lock.lease().lost() => {
            let _ = child.kill().await;
            bail!("lost lock {name} while the command ran ({reason}); the command was killed");
        }
    };
    lock.release().await?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

/// Campaign in election `name` with `value`; print when elected and hold until interrupted
/// (then resign). With `observe`, print the leader's value now and at every change instead.
pub async fn elect(
    client: &Client,
    name: &str,
    value: Option<String>,
    observe: bool,
    ttl_s: u64,
) -> anyhow::Result<()> {
    if observe {
        return observe_election(client, name).await;
    }
    let Some(value) = value else {
        bail!("give the VALUE to campaign with, or --observe");
    };
    let election = Election::campaign(client, name, value.as_bytes(), ttl_s).await?;
    println!("elected: {value}");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        reason = election.lease().lost() => bail!("lost the election: {reason}"),
    }
    election.resign().await?;
    Ok(())
}

async fn observe_election(client: &Client, name: &str) -> anyhow::Result<()> {
    let mut shown: Option<String> = None;
    loop {
        let leader = Election::leader(client, name).await?;
        let now = leader.map(|kv| kv.value_text());
        if now != shown {
            println!("{}", now.as_deref().unwrap_or("(no leader)"));
            shown = now;
        }
        let mut watch = client.watch(
            WatchTarget::Prefix(format!("_elect/{name}/")),
            WatchOptions::default(),
        );
        // The next change of the queue, then look again.
        loop {
            tokio::select! {
                message = watch.next() => if let WatchMessage::Event(_) = message? { break },
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }
}
