//! Reading a TLS ClientHello far enough to learn the server name (SNI), without decrypting
//! anything: what `tls-passthrough` listeners route by.
//!
//! [`parse`] is pure and total: it takes the bytes received so far and says whether they are a
//! complete ClientHello (with the SNI, if any, and how many bytes the records holding it took),
//! need more bytes, or are not TLS at all. The ClientHello may span several TLS records and
//! arrive over any number of TCP segments; the caller reads, calls [`parse`] again, and replays
//! every byte to the backend once routed. Any input, however hostile, yields a value: no
//! indexing, no arithmetic that can overflow, sizes bounded by the caller's `max`.

/// A TLS record header: type (1), version (2), length (2).
const RECORD_HEADER: usize = 5;
/// The record content type of handshake messages.
const HANDSHAKE: u8 = 22;
/// The handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Largest record payload a client may send (RFC 8446 §5.1: 2^14).
const MAX_RECORD: usize = 16 * 1024;
/// The `server_name` extension (RFC 6066 §3).
const EXT_SERVER_NAME: u16 = 0;
/// A `host_name` entry of the `server_name` extension.
const NAME_TYPE_HOST: u8 = 0;
/// Longest DNS name.
const MAX_NAME: usize = 253;

/// A complete ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The server name the client asked for, lowercase, without a trailing dot; `None` when
    /// the client sent no `server_name` extension.
    pub sni: Option<String>,
    /// Bytes of the records that held the ClientHello (what was parsed of the input).
    pub len: usize,
}

/// Why the bytes are not a ClientHello sluice can route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientHelloError {
    /// The first bytes are not a TLS handshake record (plain HTTP, SSLv2, garbage).
    #[error("not a TLS handshake")]
    NotTls,
    /// The ClientHello is larger than the limit.
    #[error("ClientHello larger than {0} bytes")]
    TooLarge(usize),
    /// The bytes start like TLS but break its rules.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

/// Parses the start of a TLS connection. `Ok(None)`: valid so far, more bytes needed.
/// `max` bounds the ClientHello's records in bytes; past it, [`ClientHelloError::TooLarge`].
pub fn parse(input: &[u8], max: usize) -> Result<Option<ClientHello>, ClientHelloError> {
    let mut message: Vec<u8> = Vec::new();
    let mut offset = 0usize;
    loop {
        let rest = input.get(offset..).unwrap_or_default();
        // The record header, checked byte by byte so a non-TLS stream is refused at once.
        if let Some(&kind) = rest.first()
            && kind != HANDSHAKE
        {
            return Err(if offset == 0 {
                ClientHelloError::NotTls
            } else {
                ClientHelloError::Malformed("a non-handshake record inside the ClientHello")
            });
        }
        if let Some(&major) = rest.get(1)
            && major != 3
        {
            return Err(if offset == 0 {
                ClientHelloError::NotTls
            } else {
                ClientHelloError::Malformed("bad record version")
            });
        }
        let Some(header) = rest.get(..RECORD_HEADER) else {
            return more(input.len(), max);
        };
        let length = usize::from(u16::from_be_bytes([
            header.get(3).copied().unwrap_or(0),
            header.get(4).copied().unwrap_or(0),
        ]));
        if length == 0 {
            return Err(ClientHelloError::Malformed("empty handshake record"));
        }
        if length > MAX_RECORD {
            return Err(ClientHelloError::Malformed("record longer than 16 KiB"));
        }
        let end = offset.saturating_add(RECORD_HEADER).saturating_add(length);
        if end > max {
            return Err(ClientHelloError::TooLarge(max));
        }
        let Some(payload) = input.get(offset + RECORD_HEADER..end) else {
            return more(input.len(), max);
        };
        message.extend_from_slice(payload);
        offset = end;

        // The handshake message header: type (1), length (3).
        let mut head = Reader(&message);
        let Some(kind) = head.u8() else { continue };
        if kind != CLIENT_HELLO {
            return Err(ClientHelloError::Malformed(
                "first handshake message is not a ClientHello",
            ));
        }
        let Some(body_len) = head.u24() else { continue };
        if body_len.saturating_add(4) > max {
            return Err(ClientHelloError::TooLarge(max));
        }
        let Some(body) = head.take(body_len) else {
            continue;
        };
        let sni = server_name(body)?;
        return Ok(Some(ClientHello { sni, len: offset }));
    }
}

