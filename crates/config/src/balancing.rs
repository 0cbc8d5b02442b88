//! The keys of a pool that say how a backend is chosen: `balance`, the consistent-hashing keys
//! (`hash_key`, `hash_fallback`, `hash_balance_factor`) and `sticky_cookie`.
//!
//! Their rules span several keys (`hash_key` only with `balance = "hash"`, `same_site = "none"`
//! only with `secure = true`, …), so they are read together here and `file.rs` takes the
//! result. As everywhere, every problem is reported and `None` means "reported".

use crate::defaults;
use crate::matchers;
use crate::model::{Balance, HashKey, HashPolicy, SameSite, Secret, StickyCookie};
use crate::read::{Item, Keys, Reader, Table, checked, did_you_mean};

const STICKY_COOKIE: Keys = Keys {
    known: &[
        "name",
        "ttl",
        "secure",
        "http_only",
        "same_site",
        "path",
        "secret",
    ],
    later: &[],
};

const HASH_KEY_FORMS: &str =
    "\"cookie:NAME\", \"header:NAME\", \"query:NAME\", \"source_ip\" or \"four_tuple\"";

/// How a pool chooses its backends.
pub(crate) struct Balancing {
    pub(crate) balance: Balance,
    pub(crate) hash: Option<HashPolicy>,
    pub(crate) sticky_cookie: Option<StickyCookie>,
}

