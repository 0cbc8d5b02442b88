//! Every metric sluice exports, in one place: name, kind, unit, help text, labels, buckets.
//!
//! Place in the pipeline: beside it. The proxy records through the [`metrics`] facade with
//! handles resolved once per listener, pool and backend ([`ListenerMetrics`], [`PoolMetrics`],
//! [`BackendMetrics`]), so the per-connection path never hashes a label set; the admin
//! listener renders [`Exporter::render`]. This crate does no I/O but reading `/proc/self` for
//! the process metrics.
//!
//! Conventions (prometheus.io naming practices): prefix `sluice_`, base units (`_seconds`,
//! `_bytes`), counters end in `_total`; label values come from configuration names and fixed
//! sets only, never from request data, so cardinality is bounded by the configuration.

use std::sync::OnceLock;

pub use metrics::{Counter, Gauge, Histogram};
use metrics::{Unit, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

mod carry;
pub mod process;

pub use carry::{CounterSample, carry};

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    /// Histogram buckets (upper bounds), when the metric is a histogram.
    pub buckets: Option<&'static [f64]>,
}

/// Latencies of a handshake or a connect: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Tunnel lifetimes: a second to a day (WebSockets live for hours).
const TUNNEL_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
];

macro_rules! catalogue {
    ($($ident:ident = $name:literal, $kind:ident, $unit:expr, [$($label:literal),*], $buckets:expr, $help:literal;)*) => {
        /// Metric names, one constant each.
        pub mod names {
            $(pub const $ident: &str = $name;)*
        }
        /// The whole catalogue, in documentation order.
        pub const ALL: &[Metric] = &[
            $(Metric {
                name: $name,
                kind: Kind::$kind,
                unit: $unit,
                help: $help,
                labels: &[$($label),*],
                buckets: $buckets,
            },)*
        ];
    };
}

