//! Small grammar helpers shared by request and response parsing (RFC 9110 §5.6).

/// `tchar` (RFC 9110 §5.6.2): the characters of a token, such as a field name or a method.
pub(crate) fn is_tchar(byte: u8) -> bool {
    TCHAR[usize::from(byte)]
}

/// [`is_tchar`] for every byte: one load per byte of a field name instead of a range check and
/// a match.
static TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0usize;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        byte += 1;
    }
    table
};

/// A byte allowed in a field value (RFC 9110 §5.5): HTAB, SP, VCHAR, obs-text.
pub(crate) fn is_field_byte(byte: u8) -> bool {
    byte == b'\t' || (b' '..=b'~').contains(&byte) || byte >= 0x80
}

/// Strips optional whitespace (SP, HTAB) from both ends.
pub(crate) fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// The elements of a comma-separated list value (RFC 9110 §5.6.1), trimmed, empty ones skipped.
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Whether any field named `name` lists `token` (both case-insensitive), across repeated fields.
pub(crate) fn has_token<'a, N: AsRef<[u8]>>(
    fields: impl Iterator<Item = (N, &'a [u8])>,
    name: &str,
    token: &str,
) -> bool {
    fields
        .filter(|(n, _)| n.as_ref().eq_ignore_ascii_case(name.as_bytes()))
        .any(|(_, value)| list_elements(value).any(|e| e.eq_ignore_ascii_case(token.as_bytes())))
}

/// A `Content-Length` value: one or more digits, nothing else (no sign, no list, no spaces
/// inside), fitting a `u64`.
pub(crate) fn parse_content_length(value: &[u8]) -> Option<u64> {
    let digits = trim_ows(value);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        acc.checked_mul(10)?.checked_add(digit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b" 42 "), Some(42));
        assert_eq!(
            parse_content_length(b"18446744073709551615"),
            Some(u64::MAX)
        );
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1,1",
            b"1 1",
            b"0x10",
            b"18446744073709551616",
            b"1e3",
        ] {
            assert_eq!(parse_content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn token_lists_across_repeats() {
        let fields = [
            ("Connection", &b"keep-alive"[..]),
            ("connection", b" , Upgrade ,"),
        ];
        assert!(has_token(fields.iter().copied(), "CONNECTION", "upgrade"));
        assert!(!has_token(fields.iter().copied(), "connection", "close"));
        let partial = [("Upgrade", &b"websocketx, xwebsocket, websocket/13"[..])];
        assert!(!has_token(partial.iter().copied(), "upgrade", "websocket"));
    }

    #[test]
    fn trims_only_ows() {
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b"\x0ba"), b"\x0ba");
    }
}
