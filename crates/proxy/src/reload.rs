//! Reload: a new configuration replaces the running one, all or nothing, without touching a
//! single established connection.
//!
//! The order matters (see `Server::reload`):
//! 1. check what cannot change without a restart, and build the whole next snapshot beside the
//!    live one (pools keep the identity and live counts of backends they still list);
//! 2. bind every new listener; any failure rejects the reload with nothing changed;
//! 3. commit, which cannot fail: stop the accept loops of removed listeners, swap the snapshot
//!    in one `ArcSwap` store, bring the health checkers in line with it (`health.rs`: unchanged
//!    backends keep theirs, and every backend keeps its health), start the accept loops of new
//!    listeners;
//! 4. retire the backends the new configuration dropped: they take no new connection, and their
//!    tunnels drain (kept until they end by themselves, or closed oldest first over the pool's
//!    `drain_spread` once its `drain_timeout` passed).
//!
//! Reloads are serialised by the control lock; connections never take it. A change of a pool's
//! DNS-discovered backends (`discovery.rs`) is committed by the same steps (`commit`), with the
//! running configuration and that pool's backends replaced; a reload first fills in the
//! discovered backends of the new configuration (kept when the question is unchanged).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_balance::Backend;
use sluice_config::{Config, ConfigErrors};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::snapshot::Snapshot;
use crate::{BindError, BoundListener, Server, Shared, accept};

/// Why a reload was refused. The running configuration is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file is not a valid configuration.
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigErrors),
    /// A setting changed that only a restart can apply.
    #[error("{setting} cannot change without a restart (running: {running}, new: {new})")]
    RestartRequired {
        setting: &'static str,
        running: String,
        new: String,
    },
    /// A new listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Certificates of a TLS listener, or a pool's TLS files (CA bundle, client certificate),
    /// could not be loaded (missing file, bad PEM, a key that does not match its certificate,
    /// a route host no certificate covers).
    #[error("TLS certificates:\n{}", .0.join("\n"))]
    Tls(Vec<String>),
    /// A pool's discovery changed and its new question could not be resolved (the running
    /// configuration keeps its last good backends), one line per pool.
    #[error("DNS discovery:\n{}", .0.join("\n"))]
    Discovery(Vec<String>),
    /// A pool's source address cannot be bound on this host, one line per address.
    #[error("source addresses:\n{}", .0.join("\n"))]
    SourceAddrs(Vec<String>),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl ReloadError {
    /// A fixed label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Config(_) => "invalid_config",
            Self::RestartRequired { .. } => "restart_required",
            Self::Bind(_) => "bind_failed",
            Self::Tls(_) => "tls_failed",
            Self::Discovery(_) => "discovery_failed",
            Self::SourceAddrs(_) => "source_addrs",
            Self::ShuttingDown => "shutting_down",
        }
    }
}

/// Counters of reloads since start.
#[derive(Debug, Default)]
pub struct ReloadStats {
    succeeded: AtomicU64,
    failed: AtomicU64,
    last_success_unix: AtomicU64,
}

impl ReloadStats {
    /// Reloads applied.
    pub fn succeeded(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed)
    }

    /// Reloads refused (invalid file, restart-only change, bind failure).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// When the last reload was applied, in seconds since the Unix epoch (0: never).
    pub fn last_success_unix(&self) -> u64 {
        self.last_success_unix.load(Ordering::Relaxed)
    }
}

