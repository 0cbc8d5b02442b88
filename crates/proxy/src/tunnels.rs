//! The registry of live tunnels: what drain and shutdown need to close tunnels one by one,
//! oldest first, spread over a window, what a binary upgrade needs to suspend every tunnel it
//! can hand over, and what the metrics publisher reads to count the bytes of tunnels while
//! they live.
//!
//! A tunnel registers when its relay starts and is removed when it ends (RAII). Each entry holds
//! the tunnel's backend and its [`Live`] state, shared with the tunnel's task: the live byte
//! counters, what of them was published, and the stop signal (an atomic and the task's waker:
//! a few dozen bytes in the allocation the counters need anyway, where a cancellation token
//! per tunnel cost a tree node of its own and a 96-byte wait in every idle tunnel's future).
//! The registry is sharded by tunnel id so the two brief lock holds per tunnel lifetime
//! (insert, remove) do not contend; nothing touches it per relayed byte. Drain, shutdown and
//! the publisher (every few seconds) scan it whole.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use sluice_balance::Backend;
use sluice_metrics::BackendMetrics;
use sluice_splice::{Stop, Traffic};
use tokio::time::Instant;
use tracing::{debug, info};

const SHARDS: usize = 16;

/// One live tunnel as the registry sees it.
#[derive(Debug)]
struct Entry {
    backend: Arc<Backend>,
    live: Arc<Live>,
    /// Spliced (two plain sockets): a successor process can take it over.
    portable: bool,
}

/// What a live tunnel shares with the registry: its byte counters (moved by the relay), how
/// much of them the metrics have, and its stop signal.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) traffic: Traffic,
    metrics: Arc<BackendMetrics>,
    published: [AtomicU64; 2],
    /// What the tunnel was asked to do since it registered: `RUNNING`, `CLOSE` or `SUSPEND`.
    /// Only ever raised while registered: a suspension asked wins over a close asked, however
    /// late the tunnel acts (a handoff that ended meanwhile gives the tunnel back, never
    /// closes it).
    asked: AtomicU8,
    /// The task relaying the tunnel, woken when it is asked.
    waker: AtomicWaker,
}

const RUNNING: u8 = 0;
const CLOSE: u8 = 1;
const SUSPEND: u8 = 2;

impl Live {
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
            asked: AtomicU8::new(RUNNING),
            waker: AtomicWaker::new(),
        }
    }

    /// Resolves when drain or shutdown asks the tunnel to close ([`Stop::Close`]), or a binary
    /// upgrade to suspend it ([`Stop::Suspend`]: asked of portable tunnels only).
    pub(crate) fn stopped(&self) -> Stopped<'_> {
        Stopped { live: self }
    }

    /// Asks the tunnel to close (`CLOSE`) or suspend (`SUSPEND`), and wakes its task.
    fn ask(&self, what: u8) {
        self.asked.fetch_max(what, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Whether the tunnel was asked to suspend.
    fn asked_to_suspend(&self) -> bool {
        self.asked.load(Ordering::Acquire) == SUSPEND
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
    /// Shutdown is closing every tunnel: one registered from now on is told at once.
    closing: AtomicBool,
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
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Some(entry) = self.tunnels.shard(self.id).remove(&self.id) {
            entry.live.publish();
            entry.live.metrics.tunnels_active.decrement(1.0);
        }
    }
}

/// The future of [`Live::stopped`]: one reference, polled before every relay step
/// (an atomic load, and the waker registered without a lock).
#[derive(Debug)]
pub(crate) struct Stopped<'a> {
    live: &'a Live,
}

impl Future for Stopped<'_> {
    type Output = Stop;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Stop> {
        let asked = |live: &Live| match live.asked.load(Ordering::Acquire) {
            RUNNING => None,
            SUSPEND => Some(Stop::Suspend),
            _ => Some(Stop::Close),
        };
        if let Some(stop) = asked(self.live) {
            return Poll::Ready(stop);
        }
        self.live.waker.register(cx.waker());
        // Asked between the load and the registration: that ask's wake may have missed it.
        asked(self.live).map_or(Poll::Pending, Poll::Ready)
    }
}

