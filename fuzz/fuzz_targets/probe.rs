//! Fuzz target: see `kling_edge::fuzz_harness::probe` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kling_edge::fuzz_harness::probe(data));
