//! Backends that do not behave: they never answer, answer something fixed, or are not there at
//! all; and a raw TCP echo for `mode = "tcp"` relays. Every one records what it received.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::HttpConn;
use crate::server::{Conn, Handler, RecordingStream, ServerHandle, spawn_server};

fn localhost() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// A 127.0.0.1 address where nothing listens: connecting gets `ECONNREFUSED`, for the life of
/// the process.
///
/// The port stays bound (by a socket that never listens, kept until the process exits), so no
/// other socket can take it: a port bound and released could be handed to the next
/// `127.0.0.1:0` listener of a test running in parallel, which would then accept.
///
/// # Panics
/// If 127.0.0.1 cannot be bound.
pub fn refused_addr() -> SocketAddr {
    static RESERVED: std::sync::Mutex<Vec<socket2::Socket>> = std::sync::Mutex::new(Vec::new());
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("a TCP socket");
    socket.bind(&localhost().into()).expect("bind 127.0.0.1:0");
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("local address");
    crate::server::lock(&RESERVED).push(socket);
    addr
}

/// Accepts TCP connections, reads and records everything, never writes a byte and never closes
/// (until killed, dropped or shut down). A backend that hangs: for handshake and response
/// timeouts.
pub struct Blackhole {
    handle: ServerHandle,
}

impl Blackhole {
    /// A blackhole on 127.0.0.1:0, named `blackhole-<port>`.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn spawn() -> Self {
        let handler: Handler = Arc::new(|conn| blackhole(conn).boxed());
        let handle = spawn_server(localhost(), None, "blackhole", true, handler)
            .await
            .expect("bind blackhole");
        Blackhole { handle }
    }
}

async fn blackhole(conn: Conn) {
    let Conn {
        mut io, graceful, ..
    } = conn;
    let swallow = async {
        let _ = read_to_end(&mut io).await;
        // The peer half-closed: keep our half open, as a hung process would.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = swallow => {}
        _ = graceful => {}
    }
}

/// What a [`StaticResponder`] does once its response is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterResponse {
    /// Send a FIN, keep reading (and recording) until the peer closes or two seconds pass, then
    /// close: the response is never lost to a RST.
    Close,
    /// Keep the connection open, reading and recording, until the peer closes or the server kills
    /// it.
    Hold,
    /// Close with a RST straight away.
    Reset,
}

/// Accepts, reads one request head (whatever arrives up to the blank line, 64 KiB or EOF; a head
/// that parses is recorded in [`ServerHandle::requests`]), writes a fixed raw response, then does
/// what [`AfterResponse`] says. For "the backend answered something other than 101" and "the 101
/// is wrong" tests; [`responses`](crate::responses) has ready-made answers.
pub struct StaticResponder {
    handle: ServerHandle,
}

impl StaticResponder {
    /// A responder on 127.0.0.1:0, named `static-<port>`.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn spawn(response: impl Into<Vec<u8>>, after: AfterResponse) -> Self {
        let response: Arc<[u8]> = response.into().into();
        let handler: Handler =
            Arc::new(move |conn| respond_static(conn, Arc::clone(&response), after).boxed());
        let handle = spawn_server(localhost(), None, "static", true, handler)
            .await
            .expect("bind static responder");
        StaticResponder { handle }
    }

    /// Shorthand: answer every request with this status (empty body, `Connection: close`), then
    /// close.
    pub async fn status(status: u16) -> Self {
        Self::spawn(crate::responses::status(status), AfterResponse::Close).await
    }
}

