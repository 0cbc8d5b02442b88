//! DNS discovery against a real DNS server on loopback (testkit's `DnsServer`, UDP and TCP):
//! records change and tunnels follow like a reload (new backends used, removed ones drained,
//! none dropped), failures keep the last good backends, SRV ports and weights are honoured,
//! a reload keeps or re-resolves, start resolves before accepting.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;
use sluice_e2e::Proxy;
use sluice_testkit::{
    DnsMode, DnsServer, EchoBackend, Message, SrvRecord, WsStream, raw_exchange, wait_until,
    ws_connect, ws_roundtrip,
};

use tokio_rustls::rustls::pki_types::ServerName;

use crate::SOON;
use crate::l4::{TestCert, connector};

/// Echo backends on 127.0.0.N for each N of `hosts`, all on one port (A records carry no
/// port), named `hN`.
async fn same_port(hosts: &[u8]) -> (u16, Vec<EchoBackend>) {
    let spawn = |host: u8, port: u16| {
        EchoBackend::builder()
            .name(format!("h{host}"))
            .bind(SocketAddr::from(([127, 0, 0, host], port)))
            .spawn()
    };
    for _ in 0..20 {
        let first = spawn(hosts[0], 0).await.unwrap();
        let port = first.addr().port();
        let mut all = vec![first];
        for &host in &hosts[1..] {
            match spawn(host, port).await {
                Ok(b) => all.push(b),
                Err(_) => break,
            }
        }
        if all.len() == hosts.len() {
            return (port, all);
        }
    }
    panic!("no port free on every one of {hosts:?}");
}

fn ips(hosts: &[u8]) -> Vec<IpAddr> {
    hosts
        .iter()
        .map(|h| IpAddr::from([127, 0, 0, *h]))
        .collect()
}

/// One listener to pool `pool`, with `lines` in the pool.
fn config(pool: &str, lines: &str) -> String {
    format!(
        "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\n\
         listener = \"public\"\npool = \"{pool}\"\n\n[pools.{pool}]\n{lines}\n"
    )
}

/// The addresses of the backends a pool has now.
fn backends(proxy: &Proxy, pool: &str) -> BTreeSet<SocketAddr> {
    proxy
        .server()
        .snapshot()
        .config()
        .pool(pool)
        .map(|p| p.backends.iter().map(|b| b.addr).collect())
        .unwrap_or_default()
}

fn set(addrs: &[SocketAddr]) -> BTreeSet<SocketAddr> {
    addrs.iter().copied().collect()
}

async fn open(proxy: &Proxy) -> (WsStream, String) {
    let (ws, response) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    let name = response.headers()["x-backend"].to_str().unwrap().to_owned();
    (ws, name)
}

async fn alive(ws: &mut WsStream) -> bool {
    matches!(
        tokio::time::timeout(SOON, ws_roundtrip(ws, Message::text("ping"))).await,
        Ok(Ok(m)) if m == Message::text("ping")
    )
}

/// `sluice_discovery_resolutions_total` of `pool` with `result`, from the process's exporter.
fn resolutions(pool: &str, result: &str) -> u64 {
    let text = sluice_metrics::Exporter::get()
        .map(|e| e.render())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("sluice_discovery_resolutions_total{"))
        .filter(|l| l.contains(&format!("pool=\"{pool}\"")))
        .filter(|l| l.contains(&format!("result=\"{result}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test]
async fn records_change_new_backends_get_tunnels_removed_ones_drain() {
    let dns = DnsServer::spawn().await;
    let (port, b) = same_port(&[2, 3, 4]).await;
    // An hour of TTL: max_interval still brings the change in quickly.
    dns.set_addrs("ws.test", &ips(&[2, 3]), 3600);
    let proxy = Proxy::start(&config(
        "moving",
        &format!(
            "drain_timeout = \"4s\"\ndrain_spread = \"0s\"\n\
             discovery = {{ dns = \"ws.test\", port = {port}, resolvers = [\"{}\"], \
             min_interval = \"50ms\", max_interval = \"200ms\" }}",
            dns.addr()
        ),
    ))
    .await;
    // Resolved before the first connection was accepted.
    assert_eq!(backends(&proxy, "moving"), set(&[b[0].addr(), b[1].addr()]));
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(open(&proxy).await);
    }
    let names: BTreeSet<&str> = held.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["h2", "h3"]));

    dns.set_addrs("ws.test", &ips(&[3, 4]), 3600);
    assert!(
        wait_until(SOON, || backends(&proxy, "moving")
            == set(&[b[1].addr(), b[2].addr()]))
        .await,
        "the new records were not applied: {:?}",
        backends(&proxy, "moving")
    );
    // Tunnels to the removed backend are not dropped by the change: they drain.
    for (ws, name) in &mut held {
        assert!(alive(ws).await, "tunnel to {name} dropped by the change");
    }
    // New connections go to the new set, the added backend included.
    let accepted_by_h2 = b[0].connections_accepted();
    let mut fresh = Vec::new();
    for _ in 0..4 {
        fresh.push(open(&proxy).await);
    }
    assert!(fresh.iter().all(|(_, n)| n == "h3" || n == "h4"));
    assert!(
        fresh.iter().any(|(_, n)| n == "h4"),
        "the added backend is used"
    );
    assert_eq!(b[0].connections_accepted(), accepted_by_h2);
    // The drain ends the removed backend's tunnels after its drain_timeout; the others live.
    for (ws, name) in held.iter_mut().filter(|(_, n)| n == "h2") {
        let ended = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        assert!(ended.is_ok(), "tunnel to {name} not drained");
    }
    for (ws, name) in held.iter_mut().filter(|(_, n)| n == "h3") {
        assert!(alive(ws).await, "tunnel to kept {name} closed");
    }
    assert!(wait_until(SOON, || b[0].active_connections() == 0).await);
    assert_eq!(
        proxy.server().reloads().succeeded(),
        0,
        "not counted as reloads"
    );
}

