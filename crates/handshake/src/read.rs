//! Reading a head off a socket: bounded bytes, bounded time, one pass over each byte.
//!
//! The end of a head is the first empty line (RFC 9112 §2.1). [`HeadScanner`] finds it
//! incrementally (each byte is looked at once, however the head is split across reads) and
//! refuses the line-ending shapes a proxy must never pass on: a bare LF (httparse would accept
//! it as a line end, a backend might not), a bare CR, and NUL.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::error::HandshakeError;
use crate::response::{ResponseHead, parse_response_head};

/// Reads from `io` into `buf` until a complete request head (through the blank line) is present,
/// and returns its length.
///
/// Bytes already in `buf` count (e.g. replayed after a PROXY header). Bytes after the head that
/// the client already sent stay in `buf[head_len..]`; nothing past `max_head_bytes` is read.
///
/// Errors: [`HandshakeError::HeadTooLarge`] when no head ends within `max_head_bytes`;
/// [`HandshakeError::HeadTimeout`] at `deadline`, however the bytes trickle in;
/// [`HandshakeError::ClientClosed`] on EOF before a full head; [`HandshakeError::Malformed`] as
/// soon as a bare LF, bare CR or NUL arrives (no need to wait for the rest).
pub async fn read_request_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max_head_bytes: usize,
    deadline: Instant,
) -> Result<usize, HandshakeError> {
    let result = read_head(io, buf, max_head_bytes, deadline).await;
    result.map_err(|e| match e {
        ReadError::Closed => HandshakeError::ClientClosed,
        ReadError::Io(source) => HandshakeError::ClientIo { source },
        ReadError::Timeout => HandshakeError::HeadTimeout {
            received: buf.len(),
        },
        ReadError::TooLarge => HandshakeError::HeadTooLarge {
            limit: max_head_bytes,
        },
        ReadError::Invalid(reason) => HandshakeError::Malformed { reason },
    })
}

/// Reads a backend's response head into `buf` (same limit and deadline behaviour as
/// [`read_request_head`]) and parses its status line and the fields sluice needs.
///
/// Errors are backend-side: [`HandshakeError::BackendResponseTimeout`],
/// [`HandshakeError::BackendClosed`], [`HandshakeError::BackendIo`] and
/// [`HandshakeError::BadBackendResponse`] (malformed, ambiguous framing, or larger than
/// `max_head_bytes`). They carry no backend address: add it with
/// [`HandshakeError::with_backend`].
///
/// An interim response (1xx other than 101, [`ResponseHead::is_interim`]) is returned like any
/// other: relay it, drop `head_len` bytes from `buf` and call again for the final one.
pub async fn read_response_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max_head_bytes: usize,
    deadline: Instant,
) -> Result<ResponseHead, HandshakeError> {
    let head_len = match read_head(io, buf, max_head_bytes, deadline).await {
        Ok(len) => len,
        Err(e) => {
            return Err(match e {
                ReadError::Closed => HandshakeError::BackendClosed { backend: None },
                ReadError::Io(source) => HandshakeError::BackendIo {
                    backend: None,
                    source,
                },
                ReadError::Timeout => HandshakeError::BackendResponseTimeout { backend: None },
                ReadError::TooLarge => HandshakeError::BadBackendResponse {
                    backend: None,
                    reason: "response head too large",
                },
                ReadError::Invalid(reason) => HandshakeError::BadBackendResponse {
                    backend: None,
                    reason,
                },
            });
        }
    };
    let head = buf.get(..head_len).unwrap_or_default();
    parse_response_head(head).map_err(|reason| HandshakeError::BadBackendResponse {
        backend: None,
        reason,
    })
}

