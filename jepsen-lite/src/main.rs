//! `jepsen-lite`: `check FILE` decides whether a recorded history is linearizable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use jepsen_lite::model::{KeyValue, Register};
use jepsen_lite::{check, parse, CheckOptions, Verdict};

#[derive(Parser)]
#[command(
    name = "jepsen-lite",
    version,
    about = "Linearizability checking for mirrorkv (and Jepsen histories)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModelName {
    Register,
    Kv,
}

#[derive(Subcommand)]
enum Command {
    /// Check a history (JSON lines, Jepsen/Knossos EDN, or a Jepsen console log).
    /// Exit code: 0 linearizable, 1 not, 2 unknown, 3 the history could not be read.
    Check {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "register")]
        model: ModelName,
        /// Give up (verdict unknown) after this long.
        #[arg(long, default_value_t = 60)]
        time_limit_s: u64,
        /// Print the whole result as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check {
            file,
            model,
            time_limit_s,
            json,
        } => {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("jepsen-lite: reading {}: {e}", file.display());
                    return ExitCode::from(3);
                }
            };
            let operations = match parse::parse(&text)
                .map_err(|e| e.to_string())
                .and_then(|h| h.operations().map_err(|e| e.to_string()))
            {
                Ok(ops) => ops,
                Err(e) => {
                    eprintln!("jepsen-lite: {}: {e}", file.display());
                    return ExitCode::from(3);
                }
            };
            let options = CheckOptions {
                time_limit: Duration::from_secs(time_limit_s),
                ..CheckOptions::default()
            };
            let result = match model {
                ModelName::Register => check(&Register, &operations, options),
                ModelName::Kv => check(&KeyValue, &operations, options),
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&result).expect("result serializes")
                );
            } else {
                for key in &result.keys {
                    if let Some(violation) = &key.violation {
                        let name = if key.key.is_empty() {
                            "(the register)"
                        } else {
                            key.key.as_str()
                        };
                        println!("key {name}: not linearizable");
                        println!(
                            "  longest linearizable prefix ({} ops):",
                            violation.longest_prefix.len()
                        );
                        for (id, state) in &violation.longest_prefix {
                            println!("    {:?} -> state {state}", describe(&operations[*id]));
                        }
                        println!(
                            "  cannot place: {:?} in state {}",
                            describe(&operations[violation.failed_op]),
                            violation.state_before_failed_op
                        );
                    }
                }
                println!(
                    "{}: {:?} ({} operations, {} keys, {} ms)",
                    file.display(),
                    result.verdict,
                    result.operations,
                    result.keys.len(),
                    result.elapsed_ms
                );
            }
            match result.verdict {
                Verdict::Linearizable => ExitCode::SUCCESS,
                Verdict::NotLinearizable => ExitCode::from(1),
                Verdict::Unknown => ExitCode::from(2),
            }
        }
    }
}

fn describe(op: &jepsen_lite::Operation) -> String {
    format!("process {} {:?} -> {:?}", op.process, op.input, op.output)
}
