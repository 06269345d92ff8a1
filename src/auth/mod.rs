//! Who is calling: the client behind an `Authorization: Bearer <credential>` header.
//!
//! A credential is a key from `PROXY_API_KEYS` (an app's server), a Kling-style JWT signed
//! with such a key (Kling's own SDKs, see `crate::auth::client_jwt`), or a browser token minted by
//! a key (see `crate::auth::browser_token`). Every route but `/health` and Kling's
//! callbacks needs a client. The client's tenant owns its tasks and is its rate-limit key:
//! the key's name for a server key, `{name}/{sub}` for a browser token.

pub mod browser_token;
pub mod client_jwt;
pub mod cors;

use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::error::{code, ApiError};
use crate::record::budget::Millicredits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// A key from `PROXY_API_KEYS`: may mint browser tokens.
    ServerKey,
    /// A browser token: may create and read its own tasks, nothing more.
    BrowserToken,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub tenant: String,
    /// The `PROXY_API_KEYS` name behind the credential.
    pub app: String,
    pub kind: ClientKind,
    /// For a browser token: the webhook its app set when minting it, the only one its
    /// tasks may be forwarded to.
    pub token_callback_url: Option<String>,
    /// For a browser token: the credits per day its app gave its user (`budget`), if any.
    pub token_budget: Option<Millicredits>,
}

impl Client {
    /// The client's credits per UTC day: a server key's `CREDIT_BUDGETS`; a browser user's
    /// token `budget`, capped by its app's (or its app's, when the token has none).
    pub fn budget(&self, budgets: &crate::config::CreditBudgets) -> Option<Millicredits> {
        let app = budgets.of(&self.app);
        match (self.kind, self.token_budget) {
            (ClientKind::BrowserToken, Some(own)) => Some(app.map_or(own, |app| app.min(own))),
            _ => app,
        }
    }

    /// Only a server key may do `action` (mint tokens, read the webhook secret).
    pub fn require_server_key(&self, action: &str) -> Result<(), ApiError> {
        match self.kind {
            ClientKind::ServerKey => Ok(()),
            ClientKind::BrowserToken => Err(ApiError::new(
                403,
                code::NO_PERMISSION,
                format!("Authorization: a browser token cannot {action}; use your server's key"),
            )),
        }
    }

    /// The webhook this client's new task is forwarded to, given the body's `callback_url`.
    /// A server key may name any (public) URL. A browser token may not choose one: its
    /// tasks go to the webhook its app set when minting it, if any, and a `callback_url`
    /// naming another is refused, so a browser user cannot aim the app's signed webhooks
    /// anywhere.
    pub fn webhook_for_create(&self, requested: Option<String>) -> Result<Option<String>, ApiError> {
        match (self.kind, requested) {
            (ClientKind::ServerKey, requested) => Ok(requested),
            (ClientKind::BrowserToken, None) => Ok(self.token_callback_url.clone()),
            (ClientKind::BrowserToken, Some(url)) if Some(&url) == self.token_callback_url.as_ref() => Ok(Some(url)),
            (ClientKind::BrowserToken, Some(_)) => Err(ApiError::new(
                403,
                code::NO_PERMISSION,
                "callback_url: a browser token cannot choose a webhook; its app sets one when minting the token",
            )),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
pub fn bearer(header: Option<&str>) -> Result<&str, ApiError> {
    let header = header.map(str::trim).filter(|h| !h.is_empty()).ok_or_else(ApiError::auth_missing)?;
    let (scheme, token) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::auth_invalid("must use the Bearer scheme"));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::auth_missing());
    }
    Ok(token)
}

