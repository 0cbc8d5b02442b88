//! One tunnel's throughput and the relay's CPU cost, on loopback.
//!
//! ```text
//! cargo run --release -p sluice-splice --example throughput -- [auto|splice|copy] [MiB] [pipe KiB] [buffer KiB]
//! ```
//!
//! A source thread writes `MiB` to the relay, which forwards them to a sink thread. The relay
//! runs alone on its own thread (a current-thread runtime), so that thread's CPU time
//! (`/proc/thread-self/stat`) is the relay's cost.

// A measuring tool: failing loudly is what it should do.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use sluice_splice::{PipePool, RelayMode, RelayOptions, Relayed, Traffic, relay, stats};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let mode = match arg(0).unwrap_or("splice") {
        "auto" => RelayMode::Auto,
        "copy" => RelayMode::Copy,
        _ => RelayMode::Splice,
    };
    let mib: usize = arg(1).map_or(1024, |s| s.parse().unwrap());
    let pipe_kib: usize = arg(2).map_or(64, |s| s.parse().unwrap());
    let buffer_kib: usize = arg(3).map_or(16, |s| s.parse().unwrap());
    let total = mib << 20;

    let sink_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink_listener.local_addr().unwrap();
    let front = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let front_addr = front.local_addr().unwrap();

    let sink = std::thread::spawn(move || {
        let (mut conn, _) = sink_listener.accept().unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0usize;
        loop {
            match conn.read(&mut buf).unwrap() {
                0 => return got,
                n => got += n,
            }
        }
    });

    let relay_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            front.set_nonblocking(true).unwrap();
            let front = tokio::net::TcpListener::from_std(front).unwrap();
            let (client, _) = front.accept().await.unwrap();
            let backend = tokio::net::TcpStream::connect(sink_addr).await.unwrap();
            client.set_nodelay(true).unwrap();
            backend.set_nodelay(true).unwrap();
            let pool = PipePool::new(16, pipe_kib << 10);
            let opts = RelayOptions {
                mode,
                buffer_size: buffer_kib << 10,
                idle_timeout: None,
                half_closed_timeout: None,
            };
            let cpu_before = thread_cpu();
            let relayed = relay(
                client,
                backend,
                &opts,
                &pool,
                &Traffic::default(),
                std::future::pending::<()>(),
            )
            .await;
            let Relayed::Closed(report) = relayed else {
                unreachable!("a pending stop never suspends");
            };
            (report, thread_cpu() - cpu_before)
        })
    });

    let started = Instant::now();
    let mut source = std::net::TcpStream::connect(front_addr).unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len());
        source.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    source.shutdown(Shutdown::Write).unwrap();
    let received = sink.join().unwrap();
    let elapsed = started.elapsed();
    let (report, cpu) = relay_thread.join().unwrap();
    assert_eq!(received, total);

    let gib = total as f64 / f64::from(1u32 << 30);
    println!(
        "mode={mode:?} pipe={pipe_kib}KiB buffer={buffer_kib}KiB bytes={total} \
         wall={:.2}s throughput={:.0}MB/s ({:.1} Gbit/s) relay_cpu={:.2}s ({:.2} s/GiB) \
         spliced={} copied={} splice_calls={} pipes_undersized={}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64() / 1e6,
        total as f64 * 8.0 / elapsed.as_secs_f64() / 1e9,
        cpu.as_secs_f64(),
        cpu.as_secs_f64() / gib,
        report.spliced_bytes,
        report.copied_bytes,
        stats().splice_calls(),
        stats().pipes_undersized(),
    );
}

/// CPU time (user + system) of the calling thread, from `/proc/thread-self/stat`.
fn thread_cpu() -> Duration {
    const TICKS_PER_SECOND: u64 = 100; // USER_HZ on Linux
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}
