//! # sluice-discovery: a pool's backends from DNS
//!
//! Place in the pipeline: beside it, on the control plane. Before any connection is accepted,
//! and then on an interval, the proxy asks this crate for the backends of each pool that has a
//! `discovery` table; when the answer differs from the backends in force, the proxy applies it
//! exactly as a reload would (`crates/proxy/src/discovery.rs`). Nothing here is on a
//! connection's path.
//!
//! What it does: one [`resolve`] builds the backend list from
//! - `dns = NAME, port = N`: the A and AAAA records of `NAME` (asked side by side), each address
//!   a backend on port `N` with weight 1 (a Kubernetes headless Service lists its ready pods
//!   this way);
//! - `srv = NAME`: the SRV records of `NAME` (RFC 2782) of the lowest priority value (higher
//!   values are backups sluice does not use), each target's addresses taken from the answer's
//!   additional section or asked for, on the record's port, weighted by the record's weight
//!   (scaled into sluice's 1 to 256 when larger; 0 counts as 1).
//!
//! It says how long the answer may be kept: the smallest TTL of the records used, for the
//! caller to clamp between its `min_interval` and `max_interval`.
//!
//! What counts as a failure ([`ResolveError`], each with a fixed label for metrics): a server
//! failure or refusal, a timeout, an I/O error, a malformed answer, and also NXDOMAIN and an
//! answer with no usable address. The caller keeps the last good backends on every one of
//! them: DNS is not a health check, and an empty pool answers 503 to everyone (see
//! `docs/operations.md`).
//!
//! The client ([`client`]) asks each name server in turn over UDP, with TCP when the answer is
//! truncated; there is no cache (every resolution asks) and no search list (names are
//! absolute). Messages are encoded and parsed by `hickory-proto`.

#![forbid(unsafe_code)]

mod client;
mod resolv_conf;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use sluice_config::{Backend, Discovery, DnsQuery, defaults};

pub use client::QueryError;
pub use resolv_conf::{RESOLV_CONF, nameservers};

/// Backends found by one resolution, and how long they may be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Sorted by address; unique addresses.
    pub backends: Vec<Backend>,
    /// The smallest TTL of the records used.
    pub ttl: Duration,
}

/// Why a resolution gave no backend list. The caller keeps the last good one.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The name does not exist (NXDOMAIN).
    #[error("{0} does not exist (NXDOMAIN)")]
    NxDomain(String),
    /// The name exists but the answer held no usable address (NOERROR, no records; or SRV
    /// records whose targets have no address).
    #[error("{0}: the answer lists no backend")]
    Empty(String),
    /// No name server gave an answer that counts.
    #[error("{name}: {source}")]
    Query {
        name: String,
        #[source]
        source: QueryError,
    },
    /// `/etc/resolv.conf` could not be read, or names no server.
    #[error("{0}")]
    Resolvers(String),
}

impl ResolveError {
    /// A fixed label for logs and the `result` of `sluice_discovery_resolutions_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NxDomain(_) => "nxdomain",
            Self::Empty(_) => "empty",
            Self::Query { source, .. } => match source {
                QueryError::Rcode(ResponseCode::ServFail) => "servfail",
                QueryError::Rcode(ResponseCode::Refused) => "refused",
                QueryError::Rcode(_) => "error",
                QueryError::Timeout(_) => "timeout",
                QueryError::Io(_) | QueryError::NoServers => "error",
                QueryError::Malformed(_) => "malformed",
            },
            Self::Resolvers(_) => "error",
        }
    }
}

/// Every label [`ResolveError::label`] returns, and `success`.
pub const RESULTS: &[&str] = &[
    "success",
    "nxdomain",
    "empty",
    "servfail",
    "refused",
    "timeout",
    "malformed",
    "error",
];

