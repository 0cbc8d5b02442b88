//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): the header an L4
//! edge puts before a connection's first byte to say whom it relays, read on listeners with
//! `accept_proxy_protocol`, and written to backends of pools with `send_proxy_protocol`.
//!
//! The parser is pure, strict and total: it takes the bytes seen so far and says "a header of
//! this many bytes, from this client", "not enough bytes yet", or why it is not a header; it
//! never panics and never reads past the bound. [`read`] drives it over a socket without
//! consuming a byte beyond the header (it peeks, then reads exactly the header's bytes), so what
//! follows (a request head, a ClientHello, relayed bytes) stays in the socket for the next
//! stage, whatever that stage is.
//!
//! Accepted: v1 `TCP4`, `TCP6` and `UNKNOWN` lines (at most 107 bytes, single spaces, CRLF,
//! canonical addresses, ports without leading zeros); v2 `PROXY` over TCP/IPv4 and TCP/IPv6,
//! v2 `LOCAL` (a connection of the edge itself, such as its health check) and v2 with an
//! unspecified or UNIX family (both mean "use the socket's own addresses"); TLVs are skipped
//! unread. Refused: anything else, a v2 header larger than the bound, a datagram protocol.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::snapshot::canonical;

/// The v2 signature (§2.2).
pub(crate) const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (§2.1).
const V1_MAX: usize = 107;
/// The fixed part of a v2 header.
const V2_FIXED: usize = 16;
/// What one peek asks for at most.
const PEEK_CHUNK: usize = 512;

/// What a complete header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Its length in bytes: the client's own bytes start after it.
    pub(crate) len: usize,
    /// The client's address and the address it connected to; `None` for v2 `LOCAL`, v1
    /// `UNKNOWN` and v2 unspecified or UNIX families: the socket's own addresses stand.
    pub(crate) addrs: Option<(SocketAddr, SocketAddr)>,
}

/// The parser's verdict on the bytes seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    Complete(Header),
    /// Not enough bytes yet; `Some(n)`: the header is exactly `n` bytes long.
    Incomplete(Option<usize>),
}

/// Why the bytes are not an acceptable PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProxyHeaderError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY v1 line: {0}")]
    V1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
    #[error("PROXY header longer than {0} bytes")]
    TooLarge(usize),
    #[error("the client closed before its PROXY header was complete")]
    Closed,
    #[error("no whole PROXY header within the handshake timeout")]
    Timeout,
    #[error("reading the PROXY header: {0}")]
    Io(std::io::ErrorKind),
}

