//! Standard Webhooks signatures: verifying Kling's signed callbacks and signing the
//! webhooks the worker forwards to clients.
//!
//! The scheme (<https://www.standardwebhooks.com>): headers `webhook-id`,
//! `webhook-timestamp` (seconds) and `webhook-signature`, a space-separated list of
//! `v1,<base64>` signatures (several while a secret is rotated), each
//! `base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))` where the key is the base64 after
//! the secret's `whsec_` prefix. Timestamps more than five minutes off are refused, and
//! signatures are compared in constant time.

use base64ct::{Base64, Encoding};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Domain separation for [`WebhookKey::for_client`].
const CLIENT_KEY_LABEL: &[u8] = b"kling-edge client webhook v1\0";

/// Timestamps further than this from now (either way) are refused.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// A webhook signing key, decoded from a `whsec_...` secret.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookKey(Vec<u8>);

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey(<redacted>)")
    }
}

impl WebhookKey {
    /// Decodes `whsec_<base64>` (the prefix is optional, as some providers omit it).
    pub fn from_secret(secret: &str) -> Result<WebhookKey, &'static str> {
        let encoded = secret.trim();
        let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
        let key = Base64::decode_vec(encoded).map_err(|_| "must be whsec_ followed by base64")?;
        if key.len() < 16 {
            return Err("is too short: use at least 16 random bytes");
        }
        Ok(WebhookKey(key))
    }

    /// The key that signs the webhooks of one client (a `PROXY_API_KEYS` name), derived
    /// from the deployment's key: `HMAC-SHA256(key, "kling-edge client webhook v1\0" || name)`.
    /// A receiver verifying with its own client's secret rejects any webhook caused by
    /// another client, though one deployment secret stands behind them all.
    pub fn for_client(&self, client: &str) -> WebhookKey {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(CLIENT_KEY_LABEL);
        mac.update(client.as_bytes());
        WebhookKey(mac.finalize().into_bytes().to_vec())
    }

    /// The `whsec_<base64>` form of this key, as a receiver configures it.
    pub fn to_secret(&self) -> String {
        format!("whsec_{}", Base64::encode_string(&self.0))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value for a message.
    pub fn sign(&self, id: &str, timestamp_secs: i64, body: &[u8]) -> String {
        let tag = self.mac(id, &timestamp_secs.to_string(), body).finalize().into_bytes();
        format!("v1,{}", Base64::encode_string(&tag))
    }

    /// Checks a received message's headers and raw body at time `now_secs`.
    pub fn verify(
        &self,
        headers: &SignatureHeaders<'_>,
        body: &[u8],
        now_secs: i64,
    ) -> Result<(), Rejection> {
        let id = headers.id.filter(|v| !v.is_empty()).ok_or(Rejection::MissingHeader("webhook-id"))?;
        let timestamp = headers
            .timestamp
            .filter(|v| !v.is_empty())
            .ok_or(Rejection::MissingHeader("webhook-timestamp"))?;
        let signatures = headers
            .signature
            .filter(|v| !v.is_empty())
            .ok_or(Rejection::MissingHeader("webhook-signature"))?;
        let sent_at: i64 = timestamp.trim().parse().map_err(|_| Rejection::BadTimestamp)?;
        if now_secs.abs_diff(sent_at) > TOLERANCE_SECS.unsigned_abs() {
            return Err(Rejection::StaleTimestamp);
        }
        let expected = self.mac(id, timestamp.trim(), body);
        for candidate in signatures.split_whitespace() {
            let Some(encoded) = candidate.strip_prefix("v1,") else { continue };
            let Ok(tag) = Base64::decode_vec(encoded) else { continue };
            // `verify_slice` compares in constant time.
            if expected.clone().verify_slice(&tag).is_ok() {
                return Ok(());
            }
        }
        Err(Rejection::BadSignature)
    }
}

