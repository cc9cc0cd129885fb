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

/// What `headers.get(name)` holds.
pub fn first<'a>(headers: &'a HeaderMap, name: &'a HeaderName) -> Option<&'a HeaderValue> {
    values(headers, name).next()
}

#[cfg(test)]
mod tests {
    use super::*;
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
