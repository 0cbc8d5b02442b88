//! The skeleton every test server shares: bind, accept, count, record, and kill on demand.
//!
//! Lifecycle of one accepted connection (see `run_conn`):
//!
//! 1. The accept loop registers a [`LiveConn`] (a kill switch and a "done" receiver) under a fresh
//!    id, then spawns the connection task. `connections_accepted` and `active_connections` move
//!    before the task runs.
//! 2. The task keeps a duplicate of the socket's file descriptor (`ctl`) so it can shut the socket
//!    down or arm a reset no matter what the handler is doing, and runs the handler.
//! 3. The handler ends by itself (peer closed, protocol end) or a kill arrives: `Fin` shuts the
//!    socket down both ways, `Reset` sets `SO_LINGER` to zero so the final close sends RST,
//!    `WebSocketClose` asks the handler to send a Close frame and waits a little for it.
//! 4. The handler future and `ctl` are dropped (the last close of the socket), the counters and the
//!    connection log are updated, and only then is the "done" signal released, so
//!    [`ServerHandle::close_all`] returns with `active_connections` already down.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::http::{ProxyHeader, RecordedRequest};

/// How a test server ends a live connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMode {
    /// Shut the socket down both ways and close it: the peer reads EOF (a FIN). Like a backend
    /// process that exits. If unread bytes were still queued the kernel answers them with a RST.
    Fin,
    /// Close with `SO_LINGER` = 0: the peer gets a RST (`ECONNRESET`). Like a crashed host or a
    /// firewall that drops state.
    Reset,
    /// Send a WebSocket Close frame with this status code (RFC 6455 §5.5.1, e.g. 1001 "going
    /// away"), wait up to two seconds for the peer's Close, then close the socket. Servers that do
    /// not speak WebSocket (or connections not yet upgraded) treat it as [`CloseMode::Fin`].
    WebSocketClose(u16),
}

/// What one connection looked like from the server's side. A snapshot: live connections keep
/// changing after it is taken.
#[derive(Clone, Debug)]
pub struct ConnectionLog {
    /// Accept order, starting at 0; [`RecordedRequest::connection`] refers to it.
    pub id: u64,
    /// The peer address the server saw (the proxy's address when a proxy is in between).
    pub peer: SocketAddr,
    /// Every byte received on this connection, before any parsing, including the HTTP head and
    /// WebSocket frames exactly as they arrived (masked).
    pub received: Vec<u8>,
    /// Still open.
    pub open: bool,
    /// The WebSocket handshake completed (the server wrote its 101).
    pub upgraded: bool,
    /// A PROXY protocol header (v1 or v2) that preceded the request, if any.
    pub proxy: Option<ProxyHeader>,
}