catalogue! {
    CONNECTIONS_ACCEPTED = "sluice_connections_accepted_total", Counter, None, ["listener"], None,
        "Client connections accepted and admitted.";
    CONNECTIONS_REFUSED = "sluice_connections_refused_total", Counter, None, ["listener", "reason"], None,
        "Client connections refused before their request was read, by reason: max_connections (limits.max_connections, answered 503), listener_max_connections (the listener's own, 503), source_connections and source_rate (limits.per_source, answered 429 on plain http listeners), proxy_untrusted (a peer outside accept_proxy_protocol.from), proxy_invalid (no valid PROXY header), proxy_timeout (no whole PROXY header within timeouts.handshake). Other listeners' refusals are a close.";
    CONNECTIONS_ACTIVE = "sluice_connections_active", Gauge, None, ["listener"], None,
        "Client connections held now, in any stage.";
    SOURCE_TABLE_ENTRIES = "sluice_source_table_entries", Gauge, None, [], None,
        "Client sources (addresses, IPv6 prefixes) tracked by limits.per_source now; at most limits.per_source.table_size.";
    ACCEPT_ERRORS = "sluice_accept_errors_total", Counter, None, ["listener"], None,
        "Errors returned by accept (descriptor exhaustion and others); each pauses the accept loop.";
    CONNECTIONS_SHED = "sluice_connections_shed_total", Counter, None, ["listener"], None,
        "Client connections refused because the process had no file descriptor left (EMFILE/ENFILE): accepted on a descriptor held in reserve, answered 503 on plain http listeners, and closed.";
    HANDSHAKES = "sluice_handshakes_total", Counter, None, ["listener", "outcome", "status"], None,
        "Handshakes by outcome (upgraded, rejected, backend_failed, abandoned, answered; relayed: a tcp or tls-passthrough connection handed to the relay; tls_failed, tls_timeout: a TLS handshake of a tls listener) and HTTP status sent (none when nothing was answered).";
    HANDSHAKE_DURATION = "sluice_handshake_duration_seconds", Histogram, Some(Unit::Seconds), ["listener"], Some(LATENCY_BUCKETS),
        "From accept until the backend's 101 was relayed to the client.";
    BACKEND_CONNECT_DURATION = "sluice_backend_connect_duration_seconds", Histogram, Some(Unit::Seconds), ["pool"], Some(LATENCY_BUCKETS),
        "Successful connects to backends (TCP, and the TLS handshake for pools with tls).";
    BACKEND_CONNECT_FAILURES = "sluice_backend_connect_failures_total", Counter, None, ["pool", "backend", "reason"], None,
        "Failures of a backend seen by handshakes: connect_refused, connect_timeout, tls_failed (TLS handshake or certificate verification), response_timeout (no response head in time).";
    TUNNELS_ACTIVE = "sluice_tunnels_active", Gauge, None, ["pool", "backend"], None,
        "Tunnels relaying now.";
    TUNNEL_DURATION = "sluice_tunnel_duration_seconds", Histogram, Some(Unit::Seconds), ["pool"], Some(TUNNEL_BUCKETS),
        "Lifetime of closed tunnels, from the 101 to the close.";
    TUNNELS_CLOSED = "sluice_tunnels_closed_total", Counter, None, ["pool", "closed_by"], None,
        "Closed tunnels by who closed them: client, backend, idle_timeout, stopped (drain or shutdown), client_error, backend_error.";
    TUNNEL_BYTES = "sluice_tunnel_bytes_total", Counter, Some(Unit::Bytes), ["pool", "backend", "direction"], None,
        "Bytes relayed by tunnels, client_to_backend or backend_to_client; moves while tunnels live.";
    RELAY_BYTES = "sluice_relay_bytes_total", Counter, Some(Unit::Bytes), ["mode"], None,
        "Bytes relayed by how they moved: splice (through pipes, no user-space copy) or copy.";
    RELAY_COPY_FALLBACKS = "sluice_relay_copy_fallbacks_total", Counter, None, [], None,
        "Times a tunnel direction wanted a pipe and got none (the pool was at relay.max_pipes), and copied instead.";
    PIPES = "sluice_pipes", Gauge, None, ["state"], None,
        "Pipes held by tunnels (in_use) and kept for reuse (idle).";
    BACKEND_UP = "sluice_backend_up", Gauge, None, ["pool", "backend"], None,
        "1 while the backend takes new connections, 0 while it is draining or down.";
    HTTP_REQUESTS = "sluice_http_requests_total", Counter, None, ["pool", "class"], None,
        "Plain HTTP requests proxied, by pool and status class (1xx to 5xx).";
    HTTP_REQUEST_DURATION = "sluice_http_request_duration_seconds", Histogram, Some(Unit::Seconds), ["pool"], Some(LATENCY_BUCKETS),
        "Plain HTTP requests, from the request head to the end of the response.";
    DISCOVERY_RESOLUTIONS = "sluice_discovery_resolutions_total", Counter, None, ["pool", "result"], None,
        "DNS resolutions of a pool's discovery by result: success, nxdomain, empty, servfail, refused, timeout, malformed, error. Every result but success keeps the last good backends.";
    DISCOVERY_BACKENDS = "sluice_discovery_backends", Gauge, None, ["pool"], None,
        "Backends of a pool with discovery, as the last good DNS answer listed them.";
    SOURCE_ADDR_EXHAUSTED = "sluice_source_addr_exhausted_total", Counter, None, ["pool", "source"], None,
        "Backend connects that found a source address of the pool's source_addrs out of ports (EADDRNOTAVAIL) and moved on to the next source address.";
    CONFIG_GENERATION = "sluice_config_generation", Gauge, None, [], None,
        "The configuration generation in force: 1 at start, one more per applied reload or change of discovered backends.";
    CONFIG_RELOADS = "sluice_config_reloads_total", Counter, None, ["result"], None,
        "Configuration reloads by result (success, error).";
    CONFIG_LAST_RELOAD_SUCCESS = "sluice_config_last_reload_success_timestamp_seconds", Gauge, Some(Unit::Seconds), [], None,
        "When the configuration was last loaded or reloaded successfully, in Unix seconds.";
    HANDOFF_TUNNELS = "sluice_handoff_tunnels_total", Counter, None, ["result"], None,
        "Established tunnels in binary upgrades, by result: handed_over (this process gave it to its successor), adopted (this process took it from its predecessor), refused (a tunnel the successor could not take: its pool or backend is not in the new configuration, or a descriptor failed its check), kept (the handoff failed and this process resumed it; it is not lost).";
    READY = "sluice_ready", Gauge, None, [], None,
        "1 while sluice accepts new connections, 0 before start and from shutdown on.";
    PROCESS_CPU = "process_cpu_seconds_total", Counter, Some(Unit::Seconds), [], None,
        "User and system CPU time spent by the process.";
    PROCESS_RSS = "process_resident_memory_bytes", Gauge, Some(Unit::Bytes), [], None,
        "Resident memory of the process.";
    PROCESS_OPEN_FDS = "process_open_fds", Gauge, None, [], None,
        "Open file descriptors of the process.";
    PROCESS_MAX_FDS = "process_max_fds", Gauge, None, [], None,
        "The process's open-file limit (RLIMIT_NOFILE).";
    PROCESS_START_TIME = "process_start_time_seconds", Gauge, Some(Unit::Seconds), [], None,
        "When the process started, in Unix seconds.";
}

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("invalid histogram buckets for {name}: {reason}")]
    Buckets { name: &'static str, reason: String },
    #[error("another metrics recorder is already installed in this process")]
    AlreadyInstalled,
}

