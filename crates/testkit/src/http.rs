//! Just enough HTTP/1.1 for test backends: read a PROXY header and a request head, read a body
//! (Content-Length or chunked, RFC 9112 §6–7), write small responses. Tolerant on purpose: this
//! is the backend side, and rejecting smuggling shapes is the proxy's job, not the test kit's.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::server::RecordingStream;

/// The largest request head a test backend reads; larger heads get `431`.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// The PROXY protocol v2 signature (haproxy `proxy-protocol.txt` §2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes including the CRLF (§2.1).
const V1_MAX: usize = 107;

/// One HTTP request head as a test backend received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The connection it arrived on ([`ConnectionLog::id`](crate::ConnectionLog::id)).
    pub connection: u64,
    /// The peer address of that connection.
    pub peer: SocketAddr,
    /// The method, e.g. `GET`.
    pub method: String,
    /// The request target exactly as sent (path and query).
    pub path: String,
    /// The minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    /// Header fields in arrival order, names with their original case, duplicates kept. Values
    /// that are not UTF-8 are converted lossily.
    pub headers: Vec<(String, String)>,
    /// The request body the echo backend read (plain HTTP requests); empty otherwise.
    pub body: Vec<u8>,
    /// The PROXY protocol header that opened the connection, if any.
    pub proxy: Option<ProxyHeader>,
}

impl RecordedRequest {
    /// The first value of a header, name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether a comma-separated header (over all its lines) lists `token`, case-insensitively.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the request asks for a WebSocket upgrade (`Upgrade: websocket`).
    pub fn is_websocket_upgrade(&self) -> bool {
        self.has_token("upgrade", "websocket")
    }
}

/// A PROXY protocol header (v1 text or v2 binary) received ahead of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    /// 1 or 2.
    pub version: u8,
    /// The original client address; `None` for `UNKNOWN` (v1), `LOCAL` or an unsupported family
    /// (v2).
    pub source: Option<SocketAddr>,
    /// The address the client connected to.
    pub destination: Option<SocketAddr>,
    /// v2 TLVs, undecoded; empty for v1.
    pub tlvs: Vec<u8>,
}

/// Why reading a request head failed.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The peer closed before sending a byte of the next request: the normal end of keep-alive.
    Eof,
    /// The peer closed in the middle of a head or body.
    Truncated,
    /// The head exceeds [`MAX_HEAD`].
    TooLarge,
    /// httparse rejected it, or a framing header made no sense.
    Malformed(String),
    Io(io::Error),
}

impl From<io::Error> for HeadError {
    fn from(error: io::Error) -> Self {
        HeadError::Io(error)
    }
}

/// A connection's byte stream with a read-ahead buffer.
pub(crate) struct HttpConn {
    pub(crate) io: RecordingStream,
    /// Bytes read but not consumed yet.
    pub(crate) buf: Vec<u8>,
}

impl HttpConn {
    pub(crate) fn new(io: RecordingStream) -> Self {
        HttpConn {
            io,
            buf: Vec::with_capacity(8 * 1024),
        }
    }

