//! The `sluice` binary: command line, logging, runtime, and the process's signals.
//!
//! Everything else lives in the library crates; this file only turns the outside world
//! (arguments, environment, signals, exit codes) into calls of `sluice_proxy`.
//!
//! Exit codes: 0 success; 64 the configuration is invalid (every error printed); 1 anything
//! else that stops sluice (a listener that cannot be bound, a second shutdown signal, a
//! `reload` that found no running process).
//!
//! Signals of `run`: SIGHUP reloads the configuration file (all or nothing; an invalid file
//! keeps the running configuration); SIGTERM/SIGINT shut down gracefully; a second one exits
//! at once; SIGUSR2 (with `--upgrade-socket`) starts the binary found at this one's path as
//! a successor that takes everything over (nginx's binary upgrade signal). A binary upgrade
//! (`--upgrade-from`, see `upgrade.rs`) ends the old process as a SIGTERM would, once its
//! tunnels crossed.
//!
//! Under a service manager that sets `NOTIFY_SOCKET` (systemd `Type=notify` or
//! `Type=notify-reload`), `run` reports readiness, reloads and shutdown to it (`notify.rs`).

mod notify;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use notify::Notifier;

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
        /// Configuration file (TOML), read again on SIGHUP.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Worker threads of the runtime (default: one per core). 1 runs everything on the
        /// main thread (a current-thread runtime: no cross-thread wake-ups, no worker pool).
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Write the process id to this file while running (removed on exit).
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// Accept binary upgrades on this unix socket: a new sluice started with
        /// `--upgrade-from` the same path takes the listening sockets over.
        #[arg(long, value_name = "SOCKET")]
        upgrade_socket: Option<PathBuf>,
        /// Take over from the sluice accepting upgrades on this socket (then accept the next
        /// upgrade on it): no connection is refused in between, and the old process drains.
        #[arg(long, value_name = "SOCKET", conflicts_with = "upgrade_socket")]
        upgrade_from: Option<PathBuf>,
    },
    /// Ask a running sluice to reload its configuration (sends SIGHUP to the pid in the file).
    Reload {
        /// The pid file given to `sluice run --pid-file`.
        #[arg(long, value_name = "FILE")]
        pid_file: PathBuf,
    },
    /// Ask a running sluice (started with `--upgrade-socket`) to upgrade its binary in place:
    /// it starts the binary now installed at its path, which takes over the listeners and
    /// every spliced tunnel (sends SIGUSR2 to the pid in the file).
    Upgrade {
        /// The pid file given to `sluice run --pid-file`.
        #[arg(long, value_name = "FILE")]
        pid_file: PathBuf,
        /// Wait this long for the successor to take over (the pid file then names it): exit 0
        /// once it did, 1 if it did not in time (the old process keeps serving). 0: do not
        /// wait.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        wait: u64,
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

impl LogFormat {
    /// As the command line spells it.
    fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let log_format = cli.log_format;
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run {
            config,
            threads,
            pid_file,
            upgrade_socket,
            upgrade_from,
        } => {
            // What SIGUSR2 starts: this command line, taking over from this process.
            let successor = upgrade_socket.as_ref().map(|socket| {
                let mut args: Vec<std::ffi::OsString> = vec![
                    "--log-format".into(),
                    log_format.name().into(),
                    "run".into(),
                    "--config".into(),
                    config.clone().into(),
                ];
                if let Some(threads) = threads {
                    args.extend(["--threads".into(), threads.to_string().into()]);
                }
                if let Some(pid_file) = &pid_file {
                    args.extend(["--pid-file".into(), pid_file.clone().into()]);
                }
                args.extend(["--upgrade-from".into(), socket.clone().into()]);
                args
            });
            match run(
                &config,
                threads,
                pid_file,
                upgrade::Upgrade::new(upgrade_socket, upgrade_from),
                successor,
            ) {
                Ok(code) => code,
                Err(error) => {
                    tracing::error!("{error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Reload { pid_file } => signal_command(&pid_file, rustix::process::Signal::HUP),
        Command::Upgrade { pid_file, wait } => upgrade_command(&pid_file, wait),
    }
}

/// `sluice reload` and `sluice upgrade`: signals the process of the pid file.
fn signal_command(pid_file: &std::path::Path, signal: rustix::process::Signal) -> ExitCode {
    let (name, command) = match signal {
        rustix::process::Signal::USR2 => ("SIGUSR2", "upgrade"),
        _ => ("SIGHUP", "reload"),
    };
    match signal_pid_file(pid_file, signal) {
        Ok(pid) => {
            println!("sent {name} to sluice (pid {pid})");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sluice {command}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice upgrade`: SIGUSR2 to the process of the pid file, then (unless `wait` is 0) waits
/// until the pid file names another live process: the successor that took over.
fn upgrade_command(pid_file: &std::path::Path, wait: u64) -> ExitCode {
    let code = signal_command(pid_file, rustix::process::Signal::USR2);
    if code != ExitCode::SUCCESS || wait == 0 {
        return code;
    }
    let old = std::fs::read_to_string(pid_file).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = std::fs::read_to_string(pid_file).unwrap_or_default();
        let new = now.trim();
        let alive = new
            .parse::<i32>()
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok());
        if !new.is_empty() && new != old.trim() && alive {
            println!(
                "upgraded: sluice pid {} took over from pid {}",
                new,
                old.trim()
            );
            return ExitCode::SUCCESS;
        }
    }
    eprintln!(
        "sluice upgrade: no successor took over within {wait}s (the running sluice keeps \
         serving; see its log)"
    );
    ExitCode::FAILURE
}

fn check(path: &std::path::Path) -> ExitCode {
    match sluice_config::load(path) {
        Ok(config) => {
            // Certificates are read as a start would read them.
            let tls = sluice_proxy::check_tls(&config);
            if !tls.is_empty() {
                eprintln!("{}: TLS certificates:\n{}", path.display(), tls.join("\n"));
                return ExitCode::from(EXIT_CONFIG);
            }
            // Source addresses are bound as a start would bind them.
            let sources = sluice_proxy::check_source_addrs(&config);
            if !sources.is_empty() {
                eprintln!(
                    "{}: source addresses:\n{}",
                    path.display(),
                    sources.join("\n")
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            println!("{}: valid\n{}", path.display(), config.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn run(
    path: &std::path::Path,
    threads: Option<usize>,
    pid_file: Option<PathBuf>,
    upgrade: upgrade::Upgrade,
    successor: Option<Vec<std::ffi::OsString>>,
) -> anyhow::Result<ExitCode> {
    // The binary's path now: after a package manager replaced the file, this path names the
    // new binary (while /proc/self/exe still names the old one).
    let exe = std::env::current_exe().context("cannot find this binary's path")?;
    let config = match sluice_config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    // One thread: a current-thread runtime, HAProxy's `nbthread 1` and nginx's single worker:
    // tasks run on the main thread, no work-stealing scheduler, no cross-thread wake-ups.
    let mut runtime = match threads {
        Some(threads) if threads <= 1 => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime.worker_threads(threads);
            runtime
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = runtime
        .enable_all()
        .thread_name("sluice")
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let server = sluice_proxy::Server::new(config);
        let notifier = std::sync::Arc::new(Notifier::from_env());
        // Signal handlers first: a SIGHUP or SIGTERM that arrives once the listeners accept
        // (or once the pid file names this process) must never meet the default action.
        let reloads = reload_on_hangup(
            server.clone(),
            path.to_owned(),
            std::sync::Arc::clone(&notifier),
        )
        .context("cannot install the SIGHUP handler")?;
        let shutdown = shutdown_signal().context("cannot install signal handlers")?;
        // Installed either way: without `--upgrade-socket` a SIGUSR2 is logged and ignored
        // (its default action would kill the process).
        let upgrader = upgrade::start_successor_on_signal(exe, successor)
            .context("cannot install the SIGUSR2 handler")?;
        let (listeners, upgrades) = upgrade.bind(&server).await?;
        // A successor writes the pid file once it took over (the tunnels crossed): until
        // then the file names the process that serves, and `sluice upgrade` waits for it.
        let (pid_file_guard, deferred_pid_file) = if upgrades.is_taking_over() {
            (None, pid_file)
        } else {
            (pid_file.map(PidFile::create).transpose()?, None)
        };
        info!(
            version = env!("CARGO_PKG_VERSION"),
            config = %path.display(),
            pid = std::process::id(),
            "sluice started"
        );
        let upgrade_socket = upgrades.path().map(ToOwned::to_owned);
        let handed_over = std::cell::Cell::new(false);
        let shutdown = async {
            tokio::select! {
                () = shutdown => {}
                () = upgrades.serve(&server, deferred_pid_file) => handed_over.set(true),
            }
        };
        // `run` polls the shutdown future for the first time once every listener accepts and
        // the admin listener serves: the moment to say READY=1.
        let handed = &handed_over;
        let served = {
            let server = server.clone();
            async move {
                notifier.ready(&serving_status(&server, ""));
                shutdown.await;
                // After a handover the successor is the service (it sent READY=1 with its
                // MAINPID): STOPPING=1 from here would tell the manager the service is ending.
                if !handed.get() {
                    notifier.stopping(&format!(
                        "shutting down: draining {} tunnels",
                        server.live_tunnels()
                    ));
                }
            }
        };
        server.run(listeners, served).await?;
        if handed_over.get() {
            // The successor owns the pid file now (it writes it once it took over, maybe at
            // this very moment: checking its contents before removing it would race).
            if let Some(file) = pid_file_guard {
                file.leave();
            }
        } else if let Some(path) = upgrade_socket {
            // The successor, if any, owns the socket path now; otherwise it goes with us.
            let _ = std::fs::remove_file(path);
        }
        reloads.abort();
        upgrader.abort();
        Ok(ExitCode::SUCCESS)
    })
}

/// Reloads the configuration file at each SIGHUP. Signals arriving during a reload are
/// coalesced into one more reload after it: none is lost, none runs twice at once. Each
/// reload is bracketed by `RELOADING=1` and `READY=1` for the service manager.
fn reload_on_hangup(
    server: sluice_proxy::Server,
    path: PathBuf,
    notifier: std::sync::Arc<Notifier>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            info!(signal = "SIGHUP", config = %path.display(), "reloading the configuration");
            notifier.reloading();
            // Success and every cause of failure are logged by the server.
            let outcome = match server.reload_file(&path).await {
                Ok(_) => "",
                Err(_) => "reload refused (see the log); ",
            };
            notifier.ready(&serving_status(&server, outcome));
        }
    }))
}

/// The `STATUS=` line of a READY notification: what `systemctl status` shows.
fn serving_status(server: &sluice_proxy::Server, prefix: &str) -> String {
    format!(
        "{prefix}serving configuration generation {}, {} tunnels",
        server.snapshot().generation(),
        server.live_tunnels()
    )
}

/// Resolves at the first SIGTERM or SIGINT; a second one exits at once.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => info!(signal = "SIGTERM", "shutdown requested"),
            _ = interrupt.recv() => info!(signal = "SIGINT", "shutdown requested"),
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

/// The process id written to a file for the life of the process.
pub(crate) struct PidFile(Option<PathBuf>);

impl PidFile {
    /// Writes this process's id, whole or not at all (a reader never sees half of it: the file
    /// is written beside and renamed over).
    pub(crate) fn create(path: PathBuf) -> anyhow::Result<Self> {
        let staged = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&staged, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&staged, &path))
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        Ok(Self(Some(path)))
    }

    /// After a binary upgrade: the file is the successor's (it writes it once it took over,
    /// maybe at this very moment), so it is left alone.
    pub(crate) fn leave(mut self) {
        self.0 = None;
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed on the way out, unless it names another process by now.
        let Some(path) = &self.0 else { return };
        let ours = std::fs::read_to_string(path)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Sends `signal` to the process named by a pid file; returns its pid.
fn signal_pid_file(path: &std::path::Path, signal: rustix::process::Signal) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the pid file {}", path.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{}: not a process id: {:?}", path.display(), text.trim()))?;
    let process = rustix::process::Pid::from_raw(pid)
        .with_context(|| format!("{}: not a process id: {pid}", path.display()))?;
    rustix::process::kill_process(process, signal)
        .with_context(|| format!("cannot signal process {pid} (from {})", path.display()))?;
    Ok(pid)
}
