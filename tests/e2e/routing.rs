//! Routing by host, path and header to pools; no route → 404, or 421 for an unknown host.

use std::time::Duration;

use sluice_e2e::{Proxy, backend_list};
use sluice_testkit::{EchoBackend, tungstenite, ws_connect};

/// The status of a rejected upgrade, or 101.
async fn status(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> u16 {
    match ws_connect(proxy.addr(), path, headers).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("unexpected failure: {e}"),
    }
}

/// The name of the backend that answered the upgrade.
async fn landed(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> String {
    let (_, response) = ws_connect(proxy.addr(), path, headers).await.unwrap();
    response.headers()["x-backend"].to_str().unwrap().to_owned()
}

fn routed_config(
    chat: &EchoBackend,
    api: &EchoBackend,
    blue: &EchoBackend,
    rest: &EchoBackend,
    fallback: bool,
) -> String {
    let catch_all = if fallback {
        "[[routes]]\nlistener = \"public\"\npool = \"rest\"\n"
    } else {
        ""
    };
    format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
listener = "public"
host = "chat.example.com"
pool = "chat"

[[routes]]
listener = "public"
host = "*.example.org"
path_prefix = "/api"
pool = "api"

[[routes]]
listener = "public"
path_exact = "/tenant"
headers = [{{ name = "X-Tenant", value = "blue" }}, {{ name = "X-Present" }}]
pool = "blue"

{catch_all}

[pools.chat]
backends = [{}]
[pools.api]
backends = [{}]
[pools.blue]
backends = [{}]
[pools.rest]
backends = [{}]
"#,
        backend_list(&[chat.addr()]),
        backend_list(&[api.addr()]),
        backend_list(&[blue.addr()]),
        backend_list(&[rest.addr()]),
    )
}

#[tokio::test]
async fn requests_go_to_the_pool_of_the_first_matching_route() {
    let chat = EchoBackend::spawn_named("chat").await;
    let api = EchoBackend::spawn_named("api").await;
    let blue = EchoBackend::spawn_named("blue").await;
    let rest = EchoBackend::spawn_named("rest").await;
    let proxy = Proxy::start(&routed_config(&chat, &api, &blue, &rest, true)).await;

    assert_eq!(
        landed(&proxy, "/", &[("Host", "chat.example.com")]).await,
        "chat"
    );
    assert_eq!(
        landed(&proxy, "/any/path", &[("Host", "CHAT.Example.COM:8080")]).await,
        "chat"
    );
    assert_eq!(
        landed(&proxy, "/api/v1", &[("Host", "eu.example.org")]).await,
        "api"
    );
    assert_eq!(
        landed(&proxy, "/api", &[("Host", "a.b.example.org")]).await,
        "api"
    );
    // Wildcards need a label before the suffix; the path prefix must match too.
    assert_eq!(
        landed(&proxy, "/api", &[("Host", "example.org")]).await,
        "rest"
    );
    assert_eq!(
        landed(&proxy, "/apx", &[("Host", "eu.example.org")]).await,
        "rest"
    );
    // Header rules: value compared exactly, presence-only header required.
    let both = [("X-Tenant", "blue"), ("X-Present", "1")];
    assert_eq!(landed(&proxy, "/tenant", &both).await, "blue");
    assert_eq!(landed(&proxy, "/tenant?x=1", &both).await, "blue");
    assert_eq!(
        landed(&proxy, "/tenant", &[("X-Tenant", "blue")]).await,
        "rest"
    );
    assert_eq!(
        landed(
            &proxy,
            "/tenant",
            &[("X-Tenant", "red"), ("X-Present", "1")]
        )
        .await,
        "rest"
    );
    assert_eq!(
        landed(&proxy, "/tenant/more", &both).await,
        "rest",
        "path_exact is exact"
    );
    // First match wins: the chat host beats the header rule.
    let chat_and_blue = [
        ("Host", "chat.example.com"),
        ("X-Tenant", "blue"),
        ("X-Present", "1"),
    ];
    assert_eq!(landed(&proxy, "/tenant", &chat_and_blue).await, "chat");
}

#[tokio::test]
async fn no_matching_route_is_404_and_nothing_reaches_a_backend() {
    let chat = EchoBackend::spawn_named("chat").await;
    let api = EchoBackend::spawn_named("api").await;
    let blue = EchoBackend::spawn_named("blue").await;
    let rest = EchoBackend::spawn_named("rest").await;
    let proxy = Proxy::start(&routed_config(&chat, &api, &blue, &rest, false)).await;

    assert_eq!(
        status(&proxy, "/", &[("Host", "other.example.com")]).await,
        404
    );
    assert_eq!(
        status(&proxy, "/web", &[("Host", "eu.example.org")]).await,
        404
    );
    assert_eq!(
        status(&proxy, "/", &[("Host", "chat.example.com")]).await,
        101
    );
    for b in [&api, &blue, &rest] {
        assert_eq!(b.connections_accepted(), 0, "{} was contacted", b.name());
    }
}

#[tokio::test]
async fn unknown_host_is_421_when_configured() {
    let chat = EchoBackend::spawn_named("chat").await;
    let toml = format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
unknown_host_status = 421

[[routes]]
listener = "public"
host = "chat.example.com"
path_prefix = "/chat"
pool = "chat"

[pools.chat]
backends = [{}]
"#,
        backend_list(&[chat.addr()])
    );
    let proxy = Proxy::start(&toml).await;
    assert_eq!(
        status(&proxy, "/chat", &[("Host", "evil.example.com")]).await,
        421
    );
    // A known host with an unrouted path is still a 404.
    assert_eq!(
        status(&proxy, "/other", &[("Host", "chat.example.com")]).await,
        404
    );
    assert_eq!(
        status(&proxy, "/chat", &[("Host", "chat.example.com")]).await,
        101
    );
    assert_eq!(chat.upgrades(), 1);
    proxy.shutdown(Duration::from_secs(5)).await;
}
