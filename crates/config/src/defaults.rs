//! Every default value and every accepted range, in one place.
//!
//! The parser applies these when a key is absent and checks values against the ranges;
//! `docs/configuration.md` documents the same numbers, and the test at the bottom pins them so a
//! change here is a deliberate one.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::model::{Balance, Limits, ListenerMode, Relay, RelayMode, Timeouts};

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

// [pools.NAME]

/// `balance`.
pub const BALANCE: Balance = Balance::RoundRobin;
/// `connect_attempts`: distinct backends one handshake may try.
pub const CONNECT_ATTEMPTS: u32 = 3;
pub const CONNECT_ATTEMPTS_RANGE: RangeInclusive<u32> = 1..=16;
/// A backend's `weight`.
pub const WEIGHT: u32 = 1;
pub const WEIGHT_RANGE: RangeInclusive<u32> = 1..=256;

// [timeouts]

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// `tunnel_idle`; `"0"` in the file turns it off (`None`).
pub const TUNNEL_IDLE_TIMEOUT: Option<Duration> = Some(Duration::from_secs(60 * 60));
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest duration any key accepts (365 days): far beyond any sensible timeout, and small
/// enough that `Instant::now() + d` can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

// [limits]

pub const MAX_HEAD_BYTES: usize = 16 * KIB;
pub const MAX_HEAD_BYTES_RANGE: RangeInclusive<usize> = KIB..=MIB;
pub const MAX_HEADERS: usize = 100;
pub const MAX_HEADERS_RANGE: RangeInclusive<usize> = 1..=1000;
/// `max_connections`: absent means "derive from the open-file limit at start-up".
pub const MAX_CONNECTIONS: Option<usize> = None;
pub const MAX_CONNECTIONS_RANGE: RangeInclusive<usize> = 1..=usize::MAX;

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

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: HANDSHAKE_TIMEOUT,
            connect: CONNECT_TIMEOUT,
            response: RESPONSE_TIMEOUT,
            tunnel_idle: TUNNEL_IDLE_TIMEOUT,
            shutdown: SHUTDOWN_TIMEOUT,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: MAX_HEAD_BYTES,
            max_headers: MAX_HEADERS,
            max_connections: MAX_CONNECTIONS,
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

        assert_eq!(
            Timeouts::default(),
            Timeouts {
                handshake: Duration::from_secs(5),
                connect: Duration::from_secs(3),
                response: Duration::from_secs(10),
                tunnel_idle: Some(Duration::from_secs(3600)),
                shutdown: Duration::from_secs(30),
            }
        );
        assert_eq!(MAX_DURATION, Duration::from_secs(31_536_000));

        assert_eq!(
            Limits::default(),
            Limits {
                max_head_bytes: 16_384,
                max_headers: 100,
                max_connections: None,
            }
        );
        assert_eq!(MAX_HEAD_BYTES_RANGE, 1024..=1_048_576);
        assert_eq!(MAX_HEADERS_RANGE, 1..=1000);
        assert_eq!(MAX_CONNECTIONS_RANGE, 1..=usize::MAX);

        assert_eq!(
            Relay::default(),
            Relay {
                mode: RelayMode::Auto,
                pipe_size: 65_536,
                max_pipes: 1024,
                buffer_size: 16_384,
            }
        );
        assert_eq!(PIPE_SIZE_RANGE, 4096..=1_048_576);
        assert_eq!(MAX_PIPES_RANGE, 0..=usize::MAX);
        assert_eq!(BUFFER_SIZE_RANGE, 1024..=1_048_576);
    }

    #[test]
    fn defaults_lie_within_their_ranges() {
        assert!(CONNECT_ATTEMPTS_RANGE.contains(&CONNECT_ATTEMPTS));
        assert!(WEIGHT_RANGE.contains(&WEIGHT));
        assert!(MAX_HEAD_BYTES_RANGE.contains(&MAX_HEAD_BYTES));
        assert!(MAX_HEADERS_RANGE.contains(&MAX_HEADERS));
        assert!(PIPE_SIZE_RANGE.contains(&PIPE_SIZE));
        assert!(MAX_PIPES_RANGE.contains(&MAX_PIPES));
        assert!(BUFFER_SIZE_RANGE.contains(&BUFFER_SIZE));
        assert!(UNKNOWN_HOST_STATUSES.contains(&UNKNOWN_HOST_STATUS));
        for d in [
            HANDSHAKE_TIMEOUT,
            CONNECT_TIMEOUT,
            RESPONSE_TIMEOUT,
            SHUTDOWN_TIMEOUT,
        ]
        .into_iter()
        .chain(TUNNEL_IDLE_TIMEOUT)
        {
            assert!(!d.is_zero() && d <= MAX_DURATION);
        }
    }
}
