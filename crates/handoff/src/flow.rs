//! The two sides of the conversation, step by step (see the crate docs for the picture).

use std::collections::VecDeque;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use crate::{
    Channel, CounterSeries, HandoffError, ListenerMeta, Message, Received, Refusal, TunnelMeta,
};

/// How long a successor waits for each message of the tunnel phase.
const TUNNEL_PHASE_STEP: Duration = Duration::from_secs(60);

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
    /// listener now. The predecessor's tunnels follow ([`Inheritance::next`]).
    pub fn ready(&self) -> Result<(), HandoffError> {
        self.channel.send(&Message::Ready {}, &[])?;
        // The predecessor suspends its tunnels, and hands over those that finish their
        // handshake while it stops accepting: batches may be seconds apart.
        self.channel.set_timeout(TUNNEL_PHASE_STEP)
    }

    /// The predecessor's next batch of tunnels, each with its descriptors, or its last word.
    pub fn next(&self) -> Result<Inherited, HandoffError> {
        let Received { message, fds } = self.channel.recv()?;
        match message {
            Message::Tunnels { tunnels } => {
                let mut fds = fds.into_iter();
                let batch = tunnels
                    .into_iter()
                    .map(|meta| {
                        let own: Vec<OwnedFd> = fds.by_ref().take(meta.fds()).collect();
                        (meta, own)
                    })
                    .collect();
                Ok(Inherited::Tunnels(batch))
            }
            Message::Counters { series } => Ok(Inherited::Counters(series)),
            Message::Done { kept } => Ok(Inherited::Done { kept }),
            Message::Refused { reason } => Err(HandoffError::Refused(reason)),
            other => Err(HandoffError::Unexpected {
                expected: "tunnels or done",
                got: other.kind(),
            }),
        }
    }

    /// Tells the predecessor which tunnels of the last batch this process takes (all but
    /// `refused`) and waits until it let go of them. Only then may they be relayed here; on an
    /// error they must be closed untouched (the predecessor resumes them, or is gone).
    pub fn adopted(&self, refused: Vec<Refusal>) -> Result<(), HandoffError> {
        self.channel.send(&Message::Adopted { refused }, &[])?;
        self.channel.expect("released")?;
        Ok(())
    }
}

/// What [`Inheritance::next`] received.
#[derive(Debug)]
pub enum Inherited {
    /// A batch of tunnels, each with its descriptors in [`TunnelMeta::fds`] order.
    Tunnels(Vec<(TunnelMeta, Vec<OwnedFd>)>),
    /// Some of the predecessor's counters, to go on from.
    Counters(Vec<CounterSeries>),
    /// The predecessor is done handing over; it keeps `kept` connections until they end.
    Done {
        /// Connections the predecessor keeps.
        kept: u64,
    },
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
    channel.send(&Message::Endpoint {}, &[endpoint])?;
    // The successor now binds what it did not inherit and starts its accept loops.
    channel.set_timeout(ready_within)?;
    channel.expect("ready")?;
    Ok(Handover { channel, successor })
}