/// Parses the start of a connection, `max` bytes at most for a v2 header.
pub(crate) fn parse(buf: &[u8], max: usize) -> Result<Parsed, ProxyHeaderError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete(None)),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf, max),
        Some(_) => Err(ProxyHeaderError::NotProxy),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    const PREFIX: &[u8] = b"PROXY ";
    let seen = buf.len().min(PREFIX.len());
    if buf.get(..seen) != PREFIX.get(..seen) {
        return Err(ProxyHeaderError::NotProxy);
    }
    let window = buf.get(..buf.len().min(V1_MAX)).unwrap_or_default();
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if buf.len() >= V1_MAX {
            return Err(ProxyHeaderError::V1("no CRLF within 107 bytes"));
        }
        return Ok(Parsed::Incomplete(None));
    };
    if window.get(cr) != Some(&b'\r') {
        return Err(ProxyHeaderError::V1("bare LF"));
    }
    match window.get(cr + 1) {
        None if buf.len() < V1_MAX => return Ok(Parsed::Incomplete(Some(cr + 2))),
        Some(b'\n') => {}
        _ => return Err(ProxyHeaderError::V1("CR without LF")),
    }
    let line = window.get(PREFIX.len()..cr).unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| ProxyHeaderError::V1("not ASCII"))?;
    let len = cr + 2;
    let mut words = line.split(' ');
    let family = words.next().unwrap_or_default();
    if family == "UNKNOWN" {
        // §2.1: whatever follows UNKNOWN up to the CRLF is ignored.
        return Ok(Parsed::Complete(Header { len, addrs: None }));
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(ProxyHeaderError::V1(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return Err(ProxyHeaderError::V1(
            "expected source, destination, source port, destination port",
        ));
    };
    let ip = |text: &str| -> Result<IpAddr, ProxyHeaderError> {
        let ip = if v6 {
            text.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            text.parse::<Ipv4Addr>().map(IpAddr::V4)
        };
        ip.map_err(|_| ProxyHeaderError::V1("address does not match the protocol"))
    };
    let port = |text: &str| -> Result<u16, ProxyHeaderError> {
        let canonical = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'));
        canonical
            .then(|| text.parse::<u16>().ok())
            .flatten()
            .ok_or(ProxyHeaderError::V1("port is not a number from 0 to 65535"))
    };
    let source = SocketAddr::new(ip(src)?, port(sport)?);
    let destination = SocketAddr::new(ip(dst)?, port(dport)?);
    Ok(Parsed::Complete(Header {
        len,
        addrs: Some((source, destination)),
    }))
}

fn parse_v2(buf: &[u8], max: usize) -> Result<Parsed, ProxyHeaderError> {
    let seen = buf.len().min(V2_SIGNATURE.len());
    if buf.get(..seen) != V2_SIGNATURE.get(..seen) {
        return Err(ProxyHeaderError::NotProxy);
    }
    let (Some(&version_command), Some(&family), Some(len_hi), Some(len_lo)) =
        (buf.get(12), buf.get(13), buf.get(14), buf.get(15))
    else {
        return Ok(Parsed::Incomplete(None));
    };
    if version_command >> 4 != 2 {
        return Err(ProxyHeaderError::V2("version is not 2"));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyHeaderError::V2("command is neither LOCAL nor PROXY")),
    };
    let len = V2_FIXED + usize::from(u16::from_be_bytes([*len_hi, *len_lo]));
    if len > max {
        return Err(ProxyHeaderError::TooLarge(max));
    }
    let Some(block) = buf.get(V2_FIXED..len) else {
        return Ok(Parsed::Incomplete(Some(len)));
    };
    if local {
        return Ok(Parsed::Complete(Header { len, addrs: None }));
    }
    let (address_family, protocol) = (family >> 4, family & 0x0f);
    let addrs = match (address_family, protocol) {
        // Unspecified, or a UNIX socket: the socket's own addresses stand.
        (0 | 3, 0..=2) => None,
        (1 | 2, 2) => {
            return Err(ProxyHeaderError::V2(
                "a datagram protocol on a TCP listener",
            ));
        }
        (1, 0 | 1) => {
            let Some(&[a, b, c, d, e, f, g, h, sp1, sp2, dp1, dp2]) =
                block.get(..12).and_then(|b| <&[u8; 12]>::try_from(b).ok())
            else {
                return Err(ProxyHeaderError::V2("address block too short for IPv4"));
            };
            Some((
                SocketAddr::from(([a, b, c, d], u16::from_be_bytes([sp1, sp2]))),
                SocketAddr::from(([e, f, g, h], u16::from_be_bytes([dp1, dp2]))),
            ))
        }
        (2, 0 | 1) => {
            let Some(block) = block.get(..36) else {
                return Err(ProxyHeaderError::V2("address block too short for IPv6"));
            };
            let ip = |range: std::ops::Range<usize>| {
                block
                    .get(range)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .map(Ipv6Addr::from)
            };
            let port = |at: usize| {
                block
                    .get(at..at + 2)
                    .and_then(|b| <[u8; 2]>::try_from(b).ok())
                    .map(u16::from_be_bytes)
            };
            match (ip(0..16), ip(16..32), port(32), port(34)) {
                (Some(src), Some(dst), Some(sport), Some(dport)) => Some((
                    SocketAddr::new(IpAddr::V6(src), sport),
                    SocketAddr::new(IpAddr::V6(dst), dport),
                )),
                _ => return Err(ProxyHeaderError::V2("address block too short for IPv6")),
            }
        }
        _ => return Err(ProxyHeaderError::V2("unknown address family or protocol")),
    };
    Ok(Parsed::Complete(Header { len, addrs }))
}

