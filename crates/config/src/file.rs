//! The file's structure, one function per table: each reads its keys (reporting unknown ones),
//! converts them into typed values with the defaults of [`crate::defaults`], and checks the rules
//! that span several keys or tables (duplicate names and addresses, references between routes,
//! listeners and pools).
//!
//! Every function reads all of its keys before giving up, so one pass reports every error; a
//! function returns `None` when something in it was reported.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use crate::balancing;
use crate::defaults;
use crate::health;
use crate::matchers;
use crate::model::{
    AcceptProxy, Backend, CertificatePaths, Config, HeaderMatch, Limits, Listener, ListenerMode,
    ListenerTls, PerSourceLimits, Pool, ProxyVersion, Relay, RelayMode, Route, SniRoute,
    TcpKeepalive, Timeouts,
};
use crate::read::{Item, Keys, Reader, Table, Value, checked, did_you_mean, quoted_list};

const ROOT: Keys = Keys {
    known: &[
        "listeners",
        "routes",
        "pools",
        "timeouts",
        "limits",
        "relay",
        "admin",
    ],
    later: &[],
};

const LISTENER: Keys = Keys {
    known: &[
        "name",
        "listen",
        "mode",
        "unknown_host_status",
        "trusted_proxies",
        "pool",
        "default_pool",
        "sni_routes",
        "accept_proxy_protocol",
        "max_connections",
        "tls",
    ],
    later: &[],
};

const ACCEPT_PROXY: Keys = Keys {
    known: &["from"],
    later: &[],
};

const PER_SOURCE: Keys = Keys {
    known: &[
        "max_connections",
        "connection_rate",
        "connection_burst",
        "exempt",
        "ipv4_prefix",
        "ipv6_prefix",
        "table_size",
    ],
    later: &[],
};

const TLS: Keys = Keys {
    known: &["certificates"],
    later: &[],
};

const CERTIFICATE: Keys = Keys {
    known: &["cert", "key"],
    later: &[],
};

const SNI_ROUTE: Keys = Keys {
    known: &["sni", "pool"],
    later: &[],
};

/// Listener keys that only some modes read, and which.
const MODE_KEYS: [(&str, &[ListenerMode]); 6] = [
    ("tls", &[ListenerMode::Http]),
    ("unknown_host_status", &[ListenerMode::Http]),
    ("trusted_proxies", &[ListenerMode::Http]),
    ("pool", &[ListenerMode::Tcp]),
    ("default_pool", &[ListenerMode::TlsPassthrough]),
    ("sni_routes", &[ListenerMode::TlsPassthrough]),
];

const ROUTE: Keys = Keys {
    known: &[
        "listener",
        "host",
        "path_prefix",
        "path_exact",
        "headers",
        "pool",
    ],
    later: &[(
        "allowed_origins",
        "Origin allow-lists come in a later release",
    )],
};

const HEADER: Keys = Keys {
    known: &["name", "value"],
    later: &[],
};

const POOL: Keys = Keys {
    known: &[
        "balance",
        "hash_key",
        "hash_fallback",
        "hash_balance_factor",
        "sticky_cookie",
        "connect_attempts",
        "backends",
        "drain_timeout",
        "drain_spread",
        "health_check",
        "outlier",
        "slow_start",
        "idle_connections",
        "idle_timeout",
        "send_proxy_protocol",
        "max_connections_per_backend",
        "tls",
    ],
    later: &[],
};

const BACKEND: Keys = Keys {
    known: &["addr", "weight"],
    later: &[],
};

const TIMEOUTS: Keys = Keys {
    known: &[
        "handshake",
        "connect",
        "response",
        "tunnel_idle",
        "half_closed",
        "client_idle",
        "body_stall",
        "shutdown",
        "shutdown_spread",
    ],
    later: &[],
};

const LIMITS: Keys = Keys {
    known: &[
        "max_head_bytes",
        "max_headers",
        "max_body_bytes",
        "max_connections",
        "per_source",
    ],
    later: &[],
};

const RELAY: Keys = Keys {
    known: &[
        "mode",
        "pipe_size",
        "max_pipes",
        "buffer_size",
        "tcp_keepalive",
        "tcp_user_timeout",
    ],
    later: &[],
};

const TCP_KEEPALIVE: Keys = Keys {
    known: &["idle", "interval", "count"],
    later: &[],
};

const ADDR: &str = "an IP:port address such as \"127.0.0.1:8080\"";
const NAME: &str = "a name such as \"public\"";