/// Why [`read_head`] stopped; the public readers map it to their side.
#[derive(Debug)]
enum ReadError {
    Closed,
    Io(std::io::Error),
    Timeout,
    TooLarge,
    Invalid(&'static str),
}

/// The first read reserves this much (or the limit, if smaller); the buffer doubles from there
/// only for heads that need it.
const FIRST_READ: usize = 2048;

async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max_head_bytes: usize,
    deadline: Instant,
) -> Result<usize, ReadError> {
    let mut scanner = HeadScanner::default();
    let reading = async {
        loop {
            let window = buf.get(..buf.len().min(max_head_bytes)).unwrap_or_default();
            match scanner.scan(window) {
                Scan::Complete(len) => return Ok(len),
                Scan::Invalid(reason) => return Err(ReadError::Invalid(reason)),
                Scan::Partial => {}
            }
            let room = max_head_bytes.saturating_sub(buf.len());
            if room == 0 {
                return Err(ReadError::TooLarge);
            }
            if buf.capacity() == buf.len() {
                buf.reserve(room.min(buf.len().max(FIRST_READ)));
            }
            match io.read_buf(&mut (&mut *buf).limit(room)).await {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    };
    // `timeout_at` polls `reading` before the timer: a head already complete is never timed out.
    tokio::time::timeout_at(deadline, reading)
        .await
        .unwrap_or(Err(ReadError::Timeout))
}

/// Finds the end of a head across reads, validating line endings as it goes.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeadScanner {
    /// Bytes of the buffer already looked at.
    pos: usize,
    /// The previous byte was a CR (an LF must follow).
    after_cr: bool,
    /// The current line has content (so CRLF ends the line, not the head).
    line_has_content: bool,
}

/// What [`HeadScanner::scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// The head ends here: its length, blank line included.
    Complete(usize),
    /// Not enough bytes yet.
    Partial,
    /// The bytes cannot be a valid head.
    Invalid(&'static str),
}

impl HeadScanner {
    /// Looks at the bytes of `buf` not seen by earlier calls (`buf` must be the same buffer,
    /// grown only at its end).
    pub(crate) fn scan(&mut self, buf: &[u8]) -> Scan {
        let Some(mut new) = buf.get(self.pos..) else {
            return Scan::Partial;
        };
        loop {
            if self.after_cr {
                let Some((&byte, rest)) = new.split_first() else {
                    return Scan::Partial;
                };
                self.pos += 1;
                new = rest;
                if byte != b'\n' {
                    return Scan::Invalid("bare CR in head");
                }
                self.after_cr = false;
                if !self.line_has_content {
                    return Scan::Complete(self.pos);
                }
                self.line_has_content = false;
                continue;
            }
            // Every other byte is line content: skip to the next CR, LF or NUL at once
            // (memchr looks at many bytes per instruction; a head is mostly content).
            let Some(at) = memchr::memchr3(b'\r', b'\n', 0, new) else {
                self.line_has_content |= !new.is_empty();
                self.pos += new.len();
                return Scan::Partial;
            };
            self.line_has_content |= at > 0;
            self.pos += at + 1;
            match new.get(at..).and_then(<[u8]>::split_first) {
                Some((b'\r', rest)) => {
                    self.after_cr = true;
                    new = rest;
                }
                Some((b'\n', _)) => return Scan::Invalid("bare LF in head"),
                _ => return Scan::Invalid("NUL in head"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, ready};
    use std::time::Duration;

    use tokio::io::ReadBuf;
    use tokio_test::io::Builder;

    use super::*;

    const HEAD: &[u8] = b"GET /chat HTTP/1.1\r\nHost: a.example\r\n\r\n";

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn scanner_finds_the_end_once_across_splits() {
        for split in 0..=HEAD.len() {
            let mut scanner = HeadScanner::default();
            let (a, _) = HEAD.split_at(split);
            let first = scanner.scan(a);
            if split < HEAD.len() {
                assert_eq!(first, Scan::Partial, "split {split}");
                assert_eq!(scanner.scan(HEAD), Scan::Complete(HEAD.len()));
            } else {
                assert_eq!(first, Scan::Complete(HEAD.len()));
            }
        }
    }

    #[test]
    fn scanner_rejects_bad_line_endings() {
        let cases: &[(&[u8], &str)] = &[
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", "bare LF in head"),
            (b"GET / HTTP/1.1\r\nHost: a\n\n", "bare LF in head"),
            (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", "bare CR in head"),
            (b"GET / HTTP/1.1\r\nHost: a\0\r\n\r\n", "NUL in head"),
            (b"GET / HTTP/1.1\r\n\r\r\n", "bare CR in head"),
        ];
        for (head, reason) in cases {
            assert_eq!(HeadScanner::default().scan(head), Scan::Invalid(reason));
        }
    }

    /// The byte-at-a-time scanner the memchr one replaced: the reference it must agree with.
    fn reference_scan(bytes: &[u8]) -> Scan {
        let (mut after_cr, mut line_has_content) = (false, false);
        for (i, &byte) in bytes.iter().enumerate() {
            if after_cr {
                if byte != b'\n' {
                    return Scan::Invalid("bare CR in head");
                }
                after_cr = false;
                if !line_has_content {
                    return Scan::Complete(i + 1);
                }
                line_has_content = false;
                continue;
            }
            match byte {
                b'\r' => after_cr = true,
                b'\n' => return Scan::Invalid("bare LF in head"),
                0 => return Scan::Invalid("NUL in head"),
                _ => line_has_content = true,
            }
        }
        Scan::Partial
    }

    proptest::proptest! {
        /// Whatever the bytes and however they are split across reads, the scanner finds what
        /// the byte-at-a-time reference finds.
        #[test]
        fn scanner_agrees_with_the_byte_at_a_time_reference(
            bytes in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b' ', b'\t', b'\r', b'\n', 0u8, 0xff]),
                0..64,
            ),
            cuts in proptest::collection::vec(0usize..64, 0..6),
        ) {
            let expected = reference_scan(&bytes);
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= bytes.len()).collect();
            cuts.sort_unstable();
            cuts.push(bytes.len());
            let mut scanner = HeadScanner::default();
            let mut found = Scan::Partial;
            for cut in cuts {
                found = scanner.scan(&bytes[..cut]);
                if found != Scan::Partial {
                    break;
                }
            }
            proptest::prop_assert_eq!(found, expected);
        }
    }

    #[test]
    fn scanner_stops_at_the_first_blank_line() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(HeadScanner::default().scan(input), Scan::Complete(27));
    }

    #[tokio::test]
    async fn reads_one_byte_at_a_time() {
        let mut builder = Builder::new();
        for byte in HEAD {
            builder.read(std::slice::from_ref(byte));
        }
        let mut io = builder.build();
        let mut buf = BytesMut::new();
        let len = read_request_head(&mut io, &mut buf, 8192, far())
            .await
            .expect("head");
        assert_eq!(len, HEAD.len());
        assert_eq!(&buf[..], HEAD);
    }

    #[tokio::test]
    async fn keeps_bytes_after_the_head() {
        let mut io = Builder::new()
            .read(b"GET /chat HTTP/1.1\r\nHo")
            .read(b"st: a.example\r\n\r\n\x81\x05hello")
            .build();
        let mut buf = BytesMut::new();
        let len = read_request_head(&mut io, &mut buf, 8192, far())
            .await
            .expect("head");
        assert_eq!(len, HEAD.len());
        assert_eq!(&buf[len..], b"\x81\x05hello");
    }

    #[tokio::test]
    async fn a_head_already_buffered_needs_no_read() {
        let mut io = Builder::new().build();
        let mut buf = BytesMut::from(HEAD);
        let past = Instant::now();
        let len = read_request_head(&mut io, &mut buf, 8192, past)
            .await
            .expect("head");
        assert_eq!(len, HEAD.len());
    }

    #[tokio::test]
    async fn eof_before_the_head_is_client_closed() {
        let mut io = Builder::new().read(b"GET / HTTP/1.1\r\n").build();
        let mut buf = BytesMut::new();
        let err = read_request_head(&mut io, &mut buf, 8192, far()).await;
        assert!(matches!(err, Err(HandshakeError::ClientClosed)));
        let mut io = Builder::new().build();
        let err = read_request_head(&mut io, &mut BytesMut::new(), 8192, far()).await;
        assert!(matches!(err, Err(HandshakeError::ClientClosed)));
    }

    #[tokio::test]
    async fn read_errors_are_client_io() {
        let mut io = Builder::new()
            .read(b"GET")
            .read_error(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
            .build();
        let err = read_request_head(&mut io, &mut BytesMut::new(), 8192, far()).await;
        assert!(matches!(err, Err(HandshakeError::ClientIo { .. })));
    }

    #[tokio::test]
    async fn the_limit_counts_the_blank_line() {
        // Exactly at the limit: accepted.
        let mut io = Builder::new().read(HEAD).build();
        let len = read_request_head(&mut io, &mut BytesMut::new(), HEAD.len(), far()).await;
        assert_eq!(len.expect("fits"), HEAD.len());
        // One byte short: refused without reading past the limit.
        let (fits, _) = HEAD.split_at(HEAD.len() - 1);
        let mut io = Builder::new().read(fits).build();
        let err = read_request_head(&mut io, &mut BytesMut::new(), HEAD.len() - 1, far()).await;
        assert!(matches!(
            err,
            Err(HandshakeError::HeadTooLarge { limit }) if limit == HEAD.len() - 1
        ));
    }

    #[tokio::test]
    async fn an_endless_head_is_cut_at_the_limit() {
        let mut io = (&b"GET / HTTP/1.1\r\nX-Filler: "[..]).chain(tokio::io::repeat(b'a'));
        let mut buf = BytesMut::new();
        let err = read_request_head(&mut io, &mut buf, 4096, far()).await;
        assert!(matches!(
            err,
            Err(HandshakeError::HeadTooLarge { limit: 4096 })
        ));
        assert_eq!(buf.len(), 4096, "reads stop at the limit");
    }

    #[tokio::test]
    async fn bad_bytes_fail_before_the_end_of_the_head() {
        // The scanner fails at the bare LF; the rest is never awaited.
        let mut io = Builder::new().read(b"GET / HTTP/1.1\nHost").build();
        let err = read_request_head(&mut io, &mut BytesMut::new(), 8192, far()).await;
        assert!(matches!(
            err,
            Err(HandshakeError::Malformed {
                reason: "bare LF in head"
            })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out_at_the_deadline() {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(5);
        let mut io = Builder::new()
            .read(b"GET / HT")
            .wait(Duration::from_secs(60))
            .build();
        let mut buf = BytesMut::new();
        let err = read_request_head(&mut io, &mut buf, 8192, deadline).await;
        assert!(matches!(
            err,
            Err(HandshakeError::HeadTimeout { received: 8 })
        ));
        assert_eq!(Instant::now(), deadline);
    }

    /// A client sending one header byte per second, for ever.
    struct Trickle {
        next: Pin<Box<tokio::time::Sleep>>,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            ready!(self.next.as_mut().poll(cx));
            let at = self.next.deadline() + Duration::from_secs(1);
            self.next.as_mut().reset(at);
            buf.put_slice(b"X");
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_client_is_cut_at_the_deadline() {
        // Each read makes progress, well under the byte limit: the deadline alone cuts it.
        let start = Instant::now();
        let deadline = start + Duration::from_secs(10);
        let mut io = Trickle {
            next: Box::pin(tokio::time::sleep(Duration::from_secs(1))),
        };
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nX-Slow: "[..]);
        let err = read_request_head(&mut io, &mut buf, 8192, deadline).await;
        assert!(matches!(err, Err(HandshakeError::HeadTimeout { .. })));
        assert_eq!(Instant::now(), deadline);
        assert!(buf.ends_with(b"XXXXXXXXX"), "bytes kept arriving");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_just_in_time_is_read() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut io = Builder::new()
            .read(b"GET / HTTP/1.1\r\n")
            .wait(Duration::from_millis(4999))
            .read(b"Host: a\r\n\r\n")
            .build();
        let len = read_request_head(&mut io, &mut BytesMut::new(), 8192, deadline).await;
        assert_eq!(len.expect("in time"), 27);
    }

    #[tokio::test]
    async fn response_errors_are_backend_side() {
        let mut io = Builder::new().read(b"HTTP/1.1 101 Switching").build();
        let err = read_response_head(&mut io, &mut BytesMut::new(), 8192, far()).await;
        assert!(matches!(
            err,
            Err(HandshakeError::BackendClosed { backend: None })
        ));

        let mut io = Builder::new().read(b"HTTP/1.1 200 OK\nA: b\n\n").build();
        let err = read_response_head(&mut io, &mut BytesMut::new(), 8192, far()).await;
        assert!(matches!(
            err,
            Err(HandshakeError::BadBackendResponse { .. })
        ));

        let mut io = tokio::io::repeat(b'a');
        let err = read_response_head(&mut io, &mut BytesMut::new(), 64, far()).await;
        assert!(matches!(
            err,
            Err(HandshakeError::BadBackendResponse {
                reason: "response head too large",
                ..
            })
        ));

        let mut io = Builder::new().read(b"HTTP/1.1 2000 OK\r\n\r\n").build();
        let err = read_response_head(&mut io, &mut BytesMut::new(), 8192, far()).await;
        assert!(matches!(
            err,
            Err(HandshakeError::BadBackendResponse { .. })
        ));

        let mut io = Builder::new()
            .read_error(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
            .build();
        let err = read_response_head(&mut io, &mut BytesMut::new(), 8192, far()).await;
        assert!(matches!(err, Err(HandshakeError::BackendIo { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_backend_times_out() {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut io = Builder::new()
            .read(b"HTTP/1.1 101 ")
            .wait(Duration::from_secs(10))
            .build();
        let err = read_response_head(&mut io, &mut BytesMut::new(), 8192, deadline).await;
        assert!(matches!(
            err,
            Err(HandshakeError::BackendResponseTimeout { backend: None })
        ));
    }

    #[tokio::test]
    async fn response_head_one_byte_at_a_time_keeps_frames() {
        let answer: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi";
        let mut builder = Builder::new();
        for byte in answer {
            builder.read(std::slice::from_ref(byte));
        }
        let mut io = builder.build();
        let mut buf = BytesMut::new();
        // The reader stops at the end of the head; the frame bytes are left unread in `io`.
        let head = read_response_head(&mut io, &mut buf, 8192, far())
            .await
            .expect("head");
        assert_eq!(head.status(), 101);
        assert_eq!(head.head_len(), answer.len() - 4);
        let mut rest = [0u8; 4];
        io.read_exact(&mut rest).await.expect("frame");
        assert_eq!(&rest, b"\x81\x02hi");
    }
}
