//! Short-lived browser tokens: what an app's server hands its users' browsers instead of a
//! key from `PROXY_API_KEYS`, which must never reach a browser.
//!
//! A token is an HS256 JWT signed with `PROXY_TOKEN_SECRET`: `iss` = `kling-edge`, `sub` =
//! the app's user id, `app` = the name of the key that minted it, `iat`/`nbf`/`exp`. It
//! authenticates like a key, as the tenant `{app}/{sub}`, so each user of each app sees
//! only their own tasks. It is refused when expired, not yet valid, badly signed, signed
//! with any algorithm but HS256, or expiring more than an hour ahead (which only a leaked
//! secret could mint). A token also carries `akf`, a keyed fingerprint of the key that
//! minted it (an HMAC under the token secret, so it reveals nothing about the key):
//! rotating that key, removing it from `PROXY_API_KEYS`, or rotating the secret revokes
//! its tokens.

use chrono::Duration;
use jwt_compact::{
    alg::{Hs256, Hs256Key},
    AlgorithmExt, Claims, TimeOptions, UntrustedToken, ValidationError,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{code, ApiError};
use crate::jwt::{sign_hs256, timestamp};
use crate::validate::{self, UrlPolicy};

pub const ISSUER: &str = "kling-edge";
pub const DEFAULT_TTL_SECS: u32 = 900;
pub const MAX_TTL_SECS: u32 = 3600;
/// Clock skew tolerated on `nbf` between edge locations.
pub const NOT_BEFORE_LEEWAY_SECS: i64 = 5;
/// `sub` is bounded in bytes, not characters: it becomes part of a tenant name, which must
/// fit every backend's key limits (128 emoji would be 512 bytes).
pub const MAX_SUB_BYTES: usize = 128;
pub const SUB_RULE: &str = "must be 1 to 128 bytes of UTF-8, without spaces, control characters, ':' or '/'";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BrowserClaims {
    iss: String,
    sub: String,
    app: String,
    /// [`app_key_fingerprint`] of the minting key.
    akf: String,
    /// The only webhook this token's tasks may be forwarded to, set by the app's server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cbu: Option<String>,
    /// The user's credits per day (thousandths), set by the app's server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bud: Option<u64>,
}

/// Who a valid browser token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserIdentity {
    /// The `PROXY_API_KEYS` name whose key minted the token.
    pub app: String,
    pub sub: String,
    /// The minting key's fingerprint, to compare with the key the app has now.
    pub app_key_fingerprint: String,
    /// The webhook the app chose for this user's tasks when minting, if any.
    pub callback_url: Option<String>,
    /// The user's credits per day (thousandths) the app gave when minting, if any.
    pub budget: Option<u64>,
}

impl BrowserIdentity {
    /// The tenant: the app's name plus the user, so users of one app never share tasks.
    pub fn tenant(&self) -> String {
        format!("{}/{}", self.app, self.sub)
    }
}

/// A minted token and its expiry (epoch ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Minted {
    pub token: String,
    pub expires_at: i64,
}

/// A validated `POST /v1/tokens` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintRequest {
    pub sub: String,
    pub ttl_secs: u32,
    /// The webhook every task of this token is forwarded to. A browser cannot choose its
    /// own: only the app's server decides where the worker posts.
    pub callback_url: Option<String>,
    /// The user's credits per day (thousandths), capped by the app's own budget.
    pub budget: Option<u64>,
}

/// Parses `{"sub": "...", "ttl_seconds": N, "callback_url": "https://...", "budget": 50}`.
pub fn mint_request(body: &[u8], policy: UrlPolicy) -> Result<MintRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body: must be valid JSON ({e})")))?;
    let Value::Object(mut fields) = value else {
        return Err(ApiError::bad_request("body: must be a JSON object"));
    };
    if let Some(unknown) =
        fields.keys().find(|k| !matches!(k.as_str(), "sub" | "ttl_seconds" | "callback_url" | "budget"))
    {
        let shown: String = unknown.chars().take(40).collect();
        return Err(ApiError::bad_param(
            &shown,
            "unknown field (expected one of sub, ttl_seconds, callback_url, budget)",
        ));
    }
    let sub = match fields.remove("sub") {
        Some(Value::String(sub)) if is_valid_sub(&sub) => sub,
        Some(Value::String(_)) => return Err(ApiError::bad_param("sub", SUB_RULE)),
        None | Some(Value::Null) => return Err(ApiError::bad_param("sub", "is required (the user's id)")),
        Some(_) => return Err(ApiError::bad_param("sub", "must be a string")),
    };
    let ttl_rule =
        || ApiError::bad_param("ttl_seconds", format!("must be a whole number from 1 to {MAX_TTL_SECS}"));
    let ttl_secs = match fields.remove("ttl_seconds") {
        None | Some(Value::Null) => DEFAULT_TTL_SECS,
        Some(Value::Number(n)) => {
            n.as_u64().filter(|s| (1..=u64::from(MAX_TTL_SECS)).contains(s)).ok_or_else(ttl_rule)? as u32
        }
        Some(_) => return Err(ttl_rule()),
    };
    let callback_url = match fields.remove("callback_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => Some(validate::http_url("callback_url", &raw, policy)?.into()),
        Some(_) => return Err(ApiError::bad_param("callback_url", "must be a string")),
    };
    let budget_rule = || {
        ApiError::bad_param(
            "budget",
            "must be the user's credits per day: a number of 0 or more, with up to 3 decimals",
        )
    };
    let budget = match fields.remove("budget") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            Some(crate::record::budget::parse_credits(&n.to_string()).ok_or_else(budget_rule)?)
        }
        Some(_) => return Err(budget_rule()),
    };
    Ok(MintRequest { sub, ttl_secs, callback_url, budget })
}

