//! One connected handoff socket: whole messages with their descriptors, each way, blocking
//! with a deadline (a handoff runs on a thread of its own, never on the runtime's).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
    sockopt::Timeout,
};

use crate::{HandoffError, MAX_FDS, MAX_MESSAGE, Message, PROTOCOL_VERSION};

/// A message received, with the descriptors that came with it (in order).
#[derive(Debug)]
pub struct Received {
    /// The message.
    pub message: Message,
    /// Its descriptors: exactly [`Message::fds`] of them.
    pub fds: Vec<OwnedFd>,
}

/// A connected handoff socket.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// Connects to the endpoint at `path`, with `timeout` for every later send and receive.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, HandoffError> {
        let fd = seqpacket().map_err(HandoffError::io("handoff socket"))?;
        let addr = SocketAddrUnix::new(path).map_err(|e| HandoffError::Io {
            what: "handoff socket path",
            source: e.into(),
        })?;
        rustix::net::connect(&fd, &addr).map_err(|e| HandoffError::Io {
            what: "connecting to the running sluice",
            source: e.into(),
        })?;
        let channel = Self { fd };
        channel.check_peer()?;
        channel.set_timeout(timeout)?;
        Ok(channel)
    }

    pub(crate) fn accepted(fd: OwnedFd, timeout: Duration) -> Result<Self, HandoffError> {
        let channel = Self { fd };
        channel.check_peer()?;
        channel.set_timeout(timeout)?;
        Ok(channel)
    }

    /// Refuses a peer running as another user (root may hand off to anyone and take over
    /// from anyone: it could anyway).
    fn check_peer(&self) -> Result<(), HandoffError> {
        let cred =
            rustix::net::sockopt::socket_peercred(&self.fd).map_err(|e| HandoffError::Io {
                what: "reading the peer's credentials",
                source: e.into(),
            })?;
        let ours = rustix::process::geteuid();
        if cred.uid != ours && !ours.is_root() && !cred.uid.is_root() {
            return Err(HandoffError::Foreign {
                pid: cred.pid.as_raw_nonzero().get(),
                uid: cred.uid.as_raw(),
            });
        }
        Ok(())
    }

    /// Bounds every later send and receive.
    pub fn set_timeout(&self, timeout: Duration) -> Result<(), HandoffError> {
        for which in [Timeout::Recv, Timeout::Send] {
            rustix::net::sockopt::set_socket_timeout(&self.fd, which, Some(timeout)).map_err(
                |e| HandoffError::Io {
                    what: "setting the handoff timeout",
                    source: e.into(),
                },
            )?;
        }
        Ok(())
    }

    /// Sends `message` with its descriptors, which must number [`Message::fds`].
    pub fn send(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), HandoffError> {
        if fds.len() != message.fds() || fds.len() > MAX_FDS {
            return Err(HandoffError::TooLarge(format!(
                "{} carries {} descriptors, not {} (at most {MAX_FDS})",
                message.kind(),
                fds.len(),
                message.fds()
            )));
        }
        let json =
            serde_json::to_vec(message).map_err(|e| HandoffError::Malformed(e.to_string()))?;
        if json.len() > MAX_MESSAGE {
            return Err(HandoffError::TooLarge(format!(
                "{} is {} bytes (at most {MAX_MESSAGE})",
                message.kind(),
                json.len()
            )));
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(HandoffError::TooLarge("descriptors".into()));
        }
        let sent = retry(|| {
            rustix::net::sendmsg(
                &self.fd,
                &[IoSlice::new(&json)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
        })
        .map_err(HandoffError::io("sending to the other process"))?;
        if sent != json.len() {
            // A SOCK_SEQPACKET send is all or nothing; anything else is a broken peer.
            return Err(HandoffError::Closed);
        }
        Ok(())
    }

    /// Receives the next message and its descriptors.
    pub fn recv(&self) -> Result<Received, HandoffError> {
        let mut buf = vec![0_u8; MAX_MESSAGE + 1];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = retry(|| {
            rustix::net::recvmsg(
                &self.fd,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
        })
        .map_err(HandoffError::io("receiving from the other process"))?;
        // Take the descriptors first: whatever happens next, they are owned and closed on drop.
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = message {
                fds.extend(rights);
            }
        }
        if got.bytes == 0 {
            return Err(HandoffError::Closed);
        }
        if got.flags.contains(ReturnFlags::TRUNC) || got.bytes > MAX_MESSAGE {
            return Err(HandoffError::TooLarge(format!("{} bytes", got.bytes)));
        }
        if got.flags.contains(ReturnFlags::CTRUNC) {
            return Err(HandoffError::TooLarge(
                "descriptors cut by the kernel".into(),
            ));
        }
        let message: Message = serde_json::from_slice(&buf[..got.bytes])
            .map_err(|e| HandoffError::Malformed(e.to_string()))?;
        if fds.len() != message.fds() {
            return Err(HandoffError::Malformed(format!(
                "{} came with {} descriptors, not {}",
                message.kind(),
                fds.len(),
                message.fds()
            )));
        }
        Ok(Received { message, fds })
    }

    /// Receives the next message, which must be of kind `expected`; a `Refused` is returned as
    /// [`HandoffError::Refused`].
    pub fn expect(&self, expected: &'static str) -> Result<Received, HandoffError> {
        let received = self.recv()?;
        match &received.message {
            m if m.kind() == expected => Ok(received),
            Message::Refused { reason } => Err(HandoffError::Refused(reason.clone())),
            m => Err(HandoffError::Unexpected {
                expected,
                got: m.kind(),
            }),
        }
    }

    /// Sends our `Hello` and reads the peer's (successor side), or the other way round
    /// (`first = false`: predecessor side). A peer of another version is refused (and told so,
    /// when we answer second).
    pub fn greet(&self, first: bool) -> Result<u32, HandoffError> {
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
            release: env!("CARGO_PKG_VERSION").to_owned(),
        };
        if first {
            self.send(&hello, &[])?;
        }
        let Received { message, .. } = self.expect("hello")?;
        let Message::Hello { version, pid, .. } = message else {
            unreachable!("expect checked the kind");
        };
        if version != PROTOCOL_VERSION {
            if !first {
                let reason = format!(
                    "this sluice speaks handoff protocol {PROTOCOL_VERSION}, not {version}"
                );
                let _ = self.send(&Message::Refused { reason }, &[]);
            }
            return Err(HandoffError::Version { theirs: version });
        }
        if !first {
            self.send(&hello, &[])?;
        }
        Ok(pid)
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

pub(crate) fn seqpacket() -> std::io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Runs a syscall again when a signal interrupted it; a timeout (EAGAIN from `SO_RCVTIMEO`)
/// becomes `TimedOut`.
fn retry<T>(mut call: impl FnMut() -> rustix::io::Result<T>) -> std::io::Result<T> {
    loop {
        match call() {
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the other process did not answer in time",
                ));
            }
            other => return other.map_err(Into::into),
        }
    }
}
