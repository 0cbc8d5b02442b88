//! Readiness notifications to a service manager: the `sd_notify(3)` protocol of systemd.
//!
//! A service manager that wants to know when sluice is ready starts it with `NOTIFY_SOCKET`
//! naming a Unix datagram socket (a path, or `@name` in the abstract namespace). sluice sends
//! newline-separated `KEY=value` assignments to it, one datagram per state change:
//!
//! | when | message |
//! | --- | --- |
//! | listeners bound, first configuration applied | `READY=1`, `STATUS=…` |
//! | a SIGHUP reload starts | `RELOADING=1`, `MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>`, `STATUS=…` |
//! | the reload is applied or refused | `READY=1`, `STATUS=…` (a refused reload says so) |
//! | shutdown starts | `STOPPING=1`, `STATUS=…` |
//!
//! That is what `Type=notify` needs, and `Type=notify-reload` (systemd 253 and later) too: there
//! systemd sends SIGHUP itself and waits for `RELOADING=1` with a `MONOTONIC_USEC` taken after
//! its request, then `READY=1`. Without `NOTIFY_SOCKET` every call does nothing. A failed send
//! is logged once and never stops sluice: readiness reporting is a courtesy to the supervisor,
//! not part of serving.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::warn;

/// The environment variable a service manager sets to its notification socket.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A connection to the service manager's notification socket, or nothing.
#[derive(Debug)]
pub(crate) struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    failed: AtomicBool,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for; a no-op one without it (or when it names a
    /// socket kind sluice does not speak, which is logged).
    pub(crate) fn from_env() -> Self {
        let target = std::env::var_os(NOTIFY_SOCKET).and_then(|value| {
            let Some(addr) = socket_addr(value.as_encoded_bytes()) else {
                warn!(
                    value = %value.to_string_lossy(),
                    "NOTIFY_SOCKET is neither a path nor @abstract: readiness not reported"
                );
                return None;
            };
            match UnixDatagram::unbound() {
                Ok(socket) => {
                    // A stuck supervisor must not stall a reload or the shutdown.
                    let _ = socket.set_write_timeout(Some(SEND_TIMEOUT));
                    Some((socket, addr))
                }
                Err(error) => {
                    warn!(%error, "cannot open a socket for NOTIFY_SOCKET: readiness not reported");
                    None
                }
            }
        });
        Self {
            target,
            failed: AtomicBool::new(false),
        }
    }

    /// `READY=1`: serving (at start, and at the end of every reload). `MAINPID` names this
    /// process, which is what a service manager needs from the successor of a binary upgrade.
    pub(crate) fn ready(&self, status: &str) {
        self.send(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}\n",
            std::process::id()
        ));
    }

    /// `RELOADING=1` with the monotonic time the reload started at.
    pub(crate) fn reloading(&self) {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
            + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000;
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the configuration\n"
        ));
    }

    /// `STOPPING=1`: shutdown started (no longer accepting, draining).
    pub(crate) fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}\n"));
    }

    fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(error) = socket.send_to_addr(message.as_bytes(), addr) {
            // Once: a supervisor that went away would otherwise be logged at every reload.
            if !self.failed.swap(true, Ordering::Relaxed) {
                warn!(%error, "cannot notify the service manager (NOTIFY_SOCKET)");
            }
        }
    }
}

/// How long one notification may wait for room in the supervisor's socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// The socket address `NOTIFY_SOCKET` names: `/path` or `@abstract-name`.
fn socket_addr(value: &[u8]) -> Option<SocketAddr> {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::ffi::OsStrExt as _;
    match value.split_first()? {
        (b'@', name) if !name.is_empty() => SocketAddr::from_abstract_name(name).ok(),
        (b'/', _) => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(value)).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::linux::net::SocketAddrExt as _;

    use super::*;

    #[test]
    fn paths_and_abstract_names_are_understood_and_nothing_else() {
        let path = socket_addr(b"/run/systemd/notify").unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abstract_name = socket_addr(b"@/org/freedesktop/systemd1/notify/42").unwrap();
        assert_eq!(
            abstract_name.as_abstract_name(),
            Some(&b"/org/freedesktop/systemd1/notify/42"[..])
        );
        for odd in [&b""[..], b"@", b"relative/path", b"vsock:2:1234"] {
            assert!(socket_addr(odd).is_none(), "{odd:?}");
        }
    }

    #[test]
    fn messages_arrive_in_the_abstract_namespace() {
        let name = format!("sluice-notify-unit-{}", std::process::id());
        let receiver =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                socket_addr(format!("@{name}").as_bytes()).unwrap(),
            )),
            failed: AtomicBool::new(false),
        };
        let mut buf = [0u8; 512];
        notifier.ready("serving");
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            format!("READY=1\nSTATUS=serving\nMAINPID={}\n", std::process::id())
        );
        notifier.reloading();
        let n = receiver.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        let usec: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(text.starts_with("RELOADING=1\n") && usec > 0, "{text}");
    }
}
