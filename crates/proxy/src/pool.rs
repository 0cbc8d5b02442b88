//! Idle keep-alive connections to backends, reused by plain HTTP requests.
//!
//! After a plain request whose exchange ended cleanly (the whole request sent, the whole
//! response read, framed by length or chunks, the backend keeping the connection alive, not a
//! byte more), the backend connection is put here, keyed by pool name and backend address. The
//! next request sent to that backend takes it instead of connecting.
//!
//! Bounds: at most the pool's `idle_connections` per backend (the oldest is closed when one more
//! comes), each for at most the pool's `idle_timeout`. A reaper task, running only while
//! something is idle, closes connections as they expire and those the backend closed (checked
//! without blocking, `try_read`: end of file, an error or unexpected bytes all mean the
//! connection is no longer usable). A connection is checked the same way when taken; one that
//! the backend closes in the instant between that check and the request is the stale-connection
//! race the HTTP exchange retries once, for idempotent requests only.
//!
//! A connection is of one kind: plain TCP, or TLS made with one generation's `Upstream` (its
//! id). A request takes only a connection of the kind its pool has now: after a reload that
//! turns TLS on or off, or changes the CA, older idle connections are closed, not reused.
//!
//! Idle connections hold no `BackendGuard`: they are not load. The lock is a plain mutex held
//! for a map operation, never across an `await`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use sluice_balance::{Affinity, BackendGuard, Pool, Token};
use sluice_handshake::HandshakeError;
use sluice_tls::{BackendStream, ConnectError, Upstream};
use tokio::time::Instant;
use tracing::{debug, warn};

/// The idle backend connections of one server.
#[derive(Debug, Default)]
pub(crate) struct IdlePool {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Pool name → backend address → idle connections, oldest first.
    pools: HashMap<String, HashMap<SocketAddr, VecDeque<Idle>>>,
    reaper_running: bool,
}

#[derive(Debug)]
struct Idle {
    stream: BackendStream,
    /// [`kind`] of the `Upstream` it was made with.
    kind: u64,
    expires: Instant,
}

/// A backend connection for one request, and what it came with.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) stream: BackendStream,
    pub(crate) guard: BackendGuard,
    /// The affinity cookie to give the client, when the pool sets one.
    pub(crate) set_cookie: Option<Token>,
    /// Taken from the idle pool rather than connected now.
    pub(crate) reused: bool,
}

impl IdlePool {
    /// A connection to the best candidate of `pool` for `affinity`: an idle one to that
    /// backend when there is one, else a new one. Refusals and connect timeouts move on to the
    /// next candidate, as for upgrades (at most `connect_attempts`); the last failure is the
    /// answer. With a `preface` (a PROXY header), always a new connection that starts with it.
    pub(crate) async fn checkout(
        &self,
        pool: &Pool,
        tls: Option<&Upstream>,
        affinity: Affinity<'_>,
        connect_timeout: Duration,
        preface: &[u8],
    ) -> Result<Lease, HandshakeError> {
        let mut picker = pool.picker_for(affinity);
        let mut last_error = None;
        while let Some(guard) = picker.next_backend() {
            let addr = guard.addr();
            let set_cookie = picker.cookie_to_set().copied();
            // A connection opened with a preface (a PROXY header naming this client) is this
            // client's alone: never one of another's.
            let idle = if preface.is_empty() {
                self.take(pool.name(), addr, kind(tls))
            } else {
                None
            };
            if let Some(stream) = idle {
                return Ok(Lease {
                    stream,
                    guard,
                    set_cookie,
                    reused: true,
                });
            }
            match connect(addr, tls, preface, connect_timeout).await {
                Ok(stream) => {
                    debug!(
                        backend = %addr,
                        pool = pool.name(),
                        placement = picker.placement().map_or("", |p| p.label()),
                        "connected"
                    );
                    return Ok(Lease {
                        stream,
                        guard,
                        set_cookie,
                        reused: false,
                    });
                }
                Err(error) => {
                    // Passive checks count it like a refused upgrade's connect.
                    crate::health::connect_failed(pool, guard.backend(), failure_reason(&error));
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| HandshakeError::NoBackend {
            pool: pool.name().to_owned(),
        }))
    }

    /// Keeps `stream` (made with `tls`) for reuse by the next request to `addr` in `pool`: at
    /// most `max` per backend (the oldest goes), for `timeout`. `max == 0` closes it at once.
    pub(crate) fn put(
        &self,
        pool: &str,
        addr: SocketAddr,
        tls: Option<&Upstream>,
        stream: BackendStream,
        max: usize,
        timeout: Duration,
    ) {
        if max == 0 {
            return;
        }
        let mut inner = lock(&self.inner);
        let idle = inner
            .pools
            .entry(pool.to_owned())
            .or_default()
            .entry(addr)
            .or_default();
        idle.push_back(Idle {
            stream,
            kind: kind(tls),
            expires: Instant::now() + timeout,
        });
        while idle.len() > max {
            idle.pop_front();
        }
        if !inner.reaper_running {
            inner.reaper_running = true;
            tokio::spawn(reap(Arc::downgrade(&self.inner)));
        }
    }

    /// The most recently used live connection of this `kind` to `addr` in `pool`, if any;
    /// expired and dead ones, and those of another kind, met on the way are closed.
    fn take(&self, pool: &str, addr: SocketAddr, kind: u64) -> Option<BackendStream> {
        let mut inner = lock(&self.inner);
        let idle = inner.pools.get_mut(pool)?.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(candidate) = idle.pop_back() {
            if candidate.kind == kind && candidate.expires > now && is_open(&candidate.stream) {
                return Some(candidate.stream);
            }
        }
        None
    }

    /// How many connections are idle now, every backend together.
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner)
            .pools
            .values()
            .flat_map(HashMap::values)
            .map(VecDeque::len)
            .sum()
    }

    /// Closes every idle connection (shutdown).
    pub(crate) fn clear(&self) {
        lock(&self.inner).pools.clear();
    }
}