/// The whole document.
pub(crate) fn config(r: &mut Reader<'_>, root: &Value<'_>) -> Option<Config> {
    let root = Item::root(root).table(r, &ROOT)?;

    let (pools, pool_names) = pools(r, &root);
    let (listeners, listener_names) = listeners(r, &root, pool_names.as_deref());
    let l4: Vec<(String, ListenerMode)> = listeners
        .iter()
        .flatten()
        .filter(|l| l.mode != ListenerMode::Http)
        .map(|l| (l.name.clone(), l.mode))
        .collect();
    if let (Some(pools), Some(listeners)) = (&pools, &listeners) {
        l4_pools_without_tls(r, pools, listeners);
    }
    let routes = routes(
        r,
        &root,
        listener_names.as_deref(),
        pool_names.as_deref(),
        &l4,
    );
    let timeouts = match root.get("timeouts") {
        Some(item) => timeouts(r, item),
        None => Some(Timeouts::default()),
    };
    let (limits, per_source) = match root.get("limits") {
        Some(item) => limits(r, item),
        None => (Some(Limits::default()), Some(PerSourceLimits::default())),
    };
    let relay = match root.get("relay") {
        Some(item) => relay(r, item),
        None => Some(Relay::default()),
    };
    let admin = match root.get("admin") {
        Some(item) => crate::admin::admin(r, item).map(Some),
        None => Some(None),
    };

    Some(Config {
        listeners: listeners?,
        routes: routes?,
        pools: pools?,
        timeouts: timeouts?,
        limits: limits?,
        per_source: per_source?,
        relay: relay?,
        admin: admin?,
    })
}

/// `tcp` and `tls-passthrough` listeners relay the client's bytes untouched: a pool they use
/// cannot originate TLS to its backends.
fn l4_pools_without_tls(r: &mut Reader<'_>, pools: &[Pool], listeners: &[Listener]) {
    let mut reported: Vec<&str> = Vec::new();
    for listener in listeners.iter().filter(|l| l.mode != ListenerMode::Http) {
        let names = listener
            .pool
            .iter()
            .chain(listener.sni_routes.iter().map(|route| &route.pool));
        for name in names {
            let Some(pool) = pools.iter().find(|p| p.name == *name) else {
                continue;
            };
            let Some(tls) = &pool.tls else { continue };
            if reported.contains(&pool.name.as_str()) {
                continue;
            }
            reported.push(&pool.name);
            r.push(tls.at.error(format_args!(
                "TLS to backends applies to pools of http listeners only; the {} listener \"{}\" relays the client's bytes untouched to this pool",
                listener.mode.as_str(),
                listener.name
            )));
        }
    }
}

/// A listener name as written, and where, for duplicate checks and references (kept even when
/// the listener has other errors, so a route naming it is not reported as well).
struct Declared {
    name: String,
    span: Range<usize>,
}

/// The listeners, and their names for routes to refer to. The names are `None` when there are
/// none or some cannot be known (a listener without a string `name`): routes are then not
/// checked against them, since the error already reported is the cause.
fn listeners(
    r: &mut Reader<'_>,
    root: &Table<'_, '_>,
    pools: Option<&[String]>,
) -> (Option<Vec<Listener>>, Option<Vec<String>>) {
    let Some(item) = root.require(r, "listeners", "at least one [[listeners]] table") else {
        return (None, None);
    };
    let Some(items) = item.array(r, "an array of tables ([[listeners]])") else {
        return (None, None);
    };
    if items.is_empty() {
        r.report(&item, "at least one [[listeners]] table is required");
    }
    let unnamed = items.iter().any(|item| {
        let name = item.value.get_ref().as_table().and_then(|t| t.get("name"));
        name.is_none_or(|name| !name.get_ref().is_str())
    });
    let mut names: Vec<Declared> = Vec::new();
    let mut addrs: Vec<(SocketAddr, Range<usize>)> = Vec::new();
    let all = collect(
        items
            .into_iter()
            .map(|item| listener(r, item, &mut names, &mut addrs, pools)),
    );
    (
        all.filter(|all| !all.is_empty()),
        (!unnamed && !names.is_empty()).then(|| names.into_iter().map(|d| d.name).collect()),
    )
}

