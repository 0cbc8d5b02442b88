//! A tunnel stopped with everything it holds, to be resumed by [`crate::resume`] in this
//! process or, its descriptors sent over a unix socket, in another one (binary upgrade).
//!
//! What a tunnel holds between two polls is small and exact: two sockets (their kernel queues
//! stay where they are), and per direction the bytes read from the source and not yet written
//! to the destination, whether the source has ended and whether that end was passed on, and
//! the byte counts so far. Bytes in flight are always in a pipe when a tunnel is suspended: a
//! splicing direction's own pipe (its count is exact, from the syscalls' return values), or,
//! for a copying direction with bytes in its buffer, a fresh pipe they are written into, so
//! whoever resumes the tunnel has one kind of pending bytes to deliver, and another process
//! gets them as descriptors, not as a message. Only if no pipe can be had (out of descriptors)
//! do the bytes stay in memory ([`Pending::Bytes`]): such a tunnel resumes here, never in
//! another process.

use std::fmt;
use std::io;

use tokio::net::TcpStream;

use crate::Side;
use crate::sys::Pipe;

/// A suspended tunnel: its sockets and each direction's state. Dropping it closes the sockets
/// (and any pipe): the tunnel ends.
#[derive(Debug)]
pub struct Suspended {
    /// The client's socket.
    pub client: TcpStream,
    /// The backend's socket.
    pub backend: TcpStream,
    /// Client → backend.
    pub client_to_backend: Held,
    /// Backend → client.
    pub backend_to_client: Held,
    /// The side whose end of stream came first, if one has (it names who closed the tunnel).
    pub first_eof: Option<Side>,
}

impl Suspended {
    /// A tunnel that has not moved a byte yet: what [`crate::relay`] starts from.
    pub fn new(client: TcpStream, backend: TcpStream) -> Self {
        Self {
            client,
            backend,
            client_to_backend: Held::default(),
            backend_to_client: Held::default(),
            first_eof: None,
        }
    }

    /// Whether everything in flight is in pipes (or nothing is): the tunnel can be handed to
    /// another process as descriptors.
    pub fn is_portable(&self) -> bool {
        !matches!(self.client_to_backend.pending, Pending::Bytes(_))
            && !matches!(self.backend_to_client.pending, Pending::Bytes(_))
    }
}

/// One direction of a suspended tunnel.
#[derive(Debug, Default)]
pub struct Held {
    /// Bytes read from the source, not yet written to the destination.
    pub pending: Pending,
    /// The source reached end of stream.
    pub read_eof: bool,
    /// End of stream was passed on (`shutdown(SHUT_WR)` on the destination): nothing more to
    /// do in this direction.
    pub done: bool,
    /// Bytes delivered by splice so far.
    pub spliced: u64,
    /// Bytes delivered through a buffer so far.
    pub copied: u64,
}

impl Held {
    /// Bytes delivered so far, both ways of moving them.
    pub fn delivered(&self) -> u64 {
        self.spliced + self.copied
    }
}

/// Bytes in flight in one direction.
#[derive(Default)]
pub enum Pending {
    /// None.
    #[default]
    Empty,
    /// In a pipe.
    Pipe(PendingPipe),
    /// In memory (no pipe could be had when the tunnel was suspended).
    Bytes(Vec<u8>),
}

impl Pending {
    /// How many bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::Pipe(pipe) => pipe.len,
            Self::Bytes(bytes) => bytes.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `bytes` in a new pipe, or in memory if no pipe that holds them can be had.
    pub(crate) fn of_bytes(bytes: &[u8]) -> Self {
        if bytes.is_empty() {
            return Self::Empty;
        }
        match PendingPipe::with_bytes(bytes) {
            Ok(pipe) => Self::Pipe(pipe),
            Err(error) => {
                tracing::debug!(%error, len = bytes.len(), "no pipe for a suspended buffer: kept in memory");
                Self::Bytes(bytes.to_vec())
            }
        }
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("Empty"),
            Self::Pipe(pipe) => write!(f, "Pipe({} bytes)", pipe.len),
            Self::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
        }
    }
}

/// A pipe holding bytes in flight, and how many.
#[derive(Debug)]
pub struct PendingPipe {
    pub(crate) pipe: Pipe,
    pub(crate) len: usize,
}

impl PendingPipe {
    /// Bytes in the pipe.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the pipe is empty (never, for a pipe a tunnel was suspended with).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A new pipe holding `bytes`.
    fn with_bytes(bytes: &[u8]) -> io::Result<Self> {
        let pipe = Pipe::new(bytes.len().next_power_of_two())?;
        let mut written = 0;
        while let Some(rest) = bytes.get(written..).filter(|rest| !rest.is_empty()) {
            match pipe.write(rest)? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => written += n,
            }
        }
        Ok(Self {
            pipe,
            len: bytes.len(),
        })
    }
}

#[cfg(target_os = "linux")]
impl PendingPipe {
    /// The pipe's read and write ends, to send to another process.
    pub fn fds(&self) -> (std::os::fd::BorrowedFd<'_>, std::os::fd::BorrowedFd<'_>) {
        self.pipe.fds()
    }

    /// A pipe received from another process, said to hold `len` bytes: refused unless the two
    /// descriptors are the two ends of one pipe holding exactly that many.
    pub fn adopt(
        read: std::os::fd::OwnedFd,
        write: std::os::fd::OwnedFd,
        len: usize,
    ) -> io::Result<Self> {
        Ok(Self {
            pipe: Pipe::adopt(read, write, len)?,
            len,
        })
    }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn buffered_bytes_go_into_a_pipe_that_says_how_many_it_holds() {
        let bytes: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let Pending::Pipe(pipe) = Pending::of_bytes(&bytes) else {
            panic!("no pipe");
        };
        assert_eq!(pipe.len(), 20_000);
        let (read, write) = pipe.fds();
        let (read, write) = (
            read.try_clone_to_owned().unwrap(),
            write.try_clone_to_owned().unwrap(),
        );
        // Received elsewhere with the right count: adopted; with another: refused.
        let (r2, w2) = (read.try_clone().unwrap(), write.try_clone().unwrap());
        assert!(PendingPipe::adopt(r2, w2, 19_999).is_err());
        let adopted = PendingPipe::adopt(read, write, 20_000).unwrap();
        let mut got = vec![0u8; 20_000];
        let n = rustix::io::read(adopted.pipe.fds().0.as_fd(), &mut got).unwrap();
        assert_eq!((n, got == bytes), (20_000, true));
    }

    #[test]
    fn a_socket_is_not_a_pipe() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::os::fd::OwnedFd::from(listener);
        let b = a.try_clone().unwrap();
        assert!(PendingPipe::adopt(a, b, 0).is_err());
    }

    #[test]
    fn nothing_pending_is_empty() {
        assert!(Pending::of_bytes(b"").is_empty());
        assert_eq!(Pending::default().len(), 0);
    }
}
