//! The typed configuration: what the rest of sluice consumes.
//!
//! Every value here has already been checked: addresses are `SocketAddr`s, durations are
//! `Duration`s, names referenced by routes exist, and defaults have been applied (they live in
//! [`crate::defaults`], in one place). Nothing downstream re-validates.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use crate::origin::OriginPolicy;

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
    /// Limits per client address (`[limits.per_source]`), all listeners together.
    pub per_source: PerSourceLimits,
    /// How tunnels move bytes after the upgrade.
    pub relay: Relay,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`, `/status.json`, the status page);
    /// `None` without an `[admin]` table.
    pub admin: Option<Admin>,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Where it listens: loopback by default; never a public address unless written so.
    pub listen: SocketAddr,
    /// When set, `/metrics` and `/status.json` require `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
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
    /// `tcp`: the pool every connection goes to (`pool`, always set). `tls-passthrough`: the
    /// pool of clients whose server name matches no `sni_routes` entry or who send none
    /// (`default_pool`); `None`: they are closed. `http`: always `None`.
    pub pool: Option<String>,
    /// `tls-passthrough`: pools by server name, in file order (exact names first, then the
    /// longest matching wildcard). Empty for the other modes.
    pub sni_routes: Vec<SniRoute>,
    /// Every mode: each connection must open with a PROXY protocol header (v1 or v2) and come
    /// from one of these networks; the header's source is then the client's address. `None`
    /// (the default): no header is expected and the socket's peer is the client.
    pub accept_proxy_protocol: Option<AcceptProxy>,
    /// Most client connections this listener holds at once (besides `limits.max_connections`,
    /// all listeners together). `None` (the default): no limit of its own.
    pub max_connections: Option<usize>,
    /// `http`: terminate TLS with these certificates. `None` (the default): plain TCP.
    pub tls: Option<ListenerTls>,
}

/// Which peers may open connections with a PROXY protocol header (an L4 edge in front of
/// sluice: a cloud network load balancer, HAProxy, another sluice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptProxy {
    /// The peers' networks; a connection from anywhere else is refused (closed).
    pub from: Vec<IpNet>,
}

/// A PROXY protocol version sent to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text header (`PROXY TCP4 192.0.2.1 10.0.0.1 51234 443\r\n`).
    V1,
    /// The binary header.
    V2,
}

impl ProxyVersion {
    /// The name used in the configuration file: `"v1"`, `"v2"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        }
    }
}

/// TLS termination on an `http` listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// At least one; chosen by the client's server name (exact, then wildcard names of each
    /// certificate); the first is the default for names none covers and clients sending none.
    pub certificates: Vec<CertificatePaths>,
}

/// A certificate chain and its private key, PEM files (paths as written: relative ones are
/// relative to sluice's working directory). Read when the configuration is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePaths {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// A `tls-passthrough` listener's route: clients asking for this server name go to this pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    pub sni: HostMatch,
    pub pool: String,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerMode {
    /// HTTP/1.1: the L7 act (WebSocket upgrade, routing), then the L4 relay.
    Http,
    /// Plain TCP: nothing is parsed; each connection goes to a backend of the listener's pool
    /// and is relayed (spliced).
    Tcp,
    /// TLS pass-through: the ClientHello is read (never decrypted) for its server name, which
    /// picks the pool; the bytes are replayed to the backend and the rest is relayed.
    TlsPassthrough,
}