/// Makes the DNS server answer the way a failure case needs.
type Failure = Box<dyn Fn(&DnsServer)>;

#[tokio::test]
async fn failures_keep_the_last_good_backends() {
    let dns = DnsServer::spawn().await;
    let (port, b) = same_port(&[2, 3]).await;
    dns.set_addrs("keep.test", &ips(&[2, 3]), 0);
    let proxy = Proxy::start(&config(
        "keep",
        &format!(
            "discovery = {{ dns = \"keep.test\", port = {port}, resolvers = [\"{}\"], \
             min_interval = \"20ms\", max_interval = \"40ms\", timeout = \"100ms\" }}",
            dns.addr()
        ),
    ))
    .await;
    let good = set(&[b[0].addr(), b[1].addr()]);
    assert_eq!(backends(&proxy, "keep"), good);

    let failing: [(&str, Failure); 5] = [
        ("servfail", Box::new(|d| d.fail(DnsMode::ServFail))),
        ("refused", Box::new(|d| d.fail(DnsMode::Refused))),
        ("timeout", Box::new(|d| d.fail(DnsMode::Silent))),
        (
            "nxdomain",
            Box::new(|d| {
                d.fail(DnsMode::Answer);
                d.remove("keep.test");
            }),
        ),
        ("empty", Box::new(|d| d.set_addrs("keep.test", &[], 0))),
    ];
    for (result, make) in failing {
        let before = resolutions("keep", result);
        make(&dns);
        assert!(
            wait_until(SOON, || resolutions("keep", result) >= before + 2).await,
            "no {result} resolution counted"
        );
        assert_eq!(backends(&proxy, "keep"), good, "after {result}");
        let (mut ws, _) = open(&proxy).await;
        assert!(alive(&mut ws).await, "after {result}");
    }

    // A good answer again is applied.
    dns.set_addrs("keep.test", &ips(&[3]), 0);
    assert!(wait_until(SOON, || backends(&proxy, "keep") == set(&[b[1].addr()])).await);
}