/// The part every test server has: its address, counters, recordings and kill switches. The
/// server types ([`EchoBackend`](crate::EchoBackend), [`Blackhole`](crate::Blackhole),
/// [`StaticResponder`](crate::StaticResponder), [`TcpEcho`](crate::TcpEcho)) dereference to it.
///
/// Counters are atomics and recordings sit behind mutexes, so a test reads them while the server
/// runs. Dropping the handle stops accepting and closes every live connection ([`CloseMode::Fin`]).
pub struct ServerHandle {
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl ServerHandle {
    /// The bound address (127.0.0.1 and the port the kernel chose, unless bound explicitly).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The server's name: given at spawn, or `<kind>-<port>`. The echo backend sends it back in an
    /// `X-Backend` response header and as the body of plain HTTP answers.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// TCP connections accepted since start.
    pub fn connections_accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// TCP connections open right now.
    pub fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// WebSocket handshakes this server completed (101 written).
    pub fn upgrades(&self) -> usize {
        self.shared.upgrades.load(Ordering::SeqCst)
    }

    /// Text and binary WebSocket messages the echo backend received (and echoed, unless it died
    /// on that message).
    pub fn messages_received(&self) -> usize {
        self.shared.messages.load(Ordering::SeqCst)
    }

    /// Total raw bytes ever received, over all connections. Counted even when recording is off.
    pub fn bytes_received(&self) -> usize {
        self.shared.bytes_received.load(Ordering::SeqCst)
    }

    /// Total raw bytes ever written, over all connections.
    pub fn bytes_sent(&self) -> usize {
        self.shared.bytes_sent.load(Ordering::SeqCst)
    }

    /// Every byte received, connection after connection in accept order (each connection's bytes
    /// contiguous, even when connections overlapped in time). Empty when recording is off.
    pub fn received_raw(&self) -> Vec<u8> {
        let logs = lock(&self.shared.logs).clone();
        let mut all = Vec::new();
        for log in logs {
            all.extend_from_slice(&lock(&log.raw));
        }
        all
    }

    /// One [`ConnectionLog`] per accepted connection, in accept order. Empty when recording is
    /// off.
    pub fn connections(&self) -> Vec<ConnectionLog> {
        let logs = lock(&self.shared.logs).clone();
        logs.iter().map(|log| log.snapshot()).collect()
    }

    /// Every HTTP request head the server parsed (upgrade or plain), in arrival order, with the
    /// headers exactly as sent (case, order and duplicates preserved). Empty when recording is
    /// off.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Close every live connection with a FIN, as a dying backend would; returns once they are
    /// all closed (at most about five seconds). New connections are still accepted.
    pub async fn close_all(&self) {
        self.close_all_with(CloseMode::Fin).await;
    }

    /// Reset every live connection (RST); returns once they are all closed.
    pub async fn reset_all(&self) {
        self.close_all_with(CloseMode::Reset).await;
    }

    /// End every live connection the given way; returns once they are all closed (at most about
    /// five seconds). New connections are still accepted.
    pub async fn close_all_with(&self, mode: CloseMode) {
        let live: Vec<LiveConn> = lock(&self.shared.live).drain().map(|(_, c)| c).collect();
        let mut done = Vec::with_capacity(live.len());
        for conn in live {
            // The task may have finished a moment ago; then there is nothing to kill.
            let _ = conn.kill.send(mode);
            done.push(conn.done);
        }
        let all = futures_util::future::join_all(done);
        if tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .is_err()
        {
            warn!(server = %self.shared.name, "close_all: connections still open after 5s");
        }
    }

    /// Stop accepting: the listening socket is closed, so new connections are refused, while
    /// live connections carry on (a backend taken out of rotation, or dead for new clients).
    pub async fn stop_accepting(&self) {
        let task = lock(&self.accept).take();
        if let Some(task) = task {
            task.abort();
            // The listener lives in the task: once the task is gone, the port is closed.
            let _ = task.await;
        }
    }

    /// Stop accepting and close every live connection ([`CloseMode::Fin`]).
    pub async fn shutdown(&self) {
        self.stop_accepting().await;
        self.close_all().await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.accept).take() {
            task.abort();
        }
        for (_, conn) in lock(&self.shared.live).drain() {
            let _ = conn.kill.send(CloseMode::Fin);
        }
    }
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("name", &self.shared.name)
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

/// Lock a mutex, ignoring poisoning: a panicking test thread must not hide the recordings.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counters and recordings shared by the accept loop, the connection tasks and the handle.
pub(crate) struct Shared {
    name: String,
    addr: SocketAddr,
    record: bool,
    accepted: AtomicUsize,
    active: AtomicUsize,
    upgrades: AtomicUsize,
    messages: AtomicUsize,
    bytes_received: AtomicUsize,
    bytes_sent: AtomicUsize,
    next_id: AtomicU64,
    logs: Mutex<Vec<Arc<ConnLog>>>,
    requests: Mutex<Vec<RecordedRequest>>,
    live: Mutex<HashMap<u64, LiveConn>>,
}

impl Shared {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn record_request(&self, request: &RecordedRequest) {
        if self.record {
            lock(&self.requests).push(request.clone());
        }
    }

    pub(crate) fn count_upgrade(&self) {
        self.upgrades.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn count_message(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
    }
}

/// The recording of one connection (only when recording is on).
pub(crate) struct ConnLog {
    id: u64,
    peer: SocketAddr,
    raw: Mutex<Vec<u8>>,
    open: AtomicBool,
    upgraded: AtomicBool,
    proxy: Mutex<Option<ProxyHeader>>,
}

impl ConnLog {
    pub(crate) fn set_upgraded(&self) {
        self.upgraded.store(true, Ordering::SeqCst);
    }

    pub(crate) fn set_proxy(&self, header: ProxyHeader) {
        *lock(&self.proxy) = Some(header);
    }

