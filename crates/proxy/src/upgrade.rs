//! Binary upgrade, the server's side: what a predecessor hands over, and how a successor takes
//! it (the conversation itself is `sluice-handoff`'s).
//!
//! A predecessor hands over every running listener's socket and the admin listener's, then
//! its established spliced tunnels (`handoff.rs`), stops accepting, hands over the tunnels
//! whose handshake finishes meanwhile, and drains like a shutdown what it kept (TLS tunnels,
//! plain HTTP requests in flight). A successor adopts each inherited socket whose listener
//! name and configured address match its own configuration and binds the rest; an inherited
//! socket it has no use for is closed (the predecessor's copy closes with it, and with that
//! the socket).

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice_handoff::{CounterSeries, Endpoint, HandoffError, ListenerMeta};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::reload::Control;
use crate::{BoundListener, ProxyError, Server};

/// The name the admin listener's socket travels under.
const ADMIN: &str = "admin";

/// How long each step of the conversation may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a successor may take between receiving the sockets and accepting on them (it
/// loads certificates, binds new listeners, starts health checks).
const READY_WITHIN: Duration = Duration::from_secs(30);

impl Server {
    /// Binds like [`Server::bind`], adopting the `inherited` sockets of a predecessor where a
    /// configured listener (or the admin listener, named `admin`) has the same name and
    /// configured address.
    pub async fn bind_inherited(
        &self,
        inherited: Vec<(ListenerMeta, OwnedFd)>,
    ) -> Result<Vec<BoundListener>, ProxyError> {
        let mut inherited: Vec<Option<(ListenerMeta, OwnedFd)>> =
            inherited.into_iter().map(Some).collect();
        let bound = self.bind_with(|name, configured| {
            let (meta, fd) = inherited
                .iter_mut()
                .find(|i| {
                    i.as_ref()
                        .is_some_and(|(m, _)| m.name == name && m.configured == configured)
                })?
                .take()?;
            match adopt(fd) {
                Ok(listener) => {
                    info!(listener = %name, addr = %meta.bound, "listening socket taken over");
                    Some(listener)
                }
                Err(error) => {
                    warn!(listener = %name, %error, "cannot use the inherited socket: binding anew");
                    None
                }
            }
        })?;
        for (meta, _) in inherited.into_iter().flatten() {
            info!(listener = %meta.name, addr = %meta.bound, "inherited listener not configured here: closed");
        }
        Ok(bound)
    }

    /// Resolves once [`Server::run`] accepts on every listener.
    pub async fn accepting(&self) {
        loop {
            let started = self.shared.started_accepting.notified();
            if self.is_ready() {
                return;
            }
            started.await;
        }
    }