fn listener(
    r: &mut Reader<'_>,
    item: Item<'_, '_>,
    names: &mut Vec<Declared>,
    addrs: &mut Vec<(SocketAddr, Range<usize>)>,
    pools: Option<&[String]>,
) -> Option<Listener> {
    let t = item.table(r, &LISTENER)?;

    let name = t.require(r, "name", NAME).and_then(|item| {
        let text = item.str(r)?;
        let first = names
            .iter()
            .find(|d| d.name == text)
            .map(|d| d.span.clone());
        if let Some(first) = first {
            let line = r.line(&first);
            r.report(
                &item,
                format_args!("duplicate listener name \"{text}\" (first used on line {line})"),
            );
            return None;
        }
        names.push(Declared {
            name: text.to_owned(),
            span: item.span(),
        });
        checked(r, &item, matchers::name(text))
    });

    let listen = t.require(r, "listen", ADDR).and_then(|item| {
        let addr = item.socket_addr(r)?;
        // Port 0 ("any free port") is left to the start-up code, which binds it; two listeners
        // on port 0 do not clash.
        if addr.port() != 0 {
            let clash = addrs.iter().find(|(other, _)| {
                other.port() == addr.port()
                    && (*other == addr
                        || (other.is_ipv4() == addr.is_ipv4()
                            && (other.ip().is_unspecified() || addr.ip().is_unspecified())))
            });
            if let Some((other, span)) = clash {
                let line = r.line(span);
                let problem = if *other == addr {
                    format!("address {addr} is already used by the listener on line {line}")
                } else {
                    format!("address {addr} overlaps {other} of the listener on line {line}")
                };
                r.report(&item, problem);
                return None;
            }
            addrs.push((addr, item.span()));
        }
        Some(addr)
    });

    let mode = t.optional("mode", defaults::LISTENER_MODE, |item| {
        item.choice(
            r,
            &[
                ("http", ListenerMode::Http),
                ("tcp", ListenerMode::Tcp),
                ("tls-passthrough", ListenerMode::TlsPassthrough),
            ],
            &[],
        )
    });
    // Keys of other modes are mistakes, not silently ignored settings.
    if let Some(mode) = mode {
        for (key, modes) in MODE_KEYS {
            if let Some(item) = t.get(key)
                && !modes.contains(&mode)
            {
                let which: Vec<&str> = modes.iter().map(|m| m.as_str()).collect();
                r.report(
                    &item,
                    format_args!(
                        "{key} applies to {} listeners only; this listener's mode is \"{}\"",
                        which.join(" and "),
                        mode.as_str()
                    ),
                );
            }
        }
    }
    let pool = match mode {
        Some(ListenerMode::Tcp) => t
            .require(r, "pool", "the name of the pool every connection goes to")
            .and_then(|item| reference(r, &item, "pool", pools))
            .map(Some),
        Some(ListenerMode::TlsPassthrough) => t.optional("default_pool", None, |item| {
            reference(r, &item, "pool", pools).map(Some)
        }),
        _ => Some(None),
    };
    let sni_routes = t.optional("sni_routes", Vec::new(), |item| {
        item.array(
            r,
            "an array of routes by server name, such as [{ sni = \"chat.example.com\", pool = \"chat\" }]",
        )
        .and_then(|items| collect(items.into_iter().map(|item| sni_route(r, item, pools))))
    });
    if mode == Some(ListenerMode::TlsPassthrough)
        && t.get("sni_routes").is_none()
        && t.get("default_pool").is_none()
        && let Some(item) = t.get("mode")
    {
        r.report(
            &item,
            "a tls-passthrough listener needs sni_routes, a default_pool, or both",
        );
    }
    let accept_proxy_protocol = t.optional("accept_proxy_protocol", None, |item| {
        accept_proxy(r, item).map(Some)
    });
    let max_connections = t.optional(
        "max_connections",
        defaults::LISTENER_MAX_CONNECTIONS,
        |item| item.int(r, defaults::MAX_CONNECTIONS_RANGE).map(Some),
    );
    let tls = t.optional("tls", None, |item| listener_tls(r, item).map(Some));

    let unknown_host_status = t.optional(
        "unknown_host_status",
        defaults::UNKNOWN_HOST_STATUS,
        |item| {
            item.int(r, 100..=599u16).and_then(|status| {
                if defaults::UNKNOWN_HOST_STATUSES.contains(&status) {
                    Some(status)
                } else {
                    let expected = "expected 404 (Not Found) or 421 (Misdirected Request)";
                    r.report(&item, format_args!("{status} is not allowed; {expected}"));
                    None
                }
            })
        },
    );

    let trusted_proxies = t.optional("trusted_proxies", Vec::new(), |item| networks(r, &item));

    Some(Listener {
        name: name?,
        listen: listen?,
        mode: mode?,
        unknown_host_status: unknown_host_status?,
        trusted_proxies: trusted_proxies?,
        pool: pool?,
        sni_routes: sni_routes?,
        accept_proxy_protocol: accept_proxy_protocol?,
        max_connections: max_connections?,
        tls: tls?,
    })
}

/// An array of addresses or CIDRs (`["10.0.0.0/8", "192.168.1.7"]`).
fn networks(r: &mut Reader<'_>, item: &Item<'_, '_>) -> Option<Vec<ipnet::IpNet>> {
    item.array(r, "an array of addresses or CIDRs")
        .and_then(|items| {
            collect(items.into_iter().map(|item| {
                let text = item.str(r)?;
                checked(r, &item, matchers::network(text))
            }))
        })
}

