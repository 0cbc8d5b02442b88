//! A backend's health: what active checks decided, what passive checks (outlier detection)
//! decided, and how a backend that comes back is eased in (slow start). All of it is atomics on
//! the [`Backend`]: pickers read it without a lock, the checker and the proxy write it.
//!
//! # States
//!
//! ```text
//!            fall failed checks in a row                 consecutive_failures failed
//!   Up ───────────────────────────────► Down       Up ─────────────────────────────► Ejected
//!    ▲                                    │         ▲          connections                 │
//!    │ slow_start passed   rise passed    │         │ slow_start passed      cool_down over │
//!    └──────────────── SlowStart ◄────────┘         └──────────── SlowStart ◄──────────────┘
//! ```
//!
//! - **Down** comes from active checks only ([`Backend::record_check`]), with rise/fall
//!   counting: `fall` failed checks in a row take an up backend down, `rise` passed checks in a
//!   row bring it back. The counts live here, not in the checker, so a reload that restarts the
//!   checkers keeps them.
//! - **Ejected** comes from passive checks only ([`Backend::record_connect_failure`]):
//!   `consecutive_failures` failed connections in a row (a refused or timed-out connect, a
//!   response head that did not come in time), with no answered one between
//!   ([`Backend::record_connect_success`]), eject the backend until a cool-down instant. The
//!   ejection ends by itself when the instant passes: there is nothing to reset.
//! - **SlowStart** follows both ways back (and a backend added by a reload, when the proxy says
//!   so with [`Backend::start_slow_start`]): for the pool's `slow_start` window its weight is
//!   multiplied by a ramp ([`Backend::ramp`]) that grows linearly from [`SLOW_START_FLOOR`] to
//!   1, and every algorithm uses the ramped weight (see the crate documentation and
//!   `docs/balancing.md`).
//!
//! A backend is available for new connections ([`Backend::is_available`]) when it is not
//! draining, not down and not ejected.
//!
//! # Time
//!
//! Instants are stored as milliseconds since a process-wide epoch (the first use of this
//! module), plus one, so that 0 means "never". Millisecond resolution is ample for cool-downs
//! and ramps of seconds.

use std::sync::OnceLock;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::Backend;

/// The ramp a backend starts its slow start at: a tenth of its weight (Envoy's default
/// `min_weight_percent`), so that it takes a few connections at once and is seen to work.
pub const SLOW_START_FLOOR: f64 = 0.1;

/// Ramps are computed in fixed point: [`RAMP_ONE`] is a ramp of 1.
pub(crate) const RAMP_ONE: u64 = 1024;
/// [`SLOW_START_FLOOR`] in fixed point.
const RAMP_FLOOR: u64 = RAMP_ONE / 10;

/// What a backend's health is, for new connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Health {
    /// Takes its full share of new connections.
    Up,
    /// Back from down or ejection: takes a share that ramps up over the pool's `slow_start`.
    SlowStart {
        /// When the ramp started.
        since: Instant,
        /// Its weight multiplier now, from [`SLOW_START_FLOOR`] to 1.
        ramp: f64,
    },
    /// Failed its active checks (`fall` in a row): takes no new connection until it passes
    /// `rise` in a row.
    Down {
        /// Why the last check failed.
        reason: CheckFailure,
    },
    /// Ejected by passive checks: takes no new connection until `until`.
    Ejected {
        /// When the cool-down ends.
        until: Instant,
    },
}

impl Health {
    /// A fixed label for logs, metrics and `/status.json`: `up`, `slow_start`, `down`,
    /// `ejected`.
    pub fn label(&self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::SlowStart { .. } => "slow_start",
            Health::Down { .. } => "down",
            Health::Ejected { .. } => "ejected",
        }
    }

    /// Whether new connections may go to the backend (draining aside).
    pub fn takes_connections(&self) -> bool {
        matches!(self, Health::Up | Health::SlowStart { .. })
    }
}

