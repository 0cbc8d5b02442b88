//! The tunnel: two directions, the stop signal, the idle timer and the half-closed timer, polled
//! by one task.
//!
//! One poll of the tunnel checks `stop`, polls each unfinished direction (each does bounded
//! work), publishes the bytes moved to the [`Traffic`] counters and the process stats, then
//! checks the half-closed timer (armed once, when the first direction ends) and the idle timer. The timer is lazy: activity only records the time (one clock read per
//! poll that moved bytes); when the `Sleep` fires early because of that activity, it is pushed
//! to `last activity + timeout`, never re-armed per chunk.
//!
//! `stop` is checked first, before any direction moves: when it asks to suspend, both
//! directions are between two polls, each with its bytes in flight counted, and are handed
//! back whole with the streams ([`Ended::Suspended`]).

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, sleep, sleep_until};

use crate::direction::Direction;
use crate::error::RelayError;
use crate::stats::STATS;
use crate::suspend::Held;
use crate::{CloseReason, RelayOptions, RelayReport, Side, Stop, Traffic};

/// How a tunnel's run ended.
pub(crate) enum Ended<C, B> {
    /// Closed; the streams are gone.
    Closed(RelayReport),
    /// Suspended: the streams, each direction's state, and how far the timers had run.
    Suspended {
        client: C,
        backend: B,
        c2b: Held,
        b2c: Held,
        first_eof: Option<Side>,
        idle_for: Duration,
        half_closed_for: Option<Duration>,
    },
}

