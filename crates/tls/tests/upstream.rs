//! TLS to backends against real TLS servers: what is verified, what is sent, and the reason
//! given when a handshake fails (the words the proxy's log line carries).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice_testkit::{TcpEcho, TestCa, TestCert, TlsFront, wait_until};
use sluice_tls::upstream::connect;
use sluice_tls::{ConnectError, Upstream, UpstreamSettings};

const SOON: Duration = Duration::from_secs(10);

fn temp_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-tls-upstream-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn front(cert: &TestCert, target: &TcpEcho) -> TlsFront {
    TlsFront::spawn(cert.server_config(None), target.addr()).await
}

async fn handshake(upstream: &Upstream, front: &TlsFront) -> Result<(), String> {
    match connect(front.addr(), Some(upstream), b"", SOON).await {
        Ok(stream) => {
            assert!(stream.is_tls());
            Ok(())
        }
        Err(ConnectError::Tls { reason }) => Err(reason),
        Err(other) => panic!("not a TLS failure: {other}"),
    }
}

#[tokio::test]
async fn verifies_and_says_why_a_backend_is_refused() {
    let dir = temp_dir();
    let (ca, other) = (TestCa::new("backends"), TestCa::new("other"));
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &ca.cert_pem).unwrap();
    let target = TcpEcho::spawn().await;
    let settings = |sni| UpstreamSettings {
        ca: Some(&ca_path),
        client_cert: None,
        sni,
        verify: true,
    };
    let named = Upstream::load(&settings(Some("backend.internal"))).unwrap();
    assert!(named.warnings.is_empty());

    let good = front(&ca.issue(&["backend.internal", "127.0.0.1"]), &target).await;
    handshake(&named, &good).await.unwrap();
    // Without sni: the IP address is verified, and no server name is sent.
    let by_ip = Upstream::load(&settings(None)).unwrap();
    handshake(&by_ip, &good).await.unwrap();
    // The server's side completes a moment after the client's.
    assert!(wait_until(SOON, || good.handshakes() == 2).await);
    assert_eq!(
        good.server_names(),
        vec![Some("backend.internal".to_owned()), None]
    );
    assert_eq!(good.alpn(), vec![Some(b"http/1.1".to_vec()); 2]);

    let foreign = front(&other.issue(&["backend.internal"]), &target).await;
    let reason = handshake(&named, &foreign).await.unwrap_err();
    assert!(reason.starts_with("unknown CA"), "{reason}");

    let misnamed = front(&ca.issue(&["other.internal"]), &target).await;
    let reason = handshake(&named, &misnamed).await.unwrap_err();
    assert!(reason.starts_with("name mismatch"), "{reason}");
    let reason = handshake(&by_ip, &misnamed).await.unwrap_err();
    assert!(reason.starts_with("name mismatch"), "{reason}");

    let expired = front(&ca.issue_expired(&["backend.internal"]), &target).await;
    let reason = handshake(&named, &expired).await.unwrap_err();
    assert!(reason.starts_with("expired"), "{reason}");

    // Something that is not TLS at all: a raw echo sends the ClientHello back.
    let reason = match connect(target.addr(), Some(&named), b"", SOON).await {
        Err(ConnectError::Tls { reason }) => reason,
        other => panic!("{other:?}"),
    };
    assert!(!reason.is_empty());

    // verify = false: any certificate, with a warning at load.
    let trusting = Upstream::load(&UpstreamSettings {
        ca: None,
        client_cert: None,
        sni: Some("backend.internal"),
        verify: false,
    })
    .unwrap();
    assert_eq!(trusting.warnings.len(), 1);
    for front in [&foreign, &misnamed, &expired] {
        handshake(&trusting, front).await.unwrap();
    }
    assert!(
        wait_until(SOON, || foreign.handshakes() == 1
            && expired.handshakes() == 1)
        .await
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sends_a_client_certificate_when_configured() {
    let dir = temp_dir();
    let (ca, clients) = (TestCa::new("backends"), TestCa::new("clients"));
    let client = clients.issue(&["sluice"]);
    let paths = ["ca.pem", "client.pem", "client.key"].map(|n| dir.join(n));
    std::fs::write(&paths[0], &ca.cert_pem).unwrap();
    std::fs::write(&paths[1], &client.cert_pem).unwrap();
    std::fs::write(&paths[2], &client.key_pem).unwrap();
    let target = TcpEcho::spawn().await;
    let front = TlsFront::spawn(
        ca.issue(&["backend.internal"])
            .server_config(Some(&clients)),
        target.addr(),
    )
    .await;
    let settings = |client_cert| UpstreamSettings {
        ca: Some(&paths[0]),
        client_cert,
        sni: Some("backend.internal"),
        verify: true,
    };
    let with = Upstream::load(&settings(Some((&paths[1], &paths[2])))).unwrap();
    handshake(&with, &front).await.unwrap();
    assert!(wait_until(SOON, || front.handshakes() == 1).await);
    // Without one, the backend refuses (in TLS 1.3 after the client's side completed).
    let without = Upstream::load(&settings(None)).unwrap();
    let _ = handshake(&without, &front).await;
    assert!(wait_until(SOON, || front.failed_handshakes() == 1).await);
    assert_eq!(front.handshakes(), 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn load_errors_name_the_file() {
    let dir = temp_dir();
    let missing = dir.join("missing.pem");
    let error = Upstream::load(&UpstreamSettings {
        ca: Some(&missing),
        client_cert: None,
        sni: None,
        verify: true,
    })
    .unwrap_err();
    assert_eq!(error.path(), Some(missing.as_path()));
    assert!(
        error.to_string().contains("cannot read the file"),
        "{error}"
    );
    let error = Upstream::load(&UpstreamSettings {
        ca: None,
        client_cert: None,
        sni: Some("not a name"),
        verify: false,
    })
    .unwrap_err();
    assert!(
        error.to_string().contains("not a valid server name"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_preface_goes_on_the_tcp_connection_before_the_client_hello() {
    let dir = temp_dir();
    let ca = TestCa::new("backends");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &ca.cert_pem).unwrap();
    let upstream = Upstream::load(&UpstreamSettings {
        ca: Some(&ca_path),
        client_cert: None,
        sni: None,
        verify: true,
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let preface = b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 443\r\n";
    let server = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut first = vec![0; preface.len() + 3];
        tcp.read_exact(&mut first).await.unwrap();
        // Kept open (in the task's output) until the client gave up.
        (first, tcp)
    });
    // The server never answers the ClientHello: the connect times out, after sending it.
    let result = connect(addr, Some(&upstream), preface, Duration::from_millis(500)).await;
    assert!(matches!(result, Err(ConnectError::Timeout)), "{result:?}");
    let (first, _tcp) = server.await.unwrap();
    assert_eq!(&first[..preface.len()], preface);
    // A TLS handshake record (content type 22, version 3.x) follows the preface.
    assert_eq!(&first[preface.len()..], [0x16, 0x03, 0x01]);
}
