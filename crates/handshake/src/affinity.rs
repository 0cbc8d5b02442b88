//! Sticky sessions, the HTTP side: reading a request's affinity key and the affinity cookie,
//! and writing the `Set-Cookie` that names the chosen backend.
//!
//! The balancer (`sluice-balance`) hashes bytes and matches tokens; it knows nothing of HTTP.
//! These functions give it the bytes, borrowed from the parsed [`Request`] without copying:
//!
//! - [`cookie`]: one cookie's value from the `Cookie` fields (RFC 6265 §4.2.1, §5.4).
//! - [`query_param`]: one query parameter's value, **as sent**: not percent-decoded (like
//!   HAProxy's `url_param` and nginx's `$arg_NAME`), so `a%20b` and `a+b` are two keys. A
//!   client that reconnects with the same URL sends the same bytes; decoding would cost an
//!   allocation and add ambiguity (`+` or `%2B`?) for nothing.
//! - [`Request::header`]: the first field's value, trimmed.
//! - [`affinity_key`]: whichever of those (or the source address) a pool's `hash_key` names.
//!
//! An empty value counts as absent: every client sending `session=` would otherwise share one
//! backend. Values are never logged (STYLE rule 10); [`AffinityKey`]'s `Debug` hides them.
//!
//! For the response: [`write_set_cookie`] writes the `Set-Cookie` field, and
//! [`insert_response_headers`] puts extra fields into a response head (the backend's `101`,
//! later plain responses) before its blank line.

use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;

use sluice_config::{HashKey, StickyCookie};

use crate::fields::trim_ows;
use crate::request::Request;

/// The bytes a request is hashed by.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AffinityKey<'r> {
    /// A cookie, header or query parameter value, borrowed from the request head.
    Value(&'r [u8]),
    /// The source address: 4 bytes for IPv4 (IPv4-mapped IPv6 addresses included), 16 for
    /// IPv6, network order. Part of the hashing stability contract: never change it.
    Ip([u8; 16], u8),
}

impl AffinityKey<'_> {
    /// The bytes to hash.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            AffinityKey::Value(value) => value,
            AffinityKey::Ip(octets, len) => octets.get(..usize::from(*len)).unwrap_or_default(),
        }
    }

    fn ip(ip: IpAddr) -> Self {
        let mut octets = [0u8; 16];
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                if let Some(head) = octets.get_mut(..4) {
                    head.copy_from_slice(&v4.octets());
                }
                AffinityKey::Ip(octets, 4)
            }
            IpAddr::V6(v6) => AffinityKey::Ip(v6.octets(), 16),
        }
    }
}

impl fmt::Debug for AffinityKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AffinityKey({} bytes)", self.as_bytes().len())
    }
}

/// The key a pool's `hash_key` names, from this request and its client's address (the TCP peer,
/// or the PROXY-protocol source once that exists). `None` when the request lacks it or it is
/// empty: the pool's fallback places the request then.
pub fn affinity_key<'r>(req: &'r Request, key: &HashKey, peer: IpAddr) -> Option<AffinityKey<'r>> {
    let value = match key {
        HashKey::Cookie(name) => cookie(req, name)?,
        HashKey::Header(name) => req.header(name)?,
        HashKey::Query(name) => query_param(req, name)?.as_bytes(),
        HashKey::SourceIp => return Some(AffinityKey::ip(peer)),
        // A connection-level key: the L4 listeners compute it; a request never has it.
        HashKey::FourTuple => return None,
    };
    (!value.is_empty()).then_some(AffinityKey::Value(value))
}

/// The value of the cookie `name` (case-sensitive), from the first `Cookie` field that has it,
/// fields taken in order. Allocates nothing.
///
/// Read the way servers must read what browsers send (RFC 6265 §4.2.1: `name=value` pairs
/// separated by `;`), leniently: whitespace around names and values is dropped, empty and
/// nameless pieces (`;;`, `=x`, a bare `x`) are skipped, a value keeps any `=` after the first
/// and any double quotes. The first match wins: browsers send the cookie with the longest path
/// first (RFC 6265 §5.4), which is the one meant for this request.
pub fn cookie<'r>(req: &'r Request, name: &str) -> Option<&'r [u8]> {
    if name.is_empty() {
        return None;
    }
    req.header_values("cookie")
        .flat_map(|field| field.split(|&b| b == b';'))
        .find_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (n, value) = pair.split_at(eq);
            (trim_ows(n) == name.as_bytes()).then(|| trim_ows(value.get(1..).unwrap_or_default()))
        })
}

