//! Message bodies of plain HTTP/1.1 requests and responses: how long they are (RFC 9112 §6),
//! a strict chunked decoder (RFC 9112 §7.1), and a streaming copier that moves one body from an
//! `AsyncRead` to an `AsyncWrite` through one bounded buffer.
//!
//! # Decisions
//!
//! - **Framing is decided once, from the parsed head**, by [`BodyFraming::request`] and
//!   [`BodyFraming::response`]. The parser already refused every ambiguous head (both
//!   `Content-Length` and `Transfer-Encoding`, a repeated or non-numeric `Content-Length`,
//!   `Transfer-Encoding` whose final coding is not `chunked`); on top of it a request's
//!   `Transfer-Encoding` must be exactly `chunked`: any other coding, even before a final
//!   `chunked` (`gzip, chunked`), is [`HandshakeError::UnsupportedTransferCoding`] (501, RFC
//!   9112 §6.1: "a server that receives a request message with a transfer coding it does not
//!   understand SHOULD respond with 501"). No browser or HTTP library sends one, and a coding
//!   sluice would pass through unread is one more thing two parsers could disagree on.
//! - **Chunked bodies are decoded and re-encoded**, never passed through as received: what
//!   leaves sluice is `SIZE-IN-LOWERCASE-HEX CRLF data CRLF … 0 CRLF CRLF`, without chunk
//!   extensions and without trailer fields (RFC 9112 §7.1.1 lets a recipient ignore extensions;
//!   RFC 9110 §6.5.1 lets one that removes the chunked coding discard trailers). Whatever quirk a
//!   client puts in its chunk lines therefore never reaches a backend, and the decoder itself
//!   is strict: hex digits only (no sign, no `0x`, no whitespace), a size that fits 64 bits,
//!   extensions that follow the grammar and fit [`MAX_CHUNK_LINE`] bytes, exactly CRLF after
//!   every line and after every chunk's data, trailer fields that are valid field lines and fit
//!   the trailer limit. Anything else is [`BodyError::Malformed`].
//! - **Bounded memory.** [`copy_body`] reads at most [`READ_CHUNK`] bytes at a time and writes
//!   what it decoded before reading again, so a body of any size costs one read buffer and one
//!   output buffer of about that size; a read or a write that makes no progress for the stall
//!   timeout ends the copy.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::HandshakeError;
use crate::fields::{is_field_byte, is_tchar, list_elements};
use crate::request::Request;
use crate::response::ResponseHead;

/// The most bytes read from a socket at once by [`copy_body`].
pub const READ_CHUNK: usize = 64 * 1024;

/// The longest chunk-size line accepted (size, extensions and CRLF), in bytes.
pub const MAX_CHUNK_LINE: usize = 4096;

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    None,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Everything until the sender closes (responses only).
    Close,
}

impl BodyFraming {
    /// A request's body (RFC 9112 §6.3 items 4–6, §6.1): `Content-Length`, chunked, or none.
    ///
    /// Errors: [`HandshakeError::UnsupportedTransferCoding`] (501) when `Transfer-Encoding` lists
    /// anything but one `chunked` (the parser has already refused, with 400, a
    /// `Transfer-Encoding` whose final coding is not chunked).
    pub fn request(req: &Request) -> Result<BodyFraming, HandshakeError> {
        if req.has_transfer_encoding() {
            let mut codings = req
                .header_values("transfer-encoding")
                .flat_map(list_elements);
            return match (codings.next(), codings.next()) {
                (Some(coding), None) if coding.eq_ignore_ascii_case(b"chunked") => {
                    Ok(BodyFraming::Chunked)
                }
                _ => Err(HandshakeError::UnsupportedTransferCoding),
            };
        }
        Ok(match req.content_length() {
            Some(length) => BodyFraming::Length(length),
            None => BodyFraming::None,
        })
    }

    /// A response's body (RFC 9112 §6.3 items 1, 3–7): none for a `HEAD` request and for 1xx,
    /// 204 and 304 answers; chunked when the final transfer coding is chunked; until the close
    /// when another coding is final or when neither `Transfer-Encoding` nor `Content-Length` is
    /// present; else `Content-Length`.
    pub fn response(response: &ResponseHead, request_was_head: bool) -> BodyFraming {
        let status = response.status();
        if request_was_head || (100..200).contains(&status) || status == 204 || status == 304 {
            return BodyFraming::None;
        }
        if response.has_transfer_encoding() {
            return if response.is_chunked() {
                BodyFraming::Chunked
            } else {
                BodyFraming::Close
            };
        }
        match response.content_length() {
            Some(length) => BodyFraming::Length(length),
            None => BodyFraming::Close,
        }
    }

