//! The pipe pool shared by every tunnel (HAProxy `src/pipe.c`: `get_pipe` / `put_pipe`).
//!
//! A direction takes a pipe when data arrives and gives it back as soon as the pipe is empty and
//! the source has nothing more to read, so an idle tunnel holds none. The pool caps the pipes that
//! exist (idle here + lent out): over the cap [`PipePool::get`] returns `None` and the direction
//! copies through a buffer instead. A pipe dropped while still holding bytes (its destination
//! died) is closed, never returned: its bytes belong to a dead tunnel.
//!
//! The free list is sharded by thread: each worker thread pushes and pops its own
//! `Mutex<Vec<Pipe>>`, so the lock is uncontended in practice (one atomic swap each way) and held
//! for a `Vec::pop`/`push`. It is taken once per burst of traffic (when a direction starts or
//! stops splicing), never per chunk. Only when its own shard is empty does a thread look at the
//! others, with `try_lock`.
//!
//! **Growing.** Pipes are made at `pipe_size` (64 KiB by default). A direction that keeps filling
//! its pipe (bulk traffic) asks to grow it ([`PooledPipe::grow`]) to the pool's `max_pipe_size`
//! (1 MiB by default): one `F_SETPIPE_SZ` on the empty pipe, after which each `splice(2)` moves
//! up to 16 times more, with as many fewer syscalls and wake-ups. A grown pipe stays grown: it
//! goes back to its own free list, and a direction that grew a pipe before asks for a grown one
//! first, so bursts of a bulk tunnel cost no resize. Grown pipes are bounded: at most as many as
//! half the pool's page budget (`max_pipes × pipe_size`) pays for at `max_pipe_size`
//! (32 with the defaults). The kernel may refuse a resize (`fs.pipe-user-pages-soft` for an
//! unprivileged user, `fs.pipe-max-size`): the pipe keeps its size, works as before, and
//! [`crate::RelayStats::pipe_grow_refused`] counts it.

use std::cell::Cell;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::stats::STATS;
use crate::sys::Pipe;

/// Most free-list shards, whatever the machine.
const MAX_SHARDS: usize = 64;
/// The kernel's pipe size when none is asked (16 pages).
const DEFAULT_PIPE_SIZE: usize = 64 * 1024;

/// Pipes shared by all tunnels of a process: a capped pool, filled lazily, never shrunk.
///
/// Share it as `Arc<PipePool>`; [`crate::relay`] borrows it.
pub struct PipePool {
    max_pipes: usize,
    pipe_size: usize,
    /// What a bulk direction may grow its pipe to; at most `pipe_size` (or 0): never grow.
    max_pipe_size: usize,
    /// Most grown pipes held at once (idle plus lent).
    max_grown: usize,
    /// Pipes that exist: idle in a shard plus lent to a direction. Never above `max_pipes`.
    held: AtomicUsize,
    /// Of `held`, the grown ones. Never above `max_grown`.
    grown: AtomicUsize,
    /// Pipes lent to a direction right now.
    lent: AtomicUsize,
    shards: Box<[Mutex<Free>]>,
}

/// One shard's idle pipes: at the pool's size, and grown.
#[derive(Debug, Default)]
struct Free {
    base: Vec<Pipe>,
    grown: Vec<Pipe>,
}

