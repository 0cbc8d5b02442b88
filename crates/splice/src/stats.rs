//! Process-wide relay counters, so metrics and tests can see which path ran.
//!
//! Tunnels add to them once per poll (not per chunk), with `Relaxed` atomics: the values are
//! monotonic counters, read for metrics, never used to synchronise.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The counters behind [`crate::stats`]. All monotonic since process start.
#[derive(Debug)]
pub struct RelayStats {
    pub(crate) splice_calls: AtomicU64,
    pub(crate) spliced_bytes: AtomicU64,
    pub(crate) copied_bytes: AtomicU64,
    pub(crate) copy_fallbacks: AtomicU64,
    pub(crate) pipes_created: AtomicU64,
    pub(crate) pipes_discarded: AtomicU64,
    pub(crate) pipes_undersized: AtomicU64,
    pub(crate) pipes_grown: AtomicU64,
    pub(crate) pipe_grow_refused: AtomicU64,
    pub(crate) pipe_create_failures: AtomicU64,
    pub(crate) tunnels_closed: AtomicU64,
}

pub(crate) static STATS: RelayStats = RelayStats {
    splice_calls: AtomicU64::new(0),
    spliced_bytes: AtomicU64::new(0),
    copied_bytes: AtomicU64::new(0),
    copy_fallbacks: AtomicU64::new(0),
    pipes_created: AtomicU64::new(0),
    pipes_discarded: AtomicU64::new(0),
    pipes_undersized: AtomicU64::new(0),
    pipes_grown: AtomicU64::new(0),
    pipe_grow_refused: AtomicU64::new(0),
    pipe_create_failures: AtomicU64::new(0),
    tunnels_closed: AtomicU64::new(0),
};

impl RelayStats {
    /// `splice(2)` calls made, in both directions (socket → pipe and pipe → socket), including
    /// those that returned EAGAIN.
    pub fn splice_calls(&self) -> u64 {
        self.splice_calls.load(Relaxed)
    }

    /// Bytes delivered to a destination by `splice(2)`.
    pub fn spliced_bytes(&self) -> u64 {
        self.spliced_bytes.load(Relaxed)
    }

    /// Bytes delivered to a destination through a user-space buffer.
    pub fn copied_bytes(&self) -> u64 {
        self.copied_bytes.load(Relaxed)
    }

    /// Times a direction wanted a pipe and got none (pool at its cap, or no descriptor left), so
    /// copied instead.
    pub fn copy_fallbacks(&self) -> u64 {
        self.copy_fallbacks.load(Relaxed)
    }

    /// Pipes created by any pool.
    pub fn pipes_created(&self) -> u64 {
        self.pipes_created.load(Relaxed)
    }

    /// Pipes closed while holding bytes (their destination failed), never returned to a pool.
    pub fn pipes_discarded(&self) -> u64 {
        self.pipes_discarded.load(Relaxed)
    }

    /// Pipes created smaller than asked because the kernel refused `F_SETPIPE_SZ` (per-user pipe
    /// budget `fs.pipe-user-pages-soft`, or `fs.pipe-max-size`).
    pub fn pipes_undersized(&self) -> u64 {
        self.pipes_undersized.load(Relaxed)
    }

    /// Pipes grown for a bulk direction (`F_SETPIPE_SZ` to the pool's `max_pipe_size`). A grown
    /// pipe stays grown in the pool, so this counts resizes, not bursts.
    pub fn pipes_grown(&self) -> u64 {
        self.pipes_grown.load(Relaxed)
    }

    /// Times the kernel refused to grow a pipe (`fs.pipe-user-pages-soft` for an unprivileged
    /// user, or `fs.pipe-max-size`); the pipe kept its size and the tunnel went on.
    pub fn pipe_grow_refused(&self) -> u64 {
        self.pipe_grow_refused.load(Relaxed)
    }

    /// Pipes the kernel refused to create at all (`EMFILE`, `ENFILE`, ...).
    pub fn pipe_create_failures(&self) -> u64 {
        self.pipe_create_failures.load(Relaxed)
    }

    /// Tunnels that ended, for any reason.
    pub fn tunnels_closed(&self) -> u64 {
        self.tunnels_closed.load(Relaxed)
    }
}