/// A running accept loop.
#[derive(Debug)]
struct RunningListener {
    /// The address in the configuration (may say port 0).
    configured: SocketAddr,
    /// The address bound.
    local: SocketAddr,
    /// A second descriptor of the listening socket, for a successor (`upgrade.rs`).
    socket: Option<std::os::fd::OwnedFd>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// A backend dropped by a reload whose tunnels may still be live.
#[derive(Debug)]
struct Retired {
    backend: Arc<Backend>,
    /// The generation that retired it; a drain timer acts only if it still matches.
    since: u64,
}

/// Control-plane state: running listeners, retired backends and active health checkers.
#[derive(Debug, Default)]
pub(crate) struct Control {
    listeners: HashMap<String, RunningListener>,
    retired: HashMap<(String, SocketAddr), Retired>,
    shutting_down: bool,
    /// One checker per backend of the live snapshot's checked pools (`health.rs`).
    pub(crate) health: sluice_health::HealthChecks,
    /// One DNS resolution loop per pool with discovery (`discovery.rs`).
    pub(crate) discovery: crate::discovery::Watchers,
    /// Whether the start-up resolution of discovered pools was done.
    pub(crate) resolved_at_start: bool,
    /// When each pool resolved at start asks again (taken by `run`).
    pub(crate) first_resolution: HashMap<String, Duration>,
}

impl Control {
    pub(crate) fn start_listener(
        &mut self,
        shared: &Arc<Shared>,
        listener: BoundListener,
        configured: SocketAddr,
    ) {
        let local = listener.local_addr().unwrap_or(configured);
        let socket = match listener.try_clone_fd() {
            Ok(fd) => Some(fd),
            Err(error) => {
                warn!(listener = %listener.name(), %error, "cannot keep a copy of the listening socket: an upgrade will bind it anew");
                None
            }
        };
        let stop = CancellationToken::new();
        info!(listener = %listener.name(), addr = %local, "listening");
        let name = listener.name().to_owned();
        let task = tokio::spawn(accept::accept_loop(
            Arc::clone(shared),
            listener,
            stop.clone(),
            shared.tasks.clone(),
        ));
        self.listeners.insert(
            name,
            RunningListener {
                configured,
                local,
                socket,
                stop,
                task,
            },
        );
    }

    pub(crate) fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        self.listeners
            .iter()
            .map(|(name, l)| (name.clone(), l.local))
            .collect()
    }

    /// Copies of the running listeners' sockets, for a successor.
    pub(crate) fn listening_sockets(
        &self,
    ) -> Vec<(sluice_handoff::ListenerMeta, std::os::fd::OwnedFd)> {
        self.listeners
            .iter()
            .filter_map(|(name, l)| {
                let fd = l.socket.as_ref()?.try_clone().ok()?;
                let meta = sluice_handoff::ListenerMeta {
                    name: name.clone(),
                    configured: l.configured,
                    bound: l.local,
                };
                Some((meta, fd))
            })
            .collect()
    }

    async fn stop_listener(&mut self, name: &str) {
        if let Some(l) = self.listeners.remove(name) {
            l.stop.cancel();
            let _ = l.task.await;
            info!(listener = %name, addr = %l.local, "listener closed");
        }
    }

    pub(crate) fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Listeners may start again (a binary upgrade failed after this process stopped
    /// accepting).
    pub(crate) fn accept_again(&mut self) {
        self.shutting_down = false;
    }

    pub(crate) async fn stop_all_listeners(&mut self) {
        self.shutting_down = true;
        let names: Vec<String> = self.listeners.keys().cloned().collect();
        for name in names {
            self.stop_listener(&name).await;
        }
    }

    /// The backend with this identity, live or retired, so a backend dropped and added back
    /// keeps its live count and ends its drain.
    fn known_backend(&self, old: &Snapshot, pool: &str, addr: SocketAddr) -> Option<Arc<Backend>> {
        old.pool_by_name(pool)
            .and_then(|p| p.backend(addr).cloned())
            .or_else(|| {
                self.retired
                    .get(&(pool.to_owned(), addr))
                    .map(|r| Arc::clone(&r.backend))
            })
    }
}

impl Server {
    /// Reads `path` and applies it as [`Server::reload`] does; an invalid file is refused with
    /// every error.
    pub async fn reload_file(&self, path: &Path) -> Result<u64, ReloadError> {
        let result = match sluice_config::load(path) {
            Ok(config) => self.apply(config).await,
            Err(errors) => Err(ReloadError::Config(errors)),
        };
        self.account(result)
    }

    /// Applies `config` in place of the running configuration, all or nothing, and returns the
    /// new generation. Established connections are never touched: connections to backends the
    /// new configuration keeps go on as before, those to dropped backends drain. A refused
    /// reload is logged, every cause at error level, and the running configuration stays.
    pub async fn reload(&self, config: Config) -> Result<u64, ReloadError> {
        let result = self.apply(config).await;
        self.account(result)
    }

    fn account(&self, result: Result<u64, ReloadError>) -> Result<u64, ReloadError> {
        let stats = &self.shared.reloads;
        match &result {
            Ok(generation) => {
                stats.succeeded.fetch_add(1, Ordering::Relaxed);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                stats.last_success_unix.store(now, Ordering::Relaxed);
                sluice_metrics::global::reload("success");
                sluice_metrics::global::config_loaded(*generation, now);
            }
            Err(error) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                sluice_metrics::global::reload("error");
                log_refused(error);
            }
        }
        result
    }

