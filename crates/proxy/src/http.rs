//! Plain HTTP/1.1 at L7: requests that do not ask for a WebSocket upgrade (pages, health
//! checks, the long-polling transports of Socket.IO/engine.io and SockJS), proxied request by
//! request over a keep-alive client connection.
//!
//! The connection pipeline (`conn.rs`) hands over the first plain request; this loop serves it
//! and the requests that follow on the same connection, each routed and balanced on its own
//! with the same rules, sticky keys and affinity cookie as upgrades, over backend connections
//! kept alive in the idle pool (`pool.rs`). A request that asks for a WebSocket upgrade ends
//! the loop: it goes back to the upgrade path, and from a `101` to the L4 relay.
//!
//! One exchange, in order (see `LIFECYCLE.md`):
//!
//! 1. route, then decide the request body's framing (501 for a transfer coding other than
//!    `chunked`, 413 for a `Content-Length` over `limits.max_body_bytes`), and decode the body
//!    bytes that came with the head on a dry run: a malformed chunked body that arrived whole
//!    is refused (400) before any backend sees a byte;
//! 2. take a backend connection (idle one, or connect: `connect_attempts` candidates);
//! 3. forward the head (hop-by-hop fields removed, framing regenerated, `X-Forwarded-*`);
//! 4. at once, side by side: stream the request body to the backend (decoded, re-encoded,
//!    bounded buffer, `timeouts.body_stall` per read and write) and read the response head
//!    (`timeouts.response` from the end of the request body). Interim answers (`100
//!    Continue` for `Expect: 100-continue`, `103`) are relayed to HTTP/1.1 clients;
//! 5. write the response head (hop-by-hop fields removed, framing, `Set-Cookie` when the pool
//!    sets an affinity cookie, `Connection: close` when this is the last exchange), then
//!    stream its body (by length, chunks, or until the backend closes: re-chunked for HTTP/1.1
//!    clients so their connection stays usable);
//! 6. give the backend connection back to the idle pool only when both messages ended exactly
//!    where their framing said and the backend keeps it alive; keep the client connection only
//!    when the client and the backend both allow it and nothing is left unread.
//!
//! A pooled connection the backend closed under us (no byte of the answer came) is replaced by
//! a new connection to the same backend and the request sent again, once, when the method is
//! idempotent and the request has no body (a body has been streamed and cannot be replayed).
//! Any other failure after the head was forwarded is answered (502/504) if the client has not
//! had a response head yet, and the connection is closed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use sluice_balance::Affinity;
use sluice_handshake::{
    BodyFraming, BodyLimits, ClientInfo, Encoding, FramingFields, HandshakeError, Request,
    RequestKind, ResponseHead, Side, WebSocketUpgrade, affinity_key, classify, cookie, copy_body,
    framing_lines, parse_request, precheck_body, read_request_head, read_response_head,
    write_plain_request, write_plain_response, write_set_cookie,
};
use sluice_tls::BackendStream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::Shared;
use crate::client::Addrs;
use crate::conn::{linger, reject};
use crate::pool::{self, Dial, Lease};
use crate::snapshot::{Snapshot, canonical};
use crate::stream::ClientStream;

/// A WebSocket upgrade that arrived on a keep-alive connection, for the upgrade path.
#[derive(Debug)]
pub(crate) struct UpgradeRequest {
    pub(crate) request: Request,
    pub(crate) upgrade: WebSocketUpgrade,
    /// Bytes the client sent after the upgrade's head.
    pub(crate) early: BytesMut,
}

