//! Is this request a WebSocket opening handshake (RFC 6455 §4.2.1, RFC 9110 §7.8), and is the
//! backend's 101 a valid answer to it (RFC 6455 §4.2.2 item 5, checked as §4.1 has the client
//! check it)?
//!
//! A request is a WebSocket *attempt* when an `Upgrade` field lists the token `websocket`
//! (case-insensitive, comma lists, across repeated fields). An attempt must then be a complete,
//! valid handshake, or it is refused; anything else is [`RequestKind::Plain`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

use crate::error::HandshakeError;
use crate::fields::{has_token, trim_ows};
use crate::request::Request;
use crate::response::{ACCEPT_LEN, AcceptField, ResponseHead};

/// The GUID appended to the key (RFC 6455 §1.3).
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Length of a valid `Sec-WebSocket-Key`: base64 (padded) of 16 bytes.
const KEY_LEN: usize = 24;

/// What a valid request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// A valid WebSocket opening handshake.
    WebSocket(WebSocketUpgrade),
    /// Any other request (not an upgrade to WebSocket).
    Plain,
}

/// A valid WebSocket opening handshake: holds the client's key to check the backend's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketUpgrade {
    key: [u8; KEY_LEN],
}

impl WebSocketUpgrade {
    /// The client's `Sec-WebSocket-Key`, as sent (24 base64 characters).
    pub fn key(&self) -> &str {
        std::str::from_utf8(&self.key).unwrap_or_default()
    }

    /// The `Sec-WebSocket-Accept` value a server must answer with (RFC 6455 §4.2.2 item 5.4):
    /// base64(SHA-1(key ++ GUID)).
    pub fn accept(&self) -> String {
        let mut out = String::with_capacity(ACCEPT_LEN);
        STANDARD.encode_string(self.accept_digest(), &mut out);
        out
    }

    /// Checks that a backend's 101 is a valid acceptance of this handshake: HTTP/1.1 101,
    /// `Upgrade: websocket`, `Connection: upgrade`, and exactly one `Sec-WebSocket-Accept`
    /// with the right value. Otherwise [`HandshakeError::BadBackendResponse`] (502): relaying it
    /// would hand the client a tunnel its WebSocket library must fail.
    pub fn check_response(&self, response: &ResponseHead) -> Result<(), HandshakeError> {
        let bad = |reason| HandshakeError::BadBackendResponse {
            backend: None,
            reason,
        };
        if response.status() != 101 {
            return Err(bad("not a 101 response"));
        }
        if response.version() != 1 {
            return Err(bad("101 over HTTP/1.0"));
        }
        if !response.upgrade_websocket() {
            return Err(bad("101 without Upgrade: websocket"));
        }
        if !response.connection_upgrade() {
            return Err(bad("101 without Connection: upgrade"));
        }
        match response.accept() {
            AcceptField::Missing => Err(bad("101 without Sec-WebSocket-Accept")),
            AcceptField::Repeated => Err(bad("repeated Sec-WebSocket-Accept")),
            AcceptField::WrongLength => Err(bad("wrong Sec-WebSocket-Accept")),
            AcceptField::Value(value) => {
                let mut expected = [0u8; ACCEPT_LEN];
                match STANDARD.encode_slice(self.accept_digest(), &mut expected) {
                    Ok(ACCEPT_LEN) if value == expected => Ok(()),
                    _ => Err(bad("wrong Sec-WebSocket-Accept")),
                }
            }
        }
    }

    fn accept_digest(&self) -> impl AsRef<[u8]> {
        let mut sha1 = Sha1::new();
        sha1.update(self.key);
        sha1.update(WEBSOCKET_GUID);
        sha1.finalize()
    }
}