/// Resolves a pool's discovery once: the backends it lists now.
pub async fn resolve(discovery: &Discovery) -> Result<Resolved, ResolveError> {
    let servers = if discovery.resolvers.is_empty() {
        nameservers(std::path::Path::new(RESOLV_CONF)).map_err(ResolveError::Resolvers)?
    } else {
        discovery.resolvers.clone()
    };
    let asker = Asker {
        servers: &servers,
        timeout: discovery.timeout,
    };
    match &discovery.query {
        DnsQuery::Addresses { name, port } => {
            let fqdn = fqdn(name)?;
            let found = asker.addresses(&fqdn).await?;
            let Some((ips, ttl)) = found.usable() else {
                return Err(found.no_answer(name));
            };
            let backends = ips
                .into_iter()
                .map(|ip| (SocketAddr::new(ip, *port), defaults::WEIGHT))
                .collect();
            Ok(Resolved {
                backends: unique_sorted(backends),
                ttl,
            })
        }
        DnsQuery::Srv { name } => asker.srv(name).await,
    }
}

/// Asks the servers of one resolution.
struct Asker<'a> {
    servers: &'a [SocketAddr],
    timeout: Duration,
}

/// The addresses of a name from its A and AAAA answers.
struct Addresses {
    ips: Vec<IpAddr>,
    ttl: Option<u32>,
    nxdomain: bool,
}

impl Addresses {
    fn usable(&self) -> Option<(Vec<IpAddr>, Duration)> {
        let ttl = self.ttl?;
        (!self.ips.is_empty()).then(|| (self.ips.clone(), Duration::from_secs(u64::from(ttl))))
    }

    fn no_answer(&self, name: &str) -> ResolveError {
        if self.nxdomain {
            ResolveError::NxDomain(name.to_owned())
        } else {
            ResolveError::Empty(name.to_owned())
        }
    }
}

impl Asker<'_> {
    async fn ask(&self, name: &Name, rtype: RecordType) -> Result<Message, ResolveError> {
        client::query(self.servers, name, rtype, self.timeout)
            .await
            .map_err(|source| ResolveError::Query {
                name: name.to_ascii().trim_end_matches('.').to_owned(),
                source,
            })
    }

    /// A and AAAA side by side; either failing fails both (half a list is not applied).
    async fn addresses(&self, name: &Name) -> Result<Addresses, ResolveError> {
        let (a, aaaa) = tokio::join!(
            self.ask(name, RecordType::A),
            self.ask(name, RecordType::AAAA)
        );
        let (a, aaaa) = (a?, aaaa?);
        let mut found = Addresses {
            ips: Vec::new(),
            ttl: None,
            nxdomain: a.response_code() == ResponseCode::NXDomain
                && aaaa.response_code() == ResponseCode::NXDomain,
        };
        for answer in [&a, &aaaa] {
            // The answer section of a recursive answer holds the CNAME chain and the final
            // records: every address in it belongs to the name asked.
            for record in answer.answers() {
                if let Some(ip) = ip_of(record) {
                    found.ips.push(ip);
                }
                found.ttl = Some(found.ttl.map_or(record.ttl(), |t| t.min(record.ttl())));
            }
        }
        Ok(found)
    }

    async fn srv(&self, name: &str) -> Result<Resolved, ResolveError> {
        let fqdn = fqdn(name)?;
        let answer = self.ask(&fqdn, RecordType::SRV).await?;
        if answer.response_code() == ResponseCode::NXDomain {
            return Err(ResolveError::NxDomain(name.to_owned()));
        }
        let mut ttl = u32::MAX;
        let mut records = Vec::new();
        for record in answer.answers() {
            ttl = ttl.min(record.ttl());
            if let RData::SRV(srv) = record.data()
                && !srv.target().is_root()
            {
                records.push(srv.clone());
            }
        }
        let Some(priority) = records.iter().map(|s| s.priority()).min() else {
            return Err(ResolveError::Empty(name.to_owned()));
        };
        records.retain(|s| s.priority() == priority);
        let max_weight = records.iter().map(|s| s.weight()).max().unwrap_or(0);

        // Each target's addresses: from the additional section when the server sent them,
        // else asked for (all targets side by side).
        let mut known: BTreeMap<Name, (Vec<IpAddr>, u32)> = BTreeMap::new();
        for record in answer.additionals() {
            if let Some(ip) = ip_of(record) {
                let entry = known
                    .entry(record.name().to_lowercase())
                    .or_insert((Vec::new(), u32::MAX));
                entry.0.push(ip);
                entry.1 = entry.1.min(record.ttl());
            }
        }
        let missing: Vec<Name> = records
            .iter()
            .map(|s| s.target().to_lowercase())
            .filter(|t| !known.contains_key(t))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let looked_up =
            futures_util::future::join_all(missing.iter().map(|t| self.addresses(t))).await;
        for (target, found) in missing.into_iter().zip(looked_up) {
            // A target that vanished (NXDOMAIN, no address) is skipped; a failure fails all.
            if let Some((ips, target_ttl)) = found?.usable() {
                let seconds = u32::try_from(target_ttl.as_secs()).unwrap_or(u32::MAX);
                known.insert(target, (ips, seconds));
            }
        }

        let mut backends = Vec::new();
        for srv in &records {
            let Some((ips, target_ttl)) = known.get(&srv.target().to_lowercase()) else {
                continue;
            };
            ttl = ttl.min(*target_ttl);
            let weight = srv_weight(srv.weight(), max_weight);
            for ip in ips {
                backends.push((SocketAddr::new(*ip, srv.port()), weight));
            }
        }
        if backends.is_empty() {
            return Err(ResolveError::Empty(name.to_owned()));
        }
        Ok(Resolved {
            backends: unique_sorted(backends),
            ttl: Duration::from_secs(u64::from(ttl)),
        })
    }
}

