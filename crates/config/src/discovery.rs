//! The pool keys of where backends come from and go out from: `discovery` (DNS instead of a
//! `backends` list) and `source_addrs` (local addresses tunnels are opened from).

use std::net::IpAddr;

use crate::defaults;
use crate::model::{Backend, Discovery, DnsQuery};
use crate::read::{Item, Keys, Reader, Table};

const DISCOVERY: Keys = Keys {
    known: &[
        "dns",
        "srv",
        "port",
        "resolvers",
        "min_interval",
        "max_interval",
        "timeout",
    ],
    later: &[],
};

const EXAMPLE: &str = "{ dns = \"ws.default.svc.cluster.local\", port = 8080 } or \
                       { srv = \"_ws._tcp.example.com\" }";

/// `discovery = { dns = NAME, port = N | srv = NAME, resolvers, min_interval, max_interval,
/// timeout }`.
pub(crate) fn discovery(r: &mut Reader<'_>, item: Item<'_, '_>) -> Option<Discovery> {
    if !item.value.get_ref().is_table() {
        item.mismatch(r, &format!("a table such as {EXAMPLE}"));
        return None;
    }
    let t = item.table(r, &DISCOVERY)?;
    let query = query(r, &t);
    let resolvers = t.optional("resolvers", Vec::new(), |item| {
        let items = item.array(r, "an array of name server addresses such as [\"10.96.0.10:53\"]")?;
        let mut all = Some(Vec::new());
        for item in items {
            let addr = item.socket_addr(r);
            match (addr, &mut all) {
                (Some(addr), _) if addr.port() == 0 || addr.ip().is_unspecified() => {
                    r.report(
                        &item,
                        format_args!("{addr} is not a name server address; expected one such as \"10.96.0.10:53\""),
                    );
                    all = None;
                }
                (Some(addr), Some(all)) => all.push(addr),
                _ => all = None,
            }
        }
        all
    });
    let mut positive =
        |key: &str, default| t.optional(key, default, |item| item.positive_duration(r));
    let min_interval = positive("min_interval", defaults::DISCOVERY_MIN_INTERVAL);
    let max_interval = positive("max_interval", defaults::DISCOVERY_MAX_INTERVAL);
    let timeout = positive("timeout", defaults::DISCOVERY_TIMEOUT);
    if let (Some(min), Some(max), Some(item)) = (min_interval, max_interval, t.get("max_interval"))
        && max < min
    {
        r.report(
            &item,
            format_args!(
                "must be at least min_interval ({})",
                humantime::format_duration(min)
            ),
        );
        return None;
    }
    Some(Discovery {
        query: query?,
        resolvers: resolvers?,
        min_interval: min_interval?,
        max_interval: max_interval?,
        timeout: timeout?,
    })
}

/// `dns` with `port`, or `srv` alone.
fn query(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<DnsQuery> {
    let name = |r: &mut Reader<'_>, item: &Item<'_, '_>| {
        let text = item.str(r)?;
        match dns_name(text) {
            Ok(name) => Some(name),
            Err(problem) => {
                r.report(item, format_args!("\"{text}\": {problem}"));
                None
            }
        }
    };
    let port = t.get("port");
    match (t.get("dns"), t.get("srv")) {
        (Some(_), Some(srv)) => {
            r.report(&srv, "dns and srv cannot both be set; keep one");
            None
        }
        (Some(dns), None) => {
            let name = name(r, &dns);
            let port = match port {
                Some(item) => item.int(r, 1..=u16::MAX),
                None => {
                    r.report(
                        &dns,
                        "A/AAAA records carry no port; add port = N (the backends' port)",
                    );
                    None
                }
            };
            Some(DnsQuery::Addresses {
                name: name?,
                port: port?,
            })
        }
        (None, Some(srv)) => {
            let name = name(r, &srv);
            if let Some(port) = port {
                r.report(
                    &port,
                    "an srv discovery takes its ports from the SRV records; remove port",
                );
                return None;
            }
            Some(DnsQuery::Srv { name: name? })
        }
        (None, None) => {
            r.error(
                t.item.span(),
                format!(
                    "{}: a discovery needs dns (with port) or srv; expected {EXAMPLE}",
                    t.item.path
                ),
            );
            None
        }
    }
}

