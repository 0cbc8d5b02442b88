//! `resolve` against a real DNS server on loopback (testkit's), over UDP and TCP.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sluice_config::{Backend, Discovery, DnsQuery};
use sluice_discovery::{ResolveError, resolve};
use sluice_testkit::{DnsMode, DnsServer, SrvRecord};

fn discovery(query: DnsQuery, servers: &[SocketAddr], timeout: Duration) -> Discovery {
    Discovery {
        query,
        resolvers: servers.to_vec(),
        min_interval: Duration::from_secs(1),
        max_interval: Duration::from_secs(30),
        timeout,
    }
}

fn addresses(name: &str, port: u16) -> DnsQuery {
    DnsQuery::Addresses {
        name: name.into(),
        port,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn backend(addr: &str, weight: u32) -> Backend {
    Backend {
        addr: addr.parse().unwrap(),
        weight,
    }
}

const SECOND: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_and_aaaa_records_are_backends_on_the_port() {
    let dns = DnsServer::spawn().await;
    dns.set_addrs(
        "ws.test",
        &[ip("10.0.0.2"), ip("10.0.0.1"), ip("fd00::1")],
        7,
    );
    let resolved = resolve(&discovery(
        addresses("ws.test", 8080),
        &[dns.addr()],
        SECOND,
    ))
    .await
    .unwrap();
    assert_eq!(
        resolved.backends,
        vec![
            backend("10.0.0.1:8080", 1),
            backend("10.0.0.2:8080", 1),
            backend("[fd00::1]:8080", 1)
        ]
    );
    assert_eq!(resolved.ttl, Duration::from_secs(7));
}

#[tokio::test]
async fn srv_records_give_ports_and_weights_of_the_lowest_priority() {
    let dns = DnsServer::spawn().await;
    let srv = |priority, weight, port, target: &str| SrvRecord {
        priority,
        weight,
        port,
        target: target.into(),
    };
    dns.set_srv(
        "_ws._tcp.test",
        &[
            srv(10, 1, 9001, "a.test"),
            srv(10, 3, 9002, "b.test"),
            srv(20, 1, 9003, "backup.test"),
        ],
        30,
    );
    dns.set_addrs("a.test", &[ip("10.0.0.1")], 5);
    dns.set_addrs("b.test", &[ip("10.0.0.2")], 60);
    dns.set_addrs("backup.test", &[ip("10.0.0.3")], 60);
    let d = discovery(
        DnsQuery::Srv {
            name: "_ws._tcp.test".into(),
        },
        &[dns.addr()],
        SECOND,
    );
    let expected = vec![backend("10.0.0.1:9001", 1), backend("10.0.0.2:9002", 3)];
    let resolved = resolve(&d).await.unwrap();
    assert_eq!(resolved.backends, expected, "from the additional section");
    assert_eq!(
        resolved.ttl,
        Duration::from_secs(5),
        "the smallest TTL used"
    );

    dns.no_additionals(true);
    let resolved = resolve(&d).await.unwrap();
    assert_eq!(resolved.backends, expected, "targets asked for");

    // A target that vanished is skipped; the others stay.
    dns.remove("a.test");
    let resolved = resolve(&d).await.unwrap();
    assert_eq!(resolved.backends, vec![backend("10.0.0.2:9002", 3)]);
}

#[tokio::test]
async fn truncated_udp_answers_are_asked_again_over_tcp() {
    let dns = DnsServer::spawn().await;
    dns.set_addrs("ws.test", &[ip("10.0.0.1")], 5);
    dns.truncate_udp(true);
    let resolved = resolve(&discovery(addresses("ws.test", 80), &[dns.addr()], SECOND))
        .await
        .unwrap();
    assert_eq!(resolved.backends, vec![backend("10.0.0.1:80", 1)]);
}

#[tokio::test]
async fn failures_are_named() {
    let dns = DnsServer::spawn().await;
    dns.set_addrs("empty.test", &[], 5);
    let label = |r: Result<_, ResolveError>| r.map(|_| ()).unwrap_err().label();
    let d = |name: &str| discovery(addresses(name, 80), &[dns.addr()], SECOND);
    assert_eq!(label(resolve(&d("missing.test")).await), "nxdomain");
    assert_eq!(label(resolve(&d("empty.test")).await), "empty");
    dns.fail(DnsMode::ServFail);
    assert_eq!(label(resolve(&d("empty.test")).await), "servfail");
    dns.fail(DnsMode::Refused);
    assert_eq!(label(resolve(&d("empty.test")).await), "refused");
    dns.fail(DnsMode::Silent);
    let quick = discovery(
        addresses("empty.test", 80),
        &[dns.addr()],
        Duration::from_millis(200),
    );
    assert_eq!(label(resolve(&quick).await), "timeout");
}

#[tokio::test]
async fn a_failing_server_passes_the_question_to_the_next() {
    let failing = DnsServer::spawn().await;
    failing.fail(DnsMode::ServFail);
    let good = DnsServer::spawn().await;
    good.set_addrs("ws.test", &[ip("10.0.0.9")], 5);
    let resolved = resolve(&discovery(
        addresses("ws.test", 80),
        &[failing.addr(), good.addr()],
        SECOND,
    ))
    .await
    .unwrap();
    assert_eq!(resolved.backends, vec![backend("10.0.0.9:80", 1)]);
    assert!(failing.questions() >= 1);
}
