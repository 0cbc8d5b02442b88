//! The routing snapshot: everything a new connection needs to be routed and balanced, built
//! from one configuration, immutable once built, swapped whole.

use std::net::SocketAddr;
use std::sync::Arc;

use ipnet::IpNet;
use sluice_balance::{Backend, Pool};
use sluice_config::{Config, HostMatch, Listener, ListenerTls};
use sluice_handshake::Router;
use sluice_metrics::{BackendMetrics, ListenerMetrics, PoolMetrics};
use sluice_splice::RelayOptions;
use sluice_tls::{
    CertificateFiles, NamePattern, ServerCertificates, SniMap, Upstream, UpstreamSettings,
    WildcardDepth,
};
use tracing::warn;

use crate::source_addrs::SourceAddrs;

/// Routes, pools and balancer state of one configuration generation.
#[derive(Debug)]
pub struct Snapshot {
    generation: u64,
    config: Arc<Config>,
    pools: Vec<Arc<Pool>>,
    /// Metric handles of each pool, and of each of its backends (same order as the pool's).
    /// Shared (`Arc`) so a connection holds them past the snapshot without copying labels.
    pool_metrics: Vec<(Arc<PoolMetrics>, Vec<Arc<BackendMetrics>>)>,
    /// Each pool's source addresses (same order as the pools).
    source_addrs: Vec<SourceAddrs>,
    listeners: Vec<ListenerRuntime>,
    /// TLS to the backends of each pool (same order as `pools`; `None`: plain TCP), built once
    /// for this generation.
    upstreams: Vec<Option<Arc<Upstream>>>,
    /// Certificates that could not be loaded: the snapshot must not go live (start and reload
    /// refuse it).
    tls_errors: Vec<String>,
    /// How this generation's tunnels relay; each tunnel keeps the options it started with.
    relay: Arc<RelayOptions>,
}

/// One listener's compiled routing.
#[derive(Debug)]
pub struct ListenerRuntime {
    config: Listener,
    router: Router,
    metrics: Arc<ListenerMetrics>,
    /// `tcp` and `tls-passthrough` listeners: pool indices by server name (`tcp`: the default
    /// only, its pool).
    l4: SniMap<usize>,
    /// TLS-terminating `http` listeners: the certificates of this generation.
    tls: Option<Arc<ServerCertificates>>,
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
    pub fn metrics(&self) -> &Arc<ListenerMetrics> {
        &self.metrics
    }

    /// The TLS server configuration of a TLS-terminating listener (`None`: plain TCP).
    pub fn tls(&self) -> Option<&Arc<rustls::ServerConfig>> {
        self.tls.as_ref().map(|c| &c.config)
    }

    /// A `tcp` or `tls-passthrough` listener's pool for this server name (`None`: no name
    /// sent; `tcp` listeners ignore it): exact names, then wildcards, then the default pool.
    pub fn l4_pool(&self, sni: Option<&str>) -> Option<usize> {
        self.l4.get(sni).copied()
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
        Self::build_from(config, generation, known, None)
    }