/// The process's Prometheus recorder; renders the text exposition.
#[derive(Debug, Clone)]
pub struct Exporter {
    handle: PrometheusHandle,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

impl Exporter {
    /// Installs the recorder for this process (once; later calls return the same exporter) and
    /// describes every metric of the catalogue.
    pub fn install() -> Result<&'static Exporter, MetricsError> {
        if let Some(exporter) = EXPORTER.get() {
            return Ok(exporter);
        }
        let mut builder = PrometheusBuilder::new();
        for metric in ALL {
            if let Some(buckets) = metric.buckets {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full(metric.name.to_owned()), buckets)
                    .map_err(|e| MetricsError::Buckets {
                        name: metric.name,
                        reason: e.to_string(),
                    })?;
            }
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|_| MetricsError::AlreadyInstalled)?;
        describe_all();
        Ok(EXPORTER.get_or_init(|| Exporter { handle }))
    }

    /// The exporter, if [`Exporter::install`] ran.
    pub fn get() -> Option<&'static Exporter> {
        EXPORTER.get()
    }

    /// The Prometheus text exposition of every metric, process metrics included.
    pub fn render(&self) -> String {
        let mut out = self.handle.render();
        process::render(&mut out);
        out
    }

    /// Housekeeping of the recorder (histogram buffers); call every few seconds.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn describe_all() {
    // Process metrics are written by `process::render`, not recorded through the facade.
    for metric in ALL.iter().filter(|m| !m.name.starts_with("process_")) {
        let unit = metric.unit;
        match (metric.kind, unit) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(metric.name, u, metric.help),
            (Kind::Counter, None) => metrics::describe_counter!(metric.name, metric.help),
            (Kind::Gauge, Some(u)) => metrics::describe_gauge!(metric.name, u, metric.help),
            (Kind::Gauge, None) => metrics::describe_gauge!(metric.name, metric.help),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(metric.name, u, metric.help),
            (Kind::Histogram, None) => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

/// Why a connection was refused before its request was read (the `reason` label of
/// `sluice_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `limits.max_connections`, all listeners together.
    MaxConnections,
    /// The listener's own `max_connections`.
    ListenerMaxConnections,
    /// `limits.per_source.max_connections`.
    SourceConnections,
    /// `limits.per_source.connection_rate`.
    SourceRate,
    /// A peer outside the listener's `accept_proxy_protocol.from`.
    ProxyUntrusted,
    /// Not a valid PROXY protocol header (or the client closed before one came).
    ProxyInvalid,
    /// No whole PROXY protocol header within `timeouts.handshake`.
    ProxyTimeout,
}

impl Refused {
    /// Every reason, in label order.
    pub const ALL: [Refused; 7] = [
        Refused::MaxConnections,
        Refused::ListenerMaxConnections,
        Refused::SourceConnections,
        Refused::SourceRate,
        Refused::ProxyUntrusted,
        Refused::ProxyInvalid,
        Refused::ProxyTimeout,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::ListenerMaxConnections => "listener_max_connections",
            Refused::SourceConnections => "source_connections",
            Refused::SourceRate => "source_rate",
            Refused::ProxyUntrusted => "proxy_untrusted",
            Refused::ProxyInvalid => "proxy_invalid",
            Refused::ProxyTimeout => "proxy_timeout",
        }
    }

    /// Its position in [`Refused::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Handles for one listener. Without an installed recorder they do nothing.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    listener: String,
    pub accepted: Counter,
    /// Refusals by [`Refused::index`].
    refused: [Counter; Refused::ALL.len()],
    pub active: Gauge,
    pub accept_errors: Counter,
    pub shed: Counter,
    pub upgraded: Counter,
    pub handshake_duration: Histogram,
}

