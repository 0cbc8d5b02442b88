//! TLS to backends (`wss` upstream): the rustls `ClientConfig` of a pool, and the backend
//! connection that is either plain TCP or TLS over it.
//!
//! A pool's [`Upstream`] is built once per configuration generation (start, SIGHUP) and lives
//! in that generation's snapshot: a reload that changes the CA, the client certificate or the
//! server name is used by new connections only; tunnels opened before keep their TLS session.
//!
//! Verification is on by default: the backend's certificate must chain to the configured CA
//! bundle (or, without one, to the system's CA bundle read from its usual file) and name the
//! server: the configured `sni`, else the backend's IP address (an IP SAN; no SNI is sent for
//! an IP, RFC 6066 §3). `verify = false` accepts any certificate (the handshake signatures are
//! still checked) and is warned about when loaded. ALPN offers `http/1.1`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::certs::{CertError, read_chain, read_key};
pub use crate::stream::BackendStream;

/// Where the system's CA bundle is looked for when a pool verifies without a `ca` (the
/// locations of Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE and others); `SSL_CERT_FILE`
/// first when set. Read from disk only: nothing is fetched.
pub const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A pool's `tls` settings, as configured.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamSettings<'a> {
    /// PEM CA bundle the backends' certificates must chain to (`None`: the system's).
    pub ca: Option<&'a Path>,
    /// Client certificate chain and key for mutual TLS.
    pub client_cert: Option<(&'a Path, &'a Path)>,
    /// The server name to send and verify (`None`: the backend's IP address, no SNI).
    pub sni: Option<&'a str>,
    /// Verify the backend's certificate (on by default).
    pub verify: bool,
}

/// Why a pool's TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A CA bundle, client certificate or key could not be read or parsed.
    #[error(transparent)]
    File(#[from] CertError),
    /// No `ca` is configured and no system CA bundle was found.
    #[error(
        "no ca is configured and no system CA bundle was found (looked in {}); set tls.ca to the PEM bundle that signs the backends' certificates, or verify = false",
        SYSTEM_CA_FILES.join(", ")
    )]
    NoSystemRoots,
    /// The CA file holds certificates, none of them usable as a trust anchor.
    #[error("{}: no usable CA certificate in the file ({reason})", path.display())]
    BadCa { path: PathBuf, reason: String },
    /// `sni` is not a valid DNS name.
    #[error("sni {0:?} is not a valid server name")]
    BadName(String),
    /// rustls refused the configuration (cannot happen with the ring provider's defaults).
    #[error("TLS configuration: {0}")]
    Rustls(String),
    /// The client certificate and key could not be used.
    #[error("{}: client certificate: {reason}", path.display())]
    ClientCert { path: PathBuf, reason: String },
}

impl UpstreamError {
    /// The file the error is about, if one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            UpstreamError::File(e) => e.path(),
            UpstreamError::BadCa { path, .. } | UpstreamError::ClientCert { path, .. } => {
                Some(path)
            }
            UpstreamError::NoSystemRoots | UpstreamError::BadName(_) | UpstreamError::Rustls(_) => {
                None
            }
        }
    }
}

