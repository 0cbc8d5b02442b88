//! Binary upgrade from the command line: `--upgrade-socket` makes a running sluice accept
//! successors, `--upgrade-from` makes a new one take over (see `sluice_handoff` for the
//! conversation and `sluice_proxy`'s `upgrade` module for what crosses over).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use sluice_handoff::{Endpoint, HandoffError, Inheritance, Inherited};
use sluice_proxy::{BoundListener, Server};
use tracing::{info, warn};

/// How long each step of taking over may take.
const TAKE_OVER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the command line asked for.
#[derive(Debug)]
pub(crate) enum Upgrade {
    /// Neither flag.
    Off,
    /// `--upgrade-socket PATH`.
    Accept(PathBuf),
    /// `--upgrade-from PATH`.
    TakeOver(PathBuf),
}

impl Upgrade {
    pub(crate) fn new(socket: Option<PathBuf>, from: Option<PathBuf>) -> Self {
        match (socket, from) {
            (_, Some(from)) => Self::TakeOver(from),
            (Some(socket), None) => Self::Accept(socket),
            (None, None) => Self::Off,
        }
    }

    /// Binds the listeners: all anew, or adopting the predecessor's sockets. A predecessor
    /// that cannot be reached or refuses is an error: nothing was changed on its side.
    pub(crate) async fn bind(
        self,
        server: &Server,
    ) -> anyhow::Result<(Vec<BoundListener>, Upgrades)> {
        match self {
            Self::Off => Ok((server.bind().await?, Upgrades::Off)),
            Self::Accept(path) => {
                let listeners = server.bind().await?;
                let endpoint = Endpoint::bind(&path)
                    .with_context(|| format!("cannot accept upgrades on {}", path.display()))?;
                Ok((listeners, Upgrades::Serve(endpoint)))
            }
            Self::TakeOver(path) => {
                let inheritance = take_over(&path).await?;
                info!(
                    predecessor = inheritance.predecessor,
                    sockets = inheritance.listeners.len(),
                    "taking over from the running sluice"
                );
                let mut inheritance = inheritance;
                let inherited = std::mem::take(&mut inheritance.listeners);
                let listeners = server.bind_inherited(inherited).await?;
                Ok((listeners, Upgrades::Finish(Box::new(inheritance), path)))
            }
        }
    }
}

async fn take_over(path: &Path) -> anyhow::Result<Inheritance> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || sluice_handoff::take_over(&owned, TAKE_OVER_TIMEOUT))
        .await?
        .with_context(|| format!("cannot take over from the sluice at {}", path.display()))
}

/// The upgrade side of a running process.
#[derive(Debug)]
pub(crate) enum Upgrades {
    Off,
    /// Accept successors on this endpoint.
    Serve(Endpoint),
    /// Tell the predecessor this process accepts, then accept successors at the same path.
    Finish(Box<Inheritance>, PathBuf),
}

impl Upgrades {
    /// The upgrade socket's path, when upgrades are on.
    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            Self::Off => None,
            Self::Serve(endpoint) => Some(endpoint.path()),
            Self::Finish(_, path) => Some(path),
        }
    }

    /// Resolves when a successor took over (this process should then drain and exit); never
    /// when upgrades are off.
    /// Whether this process takes over from a predecessor.
    pub(crate) fn is_taking_over(&self) -> bool {
        matches!(self, Self::Finish(..))
    }

    /// `pid_file`: written once this process took over (a successor's; `None` otherwise), and
    /// held until this process is upgraded in turn or shuts down.
    pub(crate) async fn serve(self, server: &Server, pid_file: Option<PathBuf>) {
        let mut written = None;
        let endpoint = match self {
            Self::Off => return std::future::pending().await,
            Self::Serve(endpoint) => endpoint,
            Self::Finish(inheritance, path) => {
                server.accepting().await;
                let inherited = inherit_tunnels(server, *inheritance).await;
                let took_over = inherited.as_ref().is_some_and(|(done, _)| *done);
                if took_over {
                    match pid_file.map(crate::PidFile::create).transpose() {
                        Ok(file) => written = file,
                        Err(error) => warn!("{error:#}"),
                    }
                } else if pid_file.is_some() {
                    warn!(
                        "the predecessor did not finish the upgrade: the pid file still names it"
                    );
                }
                let Some((_, inheritance)) = inherited else {
                    return std::future::pending().await;
                };
                match Endpoint::adopt(inheritance.endpoint, &path) {
                    Ok(endpoint) => endpoint,
                    Err(error) => {
                        warn!(%error, "cannot accept further upgrades");
                        return std::future::pending().await;
                    }
                }
            }
        };
        server.serve_upgrades(endpoint).await;
        // Upgraded in turn: the file is the successor's now.
        if let Some(file) = written {
            file.leave();
        }
    }
}

