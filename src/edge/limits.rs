//! Rate limits, with the Workers Rate Limiting bindings of `wrangler.toml`.
//!
//! Authenticated requests count against their tenant, so one tenant's burst never limits
//! another; requests that fail authentication and preflights count against the client's
//! IP. Creates also count against a second, smaller limit per tenant. A deployment without
//! the bindings is not limited.

use worker::{Env, Request};

use crate::error::ApiError;
use crate::ports::{Limit, RateLimiter};

use super::clock;

/// Every request of a tenant (default 120 per minute).
pub const REQUESTS: &str = "REQUEST_LIMITER";
/// Creates of a tenant (default 10 per minute).
pub const CREATES: &str = "CREATE_LIMITER";
/// Videos measured for an app's creates (default 60 per minute).
pub const PROBES: &str = "PROBE_LIMITER";
/// The period of the bindings in `wrangler.toml`; `Retry-After` runs to its next window.
const PERIOD_SECS: i64 = 60;

/// Counts one request against `limiter` for `key`; 429 with `Retry-After` when over.
pub async fn check(env: &Env, limiter: &str, key: &str, now_secs: i64) -> Result<(), ApiError> {
    let Ok(binding) = env.rate_limiter(limiter) else { return Ok(()) };
    match binding.limit(key.to_owned()).await {
        Ok(outcome) if !outcome.success => {
            let retry_after = PERIOD_SECS - now_secs.rem_euclid(PERIOD_SECS);
            Err(ApiError::rate_limited(retry_after as u32))
        }
        // Over the limit is the only refusal: a limiter that fails lets the request through.
        _ => Ok(()),
    }
}

/// The client's address as Cloudflare saw it (`CF-Connecting-IP`).
pub fn ip_key(request: &Request) -> String {
    let ip = request.headers().get("CF-Connecting-IP").ok().flatten();
    format!("ip:{}", ip.as_deref().unwrap_or("unknown"))
}

/// The bindings as the flows' rate limiter.
pub struct Bindings<'a> {
    pub env: &'a Env,
}

impl RateLimiter for Bindings<'_> {
    async fn check(&self, limit: Limit, key: &str) -> Result<(), ApiError> {
        let binding = match limit {
            Limit::Requests => REQUESTS,
            Limit::Creates => CREATES,
            Limit::Probes => PROBES,
        };
        check(self.env, binding, key, clock::now_secs()).await
    }
}
