//! Affinity cookie tokens: an opaque, stable name for a backend of a pool.
//!
//! The cookie sluice inserts must name the backend without revealing its address, and must mean
//! the same backend to every sluice instance that has it, with no shared state. So the token is
//! a keyed hash of what identifies the backend there (a stability contract, pinned by
//! `tests::token_vectors`):
//!
//! ```text
//! key      = (k0, k1) = ("sluice-c", "ookie-v1") read as little-endian u64s     no secret
//!          = (SipHash-2-4(fixed key, "sluice/cookie-key/0" ‖ 0x00 ‖ secret),
//!             SipHash-2-4(fixed key, "sluice/cookie-key/1" ‖ 0x00 ‖ secret))   with a secret
//! token    = 16 lowercase hex digits of SipHash-2-4(key, pool name ‖ 0x00 ‖ identity)
//! ```
//!
//! SipHash-2-4 (Aumasson and Bernstein, 2012) is a pseudorandom function: with a secret key, a
//! token says nothing about the address and cannot be forged for another backend. Without a
//! secret the key is public: the token still does not contain the address, but whoever guesses
//! a pool's name and a backend's address can check the guess. The pool's name is part of the
//! input, so the same server in two pools has two tokens. Renaming a pool, moving a backend to
//! another address or changing the secret changes its token: clients holding the old one are
//! balanced again and given the new one, once.

/// A backend's token: 16 lowercase hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token([u8; 16]);

impl Token {
    /// The token of the backend with this `identity` (see [`crate::hash::identity`]) in the pool
    /// `pool`, keyed by `secret` when there is one.
    pub fn new(pool: &str, identity: &str, secret: Option<&str>) -> Token {
        let (k0, k1) = key(secret);
        let mut input = Vec::with_capacity(pool.len() + 1 + identity.len());
        input.extend_from_slice(pool.as_bytes());
        input.push(0);
        input.extend_from_slice(identity.as_bytes());
        let value = siphash24(k0, k1, &input);
        let mut hex = [0u8; 16];
        for (i, digit) in hex.iter_mut().enumerate() {
            let nibble = (value >> (60 - 4 * i)) & 0xf;
            *digit = b"0123456789abcdef"
                .get(nibble as usize)
                .copied()
                .unwrap_or(b'0');
        }
        Token(hex)
    }

    /// The token as the cookie value.
    pub fn as_str(&self) -> &str {
        // Always ASCII hex digits.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Whether a presented cookie value is this token (exactly; tokens are not secret, so a
    /// plain comparison will do).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0 == presented
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({})", self.as_str())
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The public key used without a secret: the bytes `sluice-cookie-v1`.
const FIXED_KEY: (u64, u64) = (
    u64::from_le_bytes(*b"sluice-c"),
    u64::from_le_bytes(*b"ookie-v1"),
);

fn key(secret: Option<&str>) -> (u64, u64) {
    let Some(secret) = secret else {
        return FIXED_KEY;
    };
    let derive = |label: &[u8]| {
        let mut input = Vec::with_capacity(label.len() + 1 + secret.len());
        input.extend_from_slice(label);
        input.push(0);
        input.extend_from_slice(secret.as_bytes());
        siphash24(FIXED_KEY.0, FIXED_KEY.1, &input)
    };
    (
        derive(b"sluice/cookie-key/0"),
        derive(b"sluice/cookie-key/1"),
    )
}

/// SipHash-2-4 of `data` under the 128-bit key `(k0, k1)`, as in the SipHash paper (64-bit
/// output; little-endian words).
pub fn siphash24(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut words = data.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        compress(&mut v, u64::from_le_bytes(bytes), 2);
    }
    let rest = words.remainder();
    let mut last = [0u8; 8];
    last.get_mut(..rest.len())
        .unwrap_or_default()
        .copy_from_slice(rest);
    last[7] = data.len() as u8;
    compress(&mut v, u64::from_le_bytes(last), 2);
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

fn compress(v: &mut [u64; 4], m: u64, rounds: usize) {
    v[3] ^= m;
    for _ in 0..rounds {
        sip_round(v);
    }
    v[0] ^= m;
}

fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SipHash paper's appendix A: key 00..0f, message 00..0e.
    #[test]
    fn siphash_paper_vector() {
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let message: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(k0, k1, &message), 0xa129_ca61_49be_45e5);
    }

    /// Against the standard library's SipHash-2-4 (deprecated as a `Hasher`, still the same
    /// function), for every length across two blocks.
    #[test]
    #[allow(deprecated)]
    fn siphash_matches_std_for_every_length() {
        use std::hash::{Hasher, SipHasher};
        let data: Vec<u8> = (0..64u8).map(|b| b.wrapping_mul(37)).collect();
        for len in 0..=data.len() {
            let mut std = SipHasher::new_with_keys(FIXED_KEY.0, FIXED_KEY.1);
            std.write(&data[..len]);
            assert_eq!(
                siphash24(FIXED_KEY.0, FIXED_KEY.1, &data[..len]),
                std.finish(),
                "length {len}"
            );
        }
    }

    /// The stability contract of tokens. If this fails, every affinity cookie in the field now
    /// names no backend: revert the change.
    /// (Computed independently from the description above with a separate implementation.)
    #[test]
    fn token_vectors() {
        let cases = [
            ("chat", "10.0.0.1:9000", None, "973dc8a135ed13ee"),
            (
                "chat",
                "10.0.0.1:9000",
                Some("0123456789abcdef"),
                "5f1f6537c2c09079",
            ),
            ("chat", "[2001:db8::1]:9000", None, "57e6f65b6c4d25f8"),
            ("echo", "127.0.0.1:9001", None, "bbcb536d49584f8f"),
        ];
        for (pool, identity, secret, expected) in cases {
            assert_eq!(
                Token::new(pool, identity, secret).as_str(),
                expected,
                "{pool} {identity} {secret:?}"
            );
        }
    }

    #[test]
    fn tokens_differ_by_pool_address_and_secret_and_hide_the_address() {
        let t = Token::new("chat", "10.0.0.1:9000", None);
        assert_eq!(t.as_str().len(), 16);
        assert!(
            t.as_str()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(t, Token::new("chat2", "10.0.0.1:9000", None));
        assert_ne!(t, Token::new("chat", "10.0.0.2:9000", None));
        assert_ne!(
            t,
            Token::new("chat", "10.0.0.1:9000", Some("a secret of some length"))
        );
        assert_ne!(
            Token::new("chat", "10.0.0.1:9000", Some("a secret of some length")),
            Token::new("chat", "10.0.0.1:9000", Some("another secret, as long"))
        );
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(Token::new("ab", "c", None), Token::new("a", "bc", None));
        assert!(!t.as_str().contains("10.0.0.1"));
        assert!(t.matches(t.as_str().as_bytes()));
        assert!(!t.matches(t.as_str().to_uppercase().as_bytes()));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), format!("Token({t})"));
    }
}
