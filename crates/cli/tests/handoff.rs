//! Binary upgrade that keeps established tunnels, with real processes: 2,000 WebSocket tunnels
//! keep exchanging messages while the binary is upgraded three times; bulk data sitting in
//! pipes crosses byte-exact; a successor that dies mid-transfer leaves the predecessor serving
//! every tunnel.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Sluice, temp_file};
use futures_util::{SinkExt, StreamExt};
use sluice_handoff::Inherited;
use sluice_testkit::{EchoBackend, Message, WsStream, ws_connect};

const SOON: Duration = Duration::from_secs(60);

fn args(flag: &str, socket: &Path) -> Vec<String> {
    vec![flag.to_owned(), socket.to_str().unwrap().to_owned()]
}

async fn start(path: &Path, flag: &str, socket: &Path) -> Sluice {
    let args = args(flag, socket);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Sluice::start(path, &args).await
}

fn socket_beside(config: &Path) -> PathBuf {
    config.with_file_name("upgrade.sock")
}

/// A `least_conn` pool of `backends`, an admin listener, a long shutdown (a predecessor that
/// exits at once proves it kept nothing, not that its deadline passed).
fn config(backends: &[SocketAddr]) -> String {
    common::config(
        backends,
        "balance = \"least_conn\"",
        "[timeouts]\nshutdown = \"60s\"\nshutdown_spread = \"1s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
}

async fn echo_backend() -> EchoBackend {
    EchoBackend::builder()
        .record(false)
        .spawn()
        .await
        .expect("echo backend")
}

/// One tunnel talking until stopped: numbered messages, each echoed back before the next,
/// every answer checked (a loss or a reorder is an error). A pause between messages keeps
/// the total rate within what a debug build relays on two cores.
struct Talker {
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Result<WsStream, String>>,
}

impl Talker {
    fn start(id: usize, mut ws: WsStream, pause: Duration, stop: Arc<AtomicBool>) -> Self {
        let sent = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&sent);
        let task = tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let text = format!("tunnel {id} message {seq}");
                ws.send(Message::text(text.clone()))
                    .await
                    .map_err(|e| format!("{text}: send: {e}"))?;
                match tokio::time::timeout(SOON, ws.next()).await {
                    Ok(Some(Ok(m))) if m == Message::text(text.clone()) => {}
                    Ok(other) => return Err(format!("{text}: came back as {other:?}")),
                    Err(_) => return Err(format!("{text}: no answer")),
                }
                seq += 1;
                counter.store(seq, Ordering::Relaxed);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            Ok(ws)
        });
        Self { sent, task }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Opens `n` tunnels through `addr`, 50 handshakes at a time.
async fn open_tunnels(addr: SocketAddr, n: usize) -> Vec<WsStream> {
    let mut out = Vec::with_capacity(n);
    let mut pending = futures_util::stream::iter(0..n)
        .map(|_| async move { ws_connect(addr, "/", &[]).await.map(|(ws, _)| ws) })
        .buffered(50);
    while let Some(ws) = pending.next().await {
        out.push(ws.expect("handshake"));
    }
    out
}

/// `n` tunnels through `addr`, each talking with this pause until `stop`.
async fn talk(addr: SocketAddr, n: usize, pause: Duration, stop: &Arc<AtomicBool>) -> Vec<Talker> {
    open_tunnels(addr, n)
        .await
        .into_iter()
        .enumerate()
        .map(|(id, ws)| Talker::start(id, ws, pause, Arc::clone(stop)))
        .collect()
}

/// Waits until every talker sent at least one more message than `before`.
async fn every_talker_moved(talkers: &[Talker], before: &[u64]) {
    let moved = sluice_testkit::wait_until(SOON, || {
        talkers.iter().zip(before).all(|(t, b)| t.sent() > *b)
    })
    .await;
    let stuck = talkers
        .iter()
        .zip(before)
        .filter(|(t, b)| t.sent() <= **b)
        .count();
    assert!(moved, "{stuck} tunnels stopped talking");
}

