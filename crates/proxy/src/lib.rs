//! Composition: listeners, the per-connection pipeline, the routing snapshot and shutdown.
//!
//! This is the only crate that knows all the others. For every accepted connection it runs the
//! pipeline (see `LIFECYCLE.md` beside this file):
//!
//! ```text
//! accept ─ permit ─ L7 act (sluice-handshake: read, parse, classify, route)
//!        ─ pick (sluice-balance) ─ connect ─ forward head ─ read response head
//!        ─ 101 ─ L4 act (sluice-splice: relay until both sides are done)
//! ```
//!
//! Every stage returns a value the next consumes; a failure at any stage before the first byte
//! reaches a backend is answered with exactly one HTTP response
//! ([`sluice_handshake::error_response`]) and nothing is sent to any backend.
//!
//! Entry points take bound listeners and a shutdown future (the binary wires real signals;
//! tests bind port 0). Routing state is one immutable [`Snapshot`] behind an `ArcSwap`: a
//! connection loads it once and keeps that `Arc` until its backend is chosen.

mod accept;
mod conn;
mod limits;
mod snapshot;
mod stats;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arc_swap::ArcSwap;
use sluice_config::Config;
use sluice_splice::PipePool;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use limits::derived_max_connections;
pub use snapshot::{ListenerRuntime, Snapshot};
pub use stats::Stats;

/// Why the proxy could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener's address could not be bound.
    #[error("listener {name}: cannot listen on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A bound listener was handed to [`Server::run`] that the configuration does not name.
    #[error("listener {0} is not in the configuration")]
    UnknownListener(String),
}

/// A listening socket bound for one configured listener.
#[derive(Debug)]
pub struct BoundListener {
    name: String,
    listener: TcpListener,
}

impl BoundListener {
    /// Wraps an already bound socket for the configured listener `name`.
    pub fn new(name: impl Into<String>, listener: TcpListener) -> Self {
        Self {
            name: name.into(),
            listener,
        }
    }

    /// The configured listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address actually bound (the real port when the configuration said port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// State shared by the accept loops and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) pipes: PipePool,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) max_connections: usize,
    /// Cancelled when tunnels must end now (shutdown deadline passed).
    pub(crate) stop_tunnels: CancellationToken,
    pub(crate) stats: Stats,
    pub(crate) next_conn_id: AtomicU64,
}

/// A sluice proxy: build it from a configuration, bind, run until the shutdown future resolves.
#[derive(Debug, Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// Prepares a server for this configuration (nothing is bound yet).
    pub fn new(config: Config) -> Self {
        let max_connections = config
            .limits
            .max_connections
            .unwrap_or_else(|| derived_max_connections(config.relay.max_pipes));
        let pipes = PipePool::new(config.relay.max_pipes, config.relay.pipe_size);
        let snapshot = Snapshot::build(Arc::new(config), None, 1);
        Self {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(snapshot),
                pipes,
                connections: Arc::new(Semaphore::new(max_connections)),
                max_connections,
                stop_tunnels: CancellationToken::new(),
                stats: Stats::default(),
                next_conn_id: AtomicU64::new(1),
            }),
        }
    }

    /// Binds every configured listener, in configuration order.
    pub async fn bind(&self) -> Result<Vec<BoundListener>, ProxyError> {
        let snapshot = self.shared.snapshot.load_full();
        let mut bound = Vec::with_capacity(snapshot.config().listeners.len());
        for listener in &snapshot.config().listeners {
            let socket = accept::bind(listener.listen).map_err(|source| ProxyError::Bind {
                name: listener.name.clone(),
                addr: listener.listen,
                source,
            })?;
            bound.push(BoundListener::new(listener.name.clone(), socket));
        }
        Ok(bound)
    }

    /// Live counters of this server.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The routing snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// The connection limit in force (configured, or derived from the open-file limit).
    pub fn max_connections(&self) -> usize {
        self.shared.max_connections
    }

    /// Pipes held by tunnels, and idle in the pool.
    pub fn pipes(&self) -> (usize, usize) {
        (self.shared.pipes.in_use(), self.shared.pipes.idle())
    }

    /// Serves on these listeners until `shutdown` resolves; then stops accepting, gives live
    /// connections the configured shutdown deadline to finish, closes what is left, and returns.
    pub async fn run(
        &self,
        listeners: Vec<BoundListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProxyError> {
        let snapshot = self.shared.snapshot.load_full();
        for l in &listeners {
            if snapshot.listener(&l.name).is_none() {
                return Err(ProxyError::UnknownListener(l.name.clone()));
            }
        }
        let stop_accepting = CancellationToken::new();
        let connections = TaskTracker::new();
        let mut accept_loops = tokio::task::JoinSet::new();
        for l in listeners {
            let addr = l.local_addr().ok();
            info!(listener = %l.name, addr = ?addr, max_connections = self.shared.max_connections, "listening");
            accept_loops.spawn(accept::accept_loop(
                Arc::clone(&self.shared),
                l,
                stop_accepting.clone(),
                connections.clone(),
            ));
        }

        shutdown.await;
        let deadline = snapshot.config().timeouts.shutdown;
        let live = self.shared.stats.connections_active();
        info!(
            live,
            deadline = ?deadline,
            "shutting down: no longer accepting, waiting for live connections"
        );
        stop_accepting.cancel();
        while accept_loops.join_next().await.is_some() {}
        connections.close();
        if tokio::time::timeout(deadline, connections.wait())
            .await
            .is_err()
        {
            let left = self.shared.stats.connections_active();
            warn!(left, "shutdown deadline reached: closing live connections");
            self.shared.stop_tunnels.cancel();
            connections.wait().await;
        }
        info!("shut down");
        Ok(())
    }
}
