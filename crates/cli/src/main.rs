//! The `sluice` binary: command line, logging, runtime, and the process's signals.
//!
//! Everything else lives in the library crates; this file only turns the outside world
//! (arguments, environment, signals, exit codes) into calls of `sluice_proxy`.
//!
//! Exit codes: 0 success; 64 the configuration is invalid (every error printed); 1 anything
//! else that stops sluice (a listener that cannot be bound, a second shutdown signal).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

/// Exit code for an invalid configuration (EX_USAGE, as the `check` contract promises).
const EXIT_CONFIG: u8 = 64;

/// sluice: a WebSocket load balancer. Reads each handshake at L7 to route it, then splices the
/// tunnel at L4.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
struct Cli {
    /// Log format on standard error; the level comes from RUST_LOG (default "info").
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the balancer until SIGTERM or SIGINT.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Worker threads of the runtime (default: one per core).
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
    },
    /// Check a configuration file: print every error (exit 64) or a summary (exit 0).
    Check {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, threads } => match run(&config, threads) {
            Ok(code) => code,
            Err(error) => {
                tracing::error!("{error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match sluice_config::load(path) {
        Ok(config) => {
            println!("{}: valid\n{}", path.display(), config.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn run(path: &std::path::Path, threads: Option<usize>) -> anyhow::Result<ExitCode> {
    let config = match sluice_config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime
        .enable_all()
        .thread_name("sluice")
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let server = sluice_proxy::Server::new(config);
        let listeners = server.bind().await?;
        info!(
            version = env!("CARGO_PKG_VERSION"),
            config = %path.display(),
            "sluice started"
        );
        let shutdown = shutdown_signal().context("cannot install signal handlers")?;
        server.run(listeners, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves at the first SIGTERM or SIGINT; a second one exits at once.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = terminate.recv() => { info!(signal = "SIGTERM", "shutdown requested"); break }
                _ = interrupt.recv() => { info!(signal = "SIGINT", "shutdown requested"); break }
                _ = hangup.recv() => {
                    warn!(signal = "SIGHUP", "configuration reload is not supported by this build; configuration unchanged");
                }
            }
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            warn!("second shutdown signal: exiting now");
            std::process::exit(1);
        });
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
