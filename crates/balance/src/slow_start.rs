//! Health and slow start through every algorithm, with figures (`docs/balancing.md` quotes
//! them): a backend in slow start at ramp `r` takes about `r` times its share of new
//! connections under round robin and random_two, holds at most about `r` times the others'
//! live tunnels under least_conn, and gets a bounded-load capacity scaled by `r` under hash.
//! Down and ejected backends are never picked, by any algorithm; with every backend out the
//! picker has nothing (the proxy answers 503 with `Retry-After`).

use std::time::{Duration, Instant};

use crate::affinity::tests::config;
use crate::{Affinity, BackendGuard, Balance, CheckFailure, OutlierPolicy, Pool, random};

const WINDOW: Duration = Duration::from_secs(10);

/// Three backends of weight 1 with a 10 s slow start; backend 1 starts its slow start at the
/// returned instant.
fn recovering(balance: Balance, factor: Option<f64>) -> (Pool, Instant) {
    let mut cfg = config(balance, &[1, 1, 1], factor);
    cfg.slow_start = Some(WINDOW);
    let pool = Pool::from_config(&cfg, |_| None);
    let t0 = Instant::now();
    pool.backends()[1].start_slow_start_at(t0);
    (pool, t0)
}

/// The instant `tenths` tenths of the window after `t0`, plus half a tenth (mid-slice).
fn mid_slice(t0: Instant, tenth: u32) -> Instant {
    t0 + WINDOW * (2 * tenth + 1) / 20
}

/// Share of backend 1 among `picks` first picks (guards dropped at once) at `at`.
fn share_of_recovering(pool: &Pool, at: Instant, picks: usize) -> f64 {
    let mut hits = 0usize;
    for _ in 0..picks {
        let guard = pool.picker_at(Affinity::NONE, at).next_backend();
        if guard.is_some_and(|g| g.addr() == pool.backends()[1].addr()) {
            hits += 1;
        }
    }
    hits as f64 / picks as f64
}

#[test]
fn round_robin_gives_a_recovering_backend_its_share_times_the_ramp() {
    random::seed(7);
    let (pool, t0) = recovering(Balance::RoundRobin, None);
    let mut shares = Vec::new();
    for tenth in 0..10 {
        let at = mid_slice(t0, tenth);
        let share = share_of_recovering(&pool, at, 30_000);
        let expected = pool.backends()[1].ramp(at) / 3.0;
        shares.push((share * 1000.0).round() / 10.0);
        assert!(
            (share - expected).abs() < 0.01,
            "tenth {tenth}: share {share:.3}, expected {expected:.3}"
        );
    }
    println!("round robin, recovering backend's share per tenth of the window (%): {shares:?}");
    // After the window: its full third.
    let after = share_of_recovering(&pool, t0 + WINDOW, 3_000);
    assert!((after - 1.0 / 3.0).abs() < 0.001, "{after}");
}

#[test]
fn random_two_draws_a_recovering_backend_by_its_ramped_weight() {
    random::seed(11);
    let (pool, t0) = recovering(Balance::RandomTwo, None);
    let mut shares = Vec::new();
    for tenth in 0..10 {
        let at = mid_slice(t0, tenth);
        let share = share_of_recovering(&pool, at, 30_000);
        // Equal loads: the first backend drawn wins, drawn by ramped weight.
        let r = pool.backends()[1].ramp(at);
        let expected = r / (r + 2.0);
        shares.push((share * 1000.0).round() / 10.0);
        assert!(
            (share - expected).abs() < 0.015,
            "tenth {tenth}: share {share:.3}, expected {expected:.3}"
        );
    }
    println!("random_two, recovering backend's share per tenth of the window (%): {shares:?}");
}

/// The reconnect storm: two backends hold 500 tunnels each when the third comes back; 600 new
/// connections arrive at once, then 100 per second through the window.
#[test]
fn least_conn_fills_a_recovering_backend_along_its_ramp_not_at_once() {
    // Without slow start, the storm goes to the empty backend until it is level.
    let mut cfg = config(Balance::LeastConn, &[1, 1, 1], None);
    let flat = Pool::from_config(&cfg, |_| None);
    let mut held: Vec<BackendGuard> = Vec::new();
    for i in [0, 2] {
        held.extend((0..500).map(|_| flat.backends()[i].acquire()));
    }
    let t0 = Instant::now();
    held.extend((0..600).filter_map(|_| flat.picker_at(Affinity::NONE, t0).next_backend()));
    let without = flat.backends()[1].active();
    held.clear();

    cfg.slow_start = Some(WINDOW);
    let pool = Pool::from_config(&cfg, |_| None);
    pool.backends()[1].start_slow_start_at(t0);
    for i in [0, 2] {
        held.extend((0..500).map(|_| pool.backends()[i].acquire()));
    }
    held.extend((0..600).filter_map(|_| pool.picker_at(Affinity::NONE, t0).next_backend()));
    let with = pool.backends()[1].active();
    println!(
        "storm of 600 at the start: {without} to the recovering backend without slow start, {with} with"
    );
    assert!(without >= 530, "{without}");
    assert!((70..=80).contains(&with), "{with}");

    // Then 100 per second: the recovering backend holds its ramp times the others' count.
    let mut trajectory = Vec::new();
    for second in 1..=10u32 {
        for k in 0..100u32 {
            let at = t0 + Duration::from_millis(u64::from(second - 1) * 1000 + u64::from(k) * 10);
            held.extend(pool.picker_at(Affinity::NONE, at).next_backend());
        }
        let at = t0 + Duration::from_secs(u64::from(second));
        let loads: Vec<usize> = pool.backends().iter().map(|b| b.active()).collect();
        let r = pool.backends()[1].ramp(at - Duration::from_millis(10));
        let ceiling = (r * loads[0].max(loads[2]) as f64).ceil() as usize + 1;
        assert!(
            loads[1] <= ceiling,
            "second {second}: loads {loads:?}, ramp {r:.2}"
        );
        trajectory.push(loads[1]);
    }
    println!("least_conn, recovering backend's tunnels at each second: {trajectory:?}");
    // At the end of the window it is at full weight: new connections level it out.
    let end = t0 + WINDOW;
    held.extend((0..600).filter_map(|_| pool.picker_at(Affinity::NONE, end).next_backend()));
    let loads: Vec<usize> = pool.backends().iter().map(|b| b.active()).collect();
    println!("after the window and 600 more: {loads:?}");
    assert!(loads[1] + 1 >= loads[0].min(loads[2]), "{loads:?}");
}

