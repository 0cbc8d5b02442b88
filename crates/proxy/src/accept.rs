//! Listening sockets and the accept loop.
//!
//! The loop never spins and never exits on an error: descriptor exhaustion (EMFILE/ENFILE) and
//! kernel memory pressure pause it with a growing back-off while established tunnels go on;
//! connection-level errors (a client that reset before accept) are skipped. Connections over
//! the limit (`limits.max_connections`, all listeners together, or the listener's own
//! `max_connections`) are answered 503 without being read and closed at once, so the kernel's
//! accept queue keeps draining and clients learn why. Both limits are counters taken here
//! without a lock (a semaphore permit, an atomic add) and given back when the connection ends.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, warn};

use sluice_metrics::{ListenerMetrics, Refused};

use sluice_config::ListenerMode;

use crate::{BindError, BoundListener, Shared, conn, l4};

/// Backlog asked of the kernel (capped by `net.core.somaxconn`).
const BACKLOG: i32 = 4096;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The answer to a client over the connection limit, written without reading its request.
const OVER_LIMIT: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nRetry-After: 1\r\nConnection: close\r\n\r\nToo many connections";

/// What an admitted connection holds until it ends: its place under the global connection
/// limit and under its listener's.
#[derive(Debug)]
pub(crate) struct Admission {
    _global: OwnedSemaphorePermit,
    _listener: ListenerSlot,
}

/// One connection counted against its listener's `max_connections`.
#[derive(Debug)]
struct ListenerSlot(Arc<AtomicUsize>);

impl Drop for ListenerSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Binds a configured listener.
pub(crate) fn bind_listener(
    listener: &sluice_config::Listener,
) -> Result<BoundListener, BindError> {
    bind_named(&listener.name, listener.listen)
}

/// Binds `addr` for the listener called `name` (which names it in errors).
pub(crate) fn bind_named(name: &str, addr: SocketAddr) -> Result<BoundListener, BindError> {
    bind(addr)
        .map(|socket| BoundListener::new(name, socket))
        .map_err(|source| BindError {
            name: name.to_owned(),
            addr,
            source,
        })
}

/// A non-blocking listening socket with `SO_REUSEADDR`, ready for tokio.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until `stop` is cancelled; each admitted connection runs on `connections`.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: BoundListener,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    let BoundListener { name, listener } = listener;
    let name: Arc<str> = name.into();
    // Handles resolved once for the life of the loop (the series outlive reloads).
    let metrics = ListenerMetrics::new(&name);
    // The listener's live connections, for its own max_connections.
    let live = Arc::new(AtomicUsize::new(0));
    let mut backoff = BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = BACKOFF_MIN;
                admit(&shared, &name, &metrics, &live, stream, peer, &connections);
            }
            Err(error) if is_connection_error(&error) => {
                debug!(listener = %name, %error, "accept: connection gone before accept");
            }
            Err(error) => {
                shared.stats.count_accept_error();
                metrics.accept_errors.increment(1);
                warn!(listener = %name, %error, pause = ?backoff, "accept failed; pausing");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn admit(
    shared: &Arc<Shared>,
    listener: &Arc<str>,
    metrics: &ListenerMetrics,
    live: &Arc<AtomicUsize>,
    stream: TcpStream,
    peer: SocketAddr,
    connections: &TaskTracker,
) {
    // The mode and limit in force now: a reload may change them, for connections accepted
    // after it.
    let (mode, tls, listener_max) =
        shared
            .snapshot
            .load()
            .listener(listener)
            .map_or((ListenerMode::Http, false, None), |l| {
                (
                    l.config().mode,
                    l.tls().is_some(),
                    l.config().max_connections,
                )
            });
    let refuse = |reason: Refused| {
        shared.stats.count_refused(reason, metrics);
        debug!(listener = %listener, %peer, reason = reason.label(), "connection limit reached: refused");
        // Best effort and never waiting: the socket is fresh, its send buffer empty. Only a
        // plain HTTP client can read the answer; TLS and L4 clients are just closed.
        if mode == ListenerMode::Http && !tls {
            let _ = stream.try_write(OVER_LIMIT);
        }
    };
    let Ok(global) = Arc::clone(&shared.connections).try_acquire_owned() else {
        refuse(Refused::MaxConnections);
        return;
    };
    let before = live.fetch_add(1, Ordering::Relaxed);
    let slot = ListenerSlot(Arc::clone(live));
    if listener_max.is_some_and(|max| before >= max) {
        drop(slot);
        refuse(Refused::ListenerMaxConnections);
        return;
    }
    let permit = Admission {
        _global: global,
        _listener: slot,
    };
    shared.stats.count_accepted();
    metrics.accepted.increment(1);
    // WebSocket traffic is small messages: never hold one back for Nagle's algorithm (the
    // backend side is set at connect).
    let _ = stream.set_nodelay(true);
    let id = shared
        .next_conn_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // `client`: the PROXY header's source, recorded once read (`client.rs`).
    let span = debug_span!("conn", id, %peer, client = tracing::field::Empty, listener = %listener);
    let (shared, listener) = (Arc::clone(shared), Arc::clone(listener));
    match mode {
        ListenerMode::Http => connections
            .spawn(conn::serve(shared, id, listener, stream, peer, permit).instrument(span)),
        ListenerMode::Tcp | ListenerMode::TlsPassthrough => connections
            .spawn(l4::serve(shared, id, listener, stream, peer, permit).instrument(span)),
    };
}

/// Errors about one connection that died in the accept queue: nothing to pause for.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}
