//! The keys of a pool that say how its backends' health is judged: `health_check` (active
//! checks), `outlier` (passive checks) and `slow_start`.
//!
//! Their rules span several keys (`expect_status` only with `kind = "http"`, `timeout` at most
//! `interval`, a fixed `jitter` at most half the interval, …), so they are read together here
//! and `file.rs` takes the result. As everywhere, every problem is reported and `None` means
//! "reported".

use std::time::Duration;

use crate::defaults;
use crate::model::{CheckKind, HealthCheck, Jitter, Outlier, StatusRange};
use crate::read::{Item, Keys, Reader, Table, checked};

const HEALTH_CHECK: Keys = Keys {
    known: &[
        "kind",
        "path",
        "host",
        "interval",
        "timeout",
        "rise",
        "fall",
        "jitter",
        "expect_status",
        "ping",
    ],
    later: &[],
};

const OUTLIER: Keys = Keys {
    known: &["consecutive_failures", "cool_down"],
    later: &[],
};

const KINDS: &str = "\"tcp\", \"http\" or \"websocket\"";

/// How a pool judges its backends' health.
pub(crate) struct Health {
    pub(crate) health_check: Option<HealthCheck>,
    pub(crate) outlier: Option<Outlier>,
    pub(crate) slow_start: Option<Duration>,
}

/// Reads the health keys of the pool table `t`.
pub(crate) fn health(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<Health> {
    let health_check = t.optional("health_check", None, |item| health_check(r, item).map(Some));
    let outlier = t.optional("outlier", None, |item| outlier(r, item).map(Some));
    // Zero turns slow start off.
    let slow_start = t.optional("slow_start", defaults::SLOW_START, |item| {
        item.duration(r).map(|d| Some(d).filter(|d| !d.is_zero()))
    });
    Some(Health {
        health_check: health_check?,
        outlier: outlier?,
        slow_start: slow_start?,
    })
}

/// The kind of check, before its own keys are read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Http,
    WebSocket,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Http => "http",
            Kind::WebSocket => "websocket",
        }
    }
}