    /// Whether there is certainly no body byte to move (no body, or a length of 0).
    pub fn is_empty(&self) -> bool {
        matches!(self, BodyFraming::None | BodyFraming::Length(0))
    }
}

/// Checks what is known of a request body before anything is sent to a backend: a
/// `Content-Length` over `max_body_bytes` ([`HandshakeError::BodyTooLarge`], 413), and the body
/// bytes the client already sent with its head (`buffered`), decoded on a dry run so that a
/// malformed chunked body that arrived whole is refused (400) while no backend has seen a byte.
pub fn precheck_body(
    framing: BodyFraming,
    buffered: &[u8],
    max_body_bytes: Option<u64>,
    max_trailer_bytes: usize,
) -> Result<(), HandshakeError> {
    match framing {
        BodyFraming::Length(length) => match max_body_bytes {
            Some(limit) if length > limit => Err(HandshakeError::BodyTooLarge { limit }),
            _ => Ok(()),
        },
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new(max_trailer_bytes);
            let mut input = buffered;
            let mut total = 0u64;
            while !input.is_empty() && !decoder.is_done() {
                let (used, data) = decoder
                    .decode(input)
                    .map_err(|reason| HandshakeError::Malformed { reason })?;
                total = total.saturating_add(data.map_or(0, |d| d.len() as u64));
                if let Some(limit) = max_body_bytes.filter(|&limit| total > limit) {
                    return Err(HandshakeError::BodyTooLarge { limit });
                }
                input = input.get(used..).unwrap_or_default();
            }
            Ok(())
        }
        BodyFraming::None | BodyFraming::Close => Ok(()),
    }
}

/// How [`copy_body`] writes what it decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The data bytes alone (the head says `Content-Length`, or the body ends at the close).
    Identity,
    /// Re-encoded as chunks, then the last chunk (the head says `Transfer-Encoding: chunked`).
    Chunked,
}

/// Bounds of one body copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// A read or a write that makes no progress for this long fails the copy.
    pub stall: Duration,
    /// Most body bytes (decoded) accepted; `None`: no limit.
    pub max_bytes: Option<u64>,
    /// Most bytes of chunked trailer fields accepted (they are read and dropped).
    pub max_trailer_bytes: usize,
}

