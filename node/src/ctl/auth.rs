//! `mirrorkv ctl auth role|token`: roles and tokens (`mirrorkv_client::client::auth`).

use clap::Subcommand;
use mirrorkv_client::{Client, Permission};
use serde_json::json;

use super::print_json;

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Roles: rights by key prefix, and admin.
    Role {
        #[command(subcommand)]
        command: RoleCommand,
    },
    /// Tokens: create (the secret is printed once), list, revoke.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Create or replace role NAME with these rights (each flag may repeat; "" is every key).
    Put {
        name: String,
        /// May read keys under PREFIX.
        #[arg(long, value_name = "PREFIX")]
        read: Vec<String>,
        /// May put and delete keys under PREFIX.
        #[arg(long, value_name = "PREFIX")]
        write: Vec<String>,
        /// May read, put and delete keys under PREFIX.
        #[arg(long, value_name = "PREFIX")]
        read_write: Vec<String>,
        /// Administers the cluster: members, snapshots, backups, roles and tokens, metrics,
        /// and every key.
        #[arg(long)]
        admin: bool,
    },
    /// List every role and its rights.
    List,
    /// Remove role NAME (its tokens then may do nothing).
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token acting as ROLE; prints the secret, which is never shown again.
    Create {
        #[arg(long)]
        role: String,
        /// Expire after this many seconds (default: never).
        #[arg(long)]
        ttl_s: Option<u64>,
    },
    /// List tokens: ids, roles, expiry; never secrets.
    List,
    /// Revoke token ID.
    Revoke { id: String },
}

fn permissions(read: Vec<String>, write: Vec<String>, read_write: Vec<String>) -> Vec<Permission> {
    let with = |prefixes: Vec<String>, read: bool, write: bool| {
        prefixes.into_iter().map(move |prefix| Permission {
            prefix,
            read,
            write,
        })
    };
    with(read, true, false)
        .chain(with(write, false, true))
        .chain(with(read_write, true, true))
        .collect()
}

pub async fn auth(client: &Client, command: AuthCommand, json: bool) -> anyhow::Result<()> {
    match command {
        AuthCommand::Role { command } => role(client, command, json).await,
        AuthCommand::Token { command } => token(client, command, json).await,
    }
}

async fn role(client: &Client, command: RoleCommand, json: bool) -> anyhow::Result<()> {
    match command {
        RoleCommand::Put {
            name,
            read,
            write,
            read_write,
            admin,
        } => {
            let index = client
                .put_role(&name, admin, &permissions(read, write, read_write))
                .await?;
            print_changed(json, "name", &name, index, &format!("role {name} set"))
        }
        RoleCommand::List => {
            let roles = client.roles().await?;
            if json {
                return print_json(&roles);
            }
            for role in roles["roles"].as_array().into_iter().flatten() {
                let rights: Vec<String> = role["permissions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        let r = if p["read"] == true { "r" } else { "" };
                        let w = if p["write"] == true { "w" } else { "" };
                        format!("{:?}:{r}{w}", p["prefix"].as_str().unwrap_or_default())
                    })
                    .collect();
                let admin = if role["admin"] == true { " admin" } else { "" };
                let name = role["name"].as_str().unwrap_or_default();
                println!("{name}{admin} {}", rights.join(" "));
            }
            Ok(())
        }
        RoleCommand::Delete { name } => {
            let index = client.delete_role(&name).await?;
            print_changed(json, "name", &name, index, &format!("role {name} deleted"))
        }
    }
}

async fn token(client: &Client, command: TokenCommand, json: bool) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { role, ttl_s } => {
            let created = client.create_token(&role, ttl_s).await?;
            match json {
                true => print_json(&json!({
                    "id": created.id,
                    "token": created.token,
                    "role": created.role,
                    "expires_at_ms": created.expires_at_ms,
                    "index": created.index,
                })),
                false => {
                    eprintln!(
                        "token {} for role {} (shown once; store it now)",
                        created.id, created.role
                    );
                    println!("{}", created.token);
                    Ok(())
                }
            }
        }
        TokenCommand::List => {
            let tokens = client.tokens().await?;
            if json {
                return print_json(&tokens);
            }
            for token in tokens["tokens"].as_array().into_iter().flatten() {
                let expiry = match token["expires_at_ms"].as_u64() {
                    None => "never expires".to_string(),
                    Some(_) if token["expired"] == true => "expired".to_string(),
                    Some(at) => format!("expires at {at} ms"),
                };
                println!(
                    "{} role={} {expiry}",
                    token["id"].as_str().unwrap_or_default(),
                    token["role"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            let index = client.revoke_token(&id).await?;
            print_changed(json, "id", &id, index, &format!("token {id} revoked"))
        }
    }
}

/// What a change printed: `{"<field>": value, "index": I}` with `--json`, else `<done> at index I`.
fn print_changed(
    json: bool,
    field: &str,
    value: &str,
    index: u64,
    done: &str,
) -> anyhow::Result<()> {
    if json {
        return print_json(&json!({ field: value, "index": index }));
    }
    println!("{done} at index {index}");
    Ok(())
}
