//! DNS discovery on the control plane: the backends of pools with a `discovery` table, resolved
//! before the first connection is accepted and then again on an interval, applied exactly as a
//! reload applies a new configuration.
//!
//! - **The snapshot holds the discovered backends.** A pool with discovery has, in the
//!   snapshot's configuration, the backends of its last good answer, as if the file had listed
//!   them. So everything a reload does to backends (`reload.rs`: stable identities by address,
//!   live counts and health kept, removed backends drained per the pool's `drain_timeout`,
//!   added ones in slow start, health checkers following) happens to discovered ones too: a
//!   change of records is a commit of the running configuration with that pool's backends
//!   replaced ([`apply_discovered`]), under the control lock like any reload. It advances the
//!   generation but is not counted as a reload.
//! - **Failures keep the last good set.** SERVFAIL, REFUSED, timeouts, I/O errors, malformed
//!   answers, and also NXDOMAIN and an answer with no address: each is counted
//!   (`sluice_discovery_resolutions_total{result}`) and logged, and the pool keeps the backends
//!   it has. DNS is not a health check: backends that really went away are found out by
//!   health checks and passive checks, while a pool emptied by a DNS hiccup would answer 503
//!   to everyone. After a failure the next try comes sooner (from `min_interval`, doubling up
//!   to `max_interval`).
//! - **Intervals.** After an answer, the next resolution comes after the smallest TTL of the
//!   records used, within `min_interval` and `max_interval`.
//! - **Start.** `Server::run` resolves every pool's discovery (side by side, each bounded by
//!   its timeouts) before it accepts a connection. A pool whose first resolution fails starts
//!   with no backend and answers 503 until an answer lists some; sluice itself starts (a load
//!   balancer that refuses to start because one backend service has no pods yet would turn
//!   that into an outage of every other pool).
//! - **Reload.** A pool whose discovery asks the same question of the same servers keeps the
//!   backends resolved (no flap to empty, no wait); one whose question or servers changed is
//!   resolved before the new generation is committed, and a failure refuses the reload (the
//!   running configuration, with its last good backends, stays).
//! - **Watchers.** One task per pool with discovery, started after the first commit and
//!   brought in line after every reload: a pool whose question is unchanged keeps its task,
//!   which reads the pool's intervals and timeout from the live snapshot at every round.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sluice_config::{Backend, Config, Discovery};
use sluice_discovery::{ResolveError, Resolved, resolve};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Shared;
use crate::snapshot::Snapshot;

/// The running resolution loops, by pool name.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    running: HashMap<String, Watcher>,
}

#[derive(Debug)]
struct Watcher {
    discovery: Discovery,
    stop: CancellationToken,
}

impl Watchers {
    /// Starts a loop for every pool of `snapshot` with discovery that has none for the same
    /// question, and stops the loops of pools that no longer ask it. `first` gives the delay
    /// before a new loop's first round (by pool; absent: its `min_interval`).
    pub(crate) fn follow(
        &mut self,
        shared: &Arc<Shared>,
        snapshot: &Snapshot,
        first: &HashMap<String, Duration>,
    ) {
        let wanted: HashMap<&str, &Discovery> = snapshot
            .config()
            .pools
            .iter()
            .filter_map(|p| p.discovery.as_ref().map(|d| (p.name.as_str(), d)))
            .collect();
        self.running.retain(|pool, watcher| {
            let keep = wanted
                .get(pool.as_str())
                .is_some_and(|d| d.same_records(&watcher.discovery));
            if !keep {
                watcher.stop.cancel();
            }
            keep
        });
        for (pool, discovery) in wanted {
            if self.running.contains_key(pool) {
                continue;
            }
            let stop = CancellationToken::new();
            let delay = first.get(pool).copied().unwrap_or(discovery.min_interval);
            tokio::spawn(watch(
                Arc::downgrade(shared),
                pool.to_owned(),
                discovery.clone(),
                delay,
                stop.clone(),
            ));
            self.running.insert(
                pool.to_owned(),
                Watcher {
                    discovery: discovery.clone(),
                    stop,
                },
            );
        }
    }

