//! Every default value and every accepted range, in one place.
//!
//! The parser applies these when a key is absent and checks values against the ranges;
//! `docs/configuration.md` documents the same numbers, and the test at the bottom pins them so a
//! change here is a deliberate one.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::model::{
    Balance, Jitter, Limits, ListenerMode, PerSourceLimits, Relay, RelayMode, SameSite,
    StatusRange, Timeouts,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// [[listeners]]

/// `mode`: what a listener speaks.
pub const LISTENER_MODE: ListenerMode = ListenerMode::Http;
/// `unknown_host_status`: answered when no route of the listener knows the `Host`.
pub const UNKNOWN_HOST_STATUS: u16 = 404;
/// The statuses `unknown_host_status` may take: Not Found, Misdirected Request.
pub const UNKNOWN_HOST_STATUSES: [u16; 2] = [404, 421];
// `trusted_proxies` defaults to empty: nobody's X-Forwarded-For is trusted.
// `accept_proxy_protocol` defaults to absent: no PROXY header is expected.
/// A listener's `max_connections`: none of its own.
pub const LISTENER_MAX_CONNECTIONS: Option<usize> = None;
/// The largest PROXY protocol header accepted, in bytes: a v1 line is at most 107; a v2 header
/// is 16 bytes plus addresses and TLVs (cloud load balancers add a few dozen bytes of TLVs).
pub const PROXY_HEADER_MAX_BYTES: usize = 4096;

// [pools.NAME]

/// `balance`.
pub const BALANCE: Balance = Balance::RoundRobin;
/// `connect_attempts`: distinct backends one handshake may try.
pub const CONNECT_ATTEMPTS: u32 = 3;
pub const CONNECT_ATTEMPTS_RANGE: RangeInclusive<u32> = 1..=16;
/// A backend's `weight`.
pub const WEIGHT: u32 = 1;
/// Where the admin listener listens when `[admin]` gives no address: loopback only.
pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Tunnels to a backend removed by a reload are kept until they end by themselves.
pub const DRAIN_TIMEOUT: Option<Duration> = None;
/// Once a drain deadline passes, the tunnels left are closed evenly over this window.
pub const DRAIN_SPREAD: Duration = Duration::from_secs(10);
pub const WEIGHT_RANGE: RangeInclusive<u32> = 1..=256;
/// `idle_connections`: idle keep-alive connections kept per backend for plain HTTP requests.
pub const IDLE_CONNECTIONS: usize = 16;
pub const IDLE_CONNECTIONS_RANGE: RangeInclusive<usize> = 0..=1024;
/// `idle_timeout`: below the 5 s keep-alive timeout of Node.js servers (the shortest common
/// default), so that sluice, not the backend, closes an idle connection: a pooled connection is
/// then rarely found closed by the backend when a request takes it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// `tls.verify`: backends' certificates are verified unless told otherwise.
pub const UPSTREAM_TLS_VERIFY: bool = true;
/// `hash_fallback`: how a `balance = "hash"` pool places requests without the key. Least
/// connections fills in around the hashed tunnels, which bounded loads keep near the mean.
pub const HASH_FALLBACK: Balance = Balance::LeastConn;
/// `hash_balance_factor`: bounded loads at 1.5 × the mean (`0` in the file: unbounded).
pub const HASH_BALANCE_FACTOR: Option<f64> = Some(1.5);
/// A factor other than 0 must be greater than this (a cap at the mean itself would send most
/// keys off their first choice)…
pub const HASH_BALANCE_FACTOR_ABOVE: f64 = 1.0;
/// … and at most this (far beyond, the cap never binds: write 0 to turn it off).
pub const HASH_BALANCE_FACTOR_MAX: f64 = 100.0;

/// `send_proxy_protocol`: no header to backends.
pub const SEND_PROXY_PROTOCOL: Option<crate::model::ProxyVersion> = None;
/// `max_connections_per_backend`: no limit.
pub const MAX_CONNECTIONS_PER_BACKEND: Option<usize> = None;
pub const MAX_CONNECTIONS_PER_BACKEND_RANGE: RangeInclusive<usize> = 1..=usize::MAX;

