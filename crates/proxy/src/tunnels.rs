//! The registry of live tunnels: what drain and shutdown need to close tunnels one by one,
//! oldest first, spread over a window, what a binary upgrade needs to suspend every tunnel it
//! can hand over, and what the metrics publisher reads to count the bytes of tunnels while
//! they live.
//!
//! A tunnel registers when its relay starts and is removed when it ends (RAII). Each entry holds
//! the tunnel's own stop token, its backend, its live byte counters and what of them was
//! published. The registry is sharded by tunnel id so the two brief lock holds per tunnel
//! lifetime (insert, remove) do not contend; nothing touches it per relayed byte. Drain,
//! shutdown and the publisher (every few seconds) scan it whole.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sluice_balance::Backend;
use sluice_metrics::BackendMetrics;
use sluice_splice::{Stop, Traffic};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

const SHARDS: usize = 16;

/// One live tunnel as the registry sees it.
#[derive(Debug)]
struct Entry {
    backend: Arc<Backend>,
    stop: CancellationToken,
    bytes: Arc<Bytes>,
    /// Spliced (two plain sockets): a successor process can take it over.
    portable: bool,
    /// Its stop signal asks it to suspend (a binary upgrade), not to close. Set with the
    /// signal and read when the tunnel acts on it, however late: a handoff that ended
    /// meanwhile gives the tunnel back, never closes it.
    suspend: bool,
}

/// A tunnel's byte counters (moved by the relay) and how much of them the metrics have.
#[derive(Debug)]
pub(crate) struct Bytes {
    pub(crate) traffic: Traffic,
    metrics: Arc<BackendMetrics>,
    published: [AtomicU64; 2],
}

impl Bytes {
    pub(crate) fn new(metrics: Arc<BackendMetrics>) -> Self {
        Self::continued(metrics, 0, 0)
    }

    /// Counters of a tunnel that moved these bytes before (in the process that handed it
    /// over, which published them): they go on from there, and only what moves here is
    /// published here.
    pub(crate) fn continued(
        metrics: Arc<BackendMetrics>,
        client_to_backend: u64,
        backend_to_client: u64,
    ) -> Self {
        Self {
            traffic: Traffic {
                client_to_backend: AtomicU64::new(client_to_backend),
                backend_to_client: AtomicU64::new(backend_to_client),
            },
            metrics,
            published: [
                AtomicU64::new(client_to_backend),
                AtomicU64::new(backend_to_client),
            ],
        }
    }

    /// Adds what moved since the last publication to the byte counters. Safe to race with
    /// itself: `fetch_max` hands each byte range to exactly one caller.
    pub(crate) fn publish(&self) {
        let moved = [
            (
                &self.traffic.client_to_backend,
                &self.metrics.client_to_backend,
            ),
            (
                &self.traffic.backend_to_client,
                &self.metrics.backend_to_client,
            ),
        ];
        for ((now, counter), published) in moved.into_iter().zip(&self.published) {
            let now = now.load(Ordering::Relaxed);
            let before = published.fetch_max(now, Ordering::Relaxed);
            if now > before {
                counter.increment(now - before);
            }
        }
    }
}

/// Live tunnels, by id (ids grow with accept order, so the smallest is the oldest).
#[derive(Debug, Default)]
pub(crate) struct Tunnels {
    shards: [Mutex<HashMap<u64, Entry>>; SHARDS],
    /// A binary upgrade is handing tunnels over: a portable tunnel told to stop suspends
    /// instead of closing, and one registered meanwhile is told at once.
    suspending: AtomicBool,
}

/// Whether a binary upgrade can take a tunnel over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Portability {
    /// TLS on a side: it stays in this process.
    Never,
    /// Spliced: a binary upgrade takes it over.
    Portable,
    /// Spliced, and just given back by the handoff under way (its successor refused it, or the
    /// handoff failed): a later upgrade may take it, this one does not ask again.
    Returned,
}

/// A tunnel's place in the registry; dropping it removes the tunnel.
#[derive(Debug)]
pub(crate) struct Registration<'a> {
    tunnels: &'a Tunnels,
    id: u64,
    stop: CancellationToken,
    portable: bool,
}

impl Registration<'_> {
    /// Resolves when drain or shutdown asks this tunnel to close ([`Stop::Close`]), or a binary
    /// upgrade to suspend it ([`Stop::Suspend`], portable tunnels only).
    pub(crate) async fn stopped(&self) -> Stop {
        self.stop.cancelled().await;
        let suspend = self.portable
            && self
                .tunnels
                .shard(self.id)
                .get(&self.id)
                .is_some_and(|e| e.suspend);
        if suspend { Stop::Suspend } else { Stop::Close }
    }

    /// Resolves when drain or shutdown asks this tunnel to close.
    pub(crate) fn closed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.stop.cancelled()
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Some(entry) = self.tunnels.shard(self.id).remove(&self.id) {
            entry.bytes.publish();
        }
    }
}

