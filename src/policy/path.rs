//! Path normalisation. Routes are matched on exactly the path that is forwarded, so the two can
//! never disagree: percent-encoded unreserved characters are decoded, `//` collapsed, `.` and
//! `..` segments resolved. Anything whose meaning depends on who decodes it — an encoded `/`,
//! `\`, `.` or NUL, a `..` above the root, a malformed escape — is refused with 400 rather than
//! guessed at, because a guess that differs from the upstream's is a policy bypass.

use std::borrow::Cow;

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
}

/// The normalised form of `path`, borrowed when it was already normal (the common case).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
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
            b'/' if bytes.get(i + 1) == Some(&b'/') => needs_work = true,
            b'.' if bytes[i - 1] == b'/' => needs_work = true,
            _ => {}
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    resolve_segments(&decoded).map(Cow::Owned)
}

/// Decodes `%XX` for unreserved characters (RFC 3986 §2.3: ALPHA DIGIT - _ ~) and upper-cases
/// the hex of every escape that stays. `.` is unreserved but decoding it could create a dot
/// segment after routing decided; an encoded `.`, `/`, `\` or NUL is refused instead.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    // Bytes, not chars: a non-ASCII character is several bytes, copied through unchanged.
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
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
            v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'_' | b'~') => out.push(v),
            v => {
                out.extend_from_slice(&[b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 0xf)]])
            }
        }
        i += 3;
    }
    // Only ASCII escapes changed, so valid UTF-8 in is valid UTF-8 out.
    String::from_utf8(out).map_err(|_| PathError::BadCharacter)
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

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/v1/payments", "/v1/payments/pay_123/", "/a.b/c..d"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
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
            ("/v1/a%3fb", "/v1/a%3Fb"),
            ("/v1/..", "/"),
            // Non-ASCII passes through untouched (found by fuzzing: it was once re-encoded).
            ("/./у/ä%41", "/у/äA"),
        ] {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
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