    fn snapshot(&self) -> ConnectionLog {
        ConnectionLog {
            id: self.id,
            peer: self.peer,
            received: lock(&self.raw).clone(),
            open: self.open.load(Ordering::SeqCst),
            upgraded: self.upgraded.load(Ordering::SeqCst),
            proxy: lock(&self.proxy).clone(),
        }
    }
}

/// The kill switch of one live connection.
struct LiveConn {
    kill: oneshot::Sender<CloseMode>,
    /// Resolves (with an error: the sender is dropped) when the connection task has finished.
    done: oneshot::Receiver<()>,
}

/// What a handler gets for one accepted connection.
pub(crate) struct Conn {
    pub(crate) io: RecordingStream,
    pub(crate) peer: SocketAddr,
    pub(crate) id: u64,
    /// Fires with a close code when the server wants a graceful WebSocket close
    /// ([`CloseMode::WebSocketClose`]); handlers that cannot do that simply return.
    pub(crate) graceful: oneshot::Receiver<u16>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) log: Option<Arc<ConnLog>>,
}

pub(crate) type Handler = Arc<dyn Fn(Conn) -> BoxFuture<'static, ()> + Send + Sync>;

/// Bind `bind`, start the accept loop and return the handle.
pub(crate) async fn spawn_server(
    bind: SocketAddr,
    name: Option<String>,
    kind: &str,
    record: bool,
    handler: Handler,
) -> io::Result<ServerHandle> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let name = name.unwrap_or_else(|| format!("{kind}-{}", addr.port()));
    let shared = Arc::new(Shared {
        name,
        addr,
        record,
        accepted: AtomicUsize::new(0),
        active: AtomicUsize::new(0),
        upgrades: AtomicUsize::new(0),
        messages: AtomicUsize::new(0),
        bytes_received: AtomicUsize::new(0),
        bytes_sent: AtomicUsize::new(0),
        next_id: AtomicU64::new(0),
        logs: Mutex::new(Vec::new()),
        requests: Mutex::new(Vec::new()),
        live: Mutex::new(HashMap::new()),
    });
    let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), handler));
    Ok(ServerHandle {
        shared,
        accept: Mutex::new(Some(task)),
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, handler: Handler) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off a little instead of spinning.
                warn!(server = %shared.name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        shared.active.fetch_add(1, Ordering::SeqCst);
        let log = shared.record.then(|| {
            let log = Arc::new(ConnLog {
                id,
                peer,
                raw: Mutex::new(Vec::new()),
                open: AtomicBool::new(true),
                upgraded: AtomicBool::new(false),
                proxy: Mutex::new(None),
            });
            lock(&shared.logs).push(Arc::clone(&log));
            log
        });
        let (kill_tx, kill_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        lock(&shared.live).insert(
            id,
            LiveConn {
                kill: kill_tx,
                done: done_rx,
            },
        );
        tokio::spawn(run_conn(
            tcp,
            peer,
            id,
            Arc::clone(&shared),
            log,
            Arc::clone(&handler),
            kill_rx,
            done_tx,
        ));
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_conn(
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: Arc<Shared>,
    log: Option<Arc<ConnLog>>,
    handler: Handler,
    kill: oneshot::Receiver<CloseMode>,
    done: oneshot::Sender<()>,
) {
    info!(server = %shared.name, conn = id, %peer, "connection accepted");
    // A second descriptor for the same socket: shutdown(2) and SO_LINGER act on the socket, so
    // the kill switch works whatever the handler is awaiting.
    let split = tcp.into_std().and_then(|std| {
        let ctl = std.try_clone()?;
        Ok((TcpStream::from_std(std)?, ctl))
    });
    match split {
        Ok((tcp, ctl)) => {
            let (graceful_tx, graceful_rx) = oneshot::channel();
            let conn = Conn {
                io: RecordingStream {
                    inner: tcp,
                    shared: Arc::clone(&shared),
                    log: log.clone(),
                    received: 0,
                },
                peer,
                id,
                graceful: graceful_rx,
                shared: Arc::clone(&shared),
                log: log.clone(),
            };
            let mut serve = handler(conn);
            tokio::select! {
                () = &mut serve => {}
                mode = kill => match mode {
                    Ok(CloseMode::Fin) => {
                        let _ = ctl.shutdown(std::net::Shutdown::Both);
                    }
                    Ok(CloseMode::Reset) => {
                        let _ = socket2::SockRef::from(&ctl).set_linger(Some(Duration::ZERO));
                    }
                    Ok(CloseMode::WebSocketClose(code)) => {
                        let _ = graceful_tx.send(code);
                        let waited = tokio::time::timeout(Duration::from_secs(2), &mut serve).await;
                        if waited.is_err() {
                            let _ = ctl.shutdown(std::net::Shutdown::Both);
                        }
                    }
                    // The handle was dropped without a kill: let the connection run its course.
                    Err(_) => (&mut serve).await,
                },
            }
            // Drop the handler (and its descriptor) first: closing `ctl` is then the last close,
            // the one that sends the RST when the linger is zero.
            drop(serve);
            drop(ctl);
        }
        Err(error) => warn!(server = %shared.name, conn = id, %error, "cannot set up connection"),
    }
    if let Some(log) = &log {
        log.open.store(false, Ordering::SeqCst);
    }
    shared.active.fetch_sub(1, Ordering::SeqCst);
    lock(&shared.live).remove(&id);
    info!(server = %shared.name, conn = id, %peer, "connection closed");
    drop(done);
}

/// A TCP stream that counts (and, when recording, keeps) every byte read from it, before any
/// parsing: even a request that never parses is on record.
pub(crate) struct RecordingStream {
    inner: TcpStream,
    shared: Arc<Shared>,
    log: Option<Arc<ConnLog>>,
    received: usize,
}

impl RecordingStream {
    /// Bytes received on this connection so far.
    pub(crate) fn received(&self) -> usize {
        self.received
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.inner
    }
}

impl AsyncRead for RecordingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let fresh = buf.filled().get(before..).unwrap_or_default();
            if !fresh.is_empty() {
                this.received += fresh.len();
                this.shared
                    .bytes_received
                    .fetch_add(fresh.len(), Ordering::SeqCst);
                if let Some(log) = &this.log {
                    lock(&log.raw).extend_from_slice(fresh);
                }
            }
        }
        polled
    }
}

impl AsyncWrite for RecordingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.shared.bytes_sent.fetch_add(n, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            this.shared.bytes_sent.fetch_add(n, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
