//! The typed configuration: what the rest of sluice consumes.
//!
//! Every value here has already been checked: addresses are `SocketAddr`s, durations are
//! `Duration`s, names referenced by routes exist, and defaults have been applied (they live in
//! [`crate::defaults`], in one place). Nothing downstream re-validates.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

/// A whole, valid sluice configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Listeners, in file order. Names are unique.
    pub listeners: Vec<Listener>,
    /// Routes, in file order: the first route that matches a request wins.
    pub routes: Vec<Route>,
    /// Pools, in file order. Names are unique; every route names one of them.
    pub pools: Vec<Pool>,
    /// Timeouts shared by every listener.
    pub timeouts: Timeouts,
    /// Limits shared by every listener.
    pub limits: Limits,
    /// How tunnels move bytes after the upgrade.
    pub relay: Relay,
}

impl Config {
    /// The pool with this name.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The routes of one listener, in file order.
    pub fn routes_for<'a>(&'a self, listener: &'a str) -> impl Iterator<Item = &'a Route> + 'a {
        self.routes.iter().filter(move |r| r.listener == listener)
    }
}

/// One listening socket and how it treats what it accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    pub mode: ListenerMode,
    /// Status answered when no route matches because the `Host` is unknown to every route of
    /// this listener: 404 (default) or 421 (Misdirected Request).
    pub unknown_host_status: u16,
    /// Peers whose `X-Forwarded-For` chain is trusted and appended to. From any other peer,
    /// incoming `X-Forwarded-*` headers are replaced. Empty (the default) trusts nobody.
    pub trusted_proxies: Vec<IpNet>,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerMode {
    /// HTTP/1.1: the L7 act (WebSocket upgrade, routing), then the L4 relay.
    Http,
}

/// A rule sending matching requests of one listener to one pool. Every present matcher must
/// match; an absent matcher matches everything.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub listener: String,
    pub host: Option<HostMatch>,
    pub path: Option<PathMatch>,
    pub headers: Vec<HeaderMatch>,
    pub pool: String,
}

/// How a route matches the request's `Host` (port stripped, compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `chat.example.com`: this name only (stored lowercase).
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` with at least one label before it;
    /// stored lowercase as the suffix including the leading dot (`.example.com`).
    Wildcard(String),
}

/// How a route matches the request path (the target before `?`), byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// `path_exact`: the path is exactly this.
    Exact(String),
    /// `path_prefix`: the path starts with this.
    Prefix(String),
}

/// A header a route requires: the name is compared case-insensitively (stored lowercase);
/// the value, when given, must equal the header's value exactly (after trimming surrounding
/// whitespace); without a value, presence is enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: String,
    pub value: Option<String>,
}

/// A named group of interchangeable backends and how to choose among them.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub balance: Balance,
    /// Backends in file order; addresses are unique within a pool.
    pub backends: Vec<Backend>,
    /// How many distinct backends one handshake may try to connect to before giving up (>= 1).
    pub connect_attempts: u32,
}

/// The selection algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each backend in turn, weighted.
    RoundRobin,
    /// The backend with the fewest live tunnels relative to its weight.
    LeastConn,
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    /// Relative share of new connections (1..=256, default 1).
    pub weight: u32,
}

/// Timeouts, all strictly positive unless said otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From accept until the whole request head has arrived (slowloris bound). 408 past it.
    pub handshake: Duration,
    /// One TCP connect attempt to a backend.
    pub connect: Duration,
    /// From the forwarded request head until the backend's whole response head has arrived.
    pub response: Duration,
    /// A tunnel with no byte in either direction for this long is closed. `None` ("0"): never.
    pub tunnel_idle: Option<Duration>,
    /// On SIGTERM/SIGINT, how long live tunnels may take to finish before they are closed.
    pub shutdown: Duration,
}

/// Limits on what one client may make sluice hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and headers, with the blank line). 431 past it.
    pub max_head_bytes: usize,
    /// Most header fields in a request head. 431 past it.
    pub max_headers: usize,
    /// Most client connections held at once, all listeners together. `None`: derived at start-up
    /// from the open-file limit (each proxied connection costs two sockets and, while data moves,
    /// up to four pipe ends).
    pub max_connections: Option<usize>,
}

/// How a tunnel relays bytes after the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    pub mode: RelayMode,
    /// Capacity asked of each pipe (`F_SETPIPE_SZ`), in bytes.
    pub pipe_size: usize,
    /// Most pipes held at once, in the pool and in tunnels together; past it tunnels copy.
    pub max_pipes: usize,
    /// Buffer per direction of a copying tunnel, taken only while data moves.
    pub buffer_size: usize,
}

/// Whether tunnels splice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    /// Per direction: copy small, chatty traffic; splice bulk traffic (like HAProxy's splice-auto).
    Auto,
    /// Always splice where the platform allows.
    Splice,
    /// Never splice: buffered copy through user space.
    Copy,
}
