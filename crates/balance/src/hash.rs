//! Weighted rendezvous hashing (highest random weight): which backend a key goes to, the same in
//! every sluice process that has the same backends, with no shared state.
//!
//! # The function (a stability contract)
//!
//! A key's choice must not change between two sluice processes, two machines or two releases:
//! a user whose key moves loses its session. So everything below is fixed, and
//! `tests::stability_vectors` pins its results; a change that moves any of them remaps users and
//! is a breaking change.
//!
//! ```text
//! K      = XXH64(key bytes, seed 0)                      once per connection
//! B_i    = XXH64(identity_i, seed 0)                     once per backend, when the pool is built
//! H_i    = XXH64(LE64(K) ‖ LE64(B_i), seed 0)            16 bytes
//! x_i    = (2 · (H_i >> 12) + 1) / 2^53                  in (0, 1), exact in an f64
//! cost_i = -ln(x_i) / weight_i                           the key's preference: lowest first;
//!                                                        equal costs: lower B_i first
//! ```
//!
//! - **XXH64** is xxHash's 64-bit function as specified in its repository
//!   (`doc/xxhash_spec.md`); it is implemented here, not taken from a crate, so a dependency
//!   bump cannot change it. `tests::xxh64_reference_vectors` checks it against the reference
//!   implementation's outputs.
//! - **identity_i** is the backend's address as text, as Rust writes a `SocketAddr`:
//!   `10.0.0.1:9000`, `[2001:db8::1]:9000` (RFC 5952 for IPv6). Never its position in the list,
//!   so reordering backends moves nothing; a test pins the text of both families.
//! - **ln** is [`ln`] below: range reduction and a fixed odd series, with `+ − × ÷` only.
//!   Those are correctly rounded in IEEE 754 and Rust never fuses them, so the result is the
//!   same bits on every platform, which the platform's `f64::ln` (libm) does not promise.
//!
//! Why this gives the three properties asked of consistent hashing:
//!
//! - **Spread, weighted.** `-ln(x)` of a uniform `x` is exponentially distributed, so `cost_i`
//!   is exponential with rate `weight_i`, and the lowest of independent exponentials is backend
//!   `i` with probability `weight_i / Σ weight`: every key independently lands on each backend
//!   in proportion to its weight. (Schindelhauer and Schomaker's weighted distributed hash
//!   tables; the "logarithmic method" of weighted rendezvous hashing.)
//! - **Minimal movement.** A key's costs do not depend on the other backends. Removing a
//!   backend moves exactly the keys whose lowest cost it had (to their second choice); adding
//!   one moves exactly the keys for which the newcomer is cheaper than their current choice,
//!   `weight_new / Σ weight` of them in expectation. Nothing else moves.
//! - **A full preference order per key**, so bounded loads ([`crate::Picker`]) and failed
//!   connects walk to the key's own next choice, which is again consistent across processes.
//!
//! Rendezvous costs O(N) per pick (N short hashes and N logarithms: about 20 ns per backend);
//! for the pools sluice fronts (tens to a few hundred backends) that is a few microseconds at
//! worst and needs no table to rebuild on reload. Maglev would make a pick O(1) at the price of
//! a 65,537-entry table per pool rebuilt on every change, ~1 % collateral movement (RESEARCH.md)
//! and no per-key order to walk for bounded loads.

use std::net::SocketAddr;

/// The seed of every XXH64 in the function above.
pub const SEED: u64 = 0;

/// `K`: the hash of a key (once per connection).
pub fn key_hash(key: &[u8]) -> u64 {
    xxh64(key, SEED)
}

/// A backend's identity: its address as text (`10.0.0.1:9000`, `[2001:db8::1]:9000`).
pub fn identity(addr: SocketAddr) -> String {
    addr.to_string()
}

/// `B`: the hash of a backend's identity (once per backend).
pub fn identity_hash(addr: SocketAddr) -> u64 {
    xxh64(identity(addr).as_bytes(), SEED)
}

