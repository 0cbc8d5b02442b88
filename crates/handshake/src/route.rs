//! Which pool a request goes to: the routes of one listener, in file order, first match wins.
//!
//! A route matches when every matcher it has matches (an absent matcher matches everything):
//!
//! - host: the request's host without its port ([`Request::host`]), compared case-insensitively,
//!   one trailing dot ignored (`a.example.` is `a.example`); `Exact` is that name, `Wildcard`
//!   (`.example.com`) any name with at least one label before that suffix;
//! - path: byte for byte on [`Request::path`] (the target before `?`): `Exact` equal,
//!   `Prefix` a byte prefix (`/chat` also matches `/chatroom`: write `/chat/` to avoid it);
//! - headers: every one present (name case-insensitive); with a value, some field of that name
//!   must equal it exactly (the field's surrounding whitespace is not part of its value).
//!
//! The first route that matches decides; then its `Origin` allow-list, if it has one
//! ([`sluice_config::OriginPolicy::allows`]), passes the request or refuses it with
//! [`HandshakeError::OriginNotAllowed`] (403): an origin is a policy of the route, not a
//! matcher, so a refused origin never falls through to a later route. Plain requests are
//! checked like upgrades (see `docs/security.md`).
//!
//! When nothing matches: [`HandshakeError::MisdirectedHost`] (421) if the listener asks for it
//! and no route could ever serve this host (every route has a host matcher, none matches), else
//! [`HandshakeError::NoRoute`] (404).

use sluice_config::{HeaderMatch, HostMatch, OriginPolicy, PathMatch, Route};

use crate::error::HandshakeError;
use crate::request::Request;

/// The compiled routes of one listener.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<CompiledRoute>,
    misdirected_status: bool,
}

#[derive(Debug, Clone)]
struct CompiledRoute {
    host: Option<HostMatch>,
    path: Option<PathMatch>,
    headers: Vec<HeaderMatch>,
    origins: Option<OriginPolicy>,
    /// `Err(name)`: `pool_index` did not know the pool.
    pool: Result<usize, String>,
}

impl Router {
    /// Compiles the routes of one listener (in file order). `pool_index` maps a pool name to
    /// its index in the caller's pool table; `unknown_host_status` is the listener's setting
    /// (421 answers misdirected hosts with 421, anything else with 404).
    pub fn new<'a>(
        routes: impl IntoIterator<Item = &'a Route>,
        pool_index: impl Fn(&str) -> Option<usize>,
        unknown_host_status: u16,
    ) -> Router {
        let routes = routes
            .into_iter()
            .map(|route| CompiledRoute {
                host: route.host.clone(),
                path: route.path.clone(),
                headers: route.headers.clone(),
                origins: route.origins.clone(),
                pool: pool_index(&route.pool).ok_or_else(|| route.pool.clone()),
            })
            .collect();
        Router {
            routes,
            misdirected_status: unknown_host_status == 421,
        }
    }

    /// The pool index of the first route matching `req`, once that route's origin check (if
    /// any) passed.
    pub fn route(&self, req: &Request) -> Result<usize, HandshakeError> {
        let host = req.host().map(|h| h.strip_suffix('.').unwrap_or(h));
        for route in &self.routes {
            if route.host.as_ref().is_some_and(|m| !host_matches(m, host))
                || route
                    .path
                    .as_ref()
                    .is_some_and(|m| !path_matches(m, req.path()))
                || !route.headers.iter().all(|m| header_matches(m, req))
            {
                continue;
            }
            if route
                .origins
                .as_ref()
                .is_some_and(|policy| !policy.allows(req.header_values("origin")))
            {
                return Err(HandshakeError::OriginNotAllowed);
            }
            return match &route.pool {
                Ok(index) => Ok(*index),
                Err(pool) => Err(HandshakeError::UnknownPool { pool: pool.clone() }),
            };
        }
        let host_known = self
            .routes
            .iter()
            .any(|r| r.host.as_ref().is_none_or(|m| host_matches(m, host)));
        if self.misdirected_status && !host_known {
            Err(HandshakeError::MisdirectedHost)
        } else {
            Err(HandshakeError::NoRoute)
        }
    }

    /// How many routes this router holds.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether this router has no route (every request is answered 404 or 421).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

fn host_matches(matcher: &HostMatch, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    match matcher {
        HostMatch::Exact(name) => host.eq_ignore_ascii_case(name),
        HostMatch::Wildcard(suffix) => host
            .len()
            .checked_sub(suffix.len())
            .filter(|&start| start > 0)
            .and_then(|start| host.as_bytes().get(start..))
            .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix.as_bytes())),
    }
}

fn path_matches(matcher: &PathMatch, path: &str) -> bool {
    match matcher {
        PathMatch::Exact(exact) => path == exact,
        PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
    }
}

