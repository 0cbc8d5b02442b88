//! Reload in place: backends and listeners come and go, established tunnels stay, removed
//! backends drain on the pool's schedule, and an invalid or restart-only change is refused whole.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sluice_e2e::{Proxy, backend_list, config};
use sluice_testkit::{EchoBackend, Message, WsStream, wait_until, ws_connect, ws_roundtrip};

use crate::SOON;

async fn backends(n: usize) -> Vec<EchoBackend> {
    let mut all = Vec::new();
    for i in 0..n {
        all.push(EchoBackend::spawn_named(&format!("b{i}")).await);
    }
    all
}

fn addrs(backends: &[&EchoBackend]) -> Vec<SocketAddr> {
    backends.iter().map(|b| b.addr()).collect()
}

async fn open(proxy_addr: SocketAddr) -> (WsStream, String) {
    let (ws, response) = ws_connect(proxy_addr, "/", &[]).await.unwrap();
    (
        ws,
        response.headers()["x-backend"].to_str().unwrap().to_owned(),
    )
}

async fn alive(ws: &mut WsStream) -> bool {
    matches!(
        tokio::time::timeout(SOON, ws_roundtrip(ws, Message::text("ping"))).await,
        Ok(Ok(m)) if m == Message::text("ping")
    )
}

#[tokio::test]
async fn new_connections_follow_the_new_config_and_old_tunnels_stay() {
    let b = backends(3).await;
    let proxy = Proxy::start(&config(&addrs(&[&b[0], &b[1]]), "round_robin", "")).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(open(proxy.addr()).await);
    }
    let generation = proxy
        .reload(&config(&addrs(&[&b[1], &b[2]]), "round_robin", ""))
        .await
        .unwrap();
    assert_eq!(generation, 2);
    // Every new connection goes to the new set, at once.
    for _ in 0..6 {
        let (_, name) = open(proxy.addr()).await;
        assert!(
            name == "b1" || name == "b2",
            "{name} is not in the new config"
        );
    }
    // Tunnels to b0 (removed, drained by default only when they end) and b1 (kept) all live.
    for (ws, name) in &mut held {
        assert!(
            alive(ws).await,
            "tunnel to {name} was dropped by the reload"
        );
    }
    assert_eq!(b[0].active_connections(), 2);
    assert_eq!(proxy.server().reloads().succeeded(), 1);
}

#[tokio::test]
async fn an_invalid_or_restart_only_reload_changes_nothing() {
    let b = backends(2).await;
    let good = config(&addrs(&[&b[0]]), "round_robin", "");
    let proxy = Proxy::start(&good).await;
    let (mut ws, _) = open(proxy.addr()).await;

    let invalid = good.replace("round_robin", "fastest");
    let error = proxy.reload(&invalid).await.unwrap_err();
    assert!(error.to_string().contains("reload.toml:"), "{error}");
    let restart = config(&addrs(&[&b[1]]), "round_robin", "[relay]\nmax_pipes = 7\n");
    let error = proxy.reload(&restart).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("relay.max_pipes cannot change without a restart"),
        "{error}"
    );
    assert_eq!(
        proxy.server().reloads().failed(),
        1,
        "the parse error never reached the server"
    );

    // Still generation 1, still b0, the tunnel untouched.
    assert_eq!(proxy.server().snapshot().generation(), 1);
    assert_eq!(open(proxy.addr()).await.1, "b0");
    assert!(alive(&mut ws).await);
    assert_eq!(b[1].connections_accepted(), 0);

    // A later valid reload applies.
    proxy
        .reload(&config(&addrs(&[&b[1]]), "round_robin", ""))
        .await
        .unwrap();
    assert_eq!(open(proxy.addr()).await.1, "b1");
}

#[tokio::test]
async fn a_backend_removed_and_added_back_keeps_its_live_count() {
    let b = backends(2).await;
    let both = config(&addrs(&[&b[0], &b[1]]), "least_conn", "");
    let proxy = Proxy::start(&both).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(open(proxy.addr()).await);
    }
    proxy
        .reload(&config(&addrs(&[&b[1]]), "least_conn", ""))
        .await
        .unwrap();
    proxy.reload(&both).await.unwrap();
    // b0 came back with its two live tunnels counted: least_conn spreads new ones evenly.
    let mut names = Vec::new();
    for _ in 0..4 {
        let (ws, name) = open(proxy.addr()).await;
        names.push(name);
        held.push((ws, String::new()));
    }
    names.sort();
    assert_eq!(names, vec!["b0", "b0", "b1", "b1"]);
}

