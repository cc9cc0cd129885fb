//! Key parsing: any string either parses (and then round-trips its prefix) or is refused.
#![no_main]
use keygate::key::{KeyFormat, Labels};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let format = KeyFormat::new(&Labels::default()).unwrap_or_else(|_| unreachable!());
    if let Ok(parsed) = format.parse(data) {
        assert!(data.starts_with(parsed.display_prefix()));
        assert_eq!(parsed.as_str(), data);
    }
});
