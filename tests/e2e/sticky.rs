//! Sticky sessions end to end: hashing by cookie, header, query or source address, the NAT
//! trap, and the affinity cookie sluice inserts itself.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use sluice_e2e::{Proxy, backend_list};
use sluice_testkit::{EchoBackend, tungstenite, ws_connect};

async fn three() -> Vec<EchoBackend> {
    let mut all = Vec::new();
    for name in ["b0", "b1", "b2"] {
        all.push(EchoBackend::spawn_named(name).await);
    }
    all
}

fn hash_config(backends: &[EchoBackend], pool_extra: &str) -> String {
    let addrs: Vec<_> = backends.iter().map(|b| b.addr()).collect();
    format!(
        "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nlistener = \"public\"\npool = \"main\"\n\n\
         [pools.main]\n{pool_extra}\nbackends = [{}]\n",
        backend_list(&addrs)
    )
}

/// Opens an upgrade with these headers and closes it; returns the backend and the response.
async fn visit(
    proxy: &Proxy,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, tungstenite::handshake::client::Response) {
    let (mut ws, response) = ws_connect(proxy.addr(), path, headers).await.unwrap();
    let name = response.headers()["x-backend"].to_str().unwrap().to_owned();
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    (name, response)
}

/// How 1,000 sessions, all from 127.0.0.1, spread with `pool_extra`.
async fn spread_of_a_thousand(pool_extra: &str) -> HashMap<String, usize> {
    let backends = three().await;
    let proxy = Arc::new(Proxy::start(&hash_config(&backends, pool_extra)).await);
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..20 {
        let proxy = Arc::clone(&proxy);
        tasks.spawn(async move {
            let mut names = Vec::new();
            for i in 0..50 {
                let cookie = format!("session=user-{}", chunk * 50 + i);
                names.push(visit(&proxy, "/", &[("Cookie", &cookie)]).await.0);
            }
            names
        });
    }
    let mut spread = HashMap::new();
    while let Some(names) = tasks.join_next().await {
        for name in names.unwrap() {
            *spread.entry(name).or_insert(0) += 1;
        }
    }
    spread
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_users_behind_one_address_spread_by_cookie_but_not_by_source_ip() {
    let by_cookie = spread_of_a_thousand("balance = \"hash\"\nhash_key = \"cookie:session\"").await;
    assert_eq!(by_cookie.values().sum::<usize>(), 1000);
    for (name, &n) in &by_cookie {
        assert!(
            (284..=383).contains(&n),
            "{name} got {n} of 1,000 (±15 % of 333): {by_cookie:?}"
        );
    }
    // The NAT trap: every session comes from 127.0.0.1, so hashing the source sends all of them
    // to one backend (unbounded here, to show the trap itself).
    let by_source = spread_of_a_thousand(
        "balance = \"hash\"\nhash_key = \"source_ip\"\nhash_balance_factor = 0",
    )
    .await;
    assert_eq!(by_source.len(), 1, "{by_source:?}");
    assert_eq!(by_source.values().sum::<usize>(), 1000);
}

#[tokio::test]
async fn reconnects_with_the_same_key_land_on_the_same_backend() {
    for (key, header) in [
        ("cookie:sid", ("Cookie", "theme=dark; sid=")),
        ("header:x-user", ("X-User", "")),
        ("query:room", ("", "")),
    ] {
        let backends = three().await;
        let proxy = Proxy::start(&hash_config(
            &backends,
            &format!("balance = \"hash\"\nhash_key = \"{key}\""),
        ))
        .await;
        for user in 0..30 {
            let value = format!("{}user{user}", header.1);
            let (path, headers): (String, Vec<(&str, &str)>) = if header.0.is_empty() {
                (format!("/chat?x=1&room=r{user}"), vec![])
            } else {
                ("/".into(), vec![(header.0, value.as_str())])
            };
            let first = visit(&proxy, &path, &headers).await.0;
            for _ in 0..3 {
                assert_eq!(
                    visit(&proxy, &path, &headers).await.0,
                    first,
                    "{key}: user {user} moved"
                );
            }
        }
    }
}

fn set_cookie(response: &tungstenite::handshake::client::Response) -> Option<String> {
    response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn the_affinity_cookie_is_set_once_followed_and_replaced_when_its_backend_goes() {
    let backends = three().await;
    let proxy = Proxy::start(&hash_config(
        &backends,
        "balance = \"least_conn\"\nsticky_cookie = { name = \"srv\", ttl = \"1h\", same_site = \"lax\" }",
    ))
    .await;
    // First visit: no cookie, sluice sets one naming the backend by an opaque token.
    let (first, response) = visit(&proxy, "/", &[]).await;
    let cookie = set_cookie(&response).expect("Set-Cookie on the first 101");
    assert!(
        cookie.starts_with("srv=")
            && cookie.contains("Max-Age=3600")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let token = cookie
        .trim_start_matches("srv=")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), 16);
    assert!(
        !cookie.contains("127.0.0.1"),
        "the cookie must not reveal the address"
    );

    // With the cookie: the same backend every time, whatever least_conn would say, no new cookie.
    let held: Vec<_> = futures_util::future::join_all(
        (0..5).map(|_| ws_connect(proxy.addr(), "/", &[("Cookie", "srv=x")])),
    )
    .await;
    for _ in 0..5 {
        let (name, response) = visit(&proxy, "/", &[("Cookie", &format!("srv={token}"))]).await;
        assert_eq!(name, first);
        assert_eq!(set_cookie(&response), None);
    }
    drop(held);

    // Its backend stops accepting: the client is rebalanced and gets a new cookie.
    let index = backends.iter().position(|b| b.name() == first).unwrap();
    backends[index].stop_accepting().await;
    let (moved, response) = visit(&proxy, "/", &[("Cookie", &format!("srv={token}"))]).await;
    assert_ne!(moved, first);
    let new_cookie = set_cookie(&response).expect("a new cookie after rebalancing");
    assert!(!new_cookie.contains(&token));
    // A made-up token is treated as no cookie.
    let (_, response) = visit(&proxy, "/", &[("Cookie", "srv=0000000000000000")]).await;
    assert!(set_cookie(&response).is_some());
}
