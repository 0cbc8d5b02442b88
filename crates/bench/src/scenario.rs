//! The scenarios. Each returns its result as one JSON object; every loop in them stops at a
//! count and at a deadline, whichever comes first.
//!
//! Connection `i` of a scenario goes to target `i % targets.len()`: one target is a proxy's
//! listener, several are the backends themselves (the direct, no-proxy baseline).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::stats::Latencies;
use crate::wire;

/// Where and how every scenario connects.
#[derive(Clone, Debug)]
pub(crate) struct Targets {
    pub(crate) addrs: Arc<[SocketAddr]>,
    pub(crate) path: Arc<str>,
}

impl Targets {
    /// The target of connection number `i`.
    fn addr(&self, i: u64) -> SocketAddr {
        let n = self.addrs.len().max(1) as u64;
        self.addrs
            .get(usize::try_from(i % n).unwrap_or(0))
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// `handshake`: `count` WebSocket connections opened and closed (closing handshake included),
/// `concurrency` at a time. Latency is connect → `101` received.
pub(crate) async fn handshake(
    targets: Targets,
    count: u64,
    concurrency: usize,
    deadline: Instant,
) -> anyhow::Result<Value> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (targets, next) = (targets.clone(), Arc::clone(&next));
        workers.spawn(async move {
            let mut lat = Latencies::with_capacity(usize::try_from(count).unwrap_or(0));
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= count || Instant::now() >= deadline {
                    break;
                }
                let t0 = Instant::now();
                let result = async {
                    let ws = wire::open(targets.addr(i), &targets.path).await?;
                    let opened = t0.elapsed();
                    wire::close(ws).await?;
                    anyhow::Ok(opened)
                }
                .await;
                match result {
                    Ok(opened) => {
                        lat.record(opened);
                        ok += 1;
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (lat, ok, errors, first_error)
        });
    }
    let mut lat = Latencies::default();
    let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
    while let Some(joined) = workers.join_next().await {
        let (l, o, e, f) = joined.context("handshake worker panicked")?;
        lat.merge(l);
        ok += o;
        errors += e;
        first_error = first_error.or(f);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(json!({
        "scenario": "handshake",
        "count": count,
        "concurrency": concurrency,
        "ok": ok,
        "errors": errors,
        "first_error": first_error,
        "elapsed_s": round3(elapsed),
        "rate_per_s": round1(ok as f64 / elapsed.max(1e-9)),
        "latency": lat.summary().map(|s| s.to_json()),
    }))
}

/// `bulk`: `connections` connections each send `size`-byte binary frames back to back for
/// `duration` and read the echo at the same time. Throughput counts echoed payload bytes that
/// arrived within `duration`; the byte totals (both directions, frames included, the drain
/// after the deadline too) are what the proxy relayed.
pub(crate) async fn bulk(
    targets: Targets,
    connections: usize,
    size: usize,
    duration: Duration,
) -> anyhow::Result<Value> {
    wire::check_size(size)?;
    let frame: Arc<[u8]> = wire::client_frame(wire::OP_BINARY, &wire::payload(size)).into();
    let echoed_frame = wire::server_frame(wire::OP_BINARY, &wire::payload(size)).len();
    let streams = open_all(&targets, connections).await?;
    let started = Instant::now();
    let until = started + duration;
    let mut tasks = JoinSet::new();
    for stream in streams {
        let frame = Arc::clone(&frame);
        tasks.spawn(bulk_conn(stream, frame, until));
    }
    let (mut sent, mut received, mut in_window) = (0u64, 0u64, 0u64);
    while let Some(joined) = tasks.join_next().await {
        let (s, r, w) = joined.context("bulk task panicked")??;
        sent += s;
        received += r;
        in_window += w;
    }
    let secs = duration.as_secs_f64();
    // Payload share of the echoed bytes: all frames have the same size.
    let payload_in_window = in_window as f64 * size as f64 / echoed_frame as f64;
    Ok(json!({
        "scenario": "bulk",
        "connections": connections,
        "frame_bytes": size,
        "duration_s": secs,
        "sent_bytes": sent,
        "received_bytes": received,
        "relayed_bytes": sent + received,
        "mb_per_s": round1(payload_in_window / secs / 1e6),
        "elapsed_s": round3(started.elapsed().as_secs_f64()),
    }))
}

/// One bulk connection: a writer and a reader on the two halves, then the closing handshake.
/// Returns (bytes sent, bytes received, bytes received before `until`).
async fn bulk_conn(
    stream: TcpStream,
    frame: Arc<[u8]>,
    until: Instant,
) -> anyhow::Result<(u64, u64, u64)> {
    let (mut rd, mut wr) = stream.into_split();
    let close = wire::client_frame(wire::OP_CLOSE, &1000u16.to_be_bytes());
    let writer = async {
        let mut sent = 0u64;
        while Instant::now() < until {
            wr.write_all(&frame).await.context("bulk write")?;
            sent += frame.len() as u64;
        }
        wr.write_all(&close).await.context("bulk close")?;
        anyhow::Ok(sent + close.len() as u64)
    };
    let reader = async {
        let mut buf = vec![0u8; 256 * 1024];
        let (mut received, mut in_window) = (0u64, 0u64);
        loop {
            let n = rd.read(&mut buf).await.context("bulk read")?;
            if n == 0 {
                break;
            }
            received += n as u64;
            if Instant::now() < until {
                in_window += n as u64;
            }
        }
        anyhow::Ok((received, in_window))
    };
    // The drain after the deadline is bounded: what is in flight, then the closing handshake.
    let bound = until.saturating_duration_since(Instant::now()) + Duration::from_secs(10);
    let (sent, (received, in_window)) =
        tokio::time::timeout(bound, async { tokio::try_join!(writer, reader) })
            .await
            .context("bulk connection did not finish in time")??;
    Ok((sent, received, in_window))
}

/// `echo`: `connections` connections each send one `size`-byte binary message and wait for
/// its echo, over and over, for `warmup + duration` or `max_round_trips` in all. Latency and
/// rate count the round trips started after the warm-up.
pub(crate) async fn echo(
    name: &'static str,
    targets: Targets,
    connections: usize,
    size: usize,
    warmup: Duration,
    duration: Duration,
    max_round_trips: u64,
) -> anyhow::Result<Value> {
    wire::check_size(size)?;
    let frame: Arc<[u8]> = wire::client_frame(wire::OP_BINARY, &wire::payload(size)).into();
    let expect: Arc<[u8]> = wire::server_frame(wire::OP_BINARY, &wire::payload(size)).into();
    let streams = open_all(&targets, connections).await?;
    let started = Instant::now();
    let measure_from = started + warmup;
    let until = measure_from + duration;
    let per_conn = max_round_trips.div_ceil(connections.max(1) as u64);
    let mut tasks = JoinSet::new();
    for stream in streams {
        let (frame, expect) = (Arc::clone(&frame), Arc::clone(&expect));
        tasks.spawn(echo_conn(
            stream,
            frame,
            expect,
            measure_from,
            until,
            per_conn,
        ));
    }
    let mut lat = Latencies::default();
    let mut total = 0u64;
    while let Some(joined) = tasks.join_next().await {
        let (l, n) = joined.context("echo task panicked")??;
        lat.merge(l);
        total += n;
    }
    let measured = lat.len() as u64 + lat.dropped();
    let window = until
        .min(Instant::now())
        .saturating_duration_since(measure_from);
    Ok(json!({
        "scenario": name,
        "connections": connections,
        "message_bytes": size,
        "warmup_s": warmup.as_secs_f64(),
        "duration_s": duration.as_secs_f64(),
        "round_trips": total,
        "measured_round_trips": measured,
        "rate_per_s": round1(measured as f64 / window.as_secs_f64().max(1e-9)),
        "latency": lat.summary().map(|s| s.to_json()),
        "elapsed_s": round3(started.elapsed().as_secs_f64()),
    }))
}

/// One echo connection; returns its latencies (after `measure_from`) and all round trips.
async fn echo_conn(
    mut stream: TcpStream,
    frame: Arc<[u8]>,
    expect: Arc<[u8]>,
    measure_from: Instant,
    until: Instant,
    max: u64,
) -> anyhow::Result<(Latencies, u64)> {
    let mut buf = vec![0u8; expect.len()];
    let expected_secs = until.saturating_duration_since(Instant::now()).as_secs();
    // Room for ~100k round trips a second for this connection's share, capped by the stats.
    let mut lat = Latencies::with_capacity(
        usize::try_from(max.min(expected_secs.saturating_mul(100_000))).unwrap_or(0),
    );
    let mut n = 0u64;
    let bound = until.saturating_duration_since(Instant::now()) + Duration::from_secs(10);
    tokio::time::timeout(bound, async {
        while n < max {
            let t0 = Instant::now();
            if t0 >= until {
                break;
            }
            stream.write_all(&frame).await.context("echo write")?;
            stream.read_exact(&mut buf).await.context("echo read")?;
            let rtt = t0.elapsed();
            if *buf != *expect {
                bail!("the echo differs from the message sent");
            }
            n += 1;
            if t0 >= measure_from {
                lat.record(rtt);
            }
        }
        anyhow::Ok(())
    })
    .await
    .context("echo connection stalled")??;
    wire::close_raw(&mut stream).await?;
    Ok((lat, n))
}

/// `idle`: `connections` connections opened (`concurrency` at a time), each echoing one
/// 32-byte message so its tunnel has carried data, then all held without a byte for `hold`
/// (the harness measures the proxy meanwhile; `ready_file` is created once all are open), then
/// dropped.
pub(crate) async fn idle(
    targets: Targets,
    connections: usize,
    concurrency: usize,
    hold: Duration,
    ready_file: Option<PathBuf>,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let count = connections as u64;
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (targets, next) = (targets.clone(), Arc::clone(&next));
        workers.spawn(async move {
            let frame = wire::client_frame(wire::OP_BINARY, &wire::payload(32));
            let expect = wire::server_frame(wire::OP_BINARY, &wire::payload(32));
            let mut buf = vec![0u8; expect.len()];
            let mut held = Vec::new();
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= count {
                    break;
                }
                let mut stream = wire::open_raw(targets.addr(i), &targets.path).await?;
                stream.write_all(&frame).await?;
                stream.read_exact(&mut buf).await?;
                if buf != expect {
                    bail!("the echo differs from the message sent");
                }
                held.push(stream);
            }
            anyhow::Ok(held)
        });
    }
    let mut held = Vec::with_capacity(connections);
    let open_bound = Duration::from_secs(60);
    let opening = async {
        while let Some(joined) = workers.join_next().await {
            held.extend(joined.context("idle worker panicked")??);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(open_bound, opening)
        .await
        .context("opening the idle connections took too long")??;
    let open_s = started.elapsed().as_secs_f64();
    if let Some(path) = &ready_file {
        std::fs::write(path, format!("{}\n", held.len()))
            .with_context(|| format!("write {}", path.display()))?;
    }
    eprintln!("sluice-load: {} idle connections held", held.len());
    tokio::time::sleep(hold).await;
    let opened = held.len();
    drop(held);
    Ok(json!({
        "scenario": "idle",
        "connections": connections,
        "opened": opened,
        "open_s": round3(open_s),
        "hold_s": hold.as_secs_f64(),
    }))
}

/// Opens `n` raw connections (up to 64 handshakes at a time).
async fn open_all(targets: &Targets, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(n);
    let mut pending = JoinSet::new();
    for i in 0..n as u64 {
        if pending.len() >= 64 {
            if let Some(joined) = pending.join_next().await {
                streams.push(joined.context("open task panicked")??);
            }
        }
        let targets = targets.clone();
        pending.spawn(async move { wire::open_raw(targets.addr(i), &targets.path).await });
    }
    while let Some(joined) = pending.join_next().await {
        streams.push(joined.context("open task panicked")??);
    }
    Ok(streams)
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
