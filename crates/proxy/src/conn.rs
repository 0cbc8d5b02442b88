//! One client connection, from admission to close: the L7 act, then the L4 act.
//!
//! States, each consuming the previous one's value:
//! `Reading` (head bytes, deadline) → `Routed` (request, pool) → `Connected` (backend socket,
//! guard) → `Upgraded` (101 relayed) → `Relaying` (sluice-splice) → closed.
//! A plain (non-upgrade) request leaves after `Reading` for the keep-alive loop of `http.rs`,
//! which comes back here with the upgrade request that ends it, if one comes.
//! A failure before `Connected` is answered with one response and nothing reaches a backend.
//! A failure after the head was forwarded is answered too, but never retried elsewhere: the
//! backend may already act on it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use sluice_balance::{Affinity, BackendGuard, Pool, Token};
use sluice_handshake::{
    ClientInfo, HandshakeError, Request, RequestKind, WebSocketUpgrade, affinity_key, classify,
    cookie, error_response, insert_response_headers, parse_request, read_request_head,
    read_response_head, write_forwarded_request, write_set_cookie,
};
use sluice_metrics::{BackendMetrics, PoolMetrics};
use sluice_splice::{RelayOptions, RelayReport, Relayed, Suspended};
use sluice_tls::BackendStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::Shared;
use crate::accept::Admission;
use crate::client::{self, Addrs, Refusal};
use crate::http::{self, UpgradeRequest};
use crate::pool::Dial;
use crate::snapshot::{Snapshot, canonical};
use crate::stream::ClientStream;
use crate::tunnels::{Live, Portability};

/// How long a rejected client may keep sending before its connection is closed anyway.
const LINGER: Duration = Duration::from_secs(2);
/// How much a rejected client may send during the linger before its connection is closed anyway.
const LINGER_BYTES: usize = 256 * 1024;
/// Bound on writing a short answer to a client that does not read.
const ANSWER_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// First read buffer; it grows up to the head limit only for large heads.
const INITIAL_HEAD_BUFFER: usize = 4096;

/// Runs one admitted connection of an `http` listener to its end: the L7 act, then the
/// tunnel ([`connection`]).
pub(crate) fn serve(
    shared: Arc<Shared>,
    id: u64,
    listener: Arc<str>,
    tcp: TcpStream,
    peer: SocketAddr,
    admission: Admission,
) -> impl Future<Output = ()> {
    // The L7 act runs in its own boxed future, built here so that the socket and the peer's
    // address go into it, not into the connection's, and freed when it returns.
    let l7 = Box::pin(l7(Arc::clone(&shared), Arc::clone(&listener), tcp, peer));
    connection(shared, id, listener, admission, l7)
}

