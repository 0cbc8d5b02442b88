//! The request head, parsed strictly and kept as its own bytes plus offsets.
//!
//! httparse parses the request line and checks the fields; the strict rules on top of it are
//! listed on [`parse_request`].

use bytes::Bytes;

use crate::error::HandshakeError;
use crate::fields::{is_field_byte, is_tchar, list_elements, parse_content_length, trim_ows};
use crate::read::{HeadScanner, Scan};

/// A strictly valid request head: the bytes as received and the offsets of their parts.
///
/// Its `Debug` shows the method, path, version and field count only: never the query or field
/// values (cookies, keys, tokens).
#[derive(Clone)]
pub struct Request {
    head: Bytes,
    method: Span,
    target: Span,
    /// `None`: an absolute-form target with an empty path, which means `/`.
    path: Option<Span>,
    query: Option<Span>,
    host: Option<Span>,
    host_field: Option<usize>,
    version: u8,
    request_line: Span,
    fields: Vec<Field>,
    content_length: Option<u64>,
    transfer_encoding: bool,
}

impl Request {
    /// The method, e.g. `GET` (case-sensitive, RFC 9110 §9.1).
    pub fn method(&self) -> &str {
        self.str_at(self.method)
    }

    /// The request target as sent (origin-form `/a?b`, or absolute-form `http://h/a?b`).
    pub fn target(&self) -> &str {
        self.str_at(self.target)
    }

    /// The path: the target before `?` (for absolute-form, the path part, `/` when empty).
    pub fn path(&self) -> &str {
        self.path.map_or("/", |span| self.str_at(span))
    }

    /// The query: the target after the first `?`, if there is one (possibly empty).
    pub fn query(&self) -> Option<&str> {
        self.query.map(|span| self.str_at(span))
    }

    /// The host from `Host`, without the port, as sent (case kept; an IPv6 literal keeps its
    /// brackets). `None` only for an HTTP/1.0 request without `Host`.
    pub fn host(&self) -> Option<&str> {
        self.host.map(|span| self.str_at(span))
    }

    /// The raw value of the `Host` field (port included), if present.
    pub fn host_field(&self) -> Option<&[u8]> {
        let field = self.fields.get(self.host_field?)?;
        Some(field.value.of(&self.head))
    }

    /// The value of the first field named `name` (case-insensitive), without surrounding
    /// whitespace.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.raw_headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The values of every field named `name` (case-insensitive), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.raw_headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Every field as (name as sent, value without surrounding whitespace), in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.fields
            .iter()
            .map(|f| (self.str_at(f.name), f.value.of(&self.head)))
    }

    /// Every field as (name, value without surrounding whitespace), in order, the name as bytes:
    /// what the lookups use (no UTF-8 check per name; names are tokens, checked at parse).
    pub(crate) fn raw_headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.fields
            .iter()
            .map(|f| (f.name.of(&self.head), f.value.of(&self.head)))
    }

    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The whole head as received, blank line included.
    pub fn head_bytes(&self) -> &[u8] {
        &self.head
    }

    /// The `Content-Length`, if present (validated: one field, digits only).
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Whether `Transfer-Encoding` is present (validated: final coding chunked, no
    /// `Content-Length`, HTTP/1.1).
    pub fn has_transfer_encoding(&self) -> bool {
        self.transfer_encoding
    }

    /// The request line, CRLF included.
    pub(crate) fn request_line_bytes(&self) -> &[u8] {
        self.request_line.of(&self.head)
    }

    /// Each field as (name, value, whole line with its CRLF), for the rewrite.
    pub(crate) fn field_lines(&self) -> impl Iterator<Item = (&[u8], &[u8], &[u8])> {
        self.fields.iter().map(|f| {
            (
                f.name.of(&self.head),
                f.value.of(&self.head),
                f.line.of(&self.head),
            )
        })
    }

    fn str_at(&self, span: Span) -> &str {
        // Every span handed to this was checked to be ASCII when the request was parsed.
        std::str::from_utf8(span.of(&self.head)).unwrap_or_default()
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("path", &self.path())
            .field("version", &self.version)
            .field("fields", &self.fields.len())
            .finish_non_exhaustive()
    }
}

