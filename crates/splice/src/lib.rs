//! The L4 act of sluice: move bytes between two connected sockets until both sides are done,
//! parsing nothing.
//!
//! # Place in the pipeline
//!
//! ```text
//! accept → [PROXY / TLS] → handshake (L7: read, route, pick) → connect → 101 → [relay] (here)
//! ```
//!
//! After the backend answered `101 Switching Protocols` (or straight after connect in `tcp` and
//! `tls-passthrough` modes), the proxy hands both sockets to [`relay`], which owns them until the
//! tunnel ends and returns a [`RelayReport`] ([`Relayed::Closed`]): bytes each way, how they
//! moved, who closed and why. Or until its `stop` asks it to suspend: then it returns the
//! tunnel as it stands ([`Relayed::Suspended`]: the sockets and the bytes in flight, in pipes),
//! which [`resume`] relays on from exactly there, in this process or, its descriptors sent over
//! a unix socket, in another (a binary upgrade). TLS-terminated sides cannot splice (the bytes
//! are decrypted in user space): [`relay_copy`] relays any `AsyncRead + AsyncWrite` pair with
//! the same contract, and cannot be suspended.
//!
//! # How bytes move
//!
//! Per direction, on Linux, either `splice(2)` socket → pipe → socket (no copy through user
//! space) or a buffered copy; [`RelayMode`] chooses, and in [`RelayMode::Auto`] each direction
//! decides on its own by watching its read sizes (HAProxy's `splice-auto` rule, constants in
//! [`RelayMode::Auto`]): chatty traffic copies, bulk traffic splices.
//!
//! **Pipe lifecycle.** Pipes come from a capped, shared [`PipePool`]. A direction takes one when
//! its source becomes readable and gives it back as soon as the pipe is empty and the source
//! would block, so an idle tunnel holds no pipe. When the pool is at its cap (or the kernel
//! refuses a pipe) the direction copies instead and [`RelayStats::copy_fallbacks`] counts it. A
//! pipe still holding bytes when its tunnel dies is closed, never returned. A direction whose
//! splice reads keep filling its pipe (bulk) grows it once, to the pool's `max_pipe_size`
//! ([`PipePool::grow_to`]; 1 MiB in sluice), and the grown pipe stays grown in the pool for the
//! next bulk burst: each `splice(2)` then moves up to 16 times more.
//!
//! **Buffers** follow the same rule: a copying direction takes its buffer (from a per-thread
//! cache) right before a read and gives it back when the source would block with nothing left
//! to write. Per tunnel, memory is bounded by two buffers or two pipes, and an idle tunnel costs
//! its task (the relay future is under 0.6 KB, pinned by a test) and its two sockets.
//!
//! **The EAGAIN rule.** `splice(socket → pipe)` returns EAGAIN both when the socket is empty and
//! when the pipe is full, and handing a "pipe full" EAGAIN to tokio's `try_io` would clear the
//! socket's readiness and stall the tunnel. So a direction splices into its pipe only when the
//! pipe is empty, drains it completely before reading again, and counts the bytes in the pipe
//! itself from the syscalls' return values (HAProxy `raw_sock_to_pipe` stops on a non-empty
//! pipe for the same reason). `splice(pipe → socket)` asks for exactly the counted bytes, so its
//! EAGAIN always means "socket full".
//!
//! **Ends.** End of stream on one side is passed on per direction: the pending bytes are
//! written, then the destination's write half is shut (`shutdown(SHUT_WR)`), and the other
//! direction keeps going. Between two TCP sockets the direction that ends last skips its
//! `shutdown`: the tunnel closes both sockets at once, and that close sends the same FIN
//! (both receive queues were read to their end, so it cannot turn into a reset). The tunnel
//! ends when both directions have, with
//! [`CloseReason::Client`] or [`CloseReason::Backend`] naming the side that ended first. An I/O
//! error on either side (reset, broken pipe) ends both at once ([`CloseReason::Error`]), as do
//! the idle timeout ([`CloseReason::IdleTimeout`]), the half-closed timeout (one direction
//! ended and the other did not follow in time: [`CloseReason::HalfClosedTimeout`]) and the
//! `stop` future ([`CloseReason::Stopped`]). The sockets are closed when [`relay`] returns,
//! unless it returns them suspended.
//!
//! # What this crate does not do
//!
//! It does not parse WebSocket frames, answer pings, enforce message limits or see any byte of
//! the handshake: bytes the L7 act read past a head (a frame the backend sent in the same
//! segment as its `101`, or one the client sent right after its request) are the caller's to
//! write to the other side before calling [`relay`]. It does not connect, retry, set socket options (`TCP_NODELAY`, keepalive,
//! linger: the caller sets them) or decide drain deadlines (the `stop` future carries that).
//! It has no notion of backend health or metrics names: [`RelayReport`], [`Traffic`] and
//! [`stats`] give the numbers, the proxy crate names them.
//!
//! # Operational notes
//!
//! * splice(2) to a socket whose peer is gone raises `SIGPIPE`; Rust binaries ignore it from
//!   start-up, and so must any host embedding this crate.
//! * Each pooled pipe is two file descriptors and counts against `fs.pipe-user-pages-soft`;
//!   past it the kernel shrinks new pipes (see [`RelayStats::pipes_undersized`]). Give the
//!   process `CAP_SYS_RESOURCE` or raise the sysctl for large pools.
//! * An idle timeout needs a tokio runtime with the time driver enabled.
#![forbid(unsafe_code)]
// Off Linux the pool and the splice path compile (so the API is the same) but never run.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

