//! TLS for tests: a throwaway certificate authority ([`TestCa`]) issuing certificates with
//! rcgen, and [`TlsFront`], a TLS server that terminates and pipes the plaintext to another
//! test server (an [`crate::EchoBackend`], an [`crate::HttpBackend`]), so every backend of the
//! kit can be put behind TLS. It records the server name (SNI) and ALPN each client asked for.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, pki_types};

/// A certificate authority that exists for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM (what a `ca` file holds).
    pub cert_pem: String,
    /// The CA certificate, DER.
    pub cert_der: pki_types::CertificateDer<'static>,
}

/// A certificate and its key, PEM and DER (the key PKCS#8).
#[derive(Clone)]
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: pki_types::CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A fresh CA named `name` (its common name).
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server and client certificate for these names (DNS names or IP addresses), valid now.
    pub fn issue(&self, names: &[&str]) -> TestCert {
        self.issue_with(names, |_| {})
    }

    /// A certificate for these names that expired in 2001.
    pub fn issue_expired(&self, names: &[&str]) -> TestCert {
        self.issue_with(names, |params| {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        })
    }

    fn issue_with(&self, names: &[&str], adjust: impl FnOnce(&mut CertificateParams)) -> TestCert {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "sluice test");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        adjust(&mut params);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

impl TestCert {
    /// The key as rustls takes it.
    pub fn key(&self) -> pki_types::PrivateKeyDer<'static> {
        pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }

    /// A rustls server configuration presenting this certificate (TLS 1.2 and 1.3, ALPN
    /// `http/1.1`); with `client_ca`, clients must present a certificate it signed.
    pub fn server_config(&self, client_ca: Option<&TestCa>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.cert_der.clone()).expect("client CA");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(vec![self.cert_der.clone()], self.key())
            .expect("server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A TLS server in front of another test server: each connection is a TLS handshake with its
/// configuration, then the plaintext piped both ways to `target` over a new TCP connection.
/// A handshake that fails closes the connection without reaching the target.
pub struct TlsFront {
    addr: SocketAddr,
    shared: Arc<FrontShared>,
    task: tokio::task::JoinHandle<()>,
}

/// The server name (SNI) and ALPN protocol of one handshake.
type Hello = (Option<String>, Option<Vec<u8>>);

#[derive(Default)]
struct FrontShared {
    accepted: AtomicUsize,
    handshakes: AtomicUsize,
    failed: AtomicUsize,
    /// Server name and ALPN protocol of each completed handshake, in order.
    hellos: Mutex<Vec<Hello>>,
}

impl std::fmt::Debug for TlsFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFront")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TlsFront {
    /// Listens on 127.0.0.1 port 0, terminates with `config`, pipes to `target`.
    pub async fn spawn(config: Arc<rustls::ServerConfig>, target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(FrontShared::default());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let state = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                state.accepted.fetch_add(1, Ordering::SeqCst);
                let (acceptor, state) = (acceptor.clone(), Arc::clone(&state));
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(stream).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            state.failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    let connection = tls.get_ref().1;
                    let hello = (
                        connection.server_name().map(str::to_owned),
                        connection.alpn_protocol().map(<[u8]>::to_vec),
                    );
                    state
                        .hellos
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(hello);
                    state.handshakes.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut plain) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = plain.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Self { addr, shared, task }
    }

    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed.
    pub fn handshakes(&self) -> usize {
        self.shared.handshakes.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (the client refused the certificate, spoke no TLS, ...).
    pub fn failed_handshakes(&self) -> usize {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// The server name (SNI) each completed handshake asked for, in order (`None`: none sent).
    pub fn server_names(&self) -> Vec<Option<String>> {
        self.hellos().into_iter().map(|(name, _)| name).collect()
    }

    /// The ALPN protocol each completed handshake agreed on, in order.
    pub fn alpn(&self) -> Vec<Option<Vec<u8>>> {
        self.hellos().into_iter().map(|(_, alpn)| alpn).collect()
    }

    fn hellos(&self) -> Vec<Hello> {
        self.shared
            .hellos
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
