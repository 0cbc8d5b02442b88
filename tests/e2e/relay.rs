//! The L4 act seen from outside: which relay path runs, timeouts, limits and shutdown.

use std::time::Duration;

use futures_util::StreamExt;
use sluice_e2e::{Proxy, config};
use sluice_testkit::{EchoBackend, Message, RawClient, wait_until, ws_connect, ws_roundtrip};

use crate::SOON;

/// Moves `total` bytes each way through one tunnel in 256 KiB messages.
async fn bulk(proxy: &Proxy, total: usize) {
    let (mut ws, _) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    let chunk: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    for _ in 0..total / chunk.len() {
        let echoed = ws_roundtrip(&mut ws, Message::binary(chunk.clone()))
            .await
            .unwrap();
        assert!(echoed == Message::binary(chunk.clone()));
    }
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
}

fn relay_section(mode: &str, max_pipes: usize) -> String {
    format!("[relay]\nmode = \"{mode}\"\nmax_pipes = {max_pipes}\n")
}

#[tokio::test]
async fn splice_mode_moves_tunnel_bytes_through_pipes() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&config(
        &[backend.addr()],
        "round_robin",
        &relay_section("splice", 64),
    ))
    .await;
    let stats = sluice_splice::stats();
    let before = stats.spliced_bytes();
    bulk(&proxy, 8 << 20).await;
    // Both directions: at least 16 MiB of payload went through splice(2) (other tests in this
    // binary may add to the process-wide counter, never subtract).
    assert!(
        stats.spliced_bytes() - before >= 16 << 20,
        "splice path not taken"
    );
    // Pipes are given back when the tunnel ends.
    assert!(wait_until(SOON, || proxy.server().pipes().0 == 0).await);
}

#[tokio::test]
async fn auto_mode_splices_bulk_transfers() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&config(
        &[backend.addr()],
        "round_robin",
        &relay_section("auto", 64),
    ))
    .await;
    let before = sluice_splice::stats().spliced_bytes();
    bulk(&proxy, 8 << 20).await;
    assert!(
        sluice_splice::stats().spliced_bytes() > before,
        "auto never switched to splice"
    );
}

#[tokio::test]
async fn copy_mode_and_the_no_pipe_fallback_relay_everything() {
    for section in [relay_section("copy", 64), relay_section("splice", 0)] {
        let backend = EchoBackend::spawn().await;
        let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", &section)).await;
        let copied = sluice_splice::stats().copied_bytes();
        bulk(&proxy, 2 << 20).await;
        assert!(
            sluice_splice::stats().copied_bytes() - copied >= 4 << 20,
            "{section}"
        );
        assert_eq!(
            proxy.server().pipes(),
            (0, 0),
            "{section}: no pipe may be created"
        );
    }
    assert!(
        sluice_splice::stats().copy_fallbacks() > 0,
        "max_pipes = 0 must fall back to copy"
    );
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_the_idle_timeout_and_holds_no_pipe() {
    let backend = EchoBackend::spawn().await;
    let extra = "[timeouts]\ntunnel_idle = \"400ms\"\n";
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", extra)).await;
    let (mut ws, _) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    assert_eq!(
        ws_roundtrip(&mut ws, Message::text("hi")).await.unwrap(),
        Message::text("hi")
    );
    assert_eq!(proxy.server().pipes().0, 0, "an idle tunnel holds no pipe");
    let started = std::time::Instant::now();
    let ended =
        tokio::time::timeout(SOON, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(ended.is_ok(), "idle tunnel never closed");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(wait_until(SOON, || proxy.server().stats().tunnels_active() == 0).await);
}

#[tokio::test]
async fn over_the_connection_limit_a_client_gets_503_at_once() {
    let backend = EchoBackend::spawn().await;
    let extra = "[limits]\nmax_connections = 2\n";
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", extra)).await;
    let (_a, _) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    let (_b, _) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    let mut third = RawClient::connect(proxy.addr()).await.unwrap();
    assert_eq!(third.read_head(SOON).await, Some(503));
    assert_eq!(proxy.server().stats().refused_over_limit(), 1);
    assert_eq!(backend.connections_accepted(), 2);
}

#[tokio::test]
async fn shutdown_waits_for_tunnels_then_closes_them_at_the_deadline() {
    let backend = EchoBackend::spawn().await;
    let extra = "[timeouts]\nshutdown = \"500ms\"\n";
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", extra)).await;
    let addr = proxy.addr();
    let (mut ws, _) = ws_connect(addr, "/", &[]).await.unwrap();
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(proxy.shutdown(SOON));
    // Still relaying during the grace period.
    assert_eq!(
        ws_roundtrip(&mut ws, Message::text("still here"))
            .await
            .unwrap(),
        Message::text("still here")
    );
    // New connections are refused once the listener is closed.
    assert!(wait_until(SOON, || std::net::TcpStream::connect(addr).is_err()).await);
    let ended =
        tokio::time::timeout(SOON, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(
        ended.is_ok(),
        "tunnel must be closed at the shutdown deadline"
    );
    stopping.await.unwrap();
    // Grace until 500 ms minus the default spread (a sixth of it), then closed.
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(wait_until(SOON, || backend.active_connections() == 0).await);
}
