//! Certificates of a TLS-terminating listener: PEM files loaded with `rustls-pki-types`
//! ([`PemObject`]), each key checked against its certificate, and a [`ResolvesServerCert`]
//! that picks a certificate by the client's server name (exact, then wildcard, then the first
//! certificate as the default).
//!
//! Loading is all or nothing and happens when a configuration is applied (start, SIGHUP); the
//! resulting `ServerConfig` is immutable and lives in that configuration's snapshot, so a
//! reload swaps certificates for new connections while tunnels opened with the old ones go on
//! with theirs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::sni::{NamePattern, SniMap, WildcardDepth};

/// One certificate chain and its key, as configured.
#[derive(Debug, Clone, Copy)]
pub struct CertificateFiles<'a> {
    /// PEM: the leaf certificate first, then its intermediates.
    pub cert: &'a Path,
    /// PEM: a PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key.
    pub key: &'a Path,
}

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{}: cannot read the file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: not valid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error(
        "{}: no private key in the file (expected PEM PKCS#8, PKCS#1 or SEC1: -----BEGIN PRIVATE KEY-----, -----BEGIN RSA PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("{}: unsupported private key: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("{}: this key does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: unreadable certificate: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{}: the certificate names no DNS name (subjectAltName)", path.display())]
    NoNames { path: PathBuf },
    #[error("no certificates configured")]
    Empty,
}

impl CertError {
    /// The file the error is about (the key's, for a mismatch), if one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            CertError::Read { path, .. }
            | CertError::NoCertificate { path }
            | CertError::Pem { path, .. }
            | CertError::NoKey { path }
            | CertError::Key { path, .. }
            | CertError::BadCertificate { path, .. }
            | CertError::NoNames { path } => Some(path),
            CertError::KeyMismatch { key, .. } => Some(key),
            CertError::Empty => None,
        }
    }
}

/// Certificates loaded for one listener.
pub struct ServerCertificates {
    /// The rustls configuration to accept with (TLS 1.2 and 1.3, ALPN `http/1.1`).
    pub config: Arc<ServerConfig>,
    resolver: Arc<SniResolver>,
    /// Problems worth a warning that do not stop loading (an expired certificate).
    pub warnings: Vec<String>,
}

impl fmt::Debug for ServerCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificates")
            .field("names", &self.resolver.names)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

impl ServerCertificates {
    /// Whether a certificate covers `name` by name (exact or wildcard), not just as the default.
    pub fn covers(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.resolver.names.iter().any(|pattern| match pattern {
            NamePattern::Exact(exact) => *exact == name,
            NamePattern::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        })
    }

    /// The names the certificates cover, in configuration order.
    pub fn names(&self) -> &[NamePattern] {
        &self.resolver.names
    }
}

/// Loads every certificate and key; the first is the default for clients whose server name
/// no certificate covers (or who send none). `now_unix`: the time to check expiry against.
pub fn load(
    files: &[CertificateFiles<'_>],
    now_unix: u64,
) -> Result<ServerCertificates, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut map = SniMap::new(WildcardDepth::OneLabel);
    let mut names = Vec::new();
    let mut warnings = Vec::new();
    let mut default = None;
    for file in files {
        let (key, leaf_names, not_after) = load_one(file, &provider)?;
        if let Some(not_after) = not_after
            && not_after < now_unix
        {
            warnings.push(format!(
                "{}: the certificate expired ({} seconds ago); clients will refuse it",
                file.cert.display(),
                now_unix - not_after
            ));
        }
        for name in leaf_names {
            map.insert(name.clone(), Arc::clone(&key));
            names.push(name);
        }
        default.get_or_insert(key);
    }
    let default = default.ok_or(CertError::Empty)?;
    map.set_default(Some(default));
    let resolver = Arc::new(SniResolver { map, names });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CertError::Key {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerCertificates {
        config: Arc::new(config),
        resolver,
        warnings,
    })
}

type Loaded = (Arc<CertifiedKey>, Vec<NamePattern>, Option<u64>);

fn load_one(file: &CertificateFiles<'_>, provider: &CryptoProvider) -> Result<Loaded, CertError> {
    let chain = read_chain(file.cert)?;
    let Some(leaf) = chain.first().cloned() else {
        return Err(CertError::NoCertificate {
            path: file.cert.to_owned(),
        });
    };
    let key = read_key(file.key)?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::Key {
            path: file.key.to_owned(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    if certified.keys_match().is_err() {
        return Err(CertError::KeyMismatch {
            cert: file.cert.to_owned(),
            key: file.key.to_owned(),
        });
    }
    let parsed = webpki::EndEntityCert::try_from(&leaf).map_err(|e| CertError::BadCertificate {
        path: file.cert.to_owned(),
        reason: format!("{e:?}"),
    })?;
    let names: Vec<NamePattern> = parsed
        .valid_dns_names()
        .filter_map(NamePattern::parse)
        .collect();
    if names.is_empty() {
        return Err(CertError::NoNames {
            path: file.cert.to_owned(),
        });
    }
    Ok((Arc::new(certified), names, crate::der::not_after(&leaf)))
}

/// Every PEM certificate of a file, in order (empty when it has none).
pub(crate) fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = read(path)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// The first PEM private key of a file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CertError::NoKey {
            path: path.to_owned(),
        },
        e => CertError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        },
    })
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Picks a certificate by server name: exact, then wildcard (one label), then the default.
#[derive(Debug)]
struct SniResolver {
    map: SniMap<Arc<CertifiedKey>>,
    names: Vec<NamePattern>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = client_hello.server_name().map(str::to_ascii_lowercase);
        self.map.get(name.as_deref()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, params: rcgen::CertificateParams) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn loads_names_and_warns_about_expiry() {
        let dir = std::env::temp_dir().join(format!("sluice-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example".into(), "*.b.example".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let (cert, key) = write(&dir, "old", params);
        let loaded = load(
            &[CertificateFiles {
                cert: &cert,
                key: &key,
            }],
            2_000_000_000,
        )
        .unwrap();
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("expired"));
        assert!(loaded.covers("a.example"));
        assert!(loaded.covers("x.b.example"));
        assert!(!loaded.covers("x.y.b.example"));
        assert!(!loaded.covers("c.example"));

        // No certificate at all, and a key file without a key.
        let error = load(&[], 0).unwrap_err();
        assert!(matches!(error, CertError::Empty));
        let error = load(
            &[CertificateFiles {
                cert: &cert,
                key: &cert,
            }],
            0,
        )
        .unwrap_err();
        assert!(error.to_string().contains("no private key"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
