//! The `sluice` process under resource attacks: file descriptor exhaustion (under a lowered
//! RLIMIT_NOFILE) and thousands of slow-head clients. A real process, so that its descriptors,
//! CPU time and memory are its own (read from /proc), and the test process holds only the
//! client sides.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Sluice, temp_file};
use futures_util::StreamExt;
use sluice_testkit::{
    EchoBackend, Message, RawClient, raw_exchange, raw_exchange_chunked, wait_until_async,
    ws_connect, ws_roundtrip,
};

const SOON: Duration = Duration::from_secs(20);

/// A process with an admin listener (for `/metrics`) in front of `backend`, both on port 0.
fn config(backend: SocketAddr, extra: &str) -> String {
    common::config(
        &[backend],
        "",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n{extra}"),
    )
}

/// A `sluice` process in front of `backend` with `extra` tables, and its admin address.
async fn start(backend: SocketAddr, extra: &str) -> (Sluice, SocketAddr) {
    let path = temp_file("sluice.toml", &config(backend, extra));
    let sluice = Sluice::start(&path, &[]).await;
    let admin = sluice.admin_addr().await;
    (sluice, admin)
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// User plus system CPU time of the process, in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime field 15.
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A client the proxy must refuse cleanly: a 503, or a close, never a hang or a 101.
async fn refused_cleanly(addr: SocketAddr) -> bool {
    let request = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    match raw_exchange(addr, request, SOON).await {
        Ok(response) => response.closed && matches!(response.status, None | Some(503)),
        // Connecting itself refused or reset: clean too.
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_refuses_new_clients_cleanly_keeps_tunnels_and_recovers() {
    let backend = EchoBackend::spawn().await;
    // A connection limit far above what the descriptors allow, so that descriptors run out
    // first; a long handshake deadline so that idle holders stay.
    let extra = "[limits]\nmax_connections = 10000\n\n[timeouts]\nhandshake = \"60s\"\n";
    let (sluice, admin) = start(backend.addr(), extra).await;
    let pid = sluice.child.id();
    // Settle the admin listener's own descriptors before counting.
    assert_eq!(
        common::metric(admin, "sluice_connections_shed_total").await,
        0.0
    );

    // Room for about 16 tunnels (two descriptors each) beyond what the process holds now.
    let limit = open_descriptors(pid) as u64 + 32;
    let nofile = rustix::process::Resource::Nofile;
    let pid_r = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    // The child inherited this process's limit; lower its soft limit only.
    let old = rustix::process::getrlimit(nofile);
    rustix::process::prlimit(
        Some(pid_r),
        nofile,
        rustix::process::Rlimit {
            current: Some(limit),
            maximum: old.maximum,
        },
    )
    .expect("lower RLIMIT_NOFILE");

    // Tunnels until the process refuses one.
    let mut tunnels = Vec::new();
    for _ in 0..200 {
        match ws_connect(sluice.addr, "/", &[]).await {
            Ok((ws, _)) => tunnels.push(ws),
            Err(_) => break,
        }
    }
    assert!(
        (4..200).contains(&tunnels.len()),
        "{} tunnels under {limit} descriptors",
        tunnels.len()
    );

    // Idle clients (half a head) take the few descriptors left, until accept itself finds
    // none: the process says so (the admin listener cannot answer now: it has no descriptor
    // either). At most a couple are left after the refused tunnel, so 40 is plenty.
    let mut holders = Vec::new();
    for _ in 0..40 {
        let mut holder = RawClient::connect(sluice.addr).await.expect("connect");
        // A shed holder may be closed before this arrives: that is the point.
        let _ = holder.send(b"GET / HTTP/1.1\r\n").await;
        holders.push(holder);
    }
    sluice
        .wait_log(&["out of file descriptors: refusing new clients"], SOON)
        .await;

    // Exhausted: established tunnels still relay.
    for (i, ws) in tunnels.iter_mut().enumerate() {
        let reply = ws_roundtrip(ws, Message::text(format!("still here {i}")))
            .await
            .expect("an established tunnel relays at exhaustion");
        assert_eq!(reply, Message::text(format!("still here {i}")));
    }
    // New clients are refused cleanly, and the loop does not spin meanwhile.
    let cpu_before = cpu_ticks(pid);
    let window = Instant::now();
    for _ in 0..10 {
        assert!(refused_cleanly(sluice.addr).await);
    }
    // Measure over at least two seconds of exhaustion (a spinning loop burns ~2 s of CPU).
    if let Some(rest) = Duration::from_secs(2).checked_sub(window.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let spent = cpu_ticks(pid) - cpu_before;
    let ticks_per_second = rustix::param::clock_ticks_per_second();
    let elapsed = window.elapsed().as_secs_f64();
    assert!(
        (spent as f64 / ticks_per_second as f64) < elapsed * 0.25,
        "{spent} ticks of CPU over {elapsed:.1} s at exhaustion: the accept loop spins"
    );

    // Descriptors freed: service resumes, and the counters tell what happened.
    drop(holders);
    for mut ws in tunnels {
        ws.close(None).await.expect("close");
        while let Some(Ok(_)) = ws.next().await {}
    }
    let resumed = wait_until_async(SOON, || async {
        match ws_connect(sluice.addr, "/", &[]).await {
            Ok((mut ws, _)) => ws_roundtrip(&mut ws, Message::text("back")).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(
        resumed,
        "service did not resume once descriptors were freed"
    );
    assert!(common::metric(admin, "sluice_accept_errors_total").await > 0.0);
    assert!(common::metric(admin, "sluice_connections_shed_total").await >= 10.0);
    assert!(sluice.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_slow_heads_are_cut_at_the_deadline_while_honest_clients_upgrade() {
    const SLOW: usize = 5000;
    const HONEST: usize = 200;
    let backend = EchoBackend::spawn().await;
    let (sluice, admin) = start(backend.addr(), "[timeouts]\nhandshake = \"3s\"\n").await;
    let pid = sluice.child.id();
    let addr = sluice.addr;

    // Slow clients: one byte of a valid head per second, which would take minutes to finish.
    let head = b"GET /slow HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..SLOW {
        slow.spawn(async move {
            let chunks: Vec<&[u8]> = head.chunks(1).collect();
            let started = Instant::now();
            let response = raw_exchange_chunked(
                addr,
                &chunks,
                Duration::from_secs(1),
                Duration::from_secs(60),
            )
            .await;
            (response, started.elapsed())
        });
    }
    // Honest clients once a fifth of the slow ones are held (the first are cut 3 s after they
    // connect: on a loaded machine not all 5,000 may be in at once), the rest still coming.
    let attacked = wait_until_async(SOON, || async {
        common::metric(admin, "sluice_connections_active").await >= (SLOW / 5) as f64
    })
    .await;
    assert!(attacked, "the slow clients never got in");
    let rss_under_attack = rss_kib(pid);
    let mut honest = tokio::task::JoinSet::new();
    for i in 0..HONEST {
        honest.spawn(async move {
            let (mut ws, _) = ws_connect(addr, "/", &[]).await?;
            let reply = ws_roundtrip(&mut ws, Message::text(format!("honest {i}"))).await?;
            ws.close(None).await?;
            Ok::<_, sluice_testkit::tungstenite::Error>(reply)
        });
    }
    let mut upgraded = 0;
    while let Some(result) = honest.join_next().await {
        let reply = result.expect("task").expect("an honest client upgrades");
        assert!(matches!(reply, Message::Text(_)));
        upgraded += 1;
    }
    assert_eq!(upgraded, HONEST);

    // Every slow client was cut: 408 at the deadline, never before it.
    let mut cut = 0;
    let mut peak_rss = rss_under_attack;
    while let Some(result) = slow.join_next().await {
        let (response, took) = result.expect("task");
        let response = response.expect("a slow client connects");
        assert_eq!(response.status, Some(408), "{:?}", response.head());
        assert!(response.closed);
        assert!(took >= Duration::from_millis(2900), "cut after {took:?}");
        cut += 1;
        peak_rss = peak_rss.max(rss_kib(pid));
    }
    assert_eq!(cut, SLOW);
    // Memory stays bounded: well under 1 MiB per held connection (a head buffer is 2 KiB).
    assert!(
        peak_rss < 256 * 1024,
        "RSS {peak_rss} KiB with {SLOW} slow clients"
    );
    // Only the honest heads reached the backend.
    assert_eq!(backend.requests().len(), HONEST);
    let drained = wait_until_async(SOON, || async {
        common::metric(admin, "sluice_connections_active").await == 0.0
    })
    .await;
    assert!(drained, "connections left after every client finished");
    assert!(sluice.stop().await.success());
}
