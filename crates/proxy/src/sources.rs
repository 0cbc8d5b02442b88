//! Per-source limits (`[limits.per_source]`): how many connections one client address holds,
//! and how fast it opens new ones.
//!
//! A source is a client address (the PROXY-protocol source on listeners that accept the
//! header, else the socket's peer), IPv4 grouped by `ipv4_prefix` (32: each address alone) and
//! IPv6 by `ipv6_prefix` (64 by default: one site, so rotating addresses within a /64 does not
//! escape the limits). Each source has a live connection count and a token bucket of new
//! connections (`connection_rate` per second, `connection_burst` at once).
//!
//! The table is bounded: at most `table_size` sources, the least recently seen forgotten first
//! (among the few oldest, one holding no connection is preferred), so a flood of distinct
//! sources costs a fixed amount of memory and only makes the oldest entries start afresh.
//! It is split into up to 64 shards by a keyed (SipHash, random per process) hash of the source;
//! each shard is a plain mutex over a hash map and an intrusive LRU list in a slab, held for one
//! lookup and a few field updates, never across an `await`: two short holds per connection
//! (admission and release), on a lock shared with 1/64 of the sources.
//!
//! A connection holds a [`SourceGuard`] for its life; dropping it gives the connection back.
//! A guard whose entry was evicted meanwhile gives back nothing (the entry's generation tells).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sluice_config::PerSourceLimits;

/// Most shards: enough that admissions on all cores rarely meet on one lock.
const MAX_SHARDS: usize = 64;
/// Fewest entries per shard, so that small tables keep a meaningful LRU order.
const MIN_SHARD_CAPACITY: usize = 256;
/// How many of the least recently seen entries eviction looks at for one without connections.
const EVICTION_SCAN: usize = 8;
/// End of a list in the slab.
const NIL: u32 = u32::MAX;

/// Why a source may not open a connection now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Over {
    /// It holds `max_connections` already.
    Connections,
    /// Its bucket is empty; a token comes after this long.
    Rate { wait: Duration },
}

/// The per-source table of one server.
#[derive(Debug)]
pub(crate) struct Sources {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    entries: AtomicUsize,
    epoch: Instant,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
}

/// A source as the table keys it: its address masked to the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SourceKey {
    v6: bool,
    bits: u128,
}

/// One admitted connection of a source; dropping it releases the connection.
#[derive(Debug)]
pub(crate) struct SourceGuard {
    table: Arc<Sources>,
    shard: usize,
    key: SourceKey,
    generation: u64,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        if let Some(shard) = self.table.shards.get(self.shard) {
            lock(shard).release(self.key, self.generation);
        }
    }
}

impl Sources {
    /// A table of at most `table_size` sources, keyed by these prefix lengths.
    pub(crate) fn new(table_size: usize, ipv4_prefix: u8, ipv6_prefix: u8) -> Self {
        let table_size = table_size.max(1);
        let count = (table_size / MIN_SHARD_CAPACITY).clamp(1, MAX_SHARDS);
        let shards = (0..count)
            .map(|i| {
                // The first `table_size % count` shards take one more: exactly table_size.
                let capacity = table_size / count + usize::from(i < table_size % count);
                Mutex::new(Shard::new(capacity))
            })
            .collect();
        Self {
            shards,
            hasher: RandomState::new(),
            entries: AtomicUsize::new(0),
            epoch: Instant::now(),
            ipv4_prefix,
            ipv6_prefix,
        }
    }

    /// Sources tracked now.
    pub(crate) fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// The key of a client address (IPv4-mapped IPv6 addresses count as IPv4).
    pub(crate) fn key(&self, ip: IpAddr) -> SourceKey {
        match crate::snapshot::canonical(ip) {
            IpAddr::V4(v4) => SourceKey {
                v6: false,
                bits: u128::from(u32::from(v4) & mask32(self.ipv4_prefix)),
            },
            IpAddr::V6(v6) => SourceKey {
                v6: true,
                bits: u128::from(v6) & mask128(self.ipv6_prefix),
            },
        }
    }