#[tokio::test]
async fn srv_records_give_ports_and_weights() {
    let dns = DnsServer::spawn().await;
    let a = EchoBackend::spawn_named("a").await;
    let heavy = EchoBackend::spawn_named("heavy").await;
    let srv = |weight, port, target: &str| SrvRecord {
        priority: 10,
        weight,
        port,
        target: target.into(),
    };
    dns.set_srv(
        "_ws._tcp.test",
        &[
            srv(1, a.addr().port(), "a.test"),
            srv(3, heavy.addr().port(), "heavy.test"),
        ],
        30,
    );
    dns.set_addrs("a.test", &ips(&[1]), 30);
    dns.set_addrs("heavy.test", &ips(&[1]), 30);
    // Answers too long for UDP: asked again over TCP.
    dns.truncate_udp(true);
    let proxy = Proxy::start(&config(
        "srv",
        &format!(
            "balance = \"round_robin\"\n\
             discovery = {{ srv = \"_ws._tcp.test\", resolvers = [\"{}\"] }}",
            dns.addr()
        ),
    ))
    .await;
    let snapshot = proxy.server().snapshot();
    let pool = snapshot.config().pool("srv").unwrap();
    let weights: Vec<(SocketAddr, u32)> =
        pool.backends.iter().map(|b| (b.addr, b.weight)).collect();
    let mut expected = vec![(a.addr(), 1), (heavy.addr(), 3)];
    expected.sort();
    assert_eq!(weights, expected);
    // Weighted round robin: 1 in 4 to a, 3 in 4 to heavy.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(open(&proxy).await);
    }
    let to_a = held.iter().filter(|(_, n)| n == "a").count();
    assert_eq!((to_a, held.len() - to_a), (2, 6));
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_discovery_and_resolves_a_changed_one() {
    let dns = DnsServer::spawn().await;
    let (port, b) = same_port(&[2, 3]).await;
    dns.set_addrs("one.test", &ips(&[2]), 3600);
    dns.set_addrs("two.test", &ips(&[3]), 3600);
    let pool = |name: &str, min: &str| {
        config(
            "main",
            &format!(
                "discovery = {{ dns = \"{name}\", port = {port}, resolvers = [\"{}\"], \
                 min_interval = \"{min}\", max_interval = \"1h\" }}",
                dns.addr()
            ),
        )
    };
    let proxy = Proxy::start(&pool("one.test", "1h")).await;
    assert_eq!(backends(&proxy, "main"), set(&[b[0].addr()]));
    let (mut held, _) = open(&proxy).await;

    // Same question, other intervals, DNS down: kept as is, nothing asked.
    dns.fail(DnsMode::ServFail);
    let asked = dns.questions();
    proxy.reload(&pool("one.test", "30m")).await.unwrap();
    assert_eq!(backends(&proxy, "main"), set(&[b[0].addr()]));
    assert_eq!(dns.questions(), asked);

    // A new name that cannot be resolved refuses the reload; the running one stays.
    let refused = proxy.reload(&pool("two.test", "1h")).await.unwrap_err();
    assert_eq!(refused.label(), "discovery_failed", "{refused}");
    assert_eq!(backends(&proxy, "main"), set(&[b[0].addr()]));

    // Resolved before the commit: the new backends are there when the reload returns.
    dns.fail(DnsMode::Answer);
    proxy.reload(&pool("two.test", "1h")).await.unwrap();
    assert_eq!(backends(&proxy, "main"), set(&[b[1].addr()]));
    let (_, name) = open(&proxy).await;
    assert_eq!(name, "h3");
    assert!(
        alive(&mut held).await,
        "the tunnel to the old backend drains"
    );
}

#[tokio::test]
async fn a_pool_whose_first_resolution_fails_answers_503_until_dns_lists_backends() {
    let dns = DnsServer::spawn().await;
    let (port, b) = same_port(&[2]).await;
    dns.set_addrs("late.test", &ips(&[2]), 0);
    dns.fail(DnsMode::ServFail);
    let proxy = Proxy::start(&config(
        "late",
        &format!(
            "discovery = {{ dns = \"late.test\", port = {port}, resolvers = [\"{}\"], \
             min_interval = \"20ms\", max_interval = \"50ms\" }}",
            dns.addr()
        ),
    ))
    .await;
    assert!(backends(&proxy, "late").is_empty());
    let answer = raw_exchange(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        SOON,
    )
    .await
    .unwrap();
    assert!(
        answer.head().is_some_and(|h| h.starts_with("HTTP/1.1 503")),
        "{:?}",
        answer.head()
    );
    dns.fail(DnsMode::Answer);
    assert!(wait_until(SOON, || backends(&proxy, "late") == set(&[b[0].addr()])).await);
    let (mut ws, name) = open(&proxy).await;
    assert_eq!(name, "h2");
    assert!(alive(&mut ws).await);
}

#[tokio::test]
async fn a_change_of_records_reads_no_certificate_file() {
    let dns = DnsServer::spawn().await;
    let (port, b) = same_port(&[2, 3]).await;
    dns.set_addrs("tls.test", &ips(&[2]), 0);
    let cert = TestCert::new(&["chat.test"]);
    let dir = std::env::temp_dir().join(format!("sluice-discovery-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("chat.pem"), dir.join("chat.key"));
    std::fs::write(&cert_path, &cert.cert_pem).unwrap();
    std::fs::write(&key_path, &cert.key_pem).unwrap();
    let text = format!(
        "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\
         tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n\n\
         [[routes]]\nlistener = \"public\"\npool = \"main\"\n\n[pools.main]\n\
         discovery = {{ dns = \"tls.test\", port = {port}, resolvers = [\"{}\"], \
         min_interval = \"20ms\", max_interval = \"50ms\" }}\n",
        cert_path.display(),
        key_path.display(),
        dns.addr()
    );
    let proxy = Proxy::start(&text).await;
    // The files are gone (a reload would be refused): a change of records does not need them.
    std::fs::remove_dir_all(&dir).unwrap();
    dns.set_addrs("tls.test", &ips(&[3]), 0);
    assert!(
        wait_until(SOON, || backends(&proxy, "main") == set(&[b[1].addr()])).await,
        "the change of records was not applied"
    );
    let tcp = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let name = ServerName::try_from("chat.test").unwrap();
    let tls = connector(&[&cert]).connect(name, tcp).await;
    assert!(tls.is_ok(), "the certificate loaded at start still serves");
}
