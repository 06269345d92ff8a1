//! The task endpoints of every surface (`crate::api::surfaces`): create, query and list, and
//! useapi.net's add-sound and task status.
//!
//! A create is validated in full, then sent to Kling with a callback URL whose capability
//! the worker can check later without storage; the client gets Kling's answer as soon as
//! Kling gives it. Only then, after the answer (`wait_until`), is the task recorded with its
//! tenant's coordinator: a callback that beats that record is merged into it, not lost.
//! A query is answered from the edge copy (Workers KV) once the task is finished, else by
//! the coordinator; the list always by the coordinator.

use std::time::Duration;

use serde_json::Value;
use worker::{Delay, Request, Response};

use crate::api::fields::Validated;
use crate::api::surfaces::{Style, Surface};
use crate::api::{fields::Target, useapi, VIDEO_TO_AUDIO};
use crate::auth::Client;
use crate::capability::Capability;
use crate::error::{code, ApiError};
use crate::flows::coordinator::Registration;
use crate::flows::protocol;
use crate::kling;
use crate::record::USEAPI_STYLE;
use crate::result_links::{self, Minter};
use crate::routes;
use crate::task;
use crate::validate::{self, UrlPolicy};
use crate::video_check::{self, Policy};

use super::clock::{self, WorkerRuntime};
use super::read_model::KvReadModel;
use super::upstream::{Kling, Reply};
use super::{coordinator, http, limits, probe, Call};

/// Tries of recording a create with its coordinator (after the answer), and the waits between.
const REGISTER_RETRY_MS: [u64; 3] = [0, 200, 1_000];

/// `POST` on a surface's path: validate, call Kling, answer, then record.
pub async fn create(
    request: &mut Request,
    call: &Call<'_>,
    client: &Client,
    surface: &'static Surface,
) -> Result<Response, ApiError> {
    let body = http::read_body(request, surface.body.max_bytes).await?;
    let policy = UrlPolicy { allow_private: call.config.allow_private_urls };
    let mut validated = surface.validate(&body, policy)?;
    let client_webhook = client.webhook_for_create(validated.webhook.take())?;
    if client_webhook.is_some() && call.config.proxy_webhook_key.is_none() {
        let field = surface.body.client_name(Target::Webhook).unwrap_or("callback_url");
        return Err(ApiError::bad_param(
            field,
            "this deployment does not forward webhooks (its operator has not set PROXY_WEBHOOK_SECRET)",
        ));
    }
    if let Some(email) = validated.edge.get("email").and_then(Value::as_str) {
        account_email_rule(call, email)?;
    }
    if std::ptr::eq(surface.endpoint, &VIDEO_TO_AUDIO) {
        video_rules(call, surface, &validated).await?;
    }
    // Only a create that passed every rule counts against the create limit: a refused one
    // costs the client nothing.
    limits::check(call.env, limits::CREATES, &limits::tenant_key(&client.tenant), clock::now_secs()).await?;
    let shard = task::tenant_shard(&client.tenant);
    if let Some(max_jobs) = validated.edge.get("maxJobs").and_then(Value::as_u64) {
        let request = protocol::Request::Running { shard: shard.clone(), tenant: client.tenant.clone() };
        let running = call.coordinator(&request).await?.as_u64().unwrap_or(0);
        if running >= max_jobs {
            return Err(ApiError::new(
                429,
                code::RATE_LIMITED,
                format!("maxJobs: {running} of your tasks are running, the most you allowed ({max_jobs}); retry when one finishes"),
            ));
        }
    }

    let endpoint = surface.endpoint;
    let capability =
        Capability::issue(&shard, clock::random_bytes::<16>()?, endpoint.code, clock::now_secs());
    let mut upstream = validated.upstream;
    upstream.insert(
        "callback_url".into(),
        Value::String(routes::kling_callback_url(
            &call.origin,
            &capability.encode(&call.config.capability_key),
        )),
    );
    let reply = Kling::new(&call.config).create(endpoint, &upstream).await?;
    let data = task::envelope_data(&reply.body).filter(|_| reply.status == 200);
    if let Some(data) = &data {
        match task::task_id_of(data).map(str::to_owned) {
            Some(task_id) => {
                let registration = protocol::Request::Register {
                    shard,
                    registration: Registration {
                        task_id,
                        endpoint: endpoint.code,
                        nonce: capability.nonce,
                        tenant: client.tenant.clone(),
                        client_callback_url: client_webhook,
                        style: (surface.style == Style::UseApi).then(|| USEAPI_STYLE.to_owned()),
                        reply_ref: validated.edge.get("replyRef").and_then(Value::as_str).map(str::to_owned),
                        origin: Some(call.origin.clone()),
                        data: data.clone(),
                    },
                };
                let env = call.env.clone();
                call.ctx.wait_until(async move { register(env, registration).await });
            }
            None => WorkerRuntime.log_problem("create", "Kling's create answer has no task_id"),
        }
    }
    match (surface.style, data) {
        (Style::Kling, _) => Ok(pass_through(reply)),
        (Style::UseApi, Some(data)) => {
            Ok(http::json(200, useapi::task_answer(&data).to_string(), call.request_id))
        }
        (Style::UseApi, None) => Err(kling_refusal(&reply)),
    }
}

