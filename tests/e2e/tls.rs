//! TLS termination on `http` listeners: certificates by SNI, reload, bad files, and the
//! relay throughput of a TLS-terminated tunnel (an ignored measurement).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use sluice_e2e::Proxy;
use sluice_testkit::{EchoBackend, Message, wait_until, ws_handshake, ws_roundtrip};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types;

use crate::SOON;
use crate::l4::{TestCert, connector};

/// A fresh directory for this test's PEM files.
pub(crate) fn temp_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-tls-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the certificate and key as `NAME.pem` and `NAME.key`; returns the TOML entry.
pub(crate) fn write_cert(dir: &std::path::Path, name: &str, cert: &TestCert) -> String {
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, &cert.cert_pem).unwrap();
    std::fs::write(&key_path, &cert.key_pem).unwrap();
    format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        cert_path.display(),
        key_path.display()
    )
}

fn tls_config(entries: &[String], backend: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
tls = {{ certificates = [{}] }}

{extra}

[[routes]]
listener = "public"
pool = "main"

[pools.main]
backends = ["{backend}"]
"#,
        entries.join(", ")
    )
}

/// A TLS connection to `proxy` asking for `sni`, trusting `trusted` only; the certificate the
/// server presented.
async fn tls_connect(
    proxy: SocketAddr,
    sni: &str,
    trusted: &[&TestCert],
) -> std::io::Result<(TlsStream<TcpStream>, Vec<u8>)> {
    let tcp = TcpStream::connect(proxy).await?;
    tcp.set_nodelay(true)?;
    let name = pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let tls = connector(trusted).connect(name, tcp).await?;
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    Ok((tls, presented))
}

