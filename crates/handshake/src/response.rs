//! The backend's response head: its status, its framing, and (for a 101) what the WebSocket
//! accept check needs (RFC 6455 §4.1, the client's checks of the server's handshake, done here on
//! the client's behalf so a broken backend is answered with 502 rather than a broken tunnel).
//!
//! The head is read by [`crate::read_response_head`]; this module keeps only owned, copied facts
//! (no borrow of the buffer), so the caller may relay the buffer as it is.

use crate::fields::{list_elements, parse_content_length};

/// Most header fields accepted in a backend's response head.
pub const MAX_RESPONSE_HEADERS: usize = 64;

/// Length of a `Sec-WebSocket-Accept` value: base64 of a 20-byte SHA-1.
pub(crate) const ACCEPT_LEN: usize = 28;

/// What sluice needs from a backend's response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    status: u16,
    version: u8,
    head_len: usize,
    content_length: Option<u64>,
    transfer_encoding: bool,
    /// `Transfer-Encoding`'s final coding is `chunked`, and `chunked` appears once.
    chunked: bool,
    /// `Connection` lists `close`.
    connection_close: bool,
    /// `Connection` lists `keep-alive`.
    connection_keep_alive: bool,
    upgrade_websocket: bool,
    connection_upgrade: bool,
    accept: AcceptField,
}

/// The `Sec-WebSocket-Accept` field as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptField {
    Missing,
    Repeated,
    /// Present once, but not 28 bytes long (so it cannot be right).
    WrongLength,
    Value([u8; ACCEPT_LEN]),
}

impl ResponseHead {
    /// The status code (100..=999 as httparse reads three digits).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Length of the head, blank line included: the buffer's bytes after it are already body,
    /// or (after a 101) the backend's first frames.
    pub fn head_len(&self) -> usize {
        self.head_len
    }

    /// The `Content-Length`, when present (never together with `Transfer-Encoding`).
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Whether `Transfer-Encoding` is present (the body is then framed by it, or by the close).
    pub fn has_transfer_encoding(&self) -> bool {
        self.transfer_encoding
    }

    /// Whether the body is chunked: `Transfer-Encoding`'s final coding is `chunked` (and it is
    /// listed once). With `Transfer-Encoding` but not chunked, the body ends at the close.
    pub fn is_chunked(&self) -> bool {
        self.chunked
    }

    /// Whether the backend keeps its connection open after this response (RFC 9112 §9.3):
    /// HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    pub fn keeps_alive(&self) -> bool {
        !self.connection_close && (self.version == 1 || self.connection_keep_alive)
    }

    /// An interim response (1xx other than 101): relay it and read the final one.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    pub(crate) fn upgrade_websocket(&self) -> bool {
        self.upgrade_websocket
    }

    pub(crate) fn connection_upgrade(&self) -> bool {
        self.connection_upgrade
    }

    pub(crate) fn accept(&self) -> AcceptField {
        self.accept
    }
}

