//! Calls to Kling: the bearer token, a deadline on every call, and the retry policy.
//!
//! A create is sent exactly once: if the connection drops after Kling accepted it, sending
//! it again would cost a second credit. A query is read-only and is retried once when the
//! connection fails or Kling's gateway answers 502/503/504. Every call has one deadline
//! (`KLING_TIMEOUT_MS`) covering the answer's headers and body.

use std::cell::RefCell;
use std::time::Duration;

use worker::{Headers, Method, Request, RequestInit};

use crate::accounts::{KlingAccount, KlingCredentials};
use crate::api::Endpoint;
use crate::config::Config;
use crate::error::ApiError;
use crate::jwt::KlingTokenCache;
use crate::kling::task;
use crate::ports::{KlingApi, KlingReply};

use super::clock;
use super::http::{fetch_with_deadline, FetchFailure};

thread_local! {
    /// One Kling token per isolate, shared by all the requests it serves.
    static KLING_TOKENS: RefCell<KlingTokenCache> = const { RefCell::new(KlingTokenCache::new()) };
}

/// What a client is told when a create may or may not have reached Kling.
const CREATE_OUTCOME_UNKNOWN: &str = "so the task may or may not exist; if you gave an external_task_id, \
     query it in a few seconds (the worker learns of the task from Kling's first callback) before \
     creating it again";

/// A query a client waits on gets a shorter deadline than the default: its answer can fall
/// back on what the coordinator already knows.
pub const QUERY_REFRESH_TIMEOUT_MS: u32 = 5_000;
/// The alarm's polls get their own deadline too: a hung Kling holds one of the alarm's
/// lanes this long at most, not `KLING_TIMEOUT_MS` (a failed poll is tried again on
/// `KLING_POLL_SECONDS`).
pub const ALARM_POLL_TIMEOUT_MS: u32 = 10_000;

pub struct Kling {
    base: String,
    authorization: String,
    timeout: Duration,
}

impl Kling {
    /// A client of `account`, with its token (signed once per isolate and reused).
    pub fn new(config: &Config, account: &KlingAccount) -> Kling {
        let token = match &account.credentials {
            KlingCredentials::ApiKey(key) => key.expose().to_owned(),
            KlingCredentials::AccessKey { access_key, secret_key } => KLING_TOKENS.with(|cache| {
                cache.borrow_mut().token(access_key.expose(), secret_key.expose(), clock::now_secs())
            }),
        };
        Kling {
            base: config.kling_api_base.clone(),
            authorization: format!("Bearer {token}"),
            timeout: Duration::from_millis(config.kling_timeout_ms.into()),
        }
    }

    /// The same client with a shorter deadline (work after a response must fit `wait_until`).
    pub fn with_timeout_ms(mut self, timeout_ms: u32) -> Kling {
        self.timeout = self.timeout.min(Duration::from_millis(timeout_ms.into()));
        self
    }

