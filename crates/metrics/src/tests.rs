use super::*;

#[test]
fn every_name_follows_the_prometheus_conventions() {
    let mut seen = std::collections::HashSet::new();
    for m in ALL {
        assert!(seen.insert(m.name), "{} is declared twice", m.name);
        assert!(
            m.name.starts_with("sluice_") || m.name.starts_with("process_"),
            "{}",
            m.name
        );
        assert_eq!(
            m.kind == Kind::Counter,
            m.name.ends_with("_total"),
            "{}: counters and only counters end in _total",
            m.name
        );
        match m.unit {
            Some(Unit::Seconds) => assert!(m.name.contains("_seconds"), "{}", m.name),
            Some(Unit::Bytes) => assert!(m.name.contains("_bytes"), "{}", m.name),
            _ => {}
        }
        assert_eq!(
            m.kind == Kind::Histogram,
            m.buckets.is_some(),
            "{}: buckets for histograms only",
            m.name
        );
        if let Some(buckets) = m.buckets {
            assert!(
                buckets.windows(2).all(|w| w[0] < w[1]),
                "{}: buckets must increase",
                m.name
            );
        }
        assert!(
            m.help.ends_with('.') && m.help.len() > 20,
            "{}: write a real help text",
            m.name
        );
        for label in m.labels {
            assert!(
                label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{}: label {label}",
                m.name
            );
        }
    }
}

#[test]
fn tunnel_durations_are_bucketed_up_to_hours() {
    let m = ALL
        .iter()
        .find(|m| m.name == names::TUNNEL_DURATION)
        .unwrap();
    assert!(m.buckets.unwrap().last().copied().unwrap() >= 8.0 * 3600.0);
}

#[test]
fn status_labels_come_from_a_fixed_set() {
    assert_eq!(status_label(None), "none");
    assert_eq!(status_label(Some(431)), "431");
    assert_eq!(
        status_label(Some(418)),
        "4xx",
        "unlisted statuses fold into their class"
    );
    assert_eq!(status_label(Some(999)), "5xx");
    assert_eq!(status_class(101), "1xx");
    assert_eq!(status_class(304), "3xx");
}