/// Serves `request` (plain, already read, with `buf` holding what the client sent after its
/// head) and the requests after it on the same connection. Returns a WebSocket upgrade met on
/// the way, for the caller to carry out; `None` once the connection is done (closed here).
pub(crate) async fn serve(
    shared: &Shared,
    listener: &str,
    client: &mut ClientStream,
    addrs: Addrs,
    mut request: Request,
    mut buf: BytesMut,
) -> Option<UpgradeRequest> {
    // Heads and bodies go out as separate writes: the accept loop set TCP_NODELAY, so no Nagle
    // delay falls between them.
    loop {
        let started = Instant::now();
        let snapshot = shared.snapshot.load_full();
        let mut routed = None;
        let result = exchange(
            shared,
            &snapshot,
            listener,
            client,
            addrs,
            &request,
            &mut buf,
            &mut routed,
        )
        .await;
        // Requests that reached a pool, by status class (those refused before routing are in
        // the listener's handshake counters).
        let counted = match &result {
            Ok(done) => Some(done.status),
            Err(Failed { error, answered }) => error.status().filter(|_| !answered),
        };
        if let Some((metrics, status)) = routed
            .and_then(|index| snapshot.pool_metrics(index))
            .zip(counted)
        {
            metrics.http_request(status);
            metrics
                .http_request_duration
                .record(started.elapsed().as_secs_f64());
        }
        drop(snapshot);
        match result {
            Ok(done) => {
                shared.stats.count_http(done.status, started.elapsed());
                debug!(
                    method = request.method(),
                    status = done.status,
                    keep_alive = done.keep_alive,
                    duration = ?started.elapsed(),
                    "plain request served"
                );
                if !done.keep_alive {
                    linger(client).await;
                    return None;
                }
            }
            Err(Failed { error, answered }) => {
                // Counted when sluice answers; a response cut short after its head is not.
                if let Some(status) = error.status().filter(|_| !answered) {
                    shared.stats.count_http(status, started.elapsed());
                }
                log_failure(shared, &error, answered);
                if answered {
                    let _ = client.shutdown().await;
                } else {
                    reject(client, &error).await;
                }
                return None;
            }
        }
        match next_request(shared, client, &mut buf).await {
            Next::Plain(next) => request = next,
            Next::Upgrade(upgrade) => return Some(upgrade),
            Next::Done => return None,
        }
    }
}

/// What ends the wait for the next request on a keep-alive connection.
enum Next {
    Plain(Request),
    Upgrade(UpgradeRequest),
    /// Closed: idle timeout, shutdown, the client left, or an answered error.
    Done,
}

/// Waits for the next request: its first byte within `timeouts.client_idle` (or already
/// buffered, pipelined), then its whole head within `timeouts.handshake`.
async fn next_request(shared: &Shared, client: &mut ClientStream, buf: &mut BytesMut) -> Next {
    let (timeouts, limits) = {
        let snapshot = shared.snapshot.load();
        (snapshot.config().timeouts, snapshot.config().limits)
    };
    if buf.is_empty() {
        let waited = tokio::select! {
            readable = tokio::time::timeout(timeouts.client_idle, client.readable()) => readable,
            () = shared.closing.cancelled() => {
                debug!("shutting down: idle keep-alive connection closed");
                let _ = client.shutdown().await;
                return Next::Done;
            }
        };
        if waited.is_err() {
            debug!("keep-alive connection idle: closed");
            let _ = client.shutdown().await;
            return Next::Done;
        }
    }
    let deadline = Instant::now() + timeouts.handshake;
    let read = async {
        let head_len = read_request_head(client, buf, limits.max_head_bytes, deadline).await?;
        let head = buf.split_to(head_len).freeze();
        let request = parse_request(head, limits.max_headers)?;
        let kind = classify(&request)?;
        Ok::<_, HandshakeError>((request, kind))
    };
    match read.await {
        Ok((request, RequestKind::Plain)) => Next::Plain(request),
        Ok((request, RequestKind::WebSocket(upgrade))) => Next::Upgrade(UpgradeRequest {
            request,
            upgrade,
            early: std::mem::take(buf),
        }),
        Err(HandshakeError::ClientClosed) if buf.is_empty() => {
            debug!("client closed its keep-alive connection");
            Next::Done
        }
        Err(error) => {
            log_failure(shared, &error, false);
            reject(client, &error).await;
            Next::Done
        }
    }
}

/// A request answered in full.
struct Done {
    status: u16,
    /// The client connection may carry the next request.
    keep_alive: bool,
}

/// A request that failed.
struct Failed {
    error: HandshakeError,
    /// The client already had the response head: nothing more can be answered.
    answered: bool,
}

impl From<HandshakeError> for Failed {
    fn from(error: HandshakeError) -> Self {
        Failed {
            error,
            answered: false,
        }
    }
}

