//! Backends that refuse, black-hole, answer wrongly or die mid-tunnel.

use std::time::Duration;

use futures_util::StreamExt;
use sluice_e2e::{Proxy, config};
use sluice_testkit::{
    AfterResponse, Blackhole, CloseMode, EchoBackend, Message, StaticResponder, refused_addr,
    responses, tungstenite, wait_until, ws_connect, ws_roundtrip,
};

use crate::SOON;

async fn status(proxy: &Proxy) -> u16 {
    match ws_connect(proxy.addr(), "/", &[]).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("unexpected failure: {e}"),
    }
}

/// Short timeouts for the backends that never connect or never answer. The response timeout
/// still leaves a loaded machine time to bring the answers that do come (a 500, a bad 101).
const FAST: &str = "[timeouts]\nconnect = \"300ms\"\nresponse = \"1s\"\n";

#[tokio::test]
async fn a_refusing_backend_is_skipped_for_the_next_one() {
    let good = EchoBackend::spawn().await;
    let proxy = Proxy::start(&config(&[refused_addr(), good.addr()], "round_robin", "")).await;
    for _ in 0..10 {
        assert_eq!(status(&proxy).await, 101);
    }
    assert_eq!(
        good.upgrades(),
        10,
        "every handshake ends on the live backend"
    );
}

#[tokio::test]
async fn every_backend_refusing_is_502() {
    let proxy = Proxy::start(&config(
        &[refused_addr(), refused_addr()],
        "round_robin",
        "",
    ))
    .await;
    assert_eq!(status(&proxy).await, 502);
    assert_eq!(proxy.server().stats().backend_failed(), 1);
}

#[tokio::test]
async fn a_black_holed_backend_is_504_and_not_retried_after_the_request_was_sent() {
    let hole = Blackhole::spawn().await;
    let good = EchoBackend::spawn().await;
    let toml = config(&[hole.addr(), good.addr()], "round_robin", FAST);
    let proxy = Proxy::start(&toml).await;
    // Round robin starts at the black hole for the first connection.
    assert_eq!(status(&proxy).await, 504);
    assert!(hole.received_raw().starts_with(b"GET / HTTP/1.1\r\n"));
    assert_eq!(
        good.connections_accepted(),
        0,
        "a sent request is never replayed elsewhere"
    );
}

#[tokio::test]
async fn a_backend_that_never_completes_tcp_connect_is_504_after_trying_the_next() {
    // A listener whose accept queue is full drops further SYNs: connect hangs until timeout.
    let full = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let full_addr = full.local_addr().unwrap();
    let socket = socket2::Socket::from(full);
    socket.listen(0).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        c.set_nonblocking(true).unwrap();
        let _ = c.connect(&full_addr.into());
        fillers.push(c);
    }
    let toml = config(&[full_addr, full_addr], "round_robin", FAST);
    // The same address twice is a config error; use one entry with two attempts instead.
    let toml = toml.replace(
        &format!("\"{full_addr}\", \"{full_addr}\""),
        &format!("\"{full_addr}\""),
    );
    let proxy = Proxy::start(&toml).await;
    let started = std::time::Instant::now();
    assert_eq!(status(&proxy).await, 504);
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(fillers);
}

#[tokio::test]
async fn a_backend_answering_an_error_has_it_relayed_and_the_connection_closed() {
    let failing = StaticResponder::status(500).await;
    let proxy = Proxy::start(&config(&[failing.addr()], "round_robin", FAST)).await;
    assert_eq!(status(&proxy).await, 500);
}

#[tokio::test]
async fn a_101_with_a_wrong_accept_key_is_502() {
    let liar = StaticResponder::spawn(responses::wrong_accept(), AfterResponse::Hold).await;
    let proxy = Proxy::start(&config(&[liar.addr()], "round_robin", FAST)).await;
    assert_eq!(status(&proxy).await, 502);
}

#[tokio::test]
async fn garbage_from_a_backend_is_502() {
    let garbage = StaticResponder::spawn(responses::garbage(), AfterResponse::Close).await;
    let proxy = Proxy::start(&config(&[garbage.addr()], "round_robin", FAST)).await;
    assert_eq!(status(&proxy).await, 502);
}

#[tokio::test]
async fn a_backend_dying_mid_tunnel_closes_the_client_side_cleanly() {
    for mode in [CloseMode::Fin, CloseMode::Reset] {
        let backend = EchoBackend::spawn().await;
        let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
        let (mut ws, _) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
        assert_eq!(
            ws_roundtrip(&mut ws, Message::text("alive")).await.unwrap(),
            Message::text("alive")
        );
        match mode {
            CloseMode::Reset => backend.reset_all().await,
            _ => backend.close_all().await,
        }
        // The client sees its stream end (or an error for a reset), never a hang.
        let ended =
            tokio::time::timeout(SOON, async { while let Some(Ok(_)) = ws.next().await {} }).await;
        assert!(ended.is_ok(), "{mode:?}: client never saw the backend go");
        // The client's direction stays open (half-close) until the client closes it too.
        drop(ws);
        assert!(wait_until(SOON, || proxy.server().stats().tunnels_active() == 0).await);
        assert!(wait_until(SOON, || proxy.server().stats().connections_active() == 0).await);
    }
}

#[tokio::test]
async fn a_backend_dying_after_the_upgrade_by_itself_ends_the_tunnel() {
    let backend = EchoBackend::dies_after_upgrade(64, CloseMode::Fin).await;
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
    let (mut ws, _) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    futures_util::SinkExt::send(&mut ws, Message::binary(vec![7u8; 100]))
        .await
        .unwrap();
    let ended =
        tokio::time::timeout(SOON, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(ended.is_ok());
    drop(ws);
    assert!(wait_until(SOON, || proxy.server().stats().tunnels_active() == 0).await);
}
