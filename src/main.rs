//! The `outbox-relay` binary: parse the command line, load the config, init logging, run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use outbox_relay::config::{Config, LogConfig, LogFormat};
use tokio_util::sync::CancellationToken;

/// Relays PostgreSQL transactional-outbox rows to Kafka over logical replication.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stream outbox rows to Kafka until SIGTERM/SIGINT (graceful; a second signal exits
    /// at once). Exits non-zero on a failure an operator must fix, with the fix.
    Run {
        /// The relay's TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check every database prerequisite (wal_level, slots, role, tables, publication),
    /// printing one line each with the fix for what fails. Exits 1 if any fails.
    Check {
        /// The relay's TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show the slot (active pid, confirmed_flush_lsn, retained WAL) and the publication's
    /// tables, one per line.
    Status {
        /// The relay's TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Dead-letter topic tools.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Print the records on Kafka topics (from the beginning), one line each.
    Tail {
        /// The relay's TOML config file (for [kafka]).
        #[arg(long, short)]
        config: PathBuf,
        /// Topics to read.
        #[arg(long = "topic", required = true)]
        topics: Vec<String>,
        /// Stop after this many records.
        #[arg(long)]
        max: Option<usize>,
        /// Stop after this many milliseconds without a record.
        #[arg(long, default_value_t = 5_000)]
        idle_timeout_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Print each dead-lettered row: table, id, class, commit LSN and reason.
    Inspect {
        /// The relay's TOML config file (for [kafka] and [dlq]).
        #[arg(long, short)]
        config: PathBuf,
        /// Stop after this many records.
        #[arg(long)]
        max: Option<usize>,
        /// Stop after this many milliseconds without a record.
        #[arg(long, default_value_t = 5_000)]
        idle_timeout_ms: u64,
    },
    /// Publish dead-lettered rows again, rebuilt with the current routing config, to the
    /// topic the routing names, with the original key and id; commits its position in a
    /// consumer group only after every delivery. Exits 1 if a record could not be published.
    Replay {
        /// The relay's TOML config file (for [kafka], [dlq], [outbox] and source.tables).
        #[arg(long, short)]
        config: PathBuf,
        /// Print one line per record saying what would be published where; publish and
        /// commit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Stop after this many records.
        #[arg(long)]
        max: Option<usize>,
        /// Stop after this many milliseconds without a record.
        #[arg(long, default_value_t = 5_000)]
        idle_timeout_ms: u64,
        /// Replay only records of this outbox.error.class (repeatable); others are skipped.
        #[arg(long = "class")]
        classes: Vec<String>,
        /// The consumer group holding the replay position
        /// [default: outbox-relay-dlq-replay.<source.slot>].
        #[arg(long)]
        group: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Run { config } => runtime.block_on(run(&config)),
        Command::Check { config } => runtime.block_on(check(&config)),
        Command::Status { config, json } => runtime.block_on(status(&config, json)),
        Command::Tail {
            config,
            topics,
            max,
            idle_timeout_ms,
        } => runtime.block_on(tail(&config, Some(topics), max, idle_timeout_ms)),
        Command::Dlq {
            command:
                DlqCommand::Inspect {
                    config,
                    max,
                    idle_timeout_ms,
                },
        } => runtime.block_on(tail(&config, None, max, idle_timeout_ms)),
        Command::Dlq {
            command:
                DlqCommand::Replay {
                    config,
                    dry_run,
                    max,
                    idle_timeout_ms,
                    classes,
                    group,
                },
        } => {
            let options = |config: &Config| outbox_relay::dlq_replay::ReplayOptions {
                dry_run,
                max_records: max,
                idle_timeout: Duration::from_millis(idle_timeout_ms),
                classes,
                group: group.unwrap_or_else(|| outbox_relay::dlq_replay::default_group(config)),
            };
            runtime.block_on(replay(&config, options))
        }
    }
}

/// Logs on stderr: `[log]` from the config, overridden by `RUST_LOG` (level) and
/// `OUTBOX_RELAY_LOG_FORMAT=json|text` (format).
fn init_logging(log: &LogConfig) {
    let level = log.level.clone().unwrap_or_else(|| "info".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = match std::env::var("OUTBOX_RELAY_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => log.format == LogFormat::Json,
    };
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Loads the config and starts logging as it says.
fn load(path: &Path) -> Result<Config, ExitCode> {
    let config = Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    init_logging(&config.log);
    Ok(config)
}

async fn run(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signals(shutdown.clone()));
    let metrics = match outbox_relay::metrics::install() {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("error: cannot set up metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before the admin endpoint serves them: the first scrape lists every known series.
    outbox_relay::metrics::register(&config);
    let health = outbox_relay::health::Health::default();
    let listen = config
        .admin
        .listen
        .parse()
        .expect("admin.listen is validated when loading");
    let admin =
        match outbox_relay::admin::serve(listen, metrics, health.clone(), shutdown.clone()).await {
            Ok(task) => task,
            Err(e) => {
                eprintln!(
                "error: admin.listen: cannot listen on {listen}: {e}; choose a free address:port"
            );
                return ExitCode::FAILURE;
            }
        };
    tracing::info!(%listen, "serving /metrics, /healthz and /readyz");
    let outcome = outbox_relay::pipeline::run(config, shutdown.clone(), health).await;
    shutdown.cancel();
    let _ = admin.await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "relay stopped");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// First SIGTERM/SIGINT: graceful stop. Second: exit at once; nothing unsafe was ever
/// acknowledged, so undelivered events are simply sent again after the restart.
async fn stop_on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    for count in 0.. {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if count == 0 {
            tracing::info!(
                "shutting down: finishing in-flight deliveries (signal again to exit now)"
            );
            shutdown.cancel();
        } else {
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        }
    }
}

async fn status(path: &Path, json: bool) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match outbox_relay::status::read(&config).await {
        Ok(status) if json => match serde_json::to_string_pretty(&status) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(status) => {
            println!("{status}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn check(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
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

/// `tail` with `topics`, or `dlq inspect` (every dead-letter topic of the config) without.
async fn tail(
    path: &Path,
    topics: Option<Vec<String>>,
    max: Option<usize>,
    idle_timeout_ms: u64,
) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let Some(kafka) = &config.kafka else {
        eprintln!(
            "error: {}: kafka: required section is missing; add [kafka] with bootstrap_servers",
            path.display()
        );
        return ExitCode::from(2);
    };
    type Render = fn(&rdkafka::message::BorrowedMessage<'_>) -> String;
    let (topics, render): (Vec<String>, Render) = match topics {
        Some(topics) => (topics, outbox_relay::tail::describe),
        None => (
            outbox_relay::dlq_replay::dlq_topics(&config),
            outbox_relay::tail::describe_dead_letter,
        ),
    };
    let options = outbox_relay::tail::TailOptions {
        topics,
        max_records: max,
        idle_timeout: Duration::from_millis(idle_timeout_ms),
    };
    match outbox_relay::tail::tail(kafka, &options, render, |line| println!("{line}")).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `dlq replay`: one line per record, then the summary; exit 1 if a record failed.
async fn replay(
    path: &Path,
    options: impl FnOnce(&Config) -> outbox_relay::dlq_replay::ReplayOptions,
) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let Some(kafka) = config.kafka.clone() else {
        eprintln!(
            "error: {}: kafka: required section is missing; add [kafka] with bootstrap_servers",
            path.display()
        );
        return ExitCode::from(2);
    };
    let options = options(&config);
    let outcome =
        outbox_relay::dlq_replay::replay(&kafka, &config, &options, |line| println!("{line}"))
            .await;
    for line in outcome.summary.lines() {
        println!("{line}");
    }
    match outcome.error {
        None => ExitCode::SUCCESS,
        Some(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