/// More bytes are needed, unless `max` already came without a complete ClientHello.
fn more(have: usize, max: usize) -> Result<Option<ClientHello>, ClientHelloError> {
    if have >= max {
        Err(ClientHelloError::TooLarge(max))
    } else {
        Ok(None)
    }
}

/// The SNI of a ClientHello body (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2).
fn server_name(body: &[u8]) -> Result<Option<String>, ClientHelloError> {
    let malformed = ClientHelloError::Malformed;
    let mut r = Reader(body);
    r.take(2 + 32).ok_or(malformed("truncated random"))?;
    let session = r.u8().ok_or(malformed("truncated session id"))?;
    if session > 32 {
        return Err(malformed("session id longer than 32 bytes"));
    }
    r.take(usize::from(session))
        .ok_or(malformed("truncated session id"))?;
    let suites = r.u16().ok_or(malformed("truncated cipher suites"))?;
    if suites < 2 || suites % 2 != 0 {
        return Err(malformed("bad cipher suites length"));
    }
    r.take(usize::from(suites))
        .ok_or(malformed("truncated cipher suites"))?;
    let compression = r.u8().ok_or(malformed("truncated compression methods"))?;
    if compression == 0 {
        return Err(malformed("no compression method"));
    }
    r.take(usize::from(compression))
        .ok_or(malformed("truncated compression methods"))?;
    if r.0.is_empty() {
        // No extensions at all (a TLS 1.0-era client): no SNI.
        return Ok(None);
    }
    let total = r.u16().ok_or(malformed("truncated extensions"))?;
    let mut extensions = Reader(
        r.take(usize::from(total))
            .ok_or(malformed("truncated extensions"))?,
    );
    if !r.0.is_empty() {
        return Err(malformed("bytes after the extensions"));
    }
    let mut sni = None;
    while !extensions.0.is_empty() {
        let kind = extensions.u16().ok_or(malformed("truncated extension"))?;
        let len = extensions.u16().ok_or(malformed("truncated extension"))?;
        let data = extensions
            .take(usize::from(len))
            .ok_or(malformed("truncated extension"))?;
        if kind != EXT_SERVER_NAME {
            continue;
        }
        if sni.is_some() {
            return Err(malformed("two server_name extensions"));
        }
        sni = Some(host_name(data)?);
    }
    Ok(sni.flatten())
}

/// The `host_name` of a `server_name` extension's data.
fn host_name(data: &[u8]) -> Result<Option<String>, ClientHelloError> {
    let malformed = ClientHelloError::Malformed;
    let mut r = Reader(data);
    let list_len = r.u16().ok_or(malformed("truncated server_name"))?;
    let mut list = Reader(
        r.take(usize::from(list_len))
            .ok_or(malformed("truncated server_name"))?,
    );
    let mut found = None;
    while !list.0.is_empty() {
        let kind = list.u8().ok_or(malformed("truncated server_name"))?;
        let len = list.u16().ok_or(malformed("truncated server_name"))?;
        let name = list
            .take(usize::from(len))
            .ok_or(malformed("truncated server_name"))?;
        if kind != NAME_TYPE_HOST || found.is_some() {
            continue;
        }
        found = Some(normalise(name)?);
    }
    Ok(found)
}

/// A host name as sent: ASCII letters, digits, `-`, `_` and dots, lowercased, trailing dot
/// removed.
fn normalise(name: &[u8]) -> Result<String, ClientHelloError> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(ClientHelloError::Malformed("bad server name length"));
    }
    if !name
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(ClientHelloError::Malformed(
            "server name with characters outside a DNS name",
        ));
    }
    Ok(name
        .iter()
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect())
}