/// A pool's TLS client configuration for one configuration generation.
pub struct Upstream {
    config: Arc<ClientConfig>,
    sni: Option<ServerName<'static>>,
    id: u64,
    verify: bool,
    /// Worth a warning at load, not an error (`verify = false`).
    pub warnings: Vec<String>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Loads the CA bundle and client certificate and builds the `ClientConfig` (TLS 1.2 and
    /// 1.3, ALPN `http/1.1`).
    pub fn load(settings: &UpstreamSettings<'_>) -> Result<Self, UpstreamError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let sni = settings
            .sni
            .map(|name| {
                ServerName::try_from(name.to_owned())
                    .ok()
                    .filter(|n| matches!(n, ServerName::DnsName(_)))
                    .ok_or_else(|| UpstreamError::BadName(name.to_owned()))
            })
            .transpose()?;
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| UpstreamError::Rustls(e.to_string()))?;
        let mut warnings = Vec::new();
        let builder = if settings.verify {
            builder.with_root_certificates(roots(settings.ca)?)
        } else {
            warnings.push(
                "verify = false: backends' certificates are not verified; anyone on the path to a backend can read and change the traffic".to_owned(),
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                    algorithms: provider.signature_verification_algorithms,
                }))
        };
        let mut config = match settings.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_chain(cert)?;
                if chain.is_empty() {
                    return Err(CertError::NoCertificate {
                        path: cert.to_owned(),
                    }
                    .into());
                }
                let private = read_key(key)?;
                let signing = provider
                    .key_provider
                    .load_private_key(private.clone_key())
                    .map_err(|e| CertError::Key {
                        path: key.to_owned(),
                        reason: e.to_string(),
                    })?;
                if CertifiedKey::new(chain.clone(), signing)
                    .keys_match()
                    .is_err()
                {
                    return Err(CertError::KeyMismatch {
                        cert: cert.to_owned(),
                        key: key.to_owned(),
                    }
                    .into());
                }
                builder.with_client_auth_cert(chain, private).map_err(|e| {
                    UpstreamError::ClientCert {
                        path: cert.to_owned(),
                        reason: e.to_string(),
                    }
                })?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        static IDS: AtomicU64 = AtomicU64::new(1);
        Ok(Self {
            config: Arc::new(config),
            sni,
            id: IDS.fetch_add(1, Ordering::Relaxed),
            verify: settings.verify,
            warnings,
        })
    }

    /// The name to send and verify for a backend: the configured `sni`, else its IP address
    /// (verified against the certificate's IP SANs; rustls sends no SNI for an IP).
    pub fn server_name(&self, addr: SocketAddr) -> ServerName<'static> {
        self.sni
            .clone()
            .unwrap_or(ServerName::IpAddress(addr.ip().into()))
    }

    /// Identifies this configuration among all loaded by the process (never 0): an idle
    /// connection is reused only by a request whose pool has the same one.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The rustls configuration.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect failed (refused, unreachable).
    #[error("{0}")]
    Refused(#[source] io::Error),
    /// The TCP connect and TLS handshake did not complete within the timeout.
    #[error("timed out")]
    Timeout,
    /// The TLS handshake failed; `reason` says why (unknown CA, name mismatch, expired, ...).
    #[error("TLS handshake failed: {reason}")]
    Tls { reason: String },
}

/// Connects to `addr` (TCP, `TCP_NODELAY`), writes `preface` on the TCP connection (a PROXY
/// protocol header, which precedes TLS; empty: nothing), then, with `tls`, completes a TLS
/// handshake; everything within `timeout`.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&Upstream>,
    preface: &[u8],
    timeout: Duration,
) -> Result<BackendStream, ConnectError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(ConnectError::Refused(e)),
        Err(_) => return Err(ConnectError::Timeout),
    };
    let _ = tcp.set_nodelay(true);
    if !preface.is_empty() {
        match tokio::time::timeout_at(deadline, tcp.write_all(preface)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ConnectError::Refused(e)),
            Err(_) => return Err(ConnectError::Timeout),
        }
    }
    let Some(tls) = tls else {
        return Ok(BackendStream::Plain(tcp));
    };
    // Boxed: the handshake state is large and must not grow the caller's future.
    let handshake =
        Box::pin(TlsConnector::from(Arc::clone(&tls.config)).connect(tls.server_name(addr), tcp));
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(stream)) => Ok(BackendStream::Tls(Box::new(stream))),
        Ok(Err(e)) => Err(ConnectError::Tls {
            reason: describe(&e),
        }),
        Err(_) => Err(ConnectError::Timeout),
    }
}

/// What went wrong in a client handshake, in the words an operator looks for.
pub fn describe(error: &io::Error) -> String {
    let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof => {
                "the backend closed the connection during the handshake".to_owned()
            }
            _ => error.to_string(),
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => {
                "unknown CA: the backend's certificate is not signed by the configured ca"
                    .to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("name mismatch: {cert}")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("expired: {cert}")
            }
            other => format!("invalid certificate: {other}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("{tls} (is the backend speaking TLS?)")
        }
        other => other.to_string(),
    }
}

/// The trust anchors: the configured bundle, else the system's.
fn roots(ca: Option<&Path>) -> Result<RootCertStore, UpstreamError> {
    let (path, certs) = match ca {
        Some(path) => (path.to_owned(), read_chain(path)?),
        None => {
            let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
            let found = from_env
                .into_iter()
                .chain(SYSTEM_CA_FILES.iter().map(PathBuf::from))
                .find(|p| p.is_file())
                .ok_or(UpstreamError::NoSystemRoots)?;
            let certs = read_chain(&found)?;
            (found, certs)
        }
    };
    if certs.is_empty() {
        return Err(CertError::NoCertificate { path }.into());
    }
    let mut store = RootCertStore::empty();
    let mut last_error = None;
    for cert in certs {
        if let Err(e) = store.add(cert) {
            last_error = Some(e.to_string());
        }
    }
    if store.is_empty() {
        return Err(UpstreamError::BadCa {
            path,
            reason: last_error.unwrap_or_default(),
        });
    }
    Ok(store)
}

/// `verify = false`: any certificate is accepted; the handshake's signatures are still
/// checked, so the peer holds the key of the certificate it showed.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