/// The value of the first query parameter `name`, as sent (not percent-decoded; see the module
/// documentation). `Some("")` for `?name` and `?name=`. Parameters are separated by `&`; the
/// name is compared byte for byte.
pub fn query_param<'r>(req: &'r Request, name: &str) -> Option<&'r str> {
    if name.is_empty() {
        return None;
    }
    req.query()?
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((n, value)) => (n == name).then_some(value),
            None => (pair == name).then_some(""),
        })
}

/// Appends `Set-Cookie: NAME=TOKEN; Path=…[; Max-Age=…][; Secure][; HttpOnly][; SameSite=…]`
/// and its CRLF to `out`. The name and path were checked by the configuration; bytes of `token`
/// that may not appear in a cookie value (RFC 6265 §4.1.1 `cookie-octet`) are left out, so no
/// caller can break the head with it (sluice's tokens are hex digits).
pub fn write_set_cookie(cookie: &StickyCookie, token: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"Set-Cookie: ");
    write_set_cookie_value(cookie, token, out);
    out.extend_from_slice(b"\r\n");
}

/// The field value of [`write_set_cookie`], without `Set-Cookie: ` and the CRLF.
pub fn set_cookie_value(cookie: &StickyCookie, token: &str) -> String {
    let mut out = Vec::with_capacity(64);
    write_set_cookie_value(cookie, token, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Inserts `lines` (whole header lines, each ending in CRLF) into the response head `head` just
/// before its blank line, appending the result to `out`. `head` is the head alone, blank line
/// included (`&buf[..response.head_len()]`); bytes after it are the caller's to send after.
///
/// Returns `false`, and copies `head` unchanged, when `head` does not end with CRLF CRLF (it
/// always does when it came from `read_response_head`). A missing final CRLF on `lines` is
/// added. Fields the backend sent stay where they were; a backend's own `Set-Cookie` for the
/// same cookie comes first, so browsers keep sluice's.
pub fn insert_response_headers(head: &[u8], lines: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(fields) = head.strip_suffix(b"\r\n\r\n") else {
        out.extend_from_slice(head);
        return false;
    };
    out.reserve(head.len() + lines.len() + 2);
    out.extend_from_slice(fields);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(lines);
    if !lines.is_empty() && !lines.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    true
}

fn write_set_cookie_value(cookie: &StickyCookie, token: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(cookie.name.as_bytes());
    out.push(b'=');
    out.extend(token.bytes().filter(|&b| is_cookie_octet(b)));
    out.extend_from_slice(b"; Path=");
    out.extend_from_slice(cookie.path.as_bytes());
    if let Some(ttl) = cookie.ttl {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "; Max-Age={}", ttl.as_secs());
    }
    if cookie.secure {
        out.extend_from_slice(b"; Secure");
    }
    if cookie.http_only {
        out.extend_from_slice(b"; HttpOnly");
    }
    if let Some(same_site) = cookie.same_site {
        out.extend_from_slice(b"; SameSite=");
        out.extend_from_slice(same_site.as_str().as_bytes());
    }
}

/// `cookie-octet` (RFC 6265 §4.1.1): visible ASCII but `"`, `,`, `;` and `\`.
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    use bytes::Bytes;
    use sluice_config::SameSite;

    use super::*;
    use crate::parse_request;

    fn request(target: &str, fields: &[&str]) -> Request {
        let mut head = format!("GET {target} HTTP/1.1\r\nHost: h\r\n");
        for field in fields {
            head.push_str(field);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        parse_request(Bytes::from(head), 100).expect("valid request")
    }

    fn cookie_of<'r>(req: &'r Request, name: &str) -> Option<&'r str> {
        cookie(req, name).map(|v| std::str::from_utf8(v).expect("ascii"))
    }

    #[test]
    fn cookies_are_found_across_fields() {
        let req = request(
            "/",
            &[
                "Cookie: theme=dark; session=abc123",
                "X-Other: session=nope",
                "cookie: lang=en; session=second; srv=0123456789abcdef",
            ],
        );
        assert_eq!(
            cookie_of(&req, "session"),
            Some("abc123"),
            "the first one wins"
        );
        assert_eq!(cookie_of(&req, "srv"), Some("0123456789abcdef"));
        assert_eq!(cookie_of(&req, "lang"), Some("en"));
        assert_eq!(cookie_of(&req, "Session"), None, "names are case-sensitive");
        assert_eq!(cookie_of(&req, "missing"), None);
        assert_eq!(cookie_of(&req, ""), None);
        assert_eq!(cookie_of(&request("/", &[]), "session"), None);
    }

    #[test]
    fn hostile_cookie_fields() {
        let one = |field: &str, name: &str| {
            let req = request("/", &[field]);
            cookie_of(&req, name).map(str::to_owned)
        };
        // Names are whole names, not prefixes or suffixes.
        assert_eq!(
            one("Cookie: xsession=1; sessionx=2; session=3", "session").as_deref(),
            Some("3")
        );
        // Empty pieces, nameless pieces, bare values.
        assert_eq!(
            one("Cookie: ;;; ; =x; session; ;session=ok;", "session").as_deref(),
            Some("ok")
        );
        assert_eq!(one("Cookie: session", "session"), None);
        assert_eq!(one("Cookie: =session", "session"), None);
        assert_eq!(one("Cookie:", "session"), None);
        assert_eq!(one("Cookie: ;", "session"), None);
        // Whitespace around names and values; `=` and quotes inside values are kept.
        assert_eq!(
            one("Cookie:  session \t=\t v=1=2 ", "session").as_deref(),
            Some("v=1=2")
        );
        assert_eq!(
            one("Cookie: session=\"quoted\"", "session").as_deref(),
            Some("\"quoted\"")
        );
        // Empty values are returned as such (the key extractor treats them as absent).
        assert_eq!(
            one("Cookie: session=; other=1", "session").as_deref(),
            Some("")
        );
        // Another cookie's value never leaks into the one asked for.
        assert_eq!(
            one("Cookie: a=session=evil; session=good", "session").as_deref(),
            Some("good")
        );
        // Bytes beyond ASCII are returned untouched.
        let req = parse_request(
            Bytes::from_static(b"GET / HTTP/1.1\r\nHost: h\r\nCookie: s=\xe2\x82\xac\xff\r\n\r\n"),
            10,
        )
        .expect("obs-text is a valid field byte");
        assert_eq!(cookie(&req, "s"), Some(&b"\xe2\x82\xac\xff"[..]));
        // Many pieces: still found, nothing allocated per piece.
        let long = format!("Cookie: {}session=last", "x=1; ".repeat(2_000));
        assert_eq!(one(&long, "session").as_deref(), Some("last"));
    }

    #[test]
    fn query_parameters_as_sent() {
        let req = request(
            "/chat?room=42&user=a%20b&empty=&flag&room=second&plus=a+b",
            &[],
        );
        assert_eq!(query_param(&req, "room"), Some("42"));
        assert_eq!(query_param(&req, "user"), Some("a%20b"), "not decoded");
        assert_eq!(query_param(&req, "plus"), Some("a+b"));
        assert_eq!(query_param(&req, "empty"), Some(""));
        assert_eq!(query_param(&req, "flag"), Some(""));
        assert_eq!(query_param(&req, "roo"), None);
        assert_eq!(query_param(&req, "missing"), None);
        assert_eq!(query_param(&req, ""), None);
        assert_eq!(query_param(&request("/chat", &[]), "room"), None);
        assert_eq!(query_param(&request("/chat?", &[]), "room"), None);
        assert_eq!(query_param(&request("/c?a=1=2&&=x", &[]), "a"), Some("1=2"));
        assert_eq!(
            query_param(&request("http://h/c?room=abs", &[]), "room"),
            Some("abs"),
            "absolute-form targets too"
        );
    }

    #[test]
    fn affinity_keys_of_every_kind() {
        let peer = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        let req = request(
            "/chat?room=42&blank=",
            &["Cookie: session=abc", "X-Session:  s-1  ", "X-Blank: "],
        );
        let key = |k: HashKey| affinity_key(&req, &k, peer).map(|k| k.as_bytes().to_vec());
        assert_eq!(
            key(HashKey::Cookie("session".into())),
            Some(b"abc".to_vec())
        );
        assert_eq!(
            key(HashKey::Header("x-session".into())),
            Some(b"s-1".to_vec())
        );
        assert_eq!(key(HashKey::Query("room".into())), Some(b"42".to_vec()));
        assert_eq!(key(HashKey::SourceIp), Some(vec![203, 0, 113, 7]));
        // Absent or empty: no key.
        assert_eq!(key(HashKey::Cookie("other".into())), None);
        assert_eq!(key(HashKey::Header("x-blank".into())), None);
        assert_eq!(key(HashKey::Header("x-none".into())), None);
        assert_eq!(key(HashKey::Query("blank".into())), None);
        // IPv4-mapped IPv6 peers hash like IPv4; IPv6 by its 16 bytes.
        let mapped = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 7).to_ipv6_mapped());
        let as_v4 = affinity_key(&req, &HashKey::SourceIp, mapped).map(|k| k.as_bytes().to_vec());
        assert_eq!(as_v4, Some(vec![203, 0, 113, 7]));
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let k = affinity_key(&req, &HashKey::SourceIp, v6).expect("always present");
        assert_eq!(k.as_bytes(), &v6_octets()[..]);
        assert_eq!(format!("{k:?}"), "AffinityKey(16 bytes)");
        let debug = format!(
            "{:?}",
            affinity_key(&req, &HashKey::Cookie("session".into()), peer)
        );
        assert!(!debug.contains("abc"), "{debug}");
    }

    fn v6_octets() -> [u8; 16] {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets()
    }

    fn sticky(
        ttl: Option<u64>,
        secure: bool,
        http_only: bool,
        same_site: Option<SameSite>,
    ) -> StickyCookie {
        StickyCookie {
            name: "srv".into(),
            ttl: ttl.map(Duration::from_secs),
            secure,
            http_only,
            same_site,
            path: "/".into(),
            secret: None,
        }
    }

    #[test]
    fn set_cookie_fields() {
        assert_eq!(
            set_cookie_value(&sticky(None, false, true, None), "973dc8a135ed13ee"),
            "srv=973dc8a135ed13ee; Path=/; HttpOnly"
        );
        assert_eq!(
            set_cookie_value(
                &sticky(Some(86_400), true, true, Some(SameSite::None)),
                "ab"
            ),
            "srv=ab; Path=/; Max-Age=86400; Secure; HttpOnly; SameSite=None"
        );
        let mut lax = sticky(Some(60), false, false, Some(SameSite::Lax));
        lax.path = "/chat".into();
        assert_eq!(
            set_cookie_value(&lax, "ab"),
            "srv=ab; Path=/chat; Max-Age=60; SameSite=Lax"
        );
        assert_eq!(
            set_cookie_value(&sticky(None, false, false, Some(SameSite::Strict)), "ab"),
            "srv=ab; Path=/; SameSite=Strict"
        );
        let mut out = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
        write_set_cookie(&sticky(None, false, true, None), "ab", &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nSet-Cookie: srv=ab; Path=/; HttpOnly\r\n"
        );
        // Whatever a caller passes as the token, the field stays one field.
        assert_eq!(
            set_cookie_value(
                &sticky(None, false, false, None),
                "a\r\nX-Evil: 1; b\"c,d\\e f"
            ),
            "srv=aX-Evil:1bcdef; Path=/"
        );
    }

    #[test]
    fn response_headers_go_before_the_blank_line() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        let mut out = b"previous".to_vec();
        assert!(insert_response_headers(
            head,
            b"Set-Cookie: srv=ab; Path=/\r\n",
            &mut out
        ));
        assert_eq!(
            out,
            b"previousHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
            Set-Cookie: srv=ab; Path=/\r\n\r\n"
        );
        // Several lines, the last CRLF forgotten; a head without fields.
        let mut out = Vec::new();
        assert!(insert_response_headers(
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"A: 1\r\nB: 2",
            &mut out
        ));
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n");
        // Nothing to insert: the head as it was.
        let mut out = Vec::new();
        assert!(insert_response_headers(head, b"", &mut out));
        assert_eq!(out, head);
        // Not a whole head: copied unchanged, and said so.
        for partial in [
            &b"HTTP/1.1 101 S\r\nA: b\r\n"[..],
            b"",
            b"\r\n",
            b"HTTP/1.1 101 S\n\n",
        ] {
            let mut out = Vec::new();
            assert!(!insert_response_headers(partial, b"X: 1\r\n", &mut out));
            assert_eq!(out, partial);
        }
        // The result parses as a response with the new field.
        let mut out = Vec::new();
        insert_response_headers(head, b"Set-Cookie: srv=ab\r\n", &mut out);
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut fields);
        assert_eq!(
            response.parse(&out),
            Ok(httparse::Status::Complete(out.len()))
        );
        assert!(
            response
                .headers
                .iter()
                .any(|h| h.name == "Set-Cookie" && h.value == b"srv=ab")
        );
    }
}
