//! TLS to backends (`wss` upstream): a pool's `tls` table. Backends are real TLS servers
//! (`TlsFront` in front of an echo backend) with certificates from throwaway CAs (rcgen).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_e2e::{Proxy, backend_list};
use sluice_testkit::{
    EchoBackend, Message, TestCa, TestCert, TlsFront, tungstenite, wait_until, ws_connect,
    ws_roundtrip,
};

use crate::SOON;
use crate::tls::start_error;

/// A fresh directory for this test's PEM files.
fn temp_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-upstream-tls-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// One listener routing everything to pool `main` with these backends and `tls` table.
fn config(backends: &[SocketAddr], tls: &str, extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nlistener = \"public\"\npool = \"main\"\n\n\
         [timeouts]\nconnect = \"5s\"\n\n\
         [pools.main]\ntls = {tls}\n{extra}backends = [{}]\n",
        backend_list(backends)
    )
}

/// The `tls` table verifying with the CA at `ca_path`, with this `sni`.
fn verified(ca_path: &str, sni: Option<&str>) -> String {
    match sni {
        Some(sni) => format!("{{ ca = \"{ca_path}\", sni = \"{sni}\" }}"),
        None => format!("{{ ca = \"{ca_path}\" }}"),
    }
}

/// An echo backend behind TLS with a certificate `ca` issued for `names`.
async fn tls_echo(cert: &TestCert) -> (TlsFront, EchoBackend) {
    let echo = EchoBackend::builder()
        .max_message_size(8 * 1024 * 1024)
        .spawn()
        .await
        .unwrap();
    let front = TlsFront::spawn(cert.server_config(None), echo.addr()).await;
    (front, echo)
}

/// A proxy whose pool `main` has one TLS echo backend, certificate for `names` from a fresh
/// CA that the pool verifies with, asking for `sni`.
struct OneBackend {
    dir: PathBuf,
    front: TlsFront,
    echo: EchoBackend,
    proxy: Proxy,
}

async fn one_backend(names: &[&str], sni: Option<&str>) -> OneBackend {
    let dir = temp_dir();
    let ca = TestCa::new("backends");
    let (front, echo) = tls_echo(&ca.issue(names)).await;
    let ca_path = write(&dir, "ca.pem", &ca.cert_pem);
    let proxy = Proxy::start(&config(&[front.addr()], &verified(&ca_path, sni), "")).await;
    OneBackend {
        dir,
        front,
        echo,
        proxy,
    }
}

async fn upgrade_status(proxy: &Proxy) -> u16 {
    match ws_connect(proxy.addr(), "/", &[]).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("unexpected failure: {e}"),
    }
}

#[tokio::test]
async fn wss_upstream_relays_byte_exact_with_the_configured_sni() {
    let OneBackend {
        dir,
        front,
        echo,
        proxy,
    } = one_backend(&["backend.internal"], Some("backend.internal")).await;

    let (mut ws, response) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    assert_eq!(response.status().as_u16(), 101);
    // Small and large messages, text and binary, every byte value, both ways.
    let large: Vec<u8> = (0..1024 * 1024 + 7).map(|i| (i * 31 % 251) as u8).collect();
    for message in [
        Message::text("a"),
        Message::binary(vec![0u8, 255, 1, 254]),
        Message::binary(large.clone()),
        Message::text("é".repeat(40_000)),
    ] {
        let reply = ws_roundtrip(&mut ws, message.clone()).await.unwrap();
        assert_eq!(reply, message);
    }
    assert_eq!(
        front.server_names(),
        vec![Some("backend.internal".to_owned())]
    );
    assert_eq!(front.alpn(), vec![Some(b"http/1.1".to_vec())]);
    assert!(wait_until(SOON, || echo.bytes_received() > large.len()).await);
    let _ = std::fs::remove_dir_all(dir);
}

/// Without `sni`, the backend's IP address is verified (an IP SAN) and no server name is sent.
#[tokio::test]
async fn without_sni_the_ip_address_is_verified() {
    let OneBackend {
        dir,
        front,
        echo: _echo,
        proxy,
    } = one_backend(&["127.0.0.1"], None).await;
    assert_eq!(upgrade_status(&proxy).await, 101);
    assert_eq!(front.server_names(), vec![None]);
    let _ = std::fs::remove_dir_all(dir);
}