/// Why a body copy failed; the caller knows which side is which and maps it with
/// [`HandshakeError::from_request_body`] or [`HandshakeError::from_response_body`].
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The source closed before the end of the body.
    #[error("closed before the end of the body")]
    Truncated,
    /// Reading from the source failed.
    #[error("reading the body failed: {0}")]
    Read(#[source] io::Error),
    /// No byte came from the source for the stall timeout.
    #[error("no body byte for the stall timeout")]
    ReadStall,
    /// The chunked framing is invalid.
    #[error("malformed chunked body: {0}")]
    Malformed(&'static str),
    /// The body is longer than the limit.
    #[error("body longer than {limit} bytes")]
    TooLarge { limit: u64 },
    /// Writing to the destination failed.
    #[error("writing the body failed: {0}")]
    Write(#[source] io::Error),
    /// The destination took no byte for the stall timeout.
    #[error("the destination took no byte for the stall timeout")]
    WriteStall,
}

/// Copies one body from `src` to `dst`: first the bytes already in `buf` (read with the head),
/// then from `src`, reading at most [`READ_CHUNK`] bytes at a time. Returns the number of body
/// bytes (decoded) once the body's end was read and everything was written and flushed.
///
/// Bytes after the end of the body stay in `buf` (a pipelined request; from a backend, bytes
/// that make its connection unusable). `received` grows by every byte taken from `buf` or
/// `src`, framing included, as they are decoded: a caller running this beside other work can
/// tell whether the body has started.
pub async fn copy_body<R, W>(
    src: &mut R,
    buf: &mut BytesMut,
    dst: &mut W,
    framing: BodyFraming,
    encoding: Encoding,
    limits: &BodyLimits,
    received: &AtomicU64,
) -> Result<u64, BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut decoder = match framing {
        BodyFraming::None => return Ok(0),
        BodyFraming::Length(length) => Decoder::Length(length),
        BodyFraming::Chunked => Decoder::Chunked(ChunkedDecoder::new(limits.max_trailer_bytes)),
        BodyFraming::Close => Decoder::Close,
    };
    let mut out = Vec::with_capacity(READ_CHUNK + 32);
    let mut total = 0u64;
    loop {
        // Decode everything buffered, writing as the output buffer fills.
        while !buf.is_empty() && !decoder.is_done() {
            let (used, data) = decoder.decode(buf).map_err(BodyError::Malformed)?;
            if let Some(data) = data {
                total = total.saturating_add(data.len() as u64);
                if let Some(limit) = limits.max_bytes.filter(|&limit| total > limit) {
                    return Err(BodyError::TooLarge { limit });
                }
                encode(encoding, data, &mut out);
            }
            received.fetch_add(used as u64, Ordering::Relaxed);
            buf.advance(used);
            if out.len() >= READ_CHUNK {
                write_stalling(dst, &out, limits.stall).await?;
                out.clear();
            }
        }
        if decoder.is_done() {
            if encoding == Encoding::Chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            write_stalling(dst, &out, limits.stall).await?;
            flush_stalling(dst, limits.stall).await?;
            return Ok(total);
        }
        // Everything decoded so far goes out before waiting for more (a streaming body must not
        // sit in sluice while its sender waits for an answer to it).
        if !out.is_empty() {
            write_stalling(dst, &out, limits.stall).await?;
            out.clear();
        }
        flush_stalling(dst, limits.stall).await?;
        buf.reserve(READ_CHUNK);
        let read = tokio::time::timeout(limits.stall, async {
            loop {
                match src.read_buf(&mut (&mut *buf).limit(READ_CHUNK)).await {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => return other,
                }
            }
        })
        .await;
        match read {
            Err(_) => return Err(BodyError::ReadStall),
            Ok(Err(e)) => return Err(BodyError::Read(e)),
            Ok(Ok(0)) if decoder.ends_at_close() => decoder = Decoder::Ended,
            Ok(Ok(0)) => return Err(BodyError::Truncated),
            Ok(Ok(_)) => {}
        }
    }
}

/// Appends `data` to `out` in `encoding` (one chunk per call when chunked).
fn encode(encoding: Encoding, data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    if encoding == Encoding::Chunked {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

async fn write_stalling<W: AsyncWrite + Unpin>(
    dst: &mut W,
    bytes: &[u8],
    stall: Duration,
) -> Result<(), BodyError> {
    let mut rest = bytes;
    while !rest.is_empty() {
        match tokio::time::timeout(stall, dst.write(rest)).await {
            Err(_) => return Err(BodyError::WriteStall),
            Ok(Ok(0)) => return Err(BodyError::Write(io::ErrorKind::WriteZero.into())),
            Ok(Ok(n)) => rest = rest.get(n..).unwrap_or_default(),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(BodyError::Write(e)),
        }
    }
    Ok(())
}

async fn flush_stalling<W: AsyncWrite + Unpin>(
    dst: &mut W,
    stall: Duration,
) -> Result<(), BodyError> {
    match tokio::time::timeout(stall, dst.flush()).await {
        Err(_) => Err(BodyError::WriteStall),
        Ok(Err(e)) => Err(BodyError::Write(e)),
        Ok(Ok(())) => Ok(()),
    }
}

/// The body decoders [`copy_body`] drives.
#[derive(Debug)]
enum Decoder {
    /// This many bytes left.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the source closes.
    Close,
    /// A close-delimited body whose source closed.
    Ended,
}

impl Decoder {
    fn decode<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<&'a [u8]>), &'static str> {
        match self {
            Decoder::Length(left) => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                *left -= n as u64;
                Ok((n, input.get(..n)))
            }
            Decoder::Chunked(chunked) => chunked.decode(input),
            Decoder::Close => Ok((input.len(), Some(input))),
            Decoder::Ended => Ok((0, None)),
        }
    }

    fn is_done(&self) -> bool {
        match self {
            Decoder::Length(left) => *left == 0,
            Decoder::Chunked(chunked) => chunked.is_done(),
            Decoder::Close => false,
            Decoder::Ended => true,
        }
    }

    fn ends_at_close(&self) -> bool {
        matches!(self, Decoder::Close)
    }
}

/// A strict, incremental decoder of the chunked transfer coding (RFC 9112 §7.1): feed it bytes
/// as they come, however they are split, and it hands back the data they carry.
///
/// ```text
/// chunked-body   = *chunk last-chunk trailer-section CRLF
/// chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
/// chunk-size     = 1*HEXDIG
/// last-chunk     = 1*("0") [ chunk-ext ] CRLF
/// chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
/// chunk-ext-val  = token / quoted-string
/// trailer-section = *( field-line CRLF )
/// ```
///
/// Extensions and trailer fields are checked, then dropped.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// The size of the chunk being read, then the bytes of it still to come.
    size: u64,
    /// Bytes of the current chunk-size line so far.
    line: usize,
    /// Bytes of the trailer section so far.
    trailer: usize,
    max_trailer: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first hex digit of a chunk size.
    SizeStart,
    /// More hex digits, or what follows them.
    Size,
    /// Whitespace after the size or an extension value: `;` must follow.
    BeforeSemi,
    /// After `;`: whitespace, then an extension name.
    AfterSemi,
    ExtName,
    /// Whitespace after an extension name: `=` or `;` must follow.
    AfterName,
    /// After `=`: whitespace, then a token or a quoted string.
    AfterEq,
    ExtToken,
    Quoted,
    QuotedEscape,
    /// After a closing quote.
    AfterQuoted,
    /// The CR of a chunk-size line was read.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The start of a trailer field line, or the CRLF that ends the body.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body; trailer fields may take `max_trailer_bytes`.
    pub fn new(max_trailer_bytes: usize) -> Self {
        Self {
            state: State::SizeStart,
            size: 0,
            line: 0,
            trailer: 0,
            max_trailer: max_trailer_bytes,
        }
    }

    /// Whether the whole body, trailer section included, has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from the start of `input`. Returns how many bytes were used and, when it reached
    /// chunk data, the data it found (a part of `input`, ending where the returned count ends).
    /// Call again with the rest; once [`ChunkedDecoder::is_done`], nothing more is used.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<&'a [u8]>), &'static str> {
        let mut used = 0;
        while let Some(&byte) = input.get(used) {
            if self.state == State::Done {
                break;
            }
            if self.state == State::Data {
                let n = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - used);
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok((used + n, input.get(used..used + n)));
            }
            used += 1;
            self.step(byte)?;
        }
        Ok((used, None))
    }

    /// One byte of framing.
    fn step(&mut self, byte: u8) -> Result<(), &'static str> {
        use State::*;
        let in_size_line = matches!(
            self.state,
            SizeStart
                | Size
                | BeforeSemi
                | AfterSemi
                | ExtName
                | AfterName
                | AfterEq
                | ExtToken
                | Quoted
                | QuotedEscape
                | AfterQuoted
                | SizeLf
        );
        if in_size_line {
            self.line += 1;
            if self.line > MAX_CHUNK_LINE {
                return Err("chunk-size line too long");
            }
        } else if matches!(
            self.state,
            TrailerStart | TrailerName | TrailerValue | TrailerLf | EndLf
        ) {
            self.trailer += 1;
            if self.trailer > self.max_trailer {
                return Err("chunked trailer section too large");
            }
        }
        let is_ws = byte == b' ' || byte == b'\t';
        self.state = match (self.state, byte) {
            (SizeStart, _) => {
                let digit = hex(byte).ok_or("invalid chunk size")?;
                self.size = u64::from(digit);
                Size
            }
            (Size, _) if hex(byte).is_some() => {
                let digit = hex(byte).unwrap_or_default();
                if self.size > u64::MAX >> 4 {
                    return Err("chunk size too large");
                }
                self.size = (self.size << 4) | u64::from(digit);
                Size
            }
            (Size | ExtToken | AfterQuoted | BeforeSemi, b';') => AfterSemi,
            (Size | ExtToken | AfterQuoted | BeforeSemi, _) if is_ws => BeforeSemi,
            (Size | ExtToken | AfterQuoted | ExtName, b'\r') => SizeLf,
            (Size, _) => return Err("invalid chunk size"),
            (BeforeSemi | AfterName, b'\r') => {
                return Err("whitespace at the end of a chunk-size line");
            }
            (AfterSemi, _) if is_ws => AfterSemi,
            (AfterSemi, _) if is_tchar(byte) => ExtName,
            (ExtName, _) if is_tchar(byte) => ExtName,
            (ExtName | AfterName, _) if is_ws => AfterName,
            (ExtName | AfterName, b'=') => AfterEq,
            (ExtName | AfterName, b';') => AfterSemi,
            (AfterEq, _) if is_ws => AfterEq,
            (AfterEq, b'"') => Quoted,
            (AfterEq | ExtToken, _) if is_tchar(byte) => ExtToken,
            (Quoted, b'"') => AfterQuoted,
            (Quoted, b'\\') => QuotedEscape,
            (Quoted, _) if is_qdtext(byte) => Quoted,
            (QuotedEscape, _) if is_field_byte(byte) => Quoted,
            (
                BeforeSemi | AfterSemi | ExtName | AfterName | AfterEq | ExtToken | Quoted
                | QuotedEscape | AfterQuoted,
                _,
            ) => return Err("invalid chunk extension"),
            (SizeLf, b'\n') => {
                self.line = 0;
                if self.size == 0 { TrailerStart } else { Data }
            }
            (SizeLf, _) => return Err("bare CR in a chunk-size line"),
            (Data, _) => return Err("chunk data state reached by a framing byte"),
            (DataCr, b'\r') => DataLf,
            (DataCr, _) => return Err("chunk data longer than its size"),
            (DataLf, b'\n') => SizeStart,
            (DataLf, _) => return Err("bare CR after chunk data"),
            (TrailerStart, b'\r') => EndLf,
            (TrailerStart, _) if is_ws => return Err("obs-fold in a chunked trailer"),
            (TrailerStart | TrailerName, _) if is_tchar(byte) => TrailerName,
            (TrailerStart, _) => return Err("invalid chunked trailer field"),
            (TrailerName, b':') => TrailerValue,
            (TrailerName, _) => return Err("invalid chunked trailer field name"),
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, _) if is_field_byte(byte) => TrailerValue,
            (TrailerValue, _) => return Err("invalid chunked trailer field value"),
            (TrailerLf, b'\n') => TrailerStart,
            (TrailerLf, _) => return Err("bare CR in a chunked trailer"),
            (EndLf, b'\n') => Done,
            (EndLf, _) => return Err("bare CR at the end of a chunked body"),
            (Done, _) => Done,
        };
        Ok(())
    }
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// `qdtext` (RFC 9110 §5.6.4): HTAB, SP, `!`, `#`–`[`, `]`–`~`, obs-text.
fn is_qdtext(byte: u8) -> bool {
    matches!(byte, b'\t' | b' ' | b'!' | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff)
}

