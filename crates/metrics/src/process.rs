//! Process metrics as Prometheus client libraries export them (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`), read from `/proc/self` at each scrape and written straight
//! into the exposition: the CPU counter is fractional, which the `metrics` facade's integer
//! counters cannot carry.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{ALL, Kind, names};

static START_TIME: OnceLock<f64> = OnceLock::new();

/// Appends the process metrics, with their HELP and TYPE lines, to an exposition. A figure that
/// cannot be read is left out.
pub fn render(out: &mut String) {
    let stat = stat();
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map(|n| n as f64);
    let values = [
        (names::PROCESS_CPU, stat.map(|(cpu, _)| cpu)),
        (names::PROCESS_RSS, stat.map(|(_, rss)| rss)),
        (names::PROCESS_OPEN_FDS, open_fds),
        (names::PROCESS_MAX_FDS, max_fds),
        (names::PROCESS_START_TIME, Some(start_time())),
    ];
    for (name, value) in values {
        let (Some(value), Some(metric)) = (value, ALL.iter().find(|m| m.name == name)) else {
            continue;
        };
        let kind = match metric.kind {
            Kind::Counter => "counter",
            Kind::Gauge | Kind::Histogram => "gauge",
        };
        let _ = write!(
            out,
            "# HELP {name} {}\n# TYPE {name} {kind}\n{name} {value}\n\n",
            metric.help
        );
    }
}

/// When the process started, in Unix seconds (computed once).
fn start_time() -> f64 {
    *START_TIME.get_or_init(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let running_for = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| field(&s, 22))
            .zip(std::fs::read_to_string("/proc/uptime").ok())
            .and_then(|(start_ticks, uptime)| {
                let since_boot: f64 = uptime.split_whitespace().next()?.parse().ok()?;
                Some(since_boot - start_ticks / TICKS_PER_SECOND)
            })
            .unwrap_or(0.0);
        now - running_for
    })
}

/// Clock ticks per second of `/proc` times (`USER_HZ`, 100 on every Linux architecture).
const TICKS_PER_SECOND: f64 = 100.0;

/// (CPU seconds user+system, resident bytes) from `/proc/self/stat`.
fn stat() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let cpu = (field(&stat, 14)? + field(&stat, 15)?) / TICKS_PER_SECOND;
    let rss_pages = field(&stat, 24)?;
    Some((cpu, rss_pages * rustix::param::page_size() as f64))
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/PID/stat` line, parsed as a number. The
/// command name (field 2) may hold spaces and parentheses: fields are counted from after its
/// closing parenthesis.
fn field(stat: &str, n: usize) -> Option<f64> {
    let after = stat.rsplit_once(')')?.1;
    after
        .split_whitespace()
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_after_the_command_name() {
        let line = "42 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 11 12 13";
        assert_eq!(field(line, 3), None, "field 3 is the state, not a number");
        assert_eq!(field(line, 4), Some(1.0));
        assert_eq!(field(line, 14), Some(11.0));
    }

    #[test]
    fn this_process_has_cpu_memory_and_descriptors() {
        let (cpu, rss) = stat().expect("/proc/self/stat readable");
        assert!(cpu >= 0.0);
        assert!(rss > 1024.0 * 1024.0, "a test binary holds more than 1 MiB");
        let mut out = String::new();
        render(&mut out);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                out.contains(&format!("\n{name} ")),
                "{name} missing:\n{out}"
            );
        }
        assert!(out.contains("# TYPE process_cpu_seconds_total counter"));
        assert!(start_time() > 1.6e9, "started after 2020");
    }
}
