//! The few WebSocket frames a check needs (RFC 6455 §5): it writes a masked ping and a masked
//! close (§5.3: a client masks every frame), and reads the backend's frames far enough to find
//! the pong and the close. Data frames the backend sends meanwhile are skipped.
//!
//! The reader never panics on what the backend sends and says "not enough bytes yet" with
//! `Ok(None)`.

/// Opcodes (RFC 6455 §5.2).
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// The most a control frame may carry (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// One frame read from the backend: its opcode and payload (unmasked).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) opcode: u8,
    pub(crate) payload: Vec<u8>,
}

/// A client frame, FIN set, masked with `mask`. Control payloads of at most 125 bytes only.
pub(crate) fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let payload = payload
        .get(..payload.len().min(MAX_CONTROL_PAYLOAD))
        .unwrap_or_default();
    let mut out = Vec::with_capacity(6 + payload.len());
    out.push(0x80 | (opcode & 0x0F));
    // The length fits in 7 bits (at most 125).
    out.push(0x80 | (payload.len() as u8));
    out.extend_from_slice(&mask);
    out.extend(
        payload
            .iter()
            .zip(mask.iter().cycle())
            .map(|(byte, key)| byte ^ key),
    );
    out
}

/// A close frame with status 1000 (normal closure, RFC 6455 §7.4.1).
pub(crate) fn client_close(mask: [u8; 4]) -> Vec<u8> {
    client_frame(OP_CLOSE, &1000u16.to_be_bytes(), mask)
}

/// Parses the first frame of `buf`: `Ok(Some((frame, length)))` when it is complete (its
/// payload kept only for control frames; data frames come back with an empty payload),
/// `Ok(None)` when more bytes are needed, `Err` when the bytes cannot be a frame from a server.
pub(crate) fn parse(buf: &[u8], max_len: u64) -> Result<Option<(Frame, usize)>, &'static str> {
    let (Some(&first), Some(&second)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err("reserved bits set in a frame (no extension was negotiated)");
    }
    let opcode = first & 0x0F;
    if !matches!(opcode, 0x0..=0x2 | 0x8..=0xA) {
        return Err("reserved opcode in a frame");
    }
    let masked = second & 0x80 != 0;
    let (len, mut at) = match second & 0x7F {
        126 => match buf.get(2..4).and_then(|b| <[u8; 2]>::try_from(b).ok()) {
            Some(b) => (u64::from(u16::from_be_bytes(b)), 4usize),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10usize),
            None => return Ok(None),
        },
        short => (u64::from(short), 2usize),
    };
    if opcode >= 0x8 && (len > MAX_CONTROL_PAYLOAD as u64 || first & 0x80 == 0) {
        return Err("control frame too long or fragmented");
    }
    if len > max_len {
        return Err("frame too long for a health check");
    }
    let mask = if masked {
        let Some(m) = buf
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
        else {
            return Ok(None);
        };
        at += 4;
        Some(m)
    } else {
        None
    };
    let Ok(len) = usize::try_from(len) else {
        return Err("frame too long for a health check");
    };
    let Some(end) = at.checked_add(len) else {
        return Err("frame too long for a health check");
    };
    let Some(payload) = buf.get(at..end) else {
        return Ok(None);
    };
    let payload = if opcode >= 0x8 {
        match mask {
            Some(mask) => payload
                .iter()
                .zip(mask.iter().cycle())
                .map(|(byte, key)| byte ^ key)
                .collect(),
            None => payload.to_vec(),
        }
    } else {
        Vec::new()
    };
    Ok(Some((Frame { opcode, payload }, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_ping_is_what_rfc_6455_shows() {
        // RFC 6455 §5.7: a masked "Hello" ping is 0x89 0x85 then the key and masked bytes.
        let frame = client_frame(OP_PING, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(
            frame,
            [
                0x89, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
        assert_eq!(
            client_close([0, 0, 0, 0]),
            [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]
        );
    }

    #[test]
    fn frames_parse_whole_or_ask_for_more() {
        // RFC 6455 §5.7: an unmasked pong "Hello" would be 0x8a 0x05 …
        let pong = [0x8a, 0x05, b'H', b'e', b'l', b'l', b'o'];
        for cut in 0..pong.len() {
            assert_eq!(parse(&pong[..cut], 1 << 20), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            parse(&pong, 1 << 20),
            Ok(Some((
                Frame {
                    opcode: OP_PONG,
                    payload: b"Hello".to_vec()
                },
                7
            )))
        );
        // Our own masked ping parses back to its payload.
        let ping = client_frame(OP_PING, b"abc", [1, 2, 3, 4]);
        assert_eq!(
            parse(&ping, 1 << 20).map(|f| f.map(|(f, _)| f.payload)),
            Ok(Some(b"abc".to_vec()))
        );
        // A 256-byte binary frame (16-bit length) is skipped whole.
        let mut binary = vec![0x82, 126, 0x01, 0x00];
        binary.extend([7u8; 256]);
        assert_eq!(
            parse(&binary, 1 << 20),
            Ok(Some((
                Frame {
                    opcode: 0x2,
                    payload: Vec::new()
                },
                260
            )))
        );
        assert_eq!(parse(&binary[..100], 1 << 20), Ok(None));
        // 64-bit length.
        let mut long = vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        long.extend(vec![0u8; 65_536]);
        assert!(matches!(parse(&long, 1 << 20), Ok(Some((_, 65_546)))));
        assert!(parse(&long, 1000).is_err());
    }

    #[test]
    fn what_a_server_may_not_send_is_an_error() {
        assert!(
            parse(&[0xC1, 0x00], 100).is_err(),
            "RSV1 without an extension"
        );
        assert!(parse(&[0x83, 0x00], 100).is_err(), "reserved opcode");
        assert!(parse(&[0x09, 0x00], 100).is_err(), "fragmented ping");
        assert!(
            parse(&[0x89, 126, 0, 200], 1000).is_err(),
            "control frame over 125"
        );
    }
}
