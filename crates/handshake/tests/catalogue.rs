//! The L7 act through its public API, the way the proxy chains it: read → split → parse →
//! classify. A catalogue of malformed and hostile heads, each mapped to the status the client
//! gets, and property tests that the way bytes are split across reads never changes the result.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;
use sluice_handshake::{
    HandshakeError, RequestKind, classify, error_response, parse_request, read_request_head,
};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::time::Instant;

const MAX_HEAD: usize = 4096;
const MAX_HEADERS: usize = 16;
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Serves its chunks one read at a time, then EOF.
struct Chunks {
    chunks: Vec<Vec<u8>>,
    next: usize,
    offset: usize,
}

impl Chunks {
    fn new(chunks: Vec<Vec<u8>>) -> Self {
        Self {
            chunks,
            next: 0,
            offset: 0,
        }
    }

    fn split_at(bytes: &[u8], cuts: &[usize]) -> Self {
        let mut chunks = Vec::new();
        let mut start = 0;
        for &cut in cuts {
            let cut = cut.clamp(start, bytes.len());
            chunks.push(bytes[start..cut].to_vec());
            start = cut;
        }
        chunks.push(bytes[start..].to_vec());
        chunks.retain(|c| !c.is_empty());
        Self::new(chunks)
    }
}

impl AsyncRead for Chunks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(chunk) = this.chunks.get(this.next) {
            let rest = &chunk[this.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            if this.offset == chunk.len() {
                this.next += 1;
                this.offset = 0;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// What the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// A valid WebSocket handshake, with the accept key and the client's bytes after its head.
    Upgrade { accept: String, early: Vec<u8> },
    /// Answered with this status.
    Status(u16),
    /// Closed without an answer.
    Closed,
}

async fn outcome_of(mut io: Chunks) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = BytesMut::new();
    let result = async {
        let len = read_request_head(&mut io, &mut buf, MAX_HEAD, deadline).await?;
        let early = buf.split_off(len);
        let request = parse_request(buf.split().freeze(), MAX_HEADERS)?;
        match classify(&request)? {
            RequestKind::WebSocket(upgrade) => Ok((upgrade, early)),
            RequestKind::Plain => Err(HandshakeError::NotUpgrade),
        }
    }
    .await;
    match result {
        Ok((upgrade, early)) => {
            // What the reader left in the buffer, then what the relay would read next: the
            // client's bytes after its head, in order, however they were split.
            let mut early = early.to_vec();
            io.read_to_end(&mut early).await.expect("in-memory reads");
            Outcome::Upgrade {
                accept: upgrade.accept(),
                early,
            }
        }
        Err(err) => {
            // The status and the answer must agree.
            match (err.status(), error_response(&err)) {
                (Some(status), Some(answer)) => {
                    let line = format!("HTTP/1.1 {status} ");
                    assert!(answer.starts_with(line.as_bytes()), "{err:?}");
                    Outcome::Status(status)
                }
                (None, None) => Outcome::Closed,
                other => panic!("status and answer disagree for {err:?}: {other:?}"),
            }
        }
    }
}

fn outcome(bytes: &[u8]) -> Outcome {
    tokio_test::block_on(outcome_of(Chunks::new(vec![bytes.to_vec()])))
}

fn ws_head(request_line: &str, extra: &str) -> String {
    format!(
        "{request_line}\r\nHost: chat.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

fn ws(extra: &str) -> String {
    ws_head("GET /chat HTTP/1.1", extra)
}

/// A valid handshake with one line replaced (first occurrence).
fn ws_with(from: &str, to: &str) -> String {
    let valid = ws("");
    assert!(valid.contains(from), "{from}");
    valid.replacen(from, to, 1)
}

#[test]
fn valid_handshakes_upgrade() {
    let valid = [
        ws(""),
        ws("Origin: https://chat.example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n"),
        ws_with("Upgrade: websocket", "Upgrade: h2c, WebSocket"),
        ws_with(
            "Connection: Upgrade",
            "Connection: keep-alive\r\nConnection: upgrade",
        ),
        ws_with("Upgrade: websocket", "Upgrade: foo\r\nupgrade: websocket"),
        ws("Content-Length: 0\r\n"),
        ws_head("GET http://chat.example.com/chat HTTP/1.1", ""),
        ws_with("Host: chat.example.com", "Host: [2001:db8::1]:8443"),
        ws("X-Opaque: caf\u{e9}\r\n"),
    ];
    for head in valid {
        assert!(
            matches!(outcome(head.as_bytes()), Outcome::Upgrade { .. }),
            "{head:?}"
        );
    }
}

#[test]
fn catalogue_of_hostile_heads() {
    let many_headers: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
    let huge = format!("X-Big: {}\r\n", "a".repeat(MAX_HEAD));
    let cases: Vec<(&str, Vec<u8>, Outcome)> = vec![
        // Line endings.
        ("bare LF everywhere", ws("").replace("\r\n", "\n").into(), Outcome::Status(400)),
        ("bare LF on one line", ws_with("Upgrade: websocket\r\n", "Upgrade: websocket\n").into(), Outcome::Status(400)),
        ("bare LF ends the head", ws("").replacen("\r\n\r\n", "\r\n\n", 1).into(), Outcome::Status(400)),
        ("bare CR inside a value", ws("X-A: a\rb\r\n").into(), Outcome::Status(400)),
        ("NUL inside a value", ws("X-A: a\0b\r\n").into(), Outcome::Status(400)),
        ("empty line before the request line", format!("\r\n{}", ws("")).into(), Outcome::Status(400)),
        ("only an empty line", b"\r\n".to_vec(), Outcome::Status(400)),
        // Field syntax.
        ("obs-fold", ws("X-A: a\r\n b\r\n").into(), Outcome::Status(400)),
        ("obs-fold with a tab", ws("X-A: a\r\n\tb\r\n").into(), Outcome::Status(400)),
        ("whitespace before the first field", ws_with("\r\nHost:", "\r\n Host:").into(), Outcome::Status(400)),
        ("space between name and colon", ws_with("Host:", "Host :").into(), Outcome::Status(400)),
        ("tab between name and colon", ws("X-A\t: b\r\n").into(), Outcome::Status(400)),
        ("empty header name", ws(": b\r\n").into(), Outcome::Status(400)),
        ("non-token header name", ws("X(A): b\r\n").into(), Outcome::Status(400)),
        ("non-ASCII header name", ws("X-\u{e9}: b\r\n").into(), Outcome::Status(400)),
        ("field line without a colon", ws("X-A b\r\n").into(), Outcome::Status(400)),
        ("control character in a value", ws("X-A: a\x01b\r\n").into(), Outcome::Status(400)),
        ("DEL in a value", ws("X-A: a\x7fb\r\n").into(), Outcome::Status(400)),
        // Request line.
        ("tab as a delimiter", ws_head("GET\t/chat HTTP/1.1", "").into(), Outcome::Status(400)),
        ("two spaces after the method", ws_head("GET  /chat HTTP/1.1", "").into(), Outcome::Status(400)),
        ("space inside the target", ws_head("GET /ch at HTTP/1.1", "").into(), Outcome::Status(400)),
        ("trailing space after the version", ws_head("GET /chat HTTP/1.1 ", "").into(), Outcome::Status(400)),
        ("non-token method", ws_head("G(T /chat HTTP/1.1", "").into(), Outcome::Status(400)),
        ("non-ASCII in the target", ws_head("GET /caf\u{e9} HTTP/1.1", "").into(), Outcome::Status(400)),
        ("fragment in the target", ws_head("GET /chat#top HTTP/1.1", "").into(), Outcome::Status(400)),
        ("asterisk-form", ws_head("OPTIONS * HTTP/1.1", "").into(), Outcome::Status(400)),
        ("authority-form", ws_head("CONNECT chat.example.com:443 HTTP/1.1", "").into(), Outcome::Status(400)),
        ("relative target", ws_head("GET chat HTTP/1.1", "").into(), Outcome::Status(400)),
        ("absolute-form with another host", ws_head("GET http://evil.example/chat HTTP/1.1", "").into(), Outcome::Status(400)),
        ("absolute-form with userinfo", ws_head("GET http://u:p@chat.example.com/ HTTP/1.1", "").into(), Outcome::Status(400)),
        ("lowercase version", ws_head("GET /chat http/1.1", "").into(), Outcome::Status(400)),
        ("garbage version", ws_head("GET /chat HTTP/1.x", "").into(), Outcome::Status(400)),
        ("HTTP/2.0", ws_head("GET /chat HTTP/2.0", "").into(), Outcome::Status(505)),
        ("HTTP/0.9 style", b"GET /chat\r\n\r\n".to_vec(), Outcome::Status(400)),
        // Host.
        ("missing Host", ws_with("Host: chat.example.com\r\n", "").into(), Outcome::Status(400)),
        ("duplicate Host", ws("Host: chat.example.com\r\n").into(), Outcome::Status(400)),
        ("duplicate Host, other case", ws("host: other.example\r\n").into(), Outcome::Status(400)),
        ("empty Host", ws_with("Host: chat.example.com", "Host: ").into(), Outcome::Status(400)),
        ("Host with userinfo", ws_with("Host: chat.example.com", "Host: u@chat.example.com").into(), Outcome::Status(400)),
        ("Host with a path", ws_with("Host: chat.example.com", "Host: chat.example.com/x").into(), Outcome::Status(400)),
        ("Host with a bad port", ws_with("Host: chat.example.com", "Host: chat.example.com:80x").into(), Outcome::Status(400)),
        ("Host list", ws_with("Host: chat.example.com", "Host: a.example, b.example").into(), Outcome::Status(400)),
        // Body framing (smuggling shapes).
        ("CL and TE", ws("Content-Length: 0\r\nTransfer-Encoding: chunked\r\n").into(), Outcome::Status(400)),
        ("duplicate CL, same value", ws("Content-Length: 0\r\nContent-Length: 0\r\n").into(), Outcome::Status(400)),
        ("CL as a list", ws("Content-Length: 0, 0\r\n").into(), Outcome::Status(400)),
        ("non-numeric CL", ws("Content-Length: abc\r\n").into(), Outcome::Status(400)),
        ("signed CL", ws("Content-Length: +0\r\n").into(), Outcome::Status(400)),
        ("CL overflowing u64", ws("Content-Length: 99999999999999999999\r\n").into(), Outcome::Status(400)),
        ("TE not ending in chunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n".to_vec(), Outcome::Status(400)),
        ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), Outcome::Status(400)),
        ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), Outcome::Status(400)),
        ("TE with a bad coding name", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n".to_vec(), Outcome::Status(400)),
        // WebSocket handshake.
        ("upgrade with a chunked body", ws("Transfer-Encoding: chunked\r\n").into(), Outcome::Status(400)),
        ("upgrade with a body", ws("Content-Length: 5\r\n").into(), Outcome::Status(400)),
        ("upgrade over HTTP/1.0", ws_head("GET /chat HTTP/1.0", "").into(), Outcome::Status(400)),
        ("upgrade with POST", ws_head("POST /chat HTTP/1.1", "").into(), Outcome::Status(405)),
        ("upgrade with lowercase get", ws_head("get /chat HTTP/1.1", "").into(), Outcome::Status(405)),
        ("Upgrade without Connection: upgrade", ws_with("Connection: Upgrade", "Connection: keep-alive").into(), Outcome::Status(400)),
        ("Connection: upgrade as a substring", ws_with("Connection: Upgrade", "Connection: upgraded").into(), Outcome::Status(400)),
        ("Sec-WebSocket-Version 8", ws_with("Version: 13", "Version: 8").into(), Outcome::Status(426)),
        ("Sec-WebSocket-Version missing", ws_with("Sec-WebSocket-Version: 13\r\n", "").into(), Outcome::Status(426)),
        ("Sec-WebSocket-Version twice", ws("Sec-WebSocket-Version: 13\r\n").into(), Outcome::Status(426)),
        ("Sec-WebSocket-Version as a list", ws_with("Version: 13", "Version: 13, 8").into(), Outcome::Status(426)),
        ("key missing", ws_with(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "").into(), Outcome::Status(400)),
        ("key twice", ws(&format!("Sec-WebSocket-Key: {KEY}\r\n")).into(), Outcome::Status(400)),
        ("key too short", ws_with(KEY, "dGhlIHNhbXBsZQ==").into(), Outcome::Status(400)),
        ("key not base64", ws_with(KEY, "dGhlIHNhbXBsZSBub25jZQ!!").into(), Outcome::Status(400)),
        ("key unpadded", ws_with(KEY, "dGhlIHNhbXBsZSBub25jZQ").into(), Outcome::Status(400)),
        // Plain requests are not proxied yet.
        ("plain GET", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), Outcome::Status(426)),
        ("plain HTTP/1.0 GET", b"GET / HTTP/1.0\r\n\r\n".to_vec(), Outcome::Status(426)),
        ("Upgrade to another protocol", b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n".to_vec(), Outcome::Status(426)),
        // Sizes.
        ("too many header fields", ws(&many_headers).into(), Outcome::Status(431)),
        ("head too large", ws(&huge).into(), Outcome::Status(431)),
        ("endless request line", vec![b'A'; MAX_HEAD + 10], Outcome::Status(431)),
        // Gone.
        ("EOF mid-head", ws("").as_bytes()[..40].to_vec(), Outcome::Closed),
        ("EOF at once", Vec::new(), Outcome::Closed),
    ];
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for (name, head, expected) in &cases {
        let got = outcome(head);
        if &got != expected {
            failures.push(format!("{name}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn early_bytes_survive_the_pipeline() {
    let mut bytes = ws("").into_bytes();
    bytes.extend_from_slice(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
    match outcome(&bytes) {
        Outcome::Upgrade { accept, early } => {
            assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
            assert_eq!(early, b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
        }
        other => panic!("{other:?}"),
    }
}

/// A valid handshake with generated path, host, case and extra fields.
fn valid_head() -> impl Strategy<Value = String> {
    let path = "/[a-z0-9_/.-]{0,30}(\\?[a-z0-9=&]{0,20})?";
    let host = "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5}){0,2}(:[0-9]{1,5})?";
    let extra = proptest::collection::vec(("X-[A-Za-z0-9-]{1,12}", "[ -~]{0,40}"), 0..6);
    (path, host, extra, any::<bool>()).prop_map(|(path, host, extra, shout)| {
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (name, value) in extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let upgrade = if shout { "UPGRADE: WebSocket" } else { "Upgrade: websocket" };
        head.push_str(&format!(
            "{upgrade}\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ));
        head
    })
}

proptest! {
    /// Every single split point, and every set of split points, reads to the same outcome as
    /// the unsplit bytes, early bytes included.
    #[test]
    fn splits_never_change_the_outcome(
        head in valid_head(),
        early in proptest::collection::vec(any::<u8>(), 0..16),
        cuts in proptest::collection::vec(0usize..400, 0..12),
    ) {
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&early);
        let whole = outcome(&bytes);
        prop_assert!(matches!(&whole, Outcome::Upgrade { early: e, .. } if *e == early), "{whole:?}");
        for cut in 0..=bytes.len() {
            let split = tokio_test::block_on(outcome_of(Chunks::split_at(&bytes, &[cut])));
            prop_assert_eq!(&split, &whole, "split at {}", cut);
        }
        let mut cuts = cuts;
        cuts.sort_unstable();
        let split = tokio_test::block_on(outcome_of(Chunks::split_at(&bytes, &cuts)));
        prop_assert_eq!(&split, &whole);
        let bytewise: Vec<Vec<u8>> = bytes.iter().map(|b| vec![*b]).collect();
        let split = tokio_test::block_on(outcome_of(Chunks::new(bytewise)));
        prop_assert_eq!(&split, &whole);
    }

    /// Arbitrary bytes never panic, and whatever is refused is refused the same however split.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        cut in 0usize..300,
    ) {
        let whole = outcome(&bytes);
        let split = tokio_test::block_on(outcome_of(Chunks::split_at(&bytes, &[cut])));
        prop_assert_eq!(split, whole);
    }

    /// Mutating one byte of a valid head never panics and never yields an answer other than
    /// the upgrade or one of the documented statuses.
    #[test]
    fn one_byte_mutations_are_upgrade_or_refused(
        head in valid_head(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = head.into_bytes();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        match outcome(&bytes) {
            Outcome::Upgrade { .. } | Outcome::Closed => {}
            Outcome::Status(status) => prop_assert!(
                [400, 405, 426, 431, 505].contains(&status),
                "status {}", status
            ),
        }
    }
}

/// A router with an Origin allow-list on `/chat` (pool 0) and a catch-all without (pool 1).
fn origin_router() -> sluice_handshake::Router {
    let config = sluice_config::parse(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[routes]]
listener = "public"
path_prefix = "/chat"
allowed_origins = ["https://chat.example.com", "https://*.example.org"]
allow_missing_origin = false
pool = "a"

[[routes]]
listener = "public"
pool = "b"

[pools.a]
backends = ["127.0.0.1:9001"]

[pools.b]
backends = ["127.0.0.1:9002"]
"#,
        "t.toml",
    )
    .expect("valid config");
    sluice_handshake::Router::new(
        config.routes_for("public"),
        |name| ["a", "b"].iter().position(|p| *p == name),
        404,
    )
}

/// Reads, parses and routes: the pool, or the status answered.
async fn routed(router: &sluice_handshake::Router, mut io: Chunks) -> Result<usize, Outcome> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = BytesMut::new();
    let result = async {
        let len = read_request_head(&mut io, &mut buf, MAX_HEAD, deadline).await?;
        let request = parse_request(buf.split_to(len).freeze(), MAX_HEADERS)?;
        classify(&request)?;
        router.route(&request)
    }
    .await;
    result.map_err(|e| e.status().map_or(Outcome::Closed, Outcome::Status))
}

proptest! {
    /// The Origin check decides the same however the head is split, never panics whatever the
    /// field holds, and a wildcard matches one or more labels on its scheme and default port.
    #[test]
    fn origin_checks_are_split_invariant_and_match_wildcards(
        label in "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]{1,5}){0,2}",
        port in prop::option::of(0u32..70_000),
        junk in "[ -~]{0,40}",
        cuts in proptest::collection::vec(0usize..300, 0..8),
    ) {
        let router = origin_router();
        let head = |origin: &str| ws_head("GET /chat HTTP/1.1", &format!("Origin: {origin}\r\n")).into_bytes();
        let port_text = port.map_or(String::new(), |p| format!(":{p}"));
        let wildcard = head(&format!("https://{label}.example.org{port_text}"));
        let whole = tokio_test::block_on(routed(&router, Chunks::new(vec![wildcard.clone()])));
        let expected = if matches!(port, None | Some(443)) { Ok(0) } else { Err(Outcome::Status(403)) };
        prop_assert_eq!(&whole, &expected);
        let split = tokio_test::block_on(routed(&router, Chunks::split_at(&wildcard, &cuts)));
        prop_assert_eq!(&split, &whole);
        // The bare domain and a look-alike never match.
        for origin in ["https://example.org".to_owned(), format!("https://{label}example.org")] {
            let got = tokio_test::block_on(routed(&router, Chunks::new(vec![head(&origin)])));
            prop_assert_eq!(got, Err(Outcome::Status(403)));
        }
        // Arbitrary printable values: refused or allowed, never a panic, the same when split.
        let junk_head = head(junk.trim());
        let whole = tokio_test::block_on(routed(&router, Chunks::new(vec![junk_head.clone()])));
        let split = tokio_test::block_on(routed(&router, Chunks::split_at(&junk_head, &cuts)));
        prop_assert_eq!(split, whole);
    }
}