#[test]
fn hash_bounds_a_recovering_backend_by_its_ramped_capacity() {
    let (pool, t0) = recovering(Balance::Hash, Some(1.5));
    let at = t0 + Duration::from_secs(1);
    let r = pool.backends()[1].ramp(at);
    let mut held = Vec::new();
    for i in 0..3_000 {
        let key = format!("session-{i}");
        held.extend(
            pool.picker_at(Affinity::key(key.as_bytes()), at)
                .next_backend(),
        );
    }
    let loads: Vec<usize> = pool.backends().iter().map(|b| b.active()).collect();
    let total: usize = loads.iter().sum();
    // Capacity: 1.5 × (L + 1) × r / (2 + r).
    let cap = (1.5 * total as f64 * r / (2.0 + r)).ceil() as usize + 1;
    println!("hash at ramp {r:.2}: loads {loads:?}, recovering backend's cap {cap}");
    assert!(loads[1] <= cap, "{loads:?} cap {cap}");
    assert!(loads[1] > 0, "it still takes its keys up to its cap");
    // Without the bound, stickiness wins: slow start does not move keys.
    let (unbounded, t0) = recovering(Balance::Hash, None);
    let key = (0..1000).map(|i| format!("session-{i}")).find(|k| {
        unbounded
            .picker_at(Affinity::key(k.as_bytes()), t0)
            .next_backend()
            .is_some_and(|g| g.addr() == unbounded.backends()[1].addr())
    });
    assert!(
        key.is_some(),
        "some key's first choice is the recovering backend"
    );
}

#[test]
fn down_and_ejected_backends_are_never_picked_and_none_left_is_none() {
    for balance in [
        Balance::RoundRobin,
        Balance::LeastConn,
        Balance::RandomTwo,
        Balance::Hash,
    ] {
        let pool = Pool::from_config(&config(balance, &[1, 1, 1], Some(1.5)), |_| None)
            .with_health(
                None,
                Some(OutlierPolicy {
                    consecutive_failures: 1,
                    cool_down: Duration::from_secs(30),
                }),
                None,
            );
        let t0 = Instant::now();
        pool.backends()[0].record_check_at(Err(CheckFailure::Refused), 1, 1, t0);
        pool.backends()[2].record_connect_failure_at(t0);
        for i in 0..300 {
            let key = format!("k{i}");
            let affinity = if balance == Balance::Hash {
                Affinity::key(key.as_bytes())
            } else {
                Affinity::NONE
            };
            let mut picker = pool.picker_at(affinity, t0);
            let first = picker.next_backend().map(|g| g.addr());
            assert_eq!(first, Some(pool.backends()[1].addr()), "{balance:?}");
            assert!(
                picker.next_backend().is_none(),
                "{balance:?}: one candidate only"
            );
        }
        pool.backends()[1].record_check_at(Err(CheckFailure::Timeout), 1, 1, t0);
        assert!(
            pool.picker_at(Affinity::NONE, t0).next_backend().is_none(),
            "{balance:?}: every backend out, no candidate"
        );
        // The ejection ends by itself.
        let later = t0 + Duration::from_secs(31);
        assert_eq!(
            pool.picker_at(Affinity::NONE, later)
                .next_backend()
                .map(|g| g.addr()),
            Some(pool.backends()[2].addr()),
            "{balance:?}"
        );
    }
}

#[test]
fn a_reload_keeps_health_and_a_new_weight_inherits_it() {
    let mut cfg = config(Balance::LeastConn, &[1, 1], None);
    cfg.slow_start = Some(WINDOW);
    let old = Pool::from_config(&cfg, |_| None);
    let t0 = Instant::now();
    old.backends()[0].record_check_at(Err(CheckFailure::Status), 1, 1, t0);
    // Same weight: the same Arc, still down.
    let same = Pool::from_config(&cfg, |addr| old.backend(addr).cloned());
    assert!(std::sync::Arc::ptr_eq(
        &old.backends()[0],
        &same.backends()[0]
    ));
    assert_eq!(same.backends()[0].health_at(t0).label(), "down");
    // New weight: a new backend, still down, with the counters.
    cfg.backends[0].weight = 3;
    let reweighted = Pool::from_config(&cfg, |addr| old.backend(addr).cloned());
    assert!(!std::sync::Arc::ptr_eq(
        &old.backends()[0],
        &reweighted.backends()[0]
    ));
    assert_eq!(reweighted.backends()[0].health_at(t0).label(), "down");
    assert_eq!(reweighted.backends()[0].health_counters().went_down, 1);
    assert_eq!(reweighted.slow_start(), Some(WINDOW));
}
