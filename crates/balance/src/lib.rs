//! Balancing: pools of backends, their live tunnel counts, and the choice of a backend.
//!
//! Place in the pipeline: accept → handshake → **pick** → connect → relay. The L7 act routes a
//! request to a [`Pool`]; the pool's [`Picker`] hands out, one at a time, the backends to try in
//! order of preference (at most `connect_attempts` distinct ones). Each handed-out backend comes
//! as a [`BackendGuard`]: while the guard lives, the backend counts one more live connection, so
//! `least_conn` sees connections that are still connecting as well as established tunnels, and
//! the count is right however the connection ends (the guard is dropped with the tunnel).
//!
//! What this crate does not do: sockets, timeouts or retries on failure (the proxy connects and
//! asks the picker for the next candidate), and nothing about HTTP.
//!
//! Per-connection cost: one atomic increment to choose under round robin, one scan of the pool's
//! live counters under least_conn, and no lock anywhere.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub use sluice_config::Balance;

/// One backend server. Shared (`Arc`) by every snapshot that lists it, so its identity and live
/// counts survive a reload that keeps it.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    weight: u32,
    active: AtomicUsize,
    draining: AtomicBool,
}

impl Backend {
    /// A backend with no connection yet.
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        Self {
            addr,
            weight: weight.max(1),
            active: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// Where it listens; also its identity within a pool.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its relative share of new connections.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Live connections: connecting, handshaking or tunnelling.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether new connections may be sent to it.
    pub fn is_available(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }

    /// Stop (or resume) sending it new connections; live ones are untouched.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Count one more live connection until the guard is dropped.
    pub fn acquire(self: &Arc<Self>) -> BackendGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        BackendGuard {
            backend: Arc::clone(self),
        }
    }
}

/// One live connection to a backend; dropping it releases the count.
#[derive(Debug)]
pub struct BackendGuard {
    backend: Arc<Backend>,
}

impl BackendGuard {
    /// The backend this connection counts against.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// The backend's address.
    pub fn addr(&self) -> SocketAddr {
        self.backend.addr
    }
}

impl Drop for BackendGuard {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A named group of interchangeable backends and the algorithm that chooses among them.
#[derive(Debug)]
pub struct Pool {
    name: String,
    balance: Balance,
    backends: Vec<Arc<Backend>>,
    connect_attempts: u32,
    /// Weighted round-robin order as backend indices, interleaved (see [`smooth_schedule`]).
    schedule: Vec<usize>,
    cursor: AtomicUsize,
}

impl Pool {
    /// Builds a pool from its configuration. Backends also present in `previous` (same address)
    /// are the same `Arc`, keeping their live counts and state; the others are new.
    pub fn from_config(config: &sluice_config::Pool, previous: Option<&Pool>) -> Self {
        let backends = config
            .backends
            .iter()
            .map(|b| {
                previous
                    .and_then(|p| p.backend(b.addr))
                    .filter(|old| old.weight == b.weight.max(1))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Backend::new(b.addr, b.weight)))
            })
            .collect();
        Self::new(
            config.name.clone(),
            config.balance,
            backends,
            config.connect_attempts,
        )
    }

    /// A pool over these backends.
    pub fn new(
        name: String,
        balance: Balance,
        backends: Vec<Arc<Backend>>,
        connect_attempts: u32,
    ) -> Self {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        Self {
            name,
            balance,
            schedule: smooth_schedule(&weights),
            backends,
            connect_attempts: connect_attempts.max(1),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The pool's name from the configuration.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its algorithm.
    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// Its backends, in configuration order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// The backend at this address, if the pool has it.
    pub fn backend(&self, addr: SocketAddr) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.addr == addr)
    }

    /// Starts choosing backends for one connection.
    pub fn picker(&self) -> Picker<'_> {
        Picker {
            pool: self,
            tried: Vec::new(),
            start: self.cursor.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// The backends to try for one connection, best first, each at most once, and at most the
/// pool's `connect_attempts` of them.
#[derive(Debug)]
pub struct Picker<'a> {
    pool: &'a Pool,
    /// Indices of backends already handed out (a handful at most).
    tried: Vec<usize>,
    /// Where this connection starts in the round-robin schedule, or the tie-break rotation.
    start: usize,
}

impl Picker<'_> {
    /// The next backend to try, counted as live until the guard is dropped; `None` when the
    /// attempts are used up or no available backend is left.
    pub fn next_backend(&mut self) -> Option<BackendGuard> {
        if self.tried.len() >= self.pool.connect_attempts as usize {
            return None;
        }
        let index = match self.pool.balance {
            Balance::RoundRobin => self.next_round_robin(),
            Balance::LeastConn => self.next_least_conn(),
        }?;
        self.tried.push(index);
        self.pool.backends.get(index).map(Backend::acquire)
    }

    /// How many backends were handed out so far.
    pub fn attempts(&self) -> usize {
        self.tried.len()
    }

    fn eligible(&self, index: usize) -> bool {
        !self.tried.contains(&index)
            && self
                .pool
                .backends
                .get(index)
                .is_some_and(|b| b.is_available())
    }

    fn next_round_robin(&self) -> Option<usize> {
        let schedule = &self.pool.schedule;
        (0..schedule.len())
            .filter_map(|step| schedule.get(self.start.wrapping_add(step) % schedule.len()))
            .copied()
            .find(|&index| self.eligible(index))
    }

    /// The backend with the fewest live connections per unit of weight; among equals, the first
    /// after a rotating start, so ties are spread rather than always won by the first backend.
    fn next_least_conn(&self) -> Option<usize> {
        let backends = &self.pool.backends;
        let n = backends.len();
        // (index, active, weight) of the best so far; loads compare as active/weight, exactly,
        // by cross-multiplication.
        let mut best: Option<(usize, u64, u64)> = None;
        for step in 0..n {
            let index = self.start.wrapping_add(step) % n;
            if !self.eligible(index) {
                continue;
            }
            let Some(backend) = backends.get(index) else {
                continue;
            };
            let (active, weight) = (backend.active() as u64, u64::from(backend.weight));
            if best.is_none_or(|(_, best_active, best_weight)| {
                active * best_weight < best_active * weight
            }) {
                best = Some((index, active, weight));
            }
        }
        best.map(|(index, _, _)| index)
    }
}

