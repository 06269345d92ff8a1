//! The bodies of the fuzz targets in `fuzz/`, kept here so that `cargo test` replays the
//! committed corpus through exactly the same code (`tests/fuzz_corpus.rs`) without
//! cargo-fuzz. Each checks invariants, not just the absence of panics.
//!
//! Not part of the worker: nothing in `edge` calls it, so the release build drops it.

use serde_json::Value;

use crate::api::surfaces::SURFACES;
use crate::auth::browser_token;
use crate::kling::task;
use crate::links::webhook::{SignatureHeaders, WebhookKey};
use crate::routes;
use crate::validate::{self, UrlPolicy};

const NOW: i64 = 1_800_000_000;
const TOKEN_SECRET: &[u8] = b"fuzz-token-secret-fuzz-token-secret-0123";

/// Splits input at 0xff bytes (never valid UTF-8) into `count` fields.
fn fields(data: &[u8], count: usize) -> Vec<&[u8]> {
    let mut parts: Vec<&[u8]> = data.splitn(count, |b| *b == 0xff).collect();
    parts.resize(count, &[]);
    parts
}

/// Request validation: every surface's create body, pagination, routing and URLs.
pub fn validate_request(data: &[u8]) {
    for surface in SURFACES {
        for allow_private in [false, true] {
            let policy = UrlPolicy { allow_private };
            match surface.validate(data, policy) {
                Ok(validated) => {
                    // Whatever passes is what Kling accepts the shape of.
                    assert_eq!(
                        surface.validate(data, policy).as_ref(),
                        Ok(&validated),
                        "validation is deterministic"
                    );
                    for (name, value) in &validated.upstream {
                        if name.ends_with("_url") {
                            let url = value.as_str().expect("URLs are strings");
                            let again = validate::http_url(name, url, policy);
                            assert!(again.is_ok(), "a forwarded URL must pass its own rules again");
                        }
                        if name.ends_with("prompt") {
                            assert!(value.as_str().is_some_and(|p| p.chars().count() <= 2500));
                        }
                    }
                    if surface.endpoint == &crate::api::VIDEO_TO_AUDIO {
                        let sources = ["video_id", "video_url"]
                            .iter()
                            .filter(|f| validated.upstream.contains_key(**f))
                            .count();
                        assert_eq!(sources, 1, "exactly one video source");
                    }
                    if let Some(seconds) = validated.options.video_duration {
                        assert!((0.0..=86_400.0).contains(&seconds));
                    }
                    assert!(serde_json::to_string(&validated.upstream).is_ok());
                }
                Err(error) => {
                    assert_eq!(error.status, 400);
                    assert!(serde_json::from_str::<Value>(&error.envelope("r")).is_ok());
                }
            }
        }
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(page) = validate::page(Some(&text)) {
        assert!((1..=validate::MAX_PAGE_NUM).contains(&page.num));
        assert!((1..=validate::MAX_PAGE_SIZE).contains(&page.size));
    }
    for method in ["GET", "POST", "OPTIONS", "DELETE"] {
        if let Err(error) = routes::route(method, &text) {
            assert!(matches!(error.status, 400 | 404 | 405), "{}", error.status);
        }
    }
    let _ = routes::loggable_path(&text);
}

/// Kling callbacks: signature verification of arbitrary headers and bodies, parsing, and
/// the merge's invariants (idempotent, monotonic).
pub fn callback(data: &[u8]) {
    let parts = fields(data, 5);
    let key = WebhookKey::from_secret("whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI=").unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let (id, timestamp, signature) = (text(parts[0]), text(parts[1]), text(parts[2]));
    let headers =
        SignatureHeaders { id: Some(&id), timestamp: Some(&timestamp), signature: Some(&signature) };
    let _ = key.verify(&headers, parts[3], NOW);
    // What the worker signs, it verifies.
    let signed = key.sign(&id, NOW, parts[3]);
    if !id.is_empty() {
        let now = NOW.to_string();
        let own = SignatureHeaders { id: Some(&id), timestamp: Some(&now), signature: Some(&signed) };
        assert!(key.verify(&own, parts[3], NOW).is_ok());
    }
    let _ = WebhookKey::from_secret(&text(parts[4]));

    let stored = task::parse_callback(parts[3]);
    let incoming = task::parse_callback(parts[4]);
    if let (Ok(stored), Ok(incoming)) = (stored, incoming) {
        let results = crate::kling::task::Results::Audios;
        let merged = task::merge(&stored, &incoming, results).unwrap_or_else(|| stored.clone());
        assert_eq!(
            task::merge(&merged, &incoming, results),
            None,
            "merging the same report twice changes nothing"
        );
        if task::is_final(&stored) {
            assert!(task::is_final(&merged), "a final task never becomes unfinished");
        }
        if task::has_results(&stored, results) && task::is_final(&stored) {
            assert!(task::has_results(&merged, results), "a final result never loses its audios");
        }
        if task::is_final(&stored) {
            assert_eq!(task::status_of(&merged), task::status_of(&stored), "succeed and failed never switch");
        }
        if task::is_complete(&stored, results) {
            assert_eq!(merged, stored, "a complete task never changes");
        }
    }
}

/// Browser tokens: verification of arbitrary tokens, and mint/verify round trips.
pub fn browser_token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(identity) = browser_token::verify(TOKEN_SECRET, &text, NOW) {
        assert!(!identity.sub.contains('/') && !identity.sub.contains(':'));
    }
    if let Ok(request) = browser_token::mint_request(data, crate::validate::UrlPolicy::default()) {
        let minted = browser_token::mint(TOKEN_SECRET, "app", &[1; 32], &request, NOW);
        let identity =
            browser_token::verify(TOKEN_SECRET, &minted.token, NOW).expect("a minted token verifies");
        assert_eq!(identity.sub, request.sub);
        assert!(identity.sub.len() <= browser_token::MAX_SUB_BYTES);
        assert_eq!(identity.callback_url, request.callback_url);
        assert_eq!(identity.tenant(), format!("app/{}", request.sub));
        assert_eq!(identity.app_key_fingerprint, browser_token::app_key_fingerprint(TOKEN_SECRET, &[1; 32]));
        let expired =
            browser_token::verify(TOKEN_SECRET, &minted.token, NOW + i64::from(request.ttl_secs) + 1);
        assert_eq!(expired.unwrap_err().code, crate::error::code::AUTH_EXPIRED);
    }
}

/// The video probe: whatever bytes a server sends, in whatever pieces, it never panics,
/// never reads past its cap, and a measured length is a real number of seconds.
pub fn probe(data: &[u8]) {
    use crate::probe::{probe_bytes, Probe, Step, MAX_BYTES};
    for ranges in [true, false] {
        let (step, read) = probe_bytes(data, ranges);
        assert!(read <= MAX_BYTES, "read {read} bytes");
        if let Step::Done(facts) = step {
            assert!(facts.duration_secs.is_finite() && facts.duration_secs >= 0.0);
        }
        if let Step::Need { .. } = step {
            panic!("probe_bytes always ends");
        }
    }
    // The same bytes arriving in two pieces, the second at an offset the first byte chooses.
    if let Some((&split, rest)) = data.split_first() {
        let at = (split as usize).min(rest.len());
        let mut pieces = Probe::new(None);
        pieces.feed(0, rest[..at].to_vec(), false);
        pieces.feed(at as u64, rest[at..].to_vec(), true);
        if let Step::Need { offset, length } = pieces.step() {
            assert!(length >= 1 && offset.checked_add(length).is_some());
        }
    }
}