/// Where a tunnel's timers start: now for a new tunnel, where they were for a resumed one.
pub(crate) struct Clock {
    /// The relay's start (for its report's duration).
    pub(crate) started: Instant,
    /// The last time a byte moved.
    pub(crate) last_active: Instant,
    /// The half-closed timer, if it was running.
    pub(crate) half_closed: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Clock {
    /// Timers of a tunnel that was idle for `idle_for` and, if `half_closed_for` says so,
    /// half-closed for that long (with a `half_closed` limit to count against).
    pub(crate) fn resumed(
        idle_for: Duration,
        half_closed_for: Option<Duration>,
        half_closed: Option<Duration>,
    ) -> Self {
        let started = Instant::now();
        let half_closed = half_closed
            .zip(half_closed_for)
            .map(|(limit, elapsed)| Box::pin(sleep(limit.saturating_sub(elapsed))));
        Self {
            started,
            last_active: started.checked_sub(idle_for).unwrap_or(started),
            half_closed,
        }
    }
}

/// Runs both directions until the tunnel ends, and reports.
///
/// `poll_dir` polls one direction with the right pair of streams (by [`Direction::from`]);
/// `finish` turns the end into the caller's output (a closure called at the end, so that no
/// wrapping future adds a layer to every tunnel's task).
///
/// Not an `async fn`: an async fn moves each argument into a second slot of its future when
/// first polled (rust-lang/rust#62958), and the directions are most of a tunnel's size; an
/// `async move` block uses what it captured in place.
// An `async move` block on purpose (see above), not the `async fn` clippy suggests.
#[allow(clippy::manual_async_fn)]
#[allow(clippy::too_many_arguments)] // one call site per relay kind, each argument distinct
pub(crate) fn run<'p, 'a, C, B, S, P, F, O>(
    (mut c2b, mut b2c, mut first_eof): (Direction<'p>, Direction<'p>, Option<Side>),
    (mut client, mut backend): (C, B),
    Clock {
        started,
        mut last_active,
        mut half_closed,
    }: Clock,
    opts: &'a RelayOptions,
    traffic: &'a Traffic,
    stop: S,
    mut poll_dir: P,
    finish: F,
) -> impl Future<Output = O> + use<'p, 'a, C, B, S, P, F, O>
where
    S: Future,
    S::Output: Into<Stop>,
    P: FnMut(&mut Direction<'p>, &mut Context<'_>, &mut C, &mut B) -> Poll<Result<(), RelayError>>,
    F: FnOnce(Ended<C, B>) -> O,
{
    async move {
        let timeout = opts.idle_timeout;
        let mut stop = pin!(stop);
        let mut idle = pin!(timeout.map(|t| match last_active.checked_add(t) {
            Some(deadline) => sleep_until(deadline),
            None => sleep(t),
        }));
        // Boxed when armed (rarely, and once): an idle tunnel does not carry a second timer.

        // `None`: suspend.
        let ended = poll_fn(|cx| {
            if let Poll::Ready(asked) = stop.as_mut().poll(cx) {
                return Poll::Ready(match asked.into() {
                    Stop::Close => Some((CloseReason::Stopped, None)),
                    Stop::Suspend => None,
                });
            }

            let mut failed = None;
            let done = (c2b.is_done(), b2c.is_done());
            for (dir, other_done) in [(&mut c2b, done.1), (&mut b2c, done.0)] {
                if dir.is_done() {
                    continue;
                }
                dir.set_other_done(other_done);
                if let Poll::Ready(Err(e)) = poll_dir(dir, cx, &mut client, &mut backend) {
                    failed = Some(e);
                }
                if first_eof.is_none() && dir.read_eof() {
                    first_eof = Some(dir.from());
                }
                if failed.is_some() {
                    break;
                }
            }
            let c2b_active = c2b.flush(&traffic.client_to_backend);
            let b2c_active = b2c.flush(&traffic.backend_to_client);

            if let Some(e) = failed {
                let reason = CloseReason::Error {
                    side: e.side(),
                    kind: e.kind(),
                };
                return Poll::Ready(Some((reason, Some(e))));
            }
            if c2b.is_done() && b2c.is_done() {
                let reason = match first_eof.unwrap_or(Side::Client) {
                    Side::Client => CloseReason::Client,
                    Side::Backend => CloseReason::Backend,
                };
                return Poll::Ready(Some((reason, None)));
            }

            if let Some(limit) = opts.half_closed_timeout {
                if half_closed.is_none() && (c2b.is_done() || b2c.is_done()) {
                    half_closed = Some(Box::pin(sleep(limit)));
                }
                if let Some(timer) = half_closed.as_mut() {
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some((CloseReason::HalfClosedTimeout, None)));
                    }
                }
            }

            if let (Some(timeout), Some(mut timer)) = (timeout, idle.as_mut().as_pin_mut()) {
                if c2b_active || b2c_active {
                    last_active = Instant::now();
                }
                while timer.as_mut().poll(cx).is_ready() {
                    let Some(deadline) = last_active.checked_add(timeout) else {
                        break; // beyond the end of time: never idle
                    };
                    if deadline <= Instant::now() {
                        return Poll::Ready(Some((CloseReason::IdleTimeout, None)));
                    }
                    timer.as_mut().reset(deadline);
                }
            }
            Poll::Pending
        })
        .await;

        let Some((closed_by, error)) = ended else {
            let now = Instant::now();
            let half_closed_for = half_closed
                .as_ref()
                .zip(opts.half_closed_timeout)
                .and_then(|(timer, limit)| timer.deadline().checked_sub(limit))
                .map(|since| now.saturating_duration_since(since));
            return finish(Ended::Suspended {
                client,
                backend,
                c2b: c2b.suspend(),
                b2c: b2c.suspend(),
                first_eof,
                idle_for: now.saturating_duration_since(last_active),
                half_closed_for,
            });
        };
        drop((client, backend));
        STATS.tunnels_closed.fetch_add(1, Relaxed);
        let report = RelayReport {
            client_to_backend: c2b.spliced() + c2b.copied(),
            backend_to_client: b2c.spliced() + b2c.copied(),
            spliced_bytes: c2b.spliced() + b2c.spliced(),
            copied_bytes: c2b.copied() + b2c.copied(),
            closed_by,
            duration: started.elapsed(),
            error,
        };
        tracing::debug!(
            closed_by = report.closed_by.label(),
            client_to_backend = report.client_to_backend,
            backend_to_client = report.backend_to_client,
            spliced = report.spliced_bytes,
            copied = report.copied_bytes,
            duration_ms = report.duration.as_millis(),
            error = report.error.as_ref().map(tracing::field::display),
            "tunnel closed"
        );
        finish(Ended::Closed(report))
    }
}
