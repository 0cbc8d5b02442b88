//! Live counters of one server, readable at any time (tests, logs, and the admin listener).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use sluice_metrics::Refused;

/// Counters of connections and tunnels since the server started. Relaxed atomics: each is
/// exact on its own; two read one after the other may disagree by the connections in between.
#[derive(Debug, Default)]
pub struct Stats {
    accepted: AtomicU64,
    refused_over_limit: AtomicU64,
    /// Refusals before the request was read, by [`Refused::index`].
    refused: [AtomicU64; Refused::ALL.len()],
    connections_active: AtomicU64,
    upgraded: AtomicU64,
    rejected: AtomicU64,
    abandoned: AtomicU64,
    backend_failed: AtomicU64,
    tunnels_active: AtomicU64,
    accept_errors: AtomicU64,
    /// Plain HTTP requests answered, by status class (1xx … 5xx).
    http_requests: [AtomicU64; 5],
    http_micros: AtomicU64,
    backend_reused: AtomicU64,
    stale_retries: AtomicU64,
}

/// The class of an HTTP status: its first digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    /// 1xx
    Informational,
    /// 2xx
    Success,
    /// 3xx
    Redirection,
    /// 4xx
    ClientError,
    /// 5xx
    ServerError,
}

impl StatusClass {
    /// Every class, in order.
    pub const ALL: [StatusClass; 5] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirection,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    /// The class of `status`; `None` outside 100..=599.
    pub fn of(status: u16) -> Option<StatusClass> {
        Some(match status {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            500..=599 => StatusClass::ServerError,
            _ => return None,
        })
    }

    /// `"1xx"` … `"5xx"`, for labels.
    pub fn label(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl Stats {
    /// Connections accepted and admitted (within the connection limit).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed at once because the connection limit was reached.
    pub fn refused_over_limit(&self) -> u64 {
        self.refused_over_limit.load(Ordering::Relaxed)
    }

    /// Connections refused for `reason` before their request was read (the global limit
    /// included: [`Stats::refused_over_limit`] counts the same as `Refused::MaxConnections`).
    pub fn refused(&self, reason: Refused) -> u64 {
        self.refused
            .get(reason.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Client connections held now, in any stage.
    pub fn connections_active(&self) -> u64 {
        self.connections_active.load(Ordering::Relaxed)
    }

    /// Handshakes that reached the L4 act.
    pub fn upgraded(&self) -> u64 {
        self.upgraded.load(Ordering::Relaxed)
    }

    /// Requests answered with an error caused by the client or the routing (4xx).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Clients that closed or failed before sending a whole request head (nothing answered).
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Handshakes that failed on the backend side (5xx, or a non-101 answer relayed).
    pub fn backend_failed(&self) -> u64 {
        self.backend_failed.load(Ordering::Relaxed)
    }

    /// Tunnels relaying now.
    pub fn tunnels_active(&self) -> u64 {
        self.tunnels_active.load(Ordering::Relaxed)
    }

    /// Errors returned by `accept` (descriptor exhaustion and others), each followed by a pause.
    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }

    /// Plain HTTP requests answered with a status of this class, by a backend or by sluice
    /// itself (400, 413, 502…). Requests closed without an answer are not counted.
    pub fn http_requests(&self, class: StatusClass) -> u64 {
        self.http_requests
            .get(class.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Plain HTTP requests answered, every class together.
    pub fn http_requests_total(&self) -> u64 {
        StatusClass::ALL
            .iter()
            .map(|&c| self.http_requests(c))
            .sum()
    }

    /// The time spent on the answered plain HTTP requests, added up (from the request head
    /// read to the response's last byte written), for an average over `http_requests_total`.
    pub fn http_duration_total(&self) -> Duration {
        Duration::from_micros(self.http_micros.load(Ordering::Relaxed))
    }

    /// Plain HTTP requests sent over an idle backend connection taken from the pool.
    pub fn backend_connections_reused(&self) -> u64 {
        self.backend_reused.load(Ordering::Relaxed)
    }

    /// Idempotent requests sent again on a new connection because the pooled one they were
    /// sent on turned out to be closed by the backend.
    pub fn stale_retries(&self) -> u64 {
        self.stale_retries.load(Ordering::Relaxed)
    }

    pub(crate) fn count_http(&self, status: u16, duration: Duration) {
        if let Some(counter) =
            StatusClass::of(status).and_then(|c| self.http_requests.get(c.index()))
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.http_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn count_backend_reused(&self) {
        self.backend_reused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_stale_retry(&self) {
        self.stale_retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refusal here and in the listener's metrics.
    pub(crate) fn count_refused(&self, reason: Refused, metrics: &sluice_metrics::ListenerMetrics) {
        if reason == Refused::MaxConnections {
            self.refused_over_limit.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(counter) = self.refused.get(reason.index()) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        metrics.refused(reason);
    }

    pub(crate) fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_abandoned(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_backend_failed(&self) {
        self.backend_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_upgraded(&self) {
        self.upgraded.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_accept_error(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a live connection until the returned guard is dropped.
    pub(crate) fn connection(&self) -> Gauge<'_> {
        Gauge::new(&self.connections_active)
    }

    /// Counts a live tunnel until the returned guard is dropped.
    pub(crate) fn tunnel(&self) -> Gauge<'_> {
        Gauge::new(&self.tunnels_active)
    }
}

/// One unit of a gauge, given back on drop.
#[derive(Debug)]
pub(crate) struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_requests_by_class() {
        let stats = Stats::default();
        for status in [101, 200, 204, 304, 404, 400, 502, 99, 600] {
            stats.count_http(status, Duration::from_millis(2));
        }
        let counts: Vec<u64> = StatusClass::ALL
            .iter()
            .map(|&c| stats.http_requests(c))
            .collect();
        assert_eq!(counts, [1, 2, 1, 2, 1]);
        assert_eq!(stats.http_requests_total(), 7);
        assert_eq!(stats.http_duration_total(), Duration::from_millis(18));
        assert_eq!(StatusClass::of(418).map(StatusClass::label), Some("4xx"));
    }
}
