//! When a direction in [`crate::RelayMode::Auto`] splices: HAProxy's `splice-auto` rule.
//!
//! splice(2) saves the two copies through user space but costs two syscalls and a pipe per
//! chunk, which loses on small messages (measured here: ~20 % more CPU per 128-byte round trip)
//! and wins big on bulk (3× less CPU per GiB). So each direction starts copying and watches the
//! size of its reads, exactly like HAProxy's `CF_STREAMER` flag (`channel_check_xfer` and
//! `channel_check_idletimer` in `include/haproxy/channel.h`):
//!
//! * a read of at least a full copy buffer (`buffer_size`) is **large**; one of at most half a
//!   buffer is **small**; anything else resets both counts;
//! * [`LARGE_READS_TO_SPLICE`] (3) consecutive large reads while copying make the direction a
//!   *streamer*: it splices from then on;
//! * [`SMALL_READS_TO_COPY`] (3) consecutive small reads while splicing (a splice read is
//!   measured against the same `buffer_size`) make it copy again;
//! * a streamer that paused — nothing read for [`PAUSE_RESETS`] (1 s, HAProxy's
//!   `tune.idle-timer`) — starts over copying: a pause means the peer went quiet, not that the
//!   relay is congested, and small messages after a pause want low latency.
//!
//! Switching happens only at a clean point: the copy buffer written out, or the pipe drained.

use std::time::{Duration, Instant};

/// Consecutive reads that filled the copy buffer before a copying direction starts splicing.
pub(crate) const LARGE_READS_TO_SPLICE: u8 = 3;
/// Consecutive reads of at most half a copy buffer before a splicing direction copies again.
pub(crate) const SMALL_READS_TO_COPY: u8 = 3;
/// A streamer idle this long starts over copying.
pub(crate) const PAUSE_RESETS: Duration = Duration::from_secs(1);

/// The streamer detector of one direction.
#[derive(Debug, Default)]
pub(crate) struct Policy {
    streamer: bool,
    large: u8,
    small: u8,
    /// When a streamer last ran dry (its source would block); `None` while data flows.
    dry_since: Option<Instant>,
}

impl Policy {
    /// Whether the direction should splice now.
    pub(crate) fn streamer(&self) -> bool {
        self.streamer
    }

    /// Accounts one read of `n > 0` bytes, against copy buffers of `buffer_size`.
    pub(crate) fn on_read(&mut self, n: usize, buffer_size: usize) {
        self.dry_since = None;
        if self.streamer && n <= buffer_size / 2 {
            self.large = 0;
            self.small += 1;
            if self.small >= SMALL_READS_TO_COPY {
                self.reset();
            }
        } else if !self.streamer && n >= buffer_size {
            self.small = 0;
            self.large += 1;
            if self.large >= LARGE_READS_TO_SPLICE {
                self.streamer = true;
                self.large = 0;
            }
        } else {
            self.large = 0;
            self.small = 0;
        }
    }

    /// The source would block with nothing left to write: remember when, for a streamer.
    pub(crate) fn on_dry(&mut self) {
        if self.streamer && self.dry_since.is_none() {
            self.dry_since = Some(Instant::now());
        }
    }

    /// Data is ready again: a streamer dry for [`PAUSE_RESETS`] starts over copying.
    pub(crate) fn on_ready(&mut self) {
        if let Some(since) = self.dry_since.take() {
            if since.elapsed() >= PAUSE_RESETS {
                self.reset();
            }
        }
    }

    /// Back to copying, counts cleared (also after the pool refused a pipe: retry after another
    /// run of large reads).
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUF: usize = 16 * 1024;

    #[test]
    fn three_full_reads_make_a_streamer() {
        let mut p = Policy::default();
        p.on_read(BUF, BUF);
        p.on_read(BUF, BUF);
        assert!(!p.streamer());
        p.on_read(BUF, BUF);
        assert!(p.streamer());
    }

    #[test]
    fn a_partial_read_breaks_the_run() {
        let mut p = Policy::default();
        p.on_read(BUF, BUF);
        p.on_read(BUF, BUF);
        p.on_read(BUF - 1, BUF);
        p.on_read(BUF, BUF);
        p.on_read(BUF, BUF);
        assert!(!p.streamer());
        p.on_read(BUF, BUF);
        assert!(p.streamer());
    }

    #[test]
    fn three_small_reads_end_streaming() {
        let mut p = Policy::default();
        (0..3).for_each(|_| p.on_read(BUF, BUF));
        p.on_read(100, BUF);
        p.on_read(BUF / 2, BUF);
        // A large read in between resets the count.
        p.on_read(64 * 1024, BUF);
        p.on_read(100, BUF);
        p.on_read(100, BUF);
        assert!(p.streamer());
        p.on_read(100, BUF);
        assert!(!p.streamer());
    }

    #[test]
    fn small_messages_never_stream() {
        let mut p = Policy::default();
        (0..1000).for_each(|_| p.on_read(128, BUF));
        assert!(!p.streamer());
    }

    #[test]
    fn a_long_pause_resets_a_streamer() {
        let mut p = Policy::default();
        (0..3).for_each(|_| p.on_read(BUF, BUF));
        p.on_dry();
        p.on_ready();
        assert!(p.streamer(), "a short pause keeps streaming");
        p.on_dry();
        p.dry_since = Instant::now().checked_sub(PAUSE_RESETS);
        p.on_ready();
        assert!(!p.streamer());
    }
}
