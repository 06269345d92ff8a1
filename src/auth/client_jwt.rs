//! Clients that authenticate the way Kling's own clients do: an HS256 JWT whose `iss` is the
//! client's name in `PROXY_API_KEYS`, signed with the client's key, valid from `nbf` to `exp`.
//!
//! Kling's SDKs (npm `kling-api`, the Python clients) sign such a token from an access key and
//! a secret key, and cannot send a plain bearer key. Giving them the client's name as the
//! access key and its key as the secret key makes them work unchanged. Kling's rules apply:
//! a token not valid yet is 1003, an expired one 1004; a wrong signature, an `alg` other than
//! HS256, an unknown issuer, or a token living more than an hour ahead (Kling's own last 30
//! minutes; only a stolen key could mint a long-lived one) is 1002. A token naming one client
//! but signed with another's key fails its signature.

use chrono::Duration;
use jwt_compact::{
    alg::{Hs256, Hs256Key},
    AlgorithmExt, Claims, TimeOptions, UntrustedToken, ValidationError,
};
use serde::Deserialize;

use crate::config::ClientKeys;
use crate::error::{code, ApiError};
use crate::jwt::timestamp;

/// Clock skew tolerated on `nbf`, as Kling's own tokens carry `nbf = now - 5`.
pub const NOT_BEFORE_LEEWAY_SECS: i64 = 5;
/// The furthest ahead a token may expire.
pub const MAX_LIFETIME_SECS: i64 = 3600;

#[derive(Debug, Deserialize)]
struct KlingClaims {
    iss: String,
}

/// The issuer a token claims, read without verifying anything (to tell a Kling-style token
/// from a browser token before choosing how to verify it).
pub fn claimed_issuer(token: &str) -> Option<String> {
    let untrusted = UntrustedToken::new(token).ok()?;
    untrusted.deserialize_claims_unchecked::<KlingClaims>().ok().map(|claims| claims.custom.iss)
}