impl HandshakeError {
    /// The error of a request body copy (client → backend `backend`): the client's faults are
    /// 400/408/413 or a silent close, the backend's 502/504.
    pub fn from_request_body(err: BodyError, backend: std::net::SocketAddr) -> HandshakeError {
        match err {
            BodyError::Truncated => HandshakeError::ClientClosed,
            BodyError::Read(source) => HandshakeError::ClientIo { source },
            BodyError::ReadStall => HandshakeError::BodyTimeout,
            BodyError::Malformed(reason) => HandshakeError::Malformed { reason },
            BodyError::TooLarge { limit } => HandshakeError::BodyTooLarge { limit },
            BodyError::Write(source) => HandshakeError::BackendIo {
                backend: Some(backend),
                source,
            },
            BodyError::WriteStall => HandshakeError::BackendBodyTimeout {
                backend: Some(backend),
            },
        }
    }

    /// The error of a response body copy (backend `backend` → client).
    pub fn from_response_body(err: BodyError, backend: std::net::SocketAddr) -> HandshakeError {
        let backend = Some(backend);
        match err {
            BodyError::Truncated => HandshakeError::BackendTruncated { backend },
            BodyError::Read(source) => HandshakeError::BackendIo { backend, source },
            BodyError::ReadStall => HandshakeError::BackendBodyTimeout { backend },
            BodyError::Malformed(reason) => HandshakeError::BadBackendResponse { backend, reason },
            BodyError::TooLarge { .. } => HandshakeError::BadBackendResponse {
                backend,
                reason: "response body too large",
            },
            BodyError::Write(source) => HandshakeError::ClientIo { source },
            BodyError::WriteStall => HandshakeError::ClientStalled,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio_test::io::Builder;

    use super::*;
    use crate::parse_request;
    use crate::response::parse_response_head;

    fn limits() -> BodyLimits {
        BodyLimits {
            stall: Duration::from_secs(5),
            max_bytes: None,
            max_trailer_bytes: 1024,
        }
    }

    /// Decodes `input` in pieces of `step` bytes; the data and whether the decoder finished.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, bool, usize), &'static str> {
        let mut decoder = ChunkedDecoder::new(1024);
        let mut data = Vec::new();
        let mut fed = 0;
        let mut consumed = 0;
        while fed < input.len() && !decoder.is_done() {
            fed = (fed + step).min(input.len());
            while consumed < fed && !decoder.is_done() {
                let (used, out) = decoder.decode(&input[consumed..fed])?;
                if let Some(out) = out {
                    data.extend_from_slice(out);
                }
                consumed += used;
                if used == 0 {
                    break;
                }
            }
        }
        Ok((data, decoder.is_done(), consumed))
    }

    #[test]
    fn decodes_valid_chunked_bodies_however_split() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
            (b"0\r\n\r\n", b""),
            (b"000\r\n\r\n", b""),
            (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
            (b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
            (b"5;name=value\r\nhello\r\n0\r\n\r\n", b"hello"),
            (
                b"5 ; a ; b = \"q\\\"x\" ;c=d\r\nhello\r\n0;last\r\n\r\n",
                b"hello",
            ),
            (b"5\r\nhello\r\n0\r\nX-Trailer: v\r\nY: \r\n\r\n", b"hello"),
            (b"00005\r\nhello\r\n0\r\n\r\n", b"hello"),
        ];
        for (input, expected) in cases {
            for step in [1, 2, 3, 7, input.len()] {
                let (data, done, consumed) = decode_in_steps(input, step)
                    .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(input)));
                assert_eq!(&data, expected, "{:?}", String::from_utf8_lossy(input));
                assert!(done);
                assert_eq!(consumed, input.len());
            }
        }
    }

    #[test]
    fn stops_at_the_end_of_the_body() {
        let input = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let (data, done, consumed) = decode_in_steps(input, input.len()).expect("valid");
        assert_eq!(data, b"abc");
        assert!(done);
        assert_eq!(consumed, 13);
    }

    #[test]
    fn refuses_every_malformed_shape() {
        let cases: &[(&[u8], &str)] = &[
            (b"x\r\n", "invalid chunk size"),
            (b"\r\n", "invalid chunk size"),
            (b" 5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"+5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"-5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"0x5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"5\nhello\n0\n\n", "invalid chunk size"),
            (
                b"5 \r\nhello\r\n0\r\n\r\n",
                "whitespace at the end of a chunk-size line",
            ),
            (
                b"5;a \r\nhello\r\n0\r\n\r\n",
                "whitespace at the end of a chunk-size line",
            ),
            (b"5\rhello", "bare CR in a chunk-size line"),
            (b"5;a\nhello\r\n", "invalid chunk extension"),
            (b"5;\r\nhello\r\n", "invalid chunk extension"),
            (b"5;a=\r\nhello\r\n", "invalid chunk extension"),
            (
                b"5;a=\"unterminated\r\nhello\r\n",
                "invalid chunk extension",
            ),
            (b"5;a=b c\r\nhello\r\n", "invalid chunk extension"),
            (b"5;a(b)\r\nhello\r\n", "invalid chunk extension"),
            (
                b"3\r\nhello\r\n0\r\n\r\n",
                "chunk data longer than its size",
            ),
            (b"5\r\nhello\n0\r\n\r\n", "chunk data longer than its size"),
            (b"5\r\nhello\r0\r\n\r\n", "bare CR after chunk data"),
            (b"10000000000000000\r\n", "chunk size too large"),
            (b"ffffffffffffffff0\r\n", "chunk size too large"),
            (b"0\r\n X: folded\r\n\r\n", "obs-fold in a chunked trailer"),
            (b"0\r\nX : v\r\n\r\n", "invalid chunked trailer field name"),
            (b"0\r\nX\r\n\r\n", "invalid chunked trailer field name"),
            (b"0\r\n:v\r\n\r\n", "invalid chunked trailer field"),
            (
                b"0\r\nX: a\x00b\r\n\r\n",
                "invalid chunked trailer field value",
            ),
            (b"0\r\nX: v\n\r\n", "invalid chunked trailer field value"),
            (b"0\r\nX: v\r\r\n", "bare CR in a chunked trailer"),
            (b"0\r\n\n", "invalid chunked trailer field"),
            (b"0\r\n\rx", "bare CR at the end of a chunked body"),
        ];
        for (input, reason) in cases {
            for step in [1, input.len()] {
                assert_eq!(
                    decode_in_steps(input, step).map(|_| ()),
                    Err(*reason),
                    "{:?} in steps of {step}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn bounds_chunk_lines_and_trailers() {
        let mut long_ext = b"5;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
        assert_eq!(
            decode_in_steps(&long_ext, 100).map(|_| ()),
            Err("chunk-size line too long")
        );
        let mut zeros = vec![b'0'; MAX_CHUNK_LINE + 1];
        zeros.extend_from_slice(b"5\r\n");
        assert_eq!(
            decode_in_steps(&zeros, 100).map(|_| ()),
            Err("chunk-size line too long")
        );
        let mut trailer = b"0\r\n".to_vec();
        for i in 0..100 {
            trailer.extend_from_slice(format!("X-{i}: value\r\n").as_bytes());
        }
        trailer.extend_from_slice(b"\r\n");
        assert_eq!(
            decode_in_steps(&trailer, 64).map(|_| ()),
            Err("chunked trailer section too large")
        );
    }

    fn request(head: &str) -> Request {
        parse_request(Bytes::copy_from_slice(head.as_bytes()), 100).expect("valid head")
    }

    #[test]
    fn request_framing() {
        let framing = |extra: &str| {
            BodyFraming::request(&request(&format!(
                "POST / HTTP/1.1\r\nHost: h\r\n{extra}\r\n"
            )))
        };
        assert_eq!(framing("").ok(), Some(BodyFraming::None));
        assert_eq!(
            framing("Content-Length: 0\r\n").ok(),
            Some(BodyFraming::Length(0))
        );
        assert_eq!(
            framing("Content-Length: 42\r\n").ok(),
            Some(BodyFraming::Length(42))
        );
        assert_eq!(
            framing("Transfer-Encoding: chunked\r\n").ok(),
            Some(BodyFraming::Chunked)
        );
        assert_eq!(
            framing("Transfer-Encoding: \t CHUNKED \r\n").ok(),
            Some(BodyFraming::Chunked)
        );
        for te in [
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked;q=1\r\n",
            "Transfer-Encoding: identity, chunked\r\n",
        ] {
            assert!(
                matches!(framing(te), Err(HandshakeError::UnsupportedTransferCoding)),
                "{te}"
            );
        }
        assert!(BodyFraming::None.is_empty() && BodyFraming::Length(0).is_empty());
        assert!(!BodyFraming::Length(1).is_empty() && !BodyFraming::Chunked.is_empty());
    }

    #[test]
    fn response_framing() {
        let framing = |head: &str, was_head: bool| {
            let parsed = parse_response_head(head.as_bytes()).expect("valid");
            BodyFraming::response(&parsed, was_head)
        };
        let cl = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n";
        assert_eq!(framing(cl, false), BodyFraming::Length(7));
        assert_eq!(framing(cl, true), BodyFraming::None);
        for status in [
            "204 No Content",
            "304 Not Modified",
            "100 Continue",
            "103 Early",
        ] {
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: 7\r\n\r\n");
            assert_eq!(framing(&head, false), BodyFraming::None, "{status}");
        }
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            BodyFraming::Chunked
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false
            ),
            BodyFraming::Chunked
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            BodyFraming::Close
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                false
            ),
            BodyFraming::Close
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\n\r\n", false),
            BodyFraming::Close
        );
    }

    #[test]
    fn prechecks_what_arrived_with_the_head() {
        let ok = precheck_body(BodyFraming::Chunked, b"5\r\nhel", None, 1024);
        assert!(ok.is_ok());
        assert!(matches!(
            precheck_body(BodyFraming::Chunked, b"5\r\nhello\r\n0x1\r\n", None, 1024),
            Err(HandshakeError::Malformed {
                reason: "invalid chunk size"
            })
        ));
        assert!(matches!(
            precheck_body(BodyFraming::Chunked, b"5\r\nhello\r\n", Some(4), 1024),
            Err(HandshakeError::BodyTooLarge { limit: 4 })
        ));
        assert!(matches!(
            precheck_body(BodyFraming::Length(5), b"", Some(4), 1024),
            Err(HandshakeError::BodyTooLarge { limit: 4 })
        ));
        assert!(precheck_body(BodyFraming::Length(4), b"", Some(4), 1024).is_ok());
        assert!(precheck_body(BodyFraming::None, b"junk", Some(0), 1024).is_ok());
    }

    async fn copy(
        framing: BodyFraming,
        encoding: Encoding,
        already: &[u8],
        reads: &[&[u8]],
        limits: &BodyLimits,
    ) -> (Result<u64, BodyError>, Vec<u8>, BytesMut, u64) {
        let mut builder = Builder::new();
        for read in reads {
            builder.read(read);
        }
        let mut src = builder.build();
        let mut buf = BytesMut::from(already);
        let mut out = Vec::new();
        let received = AtomicU64::new(0);
        let result = copy_body(
            &mut src, &mut buf, &mut out, framing, encoding, limits, &received,
        )
        .await;
        (result, out, buf, received.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn copies_a_length_body_and_leaves_what_follows() {
        let (result, out, rest, received) = copy(
            BodyFraming::Length(10),
            Encoding::Identity,
            b"0123",
            &[b"456", b"789GET / HTTP/1.1\r\n"],
            &limits(),
        )
        .await;
        assert_eq!(result.expect("copied"), 10);
        assert_eq!(out, b"0123456789");
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\n");
        assert_eq!(received, 10);
    }

    #[tokio::test]
    async fn re_encodes_chunked_canonically() {
        let (result, out, rest, _) = copy(
            BodyFraming::Chunked,
            Encoding::Chunked,
            b"5;ext=1\r\nhel",
            &[
                b"lo\r\n00A\r\n0123456789\r\n",
                b"0\r\nTrailer: x\r\n\r\nnext",
            ],
            &limits(),
        )
        .await;
        assert_eq!(result.expect("copied"), 15);
        // One chunk per piece decoded: extensions, leading zeros and trailers are gone.
        assert_eq!(out, b"3\r\nhel\r\n2\r\nlo\r\na\r\n0123456789\r\n0\r\n\r\n");
        assert_eq!(&rest[..], b"next");
    }

    #[tokio::test]
    async fn de_chunks_for_identity_output() {
        let (result, out, _, _) = copy(
            BodyFraming::Chunked,
            Encoding::Identity,
            b"",
            &[b"3\r\nabc\r\n0\r\n\r\n"],
            &limits(),
        )
        .await;
        assert_eq!(result.expect("copied"), 3);
        assert_eq!(out, b"abc");
    }

    #[tokio::test]
    async fn close_delimited_bodies_end_at_eof_and_can_be_chunked() {
        let (result, out, _, _) = copy(
            BodyFraming::Close,
            Encoding::Chunked,
            b"ab",
            &[b"cd", b"e"],
            &limits(),
        )
        .await;
        assert_eq!(result.expect("copied"), 5);
        assert_eq!(out, b"2\r\nab\r\n2\r\ncd\r\n1\r\ne\r\n0\r\n\r\n");
    }

    #[tokio::test]
    async fn failures() {
        let (result, _, _, _) = copy(
            BodyFraming::Length(10),
            Encoding::Identity,
            b"0123",
            &[b"45"],
            &limits(),
        )
        .await;
        assert!(matches!(result, Err(BodyError::Truncated)));
        let (result, out, _, _) = copy(
            BodyFraming::Chunked,
            Encoding::Chunked,
            b"",
            &[b"3\r\nabc\r\n", b"3\r\nabcd\r\n"],
            &limits(),
        )
        .await;
        assert!(matches!(
            result,
            Err(BodyError::Malformed("chunk data longer than its size"))
        ));
        // What was decoded before the second read went out; nothing of the bad chunk did.
        assert_eq!(out, b"3\r\nabc\r\n");
        let small = BodyLimits {
            max_bytes: Some(4),
            ..limits()
        };
        let (result, _, _, _) = copy(
            BodyFraming::Chunked,
            Encoding::Chunked,
            b"3\r\nabc\r\n3\r\nabc\r\n0\r\n\r\n",
            &[],
            &small,
        )
        .await;
        assert!(matches!(result, Err(BodyError::TooLarge { limit: 4 })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_source_times_out() {
        let mut src = Builder::new()
            .read(b"01")
            .wait(Duration::from_secs(60))
            .read(b"23")
            .build();
        let mut out = Vec::new();
        let received = AtomicU64::new(0);
        let started = tokio::time::Instant::now();
        let result = copy_body(
            &mut src,
            &mut BytesMut::new(),
            &mut out,
            BodyFraming::Length(4),
            Encoding::Identity,
            &limits(),
            &received,
        )
        .await;
        assert!(matches!(result, Err(BodyError::ReadStall)));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(out, b"01", "what came went out before the wait");
        assert_eq!(received.load(Ordering::Relaxed), 2);
        // Drain the mock so it does not complain about unread data.
        let mut rest = Vec::new();
        let _ = src.read_to_end(&mut rest).await;
    }

    #[test]
    fn body_errors_map_to_their_side() {
        let addr = std::net::SocketAddr::from(([10, 0, 0, 1], 80));
        let req = |e| HandshakeError::from_request_body(e, addr).status();
        assert_eq!(req(BodyError::Truncated), None);
        assert_eq!(req(BodyError::ReadStall), Some(408));
        assert_eq!(req(BodyError::Malformed("x")), Some(400));
        assert_eq!(req(BodyError::TooLarge { limit: 1 }), Some(413));
        assert_eq!(
            req(BodyError::Write(io::ErrorKind::BrokenPipe.into())),
            Some(502)
        );
        assert_eq!(req(BodyError::WriteStall), Some(504));
        let resp = |e| HandshakeError::from_response_body(e, addr);
        assert_eq!(resp(BodyError::Truncated).label(), "backend_truncated");
        assert_eq!(resp(BodyError::ReadStall).status(), Some(504));
        assert_eq!(resp(BodyError::Malformed("x")).status(), Some(502));
        assert_eq!(resp(BodyError::WriteStall).status(), None);
    }
}
