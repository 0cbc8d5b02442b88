//! One direction of a tunnel (source → destination) as a poll-driven state machine.
//!
//! ```text
//!          source readable: take a pipe            bytes pending (pipe or buffer)
//!   dry ───────────────────────────────────▶ read ─────────────────────────────▶ write
//!    ▲     (Auto/Splice) or a buffer (Copy)   │ ▲                                  │
//!    │                                        │ └──────── all written out ─────────┘
//!    └── source would block: give both back ──┘
//!
//!   read 0 bytes ──▶ write out the rest ──▶ shutdown(SHUT_WR) on the destination ──▶ done
//!   any I/O error ──▶ the tunnel ends (a pipe still holding bytes is closed, not pooled)
//! ```
//!
//! Each poll loops: write out what is pending (pipe or buffer), pass end of stream on when the
//! source ended and nothing is pending, else read once more, through a pipe or a buffer. It
//! returns `Pending` when the destination is full, when the source is empty (then the direction
//! gives its pipe and buffer back: it is *dry*), or after [`OPS_PER_POLL`] reads (then it wakes
//! itself, so one busy direction cannot starve the other or the timers). The pipe/buffer choice
//! is made before each read, only when nothing is pending, so a switch never reorders bytes.
//!
//! Readiness is tokio's, and only true EAGAINs clear it: `poll_read_ready` / `poll_write_ready`
//! register interest, `try_io` clears readiness when the syscall says `WouldBlock`. A socket →
//! pipe splice only ever runs on an **empty** pipe, so its EAGAIN can only mean "socket empty";
//! pipe → socket moves exactly the bytes counted in the pipe, so its EAGAIN can only mean
//! "socket full". A short splice read is *not* taken as "socket drained" (tokio does that for
//! `read`): the pipe may have run out of slots with data still queued, and clearing readiness
//! then would stall the direction; the next read finds out with one EAGAIN.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::buffer::Buf;
use crate::error::RelayError;
use crate::policy::Policy;
use crate::pool::{PipePool, PooledPipe};
use crate::stats::STATS;
use crate::suspend::{Held, Pending, PendingPipe};
use crate::{RelayMode, Side};

/// Reads a direction makes per poll before yielding to the rest of the task.
pub(crate) const OPS_PER_POLL: u32 = 16;
/// Consecutive splice reads that (nearly) filled the pipe before the direction asks to grow it:
/// the source has more queued than the pipe takes, so a larger pipe saves syscalls.
pub(crate) const FULL_FILLS_TO_GROW: u8 = 2;

/// One direction of a tunnel, `from` its source side to the other.
#[derive(Debug)]
pub(crate) struct Direction<'p> {
    from: Side,
    mode: RelayMode,
    /// Sizes and offsets in the buffer are `u32` (a relay buffer is at most 4 GiB; sluice's at
    /// most 1 MiB): 16 bytes less per direction, in every idle tunnel's task.
    buffer_size: u32,
    pool: Option<&'p PipePool>,
    policy: Policy,
    /// The copy buffer, held only while bytes sit in it (`start..end`) or a read is under way.
    buf: Option<Buf>,
    start: u32,
    end: u32,
    /// The pipe, held only while splicing a burst.
    pipe: Option<PooledPipe<'p>>,
    /// The pool refused a pipe during this burst: copy until the source runs dry.
    refused: bool,
    /// Consecutive splice reads that filled at least three quarters of the pipe.
    full_fills: u8,
    /// Growing the pipe was tried and refused (budget or kernel) during this burst.
    grow_refused: bool,
    /// This direction has moved bulk through a grown pipe: ask the pool for a grown one first.
    bulk: bool,
    /// Bytes were written since the last flush (matters for TLS writers, not TCP).
    need_flush: bool,
    read_eof: bool,
    done: bool,
    /// The other direction is done: between two TCP sockets this one's end of stream goes
    /// with the close that ends the tunnel, not with a `shutdown` of its own.
    other_done: bool,
    spliced: u64,
    copied: u64,
}

/// What one poll of a direction moved, for [`Direction::flush`]: kept by the poll's caller,
/// not in the direction, whose size every idle tunnel pays twice.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    spliced: u64,
    copied: u64,
    splice_calls: u64,
    fallbacks: u64,
    read: bool,
}