impl Handover {
    /// Predecessor side: sends a batch of suspended tunnels with their descriptors (in
    /// [`TunnelMeta::fds`] order, at most [`crate::MAX_FDS`]) and waits for the successor's
    /// answer: the tunnels it refused (keep and resume those). Then [`Handover::release`] the
    /// others. An error means the successor took nothing: resume the whole batch.
    pub fn send_tunnels(
        &self,
        tunnels: Vec<TunnelMeta>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Vec<Refusal>, HandoffError> {
        self.channel.send(&Message::Tunnels { tunnels }, fds)?;
        let Received { message, .. } = self.channel.expect("adopted")?;
        let Message::Adopted { refused } = message else {
            unreachable!("expect checked the kind");
        };
        Ok(refused)
    }

    /// Predecessor side: lets the successor relay the tunnels it adopted. Close this process's
    /// copies of their descriptors only once this succeeded; on an error, resume them.
    pub fn release(&self) -> Result<(), HandoffError> {
        self.channel.send(&Message::Released {}, &[])
    }

    /// Predecessor side: sends this process's counters for the successor to go on from, in as
    /// many messages as they need.
    pub fn send_counters(&self, series: Vec<CounterSeries>) -> Result<(), HandoffError> {
        let mut chunk = Vec::new();
        let mut size = 0;
        for one in series {
            // A generous estimate of the series' JSON: names, quotes, brackets, the value.
            let estimate = 64
                + one.name.len()
                + one
                    .labels
                    .iter()
                    .map(|(k, v)| 8 + k.len() + 2 * v.len())
                    .sum::<usize>();
            if !chunk.is_empty() && size + estimate > crate::MAX_MESSAGE / 2 {
                let full = std::mem::take(&mut chunk);
                self.channel
                    .send(&Message::Counters { series: full }, &[])?;
                size = 0;
            }
            size += estimate;
            chunk.push(one);
        }
        if !chunk.is_empty() {
            self.channel
                .send(&Message::Counters { series: chunk }, &[])?;
        }
        Ok(())
    }

    /// Predecessor side, last word: this process stopped accepting and handed over what it
    /// could; it still serves `kept` connections.
    pub fn done(self, kept: u64) -> Result<(), HandoffError> {
        self.channel.send(&Message::Done { kept }, &[])
    }
}

/// Takes the next batch off the front of `queue`: as many items, in order, as fit one
/// message's descriptors ([`crate::MAX_FDS`]; `fds` says how many an item carries), and at
/// least one.
pub fn next_batch<T>(queue: &mut VecDeque<T>, fds: impl Fn(&T) -> usize) -> Vec<T> {
    let mut batch = Vec::new();
    let mut total = 0;
    while let Some(next) = queue.front() {
        let n = fds(next);
        if !batch.is_empty() && total + n > crate::MAX_FDS {
            break;
        }
        total += n;
        batch.extend(queue.pop_front());
    }
    batch
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DirectionMeta;

    fn tunnel(pipes: bool) -> TunnelMeta {
        let pending = u64::from(pipes);
        TunnelMeta {
            listener: "ws".into(),
            pool: "p".into(),
            backend: "127.0.0.1:1".parse().unwrap(),
            client: "127.0.0.1:2".parse().unwrap(),
            age_ms: 0,
            client_to_backend: DirectionMeta {
                pending,
                ..DirectionMeta::default()
            },
            backend_to_client: DirectionMeta {
                pending,
                ..DirectionMeta::default()
            },
            first_eof: None,
            idle_ms: 0,
            half_closed_ms: None,
        }
    }

    /// Every batch of a queue, in order.
    fn all_batches(tunnels: Vec<TunnelMeta>) -> Vec<Vec<TunnelMeta>> {
        let mut queue: VecDeque<TunnelMeta> = tunnels.into();
        let mut out = Vec::new();
        while !queue.is_empty() {
            out.push(next_batch(&mut queue, TunnelMeta::fds));
        }
        out
    }

    #[test]
    fn batches_fit_the_descriptor_limit_and_keep_the_order() {
        assert!(all_batches(Vec::new()).is_empty());
        // 32 plain tunnels (2 descriptors each) fill one message exactly.
        let sizes = |b: &[Vec<TunnelMeta>]| b.iter().map(Vec::len).collect::<Vec<_>>();
        let plain: Vec<_> = (0..70).map(|_| tunnel(false)).collect();
        assert_eq!(sizes(&all_batches(plain)), [32, 32, 6]);
        // With pipes both ways a tunnel carries 6: alternating 6 and 2, 16 fill a message.
        let mut mixed: Vec<_> = (0..20).map(|i| tunnel(i % 2 == 0)).collect();
        for (i, t) in mixed.iter_mut().enumerate() {
            t.age_ms = i as u64;
        }
        let split = all_batches(mixed);
        assert_eq!(sizes(&split), [16, 4]);
        for batch in &split {
            let fds: usize = batch.iter().map(TunnelMeta::fds).sum();
            assert!(fds <= crate::MAX_FDS, "{fds}");
        }
        let order: Vec<u64> = split.iter().flatten().map(|t| t.age_ms).collect();
        assert_eq!(order, (0..20).collect::<Vec<_>>());
    }
}