impl ListenerMode {
    /// The name used in the configuration file: `"http"`, `"tcp"`, `"tls-passthrough"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerMode::Http => "http",
            ListenerMode::Tcp => "tcp",
            ListenerMode::TlsPassthrough => "tls-passthrough",
        }
    }
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
    /// `allowed_origins` and `allow_missing_origin`: the `Origin` check of the requests this
    /// route matches (refused with 403). `None`: no check.
    pub origins: Option<OriginPolicy>,
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
    /// How keys are hashed: `Some` exactly when `balance` is [`Balance::Hash`].
    pub hash: Option<HashPolicy>,
    /// The affinity cookie sluice inserts itself, with any `balance`: a client presenting a
    /// valid one goes back to its backend while that backend takes connections; any other
    /// client is balanced as usual and given the cookie.
    pub sticky_cookie: Option<StickyCookie>,
    /// Backends in file order; addresses are unique within a pool. With `discovery`, the
    /// backends DNS listed last (empty in the file's configuration, and until a first answer).
    pub backends: Vec<Backend>,
    /// Backends from DNS instead of `backends`, re-resolved while sluice runs. `None`: the
    /// file lists them.
    pub discovery: Option<Discovery>,
    /// Local addresses tunnels to backends are opened from, in turn (connection by connection).
    /// Empty (the default): the system chooses.
    pub source_addrs: Vec<IpAddr>,
    /// How many distinct backends one handshake may try to connect to before giving up (>= 1).
    pub connect_attempts: u32,
    /// How long tunnels to a backend removed by a reload are kept before sluice closes them.
    /// `None` ("0", the default): until they end by themselves.
    pub drain_timeout: Option<Duration>,
    /// Once `drain_timeout` passed, the tunnels left are closed oldest first, evenly over this
    /// window (zero: all at once).
    pub drain_spread: Duration,
    /// Active health checks of every backend of the pool. `None` (the default): none; every
    /// backend counts as up unless passive checks eject it.
    pub health_check: Option<HealthCheck>,
    /// Passive checks: consecutive failed connections eject a backend for a cool-down.
    /// `None` (the default): off.
    pub outlier: Option<Outlier>,
    /// A backend back from down or ejection (or added by a reload) takes a share of new
    /// connections that ramps up from a tenth to its full share over this window. `None` (the
    /// default, `"0"` in the file): its full share at once.
    pub slow_start: Option<Duration>,
    /// Plain HTTP requests: most idle keep-alive connections kept open per backend for reuse
    /// (0: a connection per request).
    pub idle_connections: usize,
    /// Plain HTTP requests: an idle backend connection unused for this long is closed.
    pub idle_timeout: Duration,
    /// Open every backend connection with a PROXY protocol header of this version carrying the
    /// client's address (before the forwarded head, the replayed ClientHello or the first
    /// relayed byte). `None` (the default): none.
    pub send_proxy_protocol: Option<ProxyVersion>,
    /// Most live connections (connecting, handshaking or tunnelling) per backend; a full
    /// backend is skipped like a down one. `None` (the default): no limit.
    pub max_connections_per_backend: Option<usize>,
    /// TLS to the backends (`wss` upstream). `None` (the default): plain TCP.
    pub tls: Option<PoolTls>,
}

impl Pool {
    /// The pool a file gives for `[pools.NAME]` with only `backends`: every other setting at
    /// its default (`defaults.rs`). Other crates' tests start from it and change what they
    /// test (`Pool { balance: Balance::Hash, ..Pool::with_backends(..) }`).
    pub fn with_backends(name: impl Into<String>, backends: Vec<Backend>) -> Self {
        Self {
            name: name.into(),
            balance: crate::defaults::BALANCE,
            hash: None,
            sticky_cookie: None,
            backends,
            discovery: None,
            source_addrs: Vec::new(),
            connect_attempts: crate::defaults::CONNECT_ATTEMPTS,
            drain_timeout: crate::defaults::DRAIN_TIMEOUT,
            drain_spread: crate::defaults::DRAIN_SPREAD,
            health_check: None,
            outlier: None,
            slow_start: None,
            idle_connections: crate::defaults::IDLE_CONNECTIONS,
            idle_timeout: crate::defaults::IDLE_TIMEOUT,
            send_proxy_protocol: crate::defaults::SEND_PROXY_PROTOCOL,
            max_connections_per_backend: crate::defaults::MAX_CONNECTIONS_PER_BACKEND,
            tls: None,
        }
    }
}

/// A pool's `tls` table: how sluice speaks TLS to its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTls {
    /// PEM CA bundle the backends' certificates must chain to. `None`: the system's CA bundle
    /// (read from its usual file) when `verify` is on.
    pub ca: Option<ConfigPath>,
    /// Client certificate chain and its key (PEM), for backends that require mutual TLS.
    pub client_cert: Option<(ConfigPath, ConfigPath)>,
    /// The server name sent (SNI) and verified, lowercase. `None`: the backend's IP address is
    /// verified and no SNI is sent.
    pub sni: Option<String>,
    /// Verify the backend's certificate (default `true`).
    pub verify: bool,
    /// Where the `tls` table is written.
    pub at: Location,
}

