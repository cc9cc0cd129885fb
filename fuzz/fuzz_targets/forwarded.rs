//! Client address from Forwarded / X-Forwarded-For behind a trusted proxy: never panics, and
//! an untrusted peer is always its own client address.
#![no_main]
use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use keygate::policy::ip::{IpSet, client_ip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let trusted = IpSet::new(&["10.0.0.0/8".parse().unwrap_or_else(|_| unreachable!())]);
    let mut headers = HeaderMap::new();
    let (xff, fwd) = data.split_at(data.len() / 2);
    if let Ok(v) = HeaderValue::from_bytes(xff) {
        headers.append("x-forwarded-for", v);
    }
    if data.first().is_some_and(|b| b % 2 == 0)
        && let Ok(v) = HeaderValue::from_bytes(fwd)
    {
        headers.append("forwarded", v);
    }
    let proxy: IpAddr = [10, 0, 0, 2].into();
    let _ = client_ip(proxy, &headers, &trusted);
    let outsider: IpAddr = [203, 0, 113, 9].into();
    assert_eq!(client_ip(outsider, &headers, &trusted), Some(outsider));
});