fn header_matches(matcher: &HeaderMatch, req: &Request) -> bool {
    let mut values = req.header_values(&matcher.name);
    match &matcher.value {
        None => values.next().is_some(),
        Some(expected) => values.any(|v| v == expected.trim().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::parse_request;

    fn route(host: Option<HostMatch>, path: Option<PathMatch>, pool: &str) -> Route {
        Route {
            listener: "public".into(),
            host,
            path,
            headers: Vec::new(),
            pool: pool.into(),
            origins: None,
        }
    }

    fn exact(h: &str) -> Option<HostMatch> {
        Some(HostMatch::Exact(h.into()))
    }

    fn wildcard(suffix: &str) -> Option<HostMatch> {
        Some(HostMatch::Wildcard(suffix.into()))
    }

    fn pools(name: &str) -> Option<usize> {
        ["a", "b", "c", "d"].iter().position(|p| *p == name)
    }

    fn req(host: &str, target: &str, extra: &str) -> Request {
        let head = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n");
        parse_request(Bytes::from(head), 100).expect("valid")
    }

    fn routed(router: &Router, host: &str, target: &str) -> Result<usize, &'static str> {
        router.route(&req(host, target, "")).map_err(|e| e.label())
    }

    #[test]
    fn exact_and_wildcard_hosts() {
        let routes = [
            route(exact("chat.example.com"), None, "a"),
            route(wildcard(".example.com"), None, "b"),
        ];
        let router = Router::new(&routes, pools, 404);
        assert_eq!(routed(&router, "chat.example.com", "/"), Ok(0));
        assert_eq!(routed(&router, "CHAT.Example.COM", "/"), Ok(0));
        assert_eq!(routed(&router, "chat.example.com:8080", "/"), Ok(0));
        assert_eq!(routed(&router, "chat.example.com.", "/"), Ok(0));
        assert_eq!(routed(&router, "x.example.com", "/"), Ok(1));
        assert_eq!(routed(&router, "a.b.Example.com:1", "/"), Ok(1));
        // The wildcard needs a label before the suffix.
        assert_eq!(routed(&router, "example.com", "/"), Err("no_route"));
        assert_eq!(routed(&router, "xexample.com", "/"), Err("no_route"));
        assert_eq!(routed(&router, "chat.example.org", "/"), Err("no_route"));
    }

    #[test]
    fn paths_exact_and_prefix() {
        let routes = [
            route(None, Some(PathMatch::Exact("/ws".into())), "a"),
            route(None, Some(PathMatch::Prefix("/chat/".into())), "b"),
            route(None, Some(PathMatch::Prefix("/Chat".into())), "c"),
        ];
        let router = Router::new(&routes, pools, 404);
        assert_eq!(routed(&router, "h", "/ws"), Ok(0));
        assert_eq!(routed(&router, "h", "/ws?token=1"), Ok(0));
        assert_eq!(routed(&router, "h", "/ws/"), Err("no_route"));
        assert_eq!(routed(&router, "h", "/chat/room"), Ok(1));
        assert_eq!(routed(&router, "h", "/chat"), Err("no_route"));
        // Paths are compared byte for byte: case matters.
        assert_eq!(routed(&router, "h", "/Chatroom"), Ok(2));
        // Absolute-form targets route by their path.
        assert_eq!(routed(&router, "h", "http://h/ws?x"), Ok(0));
    }

    #[test]
    fn headers_with_and_without_value() {
        let mut canary = route(None, None, "a");
        canary.headers = vec![HeaderMatch {
            name: "x-canary".into(),
            value: Some("yes".into()),
        }];
        let mut tenant = route(None, None, "b");
        tenant.headers = vec![HeaderMatch {
            name: "x-tenant".into(),
            value: None,
        }];
        let fallback = route(None, None, "c");
        let routes = [canary, tenant, fallback];
        let router = Router::new(&routes, pools, 404);
        let pick = |extra: &str| router.route(&req("h", "/", extra)).ok();
        assert_eq!(pick("X-Canary: yes\r\n"), Some(0));
        assert_eq!(pick("x-canary:   yes  \r\n"), Some(0));
        assert_eq!(pick("X-Canary: no\r\nX-Canary: yes\r\n"), Some(0));
        assert_eq!(pick("X-Canary: YES\r\n"), Some(2));
        assert_eq!(pick("X-Canary: yes, no\r\n"), Some(2));
        assert_eq!(pick("X-Tenant:\r\n"), Some(1));
        assert_eq!(pick("X-TENANT: 42\r\n"), Some(1));
        assert_eq!(pick(""), Some(2));
    }

    #[test]
    fn all_matchers_of_a_route_must_match() {
        let mut both = route(
            exact("a.example"),
            Some(PathMatch::Prefix("/x".into())),
            "a",
        );
        both.headers = vec![HeaderMatch {
            name: "x-k".into(),
            value: None,
        }];
        let routes = [both];
        let router = Router::new(&routes, pools, 404);
        assert_eq!(
            router.route(&req("a.example", "/x", "X-K: 1\r\n")).ok(),
            Some(0)
        );
        assert!(router.route(&req("a.example", "/x", "")).is_err());
        assert!(router.route(&req("a.example", "/y", "X-K: 1\r\n")).is_err());
        assert!(router.route(&req("b.example", "/x", "X-K: 1\r\n")).is_err());
    }

    #[test]
    fn first_match_wins() {
        let routes = [
            route(None, Some(PathMatch::Prefix("/a".into())), "b"),
            route(exact("h"), Some(PathMatch::Prefix("/a".into())), "a"),
            route(None, None, "c"),
        ];
        let router = Router::new(&routes, pools, 404);
        assert_eq!(routed(&router, "h", "/abc"), Ok(1));
        assert_eq!(routed(&router, "h", "/zzz"), Ok(2));
    }

    #[test]
    fn not_found_versus_misdirected() {
        let routes = [
            route(
                exact("a.example"),
                Some(PathMatch::Exact("/ws".into())),
                "a",
            ),
            route(wildcard(".b.example"), None, "b"),
        ];
        let strict = Router::new(&routes, pools, 421);
        // Known host, unknown path: 404 even on a 421 listener.
        assert_eq!(routed(&strict, "a.example", "/other"), Err("no_route"));
        // Host no route serves: 421.
        assert_eq!(routed(&strict, "c.example", "/ws"), Err("misdirected_host"));
        assert_eq!(routed(&strict, "b.example", "/ws"), Err("misdirected_host"));
        let lenient = Router::new(&routes, pools, 404);
        assert_eq!(routed(&lenient, "c.example", "/ws"), Err("no_route"));
        // A route without a host matcher serves every host: never 421.
        let mut with_catch_all = routes.to_vec();
        with_catch_all.push(route(None, Some(PathMatch::Exact("/health".into())), "c"));
        let router = Router::new(&with_catch_all, pools, 421);
        assert_eq!(routed(&router, "c.example", "/ws"), Err("no_route"));
        // No routes at all: no route serves any host.
        let empty = Router::new(&[], pools, 421);
        assert!(empty.is_empty());
        assert_eq!(routed(&empty, "c.example", "/"), Err("misdirected_host"));
        let empty = Router::new(&[], pools, 404);
        assert_eq!(routed(&empty, "c.example", "/"), Err("no_route"));
    }

    #[test]
    fn http10_without_host_matches_only_host_less_routes() {
        let routes = [route(exact("a"), None, "a"), route(None, None, "b")];
        let router = Router::new(&routes, pools, 421);
        let req = parse_request(Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"), 10).expect("ok");
        assert_eq!(router.route(&req).ok(), Some(1));
    }

    #[test]
    fn unknown_pool_is_internal() {
        let routes = [route(None, None, "nope")];
        let router = Router::new(&routes, pools, 404);
        assert_eq!(router.len(), 1);
        let err = router.route(&req("h", "/", "")).expect_err("unknown pool");
        assert!(matches!(&err, HandshakeError::UnknownPool { pool } if pool == "nope"));
        assert_eq!(err.status(), Some(500));
    }

    #[test]
    fn origin_check_is_the_matched_routes_and_never_falls_through() {
        use sluice_config::{OriginPattern, OriginScheme};
        let mut guarded = route(None, Some(PathMatch::Prefix("/app".into())), "a");
        guarded.origins = Some(OriginPolicy {
            allowed: vec![OriginPattern::Exact {
                scheme: OriginScheme::Https,
                host: "app.example".into(),
                port: 443,
            }],
            allow_missing: false,
        });
        let routes = [guarded, route(None, None, "b")];
        let router = Router::new(&routes, pools, 404);
        let pick = |target: &str, extra: &str| {
            router
                .route(&req("h", target, extra))
                .map_err(|e| e.label())
        };
        assert_eq!(pick("/app", "Origin: https://app.example\r\n"), Ok(0));
        assert_eq!(
            pick("/app", "Origin: https://evil.example\r\n"),
            Err("origin_not_allowed")
        );
        assert_eq!(pick("/app", ""), Err("origin_not_allowed"));
        // Another route without a check is not affected.
        assert_eq!(pick("/other", "Origin: https://evil.example\r\n"), Ok(1));
        let err = router
            .route(&req("h", "/app", ""))
            .expect_err("refused origin");
        assert_eq!(err.status(), Some(403));
    }
}
