//! `Idempotency-Key` on creates: a retried create answers what the first answered, and never
//! makes a second Kling task.
//!
//! A key is its tenant's (it lives in the tenant's coordinator, the single writer of its
//! state) and is kept for [`KEPT_MS`]. The coordinator keeps, per key, only what is needed to
//! answer: the create's fingerprint (a SHA-256 of its endpoint and body, never the body),
//! the nonce of the create that holds it, and, once that create has an answer, the answer.
//! A key is claimed before anything is spent; a create refused before Kling (or by Kling,
//! which charges nothing) gives it back, so the same create can be tried again. A create
//! whose outcome is unknown (no answer in time, the isolate cut off) keeps it claimed until
//! its coordinator learns the outcome: the task found at Kling (its answer is then the
//! task), or none (the key is free again).
//!
//! Pure: time is an argument; every change is one read-modify-write in the coordinator.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How long a key is kept from its first create.
pub const KEPT_MS: u64 = 24 * 60 * 60 * 1000;
/// The longest key.
pub const MAX_KEY_CHARS: usize = 255;

/// An `Idempotency-Key` as a client may send it: 1 to 255 visible ASCII characters.
pub fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() || key.len() > MAX_KEY_CHARS || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be 1 to 255 visible ASCII characters (a UUID is a good key)");
    }
    Ok(())
}

/// A create's fingerprint: its path (so one body sent to another endpoint, or in another
/// shape, is another create) and its body as JSON, keys in order, so a retry that spells the
/// same body with other whitespace or key order is the same create.
pub fn fingerprint(path: &str, body: &[u8]) -> String {
    let canonical =
        serde_json::from_slice::<Value>(body).ok().and_then(|value| serde_json::to_vec(&value).ok());
    let mut hasher = Sha256::new();
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(canonical.as_deref().unwrap_or(body));
    crate::ids::hex(&hasher.finalize())
}

/// What a create answered, as a repeat is answered again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredAnswer {
    /// Kling's own answer, status and body.
    Kling { status: u16, body: String },
    /// A success in Kling's envelope, with this `data`.
    Success { data: Value },
    /// A success in useapi.net's shape.
    UseApi { body: Value },
}

/// One key of a tenant's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyEntry {
    pub key: String,
    pub fingerprint: String,
    /// The create that holds the key.
    pub nonce: String,
    /// Until when the create holding it may still be on its way (a repeat meanwhile is
    /// told to wait); past it, its coordinator looks for what became of it.
    pub in_flight_until: u64,
    pub expires_at: u64,
    /// The answer, once the create has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<StoredAnswer>,
    /// Fields the create dropped (`X-Kling-Edge-Ignored`), answered again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
}

/// What a create with a key may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Claim {
    /// The key is this create's: it goes on.
    Fresh,
    /// The key's create answered: this is its answer again.
    Replay { answer: StoredAnswer, ignored: Vec<String> },
    /// The key's create is still on its way: retry in this many seconds.
    InFlight { retry_after_secs: u64 },
    /// The key was used with another body.
    Mismatch,
}

/// What an earlier create holding a key whose time in flight has passed became, as its
/// coordinator knows: recorded (this answer), still being looked for at Kling, or nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    Recorded(StoredAnswer),
    LookedFor,
    Nothing,
}

impl KeyEntry {
    /// A key claimed now by the create of `nonce`, on its way for `in_flight_ms`.
    pub fn claimed(key: &str, fingerprint: &str, nonce: &str, now: u64, in_flight_ms: u64) -> KeyEntry {
        KeyEntry {
            key: key.to_owned(),
            fingerprint: fingerprint.to_owned(),
            nonce: nonce.to_owned(),
            in_flight_until: now.saturating_add(in_flight_ms),
            expires_at: now.saturating_add(KEPT_MS),
            answer: None,
            ignored: Vec::new(),
        }
    }

    pub fn expired(&self, now: u64) -> bool {
        now >= self.expires_at
    }
}

/// The rule of a create that brings `key` with `fingerprint` at `now`, given what the tenant
/// keeps under it (`None`, or expired: free) and, for a create in flight past its time, what
/// became of it (`fate`, asked only then). Answers the claim and the entry to keep (`None`:
/// unchanged).
pub fn claim(
    kept: Option<&KeyEntry>,
    fingerprint: &str,
    fresh: KeyEntry,
    now: u64,
    fate: impl FnOnce(&KeyEntry) -> Fate,
) -> (Claim, Option<KeyEntry>) {
    let Some(kept) = kept.filter(|kept| !kept.expired(now)) else { return (Claim::Fresh, Some(fresh)) };
    if kept.fingerprint != fingerprint {
        return (Claim::Mismatch, None);
    }
    if let Some(answer) = &kept.answer {
        return (Claim::Replay { answer: answer.clone(), ignored: kept.ignored.clone() }, None);
    }
    let wait =
        |until: u64| Claim::InFlight { retry_after_secs: until.saturating_sub(now).div_ceil(1000).max(1) };
    if now < kept.in_flight_until {
        return (wait(kept.in_flight_until), None);
    }
    match fate(kept) {
        Fate::Recorded(answer) => {
            let mut settled = kept.clone();
            settled.answer = Some(answer.clone());
            (Claim::Replay { answer, ignored: Vec::new() }, Some(settled))
        }
        Fate::LookedFor => {
            let mut extended = kept.clone();
            extended.in_flight_until = now.saturating_add(LOOK_AGAIN_MS);
            (wait(extended.in_flight_until), Some(extended))
        }
        // The earlier create never reached Kling (or was given up): this one takes the key,
        // for a day from now.
        Fate::Nothing => (Claim::Fresh, Some(fresh)),
    }
}

