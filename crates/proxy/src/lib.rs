//! Composition: listeners, the per-connection pipeline, the routing snapshot and shutdown.
//!
//! This is the only crate that knows all the others. For every accepted connection it runs the
//! pipeline (see `LIFECYCLE.md` beside this file):
//!
//! ```text
//! accept ─ permit ─ L7 act (sluice-handshake: read, parse, classify, route)
//!        ─ pick (sluice-balance) ─ connect ─ forward head ─ read response head
//!        ─ 101 ─ L4 act (sluice-splice: relay until both sides are done)
//!        ─ plain request: HTTP/1.1 at L7, request by request over keep-alive (`http.rs`,
//!          backend connections reused from an idle pool, `pool.rs`), until an upgrade
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
mod admin;
mod client;
mod conn;
mod discovery;
mod handoff;
mod health;
mod http;
mod l4;
mod limits;
mod pool;
mod proxy_protocol;
mod reload;
mod snapshot;
mod source_addrs;
mod sources;
mod stats;
mod status;
mod stream;
mod tunnels;
mod upgrade;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use sluice_config::Config;
use sluice_splice::PipePool;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use handoff::Adoption;
pub use limits::derived_max_connections;
pub use reload::{ReloadError, ReloadStats};
pub use snapshot::{ListenerRuntime, Snapshot, check_tls};
pub use source_addrs::check as check_source_addrs;
pub use stats::{Refused, Stats, StatusClass};

use reload::Control;
use tunnels::Tunnels;

/// A listener's address could not be bound (at start or by a reload).
#[derive(Debug, thiserror::Error)]
#[error("listener {name}: cannot listen on {addr}: {source}")]
pub struct BindError {
    pub name: String,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Why the proxy could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener's address could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A bound listener was handed to [`Server::run`] that the configuration does not name.
    #[error("listener {0} is not in the configuration")]
    UnknownListener(String),
    /// TLS files could not be loaded (listener certificates; pool CA bundles and client
    /// certificates), one line per problem.
    #[error("TLS certificates:\n{}", .0.join("\n"))]
    Tls(Vec<String>),
    /// A pool's source address cannot be bound on this host, one line per address.
    #[error("source addresses:\n{}", .0.join("\n"))]
    SourceAddrs(Vec<String>),
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

    /// A second descriptor of the same listening socket.
    pub(crate) fn try_clone_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        std::os::fd::AsFd::as_fd(&self.listener).try_clone_to_owned()
    }
}

/// State shared by the accept loops and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) pipes: PipePool,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) max_connections: usize,
    /// Per-source limits: live connections and new-connection buckets by client address.
    pub(crate) sources: Arc<sources::Sources>,
    /// Cancelled when everything must end now (the shutdown deadline passed): handshakes still
    /// in flight (tunnels are closed through their registry, `Tunnels::close_all`).
    pub(crate) stop_tunnels: CancellationToken,
    /// Live tunnels, for drain and shutdown.
    pub(crate) tunnels: Tunnels,
    /// Suspended tunnels on their way to a successor (binary upgrade).
    pub(crate) handoff: handoff::Handoff,
    /// Cancelled when shutdown starts: keep-alive connections close instead of waiting for
    /// their next request, and answers in flight say `Connection: close`.
    pub(crate) closing: CancellationToken,
    /// Idle keep-alive backend connections of plain HTTP requests.
    pub(crate) idle: pool::IdlePool,
    /// Every connection task, so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    /// Reload and shutdown state; taken by the control plane only, never by a connection.
    pub(crate) control: tokio::sync::Mutex<Control>,
    /// Whether the server accepts new connections (false before `run` and from shutdown on).
    pub(crate) ready: AtomicBool,
    /// Woken when `run` starts accepting.
    pub(crate) started_accepting: tokio::sync::Notify,
    pub(crate) stats: Stats,
    pub(crate) reloads: ReloadStats,
    pub(crate) next_conn_id: AtomicU64,
    pub(crate) started: std::time::Instant,
    /// The admin listener: bound by `bind`, served by `run` until shutdown ends.
    pub(crate) admin: std::sync::Mutex<AdminState>,
}

