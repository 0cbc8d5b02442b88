//! Binary upgrade, the tunnels: a predecessor suspends every spliced tunnel and sends it to its
//! successor, which relays it from where it stopped (the conversation is `sluice-handoff`'s,
//! the suspended state `sluice-splice`'s, the listening sockets `upgrade.rs`'s).
//!
//! **Predecessor.** Once the successor accepts, [`transfer`] tells every portable tunnel to
//! suspend ([`crate::tunnels::Tunnels::suspend_portable`]). Each tunnel's task, seeing
//! [`sluice_splice::Relayed::Suspended`], describes itself ([`describe`]) and queues itself
//! ([`hand_over`]), then waits for a verdict: handed over (the task ends, its accounting with
//! it) or kept (it resumes relaying here, nothing lost). The transfer sends the queue in
//! batches of at most [`sluice_handoff::MAX_FDS`] descriptors; a tunnel whose batch was adopted
//! is released, then its descriptors here are closed. Any failure ends the handoff: every tunnel
//! not yet adopted is kept, and this process goes on as before (it still accepts: it stops
//! accepting only once the tunnels it had are across).
//!
//! **Successor.** [`crate::Server::adopt_tunnels`] checks each tunnel of a batch against this
//! process's configuration (its pool and backend must exist here) and its descriptors (two TCP
//! sockets, pipes holding exactly the bytes said), and refuses what fails; after the
//! predecessor's `Released`, [`crate::Server::start_adopted`] gives each one a task, counted like
//! a tunnel of its own: connection and tunnel gauges, the backend's live count (`least_conn`),
//! drain and shutdown, byte counters going on from the predecessor's figures.
//!
//! TLS tunnels (the session's keys live in this process) and tunnels still in their L7 act are
//! not handed over: they finish in the predecessor, which drains them as on shutdown.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sluice_balance::{Backend, BackendGuard};
use sluice_handoff::{DirectionMeta, HandoffError, Handover, Peer, Refusal, TunnelMeta};
use sluice_splice::{Held, Pending, PendingPipe, Side, Suspended};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::Shared;
use crate::conn::{self, GaugeGuard, Origin, Ready, Streams, TunnelMetrics};

/// A handoff's verdict on a suspended tunnel: `Err` gives it back to resume here.
type Verdict = Result<(), Suspended>;

/// Where suspended tunnels wait for the transfer, while one runs.
#[derive(Debug, Default)]
pub(crate) struct Handoff {
    queue: Mutex<Option<mpsc::UnboundedSender<Outgoing>>>,
}

