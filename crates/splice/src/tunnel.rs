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

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep, sleep, sleep_until};

use crate::direction::{Delta, Direction};
use crate::error::RelayError;
use crate::stats::STATS;
use crate::suspend::Held;
use crate::{CloseReason, RelayReport, Side, Stop, Traffic};

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
    pub(crate) half_closed: Option<Pin<Box<Sleep>>>,
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

/// The timeouts a tunnel counts against, copied from [`crate::RelayOptions`] when it starts:
/// the running tunnel keeps no reference to the options.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) idle: Option<Duration>,
    pub(crate) half_closed: Option<Duration>,
}

impl Limits {
    pub(crate) fn of(opts: &crate::RelayOptions) -> Self {
        Self {
            idle: opts.idle_timeout,
            half_closed: opts.half_closed_timeout,
        }
    }
}

pin_project_lite::pin_project! {
    /// A running tunnel: both directions, the stop signal, the idle timer and the half-closed
    /// timer, as one hand-written future.
    ///
    /// Not an `async` block: a tunnel's future is most of an idle tunnel's memory, and an
    /// async block keeps, besides what it captured, every local it ever pinned or lent to a
    /// closure (the stop signal a second time, the timeout, a closure of references to each of
    /// its locals): 760 bytes in release, where this struct is what it says, 528
    /// (`relay_futures_are_send_and_small` pins the size).
    ///
    /// `poll_dir` polls one direction with the right pair of streams (by [`Direction::from`]);
    /// `finish` turns the end into the caller's output (called once, at the end, so that no
    /// wrapping future adds a layer to every tunnel's task).
    pub(crate) struct Run<'p, 'a, C, B, S, P, F> {
        c2b: Direction<'p>,
        b2c: Direction<'p>,
        // `None` once the tunnel ended (the streams went to `finish`).
        streams: Option<(C, B)>,
        first_eof: Option<Side>,
        started: Instant,
        last_active: Instant,
        // Boxed when armed (rarely, and once): an idle tunnel does not carry a second timer.
        half_closed: Option<Pin<Box<Sleep>>>,
        limits: Limits,
        traffic: &'a Traffic,
        poll_dir: P,
        finish: Option<F>,
        #[pin]
        stop: S,
        // Armed on the first poll (when a timeout is set), then only pushed back.
        #[pin]
        idle: Option<Sleep>,
    }
}

/// One poll of one direction: `Ready(Ok)` once its end of stream was passed on.
pub(crate) type Step = Poll<Result<(), RelayError>>;

/// Polls one direction of a tunnel with the right pair of streams: `(direction, cx, what the
/// poll moved, client, backend)`.
pub(crate) trait PollDir<'p, C, B>:
    FnMut(&mut Direction<'p>, &mut Context<'_>, &mut Delta, &mut C, &mut B) -> Step
{
}

impl<'p, C, B, T> PollDir<'p, C, B> for T where
    T: FnMut(&mut Direction<'p>, &mut Context<'_>, &mut Delta, &mut C, &mut B) -> Step
{
}

/// A tunnel ready to run: see [`Run`].
#[allow(clippy::too_many_arguments)] // one call site per relay kind, each argument distinct
pub(crate) fn run<'p, 'a, C, B, S, P, F, O>(
    (c2b, b2c, first_eof): (Direction<'p>, Direction<'p>, Option<Side>),
    streams: (C, B),
    Clock {
        started,
        last_active,
        half_closed,
    }: Clock,
    limits: Limits,
    traffic: &'a Traffic,
    stop: S,
    poll_dir: P,
    finish: F,
) -> Run<'p, 'a, C, B, S, P, F>
where
    P: PollDir<'p, C, B>,
    F: FnOnce(Ended<C, B>) -> O,
{
    Run {
        c2b,
        b2c,
        streams: Some(streams),
        first_eof,
        started,
        last_active,
        half_closed,
        limits,
        traffic,
        poll_dir,
        finish: Some(finish),
        stop,
        idle: None,
    }
}

