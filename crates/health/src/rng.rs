//! A small random source per checker: wyrand (Wang Yi's 64-bit generator), seeded from the
//! process's random hasher keys and the backend's identity, so that every sluice instance and
//! every backend has its own schedule and its own WebSocket keys. Not for secrets: a WebSocket
//! key only has to be fresh (RFC 6455 §4.1 asks for a nonce, not a secret).

#[derive(Debug, Clone)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// A number in `[0, 1)`, from 53 random bits.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `N` random bytes.
    pub(crate) fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            for (byte, random) in chunk.iter_mut().zip(word) {
                *byte = random;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_spread_and_differ_by_seed() {
        let mut rng = Rng::new(1);
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
            buckets[(u * 10.0) as usize] += 1;
        }
        for b in buckets {
            assert!((9_500..=10_500).contains(&b), "{buckets:?}");
        }
        let a: [u8; 16] = Rng::new(1).bytes();
        let b: [u8; 16] = Rng::new(2).bytes();
        assert_ne!(a, b);
        let mut r = Rng::new(3);
        let (x, y): ([u8; 16], [u8; 16]) = (r.bytes(), r.bytes());
        assert_ne!(x, y, "a fresh key per check");
    }
}
