//! `mirrorkv`: run a node (the default), or `mirrorkv ctl ...` (the command-line client), or
//! `mirrorkv restore ...` (a new data dir from a backup), or `mirrorkv certs ...` (certificates
//! for a dev or test cluster), or `mirrorkv completions SHELL` / `mirrorkv man`. One binary, so the client and the
//! restore tool always match the server's version.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use mirrorkv_node::ctl::CtlArgs;
use mirrorkv_node::restore::RestoreArgs;
use mirrorkv_node::{Flags, Listeners, LogFormat};
use tracing_subscriber::EnvFilter;

/// See the workspace Cargo.toml for why not the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "mirrorkv",
    version,
    about = "A replicated key-value store: every node a full mirror.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: Flags,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The command-line client (like etcdctl): get, put, del, scan, txn, cluster, member,
    /// snapshot, backup.
    Ctl(CtlArgs),
    /// Build a new data dir from a backup file.
    Restore(RestoreArgs),
    /// Certificates for a dev or test cluster: `certs init`, `certs node`.
    Certs(mirrorkv_node::certs::CertsArgs),
    /// Print a shell completion script: `mirrorkv completions bash > /etc/bash_completion.d/mirrorkv`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `mirrorkv man > /usr/share/man/man1/mirrorkv.1`.
    Man,
}

fn main() -> std::process::ExitCode {
    // Each node flag's help shows its default (`config::with_defaults_in_help`).
    let command = mirrorkv_node::config::with_defaults_in_help(Cli::command());
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Some(Command::Completions { shell }) => {
            let mut command = mirrorkv_node::config::with_defaults_in_help(Cli::command());
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "mirrorkv", &mut script);
            print_bytes(&script)
        }
        Some(Command::Man) => {
            let command = mirrorkv_node::config::with_defaults_in_help(Cli::command());
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .map_err(anyhow::Error::from)
                .and_then(|()| print_bytes(&page))
        }
        Some(Command::Ctl(args)) => run_ctl(args),
        Some(Command::Restore(args)) => mirrorkv_node::restore::run(args),
        Some(Command::Certs(args)) => mirrorkv_node::certs::run(args),
        None => run_node(cli.node),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Write `bytes` to standard output; a closed pipe (`| head`) is an error, not a panic.
fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

fn run_ctl(args: CtlArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(mirrorkv_node::ctl::run(args))
}

fn run_node(flags: Flags) -> anyhow::Result<()> {
    let config = flags.resolve()?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    match mirrorkv_node::open_files::raise_open_files_limit() {
        Ok(open_files) if open_files < config.api.max_connections as u64 + 256 => {
            tracing::warn!(open_files, max_connections = config.api.max_connections, "the open-files limit is below max_connections plus room for peers and storage; raise `ulimit -Hn` (LimitNOFILE) or lower --max-connections")
        }
        Ok(open_files) => tracing::debug!(open_files, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listeners = Listeners::bind(&config).await?;
        mirrorkv_node::run(config, listeners, shutdown_signal()).await
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