    /// Stops every loop (shutdown).
    pub(crate) fn stop(&mut self) {
        for (_, watcher) in self.running.drain() {
            watcher.stop.cancel();
        }
    }
}

/// `config` with the backends of each pool with discovery filled in: those `old` has when the
/// pool asks the same question, else resolved now (side by side). `Err`: one line per pool
/// whose resolution failed. The second value gives, by pool resolved now, when to ask next.
pub(crate) async fn fill(
    old: &Snapshot,
    mut config: Config,
) -> Result<(Config, HashMap<String, Duration>), Vec<String>> {
    let mut to_resolve = Vec::new();
    for (index, pool) in config.pools.iter_mut().enumerate() {
        let Some(discovery) = &pool.discovery else {
            continue;
        };
        let kept = old.config().pool(&pool.name).filter(|p| {
            p.discovery
                .as_ref()
                .is_some_and(|d| d.same_records(discovery))
        });
        match kept {
            Some(p) => pool.backends = p.backends.clone(),
            None => to_resolve.push((index, discovery.clone())),
        }
    }
    let mut next = HashMap::new();
    let failures = resolve_pools(&mut config, to_resolve, &mut next).await;
    if failures.is_empty() {
        return Ok((config, next));
    }
    Err(failures
        .into_iter()
        .map(|(pool, _, error)| format!("pool {pool}: DNS discovery: {error}"))
        .collect())
}

/// At start: every pool's discovery resolved, side by side; a pool whose resolution fails
/// starts empty (503 until DNS lists backends), with a warning.
pub(crate) async fn resolve_at_start(mut config: Config) -> (Config, HashMap<String, Duration>) {
    let pools = config
        .pools
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.discovery.clone().map(|d| (i, d)))
        .collect();
    let mut next = HashMap::new();
    for (pool, discovery, error) in resolve_pools(&mut config, pools, &mut next).await {
        warn!(
            pool = %pool,
            query = %discovery.query,
            result = error.label(),
            %error,
            "DNS discovery failed at start: the pool has no backend (503) until DNS lists some"
        );
    }
    (config, next)
}

/// Resolves the discovery of the pools at these indices of `config`, side by side; each
/// answer becomes its pool's backends, and when to ask next goes to `next`. Returns the
/// failures: pool name, discovery, error.
async fn resolve_pools(
    config: &mut Config,
    pools: Vec<(usize, Discovery)>,
    next: &mut HashMap<String, Duration>,
) -> Vec<(String, Discovery, ResolveError)> {
    let results = futures_util::future::join_all(pools.iter().map(|(_, d)| resolve(d))).await;
    let mut failures = Vec::new();
    for ((index, discovery), result) in pools.into_iter().zip(results) {
        let Some(pool) = config.pools.get_mut(index) else {
            continue;
        };
        count(&pool.name, result.as_ref());
        match result {
            Ok(resolved) => {
                next.insert(pool.name.clone(), interval(&discovery, &resolved));
                info!(
                    pool = %pool.name,
                    query = %discovery.query,
                    backends = resolved.backends.len(),
                    "DNS discovery: backends resolved"
                );
                pool.backends = resolved.backends;
            }
            Err(error) => failures.push((pool.name.clone(), discovery, error)),
        }
    }
    failures
}

/// One pool's loop: resolve, apply a changed answer, wait, again; until stopped, the server
/// is gone, or the pool no longer asks the same question.
async fn watch(
    shared: Weak<Shared>,
    pool: String,
    asked: Discovery,
    first: Duration,
    stop: CancellationToken,
) {
    let mut delay = first;
    let mut failures: u32 = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
        // The live settings of the pool: intervals and timeout may have changed by a reload.
        let Some(discovery) = shared.upgrade().and_then(|s| {
            s.snapshot
                .load()
                .config()
                .pool(&pool)
                .and_then(|p| p.discovery.clone())
        }) else {
            return;
        };
        if !discovery.same_records(&asked) {
            return;
        }
        let result = tokio::select! {
            result = resolve(&discovery) => result,
            () = stop.cancelled() => return,
        };
        count(&pool, result.as_ref());
        match result {
            Ok(resolved) => {
                failures = 0;
                delay = interval(&discovery, &resolved);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                apply_discovered(&shared, &pool, &discovery, resolved.backends).await;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                delay = backoff(&discovery, failures);
                let kept = shared.upgrade().map_or(0, |s| {
                    s.snapshot
                        .load()
                        .config()
                        .pool(&pool)
                        .map_or(0, |p| p.backends.len())
                });
                warn!(
                    pool = %pool,
                    query = %discovery.query,
                    result = error.label(),
                    %error,
                    backends = kept,
                    retry_in = ?delay,
                    "DNS discovery failed: keeping the last good backends"
                );
            }
        }
    }
}