/// Why an active check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CheckFailure {
    /// The TCP connect was refused (or the host unreachable).
    Refused = 1,
    /// The TCP connect did not complete in time.
    ConnectTimeout = 2,
    /// The check did not complete in time (after the connect).
    Timeout = 3,
    /// The backend closed the connection before the check completed.
    Closed = 4,
    /// Reading or writing failed (reset, …).
    Io = 5,
    /// An HTTP status outside the expected range, or not `101` for a WebSocket check.
    Status = 6,
    /// A response that is not valid HTTP, or a `101` that is not a valid WebSocket upgrade
    /// (missing `Upgrade` or `Connection` fields).
    BadResponse = 7,
    /// A `101` whose `Sec-WebSocket-Accept` does not match the key sent.
    BadAccept = 8,
    /// The ping was not answered by its pong (a close, or invalid frames, instead).
    NoPong = 9,
    /// The TLS handshake failed (`tls` pools): certificate not trusted, wrong name, expired,
    /// or the backend does not speak TLS.
    Tls = 10,
}

impl CheckFailure {
    const ALL: [CheckFailure; 10] = [
        CheckFailure::Refused,
        CheckFailure::ConnectTimeout,
        CheckFailure::Timeout,
        CheckFailure::Closed,
        CheckFailure::Io,
        CheckFailure::Status,
        CheckFailure::BadResponse,
        CheckFailure::BadAccept,
        CheckFailure::NoPong,
        CheckFailure::Tls,
    ];

    /// A fixed label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            CheckFailure::Refused => "refused",
            CheckFailure::ConnectTimeout => "connect_timeout",
            CheckFailure::Timeout => "timeout",
            CheckFailure::Closed => "closed",
            CheckFailure::Io => "io",
            CheckFailure::Status => "status",
            CheckFailure::BadResponse => "bad_response",
            CheckFailure::BadAccept => "bad_accept",
            CheckFailure::NoPong => "no_pong",
            CheckFailure::Tls => "tls",
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.code() == code)
    }
}

impl std::fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// A change of a backend's health, returned by the call that caused it so the caller logs it
/// once (one line per transition, never one per check).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// Active checks took it down.
    Down {
        /// Why the last check failed.
        reason: CheckFailure,
        /// Failed checks in a row (the pool's `fall`).
        failures: u32,
    },
    /// Active checks brought it back up (into slow start when the pool has one).
    Up {
        /// Passed checks in a row (the pool's `rise`).
        passes: u32,
    },
    /// Passive checks ejected it.
    Ejected {
        /// Failed connections in a row.
        failures: u32,
        /// When the cool-down ends.
        until: Instant,
    },
}

/// A backend's health counters since it was created (they survive reloads that keep it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthCounters {
    /// Active checks that passed.
    pub checks_passed: u64,
    /// Active checks that failed.
    pub checks_failed: u64,
    /// Times active checks took it down.
    pub went_down: u64,
    /// Times passive checks ejected it.
    pub ejections: u64,
    /// Failed connections reported by the proxy (refused or timed-out connects, response
    /// timeouts), whether or not they ejected it.
    pub connect_failures: u64,
    /// The current run of passed checks (0 after a failure).
    pub consecutive_passes: u32,
    /// The current run of failed checks (0 after a pass).
    pub consecutive_check_failures: u32,
    /// The current run of failed connections (0 after an answered one).
    pub consecutive_connect_failures: u32,
}

/// What passive checks do, per pool (copied onto its backends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Failed connections in a row that eject the backend (>= 1).
    pub consecutive_failures: u32,
    /// How long an ejected backend takes no new connection.
    pub cool_down: Duration,
}

impl From<sluice_config::Outlier> for OutlierPolicy {
    fn from(o: sluice_config::Outlier) -> Self {
        Self {
            consecutive_failures: o.consecutive_failures,
            cool_down: o.cool_down,
        }
    }
}

impl Backend {
    /// Its health now. Draining is separate ([`Backend::is_draining`]).
    pub fn health(&self) -> Health {
        self.health_at(Instant::now())
    }

    /// Its health at `now` (simulations and tests).
    pub fn health_at(&self, now: Instant) -> Health {
        let now = millis(now);
        if let Some(reason) = CheckFailure::from_code(self.state.down.load(Relaxed)) {
            return Health::Down { reason };
        }
        let until = self.state.ejected_until.load(Relaxed);
        if until > now {
            return Health::Ejected {
                until: instant(until),
            };
        }
        let ramp = self.ramp_q(now);
        if ramp < RAMP_ONE {
            return Health::SlowStart {
                since: instant(self.state.recovered_at.load(Relaxed)),
                ramp: ramp as f64 / RAMP_ONE as f64,
            };
        }
        Health::Up
    }

