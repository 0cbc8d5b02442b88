//! Who the client is: PROXY protocol v1/v2 accepted from trusted peers only, and the client
//! address it carries driving X-Forwarded-For, source hashing, per-source limits and the PROXY
//! header sent on to backends.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sluice_e2e::{Proxy, backend_list};
use sluice_proxy::Refused;
use sluice_testkit::{EchoBackend, Message, RawClient, wait_until, ws_handshake, ws_roundtrip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::SOON;

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// An `http` listener taking PROXY headers from `from`, pool `main` with `pool` lines.
fn proxied(backends: &[SocketAddr], from: &str, pool: &str, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "edge"
listen = "127.0.0.1:0"
accept_proxy_protocol = {{ from = [{from}] }}

[[routes]]
listener = "edge"
pool = "main"

[pools.main]
{pool}
backends = [{}]

{extra}
"#,
        backend_list(backends)
    )
}

fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

fn v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            // With a TLV after the addresses, which must be skipped.
            out.extend_from_slice(&[0x21, 0x11, 0, 12 + 7]);
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
            out.extend_from_slice(&[0xEA, 0, 4, b'v', b'p', b'c', b'e']);
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.extend_from_slice(&[0x21, 0x21, 0, 36]);
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

fn v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
    out
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Opens a connection, writes `header`, then upgrades and echoes one message.
async fn upgrade_with(proxy: SocketAddr, header: &[u8]) {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(header).await.unwrap();
    let (mut ws, _) = ws_handshake(tcp, "edge", "/", &[]).await.unwrap();
    ws_roundtrip(&mut ws, Message::text("hi")).await.unwrap();
}

/// What reached the backend after a refused connection: nothing, and the connection closed.
async fn assert_closed_unanswered(mut tcp: TcpStream) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(SOON, tcp.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn proxy_v1_and_v2_from_a_trusted_peer_set_the_client_address() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&proxied(
        &[backend.addr()],
        "\"127.0.0.0/8\"",
        "send_proxy_protocol = \"v2\"",
        "",
    ))
    .await;
    let destination = addr("198.51.100.1:443");
    let headers = [
        v1(addr("203.0.113.7:4444"), destination),
        v2(addr("203.0.113.8:5555"), destination),
        v1(addr("[2001:db8::9]:6666"), addr("[2001:db8::1]:443")),
        v2(addr("[2001:db8::a]:7777"), addr("[2001:db8::1]:443")),
    ];
    for header in &headers {
        upgrade_with(proxy.addr(), header).await;
    }
    assert!(wait_until(SOON, || backend.requests().len() == 4).await);
    let requests = backend.requests();
    let seen: Vec<(&str, Option<SocketAddr>)> = requests
        .iter()
        .map(|r| {
            (
                r.header("x-forwarded-for").unwrap_or_default(),
                r.proxy.as_ref().and_then(|p| p.source),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("203.0.113.7", Some(addr("203.0.113.7:4444"))),
            ("203.0.113.8", Some(addr("203.0.113.8:5555"))),
            ("2001:db8::9", Some(addr("[2001:db8::9]:6666"))),
            ("2001:db8::a", Some(addr("[2001:db8::a]:7777"))),
        ]
    );
    // The header sent on names the destination the edge saw, not sluice's own address.
    let sent = requests[0].proxy.clone().unwrap();
    assert_eq!(sent.version, 2);
    assert_eq!(sent.destination, Some(destination));
}

#[tokio::test]
async fn a_peer_outside_the_trusted_networks_is_refused_and_nothing_reaches_a_backend() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&proxied(&[backend.addr()], "\"10.0.0.0/8\"", "", "")).await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut request = v1(addr("203.0.113.7:4444"), addr("198.51.100.1:443"));
    request.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    tcp.write_all(&request).await.unwrap();
    assert_closed_unanswered(tcp).await;
    assert_eq!(proxy.server().stats().refused(Refused::ProxyUntrusted), 1);
    // Without a header either: never guessed.
    let tcp = RawClient::connect(proxy.addr()).await.unwrap();
    let response = tcp.finish(SOON).await;
    assert!(response.closed && response.bytes.is_empty());
    assert_eq!(proxy.server().stats().refused(Refused::ProxyUntrusted), 2);
    assert_eq!(backend.handle().connections_accepted(), 0);
}

