//! Outbound source addresses: a pool's `source_addrs`, taken in turn connection by connection.
//!
//! One local address can hold about 28,000 connections to one backend address: the ephemeral
//! port range (`net.ipv4.ip_local_port_range`) is the limit of the 4-tuple. Each more source
//! address adds as many. The socket is bound to the source with `IP_BIND_ADDRESS_NO_PORT`, so
//! the kernel picks the port at `connect` with the whole 4-tuple known, and one port serves
//! many backends; without it, `bind` would reserve a port per socket for every destination.
//!
//! When the kernel has no port left for a source (`EADDRNOTAVAIL` from `connect`), the next
//! source is tried, and `sluice_source_addr_exhausted_total` counts it. A source that cannot
//! be bound (not an address of this host any more) is skipped with a warning; start and reload
//! refuse a configuration whose source addresses cannot be bound ([`check`]).
//!
//! Health checks do not use the source addresses: they connect from the address the system
//! chooses (one socket per check, far from any port limit).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
use sluice_config::Config;
use tokio::net::{TcpSocket, TcpStream};
use tracing::warn;

/// A pool's source addresses and whose turn is next.
#[derive(Debug)]
pub(crate) struct SourceAddrs {
    pool: String,
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

/// For pools without source addresses.
pub(crate) static NONE: SourceAddrs = SourceAddrs {
    pool: String::new(),
    addrs: Vec::new(),
    next: AtomicUsize::new(0),
};

impl SourceAddrs {
    pub(crate) fn new(pool: &str, addrs: &[IpAddr]) -> Self {
        Self {
            pool: pool.to_owned(),
            addrs: addrs.to_vec(),
            next: AtomicUsize::new(0),
        }
    }

    /// One TCP connect to `addr`: from the next source address of `addr`'s family in turn,
    /// moving on while a source is out of ports; from the system's choice without sources.
    pub(crate) async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        if self.addrs.is_empty() {
            return TcpStream::connect(addr).await;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.addrs.len();
        let mut last = None;
        for source in (0..count).filter_map(|i| self.addrs.get((start + i) % count)) {
            if source.is_ipv4() != addr.is_ipv4() {
                continue;
            }
            match connect_from(*source, addr).await {
                Err(Failure::Bind(error)) => {
                    warn!(pool = %self.pool, source = %source, %error, "source address cannot be bound; trying the next");
                    last = Some(error);
                }
                Err(Failure::Connect(error))
                    if error.raw_os_error() == Some(nix::libc::EADDRNOTAVAIL) =>
                {
                    warn!(pool = %self.pool, source = %source, backend = %addr, "source address out of ports; trying the next");
                    sluice_metrics::global::source_addr_exhausted(&self.pool, &source.to_string());
                    last = Some(error);
                }
                Err(Failure::Connect(error)) => return Err(error),
                Ok(stream) => return Ok(stream),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!(
                    "pool {}: no source address of {addr}'s family in source_addrs",
                    self.pool
                ),
            )
        }))
    }
}

enum Failure {
    Bind(io::Error),
    Connect(io::Error),
}

async fn connect_from(source: IpAddr, addr: SocketAddr) -> Result<TcpStream, Failure> {
    let socket = bound(source).map_err(Failure::Bind)?;
    socket.connect(addr).await.map_err(Failure::Connect)
}

/// A TCP socket bound to `source` with `IP_BIND_ADDRESS_NO_PORT` (no port reserved yet).
fn bound(source: IpAddr) -> io::Result<TcpSocket> {
    let socket = if source.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    setsockopt(&socket, IpBindAddressNoPort, &true)?;
    socket.bind(SocketAddr::new(source, 0))?;
    Ok(socket)
}

/// The source addresses of `config` that cannot be bound on this host, one line each (empty:
/// all can). Start and reload refuse a configuration with any.
pub fn check(config: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    for pool in &config.pools {
        for source in &pool.source_addrs {
            if let Err(error) = bound(*source) {
                errors.push(format!(
                    "pool {}: source address {source} cannot be bound ({error}); \
                     is it an address of this host?",
                    pool.name
                ));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_rotate_over_the_sources() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sources = SourceAddrs::new(
            "main",
            &["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()],
        );
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (client, accepted) = tokio::join!(sources.connect(addr), listener.accept());
            let _client = client.unwrap();
            seen.push(accepted.unwrap().1.ip().to_string());
        }
        assert_eq!(seen, ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]);
    }

    #[test]
    fn a_source_is_bound_without_reserving_a_port() {
        let socket = bound("127.0.0.2".parse().unwrap()).unwrap();
        assert!(nix::sys::socket::getsockopt(&socket, IpBindAddressNoPort).unwrap());
        // The port is chosen at connect time, with the destination known.
        assert_eq!(socket.local_addr().unwrap(), "127.0.0.2:0".parse().unwrap());
    }

    #[tokio::test]
    async fn ipv6_sources_bind_without_a_port_too() {
        // Hosts without IPv6 loopback have nothing to test here.
        let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
            return;
        };
        let addr = listener.local_addr().unwrap();
        let sources = SourceAddrs::new("main", &["::1".parse().unwrap()]);
        let (client, accepted) = tokio::join!(sources.connect(addr), listener.accept());
        assert!(client.is_ok(), "{client:?}");
        assert_eq!(accepted.unwrap().1.ip(), "::1".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn a_backend_of_another_family_is_refused_with_a_reason() {
        let sources = SourceAddrs::new("main", &["127.0.0.2".parse().unwrap()]);
        let error = sources
            .connect("[::1]:9".parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrNotAvailable);
        assert!(error.to_string().contains("no source address"), "{error}");
    }

    #[test]
    fn sources_that_are_not_local_are_named() {
        let mut config = sluice_config::parse(
            "[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n[pools.main]\n\
             source_addrs = [\"127.0.0.2\", \"192.0.2.1\"]\nbackends = [\"127.0.0.1:9\"]\n",
            "t.toml",
        )
        .unwrap();
        let errors = check(&config);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("pool main: source address 192.0.2.1 cannot be bound"),
            "{errors:?}"
        );
        config.pools[0].source_addrs.pop();
        assert!(check(&config).is_empty());
    }
}
