//! What a request carries that ties it to a backend ([`Affinity`]), and the choices that use it:
//! the affinity cookie, hashed picks with bounded loads, and `random_two`.
//!
//! # Bounded loads
//!
//! Consistent hashing alone sends a hot key's every connection to one backend. With a balance
//! factor `c` (`hash_balance_factor`, default 1.5), a hashed pick walks the key's preference
//! order ([`crate::hash`]) and skips every backend that already holds its share of the load
//! times `c`:
//!
//! ```text
//! L = live connections of the available backends       W = their total weight
//! backend i may take the connection  ⇔  live_i < ⌈c · (L + 1) · weight_i / W⌉
//! ```
//!
//! This is Mirrokni, Thorup and Zadimoghaddam's "consistent hashing with bounded loads"
//! (arXiv:1608.01350) with capacities proportional to weight, the rule HAProxy applies for
//! `hash-balance-factor` (`chash_server_is_eligible`: `(served + 1) · factor` slots shared by
//! weight). Two deliberate differences: HAProxy splits the total into whole slots by cumulative
//! weight, sluice rounds each backend's share up (a little more lenient, never fewer than one
//! slot, and simpler); and `L` counts the available backends' connections only, so a draining
//! backend's tunnels do not raise everyone's cap. The `+ 1` is the connection being placed.
//! Since the capacities add up to more than `L`, some backend always fits: a pick never fails
//! because of the bound. When a backend takes the connection, it holds at most
//! `⌈c · mean⌉` (mean over the live connections at that moment).
//!
//! A backend in slow start counts with its ramped weight, in `W` and in its own capacity, so it
//! takes no more than its ramp's share of hashed connections; the key's preference order itself
//! (rendezvous costs) uses the configured weights, so keys come home as the ramp grows.
//! Unbounded hashing ignores slow start.
//!
//! The affinity cookie ignores the bound: a client that was given a backend keeps it while the
//! backend takes connections (that is what the cookie promises). Fallback algorithms need no
//! bound: they balance by themselves.

use std::fmt;

use crate::hash;
use crate::random;
use crate::{Balance, Picker};

/// What a request carries that may tie it to a backend. Build it from the request with
/// `sluice_handshake`'s extractors (the pool says which: [`crate::Pool::hash_key`],
/// [`crate::Pool::sticky_cookie`]). Its `Debug` never shows the bytes.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Affinity<'a> {
    /// The value of the pool's affinity cookie, when the request has one.
    pub cookie: Option<&'a [u8]>,
    /// The hash key (`hash_key`), when the pool hashes and the request has it. An empty key
    /// counts as none.
    pub key: Option<&'a [u8]>,
}

impl<'a> Affinity<'a> {
    /// Nothing: the pool's algorithm.
    pub const NONE: Affinity<'static> = Affinity {
        cookie: None,
        key: None,
    };

    /// A hash key only.
    pub fn key(key: &'a [u8]) -> Self {
        Affinity {
            cookie: None,
            key: Some(key),
        }
    }

    /// An affinity cookie value only.
    pub fn cookie(cookie: &'a [u8]) -> Self {
        Affinity {
            cookie: Some(cookie),
            key: None,
        }
    }
}

impl fmt::Debug for Affinity<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Affinity")
            .field("cookie", &self.cookie.map(|_| ".."))
            .field("key", &self.key.map(|_| ".."))
            .finish()
    }
}

/// How a backend was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The backend named by the client's affinity cookie.
    Cookie,
    /// The key's best choice among the backends available and not yet tried.
    Hashed,
    /// A later choice in the key's order: better ones were at their bounded load.
    Spilled,
    /// The pool's algorithm (a hash pool's fallback when there was no key).
    Balanced,
}

impl Placement {
    /// A fixed label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Placement::Cookie => "cookie",
            Placement::Hashed => "hashed",
            Placement::Spilled => "spilled",
            Placement::Balanced => "balanced",
        }
    }
}

