//! The end-to-end suite: one test binary, real sockets on 127.0.0.1, a real sluice proxy in
//! this process (see `sluice_e2e::Proxy`), real WebSocket clients and recording backends from
//! `sluice-testkit`. Tests wait for conditions with deadlines, never for fixed sleeps.

#![allow(clippy::unwrap_used)]

mod admin;
mod backends;
mod client_addr;
mod health;
mod hostile;
mod http;
mod l4;
mod limits;
mod relay;
mod reload;
mod routing;
mod sticky;
mod tls;
mod upstream_tls;
mod websocket;

use std::time::Duration;

/// Upper bound for anything that should happen "at once" on loopback.
pub const SOON: Duration = Duration::from_secs(10);