/// A file the configuration names, read when the configuration is applied, and where it is
/// named so that a problem with the file is reported there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    pub path: std::path::PathBuf,
    pub at: Location,
}

/// A place in a configuration file: its origin, 1-based line and column, and the dotted path
/// of the key written there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub key: String,
}

impl Location {
    /// An error about what is written here: `origin:line:column: key: problem`.
    pub fn error(&self, problem: impl std::fmt::Display) -> crate::ConfigError {
        crate::ConfigError {
            origin: self.origin.clone(),
            line: self.line,
            column: self.column,
            message: format!("{}: {problem}", self.key),
        }
    }
}

/// How a pool actively checks its backends, each on its own schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// What one check does.
    pub kind: CheckKind,
    /// Between the starts of two checks of one backend (before jitter).
    pub interval: Duration,
    /// The most one check may take, connect included; longer is a failure. At most `interval`.
    pub timeout: Duration,
    /// Consecutive passed checks that bring a down backend up (>= 1).
    pub rise: u32,
    /// Consecutive failed checks that take an up backend down (>= 1).
    pub fall: u32,
    /// Random spread of each interval, so that many sluice instances (and the backends of one
    /// pool) do not check in step.
    pub jitter: Jitter,
}

/// What one active health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect, then a close.
    Tcp,
    /// An HTTP/1.1 `GET path` whose answer's status must lie in `expect_status`.
    Http {
        path: String,
        /// The `Host` header; `None`: the backend's address.
        host: Option<String>,
        expect_status: StatusRange,
    },
    /// A WebSocket opening handshake with a fresh random key: the answer must be a `101` with
    /// the right `Sec-WebSocket-Accept`; then, with `ping`, a ping answered by its pong; then a
    /// clean close.
    WebSocket {
        path: String,
        /// The `Host` header; `None`: the backend's address.
        host: Option<String>,
        ping: bool,
    },
}

impl CheckKind {
    /// The name used in the configuration file: `"tcp"`, `"http"`, `"websocket"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::WebSocket { .. } => "websocket",
        }
    }
}

/// An inclusive range of HTTP status codes (`"200-399"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub first: u16,
    pub last: u16,
}

impl StatusRange {
    /// Whether `status` lies in the range.
    pub fn contains(&self, status: u16) -> bool {
        (self.first..=self.last).contains(&status)
    }
}

impl std::fmt::Display for StatusRange {
    /// As written in the file: `200-399`, or `204` for a single status.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// How much each health-check interval is spread at random: the next check comes after
/// `interval ± spread`, drawn uniformly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// A fraction of the interval (`0.1`: ±10 %), 0 to 0.5.
    Fraction(f64),
    /// A fixed duration (`"500ms"`), at most half the interval.
    Fixed(Duration),
}

impl Jitter {
    /// The spread for this interval: the next check comes within `interval ± spread`.
    pub fn spread(&self, interval: Duration) -> Duration {
        match *self {
            Jitter::Fraction(f) => interval.mul_f64(f.clamp(0.0, 1.0)),
            Jitter::Fixed(d) => d.min(interval),
        }
    }
}

/// Passive checks (outlier detection): what ejects a backend, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    /// This many failed connections in a row (refused or timed-out connects, response heads
    /// that did not come in time), with no answered one between, eject the backend (>= 1).
    pub consecutive_failures: u32,
    /// How long an ejected backend takes no new connection.
    pub cool_down: Duration,
}

/// The selection algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each backend in turn, weighted.
    RoundRobin,
    /// The backend with the fewest live tunnels relative to its weight.
    LeastConn,
    /// Two backends drawn at random (weighted), the less loaded of the two (the power of two
    /// choices).
    RandomTwo,
    /// Consistent hashing of a sticky key (the pool's [`HashPolicy`]), with bounded loads.
    Hash,
}

impl Balance {
    /// The name used in the configuration file (`"round_robin"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::RandomTwo => "random_two",
            Balance::Hash => "hash",
        }
    }
}