/// Reads a PROXY header off `stream` by `deadline`, consuming exactly its bytes; `max` bounds a
/// v2 header. Returns what it says about the client.
pub(crate) async fn read(
    stream: &mut TcpStream,
    max: usize,
    deadline: Instant,
) -> Result<Header, ProxyHeaderError> {
    match tokio::time::timeout_at(deadline, read_inner(stream, max)).await {
        Ok(result) => result,
        Err(_) => Err(ProxyHeaderError::Timeout),
    }
}

async fn read_inner(stream: &mut TcpStream, max: usize) -> Result<Header, ProxyHeaderError> {
    let io = |e: std::io::Error| ProxyHeaderError::Io(e.kind());
    let max = max.max(V1_MAX);
    let mut buf = vec![0u8; PEEK_CHUNK.min(max)];
    // Header bytes already consumed from the socket (all of them before a complete header).
    let mut consumed = 0usize;
    loop {
        let want = (max - consumed).min(PEEK_CHUNK);
        if buf.len() < consumed + want {
            buf.resize(consumed + want, 0);
        }
        let window = buf.get_mut(consumed..consumed + want).unwrap_or_default();
        let n = stream.peek(window).await.map_err(io)?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        let seen = consumed + n;
        match parse(buf.get(..seen).unwrap_or_default(), max)? {
            Parsed::Complete(header) => {
                let rest = buf.get_mut(consumed..header.len).unwrap_or_default();
                stream.read_exact(rest).await.map_err(io)?;
                return Ok(header);
            }
            // The length is known: every byte up to it is header, read them at once.
            Parsed::Incomplete(Some(len)) => {
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                let rest = buf.get_mut(consumed..len).unwrap_or_default();
                stream.read_exact(rest).await.map_err(io)?;
                return match parse(buf.get(..len).unwrap_or_default(), max)? {
                    Parsed::Complete(header) => Ok(header),
                    Parsed::Incomplete(_) => Err(ProxyHeaderError::Closed),
                };
            }
            // Everything seen belongs to the header, which goes on: consume it, wait for more.
            Parsed::Incomplete(None) => {
                if seen >= max {
                    return Err(ProxyHeaderError::TooLarge(max));
                }
                let rest = buf.get_mut(consumed..seen).unwrap_or_default();
                stream.read_exact(rest).await.map_err(io)?;
                consumed = seen;
            }
        }
    }
}

/// Writes a header of `version` saying the connection came from `source` to `destination`.
pub(crate) fn write(
    version: sluice_config::ProxyVersion,
    source: SocketAddr,
    destination: SocketAddr,
    out: &mut Vec<u8>,
) {
    match version {
        sluice_config::ProxyVersion::V1 => write_v1(source, destination, out),
        sluice_config::ProxyVersion::V2 => write_v2(source, destination, out),
    }
}

/// A v1 line. Mixed families are sent as TCP6 (IPv4-mapped).
fn write_v1(source: SocketAddr, destination: SocketAddr, out: &mut Vec<u8>) {
    use std::io::Write;
    let line = match (canonical(source.ip()), canonical(destination.ip())) {
        (IpAddr::V4(s), IpAddr::V4(d)) => format!("PROXY TCP4 {s} {d}"),
        (s, d) => format!("PROXY TCP6 {} {}", v6(s), v6(d)),
    };
    let _ = write!(out, "{line} {} {}\r\n", source.port(), destination.port());
}

/// A v2 header (`PROXY` command, TCP over IPv4 or IPv6). Mixed families are sent as IPv6
/// (IPv4-mapped).
fn write_v2(source: SocketAddr, destination: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, PROXY
    match (canonical(source.ip()), canonical(destination.ip())) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11); // TCP over IPv4
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21); // TCP over IPv6
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
}

