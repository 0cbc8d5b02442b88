//! Health checks and failure handling: a backend killed under load, checks that see what a TCP
//! connect cannot, passive ejection, slow start, reloads that keep health, every backend down,
//! the half-closed timeout, and a half-open client whose host vanished (in a network namespace).
//!
//! Figures are printed (`cargo test -p sluice-e2e health -- --nocapture`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sluice_e2e::{Proxy, backend_list, config};
use sluice_testkit::{
    AfterResponse, Blackhole, EchoBackend, RawClient, StaticResponder, refused_addr, responses,
    tungstenite, wait_until, ws_connect,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::SOON;

/// Added to a bound on how long something timed takes (detection, recovery): on a machine
/// loaded by other builds, timers fire and tasks are polled late.
const LOAD_SLACK: Duration = Duration::from_secs(2);

/// The live health of the pool's backend at `addr`, by label.
fn health(proxy: &Proxy, pool: &str, addr: SocketAddr) -> &'static str {
    let snapshot = proxy.server().snapshot();
    snapshot
        .pool_by_name(pool)
        .and_then(|p| p.backend(addr))
        .map_or("absent", |b| b.health().label())
}

async fn wait_health(proxy: &Proxy, pool: &str, addr: SocketAddr, want: &[&str]) -> bool {
    wait_until(SOON, || want.contains(&health(proxy, pool, addr))).await
}

/// The status of one handshake through the proxy, and the backend that answered.
async fn handshake(proxy: SocketAddr, path: &str) -> Result<String, u16> {
    match ws_connect(proxy, path, &[]).await {
        Ok((_, response)) => Ok(response
            .headers()
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned()),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(_) => Err(0),
    }
}

/// Counters of the simulated clients.
#[derive(Default)]
struct Load {
    opened: AtomicUsize,
    failed: AtomicUsize,
    /// Tunnels that ended under a client (its backend died) and were reopened.
    reopened: AtomicUsize,
    /// Milliseconds from the kill to the last tunnel end a client saw.
    last_close_ms: AtomicUsize,
}

/// A client that keeps one tunnel open, and opens another whenever it ends, until `stop`.
async fn keep_open(
    proxy: SocketAddr,
    load: Arc<Load>,
    gate: Arc<Semaphore>,
    killed_at: watch::Receiver<Option<Instant>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reopening = false;
    loop {
        let opened = {
            let _permit = gate.acquire().await;
            ws_connect(proxy, "/", &[]).await
        };
        let Ok((mut ws, _)) = opened else {
            load.failed.fetch_add(1, Relaxed);
            return;
        };
        if reopening {
            load.reopened.fetch_add(1, Relaxed);
        } else {
            load.opened.fetch_add(1, Relaxed);
        }
        let ended = async { while let Some(Ok(_)) = ws.next().await {} };
        tokio::select! {
            () = ended => {
                if let Some(kill) = *killed_at.borrow() {
                    let ms = usize::try_from(kill.elapsed().as_millis()).unwrap_or(usize::MAX);
                    load.last_close_ms.fetch_max(ms, Relaxed);
                }
                reopening = true;
            }
            _ = stop.changed() => return,
        }
    }
}