#[tokio::test]
async fn removed_backend_tunnels_close_after_drain_timeout_spread_oldest_first() {
    let b = backends(2).await;
    // Three tunnels: closed at 500 ms, 2.5 s and 4.5 s. Steps of 2 s leave each close time
    // the slack a loaded machine needs without blurring the order.
    const TUNNELS: u64 = 3;
    const STEP: Duration = Duration::from_secs(2);
    let spread = STEP.as_secs() * TUNNELS;
    let pool = |list: &[SocketAddr]| {
        format!(
            "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nlistener = \"public\"\npool = \"main\"\n\n\
             [pools.main]\ndrain_timeout = \"500ms\"\ndrain_spread = \"{spread}s\"\nbackends = [{}]\n",
            backend_list(list)
        )
    };
    let proxy = Proxy::start(&pool(&addrs(&[&b[0]]))).await;
    let mut tunnels = Vec::new();
    for _ in 0..TUNNELS {
        tunnels.push(open(proxy.addr()).await.0);
    }
    let (mut other, _) = {
        proxy.reload(&pool(&addrs(&[&b[0], &b[1]]))).await.unwrap();
        // Round robin: the next one after b0 is b1.
        loop {
            let (ws, name) = open(proxy.addr()).await;
            if name == "b1" {
                break (ws, name);
            }
        }
    };
    // Tunnels to b0 opened (and dropped) by the loop above must be gone before b0 is removed:
    // they would count among the drained ones and move every slot.
    assert!(
        wait_until(SOON, || proxy.server().live_tunnels()
            == TUNNELS as usize + 1)
        .await
    );
    let removed_at = Instant::now();
    proxy.reload(&pool(&addrs(&[&b[1]]))).await.unwrap();
    // Each tunnel to b0 ends; record when, all watched at once (tunnels in open order).
    let closed: Vec<Duration> =
        futures_util::future::join_all(tunnels.iter_mut().enumerate().map(|(i, ws)| async move {
            let ended =
                tokio::time::timeout(SOON, async { while let Some(Ok(_)) = ws.next().await {} })
                    .await;
            assert!(ended.is_ok(), "tunnel {i} never closed");
            removed_at.elapsed()
        }))
        .await;
    // None before the drain timeout; spread over the window at STEP intervals, oldest first.
    for (i, at) in closed.iter().enumerate() {
        let slot = Duration::from_millis(500) + STEP * i as u32;
        assert!(
            *at >= slot - Duration::from_millis(20),
            "tunnel {i} closed at {at:?}, before {slot:?}: {closed:?}"
        );
        assert!(
            *at < slot + STEP * 3 / 4,
            "tunnel {i} closed at {at:?}, long after {slot:?}: {closed:?}"
        );
    }
    assert!(
        closed.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {closed:?}"
    );
    // The tunnel to the kept backend is untouched.
    assert!(alive(&mut other).await);
    assert!(wait_until(SOON, || b[0].active_connections() == 0).await);
}

#[tokio::test]
async fn listeners_added_by_a_reload_open_and_removed_ones_close() {
    let b = backends(1).await;
    let one = config(&addrs(&[&b[0]]), "round_robin", "");
    let proxy = Proxy::start(&one).await;
    let two = format!(
        "{one}\n[[listeners]]\nname = \"second\"\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nlistener = \"second\"\npool = \"main\"\n"
    );
    proxy.reload(&two).await.unwrap();
    let second = proxy.server().listener_addrs().await["second"];
    let (mut ws, _) = ws_connect(second, "/", &[]).await.unwrap();
    assert!(alive(&mut ws).await);
    // Removing the listener stops accepting on it; its established tunnel goes on.
    proxy.reload(&one).await.unwrap();
    assert!(wait_until(SOON, || std::net::TcpStream::connect(second).is_err()).await);
    assert!(
        alive(&mut ws).await,
        "a tunnel accepted by a removed listener must not be dropped"
    );
    assert!(!proxy.server().listener_addrs().await.contains_key("second"));
}