    /// Admits one new connection of `ip` at `now` under `limits`, or says why not. A refused
    /// connection takes no token and holds nothing.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &PerSourceLimits,
        now: Instant,
    ) -> Result<SourceGuard, Over> {
        let key = self.key(ip);
        let shard = usize::try_from(self.hasher.hash_one(key)).unwrap_or(0) % self.shards.len();
        let now_ns =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let Some(mutex) = self.shards.get(shard) else {
            return Err(Over::Connections);
        };
        let (generation, grown) = lock(mutex).admit(key, limits, now_ns)?;
        if grown {
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
        Ok(SourceGuard {
            table: Arc::clone(self),
            shard,
            key,
            generation,
        })
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` held; time in nanoseconds from any
/// fixed origin, passed in (so tests need no clock).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TokenBucket {
    tokens: f64,
    updated_ns: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ns`.
    pub(crate) fn full(burst: u32, now_ns: u64) -> Self {
        Self {
            tokens: f64::from(burst),
            updated_ns: now_ns,
        }
    }

    /// Takes a token at `now_ns`, or says how long until one is there. A clock going backwards
    /// adds nothing.
    pub(crate) fn take(&mut self, now_ns: u64, rate: f64, burst: u32) -> Result<(), Duration> {
        let elapsed = now_ns.saturating_sub(self.updated_ns) as f64 / 1e9;
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        self.updated_ns = self.updated_ns.max(now_ns);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - self.tokens) / rate).max(0.0),
            ))
        }
    }
}

/// One shard: a map from key to slot, and the slots in a doubly linked list, most recently seen
/// first.
#[derive(Debug)]
struct Shard {
    index: HashMap<SourceKey, u32>,
    slots: Vec<Slot>,
    head: u32,
    tail: u32,
    capacity: usize,
    next_generation: u64,
}

#[derive(Debug)]
struct Slot {
    key: SourceKey,
    prev: u32,
    next: u32,
    connections: u32,
    bucket: TokenBucket,
    generation: u64,
}

impl Shard {
    fn new(capacity: usize) -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity: capacity.max(1),
            next_generation: 0,
        }
    }

    /// Admits a connection of `key`: its entry's generation, and whether the shard grew.
    fn admit(
        &mut self,
        key: SourceKey,
        limits: &PerSourceLimits,
        now_ns: u64,
    ) -> Result<(u64, bool), Over> {
        let (at, grown) = match self.index.get(&key) {
            Some(&at) => (at, false),
            None => self.insert(key, limits.connection_burst, now_ns),
        };
        self.touch(at);
        let slot = self.slot(at).ok_or(Over::Connections)?;
        if limits
            .max_connections
            .is_some_and(|max| slot.connections >= max)
        {
            return Err(Over::Connections);
        }
        if let Some(rate) = limits.connection_rate {
            slot.bucket
                .take(now_ns, rate, limits.connection_burst)
                .map_err(|wait| Over::Rate { wait })?;
        }
        slot.connections = slot.connections.saturating_add(1);
        Ok((slot.generation, grown))
    }

    fn release(&mut self, key: SourceKey, generation: u64) {
        let Some(&at) = self.index.get(&key) else {
            return;
        };
        if let Some(slot) = self.slot(at)
            && slot.generation == generation
        {
            slot.connections = slot.connections.saturating_sub(1);
        }
    }

    fn slot(&mut self, at: u32) -> Option<&mut Slot> {
        self.slots.get_mut(usize::try_from(at).ok()?)
    }

    /// A new entry for `key` (a full bucket), in a new slot or the evicted one's.
    fn insert(&mut self, key: SourceKey, burst: u32, now_ns: u64) -> (u32, bool) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let fresh = Slot {
            key,
            prev: NIL,
            next: NIL,
            connections: 0,
            bucket: TokenBucket::full(burst, now_ns),
            generation,
        };
        if self.slots.len() < self.capacity {
            let at = u32::try_from(self.slots.len()).unwrap_or(NIL);
            self.slots.push(fresh);
            self.push_front(at);
            self.index.insert(key, at);
            return (at, true);
        }
        let victim = self.victim();
        self.unlink(victim);
        if let Some(slot) = self.slot(victim) {
            let old = slot.key;
            *slot = fresh;
            self.index.remove(&old);
        }
        self.push_front(victim);
        self.index.insert(key, victim);
        (victim, false)
    }

    /// The entry to forget: among the few least recently seen, the oldest holding no
    /// connection, else the least recently seen.
    fn victim(&self) -> u32 {
        let mut at = self.tail;
        for _ in 0..EVICTION_SCAN {
            let Some(slot) = usize::try_from(at).ok().and_then(|i| self.slots.get(i)) else {
                break;
            };
            if slot.connections == 0 {
                return at;
            }
            at = slot.prev;
        }
        self.tail
    }

    /// Moves a slot to the front (most recently seen).
    fn touch(&mut self, at: u32) {
        if self.head != at {
            self.unlink(at);
            self.push_front(at);
        }
    }

    fn unlink(&mut self, at: u32) {
        let Some(slot) = self.slot(at) else {
            return;
        };
        let (prev, next) = (slot.prev, slot.next);
        slot.prev = NIL;
        slot.next = NIL;
        if prev == NIL {
            if self.head == at {
                self.head = next;
            }
        } else if let Some(p) = self.slot(prev) {
            p.next = next;
        }
        if next == NIL {
            if self.tail == at {
                self.tail = prev;
            }
        } else if let Some(n) = self.slot(next) {
            n.prev = prev;
        }
    }

    fn push_front(&mut self, at: u32) {
        let old_head = self.head;
        if let Some(slot) = self.slot(at) {
            slot.prev = NIL;
            slot.next = old_head;
        }
        if let Some(h) = self.slot(old_head) {
            h.prev = at;
        }
        self.head = at;
        if self.tail == NIL {
            self.tail = at;
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - u32::from(p)),
    }
}

