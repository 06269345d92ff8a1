//! The deployment's settings, read once per request into a validated [`Config`].
//!
//! Settings come from `wrangler.toml` `[vars]`, `wrangler secret put`, or `.dev.vars` locally.
//! This module sees them only through a lookup function, so it never touches `worker::Env`
//! and the rules are tested natively. A missing or malformed setting becomes a 500 that
//! names the setting; the value itself is never quoted, and secrets are held in [`Secret`],
//! whose `Debug` prints nothing.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::accounts::{KlingAccounts, KlingCredentials};
use crate::auth::cors::AllowedOrigins;
use crate::error::ApiError;
use crate::links::capability::CapabilityKey;
use crate::links::result_links::LinkKey;
use crate::links::webhook::WebhookKey;
use crate::probe::video_check::Policy;
use crate::record::budget::{self, Millicredits};
use crate::record::copies::{self, CopySettings};
use crate::schedule::Schedule;

/// A secret string. Its `Debug` output is redacted so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One client of the proxy, from `PROXY_API_KEYS`: a tenant name, its key, and the key's
/// SHA-256 (what a bearer key is compared against).
#[derive(Clone, PartialEq, Eq)]
struct ClientKey {
    name: String,
    key: Secret,
    key_digest: [u8; 32],
}

/// The client keys from `PROXY_API_KEYS` (`name:key,name:key`).
///
/// A bearer key is compared with every key's SHA-256 digest in constant time, so timing
/// reveals nothing; the keys themselves verify Kling-style JWTs a client signs with its key
/// (`crate::auth::client_jwt`), and no `Debug` prints them.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKeys(Vec<ClientKey>);

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|client| &client.name)).finish()
    }
}

impl ClientKeys {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let mut clients: Vec<ClientKey> = Vec::new();
        for entry in raw.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            let (name, key) = entry.split_once(':').ok_or("is malformed: each entry must be name:key")?;
            let (name, key) = (name.trim(), key.trim());
            if !is_client_name(name) {
                return Err("is malformed: a name must be 1 to 32 letters, digits, '-' or '_'");
            }
            if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err("is malformed: a key must be non-empty, without spaces");
            }
            // A key also signs its client's Kling-style JWTs, and carries server powers: a
            // short one can be recovered from a single token offline.
            if key.chars().count() < MIN_CLIENT_KEY_CHARS {
                return Err(
                    "is malformed: a key must be at least 16 characters (openssl rand -hex 24 makes one)",
                );
            }
            let key_digest = digest(key);
            if clients.iter().any(|client| client.name == name) {
                return Err("is malformed: a name appears twice");
            }
            if clients.iter().any(|client| client.key_digest == key_digest) {
                return Err("is malformed: a key appears twice");
            }
            clients.push(ClientKey { name: name.to_owned(), key: Secret::new(key), key_digest });
        }
        if clients.is_empty() {
            return Err("is empty: give at least one name:key pair");
        }
        Ok(ClientKeys(clients))
    }

    /// The name (tenant) whose key this is, if any.
    pub fn tenant_for(&self, presented_key: &str) -> Option<&str> {
        let presented = digest(presented_key);
        let mut found = None;
        for client in &self.0 {
            if bool::from(client.key_digest.ct_eq(&presented)) {
                found = Some(client.name.as_str());
            }
        }
        found
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|client| client.name.as_str())
    }

    /// The SHA-256 of the key named `name`, if there is one.
    pub fn key_digest(&self, name: &str) -> Option<&[u8; 32]> {
        self.0.iter().find(|client| client.name == name).map(|client| &client.key_digest)
    }

    /// The key named `name`, if there is one (it signs that client's Kling-style JWTs).
    pub fn key(&self, name: &str) -> Option<&Secret> {
        self.0.iter().find(|client| client.name == name).map(|client| &client.key)
    }
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// A client name is also a tenant id and part of KV keys, so it is kept plain.
fn is_client_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Every setting the worker reads, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The Kling accounts (`KLING_ACCOUNTS`, or the one of the one-account settings).
    pub accounts: KlingAccounts,
    /// Kling's origin (and optional path prefix), without a trailing slash.
    pub kling_api_base: String,
    pub clients: ClientKeys,
    /// Reserved for local development and tests: accept `video_url`/`callback_url` on
    /// private and local addresses.
    pub allow_private_urls: bool,
    /// How long one call to Kling may take, connection and body together.
    pub kling_timeout_ms: u32,
    /// The origin Kling's callbacks are sent to (`PUBLIC_BASE_URL`); when unset, the origin
    /// of the create request.
    pub public_base_url: Option<String>,
    /// `KLING_WEBHOOK_SECRET`: when set, Kling's callbacks must carry a valid signature.
    pub kling_webhook_key: Option<WebhookKey>,
    /// `PROXY_WEBHOOK_SECRET`: signs the webhooks forwarded to clients. Without it, creates
    /// with a `callback_url` are refused (a client could not verify what it receives).
    pub proxy_webhook_key: Option<WebhookKey>,
    /// `ALLOWED_ORIGINS`: the browser origins granted CORS (none when unset).
    pub allowed_origins: AllowedOrigins,
    /// `PROXY_TOKEN_SECRET`: signs browser tokens; without it `/v1/tokens` is disabled.
    pub token_secret: Option<Secret>,
    /// `FORWARD_RETRY_SECONDS`: the delays between attempts of a client's webhook.
    pub forward_retry: Schedule,
    /// `KLING_POLL_SECONDS`: the delays between polls of a task Kling sends no news about.
    pub kling_poll: Schedule,
    /// Signs the callback capabilities, derived from the Kling credential.
    pub capability_key: CapabilityKey,
    /// `VIDEO_PROBE`: strict (default), lenient or off.
    pub video_probe: Policy,
    /// `VIDEO_PROBE_TIMEOUT_MS`: how long measuring one video may take, all its reads together.
    pub video_probe_timeout_ms: u32,
    /// `RESULT_COPY_MAX_BYTES` and `RESULT_RETENTION_DAYS`: the copies of result files.
    pub copies: CopySettings,
    /// `RESULT_LINK_TTL_SECONDS`: how long a link to a copy lasts.
    pub result_link_ttl_secs: u32,
    /// Signs the links to the copies and to uploads, derived from the Kling credential.
    pub link_key: LinkKey,
    /// `ASSET_RETENTION_DAYS`, in milliseconds.
    pub asset_retention_ms: u64,
    /// `UPLOAD_BYTES_PER_DAY`.
    pub upload_bytes_per_day: u64,
    /// `QUEUE_MAX_PER_TENANT`.
    pub queue_max_per_tenant: u32,
    /// `QUEUE_MAX_WAIT_SECONDS`, in milliseconds.
    pub queue_max_wait_ms: u64,
    /// `CREDIT_BUDGETS`: credits per UTC day, by client.
    pub credit_budgets: CreditBudgets,
    /// `CREDIT_ESTIMATES`: what a create is reserved before Kling has charged one like it.
    pub credit_estimates: CreditEstimates,
}

