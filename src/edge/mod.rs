//! The Worker: the fetch entry point, dispatch to one handler per route, and logging.
//!
//! This is the only place that owns `worker` types. Each handler reads as a short story
//! (authenticate, validate, call, store, answer); the rules themselves live in the pure
//! modules. Every failure is an [`ApiError`] that becomes Kling's envelope in one place
//! ([`fetch`]), and every response leaves with an `X-Request-Id` and one log line that
//! carries no credential.

mod bucket;
mod callbacks;
pub mod clock;
pub mod coordinator;
mod http;
mod limits;
mod probe;
mod read_model;
mod results;
mod settings;
mod sql_store;
mod tasks;
mod tokens;
mod upstream;
mod webhooks;

use std::cell::Cell;
use std::rc::Rc;

use worker::{console_error, console_log, event, Context, Env, Request, Response};

use crate::api::surfaces::Style;
use crate::auth;
use crate::config::Config;
use crate::cors::{self, AllowedOrigins};
use crate::error::ApiError;
use crate::routes::{self, ClientRoute, Route};

/// What every handler needs about the request being served.
pub struct Call<'a> {
    pub env: &'a Env,
    pub ctx: &'a Context,
    pub config: Rc<Config>,
    pub request_id: &'a str,
    /// The worker's origin for the URLs it gives out (callbacks, result links):
    /// `PUBLIC_BASE_URL`, or the request's.
    pub origin: String,
    /// Calls to a coordinator made while serving (for the log line; `make bench` counts them).
    pub coordinator_calls: &'a Cell<u32>,
}

impl Call<'_> {
    /// Asks the coordinator of `request`'s shard, counting the call.
    pub async fn coordinator(
        &self,
        request: &crate::flows::protocol::Request,
    ) -> Result<serde_json::Value, ApiError> {
        self.coordinator_calls.set(self.coordinator_calls.get() + 1);
        coordinator::call(self.env, request).await
    }
}

/// Once per isolate: a panic (a bug, never input: nothing panics on input) is logged with
/// where it happened before the runtime reports the request as failed.
#[event(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        console_error!("{}", serde_json::json!({"event": "panic", "at": location, "message": message}));
    }));
}

/// What the entry point learns while handling a request, for the answer's CORS headers
/// and the log line.
#[derive(Default)]
struct Seen {
    tenant: Option<String>,
    allowed_origins: Option<AllowedOrigins>,
    coordinator_calls: Cell<u32>,
    /// The shape errors take: useapi.net's on its paths, else Kling's envelope.
    style: Style,
}

#[event(fetch)]
pub async fn fetch(mut request: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    let started_ms = clock::now_ms();
    let request_id = clock::new_request_id();
    // The method as sent: `worker::Method` would read any method it does not know as GET.
    let method = request.inner().method();
    let path = request.path();
    let origin = request.headers().get("Origin").ok().flatten();

    let mut seen = Seen::default();
    let response = match handle(&mut request, &env, &ctx, &request_id, &mut seen).await {
        Ok(response) => response,
        Err(error) => http::error(&error, &request_id, seen.style),
    };
    if method != "OPTIONS" {
        let granted = seen.allowed_origins.as_ref().and_then(|allowed| allowed.grant(origin.as_deref()));
        for (name, value) in cors::response_headers(granted) {
            let _ = response.headers().set(name, &value);
        }
    }
    let answered_id = response.headers().get("X-Request-Id").ok().flatten();
    console_log!(
        "{}",
        serde_json::json!({
            "request_id": answered_id.as_deref().unwrap_or(&request_id),
            "method": method,
            "path": routes::loggable_path(&path),
            "status": response.status_code(),
            "tenant": seen.tenant,
            "coordinator": seen.coordinator_calls.get(),
            "ms": clock::now_ms().saturating_sub(started_ms),
        })
    );
    Ok(response)
}

