//! Reading the spanned TOML document: small typed readers that report a problem and carry on.
//!
//! `serde` derive with `deny_unknown_fields` would give typed structs for free, but it stops at
//! the first error. Here each reader returns `Option<T>`: `None` means "an error has been
//! reported, keep going", so one pass over the document finds every problem. The schema of each
//! table is its [`Keys`] list (unknown keys are reported, with a "did you mean" hint), and the
//! section readers in `file.rs` mirror the file's structure one function per table.

use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use crate::defaults;
use crate::error::{ConfigError, Positions};

/// A TOML value with its byte span in the text.
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Collects the errors of one file and knows where each byte offset is.
pub(crate) struct Reader<'s> {
    origin: &'s str,
    text: &'s str,
    positions: Positions<'s>,
    errors: Vec<ConfigError>,
}

impl<'s> Reader<'s> {
    pub(crate) fn new(origin: &'s str, text: &'s str) -> Self {
        Reader {
            origin,
            text,
            positions: Positions::new(text),
            errors: Vec::new(),
        }
    }

    /// Records an error at the start of `span`; `message` starts with the key's path.
    pub(crate) fn error(&mut self, span: Range<usize>, message: String) {
        let (line, column) = self.positions.of(span.start);
        self.errors.push(ConfigError {
            origin: self.origin.to_owned(),
            line,
            column,
            message,
        });
    }

    /// Records a problem with `item`: `"{path}: {problem}"` at the item's position.
    pub(crate) fn report(&mut self, item: &Item<'_, '_>, problem: impl Display) {
        self.error(item.span(), format!("{}: {problem}", item.path));
    }

    /// Records an error built elsewhere (from a [`crate::model::Location`]).
    pub(crate) fn push(&mut self, error: ConfigError) {
        self.errors.push(error);
    }

    /// Where `item` is written, to report problems found later with what it names.
    pub(crate) fn location(&self, item: &Item<'_, '_>) -> crate::model::Location {
        let (line, column) = self.positions.of(item.span().start);
        crate::model::Location {
            origin: self.origin.to_owned(),
            line,
            column,
            key: item.path.clone(),
        }
    }

    /// The 1-based line of a span's start, for "first defined at line N" notes.
    pub(crate) fn line(&self, span: &Range<usize>) -> usize {
        self.positions.of(span.start).0
    }

    /// Every error reported, in file order.
    pub(crate) fn into_errors(self) -> Vec<ConfigError> {
        let mut errors = self.errors;
        errors.sort_by_key(|e| (e.line, e.column));
        errors
    }

    /// The source text of a scalar, shortened for messages.
    fn snippet(&self, span: Range<usize>) -> String {
        let text = self.text.get(span).unwrap_or("");
        let mut out: String = text.chars().take(40).collect();
        if out.len() < text.len() {
            out.push('…');
        }
        out
    }
}

/// The keys a table accepts.
pub(crate) struct Keys {
    pub(crate) known: &'static [&'static str],
    /// Keys sluice will accept in a later release, with what to say when one is seen.
    pub(crate) later: &'static [(&'static str, &'static str)],
}

/// A value and the dotted path that names it in messages (`pools.chat.backends[1].weight`).
#[derive(Clone)]
pub(crate) struct Item<'a, 'i> {
    pub(crate) value: &'a Value<'i>,
    pub(crate) path: String,
}

impl<'a, 'i> Item<'a, 'i> {
    pub(crate) fn root(value: &'a Value<'i>) -> Self {
        Item {
            value,
            path: String::new(),
        }
    }

    pub(crate) fn span(&self) -> Range<usize> {
        self.value.span()
    }

    /// The path of a key of this table.
    pub(crate) fn key_path(&self, key: &str) -> String {
        let key = if !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            key.to_owned()
        } else {
            format!("{key:?}")
        };
        if self.path.is_empty() {
            key
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn child(&self, key: &str, value: &'a Value<'i>) -> Self {
        Item {
            value,
            path: self.key_path(key),
        }
    }

    /// `expected {expected}, found integer 5`.
    pub(crate) fn mismatch(&self, r: &mut Reader<'_>, expected: &str) {
        let found = match self.value.get_ref() {
            DeValue::Table(_) => "a table".to_owned(),
            DeValue::Array(_) => "an array".to_owned(),
            other => format!("{} {}", other.type_str(), r.snippet(self.span())),
        };
        r.report(self, format_args!("expected {expected}, found {found}"));
    }

    pub(crate) fn str(&self, r: &mut Reader<'_>) -> Option<&'a str> {
        let s = self.value.get_ref().as_str();
        if s.is_none() {
            self.mismatch(r, "a string");
        }
        s
    }

    /// `true` or `false`.
    pub(crate) fn bool(&self, r: &mut Reader<'_>) -> Option<bool> {
        match self.value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.mismatch(r, "true or false");
                None
            }
        }
    }

