//! The deployment's Kling accounts: each one's credential, email and concurrency, read from
//! the settings, and which account a create goes to when the line is off.
//!
//! One account is what most deployments have: `KLING_ACCESS_KEY` + `KLING_SECRET_KEY` (or
//! `KLING_API_KEY`), `KLING_ACCOUNT_EMAIL` and `KLING_MAX_CONCURRENCY`, named
//! [`DEFAULT_ACCOUNT`]. Several are named in `KLING_ACCOUNTS`
//! (`name:email:concurrency,...`, the var) with their credentials in `KLING_ACCOUNT_KEYS`
//! (`name:access_key:secret_key` or `name:api_key`, the secret). The first account listed
//! may keep its credential in the one-account settings, so a deployment that grows from one
//! account to several keeps its secrets, its callback URLs and its result links (all keyed
//! by the first account's secret).
//!
//! Every task remembers the account that created it (`TaskRecord::account`), and every later
//! call about it (its polls, the look for a create whose answer never came) goes to that
//! account: Kling knows a task only on its own account. A record made before accounts had
//! names belongs to the first account.

use crate::config::Secret;
use crate::error::ApiError;

/// The name of the account the one-account settings describe.
pub const DEFAULT_ACCOUNT: &str = "default";

/// How the worker authenticates to one Kling account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KlingCredentials {
    /// An API key: sent as the bearer token itself.
    ApiKey(Secret),
    /// An access key and secret key: an HS256 JWT is signed per [`crate::jwt`].
    AccessKey { access_key: Secret, secret_key: Secret },
}

impl KlingCredentials {
    /// The secret half, which keys what the deployment signs (callback URLs, links).
    pub fn secret(&self) -> &str {
        match self {
            KlingCredentials::ApiKey(key) => key.expose(),
            KlingCredentials::AccessKey { secret_key, .. } => secret_key.expose(),
        }
    }
}

/// One Kling account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlingAccount {
    /// Its name in the settings and in the worker's records (1 to 32 letters, digits, `-`,
    /// `_`).
    pub name: String,
    pub credentials: KlingCredentials,
    /// Its email, lowercased: what useapi.net-style calls name in `email`.
    pub email: Option<String>,
    /// How many tasks it runs at once; 0: no bound the worker keeps.
    pub max_concurrency: u32,
}

/// The deployment's accounts, the first one first (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlingAccounts(Vec<KlingAccount>);

impl KlingAccounts {
    /// The one account of the one-account settings.
    pub fn single(credentials: KlingCredentials, email: Option<String>, max_concurrency: u32) -> Self {
        KlingAccounts(vec![KlingAccount {
            name: DEFAULT_ACCOUNT.to_owned(),
            credentials,
            email: email.map(|email| email.trim().to_ascii_lowercase()),
            max_concurrency,
        }])
    }

