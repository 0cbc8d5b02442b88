//! A listener's key loads in each PEM form the issue names: PKCS#8 (`BEGIN PRIVATE KEY`),
//! PKCS#1 (`BEGIN RSA PRIVATE KEY`) and SEC1 (`BEGIN EC PRIVATE KEY`). PKCS#8 and SEC1 keys
//! are generated here (SEC1 is the key inside rcgen's PKCS#8); the RSA key is a fixture (see
//! `tests/data/README.md`), its certificate generated here.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use base64::Engine as _;
use rustls_pki_types::PrivatePkcs8KeyDer;
use sluice_tls::CertificateFiles;
use sluice_tls::certs::load;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-key-forms-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// PEM of `der` with this label, 64 characters a line.
fn pem(label: &str, der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// One DER element: tag, definite length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// Splits one DER element off the front of `input`: (tag, content, rest).
fn take(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let (tag, first) = (input[0], input[1] as usize);
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        let len = input[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, 2 + n)
    };
    (tag, &input[header..header + len], &input[header + len..])
}

/// The private key inside a PKCS#8 `PrivateKeyInfo` (for EC: the SEC1 `ECPrivateKey`).
fn inner_key(pkcs8: &[u8]) -> Vec<u8> {
    let (_, info, _) = take(pkcs8);
    let (_, _version, rest) = take(info);
    let (_, _algorithm, rest) = take(rest);
    let (tag, key, _) = take(rest);
    assert_eq!(tag, 0x04, "an OCTET STRING");
    key.to_vec()
}

/// PKCS#1 `RSAPrivateKey` wrapped as PKCS#8 (rsaEncryption, NULL parameters).
fn rsa_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let algorithm = der(
        0x30,
        &[der(0x06, RSA_ENCRYPTION), vec![0x05, 0x00]].concat(),
    );
    der(
        0x30,
        &[der(0x02, &[0]), algorithm, der(0x04, pkcs1)].concat(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn loads(dir: &Path, cert: &rcgen::Certificate, key_pem: &str, form: &str) {
    let cert_path = write(dir, &format!("{form}.pem"), &cert.pem());
    let key_path = write(dir, &format!("{form}.key"), key_pem);
    let loaded = load(
        &[CertificateFiles {
            cert: &cert_path,
            key: &key_path,
        }],
        0,
    )
    .unwrap_or_else(|e| panic!("{form}: {e}"));
    assert!(loaded.covers("a.example"), "{form}");
}

#[test]
fn pkcs8_pkcs1_and_sec1_keys_load() {
    let dir = temp_dir("all");
    let params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();

    // EC P-256: PKCS#8 as rcgen writes it, and the SEC1 key inside it.
    let ec = rcgen::KeyPair::generate().unwrap();
    let ec_cert = params.self_signed(&ec).unwrap();
    let pkcs8 = ec.serialize_der();
    assert!(
        ec.serialize_pem()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    loads(&dir, &ec_cert, &ec.serialize_pem(), "pkcs8");
    loads(
        &dir,
        &ec_cert,
        &pem("EC PRIVATE KEY", &inner_key(&pkcs8)),
        "sec1",
    );

    // RSA 2048: the PKCS#1 fixture, signed for through its PKCS#8 form.
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/test-rsa-pkcs1.key"),
    )
    .unwrap();
    assert!(fixture.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let pkcs1 = base64::engine::general_purpose::STANDARD
        .decode(
            fixture
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let rsa = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(rsa_pkcs8(&pkcs1)),
        &rcgen::PKCS_RSA_SHA256,
    )
    .unwrap();
    let rsa_cert = params.self_signed(&rsa).unwrap();
    loads(&dir, &rsa_cert, &fixture, "pkcs1");

    // A SEC1 key that is not this certificate's: refused as a mismatch, not misread.
    let other = rcgen::KeyPair::generate().unwrap();
    let cert_path = write(&dir, "mismatch.pem", &ec_cert.pem());
    let key_path = write(
        &dir,
        "mismatch.key",
        &pem("EC PRIVATE KEY", &inner_key(&other.serialize_der())),
    );
    let error = load(
        &[CertificateFiles {
            cert: &cert_path,
            key: &key_path,
        }],
        0,
    )
    .unwrap_err();
    assert!(error.to_string().contains("does not match"), "{error}");
    let _ = std::fs::remove_dir_all(dir);
}
