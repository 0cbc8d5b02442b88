//! A route's `Origin` allow-list (`allowed_origins`, `allow_missing_origin`): the patterns as
//! configured, and the check of a request's `Origin` field against them.
//!
//! Browsers send `Origin` (RFC 6454 §7) with every WebSocket opening handshake (RFC 6455
//! §4.1 item 8, §10.2) and with every cross-origin or non-GET request, and they apply no
//! same-origin rule to WebSocket: a page on `evil.example` can open a socket to a chat server
//! with the user's cookies (cross-site WebSocket hijacking). The server must look at `Origin`;
//! this is where sluice does it for every backend of a route.
//!
//! Matching rules (see [`OriginPolicy::allows`]):
//!
//! - An origin is `scheme://host[:port]` (RFC 6454 §6.2). Schemes `http` and `https` only;
//!   scheme and host compare case-insensitively; a missing port is the scheme's default (80,
//!   443), so `https://a.example` and `https://A.example:443` are the same origin.
//! - `https://*.example.com` matches any host that ends in `.example.com` with **one or more**
//!   labels before it (`a.example.com`, `a.b.example.com`), not `example.com` itself (list it
//!   too), on the pattern's scheme and port (443 here).
//! - `"null"` (sent by sandboxed iframes, `file:` pages, some redirects) matches only a literal
//!   `"null"` entry: no pattern stands for it.
//! - A request with several `Origin` fields, or a value that is not one serialized origin, is
//!   refused (a browser never sends either).
//! - A request without `Origin` is allowed when `allow_missing_origin` is true (the default):
//!   browsers always send it on a WebSocket handshake, so its absence means a non-browser client
//!   (a mobile app, a server), which cross-site hijacking does not concern.

use crate::matchers;

/// A route's origin check. `None` on a route (no `allowed_origins`): no check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPolicy {
    /// `allowed_origins`, in file order. Empty: every origin is refused (only requests without
    /// `Origin` pass, if `allow_missing` allows).
    pub allowed: Vec<OriginPattern>,
    /// `allow_missing_origin`: whether a request without `Origin` passes.
    pub allow_missing: bool,
}

/// One entry of `allowed_origins`, normalised (lowercase, explicit port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `"null"`, literally.
    Null,
    /// `https://app.example.com`: this origin only.
    Exact {
        scheme: OriginScheme,
        host: String,
        port: u16,
    },
    /// `https://*.example.com`: hosts ending in `suffix` (stored with its leading dot,
    /// `.example.com`) with at least one label before it.
    Wildcard {
        scheme: OriginScheme,
        suffix: String,
        port: u16,
    },
}

/// The schemes a web origin has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginScheme {
    Http,
    Https,
}

impl OriginScheme {
    fn parse(text: &str) -> Option<OriginScheme> {
        if text.eq_ignore_ascii_case("https") {
            Some(OriginScheme::Https)
        } else if text.eq_ignore_ascii_case("http") {
            Some(OriginScheme::Http)
        } else {
            None
        }
    }

    fn default_port(self) -> u16 {
        match self {
            OriginScheme::Http => 80,
            OriginScheme::Https => 443,
        }
    }
}

impl OriginPolicy {
    /// Whether a request whose `Origin` fields are `values` (raw field values, in order) may
    /// pass. Allocates nothing.
    pub fn allows<'a>(&self, mut values: impl Iterator<Item = &'a [u8]>) -> bool {
        let Some(value) = values.next() else {
            return self.allow_missing;
        };
        if values.next().is_some() {
            return false;
        }
        let value = trim(value);
        if value == b"null" {
            return self.allowed.contains(&OriginPattern::Null);
        }
        let Some(origin) = std::str::from_utf8(value).ok().and_then(Origin::parse) else {
            return false;
        };
        self.allowed.iter().any(|p| p.matches(&origin))
    }
}

impl OriginPattern {
    fn matches(&self, origin: &Origin<'_>) -> bool {
        match self {
            OriginPattern::Null => false,
            OriginPattern::Exact { scheme, host, port } => {
                *scheme == origin.scheme
                    && *port == origin.port
                    && origin.host.eq_ignore_ascii_case(host)
            }
            OriginPattern::Wildcard {
                scheme,
                suffix,
                port,
            } => {
                *scheme == origin.scheme
                    && *port == origin.port
                    && origin
                        .host
                        .len()
                        .checked_sub(suffix.len())
                        .filter(|&start| start > 0)
                        .and_then(|start| origin.host.get(start..))
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
        }
    }
}

/// A serialized origin, split (the host as sent: compare it case-insensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Origin<'a> {
    scheme: OriginScheme,
    host: &'a str,
    port: u16,
}

