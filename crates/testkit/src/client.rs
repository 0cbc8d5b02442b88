//! Clients: a WebSocket client with large limits, a raw TCP client that writes exact bytes and
//! reports what came back and how the connection ended, and the polling helper tests wait with.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::http::find;

/// A client WebSocket over plain TCP, as [`ws_connect`] returns it.
pub type WsStream = WebSocketStream<TcpStream>;

/// The server's handshake response (status, headers such as `X-Backend` or `Set-Cookie`).
pub type WsResponse = tokio_tungstenite::tungstenite::handshake::client::Response;

/// Largest message and frame the test clients accept: 64 MiB.
pub const CLIENT_MAX_MESSAGE_SIZE: usize = 64 << 20;

/// The WebSocket configuration of the test clients: 64 MiB messages and frames.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(CLIENT_MAX_MESSAGE_SIZE))
        .max_frame_size(Some(CLIENT_MAX_MESSAGE_SIZE))
}

/// Connect over TCP to `addr` and do a WebSocket handshake for `path` (query included; a missing
/// leading `/` is added). `Host` is `addr` unless `headers` has one; `headers` are added in order
/// (a `Host`, `Connection`, `Upgrade`, `Sec-WebSocket-Version` or `Sec-WebSocket-Key` given there
/// replaces the generated one, other names are appended, duplicates allowed).
///
/// A non-101 answer is `Err(WsError::Http(response))`, so a test can check a rejection's status.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(WsStream, WsResponse), WsError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    ws_handshake(tcp, &addr.to_string(), path, headers).await
}

/// The handshake of [`ws_connect`] over a stream you opened yourself (TLS, a PROXY header
/// already written, a socket with options...). `authority` is the default `Host`.
pub async fn ws_handshake<S>(
    stream: S,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(WebSocketStream<S>, WsResponse), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let slash = if path.starts_with('/') { "" } else { "/" };
    let mut request = format!("ws://{authority}{slash}{path}").into_client_request()?;
    const REPLACED: [&str; 5] = [
        "host",
        "connection",
        "upgrade",
        "sec-websocket-version",
        "sec-websocket-key",
    ];
    for (name, value) in headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| WsError::HttpFormat(e.into()))?;
        let value = HeaderValue::from_str(value).map_err(|e| WsError::HttpFormat(e.into()))?;
        if REPLACED.contains(&name.as_str()) {
            request.headers_mut().insert(name, value);
        } else {
            request.headers_mut().append(name, value);
        }
    }
    client_async_with_config(request, stream, Some(ws_config())).await
}

/// Send `message` and return the next text or binary message (pings and pongs skipped): one echo
/// round trip. A close or EOF first is `Err(WsError::ConnectionClosed)`.
pub async fn ws_roundtrip<S>(
    ws: &mut WebSocketStream<S>,
    message: Message,
) -> Result<Message, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(message).await?;
    loop {
        match ws.next().await {
            Some(Ok(reply @ (Message::Text(_) | Message::Binary(_)))) => return Ok(reply),
            Some(Ok(Message::Close(_))) | None => return Err(WsError::ConnectionClosed),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error),
        }
    }
}

/// What a raw exchange got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawResponse {
    /// The status code, if the bytes start with a complete `HTTP/1.x NNN` status line.
    pub status: Option<u16>,
    /// Every byte received.
    pub bytes: Vec<u8>,
    /// The peer closed (EOF or reset) before the timeout.
    pub closed: bool,
    /// The connection was reset (`ECONNRESET`); implies `closed`.
    pub reset: bool,
}

impl RawResponse {
    fn from_bytes(bytes: Vec<u8>, closed: bool, reset: bool) -> Self {
        RawResponse {
            status: parse_status(&bytes),
            bytes,
            closed,
            reset,
        }
    }

    /// The head (status line and fields, without the blank line) if it arrived whole and is UTF-8.
    pub fn head(&self) -> Option<&str> {
        let end = find(&self.bytes, b"\r\n\r\n")?;
        std::str::from_utf8(self.bytes.get(..end)?).ok()
    }

    /// The first value of a response header, name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head()?.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The bytes after the head (all of them: no framing is applied); empty without a head.
    pub fn body(&self) -> &[u8] {
        find(&self.bytes, b"\r\n\r\n")
            .and_then(|end| self.bytes.get(end + 4..))
            .unwrap_or_default()
    }
}

/// Connect, write `request` exactly, and read until the peer closes or `timeout` passes.
/// Only connecting can fail: a write cut short by the peer closing still reports what came back.
pub async fn raw_exchange(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> io::Result<RawResponse> {
    raw_exchange_chunked(addr, &[request], Duration::ZERO, timeout).await
}

/// As [`raw_exchange`], writing `chunks` one by one with `delay` between them (a slow client, a
/// head split across reads), reading all the while. `timeout` counts from the connection.
pub async fn raw_exchange_chunked(
    addr: SocketAddr,
    chunks: &[&[u8]],
    delay: Duration,
    timeout: Duration,
) -> io::Result<RawResponse> {
    let mut client = RawClient::connect(addr).await?;
    let deadline = Instant::now() + timeout;
    let (mut reader, mut writer) = client.stream.split();
    let write = async {
        for (i, chunk) in chunks.iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if writer.write_all(chunk).await.is_err() {
                break;
            }
        }
        // Never finish: the read decides when the exchange is over.
        std::future::pending::<std::convert::Infallible>().await
    };
    let mut received = Vec::new();
    let read = read_until_deadline(&mut reader, &mut received, deadline, |_| false);
    let (closed, reset) = tokio::select! {
        outcome = read => outcome,
        never = write => match never {},
    };
    Ok(RawResponse::from_bytes(received, closed, reset))
}

