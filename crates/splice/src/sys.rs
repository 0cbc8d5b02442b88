//! The kernel pipe and the two `splice(2)` calls the relay makes with it, through rustix's safe
//! wrappers: no `unsafe` here.
//!
//! A [`Pipe`] knows nothing about how many bytes it holds; its owner ([`crate::pool::PooledPipe`])
//! counts them from the return values, because the kernel cannot be asked cheaply and because the
//! EAGAIN of `splice(socket → pipe)` is ambiguous (socket empty *or* pipe full).
//!
//! Off Linux the type exists but cannot be built ([`Pipe::new`] fails with `Unsupported`), so the
//! pool and the relay compile everywhere and simply never splice.

use std::io;

#[cfg(target_os = "linux")]
pub(crate) use linux::Pipe;
#[cfg(not(target_os = "linux"))]
pub(crate) use other::Pipe;

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with};

    /// `SPLICE_F_MOVE` is a hint (pages are moved when possible); `SPLICE_F_NONBLOCK` makes the
    /// *pipe* side non-blocking. The socket side is non-blocking because tokio opened it so.
    /// These are the flags HAProxy uses in `raw_sock_to_pipe` / `raw_sock_from_pipe`.
    const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

    /// One kernel pipe: `pipe2(O_NONBLOCK | O_CLOEXEC)`, both ends owned, closed on drop.
    #[derive(Debug)]
    pub(crate) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        capacity: usize,
    }

    impl Pipe {
        /// A new pipe, asked to hold `size` bytes (`F_SETPIPE_SZ`; 0 keeps the kernel default).
        ///
        /// A refused resize is not an error: past `fs.pipe-user-pages-soft` an unprivileged user
        /// gets `EPERM` (and new pipes shrink to two pages), and sizes over `fs.pipe-max-size`
        /// are refused too. The pipe keeps the size it has; [`Pipe::capacity`] reports it.
        pub(crate) fn new(size: usize) -> io::Result<Self> {
            let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
            let granted = if size == 0 {
                None
            } else {
                fcntl_setpipe_size(&write, size).ok()
            };
            let capacity = match granted {
                Some(capacity) => capacity,
                None => fcntl_getpipe_size(&write)?,
            };
            Ok(Self {
                read,
                write,
                capacity,
            })
        }

        /// What the pipe can hold, in bytes, as the kernel reports it.
        pub(crate) fn capacity(&self) -> usize {
            self.capacity
        }

        /// Asks the kernel to let the pipe hold `size` bytes (`F_SETPIPE_SZ`). On success the
        /// pipe holds what the kernel granted (whole pages, a power of two of them); on an
        /// error (`EPERM` past `fs.pipe-user-pages-soft` or over `fs.pipe-max-size` without
        /// `CAP_SYS_RESOURCE`, `EBUSY` if the pipe holds more than `size`) it keeps its size.
        pub(crate) fn resize(&mut self, size: usize) -> io::Result<usize> {
            self.capacity = fcntl_setpipe_size(&self.write, size)?;
            Ok(self.capacity)
        }

        /// A pipe received from another process (`read` and `write` ends), holding `len` bytes:
        /// checked to be a pipe holding exactly that many (`FIONREAD`), so a wrong descriptor
        /// or count is refused here, not found out as lost bytes later.
        pub(crate) fn adopt(read: OwnedFd, write: OwnedFd, len: usize) -> io::Result<Self> {
            let capacity = fcntl_getpipe_size(&write)?;
            if fcntl_getpipe_size(&read)? != capacity {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the two descriptors are not one pipe",
                ));
            }
            let held = rustix::io::ioctl_fionread(&read)?;
            if usize::try_from(held).ok() != Some(len) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the pipe holds {held} bytes, not {len}"),
                ));
            }
            Ok(Self {
                read,
                write,
                capacity,
            })
        }

        /// The read and write ends.
        pub(crate) fn fds(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
            (self.read.as_fd(), self.write.as_fd())
        }

        /// `write(2)` into the pipe: bytes that were in a copy buffer, put where a pipe's
        /// bytes would be. Returns how many the pipe took (it never blocks).
        pub(crate) fn write(&self, bytes: &[u8]) -> io::Result<usize> {
            Ok(rustix::io::write(&self.write, bytes)?)
        }

        /// `splice(src → pipe)`: at most `max` bytes. `Ok(0)` is end of stream on `src`.
        ///
        /// `WouldBlock` means "socket empty" **only if the pipe was empty**; on a pipe holding
        /// data it may as well mean "pipe full". Callers only fill an empty pipe.
        pub(crate) fn fill_from(&self, src: impl AsFd, max: usize) -> io::Result<usize> {
            Ok(rustix::pipe::splice(
                src,
                None,
                &self.write,
                None,
                max,
                FLAGS,
            )?)
        }

        /// `splice(pipe → dst)`: at most `len` bytes, which must not exceed what the pipe holds
        /// (then `WouldBlock` can only mean "socket send buffer full").
        pub(crate) fn drain_to(&self, dst: impl AsFd, len: usize) -> io::Result<usize> {
            Ok(rustix::pipe::splice(
                &self.read, None, dst, None, len, FLAGS,
            )?)
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod other {
    use std::io;

    #[derive(Debug)]
    enum Never {}

    /// Uninhabited off Linux: no pipe is ever created, so nothing is ever spliced.
    #[derive(Debug)]
    pub(crate) struct Pipe {
        never: Never,
    }

    impl Pipe {
        pub(crate) fn new(_size: usize) -> io::Result<Self> {
            Err(io::ErrorKind::Unsupported.into())
        }

        pub(crate) fn capacity(&self) -> usize {
            match self.never {}
        }

        pub(crate) fn resize(&mut self, _size: usize) -> io::Result<usize> {
            match self.never {}
        }

        pub(crate) fn write(&self, _bytes: &[u8]) -> io::Result<usize> {
            match self.never {}
        }
    }
}

/// Whether `e` says "try again later" (EAGAIN / EWOULDBLOCK).
pub(crate) fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn default_size_pipe_reports_its_capacity() {
        let pipe = Pipe::new(0).unwrap();
        // The kernel default is 16 pages, unless this user is past its pipe budget (2 pages).
        assert!(pipe.capacity() >= 4096, "capacity {}", pipe.capacity());
    }

    #[test]
    fn resize_is_granted_or_tolerated() {
        let pipe = Pipe::new(256 * 1024).unwrap();
        let default = Pipe::new(0).unwrap().capacity();
        // Granted (rounded to a power of two of pages), or refused and left at the default.
        assert!(
            pipe.capacity() == 256 * 1024 || pipe.capacity() == default,
            "capacity {}",
            pipe.capacity()
        );
        // An absurd size is refused (EPERM or EINVAL), never an error for the caller.
        let huge = Pipe::new(1 << 40).unwrap();
        assert!(huge.capacity() >= 4096);
    }

    #[test]
    fn resize_grows_an_empty_pipe_or_keeps_its_size() {
        let mut pipe = Pipe::new(0).unwrap();
        let before = pipe.capacity();
        match pipe.resize(1024 * 1024) {
            Ok(granted) => assert_eq!((granted, pipe.capacity()), (1024 * 1024, 1024 * 1024)),
            Err(_) => assert_eq!(pipe.capacity(), before),
        }
        // Shrinking an empty pipe back is always allowed.
        assert_eq!(pipe.resize(before).unwrap(), before);
    }

    #[test]
    fn empty_socket_into_empty_pipe_would_block() {
        let (a, _b) = socket_pair();
        let pipe = Pipe::new(0).unwrap();
        let err = pipe.fill_from(&a, pipe.capacity()).unwrap_err();
        assert!(would_block(&err), "{err}");
    }

    #[test]
    fn empty_pipe_into_socket_would_block() {
        let (a, _b) = socket_pair();
        let pipe = Pipe::new(0).unwrap();
        let err = pipe.drain_to(&a, 1).unwrap_err();
        assert!(would_block(&err), "{err}");
    }

    #[test]
    fn bytes_go_socket_to_pipe_to_socket() {
        let (mut src_peer, src) = socket_pair();
        let (dst, mut dst_peer) = socket_pair();
        let pipe = Pipe::new(0).unwrap();
        src_peer.write_all(b"through the pipe").unwrap();

        let mut spliced = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while spliced < 16 {
            match pipe.fill_from(&src, pipe.capacity()) {
                Ok(n) => spliced += n,
                Err(e) if would_block(&e) => assert!(std::time::Instant::now() < deadline),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(spliced, 16);
        assert_eq!(pipe.drain_to(&dst, spliced).unwrap(), 16);

        dst_peer.set_nonblocking(false).unwrap();
        let mut got = [0u8; 16];
        dst_peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"through the pipe");
    }

    #[test]
    fn end_of_stream_reads_as_zero() {
        let (src_peer, src) = socket_pair();
        drop(src_peer);
        let pipe = Pipe::new(0).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match pipe.fill_from(&src, pipe.capacity()) {
                Ok(n) => {
                    assert_eq!(n, 0);
                    break;
                }
                Err(e) if would_block(&e) => assert!(std::time::Instant::now() < deadline),
                Err(e) => panic!("{e}"),
            }
        }
    }
}
