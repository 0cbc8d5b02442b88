//! `sluice-load`: the load generator of sluice's benchmark suite (`make bench`, `bench/run.py`).
//!
//! It plays the clients of a WebSocket balancer: it opens connections to a target (a proxy's
//! listener, or the echo backends themselves for the no-proxy baseline), runs one scenario and
//! prints **one JSON line** on standard output. The harness pins it, with the echo backends, to
//! one core and the proxy to the other, and measures the proxy's CPU time and memory around
//! each run; this program only drives traffic and times it.
//!
//! ```text
//! sluice-load handshake --target 127.0.0.1:18080 --count 5000 --concurrency 16
//! sluice-load bulk      --target 127.0.0.1:18080 --connections 8 --size 65536 --duration 5
//! sluice-load echo      --target 127.0.0.1:18080 --connections 64 --size 32 --duration 5
//! sluice-load echo1     --target 127.0.0.1:18080 --duration 3
//! sluice-load idle      --target 127.0.0.1:18080 --connections 5000 --hold 3 --ready-file F
//! ```
//!
//! Lean by design, so the proxy and not the generator is the bottleneck: a current-thread
//! runtime by default; tokio-tungstenite for the handshake and the closing handshake, then
//! frames built once and written as raw bytes ([`wire`]); latencies kept as `u32` nanoseconds
//! ([`stats`]). Every loop stops at a count and a deadline; `--max-seconds` bounds the whole
//! run. Loopback targets only: anything else is refused.

mod scenario;
mod stats;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::scenario::Targets;

/// WebSocket load generator for sluice's benchmarks: one scenario, one JSON line.
#[derive(Debug, Parser)]
#[command(name = "sluice-load", version)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Args)]
struct Common {
    /// Where to connect (loopback only); repeat to spread connections round robin, e.g. over
    /// the backends themselves for the no-proxy baseline.
    #[arg(long = "target", value_name = "ADDR", global = true)]
    targets: Vec<SocketAddr>,
    /// Request path of the WebSocket handshake.
    #[arg(long, default_value = "/", global = true)]
    path: String,
    /// A label copied into the JSON line (the harness names the target with it).
    #[arg(long, global = true)]
    label: Option<String>,
    /// Runtime worker threads; 1 runs a current-thread runtime.
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    /// Hard bound on the whole run, in seconds: past it the run fails.
    #[arg(long, default_value = "300", global = true, value_parser = seconds)]
    max_seconds: Duration,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open and close connections: handshake rate and latency (connect to 101).
    Handshake {
        /// Connections to open and close.
        #[arg(long, default_value_t = 5000)]
        count: u64,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Binary frames echoed back to back: throughput.
    Bulk {
        /// Connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Payload bytes per frame.
        #[arg(long, default_value_t = 65536)]
        size: usize,
        /// Seconds of traffic.
        #[arg(long, default_value = "5", value_parser = seconds)]
        duration: Duration,
    },
    /// Ping-pong of small messages on many connections: round trips per second and latency.
    Echo {
        /// Connections, each with one message in flight.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[command(flatten)]
        run: EchoRun,
    },
    /// Ping-pong on one connection: unloaded latency.
    Echo1 {
        #[command(flatten)]
        run: EchoRun,
    },
    /// Connections opened and held without traffic (the harness measures memory per tunnel).
    Idle {
        /// Connections to hold.
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        /// Handshakes in flight at once while opening.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds to hold them once all are open.
        #[arg(long, default_value = "3", value_parser = seconds)]
        hold: Duration,
        /// A file created once every connection is open (the harness waits for it).
        #[arg(long, value_name = "PATH")]
        ready_file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct EchoRun {
    /// Payload bytes per message.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Seconds of round trips before measuring.
    #[arg(long, default_value = "1", value_parser = seconds)]
    warmup: Duration,
    /// Seconds of measured round trips.
    #[arg(long, default_value = "5", value_parser = seconds)]
    duration: Duration,
    /// Most round trips in all, warm-up included.
    #[arg(long, default_value_t = 50_000_000)]
    max_round_trips: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let label = cli.common.label.clone();
    let result = run(cli);
    let (mut line, code) = match result {
        Ok(value) => (value, ExitCode::SUCCESS),
        Err(error) => (json!({ "error": format!("{error:#}") }), ExitCode::FAILURE),
    };
    if let (Some(map), Some(label)) = (line.as_object_mut(), label) {
        map.insert("label".into(), Value::String(label));
    }
    println!("{line}");
    code
}

fn run(cli: Cli) -> anyhow::Result<Value> {
    let Common {
        targets,
        path,
        threads,
        max_seconds,
        ..
    } = cli.common;
    if targets.is_empty() {
        bail!("no --target given");
    }
    if let Some(addr) = targets.iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "target {addr} is not a loopback address: this generator only loads 127.0.0.0/8 and ::1"
        );
    }
    let targets = Targets {
        addrs: targets.into(),
        path: path.into(),
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .context("start the runtime")?;
    let deadline = Instant::now() + max_seconds;
    runtime.block_on(async move {
        let scenario = async {
            match cli.scenario {
                Scenario::Handshake { count, concurrency } => {
                    scenario::handshake(targets, count, concurrency, deadline).await
                }
                Scenario::Bulk {
                    connections,
                    size,
                    duration,
                } => scenario::bulk(targets, connections, size, duration).await,
                Scenario::Echo { connections, run } => {
                    scenario::echo(
                        "echo",
                        targets,
                        connections,
                        run.size,
                        run.warmup,
                        run.duration,
                        run.max_round_trips,
                    )
                    .await
                }
                Scenario::Echo1 { run } => {
                    scenario::echo(
                        "echo1",
                        targets,
                        1,
                        run.size,
                        run.warmup,
                        run.duration,
                        run.max_round_trips,
                    )
                    .await
                }
                Scenario::Idle {
                    connections,
                    concurrency,
                    hold,
                    ready_file,
                } => scenario::idle(targets, connections, concurrency, hold, ready_file).await,
            }
        };
        tokio::time::timeout(max_seconds, scenario)
            .await
            .map_err(|_| anyhow::anyhow!("the run exceeded --max-seconds ({max_seconds:?})"))?
    })
}

/// A non-negative number of seconds, fractions allowed ("0.5", "5").
fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?}: seconds out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seconds_parse() {
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
        assert!(seconds("-1").is_err());
        assert!(seconds("5s").is_err());
    }

    #[test]
    fn non_loopback_targets_are_refused() {
        let cli = Cli::try_parse_from([
            "sluice-load",
            "--target",
            "10.0.0.1:80",
            "handshake",
            "--count",
            "1",
        ])
        .unwrap();
        let error = run(cli).unwrap_err().to_string();
        assert!(error.contains("not a loopback"), "{error}");
    }
}
