//! Credential extraction from arbitrary header sets: never panics; a found key is visible ASCII
//! within the length cap.
#![no_main]
use http::{HeaderMap, HeaderName, HeaderValue};
use keygate::auth::extract;
use keygate::config::Carrier;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    // Records separated by 0xff: name 0xfe value.
    for record in data.split(|b| *b == 0xff) {
        let mut parts = record.splitn(2, |b| *b == 0xfe);
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else { continue };
        let name = match name.first() {
            Some(0) => HeaderName::from_static("authorization"),
            Some(1) => HeaderName::from_static("x-api-key"),
            _ => match HeaderName::from_bytes(name) {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    let all = [Carrier::Bearer, Carrier::ApiKeyHeader];
    if let Ok(cred) = extract(&headers, &all, &all, 256) {
        assert!(!cred.key.is_empty() && cred.key.len() <= 256);
        assert!(cred.key.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }
    let _ = extract(&headers, &all, &[Carrier::ApiKeyHeader], 256);
});
