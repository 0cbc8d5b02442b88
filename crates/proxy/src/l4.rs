//! The L4 listeners: `tcp` (no parsing at all) and `tls-passthrough` (the ClientHello read for
//! its server name, never decrypted). Both end in the same relay as an upgraded WebSocket
//! tunnel, spliced where the platform allows.
//!
//! ```text
//! accept ─ permit ─ client (`client.rs`: PROXY header, per-source limits; over a limit:
//!        closed) ─ [tls-passthrough: read the whole ClientHello within timeouts.handshake
//!        and limits.max_head_bytes; not TLS, malformed, too large, too slow, or no pool for
//!        its name ──► closed, nothing reaches a backend]
//!        ─ pick (the pool's algorithm; `hash` by source_ip or four_tuple) ─ connect
//!        ─ [the pool's PROXY header] ─ the ClientHello bytes, as received ─ relay
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use sluice_balance::Affinity;
use sluice_config::{HashKey, ListenerMode};
use sluice_tls::client_hello;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::Shared;
use crate::accept::Admission;
use crate::client;
use crate::conn::{self, Connected, GaugeGuard, Ready, TunnelMetrics};
use crate::pool::Dial;
use crate::snapshot::canonical;
use crate::stream::ClientStream;

/// First read of a ClientHello; most fit (a post-quantum key share makes them ~1.8 KB).
const FIRST_READ: usize = 4096;

/// Runs one admitted connection of a `tcp` or `tls-passthrough` listener to its end: the
/// listener's act (boxed, freed when the tunnel starts), then the tunnel (`conn::connection`).
pub(crate) fn serve(
    shared: Arc<Shared>,
    id: u64,
    listener: Arc<str>,
    client: TcpStream,
    peer: SocketAddr,
    admission: Admission,
) -> impl Future<Output = ()> {
    let act = Box::pin(open(
        Arc::clone(&shared),
        Arc::clone(&listener),
        client,
        peer,
    ));
    conn::connection(shared, id, listener, admission, act)
}

/// The L4 listener's act: the client, the ClientHello (pass-through), the pick, the connect,
/// the first bytes. `None` when the connection ended here.
async fn open(
    shared: Arc<Shared>,
    listener: Arc<str>,
    mut client: TcpStream,
    peer: SocketAddr,
) -> Option<Ready> {
    let accepted_at = Instant::now();
    let snapshot = shared.snapshot.load_full();
    let runtime = snapshot.listener(&listener)?;
    let metrics = runtime.metrics().clone();
    let active = GaugeGuard::new(&metrics.active);
    let mode = runtime.config().mode;
    let config = snapshot.config();

    // The client: the PROXY header's source when the listener takes one; per-source limits
    // (over them: closed, an L4 client cannot read an answer).
    let admitted = client::admit(&shared, config, runtime, &mut client, peer, accepted_at);
    // Held to the end: the connection's place in its source's count.
    let Ok(admitted) = Box::pin(admitted).await else {
        return None;
    };
    let addrs = admitted.addrs;

    // Reading (pass-through only): the whole ClientHello, bounded in size and time.
    let (hello, sni) = if mode == ListenerMode::TlsPassthrough {
        let deadline = Instant::now() + config.timeouts.handshake;
        let read = tokio::select! {
            read = read_client_hello(&mut client, config.limits.max_head_bytes, deadline) => read,
            () = shared.stop_tunnels.cancelled() => return None,
        };
        match read {
            Ok(read) => read,
            Err(reason) => {
                shared.stats.count_rejected();
                metrics.handshake("rejected", None);
                debug!(reason, "not a routable ClientHello: closed");
                return None;
            }
        }
    } else {
        (Vec::new(), None)
    };

    // Routed: by server name, or the listener's pool.
    let Some(pool_index) = runtime.l4_pool(sni.as_deref()) else {
        shared.stats.count_rejected();
        metrics.handshake("rejected", None);
        debug!(
            sni = sni.as_deref().unwrap_or(""),
            "no pool for this server name: closed"
        );
        return None;
    };
    let pool = snapshot.pool(pool_index)?;

    // Picked and connected.
    let key = pool
        .hash_key()
        .and_then(|key| connection_key(key, addrs.client, Some(addrs.local(&client))));
    let affinity = Affinity {
        cookie: None,
        key: key.as_deref(),
    };
    // L4 pools carry the client's bytes as they are: never TLS to the backend (the
    // configuration refuses `tls` on a pool an L4 listener uses), and the PROXY header goes
    // with the first bytes below.
    let dial = Dial {
        source_addrs: snapshot.source_addrs(pool_index),
        preface: b"",
        tls: None,
    };
    let connected = tokio::select! {
        connected = conn::connect(pool, &dial, affinity, config.timeouts.connect) => connected,
        () = shared.stop_tunnels.cancelled() => return None,
    };
    let Connected {
        stream: mut backend,
        guard,
        took,
        ..
    } = match connected {
        Ok(connected) => connected,
        Err(error) => {
            shared.stats.count_backend_failed();
            metrics.handshake("backend_failed", None);
            tracing::warn!(reason = error.label(), %error, "no backend connection: closed");
            return None;
        }
    };
    if let Some(pool_metrics) = snapshot.pool_metrics(pool_index) {
        pool_metrics.connect_duration.record(took.as_secs_f64());
    }

    // The PROXY header and the bytes read so far, before anything else.
    let mut first = Vec::with_capacity(hello.len() + 64);
    if let Some(version) = config
        .pools
        .get(pool_index)
        .and_then(|p| p.send_proxy_protocol)
    {
        crate::proxy_protocol::write(version, addrs.client, addrs.local(&client), &mut first);
    }
    first.extend_from_slice(&hello);
    if !first.is_empty() && backend.write_all(&first).await.is_err() {
        shared.stats.count_backend_failed();
        metrics.handshake("backend_failed", None);
        return None;
    }
    drop((first, hello));

    let tunnel_metrics = TunnelMetrics::of(&snapshot, pool_index, &guard)
        .unwrap_or_else(|| TunnelMetrics::unlisted(&guard));
    let relay_options = Arc::clone(snapshot.relay_options());
    let sockets = crate::health::TunnelSockets::of(config);
    drop(snapshot);

    shared.stats.count_upgraded();
    metrics.upgraded.increment(1);
    metrics.handshake("relayed", None);
    metrics
        .handshake_duration
        .record(accepted_at.elapsed().as_secs_f64());
    sockets.apply(&client, backend.tcp());
    debug!(backend = %guard.addr(), sni = sni.as_deref().unwrap_or(""), "relaying");
    Some(Ready {
        streams: conn::Streams::of(ClientStream::Plain(client), backend),
        started: Instant::now(),
        guard,
        options: relay_options,
        metrics: tunnel_metrics,
        active,
        source: admitted.into_source(),
    })
}

