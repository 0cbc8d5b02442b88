//! The head sent to the backend: the client's, byte for byte, but for who forwarded it.
//!
//! Only `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` change (the de-facto
//! fields most backends read; RFC 7239 `Forwarded` is passed through untouched):
//!
//! - from an untrusted peer, every incoming one is dropped and sluice's own are added at the end
//!   of the fields: `X-Forwarded-For: <peer>`, `X-Forwarded-Proto: http|https`,
//!   `X-Forwarded-Host: <Host as sent>` (omitted for an HTTP/1.0 request without `Host`);
//! - from a trusted peer (another proxy in front of sluice), `X-Forwarded-For` is appended to:
//!   the last such field becomes `<its value>, <peer>` in place (the fields of a list combine in
//!   order, RFC 9110 §5.3), and `-Proto`/`-Host` are kept when present, added when absent.
//!
//! The request line, every other field line (with its exact spelling, spacing and order) and the
//! blank line are copied as received. IPv4-mapped IPv6 peers are written as IPv4.

use std::io::Write as _;
use std::net::IpAddr;

use crate::request::Request;

/// The client facts needed to rewrite the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The peer address (the TCP peer, or the PROXY-protocol source when that is in use).
    pub addr: IpAddr,
    /// Whether the client connection is TLS (`X-Forwarded-Proto: https`, else `http`).
    pub tls: bool,
    /// Whether the peer is a trusted proxy: append to its `X-Forwarded-For` rather than replace.
    pub trusted: bool,
}

/// Appends the head to send the backend to `out` (reuse the buffer across requests). Bytes the
/// client sent after its head are not part of `req`: send them after this, unchanged.
///
/// This is the head of a WebSocket upgrade: `Connection: Upgrade` and `Upgrade` must reach the
/// backend, so no hop-by-hop field is removed. A plain request's head is rewritten by
/// [`crate::write_plain_request`] instead.
pub fn write_forwarded_request(req: &Request, client: &ClientInfo, out: &mut Vec<u8>) {
    write_head(req, client, |_| false, b"", out);
}