/// `cost`: how far down the key's preference a backend is; the lowest wins.
pub fn cost(key_hash: u64, identity_hash: u64, weight: u32) -> f64 {
    let mut block = [0u8; 16];
    let (k, b) = block.split_at_mut(8);
    k.copy_from_slice(&key_hash.to_le_bytes());
    b.copy_from_slice(&identity_hash.to_le_bytes());
    let h = xxh64(&block, SEED);
    // 52 bits, doubled plus one: an odd integer below 2^53, exactly representable.
    let x = ((h >> 12) * 2 + 1) as f64 * TWO_POW_MINUS_53;
    -ln(x) / f64::from(weight.max(1))
}

/// Whether cost `a` (of a backend with identity hash `a_id`) comes before cost `b`: lower cost
/// first, the lower identity hash on an exact tie.
pub fn before(a: f64, a_id: u64, b: f64, b_id: u64) -> bool {
    a.total_cmp(&b).then(a_id.cmp(&b_id)).is_lt()
}

/// The key's whole preference order over `backends` (identity hash, weight), as indices, best
/// first. The picker does not need it (it finds the best remaining backend in one pass); tools
/// and tests do.
pub fn preference(key: &[u8], backends: &[(u64, u32)]) -> Vec<usize> {
    let k = key_hash(key);
    let mut order: Vec<(f64, u64, usize)> = backends
        .iter()
        .enumerate()
        .map(|(i, &(id, weight))| (cost(k, id, weight), id, i))
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    order.into_iter().map(|(_, _, i)| i).collect()
}

const TWO_POW_MINUS_53: f64 = 1.0 / 9_007_199_254_740_992.0;

/// Natural logarithm of `x` in `(0, 1]` (any positive normal `x` works), the same bits on every
/// platform: `x = m · 2^e` with `m` in `[√½, √2)`, then
/// `ln m = 2s (1 + s²/3 + s⁴/5 + … + s²⁰/21)` with `s = (m − 1)/(m + 1)`, `|s| < 0.172`,
/// evaluated by Horner's rule from the `1/21` end, and `ln x = e · ln 2 + ln m`. The truncated
/// series is good to about 1e-16 relative; what matters is that it is fixed.
pub fn ln(x: f64) -> f64 {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i64;
    let mut e = biased - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | (1023 << 52));
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let z = s * s;
    let mut p = 1.0 / 21.0;
    for k in [19.0, 17.0, 15.0, 13.0, 11.0, 9.0, 7.0, 5.0, 3.0] {
        p = p * z + 1.0 / k;
    }
    p = p * z + 1.0;
    (e as f64) * std::f64::consts::LN_2 + 2.0 * s * p
}