fn is_valid_sub(sub: &str) -> bool {
    (1..=MAX_SUB_BYTES).contains(&sub.len())
        && !sub.chars().any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/')
}

/// A fingerprint of an app key (given as its SHA-256): 64 bits of an HMAC under the token
/// secret, hex. Without the secret it says nothing about the key.
pub fn app_key_fingerprint(secret: &[u8], key_digest: &[u8; 32]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"kling-edge app key\0");
    mac.update(key_digest);
    crate::ids::hex(&mac.finalize().into_bytes()[..8])
}

/// Mints a token for `request.sub`, on behalf of the app `app` whose key has SHA-256
/// `app_key_digest`.
pub fn mint(
    secret: &[u8],
    app: &str,
    app_key_digest: &[u8; 32],
    request: &MintRequest,
    now_secs: i64,
) -> Minted {
    let expires = now_secs + i64::from(request.ttl_secs);
    let mut claims = Claims::new(BrowserClaims {
        iss: ISSUER.to_owned(),
        sub: request.sub.clone(),
        app: app.to_owned(),
        akf: app_key_fingerprint(secret, app_key_digest),
        cbu: request.callback_url.clone(),
        bud: request.budget,
    });
    claims.issued_at = Some(timestamp(now_secs));
    claims.not_before = Some(timestamp(now_secs));
    claims.expiration = Some(timestamp(expires));
    let token = sign_hs256(&claims, secret);
    Minted { token, expires_at: expires * 1000 }
}

/// Whether a bearer value has a JWT's shape (and so should be verified as a token).
pub fn looks_like_jwt(bearer: &str) -> bool {
    bearer.split('.').count() == 3 && bearer.starts_with("eyJ")
}