impl<'a> Origin<'a> {
    /// `scheme://host[:port]`, nothing before or after; the host a name of letters, digits,
    /// `-`, `_` and dots, or a bracketed IPv6 literal.
    fn parse(text: &'a str) -> Option<Origin<'a>> {
        let (scheme, rest) = text.split_once("://")?;
        let scheme = OriginScheme::parse(scheme)?;
        let (host, port) = split_port(rest)?;
        let host_ok = if let Some(inner) = host.strip_prefix('[') {
            inner.strip_suffix(']').is_some_and(|ip| {
                !ip.is_empty()
                    && ip
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            })
        } else {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        host_ok.then(|| Origin {
            scheme,
            host,
            port: port.unwrap_or(scheme.default_port()),
        })
    }
}

/// `host[:port]` → host and port (`None`: not written). `None` when the port is not 1 to 5
/// digits within `u16`.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let port_at = match authority.rfind(':') {
        // A colon inside a bracketed IPv6 literal is not a port separator.
        Some(at) if !authority.get(at..)?.contains(']') => at,
        _ => return Some((authority, None)),
    };
    let (host, port) = (authority.get(..port_at)?, authority.get(port_at + 1..)?);
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((host, Some(port.parse().ok()?)))
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    value.get(start..end).unwrap_or_default()
}

/// One `allowed_origins` entry from the file, or what is wrong with it.
pub(crate) fn pattern(text: &str) -> Result<OriginPattern, String> {
    const EXPECTED: &str = "expected an origin such as \"https://app.example.com\", \
                            \"https://*.example.com\", \"http://localhost:3000\" or \"null\"";
    if text == "null" {
        return Ok(OriginPattern::Null);
    }
    if text.eq_ignore_ascii_case("null") {
        return Err(format!(
            "invalid origin \"{text}\": the opaque origin is written \"null\", in lowercase"
        ));
    }
    if text == "*" {
        return Err(
            "\"*\" is not an origin pattern; leave allowed_origins out to allow every origin"
                .into(),
        );
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!("invalid origin \"{text}\": no scheme; {EXPECTED}"));
    };
    let Some(scheme) = OriginScheme::parse(scheme) else {
        return Err(format!(
            "invalid origin \"{text}\": the scheme must be http or https (browsers send the \
             page's origin, also for ws:// and wss:// connections); {EXPECTED}"
        ));
    };
    if let Some(at) = rest.find(['/', '?', '#']) {
        let bare = text.get(..text.len() - (rest.len() - at)).unwrap_or(text);
        return Err(format!(
            "invalid origin \"{text}\": an origin has no path, query or trailing slash; write \
             \"{bare}\""
        ));
    }
    if rest.contains('@') {
        return Err(format!(
            "invalid origin \"{text}\": an origin has no user information; {EXPECTED}"
        ));
    }
    let Some((host, port)) = split_port(rest) else {
        return Err(format!(
            "invalid origin \"{text}\": the port must be a number from 1 to 65535 (a wildcard \
             port is not supported: list each port)"
        ));
    };
    if port == Some(0) {
        return Err(format!(
            "invalid origin \"{text}\": the port must be a number from 1 to 65535"
        ));
    }
    let port = port.unwrap_or(scheme.default_port());
    if let Some(suffix) = host.strip_prefix("*.") {
        if suffix.contains('*') {
            return Err(wildcard_hint(text));
        }
        let suffix = matchers::dns_name(suffix, text)?;
        return Ok(OriginPattern::Wildcard {
            scheme,
            suffix: format!(".{suffix}"),
            port,
        });
    }
    if host.contains('*') {
        return Err(wildcard_hint(text));
    }
    if host.starts_with('[') {
        let ip_ok = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|ip| ip.parse::<std::net::Ipv6Addr>().ok())
            .is_some();
        if !ip_ok {
            return Err(format!(
                "invalid origin \"{text}\": not a valid bracketed IPv6 address"
            ));
        }
        return Ok(OriginPattern::Exact {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        });
    }
    let host = matchers::dns_name(host, text)?;
    Ok(OriginPattern::Exact { scheme, host, port })
}

