//! Two separate sluice processes with the same configuration and no shared state choose the
//! same backend for the same key: what lets many instances sit behind an L4 edge.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::{Sluice, temp_file};
use sluice_testkit::EchoBackend;

fn config(backends: &[SocketAddr]) -> String {
    let pool = "balance = \"hash\"\nhash_key = \"header:x-session\"\nhash_balance_factor = 0";
    common::config(backends, pool, "")
}

async fn backend_for(addr: SocketAddr, session: &str) -> String {
    common::landed(addr, &[("X-Session", session)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_choose_the_same_backend_for_a_thousand_keys() {
    let mut backends = Vec::new();
    for i in 0..5 {
        backends.push(EchoBackend::spawn_named(&format!("b{i}")).await);
    }
    let addrs: Vec<_> = backends.iter().map(|b| b.addr()).collect();
    let one = Sluice::start(&temp_file("one.toml", &config(&addrs)), &[]).await;
    // The second lists the same backends in another order: identity is the address, not the position.
    let mut reversed = addrs.clone();
    reversed.reverse();
    let two = Sluice::start(&temp_file("two.toml", &config(&reversed)), &[]).await;

    let mut per_backend = std::collections::HashMap::new();
    for key in 0..1000 {
        let session = format!("session-{key}");
        let a = backend_for(one.addr, &session).await;
        let b = backend_for(two.addr, &session).await;
        assert_eq!(a, b, "{session}: the two instances disagree");
        *per_backend.entry(a).or_insert(0usize) += 1;
    }
    assert_eq!(
        per_backend.len(),
        5,
        "every backend gets keys: {per_backend:?}"
    );
    assert_eq!(one.stop().await.code(), Some(0));
    assert_eq!(two.stop().await.code(), Some(0));
}