/// Parses and strictly validates a complete request head (the bytes through the blank line,
/// nothing after). Allocates one `Vec` of field offsets; the head itself is kept, not copied.
///
/// httparse parses it; on top of httparse, every shape a proxy must not pass on because two
/// HTTP implementations could read it two ways is refused with
/// [`HandshakeError::Malformed`] (400; RFC 9112 §2.2, §3, §5, §6.1, §6.3; RFC 9110 §5.5, §7.2):
///
/// - line endings: bare LF, bare CR, NUL (by the scanner); an empty line before the request line;
/// - fields: obs-fold, whitespace between name and colon, empty names, non-token names, control
///   characters in values, more fields than the limit (431);
/// - request target: not origin-form (`/…`) nor absolute-form (`http://…`, `https://…`);
///   non-ASCII bytes; a fragment; userinfo in the authority;
/// - `Host`: missing in HTTP/1.1, repeated, empty, not a valid `host[:port]`, or different from
///   the absolute-form target's authority;
/// - body framing: `Content-Length` repeated, listed or not digits; `Content-Length` with
///   `Transfer-Encoding`; `Transfer-Encoding` in HTTP/1.0, or whose final coding is not chunked;
/// - version: anything but HTTP/1.0 and HTTP/1.1 (505 for `HTTP/2.0` and the like, 400 for
///   what is not a version at all).
///
/// More fields than `max_headers` is [`HandshakeError::TooManyHeaders`] (431), checked before
/// anything is allocated.
pub fn parse_request(head: Bytes, max_headers: usize) -> Result<Request, HandshakeError> {
    let bytes: &[u8] = &head;
    match HeadScanner::default().scan(bytes) {
        Scan::Complete(len) if len == bytes.len() => {}
        Scan::Complete(_) => return Err(malformed("bytes after the end of the head")),
        Scan::Partial => return Err(malformed("incomplete head")),
        Scan::Invalid(reason) => return Err(malformed(reason)),
    }
    // From here on every LF is preceded by a CR, and the head ends with an empty line.
    if bytes.first() == Some(&b'\r') {
        return Err(malformed("empty line before the request line"));
    }
    let field_count = memchr::memchr_iter(b'\n', bytes).count().saturating_sub(2);
    if field_count > max_headers {
        return Err(HandshakeError::TooManyHeaders { limit: max_headers });
    }

    let mut lines = lines(bytes);
    let request_line = lines.next().ok_or_else(|| malformed("incomplete head"))?;
    let mut fields = Vec::with_capacity(field_count);
    for line in lines {
        if line.content.is_empty() {
            break;
        }
        fields.push(parse_field(bytes, line)?);
    }

    let RequestLine {
        method,
        target,
        version,
    } = httparse_check(bytes, request_line, &fields)?;

    let mut request = Request {
        head: Bytes::new(),
        method,
        target,
        path: None,
        query: None,
        host: None,
        host_field: None,
        version,
        request_line: request_line.whole,
        fields,
        content_length: None,
        transfer_encoding: false,
    };
    let authority = request.check_target(bytes)?;
    request.check_host(bytes, authority)?;
    request.check_framing(bytes)?;
    request.head = head;
    Ok(request)
}

/// A byte range of the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    fn of(self, bytes: &[u8]) -> &[u8] {
        bytes.get(self.start..self.end).unwrap_or_default()
    }

    /// A sub-range given relative to this one.
    fn sub(self, start: usize, end: usize) -> Span {
        Span {
            start: self.start + start,
            end: self.start + end,
        }
    }
}

/// One header field: its name, its trimmed value and its whole line (CRLF included).
#[derive(Debug, Clone, Copy)]
struct Field {
    name: Span,
    value: Span,
    line: Span,
}

/// One line of the head: its content and the content with the CRLF.
#[derive(Debug, Clone, Copy)]
struct Line {
    content: Span,
    whole: Span,
}

impl Span {
    fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// The lines of a head whose line endings the scanner has validated (each LF after a CR).
fn lines(bytes: &[u8]) -> impl Iterator<Item = Line> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let rest = bytes.get(pos..)?;
        let lf = memchr::memchr(b'\n', rest)?;
        let start = pos;
        let end = start + lf + 1;
        pos = end;
        Some(Line {
            content: Span {
                start,
                end: end.saturating_sub(2).max(start),
            },
            whole: Span { start, end },
        })
    })
}

