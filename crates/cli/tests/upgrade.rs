//! Binary upgrade with real processes: a successor takes the listening sockets over while
//! clients keep connecting, the predecessor drains its tunnels and exits, upgrades chain, and a
//! successor that fails leaves the predecessor serving.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Sluice, temp_file};
use futures_util::{SinkExt, StreamExt};
use sluice_testkit::{EchoBackend, Message, WsStream, ws_connect};

fn config(backends: &[SocketAddr]) -> String {
    common::config(
        backends,
        "balance = \"round_robin\"",
        "[timeouts]\nshutdown = \"30s\"\nshutdown_spread = \"1s\"",
    )
}

fn args<'a>(flag: &'a str, socket: &'a Path) -> [&'a str; 2] {
    [flag, socket.to_str().unwrap()]
}

async fn echo(ws: &mut WsStream, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    match ws.next().await {
        Some(Ok(m)) if m == Message::text(text) => {}
        other => panic!("{text}: came back as {other:?}"),
    }
}

async fn exit_code(mut sluice: Sluice) -> Option<i32> {
    tokio::task::spawn_blocking(move || {
        common::wait_exit(&mut sluice.child, Duration::from_secs(60))
    })
    .await
    .unwrap()
    .code()
}

/// `sluice run` that is expected to exit by itself (a failed start).
fn run_to_exit(config: &Path, flag: &str, socket: &Path) -> std::process::Output {
    std::process::Command::new(common::SLUICE)
        .args(["run", "--config"])
        .arg(config)
        .args(args(flag, socket))
        .output()
        .unwrap()
}

fn socket_beside(config: &Path) -> PathBuf {
    config.with_file_name("upgrade.sock")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_chain_without_refusing_a_client_and_predecessors_drain_their_tunnels() {
    let backend = EchoBackend::spawn_named("one").await;
    let path = temp_file("sluice.toml", &config(&[backend.addr()]));
    let socket = socket_beside(&path);
    let first = Sluice::start(&path, &args("--upgrade-socket", &socket)).await;

    // Tunnels opened through the first process, and clients connecting all along.
    let mut tunnels = Vec::new();
    for _ in 0..20 {
        tunnels.push(ws_connect(first.addr, "/", &[]).await.unwrap().0);
    }
    let clients = common::Clients::start(first.addr);
    clients.wait_more(5).await;

    let second = Sluice::start(&path, &args("--upgrade-from", &socket)).await;
    second
        .wait_log(&["took over", "predecessor"], Duration::from_secs(30))
        .await;
    first
        .wait_log(&["upgraded", "successor"], Duration::from_secs(30))
        .await;
    clients.wait_more(5).await;

    // The first process no longer accepts but still relays its tunnels...
    for (i, ws) in tunnels.iter_mut().enumerate() {
        echo(ws, &format!("tunnel {i} after the upgrade")).await;
    }
    // ...and exits once they are closed.
    for mut ws in tunnels {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    assert_eq!(exit_code(first).await, Some(0));
    clients.wait_more(5).await;

    // The successor can be upgraded in turn, at the same socket path.
    let third = Sluice::start(&path, &args("--upgrade-from", &socket)).await;
    third
        .wait_log(&["took over", "predecessor"], Duration::from_secs(30))
        .await;
    assert_eq!(exit_code(second).await, Some(0));
    clients.wait_more(5).await;

    let (ok, failures) = clients.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} clients failed: {failures:?}",
        failures.len(),
        ok as usize + failures.len()
    );
    eprintln!("upgrades: {ok} clients served across two upgrades, none refused");
    assert_eq!(third.stop().await.code(), Some(0));
    assert!(
        !socket.exists(),
        "the last process removes the upgrade socket"
    );
}

#[tokio::test]
async fn a_successor_that_fails_leaves_the_predecessor_serving() {
    let backend = EchoBackend::spawn_named("one").await;
    let path = temp_file("sluice.toml", &config(&[backend.addr()]));
    let socket = socket_beside(&path);
    let first = Sluice::start(&path, &args("--upgrade-socket", &socket)).await;
    let mut ws = ws_connect(first.addr, "/", &[]).await.unwrap().0;

    // The successor's configuration has a second listener on a port that is taken: it gets
    // the sockets, fails to bind, and exits before saying it accepts.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let broken = format!(
        "{}\n[[listeners]]\nname = \"extra\"\nmode = \"tcp\"\nlisten = \"{}\"\npool = \"echo\"\n",
        config(&[backend.addr()]),
        taken.local_addr().unwrap()
    );
    let broken_path = temp_file("broken.toml", &broken);
    let out = run_to_exit(&broken_path, "--upgrade-from", &socket);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("extra"), "{stderr}");
    first
        .wait_log(
            &["upgrade failed", "keeps serving"],
            Duration::from_secs(30),
        )
        .await;

    // Nothing changed for the first process: its tunnel relays, new clients are served.
    echo(&mut ws, "still here").await;
    assert_eq!(common::landed(first.addr, &[]).await, "one");

    // A successor that cannot reach any sluice says so.
    let nowhere = path.with_file_name("nowhere.sock");
    let out = run_to_exit(&path, "--upgrade-from", &nowhere);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot take over from the sluice at"),
        "{stderr}"
    );

    // A second process cannot accept upgrades on a socket in use.
    let out = run_to_exit(&broken_path, "--upgrade-socket", &socket);
    assert_eq!(out.status.code(), Some(1));

    // A proper successor still takes over.
    let second = Sluice::start(&path, &args("--upgrade-from", &socket)).await;
    first
        .wait_log(&["upgraded", "successor"], Duration::from_secs(30))
        .await;
    echo(&mut ws, "draining").await;
    drop(ws);
    assert_eq!(exit_code(first).await, Some(0));
    assert_eq!(common::landed(second.addr, &[]).await, "one");
    assert_eq!(second.stop().await.code(), Some(0));
}