/// The one test that installs the process-wide recorder (tests in this binary share it).
#[test]
fn recorded_figures_render_as_a_valid_exposition() {
    let exporter = Exporter::install().unwrap();
    assert!(
        Exporter::install().is_ok(),
        "installing twice returns the same exporter"
    );

    let listener = ListenerMetrics::new("public");
    listener.accepted.increment(3);
    listener.active.set(2.0);
    listener.upgraded.increment(2);
    listener.handshake("rejected", Some(400));
    listener.handshake("abandoned", None);
    listener.handshake_duration.record(0.003);
    let pool = PoolMetrics::new("chat");
    pool.tunnel_closed("client");
    pool.tunnel_closed("client");
    pool.tunnel_closed("backend");
    pool.tunnel_closed("idle_timeout");
    // The handles of a later generation (a reload) count into the same series.
    PoolMetrics::new("chat").tunnel_closed("client");
    pool.tunnel_duration.record(7200.0);
    pool.http_request(204);
    let backend = BackendMetrics::new("chat", "10.0.0.1:9000");
    backend.client_to_backend.increment(1000);
    backend.backend_to_client.increment(5);
    backend.up.set(1.0);
    backend.connect_failed("connect_refused");
    global::relay(10, 20, 1, 3, 4);
    global::config_loaded(2, 1_700_000_000);
    global::reload("success");
    global::ready(true);

    let text = exporter.render();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let scrape =
        prometheus_parse::Scrape::parse(lines.into_iter().map(Ok)).expect("the exposition parses");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name} {labels:?} not found in:\n{text}"))
    };
    assert_eq!(
        value(
            "sluice_connections_accepted_total",
            &[("listener", "public")]
        ),
        3.0
    );
    assert_eq!(
        value("sluice_connections_active", &[("listener", "public")]),
        2.0
    );
    assert_eq!(
        value(
            "sluice_handshakes_total",
            &[("outcome", "upgraded"), ("status", "101")]
        ),
        2.0
    );
    assert_eq!(
        value(
            "sluice_handshakes_total",
            &[("outcome", "rejected"), ("status", "400")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "sluice_handshakes_total",
            &[("outcome", "abandoned"), ("status", "none")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "sluice_tunnels_closed_total",
            &[("pool", "chat"), ("closed_by", "client")]
        ),
        3.0
    );
    for closed_by in ["backend", "idle_timeout"] {
        assert_eq!(
            value(
                "sluice_tunnels_closed_total",
                &[("pool", "chat"), ("closed_by", closed_by)]
            ),
            1.0
        );
    }
    assert_eq!(
        value("sluice_http_requests_total", &[("class", "2xx")]),
        1.0
    );
    assert_eq!(
        value(
            "sluice_tunnel_bytes_total",
            &[("direction", "client_to_backend")]
        ),
        1000.0
    );
    assert_eq!(
        value(
            "sluice_backend_connect_failures_total",
            &[("reason", "connect_refused")]
        ),
        1.0
    );
    assert_eq!(
        value("sluice_relay_bytes_total", &[("mode", "splice")]),
        10.0
    );
    assert_eq!(value("sluice_pipes", &[("state", "idle")]), 4.0);
    assert_eq!(value("sluice_config_generation", &[]), 2.0);
    assert_eq!(value("sluice_ready", &[]), 1.0);
    assert!(value("process_resident_memory_bytes", &[]) > 0.0);
    // Histograms render with the declared buckets, not as summaries.
    assert!(
        text.contains("sluice_tunnel_duration_seconds_bucket{pool=\"chat\",le=\"14400\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("# HELP sluice_tunnel_bytes_total Bytes relayed by tunnels"),
        "{text}"
    );

    // Carried across a binary upgrade: counters add up, the relay's totals too (set from the
    // relay's own figures, they keep the carried part), gauges and unknown names are left.
    let before = exporter.counters();
    let accepted = |samples: &[CounterSample]| {
        samples
            .iter()
            .find(|c| c.name == "sluice_connections_accepted_total")
            .map(|c| c.value)
    };
    assert_eq!(accepted(&before), Some(3));
    let sample = |name: &str, labels: &[(&str, &str)], value| CounterSample {
        name: name.to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        value,
    };
    carry(&[
        sample(
            "sluice_connections_accepted_total",
            &[("listener", "public")],
            40,
        ),
        sample("sluice_relay_bytes_total", &[("mode", "splice")], 1000),
        sample("sluice_connections_active", &[("listener", "public")], 7),
        sample("sluice_gone_total", &[], 7),
    ]);
    global::relay(10, 20, 1, 3, 4);
    let after = exporter.counters();
    assert_eq!(accepted(&after), Some(43));
    let splice = after
        .iter()
        .find(|c| c.name == "sluice_relay_bytes_total" && c.labels[0].1 == "splice")
        .map(|c| c.value);
    assert_eq!(splice, Some(1010));
    assert!(!exporter.render().contains("sluice_gone_total"));
}

#[test]
fn docs_list_every_metric() {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .expect("docs/metrics.md");
    let mut missing = Vec::new();
    for m in ALL {
        // The row `| `name` | type | `label`, `label` | meaning |`, as the catalogue declares it.
        let kind = match m.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let labels: Vec<String> = m.labels.iter().map(|l| format!("`{l}`")).collect();
        let row = if labels.is_empty() {
            format!("| `{}` | {kind} | — |", m.name)
        } else {
            format!("| `{}` | {kind} | {} |", m.name, labels.join(", "))
        };
        if !docs.lines().any(|line| line.starts_with(&row)) {
            missing.push(row);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/metrics.md lacks rows starting:\n{}",
        missing.join("\n")
    );
}
