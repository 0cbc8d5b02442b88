//! Plain HTTP/1.1 at L7 beside the WebSocket tunnels: keep-alive, routing per request, bodies
//! both ways, bodiless answers, `100 Continue`, backends that fail, the idle pool, timeouts and
//! limits, a long-polling session that ends in an upgrade on the same backend, and a catalogue
//! of request-smuggling shapes, each refused with nothing forwarded.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sluice_e2e::{Proxy, backend_list, config};
use sluice_proxy::StatusClass;
use sluice_testkit::{
    EchoBackend, HttpBackend, Message, RawClient, raw_exchange, ws_connect, ws_handshake,
    ws_roundtrip,
};

use crate::SOON;

/// A plain HTTP/1.1 client (reqwest: hyper underneath), one keep-alive connection at a time.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(SOON)
        .build()
        .unwrap()
}

fn url(proxy: &Proxy, path: &str) -> String {
    format!("http://{}{}", proxy.addr(), path)
}

fn backend_of(response: &reqwest::Response) -> String {
    response.headers()["x-backend"].to_str().unwrap().to_owned()
}

/// Reads from `client` until one whole response with a `Content-Length` body is in; returns
/// its head and body and leaves what follows.
async fn read_response(client: &mut RawClient) -> (String, Vec<u8>) {
    let complete = |bytes: &[u8]| -> Option<usize> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = std::str::from_utf8(&bytes[..end]).ok()?;
        let length = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        (bytes.len() >= end + length).then_some(end + length)
    };
    assert!(
        client.read_until(SOON, |b| complete(b).is_some()).await,
        "no whole response in {:?}",
        String::from_utf8_lossy(client.received())
    );
    let all = client.take_received();
    let len = complete(&all).unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8(all[..end].to_vec()).unwrap();
    let body = all[end..len].to_vec();
    (head, body)
}

