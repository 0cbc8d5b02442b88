//! The L7 act of sluice: from the first byte of a client connection to the backend's `101`,
//! and plain HTTP/1.1 requests proxied at L7 beside it.
//!
//! ```text
//! accept → [PROXY / TLS] → read head → parse → classify → route → pick (sluice-balance)
//!        → connect (sluice-proxy) → forward head → read response head → check 101 → splice
//!                                 ↘ plain: forward head + body ⇄ response head + body, keep-alive
//! ```
//!
//! This crate is the L7 act of that path, minus the socket work: reading a head off an
//! `AsyncRead`, parsing, classifying, routing, rewriting the head, reading and checking the
//! backend's answer, moving plain message bodies, and the answer to every failure.
//!
//! What this crate owns, each a value the next stage consumes:
//!
//! 1. [`read_request_head`]: bytes off any `AsyncRead` until the empty line that ends the head
//!    (RFC 9112 §2.1), bounded in bytes (431) and in time (408, slowloris), each byte looked at
//!    once; bytes the client sent after its head stay in the caller's buffer.
//! 2. [`parse_request`]: httparse plus what a proxy must add (RFC 9112 §2.2, §3, §6; RFC 9110
//!    §5.5, §7.2): anything two HTTP implementations could read two ways is refused with 400
//!    (bare LF, obs-fold, CL+TE, duplicate CL or Host, …); [`parse_request`] lists them all.
//! 3. [`classify`]: a WebSocket opening handshake (RFC 6455 §4.2.1, RFC 9110 §7.6.1 and §7.8),
//!    a plain request, or a refusal.
//! 4. [`Router::route`]: the listener's routes, first match wins: a pool index, 404 or 421.
//! 5. [`write_forwarded_request`]: the head for the backend, byte for byte but for
//!    `X-Forwarded-For/-Proto/-Host`.
//! 6. [`read_response_head`] and [`WebSocketUpgrade::check_response`]: the backend's answer,
//!    and whether its 101 is a valid accept for the client's key (RFC 6455 §4.2.2).
//! 7. [`HandshakeError`] and [`error_response`]: every failure, and the one answer each gets.
//! 8. Sticky sessions: [`affinity_key`] (a pool's `hash_key` from the request: [`cookie`],
//!    [`query_param`], a header, the source address) and, for the answer, [`write_set_cookie`]
//!    and [`insert_response_headers`] to add the affinity cookie to the backend's `101`.
//! 9. Plain HTTP/1.1 (RFC 9112 §6–§9, RFC 9110 §7.6.1): [`BodyFraming`] (how long a request or
//!    response body is, from its head), [`precheck_body`], the strict [`ChunkedDecoder`] and
//!    [`copy_body`] (one body from an `AsyncRead` to an `AsyncWrite` through a bounded buffer,
//!    chunked bodies decoded and re-encoded), and the head rewrites [`write_plain_request`] and
//!    [`write_plain_response`] (hop-by-hop fields removed, framing regenerated).
//!
//! What it deliberately does not do: open sockets (it reads and parses generic
//! `AsyncRead`s and writes into buffers), pick a backend, connect, keep connections alive or
//! pool them, or relay bytes after the upgrade.
//!
//! # Decisions
//!
//! - **Buffers.** The caller owns the read buffer. After [`read_request_head`] returns `len`,
//!   split it: `let early = buf.split_off(len); let head = buf.freeze();` — `head` goes to
//!   [`parse_request`] (the [`Request`] keeps it without copying), `early` holds bytes the client
//!   already sent after its head (a first WebSocket frame) and must follow the rewritten head
//!   unchanged. The readers never read past `max_head_bytes` into the buffer.
//! - **Absolute-form** targets (`GET http://host/path`) are accepted (RFC 9112 §3.2.2 requires
//!   it; RFC 6455 §4.1 allows it for the handshake) only when `Host` equals their authority:
//!   then there is one host to route by, and it is forwarded as received.
//! - **HTTP/1.0** requests parse (without `Host`), but a WebSocket attempt over HTTP/1.0 is
//!   400 [`HandshakeError::UnsupportedVersion`]; versions other than 1.0/1.1 are 505.
//! - **Non-GET upgrade** is 405 with `Allow: GET` ([`HandshakeError::MethodNotAllowed`]), like
//!   gorilla/websocket and ws.
//! - **A body on an upgrade** (`Transfer-Encoding`, or `Content-Length` other than 0) is 400:
//!   the bytes after the head must be WebSocket frames and nothing else. The upgrade-only
//!   refusals (405 for a non-GET, this 400) apply to requests that *ask* to upgrade; a plain
//!   request may have any method and a body.
//! - **Plain bodies** are described in the `body` module: a request `Transfer-Encoding` other
//!   than `chunked` alone is 501; chunked bodies cross decoded and re-encoded, without
//!   extensions or trailers, so no framing quirk of a client ever reaches a backend.
//! - **Missing or wrong `Sec-WebSocket-Version`** is 426 with `Sec-WebSocket-Version: 13`.
//! - **`Host`** must be a plain name (letters, digits, `-._~`), an IPv4 address or a bracketed
//!   IPv6 literal, with an optional port of up to 5 digits; percent-encoding and
//!   sub-delimiters are refused (RFC 3986 allows them, no real host needs them).

#![forbid(unsafe_code)]

mod affinity;
mod body;
mod error;
mod fields;
mod forward;
mod http1;
mod read;
mod request;
mod response;
mod route;
mod upgrade;

pub use affinity::{
    AffinityKey, affinity_key, cookie, insert_response_headers, query_param, set_cookie_value,
    write_set_cookie,
};
pub use body::{
    BodyError, BodyFraming, BodyLimits, ChunkedDecoder, Encoding, MAX_CHUNK_LINE, READ_CHUNK,
    copy_body, precheck_body,
};
pub use error::{HandshakeError, RETRY_AFTER_SECS, Side, error_response};
pub use forward::{ClientInfo, write_forwarded_request};
pub use http1::{FramingFields, framing_lines, write_plain_request, write_plain_response};
pub use read::{read_request_head, read_response_head};
pub use request::{Request, parse_request};
pub use response::{MAX_RESPONSE_HEADERS, ResponseHead};
pub use route::Router;
pub use upgrade::{RequestKind, WebSocketUpgrade, classify};