fn parse_field(bytes: &[u8], line: Line) -> Result<Field, HandshakeError> {
    let content = line.content.of(bytes);
    if matches!(content.first(), Some(b' ' | b'\t')) {
        return Err(malformed("obs-fold (line folding) in a header field"));
    }
    let colon =
        memchr::memchr(b':', content).ok_or_else(|| malformed("header line without a colon"))?;
    let (name, rest) = content.split_at(colon);
    let raw_value = rest.get(1..).unwrap_or_default();
    if name.is_empty() {
        return Err(malformed("empty header name"));
    }
    if matches!(name.last(), Some(b' ' | b'\t')) {
        return Err(malformed("whitespace between header name and colon"));
    }
    if !name.iter().all(|&b| is_tchar(b)) {
        return Err(malformed("invalid character in header name"));
    }
    if !raw_value.iter().all(|&b| is_field_byte(b)) {
        return Err(malformed("control character in header value"));
    }
    let value = trim_ows(raw_value);
    let leading = raw_value.len() - trim_ows_start(raw_value).len();
    let value_start = colon + 1 + leading;
    Ok(Field {
        name: line.content.sub(0, colon),
        value: line.content.sub(value_start, value_start + value.len()),
        line: line.whole,
    })
}

fn trim_ows_start(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    value
}

struct RequestLine {
    method: Span,
    target: Span,
    version: u8,
}

/// Runs httparse over the head and checks that it read the same request line and the same
/// fields as the line walk above: any disagreement means an ambiguous head.
fn httparse_check(
    bytes: &[u8],
    request_line: Line,
    fields: &[Field],
) -> Result<RequestLine, HandshakeError> {
    const ON_STACK: usize = 32;
    let mut stack = [httparse::EMPTY_HEADER; ON_STACK];
    let mut heap;
    let scratch: &mut [httparse::Header<'_>] = match stack.get_mut(..fields.len()) {
        Some(scratch) => scratch,
        None => {
            heap = vec![httparse::EMPTY_HEADER; fields.len()];
            &mut heap
        }
    };
    let mut parsed = httparse::Request::new(scratch);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) if len == bytes.len() => {}
        Ok(_) => return Err(malformed("head not understood")),
        Err(httparse::Error::Version) => return Err(version_error(request_line.content.of(bytes))),
        Err(httparse::Error::Token) => return Err(malformed("invalid method or request target")),
        Err(httparse::Error::HeaderName) => return Err(malformed("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(malformed("invalid header value")),
        Err(httparse::Error::NewLine) => return Err(malformed("invalid line ending")),
        Err(_) => return Err(malformed("invalid request head")),
    }
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(malformed("head not understood"));
    };
    if parsed.headers.len() != fields.len()
        || parsed
            .headers
            .iter()
            .zip(fields)
            .any(|(h, f)| h.name.as_bytes() != f.name.of(bytes))
    {
        return Err(malformed("ambiguous header fields"));
    }
    // The request line must be exactly `method SP target SP HTTP/1.x`.
    let method_span = request_line.content.sub(0, method.len());
    let target_start = method.len() + 1;
    let target_span = request_line
        .content
        .sub(target_start, target_start + target.len());
    let expected_len = target_start + target.len() + 1 + b"HTTP/1.1".len();
    let line = request_line.content.of(bytes);
    if line.len() != expected_len
        || method_span.of(bytes) != method.as_bytes()
        || target_span.of(bytes) != target.as_bytes()
    {
        return Err(malformed("invalid request line"));
    }
    Ok(RequestLine {
        method: method_span,
        target: target_span,
        version,
    })
}

/// 505 for a well-formed request line whose version is not 1.0/1.1 (`HTTP/2.0`, `HTTP/1.2`,
/// `HTTP/3`), 400 for anything else httparse refused as a version.
fn version_error(request_line: &[u8]) -> HandshakeError {
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(_method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return malformed("invalid request line");
    };
    match version {
        b"HTTP/1.0" | b"HTTP/1.1" => malformed("invalid request line"),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            HandshakeError::HttpVersionNotSupported
        }
        [b'H', b'T', b'T', b'P', b'/', major] if major.is_ascii_digit() => {
            HandshakeError::HttpVersionNotSupported
        }
        _ => malformed("invalid HTTP version"),
    }
}

