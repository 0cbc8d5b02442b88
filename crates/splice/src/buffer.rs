//! Copy buffers, held by a direction only while its bytes are in user space.
//!
//! A copying direction takes a [`Buf`] right before a read and gives it back as soon as the
//! source would block with nothing left to write (or the direction switches to a pipe), so an
//! idle tunnel holds no buffer. Taking and giving back go through a small per-thread cache: no
//! lock, and no allocation once a worker thread has warmed up. The cache keeps at most
//! [`CACHED_PER_THREAD`] buffers per thread; beyond that, a returned buffer is freed.

use std::cell::RefCell;

/// Buffers kept per thread for reuse, whatever their size.
pub(crate) const CACHED_PER_THREAD: usize = 16;

thread_local! {
    static CACHE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A copy buffer of a fixed size, back to this thread's cache on drop.
#[derive(Debug)]
pub(crate) struct Buf {
    bytes: Box<[u8]>,
}

impl Buf {
    /// A buffer of exactly `size` bytes, from the thread's cache when one of that size is there.
    pub(crate) fn take(size: usize) -> Self {
        let cached = CACHE
            .try_with(|cache| {
                let mut cache = cache.try_borrow_mut().ok()?;
                let at = cache.iter().rposition(|b| b.len() == size)?;
                Some(cache.swap_remove(at))
            })
            .ok()
            .flatten();
        let bytes = cached.unwrap_or_else(|| vec![0; size].into_boxed_slice());
        Self { bytes }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        if bytes.is_empty() {
            return;
        }
        // On thread teardown or (impossible) re-entrance the buffer is simply freed.
        let _ = CACHE.try_with(|cache| {
            if let Ok(mut cache) = cache.try_borrow_mut() {
                if cache.len() < CACHED_PER_THREAD {
                    if cache.capacity() == 0 {
                        cache.reserve_exact(CACHED_PER_THREAD);
                    }
                    cache.push(bytes);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_on_the_same_thread() {
        std::thread::spawn(|| {
            let first = Buf::take(4096);
            let addr = first.as_slice().as_ptr();
            drop(first);
            let second = Buf::take(4096);
            assert_eq!(second.as_slice().as_ptr(), addr);
            assert_eq!(second.as_slice().len(), 4096);
            // A different size is a different buffer.
            assert_eq!(Buf::take(100).as_slice().len(), 100);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn cache_is_bounded() {
        std::thread::spawn(|| {
            let held: Vec<Buf> = (0..CACHED_PER_THREAD * 2).map(|_| Buf::take(64)).collect();
            drop(held);
            assert_eq!(CACHE.with(|c| c.borrow().len()), CACHED_PER_THREAD);
        })
        .join()
        .unwrap();
    }
}