/// `accept_proxy_protocol = { from = ["10.0.0.0/8"] }`: at least one network.
fn accept_proxy(r: &mut Reader<'_>, item: Item<'_, '_>) -> Option<AcceptProxy> {
    let t = item.table(r, &ACCEPT_PROXY)?;
    let item = t.require(
        r,
        "from",
        "the networks of the peers that send the header, such as [\"10.0.0.0/8\"]",
    )?;
    let from = networks(r, &item)?;
    if from.is_empty() {
        r.report(
            &item,
            "at least one network is required: a PROXY header is trusted only from the L4 \
             edge in front of sluice, such as [\"10.0.0.0/8\"]",
        );
        return None;
    }
    Some(AcceptProxy { from })
}

/// `tls = { certificates = [{ cert = "a.pem", key = "a.key" }, ...] }`.
fn listener_tls(r: &mut Reader<'_>, item: Item<'_, '_>) -> Option<ListenerTls> {
    let t = item.table(r, &TLS)?;
    let item = t.require(
        r,
        "certificates",
        "an array such as [{ cert = \"chat.pem\", key = \"chat.key\" }]",
    )?;
    let items = item.array(
        r,
        "an array such as [{ cert = \"chat.pem\", key = \"chat.key\" }]",
    )?;
    if items.is_empty() {
        r.report(&item, "at least one certificate is required");
        return None;
    }
    let certificates = collect(items.into_iter().map(|item| {
        let t = item.table(r, &CERTIFICATE)?;
        let mut path = |key: &str, what: &str| {
            t.require(r, key, what).and_then(|item| {
                let text = item.str(r)?;
                if text.is_empty() {
                    r.report(&item, "a path cannot be empty");
                    return None;
                }
                Some(std::path::PathBuf::from(text))
            })
        };
        let cert = path("cert", "the path of a PEM certificate chain");
        let key = path("key", "the path of its PEM private key");
        Some(CertificatePaths {
            cert: cert?,
            key: key?,
        })
    }))?;
    Some(ListenerTls { certificates })
}

/// `{ sni = "chat.example.com", pool = "chat" }` (or `sni = "*.example.com"`).
fn sni_route(r: &mut Reader<'_>, item: Item<'_, '_>, pools: Option<&[String]>) -> Option<SniRoute> {
    let t = item.table(r, &SNI_ROUTE)?;
    let sni = t
        .require(
            r,
            "sni",
            "a server name such as \"chat.example.com\" or \"*.example.com\"",
        )
        .and_then(|item| {
            let text = item.str(r)?;
            checked(r, &item, matchers::host(text))
        });
    let pool = t
        .require(r, "pool", "the name of a pool")
        .and_then(|item| reference(r, &item, "pool", pools));
    Some(SniRoute {
        sni: sni?,
        pool: pool?,
    })
}

/// The pools, and their names for routes to refer to (`None` when there are none, an error
/// already reported).
fn pools(r: &mut Reader<'_>, root: &Table<'_, '_>) -> (Option<Vec<Pool>>, Option<Vec<String>>) {
    let Some(item) = root.require(r, "pools", POOLS_EXAMPLE) else {
        return (None, None);
    };
    let Some(entries) = item.entries(r) else {
        return (None, None);
    };
    if entries.is_empty() {
        r.report(
            &item,
            format_args!("at least one pool is required; expected {POOLS_EXAMPLE}"),
        );
    }
    let names: Vec<String> = entries
        .iter()
        .map(|(key, _)| key.get_ref().to_string())
        .collect();
    let all = collect(entries.into_iter().map(|(key, item)| {
        // A pool's name is its key: report a bad one there, not at the table.
        let name = match matchers::name(key.get_ref()) {
            Ok(name) => Some(name),
            Err(problem) => {
                r.error(key.span(), format!("{}: {problem}", item.path));
                None
            }
        };
        pool(r, name, item)
    }));
    (
        all.filter(|all| !all.is_empty()),
        (!names.is_empty()).then_some(names),
    )
}

const POOLS_EXAMPLE: &str =
    "at least one pool, such as [pools.main] with backends = [\"127.0.0.1:9001\"]";

