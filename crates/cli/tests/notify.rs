//! Readiness notifications to a service manager (`sd_notify`): a real `sluice run` with
//! `NOTIFY_SOCKET` naming a real Unix datagram socket, read as systemd would read it.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Sluice, replace_file, temp_file};
use rustix::process::Signal;
use sluice_testkit::EchoBackend;
use tokio::net::UnixDatagram;

use common::round_robin as config;

/// The next datagram, within a generous deadline.
async fn next(socket: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), socket.recv(&mut buf))
        .await
        .expect("no notification within 30 s")
        .unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec).unwrap() * 1_000_000 + u64::try_from(now.tv_nsec).unwrap() / 1_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_reloading_and_stopping_are_reported_in_order() {
    let one = EchoBackend::spawn_named("one").await;
    let two = EchoBackend::spawn_named("two").await;
    let path = temp_file("sluice.toml", &config(&[one.addr()]));
    let socket_path = path.with_file_name("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let sluice = Sluice::start_with_env(
        &path,
        &[],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    )
    .await;

    let ready = next(&socket).await;
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    let status = field(&ready, "STATUS").unwrap();
    assert!(status.contains("generation 1"), "{ready}");
    assert_eq!(
        field(&ready, "MAINPID"),
        Some(sluice.child.id().to_string().as_str())
    );
    assert_eq!(common::landed(sluice.addr, &[]).await, "one");

    // A reload that applies: RELOADING=1 stamped with the time it started, then READY=1.
    replace_file(&path, &config(&[two.addr()]));
    let before = monotonic_usec();
    sluice.signal(Signal::HUP);
    let reloading = next(&socket).await;
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading}");
    let stamp: u64 = field(&reloading, "MONOTONIC_USEC")
        .unwrap()
        .parse()
        .unwrap();
    let reloaded = next(&socket).await;
    let after = monotonic_usec();
    assert!(
        (before..=after).contains(&stamp),
        "MONOTONIC_USEC {stamp} outside [{before}, {after}]"
    );
    assert_eq!(field(&reloaded, "READY"), Some("1"), "{reloaded}");
    assert!(
        field(&reloaded, "STATUS").unwrap().contains("generation 2"),
        "{reloaded}"
    );
    // READY=1 after the reload means the new configuration is in force.
    assert_eq!(common::landed(sluice.addr, &[]).await, "two");

    // A refused reload still ends with READY=1 (sluice serves on), saying it was refused.
    replace_file(&path, "[[listeners]\n");
    sluice.signal(Signal::HUP);
    let reloading = next(&socket).await;
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading}");
    let refused = next(&socket).await;
    assert_eq!(field(&refused, "READY"), Some("1"), "{refused}");
    let status = field(&refused, "STATUS").unwrap();
    assert!(
        status.contains("refused") && status.contains("generation 2"),
        "{refused}"
    );

    // Shutdown: STOPPING=1 as it starts (the datagram waits in the socket), then a clean exit.
    assert_eq!(sluice.stop().await.code(), Some(0));
    let stopping = next(&socket).await;
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_socket_nobody_listens_on_is_logged_once_and_changes_nothing() {
    let backend = EchoBackend::spawn_named("b").await;
    let path = temp_file("sluice.toml", &config(&[backend.addr()]));
    let missing = path.with_file_name("nobody-listens.sock");
    let sluice =
        Sluice::start_with_env(&path, &[], &[("NOTIFY_SOCKET", missing.to_str().unwrap())]).await;
    sluice
        .wait_log(
            &["cannot notify the service manager"],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(common::landed(sluice.addr, &[]).await, "b");
    sluice.signal(Signal::HUP);
    sluice.wait_generation(2).await;
    assert_eq!(common::landed(sluice.addr, &[]).await, "b");
    // Every later notification (READY after the reload, STOPPING) fails too: still one line.
    sluice.signal(Signal::TERM);
    let (status, log) = sluice.exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0));
    let warnings = log
        .iter()
        .filter(|l| l.contains("cannot notify the service manager"))
        .count();
    assert_eq!(warnings, 1, "{log:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_binary_upgrade_the_successor_announces_itself_and_the_predecessor_never_stops_the_service()
 {
    let backend = EchoBackend::spawn_named("b").await;
    let path = temp_file("sluice.toml", &config(&[backend.addr()]));
    let socket_path = path.with_file_name("notify.sock");
    let upgrade = path.with_file_name("upgrade.sock");
    let upgrade = upgrade.to_str().unwrap();
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let env = [("NOTIFY_SOCKET", socket_path.to_str().unwrap())];

    let first = Sluice::start_with_env(&path, &["--upgrade-socket", upgrade], &env).await;
    let ready = next(&socket).await;
    let first_pid = first.child.id().to_string();
    assert_eq!(
        field(&ready, "MAINPID"),
        Some(first_pid.as_str()),
        "{ready}"
    );

    let second = Sluice::start_with_env(&path, &["--upgrade-from", upgrade], &env).await;
    let ready = next(&socket).await;
    let second_pid = second.child.id().to_string();
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    assert_eq!(
        field(&ready, "MAINPID"),
        Some(second_pid.as_str()),
        "{ready}"
    );

    // The predecessor drains (nothing to drain here) and exits by itself; then the successor
    // is stopped. Every sender is gone: what the socket holds now is all that was sent.
    let (status, _) = first.exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(second.stop().await.code(), Some(0));
    let stopping = next(&socket).await;
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping}");
    let mut buf = [0u8; 4096];
    match socket.try_recv(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!(
            "one STOPPING=1 only (the successor's), then nothing: {:?}",
            other.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        ),
    }
}