/// A connection's life after admission: its listener's first act (`act`: boxed, freed when
/// it returns), then, if it opened one, the tunnel (the L4 act): relayed until both sides are
/// done, or stopped, or handed over to a successor process (binary upgrade). `admission` is
/// held to the end.
///
/// This future is most of what an idle tunnel costs (its task), so it holds only what the
/// tunnel needs, in one async block: what a block captures it keeps for as long as it lives
/// (a nested block for the tunnel kept its own copies of the server, the id and the listener,
/// and its stream pair), and an async fn keeps each argument twice (rust-lang/rust#62958),
/// hence a plain fn returning a block that captures the act's box, not its arguments. (An
/// async fn also keeps every local that was ever borrowed until its end: the L7 act's state
/// inline here, even with its parts boxed, cost 0.7 KB per idle tunnel; see
/// docs/performance.md.)
#[allow(clippy::manual_async_fn)] // an `async move` block on purpose (see above)
pub(crate) fn connection<F, A>(
    shared: Arc<Shared>,
    id: u64,
    listener: Arc<str>,
    admission: A,
    act: Pin<Box<F>>,
) -> impl Future<Output = ()>
where
    F: Future<Output = Option<Ready>>,
{
    async move {
        let _live = shared.stats.connection();
        let Some(Ready {
            streams,
            started,
            guard,
            options,
            metrics,
            active,
            source,
        }) = act.await
        else {
            return;
        };
        let (_active, _source) = (active, source);
        let _tunnel = shared.stats.tunnel();
        // (Not `match &streams`: a local ever borrowed keeps its slot for the tunnel's life.)
        let (streams, [client_to_backend, backend_to_client]) = streams.with_delivered();
        // Drain (a reload removed the backend), shutdown and binary upgrades stop the tunnel
        // through its registration, which also lets the metrics count its bytes while it lives.
        let live = Arc::new(Live::continued(
            metrics.backend.clone(),
            client_to_backend,
            backend_to_client,
        ));
        // (Not `match streams`: a local partly moved out of keeps its slot too.)
        let mut tunnel = match streams.into_splice() {
            Ok(tunnel) => tunnel,
            Err(pair) => {
                let (client, backend) = unbox(pair);
                let registration = shared.tunnels.register(
                    id,
                    Arc::clone(guard.backend()),
                    Arc::clone(&live),
                    Portability::Never,
                );
                let report = sluice_splice::relay_copy(
                    client,
                    backend,
                    &options,
                    &live.traffic,
                    live.stopped(),
                )
                .await;
                drop(registration);
                return closed(&metrics, &guard, Origin::at(&listener, started), &report);
            }
        };
        let mut portability = Portability::Portable;
        let report = loop {
            let registration = shared.tunnels.register(
                id,
                Arc::clone(guard.backend()),
                Arc::clone(&live),
                portability,
            );
            // Scoped so that the relay's result does not stay in the future while the verdict
            // is awaited.
            let verdict = {
                let relayed = sluice_splice::resume(
                    unbox(tunnel),
                    &options,
                    &shared.pipes,
                    &live.traffic,
                    live.stopped(),
                )
                .await;
                let suspended = match relayed {
                    Relayed::Closed(report) => break report,
                    Relayed::Suspended(suspended) => suspended,
                };
                let meta =
                    crate::handoff::describe(&suspended, &guard, Origin::at(&listener, started));
                // Queued before leaving the registry: a handoff that finds no tunnel still
                // asked to suspend in the registry has every suspended one in its queue.
                let backend = Arc::clone(guard.backend());
                crate::handoff::hand_over(&shared, meta, backend, suspended)
            };
            drop(registration);
            match verdict.await {
                Ok(()) => {
                    debug!(backend = %guard.addr(), "tunnel handed over");
                    return;
                }
                Err(back) => {
                    // Rare (a handoff gave it back): boxed again, to be unboxed above.
                    #[allow(clippy::replace_box)] // the box was moved out of: nothing to reuse
                    {
                        tunnel = Box::new(back);
                    }
                    portability = Portability::Returned;
                }
            }
        };
        closed(&metrics, &guard, Origin::at(&listener, started), &report);
        drop(admission);
    }
}

/// What a listener's first act (L7 for `http`, the ClientHello for `tls-passthrough`) hands
/// to the tunnel.
pub(crate) struct Ready {
    pub(crate) streams: Streams,
    /// When the tunnel's relay started (in the first process that relayed it).
    pub(crate) started: Instant,
    pub(crate) guard: BackendGuard,
    pub(crate) options: Arc<RelayOptions>,
    pub(crate) metrics: TunnelMetrics,
    /// The listener's active-connections gauge, held until the connection ends.
    pub(crate) active: GaugeGuard,
    /// The client's place in its source's count, held until the connection ends.
    pub(crate) source: Option<Box<crate::sources::SourceGuard>>,
}