    /// `KLING_ACCOUNTS` (`name:email:concurrency`, email and concurrency optional) with their
    /// credentials from `KLING_ACCOUNT_KEYS` (`name:access_key:secret_key` or
    /// `name:api_key`). `first_fallback` is the one-account credential, which the first
    /// account may use instead of an entry of its own; `email_fallback` its email.
    pub fn parse(
        accounts: &str,
        keys: Option<&str>,
        first_fallback: Option<KlingCredentials>,
        email_fallback: Option<&str>,
        default_concurrency: u32,
    ) -> Result<Self, ApiError> {
        let problem = |message: &str| ApiError::config("KLING_ACCOUNTS", message);
        let key_problem = |message: &str| ApiError::config("KLING_ACCOUNT_KEYS", message);
        let mut credentials: Vec<(String, KlingCredentials)> = Vec::new();
        for entry in keys.unwrap_or_default().split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            let parts: Vec<&str> = entry.splitn(3, ':').map(str::trim).collect();
            let found = match parts.as_slice() {
                [name, api_key] if !api_key.is_empty() => {
                    (name.to_string(), KlingCredentials::ApiKey(Secret::new(*api_key)))
                }
                [name, access_key, secret_key] if !access_key.is_empty() && !secret_key.is_empty() => (
                    name.to_string(),
                    KlingCredentials::AccessKey {
                        access_key: Secret::new(*access_key),
                        secret_key: Secret::new(*secret_key),
                    },
                ),
                _ => {
                    return Err(key_problem(
                        "is malformed: each entry must be name:access_key:secret_key or name:api_key",
                    ))
                }
            };
            // A name from the secret is never quoted: an entry missing its name would make one
            // of its keys the name.
            if !is_account_name(&found.0) {
                return Err(key_problem("is malformed: a name must be 1 to 32 letters, digits, '-' or '_'"));
            }
            if credentials.iter().any(|(name, _)| *name == found.0) {
                return Err(key_problem("is malformed: an account appears twice"));
            }
            credentials.push(found);
        }
        let mut listed: Vec<KlingAccount> = Vec::new();
        for entry in accounts.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            let mut parts = entry.split(':').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let email = parts.next().filter(|email| !email.is_empty());
            let concurrency = parts.next().filter(|text| !text.is_empty());
            if parts.next().is_some() {
                return Err(problem("is malformed: each entry is name:email:concurrency"));
            }
            if !is_account_name(name) {
                return Err(problem("is malformed: a name must be 1 to 32 letters, digits, '-' or '_'"));
            }
            if listed.iter().any(|account| account.name == name) {
                return Err(problem("is malformed: an account appears twice"));
            }
            if email.is_some_and(|email| !email.contains('@')) {
                return Err(problem("is malformed: an email must contain '@'"));
            }
            let max_concurrency = match concurrency {
                None => default_concurrency,
                Some(text) => text.parse::<u32>().ok().filter(|n| *n <= 10_000).ok_or_else(|| {
                    problem("is malformed: a concurrency must be a whole number from 0 to 10000")
                })?,
            };
            let first = listed.is_empty();
            let own = credentials.iter().position(|(listed_name, _)| listed_name == name);
            let credentials = match (own, first, &first_fallback) {
                (Some(_), true, Some(_)) => {
                    return Err(key_problem(&format!(
                        "gives keys for {name}, which KLING_API_KEY or KLING_ACCESS_KEY give too: keep one"
                    )))
                }
                (Some(at), _, _) => credentials.remove(at).1,
                (None, true, Some(fallback)) => fallback.clone(),
                (None, _, _) => {
                    return Err(key_problem(&format!("has no keys for the account {name} (KLING_ACCOUNTS)")))
                }
            };
            let email = email.or(if first { email_fallback } else { None });
            listed.push(KlingAccount {
                name: name.to_owned(),
                credentials,
                email: email.map(|email| email.trim().to_ascii_lowercase()),
                max_concurrency,
            });
        }
        if !credentials.is_empty() {
            return Err(key_problem("has an entry for an account KLING_ACCOUNTS does not list"));
        }
        if listed.is_empty() {
            return Err(problem("is empty: list at least one account"));
        }
        let emails: Vec<&str> = listed.iter().filter_map(|account| account.email.as_deref()).collect();
        if emails.iter().enumerate().any(|(at, email)| emails[..at].contains(email)) {
            return Err(problem("is malformed: two accounts have one email"));
        }
        Ok(KlingAccounts(listed))
    }

    /// The first account: the one-account settings', or the first of `KLING_ACCOUNTS`.
    pub fn first(&self) -> &KlingAccount {
        &self.0[0]
    }

    pub fn all(&self) -> &[KlingAccount] {
        &self.0
    }

    pub fn named(&self, name: &str) -> Option<&KlingAccount> {
        self.0.iter().find(|account| account.name == name)
    }

    /// The account a task belongs to: the one it names, or (a record from before accounts
    /// had names, or an account since removed from the settings) the first.
    pub fn of_task(&self, name: Option<&str>) -> &KlingAccount {
        name.and_then(|name| self.named(name)).unwrap_or_else(|| self.first())
    }

    /// The account useapi.net's `email` names (case-insensitive).
    pub fn by_email(&self, email: &str) -> Option<&KlingAccount> {
        let email = email.trim();
        self.0
            .iter()
            .find(|account| account.email.as_deref().is_some_and(|own| own.eq_ignore_ascii_case(email)))
    }

    /// Whether creates go through the gate: some account's concurrency is bounded.
    pub fn gated(&self) -> bool {
        self.0.iter().any(|account| account.max_concurrency > 0)
    }

    /// With the line off, the account a create goes to: the one pinned, else one chosen by
    /// `random` (uniform over the accounts).
    pub fn pick_ungated<'a>(&'a self, pinned: Option<&'a KlingAccount>, random: u8) -> &'a KlingAccount {
        pinned.unwrap_or_else(|| &self.0[usize::from(random) % self.0.len()])
    }
}

