//! One active check of one backend, bounded by the check's timeout: `tcp`, `http` or
//! `websocket`.
//!
//! The `websocket` check does what a WebSocket client does (RFC 6455 §4.1): it sends an opening
//! handshake with a fresh random `Sec-WebSocket-Key`, and accepts only a `101` that upgrades to
//! `websocket` with `Connection: upgrade` and the `Sec-WebSocket-Accept` derived from that key
//! (the same check the proxy applies to every client's handshake, `sluice_handshake`). A backend
//! that accepts TCP but answers 500, never answers, or answers a `101` with the wrong accept
//! value fails it. With `ping`, a masked ping must come back as a pong with the same payload
//! (RFC 6455 §5.5.2–3), which shows the application's event loop turns, not only its accept
//! queue. Then the check closes cleanly: a close frame (1000), the backend's close frame when it
//! comes within the timeout, then FIN (§7.1.1), so backends do not log an abnormal closure every
//! few seconds.

use std::io;
use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Bytes, BytesMut};
use sluice_balance::CheckFailure;
use sluice_config::{CheckKind, HealthCheck, ProxyVersion};
use sluice_handshake::{
    HandshakeError, RequestKind, ResponseHead, WebSocketUpgrade, classify, parse_request,
    read_response_head,
};
use sluice_tls::{BackendStream, ConnectError, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use crate::frame::{self, Frame, OP_CLOSE, OP_PING, OP_PONG};

/// Largest response head a check reads.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most bytes of frames read while waiting for the pong or the close (data frames the backend
/// pushes are skipped up to this).
const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// The `User-Agent` of `http` and `websocket` checks, so backends can tell checks from users.
pub const USER_AGENT: &str = "sluice-health-check";

/// Why a check failed, with the detail for the log line; [`CheckError::failure`] is the code
/// the backend keeps.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The TCP connect failed (refused, unreachable).
    #[error("connect failed: {0}")]
    Refused(#[source] io::Error),
    /// The TCP connect (and TLS handshake, for a `tls` pool) did not complete within the
    /// timeout.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The TLS handshake failed (`tls` pools); says why (unknown CA, name mismatch, expired).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// Connected, but the check did not complete within the timeout.
    #[error("no complete answer within the timeout")]
    Timeout,
    /// The backend closed the connection before the check completed.
    #[error("the backend closed the connection")]
    Closed,
    /// Reading or writing failed.
    #[error("i/o error: {0}")]
    Io(#[source] io::Error),
    /// The status is not the expected one (`101` for a WebSocket check).
    #[error("status {status}, expected {expected}")]
    Status { status: u16, expected: String },
    /// The answer is not valid HTTP, or its `101` is not a WebSocket upgrade.
    #[error("invalid response: {0}")]
    BadResponse(&'static str),
    /// The `101`'s `Sec-WebSocket-Accept` does not match the key sent (or is missing).
    #[error("invalid Sec-WebSocket-Accept: {0}")]
    BadAccept(&'static str),
    /// The ping was not answered by its pong.
    #[error("no pong: {0}")]
    NoPong(&'static str),
}

impl CheckError {
    /// The failure code the backend keeps (`Health::Down { reason }`).
    pub fn failure(&self) -> CheckFailure {
        match self {
            CheckError::Refused(_) => CheckFailure::Refused,
            CheckError::ConnectTimeout => CheckFailure::ConnectTimeout,
            CheckError::Timeout => CheckFailure::Timeout,
            CheckError::Closed => CheckFailure::Closed,
            CheckError::Io(_) => CheckFailure::Io,
            CheckError::Status { .. } => CheckFailure::Status,
            CheckError::BadResponse(_) => CheckFailure::BadResponse,
            CheckError::BadAccept(_) => CheckFailure::BadAccept,
            CheckError::NoPong(_) => CheckFailure::NoPong,
            CheckError::Tls(_) => CheckFailure::Tls,
        }
    }
}

/// The random bytes one check uses: the WebSocket key, the ping payload and the masks.
#[derive(Debug, Clone, Copy)]
pub struct CheckNonce {
    /// `Sec-WebSocket-Key` before base64 (RFC 6455 §4.1: 16 random bytes, fresh per handshake).
    pub key: [u8; 16],
    /// The ping's payload, which the pong must echo.
    pub ping: [u8; 8],
    /// Masks of the ping and the close frame.
    pub masks: [[u8; 4]; 2],
}

/// Runs one check of `addr` as `check` says, within `check.timeout`; over TLS with `tls` (a
/// `tcp` check is then the TCP connect and the TLS handshake, verification included).
pub async fn run(
    check: &HealthCheck,
    addr: SocketAddr,
    tls: Option<&Upstream>,
    nonce: CheckNonce,
) -> Result<(), CheckError> {
    run_with_proxy(check, addr, tls, nonce, None).await
}

/// [`run`], opening the connection with a PROXY protocol `LOCAL` header of this version (v2
/// `LOCAL`, v1 `UNKNOWN`: "a connection of the proxy itself, no client"), for backends of a
/// pool that sends PROXY headers and so may require one on every connection.
pub async fn run_with_proxy(
    check: &HealthCheck,
    addr: SocketAddr,
    tls: Option<&Upstream>,
    nonce: CheckNonce,
    proxy: Option<ProxyVersion>,
) -> Result<(), CheckError> {
    let deadline = Instant::now() + check.timeout;
    // The PROXY header goes on the TCP connection, before any TLS.
    let preface: &[u8] = match proxy {
        None => b"",
        Some(ProxyVersion::V1) => b"PROXY UNKNOWN\r\n",
        Some(ProxyVersion::V2) => b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00",
    };
    let mut stream = match sluice_tls::upstream::connect(addr, tls, preface, check.timeout).await {
        Ok(stream) => stream,
        Err(ConnectError::Refused(e)) => return Err(CheckError::Refused(e)),
        Err(ConnectError::Timeout) => return Err(CheckError::ConnectTimeout),
        Err(ConnectError::Tls { reason }) => return Err(CheckError::Tls(reason)),
    };
    let host = |host: &Option<String>| host.clone().unwrap_or_else(|| addr.to_string());
    match &check.kind {
        CheckKind::Tcp => Ok(()),
        CheckKind::Http {
            path,
            host: h,
            expect_status,
        } => {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\n\
                 Connection: close\r\n\r\n",
                host(h)
            );
            let status = within(deadline, async {
                write(&mut stream, request.as_bytes()).await?;
                let mut buf = BytesMut::with_capacity(1024);
                let head = final_head(&mut stream, &mut buf, deadline).await?;
                Ok(head.status())
            })
            .await?;
            if expect_status.contains(status) {
                Ok(())
            } else {
                Err(CheckError::Status {
                    status,
                    expected: expect_status.to_string(),
                })
            }
        }
        CheckKind::WebSocket {
            path,
            host: h,
            ping,
        } => {
            let key = STANDARD.encode(nonce.key);
            let upgrade = upgrade_for(&key)?;
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {USER_AGENT}\r\n\
                 Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n",
                host(h)
            );
            let mut buf = BytesMut::with_capacity(1024);
            within(deadline, async {
                write(&mut stream, request.as_bytes()).await?;
                let head = final_head(&mut stream, &mut buf, deadline).await?;
                if head.status() != 101 {
                    return Err(CheckError::Status {
                        status: head.status(),
                        expected: "101".into(),
                    });
                }
                upgrade.check_response(&head).map_err(bad_upgrade)?;
                // What came after the head is already the backend's frames.
                let _ = buf.split_to(head.head_len().min(buf.len()));
                if *ping {
                    write(
                        &mut stream,
                        &frame::client_frame(OP_PING, &nonce.ping, nonce.masks[0]),
                    )
                    .await?;
                    let pong = next_frame(&mut stream, &mut buf, |f| {
                        (f.opcode == OP_PONG && f.payload == nonce.ping) || f.opcode == OP_CLOSE
                    })
                    .await?;
                    if pong.opcode == OP_CLOSE {
                        return Err(CheckError::NoPong(
                            "the backend closed the WebSocket instead",
                        ));
                    }
                }
                Ok(())
            })
            .await?;
            // The verdict is in; the close is a courtesy, bounded by what is left of the timeout.
            let _ = timeout_at(deadline, close(&mut stream, &mut buf, nonce.masks[1])).await;
            Ok(())
        }
    }
}

/// `fut` within the deadline: past it, [`CheckError::Timeout`].
async fn within<T>(
    deadline: Instant,
    fut: impl Future<Output = Result<T, CheckError>>,
) -> Result<T, CheckError> {
    timeout_at(deadline, fut)
        .await
        .unwrap_or(Err(CheckError::Timeout))
}

async fn write(stream: &mut BackendStream, bytes: &[u8]) -> Result<(), CheckError> {
    stream.write_all(bytes).await.map_err(io_error)
}

/// The final response head (interim 1xx answers skipped); `buf` keeps what follows it.
async fn final_head(
    stream: &mut BackendStream,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Result<ResponseHead, CheckError> {
    loop {
        let head = read_response_head(stream, buf, MAX_HEAD_BYTES, deadline)
            .await
            .map_err(read_error)?;
        if !head.is_interim() {
            return Ok(head);
        }
        let _ = buf.split_to(head.head_len().min(buf.len()));
    }
}

/// Frames from `buf`, then from the socket, until one that `wanted` accepts; others (data
/// frames, unsolicited pongs, the backend's own pings) are skipped.
async fn next_frame(
    stream: &mut BackendStream,
    buf: &mut BytesMut,
    wanted: impl Fn(&Frame) -> bool,
) -> Result<Frame, CheckError> {
    let mut seen = 0usize;
    loop {
        match frame::parse(buf, MAX_FRAME_BYTES as u64).map_err(CheckError::NoPong)? {
            Some((frame, len)) => {
                let _ = buf.split_to(len.min(buf.len()));
                seen = seen.saturating_add(len);
                if wanted(&frame) {
                    return Ok(frame);
                }
            }
            None => {
                if seen.saturating_add(buf.len()) > MAX_FRAME_BYTES {
                    return Err(CheckError::NoPong("too many bytes before the pong"));
                }
                buf.reserve(4096);
                match stream.read_buf(buf).await {
                    Ok(0) => return Err(CheckError::Closed),
                    Ok(_) => {}
                    Err(e) => return Err(io_error(e)),
                }
            }
        }
        if seen > MAX_FRAME_BYTES {
            return Err(CheckError::NoPong("too many bytes before the pong"));
        }
    }
}

/// The closing handshake (RFC 6455 §7.1.2): our close frame, the backend's close frame, FIN.
async fn close(
    stream: &mut BackendStream,
    buf: &mut BytesMut,
    mask: [u8; 4],
) -> Result<(), CheckError> {
    write(stream, &frame::client_close(mask)).await?;
    next_frame(stream, buf, |f| f.opcode == OP_CLOSE).await?;
    stream.shutdown().await.map_err(io_error)
}

/// The upgrade the proxy would build for a client sending `key`: its `check_response` is the
/// same check of the `101` the proxy applies to real handshakes. A fixed, minimal request is
/// parsed for it (the configured host and path play no part in the accept check).
fn upgrade_for(key: &str) -> Result<WebSocketUpgrade, CheckError> {
    let head = format!(
        "GET / HTTP/1.1\r\nHost: health\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    match parse_request(Bytes::from(head), 16).and_then(|r| classify(&r)) {
        Ok(RequestKind::WebSocket(upgrade)) => Ok(upgrade),
        // A bug if it ever happens: the key is the base64 of 16 bytes.
        _ => Err(CheckError::BadResponse(
            "internal: the check's own request does not parse",
        )),
    }
}

/// A failed `check_response`: a wrong or missing accept value, or another broken upgrade.
fn bad_upgrade(error: HandshakeError) -> CheckError {
    match error {
        HandshakeError::BadBackendResponse { reason, .. } if reason.contains("Accept") => {
            CheckError::BadAccept(reason)
        }
        HandshakeError::BadBackendResponse { reason, .. } => CheckError::BadResponse(reason),
        _ => CheckError::BadResponse("not a valid WebSocket upgrade"),
    }
}

/// What reading a response head failed with.
fn read_error(error: HandshakeError) -> CheckError {
    match error {
        HandshakeError::BackendClosed { .. } => CheckError::Closed,
        HandshakeError::BackendResponseTimeout { .. } => CheckError::Timeout,
        HandshakeError::BackendIo { source, .. } => io_error(source),
        HandshakeError::BadBackendResponse { reason, .. } => CheckError::BadResponse(reason),
        _ => CheckError::BadResponse("response head not understood"),
    }
}

/// A reset or broken pipe is the backend closing on us; the rest is I/O trouble.
fn io_error(error: io::Error) -> CheckError {
    match error.kind() {
        io::ErrorKind::UnexpectedEof => CheckError::Closed,
        _ => CheckError::Io(error),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_config::{Jitter, StatusRange};
    use sluice_testkit::{
        AfterResponse, Blackhole, EchoBackend, StaticResponder, refused_addr, responses,
    };
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A check whose timeout a loaded machine never reaches when the backend answers; tests
    /// that expect a timeout (nothing ever comes, so no machine is too slow for it) shorten it
    /// with [`quick`].
    fn check(kind: CheckKind) -> HealthCheck {
        HealthCheck {
            kind,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            rise: 1,
            fall: 1,
            jitter: Jitter::Fraction(0.0),
        }
    }

    /// `check` with a short timeout, for backends that never answer.
    fn quick(check: HealthCheck) -> HealthCheck {
        HealthCheck {
            timeout: Duration::from_millis(300),
            ..check
        }
    }

    fn websocket(ping: bool) -> HealthCheck {
        check(CheckKind::WebSocket {
            path: "/health".into(),
            host: None,
            ping,
        })
    }

    fn http(first: u16, last: u16) -> HealthCheck {
        check(CheckKind::Http {
            path: "/health".into(),
            host: Some("chat.example.com".into()),
            expect_status: StatusRange { first, last },
        })
    }

    fn nonce() -> CheckNonce {
        CheckNonce {
            key: *b"0123456789abcdef",
            ping: *b"sluice!!",
            masks: [[1, 2, 3, 4], [5, 6, 7, 8]],
        }
    }

    async fn failure(check: &HealthCheck, addr: SocketAddr) -> Option<CheckFailure> {
        run(check, addr, None, nonce())
            .await
            .err()
            .map(|e| e.failure())
    }

    #[tokio::test]
    async fn a_pool_sending_proxy_headers_checks_with_local_ones() {
        let echo = EchoBackend::spawn().await;
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            for c in [websocket(true), http(200, 399)] {
                if let Err(e) = run_with_proxy(&c, echo.addr(), None, nonce(), Some(version)).await
                {
                    panic!("{version:?} {:?}: {e}", c.kind);
                }
            }
        }
        let headers: Vec<(u8, Option<SocketAddr>)> = echo
            .requests()
            .iter()
            .map(|r| {
                let p = r.proxy.clone().expect("a PROXY header");
                (p.version, p.source)
            })
            .collect();
        assert_eq!(headers, [(1, None), (1, None), (2, None), (2, None)]);
    }

    #[tokio::test]
    async fn a_websocket_echo_passes_every_kind_and_is_closed_cleanly() {
        let echo = EchoBackend::spawn().await;
        for c in [
            websocket(true),
            websocket(false),
            http(200, 399),
            check(CheckKind::Tcp),
        ] {
            if let Err(e) = run(&c, echo.addr(), None, nonce()).await {
                panic!("{:?}: {e}", c.kind);
            }
        }
        let requests = echo.requests();
        let upgrade = requests
            .iter()
            .find(|r| r.is_websocket_upgrade())
            .expect("an upgrade request");
        assert_eq!(upgrade.path, "/health");
        assert_eq!(
            upgrade.header("host"),
            Some(echo.addr().to_string().as_str())
        );
        assert_eq!(upgrade.header("user-agent"), Some(USER_AGENT));
        assert_eq!(
            upgrade.header("sec-websocket-key"),
            Some("MDEyMzQ1Njc4OWFiY2RlZg==")
        );
        let plain = requests
            .iter()
            .find(|r| !r.is_websocket_upgrade())
            .expect("the http check's request");
        assert_eq!(plain.header("host"), Some("chat.example.com"));
        // Both WebSocket checks closed with a close frame, and every connection is gone.
        assert!(
            sluice_testkit::wait_until(Duration::from_secs(5), || echo.active_connections() == 0)
                .await
        );
    }

    #[tokio::test]
    async fn a_500_fails_websocket_and_http_but_not_tcp() {
        let server = StaticResponder::status(500).await;
        assert_eq!(
            failure(&websocket(true), server.addr()).await,
            Some(CheckFailure::Status)
        );
        assert_eq!(
            failure(&http(200, 399), server.addr()).await,
            Some(CheckFailure::Status)
        );
        assert_eq!(failure(&http(500, 599), server.addr()).await, None);
        assert_eq!(failure(&check(CheckKind::Tcp), server.addr()).await, None);
        let e = run(&websocket(true), server.addr(), None, nonce())
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "status 500, expected 101");
    }

    #[tokio::test]
    async fn a_wrong_accept_fails_the_websocket_check() {
        let server = StaticResponder::spawn(responses::wrong_accept(), AfterResponse::Hold).await;
        let e = run(&websocket(false), server.addr(), None, nonce())
            .await
            .unwrap_err();
        assert_eq!(e.failure(), CheckFailure::BadAccept, "{e}");
        assert_eq!(
            e.to_string(),
            "invalid Sec-WebSocket-Accept: wrong Sec-WebSocket-Accept"
        );
        let missing =
            StaticResponder::spawn(responses::missing_upgrade(), AfterResponse::Hold).await;
        assert_eq!(
            failure(&websocket(false), missing.addr()).await,
            Some(CheckFailure::BadResponse)
        );
        let garbage = StaticResponder::spawn(responses::garbage(), AfterResponse::Close).await;
        assert_eq!(
            failure(&websocket(false), garbage.addr()).await,
            Some(CheckFailure::BadResponse)
        );
    }

    #[tokio::test]
    async fn silence_is_a_timeout_and_nobody_is_refused() {
        let hole = Blackhole::spawn().await;
        assert_eq!(
            failure(&quick(websocket(true)), hole.addr()).await,
            Some(CheckFailure::Timeout)
        );
        assert_eq!(
            failure(&quick(http(200, 399)), hole.addr()).await,
            Some(CheckFailure::Timeout)
        );
        assert_eq!(failure(&check(CheckKind::Tcp), hole.addr()).await, None);
        assert_eq!(
            failure(&check(CheckKind::Tcp), refused_addr()).await,
            Some(CheckFailure::Refused)
        );
    }

    /// A backend that completes the handshake correctly, then reads and never answers a frame
    /// (or, with `close`, closes at once).
    async fn mute_after_upgrade(close: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    while !buf.ends_with(b"\r\n\r\n") {
                        if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                            return;
                        }
                    }
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let key = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                        .unwrap_or_default()
                        .to_owned();
                    let accept =
                        sluice_testkit::tungstenite::handshake::derive_accept_key(key.as_bytes());
                    let answer = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                         Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    if close {
                        return;
                    }
                    let mut sink = [0u8; 1024];
                    while stream.read(&mut sink).await.unwrap_or(0) > 0 {}
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_ping_must_come_back() {
        let mute = mute_after_upgrade(false).await;
        // The close that follows waits for an answer until the timeout: 2 s, not 5.
        let handshake_only = HealthCheck {
            timeout: Duration::from_secs(2),
            ..websocket(false)
        };
        assert_eq!(
            failure(&handshake_only, mute).await,
            None,
            "the handshake alone passes"
        );
        assert_eq!(
            failure(&quick(websocket(true)), mute).await,
            Some(CheckFailure::Timeout)
        );
        let gone = mute_after_upgrade(true).await;
        assert_eq!(
            failure(&websocket(true), gone).await,
            Some(CheckFailure::Closed)
        );
    }
}
