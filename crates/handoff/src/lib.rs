//! Binary upgrade: a running sluice hands its sockets to its successor.
//!
//! # The conversation
//!
//! The running process (the *predecessor*) listens on a unix socket of type `SOCK_SEQPACKET`
//! (its [`Endpoint`]); the new process (the *successor*) connects to it. Every message is one
//! packet: a JSON [`Message`] with file descriptors attached (`SCM_RIGHTS`), so a message and
//! its descriptors arrive together or not at all, and a peer that dies is seen as the end of
//! the stream. The order:
//!
//! ```text
//! successor                                   predecessor
//!   Hello{version} ───────────────────────────▶  (same version? else Refused{reason})
//!                  ◀─────────────────────────── Hello{version}
//!                  ◀─────────────────────────── Listeners{names, addresses} + listening fds
//!                  ◀─────────────────────────── Endpoint + the endpoint's own fd
//!   adopt the listeners, start accepting
//!   Ready ────────────────────────────────────▶  suspend every spliceable tunnel
//!                  ◀─────────────────────────── Tunnels{metas} + sockets and pipes   ┐ per
//!   Adopted{refused} ─────────────────────────▶                                      │ batch
//!                  ◀─────────────────────────── Released (closes its copies)         ┘
//!   relay the batch                              … stop accepting, hand over the tunnels
//!                                                  whose handshake finishes meanwhile …
//!                  ◀─────────────────────────── Counters{series} (one or more): go on from these
//!                  ◀─────────────────────────── Done{kept}: what the predecessor still serves
//! ```
//!
//! A listening socket is one kernel object however many descriptors point at it, so once the
//! successor holds a copy both processes accept from the same queue: no connection is refused
//! or lost in between. The endpoint's own descriptor travels too, so the socket path stays
//! bound across the upgrade and the successor can in turn be upgraded.
//!
//! A tunnel is two sockets and, per direction with bytes in flight, a pipe holding them (see
//! `sluice_splice::Suspended`): all descriptors, so it crosses like a listener does, its
//! kernel queues untouched. Batches hold at most [`MAX_FDS`] descriptors ([`next_batch`]).
//!
//! # Failure
//!
//! Every step is bounded in time ([`Channel::set_timeout`]). If the successor dies or refuses
//! before `Ready`, the predecessor has lost nothing: it closed none of its descriptors, and it
//! goes on serving. Descriptors are only ever *copied* across; each process closes its own
//! copies, never shuts a socket down on the other's behalf.
//!
//! A batch of tunnels changes hands in three steps so that exactly one process relays each
//! tunnel: the successor holds the descriptors but touches nothing until `Released`; the
//! predecessor sends `Released` only after `Adopted`, and closes its copies only once that
//! send succeeded. If the successor dies or goes silent before `Adopted`, the predecessor
//! resumes the batch (and every tunnel not yet sent) and keeps serving: it still accepts at
//! that point, since it stops accepting only once the tunnels it had are handed over. If the
//! predecessor goes silent before `Released`, the successor closes its copies untouched.
//! The one loss left: the successor dying after `Released` was sent and before it read it;
//! that batch's tunnels die with it, as they would a moment later.

//! # Trust
//!
//! The socket file is created mode 0600, and a peer whose user id differs from ours (root
//! excepted) is refused before a word is exchanged.
#![cfg(target_os = "linux")]

mod channel;
mod endpoint;
mod flow;
mod message;

pub use crate::channel::{Channel, Received};
pub use crate::endpoint::Endpoint;
pub use crate::flow::{Handover, Inheritance, Inherited, hand_over, next_batch, refuse, take_over};
pub use crate::message::{
    CounterSeries, DirectionMeta, ListenerMeta, Message, Peer, Refusal, TunnelMeta,
};

/// The version of the conversation this build speaks; a peer speaking another is refused.
/// 1: listening sockets only. 2: established tunnels too.
pub const PROTOCOL_VERSION: u32 = 2;

/// The most descriptors one message carries (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_FDS: usize = 64;

/// The largest message, in bytes of JSON.
pub const MAX_MESSAGE: usize = 60 * 1024;

/// What can go wrong in a handoff.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The peer closed the conversation.
    #[error("the other process closed the handoff socket")]
    Closed,
    /// The peer sent something this version cannot read.
    #[error("unreadable message: {0}")]
    Malformed(String),
    /// The peer sent a valid message out of turn.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What the protocol expected here.
        expected: &'static str,
        /// The message's kind.
        got: &'static str,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version {theirs} is not this build's {PROTOCOL_VERSION}")]
    Version {
        /// The peer's version.
        theirs: u32,
    },
    /// The peer refused the handoff and said why.
    #[error("refused: {0}")]
    Refused(String),
    /// The peer runs as another user.
    #[error("peer process {pid} runs as uid {uid}, not ours")]
    Foreign {
        /// The peer's pid.
        pid: i32,
        /// The peer's user id.
        uid: u32,
    },
    /// A message would exceed [`MAX_MESSAGE`] bytes or [`MAX_FDS`] descriptors.
    #[error("message too large: {0}")]
    TooLarge(String),
    /// The socket path is taken by a live process.
    #[error("{0}: another process is listening there (a running sluice? use --upgrade-from)")]
    InUse(String),
}

impl HandoffError {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { what, source }
    }
}
