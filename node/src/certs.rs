//! `mirrorkv certs`: certificates for a dev or test cluster (rcgen, ECDSA P-256).
//!
//! - `certs init --dir DIR --nodes N [--hosts H,...]` writes a CA (`ca.pem`, `ca-key.pem`), a
//!   certificate and key per node (`node<i>.pem`, `node<i>-key.pem`) and a client's
//!   (`client.pem`, `client-key.pem`).
//! - `certs node --dir DIR --id I` issues one more node certificate from that CA (a node that
//!   joins later, or a rotation followed by SIGHUP).
//!
//! A node's certificate serves both ports and both directions (server and client
//! authentication). Its DNS names are `mirrorkv-node-<i>` (what peers check, raft-net's
//! `tls.rs`), `localhost` and the `--hosts` names; its IP addresses 127.0.0.1, ::1 and the
//! `--hosts` addresses. Private keys are written with mode 0600. Production clusters should use
//! their own CA; these files are for development and tests.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use mirrorkv_raft_net::tls::node_name;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Largest `--nodes` of `certs init`.
const MAX_NODES: u64 = 1000;
/// Longest validity, in days (`--days`).
const MAX_DAYS: u32 = 36_500;

#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Write a CA and the certificates of N nodes and one client into DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Nodes 1..=N get a certificate.
        #[arg(long)]
        nodes: u64,
        #[command(flatten)]
        issue: IssueArgs,
    },
    /// Issue node ID's certificate from the CA that `certs init` wrote in DIR (`ca-key.pem`).
    Node {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        issue: IssueArgs,
    },
}

#[derive(Debug, Args)]
struct IssueArgs {
    /// More names or IP addresses the node certificates are valid for (comma-separated).
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<String>,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Replace files that exist.
    #[arg(long)]
    force: bool,
    /// Issue certificates that expired yesterday (tests of refusal).
    #[arg(long, hide = true)]
    expired: bool,
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.command {
        CertsCommand::Init { dir, nodes, issue } => {
            if nodes == 0 || nodes > MAX_NODES {
                bail!("--nodes must be 1..={MAX_NODES}");
            }
            check_days(&issue)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let (ca_params, ca_key) = (ca_params(&issue)?, KeyPair::generate()?);
            let ca = ca_params.self_signed(&ca_key)?;
            write(&dir.join("ca.pem"), &ca.pem(), false, issue.force)?;
            write(
                &dir.join("ca-key.pem"),
                &ca_key.serialize_pem(),
                true,
                issue.force,
            )?;
            let issuer = Issuer::new(ca_params, ca_key);
            for id in 1..=nodes {
                issue_node(&dir, id, &issue, &issuer)?;
            }
            let (cert, key) = issue_one(
                &issuer,
                &issue,
                vec![SanType::DnsName("mirrorkv-client".try_into()?)],
                false,
            )?;
            write(&dir.join("client.pem"), &cert, false, issue.force)?;
            write(&dir.join("client-key.pem"), &key, true, issue.force)?;
            println!(
                "wrote ca.pem, ca-key.pem, node1..{nodes}.pem (+ -key.pem), client.pem, client-key.pem to {}",
                dir.display()
            );
            Ok(())
        }
        CertsCommand::Node { dir, id, issue } => {
            if id == 0 {
                bail!("--id must be a positive integer");
            }
            check_days(&issue)?;
            let ca_key = KeyPair::from_pem(
                &std::fs::read_to_string(dir.join("ca-key.pem"))
                    .with_context(|| format!("reading {}", dir.join("ca-key.pem").display()))?,
            )
            .context("parsing ca-key.pem")?;
            // The issuer is known by its name and key: the name `certs init` gives its CA.
            let issuer = Issuer::new(ca_params(&issue)?, ca_key);
            issue_node(&dir, id, &issue, &issuer)?;
            println!(
                "wrote node{id}.pem and node{id}-key.pem to {}",
                dir.display()
            );
            Ok(())
        }
    }
}

fn check_days(issue: &IssueArgs) -> anyhow::Result<()> {
    if issue.days == 0 || issue.days > MAX_DAYS {
        bail!("--days must be 1..={MAX_DAYS}");
    }
    Ok(())
}

fn validity(params: &mut CertificateParams, issue: &IssueArgs) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    if issue.expired {
        params.not_before = now - day * 2;
        params.not_after = now - day;
    } else {
        // An hour back: a peer whose clock is a little behind still accepts it.
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + day * i32::try_from(issue.days)?;
    }
    Ok(())
}

fn ca_params(issue: &IssueArgs) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "mirrorkv development CA");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    // The CA outlives the certificates it signs by as long again; `--expired` is for those.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(2 * i64::from(issue.days));
    Ok(params)
}

fn issue_node(
    dir: &Path,
    id: u64,
    issue: &IssueArgs,
    issuer: &Issuer<'_, KeyPair>,
) -> anyhow::Result<()> {
    let mut names = vec![
        SanType::DnsName(node_name(id).try_into()?),
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::IpAddress(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
    ];
    for host in &issue.hosts {
        let host = host.trim();
        if host.is_empty() {
            continue;
        }
        names.push(match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.to_string()
                    .try_into()
                    .with_context(|| format!("--hosts: {host:?} is not a DNS name"))?,
            ),
        });
    }
    let (cert, key) = issue_one(issuer, issue, names, true)?;
    write(
        &dir.join(format!("node{id}.pem")),
        &cert,
        false,
        issue.force,
    )?;
    write(
        &dir.join(format!("node{id}-key.pem")),
        &key,
        true,
        issue.force,
    )
}

/// A certificate (PEM) and its new key (PEM) for `names`; a node's serves too.
fn issue_one(
    issuer: &Issuer<'_, KeyPair>,
    issue: &IssueArgs,
    names: Vec<SanType>,
    server: bool,
) -> anyhow::Result<(String, String)> {
    let mut params = CertificateParams::default();
    if let Some(SanType::DnsName(first)) = names.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    params.subject_alt_names = names;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if server {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    validity(&mut params, issue)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Write `text` to `path` (mode 0600 for a key); an existing file is an error without `force`.
fn write(path: &Path, text: &str, private: bool, force: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .mode(if private { 0o600 } else { 0o644 });
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).with_context(|| {
        if path.exists() && !force {
            format!("{} exists (--force replaces it)", path.display())
        } else {
            format!("writing {}", path.display())
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
