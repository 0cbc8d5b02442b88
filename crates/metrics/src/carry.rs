//! Counters carried across a binary upgrade, so that a scraper sees them go on rather than
//! reset.
//!
//! The old process reads its counters from its own exposition ([`Exporter::counters`]) and
//! sends them with the handoff; the new one adds them to its own ([`carry`]). What the old
//! process counts after that (the end of its drain) is not carried: its admin listener, and
//! with it every scrape, moved to the new process already. Gauges are not carried (each
//! process measures its own state), nor histograms (a distribution cannot be added to through
//! the recorder's interface; their `_count` resets like any restarted counter), nor process
//! metrics (`process_cpu_seconds_total` is this process's CPU).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{ALL, Exporter, Kind, names};

/// One counter series and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterSample {
    /// The metric's name.
    pub name: String,
    /// Its labels, in exposition order.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: u64,
}

/// What was carried into the relay's totals, which are set from the relay's own atomics
/// (`absolute`) and so cannot simply be incremented: splice bytes, copy bytes, fallbacks.
pub(crate) static RELAY_BASE: [AtomicU64; 3] =
    [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

impl Exporter {
    /// Every counter series of the catalogue with its value now (those of this process's
    /// recorder: process metrics are not among them).
    pub fn counters(&self) -> Vec<CounterSample> {
        parse_counters(&self.handle.render())
    }
}

/// Adds counters of a predecessor to this process's. Series of metrics this build does not
/// have as counters are skipped.
pub fn carry(samples: &[CounterSample]) {
    for sample in samples {
        let known = ALL
            .iter()
            .any(|m| m.name == sample.name && m.kind == Kind::Counter);
        if !known || sample.value == 0 {
            continue;
        }
        let label = |name: &str| {
            sample
                .labels
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let base = match (sample.name.as_str(), label("mode")) {
            (names::RELAY_BYTES, Some("splice")) => Some(&RELAY_BASE[0]),
            (names::RELAY_BYTES, Some("copy")) => Some(&RELAY_BASE[1]),
            (names::RELAY_COPY_FALLBACKS, _) => Some(&RELAY_BASE[2]),
            _ => None,
        };
        match base {
            Some(base) => {
                base.fetch_add(sample.value, Ordering::Relaxed);
            }
            None => {
                let labels: Vec<metrics::Label> = sample
                    .labels
                    .iter()
                    .map(|(k, v)| metrics::Label::new(k.clone(), v.clone()))
                    .collect();
                metrics::counter!(sample.name.clone(), labels).increment(sample.value);
            }
        }
    }
}

/// The counter series of a text exposition (families declared `# TYPE name counter`).
pub(crate) fn parse_counters(text: &str) -> Vec<CounterSample> {
    let mut counters: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut parts = declared.split_whitespace();
            if let (Some(name), Some("counter")) = (parts.next(), parts.next()) {
                counters.push(name);
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').and_then(parse_labels)),
            None => (series, Some(Vec::new())),
        };
        if !counters.contains(&name) {
            continue;
        }
        // Counters render as integers; a float form is accepted and truncated.
        let value = value
            .parse::<u64>()
            .ok()
            .or_else(|| value.parse::<f64>().ok().map(|v| v as u64));
        if let (Some(labels), Some(value)) = (labels, value) {
            out.push(CounterSample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
    }
    out
}

/// `a="x",b="y\"z"` → pairs, unescaping `\\`, `\"` and `\n`; `None` if malformed.
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key.trim_start_matches(',').to_owned(), value));
        rest = after.get(end + 1..)?.trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_an_exposition_and_nothing_else() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\n\
                    a_total{listener=\"public\",reason=\"x\\\"y\\\\z\"} 12\n\
                    a_total 3\n\
                    # TYPE g gauge\ng{x=\"1\"} 5\n\
                    # TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_count 2\n\
                    # TYPE b_total counter\nb_total{mode=\"splice\"} 1e3\n";
        let got = parse_counters(text);
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            got,
            vec![
                CounterSample {
                    name: "a_total".into(),
                    labels: pairs(&[("listener", "public"), ("reason", "x\"y\\z")]),
                    value: 12,
                },
                CounterSample {
                    name: "a_total".into(),
                    labels: Vec::new(),
                    value: 3,
                },
                CounterSample {
                    name: "b_total".into(),
                    labels: pairs(&[("mode", "splice")]),
                    value: 1000,
                },
            ]
        );
    }

    #[test]
    fn malformed_labels_are_skipped() {
        assert_eq!(
            parse_labels("a=\"1\",b=\"2\""),
            Some(vec![("a".into(), "1".into()), ("b".into(), "2".into())])
        );
        assert_eq!(parse_labels("a=\"unterminated"), None);
        assert_eq!(parse_labels("noequals"), None);
        let text = "# TYPE a_total counter\na_total{a=\"x} 1\n";
        assert!(parse_counters(text).is_empty());
    }
}