/// `{ kind = "websocket", path = "/health", interval = "5s", timeout = "2s", rise = 2,
/// fall = 3, jitter = 0.1, ping = true }`.
fn health_check(r: &mut Reader<'_>, item: Item<'_, '_>) -> Option<HealthCheck> {
    let t = item.table(r, &HEALTH_CHECK)?;

    let kind = t
        .require(r, "kind", &format!("what a check does: {KINDS}"))
        .and_then(|item| {
            item.choice(
                r,
                &[
                    ("tcp", Kind::Tcp),
                    ("http", Kind::Http),
                    ("websocket", Kind::WebSocket),
                ],
                &[],
            )
        });

    let interval = t.optional("interval", defaults::HEALTH_CHECK_INTERVAL, |item| {
        let d = item.duration(r)?;
        if d < defaults::HEALTH_CHECK_INTERVAL_MIN {
            r.report(
                &item,
                format_args!(
                    "must be at least {}",
                    humantime::format_duration(defaults::HEALTH_CHECK_INTERVAL_MIN)
                ),
            );
            return None;
        }
        Some(d)
    });
    // Only compared against when known; an invalid interval is reported already.
    let limit = interval.unwrap_or(defaults::HEALTH_CHECK_INTERVAL);

    let timeout = t.optional(
        "timeout",
        defaults::HEALTH_CHECK_TIMEOUT.min(limit),
        |item| {
            let d = item.duration(r)?;
            if d.is_zero() {
                r.report(&item, "must be greater than zero");
                return None;
            }
            if d > limit {
                r.report(
                    &item,
                    format_args!(
                        "must not exceed the interval ({}): one check of a backend ends before \
                         the next starts",
                        humantime::format_duration(limit)
                    ),
                );
                return None;
            }
            Some(d)
        },
    );

    let rise = t.optional("rise", defaults::HEALTH_CHECK_RISE, |item| {
        item.int(r, defaults::HEALTH_CHECK_COUNT_RANGE)
    });
    let fall = t.optional("fall", defaults::HEALTH_CHECK_FALL, |item| {
        item.int(r, defaults::HEALTH_CHECK_COUNT_RANGE)
    });
    let jitter = t.optional("jitter", defaults::HEALTH_CHECK_JITTER, |item| {
        jitter(r, &item, limit)
    });

    // Keys of some kinds only: said so when given to another kind.
    let mut only = |key: &str, kinds: &[Kind]| {
        let item = t.get(key)?;
        match kind {
            Some(k) if !kinds.contains(&k) => {
                let names: Vec<String> = kinds
                    .iter()
                    .map(|k| format!("kind = \"{}\"", k.as_str()))
                    .collect();
                r.report(
                    &item,
                    format_args!(
                        "only used with {} (this check's kind is \"{}\"); remove {key}",
                        names.join(" or "),
                        k.as_str()
                    ),
                );
                None
            }
            _ => Some(item),
        }
    };
    let path_item = only("path", &[Kind::Http, Kind::WebSocket]);
    let host_item = only("host", &[Kind::Http, Kind::WebSocket]);
    let status_item = only("expect_status", &[Kind::Http]);
    let ping_item = only("ping", &[Kind::WebSocket]);
    let misplaced = [
        ("path", &path_item),
        ("host", &host_item),
        ("expect_status", &status_item),
        ("ping", &ping_item),
    ]
    .iter()
    .any(|(key, item)| item.is_none() && t.get(key).is_some());

    let path = match path_item {
        Some(item) => item.str(r).and_then(|text| checked(r, &item, path(text))),
        None => Some(defaults::HEALTH_CHECK_PATH.to_owned()),
    };
    let host = match host_item {
        Some(item) => item
            .str(r)
            .and_then(|text| checked(r, &item, host(text)))
            .map(Some),
        None => Some(None),
    };
    let expect_status = match status_item {
        Some(item) => status_range(r, &item),
        None => Some(defaults::HEALTH_CHECK_EXPECT_STATUS),
    };
    let ping = match ping_item {
        Some(item) => item.bool(r),
        None => Some(defaults::HEALTH_CHECK_PING),
    };
    if misplaced {
        return None;
    }

    let kind = match kind? {
        Kind::Tcp => CheckKind::Tcp,
        Kind::Http => CheckKind::Http {
            path: path?,
            host: host?,
            expect_status: expect_status?,
        },
        Kind::WebSocket => CheckKind::WebSocket {
            path: path?,
            host: host?,
            ping: ping?,
        },
    };
    Some(HealthCheck {
        kind,
        interval: interval?,
        timeout: timeout?,
        rise: rise?,
        fall: fall?,
        jitter: jitter?,
    })
}

/// `0.1` (a fraction of the interval, 0 to 0.5) or `"500ms"` (at most half the interval).
fn jitter(r: &mut Reader<'_>, item: &Item<'_, '_>, interval: Duration) -> Option<Jitter> {
    if item.value.get_ref().is_str() {
        let d = item.duration(r)?;
        if d > interval / 2 {
            r.report(
                item,
                format_args!(
                    "must not exceed half the interval ({}), or checks could come in bursts",
                    humantime::format_duration(interval / 2)
                ),
            );
            return None;
        }
        return Some(Jitter::Fixed(d));
    }
    let fraction = item.number(r)?;
    if !(0.0..=defaults::HEALTH_CHECK_JITTER_MAX).contains(&fraction) {
        r.report(
            item,
            format_args!(
                "{fraction} is out of range; expected a fraction of the interval from 0 to {} \
                 (0.1: ±10 %), or a duration such as \"500ms\"",
                defaults::HEALTH_CHECK_JITTER_MAX
            ),
        );
        return None;
    }
    Some(Jitter::Fraction(fraction))
}