// One thread: hyper gives a connection back to its pool from the connection's own task, and on
// two threads the next request can be quicker and open a second connection.
#[tokio::test]
async fn keep_alive_requests_are_routed_each_to_its_pool_over_reused_backend_connections() {
    let a = HttpBackend::spawn("a").await;
    let b = HttpBackend::spawn("b").await;
    let main = HttpBackend::spawn("main").await;
    let extra = format!(
        "[[routes]]\nlistener = \"public\"\npath_prefix = \"/a/\"\npool = \"a\"\n\n\
         [[routes]]\nlistener = \"public\"\npath_prefix = \"/b/\"\npool = \"b\"\n\n\
         [pools.a]\nbackends = [{}]\n\n[pools.b]\nbackends = [{}]\n",
        backend_list(&[a.addr()]),
        backend_list(&[b.addr()])
    );
    let proxy = Proxy::start(&config(&[main.addr()], "round_robin", &extra)).await;
    let http = client();
    for i in 0..30 {
        let (path, expected) = match i % 3 {
            0 => (format!("/a/{i}"), "a"),
            1 => (format!("/b/{i}"), "b"),
            _ => (format!("/other/{i}"), "main"),
        };
        let response = http.get(url(&proxy, &path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(backend_of(&response), expected, "{path}");
        assert_eq!(response.text().await.unwrap(), format!("{expected}\n"));
    }
    let stats = proxy.server().stats();
    assert_eq!(stats.accepted(), 1, "one client connection for all 30");
    for backend in [&a, &b, &main] {
        assert_eq!(backend.connections_accepted(), 1, "{}", backend.name());
        assert_eq!(backend.requests().len(), 10);
    }
    assert_eq!(stats.http_requests(StatusClass::Success), 30);
    assert_eq!(stats.backend_connections_reused(), 27);
    assert_eq!(stats.upgraded(), 0);
    assert!(stats.http_duration_total() > Duration::ZERO);
    // Each request carried the forwarded fields.
    let seen = &a.requests()[0];
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(proxy.server().idle_backend_connections(), 3);
}

#[tokio::test]
async fn chunked_bodies_both_ways_and_bodiless_answers_keep_one_connection_in_sync() {
    let backend = HttpBackend::spawn("h").await;
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
    let http = client();

    // A chunked upload (no length known: reqwest streams it chunked).
    let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = (0..50u64)
        .map(|i| {
            Ok(bytes::Bytes::from(
                (i * 1000..(i + 1) * 1000)
                    .map(sluice_testkit::pattern)
                    .collect::<Vec<u8>>(),
            ))
        })
        .collect();
    let response = http
        .post(url(&proxy, "/sink"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        format!("bytes=50000 sum={}", sluice_testkit::checksum(50_000))
    );
    let sink = backend.requests().pop().unwrap();
    assert_eq!(sink.header("transfer-encoding"), Some("chunked"));

    // A chunked answer with extensions and a trailer: re-chunked, extensions and trailer gone.
    let response = http.get(url(&proxy, "/chunked")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    assert!(response.headers().get("trailer").is_none());
    assert_eq!(response.text().await.unwrap(), "hello chunked world");

    // HEAD: the length of the body it does not have, and no body.
    let response = http.head(url(&proxy, "/head")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], "1000");
    assert!(response.bytes().await.unwrap().is_empty());
    for status in [204, 304] {
        let response = http
            .get(url(&proxy, &format!("/status/{status}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(response.headers()["etag"], "\"v1\"");
        assert!(response.bytes().await.unwrap().is_empty());
    }
    // A body delimited by the backend's close reaches an HTTP/1.1 client re-chunked, so the
    // client connection lives on.
    let response = http
        .get(url(&proxy, "/close-delimited"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    assert_eq!(response.text().await.unwrap(), "close-delimited body");
    // Then a plain GET on the same connection, right after all of them.
    let response = http.get(url(&proxy, "/after")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "h\n");
    assert_eq!(
        proxy.server().stats().accepted(),
        1,
        "one client connection"
    );
    assert_eq!(
        proxy.server().stats().http_requests(StatusClass::Success),
        6
    );
    assert_eq!(
        proxy
            .server()
            .stats()
            .http_requests(StatusClass::Redirection),
        1
    );
}

#[tokio::test]
async fn what_the_backend_receives_is_canonical_and_free_of_hop_by_hop_fields() {
    let backend = HttpBackend::spawn("h").await;
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
    let mut client = RawClient::connect(proxy.addr()).await.unwrap();
    client
        .send(
            b"POST /echo HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Secret, HTTP2-Settings\r\n\
              X-Secret: s\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\n\
              HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nProxy-Authorization: Basic eDp5\r\n\
              Transfer-Encoding: Chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n006\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        )
        .await
        .unwrap();
    let (head, body) = read_response(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, b"hello world");
    let raw = String::from_utf8(backend.received_raw()).unwrap();
    let (forwarded_head, forwarded_body) = raw.split_once("\r\n\r\n").unwrap();
    for gone in [
        "X-Secret",
        "Keep-Alive",
        "TE:",
        "Upgrade",
        "HTTP2-Settings",
        "Proxy-",
        "Connection",
        "Chunked",
    ] {
        assert!(!forwarded_head.contains(gone), "{gone} in {forwarded_head}");
    }
    assert!(forwarded_head.contains("\r\nTransfer-Encoding: chunked"));
    assert!(forwarded_head.contains("\r\nX-Forwarded-For: 127.0.0.1"));
    // Decoded and re-encoded: no extension, no leading zero, no trailer.
    assert_eq!(forwarded_body, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
}

#[tokio::test]
async fn expect_100_continue_is_relayed_and_a_refusal_closes_the_connection() {
    let backend = HttpBackend::spawn("h").await;
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
    let mut client = RawClient::connect(proxy.addr()).await.unwrap();
    client
        .send(b"PUT /continue HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(client.read_head(SOON).await, Some(100));
    let interim = client.take_received();
    assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    client.send(b"hello").await.unwrap();
    let (head, body) = read_response(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(body, b"hello");

    // The same connection, a backend that refuses without reading: the client never sends its
    // body, so the connection cannot carry another request.
    client
        .send(b"PUT /reject-expect HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    let response = client.finish(SOON).await;
    assert_eq!(response.status, Some(417));
    assert_eq!(response.header("connection"), Some("close"));
    assert!(response.closed);
}

#[tokio::test]
async fn backends_that_fail_mid_response_or_before_it() {
    let backend = HttpBackend::spawn("h").await;
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
    // Closed after 1,000 of 100,000 announced bytes: the client sees the cut.
    let http = client();
    let response = http.get(url(&proxy, "/truncate")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.bytes().await.is_err(),
        "a truncated body is an error"
    );
    // The proxy goes on: a fresh request works.
    let response = http.get(url(&proxy, "/")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "h\n");

    // A backend that closes without answering (on a fresh connection): 502.
    let dead =
        sluice_testkit::StaticResponder::spawn(Vec::new(), sluice_testkit::AfterResponse::Close)
            .await;
    let proxy = Proxy::start(&config(&[dead.addr()], "round_robin", "")).await;
    let response = raw_exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", SOON)
        .await
        .unwrap();
    assert_eq!(response.status, Some(502));
    assert!(response.closed);
    // Nothing listening: 502 as well, and the next plain request still gets its answer.
    let refused = sluice_testkit::refused_addr();
    let proxy = Proxy::start(&config(&[refused], "round_robin", "")).await;
    for _ in 0..2 {
        let response = raw_exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", SOON)
            .await
            .unwrap();
        assert_eq!(response.status, Some(502));
    }
    assert_eq!(
        proxy
            .server()
            .stats()
            .http_requests(StatusClass::ServerError),
        2
    );
}

#[tokio::test]
async fn a_stale_pooled_connection_is_retried_once_for_idempotent_requests_only() {
    let backend = HttpBackend::spawn("h").await;
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
    let mut client = RawClient::connect(proxy.addr()).await.unwrap();
    // The first request opens a backend connection, which goes to the idle pool.
    client
        .send(b"GET /flaky HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The second is sent on it; the backend closes it without a byte: sent again on a new one.
    client
        .send(b"GET /flaky HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(proxy.server().stats().stale_retries(), 1);
    assert_eq!(backend.connections_accepted(), 2);
    // A POST is not idempotent: the same failure is a 502, never a second send.
    client
        .send(b"POST /flaky HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let response = client.finish(SOON).await;
    assert_eq!(response.status, Some(502));
    assert_eq!(proxy.server().stats().stale_retries(), 1);
    assert_eq!(backend.requests().len(), 4, "the POST was sent once");
}

#[tokio::test]
async fn timeouts_and_limits_each_get_their_status() {
    let backend = HttpBackend::spawn("h").await;
    // The response timeout leaves a loaded machine time to answer the requests that must get a
    // 200; the slow answer comes well after it.
    let extra = "[timeouts]\nresponse = \"1s\"\nbody_stall = \"300ms\"\nclient_idle = \"300ms\"\n\n\
                 [limits]\nmax_body_bytes = 100\n";
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", extra)).await;
    let send = |request: &'static [u8]| raw_exchange(proxy.addr(), request, SOON);

    // The backend takes 4 s to answer: 504 at the response timeout.
    let response = send(b"GET /slow/4000 HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response.status, Some(504));
    // A body that stops coming: 408 at the stall timeout.
    let response = send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n012")
        .await
        .unwrap();
    assert_eq!(response.status, Some(408));
    // Bodies over the limit: 413, the announced one before anything is forwarded.
    let before = backend.bytes_received();
    let response = send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response.status, Some(413));
    assert_eq!(backend.bytes_received(), before);
    let mut client = RawClient::connect(proxy.addr()).await.unwrap();
    client
        .send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n")
        .await
        .unwrap();
    client.send(&[b'x'; 64]).await.unwrap();
    client.send(b"\r\n40\r\n").await.unwrap();
    client.send(&[b'x'; 64]).await.unwrap();
    let response = client.finish(SOON).await;
    assert_eq!(response.status, Some(413));
    // A keep-alive connection left idle is closed after client_idle, without an answer.
    let mut client = RawClient::connect(proxy.addr()).await.unwrap();
    client
        .send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut client).await;
    let started = std::time::Instant::now();
    let response = client.finish(SOON).await;
    assert!(response.closed && response.bytes.is_empty(), "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let stats = proxy.server().stats();
    assert_eq!(stats.http_requests(StatusClass::ClientError), 3);
    assert_eq!(stats.http_requests(StatusClass::ServerError), 1);
}

#[tokio::test]
async fn a_plain_request_then_an_upgrade_on_the_same_connection_becomes_a_tunnel() {
    let backend = EchoBackend::spawn_named("ws").await;
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
    let mut client = RawClient::connect(proxy.addr()).await.unwrap();
    client
        .send(b"GET /page HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ws\n");
    let (mut ws, response) = ws_handshake(client.into_stream(), "example.com", "/chat", &[])
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    let echoed = ws_roundtrip(&mut ws, Message::text("over the same socket"))
        .await
        .unwrap();
    assert_eq!(echoed, Message::text("over the same socket"));
    assert_eq!(proxy.server().stats().accepted(), 1);
    assert_eq!(proxy.server().stats().upgraded(), 1);
    assert_eq!(proxy.server().stats().http_requests_total(), 1);
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    let backend = HttpBackend::spawn("h").await;
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
    let server = proxy.server().clone();
    let mut client = RawClient::connect(proxy.addr()).await.unwrap();
    client
        .send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut client).await;
    assert_eq!(server.idle_backend_connections(), 1);
    // The default grace is 25 s and client_idle 60 s: neither is waited for.
    let started = std::time::Instant::now();
    proxy.shutdown(Duration::from_secs(15)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let response = client.finish(SOON).await;
    assert!(response.closed && response.bytes.is_empty(), "{response:?}");
    assert_eq!(server.idle_backend_connections(), 0);
}

/// The Set-Cookie value `srv=TOKEN` of a response, if any.
fn affinity_cookie(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let value = headers.get("set-cookie")?.to_str().ok()?;
    Some(value.split(';').next()?.to_owned())
}

/// One long-polling session as Socket.IO's does it: a first poll without cookie, polls and a
/// message post with the affinity cookie, then the WebSocket upgrade. Returns the backend of
/// every step.
async fn long_polling_session(addr: SocketAddr, session: usize) -> Vec<String> {
    let http = client();
    let base = format!("http://{addr}/socket.io/?EIO=4&transport=polling&sid={session}");
    let first = http.get(&base).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let cookie = affinity_cookie(first.headers()).expect("the first poll gets the cookie");
    let mut backends = vec![backend_of(&first)];
    first.bytes().await.unwrap();
    for poll in 0..3 {
        let request = if poll == 1 {
            http.post(&base).body(format!("42[\"message\",{session}]"))
        } else {
            http.get(&base)
        };
        let response = request.header("cookie", &cookie).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            affinity_cookie(response.headers()).is_none(),
            "a valid cookie is not set again"
        );
        backends.push(backend_of(&response));
        response.bytes().await.unwrap();
    }
    let path = format!("/socket.io/?EIO=4&transport=websocket&sid={session}");
    let (mut ws, response) = ws_connect(addr, &path, &[("Cookie", &cookie)])
        .await
        .unwrap();
    backends.push(response.headers()["x-backend"].to_str().unwrap().to_owned());
    let echoed = ws_roundtrip(&mut ws, Message::text("2probe"))
        .await
        .unwrap();
    assert_eq!(echoed, Message::text("2probe"));
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    backends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_sessions_and_their_upgrade_stay_on_one_backend() {
    let mut backends = Vec::new();
    for name in ["b0", "b1", "b2"] {
        backends.push(EchoBackend::spawn_named(name).await);
    }
    let addrs: Vec<_> = backends.iter().map(|b| b.addr()).collect();
    let toml = config(&addrs, "round_robin", "").replace(
        "balance = \"round_robin\"",
        "balance = \"round_robin\"\nsticky_cookie = { name = \"srv\" }",
    );
    let proxy = Arc::new(Proxy::start(&toml).await);
    let mut sessions = tokio::task::JoinSet::new();
    for session in 0..200 {
        let addr = proxy.addr();
        sessions.spawn(async move { long_polling_session(addr, session).await });
    }
    let mut used = HashSet::new();
    while let Some(steps) = sessions.join_next().await {
        let steps = steps.unwrap();
        assert_eq!(steps.len(), 5);
        assert!(
            steps.iter().all(|b| *b == steps[0]),
            "a session moved: {steps:?}"
        );
        used.insert(steps[0].clone());
    }
    assert_eq!(used.len(), 3, "round robin spreads the sessions: {used:?}");
    let stats = proxy.server().stats();
    assert_eq!(stats.upgraded(), 200);
    assert_eq!(stats.http_requests(StatusClass::Success), 800);
    let upgrades: usize = backends.iter().map(|b| b.upgrades()).sum();
    assert_eq!(upgrades, 200);
}

/// Request-smuggling shapes from the public literature (RFC 9112 §6.3 and §11.2; Linhart et al.
/// 2005; Kettle, "HTTP Desync Attacks", 2019, and "HTTP/2: The Sequel is Always Worse", 2021;
/// Thatcher, "Practical HTTP Header Smuggling", 2021; Bishop Fox, "h2c Smuggling", 2020;
/// "Funky chunks" chunk-extension and line-terminator parsing, 2025), each with the status it
/// gets. Heads and bodies arrive in one write, as an attacker sends them.
fn smuggling_catalogue() -> Vec<(&'static str, &'static [u8], u16)> {
    vec![
        ("CL.TE", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED", 400),
        ("TE.CL", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", 400),
        ("TE.TE: xchunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
        ("TE.TE: chunked then a second, bogus field", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: x\r\n\r\n0\r\n\r\n", 400),
        ("TE.TE: space before the colon", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
        ("TE.TE: vertical tab before the value", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n", 400),
        ("TE.TE: quoted value", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n", 400),
        ("TE.TE: obs-fold", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
        ("TE.TE: chunked, identity", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
        ("TE.TE: chunked twice", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("TE: identity alone", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\nSMUGGLED", 400),
        ("TE: unknown coding before chunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("TE behind a bare LF", b"POST / HTTP/1.1\r\nHost: h\r\nX: y\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("TE name with a space", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("CL.CL: two different lengths", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\nContent-Length: 7\r\n\r\nSMUGGLED", 400),
        ("CL.CL: the same length twice", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\nContent-Length: 8\r\n\r\nSMUGGLED", 400),
        ("CL as a list", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 8, 8\r\n\r\nSMUGGLED", 400),
        ("CL with a sign", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +8\r\n\r\nSMUGGLED", 400),
        ("CL negative", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\nSMUGGLED", 400),
        ("CL in hex", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x8\r\n\r\nSMUGGLED", 400),
        ("CL overflowing 64 bits", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551624\r\n\r\nSMUGGLED", 400),
        ("CL empty", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\nSMUGGLED", 400),
        ("CL behind obs-fold", b"POST / HTTP/1.1\r\nHost: h\r\nX: y\r\n Content-Length: 8\r\n\r\nSMUGGLED", 400),
        ("chunk size in hex with 0x", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x8\r\nSMUGGLED\r\n0\r\n\r\n", 400),
        ("chunk size with a sign", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n+8\r\nSMUGGLED\r\n0\r\n\r\n", 400),
        ("chunk size overflowing 64 bits", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000008\r\nSMUGGLED\r\n0\r\n\r\n", 400),
        ("chunk size followed by whitespace", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8 \r\nSMUGGLED\r\n0\r\n\r\n", 400),
        ("chunk lines ended by bare LF", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8\nSMUGGLED\n0\n\n", 400),
        ("chunk extension ended by bare LF (TERM.EXT)", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8;x\nSMUGGLED\r\n0\r\n\r\n", 400),
        ("chunk extension with a bare CR", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8;x\rSMUGGLED\r\n0\r\n\r\n", 400),
        ("chunk data longer than its size", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nSMUGGLED\r\n0\r\n\r\n", 400),
        ("chunk data ended by bare LF", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSMUGGLED\n0\r\n\r\n", 400),
        ("obs-fold in a trailer", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n", 400),
        ("duplicate Host", b"GET / HTTP/1.1\r\nHost: h\r\nHost: admin.internal\r\n\r\n", 400),
        ("absolute target naming another host", b"GET http://admin.internal/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        ("NUL in a field value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400),
    ]
}

#[tokio::test]
async fn request_smuggling_shapes_are_refused_and_nothing_is_forwarded() {
    let backend = HttpBackend::spawn("h").await;
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
    let cases = smuggling_catalogue();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    for (name, request, expected) in &cases {
        let response = raw_exchange(proxy.addr(), request, SOON).await.unwrap();
        assert_eq!(
            response.status,
            Some(*expected),
            "{name}: {:?}",
            response.head()
        );
        assert!(response.closed, "{name}: the connection must be closed");
        assert_eq!(response.header("connection"), Some("close"), "{name}");
    }
    assert_eq!(
        backend.connections_accepted(),
        0,
        "no case reached the backend"
    );
    assert_eq!(backend.bytes_received(), 0);
    // And a well-formed chunked request goes through afterwards.
    let response = raw_exchange(
        proxy.addr(),
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        SOON,
    )
    .await
    .unwrap();
    assert_eq!(response.status, Some(200));
    assert_eq!(response.body(), b"SMUGGLED");
}
