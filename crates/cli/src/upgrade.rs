//! Binary upgrade from the command line: `--upgrade-socket` makes a running sluice accept
//! successors, `--upgrade-from` makes a new one take over (see `sluice_handoff` for the
//! conversation and `sluice_proxy`'s `upgrade` module for what crosses over).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use sluice_handoff::{Endpoint, Inheritance};
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
    pub(crate) async fn serve(self, server: &Server) {
        let endpoint = match self {
            Self::Off => return std::future::pending().await,
            Self::Serve(endpoint) => endpoint,
            Self::Finish(inheritance, path) => {
                server.accepting().await;
                let finished = tokio::task::spawn_blocking(move || {
                    let done = inheritance.ready();
                    (done, inheritance)
                })
                .await;
                let Ok((done, inheritance)) = finished else {
                    warn!("the handoff thread failed: no further upgrades");
                    return std::future::pending().await;
                };
                match done {
                    Ok(kept) => info!(
                        predecessor = inheritance.predecessor,
                        kept, "took over: the predecessor stopped accepting and drains"
                    ),
                    Err(error) => warn!(
                        predecessor = inheritance.predecessor,
                        %error,
                        "took over, but the predecessor did not confirm it stopped accepting"
                    ),
                }
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
    }
}