/// Classifies a parsed request (RFC 6455 §4.2.1; RFC 9110 §7.8).
///
/// Checks, in order, once `Upgrade` lists `websocket`: HTTP/1.1 ([`HandshakeError::UnsupportedVersion`],
/// 400), GET ([`HandshakeError::MethodNotAllowed`], 405), `Connection` lists `upgrade`
/// ([`HandshakeError::MissingUpgradeHeaders`], 400), no body announced
/// ([`HandshakeError::UpgradeWithBody`], 400: the bytes after the head must be frames, nothing
/// else), `Sec-WebSocket-Version: 13` exactly once ([`HandshakeError::UnsupportedWebSocketVersion`],
/// 426 — also when missing, so the client learns which version to speak), and
/// `Sec-WebSocket-Key` exactly once, the padded base64 of 16 bytes
/// ([`HandshakeError::BadWebSocketKey`], 400). `Host` is already guaranteed by the parser.
pub fn classify(req: &Request) -> Result<RequestKind, HandshakeError> {
    if !has_token(req.raw_headers(), "upgrade", "websocket") {
        return Ok(RequestKind::Plain);
    }
    if req.version() != 1 {
        return Err(HandshakeError::UnsupportedVersion {
            minor: req.version(),
        });
    }
    if req.method() != "GET" {
        // Kept for logs, so bounded (a method is a token: printable ASCII, no controls).
        let method = req.method();
        let shown = method.get(..method.len().min(16)).unwrap_or_default();
        return Err(HandshakeError::MethodNotAllowed {
            method: shown.to_owned(),
        });
    }
    if !has_token(req.raw_headers(), "connection", "upgrade") {
        return Err(HandshakeError::MissingUpgradeHeaders {
            missing: "Connection: upgrade",
        });
    }
    if req.has_transfer_encoding() {
        return Err(HandshakeError::UpgradeWithBody {
            header: "Transfer-Encoding",
        });
    }
    if req.content_length().is_some_and(|len| len > 0) {
        return Err(HandshakeError::UpgradeWithBody {
            header: "Content-Length",
        });
    }
    let mut versions = req.header_values("sec-websocket-version");
    match (versions.next(), versions.next()) {
        (Some(b"13"), None) => {}
        _ => return Err(HandshakeError::UnsupportedWebSocketVersion),
    }
    let mut keys = req.header_values("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key,
        (None, _) => return Err(bad_key("missing")),
        (Some(_), Some(_)) => return Err(bad_key("repeated")),
    };
    Ok(RequestKind::WebSocket(WebSocketUpgrade {
        key: valid_key(key)?,
    }))
}

fn valid_key(key: &[u8]) -> Result<[u8; KEY_LEN], HandshakeError> {
    let key = <[u8; KEY_LEN]>::try_from(trim_ows(key))
        .map_err(|_| bad_key("not the base64 of 16 bytes"))?;
    // The standard engine requires canonical padding and no trailing bits.
    let mut decoded = [0u8; KEY_LEN];
    match STANDARD.decode_slice(key, &mut decoded) {
        Ok(16) => Ok(key),
        _ => Err(bad_key("not the base64 of 16 bytes")),
    }
}

