//! Fuzzes the L7 act's input side: the incremental head reader (split at fuzzer-chosen points),
//! the strict request parser, the WebSocket classifier, the router with its Origin allow-lists,
//! and the error answers. Properties checked on every input, besides "never panics":
//!
//! - the reader, fed in chunks, finds the same head as the parser given the bytes whole;
//! - every refusal has exactly one answer, and it is a well-formed status line.
#![no_main]

use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sluice_handshake::{Router, classify, error_response, parse_request, read_request_head};
use tokio::io::{AsyncRead, ReadBuf};

const MAX_HEAD_BYTES: usize = 8192;
const MAX_HEADERS: usize = 100;

/// Routes that use every matcher: hosts exact and wildcard, paths, headers, Origin lists.
const CONFIG: &str = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"
unknown_host_status = 421

[[routes]]
listener = "public"
host = "chat.example.com"
path_prefix = "/chat"
headers = [{ name = "X-Tenant", value = "blue" }]
allowed_origins = ["https://chat.example.com", "https://*.example.com", "http://localhost:3000", "null"]
pool = "a"

[[routes]]
listener = "public"
host = "*.example.org"
path_exact = "/ws"
allowed_origins = []
allow_missing_origin = true
pool = "b"

[[routes]]
listener = "public"
host = "api.example.net"
headers = [{ name = "X-Beta" }]
pool = "a"

[pools.a]
backends = ["127.0.0.1:9001"]

[pools.b]
backends = ["127.0.0.1:9002"]
"#;

static ROUTER: LazyLock<Router> = LazyLock::new(|| {
    let config = sluice_config::parse(CONFIG, "fuzz.toml").expect("the fuzz config is valid");
    let pools: Vec<String> = config.pools.iter().map(|p| p.name.clone()).collect();
    Router::new(
        config.routes_for("public"),
        |name| pools.iter().position(|p| p == name),
        421,
    )
});

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
});

fuzz_target!(|data: &[u8]| {
    // The reader gets the input in chunks of 1 to 61 bytes, the size drawn from the input's
    // length (so the seeds stay plain requests and every size is explored).
    let whole = check_parse(Bytes::copy_from_slice(data));

    let mut reader = Chunks {
        data,
        chunk: data.len() % 61 + 1,
    };
    let mut buf = BytesMut::new();
    let read = RUNTIME.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        read_request_head(&mut reader, &mut buf, MAX_HEAD_BYTES, deadline).await
    });
    match read {
        Ok(len) => {
            assert!(len <= buf.len() && len <= MAX_HEAD_BYTES);
            let head = buf.split_to(len).freeze();
            // A head the reader delimited parses exactly as the same bytes given whole, when
            // they are the whole input.
            let chunked = check_parse(head);
            if len == data.len() {
                assert_eq!(chunked, whole, "chunked and whole parses differ");
            }
        }
        Err(e) => {
            answer_is_well_formed(&e);
        }
    }
});

/// Parses, classifies and routes one complete head; returns a summary to compare runs by.
fn check_parse(head: Bytes) -> Result<(String, Option<usize>), u16> {
    match parse_request(head, MAX_HEADERS) {
        Ok(request) => {
            let kind = match classify(&request) {
                Ok(kind) => format!("{kind:?}"),
                Err(e) => return Err(answer_is_well_formed(&e)),
            };
            let routed = match ROUTER.route(&request) {
                Ok(pool) => Some(pool),
                Err(e) => {
                    answer_is_well_formed(&e);
                    None
                }
            };
            Ok((kind, routed))
        }
        Err(e) => Err(answer_is_well_formed(&e)),
    }
}

/// The status of `e`'s answer (0: closed without one), after checking the answer's shape.
fn answer_is_well_formed(e: &sluice_handshake::HandshakeError) -> u16 {
    let Some(status) = e.status() else {
        assert!(error_response(e).is_none());
        return 0;
    };
    let answer = error_response(e).expect("a status has an answer");
    let line = format!("HTTP/1.1 {status} ");
    assert!(answer.starts_with(line.as_bytes()));
    assert!(answer.windows(4).any(|w| w == b"\r\n\r\n"));
    status
}

/// Hands out `data` at most `chunk` bytes per read, then EOF.
struct Chunks<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunks<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}
