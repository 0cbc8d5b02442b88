//! The recording WebSocket echo backend: what a well-behaved backend looks like.
//!
//! Per connection: an optional PROXY protocol header, then HTTP/1.1 requests in a keep-alive
//! loop. A WebSocket upgrade request (RFC 6455 §4.2.1) gets a 101 and the connection becomes an
//! echo: text and binary messages come back unchanged, pings get pongs, a Close gets a Close.
//! Any other request gets `200` naming the backend (or its own body echoed back).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::debug;

use crate::http::{HeadError, HttpConn, RecordedRequest, response};
use crate::server::{CloseMode, Conn, Handler, RecordingStream, ServerHandle, spawn_server};

/// The default largest WebSocket message and frame the echo backend accepts: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

/// A recording WebSocket echo backend on a real socket. Dereferences to [`ServerHandle`] for the
/// address, counters, recordings and kill switches.
///
/// What it answers:
/// - A WebSocket upgrade (`Upgrade: websocket`): `101` with the right `Sec-WebSocket-Accept`, the
///   first offered `Sec-WebSocket-Protocol` if any, and `X-Backend: <name>`; then it echoes.
///   Invalid upgrades get `400` (or `426` with `Sec-WebSocket-Version: 13` for a wrong version).
/// - Any other request: `200`, `X-Backend: <name>`, body = the request body if it had one, else
///   `<name>\n`; keep-alive as HTTP/1.1 says (`Connection: close` and HTTP/1.0 close).
/// - A request that does not parse: `400` and close; a head over 64 KiB: `431` and close.
/// - A PROXY protocol v1/v2 header before the request is read and recorded
///   ([`RecordedRequest::proxy`]).
///
/// The WebSocket handshake is done here rather than by tungstenite's `accept_hdr_async`: that one
/// refuses bytes sent right behind the head (`JunkAfterRequest`), closes without an answer on a
/// bad upgrade, and normalises the header names; a test backend must record and tolerate all
/// three. The frames are tungstenite's.
pub struct EchoBackend {
    handle: ServerHandle,
}

impl EchoBackend {
    /// Options: name, bind address, recording, message size, dying after the upgrade.
    pub fn builder() -> EchoBuilder {
        EchoBuilder::default()
    }

    /// An echo backend on 127.0.0.1:0, named `echo-<port>`, recording.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn spawn() -> Self {
        Self::builder().spawn().await.expect("bind echo backend")
    }

    /// As [`EchoBackend::spawn`], with a name (sent in `X-Backend`).
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn spawn_named(name: &str) -> Self {
        Self::builder()
            .name(name)
            .spawn()
            .await
            .expect("bind echo backend")
    }

    /// A backend that completes a valid upgrade, echoes, and dies the given way on the first
    /// message that brings the bytes received after the 101 to `after_bytes` or more (that message
    /// is not echoed). `after_bytes == 0` dies right after writing the 101.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn dies_after_upgrade(after_bytes: usize, mode: CloseMode) -> Self {
        Self::builder()
            .die_after_upgrade(after_bytes, mode)
            .spawn()
            .await
            .expect("bind echo backend")
    }

    /// The underlying handle.
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }
}

impl Deref for EchoBackend {
    type Target = ServerHandle;

    fn deref(&self) -> &ServerHandle {
        &self.handle
    }
}

impl std::fmt::Debug for EchoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EchoBackend").field(&self.handle).finish()
    }
}

/// Builds an [`EchoBackend`].
#[derive(Clone, Debug)]
pub struct EchoBuilder {
    name: Option<String>,
    bind: SocketAddr,
    record: bool,
    max_message_size: usize,
    die_after: Option<(usize, CloseMode)>,
}

impl Default for EchoBuilder {
    fn default() -> Self {
        EchoBuilder {
            name: None,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            record: true,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            die_after: None,
        }
    }
}

impl EchoBuilder {
    /// The name sent in `X-Backend` and plain HTTP bodies (default `echo-<port>`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Where to listen (default 127.0.0.1:0).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Keep every received byte and request head (default on). Off, only the counters move:
    /// that is what the `sluice-echo` binary and benchmarks use.
    pub fn record(mut self, record: bool) -> Self {
        self.record = record;
        self
    }

