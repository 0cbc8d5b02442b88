//! Malformed and hostile requests: each gets the right answer, and not one byte of any of them
//! reaches a backend (the backend records every byte it receives). Plain requests are proxied,
//! so the plain shapes here are the ones refused; the request-smuggling catalogue is in
//! `http.rs`.

use std::time::Duration;

use sluice_e2e::{Proxy, config};
use sluice_testkit::{EchoBackend, RawClient, raw_exchange, raw_exchange_chunked};

use crate::SOON;

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
const VERSION: &str = "Sec-WebSocket-Version: 13\r\n";
const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n";

/// A WebSocket upgrade for `/` with `extra` header lines inserted after Host.
fn upgrade_with(extra: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: example.com\r\n{extra}{UPGRADE}{KEY}{VERSION}\r\n")
        .into_bytes()
}

/// Sends `chunks` one by one (1 ms apart when there are several) and returns the status of the
/// answer's head. A 101 keeps the connection open, so only the head is waited for, however long
/// a loaded machine takes to bring it.
async fn head_status(addr: std::net::SocketAddr, chunks: &[&[u8]]) -> Option<u16> {
    let mut client = RawClient::connect(addr).await.unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        client.send(chunk).await.unwrap();
    }
    client.read_head(SOON).await
}

/// An upgrade missing `remove` (one of the standard lines above).
fn upgrade_without(remove: &str) -> Vec<u8> {
    let all = format!("GET / HTTP/1.1\r\nHost: example.com\r\n{UPGRADE}{KEY}{VERSION}\r\n");
    all.replacen(remove, "", 1).into_bytes()
}