fn pool(r: &mut Reader<'_>, name: Option<String>, item: Item<'_, '_>) -> Option<Pool> {
    let t = item.table(r, &POOL)?;

    // balance, hash_key, hash_fallback, hash_balance_factor, sticky_cookie.
    let balancing = balancing::balancing(r, &t);
    // health_check, outlier, slow_start.
    let health = health::health(r, &t);

    let connect_attempts = t.optional("connect_attempts", defaults::CONNECT_ATTEMPTS, |item| {
        item.int(r, defaults::CONNECT_ATTEMPTS_RANGE)
    });

    // Zero keeps a removed backend's tunnels until they end by themselves.
    let drain_timeout = t.optional("drain_timeout", defaults::DRAIN_TIMEOUT, |item| {
        item.duration(r).map(|d| Some(d).filter(|d| !d.is_zero()))
    });
    let drain_spread = t.optional("drain_spread", defaults::DRAIN_SPREAD, |item| {
        item.duration(r)
    });
    let idle_connections = t.optional("idle_connections", defaults::IDLE_CONNECTIONS, |item| {
        item.int(r, defaults::IDLE_CONNECTIONS_RANGE)
    });
    let idle_timeout = t.optional("idle_timeout", defaults::IDLE_TIMEOUT, |item| {
        let d = item.duration(r)?;
        if d.is_zero() {
            r.report(
                &item,
                "must be greater than zero; set idle_connections = 0 to keep no idle connection",
            );
            return None;
        }
        Some(d)
    });

    let send_proxy_protocol = t.optional(
        "send_proxy_protocol",
        defaults::SEND_PROXY_PROTOCOL,
        |item| {
            item.choice(
                r,
                &[("v1", ProxyVersion::V1), ("v2", ProxyVersion::V2)],
                &[],
            )
            .map(Some)
        },
    );
    let max_connections_per_backend = t.optional(
        "max_connections_per_backend",
        defaults::MAX_CONNECTIONS_PER_BACKEND,
        |item| {
            item.int(r, defaults::MAX_CONNECTIONS_PER_BACKEND_RANGE)
                .map(Some)
        },
    );
    let tls = t.optional("tls", None, |item| {
        crate::upstream::pool_tls(r, item).map(Some)
    });

    let backends = t
        .require(
            r,
            "backends",
            "an array of backend addresses, such as [\"127.0.0.1:9001\"]",
        )
        .and_then(|item| {
            let elements = item.array(r, "an array of backends")?;
            if elements.is_empty() {
                r.report(
                    &item,
                    "a pool needs at least one backend, such as [\"127.0.0.1:9001\"]",
                );
                return None;
            }
            let mut seen: Vec<(SocketAddr, String)> = Vec::new();
            collect(elements.into_iter().map(|element| {
                let backend = backend(r, element.clone())?;
                if let Some((_, first)) = seen.iter().find(|(addr, _)| *addr == backend.addr) {
                    r.report(
                        &element,
                        format_args!("duplicate backend {}; it is already {first}", backend.addr),
                    );
                    return None;
                }
                seen.push((backend.addr, element.path));
                Some(backend)
            }))
        });

    Some(Pool {
        name: name?,
        balance: balancing.as_ref()?.balance,
        hash: balancing.as_ref()?.hash.clone(),
        sticky_cookie: balancing?.sticky_cookie,
        backends: backends?,
        connect_attempts: connect_attempts?,
        drain_timeout: drain_timeout?,
        drain_spread: drain_spread?,
        health_check: health.as_ref()?.health_check.clone(),
        outlier: health.as_ref()?.outlier,
        slow_start: health?.slow_start,
        idle_connections: idle_connections?,
        idle_timeout: idle_timeout?,
        send_proxy_protocol: send_proxy_protocol?,
        max_connections_per_backend: max_connections_per_backend?,
        tls: tls?,
    })
}

/// `"10.0.0.1:9000"` or `{ addr = "10.0.0.1:9000", weight = 2 }`.
fn backend(r: &mut Reader<'_>, item: Item<'_, '_>) -> Option<Backend> {
    let (addr, weight) = if item.value.get_ref().is_str() {
        (backend_addr(r, &item), Some(defaults::WEIGHT))
    } else if item.value.get_ref().is_table() {
        let t = item.table(r, &BACKEND)?;
        let addr = t
            .require(r, "addr", ADDR)
            .and_then(|item| backend_addr(r, &item));
        let weight = t.optional("weight", defaults::WEIGHT, |item| {
            item.int(r, defaults::WEIGHT_RANGE)
        });
        (addr, weight)
    } else {
        item.mismatch(
            r,
            "a backend: \"IP:port\" or { addr = \"IP:port\", weight = N }",
        );
        return None;
    };
    Some(Backend {
        addr: addr?,
        weight: weight?,
    })
}

fn backend_addr(r: &mut Reader<'_>, item: &Item<'_, '_>) -> Option<SocketAddr> {
    let addr = item.socket_addr(r)?;
    if addr.port() == 0 {
        r.report(item, format_args!("{addr}: port 0 cannot be connected to"));
        return None;
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        r.report(
            item,
            format_args!(
                "{addr} is not a backend address; expected the address of one server, \
                 such as \"127.0.0.1:9001\""
            ),
        );
        return None;
    }
    Some(addr)
}

