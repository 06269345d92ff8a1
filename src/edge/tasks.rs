//! The video-to-audio endpoints: create, query and list, on both path families.
//!
//! A create is validated in full, then announced in KV (the callback ticket) before Kling
//! is called, so that nothing Kling reports about it can be lost. Queries for finished
//! tasks and the task list are answered from KV, and every answer has Kling's shape.

use worker::{console_log, Request, Response};

use crate::auth::Client;
use crate::error::ApiError;
use crate::ids;
use crate::kling;
use crate::routes::{self, Family};
use crate::task::{self, CallbackTicket};
use crate::validate::{self, UrlPolicy};

use super::callbacks::{merge_report, record_report, schedule_follow_up};
use super::store::Store;
use super::upstream::{Kling, Reply};
use super::{clock, http, limits, Call};

/// `POST /v1/{audio,videos}/video-to-audio`.
pub async fn create(
    request: &mut Request,
    call: &Call<'_>,
    client: &Client,
    family: Family,
) -> Result<Response, ApiError> {
    let body = http::read_body(request).await?;
    let policy = UrlPolicy { allow_private: call.config.allow_private_urls };
    let mut create = validate::create_request(family, &body, policy)?;
    create.upstream.callback_url = client.webhook_for_create(create.upstream.callback_url.take())?;
    if create.upstream.callback_url.is_some() && call.config.proxy_webhook_key.is_none() {
        return Err(ApiError::bad_param(
            "callback_url",
            "this deployment does not forward webhooks (its operator has not set PROXY_WEBHOOK_SECRET)",
        ));
    }
    // Only a create that passed every rule counts against the create limit: a refused one
    // costs the client nothing.
    limits::check(call.env, limits::CREATES, &limits::tenant_key(&client.tenant), clock::now_secs()).await?;

    // Kling calls the worker back; the client's own webhook is kept for forwarding.
    let store = Store::open(call.env)?;
    let token = ids::callback_token(clock::random_bytes::<16>()?);
    let ticket = CallbackTicket {
        tenant: client.tenant.clone(),
        client_callback_url: create.upstream.callback_url.take(),
        task_id: None,
        created_at: clock::now_ms(),
    };
    store.put_ticket(&token, &ticket).await?;
    let origin = match &call.config.public_base_url {
        Some(base) => base.clone(),
        None => request_origin(request)?,
    };
    create.upstream.callback_url = Some(routes::kling_callback_url(&origin, &token));

    let reply = Kling::new(&call.config).create(&create.upstream).await?;
    if let Some(data) = task::envelope_data(&reply.body).filter(|_| reply.status == 200) {
        if let Err(error) = remember(&store, &token, ticket, data).await {
            // The task exists at Kling: answer with it. Its first callback will still find
            // the ticket and create the record.
            console_log!(
                "{}",
                serde_json::json!({"event": "store_created_task", "request_id": call.request_id, "problem": error.message})
            );
        }
    }
    Ok(pass_through(reply))
}

/// Stores a task Kling just created (merging with a callback that may have come first).
async fn remember(
    store: &Store,
    token: &str,
    ticket: CallbackTicket,
    data: serde_json::Value,
) -> Result<(), ApiError> {
    let Some(task_id) = task::task_id_of(&data).map(str::to_owned) else {
        return Err(ApiError::internal("Kling's create answer has no task_id"));
    };
    let stored = store.task(&task_id).await?;
    let record =
        record_report(store, &task_id, stored, || ticket.new_record(token, data.clone()), &data).await?;
    store.index_task(&task_id, &record, task::external_task_id_of(&record.data)).await?;
    store.put_ticket(token, &CallbackTicket { task_id: Some(task_id), ..ticket }).await
}

/// `GET /v1/{audio,videos}/video-to-audio/{id}`: from KV when complete (failed, or succeeded
/// with its audios), else from Kling.
pub async fn query(call: &Call<'_>, client: &Client, id: &str) -> Result<Response, ApiError> {
    let store = Store::open(call.env)?;
    let Some((task_id, mut record)) = store.find_for_tenant(&client.tenant, id).await? else {
        return Err(ApiError::not_found(&format!("task {id}")));
    };
    if !task::is_complete(&record.data) {
        match Kling::new(&call.config).current_task(&task_id).await {
            Ok(data) => {
                record = merge_report(&store, &task_id, record, &data).await?;
                schedule_follow_up(call, &task_id, &record);
            }
            // The stored state is the latest Kling reported: answer with it.
            Err(problem) => log_stale(call, &task_id, &problem),
        }
    }
    Ok(http::success(&record.data, call.request_id))
}

/// `GET /v1/{audio,videos}/video-to-audio?pageNum=&pageSize=`: the caller's tasks from KV.
pub async fn list(call: &Call<'_>, client: &Client, query: Option<&str>) -> Result<Response, ApiError> {
    let page = validate::page(query)?;
    let store = Store::open(call.env)?;
    let tasks: Vec<serde_json::Value> =
        store.page(&client.tenant, page).await?.into_iter().map(|record| record.data).collect();
    Ok(http::success(&serde_json::Value::Array(tasks), call.request_id))
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

fn log_stale(call: &Call<'_>, task_id: &str, problem: &str) {
    console_log!(
        "{}",
        serde_json::json!({"event": "query_from_store", "request_id": call.request_id, "task_id": task_id, "problem": problem})
    );
}
