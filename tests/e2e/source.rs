//! Outbound source addresses: tunnels leave from a pool's `source_addrs` in turn (seen by the
//! backend as the peer address), and addresses that are not this host's are refused at start
//! and at reload.

use std::collections::BTreeSet;
use std::net::IpAddr;

use sluice_e2e::{Proxy, config};
use sluice_proxy::{ProxyError, Server};
use sluice_testkit::{EchoBackend, ws_connect};

#[tokio::test]
async fn tunnels_spread_over_the_source_addresses() {
    let backend = EchoBackend::spawn().await;
    let sources = "source_addrs = [\"127.0.0.2\", \"127.0.0.3\", \"127.0.0.4\", \"127.0.0.5\"]";
    let text = config(&[backend.addr()], "round_robin", "").replace(
        "balance = \"round_robin\"",
        &format!("balance = \"round_robin\"\n{sources}"),
    );
    let proxy = Proxy::start(&text).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(ws_connect(proxy.addr(), "/", &[]).await.unwrap().0);
    }
    let seen: Vec<IpAddr> = backend.connections().iter().map(|c| c.peer.ip()).collect();
    assert_eq!(seen.len(), 8);
    let distinct: BTreeSet<String> = seen.iter().map(ToString::to_string).collect();
    assert_eq!(
        distinct,
        BTreeSet::from(["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"].map(String::from))
    );
    // In turn: each address twice.
    for ip in &distinct {
        assert_eq!(
            seen.iter().filter(|s| s.to_string() == *ip).count(),
            2,
            "{ip}"
        );
    }
}

#[tokio::test]
async fn a_source_address_of_another_host_is_refused_at_start_and_reload() {
    let backend = EchoBackend::spawn().await;
    let with = |sources: &str| {
        config(&[backend.addr()], "round_robin", "").replace(
            "balance = \"round_robin\"",
            &format!("balance = \"round_robin\"\nsource_addrs = [{sources}]"),
        )
    };
    // 192.0.2.1 (TEST-NET-1) is never an address of this host.
    let server = Server::new(sluice_config::parse(&with("\"192.0.2.1\""), "t.toml").unwrap());
    match server.bind().await {
        Err(ProxyError::SourceAddrs(errors)) => {
            assert_eq!(errors.len(), 1);
            assert!(
                errors[0].starts_with("pool main: source address 192.0.2.1 cannot be bound"),
                "{errors:?}"
            );
        }
        other => panic!("expected a source address error, got {other:?}"),
    }
    let proxy = Proxy::start(&with("\"127.0.0.2\"")).await;
    let refused = proxy
        .reload(&with("\"127.0.0.2\", \"192.0.2.1\""))
        .await
        .unwrap_err();
    assert_eq!(refused.label(), "source_addrs", "{refused}");
    assert_eq!(proxy.server().reloads().failed(), 1);
}
