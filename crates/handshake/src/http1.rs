//! Plain HTTP/1.1 heads through a proxy: what a request and a response look like on the other
//! side of sluice (RFC 9110 §7.6.1, RFC 9112 §6–§9).
//!
//! A plain request's head is forwarded byte for byte but for:
//!
//! - **hop-by-hop fields, removed** (RFC 9110 §7.6.1): `Connection` and every field it names,
//!   `Keep-Alive`, `TE`, `Trailer`, `Upgrade`, `Proxy-Connection` and every other `Proxy-*`
//!   field (sluice authenticates nobody: a `Proxy-Authorization` is not meant for the origin).
//!   Removing `Upgrade` is what stops an upgrade sluice did not validate (`h2c`) from turning
//!   the backend connection into a tunnel sluice cannot see into. `Host` is never removed,
//!   whatever `Connection` names;
//! - **framing, regenerated**: the client's `Content-Length` and `Transfer-Encoding` are
//!   replaced by one canonical field, `Content-Length: N` or `Transfer-Encoding: chunked`,
//!   matching the body sluice writes (see the `body` module): the backend never sees a framing
//!   sluice did not itself decide;
//! - `X-Forwarded-For/-Proto/-Host`, as for upgrades ([`crate::write_forwarded_request`]).
//!
//! A response's head keeps its fields but for the same hop-by-hop ones, gets framing fields
//! matching the body sluice writes, an `HTTP/1.1` status line (sluice speaks 1.1 to the client
//! whatever the backend spoke) and, when sluice closes the client connection after it,
//! `Connection: close`.

use std::io::Write as _;

use crate::fields::{has_token, list_elements, trim_ows};
use crate::forward::{ClientInfo, write_head};
use crate::request::Request;

/// The framing fields [`write_plain_response`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingFields {
    /// The backend's `Content-Length` and `Transfer-Encoding` as sent (a response without body,
    /// where they describe the body a `GET` would have had; or a body relayed as received).
    AsSent,
    /// `Content-Length: N`, replacing the backend's.
    Length(u64),
    /// `Transfer-Encoding: chunked`, replacing the backend's.
    Chunked,
    /// Neither (a body delimited by the close, written decoded).
    Omit,
}

impl Request {
    /// Whether the client closes after this request: `Connection: close`, or HTTP/1.0 (sluice
    /// does not keep HTTP/1.0 connections alive).
    pub fn wants_close(&self) -> bool {
        self.version() == 0 || has_token(self.raw_headers(), "connection", "close")
    }

    /// Whether the client waits for `100 Continue` before sending its body (RFC 9110 §10.1.1;
    /// ignored in HTTP/1.0 requests, as that section requires).
    pub fn expects_continue(&self) -> bool {
        self.version() == 1
            && self
                .header_values("expect")
                .any(|v| trim_ows(v).eq_ignore_ascii_case(b"100-continue"))
    }

    /// Whether the method is idempotent (RFC 9110 §9.2.2): a request that may be sent again
    /// when a reused backend connection turns out to be closed.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method(),
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
    }
}

/// Appends the head of a plain request to send the backend to `out`: the client's, minus its
/// hop-by-hop fields and framing fields, plus `framing` (whole lines, from
/// [`framing_lines`]) and the `X-Forwarded-*` fields.
pub fn write_plain_request(req: &Request, client: &ClientInfo, framing: &[u8], out: &mut Vec<u8>) {
    let named: Vec<&[u8]> = req
        .header_values("connection")
        .flat_map(list_elements)
        .collect();
    let skip = |name: &[u8]| {
        is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
            || (!name.eq_ignore_ascii_case(b"host")
                && named.iter().any(|n| n.eq_ignore_ascii_case(name)))
    };
    write_head(req, client, skip, framing, out);
}

/// The framing field `framing` stands for, as a whole line (`Content-Length: N` or
/// `Transfer-Encoding: chunked`); nothing for [`FramingFields::AsSent`] and
/// [`FramingFields::Omit`].
pub fn framing_lines(framing: FramingFields) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    match framing {
        FramingFields::Length(length) => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "Content-Length: {length}\r\n");
        }
        FramingFields::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        FramingFields::AsSent | FramingFields::Omit => {}
    }
    out
}

