//! Who the client is, and whether it may come in: the first stage of every connection, on
//! listeners of every mode, before TLS, the request head or the ClientHello.
//!
//! ```text
//! accepted (global and listener permits taken) ─ [accept_proxy_protocol: the peer must be in
//!   `from` (else closed); a PROXY v1/v2 header within timeouts.handshake from accept, at most
//!   4 KiB (else closed); its source is the client] ─ per-source limits on that client address
//!   (over: 429 on plain http listeners, a close elsewhere) ─ the mode's next stage
//! ```
//!
//! Deciding here, after the PROXY header and before any request byte, is what HAProxy calls
//! `tcp-request session` (as opposed to `tcp-request connection`, which sees only the edge's
//! address): the limits, X-Forwarded-For, hashing on `source_ip`/`four_tuple`, the logs and the
//! PROXY header sent to backends all see the same client address, decided once.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_config::Config;
use sluice_metrics::{ListenerMetrics, Refused};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::Shared;
use crate::proxy_protocol::{self, ProxyHeaderError};
use crate::snapshot::{ListenerRuntime, canonical};
use crate::sources::{Over, SourceGuard};

/// `Retry-After` seconds when a source holds too many connections: a connection may end at
/// any moment, so a short, fixed pause.
pub(crate) const RETRY_AFTER_CONNECTIONS: u32 = 1;

/// The addresses of one connection, as every later stage sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addrs {
    /// The client's address: the PROXY header's source, else the socket's peer.
    pub(crate) client: SocketAddr,
    /// The address the client connected to when the PROXY header gave it; `None`: the
    /// socket's own, read only where it is used ([`Addrs::local`]), so that a connection that
    /// never needs it (no PROXY header sent on) makes no `getsockname` call.
    pub(crate) local: Option<SocketAddr>,
}

impl Addrs {
    /// The address the client connected to: the PROXY header's destination, else `tcp`'s local
    /// address (the client's socket).
    pub(crate) fn local(&self, tcp: &TcpStream) -> SocketAddr {
        self.local.unwrap_or_else(|| {
            tcp.local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
        })
    }
}

/// An admitted client: its addresses and its place in its source's count.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) addrs: Addrs,
    /// Held for the connection's life (per-source limits on, source not exempt).
    _source: Option<SourceGuard>,
}

impl Client {
    /// The client's place in its source's count alone, to hold until the connection ends
    /// (what a tunnel keeps: its addresses are no longer needed).
    /// Boxed: it is held for the tunnel's life, and inline it would widen every tunnel's
    /// future by 64 bytes whether per-source limits are on or not (they are off by default).
    pub(crate) fn into_source(self) -> Option<Box<SourceGuard>> {
        self._source.map(Box::new)
    }
}

/// Why the connection goes no further.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Close without an answer.
    Close,
    /// Over a per-source limit: answer 429 with this `Retry-After` where the client can read
    /// one (plain `http` listeners), else close.
    TooMany { retry_after: u32 },
}

/// Decides the client of a connection accepted at `accepted_at` from `peer`, and admits it
/// under the per-source limits.
pub(crate) async fn admit(
    shared: &Arc<Shared>,
    config: &Config,
    listener: &ListenerRuntime,
    tcp: &mut TcpStream,
    peer: SocketAddr,
    accepted_at: Instant,
) -> Result<Client, Refusal> {
    let metrics = listener.metrics();
    let (addr, local) = match &listener.config().accept_proxy_protocol {
        None => (peer, None),
        Some(accept) => {
            let edge = canonical(peer.ip());
            if !accept.from.iter().any(|net| net.contains(&edge)) {
                refuse(shared, metrics, Refused::ProxyUntrusted);
                debug!(
                    "PROXY header expected from a peer outside accept_proxy_protocol.from: closed"
                );
                return Err(Refusal::Close);
            }
            let deadline = accepted_at + config.timeouts.handshake;
            let read = tokio::select! {
                read = proxy_protocol::read(
                    tcp,
                    sluice_config::defaults::PROXY_HEADER_MAX_BYTES,
                    deadline,
                ) => read,
                () = shared.stop_tunnels.cancelled() => return Err(Refusal::Close),
            };
            match read {
                Ok(header) => header.addrs.map_or((peer, None), |(source, destination)| {
                    (source, Some(destination))
                }),
                Err(error) => {
                    let reason = match error {
                        ProxyHeaderError::Timeout => Refused::ProxyTimeout,
                        _ => Refused::ProxyInvalid,
                    };
                    refuse(shared, metrics, reason);
                    debug!(%error, "no valid PROXY header: closed");
                    return Err(Refusal::Close);
                }
            }
        }
    };
    let addr = SocketAddr::new(canonical(addr.ip()), addr.port());
    if addr != peer {
        tracing::Span::current().record("client", tracing::field::display(addr));
    }

    let limits = &config.per_source;
    let exempt = || {
        let ip = addr.ip();
        limits.exempt.iter().any(|net| net.contains(&ip))
    };
    let source = if limits.is_enabled() && !exempt() {
        match shared
            .sources
            .admit(addr.ip(), limits, std::time::Instant::now())
        {
            Ok(guard) => Some(guard),
            Err(over) => {
                let (reason, retry_after) = match over {
                    Over::Connections => (Refused::SourceConnections, RETRY_AFTER_CONNECTIONS),
                    Over::Rate { wait } => (Refused::SourceRate, retry_after(wait)),
                };
                refuse(shared, metrics, reason);
                debug!(client = %addr, reason = reason.label(), "over the per-source limit: refused");
                return Err(Refusal::TooMany { retry_after });
            }
        }
    } else {
        None
    };
    Ok(Client {
        addrs: Addrs {
            client: addr,
            local,
        },
        _source: source,
    })
}

fn refuse(shared: &Shared, metrics: &ListenerMetrics, reason: Refused) {
    shared.stats.count_refused(reason, metrics);
}

/// Whole seconds until a token, rounded up (at least 1: `Retry-After: 0` invites a storm).
fn retry_after(wait: std::time::Duration) -> u32 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(Duration::ZERO), 1);
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
        assert_eq!(retry_after(Duration::from_secs(1)), 1);
        assert_eq!(retry_after(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after(Duration::from_secs(9)), 9);
    }
}