/// Reads the balancing keys of the pool table `t`.
pub(crate) fn balancing(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<Balancing> {
    let balance = t.optional("balance", defaults::BALANCE, |item| {
        item.choice(
            r,
            &[
                ("round_robin", Balance::RoundRobin),
                ("least_conn", Balance::LeastConn),
                ("random_two", Balance::RandomTwo),
                ("hash", Balance::Hash),
            ],
            &[],
        )
    });

    let sticky_cookie = t.optional("sticky_cookie", None, |item| {
        sticky_cookie(r, item).map(Some)
    });

    let hash = match balance {
        Some(Balance::Hash) => hash_policy(r, t, sticky_cookie.as_ref().and_then(Option::as_ref)),
        Some(other) => {
            // The hashing keys mean nothing to this algorithm: say so rather than ignore them.
            for key in ["hash_key", "hash_fallback", "hash_balance_factor"] {
                if let Some(item) = t.get(key) {
                    r.report(
                        &item,
                        format_args!(
                            "only used with balance = \"hash\" (this pool's balance is \"{}\"); \
                             set balance = \"hash\" or remove {key}",
                            other.as_str()
                        ),
                    );
                }
            }
            Some(None)
        }
        // `balance` itself is wrong: still check the hashing keys' own values.
        None => {
            let _ = hash_parts(r, t, None);
            None
        }
    };

    Some(Balancing {
        balance: balance?,
        hash: hash?,
        sticky_cookie: sticky_cookie?,
    })
}

/// The policy of a `balance = "hash"` pool: `hash_key` is required.
fn hash_policy(
    r: &mut Reader<'_>,
    t: &Table<'_, '_>,
    sticky: Option<&StickyCookie>,
) -> Option<Option<HashPolicy>> {
    let required = t.require(
        r,
        "hash_key",
        &format!("what balance = \"hash\" hashes: {HASH_KEY_FORMS}"),
    );
    let (key, fallback, balance_factor) = hash_parts(r, t, sticky);
    required?;
    Some(Some(HashPolicy {
        key: key??,
        fallback: fallback?,
        balance_factor: balance_factor?,
    }))
}

/// `hash_key` (`None` inside when absent), `hash_fallback` and `hash_balance_factor`.
#[allow(clippy::type_complexity)]
fn hash_parts(
    r: &mut Reader<'_>,
    t: &Table<'_, '_>,
    sticky: Option<&StickyCookie>,
) -> (
    Option<Option<HashKey>>,
    Option<Balance>,
    Option<Option<f64>>,
) {
    let key = t.optional("hash_key", None, |item| {
        let text = item.str(r)?;
        let key = checked(r, &item, hash_key(text))?;
        if let (HashKey::Cookie(name), Some(sticky)) = (&key, sticky) {
            if *name == sticky.name {
                r.report(
                    &item,
                    format_args!(
                        "the cookie \"{name}\" is this pool's sticky_cookie, which already sends \
                         a client back to its backend; hash another key, or remove hash_key and \
                         use another balance"
                    ),
                );
                return None;
            }
        }
        Some(Some(key))
    });

    let fallback = t.optional("hash_fallback", defaults::HASH_FALLBACK, |item| {
        if item.value.get_ref().as_str() == Some("hash") {
            r.report(
                &item,
                "\"hash\" cannot be the fallback: the fallback places requests that have no key \
                 to hash; expected one of \"round_robin\", \"least_conn\", \"random_two\"",
            );
            return None;
        }
        item.choice(
            r,
            &[
                ("round_robin", Balance::RoundRobin),
                ("least_conn", Balance::LeastConn),
                ("random_two", Balance::RandomTwo),
            ],
            &[],
        )
    });

    let balance_factor = t.optional(
        "hash_balance_factor",
        defaults::HASH_BALANCE_FACTOR,
        |item| {
            let factor = item.number(r)?;
            if factor == 0.0 {
                return Some(None);
            }
            if factor > defaults::HASH_BALANCE_FACTOR_ABOVE
                && factor <= defaults::HASH_BALANCE_FACTOR_MAX
            {
                return Some(Some(factor));
            }
            r.report(
                &item,
                format_args!(
                    "{factor} is out of range; expected 0 (unbounded) or a factor greater than 1 \
                     and at most 100, such as 1.25 (no backend above 1.25 times the mean load)"
                ),
            );
            None
        },
    );

    (key, fallback, balance_factor)
}

/// `{ name = "srv", ttl = "1d", secure = true, http_only = true, same_site = "lax",
/// path = "/", secret = "…" }`.
fn sticky_cookie(r: &mut Reader<'_>, item: Item<'_, '_>) -> Option<StickyCookie> {
    let t = item.table(r, &STICKY_COOKIE)?;

    let ttl = t.optional("ttl", defaults::STICKY_COOKIE_TTL, |item| {
        let d = item.duration(r)?;
        if d.is_zero() {
            r.report(
                &item,
                "must be greater than zero; leave ttl out for a session cookie",
            );
            return None;
        }
        if d.subsec_nanos() != 0 {
            r.report(
                &item,
                format_args!(
                    "must be a whole number of seconds (Max-Age counts seconds), such as \"{}s\"",
                    d.as_secs().max(1)
                ),
            );
            return None;
        }
        Some(Some(d))
    });
    let secure = t.optional("secure", defaults::STICKY_COOKIE_SECURE, |item| {
        item.bool(r)
    });
    let http_only = t.optional("http_only", defaults::STICKY_COOKIE_HTTP_ONLY, |item| {
        item.bool(r)
    });
    let path = t.optional("path", defaults::STICKY_COOKIE_PATH.to_owned(), |item| {
        let text = item.str(r)?;
        checked(r, &item, cookie_path(text))
    });
    let same_site = t.optional("same_site", defaults::STICKY_COOKIE_SAME_SITE, |item| {
        let same_site = item.choice(
            r,
            &[
                ("strict", SameSite::Strict),
                ("lax", SameSite::Lax),
                ("none", SameSite::None),
            ],
            &[],
        )?;
        if same_site == SameSite::None && secure == Some(false) {
            r.report(
                &item,
                "\"none\" requires secure = true: browsers drop SameSite=None cookies that are \
                 not Secure",
            );
            return None;
        }
        Some(Some(same_site))
    });
    let secret = t.optional("secret", None, |item| {
        let text = item.str(r)?;
        if text.len() < defaults::STICKY_COOKIE_SECRET_MIN_LEN {
            r.report(
                &item,
                format_args!(
                    "too short to keep anything secret; expected at least {} characters, such \
                     as the output of `openssl rand -hex 16`",
                    defaults::STICKY_COOKIE_SECRET_MIN_LEN
                ),
            );
            return None;
        }
        Some(Some(Secret::new(text)))
    });
    let name = t
        .require(r, "name", "a cookie name such as \"sluice_backend\"")
        .and_then(|item| {
            let text = item.str(r)?;
            let name = checked(r, &item, cookie_name(text))?;
            // RFC 6265bis §4.1.3: browsers refuse prefixed cookies that break the prefix's rule.
            let lower = name.to_ascii_lowercase();
            let host = lower.starts_with("__host-");
            if (host || lower.starts_with("__secure-")) && secure == Some(false) {
                let prefix = name
                    .get(..name.find('-').map_or(0, |i| i + 1))
                    .unwrap_or("");
                r.report(
                    &item,
                    format_args!(
                        "a cookie named \"{prefix}…\" must be Secure, or browsers drop it; set \
                         secure = true or choose another name"
                    ),
                );
                return None;
            }
            if host && path.as_deref().is_some_and(|p| p != "/") {
                r.report(
                    &item,
                    "a cookie named \"__Host-…\" must have path = \"/\", or browsers drop it",
                );
                return None;
            }
            Some(name)
        });

    Some(StickyCookie {
        name: name?,
        ttl: ttl?,
        secure: secure?,
        http_only: http_only?,
        same_site: same_site?,
        path: path?,
        secret: secret?,
    })
}

/// `cookie:NAME`, `header:NAME`, `query:NAME`, `source_ip` or `four_tuple`.
pub(crate) fn hash_key(text: &str) -> Result<HashKey, String> {
    const KINDS: [&str; 5] = ["cookie", "header", "query", "source_ip", "four_tuple"];
    let (kind, name) = match text.split_once(':') {
        Some((kind, name)) => (kind, Some(name)),
        None => (text, None),
    };
    match (kind, name) {
        ("source_ip", None) => Ok(HashKey::SourceIp),
        ("four_tuple", None) => Ok(HashKey::FourTuple),
        ("four_tuple", Some(_)) => Err(format!(
            "invalid hash key \"{text}\": four_tuple takes no name; write \"four_tuple\""
        )),
        ("source_ip", Some(_)) => Err(format!(
            "invalid hash key \"{text}\": source_ip takes no name; write \"source_ip\""
        )),
        ("cookie" | "header" | "query", None | Some("")) => Err(format!(
            "invalid hash key \"{text}\": {kind} needs a name; write \"{kind}:NAME\", such as \
             \"{kind}:{}\"",
            match kind {
                "header" => "X-Session",
                "query" => "room",
                _ => "session",
            }
        )),
        ("cookie", Some(name)) => cookie_name(name).map(HashKey::Cookie),
        ("header", Some(name)) => matchers::header_name(name).map(HashKey::Header),
        ("query", Some(name)) => query_name(name).map(HashKey::Query),
        _ => {
            let hint = did_you_mean(kind, &KINDS)
                .map(|m| format!(" (did you mean \"{m}\"?)"))
                .unwrap_or_default();
            Err(format!(
                "unknown hash key \"{text}\"{hint}; expected {HASH_KEY_FORMS}"
            ))
        }
    }
}

/// A cookie name: an RFC 6265 §4.1.1 token (RFC 9110 `tchar`s), case kept.
pub(crate) fn cookie_name(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("a cookie name cannot be empty".into());
    }
    match text.chars().find(|c| !is_tchar(*c)) {
        Some(c) => Err(format!(
            "invalid cookie name \"{text}\": the character {c:?} is not allowed in a cookie name \
             (RFC 6265 token: letters, digits and !#$%&'*+-.^_`|~)"
        )),
        None => Ok(text.to_owned()),
    }
}