/// 1,000 tunnels over three backends, new handshakes arriving all the time; one backend is
/// killed, then restarted. Nothing a client does fails; the checks mark it down within
/// fall × interval and up within rise × interval; then slow start shows in where new tunnels go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_load_loses_no_handshake_and_comes_back_slowly() {
    const TUNNELS: usize = 1000;
    // Long enough that the checks of a and c pass while this test loads the machine (two
    // timeouts in a row would take them down too, and every backend down is a 503).
    let interval = Duration::from_millis(500);
    let (rise, fall) = (2u32, 2u32);
    let window = Duration::from_secs(1);
    let a = EchoBackend::spawn_named("a").await;
    // b is killed, then restarted on the same address. On 127.0.0.2: the thousands of
    // connections this test (and the tests beside it) open get 127.0.0.1 source ports, and one
    // of them could take b's port on 127.0.0.1 while b is down, failing its restart.
    let b = EchoBackend::builder()
        .name("b")
        .bind(SocketAddr::from(([127, 0, 0, 2], 0)))
        .spawn()
        .await
        .unwrap();
    let c = EchoBackend::spawn_named("c").await;
    let b_addr = b.addr();
    let toml = format!(
        "{}health_check = {{ kind = \"websocket\", interval = \"{ms}ms\", timeout = \"{ms}ms\", \
         rise = {rise}, fall = {fall}, jitter = 0.1 }}\nslow_start = \"1s\"\n",
        config(
            &[a.addr(), b_addr, c.addr()],
            "round_robin",
            "[timeouts]\nconnect = \"1s\"\n"
        ),
        ms = interval.as_millis()
    );
    let proxy = Proxy::start(&toml).await;
    let proxy_addr = proxy.addr();

    // 1,000 tunnels.
    let load = Arc::new(Load::default());
    let gate = Arc::new(Semaphore::new(64));
    let (kill_tx, kill_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let opening = Instant::now();
    let clients: Vec<_> = (0..TUNNELS)
        .map(|_| {
            tokio::spawn(keep_open(
                proxy_addr,
                Arc::clone(&load),
                Arc::clone(&gate),
                kill_rx.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(60), || load.opened.load(Relaxed)
            + load.failed.load(Relaxed)
            == TUNNELS)
        .await
    );
    assert_eq!(load.failed.load(Relaxed), 0);
    assert!(wait_until(SOON, || proxy.server().live_tunnels() == TUNNELS).await);
    let on_b = b.active_connections();
    println!(
        "{TUNNELS} tunnels open in {:?}: {} / {on_b} / {} on a / b / c",
        opening.elapsed(),
        a.active_connections(),
        c.active_connections()
    );

    // New handshakes keep arriving, one every 5 ms, through everything that follows.
    let trickle = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            loop {
                tokio::select! {
                    result = handshake(proxy_addr, "/") => match result {
                        Ok(_) => ok += 1,
                        Err(status) => failed.push(status),
                    },
                    _ = stop.changed() => return (ok, failed),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Kill b: it refuses new connections and its tunnels die.
    let killed = Instant::now();
    kill_tx.send_replace(Some(killed));
    b.stop_accepting().await;
    b.close_all().await;
    assert!(wait_health(&proxy, "main", b_addr, &["down"]).await);
    let detection = killed.elapsed();
    // Every client of b saw its tunnel end and reopened it elsewhere.
    assert!(
        wait_until(SOON, || load.reopened.load(Relaxed) >= on_b).await,
        "reopened {} of {on_b}",
        load.reopened.load(Relaxed)
    );
    assert!(wait_until(SOON, || proxy.server().live_tunnels() >= TUNNELS).await);
    let closed_within = Duration::from_millis(load.last_close_ms.load(Relaxed) as u64);
    // Jitter stretches an interval by up to 10 %, the check in flight at the kill may still
    // pass (one more interval), and a machine loaded by other builds delays timers and polls
    // (LOAD_SLACK).
    let bound = interval.mul_f64(f64::from(fall) * 1.1) + interval * 2 + LOAD_SLACK;
    println!(
        "kill: b down after {detection:?} (fall × interval = {:?}); its {on_b} tunnels closed within {closed_within:?} and reopened on a and c",
        interval * fall
    );
    assert!(
        detection <= bound,
        "detected after {detection:?}, bound {bound:?}"
    );

    // Restart b on its address: up after rise passed checks.
    let restarted = Instant::now();
    let b2 = EchoBackend::builder()
        .name("b")
        .bind(b_addr)
        .spawn()
        .await
        .unwrap();
    assert!(wait_health(&proxy, "main", b_addr, &["slow_start", "up"]).await);
    let recovery = restarted.elapsed();
    // The ramp starts when the checks marked b up, not when this test saw it.
    let up_at = match proxy
        .server()
        .snapshot()
        .pool_by_name("main")
        .and_then(|p| p.backend(b_addr))
        .map(|b| b.health())
    {
        Some(sluice_balance::Health::SlowStart { since, .. }) => since,
        other => panic!("b is not in slow start a moment after coming up: {other:?}"),
    };
    let up_bound = interval.mul_f64(f64::from(rise) * 1.1) + interval * 2 + LOAD_SLACK;
    println!(
        "restart: b up after {recovery:?} (rise × interval = {:?})",
        interval * rise
    );
    assert!(
        recovery <= up_bound,
        "up after {recovery:?}, bound {up_bound:?}"
    );

    // Slow start: new tunnels over the next 1.25 windows, one every 2 ms; b's share per
    // quarter of the window (about 125 tunnels each), asserted per half (a quarter may hold
    // only a few tunnels when the machine is loaded and this test saw b come up late).
    let probes: Vec<_> = (0..625u32)
        .map(|i| {
            let at = up_at + Duration::from_millis(u64::from(i) * 2);
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let result = handshake(proxy_addr, "/").await;
                (up_at.elapsed(), result)
            })
        })
        .collect();
    let mut quarters = [(0usize, 0usize); 5];
    let mut halves = [(0usize, 0usize); 3];
    for probe in probes {
        let (offset, result) = probe.await.unwrap();
        let name = result.unwrap_or_else(|status| panic!("a probe failed with {status}"));
        let quarter = ((offset.as_secs_f64() / window.as_secs_f64()) * 4.0) as usize;
        for slot in [
            &mut quarters[quarter.min(4)],
            &mut halves[(quarter / 2).min(2)],
        ] {
            slot.0 += 1;
            if name == "b" {
                slot.1 += 1;
            }
        }
    }
    let percent = |slots: &[(usize, usize)]| -> Vec<f64> {
        slots
            .iter()
            .map(|&(n, on_b)| (on_b as f64 / n.max(1) as f64 * 1000.0).round() / 10.0)
            .collect()
    };
    let (shares, halves) = (percent(&quarters), percent(&halves));
    println!(
        "slow start: b's share of new tunnels per quarter of the 1s window, then after (%): {shares:?} \
         (expected about ramp/3: 7, 15, 22, 30, 33); per half: {halves:?}"
    );
    assert!(halves[0] < 20.0, "{shares:?} {halves:?}");
    assert!(halves[0] < halves[1], "{shares:?} {halves:?}");
    assert!(halves[2] > 20.0, "{shares:?} {halves:?}");

    let _ = stop_tx.send(true);
    let (ok, failed) = trickle.await.unwrap();
    println!(
        "trickle: {ok} new handshakes during kill, detection and restart, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "failed handshakes: {failed:?}");
    assert_eq!(load.failed.load(Relaxed), 0, "a client's reconnect failed");
    for client in clients {
        client.await.unwrap();
    }
    drop(b2);
}

/// A backend that accepts TCP but answers 500, one that never answers, and one whose `101` has
/// the wrong `Sec-WebSocket-Accept`: the websocket check marks all three down, the tcp check
/// none; a pool whose backends are all down answers 503 with Retry-After at once.
#[tokio::test]
async fn the_websocket_check_sees_what_a_tcp_check_cannot() {
    let error = StaticResponder::status(500).await;
    let silent = Blackhole::spawn().await;
    let wrong = StaticResponder::spawn(responses::wrong_accept(), AfterResponse::Hold).await;
    let bad = [error.addr(), silent.addr(), wrong.addr()];
    // The websocket checks' timeout is long enough that on a loaded machine the answers of
    // `error` and `wrong` still come in time (the last failure's reason is the one shown);
    // `silent` takes two timeouts to go down. A TCP connect on loopback completes in the kernel.
    let check = |kind: &str, every: &str| {
        format!(
            "health_check = {{ kind = \"{kind}\", interval = \"{every}\", timeout = \"{every}\", rise = 1, fall = 2 }}\n"
        )
    };
    let toml = format!(
        "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nlistener = \"public\"\npath_prefix = \"/ws\"\npool = \"ws\"\n\n\
         [[routes]]\nlistener = \"public\"\npool = \"tcp\"\n\n\
         [pools.ws]\nbackends = [{list}]\n{}\n[pools.tcp]\nbackends = [{list}]\n{}",
        check("websocket", "1s"),
        check("tcp", "50ms"),
        list = backend_list(&bad),
    );
    let proxy = Proxy::start(&toml).await;
    let started = Instant::now();
    for (addr, reason) in [
        (error.addr(), "status"),
        (silent.addr(), "timeout"),
        (wrong.addr(), "bad_accept"),
    ] {
        assert!(wait_health(&proxy, "ws", addr, &["down"]).await, "{reason}");
        let snapshot = proxy.server().snapshot();
        let backend = snapshot
            .pool_by_name("ws")
            .and_then(|p| p.backend(addr))
            .unwrap();
        assert!(
            matches!(backend.health(), sluice_balance::Health::Down { reason: r } if r.label() == reason),
            "{:?}",
            backend.health()
        );
    }
    println!(
        "websocket checks: all three down after {:?}",
        started.elapsed()
    );
    // By now the tcp checks have run several times, and passed every time.
    let snapshot = proxy.server().snapshot();
    for addr in bad {
        let backend = snapshot
            .pool_by_name("tcp")
            .and_then(|p| p.backend(addr))
            .unwrap();
        assert!(
            wait_until(SOON, || backend.health_counters().checks_passed >= 3).await,
            "{addr}"
        );
        assert_eq!(backend.health().label(), "up", "{addr}");
        assert_eq!(backend.health_counters().checks_failed, 0, "{addr}");
    }
    // Every backend of `ws` down: 503 with Retry-After, at once.
    let asked = Instant::now();
    let response = sluice_testkit::raw_exchange(
        proxy.addr(),
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        SOON,
    )
    .await
    .unwrap();
    assert_eq!(response.status, Some(503));
    assert!(
        response.header("retry-after").is_some(),
        "{:?}",
        response.head()
    );
    // At once: not after a connect or response timeout (3 s and 10 s by default).
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
}

/// Passive checks: consecutive refused connects and response timeouts eject a backend for its
/// cool-down, without a single failed handshake for refusals (the next backend is tried); after
/// the cool-down it is back, in slow start.
#[tokio::test]
async fn consecutive_failures_eject_a_backend_for_its_cool_down() {
    let good = EchoBackend::spawn_named("good").await;
    let refusing = refused_addr();
    let hole = Blackhole::spawn().await;
    // The cool-down outlasts the handshakes that follow the ejection and the check of the
    // ejected state, and the slow start is long enough to be seen, however slow a loaded
    // machine makes them; the response timeout leaves the good backend time to answer.
    let outlier =
        "outlier = { consecutive_failures = 3, cool_down = \"3s\" }\nslow_start = \"10s\"\n";
    let toml = format!(
        "{}{outlier}\n[pools.slow]\nbackends = [\"{}\", \"{}\"]\n{outlier}",
        config(
            &[refusing, good.addr()],
            "round_robin",
            "[timeouts]\nresponse = \"1s\"\n\n[[routes]]\nlistener = \"public\"\npath_prefix = \"/slow\"\npool = \"slow\"\n"
        ),
        hole.addr(),
        good.addr(),
    );
    let proxy = Proxy::start(&toml).await;
    for _ in 0..10 {
        assert_eq!(handshake(proxy.addr(), "/").await, Ok("good".into()));
    }
    assert_eq!(health(&proxy, "main", refusing), "ejected");
    let snapshot = proxy.server().snapshot();
    let counters = snapshot
        .pool_by_name("main")
        .and_then(|p| p.backend(refusing))
        .unwrap()
        .health_counters();
    assert_eq!((counters.ejections, counters.connect_failures), (1, 3));

    // A backend that never answers: each such handshake is a 504 (the request was sent, so it
    // is not retried), and the third in a row ejects it.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(handshake(proxy.addr(), "/slow").await.err().unwrap_or(101));
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 504).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 101).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(health(&proxy, "slow", hole.addr()), "ejected");
    // After its cool-down (which ran meanwhile), the refusing one of `main` is back, easing in.
    assert!(wait_health(&proxy, "main", refusing, &["slow_start"]).await);
}

/// A reload keeps each backend's health (a down backend stays down) and its checker: as many
/// checkers after as before, and they go on checking.
#[tokio::test]
async fn a_reload_keeps_health_and_the_checkers() {
    let good = EchoBackend::spawn_named("good").await;
    let error = StaticResponder::status(500).await;
    let check = "health_check = { kind = \"http\", interval = \"50ms\", timeout = \"50ms\", rise = 2, fall = 2 }\n";
    let toml = |tunnel_idle: &str| {
        format!(
            "{}{check}",
            config(
                &[good.addr(), error.addr()],
                "round_robin",
                &format!("[timeouts]\ntunnel_idle = \"{tunnel_idle}\"\n")
            )
        )
    };
    let proxy = Proxy::start(&toml("1h")).await;
    assert!(wait_health(&proxy, "main", error.addr(), &["down"]).await);
    let checks = || {
        proxy
            .server()
            .snapshot()
            .pool_by_name("main")
            .and_then(|p| p.backend(error.addr()))
            .map_or(0, |b| b.health_counters().checks_failed)
    };
    assert_eq!(proxy.server().health_checkers().await, 2);
    for (i, idle) in ["2h", "3h", "4h"].iter().enumerate() {
        assert_eq!(proxy.reload(&toml(idle)).await.unwrap(), i as u64 + 2);
        assert_eq!(
            health(&proxy, "main", error.addr()),
            "down",
            "kept across the reload"
        );
    }
    // The same two checkers (not one more per reload), still running.
    assert_eq!(proxy.server().health_checkers().await, 2);
    let from = checks();
    assert!(wait_until(SOON, || checks() >= from + 3).await);
    // Every handshake still goes to the good backend.
    for _ in 0..6 {
        assert_eq!(handshake(proxy.addr(), "/").await, Ok("good".into()));
    }
}

/// A backend that completes the WebSocket handshake, then never ends its half of the
/// connection, even after the client ended its own.
async fn never_ending_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let key = text
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("sec-websocket-key")
                            .then(|| value.trim().to_owned())
                    })
                    .unwrap_or_default();
                let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let mut sink = [0u8; 1024];
                while stream.read(&mut sink).await.unwrap_or(0) > 0 {}
                // The client's half ended; ours never does.
                std::future::pending::<()>().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_half_closed_tunnel_ends_after_the_half_closed_timeout() {
    let backend = never_ending_backend().await;
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let limit = Duration::from_millis(300);
    for half_closed in [Some(limit), None] {
        let extra = half_closed.map_or(String::new(), |d| {
            format!("[timeouts]\nhalf_closed = \"{}ms\"\n", d.as_millis())
        });
        let proxy = Proxy::start(&config(&[backend], "round_robin", &extra)).await;
        let mut client = RawClient::connect(proxy.addr()).await.unwrap();
        client.send(request).await.unwrap();
        assert_eq!(client.read_head(SOON).await, Some(101));
        client.shutdown_write().await.unwrap();
        let half_closed_at = Instant::now();
        // With the timeout, the tunnel ends (however late a loaded machine polls); without
        // it, 1.5 s of nothing shows that it stays.
        let within = if half_closed.is_some() {
            SOON
        } else {
            Duration::from_millis(1500)
        };
        let closed = wait_until(within, || proxy.server().live_tunnels() == 0).await;
        match half_closed {
            Some(limit) => {
                let took = half_closed_at.elapsed();
                println!("half-closed tunnel closed after {took:?} (half_closed = {limit:?})");
                assert!(closed && took >= limit * 9 / 10, "{took:?}");
            }
            None => assert!(!closed, "without half_closed the tunnel stays"),
        }
    }
}