    /// Largest WebSocket message and frame accepted (default 64 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// See [`EchoBackend::dies_after_upgrade`].
    pub fn die_after_upgrade(mut self, after_bytes: usize, mode: CloseMode) -> Self {
        self.die_after = Some((after_bytes, mode));
        self
    }

    /// Bind and start serving.
    pub async fn spawn(self) -> io::Result<EchoBackend> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size));
        let settings = Arc::new(Settings {
            config,
            die_after: self.die_after,
        });
        let handler: Handler = Arc::new(move |conn| serve(conn, Arc::clone(&settings)).boxed());
        let handle = spawn_server(self.bind, self.name, "echo", self.record, handler).await?;
        Ok(EchoBackend { handle })
    }
}

struct Settings {
    config: WebSocketConfig,
    die_after: Option<(usize, CloseMode)>,
}

async fn serve(conn: Conn, settings: Arc<Settings>) {
    let Conn {
        io,
        peer,
        id,
        mut graceful,
        shared,
        log,
    } = conn;
    let mut http = HttpConn::new(io);
    let Ok(proxy) = http.read_proxy_header().await else {
        return;
    };
    if let (Some(log), Some(header)) = (&log, &proxy) {
        log.set_proxy(header.clone());
    }
    let name = shared.name().to_owned();
    loop {
        let head = tokio::select! {
            head = http.read_head() => head,
            _ = &mut graceful => return,
        };
        let mut request = match head {
            Ok(request) => request,
            Err(HeadError::Eof) => return,
            Err(HeadError::Io(error)) => {
                debug!(conn = id, %error, "read failed");
                return;
            }
            Err(HeadError::TooLarge) => {
                let _ = http
                    .respond(&response(431, &[], b"head too large\n", true))
                    .await;
                return;
            }
            Err(HeadError::Truncated) => {
                debug!(conn = id, "peer closed in the middle of a request head");
                return;
            }
            Err(HeadError::Malformed(why)) => {
                debug!(conn = id, %why, "unparsable request");
                let body = format!("bad request: {why}\n");
                let _ = http
                    .respond(&response(400, &[], body.as_bytes(), true))
                    .await;
                return;
            }
        };
        request.connection = id;
        request.peer = peer;
        request.proxy = proxy.clone();

        if request.is_websocket_upgrade() {
            shared.record_request(&request);
            let accept = match check_upgrade(&request) {
                Ok(accept) => accept,
                Err(refusal) => {
                    let _ = http.respond(&refusal).await;
                    return;
                }
            };
            let mut head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\n"
            );
            if let Some(protocol) = request
                .header("sec-websocket-protocol")
                .and_then(|p| p.split(',').next())
            {
                head.push_str(&format!("Sec-WebSocket-Protocol: {}\r\n", protocol.trim()));
            }
            head.push_str(&format!("X-Backend: {name}\r\n\r\n"));
            if http.respond(head.as_bytes()).await.is_err() {
                return;
            }
            shared.count_upgrade();
            if let Some(log) = &log {
                log.set_upgraded();
            }
            // Bytes that came right behind the head already belong to the WebSocket.
            let early = std::mem::take(&mut http.buf);
            let upgraded_at = http.io.received() - early.len();
            let ws = WebSocketStream::from_partially_read(
                http.io,
                early,
                Role::Server,
                Some(settings.config),
            )
            .await;
            echo(ws, &mut graceful, &settings, &shared, upgraded_at).await;
            return;
        }

        let body = match http.read_body(&request).await {
            Ok(body) => body,
            Err(HeadError::Malformed(_)) => {
                let _ = http
                    .respond(&response(400, &[], b"bad body framing\n", true))
                    .await;
                return;
            }
            Err(_) => return,
        };
        request.body = body;
        shared.record_request(&request);
        let close = if request.version == 0 {
            !request.has_token("connection", "keep-alive")
        } else {
            request.has_token("connection", "close")
        };
        let (reply_body, content_type) = if request.body.is_empty() {
            (format!("{name}\n").into_bytes(), "text/plain")
        } else {
            (
                std::mem::take(&mut request.body),
                "application/octet-stream",
            )
        };
        let mut reply = response(
            200,
            &[("Content-Type", content_type), ("X-Backend", &name)],
            &reply_body,
            close,
        );
        if request.method.eq_ignore_ascii_case("HEAD") {
            reply.truncate(reply.len() - reply_body.len());
        }
        if http.respond(&reply).await.is_err() {
            return;
        }
        if close {
            let _ = http.io.shutdown().await;
            return;
        }
    }
}