impl Request {
    /// Validates the target's form and bytes and sets path and query. Returns the authority of
    /// an absolute-form target.
    fn check_target(&mut self, bytes: &[u8]) -> Result<Option<Span>, HandshakeError> {
        let target = self.target.of(bytes);
        if !target.iter().all(|b| (b'!'..=b'~').contains(b)) {
            return Err(malformed("non-ASCII byte in request target"));
        }
        if target.contains(&b'#') {
            return Err(malformed("fragment in request target"));
        }
        let (authority, path_start) = if target.first() == Some(&b'/') {
            (None, 0)
        } else {
            let scheme_len = if starts_with_ignore_case(target, b"http://") {
                7
            } else if starts_with_ignore_case(target, b"https://") {
                8
            } else if target == b"*" {
                return Err(malformed("asterisk-form request target"));
            } else {
                return Err(malformed(
                    "request target is not origin-form or absolute-form",
                ));
            };
            let after_scheme = target.get(scheme_len..).unwrap_or_default();
            let authority_len = after_scheme
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(after_scheme.len());
            let authority = self.target.sub(scheme_len, scheme_len + authority_len);
            if authority.of(bytes).contains(&b'@') {
                return Err(malformed("userinfo in request target"));
            }
            (Some(authority), scheme_len + authority_len)
        };
        let from_path = target.get(path_start..).unwrap_or_default();
        let path_len = from_path
            .iter()
            .position(|&b| b == b'?')
            .unwrap_or(from_path.len());
        let path = self.target.sub(path_start, path_start + path_len);
        self.path = (!path.is_empty()).then_some(path);
        if path_len < from_path.len() {
            self.query = Some(
                self.target
                    .sub(path_start + path_len + 1, path_start + from_path.len()),
            );
        }
        Ok(authority)
    }