fn wildcard_hint(text: &str) -> String {
    format!(
        "invalid origin \"{text}\": a wildcard may only be the whole first label of the host, \
         as in \"https://*.example.com\""
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str], allow_missing: bool) -> OriginPolicy {
        OriginPolicy {
            allowed: patterns
                .iter()
                .map(|p| pattern(p).expect("valid pattern"))
                .collect(),
            allow_missing,
        }
    }

    fn allows(policy: &OriginPolicy, values: &[&str]) -> bool {
        policy.allows(values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn exact_origin_matches_after_normalising_case_and_default_port() {
        let p = policy(&["https://App.Example.com"], true);
        for ok in [
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "https://app.example.com:443",
            " https://app.example.com\t",
        ] {
            assert!(allows(&p, &[ok]), "{ok}");
        }
        for no in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.co",
            "https://xapp.example.com",
            "https://app.example.com.evil.com",
            "https://app.example.com/",
            "https://user@app.example.com",
            "https://app.example.com:",
            "https://app.example.com:99999",
            "https://app.example.com:+443",
            "app.example.com",
            "wss://app.example.com",
            "",
        ] {
            assert!(!allows(&p, &[no]), "{no}");
        }
    }

    #[test]
    fn explicit_ports_must_match() {
        let p = policy(&["http://localhost:3000", "http://[::1]:3000"], true);
        assert!(allows(&p, &["http://localhost:3000"]));
        assert!(allows(&p, &["http://[::1]:3000"]));
        assert!(!allows(&p, &["http://localhost"]));
        assert!(!allows(&p, &["http://localhost:3001"]));
        assert!(!allows(&p, &["http://[::1]"]));
        let default = policy(&["http://example.com"], true);
        assert!(allows(&default, &["http://example.com:80"]));
    }

    #[test]
    fn wildcard_matches_one_or_more_labels_but_not_the_bare_domain() {
        let p = policy(&["https://*.example.com"], true);
        assert!(allows(&p, &["https://a.example.com"]));
        assert!(allows(&p, &["https://a.b.example.com"]));
        assert!(allows(&p, &["https://A.EXAMPLE.COM:443"]));
        assert!(!allows(&p, &["https://example.com"]));
        assert!(!allows(&p, &["https://.example.com"]));
        assert!(!allows(&p, &["https://aexample.com"]));
        assert!(!allows(&p, &["http://a.example.com"]));
        assert!(!allows(&p, &["https://a.example.com:8443"]));
        assert!(!allows(&p, &["https://a.example.com.evil.org"]));
        assert!(!allows(&p, &["https://evil.org#.example.com"]));
        assert!(!allows(&p, &["https://evil.org/.example.com"]));
    }

    #[test]
    fn null_matches_only_a_literal_null() {
        let wide = policy(&["https://*.example.com", "http://localhost:3000"], true);
        assert!(!allows(&wide, &["null"]));
        let with_null = policy(&["null"], true);
        assert!(allows(&with_null, &["null"]));
        assert!(!allows(&with_null, &["https://a.example.com"]));
        assert!(!allows(&with_null, &["NULL"]));
    }

    #[test]
    fn missing_origin_follows_the_switch_and_several_are_refused() {
        let open = policy(&["https://a.example"], true);
        let closed = policy(&["https://a.example"], false);
        assert!(allows(&open, &[]));
        assert!(!allows(&closed, &[]));
        assert!(!allows(&open, &["https://a.example", "https://a.example"]));
        assert!(!allows(&open, &["https://a.example https://b.example"]));
        let empty = policy(&[], true);
        assert!(allows(&empty, &[]));
        assert!(!allows(&empty, &["https://a.example"]));
    }

    #[test]
    fn non_utf8_and_control_bytes_never_match() {
        let p = policy(&["https://a.example"], true);
        assert!(!p.allows([b"https://a.exampl\xff".as_slice()].into_iter()));
        assert!(!p.allows([b"https://a.example\r\nX: y".as_slice()].into_iter()));
    }

    #[test]
    fn patterns_are_normalised() {
        assert_eq!(
            pattern("HTTPS://App.Example.COM").expect("valid"),
            OriginPattern::Exact {
                scheme: OriginScheme::Https,
                host: "app.example.com".into(),
                port: 443
            }
        );
        assert_eq!(
            pattern("http://*.Example.com:8080").expect("valid"),
            OriginPattern::Wildcard {
                scheme: OriginScheme::Http,
                suffix: ".example.com".into(),
                port: 8080
            }
        );
        assert_eq!(pattern("null").expect("valid"), OriginPattern::Null);
    }

    #[test]
    fn malformed_patterns_say_what_is_expected() {
        for (text, says) in [
            ("", "no scheme"),
            ("app.example.com", "no scheme"),
            ("*", "leave allowed_origins out"),
            ("Null", "lowercase"),
            ("wss://app.example.com", "http or https"),
            ("ftp://app.example.com", "http or https"),
            (
                "https://app.example.com/",
                "write \"https://app.example.com\"",
            ),
            ("https://app.example.com/chat", "no path"),
            ("https://u@app.example.com", "user information"),
            ("https://app.example.com:0", "1 to 65535"),
            ("https://app.example.com:70000", "1 to 65535"),
            ("https://app.example.com:*", "wildcard port"),
            ("https://a.*.example.com", "whole first label"),
            ("https://*example.com", "whole first label"),
            ("https://*.*.example.com", "whole first label"),
            ("https://app..example.com", "empty label"),
            ("https://app.example.com.", "trailing dot"),
            ("https://[nope]", "IPv6"),
            ("https://bücher.example", "punycode"),
        ] {
            let problem = pattern(text).expect_err(text);
            assert!(problem.contains(says), "{text}: {problem}");
        }
    }
}
