//! The hybrid fleet of docs/deploy.md, all real processes: three sluice instances with the same
//! configuration (backends listed in different orders, a `hash` pool keyed by a cookie) behind
//! a fourth sluice whose `tcp` listener spreads connections over them round robin, as an L4
//! edge would. A session lands on the same backend whichever instance serves it.
//!
//! Which instance served a connection is read from the edge's own log (`relaying`, with the
//! client's address and the instance chosen); each session connects from an address of its
//! own (127.1.x.y), so the edge's log names the session of every connection.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::{Sluice, temp_file};
use futures_util::StreamExt;
use sluice_testkit::{EchoBackend, ws_handshake};

const SESSIONS: usize = 1000;
const INSTANCES: usize = 3;
/// Connections through the edge at once.
const CONCURRENCY: usize = 32;

fn instance_config(backends: &[SocketAddr]) -> String {
    // Bounded loads off: with it, each instance's choice would also depend on its own load.
    let pool = "balance = \"hash\"\nhash_key = \"cookie:session\"\nhash_balance_factor = 0";
    common::config(backends, pool, "")
}

/// The edge: a `tcp` listener (named `public`, as the harness expects) on port 0.
fn edge_config(instances: &[SocketAddr]) -> String {
    let list: Vec<String> = instances.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\nmode = \"tcp\"\n\
         pool = \"fleet\"\n\n[pools.fleet]\nbalance = \"round_robin\"\nbackends = [{}]\n",
        list.join(", ")
    )
}

/// The client address of session `n`: one loopback address per session.
fn source(n: usize) -> IpAddr {
    let n = u32::try_from(n).unwrap() + 1;
    IpAddr::V4(Ipv4Addr::new(127, 1, (n >> 8) as u8, (n & 0xff) as u8))
}

/// One WebSocket through the edge from session `n`'s address; the backend that answered.
async fn through(edge: SocketAddr, n: usize) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source(n), 0)).unwrap();
    let stream = socket.connect(edge).await.unwrap();
    let cookie = format!("session=user-{n}");
    let (mut ws, response) = ws_handshake(stream, &edge.to_string(), "/", &[("Cookie", &cookie)])
        .await
        .unwrap_or_else(|e| panic!("session {n}: {e}"));
    let name = response.headers()["x-backend"].to_str().unwrap().to_owned();
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    name
}

/// Every session of `sessions` connects once, `CONCURRENCY` at a time; (session, backend).
async fn round(edge: SocketAddr, sessions: &[usize]) -> Vec<(usize, String)> {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for &n in sessions {
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let backend = through(edge, n).await;
            drop(permit);
            (n, backend)
        });
    }
    let mut out = Vec::with_capacity(sessions.len());
    while let Some(result) = tasks.join_next().await {
        out.push(result.unwrap());
    }
    out
}

/// From the edge's log: for each session, the instances that served its connections. Waits
/// until the log accounts for `connections` connections.
async fn served_by(edge: &Sluice, connections: usize) -> BTreeMap<usize, BTreeSet<String>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut served: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
        let mut seen = 0;
        for line in edge.log() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if entry["message"] != "relaying" {
                continue;
            }
            let peer: SocketAddr = entry["span"]["peer"].as_str().unwrap().parse().unwrap();
            // Others (127.0.0.1) are the harness's probes of the listening port.
            let IpAddr::V4(ip) = peer.ip() else { continue };
            let [127, 1, high, low] = ip.octets() else {
                continue;
            };
            let n = (usize::from(high) << 8 | usize::from(low)) - 1;
            assert_eq!(source(n), peer.ip());
            let instance = entry["backend"].as_str().unwrap().to_owned();
            served.entry(n).or_default().insert(instance);
            seen += 1;
        }
        if seen >= connections {
            return served;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edge logged {seen} of {connections} connections"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_land_on_one_backend_whichever_instance_serves_them() {
    let mut backends = Vec::new();
    for i in 0..4 {
        backends.push(EchoBackend::spawn_named(&format!("b{i}")).await);
    }
    let addrs: Vec<_> = backends.iter().map(|b| b.addr()).collect();

    // Three instances, the same backends in three orders.
    let mut instances = Vec::new();
    for i in 0..INSTANCES {
        let mut order = addrs.clone();
        order.rotate_left(i);
        if i == 2 {
            order.reverse();
        }
        let config = temp_file(&format!("instance{i}.toml"), &instance_config(&order));
        instances.push(Sluice::start(&config, &[]).await);
    }
    let instance_addrs: Vec<_> = instances.iter().map(|s| s.addr).collect();
    let config = temp_file("edge.toml", &edge_config(&instance_addrs));
    // Debug logs on the edge only: one `relaying` line per connection, with its peer.
    let edge =
        Sluice::start_with_env(&config, &[], &[("RUST_LOG", "info,sluice_proxy=debug")]).await;

    // Three rounds: every session connects three times, spread over the instances.
    let everyone: Vec<usize> = (0..SESSIONS).collect();
    let mut landed: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut connections = 0;
    for _ in 0..3 {
        for (n, backend) in round(edge.addr, &everyone).await {
            landed.entry(n).or_default().insert(backend);
            connections += 1;
        }
    }
    // Sessions that round robin under concurrency happened to give one instance only: two
    // connections in a row, nothing else in flight, go to two different instances.
    let served = served_by(&edge, connections).await;
    let single: Vec<usize> = everyone
        .iter()
        .copied()
        .filter(|n| served.get(n).is_none_or(|s| s.len() < 2))
        .collect();
    for &n in &single {
        for _ in 0..2 {
            landed
                .entry(n)
                .or_default()
                .insert(through(edge.addr, n).await);
            connections += 1;
        }
    }
    let served = served_by(&edge, connections).await;

    let mut per_instance: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_backend: BTreeMap<&str, usize> = BTreeMap::new();
    for n in 0..SESSIONS {
        let backends = &landed[&n];
        assert_eq!(
            backends.len(),
            1,
            "session {n} landed on {backends:?} through {:?}",
            served.get(&n)
        );
        let instances = &served[&n];
        assert!(
            instances.len() >= 2,
            "session {n} was served by {instances:?} only"
        );
        for i in instances {
            *per_instance.entry(i.as_str()).or_default() += 1;
        }
        *per_backend
            .entry(backends.first().unwrap().as_str())
            .or_default() += 1;
    }
    assert_eq!(per_instance.len(), INSTANCES, "{per_instance:?}");
    assert_eq!(per_backend.len(), backends.len(), "{per_backend:?}");
    eprintln!(
        "{connections} connections ({} sessions given two more in a row); sessions per \
         instance {per_instance:?}; per backend {per_backend:?}",
        single.len()
    );

    assert_eq!(edge.stop().await.code(), Some(0));
    for instance in instances {
        assert_eq!(instance.stop().await.code(), Some(0));
    }
}
