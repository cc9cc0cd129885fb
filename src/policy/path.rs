//! Path normalisation. Routes are matched on exactly the path that is forwarded, so the two can
//! never disagree: percent-encoded unreserved characters are decoded, `//` collapsed, `.` and
//! `..` segments resolved. Anything whose meaning depends on who decodes it — an encoded `/`,
//! `\`, `.` or NUL, a `..` above the root, a malformed escape — is refused with 400 rather than
//! guessed at, because a guess that differs from the upstream's is a policy bypass. So are, unless
//! `[paths] allow` names them, the forms common upstream servers read differently
//! ([`PathRules`]): `;` parameters, encoded `?`/`#`, double encoding, encoded controls, segments
//! ending in a dot or space, raw non-ASCII bytes and escapes that are not UTF-8.

use std::borrow::Cow;

use crate::config::PathRules;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path contains an encoded '/', '\\\\', '.' or NUL")]
    AmbiguousEncoding,
    #[error("the request path contains a malformed percent-escape")]
    BadEscape,
    #[error("the request path climbs above the root")]
    AboveRoot,
    #[error("the request path contains a backslash or control character")]
    BadCharacter,
    #[error("the request path must start with '/'")]
    NotAbsolute,
    #[error("the request path contains a ';' parameter (path form \"semicolons\" is not allowed)")]
    Semicolon,
    #[error(
        "the request path contains an encoded '?' or '#' (path form \"encoded_delimiters\" is not allowed)"
    )]
    EncodedDelimiter,
    #[error("the request path is encoded twice (path form \"double_encoding\" is not allowed)")]
    DoubleEncoding,
    #[error(
        "the request path contains an encoded control character (path form \"encoded_controls\" is not allowed)"
    )]
    EncodedControl,
    #[error("a path segment ends in a dot or a space (path form \"trailing_dots\" is not allowed)")]
    TrailingDot,
    #[error(
        "the request path contains raw non-ASCII bytes; percent-encode them (path form \"raw_non_ascii\" is not allowed)"
    )]
    NonAscii,
    #[error("the request path's escapes are not UTF-8 (path form \"invalid_utf8\" is not allowed)")]
    InvalidUtf8,
}

/// The normalised form of `path`, borrowed when it was already normal (the common case).
pub fn normalize<'p>(path: &'p str, rules: &PathRules) -> Result<Cow<'p, str>, PathError> {
    if !path.starts_with('/') {
        // `*` (OPTIONS) and absolute-form targets have been reduced to a path by hyper; anything
        // else is not something a route can match safely.
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    let mut needs_work = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' | 0..=0x1f | 0x7f => return Err(PathError::BadCharacter),
            b'%' => needs_work = true,
            b';' if !rules.semicolons => return Err(PathError::Semicolon),
            0x80.. if !rules.raw_non_ascii => return Err(PathError::NonAscii),
            b'/' if bytes.get(i + 1) == Some(&b'/') => needs_work = true,
            // A dot segment is resolved below; another segment ending in a dot is refused there.
            b'.' if bytes[i - 1] == b'/' || matches!(bytes.get(i + 1), None | Some(b'/')) => {
                needs_work = true
            }
            _ => {}
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path, rules)?;
    let resolved = resolve_segments(&decoded)?;
    if !rules.trailing_dots
        && resolved
            .split('/')
            .any(|seg| seg.ends_with('.') || seg.ends_with("%20") || seg.ends_with("%09"))
    {
        return Err(PathError::TrailingDot);
    }
    if resolved == path {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(resolved))
}

/// Decodes `%XX` for unreserved characters (RFC 3986 §2.3: ALPHA DIGIT - _ ~) and upper-cases
/// the hex of every escape that stays. `.` is unreserved but decoding it could create a dot
/// segment after routing decided; an encoded `.`, `/`, `\` or NUL is refused instead, and so
/// are the escapes `rules` does not allow.
fn decode_unreserved(path: &str, rules: &PathRules) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    // Bytes, not chars: a non-ASCII character is several bytes, copied through unchanged.
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let mut non_ascii_escape = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
            return Err(PathError::BadEscape);
        };
        let (Some(h), Some(l)) = (hex(h), hex(l)) else {
            return Err(PathError::BadEscape);
        };
        let v = (h << 4) | l;
        match v {
            b'/' | b'\\' | b'.' | 0 => return Err(PathError::AmbiguousEncoding),
            b';' if !rules.semicolons => return Err(PathError::Semicolon),
            b'?' | b'#' if !rules.encoded_delimiters => return Err(PathError::EncodedDelimiter),
            0x01..=0x1f | 0x7f if !rules.encoded_controls => {
                return Err(PathError::EncodedControl);
            }
            v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'_' | b'~') => out.push(v),
            v => {
                non_ascii_escape |= v >= 0x80;
                out.extend_from_slice(&[b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 0xf)]])
            }
        }
        i += 3;
    }
    // `%25` before two hex digits — sent so, or made so by decoding (`%25%32%65`) — is another
    // character to whoever decodes once more.
    if !rules.double_encoding
        && out
            .windows(5)
            .any(|w| w.starts_with(b"%25") && hex(w[3]).is_some() && hex(w[4]).is_some())
    {
        return Err(PathError::DoubleEncoding);
    }
    if non_ascii_escape && !rules.invalid_utf8 && !decodes_to_utf8(&out) {
        return Err(PathError::InvalidUtf8);
    }
    // Only ASCII escapes changed, so valid UTF-8 in is valid UTF-8 out.
    String::from_utf8(out).map_err(|_| PathError::BadCharacter)
}

