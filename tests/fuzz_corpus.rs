//! Replays the fuzz targets' committed seeds (`fuzz/seeds/`), and any crash or timeout
//! input saved under `fuzz/regressions/`, through the same harness the fuzzers run
//! (`kling_edge::fuzz_harness`), so `cargo test` keeps them passing without cargo-fuzz.

use std::fs;
use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) {
    let mut replayed = 0;
    for folder in ["seeds", "regressions"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(folder).join(target);
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| harness(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no seeds for {target}");
}

#[test]
fn validate_request_seeds() {
    replay("validate_request", kling_edge::fuzz_harness::validate_request);
}

#[test]
fn callback_seeds() {
    replay("callback", kling_edge::fuzz_harness::callback);
}

#[test]
fn browser_token_seeds() {
    replay("browser_token", kling_edge::fuzz_harness::browser_token);
}

#[test]
fn probe_seeds() {
    replay("probe", kling_edge::fuzz_harness::probe);
}