/// Appends the backend's response head `head` (complete, from `read_response_head`), rewritten
/// for the client, to `out`: status line as `HTTP/1.1`, hop-by-hop fields removed, framing as
/// `framing` says, `extra` lines (e.g. `Set-Cookie`) added, and `Connection: close` when `close`.
///
/// Returns `false`, writing nothing, when `head` is not a head (no status line or no blank
/// line; never the case for a head `read_response_head` returned).
pub fn write_plain_response(
    head: &[u8],
    framing: FramingFields,
    extra: &[u8],
    close: bool,
    out: &mut Vec<u8>,
) -> bool {
    let Some(fields_end) = head.strip_suffix(b"\r\n\r\n") else {
        return false;
    };
    let mut lines = fields_end.split(|&b| b == b'\n').map(|line| {
        // Every line ends in CRLF (the scanner saw to it); the split left the CR.
        line.strip_suffix(b"\r").unwrap_or(line)
    });
    let Some(status_line) = lines.next() else {
        return false;
    };
    let Some(space) = status_line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let fields: Vec<(&[u8], &[u8])> = lines
        .map(|line| {
            let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
            (line.get(..colon).unwrap_or_default(), line)
        })
        .collect();
    let named: Vec<&[u8]> = fields
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"connection"))
        .flat_map(|(_, line)| {
            let value = line
                .iter()
                .position(|&b| b == b':')
                .map_or(&b""[..], |c| line.get(c + 1..).unwrap_or_default());
            list_elements(value)
        })
        .collect();
    let regenerate = framing != FramingFields::AsSent;
    out.reserve(head.len() + extra.len() + 48);
    out.extend_from_slice(b"HTTP/1.1");
    out.extend_from_slice(status_line.get(space..).unwrap_or_default());
    out.extend_from_slice(b"\r\n");
    for (name, line) in &fields {
        let framing_field = name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding");
        if is_hop_by_hop(name)
            || (regenerate && framing_field)
            || (!framing_field && named.iter().any(|n| n.eq_ignore_ascii_case(name)))
        {
            continue;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&framing_lines(framing));
    out.extend_from_slice(extra);
    if !extra.is_empty() && !extra.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    true
}