/// A DNS name as asked, lowercase, without its trailing dot: labels of letters, digits, `-`
/// and `_` (SRV names start with `_service._proto`), 1 to 63 bytes each, 253 in all. Names are
/// absolute: no search domain of resolv.conf is appended.
fn dns_name(text: &str) -> Result<String, String> {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() {
        return Err("a DNS name cannot be empty".into());
    }
    if name.len() > 253 {
        return Err("a DNS name has at most 253 characters".into());
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err("an IP address is not a DNS name; list it in backends instead".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label must have 1 to 63 characters".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "{c:?} is not allowed in a DNS name; expected letters, digits, '-', '_' and dots"
            ));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// `source_addrs = ["10.0.0.5", "10.0.0.6"]`: distinct unicast IPs; every static backend
/// needs one of its family.
pub(crate) fn source_addrs(
    r: &mut Reader<'_>,
    item: Item<'_, '_>,
    backends: Option<&[Backend]>,
) -> Option<Vec<IpAddr>> {
    let items = item.array(r, "an array of local IP addresses such as [\"10.0.0.5\"]")?;
    let mut all: Option<Vec<IpAddr>> = Some(Vec::new());
    for element in items {
        let Some(text) = element.str(r) else {
            all = None;
            continue;
        };
        let ip = match text.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                r.report(
                    &element,
                    format_args!("{ip} is not a source address; expected an address of this host"),
                );
                None
            }
            Ok(ip) => Some(ip),
            Err(_) => {
                r.report(
                    &element,
                    format_args!("invalid IP address \"{text}\"; expected one such as \"10.0.0.5\" (no port: the kernel picks it)"),
                );
                None
            }
        };
        match (ip, &mut all) {
            (Some(ip), Some(list)) if list.contains(&ip) => {
                r.report(&element, format_args!("duplicate source address {ip}"));
                all = None;
            }
            (Some(ip), Some(list)) => list.push(ip),
            _ => all = None,
        }
    }
    let all = all?;
    if let Some(backends) = backends
        && !all.is_empty()
        && let Some(b) = backends
            .iter()
            .find(|b| !all.iter().any(|ip| ip.is_ipv4() == b.addr.is_ipv4()))
    {
        let family = if b.addr.is_ipv4() { "IPv4" } else { "IPv6" };
        r.report(
            &item,
            format_args!(
                "backend {} is {family} but no source address is; add an {family} source address",
                b.addr
            ),
        );
        return None;
    }
    Some(all)
}

#[cfg(test)]
mod tests {
    use super::dns_name;
    use crate::model::DnsQuery;
    use crate::test_support::example_uncommented;

    #[test]
    fn the_example_file_shows_discovery_and_source_addrs() {
        let config = example_uncommented(&["# source_addrs", "# [pools.pods]", "# discovery"], &[]);
        let echo = config.pool("echo").expect("echo");
        assert_eq!(echo.source_addrs.len(), 2);
        let pods = config.pool("pods").expect("pods");
        assert!(pods.backends.is_empty());
        assert_eq!(
            pods.discovery.as_ref().map(|d| d.query.clone()),
            Some(DnsQuery::Addresses {
                name: "chat.default.svc.cluster.local".into(),
                port: 8080
            })
        );
    }

    #[test]
    fn dns_names_are_checked_and_lowercased() {
        assert_eq!(dns_name("WS.default.svc."), Ok("ws.default.svc".into()));
        assert_eq!(dns_name("_ws._tcp.example"), Ok("_ws._tcp.example".into()));
        assert!(dns_name("").is_err());
        assert!(dns_name("a..b").is_err());
        assert!(dns_name("10.0.0.1").is_err());
        assert!(dns_name("a b").is_err());
        assert!(dns_name(&"a".repeat(64)).is_err());
        assert!(dns_name(&["a"; 130].join(".")).is_err());
    }
}
