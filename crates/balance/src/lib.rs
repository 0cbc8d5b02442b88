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
//! The algorithms (`balance` in the configuration; `docs/balancing.md` compares them):
//!
//! - `round_robin`: each backend in turn, weighted and interleaved ([`smooth_schedule`]).
//! - `least_conn`: the fewest live connections per unit of weight; ties rotate.
//! - `random_two`: two backends drawn at random (weighted), the less loaded of the two.
//! - `hash`: weighted rendezvous hashing of a sticky key ([`hash`], whose function is a
//!   stability contract), with bounded loads; requests without the key use the pool's fallback.
//!
//! **Health** ([`Health`], `health.rs`): a backend is a candidate only when it is not draining,
//! not down (active checks, run by `sluice-health`, with rise/fall counted here:
//! [`Backend::record_check`]) and not ejected (passive checks: [`Backend::record_connect_failure`]
//! and [`Backend::record_connect_success`], reported by the proxy). A backend coming back is in
//! **slow start** for its pool's window: its weight times a ramp from [`SLOW_START_FLOOR`] to 1,
//! used by every algorithm (least_conn and bounded loads compare live counts against the ramped
//! weight, round robin takes its turns with the ramp's probability, random_two draws and
//! compares by ramped weights). All of it is atomics on the backend, read once per candidate;
//! a [`Picker`] reads the clock once, when it is created.
//!
//! On top of any of them, a pool may insert an **affinity cookie**: its value is the chosen
//! backend's [`Token`] (opaque, stable across processes; [`token`]), and a client presenting a
//! valid one is sent back to that backend first while it takes connections. The proxy passes
//! what the request carries as an [`Affinity`] to [`Pool::picker_for`], and after a successful
//! connect asks [`Picker::cookie_to_set`] whether to add `Set-Cookie`.
//!
//! Per-connection cost: one atomic increment to choose under round robin, one scan of the pool's
//! live counters under least_conn and random_two, one hash of the key and one short hash and
//! logarithm per backend under hash; no lock anywhere, no allocation but the picker's list of
//! tried backends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use sluice_config::{Balance, HashKey, HashPolicy, HealthCheck, StickyCookie};

mod affinity;
pub mod hash;
mod health;
mod random;
#[cfg(test)]
mod slow_start;
#[cfg(test)]
mod spread;
pub mod token;

pub use affinity::{Affinity, Placement};
pub use health::{
    CheckFailure, Health, HealthCounters, OutlierPolicy, SLOW_START_FLOOR, Transition,
};
pub use token::Token;

/// One backend server. Shared (`Arc`) by every snapshot that lists it, so its identity and live
/// counts survive a reload that keeps it.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    weight: u32,
    /// [`hash::identity_hash`] of `addr`: what rendezvous hashing knows the backend by.
    identity_hash: u64,
    active: AtomicUsize,
    draining: AtomicBool,
    /// Active and passive check results, slow start (`health.rs`).
    state: health::HealthState,
}