/// Everything one exchange needs to know, decided before the backend is involved.
struct Plan<'a> {
    request: &'a Request,
    framing: BodyFraming,
    head: Vec<u8>,
    body_limits: BodyLimits,
    response_timeout: Duration,
    max_head_bytes: usize,
    /// `Set-Cookie` line(s) for the response, when the pool sets an affinity cookie.
    set_cookie: Vec<u8>,
    /// This is the last exchange of the connection whatever the answer (the client asked).
    close: bool,
    /// Cancelled when sluice starts shutting down: an answer whose head goes out after that
    /// says `Connection: close`.
    closing: &'a CancellationToken,
}

/// One request, routed, forwarded and answered.
// The client side (connection, peer, listener), the request (head, bytes after it) and where to
// say which pool it reached: splitting them into structs would only rename the same eight.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    shared: &Shared,
    snapshot: &Snapshot,
    listener: &str,
    client: &mut ClientStream,
    addrs: Addrs,
    request: &Request,
    buf: &mut BytesMut,
    routed: &mut Option<usize>,
) -> Result<Done, Failed> {
    let config = snapshot.config();
    let (timeouts, limits) = (config.timeouts, config.limits);
    let listener = snapshot
        .listener(listener)
        .ok_or(HandshakeError::ListenerGone)?;
    let pool_index = listener.router().route(request)?;
    *routed = Some(pool_index);
    let pool = snapshot
        .pool(pool_index)
        .ok_or(HandshakeError::ListenerGone)?;
    let pool_config = config.pool(pool.name());
    let tls = snapshot.upstream(pool_index).map(AsRef::as_ref);
    let framing = BodyFraming::request(request)?;
    precheck_body(framing, buf, limits.max_body_bytes, limits.max_head_bytes)?;

    let peer_ip = canonical(addrs.client.ip());
    let fields = match framing {
        BodyFraming::Length(length) => FramingFields::Length(length),
        BodyFraming::Chunked => FramingFields::Chunked,
        BodyFraming::None | BodyFraming::Close => FramingFields::Omit,
    };
    let mut head = Vec::with_capacity(request.head_bytes().len() + 160);
    // A pool that sends the PROXY header opens a connection per request (a pooled connection's
    // header would name another client) that starts with the header, before TLS and the head.
    let send_proxy = pool_config.and_then(|p| p.send_proxy_protocol);
    let mut preface = Vec::new();
    if let Some(version) = send_proxy {
        let local = addrs.local(client.tcp());
        crate::proxy_protocol::write(version, addrs.client, local, &mut preface);
    }
    write_plain_request(
        request,
        &ClientInfo {
            addr: peer_ip,
            tls: client.is_tls(),
            trusted: listener.trusts(peer_ip),
        },
        &framing_lines(fields),
        &mut head,
    );

    let key = pool
        .hash_key()
        .and_then(|k| affinity_key(request, k, peer_ip));
    let affinity = Affinity {
        cookie: pool.sticky_cookie().and_then(|c| cookie(request, &c.name)),
        key: key.as_ref().map(|k| k.as_bytes()),
    };
    let dial = Dial {
        source_addrs: snapshot.source_addrs(pool_index),
        preface: &preface,
        tls,
    };
    let Lease {
        mut stream,
        guard,
        set_cookie,
        reused,
    } = shared
        .idle
        .checkout(pool, &dial, affinity, timeouts.connect)
        .await?;
    let addr = guard.addr();
    if reused {
        shared.stats.count_backend_reused();
    }
    let mut plan = Plan {
        request,
        framing,
        head,
        body_limits: BodyLimits {
            stall: timeouts.body_stall,
            max_bytes: limits.max_body_bytes,
            max_trailer_bytes: limits.max_head_bytes,
        },
        response_timeout: timeouts.response,
        max_head_bytes: limits.max_head_bytes,
        set_cookie: Vec::new(),
        close: request.wants_close(),
        closing: &shared.closing,
    };
    if let (Some(token), Some(sticky)) = (set_cookie, pool.sticky_cookie()) {
        write_set_cookie(sticky, token.as_str(), &mut plan.set_cookie);
    }

    let mut outcome = forward(&plan, client, buf, &mut stream, addr).await;
    let retryable = reused && request.is_idempotent() && framing.is_empty();
    if let Err(Attempt::Stale(error)) = &outcome {
        if retryable {
            debug!(backend = %addr, %error, "pooled connection closed by the backend; sending again");
            shared.stats.count_stale_retry();
            stream = match pool::connect(&dial, addr, timeouts.connect).await {
                Ok(stream) => stream,
                Err(error) => {
                    if !matches!(error, HandshakeError::DescriptorsExhausted) {
                        crate::health::connect_failed(
                            pool,
                            guard.backend(),
                            pool::failure_reason(&error),
                        );
                    }
                    return Err(error.into());
                }
            };
            outcome = forward(&plan, client, buf, &mut stream, addr).await;
        }
    }
    plan.head.clear();
    // Passive checks: an answer that came is a success; one that did not come in time counts
    // like a refused connect, as for upgrades.
    match &outcome {
        Ok(_) | Err(Attempt::AfterHead(_)) => crate::health::answered(guard.backend()),
        Err(Attempt::Failed(HandshakeError::BackendResponseTimeout { .. })) => {
            crate::health::connect_failed(pool, guard.backend(), "response_timeout");
        }
        Err(_) => {}
    }
    match outcome {
        Ok(exchanged) => {
            if exchanged.backend_reusable && guard.backend().is_available() && send_proxy.is_none()
            {
                if let Some(pool_config) = pool_config {
                    shared.idle.put(
                        pool.name(),
                        addr,
                        tls,
                        stream,
                        pool_config.idle_connections,
                        pool_config.idle_timeout,
                    );
                }
            }
            drop(guard);
            Ok(Done {
                status: exchanged.status,
                keep_alive: exchanged.client_keep_alive,
            })
        }
        Err(Attempt::Stale(error) | Attempt::Failed(error)) => Err(Failed {
            error,
            answered: false,
        }),
        Err(Attempt::AfterHead(error)) => Err(Failed {
            error,
            answered: true,
        }),
    }
}