/// The L7 act of one connection: TLS, the handshake (or plain HTTP until an upgrade), the
/// backend's 101. `None` when the connection ended here (answered, rejected, stopped).
async fn l7(
    shared: Arc<Shared>,
    listener: Arc<str>,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Option<Ready> {
    let (shared, listener) = (&shared, &*listener);
    let accepted_at = Instant::now();
    let snapshot = shared.snapshot.load_full();
    let listener_metrics = snapshot.listener(listener).map(|l| l.metrics().clone());
    let active = listener_metrics
        .as_ref()
        .map_or_else(GaugeGuard::none, |m| GaugeGuard::new(&m.active));
    // The client: the PROXY header's source when the listener takes one; per-source limits.
    let runtime = snapshot.listener(listener)?;
    let is_tls = runtime.tls().is_some();
    let client = client::admit(
        shared,
        snapshot.config(),
        runtime,
        &mut tcp,
        peer,
        accepted_at,
    );
    let (addrs, source) = match Box::pin(client).await {
        Ok(client) => (client.addrs, client),
        Err(Refusal::Close) => return None,
        // A TLS client could read an answer only after a TLS handshake: the very work the
        // limit saves. It is closed, like L4 clients.
        Err(Refusal::TooMany { .. }) if is_tls => return None,
        Err(Refusal::TooMany { retry_after }) => {
            let error = HandshakeError::TooManyFromSource { retry_after };
            Box::pin(reject(&mut ClientStream::Plain(tcp), &error)).await;
            return None;
        }
    };
    // TLS termination first, within the handshake deadline, with this snapshot's certificates.
    let tls = snapshot
        .listener(listener)
        .and_then(|l| l.tls())
        .map(Arc::clone);
    let mut client = match tls {
        None => ClientStream::Plain(tcp),
        Some(config) => {
            // Boxed: the handshake state is large and must not grow every connection's future.
            let accept = Box::pin(tokio_rustls::TlsAcceptor::from(config).accept(tcp));
            let accepted = tokio::select! {
                accepted = tokio::time::timeout(snapshot.config().timeouts.handshake, accept) => accepted,
                () = shared.stop_tunnels.cancelled() => return None,
            };
            match accepted {
                Ok(Ok(tls)) => ClientStream::Tls(Box::new(tls)),
                Ok(Err(error)) => {
                    shared.stats.count_rejected();
                    if let Some(listener) = &listener_metrics {
                        listener.handshake("tls_failed", None);
                    }
                    debug!(%error, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    shared.stats.count_abandoned();
                    if let Some(listener) = &listener_metrics {
                        listener.handshake("tls_timeout", None);
                    }
                    debug!("TLS handshake timed out");
                    return None;
                }
            }
        }
    };
    // Shutdown's final deadline also ends handshakes still in flight.
    //
    // The L7 phases are boxed: an async fn's state is as large as its largest await, and these
    // (head buffers, response relays, lingering closes) are short-lived while the task lives as
    // long as its tunnel. Boxed, an idle tunnel's task holds only what the relay needs
    // (measured: 10.8 KiB of RSS per idle tunnel unboxed, 3.4 KiB boxed; docs/performance.md).
    let mut outcome = tokio::select! {
        outcome = Box::pin(handshake(&snapshot, listener, &mut client, addrs)) => outcome,
        () = shared.stop_tunnels.cancelled() => return None,
    };
    let mut snapshot = snapshot;
    if let Ok(Handshake::Plain { request, buf }) = outcome {
        // Plain HTTP at L7, request by request, until the connection ends or upgrades.
        drop(snapshot);
        let upgrade = tokio::select! {
            upgrade = Box::pin(http::serve(shared, listener, &mut client, addrs, request, buf)) => upgrade,
            () = shared.stop_tunnels.cancelled() => return None,
        };
        let UpgradeRequest {
            request,
            upgrade,
            early,
        } = upgrade?;
        snapshot = shared.snapshot.load_full();
        outcome = tokio::select! {
            outcome = Box::pin(upgrade_request(&snapshot, listener, &mut client, addrs, request, upgrade, early)) => outcome,
            () = shared.stop_tunnels.cancelled() => return None,
        };
    }
    // From here on the connection needs only what it holds: a reload may retire this snapshot.
    let tunnel_metrics = match &outcome {
        Ok(Handshake::Upgraded { guard, pool, .. }) => TunnelMetrics::of(&snapshot, *pool, guard),
        _ => None,
    };
    let relay_options = Arc::clone(snapshot.relay_options());
    let sockets = crate::health::TunnelSockets::of(snapshot.config());
    drop(snapshot);
    // `outcome` is moved out whole before the tunnel's await, so the future does not keep its
    // (large) slot for the tunnel's lifetime.
    let (backend, guard) = match outcome {
        Ok(Handshake::Upgraded { backend, guard, .. }) => (backend, guard),
        Ok(Handshake::Answered { status }) => {
            shared.stats.count_backend_failed();
            if let Some(listener) = &listener_metrics {
                listener.handshake("answered", Some(status));
            }
            debug!(status, "backend answered without upgrading; relayed");
            return None;
        }
        // Served above.
        Ok(Handshake::Plain { .. }) => return None,
        Err(error) => {
            let outcome = match error.side() {
                sluice_handshake::Side::Backend | sluice_handshake::Side::Internal => {
                    shared.stats.count_backend_failed();
                    warn!(reason = error.label(), %error, "handshake failed");
                    "backend_failed"
                }
                sluice_handshake::Side::Client if error.status().is_none() => {
                    shared.stats.count_abandoned();
                    debug!(reason = error.label(), %error, "client left during the handshake");
                    "abandoned"
                }
                sluice_handshake::Side::Client => {
                    shared.stats.count_rejected();
                    debug!(reason = error.label(), %error, "request rejected");
                    "rejected"
                }
            };
            if let Some(listener) = &listener_metrics {
                listener.handshake(outcome, error.status());
            }
            Box::pin(reject(&mut client, &error)).await;
            return None;
        }
    };
    shared.stats.count_upgraded();
    if let Some(listener) = &listener_metrics {
        listener.upgraded.increment(1);
        listener
            .handshake_duration
            .record(accepted_at.elapsed().as_secs_f64());
    }
    sockets.apply(client.tcp(), backend.tcp());
    let metrics = tunnel_metrics.unwrap_or_else(|| TunnelMetrics::unlisted(&guard));
    Some(Ready {
        streams: Streams::of(client, backend),
        started: Instant::now(),
        guard,
        options: relay_options,
        metrics,
        active,
        source: source.into_source(),
    })
}

/// How the L7 act ended when it did not fail.
enum Handshake {
    /// The backend answered 101; both sides are ready for the relay.
    Upgraded {
        backend: BackendStream,
        guard: BackendGuard,
        /// The router's index of the pool.
        pool: usize,
    },
    /// The backend answered something else, which was relayed to the client.
    Answered { status: u16 },
    /// A plain request, for the keep-alive loop of `http.rs`; `buf` holds what the client sent
    /// after its head.
    Plain { request: Request, buf: BytesMut },
}

/// The L7 act: read, parse, classify; then for an upgrade, the rest of it
/// ([`upgrade_request`]).
async fn handshake(
    snapshot: &Snapshot,
    listener: &str,
    client: &mut ClientStream,
    addrs: Addrs,
) -> Result<Handshake, HandshakeError> {
    let config = snapshot.config();
    let (timeouts, limits) = (config.timeouts, config.limits);
    // Reading: the whole head within the deadline and the byte limit.
    let deadline = Instant::now() + timeouts.handshake;
    let mut buf = BytesMut::with_capacity(INITIAL_HEAD_BUFFER.min(limits.max_head_bytes));
    let head_len = read_request_head(client, &mut buf, limits.max_head_bytes, deadline).await?;
    let early = buf.split_off(head_len);
    let request = parse_request(buf.freeze(), limits.max_headers)?;
    match classify(&request)? {
        RequestKind::WebSocket(upgrade) => {
            upgrade_request(snapshot, listener, client, addrs, request, upgrade, early).await
        }
        RequestKind::Plain => Ok(Handshake::Plain {
            request,
            buf: early,
        }),
    }
}

/// The L7 act of a WebSocket upgrade, from its parsed request: route, pick, connect, forward,
/// read the answer.
async fn upgrade_request(
    snapshot: &Snapshot,
    listener: &str,
    client: &mut ClientStream,
    addrs: Addrs,
    request: Request,
    upgrade: WebSocketUpgrade,
    early: BytesMut,
) -> Result<Handshake, HandshakeError> {
    let config = snapshot.config();
    let (timeouts, limits) = (config.timeouts, config.limits);
    let listener = snapshot
        .listener(listener)
        .ok_or(HandshakeError::ListenerGone)?;

    // Routed.
    let pool_index = listener.router().route(&request)?;
    let pool = snapshot
        .pool(pool_index)
        .ok_or(HandshakeError::ListenerGone)?;
    let peer_ip = canonical(addrs.client.ip());
    let mut forwarded = Vec::with_capacity(request.head_bytes().len() + 128 + early.len());
    // The pool's PROXY header opens the backend connection, before TLS and the head.
    let mut preface = Vec::new();
    if let Some(version) = config
        .pools
        .get(pool_index)
        .and_then(|p| p.send_proxy_protocol)
    {
        let local = addrs.local(client.tcp());
        crate::proxy_protocol::write(version, addrs.client, local, &mut preface);
    }
    write_forwarded_request(
        &request,
        &ClientInfo {
            addr: peer_ip,
            tls: client.is_tls(),
            trusted: listener.trusts(peer_ip),
        },
        &mut forwarded,
    );
    // Bytes the client sent after its head (a first WebSocket frame) follow it unchanged.
    forwarded.extend_from_slice(&early);
    drop(early);

    // Picked: by the affinity cookie, the hash key, or the pool's algorithm.
    let key = pool
        .hash_key()
        .and_then(|k| affinity_key(&request, k, peer_ip));
    let affinity = Affinity {
        cookie: pool.sticky_cookie().and_then(|c| cookie(&request, &c.name)),
        key: key.as_ref().map(|k| k.as_bytes()),
    };

    // Connected.
    let Connected {
        stream: mut backend,
        guard,
        set_cookie,
        took,
    } = connect(
        pool,
        &Dial {
            source_addrs: snapshot.source_addrs(pool_index),
            preface: &preface,
            tls: snapshot.upstream(pool_index).map(AsRef::as_ref),
        },
        affinity,
        timeouts.connect,
    )
    .await?;
    if let Some(metrics) = snapshot.pool_metrics(pool_index) {
        metrics.connect_duration.record(took.as_secs_f64());
    }
    backend
        .write_all(&forwarded)
        .await
        .map_err(|source| HandshakeError::BackendIo {
            backend: Some(guard.addr()),
            source,
        })?;
    drop(forwarded);

    // The backend's answer. Interim answers (100, 103) are relayed as they come; the final
    // one decides.
    let mut answer = BytesMut::with_capacity(INITIAL_HEAD_BUFFER.min(limits.max_head_bytes));
    let response_deadline = Instant::now() + timeouts.response;
    let response = loop {
        let response = read_response_head(
            &mut backend,
            &mut answer,
            limits.max_head_bytes,
            response_deadline,
        )
        .await
        .map_err(|e| {
            // Passive checks: a backend that never answers counts like one that refuses.
            if matches!(e, HandshakeError::BackendResponseTimeout { .. }) {
                crate::health::connect_failed(pool, guard.backend(), "response_timeout");
            }
            e.with_backend(guard.addr())
        })?;
        crate::health::answered(guard.backend());
        if !response.is_interim() {
            break response;
        }
        let interim = answer.split_to(response.head_len());
        write_answer(client, &interim).await?;
    };
    if response.status() == 101 {
        upgrade
            .check_response(&response)
            .map_err(|e| e.with_backend(guard.addr()))?;
        // The 101 head and any bytes the backend sent after it, as they came, plus the affinity
        // cookie when the pool sets one and the client does not have this backend's.
        match (set_cookie, pool.sticky_cookie()) {
            (Some(token), Some(sticky)) => {
                let mut lines = Vec::with_capacity(128);
                write_set_cookie(sticky, token.as_str(), &mut lines);
                let (head, rest) = answer.split_at(response.head_len().min(answer.len()));
                let mut out = Vec::with_capacity(answer.len() + lines.len());
                insert_response_headers(head, &lines, &mut out);
                out.extend_from_slice(rest);
                write_answer(client, &out).await?;
            }
            _ => write_answer(client, &answer).await?,
        }
        return Ok(Handshake::Upgraded {
            backend,
            guard,
            pool: pool_index,
        });
    }
    let body_read = answer.len().saturating_sub(response.head_len());
    let body_left = response
        .content_length()
        .map(|length| length.saturating_sub(body_read as u64));
    // Boxed: its 8 KiB chunk buffer would otherwise be part of every handshake's future (the
    // future was 10.3 KB, copied into its box and allocated for each connection, for an answer
    // that only non-upgrading backends give).
    Box::pin(relay_answer(
        client,
        &mut backend,
        &answer,
        body_left,
        response_deadline,
    ))
    .await;
    Ok(Handshake::Answered {
        status: response.status(),
    })
}

/// A backend connection ready for the request.
pub(crate) struct Connected {
    pub(crate) stream: BackendStream,
    pub(crate) guard: BackendGuard,
    /// The affinity cookie to give the client, when the pool sets one.
    pub(crate) set_cookie: Option<Token>,
    /// How long the successful attempt took.
    pub(crate) took: Duration,
}

/// Tries the pool's candidates in order until one accepts the connection (TCP from the next
/// source address, the preface, then TLS when the pool has `tls`: `dial`). Refusals, connect
/// timeouts and failed TLS handshakes move on to the next candidate; the last failure is the
/// answer.
pub(crate) async fn connect(
    pool: &Pool,
    dial: &Dial<'_>,
    affinity: Affinity<'_>,
    timeout: Duration,
) -> Result<Connected, HandshakeError> {
    let mut picker = pool.picker_for(affinity);
    let mut last_error = None;
    while let Some(guard) = picker.next_backend() {
        let addr = guard.addr();
        let started = Instant::now();
        match crate::pool::connect(dial, addr, timeout).await {
            Ok(stream) => {
                debug!(
                    backend = %addr,
                    pool = pool.name(),
                    placement = picker.placement().map_or("", |p| p.label()),
                    tls = stream.is_tls(),
                    "connected"
                );
                return Ok(Connected {
                    stream,
                    guard,
                    set_cookie: picker.cookie_to_set().copied(),
                    took: started.elapsed(),
                });
            }
            // A local shortage, not the backend's fault: no other backend would fare better.
            Err(error @ HandshakeError::DescriptorsExhausted) => return Err(error),
            Err(error) => {
                crate::health::connect_failed(
                    pool,
                    guard.backend(),
                    crate::pool::failure_reason(&error),
                );
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| HandshakeError::NoBackend {
        pool: pool.name().to_owned(),
    }))
}

/// What a tunnel relays. Boxed: the tunnel's future keeps what it was given for as long as it
/// lives, so it is given 16 bytes, and the streams move out of the box when the relay starts.
pub(crate) enum Streams {
    /// Two plain sockets, spliced: a binary upgrade can hand the tunnel over. New (nothing
    /// moved yet) or handed over by a predecessor (bytes in flight, counts, timers).
    Splice(Box<Suspended>),
    /// TLS on a side (terminated from the client, originated to the backend): bytes are
    /// encrypted or decrypted in user space, so the tunnel copies, and stays in this process.
    Copy(Box<(ClientStream, BackendStream)>),
}

impl Streams {
    /// The streams, and the bytes they delivered each way before this process relays them
    /// (a tunnel handed over by a predecessor), client to backend first.
    fn with_delivered(self) -> (Self, [u64; 2]) {
        let delivered = match &self {
            Self::Splice(t) => [
                t.client_to_backend.delivered(),
                t.backend_to_client.delivered(),
            ],
            Self::Copy(_) => [0, 0],
        };
        (self, delivered)
    }

    /// The tunnel to splice, or the streams to copy.
    #[allow(clippy::type_complexity)] // the two variants' payloads, as they are
    fn into_splice(self) -> Result<Box<Suspended>, Box<(ClientStream, BackendStream)>> {
        match self {
            Self::Splice(tunnel) => Ok(tunnel),
            Self::Copy(pair) => Err(pair),
        }
    }

    pub(crate) fn of(client: ClientStream, backend: BackendStream) -> Self {
        match (client, backend) {
            (ClientStream::Plain(client), BackendStream::Plain(backend)) => {
                Self::Splice(Box::new(Suspended::new(client, backend)))
            }
            (client, backend) => Self::Copy(Box::new((client, backend))),
        }
    }
}

/// Where a tunnel came from, for a successor that takes it over. Built where it is used
/// (kept, it would be one more slot in every tunnel's future).
#[derive(Clone, Copy)]
pub(crate) struct Origin<'a> {
    /// The listener that accepted its client.
    pub(crate) listener: &'a str,
    /// When its relay started (in the first process that relayed it).
    pub(crate) started: Instant,
}

impl<'a> Origin<'a> {
    pub(crate) fn at(listener: &'a str, started: Instant) -> Self {
        Self { listener, started }
    }
}

/// The value of a box, the box freed now (`*boxed` would keep the allocation until the box
/// variable's scope ends: for a tunnel, its whole life).
#[allow(clippy::boxed_local)] // taking the box is the point
fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// Counts and logs a closed tunnel.
fn closed(metrics: &TunnelMetrics, guard: &BackendGuard, origin: Origin<'_>, report: &RelayReport) {
    metrics.pool.tunnel_closed(report.closed_by.label());
    metrics
        .pool
        .tunnel_duration
        .record(origin.started.elapsed().as_secs_f64());
    debug!(
        backend = %guard.addr(),
        closed_by = report.closed_by.label(),
        client_to_backend = report.client_to_backend,
        backend_to_client = report.backend_to_client,
        spliced = report.spliced_bytes,
        copied = report.copied_bytes,
        duration = ?report.duration,
        "tunnel closed"
    );
}

/// Writes bytes the client must see before anything else; a client that cannot take them is gone.
async fn write_answer(client: &mut ClientStream, bytes: &[u8]) -> Result<(), HandshakeError> {
    match tokio::time::timeout(ANSWER_WRITE_TIMEOUT, client.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(HandshakeError::ClientClosed),
    }
}

/// Relays a backend's non-101 answer (head already read, maybe part of the body) to the client:
/// `body_left` bytes more when its Content-Length says so, else until the backend closes;
/// bounded by `deadline`.
async fn relay_answer(
    client: &mut ClientStream,
    backend: &mut BackendStream,
    head_and_more: &[u8],
    body_left: Option<u64>,
    deadline: Instant,
) {
    if write_answer(client, head_and_more).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout_at(deadline, async {
        let mut chunk = [0u8; 8192];
        let mut left = body_left;
        loop {
            if left == Some(0) {
                break;
            }
            let want = left.map_or(chunk.len(), |l| {
                usize::try_from(l).unwrap_or(usize::MAX).min(chunk.len())
            });
            let Some(buf) = chunk.get_mut(..want) else {
                break;
            };
            match backend.read(buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if client
                        .write_all(buf.get(..n).unwrap_or_default())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    left = left.map(|l| l.saturating_sub(n as u64));
                }
            }
        }
    })
    .await;
    let _ = client.shutdown().await;
}

/// Answers a failed handshake (when the error has an answer) and closes the connection gently:
/// after the answer, what the client still sends is read and dropped for a moment, so that the
/// close does not reset the connection before the client has read the answer.
pub(crate) async fn reject(client: &mut ClientStream, error: &HandshakeError) {
    let Some(answer) = error_response(error) else {
        return;
    };
    if write_answer(client, &answer).await.is_err() {
        return;
    }
    linger(client).await;
}

/// Closes the connection gently after the last answer: half-closes, then reads and drops what
/// the client still sends for a moment (at most [`LINGER`] and [`LINGER_BYTES`]).
pub(crate) async fn linger(client: &mut ClientStream) {
    if client.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        let mut drained = 0usize;
        while drained < LINGER_BYTES {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// The metric handles a tunnel records into, resolved from the snapshot before it is dropped.
pub(crate) struct TunnelMetrics {
    pool: Arc<PoolMetrics>,
    backend: Arc<BackendMetrics>,
}

impl TunnelMetrics {
    pub(crate) fn of(snapshot: &Snapshot, pool: usize, guard: &BackendGuard) -> Option<Self> {
        Some(Self {
            pool: snapshot.pool_metrics(pool)?.clone(),
            backend: snapshot.backend_metrics(pool, guard.addr())?.clone(),
        })
    }

    /// Handles for a backend the snapshot does not list (it cannot happen: the guard came from
    /// that snapshot's pool); kept so that a tunnel never goes uncounted.
    pub(crate) fn unlisted(guard: &BackendGuard) -> Self {
        Self {
            pool: Arc::new(PoolMetrics::new("unlisted")),
            backend: Arc::new(BackendMetrics::new("unlisted", &guard.addr().to_string())),
        }
    }
}

/// One unit of a metrics gauge, given back on drop.
pub(crate) struct GaugeGuard(sluice_metrics::Gauge);

impl GaugeGuard {
    pub(crate) fn new(gauge: &sluice_metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge.clone())
    }

    /// A guard of no gauge (a listener a snapshot no longer lists): 16 bytes like any other,
    /// where an `Option` of a guard takes 24.
    pub(crate) fn none() -> Self {
        Self(sluice_metrics::Gauge::noop())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server with listener `a` routing to pool `p`, for the size tests.
    fn one_listener_server() -> crate::Server {
        let config = sluice_config::parse(
            "[[listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\nlistener = \"a\"\npool = \"p\"\n\
             [pools.p]\nbackends = [\"127.0.0.1:1\"]\n",
            "t.toml",
        )
        .unwrap();
        crate::Server::new(config)
    }

    /// An idle tunnel's memory is mostly its connection task: pin the size of the future
    /// `serve` returns, so that an L7 change cannot grow every idle tunnel unnoticed (a local
    /// kept across the tunnel's await, an async fn holding its arguments twice, a value an
    /// async block captured, borrowed or partly moved out of: each keeps its slot). tokio lays
    /// a task out in 128-byte steps (its header and the future's cell are cache-line aligned),
    /// so bytes count by the step: a future of up to 744 bytes (release) makes a task of
    /// 1,024, one of 745 a task of 1,152. Measured 752 bytes (dev profile, x86_64; 736 in
    /// release, every listener kind and adopted tunnels alike); 1,456 before the hand-written
    /// relay future, the registry's stop signal and the trimmed captures (task: 1,792 bytes);
    /// 2,048 with the L7 act inline, when massif counted 3,266 bytes per connection task
    /// (docs/performance.md).
    #[tokio::test]
    async fn serve_future_size_is_pinned() {
        let server = one_listener_server();
        let shared = Arc::clone(&server.shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_accepted, peer) = listener.accept().await.unwrap();
        let permit = Arc::clone(&shared.connections).try_acquire_owned().unwrap();
        let admission = crate::accept::Admission::for_tests(permit);
        let serve = serve(Arc::clone(&shared), 1, Arc::from("a"), tcp, peer, admission);
        let size = std::mem::size_of_val(&serve);
        assert!(
            size <= 752,
            "the connection future grew to {size} bytes (pinned at 752)"
        );
    }

    /// Every connection allocates its handshake's future (boxed in `l7`) and copies it there:
    /// pin its size, so that a rare path's buffer cannot land in it unnoticed (the 8 KiB chunk
    /// of `relay_answer`, inline, made it 10.3 KB; boxed: 2,768 bytes, dev profile, x86_64).
    #[tokio::test]
    async fn handshake_future_size_is_pinned() {
        let server = one_listener_server();
        let snapshot = server.shared.snapshot.load_full();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = ClientStream::Plain(TcpStream::connect(addr).await.unwrap());
        let addrs = Addrs {
            client: addr,
            local: None,
        };
        let handshake = handshake(&snapshot, "a", &mut client, addrs);
        let size = std::mem::size_of_val(&handshake);
        assert!(
            size <= 3072,
            "the handshake future grew to {size} bytes (pinned at 3,072)"
        );
    }
}