fn routes(
    r: &mut Reader<'_>,
    root: &Table<'_, '_>,
    listeners: Option<&[String]>,
    pools: Option<&[String]>,
    l4: &[(String, ListenerMode)],
) -> Option<Vec<Route>> {
    let Some(item) = root.get("routes") else {
        return Some(Vec::new());
    };
    let items = item.array(r, "an array of tables ([[routes]])")?;
    collect(
        items
            .into_iter()
            .map(|item| route(r, item, listeners, pools, l4)),
    )
}

fn route(
    r: &mut Reader<'_>,
    item: Item<'_, '_>,
    listeners: Option<&[String]>,
    pools: Option<&[String]>,
    l4: &[(String, ListenerMode)],
) -> Option<Route> {
    let t = item.table(r, &ROUTE)?;

    let listener = t
        .require(r, "listener", "the name of a listener")
        .and_then(|item| {
            let name = reference(r, &item, "listener", listeners)?;
            if let Some((_, mode)) = l4.iter().find(|(l, _)| *l == name) {
                let how = match mode {
                    ListenerMode::TlsPassthrough => "its sni_routes and default_pool",
                    _ => "its pool",
                };
                r.report(
                    &item,
                    format_args!(
                        "routes apply to http listeners only; \"{name}\" is a {} listener, \
                         routed by {how}",
                        mode.as_str()
                    ),
                );
                return None;
            }
            Some(name)
        });

    let host = t.optional("host", None, |item| {
        item.str(r)
            .and_then(|text| checked(r, &item, matchers::host(text)))
            .map(Some)
    });

    let prefix = t.get("path_prefix");
    let exact = t.get("path_exact");
    let path = match (prefix, exact) {
        (Some(_), Some(exact)) => {
            r.report(
                &exact,
                "path_prefix and path_exact cannot both be set; keep one",
            );
            None
        }
        (Some(item), None) | (None, Some(item)) => {
            let is_exact = item.path.ends_with("path_exact");
            item.str(r)
                .and_then(|text| checked(r, &item, matchers::path(text, is_exact)))
                .map(Some)
        }
        (None, None) => Some(None),
    };

    let headers = t.optional("headers", Vec::new(), |item| {
        item.array(
            r,
            "an array of header matches, such as [{ name = \"X-Tenant\", value = \"blue\" }]",
        )
        .and_then(|items| collect(items.into_iter().map(|item| header(r, item))))
    });

    let pool = t
        .require(r, "pool", "the name of a pool")
        .and_then(|item| reference(r, &item, "pool", pools));

    Some(Route {
        listener: listener?,
        host: host?,
        path: path?,
        headers: headers?,
        pool: pool?,
    })
}

/// A string naming one of `declared` (anything when `declared` is unknown).
fn reference(
    r: &mut Reader<'_>,
    item: &Item<'_, '_>,
    kind: &str,
    declared: Option<&[String]>,
) -> Option<String> {
    let text = item.str(r)?;
    let Some(declared) = declared else {
        return Some(text.to_owned());
    };
    if declared.iter().any(|d| d == text) {
        return Some(text.to_owned());
    }
    let names: Vec<&str> = declared.iter().map(String::as_str).collect();
    let hint = match did_you_mean(text, &names) {
        Some(m) => format!("; did you mean \"{m}\"?"),
        None if names.is_empty() => String::new(),
        None => format!("; the {kind}s are {}", quoted_list(&names)),
    };
    r.report(item, format_args!("no {kind} named \"{text}\"{hint}"));
    None
}

/// `{ name = "X-Tenant", value = "blue" }` or `{ name = "X-Beta" }`.
fn header(r: &mut Reader<'_>, item: Item<'_, '_>) -> Option<HeaderMatch> {
    let t = item.table(r, &HEADER)?;
    let name = t
        .require(r, "name", "a header name such as \"X-Tenant\"")
        .and_then(|item| {
            let text = item.str(r)?;
            checked(r, &item, matchers::header_name(text))
        });
    let value = t.optional("value", None, |item| {
        item.str(r)
            .and_then(|text| checked(r, &item, matchers::header_value(text)))
            .map(Some)
    });
    Some(HeaderMatch {
        name: name?,
        value: value?,
    })
}