/// The numeric field `name` of a flat JSON log line.
fn number(line: &str, name: &str) -> u64 {
    let key = format!("\"{name}\":");
    let start = line
        .find(&key)
        .unwrap_or_else(|| panic!("{name} in {line}"))
        + key.len();
    line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_tunnels_keep_talking_through_three_upgrades() {
    const TUNNELS: usize = 2_000;
    let backends = [echo_backend().await, echo_backend().await];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let path = temp_file("sluice.toml", &config(&addrs));
    let socket = socket_beside(&path);
    let mut current = start(&path, "--upgrade-socket", &socket).await;

    let stop = Arc::new(AtomicBool::new(false));
    let talkers: Vec<Talker> = open_tunnels(current.addr, TUNNELS)
        .await
        .into_iter()
        .enumerate()
        .map(|(id, ws)| {
            // A few talk without pause: bytes are always in flight somewhere.
            let pause = if id % 200 == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(1_000)
            };
            Talker::start(id, ws, pause, Arc::clone(&stop))
        })
        .collect();
    // And new clients all along: none may fail its handshake.
    let clients = common::Clients::start(current.addr);

    let admin = current.admin_addr().await;
    for upgrade in 1..=3 {
        let before: Vec<u64> = talkers.iter().map(Talker::sent).collect();
        let accepted = common::metric(admin, "sluice_connections_accepted_total").await;
        let next = start(&path, "--upgrade-from", &socket).await;
        let took = next.wait_log(&["took over", "adopted"], SOON).await;
        // Counters go on in the successor (same admin address: its socket crossed too).
        let carried = common::metric(admin, "sluice_connections_accepted_total").await;
        assert!(
            carried >= accepted && accepted >= TUNNELS as f64,
            "upgrade {upgrade}: accepted {accepted} before, {carried} after"
        );
        let (status, log) = current.exit(SOON).await;
        assert_eq!(
            status.code(),
            Some(0),
            "upgrade {upgrade}: {}",
            log.join("\n")
        );
        let handed = log
            .iter()
            .find(|l| l.contains("tunnels handed over"))
            .unwrap_or_else(|| panic!("upgrade {upgrade}: {}", log.join("\n")));
        // Every tunnel crossed (the short-lived clients' too, when caught in the middle).
        assert!(number(handed, "handed") >= TUNNELS as u64, "{handed}");
        assert!(number(&took, "adopted") >= TUNNELS as u64, "{took}");
        every_talker_moved(&talkers, &before).await;
        clients.wait_more(3).await;
        current = next;
    }

    // The last process counts every tunnel as its own.
    let active = common::metric(admin, "sluice_tunnels_active").await;
    assert!(active >= TUNNELS as f64, "sluice_tunnels_active = {active}");
    let adopted = common::metric(admin, "sluice_handoff_tunnels_total").await;
    assert!(adopted >= TUNNELS as f64, "handoff counter = {adopted}");

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for talker in talkers {
        let sent = talker.sent();
        let mut ws = talker.task.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        total += sent;
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    let (ok, failures) = clients.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
    eprintln!(
        "handoff: {TUNNELS} tunnels, {total} messages echoed in order across 3 upgrades, \
         {ok} short-lived clients, none failed"
    );
    let closed = sluice_testkit::wait_until(SOON, || {
        backends
            .iter()
            .map(|b| b.active_connections())
            .sum::<usize>()
            == 0
    })
    .await;
    assert!(closed, "tunnels still open at the backends");
    assert_eq!(current.stop().await.code(), Some(0));
}

/// A deterministic pattern per message, so that the reader checks every byte.
fn pattern(message: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ message.wrapping_mul(7)) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_data_sitting_in_pipes_crosses_byte_exact() {
    const MESSAGES: usize = 192;
    const SIZE: usize = 128 * 1024;
    let backend = echo_backend().await;
    let path = temp_file("sluice.toml", &config(&[backend.addr()]));
    let socket = socket_beside(&path);
    let first = start(&path, "--upgrade-socket", &socket).await;
    let admin = first.admin_addr().await;

    // 24 MiB sent without reading a byte back: the echoes fill the client's socket, then the
    // tunnel's pipe; the backend, unable to write, stops reading, and the other way fills too.
    let (ws, _) = ws_connect(first.addr, "/", &[]).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let writer = tokio::spawn(async move {
        for m in 0..MESSAGES {
            tx.send(Message::binary(pattern(m, SIZE))).await.unwrap();
        }
        tx
    });
    let stalled = sluice_testkit::wait_until_async(SOON, || async {
        common::metric(admin, "sluice_pipes{state=\"in_use\"}").await >= 1.0
    })
    .await;
    assert!(stalled, "no pipe ever held the tunnel's bytes");
    // With its closed tunnels logged (debug), to read the tunnel's totals.
    let second = Sluice::start_with_env(
        &path,
        &["--upgrade-from", socket.to_str().unwrap()],
        &[("RUST_LOG", "info,sluice_proxy::conn=debug")],
    )
    .await;
    second.wait_log(&["took over", "adopted"], SOON).await;
    let (status, log) = first.exit(SOON).await;
    assert_eq!(status.code(), Some(0));
    let handed = log
        .iter()
        .find(|l| l.contains("tunnels handed over"))
        .unwrap();
    assert!(
        number(handed, "in_flight_bytes") > 0,
        "nothing was in flight: {handed}"
    );

    // Now read: every message, every byte, in order.
    for m in 0..MESSAGES {
        match tokio::time::timeout(SOON, rx.next()).await {
            Ok(Some(Ok(Message::Binary(got)))) => {
                assert!(got[..] == pattern(m, SIZE)[..], "message {m} corrupted")
            }
            other => panic!("message {m}: {other:?}"),
        }
    }
    let tx = writer.await.unwrap();
    let mut ws = tx.reunite(rx).unwrap();
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    // The tunnel's counts went on across the upgrade: its close reports every byte of its
    // life, the 24 MiB each way, most of which the first process relayed.
    let closed = second.wait_log(&["tunnel closed"], SOON).await;
    let payload = (MESSAGES * SIZE) as u64;
    assert!(number(&closed, "client_to_backend") >= payload, "{closed}");
    assert!(number(&closed, "backend_to_client") >= payload, "{closed}");
    assert_eq!(second.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_dying_mid_transfer_leaves_the_predecessor_serving_every_tunnel() {
    const TUNNELS: usize = 100;
    let backend = echo_backend().await;
    let path = temp_file("sluice.toml", &config(&[backend.addr()]));
    let socket = socket_beside(&path);
    let first = start(&path, "--upgrade-socket", &socket).await;
    let stop = Arc::new(AtomicBool::new(false));
    let talkers = talk(first.addr, TUNNELS, Duration::from_millis(20), &stop).await;

    // A successor that takes the sockets, refuses the first batch of tunnels, and dies with
    // the second in its hands (its descriptors closed by the kernel, as on SIGKILL).
    let successor_socket = socket.clone();
    let (first_batch, second_batch) = tokio::task::spawn_blocking(move || {
        let inheritance = sluice_handoff::take_over(&successor_socket, SOON).unwrap();
        inheritance.ready().unwrap();
        let Inherited::Tunnels(batch) = inheritance.next().unwrap() else {
            panic!("no tunnels")
        };
        let refused = (0..batch.len())
            .map(|index| sluice_handoff::Refusal {
                index,
                reason: "test: refused".into(),
            })
            .collect();
        inheritance.adopted(refused).unwrap();
        let first = batch.len();
        let Inherited::Tunnels(batch) = inheritance.next().unwrap() else {
            panic!("no second batch")
        };
        (first, batch.len())
        // Dies here: the inheritance and every descriptor it received are dropped.
    })
    .await
    .unwrap();
    assert!(first_batch > 0 && second_batch > 0);
    first
        .wait_log(&["upgrade failed while handing tunnels over"], SOON)
        .await;

    // Every tunnel still talks, new clients are served, and a real successor takes over.
    let before: Vec<u64> = talkers.iter().map(Talker::sent).collect();
    every_talker_moved(&talkers, &before).await;
    assert_eq!(common::landed(first.addr, &[]).await, backend.name());
    let second = start(&path, "--upgrade-from", &socket).await;
    let took = second.wait_log(&["took over", "adopted"], SOON).await;
    let (status, _) = first.exit(SOON).await;
    assert_eq!(status.code(), Some(0));
    // The tunnels the dead successor refused were relayed on by the first process, and this
    // upgrade took them too: every tunnel crossed, and every one still talks, in order.
    assert!(number(&took, "adopted") >= TUNNELS as u64, "{took}");
    let before: Vec<u64> = talkers.iter().map(Talker::sent).collect();
    every_talker_moved(&talkers, &before).await;
    stop.store(true, Ordering::Relaxed);
    for talker in talkers {
        let ws = talker.task.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        drop(ws);
    }
    assert_eq!(second.stop().await.code(), Some(0));
}

/// Whether process `pid` has exited (gone, or a zombie waiting for its new parent).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// On drop (a failed test included), stops by pid every process started with this
/// configuration file: the successors a SIGUSR2 started are not the test's children.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let config = self.0.to_string_lossy().into_owned();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let ours = String::from_utf8_lossy(&cmdline).contains(&config)
                && pid != std::process::id() as i32;
            if let (true, Some(pid)) = (ours, rustix::process::Pid::from_raw(pid)) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// `sluice upgrade --pid-file` (SIGUSR2): the running process starts the binary at its own
/// path as its successor, which takes the tunnels over, rewrites the pid file and serves on;
/// the old process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_command_starts_the_successor_itself() {
    const TUNNELS: usize = 50;
    let backend = echo_backend().await;
    let path = temp_file("sluice.toml", &config(&[backend.addr()]));
    let _reaper = Reaper(path.clone());
    let socket = socket_beside(&path);
    let pid_file = path.with_file_name("sluice.pid");
    let first = Sluice::start(
        &path,
        &[
            "--upgrade-socket",
            socket.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    )
    .await;
    let first_pid = first.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let talkers = talk(first.addr, TUNNELS, Duration::from_millis(20), &stop).await;

    // The command returns once the successor took over (the pid file names it).
    let out = tokio::task::spawn_blocking({
        let pid_file = pid_file.clone();
        move || {
            std::process::Command::new(common::SLUICE)
                .args(["upgrade", "--pid-file", pid_file.to_str().unwrap()])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("sent SIGUSR2"), "{said}");
    assert!(
        said.contains(&format!("took over from pid {first_pid}")),
        "{said}"
    );
    // The successor writes to the same standard error: its lines are in this log.
    first.wait_log(&["starting the successor"], SOON).await;
    let took = first.wait_log(&["took over", "adopted"], SOON).await;
    assert!(number(&took, "adopted") >= TUNNELS as u64, "{took}");
    let started = first
        .log()
        .into_iter()
        .find(|l| l.contains("sluice started") && !l.contains(&format!("\"pid\":{first_pid}")))
        .expect("the successor's start line");
    let successor = u32::try_from(number(&started, "pid")).unwrap();
    let mut first = first;
    let status = tokio::task::spawn_blocking(move || {
        let status = common::wait_exit(&mut first.child, SOON);
        (status, first)
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        successor.to_string(),
        "the pid file names the successor"
    );

    let before: Vec<u64> = talkers.iter().map(Talker::sent).collect();
    every_talker_moved(&talkers, &before).await;
    let addr = status.1.addr;
    assert_eq!(common::landed(addr, &[]).await, backend.name());
    stop.store(true, Ordering::Relaxed);
    for talker in talkers {
        drop(talker.task.await.unwrap().unwrap_or_else(|e| panic!("{e}")));
    }
    // Stopped by its pid, as started (through the signal).
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(successor as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(
        sluice_testkit::wait_until(SOON, || exited(successor)).await,
        "the successor did not exit on SIGTERM"
    );
    assert!(!pid_file.exists(), "the last process removes its pid file");
}

/// Opens a tunnel through `addr`; returns it and the name of the backend it reached.
async fn tunnel_to(addr: SocketAddr) -> (WsStream, String) {
    let (ws, response) = ws_connect(addr, "/", &[]).await.unwrap();
    let backend = response
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (ws, backend)
}

/// Adopted tunnels are the successor's own: `least_conn` counts them (new connections go to
/// the backend without any), and a reload that removes their backend drains them on its
/// schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopted_tunnels_count_for_least_conn_and_drain() {
    let named = |name: &'static str| async move {
        EchoBackend::builder()
            .name(name)
            .record(false)
            .spawn()
            .await
            .unwrap()
    };
    let (a, b) = (named("a").await, named("b").await);
    let pool = "balance = \"least_conn\"\ndrain_timeout = \"1s\"\ndrain_spread = \"0s\"";
    let with = |backends: &[SocketAddr]| {
        common::config(backends, pool, "[timeouts]\nshutdown = \"60s\"\n")
    };
    let path = temp_file("sluice.toml", &with(&[a.addr(), b.addr()]));
    let socket = socket_beside(&path);
    let first = start(&path, "--upgrade-socket", &socket).await;

    // Ten tunnels, five on each (least_conn alternates); those on `a` closed: only `b` keeps
    // tunnels.
    let mut opened = Vec::new();
    for _ in 0..10 {
        opened.push(tunnel_to(first.addr).await);
    }
    let mut on_b = Vec::new();
    for (mut ws, backend) in opened {
        if backend == "b" {
            on_b.push(ws);
        } else {
            assert_eq!(backend, "a");
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        }
    }
    assert_eq!(on_b.len(), 5);
    assert!(
        sluice_testkit::wait_until(SOON, || a.active_connections() == 0).await,
        "a still has tunnels"
    );

    let second = start(&path, "--upgrade-from", &socket).await;
    second.wait_log(&["took over", "adopted"], SOON).await;
    assert_eq!(first.exit(SOON).await.0.code(), Some(0));

    // `b` holds the adopted tunnels, `a` none: every new one goes to `a`.
    let mut on_a = Vec::new();
    for _ in 0..on_b.len() {
        let (ws, backend) = tunnel_to(second.addr).await;
        assert_eq!(backend, "a", "least_conn did not count the adopted tunnels");
        on_a.push(ws);
    }

    // A reload removes `b`: its adopted tunnels are closed after drain_timeout.
    common::replace_file(&path, &with(&[a.addr()]));
    second.signal(rustix::process::Signal::HUP);
    second.wait_generation(2).await;
    for (i, ws) in on_b.iter_mut().enumerate() {
        let ended = tokio::time::timeout(SOON, async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "adopted tunnel {i} on the removed backend was not drained"
        );
    }
    for (i, ws) in on_a.iter_mut().enumerate() {
        ws.send(Message::text(format!("still {i}"))).await.unwrap();
        let echoed = tokio::time::timeout(SOON, ws.next()).await.unwrap();
        assert!(matches!(echoed, Some(Ok(m)) if m == Message::text(format!("still {i}"))));
    }
    drop((on_a, on_b));
    assert_eq!(second.stop().await.code(), Some(0));
}

/// Without `--upgrade-socket`, `sluice upgrade` (SIGUSR2) is logged and ignored: the signal's
/// default action would have killed the process.
#[tokio::test]
async fn the_upgrade_command_without_an_upgrade_socket_changes_nothing() {
    let backend = echo_backend().await;
    let path = temp_file("sluice.toml", &config(&[backend.addr()]));
    let pid_file = path.with_file_name("sluice.pid");
    let sluice = Sluice::start(&path, &["--pid-file", pid_file.to_str().unwrap()]).await;
    let out = tokio::task::spawn_blocking({
        let pid_file = pid_file.clone();
        move || {
            std::process::Command::new(common::SLUICE)
                .args([
                    "upgrade",
                    "--wait",
                    "1",
                    "--pid-file",
                    pid_file.to_str().unwrap(),
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no successor took over within 1s"));
    sluice
        .wait_log(&["binary upgrade needs --upgrade-socket"], SOON)
        .await;
    assert_eq!(common::landed(sluice.addr, &[]).await, backend.name());
    assert_eq!(sluice.stop().await.code(), Some(0));
}

/// A successor that dies after the old process stopped accepting (holding a tunnel whose
/// handshake finished meanwhile): the old process accepts again on the sockets it kept, and
/// the tunnel, given back, talks on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_dying_after_the_old_process_stopped_accepting_leaves_it_serving() {
    let backend = echo_backend().await;
    let path = temp_file("sluice.toml", &config(&[backend.addr()]));
    let socket = socket_beside(&path);
    let first = start(&path, "--upgrade-socket", &socket).await;
    let admin = first.admin_addr().await;
    // A client connected before the upgrade, its handshake not yet sent.
    let early = tokio::net::TcpStream::connect(first.addr).await.unwrap();
    let accepted = sluice_testkit::wait_until_async(SOON, || async {
        common::metric(admin, "sluice_connections_active").await >= 1.0
    })
    .await;
    assert!(accepted);

    let (got_batch, got) = std::sync::mpsc::channel();
    let successor_socket = socket.clone();
    let successor = tokio::task::spawn_blocking(move || {
        let inheritance = sluice_handoff::take_over(&successor_socket, SOON).unwrap();
        inheritance.ready().unwrap();
        let Inherited::Tunnels(batch) = inheritance.next().unwrap() else {
            panic!("no tunnel")
        };
        got_batch.send(batch.len()).unwrap();
        // Dies here, the tunnel's descriptors in its hands.
    });
    first.wait_log(&["listener closed", "public"], SOON).await;
    // Now the handshake: it completes in the old process, which no longer accepts, and the
    // tunnel goes to the successor, which dies with it.
    let addr = first.addr.to_string();
    let (mut ws, _) = sluice_testkit::ws_handshake(early, &addr, "/", &[])
        .await
        .unwrap();
    successor.await.unwrap();
    assert_eq!(got.recv().unwrap(), 1);
    first.wait_log(&["accepting again"], SOON).await;

    ws.send(Message::text("given back")).await.unwrap();
    let echoed = tokio::time::timeout(SOON, ws.next()).await.unwrap();
    assert!(matches!(echoed, Some(Ok(m)) if m == Message::text("given back")));
    assert_eq!(common::landed(first.addr, &[]).await, backend.name());
    assert!(common::metric(admin, "sluice_ready").await >= 1.0);

    // And a real successor still takes everything over.
    let second = start(&path, "--upgrade-from", &socket).await;
    second.wait_log(&["took over", "adopted"], SOON).await;
    assert_eq!(first.exit(SOON).await.0.code(), Some(0));
    ws.send(Message::text("moved")).await.unwrap();
    let echoed = tokio::time::timeout(SOON, ws.next()).await.unwrap();
    assert!(matches!(echoed, Some(Ok(m)) if m == Message::text("moved")));
    drop(ws);
    assert_eq!(second.stop().await.code(), Some(0));
}
