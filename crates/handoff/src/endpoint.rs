//! The listening handoff socket of a running sluice.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::SocketAddrUnix;

use crate::HandoffError;
use crate::channel::{Channel, seqpacket};

/// Where successors connect. Accepting is async (it waits on the runtime's reactor); the
/// conversation on an accepted [`Channel`] is blocking, for a thread of its own.
#[derive(Debug)]
pub struct Endpoint {
    /// tokio has no `SOCK_SEQPACKET` type, but its unix listener only ever calls `accept4` on
    /// its descriptor and registers it with epoll, both blind to the socket type: it serves.
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Endpoint {
    /// Binds `path` (mode 0600). A socket file left by a process that is gone is replaced; one
    /// where a process still listens is [`HandoffError::InUse`]. Needs a tokio runtime.
    pub fn bind(path: &Path) -> Result<Self, HandoffError> {
        let addr = SocketAddrUnix::new(path).map_err(|e| HandoffError::Io {
            what: "handoff socket path",
            source: e.into(),
        })?;
        if path.exists() {
            let probe = seqpacket().map_err(HandoffError::io("handoff socket"))?;
            match rustix::net::connect(&probe, &addr) {
                Ok(()) => return Err(HandoffError::InUse(path.display().to_string())),
                Err(rustix::io::Errno::CONNREFUSED) => {
                    std::fs::remove_file(path)
                        .map_err(HandoffError::io("removing a stale handoff socket"))?;
                }
                Err(e) => {
                    return Err(HandoffError::Io {
                        what: "probing the handoff socket path",
                        source: e.into(),
                    });
                }
            }
        }
        let fd = seqpacket().map_err(HandoffError::io("handoff socket"))?;
        rustix::net::bind(&fd, &addr).map_err(|e| HandoffError::Io {
            what: "binding the handoff socket",
            source: e.into(),
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            HandoffError::io("restricting the handoff socket to its owner"),
        )?;
        rustix::net::listen(&fd, 4).map_err(|e| HandoffError::Io {
            what: "listening on the handoff socket",
            source: e.into(),
        })?;
        Self::adopt(fd, path)
    }

    /// Takes over an endpoint handed over by the predecessor (already bound and listening).
    /// Needs a tokio runtime.
    pub fn adopt(fd: OwnedFd, path: &Path) -> Result<Self, HandoffError> {
        let listener = std::os::unix::net::UnixListener::from(fd);
        listener
            .set_nonblocking(true)
            .map_err(HandoffError::io("handoff socket"))?;
        let listener = tokio::net::UnixListener::from_std(listener)
            .map_err(HandoffError::io("registering the handoff socket"))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next successor; its channel is bounded by `timeout` per message. A
    /// connection from a process of another user is refused here and the wait goes on.
    pub async fn accept(&self, timeout: Duration) -> Result<Channel, HandoffError> {
        loop {
            let (stream, _) = self
                .listener
                .accept()
                .await
                .map_err(HandoffError::io("accepting on the handoff socket"))?;
            let stream = stream
                .into_std()
                .map_err(HandoffError::io("accepting on the handoff socket"))?;
            // The conversation is blocking, bounded by its timeouts.
            stream
                .set_nonblocking(false)
                .map_err(HandoffError::io("accepting on the handoff socket"))?;
            match Channel::accepted(OwnedFd::from(stream), timeout) {
                Ok(channel) => return Ok(channel),
                Err(error @ HandoffError::Foreign { .. }) => {
                    tracing::warn!(%error, "handoff refused");
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Removes the socket file (at the end of a process that handed nothing over).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl AsFd for Endpoint {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}