/// A query parameter name, compared byte for byte with the names in request targets.
fn query_name(text: &str) -> Result<String, String> {
    match text
        .chars()
        .find(|c| !c.is_ascii_graphic() || "&=#?+%".contains(*c))
    {
        Some(c) => Err(format!(
            "invalid query parameter name \"{text}\": the character {c:?} is not allowed; names \
             are matched as sent, without percent-decoding, so write the name as it appears in \
             URLs"
        )),
        None => Ok(text.to_owned()),
    }
}

/// A cookie `Path`: starts with `/`; visible ASCII but `;` (RFC 6265 §4.1.1 `path-value`).
fn cookie_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!(
            "invalid cookie path \"{text}\": it must start with '/', as in \"/\" or \"/chat\""
        ));
    }
    match text.chars().find(|c| !c.is_ascii_graphic() || *c == ';') {
        Some(c) => Err(format!(
            "invalid cookie path \"{text}\": the character {c:?} is not allowed"
        )),
        None => Ok(text.to_owned()),
    }
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::model::{Balance, HashKey, HashPolicy, SameSite, Secret, StickyCookie};
    use crate::parse;

    use crate::test_support::{error, errors, example_uncommented, file, pool};

    #[test]
    fn a_hash_pool_parses_with_every_key() {
        let p = pool(
            "balance = \"hash\"\nhash_key = \"cookie:session\"\nhash_fallback = \"round_robin\"\n\
             hash_balance_factor = 1.25\nsticky_cookie = { name = \"srv\", ttl = \"1d\", \
             secure = true, http_only = false, same_site = \"none\", path = \"/chat\", \
             secret = \"0123456789abcdef\" }\n",
        );
        assert_eq!(p.balance, Balance::Hash);
        assert_eq!(
            p.hash,
            Some(HashPolicy {
                key: HashKey::Cookie("session".into()),
                fallback: Balance::RoundRobin,
                balance_factor: Some(1.25),
            })
        );
        assert_eq!(
            p.sticky_cookie,
            Some(StickyCookie {
                name: "srv".into(),
                ttl: Some(Duration::from_secs(86_400)),
                secure: true,
                http_only: false,
                same_site: Some(SameSite::None),
                path: "/chat".into(),
                secret: Some(Secret::new("0123456789abcdef")),
            })
        );
    }

    #[test]
    fn hash_and_sticky_cookie_defaults() {
        let p = pool(
            "balance = \"hash\"\nhash_key = \"source_ip\"\nsticky_cookie = { name = \"srv\" }\n",
        );
        assert_eq!(
            p.hash,
            Some(HashPolicy {
                key: HashKey::SourceIp,
                fallback: Balance::LeastConn,
                balance_factor: Some(1.5),
            })
        );
        assert_eq!(
            p.sticky_cookie,
            Some(StickyCookie {
                name: "srv".into(),
                ttl: None,
                secure: false,
                http_only: true,
                same_site: None,
                path: "/".into(),
                secret: None,
            })
        );
        // Without the keys: no hashing, no cookie.
        let p = pool("");
        assert_eq!(
            (p.balance, p.hash, p.sticky_cookie),
            (Balance::RoundRobin, None, None)
        );
    }

    #[test]
    fn every_balance_parses_and_sticky_cookies_go_with_any() {
        for (text, balance) in [
            ("round_robin", Balance::RoundRobin),
            ("least_conn", Balance::LeastConn),
            ("random_two", Balance::RandomTwo),
        ] {
            let p = pool(&format!(
                "balance = \"{text}\"\nsticky_cookie = {{ name = \"srv\" }}\n"
            ));
            assert_eq!(p.balance, balance);
            assert_eq!(p.hash, None);
            assert!(p.sticky_cookie.is_some());
            assert_eq!(balance.as_str(), text);
        }
        assert_eq!(Balance::Hash.as_str(), "hash");
    }

    #[test]
    fn hash_key_forms() {
        let key = |text: &str| {
            pool(&format!("balance = \"hash\"\nhash_key = \"{text}\"\n"))
                .hash
                .map(|h| h.key)
        };
        assert_eq!(
            key("cookie:Session_ID"),
            Some(HashKey::Cookie("Session_ID".into()))
        );
        assert_eq!(
            key("header:X-Session"),
            Some(HashKey::Header("x-session".into()))
        );
        assert_eq!(key("query:room.id"), Some(HashKey::Query("room.id".into())));
        assert_eq!(key("source_ip"), Some(HashKey::SourceIp));
        assert_eq!(key("four_tuple"), Some(HashKey::FourTuple));
        assert_eq!(
            HashKey::Header("x-session".into()).to_string(),
            "header:x-session"
        );
        assert_eq!(HashKey::SourceIp.to_string(), "source_ip");

        let bad = |text: &str| error(&format!("balance = \"hash\"\nhash_key = \"{text}\"\n"));
        assert_eq!(
            bad("ip"),
            "t.toml:11:12: pools.main.hash_key: unknown hash key \"ip\"; expected \"cookie:NAME\", \"header:NAME\", \"query:NAME\", \"source_ip\" or \"four_tuple\""
        );
        assert_eq!(
            bad("cookies:s"),
            "t.toml:11:12: pools.main.hash_key: unknown hash key \"cookies:s\" (did you mean \"cookie\"?); expected \"cookie:NAME\", \"header:NAME\", \"query:NAME\", \"source_ip\" or \"four_tuple\""
        );
        assert_eq!(
            bad("cookie"),
            "t.toml:11:12: pools.main.hash_key: invalid hash key \"cookie\": cookie needs a name; write \"cookie:NAME\", such as \"cookie:session\""
        );
        assert_eq!(
            bad("header:"),
            "t.toml:11:12: pools.main.hash_key: invalid hash key \"header:\": header needs a name; write \"header:NAME\", such as \"header:X-Session\""
        );
        assert_eq!(
            bad("source_ip:x"),
            "t.toml:11:12: pools.main.hash_key: invalid hash key \"source_ip:x\": source_ip takes no name; write \"source_ip\""
        );
        assert_eq!(
            bad("cookie:a=b"),
            "t.toml:11:12: pools.main.hash_key: invalid cookie name \"a=b\": the character '=' is not allowed in a cookie name (RFC 6265 token: letters, digits and !#$%&'*+-.^_`|~)"
        );
        assert!(bad("cookie:a;b").contains("invalid cookie name"));
        assert!(bad("header:X Session").contains("invalid header name"));
        assert_eq!(
            bad("query:a&b"),
            "t.toml:11:12: pools.main.hash_key: invalid query parameter name \"a&b\": the character '&' is not allowed; names are matched as sent, without percent-decoding, so write the name as it appears in URLs"
        );
        assert!(bad("query:a%20b").contains("'%'"));
        assert!(bad("query:a b").contains("' '"));
    }

    #[test]
    fn hash_needs_its_key_and_its_keys_need_hash() {
        assert_eq!(
            error("balance = \"hash\"\n"),
            "t.toml:9:1: pools.main.hash_key: required key is missing; expected what balance = \"hash\" hashes: \"cookie:NAME\", \"header:NAME\", \"query:NAME\", \"source_ip\" or \"four_tuple\""
        );
        assert_eq!(
            errors(
                "balance = \"least_conn\"\nhash_key = \"source_ip\"\nhash_fallback = \"round_robin\"\nhash_balance_factor = 2\n"
            ),
            [
                "t.toml:11:12: pools.main.hash_key: only used with balance = \"hash\" (this pool's balance is \"least_conn\"); set balance = \"hash\" or remove hash_key",
                "t.toml:12:17: pools.main.hash_fallback: only used with balance = \"hash\" (this pool's balance is \"least_conn\"); set balance = \"hash\" or remove hash_fallback",
                "t.toml:13:23: pools.main.hash_balance_factor: only used with balance = \"hash\" (this pool's balance is \"least_conn\"); set balance = \"hash\" or remove hash_balance_factor",
            ]
        );
        // A misspelt balance does not hide the hashing keys' own errors.
        assert_eq!(
            errors("balance = \"hashing\"\nhash_key = \"ip\"\n"),
            [
                "t.toml:10:11: pools.main.balance: unknown value \"hashing\"; expected one of \"round_robin\", \"least_conn\", \"random_two\", \"hash\" (did you mean \"hash\"?)",
                "t.toml:11:12: pools.main.hash_key: unknown hash key \"ip\"; expected \"cookie:NAME\", \"header:NAME\", \"query:NAME\", \"source_ip\" or \"four_tuple\"",
            ]
        );
    }

    #[test]
    fn hash_fallback_is_a_keyless_algorithm() {
        let fallback = |text: &str| {
            pool(&format!(
                "balance = \"hash\"\nhash_key = \"source_ip\"\nhash_fallback = \"{text}\"\n"
            ))
            .hash
            .map(|h| h.fallback)
        };
        assert_eq!(fallback("round_robin"), Some(Balance::RoundRobin));
        assert_eq!(fallback("least_conn"), Some(Balance::LeastConn));
        assert_eq!(fallback("random_two"), Some(Balance::RandomTwo));
        assert_eq!(
            error("balance = \"hash\"\nhash_key = \"source_ip\"\nhash_fallback = \"hash\"\n"),
            "t.toml:12:17: pools.main.hash_fallback: \"hash\" cannot be the fallback: the fallback places requests that have no key to hash; expected one of \"round_robin\", \"least_conn\", \"random_two\""
        );
        assert_eq!(
            error("balance = \"hash\"\nhash_key = \"source_ip\"\nhash_fallback = \"leastconn\"\n"),
            "t.toml:12:17: pools.main.hash_fallback: unknown value \"leastconn\"; expected one of \"round_robin\", \"least_conn\", \"random_two\" (did you mean \"least_conn\"?)"
        );
    }

    #[test]
    fn hash_balance_factor_is_zero_or_above_one() {
        let factor = |text: &str| -> Result<Option<f64>, String> {
            let lines = format!(
                "balance = \"hash\"\nhash_key = \"source_ip\"\nhash_balance_factor = {text}\n"
            );
            match parse(&file(&lines), "t.toml") {
                Ok(c) => Ok(c.pools[0].hash.as_ref().and_then(|h| h.balance_factor)),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(factor("1.25"), Ok(Some(1.25)));
        assert_eq!(factor("2"), Ok(Some(2.0)));
        assert_eq!(factor("1.000_1"), Ok(Some(1.0001)));
        assert_eq!(factor("100"), Ok(Some(100.0)));
        assert_eq!(factor("0"), Ok(None), "0 turns bounded loads off");
        assert_eq!(factor("0.0"), Ok(None));
        assert_eq!(
            factor("1.0"),
            Err("t.toml:12:23: pools.main.hash_balance_factor: 1 is out of range; expected 0 (unbounded) or a factor greater than 1 and at most 100, such as 1.25 (no backend above 1.25 times the mean load)".into())
        );
        for bad in ["1", "0.5", "-1.5", "100.5", "1e9"] {
            assert!(
                factor(bad).is_err_and(|e| e.contains("out of range")),
                "{bad}"
            );
        }
        for bad in ["nan", "inf", "-inf"] {
            assert!(
                factor(bad).is_err_and(|e| e.contains("is not a usable number")),
                "{bad}"
            );
        }
        assert_eq!(
            factor("\"1.5\""),
            Err("t.toml:12:23: pools.main.hash_balance_factor: expected a number, found string \"1.5\"".into())
        );
    }

    #[test]
    fn sticky_cookie_rules() {
        let cookie = |fields: &str| format!("sticky_cookie = {{ {fields} }}\n");
        assert_eq!(
            error(&cookie("ttl = \"1h\"")),
            "t.toml:10:17: pools.main.sticky_cookie.name: required key is missing; expected a cookie name such as \"sluice_backend\""
        );
        assert_eq!(
            error(&cookie("name = \"a b\"")),
            "t.toml:10:26: pools.main.sticky_cookie.name: invalid cookie name \"a b\": the character ' ' is not allowed in a cookie name (RFC 6265 token: letters, digits and !#$%&'*+-.^_`|~)"
        );
        assert_eq!(
            error(&cookie("name = \"\"")),
            "t.toml:10:26: pools.main.sticky_cookie.name: a cookie name cannot be empty"
        );
        assert_eq!(
            error(&cookie("name = \"__Host-srv\"")),
            "t.toml:10:26: pools.main.sticky_cookie.name: a cookie named \"__Host-…\" must be Secure, or browsers drop it; set secure = true or choose another name"
        );
        assert_eq!(
            error(&cookie("name = \"__Secure-srv\"")),
            "t.toml:10:26: pools.main.sticky_cookie.name: a cookie named \"__Secure-…\" must be Secure, or browsers drop it; set secure = true or choose another name"
        );
        assert_eq!(
            error(&cookie(
                "name = \"__Host-srv\", secure = true, path = \"/chat\""
            )),
            "t.toml:10:26: pools.main.sticky_cookie.name: a cookie named \"__Host-…\" must have path = \"/\", or browsers drop it"
        );
        assert!(
            pool(&cookie("name = \"__Host-srv\", secure = true"))
                .sticky_cookie
                .is_some()
        );
        assert_eq!(
            error(&cookie("name = \"s\", same_site = \"none\"")),
            "t.toml:10:43: pools.main.sticky_cookie.same_site: \"none\" requires secure = true: browsers drop SameSite=None cookies that are not Secure"
        );
        assert_eq!(
            error(&cookie("name = \"s\", same_site = \"Lax\"")),
            "t.toml:10:43: pools.main.sticky_cookie.same_site: unknown value \"Lax\"; expected one of \"strict\", \"lax\", \"none\" (did you mean \"lax\"?)"
        );
        assert_eq!(
            error(&cookie("name = \"s\", ttl = \"0s\"")),
            "t.toml:10:37: pools.main.sticky_cookie.ttl: must be greater than zero; leave ttl out for a session cookie"
        );
        assert_eq!(
            error(&cookie("name = \"s\", ttl = \"1500ms\"")),
            "t.toml:10:37: pools.main.sticky_cookie.ttl: must be a whole number of seconds (Max-Age counts seconds), such as \"1s\""
        );
        assert_eq!(
            error(&cookie("name = \"s\", path = \"chat\"")),
            "t.toml:10:38: pools.main.sticky_cookie.path: invalid cookie path \"chat\": it must start with '/', as in \"/\" or \"/chat\""
        );
        assert!(error(&cookie("name = \"s\", path = \"/a;b\"")).contains("the character ';'"));
        assert_eq!(
            error(&cookie("name = \"s\", secret = \"short\"")),
            "t.toml:10:40: pools.main.sticky_cookie.secret: too short to keep anything secret; expected at least 16 characters, such as the output of `openssl rand -hex 16`"
        );
        assert_eq!(
            error(&cookie("name = \"s\", secure = \"yes\"")),
            "t.toml:10:40: pools.main.sticky_cookie.secure: expected true or false, found string \"yes\""
        );
        assert_eq!(
            error(&cookie("name = \"s\", domain = \"example.com\"")),
            "t.toml:10:31: pools.main.sticky_cookie.domain: unknown key; expected one of \"name\", \"ttl\", \"secure\", \"http_only\", \"same_site\", \"path\", \"secret\""
        );
        assert_eq!(
            error("sticky_cookie = \"srv\"\n"),
            "t.toml:10:17: pools.main.sticky_cookie: expected a table, found string \"srv\""
        );
        // A table of its own works as well as an inline one.
        let text = file("").replace(
            "backends = [\"127.0.0.1:9001\"]\n",
            "backends = [\"127.0.0.1:9001\"]\n\n[pools.main.sticky_cookie]\nname = \"srv\"\nttl = \"30d\"\n",
        );
        let config = parse(&text, "t.toml").expect("valid");
        assert_eq!(
            config.pools[0].sticky_cookie.as_ref().and_then(|c| c.ttl),
            Some(Duration::from_secs(30 * 86_400))
        );
    }

    #[test]
    fn the_sticky_cookie_is_not_a_hash_key() {
        assert_eq!(
            error(
                "balance = \"hash\"\nhash_key = \"cookie:srv\"\nsticky_cookie = { name = \"srv\" }\n"
            ),
            "t.toml:11:12: pools.main.hash_key: the cookie \"srv\" is this pool's sticky_cookie, which already sends a client back to its backend; hash another key, or remove hash_key and use another balance"
        );
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let p = pool("sticky_cookie = { name = \"s\", secret = \"hunter2hunter2hunter2\" }\n");
        let debug = format!("{p:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("Secret(..)"), "{debug}");
        assert_eq!(
            p.sticky_cookie
                .and_then(|c| c.secret)
                .map(|s| s.expose().to_owned()),
            Some("hunter2hunter2hunter2".to_owned())
        );
    }

    #[test]
    fn summary_shows_hashing_and_the_cookie() {
        let text = file(
            "balance = \"hash\"\nhash_key = \"cookie:room\"\nsticky_cookie = { name = \"srv\" }\n",
        );
        let summary = parse(&text, "t.toml").expect("valid").summary();
        assert!(
            summary.contains(
                "  main  hash cookie:room (fallback least_conn, factor 1.5)  1 backend  connect_attempts 3  sticky_cookie srv\n"
            ),
            "{summary}"
        );
        let text = file("balance = \"hash\"\nhash_key = \"source_ip\"\nhash_balance_factor = 0\n");
        let summary = parse(&text, "t.toml").expect("valid").summary();
        assert!(
            summary.contains("  main  hash source_ip (fallback least_conn, unbounded)  1 backend"),
            "{summary}"
        );
    }

    /// `config/sluice.toml` shows the balancing keys commented out (the demo pools keep their
    /// plain algorithms); uncommented, they must parse into what their comments say.
    #[test]
    fn the_example_files_commented_balancing_keys_parse() {
        let keys = [
            "# balance = \"hash\"",
            "# hash_key = ",
            "# hash_fallback = ",
            "# hash_balance_factor = ",
            "# sticky_cookie = ",
        ];
        let config = example_uncommented(&keys, &["balance = \"round_robin\""]);
        let echo = config.pool("echo").expect("pool echo");
        assert_eq!(echo.balance, Balance::Hash);
        assert_eq!(
            echo.hash,
            Some(HashPolicy {
                key: HashKey::Cookie("session".into()),
                fallback: Balance::LeastConn,
                balance_factor: Some(1.5),
            })
        );
        assert_eq!(
            echo.sticky_cookie,
            Some(StickyCookie {
                name: "sluice_backend".into(),
                ttl: Some(Duration::from_secs(86_400)),
                secure: false,
                http_only: true,
                same_site: Some(SameSite::Lax),
                path: "/".into(),
                secret: None,
            })
        );
    }
}