// [pools.NAME.health_check]

/// `interval`: between two checks of one backend.
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest `interval` accepted.
pub const HEALTH_CHECK_INTERVAL_MIN: Duration = Duration::from_millis(10);
/// `timeout`: the most one check may take (at most the interval).
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// `rise`: passed checks in a row that bring a down backend up.
pub const HEALTH_CHECK_RISE: u32 = 2;
/// `fall`: failed checks in a row that take an up backend down.
pub const HEALTH_CHECK_FALL: u32 = 3;
pub const HEALTH_CHECK_COUNT_RANGE: RangeInclusive<u32> = 1..=100;
/// `jitter`: each interval is spread by ±10 %, so instances do not check in step.
pub const HEALTH_CHECK_JITTER: Jitter = Jitter::Fraction(0.1);
/// The largest `jitter` fraction (a fixed jitter may be at most half the interval too).
pub const HEALTH_CHECK_JITTER_MAX: f64 = 0.5;
/// `path` of `http` and `websocket` checks.
pub const HEALTH_CHECK_PATH: &str = "/";
/// `expect_status` of `http` checks: any success or redirect.
pub const HEALTH_CHECK_EXPECT_STATUS: StatusRange = StatusRange {
    first: 200,
    last: 399,
};
/// `ping` of `websocket` checks: a ping must come back as its pong (RFC 6455 §5.5.2 makes
/// answering one mandatory), which proves the backend's event loop runs, not just its accept.
pub const HEALTH_CHECK_PING: bool = true;

// [pools.NAME.outlier]

/// `consecutive_failures`: failed connections in a row that eject a backend.
pub const OUTLIER_CONSECUTIVE_FAILURES: u32 = 5;
pub const OUTLIER_CONSECUTIVE_FAILURES_RANGE: RangeInclusive<u32> = 1..=1000;
/// `cool_down`: how long an ejected backend takes no new connection.
pub const OUTLIER_COOL_DOWN: Duration = Duration::from_secs(30);

/// `slow_start`: off, a recovered backend takes its full share at once.
pub const SLOW_START: Option<Duration> = None;

// [pools.NAME.sticky_cookie]

/// `ttl`: absent, a session cookie.
pub const STICKY_COOKIE_TTL: Option<Duration> = None;
/// `secure`: off, since sluice listens in plain HTTP until TLS termination exists.
pub const STICKY_COOKIE_SECURE: bool = false;
/// `http_only`: scripts have no business with the affinity cookie.
pub const STICKY_COOKIE_HTTP_ONLY: bool = true;
/// `same_site`: absent, the browser's default.
pub const STICKY_COOKIE_SAME_SITE: Option<SameSite> = None;
/// `path`.
pub const STICKY_COOKIE_PATH: &str = "/";
/// The shortest `secret` accepted, in bytes.
pub const STICKY_COOKIE_SECRET_MIN_LEN: usize = 16;

// [timeouts]

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// `tunnel_idle`; `"0"` in the file turns it off (`None`).
pub const TUNNEL_IDLE_TIMEOUT: Option<Duration> = Some(Duration::from_secs(60 * 60));
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// `client_idle`: a keep-alive client connection waits this long for its next request.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `body_stall`: a request or response body that moves no byte for this long ends the exchange.
pub const BODY_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// `half_closed`: off, a half-closed tunnel lives until the other side ends too (or idles out).
pub const HALF_CLOSED_TIMEOUT: Option<Duration> = None;
/// The last part of the shutdown deadline over which the tunnels left are closed, one by one,
/// when `timeouts.shutdown` is the default.
pub const SHUTDOWN_SPREAD: Duration = Duration::from_secs(5);