/// Verifies a browser token at `now_secs`.
pub fn verify(secret: &[u8], token: &str, now_secs: i64) -> Result<BrowserIdentity, ApiError> {
    let invalid =
        |why: &str| ApiError::new(401, code::AUTH_INVALID, format!("Authorization: browser token {why}"));
    let untrusted = UntrustedToken::new(token).map_err(|_| invalid("is malformed"))?;
    let verified =
        Hs256.validator::<BrowserClaims>(&Hs256Key::new(secret)).validate(&untrusted).map_err(|error| {
            match error {
                ValidationError::AlgorithmMismatch { .. } => invalid("must be signed with HS256"),
                ValidationError::MalformedClaims(_) => invalid("has malformed claims"),
                _ => invalid("has an invalid signature"),
            }
        })?;
    let claims = verified.claims();
    let clock = TimeOptions::new(Duration::zero(), || timestamp(now_secs));
    claims.validate_expiration(&clock).map_err(|error| match error {
        ValidationError::Expired => {
            ApiError::new(401, code::AUTH_EXPIRED, "Authorization: browser token has expired")
        }
        _ => invalid("has no expiry"),
    })?;
    let maturity = TimeOptions::new(Duration::seconds(NOT_BEFORE_LEEWAY_SECS), || timestamp(now_secs));
    claims.validate_maturity(&maturity).map_err(|error| match error {
        ValidationError::NotMature => {
            ApiError::new(401, code::AUTH_NOT_YET_VALID, "Authorization: browser token is not valid yet")
        }
        _ => invalid("has no nbf"),
    })?;
    let expires = claims.expiration.map(|exp| exp.timestamp()).unwrap_or(i64::MAX);
    if expires - now_secs > i64::from(MAX_TTL_SECS) {
        return Err(invalid("expires more than one hour ahead"));
    }
    let custom = &claims.custom;
    if custom.iss != ISSUER || !is_valid_sub(&custom.sub) || custom.app.is_empty() {
        return Err(invalid("was not issued by this worker"));
    }
    Ok(BrowserIdentity {
        app: custom.app.clone(),
        sub: custom.sub.clone(),
        app_key_fingerprint: custom.akf.clone(),
        callback_url: custom.cbu.clone(),
        budget: custom.bud,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64ct::{Base64UrlUnpadded, Encoding};
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    const SECRET: &[u8] = b"browser-token-secret-for-unit-tests-0123";
    const NOW: i64 = 1_800_000_000;
    const KEY_DIGEST: [u8; 32] = [7; 32];

    fn mint(secret: &[u8], app: &str, request: &MintRequest, now: i64) -> Minted {
        super::mint(secret, app, &KEY_DIGEST, request, now)
    }

    fn alice(ttl_secs: u32) -> MintRequest {
        MintRequest { sub: "alice".into(), ttl_secs, callback_url: None, budget: None }
    }

    /// A token with any header and claims, signed with HMAC-SHA256 and `secret`.
    fn craft(header: &str, claims: &str, secret: &[u8]) -> String {
        let signing_input = format!(
            "{}.{}",
            Base64UrlUnpadded::encode_string(header.as_bytes()),
            Base64UrlUnpadded::encode_string(claims.as_bytes())
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", Base64UrlUnpadded::encode_string(&mac.finalize().into_bytes()))
    }

    fn claims(nbf: i64, exp: i64) -> String {
        format!(r#"{{"iss":"kling-edge","sub":"alice","app":"web","akf":"00","nbf":{nbf},"exp":{exp}}}"#)
    }

    #[test]
    fn fingerprints_depend_on_key_and_secret() {
        let fingerprint = app_key_fingerprint(SECRET, &KEY_DIGEST);
        assert_eq!(fingerprint.len(), 16);
        assert_ne!(fingerprint, app_key_fingerprint(SECRET, &[8; 32]));
        assert_ne!(fingerprint, app_key_fingerprint(b"another-secret-another-secret-01", &KEY_DIGEST));
    }

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    #[test]
    fn minted_tokens_verify_as_their_tenant() {
        let minted = mint(SECRET, "web", &alice(900), NOW);
        assert_eq!(minted.expires_at, (NOW + 900) * 1000);
        assert!(looks_like_jwt(&minted.token));
        let identity = verify(SECRET, &minted.token, NOW + 10).unwrap();
        assert_eq!(identity.app, "web");
        assert_eq!(identity.sub, "alice");
        assert_eq!(identity.app_key_fingerprint, app_key_fingerprint(SECRET, &KEY_DIGEST));
        assert_eq!(identity.tenant(), "web/alice");
    }

    #[test]
    fn expired_and_not_yet_valid_tokens_are_refused_with_klings_codes() {
        let minted = mint(SECRET, "web", &alice(60), NOW);
        assert_eq!(verify(SECRET, &minted.token, NOW + 61).unwrap_err().code, 1004);
        let early = craft(HS256, &claims(NOW + 60, NOW + 600), SECRET);
        let error = verify(SECRET, &early, NOW).unwrap_err();
        assert_eq!((error.status, error.code), (401, 1003));
        assert!(
            verify(SECRET, &craft(HS256, &claims(NOW + 5, NOW + 600), SECRET), NOW).is_ok(),
            "5 s of skew"
        );
    }

    #[test]
    fn wrong_signatures_and_algorithms_are_refused() {
        let minted = mint(SECRET, "web", &alice(60), NOW);
        assert_eq!(
            verify(b"another-secret-another-secret-another", &minted.token, NOW).unwrap_err().code,
            1002
        );
        let good_claims = claims(NOW, NOW + 600);
        for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"HS512"}"#, r#"{"alg":"RS256"}"#] {
            let error = verify(SECRET, &craft(header, &good_claims, SECRET), NOW).unwrap_err();
            assert_eq!(error.code, 1002, "{header}");
            assert!(error.message.contains("HS256"), "{header}: {}", error.message);
        }
        let unsigned = format!(
            "{}.{}.",
            Base64UrlUnpadded::encode_string(br#"{"alg":"none"}"#),
            Base64UrlUnpadded::encode_string(good_claims.as_bytes())
        );
        assert_eq!(verify(SECRET, &unsigned, NOW).unwrap_err().code, 1002);
        let mut tampered = minted.token.clone();
        tampered.insert(tampered.len() - 3, 'x');
        assert_eq!(verify(SECRET, &tampered, NOW).unwrap_err().code, 1002);
    }

    #[test]
    fn tokens_expiring_more_than_an_hour_ahead_are_refused() {
        assert!(verify(SECRET, &craft(HS256, &claims(NOW, NOW + 3600), SECRET), NOW).is_ok());
        let error = verify(SECRET, &craft(HS256, &claims(NOW, NOW + 3601), SECRET), NOW).unwrap_err();
        assert!(error.message.contains("more than one hour"), "{}", error.message);
    }

    #[test]
    fn tokens_must_have_our_claims() {
        for bad in [
            format!(
                r#"{{"iss":"someone","sub":"alice","app":"web","akf":"0","nbf":{NOW},"exp":{}}}"#,
                NOW + 60
            ),
            format!(
                r#"{{"iss":"kling-edge","sub":"a/b","app":"web","akf":"0","nbf":{NOW},"exp":{}}}"#,
                NOW + 60
            ),
            format!(r#"{{"iss":"kling-edge","sub":"alice","app":"web","akf":"0","exp":{}}}"#, NOW + 60),
            format!(r#"{{"iss":"kling-edge","sub":"alice","app":"web","akf":"0","nbf":{NOW}}}"#),
            format!(r#"{{"iss":"kling-edge","sub":"alice","akf":"0","nbf":{NOW},"exp":{}}}"#, NOW + 60),
            format!(r#"{{"iss":"kling-edge","sub":"alice","app":"web","nbf":{NOW},"exp":{}}}"#, NOW + 60),
        ] {
            assert!(verify(SECRET, &craft(HS256, &bad, SECRET), NOW).is_err(), "{bad}");
        }
        for garbage in ["", "a.b.c", "eyJ.eyJ.x", "not a token"] {
            assert_eq!(verify(SECRET, garbage, NOW).unwrap_err().status, 401, "{garbage}");
        }
    }

    #[test]
    fn the_apps_webhook_travels_in_the_token() {
        let request = mint_request(
            br#"{"sub":"alice","callback_url":"https://app.example.com/hooks/kling"}"#,
            UrlPolicy::default(),
        )
        .unwrap();
        let minted = super::mint(SECRET, "web", &KEY_DIGEST, &request, NOW);
        let identity = verify(SECRET, &minted.token, NOW).unwrap();
        assert_eq!(identity.callback_url.as_deref(), Some("https://app.example.com/hooks/kling"));
        let without = verify(SECRET, &mint(SECRET, "web", &alice(60), NOW).token, NOW).unwrap();
        assert_eq!(without.callback_url, None);
    }

    #[test]
    fn mint_requests() {
        assert_eq!(
            mint_request(br#"{"sub":"alice"}"#, UrlPolicy::default()).unwrap(),
            alice(DEFAULT_TTL_SECS)
        );
        assert_eq!(
            mint_request(br#"{"sub":"u-1@example.com","ttl_seconds":3600}"#, UrlPolicy::default())
                .unwrap()
                .ttl_secs,
            3600
        );
        for (body, field) in [
            (&br#"{}"#[..], "sub"),
            (br#"{"sub":""}"#, "sub"),
            (br#"{"sub":"a b"}"#, "sub"),
            (br#"{"sub":"a:b"}"#, "sub"),
            (br#"{"sub":5}"#, "sub"),
            (br#"{"sub":"a","ttl_seconds":3601}"#, "ttl_seconds"),
            (br#"{"sub":"a","ttl_seconds":0}"#, "ttl_seconds"),
            (br#"{"sub":"a","ttl_seconds":1.5}"#, "ttl_seconds"),
            (br#"{"sub":"a","ttl_seconds":"60"}"#, "ttl_seconds"),
            (br#"{"sub":"a","scope":"admin"}"#, "scope"),
            (br#"{"sub":"a","callback_url":"http://127.0.0.1/hook"}"#, "callback_url"),
            (br#"{"sub":"a","callback_url":5}"#, "callback_url"),
            (b"[]", "body"),
            (b"nope", "body"),
        ] {
            let error = mint_request(body, UrlPolicy::default()).unwrap_err();
            assert_eq!(error.status, 400);
            assert!(error.message.starts_with(field), "{}", error.message);
        }
        let long = format!(r#"{{"sub":"{}"}}"#, "é".repeat(65));
        assert!(mint_request(long.as_bytes(), UrlPolicy::default()).is_err(), "130 bytes");
        let emoji = format!(r#"{{"sub":"{}"}}"#, "🙂".repeat(33));
        let error = mint_request(emoji.as_bytes(), UrlPolicy::default()).unwrap_err();
        assert!(error.message.contains("128 bytes"), "{}", error.message);
        let fits = format!(r#"{{"sub":"{}"}}"#, "🙂".repeat(32));
        assert_eq!(mint_request(fits.as_bytes(), UrlPolicy::default()).unwrap().sub.len(), 128);
    }
}
