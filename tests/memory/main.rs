//! 64 MiB bodies both ways through the proxy, in bounded memory.
//!
//! A test binary of its own: the resident set measured is the whole process's (proxy, client
//! and backend all run here), and cargo runs test binaries one after the other, so no other test
//! allocates while this one measures. The peak (`VmHWM`) is what is checked: a body buffered
//! whole and freed at once would leave the current size unchanged, not the peak.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sluice_e2e::{Proxy, config};
use sluice_testkit::{Checksum, HttpBackend, checksum, pattern};

/// 64 MiB.
const LEN: u64 = 64 << 20;
/// How much the process may grow while 4 × 64 MiB cross it: buffers, not bodies.
const BOUND: u64 = 24 << 20;

/// A `/proc/self/status` field in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field}"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// The resident set now.
fn rss_now() -> u64 {
    status_bytes("VmRSS:")
}

/// A 64 MiB body made on the fly, 256 KiB at a time.
fn generated() -> reqwest::Body {
    let pieces = futures_util::stream::unfold(0u64, |at| async move {
        if at >= LEN {
            return None;
        }
        let n = (LEN - at).min(256 << 10);
        let piece: Vec<u8> = (at..at + n).map(pattern).collect();
        Some((Ok::<_, std::io::Error>(bytes::Bytes::from(piece)), at + n))
    });
    reqwest::Body::wrap_stream(pieces)
}

/// Reads a response body as it comes: its length and checksum.
async fn drain(response: reqwest::Response) -> (u64, u64) {
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let (mut len, mut sum) = (0u64, Checksum::default());
    while let Some(piece) = stream.next().await {
        let piece = piece.unwrap();
        len += piece.len() as u64;
        sum.update(&piece);
    }
    (len, sum.value())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_64_mib_stream_both_ways_in_bounded_memory() {
    // Recording off: the backend would otherwise keep every byte it received.
    let backend = HttpBackend::spawn_with("big", false).await.unwrap();
    let proxy = Proxy::start(&config(&[backend.addr()], "round_robin", "")).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let url = |path: &str| format!("http://{}{path}", proxy.addr());
    let expected = checksum(LEN);

    // Warm up every path once, small, so one-time allocations are in the baseline.
    let response = http.post(url("/sink")).body("x").send().await.unwrap();
    assert_eq!(
        response.text().await.unwrap(),
        format!("bytes=1 sum={}", {
            let mut s = Checksum::default();
            s.update(b"x");
            s.value()
        })
    );
    for path in ["/source/1000", "/source-chunked/1000"] {
        drain(http.get(url(path)).send().await.unwrap()).await;
    }
    drain(
        http.post(url("/echo-stream"))
            .body("y")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let baseline = rss_now();
    let started = Instant::now();

    // Up: a chunked upload of 64 MiB, re-chunked by the proxy, checked by the backend.
    let response = http
        .post(url("/sink"))
        .body(generated())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.text().await.unwrap(),
        format!("bytes={LEN} sum={expected}")
    );
    // Down: 64 MiB by Content-Length, and 64 MiB chunked.
    for path in [format!("/source/{LEN}"), format!("/source-chunked/{LEN}")] {
        let (len, sum) = drain(http.get(url(&path)).send().await.unwrap()).await;
        assert_eq!((len, sum), (LEN, expected), "{path}");
    }
    // Both at once: the backend echoes each piece as it reads it.
    let response = http
        .post(url("/echo-stream"))
        .body(generated())
        .send()
        .await
        .unwrap();
    assert_eq!(drain(response).await, (LEN, expected));

    let took = started.elapsed();
    let peak = status_bytes("VmHWM:");
    let now = rss_now();
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "4 x 64 MiB in {took:?}: resident {} MiB before, peak {} MiB, {} MiB now; peak growth {} KiB",
        baseline >> 20,
        peak >> 20,
        now >> 20,
        grown >> 10
    );
    assert!(
        grown < BOUND,
        "the process grew by {} MiB at its peak while 64 MiB bodies crossed it",
        grown >> 20
    );
    // A request is counted once its response's last byte is written: a moment after the
    // client has read it.
    assert!(
        sluice_testkit::wait_until(Duration::from_secs(10), || {
            proxy.server().stats().http_requests_total() >= 8
        })
        .await
    );
    assert_eq!(proxy.server().stats().http_requests_total(), 8);
}
