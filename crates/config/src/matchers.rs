//! Checks and conversions of single values with rules of their own: names, host patterns,
//! paths, header names and values, trusted-proxy networks. Each returns the typed value or a
//! sentence saying what is wrong and what is expected.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{HostMatch, PathMatch};

/// Listener and pool names end up in logs and metric labels: `[A-Za-z0-9_-]+`, at most 64.
pub(crate) fn name(text: &str) -> Result<String, String> {
    const RULE: &str = "names use letters, digits, '_' and '-' only, at most 64 characters";
    if text.is_empty() {
        return Err(format!("a name cannot be empty; {RULE}"));
    }
    if text.len() > 64 {
        return Err(format!("name is too long; {RULE}"));
    }
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(c) => Err(format!(
            "invalid character {c:?} in name \"{text}\"; {RULE}"
        )),
        None => Ok(text.to_owned()),
    }
}

/// `chat.example.com` (exact) or `*.example.com` (wildcard as the whole first label), stored
/// lowercase; the wildcard as its suffix with the leading dot. Ports, trailing dots and other
/// wildcard forms are refused with a hint.
pub(crate) fn host(text: &str) -> Result<HostMatch, String> {
    if text.is_empty() {
        return Err("a host cannot be empty; leave `host` out to match every host".into());
    }
    if let Some(suffix) = text.strip_prefix("*.") {
        if suffix.contains('*') {
            return Err(wildcard_hint(text));
        }
        return dns_name(suffix, text).map(|s| HostMatch::Wildcard(format!(".{s}")));
    }
    if text == "*" {
        return Err(
            "\"*\" alone is not a host pattern; leave `host` out to match every host".into(),
        );
    }
    if text.contains('*') {
        return Err(wildcard_hint(text));
    }
    dns_name(text, text).map(HostMatch::Exact)
}

fn wildcard_hint(text: &str) -> String {
    format!(
        "invalid host \"{text}\": a wildcard may only be the whole first label, as in \"*.example.com\""
    )
}

/// Checks a DNS name (or IPv4 literal) and lowercases it. `whole` is what the user wrote.
pub(crate) fn dns_name(name: &str, whole: &str) -> Result<String, String> {
    if let Some((host, port)) = name.rsplit_once(':') {
        if !host.contains(':') && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "invalid host \"{whole}\": a host does not include a port (requests are matched \
                 whatever their port); write \"{}\"",
                whole.trim_end_matches(port).trim_end_matches(':')
            ));
        }
    }
    if name.ends_with('.') {
        return Err(format!(
            "invalid host \"{whole}\": remove the trailing dot; write \"{}\"",
            whole.trim_end_matches('.')
        ));
    }
    if !name.is_ascii() {
        return Err(format!(
            "invalid host \"{whole}\": non-ASCII names must be written in their punycode form \
             (\"xn--…\")"
        ));
    }
    if name.len() > 253 {
        return Err(format!(
            "invalid host \"{whole}\": longer than 253 characters"
        ));
    }
    for label in name.split('.') {
        let problem = if label.is_empty() {
            Some("an empty label (two dots in a row, or a leading dot)".to_owned())
        } else if label.len() > 63 {
            Some(format!(
                "the label \"{label}\" is longer than 63 characters"
            ))
        } else if label.starts_with('-') || label.ends_with('-') {
            Some(format!("the label \"{label}\" starts or ends with '-'"))
        } else {
            label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
                .map(|c| format!("the character {c:?}"))
        };
        if let Some(problem) = problem {
            return Err(format!(
                "invalid host \"{whole}\": {problem}; expected a name such as \"chat.example.com\" \
                 or \"*.example.com\" (letters, digits, '-' and '_' between dots)"
            ));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// A `path_prefix` or `path_exact`: starts with `/`, visible ASCII only, no `?` or `#` (the
/// query is not part of what routes match).
pub(crate) fn path(text: &str, exact: bool) -> Result<PathMatch, String> {
    if !text.starts_with('/') {
        return Err(format!(
            "invalid path \"{text}\": a path must start with '/', as in \"/chat\""
        ));
    }
    if let Some(c) = text.chars().find(|c| *c == '?' || *c == '#') {
        return Err(format!(
            "invalid path \"{text}\": {c:?} is not allowed; routes match the path before the query"
        ));
    }
    if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "invalid path \"{text}\": the character {c:?} never appears in a request path; \
             percent-encode it as requests do"
        ));
    }
    Ok(if exact {
        PathMatch::Exact(text.to_owned())
    } else {
        PathMatch::Prefix(text.to_owned())
    })
}

/// A header field name (an RFC 9110 §5.1 token), lowercased.
pub(crate) fn header_name(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("a header name cannot be empty".into());
    }
    match text.chars().find(|c| !is_tchar(*c)) {
        Some(c) => Err(format!(
            "invalid header name \"{text}\": the character {c:?} is not allowed in a header name \
             (RFC 9110 token)"
        )),
        None => Ok(text.to_ascii_lowercase()),
    }
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A header value to compare with: no control characters (tab aside), and no surrounding
/// whitespace, since request values are compared after trimming theirs.
pub(crate) fn header_value(text: &str) -> Result<String, String> {
    if text.trim_matches([' ', '\t']) != text {
        return Err(format!(
            "header value \"{text}\" has leading or trailing whitespace and would never match; \
             write \"{}\"",
            text.trim_matches([' ', '\t'])
        ));
    }
    if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(format!(
            "header value contains the control character {c:?}, which requests cannot carry"
        ));
    }
    Ok(text.to_owned())
}