    /// Read more bytes into the buffer; 0 means EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(8 * 1024);
        self.io.read_buf(&mut self.buf).await
    }

    /// If the connection starts with a PROXY protocol header, read and return it. Anything else
    /// stays in the buffer for [`HttpConn::read_head`]; a malformed header is left there too
    /// (and then fails as HTTP).
    pub(crate) async fn read_proxy_header(&mut self) -> io::Result<Option<ProxyHeader>> {
        loop {
            if self.buf.starts_with(V2_SIGNATURE) {
                if let Some(len) = self.buf.get(14..16) {
                    let total = 16 + usize::from(u16::from_be_bytes([len[0], len[1]]));
                    if self.buf.len() >= total {
                        let header = parse_v2(self.buf.get(..total).unwrap_or_default());
                        if header.is_some() {
                            self.buf.drain(..total);
                        }
                        return Ok(header);
                    }
                }
            } else if self.buf.starts_with(b"PROXY ") {
                if let Some(end) = find(&self.buf, b"\r\n") {
                    let header = parse_v1(self.buf.get(..end).unwrap_or_default());
                    if header.is_some() {
                        self.buf.drain(..end + 2);
                    }
                    return Ok(header);
                }
                if self.buf.len() >= V1_MAX {
                    return Ok(None);
                }
            } else if !(V2_SIGNATURE.starts_with(&self.buf) || b"PROXY ".starts_with(&self.buf)) {
                return Ok(None);
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Read one request head. `connection`, `peer` and `proxy` of the result are left blank for
    /// the caller to fill in.
    pub(crate) async fn read_head(&mut self) -> Result<RecordedRequest, HeadError> {
        loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; 128];
                let mut parsed = httparse::Request::new(&mut headers);
                match parsed.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let request = RecordedRequest {
                            connection: 0,
                            peer: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                            method: parsed.method.unwrap_or_default().to_owned(),
                            path: parsed.path.unwrap_or_default().to_owned(),
                            version: parsed.version.unwrap_or_default(),
                            headers: parsed
                                .headers
                                .iter()
                                .map(|h| {
                                    (
                                        h.name.to_owned(),
                                        String::from_utf8_lossy(h.value).into_owned(),
                                    )
                                })
                                .collect(),
                            body: Vec::new(),
                            proxy: None,
                        };
                        self.buf.drain(..len);
                        return Ok(request);
                    }
                    Ok(httparse::Status::Partial) if self.buf.len() >= MAX_HEAD => {
                        return Err(HeadError::TooLarge);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(error) => return Err(HeadError::Malformed(error.to_string())),
                }
            }
            if self.fill().await? == 0 {
                return Err(if self.buf.is_empty() {
                    HeadError::Eof
                } else {
                    HeadError::Truncated
                });
            }
        }
    }

    /// Read the body that follows `request`'s head: chunked if the last transfer coding is
    /// `chunked`, else `Content-Length` bytes, else nothing.
    pub(crate) async fn read_body(
        &mut self,
        request: &RecordedRequest,
    ) -> Result<Vec<u8>, HeadError> {
        let chunked = request
            .header_all("transfer-encoding")
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|c| !c.is_empty())
            .is_some_and(|c| c.eq_ignore_ascii_case("chunked"));
        if chunked {
            return self.read_chunked().await;
        }
        match request.header("content-length") {
            None => Ok(Vec::new()),
            Some(len) => {
                let len: usize = len
                    .trim()
                    .parse()
                    .map_err(|_| HeadError::Malformed(format!("bad Content-Length {len:?}")))?;
                self.take(len).await
            }
        }
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>, HeadError> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let size = line.split(|&b| b == b';').next().unwrap_or_default();
            let size = std::str::from_utf8(size)
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .ok_or_else(|| HeadError::Malformed("bad chunk size".to_owned()))?;
            if size == 0 {
                // Trailer fields, up to the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            body.extend_from_slice(&self.take(size).await?);
            if !self.read_line().await?.is_empty() {
                return Err(HeadError::Malformed("chunk data too long".to_owned()));
            }
        }
    }

    /// One line without its CRLF (a bare LF is accepted).
    async fn read_line(&mut self) -> Result<Vec<u8>, HeadError> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            if self.fill().await? == 0 {
                return Err(HeadError::Truncated);
            }
        }
    }

    /// Exactly `len` bytes.
    async fn take(&mut self, len: usize) -> Result<Vec<u8>, HeadError> {
        while self.buf.len() < len {
            if self.fill().await? == 0 {
                return Err(HeadError::Truncated);
            }
        }
        Ok(self.buf.drain(..len).collect())
    }

    /// Write a whole response; errors are the peer's problem, not the test's.
    pub(crate) async fn respond(&mut self, response: &[u8]) -> io::Result<()> {
        self.io.write_all(response).await?;
        self.io.flush().await
    }
}