// ---- a half-open client: its host vanishes ------------------------------------------------

/// The environment variable that turns [`half_open_client_in_namespace`] into the client.
const HALF_OPEN_TARGET: &str = "SLUICE_E2E_HALF_OPEN_TARGET";

/// A network namespace joined to this one by a veth pair, deleted on drop.
struct Namespace {
    name: String,
    host_if: String,
    ns_if: String,
    host_ip: String,
    ns_ip: String,
}

impl Namespace {
    /// `Err` says why namespaces cannot be used here.
    fn create() -> Result<Self, String> {
        let pid = std::process::id();
        let (hi, lo) = ((pid >> 6) & 0xff, (pid & 0x3f) << 2);
        let ns = Namespace {
            name: format!("sluice-e2e-{pid}"),
            host_if: format!("slh{pid}"),
            ns_if: format!("sln{pid}"),
            host_ip: format!("10.213.{hi}.{}", lo + 1),
            ns_ip: format!("10.213.{hi}.{}", lo + 2),
        };
        ip(&["netns", "add", &ns.name])?;
        let (host_cidr, ns_cidr) = (format!("{}/30", ns.host_ip), format!("{}/30", ns.ns_ip));
        let steps: [&[&str]; 6] = [
            &[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns.ns_if,
                "netns",
                &ns.name,
            ],
            &["addr", "add", &host_cidr, "dev", &ns.host_if],
            &["link", "set", &ns.host_if, "up"],
            &["-n", &ns.name, "link", "set", "lo", "up"],
            &["-n", &ns.name, "addr", "add", &ns_cidr, "dev", &ns.ns_if],
            &["-n", &ns.name, "link", "set", &ns.ns_if, "up"],
        ];
        for step in steps {
            ip(step)?;
        }
        Ok(ns)
    }