/// The fields that describe one connection and never cross a proxy (RFC 9110 §7.6.1), but for
/// the framing fields, which the callers treat on their own.
fn is_hop_by_hop(name: &[u8]) -> bool {
    const FIELDS: [&[u8]; 5] = [b"connection", b"keep-alive", b"te", b"trailer", b"upgrade"];
    FIELDS.iter().any(|f| f.eq_ignore_ascii_case(name))
        || name
            .get(..6)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"proxy-"))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use bytes::Bytes;

    use super::*;
    use crate::parse_request;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

    fn client(trusted: bool) -> ClientInfo {
        ClientInfo {
            addr: PEER,
            tls: false,
            trusted,
        }
    }

    fn request(head: &str) -> Request {
        parse_request(Bytes::copy_from_slice(head.as_bytes()), 100).expect("valid")
    }

    fn plain(head: &str, framing: FramingFields) -> String {
        let mut out = Vec::new();
        write_plain_request(
            &request(head),
            &client(false),
            &framing_lines(framing),
            &mut out,
        );
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn hop_by_hop_fields_never_reach_the_backend() {
        let head = "POST /poll?t=1 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret, Host\r\n\
            Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\n\
            HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nconnection: HTTP2-Settings\r\n\
            Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\nX-Secret: s\r\n\
            Transfer-Encoding: chunked\r\nCookie: a=b\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
        assert_eq!(
            plain(head, FramingFields::Chunked),
            "POST /poll?t=1 HTTP/1.1\r\nHost: h\r\nCookie: a=b\r\n\
             Transfer-Encoding: chunked\r\nX-Forwarded-For: 203.0.113.7\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n"
        );
    }

    #[test]
    fn framing_is_regenerated() {
        let head = "PUT / HTTP/1.1\r\nHost: h\r\nContent-Length:  007\r\nX-A: 1\r\n\r\n";
        assert_eq!(
            plain(head, FramingFields::Length(7)),
            "PUT / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nContent-Length: 7\r\n\
             X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n"
        );
        let get = plain("GET / HTTP/1.1\r\nHost: h\r\n\r\n", FramingFields::Omit);
        assert!(!get.contains("Content-Length") && !get.contains("Transfer-Encoding"));
    }

    #[test]
    fn connection_cannot_remove_the_forwarded_fields() {
        let head = "GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Forwarded-For\r\n\
            X-Forwarded-For: 1.1.1.1\r\n\r\n";
        let mut out = Vec::new();
        write_plain_request(&request(head), &client(true), b"", &mut out);
        let out = String::from_utf8(out).expect("ascii");
        assert!(
            out.contains("X-Forwarded-For: 1.1.1.1, 203.0.113.7\r\n"),
            "{out}"
        );
    }

    #[test]
    fn request_properties() {
        assert!(!request("GET / HTTP/1.1\r\nHost: h\r\n\r\n").wants_close());
        assert!(request("GET / HTTP/1.1\r\nHost: h\r\nConnection: a, Close\r\n\r\n").wants_close());
        assert!(request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").wants_close());
        assert!(
            request("PUT / HTTP/1.1\r\nHost: h\r\nExpect:  100-Continue \r\n\r\n")
                .expects_continue()
        );
        assert!(!request("PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expects_continue());
        assert!(!request("PUT / HTTP/1.1\r\nHost: h\r\nExpect: x\r\n\r\n").expects_continue());
        for (method, idempotent) in [
            ("GET", true),
            ("HEAD", true),
            ("PUT", true),
            ("DELETE", true),
            ("OPTIONS", true),
            ("POST", false),
            ("PATCH", false),
            ("get", false),
        ] {
            let req = request(&format!("{method} / HTTP/1.1\r\nHost: h\r\n\r\n"));
            assert_eq!(req.is_idempotent(), idempotent, "{method}");
        }
    }

    fn response(head: &str, framing: FramingFields, extra: &str, close: bool) -> String {
        let mut out = Vec::new();
        assert!(write_plain_response(
            head.as_bytes(),
            framing,
            extra.as_bytes(),
            close,
            &mut out
        ));
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn responses_lose_hop_by_hop_fields_and_get_their_framing() {
        let head = "HTTP/1.0 200 OK\r\nServer: s\r\nConnection: keep-alive, X-Internal\r\n\
            Keep-Alive: timeout=5\r\nX-Internal: 1\r\nTransfer-Encoding: chunked\r\n\
            Trailer: X-Sum\r\nUpgrade: h2c\r\nProxy-Authenticate: Basic\r\nSet-Cookie: a=b\r\n\r\n";
        assert_eq!(
            response(head, FramingFields::Chunked, "Set-Cookie: srv=1\r\n", false),
            "HTTP/1.1 200 OK\r\nServer: s\r\nSet-Cookie: a=b\r\n\
             Transfer-Encoding: chunked\r\nSet-Cookie: srv=1\r\n\r\n"
        );
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(
            response(head, FramingFields::Length(10), "", true),
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            response(head, FramingFields::Omit, "", true),
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
        );
        // A HEAD answer keeps the Content-Length of the body it does not have.
        assert_eq!(
            response(head, FramingFields::AsSent, "X: 1", false),
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX: 1\r\n\r\n"
        );
        // A status line without a reason phrase.
        assert_eq!(
            response("HTTP/1.1 204 \r\n\r\n", FramingFields::AsSent, "", false),
            "HTTP/1.1 204 \r\n\r\n"
        );
        let mut out = Vec::new();
        assert!(!write_plain_response(
            b"HTTP/1.1 200 OK\r\n",
            FramingFields::Omit,
            b"",
            false,
            &mut out
        ));
        assert!(out.is_empty());
    }
}
