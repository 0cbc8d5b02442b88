//! `/status.json`: what the status page shows, for machines too. Rates are left to the reader
//! (the page computes them from two successive polls), so the server keeps no history.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::Server;

/// The status document of `server`; `listeners` are the bound addresses by listener name.
pub(crate) fn json(server: &Server, listeners: &HashMap<String, SocketAddr>) -> String {
    let snapshot = server.snapshot();
    let stats = server.stats();
    let (pipes_in_use, pipes_idle) = server.pipes();
    let relay = sluice_splice::stats();
    let listeners: Vec<Value> = snapshot
        .config()
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "addr": listeners.get(&l.name).map_or_else(|| l.listen.to_string(), ToString::to_string),
                "mode": "http",
                "accepting": listeners.contains_key(&l.name),
            })
        })
        .collect();
    let pools: Vec<Value> = snapshot
        .pools()
        .iter()
        .map(|pool| {
            let backends: Vec<Value> = pool
                .backends()
                .iter()
                .map(|b| {
                    json!({
                        "addr": b.addr().to_string(),
                        "weight": b.weight(),
                        "available": b.is_available(),
                        "state": if b.is_draining() { "draining" } else { b.health().label() },
                        "live": b.active(),
                    })
                })
                .collect();
            json!({
                "name": pool.name(),
                "balance": pool.balance().as_str(),
                "live": pool.backends().iter().map(|b| b.active()).sum::<usize>(),
                "backends": backends,
            })
        })
        .collect();
    let reloads = server.reloads();
    let doc = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ready": server.is_ready(),
        "generation": snapshot.generation(),
        "uptime_seconds": server.uptime().as_secs_f64(),
        "connections": {
            "active": stats.connections_active(),
            "accepted": stats.accepted(),
            "refused_over_limit": stats.refused_over_limit(),
            "accept_errors": stats.accept_errors(),
        },
        "handshakes": {
            "upgraded": stats.upgraded(),
            "rejected": stats.rejected(),
            "backend_failed": stats.backend_failed(),
            "abandoned": stats.abandoned(),
        },
        "tunnels": {
            "active": stats.tunnels_active(),
            "max_connections": server.max_connections(),
        },
        "relay": {
            "spliced_bytes": relay.spliced_bytes(),
            "copied_bytes": relay.copied_bytes(),
            "copy_fallbacks": relay.copy_fallbacks(),
            "pipes_grown": relay.pipes_grown(),
            "pipe_grow_refused": relay.pipe_grow_refused(),
            "pipes_in_use": pipes_in_use,
            "pipes_idle": pipes_idle,
        },
        "reloads": {
            "succeeded": reloads.succeeded(),
            "failed": reloads.failed(),
            "last_success_unix": reloads.last_success_unix(),
        },
        "listeners": listeners,
        "pools": pools,
    });
    doc.to_string()
}
