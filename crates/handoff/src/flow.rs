//! The two sides of the conversation, step by step (see the crate docs for the picture).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use crate::{Channel, HandoffError, ListenerMeta, Message, Received};

/// What a successor received from its predecessor, before it said `Ready`.
#[derive(Debug)]
pub struct Inheritance {
    channel: Channel,
    /// The predecessor's process id.
    pub predecessor: u32,
    /// The predecessor's listening sockets.
    pub listeners: Vec<(ListenerMeta, OwnedFd)>,
    /// The handoff endpoint's own socket (bound and listening), for [`crate::Endpoint::adopt`].
    pub endpoint: OwnedFd,
}

/// Successor side, first half: connects to the running sluice at `path` and receives its
/// listening sockets. Nothing changes for the predecessor until [`Inheritance::ready`]; if this
/// process dies first, the predecessor goes on as before.
pub fn take_over(path: &Path, timeout: Duration) -> Result<Inheritance, HandoffError> {
    let channel = Channel::connect(path, timeout)?;
    let predecessor = channel.greet(true)?;
    let Received { message, fds } = channel.expect("listeners")?;
    let Message::Listeners { listeners } = message else {
        unreachable!("expect checked the kind");
    };
    let listeners = listeners.into_iter().zip(fds).collect();
    let Received { mut fds, .. } = channel.expect("endpoint")?;
    let endpoint = fds.pop().ok_or(HandoffError::Closed)?;
    Ok(Inheritance {
        channel,
        predecessor,
        listeners,
        endpoint,
    })
}

impl Inheritance {
    /// Successor side, second half: tells the predecessor that this process accepts on every
    /// listener now, and waits until the predecessor has stopped accepting. Returns how many
    /// connections the predecessor still serves (they end there).
    pub fn ready(&self) -> Result<u64, HandoffError> {
        self.channel.send(&Message::Ready, &[])?;
        let Received { message, .. } = self.channel.expect("done")?;
        let Message::Done { kept } = message else {
            unreachable!("expect checked the kind");
        };
        Ok(kept)
    }
}

/// Predecessor side: the conversation up to the successor's `Ready`.
#[derive(Debug)]
pub struct Handover {
    channel: Channel,
    /// The successor's process id.
    pub successor: u32,
}

/// Predecessor side, first half: greets the successor on an accepted channel and sends it the
/// listening sockets and the endpoint, then waits for its `Ready`. Any error leaves this
/// process as it was: it closed nothing.
pub fn hand_over(
    channel: Channel,
    listeners: &[(ListenerMeta, BorrowedFd<'_>)],
    endpoint: BorrowedFd<'_>,
    ready_within: Duration,
) -> Result<Handover, HandoffError> {
    let successor = channel.greet(false)?;
    let (metas, fds): (Vec<_>, Vec<_>) = listeners.iter().cloned().unzip();
    channel.send(&Message::Listeners { listeners: metas }, &fds)?;
    channel.send(&Message::Endpoint, &[endpoint])?;
    // The successor now binds what it did not inherit and starts its accept loops.
    channel.set_timeout(ready_within)?;
    channel.expect("ready")?;
    Ok(Handover { channel, successor })
}

impl Handover {
    /// Predecessor side, second half: once this process stopped accepting, tells the successor
    /// so, with the number of connections it still serves.
    pub fn done(self, kept: u64) -> Result<(), HandoffError> {
        self.channel.send(&Message::Done { kept }, &[])
    }
}

/// Predecessor side: turns a successor away (a shutdown or another handoff is under way),
/// telling it why once it said hello.
pub fn refuse(channel: Channel, reason: &str) {
    if channel.expect("hello").is_ok() {
        let _ = channel.send(
            &Message::Refused {
                reason: reason.to_owned(),
            },
            &[],
        );
    }
}
