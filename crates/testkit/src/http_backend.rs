//! A plain HTTP/1.1 backend with scripted behaviours, chosen by the request path, and bodies
//! streamed both ways (never held whole): for the plain-HTTP path of the proxy.
//!
//! Its HTTP code is its own (httparse for heads, a lenient chunked reader), independent of the
//! proxy's, so the tests check two implementations against each other.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::{HeadError, HttpConn, RecordedRequest, reason};
use crate::server::{Conn, Handler, ServerHandle, spawn_server};

/// A keep-alive HTTP/1.1 backend. Every answer carries `X-Backend: <name>`; by path:
///
/// | path | answer |
/// | --- | --- |
/// | `/sink` | reads the body as it comes, answers `bytes=N sum=S` ([`checksum`] of the body) |
/// | `/source/N` | `N` bytes of [`pattern`], by `Content-Length`, written as they are made |
/// | `/source-chunked/N` | the same, chunked (one chunk per 64 KiB, with an extension) |
/// | `/echo-stream` | the request body back, chunked, written as it is read (full duplex) |
/// | `/chunked` | `hello chunked world` in three chunks with extensions, then a trailer |
/// | `/head` | `Content-Length: 1000` and (but for `HEAD`) 1000 bytes |
/// | `/status/NNN` | that status, no body (`204`, `304`: none allowed; others `Content-Length: 0`) |
/// | `/close-delimited` | a body without `Content-Length`, ended by closing the connection |
/// | `/truncate` | `Content-Length: 100000`, 1000 bytes, then a close |
/// | `/continue` | with `Expect: 100-continue`, `100 Continue` first; then echoes the body |
/// | `/reject-expect` | `417` without reading the body, then a close |
/// | `/flaky` | the first request of a connection answered, the next closes it unanswered |
/// | `/slow/MS` | waits MS milliseconds, then answers |
/// | anything else | `200`, the request body back (or `<name>\n`), like [`crate::EchoBackend`] |
///
/// Bodies are read by `Content-Length` or chunked; a request the backend cannot read gets 400
/// and a close. Heads are recorded ([`ServerHandle::requests`], body left empty: bodies are not
/// kept), raw bytes too unless recording is off.
pub struct HttpBackend {
    handle: ServerHandle,
}

impl HttpBackend {
    /// A backend on 127.0.0.1:0 named `name`, recording every byte.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn spawn(name: &str) -> Self {
        Self::spawn_with(name, true)
            .await
            .expect("bind http backend")
    }

    /// A backend named `name`, recording or not (off for bodies of many megabytes, whose bytes
    /// would otherwise be kept).
    pub async fn spawn_with(name: &str, record: bool) -> io::Result<Self> {
        let handler: Handler = Arc::new(|conn| serve(conn).boxed());
        let bind = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let handle = spawn_server(bind, Some(name.to_owned()), "http", record, handler).await?;
        Ok(HttpBackend { handle })
    }
}

impl Deref for HttpBackend {
    type Target = ServerHandle;

    fn deref(&self) -> &ServerHandle {
        &self.handle
    }
}

impl std::fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HttpBackend").field(&self.handle).finish()
    }
}

/// The byte at offset `i` of every generated body: a pattern that catches reordered, dropped or
/// duplicated bytes.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

/// A running checksum of a body, fed piece by piece: order-sensitive (FNV-1a, 64 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checksum(u64);

impl Default for Checksum {
    fn default() -> Self {
        Checksum(0xcbf2_9ce4_8422_2325)
    }
}

impl Checksum {
    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The value so far.
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// The checksum of `len` bytes of [`pattern`].
pub fn checksum(len: u64) -> u64 {
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        for (j, b) in buf.iter_mut().take(n).enumerate() {
            *b = pattern(at + j as u64);
        }
        sum.update(buf.get(..n).unwrap_or_default());
        at += n as u64;
    }
    sum.value()
}

