//! Limits with clear answers: per source address (concurrent connections, new-connection rate,
//! the exempt networks, a bounded table), per listener, per backend.

use std::net::{IpAddr, SocketAddr};

use sluice_e2e::{Proxy, config};
use sluice_proxy::Refused;
use sluice_testkit::{
    EchoBackend, Message, RawClient, RawResponse, WsStream, connect_from, wait_until, ws_handshake,
    ws_roundtrip,
};

use crate::SOON;

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A WebSocket tunnel from `from`, echoing once.
async fn tunnel_from(from: IpAddr, proxy: SocketAddr) -> WsStream {
    let tcp = connect_from(from, proxy).await.unwrap();
    let (mut ws, _) = ws_handshake(tcp, "sluice", "/", &[]).await.unwrap();
    ws_roundtrip(&mut ws, Message::text("hi")).await.unwrap();
    ws
}

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: sluice\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// An upgrade request from `from`, read to the close.
async fn refused_from(from: IpAddr, proxy: SocketAddr) -> RawResponse {
    let mut raw = RawClient::connect_from(from, proxy).await.unwrap();
    raw.send(UPGRADE).await.unwrap();
    raw.finish(SOON).await
}

/// The answer is complete: a head and exactly Content-Length bytes, then the close.
fn assert_complete(response: &RawResponse, status: u16) {
    assert_eq!(response.status, Some(status), "{response:?}");
    assert!(response.closed && !response.reset, "{response:?}");
    let length: usize = response
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .expect("a Content-Length");
    assert_eq!(response.body().len(), length);
    assert_eq!(response.header("connection"), Some("close"));
}

#[tokio::test]
async fn per_source_connections_one_address_against_many() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&config(
        &[backend.addr()],
        "round_robin",
        "[limits.per_source]\nmax_connections = 2",
    ))
    .await;
    let a = tunnel_from(loopback(2), proxy.addr()).await;
    let _b = tunnel_from(loopback(2), proxy.addr()).await;
    let response = refused_from(loopback(2), proxy.addr()).await;
    assert_complete(&response, 429);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert!(String::from_utf8_lossy(response.body()).contains("429 Too Many Requests"));
    // Nothing of it reached the backend.
    assert_eq!(backend.handle().connections_accepted(), 2);
    // Other addresses are other sources.
    for last in 3..8 {
        tunnel_from(loopback(last), proxy.addr()).await;
    }
    // A closed tunnel gives its place back.
    drop(a);
    assert!(
        sluice_testkit::wait_until_async(SOON, || async {
            let tcp = connect_from(loopback(2), proxy.addr()).await.unwrap();
            ws_handshake(tcp, "sluice", "/", &[]).await.is_ok()
        })
        .await
    );
    assert!(proxy.server().stats().refused(Refused::SourceConnections) >= 1);
}

#[tokio::test]
async fn per_source_rate_answers_429_with_the_time_to_the_next_token() {
    let backend = EchoBackend::spawn().await;
    // One new connection per 100 s, two at once: the third within 100 s is refused.
    let proxy = Proxy::start(&config(
        &[backend.addr()],
        "round_robin",
        "[limits.per_source]\nconnection_rate = 0.01\nconnection_burst = 2\nexempt = [\"127.0.0.4\"]",
    ))
    .await;
    tunnel_from(loopback(2), proxy.addr()).await;
    tunnel_from(loopback(2), proxy.addr()).await;
    let response = refused_from(loopback(2), proxy.addr()).await;
    assert_complete(&response, 429);
    let retry: u64 = response
        .header("retry-after")
        .and_then(|r| r.parse().ok())
        .expect("a Retry-After");
    assert!((90..=100).contains(&retry), "Retry-After: {retry}");
    assert_eq!(proxy.server().stats().refused(Refused::SourceRate), 1);
    assert_eq!(backend.handle().connections_accepted(), 2);
    // The exempt address is never limited.
    for _ in 0..4 {
        tunnel_from(loopback(4), proxy.addr()).await;
    }
    // Exempt sources are not even tracked.
    assert_eq!(proxy.server().source_table_len(), 1);
}