impl ListenerMetrics {
    pub fn new(listener: &str) -> Self {
        let l = listener.to_owned();
        Self {
            accepted: counter!(names::CONNECTIONS_ACCEPTED, "listener" => l.clone()),
            refused: Refused::ALL.map(|reason| {
                counter!(names::CONNECTIONS_REFUSED, "listener" => l.clone(), "reason" => reason.label())
            }),
            active: gauge!(names::CONNECTIONS_ACTIVE, "listener" => l.clone()),
            accept_errors: counter!(names::ACCEPT_ERRORS, "listener" => l.clone()),
            shed: counter!(names::CONNECTIONS_SHED, "listener" => l.clone()),
            upgraded: counter!(names::HANDSHAKES, "listener" => l.clone(), "outcome" => "upgraded", "status" => "101"),
            handshake_duration: histogram!(names::HANDSHAKE_DURATION, "listener" => l.clone()),
            listener: l,
        }
    }

    /// Counts a connection refused before its request was read.
    pub fn refused(&self, reason: Refused) {
        if let Some(counter) = self.refused.get(reason.index()) {
            counter.increment(1);
        }
    }

    /// Counts a handshake that did not upgrade: `outcome` is a fixed word, `status` the status
    /// answered (None: nothing was answered). Off the hot path: resolves the handle now.
    pub fn handshake(&self, outcome: &'static str, status: Option<u16>) {
        counter!(
            names::HANDSHAKES,
            "listener" => self.listener.clone(),
            "outcome" => outcome,
            "status" => status_label(status)
        )
        .increment(1);
    }
}

/// Statuses sluice itself answers or commonly relays, labelled exactly; others by their class.
const STATUS_LABELS: &[(u16, &str)] = &[
    (100, "100"),
    (101, "101"),
    (200, "200"),
    (204, "204"),
    (304, "304"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (413, "413"),
    (421, "421"),
    (426, "426"),
    (429, "429"),
    (431, "431"),
    (500, "500"),
    (501, "501"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
    (505, "505"),
];

/// A status as a label value from a fixed set.
fn status_label(status: Option<u16>) -> &'static str {
    let Some(status) = status else {
        return "none";
    };
    STATUS_LABELS
        .iter()
        .find(|(code, _)| *code == status)
        .map_or_else(|| status_class(status), |(_, label)| label)
}

/// The class label of a status: `1xx` to `5xx`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Handles for one pool.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    pool: String,
    pub connect_duration: Histogram,
    pub tunnel_duration: Histogram,
    pub http_request_duration: Histogram,
    /// `sluice_tunnels_closed_total` for the clean closes (`closed_by` = `client`, `backend`:
    /// nearly every tunnel), resolved on first use rather than looked up by label per tunnel.
    closed_by_client: OnceLock<Counter>,
    closed_by_backend: OnceLock<Counter>,
}

impl PoolMetrics {
    pub fn new(pool: &str) -> Self {
        let p = pool.to_owned();
        Self {
            connect_duration: histogram!(names::BACKEND_CONNECT_DURATION, "pool" => p.clone()),
            tunnel_duration: histogram!(names::TUNNEL_DURATION, "pool" => p.clone()),
            http_request_duration: histogram!(names::HTTP_REQUEST_DURATION, "pool" => p.clone()),
            pool: p,
            closed_by_client: OnceLock::new(),
            closed_by_backend: OnceLock::new(),
        }
    }

    /// Counts a closed tunnel by who closed it (a fixed label of the relay).
    pub fn tunnel_closed(&self, closed_by: &'static str) {
        let series = || counter!(names::TUNNELS_CLOSED, "pool" => self.pool.clone(), "closed_by" => closed_by);
        match closed_by {
            "client" => self.closed_by_client.get_or_init(series).increment(1),
            "backend" => self.closed_by_backend.get_or_init(series).increment(1),
            _ => series().increment(1),
        }
    }

    /// Counts a plain HTTP request by its status class.
    pub fn http_request(&self, status: u16) {
        counter!(names::HTTP_REQUESTS, "pool" => self.pool.clone(), "class" => status_class(status))
            .increment(1);
    }
}

/// Handles for one backend of one pool.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    pool: String,
    backend: String,
    pub tunnels_active: Gauge,
    pub client_to_backend: Counter,
    pub backend_to_client: Counter,
    pub up: Gauge,
}

