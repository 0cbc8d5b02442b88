//! Active health checks of sluice's backends: `tcp`, `http` and `websocket`.
//!
//! # Place in the pipeline
//!
//! Beside it, not in it: accept → handshake → **pick** (sluice-balance) → connect → relay. A
//! checker per backend of every pool with a `health_check` runs on its own schedule and writes
//! its verdicts onto the backend ([`Backend::record_check`], rise/fall counting in
//! sluice-balance), where pickers read them with one atomic load; no connection ever waits for
//! a check. Passive checks (failed connections ejecting a backend) and slow start live in
//! sluice-balance and the proxy; this crate only runs the active ones.
//!
//! # What a check does
//!
//! See [`check`](crate::check_once): `tcp` connects; `http` sends `GET path` and wants a status in
//! `expect_status`; `websocket` performs a real opening handshake with a random key and checks
//! the `101` *and* its `Sec-WebSocket-Accept` (RFC 6455 §4.1), then optionally a ping/pong round
//! trip, then closes cleanly. Every check is bounded by the pool's `timeout`.
//!
//! # Schedule
//!
//! A backend's first check comes at a random point of its first interval, then every
//! `interval ± spread` (uniform; `jitter` sets the spread). The random source is seeded per
//! process and per backend, so the checks of many sluice instances, and of the backends of one
//! pool, spread out instead of arriving in step.
//!
//! # Logs
//!
//! One line per transition, never one per check: `warn!` "backend down: health check failed"
//! with the reason and the last error, `info!` "backend up: health check passed". Each failed
//! check is logged at `debug!`.
//!
//! # Reloads
//!
//! [`HealthChecks::update`] brings the running checkers in line with a new snapshot's pools: a
//! backend that keeps its `Arc` (same pool, address and weight) and whose pool's check did not
//! change keeps its checker, untouched; others are started or stopped. The check state (up or
//! down, the current runs of passes and failures) lives on the `Backend`, so even a restarted
//! checker carries on where the previous one was. What this crate does not do: decide which
//! backends exist (the proxy's snapshot does), count live tunnels, or export metrics.

#![forbid(unsafe_code)]

mod check;
mod frame;
mod rng;

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_balance::{Backend, Pool, Transition};
use sluice_config::{HealthCheck, ProxyVersion};
use sluice_tls::Upstream;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, warn};

pub use check::{CheckError, CheckNonce, USER_AGENT, run as check_once, run_with_proxy};

use rng::Rng;

/// The running checkers, one per (pool, backend) of every pool with a `health_check`.
///
/// Dropping it stops them all. Must be used within a tokio runtime.
#[derive(Debug)]
pub struct HealthChecks {
    checkers: HashMap<(String, SocketAddr), Checker>,
    /// Keys this process's random sources (a new random key per process).
    seeds: RandomState,
}

#[derive(Debug)]
struct Checker {
    backend: Arc<Backend>,
    check: HealthCheck,
    /// The pool's PROXY header version: checks open with a `LOCAL` one.
    proxy: Option<ProxyVersion>,
    /// The pool's TLS of the generation that started the checker.
    tls: Option<Arc<Upstream>>,
    task: JoinHandle<()>,
}

/// What [`HealthChecks::update`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Updated {
    /// Checkers started (new backends, new or changed checks).
    pub started: usize,
    /// Checkers stopped (backends removed, checks removed or changed).
    pub stopped: usize,
    /// Checkers left running as they were.
    pub kept: usize,
}

impl Default for HealthChecks {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthChecks {
    /// No checker yet.
    pub fn new() -> Self {
        Self {
            checkers: HashMap::new(),
            seeds: RandomState::new(),
        }
    }