/// One connect to a backend: TCP, `preface` (a PROXY header, or nothing), then with `tls` the
/// TLS handshake, all within `timeout`. A handshake that fails (certificate not trusted, wrong
/// name, expired, not TLS) is a failed connect like a refusal: logged with why, and the caller
/// moves on to the next backend.
pub(crate) async fn connect(
    addr: SocketAddr,
    tls: Option<&Upstream>,
    preface: &[u8],
    timeout: Duration,
) -> Result<BackendStream, HandshakeError> {
    match sluice_tls::upstream::connect(addr, tls, preface, timeout).await {
        Ok(stream) => Ok(stream),
        Err(ConnectError::Refused(source)) => {
            warn!(backend = %addr, error = %source, "connect failed");
            Err(HandshakeError::BackendRefused {
                backend: addr,
                source,
            })
        }
        Err(ConnectError::Timeout) => {
            warn!(backend = %addr, timeout = ?timeout, tls = tls.is_some(), "connect timed out");
            Err(HandshakeError::BackendConnectTimeout { backend: addr })
        }
        Err(ConnectError::Tls { reason }) => {
            warn!(backend = %addr, error = %reason, "TLS handshake with the backend failed");
            Err(HandshakeError::BackendTls {
                backend: addr,
                reason,
            })
        }
    }
}

/// The idle-pool kind of connections made with `tls`: 0 for plain TCP, else its id.
fn kind(tls: Option<&Upstream>) -> u64 {
    tls.map_or(0, Upstream::id)
}

/// The passive-check reason of a failed [`connect`].
pub(crate) fn failure_reason(error: &HandshakeError) -> &'static str {
    match error {
        HandshakeError::BackendConnectTimeout { .. } => "connect_timeout",
        HandshakeError::BackendTls { .. } => "tls_failed",
        _ => "connect_refused",
    }
}

/// Whether an idle connection still looks usable: nothing to read on its socket (no end of
/// file, no error, no stray bytes from the backend; for TLS, no record either, such as a
/// close_notify: a connection found with one is closed).
fn is_open(stream: &BackendStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.tcp().try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Closes idle connections as they expire (and dead ones on the way), until none is left.
async fn reap(inner: Weak<Mutex<Inner>>) {
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else { return };
            let mut inner = lock(&inner);
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            inner.pools.retain(|_, backends| {
                backends.retain(|_, idle| {
                    idle.retain(|c| c.expires > now && is_open(&c.stream));
                    if let Some(first) = idle.iter().map(|c| c.expires).min() {
                        next = Some(next.map_or(first, |n| n.min(first)));
                    }
                    !idle.is_empty()
                });
                !backends.is_empty()
            });
            match next {
                Some(next) => next,
                None => {
                    inner.reaper_running = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves a map of sockets: still consistent.
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().expect("addr");
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.expect("connect"), server.expect("accept").0)
    }

    #[tokio::test]
    async fn keeps_at_most_max_and_hands_out_the_newest_live_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pool = IdlePool::default();
        let mut servers = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..3 {
            let (client, server) = pair(&listener).await;
            ports.push(client.local_addr().expect("addr").port());
            servers.push(server);
            pool.put(
                "p",
                addr,
                None,
                BackendStream::Plain(client),
                2,
                Duration::from_secs(60),
            );
        }
        assert_eq!(pool.len(), 2, "the oldest was closed");
        // The backend closes the newest one: it is skipped.
        let mut newest = servers.pop().expect("server");
        newest.shutdown().await.expect("shutdown");
        drop(newest);
        let deadline = Instant::now() + Duration::from_secs(5);
        let taken = loop {
            // The FIN may take a moment to arrive.
            let taken = pool.take("p", addr, 0).expect("one left");
            let port = taken.tcp().local_addr().expect("addr").port();
            if port != ports[2] || Instant::now() > deadline {
                break taken;
            }
            pool.put("p", addr, None, taken, 2, Duration::from_secs(60));
            tokio::task::yield_now().await;
        };
        assert_eq!(taken.tcp().local_addr().expect("addr").port(), ports[1]);
        assert_eq!(pool.len(), 0);
        assert!(pool.take("p", addr, 0).is_none());
        assert!(pool.take("other", addr, 0).is_none());
        // A connection of another kind (TLS of some generation) is closed, not handed out.
        pool.put("p", addr, None, taken, 2, Duration::from_secs(60));
        assert!(pool.take("p", addr, 7).is_none());
        assert_eq!(pool.len(), 0);
        let (client, _server) = pair(&listener).await;
        pool.put(
            "p",
            addr,
            None,
            BackendStream::Plain(client),
            0,
            Duration::from_secs(60),
        );
        assert_eq!(pool.len(), 0, "max 0 keeps nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn the_reaper_closes_expired_connections_and_stops() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pool = IdlePool::default();
        let (client, _server) = pair(&listener).await;
        pool.put(
            "p",
            addr,
            None,
            BackendStream::Plain(client),
            4,
            Duration::from_secs(4),
        );
        let (client, _server2) = pair(&listener).await;
        pool.put(
            "p",
            addr,
            None,
            BackendStream::Plain(client),
            4,
            Duration::from_secs(8),
        );
        assert_eq!(pool.len(), 2);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(pool.len(), 1);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(pool.len(), 0);
        assert!(!lock(&pool.inner).reaper_running);
    }
}