/// `"200-399"`, `"204"` or `204`: statuses from 100 to 599.
fn status_range(r: &mut Reader<'_>, item: &Item<'_, '_>) -> Option<StatusRange> {
    if !item.value.get_ref().is_str() {
        let status = item.int(r, 100..=599u16)?;
        return Some(StatusRange {
            first: status,
            last: status,
        });
    }
    let text = item.str(r)?;
    checked(r, item, parse_status_range(text))
}

pub(crate) fn parse_status_range(text: &str) -> Result<StatusRange, String> {
    let expected = "expected a status such as \"200\" or a range such as \"200-399\", \
                    with statuses from 100 to 599";
    let status = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|s| (100..=599).contains(s))
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (status(a), status(b)),
        None => (status(text), status(text)),
    };
    match (first, last) {
        (Some(first), Some(last)) if first <= last => Ok(StatusRange { first, last }),
        (Some(first), Some(last)) => Err(format!(
            "invalid status range \"{text}\": {first} is above {last}; write the lower first"
        )),
        _ => Err(format!("invalid status range \"{text}\"; {expected}")),
    }
}

/// A request path: starts with `/`, visible ASCII (a query is allowed), no `#`.
fn path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!(
            "invalid path \"{text}\": it must start with '/', as in \"/health\""
        ));
    }
    match text.chars().find(|c| !c.is_ascii_graphic() || *c == '#') {
        Some(c) => Err(format!(
            "invalid path \"{text}\": the character {c:?} is not allowed (percent-encode it)"
        )),
        None => Ok(text.to_owned()),
    }
}

/// A `Host` header value: a name or address, with an optional port.
fn host(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("a host cannot be empty; leave host out to send the backend's address".into());
    }
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._:[]".contains(*c)))
    {
        Some(c) => Err(format!(
            "invalid host \"{text}\": the character {c:?} is not allowed; expected a name or \
             address with an optional port, such as \"chat.example.com\" or \"10.0.0.1:9000\""
        )),
        None => Ok(text.to_owned()),
    }
}