/// Parses a complete response head (framing already validated by the scanner).
pub(crate) fn parse_response_head(head: &[u8]) -> Result<ResponseHead, &'static str> {
    // Uninitialised: httparse writes the fields it finds (2 KiB not zeroed per response).
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        head,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        Ok(_) => return Err("response head not understood"),
        Err(httparse::Error::TooManyHeaders) => return Err("too many header fields in response"),
        Err(httparse::Error::Version) => return Err("invalid HTTP version in response"),
        Err(httparse::Error::Status) => return Err("invalid status line in response"),
        Err(_) => return Err("malformed response head"),
    }
    let (Some(status), Some(version)) = (response.code, response.version) else {
        return Err("response head not understood");
    };
    let mut parsed = ResponseHead {
        status,
        version,
        head_len: head.len(),
        content_length: None,
        transfer_encoding: false,
        chunked: false,
        connection_close: false,
        connection_keep_alive: false,
        upgrade_websocket: false,
        connection_upgrade: false,
        accept: AcceptField::Missing,
    };
    let mut content_lengths = 0usize;
    let mut chunked_count = 0usize;
    for field in response.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            content_lengths += 1;
            parsed.content_length = Some(
                parse_content_length(field.value).ok_or("invalid Content-Length in response")?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            parsed.transfer_encoding = true;
            for coding in list_elements(field.value) {
                let chunked = coding.eq_ignore_ascii_case(b"chunked");
                chunked_count += usize::from(chunked);
                parsed.chunked = chunked;
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            parsed.accept = match parsed.accept {
                AcceptField::Missing => accept_value(field.value),
                _ => AcceptField::Repeated,
            };
        }
    }
    if content_lengths > 1 {
        return Err("duplicate Content-Length in response");
    }
    if parsed.transfer_encoding && parsed.content_length.is_some() {
        return Err("Content-Length with Transfer-Encoding in response");
    }
    parsed.chunked &= chunked_count == 1;
    // `Upgrade` and `Connection` in one pass (as `has_token` would find each token, across
    // repeated fields, case-insensitive).
    for field in response.headers.iter() {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"upgrade") {
            parsed.upgrade_websocket |=
                list_elements(field.value).any(|e| e.eq_ignore_ascii_case(b"websocket"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for element in list_elements(field.value) {
                parsed.connection_upgrade |= element.eq_ignore_ascii_case(b"upgrade");
                parsed.connection_close |= element.eq_ignore_ascii_case(b"close");
                parsed.connection_keep_alive |= element.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    Ok(parsed)
}

fn accept_value(value: &[u8]) -> AcceptField {
    let value = crate::fields::trim_ows(value);
    match <[u8; ACCEPT_LEN]>::try_from(value) {
        Ok(bytes) => AcceptField::Value(bytes),
        Err(_) => AcceptField::WrongLength,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_101() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n\
            Connection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        let parsed = parse_response_head(head).expect("valid");
        assert_eq!(parsed.status(), 101);
        assert_eq!(parsed.version(), 1);
        assert_eq!(parsed.head_len(), head.len());
        assert!(parsed.upgrade_websocket() && parsed.connection_upgrade());
        assert_eq!(
            parsed.accept(),
            AcceptField::Value(*b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert!(!parsed.is_interim());
    }

    #[test]
    fn framing_of_plain_answers() {
        let parsed = parse_response_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 12\r\n\r\n")
            .expect("ok");
        assert_eq!(parsed.content_length(), Some(12));
        assert!(!parsed.has_transfer_encoding());
        let parsed = parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("ok");
        assert!(parsed.has_transfer_encoding() && parsed.content_length().is_none());
        let parsed = parse_response_head(b"HTTP/1.1 103 Early Hints\r\n\r\n").expect("ok");
        assert!(parsed.is_interim());
        let chunked = |te: &str| {
            let head = format!("HTTP/1.1 200 OK\r\n{te}\r\n");
            parse_response_head(head.as_bytes())
                .expect("ok")
                .is_chunked()
        };
        assert!(chunked("Transfer-Encoding: chunked\r\n"));
        assert!(chunked(
            "Transfer-Encoding: gzip\r\ntransfer-encoding: CHUNKED\r\n"
        ));
        assert!(!chunked("Transfer-Encoding: chunked, gzip\r\n"));
        assert!(!chunked("Transfer-Encoding: chunked, chunked\r\n"));
        assert!(!chunked("Transfer-Encoding: xchunked\r\n"));
        assert!(!chunked(""));
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let keeps = |head: &str| {
            parse_response_head(head.as_bytes())
                .expect("ok")
                .keeps_alive()
        };
        assert!(keeps("HTTP/1.1 200 OK\r\n\r\n"));
        assert!(keeps("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!keeps("HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n"));
        assert!(!keeps("HTTP/1.0 200 OK\r\n\r\n"));
        assert!(keeps("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn refuses_ambiguous_answers() {
        let bad: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1,1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
        ];
        for head in bad {
            assert!(
                parse_response_head(head).is_err(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn counts_accept_fields() {
        let twice = b"HTTP/1.1 101 S\r\nSec-WebSocket-Accept: a\r\nSec-WebSocket-Accept: b\r\n\r\n";
        assert_eq!(
            parse_response_head(twice).expect("ok").accept(),
            AcceptField::Repeated
        );
        let short = b"HTTP/1.1 101 S\r\nSec-WebSocket-Accept: abc\r\n\r\n";
        assert_eq!(
            parse_response_head(short).expect("ok").accept(),
            AcceptField::WrongLength
        );
        let none = b"HTTP/1.1 101 S\r\n\r\n";
        assert_eq!(
            parse_response_head(none).expect("ok").accept(),
            AcceptField::Missing
        );
    }

    #[test]
    fn too_many_fields() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..=MAX_RESPONSE_HEADERS {
            head.extend_from_slice(b"A: b\r\n");
        }
        head.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_response_head(&head),
            Err("too many header fields in response")
        );
    }
}
