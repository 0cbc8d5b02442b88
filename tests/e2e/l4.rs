//! `tcp` and `tls-passthrough` listeners: no HTTP parsing; routing by listener pool or by the
//! server name of the ClientHello, bytes replayed and spliced.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use sluice_e2e::{Proxy, backend_list};
use sluice_testkit::{EchoBackend, Message, TcpEcho, wait_until, ws_handshake, ws_roundtrip};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, pki_types};

use crate::SOON;

/// A certificate and its key (PKCS#8) for these names, self-signed.
pub(crate) struct TestCert {
    pub(crate) cert_der: pki_types::CertificateDer<'static>,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    key_der: Vec<u8>,
}

impl TestCert {
    pub(crate) fn new(names: &[&str]) -> Self {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let certified = rcgen::generate_simple_self_signed(names).unwrap();
        Self {
            cert_der: certified.cert.der().clone(),
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
            key_der: certified.signing_key.serialize_der(),
        }
    }

    fn key(&self) -> pki_types::PrivateKeyDer<'static> {
        pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client trusting exactly these certificates.
pub(crate) fn connector(trusted: &[&TestCert]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.cert_der.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A WebSocket echo backend behind TLS with `cert`; counts its connections.
pub(crate) struct TlsEcho {
    pub(crate) addr: SocketAddr,
    pub(crate) connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsEcho {
    pub(crate) async fn spawn(cert: &TestCert) -> Self {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert_der.clone()], cert.key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                        return;
                    };
                    use futures_util::{SinkExt, StreamExt};
                    while let Some(Ok(message)) = ws.next().await {
                        if (message.is_text() || message.is_binary())
                            && ws.send(message).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TlsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes its first `trickle` bytes one byte per write (each its own segment with
/// `TCP_NODELAY`, a wakeup between two), then passes writes through.
struct Trickle {
    inner: TcpStream,
    trickle: usize,
    yielded: bool,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.trickle == 0 || buf.is_empty() {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.yielded = false;
        let written = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..1]))?;
        self.trickle -= written;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A `wss://` echo round trip through `proxy` asking for `sni`; the first `trickle` bytes go
/// one per write.
async fn wss_echo(proxy: SocketAddr, sni: &str, trusted: &[&TestCert], trickle: usize) {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let stream = Trickle {
        inner: tcp,
        trickle,
        yielded: false,
    };
    let name = pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let tls = connector(trusted).connect(name, stream).await.unwrap();
    let (mut ws, _) = ws_handshake(tls, sni, "/", &[]).await.unwrap();
    let reply = ws_roundtrip(&mut ws, Message::text(format!("hello {sni}")))
        .await
        .unwrap();
    assert_eq!(reply, Message::text(format!("hello {sni}")));
}

fn passthrough_config(a: SocketAddr, b: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "tls"
listen = "127.0.0.1:0"
mode = "tls-passthrough"
sni_routes = [{{ sni = "a.example", pool = "a" }}, {{ sni = "*.b.example", pool = "b" }}]
{extra}

[pools.a]
backends = ["{a}"]

[pools.b]
backends = ["{b}"]
"#
    )
}

#[tokio::test]
async fn passthrough_routes_by_sni_to_tls_backends() {
    let (cert_a, cert_b) = (
        TestCert::new(&["a.example"]),
        TestCert::new(&["x.b.example"]),
    );
    let (a, b) = (TlsEcho::spawn(&cert_a).await, TlsEcho::spawn(&cert_b).await);
    let proxy = Proxy::start(&passthrough_config(a.addr, b.addr, "")).await;
    let trusted = [&cert_a, &cert_b];

    wss_echo(proxy.addr(), "a.example", &trusted, 0).await;
    assert_eq!((a.connections(), b.connections()), (1, 0));
    wss_echo(proxy.addr(), "x.b.example", &trusted, 0).await;
    assert_eq!((a.connections(), b.connections()), (1, 1));

    // A ClientHello written one byte per write still routes.
    wss_echo(proxy.addr(), "x.b.example", &trusted, 4096).await;
    assert_eq!((a.connections(), b.connections()), (1, 2));
}

#[tokio::test]
async fn passthrough_without_a_match_closes_or_uses_the_default_pool() {
    let (cert_a, cert_b) = (
        TestCert::new(&["a.example"]),
        TestCert::new(&["other.example"]),
    );
    let (a, b) = (TlsEcho::spawn(&cert_a).await, TlsEcho::spawn(&cert_b).await);
    let proxy = Proxy::start(&passthrough_config(a.addr, b.addr, "")).await;

    // No route for this name and no default pool: closed before any backend.
    let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    let name = pki_types::ServerName::try_from("other.example").unwrap();
    let failed = connector(&[&cert_b]).connect(name, tcp).await;
    assert!(failed.is_err());
    assert_eq!((a.connections(), b.connections()), (0, 0));

    // With default_pool = "b", the same name reaches b.
    let proxy = Proxy::start(&passthrough_config(a.addr, b.addr, "default_pool = \"b\"")).await;
    wss_echo(proxy.addr(), "other.example", &[&cert_b], 0).await;
    assert_eq!((a.connections(), b.connections()), (0, 1));
}

#[tokio::test]
async fn passthrough_closes_a_non_tls_stream_without_a_backend() {
    let cert = TestCert::new(&["a.example"]);
    let a = TlsEcho::spawn(&cert).await;
    let proxy = Proxy::start(&passthrough_config(a.addr, a.addr, "default_pool = \"a\"")).await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(SOON, tcp.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(a.connections(), 0);
}

fn tcp_config(backends: &[SocketAddr], pool: &str, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "raw"
listen = "127.0.0.1:0"
mode = "tcp"
pool = "main"
{extra}

[pools.main]
{pool}
backends = [{}]
"#,
        backend_list(backends)
    )
}

async fn tcp_echo(proxy: SocketAddr, payload: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(SOON, tcp.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, payload);
    tcp
}

async fn three_echoes() -> Vec<TcpEcho> {
    vec![
        TcpEcho::spawn().await,
        TcpEcho::spawn().await,
        TcpEcho::spawn().await,
    ]
}

fn spread(echoes: &[TcpEcho]) -> Vec<usize> {
    echoes.iter().map(|e| e.connections_accepted()).collect()
}

#[tokio::test]
async fn tcp_round_robin_and_least_conn() {
    let echoes = three_echoes().await;
    let addrs: Vec<SocketAddr> = echoes.iter().map(|e| e.addr()).collect();
    let proxy = Proxy::start(&tcp_config(&addrs, "balance = \"round_robin\"", "")).await;
    for _ in 0..6 {
        drop(tcp_echo(proxy.addr(), b"ping").await);
    }
    assert_eq!(spread(&echoes), vec![2, 2, 2]);

    let echoes = three_echoes().await;
    let addrs: Vec<SocketAddr> = echoes.iter().map(|e| e.addr()).collect();
    let proxy = Proxy::start(&tcp_config(&addrs, "balance = \"least_conn\"", "")).await;
    // Held open: each new connection goes to the backend with the fewest.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tcp_echo(proxy.addr(), b"hold").await);
    }
    assert_eq!(spread(&echoes), vec![1, 1, 1]);
    drop(held);
}

#[tokio::test]
async fn tcp_hash_by_source_ip_and_by_four_tuple() {
    let echoes = three_echoes().await;
    let addrs: Vec<SocketAddr> = echoes.iter().map(|e| e.addr()).collect();
    let hash = "balance = \"hash\"\nhash_key = \"source_ip\"\nhash_balance_factor = 0";
    let proxy = Proxy::start(&tcp_config(&addrs, hash, "")).await;
    for _ in 0..6 {
        drop(tcp_echo(proxy.addr(), b"ping").await);
    }
    let mut counts = spread(&echoes);
    counts.sort_unstable();
    assert_eq!(counts, vec![0, 0, 6], "one client address, one backend");

    let echoes = three_echoes().await;
    let addrs: Vec<SocketAddr> = echoes.iter().map(|e| e.addr()).collect();
    let hash = "balance = \"hash\"\nhash_key = \"four_tuple\"\nhash_balance_factor = 0";
    let proxy = Proxy::start(&tcp_config(&addrs, hash, "")).await;
    for _ in 0..24 {
        drop(tcp_echo(proxy.addr(), b"ping").await);
    }
    let counts = spread(&echoes);
    assert_eq!(counts.iter().sum::<usize>(), 24);
    assert!(
        counts.iter().filter(|&&c| c > 0).count() >= 2,
        "every connection its own key: {counts:?}"
    );
}

#[tokio::test]
async fn tcp_relays_through_splice() {
    let echo = TcpEcho::spawn().await;
    let proxy = Proxy::start(&tcp_config(
        &[echo.addr()],
        "",
        "\n[relay]\nmode = \"splice\"\n",
    ))
    .await;
    let before = sluice_splice::stats().spliced_bytes();
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut read, mut write) = tcp.split();
    let send = async {
        write.write_all(&payload).await.unwrap();
    };
    let mut back = vec![0u8; payload.len()];
    let receive = async {
        read.read_exact(&mut back).await.unwrap();
    };
    tokio::time::timeout(SOON, async { tokio::join!(send, receive) })
        .await
        .unwrap();
    assert!(back == payload);
    // Both directions of this tunnel spliced: at least twice the payload.
    assert!(
        sluice_splice::stats().spliced_bytes() - before >= 2 * payload.len() as u64,
        "spliced"
    );
}

#[tokio::test]
async fn tcp_sends_proxy_v2_to_the_backend() {
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&tcp_config(
        &[backend.addr()],
        "send_proxy_protocol = \"v2\"",
        "",
    ))
    .await;
    let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    let client = tcp.local_addr().unwrap();
    let (mut ws, _) = ws_handshake(tcp, "raw", "/", &[]).await.unwrap();
    ws_roundtrip(&mut ws, Message::text("hi")).await.unwrap();
    assert!(wait_until(SOON, || !backend.requests().is_empty()).await);
    let header = backend.requests()[0].proxy.clone().expect("a PROXY header");
    assert_eq!(header.version, 2);
    assert_eq!(header.source, Some(client));
    assert_eq!(header.destination, Some(proxy.addr()));
}

#[tokio::test]
async fn a_stalled_client_hello_is_closed_at_the_handshake_timeout() {
    let cert = TestCert::new(&["a.example"]);
    let a = TlsEcho::spawn(&cert).await;
    let proxy = Proxy::start(&passthrough_config(
        a.addr,
        a.addr,
        "default_pool = \"a\"\n\n[timeouts]\nhandshake = \"200ms\"",
    ))
    .await;
    // A record header announcing more than is ever sent.
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(&[22, 3, 1, 0, 200, 1, 0]).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(SOON, tcp.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    assert_eq!(a.connections(), 0);
}