/// How a `balance = "hash"` pool hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct HashPolicy {
    /// What is hashed.
    pub key: HashKey,
    /// The algorithm for requests without the key: `RoundRobin`, `LeastConn` or `RandomTwo`,
    /// never `Hash`.
    pub fallback: Balance,
    /// Bounded loads: a backend holding `factor` times its weighted share of the pool's live
    /// connections (this one included), rounded up, takes no new hashed connection; the key
    /// goes to its next choice. `None`: unbounded. `Some(f)` has `1 < f <= 100`.
    pub balance_factor: Option<f64>,
}

/// The sticky key of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `cookie:NAME`: the value of the cookie `NAME` (case-sensitive name, an RFC 6265 token).
    Cookie(String),
    /// `header:NAME`: the value of the first header field `NAME` (stored lowercase).
    Header(String),
    /// `query:NAME`: the value of the first query parameter `NAME`, as sent (not decoded).
    Query(String),
    /// `source_ip`: the client's address. Every client behind one NAT shares it.
    SourceIp,
    /// `four_tuple`: the client's address and port and the listener's address and port: every
    /// connection its own key (`tcp` and `tls-passthrough` listeners; on `http` listeners no
    /// request has it, so the fallback places them).
    FourTuple,
}

impl std::fmt::Display for HashKey {
    /// As written in the file: `cookie:session`, `source_ip`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Query(name) => write!(f, "query:{name}"),
            HashKey::SourceIp => f.write_str("source_ip"),
            HashKey::FourTuple => f.write_str("four_tuple"),
        }
    }
}

/// The affinity cookie sluice inserts: `Set-Cookie: NAME=TOKEN; Path=…; Max-Age=…; Secure;
/// HttpOnly; SameSite=…`. The token names the backend opaquely (never its address) and is the
/// same in every sluice process with the same pool name, backend address and `secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    /// The cookie name, an RFC 6265 token (case-sensitive).
    pub name: String,
    /// `Max-Age`, whole seconds; `None`: a session cookie (dropped when the browser closes).
    pub ttl: Option<Duration>,
    /// `Secure`: the browser sends it over HTTPS (`wss://`) only.
    pub secure: bool,
    /// `HttpOnly`: hidden from scripts.
    pub http_only: bool,
    /// `SameSite`; `None`: not sent (the browser's default applies).
    pub same_site: Option<SameSite>,
    /// `Path`: starts with `/`.
    pub path: String,
    /// Keys the token so that it cannot be traced back to an address by guessing; must be the
    /// same in every instance. `None`: a fixed public key (stable, but whoever guesses a
    /// backend's address can confirm the guess).
    pub secret: Option<Secret>,
}

/// The cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    /// Requires `secure` (browsers drop `SameSite=None` cookies without `Secure`).
    None,
}

impl SameSite {
    /// The attribute value as written in `Set-Cookie`: `Strict`, `Lax`, `None`.
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// A secret from the configuration file. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself: to key a hash with, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A pool's backends from DNS: what is asked, of whom, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub query: DnsQuery,
    /// Name servers asked, in order, each until one answers. Empty (the default): the
    /// `nameserver` lines of `/etc/resolv.conf`, read at each resolution.
    pub resolvers: Vec<SocketAddr>,
    /// The records' TTL decides when they are asked again, but never sooner than this…
    pub min_interval: Duration,
    /// … and never later than this.
    pub max_interval: Duration,
    /// How long one query to one name server may take.
    pub timeout: Duration,
}

impl Discovery {
    /// Whether `other` asks the same question of the same servers: a reload keeping it keeps
    /// the backends already resolved (the intervals and timeout may differ).
    pub fn same_records(&self, other: &Discovery) -> bool {
        self.query == other.query && self.resolvers == other.resolvers
    }
}

/// What DNS is asked for a pool's backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsQuery {
    /// `dns = NAME, port = N`: the A and AAAA records of `name`, each address a backend on
    /// `port` (weight 1).
    Addresses { name: String, port: u16 },
    /// `srv = NAME`: the SRV records of `name` with the lowest priority; each target's
    /// addresses are backends on the record's port, weighted by the record's weight.
    Srv { name: String },
}

impl DnsQuery {
    /// The name asked (lowercase, without a trailing dot).
    pub fn name(&self) -> &str {
        match self {
            DnsQuery::Addresses { name, .. } | DnsQuery::Srv { name } => name,
        }
    }
}

