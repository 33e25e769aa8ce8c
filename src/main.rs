//! The `outbox-relay` binary: parse the command line, load the config, init logging, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outbox_relay::config::Config;

/// Relays PostgreSQL transactional-outbox rows to Kafka over logical replication.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check every database prerequisite (wal_level, slots, role, tables, publication),
    /// printing one line each with the fix for what fails. Exits 1 if any fails.
    Check {
        /// The relay's TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Check { config } => runtime.block_on(check(config)),
    }
}

async fn check(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let lines = outbox_relay::check::run(&config).await;
    for line in &lines {
        println!("{line}");
    }
    if lines.iter().all(|l| l.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