    /// A finite number, written as a float (`1.5`) or an integer (`2`).
    pub(crate) fn number(&self, r: &mut Reader<'_>) -> Option<f64> {
        let value = match self.value.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(n) => i64::from_str_radix(n.as_str(), n.radix())
                .ok()
                .and_then(|n| i32::try_from(n).ok())
                .map(f64::from),
            _ => {
                self.mismatch(r, "a number");
                return None;
            }
        };
        let value = value.filter(|v| v.is_finite());
        if value.is_none() {
            let text = r.snippet(self.span());
            r.report(self, format_args!("{text} is not a usable number"));
        }
        value
    }

    /// An integer within `range`.
    pub(crate) fn int<T>(&self, r: &mut Reader<'_>, range: RangeInclusive<T>) -> Option<T>
    where
        T: TryFrom<i64> + TryInto<i64> + PartialOrd + Copy + Display,
    {
        let DeValue::Integer(n) = self.value.get_ref() else {
            self.mismatch(r, "an integer");
            return None;
        };
        let (start, end) = (*range.start(), *range.end());
        let value = i64::from_str_radix(n.as_str(), n.radix())
            .ok()
            .and_then(|n| T::try_from(n).ok())
            .filter(|v| range.contains(v));
        if value.is_none() {
            let end = end.try_into().unwrap_or(i64::MAX);
            let expected = if end == i64::MAX {
                format!("at least {start}")
            } else {
                format!("{start} to {end}")
            };
            r.report(
                self,
                format_args!("{n} is out of range; expected {expected}"),
            );
        }
        value
    }

    /// A humane duration string (`"5s"`, `"250ms"`, `"1h 30m"`), at most
    /// [`defaults::MAX_DURATION`]. Zero is returned as such; callers decide what it means.
    pub(crate) fn duration(&self, r: &mut Reader<'_>) -> Option<Duration> {
        let text = match self.value.get_ref() {
            DeValue::String(s) => s,
            DeValue::Integer(n) => {
                r.report(
                    self,
                    format_args!(
                        "expected a duration string with a unit, found integer {n}; \
                         write \"{n}s\" for seconds or \"{n}ms\" for milliseconds"
                    ),
                );
                return None;
            }
            _ => {
                self.mismatch(r, "a duration string such as \"5s\"");
                return None;
            }
        };
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d > defaults::MAX_DURATION => {
                r.report(
                    self,
                    format_args!("duration \"{text}\" is too long; the longest accepted is 365d"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(humantime::DurationError::UnknownUnit { unit, value, .. }) if unit.is_empty() => {
                r.report(
                    self,
                    format_args!(
                        "invalid duration \"{text}\": a unit is needed; \
                         write \"{value}s\" for seconds or \"{value}ms\" for milliseconds"
                    ),
                );
                None
            }
            Err(humantime::DurationError::UnknownUnit { unit, .. }) => {
                r.report(
                    self,
                    format_args!(
                        "invalid duration \"{text}\": unknown unit \"{unit}\"; \
                         expected ms, s, m, h or d, as in \"250ms\", \"5s\" or \"1h 30m\""
                    ),
                );
                None
            }
            Err(_) => {
                r.report(
                    self,
                    format_args!(
                        "invalid duration \"{text}\"; \
                         expected a number with a unit, such as \"250ms\", \"5s\" or \"1h 30m\""
                    ),
                );
                None
            }
        }
    }

    /// An `IP:port` socket address (`"127.0.0.1:8080"`, `"[::1]:8080"`).
    pub(crate) fn socket_addr(&self, r: &mut Reader<'_>) -> Option<SocketAddr> {
        let text = self.str(r)?;
        match socket_addr(text) {
            Ok(addr) => Some(addr),
            Err(problem) => {
                r.report(self, format_args!("invalid address \"{text}\": {problem}"));
                None
            }
        }
    }

    /// One of a fixed set of strings. `later` lists values a later release will accept, with
    /// what to say when one is seen.
    pub(crate) fn choice<T: Copy>(
        &self,
        r: &mut Reader<'_>,
        choices: &[(&str, T)],
        later: &[(&str, &str)],
    ) -> Option<T> {
        let text = self.str(r)?;
        if let Some((_, value)) = choices.iter().find(|(name, _)| *name == text) {
            return Some(*value);
        }
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        let expected = quoted_list(&names);
        match later.iter().find(|(name, _)| *name == text) {
            Some((_, note)) => r.report(
                self,
                format_args!(
                    "\"{text}\" is not supported yet ({note}); expected one of {expected}"
                ),
            ),
            None => {
                let hint = did_you_mean(text, &names)
                    .map(|m| format!(" (did you mean \"{m}\"?)"))
                    .unwrap_or_default();
                r.report(
                    self,
                    format_args!("unknown value \"{text}\"; expected one of {expected}{hint}"),
                );
            }
        }
        None
    }

    /// The elements of an array, each with its path (`routes[0]`).
    pub(crate) fn array(&self, r: &mut Reader<'_>, expected: &str) -> Option<Vec<Item<'a, 'i>>> {
        let Some(array) = self.value.get_ref().as_array() else {
            self.mismatch(r, expected);
            return None;
        };
        Some(
            array
                .iter()
                .enumerate()
                .map(|(i, value)| Item {
                    value,
                    path: format!("{}[{i}]", self.path),
                })
                .collect(),
        )
    }

    /// The entries of a table whose keys are names (`[pools.NAME]`), in file order whatever
    /// order the map keeps.
    pub(crate) fn entries(
        &self,
        r: &mut Reader<'_>,
    ) -> Option<Vec<(&'a Spanned<DeString<'i>>, Item<'a, 'i>)>> {
        let Some(map) = self.value.get_ref().as_table() else {
            self.mismatch(r, "a table");
            return None;
        };
        let mut entries: Vec<_> = map
            .iter()
            .map(|(key, value)| (key, self.child(key.get_ref(), value)))
            .collect();
        entries.sort_by_key(|(key, _)| key.span().start);
        Some(entries)
    }

    /// This value as a table accepting `keys`; every other key is reported.
    pub(crate) fn table(self, r: &mut Reader<'_>, keys: &Keys) -> Option<Table<'a, 'i>> {
        let Some(map) = self.value.get_ref().as_table() else {
            self.mismatch(r, "a table");
            return None;
        };
        for (key, _) in map.iter() {
            let name = key.get_ref().as_ref();
            if keys.known.contains(&name) {
                continue;
            }
            let path = self.key_path(name);
            let message = if let Some((_, note)) = keys.later.iter().find(|(k, _)| *k == name) {
                format!("{path}: not supported yet ({note})")
            } else if let Some(m) = did_you_mean(name, keys.known) {
                format!("{path}: unknown key; did you mean \"{m}\"?")
            } else {
                format!(
                    "{path}: unknown key; expected one of {}",
                    quoted_list(keys.known)
                )
            };
            r.error(key.span(), message);
        }
        Some(Table { item: self, map })
    }
}

/// A table whose unknown keys have been reported.
pub(crate) struct Table<'a, 'i> {
    pub(crate) item: Item<'a, 'i>,
    map: &'a DeTable<'i>,
}

impl<'a, 'i> Table<'a, 'i> {
    /// An optional key.
    pub(crate) fn get(&self, key: &str) -> Option<Item<'a, 'i>> {
        self.map.get(key).map(|value| self.item.child(key, value))
    }

    /// An optional key converted by `read`, or `default` when the key is absent.
    pub(crate) fn optional<T>(
        &self,
        key: &str,
        default: T,
        read: impl FnOnce(Item<'a, 'i>) -> Option<T>,
    ) -> Option<T> {
        match self.get(key) {
            Some(item) => read(item),
            None => Some(default),
        }
    }

    /// A required key; when absent, reports it at the table (its `[header]` or `{`).
    pub(crate) fn require(
        &self,
        r: &mut Reader<'_>,
        key: &str,
        expected: &str,
    ) -> Option<Item<'a, 'i>> {
        let item = self.get(key);
        if item.is_none() {
            r.error(
                self.item.span(),
                format!(
                    "{}: required key is missing; expected {expected}",
                    self.item.key_path(key)
                ),
            );
        }
        item
    }
}

/// Parses `IP:port`, explaining what is wrong otherwise.
/// A checked conversion: the value, or its problem reported at `item`.
pub(crate) fn checked<T>(
    r: &mut Reader<'_>,
    item: &Item<'_, '_>,
    result: Result<T, String>,
) -> Option<T> {
    result.map_err(|problem| r.report(item, problem)).ok()
}

pub(crate) fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    const EXPECTED: &str = "expected IP:port, such as \"127.0.0.1:8080\" or \"[::1]:8080\"";
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Err(match ip {
            IpAddr::V4(ip) => {
                format!("the port is missing; expected IP:port, such as \"{ip}:8080\"")
            }
            IpAddr::V6(ip) => {
                format!("the port is missing; expected [IPv6]:port, such as \"[{ip}]:8080\"")
            }
        });
    }
    let looks_like_dns =
        |host: &str| host.chars().any(|c| c.is_ascii_alphabetic()) && is_dns_like(host);
    match text.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_err() && !host.contains(':') => Err(format!(
            "invalid port \"{port}\"; expected a number from 0 to 65535"
        )),
        Some((host, _)) if looks_like_dns(host) => {
            Err("DNS names are not supported yet; use IP:port, such as \"10.0.0.1:9000\"".into())
        }
        None if looks_like_dns(text) => {
            Err("DNS names are not supported yet; use IP:port, such as \"10.0.0.1:9000\"".into())
        }
        _ => Err(EXPECTED.into()),
    }
}

