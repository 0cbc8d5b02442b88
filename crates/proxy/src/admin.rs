//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/status.json` and `/`, a status
//! page that refreshes itself.
//!
//! A deliberately small HTTP/1.1 server: one request per connection (`Connection: close`),
//! `GET` and `HEAD` only, the request head read with the same strict reader and parser as client
//! traffic (bounded in bytes and time), and nothing else. It listens on loopback unless the
//! configuration says otherwise. With a token configured, `/metrics` and `/status.json` require
//! `Authorization: Bearer <token>`, compared in constant time; `/healthz` and `/readyz`
//! (orchestrators probe them without credentials) and `/` (the page's static HTML, which holds
//! no data and fetches `/status.json` with the token taken from the URL fragment) do not.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use sluice_handshake::{parse_request, read_request_head};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Server;
use crate::status;

const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the recorder's histograms are maintained and the relay totals published.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The status page: static HTML, CSS and script, no external asset.
const STATUS_PAGE: &str = include_str!("status.html");

/// Serves the admin endpoints on `listener` until `stop` is cancelled.
pub(crate) async fn serve(
    server: Server,
    listener: TcpListener,
    token: Option<Arc<str>>,
    stop: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, authenticated = token.is_some(), "admin listener");
    }
    let upkeep = tokio::spawn({
        let (server, stop) = (server.clone(), stop.clone());
        async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => server.publish_metrics(),
                }
            }
        }
    });
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let (server, token) = (server.clone(), token.clone());
                tokio::spawn(async move {
                    if let Err(error) = answer(&server, stream, token.as_deref()).await {
                        debug!(%peer, %error, "admin request failed");
                    }
                });
            }
            Err(error) => {
                warn!(%error, "admin accept failed; pausing");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    upkeep.abort();
}

/// One response: status, content type, body.
struct Reply {
    status: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    extra: &'static str,
}

impl Reply {
    fn text(status: &'static str, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            extra: "",
        }
    }
}

async fn answer(
    server: &Server,
    mut stream: TcpStream,
    token: Option<&str>,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = Instant::now() + READ_TIMEOUT;
    let (reply, head_only) =
        match read_request_head(&mut stream, &mut buf, MAX_HEAD, deadline).await {
            Ok(len) => {
                buf.truncate(len);
                match parse_request(buf.freeze(), MAX_HEADERS) {
                    Ok(request) => {
                        let head_only = request.method() == "HEAD";
                        (route(server, &request, token).await, head_only)
                    }
                    Err(_) => (Reply::text("400 Bad Request", "bad request\n"), false),
                }
            }
            Err(_) => return Ok(()),
        };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{}Connection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len(),
        reply.extra,
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        if !head_only {
            stream.write_all(&reply.body).await?;
        }
        stream.shutdown().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

async fn route(server: &Server, request: &sluice_handshake::Request, token: Option<&str>) -> Reply {
    if request.method() != "GET" && request.method() != "HEAD" {
        return Reply {
            extra: "Allow: GET, HEAD\r\n",
            ..Reply::text("405 Method Not Allowed", "GET or HEAD only\n")
        };
    }
    let path = request.path();
    // Probes never need credentials.
    match path {
        "/healthz" => return Reply::text("200 OK", "ok\n"),
        "/readyz" if server.is_ready() => return Reply::text("200 OK", "ready\n"),
        "/readyz" => return Reply::text("503 Service Unavailable", "not ready\n"),
        "/" => {
            return Reply {
                status: "200 OK",
                content_type: "text/html; charset=utf-8",
                body: STATUS_PAGE.as_bytes().to_vec(),
                extra: "",
            };
        }
        _ => {}
    }
    if let Some(token) = token {
        if !authorized(request, token) {
            return Reply {
                extra: "WWW-Authenticate: Bearer realm=\"sluice\"\r\n",
                ..Reply::text("401 Unauthorized", "a bearer token is required\n")
            };
        }
    }
    match path {
        "/metrics" => match sluice_metrics::Exporter::get() {
            Some(exporter) => {
                server.publish_metrics();
                Reply {
                    status: "200 OK",
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    body: exporter.render().into_bytes(),
                    extra: "",
                }
            }
            None => Reply::text("503 Service Unavailable", "metrics are not enabled\n"),
        },
        "/status.json" => Reply {
            status: "200 OK",
            content_type: "application/json",
            body: status::json(server, &server.listener_addrs().await).into_bytes(),
            extra: "",
        },
        _ => Reply::text("404 Not Found", "not found\n"),
    }
}

/// `Authorization: Bearer <token>`, compared without an early exit.
fn authorized(request: &sluice_handshake::Request, token: &str) -> bool {
    let Some(value) = request.header("authorization") else {
        return false;
    };
    let Some(given) = value.strip_prefix(b"Bearer ") else {
        return false;
    };
    let expected = token.as_bytes();
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}