    /// Whether new connections may be sent to it: not draining, not down, not ejected.
    pub fn is_available(&self) -> bool {
        self.is_available_ms(millis(Instant::now()))
    }

    /// [`Backend::is_available`] at `now` (simulations and tests).
    pub fn is_available_at(&self, now: Instant) -> bool {
        self.is_available_ms(millis(now))
    }

    pub(crate) fn is_available_ms(&self, now: u64) -> bool {
        !self.is_draining()
            && self.state.down.load(Relaxed) == 0
            && self.state.ejected_until.load(Relaxed) <= now
    }

    /// Its weight multiplier for new connections at `now`: 1 unless it is in slow start, then
    /// from [`SLOW_START_FLOOR`] at the start of the window, linearly, to 1 at its end.
    pub fn ramp(&self, now: Instant) -> f64 {
        self.ramp_q(millis(now)) as f64 / RAMP_ONE as f64
    }

    /// The ramp in fixed point ([`RAMP_ONE`] = 1).
    pub(crate) fn ramp_q(&self, now: u64) -> u64 {
        let window = self.state.slow_start_ms.load(Relaxed);
        if window == 0 {
            return RAMP_ONE;
        }
        let since = self.state.recovered_at.load(Relaxed);
        if since == 0 {
            return RAMP_ONE;
        }
        let elapsed = now.saturating_sub(since);
        if elapsed >= window {
            return RAMP_ONE;
        }
        RAMP_FLOOR + (RAMP_ONE - RAMP_FLOOR) * elapsed / window
    }

    /// Its weight times its ramp, in fixed point: what the algorithms compare.
    pub(crate) fn effective_weight(&self, now: u64) -> u64 {
        u64::from(self.weight) * self.ramp_q(now)
    }

    /// Records the result of one active check, with the pool's `rise` and `fall`, and returns
    /// the transition it caused, if any. While down, a failure only updates the reason.
    pub fn record_check(
        &self,
        result: Result<(), CheckFailure>,
        rise: u32,
        fall: u32,
    ) -> Option<Transition> {
        self.record_check_at(result, rise, fall, Instant::now())
    }

    /// [`Backend::record_check`] at `now` (simulations and tests).
    pub fn record_check_at(
        &self,
        result: Result<(), CheckFailure>,
        rise: u32,
        fall: u32,
        now: Instant,
    ) -> Option<Transition> {
        let s = &self.state;
        match result {
            Ok(()) => {
                s.checks_passed.fetch_add(1, Relaxed);
                s.check_failures.store(0, Relaxed);
                let passes = s.check_passes.fetch_add(1, Relaxed).saturating_add(1);
                if s.down.load(Relaxed) != 0 && passes >= rise.max(1) {
                    s.down.store(0, Relaxed);
                    s.recovered_at.store(millis(now), Relaxed);
                    return Some(Transition::Up { passes });
                }
                None
            }
            Err(reason) => {
                s.checks_failed.fetch_add(1, Relaxed);
                s.check_passes.store(0, Relaxed);
                let failures = s.check_failures.fetch_add(1, Relaxed).saturating_add(1);
                if s.down.load(Relaxed) != 0 {
                    s.down.store(reason.code(), Relaxed);
                    return None;
                }
                if failures >= fall.max(1) {
                    s.down.store(reason.code(), Relaxed);
                    s.went_down.fetch_add(1, Relaxed);
                    return Some(Transition::Down { reason, failures });
                }
                None
            }
        }
    }

    /// Records a failed connection to it (a refused or timed-out connect, a response head that
    /// did not come in time). With passive checks on (the pool's `outlier`), the
    /// `consecutive_failures`-th in a row ejects it for the cool-down, and the ejection is
    /// returned. Failures while it is ejected (connections picked just before) do not count.
    pub fn record_connect_failure(&self) -> Option<Transition> {
        self.record_connect_failure_at(Instant::now())
    }