fn is_dns_like(host: &str) -> bool {
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
}

/// `"a", "b", "c"`.
pub(crate) fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The candidate a near miss was probably meant to be: a small edit distance (ignoring case),
/// or one being a prefix of the other (`least_connections` → `least_conn`).
pub(crate) fn did_you_mean<'c>(input: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let input = input.to_ascii_lowercase();
    let best = candidates
        .iter()
        .map(|c| (edit_distance(&input, &c.to_ascii_lowercase()), *c))
        .min_by_key(|(d, _)| *d);
    if let Some((d, c)) = best {
        if d <= (c.chars().count() / 3).max(1) {
            return Some(c);
        }
    }
    candidates.iter().copied().find(|c| {
        let c = c.to_ascii_lowercase();
        c.len().min(input.len()) >= 4 && (c.starts_with(&input) || input.starts_with(&c))
    })
}

/// Edit distance counting insertions, deletions, substitutions and swaps of two neighbouring
/// characters (optimal string alignment), in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between the first i characters of a and the first j of b.
    let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_parse_or_say_why_not() {
        assert_eq!(
            socket_addr("127.0.0.1:8080"),
            Ok(([127, 0, 0, 1], 8080).into())
        );
        assert_eq!(
            socket_addr("[::1]:9000").map(|a| a.port()),
            Ok(9000),
            "IPv6 in brackets"
        );
        let dns = "DNS names are not supported yet; use IP:port, such as \"10.0.0.1:9000\"";
        assert_eq!(socket_addr("backend-1.internal:9000"), Err(dns.into()));
        assert_eq!(socket_addr("localhost:80"), Err(dns.into()));
        assert_eq!(socket_addr("localhost"), Err(dns.into()));
        assert_eq!(
            socket_addr("127.0.0.1"),
            Err("the port is missing; expected IP:port, such as \"127.0.0.1:8080\"".into())
        );
        assert_eq!(
            socket_addr("fe80::1"),
            Err("the port is missing; expected [IPv6]:port, such as \"[fe80::1]:8080\"".into())
        );
        assert_eq!(
            socket_addr("127.0.0.1:http"),
            Err("invalid port \"http\"; expected a number from 0 to 65535".into())
        );
        assert_eq!(
            socket_addr("127.0.0.1:70000"),
            Err("invalid port \"70000\"; expected a number from 0 to 65535".into())
        );
        assert!(socket_addr("1.2.3:80").is_err());
        assert!(socket_addr("").is_err());
        assert!(socket_addr("[::1]").is_err());
    }

    #[test]
    fn near_misses_get_a_hint() {
        let keys = ["listen", "name", "mode", "trusted_proxies"];
        assert_eq!(did_you_mean("lisen", &keys), Some("listen"));
        assert_eq!(did_you_mean("Listen", &keys), Some("listen"));
        assert_eq!(did_you_mean("nmae", &keys), Some("name"));
        assert_eq!(
            did_you_mean("trusted_proxy", &keys),
            Some("trusted_proxies")
        );
        assert_eq!(did_you_mean("address", &keys), None);
        assert_eq!(did_you_mean("x", &keys), None);
        let balances = ["round_robin", "least_conn"];
        assert_eq!(did_you_mean("roundrobin", &balances), Some("round_robin"));
        assert_eq!(
            did_you_mean("least_connections", &balances),
            Some("least_conn")
        );
        assert_eq!(did_you_mean("rand", &balances), None);
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("nmae", "name"), 1);
        assert_eq!(edit_distance("ca", "abc"), 3);
    }
}