/// The absolute name asked for `name` (no search list).
fn fqdn(name: &str) -> Result<Name, ResolveError> {
    Name::from_ascii(format!("{name}.")).map_err(|e| ResolveError::Query {
        name: name.to_owned(),
        source: QueryError::Malformed(e.to_string()),
    })
}

fn ip_of(record: &Record) -> Option<IpAddr> {
    match record.data() {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// An SRV weight (0 to 65535, relative within a priority) as a sluice weight (1 to 256): kept
/// when the largest fits, else scaled so the largest is 256; 0 counts as 1.
fn srv_weight(weight: u16, max: u16) -> u32 {
    let max_weight = *defaults::WEIGHT_RANGE.end();
    let weight = u32::from(weight);
    let max = u32::from(max);
    let scaled = if max > max_weight {
        (weight * max_weight).div_ceil(max)
    } else {
        weight
    };
    scaled.clamp(1, max_weight)
}

/// Backends sorted by address, the first of each address kept.
fn unique_sorted(mut backends: Vec<(SocketAddr, u32)>) -> Vec<Backend> {
    backends.sort_by_key(|(addr, _)| *addr);
    backends.dedup_by_key(|(addr, _)| *addr);
    backends
        .into_iter()
        .map(|(addr, weight)| Backend { addr, weight })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_weights_fit_sluice_weights() {
        assert_eq!(srv_weight(0, 0), 1);
        assert_eq!(srv_weight(10, 20), 10);
        assert_eq!(srv_weight(33, 33), 33, "CoreDNS gives each of 3 pods 33");
        assert_eq!(srv_weight(256, 256), 256);
        assert_eq!(srv_weight(65535, 65535), 256);
        assert_eq!(srv_weight(1000, 2000), 128);
        assert_eq!(srv_weight(1, 65535), 1);
    }

    #[test]
    fn backends_are_sorted_and_unique() {
        let a: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert_eq!(
            unique_sorted(vec![(a, 1), (b, 2), (a, 3)]),
            vec![
                Backend { addr: b, weight: 2 },
                Backend { addr: a, weight: 1 }
            ]
        );
    }

    #[test]
    fn every_error_label_is_listed() {
        let errors = [
            ResolveError::NxDomain("x".into()),
            ResolveError::Empty("x".into()),
            ResolveError::Resolvers("x".into()),
        ];
        for e in &errors {
            assert!(RESULTS.contains(&e.label()));
        }
        for source in [
            QueryError::Rcode(ResponseCode::ServFail),
            QueryError::Rcode(ResponseCode::Refused),
            QueryError::Rcode(ResponseCode::NotImp),
            QueryError::Timeout(Duration::from_secs(1)),
            QueryError::NoServers,
            QueryError::Malformed("x".into()),
        ] {
            let e = ResolveError::Query {
                name: "x".into(),
                source,
            };
            assert!(RESULTS.contains(&e.label()), "{}", e.label());
        }
    }
}
