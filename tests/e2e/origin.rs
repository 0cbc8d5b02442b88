//! Per-route `Origin` allow-lists (`allowed_origins`, `allow_missing_origin`): what passes,
//! what gets 403 before a backend sees a byte, for upgrades and plain requests alike, and that
//! a reload changes the list for new requests only.

use sluice_e2e::{Proxy, config};
use sluice_testkit::{EchoBackend, HttpBackend, RawResponse, raw_exchange};

use crate::SOON;
use crate::hostile::head_status;

fn upgrade(path: &str, origin: Option<&str>) -> Vec<u8> {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!(
        "GET {path} HTTP/1.1\r\nHost: chat.example.com\r\n{origin}Upgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A refusal: the whole answer, read until sluice closes.
async fn refusal(proxy: &Proxy, request: &[u8]) -> RawResponse {
    raw_exchange(proxy.addr(), request, SOON).await.unwrap()
}

/// An upgrade that must pass: the status of the answer's head (a 101 keeps the tunnel open).
async fn status(proxy: &Proxy, request: &[u8]) -> Option<u16> {
    head_status(proxy.addr(), &[request]).await
}

fn routes(allowed: &str, allow_missing: bool) -> String {
    format!(
        "[[routes]]\nlistener = \"public\"\npath_prefix = \"/chat\"\n\
         allowed_origins = [{allowed}]\nallow_missing_origin = {allow_missing}\npool = \"main\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_from_listed_origins_pass_and_others_get_403_without_reaching_a_backend() {
    let backend = EchoBackend::spawn().await;
    let extra = routes(
        "\"https://chat.example.com\", \"https://*.example.org\", \"http://localhost:3000\"",
        true,
    );
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", &extra)).await;

    for refused in [
        "https://evil.example.net",
        "https://chat.example.com.evil.net",
        "https://example.org",
        "http://chat.example.com",
        "http://localhost:3001",
        "null",
    ] {
        let response = refusal(&proxy, &upgrade("/chat", Some(refused))).await;
        assert_eq!(response.status, Some(403), "{refused}");
        assert!(response.closed, "{refused}: closed after the answer");
        assert!(
            response
                .body()
                .starts_with(b"403 Forbidden: origin not allowed"),
            "{refused}"
        );
    }
    assert_eq!(backend.connections_accepted(), 0);
    assert_eq!(backend.bytes_received(), 0);

    for allowed in [
        Some("https://chat.example.com"),
        Some("HTTPS://Chat.Example.COM:443"),
        Some("https://a.b.example.org"),
        Some("http://localhost:3000"),
        // No Origin: a non-browser client, allowed by default.
        None,
    ] {
        assert_eq!(
            status(&proxy, &upgrade("/chat", allowed)).await,
            Some(101),
            "{allowed:?}"
        );
    }
    // Routes without a list are not affected.
    let other = upgrade("/other", Some("https://evil.example.net"));
    assert_eq!(status(&proxy, &other).await, Some(101));
    let origins: Vec<Option<String>> = backend
        .requests()
        .iter()
        .map(|r| r.header("origin").map(str::to_owned))
        .collect();
    assert_eq!(
        origins,
        [
            Some("https://chat.example.com".to_owned()),
            Some("HTTPS://Chat.Example.COM:443".to_owned()),
            Some("https://a.b.example.org".to_owned()),
            Some("http://localhost:3000".to_owned()),
            None,
            Some("https://evil.example.net".to_owned()),
        ]
    );
}

#[tokio::test]
async fn plain_requests_are_checked_like_upgrades() {
    let backend = HttpBackend::spawn("h").await;
    let proxy = Proxy::start(&config(
        &[backend.addr()],
        "round_robin",
        &routes("\"https://chat.example.com\"", false),
    ))
    .await;
    let plain = |origin: &str| {
        format!("POST /chat HTTP/1.1\r\nHost: chat.example.com\r\n{origin}Content-Length: 2\r\nConnection: close\r\n\r\nhi")
            .into_bytes()
    };
    let refused = raw_exchange(
        proxy.addr(),
        &plain("Origin: https://evil.example.net\r\n"),
        SOON,
    )
    .await
    .unwrap();
    assert_eq!(refused.status, Some(403));
    // allow_missing_origin = false: a request without Origin is refused too.
    let missing = raw_exchange(proxy.addr(), &plain(""), SOON).await.unwrap();
    assert_eq!(missing.status, Some(403));
    assert_eq!(backend.bytes_received(), 0);
    let allowed = raw_exchange(
        proxy.addr(),
        &plain("Origin: https://chat.example.com\r\n"),
        SOON,
    )
    .await
    .unwrap();
    assert_eq!(allowed.status, Some(200));
    assert_eq!(allowed.body(), b"hi");
}

#[tokio::test]
async fn a_reload_changes_the_allow_list_for_new_requests() {
    let backend = EchoBackend::spawn().await;
    let before = config(
        &[backend.addr()],
        "round_robin",
        &routes("\"https://a.example.com\"", true),
    );
    let proxy = Proxy::start(&before).await;
    let refused = refusal(&proxy, &upgrade("/chat", Some("https://b.example.com"))).await;
    assert_eq!(refused.status, Some(403));
    let after = config(
        &[backend.addr()],
        "round_robin",
        &routes("\"https://a.example.com\", \"https://b.example.com\"", true),
    );
    proxy.reload(&after).await.unwrap();
    assert_eq!(
        status(&proxy, &upgrade("/chat", Some("https://b.example.com"))).await,
        Some(101)
    );
}
