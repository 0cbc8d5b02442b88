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

/// A non-blocking listening socket with `SO_REUSEADDR` and `TCP_NODELAY` (which the sockets it
/// accepts inherit: [`inherit_nodelay`]), ready for tokio.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// WebSocket traffic is small messages: no socket of a client connection may hold one back for
/// Nagle's algorithm. On Linux an accepted socket inherits `TCP_NODELAY` from its listener, so
/// it is set once on the listener (again here: a listener handed over by a predecessor may not
/// have it) instead of once per connection. Returns whether the accepted sockets have it;
/// otherwise each is set on its own. (The backend side is set at connect.)
fn inherit_nodelay(listener: &TcpListener, name: &str) -> bool {
    match socket2::SockRef::from(listener).set_tcp_nodelay(true) {
        Ok(()) => true,
        Err(error) => {
            warn!(listener = %name, %error, "cannot set TCP_NODELAY on the listener; setting it per connection");
            false
        }
    }
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
    let nodelay_inherited = inherit_nodelay(&listener, &name);
    let first_read_waits = first_read_can_wait();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = BACKOFF_MIN;
                if !nodelay_inherited {
                    let _ = stream.set_nodelay(true);
                }
                if first_read_waits {
                    wait_for_first_bytes(&stream);
                }
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

/// Makes the connection's first read wait for the reactor's readable event instead of trying
/// the socket at once. tokio assumes a freshly accepted socket readable, but a client's first
/// bytes (request head, ClientHello, PROXY header) usually arrive a moment after the connection
/// is accepted: the optimistic read then fails with EAGAIN (measured: 85 % of first reads on
/// the handshake benchmark), a wasted `recvfrom`. nginx waits for the event too.
/// No event is lost: epoll reports bytes that arrived before the socket was registered. It must
/// run before the reactor's next turn after the accept, when no event of the socket can have
/// been delivered yet: clearing a readiness epoll did report would lose that edge (edge
/// triggered) and leave the connection waiting for its head until the handshake timeout. Hence
/// only on a current-thread runtime ([`first_read_can_wait`]), right after the accept.
fn wait_for_first_bytes(stream: &TcpStream) {
    // A closure that reports "would block" clears the readiness tokio assumed; nothing is read.
    let _ = stream.try_io(tokio::io::Interest::READABLE, || {
        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
    });
}

/// Whether [`wait_for_first_bytes`] is safe here: on a current-thread runtime (`--threads 1`)
/// the reactor turns only between task polls, so nothing can deliver an event of a socket
/// between its accept and the call. On a multi-thread runtime another worker may be turning the
/// reactor at that very moment: the first read stays optimistic there.
fn first_read_can_wait() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|rt| rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// TCP_NODELAY is set on the listener only; the accepted sockets must have it (Linux copies
    /// it to them), on a socket `bind` made and on one bound elsewhere (a predecessor's).
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let ours = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let theirs = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        assert!(inherit_nodelay(&theirs, "theirs"));
        for listener in [ours, theirs] {
            let addr = listener.local_addr().expect("addr");
            let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let (_client, (accepted, _)) = (client.expect("connect"), accepted.expect("accept"));
            assert!(accepted.nodelay().expect("getsockopt"), "{addr}");
        }
    }

    /// After `wait_for_first_bytes` the first read still gets the client's bytes, whether they
    /// came before the call (epoll reports them) or after.
    #[tokio::test]
    async fn the_first_read_gets_bytes_sent_before_and_after_accept() {
        assert!(first_read_can_wait(), "a current-thread runtime");
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        for early in [true, false] {
            let mut client = TcpStream::connect(addr).await.expect("connect");
            if early {
                client.write_all(b"hello").await.expect("write");
            }
            // As `admit` does: right after accept, before any turn of the reactor (on loopback
            // the early bytes are already queued on the accepted socket by then).
            let (mut accepted, _) = listener.accept().await.expect("accept");
            wait_for_first_bytes(&accepted);
            if !early {
                client.write_all(b"hello").await.expect("write");
            }
            let mut got = [0u8; 5];
            tokio::time::timeout(Duration::from_secs(10), accepted.read_exact(&mut got))
                .await
                .expect("the first read is woken")
                .expect("read");
            assert_eq!(&got, b"hello", "early: {early}");
        }
    }

    /// Another worker may deliver the accepted socket's first event at any moment: the first
    /// read must stay optimistic (clearing that event would lose it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_read_stays_optimistic_on_a_multi_thread_runtime() {
        assert!(!first_read_can_wait());
    }

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
