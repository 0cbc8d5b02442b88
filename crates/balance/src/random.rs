//! A small, fast, thread-local random number generator for `random_two`: wyrand (Wang Yi's
//! 64-bit generator), seeded per thread from the standard library's random hasher keys. Not
//! for secrets; good enough to draw two backends, with no lock and no dependency.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

thread_local! {
    static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0x5eed_u64));
}

/// The next 64 random bits of this thread's generator.
pub(crate) fn next_u64() -> u64 {
    STATE.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// A number in `0..n` (`n > 0`), by multiplication rather than modulo (Lemire): the bias is
/// below `n / 2^64`.
pub(crate) fn below(n: u64) -> u64 {
    ((u128::from(next_u64()) * u128::from(n)) >> 64) as u64
}

/// Restarts this thread's generator from `seed`: tests use it to be repeatable.
#[cfg(test)]
pub(crate) fn seed(seed: u64) {
    STATE.with(|state| state.set(seed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_spread_and_repeatable() {
        seed(42);
        let first: Vec<u64> = (0..4).map(|_| next_u64()).collect();
        seed(42);
        let again: Vec<u64> = (0..4).map(|_| next_u64()).collect();
        assert_eq!(first, again);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[below(10) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..=10_500).contains(&c), "{counts:?}");
        }
        assert_eq!(below(1), 0);
    }
}