impl std::fmt::Display for DnsQuery {
    /// `A/AAAA ws.default.svc.cluster.local port 8080`, `SRV _ws._tcp.example`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsQuery::Addresses { name, port } => write!(f, "A/AAAA {name} port {port}"),
            DnsQuery::Srv { name } => write!(f, "SRV {name}"),
        }
    }
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
    /// Once one side of a tunnel ended its half (sent FIN), the tunnel is closed this long later
    /// if the other side has not ended its half too. `None` ("0", the default): never.
    pub half_closed: Option<Duration>,
    /// Plain HTTP keep-alive: how long a client connection may wait, between two requests, for
    /// the first byte of the next one before sluice closes it.
    pub client_idle: Duration,
    /// Plain HTTP: a request or response body that moves no byte for this long (either side
    /// neither sending nor reading) ends the exchange (408 when the client stalled first).
    pub body_stall: Duration,
    /// On SIGTERM/SIGINT, how long live tunnels may take to finish before they are closed.
    pub shutdown: Duration,
    /// The last part of `shutdown` over which the tunnels still open are closed, oldest first,
    /// evenly (never all at once: every client reconnecting in the same instant is an outage
    /// of its own). Zero closes them all at the deadline. At most `shutdown`; by default a sixth
    /// of it, at most 5 s.
    pub shutdown_spread: Duration,
}

/// Limits on what one client may make sluice hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and headers, with the blank line). 431 past it.
    pub max_head_bytes: usize,
    /// Most header fields in a request head. 431 past it.
    pub max_headers: usize,
    /// Largest plain HTTP request body, in bytes. 413 past it. `None`: no limit.
    pub max_body_bytes: Option<u64>,
    /// Most client connections held at once, all listeners together. `None`: derived at start-up
    /// from the open-file limit (each proxied connection costs two sockets and, while data moves,
    /// up to four pipe ends).
    pub max_connections: Option<usize>,
}

/// Limits per client address (`[limits.per_source]`): the PROXY-protocol source when the
/// listener accepts the header, else the socket's peer; IPv6 addresses grouped by prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct PerSourceLimits {
    /// Most connections one source holds at once. `None` (the default): no limit.
    pub max_connections: Option<u32>,
    /// New connections one source may open per second, on average (a token bucket refilled at
    /// this rate). `None` (the default): no limit.
    pub connection_rate: Option<f64>,
    /// The bucket's size: how many new connections may come at once after a quiet spell.
    pub connection_burst: u32,
    /// Sources never limited (offices behind one NAT address, monitoring).
    pub exempt: Vec<IpNet>,
    /// IPv4 addresses count per this prefix length (32: each address alone).
    pub ipv4_prefix: u8,
    /// IPv6 addresses count per this prefix length (64: one customer site).
    pub ipv6_prefix: u8,
    /// Most sources tracked at once; the least recently seen is forgotten first.
    pub table_size: usize,
}

impl PerSourceLimits {
    /// Whether any limit is set (without one, no source is tracked).
    pub fn is_enabled(&self) -> bool {
        self.max_connections.is_some() || self.connection_rate.is_some()
    }
}

/// How a tunnel relays bytes after the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    pub mode: RelayMode,
    /// Capacity asked of each pipe (`F_SETPIPE_SZ`), in bytes.
    pub pipe_size: usize,
    /// What a direction that keeps filling its pipe (bulk) may grow it to, in bytes; at or
    /// below `pipe_size`, pipes never grow.
    pub pipe_max_size: usize,
    /// Most pipes held at once, in the pool and in tunnels together; past it tunnels copy.
    pub max_pipes: usize,
    /// Buffer per direction of a copying tunnel, taken only while data moves.
    pub buffer_size: usize,
    /// TCP keepalive on both sockets of every tunnel (client and backend). `None` (the
    /// default): the system's setting (normally off).
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// `TCP_USER_TIMEOUT` on both sockets of every tunnel: data (or keepalive probes) left
    /// unacknowledged this long closes the connection. `None` (the default): the system's.
    pub tcp_user_timeout: Option<Duration>,
}

/// TCP keepalive: after `idle` without traffic, a probe every `interval`; `count` unanswered
/// probes in a row close the connection, so a peer that vanished is noticed within about
/// `idle + interval × count`. Whole seconds (the kernel counts seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
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