impl<'p> Direction<'p> {
    /// A direction reading from `from`. `buffer_size` must be at least 1. Without a pool it
    /// only copies.
    pub(crate) fn new(
        from: Side,
        mode: RelayMode,
        buffer_size: usize,
        pool: Option<&'p PipePool>,
    ) -> Self {
        Self {
            from,
            mode,
            buffer_size: offset(buffer_size.max(1)),
            pool,
            policy: Policy::default(),
            buf: None,
            start: 0,
            end: 0,
            pipe: None,
            refused: false,
            full_fills: 0,
            grow_refused: false,
            bulk: false,
            need_flush: false,
            read_eof: false,
            done: false,
            other_done: false,
            spliced: 0,
            copied: 0,
        }
    }

    /// A direction taking up where a suspended one stopped: its pending bytes are written
    /// first (a pipe joins `pool`), then it goes on as any other.
    pub(crate) fn resumed(
        from: Side,
        mode: RelayMode,
        buffer_size: usize,
        pool: Option<&'p PipePool>,
        held: Held,
    ) -> Self {
        let mut dir = Self::new(from, mode, buffer_size, pool);
        dir.read_eof = held.read_eof;
        dir.done = held.done;
        dir.spliced = held.spliced;
        dir.copied = held.copied;
        match held.pending {
            Pending::Empty => {}
            Pending::Pipe(pending) => match pool {
                Some(pool) => dir.pipe = Some(pool.adopt(pending.pipe, pending.len)),
                // A copy-only relay cannot drain a pipe: it never resumes a suspended tunnel.
                None => debug_assert!(false, "a pipe resumed without a pool"),
            },
            Pending::Bytes(bytes) => {
                let mut buf = Buf::take(buffer_size.max(bytes.len()));
                if let Some(room) = buf.as_mut_slice().get_mut(..bytes.len()) {
                    room.copy_from_slice(&bytes);
                    dir.end = offset(bytes.len());
                }
                dir.buf = Some(buf);
            }
        }
        dir
    }

    /// The direction's state between two polls, to resume later or elsewhere: the pipe's
    /// bytes stay in their pipe, a buffer's go into a new one ([`Pending::of_bytes`]). The
    /// direction is left holding nothing.
    pub(crate) fn suspend(&mut self) -> Held {
        let pending = match self.pipe.take().and_then(PooledPipe::detach) {
            Some((pipe, len)) => Pending::Pipe(PendingPipe { pipe, len }),
            None => {
                let bytes = self.buf.take().and_then(|b| {
                    b.as_slice()
                        .get(at(self.start)..at(self.end))
                        .map(Pending::of_bytes)
                });
                bytes.unwrap_or_default()
            }
        };
        (self.start, self.end) = (0, 0);
        Held {
            pending,
            read_eof: self.read_eof,
            done: self.done,
            spliced: self.spliced,
            copied: self.copied,
        }
    }

    /// The side this direction reads from.
    pub(crate) fn from(&self) -> Side {
        self.from
    }

    /// The source reached end of stream (whatever is pending may still be on its way).
    pub(crate) fn read_eof(&self) -> bool {
        self.read_eof
    }

    /// End of stream was passed on to the destination: nothing more to do.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Tells the direction whether the other one is done (before each poll).
    pub(crate) fn set_other_done(&mut self, done: bool) {
        self.other_done = done;
    }

    /// Bytes delivered by splice, as of the last flush.
    pub(crate) fn spliced(&self) -> u64 {
        self.spliced
    }

    /// Bytes delivered through a buffer, as of the last flush.
    pub(crate) fn copied(&self) -> u64 {
        self.copied
    }