#[tokio::test]
async fn a_header_split_over_many_writes_is_read_whole() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&proxied(&[backend.addr()], "\"127.0.0.1\"", "", "")).await;
    for header in [
        v2(addr("192.0.2.44:1000"), addr("198.51.100.1:443")),
        v1(addr("192.0.2.45:1000"), addr("198.51.100.1:443")),
    ] {
        let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        for byte in &header {
            tcp.write_all(std::slice::from_ref(byte)).await.unwrap();
            // Apart in time, so that they arrive as separate segments.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (mut ws, _) = ws_handshake(tcp, "edge", "/", &[]).await.unwrap();
        ws_roundtrip(&mut ws, Message::text("hi")).await.unwrap();
    }
    assert!(wait_until(SOON, || backend.requests().len() == 2).await);
    let forwarded: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.header("x-forwarded-for").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(forwarded, ["192.0.2.44", "192.0.2.45"]);
}

#[tokio::test]
async fn a_slow_header_is_cut_at_the_handshake_deadline() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&proxied(
        &[backend.addr()],
        "\"127.0.0.1\"",
        "",
        "[timeouts]\nhandshake = \"300ms\"",
    ))
    .await;
    // Before the connect: the deadline counts from accept, which comes after this.
    let started = std::time::Instant::now();
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.1 ").await.unwrap();
    assert_closed_unanswered(tcp).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(proxy.server().stats().refused(Refused::ProxyTimeout), 1);
    assert_eq!(backend.handle().connections_accepted(), 0);
}

#[tokio::test]
async fn garbage_instead_of_a_header_is_closed() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&proxied(&[backend.addr()], "\"127.0.0.1\"", "", "")).await;
    let mut bad_version = v2_local();
    bad_version[12] = 0x31;
    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.1 198.51.100.1 99999 443\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.1 198.51.100.1 1 443\n".to_vec(),
        bad_version,
        vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5],
    ] {
        let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        tcp.write_all(&garbage).await.unwrap();
        assert_closed_unanswered(tcp).await;
    }
    assert_eq!(proxy.server().stats().refused(Refused::ProxyInvalid), 5);
    assert_eq!(backend.handle().connections_accepted(), 0);
}

#[tokio::test]
async fn v2_local_keeps_the_peer_address() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&proxied(&[backend.addr()], "\"127.0.0.1\"", "", "")).await;
    upgrade_with(proxy.addr(), &v2_local()).await;
    assert!(wait_until(SOON, || backend.requests().len() == 1).await);
    assert_eq!(
        backend.requests()[0].header("x-forwarded-for"),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn source_hashing_and_per_source_limits_follow_the_proxy_address() {
    let backends = [
        EchoBackend::spawn().await,
        EchoBackend::spawn().await,
        EchoBackend::spawn().await,
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let proxy = Proxy::start(&proxied(
        &addrs,
        "\"127.0.0.1\"",
        "balance = \"hash\"\nhash_key = \"source_ip\"\nhash_balance_factor = 0",
        "[limits.per_source]\nmax_connections = 2",
    ))
    .await;
    let destination = addr("198.51.100.1:443");
    // The same client behind the edge, on ever new edge connections and ports: one backend.
    let mut held = Vec::new();
    for port in [1000, 2000] {
        let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        tcp.write_all(&v2(
            SocketAddr::new([203, 0, 113, 50].into(), port),
            destination,
        ))
        .await
        .unwrap();
        let (mut ws, _) = ws_handshake(tcp, "edge", "/", &[]).await.unwrap();
        ws_roundtrip(&mut ws, Message::text("hi")).await.unwrap();
        held.push(ws);
    }
    let upgraded: Vec<usize> = backends.iter().map(|b| b.handle().upgrades()).collect();
    assert_eq!(upgraded.iter().sum::<usize>(), 2);
    assert!(
        upgraded.contains(&2),
        "one backend for one client: {upgraded:?}"
    );
    // A third connection of that client is over its limit, though the edge's own address
    // (127.0.0.1) is the same for everyone.
    let mut raw = RawClient::connect(proxy.addr()).await.unwrap();
    let mut request = v1(addr("203.0.113.50:3000"), destination);
    request.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    raw.send(&request).await.unwrap();
    let response = raw.finish(SOON).await;
    assert_eq!(response.status, Some(429), "{response:?}");
    assert_eq!(
        proxy.server().stats().refused(Refused::SourceConnections),
        1
    );
    // Other clients behind the same edge spread over the backends, unaffected.
    for i in 0..30u8 {
        upgrade_with(
            proxy.addr(),
            &v1(SocketAddr::new([192, 0, 2, i].into(), 1), destination),
        )
        .await;
    }
    let spread = backends
        .iter()
        .zip(&upgraded)
        .filter(|(b, before)| b.handle().upgrades() > **before)
        .count();
    assert!(spread >= 2, "30 clients on one backend");
    drop(held);
}

#[tokio::test]
async fn a_tcp_listener_takes_the_header_and_passes_the_client_on() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "raw"
listen = "127.0.0.1:0"
mode = "tcp"
pool = "main"
accept_proxy_protocol = {{ from = ["127.0.0.1"] }}

[pools.main]
send_proxy_protocol = "v1"
backends = ["{}"]
"#,
        backend.addr()
    ))
    .await;
    upgrade_with(
        proxy.addr(),
        &v2(addr("203.0.113.99:4321"), addr("198.51.100.1:443")),
    )
    .await;
    assert!(wait_until(SOON, || backend.requests().len() == 1).await);
    let header = backend.requests()[0].proxy.clone().expect("a PROXY header");
    assert_eq!(header.version, 1);
    assert_eq!(header.source, Some(addr("203.0.113.99:4321")));
    assert_eq!(header.destination, Some(addr("198.51.100.1:443")));
}

