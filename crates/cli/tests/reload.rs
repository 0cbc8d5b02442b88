//! Reload of the real binary with real signals: a SIGHUP storm under 1,000 live tunnels, an
//! invalid file, and the `sluice reload --pid-file` convenience.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Sluice, replace_file, temp_file};
use futures_util::{SinkExt, StreamExt};
use rustix::process::Signal;
use sluice_testkit::{EchoBackend, Message, ws_connect};

use common::round_robin as config;

async fn landed(addr: SocketAddr) -> String {
    common::landed(addr, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sighups_under_a_thousand_busy_tunnels_drop_nothing() {
    const TUNNELS: usize = 1000;
    const RELOADS: u64 = 50;
    let mut backends = Vec::new();
    for i in 0..4 {
        backends.push(EchoBackend::spawn_named(&format!("b{i}")).await);
    }
    let a: Vec<_> = backends[..3].iter().map(|b| b.addr()).collect();
    let b: Vec<_> = [0, 1, 3].iter().map(|&i| backends[i].addr()).collect();
    let path = temp_file("sluice.toml", &config(&a));
    let sluice = Sluice::start(&path, &[]).await;

    // 1,000 tunnels, each echoing numbered messages until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let mut tunnels = tokio::task::JoinSet::new();
    for batch in 0..TUNNELS / 100 {
        let mut opened = Vec::new();
        for _ in 0..100 {
            opened.push(tokio::spawn(ws_connect(sluice.addr, "/", &[])));
        }
        for (i, ws) in opened.into_iter().enumerate() {
            let (mut ws, _) = ws.await.unwrap().unwrap();
            let (stop, echoed, id) = (Arc::clone(&stop), Arc::clone(&echoed), batch * 100 + i);
            tunnels.spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let text = format!("tunnel {id} message {n}");
                    ws.send(Message::text(text.clone()))
                        .await
                        .map_err(|e| format!("{id}: send {e}"))?;
                    match ws.next().await {
                        Some(Ok(m)) if m == Message::text(text) => {}
                        other => {
                            return Err(format!("tunnel {id}: message {n} came back as {other:?}"));
                        }
                    }
                    n += 1;
                    echoed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok::<u64, String>(n)
            });
        }
    }

    // 50 reloads alternating between {b0, b1, b2} and {b0, b1, b3}.
    for generation in 2..RELOADS + 2 {
        let (now, gone) = if generation % 2 == 0 {
            (&b, "b2")
        } else {
            (&a, "b3")
        };
        let added = if generation % 2 == 0 { "b3" } else { "b2" };
        replace_file(&path, &config(now));
        sluice.signal(Signal::HUP);
        sluice.wait_generation(generation).await;
        // New connections follow the new config at once, and none fails.
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(landed(sluice.addr).await);
        }
        assert!(
            !seen.iter().any(|n| n == gone),
            "generation {generation}: {seen:?} includes {gone}"
        );
        assert!(
            seen.iter().any(|n| n == added),
            "generation {generation}: {seen:?} misses {added}"
        );
    }

    // Every tunnel is still there: the drained backends' tunnels were kept (drain_timeout
    // defaults to "until they end by themselves"). The probes' connections end first: a
    // client's stream ends with the close handshake, its backend counts the close a moment
    // later; a dropped tunnel would leave the sum under TUNNELS for good.
    let live = || {
        backends
            .iter()
            .map(|b| b.active_connections())
            .sum::<usize>()
    };
    assert!(
        sluice_testkit::wait_until(Duration::from_secs(20), || live() <= TUNNELS).await,
        "{} connections",
        live()
    );
    assert_eq!(live(), TUNNELS);
    stop.store(true, Ordering::Relaxed);
    let mut per_tunnel = Vec::new();
    while let Some(result) = tunnels.join_next().await {
        per_tunnel.push(result.unwrap().unwrap());
    }
    assert_eq!(per_tunnel.len(), TUNNELS);
    assert!(per_tunnel.iter().all(|&n| n > 0), "a tunnel never echoed");
    assert!(echoed.load(Ordering::Relaxed) >= TUNNELS as u64);
    eprintln!(
        "storm: {} tunnels, {} messages echoed, {RELOADS} reloads",
        per_tunnel.len(),
        echoed.load(Ordering::Relaxed)
    );
    assert_eq!(sluice.stop().await.code(), Some(0));
}

#[tokio::test]
async fn an_invalid_file_on_sighup_keeps_the_running_config_until_a_valid_one() {
    let one = EchoBackend::spawn_named("one").await;
    let two = EchoBackend::spawn_named("two").await;
    let path = temp_file("sluice.toml", &config(&[one.addr()]));
    let sluice = Sluice::start(&path, &[]).await;
    let (mut ws, _) = ws_connect(sluice.addr, "/", &[]).await.unwrap();

    replace_file(
        &path,
        &config(&[two.addr()]).replace("round_robin", "fastest"),
    );
    sluice.signal(Signal::HUP);
    let line = sluice
        .wait_log(&["reload refused", "sluice.toml:"], Duration::from_secs(20))
        .await;
    assert!(
        line.contains("\"level\":\"ERROR\"") && line.contains("balance"),
        "{line}"
    );
    assert_eq!(landed(sluice.addr).await, "one");
    ws.send(Message::text("still")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("still"));

    replace_file(&path, &config(&[two.addr()]));
    sluice.signal(Signal::HUP);
    sluice.wait_generation(2).await;
    assert_eq!(landed(sluice.addr).await, "two");
    drop(ws);
    assert_eq!(sluice.stop().await.code(), Some(0));
}

#[tokio::test]
async fn sluice_reload_signals_the_process_of_the_pid_file() {
    let one = EchoBackend::spawn_named("one").await;
    let two = EchoBackend::spawn_named("two").await;
    let path = temp_file("sluice.toml", &config(&[one.addr()]));
    let pid_file = path.with_file_name("sluice.pid");
    let sluice = Sluice::start(&path, &["--pid-file", pid_file.to_str().unwrap()]).await;
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, sluice.child.id());

    replace_file(&path, &config(&[two.addr()]));
    let out = std::process::Command::new(common::SLUICE)
        .args(["reload", "--pid-file"])
        .arg(&pid_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sluice.wait_generation(2).await;
    assert_eq!(landed(sluice.addr).await, "two");
    assert_eq!(sluice.stop().await.code(), Some(0));
    assert!(!pid_file.exists(), "the pid file is removed on exit");

    // Without a running process, `reload` says so and fails.
    let out = std::process::Command::new(common::SLUICE)
        .args(["reload", "--pid-file"])
        .arg(&pid_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sluice.pid"));
}
