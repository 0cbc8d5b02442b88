//! Harness of the end-to-end suite: a real sluice proxy, started in this process from TOML text,
//! listening on 127.0.0.1 port 0. The tests themselves live in `e2e/`.
//!
//! The proxy runs on the test's own runtime; [`Proxy::shutdown`] resolves its shutdown future
//! and waits for it to return, exactly as the binary does on SIGTERM.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sluice_proxy::Server;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running proxy.
pub struct Proxy {
    server: Server,
    addrs: Vec<(String, SocketAddr)>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Parses `toml` (panicking with every error if invalid), binds its listeners and runs it.
    pub async fn start(toml: &str) -> Self {
        let config = match sluice_config::parse(toml, "test.toml") {
            Ok(config) => config,
            Err(errors) => panic!("invalid test configuration:\n{errors}\n---\n{toml}"),
        };
        let server = Server::new(config);
        let listeners = server.bind().await.unwrap();
        let addrs = listeners
            .iter()
            .map(|l| (l.name().to_owned(), l.local_addr().unwrap()))
            .collect();
        let (stop, stopped) = oneshot::channel::<()>();
        let run = server.clone();
        let task = tokio::spawn(async move {
            run.run(listeners, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            server,
            addrs,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The address of the first listener.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0].1
    }

    /// The address of the listener with this name.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no listener {name}"))
            .1
    }

    /// `ws://` URL of the first listener with this path.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr(), path)
    }

    /// The admin listener's address (the test's configuration must have an `[admin]` table).
    pub async fn admin_addr(&self) -> SocketAddr {
        self.server
            .admin_addr()
            .await
            .expect("no [admin] in this configuration")
    }

    /// The server, for its live counters.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Applies a new configuration, as SIGHUP does in the binary.
    pub async fn reload(&self, toml: &str) -> Result<u64, sluice_proxy::ReloadError> {
        let config = sluice_config::parse(toml, "reload.toml")?;
        self.server.reload(config).await
    }

    /// Triggers shutdown and waits (at most `within`) for the proxy to return.
    pub async fn shutdown(mut self, within: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(within, task)
                .await
                .expect("proxy did not shut down in time")
                .unwrap();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A configuration with one `http` listener on port 0 and one pool `main` of these backends,
/// plus any `extra` TOML (more pools, routes, timeouts...). A catch-all route to `main` comes
/// last, so routes in `extra` take precedence.
pub fn config(backends: &[SocketAddr], balance: &str, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"

{extra}

[[routes]]
listener = "public"
pool = "main"

[pools.main]
balance = "{balance}"
backends = [{}]
"#,
        backend_list(backends)
    )
}

/// Backend addresses as a TOML array's items.
pub fn backend_list(backends: &[SocketAddr]) -> String {
    backends
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The workspace root (for config files and built binaries).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}