/// `CREDIT_BUDGETS` (`name:credits,...`): each client's credits per UTC day, in thousandths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreditBudgets(Vec<(String, Millicredits)>);

impl CreditBudgets {
    fn parse(raw: &str, clients: &ClientKeys) -> Result<Self, &'static str> {
        let mut budgets: Vec<(String, Millicredits)> = Vec::new();
        for entry in raw.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            let (name, credits) =
                entry.split_once(':').ok_or("is malformed: each entry must be name:credits")?;
            let credits = budget::parse_credits(credits)
                .ok_or("is malformed: credits must be a decimal, like 500 or 2.5")?;
            let name = name.trim();
            if !clients.names().any(|client| client == name) {
                return Err("names a client PROXY_API_KEYS does not have");
            }
            if budgets.iter().any(|(listed, _)| listed == name) {
                return Err("is malformed: a client appears twice");
            }
            budgets.push((name.to_owned(), credits));
        }
        Ok(CreditBudgets(budgets))
    }

    /// The client's budget per day, if it has one.
    pub fn of(&self, client: &str) -> Option<Millicredits> {
        self.0.iter().find(|(name, _)| name == client).map(|(_, credits)| *credits)
    }
}

/// `CREDIT_ESTIMATES` (`endpoint:credits,...`) over the default table: a create's reservation
/// until Kling has charged the tenant for one like it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditEstimates(Vec<(&'static str, Millicredits)>);

/// The default estimates, in thousandths, by endpoint name: conservative guesses, replaced by
/// what Kling charges once it has.
pub const DEFAULT_ESTIMATES: &[(&str, Millicredits)] =
    &[("video-to-audio", 1_000), ("text-to-audio", 1_000), ("text2video", 10_000), ("image2video", 10_000)];

impl CreditEstimates {
    fn parse(raw: Option<&str>) -> Result<Self, &'static str> {
        let mut estimates: Vec<(&'static str, Millicredits)> = DEFAULT_ESTIMATES.to_vec();
        for entry in raw.unwrap_or_default().split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            let (name, credits) =
                entry.split_once(':').ok_or("is malformed: each entry must be endpoint:credits")?;
            let credits = budget::parse_credits(credits)
                .ok_or("is malformed: credits must be a decimal, like 5 or 0.5")?;
            let slot = estimates
                .iter_mut()
                .find(|(endpoint, _)| *endpoint == name.trim())
                .ok_or("names no endpoint (video-to-audio, text-to-audio, text2video, image2video)")?;
            slot.1 = credits;
        }
        Ok(CreditEstimates(estimates))
    }

    /// The estimate of a create of the endpoint named `endpoint`.
    pub fn of(&self, endpoint: &str) -> Millicredits {
        self.0.iter().find(|(name, _)| *name == endpoint).map_or(1_000, |(_, credits)| *credits)
    }
}

impl Default for CreditEstimates {
    fn default() -> Self {
        CreditEstimates(DEFAULT_ESTIMATES.to_vec())
    }
}

/// Where a setting is kept: a secret (`wrangler secret put`, `.dev.vars` locally) or a var
/// (`wrangler.toml` `[vars]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Secret,
    Var,
}

