//! Config parsing: arbitrary TOML text yields a config or a list of problems, never a panic.
#![no_main]
use keygate::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let Err(e) = Config::from_toml(data, Vec::new(), |_| None) {
        assert!(!e.problems.is_empty());
    }
});