/// How long a repeat waits while the earlier create is still looked for at Kling.
pub const LOOK_AGAIN_MS: u64 = 30_000;

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn fresh(nonce: &str, now: u64) -> KeyEntry {
        KeyEntry::claimed("k1", &fingerprint("/v1/a", br#"{"a":1}"#), nonce, now, 40_000)
    }

    fn never(_: &KeyEntry) -> Fate {
        panic!("asked what became of a create that is not past its time")
    }

    #[test]
    fn a_key_is_claimed_once_replayed_after_its_answer_and_refused_with_another_body() {
        let first = fresh("n1", NOW);
        let (claimed, kept) = claim(None, &first.fingerprint, first.clone(), NOW, never);
        assert_eq!(claimed, Claim::Fresh);
        let mut kept = kept.unwrap();
        let (again, _) = claim(Some(&kept), &first.fingerprint, fresh("n2", NOW + 1), NOW + 1_000, never);
        assert_eq!(again, Claim::InFlight { retry_after_secs: 39 });
        kept.answer = Some(StoredAnswer::Success { data: serde_json::json!({"task_id": "t1"}) });
        let (replayed, changed) =
            claim(Some(&kept), &first.fingerprint, fresh("n3", NOW), NOW + 2_000, never);
        assert!(matches!(replayed, Claim::Replay { .. }) && changed.is_none());
        let other = fingerprint("/v1/a", br#"{"a":2}"#);
        assert_eq!(claim(Some(&kept), &other, fresh("n4", NOW), NOW, never).0, Claim::Mismatch);
        // Kept a day, then free.
        assert_eq!(claim(Some(&kept), &other, fresh("n5", NOW), NOW + KEPT_MS, never).0, Claim::Fresh);
    }

    #[test]
    fn a_create_in_flight_past_its_time_is_looked_for_then_replayed_or_taken_over() {
        let kept = fresh("n1", NOW);
        let later = NOW + 60_000;
        let answer = StoredAnswer::Kling { status: 200, body: "{}".into() };
        let (found, settled) = claim(Some(&kept), &kept.fingerprint, fresh("n2", later), later, |entry| {
            assert_eq!(entry.nonce, "n1");
            Fate::Recorded(answer.clone())
        });
        assert!(matches!(found, Claim::Replay { .. }));
        assert_eq!(settled.unwrap().answer, Some(answer));
        let (waiting, extended) =
            claim(Some(&kept), &kept.fingerprint, fresh("n2", later), later, |_| Fate::LookedFor);
        assert_eq!(waiting, Claim::InFlight { retry_after_secs: LOOK_AGAIN_MS / 1000 });
        assert_eq!(extended.unwrap().in_flight_until, later + LOOK_AGAIN_MS);
        let (taken, over) =
            claim(Some(&kept), &kept.fingerprint, fresh("n2", later), later, |_| Fate::Nothing);
        assert_eq!(taken, Claim::Fresh);
        let over = over.unwrap();
        assert_eq!(
            (over.nonce.as_str(), over.expires_at),
            ("n2", later + KEPT_MS),
            "a day from the new create"
        );
    }

    #[test]
    fn the_same_body_spelled_otherwise_is_the_same_create_and_another_endpoint_is_not() {
        assert_eq!(
            fingerprint("/v1/a", br#"{"a":1,"b":[2]}"#),
            fingerprint("/v1/a", b"{ \"b\": [2], \"a\": 1 }")
        );
        assert_ne!(fingerprint("/v1/a", br#"{"a":1}"#), fingerprint("/v1/b", br#"{"a":1}"#));
        assert_ne!(fingerprint("/v1/a", b"not json"), fingerprint("/v1/a", b"not json!"));
    }

    #[test]
    fn keys_are_visible_ascii_of_255_characters_at_most() {
        assert!(check_key("3f2b8c1e-4c1a-4c4e-9e55-4b1d2a6f0c11").is_ok());
        assert!(check_key(&"k".repeat(255)).is_ok());
        for bad in ["", " ", "a b", "ключ", &"k".repeat(256)] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
