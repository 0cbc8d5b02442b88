//! Every way the L7 act can fail, and the one answer each failure gets on the wire.
//!
//! [`HandshakeError`] has one variant per condition. [`HandshakeError::status`] is the status the
//! client is answered with (or `None`: close without an answer), and [`error_response`] is the
//! single place where those answers are spelled out byte for byte (the way rustls maps each of
//! its errors to exactly one alert).

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// `Retry-After` seconds sent with every 503.
pub const RETRY_AFTER_SECS: u32 = 5;

/// Which party caused a failure: decides the log level and the metric outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The client sent something sluice refuses, too slowly, or went away.
    Client,
    /// A backend refused, timed out or answered something unusable.
    Backend,
    /// sluice itself (a configuration generation retired mid-handshake, an inconsistency).
    Internal,
}

/// A failure of the L7 act. Each variant names one condition; see [`HandshakeError::status`]
/// for the answer each one gets and why.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum HandshakeError {
    // ----- client: reading the head -----
    /// The client closed (or half-closed) its side before a complete request head.
    #[error("client closed the connection before a complete request head")]
    ClientClosed,
    /// Reading from the client failed (e.g. connection reset).
    #[error("reading from the client failed: {source}")]
    ClientIo {
        #[source]
        source: io::Error,
    },
    /// The request head was not complete by the handshake deadline.
    #[error("request head incomplete at the handshake deadline ({received} bytes received)")]
    HeadTimeout { received: usize },
    /// The request head (through the blank line) is longer than the limit.
    #[error("request head longer than {limit} bytes")]
    HeadTooLarge { limit: usize },
    /// The request head has more header fields than the limit.
    #[error("request head has more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    /// The client sent no byte of its request body for the body stall timeout.
    #[error("request body stalled")]
    BodyTimeout,
    /// The request body is longer than `limits.max_body_bytes`.
    #[error("request body longer than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The client took no byte of the response for the body stall timeout.
    #[error("client stopped reading the response")]
    ClientStalled,

    // ----- client: parsing and validating the head -----
    /// The head is not strictly valid HTTP/1.1 (or is ambiguous, e.g. a smuggling shape).
    #[error("malformed request head: {reason}")]
    Malformed { reason: &'static str },
    /// The request line names an HTTP version other than 1.0 and 1.1.
    #[error("HTTP version not supported")]
    HttpVersionNotSupported,
    /// A WebSocket upgrade attempted over HTTP/1.0 (RFC 6455 §4.1 requires HTTP/1.1 or higher).
    #[error("WebSocket upgrade over HTTP/1.{minor}: HTTP/1.1 is required")]
    UnsupportedVersion { minor: u8 },
    /// A WebSocket upgrade with a method other than GET (RFC 6455 §4.2.1 item 1).
    #[error("WebSocket upgrade with method {method:?}: GET is required")]
    MethodNotAllowed { method: String },
    /// A WebSocket upgrade that announces a body (non-zero Content-Length or any
    /// Transfer-Encoding): the bytes after its head would be ambiguous (body or frames?).
    #[error("WebSocket upgrade announces a body ({header})")]
    UpgradeWithBody { header: &'static str },
    /// `Upgrade: websocket` without the matching `Connection: upgrade` (RFC 9110 §7.8).
    #[error("WebSocket upgrade without {missing}")]
    MissingUpgradeHeaders { missing: &'static str },
    /// A request that is not a WebSocket upgrade where only upgrades are served. The proxy
    /// serves plain requests at L7 and never returns it; kept for callers that serve upgrades
    /// only.
    #[error("not a WebSocket upgrade request")]
    NotUpgrade,
    /// A request `Transfer-Encoding` other than `chunked` alone (`gzip, chunked`, parameters).
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// `Sec-WebSocket-Key` missing, repeated, or not the base64 of 16 bytes (RFC 6455 §4.2.1 item 5).
    #[error("bad Sec-WebSocket-Key: {reason}")]
    BadWebSocketKey { reason: &'static str },
    /// `Sec-WebSocket-Version` missing, repeated or not 13 (RFC 6455 §4.2.2 item 4).
    #[error("unsupported Sec-WebSocket-Version (13 is supported)")]
    UnsupportedWebSocketVersion,

    // ----- client: limits -----
    /// The client's address is over `limits.per_source` (too many connections held, or new
    /// connections coming faster than its rate): answered before its request is read.
    #[error("too many connections from this source (retry in {retry_after} s)")]
    TooManyFromSource {
        /// Seconds until the client may try again (`Retry-After`).
        retry_after: u32,
    },

    // ----- client: routing -----
    /// No route of the listener matches the request.
    #[error("no route matches the request")]
    NoRoute,
    /// No route of the listener serves the request's host (listener answers 421 for that).
    #[error("no route serves the requested host")]
    MisdirectedHost,

    // ----- backend -----
    /// The pool has no backend that can take the connection (all down, draining, or none).
    #[error("no backend available in pool {pool}")]
    NoBackend { pool: String },
    /// Connecting to a backend failed (refused, unreachable, reset).
    #[error("connecting to backend {backend} failed: {source}")]
    BackendRefused {
        backend: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The TLS handshake with a backend failed (`wss` upstream): its certificate is not
    /// trusted, names another server or expired, or it does not speak TLS.
    #[error("TLS to backend {backend} failed: {reason}")]
    BackendTls { backend: SocketAddr, reason: String },
    /// Connecting to a backend did not finish within the connect timeout.
    #[error("connecting to backend {backend} timed out")]
    BackendConnectTimeout { backend: SocketAddr },
    /// The backend's response head was not complete by the response deadline.
    #[error("backend{} response head incomplete at the deadline", at(backend))]
    BackendResponseTimeout { backend: Option<SocketAddr> },
    /// The backend answered something unusable (malformed, too large, or a 101 that is not a
    /// valid WebSocket accept for the client's key).
    #[error("bad response from backend{}: {reason}", at(backend))]
    BadBackendResponse {
        backend: Option<SocketAddr>,
        reason: &'static str,
    },
    /// The backend closed before a complete response head.
    #[error("backend{} closed before a complete response head", at(backend))]
    BackendClosed { backend: Option<SocketAddr> },
    /// Writing to or reading from the backend failed.
    #[error("I/O with backend{} failed: {source}", at(backend))]
    BackendIo {
        backend: Option<SocketAddr>,
        #[source]
        source: io::Error,
    },
    /// The backend closed in the middle of a response body.
    #[error("backend{} closed in the middle of the response body", at(backend))]
    BackendTruncated { backend: Option<SocketAddr> },
    /// The backend took no byte of the request body, or sent no byte of the response body, for
    /// the body stall timeout.
    #[error("backend{} stalled in the middle of a body", at(backend))]
    BackendBodyTimeout { backend: Option<SocketAddr> },

    // ----- internal -----
    /// The configuration generation this connection started with no longer has its listener
    /// or pool (a reload raced the handshake); the client may retry at once.
    #[error("listener or pool retired by a reload during the handshake")]
    ListenerGone,
    /// A route names a pool the router was not given an index for (a bug: config validation
    /// guarantees every route's pool exists).
    #[error("route names unknown pool {pool:?}")]
    UnknownPool { pool: String },
}

impl HandshakeError {
    /// The status answered to the client, or `None` to close without an answer.
    ///
    /// | variant | status | why |
    /// | --- | --- | --- |
    /// | `ClientClosed`, `ClientIo`, `ClientStalled` | none | nobody left to read an answer |
    /// | `HeadTimeout`, `BodyTimeout` | 408 | RFC 9110 §15.5.9 |
    /// | `BodyTooLarge` | 413 | RFC 9110 §15.5.14 |
    /// | `UnsupportedTransferCoding` | 501 | RFC 9112 §6.1 |
    /// | `HeadTooLarge`, `TooManyHeaders` | 431 | RFC 6585 §5 |
    /// | `Malformed` | 400 | RFC 9112 §3 / §5 / §6.3: a server must reject, never guess |
    /// | `HttpVersionNotSupported` | 505 | RFC 9110 §15.6.6 (`HTTP/2.0`, `HTTP/1.2` on the request line) |
    /// | `UnsupportedVersion` | 400 | an HTTP/1.0 upgrade: RFC 6455 §4.2.1 says 400; 426 would invite a retry HTTP/1.0 cannot make |
    /// | `MethodNotAllowed` | 405 + `Allow: GET` | what gorilla/websocket and ws answer; RFC 9110 §15.5.6 requires `Allow` |
    /// | `UpgradeWithBody`, `MissingUpgradeHeaders`, `BadWebSocketKey` | 400 | RFC 6455 §4.2.1 |
    /// | `NotUpgrade` | 426 + `Upgrade: websocket` | RFC 9110 §15.5.22: where only WebSocket is served |
    /// | `UnsupportedWebSocketVersion` | 426 + `Sec-WebSocket-Version: 13` | RFC 6455 §4.2.2 item 4 |
    /// | `TooManyFromSource` | 429 + `Retry-After` | RFC 6585 §4: the limit is the client's own |
    /// | `NoRoute` | 404 | |
    /// | `MisdirectedHost` | 421 | RFC 9110 §15.5.20, when the listener is configured so |
    /// | `NoBackend`, `ListenerGone` | 503 + `Retry-After` | temporary |
    /// | `BackendRefused`, `BackendTls`, `BadBackendResponse`, `BackendClosed`, `BackendIo`, `BackendTruncated` | 502 | RFC 9110 §15.6.3 |
    /// | `BackendConnectTimeout`, `BackendResponseTimeout`, `BackendBodyTimeout` | 504 | RFC 9110 §15.6.5 |
    /// | `UnknownPool` | 500 | a bug |
    pub fn status(&self) -> Option<u16> {
        use HandshakeError::*;
        Some(match self {
            ClientClosed | ClientIo { .. } | ClientStalled => return None,
            HeadTimeout { .. } | BodyTimeout => 408,
            BodyTooLarge { .. } => 413,
            UnsupportedTransferCoding => 501,
            HeadTooLarge { .. } | TooManyHeaders { .. } => 431,
            Malformed { .. } => 400,
            HttpVersionNotSupported => 505,
            UnsupportedVersion { .. } => 400,
            MethodNotAllowed { .. } => 405,
            UpgradeWithBody { .. } | MissingUpgradeHeaders { .. } | BadWebSocketKey { .. } => 400,
            NotUpgrade | UnsupportedWebSocketVersion => 426,
            TooManyFromSource { .. } => 429,
            NoRoute => 404,
            MisdirectedHost => 421,
            NoBackend { .. } | ListenerGone => 503,
            BackendRefused { .. }
            | BackendTls { .. }
            | BadBackendResponse { .. }
            | BackendClosed { .. }
            | BackendIo { .. }
            | BackendTruncated { .. } => 502,
            BackendConnectTimeout { .. }
            | BackendResponseTimeout { .. }
            | BackendBodyTimeout { .. } => 504,
            UnknownPool { .. } => 500,
        })
    }

    /// A fixed label for logs and metrics (never request data).
    pub fn label(&self) -> &'static str {
        use HandshakeError::*;
        match self {
            ClientClosed => "client_closed",
            ClientIo { .. } => "client_io",
            HeadTimeout { .. } => "head_timeout",
            HeadTooLarge { .. } => "head_too_large",
            TooManyHeaders { .. } => "too_many_headers",
            BodyTimeout => "body_timeout",
            BodyTooLarge { .. } => "body_too_large",
            ClientStalled => "client_stalled",
            Malformed { .. } => "malformed",
            HttpVersionNotSupported => "http_version_not_supported",
            UnsupportedVersion { .. } => "unsupported_version",
            MethodNotAllowed { .. } => "method_not_allowed",
            UpgradeWithBody { .. } => "upgrade_with_body",
            MissingUpgradeHeaders { .. } => "missing_upgrade_headers",
            NotUpgrade => "not_upgrade",
            UnsupportedTransferCoding => "unsupported_transfer_coding",
            BadWebSocketKey { .. } => "bad_websocket_key",
            UnsupportedWebSocketVersion => "unsupported_websocket_version",
            TooManyFromSource { .. } => "too_many_from_source",
            NoRoute => "no_route",
            MisdirectedHost => "misdirected_host",
            NoBackend { .. } => "no_backend",
            BackendRefused { .. } => "backend_refused",
            BackendTls { .. } => "backend_tls",
            BackendConnectTimeout { .. } => "backend_connect_timeout",
            BackendResponseTimeout { .. } => "backend_response_timeout",
            BadBackendResponse { .. } => "bad_backend_response",
            BackendClosed { .. } => "backend_closed",
            BackendIo { .. } => "backend_io",
            BackendTruncated { .. } => "backend_truncated",
            BackendBodyTimeout { .. } => "backend_body_timeout",
            ListenerGone => "listener_gone",
            UnknownPool { .. } => "unknown_pool",
        }
    }

    /// Which party caused the failure.
    pub fn side(&self) -> Side {
        use HandshakeError::*;
        match self {
            ClientClosed
            | ClientIo { .. }
            | HeadTimeout { .. }
            | HeadTooLarge { .. }
            | TooManyHeaders { .. }
            | BodyTimeout
            | BodyTooLarge { .. }
            | ClientStalled
            | UnsupportedTransferCoding
            | Malformed { .. }
            | HttpVersionNotSupported
            | UnsupportedVersion { .. }
            | MethodNotAllowed { .. }
            | UpgradeWithBody { .. }
            | MissingUpgradeHeaders { .. }
            | NotUpgrade
            | BadWebSocketKey { .. }
            | UnsupportedWebSocketVersion
            | TooManyFromSource { .. }
            | NoRoute
            | MisdirectedHost => Side::Client,
            NoBackend { .. }
            | BackendRefused { .. }
            | BackendTls { .. }
            | BackendConnectTimeout { .. }
            | BackendResponseTimeout { .. }
            | BadBackendResponse { .. }
            | BackendClosed { .. }
            | BackendIo { .. }
            | BackendTruncated { .. }
            | BackendBodyTimeout { .. } => Side::Backend,
            ListenerGone | UnknownPool { .. } => Side::Internal,
        }
    }

    /// Records which backend a backend-side error came from (the readers in this crate do not
    /// know the address). Other variants are returned unchanged.
    #[must_use]
    pub fn with_backend(mut self, addr: SocketAddr) -> Self {
        use HandshakeError::*;
        match &mut self {
            BackendResponseTimeout { backend }
            | BadBackendResponse { backend, .. }
            | BackendClosed { backend }
            | BackendIo { backend, .. }
            | BackendTruncated { backend }
            | BackendBodyTimeout { backend } => *backend = Some(addr),
            _ => {}
        }
        self
    }

    /// A short, fixed explanation for the response body (never request data).
    fn detail(&self) -> &'static str {
        use HandshakeError::*;
        match self {
            ClientClosed | ClientIo { .. } => "connection closed",
            HeadTimeout { .. } => "request head not received in time",
            HeadTooLarge { .. } => "request head too large",
            TooManyHeaders { .. } => "too many header fields",
            BodyTimeout => "request body not received in time",
            BodyTooLarge { .. } => "request body too large",
            ClientStalled => "response not read in time",
            Malformed { reason } => reason,
            HttpVersionNotSupported => "only HTTP/1.1 is supported",
            UnsupportedVersion { .. } => "WebSocket requires HTTP/1.1",
            MethodNotAllowed { .. } => "WebSocket handshake requires GET",
            UpgradeWithBody { .. } => "WebSocket handshake must not have a body",
            MissingUpgradeHeaders { .. } => "WebSocket handshake requires Connection: upgrade",
            NotUpgrade => "only WebSocket upgrades are served here",
            UnsupportedTransferCoding => "only the chunked transfer coding is supported",
            BadWebSocketKey { reason } => reason,
            UnsupportedWebSocketVersion => "WebSocket version 13 is required",
            TooManyFromSource { .. } => "too many connections from your address",
            NoRoute => "no route for this request",
            MisdirectedHost => "this host is not served here",
            NoBackend { .. } => "no backend available",
            BackendRefused { .. } | BackendTls { .. } => "backend connection failed",
            BackendConnectTimeout { .. } => "backend connection timed out",
            BackendResponseTimeout { .. } => "backend response timed out",
            BadBackendResponse { .. } => "invalid backend response",
            BackendClosed { .. } => "backend closed the connection",
            BackendIo { .. } => "backend connection failed",
            BackendTruncated { .. } => "backend response truncated",
            BackendBodyTimeout { .. } => "backend body timed out",
            ListenerGone => "configuration reloaded, retry",
            UnknownPool { .. } => "internal error",
        }
    }
}

/// The exact bytes answered to the client for `err`, or `None` when the connection is closed
/// without an answer. Every answer has a status line, `Content-Type: text/plain`,
/// `Content-Length`, `Connection: close` and a one-line body naming the problem (never echoing
/// request data). Extra fields: 405 carries `Allow: GET`; 426 carries `Upgrade: websocket` and
/// `Sec-WebSocket-Version: 13` (and lists `Upgrade` in `Connection`, RFC 9110 §7.8); 503
/// carries `Retry-After` ([`RETRY_AFTER_SECS`]); 429 carries the error's own `Retry-After`.
pub fn error_response(err: &HandshakeError) -> Option<Vec<u8>> {
    use std::io::Write;
    let status = err.status()?;
    let phrase = reason_phrase(status);
    let body = format!("{status} {phrase}: {}\n", err.detail());
    let extra: &[u8] = match status {
        405 => b"Connection: close\r\nAllow: GET\r\n",
        426 => b"Connection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        _ => b"Connection: close\r\n",
    };
    let mut out = Vec::with_capacity(256 + body.len());
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    out.extend_from_slice(extra);
    if status == 503 {
        let _ = write!(out, "Retry-After: {RETRY_AFTER_SECS}\r\n");
    }
    if let HandshakeError::TooManyFromSource { retry_after } = err {
        let _ = write!(out, "Retry-After: {retry_after}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        413 => "Content Too Large",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Formats ` <addr>` when the backend is known, nothing otherwise.
fn at(backend: &Option<SocketAddr>) -> impl fmt::Display + '_ {
    struct At<'a>(&'a Option<SocketAddr>);
    impl fmt::Display for At<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                Some(addr) => write!(f, " {addr}"),
                None => Ok(()),
            }
        }
    }
    At(backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], 9000))
    }

    fn io_err() -> io::Error {
        io::Error::from(io::ErrorKind::ConnectionReset)
    }

    /// One value of every variant, with the status line and the extra fields it must carry.
    /// Adding a variant without adding it here fails `every_variant_is_listed`.
    fn every_variant() -> Vec<(
        HandshakeError,
        Option<&'static str>,
        &'static [&'static str],
    )> {
        use HandshakeError::*;
        const NONE: &[&str] = &[];
        const UPGRADE: &[&str] = &[
            "Connection: Upgrade, close\r\n",
            "Upgrade: websocket\r\n",
            "Sec-WebSocket-Version: 13\r\n",
        ];
        vec![
            (ClientClosed, None, NONE),
            (ClientIo { source: io_err() }, None, NONE),
            (
                HeadTimeout { received: 3 },
                Some("HTTP/1.1 408 Request Timeout"),
                NONE,
            ),
            (BodyTimeout, Some("HTTP/1.1 408 Request Timeout"), NONE),
            (
                BodyTooLarge { limit: 1 << 20 },
                Some("HTTP/1.1 413 Content Too Large"),
                NONE,
            ),
            (ClientStalled, None, NONE),
            (
                UnsupportedTransferCoding,
                Some("HTTP/1.1 501 Not Implemented"),
                NONE,
            ),
            (
                BackendTruncated { backend: None },
                Some("HTTP/1.1 502 Bad Gateway"),
                NONE,
            ),
            (
                BackendBodyTimeout {
                    backend: Some(addr()),
                },
                Some("HTTP/1.1 504 Gateway Timeout"),
                NONE,
            ),
            (
                HeadTooLarge { limit: 8192 },
                Some("HTTP/1.1 431 Request Header Fields Too Large"),
                NONE,
            ),
            (
                TooManyHeaders { limit: 100 },
                Some("HTTP/1.1 431 Request Header Fields Too Large"),
                NONE,
            ),
            (
                Malformed { reason: "bare LF" },
                Some("HTTP/1.1 400 Bad Request"),
                NONE,
            ),
            (
                HttpVersionNotSupported,
                Some("HTTP/1.1 505 HTTP Version Not Supported"),
                NONE,
            ),
            (
                UnsupportedVersion { minor: 0 },
                Some("HTTP/1.1 400 Bad Request"),
                NONE,
            ),
            (
                MethodNotAllowed {
                    method: "POST".into(),
                },
                Some("HTTP/1.1 405 Method Not Allowed"),
                &["Allow: GET\r\n"],
            ),
            (
                UpgradeWithBody {
                    header: "Content-Length",
                },
                Some("HTTP/1.1 400 Bad Request"),
                NONE,
            ),
            (
                MissingUpgradeHeaders {
                    missing: "Connection: upgrade",
                },
                Some("HTTP/1.1 400 Bad Request"),
                NONE,
            ),
            (NotUpgrade, Some("HTTP/1.1 426 Upgrade Required"), UPGRADE),
            (
                BadWebSocketKey { reason: "x" },
                Some("HTTP/1.1 400 Bad Request"),
                NONE,
            ),
            (
                UnsupportedWebSocketVersion,
                Some("HTTP/1.1 426 Upgrade Required"),
                UPGRADE,
            ),
            (
                TooManyFromSource { retry_after: 7 },
                Some("HTTP/1.1 429 Too Many Requests"),
                &["Retry-After: 7\r\n"],
            ),
            (NoRoute, Some("HTTP/1.1 404 Not Found"), NONE),
            (
                MisdirectedHost,
                Some("HTTP/1.1 421 Misdirected Request"),
                NONE,
            ),
            (
                NoBackend {
                    pool: "chat".into(),
                },
                Some("HTTP/1.1 503 Service Unavailable"),
                &["Retry-After: 5\r\n"],
            ),
            (
                BackendRefused {
                    backend: addr(),
                    source: io_err(),
                },
                Some("HTTP/1.1 502 Bad Gateway"),
                NONE,
            ),
            (
                BackendTls {
                    backend: addr(),
                    reason: "unknown CA".into(),
                },
                Some("HTTP/1.1 502 Bad Gateway"),
                NONE,
            ),
            (
                BackendConnectTimeout { backend: addr() },
                Some("HTTP/1.1 504 Gateway Timeout"),
                NONE,
            ),
            (
                BackendResponseTimeout { backend: None },
                Some("HTTP/1.1 504 Gateway Timeout"),
                NONE,
            ),
            (
                BadBackendResponse {
                    backend: Some(addr()),
                    reason: "x",
                },
                Some("HTTP/1.1 502 Bad Gateway"),
                NONE,
            ),
            (
                BackendClosed { backend: None },
                Some("HTTP/1.1 502 Bad Gateway"),
                NONE,
            ),
            (
                BackendIo {
                    backend: None,
                    source: io_err(),
                },
                Some("HTTP/1.1 502 Bad Gateway"),
                NONE,
            ),
            (
                ListenerGone,
                Some("HTTP/1.1 503 Service Unavailable"),
                &["Retry-After: 5\r\n"],
            ),
            (
                UnknownPool { pool: "x".into() },
                Some("HTTP/1.1 500 Internal Server Error"),
                NONE,
            ),
        ]
    }

    /// Compile-time exhaustiveness: a new variant breaks this match until it is listed above.
    fn listed(err: &HandshakeError) -> bool {
        use HandshakeError::*;
        match err {
            ClientClosed | ClientIo { .. } | HeadTimeout { .. } | HeadTooLarge { .. } => true,
            TooManyHeaders { .. } | Malformed { .. } | HttpVersionNotSupported => true,
            UnsupportedVersion { .. } | MethodNotAllowed { .. } | UpgradeWithBody { .. } => true,
            MissingUpgradeHeaders { .. } | NotUpgrade | BadWebSocketKey { .. } => true,
            UnsupportedWebSocketVersion | NoRoute | MisdirectedHost | NoBackend { .. } => true,
            BackendRefused { .. } | BackendConnectTimeout { .. } | BackendTls { .. } => true,
            BackendResponseTimeout { .. } | BadBackendResponse { .. } | BackendClosed { .. } => {
                true
            }
            BackendIo { .. } | ListenerGone | UnknownPool { .. } => true,
            BodyTimeout | BodyTooLarge { .. } | ClientStalled | UnsupportedTransferCoding => true,
            BackendTruncated { .. } | BackendBodyTimeout { .. } => true,
            TooManyFromSource { .. } => true,
        }
    }

    #[test]
    fn every_variant_is_listed() {
        let all = every_variant();
        assert!(all.iter().all(|(e, _, _)| listed(e)));
        let mut labels: Vec<_> = all.iter().map(|(e, _, _)| e.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        // 33 variants, 33 distinct labels.
        assert_eq!(labels.len(), 33);
        assert_eq!(all.len(), 33);
    }

    #[test]
    fn every_variant_maps_to_exactly_its_response() {
        for (err, status_line, extra) in every_variant() {
            let answer = error_response(&err);
            let Some(expected_line) = status_line else {
                assert!(answer.is_none(), "{err:?} must close without an answer");
                assert_eq!(err.status(), None);
                continue;
            };
            let answer = answer.unwrap_or_else(|| panic!("{err:?} must be answered"));
            let text = String::from_utf8(answer).expect("answers are ASCII");
            let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
            let mut lines = head.split("\r\n");
            assert_eq!(lines.next(), Some(expected_line), "{err:?}");
            let status = err.status().expect("answered errors have a status");
            assert!(expected_line.contains(&format!(" {status} ")));
            assert!(head.contains("\r\nContent-Type: text/plain; charset=utf-8"));
            assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
            let connection = head
                .split("\r\n")
                .find(|l| l.starts_with("Connection: "))
                .expect("Connection field");
            assert!(connection.ends_with("close"), "{err:?}");
            for field in extra {
                assert!(text.contains(field), "{err:?} lacks {field:?}");
            }
            assert!(body.starts_with(&format!("{status} ")) && body.ends_with('\n'));
            // The body never carries data from the error (method, pool, address).
            assert!(!body.contains("POST") && !body.contains("10.0.0.1"));
        }
    }

    #[test]
    fn sides_and_labels() {
        assert_eq!(HandshakeError::ClientClosed.side(), Side::Client);
        assert_eq!(HandshakeError::NoRoute.side(), Side::Client);
        assert_eq!(
            HandshakeError::BackendClosed { backend: None }.side(),
            Side::Backend
        );
        assert_eq!(HandshakeError::ListenerGone.side(), Side::Internal);
        assert_eq!(
            HandshakeError::HeadTooLarge { limit: 1 }.label(),
            "head_too_large"
        );
    }

    #[test]
    fn with_backend_fills_the_address() {
        let err = HandshakeError::BackendClosed { backend: None }.with_backend(addr());
        assert!(matches!(err, HandshakeError::BackendClosed { backend: Some(a) } if a == addr()));
        assert_eq!(
            err.to_string(),
            "backend 10.0.0.1:9000 closed before a complete response head"
        );
        let untouched = HandshakeError::NoRoute.with_backend(addr());
        assert!(matches!(untouched, HandshakeError::NoRoute));
    }
}