async fn serve(conn: Conn) {
    let Conn {
        io,
        peer,
        id,
        graceful,
        shared,
        ..
    } = conn;
    let name = shared.name().to_owned();
    let mut http = HttpConn::new(io);
    let work = async {
        let mut served = 0usize;
        loop {
            let mut request = match http.read_head().await {
                Ok(request) => request,
                Err(_) => return,
            };
            request.connection = id;
            request.peer = peer;
            shared.record_request(&request);
            served += 1;
            let keep = match answer(&mut http, &request, &name, served).await {
                Ok(keep) => keep,
                Err(_) => return,
            };
            let close = !keep
                || request.has_token("connection", "close")
                || (request.version == 0 && !request.has_token("connection", "keep-alive"));
            if close {
                let _ = http.io.shutdown().await;
                // Read what is left so the close is a FIN, not a reset.
                let mut sink = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while matches!(http.io.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
                return;
            }
        }
    };
    tokio::select! {
        () = work => {}
        _ = graceful => {}
    }
}

/// Answers one request; `Ok(false)` when the connection must close after it.
async fn answer(
    http: &mut HttpConn,
    request: &RecordedRequest,
    name: &str,
    served: usize,
) -> Result<bool, HeadError> {
    let path = request.path.split('?').next().unwrap_or_default();
    let head_only = request.method == "HEAD";
    let number = |prefix: &str| -> u64 {
        path.strip_prefix(prefix)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    if path == "/sink" {
        let mut sum = Checksum::default();
        let bytes = read_body(http, request, |piece| sum.update(piece)).await?;
        let body = format!("bytes={bytes} sum={}", sum.value());
        respond(http, 200, name, &[], body.as_bytes(), head_only).await?;
        return Ok(true);
    }
    if path.starts_with("/source/") || path.starts_with("/source-chunked/") {
        read_body(http, request, |_| {}).await?;
        let chunked = path.starts_with("/source-chunked/");
        let len = number(if chunked {
            "/source-chunked/"
        } else {
            "/source/"
        });
        let framing = if chunked {
            "Transfer-Encoding: chunked\r\n".to_owned()
        } else {
            format!("Content-Length: {len}\r\n")
        };
        let head = format!("HTTP/1.1 200 OK\r\nX-Backend: {name}\r\n{framing}\r\n");
        http.io.write_all(head.as_bytes()).await?;
        if head_only {
            return Ok(true);
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            for (j, b) in buf.iter_mut().take(n).enumerate() {
                *b = pattern(at + j as u64);
            }
            let piece = buf.get(..n).unwrap_or_default();
            if chunked {
                http.io
                    .write_all(format!("{n:X};piece={at}\r\n").as_bytes())
                    .await?;
                http.io.write_all(piece).await?;
                http.io.write_all(b"\r\n").await?;
            } else {
                http.io.write_all(piece).await?;
            }
            at += n as u64;
        }
        if chunked {
            http.io.write_all(b"0\r\n\r\n").await?;
        }
        http.io.flush().await?;
        return Ok(true);
    }
    if path == "/echo-stream" {
        let head =
            format!("HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nTransfer-Encoding: chunked\r\n\r\n");
        http.io.write_all(head.as_bytes()).await?;
        stream_echo(http, request).await?;
        http.io.write_all(b"0\r\n\r\n").await?;
        http.io.flush().await?;
        return Ok(true);
    }
    if path == "/chunked" {
        let head = format!(
            "HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
        );
        read_body(http, request, |_| {}).await?;
        http.io.write_all(head.as_bytes()).await?;
        if !head_only {
            http.io
                .write_all(b"6;a=b\r\nhello \r\n8\r\nchunked \r\n5;x=\"y z\"\r\nworld\r\n0\r\nX-Sum: 19\r\n\r\n")
                .await?;
        }
        http.io.flush().await?;
        return Ok(true);
    }
    if path == "/head" {
        read_body(http, request, |_| {}).await?;
        let body = vec![b'h'; 1000];
        respond(http, 200, name, &[], &body, head_only).await?;
        return Ok(true);
    }
    if let Some(status) = path.strip_prefix("/status/") {
        read_body(http, request, |_| {}).await?;
        let status: u16 = status.parse().unwrap_or(500);
        let head = if status == 204 || status == 304 {
            format!(
                "HTTP/1.1 {status} {}\r\nX-Backend: {name}\r\nETag: \"v1\"\r\n\r\n",
                reason(status)
            )
        } else {
            format!(
                "HTTP/1.1 {status} {}\r\nX-Backend: {name}\r\nContent-Length: 0\r\n\r\n",
                reason(status)
            )
        };
        http.io.write_all(head.as_bytes()).await?;
        http.io.flush().await?;
        return Ok(true);
    }
    if path == "/close-delimited" {
        read_body(http, request, |_| {}).await?;
        let answer = format!("HTTP/1.1 200 OK\r\nX-Backend: {name}\r\n\r\nclose-delimited body");
        http.io.write_all(answer.as_bytes()).await?;
        return Ok(false);
    }
    if path == "/truncate" {
        read_body(http, request, |_| {}).await?;
        let head =
            format!("HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nContent-Length: 100000\r\n\r\n");
        http.io.write_all(head.as_bytes()).await?;
        http.io.write_all(&[b't'; 1000]).await?;
        http.io.flush().await?;
        return Ok(false);
    }
    if path == "/continue" {
        if request.header("expect").map(str::trim) == Some("100-continue") {
            http.io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            http.io.flush().await?;
        }
        let mut body = Vec::new();
        read_body(http, request, |piece| body.extend_from_slice(piece)).await?;
        respond(http, 200, name, &[], &body, head_only).await?;
        return Ok(true);
    }
    if path == "/reject-expect" {
        respond(http, 417, name, &[], b"no\n", head_only).await?;
        return Ok(false);
    }
    if path == "/flaky" && served > 1 {
        return Ok(false);
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    let mut body = Vec::new();
    read_body(http, request, |piece| body.extend_from_slice(piece)).await?;
    if body.is_empty() {
        body = format!("{name}\n").into_bytes();
    }
    respond(http, 200, name, &[], &body, head_only).await?;
    Ok(true)
}

/// Writes a whole `Content-Length` answer (no body bytes for a `HEAD`).
async fn respond(
    http: &mut HttpConn,
    status: u16,
    name: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nX-Backend: {name}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
    http.io.write_all(&out).await?;
    http.io.flush().await
}

/// Reads the request body as it comes, handing each piece to `piece`; returns its length.
async fn read_body(
    http: &mut HttpConn,
    request: &RecordedRequest,
    mut piece: impl FnMut(&[u8]),
) -> Result<u64, HeadError> {
    let mut total = 0u64;
    if is_chunked(request) {
        loop {
            let size = chunk_size(&read_line(http).await?)?;
            if size == 0 {
                while !read_line(http).await?.is_empty() {}
                return Ok(total);
            }
            take(http, size, &mut piece).await?;
            total += size;
            if !read_line(http).await?.is_empty() {
                return Err(HeadError::Malformed("chunk data too long".into()));
            }
        }
    }
    let len = match request.header("content-length") {
        None => 0,
        Some(len) => len
            .trim()
            .parse()
            .map_err(|_| HeadError::Malformed("bad Content-Length".into()))?,
    };
    take(http, len, &mut piece).await?;
    Ok(len)
}

/// Echoes the request body as chunks, piece by piece as it arrives (never held whole).
async fn stream_echo(http: &mut HttpConn, request: &RecordedRequest) -> Result<(), HeadError> {
    if !is_chunked(request) {
        let len = request
            .header("content-length")
            .and_then(|l| l.trim().parse::<u64>().ok())
            .unwrap_or(0);
        return echo_pieces(http, len).await;
    }
    loop {
        let size = chunk_size(&read_line(http).await?)?;
        if size == 0 {
            while !read_line(http).await?.is_empty() {}
            return Ok(());
        }
        echo_pieces(http, size).await?;
        read_line(http).await?;
    }
}

/// Reads `len` bytes and writes each piece back as one chunk as soon as it arrives.
async fn echo_pieces(http: &mut HttpConn, mut len: u64) -> Result<(), HeadError> {
    while len > 0 {
        if http.buf.is_empty() {
            fill(http).await?;
        }
        let n = (http.buf.len() as u64).min(len) as usize;
        let piece: Vec<u8> = http.buf.drain(..n).collect();
        write_chunk(http, &piece).await?;
        len -= n as u64;
    }
    Ok(())
}

fn chunk_size(line: &[u8]) -> Result<u64, HeadError> {
    let size = line.split(|&b| b == b';').next().unwrap_or_default();
    std::str::from_utf8(size)
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
        .ok_or_else(|| HeadError::Malformed("bad chunk size".into()))
}

async fn write_chunk(http: &mut HttpConn, piece: &[u8]) -> io::Result<()> {
    if piece.is_empty() {
        return Ok(());
    }
    http.io
        .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
        .await?;
    http.io.write_all(piece).await?;
    http.io.write_all(b"\r\n").await
}

fn is_chunked(request: &RecordedRequest) -> bool {
    request
        .header_all("transfer-encoding")
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|c| !c.is_empty())
        .is_some_and(|c| c.eq_ignore_ascii_case("chunked"))
}

async fn fill(http: &mut HttpConn) -> Result<(), HeadError> {
    http.buf.reserve(64 * 1024);
    if http.io.read_buf(&mut http.buf).await? == 0 {
        return Err(HeadError::Truncated);
    }
    Ok(())
}

/// `len` bytes, handed over piece by piece as they arrive.
async fn take(
    http: &mut HttpConn,
    mut len: u64,
    piece: &mut impl FnMut(&[u8]),
) -> Result<(), HeadError> {
    while len > 0 {
        if http.buf.is_empty() {
            fill(http).await?;
        }
        let n = (http.buf.len() as u64).min(len) as usize;
        piece(http.buf.get(..n).unwrap_or_default());
        http.buf.drain(..n);
        len -= n as u64;
    }
    Ok(())
}

/// One line without its CRLF (a bare LF accepted: this backend is lenient on purpose).
async fn read_line(http: &mut HttpConn) -> Result<Vec<u8>, HeadError> {
    loop {
        if let Some(end) = http.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = http.buf.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(line);
        }
        if http.buf.len() > 64 * 1024 {
            return Err(HeadError::TooLarge);
        }
        fill(http).await?;
    }
}