/// A certificate from another CA, or for another name, fails the handshake with sluice: 502,
/// nothing reaches the backend behind; with `verify = false` it connects.
#[tokio::test]
async fn untrusted_or_misnamed_backends_are_502_unless_verify_is_off() {
    let dir = temp_dir();
    let (ca, other) = (TestCa::new("backends"), TestCa::new("someone else"));
    let ca_path = write(&dir, "ca.pem", &ca.cert_pem);
    let (foreign, foreign_echo) = tls_echo(&other.issue(&["backend.internal"])).await;
    let (misnamed, misnamed_echo) = tls_echo(&ca.issue(&["other.internal"])).await;
    for (front, echo) in [(&foreign, &foreign_echo), (&misnamed, &misnamed_echo)] {
        let proxy = Proxy::start(&config(
            &[front.addr()],
            &verified(&ca_path, Some("backend.internal")),
            "",
        ))
        .await;
        assert_eq!(upgrade_status(&proxy).await, 502);
        assert_eq!(proxy.server().stats().backend_failed(), 1);
        assert!(wait_until(SOON, || front.failed_handshakes() == 1).await);
        assert_eq!(front.handshakes(), 0);
        assert_eq!(echo.connections_accepted(), 0, "nothing relayed");
    }

    let proxy = Proxy::start(&config(
        &[foreign.addr()],
        "{ verify = false, sni = \"backend.internal\" }",
        "",
    ))
    .await;
    let (mut ws, _) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    let reply = ws_roundtrip(&mut ws, Message::text("anyway"))
        .await
        .unwrap();
    assert_eq!(reply, Message::text("anyway"));
    let _ = std::fs::remove_dir_all(dir);
}