impl PipePool {
    /// A pool holding at most `max_pipes` pipes (0 disables splicing: every direction copies),
    /// each asked to hold `pipe_size` bytes (0 keeps the kernel default, 64 KiB).
    ///
    /// No pipe is created here; they are made on first demand and kept for reuse. Each pipe is
    /// two file descriptors and counts against the user's pipe budget
    /// (`fs.pipe-user-pages-soft`): past it the kernel refuses the size (the pipe keeps two
    /// pages, see [`crate::RelayStats::pipes_undersized`]). Run with `CAP_SYS_RESOURCE` or raise
    /// the sysctl when `max_pipes × pipe_size` exceeds it.
    ///
    /// Pipes never grow; see [`PipePool::grow_to`].
    pub fn new(max_pipes: usize, pipe_size: usize) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self::with_shards(max_pipes, pipe_size, threads.min(max_pipes))
    }

    /// Lets directions that keep filling their pipe grow it to `max_pipe_size` bytes
    /// (`F_SETPIPE_SZ`; at most `fs.pipe-max-size` unless privileged). At most as many pipes
    /// grow as half of `max_pipes × pipe_size` pays for at that size; a size no larger than
    /// `pipe_size` means pipes never grow.
    #[must_use]
    pub fn grow_to(mut self, max_pipe_size: usize) -> Self {
        let base = if self.pipe_size == 0 {
            DEFAULT_PIPE_SIZE
        } else {
            self.pipe_size
        };
        if max_pipe_size > base {
            self.max_pipe_size = max_pipe_size;
            self.max_grown = self.max_pipes.saturating_mul(base) / 2 / max_pipe_size;
        } else {
            self.max_pipe_size = 0;
            self.max_grown = 0;
        }
        self
    }

    fn with_shards(max_pipes: usize, pipe_size: usize, shards: usize) -> Self {
        let shards = shards.clamp(1, MAX_SHARDS);
        Self {
            max_pipes,
            pipe_size,
            max_pipe_size: 0,
            max_grown: 0,
            held: AtomicUsize::new(0),
            grown: AtomicUsize::new(0),
            lent: AtomicUsize::new(0),
            shards: (0..shards).map(|_| Mutex::new(Free::default())).collect(),
        }
    }

    /// Pipes lent to tunnels right now.
    pub fn in_use(&self) -> usize {
        self.lent.load(Relaxed)
    }

    /// Pipes waiting in the pool. (Read without a lock: exact when the pool is quiet.)
    pub fn idle(&self) -> usize {
        self.held
            .load(Relaxed)
            .saturating_sub(self.lent.load(Relaxed))
    }

    /// The size asked of each pipe (what the kernel grants may differ).
    pub fn pipe_size(&self) -> usize {
        self.pipe_size
    }

    /// The cap on pipes held (idle plus in use).
    pub fn max_pipes(&self) -> usize {
        self.max_pipes
    }

    /// The size a bulk direction may grow its pipe to (0: pipes never grow).
    pub fn max_pipe_size(&self) -> usize {
        self.max_pipe_size
    }

    /// The cap on grown pipes held (idle plus in use).
    pub fn max_grown(&self) -> usize {
        self.max_grown
    }

    /// Grown pipes held right now (idle plus in use).
    pub fn grown(&self) -> usize {
        self.grown.load(Relaxed)
    }

    /// Lends an empty pipe: an idle one (a grown one first when `bulk`, one at the pool's size
    /// first otherwise), or a new one while under the cap. `None` at the cap or when the kernel
    /// refuses a new pipe (out of file descriptors); the caller copies instead.
    pub(crate) fn get(&self, bulk: bool) -> Option<PooledPipe<'_>> {
        let (pipe, grown) = match self.pop_idle(bulk) {
            Some(idle) => idle,
            None => (self.create()?, false),
        };
        self.lent.fetch_add(1, Relaxed);
        Some(PooledPipe {
            pool: self,
            pipe: Some(pipe),
            len: 0,
            grown,
        })
    }

    /// An idle pipe and whether it is grown.
    fn pop_idle(&self, bulk: bool) -> Option<(Pipe, bool)> {
        if self.idle() == 0 {
            return None;
        }
        let home = shard_hint();
        let n = self.shards.len();
        if let Some(found) = self.shard(home).pop(bulk) {
            return Some(found);
        }
        (1..n).find_map(|i| {
            self.shards
                .get((home + i) % n)
                .and_then(|shard| shard.try_lock().ok())
                .and_then(|mut free| free.pop(bulk))
        })
    }

    fn create(&self) -> Option<Pipe> {
        let max = self.max_pipes;
        self.held
            .fetch_update(Relaxed, Relaxed, |held| (held < max).then_some(held + 1))
            .ok()?;
        match Pipe::new(self.pipe_size) {
            Ok(pipe) => {
                STATS.pipes_created.fetch_add(1, Relaxed);
                if pipe.capacity() < self.pipe_size {
                    STATS.pipes_undersized.fetch_add(1, Relaxed);
                    warn_undersized_once(self.pipe_size, pipe.capacity());
                }
                Some(pipe)
            }
            Err(error) => {
                self.held.fetch_sub(1, Relaxed);
                STATS.pipe_create_failures.fetch_add(1, Relaxed);
                tracing::debug!(%error, "pipe creation failed, copying instead");
                None
            }
        }
    }

    fn put(&self, pipe: Pipe, grown: bool) {
        let mut free = self.shard(shard_hint());
        if grown {
            free.grown.push(pipe);
        } else {
            free.base.push(pipe);
        }
        drop(free);
        self.lent.fetch_sub(1, Relaxed);
    }

    fn discard(&self, pipe: Pipe, grown: bool) {
        drop(pipe);
        STATS.pipes_discarded.fetch_add(1, Relaxed);
        self.forget(grown);
    }

    /// A lent pipe leaves the pool for good (closed, or taken by a suspended tunnel).
    fn forget(&self, grown: bool) {
        if grown {
            self.grown.fetch_sub(1, Relaxed);
        }
        self.held.fetch_sub(1, Relaxed);
        self.lent.fetch_sub(1, Relaxed);
    }

    /// Lends a pipe that comes from elsewhere (a resumed tunnel's, maybe another process's)
    /// holding `len` bytes; once drained it joins the pool like any other. It is counted at
    /// once even past the cap (its bytes must be delivered): the pool then makes no new pipe
    /// until the count is back under it.
    pub(crate) fn adopt(&self, pipe: Pipe, len: usize) -> PooledPipe<'_> {
        let base = if self.pipe_size == 0 {
            DEFAULT_PIPE_SIZE
        } else {
            self.pipe_size
        };
        let grown = pipe.capacity() > base;
        if grown {
            self.grown.fetch_add(1, Relaxed);
        }
        self.held.fetch_add(1, Relaxed);
        self.lent.fetch_add(1, Relaxed);
        PooledPipe {
            pool: self,
            pipe: Some(pipe),
            len,
            grown,
        }
    }

    fn shard(&self, hint: usize) -> MutexGuard<'_, Free> {
        // `shards` is never empty; index modulo its length.
        let shard = &self.shards[hint % self.shards.len()];
        // Nothing panics while a shard is locked (push/pop only); if it ever did, the Vec is
        // still a valid list of pipes.
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for PipePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipePool")
            .field("max_pipes", &self.max_pipes)
            .field("pipe_size", &self.pipe_size)
            .field("max_pipe_size", &self.max_pipe_size)
            .field("grown", &self.grown())
            .field("in_use", &self.in_use())
            .field("idle", &self.idle())
            .finish()
    }
}