fn timeouts(r: &mut Reader<'_>, item: Item<'_, '_>) -> Option<Timeouts> {
    let t = item.table(r, &TIMEOUTS)?;
    let mut positive = |key: &str, default| {
        t.optional(key, default, |item| {
            let d = item.duration(r)?;
            if d.is_zero() {
                r.report(&item, "must be greater than zero");
                return None;
            }
            Some(d)
        })
    };
    let handshake = positive("handshake", defaults::HANDSHAKE_TIMEOUT);
    let connect = positive("connect", defaults::CONNECT_TIMEOUT);
    let response = positive("response", defaults::RESPONSE_TIMEOUT);
    let shutdown = positive("shutdown", defaults::SHUTDOWN_TIMEOUT);
    let client_idle = positive("client_idle", defaults::CLIENT_IDLE_TIMEOUT);
    let body_stall = positive("body_stall", defaults::BODY_STALL_TIMEOUT);
    // Zero turns the idle timeout off.
    let tunnel_idle = t.optional("tunnel_idle", defaults::TUNNEL_IDLE_TIMEOUT, |item| {
        item.duration(r).map(|d| Some(d).filter(|d| !d.is_zero()))
    });
    // Zero turns the half-closed timeout off.
    let half_closed = t.optional("half_closed", defaults::HALF_CLOSED_TIMEOUT, |item| {
        item.duration(r).map(|d| Some(d).filter(|d| !d.is_zero()))
    });
    // Zero closes what is left all at once; it must fit inside the shutdown deadline.
    let limit = shutdown.unwrap_or(defaults::SHUTDOWN_TIMEOUT);
    let shutdown_spread = t.optional("shutdown_spread", defaults::shutdown_spread(limit), |item| {
        let d = item.duration(r)?;
        if d > limit {
            r.report(
                &item,
                format!(
                    "must not exceed timeouts.shutdown ({}): the spread is the last part of the shutdown deadline",
                    humantime::format_duration(limit)
                ),
            );
            return None;
        }
        Some(d)
    });
    Some(Timeouts {
        handshake: handshake?,
        connect: connect?,
        response: response?,
        tunnel_idle: tunnel_idle?,
        half_closed: half_closed?,
        client_idle: client_idle?,
        body_stall: body_stall?,
        shutdown: shutdown?,
        shutdown_spread: shutdown_spread?,
    })
}

fn limits(r: &mut Reader<'_>, item: Item<'_, '_>) -> (Option<Limits>, Option<PerSourceLimits>) {
    let Some(t) = item.table(r, &LIMITS) else {
        return (None, None);
    };
    let max_head_bytes = t.optional("max_head_bytes", defaults::MAX_HEAD_BYTES, |item| {
        item.int(r, defaults::MAX_HEAD_BYTES_RANGE)
    });
    let max_headers = t.optional("max_headers", defaults::MAX_HEADERS, |item| {
        item.int(r, defaults::MAX_HEADERS_RANGE)
    });
    let max_body_bytes = t.optional("max_body_bytes", defaults::MAX_BODY_BYTES, |item| {
        item.int(r, defaults::MAX_BODY_BYTES_RANGE).map(Some)
    });
    let max_connections = t.optional("max_connections", defaults::MAX_CONNECTIONS, |item| {
        item.int(r, defaults::MAX_CONNECTIONS_RANGE).map(Some)
    });
    let per_source = t.optional("per_source", PerSourceLimits::default(), |item| {
        per_source(r, item)
    });
    let limits = (|| {
        Some(Limits {
            max_head_bytes: max_head_bytes?,
            max_headers: max_headers?,
            max_body_bytes: max_body_bytes?,
            max_connections: max_connections?,
        })
    })();
    (limits, per_source)
}

/// `[limits.per_source]`.
fn per_source(r: &mut Reader<'_>, item: Item<'_, '_>) -> Option<PerSourceLimits> {
    let t = item.table(r, &PER_SOURCE)?;
    let max_connections = t.optional(
        "max_connections",
        defaults::PER_SOURCE_MAX_CONNECTIONS,
        |item| {
            item.int(r, defaults::PER_SOURCE_MAX_CONNECTIONS_RANGE)
                .map(Some)
        },
    );
    let connection_rate = t.optional(
        "connection_rate",
        defaults::PER_SOURCE_CONNECTION_RATE,
        |item| {
            let rate = item.number(r)?;
            let range =
                defaults::PER_SOURCE_CONNECTION_RATE_MIN..=defaults::PER_SOURCE_CONNECTION_RATE_MAX;
            if !range.contains(&rate) {
                r.report(
                    &item,
                    format_args!(
                        "{rate} is out of range; expected new connections per second, from {} \
                         to {}",
                        range.start(),
                        range.end()
                    ),
                );
                return None;
            }
            Some(Some(rate))
        },
    );
    let burst_default = defaults::per_source_connection_burst(connection_rate.flatten());
    let connection_burst = t.optional("connection_burst", burst_default, |item| {
        if t.get("connection_rate").is_none() {
            r.report(
                &item,
                "applies to connection_rate, which is not set; set both or neither",
            );
            return None;
        }
        item.int(r, defaults::PER_SOURCE_CONNECTION_BURST_RANGE)
    });
    let exempt = t.optional("exempt", Vec::new(), |item| networks(r, &item));
    let ipv4_prefix = t.optional("ipv4_prefix", defaults::PER_SOURCE_IPV4_PREFIX, |item| {
        item.int(r, 1..=32u8)
    });
    let ipv6_prefix = t.optional("ipv6_prefix", defaults::PER_SOURCE_IPV6_PREFIX, |item| {
        item.int(r, 1..=128u8)
    });
    let table_size = t.optional("table_size", defaults::PER_SOURCE_TABLE_SIZE, |item| {
        item.int(r, defaults::PER_SOURCE_TABLE_SIZE_RANGE)
    });
    Some(PerSourceLimits {
        max_connections: max_connections?,
        connection_rate: connection_rate?,
        connection_burst: connection_burst?,
        exempt: exempt?,
        ipv4_prefix: ipv4_prefix?,
        ipv6_prefix: ipv6_prefix?,
        table_size: table_size?,
    })
}

