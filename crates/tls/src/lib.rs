//! TLS for sluice, in two independent halves.
//!
//! * [`client_hello`]: a pure, bounded parser of the first bytes of a TLS connection that
//!   finds the server name (SNI) without decrypting anything, for `tls-passthrough` listeners.
//! * [`sni`]: choosing by server name (exact, then wildcard, then a default), shared by
//!   pass-through routing and certificate selection.
//! * [`certs`]: certificates of a TLS-terminating listener (PEM via `rustls-pki-types`, keys
//!   checked against their certificates, expiry warned about) and the rustls `ServerConfig`
//!   whose resolver picks a certificate by server name.
//! * [`upstream`]: TLS to backends: a pool's rustls `ClientConfig` (CA bundle, SNI,
//!   verification, client certificate) and `upstream::connect`, which the proxy and the active
//!   health checks connect to backends with.
//! * [`stream`]: [`MaybeTls`], a connection that is plain TCP or TLS, for either side
//!   ([`ClientSide`], [`BackendStream`]).
#![forbid(unsafe_code)]

pub mod certs;
pub mod client_hello;
mod der;
pub mod sni;
pub mod stream;
pub mod upstream;

pub use certs::{CertError, CertificateFiles, ServerCertificates};
pub use client_hello::{ClientHello, ClientHelloError};
pub use sni::{NamePattern, SniMap, WildcardDepth};
pub use stream::{BackendStream, ClientSide, MaybeTls};
pub use upstream::{ConnectError, Upstream, UpstreamError, UpstreamSettings};