    /// [`Backend::record_connect_failure`] at `now` (simulations and tests).
    pub fn record_connect_failure_at(&self, now: Instant) -> Option<Transition> {
        let s = &self.state;
        s.connect_failures.fetch_add(1, Relaxed);
        let threshold = s.outlier_failures.load(Relaxed);
        if threshold == 0 {
            return None;
        }
        let now_ms = millis(now);
        if s.ejected_until.load(Relaxed) > now_ms {
            return None;
        }
        let failures = s.consecutive_connect_failures.fetch_add(1, Relaxed) + 1;
        // Exactly one of concurrent failures crosses the threshold.
        if failures != threshold {
            return None;
        }
        s.consecutive_connect_failures.store(0, Relaxed);
        let cool_down = s.outlier_cool_down_ms.load(Relaxed).max(1);
        let until = now_ms.saturating_add(cool_down);
        s.ejected_until.store(until, Relaxed);
        // The way back is a slow start from the end of the cool-down.
        s.recovered_at.store(until, Relaxed);
        s.ejections.fetch_add(1, Relaxed);
        Some(Transition::Ejected {
            failures,
            until: instant(until),
        })
    }

    /// Records an answered connection (the backend sent a response head): the run of failed
    /// connections is over.
    pub fn record_connect_success(&self) {
        let run = &self.state.consecutive_connect_failures;
        // Read first: the common case writes nothing.
        if run.load(Relaxed) != 0 {
            run.store(0, Relaxed);
        }
    }

    /// Active checks stopped for it (its pool no longer has a `health_check`): it is no longer
    /// held down by their last verdict, and their runs start again from zero.
    pub fn forget_checks(&self) {
        let s = &self.state;
        s.down.store(0, Relaxed);
        s.check_passes.store(0, Relaxed);
        s.check_failures.store(0, Relaxed);
    }

    /// Starts a slow start now (a backend added by a reload), when its pool has one.
    pub fn start_slow_start(&self) {
        self.start_slow_start_at(Instant::now());
    }

    /// [`Backend::start_slow_start`] at `now` (simulations and tests).
    pub fn start_slow_start_at(&self, now: Instant) {
        self.state.recovered_at.store(millis(now), Relaxed);
    }

    /// Its health counters.
    pub fn health_counters(&self) -> HealthCounters {
        let s = &self.state;
        HealthCounters {
            checks_passed: s.checks_passed.load(Relaxed),
            checks_failed: s.checks_failed.load(Relaxed),
            went_down: s.went_down.load(Relaxed),
            ejections: s.ejections.load(Relaxed),
            connect_failures: s.connect_failures.load(Relaxed),
            consecutive_passes: s.check_passes.load(Relaxed),
            consecutive_check_failures: s.check_failures.load(Relaxed),
            consecutive_connect_failures: s.consecutive_connect_failures.load(Relaxed),
        }
    }

    /// The pool's slow-start window and passive-check policy, copied onto the backend (set by
    /// the pool that lists it, again at every reload that keeps it).
    pub(crate) fn set_policies(
        &self,
        slow_start: Option<Duration>,
        outlier: Option<OutlierPolicy>,
    ) {
        let s = &self.state;
        s.slow_start_ms
            .store(slow_start.map_or(0, duration_ms), Relaxed);
        s.outlier_failures
            .store(outlier.map_or(0, |o| o.consecutive_failures), Relaxed);
        s.outlier_cool_down_ms
            .store(outlier.map_or(0, |o| duration_ms(o.cool_down)), Relaxed);
    }

    /// Takes over the health of the backend this one replaces (same address, new weight).
    pub(crate) fn inherit_health(&self, old: &Backend) {
        let (s, o) = (&self.state, &old.state);
        s.down.store(o.down.load(Relaxed), Relaxed);
        for (new, old) in [
            (&s.check_passes, &o.check_passes),
            (&s.check_failures, &o.check_failures),
            (
                &s.consecutive_connect_failures,
                &o.consecutive_connect_failures,
            ),
        ] {
            new.store(old.load(Relaxed), Relaxed);
        }
        for (new, old) in [
            (&s.ejected_until, &o.ejected_until),
            (&s.recovered_at, &o.recovered_at),
            (&s.checks_passed, &o.checks_passed),
            (&s.checks_failed, &o.checks_failed),
            (&s.went_down, &o.went_down),
            (&s.ejections, &o.ejections),
            (&s.connect_failures, &o.connect_failures),
        ] {
            new.store(old.load(Relaxed), Relaxed);
        }
    }
}