fn relay(r: &mut Reader<'_>, item: Item<'_, '_>) -> Option<Relay> {
    let t = item.table(r, &RELAY)?;
    let mode = t.optional("mode", defaults::RELAY_MODE, |item| {
        item.choice(
            r,
            &[
                ("auto", RelayMode::Auto),
                ("splice", RelayMode::Splice),
                ("copy", RelayMode::Copy),
            ],
            &[],
        )
    });
    let pipe_size = t.optional("pipe_size", defaults::PIPE_SIZE, |item| {
        item.int(r, defaults::PIPE_SIZE_RANGE)
    });
    let max_pipes = t.optional("max_pipes", defaults::MAX_PIPES, |item| {
        item.int(r, defaults::MAX_PIPES_RANGE)
    });
    let buffer_size = t.optional("buffer_size", defaults::BUFFER_SIZE, |item| {
        item.int(r, defaults::BUFFER_SIZE_RANGE)
    });
    let tcp_keepalive = t.optional("tcp_keepalive", defaults::TCP_KEEPALIVE, |item| {
        tcp_keepalive(r, item).map(Some)
    });
    // Zero leaves the system's setting.
    let tcp_user_timeout = t.optional("tcp_user_timeout", defaults::TCP_USER_TIMEOUT, |item| {
        let d = item.duration(r)?;
        if u32::try_from(d.as_millis()).is_err() {
            r.report(
                &item,
                "must be at most 49d (the kernel counts milliseconds in 32 bits)",
            );
            return None;
        }
        Some(Some(d).filter(|d| !d.is_zero()))
    });
    Some(Relay {
        mode: mode?,
        pipe_size: pipe_size?,
        max_pipes: max_pipes?,
        buffer_size: buffer_size?,
        tcp_keepalive: tcp_keepalive?,
        tcp_user_timeout: tcp_user_timeout?,
    })
}

/// `{ idle = "60s", interval = "10s", count = 3 }`: whole seconds, 1 to 32767 (what
/// `TCP_KEEPIDLE` and `TCP_KEEPINTVL` take), and 1 to 127 probes.
fn tcp_keepalive(r: &mut Reader<'_>, item: Item<'_, '_>) -> Option<TcpKeepalive> {
    let t = item.table(r, &TCP_KEEPALIVE)?;
    let mut seconds = |key: &str, default: Duration| {
        t.optional(key, default, |item| {
            let d = item.duration(r)?;
            if d.subsec_nanos() != 0 || d.is_zero() {
                r.report(
                    &item,
                    format_args!(
                        "must be a whole number of seconds, at least 1s (the kernel counts \
                         seconds), such as \"{}s\"",
                        d.as_secs().max(1)
                    ),
                );
                return None;
            }
            if d.as_secs() > defaults::TCP_KEEPALIVE_SECONDS_MAX {
                r.report(
                    &item,
                    format_args!("must be at most {}s", defaults::TCP_KEEPALIVE_SECONDS_MAX),
                );
                return None;
            }
            Some(d)
        })
    };
    let idle = seconds("idle", defaults::TCP_KEEPALIVE_IDLE);
    let interval = seconds("interval", defaults::TCP_KEEPALIVE_INTERVAL);
    let count = t.optional("count", defaults::TCP_KEEPALIVE_COUNT, |item| {
        item.int(r, defaults::TCP_KEEPALIVE_COUNT_RANGE)
    });
    Some(TcpKeepalive {
        idle: idle?,
        interval: interval?,
        count: count?,
    })
}

/// All values when every one is `Some`. Unlike `collect::<Option<Vec<_>>>()` it does not stop
/// at the first `None`: every element is read, so every element's errors are reported.
fn collect<T>(items: impl IntoIterator<Item = Option<T>>) -> Option<Vec<T>> {
    let mut all = Some(Vec::new());
    for item in items {
        match (&mut all, item) {
            (Some(all), Some(item)) => all.push(item),
            _ => all = None,
        }
    }
    all
}