/// The three Standard Webhooks headers, as received.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignatureHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Why a signed message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    MissingHeader(&'static str),
    BadTimestamp,
    StaleTimestamp,
    BadSignature,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::MissingHeader(name) => write!(f, "{name}: missing"),
            Rejection::BadTimestamp => f.write_str("webhook-timestamp: must be whole seconds"),
            Rejection::StaleTimestamp => f.write_str("webhook-timestamp: more than 5 minutes off"),
            Rejection::BadSignature => f.write_str("webhook-signature: no signature matches"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The published test vector (../shared/KLING_API.md).
    const SECRET: &str = "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI=";
    const ID: &str = "9876543210";
    const TIMESTAMP: i64 = 1_781_080_794;
    const BODY: &str = r#"{"id":"1234567890","status":"succeeded","message":"","create_time":1781080778802,"update_time":1781080794151}"#;
    const SIGNATURE: &str = "v1,UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ4=";

    fn key() -> WebhookKey {
        WebhookKey::from_secret(SECRET).unwrap()
    }

    fn headers<'a>(timestamp: &'a str, signature: &'a str) -> SignatureHeaders<'a> {
        SignatureHeaders { id: Some(ID), timestamp: Some(timestamp), signature: Some(signature) }
    }

    #[test]
    fn signs_the_published_vector() {
        assert_eq!(key().sign(ID, TIMESTAMP, BODY.as_bytes()), SIGNATURE);
    }

    #[test]
    fn verifies_the_published_vector() {
        let ts = TIMESTAMP.to_string();
        assert_eq!(key().verify(&headers(&ts, SIGNATURE), BODY.as_bytes(), TIMESTAMP + 10), Ok(()));
    }

    #[test]
    fn any_of_several_signatures_may_match_during_rotation() {
        let ts = TIMESTAMP.to_string();
        let rotating = format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= {SIGNATURE} v2,ignored");
        assert_eq!(key().verify(&headers(&ts, &rotating), BODY.as_bytes(), TIMESTAMP), Ok(()));
    }

    #[test]
    fn refuses_tampering_and_wrong_keys() {
        let ts = TIMESTAMP.to_string();
        let tampered = BODY.replace("succeeded", "failed");
        assert_eq!(
            key().verify(&headers(&ts, SIGNATURE), tampered.as_bytes(), TIMESTAMP),
            Err(Rejection::BadSignature)
        );
        let other = WebhookKey::from_secret("whsec_b3RoZXJzZWNyZXRvdGhlcnNlY3JldG90aGVy").unwrap();
        assert_eq!(
            other.verify(&headers(&ts, SIGNATURE), BODY.as_bytes(), TIMESTAMP),
            Err(Rejection::BadSignature)
        );
        let other_id = SignatureHeaders { id: Some("1"), ..headers(&ts, SIGNATURE) };
        assert_eq!(key().verify(&other_id, BODY.as_bytes(), TIMESTAMP), Err(Rejection::BadSignature));
        for garbage in ["v1,", "v1,not-base64!", "UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ4="] {
            assert_eq!(
                key().verify(&headers(&ts, garbage), BODY.as_bytes(), TIMESTAMP),
                Err(Rejection::BadSignature)
            );
        }
    }

    #[test]
    fn refuses_timestamps_more_than_five_minutes_off() {
        let ts = TIMESTAMP.to_string();
        for now in [TIMESTAMP + 301, TIMESTAMP - 301] {
            assert_eq!(
                key().verify(&headers(&ts, SIGNATURE), BODY.as_bytes(), now),
                Err(Rejection::StaleTimestamp)
            );
        }
        for now in [TIMESTAMP + 300, TIMESTAMP - 300] {
            assert_eq!(key().verify(&headers(&ts, SIGNATURE), BODY.as_bytes(), now), Ok(()));
        }
        assert_eq!(
            key().verify(&headers("soon", SIGNATURE), BODY.as_bytes(), TIMESTAMP),
            Err(Rejection::BadTimestamp)
        );
    }

    #[test]
    fn refuses_missing_headers() {
        let missing = SignatureHeaders { id: None, timestamp: Some("1"), signature: Some(SIGNATURE) };
        assert_eq!(key().verify(&missing, b"{}", 1), Err(Rejection::MissingHeader("webhook-id")));
        let empty = SignatureHeaders { signature: Some(""), ..headers("1", "") };
        assert_eq!(key().verify(&empty, b"{}", 1), Err(Rejection::MissingHeader("webhook-signature")));
    }

    #[test]
    fn secrets_must_decode() {
        assert!(WebhookKey::from_secret("whsec_***").is_err());
        assert!(WebhookKey::from_secret("whsec_c2hvcnQ=").is_err());
        assert!(WebhookKey::from_secret(&SECRET["whsec_".len()..]).is_ok());
        assert!(!format!("{:?}", key()).contains("dGVzd"));
    }

    #[test]
    fn each_client_has_its_own_key() {
        let deployment = key();
        let (alice, bob) = (deployment.for_client("alice"), deployment.for_client("bob"));
        assert_ne!(alice, bob);
        assert_eq!(alice, deployment.for_client("alice"), "derivation is deterministic");
        let ts = TIMESTAMP.to_string();
        let signed_for_bob = bob.sign(ID, TIMESTAMP, BODY.as_bytes());
        assert_eq!(bob.verify(&headers(&ts, &signed_for_bob), BODY.as_bytes(), TIMESTAMP), Ok(()));
        assert_eq!(
            alice.verify(&headers(&ts, &signed_for_bob), BODY.as_bytes(), TIMESTAMP),
            Err(Rejection::BadSignature),
            "alice's receiver refuses what bob's tasks cause"
        );
        // The published secret round-trips, and matches an independent computation
        // (Python: hmac.new(base64.b64decode(key), b"kling-edge client webhook v1\0alice", sha256)).
        assert_eq!(WebhookKey::from_secret(&alice.to_secret()).unwrap(), alice);
        assert_eq!(alice.to_secret(), "whsec_ylH6gUd9FC2/CxbqsffC50bkBIn+1hY9wOHZ7w772Ik=");
    }
}