/// What a setting's value must be, with its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Text its own parser checks (keys, URLs, lists); unset unless `default` says.
    Text { default: Option<&'static str> },
    /// A whole number within bounds.
    Whole { default: u64, min: u64, max: u64 },
    /// One of a few words.
    Choice { default: &'static str, options: &'static [&'static str] },
    /// `true` or `false`.
    Flag { default: bool },
    /// Comma-separated delays in seconds (`crate::schedule`).
    Delays { default: &'static str },
}

/// One setting: its name, where it is kept, its rule and default, and what it does. The
/// settings list, the parsing, the coordinator's settings and the README's table
/// ("Configuration", checked by a test) all come from [`SETTINGS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub kind: Kind,
    pub rule: Rule,
    pub doc: &'static str,
}

const fn secret(name: &'static str, doc: &'static str) -> Setting {
    Setting { name, kind: Kind::Secret, rule: Rule::Text { default: None }, doc }
}

const fn var(name: &'static str, rule: Rule, doc: &'static str) -> Setting {
    Setting { name, kind: Kind::Var, rule, doc }
}

const TEXT: Rule = Rule::Text { default: None };

/// Every setting the worker reads.
pub const SETTINGS: &[Setting] = &[
    secret("KLING_ACCESS_KEY", "with `KLING_SECRET_KEY`, signs Kling's HS256 JWTs (`iss` = access key, `nbf` = now - 5 s, `exp` = now + 30 min); one token is reused until 5 minutes before it expires"),
    secret("KLING_SECRET_KEY", "the secret half of the pair above"),
    secret("KLING_API_KEY", "alternatively, Kling's API key, sent as the bearer token; wins if both are set"),
    var("KLING_API_BASE", Rule::Text { default: Some("https://api-singapore.klingai.com") }, "Kling's base URL; or `https://api-beijing.klingai.com`"),
    var("KLING_TIMEOUT_MS", Rule::Whole { default: 30_000, min: 100, max: 120_000 }, "the deadline of one call to Kling, in milliseconds"),
    secret("PROXY_API_KEYS", "your clients: `name:key,name:key`; the name is the client's tenant"),
    var("ALLOW_PRIVATE_URLS", Rule::Flag { default: false }, "`true` only for local development: lets URLs point at private addresses"),
    var("PUBLIC_BASE_URL", TEXT, "the worker's public origin (`https://host[:port]`, no path), used in the callback URLs given to Kling and in result links. Required outside local development: unset, the request's origin stands in only on a loopback address or `localhost`, and elsewhere creates, queries and lists answer 500 naming it (a client that controls `Host` would otherwise be handed its own callback capability)"),
    secret("KLING_WEBHOOK_SECRET", "`whsec_...` from Kling's console: when set, callbacks must carry a valid Standard Webhooks signature"),
    secret("PROXY_WEBHOOK_SECRET", "`whsec_...` of your choice (`echo whsec_$(openssl rand -base64 32)`): the root of every client's webhook secret (each client signs with its own, derived from this; see \"Webhook secrets\"); without it, a create with `callback_url` is refused"),
    var("ALLOWED_ORIGINS", TEXT, "comma-separated exact origins granted CORS; unset grants none"),
    secret("PROXY_TOKEN_SECRET", "at least 32 characters: signs browser tokens; without it `/v1/tokens` answers 403"),
    var("FORWARD_RETRY_SECONDS", Rule::Delays { default: "5,300,1800,7200,18000,36000,36000" }, "the delays between attempts of a webhook, comma-separated seconds (by default 8 attempts over about 28 hours)"),
    var("KLING_POLL_SECONDS", Rule::Delays { default: "30,60,120,300,600" }, "the delays between polls of a task Kling sends no news about; the last repeats until the task is final or a day has passed"),
    var("KLING_ACCOUNT_EMAIL", TEXT, "the Kling account's email, which useapi.net-style calls may name in `email` (with `KLING_ACCOUNTS`, the first account's, if its entry has none); unset, they may not"),
    var("KLING_ACCOUNTS", TEXT, "several Kling accounts, `name:email:concurrency,...` (email and concurrency optional; concurrency defaults to `KLING_MAX_CONCURRENCY`): creates go to the least loaded, and `email` picks one (see \"Several Kling accounts\"); unset, the one account above, named `default`"),
    secret("KLING_ACCOUNT_KEYS", "the credentials of the accounts in `KLING_ACCOUNTS`: `name:access_key:secret_key` or `name:api_key`, comma-separated; the first account may keep its credential in the settings above instead"),
    var("VIDEO_PROBE", Rule::Choice { default: "strict", options: &["strict", "lenient", "off"] }, "what to do with a video that cannot be measured (see \"Measuring the video\")"),
    var("VIDEO_PROBE_TIMEOUT_MS", Rule::Whole { default: 4_000, min: 200, max: 30_000 }, "how long measuring one video may take, all its reads together, in milliseconds"),
    var("RESULT_COPY_MAX_BYTES", Rule::Whole { default: 100 * 1024 * 1024, min: 1024, max: 5 * 1024 * 1024 * 1024 }, "files larger than this are not copied (Kling's link only)"),
    var("RESULT_RETENTION_DAYS", Rule::Whole { default: 90, min: 1, max: 3650 }, "how long result copies (and their tasks' records) are kept; set the bucket's lifecycle rule to match"),
    var("RESULT_LINK_TTL_SECONDS", Rule::Whole { default: 3_600, min: 10, max: 7 * 24 * 3600 }, "how long a link to a result copy works, from the answer that gave it"),
    var("ASSET_RETENTION_DAYS", Rule::Whole { default: 7, min: 1, max: 365 }, "how long an uploaded video is kept (see \"Uploads\"); set the bucket's lifecycle rule for `assets/` to match"),
    var("KLING_MAX_CONCURRENCY", Rule::Whole { default: 5, min: 0, max: 10_000 }, "how many tasks the Kling account runs at once (its resource pack's concurrency; packs do not add up, the largest counts), and the default of each account in `KLING_ACCOUNTS`. Creates past it wait in line at the edge instead of failing with 1303 (see \"A busy account: the line\"); `0` sends every create straight to Kling, as before the line"),
    var("QUEUE_MAX_PER_TENANT", Rule::Whole { default: 20, min: 1, max: 10_000 }, "how many creates one tenant may have waiting in line; past it, creates answer 429 with `Retry-After`"),
    var("QUEUE_MAX_WAIT_SECONDS", Rule::Whole { default: 1_800, min: 10, max: 86_400 }, "how long a create may wait in line; past it, it ends `failed`, saying so, without reaching Kling (its webhook says so too)"),
    var("CREDIT_BUDGETS", TEXT, "credits per UTC day, by client: `name:credits,...` (for example `ops:500,web:2000`); a browser user's is its token's `budget`, capped by its client's (see \"Credit budgets\"); a client without one has no bound"),
    var("CREDIT_ESTIMATES", TEXT, "what a create reserves of its budget before Kling has charged one like it, by endpoint: `video-to-audio:1,text-to-audio:1,text2video:10,image2video:10` (the defaults); once Kling has, the last cost it charged the tenant for the same endpoint and options"),
    var("UPLOAD_BYTES_PER_DAY", Rule::Whole { default: 5 * 1024 * 1024 * 1024, min: 1024 * 1024, max: 1024 * 1024 * 1024 * 1024 }, "the bytes one tenant may upload per UTC day (a browser user is a tenant of their own); past it, uploads answer 429 with `Retry-After`"),
];

/// The setting named `name` (a name not in the table is a bug, caught by the tests).
pub fn setting(name: &str) -> &'static Setting {
    SETTINGS.iter().find(|setting| setting.name == name).unwrap_or(&SETTINGS[0])
}

/// A whole-number setting's default.
pub fn default_whole(name: &str) -> u64 {
    match setting(name).rule {
        Rule::Whole { default, .. } => default,
        _ => 0,
    }
}

/// A delays setting's default, parsed.
pub fn default_delays(name: &str) -> Schedule {
    match setting(name).rule {
        Rule::Delays { default } => {
            Schedule::parse(default).unwrap_or_else(|_| Schedule::parse("60").unwrap())
        }
        _ => Schedule::parse("60").unwrap(),
    }
}

/// The README's table of settings ("Configuration"), from [`SETTINGS`].
pub fn settings_table() -> String {
    let mut table = String::from("| setting | kind | meaning |\n|---|---|---|\n");
    for setting in SETTINGS {
        let kind = match setting.kind {
            Kind::Secret => "secret",
            Kind::Var => "var",
        };
        let rule = match setting.rule {
            Rule::Text { default: Some(default) } => format!(" (default `{default}`)"),
            Rule::Text { default: None } => String::new(),
            Rule::Whole { default, min, max } => format!(" ({min} to {max}, default {default})"),
            Rule::Choice { default, options } => {
                let options: Vec<String> = options.iter().map(|option| format!("`{option}`")).collect();
                format!(" ({}; default `{default}`)", options.join(", "))
            }
            Rule::Flag { default } => format!(" (default `{default}`)"),
            Rule::Delays { default } => format!(" (default `{default}`)"),
        };
        table.push_str(&format!("| `{}` | {kind} | {}{rule} |\n", setting.name, setting.doc));
    }
    table
}

/// A client key's shortest length (`PROXY_API_KEYS`).
pub const MIN_CLIENT_KEY_CHARS: usize = 16;

/// Browser tokens are HS256: a shorter secret could be guessed offline from one token.
pub const MIN_TOKEN_SECRET_CHARS: usize = 32;

impl Config {
    /// Reads every setting through `lookup` (which returns a setting's value if it is set).
    /// Blank values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ApiError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());

        let single = match (get("KLING_API_KEY"), get("KLING_ACCESS_KEY"), get("KLING_SECRET_KEY")) {
            (Some(api_key), _, _) => Some(KlingCredentials::ApiKey(Secret::new(api_key.trim()))),
            (None, Some(access_key), Some(secret_key)) => Some(KlingCredentials::AccessKey {
                access_key: Secret::new(access_key.trim()),
                secret_key: Secret::new(secret_key.trim()),
            }),
            (None, Some(_), None) => {
                return Err(ApiError::config("KLING_SECRET_KEY", "is not set (KLING_ACCESS_KEY is)"))
            }
            (None, None, Some(_)) => {
                return Err(ApiError::config("KLING_ACCESS_KEY", "is not set (KLING_SECRET_KEY is)"))
            }
            (None, None, None) => None,
        };

        let kling_api_base = match get("KLING_API_BASE") {
            None => match setting("KLING_API_BASE").rule {
                Rule::Text { default: Some(default) } => default.to_owned(),
                _ => return Err(ApiError::config("KLING_API_BASE", "has no default")),
            },
            Some(raw) => parse_api_base(raw.trim())
                .ok_or_else(|| ApiError::config("KLING_API_BASE", "is not an http(s) base URL"))?,
        };

        let clients = match get("PROXY_API_KEYS") {
            None => return Err(ApiError::config("PROXY_API_KEYS", "is not set")),
            Some(raw) => {
                ClientKeys::parse(&raw).map_err(|problem| ApiError::config("PROXY_API_KEYS", problem))?
            }
        };

        let allow_private_urls = match (get("ALLOW_PRIVATE_URLS"), setting("ALLOW_PRIVATE_URLS").rule) {
            (None, Rule::Flag { default }) => default,
            (raw, _) => raw
                .as_deref()
                .and_then(parse_bool)
                .ok_or_else(|| ApiError::config("ALLOW_PRIVATE_URLS", "must be true or false"))?,
        };

        let whole = |name: &'static str| -> Result<u64, ApiError> {
            let Rule::Whole { default, min, max } = setting(name).rule else {
                return Err(ApiError::config(name, "is not a whole-number setting"));
            };
            match get(name) {
                None => Ok(default),
                Some(raw) => {
                    raw.trim().parse::<u64>().ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| {
                        ApiError::config(name, &format!("must be a whole number from {min} to {max}"))
                    })
                }
            }
        };
        let kling_timeout_ms = whole("KLING_TIMEOUT_MS")? as u32;
        let max_concurrency = whole("KLING_MAX_CONCURRENCY")? as u32;
        let email = get("KLING_ACCOUNT_EMAIL");
        let account_keys = get("KLING_ACCOUNT_KEYS");
        let accounts = match (get("KLING_ACCOUNTS"), single) {
            (Some(listed), single) => KlingAccounts::parse(
                &listed,
                account_keys.as_deref(),
                single,
                email.as_deref(),
                max_concurrency,
            )?,
            (None, _) if account_keys.is_some() => {
                return Err(ApiError::config(
                    "KLING_ACCOUNT_KEYS",
                    "is set without KLING_ACCOUNTS: list the accounts it gives keys for",
                ))
            }
            (None, Some(single)) => KlingAccounts::single(single, email, max_concurrency),
            (None, None) => {
                return Err(ApiError::config(
                    "KLING_API_KEY",
                    "is not set (set it, or KLING_ACCESS_KEY and KLING_SECRET_KEY, or KLING_ACCOUNTS)",
                ))
            }
        };

        let public_base_url = match get("PUBLIC_BASE_URL") {
            None => None,
            Some(raw) => Some(parse_origin(raw.trim()).ok_or_else(|| {
                ApiError::config(
                    "PUBLIC_BASE_URL",
                    "must be the worker's origin, like https://edge.example.com (no path, query or user info)",
                )
            })?),
        };
        let webhook_key = |name: &'static str| -> Result<Option<WebhookKey>, ApiError> {
            get(name)
                .map(|raw| WebhookKey::from_secret(&raw).map_err(|problem| ApiError::config(name, problem)))
                .transpose()
        };

        let schedule = |name: &'static str| -> Result<Schedule, ApiError> {
            get(name)
                .map(|raw| Schedule::parse(&raw).map_err(|problem| ApiError::config(name, problem)))
                .unwrap_or_else(|| Ok(default_delays(name)))
        };
        let kling_secret = accounts.first().credentials.secret();
        // Bound to the deployment too: another deployment on the same Kling account (staging
        // beside production) must not accept these callback URLs and result links.
        let deployment = public_base_url.as_deref().unwrap_or_default();
        let capability_key = CapabilityKey::derive(kling_secret, deployment);
        let link_key = LinkKey::derive(kling_secret, deployment);
        let copies = CopySettings {
            max_bytes: whole("RESULT_COPY_MAX_BYTES")?,
            retention_ms: copies::days_ms(whole("RESULT_RETENTION_DAYS")? as u32),
        };

        Ok(Config {
            forward_retry: schedule("FORWARD_RETRY_SECONDS")?,
            kling_poll: schedule("KLING_POLL_SECONDS")?,
            capability_key,
            video_probe: match (get("VIDEO_PROBE"), setting("VIDEO_PROBE").rule) {
                (raw, Rule::Choice { default, .. }) => Policy::parse(raw.as_deref().unwrap_or(default))
                    .ok_or_else(|| ApiError::config("VIDEO_PROBE", "must be strict, lenient or off"))?,
                _ => return Err(ApiError::config("VIDEO_PROBE", "is not a choice")),
            },
            video_probe_timeout_ms: whole("VIDEO_PROBE_TIMEOUT_MS")? as u32,
            copies,
            result_link_ttl_secs: whole("RESULT_LINK_TTL_SECONDS")? as u32,
            link_key,
            asset_retention_ms: copies::days_ms(whole("ASSET_RETENTION_DAYS")? as u32),
            upload_bytes_per_day: whole("UPLOAD_BYTES_PER_DAY")?,
            queue_max_per_tenant: whole("QUEUE_MAX_PER_TENANT")? as u32,
            queue_max_wait_ms: whole("QUEUE_MAX_WAIT_SECONDS")? * 1000,
            credit_budgets: match get("CREDIT_BUDGETS") {
                None => CreditBudgets::default(),
                Some(raw) => CreditBudgets::parse(&raw, &clients)
                    .map_err(|problem| ApiError::config("CREDIT_BUDGETS", problem))?,
            },
            credit_estimates: CreditEstimates::parse(get("CREDIT_ESTIMATES").as_deref())
                .map_err(|problem| ApiError::config("CREDIT_ESTIMATES", problem))?,
            accounts,
            kling_api_base,
            clients,
            allow_private_urls,
            kling_timeout_ms,
            public_base_url,
            kling_webhook_key: webhook_key("KLING_WEBHOOK_SECRET")?,
            proxy_webhook_key: webhook_key("PROXY_WEBHOOK_SECRET")?,
            allowed_origins: match get("ALLOWED_ORIGINS") {
                None => AllowedOrigins::default(),
                Some(raw) => AllowedOrigins::parse(&raw)
                    .map_err(|problem| ApiError::config("ALLOWED_ORIGINS", problem))?,
            },
            token_secret: match get("PROXY_TOKEN_SECRET") {
                None => None,
                Some(raw) if raw.trim().chars().count() >= MIN_TOKEN_SECRET_CHARS => {
                    Some(Secret::new(raw.trim()))
                }
                Some(_) => {
                    return Err(ApiError::config(
                        "PROXY_TOKEN_SECRET",
                        "is too short: use at least 32 random characters",
                    ))
                }
            },
        })
    }
}