/// A video to add sound to must be one Kling accepts: measured at its URL (`VIDEO_PROBE`),
/// else judged by the client's `video_duration` hint. A Kling video (`video_id`) is not probed.
async fn video_rules(call: &Call<'_>, surface: &Surface, validated: &Validated) -> Result<(), ApiError> {
    let hint = validated.edge.get("video_duration").and_then(Value::as_f64);
    let url = validated.upstream.get("video_url").and_then(Value::as_str);
    let (Some(url), false) = (url, call.config.video_probe == Policy::Off) else {
        return video_check::hint_rule(hint);
    };
    let started_ms = clock::now_ms();
    let outcome = probe::measure(&call.config, url).await;
    let field = surface.body.client_name_of_upstream("video_url").unwrap_or("video_url");
    let judged = video_check::judge(&outcome, call.config.video_probe, hint, field);
    // The URL is not logged: it may carry a signature.
    worker::console_log!(
        "{}",
        serde_json::json!({
            "event": "video_probe",
            "request_id": call.request_id,
            "outcome": outcome,
            "accepted": judged.is_ok(),
            "note": judged.as_ref().ok().and_then(|judgement| judgement.note.clone()),
            "ms": clock::now_ms().saturating_sub(started_ms),
        })
    );
    judged.map(drop)
}

/// `email` of a useapi.net-style call: the deployment serves one Kling account, the one
/// `KLING_ACCOUNT_EMAIL` names.
fn account_email_rule(call: &Call<'_>, email: &str) -> Result<(), ApiError> {
    match &call.config.kling_account_email {
        Some(account) if account.eq_ignore_ascii_case(email.trim()) => Ok(()),
        Some(_) => Err(ApiError::bad_param("email", "is not this deployment's Kling account (it has one: KLING_ACCOUNT_EMAIL)")),
        None => Err(ApiError::bad_param(
            "email",
            "this deployment has one Kling account and its operator has not named it (KLING_ACCOUNT_EMAIL): leave email out",
        )),
    }
}

/// Kling's own refusal of a create, as an error a useapi.net-style client reads.
fn kling_refusal(reply: &Reply) -> ApiError {
    let envelope: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    let message = envelope.get("message").and_then(Value::as_str).unwrap_or("Kling refused the task");
    let code = envelope.get("code").and_then(Value::as_u64).unwrap_or(0);
    let status = if reply.status == 200 { 502 } else { reply.status };
    ApiError::new(status, code as u32, format!("Kling: {message} (code {code})"))
}

