//! The relay against real sockets on 127.0.0.1: a test client ↔ [relay] ↔ a test server.

// Test code: a failed unwrap is a failed test (helpers here are not `#[test]` functions).
#![allow(clippy::unwrap_used)]

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use sluice_splice::{
    CloseReason, Held, Pending, PendingPipe, PipePool, RelayMode, RelayOptions, RelayReport,
    Relayed, Side, Stop, Suspended, Traffic, relay, relay_copy, resume, stats,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout};

const DEADLINE: Duration = Duration::from_secs(15);
const MODES: [RelayMode; 3] = [RelayMode::Auto, RelayMode::Splice, RelayMode::Copy];

/// A live tunnel: the test holds both outer ends.
struct Tunnel {
    client: TcpStream,
    server: TcpStream,
    relay: JoinHandle<RelayReport>,
    traffic: Arc<Traffic>,
    stop: Option<oneshot::Sender<()>>,
}

impl Tunnel {
    async fn start(opts: RelayOptions, pool: Arc<PipePool>) -> Self {
        Self::start_with(opts, pool, None).await
    }

    /// `server_rcvbuf`: a small receive buffer on the server makes the relay hit "destination
    /// full" often.
    async fn start_with(
        opts: RelayOptions,
        pool: Arc<PipePool>,
        server_rcvbuf: Option<u32>,
    ) -> Self {
        let (client, proxy_client) = tcp_pair().await;
        let (proxy_backend, server) = match server_rcvbuf {
            None => tcp_pair().await,
            Some(size) => small_server_pair(size).await,
        };
        let traffic = Arc::new(Traffic::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let relay = tokio::spawn({
            let traffic = traffic.clone();
            async move {
                // Only an explicit send stops the tunnel, not the sender's drop.
                let stop = async {
                    if stopped.await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                closed(relay(proxy_client, proxy_backend, &opts, &pool, &traffic, stop).await)
            }
        });
        Self {
            client,
            server,
            relay,
            traffic,
            stop: Some(stop),
        }
    }

    async fn report(self) -> RelayReport {
        timeout(DEADLINE, self.relay)
            .await
            .expect("relay did not finish")
            .unwrap()
    }
}

/// The report of a tunnel that was never asked to suspend.
fn closed(relayed: Relayed) -> RelayReport {
    match relayed {
        Relayed::Closed(report) => report,
        Relayed::Suspended(_) => panic!("suspended without being asked"),
    }
}

/// Two connected sockets: (connecting end, accepted end).
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect = TcpStream::connect(listener.local_addr().unwrap());
    let (connected, accepted) = tokio::join!(connect, listener.accept());
    let (a, b) = (connected.unwrap(), accepted.unwrap().0);
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    (a, b)
}

/// Like [`tcp_pair`], the accepted end with a small receive buffer (and the connecting end
/// with a small send buffer).
async fn small_server_pair(size: u32) -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpSocket::new_v4().unwrap();
    listener.set_recv_buffer_size(size).unwrap();
    listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = listener.listen(8).unwrap();
    let connector = tokio::net::TcpSocket::new_v4().unwrap();
    connector.set_send_buffer_size(size).unwrap();
    let connect = connector.connect(listener.local_addr().unwrap());
    let (connected, accepted) = tokio::join!(connect, listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

fn opts(mode: RelayMode) -> RelayOptions {
    RelayOptions {
        mode,
        ..RelayOptions::default()
    }
}

/// 64 pipes of the kernel's default size, of which 2 may grow to 1 MiB (half the budget).
fn pool() -> Arc<PipePool> {
    Arc::new(PipePool::new(64, 0).grow_to(1 << 20))
}

/// Deterministic pseudo-random bytes (xorshift64), so a reader can check what it got.
struct Pattern(u64);

impl Pattern {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

/// FNV-1a over a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checksum(u64);

impl Checksum {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Writes `len` pattern bytes then shuts the write half; returns their checksum.
async fn send<W: AsyncWrite + Unpin>(w: &mut W, len: usize, seed: u64) -> Checksum {
    let mut pattern = Pattern::new(seed);
    let mut sum = Checksum::new();
    let mut chunk = vec![0; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        pattern.fill(&mut chunk[..n]);
        sum.update(&chunk[..n]);
        w.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    w.shutdown().await.unwrap();
    sum
}

/// Reads to end of stream; returns the length and checksum.
async fn receive<R: AsyncRead + Unpin>(r: &mut R) -> (usize, Checksum) {
    let mut sum = Checksum::new();
    let mut total = 0;
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return (total, sum);
        }
        sum.update(&buf[..n]);
        total += n;
    }
}

/// Sends `up` bytes client → server and `down` bytes server → client at once, both ending with
/// a half-close, and checks every byte on both ends.
async fn exchange<C, S>(client: C, server: S, up: usize, down: usize)
where
    C: AsyncRead + AsyncWrite + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut server_rx, mut server_tx) = tokio::io::split(server);
    let seed = (up as u64) << 1;
    let (sent_up, sent_down, got_up, got_down) = tokio::join!(
        send(&mut client_tx, up, seed),
        send(&mut server_tx, down, seed + 1),
        receive(&mut server_rx),
        receive(&mut client_rx),
    );
    assert_eq!(got_up, (up, sent_up), "client → server, {up} bytes");
    assert_eq!(got_down, (down, sent_down), "server → client, {down} bytes");
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn ping(from: &mut TcpStream, to: &mut TcpStream, msg: &[u8]) {
    from.write_all(msg).await.unwrap();
    let mut got = vec![0; msg.len()];
    timeout(DEADLINE, to.read_exact(&mut got))
        .await
        .expect("ping lost")
        .unwrap();
    assert_eq!(got, msg);
}

const SIZES: [usize; 7] = [
    1,
    1000,
    16 * 1024,
    64 * 1024 + 1,
    300_001,
    1024 * 1024,
    8 * 1024 * 1024,
];

async fn bytes_intact(mode: RelayMode) {
    let pool = pool();
    let mut tunnels = JoinSet::new();
    for (i, &size) in SIZES.iter().enumerate() {
        let pool = pool.clone();
        // Different sizes each way, so a mixed-up direction cannot pass.
        let down = SIZES[SIZES.len() - 1 - i];
        tunnels.spawn(async move {
            let t = Tunnel::start(opts(mode), pool).await;
            let (client, server) = (t.client, t.server);
            exchange(client, server, size, down).await;
            let report = timeout(DEADLINE, t.relay).await.unwrap().unwrap();
            (size, down, report)
        });
    }
    while let Some(joined) = tunnels.join_next().await {
        let (up, down, report) = joined.unwrap();
        assert_eq!(report.client_to_backend, up as u64, "{mode:?}");
        assert_eq!(report.backend_to_client, down as u64, "{mode:?}");
        assert_eq!(
            report.spliced_bytes + report.copied_bytes,
            (up + down) as u64
        );
        assert!(
            matches!(report.closed_by, CloseReason::Client | CloseReason::Backend),
            "{:?}",
            report.closed_by
        );
        assert!(report.error.is_none());
        match mode {
            RelayMode::Copy => assert_eq!(report.spliced_bytes, 0),
            RelayMode::Splice if cfg!(target_os = "linux") => {
                assert_eq!(report.copied_bytes, 0, "the pool had room");
            }
            RelayMode::Splice => {}
            RelayMode::Auto => {}
        }
    }
    assert_eq!(pool.in_use(), 0, "every pipe returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_intact_auto() {
    bytes_intact(RelayMode::Auto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_intact_splice() {
    bytes_intact(RelayMode::Splice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_intact_copy() {
    bytes_intact(RelayMode::Copy).await;
}

#[tokio::test]
async fn odd_buffer_sizes_keep_bytes_intact() {
    for buffer_size in [0, 1, 7, 4097] {
        for mode in MODES {
            let opts = RelayOptions {
                mode,
                buffer_size,
                idle_timeout: None,
                half_closed_timeout: None,
            };
            let t = Tunnel::start(opts, pool()).await;
            exchange(t.client, t.server, 20_000, 30_000).await;
            let report = timeout(DEADLINE, t.relay).await.unwrap().unwrap();
            assert_eq!(report.client_to_backend, 20_000);
            assert_eq!(report.backend_to_client, 30_000);
        }
    }
}

/// A slow reader behind small socket buffers: the relay finds the destination full again and
/// again with bytes left in its pipe or buffer, and must resume each time without losing
/// readiness on the source (the EAGAIN rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_byte() {
    for mode in MODES {
        let mut t = Tunnel::start_with(opts(mode), pool(), Some(4096)).await;
        let len = 2 << 20;
        let mut client = t.client;
        let writer = tokio::spawn(async move { send(&mut client, len, 42).await });
        let mut sum = Checksum::new();
        let mut got = 0;
        let mut buf = [0u8; 1500];
        loop {
            let n = timeout(DEADLINE, t.server.read(&mut buf))
                .await
                .expect("relay stalled")
                .unwrap();
            if n == 0 {
                break;
            }
            sum.update(&buf[..n]);
            got += n;
            tokio::task::yield_now().await;
        }
        assert_eq!((got, sum), (len, writer.await.unwrap()), "{mode:?}");
        t.server.shutdown().await.unwrap();
        let report = timeout(DEADLINE, t.relay).await.unwrap().unwrap();
        assert_eq!(report.client_to_backend, len as u64);
    }
}

#[tokio::test]
async fn client_half_close_still_gets_the_reply() {
    for mode in MODES {
        let mut t = Tunnel::start(opts(mode), pool()).await;
        t.client.write_all(b"request").await.unwrap();
        t.client.shutdown().await.unwrap();

        let mut request = Vec::new();
        t.server.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"request");
        let reply = vec![9u8; 200_000];
        t.server.write_all(&reply).await.unwrap();
        t.server.shutdown().await.unwrap();

        let mut got = Vec::new();
        t.client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, reply, "{mode:?}");
        let report = t.report().await;
        assert_eq!(report.closed_by, CloseReason::Client, "{mode:?}");
        assert_eq!(report.client_to_backend, 7);
        assert_eq!(report.backend_to_client, 200_000);
    }
}

#[tokio::test]
async fn backend_half_close_still_gets_the_request() {
    for mode in MODES {
        let mut t = Tunnel::start(opts(mode), pool()).await;
        t.server.write_all(b"banner").await.unwrap();
        t.server.shutdown().await.unwrap();

        let mut banner = Vec::new();
        t.client.read_to_end(&mut banner).await.unwrap();
        assert_eq!(banner, b"banner");
        t.client.write_all(b"late words").await.unwrap();
        t.client.shutdown().await.unwrap();

        let mut got = Vec::new();
        t.server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"late words", "{mode:?}");
        let report = t.report().await;
        assert_eq!(report.closed_by, CloseReason::Backend, "{mode:?}");
    }
}

#[tokio::test]
async fn backend_reset_ends_the_tunnel_with_an_error() {
    for mode in MODES {
        let mut t = Tunnel::start(opts(mode), pool()).await;
        ping(&mut t.client, &mut t.server, b"hello").await;
        t.server.set_zero_linger().unwrap();
        drop(t.server);

        // The client sees its side closed too.
        let mut rest = Vec::new();
        let _ = timeout(DEADLINE, t.client.read_to_end(&mut rest))
            .await
            .unwrap();
        let report = timeout(DEADLINE, t.relay).await.unwrap().unwrap();
        assert_eq!(
            report.closed_by,
            CloseReason::Error {
                side: Side::Backend,
                kind: io::ErrorKind::ConnectionReset
            },
            "{mode:?}"
        );
        assert_eq!(report.closed_by.label(), "backend_error");
        assert!(report.error.is_some());
    }
}

#[tokio::test]
async fn client_reset_ends_the_tunnel_with_an_error() {
    for mode in MODES {
        let mut t = Tunnel::start(opts(mode), pool()).await;
        ping(&mut t.server, &mut t.client, b"hello").await;
        t.client.set_zero_linger().unwrap();
        drop(t.client);

        let report = timeout(DEADLINE, t.relay).await.unwrap().unwrap();
        assert_eq!(
            report.closed_by,
            CloseReason::Error {
                side: Side::Client,
                kind: io::ErrorKind::ConnectionReset
            },
            "{mode:?}"
        );
        // The backend sees its side closed.
        let mut rest = Vec::new();
        let _ = timeout(DEADLINE, t.server.read_to_end(&mut rest))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn writing_to_a_vanished_client_is_a_client_error() {
    let pool = pool();
    let mut t = Tunnel::start(opts(RelayMode::Splice), pool.clone()).await;
    ping(&mut t.server, &mut t.client, b"hello").await;
    // The client stops reading and vanishes while the backend streams.
    drop(t.client);
    let flood = vec![1u8; 64 * 1024];
    while t.server.write_all(&flood).await.is_ok() {
        if t.relay.is_finished() {
            break;
        }
    }
    let report = timeout(DEADLINE, t.relay).await.unwrap().unwrap();
    assert!(
        matches!(
            report.closed_by,
            CloseReason::Error {
                side: Side::Client,
                ..
            }
        ),
        "{:?}",
        report.closed_by
    );
    assert_eq!(pool.in_use(), 0);
}

#[tokio::test]
async fn idle_timeout_closes_a_quiet_tunnel() {
    // Both modes at once: each takes a few seconds.
    tokio::join!(
        idle_timeout_closes_a_quiet_tunnel_in(RelayMode::Splice),
        idle_timeout_closes_a_quiet_tunnel_in(RelayMode::Copy)
    );
}

async fn idle_timeout_closes_a_quiet_tunnel_in(mode: RelayMode) {
    // Traffic every fifth of the timeout: a loaded machine may stretch a pause several times
    // over before the tunnel looks idle.
    let idle = Duration::from_secs(1);
    let pause = idle / 5;
    let opts = RelayOptions {
        mode,
        idle_timeout: Some(idle),
        ..RelayOptions::default()
    };
    let mut t = Tunnel::start(opts, pool()).await;
    // Traffic keeps it open past the timeout...
    let mut last_sent = Instant::now();
    for _ in 0..8 {
        last_sent = Instant::now();
        ping(&mut t.client, &mut t.server, b"ping").await;
        ping(&mut t.server, &mut t.client, b"pong").await;
        tokio::time::sleep(pause).await;
    }
    assert!(!t.relay.is_finished(), "{mode:?}: closed while active");
    // ...then silence closes it, a whole timeout after the last bytes moved (sent after
    // `last_sent`).
    let report = timeout(DEADLINE, t.relay).await.unwrap().unwrap();
    assert_eq!(report.closed_by, CloseReason::IdleTimeout, "{mode:?}");
    assert!(
        last_sent.elapsed() >= idle,
        "{mode:?}: {:?}",
        last_sent.elapsed()
    );
    assert!(report.duration >= idle + pause * 7, "{mode:?}");
    let mut rest = Vec::new();
    let _ = timeout(DEADLINE, t.client.read_to_end(&mut rest))
        .await
        .unwrap();
}

/// Traffic with no pause at all outlives the idle timer (which fires, and finds the tunnel busy,
/// on polls that also move bytes); silence afterwards still closes the tunnel a timeout after
/// the last bytes. (A relay that looked at its timer only on quiet polls left it fired and
/// unarmed here, and the silent tunnel stayed open.)
#[tokio::test]
async fn idle_timeout_closes_a_tunnel_that_fell_silent_after_busy_traffic() {
    let idle = Duration::from_millis(400);
    for mode in [RelayMode::Copy, RelayMode::Splice] {
        let opts = RelayOptions {
            mode,
            idle_timeout: Some(idle),
            ..RelayOptions::default()
        };
        let mut t = Tunnel::start(opts, pool()).await;
        let busy = Instant::now();
        while busy.elapsed() < idle * 3 {
            ping(&mut t.client, &mut t.server, b"ping").await;
            ping(&mut t.server, &mut t.client, b"pong").await;
        }
        assert!(!t.relay.is_finished(), "{mode:?}: closed while active");
        let silent = Instant::now();
        let report = timeout(DEADLINE, t.relay).await.unwrap().unwrap();
        assert_eq!(report.closed_by, CloseReason::IdleTimeout, "{mode:?}");
        assert!(
            silent.elapsed() >= idle / 2,
            "{mode:?}: {:?}",
            silent.elapsed()
        );
    }
}

#[tokio::test]
async fn half_closed_timeout_closes_a_tunnel_whose_other_side_never_ends() {
    let limit = Duration::from_millis(300);
    for mode in MODES {
        let opts = RelayOptions {
            mode,
            half_closed_timeout: Some(limit),
            ..RelayOptions::default()
        };
        let mut t = Tunnel::start(opts, pool()).await;
        ping(&mut t.client, &mut t.server, b"hello").await;
        // The client ends its half; the backend keeps its own open and keeps talking.
        t.client.shutdown().await.unwrap();
        // The backend sees the end of the client's half.
        let mut rest = Vec::new();
        t.server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let half_closed = Instant::now();
        let mut server = t.server;
        let chatter = tokio::spawn(async move {
            while server.write_all(b"still here").await.is_ok() {
                tokio::time::sleep(limit / 10).await;
            }
        });
        let report = timeout(DEADLINE, t.relay).await.unwrap().unwrap();
        let took = half_closed.elapsed();
        chatter.abort();
        assert_eq!(report.closed_by, CloseReason::HalfClosedTimeout, "{mode:?}");
        assert_eq!(report.closed_by.label(), "half_closed_timeout");
        assert!(took >= limit * 9 / 10, "{mode:?}: closed after {took:?}");
        // Not much later either (a loaded machine fires timers late, never early).
        assert!(
            took < limit + Duration::from_secs(2),
            "{mode:?}: closed after {took:?}"
        );
        assert!(report.backend_to_client > 5, "traffic did not keep it open");
    }
}

#[tokio::test]
async fn half_closed_timeout_spares_tunnels_that_finish_in_time() {
    for mode in MODES {
        let opts = RelayOptions {
            mode,
            half_closed_timeout: Some(Duration::from_secs(5)),
            ..RelayOptions::default()
        };
        let mut t = Tunnel::start(opts, pool()).await;
        t.client.write_all(b"request").await.unwrap();
        t.client.shutdown().await.unwrap();
        let mut request = Vec::new();
        t.server.read_to_end(&mut request).await.unwrap();
        t.server.write_all(b"reply").await.unwrap();
        t.server.shutdown().await.unwrap();
        let mut got = Vec::new();
        t.client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"reply");
        let report = t.report().await;
        assert_eq!(report.closed_by, CloseReason::Client, "{mode:?}");
    }
}

#[tokio::test]
async fn relay_copy_honours_the_half_closed_timeout() {
    let (client, proxy_client) = tcp_pair().await;
    let (proxy_backend, mut server) = tcp_pair().await;
    let opts = RelayOptions {
        half_closed_timeout: Some(Duration::from_millis(200)),
        ..RelayOptions::default()
    };
    let traffic = Traffic::default();
    let mut client = client;
    client.shutdown().await.unwrap();
    let relay = relay_copy(
        proxy_client,
        proxy_backend,
        &opts,
        &traffic,
        std::future::pending::<()>(),
    );
    let report = timeout(DEADLINE, relay).await.unwrap();
    assert_eq!(report.closed_by, CloseReason::HalfClosedTimeout);
    let mut rest = Vec::new();
    let _ = timeout(DEADLINE, server.read_to_end(&mut rest))
        .await
        .unwrap();
}

#[tokio::test]
async fn stop_ends_the_tunnel() {
    for mode in MODES {
        let mut t = Tunnel::start(opts(mode), pool()).await;
        ping(&mut t.client, &mut t.server, b"hello").await;
        t.stop.take().unwrap().send(()).unwrap();
        let report = timeout(DEADLINE, t.relay).await.unwrap().unwrap();
        assert_eq!(report.closed_by, CloseReason::Stopped);
        assert_eq!(report.closed_by.label(), "stopped");
        let mut rest = Vec::new();
        let closed = timeout(DEADLINE, t.client.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the client socket was closed");
    }
}

#[tokio::test]
async fn stop_interrupts_a_busy_tunnel() {
    let pool = pool();
    let mut t = Tunnel::start(opts(RelayMode::Auto), pool.clone()).await;
    let (mut server_rx, _server_tx) = t.server.into_split();
    let drain = tokio::spawn(async move { receive(&mut server_rx).await });
    let flood = vec![3u8; 256 * 1024];
    let traffic = t.traffic.clone();
    let mut client = t.client;
    let writer = tokio::spawn(async move { while client.write_all(&flood).await.is_ok() {} });
    wait_until("bytes to flow", || {
        traffic.client_to_backend.load(Relaxed) > 4 << 20
    })
    .await;
    t.stop.take().unwrap().send(()).unwrap();
    let report = timeout(DEADLINE, t.relay).await.unwrap().unwrap();
    assert_eq!(report.closed_by, CloseReason::Stopped);
    timeout(DEADLINE, writer).await.unwrap().unwrap();
    timeout(DEADLINE, drain).await.unwrap().unwrap();
    assert_eq!(pool.in_use(), 0);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn empty_pool_falls_back_to_copy_and_counts_it() {
    let fallbacks = stats().copy_fallbacks();
    let t = Tunnel::start(opts(RelayMode::Splice), Arc::new(PipePool::new(0, 0))).await;
    exchange(t.client, t.server, 1 << 20, 1 << 20).await;
    let report = timeout(DEADLINE, t.relay).await.unwrap().unwrap();
    assert_eq!(report.spliced_bytes, 0);
    assert_eq!(report.copied_bytes, 2 << 20);
    assert!(stats().copy_fallbacks() >= fallbacks + 2, "both directions");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn pipes_go_back_to_the_pool_and_an_idle_tunnel_holds_none() {
    let pool = pool();
    let mut t = Tunnel::start(opts(RelayMode::Splice), pool.clone()).await;
    let created = stats().pipes_created();
    let mut data = vec![5u8; 200_000];
    t.client.write_all(&data).await.unwrap();
    t.server.read_exact(&mut data).await.unwrap();
    t.server.write_all(&data).await.unwrap();
    t.client.read_exact(&mut data).await.unwrap();

    // Quiet now: both directions gave their pipe back, the tunnel lives on.
    wait_until("pipes back in the pool", || pool.in_use() == 0).await;
    assert!(pool.idle() >= 1);
    assert!(!t.relay.is_finished());
    assert!(stats().pipes_created() >= created);

    // The next burst reuses an idle pipe.
    let idle = pool.idle();
    ping(&mut t.client, &mut t.server, b"again").await;
    wait_until("pipe back again", || pool.in_use() == 0).await;
    assert_eq!(pool.idle(), idle);

    t.client.shutdown().await.unwrap();
    t.server.shutdown().await.unwrap();
    let report = t.report().await;
    assert_eq!(report.copied_bytes, 0);
    assert_eq!(pool.in_use(), 0);
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_splices_bulk_and_copies_chatter() {
    // Bulk, one way.
    let t = Tunnel::start(opts(RelayMode::Auto), pool()).await;
    exchange(t.client, t.server, 8 << 20, 0).await;
    let bulk = timeout(DEADLINE, t.relay).await.unwrap().unwrap();
    assert!(bulk.spliced_bytes > 0, "{bulk:?}");
    assert!(
        bulk.spliced_bytes > bulk.copied_bytes,
        "mostly spliced: {bulk:?}"
    );

    // A ping-pong of small messages.
    let mut t = Tunnel::start(opts(RelayMode::Auto), pool()).await;
    for _ in 0..200 {
        ping(&mut t.client, &mut t.server, &[1; 32]).await;
        ping(&mut t.server, &mut t.client, &[2; 32]).await;
    }
    t.client.shutdown().await.unwrap();
    t.server.shutdown().await.unwrap();
    let chatter = t.report().await;
    assert_eq!(chatter.spliced_bytes, 0, "{chatter:?}");
    assert_eq!(chatter.copied_bytes, 2 * 200 * 32);
}

#[tokio::test]
async fn traffic_counters_move_during_the_tunnel() {
    for mode in MODES {
        let mut t = Tunnel::start(opts(mode), pool()).await;
        ping(&mut t.client, &mut t.server, &[0; 1000]).await;
        let traffic = t.traffic.clone();
        wait_until("client → backend bytes counted", || {
            traffic.client_to_backend.load(Relaxed) == 1000
        })
        .await;
        ping(&mut t.server, &mut t.client, &[0; 321]).await;
        wait_until("backend → client bytes counted", || {
            traffic.backend_to_client.load(Relaxed) == 321
        })
        .await;
        assert!(!t.relay.is_finished());
        t.stop.take().unwrap().send(()).unwrap();
        let report = timeout(DEADLINE, t.relay).await.unwrap().unwrap();
        assert_eq!(
            (report.client_to_backend, report.backend_to_client),
            (1000, 321)
        );
    }
}

#[tokio::test]
async fn relay_copy_moves_any_streams() {
    let (client_app, client_end) = tokio::io::duplex(8 * 1024);
    let (backend_end, backend_app) = tokio::io::duplex(8 * 1024);
    let traffic = Arc::new(Traffic::default());
    let relay = tokio::spawn({
        let traffic = traffic.clone();
        async move {
            relay_copy(
                client_end,
                backend_end,
                &RelayOptions::default(),
                &traffic,
                std::future::pending::<()>(),
            )
            .await
        }
    });
    exchange(client_app, backend_app, 1 << 20, 300_000).await;
    let report = timeout(DEADLINE, relay).await.unwrap().unwrap();
    assert_eq!(report.client_to_backend, 1 << 20);
    assert_eq!(report.backend_to_client, 300_000);
    assert_eq!(report.spliced_bytes, 0);
    assert!(matches!(
        report.closed_by,
        CloseReason::Client | CloseReason::Backend
    ));
    assert_eq!(traffic.client_to_backend.load(Relaxed), 1 << 20);
}

#[tokio::test]
async fn relay_copy_idle_timeout_and_stop() {
    let opts = RelayOptions {
        idle_timeout: Some(Duration::from_millis(200)),
        ..RelayOptions::default()
    };
    let (_client_app, client_end) = tokio::io::duplex(1024);
    let (backend_end, _backend_app) = tokio::io::duplex(1024);
    let report = timeout(
        DEADLINE,
        relay_copy(
            client_end,
            backend_end,
            &opts,
            &Traffic::default(),
            std::future::pending::<()>(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(report.closed_by, CloseReason::IdleTimeout);

    let (_client_app, client_end) = tokio::io::duplex(1024);
    let (backend_end, _backend_app) = tokio::io::duplex(1024);
    let report = relay_copy(
        client_end,
        backend_end,
        &RelayOptions::default(),
        &Traffic::default(),
        std::future::ready(()),
    )
    .await;
    assert_eq!(report.closed_by, CloseReason::Stopped);
}

#[test]
fn relay_futures_are_send_and_small() {
    fn assert_send<T: Send>(_: &T) {}
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (a, b) = tcp_pair().await;
        let pool = PipePool::new(1, 0);
        let traffic = Traffic::default();
        let opts = RelayOptions::default();
        let fut = relay(a, b, &opts, &pool, &traffic, std::future::ready(()));
        assert_send(&fut);
        // An idle tunnel's memory is mostly its task, and the relay future is most of that: pin
        // its size so that a change cannot grow it unnoticed (an async fn holding its arguments
        // twice, a timer or buffer carried inline). Measured 536 bytes (x86_64, a one-byte
        // `stop`): the hand-written `Run`, its directions without per-poll byte counts and
        // with `u32` buffer offsets (128 bytes each); 728 as an async block, 1,336 while
        // `relay` and `tunnel::run` were async fns.
        let size = std::mem::size_of_val(&fut);
        assert!(
            size <= 536,
            "the relay future grew to {size} bytes (pinned at 536)"
        );
        assert_eq!(closed(fut.await).closed_by, CloseReason::Stopped);
    });
}

/// Relays `client` ↔ `backend`, suspending the tunnel every `every` and resuming it from what
/// came back, until it ends; with `elsewhere`, each suspended tunnel crosses "processes": its
/// sockets and pipes are taken as new descriptors (what a successor receives) and the
/// originals closed. Returns the report and, per suspension, the bytes that were in flight.
async fn relay_suspending(
    client: TcpStream,
    backend: TcpStream,
    opts: RelayOptions,
    pool: Arc<PipePool>,
    every: Duration,
    elsewhere: bool,
) -> (RelayReport, Vec<usize>) {
    let traffic = Traffic::default();
    let mut tunnel = Suspended::new(client, backend);
    let mut in_flight = Vec::new();
    loop {
        let stop = async {
            tokio::time::sleep(every).await;
            Stop::Suspend
        };
        match resume(tunnel, &opts, &pool, &traffic, stop).await {
            Relayed::Closed(report) => return (report, in_flight),
            Relayed::Suspended(s) => {
                assert!(s.is_portable(), "bytes in flight stayed in memory");
                in_flight
                    .push(s.client_to_backend.pending.len() + s.backend_to_client.pending.len());
                assert_eq!(
                    s.client_to_backend.delivered(),
                    traffic.client_to_backend.load(Relaxed)
                );
                tunnel = if elsewhere { carried(s) } else { s };
            }
        }
    }
}

/// A suspended tunnel as another process receives it: every descriptor duplicated (what
/// `SCM_RIGHTS` does), the originals closed, pipes checked against their counts.
fn carried(s: Suspended) -> Suspended {
    use std::os::fd::AsFd;
    fn socket(stream: &TcpStream) -> TcpStream {
        let fd = stream.as_fd().try_clone_to_owned().unwrap();
        TcpStream::from_std(std::net::TcpStream::from(fd)).unwrap()
    }
    fn held(h: &Held) -> Held {
        let pending = match &h.pending {
            Pending::Empty => Pending::Empty,
            Pending::Pipe(pipe) => {
                let (r, w) = pipe.fds();
                let (r, w) = (
                    r.try_clone_to_owned().unwrap(),
                    w.try_clone_to_owned().unwrap(),
                );
                Pending::Pipe(PendingPipe::adopt(r, w, pipe.len()).unwrap())
            }
            Pending::Bytes(_) => panic!("not portable"),
        };
        Held {
            pending,
            read_eof: h.read_eof,
            done: h.done,
            spliced: h.spliced,
            copied: h.copied,
        }
    }
    Suspended {
        client: socket(&s.client),
        backend: socket(&s.backend),
        client_to_backend: held(&s.client_to_backend),
        backend_to_client: held(&s.backend_to_client),
        first_eof: s.first_eof,
        idle_for: s.idle_for,
        half_closed_for: s.half_closed_for,
    }
}

/// Both ways at once, up to 8 MiB, through a slow reader: suspended every few milliseconds
/// (in this process, and carried as another process would receive it), every byte arrives in
/// order, the counts go on, and the tunnel still ends with the right side named.
#[tokio::test]
async fn a_suspended_tunnel_resumes_byte_exact() {
    for elsewhere in [false, true] {
        for mode in MODES {
            let (client, proxy_client) = tcp_pair().await;
            let (proxy_backend, server) = small_server_pair(16 * 1024).await;
            let pool = pool();
            let (up, down) = (3 * 1024 * 1024 + 7, 8 * 1024 * 1024 + 1);
            let relay = tokio::spawn(relay_suspending(
                proxy_client,
                proxy_backend,
                opts(mode),
                Arc::clone(&pool),
                Duration::from_millis(2),
                elsewhere,
            ));
            timeout(DEADLINE, exchange(client, server, up, down))
                .await
                .expect("exchange stalled");
            let (report, in_flight) = timeout(DEADLINE, relay).await.unwrap().unwrap();
            assert_eq!(
                (report.client_to_backend, report.backend_to_client),
                (up as u64, down as u64),
                "{mode:?}"
            );
            assert!(
                matches!(report.closed_by, CloseReason::Client | CloseReason::Backend),
                "{mode:?}: {:?}",
                report.closed_by
            );
            assert!(!in_flight.is_empty(), "{mode:?}: never suspended");
            assert_eq!(pool.in_use(), 0, "{mode:?}: a pipe still lent");
        }
    }
}

/// A backend streams to a client that reads nothing: the relay fills the client's socket and
/// then its pipe. Suspended there, the pipe's bytes travel with the tunnel (as descriptors)
/// and reach the client, byte-exact, once it reads.
#[tokio::test]
async fn bytes_sitting_in_a_pipe_survive_suspension() {
    let (mut client, proxy_client) = tcp_pair().await;
    let (proxy_backend, mut server) = tcp_pair().await;
    let pool = pool();
    let opts = opts(RelayMode::Splice);
    let traffic = Traffic::default();
    let (suspend, suspended) = oneshot::channel::<()>();
    let stop = async {
        let _ = suspended.await;
        Stop::Suspend
    };
    let len = 16 * 1024 * 1024;
    let writer = tokio::spawn(async move {
        let sum = send(&mut server, len, 42).await;
        (server, sum)
    });
    let run = relay(proxy_client, proxy_backend, &opts, &pool, &traffic, stop);
    let mut run = std::pin::pin!(run);
    // Relay until the backend → client direction stops moving: the client's queue is full.
    let mut last = u64::MAX;
    let deadline = Instant::now() + DEADLINE;
    loop {
        tokio::select! {
            _ = run.as_mut() => panic!("the tunnel ended"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let now = traffic.backend_to_client.load(Relaxed);
        if now == last && now > 0 {
            break;
        }
        last = now;
        assert!(Instant::now() < deadline, "the relay never stalled");
    }
    suspend.send(()).unwrap();
    let Relayed::Suspended(s) = run.await else {
        panic!("not suspended")
    };
    let pending = s.backend_to_client.pending.len();
    assert!(pending > 0, "nothing was left in the pipe");
    assert!(matches!(s.backend_to_client.pending, Pending::Pipe(_)));
    let s = carried(s);
    let (opts, pool) = (opts.clone(), Arc::clone(&pool));
    let resumed = tokio::spawn(async move {
        let traffic = Traffic::default();
        closed(resume(s, &opts, &pool, &traffic, std::future::pending::<Stop>()).await)
    });
    client.shutdown().await.unwrap();
    let (got, sum) = timeout(DEADLINE, receive(&mut client)).await.unwrap();
    let (_server, sent) = writer.await.unwrap();
    assert_eq!((got, sum), (len, sent));
    let report = timeout(DEADLINE, resumed).await.unwrap().unwrap();
    assert_eq!(
        report.backend_to_client, len as u64,
        "counts go on across the suspension"
    );
}

/// A direction that had ended (its end of stream passed on) stays ended once resumed: the
/// other one goes on, and the tunnel ends when it does.
#[tokio::test]
async fn a_half_closed_tunnel_resumes_half_closed() {
    let (mut client, proxy_client) = tcp_pair().await;
    let (proxy_backend, mut server) = tcp_pair().await;
    let (pool, opts, traffic) = (pool(), opts(RelayMode::Auto), Traffic::default());
    let (suspend, suspended) = oneshot::channel::<()>();
    let stop = async {
        let _ = suspended.await;
        Stop::Suspend
    };
    let run = tokio::spawn({
        let (pool, opts) = (Arc::clone(&pool), opts.clone());
        async move {
            let traffic = Traffic::default();
            relay(proxy_client, proxy_backend, &opts, &pool, &traffic, stop).await
        }
    });
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(DEADLINE, server.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"last words");
    suspend.send(()).unwrap();
    let Relayed::Suspended(s) = timeout(DEADLINE, run).await.unwrap().unwrap() else {
        panic!("not suspended")
    };
    assert!(s.client_to_backend.done && s.client_to_backend.read_eof);
    assert_eq!(s.first_eof, Some(Side::Client));
    let resumed = tokio::spawn(async move {
        closed(
            resume(
                carried(s),
                &opts,
                &pool,
                &traffic,
                std::future::pending::<Stop>(),
            )
            .await,
        )
    });
    server.write_all(b"reply").await.unwrap();
    server.shutdown().await.unwrap();
    let mut reply = Vec::new();
    timeout(DEADLINE, client.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, b"reply");
    let report = timeout(DEADLINE, resumed).await.unwrap().unwrap();
    assert_eq!(report.closed_by, CloseReason::Client);
    assert_eq!(
        (report.client_to_backend, report.backend_to_client),
        (10, 5)
    );
}

/// The timers count on across a suspension: a tunnel idle for 2.5 s of a 3 s idle timeout
/// closes 0.5 s after it resumes, and one half-closed for 1 s of a 4 s limit, 3 s after.
#[tokio::test(start_paused = true)]
async fn timers_count_on_across_a_suspension() {
    let (_client, proxy_client) = tcp_pair().await;
    let (proxy_backend, _server) = tcp_pair().await;
    let (pool, traffic) = (pool(), Traffic::default());
    let idle = RelayOptions {
        idle_timeout: Some(Duration::from_secs(3)),
        ..opts(RelayMode::Auto)
    };
    let stop = async {
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        Stop::Suspend
    };
    let Relayed::Suspended(s) =
        relay(proxy_client, proxy_backend, &idle, &pool, &traffic, stop).await
    else {
        panic!("not suspended")
    };
    assert_eq!(s.idle_for, Duration::from_millis(2_500));
    let resumed = Instant::now();
    let report = closed(
        resume(
            carried(s),
            &idle,
            &pool,
            &traffic,
            std::future::pending::<Stop>(),
        )
        .await,
    );
    assert_eq!(report.closed_by, CloseReason::IdleTimeout);
    assert_eq!(resumed.elapsed(), Duration::from_millis(500));

    let (mut client, proxy_client) = tcp_pair().await;
    let (proxy_backend, mut server) = tcp_pair().await;
    let half_closed = RelayOptions {
        half_closed_timeout: Some(Duration::from_secs(4)),
        ..opts(RelayMode::Auto)
    };
    let (suspend, suspended) = oneshot::channel::<()>();
    let run = tokio::spawn({
        let (pool, opts) = (Arc::clone(&pool), half_closed.clone());
        async move {
            let traffic = Traffic::default();
            let stop = async {
                let _ = suspended.await;
                Stop::Suspend
            };
            relay(proxy_client, proxy_backend, &opts, &pool, &traffic, stop).await
        }
    });
    // The client's end of stream is passed on: the half-closed timer starts.
    client.shutdown().await.unwrap();
    let mut eof = Vec::new();
    server.read_to_end(&mut eof).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    suspend.send(()).unwrap();
    let Relayed::Suspended(s) = run.await.unwrap() else {
        panic!("not suspended")
    };
    let half = s.half_closed_for.expect("the half-closed timer ran");
    assert!(half <= Duration::from_secs(1), "{half:?}");
    let resumed = Instant::now();
    let report = closed(
        resume(
            carried(s),
            &half_closed,
            &pool,
            &traffic,
            std::future::pending::<Stop>(),
        )
        .await,
    );
    assert_eq!(report.closed_by, CloseReason::HalfClosedTimeout);
    assert_eq!(resumed.elapsed(), Duration::from_secs(4) - half);
    drop((client, server));
}