/// A v2 `LOCAL` header (no address): what a connection of sluice's own opens with.
#[cfg(test)]
fn write_v2_local(out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::ProxyVersion;

    const MAX: usize = 4096;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn complete(buf: &[u8]) -> Header {
        match parse(buf, MAX) {
            Ok(Parsed::Complete(header)) => header,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
        let header = complete(line);
        assert_eq!(header.len, line.len() - 5);
        assert_eq!(
            header.addrs,
            Some((addr("192.0.2.1:56324"), addr("198.51.100.2:443")))
        );
        let header = complete(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n");
        assert_eq!(
            header.addrs,
            Some((addr("[2001:db8::1]:1"), addr("[::1]:65535")))
        );
        assert_eq!(complete(b"PROXY UNKNOWN\r\n").addrs, None);
        assert_eq!(complete(b"PROXY UNKNOWN 1 2 3 4\r\n").len, 23);
    }

    #[test]
    fn v1_refuses_every_sloppy_shape() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\rX",
            b"PROXY TCP4  192.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 \r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 9\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY \xff\r\n",
            b"PROXY\r\n",
            b"proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert!(
                parse(bad, MAX).is_err(),
                "{:?} should be refused",
                String::from_utf8_lossy(bad)
            );
        }
        // No CRLF within 107 bytes.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(120, b'a');
        assert_eq!(
            parse(&long, MAX),
            Err(ProxyHeaderError::V1("no CRLF within 107 bytes"))
        );
        // Exactly 107 with the CRLF is fine.
        let mut max = b"PROXY UNKNOWN ".to_vec();
        max.resize(105, b'a');
        max.extend_from_slice(b"\r\n");
        assert_eq!(complete(&max).len, 107);
    }

    #[test]
    fn v2_ipv4_ipv6_local_unspecified_and_tlvs() {
        let mut out = Vec::new();
        write_v2(addr("192.0.2.1:5000"), addr("198.51.100.2:443"), &mut out);
        let header = complete(&out);
        assert_eq!(header.len, 28);
        assert_eq!(
            header.addrs,
            Some((addr("192.0.2.1:5000"), addr("198.51.100.2:443")))
        );

        let mut out = Vec::new();
        write_v2(addr("[2001:db8::1]:5000"), addr("[::1]:443"), &mut out);
        assert_eq!(complete(&out).len, 52);
        assert_eq!(
            complete(&out).addrs,
            Some((addr("[2001:db8::1]:5000"), addr("[::1]:443")))
        );

        let mut out = Vec::new();
        write_v2_local(&mut out);
        assert_eq!(
            complete(&out),
            Header {
                len: 16,
                addrs: None
            }
        );

        // IPv4 with TLVs (an AWS VPC endpoint id, a CRC): skipped, length honoured.
        let mut out = V2_SIGNATURE.to_vec();
        let tlvs = [
            0xEAu8, 0, 5, 1, b'v', b'p', b'c', b'e', 0x03, 0, 4, 1, 2, 3, 4,
        ];
        out.extend_from_slice(&[0x21, 0x11]);
        out.extend_from_slice(&(12 + tlvs.len() as u16).to_be_bytes());
        out.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0x01, 0xbb]);
        out.extend_from_slice(&tlvs);
        out.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let header = complete(&out);
        assert_eq!(header.len, 16 + 12 + tlvs.len());
        assert_eq!(
            header.addrs,
            Some((addr("10.0.0.1:8080"), addr("10.0.0.2:443")))
        );

        // Unspecified family and a UNIX socket: the socket's addresses stand.
        let mut unspec = V2_SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0, 0]);
        assert_eq!(complete(&unspec).addrs, None);
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.resize(16 + 216, 0);
        assert_eq!(complete(&unix).addrs, None);
    }

    #[test]
    fn v2_refuses_bad_versions_commands_families_and_sizes() {
        let with = |ver: u8, fam: u8, len: u16, body: usize| {
            let mut out = V2_SIGNATURE.to_vec();
            out.extend_from_slice(&[ver, fam]);
            out.extend_from_slice(&len.to_be_bytes());
            out.resize(16 + body, 0);
            out
        };
        assert!(matches!(
            parse(&with(0x11, 0x11, 12, 12), MAX),
            Err(ProxyHeaderError::V2(_))
        ));
        assert!(matches!(
            parse(&with(0x22, 0x11, 12, 12), MAX),
            Err(ProxyHeaderError::V2(_))
        ));
        assert!(matches!(
            parse(&with(0x21, 0x12, 12, 12), MAX),
            Err(ProxyHeaderError::V2(_))
        ));
        assert!(matches!(
            parse(&with(0x21, 0x41, 12, 12), MAX),
            Err(ProxyHeaderError::V2(_))
        ));
        assert!(matches!(
            parse(&with(0x21, 0x11, 4, 4), MAX),
            Err(ProxyHeaderError::V2(_))
        ));
        assert!(matches!(
            parse(&with(0x21, 0x21, 12, 12), MAX),
            Err(ProxyHeaderError::V2(_))
        ));
        assert_eq!(
            parse(&with(0x21, 0x11, 5000, 0), MAX),
            Err(ProxyHeaderError::TooLarge(MAX))
        );
        let mut bad_signature = V2_SIGNATURE.to_vec();
        bad_signature[11] = b'X';
        assert_eq!(parse(&bad_signature, MAX), Err(ProxyHeaderError::NotProxy));
    }

    /// Every prefix of a valid header is "not enough yet", never an error, and the whole is the
    /// same header whatever follows it.
    #[test]
    fn every_prefix_is_incomplete() {
        let mut v2 = Vec::new();
        write_v2(
            addr("[2001:db8::7]:1234"),
            addr("[2001:db8::8]:443"),
            &mut v2,
        );
        let mut v1 = Vec::new();
        write_v1(addr("203.0.113.9:51234"), addr("10.0.0.1:443"), &mut v1);
        for header in [v1, v2] {
            for cut in 0..header.len() {
                assert!(
                    matches!(parse(&header[..cut], MAX), Ok(Parsed::Incomplete(_))),
                    "cut at {cut}: {:?}",
                    parse(&header[..cut], MAX)
                );
            }
            let whole = complete(&header);
            let mut more = header.clone();
            more.extend_from_slice(b"\x16\x03\x01 and more");
            assert_eq!(complete(&more), whole);
            assert_eq!(whole.len, header.len());
        }
    }

    #[test]
    fn written_headers_parse_back() {
        for (source, destination) in [
            ("192.0.2.1:5000", "198.51.100.2:443"),
            ("[2001:db8::1]:5000", "[::1]:443"),
            ("192.0.2.1:5000", "[::1]:443"),
        ] {
            for version in [ProxyVersion::V1, ProxyVersion::V2] {
                let mut out = Vec::new();
                write(version, addr(source), addr(destination), &mut out);
                let (s, d) = complete(&out).addrs.unwrap();
                assert_eq!(canonical(s.ip()), canonical(addr(source).ip()));
                assert_eq!(s.port(), 5000);
                assert_eq!(d.port(), 443);
            }
        }
        let mut out = Vec::new();
        write_v1(addr("192.0.2.1:5000"), addr("198.51.100.2:443"), &mut out);
        assert_eq!(out, b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 443\r\n");
        let mut out = Vec::new();
        write_v1(addr("[::ffff:192.0.2.1]:1"), addr("[::1]:2"), &mut out);
        assert_eq!(out, b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n");
    }

    /// Arbitrary bytes never panic, and a verdict never claims more bytes than it saw.
    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 64) as usize;
            // Half of them start like a header, to reach the deeper branches.
            let prefix: &[u8] = match seed % 4 {
                0 => &V2_SIGNATURE,
                1 => b"PROXY TCP4 ",
                _ => b"",
            };
            let mut bytes = prefix.to_vec();
            bytes.extend((0..len).map(|i| (seed.rotate_left(i as u32 * 5) & 0xff) as u8));
            if let Ok(Parsed::Complete(header)) = parse(&bytes, 64) {
                assert!(header.len <= bytes.len());
            }
        }
    }

    #[test]
    fn the_legacy_ipv4_mapped_v2_matches_the_old_writer() {
        // The header sluice sent before senders moved to pools, byte for byte.
        let mut out = Vec::new();
        write_v2(addr("192.0.2.1:5000"), addr("198.51.100.2:443"), &mut out);
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 2]);
        want.extend_from_slice(&5000u16.to_be_bytes());
        want.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(out, want);
        let mut out = Vec::new();
        write_v2(
            addr("[::ffff:192.0.2.1]:1"),
            addr("[::ffff:10.0.0.1]:2"),
            &mut out,
        );
        assert_eq!(out.len(), 16 + 12);
    }
}