/// `{ consecutive_failures = 5, cool_down = "30s" }`.
fn outlier(r: &mut Reader<'_>, item: Item<'_, '_>) -> Option<Outlier> {
    let t = item.table(r, &OUTLIER)?;
    let consecutive_failures = t.optional(
        "consecutive_failures",
        defaults::OUTLIER_CONSECUTIVE_FAILURES,
        |item| item.int(r, defaults::OUTLIER_CONSECUTIVE_FAILURES_RANGE),
    );
    let cool_down = t.optional("cool_down", defaults::OUTLIER_COOL_DOWN, |item| {
        let d = item.duration(r)?;
        if d.is_zero() {
            r.report(
                &item,
                "must be greater than zero; leave outlier out to turn passive checks off",
            );
            return None;
        }
        Some(d)
    });
    Some(Outlier {
        consecutive_failures: consecutive_failures?,
        cool_down: cool_down?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::model::{CheckKind, HealthCheck, Jitter, Outlier, StatusRange};
    use crate::parse;

    use crate::test_support::{error, errors, example_uncommented, file, pool};

    fn check(fields: &str) -> HealthCheck {
        pool(&format!("health_check = {{ {fields} }}\n"))
            .health_check
            .expect("a health check")
    }

    #[test]
    fn absent_keys_mean_no_checks() {
        let p = pool("");
        assert_eq!(
            (p.health_check, p.outlier, p.slow_start),
            (None, None, None)
        );
        assert_eq!(pool("slow_start = \"0\"\n").slow_start, None);
    }

    #[test]
    fn every_key_parses() {
        let p = pool(
            "health_check = { kind = \"websocket\", path = \"/ws?probe=1\", host = \"chat.example.com\", \
             interval = \"1s\", timeout = \"500ms\", rise = 1, fall = 5, jitter = 0.25, ping = false }\n\
             outlier = { consecutive_failures = 3, cool_down = \"1m\" }\nslow_start = \"45s\"\n",
        );
        assert_eq!(
            p.health_check,
            Some(HealthCheck {
                kind: CheckKind::WebSocket {
                    path: "/ws?probe=1".into(),
                    host: Some("chat.example.com".into()),
                    ping: false,
                },
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                rise: 1,
                fall: 5,
                jitter: Jitter::Fraction(0.25),
            })
        );
        assert_eq!(
            p.outlier,
            Some(Outlier {
                consecutive_failures: 3,
                cool_down: Duration::from_secs(60),
            })
        );
        assert_eq!(p.slow_start, Some(Duration::from_secs(45)));
        let http = check(
            "kind = \"http\", path = \"/health\", expect_status = \"200-204\", jitter = \"250ms\"",
        );
        assert_eq!(
            http.kind,
            CheckKind::Http {
                path: "/health".into(),
                host: None,
                expect_status: StatusRange {
                    first: 200,
                    last: 204
                },
            }
        );
        assert_eq!(http.jitter, Jitter::Fixed(Duration::from_millis(250)));
        assert_eq!(
            check("kind = \"http\", expect_status = 204").kind,
            CheckKind::Http {
                path: "/".into(),
                host: None,
                expect_status: StatusRange {
                    first: 204,
                    last: 204
                },
            }
        );
    }

    #[test]
    fn defaults() {
        assert_eq!(
            check("kind = \"websocket\""),
            HealthCheck {
                kind: CheckKind::WebSocket {
                    path: "/".into(),
                    host: None,
                    ping: true,
                },
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                rise: 2,
                fall: 3,
                jitter: Jitter::Fraction(0.1),
            }
        );
        assert_eq!(check("kind = \"tcp\"").kind, CheckKind::Tcp);
        assert_eq!(
            check("kind = \"http\"").kind,
            CheckKind::Http {
                path: "/".into(),
                host: None,
                expect_status: StatusRange {
                    first: 200,
                    last: 399
                },
            }
        );
        // The default timeout never exceeds a short interval.
        assert_eq!(
            check("kind = \"tcp\", interval = \"100ms\"").timeout,
            Duration::from_millis(100)
        );
        assert_eq!(
            pool("outlier = {}\n").outlier,
            Some(Outlier {
                consecutive_failures: 5,
                cool_down: Duration::from_secs(30),
            })
        );
        // A table of its own works as well as an inline one.
        let text = file("").replace(
            "backends = [\"127.0.0.1:9001\"]\n",
            "backends = [\"127.0.0.1:9001\"]\n\n[pools.main.health_check]\nkind = \"tcp\"\nfall = 1\n",
        );
        let config = parse(&text, "t.toml").expect("valid");
        assert_eq!(
            config.pools[0].health_check.as_ref().map(|c| c.fall),
            Some(1)
        );
    }

    #[test]
    fn health_check_errors_point_at_their_keys() {
        let hc = |fields: &str| error(&format!("health_check = {{ {fields} }}\n"));
        assert_eq!(
            hc("interval = \"1s\""),
            "t.toml:10:16: pools.main.health_check.kind: required key is missing; expected what a check does: \"tcp\", \"http\" or \"websocket\""
        );
        assert_eq!(
            hc("kind = \"ws\""),
            "t.toml:10:25: pools.main.health_check.kind: unknown value \"ws\"; expected one of \"tcp\", \"http\", \"websocket\""
        );
        assert_eq!(
            hc("kind = \"tcp\", path = \"/x\""),
            "t.toml:10:39: pools.main.health_check.path: only used with kind = \"http\" or kind = \"websocket\" (this check's kind is \"tcp\"); remove path"
        );
        assert_eq!(
            hc("kind = \"websocket\", expect_status = \"200\""),
            "t.toml:10:54: pools.main.health_check.expect_status: only used with kind = \"http\" (this check's kind is \"websocket\"); remove expect_status"
        );
        assert_eq!(
            hc("kind = \"http\", ping = true"),
            "t.toml:10:40: pools.main.health_check.ping: only used with kind = \"websocket\" (this check's kind is \"http\"); remove ping"
        );
        assert_eq!(
            hc("kind = \"tcp\", interval = \"5ms\""),
            "t.toml:10:43: pools.main.health_check.interval: must be at least 10ms"
        );
        assert_eq!(
            hc("kind = \"tcp\", interval = \"1s\", timeout = \"2s\""),
            "t.toml:10:59: pools.main.health_check.timeout: must not exceed the interval (1s): one check of a backend ends before the next starts"
        );
        assert_eq!(
            hc("kind = \"tcp\", timeout = \"0s\""),
            "t.toml:10:42: pools.main.health_check.timeout: must be greater than zero"
        );
        assert_eq!(
            hc("kind = \"tcp\", rise = 0"),
            "t.toml:10:39: pools.main.health_check.rise: 0 is out of range; expected 1 to 100"
        );
        assert_eq!(
            hc("kind = \"tcp\", fall = 101"),
            "t.toml:10:39: pools.main.health_check.fall: 101 is out of range; expected 1 to 100"
        );
        assert_eq!(
            hc("kind = \"tcp\", jitter = 0.6"),
            "t.toml:10:41: pools.main.health_check.jitter: 0.6 is out of range; expected a fraction of the interval from 0 to 0.5 (0.1: ±10 %), or a duration such as \"500ms\""
        );
        assert_eq!(
            hc("kind = \"tcp\", jitter = \"3s\""),
            "t.toml:10:41: pools.main.health_check.jitter: must not exceed half the interval (2s 500ms), or checks could come in bursts"
        );
        assert_eq!(
            hc("kind = \"http\", expect_status = \"399-200\""),
            "t.toml:10:49: pools.main.health_check.expect_status: invalid status range \"399-200\": 399 is above 200; write the lower first"
        );
        assert_eq!(
            hc("kind = \"http\", expect_status = \"2xx\""),
            "t.toml:10:49: pools.main.health_check.expect_status: invalid status range \"2xx\"; expected a status such as \"200\" or a range such as \"200-399\", with statuses from 100 to 599"
        );
        assert_eq!(
            hc("kind = \"http\", expect_status = 700"),
            "t.toml:10:49: pools.main.health_check.expect_status: 700 is out of range; expected 100 to 599"
        );
        assert_eq!(
            hc("kind = \"http\", path = \"health\""),
            "t.toml:10:40: pools.main.health_check.path: invalid path \"health\": it must start with '/', as in \"/health\""
        );
        assert_eq!(
            hc("kind = \"http\", path = \"/a b\""),
            "t.toml:10:40: pools.main.health_check.path: invalid path \"/a b\": the character ' ' is not allowed (percent-encode it)"
        );
        assert!(hc("kind = \"http\", host = \"a/b\"").contains("invalid host \"a/b\""));
        assert_eq!(
            hc("kind = \"tcp\", port = 9000"),
            "t.toml:10:32: pools.main.health_check.port: unknown key; expected one of \"kind\", \"path\", \"host\", \"interval\", \"timeout\", \"rise\", \"fall\", \"jitter\", \"expect_status\", \"ping\""
        );
        // Every error at once.
        assert_eq!(
            errors("health_check = { kind = \"tcp\", rise = 0, fall = 0, ping = true }\n").len(),
            3
        );
    }

    #[test]
    fn outlier_and_slow_start_errors() {
        assert_eq!(
            error("outlier = { consecutive_failures = 0 }\n"),
            "t.toml:10:36: pools.main.outlier.consecutive_failures: 0 is out of range; expected 1 to 1000"
        );
        assert_eq!(
            error("outlier = { cool_down = \"0s\" }\n"),
            "t.toml:10:25: pools.main.outlier.cool_down: must be greater than zero; leave outlier out to turn passive checks off"
        );
        assert_eq!(
            error("outlier = { cooldown = \"1s\" }\n"),
            "t.toml:10:13: pools.main.outlier.cooldown: unknown key; did you mean \"cool_down\"?"
        );
        assert_eq!(
            error("slow_start = 30\n"),
            "t.toml:10:14: pools.main.slow_start: expected a duration string with a unit, found integer 30; write \"30s\" for seconds or \"30ms\" for milliseconds"
        );
    }

    #[test]
    fn status_ranges() {
        use super::parse_status_range;
        assert_eq!(
            parse_status_range("200-399"),
            Ok(StatusRange {
                first: 200,
                last: 399
            })
        );
        assert_eq!(
            parse_status_range(" 204 "),
            Ok(StatusRange {
                first: 204,
                last: 204
            })
        );
        assert!(parse_status_range("99").is_err());
        assert!(parse_status_range("200-600").is_err());
        assert!(parse_status_range("-").is_err());
        let range = StatusRange {
            first: 200,
            last: 399,
        };
        assert!(range.contains(200) && range.contains(399) && !range.contains(400));
        assert_eq!(range.to_string(), "200-399");
        assert_eq!(
            StatusRange {
                first: 204,
                last: 204
            }
            .to_string(),
            "204"
        );
    }

    /// `config/sluice.toml` shows the health and tunnel keys commented out; uncommented, they
    /// must parse into what their comments say (the defaults, for the check's keys).
    #[test]
    fn the_example_files_commented_health_keys_parse() {
        let keys = [
            "# health_check = ",
            "# outlier = ",
            "# slow_start = ",
            "# tcp_keepalive = ",
            "# tcp_user_timeout = ",
        ];
        let config = example_uncommented(&keys, &[]);
        let echo = config.pool("echo").expect("pool echo");
        assert_eq!(
            echo.health_check,
            Some(HealthCheck {
                kind: CheckKind::WebSocket {
                    path: "/".into(),
                    host: None,
                    ping: true,
                },
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                rise: 2,
                fall: 3,
                jitter: Jitter::Fraction(0.1),
            })
        );
        assert_eq!(
            echo.outlier,
            Some(Outlier {
                consecutive_failures: 5,
                cool_down: Duration::from_secs(30),
            })
        );
        assert_eq!(echo.slow_start, Some(Duration::from_secs(30)));
        assert_eq!(
            config.relay.tcp_keepalive,
            Some(crate::model::TcpKeepalive {
                idle: Duration::from_secs(60),
                interval: Duration::from_secs(10),
                count: 3,
            })
        );
        assert_eq!(config.relay.tcp_user_timeout, Some(Duration::from_secs(30)));
        assert_eq!(config.timeouts.half_closed, None);
    }

    #[test]
    fn summary_shows_checks_outliers_slow_start_and_tunnel_options() {
        let text = file(
            "health_check = { kind = \"websocket\" }\noutlier = {}\nslow_start = \"30s\"\n",
        ) + "\n[timeouts]\nhalf_closed = \"2m\"\n\n[relay]\ntcp_keepalive = {}\ntcp_user_timeout = \"30s\"\n";
        let summary = parse(&text, "t.toml").expect("valid").summary();
        for line in [
            "  main  round_robin  1 backend  connect_attempts 3  health_check websocket every 5s (rise 2, fall 3)  outlier 5 failures, cool_down 30s  slow_start 30s\n",
            "shutdown 30s (spread 5s), half_closed 2m\n",
            "buffer_size 16384, tcp_keepalive 1m/10s/3, tcp_user_timeout 30s",
        ] {
            assert!(summary.contains(line), "{line:?} not in:\n{summary}");
        }
    }

    #[test]
    fn jitter_spreads() {
        let interval = Duration::from_secs(10);
        assert_eq!(
            Jitter::Fraction(0.1).spread(interval),
            Duration::from_secs(1)
        );
        assert_eq!(
            Jitter::Fixed(Duration::from_millis(500)).spread(interval),
            Duration::from_millis(500)
        );
    }
}
