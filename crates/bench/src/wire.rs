//! Connections and frames: the handshake through tokio-tungstenite, then pre-built frames on the
//! raw socket.
//!
//! The handshake is tungstenite's client (random `Sec-WebSocket-Key`, the `101` and its
//! `Sec-WebSocket-Accept` checked), so every target sees a real client. After it, the data
//! scenarios write frames built once at start-up (RFC 6455 §5.2: FIN, binary, masked with a
//! fixed key) and read the echo back as raw bytes, so a message costs the generator a `write`
//! and a `read` and no allocation: the generator shares its core with the backends and must not
//! be what limits the proxy. A fixed masking key is fine for a benchmark (§10.3 asks for an
//! unpredictable one against cache poisoning through intermediaries, not for correctness).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;

/// The masking key of every frame the generator sends (RFC 6455 §5.7's example key).
pub(crate) const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Opcode of a binary frame.
pub(crate) const OP_BINARY: u8 = 0x2;
/// Opcode of a Close frame.
pub(crate) const OP_CLOSE: u8 = 0x8;

/// How long a graceful close may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to `addr` (`TCP_NODELAY` on) and completes a WebSocket handshake for `path`.
pub(crate) async fn open(
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{addr}{path}");
    let (ws, _response) = tokio_tungstenite::client_async(url, tcp)
        .await
        .with_context(|| format!("WebSocket handshake with {addr}"))?;
    Ok(ws)
}

/// [`open`], then the raw socket for pre-built frames. The server sends nothing before the
/// client does, so tungstenite holds no byte of the stream past the `101`.
pub(crate) async fn open_raw(addr: SocketAddr, path: &str) -> anyhow::Result<TcpStream> {
    Ok(open(addr, path).await?.into_inner())
}

/// The WebSocket closing handshake through tungstenite: Close sent, the peer's Close and end
/// of stream awaited (bounded).
pub(crate) async fn close(mut ws: WebSocketStream<TcpStream>) -> anyhow::Result<()> {
    tokio::time::timeout(CLOSE_TIMEOUT, async {
        ws.close(None).await?;
        while let Some(message) = ws.next().await {
            if message.is_err() {
                break;
            }
        }
        anyhow::Ok(())
    })
    .await
    .context("close timed out")?
}

/// The closing handshake on a raw socket: a Close frame (1000), then everything the peer still
/// sends is read and dropped until end of stream (bounded). Returns the bytes read.
pub(crate) async fn close_raw(stream: &mut TcpStream) -> anyhow::Result<u64> {
    let frame = client_frame(OP_CLOSE, &1000u16.to_be_bytes());
    tokio::time::timeout(CLOSE_TIMEOUT, async {
        stream.write_all(&frame).await?;
        let mut sink = [0u8; 4096];
        let mut read = 0u64;
        loop {
            match stream.read(&mut sink).await? {
                0 => return anyhow::Ok(read),
                n => read += n as u64,
            }
        }
    })
    .await
    .context("close timed out")?
}

/// A complete client frame: FIN, `opcode`, masked with [`MASK`], carrying `payload`.
pub(crate) fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut frame = Vec::with_capacity(len + 14);
    frame.push(0x80 | (opcode & 0x0f));
    push_length(&mut frame, len, 0x80);
    frame.extend_from_slice(&MASK);
    frame.extend(
        payload
            .iter()
            .zip(MASK.iter().cycle())
            .map(|(byte, key)| byte ^ key),
    );
    frame
}

/// A complete server frame (unmasked), as the echo backend sends `payload` back.
pub(crate) fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x80 | (opcode & 0x0f));
    push_length(&mut frame, payload.len(), 0);
    frame.extend_from_slice(payload);
    frame
}

/// The payload a scenario sends: `size` bytes of a recognisable pattern.
pub(crate) fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Checks a frame size the generator can build.
pub(crate) fn check_size(size: usize) -> anyhow::Result<()> {
    if size == 0 || size > 64 << 20 {
        bail!("message size {size} out of range 1..=64 MiB");
    }
    Ok(())
}

/// RFC 6455 §5.2 payload length: 7 bits, or 126 + 16 bits, or 127 + 64 bits; `mask_bit` is
/// 0x80 for a masked (client) frame.
fn push_length(frame: &mut Vec<u8>, len: usize, mask_bit: u8) {
    if len < 126 {
        frame.push(mask_bit | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        frame.push(mask_bit | 126);
        frame.extend_from_slice(&short.to_be_bytes());
    } else {
        frame.push(mask_bit | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_frame_of_rfc_6455_example() {
        // RFC 6455 §5.7: a single-frame masked text message containing "Hello".
        assert_eq!(
            client_frame(0x1, b"Hello"),
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
        // The unmasked reply, as a server sends it.
        assert_eq!(
            server_frame(0x1, b"Hello"),
            [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
    }

    #[test]
    fn length_encodings() {
        let header = |len: usize| client_frame(OP_BINARY, &vec![0; len]).len() - len;
        assert_eq!(header(125), 2 + 4);
        assert_eq!(header(126), 4 + 4);
        assert_eq!(header(65535), 4 + 4);
        assert_eq!(header(65536), 10 + 4);
        // RFC 6455 §5.7: 256 bytes in one unmasked binary frame.
        assert_eq!(
            server_frame(OP_BINARY, &[0; 256])[..4],
            [0x82, 0x7e, 0x01, 0x00]
        );
        // 64 KiB: the 64-bit form.
        assert_eq!(
            server_frame(OP_BINARY, &[0; 65536])[..10],
            [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn tungstenite_reads_our_frames() {
        use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
        let payload = payload(300);
        let frame = client_frame(OP_BINARY, &payload);
        let mut cursor = std::io::Cursor::new(frame.as_slice());
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert!(header.is_final);
        assert_eq!(header.mask, Some(MASK));
        assert_eq!(len, 300);
        let start = cursor.position() as usize;
        let unmasked: Vec<u8> = frame[start..]
            .iter()
            .zip(MASK.iter().cycle())
            .map(|(b, k)| b ^ k)
            .collect();
        assert_eq!(unmasked, payload);
    }
}