impl Tunnels {
    /// Registers tunnel `id` to `backend`, sharing `live` with it (its counters and stop
    /// signal). A [`Portability::Portable`] tunnel registered while tunnels are being
    /// suspended is told at once, and any tunnel registered while shutdown closes them all.
    pub(crate) fn register(
        &self,
        id: u64,
        backend: Arc<Backend>,
        live: Arc<Live>,
        portability: Portability,
    ) -> Registration<'_> {
        let portable = portability != Portability::Never;
        // A tunnel given back by a handoff registers again with its state: what it was asked
        // then is answered.
        live.asked.store(RUNNING, Ordering::Release);
        let mut shard = self.shard(id);
        // Under the shard lock: either `suspend_portable` (or `close_all`) sees the entry, or
        // this sees its flag.
        if portability == Portability::Portable && self.suspending.load(Ordering::Acquire) {
            live.ask(SUSPEND);
        }
        if self.closing.load(Ordering::Acquire) {
            live.ask(CLOSE);
        }
        // The backend's `sluice_tunnels_active` counts registered tunnels (a guard of its own
        // would be 16 more bytes in every tunnel's future).
        live.metrics.tunnels_active.increment(1.0);
        shard.insert(
            id,
            Entry {
                backend,
                live,
                portable,
            },
        );
        drop(shard);
        Registration { tunnels: self, id }
    }

    /// Tells every portable tunnel, and each one registered until [`Tunnels::end_suspending`],
    /// to suspend (a binary upgrade hands them over). Returns how many were live.
    pub(crate) fn suspend_portable(&self) -> usize {
        self.suspending.store(true, Ordering::Release);
        let mut asked = Vec::new();
        for shard in &self.shards {
            asked.extend(
                lock(shard)
                    .values()
                    .filter(|e| e.portable)
                    .map(|e| Arc::clone(&e.live)),
            );
        }
        for live in &asked {
            live.ask(SUSPEND);
        }
        asked.len()
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
            .map(|s| {
                lock(s)
                    .values()
                    .filter(|e| e.live.asked_to_suspend())
                    .count()
            })
            .sum()
    }

    /// Publishes the bytes every live tunnel moved since the last time.
    pub(crate) fn publish_bytes(&self) {
        let mut live: Vec<Arc<Live>> = Vec::new();
        for shard in &self.shards {
            live.extend(lock(shard).values().map(|e| Arc::clone(&e.live)));
        }
        // Counted outside the locks.
        for tunnel in live {
            tunnel.publish();
        }
    }

    /// Live tunnels now.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// The live tunnels that `filter` selects, oldest first.
    fn select(&self, filter: impl Fn(&Entry) -> bool) -> Vec<Arc<Live>> {
        let mut chosen: Vec<(u64, Arc<Live>)> = Vec::new();
        for shard in &self.shards {
            chosen.extend(
                lock(shard)
                    .iter()
                    .filter(|(_, e)| filter(e))
                    .map(|(id, e)| (*id, Arc::clone(&e.live))),
            );
        }
        chosen.sort_unstable_by_key(|(id, _)| *id);
        chosen.into_iter().map(|(_, live)| live).collect()
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

    /// Closes every live tunnel, oldest first, spread evenly over `spread`, and each one
    /// registered from now on at once (shutdown).
    pub(crate) async fn close_all(&self, spread: Duration) -> usize {
        self.closing.store(true, Ordering::Release);
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

/// Asks each tunnel to close at its slot: the i-th of n at `start + spread × i / n`, so the
/// first goes at once and the closes are even over the window (never all at once: clients
/// reconnect somewhere, and a burst of reconnects is an outage of its own).
async fn close_spread(victims: Vec<Arc<Live>>, spread: Duration) {
    let start = Instant::now();
    let n = victims.len() as u32;
    for (i, live) in (0u32..).zip(victims) {
        if n > 1 {
            tokio::time::sleep_until(start + spread * i / n).await;
        }
        debug!(tunnel = i, "closing");
        live.ask(CLOSE);
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

    fn live() -> Arc<Live> {
        Arc::new(Live::continued(
            Arc::new(BackendMetrics::new("p", "b")),
            0,
            0,
        ))
    }

    /// Whether the tunnel of `live` was asked to stop (without waiting).
    fn asked(live: &Live) -> Option<Stop> {
        let mut stopped = std::pin::pin!(live.stopped());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match stopped.as_mut().poll(&mut cx) {
            Poll::Ready(stop) => Some(stop),
            Poll::Pending => None,
        }
    }

    #[test]
    fn registrations_come_and_go() {
        let tunnels = Tunnels::default();
        let b = backend(1);
        let r1 = tunnels.register(1, Arc::clone(&b), live(), Portability::Portable);
        let r2 = tunnels.register(2, Arc::clone(&b), live(), Portability::Never);
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
        let (plain_live, tls_live) = (live(), live());
        let plain = tunnels.register(1, Arc::clone(&b), Arc::clone(&plain_live), Portable);
        let tls = tunnels.register(2, Arc::clone(&b), Arc::clone(&tls_live), Never);
        assert_eq!(tunnels.suspend_portable(), 1);
        assert_eq!(tunnels.asked(), 1);
        assert_eq!(plain_live.stopped().await, Stop::Suspend);
        assert_eq!(asked(&tls_live), None, "a TLS tunnel stays");
        let late_live = live();
        let late = tunnels.register(3, Arc::clone(&b), Arc::clone(&late_live), Portable);
        assert_eq!(late_live.stopped().await, Stop::Suspend);
        assert_eq!(tunnels.asked(), 2);
        tunnels.end_suspending();
        // Asked before the handoff ended: still a suspension (the tunnel is given back), even
        // when a close is asked too.
        plain_live.ask(CLOSE);
        assert_eq!(plain_live.stopped().await, Stop::Suspend);
        drop((plain, late));
        // Given back during the handoff: registered again with the same state, not asked
        // again by it.
        let back = tunnels.register(4, Arc::clone(&b), Arc::clone(&plain_live), Returned);
        assert_eq!(asked(&plain_live), None);
        assert_eq!(tunnels.asked(), 0);
        // Told to stop by a drain or a shutdown: it closes.
        plain_live.ask(CLOSE);
        assert_eq!(plain_live.stopped().await, Stop::Close);
        let after_live = live();
        let after = tunnels.register(5, b, Arc::clone(&after_live), Portable);
        assert_eq!(asked(&after_live), None);
        drop((tls, back, after));
        assert_eq!(tunnels.len(), 0);
    }

    #[tokio::test]
    async fn an_ask_wakes_the_waiting_task_and_shutdown_closes_late_registrations() {
        let tunnels = Arc::new(Tunnels::default());
        let b = backend(1);
        let waiting = live();
        let registration = tunnels.register(
            1,
            Arc::clone(&b),
            Arc::clone(&waiting),
            Portability::Portable,
        );
        let task = tokio::spawn({
            let waiting = Arc::clone(&waiting);
            async move { waiting.stopped().await }
        });
        tokio::task::yield_now().await;
        assert!(!task.is_finished(), "not asked yet");
        assert_eq!(tunnels.close_all(Duration::ZERO).await, 1);
        assert_eq!(task.await.unwrap(), Stop::Close);
        drop(registration);
        // Shutdown closes tunnels registered after its sweep at once.
        let late = live();
        let late_registration = tunnels.register(2, b, Arc::clone(&late), Portability::Portable);
        assert_eq!(asked(&late), Some(Stop::Close));
        drop(late_registration);
    }

    #[test]
    fn bytes_are_published_once_however_publications_interleave() {
        let bytes = live();
        let published = |b: &Live| b.published[0].load(Ordering::Relaxed);
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
                let live = live();
                let registration =
                    tunnels.register(id, Arc::clone(be), Arc::clone(&live), Portability::Portable);
                (id, live, registration)
            })
            .collect();
        let start = Instant::now();
        let closed_at = Arc::new(Mutex::new(Vec::new()));
        for (id, live, _) in &regs {
            let (id, live, closed_at) = (*id, Arc::clone(live), Arc::clone(&closed_at));
            tokio::spawn(async move {
                live.stopped().await;
                let secs = (Instant::now() - start).as_secs();
                closed_at.lock().unwrap().push((id, secs));
            });
        }
        assert_eq!(tunnels.close_backend(&a, Duration::from_secs(8)).await, 4);
        tokio::task::yield_now().await;
        let mut order = closed_at.lock().unwrap().clone();
        order.sort_unstable_by_key(|&(_, secs)| secs);
        assert_eq!(order, vec![(3, 0), (5, 2), (21, 4), (40, 6)]);
        assert_eq!(asked(&regs[2].1), None, "b's tunnel is untouched");
    }
}