/// Whether every escape in `s` (well-formed by now) decodes, with the raw bytes around them, to
/// UTF-8 — which rules out overlong forms such as `%C0%AE` and lone continuation bytes.
fn decodes_to_utf8(s: &[u8]) -> bool {
    let mut bytes = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match (
            s[i],
            s.get(i + 1).copied().and_then(hex),
            s.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                bytes.push((h << 4) | l);
                i += 3;
            }
            (b, _, _) => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&bytes).is_ok()
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Collapses empty segments and resolves `.` and `..`; a trailing slash is kept.
fn resolve_segments(path: &str) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(out)
}

/// A percent-encoded query component (`+` is a space), decoded; `None` if malformed or not
/// UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: PathRules = PathRules {
        semicolons: false,
        encoded_delimiters: false,
        double_encoding: false,
        encoded_controls: false,
        trailing_dots: false,
        raw_non_ascii: false,
        invalid_utf8: false,
        case_insensitive: false,
    };
    const LAX: PathRules = PathRules {
        semicolons: true,
        encoded_delimiters: true,
        double_encoding: true,
        encoded_controls: true,
        trailing_dots: true,
        raw_non_ascii: true,
        invalid_utf8: true,
        case_insensitive: false,
    };

    fn normalize(p: &str) -> Result<Cow<'_, str>, PathError> {
        super::normalize(p, &STRICT)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/v1/payments",
            "/v1/payments/pay_123/",
            "/a.b/c..d",
            "/v1/.well-known",
        ] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    /// Each form upstream servers read differently: refused by default, passed when allowed.
    #[test]
    fn upstream_divergent_forms() {
        use PathError::*;
        for (input, want) in [
            ("/public/..;/admin", Semicolon),
            ("/admin;x=1/x", Semicolon),
            ("/admin%3bx/x", Semicolon),
            ("/a/%c0%ae%c0%ae/admin", InvalidUtf8),
            ("/a/%e0%80%ae", InvalidUtf8),
            ("/a/%c0%af", InvalidUtf8),
            ("/a/%ff", InvalidUtf8),
            ("/a/%25%32%65%25%32%65/admin", DoubleEncoding),
            ("/a/%252e%252e/admin", DoubleEncoding),
            ("/admin%3F/x", EncodedDelimiter),
            ("/admin%23/x", EncodedDelimiter),
            ("/admin%09/x", EncodedControl),
            ("/admin%0d%0a", EncodedControl),
            ("/admin./x", TrailingDot),
            ("/admin../x", TrailingDot),
            ("/admin%20/x", TrailingDot),
            ("/admin.", TrailingDot),
            ("/adm\u{e9}n", NonAscii),
        ] {
            assert_eq!(normalize(input).unwrap_err(), want, "{input}");
            assert!(
                super::normalize(input, &LAX).is_ok(),
                "{input} with everything allowed"
            );
        }
        // Percent-encoded UTF-8 is the normal way to send non-ASCII: accepted.
        assert_eq!(normalize("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(normalize("/a%20b/c").unwrap(), "/a%20b/c");
        assert_eq!(normalize("/a%25/b").unwrap(), "/a%25/b");
    }

    #[test]
    fn normalises() {
        for (input, want) in [
            ("//v1///payments", "/v1/payments"),
            ("/v1/./payments", "/v1/payments"),
            ("/v1/admin/../payments", "/v1/payments"),
            ("/v1/payments/.", "/v1/payments/"),
            ("/v1/%70ayments", "/v1/payments"),
            ("/v1/%7Euser", "/v1/~user"),
            ("/v1/a%20b", "/v1/a%20b"),
            ("/v1/..", "/"),
        ] {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
        // Non-ASCII passes through untouched where allowed (found by fuzzing: it was once
        // re-encoded).
        assert_eq!(super::normalize("/./у/ä%41", &LAX).unwrap(), "/у/äA");
    }

    #[test]
    fn refuses_ambiguity() {
        for (input, want) in [
            ("/v1/admin%2Fusers", PathError::AmbiguousEncoding),
            ("/v1/admin%2fusers", PathError::AmbiguousEncoding),
            ("/v1/%2e%2e/admin", PathError::AmbiguousEncoding),
            ("/v1/%2E./admin", PathError::AmbiguousEncoding),
            ("/v1/a%00b", PathError::AmbiguousEncoding),
            ("/v1/a%5cb", PathError::AmbiguousEncoding),
            ("/v1/a\\b", PathError::BadCharacter),
            ("/v1/%zz", PathError::BadEscape),
            ("/v1/%4", PathError::BadEscape),
            ("/..", PathError::AboveRoot),
            ("/v1/../../etc", PathError::AboveRoot),
            ("v1/x", PathError::NotAbsolute),
        ] {
            assert_eq!(normalize(input).unwrap_err(), want, "{input}");
        }
    }
}