#[tokio::test]
async fn terminates_with_the_certificate_of_each_name() {
    let dir = temp_dir();
    let (a, b) = (
        TestCert::new(&["a.example", "127.0.0.1"]),
        TestCert::new(&["*.b.example"]),
    );
    let entries = [write_cert(&dir, "a", &a), write_cert(&dir, "b", &b)];
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&tls_config(&entries, backend.addr(), "")).await;

    for (sni, cert) in [("a.example", &a), ("x.b.example", &b)] {
        let (tls, presented) = tls_connect(proxy.addr(), sni, &[cert]).await.unwrap();
        assert_eq!(presented, cert.cert_der.to_vec(), "{sni}");
        let (mut ws, _) = ws_handshake(tls, sni, "/", &[]).await.unwrap();
        let reply = ws_roundtrip(&mut ws, Message::text(sni)).await.unwrap();
        assert_eq!(reply, Message::text(sni));
    }
    // A client sending no server name (connecting by IP address) gets the default: the first.
    let (_, presented) = tls_connect(proxy.addr(), "127.0.0.1", &[&a]).await.unwrap();
    assert_eq!(presented, a.cert_der.to_vec());
    // A name only the default would answer: the client refuses a.example's certificate.
    assert!(
        tls_connect(proxy.addr(), "other.example", &[&a])
            .await
            .is_err()
    );
    assert!(wait_until(SOON, || backend.requests().len() == 2).await);
    for request in backend.requests() {
        assert_eq!(request.header("x-forwarded-proto"), Some("https"));
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn reload_swaps_certificates_and_keeps_live_tunnels() {
    let dir = temp_dir();
    let (old, new) = (TestCert::new(&["a.example"]), TestCert::new(&["a.example"]));
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&tls_config(
        &[write_cert(&dir, "old", &old)],
        backend.addr(),
        "",
    ))
    .await;
    let (tls, presented) = tls_connect(proxy.addr(), "a.example", &[&old])
        .await
        .unwrap();
    assert_eq!(presented, old.cert_der.to_vec());
    let (mut live, _) = ws_handshake(tls, "a.example", "/", &[]).await.unwrap();

    proxy
        .reload(&tls_config(
            &[write_cert(&dir, "new", &new)],
            backend.addr(),
            "",
        ))
        .await
        .unwrap();
    // New connections get the new certificate; the tunnel opened with the old one goes on.
    let (_, presented) = tls_connect(proxy.addr(), "a.example", &[&new])
        .await
        .unwrap();
    assert_eq!(presented, new.cert_der.to_vec());
    let reply = ws_roundtrip(&mut live, Message::text("still here"))
        .await
        .unwrap();
    assert_eq!(reply, Message::text("still here"));

    // A reload with a broken file is refused and changes nothing.
    let missing = "{ cert = \"/nonexistent/sluice.pem\", key = \"/nonexistent/sluice.key\" }";
    let refused = proxy
        .reload(&tls_config(&[missing.to_owned()], backend.addr(), ""))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("cannot read the file"),
        "{refused}"
    );
    tls_connect(proxy.addr(), "a.example", &[&new])
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_client_that_never_starts_tls_is_closed_at_the_handshake_timeout() {
    let dir = temp_dir();
    let cert = TestCert::new(&["a.example"]);
    let backend = EchoBackend::spawn().await;
    let proxy = Proxy::start(&tls_config(
        &[write_cert(&dir, "a", &cert)],
        backend.addr(),
        "[timeouts]\nhandshake = \"200ms\"",
    ))
    .await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(SOON, tokio::io::AsyncReadExt::read(&mut tcp, &mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(backend.connections_accepted(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// The error `bind` gives for this configuration.
pub(crate) async fn start_error(toml: &str) -> String {
    let config = sluice_config::parse(toml, "t.toml").unwrap();
    let server = sluice_proxy::Server::new(config);
    server.bind().await.unwrap_err().to_string()
}

#[tokio::test]
async fn bad_files_are_clear_errors() {
    let dir = temp_dir();
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (a, b) = (TestCert::new(&["a.example"]), TestCert::new(&["b.example"]));
    write_cert(&dir, "a", &a);
    write_cert(&dir, "b", &b);
    let path = |name: &str| dir.join(name).display().to_string();

    let missing = format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        path("nope.pem"),
        path("a.key")
    );
    let error = start_error(&tls_config(&[missing], backend, "")).await;
    assert!(error.contains("nope.pem: cannot read the file"), "{error}");

    let mismatch = format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        path("a.pem"),
        path("b.key")
    );
    let error = start_error(&tls_config(&[mismatch], backend, "")).await;
    assert!(
        error.contains("b.key: this key does not match the certificate"),
        "{error}"
    );

    let swapped = format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        path("a.key"),
        path("a.pem")
    );
    let error = start_error(&tls_config(&[swapped], backend, "")).await;
    assert!(error.contains("no PEM certificate"), "{error}");

    // A route's host that no certificate covers.
    let good = format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        path("a.pem"),
        path("a.key")
    );
    let route = "[[routes]]\nlistener = \"public\"\nhost = \"chat.example\"\npool = \"main\"\n";
    let error = start_error(&tls_config(&[good], backend, route)).await;
    assert!(
        error.contains("no certificate for \"chat.example\""),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Relay throughput of one tunnel, plain, TLS-terminated, and with TLS to the backend
/// (`docs/performance.md`; the backend's TLS is a `TlsFront` in this same process):
/// `cargo test --release -p sluice-e2e --test e2e tls::throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn throughput() {
    const MESSAGE: usize = 1024 * 1024;
    const MESSAGES: usize = 256;
    let dir = temp_dir();
    let cert = TestCert::new(&["a.example"]);
    let backend = EchoBackend::builder()
        .record(false)
        .max_message_size(2 * MESSAGE)
        .spawn()
        .await
        .unwrap();
    let tls_proxy = Proxy::start(&tls_config(
        &[write_cert(&dir, "a", &cert)],
        backend.addr(),
        "",
    ))
    .await;
    let plain_proxy = Proxy::start(&sluice_e2e::config(&[backend.addr()], "round_robin", "")).await;
    let ca = sluice_testkit::TestCa::new("backends");
    let front = sluice_testkit::TlsFront::spawn(
        ca.issue(&["127.0.0.1"]).server_config(None),
        backend.addr(),
    )
    .await;
    let ca_path = dir.join("backends-ca.pem");
    std::fs::write(&ca_path, &ca.cert_pem).unwrap();
    let upstream_proxy = Proxy::start(&format!(
        "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nlistener = \"public\"\npool = \"main\"\n\n\
         [pools.main]\ntls = {{ ca = \"{}\" }}\nbackends = [\"{}\"]\n",
        ca_path.display(),
        front.addr()
    ))
    .await;

    async fn pump<S>(ws: &mut sluice_testkit::WebSocketStream<S>) -> f64
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let payload = vec![0x5au8; MESSAGE];
        let started = Instant::now();
        let (mut sent, mut received) = (0usize, 0usize);
        while received < MESSAGES {
            // Keep a few messages in flight.
            while sent < MESSAGES && sent - received < 4 {
                ws.feed(Message::binary(payload.clone())).await.unwrap();
                sent += 1;
            }
            ws.flush().await.unwrap();
            if let Message::Binary(b) = ws.next().await.unwrap().unwrap() {
                assert_eq!(b.len(), MESSAGE);
                received += 1;
            }
        }
        // Each byte crossed the tunnel twice (there and back).
        (2 * MESSAGE * MESSAGES) as f64 / started.elapsed().as_secs_f64() / 1e6
    }

    let tcp = TcpStream::connect(plain_proxy.addr()).await.unwrap();
    let (mut ws, _) = ws_handshake(tcp, "plain", "/", &[]).await.unwrap();
    let plain = pump(&mut ws).await;
    let (tls, _) = tls_connect(tls_proxy.addr(), "a.example", &[&cert])
        .await
        .unwrap();
    let (mut ws, _) = ws_handshake(tls, "a.example", "/", &[]).await.unwrap();
    let tls = pump(&mut ws).await;
    let tcp = TcpStream::connect(upstream_proxy.addr()).await.unwrap();
    let (mut ws, _) = ws_handshake(tcp, "plain", "/", &[]).await.unwrap();
    let upstream = pump(&mut ws).await;
    println!(
        "relay throughput, one tunnel, {MESSAGES} x {MESSAGE} B echoed: plain {plain:.0} MB/s, \
         TLS-terminated {tls:.0} MB/s ({:.0} %), TLS to the backend {upstream:.0} MB/s ({:.0} %)",
        100.0 * tls / plain,
        100.0 * upstream / plain
    );
    let _ = std::fs::remove_dir_all(dir);
}