mod buffer;
mod direction;
mod error;
mod policy;
mod pool;
mod stats;
mod suspend;
mod sys;
mod tunnel;

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use crate::error::RelayError;
pub use crate::pool::PipePool;
pub use crate::stats::RelayStats;
pub use crate::suspend::{Held, Pending, PendingPipe, Suspended};

use crate::direction::Direction;
use crate::tunnel::{Clock, Ended, Limits};

/// Default copy buffer per direction: 16 KiB, HAProxy's `tune.bufsize`.
pub const DEFAULT_BUFFER_SIZE: usize = 16 * 1024;

/// How a tunnel relays.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// Splice, copy, or decide per direction.
    pub mode: RelayMode,
    /// The copy buffer of each direction, in bytes, taken only while data moves (at least 1).
    /// In [`RelayMode::Auto`] it is also the yardstick of a "large" read.
    pub buffer_size: usize,
    /// No byte in either direction for this long closes the tunnel
    /// ([`CloseReason::IdleTimeout`]). `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Once one direction has ended (its end of stream passed on), the other has this long to
    /// end too, or the tunnel is closed ([`CloseReason::HalfClosedTimeout`]), whatever bytes it
    /// still moves. `None`: the other direction may go on for as long as it likes.
    pub half_closed_timeout: Option<Duration>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            mode: RelayMode::Auto,
            buffer_size: DEFAULT_BUFFER_SIZE,
            idle_timeout: None,
            half_closed_timeout: None,
        }
    }
}

/// Whether tunnels splice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayMode {
    /// Per direction: copy chatty traffic, splice bulk traffic (HAProxy's `splice-auto`, from
    /// `channel_check_xfer` / `channel_check_idletimer`).
    ///
    /// Each direction starts copying. A read of at least `buffer_size` bytes is *large*, one of
    /// at most `buffer_size / 2` is *small*, anything between resets both counts. After **3**
    /// consecutive large reads the direction splices; after **3** consecutive small reads (splice
    /// reads measured the same way) it copies again; a splicing direction that read nothing for
    /// **1 s** starts over copying. splice(2) costs two syscalls and a pipe per chunk: it loses
    /// ~20 % CPU on 128-byte messages and saves 2–3× on bulk (see `RESEARCH.md`).
    Auto,
    /// Always splice (when the pool lends a pipe; otherwise copy that burst).
    Splice,
    /// Never splice.
    Copy,
}

/// Live byte counters of one tunnel, moved while bytes flow (once per poll of the tunnel),
/// readable from any task. Bytes count when written to the destination.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes delivered to the backend.
    pub client_to_backend: AtomicU64,
    /// Bytes delivered to the client.
    pub backend_to_client: AtomicU64,
}

/// One end of a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The downstream peer that connected to sluice.
    Client,
    /// The upstream server sluice connected to.
    Backend,
}

