//! Helpers shared by the binary's test files: temporary files, signals, waiting for exit and
//! for a listening port, and reading the JSON log as it is written.
//!
//! Listeners are configured on port 0 and their address is read back from the `listening` log
//! line: a port found free and released beforehand could be taken by a test running in
//! parallel before the process binds it.

#![allow(dead_code, unreachable_pub)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sluice_testkit::{Message, ws_connect};

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file in a fresh directory of its own under the system's temporary directory.
pub fn temp_file(name: &str, contents: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-cli-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Replaces a file's contents in one step (rename), as configuration tools do.
pub fn replace_file(path: &Path, contents: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// A configuration with one listener `public` on 127.0.0.1 port 0 routing everything to pool
/// `echo` of these backends; `pool` adds keys to the pool, `extra` appends tables
/// (`[timeouts]`, ...). Reloading it keeps the listener (its configured address is unchanged).
pub fn config(backends: &[SocketAddr], pool: &str, extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nlistener = \"public\"\npool = \"echo\"\n\n\
         [pools.echo]\n{pool}\nbackends = [{}]\n\n{extra}\n",
        list.join(", ")
    )
}

/// [`config`] with a `round_robin` pool and a short shutdown (5 s, the last 1 s spread).
pub fn round_robin(backends: &[SocketAddr]) -> String {
    config(
        backends,
        "balance = \"round_robin\"",
        "[timeouts]\nshutdown = \"5s\"\nshutdown_spread = \"1s\"",
    )
}

/// Opens a WebSocket through `addr` with these headers, closes it, and returns the name of
/// the backend that answered (`X-Backend`).
pub async fn landed(addr: SocketAddr, headers: &[(&str, &str)]) -> String {
    use futures_util::StreamExt;
    let (mut ws, response) = sluice_testkit::ws_connect(addr, "/", headers)
        .await
        .unwrap();
    let name = response.headers()["x-backend"].to_str().unwrap().to_owned();
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    name
}

pub fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Waits for the child to exit within `within`; kills it and fails otherwise.
pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "sluice never listened on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `sluice run` process with JSON logs collected line by line as they are written.
pub struct Sluice {
    pub child: Child,
    /// The address of its listener `public`, as it logged it.
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    collector: Option<std::thread::JoinHandle<()>>,
}

impl Sluice {
    /// Starts `sluice run --config <config> <extra>` and waits until it says it started
    /// (listeners bound, signal handlers and pid file in place) and its listener `public`
    /// (configured on port 0) accepts connections at the address it logged.
    pub async fn start(config: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(config, extra, &[]).await
    }

    /// As [`Sluice::start`], with these environment variables (`RUST_LOG` is `info` unless
    /// given).
    pub async fn start_with_env(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(SLUICE)
            .args(["run", "--log-format", "json", "--config"])
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let collector = collect_lines(child.stderr.take().unwrap(), Arc::clone(&log));
        let mut sluice = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            collector: Some(collector),
        };
        let pid = format!("\"pid\":{}", sluice.child.id());
        sluice
            .wait_log(&["sluice started", &pid], Duration::from_secs(20))
            .await;
        let listening = sluice
            .wait_log(
                &["\"message\":\"listening\"", "\"listener\":\"public\""],
                Duration::from_secs(20),
            )
            .await;
        sluice.addr = json_field(&listening, "addr")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {listening}"));
        wait_listening(sluice.addr).await;
        sluice
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line contains every one of `needles`; returns it.
    pub async fn wait_log(&self, needles: &[&str], within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?} in:\n{}",
                self.log().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the log says configuration generation `generation` is applied.
    pub async fn wait_generation(&self, generation: u64) {
        let generation = format!("\"generation\":{generation}");
        self.wait_log(
            &["configuration reloaded", &generation],
            Duration::from_secs(20),
        )
        .await;
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        signal(&self.child, sig);
    }

    /// SIGTERM, then the exit status.
    pub async fn stop(self) -> std::process::ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.exit(Duration::from_secs(60)).await.0
    }

    /// Waits (at most `within`) for the process to exit: its status and every line it logged.
    pub async fn exit(mut self, within: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let collector = self.collector.take();
        let log = Arc::clone(&self.log);
        let mut sluice = self;
        tokio::task::spawn_blocking(move || {
            let sluice = &mut sluice;
            let status = wait_exit(&mut sluice.child, within);
            // The process is gone: its stderr ends, and the collector has every line.
            if let Some(collector) = collector {
                collector.join().unwrap();
            }
            let lines = log.lock().unwrap().clone();
            (status, lines)
        })
        .await
        .unwrap()
    }
}

impl Drop for Sluice {
    /// A test that failed half-way must not leave its process running (or holding the test
    /// runner's output open).
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of a string field of a flat JSON log line.
pub fn json_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{name}\":\""))? + name.len() + 4;
    let rest = line.get(start..)?;
    rest.get(..rest.find('"')?)
}

fn collect_lines(
    stderr: ChildStderr,
    into: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            into.lock().unwrap().push(line);
        }
    })
}

/// Clients opening a WebSocket, echoing once and closing, one after another, until stopped.
pub struct Clients {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Clients {
    pub fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
            async move {
                let mut failures = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                    let attempt = async {
                        let (mut ws, _) = ws_connect(addr, "/", &[])
                            .await
                            .map_err(|e| e.to_string())?;
                        ws.send(Message::text("hi"))
                            .await
                            .map_err(|e| e.to_string())?;
                        match ws.next().await {
                            Some(Ok(m)) if m == Message::text("hi") => {}
                            other => return Err(format!("echo: {other:?}")),
                        }
                        ws.close(None).await.map_err(|e| e.to_string())?;
                        Ok::<(), String>(())
                    };
                    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                        Ok(Ok(())) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => failures.push(e),
                        Err(_) => failures.push("timed out".into()),
                    }
                }
                failures
            }
        });
        Self { stop, ok, task }
    }

    /// Waits until `more` further clients succeeded.
    pub async fn wait_more(&self, more: u64) {
        let target = self.ok.load(Ordering::Relaxed) + more;
        sluice_testkit::wait_until(Duration::from_secs(30), || {
            self.ok.load(Ordering::Relaxed) >= target
        })
        .await;
    }

    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.unwrap();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

impl Sluice {
    /// The address of the admin listener, as the process logged it.
    pub async fn admin_addr(&self) -> SocketAddr {
        let line = self
            .wait_log(&["\"message\":\"admin listener\""], Duration::from_secs(20))
            .await;
        json_field(&line, "addr")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no admin address in {line}"))
    }
}

/// The sum of every series of the metric `name` (a name, or a name and labels as the
/// exposition writes them) on the admin listener at `admin`.
pub async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let response = sluice_testkit::raw_exchange(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        Duration::from_secs(20),
    )
    .await
    .expect("admin listener");
    let text = String::from_utf8_lossy(response.body()).into_owned();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