/// A raw TCP client for step-by-step exchanges: send bytes, read until a condition, look at what
/// came, send more.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    received: Vec<u8>,
    closed: bool,
    reset: bool,
}

impl RawClient {
    /// Connect (with `TCP_NODELAY`).
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        Self::from_stream(TcpStream::connect(addr).await?)
    }

    /// Connect from `local` (any port): on loopback, `127.0.0.2`, `127.0.0.3`... are other
    /// clients, each with its own address.
    pub async fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> io::Result<Self> {
        Self::from_stream(connect_from(local, addr).await?)
    }

    fn from_stream(stream: TcpStream) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            received: Vec::new(),
            closed: false,
            reset: false,
        })
    }

    /// Write all of `bytes`.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Half-close: send a FIN, keep reading.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }

    /// Read until `done(all bytes received so far)` holds, the peer closes, or `timeout` passes;
    /// returns whether `done` holds.
    pub async fn read_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[u8]) -> bool,
    ) -> bool {
        if done(&self.received) {
            return true;
        }
        if self.closed {
            return false;
        }
        let deadline = Instant::now() + timeout;
        let (closed, reset) =
            read_until_deadline(&mut self.stream, &mut self.received, deadline, &mut done).await;
        self.closed = closed;
        self.reset = reset;
        done(&self.received)
    }

    /// Read until a whole response head (up to the blank line) is in, and return its status.
    pub async fn read_head(&mut self, timeout: Duration) -> Option<u16> {
        self.read_until(timeout, |b| find(b, b"\r\n\r\n").is_some())
            .await
            .then(|| parse_status(&self.received))
            .flatten()
    }

    /// Read until the peer closes or `timeout` passes, and report everything received.
    pub async fn finish(mut self, timeout: Duration) -> RawResponse {
        if !self.closed {
            let deadline = Instant::now() + timeout;
            let (closed, reset) =
                read_until_deadline(&mut self.stream, &mut self.received, deadline, |_| false)
                    .await;
            self.closed = closed;
            self.reset = reset;
        }
        RawResponse::from_bytes(self.received, self.closed, self.reset)
    }

    /// Everything received so far.
    pub fn received(&self) -> &[u8] {
        &self.received
    }

    /// Take what was received so far, leaving the buffer empty.
    pub fn take_received(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.received)
    }

    /// The peer closed (EOF or reset).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The underlying socket, e.g. to hand to [`ws_handshake`] or [`WebSocketStream::from_raw_socket`].
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

/// A TCP connection to `addr` from `local` (any port), with `TCP_NODELAY`.
pub async fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = match local {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(local, 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Read into `received` until `done`, EOF/error, or the deadline. Returns `(closed, reset)`.
async fn read_until_deadline<R: AsyncRead + Unpin>(
    reader: &mut R,
    received: &mut Vec<u8>,
    deadline: Instant,
    mut done: impl FnMut(&[u8]) -> bool,
) -> (bool, bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, reader.read(&mut buf)).await {
            Err(_elapsed) => return (false, false),
            Ok(Ok(0)) => return (true, false),
            Ok(Ok(n)) => {
                received.extend_from_slice(buf.get(..n).unwrap_or_default());
                if done(received) {
                    return (false, false);
                }
            }
            Ok(Err(error)) => return (true, error.kind() == io::ErrorKind::ConnectionReset),
        }
    }
}

/// `HTTP/1.x NNN` at the start of `bytes`.
fn parse_status(bytes: &[u8]) -> Option<u16> {
    let line = bytes.get(..12)?;
    if !line.starts_with(b"HTTP/1.") || line.get(8) != Some(&b' ') {
        return None;
    }
    std::str::from_utf8(line.get(9..12)?).ok()?.parse().ok()
}

/// Poll `condition` until it holds or `timeout` passes; returns whether it held. The way tests
/// wait for something to happen elsewhere (a counter to move, a connection to close) instead of
/// sleeping: the pause between polls grows from 1 ms to 20 ms.
///
/// ```no_run
/// # async fn f(backend: sluice_testkit::EchoBackend) {
/// use std::time::Duration;
/// assert!(sluice_testkit::wait_until(Duration::from_secs(5), || backend.active_connections() == 0).await);
/// # }
/// ```
pub async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    wait_until_async(timeout, || std::future::ready(condition())).await
}

/// [`wait_until`] with an async condition, e.g. one that scrapes `/metrics` each time.
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if condition().await {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line() {
        assert_eq!(parse_status(b"HTTP/1.1 101 Switching"), Some(101));
        assert_eq!(parse_status(b"HTTP/1.0 502 "), Some(502));
        assert_eq!(parse_status(b"HTTP/1.1 10"), None);
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
    }

    #[test]
    fn response_accessors() {
        let r = RawResponse::from_bytes(
            b"HTTP/1.1 200 OK\r\nX-Backend: a\r\nContent-Length: 2\r\n\r\nhi".to_vec(),
            true,
            false,
        );
        assert_eq!(r.status, Some(200));
        assert_eq!(r.header("x-backend"), Some("a"));
        assert_eq!(r.body(), b"hi");
    }
}
