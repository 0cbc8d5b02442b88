//! The real `sluice` binary: `check` on good and bad files, `run` serving real WebSocket
//! clients, and real signals.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{SLUICE, Sluice, repo, temp_file};
use futures_util::StreamExt;
use sluice_testkit::{EchoBackend, Message, ws_connect, ws_roundtrip};

#[test]
fn version_and_help() {
    let out = Command::new(SLUICE).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sluice "));
    let out = Command::new(SLUICE).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("run") && help.contains("check"), "{help}");
}

#[test]
fn check_accepts_every_example_config() {
    for entry in std::fs::read_dir(repo().join("config")).unwrap() {
        let path = entry.unwrap().path();
        let out = Command::new(SLUICE)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("valid"), "{stdout}");
    }
}

#[test]
fn check_prints_every_error_with_line_and_column_and_exits_64() {
    let path = temp_file(
        "bad.toml",
        r#"[[listeners]]
name = "public"
lisen = "127.0.0.1:8080"

[[routes]]
listener = "pubic"
pool = "chat"

[pools.chat]
balance = "rand"
backends = ["127.0.0.1:9000"]

[timeouts]
handshake = 5
"#,
    );
    let out = Command::new(SLUICE)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (line, what) in [(3, "lisen"), (6, "pubic"), (10, "rand"), (14, "handshake")] {
        let prefix = format!("bad.toml:{line}:");
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&prefix) && l.contains(what)),
            "no error for {what} at line {line} in:\n{stderr}"
        );
    }
    // `run` refuses the same file the same way, before binding anything.
    let out = Command::new(SLUICE)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = Command::new(SLUICE)
        .args(["check", "--config", "/nonexistent/sluice.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sluice.toml"));
}

fn run_config(backend: SocketAddr, shutdown: &str) -> String {
    common::config(
        &[backend],
        "",
        &format!("[timeouts]\nshutdown = \"{shutdown}\""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_websockets_and_sigterm_drains_then_exits_0() {
    let backend = EchoBackend::spawn().await;
    let path = temp_file("run.toml", &run_config(backend.addr(), "1s"));
    let sluice = Sluice::start(&path, &[]).await;
    let addr = sluice.addr;

    let (mut ws, _) = ws_connect(addr, "/", &[]).await.unwrap();
    assert_eq!(
        ws_roundtrip(&mut ws, Message::text("through the binary"))
            .await
            .unwrap(),
        Message::text("through the binary")
    );

    let started = Instant::now();
    sluice.signal(rustix::process::Signal::TERM);
    // The live tunnel keeps working during the grace period...
    assert_eq!(
        ws_roundtrip(&mut ws, Message::text("still")).await.unwrap(),
        Message::text("still")
    );
    // ...and is closed at the deadline; then the process exits 0.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok());
    let (status, logs) = sluice.exit(Duration::from_secs(20)).await;
    let logs = logs.join("\n");
    // Grace until 1 s minus the default spread (a sixth of it), then closed.
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(status.code(), Some(0), "logs:\n{logs}");
    // JSON logs, one object per line.
    assert!(
        logs.lines()
            .filter(|l| !l.is_empty())
            .all(|l| l.starts_with('{')),
        "{logs}"
    );
    assert!(logs.contains("shutting down"));
}

#[tokio::test]
async fn a_second_sigint_exits_at_once() {
    let backend = EchoBackend::spawn().await;
    let path = temp_file("run.toml", &run_config(backend.addr(), "1h"));
    let mut sluice = Sluice::start(&path, &[]).await;
    // A live tunnel would hold the first shutdown for an hour.
    let (_ws, _) = ws_connect(sluice.addr, "/", &[]).await.unwrap();
    sluice.signal(rustix::process::Signal::INT);
    // Once the first SIGINT is handled (a second one sent before would be merged with it)...
    sluice
        .wait_log(&["shutdown requested", "SIGINT"], Duration::from_secs(20))
        .await;
    sluice
        .wait_log(&["shutting down"], Duration::from_secs(20))
        .await;
    assert!(
        sluice.child.try_wait().unwrap().is_none(),
        "first SIGINT must wait for the tunnel"
    );
    // ...the second exits at once, with the tunnel still open.
    sluice.signal(rustix::process::Signal::INT);
    let (status, logs) = sluice.exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(1), "{}", logs.join("\n"));
    assert!(logs.iter().any(|l| l.contains("second shutdown signal")));
}

#[test]
fn a_port_in_use_is_a_clear_error_and_exit_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let path = temp_file(
        "busy.toml",
        &run_config("127.0.0.1:9".parse().unwrap(), "1s")
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    );
    let out = Command::new(SLUICE)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot listen") && stderr.contains(&port.to_string()),
        "{stderr}"
    );
}
