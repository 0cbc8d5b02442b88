//! # sluice-testkit: the other end of the wire, for tests and benchmarks
//!
//! sluice sits between clients and WebSocket backends (accept → handshake → connect → splice).
//! This crate provides both ends around it, on real sockets bound to 127.0.0.1 port 0, so the
//! end-to-end suite (`tests/`, package `sluice-e2e`) can drive the proxy and check what actually
//! crossed it. It is a dev-dependency only: **the proxy itself never uses it**, and nothing here
//! is hardened for production (test code may panic on setup failures).
//!
//! - **Backends** that record every byte they receive *before* any parsing (a recording wrapper
//!   around the TCP stream), so a test can assert what the proxy forwarded, malformed or not:
//!   - [`EchoBackend`]: a WebSocket echo (RFC 6455) with recorded request heads
//!     ([`RecordedRequest`], e.g. the `X-Forwarded-For` the proxy added), plain HTTP answers
//!     naming the backend, PROXY protocol v1/v2 headers recorded, live counters, and kill switches
//!     ([`ServerHandle::close_all`], [`ServerHandle::reset_all`], [`CloseMode`]) to simulate a
//!     backend dying mid-tunnel; [`EchoBackend::dies_after_upgrade`] does it by itself.
//!   - [`HttpBackend`]: plain HTTP/1.1 with behaviours chosen by path (streamed bodies both
//!     ways, chunked answers, `HEAD`/204/304, `100 Continue`, close-delimited and truncated
//!     answers, a connection that dies on its second request) for the plain-HTTP path.
//!   - [`TlsFront`]: any of them behind TLS (terminates, records the server name asked for,
//!     pipes the plaintext), with certificates from a throwaway [`TestCa`].
//!   - [`Blackhole`] (never answers), [`StaticResponder`] (a fixed raw answer, see
//!     [`responses`]), [`refused_addr`] (nothing listening), [`TcpEcho`] (raw bytes, half-close
//!     honoured).
//! - **Clients**: [`ws_connect`] / [`ws_handshake`] with 64 MiB limits, [`raw_exchange`] and
//!   [`RawClient`] for exact bytes, and [`wait_until`] to wait for a condition with a deadline
//!   instead of sleeping.
//! - **The `sluice-echo` binary** (`src/bin/sluice-echo.rs`): echo backends on fixed addresses
//!   for `make run`, the demo and the benchmarks (recording off there).
//!
//! Every server type dereferences to [`ServerHandle`]; dropping it stops the server and closes
//! its connections. The connection lifecycle inside a server is described at the top of
//! `src/server.rs`.

#![forbid(unsafe_code)]

mod client;
mod echo;
mod http;
mod http_backend;
mod misbehave;
mod server;
mod tls;

pub use client::{
    CLIENT_MAX_MESSAGE_SIZE, RawClient, RawResponse, WsResponse, WsStream, connect_from,
    raw_exchange, raw_exchange_chunked, wait_until, wait_until_async, ws_config, ws_connect,
    ws_handshake, ws_roundtrip,
};
pub use echo::{DEFAULT_MAX_MESSAGE_SIZE, EchoBackend, EchoBuilder};
pub use http::{ProxyHeader, RecordedRequest};
pub use http_backend::{Checksum, HttpBackend, checksum, pattern};
pub use misbehave::{AfterResponse, Blackhole, StaticResponder, TcpEcho, refused_addr, responses};
pub use server::{CloseMode, ConnectionLog, ServerHandle};
pub use tls::{TestCa, TestCert, TlsFront};

/// Re-exported so tests need no direct dependency to build messages and match errors.
pub use tokio_tungstenite::WebSocketStream;
pub use tokio_tungstenite::tungstenite::{self, Message};

/// Install a tracing subscriber for a test binary: `RUST_LOG` filter (default `warn`), output
/// captured per test. Safe to call from every test; only the first call installs.
pub fn init_test_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
