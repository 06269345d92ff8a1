//! What differs on wasm32, run under node with `wasm-bindgen-test-runner`: the Worker's
//! clock, its randomness, and JWT signing compiled for wasm32 (`make test` runs these).
#![cfg(target_arch = "wasm32")]

use kling_edge::edge::clock;
use kling_edge::jwt::{sign_kling_token, KlingTokenCache};
use wasm_bindgen_test::wasm_bindgen_test;

/// The same known answer as the native test in `src/jwt.rs` (checked with Python's hmac).
const KNOWN_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
    eyJleHAiOjE3ODEwODI1OTQsIm5iZiI6MTc4MTA4MDc4OSwiaXNzIjoiYWstZXhhbXBsZSJ9.\
    PF4h1rFy6VNau-EsNulhqXlsLLq-Kbz3qsyTmpXsviU";

#[wasm_bindgen_test]
fn signing_on_wasm32_gives_the_known_answer() {
    assert_eq!(sign_kling_token("ak-example", "sk-example", 1_781_080_794), KNOWN_TOKEN);
}

#[wasm_bindgen_test]
fn the_worker_clock_is_unix_time_in_milliseconds() {
    let now_ms = clock::now_ms();
    // After 2025-01-01 and before 2100-01-01: milliseconds, not seconds or microseconds.
    assert!(now_ms > 1_735_689_600_000 && now_ms < 4_102_444_800_000, "{now_ms}");
    let now_secs = clock::now_secs();
    assert!((now_secs - (now_ms / 1000) as i64).abs() <= 1);
    assert!(clock::now_ms() >= now_ms, "the clock never goes backwards within a test");
}

#[wasm_bindgen_test]
fn tokens_signed_with_the_worker_clock_are_valid_now() {
    let now = clock::now_secs();
    let mut cache = KlingTokenCache::new();
    let token = cache.token("ak-example", "sk-example", now);
    assert_eq!(cache.token("ak-example", "sk-example", now + 60), token);
    let claims = token.split('.').nth(1).unwrap();
    use base64ct::{Base64UrlUnpadded, Encoding};
    let claims: serde_json::Value =
        serde_json::from_slice(&Base64UrlUnpadded::decode_vec(claims).unwrap()).unwrap();
    assert_eq!(claims["exp"], now + 1800);
    assert_eq!(claims["nbf"], now - 5);
    // Valid by a separate reading of the JavaScript clock, not only by the `now` passed in.
    let js_now = (worker::js_sys::Date::now() / 1000.0) as i64;
    assert!(claims["nbf"].as_i64().unwrap() <= js_now && js_now < claims["exp"].as_i64().unwrap());
}

#[wasm_bindgen_test]
fn randomness_comes_from_the_platform() {
    let a = clock::random_bytes::<16>().unwrap();
    let b = clock::random_bytes::<16>().unwrap();
    assert_ne!(a, b);
    assert_ne!(a, [0; 16]);
    let id = clock::new_request_id();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
}