/// The default spread for a shutdown deadline: a sixth of it, at most [`SHUTDOWN_SPREAD`], so a
/// short deadline keeps most of its grace period.
pub fn shutdown_spread(shutdown: Duration) -> Duration {
    (shutdown / 6).min(SHUTDOWN_SPREAD)
}
/// The longest duration any key accepts (365 days): far beyond any sensible timeout, and small
/// enough that `Instant::now() + d` can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

// [limits]

pub const MAX_HEAD_BYTES: usize = 16 * KIB;
pub const MAX_HEAD_BYTES_RANGE: RangeInclusive<usize> = KIB..=MIB;
pub const MAX_HEADERS: usize = 100;
pub const MAX_HEADERS_RANGE: RangeInclusive<usize> = 1..=1000;
/// `max_body_bytes`: absent means no limit on plain HTTP request bodies.
pub const MAX_BODY_BYTES: Option<u64> = None;
pub const MAX_BODY_BYTES_RANGE: RangeInclusive<u64> = 0..=u64::MAX;
/// `max_connections`: absent means "derive from the open-file limit at start-up".
pub const MAX_CONNECTIONS: Option<usize> = None;
pub const MAX_CONNECTIONS_RANGE: RangeInclusive<usize> = 1..=usize::MAX;

// [limits.per_source]

/// `max_connections`: no limit per source.
pub const PER_SOURCE_MAX_CONNECTIONS: Option<u32> = None;
pub const PER_SOURCE_MAX_CONNECTIONS_RANGE: RangeInclusive<u32> = 1..=u32::MAX;
/// `connection_rate`: no limit per source.
pub const PER_SOURCE_CONNECTION_RATE: Option<f64> = None;
/// The lowest `connection_rate` accepted (one connection per 1000 s)…
pub const PER_SOURCE_CONNECTION_RATE_MIN: f64 = 0.001;
/// … and the highest.
pub const PER_SOURCE_CONNECTION_RATE_MAX: f64 = 1_000_000.0;
/// `connection_burst` when absent: the rate rounded up (at least 1), one second's worth.
pub fn per_source_connection_burst(rate: Option<f64>) -> u32 {
    rate.map_or(1, |r| {
        let ceil = r.ceil();
        if ceil >= 1.0 && ceil <= f64::from(u32::MAX) {
            ceil as u32
        } else {
            1
        }
    })
}
pub const PER_SOURCE_CONNECTION_BURST_RANGE: RangeInclusive<u32> = 1..=1_000_000;
/// `ipv4_prefix`: every IPv4 address on its own.
pub const PER_SOURCE_IPV4_PREFIX: u8 = 32;
/// `ipv6_prefix`: one /64, the usual allocation of one customer site (nginx and Envoy users key
/// IPv6 clients the same way), so a client cannot escape its limits by rotating addresses.
pub const PER_SOURCE_IPV6_PREFIX: u8 = 64;
/// `table_size`: sources tracked at once.
pub const PER_SOURCE_TABLE_SIZE: usize = 65_536;
pub const PER_SOURCE_TABLE_SIZE_RANGE: RangeInclusive<usize> = 16..=16_777_216;

// [relay]