    /// Cuts the namespace off: its end of the veth goes down, so nothing it would send (ACKs
    /// of keepalive probes included) ever arrives, as when a client's host loses power.
    fn vanish(&self) -> Result<(), String> {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "down"])
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Written to the terminal itself: libtest captures `println!` of passing tests, and a skip
/// must be seen.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A client in its own network namespace opens a tunnel, then its host vanishes (its link goes
/// down: no FIN, no RST, no ACK ever again). With `tcp_keepalive = { idle = 1s, interval = 1s,
/// count = 2 }` sluice closes the tunnel within about idle + interval × count = 3 s; without
/// keepalive it would live until the idle timeout (1 h by default).
///
/// A paused client process (SIGSTOP) would not do: its kernel still ACKs the probes. Needs root
/// and `ip netns`; where they are missing the test says so on the terminal and skips.
#[tokio::test]
async fn a_half_open_client_is_detected_by_tcp_keepalive() {
    let ns = match Namespace::create() {
        Ok(ns) => ns,
        Err(why) => {
            say(&format!(
                "health::a_half_open_client_is_detected_by_tcp_keepalive: SKIPPED, network namespaces are unavailable here ({why})"
            ));
            return;
        }
    };
    let echo = EchoBackend::spawn_named("echo").await;
    let toml = config(
        &[echo.addr()],
        "round_robin",
        "[relay]\ntcp_keepalive = { idle = \"1s\", interval = \"1s\", count = 2 }\n",
    )
    .replace("127.0.0.1:0", &format!("{}:0", ns.host_ip));
    let proxy = Proxy::start(&toml).await;

    // The client: this test binary, run inside the namespace as the helper test below.
    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&exe)
        .args([
            "health::half_open_client_in_namespace",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HALF_OPEN_TARGET, proxy.addr().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let upgraded = tokio::time::timeout(SOON, async {
        let mut chunk = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("UPGRADED") {
            match stdout.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
        true
    })
    .await;
    assert_eq!(
        upgraded.ok(),
        Some(true),
        "the client in the namespace did not open its tunnel: {}",
        String::from_utf8_lossy(&seen)
    );
    // The client has its 101: the proxy counts the tunnel a moment after writing it.
    assert!(wait_until(SOON, || proxy.server().live_tunnels() == 1).await);
    assert_eq!(echo.active_connections(), 1);

    ns.vanish().unwrap();
    let vanished = Instant::now();
    let detected = wait_until(Duration::from_secs(10), || {
        proxy.server().live_tunnels() == 0
    })
    .await;
    let took = vanished.elapsed();
    let _ = child.kill().await;
    println!(
        "half-open client: tunnel closed {took:?} after its host vanished (keepalive 1s + 2 × 1s)"
    );
    assert!(detected, "still open after {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
    assert!(took <= Duration::from_secs(5), "{took:?}");
    // The backend's side of the tunnel is closed too.
    assert!(wait_until(SOON, || echo.active_connections() == 0).await);
    drop(ns);
}

/// The client of [`a_half_open_client_is_detected_by_tcp_keepalive`], run inside the namespace
/// (ignored otherwise): opens one tunnel, says so, and holds it.
#[tokio::test]
#[ignore = "run by a_half_open_client_is_detected_by_tcp_keepalive inside its namespace"]
async fn half_open_client_in_namespace() {
    let Some(target) = std::env::var(HALF_OPEN_TARGET)
        .ok()
        .and_then(|t| t.parse::<SocketAddr>().ok())
    else {
        return;
    };
    let (_ws, _) = ws_connect(target, "/", &[]).await.unwrap();
    let mut out = std::io::stdout();
    let _ = out.write_all(b"UPGRADED\n");
    let _ = out.flush();
    tokio::time::sleep(Duration::from_secs(30)).await;
}