    /// Brings the checkers in line with `pools` (a snapshot's): starts one for every backend of
    /// a pool with a check that has none, stops those whose backend or pool is gone or whose
    /// check changed, and keeps the rest running untouched. A backend whose pool no longer has
    /// a check is up again as far as active checks are concerned.
    ///
    /// `tls(i)`: the TLS to the backends of `pools[i]` (`None`: plain TCP). A checker of a TLS
    /// pool is restarted when the pool's TLS is another generation's (a reload may have changed
    /// the CA), so checks always verify as new connections do.
    pub fn update(
        &mut self,
        pools: &[Arc<Pool>],
        tls: impl Fn(usize) -> Option<Arc<Upstream>>,
    ) -> Updated {
        let mut wanted: HashMap<(String, SocketAddr), Wanted<'_>> = HashMap::new();
        for (index, pool) in pools.iter().enumerate() {
            let Some(check) = pool.health_check() else {
                continue;
            };
            let tls = tls(index);
            for backend in pool.backends() {
                wanted.insert(
                    (pool.name().to_owned(), backend.addr()),
                    (backend, check, pool.send_proxy_protocol(), tls.clone()),
                );
            }
        }
        let mut updated = Updated::default();
        self.checkers.retain(|key, checker| {
            let keep = wanted.get(key).is_some_and(|(backend, check, proxy, tls)| {
                Arc::ptr_eq(backend, &checker.backend)
                    && **check == checker.check
                    && *proxy == checker.proxy
                    && match (tls, &checker.tls) {
                        (None, None) => true,
                        (Some(new), Some(old)) => Arc::ptr_eq(new, old),
                        _ => false,
                    }
            });
            if !keep {
                checker.task.abort();
                updated.stopped += 1;
                if !wanted.contains_key(key) {
                    checker.backend.forget_checks();
                }
            }
            keep
        });
        for (key, (backend, check, proxy, tls)) in wanted {
            if self.checkers.contains_key(&key) {
                updated.kept += 1;
                continue;
            }
            let rng = Rng::new(self.seeds.hash_one(&key));
            let task = tokio::spawn(run(
                key.0.clone().into(),
                Arc::clone(backend),
                check.clone(),
                proxy,
                tls.clone(),
                rng,
            ));
            self.checkers.insert(
                key,
                Checker {
                    backend: Arc::clone(backend),
                    check: check.clone(),
                    proxy,
                    tls,
                    task,
                },
            );
            updated.started += 1;
        }
        updated
    }

    /// Stops every checker (shutdown); returns how many ran.
    pub fn stop(&mut self) -> usize {
        let n = self.checkers.len();
        for (_, checker) in self.checkers.drain() {
            checker.task.abort();
        }
        n
    }

    /// Checkers running.
    pub fn len(&self) -> usize {
        self.checkers.len()
    }

