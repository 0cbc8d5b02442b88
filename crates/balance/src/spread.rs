//! The spread of live sessions over five backends, per algorithm and key, as measured by the
//! simulations below, and the chart of it in `docs/balancing-spread.svg`.
//!
//! The test checks the figures and that the committed chart is what these simulations draw;
//! `SLUICE_WRITE_DOCS=1 cargo test -p sluice-balance spread_chart` redraws it. Everything is
//! seeded, so the chart only changes when the balancing does.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;

use crate::affinity::tests::{config, zipf_keys};
use crate::{Affinity, BackendGuard, Balance, Pool, random};

const BACKENDS: usize = 5;
const CHURN: &str = "churn, ~1,000 live";

/// One bar group of the chart.
struct Panel {
    title: &'static str,
    detail: &'static str,
    /// Live sessions per backend at the end.
    loads: Vec<usize>,
}

impl Panel {
    fn max_over_mean(&self) -> f64 {
        let total: usize = self.loads.iter().sum();
        let mean = total as f64 / self.loads.len() as f64;
        *self.loads.iter().max().unwrap_or(&0) as f64 / mean
    }

    fn shares(&self) -> Vec<f64> {
        let total: usize = self.loads.iter().sum::<usize>().max(1);
        self.loads
            .iter()
            .map(|&l| l as f64 / total as f64)
            .collect()
    }
}

fn pool(balance: Balance, factor: Option<f64>) -> Pool {
    Pool::from_config(&config(balance, &[1; BACKENDS], factor), |_| None)
}

fn loads(pool: &Pool) -> Vec<usize> {
    pool.backends().iter().map(|b| b.active()).collect()
}

/// Sessions arrive one per tick and last an exponential time (mean 1,000 ticks), so about 1,000
/// are live at any time, as WebSocket sessions come and go; the loads after 20,000 arrivals.
fn churn(balance: Balance, seed: u64) -> Vec<usize> {
    let pool = pool(balance, None);
    random::seed(seed);
    // Lifetimes from a generator of their own (splitmix64), so that every algorithm sees the
    // same sessions whatever it draws itself.
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut live: Vec<Option<BackendGuard>> = Vec::new();
    let mut ends: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    for tick in 0..20_000u64 {
        while let Some(Reverse((end, index))) = ends.peek().copied() {
            if end > tick {
                break;
            }
            ends.pop();
            if let Some(slot) = live.get_mut(index) {
                *slot = None;
            }
        }
        let u = ((next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let lifetime = (-u.ln() * 1_000.0) as u64;
        let guard = pool.picker().next_backend();
        ends.push(Reverse((tick + 1 + lifetime, live.len())));
        live.push(guard);
    }
    loads(&pool)
}

/// One session per key in `keys`, all held.
fn hashed(factor: Option<f64>, keys: &[Vec<u8>]) -> Vec<usize> {
    let pool = pool(Balance::Hash, factor);
    let held: Vec<BackendGuard> = keys
        .iter()
        .filter_map(|k| pool.picker_for(Affinity::key(k)).next_backend())
        .collect();
    let loads = loads(&pool);
    drop(held);
    loads
}

fn panels() -> Vec<Panel> {
    let users: Vec<Vec<u8>> = (0..1_000)
        .map(|i| format!("session-{i}").into_bytes())
        .collect();
    // 1,000 sessions from one address behind a NAT: one key, 1,000 times.
    let nat: Vec<Vec<u8>> = vec![vec![198, 51, 100, 7]; 1_000];
    let zipf: Vec<Vec<u8>> = zipf_keys(10_000, 1_000, 1.1, 11)
        .into_iter()
        .map(|k| format!("session-{k}").into_bytes())
        .collect();
    vec![
        Panel {
            title: "round_robin",
            detail: CHURN,
            loads: churn(Balance::RoundRobin, 5),
        },
        Panel {
            title: "least_conn",
            detail: CHURN,
            loads: churn(Balance::LeastConn, 5),
        },
        Panel {
            title: "random_two",
            detail: CHURN,
            loads: churn(Balance::RandomTwo, 5),
        },
        Panel {
            title: "hash cookie",
            detail: "1,000 users",
            loads: hashed(Some(1.5), &users),
        },
        Panel {
            title: "hash source_ip",
            detail: "one NAT, factor 0",
            loads: hashed(None, &nat),
        },
        Panel {
            title: "hash source_ip",
            detail: "one NAT, factor 1.5",
            loads: hashed(Some(1.5), &nat),
        },
        Panel {
            title: "hash, Zipf keys",
            detail: "factor 0",
            loads: hashed(None, &zipf),
        },
        Panel {
            title: "hash, Zipf keys",
            detail: "factor 1.25",
            loads: hashed(Some(1.25), &zipf),
        },
    ]
}

const COLOURS: [&str; BACKENDS] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2"];

/// A grouped bar chart: one group per panel, one bar per backend, the share of live sessions
/// on a 0–100 % axis with the fair share (20 %) dashed.
fn svg(panels: &[Panel]) -> String {
    let (left, top, plot_h, group_w, bar_w) = (56.0, 64.0, 240.0, 112.0, 16.0);
    let width = left + group_w * panels.len() as f64 + 16.0;
    let height = top + plot_h + 64.0;
    let y = |share: f64| top + plot_h * (1.0 - share);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r##"<rect width="{width}" height="{height}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="22" font-size="14" font-weight="bold">Share of live sessions per backend (5 backends; dashed: the fair 20 %)</text>"#
    );
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="40" fill="#555">Generated by crates/balance/src/spread.rs from the test simulations; above each group: max / mean.</text>"##
    );
    for (i, colour) in COLOURS.iter().enumerate() {
        let x = width - 16.0 - (BACKENDS - i) as f64 * 52.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="48" width="10" height="10" fill="{colour}"/><text x="{}" y="57">b{}</text>"#,
            x + 14.0,
            i + 1
        );
    }
    for tick in 0..=5 {
        let share = f64::from(tick) * 0.2;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#dddddd"/><text x="{}" y="{:.1}" text-anchor="end">{}%</text>"##,
            width - 16.0,
            left - 6.0,
            y(share) + 4.0,
            tick * 20,
            y = y(share),
        );
    }
    for (g, panel) in panels.iter().enumerate() {
        let x0 = left + group_w * g as f64 + (group_w - bar_w * BACKENDS as f64) / 2.0;
        let shares = panel.shares();
        for (b, share) in shares.iter().enumerate() {
            let x = x0 + bar_w * b as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="{:.1}" width="{}" height="{:.1}" fill="{}"><title>{} {}: b{} {:.1} %</title></rect>"#,
                y(*share),
                bar_w - 2.0,
                plot_h * share,
                COLOURS.get(b).copied().unwrap_or("#999999"),
                panel.title,
                panel.detail,
                b + 1,
                share * 100.0
            );
        }
        let centre = left + group_w * g as f64 + group_w / 2.0;
        let peak = shares.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            s,
            r#"<text x="{centre}" y="{:.1}" text-anchor="middle">{:.2}</text>"#,
            y(peak) - 5.0,
            panel.max_over_mean()
        );
        let _ = writeln!(
            s,
            r##"<text x="{centre}" y="{}" text-anchor="middle" font-weight="bold">{}</text><text x="{centre}" y="{}" text-anchor="middle" fill="#555">{}</text>"##,
            top + plot_h + 18.0,
            panel.title,
            top + plot_h + 34.0,
            panel.detail
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#333333" stroke-dasharray="5,4"/>"##,
        width - 16.0,
        y = y(1.0 / BACKENDS as f64),
    );
    s.push_str("</svg>\n");
    s
}

