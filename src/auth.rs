//! Who is calling: the client behind an `Authorization: Bearer <key>` header.
//!
//! Every route but `/health` needs a client. The client's name from `PROXY_API_KEYS` is its
//! tenant: the unit that owns tasks and is rate limited.

use crate::config::ClientKeys;
use crate::error::ApiError;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Owns the caller's tasks; also the rate-limit key.
    pub tenant: String,
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

/// Authenticates a request's `Authorization` header against the configured client keys.
pub fn authenticate(keys: &ClientKeys, header: Option<&str>) -> Result<Client, ApiError> {
    let token = bearer(header)?;
    match keys.tenant_for(token) {
        Some(name) => Ok(Client { tenant: name.to_owned() }),
        None => Err(ApiError::auth_invalid("unknown API key")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ClientKeys {
        ClientKeys::parse("web:k_1,ops:k_2").unwrap()
    }

    #[test]
    fn known_key_names_its_tenant() {
        assert_eq!(authenticate(&keys(), Some("Bearer k_1")).unwrap().tenant, "web");
        assert_eq!(authenticate(&keys(), Some("bearer  k_2 ")).unwrap().tenant, "ops");
    }

    #[test]
    fn missing_credentials_are_1001() {
        for header in [None, Some(""), Some("  "), Some("Bearer"), Some("Bearer   ")] {
            let error = authenticate(&keys(), header).unwrap_err();
            assert_eq!((error.status, error.code), (401, 1001), "{header:?}");
        }
    }

    #[test]
    fn wrong_credentials_are_1002_and_do_not_echo_the_key() {
        for header in ["Bearer k_3", "Basic d2ViOmtfMQ==", "Bearer k_1x", "Token k_1"] {
            let error = authenticate(&keys(), Some(header)).unwrap_err();
            assert_eq!((error.status, error.code), (401, 1002), "{header}");
            assert!(!error.message.contains("k_"), "{}", error.message);
        }
    }
}