    async fn apply(&self, config: Config) -> Result<u64, ReloadError> {
        let shared = &self.shared;
        let mut control = shared.control.lock().await;
        if control.shutting_down {
            return Err(ReloadError::ShuttingDown);
        }
        let old = shared.snapshot.load_full();
        restart_only(old.config(), &config)?;
        let sources = crate::source_addrs::check(&config);
        if !sources.is_empty() {
            return Err(ReloadError::SourceAddrs(sources));
        }
        // Pools with discovery: the backends resolved so far when the question is the same,
        // else resolved now; nothing is committed before.
        let (config, next) = crate::discovery::fill(&old, config)
            .await
            .map_err(ReloadError::Discovery)?;
        let done = commit(shared, &mut control, &old, config, &next, Reason::Reload).await?;
        info!(
            generation = done.generation,
            listeners_removed = done.listeners_removed,
            listeners_started = done.listeners_started,
            "configuration reloaded"
        );
        Ok(done.generation)
    }
}

/// Steps 1 to 4 of a reload (module documentation) for `config`, whose discovered backends are
/// filled in: build the next snapshot beside `old`, bind new listeners, commit, retire dropped
/// backends. Reloads and discovery changes both end here, under the control lock. `next`: when
/// new discovery loops first ask again, by pool. `Reason::Discovery` keeps `old`'s certificates
/// (a reload reads them again).
pub(crate) async fn commit(
    shared: &Arc<Shared>,
    control: &mut Control,
    old: &Arc<Snapshot>,
    config: Config,
    next: &HashMap<String, Duration>,
    reason: Reason,
) -> Result<Committed, ReloadError> {
    {
        // 1. The next snapshot, beside the live one.
        let generation = old.generation() + 1;
        let snapshot = Arc::new(Snapshot::build_from(
            Arc::new(config),
            generation,
            |pool, addr| control.known_backend(old, pool, addr),
            (reason == Reason::Discovery).then_some(&**old),
        ));
        if !snapshot.tls_errors().is_empty() {
            return Err(ReloadError::Tls(snapshot.tls_errors().to_vec()));
        }

        // 2. New listeners (or ones whose address changed) are bound before anything changes.
        let mut to_stop = Vec::new();
        for (name, running) in &control.listeners {
            match snapshot.listener(name) {
                Some(l) if l.config().listen == running.configured => {}
                _ => to_stop.push(name.clone()),
            }
        }
        let mut to_start = Vec::new();
        for l in &snapshot.config().listeners {
            let kept = control
                .listeners
                .get(&l.name)
                .is_some_and(|r| r.configured == l.listen);
            if kept {
                continue;
            }
            // An address still held by a running listener (a listener renamed in place) fails
            // here too: such a change needs two reloads or a restart.
            to_start.push((accept::bind_listener(l)?, l.listen));
        }

        // 3. Commit: nothing below can fail.
        for name in &to_stop {
            control.stop_listener(name).await;
        }
        shared.snapshot.store(Arc::clone(&snapshot));
        crate::health::snapshot_live(&mut control.health, Some(old), &snapshot);
        control.discovery.follow(shared, &snapshot, next);
        let started = to_start.len();
        for (listener, configured) in to_start {
            control.start_listener(shared, listener, configured);
        }

        // 4. Backends dropped by this reload drain; backends added back stop draining.
        retire_dropped(control, shared, old, &snapshot);
        Ok(Committed {
            generation,
            listeners_removed: to_stop.len(),
            listeners_started: started,
        })
    }
}

/// Why a commit happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// A new configuration (SIGHUP): everything is read again.
    Reload,
    /// Discovered backends changed: only they differ from the running configuration.
    Discovery,
}

/// What a commit did.
pub(crate) struct Committed {
    pub(crate) generation: u64,
    listeners_removed: usize,
    listeners_started: usize,
}