/// How one attempt at an exchange ended, when it failed.
enum Attempt {
    /// Nothing came back from a connection that may have been closed before the request
    /// reached the backend: the request may be sent again (when it is safe to).
    Stale(HandshakeError),
    /// Failed before the client had a response head: answer with the error.
    Failed(HandshakeError),
    /// Failed after the response head went out: close.
    AfterHead(HandshakeError),
}

/// A successful exchange on one backend connection.
struct Exchanged {
    status: u16,
    client_keep_alive: bool,
    backend_reusable: bool,
}

/// The response side's result.
struct Answered {
    status: u16,
    /// The response head said `Connection: close` to the client.
    close_client: bool,
    /// The backend's connection ended in sync: keep-alive, framed, nothing extra.
    backend_reusable: bool,
}

/// Sends the head, then the body beside reading and relaying the answer.
async fn forward(
    plan: &Plan<'_>,
    client: &mut ClientStream,
    buf: &mut BytesMut,
    backend: &mut BackendStream,
    addr: SocketAddr,
) -> Result<Exchanged, Attempt> {
    let io = |source| HandshakeError::BackendIo {
        backend: Some(addr),
        source,
    };
    match tokio::time::timeout(plan.body_limits.stall, backend.write_all(&plan.head)).await {
        Ok(Ok(())) => {}
        Ok(Err(source)) => return Err(Attempt::Stale(io(source))),
        Err(_) => {
            return Err(Attempt::Failed(HandshakeError::BackendBodyTimeout {
                backend: Some(addr),
            }));
        }
    }

    let (mut client_read, mut client_write) = tokio::io::split(&mut *client);
    let (mut backend_read, mut backend_write) = backend.split();
    let sent = AtomicU64::new(0);
    let upload_done = AtomicBool::new(false);
    let head_received = AtomicBool::new(false);
    let head_sent = AtomicBool::new(false);
    let encoding = if plan.framing == BodyFraming::Chunked {
        Encoding::Chunked
    } else {
        Encoding::Identity
    };

    let upload = async {
        let result = copy_body(
            &mut client_read,
            buf,
            &mut backend_write,
            plan.framing,
            encoding,
            &plan.body_limits,
            &sent,
        )
        .await;
        upload_done.store(true, Ordering::Relaxed);
        result
    };
    let progress = Progress {
        sent: &sent,
        upload_done: &upload_done,
        head_received: &head_received,
        head_sent: &head_sent,
    };
    let download = respond(plan, &mut backend_read, &mut client_write, addr, &progress);
    tokio::pin!(upload, download);
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let response_timer = tokio::time::sleep_until(far);
    tokio::pin!(response_timer);

    let mut uploaded: Option<Result<u64, HandshakeError>> = None;
    let answered = loop {
        tokio::select! {
            result = &mut upload, if uploaded.is_none() => {
                let result = result.map_err(|e| HandshakeError::from_request_body(e, addr));
                // The response timeout counts from the end of the request. When the backend
                // stopped taking the body, its answer (a 413, a 401) may explain why: wait for
                // it, as long. When the client failed (malformed body, stall, gone), no answer
                // is awaited.
                let client_failed = matches!(&result, Err(e) if e.side() != Side::Backend);
                uploaded = Some(result);
                if client_failed {
                    break Err(());
                }
                response_timer
                    .as_mut()
                    .reset(Instant::now() + plan.response_timeout);
            }
            answered = &mut download => break Ok(answered),
            () = &mut response_timer, if !head_received.load(Ordering::Relaxed) => {
                return Err(Attempt::Failed(HandshakeError::BackendResponseTimeout {
                    backend: Some(addr),
                }));
            }
        }
    };
    let after = if head_sent.load(Ordering::Relaxed) {
        Attempt::AfterHead
    } else {
        Attempt::Failed
    };
    let answered = match answered {
        Ok(Ok(answered)) => answered,
        Ok(Err(DownloadError::Stale(error))) if sent.load(Ordering::Relaxed) == 0 => {
            return Err(Attempt::Stale(error));
        }
        Ok(Err(DownloadError::Stale(error) | DownloadError::Failed(error))) => {
            return Err(after(error));
        }
        Err(()) => {
            let error = match uploaded {
                Some(Err(error)) => error,
                _ => HandshakeError::ClientClosed,
            };
            return Err(after(error));
        }
    };
    // The answer is complete. The request body, if still coming, is finished unless the answer
    // told the client to close (then it is dropped with the connection).
    let uploaded = match uploaded {
        Some(result) => result,
        None if answered.close_client => Err(HandshakeError::ClientClosed),
        None => upload
            .await
            .map_err(|e| HandshakeError::from_request_body(e, addr)),
    };
    let upload_ok = uploaded.is_ok();
    if let Err(error) = &uploaded {
        if !answered.close_client {
            debug!(backend = %addr, %error, "request body did not complete after the answer");
        }
    }
    Ok(Exchanged {
        status: answered.status,
        client_keep_alive: !answered.close_client && upload_ok,
        backend_reusable: answered.backend_reusable && upload_ok,
    })
}