/// Authenticates a request's `Authorization` header at time `now_secs`.
pub fn authenticate(config: &Config, header: Option<&str>, now_secs: i64) -> Result<Client, ApiError> {
    let credential = bearer(header)?;
    if let Some(name) = config.clients.tenant_for(credential) {
        return Ok(Client {
            tenant: name.to_owned(),
            app: name.to_owned(),
            kind: ClientKind::ServerKey,
            token_callback_url: None,
            token_budget: None,
        });
    }
    if !browser_token::looks_like_jwt(credential) {
        return Err(ApiError::auth_invalid("unknown API key"));
    }
    if client_jwt::claimed_issuer(credential).is_some_and(|issuer| issuer != browser_token::ISSUER) {
        let name = client_jwt::verify(&config.clients, credential, now_secs)?;
        return Ok(Client {
            tenant: name.clone(),
            app: name,
            kind: ClientKind::ServerKey,
            token_callback_url: None,
            token_budget: None,
        });
    }
    let Some(secret) = &config.token_secret else {
        return Err(ApiError::auth_invalid(
            "browser tokens are not enabled here (PROXY_TOKEN_SECRET is not set)",
        ));
    };
    let identity = browser_token::verify(secret.expose().as_bytes(), credential, now_secs)?;
    let current_key = config
        .clients
        .key_digest(&identity.app)
        .map(|digest| browser_token::app_key_fingerprint(secret.expose().as_bytes(), digest));
    let same_key = current_key.is_some_and(|expected| {
        bool::from(expected.as_bytes().ct_eq(identity.app_key_fingerprint.as_bytes()))
    });
    if !same_key {
        return Err(ApiError::auth_invalid(
            "browser token minted by a key that was since rotated or removed",
        ));
    }
    Ok(Client {
        tenant: identity.tenant(),
        app: identity.app,
        kind: ClientKind::BrowserToken,
        token_callback_url: identity.callback_url,
        token_budget: identity.budget,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::browser_token::{mint, MintRequest};

    const SECRET: &str = "browser-token-secret-for-unit-tests-0123";
    const NOW: i64 = 1_800_000_000;

    fn config(token_secret: bool) -> Config {
        let mut settings = vec![
            ("KLING_API_KEY", "kling-example"),
            ("PROXY_API_KEYS", "web:k_1_web_example_key,ops:k_2_ops_example_key"),
        ];
        if token_secret {
            settings.push(("PROXY_TOKEN_SECRET", SECRET));
        }
        Config::from_lookup(|name| settings.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
            .unwrap()
    }

    fn token(app: &str, key: &str, sub: &str) -> String {
        use sha2::{Digest, Sha256};
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        mint(
            SECRET.as_bytes(),
            app,
            &digest,
            &MintRequest { sub: sub.into(), ttl_secs: 600, callback_url: None, budget: None },
            NOW,
        )
        .token
    }

    #[test]
    fn known_key_names_its_tenant() {
        let client = authenticate(&config(false), Some("Bearer k_1_web_example_key"), NOW).unwrap();
        assert_eq!((client.tenant.as_str(), client.kind), ("web", ClientKind::ServerKey));
        assert_eq!(
            authenticate(&config(false), Some("bearer  k_2_ops_example_key "), NOW).unwrap().tenant,
            "ops"
        );
    }

    #[test]
    fn browser_tokens_are_their_own_tenants() {
        let header = format!("Bearer {}", token("web", "k_1_web_example_key", "alice"));
        let client = authenticate(&config(true), Some(&header), NOW + 1).unwrap();
        assert_eq!(client.tenant, "web/alice");
        assert_eq!(client.app, "web");
        assert_eq!(client.kind, ClientKind::BrowserToken);
        assert!(client.require_server_key("mint tokens").is_err());
        let server = authenticate(&config(true), Some("Bearer k_1_web_example_key"), NOW).unwrap();
        assert!(server.require_server_key("mint tokens").is_ok());
    }

    #[test]
    fn browser_tokens_need_the_secret_and_the_key_that_minted_them() {
        let header = format!("Bearer {}", token("web", "k_1_web_example_key", "alice"));
        let error = authenticate(&config(false), Some(&header), NOW).unwrap_err();
        assert_eq!((error.status, error.code), (401, 1002));
        let removed = format!("Bearer {}", token("gone", "k_9", "alice"));
        assert_eq!(authenticate(&config(true), Some(&removed), NOW).unwrap_err().code, 1002);
        let rotated = format!("Bearer {}", token("web", "k_old", "alice"));
        let error = authenticate(&config(true), Some(&rotated), NOW).unwrap_err();
        assert!(error.message.contains("rotated"), "{}", error.message);
    }

    #[test]
    fn missing_credentials_are_1001() {
        for header in [None, Some(""), Some("  "), Some("Bearer"), Some("Bearer   ")] {
            let error = authenticate(&config(true), header, NOW).unwrap_err();
            assert_eq!((error.status, error.code), (401, 1001), "{header:?}");
        }
    }

    #[test]
    fn wrong_credentials_are_1002_and_do_not_echo_the_key() {
        for header in [
            "Bearer k_3_unknown_example",
            "Basic d2ViOmtfMQ==",
            "Bearer k_1_web_example_keyx",
            "Token k_1_web_example_key",
        ] {
            let error = authenticate(&config(true), Some(header), NOW).unwrap_err();
            assert_eq!((error.status, error.code), (401, 1002), "{header}");
            assert!(!error.message.contains("k_"), "{}", error.message);
        }
    }

    #[test]
    fn only_a_server_key_chooses_a_webhook() {
        let hook = "https://app.example.com/hook".to_owned();
        let server = authenticate(&config(true), Some("Bearer k_1_web_example_key"), NOW).unwrap();
        assert_eq!(server.webhook_for_create(Some(hook.clone())), Ok(Some(hook.clone())));
        assert_eq!(server.webhook_for_create(None), Ok(None));

        let header = format!("Bearer {}", token("web", "k_1_web_example_key", "alice"));
        let mut browser = authenticate(&config(true), Some(&header), NOW).unwrap();
        assert_eq!(browser.webhook_for_create(None), Ok(None));
        let error = browser.webhook_for_create(Some("https://victim.example.com/hook".into())).unwrap_err();
        assert_eq!((error.status, error.code), (403, 1103));
        assert!(error.message.starts_with("callback_url:"), "{}", error.message);

        browser.token_callback_url = Some(hook.clone());
        assert_eq!(browser.webhook_for_create(None), Ok(Some(hook.clone())), "the app's webhook applies");
        assert_eq!(browser.webhook_for_create(Some(hook.clone())), Ok(Some(hook)));
        assert!(browser.webhook_for_create(Some("https://victim.example.com/hook".into())).is_err());
    }

    #[test]
    fn kling_style_tokens_authenticate_as_their_client() {
        let token = crate::jwt::sign_kling_token("ops", "k_2_ops_example_key", NOW);
        let client = authenticate(&config(true), Some(&format!("Bearer {token}")), NOW).unwrap();
        assert_eq!((client.tenant.as_str(), client.kind), ("ops", ClientKind::ServerKey));
        let forged = crate::jwt::sign_kling_token("ops", "k_1_web_example_key", NOW);
        assert_eq!(
            authenticate(&config(false), Some(&format!("Bearer {forged}")), NOW).unwrap_err().code,
            1002
        );
        let expired = authenticate(&config(false), Some(&format!("Bearer {token}")), NOW + 1800).unwrap_err();
        assert_eq!(expired.code, 1004);
    }
}
