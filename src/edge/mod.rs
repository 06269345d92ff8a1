//! The Worker: the fetch entry point and one handler per route.
//!
//! This is the only place that owns `worker` types. Each handler reads as a short story
//! (authenticate, validate, call, answer); the rules themselves live in the pure modules.
//! Every failure is an [`ApiError`] that becomes Kling's envelope in one place
//! ([`fetch`]), and every response leaves with an `X-Request-Id` and one log line that
//! carries no credential.

pub mod clock;
mod http;
mod settings;
mod upstream;

use worker::{console_log, event, Context, Env, Request, Response};

use crate::auth::{self, Client};
use crate::config::Config;
use crate::error::ApiError;
use crate::kling;
use crate::routes::{self, Family, Route};
use crate::validate::{self, UrlPolicy};

use upstream::{Kling, Reply};

#[event(fetch)]
pub async fn fetch(mut request: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let started_ms = clock::now_ms();
    let request_id = clock::new_request_id();
    let method = request.method().to_string();
    let path = request.path();

    let mut tenant = None;
    let response = match handle(&mut request, &env, &request_id, &mut tenant).await {
        Ok(response) => response,
        Err(error) => http::error(&error, &request_id),
    };
    let answered_id = response.headers().get("X-Request-Id").ok().flatten();
    log_request(&LogLine {
        request_id: answered_id.as_deref().unwrap_or(&request_id),
        method: &method,
        path: &path,
        status: response.status_code(),
        tenant: tenant.as_deref(),
        ms: clock::now_ms().saturating_sub(started_ms),
    });
    Ok(response)
}

async fn handle(
    request: &mut Request,
    env: &Env,
    request_id: &str,
    tenant: &mut Option<String>,
) -> Result<Response, ApiError> {
    let url = request
        .url()
        .map_err(|_| ApiError::bad_request("the request URL is unreadable"))?;
    let route = routes::route(request.method().as_ref(), url.path())?;
    if route == Route::Health {
        return Ok(health(request_id));
    }

    let config = settings::config(env)?;
    let authorization = request.headers().get("Authorization").ok().flatten();
    let client = auth::authenticate(&config.clients, authorization.as_deref())?;
    *tenant = Some(client.tenant.clone());

    match route {
        Route::Health => Ok(health(request_id)),
        Route::CreateTask(family) => create_task(request, &config, &client, family).await,
        Route::QueryTask(_, task_id) => query_task(&config, &task_id).await,
        Route::ListTasks(_) => list_tasks(&config, url.query()).await,
    }
}

/// `GET /health`: liveness only; it needs no credential and reveals nothing.
fn health(request_id: &str) -> Response {
    http::json(
        200,
        format!(r#"{{"code":0,"message":"ok","request_id":"{request_id}"}}"#),
        request_id,
    )
}

/// `POST /v1/{audio,videos}/video-to-audio`: validate fully, then create at Kling once.
async fn create_task(
    request: &mut Request,
    config: &Config,
    _client: &Client,
    family: Family,
) -> Result<Response, ApiError> {
    let body = http::read_body(request).await?;
    let policy = UrlPolicy {
        allow_private: config.allow_private_urls,
    };
    let create = validate::create_request(family, &body, policy)?;
    let reply = Kling::new(config).create(&create.upstream).await?;
    Ok(pass_through(reply))
}

/// `GET /v1/{audio,videos}/video-to-audio/{id}`.
async fn query_task(config: &Config, task_id: &str) -> Result<Response, ApiError> {
    let reply = Kling::new(config).get(&kling::query_path(task_id)).await?;
    Ok(pass_through(reply))
}

/// `GET /v1/{audio,videos}/video-to-audio?pageNum=&pageSize=`.
async fn list_tasks(config: &Config, query: Option<&str>) -> Result<Response, ApiError> {
    let page = validate::page(query)?;
    let reply = Kling::new(config)
        .get(&kling::list_path(page.num, page.size))
        .await?;
    Ok(pass_through(reply))
}

/// Kling's answer, status and body unchanged; its `request_id` becomes `X-Request-Id`.
fn pass_through(reply: Reply) -> Response {
    let request_id = kling::envelope_request_id(&reply.body).unwrap_or_else(clock::new_request_id);
    http::json(reply.status, reply.body, &request_id)
}

struct LogLine<'a> {
    request_id: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    tenant: Option<&'a str>,
    ms: u64,
}

/// One JSON line per request: no header, query string or body, so no credential.
fn log_request(line: &LogLine) {
    let entry = serde_json::json!({
        "request_id": line.request_id,
        "method": line.method,
        "path": line.path,
        "status": line.status,
        "tenant": line.tenant,
        "ms": line.ms,
    });
    console_log!("{entry}");
}