#[test]
fn spread_chart() {
    let panels = panels();
    for p in &panels {
        println!(
            "{:<16} {:<20} loads {:?}  max/mean {:.3}",
            p.title,
            p.detail,
            p.loads,
            p.max_over_mean()
        );
    }
    let by = |title: &str, detail: &str| {
        panels
            .iter()
            .find(|p| p.title == title && p.detail == detail)
            .map(Panel::max_over_mean)
            .unwrap_or(f64::NAN)
    };
    // least_conn and random_two hold the line under churn; round robin drifts.
    assert!(by("least_conn", CHURN) <= 1.02);
    assert!(by("random_two", CHURN) <= 1.05);
    assert!(by("round_robin", CHURN) > by("least_conn", CHURN));
    // The NAT trap: one address, one backend.
    assert_eq!(by("hash source_ip", "one NAT, factor 0"), BACKENDS as f64);
    // Bounded loads cap it (losing stickiness for the overflow), and cap Zipf skew.
    assert!(by("hash source_ip", "one NAT, factor 1.5") <= 1.5);
    assert!(by("hash, Zipf keys", "factor 0") > 1.5);
    assert!(by("hash, Zipf keys", "factor 1.25") <= 1.25);
    assert!(by("hash cookie", "1,000 users") <= 1.2);

    let chart = svg(&panels);
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/balancing-spread.svg");
    if std::env::var_os("SLUICE_WRITE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &chart).expect("write docs/balancing-spread.svg");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == chart,
        "docs/balancing-spread.svg is not what the simulations draw; redraw it with \
         SLUICE_WRITE_DOCS=1 cargo test -p sluice-balance spread_chart"
    );
}
