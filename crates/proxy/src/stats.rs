//! Live counters of one server, readable at any time (tests, logs, and the admin listener).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of connections and tunnels since the server started. Relaxed atomics: each is
/// exact on its own; two read one after the other may disagree by the connections in between.
#[derive(Debug, Default)]
pub struct Stats {
    accepted: AtomicU64,
    refused_over_limit: AtomicU64,
    connections_active: AtomicU64,
    upgraded: AtomicU64,
    rejected: AtomicU64,
    abandoned: AtomicU64,
    backend_failed: AtomicU64,
    tunnels_active: AtomicU64,
    accept_errors: AtomicU64,
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

    pub(crate) fn count_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_refused_over_limit(&self) {
        self.refused_over_limit.fetch_add(1, Ordering::Relaxed);
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