/// What the response side sees of the request side, and shows it.
struct Progress<'a> {
    /// Request body bytes taken from the client so far.
    sent: &'a AtomicU64,
    upload_done: &'a AtomicBool,
    head_received: &'a AtomicBool,
    head_sent: &'a AtomicBool,
}

enum DownloadError {
    /// The backend closed or reset before a single byte of the answer.
    Stale(HandshakeError),
    Failed(HandshakeError),
}

/// Reads the answer (relaying interim ones), writes its head, streams its body.
async fn respond<R, W>(
    plan: &Plan<'_>,
    backend: &mut R,
    client: &mut W,
    addr: SocketAddr,
    progress: &Progress<'_>,
) -> Result<Answered, DownloadError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let failed = |e: HandshakeError| DownloadError::Failed(e.with_backend(addr));
    let stall = plan.body_limits.stall;
    let client_is_11 = plan.request.version() == 1;
    let mut answer = BytesMut::with_capacity(4096);
    let mut continued = false;
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let response: ResponseHead = loop {
        let response =
            match read_response_head(backend, &mut answer, plan.max_head_bytes, far).await {
                Ok(response) => response,
                Err(
                    e @ (HandshakeError::BackendClosed { .. } | HandshakeError::BackendIo { .. }),
                ) if answer.is_empty() && !continued => {
                    return Err(DownloadError::Stale(e.with_backend(addr)));
                }
                Err(e) => return Err(failed(e)),
            };
        if !response.is_interim() {
            break response;
        }
        let interim = answer.split_to(response.head_len());
        // RFC 9110 §15.2: no 1xx to an HTTP/1.0 client.
        if client_is_11 {
            write_client(client, &interim, stall)
                .await
                .map_err(DownloadError::Failed)?;
        }
        continued |= response.status() == 100;
    };
    progress.head_received.store(true, Ordering::Relaxed);
    if response.status() == 101 {
        return Err(failed(HandshakeError::BadBackendResponse {
            backend: None,
            reason: "101 to a request that did not ask to upgrade",
        }));
    }

    let body = BodyFraming::response(&response, plan.request.method() == "HEAD");
    // How the body goes to the client, and whether the connection can stay open after it.
    let (fields, encoding, body_closes) = match body {
        BodyFraming::None => (FramingFields::AsSent, Encoding::Identity, false),
        BodyFraming::Length(length) => (FramingFields::Length(length), Encoding::Identity, false),
        BodyFraming::Chunked if client_is_11 => (FramingFields::Chunked, Encoding::Chunked, false),
        BodyFraming::Chunked => (FramingFields::Omit, Encoding::Identity, true),
        // A body until the close: re-chunked for an HTTP/1.1 client, whose connection then
        // stays usable; relayed as it is (with its own codings) otherwise.
        BodyFraming::Close if client_is_11 && !response.has_transfer_encoding() => {
            (FramingFields::Chunked, Encoding::Chunked, false)
        }
        BodyFraming::Close if response.has_transfer_encoding() => {
            (FramingFields::AsSent, Encoding::Identity, true)
        }
        BodyFraming::Close => (FramingFields::Omit, Encoding::Identity, true),
    };
    // A client that announced `Expect: 100-continue` and got its final answer without a 100
    // has not sent its body (RFC 9110 §10.1.1): the connection cannot carry another request.
    let expect_refused = plan.request.expects_continue()
        && !continued
        && !progress.upload_done.load(Ordering::Relaxed)
        && progress.sent.load(Ordering::Relaxed) == 0;
    let close_client = plan.close || plan.closing.is_cancelled() || body_closes || expect_refused;

    let head_len = response.head_len();
    let mut head = Vec::with_capacity(head_len + plan.set_cookie.len() + 64);
    write_plain_response(
        answer.get(..head_len).unwrap_or_default(),
        fields,
        &plan.set_cookie,
        close_client,
        &mut head,
    );
    answer.advance(head_len.min(answer.len()));
    write_client(client, &head, stall)
        .await
        .map_err(DownloadError::Failed)?;
    progress.head_sent.store(true, Ordering::Relaxed);
    drop(head);

    let received = AtomicU64::new(0);
    let limits = BodyLimits {
        max_bytes: None,
        ..plan.body_limits
    };
    copy_body(
        backend,
        &mut answer,
        client,
        body,
        encoding,
        &limits,
        &received,
    )
    .await
    .map_err(|e| DownloadError::Failed(HandshakeError::from_response_body(e, addr)))?;
    Ok(Answered {
        status: response.status(),
        close_client,
        backend_reusable: response.keeps_alive() && body != BodyFraming::Close && answer.is_empty(),
    })
}

async fn write_client<W: AsyncWrite + Unpin>(
    client: &mut W,
    bytes: &[u8],
    stall: Duration,
) -> Result<(), HandshakeError> {
    match tokio::time::timeout(stall, async {
        client.write_all(bytes).await?;
        client.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(HandshakeError::ClientIo { source }),
        Err(_) => Err(HandshakeError::ClientStalled),
    }
}

/// Logs a failed plain request once and counts it, by the side that caused it.
fn log_failure(shared: &Shared, error: &HandshakeError, answered: bool) {
    match error.side() {
        Side::Backend | Side::Internal => {
            shared.stats.count_backend_failed();
            warn!(reason = error.label(), answered, %error, "plain request failed");
        }
        Side::Client if error.status().is_none() => {
            shared.stats.count_abandoned();
            debug!(reason = error.label(), %error, "client left during a plain request");
        }
        Side::Client => {
            shared.stats.count_rejected();
            debug!(reason = error.label(), answered, %error, "plain request rejected");
        }
    }
}
