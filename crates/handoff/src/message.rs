//! The messages of a handoff, as JSON: readable with `strace -s`. The `Hello` exchange settles
//! the version first; past it, a kind or a field this build does not know is an error, never
//! silently ignored.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One packet of the conversation (see the crate docs for the order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// The first message each way.
    Hello {
        /// [`crate::PROTOCOL_VERSION`] of the sender.
        version: u32,
        /// The sender's process id.
        pid: u32,
        /// The sender's release (`CARGO_PKG_VERSION`), for logs.
        release: String,
    },
    /// The predecessor will not hand off, and why; the conversation ends.
    Refused {
        /// Why, for the successor's log.
        reason: String,
    },
    /// The predecessor's listening sockets, one descriptor each, in this order.
    Listeners {
        /// What each descriptor is.
        listeners: Vec<ListenerMeta>,
    },
    /// The endpoint itself (one descriptor), so the path stays bound across the upgrade.
    Endpoint,
    /// The successor accepts on every listener it adopted or bound.
    Ready,
    /// The predecessor stopped accepting; it still serves `kept` connections until they end.
    Done {
        /// Connections the predecessor keeps (handshakes in flight, tunnels).
        kept: u64,
    },
}

impl Message {
    /// The message's kind, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Refused { .. } => "refused",
            Self::Listeners { .. } => "listeners",
            Self::Endpoint => "endpoint",
            Self::Ready => "ready",
            Self::Done { .. } => "done",
        }
    }

    /// How many descriptors travel with this message.
    pub fn fds(&self) -> usize {
        match self {
            Self::Listeners { listeners } => listeners.len(),
            Self::Endpoint => 1,
            _ => 0,
        }
    }
}

/// A listening socket of the predecessor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerMeta {
    /// The configured listener's name (`admin` for the admin listener).
    pub name: String,
    /// The configured address (`listen`), which may say port 0.
    pub configured: SocketAddr,
    /// The address the socket is bound to.
    pub bound: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back_and_say_their_kind_and_descriptors() {
        let listener = ListenerMeta {
            name: "ws".into(),
            configured: "0.0.0.0:0".parse().unwrap(),
            bound: "0.0.0.0:41234".parse().unwrap(),
        };
        let cases = [
            (
                Message::Hello {
                    version: 1,
                    pid: 42,
                    release: "0.1.0".into(),
                },
                "hello",
                0,
            ),
            (
                Message::Refused {
                    reason: "busy".into(),
                },
                "refused",
                0,
            ),
            (
                Message::Listeners {
                    listeners: vec![listener.clone(), listener],
                },
                "listeners",
                2,
            ),
            (Message::Endpoint, "endpoint", 1),
            (Message::Ready, "ready", 0),
            (Message::Done { kept: 7 }, "done", 0),
        ];
        for (message, kind, fds) in cases {
            let json = serde_json::to_string(&message).unwrap();
            assert!(json.contains(&format!("\"type\":\"{kind}\"")), "{json}");
            assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), message);
            assert_eq!(message.kind(), kind);
            assert_eq!(message.fds(), fds);
        }
    }

    #[test]
    fn unknown_kinds_and_fields_are_errors() {
        for json in [
            r#"{"type":"tunnels","tunnels":[]}"#,
            r#"{"type":"done","kept":1,"extra":1}"#,
            r#"{"type":"hello","version":1}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Message>(json).is_err(), "{json}");
        }
    }
}