    /// Exactly one valid `Host` (none allowed in HTTP/1.0), matching an absolute-form authority.
    fn check_host(&mut self, bytes: &[u8], authority: Option<Span>) -> Result<(), HandshakeError> {
        let mut hosts = self
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.name.of(bytes).eq_ignore_ascii_case(b"host"));
        let first = hosts.next();
        if hosts.next().is_some() {
            return Err(malformed("duplicate Host"));
        }
        let Some((index, field)) = first else {
            if self.version == 0 && authority.is_none() {
                return Ok(());
            }
            return Err(malformed("missing Host"));
        };
        let value = field.value.of(bytes);
        let host_len = host_len(value).ok_or_else(|| malformed("invalid Host"))?;
        if authority.is_some_and(|a| !a.of(bytes).eq_ignore_ascii_case(value)) {
            return Err(malformed(
                "Host differs from the request target's authority",
            ));
        }
        self.host = Some(field.value.sub(0, host_len));
        self.host_field = Some(index);
        Ok(())
    }

    /// Body framing (RFC 9112 §6): nothing two parsers could read differently.
    fn check_framing(&mut self, bytes: &[u8]) -> Result<(), HandshakeError> {
        let mut final_coding_chunked = false;
        let mut chunked_before_last = false;
        for field in &self.fields {
            let name = field.name.of(bytes);
            let value = field.value.of(bytes);
            if name.eq_ignore_ascii_case(b"content-length") {
                if self.content_length.is_some() {
                    return Err(malformed("duplicate Content-Length"));
                }
                self.content_length = Some(
                    parse_content_length(value)
                        .ok_or_else(|| malformed("invalid Content-Length"))?,
                );
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                self.transfer_encoding = true;
                for coding in list_elements(value) {
                    if final_coding_chunked {
                        chunked_before_last = true;
                    }
                    let coding_name = coding.split(|&b| b == b';').next().unwrap_or_default();
                    final_coding_chunked = trim_ows(coding_name).eq_ignore_ascii_case(b"chunked");
                }
            }
        }
        if !self.transfer_encoding {
            return Ok(());
        }
        if self.content_length.is_some() {
            return Err(malformed("Content-Length with Transfer-Encoding"));
        }
        if self.version == 0 {
            return Err(malformed("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if chunked_before_last || !final_coding_chunked {
            return Err(malformed(
                "Transfer-Encoding does not end with chunked exactly once",
            ));
        }
        Ok(())
    }
}

/// The length of the host part of a `Host` value (`host[:port]`), or `None` when the value is
/// not one: an IP-literal in brackets, or a name of letters, digits, `-`, `.`, `_`, `~` (RFC 3986
/// reg-name without percent-encoding and sub-delimiters, which no real host needs), then an
/// optional `:` and up to 5 digits.
fn host_len(value: &[u8]) -> Option<usize> {
    let host_len = if value.first() == Some(&b'[') {
        let close = value.iter().position(|&b| b == b']')?;
        let inside = value.get(1..close)?;
        let ok = !inside.is_empty()
            && inside
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        ok.then_some(close + 1)?
    } else {
        let len = value.iter().position(|&b| b == b':').unwrap_or(value.len());
        let name = value.get(..len)?;
        let ok = !name.is_empty()
            && name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        ok.then_some(len)?
    };
    match value.get(host_len..)? {
        [] => Some(host_len),
        [b':', port @ ..] if port.len() <= 5 && port.iter().all(u8::is_ascii_digit) => {
            Some(host_len)
        }
        _ => None,
    }
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

fn malformed(reason: &'static str) -> HandshakeError {
    HandshakeError::Malformed { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &[u8]) -> Result<Request, HandshakeError> {
        parse_request(Bytes::copy_from_slice(head), 100)
    }

    fn reason(head: &[u8]) -> &'static str {
        match parse(head) {
            Err(HandshakeError::Malformed { reason }) => reason,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(head)),
        }
    }

    #[test]
    fn accessors() {
        let head = b"GET /chat/room?x=1&y HTTP/1.1\r\nHost: Chat.Example.com:8080\r\n\
            Upgrade: websocket\r\nX-Empty:\r\nX-Spaces: \t a b \t\r\nupgrade: other\r\n\r\n";
        let req = parse(head).expect("valid");
        assert_eq!(req.method(), "GET");
        assert_eq!(req.target(), "/chat/room?x=1&y");
        assert_eq!(req.path(), "/chat/room");
        assert_eq!(req.query(), Some("x=1&y"));
        assert_eq!(req.host(), Some("Chat.Example.com"));
        assert_eq!(req.host_field(), Some(&b"Chat.Example.com:8080"[..]));
        assert_eq!(req.version(), 1);
        assert_eq!(req.header("UPGRADE"), Some(&b"websocket"[..]));
        assert_eq!(
            req.header_values("upgrade").collect::<Vec<_>>(),
            [&b"websocket"[..], b"other"]
        );
        assert_eq!(req.header("x-empty"), Some(&b""[..]));
        assert_eq!(req.header("x-spaces"), Some(&b"a b"[..]));
        assert_eq!(req.header("missing"), None);
        assert_eq!(req.headers().count(), 5);
        assert_eq!(
            req.headers().next(),
            Some(("Host", &b"Chat.Example.com:8080"[..]))
        );
        assert_eq!(req.head_bytes(), head);
        assert_eq!(
            req.request_line_bytes(),
            b"GET /chat/room?x=1&y HTTP/1.1\r\n"
        );
        assert_eq!(req.content_length(), None);
        assert!(!req.has_transfer_encoding());
    }

    #[test]
    fn debug_hides_values() {
        let req = parse(b"GET /a?token=s3cret HTTP/1.1\r\nHost: h\r\nCookie: id=s3cret\r\n\r\n")
            .expect("valid");
        let shown = format!("{req:?}");
        assert!(shown.contains("/a") && !shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn query_forms() {
        let req = parse(b"GET /a? HTTP/1.1\r\nHost: h\r\n\r\n").expect("valid");
        assert_eq!((req.path(), req.query()), ("/a", Some("")));
        let req = parse(b"GET /?a?b HTTP/1.1\r\nHost: h\r\n\r\n").expect("valid");
        assert_eq!((req.path(), req.query()), ("/", Some("a?b")));
        let req = parse(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").expect("valid");
        assert_eq!((req.path(), req.query()), ("/", None));
    }

    #[test]
    fn absolute_form_routes_by_its_authority() {
        let req = parse(b"GET http://h.example:81/ws?t=1 HTTP/1.1\r\nHost: H.example:81\r\n\r\n")
            .expect("valid");
        assert_eq!(req.path(), "/ws");
        assert_eq!(req.query(), Some("t=1"));
        assert_eq!(req.host(), Some("H.example"));
        let req = parse(b"GET HTTPS://h HTTP/1.1\r\nHost: h\r\n\r\n").expect("valid");
        assert_eq!(req.path(), "/");
        let req = parse(b"GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n").expect("valid");
        assert_eq!((req.path(), req.query()), ("/", Some("q")));
        assert_eq!(
            reason(b"GET http://other/ HTTP/1.1\r\nHost: h\r\n\r\n"),
            "Host differs from the request target's authority"
        );
        assert_eq!(
            reason(b"GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n"),
            "userinfo in request target"
        );
        assert_eq!(
            reason(b"GET http:/// HTTP/1.1\r\nHost: h\r\n\r\n"),
            "Host differs from the request target's authority"
        );
    }

    #[test]
    fn hosts() {
        for (value, host) in [
            ("a", "a"),
            ("a.b-c_d~e", "a.b-c_d~e"),
            ("a:", "a"),
            ("a:65535", "a"),
            ("[::1]", "[::1]"),
            ("[::ffff:1.2.3.4]:8080", "[::ffff:1.2.3.4]"),
            ("10.0.0.1:80", "10.0.0.1"),
        ] {
            let head = format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n");
            assert_eq!(parse(head.as_bytes()).expect(value).host(), Some(host));
        }
        for value in [
            "", ":80", "a:123456", "a:8x", "a b", "a,b", "a%2eb", "[]", "[::1", "[::1]x", "[g::]",
            "a@b", "a/b", "\u{e9}",
        ] {
            let head = format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n");
            assert!(parse(head.as_bytes()).is_err(), "{value:?}");
        }
    }

    #[test]
    fn http10_without_host_is_valid() {
        let req = parse(b"GET / HTTP/1.0\r\n\r\n").expect("valid");
        assert_eq!(req.version(), 0);
        assert_eq!(req.host(), None);
        assert_eq!(reason(b"GET / HTTP/1.1\r\n\r\n"), "missing Host");
    }

    #[test]
    fn framing() {
        let req = parse(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n").expect("ok");
        assert_eq!(req.content_length(), Some(5));
        let req = parse(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .expect("ok");
        assert!(req.has_transfer_encoding());
        let req = parse(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .expect("ok");
        assert!(req.has_transfer_encoding());
        assert_eq!(
            reason(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            "Transfer-Encoding does not end with chunked exactly once"
        );
        assert_eq!(
            reason(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
            "Transfer-Encoding does not end with chunked exactly once"
        );
        assert_eq!(
            reason(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n"),
            "Transfer-Encoding does not end with chunked exactly once"
        );
    }

    #[test]
    fn too_many_headers_is_431_before_any_parsing() {
        let mut head = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for _ in 0..3 {
            head.extend_from_slice(b"A: b\r\n");
        }
        head.extend_from_slice(b"\r\n");
        assert!(parse_request(Bytes::copy_from_slice(&head), 4).is_ok());
        assert!(matches!(
            parse_request(Bytes::from(head), 3),
            Err(HandshakeError::TooManyHeaders { limit: 3 })
        ));
    }

    #[test]
    fn many_headers_use_the_heap_scratch() {
        let mut head = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..80 {
            head.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let req = parse(&head).expect("valid");
        assert_eq!(req.header("x-79"), Some(&b"79"[..]));
    }

    #[test]
    fn versions() {
        assert!(matches!(
            parse(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n"),
            Err(HandshakeError::HttpVersionNotSupported)
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.2\r\nHost: h\r\n\r\n"),
            Err(HandshakeError::HttpVersionNotSupported)
        ));
        assert!(matches!(
            parse(b"GET / HTTP/3\r\nHost: h\r\n\r\n"),
            Err(HandshakeError::HttpVersionNotSupported)
        ));
        assert_eq!(
            reason(b"GET / HTTX/1.1\r\nHost: h\r\n\r\n"),
            "invalid HTTP version"
        );
        assert_eq!(
            reason(b"GET / http/1.1\r\nHost: h\r\n\r\n"),
            "invalid HTTP version"
        );
    }

    #[test]
    fn a_head_must_be_exactly_one_head() {
        assert_eq!(reason(b"GET / HTTP/1.1\r\nHost: h\r\n"), "incomplete head");
        assert_eq!(
            reason(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
            "bytes after the end of the head"
        );
        assert_eq!(reason(b""), "incomplete head");
    }
}
