//! Path normalisation and route matching: never panics; a normalised path is a fixed point, has
//! no dot segments or empty segments, and matches the same routes when normalised again.
#![no_main]
use keygate::policy::normalize;
use keygate::policy::routes::PathPattern;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let Ok(normal) = normalize(data) else { return };
    let again = normalize(&normal).unwrap_or_else(|e| panic!("normal form {normal:?} refused: {e}"));
    assert_eq!(again, normal, "normalisation is not idempotent");
    assert!(!normal.contains("//") && !normal.contains("/./") && !normal.contains("/../"));
    for pattern in ["/v1/payments", "/v1/payments/{id}", "/docs/*", "/v1/admin/*", "/*"] {
        let p = PathPattern::parse(pattern).unwrap_or_else(|_| unreachable!());
        let _ = p.matches(&normal);
    }
    let _ = PathPattern::parse(data);
});
