//! Kling's callbacks: `POST /v1/callbacks/kling/{token}`, and what follows a report.
//!
//! Each create gives Kling a callback URL carrying a fresh 128-bit token (see
//! `tasks::create`). A callback is stored only if, in this order:
//! 1. its Standard Webhooks signature is valid, when `KLING_WEBHOOK_SECRET` is set (401);
//! 2. its token is one the worker issued (404);
//! 3. its body is a task report (400);
//! 4. the task it names is the one the token was issued for (403).
//!
//! It is answered 200 only once stored. Then, after the answer (`wait_until`), a `succeed`
//! without the audios is completed by one query to Kling, and a final state is forwarded
//! to the client's webhook.

use worker::{console_log, Env, Request, Response};

use crate::config::Config;
use crate::error::{code, ApiError};
use crate::task::{self, TaskRecord};
use crate::webhook::SignatureHeaders;

use super::store::Store;
use super::upstream::Kling;
use super::{clock, forward, http, Call};

pub async fn receive(request: &mut Request, call: &Call<'_>, token: &str) -> Result<Response, ApiError> {
    let body = http::read_body(request).await?;
    if let Some(key) = &call.config.kling_webhook_key {
        let header = |name: &str| request.headers().get(name).ok().flatten();
        let (id, timestamp, signature) =
            (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
        let headers = SignatureHeaders {
            id: id.as_deref(),
            timestamp: timestamp.as_deref(),
            signature: signature.as_deref(),
        };
        key.verify(&headers, &body, clock::now_secs()).map_err(|rejection| {
            ApiError::new(401, code::AUTH_FAILED, format!("callback signature: {rejection}"))
        })?;
    }

    let store = Store::open(call.env)?;
    let ticket = store
        .ticket(token)
        .await?
        .ok_or_else(|| ApiError::new(404, code::NOT_FOUND, "callback: no task was created with this URL"))?;
    let report = task::parse_callback(&body)?;
    let task_id = task::task_id_of(&report).unwrap_or_default().to_owned();
    let wrong_task = || ApiError::new(403, code::NO_PERMISSION, "callback: this URL belongs to another task");
    if ticket.task_id.as_deref().is_some_and(|bound| bound != task_id) {
        return Err(wrong_task());
    }

    let stored = store.task(&task_id).await?;
    if stored.as_ref().is_some_and(|record| record.callback_token != token) {
        return Err(wrong_task());
    }
    let first_report = stored.is_none();
    let record =
        record_report(&store, &task_id, stored, || ticket.new_record(token, report.clone()), &report).await?;
    if first_report {
        store.index_task(&task_id, &record, task::external_task_id_of(&record.data)).await?;
        let bound = task::CallbackTicket { task_id: Some(task_id.clone()), ..ticket };
        store.put_ticket(token, &bound).await?;
    }

    schedule_follow_up(call, &task_id, &record);
    Ok(http::json(
        200,
        format!(r#"{{"code":0,"message":"SUCCEED","request_id":"{}"}}"#, call.request_id),
        call.request_id,
    ))
}

/// Stores a task's first report as `new_record()`, or merges it into the stored record.
pub async fn record_report(
    store: &Store,
    task_id: &str,
    stored: Option<TaskRecord>,
    new_record: impl FnOnce() -> TaskRecord,
    report: &serde_json::Value,
) -> Result<TaskRecord, ApiError> {
    match stored {
        Some(record) => merge_report(store, task_id, record, report).await,
        None => {
            let record = new_record();
            store.put_task(task_id, &record).await?;
            Ok(record)
        }
    }
}

/// Merges a report into a stored record, and stores the result if it changed.
pub async fn merge_report(
    store: &Store,
    task_id: &str,
    mut record: TaskRecord,
    report: &serde_json::Value,
) -> Result<TaskRecord, ApiError> {
    if let Some(merged) = task::merge(&record.data, report) {
        record.data = merged;
        store.put_task(task_id, &record).await?;
    }
    Ok(record)
}

/// After the answer: complete a `succeed` without audios, then forward a final state.
pub fn schedule_follow_up(call: &Call<'_>, task_id: &str, record: &TaskRecord) {
    let incomplete = task::is_incomplete_success(&record.data);
    let forwarding = record.needs_forwarding() && call.config.proxy_webhook_key.is_some();
    if !incomplete && !forwarding {
        return;
    }
    let (env, config, task_id) = (call.env.clone(), call.config.clone(), task_id.to_owned());
    call.ctx.wait_until(async move { follow_up(env, config, task_id).await });
}

async fn follow_up(env: Env, config: Config, task_id: String) {
    let Ok(store) = Store::open(&env) else { return };
    let Ok(Some(mut record)) = store.task(&task_id).await else { return };
    if task::is_incomplete_success(&record.data) {
        let kling = Kling::new(&config).with_timeout_ms(task::FOLLOW_UP_QUERY_TIMEOUT_MS);
        match kling.current_task(&task_id).await {
            Ok(data) => {
                if let Ok(updated) = merge_report(&store, &task_id, record.clone(), &data).await {
                    record = updated;
                }
            }
            Err(problem) => log_follow_up(&task_id, &problem),
        }
    }
    if record.needs_forwarding() {
        if let Some(key) = &config.proxy_webhook_key {
            forward::deliver(&store, key, &task_id, &record).await;
        }
    }
}

fn log_follow_up(task_id: &str, problem: &str) {
    console_log!(
        "{}",
        serde_json::json!({"event": "complete_result", "task_id": task_id, "problem": problem})
    );
}