#[tokio::test]
async fn a_tls_listener_reads_the_header_before_the_client_hello() {
    let cert = crate::l4::TestCert::new(&["chat.example"]);
    let entry = crate::tls::write_cert(&crate::tls::temp_dir(), "chat", &cert);
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "edge"
listen = "127.0.0.1:0"
tls = {{ certificates = [{entry}] }}
accept_proxy_protocol = {{ from = ["127.0.0.1"] }}

[[routes]]
listener = "edge"
pool = "main"

[pools.main]
backends = ["{}"]
"#,
        backend.addr()
    ))
    .await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(&v2(addr("203.0.113.5:999"), addr("198.51.100.1:443")))
        .await
        .unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("chat.example").unwrap();
    let tls = crate::l4::connector(&[&cert])
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut ws, _) = ws_handshake(tls, "chat.example", "/", &[]).await.unwrap();
    ws_roundtrip(&mut ws, Message::text("hi")).await.unwrap();
    assert!(wait_until(SOON, || backend.requests().len() == 1).await);
    let request = &backend.requests()[0];
    assert_eq!(request.header("x-forwarded-for"), Some("203.0.113.5"));
    assert_eq!(request.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn a_passthrough_listener_reads_the_header_before_the_client_hello() {
    let cert = crate::l4::TestCert::new(&["a.example"]);
    let tls_backend = crate::l4::TlsEcho::spawn(&cert).await;
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "tls"
listen = "127.0.0.1:0"
mode = "tls-passthrough"
sni_routes = [{{ sni = "a.example", pool = "a" }}]
accept_proxy_protocol = {{ from = ["127.0.0.1"] }}

[pools.a]
backends = ["{}"]
"#,
        tls_backend.addr
    ))
    .await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(&v1(addr("203.0.113.6:999"), addr("198.51.100.1:443")))
        .await
        .unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("a.example").unwrap();
    let tls = crate::l4::connector(&[&cert])
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut ws, _) = ws_handshake(tls, "a.example", "/", &[]).await.unwrap();
    ws_roundtrip(&mut ws, Message::text("hi")).await.unwrap();
    assert_eq!(tls_backend.connections(), 1);
}

#[tokio::test]
async fn plain_requests_of_a_pool_sending_proxy_never_share_a_backend_connection() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&sluice_e2e::config(
        &[backend.addr()],
        "round_robin\"\nsend_proxy_protocol = \"v1",
        "",
    ))
    .await;
    for last in [2u8, 3] {
        let from = IpAddr::from([127, 0, 0, last]);
        let mut raw = RawClient::connect_from(from, proxy.addr()).await.unwrap();
        raw.send(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let response = raw.finish(SOON).await;
        assert_eq!(response.status, Some(200), "{response:?}");
    }
    let sources: Vec<Option<IpAddr>> = backend
        .requests()
        .iter()
        .map(|r| r.proxy.as_ref().and_then(|p| p.source).map(|s| s.ip()))
        .collect();
    assert_eq!(
        sources,
        [
            Some(IpAddr::from([127, 0, 0, 2])),
            Some(IpAddr::from([127, 0, 0, 3]))
        ]
    );
    assert_eq!(backend.handle().connections_accepted(), 2);
    assert_eq!(proxy.server().idle_backend_connections(), 0);
}