impl Picker<'_> {
    /// The next backend and how it was chosen, in the order `Pool::picker_for` describes.
    pub(crate) fn choose(&self) -> Option<(usize, Placement)> {
        if let Some(index) = self.presented.filter(|&i| self.eligible(i)) {
            return Some((index, Placement::Cookie));
        }
        if let Some(key) = self.key_hash {
            return self.next_hashed(key);
        }
        let index = match self.pool.fallback() {
            Balance::RoundRobin => self.next_round_robin(),
            Balance::RandomTwo => self.next_random_two(),
            Balance::LeastConn | Balance::Hash => self.next_least_conn(),
        }?;
        Some((index, Placement::Balanced))
    }

    /// The first backend of the key's preference order that is available, not yet tried and
    /// under its bounded load; if every remaining one is at its bound, the first remaining one.
    fn next_hashed(&self, key: u64) -> Option<(usize, Placement)> {
        let backends = &self.pool.backends;
        // Connections one unit of weight may hold: c · (L + 1) / W, with weights ramped for
        // backends in slow start (fixed point: the unit cancels out).
        let per_weight = self.pool.balance_factor.map(|factor| {
            let (live, weight) = backends
                .iter()
                .filter(|b| b.is_available_ms(self.now))
                .fold((0u64, 0u64), |(live, weight), b| {
                    (
                        live + b.active() as u64,
                        weight + b.effective_weight(self.now),
                    )
                });
            // Exact when the true value is an integer: both products are exact in an f64.
            factor * (live + 1) as f64 / weight.max(1) as f64
        });
        // (cost, identity hash, index) of the best remaining backend, and of the best one
        // under its bound.
        let mut best: Option<(f64, u64, usize)> = None;
        let mut best_fit: Option<(f64, u64, usize)> = None;
        for (index, backend) in backends.iter().enumerate() {
            if !self.eligible(index) {
                continue;
            }
            let id = backend.identity_hash;
            let cost = hash::cost(key, id, backend.weight);
            let beats = |current: Option<(f64, u64, usize)>| {
                current.is_none_or(|(c, i, _)| hash::before(cost, id, c, i))
            };
            if beats(best) {
                best = Some((cost, id, index));
            }
            let fits = per_weight.is_none_or(|per_weight| {
                let capacity = (per_weight * backend.effective_weight(self.now) as f64).ceil();
                (backend.active() as f64) < capacity
            });
            if fits && beats(best_fit) {
                best_fit = Some((cost, id, index));
            }
        }
        let (_, _, first) = best?;
        Some(match best_fit {
            Some((_, _, index)) if index != first => (index, Placement::Spilled),
            _ => (first, Placement::Hashed),
        })
    }

    /// Power of two choices: two distinct backends drawn at random in proportion to their
    /// weights, and the one with fewer live connections per unit of weight (the first drawn on
    /// a tie, which is itself random). Weights are ramped for backends in slow start, in the
    /// draw and in the comparison.
    fn next_random_two(&self) -> Option<usize> {
        let backends = &self.pool.backends;
        let total: u64 = (0..backends.len())
            .filter(|&i| self.eligible(i))
            .filter_map(|i| backends.get(i))
            .map(|b| b.effective_weight(self.now))
            .sum();
        if total == 0 {
            return None;
        }
        let a = self.weighted_draw(random::below(total), None)?;
        let a_backend = backends.get(a)?;
        let rest = total - a_backend.effective_weight(self.now);
        if rest == 0 {
            return Some(a);
        }
        let Some(b) = self.weighted_draw(random::below(rest), Some(a)) else {
            return Some(a);
        };
        let Some(b_backend) = backends.get(b) else {
            return Some(a);
        };
        let load = |x: &crate::Backend, y: &crate::Backend| {
            x.active() as u64 * y.effective_weight(self.now)
        };
        Some(if load(b_backend, a_backend) < load(a_backend, b_backend) {
            b
        } else {
            a
        })
    }

    /// The eligible backend (other than `skip`) at `point` of their weights laid end to end.
    fn weighted_draw(&self, mut point: u64, skip: Option<usize>) -> Option<usize> {
        for (index, backend) in self.pool.backends.iter().enumerate() {
            if Some(index) == skip || !self.eligible(index) {
                continue;
            }
            let weight = backend.effective_weight(self.now);
            if point < weight {
                return Some(index);
            }
            point -= weight;
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use sluice_config::{HashKey, HashPolicy, StickyCookie};

    use super::*;
    use crate::{Backend, BackendGuard, Pool};

    pub(crate) fn addr(i: usize) -> SocketAddr {
        format!("10.0.{}.{}:9000", i / 250, 1 + i % 250)
            .parse()
            .expect("test address")
    }

    pub(crate) fn config(
        balance: Balance,
        weights: &[u32],
        factor: Option<f64>,
    ) -> sluice_config::Pool {
        sluice_config::Pool {
            balance,
            hash: (balance == Balance::Hash).then(|| HashPolicy {
                key: HashKey::Cookie("session".into()),
                fallback: Balance::LeastConn,
                balance_factor: factor,
            }),
            drain_spread: std::time::Duration::ZERO,
            idle_connections: 0,
            ..sluice_config::Pool::with_backends(
                "chat",
                weights
                    .iter()
                    .enumerate()
                    .map(|(i, &weight)| sluice_config::Backend {
                        addr: addr(i),
                        weight,
                    })
                    .collect(),
            )
        }
    }

    /// A hash pool of `n` backends of weight 1 at 10.0.0.1…, bounded by `factor`.
    pub(crate) fn hash_pool(n: usize, factor: Option<f64>) -> Pool {
        Pool::from_config(&config(Balance::Hash, &vec![1; n], factor), |_| None)
    }

    fn sticky(pool: sluice_config::Pool) -> Pool {
        let mut pool = pool;
        pool.sticky_cookie = Some(StickyCookie {
            name: "srv".into(),
            ttl: None,
            secure: false,
            http_only: true,
            same_site: None,
            path: "/".into(),
            secret: None,
        });
        Pool::from_config(&pool, |_| None)
    }

    fn key(i: usize) -> String {
        format!("session-{i}")
    }

    /// The backend a key goes to (its guard dropped at once: no load builds up).
    fn first(pool: &Pool, key: &[u8]) -> SocketAddr {
        let guard = pool.picker_for(Affinity::key(key)).next_backend();
        guard.map(|g| g.addr()).expect("a backend")
    }

    fn assignment(pool: &Pool, keys: usize) -> Vec<SocketAddr> {
        (0..keys).map(|i| first(pool, key(i).as_bytes())).collect()
    }

    fn counts(assigned: &[SocketAddr]) -> HashMap<SocketAddr, usize> {
        let mut counts = HashMap::new();
        for a in assigned {
            *counts.entry(*a).or_insert(0) += 1;
        }
        counts
    }

    fn max_over_mean(loads: &[usize]) -> f64 {
        let mean = loads.iter().sum::<usize>() as f64 / loads.len() as f64;
        *loads.iter().max().unwrap_or(&0) as f64 / mean
    }

    #[test]
    fn hashing_100_000_keys_over_10_backends_stays_within_1_05_of_the_mean() {
        let pool = hash_pool(10, None);
        let assigned = assignment(&pool, 100_000);
        let loads: Vec<usize> = counts(&assigned).into_values().collect();
        assert_eq!(loads.len(), 10, "every backend has keys");
        let ratio = max_over_mean(&loads);
        println!("100,000 keys over 10 backends: max/mean {ratio:.4}, loads {loads:?}");
        assert!(ratio <= 1.05, "max/mean {ratio}");
    }

    #[test]
    fn removing_1_of_10_backends_moves_only_its_keys() {
        let before = hash_pool(10, None);
        let assigned = assignment(&before, 100_000);
        // A reload without backend 3: the others keep their identity (the same Arcs).
        let mut cfg = config(Balance::Hash, &[1; 10], None);
        let removed = cfg.backends.remove(3).addr;
        let after = Pool::from_config(&cfg, |a| before.backend(a).cloned());
        assert!(Arc::ptr_eq(&before.backends()[4], &after.backends()[3]));
        let reassigned = assignment(&after, 100_000);
        let mut moved = 0;
        for (old, new) in assigned.iter().zip(&reassigned) {
            if old == new {
                continue;
            }
            assert_eq!(*old, removed, "a key of a backend that stayed moved");
            moved += 1;
        }
        let of_removed = assigned.iter().filter(|a| **a == removed).count();
        println!(
            "remove 1 of 10: {moved} keys moved ({:.2} %), all of them the removed backend's",
            moved as f64 / 1000.0
        );
        assert_eq!(moved, of_removed, "every key of the removed backend moved");
    }

    #[test]
    fn adding_an_11th_backend_moves_at_most_1_over_11_plus_1_percent() {
        let before = hash_pool(10, None);
        let assigned = assignment(&before, 100_000);
        let after = Pool::from_config(&config(Balance::Hash, &[1; 11], None), |a| {
            before.backend(a).cloned()
        });
        let added = addr(10);
        let reassigned = assignment(&after, 100_000);
        let mut moved = 0;
        for (old, new) in assigned.iter().zip(&reassigned) {
            if old != new {
                assert_eq!(*new, added, "a key moved between two old backends");
                moved += 1;
            }
        }
        let share = moved as f64 / 100_000.0;
        println!(
            "add an 11th backend: {:.2} % of keys moved (ideal 1/11 = 9.09 %)",
            share * 100.0
        );
        assert!(share <= 1.0 / 11.0 + 0.01, "{share}");
        assert!(
            share >= 1.0 / 11.0 - 0.01,
            "{share}: the newcomer gets its share"
        );
    }

    #[test]
    fn list_order_does_not_matter() {
        let pool = hash_pool(10, None);
        let mut cfg = config(Balance::Hash, &[1; 10], None);
        cfg.backends.reverse();
        let reversed = Pool::from_config(&cfg, |_| None);
        for i in 0..2_000 {
            let k = key(i);
            assert_eq!(first(&pool, k.as_bytes()), first(&reversed, k.as_bytes()));
        }
    }

    #[test]
    fn weights_1_2_3_4_get_shares_within_3_percent() {
        let pool = Pool::from_config(&config(Balance::Hash, &[1, 2, 3, 4], None), |_| None);
        let counts = counts(&assignment(&pool, 100_000));
        for (i, weight) in [1.0, 2.0, 3.0, 4.0].into_iter().enumerate() {
            let share = *counts.get(&addr(i)).unwrap_or(&0) as f64 / 100_000.0;
            let expected = weight / 10.0;
            let error = (share - expected).abs() / expected;
            println!(
                "weight {weight}: share {share:.4} (expected {expected}), off by {:.2} %",
                error * 100.0
            );
            assert!(error <= 0.03, "weight {weight}: share {share}");
        }
    }

    /// Keys of a Zipf(1.1) law over 1,000 distinct keys: the most popular key alone is about
    /// 13 % of all connections.
    pub(crate) fn zipf_keys(connections: usize, distinct: usize, s: f64, seed: u64) -> Vec<usize> {
        let mut cdf = Vec::with_capacity(distinct);
        let mut total = 0.0;
        for rank in 1..=distinct {
            total += 1.0 / (rank as f64).powf(s);
            cdf.push(total);
        }
        random::seed(seed);
        (0..connections)
            .map(|_| {
                let point = random::below(1 << 53) as f64 / (1u64 << 53) as f64 * total;
                cdf.partition_point(|&c| c < point).min(distinct - 1)
            })
            .collect()
    }

    /// Holds one connection per key in `keys` (sessions stay open); returns the live count of
    /// every backend and how many picks spilled.
    pub(crate) fn hold(pool: &Pool, keys: &[usize]) -> (Vec<usize>, usize, Vec<BackendGuard>) {
        let mut held = Vec::with_capacity(keys.len());
        let mut spilled = 0;
        for &k in keys {
            let key = key(k);
            let mut picker = pool.picker_for(Affinity::key(key.as_bytes()));
            let guard = picker.next_backend().expect("a backend");
            if picker.placement() == Some(Placement::Spilled) {
                spilled += 1;
            }
            held.push(guard);
        }
        let loads = pool.backends().iter().map(|b| b.active()).collect();
        (loads, spilled, held)
    }

    #[test]
    fn bounded_loads_keep_zipf_skew_at_or_below_1_25_times_the_mean() {
        let keys = zipf_keys(100_000, 1_000, 1.1, 7);
        let unbounded = hash_pool(10, None);
        let (loads, _, held) = hold(&unbounded, &keys);
        let skew = max_over_mean(&loads);
        drop(held);
        let bounded = hash_pool(10, Some(1.25));
        let (loads, spilled, held) = hold(&bounded, &keys);
        let capped = max_over_mean(&loads);
        println!(
            "Zipf(1.1), 100,000 connections over 10 backends: unbounded max/mean {skew:.3}, \
             factor 1.25 max/mean {capped:.4} with {:.1} % off their first choice; loads {loads:?}",
            spilled as f64 / 1000.0
        );
        assert!(skew > 1.5, "the skew is real: {skew}");
        assert!(capped <= 1.25, "bounded max/mean {capped}");
        drop(held);
        assert!(bounded.backends().iter().all(|b| b.active() == 0));
    }

    #[test]
    fn the_bound_holds_at_every_step_with_weights() {
        // Weights 1, 1, 2, 4 and one very hot key: after every pick, a backend that just took
        // the connection holds at most ⌈1.5 · mean share · its weight⌉.
        let pool = Pool::from_config(&config(Balance::Hash, &[1, 1, 2, 4], Some(1.5)), |_| None);
        let mut held = Vec::new();
        for i in 0..4_000 {
            let hot = if i % 10 == 0 { key(i) } else { key(0) };
            let guard = pool
                .picker_for(Affinity::key(hot.as_bytes()))
                .next_backend()
                .expect("a backend");
            let total: usize = pool.backends().iter().map(|b| b.active()).sum();
            let b = guard.backend();
            let cap = (1.5 * total as f64 * f64::from(b.weight()) / 8.0).ceil() as usize;
            assert!(b.active() <= cap, "step {i}: {} > {cap}", b.active());
            held.push(guard);
        }
        let loads: Vec<usize> = pool.backends().iter().map(|b| b.active()).collect();
        // Per unit of weight, nobody is above 1.5 × the mean.
        for (load, weight) in loads.iter().zip([1.0, 1.0, 2.0, 4.0]) {
            assert!(
                *load as f64 / weight <= 1.5 * 4_000.0 / 8.0 + 1.0,
                "{loads:?}"
            );
        }
    }

    #[test]
    fn failed_connects_walk_the_keys_own_order() {
        let pool = hash_pool(10, None);
        let ids: Vec<(u64, u32)> = pool
            .backends()
            .iter()
            .map(|b| (b.identity_hash(), b.weight()))
            .collect();
        for i in 0..50 {
            let k = key(i);
            let order = hash::preference(k.as_bytes(), &ids);
            let mut picker = pool.picker_for(Affinity::key(k.as_bytes()));
            let mut handed = Vec::new();
            while let Some(guard) = picker.next_backend() {
                handed.push(guard.addr());
            }
            let expected: Vec<SocketAddr> = order
                .iter()
                .take(3)
                .map(|&i| pool.backends()[i].addr())
                .collect();
            assert_eq!(
                handed, expected,
                "connect_attempts = 3 candidates, in the key's order"
            );
        }
    }

    #[test]
    fn a_draining_backends_keys_go_to_their_next_choice_and_come_back() {
        let pool = hash_pool(5, None);
        let assigned = assignment(&pool, 5_000);
        pool.backends()[2].set_draining(true);
        let during = assignment(&pool, 5_000);
        for (old, new) in assigned.iter().zip(&during) {
            if *old == addr(2) {
                assert_ne!(*new, addr(2));
            } else {
                assert_eq!(old, new, "only the draining backend's keys move");
            }
        }
        pool.backends()[2].set_draining(false);
        assert_eq!(assignment(&pool, 5_000), assigned);
    }

    #[test]
    fn keyless_requests_of_a_hash_pool_use_the_fallback() {
        let pool = hash_pool(3, Some(1.5));
        let _a = pool.backends()[0].acquire();
        let _b = pool.backends()[1].acquire();
        // Default fallback: least_conn.
        for affinity in [Affinity::NONE, Affinity::key(b""), Affinity::cookie(b"x")] {
            let mut picker = pool.picker_for(affinity);
            assert_eq!(picker.next_backend().map(|g| g.addr()), Some(addr(2)));
            assert_eq!(picker.placement(), Some(Placement::Balanced));
        }
        let mut cfg = config(Balance::Hash, &[1, 1, 1], None);
        if let Some(hash) = cfg.hash.as_mut() {
            hash.fallback = Balance::RoundRobin;
        }
        let pool = Pool::from_config(&cfg, |_| None);
        let ports: Vec<SocketAddr> = (0..6)
            .filter_map(|_| pool.picker().next_backend().map(|g| g.addr()))
            .collect();
        assert_eq!(
            ports,
            [addr(0), addr(1), addr(2), addr(0), addr(1), addr(2)]
        );
        assert_eq!(pool.fallback(), Balance::RoundRobin);
        assert_eq!(pool.hash_key(), Some(&HashKey::Cookie("session".into())));
    }

    #[test]
    fn keys_mean_nothing_to_other_algorithms() {
        let pool = Pool::from_config(&config(Balance::RoundRobin, &[1, 1], None), |_| None);
        assert_eq!(pool.hash_key(), None);
        let firsts: Vec<SocketAddr> = (0..4)
            .filter_map(|_| pool.picker_for(Affinity::key(b"same")).next_backend())
            .map(|g| g.addr())
            .collect();
        assert_eq!(firsts, [addr(0), addr(1), addr(0), addr(1)]);
    }

    // ---- the affinity cookie ------------------------------------------------------------------

    #[test]
    fn a_client_without_the_cookie_is_balanced_and_given_one() {
        let pool = sticky(config(Balance::LeastConn, &[1, 1, 1], None));
        let mut picker = pool.picker();
        let guard = picker.next_backend().expect("a backend");
        let token = picker.cookie_to_set().expect("a cookie to set");
        assert_eq!(Some(token), pool.token(guard.backend()));
        assert_eq!(
            pool.backend_by_token(token.as_str().as_bytes())
                .map(|b| b.addr()),
            Some(guard.addr())
        );
        assert_eq!(picker.placement(), Some(Placement::Balanced));
    }

    #[test]
    fn a_client_with_the_cookie_goes_back_whatever_the_load() {
        let pool = sticky(config(Balance::LeastConn, &[1, 1, 1], None));
        let busy = &pool.backends()[1];
        let _load: Vec<BackendGuard> = (0..50).map(|_| busy.acquire()).collect();
        let token = pool.token(busy).expect("token").as_str().to_owned();
        let mut picker = pool.picker_for(Affinity::cookie(token.as_bytes()));
        assert_eq!(picker.next_backend().map(|g| g.addr()), Some(busy.addr()));
        assert_eq!(picker.placement(), Some(Placement::Cookie));
        assert_eq!(picker.cookie_to_set(), None, "the cookie is already right");
    }

    #[test]
    fn the_cookie_wins_over_the_hash_key() {
        let pool = sticky(config(Balance::Hash, &[1; 5], Some(1.5)));
        let k = b"session-1";
        let hashed = first(&pool, k);
        let other = pool
            .backends()
            .iter()
            .find(|b| b.addr() != hashed)
            .expect("another backend");
        let token = pool.token(other).expect("token").as_str().to_owned();
        let affinity = Affinity {
            cookie: Some(token.as_bytes()),
            key: Some(k),
        };
        let mut picker = pool.picker_for(affinity);
        assert_eq!(picker.next_backend().map(|g| g.addr()), Some(other.addr()));
        // Refused: the next candidate is the key's own choice, and the cookie is replaced.
        assert_eq!(picker.next_backend().map(|g| g.addr()), Some(hashed));
        assert_eq!(picker.placement(), Some(Placement::Hashed));
        assert_eq!(
            picker.cookie_to_set(),
            pool.token(&pool.backends()[hashed_index(&pool, hashed)])
        );
    }

    fn hashed_index(pool: &Pool, a: SocketAddr) -> usize {
        pool.backends()
            .iter()
            .position(|b| b.addr() == a)
            .unwrap_or(0)
    }

    #[test]
    fn a_cookie_naming_a_backend_that_is_down_is_rebalanced_and_replaced() {
        let pool = sticky(config(Balance::RoundRobin, &[1, 1, 1], None));
        let down = &pool.backends()[0];
        let token = pool.token(down).expect("token").as_str().to_owned();
        down.set_draining(true);
        let mut picker = pool.picker_for(Affinity::cookie(token.as_bytes()));
        let guard = picker.next_backend().expect("another backend");
        assert_ne!(guard.addr(), down.addr());
        assert_eq!(picker.cookie_to_set(), pool.token(guard.backend()));
        // Unknown, forged or truncated values are balanced the same way.
        for bad in [
            &b"0123456789abcdef"[..],
            b"",
            &token.as_bytes()[..8],
            b"\xff\r\n",
        ] {
            let mut picker = pool.picker_for(Affinity::cookie(bad));
            let guard = picker.next_backend().expect("a backend");
            assert_eq!(picker.cookie_to_set(), pool.token(guard.backend()));
        }
    }

    #[test]
    fn pools_without_the_cookie_ignore_it_and_set_none() {
        let with = sticky(config(Balance::RoundRobin, &[1, 1], None));
        let token = with
            .token(&with.backends()[1])
            .expect("token")
            .as_str()
            .to_owned();
        let without = Pool::from_config(&config(Balance::RoundRobin, &[1, 1], None), |_| None);
        let mut picker = without.picker_for(Affinity::cookie(token.as_bytes()));
        assert_eq!(picker.next_backend().map(|g| g.addr()), Some(addr(0)));
        assert_eq!(picker.cookie_to_set(), None);
        assert_eq!(picker.placement(), Some(Placement::Balanced));
    }

    #[test]
    fn tokens_are_the_same_in_every_process_and_across_reloads() {
        // Two independent builds (two processes) agree, and a reload that keeps a backend keeps
        // its token even when its position and weight change.
        let a = sticky(config(Balance::LeastConn, &[1, 1, 1], None));
        let b = sticky(config(Balance::LeastConn, &[1, 1, 1], None));
        for (x, y) in a.backends().iter().zip(b.backends()) {
            assert_eq!(a.token(x), b.token(y));
        }
        let mut cfg = config(Balance::LeastConn, &[1, 1, 1], None);
        cfg.backends.remove(0);
        cfg.backends.reverse();
        cfg.backends[0].weight = 5;
        let reloaded = sticky(cfg);
        for backend in reloaded.backends() {
            let old = a.backend(backend.addr()).expect("kept");
            assert_eq!(reloaded.token(backend), a.token(old));
        }
        // Distinct per backend.
        let mut tokens: Vec<&str> = a
            .backends()
            .iter()
            .filter_map(|x| a.token(x))
            .map(|t| t.as_str())
            .collect();
        tokens.dedup();
        assert_eq!(tokens.len(), 3);
    }

    // ---- random_two ---------------------------------------------------------------------------

    #[test]
    fn random_two_keeps_loads_close_and_respects_weights() {
        random::seed(1);
        let pool = Pool::from_config(&config(Balance::RandomTwo, &[1; 10], None), |_| None);
        let held: Vec<BackendGuard> = (0..10_000)
            .filter_map(|_| pool.picker().next_backend())
            .collect();
        let loads: Vec<usize> = pool.backends().iter().map(|b| b.active()).collect();
        let spread = loads.iter().max().unwrap_or(&0) - loads.iter().min().unwrap_or(&0);
        println!("random_two, 10,000 held over 10: loads {loads:?}");
        assert!(
            spread <= 5,
            "two choices keep the loads within a few: {loads:?}"
        );
        drop(held);

        let pool = Pool::from_config(&config(Balance::RandomTwo, &[1, 3], None), |_| None);
        let held: Vec<BackendGuard> = (0..4_000)
            .filter_map(|_| pool.picker().next_backend())
            .collect();
        let loads: Vec<usize> = pool.backends().iter().map(|b| b.active()).collect();
        assert!(loads[0].abs_diff(1_000) <= 10, "{loads:?}");
        drop(held);
    }

    #[test]
    fn random_two_skips_draining_and_tried_backends() {
        random::seed(2);
        let pool = Pool::from_config(&config(Balance::RandomTwo, &[1, 1, 1], None), |_| None);
        pool.backends()[1].set_draining(true);
        for _ in 0..100 {
            let mut picker = pool.picker();
            let a = picker.next_backend().expect("one").addr();
            let b = picker.next_backend().expect("two").addr();
            assert_ne!(a, b);
            assert!(a != addr(1) && b != addr(1));
            assert!(picker.next_backend().is_none(), "only two are available");
        }
    }

    #[test]
    fn affinity_debug_hides_the_bytes() {
        let a = Affinity {
            cookie: Some(b"secret-cookie"),
            key: Some(b"user@example.com"),
        };
        let debug = format!("{a:?}");
        assert!(
            !debug.contains("secret") && !debug.contains("example"),
            "{debug}"
        );
        assert_eq!(Placement::Spilled.label(), "spilled");
        let _ = Backend::new(addr(0), 1);
    }
}