    /// Whether no checker runs.
    pub fn is_empty(&self) -> bool {
        self.checkers.is_empty()
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a pool wants checked for one backend: the backend, its check, the pool's TLS.
type Wanted<'a> = (
    &'a Arc<Backend>,
    &'a HealthCheck,
    Option<ProxyVersion>,
    Option<Arc<Upstream>>,
);

/// One backend's checker, until aborted.
async fn run(
    pool: Arc<str>,
    backend: Arc<Backend>,
    check: HealthCheck,
    proxy: Option<ProxyVersion>,
    tls: Option<Arc<Upstream>>,
    mut rng: Rng,
) {
    let addr = backend.addr();
    let kind = check.kind.as_str();
    debug!(pool = %pool, backend = %addr, kind, interval = ?check.interval, "health checks started");
    // The first check at a random point of the first interval.
    sleep(check.interval.mul_f64(rng.unit())).await;
    loop {
        let started = Instant::now();
        let nonce = CheckNonce {
            key: rng.bytes(),
            ping: rng.bytes(),
            masks: [rng.bytes(), rng.bytes()],
        };
        let result = check::run_with_proxy(&check, addr, tls.as_deref(), nonce, proxy).await;
        if let Err(error) = &result {
            debug!(pool = %pool, backend = %addr, kind, reason = error.failure().label(), %error, "health check failed");
        }
        let verdict = result.as_ref().map(|_| ()).map_err(CheckError::failure);
        match backend.record_check(verdict, check.rise, check.fall) {
            Some(Transition::Down { reason, failures }) => {
                let error = result.err().map(|e| e.to_string()).unwrap_or_default();
                warn!(
                    pool = %pool,
                    backend = %addr,
                    kind,
                    reason = reason.label(),
                    failures,
                    %error,
                    "backend down: health check failed"
                );
            }
            Some(Transition::Up { passes }) => {
                info!(
                    pool = %pool,
                    backend = %addr,
                    kind,
                    passes,
                    state = backend.health().label(),
                    "backend up: health check passed"
                );
            }
            Some(Transition::Ejected { .. }) | None => {}
        }
        sleep_until(started + next_interval(&check, &mut rng)).await;
    }
}

/// `interval ± spread`, uniform; never under a millisecond.
fn next_interval(check: &HealthCheck, rng: &mut Rng) -> Duration {
    let spread = check.jitter.spread(check.interval).as_secs_f64();
    let offset = spread * (2.0 * rng.unit() - 1.0);
    Duration::from_secs_f64((check.interval.as_secs_f64() + offset).max(0.001))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_balance::CheckFailure;
    use sluice_config::{CheckKind, Jitter};
    use sluice_testkit::{EchoBackend, StaticResponder, refused_addr, wait_until};

    use super::*;

    /// A check every `interval_ms`, with a timeout a loaded machine never reaches when the
    /// backend answers (the last failure's reason is the one a down backend shows).
    fn check(kind: CheckKind, interval_ms: u64) -> HealthCheck {
        HealthCheck {
            kind,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_secs(5),
            rise: 2,
            fall: 2,
            jitter: Jitter::Fraction(0.1),
        }
    }

    fn pool(name: &str, addrs: &[SocketAddr], check: Option<HealthCheck>) -> Arc<Pool> {
        pool_with(name, addrs, check, |_| None)
    }

    fn pool_with(
        name: &str,
        addrs: &[SocketAddr],
        check: Option<HealthCheck>,
        known: impl Fn(SocketAddr) -> Option<Arc<Backend>>,
    ) -> Arc<Pool> {
        let config = sluice_config::Pool {
            connect_attempts: 2,
            drain_spread: Duration::ZERO,
            health_check: check,
            idle_connections: 0,
            ..sluice_config::Pool::with_backends(
                name,
                addrs
                    .iter()
                    .map(|&addr| sluice_config::Backend { addr, weight: 1 })
                    .collect(),
            )
        };
        Arc::new(Pool::from_config(&config, known))
    }

    #[test]
    fn intervals_are_spread_by_the_jitter() {
        let c = check(CheckKind::Tcp, 1000);
        let mut rng = Rng::new(42);
        let draws: Vec<f64> = (0..10_000)
            .map(|_| next_interval(&c, &mut rng).as_secs_f64())
            .collect();
        let (min, max) = draws
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &d| (lo.min(d), hi.max(d)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!(min >= 0.9 && max <= 1.1, "{min} {max}");
        assert!(
            min < 0.905 && max > 1.095,
            "the whole spread is used: {min} {max}"
        );
        assert!((mean - 1.0).abs() < 0.005, "{mean}");
        // Two instances (two seeds) do not share a schedule.
        let mut other = Rng::new(43);
        let theirs: Vec<f64> = (0..10)
            .map(|_| next_interval(&c, &mut other).as_secs_f64())
            .collect();
        assert_ne!(&draws[..10], &theirs[..]);
    }

    #[tokio::test]
    async fn checkers_follow_the_snapshot_and_keep_what_did_not_change() {
        let a = EchoBackend::spawn().await;
        let b = EchoBackend::spawn().await;
        let ws = check(
            CheckKind::WebSocket {
                path: "/".into(),
                host: None,
                ping: true,
            },
            50,
        );
        let mut checks = HealthChecks::new();
        let first = vec![
            pool("chat", &[a.addr(), b.addr()], Some(ws.clone())),
            pool("plain", &[a.addr()], None),
        ];
        assert_eq!(
            checks.update(&first, |_| None),
            Updated {
                started: 2,
                stopped: 0,
                kept: 0
            }
        );
        // The same snapshot again (a reload that changed nothing): nothing restarts.
        let same = vec![pool_with(
            "chat",
            &[a.addr(), b.addr()],
            Some(ws.clone()),
            |addr| first[0].backend(addr).cloned(),
        )];
        assert_eq!(
            checks.update(&same, |_| None),
            Updated {
                started: 0,
                stopped: 0,
                kept: 2
            }
        );
        // A changed check restarts both; a removed backend's checker stops.
        let mut slower = ws.clone();
        slower.interval = Duration::from_millis(80);
        let changed = vec![pool_with("chat", &[a.addr()], Some(slower), |addr| {
            same[0].backend(addr).cloned()
        })];
        assert_eq!(
            checks.update(&changed, |_| None),
            Updated {
                started: 1,
                stopped: 2,
                kept: 0
            }
        );
        assert_eq!(checks.len(), 1);
        assert!(
            wait_until(Duration::from_secs(5), || {
                changed[0].backends()[0].health_counters().checks_passed >= 3
            })
            .await
        );
        assert_eq!(checks.stop(), 1);
        assert!(checks.is_empty());
    }

    #[tokio::test]
    async fn a_failing_backend_goes_down_after_fall_checks_and_a_removed_check_brings_it_back() {
        let bad = StaticResponder::status(500).await;
        let ws = check(
            CheckKind::WebSocket {
                path: "/".into(),
                host: None,
                ping: false,
            },
            30,
        );
        let mut checks = HealthChecks::new();
        let pools = vec![pool("chat", &[bad.addr(), refused_addr()], Some(ws))];
        checks.update(&pools, |_| None);
        let [status, refused] = [&pools[0].backends()[0], &pools[0].backends()[1]];
        assert!(
            wait_until(Duration::from_secs(5), || {
                !status.is_available() && !refused.is_available()
            })
            .await
        );
        assert_eq!(
            status.health(),
            sluice_balance::Health::Down {
                reason: CheckFailure::Status
            }
        );
        assert_eq!(
            refused.health(),
            sluice_balance::Health::Down {
                reason: CheckFailure::Refused
            }
        );
        assert!(
            pools[0].picker().next_backend().is_none(),
            "both down: no candidate"
        );
        // The pool stops checking: its backends are no longer held down by old verdicts.
        let unchecked = vec![pool_with("chat", &[bad.addr()], None, |addr| {
            pools[0].backend(addr).cloned()
        })];
        checks.update(&unchecked, |_| None);
        assert!(unchecked[0].backends()[0].is_available());
        assert!(checks.is_empty());
    }
}