pub const RELAY_MODE: RelayMode = RelayMode::Auto;
/// `pipe_size`: 64 KiB is the Linux default pipe capacity; 1 MiB is the default
/// `/proc/sys/fs/pipe-max-size` an unprivileged process may ask for.
pub const PIPE_SIZE: usize = 64 * KIB;
pub const PIPE_SIZE_RANGE: RangeInclusive<usize> = 4 * KIB..=MIB;
pub const MAX_PIPES: usize = 1024;
pub const MAX_PIPES_RANGE: RangeInclusive<usize> = 0..=usize::MAX;
pub const BUFFER_SIZE: usize = 16 * KIB;
pub const BUFFER_SIZE_RANGE: RangeInclusive<usize> = KIB..=MIB;
/// `tcp_keepalive`: absent, the system's setting (off unless the socket asks).
pub const TCP_KEEPALIVE: Option<crate::model::TcpKeepalive> = None;
/// `tcp_keepalive.idle` when the table leaves it out.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// `tcp_keepalive.interval` when the table leaves it out.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// `tcp_keepalive.count` when the table leaves it out.
pub const TCP_KEEPALIVE_COUNT: u32 = 3;
/// `TCP_KEEPCNT` takes 1 to 127 on Linux.
pub const TCP_KEEPALIVE_COUNT_RANGE: RangeInclusive<u32> = 1..=127;
/// `TCP_KEEPIDLE` and `TCP_KEEPINTVL` take 1 to 32767 seconds on Linux.
pub const TCP_KEEPALIVE_SECONDS_MAX: u64 = 32_767;
/// `tcp_user_timeout`: absent, the system's (off).
pub const TCP_USER_TIMEOUT: Option<Duration> = None;

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: HANDSHAKE_TIMEOUT,
            connect: CONNECT_TIMEOUT,
            response: RESPONSE_TIMEOUT,
            tunnel_idle: TUNNEL_IDLE_TIMEOUT,
            half_closed: HALF_CLOSED_TIMEOUT,
            client_idle: CLIENT_IDLE_TIMEOUT,
            body_stall: BODY_STALL_TIMEOUT,
            shutdown: SHUTDOWN_TIMEOUT,
            shutdown_spread: SHUTDOWN_SPREAD,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: MAX_HEAD_BYTES,
            max_headers: MAX_HEADERS,
            max_body_bytes: MAX_BODY_BYTES,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

