//! A pool's `tls` table: TLS to its backends (`wss` upstream), in the shape HAProxy's
//! `server ... ssl verify required ca-file ... sni ... crt ...` and Envoy's
//! `UpstreamTlsContext` have:
//!
//! ```toml
//! tls = { ca = "backends-ca.pem", sni = "backend.internal", verify = true,
//!         cert = "sluice.pem", key = "sluice.key" }
//! ```
//!
//! The files are read when the configuration is applied (start, reload, `sluice check`), not
//! here; each path keeps where it was written so that a file that cannot be read or parsed is
//! reported at its key, with file, line and column, like every other configuration error.

use crate::defaults;
use crate::model::{ConfigPath, PoolTls};
use crate::read::{Item, Keys, Reader};

const POOL_TLS: Keys = Keys {
    known: &["ca", "sni", "verify", "cert", "key"],
    later: &[],
};

/// `tls = { ca, sni, verify, cert, key }` of a pool; an empty table is TLS with every default.
pub(crate) fn pool_tls(r: &mut Reader<'_>, item: Item<'_, '_>) -> Option<PoolTls> {
    let at = r.location(&item);
    let t = item.table(r, &POOL_TLS)?;
    let mut path = |key: &str| {
        t.optional(key, None, |item| {
            let text = item.str(r)?;
            if text.is_empty() {
                r.report(&item, "a path cannot be empty");
                return None;
            }
            Some(Some(ConfigPath {
                path: text.into(),
                at: r.location(&item),
            }))
        })
    };
    let ca = path("ca");
    let cert = path("cert");
    let key = path("key");
    let sni = t.optional("sni", None, |item| {
        let name = item.str(r)?;
        match server_name(name) {
            Ok(()) => Some(Some(name.to_ascii_lowercase())),
            Err(problem) => {
                r.report(&item, problem);
                None
            }
        }
    });
    let verify = t.optional("verify", defaults::UPSTREAM_TLS_VERIFY, |item| item.bool(r));
    let client_cert = match (cert?, key?) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            let missing = if t.get("cert").is_some() {
                "key"
            } else {
                "cert"
            };
            r.report(
                &t.item,
                format_args!("a client certificate needs both cert and key; {missing} is missing"),
            );
            return None;
        }
    };
    Some(PoolTls {
        ca: ca?,
        client_cert,
        sni: sni?,
        verify: verify?,
        at,
    })
}

/// A DNS name to send as SNI and verify the certificate against (RFC 6066 §3: a host name,
/// not an IP address).
fn server_name(name: &str) -> Result<(), String> {
    const EXPECTED: &str = "expected a DNS name such as \"backend.internal\"";
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{name:?} is not a server name; {EXPECTED}"));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{name:?} is an IP address, which SNI cannot carry; leave sni out to verify the backend's IP address, or give its DNS name"
        ));
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if labels_ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid server name; {EXPECTED}"))
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{ConfigPath, Location, PoolTls};
    use crate::test_support::{errors, example_uncommented, pool};

    fn at(line: usize, column: usize, key: &str) -> Location {
        Location {
            origin: "t.toml".into(),
            line,
            column,
            key: key.into(),
        }
    }

    #[test]
    fn reads_every_key_and_defaults() {
        let p = pool(
            "tls = { ca = \"ca.pem\", sni = \"Backend.Internal\", verify = true, cert = \"c.pem\", key = \"c.key\" }\n",
        );
        assert_eq!(
            p.tls,
            Some(PoolTls {
                ca: Some(ConfigPath {
                    path: "ca.pem".into(),
                    at: at(10, 14, "pools.main.tls.ca"),
                }),
                client_cert: Some((
                    ConfigPath {
                        path: "c.pem".into(),
                        at: at(10, 72, "pools.main.tls.cert"),
                    },
                    ConfigPath {
                        path: "c.key".into(),
                        at: at(10, 87, "pools.main.tls.key"),
                    },
                )),
                sni: Some("backend.internal".into()),
                verify: true,
                at: at(10, 7, "pools.main.tls"),
            })
        );
        let p = pool("tls = {}\n");
        let tls = p.tls.expect("tls");
        assert_eq!((tls.ca, tls.client_cert, tls.sni), (None, None, None));
        assert!(tls.verify);
        assert_eq!(pool("").tls, None);
        assert!(!pool("tls = { verify = false }\n").tls.expect("tls").verify);
    }

    #[test]
    fn errors_point_at_the_key() {
        let found = errors(
            "tls = { cert = \"c.pem\", ca = \"\", sni = \"10.0.0.1\", verify = \"yes\", port = 1 }\n",
        );
        assert_eq!(
            found,
            vec![
                "t.toml:10:7: pools.main.tls: a client certificate needs both cert and key; key is missing",
                "t.toml:10:30: pools.main.tls.ca: a path cannot be empty",
                "t.toml:10:40: pools.main.tls.sni: \"10.0.0.1\" is an IP address, which SNI cannot carry; leave sni out to verify the backend's IP address, or give its DNS name",
                "t.toml:10:61: pools.main.tls.verify: expected true or false, found string \"yes\"",
                "t.toml:10:68: pools.main.tls.port: unknown key; expected one of \"ca\", \"sni\", \"verify\", \"cert\", \"key\"",
            ]
        );
        assert_eq!(
            errors("tls = { sni = \"bad_name..x\" }\n"),
            vec![
                "t.toml:10:15: pools.main.tls.sni: \"bad_name..x\" is not a valid server name; expected a DNS name such as \"backend.internal\"",
            ]
        );
    }

    #[test]
    fn l4_listeners_cannot_use_a_tls_pool() {
        let text = "[[listeners]]\nname = \"raw\"\nmode = \"tcp\"\nlisten = \"127.0.0.1:0\"\npool = \"main\"\n\n\
                    [pools.main]\ntls = {}\nbackends = [\"127.0.0.1:9001\"]\n";
        let errors: Vec<String> = match crate::parse(text, "t.toml") {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(
            errors,
            vec![
                "t.toml:8:7: pools.main.tls: TLS to backends applies to pools of http listeners only; the tcp listener \"raw\" relays the client's bytes untouched to this pool"
            ]
        );
    }

    /// `config/sluice.toml` shows `tls` commented out; uncommented, it parses as its comment says.
    #[test]
    fn the_example_files_commented_tls_parses() {
        let config = example_uncommented(&["# tls = { ca"], &[]);
        let tls = config
            .pool("echo")
            .and_then(|p| p.tls.clone())
            .expect("tls");
        assert_eq!(
            tls.ca.map(|c| c.path),
            Some("/etc/sluice/backends-ca.pem".into())
        );
        assert_eq!(tls.sni.as_deref(), Some("backend.internal"));
        assert!(tls.verify);
        assert_eq!(tls.client_cert, None);
    }

    #[test]
    fn a_location_makes_a_config_error() {
        let error = at(3, 9, "pools.main.tls.ca").error("ca.pem: cannot read the file");
        assert_eq!(
            error.to_string(),
            "t.toml:3:9: pools.main.tls.ca: ca.pem: cannot read the file"
        );
    }
}
