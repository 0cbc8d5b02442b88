//! The admin listener: exact metric deltas across a scripted run, the exposition parses, the
//! probes, the token, `/status.json`, the Grafana dashboard's queries, and the status page in
//! a real headless browser.
//!
//! The metrics recorder is process-wide and shared by every test of this binary: each test here
//! uses listener and pool names of its own, so the series it asserts are its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sluice_e2e::{Proxy, backend_list};
use sluice_testkit::{
    EchoBackend, Message, raw_exchange, wait_until_async, ws_connect, ws_roundtrip,
};

use crate::SOON;

fn config(listener: &str, pool: &str, backends: &[SocketAddr], admin: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{admin}\n\n[[listeners]]\nname = \"{listener}\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nlistener = \"{listener}\"\npool = \"{pool}\"\n\n[pools.{pool}]\nbackends = [{}]\n",
        backend_list(backends)
    )
}

/// GET `path` on the admin listener: (status, body).
async fn get(admin: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{auth}\r\n");
    let response = raw_exchange(admin, request.as_bytes(), SOON).await.unwrap();
    (
        response.status.unwrap_or(0),
        String::from_utf8_lossy(response.body()).into_owned(),
    )
}

/// Every sample of an exposition, by name and label set.
fn samples(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("the exposition does not parse: {e}\n{text}"));
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (s.metric, labels, value)
        })
        .collect()
}

