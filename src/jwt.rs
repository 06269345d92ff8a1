//! Kling's bearer tokens: HS256 JWTs signed with the account's secret key, and the cache
//! that reuses one token across requests.
//!
//! The claims are Kling's: `iss` = access key, `nbf` = now - 5 s, `exp` = now + 1800 s.
//! A token is reused until 5 minutes before it expires, so almost every request skips the
//! HMAC and Kling sees few distinct tokens. Time is an argument (seconds since the epoch),
//! so the rules are tested with a fixed clock; the edge passes the Worker's clock in.

use chrono::{DateTime, Utc};
use jwt_compact::{alg::Hs256, alg::Hs256Key, AlgorithmExt, Claims, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const TOKEN_LIFETIME_SECS: i64 = 1800;
pub const NOT_BEFORE_SKEW_SECS: i64 = 5;
pub const RENEW_BEFORE_EXPIRY_SECS: i64 = 300;

/// Kling's only custom claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KlingClaims {
    pub iss: String,
}

/// Signs a Kling token valid from `now - 5 s` to `now + 1800 s`.
pub fn sign_kling_token(access_key: &str, secret_key: &str, now_secs: i64) -> String {
    let mut claims = Claims::new(KlingClaims { iss: access_key.to_owned() });
    claims.expiration = Some(timestamp(now_secs + TOKEN_LIFETIME_SECS));
    claims.not_before = Some(timestamp(now_secs - NOT_BEFORE_SKEW_SECS));
    sign_hs256(&claims, secret_key.as_bytes())
}

/// Signs `claims` as an HS256 JWT with the header `{"alg":"HS256","typ":"JWT"}`; shared by
/// Kling's tokens and the worker's own browser tokens.
pub(crate) fn sign_hs256<T: Serialize>(claims: &Claims<T>, secret: &[u8]) -> String {
    let header = Header::empty().with_token_type("JWT");
    // Serialising the claims cannot fail: they are plain strings and integers.
    Hs256.token(&header, claims, &Hs256Key::new(secret)).unwrap_or_default()
}

