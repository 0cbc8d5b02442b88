//! Backend health as the proxy sees it: the active checkers of the live snapshot, what
//! connections report (passive checks), and the socket options that let a tunnel notice a peer
//! that vanished.
//!
//! - **Active checks** ([`sluice_health::HealthChecks`]) follow the snapshot: started by
//!   `Server::run`, brought in line after every reload (a backend that keeps its `Arc` and its
//!   pool's check keeps its checker, untouched, and its state in any case), stopped at
//!   shutdown. All under the control lock, so two reloads never race to start checkers.
//! - **Passive checks**: `conn.rs` reports a refused or timed-out connect and a response head
//!   that did not come in time as failures ([`connect_failed`]), and every response head that
//!   did come as a success ([`answered`]). With the pool's `outlier` set, the
//!   `consecutive_failures`-th failure in a row ejects the backend for `cool_down`
//!   (`sluice_balance::Backend::record_connect_failure`). One log line when it is ejected, one
//!   when the cool-down is over.
//! - **Slow start** of backends a reload adds ([`snapshot_live`]); the ramp itself is
//!   sluice-balance's.
//! - **Tunnel sockets** ([`TunnelSockets`]): TCP keepalive and `TCP_USER_TIMEOUT` on both
//!   sockets right before the relay, so a half-open tunnel (its client's host gone without a
//!   FIN or a RST) ends when the kernel gives up on the peer instead of living until the idle
//!   timeout (traefik/traefik#10627, cloudflare/pingora#571).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use sluice_balance::{Backend, Pool, Transition};
use sluice_config::{Config, TcpKeepalive};
use sluice_health::HealthChecks;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::snapshot::Snapshot;

/// After `new` became the live snapshot (`old` is the one it replaced, `None` at start):
/// aligns the active checkers with its pools, and starts the slow start of the backends this
/// generation added (new addresses, and backends whose weight changed: their live count starts
/// again from zero, which least_conn would otherwise flood).
pub(crate) fn snapshot_live(checks: &mut HealthChecks, old: Option<&Snapshot>, new: &Snapshot) {
    if let Some(old) = old {
        for pool in new.pools() {
            let previous = old.pool_by_name(pool.name());
            for backend in pool.backends() {
                let known = previous
                    .and_then(|p| p.backend(backend.addr()))
                    .is_some_and(|b| Arc::ptr_eq(b, backend));
                if !known && pool.slow_start().is_some() {
                    backend.start_slow_start();
                    info!(
                        pool = pool.name(),
                        backend = %backend.addr(),
                        slow_start = ?pool.slow_start(),
                        "backend added: slow start"
                    );
                }
            }
        }
    }
    let updated = checks.update(new.pools(), |index| new.upstream(index).cloned());
    if updated.started + updated.stopped > 0 {
        info!(
            started = updated.started,
            stopped = updated.stopped,
            kept = updated.kept,
            "health checkers updated"
        );
    }
}

/// A connection to `backend` failed before it answered: a refused or timed-out connect, or a
/// response head that did not come in time. Logs the ejection it causes, once, and the end of
/// the cool-down.
pub(crate) fn connect_failed(pool: &Pool, backend: &Arc<Backend>, reason: &'static str) {
    sluice_metrics::global::backend_failure(pool.name(), &backend.addr().to_string(), reason);
    let Some(Transition::Ejected { failures, until }) = backend.record_connect_failure() else {
        return;
    };
    let cool_down = pool.outlier().map(|o| o.cool_down);
    warn!(
        pool = pool.name(),
        backend = %backend.addr(),
        reason,
        failures,
        cool_down = ?cool_down,
        "backend ejected: consecutive failed connections"
    );
    let (pool, backend) = (pool.name().to_owned(), Arc::clone(backend));
    tokio::spawn(async move {
        tokio::time::sleep_until(until.into()).await;
        // Nothing can renew an ejection while it lasts: this is its end.
        info!(
            pool = %pool,
            backend = %backend.addr(),
            state = backend.health().label(),
            "backend back from ejection"
        );
    });
}

/// `backend` answered (a response head came): its run of failed connections is over.
pub(crate) fn answered(backend: &Backend) {
    backend.record_connect_success();
}

/// The socket options of every tunnel's two sockets, from `[relay]`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TunnelSockets {
    keepalive: Option<TcpKeepalive>,
    user_timeout: Option<Duration>,
}

impl TunnelSockets {
    pub(crate) fn of(config: &Config) -> Self {
        Self {
            keepalive: config.relay.tcp_keepalive,
            user_timeout: config.relay.tcp_user_timeout,
        }
    }

    /// Sets the options on both sockets of a tunnel. A failure is logged and the tunnel goes
    /// on without them: the options only shorten how long a dead peer goes unnoticed.
    pub(crate) fn apply(&self, client: &TcpStream, backend: &TcpStream) {
        if self.keepalive.is_none() && self.user_timeout.is_none() {
            return;
        }
        for (side, stream) in [("client", client), ("backend", backend)] {
            if let Err(error) = self.set(stream) {
                debug!(side, %error, "cannot set keepalive or user timeout on a tunnel socket");
            }
        }
    }

    fn set(&self, stream: &TcpStream) -> io::Result<()> {
        let socket = socket2::SockRef::from(stream);
        if let Some(k) = self.keepalive {
            let params = socket2::TcpKeepalive::new()
                .with_time(k.idle)
                .with_interval(k.interval)
                .with_retries(k.count);
            socket.set_tcp_keepalive(&params)?;
        }
        if let Some(timeout) = self.user_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tunnel_sockets_get_keepalive_and_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (client, (accepted, _)) = (client.expect("connect"), accepted.expect("accept"));
        let options = TunnelSockets {
            keepalive: Some(TcpKeepalive {
                idle: Duration::from_secs(7),
                interval: Duration::from_secs(3),
                count: 4,
            }),
            user_timeout: Some(Duration::from_millis(12_500)),
        };
        options.apply(&client, &accepted);
        for stream in [&client, &accepted] {
            let socket = socket2::SockRef::from(stream);
            assert!(socket.keepalive().expect("SO_KEEPALIVE"));
            assert_eq!(
                socket.tcp_keepalive_time().ok(),
                Some(Duration::from_secs(7))
            );
            assert_eq!(
                socket.tcp_keepalive_interval().ok(),
                Some(Duration::from_secs(3))
            );
            assert_eq!(socket.tcp_keepalive_retries().ok(), Some(4));
            assert_eq!(
                socket.tcp_user_timeout().ok().flatten(),
                Some(Duration::from_millis(12_500))
            );
        }
        // Without options, nothing is touched.
        let (plain, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (plain, (accepted, _)) = (plain.expect("connect"), accepted.expect("accept"));
        TunnelSockets::default().apply(&plain, &accepted);
        assert!(
            !socket2::SockRef::from(&plain)
                .keepalive()
                .expect("SO_KEEPALIVE")
        );
    }
}