/// A pipe lent by a [`PipePool`], with the count of bytes it holds.
///
/// Dropped empty, it goes back to the pool; dropped holding bytes, it is closed.
#[derive(Debug)]
pub(crate) struct PooledPipe<'p> {
    pool: &'p PipePool,
    /// Always `Some` until drop.
    pipe: Option<Pipe>,
    /// Bytes spliced in and not yet out: counted from the syscalls' return values.
    len: usize,
    /// Grown past the pool's size (counted in the pool's `grown`).
    grown: bool,
}

impl PooledPipe<'_> {
    /// Bytes in the pipe.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the pipe was grown past the pool's size.
    pub(crate) fn is_grown(&self) -> bool {
        self.grown
    }

    /// What the pipe can hold, in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.pipe.as_ref().map_or(0, Pipe::capacity)
    }

    /// Grows the (empty) pipe to the pool's `max_pipe_size`, within the pool's budget of grown
    /// pipes. Whether it grew; refused by the kernel, it keeps its size (counted in
    /// [`crate::RelayStats::pipe_grow_refused`]).
    pub(crate) fn grow(&mut self) -> bool {
        let pool = self.pool;
        let Some(pipe) = self.pipe.as_mut() else {
            return false;
        };
        if self.grown || self.len != 0 || pipe.capacity() >= pool.max_pipe_size {
            return false;
        }
        let max = pool.max_grown;
        if pool
            .grown
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .is_err()
        {
            return false;
        }
        match pipe.resize(pool.max_pipe_size) {
            Ok(_) => {
                self.grown = true;
                STATS.pipes_grown.fetch_add(1, Relaxed);
                true
            }
            Err(error) => {
                pool.grown.fetch_sub(1, Relaxed);
                STATS.pipe_grow_refused.fetch_add(1, Relaxed);
                warn_grow_refused_once(pool.max_pipe_size, pipe.capacity(), &error);
                false
            }
        }
    }
}