impl Tunnels {
    /// Registers tunnel `id` to `backend`, its bytes counted in `bytes`. Its stop signal is a
    /// child of `parent` (the server's shutdown token), so a tunnel waits on one token, not two.
    /// A [`Portability::Portable`] tunnel registered while tunnels are being suspended is told
    /// at once.
    pub(crate) fn register(
        &self,
        id: u64,
        backend: Arc<Backend>,
        bytes: Arc<Bytes>,
        parent: &CancellationToken,
        portability: Portability,
    ) -> Registration<'_> {
        let stop = parent.child_token();
        let portable = portability != Portability::Never;
        let mut shard = self.shard(id);
        // Under the shard lock: either `suspend_portable` sees the entry, or this sees its
        // flag.
        let suspend =
            portability == Portability::Portable && self.suspending.load(Ordering::Acquire);
        shard.insert(
            id,
            Entry {
                backend,
                stop: stop.clone(),
                bytes,
                portable,
                suspend,
            },
        );
        drop(shard);
        if suspend {
            stop.cancel();
        }
        Registration {
            tunnels: self,
            id,
            stop,
            portable,
        }
    }

    /// Tells every portable tunnel, and each one registered until [`Tunnels::end_suspending`],
    /// to suspend (a binary upgrade hands them over). Returns how many were live.
    pub(crate) fn suspend_portable(&self) -> usize {
        self.suspending.store(true, Ordering::Release);
        let mut asked = Vec::new();
        for shard in &self.shards {
            for entry in lock(shard).values_mut().filter(|e| e.portable) {
                entry.suspend = true;
                asked.push(entry.stop.clone());
            }
        }
        let n = asked.len();
        for stop in asked {
            stop.cancel();
        }
        n
    }

    /// Tunnels registered from now on are not asked to suspend (those already asked still
    /// do, and are given back).
    pub(crate) fn end_suspending(&self) {
        self.suspending.store(false, Ordering::Release);
    }

    /// Tunnels asked to suspend and still registered: during a handoff, those that have not
    /// yet queued themselves (a tunnel queues itself, then leaves).
    pub(crate) fn asked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| lock(s).values().filter(|e| e.suspend).count())
            .sum()
    }

    /// Publishes the bytes every live tunnel moved since the last time.
    pub(crate) fn publish_bytes(&self) {
        let mut live: Vec<Arc<Bytes>> = Vec::new();
        for shard in &self.shards {
            live.extend(lock(shard).values().map(|e| Arc::clone(&e.bytes)));
        }
        // Counted outside the locks.
        for bytes in live {
            bytes.publish();
        }
    }

    /// Live tunnels now.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Stop tokens of the live tunnels that `filter` selects, oldest first.
    fn select(&self, filter: impl Fn(&Entry) -> bool) -> Vec<CancellationToken> {
        let mut chosen: Vec<(u64, CancellationToken)> = Vec::new();
        for shard in &self.shards {
            chosen.extend(
                lock(shard)
                    .iter()
                    .filter(|(_, e)| filter(e))
                    .map(|(id, e)| (*id, e.stop.clone())),
            );
        }
        chosen.sort_unstable_by_key(|(id, _)| *id);
        chosen.into_iter().map(|(_, stop)| stop).collect()
    }

    /// Closes the live tunnels to `backend`, oldest first, spread evenly over `spread`.
    pub(crate) async fn close_backend(&self, backend: &Arc<Backend>, spread: Duration) -> usize {
        let victims = self.select(|e| Arc::ptr_eq(&e.backend, backend));
        let n = victims.len();
        if n > 0 {
            info!(backend = %backend.addr(), tunnels = n, spread = ?spread, "drain deadline: closing tunnels");
        }
        close_spread(victims, spread).await;
        n
    }

    /// Closes every live tunnel, oldest first, spread evenly over `spread`.
    pub(crate) async fn close_all(&self, spread: Duration) -> usize {
        let victims = self.select(|_| true);
        let n = victims.len();
        close_spread(victims, spread).await;
        n
    }

    fn shard(&self, id: u64) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // `SHARDS` is a power of two well within u64; the index is always in range.
        let index = (id % SHARDS as u64) as usize;
        lock(&self.shards[index])
    }
}

/// Cancels each token at its slot: the i-th of n at `start + spread × i / n`, so the first goes
/// at once and the closes are even over the window (never all at once: clients reconnect
/// somewhere, and a burst of reconnects is an outage of its own).
async fn close_spread(victims: Vec<CancellationToken>, spread: Duration) {
    let start = Instant::now();
    let n = victims.len() as u32;
    for (i, stop) in (0u32..).zip(victims) {
        if n > 1 {
            tokio::time::sleep_until(start + spread * i / n).await;
        }
        debug!(tunnel = i, "closing");
        stop.cancel();
    }
}