impl<'p, C, B, S, P, F, O> Future for Run<'p, '_, C, B, S, P, F>
where
    S: Future,
    S::Output: Into<Stop>,
    P: PollDir<'p, C, B>,
    F: FnOnce(Ended<C, B>) -> O,
{
    type Output = O;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<O> {
        let mut this = self.project();
        let Some((client, backend)) = this.streams.as_mut() else {
            // Polled after it completed: it never completes again.
            return Poll::Pending;
        };
        // `None`: suspend.
        let ended = 'ended: {
            if let Poll::Ready(asked) = this.stop.as_mut().poll(cx) {
                break 'ended match asked.into() {
                    Stop::Close => Some((CloseReason::Stopped, None)),
                    Stop::Suspend => None,
                };
            }

            let mut failed = None;
            let (c2b, b2c) = (&mut *this.c2b, &mut *this.b2c);
            let done = (c2b.is_done(), b2c.is_done());
            let mut moved = [Delta::default(), Delta::default()];
            let [c2b_moved, b2c_moved] = &mut moved;
            for (dir, delta, other_done) in [
                (&mut *c2b, c2b_moved, done.1),
                (&mut *b2c, b2c_moved, done.0),
            ] {
                if dir.is_done() {
                    continue;
                }
                dir.set_other_done(other_done);
                if let Poll::Ready(Err(e)) = (this.poll_dir)(dir, cx, delta, client, backend) {
                    failed = Some(e);
                }
                if this.first_eof.is_none() && dir.read_eof() {
                    *this.first_eof = Some(dir.from());
                }
                if failed.is_some() {
                    break;
                }
            }
            let [c2b_moved, b2c_moved] = moved;
            let c2b_active = c2b.flush(c2b_moved, &this.traffic.client_to_backend);
            let b2c_active = b2c.flush(b2c_moved, &this.traffic.backend_to_client);

            if let Some(e) = failed {
                let reason = CloseReason::Error {
                    side: e.side(),
                    kind: e.kind(),
                };
                break 'ended Some((reason, Some(e)));
            }
            if c2b.is_done() && b2c.is_done() {
                let reason = match this.first_eof.unwrap_or(Side::Client) {
                    Side::Client => CloseReason::Client,
                    Side::Backend => CloseReason::Backend,
                };
                break 'ended Some((reason, None));
            }

            if let Some(limit) = this.limits.half_closed {
                if this.half_closed.is_none() && (c2b.is_done() || b2c.is_done()) {
                    *this.half_closed = Some(Box::pin(sleep(limit)));
                }
                if let Some(timer) = this.half_closed.as_mut() {
                    if timer.as_mut().poll(cx).is_ready() {
                        break 'ended Some((CloseReason::HalfClosedTimeout, None));
                    }
                }
            }

            if let Some(timeout) = this.limits.idle {
                let active = c2b_active || b2c_active;
                if active {
                    *this.last_active = Instant::now();
                }
                let arming = this.idle.is_none();
                if arming {
                    // The timer is lazy: activity only records the time; when the timer fires
                    // early because of it, it is pushed to `last activity + timeout`.
                    this.idle
                        .set(Some(match this.last_active.checked_add(timeout) {
                            Some(deadline) => sleep_until(deadline),
                            None => sleep(timeout),
                        }));
                }
                // Polled when just armed, when it fired, and on polls that moved nothing. A poll
                // that moved bytes has nothing to check (the tunnel is not idle) and, while the
                // timer has not fired, nothing to register: it holds this task's waker from the
                // poll that armed or pushed it, and polling it again would clone that waker
                // (tokio's timer does not compare wakers). A fired timer is pushed at once,
                // active or not: nothing else would wake a tunnel that falls silent.
                let timer = this
                    .idle
                    .as_mut()
                    .as_pin_mut()
                    .filter(|timer| arming || !active || timer.is_elapsed());
                if let Some(mut timer) = timer {
                    while timer.as_mut().poll(cx).is_ready() {
                        let Some(deadline) = this.last_active.checked_add(timeout) else {
                            break; // beyond the end of time: never idle
                        };
                        if deadline <= Instant::now() {
                            break 'ended Some((CloseReason::IdleTimeout, None));
                        }
                        timer.as_mut().reset(deadline);
                    }
                }
            }
            return Poll::Pending;
        };

        let (Some((client, backend)), Some(finish)) = (this.streams.take(), this.finish.take())
        else {
            return Poll::Pending; // taken together above: unreachable
        };
        let (c2b, b2c) = (&mut *this.c2b, &mut *this.b2c);
        let Some((closed_by, error)) = ended else {
            let now = Instant::now();
            let half_closed_for = this
                .half_closed
                .as_ref()
                .zip(this.limits.half_closed)
                .and_then(|(timer, limit)| timer.deadline().checked_sub(limit))
                .map(|since| now.saturating_duration_since(since));
            return Poll::Ready(finish(Ended::Suspended {
                client,
                backend,
                c2b: c2b.suspend(),
                b2c: b2c.suspend(),
                first_eof: *this.first_eof,
                idle_for: now.saturating_duration_since(*this.last_active),
                half_closed_for,
            }));
        };
        drop((client, backend));
        STATS.tunnels_closed.fetch_add(1, Relaxed);
        let report = RelayReport {
            client_to_backend: c2b.spliced() + c2b.copied(),
            backend_to_client: b2c.spliced() + b2c.copied(),
            spliced_bytes: c2b.spliced() + b2c.spliced(),
            copied_bytes: c2b.copied() + b2c.copied(),
            closed_by,
            duration: this.started.elapsed(),
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
        Poll::Ready(finish(Ended::Closed(report)))
    }
}