impl Default for PerSourceLimits {
    fn default() -> Self {
        PerSourceLimits {
            max_connections: PER_SOURCE_MAX_CONNECTIONS,
            connection_rate: PER_SOURCE_CONNECTION_RATE,
            connection_burst: per_source_connection_burst(PER_SOURCE_CONNECTION_RATE),
            exempt: Vec::new(),
            ipv4_prefix: PER_SOURCE_IPV4_PREFIX,
            ipv6_prefix: PER_SOURCE_IPV6_PREFIX,
            table_size: PER_SOURCE_TABLE_SIZE,
        }
    }
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            mode: RELAY_MODE,
            pipe_size: PIPE_SIZE,
            max_pipes: MAX_PIPES,
            buffer_size: BUFFER_SIZE,
            tcp_keepalive: TCP_KEEPALIVE,
            tcp_user_timeout: TCP_USER_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changing a default changes what every deployment without that key does: update
    /// `docs/configuration.md` and `config/sluice.toml` along with this test.
    #[test]
    fn defaults_are_pinned() {
        assert_eq!(LISTENER_MODE, ListenerMode::Http);
        assert_eq!(UNKNOWN_HOST_STATUS, 404);
        assert_eq!(UNKNOWN_HOST_STATUSES, [404, 421]);

        assert_eq!(BALANCE, Balance::RoundRobin);
        assert_eq!(CONNECT_ATTEMPTS, 3);
        assert_eq!(CONNECT_ATTEMPTS_RANGE, 1..=16);
        assert_eq!(WEIGHT, 1);
        assert_eq!(WEIGHT_RANGE, 1..=256);
        assert_eq!(IDLE_CONNECTIONS, 16);
        assert_eq!((UPSTREAM_TLS_VERIFY, IDLE_CONNECTIONS), (true, 16));
        assert_eq!(IDLE_CONNECTIONS_RANGE, 0..=1024);
        assert_eq!(IDLE_TIMEOUT, Duration::from_secs(4));
        assert_eq!(HASH_FALLBACK, Balance::LeastConn);
        assert_eq!(HASH_BALANCE_FACTOR, Some(1.5));
        assert_eq!(HASH_BALANCE_FACTOR_ABOVE, 1.0);
        assert_eq!(HASH_BALANCE_FACTOR_MAX, 100.0);
        assert_eq!(HEALTH_CHECK_INTERVAL, Duration::from_secs(5));
        assert_eq!(HEALTH_CHECK_INTERVAL_MIN, Duration::from_millis(10));
        assert_eq!(HEALTH_CHECK_TIMEOUT, Duration::from_secs(2));
        assert_eq!((HEALTH_CHECK_RISE, HEALTH_CHECK_FALL), (2, 3));
        assert_eq!(HEALTH_CHECK_COUNT_RANGE, 1..=100);
        assert_eq!(HEALTH_CHECK_JITTER, Jitter::Fraction(0.1));
        assert_eq!(HEALTH_CHECK_JITTER_MAX, 0.5);
        assert_eq!(
            HEALTH_CHECK_EXPECT_STATUS,
            StatusRange {
                first: 200,
                last: 399
            }
        );
        // (path, ping)
        assert_eq!((HEALTH_CHECK_PATH, HEALTH_CHECK_PING), ("/", true));
        assert_eq!(OUTLIER_CONSECUTIVE_FAILURES, 5);
        assert_eq!(OUTLIER_CONSECUTIVE_FAILURES_RANGE, 1..=1000);
        assert_eq!(OUTLIER_COOL_DOWN, Duration::from_secs(30));
        assert_eq!(SLOW_START, None);
        assert_eq!(STICKY_COOKIE_TTL, None);
        // (secure, http_only)
        assert_eq!(
            (STICKY_COOKIE_SECURE, STICKY_COOKIE_HTTP_ONLY),
            (false, true)
        );
        assert_eq!(STICKY_COOKIE_SAME_SITE, None);
        assert_eq!(STICKY_COOKIE_PATH, "/");
        assert_eq!(STICKY_COOKIE_SECRET_MIN_LEN, 16);

        assert_eq!(
            Timeouts::default(),
            Timeouts {
                handshake: Duration::from_secs(5),
                connect: Duration::from_secs(3),
                response: Duration::from_secs(10),
                tunnel_idle: Some(Duration::from_secs(3600)),
                half_closed: None,
                client_idle: Duration::from_secs(60),
                body_stall: Duration::from_secs(30),
                shutdown: Duration::from_secs(30),
                shutdown_spread: Duration::from_secs(5),
            }
        );
        assert_eq!(MAX_DURATION, Duration::from_secs(31_536_000));

        assert_eq!(
            Limits::default(),
            Limits {
                max_head_bytes: 16_384,
                max_headers: 100,
                max_body_bytes: None,
                max_connections: None,
            }
        );
        assert_eq!(MAX_BODY_BYTES_RANGE, 0..=u64::MAX);
        assert_eq!(MAX_HEAD_BYTES_RANGE, 1024..=1_048_576);
        assert_eq!(MAX_HEADERS_RANGE, 1..=1000);
        assert_eq!(MAX_CONNECTIONS_RANGE, 1..=usize::MAX);
        assert_eq!(LISTENER_MAX_CONNECTIONS, None);
        assert_eq!(PROXY_HEADER_MAX_BYTES, 4096);
        assert_eq!(SEND_PROXY_PROTOCOL, None);
        assert_eq!(MAX_CONNECTIONS_PER_BACKEND, None);
        assert_eq!(
            PerSourceLimits::default(),
            PerSourceLimits {
                max_connections: None,
                connection_rate: None,
                connection_burst: 1,
                exempt: vec![],
                ipv4_prefix: 32,
                ipv6_prefix: 64,
                table_size: 65_536,
            }
        );
        assert_eq!(per_source_connection_burst(Some(20.0)), 20);
        assert_eq!(per_source_connection_burst(Some(0.5)), 1);
        assert_eq!(PER_SOURCE_TABLE_SIZE_RANGE, 16..=16_777_216);
        assert_eq!(PER_SOURCE_CONNECTION_BURST_RANGE, 1..=1_000_000);
        assert_eq!(
            (
                PER_SOURCE_CONNECTION_RATE_MIN,
                PER_SOURCE_CONNECTION_RATE_MAX
            ),
            (0.001, 1_000_000.0)
        );

        assert_eq!(
            Relay::default(),
            Relay {
                mode: RelayMode::Auto,
                pipe_size: 65_536,
                max_pipes: 1024,
                buffer_size: 16_384,
                tcp_keepalive: None,
                tcp_user_timeout: None,
            }
        );
        assert_eq!(
            (
                TCP_KEEPALIVE_IDLE,
                TCP_KEEPALIVE_INTERVAL,
                TCP_KEEPALIVE_COUNT
            ),
            (Duration::from_secs(60), Duration::from_secs(10), 3)
        );
        assert_eq!(TCP_KEEPALIVE_COUNT_RANGE, 1..=127);
        assert_eq!(TCP_KEEPALIVE_SECONDS_MAX, 32_767);
        assert_eq!(PIPE_SIZE_RANGE, 4096..=1_048_576);
        assert_eq!(MAX_PIPES_RANGE, 0..=usize::MAX);
        assert_eq!(BUFFER_SIZE_RANGE, 1024..=1_048_576);
    }

