//! Path normalisation and route matching: never panics; a normalised path is a fixed point, has
//! no dot segments or empty segments, and matches the same routes when normalised again. Under
//! the default rules it holds none of the forms upstream servers read differently; a
//! case-folded match's canonical path matches the route exactly.
#![no_main]
use keygate::config::PathRules;
use keygate::policy::normalize;
use keygate::policy::routes::PathPattern;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, &str)| {
    let (flags, data) = input;
    let bit = |n: u8| flags & (1 << n) != 0;
    let rules = PathRules {
        semicolons: bit(0),
        encoded_delimiters: bit(1),
        double_encoding: bit(2),
        encoded_controls: bit(3),
        trailing_dots: bit(4),
        raw_non_ascii: bit(5),
        invalid_utf8: bit(6),
        case_insensitive: bit(7),
    };
    let Ok(normal) = normalize(data, &rules) else { return };
    let again =
        normalize(&normal, &rules).unwrap_or_else(|e| panic!("normal form {normal:?} refused: {e}"));
    assert_eq!(again, normal, "normalisation is not idempotent");
    assert!(!normal.contains("//") && !normal.contains("/./") && !normal.contains("/../"));
    let upper = normal.to_ascii_uppercase();
    if !rules.semicolons {
        assert!(!normal.contains(';') && !upper.contains("%3B"), "{normal:?}");
    }
    if !rules.encoded_delimiters {
        assert!(!upper.contains("%3F") && !upper.contains("%23"), "{normal:?}");
    }
    if !rules.double_encoding {
        let b = upper.as_bytes();
        assert!(
            !b.windows(5).any(|w| w.starts_with(b"%25") && w[3].is_ascii_hexdigit() && w[4].is_ascii_hexdigit()),
            "{normal:?}"
        );
    }
    if !rules.trailing_dots {
        assert!(normal.split('/').all(|s| !s.ends_with('.') && !s.ends_with("%20")), "{normal:?}");
    }
    if !rules.raw_non_ascii {
        assert!(normal.is_ascii(), "{normal:?}");
    }
    for pattern in ["/v1/payments", "/v1/payments/{id}", "/docs/*", "/v1/admin/*", "/*"] {
        let p = PathPattern::parse(pattern).unwrap_or_else(|_| unreachable!());
        let _ = p.matches(&normal);
        if p.matches_as(&normal, true) {
            let canonical = p.canonical(&normal).unwrap_or_else(|| normal.to_string());
            assert!(p.matches(&canonical), "{pattern}: {canonical:?} from {normal:?}");
        }
    }
    let _ = PathPattern::parse(data);
});