/// XXH64 of `data` with `seed`, as specified by xxHash (`doc/xxhash_spec.md`), little-endian
/// lanes.
pub fn xxh64(data: &[u8], seed: u64) -> u64 {
    const P1: u64 = 0x9E37_79B1_85EB_CA87;
    const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const P3: u64 = 0x1656_67B1_9E37_79F9;
    const P4: u64 = 0x85EB_CA77_C2B2_AE63;
    const P5: u64 = 0x27D4_EB2F_1656_67C5;

    fn round(acc: u64, lane: u64) -> u64 {
        acc.wrapping_add(lane.wrapping_mul(P2))
            .rotate_left(31)
            .wrapping_mul(P1)
    }
    fn merge(acc: u64, v: u64) -> u64 {
        (acc ^ round(0, v)).wrapping_mul(P1).wrapping_add(P4)
    }
    fn u64_at(chunk: &[u8]) -> u64 {
        let mut lane = [0u8; 8];
        lane.copy_from_slice(chunk.get(..8).unwrap_or(&[0; 8]));
        u64::from_le_bytes(lane)
    }
    fn u32_at(chunk: &[u8]) -> u64 {
        let mut lane = [0u8; 4];
        lane.copy_from_slice(chunk.get(..4).unwrap_or(&[0; 4]));
        u64::from(u32::from_le_bytes(lane))
    }

    let len = data.len() as u64;
    let mut stripes = data.chunks_exact(32);
    let mut h = if data.len() >= 32 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        for stripe in &mut stripes {
            for (acc, lane) in v.iter_mut().zip(stripe.chunks_exact(8)) {
                *acc = round(*acc, u64_at(lane));
            }
        }
        let [v1, v2, v3, v4] = v;
        let mut h = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18));
        for acc in v {
            h = merge(h, acc);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(len);

    let mut rest = stripes.remainder();
    while rest.len() >= 8 {
        h = (h ^ round(0, u64_at(rest)))
            .rotate_left(27)
            .wrapping_mul(P1)
            .wrapping_add(P4);
        rest = rest.get(8..).unwrap_or_default();
    }
    if rest.len() >= 4 {
        h = (h ^ u32_at(rest).wrapping_mul(P1))
            .rotate_left(23)
            .wrapping_mul(P2)
            .wrapping_add(P3);
        rest = rest.get(4..).unwrap_or_default();
    }
    for &byte in rest {
        h = (h ^ u64::from(byte).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
    }

    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    /// Outputs of the reference implementation (python-xxhash 4.1.0, libxxhash 0.8).
    #[test]
    fn xxh64_reference_vectors() {
        let hundred: Vec<u8> = (0..100).collect();
        let cases: [(&[u8], u64, u64); 10] = [
            (b"", 0, 0xef46_db37_51d8_e999),
            (b"a", 0, 0xd24e_c4f1_a98c_6e5b),
            (b"abc", 0, 0x44bc_2cf5_ad77_0999),
            (
                b"Nobody inspects the spammish repetition",
                0,
                0xfbce_a83c_8a37_8bf1,
            ),
            (&hundred, 0, 0x6ac1_e580_3216_6597),
            (b"", 0x9e37_79b9_7f4a_7c15, 0xc434_9fc9_3c01_0000),
            (b"a", 0x9e37_79b9_7f4a_7c15, 0x9a7c_6d2e_a455_68c9),
            (b"abc", 0x9e37_79b9_7f4a_7c15, 0x2ed0_f59d_6b43_ac8b),
            (
                b"Nobody inspects the spammish repetition",
                0x9e37_79b9_7f4a_7c15,
                0xeb8b_157c_a26c_bf34,
            ),
            (&hundred, 0x9e37_79b9_7f4a_7c15, 0x3b97_d91e_ba03_e785),
        ];
        for (data, seed, expected) in cases {
            assert_eq!(
                xxh64(data, seed),
                expected,
                "XXH64({:?}, {seed:#x})",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn ln_matches_the_platform_closely() {
        let mut worst: f64 = 0.0;
        let mut x = 1.0f64;
        while x > 1e-300 {
            for m in [
                1.0,
                0.999_999,
                0.75,
                std::f64::consts::FRAC_1_SQRT_2,
                0.7,
                0.5 + 1e-12,
            ] {
                let v = x * m;
                let (ours, theirs) = (ln(v), v.ln());
                let err = if theirs == 0.0 {
                    ours.abs()
                } else {
                    ((ours - theirs) / theirs).abs()
                };
                worst = worst.max(err);
            }
            x *= 0.37;
        }
        assert!(worst < 1e-15, "worst relative error {worst:e}");
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(0.5), -std::f64::consts::LN_2);
        // The smallest and largest x the cost function uses.
        assert!((ln(TWO_POW_MINUS_53) + 53.0 * std::f64::consts::LN_2).abs() < 1e-13);
        assert!(ln(1.0 - TWO_POW_MINUS_53) < 0.0);
    }

    /// The text a backend is hashed by, for both address families: if Rust ever wrote
    /// addresses differently, every key would move; this test says so first.
    #[test]
    fn identities_are_the_address_text() {
        assert_eq!(identity(addr("10.0.0.1:9000")), "10.0.0.1:9000");
        assert_eq!(
            identity(addr("[2001:0DB8:0:0::1]:9000")),
            "[2001:db8::1]:9000"
        );
        assert_eq!(
            identity(addr("[::ffff:10.0.0.1]:9000")),
            "[::ffff:10.0.0.1]:9000"
        );
        assert_eq!(
            identity_hash(addr("10.0.0.1:9000")),
            xxh64(b"10.0.0.1:9000", 0)
        );
    }

    /// The stability contract: these keys go to these backends, in every process and every
    /// future release. If this test fails, users are being remapped: revert the change.
    ///
    /// The expected values were computed independently from the description at the top of this
    /// module (Python: the `xxhash` package's reference XXH64 and the same series for `ln`).
    #[test]
    fn stability_vectors() {
        let k = key_hash(b"alice");
        let b = identity_hash(addr("10.0.0.1:9000"));
        assert_eq!((k, b), (0x73a3_ea48_5f2e_6049, 0x23b5_4805_1e71_493e));
        assert_eq!(cost(k, b, 1).to_bits(), 0x4008_d5cc_50c9_d9f8);

        let pool = |backends: &[(&str, u32)]| -> Vec<(String, (u64, u32))> {
            backends
                .iter()
                .map(|&(a, w)| (a.to_owned(), (identity_hash(addr(a)), w)))
                .collect()
        };
        let choice = |backends: &[(String, (u64, u32))], key: &str| -> String {
            let ids: Vec<(u64, u32)> = backends.iter().map(|(_, id)| *id).collect();
            let order = preference(key.as_bytes(), &ids);
            order
                .first()
                .and_then(|&i| backends.get(i))
                .map(|(a, _)| a.clone())
                .unwrap_or_default()
        };
        let five = pool(&[
            ("10.0.0.1:9000", 1),
            ("10.0.0.2:9000", 1),
            ("10.0.0.3:9000", 1),
            ("10.0.0.4:9000", 1),
            ("10.0.0.5:9000", 1),
        ]);
        let weighted = pool(&[
            ("10.0.0.1:9000", 1),
            ("10.0.0.2:9000", 2),
            ("10.0.0.3:9000", 3),
            ("10.0.0.4:9000", 4),
            ("10.0.0.5:9000", 5),
        ]);
        let mixed = pool(&[
            ("10.0.0.1:9000", 1),
            ("[2001:db8::1]:9000", 1),
            ("192.168.1.20:443", 2),
        ]);
        // key: (five equal, weights 1..5, mixed families and weights)
        let expected = [
            ("user-0", ".5", ".5", "192.168.1.20:443"),
            ("user-1", ".3", ".3", "10.0.0.1:9000"),
            ("user-2", ".2", ".2", "192.168.1.20:443"),
            ("user-3", ".3", ".3", "10.0.0.1:9000"),
            ("user-4", ".3", ".5", "192.168.1.20:443"),
            ("user-5", ".3", ".3", "192.168.1.20:443"),
            ("user-6", ".5", ".5", "192.168.1.20:443"),
            ("user-7", ".2", ".2", "[2001:db8::1]:9000"),
            ("user-8", ".4", ".4", "[2001:db8::1]:9000"),
            ("user-9", ".5", ".5", "[2001:db8::1]:9000"),
            ("user-10", ".1", ".5", "192.168.1.20:443"),
            ("user-11", ".4", ".4", "[2001:db8::1]:9000"),
        ];
        for (key, equal, by_weight, mix) in expected {
            assert_eq!(choice(&five, key), format!("10.0.0{equal}:9000"), "{key}");
            assert_eq!(
                choice(&weighted, key),
                format!("10.0.0{by_weight}:9000"),
                "{key}"
            );
            assert_eq!(choice(&mixed, key), mix, "{key}");
        }
        let ids: Vec<(u64, u32)> = five.iter().map(|(_, id)| *id).collect();
        assert_eq!(preference(b"alice", &ids), [4, 1, 3, 2, 0]);
    }

    #[test]
    fn costs_are_positive_and_scale_with_weight() {
        let k = key_hash(b"k");
        let b = identity_hash(addr("10.0.0.1:9000"));
        let c1 = cost(k, b, 1);
        assert!(c1 > 0.0 && c1.is_finite());
        assert_eq!(cost(k, b, 4), c1 / 4.0);
        assert_eq!(cost(k, b, 0), c1, "weight 0 counts as 1");
    }

    #[test]
    fn preference_is_a_permutation_independent_of_list_order() {
        let ids: Vec<(u64, u32)> = (1..=8)
            .map(|i| (identity_hash(addr(&format!("10.0.0.{i}:9000"))), 1))
            .collect();
        let mut reversed = ids.clone();
        reversed.reverse();
        for key in [&b"alice"[..], b"bob", b"", b"\xff\x00"] {
            let order = preference(key, &ids);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..8).collect::<Vec<_>>());
            let other: Vec<usize> = preference(key, &reversed)
                .into_iter()
                .map(|i| 7 - i)
                .collect();
            assert_eq!(order, other, "list order changes nothing");
        }
    }
}