fn value(
    samples: &[(String, HashMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_exactly_as_a_scripted_run_goes() {
    let backend = EchoBackend::spawn().await;
    let toml = config("scripted", "scripted_pool", &[backend.addr()], "");
    let proxy = Proxy::start(&toml).await;
    let admin = proxy.admin_addr().await;
    let (status, before) = get(admin, "/metrics", None).await;
    assert_eq!(status, 200);
    let before = samples(&before);
    let pool = [("pool", "scripted_pool")];
    let listener = [("listener", "scripted")];

    // Two tunnels: 1 MiB each way through the first, closed by the client; the second closed
    // by the backend. One rejected request, one reload.
    let (mut a, _) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    let mib = vec![7u8; 1 << 20];
    assert!(
        ws_roundtrip(&mut a, Message::binary(mib.clone()))
            .await
            .unwrap()
            == Message::binary(mib)
    );
    // The client closes TCP (no WebSocket close handshake, where the server would close
    // first, RFC 6455 §7.1.1): `closed_by` names the side that ended the TCP stream first.
    drop(a);
    let (mut b, _) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    b.send(Message::text("x")).await.unwrap();
    b.next().await.unwrap().unwrap();
    backend.close_all().await;
    while let Some(Ok(_)) = b.next().await {}
    drop(b);
    let bad = raw_exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", SOON).await.unwrap();
    assert_eq!(bad.status, Some(400));
    let plain = raw_exchange(
        proxy.addr(),
        b"GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        SOON,
    )
    .await
    .unwrap();
    assert_eq!(plain.status, Some(200));
    proxy.reload(&toml).await.unwrap();

    assert!(
        wait_until_async(SOON, || async {
            proxy.server().stats().tunnels_active() == 0
        })
        .await
    );
    let (_, after) = get(admin, "/metrics", None).await;
    let after = samples(&after);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };

    assert_eq!(delta("sluice_connections_accepted_total", &listener), 4.0);
    assert_eq!(
        delta(
            "sluice_handshakes_total",
            &[listener[0], ("outcome", "upgraded"), ("status", "101")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "sluice_handshakes_total",
            &[listener[0], ("outcome", "rejected"), ("status", "400")]
        ),
        1.0
    );
    assert_eq!(
        delta("sluice_handshake_duration_seconds", &listener),
        2.0,
        "one observation per upgrade"
    );
    assert_eq!(
        delta(
            "sluice_tunnels_closed_total",
            &[pool[0], ("closed_by", "client")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "sluice_tunnels_closed_total",
            &[pool[0], ("closed_by", "backend")]
        ),
        1.0
    );
    assert_eq!(delta("sluice_tunnel_duration_seconds", &pool), 2.0);
    assert_eq!(value(&after, "sluice_tunnels_active", &pool), 0.0);
    assert_eq!(
        delta("sluice_http_requests_total", &[pool[0], ("class", "2xx")]),
        1.0
    );
    assert_eq!(delta("sluice_http_request_duration_seconds", &pool), 1.0);
    let up = delta(
        "sluice_tunnel_bytes_total",
        &[pool[0], ("direction", "client_to_backend")],
    );
    let down = delta(
        "sluice_tunnel_bytes_total",
        &[pool[0], ("direction", "backend_to_client")],
    );
    assert!(
        up >= (1 << 20) as f64 && up < (1 << 20) as f64 + 4096.0,
        "client_to_backend {up}"
    );
    assert!(
        down >= (1 << 20) as f64 && down < (1 << 20) as f64 + 4096.0,
        "backend_to_client {down}"
    );
    assert_eq!(delta("sluice_backend_connect_duration_seconds", &pool), 2.0);
    assert_eq!(value(&after, "sluice_backend_up", &pool), 1.0);
    // Process-wide (other tests of this binary set it too): present, at least 1.
    assert!(value(&after, "sluice_config_generation", &[]) >= 1.0);
    assert!(delta("sluice_config_reloads_total", &[("result", "success")]) >= 1.0);
    assert!(value(&after, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(value(&after, "process_open_fds", &[]) > 0.0);
}

#[tokio::test]
async fn bytes_are_counted_while_a_tunnel_lives() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&config("live_bytes", "live_pool", &[backend.addr()], "")).await;
    let admin = proxy.admin_addr().await;
    let (mut ws, _) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    let chunk = vec![1u8; 256 * 1024];
    ws_roundtrip(&mut ws, Message::binary(chunk)).await.unwrap();
    // The tunnel is still open: its bytes show within a publishing interval.
    let counted = wait_until_async(Duration::from_secs(10), || async {
        let (_, text) = get(admin, "/metrics", None).await;
        value(
            &samples(&text),
            "sluice_tunnel_bytes_total",
            &[("pool", "live_pool"), ("direction", "client_to_backend")],
        ) >= 256.0 * 1024.0
    })
    .await;
    assert!(counted, "bytes of a live tunnel never appeared");
}

#[tokio::test]
async fn probes_token_and_status_json() {
    let backend = EchoBackend::spawn().await;
    let token = "s3cret-token-0123456789";
    let proxy = Proxy::start(&config(
        "probes",
        "probes_pool",
        &[backend.addr()],
        &format!("token = \"{token}\""),
    ))
    .await;
    let admin = proxy.admin_addr().await;
    assert_eq!(get(admin, "/healthz", None).await.0, 200);
    assert_eq!(get(admin, "/readyz", None).await.0, 200);
    assert_eq!(get(admin, "/metrics", None).await.0, 401);
    assert_eq!(
        get(admin, "/metrics", Some("wrong-token-0123456789"))
            .await
            .0,
        401
    );
    assert_eq!(get(admin, "/status.json", None).await.0, 401);
    assert_eq!(get(admin, "/metrics", Some(token)).await.0, 200);
    assert_eq!(get(admin, "/nope", Some(token)).await.0, 404);
    let (status, page) = get(admin, "/", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>sluice status</title>"));

    let (_ws, _) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    let (status, body) = get(admin, "/status.json", Some(token)).await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["ready"], true);
    assert_eq!(doc["listeners"][0]["name"], "probes");
    assert_eq!(doc["listeners"][0]["addr"], proxy.addr().to_string());
    assert_eq!(doc["pools"][0]["name"], "probes_pool");
    assert_eq!(
        doc["pools"][0]["backends"][0]["addr"],
        backend.addr().to_string()
    );
    assert_eq!(doc["pools"][0]["backends"][0]["live"], 1);
    assert_eq!(doc["tunnels"]["active"], 1);

    // Readiness fails at once when shutdown starts, while the admin listener still answers.
    let server = proxy.server().clone();
    let stopping = tokio::spawn(proxy.shutdown(SOON));
    assert!(
        wait_until_async(SOON, || async {
            get(admin, "/readyz", None).await.0 == 503
        })
        .await
    );
    assert!(!server.is_ready());
    drop(_ws);
    stopping.await.unwrap();
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_exists() {
    let dashboard =
        std::fs::read_to_string(sluice_e2e::workspace_root().join("deploy/grafana/sluice.json"))
            .unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is valid JSON");
    let mut queried = Vec::new();
    for panel in doc["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(start) = rest.find(|c: char| c.is_ascii_lowercase()) {
                let word: String = rest[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[start + word.len().max(1)..];
                if word.starts_with("sluice_") || word.starts_with("process_") {
                    queried.push(word);
                }
            }
        }
    }
    assert!(
        queried.len() >= 20,
        "the dashboard queries {} series",
        queried.len()
    );
    let known: Vec<&str> = sluice_metrics::ALL.iter().map(|m| m.name).collect();
    for name in &queried {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(
            known.contains(&base),
            "the dashboard queries {name}, which sluice does not export"
        );
    }
    // And the alert rules.
    let alerts = std::fs::read_to_string(
        sluice_e2e::workspace_root().join("deploy/prometheus/sluice-alerts.yml"),
    )
    .unwrap();
    for word in alerts.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("sluice_") || word.starts_with("process_") {
            assert!(
                known.contains(&word),
                "an alert uses {word}, which sluice does not export"
            );
        }
    }
}

/// The status page in a real headless browser (Debian's chromium, installed by `.ci/run`): its
/// script runs, fetches `/status.json` and shows the same figures; a screenshot is kept as an
/// artifact under `target/test-artifacts/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_the_live_figures_in_a_browser() {
    let Some(chromium) = [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists()) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium (see .ci/run)"
        );
        eprintln!("SKIPPED: no chromium on this machine (apt-get install chromium)");
        return;
    };
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&config("browser", "browser_pool", &[backend.addr()], "")).await;
    let admin = proxy.admin_addr().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(ws_connect(proxy.addr(), "/", &[]).await.unwrap().0);
    }
    let url = format!("http://{admin}/");
    let artifacts = sluice_e2e::workspace_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let profile = std::env::temp_dir().join(format!("sluice-chromium-{}", std::process::id()));
    let args = |extra: &[String]| {
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--window-size=1280,900",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend_from_slice(extra);
        args.push(url.clone());
        args
    };
    let run = |extra: Vec<String>| {
        let chromium = chromium.to_owned();
        let args = args(&extra);
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(chromium)
                .args(args)
                .output()
                .unwrap()
        })
    };
    let dom = run(vec!["--dump-dom".into()]).await.unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    let shot = artifacts.join("status-page.png");
    let screenshot = run(vec![format!("--screenshot={}", shot.display())])
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page's script never loaded status.json:\n{dom}"
    );
    let figure = |id: &str| {
        let start = dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no #{id}"));
        let text = &dom[start..];
        text[text.find('>').unwrap() + 1..text.find('<').unwrap()].to_owned()
    };
    let (_, json) = get(admin, "/status.json", None).await;
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(figure("tunnels"), doc["tunnels"]["active"].to_string());
    assert_eq!(figure("tunnels"), "3");
    assert_eq!(figure("generation"), format!("gen {}", doc["generation"]));
    assert!(
        dom.contains(&backend.addr().to_string()),
        "the backend row is missing"
    );
    assert!(dom.contains("browser_pool (round_robin)"));
    assert!(
        screenshot.status.success() && shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&screenshot.stderr)
    );
    drop(held);
}