    /// Publishes what a poll moved (`d`) to the tunnel's `traffic` counter and the process
    /// stats. Returns whether any byte was read or written.
    pub(crate) fn flush(&mut self, d: Delta, traffic: &AtomicU64) -> bool {
        let moved = d.spliced + d.copied;
        if moved > 0 {
            traffic.fetch_add(moved, Relaxed);
            self.spliced += d.spliced;
            self.copied += d.copied;
            if d.spliced > 0 {
                STATS.spliced_bytes.fetch_add(d.spliced, Relaxed);
            }
            if d.copied > 0 {
                STATS.copied_bytes.fetch_add(d.copied, Relaxed);
            }
        }
        if d.splice_calls > 0 {
            STATS.splice_calls.fetch_add(d.splice_calls, Relaxed);
        }
        if d.fallbacks > 0 {
            STATS.copy_fallbacks.fetch_add(d.fallbacks, Relaxed);
        }
        moved > 0 || d.read
    }

    /// Moves bytes through a buffer only, between any streams. `Ready(Ok(()))` once end of
    /// stream has been passed on.
    pub(crate) fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        delta: &mut Delta,
        src: &mut R,
        dst: &mut W,
    ) -> Poll<Result<(), RelayError>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut budget = OPS_PER_POLL;
        loop {
            ready!(self.poll_write_buf(cx, delta, dst))?;
            if self.read_eof {
                return self.poll_finish(cx, dst);
            }
            if !spend(&mut budget, cx) {
                return Poll::Pending;
            }
            match self.poll_read_buf(cx, src) {
                Poll::Pending => return self.park(cx, dst),
                Poll::Ready(n) => self.on_read(delta, n?),
            }
        }
    }

    /// Moves bytes between two TCP sockets: spliced or copied per the mode, the policy and the
    /// pool. `Ready(Ok(()))` once end of stream has been passed on.
    #[cfg(target_os = "linux")]
    pub(crate) fn poll_tcp(
        &mut self,
        cx: &mut Context<'_>,
        delta: &mut Delta,
        src: &mut tokio::net::TcpStream,
        dst: &mut tokio::net::TcpStream,
    ) -> Poll<Result<(), RelayError>> {
        let mut budget = OPS_PER_POLL;
        loop {
            ready!(self.poll_drain_pipe(cx, delta, dst))?;
            ready!(self.poll_write_buf(cx, delta, dst))?;
            if self.read_eof && self.other_done {
                // The tunnel ends now and closes both sockets: the close sends the FIN a
                // `shutdown` would (both receive queues were read to their end, so it is a
                // FIN, not a reset), one syscall fewer per connection.
                self.pipe = None;
                self.buf = None;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if self.read_eof {
                return self.poll_finish(cx, dst);
            }
            if !spend(&mut budget, cx) {
                return Poll::Pending;
            }
            if !self.wants_pipe() {
                // Empty here (drained above): back to the pool.
                self.pipe = None;
            } else if self.pipe.is_none() {
                // Take a pipe only once the source has data: a dry direction holds none.
                match src.poll_read_ready(cx) {
                    Poll::Pending => return self.park(cx, dst),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(read_error(self.from, e))),
                    Poll::Ready(Ok(())) => {}
                }
                self.policy.on_ready();
                if self.wants_pipe() {
                    self.take_pipe(delta);
                }
            }
            let from = self.from;
            let read = match self.pipe.as_mut() {
                Some(pipe) => {
                    // Empty here: the moment to grow it, if the last fills filled it.
                    if self.full_fills >= FULL_FILLS_TO_GROW && !self.grow_refused {
                        self.full_fills = 0;
                        if pipe.grow() {
                            self.bulk = true;
                        } else {
                            self.grow_refused = !pipe.is_grown();
                        }
                    }
                    let filled = poll_fill(cx, pipe, src, delta).map_err(|e| read_error(from, e));
                    if let Poll::Ready(Ok(n)) = filled {
                        let capacity = pipe.capacity();
                        self.full_fills = if n >= capacity - capacity / 4 {
                            self.full_fills.saturating_add(1)
                        } else {
                            0
                        };
                    }
                    filled
                }
                None => self.poll_read_buf(cx, src),
            };
            match read {
                Poll::Pending => return self.park(cx, dst),
                Poll::Ready(n) => self.on_read(delta, n?),
            }
        }
    }

    /// Off Linux, TCP sockets are copied like any stream.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn poll_tcp(
        &mut self,
        cx: &mut Context<'_>,
        delta: &mut Delta,
        src: &mut tokio::net::TcpStream,
        dst: &mut tokio::net::TcpStream,
    ) -> Poll<Result<(), RelayError>> {
        self.poll_copy(cx, delta, src, dst)
    }

    /// Whether the next read should go through a pipe.
    #[cfg(target_os = "linux")]
    fn wants_pipe(&self) -> bool {
        let by_mode = match self.mode {
            RelayMode::Copy => false,
            RelayMode::Splice => true,
            RelayMode::Auto => self.policy.streamer(),
        };
        by_mode && !self.refused && self.pool.is_some()
    }

    /// Borrows a pipe for this burst, or records the fallback to copying.
    #[cfg(target_os = "linux")]
    fn take_pipe(&mut self, delta: &mut Delta) {
        match self.pool.and_then(|pool| pool.get(self.bulk)) {
            Some(pipe) => {
                // The buffer is empty here (written out before any read).
                self.buf = None;
                self.pipe = Some(pipe);
            }
            None => {
                delta.fallbacks += 1;
                self.refused = true;
                // Auto: wait for another run of large reads before asking again.
                self.policy.reset();
            }
        }
    }

    /// Writes the pipe out. `Ready(Ok)` when the pipe is empty (or there is none).
    #[cfg(target_os = "linux")]
    fn poll_drain_pipe(
        &mut self,
        cx: &mut Context<'_>,
        delta: &mut Delta,
        dst: &tokio::net::TcpStream,
    ) -> Poll<Result<(), RelayError>> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let from = self.from;
        poll_drain(cx, pipe, dst, delta).map_err(|e| write_error(from, e))
    }

    /// Writes the buffer out. `Ready(Ok)` when nothing is left in it.
    fn poll_write_buf<W>(
        &mut self,
        cx: &mut Context<'_>,
        delta: &mut Delta,
        dst: &mut W,
    ) -> Poll<Result<(), RelayError>>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        while self.start < self.end {
            let Some(chunk) = self
                .buf
                .as_ref()
                .and_then(|b| b.as_slice().get(at(self.start)..at(self.end)))
            else {
                break;
            };
            match ready!(Pin::new(&mut *dst).poll_write(cx, chunk)) {
                Ok(0) => {
                    let e = io::ErrorKind::WriteZero.into();
                    return Poll::Ready(Err(write_error(self.from, e)));
                }
                Ok(n) => {
                    let n = n.min(chunk.len());
                    self.start += offset(n);
                    delta.copied += widen(n);
                    self.need_flush = true;
                }
                Err(e) => return Poll::Ready(Err(write_error(self.from, e))),
            }
        }
        self.start = 0;
        self.end = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads once into the buffer, taking one if needed; gives it back if the source is dry.
    fn poll_read_buf<R>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
    ) -> Poll<Result<usize, RelayError>>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        let size = at(self.buffer_size);
        let buf = self.buf.get_or_insert_with(|| Buf::take(size));
        let mut read = ReadBuf::new(buf.as_mut_slice());
        let polled = Pin::new(src).poll_read(cx, &mut read);
        let n = read.filled().len();
        match polled {
            Poll::Pending => {
                self.buf = None;
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(read_error(self.from, e))),
            Poll::Ready(Ok(())) => {
                self.start = 0;
                self.end = offset(n);
                if n == 0 {
                    self.buf = None;
                }
                Poll::Ready(Ok(n))
            }
        }
    }

    /// Accounts a read of `n` bytes (0: end of stream).
    fn on_read(&mut self, delta: &mut Delta, n: usize) {
        if n == 0 {
            self.read_eof = true;
            return;
        }
        delta.read = true;
        if self.mode == RelayMode::Auto {
            let before = self.policy.streamer();
            self.policy.on_read(n, at(self.buffer_size));
            if self.policy.streamer() != before {
                tracing::trace!(from = %self.from, splice = !before, "auto relay switched");
            }
        }
    }

    /// The source is dry and nothing is pending: give pipe and buffer back, flush, wait.
    fn park<W>(&mut self, cx: &mut Context<'_>, dst: &mut W) -> Poll<Result<(), RelayError>>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        debug_assert!(self.pipe.as_ref().is_none_or(PooledPipe::is_empty));
        debug_assert!(self.start == self.end);
        self.pipe = None;
        self.buf = None;
        self.refused = false;
        self.full_fills = 0;
        self.grow_refused = false;
        self.policy.on_dry();
        if self.need_flush {
            match Pin::new(dst).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.need_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(write_error(self.from, e))),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Passes end of stream on: flush, then `shutdown(SHUT_WR)` (or the stream's equivalent).
    fn poll_finish<W>(&mut self, cx: &mut Context<'_>, dst: &mut W) -> Poll<Result<(), RelayError>>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        self.pipe = None;
        self.buf = None;
        if self.need_flush {
            if let Err(e) = ready!(Pin::new(&mut *dst).poll_flush(cx)) {
                return Poll::Ready(Err(write_error(self.from, e)));
            }
            self.need_flush = false;
        }
        match ready!(Pin::new(dst).poll_shutdown(cx)) {
            Ok(()) => {}
            // The peer is already gone; the other direction, if still running, will say how.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
            Err(source) => {
                return Poll::Ready(Err(RelayError::Shutdown {
                    side: self.from.peer(),
                    source,
                }));
            }
        }
        self.done = true;
        Poll::Ready(Ok(()))
    }
}

/// Reading from `from` failed.
fn read_error(from: Side, source: io::Error) -> RelayError {
    RelayError::Read { side: from, source }
}

/// Writing what came `from` one side to the other side failed.
fn write_error(from: Side, source: io::Error) -> RelayError {
    RelayError::Write {
        side: from.peer(),
        source,
    }
}

/// Takes one unit of the per-poll budget; when none is left, schedules another poll.
fn spend(budget: &mut u32, cx: &mut Context<'_>) -> bool {
    if *budget == 0 {
        cx.waker().wake_by_ref();
        return false;
    }
    *budget -= 1;
    true
}

/// Splices from `src` into the (empty) pipe: one read. `Pending` only on a true "socket empty".
#[cfg(target_os = "linux")]
fn poll_fill(
    cx: &mut Context<'_>,
    pipe: &mut PooledPipe<'_>,
    src: &tokio::net::TcpStream,
    delta: &mut Delta,
) -> Poll<io::Result<usize>> {
    use tokio::io::Interest;
    loop {
        ready!(src.poll_read_ready(cx))?;
        let res = src.try_io(Interest::READABLE, || {
            delta.splice_calls += 1;
            pipe.fill_from(src)
        });
        match res {
            Err(e) if crate::sys::would_block(&e) || interrupted(&e) => {}
            res => return Poll::Ready(res),
        }
    }
}

/// Splices the whole pipe into `dst`. `Pending` only on a true "socket full".
#[cfg(target_os = "linux")]
fn poll_drain(
    cx: &mut Context<'_>,
    pipe: &mut PooledPipe<'_>,
    dst: &tokio::net::TcpStream,
    delta: &mut Delta,
) -> Poll<io::Result<()>> {
    use tokio::io::Interest;
    while !pipe.is_empty() {
        ready!(dst.poll_write_ready(cx))?;
        let res = dst.try_io(Interest::WRITABLE, || {
            delta.splice_calls += 1;
            pipe.drain_to(dst)
        });
        match res {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => delta.spliced += widen(n),
            Err(e) if crate::sys::would_block(&e) || interrupted(&e) => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

/// EINTR: retry (the readiness was not consumed).
#[cfg(target_os = "linux")]
fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

/// `usize` → `u64`, lossless on every target Rust supports (pointers are at most 64 bits).
fn widen(n: usize) -> u64 {
    n as u64
}

/// A buffer offset or size as the direction keeps it. Buffers are never 4 GiB (sizes are
/// capped here, and a buffer holds at most one read or one suspended buffer's bytes).
fn offset(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A kept offset or size as an index.
fn at(n: u32) -> usize {
    n as usize
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use std::future::poll_fn;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = TcpStream::connect(listener.local_addr().unwrap());
        let (a, b) = tokio::join!(connect, listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// Polls the direction and a reader of its destination together until the reader has
    /// `len` bytes; returns them.
    async fn pump(
        dir: &mut Direction<'_>,
        src: &mut TcpStream,
        dst: &mut TcpStream,
        reader: &mut TcpStream,
        len: usize,
    ) -> Vec<u8> {
        let mut got = vec![0u8; len];
        let mut filled = 0;
        let mut rest = std::pin::pin!(async {
            while filled < got.len() {
                filled += reader.read(&mut got[filled..]).await.unwrap();
            }
        });
        poll_fn(|cx| {
            let mut moved = Delta::default();
            assert!(dir.poll_tcp(cx, &mut moved, src, dst).is_pending());
            dir.flush(moved, &AtomicU64::new(0));
            rest.as_mut().poll(cx)
        })
        .await;
        got
    }

    /// A direction whose splice reads fill its pipe grows it (or counts the kernel's refusal),
    /// every byte still arrives in order, and the grown pipe goes back to the pool grown.
    #[tokio::test]
    async fn a_bulk_direction_grows_its_pipe() {
        const BURST: usize = 512 * 1024;
        let pool = PipePool::new(64, 64 * 1024).grow_to(1024 * 1024);
        // Room for the whole burst in the source's receive queue, so every read finds more
        // queued than a 64 KiB pipe takes.
        let listener = tokio::net::TcpSocket::new_v4().unwrap();
        listener.set_recv_buffer_size(4 * BURST as u32).unwrap();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listener.listen(1).unwrap();
        let connect = TcpStream::connect(listener.local_addr().unwrap());
        let (writer, src) = tokio::join!(connect, listener.accept());
        let (mut writer, mut src) = (writer.unwrap(), src.unwrap().0);
        let (mut dst, mut reader) = tcp_pair().await;
        let burst: Vec<u8> = (0..BURST).map(|i| (i % 251) as u8).collect();
        writer.write_all(&burst).await.unwrap();
        let mut peek = vec![0u8; BURST];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while src.peek(&mut peek).await.unwrap() < BURST {
            assert!(std::time::Instant::now() < deadline, "burst never queued");
            tokio::task::yield_now().await;
        }

        let refused = STATS.pipe_grow_refused.load(Relaxed);
        let mut dir = Direction::new(Side::Client, RelayMode::Splice, 4096, Some(&pool));
        let got = pump(&mut dir, &mut src, &mut dst, &mut reader, BURST).await;
        assert!(got == burst, "bytes reordered or lost");
        drop(dir);
        assert_eq!(pool.in_use(), 0);
        if STATS.pipe_grow_refused.load(Relaxed) == refused {
            assert_eq!(pool.grown(), 1, "the pipe grew and went back grown");
        } else {
            assert_eq!(pool.grown(), 0, "refused by the kernel: kept its size");
        }
    }

    /// Moves a burst through one direction, then checks that the dry direction holds nothing.
    #[tokio::test]
    async fn a_dry_direction_holds_no_pipe_and_no_buffer() {
        for mode in [RelayMode::Splice, RelayMode::Copy, RelayMode::Auto] {
            let pool = PipePool::new(4, 0);
            let (mut writer, mut src) = tcp_pair().await;
            let (mut dst, mut reader) = tcp_pair().await;
            let mut dir = Direction::new(Side::Client, mode, 4096, Some(&pool));
            let burst = vec![7u8; 100_000];
            writer.write_all(&burst).await.unwrap();

            let got = pump(&mut dir, &mut src, &mut dst, &mut reader, burst.len()).await;
            // One more poll: the source is empty, so the direction parks.
            poll_fn(|cx| {
                let mut moved = Delta::default();
                let polled = dir.poll_tcp(cx, &mut moved, &mut src, &mut dst);
                dir.flush(moved, &AtomicU64::new(0));
                Poll::Ready(polled.is_pending())
            })
            .await
            .then_some(())
            .unwrap();

            assert_eq!(got, burst);
            assert!(dir.pipe.is_none(), "{mode:?}: dry direction holds a pipe");
            assert!(dir.buf.is_none(), "{mode:?}: dry direction holds a buffer");
            assert_eq!(pool.in_use(), 0);
            match mode {
                RelayMode::Splice => assert_eq!(dir.spliced(), 100_000),
                RelayMode::Copy => assert_eq!(dir.copied(), 100_000),
                RelayMode::Auto => assert_eq!(dir.spliced() + dir.copied(), 100_000),
            }
        }
    }
}