impl Side {
    /// `"client"` or `"backend"`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Backend => "backend",
        }
    }

    /// The other end.
    pub fn peer(self) -> Self {
        match self {
            Self::Client => Self::Backend,
            Self::Backend => Self::Client,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Who or what ended a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides finished cleanly; the client sent end of stream first.
    Client,
    /// Both sides finished cleanly; the backend sent end of stream first.
    Backend,
    /// No byte moved for [`RelayOptions::idle_timeout`].
    IdleTimeout,
    /// One direction ended and the other did not within [`RelayOptions::half_closed_timeout`].
    HalfClosedTimeout,
    /// The `stop` future resolved (drain or shutdown).
    Stopped,
    /// An I/O error on one side's socket ended both.
    Error {
        /// The side whose socket failed.
        side: Side,
        /// What failed.
        kind: io::ErrorKind,
    },
}

impl CloseReason {
    /// A fixed label for logs and metrics: `client`, `backend`, `idle_timeout`,
    /// `half_closed_timeout`, `stopped`, `client_error`, `backend_error`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Backend => "backend",
            Self::IdleTimeout => "idle_timeout",
            Self::HalfClosedTimeout => "half_closed_timeout",
            Self::Stopped => "stopped",
            Self::Error {
                side: Side::Client, ..
            } => "client_error",
            Self::Error {
                side: Side::Backend,
                ..
            } => "backend_error",
        }
    }
}

/// What a finished tunnel did.
#[derive(Debug)]
pub struct RelayReport {
    /// Bytes delivered to the backend.
    pub client_to_backend: u64,
    /// Bytes delivered to the client.
    pub backend_to_client: u64,
    /// Of all bytes delivered, those moved by splice(2).
    pub spliced_bytes: u64,
    /// Of all bytes delivered, those copied through a buffer.
    pub copied_bytes: u64,
    /// Who or what ended the tunnel.
    pub closed_by: CloseReason,
    /// From the call to [`relay`] to its return.
    pub duration: Duration,
    /// The error behind [`CloseReason::Error`], for logs.
    pub error: Option<RelayError>,
}

/// What a tunnel's `stop` future asks for when it resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Close both sockets now ([`CloseReason::Stopped`]): drain, shutdown.
    Close,
    /// Hand the tunnel back as it stands ([`Relayed::Suspended`]), to [`resume`] here or in
    /// another process (binary upgrade).
    Suspend,
}

/// A `stop` future of `()` closes.
impl From<()> for Stop {
    fn from((): ()) -> Self {
        Self::Close
    }
}

/// How [`relay`] or [`resume`] returned.
#[derive(Debug)]
pub enum Relayed {
    /// The tunnel ended; the sockets are closed.
    Closed(RelayReport),
    /// `stop` asked to suspend: the sockets and what was in flight, nothing lost.
    Suspended(Suspended),
}

/// Relays two connected TCP sockets until both sides are done; splices on Linux per
/// `opts.mode`, copies when the pool lends no pipe (and off Linux).
///
/// `stop` resolving ends the tunnel at once (drain or shutdown): with [`Stop::Close`] both
/// sockets are closed ([`CloseReason::Stopped`]); with [`Stop::Suspend`] the tunnel comes back
/// as [`Relayed::Suspended`]. `traffic` moves while the tunnel lives. The returned future is
/// `Send` when `stop` is.
///
/// Not an `async fn`: the sockets and directions are moved straight into the tunnel's future
/// instead of being held twice (once as this function's locals, once in the future it awaits),
/// which keeps an idle tunnel's task small (the size is pinned by a test).
pub fn relay<'a, S>(
    client: TcpStream,
    backend: TcpStream,
    opts: &RelayOptions,
    pipes: &'a PipePool,
    traffic: &'a Traffic,
    stop: S,
) -> impl Future<Output = Relayed> + use<'a, S>
where
    S: Future + 'a,
    S::Output: Into<Stop>,
{
    resume(Suspended::new(client, backend), opts, pipes, traffic, stop)
}