impl Handoff {
    fn open(&self) -> mpsc::UnboundedReceiver<Outgoing> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.lock() = Some(tx);
        rx
    }

    fn close(&self) {
        *self.lock() = None;
    }

    /// Queues a tunnel for the transfer; when none runs, the tunnel goes straight back to its
    /// task (`Outgoing`'s drop).
    fn send(&self, outgoing: Outgoing) {
        if let Some(queue) = self.lock().as_ref() {
            let _ = queue.send(outgoing);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<mpsc::UnboundedSender<Outgoing>>> {
        // Held for a send or a swap only; a poisoned lock still holds a valid sender.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A suspended tunnel on its way out, and the task waiting for its verdict. Dropped without a
/// verdict (the transfer failed or ended), it goes back to its task: never lost, never closed
/// by the transfer.
struct Outgoing {
    meta: TunnelMeta,
    /// Its backend, whose pool the transfer names in `meta` (one lookup per transfer, not a
    /// scan of every pool per tunnel).
    backend: Arc<Backend>,
    tunnel: Option<Suspended>,
    verdict: Option<oneshot::Sender<Verdict>>,
}

impl Outgoing {
    /// Its descriptors, in [`TunnelMeta::fds`] order.
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let Some(t) = &self.tunnel else {
            return Vec::new();
        };
        let mut fds = vec![t.client.as_fd(), t.backend.as_fd()];
        for held in [&t.client_to_backend, &t.backend_to_client] {
            if let Pending::Pipe(pipe) = &held.pending {
                let (read, write) = pipe.fds();
                fds.extend([read, write]);
            }
        }
        fds
    }

    /// The successor relays it now: this process's descriptors close, the task ends.
    fn handed_over(mut self) {
        drop(self.tunnel.take());
        if let Some(verdict) = self.verdict.take() {
            let _ = verdict.send(Ok(()));
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if let (Some(tunnel), Some(verdict)) = (self.tunnel.take(), self.verdict.take()) {
            // The task resumes it; if the task is gone, the tunnel closes here.
            let _ = verdict.send(Err(tunnel));
        }
    }
}

/// What a successor needs to know of a suspended tunnel (its pool is named by the transfer).
pub(crate) fn describe(tunnel: &Suspended, guard: &BackendGuard, origin: Origin<'_>) -> TunnelMeta {
    let client = tunnel
        .client
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    TunnelMeta {
        listener: origin.listener.to_owned(),
        pool: String::new(),
        backend: guard.addr(),
        client,
        age_ms: millis(origin.started.elapsed()),
        client_to_backend: direction_meta(&tunnel.client_to_backend),
        backend_to_client: direction_meta(&tunnel.backend_to_client),
        first_eof: tunnel.first_eof.map(|side| match side {
            Side::Client => Peer::Client,
            Side::Backend => Peer::Backend,
        }),
        idle_ms: millis(tunnel.idle_for),
        half_closed_ms: tunnel.half_closed_for.map(millis),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn direction_meta(held: &Held) -> DirectionMeta {
    DirectionMeta {
        pending: held.pending.len() as u64,
        read_eof: held.read_eof,
        done: held.done,
        spliced: held.spliced,
        copied: held.copied,
    }
}

/// Queues a suspended tunnel for the transfer (at once, so that a transfer that finds no
/// portable tunnel registered has them all queued); the future resolves with the verdict. A
/// tunnel that cannot travel (bytes in memory) or comes when no transfer runs is given back.
pub(crate) fn hand_over(
    shared: &Shared,
    meta: TunnelMeta,
    backend: Arc<Backend>,
    tunnel: Suspended,
) -> impl Future<Output = Verdict> + use<> {
    let (tx, rx) = oneshot::channel();
    let outgoing = Outgoing {
        meta,
        backend,
        tunnel: Some(tunnel),
        verdict: Some(tx),
    };
    if outgoing.tunnel.as_ref().is_some_and(Suspended::is_portable) {
        shared.handoff.send(outgoing);
    } else {
        drop(outgoing); // gives it back at once
    }
    // A verdict is always sent (see `Outgoing`'s drop); a closed channel would mean the
    // tunnel was dropped with it: closed, nothing left to do.
    async move { rx.await.unwrap_or(Ok(())) }
}

/// How long the predecessor keeps suspending tunnels while it still accepts.
const FIRST_SWEEP_LIMIT: Duration = Duration::from_secs(10);
/// Longest wait for the tunnels still in their handshake once the predecessor stopped
/// accepting (the successor waits up to a minute for each message).
const LAST_SWEEP_LIMIT: Duration = Duration::from_secs(50);
/// How often the transfer checks whether it is done, when no tunnel is queued.
const POLL: Duration = Duration::from_millis(10);

/// The predecessor's side of a tunnel handoff: first every portable tunnel (this process still
/// accepts; tunnels established meanwhile follow at once), then `stop_accepting`, then the
/// tunnels whose handshake finishes until none is left in flight or the handshake and connect
/// timeouts have passed. Returns the channel for the last word (counters, `Done`); on an
/// error, whether this process had stopped accepting by then (if not, it serves as before).
pub(crate) async fn transfer<F, Fut>(
    shared: &Arc<Shared>,
    handover: Handover,
    stop_accepting: F,
) -> Result<Handover, (HandoffError, bool)>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut queue = shared.handoff.open();
    let live = shared.tunnels.suspend_portable();
    info!(tunnels = live, "handing tunnels over");
    // Each backend's pool, as this process routes now (the control lock keeps reloads out
    // until the transfer ends); a backend a reload retired has none: the successor refuses
    // its tunnels, and they drain here.
    let pools = shared
        .snapshot
        .load()
        .pools()
        .iter()
        .flat_map(|p| {
            p.backends()
                .iter()
                .map(move |b| (Arc::as_ptr(b) as usize, p.name().to_owned()))
        })
        .collect();
    let mut transfer = Transfer {
        shared,
        pools,
        handover: Some(handover),
        waiting: VecDeque::new(),
        handed: 0,
        in_flight: 0,
    };
    let first = transfer
        .until(&mut queue, Instant::now() + FIRST_SWEEP_LIMIT, |s| {
            s.tunnels.asked() == 0
        })
        .await;
    if let Err(error) = first {
        transfer.end(queue);
        return Err((error, false));
    }
    stop_accepting().await;
    let timeouts = shared.snapshot.load().config().timeouts;
    let last =
        (timeouts.handshake + timeouts.connect + Duration::from_secs(1)).min(LAST_SWEEP_LIMIT);
    // Done when nothing but kept tunnels (TLS, refused) is left: no handshake in flight that
    // could still become a portable tunnel.
    let second = transfer
        .until(&mut queue, Instant::now() + last, |s| {
            s.tunnels.asked() == 0 && s.stats.connections_active() == s.tunnels.len() as u64
        })
        .await;
    let handover = transfer.handover.take();
    transfer.end(queue);
    info!(
        handed = transfer.handed,
        in_flight_bytes = transfer.in_flight,
        "tunnels handed over"
    );
    match second {
        Ok(()) => handover.ok_or((HandoffError::Closed, true)),
        Err(error) => Err((error, true)),
    }
}

struct Transfer<'a> {
    shared: &'a Arc<Shared>,
    /// Pool names by backend (its `Arc`'s address).
    pools: HashMap<usize, String>,
    /// Taken by each batch's blocking thread and put back.
    handover: Option<Handover>,
    /// Taken from the queue, not yet sent.
    waiting: VecDeque<Outgoing>,
    handed: usize,
    /// Bytes that were in flight (in pipes) in the tunnels handed over.
    in_flight: u64,
}

impl Transfer<'_> {
    /// Ends the transfer: tunnels registered from now on are not asked to suspend, and every
    /// tunnel not handed over goes back to its task (a tunnel asked earlier that acts on it
    /// only now is given back the same way).
    fn end(&mut self, mut queue: mpsc::UnboundedReceiver<Outgoing>) {
        self.shared.tunnels.end_suspending();
        self.shared.handoff.close();
        queue.close();
        while let Ok(outgoing) = queue.try_recv() {
            self.waiting.push_back(outgoing);
        }
        if !self.waiting.is_empty() {
            sluice_metrics::global::handoff_tunnels("kept", self.waiting.len());
            info!(
                tunnels = self.waiting.len(),
                "tunnels not handed over: relayed here"
            );
        }
        self.waiting.clear();
    }

    /// Sends batches until `done` holds with nothing queued, or `deadline`.
    async fn until(
        &mut self,
        queue: &mut mpsc::UnboundedReceiver<Outgoing>,
        deadline: Instant,
        done: impl Fn(&Shared) -> bool,
    ) -> Result<(), HandoffError> {
        loop {
            while let Ok(outgoing) = queue.try_recv() {
                self.waiting.push_back(outgoing);
            }
            if !self.waiting.is_empty() {
                self.send_batch().await?;
                continue;
            }
            if done(self.shared) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                debug!("handoff sweep ended by its deadline");
                return Ok(());
            }
            tokio::select! {
                outgoing = queue.recv() => self.waiting.extend(outgoing),
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Sends the next batch; adopted tunnels are released and closed here, refused ones go
    /// back to their tasks. On an error the batch goes back whole (and the caller ends).
    async fn send_batch(&mut self) -> Result<(), HandoffError> {
        let mut batch = sluice_handoff::next_batch(&mut self.waiting, |o| o.meta.fds());
        for outgoing in &mut batch {
            let backend = Arc::as_ptr(&outgoing.backend) as usize;
            outgoing.meta.pool = self.pools.get(&backend).cloned().unwrap_or_default();
        }
        let handover = self.handover.take().ok_or(HandoffError::Closed)?;
        let (result, handover, batch) = tokio::task::spawn_blocking(move || {
            let metas = batch.iter().map(|o| o.meta.clone()).collect();
            let result = {
                let fds: Vec<BorrowedFd<'_>> = batch.iter().flat_map(Outgoing::fds).collect();
                handover.send_tunnels(metas, &fds)
            };
            // Released only once the successor holds the descriptors; closed here after.
            let result = result.and_then(|refused| handover.release().map(|()| refused));
            (result, handover, batch)
        })
        .await
        .map_err(|e| HandoffError::Malformed(format!("handoff thread: {e}")))?;
        self.handover = Some(handover);
        let refused = match result {
            Ok(refused) => refused,
            Err(error) => {
                // Back in line, in order: `end` gives them back to their tasks.
                for outgoing in batch.into_iter().rev() {
                    self.waiting.push_front(outgoing);
                }
                return Err(error);
            }
        };
        let (batch_len, mut n_refused) = (batch.len(), 0);
        for (index, outgoing) in batch.into_iter().enumerate() {
            match refused.iter().find(|r| r.index == index) {
                Some(refusal) => {
                    n_refused += 1;
                    info!(
                        pool = %outgoing.meta.pool,
                        backend = %outgoing.meta.backend,
                        reason = %refusal.reason,
                        "the successor refused a tunnel: it stays here"
                    );
                }
                None => {
                    self.handed += 1;
                    self.in_flight += outgoing.meta.client_to_backend.pending
                        + outgoing.meta.backend_to_client.pending;
                    outgoing.handed_over();
                }
            }
        }
        sluice_metrics::global::handoff_tunnels("handed_over", batch_len - n_refused);
        Ok(())
    }
}

/// Tunnels received from a predecessor, checked, not yet relayed.
#[derive(Debug, Default)]
pub struct Adoption {
    refused: Vec<Refusal>,
    tunnels: Vec<Adopted>,
}

#[derive(Debug)]
struct Adopted {
    meta: TunnelMeta,
    tunnel: Suspended,
    backend: Arc<Backend>,
    pool: usize,
}

impl Adoption {
    /// The tunnels of the batch this process cannot take, and why (for the predecessor).
    pub fn refused(&self) -> Vec<Refusal> {
        self.refused.clone()
    }

    /// How many it takes.
    pub fn len(&self) -> usize {
        self.tunnels.len()
    }

    /// Whether it takes none.
    pub fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
    }
}

impl crate::Server {
    /// Checks a batch of tunnels received from a predecessor: each must belong to a pool and
    /// backend of this configuration, come with two connected TCP sockets and, per direction
    /// with bytes in flight, a pipe holding exactly those bytes. Nothing is relayed yet (see
    /// [`crate::Server::start_adopted`]); dropping the adoption closes this process's copies
    /// only. Needs the runtime (the sockets are registered with it).
    pub fn adopt_tunnels(&self, batch: Vec<(TunnelMeta, Vec<OwnedFd>)>) -> Adoption {
        let snapshot = self.shared.snapshot.load_full();
        let mut adoption = Adoption::default();
        for (index, (meta, fds)) in batch.into_iter().enumerate() {
            match adopt_one(&snapshot, &meta, fds) {
                Ok((tunnel, backend, pool)) => adoption.tunnels.push(Adopted {
                    meta,
                    tunnel,
                    backend,
                    pool,
                }),
                Err(reason) => {
                    warn!(pool = %meta.pool, backend = %meta.backend, %reason, "tunnel refused");
                    adoption.refused.push(Refusal { index, reason });
                }
            }
        }
        sluice_metrics::global::handoff_tunnels("refused", adoption.refused.len());
        adoption
    }

    /// Relays the adopted tunnels here, from where the predecessor stopped. Call only once the
    /// predecessor released them.
    pub fn start_adopted(&self, adoption: Adoption) {
        sluice_metrics::global::handoff_tunnels("adopted", adoption.tunnels.len());
        for adopted in adoption.tunnels {
            let shared = Arc::clone(&self.shared);
            self.shared.tasks.spawn(run_adopted(shared, adopted));
        }
    }
}

fn adopt_one(
    snapshot: &crate::snapshot::Snapshot,
    meta: &TunnelMeta,
    fds: Vec<OwnedFd>,
) -> Result<(Suspended, Arc<Backend>, usize), String> {
    let pool = snapshot
        .pools()
        .iter()
        .position(|p| p.name() == meta.pool)
        .ok_or_else(|| format!("no pool {:?} here", meta.pool))?;
    let backend = snapshot
        .pool(pool)
        .and_then(|p| p.backend(meta.backend))
        .cloned()
        .ok_or_else(|| format!("no backend {} in pool {:?} here", meta.backend, meta.pool))?;
    if fds.len() != meta.fds() {
        return Err(format!("{} descriptors, not {}", fds.len(), meta.fds()));
    }
    let mut fds = fds.into_iter();
    let mut socket = |what: &str| -> Result<tokio::net::TcpStream, String> {
        let fd = fds.next().ok_or("descriptors missing")?;
        let stream = std::net::TcpStream::from(fd);
        // A descriptor that is not a connected TCP socket fails here.
        stream
            .peer_addr()
            .map_err(|e| format!("the {what} descriptor is not a connected socket: {e}"))?;
        stream
            .set_nonblocking(true)
            .map_err(|e| format!("{what} socket: {e}"))?;
        tokio::net::TcpStream::from_std(stream).map_err(|e| format!("{what} socket: {e}"))
    };
    let client = socket("client")?;
    let backend_socket = socket("backend")?;
    let mut held = |d: &DirectionMeta| -> Result<Held, String> {
        let pending = if d.pending == 0 {
            Pending::Empty
        } else {
            let (read, write) = (fds.next(), fds.next());
            let (Some(read), Some(write)) = (read, write) else {
                return Err("pipe descriptors missing".into());
            };
            let len = usize::try_from(d.pending).map_err(|e| e.to_string())?;
            Pending::Pipe(PendingPipe::adopt(read, write, len).map_err(|e| format!("pipe: {e}"))?)
        };
        Ok(Held {
            pending,
            read_eof: d.read_eof,
            done: d.done,
            spliced: d.spliced,
            copied: d.copied,
        })
    };
    let client_to_backend = held(&meta.client_to_backend)?;
    let backend_to_client = held(&meta.backend_to_client)?;
    let tunnel = Suspended {
        client,
        backend: backend_socket,
        client_to_backend,
        backend_to_client,
        first_eof: meta.first_eof.map(|peer| match peer {
            Peer::Client => Side::Client,
            Peer::Backend => Side::Backend,
        }),
        idle_for: Duration::from_millis(meta.idle_ms),
        half_closed_for: meta.half_closed_ms.map(Duration::from_millis),
    };
    Ok((tunnel, backend, pool))
}

/// An adopted tunnel's task: counted as a connection of its listener and a tunnel of its
/// backend, like one accepted here (`conn::connection`, with a first act that has nothing
/// left to do).
fn run_adopted(shared: Arc<Shared>, adopted: Adopted) -> impl Future<Output = ()> {
    let Adopted {
        meta,
        tunnel,
        backend,
        pool,
    } = adopted;
    let snapshot = shared.snapshot.load_full();
    let active = snapshot
        .listener(&meta.listener)
        .map_or_else(GaugeGuard::none, |l| GaugeGuard::new(&l.metrics().active));
    // Under the connection limit when there is room; over it rather than dropped.
    let permit = Arc::clone(&shared.connections).try_acquire_owned().ok();
    let guard = backend.acquire();
    let metrics = TunnelMetrics::of(&snapshot, pool, &guard)
        .unwrap_or_else(|| TunnelMetrics::unlisted(&guard));
    let options = Arc::clone(snapshot.relay_options());
    drop(snapshot);
    let id = shared
        .next_conn_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = Instant::now();
    debug!(backend = %meta.backend, client = %meta.client, "relaying an adopted tunnel");
    let ready = Ready {
        streams: Streams::Splice(Box::new(tunnel)),
        started: now
            .checked_sub(Duration::from_millis(meta.age_ms))
            .unwrap_or(now),
        guard,
        options,
        metrics,
        active,
        source: None,
    };
    let act = Box::pin(std::future::ready(Some(ready)));
    conn::connection(shared, id, Arc::from(meta.listener), permit, act)
}