/// Reads until the buffer holds a whole ClientHello: its bytes (to replay, with anything the
/// client sent after it) and its server name.
async fn read_client_hello(
    client: &mut TcpStream,
    max: usize,
    deadline: Instant,
) -> Result<(Vec<u8>, Option<String>), &'static str> {
    let mut buf = Vec::with_capacity(FIRST_READ.min(max));
    loop {
        let room = max.saturating_sub(buf.len()).clamp(1, FIRST_READ);
        let start = buf.len();
        buf.resize(start + room, 0);
        let read = tokio::time::timeout_at(
            deadline,
            client.read(buf.get_mut(start..).unwrap_or_default()),
        )
        .await;
        let n = match read {
            Err(_) => return Err("handshake timeout"),
            Ok(Err(_)) => return Err("client error"),
            Ok(Ok(0)) => return Err("client closed"),
            Ok(Ok(n)) => n,
        };
        buf.truncate(start + n);
        match client_hello::parse(&buf, max) {
            Ok(Some(hello)) => return Ok((buf, hello.sni)),
            Ok(None) => {}
            Err(client_hello::ClientHelloError::NotTls) => return Err("not TLS"),
            Err(client_hello::ClientHelloError::TooLarge(_)) => {
                return Err("ClientHello too large");
            }
            Err(client_hello::ClientHelloError::Malformed(_)) => {
                return Err("malformed ClientHello");
            }
        }
    }
}

/// A connection's hash key: the client's address (`source_ip`), or its address and port with
/// the listener's (`four_tuple`). Request-level keys do not exist at L4.
fn connection_key(key: &HashKey, peer: SocketAddr, local: Option<SocketAddr>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(36);
    match key {
        HashKey::SourceIp => push_ip(canonical(peer.ip()), &mut out),
        HashKey::FourTuple => {
            push_ip(canonical(peer.ip()), &mut out);
            out.extend_from_slice(&peer.port().to_be_bytes());
            let local = local?;
            push_ip(canonical(local.ip()), &mut out);
            out.extend_from_slice(&local.port().to_be_bytes());
        }
        HashKey::Cookie(_) | HashKey::Header(_) | HashKey::Query(_) => return None,
    }
    Some(out)
}

fn push_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_keys() {
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let local: SocketAddr = "10.0.0.1:443".parse().unwrap();
        assert_eq!(
            connection_key(&HashKey::SourceIp, peer, Some(local)),
            Some(vec![192, 0, 2, 1])
        );
        let four = connection_key(&HashKey::FourTuple, peer, Some(local)).unwrap();
        assert_eq!(four.len(), 12);
        let other = connection_key(
            &HashKey::FourTuple,
            "192.0.2.1:5001".parse().unwrap(),
            Some(local),
        );
        assert_ne!(Some(four), other);
        assert_eq!(
            connection_key(&HashKey::Cookie("s".into()), peer, None),
            None
        );
    }
}