/// A poisoned shard only means a panic elsewhere while holding it: the map itself is intact.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(port: u16) -> Arc<Backend> {
        Arc::new(Backend::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            1,
        ))
    }

    fn counters() -> Arc<Bytes> {
        Arc::new(Bytes::new(Arc::new(BackendMetrics::new("p", "b"))))
    }

    #[test]
    fn registrations_come_and_go() {
        let tunnels = Tunnels::default();
        let b = backend(1);
        let r1 = tunnels.register(
            1,
            Arc::clone(&b),
            counters(),
            &CancellationToken::new(),
            Portability::Portable,
        );
        let r2 = tunnels.register(
            2,
            Arc::clone(&b),
            counters(),
            &CancellationToken::new(),
            Portability::Never,
        );
        assert_eq!(tunnels.len(), 2);
        drop(r1);
        assert_eq!(tunnels.len(), 1);
        drop(r2);
        assert_eq!(tunnels.len(), 0);
    }

    #[tokio::test]
    async fn suspending_tells_portable_tunnels_only_and_those_registered_meanwhile() {
        use Portability::{Never, Portable, Returned};
        let tunnels = Tunnels::default();
        let b = backend(1);
        let parent = CancellationToken::new();
        let plain = tunnels.register(1, Arc::clone(&b), counters(), &parent, Portable);
        let tls = tunnels.register(2, Arc::clone(&b), counters(), &parent, Never);
        assert_eq!(tunnels.suspend_portable(), 1);
        assert_eq!(tunnels.asked(), 1);
        assert_eq!(plain.stopped().await, Stop::Suspend);
        assert!(!tls.stop.is_cancelled(), "a TLS tunnel stays");
        let late = tunnels.register(3, Arc::clone(&b), counters(), &parent, Portable);
        assert_eq!(late.stopped().await, Stop::Suspend);
        assert_eq!(tunnels.asked(), 2);
        tunnels.end_suspending();
        // Asked before the handoff ended: still a suspension (the tunnel is given back).
        assert_eq!(plain.stopped().await, Stop::Suspend);
        drop((plain, late));
        // Given back during the handoff: not asked again by it.
        let back = tunnels.register(4, Arc::clone(&b), counters(), &parent, Returned);
        assert!(!back.stop.is_cancelled());
        assert_eq!(tunnels.asked(), 0);
        // Told to stop by a drain or a shutdown: it closes.
        back.stop.cancel();
        assert_eq!(back.stopped().await, Stop::Close);
        let after = tunnels.register(5, b, counters(), &parent, Portable);
        assert!(!after.stop.is_cancelled());
        drop((tls, back, after));
        assert_eq!(tunnels.len(), 0);
    }

    #[test]
    fn bytes_are_published_once_however_publications_interleave() {
        let bytes = counters();
        let published = |b: &Bytes| b.published[0].load(Ordering::Relaxed);
        bytes
            .traffic
            .client_to_backend
            .store(100, Ordering::Relaxed);
        bytes.publish();
        assert_eq!(published(&bytes), 100);
        // A publication that read an older figure after a newer one was published adds nothing.
        let stale = 100;
        bytes
            .traffic
            .client_to_backend
            .store(250, Ordering::Relaxed);
        bytes.publish();
        let before = bytes.published[0].fetch_max(stale, Ordering::Relaxed);
        assert_eq!(
            before, 250,
            "a stale figure never moves the published mark back"
        );
        assert_eq!(published(&bytes), 250);
    }

    #[tokio::test(start_paused = true)]
    async fn closes_only_the_backend_s_tunnels_oldest_first_spread_evenly() {
        let tunnels = Tunnels::default();
        let (a, b) = (backend(1), backend(2));
        // Ids spread over shards and registered out of order: 3 is a's oldest, 40 its youngest.
        let regs: Vec<_> = [(40, &a), (3, &a), (17, &b), (21, &a), (5, &a)]
            .into_iter()
            .map(|(id, be)| {
                (
                    id,
                    tunnels.register(
                        id,
                        Arc::clone(be),
                        counters(),
                        &CancellationToken::new(),
                        Portability::Portable,
                    ),
                )
            })
            .collect();
        let start = Instant::now();
        let closed_at = Arc::new(Mutex::new(Vec::new()));
        for (id, registration) in &regs {
            let (id, stop, closed_at) = (*id, registration.stop.clone(), Arc::clone(&closed_at));
            tokio::spawn(async move {
                stop.cancelled().await;
                let secs = (Instant::now() - start).as_secs();
                closed_at.lock().unwrap().push((id, secs));
            });
        }
        assert_eq!(tunnels.close_backend(&a, Duration::from_secs(8)).await, 4);
        tokio::task::yield_now().await;
        let mut order = closed_at.lock().unwrap().clone();
        order.sort_unstable_by_key(|&(_, secs)| secs);
        assert_eq!(order, vec![(3, 0), (5, 2), (21, 4), (40, 6)]);
        assert!(!regs[2].1.stop.is_cancelled(), "b's tunnel is untouched");
    }
}
