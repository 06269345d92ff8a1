//! The Worker: the fetch entry point, dispatch to one handler per route, and logging.
//!
//! This is the only place that owns `worker` types. Each handler reads as a short story
//! (authenticate, validate, call, store, answer); the rules themselves live in the pure
//! modules. Every failure is an [`ApiError`] that becomes Kling's envelope in one place
//! ([`fetch`]), and every response leaves with an `X-Request-Id` and one log line that
//! carries no credential.

mod callbacks;
pub mod clock;
mod forward;
mod http;
mod settings;
mod store;
mod tasks;
mod upstream;

use worker::{console_log, event, Context, Env, Request, Response};

use crate::auth;
use crate::config::Config;
use crate::error::ApiError;
use crate::routes::{self, ClientRoute, Route};

/// What every handler needs about the request being served.
pub struct Call<'a> {
    pub env: &'a Env,
    pub ctx: &'a Context,
    pub config: Config,
    pub request_id: &'a str,
}

#[event(fetch)]
pub async fn fetch(mut request: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    let started_ms = clock::now_ms();
    let request_id = clock::new_request_id();
    let method = request.method().to_string();
    let path = request.path();

    let mut tenant = None;
    let response = match handle(&mut request, &env, &ctx, &request_id, &mut tenant).await {
        Ok(response) => response,
        Err(error) => http::error(&error, &request_id),
    };
    let answered_id = response.headers().get("X-Request-Id").ok().flatten();
    console_log!(
        "{}",
        serde_json::json!({
            "request_id": answered_id.as_deref().unwrap_or(&request_id),
            "method": method,
            "path": routes::loggable_path(&path),
            "status": response.status_code(),
            "tenant": tenant,
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
    tenant: &mut Option<String>,
) -> Result<Response, ApiError> {
    let url = request.url().map_err(|_| ApiError::bad_request("the request URL is unreadable"))?;
    let route = routes::route(request.method().as_ref(), url.path())?;
    let client_route = match route {
        Route::Health => return Ok(health(request_id)),
        Route::KlingCallback(token) => {
            // Kling authenticates with the URL's token (and a signature, when configured).
            let call = Call { env, ctx, config: settings::config(env)?, request_id };
            return callbacks::receive(request, &call, &token).await;
        }
        Route::Client(client_route) => client_route,
    };

    let call = Call { env, ctx, config: settings::config(env)?, request_id };
    let authorization = request.headers().get("Authorization").ok().flatten();
    let client = auth::authenticate(&call.config.clients, authorization.as_deref())?;
    *tenant = Some(client.tenant.clone());

    match client_route {
        ClientRoute::CreateTask(family) => tasks::create(request, &call, &client, family).await,
        ClientRoute::QueryTask(_, id) => tasks::query(&call, &client, &id).await,
        ClientRoute::ListTasks(_) => tasks::list(&call, &client, url.query()).await,
    }
}

/// `GET /health`: liveness only; it needs no credential and reveals nothing.
fn health(request_id: &str) -> Response {
    http::json(200, format!(r#"{{"code":0,"message":"ok","request_id":"{request_id}"}}"#), request_id)
}