/// Commits the running configuration with `pool`'s backends replaced by `backends`, when they
/// differ and the pool still asks this question; as a reload, under the control lock.
async fn apply_discovered(
    shared: &Arc<Shared>,
    pool: &str,
    asked: &Discovery,
    backends: Vec<Backend>,
) {
    let mut control = shared.control.lock().await;
    if control.shutting_down() {
        return;
    }
    let old = shared.snapshot.load_full();
    let mut config = old.config().clone();
    let Some(target) = config.pools.iter_mut().find(|p| p.name == pool) else {
        return;
    };
    if !target
        .discovery
        .as_ref()
        .is_some_and(|d| d.same_records(asked))
        || target.backends == backends
    {
        return;
    }
    let added = backends
        .iter()
        .filter(|b| !target.backends.iter().any(|o| o.addr == b.addr))
        .count();
    let removed = target
        .backends
        .iter()
        .filter(|o| !backends.iter().any(|b| b.addr == o.addr))
        .count();
    target.backends = backends;
    let total = target.backends.len();
    let reason = crate::reload::Reason::Discovery;
    match crate::reload::commit(shared, &mut control, &old, config, &HashMap::new(), reason).await {
        Ok(done) => {
            let generation = done.generation;
            sluice_metrics::global::generation(generation);
            info!(
                pool,
                generation,
                added,
                removed,
                backends = total,
                "DNS discovery: backends changed"
            );
        }
        // Nothing is bound or loaded: it cannot fail today; if it did, the next round retries.
        Err(error) => warn!(pool, %error, "DNS discovery: change not applied"),
    }
}

fn count(pool: &str, result: Result<&Resolved, &ResolveError>) {
    match result {
        Ok(resolved) => {
            sluice_metrics::global::discovery_resolution(pool, "success");
            sluice_metrics::global::discovery_backends(pool, resolved.backends.len());
        }
        Err(error) => sluice_metrics::global::discovery_resolution(pool, error.label()),
    }
}

/// The records' TTL within the pool's bounds.
fn interval(discovery: &Discovery, resolved: &Resolved) -> Duration {
    resolved
        .ttl
        .clamp(discovery.min_interval, discovery.max_interval)
}

/// After `failures` failures in a row: `min_interval` doubled each time, up to `max_interval`.
fn backoff(discovery: &Discovery, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    discovery
        .min_interval
        .saturating_mul(factor)
        .min(discovery.max_interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery(min: u64, max: u64) -> Discovery {
        Discovery {
            query: sluice_config::DnsQuery::Srv { name: "x".into() },
            resolvers: Vec::new(),
            min_interval: Duration::from_secs(min),
            max_interval: Duration::from_secs(max),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn ttls_are_kept_within_the_bounds() {
        let d = discovery(2, 30);
        let after = |ttl| {
            interval(
                &d,
                &Resolved {
                    backends: Vec::new(),
                    ttl: Duration::from_secs(ttl),
                },
            )
        };
        assert_eq!(after(0), Duration::from_secs(2));
        assert_eq!(after(10), Duration::from_secs(10));
        assert_eq!(after(86_400), Duration::from_secs(30));
    }

    #[test]
    fn failures_back_off_up_to_the_max_interval() {
        let d = discovery(1, 30);
        let delays: Vec<u64> = (1..=7).map(|n| backoff(&d, n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(&d, u32::MAX), Duration::from_secs(30));
    }
}