/// RFC 6455 §4.2.1: the checks a server makes, and §4.2.2 the accept key. The refusal is a
/// complete response.
fn check_upgrade(request: &RecordedRequest) -> Result<String, Vec<u8>> {
    let refuse = |why: &str| response(400, &[], format!("{why}\n").as_bytes(), true);
    if request.method != "GET" {
        return Err(refuse("upgrade needs GET"));
    }
    if request.version != 1 {
        return Err(refuse("upgrade needs HTTP/1.1"));
    }
    if !request.has_token("connection", "upgrade") {
        return Err(refuse("Connection lacks upgrade"));
    }
    if request.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(response(
            426,
            &[("Sec-WebSocket-Version", "13")],
            b"unsupported WebSocket version\n",
            true,
        ));
    }
    let key = request.header("sec-websocket-key").map(str::trim);
    match key {
        Some(key) if is_key(key) => Ok(derive_accept_key(key.as_bytes())),
        _ => Err(refuse("bad Sec-WebSocket-Key")),
    }
}

/// A base64-encoded 16-byte value: 22 alphabet characters and `==`.
fn is_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key
            .bytes()
            .take(22)
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The echo loop. Replies are fed without flushing while more input is ready and flushed before
/// waiting, so a burst of small messages costs few writes; tungstenite queues pongs and the Close
/// reply itself, and the same flush sends them.
async fn echo(
    mut ws: WebSocketStream<RecordingStream>,
    graceful: &mut oneshot::Receiver<u16>,
    settings: &Settings,
    shared: &crate::server::Shared,
    upgraded_at: usize,
) {
    if let Some((0, mode)) = settings.die_after {
        die(ws, mode).await;
        return;
    }
    loop {
        let next = match ws.next().now_or_never() {
            Some(next) => next,
            None => {
                if ws.flush().await.is_err() {
                    return;
                }
                tokio::select! {
                    next = ws.next() => next,
                    code = &mut *graceful => {
                        if let Ok(code) = code {
                            die(ws, CloseMode::WebSocketClose(code)).await;
                        }
                        return;
                    }
                }
            }
        };
        let message = match next {
            Some(Ok(message)) => message,
            // EOF (a half-close included: there is nobody left to echo to) or a protocol error.
            None | Some(Err(_)) => return,
        };
        if let Message::Text(_) | Message::Binary(_) = message {
            shared.count_message();
            if let Some((after, mode)) = settings.die_after {
                if ws.get_ref().received() - upgraded_at >= after {
                    die(ws, mode).await;
                    return;
                }
            }
            if ws.feed(message).await.is_err() {
                return;
            }
        }
    }
}

/// End an upgraded connection from the server side.
async fn die(mut ws: WebSocketStream<RecordingStream>, mode: CloseMode) {
    match mode {
        CloseMode::Fin => {
            let _ = ws.get_mut().shutdown().await;
        }
        CloseMode::Reset => {
            let _ = ws.get_ref().tcp().set_zero_linger();
        }
        CloseMode::WebSocketClose(code) => {
            let frame = CloseFrame {
                code: code.into(),
                reason: "".into(),
            };
            if ws.close(Some(frame)).await.is_ok() {
                // Wait for the peer's Close; the server then closes the TCP connection first
                // (RFC 6455 §7.1.1).
                let drain = async { while let Some(Ok(_)) = ws.next().await {} };
                let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_rfc_6455_example() {
        // RFC 6455 §1.3.
        assert!(is_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(!is_key("short=="));
    }
}