impl PooledPipe<'_> {
    /// Takes the pipe and its count out of the pool (for a suspended tunnel); `None` if empty:
    /// an empty pipe simply goes back.
    pub(crate) fn detach(mut self) -> Option<(Pipe, usize)> {
        if self.len == 0 {
            return None;
        }
        let pipe = self.pipe.take()?;
        self.pool.forget(self.grown);
        Some((pipe, self.len))
    }
}

impl Free {
    /// An idle pipe, from the list `bulk` prefers, else from the other one.
    fn pop(&mut self, bulk: bool) -> Option<(Pipe, bool)> {
        let (first, second) = if bulk {
            (&mut self.grown, &mut self.base)
        } else {
            (&mut self.base, &mut self.grown)
        };
        if let Some(pipe) = first.pop() {
            return Some((pipe, bulk));
        }
        second.pop().map(|pipe| (pipe, !bulk))
    }
}

#[cfg(target_os = "linux")]
impl PooledPipe<'_> {
    /// Splices from `src` into the pipe, which must be empty (see [`crate::sys`] on EAGAIN).
    /// `Ok(0)`: `src` reached end of stream.
    pub(crate) fn fill_from(&mut self, src: impl std::os::fd::AsFd) -> std::io::Result<usize> {
        debug_assert!(self.is_empty(), "fill only an empty pipe");
        let Some(pipe) = &self.pipe else {
            return Ok(0);
        };
        let n = pipe.fill_from(src, pipe.capacity())?;
        self.len += n;
        Ok(n)
    }

    /// Splices what the pipe holds into `dst`; returns the bytes moved.
    pub(crate) fn drain_to(&mut self, dst: impl std::os::fd::AsFd) -> std::io::Result<usize> {
        let Some(pipe) = &self.pipe else {
            return Ok(0);
        };
        let n = pipe.drain_to(dst, self.len)?;
        self.len = self.len.saturating_sub(n);
        Ok(n)
    }
}

impl Drop for PooledPipe<'_> {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            if self.len == 0 {
                self.pool.put(pipe, self.grown);
            } else {
                self.pool.discard(pipe, self.grown);
            }
        }
    }
}

/// This thread's free-list shard: threads are numbered on first use.
fn shard_hint() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HINT: Cell<Option<usize>> = const { Cell::new(None) };
    }
    HINT.try_with(|hint| {
        hint.get().unwrap_or_else(|| {
            let next = NEXT.fetch_add(1, Relaxed);
            hint.set(Some(next));
            next
        })
    })
    .unwrap_or(0)
}

fn warn_grow_refused_once(asked: usize, kept: usize, error: &std::io::Error) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Relaxed) {
        tracing::warn!(
            asked,
            kept,
            %error,
            "the kernel refused to grow a pipe for a bulk tunnel (fs.pipe-user-pages-soft or \
             fs.pipe-max-size); it keeps its size and splices with more syscalls: raise the \
             sysctl, grant CAP_SYS_RESOURCE or lower relay.pipe_max_size"
        );
    }
}