/// The health atomics of one backend.
#[derive(Debug, Default)]
pub(crate) struct HealthState {
    /// 0: up as far as active checks know; otherwise the [`CheckFailure`] code of the last
    /// failed check of a down backend.
    down: std::sync::atomic::AtomicU8,
    check_passes: std::sync::atomic::AtomicU32,
    check_failures: std::sync::atomic::AtomicU32,
    consecutive_connect_failures: std::sync::atomic::AtomicU32,
    /// Ejected while `now < ejected_until` (ms timestamp; 0: never ejected).
    ejected_until: std::sync::atomic::AtomicU64,
    /// Start of the current or last slow start (ms timestamp; 0: none).
    recovered_at: std::sync::atomic::AtomicU64,
    /// The pool's slow-start window in ms (0: off).
    slow_start_ms: std::sync::atomic::AtomicU64,
    /// The pool's `consecutive_failures` (0: passive checks off).
    outlier_failures: std::sync::atomic::AtomicU32,
    outlier_cool_down_ms: std::sync::atomic::AtomicU64,
    checks_passed: std::sync::atomic::AtomicU64,
    checks_failed: std::sync::atomic::AtomicU64,
    went_down: std::sync::atomic::AtomicU64,
    ejections: std::sync::atomic::AtomicU64,
    connect_failures: std::sync::atomic::AtomicU64,
}

