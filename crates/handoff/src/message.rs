//! The messages of a handoff, as JSON: readable with `strace -s`. The `Hello` exchange settles
//! the version first; past it, a kind or a field this build does not know is an error, never
//! silently ignored.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One packet of the conversation (see the crate docs for the order). Messages without
/// fields are written `{}` so that a field this build does not know is refused on them too.
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
    Endpoint {},
    /// The successor accepts on every listener it adopted or bound.
    Ready {},
    /// Established tunnels, suspended by the predecessor. Their descriptors follow in order,
    /// per tunnel: the client's socket, the backend's, then for each direction with bytes in
    /// flight (client → backend first) its pipe's read and write ends.
    Tunnels {
        /// What each tunnel is.
        tunnels: Vec<TunnelMeta>,
    },
    /// The successor holds the last batch's descriptors and will relay every tunnel of it but
    /// the `refused` ones (the predecessor resumes those); it touches none until `Released`.
    Adopted {
        /// Tunnels of the batch the successor cannot take, and why.
        refused: Vec<Refusal>,
    },
    /// The predecessor let go of the adopted tunnels: the successor relays them from now on.
    Released {},
    /// Counters of the predecessor, for the successor to go on from (several messages when
    /// there are many series).
    Counters {
        /// Each series with its value.
        series: Vec<CounterSeries>,
    },
    /// The predecessor stopped accepting and handed over what it could; it still serves
    /// `kept` connections until they end.
    Done {
        /// Connections the predecessor keeps (handshakes in flight, TLS tunnels, refused ones).
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
            Self::Endpoint {} => "endpoint",
            Self::Ready {} => "ready",
            Self::Tunnels { .. } => "tunnels",
            Self::Adopted { .. } => "adopted",
            Self::Released {} => "released",
            Self::Counters { .. } => "counters",
            Self::Done { .. } => "done",
        }
    }

    /// How many descriptors travel with this message.
    pub fn fds(&self) -> usize {
        match self {
            Self::Listeners { listeners } => listeners.len(),
            Self::Endpoint {} => 1,
            Self::Tunnels { tunnels } => tunnels.iter().map(TunnelMeta::fds).sum(),
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

/// An established tunnel handed over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelMeta {
    /// The listener that accepted the client.
    pub listener: String,
    /// The pool of the backend (empty when the predecessor no longer lists the backend).
    pub pool: String,
    /// The backend's address: with `pool`, the backend's identity.
    pub backend: SocketAddr,
    /// The client's address as the predecessor knew it (PROXY protocol included).
    pub client: SocketAddr,
    /// How long the tunnel has been open, in milliseconds (clocks are not compared across
    /// processes; ages are).
    pub age_ms: u64,
    /// Client → backend.
    pub client_to_backend: DirectionMeta,
    /// Backend → client.
    pub backend_to_client: DirectionMeta,
    /// The side whose end of stream came first, if one has.
    pub first_eof: Option<Peer>,
}

impl TunnelMeta {
    /// How many descriptors travel with this tunnel: two sockets, and a pipe's two ends per
    /// direction with bytes in flight.
    pub fn fds(&self) -> usize {
        2 + 2 * usize::from(self.client_to_backend.pending > 0)
            + 2 * usize::from(self.backend_to_client.pending > 0)
    }
}

/// One direction of a tunnel handed over.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectionMeta {
    /// Bytes in flight, in the pipe that travels with the tunnel (none when 0).
    pub pending: u64,
    /// The source reached end of stream.
    pub read_eof: bool,
    /// End of stream was passed on to the destination.
    pub done: bool,
    /// Bytes delivered by splice so far.
    pub spliced: u64,
    /// Bytes delivered through a buffer so far.
    pub copied: u64,
}

/// One side of a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    /// The client.
    Client,
    /// The backend.
    Backend,
}

/// One counter series of the predecessor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterSeries {
    /// The metric's name.
    pub name: String,
    /// Its labels.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: u64,
}

/// A tunnel of a batch the successor could not take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// Its index in the batch.
    pub index: usize,
    /// Why, for the predecessor's log.
    pub reason: String,
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
            (Message::Endpoint {}, "endpoint", 1),
            (Message::Ready {}, "ready", 0),
            (
                Message::Tunnels {
                    tunnels: vec![tunnel(0, 0), tunnel(10, 0), tunnel(3, 65_536)],
                },
                "tunnels",
                2 + 4 + 6,
            ),
            (
                Message::Adopted {
                    refused: vec![Refusal {
                        index: 1,
                        reason: "bad pipe".into(),
                    }],
                },
                "adopted",
                0,
            ),
            (Message::Released {}, "released", 0),
            (
                Message::Counters {
                    series: vec![CounterSeries {
                        name: "sluice_connections_accepted_total".into(),
                        labels: vec![("listener".into(), "ws".into())],
                        value: 12,
                    }],
                },
                "counters",
                0,
            ),
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

    fn tunnel(up: u64, down: u64) -> TunnelMeta {
        TunnelMeta {
            listener: "ws".into(),
            pool: "chat".into(),
            backend: "127.0.0.1:9000".parse().unwrap(),
            client: "[::1]:50000".parse().unwrap(),
            age_ms: 1234,
            client_to_backend: DirectionMeta {
                pending: up,
                ..DirectionMeta::default()
            },
            backend_to_client: DirectionMeta {
                pending: down,
                read_eof: true,
                done: false,
                spliced: 1 << 40,
                copied: 5,
            },
            first_eof: Some(Peer::Backend),
        }
    }

    #[test]
    fn unknown_kinds_and_fields_are_errors() {
        for json in [
            r#"{"type":"sockets","sockets":[]}"#,
            r#"{"type":"released","extra":1}"#,
            r#"{"type":"done","kept":1,"extra":1}"#,
            r#"{"type":"hello","version":1}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Message>(json).is_err(), "{json}");
        }
    }
}