/// Settings whose state was created at start (the pipe pool, the connection semaphore).
fn restart_only(running: &Config, new: &Config) -> Result<(), ReloadError> {
    let admin = |c: &Config| {
        c.admin.as_ref().map_or_else(
            || "none".to_owned(),
            |a| {
                format!(
                    "{} (token {})",
                    a.listen,
                    if a.token.is_some() { "set" } else { "unset" }
                )
            },
        )
    };
    if running.admin != new.admin {
        return Err(ReloadError::RestartRequired {
            setting: "admin",
            running: admin(running),
            new: admin(new),
        });
    }
    let checks: [(&'static str, String, String); 7] = [
        (
            "relay.max_pipes",
            running.relay.max_pipes.to_string(),
            new.relay.max_pipes.to_string(),
        ),
        (
            "relay.pipe_size",
            running.relay.pipe_size.to_string(),
            new.relay.pipe_size.to_string(),
        ),
        (
            "relay.pipe_max_size",
            running.relay.pipe_max_size.to_string(),
            new.relay.pipe_max_size.to_string(),
        ),
        (
            "limits.max_connections",
            format!("{:?}", running.limits.max_connections),
            format!("{:?}", new.limits.max_connections),
        ),
        (
            "limits.per_source.table_size",
            running.per_source.table_size.to_string(),
            new.per_source.table_size.to_string(),
        ),
        (
            "limits.per_source.ipv4_prefix",
            running.per_source.ipv4_prefix.to_string(),
            new.per_source.ipv4_prefix.to_string(),
        ),
        (
            "limits.per_source.ipv6_prefix",
            running.per_source.ipv6_prefix.to_string(),
            new.per_source.ipv6_prefix.to_string(),
        ),
    ];
    for (setting, running, new) in checks {
        if running != new {
            return Err(ReloadError::RestartRequired {
                setting,
                running,
                new,
            });
        }
    }
    Ok(())
}

/// Marks backends of `old` that `new` no longer lists as draining, and schedules the close of
/// their tunnels; backends `new` lists again are live once more.
fn retire_dropped(control: &mut Control, shared: &Arc<Shared>, old: &Snapshot, new: &Snapshot) {
    let generation = new.generation();
    for pool in new.pools() {
        for backend in pool.backends() {
            if control
                .retired
                .remove(&(pool.name().to_owned(), backend.addr()))
                .is_some()
            {
                backend.set_draining(false);
                info!(pool = pool.name(), backend = %backend.addr(), "backend back in the configuration: no longer draining");
            }
        }
    }
    for pool in old.pools() {
        let kept = new.pool_by_name(pool.name());
        let policy = new
            .config()
            .pool(pool.name())
            .or_else(|| old.config().pool(pool.name()))
            .map(DrainPolicy::of)
            .unwrap_or_default();
        for backend in pool.backends() {
            if kept.is_some_and(|p| p.backend(backend.addr()).is_some()) {
                continue;
            }
            backend.set_draining(true);
            info!(
                pool = pool.name(),
                backend = %backend.addr(),
                tunnels = backend.active(),
                drain_timeout = ?policy.timeout,
                "backend removed: draining"
            );
            control.retired.insert(
                (pool.name().to_owned(), backend.addr()),
                Retired {
                    backend: Arc::clone(backend),
                    since: generation,
                },
            );
            if let Some(timeout) = policy.timeout {
                spawn_drain(
                    shared,
                    pool.name(),
                    Arc::clone(backend),
                    generation,
                    timeout,
                    policy.spread,
                );
            }
        }
    }
    // Forget retired backends with nothing left to drain.
    control
        .retired
        .retain(|_, r| r.backend.active() > 0 || r.since == generation);
}

/// After `timeout`, closes the tunnels still open to `backend`, spread over `spread`, unless a
/// later reload brought the backend back (or retired it again, with a timer of its own).
fn spawn_drain(
    shared: &Arc<Shared>,
    pool: &str,
    backend: Arc<Backend>,
    since: u64,
    timeout: Duration,
    spread: Duration,
) {
    let shared = Arc::clone(shared);
    let key = (pool.to_owned(), backend.addr());
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let still_retired = shared
            .control
            .lock()
            .await
            .retired
            .get(&key)
            .is_some_and(|r| r.since == since && Arc::ptr_eq(&r.backend, &backend));
        if still_retired {
            shared.tunnels.close_backend(&backend, spread).await;
        }
    });
}

/// How a pool's removed backends drain.
#[derive(Debug, Clone, Copy, Default)]
struct DrainPolicy {
    /// `None`: tunnels are kept until they end by themselves.
    timeout: Option<Duration>,
    spread: Duration,
}

impl DrainPolicy {
    fn of(pool: &sluice_config::Pool) -> Self {
        Self {
            timeout: pool.drain_timeout,
            spread: pool.drain_spread,
        }
    }
}

/// Logs a refused reload, every cause at error level.
fn log_refused(error: &ReloadError) {
    match error {
        ReloadError::Config(errors) => {
            for e in &errors.errors {
                error!(reason = error.label(), "reload refused: {e}");
            }
        }
        other => error!(reason = other.label(), "reload refused: {other}"),
    }
}