async fn handle(
    request: &mut Request,
    env: &Env,
    ctx: &Context,
    request_id: &str,
    seen: &mut Seen,
) -> Result<Response, ApiError> {
    let url = request.url().map_err(|_| ApiError::bad_request("the request URL is unreadable"))?;
    let method = request.inner().method();
    let route = routes::route(&method, url.path());
    // useapi.net's paths answer its way, whatever goes wrong (even a malformed id).
    seen.style = if routes::is_useapi_path(url.path()) { Style::UseApi } else { Style::Kling };
    if route == Ok(Route::Health) {
        return Ok(health(request_id));
    }
    let config = settings::config(env)?;
    let origin = config.public_base_url.clone().unwrap_or_else(|| url.origin().ascii_serialization());
    let call = Call { env, ctx, config, request_id, origin, coordinator_calls: &seen.coordinator_calls };
    // From here on, even a refusal carries the CORS grant, so a page can read why.
    seen.allowed_origins = Some(call.config.allowed_origins.clone());
    let route = route?;

    let client_route = match route {
        Route::Health => return Ok(health(request_id)),
        Route::Preflight => return preflight(request, &call).await,
        // Kling authenticates with the URL's token (and a signature, when configured); only
        // refused callbacks count against the sender's address, so Kling's are never limited.
        Route::KlingCallback(token) => {
            let outcome = callbacks::receive(request, &call, &token).await;
            if outcome.as_ref().is_err_and(|refusal| matches!(refusal.status, 401 | 403 | 404)) {
                limits::check(env, limits::REQUESTS, &limits::ip_key(request), clock::now_secs()).await?;
            }
            return outcome;
        }
        // A signed link is its own credential (an `<audio>` element sends no Authorization);
        // refused links count against the sender's address.
        Route::ResultCopy(copy) => {
            let outcome = results::serve(request, &call, &copy, method == "HEAD").await;
            if outcome.as_ref().is_err_and(|refusal| refusal.status == 403) {
                limits::check(env, limits::REQUESTS, &limits::ip_key(request), clock::now_secs()).await?;
            }
            return outcome;
        }
        Route::Client(client_route) => client_route,
    };

    let now_secs = clock::now_secs();
    let authorization = request.headers().get("Authorization").ok().flatten();
    let client = match auth::authenticate(&call.config, authorization.as_deref(), now_secs) {
        Ok(client) => client,
        Err(refusal) => {
            // Guessing credentials is limited per address.
            limits::check(env, limits::REQUESTS, &limits::ip_key(request), now_secs).await?;
            return Err(refusal);
        }
    };
    seen.tenant = Some(client.tenant.clone());
    let tenant_key = limits::tenant_key(&client.tenant);
    limits::check(env, limits::REQUESTS, &tenant_key, now_secs).await?;

    match client_route {
        ClientRoute::MintToken => tokens::mint(request, &call, &client).await,
        ClientRoute::WebhookSecret => tokens::webhook_secret(&call, &client),
        ClientRoute::CreateTask(surface) => tasks::create(request, &call, &client, surface).await,
        ClientRoute::QueryTask(surface, id) => tasks::query(&call, &client, surface, &id).await,
        ClientRoute::ListTasks(surface) => tasks::list(&call, &client, surface, url.query()).await,
        ClientRoute::UseApiTask(id) => tasks::useapi_task(&call, &client, &id).await,
    }
}

/// `OPTIONS`: a CORS preflight, granted to the allowed origins only.
async fn preflight(request: &Request, call: &Call<'_>) -> Result<Response, ApiError> {
    limits::check(call.env, limits::REQUESTS, &limits::ip_key(request), clock::now_secs()).await?;
    let origin = request.headers().get("Origin").ok().flatten();
    let granted = call.config.allowed_origins.grant(origin.as_deref());
    let response = Response::builder().with_status(204).empty();
    for (name, value) in cors::preflight_headers(granted) {
        let _ = response.headers().set(name, &value);
    }
    let _ = response.headers().set("X-Request-Id", call.request_id);
    Ok(response)
}

/// `GET /health`: liveness only; it needs no credential and reveals nothing.
fn health(request_id: &str) -> Response {
    http::json(200, format!(r#"{{"code":0,"message":"ok","request_id":"{request_id}"}}"#), request_id)
}
