//! Listening sockets and the accept loop.
//!
//! The loop never spins and never exits on an error: descriptor exhaustion (EMFILE/ENFILE) and
//! kernel memory pressure pause it with a growing back-off while established tunnels go on;
//! connection-level errors (a client that reset before accept) are skipped. Connections over
//! the limit (`limits.max_connections`, all listeners together, or the listener's own
//! `max_connections`) are answered 503 without being read and closed at once, so the kernel's
//! accept queue keeps draining and clients learn why. Both limits are counters taken here
//! without a lock (a semaphore permit, an atomic add) and given back when the connection ends.
//!
//! Descriptor exhaustion would otherwise leave clients hanging in the kernel's queue (accept
//! cannot take them without a descriptor). Each loop keeps one descriptor in reserve (an open
//! `/dev/null`): on EMFILE/ENFILE it gives that one up, accepts the clients waiting (a bounded
//! batch), answers each 503 (plain http listeners; others are just closed) and closes it, takes
//! its reserve back, counts them (`sluice_connections_shed_total`) and pauses. The trick is
//! libev's and Node's.

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
/// Clients refused per descriptor-exhaustion event at most, before the loop pauses.
const SHED_BATCH: usize = 256;

/// The answer to a client over the connection limit, written without reading its request.
const OVER_LIMIT: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nRetry-After: 1\r\nConnection: close\r\n\r\nToo many connections";

/// What an admitted connection holds until it ends: its place under the global connection
/// limit and under its listener's.
#[derive(Debug)]
pub(crate) struct Admission {
    _global: OwnedSemaphorePermit,
    _listener: ListenerSlot,
}

#[cfg(test)]
impl Admission {
    /// An admission under the global limit and a listener count of its own, for tests that
    /// build a connection by hand.
    pub(crate) fn for_tests(global: OwnedSemaphorePermit) -> Self {
        Self {
            _global: global,
            _listener: ListenerSlot(Arc::new(AtomicUsize::new(1))),
        }
    }
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
    let mut reserve = Reserve::new();
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
                if crate::limits::is_descriptor_exhaustion(&error) {
                    let answer = plain_http(&shared, &name).then_some(OVER_LIMIT);
                    let shed = reserve.shed(&listener, answer).await;
                    metrics.shed.increment(shed as u64);
                    warn!(listener = %name, %error, shed, pause = ?backoff, "out of file descriptors: refusing new clients; pausing");
                } else {
                    warn!(listener = %name, %error, pause = ?backoff, "accept failed; pausing");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One descriptor held back for refusing clients when there is none left (see the module doc).
struct Reserve(Option<std::fs::File>);

impl Reserve {
    fn new() -> Self {
        Reserve(std::fs::File::open("/dev/null").ok())
    }

    /// Frees the reserve, accepts and closes the clients already waiting (at most
    /// [`SHED_BATCH`], never waiting for more), writing `answer` to each, and takes the
    /// reserve back. Returns how many were refused.
    async fn shed(&mut self, listener: &TcpListener, answer: Option<&[u8]>) -> usize {
        self.0 = None;
        let mut shed = 0;
        while shed < SHED_BATCH {
            let accepted = tokio::select! {
                biased;
                accepted = listener.accept() => accepted,
                () = std::future::ready(()) => break,
            };
            let Ok((stream, _)) = accepted else {
                break;
            };
            if let Some(answer) = answer {
                // Best effort and never waiting: the socket is fresh, its send buffer empty.
                let _ = stream.try_write(answer);
            }
            shed += 1;
        }
        *self = Reserve::new();
        shed
    }
}

/// Whether the listener called `name` is plain-text HTTP now (so a refused client can read a
/// 503); TLS and L4 clients are just closed.
fn plain_http(shared: &Shared, name: &str) -> bool {
    shared
        .snapshot
        .load()
        .listener(name)
        .is_none_or(|l| l.config().mode == ListenerMode::Http && l.tls().is_none())
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn shedding_answers_the_waiting_clients_and_takes_the_reserve_back() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let mut reserve = Reserve::new();
        assert!(reserve.0.is_some());
        // The kernel completes connections before accept: wait until all three are queued.
        let mut shed = 0;
        for _ in 0..500 {
            shed += reserve.shed(&listener, Some(OVER_LIMIT)).await;
            if shed == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(shed, 3);
        assert!(reserve.0.is_some(), "the reserve is taken back");
        for mut client in clients {
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.expect("read");
            assert_eq!(answer, OVER_LIMIT);
        }
        // Nobody waiting: nothing shed, nothing waited for.
        assert_eq!(reserve.shed(&listener, None).await, 0);
    }
}