/// Records a create with its coordinator, trying again a couple of times: until it lands,
/// the task is known only from Kling's callbacks (which carry what is needed to record it).
async fn register(env: worker::Env, registration: protocol::Request) {
    for (attempt, wait_ms) in REGISTER_RETRY_MS.into_iter().enumerate() {
        if wait_ms > 0 {
            Delay::from(Duration::from_millis(wait_ms)).await;
        }
        match coordinator::call(&env, &registration).await {
            Ok(_) => return,
            Err(error) if attempt + 1 == REGISTER_RETRY_MS.len() => {
                WorkerRuntime.log_problem("register", &error.message);
            }
            Err(_) => {}
        }
    }
}

/// One of the caller's tasks of `endpoint_code`, by task id or external task id: the edge
/// copy if the task is finished, else its coordinator (which asks Kling if the task is
/// running and quiet), else a record of the previous version.
async fn find(call: &Call<'_>, client: &Client, endpoint_code: u8, id: &str) -> Result<Value, ApiError> {
    let mut task = find_unlinked(call, client, endpoint_code, id).await?;
    link_copies(call, client, &mut task);
    Ok(task)
}

/// Puts fresh signed links to the result copies of a task of `client` into its answer.
fn link_copies(call: &Call<'_>, client: &Client, task: &mut Value) {
    let shard = task::tenant_shard(&client.tenant);
    let minter = Minter {
        key: &call.config.link_key,
        origin: &call.origin,
        shard: &shard,
        now_ms: clock::now_ms(),
        ttl_secs: call.config.result_link_ttl_secs,
    };
    result_links::link_copies(task, &minter);
}

async fn find_unlinked(
    call: &Call<'_>,
    client: &Client,
    endpoint_code: u8,
    id: &str,
) -> Result<Value, ApiError> {
    let shard = task::tenant_shard(&client.tenant);
    let read_model = KvReadModel::open(call.env)?;
    if let Some(published) = read_model.published(&shard, id).await {
        if published.tenant == client.tenant && published.endpoint == endpoint_code {
            return Ok(published.task);
        }
    }
    let request = protocol::Request::Query {
        shard,
        tenant: client.tenant.clone(),
        endpoint: endpoint_code,
        id: id.to_owned(),
    };
    match call.coordinator(&request).await {
        Err(not_found) if not_found.status == 404 && endpoint_code == VIDEO_TO_AUDIO.code => {
            read_model.legacy_task(&client.tenant, id).await.ok_or(not_found)
        }
        outcome => outcome,
    }
}

/// `GET {path}/{id}` of a surface.
pub async fn query(
    call: &Call<'_>,
    client: &Client,
    surface: &Surface,
    id: &str,
) -> Result<Response, ApiError> {
    let task = find(call, client, surface.endpoint.code, id).await?;
    Ok(http::success(&task, call.request_id))
}

/// `GET /v1/kling/tasks/{id}`: an add-sound task, useapi.net's way.
pub async fn useapi_task(call: &Call<'_>, client: &Client, id: &str) -> Result<Response, ApiError> {
    let task = find(call, client, VIDEO_TO_AUDIO.code, id).await?;
    Ok(http::json(200, useapi::task_answer(&task).to_string(), call.request_id))
}

/// `GET {path}` of a surface: the caller's tasks of its endpoint, newest first.
pub async fn list(
    call: &Call<'_>,
    client: &Client,
    surface: &Surface,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let page = validate::page(query)?;
    let request = protocol::Request::List {
        shard: task::tenant_shard(&client.tenant),
        tenant: client.tenant.clone(),
        endpoint: surface.endpoint.code,
        page_num: page.num,
        page_size: page.size,
    };
    let mut tasks = call.coordinator(&request).await?;
    for task in tasks.as_array_mut().into_iter().flatten() {
        link_copies(call, client, task);
    }
    Ok(http::success(&tasks, call.request_id))
}

/// Kling's answer, status and body unchanged; its `request_id` becomes `X-Request-Id`.
pub fn pass_through(reply: Reply) -> Response {
    let request_id = kling::envelope_request_id(&reply.body).unwrap_or_else(clock::new_request_id);
    http::json(reply.status, reply.body, &request_id)
}