/// Plain HTTP requests go over TLS too, and reuse the TLS connection kept alive.
#[tokio::test]
async fn plain_requests_reuse_kept_alive_tls_connections() {
    let OneBackend {
        dir,
        front,
        echo,
        proxy,
    } = one_backend(&["backend.internal"], Some("backend.internal")).await;
    let client = reqwest::Client::builder().timeout(SOON).build().unwrap();
    for _ in 0..3 {
        let response = client
            .get(format!("http://{}/plain", proxy.addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let _ = response.bytes().await.unwrap();
    }
    assert_eq!(front.handshakes(), 1, "one TLS connection, kept alive");
    assert_eq!(echo.connections_accepted(), 1);
    assert_eq!(echo.requests().len(), 3);
    assert_eq!(proxy.server().stats().backend_connections_reused(), 2);
    let _ = std::fs::remove_dir_all(dir);
}

/// Active checks of a TLS pool handshake too (`tcp`: the TLS handshake; `websocket`: a real
/// upgrade and ping over TLS): a backend that speaks plain TCP is down (`tls`), the real TLS
/// one stays up.
#[tokio::test]
async fn health_checks_over_tls_take_a_plain_backend_down() {
    let dir = temp_dir();
    let ca = TestCa::new("backends");
    let ca_path = write(&dir, "ca.pem", &ca.cert_pem);
    for kind in ["tcp", "websocket"] {
        let (front, _echo) = tls_echo(&ca.issue(&["backend.internal"])).await;
        let plain = EchoBackend::spawn().await;
        let proxy = Proxy::start(&config(
            &[front.addr(), plain.addr()],
            &format!("{{ ca = \"{ca_path}\", sni = \"backend.internal\" }}"),
            &format!(
                "health_check = {{ kind = \"{kind}\", interval = \"500ms\", timeout = \"500ms\", rise = 1, fall = 2{} }}\n",
                if kind == "websocket" { ", ping = true" } else { "" }
            ),
        ))
        .await;
        let health = |addr: SocketAddr| {
            proxy
                .server()
                .snapshot()
                .pool_by_name("main")
                .and_then(|p| p.backends().iter().find(|b| b.addr() == addr).cloned())
                .map(|b| b.health())
        };
        assert!(
            wait_until(SOON, || matches!(
                health(plain.addr()),
                Some(sluice_balance::Health::Down { reason }) if reason.label() == "tls"
            ))
            .await,
            "{kind}: {:?}",
            health(plain.addr())
        );
        assert!(wait_until(SOON, || front.handshakes() >= 2).await, "{kind}");
        assert_eq!(
            health(front.addr()).map(|h| h.label()),
            Some("up"),
            "{kind}: the TLS backend passes"
        );
        assert_eq!(
            plain.upgrades(),
            0,
            "{kind}: no check got through in plain text"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A reload that changes the CA applies to new connections; the tunnel opened before goes on.
#[tokio::test]
async fn a_reload_changing_the_ca_keeps_live_tunnels() {
    let dir = temp_dir();
    let (ca, other) = (TestCa::new("backends"), TestCa::new("next"));
    let (front, _echo) = tls_echo(&ca.issue(&["backend.internal"])).await;
    let (ca_path, other_path) = (
        write(&dir, "ca.pem", &ca.cert_pem),
        write(&dir, "other.pem", &other.cert_pem),
    );
    let tls = |path: &str| format!("{{ ca = \"{path}\", sni = \"backend.internal\" }}");
    let proxy = Proxy::start(&config(&[front.addr()], &tls(&ca_path), "")).await;
    let (mut live, _) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    ws_roundtrip(&mut live, Message::text("before"))
        .await
        .unwrap();

    proxy
        .reload(&config(&[front.addr()], &tls(&other_path), ""))
        .await
        .unwrap();
    // New connections verify with the new CA, which did not sign the backend: 502.
    assert_eq!(upgrade_status(&proxy).await, 502);
    let reply = ws_roundtrip(&mut live, Message::text("still here"))
        .await
        .unwrap();
    assert_eq!(reply, Message::text("still here"));

    // A reload naming a missing CA is refused and changes nothing.
    let refused = proxy
        .reload(&config(&[front.addr()], &tls("/nonexistent/ca.pem"), ""))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("cannot read the file"),
        "{refused}"
    );
    assert_eq!(upgrade_status(&proxy).await, 502);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn bad_files_are_errors_at_their_key() {
    let dir = temp_dir();
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let missing = dir.join("missing.pem").display().to_string();
    let error = start_error(&config(
        &[backend],
        &format!("{{ ca = \"{missing}\" }}"),
        "",
    ))
    .await;
    assert!(
        error.contains(&format!(
            "t.toml:13:14: pools.main.tls.ca: {missing}: cannot read the file"
        )),
        "{error}"
    );
    let garbage = write(
        &dir,
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    );
    let error = start_error(&config(
        &[backend],
        &format!("{{ ca = \"{garbage}\" }}"),
        "",
    ))
    .await;
    assert!(
        error.contains(&format!(
            "t.toml:13:14: pools.main.tls.ca: {garbage}: not valid PEM"
        )),
        "{error}"
    );
    let empty = write(&dir, "empty.pem", "nothing here\n");
    let error = start_error(&config(&[backend], &format!("{{ ca = \"{empty}\" }}"), "")).await;
    assert!(error.contains("no PEM certificate"), "{error}");
    // A client certificate whose key is another's.
    let ca = TestCa::new("client");
    let (a, b) = (ca.issue(&["sluice"]), ca.issue(&["sluice"]));
    let (cert, key) = (
        write(&dir, "a.pem", &a.cert_pem),
        write(&dir, "b.key", &b.key_pem),
    );
    let error = start_error(&config(
        &[backend],
        &format!("{{ verify = false, cert = \"{cert}\", key = \"{key}\" }}"),
        "",
    ))
    .await;
    assert!(
        error.contains("pools.main.tls.key: ") && error.contains("does not match the certificate"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A backend that requires a client certificate (mutual TLS) gets sluice's.
#[tokio::test]
async fn a_client_certificate_for_mutual_tls() {
    let dir = temp_dir();
    let (ca, clients) = (TestCa::new("backends"), TestCa::new("clients"));
    let echo = EchoBackend::spawn().await;
    let front = TlsFront::spawn(
        ca.issue(&["backend.internal"])
            .server_config(Some(&clients)),
        echo.addr(),
    )
    .await;
    let client = clients.issue(&["sluice"]);
    let (ca_path, cert, key) = (
        write(&dir, "ca.pem", &ca.cert_pem),
        write(&dir, "client.pem", &client.cert_pem),
        write(&dir, "client.key", &client.key_pem),
    );
    let proxy = Proxy::start(&config(
        &[front.addr()],
        &format!(
            "{{ ca = \"{ca_path}\", sni = \"backend.internal\", cert = \"{cert}\", key = \"{key}\" }}"
        ),
        "",
    ))
    .await;
    let (mut ws, _) = ws_connect(proxy.addr(), "/", &[]).await.unwrap();
    let reply = ws_roundtrip(&mut ws, Message::text("mutual"))
        .await
        .unwrap();
    assert_eq!(reply, Message::text("mutual"));
    assert_eq!(front.handshakes(), 1);
    let _ = std::fs::remove_dir_all(dir);
}