/// A JWT time claim for `secs` since the epoch (the epoch itself if out of chrono's range).
pub(crate) fn timestamp(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// The signed tokens, one per account, each remembered with the credentials it was signed
/// for.
#[derive(Debug, Default)]
pub struct KlingTokenCache {
    cached: Vec<CachedToken>,
}

/// Tokens kept at most (a deployment has a few accounts; past this, the oldest is dropped).
const ACCOUNTS_KEPT: usize = 16;

#[derive(Debug)]
struct CachedToken {
    token: String,
    expires_at_secs: i64,
    /// SHA-256 of the credentials, so a rotated secret is never answered with an old token.
    credentials_digest: [u8; 32],
}

impl KlingTokenCache {
    pub const fn new() -> Self {
        KlingTokenCache { cached: Vec::new() }
    }

    /// A token for these credentials that stays valid for at least 5 more minutes.
    pub fn token(&mut self, access_key: &str, secret_key: &str, now_secs: i64) -> String {
        let credentials_digest = credentials_digest(access_key, secret_key);
        if let Some(cached) =
            self.cached.iter().find(|cached| cached.credentials_digest == credentials_digest)
        {
            let fresh = now_secs < cached.expires_at_secs - RENEW_BEFORE_EXPIRY_SECS
                // A clock that went backwards past `nbf` must not reuse a token Kling refuses.
                && now_secs >= cached.expires_at_secs - TOKEN_LIFETIME_SECS - NOT_BEFORE_SKEW_SECS;
            if fresh {
                return cached.token.clone();
            }
        }
        let token = sign_kling_token(access_key, secret_key, now_secs);
        self.cached.retain(|cached| cached.credentials_digest != credentials_digest);
        if self.cached.len() >= ACCOUNTS_KEPT {
            self.cached.remove(0);
        }
        self.cached.push(CachedToken {
            token: token.clone(),
            expires_at_secs: now_secs + TOKEN_LIFETIME_SECS,
            credentials_digest,
        });
        token
    }
}

fn credentials_digest(access_key: &str, secret_key: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(access_key.as_bytes());
    hasher.update([0]);
    hasher.update(secret_key.as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_compact::{TimeOptions, UntrustedToken};
    use serde_json::Value;

    const NOW: i64 = 1_781_080_794;

    fn decode_part(token: &str, index: usize) -> Value {
        use base64ct::{Base64UrlUnpadded, Encoding};
        let part = token.split('.').nth(index).unwrap();
        serde_json::from_slice(&Base64UrlUnpadded::decode_vec(part).unwrap()).unwrap()
    }

    #[test]
    fn token_has_klings_header_and_claims() {
        let token = sign_kling_token("ak-example", "sk-example", NOW);
        assert_eq!(decode_part(&token, 0), serde_json::json!({"alg": "HS256", "typ": "JWT"}));
        assert_eq!(
            decode_part(&token, 1),
            serde_json::json!({"iss": "ak-example", "exp": NOW + 1800, "nbf": NOW - 5})
        );
    }

    #[test]
    fn token_verifies_with_the_secret_key_only() {
        let token = sign_kling_token("ak-example", "sk-example", NOW);
        let untrusted = UntrustedToken::new(&token).unwrap();
        let verified =
            Hs256.validator::<KlingClaims>(&Hs256Key::new(b"sk-example")).validate(&untrusted).unwrap();
        let clock = TimeOptions::new(chrono::Duration::zero(), || timestamp(NOW));
        verified.claims().validate_expiration(&clock).unwrap();
        verified.claims().validate_maturity(&clock).unwrap();
        assert_eq!(verified.claims().custom.iss, "ak-example");

        assert!(Hs256
            .validator::<KlingClaims>(&Hs256Key::new(b"another-secret"))
            .validate(&untrusted)
            .is_err());
    }

    #[test]
    fn known_answer() {
        // Computed independently with Python's hmac and base64 modules over the same
        // header and claims: HMAC-SHA256("sk-example", header "." claims), base64url.
        assert_eq!(
            sign_kling_token("ak-example", "sk-example", NOW),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
             eyJleHAiOjE3ODEwODI1OTQsIm5iZiI6MTc4MTA4MDc4OSwiaXNzIjoiYWstZXhhbXBsZSJ9.\
             PF4h1rFy6VNau-EsNulhqXlsLLq-Kbz3qsyTmpXsviU"
        );
    }

    #[test]
    fn cache_reuses_until_five_minutes_before_expiry() {
        let mut cache = KlingTokenCache::new();
        let first = cache.token("ak", "sk", NOW);
        assert_eq!(cache.token("ak", "sk", NOW + 1), first);
        assert_eq!(cache.token("ak", "sk", NOW + 1800 - 301), first);
        let renewed = cache.token("ak", "sk", NOW + 1800 - 300);
        assert_ne!(renewed, first);
        assert_eq!(decode_part(&renewed, 1)["exp"], NOW + 1800 - 300 + 1800);
    }

    #[test]
    fn cache_never_serves_another_credentials_token() {
        let mut cache = KlingTokenCache::new();
        let first = cache.token("ak", "sk", NOW);
        let rotated = cache.token("ak", "sk-rotated", NOW + 1);
        assert_ne!(rotated, first);
        assert_ne!(cache.token("ak-2", "sk-rotated", NOW + 2), rotated);
    }

    #[test]
    fn cache_keeps_one_token_per_account() {
        let mut cache = KlingTokenCache::new();
        let main = cache.token("ak-main", "sk-main", NOW);
        let spare = cache.token("ak-spare", "sk-spare", NOW + 1);
        assert_ne!(main, spare);
        assert_eq!(cache.token("ak-main", "sk-main", NOW + 2), main, "not re-signed for another account");
        assert_eq!(cache.token("ak-spare", "sk-spare", NOW + 3), spare);
        for i in 0..ACCOUNTS_KEPT {
            cache.token(&format!("ak-{i}"), "sk", NOW + 4);
        }
        assert_eq!(cache.cached.len(), ACCOUNTS_KEPT, "bounded");
    }

    #[test]
    fn cache_resigns_when_the_clock_goes_backwards() {
        let mut cache = KlingTokenCache::new();
        let first = cache.token("ak", "sk", NOW);
        assert_eq!(cache.token("ak", "sk", NOW - 5), first);
        assert_ne!(cache.token("ak", "sk", NOW - 6), first);
    }
}