    /// Creates a task. Never retried.
    pub async fn create(
        &self,
        endpoint: &Endpoint,
        body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<KlingReply, ApiError> {
        let json = encode_create(body)?;
        match self.send(Method::Post, endpoint.kling_path, Some(json)).await {
            Ok(reply) => Ok(reply),
            Err(FetchFailure::Unreachable) => Err(ApiError::upstream_unreachable(&format!(
                "the connection failed during the create, {CREATE_OUTCOME_UNKNOWN}"
            ))),
            Err(FetchFailure::TimedOut) => Err(ApiError::upstream_timeout(&format!(
                "the create got no answer in time, {CREATE_OUTCOME_UNKNOWN}"
            ))),
        }
    }

    /// A read-only call, retried once on a failed connection or a gateway error.
    async fn get(&self, path_and_query: &str) -> Result<KlingReply, ApiError> {
        let first = self.send(Method::Get, path_and_query, None).await;
        let retry = match &first {
            Err(FetchFailure::Unreachable) => true,
            Ok(reply) => matches!(reply.status, 502..=504),
            Err(FetchFailure::TimedOut) => false,
        };
        let outcome = if retry { self.send(Method::Get, path_and_query, None).await } else { first };
        match outcome {
            Ok(reply) => Ok(reply),
            Err(FetchFailure::Unreachable) => {
                Err(ApiError::upstream_unreachable("the connection failed twice"))
            }
            Err(FetchFailure::TimedOut) => Err(ApiError::upstream_timeout("no answer within the deadline")),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<KlingReply, FetchFailure> {
        let headers = Headers::new();
        let _ = headers.set("Authorization", &self.authorization);
        let _ = headers.set("Accept", "application/json");
        if body.is_some() {
            let _ = headers.set("Content-Type", "application/json");
        }
        let mut init = RequestInit::new();
        init.with_method(method).with_headers(headers);
        if let Some(body) = body {
            init.with_body(Some(body.into()));
        }
        let request = Request::new_with_init(&format!("{}{}", self.base, path), &init)
            .map_err(|_| FetchFailure::Unreachable)?;
        let (status, body) = fetch_with_deadline(request, self.timeout).await?;
        Ok(KlingReply { status, body })
    }
}

impl Kling {
    /// A task's `data` as Kling answers a query of `id` (a task id or an external id).
    async fn query_task(&self, endpoint: &Endpoint, id: &str) -> Result<serde_json::Value, ApiError> {
        let reply = self.get(&endpoint.query_path(id)).await?;
        if reply.status == 404 {
            return Err(ApiError::not_found(&format!("Kling's task {id}")));
        }
        task::envelope_data(&reply.body)
            .filter(|_| reply.status == 200)
            .ok_or_else(|| ApiError::upstream_unreachable(&format!("Kling answered {}", reply.status)))
    }
}

impl Kling {
    /// The task's `data` as Kling reports it now, or why Kling did not say. An answer about
    /// another task (Kling may resolve the id as someone's external id) is refused.
    pub async fn current_task(
        &self,
        endpoint: &Endpoint,
        task_id: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let data = self.query_task(endpoint, task_id).await?;
        if task::task_id_of(&data) != Some(task_id) {
            return Err(ApiError::upstream_unreachable("Kling answered about another task"));
        }
        Ok(data)
    }

    /// An answer that does not echo the external id (Kling may resolve it as a task id) is
    /// refused.
    pub async fn task_by_external_id(
        &self,
        endpoint: &Endpoint,
        external_task_id: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let data = self.query_task(endpoint, external_task_id).await?;
        if task::external_task_id_of(&data) != Some(external_task_id) {
            return Err(ApiError::upstream_unreachable("Kling answered about another task"));
        }
        Ok(data)
    }
}

/// The create body's JSON, in a buffer sized for it up front: an image-to-video body may be
/// 14 MiB, and growing a buffer by doubling would hold 1.5 times that in the isolate.
fn encode_create(body: &serde_json::Map<String, serde_json::Value>) -> Result<String, ApiError> {
    let estimate: usize =
        body.iter().map(|(name, value)| name.len() + value.as_str().map_or(64, str::len) + 8).sum();
    let mut json = Vec::with_capacity(estimate + 256);
    serde_json::to_writer(&mut json, body).map_err(|_| ApiError::internal("encoding the create body"))?;
    String::from_utf8(json).map_err(|_| ApiError::internal("encoding the create body"))
}

/// Kling for the request path: the client (and its token) is made only when a call is sent.
pub struct KlingForRequests<'a> {
    pub config: &'a Config,
    /// For the cache of the accounts' packs.
    pub env: &'a worker::Env,
}

impl KlingApi for KlingForRequests<'_> {
    async fn create(
        &self,
        account: &str,
        endpoint: &Endpoint,
        body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<KlingReply, ApiError> {
        Kling::new(self.config, self.config.accounts.of_task(Some(account))).create(endpoint, body).await
    }

    /// From Workers KV when Kling answered it in the last minute (the cache is per location,
    /// which keeps Kling's calls far under one a second).
    async fn account_packs(&self, account: &str, now_ms: u64) -> Result<KlingReply, ApiError> {
        let key = format!("account-packs:{account}");
        let kv = self.env.kv(super::edge_copy::BINDING).ok();
        if let Some(kv) = &kv {
            if let Ok(Some(body)) = kv.get(&key).text().await {
                return Ok(KlingReply { status: 200, body: body.into_bytes() });
            }
        }
        let query = crate::validate::CostsQuery {
            start_time: now_ms.saturating_sub(365 * 86_400_000),
            end_time: now_ms,
            resource_pack_name: None,
        };
        let kling = Kling::new(self.config, self.config.accounts.of_task(Some(account)));
        let reply = kling.get(&format!("/account/costs?{}", query.to_query())).await?;
        if let (Some(kv), 200) = (&kv, reply.status) {
            let body = String::from_utf8_lossy(&reply.body).into_owned();
            if let Ok(put) = kv.put(&key, body) {
                let _ = put.expiration_ttl(crate::ports::ACCOUNT_PACKS_CACHE_SECS).execute().await;
            }
        }
        Ok(reply)
    }

    /// The first account's.
    async fn account_costs(&self, query: &crate::validate::CostsQuery) -> Result<KlingReply, ApiError> {
        Kling::new(self.config, self.config.accounts.first())
            .get(&format!("/account/costs?{}", query.to_query()))
            .await
    }
}
