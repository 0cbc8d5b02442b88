//! Choosing by server name: exact names first, then wildcards, then a default.

use std::collections::HashMap;

/// A server-name pattern: `chat.example.com` or `*.example.com`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamePattern {
    /// This name only (lowercase).
    Exact(String),
    /// Names ending in this suffix, stored with its leading dot (`.example.com`, lowercase).
    Wildcard(String),
}

impl NamePattern {
    /// `*.example.com` or `example.com`, lowercased; `None` for an empty name or a bare `*.`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim_end_matches('.').to_ascii_lowercase();
        match text.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 => {
                Some(NamePattern::Wildcard(suffix.to_owned()))
            }
            Some(_) => None,
            None if text.is_empty() => None,
            None => Some(NamePattern::Exact(text)),
        }
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamePattern::Exact(name) => f.write_str(name),
            NamePattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// How far a wildcard reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WildcardDepth {
    /// `*.example.com` matches `a.example.com` only, not `a.b.example.com` (certificates,
    /// RFC 6125 §6.4.3).
    OneLabel,
    /// `*.example.com` matches any name ending in `.example.com`; the longest suffix wins
    /// (routing, like a route's `host`).
    AnyDepth,
}

/// Values by server name: exact, then wildcard, then the default.
#[derive(Debug, Clone)]
pub struct SniMap<T> {
    exact: HashMap<String, T>,
    wildcard: HashMap<String, T>,
    default: Option<T>,
    depth: WildcardDepth,
}

impl<T> SniMap<T> {
    /// An empty map; the first entry of a pattern wins over later ones.
    pub fn new(depth: WildcardDepth) -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: None,
            depth,
        }
    }

    /// Adds `value` for `pattern` unless the pattern already has one.
    pub fn insert(&mut self, pattern: NamePattern, value: T) {
        match pattern {
            NamePattern::Exact(name) => self.exact.entry(name).or_insert(value),
            NamePattern::Wildcard(suffix) => self.wildcard.entry(suffix).or_insert(value),
        };
    }

    /// The value for names nothing else matches, and for clients that send no name.
    pub fn set_default(&mut self, value: Option<T>) {
        self.default = value;
    }

    /// The value for a server name (lowercase, as [`crate::client_hello::parse`] gives it).
    pub fn get(&self, name: Option<&str>) -> Option<&T> {
        let Some(name) = name else {
            return self.default.as_ref();
        };
        if let Some(value) = self.exact.get(name) {
            return Some(value);
        }
        // Suffixes from the longest: `a.b.example.com` tries `.b.example.com`, `.example.com`…
        let mut rest = name;
        while let Some(dot) = rest.find('.') {
            let suffix = rest.get(dot..).unwrap_or_default();
            if suffix.len() > 1
                && let Some(value) = self.wildcard.get(suffix)
            {
                return Some(value);
            }
            if self.depth == WildcardDepth::OneLabel {
                break;
            }
            rest = suffix.get(1..).unwrap_or_default();
        }
        self.default.as_ref()
    }

    /// Whether nothing at all was inserted (no name, no default).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.default.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(depth: WildcardDepth) -> SniMap<u8> {
        let mut m = SniMap::new(depth);
        m.insert(NamePattern::parse("a.example.com").unwrap(), 1);
        m.insert(NamePattern::parse("*.example.com").unwrap(), 2);
        m.insert(NamePattern::parse("*.deep.example.com").unwrap(), 3);
        m.set_default(Some(9));
        m
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let m = map(WildcardDepth::AnyDepth);
        assert_eq!(m.get(Some("a.example.com")), Some(&1));
        assert_eq!(m.get(Some("b.example.com")), Some(&2));
        assert_eq!(m.get(Some("x.deep.example.com")), Some(&3));
        assert_eq!(m.get(Some("x.y.example.com")), Some(&2));
        assert_eq!(m.get(Some("example.com")), Some(&9));
        assert_eq!(m.get(Some("other.org")), Some(&9));
        assert_eq!(m.get(None), Some(&9));
    }

    #[test]
    fn certificate_wildcards_cover_one_label() {
        let m = map(WildcardDepth::OneLabel);
        assert_eq!(m.get(Some("b.example.com")), Some(&2));
        assert_eq!(m.get(Some("x.y.example.com")), Some(&9));
    }

    #[test]
    fn patterns() {
        assert_eq!(NamePattern::parse("*."), None);
        assert_eq!(NamePattern::parse(""), None);
        assert_eq!(NamePattern::parse("*x.com"), None);
        assert_eq!(
            NamePattern::parse("*.Example.com.").unwrap().to_string(),
            "*.example.com"
        );
    }
}