/// (name, request bytes, expected status; None = closed without an answer)
fn catalogue() -> Vec<(&'static str, Vec<u8>, Option<u16>)> {
    let big_header = format!("X-Big: {}\r\n", "a".repeat(20_000));
    let many_headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    vec![
        ("missing key", upgrade_without(KEY), Some(400)),
        ("key not base64", Vec::new().replace_key("Sec-WebSocket-Key: !!!notbase64!!!\r\n"), Some(400)),
        ("key of 15 bytes", Vec::new().replace_key("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\n"), Some(400)),
        ("two keys", upgrade_with(KEY), Some(400)),
        ("version 8", Vec::new().replace_version("Sec-WebSocket-Version: 8\r\n"), Some(426)),
        ("version missing", upgrade_without(VERSION), Some(426)),
        ("POST upgrade", format!("POST / HTTP/1.1\r\nHost: example.com\r\n{UPGRADE}{KEY}{VERSION}\r\n").into_bytes(), Some(405)),
        ("HTTP/1.0 upgrade", format!("GET / HTTP/1.0\r\nHost: example.com\r\n{UPGRADE}{KEY}{VERSION}\r\n").into_bytes(), Some(400)),
        ("HTTP/2.0 request line", b"GET / HTTP/2.0\r\nHost: example.com\r\n\r\n".to_vec(), Some(505)),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), Some(505)),
        // Plain requests are proxied now (tests/e2e/http.rs); these are plain ones refused.
        ("plain POST with an unknown transfer coding", b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(), Some(501)),
        ("plain POST over max_body_bytes", b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1025\r\n\r\n".to_vec(), Some(413)),
        ("plain POST with a malformed chunk size", b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), Some(400)),
        ("plain POST with a chunk extension ended by bare LF", b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n4;a\nbody\r\n0\r\n\r\n".to_vec(), Some(400)),
        ("Upgrade without Connection: upgrade", format!("GET / HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n{KEY}{VERSION}\r\n").into_bytes(), Some(400)),
        ("oversized header line", upgrade_with(&big_header), Some(431)),
        ("too many headers", upgrade_with(&many_headers), Some(431)),
        ("garbage bytes", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(), Some(400)),
        ("random binary with NUL", b"\x00\x01\x02\x03\xff\xfe\r\n\r\n".to_vec(), Some(400)),
        ("NUL in header value", upgrade_with("X-Evil: a\0b\r\n"), Some(400)),
        ("bare LF line ending", format!("GET / HTTP/1.1\nHost: example.com\n{UPGRADE}{KEY}{VERSION}\n").into_bytes(), Some(400)),
        ("bare LF inside the head", upgrade_with("X-A: 1\nX-B: 2\r\n"), Some(400)),
        ("bare CR in value", upgrade_with("X-Evil: a\rb\r\n"), Some(400)),
        ("duplicate Host", upgrade_with("Host: other.example.com\r\n"), Some(400)),
        ("missing Host", format!("GET / HTTP/1.1\r\n{UPGRADE}{KEY}{VERSION}\r\n").into_bytes(), Some(400)),
        ("Content-Length with Transfer-Encoding", upgrade_with("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), Some(400)),
        ("Transfer-Encoding on an upgrade", upgrade_with("Transfer-Encoding: chunked\r\n"), Some(400)),
        ("duplicate Content-Length", upgrade_with("Content-Length: 0\r\nContent-Length: 0\r\n"), Some(400)),
        ("non-numeric Content-Length", upgrade_with("Content-Length: abc\r\n"), Some(400)),
        ("body on an upgrade", upgrade_with("Content-Length: 4\r\n"), Some(400)),
        ("obs-fold", upgrade_with("X-Folded: a\r\n  continued\r\n"), Some(400)),
        ("space before colon", upgrade_with("X-Space : v\r\n"), Some(400)),
        ("invalid header name", upgrade_with("X(Bad): v\r\n"), Some(400)),
        ("empty header name", upgrade_with(": v\r\n"), Some(400)),
        ("request line without version", b"GET /\r\nHost: example.com\r\n\r\n".to_vec(), Some(400)),
        ("target not origin-form", format!("GET chat HTTP/1.1\r\nHost: example.com\r\n{UPGRADE}{KEY}{VERSION}\r\n").into_bytes(), Some(400)),
        ("absolute target naming another host", format!("GET http://evil.example/ HTTP/1.1\r\nHost: example.com\r\n{UPGRADE}{KEY}{VERSION}\r\n").into_bytes(), Some(400)),
        ("Host with spaces", format!("GET / HTTP/1.1\r\nHost: exa mple.com\r\n{UPGRADE}{KEY}{VERSION}\r\n").into_bytes(), Some(400)),
        ("invalid method token", format!("G(T / HTTP/1.1\r\nHost: example.com\r\n{UPGRADE}{KEY}{VERSION}\r\n").into_bytes(), Some(400)),
        ("leading empty line", [b"\r\n".as_slice(), &upgrade_with("")].concat(), Some(400)),
        ("closed without a byte", Vec::new(), None),
        ("half a head, then close", b"GET / HTTP/1.1\r\nHost: exa".to_vec(), None),
    ]
}

/// Builds the standard upgrade with one of its lines replaced.
trait Replace {
    fn replace_key(self, line: &str) -> Vec<u8>;
    fn replace_version(self, line: &str) -> Vec<u8>;
}

impl Replace for Vec<u8> {
    fn replace_key(self, line: &str) -> Vec<u8> {
        String::from_utf8(upgrade_with(""))
            .unwrap()
            .replacen(KEY, line, 1)
            .into_bytes()
    }
    fn replace_version(self, line: &str) -> Vec<u8> {
        String::from_utf8(upgrade_with(""))
            .unwrap()
            .replacen(VERSION, line, 1)
            .into_bytes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_request_gets_its_answer_and_nothing_reaches_the_backend() {
    let backend = EchoBackend::spawn().await;
    let extra = "[limits]\nmax_head_bytes = 16384\nmax_headers = 100\nmax_body_bytes = 1024\n";
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", extra)).await;
    let cases = catalogue();
    assert!(cases.len() >= 40, "the catalogue has {} cases", cases.len());
    for (name, request, expected) in &cases {
        let response = if request.is_empty() {
            let client = RawClient::connect(proxy.addr()).await.unwrap();
            let mut client = client;
            client.shutdown_write().await.unwrap();
            client.finish(SOON).await
        } else if expected.is_none() {
            let mut client = RawClient::connect(proxy.addr()).await.unwrap();
            client.send(request).await.unwrap();
            client.shutdown_write().await.unwrap();
            client.finish(SOON).await
        } else {
            raw_exchange(proxy.addr(), request, SOON).await.unwrap()
        };
        assert_eq!(
            response.status,
            *expected,
            "{name}: got {:?}",
            response.head()
        );
        assert!(
            response.closed,
            "{name}: the connection must be closed after the answer"
        );
        if *expected == Some(426) {
            assert_eq!(
                response.header("sec-websocket-version"),
                Some("13"),
                "{name}"
            );
        }
        if *expected == Some(405) {
            assert_eq!(response.header("allow"), Some("GET"), "{name}");
        }
    }
    // Not one byte of any of them was forwarded.
    assert_eq!(backend.connections_accepted(), 0);
    assert_eq!(backend.bytes_received(), 0);
    // And the proxy is healthy afterwards: a good upgrade goes through.
    assert_eq!(
        head_status(proxy.addr(), &[&upgrade_with("")]).await,
        Some(101)
    );
    let answered = cases.iter().filter(|c| c.2.is_some()).count() as u64;
    assert_eq!(proxy.server().stats().rejected(), answered);
    assert_eq!(
        proxy.server().stats().abandoned(),
        cases.len() as u64 - answered
    );
}

#[tokio::test]
async fn a_slow_head_is_cut_at_the_deadline_with_408_however_long_it_trickles() {
    let backend = EchoBackend::spawn().await;
    let extra = "[timeouts]\nhandshake = \"600ms\"\n";
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", extra)).await;
    // One byte every 100 ms: each read resets nothing, the deadline counts from accept.
    let request = upgrade_with("");
    let chunks: Vec<&[u8]> = request.chunks(1).collect();
    let started = std::time::Instant::now();
    let response = raw_exchange_chunked(proxy.addr(), &chunks, Duration::from_millis(100), SOON)
        .await
        .unwrap();
    assert_eq!(response.status, Some(408));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(backend.bytes_received(), 0);
}

#[tokio::test]
async fn a_head_split_into_many_tiny_writes_still_upgrades() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
    let request = upgrade_with("X-Padding: some value\r\n");
    let chunks: Vec<&[u8]> = request.chunks(3).collect();
    assert_eq!(head_status(proxy.addr(), &chunks).await, Some(101));
    // The backend received the head byte for byte, plus the X-Forwarded-* fields.
    let seen = &backend.requests()[0];
    assert_eq!(seen.header("x-padding"), Some("some value"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("example.com"));
}

#[tokio::test]
async fn forwarded_headers_from_untrusted_peers_are_replaced_and_from_trusted_ones_appended() {
    let backend = EchoBackend::spawn().await;
    let spoofed = upgrade_with("X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n");
    let untrusted = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
    assert_eq!(head_status(untrusted.addr(), &[&spoofed]).await, Some(101));
    let trusting = config(&[backend.addr()], "round_robin", "").replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\"]",
    );
    let trusted = Proxy::start(&trusting).await;
    assert_eq!(head_status(trusted.addr(), &[&spoofed]).await, Some(101));
    let requests = backend.requests();
    assert_eq!(requests[0].header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(requests[0].header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        requests[1].header_all("x-forwarded-for"),
        vec!["6.6.6.6, 127.0.0.1"]
    );
    assert_eq!(requests[1].header("x-forwarded-proto"), Some("https"));
}