#[tokio::test]
async fn the_source_table_stays_bounded_under_many_sources() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&config(
        &[backend.addr()],
        "round_robin",
        "[limits.per_source]\nconnection_rate = 100\ntable_size = 64",
    ))
    .await;
    for i in 0..300u16 {
        let [hi, lo] = i.to_be_bytes();
        let from = IpAddr::from([127, 1, hi, lo.max(1)]);
        let tcp = connect_from(from, proxy.addr()).await.unwrap();
        let (mut ws, _) = ws_handshake(tcp, "sluice", "/", &[]).await.unwrap();
        ws.close(None).await.unwrap();
        assert!(proxy.server().source_table_len() <= 64);
    }
    assert_eq!(proxy.server().source_table_len(), 64);
    assert_eq!(proxy.server().stats().refused(Refused::SourceRate), 0);
}

#[tokio::test]
async fn a_listener_max_connections_answers_503() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&config(
        &[backend.addr()],
        "round_robin",
        "max_connections = 2",
    ))
    .await;
    let a = tunnel_from(loopback(1), proxy.addr()).await;
    let _b = tunnel_from(loopback(1), proxy.addr()).await;
    let response = refused_from(loopback(1), proxy.addr()).await;
    assert_eq!(response.status, Some(503), "{response:?}");
    assert_eq!(
        proxy
            .server()
            .stats()
            .refused(Refused::ListenerMaxConnections),
        1
    );
    assert_eq!(backend.handle().connections_accepted(), 2);
    drop(a);
    assert!(
        sluice_testkit::wait_until_async(SOON, || async {
            let tcp = connect_from(loopback(1), proxy.addr()).await.unwrap();
            ws_handshake(tcp, "sluice", "/", &[]).await.is_ok()
        })
        .await
    );
}

#[tokio::test]
async fn full_backends_are_skipped_and_503_when_all_are_full() {
    let backends = [EchoBackend::spawn().await, EchoBackend::spawn().await];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let proxy = Proxy::start(&config(
        &addrs,
        "hash\"\nhash_key = \"header:x-user\"\nmax_connections_per_backend = 1\nhash_fallback = \"least_conn",
        "",
    ))
    .await;
    // The same key twice: the second goes to the other backend (its next choice).
    let mut held = Vec::new();
    for _ in 0..2 {
        let tcp = connect_from(loopback(1), proxy.addr()).await.unwrap();
        let (ws, _) = ws_handshake(tcp, "sluice", "/", &[("x-user", "alice")])
            .await
            .unwrap();
        held.push(ws);
    }
    let upgraded: Vec<usize> = backends.iter().map(|b| b.handle().upgrades()).collect();
    assert_eq!(upgraded, [1, 1]);
    // Both full: 503, nothing sent anywhere.
    let response = refused_from(loopback(1), proxy.addr()).await;
    assert_eq!(response.status, Some(503), "{response:?}");
    assert_eq!(
        backends
            .iter()
            .map(|b| b.handle().connections_accepted())
            .sum::<usize>(),
        2
    );
    // A tunnel ends: its backend takes the next one.
    held.pop();
    assert!(
        wait_until(SOON, || {
            proxy
                .server()
                .snapshot()
                .pools()
                .iter()
                .flat_map(|p| p.backends())
                .map(|b| b.active())
                .sum::<usize>()
                == 1
        })
        .await
    );
    tunnel_from(loopback(1), proxy.addr()).await;
}

#[tokio::test]
async fn per_source_limits_reload_hot_but_the_table_shape_needs_a_restart() {
    let backend = EchoBackend::spawn().await;
    let with = |limits: &str| config(&[backend.addr()], "round_robin", limits);
    let proxy = Proxy::start(&with("[limits.per_source]\nmax_connections = 1")).await;
    let _held = tunnel_from(loopback(2), proxy.addr()).await;
    assert_complete(&refused_from(loopback(2), proxy.addr()).await, 429);
    // A higher limit applies to the next connection; the held one is still counted.
    proxy
        .reload(&with("[limits.per_source]\nmax_connections = 2"))
        .await
        .unwrap();
    let _second = tunnel_from(loopback(2), proxy.addr()).await;
    assert_complete(&refused_from(loopback(2), proxy.addr()).await, 429);
    let refused = proxy
        .reload(&with(
            "[limits.per_source]\nmax_connections = 2\ntable_size = 128",
        ))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("limits.per_source.table_size"),
        "{refused}"
    );
}