fn mask128(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p if p >= 128 => u128::MAX,
        p => u128::MAX << (128 - u32::from(p)),
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limits(max: Option<u32>, rate: Option<f64>, burst: u32) -> PerSourceLimits {
        PerSourceLimits {
            max_connections: max,
            connection_rate: rate,
            connection_burst: burst,
            ..PerSourceLimits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bucket_starts_full_refills_at_the_rate_and_caps_at_the_burst() {
        let mut b = TokenBucket::full(3, 0);
        assert!(b.take(0, 2.0, 3).is_ok());
        assert!(b.take(0, 2.0, 3).is_ok());
        assert!(b.take(0, 2.0, 3).is_ok());
        // Empty: the next token comes in half a second at 2/s.
        assert_eq!(b.take(0, 2.0, 3), Err(Duration::from_millis(500)));
        assert_eq!(b.take(SEC / 4, 2.0, 3), Err(Duration::from_millis(250)));
        assert!(b.take(SEC / 2, 2.0, 3).is_ok());
        // A long quiet spell refills up to the burst, not beyond.
        for _ in 0..3 {
            assert!(b.take(100 * SEC, 2.0, 3).is_ok());
        }
        assert!(b.take(100 * SEC, 2.0, 3).is_err());
        // A clock going backwards adds nothing and breaks nothing.
        assert!(b.take(50 * SEC, 2.0, 3).is_err());
        assert!(b.take(100 * SEC + SEC / 2, 2.0, 3).is_ok());
    }

    #[test]
    fn bucket_at_slow_rates() {
        // One connection per 10 s, burst 1.
        let mut b = TokenBucket::full(1, 0);
        assert!(b.take(0, 0.1, 1).is_ok());
        assert_eq!(b.take(SEC, 0.1, 1), Err(Duration::from_secs(9)));
        assert!(b.take(10 * SEC, 0.1, 1).is_ok());
    }

    #[test]
    fn counts_connections_per_source_and_releases_them() {
        let table = Arc::new(Sources::new(1024, 32, 64));
        let at = Instant::now();
        let l = limits(Some(2), None, 1);
        let a = table.admit(ip("192.0.2.1"), &l, at).unwrap();
        let _b = table.admit(ip("192.0.2.1"), &l, at).unwrap();
        assert_eq!(
            table.admit(ip("192.0.2.1"), &l, at).unwrap_err(),
            Over::Connections
        );
        // Another address is another source.
        let _c = table.admit(ip("192.0.2.2"), &l, at).unwrap();
        drop(a);
        let _d = table.admit(ip("192.0.2.1"), &l, at).unwrap();
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn rate_limits_new_connections_and_says_when_to_retry() {
        let table = Arc::new(Sources::new(1024, 32, 64));
        let t0 = Instant::now();
        let l = limits(None, Some(1.0), 2);
        let held: Vec<_> = (0..2)
            .map(|_| table.admit(ip("198.51.100.7"), &l, t0).unwrap())
            .collect();
        assert_eq!(
            table.admit(ip("198.51.100.7"), &l, t0).unwrap_err(),
            Over::Rate {
                wait: Duration::from_secs(1)
            }
        );
        drop(held);
        // Releasing connections gives no token back; time does.
        assert!(table.admit(ip("198.51.100.7"), &l, t0).is_err());
        assert!(
            table
                .admit(ip("198.51.100.7"), &l, t0 + Duration::from_secs(1))
                .is_ok()
        );
    }

    #[test]
    fn a_refused_connection_takes_no_token() {
        let table = Arc::new(Sources::new(1024, 32, 64));
        let t0 = Instant::now();
        let l = limits(Some(1), Some(1.0), 2);
        let held = table.admit(ip("192.0.2.9"), &l, t0).unwrap();
        for _ in 0..10 {
            assert_eq!(
                table.admit(ip("192.0.2.9"), &l, t0).unwrap_err(),
                Over::Connections
            );
        }
        drop(held);
        // One token left of the burst of two.
        assert!(table.admit(ip("192.0.2.9"), &l, t0).is_ok());
    }

    #[test]
    fn ipv6_sources_group_by_prefix_and_ipv4_mapped_counts_as_ipv4() {
        let table = Arc::new(Sources::new(1024, 32, 64));
        assert_eq!(
            table.key(ip("2001:db8:1:2::1")),
            table.key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            table.key(ip("2001:db8:1:2::1")),
            table.key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            table.key(ip("::ffff:192.0.2.1")),
            table.key(ip("192.0.2.1"))
        );
        assert_ne!(table.key(ip("192.0.2.1")), table.key(ip("192.0.2.2")));
        let by24 = Sources::new(1024, 24, 48);
        assert_eq!(by24.key(ip("192.0.2.1")), by24.key(ip("192.0.2.200")));
        assert_eq!(
            by24.key(ip("2001:db8:1::1")),
            by24.key(ip("2001:db8:1:ff::1"))
        );
        // IPv4 and IPv6 never share a key, whatever the bits.
        assert_ne!(table.key(ip("0.0.0.1")), table.key(ip("::1")));
        let l = limits(Some(1), None, 1);
        let _a = table
            .admit(ip("2001:db8:1:2::1"), &l, Instant::now())
            .unwrap();
        assert!(
            table
                .admit(ip("2001:db8:1:2::2"), &l, Instant::now())
                .is_err()
        );
    }

    #[test]
    fn the_table_never_grows_past_its_size_under_many_sources() {
        let table = Arc::new(Sources::new(1000, 32, 64));
        let l = limits(Some(5), Some(10.0), 10);
        let at = Instant::now();
        for i in 0..20_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            drop(table.admit(ip, &l, at).unwrap());
            assert!(table.len() <= 1000);
        }
        assert_eq!(table.len(), 1000);
        let total: usize = table.shards.iter().map(|s| lock(s).index.len()).sum();
        assert_eq!(total, 1000);
        for shard in table.shards.iter() {
            let shard = lock(shard);
            assert!(shard.slots.len() <= shard.capacity);
            assert_eq!(shard.index.len(), shard.slots.len());
        }
    }

    #[test]
    fn least_recently_seen_goes_first_and_live_ones_are_spared() {
        // One shard of 16.
        let table = Arc::new(Sources::new(16, 32, 64));
        assert_eq!(table.shards.len(), 1);
        let l = limits(Some(1), None, 1);
        let at = Instant::now();
        let v4 = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        // 0 holds a connection; 1..16 do not.
        let live = table.admit(v4(0), &l, at).unwrap();
        for i in 1..16 {
            drop(table.admit(v4(i), &l, at).unwrap());
        }
        // A 17th source evicts the least recently seen idle one (1), not the live 0.
        drop(table.admit(v4(100), &l, at).unwrap());
        assert!(table.admit(v4(0), &l, at).is_err(), "0 is still counted");
        let keys: Vec<SourceKey> = {
            let shard = lock(&table.shards[0]);
            shard.index.keys().copied().collect()
        };
        assert!(!keys.contains(&table.key(v4(1))));
        assert!(keys.contains(&table.key(v4(2))));
        drop(live);
        assert!(table.admit(v4(0), &l, at).is_ok());
    }

    #[test]
    fn a_guard_of_an_evicted_entry_releases_nothing() {
        let table = Arc::new(Sources::new(16, 32, 64));
        let l = limits(Some(1), None, 1);
        let at = Instant::now();
        let v4 = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        // Every entry holds a connection: eviction has to take the least recently seen (0).
        let guards: Vec<_> = (0..16)
            .map(|i| table.admit(v4(i), &l, at).unwrap())
            .collect();
        let newcomer = table.admit(v4(100), &l, at).unwrap();
        // 0 starts afresh...
        let again = table.admit(v4(0), &l, at).unwrap();
        // ...and the old guard of 0 does not release the new entry's connection.
        drop(guards);
        assert!(table.admit(v4(0), &l, at).is_err());
        drop((again, newcomer));
        assert!(table.admit(v4(0), &l, at).is_ok());
    }
}