/// [`relay`] from where a suspended tunnel stopped: the bytes it had in flight are delivered
/// first, in order, and its byte counts go on from where they were (`traffic` is the caller's:
/// start it at [`Held::delivered`] to keep it continuous).
pub fn resume<'a, S>(
    tunnel: Suspended,
    opts: &RelayOptions,
    pipes: &'a PipePool,
    traffic: &'a Traffic,
    stop: S,
) -> impl Future<Output = Relayed> + use<'a, S>
where
    S: Future + 'a,
    S::Output: Into<Stop>,
{
    let Suspended {
        client,
        backend,
        client_to_backend,
        backend_to_client,
        first_eof,
        idle_for,
        half_closed_for,
    } = tunnel;
    let clock = Clock::resumed(idle_for, half_closed_for, opts.half_closed_timeout);
    let mode = if cfg!(target_os = "linux") {
        opts.mode
    } else {
        RelayMode::Copy
    };
    let size = opts.buffer_size.max(1);
    let c2b = Direction::resumed(Side::Client, mode, size, Some(pipes), client_to_backend);
    let b2c = Direction::resumed(Side::Backend, mode, size, Some(pipes), backend_to_client);
    tunnel::run(
        (c2b, b2c, first_eof),
        (client, backend),
        clock,
        Limits::of(opts),
        traffic,
        stop,
        |dir, cx, delta, client, backend| match dir.from() {
            Side::Client => dir.poll_tcp(cx, delta, client, backend),
            Side::Backend => dir.poll_tcp(cx, delta, backend, client),
        },
        |ended| match ended {
            Ended::Closed(report) => Relayed::Closed(report),
            Ended::Suspended {
                client,
                backend,
                c2b,
                b2c,
                first_eof,
                idle_for,
                half_closed_for,
            } => Relayed::Suspended(Suspended {
                client,
                backend,
                client_to_backend: c2b,
                backend_to_client: b2c,
                first_eof,
                idle_for,
                half_closed_for,
            }),
        },
    )
}

/// The same as [`relay`] by buffered copy only, for any pair of streams (e.g. a TLS-terminated
/// client). `opts.mode` is ignored. End of stream is passed on with `poll_shutdown` (for TLS:
/// `close_notify`, then the TCP write half). Such a tunnel cannot be suspended (a TLS
/// session's state lives in this process): `stop` closes it.
pub fn relay_copy<'a, C, B, S>(
    client: C,
    backend: B,
    opts: &RelayOptions,
    traffic: &'a Traffic,
    stop: S,
) -> impl Future<Output = RelayReport> + use<'a, C, B, S>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    S: Future,
    S::Output: Into<Stop>,
{
    let size = opts.buffer_size.max(1);
    let c2b = Direction::new(Side::Client, RelayMode::Copy, size, None);
    let b2c = Direction::new(Side::Backend, RelayMode::Copy, size, None);
    tunnel::run(
        (c2b, b2c, None),
        (client, backend),
        Clock::resumed(Duration::ZERO, None, None),
        Limits::of(opts),
        traffic,
        stop,
        |dir, cx, delta, client, backend| match dir.from() {
            Side::Client => dir.poll_copy(cx, delta, client, backend),
            Side::Backend => dir.poll_copy(cx, delta, backend, client),
        },
        |ended| match ended {
            Ended::Closed(report) => report,
            // Asked to suspend (a caller's mistake: such a tunnel cannot be), it closes as
            // stopped.
            Ended::Suspended { c2b, b2c, .. } => RelayReport {
                client_to_backend: c2b.delivered(),
                backend_to_client: b2c.delivered(),
                spliced_bytes: 0,
                copied_bytes: c2b.delivered() + b2c.delivered(),
                closed_by: CloseReason::Stopped,
                duration: Duration::ZERO,
                error: None,
            },
        },
    )
}

/// Process-wide counters: which path ran, how many pipes exist. See [`RelayStats`].
pub fn stats() -> &'static RelayStats {
    &stats::STATS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_have_fixed_labels() {
        let cases = [
            (CloseReason::Client, "client"),
            (CloseReason::Backend, "backend"),
            (CloseReason::IdleTimeout, "idle_timeout"),
            (CloseReason::HalfClosedTimeout, "half_closed_timeout"),
            (CloseReason::Stopped, "stopped"),
            (
                CloseReason::Error {
                    side: Side::Client,
                    kind: io::ErrorKind::ConnectionReset,
                },
                "client_error",
            ),
            (
                CloseReason::Error {
                    side: Side::Backend,
                    kind: io::ErrorKind::BrokenPipe,
                },
                "backend_error",
            ),
        ];
        for (reason, label) in cases {
            assert_eq!(reason.label(), label);
        }
    }

    #[test]
    fn default_options() {
        let opts = RelayOptions::default();
        assert_eq!(opts.mode, RelayMode::Auto);
        assert_eq!(opts.buffer_size, 16 * 1024);
        assert_eq!(opts.idle_timeout, None);
        assert_eq!(opts.half_closed_timeout, None);
    }

    #[test]
    fn sides() {
        assert_eq!(Side::Client.peer(), Side::Backend);
        assert_eq!(Side::Backend.peer(), Side::Client);
        assert_eq!(Side::Backend.to_string(), "backend");
    }
}