fn bad_key(reason: &'static str) -> HandshakeError {
    HandshakeError::BadWebSocketKey { reason }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::parse_request;
    use crate::response::parse_response_head;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(extra: &str) -> Request {
        let head = format!("GET /chat HTTP/1.1\r\nHost: server.example.com\r\n{extra}\r\n");
        parse_request(Bytes::from(head), 100).expect("parses")
    }

    fn ws(extra: &str) -> String {
        format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}"
        )
    }

    fn upgrade() -> WebSocketUpgrade {
        match classify(&request(&ws(""))) {
            Ok(RequestKind::WebSocket(upgrade)) => upgrade,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rfc6455_example_accept() {
        let upgrade = upgrade();
        assert_eq!(upgrade.key(), KEY);
        // RFC 6455 §1.3.
        assert_eq!(upgrade.accept(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn token_lists_and_case() {
        let req = request(&format!(
            "upgrade: h2c, WebSocket\r\nconnection: keep-alive\r\nCONNECTION: UPGRADE\r\n\
             sec-websocket-key: {KEY}\r\nsec-websocket-version: 13\r\n"
        ));
        assert!(matches!(classify(&req), Ok(RequestKind::WebSocket(_))));
    }

    #[test]
    fn plain_requests() {
        assert_eq!(classify(&request("")).ok(), Some(RequestKind::Plain));
        // Upgrade to something else, or "Connection: upgrade" alone.
        assert_eq!(
            classify(&request("Upgrade: h2c\r\nConnection: Upgrade\r\n")).ok(),
            Some(RequestKind::Plain)
        );
        assert_eq!(
            classify(&request("Connection: Upgrade\r\nUpgrade: websocket/13\r\n")).ok(),
            Some(RequestKind::Plain)
        );
    }

    #[test]
    fn invalid_attempts() {
        let cases: Vec<(String, &str)> = vec![
            ("Upgrade: websocket\r\n".into(), "missing_upgrade_headers"),
            (ws("Content-Length: 5\r\n"), "upgrade_with_body"),
            (ws("Transfer-Encoding: chunked\r\n"), "upgrade_with_body"),
            (
                format!(
                    "Upgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
                ),
                "unsupported_websocket_version",
            ),
            (
                ws("Sec-WebSocket-Version: 13\r\n"),
                "unsupported_websocket_version",
            ),
            (
                format!(
                    "Upgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
                     Sec-WebSocket-Version: 8\r\n"
                ),
                "unsupported_websocket_version",
            ),
            (
                "Upgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\n".into(),
                "bad_websocket_key",
            ),
            (
                ws(&format!("Sec-WebSocket-Key: {KEY}\r\n")),
                "bad_websocket_key",
            ),
        ];
        for (extra, label) in cases {
            let err = classify(&request(&extra)).expect_err(&extra);
            assert_eq!(err.label(), label, "{extra}");
        }
        assert!(matches!(
            classify(&request(&ws("Content-Length: 0\r\n"))),
            Ok(RequestKind::WebSocket(_))
        ));
    }

    #[test]
    fn keys() {
        for good in [KEY, "AAAAAAAAAAAAAAAAAAAAAA==", "/////////////////////w=="] {
            assert!(valid_key(good.as_bytes()).is_ok(), "{good}");
        }
        for bad in [
            "",
            "dGhlIHNhbXBsZSBub25jZQ",    // unpadded
            "dGhlIHNhbXBsZSBub25jZQ=",   // half padded
            "dGhlIHNhbXBsZSBub25jZQ===", // over padded
            "dGhlIHNhbXBsZSBub25jZR==",  // trailing bits
            "dGhlIHNhbXBsZSBub25jZQ==AAAA",
            "dGhlIHNhbXBsZSBub25jZ!==",
            "dGhlIHNhbXBsZSBub25jZSE=", // 17 bytes
            "dGhlIHNhbXBsZSBub25j",     // 15 bytes
        ] {
            assert!(valid_key(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_and_method_checks() {
        let head = format!("GET / HTTP/1.0\r\nHost: h\r\n{}\r\n", ws(""));
        let req = parse_request(Bytes::from(head), 100).expect("parses");
        assert!(matches!(
            classify(&req),
            Err(HandshakeError::UnsupportedVersion { minor: 0 })
        ));
        let head = format!("POST / HTTP/1.1\r\nHost: h\r\n{}\r\n", ws(""));
        let req = parse_request(Bytes::from(head), 100).expect("parses");
        assert!(matches!(
            classify(&req),
            Err(HandshakeError::MethodNotAllowed { method }) if method == "POST"
        ));
    }

    #[test]
    fn checks_the_backend_101() {
        let upgrade = upgrade();
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        let head = parse_response_head(ok.as_bytes()).expect("parses");
        assert!(upgrade.check_response(&head).is_ok());

        let cases = [
            (
                ok.replace("101 Switching", "200 Switching"),
                "not a 101 response",
            ),
            (ok.replace("HTTP/1.1", "HTTP/1.0"), "101 over HTTP/1.0"),
            (
                ok.replace("Upgrade: websocket", "Upgrade: h2c"),
                "101 without Upgrade: websocket",
            ),
            (
                ok.replace("Connection: Upgrade", "Connection: close"),
                "101 without Connection: upgrade",
            ),
            (
                ok.replace("Sec-WebSocket-Accept", "X-Accept"),
                "101 without Sec-WebSocket-Accept",
            ),
            (ok.replace("xOo=", "xOp="), "wrong Sec-WebSocket-Accept"),
            (ok.replace("xOo=", "xOo"), "wrong Sec-WebSocket-Accept"),
            (
                ok.replace(
                    "\r\n\r\n",
                    "\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                ),
                "repeated Sec-WebSocket-Accept",
            ),
        ];
        for (answer, expected) in cases {
            let head = parse_response_head(answer.as_bytes()).expect("parses");
            match upgrade.check_response(&head) {
                Err(HandshakeError::BadBackendResponse { reason, .. }) => {
                    assert_eq!(reason, expected, "{answer}")
                }
                other => panic!("{answer}: {other:?}"),
            }
        }
    }
}