/// The process-wide origin of stored instants.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `at` as a stored timestamp: milliseconds since the epoch, plus one (0 means "never").
pub(crate) fn millis(at: Instant) -> u64 {
    let since = at.saturating_duration_since(epoch());
    u64::try_from(since.as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

/// A stored timestamp as an instant.
fn instant(ms: u64) -> Instant {
    epoch() + Duration::from_millis(ms.saturating_sub(1))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;

    fn backend() -> Arc<Backend> {
        Arc::new(Backend::new(SocketAddr::from(([127, 0, 0, 1], 9000)), 1))
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn fall_failed_checks_take_it_down_and_rise_passed_checks_bring_it_back() {
        let b = backend();
        let t0 = Instant::now();
        let (rise, fall) = (2, 3);
        assert_eq!(b.health_at(t0), Health::Up);
        assert_eq!(
            b.record_check_at(Err(CheckFailure::Refused), rise, fall, t0),
            None
        );
        assert_eq!(
            b.record_check_at(Err(CheckFailure::Refused), rise, fall, t0),
            None
        );
        assert!(b.is_available_at(t0), "two failures of three: still up");
        // A pass in between starts the count again.
        assert_eq!(b.record_check_at(Ok(()), rise, fall, t0), None);
        for _ in 0..2 {
            assert_eq!(
                b.record_check_at(Err(CheckFailure::Status), rise, fall, t0),
                None
            );
        }
        assert_eq!(
            b.record_check_at(Err(CheckFailure::Status), rise, fall, t0),
            Some(Transition::Down {
                reason: CheckFailure::Status,
                failures: 3
            })
        );
        assert!(!b.is_available_at(t0));
        // Further failures are no transition, but the reason follows the last check.
        assert_eq!(
            b.record_check_at(Err(CheckFailure::Timeout), rise, fall, t0),
            None
        );
        assert_eq!(
            b.health_at(t0),
            Health::Down {
                reason: CheckFailure::Timeout
            }
        );
        assert_eq!(b.record_check_at(Ok(()), rise, fall, t0), None);
        assert_eq!(
            b.record_check_at(Ok(()), rise, fall, t0),
            Some(Transition::Up { passes: 2 })
        );
        assert_eq!(b.health_at(t0), Health::Up, "no slow start configured");
        assert_eq!(
            b.health_counters(),
            HealthCounters {
                checks_passed: 3,
                checks_failed: 6,
                went_down: 1,
                ejections: 0,
                connect_failures: 0,
                consecutive_passes: 2,
                consecutive_check_failures: 0,
                consecutive_connect_failures: 0,
            }
        );
    }

    #[test]
    fn consecutive_connect_failures_eject_for_the_cool_down() {
        let b = backend();
        let policy = OutlierPolicy {
            consecutive_failures: 3,
            cool_down: Duration::from_secs(30),
        };
        b.set_policies(Some(Duration::from_secs(10)), Some(policy));
        let t0 = Instant::now();
        assert_eq!(b.record_connect_failure_at(t0), None);
        assert_eq!(b.record_connect_failure_at(t0), None);
        // An answered connection ends the run.
        b.record_connect_success();
        assert_eq!(b.record_connect_failure_at(t0), None);
        assert_eq!(b.record_connect_failure_at(t0), None);
        let ejected = b.record_connect_failure_at(t0);
        let until = t0 + Duration::from_secs(30);
        assert!(
            matches!(ejected, Some(Transition::Ejected { failures: 3, until: u }) if u.duration_since(until) < Duration::from_millis(2) || until.duration_since(u) < Duration::from_millis(2)),
            "{ejected:?}"
        );
        assert!(!b.is_available_at(t0 + secs(29.9)));
        assert_eq!(b.health_at(t0 + secs(15.0)).label(), "ejected");
        // Failures of connections picked before the ejection do not extend it.
        assert_eq!(b.record_connect_failure_at(t0 + secs(1.0)), None);
        // Back after the cool-down, in slow start from its end.
        let back = t0 + secs(30.01);
        assert!(b.is_available_at(back));
        assert!(matches!(b.health_at(back), Health::SlowStart { .. }));
        assert!(
            (b.ramp(t0 + secs(35.0)) - 0.55).abs() < 0.01,
            "{}",
            b.ramp(t0 + secs(35.0))
        );
        assert_eq!(b.health_at(t0 + secs(40.1)), Health::Up);
        let counters = b.health_counters();
        assert_eq!((counters.ejections, counters.connect_failures), (1, 6));
    }

    #[test]
    fn without_a_policy_failures_are_counted_but_eject_nothing() {
        let b = backend();
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(b.record_connect_failure_at(t0), None);
        }
        assert!(b.is_available_at(t0));
        assert_eq!(b.health_counters().connect_failures, 100);
    }

    #[test]
    fn the_ramp_grows_linearly_from_a_tenth_to_one() {
        let b = backend();
        b.set_policies(Some(Duration::from_secs(10)), None);
        let t0 = Instant::now();
        assert_eq!(b.ramp(t0), 1.0, "never recovered: full weight");
        b.start_slow_start_at(t0);
        let ramps: Vec<f64> = [0.0, 2.5, 5.0, 7.5, 9.99, 10.0, 60.0]
            .iter()
            .map(|&s| (b.ramp(t0 + secs(s)) * 100.0).round() / 100.0)
            .collect();
        assert_eq!(ramps, [0.1, 0.32, 0.55, 0.77, 1.0, 1.0, 1.0]);
        assert!(matches!(
            b.health_at(t0 + secs(5.0)),
            Health::SlowStart { ramp, .. } if (ramp - 0.55).abs() < 0.01
        ));
        // Without a window the same backend is at full weight at once.
        b.set_policies(None, None);
        assert_eq!(b.ramp(t0), 1.0);
        assert_eq!(b.health_at(t0), Health::Up);
    }

    #[test]
    fn coming_up_from_down_starts_the_slow_start() {
        let b = backend();
        b.set_policies(Some(Duration::from_secs(4)), None);
        let t0 = Instant::now();
        b.record_check_at(Err(CheckFailure::Refused), 1, 1, t0);
        assert_eq!(b.health_at(t0).label(), "down");
        let up = t0 + secs(10.0);
        assert_eq!(
            b.record_check_at(Ok(()), 1, 1, up),
            Some(Transition::Up { passes: 1 })
        );
        assert!((b.ramp(up + secs(2.0)) - 0.55).abs() < 0.01);
        assert_eq!(b.health_at(up + secs(4.0)), Health::Up);
    }

    #[test]
    fn labels() {
        let labels: Vec<&str> = CheckFailure::ALL.iter().map(|f| f.label()).collect();
        assert_eq!(
            labels,
            [
                "refused",
                "connect_timeout",
                "timeout",
                "closed",
                "io",
                "status",
                "bad_response",
                "bad_accept",
                "no_pong",
                "tls"
            ]
        );
        for f in CheckFailure::ALL {
            assert_eq!(CheckFailure::from_code(f.code()), Some(f));
        }
        assert_eq!(CheckFailure::from_code(0), None);
        let now = Instant::now();
        assert_eq!(Health::Up.label(), "up");
        assert!(
            Health::SlowStart {
                since: now,
                ramp: 0.5
            }
            .takes_connections()
        );
        assert!(
            !Health::Down {
                reason: CheckFailure::Io
            }
            .takes_connections()
        );
        assert!(!Health::Ejected { until: now }.takes_connections());
    }
}