/// An account name is part of records and callback URLs, so it is kept plain.
pub fn is_account_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(access: &str, secret: &str) -> KlingCredentials {
        KlingCredentials::AccessKey { access_key: Secret::new(access), secret_key: Secret::new(secret) }
    }

    #[test]
    fn several_accounts_with_their_keys_emails_and_concurrency() {
        let accounts = KlingAccounts::parse(
            "main:Team@Example.com:5, spare::3,third",
            Some("main:ak-main:sk-main,spare:api-spare,third:ak-3:sk:with:colons"),
            None,
            None,
            7,
        )
        .unwrap();
        let names: Vec<&str> = accounts.all().iter().map(|account| account.name.as_str()).collect();
        assert_eq!(names, ["main", "spare", "third"]);
        assert_eq!(accounts.first().credentials, pair("ak-main", "sk-main"));
        assert_eq!(accounts.first().email.as_deref(), Some("team@example.com"));
        assert_eq!(
            accounts.named("spare").unwrap().credentials,
            KlingCredentials::ApiKey(Secret::new("api-spare"))
        );
        assert_eq!(accounts.named("spare").unwrap().max_concurrency, 3);
        assert_eq!(accounts.named("third").unwrap().max_concurrency, 7, "the default");
        assert_eq!(accounts.named("third").unwrap().credentials, pair("ak-3", "sk:with:colons"));
        assert_eq!(accounts.by_email(" TEAM@example.com ").unwrap().name, "main");
        assert!(accounts.by_email("other@example.com").is_none());
        assert_eq!(accounts.of_task(Some("spare")).name, "spare");
        assert_eq!(accounts.of_task(None).name, "main", "a record from before names: the first");
        assert_eq!(accounts.of_task(Some("removed")).name, "main");
        assert!(accounts.gated());
    }

    #[test]
    fn the_first_account_may_keep_the_one_account_credential_and_email() {
        let accounts = KlingAccounts::parse(
            "old,new:new@example.com",
            Some("new:api-new"),
            Some(pair("ak", "sk")),
            Some("Old@Example.com"),
            5,
        )
        .unwrap();
        assert_eq!(accounts.first().credentials, pair("ak", "sk"));
        assert_eq!(accounts.first().email.as_deref(), Some("old@example.com"));
        assert_eq!(accounts.named("new").unwrap().email.as_deref(), Some("new@example.com"));
        // Only the first: another account without keys is refused.
        let error = KlingAccounts::parse("old,new", None, Some(pair("ak", "sk")), None, 5).unwrap_err();
        assert!(
            error.message.contains("KLING_ACCOUNT_KEYS") && error.message.contains("new"),
            "{}",
            error.message
        );
        let error =
            KlingAccounts::parse("old", Some("old:api-old"), Some(pair("ak", "sk")), None, 5).unwrap_err();
        assert!(error.message.contains("keep one"), "{}", error.message);
    }

    #[test]
    fn malformed_accounts_name_the_setting_and_never_a_key() {
        for (accounts, keys) in [
            ("", Some("a:secret-value")),
            ("a b", Some("a b:secret-value")),
            ("a,a", Some("a:secret-value")),
            ("a:no-at-sign", Some("a:secret-value")),
            ("a:a@example.com:many", Some("a:secret-value")),
            ("a:a@example.com:5:extra", Some("a:secret-value")),
            ("a:x@example.com,b:x@example.com", Some("a:secret-value,b:secret-value2")),
            ("a", Some("a:secret-value,b:secret-value")),
            ("a", Some("a:secret-value,a:secret-value")),
            ("a", Some("secret-value")),
            ("a", Some("a:secret-value:")),
            ("a", Some("a:x,secret-value:more-secret-value")),
            ("a", Some("a:x,secret.value:more-secret-value")),
        ] {
            let error = KlingAccounts::parse(accounts, keys, None, None, 5).unwrap_err();
            assert_eq!(error.status, 500);
            assert!(error.message.contains("KLING_ACCOUNT"), "{accounts}: {}", error.message);
            assert!(!error.message.contains("secret-value"), "{accounts}: {}", error.message);
        }
    }

    #[test]
    fn without_the_line_creates_spread_over_the_accounts_unless_pinned() {
        let accounts = KlingAccounts::parse("a::0,b::0", Some("a:api-a,b:api-b"), None, None, 5).unwrap();
        assert!(!accounts.gated());
        assert_eq!(accounts.pick_ungated(None, 0).name, "a");
        assert_eq!(accounts.pick_ungated(None, 1).name, "b");
        assert_eq!(accounts.pick_ungated(accounts.named("a"), 1).name, "a");
    }
}