/// Tells the predecessor this process accepts, then takes its tunnels batch by batch until it
/// is done: each batch is checked, acknowledged, and relayed here once the predecessor let go
/// of it. A failure ends the inheritance (the predecessor keeps what it did not hand over);
/// this process serves on either way. Returns whether the predecessor said its last word
/// (`Done`) and the inheritance; `None` only if a handoff thread panicked.
async fn inherit_tunnels(server: &Server, inheritance: Inheritance) -> Option<(bool, Inheritance)> {
    let predecessor = inheritance.predecessor;
    let (ready, mut inheritance) = blocking(inheritance, |i| i.ready()).await?;
    if let Err(error) = ready {
        warn!(predecessor, %error, "took over, but the predecessor did not hear it");
        return Some((false, inheritance));
    }
    let mut adopted = 0;
    loop {
        let next;
        (next, inheritance) = blocking(inheritance, |i| i.next()).await?;
        match next {
            Ok(Inherited::Tunnels(batch)) => {
                let adoption = server.adopt_tunnels(batch);
                let refused = adoption.refused();
                let released;
                (released, inheritance) =
                    blocking(inheritance, move |i| i.adopted(refused)).await?;
                if let Err(error) = released {
                    // Closed untouched: the predecessor resumes them, or is gone.
                    warn!(predecessor, %error, tunnels = adoption.len(), "the predecessor did not release a batch of tunnels");
                    return Some((false, inheritance));
                }
                adopted += adoption.len();
                server.start_adopted(adoption);
            }
            Ok(Inherited::Counters(series)) => server.carry_counters(series),
            Ok(Inherited::Done { kept }) => {
                info!(
                    predecessor,
                    adopted,
                    kept,
                    "took over: tunnels relayed here; the predecessor drains what it kept"
                );
                return Some((true, inheritance));
            }
            Err(error) => {
                warn!(predecessor, adopted, %error, "the predecessor stopped handing tunnels over");
                return Some((false, inheritance));
            }
        }
    }
}

/// Runs a step of the (blocking) conversation on a thread of its own; `None` if it panicked.
async fn blocking<T: Send + 'static>(
    inheritance: Inheritance,
    step: impl FnOnce(&Inheritance) -> Result<T, HandoffError> + Send + 'static,
) -> Option<(Result<T, HandoffError>, Inheritance)> {
    let ran = tokio::task::spawn_blocking(move || (step(&inheritance), inheritance)).await;
    if let Err(error) = &ran {
        warn!(%error, "the handoff thread failed: no further upgrades");
    }
    ran.ok()
}

/// At each SIGUSR2, starts `exe args` (the binary now at this one's path, told to take over
/// from this process) unless the last one started is still running: nginx's binary upgrade
/// signal. The successor's exit, if it fails, is logged here; once it took over, this process
/// drains and exits and the successor lives on (its parent becomes the service manager or
/// init).
/// Without `args` (no `--upgrade-socket`), each SIGUSR2 is logged and ignored.
pub(crate) fn start_successor_on_signal(
    exe: PathBuf,
    args: Option<Vec<std::ffi::OsString>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr2 = signal(SignalKind::user_defined2())?;
    Ok(tokio::spawn(async move {
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        while usr2.recv().await.is_some() {
            let Some(args) = &args else {
                warn!(
                    signal = "SIGUSR2",
                    "binary upgrade needs --upgrade-socket: signal ignored"
                );
                continue;
            };
            if running.load(std::sync::atomic::Ordering::Acquire) {
                warn!(
                    signal = "SIGUSR2",
                    "an upgrade is under way: signal ignored"
                );
                continue;
            }
            info!(signal = "SIGUSR2", binary = %exe.display(), "starting the successor");
            let spawned = std::process::Command::new(&exe)
                .args(args)
                .stdin(std::process::Stdio::null())
                .spawn();
            let mut child = match spawned {
                Ok(child) => child,
                Err(error) => {
                    warn!(%error, binary = %exe.display(), "cannot start the successor");
                    continue;
                }
            };
            running.store(true, std::sync::atomic::Ordering::Release);
            let running = std::sync::Arc::clone(&running);
            // Reaped here (never a zombie); this thread ends with the process otherwise.
            std::thread::spawn(move || {
                let pid = child.id();
                match child.wait() {
                    Ok(status) if status.success() => info!(pid, "the successor exited"),
                    Ok(status) => {
                        warn!(pid, %status, "the successor failed: this process keeps serving")
                    }
                    Err(error) => warn!(pid, %error, "cannot wait for the successor"),
                }
                running.store(false, std::sync::atomic::Ordering::Release);
            });
        }
    }))
}