impl Backend {
    /// A backend with no connection yet.
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        Self {
            addr,
            weight: weight.max(1),
            identity_hash: hash::identity_hash(addr),
            active: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            state: health::HealthState::default(),
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

    /// The hash of its identity (its address as text), by which rendezvous hashing ranks it.
    pub fn identity_hash(&self) -> u64 {
        self.identity_hash
    }

    /// Live connections: connecting, handshaking or tunnelling.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether a reload removed it (it takes no new connection; its tunnels drain).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Stop (or resume) sending it new connections; live ones are untouched.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Count one more live connection if that keeps it at most `max`; `None` when it is full.
    /// Exact under concurrency (compare and swap): `max` is never exceeded.
    pub fn try_acquire(self: &Arc<Self>, max: usize) -> Option<BackendGuard> {
        self.active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(BackendGuard {
            backend: Arc::clone(self),
        })
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
    /// What `balance = "hash"` hashes (for the proxy to extract), `None` for other algorithms.
    hash_key: Option<HashKey>,
    /// The algorithm for requests without a key (or a usable cookie) in a hash pool.
    fallback: Balance,
    /// Bounded loads of hashed picks; `None`: unbounded.
    balance_factor: Option<f64>,
    /// The affinity cookie the pool inserts, if any.
    sticky_cookie: Option<StickyCookie>,
    /// Each backend's cookie token, in backend order.
    tokens: Vec<Token>,
    /// Active checks of the backends, run by the `sluice-health` crate.
    health_check: Option<HealthCheck>,
    /// Passive checks (copied onto each backend).
    outlier: Option<OutlierPolicy>,
    /// The slow-start window (copied onto each backend).
    slow_start: Option<Duration>,
    /// Most live connections per backend (`max_connections_per_backend`); a full backend is
    /// skipped like a down one.
    max_per_backend: Option<usize>,
    /// The PROXY header version the proxy sends to these backends (health checks send
    /// `LOCAL` ones), if any.
    send_proxy_protocol: Option<sluice_config::ProxyVersion>,
}

impl Pool {
    /// Builds a pool from its configuration. A backend that `known` returns for its address
    /// (one of a previous generation of this pool, live or draining) is kept, the same `Arc`
    /// with its live count and state, as long as its weight did not change; otherwise a new one
    /// takes over its health (down, ejected, slow start, counters) but not its live count. The
    /// others are new, and up.
    pub fn from_config(
        config: &sluice_config::Pool,
        known: impl Fn(SocketAddr) -> Option<Arc<Backend>>,
    ) -> Self {
        let backends = config
            .backends
            .iter()
            .map(|b| match known(b.addr) {
                Some(old) if old.weight == b.weight.max(1) => old,
                Some(old) => {
                    let new = Backend::new(b.addr, b.weight);
                    new.inherit_health(&old);
                    Arc::new(new)
                }
                None => Arc::new(Backend::new(b.addr, b.weight)),
            })
            .collect();
        let pool = Self::new(
            config.name.clone(),
            config.balance,
            backends,
            config.connect_attempts,
        )
        .with_health(
            config.health_check.clone(),
            config.outlier.map(OutlierPolicy::from),
            config.slow_start,
        )
        .with_max_per_backend(config.max_connections_per_backend)
        .with_send_proxy_protocol(config.send_proxy_protocol);
        let pool = match &config.hash {
            Some(policy) => pool.with_hash(policy.clone()),
            None => pool,
        };
        match &config.sticky_cookie {
            Some(cookie) => pool.with_sticky_cookie(cookie.clone()),
            None => pool,
        }
    }

    /// A pool over these backends, without an affinity cookie. A `Balance::Hash` pool built
    /// this way hashes with the default fallback and balance factor until [`Pool::with_hash`].
    pub fn new(
        name: String,
        balance: Balance,
        backends: Vec<Arc<Backend>>,
        connect_attempts: u32,
    ) -> Self {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let tokens = tokens(&name, &backends, None);
        Self {
            name,
            balance,
            schedule: smooth_schedule(&weights),
            backends,
            connect_attempts: connect_attempts.max(1),
            cursor: AtomicUsize::new(0),
            hash_key: None,
            fallback: sluice_config::defaults::HASH_FALLBACK,
            balance_factor: sluice_config::defaults::HASH_BALANCE_FACTOR,
            sticky_cookie: None,
            tokens,
            health_check: None,
            outlier: None,
            slow_start: None,
            max_per_backend: None,
            send_proxy_protocol: None,
        }
    }

    /// Caps every backend at `max` live connections (`None`: no cap). A full backend is not a
    /// candidate: the picker moves on as for a down one (a hashed key to its next choice).
    pub fn with_max_per_backend(mut self, max: Option<usize>) -> Self {
        self.max_per_backend = max;
        self
    }

    /// Records that connections to these backends open with a PROXY header of this version.
    pub fn with_send_proxy_protocol(
        mut self,
        version: Option<sluice_config::ProxyVersion>,
    ) -> Self {
        self.send_proxy_protocol = version;
        self
    }

    /// The PROXY header version connections to these backends open with, if any.
    pub fn send_proxy_protocol(&self) -> Option<sluice_config::ProxyVersion> {
        self.send_proxy_protocol
    }

    /// The cap on live connections per backend, if any.
    pub fn max_per_backend(&self) -> Option<usize> {
        self.max_per_backend
    }

    /// Sets how the pool judges its backends: active checks (run by `sluice-health`), passive
    /// checks and the slow-start window, the last two copied onto every backend.
    pub fn with_health(
        mut self,
        health_check: Option<HealthCheck>,
        outlier: Option<OutlierPolicy>,
        slow_start: Option<Duration>,
    ) -> Self {
        for backend in &self.backends {
            backend.set_policies(slow_start, outlier);
        }
        self.health_check = health_check;
        self.outlier = outlier;
        self.slow_start = slow_start;
        self
    }

    /// The pool's active checks, if any.
    pub fn health_check(&self) -> Option<&HealthCheck> {
        self.health_check.as_ref()
    }

    /// The pool's passive checks, if any.
    pub fn outlier(&self) -> Option<OutlierPolicy> {
        self.outlier
    }

    /// The pool's slow-start window, if any.
    pub fn slow_start(&self) -> Option<Duration> {
        self.slow_start
    }

    /// Sets how the pool hashes (meaningful with `Balance::Hash`). A fallback of
    /// `Balance::Hash`, which the configuration refuses, is taken as `least_conn`.
    pub fn with_hash(mut self, policy: HashPolicy) -> Self {
        self.fallback = match policy.fallback {
            Balance::Hash => Balance::LeastConn,
            other => other,
        };
        self.balance_factor = policy.balance_factor.filter(|f| *f > 1.0);
        self.hash_key = Some(policy.key);
        self
    }

    /// Makes the pool insert this affinity cookie (its `secret` keys the tokens).
    pub fn with_sticky_cookie(mut self, cookie: StickyCookie) -> Self {
        let secret = cookie.secret.as_ref().map(|s| s.expose());
        self.tokens = tokens(&self.name, &self.backends, secret);
        self.sticky_cookie = Some(cookie);
        self
    }

    /// What the pool hashes, when its balance is `hash`: the proxy extracts it from the request
    /// and passes it as [`Affinity::key`].
    pub fn hash_key(&self) -> Option<&HashKey> {
        self.hash_key
            .as_ref()
            .filter(|_| self.balance == Balance::Hash)
    }

    /// The algorithm used for requests without a key in a hash pool, or the pool's algorithm.
    pub fn fallback(&self) -> Balance {
        match self.balance {
            Balance::Hash => self.fallback,
            other => other,
        }
    }

    /// The bounded-load factor of hashed picks (`None`: unbounded).
    pub fn balance_factor(&self) -> Option<f64> {
        self.balance_factor
    }

    /// The affinity cookie the pool inserts, if any: the proxy reads its value from the request
    /// (as [`Affinity::cookie`]) and writes `Set-Cookie` from it.
    pub fn sticky_cookie(&self) -> Option<&StickyCookie> {
        self.sticky_cookie.as_ref()
    }

    /// A backend's cookie token in this pool (stable across processes; see [`token`]).
    pub fn token(&self, backend: &Backend) -> Option<&Token> {
        let index = self.backends.iter().position(|b| b.addr == backend.addr)?;
        self.tokens.get(index)
    }

    /// The backend a presented cookie value names, whether or not it takes connections now.
    pub fn backend_by_token(&self, token: &[u8]) -> Option<&Arc<Backend>> {
        let index = self.token_index(token)?;
        self.backends.get(index)
    }

    fn token_index(&self, token: &[u8]) -> Option<usize> {
        self.tokens.iter().position(|t| t.matches(token))
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

    /// Starts choosing backends for one connection without affinity: the pool's algorithm (for
    /// a hash pool, its fallback).
    pub fn picker(&self) -> Picker<'_> {
        self.picker_for(Affinity::NONE)
    }

    /// Starts choosing backends for one connection with what its request carries:
    ///
    /// 1. a cookie naming an available backend of this pool (when the pool inserts one): that
    ///    backend first, whatever its load;
    /// 2. then, in a hash pool with a non-empty key: the key's preference order, skipping
    ///    backends at their bounded load;
    /// 3. otherwise the pool's algorithm, or its fallback for a hash pool.
    ///
    /// Later candidates (after a failed connect) continue the same order, skipping backends
    /// already tried.
    pub fn picker_for(&self, affinity: Affinity<'_>) -> Picker<'_> {
        self.picker_at(affinity, Instant::now())
    }

    /// [`Pool::picker_for`] as of `now`, for health and slow start (simulations and tests).
    pub fn picker_at(&self, affinity: Affinity<'_>, now: Instant) -> Picker<'_> {
        let presented = match (&self.sticky_cookie, affinity.cookie) {
            (Some(_), Some(cookie)) => self.token_index(cookie),
            _ => None,
        };
        let key_hash = match (self.balance, affinity.key) {
            (Balance::Hash, Some(key)) if !key.is_empty() => Some(hash::key_hash(key)),
            _ => None,
        };
        Picker {
            pool: self,
            tried: Vec::new(),
            start: self.cursor.fetch_add(1, Ordering::Relaxed),
            full: Vec::new(),
            presented,
            key_hash,
            last: None,
            now: health::millis(now),
        }
    }
}

/// Each backend's token in this pool.
fn tokens(pool: &str, backends: &[Arc<Backend>], secret: Option<&str>) -> Vec<Token> {
    backends
        .iter()
        .map(|b| Token::new(pool, &hash::identity(b.addr), secret))
        .collect()
}

/// The backends to try for one connection, best first, each at most once, and at most the
/// pool's `connect_attempts` of them.
#[derive(Debug)]
pub struct Picker<'a> {
    pool: &'a Pool,
    /// Indices of backends already handed out (a handful at most).
    tried: Vec<usize>,
    /// Backends found full when taking them (a race with another connection): skipped without
    /// using an attempt.
    full: Vec<usize>,
    /// Where this connection starts in the round-robin schedule, or the tie-break rotation.
    start: usize,
    /// The backend whose token the client presented, if any (available or not).
    presented: Option<usize>,
    /// The hash of the request's key, in a hash pool with a key.
    key_hash: Option<u64>,
    /// The backend handed out last, and how it was chosen.
    last: Option<(usize, Placement)>,
    /// When the choice is made (a stored timestamp, `health.rs`): ejections and ramps as of then.
    now: u64,
}

impl<'a> Picker<'a> {
    /// The next backend to try, counted as live until the guard is dropped; `None` when the
    /// attempts are used up or no available backend is left.
    pub fn next_backend(&mut self) -> Option<BackendGuard> {
        if self.tried.len() >= self.pool.connect_attempts as usize {
            return None;
        }
        loop {
            let (index, placement) = self.choose()?;
            let backend = self.pool.backends.get(index)?;
            let guard = match self.pool.max_per_backend {
                None => backend.acquire(),
                Some(max) => match backend.try_acquire(max) {
                    Some(guard) => guard,
                    None => {
                        // Filled since `choose` looked: another candidate, same attempt.
                        self.full.push(index);
                        continue;
                    }
                },
            };
            self.tried.push(index);
            self.last = Some((index, placement));
            return Some(guard);
        }
    }

    /// After a successful connect to the backend handed out last: the cookie value to set, when
    /// the pool inserts an affinity cookie and the client did not present this backend's token
    /// (it had none, an unknown one, or one naming a backend that is down or refused).
    pub fn cookie_to_set(&self) -> Option<&'a Token> {
        self.pool.sticky_cookie.as_ref()?;
        let (index, _) = self.last?;
        if self.presented == Some(index) {
            return None;
        }
        self.pool.tokens.get(index)
    }

    /// How the backend handed out last was chosen (for logs and metrics).
    pub fn placement(&self) -> Option<Placement> {
        self.last.map(|(_, placement)| placement)
    }

    /// How many backends were handed out so far.
    pub fn attempts(&self) -> usize {
        self.tried.len()
    }

    fn eligible(&self, index: usize) -> bool {
        !self.tried.contains(&index)
            && !self.full.contains(&index)
            && self.pool.backends.get(index).is_some_and(|b| {
                b.is_available_ms(self.now)
                    && self.pool.max_per_backend.is_none_or(|max| b.active() < max)
            })
    }

    /// A backend's ramp (fixed point, `health::RAMP_ONE` = 1) at the time of the choice.
    fn ramp(&self, index: usize) -> u64 {
        self.pool
            .backends
            .get(index)
            .map_or(health::RAMP_ONE, |b| b.ramp_q(self.now))
    }

    /// A backend's weight times its ramp, fixed point.
    fn effective_weight(&self, index: usize) -> u64 {
        self.pool
            .backends
            .get(index)
            .map_or(0, |b| b.effective_weight(self.now))
    }

    /// The schedule from this connection's start; a backend in slow start is taken with a
    /// probability equal to its ramp, or passed over for the next one, so its share follows
    /// its ramped weight. If the dice pass over every eligible backend, the first one.
    fn next_round_robin(&self) -> Option<usize> {
        let schedule = &self.pool.schedule;
        let mut first = None;
        for step in 0..schedule.len() {
            let Some(&index) = schedule.get(self.start.wrapping_add(step) % schedule.len()) else {
                continue;
            };
            if !self.eligible(index) {
                continue;
            }
            let ramp = self.ramp(index);
            if ramp >= health::RAMP_ONE || random::below(health::RAMP_ONE) < ramp {
                return Some(index);
            }
            first.get_or_insert(index);
        }
        first
    }

    /// The backend with the fewest live connections per unit of weight; among equals, the first
    /// after a rotating start, so ties are spread rather than always won by the first backend.
    fn next_least_conn(&self) -> Option<usize> {
        let backends = &self.pool.backends;
        let n = backends.len();
        // (index, active, weight) of the best so far; loads compare as active/weight, exactly,
        // by cross-multiplication. The weight is ramped for a backend in slow start.
        let mut best: Option<(usize, u64, u64)> = None;
        for step in 0..n {
            let index = self.start.wrapping_add(step) % n;
            if !self.eligible(index) {
                continue;
            }
            let Some(backend) = backends.get(index) else {
                continue;
            };
            let (active, weight) = (backend.active() as u64, self.effective_weight(index));
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

    /// A pool whose DNS discovery has not answered yet has no backend: every algorithm
    /// gives none (the handshake answers 503), whatever the request carries.
    #[test]
    fn a_pool_without_backends_picks_none() {
        for balance in [
            Balance::RoundRobin,
            Balance::LeastConn,
            Balance::RandomTwo,
            Balance::Hash,
        ] {
            let pool = Pool::new("empty".into(), balance, Vec::new(), 3);
            let affinity = Affinity {
                cookie: Some(b"token"),
                key: Some(b"key"),
            };
            assert!(
                pool.picker_for(affinity).next_backend().is_none(),
                "{balance:?}"
            );
            assert!(pool.picker().next_backend().is_none(), "{balance:?}");
        }
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
    fn full_backends_are_skipped_and_none_left_when_all_are_full() {
        for balance in [Balance::RoundRobin, Balance::LeastConn, Balance::RandomTwo] {
            let p = pool(balance, &[1, 1], 2).with_max_per_backend(Some(2));
            let held: Vec<_> = (0..4).map(|_| p.picker().next_backend().unwrap()).collect();
            let counts: Vec<usize> = p.backends().iter().map(|b| b.active()).collect();
            assert_eq!(counts, vec![2, 2], "{balance:?}");
            assert!(p.picker().next_backend().is_none(), "{balance:?}: all full");
            drop(held);
            assert!(p.picker().next_backend().is_some());
        }
    }

    #[test]
    fn try_acquire_never_exceeds_the_cap() {
        let b = Arc::new(Backend::new(addr(9000), 1));
        let a = b.try_acquire(2).unwrap();
        let _c = b.try_acquire(2).unwrap();
        assert!(b.try_acquire(2).is_none());
        assert_eq!(b.active(), 2);
        drop(a);
        assert!(b.try_acquire(2).is_some());
    }

    #[test]
    fn hashed_keys_whose_backend_is_full_go_to_their_next_choice() {
        let mut p = pool(Balance::Hash, &[1, 1, 1], 3).with_max_per_backend(Some(1));
        p.balance_factor = None;
        let key = b"session-42".as_slice();
        let affinity = Affinity {
            cookie: None,
            key: Some(key),
        };
        let first = p.picker_for(affinity).next_backend().unwrap();
        let mut order = p.picker_for(affinity);
        // With the first choice full, the key goes to the second of its own order: the same
        // one a fresh picker tries after the first.
        let second = order.next_backend().unwrap();
        assert_ne!(first.addr(), second.addr());
        let mut unbounded = pool(Balance::Hash, &[1, 1, 1], 3);
        unbounded.balance_factor = None;
        let mut fresh = unbounded.picker_for(affinity);
        assert_eq!(fresh.next_backend().unwrap().addr(), first.addr());
        assert_eq!(fresh.next_backend().unwrap().addr(), second.addr());
    }

    #[test]
    fn reload_keeps_identity_of_backends_that_stay() {
        let config = |ports: &[u16]| sluice_config::Pool {
            balance: Balance::LeastConn,
            connect_attempts: 2,
            drain_spread: std::time::Duration::ZERO,
            idle_connections: 0,
            ..sluice_config::Pool::with_backends(
                "p",
                ports
                    .iter()
                    .map(|&port| sluice_config::Backend {
                        addr: addr(port),
                        weight: 1,
                    })
                    .collect(),
            )
        };
        let old = Pool::from_config(&config(&[1, 2]), |_| None);
        let _live = old.backends()[1].acquire();
        let new = Pool::from_config(&config(&[2, 3]), |addr| old.backend(addr).cloned());
        assert!(Arc::ptr_eq(&old.backends()[1], &new.backends()[0]));
        assert_eq!(new.backends()[0].active(), 1, "live count carried over");
        assert_eq!(new.backends()[1].active(), 0);
    }
}
