//! `sluice-echo`: WebSocket echo backends on fixed addresses, for `make run`, the demo and the
//! benchmarks.
//!
//! ```text
//! sluice-echo --listen 127.0.0.1:9001 --listen 127.0.0.1:9002 --listen 127.0.0.1:9003
//! curl -i http://127.0.0.1:9001/        # 200, "echo-9001", X-Backend: echo-9001
//! ```
//!
//! Each address runs one [`EchoBackend`] with recording off (counters only), so the echo path
//! costs no more than tungstenite's framing. One log line per connection at `info` (none per
//! message): benchmarks of handshake rates run with `--log warn`. Ctrl-C or SIGTERM stops
//! accepting, sends live WebSocket connections a Close 1001 (going away), and exits 0.

use std::net::SocketAddr;

use anyhow::Context;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use sluice_testkit::{CloseMode, DEFAULT_MAX_MESSAGE_SIZE, EchoBackend};
use tracing::info;

/// WebSocket echo backends for sluice demos and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "sluice-echo", version)]
struct Args {
    /// Address to serve on; repeat for several backends.
    #[arg(long = "listen", value_name = "ADDR", required = true)]
    listen: Vec<SocketAddr>,

    /// Backend names, in the order of --listen (default: echo-PORT). Sent back in the
    /// X-Backend header and as the body of plain HTTP answers.
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,

    /// Largest WebSocket message and frame accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_MESSAGE_SIZE)]
    max_message_size: usize,

    /// Runtime worker threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Log filter, tracing-subscriber EnvFilter syntax (e.g. "warn", "debug").
    #[arg(
        long = "log",
        value_name = "FILTER",
        env = "RUST_LOG",
        default_value = "info"
    )]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.names.is_empty() && args.names.len() != args.listen.len() {
        Args::command()
            .error(
                ErrorKind::WrongNumberOfValues,
                format!(
                    "{} --name for {} --listen: give one name per address, or none",
                    args.names.len(),
                    args.listen.len()
                ),
            )
            .exit();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log)
                .with_context(|| format!("bad log filter {:?}", args.log))?,
        )
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    runtime
        .build()
        .context("start the runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut backends = Vec::with_capacity(args.listen.len());
    for (i, addr) in args.listen.iter().enumerate() {
        let mut builder = EchoBackend::builder()
            .bind(*addr)
            .record(false)
            .max_message_size(args.max_message_size);
        if let Some(name) = args.names.get(i) {
            builder = builder.name(name.clone());
        }
        let backend = builder
            .spawn()
            .await
            .with_context(|| format!("listen on {addr}"))?;
        info!(backend = %backend.name(), addr = %backend.addr(), "echo backend listening");
        backends.push(backend);
    }

    shutdown_signal().await?;
    info!("shutting down");
    for backend in &backends {
        backend.stop_accepting().await;
    }
    let closes = backends
        .iter()
        .map(|b| b.close_all_with(CloseMode::WebSocketClose(1001)));
    futures_util::future::join_all(closes).await;
    for backend in &backends {
        info!(
            backend = %backend.name(),
            connections = backend.connections_accepted(),
            upgrades = backend.upgrades(),
            messages = backend.messages_received(),
            bytes_received = backend.bytes_received(),
            "stopped"
        );
    }
    Ok(())
}

/// Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("wait for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("wait for Ctrl-C")?;
    Ok(())
}