/// A complete response with `Content-Length`; `close` adds `Connection: close`.
pub(crate) fn response(status: u16, headers: &[(&str, &str)], body: &[u8], close: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The usual reason phrase (RFC 9110 §15), or an empty one.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `PROXY TCP4 192.0.2.1 198.51.100.1 56324 443` (without the CRLF).
fn parse_v1(line: &[u8]) -> Option<ProxyHeader> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    if words.next()? != "PROXY" {
        return None;
    }
    let (source, destination) = match words.next()? {
        "UNKNOWN" => (None, None),
        "TCP4" | "TCP6" => {
            let src: IpAddr = words.next()?.parse().ok()?;
            let dst: IpAddr = words.next()?.parse().ok()?;
            let sport: u16 = words.next()?.parse().ok()?;
            let dport: u16 = words.next()?.parse().ok()?;
            (
                Some(SocketAddr::new(src, sport)),
                Some(SocketAddr::new(dst, dport)),
            )
        }
        _ => return None,
    };
    Some(ProxyHeader {
        version: 1,
        source,
        destination,
        tlvs: Vec::new(),
    })
}

/// A whole v2 header: 16 fixed bytes and the address block.
fn parse_v2(header: &[u8]) -> Option<ProxyHeader> {
    let version_command = *header.get(12)?;
    if version_command >> 4 != 2 {
        return None;
    }
    let local = version_command & 0x0f == 0;
    let family = *header.get(13)?;
    let block = header.get(16..)?;
    let port = |at: usize| -> Option<u16> {
        let b = block.get(at..at + 2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    };
    let (addresses, used) = match family >> 4 {
        1 => {
            let ip = |at: usize| -> Option<IpAddr> {
                let b: [u8; 4] = block.get(at..at + 4)?.try_into().ok()?;
                Some(IpAddr::V4(Ipv4Addr::from(b)))
            };
            let src = SocketAddr::new(ip(0)?, port(8)?);
            let dst = SocketAddr::new(ip(4)?, port(10)?);
            (Some((src, dst)), 12)
        }
        2 => {
            let ip = |at: usize| -> Option<IpAddr> {
                let b: [u8; 16] = block.get(at..at + 16)?.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            };
            let src = SocketAddr::new(ip(0)?, port(32)?);
            let dst = SocketAddr::new(ip(16)?, port(34)?);
            (Some((src, dst)), 36)
        }
        _ => (None, 0),
    };
    let addresses = if local { None } else { addresses };
    Some(ProxyHeader {
        version: 2,
        source: addresses.map(|(s, _)| s),
        destination: addresses.map(|(_, d)| d),
        tlvs: block.get(used..).unwrap_or_default().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_v1() {
        let h = parse_v1(b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443").unwrap();
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(h.destination, Some("198.51.100.1:443".parse().unwrap()));
        assert_eq!(parse_v1(b"PROXY UNKNOWN").unwrap().source, None);
        assert_eq!(parse_v1(b"PROXY TCP4 x y 1 2"), None);
    }

    #[test]
    fn parses_proxy_v2_ipv4_with_tlv() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 15]);
        h.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 1]);
        h.extend_from_slice(&56324u16.to_be_bytes());
        h.extend_from_slice(&443u16.to_be_bytes());
        h.extend_from_slice(&[0x04, 0, 0]);
        let parsed = parse_v2(&h).unwrap();
        assert_eq!(parsed.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(
            parsed.destination,
            Some("198.51.100.1:443".parse().unwrap())
        );
        assert_eq!(parsed.tlvs, vec![0x04, 0, 0]);
    }

    #[test]
    fn response_has_length_and_reason() {
        let r = response(503, &[("X-A", "b")], b"no", true);
        assert_eq!(
            r,
            b"HTTP/1.1 503 Service Unavailable\r\nX-A: b\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
        );
    }
}