/// A trusted proxy: a CIDR (`10.0.0.0/8`) or a bare IP (`/32` or `/128`). A CIDR with host bits
/// set (`10.0.0.1/8`) is refused, since it is unclear whether the network or the host was meant.
pub(crate) fn network(text: &str) -> Result<IpNet, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    match text.parse::<IpNet>() {
        Ok(net) if net.trunc() != net => Err(format!(
            "\"{text}\" has bits set after the prefix length; write the network \"{}\" \
             or the single address \"{}\"",
            net.trunc(),
            net.addr()
        )),
        Ok(net) => Ok(net),
        Err(_) => Err(format!(
            "invalid network \"{text}\"; expected an IP address or a CIDR, such as \
             \"192.168.1.7\", \"10.0.0.0/8\" or \"fd00::/8\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name("chat-v2_eu"), Ok("chat-v2_eu".into()));
        assert!(name("").is_err());
        assert!(name("has space").is_err());
        assert!(name("dotted.name").is_err());
        assert!(name(&"x".repeat(65)).is_err());
        assert_eq!(name(&"x".repeat(64)), Ok("x".repeat(64)));
    }

    #[test]
    fn host_forms() {
        assert_eq!(
            host("Chat.Example.COM"),
            Ok(HostMatch::Exact("chat.example.com".into()))
        );
        assert_eq!(
            host("*.Example.com"),
            Ok(HostMatch::Wildcard(".example.com".into()))
        );
        assert_eq!(host("*.com"), Ok(HostMatch::Wildcard(".com".into())));
        assert_eq!(host("localhost"), Ok(HostMatch::Exact("localhost".into())));
        assert_eq!(host("10.0.0.1"), Ok(HostMatch::Exact("10.0.0.1".into())));
        assert_eq!(
            host("my_service"),
            Ok(HostMatch::Exact("my_service".into()))
        );

        for bad in [
            "",
            "*",
            "*example.com",
            "chat.*.example.com",
            "*.*.example.com",
            "chat*.example.com",
            "example.*",
            "chat.example.com.",
            "chat..example.com",
            ".example.com",
            "-chat.example.com",
            "chat.example.com:8080",
            "*.example.com:443",
            "chat example.com",
            "chat/example",
            "[::1]",
            "bücher.example",
        ] {
            assert!(host(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            host("chat.example.com:8080"),
            Err(
                "invalid host \"chat.example.com:8080\": a host does not include a port \
                 (requests are matched whatever their port); write \"chat.example.com\""
                    .into()
            )
        );
        assert_eq!(
            host("chat.*.example.com"),
            Err(
                "invalid host \"chat.*.example.com\": a wildcard may only be the whole first \
                 label, as in \"*.example.com\""
                    .into()
            )
        );
        assert!(host(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(host(&format!("{}.com", "a".repeat(63))).is_ok());
    }

    #[test]
    fn paths() {
        assert_eq!(path("/chat", false), Ok(PathMatch::Prefix("/chat".into())));
        assert_eq!(path("/", true), Ok(PathMatch::Exact("/".into())));
        assert_eq!(
            path("/a%20b/~x", false),
            Ok(PathMatch::Prefix("/a%20b/~x".into()))
        );
        for bad in ["", "chat", "/chat?x=1", "/a#b", "/a b", "/ü", "/a\tb"] {
            assert!(path(bad, false).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn header_names_and_values() {
        assert_eq!(header_name("X-Tenant"), Ok("x-tenant".into()));
        assert_eq!(header_name("x_b!#~"), Ok("x_b!#~".into()));
        assert!(header_name("").is_err());
        assert!(header_name("X Tenant").is_err());
        assert!(header_name("X-Tenant:").is_err());
        assert!(header_name("Ünicode").is_err());

        assert_eq!(header_value("blue"), Ok("blue".into()));
        assert_eq!(header_value("a b\tc"), Ok("a b\tc".into()));
        assert_eq!(header_value(""), Ok(String::new()));
        assert!(header_value(" blue").is_err());
        assert!(header_value("blue\t").is_err());
        assert!(header_value("a\r\nb").is_err());
    }

    #[test]
    fn networks() {
        let net = |s: &str| s.parse::<IpNet>().expect("test network");
        assert_eq!(network("10.0.0.0/8"), Ok(net("10.0.0.0/8")));
        assert_eq!(network("192.168.1.7"), Ok(net("192.168.1.7/32")));
        assert_eq!(network("::1"), Ok(net("::1/128")));
        assert_eq!(network("fd00::/8"), Ok(net("fd00::/8")));
        assert_eq!(network("0.0.0.0/0"), Ok(net("0.0.0.0/0")));
        assert_eq!(
            network("10.0.0.1/8"),
            Err(
                "\"10.0.0.1/8\" has bits set after the prefix length; write the network \
                 \"10.0.0.0/8\" or the single address \"10.0.0.1\""
                    .into()
            )
        );
        for bad in ["", "10.0.0/8", "10.0.0.0/33", "example.com", "10.0.0.0/"] {
            assert!(network(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