/// The rewrite of [`write_forwarded_request`], dropping the fields for which `skip(name)` is
/// true (never asked about the `X-Forwarded-*` fields, which follow their own rules) and adding
/// `extra` (whole lines) after the client's fields.
pub(crate) fn write_head(
    req: &Request,
    client: &ClientInfo,
    skip: impl Fn(&[u8]) -> bool,
    extra: &[u8],
    out: &mut Vec<u8>,
) {
    out.reserve(req.head_bytes().len() + 96 + extra.len());
    out.extend_from_slice(req.request_line_bytes());
    let addr = client.addr.to_canonical();
    let last_xff = req
        .field_lines()
        .enumerate()
        .filter(|(_, (name, _, _))| name.eq_ignore_ascii_case(FOR))
        .map(|(i, _)| i)
        .last();
    let mut has_proto = false;
    let mut has_host = false;
    for (i, (name, value, line)) in req.field_lines().enumerate() {
        let is_for = name.eq_ignore_ascii_case(FOR);
        let is_proto = name.eq_ignore_ascii_case(PROTO);
        let is_host = name.eq_ignore_ascii_case(HOST);
        if !(is_for || is_proto || is_host) {
            if !skip(name) {
                out.extend_from_slice(line);
            }
            continue;
        }
        if !client.trusted {
            continue;
        }
        has_proto |= is_proto;
        has_host |= is_host;
        if is_for && Some(i) == last_xff {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            if !value.is_empty() {
                out.extend_from_slice(value);
                out.extend_from_slice(b", ");
            }
            write_ip(out, addr);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(extra);
    if !client.trusted || last_xff.is_none() {
        out.extend_from_slice(b"X-Forwarded-For: ");
        write_ip(out, addr);
        out.extend_from_slice(b"\r\n");
    }
    if !has_proto {
        out.extend_from_slice(if client.tls {
            b"X-Forwarded-Proto: https\r\n"
        } else {
            b"X-Forwarded-Proto: http\r\n"
        });
    }
    if let (false, Some(host)) = (has_host, req.host_field()) {
        out.extend_from_slice(b"X-Forwarded-Host: ");
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes `addr` as `Display` does: IPv4 digit by digit (every handshake writes one; the
/// formatting machinery costs several times more), IPv6 through `Display`.
fn write_ip(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        // Writing into a Vec cannot fail.
        IpAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

const FOR: &[u8] = b"x-forwarded-for";
const PROTO: &[u8] = b"x-forwarded-proto";
const HOST: &[u8] = b"x-forwarded-host";

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use bytes::{Bytes, BytesMut};

    use super::*;

    #[test]
    fn ip_text_is_display() {
        let mut samples: Vec<IpAddr> = [0u8, 1, 9, 10, 42, 99, 100, 199, 200, 255]
            .iter()
            .flat_map(|&a| {
                [0u8, 7, 10, 100, 255]
                    .map(|b| IpAddr::V4(Ipv4Addr::new(a, b, b.wrapping_add(a), 255 - a)))
            })
            .collect();
        samples.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
        samples.push("2001:db8::8a2e:370:7334".parse().expect("v6"));
        for addr in samples {
            let mut out = Vec::new();
            write_ip(&mut out, addr);
            assert_eq!(out, addr.to_string().into_bytes(), "{addr}");
        }
    }
    use crate::parse_request;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

    fn rewrite(head: &str, tls: bool, trusted: bool) -> String {
        let req = parse_request(Bytes::copy_from_slice(head.as_bytes()), 100).expect("valid");
        let mut out = Vec::new();
        let client = ClientInfo {
            addr: PEER,
            tls,
            trusted,
        };
        write_forwarded_request(&req, &client, &mut out);
        String::from_utf8(out).expect("ascii")
    }

    const HEAD: &str = "GET /chat?room=1 HTTP/1.1\r\nHost: chat.example.com:8080\r\n\
        x-forwarded-for: 1.1.1.1\r\nUpgrade:websocket\r\nX-Forwarded-Proto: https\r\n\
        Connection:  Upgrade  \r\nX-FORWARDED-FOR: 2.2.2.2 , 3.3.3.3\r\nX-Forwarded-Host: evil\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn untrusted_peer_fields_are_replaced() {
        let out = rewrite(HEAD, false, false);
        assert_eq!(
            out,
            "GET /chat?room=1 HTTP/1.1\r\nHost: chat.example.com:8080\r\n\
             Upgrade:websocket\r\nConnection:  Upgrade  \r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: http\r\n\
             X-Forwarded-Host: chat.example.com:8080\r\n\r\n"
        );
    }

    #[test]
    fn trusted_peer_chain_is_appended_to() {
        let out = rewrite(HEAD, true, true);
        assert_eq!(
            out,
            "GET /chat?room=1 HTTP/1.1\r\nHost: chat.example.com:8080\r\n\
             x-forwarded-for: 1.1.1.1\r\nUpgrade:websocket\r\nX-Forwarded-Proto: https\r\n\
             Connection:  Upgrade  \r\nX-FORWARDED-FOR: 2.2.2.2 , 3.3.3.3, 203.0.113.7\r\n\
             X-Forwarded-Host: evil\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
    }

    #[test]
    fn trusted_peer_without_fields_gets_them_added() {
        let head = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(
            rewrite(head, true, true),
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.7\r\n\
             X-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\n\r\n"
        );
        let empty = "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For:\r\n\r\n";
        assert_eq!(
            rewrite(empty, false, true),
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.7\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n"
        );
    }

    #[test]
    fn http10_without_host_gets_no_forwarded_host() {
        assert_eq!(
            rewrite("GET / HTTP/1.0\r\n\r\n", false, false),
            "GET / HTTP/1.0\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
    }

    #[test]
    fn ipv6_peers() {
        let req = parse_request(Bytes::from_static(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 10)
            .expect("valid");
        let mut out = Vec::new();
        let v6 = ClientInfo {
            addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            tls: false,
            trusted: false,
        };
        write_forwarded_request(&req, &v6, &mut out);
        assert!(
            out.windows(28)
                .any(|w| w == b"X-Forwarded-For: 2001:db8::1")
        );
        out.clear();
        let mapped = ClientInfo {
            addr: IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()),
            ..v6
        };
        write_forwarded_request(&req, &mapped, &mut out);
        assert!(
            out.windows(28)
                .any(|w| w == b"X-Forwarded-For: 192.0.2.1\r\n")
        );
    }

    #[test]
    fn appends_and_leaves_pipelined_bytes_alone() {
        // As the proxy does it: split the head off the read buffer, rewrite it, then send the
        // client's early bytes (here a WebSocket frame) unchanged after it.
        let mut buf =
            BytesMut::from(&b"GET / HTTP/1.1\r\nHost: h\r\n\r\n\x81\x85\x00\x00\x00\x00hello"[..]);
        let early = buf.split_off(27);
        let req = parse_request(buf.freeze(), 10).expect("valid");
        let mut out = b"previous".to_vec();
        let client = ClientInfo {
            addr: PEER,
            tls: false,
            trusted: false,
        };
        write_forwarded_request(&req, &client, &mut out);
        assert!(out.starts_with(b"previousGET / HTTP/1.1\r\nHost: h\r\n"));
        assert!(out.ends_with(b"X-Forwarded-Host: h\r\n\r\n"));
        assert_eq!(&early[..], b"\x81\x85\x00\x00\x00\x00hello");
        assert_eq!(req.head_bytes().len(), 27);
    }
}