/// A cursor that never reads past its slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).and_then(|b| b.first().copied())
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }

    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some(
            usize::from(*b.first()?) << 16 | usize::from(*b.get(1)?) << 8 | usize::from(*b.get(2)?),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello body with these extensions.
    fn body(extensions: &[u8]) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&[7; 32]);
        b.push(0); // session id
        b.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        b.extend_from_slice(&[1, 0]); // null compression
        b.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        b.extend_from_slice(extensions);
        b
    }

    fn sni_ext(name: &str) -> Vec<u8> {
        let mut entry = vec![NAME_TYPE_HOST];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name.as_bytes());
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&entry);
        let mut ext = vec![0, 0];
        ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext.extend_from_slice(&data);
        ext
    }

    /// The handshake message split into records of at most `record` bytes.
    fn records(body: &[u8], record: usize) -> Vec<u8> {
        let mut message = vec![CLIENT_HELLO];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(body);
        let mut out = Vec::new();
        for chunk in message.chunks(record) {
            out.extend_from_slice(&[HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn hello(name: &str) -> Vec<u8> {
        let mut ext = vec![0, 10, 0, 4, 0, 2, 0, 29]; // supported_groups first
        ext.extend_from_slice(&sni_ext(name));
        records(&body(&ext), MAX_RECORD)
    }

    #[test]
    fn finds_the_server_name() {
        let bytes = hello("Chat.Example.COM.");
        let parsed = parse(&bytes, 16 * 1024).unwrap().unwrap();
        assert_eq!(parsed.sni.as_deref(), Some("chat.example.com"));
        assert_eq!(parsed.len, bytes.len());
    }

    #[test]
    fn every_prefix_needs_more_and_the_whole_completes() {
        // A ClientHello split at every byte: each prefix is "more", the whole is complete.
        for record in [MAX_RECORD, 16, 1] {
            let bytes = records(&body(&sni_ext("a.example")), record);
            for cut in 0..bytes.len() {
                assert_eq!(parse(&bytes[..cut], 64 * 1024), Ok(None), "cut {cut}");
            }
            let parsed = parse(&bytes, 64 * 1024).unwrap().unwrap();
            assert_eq!(parsed.sni.as_deref(), Some("a.example"));
            assert_eq!(parsed.len, bytes.len());
        }
    }

    #[test]
    fn bytes_after_the_hello_are_not_counted() {
        let mut bytes = hello("a.example");
        let len = bytes.len();
        bytes.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        assert_eq!(parse(&bytes, 64 * 1024).unwrap().unwrap().len, len);
    }

    #[test]
    fn no_extension_means_no_sni() {
        let bytes = records(&body(&[0, 10, 0, 4, 0, 2, 0, 29]), MAX_RECORD);
        assert_eq!(parse(&bytes, 1024).unwrap().unwrap().sni, None);
    }

    #[test]
    fn non_tls_is_refused_at_the_first_byte() {
        assert_eq!(parse(b"G", 1024), Err(ClientHelloError::NotTls));
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n", 1024),
            Err(ClientHelloError::NotTls)
        );
        assert_eq!(parse(&[22, 2], 1024), Err(ClientHelloError::NotTls));
        assert_eq!(parse(&[0x80, 0x2e, 1], 1024), Err(ClientHelloError::NotTls));
    }

    #[test]
    fn size_is_bounded() {
        let bytes = hello("a.example");
        assert_eq!(
            parse(&bytes, 40),
            Err(ClientHelloError::TooLarge(40)),
            "a record longer than the limit"
        );
        let split = records(&body(&sni_ext("a.example")), 8);
        assert_eq!(parse(&split, 20), Err(ClientHelloError::TooLarge(20)));
    }

    #[test]
    fn malformed_shapes_are_errors() {
        // Not a ClientHello.
        assert!(parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0], 1024).is_err());
        // Empty record.
        assert!(parse(&[22, 3, 1, 0, 0], 1024).is_err());
        // A bad name.
        let bytes = records(&body(&sni_ext("a b")), MAX_RECORD);
        assert!(parse(&bytes, 1024).is_err());
        // Truncated body inside a complete message.
        let bytes = records(&[3, 3, 1, 2], MAX_RECORD);
        assert!(parse(&bytes, 1024).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse(&bytes, 512);
        }

        #[test]
        fn never_panics_after_a_valid_header(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut bytes = vec![22, 3, 1, 2, 0, 1, 0, 1, 250];
            bytes.extend_from_slice(&tail);
            let _ = parse(&bytes, 4096);
        }
    }
}