/// The origin the worker gives out in callback URLs and result links: `PUBLIC_BASE_URL`, or
/// the request's own origin in local development only (a loopback address or `localhost`).
/// Elsewhere a client that controls `Host` would be handed its own callback capability, so
/// a deployment without `PUBLIC_BASE_URL` refuses what would give one out.
pub fn own_origin(public_base_url: Option<&str>, request_origin: &str) -> Result<String, ApiError> {
    if let Some(origin) = public_base_url {
        return Ok(origin.to_owned());
    }
    let host = url::Url::parse(request_origin).ok().and_then(|url| url.host().map(|host| host.to_owned()));
    let local = match host {
        Some(url::Host::Domain(name)) => name == "localhost" || name.ends_with(".localhost"),
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        None => false,
    };
    if local {
        Ok(request_origin.to_owned())
    } else {
        Err(ApiError::config(
            "PUBLIC_BASE_URL",
            "is not set: outside local development the worker needs its own origin for the callback URLs it gives Kling",
        ))
    }
}

fn parse_api_base(raw: &str) -> Option<String> {
    let url = url::Url::parse(raw).ok()?;
    let usable = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none();
    usable.then(|| url.as_str().trim_end_matches('/').to_owned())
}

/// `scheme://host[:port]` of an http(s) URL with nothing after the host but an optional `/`.
/// Callback paths are fixed, so a base URL with a path would send Kling's callbacks to a
/// path the worker does not serve.
fn parse_origin(raw: &str) -> Option<String> {
    let url = url::Url::parse(raw).ok()?;
    let bare = matches!(url.path(), "" | "/") && url.query().is_none() && url.fragment().is_none();
    let plain = url.username().is_empty() && url.password().is_none();
    (bare && plain && matches!(url.scheme(), "http" | "https") && url.host().is_some())
        .then(|| url.origin().ascii_serialization())
}

fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ApiError> {
        let settings: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| settings.get(name).cloned())
    }

    const BASE: &[(&str, &str)] = &[
        ("KLING_ACCESS_KEY", "ak-example"),
        ("KLING_SECRET_KEY", "sk-example"),
        ("PROXY_API_KEYS", "web:k_1_web_example_key,ops:k_2_ops_example_key"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut all: Vec<_> = BASE.to_vec();
        all.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        all.extend_from_slice(extra);
        all
    }

    #[test]
    fn defaults() {
        let config = config(BASE).unwrap();
        assert_eq!(config.kling_api_base, "https://api-singapore.klingai.com");
        assert!(!config.allow_private_urls);
        assert_eq!(config.kling_timeout_ms, 30_000);
        assert_eq!(config.video_probe_timeout_ms, 4_000);
        assert_eq!(config.video_probe, Policy::Strict);
        assert!(matches!(config.accounts.first().credentials, KlingCredentials::AccessKey { .. }));
        assert_eq!(config.accounts.first().name, crate::accounts::DEFAULT_ACCOUNT);
        assert_eq!(config.accounts.first().max_concurrency, 5);
    }

    #[test]
    fn api_key_wins_over_access_keys() {
        let config = config(&with(&[("KLING_API_KEY", "api-example")])).unwrap();
        assert_eq!(config.accounts.first().credentials, KlingCredentials::ApiKey(Secret::new("api-example")));
    }

    #[test]
    fn missing_credentials_name_the_setting() {
        let error = config(&[("PROXY_API_KEYS", "web:k_1_web_example_key")]).unwrap_err();
        assert_eq!(error.status, 500);
        assert!(error.message.contains("KLING_API_KEY"), "{}", error.message);

        let error =
            config(&[("PROXY_API_KEYS", "web:k_1_web_example_key"), ("KLING_ACCESS_KEY", "ak")]).unwrap_err();
        assert!(error.message.contains("KLING_SECRET_KEY"), "{}", error.message);
    }

    #[test]
    fn several_accounts_come_from_kling_accounts_and_their_keys() {
        let config = config(&[
            ("PROXY_API_KEYS", "web:k_1_web_example_key"),
            ("KLING_ACCOUNTS", "main:main@example.com:2,spare:spare@example.com"),
            ("KLING_ACCOUNT_KEYS", "main:ak-main:sk-main,spare:api-spare"),
            ("KLING_MAX_CONCURRENCY", "4"),
        ])
        .unwrap();
        let accounts = config.accounts.all();
        assert_eq!((accounts[0].name.as_str(), accounts[0].max_concurrency), ("main", 2));
        assert_eq!((accounts[1].name.as_str(), accounts[1].max_concurrency), ("spare", 4));
        // The first account's secret keys what the deployment signs, as the one account's did.
        assert_eq!(config.capability_key, CapabilityKey::derive("sk-main", ""));
        let error = super::tests::config(&[
            ("PROXY_API_KEYS", "web:k_1_web_example_key"),
            ("KLING_ACCOUNTS", "main,spare"),
            ("KLING_ACCOUNT_KEYS", "main:api-secret-value"),
        ])
        .unwrap_err();
        assert!(error.message.contains("KLING_ACCOUNT_KEYS") && error.message.contains("spare"));
        assert!(!error.message.contains("secret-value"));
    }

    #[test]
    fn blank_counts_as_unset() {
        let error = config(&with(&[("PROXY_API_KEYS", "  ")])).unwrap_err();
        assert!(error.message.contains("PROXY_API_KEYS is not set"), "{}", error.message);
    }

    #[test]
    fn malformed_settings_name_the_setting_not_the_value() {
        for (name, value) in [
            ("PROXY_API_KEYS", "web-secret-value-without-colon"),
            ("PROXY_API_KEYS", "we b:secret-value"),
            ("PROXY_API_KEYS", "web:secret-value,web:secret-value-2"),
            ("PROXY_API_KEYS", "a:secret-value,b:secret-value"),
            ("PROXY_API_KEYS", "web:secret-value"),
            ("KLING_API_BASE", "ftp://secret-value.example"),
            ("KLING_API_BASE", "https://user:secret-value@example.com"),
            ("ALLOW_PRIVATE_URLS", "secret-value"),
            ("KLING_TIMEOUT_MS", "secret-value"),
            ("KLING_TIMEOUT_MS", "5"),
            ("PUBLIC_BASE_URL", "secret-value"),
            ("PUBLIC_BASE_URL", "https://edge.example.com/secret-value"),
            ("PUBLIC_BASE_URL", "https://edge.example.com/?secret-value"),
            ("KLING_WEBHOOK_SECRET", "whsec_secret-value"),
            ("PROXY_WEBHOOK_SECRET", "secret-value"),
            ("ALLOWED_ORIGINS", "*,https://secret-value.example.com"),
            ("ALLOWED_ORIGINS", "https://secret-value.example.com/path"),
            ("PROXY_TOKEN_SECRET", "secret-value"),
            ("FORWARD_RETRY_SECONDS", "5,secret-value"),
            ("KLING_POLL_SECONDS", "secret-value"),
            ("VIDEO_PROBE", "secret-value"),
            ("VIDEO_PROBE_TIMEOUT_MS", "secret-value"),
            ("RESULT_COPY_MAX_BYTES", "secret-value"),
            ("RESULT_RETENTION_DAYS", "secret-value"),
            ("RESULT_LINK_TTL_SECONDS", "secret-value"),
        ] {
            let error = config(&with(&[(name, value)])).unwrap_err();
            assert_eq!(error.status, 500);
            assert!(error.message.contains(name), "{name}: {}", error.message);
            assert!(!error.message.contains("secret-value"), "{name}: {}", error.message);
        }
    }

    #[test]
    fn webhook_settings() {
        let config = config(&with(&[
            ("PUBLIC_BASE_URL", "https://edge.example.com/"),
            ("KLING_WEBHOOK_SECRET", "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI="),
        ]))
        .unwrap();
        assert_eq!(config.public_base_url.as_deref(), Some("https://edge.example.com"));
        assert!(config.kling_webhook_key.is_some());
        assert!(config.proxy_webhook_key.is_none());
    }

    #[test]
    fn api_base_is_normalised() {
        let config = config(&with(&[("KLING_API_BASE", "http://127.0.0.1:9000/")])).unwrap();
        assert_eq!(config.kling_api_base, "http://127.0.0.1:9000");
    }

    #[test]
    fn client_keys_find_their_tenant() {
        let keys = ClientKeys::parse(" web:k_1_web_example_key , ops:k_2_ops_example_key,").unwrap();
        assert_eq!(keys.tenant_for("k_1_web_example_key"), Some("web"));
        assert_eq!(keys.tenant_for("k_2_ops_example_key"), Some("ops"));
        assert_eq!(keys.tenant_for("k_3_unknown_example"), None);
        assert_eq!(keys.tenant_for(""), None);
        assert_eq!(keys.names().collect::<Vec<_>>(), ["web", "ops"]);
    }

    #[test]
    fn a_key_shorter_than_16_characters_is_refused() {
        let error = ClientKeys::parse("web:0123456789abcde").unwrap_err();
        assert!(error.contains("at least 16 characters"), "{error}");
        assert!(ClientKeys::parse("web:0123456789abcdef").is_ok());
    }

    #[test]
    fn a_key_may_contain_colons() {
        let keys = ClientKeys::parse("web:k:with:colons:and-long-enough").unwrap();
        assert_eq!(keys.tenant_for("k:with:colons:and-long-enough"), Some("web"));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = config(&with(&[("KLING_API_KEY", "api-example")])).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("api-example"), "{printed}");
        assert!(!printed.contains("k_1_web_example_key"), "{printed}");
        assert!(printed.contains("web"), "{printed}");
    }

    #[test]
    fn schedules_default_and_parse() {
        let defaults = config(BASE).unwrap();
        assert_eq!(defaults.forward_retry, Schedule::parse("5,300,1800,7200,18000,36000,36000").unwrap());
        assert_eq!(defaults.kling_poll, Schedule::parse("30,60,120,300,600").unwrap());
        let set = config(&with(&[("FORWARD_RETRY_SECONDS", "1,2"), ("KLING_POLL_SECONDS", "3")])).unwrap();
        assert_eq!(set.forward_retry, Schedule::parse("1,2").unwrap());
        assert_eq!(set.kling_poll.repeating_delay_ms(5), 3000);
    }

    #[test]
    fn the_capability_and_link_keys_follow_the_kling_credential_and_the_deployment() {
        let access = config(BASE).unwrap().capability_key;
        assert_eq!(access, CapabilityKey::derive("sk-example", ""));
        let api = config(&with(&[("KLING_API_KEY", "api-example")])).unwrap().capability_key;
        assert_eq!(api, CapabilityKey::derive("api-example", ""));
        assert_eq!(config(BASE).unwrap().link_key, LinkKey::derive("sk-example", ""));
        // Another deployment on the same Kling account signs with other keys.
        let staging = config(&with(&[("PUBLIC_BASE_URL", "https://staging.example.com")])).unwrap();
        assert_eq!(
            staging.capability_key,
            CapabilityKey::derive("sk-example", "https://staging.example.com")
        );
        assert_ne!(staging.capability_key, access);
        assert_eq!(staging.link_key, LinkKey::derive("sk-example", "https://staging.example.com"));
        assert_ne!(staging.link_key, config(BASE).unwrap().link_key);
    }

    #[test]
    fn result_copies_have_defaults_and_bounds() {
        let defaults = config(BASE).unwrap();
        assert_eq!(defaults.copies, CopySettings::default());
        assert_eq!(defaults.result_link_ttl_secs, 3600);
        let set = config(&with(&[
            ("RESULT_COPY_MAX_BYTES", "40000"),
            ("RESULT_RETENTION_DAYS", "7"),
            ("RESULT_LINK_TTL_SECONDS", "60"),
        ]))
        .unwrap();
        assert_eq!((set.copies.max_bytes, set.copies.retention_ms), (40_000, copies::days_ms(7)));
        assert_eq!(set.result_link_ttl_secs, 60);
        let error = config(&with(&[("RESULT_RETENTION_DAYS", "0")])).unwrap_err();
        assert_eq!(
            error.message,
            "configuration: RESULT_RETENTION_DAYS must be a whole number from 1 to 3650"
        );
    }

    #[test]
    fn settings_lists_every_setting_read() {
        let read = std::cell::RefCell::new(Vec::new());
        let _ = Config::from_lookup(|name| {
            read.borrow_mut().push(name.to_owned());
            BASE.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        });
        let mut read = read.into_inner();
        read.sort();
        read.dedup();
        let mut listed: Vec<String> = SETTINGS.iter().map(|s| s.name.to_string()).collect();
        listed.sort();
        assert_eq!(read, listed);
    }

    #[test]
    fn every_default_is_valid_and_within_its_bounds() {
        for setting in SETTINGS {
            match setting.rule {
                Rule::Whole { default, min, max } => {
                    assert!((min..=max).contains(&default), "{}", setting.name)
                }
                Rule::Choice { default, options } => assert!(options.contains(&default), "{}", setting.name),
                Rule::Delays { default } => assert!(Schedule::parse(default).is_ok(), "{}", setting.name),
                Rule::Text { .. } | Rule::Flag { .. } => {}
            }
            assert_eq!(
                SETTINGS.iter().filter(|other| other.name == setting.name).count(),
                1,
                "{}",
                setting.name
            );
        }
        assert_eq!(CopySettings::default().max_bytes, 100 * 1024 * 1024);
    }

    /// The README's "Configuration" table is generated from the settings table:
    /// `make readme` (`UPDATE_README=1`) rewrites it.
    #[test]
    fn the_readme_lists_every_setting_as_the_table_says() {
        const BEGIN: &str = "<!-- settings table: generated from src/config.rs, do not edit -->\n";
        const END: &str = "<!-- end of settings table -->";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let start = readme.find(BEGIN).expect("the README marks its settings table") + BEGIN.len();
        let end = start + readme[start..].find(END).expect("the table's end is marked");
        let table = settings_table();
        if std::env::var_os("UPDATE_README").is_some() {
            std::fs::write(path, format!("{}{table}{}", &readme[..start], &readme[end..])).unwrap();
        } else {
            assert_eq!(readme[start..end], table, "run make readme");
        }
    }

    #[test]
    fn the_example_dev_vars_name_every_setting() {
        let example = include_str!("../.dev.vars.example");
        for setting in SETTINGS {
            assert!(example.contains(&format!("{}=", setting.name)), "{} is missing", setting.name);
        }
    }

    #[test]
    fn the_requests_origin_stands_in_for_public_base_url_only_locally() {
        assert_eq!(
            own_origin(Some("https://edge.example.com"), "https://evil.example").unwrap(),
            "https://edge.example.com"
        );
        for local in
            ["http://localhost:8787", "http://127.0.0.1:9000", "http://[::1]:8787", "http://app.localhost"]
        {
            assert_eq!(own_origin(None, local).unwrap(), local);
        }
        for remote in ["https://kling-edge.example.workers.dev", "https://evil.example", "http://10.0.0.1"] {
            let error = own_origin(None, remote).unwrap_err();
            assert_eq!(error.status, 500);
            assert!(error.message.contains("PUBLIC_BASE_URL is not set"), "{error}");
        }
    }

    #[test]
    fn booleans() {
        assert_eq!(parse_bool("TRUE"), Some(true));
        assert_eq!(parse_bool(" false "), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