/// The admin listener's socket and, once serving, how to stop it.
#[derive(Debug, Default)]
pub(crate) struct AdminState {
    bound: Option<TcpListener>,
    addr: Option<SocketAddr>,
    /// A second descriptor of the serving admin socket, for a successor (`upgrade.rs`).
    socket: Option<std::os::fd::OwnedFd>,
    stop: Option<CancellationToken>,
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
        let pipes = PipePool::new(config.relay.max_pipes, config.relay.pipe_size)
            .grow_to(config.relay.pipe_max_size);
        let sources = Arc::new(sources::Sources::new(
            config.per_source.table_size,
            config.per_source.ipv4_prefix,
            config.per_source.ipv6_prefix,
        ));
        // The process-wide recorder; a second server in the same process shares it.
        if let Err(error) = sluice_metrics::Exporter::install() {
            warn!(%error, "metrics disabled");
        }
        let loaded = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        sluice_metrics::global::config_loaded(1, loaded);
        let snapshot = Snapshot::build(Arc::new(config), 1, |_, _| None);
        Self {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(snapshot),
                pipes,
                connections: Arc::new(Semaphore::new(max_connections)),
                max_connections,
                sources,
                stop_tunnels: CancellationToken::new(),
                tunnels: Tunnels::default(),
                handoff: handoff::Handoff::default(),
                closing: CancellationToken::new(),
                idle: pool::IdlePool::default(),
                tasks: TaskTracker::new(),
                control: tokio::sync::Mutex::new(Control::default()),
                ready: AtomicBool::new(false),
                started_accepting: tokio::sync::Notify::new(),
                stats: Stats::default(),
                reloads: ReloadStats::default(),
                next_conn_id: AtomicU64::new(1),
                started: std::time::Instant::now(),
                admin: std::sync::Mutex::new(AdminState::default()),
            }),
        }
    }

    /// Binds every configured listener, in configuration order, and the admin listener.
    /// Pools with DNS discovery are resolved here, before anything can be accepted.
    pub async fn bind(&self) -> Result<Vec<BoundListener>, ProxyError> {
        let bound = self.bind_with(|_, _| None)?;
        self.discover_at_start().await;
        Ok(bound)
    }

    /// [`Server::bind`], taking a listener's socket from `inherited(name, configured address)`
    /// when it has one (a socket handed over by a predecessor) and binding it otherwise.
    pub(crate) fn bind_with(
        &self,
        mut inherited: impl FnMut(&str, SocketAddr) -> Option<TcpListener>,
    ) -> Result<Vec<BoundListener>, ProxyError> {
        let snapshot = self.shared.snapshot.load_full();
        if !snapshot.tls_errors().is_empty() {
            return Err(ProxyError::Tls(snapshot.tls_errors().to_vec()));
        }
        let source_addrs = source_addrs::check(snapshot.config());
        if !source_addrs.is_empty() {
            return Err(ProxyError::SourceAddrs(source_addrs));
        }
        let mut bind = |name: &str, addr: SocketAddr| match inherited(name, addr) {
            Some(listener) => Ok(BoundListener::new(name, listener)),
            None => accept::bind_named(name, addr),
        };
        let mut bound = Vec::with_capacity(snapshot.config().listeners.len());
        for listener in &snapshot.config().listeners {
            bound.push(bind(&listener.name, listener.listen)?);
        }
        if let Some(admin) = &snapshot.config().admin {
            let listener = bind("admin", admin.listen)?;
            let mut state = self.admin_state();
            state.addr = listener.local_addr().ok();
            state.bound = Some(listener.listener);
        }
        Ok(bound)
    }

    /// Resolves the discovery of every pool that has one, once (by `bind`, or by `run` when
    /// it was not called), before anything is accepted; the first snapshot takes the answers.
    async fn discover_at_start(&self) {
        let mut control = self.shared.control.lock().await;
        if control.resolved_at_start {
            return;
        }
        control.resolved_at_start = true;
        let snapshot = self.shared.snapshot.load_full();
        if snapshot
            .config()
            .pools
            .iter()
            .all(|p| p.discovery.is_none())
        {
            return;
        }
        let (config, next) = discovery::resolve_at_start(snapshot.config().clone()).await;
        let resolved = Snapshot::build(Arc::new(config), snapshot.generation(), |_, _| None);
        self.shared.snapshot.store(Arc::new(resolved));
        control.first_resolution = next;
    }

    /// The admin listener's address, once bound.
    pub async fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_state().addr
    }

    /// How long since this server was created.
    pub fn uptime(&self) -> std::time::Duration {
        self.shared.started.elapsed()
    }

    /// Brings the metrics that are read rather than recorded up to date: bytes of live tunnels,
    /// relay totals, pipes, readiness. The admin listener calls it every few seconds and before
    /// each scrape.
    pub fn publish_metrics(&self) {
        self.shared.tunnels.publish_bytes();
        let relay = sluice_splice::stats();
        let (in_use, idle) = self.pipes();
        sluice_metrics::global::relay(
            relay.spliced_bytes(),
            relay.copied_bytes(),
            relay.copy_fallbacks(),
            in_use,
            idle,
        );
        sluice_metrics::global::ready(self.is_ready());
        sluice_metrics::global::source_table_entries(self.source_table_len());
        let snapshot = self.snapshot();
        for (pool, _, backends) in snapshot.pools_with_metrics() {
            for (backend, metrics) in pool.backends().iter().zip(backends) {
                metrics
                    .up
                    .set(if backend.is_available() { 1.0 } else { 0.0 });
            }
        }
    }

    fn admin_state(&self) -> std::sync::MutexGuard<'_, AdminState> {
        self.shared
            .admin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// Client sources tracked by the per-source limits now (at most
    /// `limits.per_source.table_size`).
    pub fn source_table_len(&self) -> usize {
        self.shared.sources.len()
    }

    /// Pipes held by tunnels, and idle in the pool.
    pub fn pipes(&self) -> (usize, usize) {
        (self.shared.pipes.in_use(), self.shared.pipes.idle())
    }

    /// Whether the server is accepting: true while it runs, false before and from shutdown on.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Relaxed)
    }

    /// Live tunnels now.
    pub fn live_tunnels(&self) -> usize {
        self.shared.tunnels.len()
    }

    /// Idle keep-alive backend connections held for plain HTTP requests now.
    pub fn idle_backend_connections(&self) -> usize {
        self.shared.idle.len()
    }

    /// Counters of configuration reloads.
    pub fn reloads(&self) -> &ReloadStats {
        &self.shared.reloads
    }

    /// Active health checkers now: one per backend of the live configuration's checked pools.
    pub async fn health_checkers(&self) -> usize {
        self.shared.control.lock().await.health.len()
    }

    /// The addresses the running listeners are bound to, by listener name.
    pub async fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        self.shared.control.lock().await.listener_addrs()
    }

    /// Serves on these listeners until `shutdown` resolves (pools with DNS discovery are
    /// resolved first: no connection is accepted before); then stops accepting, gives live
    /// connections until the shutdown deadline to finish, closes what is left (oldest first,
    /// spread over the end of the deadline), and returns. `shutdown` is first polled once every
    /// listener accepts and the admin listener serves (the binary reports readiness then).
    pub async fn run(
        &self,
        listeners: Vec<BoundListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProxyError> {
        {
            self.discover_at_start().await;
            let snapshot = self.shared.snapshot.load_full();
            if let Some(l) = listeners
                .iter()
                .find(|l| snapshot.listener(&l.name).is_none())
            {
                return Err(ProxyError::UnknownListener(l.name.clone()));
            }
            let mut control = self.shared.control.lock().await;
            for l in listeners {
                let configured = snapshot
                    .listener(&l.name)
                    .map(|r| r.config().listen)
                    .ok_or_else(|| ProxyError::UnknownListener(l.name.clone()))?;
                control.start_listener(&self.shared, l, configured);
            }
            health::snapshot_live(&mut control.health, None, &snapshot);
            let next = std::mem::take(&mut control.first_resolution);
            control.discovery.follow(&self.shared, &snapshot, &next);
            self.shared.ready.store(true, Ordering::Relaxed);
            self.shared.started_accepting.notify_waiters();
            sluice_metrics::global::ready(true);
            let bound = self.admin_state().bound.take();
            if let Some(listener) = bound {
                self.serve_admin(listener);
            }
        }
        shutdown.await;
        self.shutdown().await;
        Ok(())
    }

    /// Serves the admin listener on `listener` until shutdown (or a binary upgrade) stops it.
    pub(crate) fn serve_admin(&self, listener: TcpListener) {
        let token = self
            .snapshot()
            .config()
            .admin
            .as_ref()
            .and_then(|a| a.token.as_ref())
            .map(|t| Arc::from(t.expose()));
        let stop = CancellationToken::new();
        let mut admin = self.admin_state();
        admin.socket = std::os::fd::AsFd::as_fd(&listener)
            .try_clone_to_owned()
            .ok();
        if let Ok(addr) = listener.local_addr() {
            admin.addr = Some(addr);
        }
        tokio::spawn(admin::serve(self.clone(), listener, token, stop.clone()));
        admin.stop = Some(stop);
    }

    async fn shutdown(&self) {
        let shared = &self.shared;
        shared.ready.store(false, Ordering::Relaxed);
        sluice_metrics::global::ready(false);
        // Holding the control lock for the rest of the process: no reload may reopen anything.
        let mut control = shared.control.lock().await;
        control.stop_all_listeners().await;
        control.health.stop();
        control.discovery.stop();
        shared.tasks.close();
        // Keep-alive connections waiting for a request close now; none is reused again.
        shared.closing.cancel();
        shared.idle.clear();

        let timeouts = shared.snapshot.load().config().timeouts;
        let spread = timeouts.shutdown_spread.min(timeouts.shutdown);
        let grace = timeouts.shutdown.saturating_sub(spread);
        info!(
            live = shared.stats.connections_active(),
            tunnels = shared.tunnels.len(),
            grace = ?grace,
            spread = ?spread,
            "shutting down: no longer accepting, waiting for live connections"
        );
        if tokio::time::timeout(grace, shared.tasks.wait())
            .await
            .is_err()
        {
            let closed = shared.tunnels.close_all(spread).await;
            warn!(closed, "shutdown deadline reached: closed the tunnels left");
            // Handshakes still in flight, and tunnels they would open, end now too.
            shared.stop_tunnels.cancel();
            if tokio::time::timeout(FINAL_WAIT, shared.tasks.wait())
                .await
                .is_err()
            {
                warn!("connections still closing after the deadline; leaving them");
            }
        }
        // The admin listener answered /readyz with 503 during the drain; it goes last.
        if let Some(stop) = self.admin_state().stop.take() {
            stop.cancel();
        }
        info!("shut down");
    }
}

/// After the last tunnel was told to close, how long closing may take.
const FINAL_WAIT: Duration = Duration::from_secs(5);