async fn respond_static(conn: Conn, answer: Arc<[u8]>, after: AfterResponse) {
    let Conn {
        io,
        peer,
        id,
        graceful,
        shared,
        log,
    } = conn;
    let work = async {
        let mut http = HttpConn::new(io);
        let proxy = http.read_proxy_header().await.ok().flatten();
        if let (Some(log), Some(header)) = (&log, &proxy) {
            log.set_proxy(header.clone());
        }
        match http.read_head().await {
            Ok(mut request) => {
                request.connection = id;
                request.peer = peer;
                request.proxy = proxy;
                shared.record_request(&request);
            }
            // Nothing came at all: nobody to answer.
            Err(crate::http::HeadError::Eof | crate::http::HeadError::Io(_)) => return,
            // Malformed, truncated or huge: answer anyway, that is the point of this backend.
            Err(_) => {}
        }
        if http.respond(&answer).await.is_err() {
            return;
        }
        let mut io = http.io;
        match after {
            AfterResponse::Close => {
                let _ = io.shutdown().await;
                let _ = tokio::time::timeout(Duration::from_secs(2), read_to_end(&mut io)).await;
            }
            AfterResponse::Hold => {
                let _ = read_to_end(&mut io).await;
            }
            AfterResponse::Reset => {
                let _ = io.tcp().set_zero_linger();
            }
        }
    };
    tokio::select! {
        () = work => {}
        _ = graceful => {}
    }
}

/// A raw TCP echo with half-close done right: every byte comes back; after reading EOF it writes
/// what is left, then shuts its write side (FIN). For `mode = "tcp"` relays and half-close tests.
pub struct TcpEcho {
    handle: ServerHandle,
}

impl TcpEcho {
    /// A TCP echo on 127.0.0.1:0, named `tcp-echo-<port>`, recording.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn spawn() -> Self {
        Self::spawn_with(localhost(), true)
            .await
            .expect("bind tcp echo")
    }

    /// A TCP echo on a chosen address, recording or not.
    pub async fn spawn_with(bind: SocketAddr, record: bool) -> io::Result<Self> {
        let handler: Handler = Arc::new(|conn| tcp_echo(conn).boxed());
        let handle = spawn_server(bind, None, "tcp-echo", record, handler).await?;
        Ok(TcpEcho { handle })
    }
}

async fn tcp_echo(conn: Conn) {
    let Conn {
        mut io, graceful, ..
    } = conn;
    let work = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) => {
                    let _ = io.shutdown().await;
                    return;
                }
                Ok(n) => {
                    let Some(chunk) = buf.get(..n) else { return };
                    if io.write_all(chunk).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        () = work => {}
        _ = graceful => {}
    }
}

/// Read and discard (the recording stream keeps a copy) until EOF or an error.
async fn read_to_end(io: &mut RecordingStream) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    while io.read(&mut buf).await? != 0 {}
    Ok(())
}

macro_rules! deref_to_handle {
    ($($server:ident),*) => {$(
        impl Deref for $server {
            type Target = ServerHandle;

            fn deref(&self) -> &ServerHandle {
                &self.handle
            }
        }

        impl std::fmt::Debug for $server {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_tuple(stringify!($server)).field(&self.handle).finish()
            }
        }
    )*};
}

deref_to_handle!(Blackhole, StaticResponder, TcpEcho);

/// Ready-made raw responses for [`StaticResponder`].
pub mod responses {
    use crate::http::response;

    /// `HTTP/1.1 <status> <reason>`, `Content-Length: 0`, `Connection: close`.
    pub fn status(status: u16) -> Vec<u8> {
        response(status, &[], b"", true)
    }

    /// A 101 whose `Sec-WebSocket-Accept` cannot match any key (RFC 6455 §4.1: the client must
    /// fail the connection).
    pub fn wrong_accept() -> Vec<u8> {
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
            .to_vec()
    }

    /// A 101 without `Upgrade: websocket`.
    pub fn missing_upgrade() -> Vec<u8> {
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n".to_vec()
    }

    /// Bytes that are not HTTP at all.
    pub fn garbage() -> Vec<u8> {
        b"\x16\x03\x01\x00\x00 this is not HTTP\r\n\r\n".to_vec()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn refused_addr_is_loopback() {
        assert!(super::refused_addr().ip().is_loopback());
    }
}
