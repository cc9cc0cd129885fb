//! Header fields looked up by name, as the request path does several times per request
//! (`Host`, `Transfer-Encoding`, the credential's carriers, `Connection`, `Upgrade`,
//! `X-Request-Id`). A request carries a handful of fields: walking them and comparing names costs
//! less than hashing the name asked for (the map's own lookup, ~160 instructions each), so small
//! maps are walked and larger ones looked up. Either way the values come in the order
//! `HeaderMap::get_all` gives them.

use http::header::{HeaderMap, HeaderName, HeaderValue, Iter, ValueIter};

/// Maps holding up to this many values are walked.
const WALK: usize = 8;

/// The values of one name, in order.
pub enum Values<'a> {
    Walk {
        fields: Iter<'a, HeaderValue>,
        name: &'a HeaderName,
    },
    Hashed(ValueIter<'a, HeaderValue>),
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a HeaderValue;

    fn next(&mut self) -> Option<&'a HeaderValue> {
        match self {
            Values::Walk { fields, name } => fields.find_map(|(n, v)| (n == *name).then_some(v)),
            Values::Hashed(values) => values.next(),
        }
    }
}

/// What `headers.get_all(name)` holds.
pub fn values<'a>(headers: &'a HeaderMap, name: &'a HeaderName) -> Values<'a> {
    if headers.len() <= WALK {
        Values::Walk {
            fields: headers.iter(),
            name,
        }
    } else {
        Values::Hashed(headers.get_all(name).iter())
    }
}

/// Whether the field name `name`, a token (httparse and `HeaderName` check that), is `lower` in
/// any case; `lower` is a lower-case name, every byte of it with bit 0x20 set (letters, digits,
/// `-`). Eight bytes at a time: setting bit 0x20 lower-cases a letter, and maps no other token
/// character onto one of `lower`'s (the bytes it would map onto digits and `-` are controls,
/// never in a token). A name a few bytes long costs a few instructions, not a few per byte.
pub fn name_is(name: &[u8], lower: &[u8]) -> bool {
    const CASE: u64 = 0x2020_2020_2020_2020;
    if name.len() != lower.len() {
        return false;
    }
    let len = name.len();
    if len < 8 {
        return name.iter().zip(lower).all(|(a, b)| a | 0x20 == *b);
    }
    let word = |s: &[u8], at: usize| {
        let bytes: [u8; 8] = s[at..at + 8].try_into().unwrap_or_default();
        u64::from_le_bytes(bytes)
    };
    // Whole words, then the last eight bytes (overlapping the previous word when `len` is not a
    // multiple of eight).
    (0..len / 8).all(|i| word(name, i * 8) | CASE == word(lower, i * 8))
        && word(name, len - 8) | CASE == word(lower, len - 8)
}

/// What `headers.get(name)` holds.
pub fn first<'a>(headers: &'a HeaderMap, name: &'a HeaderName) -> Option<&'a HeaderValue> {
    values(headers, name).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the standard library's comparison, for every token character in every position
    /// of names of every length around the word size.
    #[test]
    fn name_is_matches_a_case_insensitive_comparison_of_tokens() {
        let token_chars: Vec<u8> = (0x21u8..0x7f)
            .filter(|b| !b"\"(),/:;<=>?@[\\]{}".contains(b))
            .collect();
        for target in [
            "te",
            "date",
            "upgrade",
            "trailer",
            "x-api-key",
            "connection",
            "x-request-id",
            "content-length",
            "http2-settings",
            "transfer-encoding",
            "x-ratelimit-remaining",
        ] {
            let t = target.as_bytes();
            assert!(name_is(t, t) && name_is(target.to_uppercase().as_bytes(), t));
            for at in 0..t.len() {
                for &c in &token_chars {
                    let mut name = t.to_vec();
                    name[at] = c;
                    assert_eq!(
                        name_is(&name, t),
                        name.eq_ignore_ascii_case(t),
                        "{:?} vs {target}",
                        String::from_utf8_lossy(&name)
                    );
                }
            }
            assert!(!name_is(&t[1..], t));
            assert!(!name_is(format!("{target}s").as_bytes(), t));
        }
    }
    use http::header::{AUTHORIZATION, HOST};

    /// Walked or hashed, every name's values are what the map's own lookup gives.
    #[test]
    fn small_and_large_maps_give_what_the_map_gives() {
        let custom = HeaderName::from_static("x-api-key");
        let absent = HeaderName::from_static("x-absent");
        let names = [HOST, AUTHORIZATION, custom, absent];
        for extra in [0, 3, WALK, WALK * 3] {
            let mut map = HeaderMap::new();
            map.append(HOST, HeaderValue::from_static("a"));
            map.append("x-api-key", HeaderValue::from_static("k1"));
            for i in 0..extra {
                let name = HeaderName::from_bytes(format!("x-filler-{}", i % 5).as_bytes());
                if let Ok(name) = name {
                    map.append(name, HeaderValue::from_static("f"));
                }
            }
            map.append(HOST, HeaderValue::from_static("b"));
            map.append("x-api-key", HeaderValue::from_static("k2"));
            map.append(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
            for name in &names {
                let want: Vec<&HeaderValue> = map.get_all(name).iter().collect();
                let got: Vec<&HeaderValue> = values(&map, name).collect();
                assert_eq!(got, want, "{name} with {extra} more");
                assert_eq!(first(&map, name), map.get(name), "{name} with {extra} more");
            }
        }
    }
}
