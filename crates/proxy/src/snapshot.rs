//! The routing snapshot: everything a new connection needs to be routed and balanced, built
//! from one configuration, immutable once built, swapped whole.

use std::net::SocketAddr;
use std::sync::Arc;

use ipnet::IpNet;
use sluice_balance::{Backend, Pool};
use sluice_config::{Config, Listener};
use sluice_handshake::Router;
use sluice_metrics::{BackendMetrics, ListenerMetrics, PoolMetrics};

/// Routes, pools and balancer state of one configuration generation.
#[derive(Debug)]
pub struct Snapshot {
    generation: u64,
    config: Arc<Config>,
    pools: Vec<Arc<Pool>>,
    /// Metric handles of each pool, and of each of its backends (same order as the pool's).
    pool_metrics: Vec<(PoolMetrics, Vec<BackendMetrics>)>,
    listeners: Vec<ListenerRuntime>,
}

/// One listener's compiled routing.
#[derive(Debug)]
pub struct ListenerRuntime {
    config: Listener,
    router: Router,
    metrics: ListenerMetrics,
}

impl ListenerRuntime {
    /// The listener's configuration.
    pub fn config(&self) -> &Listener {
        &self.config
    }

    /// Its compiled routes.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Its metric handles.
    pub fn metrics(&self) -> &ListenerMetrics {
        &self.metrics
    }

    /// Whether a peer's forwarded headers are trusted (appended to rather than replaced).
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        let peer = canonical(peer);
        self.config
            .trusted_proxies
            .iter()
            .any(|net: &IpNet| net.contains(&peer))
    }
}

impl Snapshot {
    /// Builds the snapshot of `config`, generation `generation`. `known(pool, addr)` returns
    /// the backend of that identity if an earlier generation had it, so it keeps its live count
    /// and state; backends it does not know are new.
    pub fn build(
        config: Arc<Config>,
        generation: u64,
        known: impl Fn(&str, SocketAddr) -> Option<Arc<Backend>>,
    ) -> Self {
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|p| Arc::new(Pool::from_config(p, |addr| known(&p.name, addr))))
            .collect();
        let pool_index = |name: &str| config.pools.iter().position(|p| p.name == name);
        let listeners = config
            .listeners
            .iter()
            .map(|l| ListenerRuntime {
                router: Router::new(
                    config.routes_for(&l.name),
                    pool_index,
                    l.unknown_host_status,
                ),
                metrics: ListenerMetrics::new(&l.name),
                config: l.clone(),
            })
            .collect();
        let pool_metrics = pools
            .iter()
            .map(|pool| {
                let backends = pool
                    .backends()
                    .iter()
                    .map(|b| BackendMetrics::new(pool.name(), &b.addr().to_string()))
                    .collect();
                (PoolMetrics::new(pool.name()), backends)
            })
            .collect();
        Self {
            generation,
            config,
            pools,
            pool_metrics,
            listeners,
        }
    }

    /// Which configuration this is: 1 at start, one more per successful reload.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The pools, in configuration order (the router's pool indices point here).
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// The pool at a router's index.
    pub fn pool(&self, index: usize) -> Option<&Arc<Pool>> {
        self.pools.get(index)
    }

    /// The metric handles of the pool at a router's index.
    pub fn pool_metrics(&self, index: usize) -> Option<&PoolMetrics> {
        self.pool_metrics.get(index).map(|(pool, _)| pool)
    }

    /// The metric handles of a backend of the pool at a router's index.
    pub fn backend_metrics(&self, index: usize, addr: SocketAddr) -> Option<&BackendMetrics> {
        let pool = self.pools.get(index)?;
        let position = pool.backends().iter().position(|b| b.addr() == addr)?;
        self.pool_metrics.get(index)?.1.get(position)
    }

    /// Every pool with the metric handles of its backends, in configuration order.
    pub fn pools_with_metrics(
        &self,
    ) -> impl Iterator<Item = (&Arc<Pool>, &PoolMetrics, &[BackendMetrics])> {
        self.pools
            .iter()
            .zip(&self.pool_metrics)
            .map(|(pool, (metrics, backends))| (pool, metrics, backends.as_slice()))
    }

    /// The pool with this name.
    pub fn pool_by_name(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.name() == name)
    }

    /// The listener with this name.
    pub fn listener(&self, name: &str) -> Option<&ListenerRuntime> {
        self.listeners.iter().find(|l| l.config.name == name)
    }
}

/// An IPv4 peer seen through an IPv6 socket (`::ffff:a.b.c.d`) as the IPv4 address it is.
pub(crate) fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}