    /// As [`Snapshot::build`], but listeners whose TLS settings are the same as in `loaded`
    /// keep its certificates instead of reading the files again: a change of discovered
    /// backends is not a certificate reload.
    pub(crate) fn build_from(
        config: Arc<Config>,
        generation: u64,
        known: impl Fn(&str, SocketAddr) -> Option<Arc<Backend>>,
        loaded: Option<&Snapshot>,
    ) -> Self {
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|p| Arc::new(Pool::from_config(p, |addr| known(&p.name, addr))))
            .collect();
        let pool_index = |name: &str| config.pools.iter().position(|p| p.name == name);
        let mut tls_errors = Vec::new();
        // The same for pools' TLS to their backends: unchanged settings keep the loaded
        // configuration (and with it the idle connections and health checkers made with it).
        let upstreams = config
            .pools
            .iter()
            .map(|p| {
                let kept = loaded.and_then(|old| {
                    let old_index = old.config.pools.iter().position(|o| o.name == p.name)?;
                    let same = old.config.pools.get(old_index)?.tls == p.tls;
                    same.then(|| old.upstreams.get(old_index).cloned().flatten())
                });
                kept.unwrap_or_else(|| load_upstream(p, &mut tls_errors))
            })
            .collect();
        let listeners = config
            .listeners
            .iter()
            .map(|l| ListenerRuntime {
                tls: match loaded
                    .and_then(|s| s.listener(&l.name))
                    .filter(|old| old.config.tls == l.tls)
                {
                    Some(old) => old.tls.clone(),
                    None => l
                        .tls
                        .as_ref()
                        .and_then(|tls| load_tls(&config, l, tls, &mut tls_errors)),
                },
                router: Router::new(
                    config.routes_for(&l.name),
                    pool_index,
                    l.unknown_host_status,
                ),
                metrics: Arc::new(ListenerMetrics::new(&l.name)),
                l4: l4_routes(l, pool_index),
                config: l.clone(),
            })
            .collect();
        let pool_metrics = pools
            .iter()
            .map(|pool| {
                let backends = pool
                    .backends()
                    .iter()
                    .map(|b| Arc::new(BackendMetrics::new(pool.name(), &b.addr().to_string())))
                    .collect();
                (Arc::new(PoolMetrics::new(pool.name())), backends)
            })
            .collect();
        let source_addrs = config
            .pools
            .iter()
            .map(|p| SourceAddrs::new(&p.name, &p.source_addrs))
            .collect();
        let relay = Arc::new(relay_options(&config));
        Self {
            generation,
            config,
            pools,
            pool_metrics,
            source_addrs,
            listeners,
            upstreams,
            tls_errors,
            relay,
        }
    }

    /// How this generation's tunnels relay.
    pub(crate) fn relay_options(&self) -> &Arc<RelayOptions> {
        &self.relay
    }

    /// TLS to the backends of the pool at a router's index (`None`: plain TCP).
    pub fn upstream(&self, index: usize) -> Option<&Arc<Upstream>> {
        self.upstreams.get(index).and_then(Option::as_ref)
    }

    /// Why certificates could not be loaded, one line each; empty when all loaded.
    pub fn tls_errors(&self) -> &[String] {
        &self.tls_errors
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
    pub fn pool_metrics(&self, index: usize) -> Option<&Arc<PoolMetrics>> {
        self.pool_metrics.get(index).map(|(pool, _)| pool)
    }

    /// The source addresses of the pool at a router's index (none when it has none).
    pub(crate) fn source_addrs(&self, index: usize) -> &SourceAddrs {
        self.source_addrs
            .get(index)
            .unwrap_or(&crate::source_addrs::NONE)
    }

    /// The metric handles of a backend of the pool at a router's index.
    pub fn backend_metrics(&self, index: usize, addr: SocketAddr) -> Option<&Arc<BackendMetrics>> {
        let pool = self.pools.get(index)?;
        let position = pool.backends().iter().position(|b| b.addr() == addr)?;
        self.pool_metrics.get(index)?.1.get(position)
    }

    /// Every pool with the metric handles of its backends, in configuration order.
    pub fn pools_with_metrics(
        &self,
    ) -> impl Iterator<Item = (&Arc<Pool>, &Arc<PoolMetrics>, &[Arc<BackendMetrics>])> {
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

/// Loads the certificates of every TLS listener and the TLS settings of every pool of `config`
/// as a start or a reload would, and returns what would refuse it, one line each (empty: all
/// load). For `sluice check`.
pub fn check_tls(config: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    for pool in &config.pools {
        load_upstream(pool, &mut errors);
    }
    for listener in &config.listeners {
        if let Some(tls) = &listener.tls {
            load_tls(config, listener, tls, &mut errors);
        }
    }
    errors
}

/// Loads a TLS listener's certificates; a failure, or a route `host` no certificate covers by
/// name, goes to `errors`. An expired certificate is a warning.
fn load_tls(
    config: &Config,
    listener: &Listener,
    tls: &ListenerTls,
    errors: &mut Vec<String>,
) -> Option<Arc<ServerCertificates>> {
    let files: Vec<CertificateFiles<'_>> = tls
        .certificates
        .iter()
        .map(|c| CertificateFiles {
            cert: &c.cert,
            key: &c.key,
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match sluice_tls::certs::load(&files, now) {
        Ok(certs) => {
            for warning in &certs.warnings {
                warn!(listener = %listener.name, "{warning}");
            }
            for route in config.routes_for(&listener.name) {
                let covered = match &route.host {
                    None => true,
                    Some(HostMatch::Exact(name)) => certs.covers(name),
                    Some(HostMatch::Wildcard(suffix)) => certs
                        .names()
                        .contains(&NamePattern::Wildcard(suffix.clone())),
                };
                if !covered {
                    let host = match &route.host {
                        Some(HostMatch::Exact(name)) => name.clone(),
                        Some(HostMatch::Wildcard(suffix)) => format!("*{suffix}"),
                        None => String::new(),
                    };
                    errors.push(format!(
                        "listener {}: no certificate for \"{host}\" (the host of a route); \
                         certificates cover {}",
                        listener.name,
                        certs
                            .names()
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            Some(Arc::new(certs))
        }
        Err(error) => {
            errors.push(format!("listener {}: {error}", listener.name));
            None
        }
    }
}

/// Loads a pool's TLS to its backends, if it has one; a failure goes to `errors`, at the key
/// that names the file concerned (file:line:col). `verify = false` is a warning.
fn load_upstream(pool: &sluice_config::Pool, errors: &mut Vec<String>) -> Option<Arc<Upstream>> {
    let tls = pool.tls.as_ref()?;
    let settings = UpstreamSettings {
        ca: tls.ca.as_ref().map(|c| c.path.as_path()),
        client_cert: tls
            .client_cert
            .as_ref()
            .map(|(cert, key)| (cert.path.as_path(), key.path.as_path())),
        sni: tls.sni.as_deref(),
        verify: tls.verify,
    };
    match Upstream::load(&settings) {
        Ok(upstream) => {
            for warning in &upstream.warnings {
                warn!(pool = %pool.name, "{}", tls.at.error(warning));
            }
            Some(Arc::new(upstream))
        }
        Err(error) => {
            let files = tls
                .ca
                .iter()
                .chain(tls.client_cert.iter().flat_map(|(c, k)| [c, k]));
            let at = error
                .path()
                .and_then(|path| files.clone().find(|f| f.path == path))
                .map_or(&tls.at, |f| &f.at);
            errors.push(at.error(&error).to_string());
            None
        }
    }
}

/// The pool indices of an L4 listener by server name.
fn l4_routes(listener: &Listener, pool_index: impl Fn(&str) -> Option<usize>) -> SniMap<usize> {
    let mut map = SniMap::new(WildcardDepth::AnyDepth);
    for route in &listener.sni_routes {
        let pattern = match &route.sni {
            HostMatch::Exact(name) => NamePattern::Exact(name.clone()),
            HostMatch::Wildcard(suffix) => NamePattern::Wildcard(suffix.clone()),
        };
        if let Some(index) = pool_index(&route.pool) {
            map.insert(pattern, index);
        }
    }
    map.set_default(listener.pool.as_deref().and_then(pool_index));
    map
}

/// An IPv4 peer seen through an IPv6 socket (`::ffff:a.b.c.d`) as the IPv4 address it is.
pub(crate) fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// The relay options of a configuration.
fn relay_options(config: &Config) -> RelayOptions {
    RelayOptions {
        mode: match config.relay.mode {
            sluice_config::RelayMode::Auto => sluice_splice::RelayMode::Auto,
            sluice_config::RelayMode::Splice => sluice_splice::RelayMode::Splice,
            sluice_config::RelayMode::Copy => sluice_splice::RelayMode::Copy,
        },
        buffer_size: config.relay.buffer_size,
        idle_timeout: config.timeouts.tunnel_idle,
        half_closed_timeout: config.timeouts.half_closed,
    }
}
