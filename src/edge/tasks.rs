//! The task endpoints: create, query and list, on every path family.
//!
//! A create is validated in full, then sent to Kling with a callback URL whose capability
//! the worker can check later without storage; the client gets Kling's answer as soon as
//! Kling gives it. Only then, after the answer (`wait_until`), is the task recorded with its
//! tenant's coordinator: a callback that beats that record is merged into it, not lost.
//! A query is answered from the edge copy (Workers KV) once the task is finished, else by
//! the coordinator; the list always by the coordinator.

use std::time::Duration;

use worker::{Delay, Request, Response};

use crate::api::Endpoint;
use crate::auth::Client;
use crate::capability::Capability;
use crate::error::ApiError;
use crate::flows::coordinator::Registration;
use crate::flows::protocol;
use crate::kling;
use crate::routes::{self, Family};
use crate::task;
use crate::validate::{self, UrlPolicy};

use super::clock::{self, WorkerRuntime};
use super::read_model::KvReadModel;
use super::upstream::{Kling, Reply};
use super::{coordinator, http, limits, Call};

/// Tries of recording a create with its coordinator (after the answer), and the waits between.
const REGISTER_RETRY_MS: [u64; 3] = [0, 200, 1_000];

/// `POST` on an endpoint's path: validate, call Kling, answer, then record.
pub async fn create(
    request: &mut Request,
    call: &Call<'_>,
    client: &Client,
    family: Family,
) -> Result<Response, ApiError> {
    let body = http::read_body(request).await?;
    let policy = UrlPolicy { allow_private: call.config.allow_private_urls };
    let mut create = validate::create_request(family, &body, policy)?;
    let client_webhook = client.webhook_for_create(create.upstream.callback_url.take())?;
    if client_webhook.is_some() && call.config.proxy_webhook_key.is_none() {
        return Err(ApiError::bad_param(
            "callback_url",
            "this deployment does not forward webhooks (its operator has not set PROXY_WEBHOOK_SECRET)",
        ));
    }
    // Only a create that passed every rule counts against the create limit: a refused one
    // costs the client nothing.
    limits::check(call.env, limits::CREATES, &limits::tenant_key(&client.tenant), clock::now_secs()).await?;

    let endpoint = family.endpoint();
    let shard = task::tenant_shard(&client.tenant);
    let capability =
        Capability::issue(&shard, clock::random_bytes::<16>()?, endpoint.code, clock::now_secs());
    let origin = match &call.config.public_base_url {
        Some(base) => base.clone(),
        None => request_origin(request)?,
    };
    create.upstream.callback_url =
        Some(routes::kling_callback_url(&origin, &capability.encode(&call.config.capability_key)));

    let reply = Kling::new(&call.config).create(endpoint, &create.upstream).await?;
    if let Some(data) = task::envelope_data(&reply.body).filter(|_| reply.status == 200) {
        match task::task_id_of(&data).map(str::to_owned) {
            Some(task_id) => {
                let registration = protocol::Request::Register {
                    shard,
                    registration: Registration {
                        task_id,
                        endpoint: endpoint.code,
                        nonce: capability.nonce,
                        tenant: client.tenant.clone(),
                        client_callback_url: client_webhook,
                        data,
                    },
                };
                let env = call.env.clone();
                call.ctx.wait_until(async move { register(env, registration).await });
            }
            None => WorkerRuntime.log_problem("create", "Kling's create answer has no task_id"),
        }
    }
    Ok(pass_through(reply))
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

/// `GET` one task by task id or external task id: the edge copy if the task is finished and
/// the caller's, else its coordinator (which asks Kling if the task is running and quiet).
pub async fn query(call: &Call<'_>, client: &Client, family: Family, id: &str) -> Result<Response, ApiError> {
    let endpoint = family.endpoint();
    let shard = task::tenant_shard(&client.tenant);
    let read_model = KvReadModel::open(call.env)?;
    if let Some(published) = read_model.published(&shard, id).await {
        if published.tenant == client.tenant && published.endpoint == endpoint.code {
            return Ok(http::success(&published.task, call.request_id));
        }
    }
    let request = protocol::Request::Query {
        shard,
        tenant: client.tenant.clone(),
        endpoint: endpoint.code,
        id: id.to_owned(),
    };
    match call.coordinator(&request).await {
        Ok(task) => Ok(http::success(&task, call.request_id)),
        Err(not_found) if not_found.status == 404 => match read_model.legacy_task(&client.tenant, id).await {
            Some(task) => Ok(http::success(&task, call.request_id)),
            None => Err(not_found),
        },
        Err(error) => Err(error),
    }
}

/// `GET` the caller's tasks of an endpoint, newest first (`pageNum`, `pageSize`).
pub async fn list(
    call: &Call<'_>,
    client: &Client,
    family: Family,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let page = validate::page(query)?;
    let endpoint: &Endpoint = family.endpoint();
    let request = protocol::Request::List {
        shard: task::tenant_shard(&client.tenant),
        tenant: client.tenant.clone(),
        endpoint: endpoint.code,
        page_num: page.num,
        page_size: page.size,
    };
    let tasks = call.coordinator(&request).await?;
    Ok(http::success(&tasks, call.request_id))
}

fn request_origin(request: &Request) -> Result<String, ApiError> {
    let url = request.url().map_err(|_| ApiError::bad_request("the request URL is unreadable"))?;
    Ok(url.origin().ascii_serialization())
}

/// Kling's answer, status and body unchanged; its `request_id` becomes `X-Request-Id`.
pub fn pass_through(reply: Reply) -> Response {
    let request_id = kling::envelope_request_id(&reply.body).unwrap_or_else(clock::new_request_id);
    http::json(reply.status, reply.body, &request_id)
}