impl BackendMetrics {
    pub fn new(pool: &str, backend: &str) -> Self {
        let (p, b) = (pool.to_owned(), backend.to_owned());
        Self {
            tunnels_active: gauge!(names::TUNNELS_ACTIVE, "pool" => p.clone(), "backend" => b.clone()),
            client_to_backend: counter!(names::TUNNEL_BYTES, "pool" => p.clone(), "backend" => b.clone(), "direction" => "client_to_backend"),
            backend_to_client: counter!(names::TUNNEL_BYTES, "pool" => p.clone(), "backend" => b.clone(), "direction" => "backend_to_client"),
            up: gauge!(names::BACKEND_UP, "pool" => p.clone(), "backend" => b.clone()),
            pool: p,
            backend: b,
        }
    }

    /// Counts a failure seen by a handshake (`connect_refused`, `connect_timeout`,
    /// `tls_failed`, `response_timeout`).
    pub fn connect_failed(&self, reason: &'static str) {
        counter!(
            names::BACKEND_CONNECT_FAILURES,
            "pool" => self.pool.clone(),
            "backend" => self.backend.clone(),
            "reason" => reason
        )
        .increment(1);
    }
}

/// Process-wide figures the proxy publishes (relay counters, pipes, configuration).
pub mod global {
    use super::names;
    use metrics::{counter, gauge};

    /// Counts a failure of `backend` of `pool` seen by a handshake (rare: resolves the handle now).
    pub fn backend_failure(pool: &str, backend: &str, reason: &'static str) {
        counter!(
            names::BACKEND_CONNECT_FAILURES,
            "pool" => pool.to_owned(),
            "backend" => backend.to_owned(),
            "reason" => reason
        )
        .increment(1);
    }

    /// Sets the relay's process-wide totals (monotonic, read from the relay's own counters).
    pub fn relay(
        spliced: u64,
        copied: u64,
        fallbacks: u64,
        pipes_in_use: usize,
        pipes_idle: usize,
    ) {
        // Plus what a predecessor counted, carried across a binary upgrade.
        let base =
            |i: usize| crate::carry::RELAY_BASE[i].load(std::sync::atomic::Ordering::Relaxed);
        counter!(names::RELAY_BYTES, "mode" => "splice").absolute(spliced + base(0));
        counter!(names::RELAY_BYTES, "mode" => "copy").absolute(copied + base(1));
        counter!(names::RELAY_COPY_FALLBACKS).absolute(fallbacks + base(2));
        gauge!(names::PIPES, "state" => "in_use").set(pipes_in_use as f64);
        gauge!(names::PIPES, "state" => "idle").set(pipes_idle as f64);
    }

    /// A configuration was loaded (at start, or by a reload).
    pub fn config_loaded(generation: u64, unix_seconds: u64) {
        gauge!(names::CONFIG_GENERATION).set(generation as f64);
        gauge!(names::CONFIG_LAST_RELOAD_SUCCESS).set(unix_seconds as f64);
    }

    /// The generation in force changed without a reload (discovered backends changed).
    pub fn generation(generation: u64) {
        gauge!(names::CONFIG_GENERATION).set(generation as f64);
    }

    /// A reload finished: `result` is `success` or `error`.
    pub fn reload(result: &'static str) {
        counter!(names::CONFIG_RELOADS, "result" => result).increment(1);
    }

    /// A discovery resolution of `pool` ended with `result` (`success` or an error label).
    pub fn discovery_resolution(pool: &str, result: &'static str) {
        counter!(names::DISCOVERY_RESOLUTIONS, "pool" => pool.to_owned(), "result" => result)
            .increment(1);
    }

    /// The backends a pool's discovery lists now.
    pub fn discovery_backends(pool: &str, backends: usize) {
        gauge!(names::DISCOVERY_BACKENDS, "pool" => pool.to_owned()).set(backends as f64);
    }

    /// A connect of `pool` found source address `source` out of ports.
    pub fn source_addr_exhausted(pool: &str, source: &str) {
        counter!(
            names::SOURCE_ADDR_EXHAUSTED,
            "pool" => pool.to_owned(),
            "source" => source.to_owned()
        )
        .increment(1);
    }

    /// How many client sources `limits.per_source` tracks now.
    pub fn source_table_entries(entries: usize) {
        gauge!(names::SOURCE_TABLE_ENTRIES).set(entries as f64);
    }

    /// Tunnels of a binary upgrade: `result` is `handed_over`, `adopted`, `refused` or `kept`.
    pub fn handoff_tunnels(result: &'static str, tunnels: usize) {
        counter!(names::HANDOFF_TUNNELS, "result" => result).increment(tunnels as u64);
    }

    /// Readiness: accepting new connections or not.
    pub fn ready(ready: bool) {
        gauge!(names::READY).set(if ready { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests;