fn warn_undersized_once(asked: usize, got: usize) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Relaxed) {
        tracing::warn!(
            asked,
            got,
            "the kernel refused the pipe size (fs.pipe-user-pages-soft or fs.pipe-max-size); \
             pipes keep a smaller size and splice slower: raise the sysctl or grant CAP_SYS_RESOURCE"
        );
    }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::*;

    #[test]
    fn cap_bounds_pipes_held() {
        let pool = PipePool::new(2, 0);
        let a = pool.get(false).unwrap();
        let b = pool.get(false).unwrap();
        assert!(pool.get(false).is_none());
        assert_eq!((pool.in_use(), pool.idle()), (2, 0));
        drop(a);
        assert_eq!((pool.in_use(), pool.idle()), (1, 1));
        let c = pool.get(false).unwrap();
        assert_eq!((pool.in_use(), pool.idle()), (2, 0));
        drop((b, c));
        assert_eq!((pool.in_use(), pool.idle()), (0, 2));
    }

    #[test]
    fn zero_cap_lends_nothing() {
        let pool = PipePool::new(0, 0);
        assert!(pool.get(false).is_none());
        assert_eq!((pool.in_use(), pool.idle()), (0, 0));
    }

    #[test]
    fn empty_pipes_are_reused() {
        let pool = PipePool::new(4, 0);
        for _ in 0..10 {
            let pipe = pool.get(false).unwrap();
            assert!(pipe.is_empty());
        }
        assert_eq!((pool.in_use(), pool.idle()), (0, 1));
    }

    #[test]
    fn pipe_dropped_with_bytes_is_closed_not_returned() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut writer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (reader, _) = listener.accept().unwrap();
        reader.set_nonblocking(true).unwrap();
        writer.write_all(b"orphaned").unwrap();

        let pool = PipePool::new(1, 0);
        let discarded = STATS.pipes_discarded.load(Relaxed);
        let mut pipe = pool.get(false).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while pipe.is_empty() {
            match pipe.fill_from(&reader) {
                Ok(n) => assert!(n > 0),
                Err(e) if crate::sys::would_block(&e) => {
                    assert!(std::time::Instant::now() < deadline);
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(pipe.len(), 8);
        drop(pipe);
        assert_eq!((pool.in_use(), pool.idle()), (0, 0));
        assert!(STATS.pipes_discarded.load(Relaxed) > discarded);
        // The cap counts it no more: a fresh pipe can be made.
        assert!(pool.get(false).is_some());
    }

    #[test]
    fn growth_is_budgeted_and_grown_pipes_stay_grown() {
        // 32 pipes of 64 KiB: half that budget pays for one pipe of 1 MiB.
        let pool = PipePool::new(32, 64 * 1024).grow_to(1024 * 1024);
        assert_eq!((pool.max_pipe_size(), pool.max_grown()), (1024 * 1024, 1));
        let mut a = pool.get(false).unwrap();
        let mut b = pool.get(false).unwrap();
        let refused = STATS.pipe_grow_refused.load(Relaxed);
        if !a.grow() {
            // This user is past its pipe budget: the kernel said no, the pipe works as before.
            assert!(STATS.pipe_grow_refused.load(Relaxed) > refused);
            assert_eq!((a.is_grown(), pool.grown()), (false, 0));
            return;
        }
        assert_eq!(
            (a.is_grown(), a.capacity(), pool.grown()),
            (true, 1024 * 1024, 1)
        );
        assert!(!a.grow(), "already grown");
        assert!(!b.grow(), "over the budget of grown pipes");
        assert_eq!((b.capacity(), pool.grown()), (64 * 1024, 1));
        drop((a, b));
        // Back in the pool, still grown: a bulk direction gets it first, others the small one.
        let bulk = pool.get(true).unwrap();
        assert_eq!((bulk.is_grown(), bulk.capacity()), (true, 1024 * 1024));
        let chatty = pool.get(false).unwrap();
        assert_eq!((chatty.is_grown(), chatty.capacity()), (false, 64 * 1024));
        drop((bulk, chatty));
        assert_eq!((pool.in_use(), pool.idle(), pool.grown()), (0, 2, 1));
    }

    #[test]
    fn no_growth_without_a_larger_size_or_budget() {
        assert_eq!(
            PipePool::new(32, 1 << 20).grow_to(1 << 20).max_pipe_size(),
            0
        );
        assert_eq!(PipePool::new(1024, 0).grow_to(1 << 20).max_grown(), 32);
        // Two small pipes pay for no grown one.
        let pool = PipePool::new(2, 64 * 1024).grow_to(1 << 20);
        assert!(!pool.get(true).unwrap().grow());
        assert_eq!(pool.grown(), 0);
    }

    #[test]
    fn idle_pipes_are_found_from_other_threads() {
        // One pipe at most: the other thread can only succeed by finding the idle one, in its
        // own shard or (7 times in 8) in this thread's.
        let pool = PipePool::with_shards(1, 0, 8);
        drop(pool.get(false).unwrap());
        std::thread::scope(|s| {
            s.spawn(|| assert!(pool.get(false).is_some()));
        });
        assert_eq!((pool.in_use(), pool.idle()), (0, 1));
    }
}