    #[test]
    fn defaults_lie_within_their_ranges() {
        assert!(CONNECT_ATTEMPTS_RANGE.contains(&CONNECT_ATTEMPTS));
        assert!(WEIGHT_RANGE.contains(&WEIGHT));
        assert!(IDLE_CONNECTIONS_RANGE.contains(&IDLE_CONNECTIONS));
        assert_ne!(HASH_FALLBACK, Balance::Hash);
        assert!(
            HASH_BALANCE_FACTOR
                .is_some_and(|f| f > HASH_BALANCE_FACTOR_ABOVE && f <= HASH_BALANCE_FACTOR_MAX)
        );
        assert!(MAX_HEAD_BYTES_RANGE.contains(&MAX_HEAD_BYTES));
        assert!(MAX_HEADERS_RANGE.contains(&MAX_HEADERS));
        assert!(PIPE_SIZE_RANGE.contains(&PIPE_SIZE));
        assert!(MAX_PIPES_RANGE.contains(&MAX_PIPES));
        assert!(BUFFER_SIZE_RANGE.contains(&BUFFER_SIZE));
        assert!(UNKNOWN_HOST_STATUSES.contains(&UNKNOWN_HOST_STATUS));
        assert!(HEALTH_CHECK_COUNT_RANGE.contains(&HEALTH_CHECK_RISE));
        assert!(HEALTH_CHECK_COUNT_RANGE.contains(&HEALTH_CHECK_FALL));
        assert!(HEALTH_CHECK_TIMEOUT <= HEALTH_CHECK_INTERVAL);
        assert!(HEALTH_CHECK_INTERVAL >= HEALTH_CHECK_INTERVAL_MIN);
        assert!(
            matches!(HEALTH_CHECK_JITTER, Jitter::Fraction(f) if (0.0..=HEALTH_CHECK_JITTER_MAX).contains(&f))
        );
        assert!(OUTLIER_CONSECUTIVE_FAILURES_RANGE.contains(&OUTLIER_CONSECUTIVE_FAILURES));
        assert!(TCP_KEEPALIVE_COUNT_RANGE.contains(&TCP_KEEPALIVE_COUNT));
        for d in [TCP_KEEPALIVE_IDLE, TCP_KEEPALIVE_INTERVAL] {
            assert!(d.as_secs() >= 1 && d.as_secs() <= TCP_KEEPALIVE_SECONDS_MAX);
        }
        for d in [
            HANDSHAKE_TIMEOUT,
            CONNECT_TIMEOUT,
            RESPONSE_TIMEOUT,
            SHUTDOWN_TIMEOUT,
            CLIENT_IDLE_TIMEOUT,
            BODY_STALL_TIMEOUT,
            IDLE_TIMEOUT,
        ]
        .into_iter()
        .chain(TUNNEL_IDLE_TIMEOUT)
        {
            assert!(!d.is_zero() && d <= MAX_DURATION);
        }
    }
}