    /// Serves upgrade requests on `endpoint` until one succeeds, then returns: from then on
    /// this server no longer accepts (its successor does), and the caller shuts it down to
    /// drain what it still serves. A failed upgrade changes nothing here and the wait goes on.
    pub async fn serve_upgrades(&self, endpoint: Endpoint) {
        info!(socket = %endpoint.path().display(), "accepting binary upgrades");
        loop {
            let channel = match endpoint.accept(STEP_TIMEOUT).await {
                Ok(channel) => channel,
                Err(error) => {
                    warn!(%error, "upgrade request failed");
                    // A persistent accept error (e.g. out of descriptors) must not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // The control lock keeps reloads and shutdown out until the successor is
            // accepting or gone: the sockets handed over are the ones that run.
            let mut control = self.shared.control.lock().await;
            if !self.is_ready() {
                drop(control);
                let _ = tokio::task::spawn_blocking(move || {
                    sluice_handoff::refuse(channel, "that sluice is shutting down")
                })
                .await;
                continue;
            }
            let mut sockets = control.listening_sockets();
            if let Some(admin) = self.admin_socket() {
                sockets.push(admin);
            }
            let endpoint_fd = match endpoint.as_fd().try_clone_to_owned() {
                Ok(fd) => fd,
                Err(error) => {
                    warn!(%error, "upgrade refused: cannot copy the upgrade socket");
                    continue;
                }
            };
            // This process keeps its copies of the listening sockets until its last word: a
            // successor that fails before hearing it leaves them open, to accept again on.
            let handed = tokio::task::spawn_blocking(move || {
                let borrowed: Vec<_> = sockets
                    .iter()
                    .map(|(meta, fd)| (meta.clone(), fd.as_fd()))
                    .collect();
                let handed = sluice_handoff::hand_over(
                    channel,
                    &borrowed,
                    endpoint_fd.as_fd(),
                    READY_WITHIN,
                );
                (handed, sockets)
            })
            .await;
            let (handover, sockets) = match handed {
                Ok((Ok(handover), sockets)) => (handover, sockets),
                Ok((Err(error), _)) => {
                    warn!(%error, "upgrade failed: this process keeps serving");
                    continue;
                }
                Err(panic) => {
                    warn!(%panic, "upgrade failed (handoff thread): this process keeps serving");
                    continue;
                }
            };
            let successor = handover.successor;
            // The successor accepts on the same sockets. The tunnels go first, while this
            // process still accepts too; then it stops accepting, and the tunnels whose
            // handshake finishes meanwhile follow.
            let running = &mut control;
            let stop_accepting = move || async move {
                running.stop_all_listeners().await;
                {
                    let mut admin = self.admin_state();
                    admin.socket = None;
                    if let Some(stop) = admin.stop.take() {
                        stop.cancel();
                    }
                }
                self.shared.ready.store(false, Ordering::Relaxed);
            };
            let handover = match crate::handoff::transfer(&self.shared, handover, stop_accepting)
                .await
            {
                Ok(handover) => handover,
                Err((error, false)) => {
                    warn!(%error, successor, "upgrade failed while handing tunnels over: this process keeps serving, and every tunnel not handed over");
                    continue;
                }
                Err((error, true)) => {
                    warn!(%error, successor, "the successor failed after this process stopped accepting");
                    self.accept_again(&mut control, sockets);
                    continue;
                }
            };
            let kept = self.stats().connections_active();
            // The counters as they stand, for the successor to go on from.
            self.publish_metrics();
            let counters = sluice_metrics::Exporter::get()
                .map(|e| e.counters())
                .unwrap_or_default()
                .into_iter()
                .map(|c| CounterSeries {
                    name: c.name,
                    labels: c.labels,
                    value: c.value,
                })
                .collect();
            let last_words = move || {
                handover.send_counters(counters)?;
                handover.done(kept)
            };
            if let Err(error) = tokio::task::spawn_blocking(last_words)
                .await
                .unwrap_or(Err(HandoffError::Closed))
            {
                warn!(%error, successor, "the successor did not hear this process's last word");
                self.accept_again(&mut control, sockets);
                continue;
            }
            drop((control, sockets));
            info!(
                successor,
                kept,
                "upgraded: the successor accepts and relays the tunnels; draining what is left here"
            );
            return;
        }
    }

    /// After a successor failed once this process had stopped accepting (and before it said
    /// its last word): accepts again on the listening sockets it kept, as before the upgrade.
    fn accept_again(&self, control: &mut Control, sockets: Vec<(ListenerMeta, OwnedFd)>) {
        control.accept_again();
        for (meta, fd) in sockets {
            match adopt(fd) {
                Ok(listener) if meta.name == ADMIN => self.serve_admin(listener),
                Ok(listener) => control.start_listener(
                    &self.shared,
                    BoundListener::new(meta.name, listener),
                    meta.configured,
                ),
                Err(error) => {
                    warn!(listener = %meta.name, %error, "cannot accept again on this socket");
                }
            }
        }
        self.shared.ready.store(true, Ordering::Relaxed);
        sluice_metrics::global::ready(true);
        warn!("accepting again: this process keeps serving, with the tunnels it kept");
    }

    /// Adds a predecessor's counters to this process's, so that they go on across a binary
    /// upgrade instead of starting over.
    pub fn carry_counters(&self, series: Vec<CounterSeries>) {
        let samples: Vec<sluice_metrics::CounterSample> = series
            .into_iter()
            .map(|s| sluice_metrics::CounterSample {
                name: s.name,
                labels: s.labels,
                value: s.value,
            })
            .collect();
        sluice_metrics::carry(&samples);
    }

    /// A copy of the admin listener's socket, while it serves.
    fn admin_socket(&self) -> Option<(ListenerMeta, OwnedFd)> {
        let state = self.admin_state();
        let fd = state.socket.as_ref()?.try_clone().ok()?;
        let bound = state.addr?;
        let configured = self.snapshot().config().admin.as_ref()?.listen;
        Some((
            ListenerMeta {
                name: ADMIN.into(),
                configured,
                bound,
            },
            fd,
        ))
    }
}

/// A listening socket received from a predecessor, for tokio.
fn adopt(fd: OwnedFd) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::from(fd);
    // A descriptor that is not a listening TCP socket fails here, not in the accept loop.
    let _: SocketAddr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}