/// A weighted round-robin order that interleaves backends (nginx's smooth weighted round robin,
/// computed once when the pool is built instead of under a lock per pick): weights 5,1,1 give
/// `a a b a c a a`, not `a a a a a b c`. Its length is the sum of the weights.
pub fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w.max(1))).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate() {
            if let Some(c) = current.get_mut(i) {
                *c += i64::from(w.max(1));
            }
            let better = match best {
                None => true,
                Some(b) => current.get(i) > current.get(b),
            };
            if better {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            if let Some(c) = current.get_mut(b) {
                *c -= total;
            }
            schedule.push(b);
        }
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn pool(balance: Balance, weights: &[u32], attempts: u32) -> Pool {
        let backends = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(Backend::new(addr(9000 + i as u16), w)))
            .collect();
        Pool::new("p".into(), balance, backends, attempts)
    }

    fn first_port(pool: &Pool) -> u16 {
        pool.picker().next_backend().unwrap().addr().port()
    }

    #[test]
    fn smooth_schedule_interleaves_by_weight() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(smooth_schedule(&[]), Vec::<usize>::new());
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let p = pool(Balance::RoundRobin, &[1, 1, 1], 3);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[usize::from(first_port(&p) - 9000)] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn round_robin_honours_weights() {
        let p = pool(Balance::RoundRobin, &[3, 1], 3);
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[usize::from(first_port(&p) - 9000)] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }

    #[test]
    fn picker_tries_each_backend_once_up_to_the_attempt_limit() {
        let p = pool(Balance::RoundRobin, &[1, 1, 1, 1], 3);
        let mut picker = p.picker();
        let mut seen = Vec::new();
        while let Some(g) = picker.next_backend() {
            seen.push(g.addr().port());
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 3, "three distinct backends, then none");
        assert_eq!(picker.attempts(), 3);
    }

    #[test]
    fn guards_count_live_connections() {
        let p = pool(Balance::RoundRobin, &[1], 1);
        let g1 = p.picker().next_backend().unwrap();
        let g2 = p.picker().next_backend().unwrap();
        assert_eq!(p.backends()[0].active(), 2);
        drop(g1);
        assert_eq!(p.backends()[0].active(), 1);
        drop(g2);
        assert_eq!(p.backends()[0].active(), 0);
    }

    #[test]
    fn least_conn_follows_live_counts() {
        let p = pool(Balance::LeastConn, &[1, 1, 1], 3);
        let _a = p.backends()[0].acquire();
        let _b = p.backends()[0].acquire();
        let _c = p.backends()[1].acquire();
        assert_eq!(first_port(&p), 9002, "the idle backend wins");
        // Holding picks fills the least loaded first, so counts even out.
        let held: Vec<_> = (0..6).map(|_| p.picker().next_backend().unwrap()).collect();
        let counts: Vec<usize> = p.backends().iter().map(|b| b.active()).collect();
        assert_eq!(counts, vec![3, 3, 3]);
        drop(held);
    }

    #[test]
    fn least_conn_breaks_ties_fairly() {
        let p = pool(Balance::LeastConn, &[1, 1, 1], 3);
        let mut counts = [0; 3];
        for _ in 0..300 {
            // Each guard is dropped at once: every pick sees a three-way tie.
            counts[usize::from(first_port(&p) - 9000)] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn least_conn_weighs_by_weight() {
        let p = pool(Balance::LeastConn, &[2, 1], 2);
        let held: Vec<_> = (0..30)
            .map(|_| p.picker().next_backend().unwrap())
            .collect();
        assert_eq!(p.backends()[0].active(), 20);
        assert_eq!(p.backends()[1].active(), 10);
        drop(held);
    }

    #[test]
    fn draining_backends_are_skipped() {
        for balance in [Balance::RoundRobin, Balance::LeastConn] {
            let p = pool(balance, &[1, 1], 2);
            p.backends()[0].set_draining(true);
            for _ in 0..10 {
                assert_eq!(first_port(&p), 9001);
            }
            p.backends()[1].set_draining(true);
            assert!(
                p.picker().next_backend().is_none(),
                "{balance:?}: none left"
            );
        }
    }

    #[test]
    fn reload_keeps_identity_of_backends_that_stay() {
        let config = |ports: &[u16]| sluice_config::Pool {
            name: "p".into(),
            balance: Balance::LeastConn,
            backends: ports
                .iter()
                .map(|&port| sluice_config::Backend {
                    addr: addr(port),
                    weight: 1,
                })
                .collect(),
            connect_attempts: 2,
        };
        let old = Pool::from_config(&config(&[1, 2]), None);
        let _live = old.backends()[1].acquire();
        let new = Pool::from_config(&config(&[2, 3]), Some(&old));
        assert!(Arc::ptr_eq(&old.backends()[1], &new.backends()[0]));
        assert_eq!(new.backends()[0].active(), 1, "live count carried over");
        assert_eq!(new.backends()[1].active(), 0);
    }
}