/// Verifies a Kling-style token at `now_secs`; returns the client's name.
pub fn verify(clients: &ClientKeys, token: &str, now_secs: i64) -> Result<String, ApiError> {
    let invalid = |why: &str| ApiError::new(401, code::AUTH_INVALID, format!("Authorization: token {why}"));
    let untrusted = UntrustedToken::new(token).map_err(|_| invalid("is malformed"))?;
    if untrusted.algorithm() != "HS256" {
        return Err(invalid("must be signed with HS256"));
    }
    let issuer = claimed_issuer(token).ok_or_else(|| invalid("has no iss (your client name)"))?;
    let key = clients
        .key(&issuer)
        .ok_or_else(|| invalid("names an issuer that is not a client of this deployment"))?;
    let verified = Hs256
        .validator::<KlingClaims>(&Hs256Key::new(key.expose().as_bytes()))
        .validate(&untrusted)
        .map_err(|error| match error {
            ValidationError::MalformedClaims(_) => invalid("has malformed claims"),
            _ => invalid("has an invalid signature (sign it with your client's key)"),
        })?;
    let claims: &Claims<KlingClaims> = verified.claims();
    let maturity = TimeOptions::new(Duration::seconds(NOT_BEFORE_LEEWAY_SECS), || timestamp(now_secs));
    claims.validate_maturity(&maturity).map_err(|error| match error {
        ValidationError::NotMature => {
            ApiError::new(401, code::AUTH_NOT_YET_VALID, "Authorization: token is not valid yet (nbf)")
        }
        _ => invalid("has no nbf"),
    })?;
    let clock = TimeOptions::new(Duration::zero(), || timestamp(now_secs));
    claims.validate_expiration(&clock).map_err(|error| match error {
        ValidationError::Expired => {
            ApiError::new(401, code::AUTH_EXPIRED, "Authorization: token has expired (exp)")
        }
        _ => invalid("has no exp"),
    })?;
    let expires = claims.expiration.map(|exp| exp.timestamp()).unwrap_or(i64::MAX);
    // A token is valid strictly before `exp` (RFC 7519), as Kling treats it.
    if expires <= now_secs {
        return Err(ApiError::new(401, code::AUTH_EXPIRED, "Authorization: token has expired (exp)"));
    }
    if expires - now_secs > MAX_LIFETIME_SECS {
        return Err(invalid("expires more than an hour ahead (Kling's tokens last 30 minutes)"));
    }
    Ok(issuer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::sign_kling_token;
    use base64ct::{Base64UrlUnpadded, Encoding};
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    const NOW: i64 = 1_800_000_000;

    fn clients() -> ClientKeys {
        ClientKeys::parse("web:pk_web_secret_key,ops:pk_ops_secret_key").unwrap()
    }

    fn craft(header: &str, claims: &str, key: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            Base64UrlUnpadded::encode_string(header.as_bytes()),
            Base64UrlUnpadded::encode_string(claims.as_bytes())
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", Base64UrlUnpadded::encode_string(&mac.finalize().into_bytes()))
    }

    #[test]
    fn a_token_signed_as_klings_sdks_sign_names_its_client() {
        // Exactly what Kling's clients send: iss = access key, signed with the secret key.
        let token = sign_kling_token("web", "pk_web_secret_key", NOW);
        assert_eq!(verify(&clients(), &token, NOW), Ok("web".to_owned()));
        assert_eq!(claimed_issuer(&token).as_deref(), Some("web"));
    }

    #[test]
    fn klings_codes_for_time() {
        let early = craft(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &format!(r#"{{"iss":"web","nbf":{},"exp":{}}}"#, NOW + 60, NOW + 600),
            b"pk_web_secret_key",
        );
        assert_eq!(verify(&clients(), &early, NOW).unwrap_err().code, 1003);
        let token = sign_kling_token("web", "pk_web_secret_key", NOW);
        assert_eq!(verify(&clients(), &token, NOW + 1800).unwrap_err().code, 1004);
        assert!(verify(&clients(), &token, NOW - 9).is_ok(), "nbf is now - 5, with 5 s of skew");
    }

    #[test]
    fn wrong_keys_algorithms_issuers_and_lifetimes_are_1002() {
        let other_key = sign_kling_token("web", "pk_ops_secret_key", NOW);
        let error = verify(&clients(), &other_key, NOW).unwrap_err();
        assert_eq!((error.status, error.code), (401, 1002), "naming one client, signed with another's key");
        assert!(error.message.contains("signature"), "{}", error.message);
        let stranger = sign_kling_token("mallory", "pk_web_secret_key", NOW);
        assert!(verify(&clients(), &stranger, NOW).unwrap_err().message.contains("not a client"));
        let claims = format!(r#"{{"iss":"web","nbf":{},"exp":{}}}"#, NOW - 5, NOW + 600);
        for header in [r#"{"alg":"HS512"}"#, r#"{"alg":"none"}"#, r#"{"alg":"RS256"}"#] {
            let error = verify(&clients(), &craft(header, &claims, b"pk_web_secret_key"), NOW).unwrap_err();
            assert_eq!(error.code, 1002, "{header}");
        }
        let long = craft(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"iss":"web","nbf":{},"exp":{}}}"#, NOW - 5, NOW + 3601),
            b"pk_web_secret_key",
        );
        assert!(verify(&clients(), &long, NOW).unwrap_err().message.contains("more than an hour"));
        let no_nbf = craft(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"iss":"web","exp":{}}}"#, NOW + 600),
            b"pk_web_secret_key",
        );
        assert_eq!(verify(&clients(), &no_nbf, NOW).unwrap_err().code, 1002);
        for garbage in ["", "a.b.c", "eyJ.eyJ.x"] {
            assert_eq!(verify(&clients(), garbage, NOW).unwrap_err().status, 401);
        }
    }
}
